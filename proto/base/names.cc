#include "proto/base/names.h"

#include <algorithm>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace ckptd {
namespace {

bool IsNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
         c == '_' || c == '-';
}

std::string Quote(absl::string_view s) {
  constexpr size_t kShown = 64;
  std::string shown = absl::CHexEscape(s.substr(0, kShown));
  if (s.size() > kShown) absl::StrAppend(&shown, "...");
  return absl::StrCat("'", shown, "'");
}

absl::Status ValidateName(absl::string_view what, absl::string_view name) {
  if (name.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what,
                     " name is empty; use 1-128 characters of [A-Za-z0-9._-], "
                     "starting with a letter or digit"));
  }
  if (name.size() > kMaxNameLength) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " name ", Quote(name), " is ", name.size(),
                     " characters long; the limit is ", kMaxNameLength));
  }
  if (!absl::ascii_isalnum(static_cast<unsigned char>(name[0]))) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " name ", Quote(name), " must start with a letter or digit"));
  }
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsNameChar(name[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " name ", Quote(name), " has ", Quote(name.substr(i, 1)),
          " at position ", i, "; allowed: letters, digits, '.', '_', '-'"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateRunName(absl::string_view name) {
  return ValidateName("run", name);
}

absl::Status ValidateAliasName(absl::string_view name) {
  return ValidateName("alias", name);
}

absl::Status ValidateUserAliasName(absl::string_view name) {
  if (name == "last" || name == "best") {
    return absl::InvalidArgumentError(absl::StrCat(
        "alias '", name, "' is kept by the server; choose another alias name"));
  }
  if (auto st = ValidateName("alias", name); !st.ok()) return st;
  if (std::all_of(name.begin(), name.end(), absl::ascii_isdigit)) {
    return absl::InvalidArgumentError(
        absl::StrCat("alias name '", name,
                     "' is all digits and would read as a version number"));
  }
  return absl::OkStatus();
}

absl::Status ValidateMetricName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxMetricNameLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("metric name ", Quote(name), " must be 1-",
                     kMaxMetricNameLength, " characters"));
  }
  for (char c : name) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(absl::StrCat(
          "metric name ", Quote(name), " contains a control character"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Ref> ParseRef(absl::string_view ref) {
  if (!ref.empty() &&
      std::all_of(ref.begin(), ref.end(), absl::ascii_isdigit)) {
    uint64_t v = 0;
    if (!absl::SimpleAtoi(ref, &v) || v == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ref '", ref,
          "' is not a valid version number (versions start at 1)"));
    }
    return Ref{v};
  }
  if (ref.empty()) {
    return absl::InvalidArgumentError(
        "ref is empty; use a version number, 'last', 'best' or an alias");
  }
  if (auto st = ValidateName("alias", ref); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ref ", Quote(ref),
        " is neither a version number nor an alias name: ", st.message()));
  }
  return Ref{std::string(ref)};
}

absl::Status ValidateIdentity(absl::string_view identity) {
  if (identity.empty() || identity.size() > kMaxIdentityLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        "identity of ", identity.size(), " characters; it must be 1-",
        kMaxIdentityLength, " (the limit is ", kMaxIdentityLength, ")"));
  }
  for (char c : identity) {
    if (!IsNameChar(c) && c != '@' && c != '+') {
      return absl::InvalidArgumentError(
          absl::StrCat("identity ", Quote(identity), " has ", Quote({&c, 1}),
                       "; identities hold letters, digits and . _ - @ +"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateRoleName(absl::string_view role) {
  if (role == "reader" || role == "writer" || role == "admin") {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("role ", Quote(role), " is not reader, writer or admin"));
}

absl::Status ValidateRunPattern(absl::string_view pattern) {
  if (pattern.empty()) {
    return absl::InvalidArgumentError(
        "empty run pattern (a stray comma?); use e.g. `*` or `llama-*`");
  }
  if (pattern.size() > kMaxRunPatternLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("run pattern of ", pattern.size(),
                     " characters; the limit is ", kMaxRunPatternLength));
  }
  for (char c : pattern) {
    if (!IsNameChar(c) && c != '*' && c != '?') {
      return absl::InvalidArgumentError(absl::StrCat(
          "run pattern ", Quote(pattern), " has ", Quote({&c, 1}),
          "; patterns hold run-name characters [A-Za-z0-9._-] and the "
          "wildcards * and ?"));
    }
  }
  return absl::OkStatus();
}

}  // namespace ckptd
