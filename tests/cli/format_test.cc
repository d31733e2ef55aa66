// Unit tests of the CLI's text formatting and argument helpers.
#include "client/cli/format.h"

#include <cmath>
#include <string>
#include <vector>

#include "client/cli/commands.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ckptd::cli {
namespace {

using ::testing::HasSubstr;

TEST(FormatTest, HumanBytes) {
  const std::vector<std::pair<uint64_t, std::string>> cases = {
      {0, "0 B"},
      {1023, "1023 B"},
      {1024, "1.0 KiB"},
      {1536, "1.5 KiB"},
      {10ull << 20, "10.0 MiB"},
      {3ull << 30, "3.0 GiB"},
      {5ull << 40, "5.0 TiB"},
  };
  for (const auto& [bytes, want] : cases) {
    EXPECT_EQ(HumanBytes(bytes), want) << bytes;
  }
}

TEST(FormatTest, FormatTimeIsUtcIso8601) {
  EXPECT_EQ(FormatTime(0), "-");
  EXPECT_EQ(FormatTime(1'700'000'000'123'456'789LL), "2023-11-14T22:13:20Z");
}

TEST(FormatTest, Sparkline) {
  EXPECT_EQ(Sparkline({}), "");
  EXPECT_EQ(Sparkline({1, 2, 3, 4, 5, 6, 7, 8}),
            "\u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588");
  EXPECT_EQ(Sparkline({3, 1}), "\u2588\u2581");
  EXPECT_EQ(Sparkline({5, 5, 5}), "\u2584\u2584\u2584") << "flat: mid-height";
  EXPECT_EQ(Sparkline({1, NAN, 2}), "\u2581 \u2588");
  std::vector<double> many(1000);
  for (size_t i = 0; i < many.size(); ++i) many[i] = static_cast<double>(i);
  const std::string s = Sparkline(many, 10);
  EXPECT_EQ(DisplayWidth(s), 10u);
  EXPECT_EQ(s.substr(0, 3), "\u2581");
  EXPECT_EQ(s.substr(s.size() - 3), "\u2588");
}

TEST(FormatTest, TableAlignsColumnsByDisplayWidth) {
  Table t({"NAME", "SIZE", "TREND"});
  t.AlignRight(1);
  t.AddRow({"a", "1.0 KiB", "\u2581\u2588"});
  t.AddRow({"longer", "2 B", "\u2581"});
  EXPECT_EQ(t.Render(),
            "NAME       SIZE  TREND\n"
            "a       1.0 KiB  \u2581\u2588\n"
            "longer      2 B  \u2581\n");
}

TEST(FormatTest, ShapesPathsAndDTypes) {
  EXPECT_EQ(FormatShape({}), "[]");
  EXPECT_EQ(FormatShape({2, 3}), "[2, 3]");
  EXPECT_EQ(DTypeName(v1::BFLOAT16), "bfloat16");
  EXPECT_EQ(DTypeName(v1::BOOL), "bool");
  ManifestEntry e;
  e.add_path()->set_key("optimizer");
  e.add_path()->set_key("state");
  e.add_path()->set_int_key(3);
  e.add_path()->set_key("exp_avg");
  EXPECT_EQ(DottedPath(e.path()), "optimizer.state.3.exp_avg");
}

TEST(FormatTest, RenderProgress) {
  EXPECT_EQ(RenderProgress(5'000'000, 10'000'000, 2.0, 10),
            "[#####-----]  50%  4.8 MiB / 9.5 MiB  2.5 MB/s");
  EXPECT_THAT(RenderProgress(0, 0, 0, 4), HasSubstr("100%"));
}

struct RefCase {
  std::string arg;
  RefRule rule;
  bool ok;
  std::string run_or_error;
  std::string ref;
};

TEST(ArgsTest, ParseVersionRef) {
  const std::vector<RefCase> cases = {
      {"llama@best", RefRule::kRequired, true, "llama", "best"},
      {"llama@12", RefRule::kRequired, true, "llama", "12"},
      {"llama-7b.sft_2@prod", RefRule::kDefaultLast, true, "llama-7b.sft_2",
       "prod"},
      {"llama", RefRule::kDefaultLast, true, "llama", "last"},
      {"llama", RefRule::kOptional, true, "llama", ""},
      {"x@", RefRule::kDefaultLast, false,
       "bad version reference 'x@': expected RUN@REF such as llama@best or "
       "llama@12",
       ""},
      {"@3", RefRule::kDefaultLast, false, "bad version reference '@3'", ""},
      {"a@b@c", RefRule::kDefaultLast, false, "bad version reference 'a@b@c'",
       ""},
      {"llama", RefRule::kRequired, false,
       "missing version in 'llama': expected RUN@REF", ""},
      {"llama@0", RefRule::kRequired, false, "versions start at 1", ""},
      {"llama@-1", RefRule::kRequired, false, "ref '-1'", ""},
      {"bad/run@1", RefRule::kRequired, false, "run name 'bad/run'", ""},
      {"-run@1", RefRule::kRequired, false, "run name '-run'", ""},
  };
  for (const RefCase& c : cases) {
    absl::StatusOr<VersionRef> r = ParseVersionRef(c.arg, c.rule);
    ASSERT_EQ(r.ok(), c.ok) << c.arg << ": " << r.status();
    if (c.ok) {
      EXPECT_EQ(r->run, c.run_or_error) << c.arg;
      EXPECT_EQ(r->ref, c.ref) << c.arg;
    } else {
      EXPECT_TRUE(IsUsageError(r.status())) << c.arg;
      EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.run_or_error))
          << c.arg;
    }
  }
}

TEST(ArgsTest, NamesAndKeyValues) {
  EXPECT_TRUE(CheckAliasName("prod").ok());
  EXPECT_THAT(std::string(CheckAliasName("best").message()),
              HasSubstr("kept by the server"));
  EXPECT_THAT(std::string(CheckAliasName("12").message()),
              HasSubstr("all digits"));
  EXPECT_THAT(std::string(CheckRunArgument("llama@3").message()),
              HasSubstr("expected a run name"));
  EXPECT_TRUE(IsUsageError(CheckRunName("")));

  auto kv = ParseKeyValue("val_loss=1.5", "--metric");
  ASSERT_TRUE(kv.ok());
  EXPECT_EQ(kv->first, "val_loss");
  EXPECT_EQ(kv->second, "1.5");
  kv = ParseKeyValue("note=a=b", "--label");
  ASSERT_TRUE(kv.ok());
  EXPECT_EQ(kv->second, "a=b");
  EXPECT_TRUE(ParseKeyValue("empty=", "--label").ok());
  EXPECT_THAT(
      std::string(ParseKeyValue("noequals", "--metric").status().message()),
      HasSubstr("expected KEY=VALUE"));
  EXPECT_FALSE(ParseKeyValue("=v", "--label").ok());
}

TEST(ArgsTest, ApplyPolicyEdit) {
  Policy current;
  current.set_monitor("loss");
  current.set_mode(v1::MIN);
  current.set_keep_last(5);
  current.set_keep_every_n_steps(1000);

  PolicyEdit edit;
  edit.keep_best = 2;
  Policy p = ApplyPolicyEdit(current, edit);
  EXPECT_EQ(p.monitor(), "loss");
  EXPECT_EQ(p.keep_last(), 5u);
  EXPECT_EQ(p.keep_best(), 2u);
  EXPECT_EQ(p.keep_every_n_steps(), 1000u);

  PolicyEdit clear;
  clear.clear_retention = true;
  clear.keep_last = 3;
  clear.mode = "max";
  p = ApplyPolicyEdit(current, clear);
  EXPECT_EQ(p.mode(), v1::MAX);
  EXPECT_TRUE(p.has_keep_last());
  EXPECT_EQ(p.keep_last(), 3u);
  EXPECT_FALSE(p.has_keep_best());
  EXPECT_FALSE(p.has_keep_every_n_steps());
  EXPECT_TRUE(PolicyEdit{}.empty());
  EXPECT_FALSE(clear.empty());
}

}  // namespace
}  // namespace ckptd::cli
