// Repository, part: the pull and history queries — GetVersion, read
// leases, ListRuns, ListVersions, GetMetricHistory, GetAliasHistory,
// Watch. Queries take mu_ shared. (Verify: repository_integrity.cc.)
#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "proto/base/status.h"
#include "server/core/repository.h"
#include "server/core/repository_internal.h"

namespace ckptd::core {

using internal::CheckVersionNumber;
using internal::kBest;
using internal::kLast;
using internal::VersionName;

absl::StatusOr<v1::GetVersionResponse> Repository::GetVersion(
    const v1::GetVersionRequest& req) {
  absl::ReaderMutexLock lock(&mu_);
  v1::GetVersionResponse resp;
  CKPTD_ASSIGN_OR_RETURN(*resp.mutable_info(),
                         LoadCommitted(req.run(), req.ref()));
  CKPTD_RETURN_IF_ERROR(FillAliases(resp.mutable_info()));
  if (!req.include_manifest()) return resp;
  const v1::VersionInfo& info = resp.info();
  for (uint32_t rank : req.ranks()) {
    if (rank >= info.world_size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "rank ", rank,
          " is out of range: ", VersionName(info.run(), info.version()),
          " has world_size ", info.world_size()));
    }
  }
  for (const auto& shard : info.shards()) {
    if (!req.ranks().empty() &&
        std::find(req.ranks().begin(), req.ranks().end(), shard.rank()) ==
            req.ranks().end()) {
      continue;
    }
    v1::ShardManifest* m = resp.add_shards();
    CKPTD_ASSIGN_OR_RETURN(
        bool found,
        meta_->GetProto(
            storage::keys::Manifest(info.run(), info.version(), shard.rank()),
            m));
    if (!found) {
      return absl::DataLossError(
          absl::StrCat("manifest of rank ", shard.rank(), " of ",
                       VersionName(info.run(), info.version()), " is missing"));
    }
  }
  return resp;
}

absl::StatusOr<std::unique_ptr<ReadLease>> Repository::LeaseForRead(
    const std::string& run, uint64_t version) {
  CKPTD_RETURN_IF_ERROR(CheckVersionNumber(version));
  // Exclusive: the pins must land before a GC can decide.
  absl::MutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::VersionInfo info,
                         LoadCommitted(run, absl::StrCat(version)));
  CKPTD_ASSIGN_OR_RETURN(auto shards, LoadShardDigests(run, version));
  absl::flat_hash_set<Digest> digests;
  for (auto& shard : shards) digests.insert(shard.begin(), shard.end());
  for (const Digest& d : digests) index_.Pin(d);
  return std::unique_ptr<ReadLease>(
      new ReadLease(this, run, version, std::move(digests)));
}

// ---------------------------------------------------------------------------
// History

absl::StatusOr<v1::ListRunsResponse> Repository::ListRuns() {
  absl::ReaderMutexLock lock(&mu_);
  v1::ListRunsResponse resp;
  CKPTD_RETURN_IF_ERROR(meta_->ScanProtos<v1::RunInfo>(
      storage::keys::kRunPrefix, "", [&](absl::string_view, auto&& run) {
        *resp.add_runs() = std::move(run);
        return true;
      }));
  for (v1::RunInfo& run : *resp.mutable_runs()) {
    CKPTD_ASSIGN_OR_RETURN(auto versions, LoadVersions(run.name()));
    for (const auto& v : versions) {
      if (v.state() != v1::COMMITTED) continue;
      run.set_version_count(run.version_count() + 1);
      run.set_total_bytes(run.total_bytes() + v.total_bytes());
      run.set_last_commit_at(std::max(run.last_commit_at(), v.committed_at()));
    }
    CKPTD_ASSIGN_OR_RETURN(auto aliases, LoadAliases(run.name()));
    for (const auto& a : aliases) {
      if (a.name() == kLast) run.set_last_version(a.version());
      if (a.name() == kBest) run.set_best_version(a.version());
    }
  }
  return resp;
}

absl::StatusOr<v1::ListVersionsResponse> Repository::ListVersions(
    const v1::ListVersionsRequest& req) {
  absl::ReaderMutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(req.run()));
  std::string start;
  if (!req.page_token().empty()) {
    uint64_t from = 0;
    if (!absl::SimpleAtoi(req.page_token(), &from)) {
      return absl::InvalidArgumentError(
          absl::StrCat("page_token '", req.page_token().substr(0, 64),
                       "' is not one this server returned"));
    }
    start = storage::keys::Version(req.run(), from);
  }
  CKPTD_ASSIGN_OR_RETURN(auto aliases, LoadAliases(req.run()));
  v1::ListVersionsResponse resp;
  size_t reply_bytes = 0;
  CKPTD_RETURN_IF_ERROR(meta_->ScanProtos<v1::VersionInfo>(
      storage::keys::VersionPrefix(req.run()), start,
      [&](absl::string_view, v1::VersionInfo&& v) {
        if (v.state() == v1::PENDING) return true;
        if (v.state() == v1::ABORTED && !req.include_aborted()) return true;
        if (req.has_min_step() && v.step() < req.min_step()) return true;
        if (req.has_max_step() && v.step() > req.max_step()) return true;
        if (!req.metric_present().empty() &&
            !v.metrics().contains(req.metric_present())) {
          return true;
        }
        for (const auto& [k, want] : req.label_equals()) {
          auto it = v.env().labels().find(k);
          if (it == v.env().labels().end() || it->second != want) return true;
        }
        if (req.page_size() > 0 &&
            static_cast<uint32_t>(resp.versions_size()) >= req.page_size()) {
          resp.set_next_page_token(absl::StrCat(v.version()));
          return false;
        }
        for (const auto& a : aliases) {
          if (a.version() == v.version()) v.add_aliases(a.name());
        }
        // A page ends before it outgrows a reply; it holds at least one
        // version (limits.h bounds one version's metadata far below).
        const size_t bytes = v.ByteSizeLong();
        if (resp.versions_size() > 0 &&
            reply_bytes + bytes > kMaxListReplyBytes) {
          resp.set_next_page_token(absl::StrCat(v.version()));
          return false;
        }
        reply_bytes += bytes;
        *resp.add_versions() = std::move(v);
        return true;
      }));
  return resp;
}

absl::StatusOr<v1::GetMetricHistoryResponse> Repository::GetMetricHistory(
    const v1::GetMetricHistoryRequest& req) {
  absl::ReaderMutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(req.run()));
  CKPTD_ASSIGN_OR_RETURN(auto versions, LoadVersions(req.run()));
  v1::GetMetricHistoryResponse resp;
  for (const auto& v : versions) {
    if (v.state() != v1::COMMITTED) continue;
    std::vector<std::pair<std::string, double>> metrics(v.metrics().begin(),
                                                        v.metrics().end());
    std::sort(metrics.begin(), metrics.end());
    for (const auto& [name, value] : metrics) {
      if (!req.metric().empty() && name != req.metric()) continue;
      v1::MetricPoint* p = resp.add_points();
      p->set_version(v.version());
      p->set_step(v.step());
      p->set_metric(name);
      p->set_value(value);
      p->set_committed_at(v.committed_at());
    }
  }
  return resp;
}

absl::StatusOr<v1::GetAliasHistoryResponse> Repository::GetAliasHistory(
    const v1::GetAliasHistoryRequest& req) {
  absl::ReaderMutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(req.run()));
  v1::GetAliasHistoryResponse resp;
  CKPTD_RETURN_IF_ERROR(meta_->ScanProtos<v1::AliasEvent>(
      storage::keys::AliasEventPrefix(req.run()), "",
      [&](absl::string_view, auto&& e) {
        if (req.alias().empty() || e.alias() == req.alias()) {
          *resp.add_events() = std::move(e);
        }
        return true;
      }));
  return resp;
}

absl::StatusOr<v1::GetAuditLogResponse> Repository::GetAuditLog(
    const v1::GetAuditLogRequest& req) {
  constexpr uint32_t kDefaultLimit = 1000;
  const size_t limit = req.limit() == 0 ? kDefaultLimit : req.limit();
  std::vector<v1::AuditEvent> events;
  absl::ReaderMutexLock lock(&mu_);
  if (!req.run().empty()) {
    CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run, LoadRun(req.run()));
  }
  const std::string alias_prefix =
      req.run().empty() ? "ahist/" : storage::keys::AliasEventPrefix(req.run());
  CKPTD_RETURN_IF_ERROR(meta_->ScanProtos<v1::AliasEvent>(
      alias_prefix, "", [&](absl::string_view, v1::AliasEvent&& e) {
        v1::AuditEvent a;
        a.set_at(e.at());
        a.set_identity(e.actor());
        a.set_run(e.run());
        a.set_action("alias_move");
        a.set_version(e.to_version());
        a.set_detail(e.to_version() == 0
                         ? absl::StrCat(e.alias(), ": deleted (was ",
                                        e.from_version(), ")")
                         : absl::StrCat(e.alias(), ": ",
                                        e.from_version() == 0
                                            ? std::string("new")
                                            : absl::StrCat(e.from_version()),
                                        " -> ", e.to_version()));
        events.push_back(std::move(a));
        return true;
      }));
  // Every run's records, or this run's and the server-wide ones.
  std::vector<std::string> prefixes;
  if (req.run().empty()) {
    prefixes.push_back("audit/");
  } else {
    prefixes.push_back(storage::keys::AuditPrefix(req.run()));
  }
  for (const std::string& prefix : prefixes) {
    CKPTD_RETURN_IF_ERROR(meta_->ScanProtos<v1::AuditEvent>(
        prefix, "", [&](absl::string_view, v1::AuditEvent&& e) {
          events.push_back(std::move(e));
          return true;
        }));
  }
  std::stable_sort(events.begin(), events.end(),
                   [](const v1::AuditEvent& a, const v1::AuditEvent& b) {
                     return a.at() < b.at();
                   });
  v1::GetAuditLogResponse resp;
  const size_t first = events.size() > limit ? events.size() - limit : 0;
  for (size_t i = first; i < events.size(); ++i) {
    *resp.add_events() = std::move(events[i]);
  }
  return resp;
}

// ---------------------------------------------------------------------------
// Watches

absl::StatusOr<uint64_t> Repository::Watch(
    const std::string& run, const std::string& alias,
    AliasWatchers::Callback fn, std::optional<v1::VersionInfo>* current) {
  // Under mu_: no move can land between reading the target and
  // registering, and moves are notified under mu_ too.
  absl::ReaderMutexLock lock(&mu_);
  CKPTD_ASSIGN_OR_RETURN(v1::RunInfo run_info, LoadRun(run));
  current->reset();
  absl::StatusOr<v1::VersionInfo> target = LoadCommitted(run, alias);
  if (target.ok()) {
    CKPTD_RETURN_IF_ERROR(FillAliases(&*target));
    *current = *std::move(target);
  } else if (!absl::IsNotFound(target.status())) {
    return target.status();
  }
  return watchers_.Add(run, alias, std::move(fn));
}

void Repository::Unwatch(uint64_t id) { watchers_.Remove(id); }

}  // namespace ckptd::core
