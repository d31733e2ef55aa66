#include "server/service/auth.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "proto/base/names.h"
#include "proto/base/secret.h"

namespace ckptd::service {
namespace {

constexpr size_t kMaxCommonNameLength = 256;
// A bearer token longer than this is refused unhashed.
constexpr size_t kMaxTokenLength = 4096;
constexpr absl::string_view kTokenPrefix = "sha256:";
constexpr absl::string_view kCertPrefix = "cert:";

absl::StatusOr<Role> ParseRole(absl::string_view s) {
  if (auto st = ValidateRoleName(s); !st.ok()) return st;
  return s == "reader"   ? Role::kReader
         : s == "writer" ? Role::kWriter
                         : Role::kAdmin;
}

absl::StatusOr<AuthTable::Entry> ParseLine(absl::string_view line) {
  AuthTable::Entry entry;
  // Four fields; the fourth (the credential) is the rest of the line.
  std::vector<absl::string_view> fields;
  absl::string_view rest = absl::StripAsciiWhitespace(line);
  for (int i = 0; i < 3 && !rest.empty(); ++i) {
    size_t end = 0;
    while (end < rest.size() &&
           !absl::ascii_isspace(static_cast<unsigned char>(rest[end]))) {
      ++end;
    }
    fields.push_back(rest.substr(0, end));
    rest = absl::StripLeadingAsciiWhitespace(rest.substr(end));
  }
  if (!rest.empty()) fields.push_back(rest);
  if (fields.size() != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("has ", fields.size(),
                     " fields; expected IDENTITY ROLE RUN_PATTERNS "
                     "CREDENTIAL (e.g. `alice writer llama-* sha256:HEX`)"));
  }
  const absl::string_view identity = fields[0];
  if (auto st = ValidateIdentity(identity); !st.ok()) return st;
  entry.principal.identity = std::string(identity);
  auto role = ParseRole(fields[1]);
  if (!role.ok()) return role.status();
  entry.principal.role = *role;
  for (absl::string_view p : absl::StrSplit(fields[2], ',')) {
    if (auto st = ValidateRunPattern(p); !st.ok()) return st;
    entry.principal.run_patterns.emplace_back(p);
  }
  const absl::string_view cred = fields[3];
  if (absl::StartsWith(cred, kTokenPrefix)) {
    std::string hex = absl::AsciiStrToLower(cred.substr(kTokenPrefix.size()));
    if (hex.size() != 64 ||
        hex.find_first_not_of("0123456789abcdef") != std::string::npos) {
      return absl::InvalidArgumentError(
          "credential sha256: needs the 64 hex digits of a token's SHA-256 "
          "(`ckpt token new` prints the whole line)");
    }
    entry.kind = AuthTable::Entry::Kind::kTokenSha256;
    entry.credential = std::move(hex);
  } else if (absl::StartsWith(cred, kCertPrefix)) {
    const absl::string_view cn =
        absl::StripAsciiWhitespace(cred.substr(kCertPrefix.size()));
    if (cn.empty() || cn.size() > kMaxCommonNameLength) {
      return absl::InvalidArgumentError(
          absl::StrCat("credential cert: needs a certificate subject CN of "
                       "1-",
                       kMaxCommonNameLength, " characters"));
    }
    entry.kind = AuthTable::Entry::Kind::kCertCommonName;
    entry.credential = std::string(cn);
  } else {
    return absl::InvalidArgumentError(
        "credential must start with sha256: (a token's SHA-256) or cert: (a "
        "client certificate's CN); a bare token does not belong in the file");
  }
  return entry;
}

}  // namespace

absl::string_view RoleName(Role role) {
  switch (role) {
    case Role::kReader:
      return "reader";
    case Role::kWriter:
      return "writer";
    case Role::kAdmin:
      return "admin";
  }
  return "unknown";
}

bool GlobMatch(absl::string_view pattern, absl::string_view name) {
  // Iterative wildcard matching with one backtrack point (the last `*`).
  size_t p = 0, n = 0, star = absl::string_view::npos, mark = 0;
  while (n < name.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = n;
    } else if (p < pattern.size() &&
               (pattern[p] == '?' || pattern[p] == name[n])) {
      ++p;
      ++n;
    } else if (star != absl::string_view::npos) {
      p = star + 1;
      n = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

bool Principal::MayTouchRun(absl::string_view run) const {
  for (const std::string& p : run_patterns) {
    if (GlobMatch(p, run)) return true;
  }
  return false;
}

absl::StatusOr<AuthTable> AuthTable::Parse(absl::string_view text,
                                           absl::string_view source) {
  AuthTable table;
  absl::flat_hash_map<std::string, int> seen;  // credential -> line
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    const absl::string_view stripped = absl::StripAsciiWhitespace(line);
    if (stripped.empty() || stripped[0] == '#') continue;
    auto entry = ParseLine(stripped);
    if (!entry.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ":", line_no, ": ", entry.status().message()));
    }
    entry->line = line_no;
    const std::string key = absl::StrCat(
        entry->kind == Entry::Kind::kTokenSha256 ? kTokenPrefix : kCertPrefix,
        entry->credential);
    if (auto [it, inserted] = seen.emplace(key, line_no); !inserted) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ":", line_no, ": the same credential as line ",
                       it->second, "; one credential names one identity"));
    }
    table.entries_.push_back(*std::move(entry));
  }
  if (table.entries_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source,
        " has no credentials, so every call would be refused; add lines "
        "`IDENTITY ROLE RUN_PATTERNS sha256:HEX` (see `ckpt token new`)"));
  }
  return table;
}

absl::StatusOr<AuthTable> AuthTable::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read --auth_file ", path,
                                            ": ", std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return absl::DataLossError(
        absl::StrCat("error reading --auth_file ", path));
  }
  return Parse(text.str(), path);
}

const AuthTable::Entry* AuthTable::FindToken(absl::string_view token) const {
  const std::string digest = Sha256Hex(token);
  const Entry* found = nullptr;
  for (const Entry& e : entries_) {
    // No early exit: every token entry is compared.
    if (e.kind == Entry::Kind::kTokenSha256 &&
        ConstantTimeEquals(e.credential, digest)) {
      found = &e;
    }
  }
  return found;
}

const AuthTable::Entry* AuthTable::FindCertCommonName(
    absl::string_view cn) const {
  for (const Entry& e : entries_) {
    if (e.kind == Entry::Kind::kCertCommonName && e.credential == cn) return &e;
  }
  return nullptr;
}

Authenticator::Authenticator(std::string path, AuthTable table)
    : path_(std::move(path)),
      table_(std::make_shared<const AuthTable>(std::move(table))) {}

absl::Status Authenticator::Reload() {
  auto table = AuthTable::Load(path_);
  if (!table.ok()) return table.status();
  absl::MutexLock lock(&mu_);
  table_ = std::make_shared<const AuthTable>(*std::move(table));
  return absl::OkStatus();
}

size_t Authenticator::size() const { return table()->entries().size(); }

absl::string_view AuthFailureName(AuthFailure failure) {
  switch (failure) {
    case AuthFailure::kBadToken:
      return "bad_token";
    case AuthFailure::kUnknownCertificate:
      return "unknown_certificate";
    case AuthFailure::kNoCredential:
      return "no_credential";
    case AuthFailure::kPermissionDenied:
      return "permission_denied";
  }
  return "unknown";
}

void Authenticator::CountFailure(AuthFailure failure) const {
  failures_[static_cast<size_t>(failure)].fetch_add(1,
                                                    std::memory_order_relaxed);
}

uint64_t Authenticator::failures(AuthFailure failure) const {
  return failures_[static_cast<size_t>(failure)].load(
      std::memory_order_relaxed);
}

std::shared_ptr<const AuthTable> Authenticator::table() const {
  absl::MutexLock lock(&mu_);
  return table_;
}

absl::StatusOr<std::optional<Principal>> Authenticator::Identify(
    const std::optional<absl::string_view>& header,
    const grpc::AuthContext* transport) const {
  const std::shared_ptr<const AuthTable> table = this->table();
  if (header.has_value()) {
    constexpr absl::string_view kBearer = "bearer ";
    if (header->size() <= kBearer.size() ||
        !absl::EqualsIgnoreCase(header->substr(0, kBearer.size()), kBearer)) {
      CountFailure(AuthFailure::kBadToken);
      return absl::UnauthenticatedError(
          "the authorization header is not `Bearer TOKEN`");
    }
    const absl::string_view token =
        absl::StripAsciiWhitespace(header->substr(kBearer.size()));
    const AuthTable::Entry* entry = nullptr;
    if (token.size() > kMaxTokenLength ||
        (entry = table->FindToken(token)) == nullptr) {
      CountFailure(AuthFailure::kBadToken);
      return absl::UnauthenticatedError(
          "the bearer token is not in ckptd's --auth_file (mistyped, or "
          "revoked); ask an admin for a token made by `ckpt token new`");
    }
    return entry->principal;
  }
  if (transport != nullptr) {
    const auto cns = transport->FindPropertyValues("x509_common_name");
    if (!cns.empty()) {
      const absl::string_view cn(cns[0].data(), cns[0].size());
      const AuthTable::Entry* entry = table->FindCertCommonName(cn);
      if (entry == nullptr) {
        CountFailure(AuthFailure::kUnknownCertificate);
        return absl::UnauthenticatedError(
            absl::StrCat("client certificate CN '", cn.substr(0, 200),
                         "' has no `cert:` line in ckptd's --auth_file"));
      }
      return entry->principal;
    }
  }
  return std::optional<Principal>();
}

grpc::Status Authenticator::Process(const InputMetadata& auth_metadata,
                                    grpc::AuthContext* context,
                                    OutputMetadata* /*consumed*/,
                                    OutputMetadata* /*response_metadata*/) {
  auto value_of =
      [&](absl::string_view key) -> std::optional<absl::string_view> {
    auto it = auth_metadata.find(grpc::string_ref(key.data(), key.size()));
    if (it == auth_metadata.end()) return std::nullopt;
    return absl::string_view(it->second.data(), it->second.size());
  };
  const absl::string_view path = value_of(":path").value_or("");
  // Health is open to probes, whatever they send.
  if (absl::StartsWith(path, "/grpc.health.v1.Health/")) {
    return grpc::Status::OK;
  }
  auto who = Identify(value_of("authorization"), context);
  if (!who.ok()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        std::string(who.status().message()));
  }
  if (!who->has_value() && absl::StartsWith(path, "/grpc.reflection.")) {
    CountFailure(AuthFailure::kNoCredential);
    return grpc::Status(
        grpc::StatusCode::UNAUTHENTICATED,
        "reflection needs a credential on this server: pass a bearer token "
        "(authorization: Bearer TOKEN) or a client certificate");
  }
  return grpc::Status::OK;  // the access table decides per method
}

}  // namespace ckptd::service
