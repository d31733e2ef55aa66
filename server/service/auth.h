// Authentication: who is calling. The --auth_file's table of credentials,
// and the gRPC AuthMetadataProcessor that turns a call's bearer token or
// mTLS certificate into an identity. What an identity may do is decided in
// access.h.
//
// The auth file has one credential a line; `#` starts a comment:
//
//   IDENTITY ROLE RUN_PATTERNS CREDENTIAL
//   alice    writer  llama-*,bert   sha256:9f86d081884c7d65...  (64 hex)
//   deploy   reader  *              cert:inference.prod
//
// ROLE is reader, writer or admin (reader < writer < admin). RUN_PATTERNS is
// a comma list of globs over run names (`*` any run, `llama-*`, `exp-?`).
// CREDENTIAL is `sha256:HEX`, the SHA-256 of a bearer token (the file never
// holds a token; `ckpt token new` makes one), or `cert:CN`, the subject
// common name of an mTLS client certificate (the rest of the line, so a CN
// may contain spaces).
//
// Thread safety: AuthTable is immutable; Authenticator is thread-safe and
// may be reloaded while calls run (each lookup sees the old or the new
// table).
#ifndef CKPTD_SERVER_SERVICE_AUTH_H_
#define CKPTD_SERVER_SERVICE_AUTH_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/security/auth_metadata_processor.h"

namespace ckptd::service {

enum class Role { kReader = 1, kWriter = 2, kAdmin = 3 };

absl::string_view RoleName(Role role);

// True when `name` matches the glob `pattern` (`*` any run of characters,
// `?` one character, everything else itself).
bool GlobMatch(absl::string_view pattern, absl::string_view name);

// What a caller is, as the auth context says.
struct Principal {
  std::string identity;
  Role role = Role::kReader;
  std::vector<std::string> run_patterns;

  bool MayTouchRun(absl::string_view run) const;
};

class AuthTable {
 public:
  struct Entry {
    Principal principal;
    enum class Kind { kTokenSha256, kCertCommonName } kind;
    std::string credential;  // 64 lowercase hex digits, or the CN
    int line = 0;
  };

  // Parses an auth file's text. `source` names it in errors, which give the
  // line number and what is wrong with it (never a credential's value).
  static absl::StatusOr<AuthTable> Parse(absl::string_view text,
                                         absl::string_view source);
  static absl::StatusOr<AuthTable> Load(const std::string& path);

  // The entry whose token digest equals SHA-256(token). Compares against
  // every token entry in constant time per entry, so the time taken does
  // not tell how much of a digest matched.
  const Entry* FindToken(absl::string_view token) const;
  const Entry* FindCertCommonName(absl::string_view cn) const;
  const std::vector<Entry>& entries() const { return entries_; }

 private:
  std::vector<Entry> entries_;
};

// Why a call was refused for who it is (the ckptd_auth_failures_total
// metric's `reason`).
enum class AuthFailure {
  kBadToken,            // malformed authorization header, or unknown token
  kUnknownCertificate,  // a verified client certificate with no cert: line
  kNoCredential,        // none, where one is needed
  kPermissionDenied,    // known identity without the role or the run
};
inline constexpr size_t kAuthFailureKinds = 4;
// "bad_token", "unknown_certificate", "no_credential", "permission_denied".
absl::string_view AuthFailureName(AuthFailure failure);

// The credential table in force, and the AuthMetadataProcessor of a server
// with --auth_file.
//
// Identify() is the one answer to "who is this call": the bearer token of
// its `authorization: Bearer T` header if it has one, else the subject CN of
// the client certificate the TLS handshake verified. It is asked per call
// (access.h). gRPC 1.51 keeps properties a processor adds on the
// connection's auth context, shared by every later call on it, so an
// identity is never stored there: a token on one call must not vouch for
// the next.
//
// As processor, per call: an unknown token or certificate fails the call
// with UNAUTHENTICATED before any handler runs (any service); health checks
// are open whatever they carry; reflection needs a known credential; a call
// with no credential goes on to the access table, which refuses what needs
// an identity.
class Authenticator final : public grpc::AuthMetadataProcessor {
 public:
  Authenticator(std::string path, AuthTable table);

  // Re-reads the file. On a parse error the old table stays and the error
  // (line and reason) is returned for the log.
  absl::Status Reload();
  // nullopt: the call has no credential. UNAUTHENTICATED: it has one that
  // the table does not know (or a malformed header).
  absl::StatusOr<std::optional<Principal>> Identify(
      const std::optional<absl::string_view>& authorization_header,
      const grpc::AuthContext* transport) const;
  size_t size() const;

  // Refusals counted since start, for metrics. Identify and Process count
  // what they refuse (each refused call once: a call Process refuses never
  // reaches the access table); AccessPolicy counts the rest.
  void CountFailure(AuthFailure failure) const;
  uint64_t failures(AuthFailure failure) const;

  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& auth_metadata,
                       grpc::AuthContext* context,
                       OutputMetadata* consumed_auth_metadata,
                       OutputMetadata* response_metadata) override;

 private:
  std::shared_ptr<const AuthTable> table() const;

  const std::string path_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const AuthTable> table_ ABSL_GUARDED_BY(mu_);
  mutable std::array<std::atomic<uint64_t>, kAuthFailureKinds> failures_{};
};

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_AUTH_H_
