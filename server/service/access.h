// Authorization: what each Checkpoint RPC needs, in one table, and the one
// check every handler makes before it touches the repository.
//
//   reader  GetVersion ReadBlobs ExportSafetensors WatchRef ListRuns
//           ListVersions GetMetricHistory GetAliasHistory GetPolicy
//           GetAuditLog (of one run)
//   writer  reader's, and BeginVersion FindMissingBlobs UploadBlobs
//           QueryUpload CommitShard AbortVersion SetAlias DeleteAlias Pin
//           Unpin SetPolicy (a SetPolicy that would delete versions that
//           exist now needs admin: the repository decides that part)
//   admin   everything: DeleteVersion CollectGarbage Verify Backup,
//           GetAuditLog of every run
//
// Run-scoped methods also need the run to match one of the identity's run
// patterns; ListRuns answers only the runs the caller may read.
// The caller is identified per call by Authenticator::Identify (auth.h):
// its bearer token, else its verified client certificate.
//
// Thread safety: immutable after construction; thread-safe.
#ifndef CKPTD_SERVER_SERVICE_ACCESS_H_
#define CKPTD_SERVER_SERVICE_ACCESS_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/grpcpp.h"
#include "server/service/auth.h"

namespace ckptd::service {

enum class Method {
  kBeginVersion,
  kFindMissingBlobs,
  kUploadBlobs,
  kQueryUpload,
  kCommitShard,
  kAbortVersion,
  kGetVersion,
  kReadBlobs,
  kExportSafetensors,
  kWatchRef,
  kListRuns,
  kListVersions,
  kGetMetricHistory,
  kSetAlias,
  kDeleteAlias,
  kGetAliasHistory,
  kPin,
  kUnpin,
  kDeleteVersion,
  kSetPolicy,
  kGetPolicy,
  kCollectGarbage,
  kVerify,
  kGetAuditLog,
  kBackup,
};
// The last Method + 1: update it with the enum (kRules, sized by it, stops
// compiling when a method is added without it).
inline constexpr size_t kMethodCount = static_cast<size_t>(Method::kBackup) + 1;

struct MethodRule {
  Method method;
  absl::string_view name;  // as in the proto service
  Role role;
  // The request names one run, which must match the caller's patterns.
  bool run_scoped;
};

// The rule of `method`; every Method has one.
const MethodRule& RuleFor(Method method);
// The rule for a method name of ckptd.v1.Checkpoint, or nullptr.
const MethodRule* RuleForName(absl::string_view name);

class AccessPolicy {
 public:
  // `auth` (not owned; null without --auth_file, when every caller is the
  // admin "local") identifies callers.
  explicit AccessPolicy(const Authenticator* auth) : auth_(auth) {}
  bool enabled() const { return auth_ != nullptr; }

  // The caller of `ctx`, allowed to call `method` on `run` (ignored for
  // methods that are not run-scoped). UNAUTHENTICATED without a
  // credential; PERMISSION_DENIED naming identity, role, method and run.
  absl::StatusOr<Principal> Authorize(const grpc::CallbackServerContext& ctx,
                                      Method method,
                                      absl::string_view run) const;
  // The same decision for a caller that is not a gRPC call (the web view,
  // web_view.h): `authorization` is its `Authorization` header, if any, and
  // `transport` its verified client certificate's auth context, or null.
  absl::StatusOr<Principal> Authorize(
      const std::optional<absl::string_view>& authorization,
      const grpc::AuthContext* transport, Method method,
      absl::string_view run) const;

 private:
  const Authenticator* auth_;
};

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_ACCESS_H_
