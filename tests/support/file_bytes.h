// Whole-file reads and single-byte damage, shared by the unit, integration
// and CLI tests.
#ifndef CKPTD_TESTS_SUPPORT_FILE_BYTES_H_
#define CKPTD_TESTS_SUPPORT_FILE_BYTES_H_

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace ckptd::testing {

// The bytes of the file at `path`; "" when it cannot be read (a log file a
// child process has not written yet, say).
inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Inverts the byte at `offset` of the file at `path` in place: a corruption
// the blob checksums must catch. Calling it twice restores the byte.
inline void FlipFileByte(const std::string& path, uint64_t offset) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  char c;
  ASSERT_EQ(::pread(fd, &c, 1, static_cast<off_t>(offset)), 1) << path;
  c = static_cast<char>(~c);
  ASSERT_EQ(::pwrite(fd, &c, 1, static_cast<off_t>(offset)), 1) << path;
  ::close(fd);
}

}  // namespace ckptd::testing

#endif  // CKPTD_TESTS_SUPPORT_FILE_BYTES_H_
