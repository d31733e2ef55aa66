// The pure pieces of retention and `best`: RetentionPolicy and the best
// selector, table-driven over version records (no storage).
#include "server/core/retention_policy.h"

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/best_selector.h"

namespace ckptd::core {
namespace {

using ::testing::ElementsAreArray;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct V {
  uint64_t version;
  int64_t step;
  std::optional<double> loss;  // the monitored metric, if reported
  v1::VersionState state = v1::COMMITTED;
  bool pinned = false;
};

std::vector<v1::VersionInfo> Records(const std::vector<V>& vs) {
  std::vector<v1::VersionInfo> out;
  for (const V& v : vs) {
    v1::VersionInfo& info = out.emplace_back();
    info.set_version(v.version);
    info.set_step(v.step);
    info.set_state(v.state);
    info.set_pinned(v.pinned);
    if (v.loss) (*info.mutable_metrics())["loss"] = *v.loss;
    (*info.mutable_metrics())["other"] = 1.0;
  }
  return out;
}

std::vector<v1::AliasInfo> Aliases(const std::vector<uint64_t>& targets) {
  std::vector<v1::AliasInfo> out;
  for (uint64_t t : targets) {
    v1::AliasInfo& a = out.emplace_back();
    a.set_name("alias" + std::to_string(t));
    a.set_version(t);
  }
  return out;
}

struct PolicySpec {
  std::optional<uint32_t> keep_last;
  std::optional<uint32_t> keep_best;
  std::optional<uint32_t> keep_every_n_steps;
  v1::Mode mode = v1::MIN;
  bool monitor = true;
};

v1::Policy MakePolicy(const PolicySpec& p) {
  v1::Policy out;
  if (p.monitor) {
    out.set_monitor("loss");
    out.set_mode(p.mode);
  }
  if (p.keep_last) out.set_keep_last(*p.keep_last);
  if (p.keep_best) out.set_keep_best(*p.keep_best);
  if (p.keep_every_n_steps) out.set_keep_every_n_steps(*p.keep_every_n_steps);
  return out;
}

TEST(RetentionPolicyTest, Table) {
  const std::vector<V> five = {
      {1, 10, 0.9}, {2, 20, 0.5}, {3, 30, 0.7}, {4, 40, 0.6}, {5, 50, 0.8}};
  struct Case {
    const char* name;
    std::vector<V> versions;
    PolicySpec policy;
    std::vector<uint64_t> alias_targets;
    std::vector<uint64_t> drop;
  };
  const Case cases[] = {
      {"no rule keeps everything", five, {}, {}, {}},
      {"keep_last 2", five, {.keep_last = 2}, {}, {1, 2, 3}},
      {"keep_last above the count", five, {.keep_last = 9}, {}, {}},
      {"keep_best 1 min", five, {.keep_best = 1}, {}, {1, 3, 4, 5}},
      {"keep_best 2 max",
       five,
       {.keep_best = 2, .mode = v1::MAX},
       {},
       {2, 3, 4}},
      {"keep_last and keep_best are separate pools",
       five,
       {.keep_last = 1, .keep_best = 1},
       {},
       {1, 3, 4}},
      {"keep_every_n_steps",
       five,
       {.keep_last = 1, .keep_every_n_steps = 20},
       {},
       {1, 3}},
      {"aliases are kept", five, {.keep_last = 1}, {1, 3}, {2, 4}},
      {"pinned versions are kept",
       {{1, 1, 0.1, v1::COMMITTED, true}, {2, 2, 0.2}, {3, 3, 0.3}},
       {.keep_last = 1},
       {},
       {2}},
      {"pending and aborted versions are never dropped",
       {{1, 1, 0.1, v1::PENDING},
        {2, 2, 0.2, v1::ABORTED},
        {3, 3, 0.3},
        {4, 4, 0.4}},
       {.keep_last = 1},
       {},
       {3}},
      {"keep_last counts committed versions only",
       {{1, 1, 0.1}, {2, 2, 0.2}, {3, 3, 0.3, v1::PENDING}},
       {.keep_last = 1},
       {},
       {1}},
      {"versions without the metric never rank for keep_best",
       {{1, 1, std::nullopt}, {2, 2, 0.5}, {3, 3, kNaN}},
       {.keep_best = 1},
       {},
       {1, 3}},
      {"keep_best ties keep the earlier version",
       {{1, 1, 0.5}, {2, 2, 0.5}, {3, 3, 0.9}},
       {.keep_best = 1},
       {},
       {2, 3}},
      {"keep_best without a monitor keeps by other rules only",
       five,
       {.keep_last = 1, .keep_best = 3, .monitor = false},
       {},
       {1, 2, 3, 4}},
      {"records in any order",
       {{5, 50, 0.8}, {2, 20, 0.5}, {4, 40, 0.6}, {1, 10, 0.9}, {3, 30, 0.7}},
       {.keep_last = 2},
       {},
       {1, 2, 3}},
      {"empty run", {}, {.keep_last = 1}, {}, {}},
  };
  for (const Case& c : cases) {
    const RetentionPolicy policy(MakePolicy(c.policy));
    EXPECT_THAT(
        policy.VersionsToDrop(Records(c.versions), Aliases(c.alias_targets)),
        ElementsAreArray(c.drop))
        << c.name;
  }
}

TEST(RetentionPolicyTest, KeepsEverythingOnlyWithoutRules) {
  EXPECT_TRUE(RetentionPolicy(MakePolicy({})).KeepsEverything());
  EXPECT_TRUE(
      RetentionPolicy(MakePolicy({.monitor = false})).KeepsEverything());
  EXPECT_FALSE(RetentionPolicy(MakePolicy({.keep_last = 3})).KeepsEverything());
  EXPECT_FALSE(RetentionPolicy(MakePolicy({.keep_best = 1})).KeepsEverything());
  EXPECT_FALSE(
      RetentionPolicy(MakePolicy({.keep_every_n_steps = 5})).KeepsEverything());
}

TEST(BestSelectorTest, SelectBestTable) {
  struct Case {
    const char* name;
    std::vector<V> versions;
    PolicySpec policy;
    uint64_t best;
  };
  const Case cases[] = {
      {"min", {{1, 1, 0.9}, {2, 2, 0.5}, {3, 3, 0.7}}, {}, 2},
      {"max", {{1, 1, 0.9}, {2, 2, 0.5}, {3, 3, 0.7}}, {.mode = v1::MAX}, 1},
      {"tie keeps the earlier", {{1, 1, 0.5}, {2, 2, 0.5}}, {}, 1},
      {"NaN never wins", {{1, 1, kNaN}, {2, 2, 3.0}}, {}, 2},
      {"only NaN: none", {{1, 1, kNaN}}, {}, 0},
      {"without the metric: none", {{1, 1, std::nullopt}}, {}, 0},
      {"not committed is not a candidate",
       {{1, 1, 0.1, v1::PENDING}, {2, 2, 0.2, v1::ABORTED}, {3, 3, 0.9}},
       {},
       3},
      {"no monitor: none", {{1, 1, 0.1}}, {.monitor = false}, 0},
      {"infinities compare", {{1, 1, 1.0}, {2, 2, -INFINITY}}, {}, 2},
      {"empty", {}, {}, 0},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(SelectBest(Records(c.versions), MakePolicy(c.policy)), c.best)
        << c.name;
  }
}

TEST(BestSelectorTest, BecomesBestTable) {
  struct Case {
    const char* name;
    std::optional<double> candidate;
    std::optional<std::optional<double>> current;  // nullopt: no best yet
    v1::Mode mode;
    bool becomes;
  };
  const Case cases[] = {
      {"first with the metric", 1.0, std::nullopt, v1::MIN, true},
      {"better under min", 0.5, 1.0, v1::MIN, true},
      {"worse under min", 2.0, 1.0, v1::MIN, false},
      {"better under max", 2.0, 1.0, v1::MAX, true},
      {"tie keeps the current", 1.0, 1.0, v1::MIN, false},
      {"candidate without the metric", std::nullopt, 1.0, v1::MIN, false},
      {"candidate NaN", kNaN, 1.0, v1::MIN, false},
      {"current lost its metric", 5.0, std::optional<double>(), v1::MIN, true},
  };
  for (const Case& c : cases) {
    const auto candidate = Records({{2, 2, c.candidate}})[0];
    std::optional<v1::VersionInfo> current;
    if (c.current) current = Records({{1, 1, *c.current}})[0];
    EXPECT_EQ(BecomesBest(candidate, current ? &*current : nullptr,
                          MakePolicy({.mode = c.mode})),
              c.becomes)
        << c.name;
  }
  // Without a monitor nothing becomes best.
  EXPECT_FALSE(BecomesBest(Records({{1, 1, 0.1}})[0], nullptr,
                           MakePolicy({.monitor = false})));
}

TEST(BestSelectorTest, MetricImproves) {
  EXPECT_TRUE(MetricImproves(v1::MIN, 1, 2));
  EXPECT_FALSE(MetricImproves(v1::MIN, 2, 1));
  EXPECT_TRUE(MetricImproves(v1::MAX, 2, 1));
  EXPECT_FALSE(MetricImproves(v1::MAX, 1, 1));
  EXPECT_FALSE(MetricImproves(v1::MIN, kNaN, 1));
  EXPECT_TRUE(MetricImproves(v1::MIN, 1, kNaN));
}

}  // namespace
}  // namespace ckptd::core
