// MakeTempDir: a fresh directory for one test's data, shared by the unit,
// integration and CLI tests.
#ifndef CKPTD_TESTS_SUPPORT_TEMP_DIR_H_
#define CKPTD_TESTS_SUPPORT_TEMP_DIR_H_

#include <stdlib.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace ckptd::testing {

// Creates <base>/<prefix>-XXXXXX (base: $TMPDIR, else /tmp) and returns its
// path. Aborts when it cannot: no test can go on without its directory.
inline std::string MakeTempDir(absl::string_view prefix,
                               const std::filesystem::path& base =
                                   std::filesystem::temp_directory_path()) {
  const std::string pattern =
      absl::StrCat((base / std::string(prefix)).string(), "-XXXXXX");
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) {
    std::fprintf(stderr, "mkdtemp %s failed\n", pattern.c_str());
    std::abort();
  }
  return std::string(buf.data());
}

}  // namespace ckptd::testing

#endif  // CKPTD_TESTS_SUPPORT_TEMP_DIR_H_
