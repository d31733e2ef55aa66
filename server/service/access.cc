#include "server/service/access.h"

#include <array>

#include "absl/strings/str_cat.h"
#include "proto/base/names.h"

namespace ckptd::service {
namespace {

constexpr Role R = Role::kReader;
constexpr Role W = Role::kWriter;
constexpr Role A = Role::kAdmin;

// The table. Order follows Method.
constexpr std::array<MethodRule, kMethodCount> kRules = {{
    {Method::kBeginVersion, "BeginVersion", W, true},
    {Method::kFindMissingBlobs, "FindMissingBlobs", W, true},
    {Method::kUploadBlobs, "UploadBlobs", W, true},
    {Method::kQueryUpload, "QueryUpload", W, true},
    {Method::kCommitShard, "CommitShard", W, true},
    {Method::kAbortVersion, "AbortVersion", W, true},
    {Method::kGetVersion, "GetVersion", R, true},
    {Method::kReadBlobs, "ReadBlobs", R, true},
    {Method::kExportSafetensors, "ExportSafetensors", R, true},
    {Method::kWatchRef, "WatchRef", R, true},
    {Method::kListRuns, "ListRuns", R, false},
    {Method::kListVersions, "ListVersions", R, true},
    {Method::kGetMetricHistory, "GetMetricHistory", R, true},
    {Method::kSetAlias, "SetAlias", W, true},
    {Method::kDeleteAlias, "DeleteAlias", W, true},
    {Method::kGetAliasHistory, "GetAliasHistory", R, true},
    {Method::kPin, "Pin", W, true},
    {Method::kUnpin, "Unpin", W, true},
    {Method::kDeleteVersion, "DeleteVersion", A, true},
    {Method::kSetPolicy, "SetPolicy", W, true},
    {Method::kGetPolicy, "GetPolicy", R, true},
    {Method::kCollectGarbage, "CollectGarbage", A, false},
    {Method::kVerify, "Verify", A, true},
    // Of one run: reader; of every run (empty run): admin, checked below.
    {Method::kGetAuditLog, "GetAuditLog", R, true},
    {Method::kBackup, "Backup", A, false},
}};

constexpr bool TableFollowsEnum() {
  for (size_t i = 0; i < kRules.size(); ++i) {
    if (static_cast<size_t>(kRules[i].method) != i) return false;
  }
  return true;
}
static_assert(TableFollowsEnum(), "kRules must list Methods in enum order");

// A run name echoed in an error: at most this many bytes of it.
constexpr size_t kShownRun = 200;

}  // namespace

const MethodRule& RuleFor(Method method) {
  return kRules[static_cast<size_t>(method)];
}

const MethodRule* RuleForName(absl::string_view name) {
  for (const MethodRule& rule : kRules) {
    if (rule.name == name) return &rule;
  }
  return nullptr;
}

absl::StatusOr<Principal> AccessPolicy::Authorize(
    const grpc::CallbackServerContext& ctx, Method method,
    absl::string_view run) const {
  if (auth_ == nullptr) {
    return Principal{"local", Role::kAdmin, {"*"}};
  }
  std::optional<absl::string_view> header;
  const auto& md = ctx.client_metadata();
  if (auto it = md.find("authorization"); it != md.end()) {
    header = absl::string_view(it->second.data(), it->second.size());
  }
  const std::shared_ptr<const grpc::AuthContext> transport = ctx.auth_context();
  return Authorize(header, transport.get(), method, run);
}

absl::StatusOr<Principal> AccessPolicy::Authorize(
    const std::optional<absl::string_view>& authorization,
    const grpc::AuthContext* transport, Method method,
    absl::string_view run) const {
  if (auth_ == nullptr) {
    return Principal{"local", Role::kAdmin, {"*"}};
  }
  const MethodRule& rule = RuleFor(method);
  absl::StatusOr<std::optional<Principal>> who =
      auth_->Identify(authorization, transport);
  if (!who.ok()) return who.status();
  if (!who->has_value()) {
    auth_->CountFailure(AuthFailure::kNoCredential);
    return absl::UnauthenticatedError(absl::StrCat(
        rule.name,
        " needs a credential: pass a bearer token (ckpt --token or "
        "$CKPTD_TOKEN; Python Client(token=...)) or an mTLS client "
        "certificate (--tls_cert/--tls_key)"));
  }
  std::optional<Principal> p = **std::move(who);
  Role needed = rule.role;
  if (method == Method::kGetAuditLog && run.empty()) needed = Role::kAdmin;
  const bool role_ok = static_cast<int>(p->role) >= static_cast<int>(needed);
  const bool run_ok = !rule.run_scoped || p->MayTouchRun(run) ||
                      (method == Method::kGetAuditLog && run.empty());
  if (!role_ok || !run_ok) auth_->CountFailure(AuthFailure::kPermissionDenied);
  if (!role_ok) {
    std::string on_run =
        rule.run_scoped
            ? absl::StrCat(" on run '", run.substr(0, kShownRun), "'")
            : "";
    return absl::PermissionDeniedError(absl::StrCat(
        "identity '", p->identity, "' has role ", RoleName(p->role), "; ",
        rule.name, on_run, " needs role ", RoleName(needed)));
  }
  if (!run_ok) {
    return absl::PermissionDeniedError(absl::StrCat(
        "identity '", p->identity, "' (", RoleName(p->role), ") may not call ",
        rule.name, " on run '", run.substr(0, kShownRun),
        "': it matches none of its run patterns"));
  }
  return *std::move(p);
}

}  // namespace ckptd::service
