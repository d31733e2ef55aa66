// Fuzzes the name rules of proto/base/names.h against an independent
// restatement of them: ValidateRunName / ValidateAliasName accept exactly
// [A-Za-z0-9][A-Za-z0-9._-]{0,127}, ValidateUserAliasName that minus
// last/best/all-digits, ValidateMetricName 1-256 bytes without control
// characters; ParseRef reads digits as a version >= 1 whose rendering parses
// back to it, and anything else as an alias equal to its input. Every error is
// INVALID_ARGUMENT with a printable-ASCII message (bad values are escaped).
#include <cstddef>
#include <cstdint>
#include <string>
#include <variant>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "proto/base/names.h"
#include "tests/fuzz/fuzz_check.h"

namespace ckptd {
namespace {

bool IsAlnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9');
}

bool IsName(absl::string_view s) {
  if (s.empty() || s.size() > kMaxNameLength || !IsAlnum(s[0])) return false;
  for (char c : s) {
    if (!IsAlnum(c) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

bool AllDigits(absl::string_view s) {
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

bool IsMetricName(absl::string_view s) {
  if (s.empty() || s.size() > kMaxMetricNameLength) return false;
  for (char c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return false;
  }
  return true;
}

// OK iff `expect_ok`; otherwise INVALID_ARGUMENT, message printable ASCII.
void CheckVerdict(const absl::Status& st, bool expect_ok) {
  FUZZ_CHECK(st.ok() == expect_ok);
  if (st.ok()) return;
  FUZZ_CHECK(st.code() == absl::StatusCode::kInvalidArgument);
  FUZZ_CHECK(!st.message().empty());
  for (char c : st.message()) {
    FUZZ_CHECK(c >= 0x20 && c < 0x7f);
  }
}

// The value of a non-empty digit string, or 0 when it exceeds uint64.
uint64_t DigitsValue(absl::string_view s) {
  uint64_t v = 0;
  for (char c : s) {
    const uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return 0;
    v = v * 10 + d;
  }
  return v;
}

void FuzzNames(absl::string_view s) {
  const bool name = IsName(s);
  const bool digits = !s.empty() && AllDigits(s);

  CheckVerdict(ValidateRunName(s), name);
  CheckVerdict(ValidateAliasName(s), name);
  CheckVerdict(ValidateUserAliasName(s),
               name && s != "last" && s != "best" && !digits);
  CheckVerdict(ValidateMetricName(s), IsMetricName(s));

  const absl::StatusOr<Ref> ref = ParseRef(s);
  if (digits) {
    const uint64_t v = DigitsValue(s);
    CheckVerdict(ref.status(), v != 0);
    if (!ref.ok()) return;
    FUZZ_CHECK(std::holds_alternative<uint64_t>(ref->value));
    FUZZ_CHECK(std::get<uint64_t>(ref->value) == v);
    // The canonical rendering round-trips.
    const absl::StatusOr<Ref> again = ParseRef(absl::StrCat(v));
    FUZZ_CHECK(again.ok());
    FUZZ_CHECK(std::holds_alternative<uint64_t>(again->value));
    FUZZ_CHECK(std::get<uint64_t>(again->value) == v);
    return;
  }
  CheckVerdict(ref.status(), name);
  if (!ref.ok()) return;
  FUZZ_CHECK(std::holds_alternative<std::string>(ref->value));
  FUZZ_CHECK(std::get<std::string>(ref->value) == s);
}

}  // namespace
}  // namespace ckptd

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ckptd::FuzzNames({reinterpret_cast<const char*>(data), size});
  return 0;
}
