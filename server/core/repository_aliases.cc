// Repository, part: the record helpers every part uses (runs, versions,
// refs, aliases), and the operator writes — SetAlias, DeleteAlias,
// SetPolicy, Pin/Unpin, DeleteVersion. Each write is one synced WriteBatch
// under mu_; blobs freed by a deletion are purged after mu_ is released.
#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "proto/base/names.h"
#include "proto/base/status.h"
#include "server/core/best_selector.h"
#include "server/core/manifest.h"
#include "server/core/repository.h"
#include "server/core/repository_internal.h"
#include "server/core/retention_policy.h"
#include "spdlog/spdlog.h"

namespace ckptd::core {

using internal::kBest;
using internal::kLast;
using internal::VersionName;

absl::StatusOr<v1::RunInfo> Repository::LoadRun(const std::string& run) {
  CKPTD_RETURN_IF_ERROR(ValidateRunName(run));
  v1::RunInfo info;
  CKPTD_ASSIGN_OR_RETURN(bool found,
                         meta_->GetProto(storage::keys::Run(run), &info));
  if (!found) {
    return absl::NotFoundError(absl::StrCat("no run named '", run, "'"));
  }
  return info;
}

absl::StatusOr<v1::VersionInfo> Repository::LoadVersion(const std::string& run,
                                                        uint64_t version) {
  v1::VersionInfo info;
  CKPTD_ASSIGN_OR_RETURN(
      bool found, meta_->GetProto(storage::keys::Version(run, version), &info));
  if (!found) {
    return absl::NotFoundError(
        absl::StrCat("run '", run, "' has no version ", version));
  }
  return info;
}

absl::StatusOr<uint64_t> Repository::Resolve(const std::string& run,
                                             const std::string& ref) {
  CKPTD_ASSIGN_OR_RETURN(Ref parsed, ParseRef(ref));
  if (const uint64_t* v = std::get_if<uint64_t>(&parsed.value)) return *v;
  const std::string& alias = std::get<std::string>(parsed.value);
  v1::AliasInfo info;
  CKPTD_ASSIGN_OR_RETURN(
      bool found, meta_->GetProto(storage::keys::Alias(run, alias), &info));
  if (!found) {
    std::string hint;
    if (alias == kBest) {
      hint =
          " (`best` needs a policy with a monitored metric and a version "
          "that reports it)";
    } else if (alias == kLast) {
      hint = " (no version has been committed yet)";
    }
    return absl::NotFoundError(
        absl::StrCat("run '", run, "' has no alias '", alias, "'", hint));
  }
  return info.version();
}

absl::StatusOr<uint64_t> Repository::AliasTargetOrZero(
    const std::string& run, const std::string& alias) {
  absl::StatusOr<uint64_t> v = Resolve(run, alias);
  if (absl::IsNotFound(v.status())) return 0;
  return v;
}

absl::StatusOr<v1::VersionInfo> Repository::LoadCommitted(
    const std::string& run, const std::string& ref) {
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run_info, LoadRun(run));
  CKPTD_ASSIGN_OR_RETURN(uint64_t version, Resolve(run, ref));
  CKPTD_ASSIGN_OR_RETURN(v1::VersionInfo info, LoadVersion(run, version));
  switch (info.state()) {
    case v1::COMMITTED:
      return info;
    case v1::PENDING:
      return absl::FailedPreconditionError(absl::StrCat(
          VersionName(run, version), " is pending (", info.shards_size(),
          " of ", info.world_size(), " shards committed)"));
    default:
      return absl::FailedPreconditionError(absl::StrCat(
          VersionName(run, version), " was aborted: ", info.abort_reason()));
  }
}

absl::StatusOr<std::vector<v1::AliasInfo>> Repository::LoadAliases(
    const std::string& run) {
  std::vector<v1::AliasInfo> out;
  CKPTD_RETURN_IF_ERROR(meta_->ScanProtos<v1::AliasInfo>(
      storage::keys::AliasPrefix(run), "", [&](absl::string_view, auto&& a) {
        out.push_back(std::move(a));
        return true;
      }));
  return out;
}

absl::Status Repository::FillAliases(v1::VersionInfo* info) {
  CKPTD_ASSIGN_OR_RETURN(auto aliases, LoadAliases(info->run()));
  info->clear_aliases();
  for (const auto& a : aliases) {
    if (a.version() == info->version()) info->add_aliases(a.name());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<v1::VersionInfo>> Repository::LoadVersions(
    const std::string& run) {
  std::vector<v1::VersionInfo> out;
  CKPTD_RETURN_IF_ERROR(meta_->ScanProtos<v1::VersionInfo>(
      storage::keys::VersionPrefix(run), "", [&](absl::string_view, auto&& v) {
        out.push_back(std::move(v));
        return true;
      }));
  return out;
}

absl::StatusOr<uint64_t> Repository::NextEventSeq(const std::string& run) {
  CKPTD_ASSIGN_OR_RETURN(auto last,
                         meta_->Last(storage::keys::AliasEventPrefix(run)));
  if (!last.has_value()) return 1;
  auto seq = storage::keys::VersionFromKey(last->first);
  if (!seq.has_value()) {
    return absl::DataLossError(
        absl::StrCat("malformed alias history key ", last->first));
  }
  return *seq + 1;
}

absl::Status Repository::MoveAlias(storage::MetadataBatch& batch,
                                   const std::string& run,
                                   const std::string& alias, uint64_t to,
                                   const Actor& actor, uint64_t* event_seq) {
  v1::AliasInfo current;
  CKPTD_ASSIGN_OR_RETURN(
      bool found, meta_->GetProto(storage::keys::Alias(run, alias), &current));
  const uint64_t from = found ? current.version() : 0;
  if (from == to) return absl::OkStatus();
  if (to == 0) {
    batch.Delete(storage::keys::Alias(run, alias));
  } else {
    v1::AliasInfo info;
    info.set_run(run);
    info.set_name(alias);
    info.set_version(to);
    info.set_updated_at(NowNanos());
    batch.Put(storage::keys::Alias(run, alias), info);
  }
  v1::AliasEvent event;
  event.set_run(run);
  event.set_alias(alias);
  event.set_from_version(from);
  event.set_to_version(to);
  event.set_at(NowNanos());
  event.set_actor(actor.name);
  batch.Put(storage::keys::AliasEvent(run, (*event_seq)++), event);
  return absl::OkStatus();
}

absl::StatusOr<v1::Policy> Repository::SetPolicy(
    const v1::SetPolicyRequest& req, const Actor& actor) {
  CKPTD_RETURN_IF_ERROR(CheckWritable("policy changes (SetPolicy)"));
  CKPTD_RETURN_IF_ERROR(ValidateRunName(req.run()));
  const v1::Policy& p = req.policy();
  if (!p.monitor().empty()) {
    CKPTD_RETURN_IF_ERROR(ValidateMetricName(p.monitor()));
    if (p.mode() != v1::MIN && p.mode() != v1::MAX) {
      return absl::InvalidArgumentError(absl::StrCat(
          "policy for run '", req.run(), "' monitors '", p.monitor(),
          "' but mode is unset; use mode min or max"));
    }
  }
  if (p.has_keep_last() && p.keep_last() == 0) {
    return absl::InvalidArgumentError(
        "keep_last must be at least 1 (leave it unset to keep every version)");
  }
  if (p.has_keep_best() && p.keep_best() == 0) {
    return absl::InvalidArgumentError(
        "keep_best must be at least 1 (leave it unset to keep every version)");
  }
  if (p.has_keep_best() && p.monitor().empty()) {
    return absl::InvalidArgumentError(
        "keep_best needs a monitored metric (set monitor and mode)");
  }
  if (p.has_keep_every_n_steps() && p.keep_every_n_steps() == 0) {
    return absl::InvalidArgumentError(
        "keep_every_n_steps must be at least 1 (leave it unset to disable)");
  }
  std::vector<AliasMove> moves;
  {
    absl::MutexLock lock(&mu_);
    v1::RunInfo run;
    CKPTD_ASSIGN_OR_RETURN(
        bool found, meta_->GetProto(storage::keys::Run(req.run()), &run));
    if (!found) {
      run.set_name(req.run());
      run.set_created_at(NowNanos());
    }
    const bool best_changes = !found || run.policy().monitor() != p.monitor() ||
                              run.policy().mode() != p.mode();
    *run.mutable_policy() = p;
    if (p.monitor().empty())
      run.mutable_policy()->set_mode(v1::MODE_UNSPECIFIED);
    if (!actor.admin && found) {
      // Retention applies a policy by deleting versions: a change that
      // would delete versions that exist now is an admin's decision.
      const RetentionPolicy retention(run.policy());
      if (!retention.KeepsEverything()) {
        CKPTD_ASSIGN_OR_RETURN(auto versions, LoadVersions(req.run()));
        CKPTD_ASSIGN_OR_RETURN(auto aliases, LoadAliases(req.run()));
        const std::vector<uint64_t> drop =
            retention.VersionsToDrop(versions, aliases);
        if (!drop.empty()) {
          constexpr size_t kShown = 20;
          std::string shown = absl::StrJoin(
              drop.begin(), drop.begin() + std::min(drop.size(), kShown), ", ");
          if (drop.size() > kShown) {
            absl::StrAppend(&shown, " and ", drop.size() - kShown, " more");
          }
          return absl::PermissionDeniedError(absl::StrCat(
              "this policy for run '", req.run(),
              "' would make retention delete versions ", shown, "; identity '",
              actor.name,
              "' may not delete versions: that needs role admin (or pin "
              "the versions to keep first)"));
        }
      }
    }
    storage::MetadataBatch batch;
    batch.Put(storage::keys::Run(req.run()), run);
    AddAudit(batch, actor, req.run(), "set_policy", 0,
             run.policy().ShortDebugString());
    if (best_changes && found) {
      CKPTD_ASSIGN_OR_RETURN(auto versions, LoadVersions(req.run()));
      const uint64_t best = SelectBest(versions, run.policy());
      CKPTD_ASSIGN_OR_RETURN(uint64_t current,
                             AliasTargetOrZero(req.run(), std::string(kBest)));
      CKPTD_ASSIGN_OR_RETURN(uint64_t seq, NextEventSeq(req.run()));
      CKPTD_RETURN_IF_ERROR(
          MoveAlias(batch, req.run(), std::string(kBest), best, actor, &seq));
      if (best != 0 && best != current) {
        CKPTD_ASSIGN_OR_RETURN(v1::VersionInfo target,
                               LoadVersion(req.run(), best));
        moves.push_back({std::string(kBest), target});
      }
    }
    CKPTD_RETURN_IF_ERROR(meta_->Commit(batch));
    for (auto& m : moves) CKPTD_RETURN_IF_ERROR(FillAliases(&m.target));
    watchers_.Notify(req.run(), moves);
  }
  // The policy is saved; retention failing is logged, as after a commit.
  auto deleted = ApplyRetention(req.run());
  if (!deleted.ok()) {
    spdlog::warn("retention for run {}: {}", req.run(),
                 deleted.status().ToString());
  }
  absl::ReaderMutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(req.run()));
  return run.policy();
}

absl::StatusOr<v1::Policy> Repository::GetPolicy(
    const v1::GetPolicyRequest& req) {
  absl::ReaderMutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(req.run()));
  return run.policy();
}

absl::StatusOr<v1::AliasInfo> Repository::SetAlias(
    const v1::SetAliasRequest& req, const Actor& actor) {
  CKPTD_RETURN_IF_ERROR(CheckWritable("alias moves (SetAlias)"));
  CKPTD_RETURN_IF_ERROR(ValidateRunName(req.run()));
  CKPTD_RETURN_IF_ERROR(ValidateUserAliasName(req.name()));
  v1::VersionInfo target;
  {
    absl::MutexLock lock(&mu_);
    CKPTD_ASSIGN_OR_RETURN(target, LoadCommitted(req.run(), req.ref()));
    storage::MetadataBatch batch;
    CKPTD_ASSIGN_OR_RETURN(uint64_t seq, NextEventSeq(req.run()));
    CKPTD_RETURN_IF_ERROR(
        MoveAlias(batch, req.run(), req.name(), target.version(), actor, &seq));
    if (!batch.empty()) {
      CKPTD_RETURN_IF_ERROR(meta_->Commit(batch));
      CKPTD_RETURN_IF_ERROR(FillAliases(&target));
      watchers_.Notify(req.run(), {{req.name(), target}});
    }
  }
  absl::ReaderMutexLock lock(&mu_);
  v1::AliasInfo info;
  CKPTD_ASSIGN_OR_RETURN(
      bool found,
      meta_->GetProto(storage::keys::Alias(req.run(), req.name()), &info));
  if (!found) return absl::InternalError("alias vanished after SetAlias");
  return info;
}

absl::Status Repository::DeleteAlias(const v1::DeleteAliasRequest& req,
                                     const Actor& actor) {
  CKPTD_RETURN_IF_ERROR(CheckWritable("alias deletes (DeleteAlias)"));
  CKPTD_RETURN_IF_ERROR(ValidateRunName(req.run()));
  CKPTD_RETURN_IF_ERROR(ValidateUserAliasName(req.name()));
  absl::MutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(req.run()));
  CKPTD_ASSIGN_OR_RETURN(
      auto existing, meta_->Get(storage::keys::Alias(req.run(), req.name())));
  if (!existing.has_value()) {
    return absl::NotFoundError(
        absl::StrCat("run '", req.run(), "' has no alias '", req.name(), "'"));
  }
  storage::MetadataBatch batch;
  CKPTD_ASSIGN_OR_RETURN(uint64_t seq, NextEventSeq(req.run()));
  CKPTD_RETURN_IF_ERROR(
      MoveAlias(batch, req.run(), req.name(), 0, actor, &seq));
  return meta_->Commit(batch);
}

absl::StatusOr<v1::VersionInfo> Repository::SetPinned(const v1::PinRequest& req,
                                                      bool pinned,
                                                      const Actor& actor) {
  CKPTD_RETURN_IF_ERROR(CheckWritable("pins (Pin, Unpin)"));
  absl::MutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::VersionInfo info,
                         LoadCommitted(req.run(), req.ref()));
  if (info.pinned() != pinned) {
    info.set_pinned(pinned);
    storage::MetadataBatch batch;
    batch.Put(storage::keys::Version(info.run(), info.version()), info);
    AddAudit(batch, actor, info.run(), pinned ? "pin" : "unpin", info.version(),
             "");
    CKPTD_RETURN_IF_ERROR(meta_->Commit(batch));
  }
  CKPTD_RETURN_IF_ERROR(FillAliases(&info));
  return info;
}

absl::Status Repository::DeleteVersion(const v1::DeleteVersionRequest& req,
                                       const Actor& actor) {
  CKPTD_RETURN_IF_ERROR(CheckWritable("deletes (DeleteVersion)"));
  {
    absl::MutexLock lock(&mu_);
    CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(req.run()));
    CKPTD_ASSIGN_OR_RETURN(uint64_t version, Resolve(req.run(), req.ref()));
    CKPTD_ASSIGN_OR_RETURN(v1::VersionInfo info,
                           LoadVersion(req.run(), version));
    const std::string name = VersionName(req.run(), version);
    if (info.state() == v1::PENDING) {
      return absl::FailedPreconditionError(
          absl::StrCat(name, " is pending; abort it instead"));
    }
    if (info.pinned()) {
      return absl::FailedPreconditionError(
          absl::StrCat(name, " is pinned; unpin it first"));
    }
    CKPTD_RETURN_IF_ERROR(FillAliases(&info));
    std::vector<std::string> user_aliases;
    std::vector<std::string> server_aliases;  // last, best
    for (const std::string& a : info.aliases()) {
      (a == kLast || a == kBest ? server_aliases : user_aliases).push_back(a);
    }
    if (!user_aliases.empty() || (!server_aliases.empty() && !req.force())) {
      const std::string user = absl::StrJoin(user_aliases, ", ");
      const std::string server = absl::StrJoin(server_aliases, " and ");
      std::string message;
      if (user_aliases.empty()) {
        message = absl::StrCat(
            name, " is the run's ", server,
            "; to delete it anyway use --force (ckpt rm --force, admin): "
            "last then moves to the previous committed version and best to "
            "the best remaining one under the run's policy");
      } else if (server_aliases.empty()) {
        message = absl::StrCat(name, " is the target of alias(es) ", user,
                               "; move or delete them first");
      } else if (req.force()) {
        message =
            absl::StrCat(name, " is the target of alias(es) ", user,
                         "; --force moves only last and best: move or delete ",
                         user, " first (ckpt alias, ckpt unalias)");
      } else {
        message = absl::StrCat(
            name, " is the target of alias(es) ",
            absl::StrJoin(info.aliases(), ", "), "; move or delete ", user,
            " first, then delete it with --force (ckpt rm --force) to move ",
            server);
      }
      return absl::FailedPreconditionError(message);
    }
    storage::MetadataBatch batch;
    CKPTD_ASSIGN_OR_RETURN(std::vector<Digest> unreferenced,
                           DeleteVersionRecords(batch, info));
    std::string detail = absl::StrCat("step ", info.step());
    std::vector<AliasMove> moves;
    if (!server_aliases.empty()) {
      // --force: last and best move as if this version had never been.
      CKPTD_ASSIGN_OR_RETURN(std::vector<v1::VersionInfo> versions,
                             LoadVersions(req.run()));
      std::vector<v1::VersionInfo> remaining;
      for (v1::VersionInfo& v : versions) {
        if (v.version() != version) remaining.push_back(std::move(v));
      }
      CKPTD_ASSIGN_OR_RETURN(uint64_t seq, NextEventSeq(req.run()));
      absl::StrAppend(&detail, "; forced");
      for (const std::string& alias : server_aliases) {
        uint64_t to = 0;
        if (alias == kLast) {
          for (const v1::VersionInfo& v : remaining) {
            if (v.state() == v1::COMMITTED) to = std::max(to, v.version());
          }
        } else {
          to = SelectBest(remaining, run.policy());
        }
        CKPTD_RETURN_IF_ERROR(
            MoveAlias(batch, req.run(), alias, to, actor, &seq));
        absl::StrAppend(&detail, ", ", alias, ": ", version, " -> ",
                        to == 0 ? std::string("none") : absl::StrCat(to));
        for (const v1::VersionInfo& v : remaining) {
          if (to != 0 && v.version() == to) moves.push_back({alias, v});
        }
      }
    }
    AddAudit(batch, actor, req.run(), "delete_version", version, detail);
    CKPTD_RETURN_IF_ERROR(meta_->Commit(batch));
    DropRefs(req.run(), unreferenced);
    if (!server_aliases.empty()) {
      spdlog::info("deleted {} with --force ({}) by {}", name, detail,
                   actor.name);
    }
    for (auto& m : moves) CKPTD_RETURN_IF_ERROR(FillAliases(&m.target));
    watchers_.Notify(req.run(), moves);
  }
  CollectNewGarbage("deleting a version");
  return absl::OkStatus();
}

absl::StatusOr<std::vector<absl::flat_hash_set<Digest>>>
Repository::LoadShardDigests(const std::string& run, uint64_t version) {
  std::vector<absl::flat_hash_set<Digest>> out;
  CKPTD_RETURN_IF_ERROR(meta_->ScanProtos<v1::ShardManifest>(
      storage::keys::ManifestPrefix(run, version), "",
      [&](absl::string_view, auto&& m) {
        out.push_back(ManifestDigests(m));
        return true;
      }));
  return out;
}

absl::StatusOr<std::vector<Digest>> Repository::DeleteVersionRecords(
    storage::MetadataBatch& batch, const v1::VersionInfo& info) {
  CKPTD_ASSIGN_OR_RETURN(auto shards,
                         LoadShardDigests(info.run(), info.version()));
  std::vector<Digest> unreferenced;
  for (const auto& digests : shards) {
    unreferenced.insert(unreferenced.end(), digests.begin(), digests.end());
  }
  batch.Delete(storage::keys::Version(info.run(), info.version()));
  for (const auto& shard : info.shards()) {
    batch.Delete(
        storage::keys::Manifest(info.run(), info.version(), shard.rank()));
  }
  return unreferenced;
}

}  // namespace ckptd::core

namespace ckptd::core {

void Repository::AddAudit(storage::MetadataBatch& batch, const Actor& actor,
                          const std::string& run, absl::string_view action,
                          uint64_t version, std::string detail) {
  v1::AuditEvent event;
  event.set_at(NowNanos());
  event.set_identity(actor.name);
  event.set_run(run);
  event.set_action(std::string(action));
  event.set_version(version);
  event.set_detail(std::move(detail));
  batch.Put(storage::keys::Audit(run, event.at(), audit_seq_.fetch_add(1)),
            event);
}

void Repository::RecordAudit(const Actor& actor, const std::string& run,
                             absl::string_view action, uint64_t version,
                             std::string detail) {
  storage::MetadataBatch batch;
  AddAudit(batch, actor, run, action, version, std::move(detail));
  if (absl::Status st = meta_->Commit(batch); !st.ok()) {
    spdlog::error("audit record of {} by {} on run '{}' not written: {}",
                  std::string(action), actor.name, run, st.ToString());
  }
}

}  // namespace ckptd::core
