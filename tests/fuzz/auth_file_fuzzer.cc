// Fuzzes the --auth_file parser (server/service/auth.h). Every error is
// INVALID_ARGUMENT naming the source and a line ("f:N: ..."); an accepted
// table renders back to lines that parse to the same table, every entry's
// fields obey the file's rules, and a certificate entry is found by its CN.
// The input's first line is also tried as a glob: it matches itself when it
// has no wildcards, and `*` matches everything.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "server/service/auth.h"
#include "tests/fuzz/fuzz_check.h"

namespace ckptd::service {
namespace {

std::string Render(const AuthTable& table) {
  std::string out;
  for (const AuthTable::Entry& e : table.entries()) {
    absl::StrAppend(
        &out, e.principal.identity, " ", RoleName(e.principal.role), " ",
        absl::StrJoin(e.principal.run_patterns, ","), " ",
        e.kind == AuthTable::Entry::Kind::kTokenSha256 ? "sha256:" : "cert:",
        e.credential, "\n");
  }
  return out;
}

bool SameEntries(const AuthTable& a, const AuthTable& b) {
  if (a.entries().size() != b.entries().size()) return false;
  for (size_t i = 0; i < a.entries().size(); ++i) {
    const AuthTable::Entry& x = a.entries()[i];
    const AuthTable::Entry& y = b.entries()[i];
    if (x.principal.identity != y.principal.identity ||
        x.principal.role != y.principal.role ||
        x.principal.run_patterns != y.principal.run_patterns ||
        x.kind != y.kind || x.credential != y.credential) {
      return false;
    }
  }
  return true;
}

}  // namespace
}  // namespace ckptd::service

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ckptd::service;
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  auto table = AuthTable::Parse(text, "f");
  if (!table.ok()) {
    FUZZ_CHECK(table.status().code() == absl::StatusCode::kInvalidArgument);
    FUZZ_CHECK(absl::StartsWith(table.status().message(), "f"));
  } else {
    FUZZ_CHECK(!table->entries().empty());
    for (const AuthTable::Entry& e : table->entries()) {
      FUZZ_CHECK(!e.principal.identity.empty() &&
                 e.principal.identity.size() <= 128);
      FUZZ_CHECK(!e.principal.run_patterns.empty());
      for (const std::string& p : e.principal.run_patterns) {
        FUZZ_CHECK(!p.empty() &&
                   p.find_first_of(", \t\n") == std::string::npos);
      }
      if (e.kind == AuthTable::Entry::Kind::kTokenSha256) {
        FUZZ_CHECK(e.credential.size() == 64 &&
                   e.credential.find_first_not_of("0123456789abcdef") ==
                       std::string::npos);
      } else {
        FUZZ_CHECK(!e.credential.empty());
        FUZZ_CHECK(table->FindCertCommonName(e.credential) != nullptr);
      }
    }
    auto again = AuthTable::Parse(Render(*table), "rendered");
    FUZZ_CHECK(again.ok());
    FUZZ_CHECK(SameEntries(*table, *again));
  }
  const absl::string_view first = text.substr(0, text.find('\n'));
  FUZZ_CHECK(GlobMatch("*", first));
  if (first.find_first_of("*?") == absl::string_view::npos) {
    FUZZ_CHECK(GlobMatch(first, first));
  }
  return 0;
}
