// Retention, `last`/`best` selection, aliases and their audit history, and
// the history queries (ListVersions filters and pages, ListRuns totals), over
// a real Repository: RocksDB and a file blob store in a temp dir. The clock
// is the test's, so audit and commit times are exact.
//
// The table test (RetentionTable) replays scripted operations — pushes of
// (step, metric), pins, user aliases, policy changes, close/reopen of the
// Repository — and checks exactly which versions survive and where `last`
// and `best` point.
#include <unistd.h>

#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/error_reason.h"
#include "proto/base/limits.h"
#include "server/core/repository.h"
#include "tests/support/temp_dir.h"

namespace ckptd::core {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

v1::Policy MonitorPolicy(const std::string& metric, v1::Mode mode,
                         std::optional<uint32_t> keep_last = std::nullopt,
                         std::optional<uint32_t> keep_best = std::nullopt) {
  v1::Policy p;
  p.set_monitor(metric);
  p.set_mode(mode);
  if (keep_last) p.set_keep_last(*keep_last);
  if (keep_best) p.set_keep_best(*keep_best);
  return p;
}

v1::Policy KeepLastOnly(uint32_t keep_last) {
  v1::Policy p;
  p.set_keep_last(keep_last);
  return p;
}

// What a pushed version carries besides its step.
struct PushSpec {
  std::map<std::string, double> metrics;
  std::map<std::string, std::string> labels;
  uint64_t tensor_bytes = 64;  // a multiple of 4 (one float32 tensor)
};

class RetentionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ckptd::testing::MakeTempDir("ckptd-retention");
    Reopen();
  }
  void TearDown() override {
    repo_.reset();
    std::filesystem::remove_all(dir_);
  }

  // Closes the Repository (RocksDB included) and opens it again.
  void Reopen() {
    repo_.reset();
    RepositoryOptions options;
    options.now = [this] { return now_; };
    auto repo = Repository::OpenDataDir(dir_, options);
    ASSERT_TRUE(repo.ok()) << repo.status();
    repo_ = std::move(*repo);
  }

  int64_t NowNanos() const { return absl::ToUnixNanos(now_); }
  void Tick() { now_ += absl::Seconds(1); }

  // Pushes one single-shard version (one float32 tensor "w" whose bytes are
  // unique to this push) as `actor`; returns the version number.
  uint64_t Push(const std::string& run, int64_t step, const PushSpec& spec,
                const std::string& actor = "trainer") {
    v1::BeginVersionRequest begin;
    begin.set_run(run);
    begin.set_step(step);
    begin.set_world_size(1);
    for (const auto& [k, v] : spec.labels) {
      (*begin.mutable_env()->mutable_labels())[k] = v;
    }
    auto pending = repo_->BeginVersion(begin);
    EXPECT_TRUE(pending.ok()) << pending.status();
    if (!pending.ok()) return 0;
    const uint64_t version = pending->version();

    std::string bytes(spec.tensor_bytes, '\0');
    const std::string tag = absl::StrCat(run, "/", ++push_counter_, "/");
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = tag[i % tag.size()];
    const Digest digest = DigestOf(bytes.data(), bytes.size());
    auto upload = repo_->StartBlobUpload(run, version, digest, bytes.size(), 0);
    EXPECT_TRUE(upload.ok()) << upload.status();
    if (!upload.ok()) return 0;
    EXPECT_TRUE((*upload)->Append(0, bytes).ok());
    EXPECT_TRUE((*upload)->Finish().ok());
    upload->reset();

    v1::CommitShardRequest commit;
    commit.set_run(run);
    commit.set_version(version);
    commit.set_rank(0);
    v1::ShardManifest* m = commit.mutable_manifest();
    m->add_entries()->mutable_container()->set_kind(v1::ContainerInfo::DICT);
    v1::ManifestEntry* e = m->add_entries();
    e->add_path()->set_key("w");
    v1::TensorInfo* t = e->mutable_tensor();
    t->set_dtype(v1::FLOAT32);
    t->add_shape(static_cast<int64_t>(spec.tensor_bytes / 4));
    t->set_byte_length(spec.tensor_bytes);
    t->set_blob_digest(std::string(digest.AsBytes()));
    for (const auto& [k, v] : spec.metrics) (*commit.mutable_metrics())[k] = v;
    auto info = repo_->CommitShard(commit, Actor{actor});
    EXPECT_TRUE(info.ok()) << info.status();
    if (info.ok()) {
      EXPECT_EQ(info->state(), v1::COMMITTED);
    }
    return version;
  }

  // A push with one metric, or none.
  uint64_t PushMetric(const std::string& run, int64_t step,
                      const std::string& metric, std::optional<double> value) {
    PushSpec spec;
    if (value) spec.metrics[metric] = *value;
    return Push(run, step, spec);
  }

  absl::Status SetPolicy(const std::string& run, const v1::Policy& p,
                         const std::string& actor = "ops") {
    v1::SetPolicyRequest req;
    req.set_run(run);
    *req.mutable_policy() = p;
    return repo_->SetPolicy(req, Actor{actor}).status();
  }

  absl::Status Pin(const std::string& run, uint64_t version) {
    v1::PinRequest req;
    req.set_run(run);
    req.set_ref(absl::StrCat(version));
    return repo_->SetPinned(req, true).status();
  }

  absl::Status Alias(const std::string& run, const std::string& name,
                     uint64_t version) {
    v1::SetAliasRequest req;
    req.set_run(run);
    req.set_name(name);
    req.set_ref(absl::StrCat(version));
    return repo_->SetAlias(req, Actor{"ops"}).status();
  }

  absl::Status Delete(const std::string& run, const std::string& ref) {
    v1::DeleteVersionRequest req;
    req.set_run(run);
    req.set_ref(ref);
    return repo_->DeleteVersion(req);
  }

  // The version `ref` resolves to; 0 when the alias does not exist.
  uint64_t Target(const std::string& run, const std::string& ref) {
    v1::GetVersionRequest req;
    req.set_run(run);
    req.set_ref(ref);
    auto resp = repo_->GetVersion(req);
    if (absl::IsNotFound(resp.status())) return 0;
    EXPECT_TRUE(resp.ok()) << run << "@" << ref << ": " << resp.status();
    return resp.ok() ? resp->info().version() : 0;
  }

  std::vector<uint64_t> Numbers(const v1::ListVersionsResponse& resp) {
    std::vector<uint64_t> out;
    for (const auto& v : resp.versions()) out.push_back(v.version());
    return out;
  }

  std::vector<uint64_t> Surviving(const std::string& run) {
    v1::ListVersionsRequest req;
    req.set_run(run);
    auto resp = repo_->ListVersions(req);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? Numbers(*resp) : std::vector<uint64_t>{};
  }

  std::vector<v1::AliasEvent> History(const std::string& run,
                                      const std::string& alias) {
    v1::GetAliasHistoryRequest req;
    req.set_run(run);
    req.set_alias(alias);
    auto resp = repo_->GetAliasHistory(req);
    EXPECT_TRUE(resp.ok()) << resp.status();
    if (!resp.ok()) return {};
    return {resp->events().begin(), resp->events().end()};
  }

  std::string dir_;
  absl::Time now_ = absl::FromUnixSeconds(1'800'000'000);
  std::unique_ptr<Repository> repo_;
  int push_counter_ = 0;
};

// An audit event as a comparable tuple.
struct Move {
  std::string alias;
  uint64_t from;
  uint64_t to;
  int64_t at;
  std::string actor;
  bool operator==(const Move&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Move& m) {
  return os << m.alias << " " << m.from << "->" << m.to << " at " << m.at
            << " by " << m.actor;
}

std::vector<Move> Moves(const std::vector<v1::AliasEvent>& events) {
  std::vector<Move> out;
  for (const auto& e : events) {
    out.push_back(
        {e.alias(), e.from_version(), e.to_version(), e.at(), e.actor()});
  }
  return out;
}

// ---------------------------------------------------------------------------
// Table: scripted operations, then exact survivors and ref targets.

struct Op {
  enum Kind { kPush, kPin, kAlias, kReopen, kSetPolicy } kind;
  int64_t step = 0;
  std::optional<double> value;  // kPush: the monitored metric, or none
  uint64_t version = 0;         // kPin, kAlias
  std::string alias;            // kAlias
  v1::Policy policy;            // kSetPolicy
};

Op PushOp(int64_t step, std::optional<double> value) {
  return {Op::kPush, step, value};
}
Op PinOp(uint64_t version) { return {Op::kPin, 0, std::nullopt, version}; }
Op AliasOp(const std::string& name, uint64_t version) {
  return {Op::kAlias, 0, std::nullopt, version, name};
}
Op ReopenOp() { return {Op::kReopen}; }
Op PolicyOp(v1::Policy p) {
  return {Op::kSetPolicy, 0, std::nullopt, 0, "", std::move(p)};
}

struct RetentionCase {
  std::string name;
  std::string metric;  // the metric pushes report
  v1::Policy policy;   // set before the first push
  std::vector<Op> ops;
  std::vector<uint64_t> survivors;
  uint64_t last;
  uint64_t best;  // 0: no `best`
  std::map<std::string, uint64_t> aliases = {};
};

TEST_F(RetentionTest, RetentionTable) {
  const std::vector<RetentionCase> cases = {
      {"(a) a pinned version and a user-alias target survive "
       "keep_last=1/keep_best=1",
       "loss",
       MonitorPolicy("loss", v1::MIN),
       {PushOp(1, 0.5), PushOp(2, 0.6), PushOp(3, 0.7), PushOp(4, 0.4),
        PushOp(5, 0.8), PinOp(2), AliasOp("prod", 3),
        PolicyOp(MonitorPolicy("loss", v1::MIN, 1, 1)), PushOp(6, 0.9),
        PushOp(7, 0.95)},
       {2, 3, 4, 7},
       7,
       4,
       {{"prod", 3}}},
      {"(c) mode=max keeps the highest",
       "acc",
       MonitorPolicy("acc", v1::MAX, 1, 1),
       {PushOp(1, 0.5), PushOp(2, 0.9), PushOp(3, 0.7), PushOp(4, 0.6)},
       {2, 4},
       4,
       2},
      {"(c) mode=max keep_best=2 replaces the weaker of the top two",
       "acc",
       MonitorPolicy("acc", v1::MAX, 1, 2),
       {PushOp(1, 0.5), PushOp(2, 0.9), PushOp(3, 0.7), PushOp(4, 0.6),
        PushOp(5, 0.8)},
       {2, 5},
       5,
       2},
      {"(h) metric gets worse for 5 epochs, Repository reopened between "
       "pushes: last and best both survive",
       "loss",
       MonitorPolicy("loss", v1::MIN, 2, 1),
       {PushOp(1, 0.3), ReopenOp(), PushOp(2, 0.4), ReopenOp(), PushOp(3, 0.5),
        ReopenOp(), PushOp(4, 0.6), ReopenOp(), PushOp(5, 0.7), ReopenOp(),
        PushOp(6, 0.8), ReopenOp()},
       {1, 5, 6},
       6,
       1},
      {"(h) then it improves: best moves, the old best goes",
       "loss",
       MonitorPolicy("loss", v1::MIN, 2, 1),
       {PushOp(1, 0.3), ReopenOp(), PushOp(2, 0.4), ReopenOp(), PushOp(3, 0.5),
        ReopenOp(), PushOp(4, 0.1), ReopenOp()},
       {3, 4},
       4,
       4},
      {"(i) ties keep the earlier version as best (min)",
       "loss",
       MonitorPolicy("loss", v1::MIN, 1, 1),
       {PushOp(1, 0.5), PushOp(2, 0.5), PushOp(3, 0.5)},
       {1, 3},
       3,
       1},
      {"(i) ties keep the earlier version as best (max), across a reopen",
       "acc",
       MonitorPolicy("acc", v1::MAX, 1, 1),
       {PushOp(1, 0.6), PushOp(2, 0.7), ReopenOp(), PushOp(3, 0.7),
        PushOp(4, 0.7)},
       {2, 4},
       4,
       2},
      {"(j) versions without the metric are kept by keep_last, never best",
       "loss",
       MonitorPolicy("loss", v1::MIN, 2, 1),
       {PushOp(1, 0.4), PushOp(2, std::nullopt), PushOp(3, std::nullopt),
        PushOp(4, std::nullopt)},
       {1, 3, 4},
       4,
       1},
      {"(j) no version has the metric: no best, keep_last only",
       "loss",
       MonitorPolicy("loss", v1::MIN, 2, 1),
       {PushOp(1, std::nullopt), PushOp(2, std::nullopt),
        PushOp(3, std::nullopt)},
       {2, 3},
       3,
       0},
      {"(j) a metric-less version after the best does not displace it",
       "loss",
       MonitorPolicy("loss", v1::MIN, 1, 1),
       {PushOp(1, 0.9), PushOp(2, 0.2), PushOp(3, std::nullopt),
        PushOp(4, 0.5)},
       {2, 4},
       4,
       2},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const RetentionCase& c = cases[i];
    const std::string run = absl::StrCat("table", i);
    ASSERT_TRUE(SetPolicy(run, c.policy).ok()) << c.name;
    for (const Op& op : c.ops) {
      Tick();
      switch (op.kind) {
        case Op::kPush:
          PushMetric(run, op.step, c.metric, op.value);
          break;
        case Op::kPin:
          ASSERT_TRUE(Pin(run, op.version).ok()) << c.name;
          break;
        case Op::kAlias:
          ASSERT_TRUE(Alias(run, op.alias, op.version).ok()) << c.name;
          break;
        case Op::kReopen:
          Reopen();
          break;
        case Op::kSetPolicy:
          ASSERT_TRUE(SetPolicy(run, op.policy).ok()) << c.name;
          break;
      }
    }
    EXPECT_EQ(Surviving(run), c.survivors) << c.name;
    EXPECT_EQ(Target(run, "last"), c.last) << c.name;
    EXPECT_EQ(Target(run, "best"), c.best) << c.name;
    for (const auto& [alias, version] : c.aliases) {
      EXPECT_EQ(Target(run, alias), version) << c.name << ": " << alias;
    }
    // Every surviving version is whole: its manifest is still there.
    for (uint64_t v : c.survivors) {
      v1::GetVersionRequest get;
      get.set_run(run);
      get.set_ref(absl::StrCat(v));
      get.set_include_manifest(true);
      auto resp = repo_->GetVersion(get);
      ASSERT_TRUE(resp.ok()) << c.name << " v" << v << ": " << resp.status();
      EXPECT_EQ(resp->shards_size(), 1) << c.name << " v" << v;
    }
  }
}

// (b) Retention also runs when SetPolicy tightens it, deleting exactly the
// versions the new policy no longer keeps.
TEST_F(RetentionTest, SetPolicyTighteningAppliesRetention) {
  const std::string run = "tighten";
  ASSERT_TRUE(SetPolicy(run, MonitorPolicy("loss", v1::MIN)).ok());
  const std::vector<double> losses = {0.6, 0.2, 0.5, 0.4, 0.3, 0.7};
  for (size_t i = 0; i < losses.size(); ++i) {
    Tick();
    EXPECT_EQ(PushMetric(run, static_cast<int64_t>(i + 1), "loss", losses[i]),
              i + 1);
  }
  ASSERT_THAT(Surviving(run), ElementsAre(1, 2, 3, 4, 5, 6));
  ASSERT_EQ(Target(run, "best"), 2u);

  // keep_last=3: 4, 5, 6 and the `best` target 2.
  ASSERT_TRUE(SetPolicy(run, MonitorPolicy("loss", v1::MIN, 3)).ok());
  EXPECT_THAT(Surviving(run), ElementsAre(2, 4, 5, 6));
  // keep_last=1, keep_best=2: 6, and the two best (2: 0.2, 5: 0.3).
  ASSERT_TRUE(SetPolicy(run, MonitorPolicy("loss", v1::MIN, 1, 2)).ok());
  EXPECT_THAT(Surviving(run), ElementsAre(2, 5, 6));
  // keep_best=1: 5 goes; last and best stay put.
  ASSERT_TRUE(SetPolicy(run, MonitorPolicy("loss", v1::MIN, 1, 1)).ok());
  EXPECT_THAT(Surviving(run), ElementsAre(2, 6));
  EXPECT_EQ(Target(run, "last"), 6u);
  EXPECT_EQ(Target(run, "best"), 2u);
  // Loosening deletes nothing (and brings nothing back).
  ASSERT_TRUE(SetPolicy(run, MonitorPolicy("loss", v1::MIN)).ok());
  EXPECT_THAT(Surviving(run), ElementsAre(2, 6));
  // Without a monitor there is no `best`; keep_last alone then rules.
  ASSERT_TRUE(SetPolicy(run, KeepLastOnly(1)).ok());
  EXPECT_EQ(Target(run, "best"), 0u);
  EXPECT_THAT(Surviving(run), ElementsAre(6));
}

// (d) Changing `monitor` recomputes `best` and records the move.
TEST_F(RetentionTest, ChangingMonitorRecomputesBestAndAuditsIt) {
  const std::string run = "remonitor";
  ASSERT_TRUE(SetPolicy(run, MonitorPolicy("loss", v1::MIN)).ok());
  Tick();
  Push(run, 1, {{{"loss", 0.5}, {"acc", 0.6}}});
  Tick();
  Push(run, 2, {{{"loss", 0.3}, {"acc", 0.5}}});
  Tick();
  Push(run, 3, {{{"loss", 0.4}, {"acc", 0.9}}});
  ASSERT_EQ(Target(run, "best"), 2u);
  const size_t events_before = History(run, "best").size();

  Tick();
  const int64_t changed_at = NowNanos();
  ASSERT_TRUE(SetPolicy(run, MonitorPolicy("acc", v1::MAX), "alice").ok());
  EXPECT_EQ(Target(run, "best"), 3u);
  std::vector<Move> best = Moves(History(run, "best"));
  ASSERT_EQ(best.size(), events_before + 1);
  EXPECT_EQ(best.back(), (Move{"best", 2, 3, changed_at, "alice"}));

  // The recomputed best holds across a restart.
  Reopen();
  EXPECT_EQ(Target(run, "best"), 3u);

  // A monitor no version reports: no `best`, and the removal is audited.
  Tick();
  const int64_t removed_at = NowNanos();
  ASSERT_TRUE(SetPolicy(run, MonitorPolicy("bleu", v1::MAX), "bob").ok());
  EXPECT_EQ(Target(run, "best"), 0u);
  best = Moves(History(run, "best"));
  ASSERT_EQ(best.size(), events_before + 2);
  EXPECT_EQ(best.back(), (Move{"best", 3, 0, removed_at, "bob"}));
  // `last` did not move.
  EXPECT_EQ(Target(run, "last"), 3u);
}

// (e) Each push moves `last` (and `best` when it improves); the audit history
// has from, to, the commit time and the committing actor, in order.
TEST_F(RetentionTest, AuditHistoryOfLastAndBestFollowsPushes) {
  const std::string run = "audit";
  ASSERT_TRUE(SetPolicy(run, MonitorPolicy("loss", v1::MIN)).ok());
  Tick();
  const int64_t t1 = NowNanos();
  Push(run, 1, {{{"loss", 0.5}}}, "rank0");
  Tick();
  const int64_t t2 = NowNanos();
  Push(run, 2, {{{"loss", 0.7}}}, "rank0");
  Tick();
  const int64_t t3 = NowNanos();
  Push(run, 3, {{{"loss", 0.2}}}, "trainer-b");
  Tick();
  const int64_t t4 = NowNanos();
  Push(run, 4, {}, "trainer-b");

  EXPECT_THAT(Moves(History(run, "last")),
              ElementsAre(Move{"last", 0, 1, t1, "rank0"},
                          Move{"last", 1, 2, t2, "rank0"},
                          Move{"last", 2, 3, t3, "trainer-b"},
                          Move{"last", 3, 4, t4, "trainer-b"}));
  EXPECT_THAT(Moves(History(run, "best")),
              ElementsAre(Move{"best", 0, 1, t1, "rank0"},
                          Move{"best", 1, 3, t3, "trainer-b"}));
  // The unfiltered history interleaves them in the order they happened.
  std::vector<Move> all = Moves(History(run, ""));
  ASSERT_EQ(all.size(), 6u);
  for (size_t i = 1; i < all.size(); ++i) {
    EXPECT_LE(all[i - 1].at, all[i].at) << all[i];
  }
  // It is durable.
  Reopen();
  EXPECT_EQ(Moves(History(run, "")), all);
  // A user alias is audited the same way, including its deletion.
  Tick();
  const int64_t t5 = NowNanos();
  ASSERT_TRUE(Alias(run, "prod", 3).ok());
  Tick();
  const int64_t t6 = NowNanos();
  v1::DeleteAliasRequest unalias;
  unalias.set_run(run);
  unalias.set_name("prod");
  ASSERT_TRUE(repo_->DeleteAlias(unalias, Actor{"carol"}).ok());
  EXPECT_THAT(Moves(History(run, "prod")),
              ElementsAre(Move{"prod", 0, 3, t5, "ops"},
                          Move{"prod", 3, 0, t6, "carol"}));
}

// (f) ListVersions filters and pages.
TEST_F(RetentionTest, ListVersionsFiltersAndPages) {
  const std::string run = "listing";
  // step:       10   20   30   40   50
  // loss:       yes  -    yes  -    yes
  // split:      a    b    a    b    a
  for (int i = 1; i <= 5; ++i) {
    PushSpec spec;
    if (i % 2 == 1) spec.metrics["loss"] = 1.0 / i;
    spec.labels["split"] = i % 2 == 1 ? "a" : "b";
    spec.labels["shard"] = absl::StrCat(i);
    Tick();
    ASSERT_EQ(Push(run, i * 10, spec), static_cast<uint64_t>(i));
  }
  // A pending version never lists.
  v1::BeginVersionRequest pending;
  pending.set_run(run);
  pending.set_step(60);
  ASSERT_TRUE(repo_->BeginVersion(pending).ok());

  struct Case {
    std::string name;
    std::function<void(v1::ListVersionsRequest&)> filter;
    std::vector<uint64_t> want;
  };
  const std::vector<Case> cases = {
      {"no filter", [](v1::ListVersionsRequest&) {}, {1, 2, 3, 4, 5}},
      {"step range [20, 40]",
       [](v1::ListVersionsRequest& r) {
         r.set_min_step(20);
         r.set_max_step(40);
       },
       {2, 3, 4}},
      {"min_step only",
       [](v1::ListVersionsRequest& r) { r.set_min_step(40); },
       {4, 5}},
      {"max_step only",
       [](v1::ListVersionsRequest& r) { r.set_max_step(10); },
       {1}},
      {"bounds are inclusive",
       [](v1::ListVersionsRequest& r) {
         r.set_min_step(30);
         r.set_max_step(30);
       },
       {3}},
      {"empty step range",
       [](v1::ListVersionsRequest& r) {
         r.set_min_step(41);
         r.set_max_step(49);
       },
       {}},
      {"metric present",
       [](v1::ListVersionsRequest& r) { r.set_metric_present("loss"); },
       {1, 3, 5}},
      {"metric nobody reports",
       [](v1::ListVersionsRequest& r) { r.set_metric_present("acc"); },
       {}},
      {"label equals",
       [](v1::ListVersionsRequest& r) {
         (*r.mutable_label_equals())["split"] = "b";
       },
       {2, 4}},
      {"label equals on two labels",
       [](v1::ListVersionsRequest& r) {
         (*r.mutable_label_equals())["split"] = "a";
         (*r.mutable_label_equals())["shard"] = "3";
       },
       {3}},
      {"label with no such value",
       [](v1::ListVersionsRequest& r) {
         (*r.mutable_label_equals())["split"] = "c";
       },
       {}},
      {"all filters combined",
       [](v1::ListVersionsRequest& r) {
         r.set_min_step(20);
         r.set_metric_present("loss");
         (*r.mutable_label_equals())["split"] = "a";
       },
       {3, 5}},
  };
  for (const Case& c : cases) {
    v1::ListVersionsRequest req;
    req.set_run(run);
    c.filter(req);
    auto resp = repo_->ListVersions(req);
    ASSERT_TRUE(resp.ok()) << c.name << ": " << resp.status();
    EXPECT_EQ(Numbers(*resp), c.want) << c.name;
    EXPECT_EQ(resp->next_page_token(), "") << c.name;
  }

  // Pages of 2, following the tokens: 1 2 | 3 4 | 5, no duplicates or gaps.
  auto pages = [&](const std::function<void(v1::ListVersionsRequest&)>& filter,
                   uint32_t page_size) {
    std::vector<std::vector<uint64_t>> out;
    v1::ListVersionsRequest req;
    req.set_run(run);
    req.set_page_size(page_size);
    filter(req);
    for (int guard = 0; guard < 10; ++guard) {
      auto resp = repo_->ListVersions(req);
      EXPECT_TRUE(resp.ok()) << resp.status();
      if (!resp.ok()) break;
      out.push_back(Numbers(*resp));
      if (resp->next_page_token().empty()) break;
      req.set_page_token(resp->next_page_token());
    }
    return out;
  };
  using Pages = std::vector<std::vector<uint64_t>>;
  EXPECT_EQ(pages([](v1::ListVersionsRequest&) {}, 2),
            (Pages{{1, 2}, {3, 4}, {5}}));
  // A page that ends exactly at the last match carries no token.
  EXPECT_EQ(pages(
                [](v1::ListVersionsRequest& r) {
                  (*r.mutable_label_equals())["split"] = "b";
                },
                2),
            (Pages{{2, 4}}));
  // Filters apply across pages.
  EXPECT_EQ(
      pages([](v1::ListVersionsRequest& r) { r.set_metric_present("loss"); },
            2),
      (Pages{{1, 3}, {5}}));
  EXPECT_EQ(pages([](v1::ListVersionsRequest&) {}, 5),
            (Pages{{1, 2, 3, 4, 5}}));

  // A token this server never issued is refused.
  v1::ListVersionsRequest bad;
  bad.set_run(run);
  bad.set_page_token("not-a-token");
  EXPECT_EQ(repo_->ListVersions(bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// (g) ListRuns: committed version count, their bytes, the last commit time.
TEST_F(RetentionTest, ListRunsReportsCountsBytesAndLastCommit) {
  Tick();
  Push("alpha", 1, {.tensor_bytes = 64});
  Tick();
  Push("alpha", 2, {.tensor_bytes = 128});
  Tick();
  const int64_t alpha_last = NowNanos();
  Push("alpha", 3, {.tensor_bytes = 256});
  Tick();
  const int64_t beta_last = NowNanos();
  Push("beta", 1, {.tensor_bytes = 1024});
  // Pending versions do not count.
  v1::BeginVersionRequest pending;
  pending.set_run("alpha");
  pending.set_step(4);
  ASSERT_TRUE(repo_->BeginVersion(pending).ok());
  // A run created by SetPolicy alone has nothing yet.
  ASSERT_TRUE(SetPolicy("gamma", KeepLastOnly(3)).ok());

  auto check = [&](const std::string& when,
                   std::map<std::string,
                            std::tuple<uint64_t, uint64_t, int64_t, uint64_t>>
                       want) {
    auto runs = repo_->ListRuns();
    ASSERT_TRUE(runs.ok()) << runs.status();
    std::map<std::string, std::tuple<uint64_t, uint64_t, int64_t, uint64_t>>
        got;
    for (const v1::RunInfo& r : runs->runs()) {
      got[r.name()] = {r.version_count(), r.total_bytes(), r.last_commit_at(),
                       r.last_version()};
    }
    EXPECT_EQ(got, want) << when;
  };
  check("after pushes", {{"alpha", {3, 64 + 128 + 256, alpha_last, 3}},
                         {"beta", {1, 1024, beta_last, 1}},
                         {"gamma", {0, 0, 0, 0}}});
  // Deleting a version takes it out of the totals; a restart changes nothing.
  ASSERT_TRUE(Delete("alpha", "1").ok());
  Reopen();
  check("after delete and reopen", {{"alpha", {2, 128 + 256, alpha_last, 3}},
                                    {"beta", {1, 1024, beta_last, 1}},
                                    {"gamma", {0, 0, 0, 0}}});
}

// (k) The `best` target cannot be deleted, and the error names `best`.
TEST_F(RetentionTest, DeletingTheBestTargetNamesBest) {
  const std::string run = "hold";
  ASSERT_TRUE(SetPolicy(run, MonitorPolicy("loss", v1::MIN)).ok());
  Push(run, 1, {{{"loss", 0.2}}});
  Push(run, 2, {{{"loss", 0.5}}});
  Push(run, 3, {{{"loss", 0.6}}});
  ASSERT_EQ(Target(run, "best"), 1u);
  for (const std::string& ref : {std::string("1"), std::string("best")}) {
    const absl::Status st = Delete(run, ref);
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << ref << st;
    EXPECT_THAT(st.message(), HasSubstr("best")) << ref;
    EXPECT_THAT(st.message(), HasSubstr("hold@1")) << ref;
  }
  // The `last` target is named the same way.
  const absl::Status st = Delete(run, "last");
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_THAT(st.message(), HasSubstr("last"));
  // A version nothing holds deletes.
  EXPECT_TRUE(Delete(run, "2").ok());
  EXPECT_THAT(Surviving(run), ElementsAre(1, 3));
  EXPECT_EQ(Target(run, "best"), 1u);
}

// The blob files under the data dir (the file store's blobs/ tree).
std::set<std::string> BlobFiles(const std::string& data_dir) {
  std::set<std::string> out;
  for (const auto& entry :
       std::filesystem::recursive_directory_iterator(data_dir + "/blobs")) {
    if (entry.is_regular_file()) out.insert(entry.path().filename().string());
  }
  return out;
}

// The blob file names a committed version references.
std::set<std::string> VersionBlobFiles(Repository& repo, const std::string& run,
                                       uint64_t version) {
  v1::GetVersionRequest req;
  req.set_run(run);
  req.set_ref(absl::StrCat(version));
  req.set_include_manifest(true);
  auto resp = repo.GetVersion(req);
  EXPECT_TRUE(resp.ok()) << resp.status();
  std::set<std::string> out;
  if (!resp.ok()) return out;
  for (const auto& shard : resp->shards()) {
    for (const auto& e : shard.entries()) {
      if (!e.has_tensor()) continue;
      auto d = DigestFromBytes(e.tensor().blob_digest());
      EXPECT_TRUE(d.ok());
      if (d.ok()) out.insert(d->Hex());
    }
  }
  return out;
}

TEST_F(RetentionTest, KeepLastOneLeavesOnlyTheKeptVersionsBlobsOnDisk) {
  const std::string run = "disk";
  ASSERT_TRUE(SetPolicy(run, KeepLastOnly(1)).ok());
  uint64_t last = 0;
  for (int step = 1; step <= 4; ++step) {
    // 1 MiB each, unique bytes: four versions, four blob files.
    last = Push(run, step, PushSpec{.tensor_bytes = 1 << 20});
    ASSERT_NE(last, 0u);
    // After every save, without gc and without a restart, the disk holds
    // exactly the blobs of the one version retention keeps.
    EXPECT_EQ(BlobFiles(dir_), VersionBlobFiles(*repo_, run, last))
        << "after step " << step;
  }
  EXPECT_THAT(Surviving(run), ElementsAre(last));
  EXPECT_EQ(BlobFiles(dir_).size(), 1u);
}

TEST_F(RetentionTest, DeleteVersionFreesItsBlobsAtOnce) {
  const std::string run = "del";
  const uint64_t a = Push(run, 1, {});
  const uint64_t b = Push(run, 2, {});
  const std::set<std::string> a_blobs = VersionBlobFiles(*repo_, run, a);
  const std::set<std::string> b_blobs = VersionBlobFiles(*repo_, run, b);
  ASSERT_EQ(BlobFiles(dir_).size(), 2u);
  ASSERT_TRUE(Delete(run, absl::StrCat(a)).ok());
  EXPECT_EQ(BlobFiles(dir_), b_blobs);
  EXPECT_NE(a_blobs, b_blobs);
}

TEST_F(RetentionTest, AReadLeaseKeepsBlobsUntilTheReadEnds) {
  const std::string run = "lease";
  const uint64_t a = Push(run, 1, {});
  Push(run, 2, {});
  const std::set<std::string> a_blobs = VersionBlobFiles(*repo_, run, a);
  auto lease = repo_->LeaseForRead(run, a);
  ASSERT_TRUE(lease.ok()) << lease.status();
  // Deleted while a read is in progress: the records go, the bytes stay
  // readable until the lease ends.
  ASSERT_TRUE(Delete(run, absl::StrCat(a)).ok());
  EXPECT_THAT(Surviving(run), ElementsAre(2));
  for (const std::string& f : a_blobs) {
    EXPECT_TRUE(BlobFiles(dir_).contains(f)) << f;
  }
  auto gc = repo_->CollectGarbage();
  ASSERT_TRUE(gc.ok()) << gc.status();
  EXPECT_EQ(gc->blobs_deleted(), 0u);
  for (const Digest& d : (*lease)->digests()) {
    std::string bytes(64, '\0');
    auto reader = repo_->blobs().Open(d);
    ASSERT_TRUE(reader.ok()) << reader.status();
    EXPECT_TRUE((*reader)->ReadAt(0, bytes.size(), bytes.data()).ok());
  }
  lease->reset();
  for (const std::string& f : a_blobs) {
    EXPECT_FALSE(BlobFiles(dir_).contains(f)) << f;
  }
  // A lease is only for committed versions that exist.
  EXPECT_EQ(repo_->LeaseForRead(run, a).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(RetentionTest, FindMissingBlobsRefusesMoreThanTheLimitAndAnswersAtIt) {
  const std::string run = "limit";
  const uint64_t kept = Push(run, 1, {});
  v1::BeginVersionRequest begin;
  begin.set_run(run);
  begin.set_step(2);
  auto pending = repo_->BeginVersion(begin);
  ASSERT_TRUE(pending.ok()) << pending.status();
  v1::FindMissingBlobsRequest find;
  find.set_run(run);
  find.set_version(pending->version());
  for (size_t i = 0; i <= kMaxFindMissingDigests; ++i) {
    uint64_t words[2] = {i, ~i};
    find.add_digests(std::string(reinterpret_cast<const char*>(words), 16));
  }
  auto resp = repo_->FindMissingBlobs(find);
  EXPECT_EQ(resp.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReasonOf(resp.status()), v1::REQUEST_TOO_LARGE);
  EXPECT_THAT(resp.status().message(),
              HasSubstr(absl::StrCat("the limit is ", kMaxFindMissingDigests)));
  // At the limit it is answered, in slices, with every digest missing.
  find.mutable_digests()->RemoveLast();
  resp = repo_->FindMissingBlobs(find);
  ASSERT_TRUE(resp.ok()) << resp.status();
  EXPECT_EQ(static_cast<size_t>(resp->missing_size()), kMaxFindMissingDigests);
  EXPECT_THAT(Surviving(run), ElementsAre(kept));
}

}  // namespace
}  // namespace ckptd::core
