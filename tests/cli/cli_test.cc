// End-to-end tests of the `ckpt` binary (CKPT_BINARY) against a real ckptd
// (ServerProcess). Every test uses its own run name over one shared server.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/cli/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli/cli_test_util.h"
#include "tests/integration/support/server_process.h"

namespace ckptd::cli {
namespace {

using ::ckptd::cli::test_util::CkptResult;
using ::ckptd::cli::test_util::EncodeRaw;
using ::ckptd::cli::test_util::EncodeSafetensors;
using ::ckptd::cli::test_util::FileExists;
using ::ckptd::cli::test_util::PatternBytes;
using ::ckptd::cli::test_util::ReadFile;
using ::ckptd::cli::test_util::RunProcess;
using ::ckptd::cli::test_util::TestTensor;
using ::ckptd::cli::test_util::WriteFile;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;
using Json = nlohmann::json;

const char* const kCommands[] = {
    "runs", "ls",    "show", "metrics", "pull", "push",  "alias",   "unalias",
    "pin",  "unpin", "rm",   "policy",  "gc",   "watch", "history", "verify"};

std::vector<TestTensor> SampleTensors(uint32_t seed) {
  return {
      {"model.layers.0.weight", "F32", {4, 3}, PatternBytes(48, seed + 1)},
      {"model.layers.0.bias", "F32", {3}, PatternBytes(12, seed + 2)},
      {"model.embed", "BF16", {8, 2}, PatternBytes(32, seed + 3)},
      {"model.big", "F16", {300, 1024}, PatternBytes(614400, seed + 4)},
      {"optimizer.step", "I64", {}, PatternBytes(8, seed + 5)},
      {"mask", "BOOL", {5}, std::string("\x01\x00\x01\x01\x00", 5)},
  };
}

class CkptCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ::ckptd::testing::ServerProcess();
    const absl::Status st = server_->Start();
    ASSERT_TRUE(st.ok()) << st;
    scratch_ = new std::string(
        ::ckptd::testing::ServerProcess::MakeTempDir("ckpt-cli-test"));
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    if (scratch_ != nullptr) {
      std::error_code ignored;
      std::filesystem::remove_all(*scratch_, ignored);
      delete scratch_;
      scratch_ = nullptr;
    }
  }

  // `ckpt --server ADDR args...`
  CkptResult Ckpt(std::vector<std::string> args) {
    args.insert(args.begin(), {"--server", server_->address()});
    return RunProcess(CKPT_BINARY, args, *scratch_);
  }

  // A unique run name for this test.
  std::string Run() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = absl::StrCat("t-", info->name());
    for (char& c : name) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') c = '-';
    }
    return name;
  }

  std::string Path(const std::string& name) {
    return absl::StrCat(*scratch_, "/", name);
  }

  // Writes a sample file and pushes it as step `step`; returns the file path.
  std::string PushSample(const std::string& run, int step, uint32_t seed,
                         std::vector<std::string> extra = {}) {
    const std::string file = Path(absl::StrCat(run, "-", step, ".safetensors"));
    WriteFile(file, EncodeSafetensors(SampleTensors(seed), {{"format", "pt"}}));
    std::vector<std::string> args = {"push", run, file, "--step",
                                     absl::StrCat(step)};
    args.insert(args.end(), extra.begin(), extra.end());
    const CkptResult r = Ckpt(args);
    EXPECT_EQ(r.exit_code, 0) << r;
    return file;
  }

  Json ParseJson(const CkptResult& r) {
    Json j = Json::parse(r.out, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(j.is_discarded()) << r;
    return j;
  }

  static ::ckptd::testing::ServerProcess* server_;
  static std::string* scratch_;
};

::ckptd::testing::ServerProcess* CkptCliTest::server_ = nullptr;
std::string* CkptCliTest::scratch_ = nullptr;

TEST_F(CkptCliTest, HelpWorksForEveryCommand) {
  CkptResult r = RunProcess(CKPT_BINARY, {"--help"}, *scratch_);
  EXPECT_EQ(r.exit_code, 0) << r;
  for (const char* cmd : kCommands) {
    EXPECT_THAT(r.out, HasSubstr(cmd)) << "top-level help lists " << cmd;
  }
  for (const char* cmd : kCommands) {
    r = RunProcess(CKPT_BINARY, {cmd, "--help"}, *scratch_);
    EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r;
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat("Usage: ckpt ", cmd))) << cmd;
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat("Example:\n  ckpt ", cmd)))
        << cmd;
    EXPECT_EQ(r.err, "") << cmd;
  }
}

TEST_F(CkptCliTest, UsageErrorsExitTwoWithoutContactingTheServer) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"show", "x@"},
       "ckpt: bad version reference 'x@': expected RUN@REF such as llama@best "
       "or llama@12\n"},
      {{"rm", "llama"}, "ckpt: missing version in 'llama'"},
      {{"pin", "@3"}, "ckpt: bad version reference '@3'"},
      {{"ls", "bad/name"}, "ckpt: bad run name 'bad/name'"},
      {{"ls", "llama@3"}, "ckpt: expected a run name"},
      {{"ls"}, "RUN is required"},
      {{"push", "llama", "f.safetensors"}, "--step is required"},
      {{"push", "llama", "f.safetensors", "--step", "ten"}, "ten"},
      {{"push", "llama", "f.safetensors", "--step", "1", "--metric", "loss"},
       "bad --metric 'loss': expected KEY=VALUE"},
      {{"push", "llama", "f.safetensors", "--step", "1", "--metric", "loss=x"},
       "'x' is not a number"},
      {{"policy", "llama", "--mode", "median"}, "median"},
      {{"alias", "llama", "best", "3"}, "kept by the server"},
      {{"alias", "llama", "prod", "0"}, "versions start at 1"},
      {{"frobnicate"}, "ckpt: "},
      {{}, "A subcommand is required"},
  };
  for (const Case& c : cases) {
    const CkptResult r = Ckpt(c.args);
    EXPECT_EQ(r.exit_code, 2) << r;
    EXPECT_THAT(r.err, HasSubstr(c.message)) << r;
    EXPECT_EQ(r.out, "") << r;
  }
  // The file is never read when the arguments are already wrong, and a
  // missing file is a runtime error (1), not a usage error.
  const CkptResult r =
      Ckpt({"push", Run(), Path("missing.safetensors"), "--step", "1"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: NOT_FOUND: open "));
}

TEST_F(CkptCliTest, UnknownRunExitsOneWithServerMessage) {
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"show", "no-such-run"},
                                             {"show", "no-such-run@best"},
                                             {"policy", "no-such-run"}}) {
    const CkptResult r = Ckpt(args);
    EXPECT_EQ(r.exit_code, 1) << r;
    EXPECT_THAT(r.err, StartsWith("ckpt: NOT_FOUND: ")) << r;
    EXPECT_THAT(r.err, HasSubstr("no-such-run")) << r;
  }
}

TEST_F(CkptCliTest, ServerDownExitsOne) {
  const int port = ::ckptd::testing::ServerProcess::PickFreePort();
  const CkptResult r = RunProcess(
      CKPT_BINARY, {"--server", absl::StrCat("127.0.0.1:", port), "runs"},
      *scratch_);
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: UNAVAILABLE: ")) << r;
}

TEST_F(CkptCliTest, PushThenRunsLsShow) {
  const std::string run = Run();
  const std::string file = Path("push.safetensors");
  WriteFile(file, EncodeSafetensors(SampleTensors(1)));
  CkptResult r = Ckpt({"push", run, file, "--step", "100", "--epoch", "2",
                       "--metric", "loss=0.5", "--metric", "acc=0.75",
                       "--label", "git_sha=abc123", "--label", "dataset=v3"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("pushed ", run, "@1: step 100")));
  EXPECT_THAT(r.out, HasSubstr("6 tensors"));
  EXPECT_EQ(r.err, "") << "no progress bar when stderr is not a terminal";

  PushSample(run, 200, 2, {"--metric", "loss=0.25"});

  r = Ckpt({"runs"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, StartsWith("RUN"));
  EXPECT_THAT(r.out, HasSubstr(run));

  r = Ckpt({"ls", run});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, StartsWith("VERSION"));
  EXPECT_THAT(r.out, HasSubstr("acc=0.75 loss=0.5"));
  EXPECT_THAT(r.out, HasSubstr("loss=0.25"));
  EXPECT_THAT(r.out, HasSubstr("COMMITTED"));
  EXPECT_THAT(r.out, HasSubstr("last"));

  r = Ckpt({"show", absl::StrCat(run, "@1")});
  ASSERT_EQ(r.exit_code, 0) << r;
  for (const char* want : {"version:",
                           "step:",
                           "100",
                           "epoch:",
                           "git_sha=abc123",
                           "dataset=v3",
                           "loss",
                           "0.5",
                           "model.layers.0.weight",
                           "float32",
                           "[4, 3]",
                           "model.embed",
                           "bfloat16",
                           "[8, 2]",
                           "optimizer.step",
                           "int64",
                           "[]",
                           "model.big",
                           "float16",
                           "600.0 KiB",
                           "mask",
                           "bool",
                           "tensors (6)",
                           "shards:",
                           "environment:",
                           "hostname:",
                           "T"}) {
    EXPECT_THAT(r.out, HasSubstr(want)) << want << "\n" << r;
  }
  // `show RUN` is RUN@last: version 2.
  r = Ckpt({"show", run});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr("200"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex("version: +2\n"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex(
                         "committed: +[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:"
                         "[0-9]{2}:[0-9]{2}Z"));
}

TEST_F(CkptCliTest, JsonOutputParses) {
  const std::string run = Run();
  PushSample(run, 10, 1, {"--metric", "loss=2", "--label", "k=v"});
  PushSample(run, 20, 2, {"--metric", "loss=1", "--epoch", "1"});

  Json j = ParseJson(Ckpt({"--json", "ls", run}));
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["run"], run);
  EXPECT_EQ(j[0]["version"], 1);
  EXPECT_EQ(j[0]["step"], 10);
  EXPECT_EQ(j[0]["state"], "COMMITTED");
  EXPECT_EQ(j[0]["metrics"]["loss"], 2.0);
  EXPECT_EQ(j[0]["env"]["labels"]["k"], "v");
  EXPECT_EQ(j[1]["epoch"], 1);
  EXPECT_TRUE(j[1]["committed_at"].is_string());
  EXPECT_GT(j[1]["total_bytes"].get<uint64_t>(), 614400u);

  // Global flags also work after the command.
  j = ParseJson(Ckpt({"show", absl::StrCat(run, "@1"), "--json"}));
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["version"], 1);
  ASSERT_TRUE(j["tensors"].is_array());
  EXPECT_EQ(j["tensors"].size(), 6u);
  std::map<std::string, Json> by_key;
  for (const Json& t : j["tensors"]) by_key[t["key"]] = t;
  ASSERT_TRUE(by_key.count("model.layers.0.weight"));
  EXPECT_EQ(by_key["model.layers.0.weight"]["dtype"], "float32");
  EXPECT_EQ(by_key["model.layers.0.weight"]["shape"], Json({4, 3}));
  EXPECT_EQ(by_key["model.layers.0.weight"]["bytes"], 48);
  EXPECT_EQ(by_key["optimizer.step"]["shape"], Json::array());

  j = ParseJson(Ckpt({"--json", "runs"}));
  ASSERT_TRUE(j.is_array());
  bool found = false;
  for (const Json& r : j) {
    if (r["name"] == run) {
      found = true;
      EXPECT_EQ(r["version_count"], 2);
      EXPECT_EQ(r["last_version"], 2);
    }
  }
  EXPECT_TRUE(found);

  j = ParseJson(Ckpt({"--json", "metrics", run}));
  ASSERT_TRUE(j["metrics"]["loss"].is_array());
  ASSERT_EQ(j["metrics"]["loss"].size(), 2u);
  EXPECT_EQ(j["metrics"]["loss"][1]["value"], 1.0);
  EXPECT_EQ(j["metrics"]["loss"][1]["step"], 20);

  j = ParseJson(Ckpt({"--json", "policy", run}));
  EXPECT_EQ(j["run"], run);
  EXPECT_TRUE(j["keep_last"].is_null());
}

TEST_F(CkptCliTest, MetricsTableAndSparkline) {
  const std::string run = Run();
  PushSample(run, 1, 1, {"--metric", "loss=3", "--metric", "acc=0.1"});
  PushSample(run, 2, 2, {"--metric", "loss=2", "--metric", "acc=0.5"});
  PushSample(run, 3, 3, {"--metric", "loss=1", "--metric", "acc=0.9"});
  CkptResult r = Ckpt({"metrics", run});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr("VERSION"));
  EXPECT_THAT(r.out, HasSubstr("loss"));
  EXPECT_THAT(r.out, HasSubstr("acc"));
  EXPECT_THAT(r.out, HasSubstr("\u2588\u2585\u2581")) << "loss falls";
  EXPECT_THAT(r.out, HasSubstr("\u2581\u2585\u2588")) << "acc rises";
  r = Ckpt({"metrics", run, "loss"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, Not(HasSubstr("acc")));
}

TEST_F(CkptCliTest, PullProducesTheSameTensors) {
  const std::string run = Run();
  const std::vector<TestTensor> tensors = SampleTensors(7);
  const std::string src = Path("src.safetensors");
  WriteFile(src, EncodeSafetensors(tensors));
  CkptResult r = Ckpt({"push", run, src, "--step", "5"});
  ASSERT_EQ(r.exit_code, 0) << r;

  const std::string out = Path("pulled.safetensors");
  r = Ckpt({"pull", absl::StrCat(run, "@1"), "-o", out});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("wrote ", out, ": 6 tensors")));
  EXPECT_FALSE(FileExists(out + ".tmp"));
  const std::string pulled = ReadFile(out);
  absl::StatusOr<SafetensorsFile> file = ParseSafetensors(pulled);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->tensors.size(), tensors.size());
  std::map<std::string, const SafetensorsTensor*> by_name;
  for (const SafetensorsTensor& t : file->tensors) by_name[t.name] = &t;
  for (const TestTensor& want : tensors) {
    ASSERT_TRUE(by_name.count(want.name)) << want.name;
    const SafetensorsTensor& got = *by_name[want.name];
    EXPECT_EQ(got.dtype, want.dtype) << want.name;
    EXPECT_EQ(got.shape, want.shape) << want.name;
    EXPECT_TRUE(file->TensorBytes(got) == want.bytes) << want.name;
  }

  // --keys selects by dotted prefix; RUN alone is RUN@last.
  const std::string model_only = Path("model.safetensors");
  r = Ckpt({"pull", run, "-o", model_only, "--keys", "model"});
  ASSERT_EQ(r.exit_code, 0) << r;
  const std::string model_bytes = ReadFile(model_only);
  file = ParseSafetensors(model_bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->tensors.size(), 4u);
  for (const SafetensorsTensor& t : file->tensors) {
    EXPECT_THAT(t.name, StartsWith("model.")) << t.name;
  }

  // JSON mode, and a pulled file pushes back unchanged.
  Json j = ParseJson(Ckpt({"--json", "pull", run, "-o", Path("again.st")}));
  EXPECT_EQ(j["tensors"], 6);
  EXPECT_EQ(j["bytes"].get<uint64_t>(), pulled.size());
  r = Ckpt({"push", run, out, "--step", "6"});
  ASSERT_EQ(r.exit_code, 0) << r;
  j = ParseJson(Ckpt({"--json", "show", run}));
  EXPECT_EQ(j["version"], 2);
  EXPECT_EQ(j["tensors"].size(), 6u);
}

TEST_F(CkptCliTest, PullFailureLeavesNoFile) {
  const std::string out = Path("never.safetensors");
  const CkptResult r = Ckpt({"pull", "no-such-run@1", "-o", out});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: NOT_FOUND: ")) << r;
  EXPECT_FALSE(FileExists(out));
  EXPECT_FALSE(FileExists(out + ".tmp"));
}

TEST_F(CkptCliTest, PushRejectsInvalidFileBeforeSending) {
  const std::string run = Run();
  const std::string bad = Path("bad.safetensors");
  WriteFile(bad, EncodeRaw(R"({"w":{"dtype":"F32","shape":[2,2],)"
                           R"("data_offsets":[0,12]}})",
                           std::string(12, 'x')));
  CkptResult r = Ckpt({"push", run, bad, "--step", "1"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: INVALID_ARGUMENT: "));
  EXPECT_THAT(r.err, HasSubstr("tensor 'w'"));
  EXPECT_THAT(r.err, HasSubstr("needs 16 bytes"));

  WriteFile(
      bad, EncodeSafetensors({{"a", "U8", {1}, "x"}, {"a.b", "U8", {1}, "y"}}));
  r = Ckpt({"push", run, bad, "--step", "1"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, HasSubstr("tensor 'a'"));

  // Nothing reached the server: the run does not exist.
  r = Ckpt({"ls", run});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: NOT_FOUND: "));
}

TEST_F(CkptCliTest, AliasPinRmRules) {
  const std::string run = Run();
  PushSample(run, 1, 1);
  PushSample(run, 2, 2);
  const std::string v1 = absl::StrCat(run, "@1");

  CkptResult r = Ckpt({"alias", run, "prod", "1"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_EQ(r.out, absl::StrCat(run, "@prod -> 1\n"));
  Json j = ParseJson(Ckpt({"--json", "show", absl::StrCat(run, "@prod")}));
  EXPECT_EQ(j["version"], 1);
  EXPECT_THAT(j["aliases"].dump(), HasSubstr("prod"));

  r = Ckpt({"alias", run, "prod", "last"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_EQ(r.out, absl::StrCat(run, "@prod -> 2\n"));

  r = Ckpt({"history", run});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, StartsWith("TIME"));
  EXPECT_THAT(r.out, HasSubstr("(none) -> 1"));
  EXPECT_THAT(r.out, HasSubstr("1 -> 2"));
  j = ParseJson(Ckpt({"--json", "history", run, "prod"}));
  ASSERT_TRUE(j.is_array());
  ASSERT_GE(j.size(), 2u);
  EXPECT_EQ(j[0]["alias"], "prod");

  r = Ckpt({"unalias", run, "prod"});
  ASSERT_EQ(r.exit_code, 0) << r;
  r = Ckpt({"show", absl::StrCat(run, "@prod")});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: NOT_FOUND: ")) << r;
  r = Ckpt({"history", run, "prod"});
  EXPECT_THAT(r.out, HasSubstr("2 -> (deleted)")) << r;

  r = Ckpt({"pin", v1});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_EQ(r.out, absl::StrCat("pinned ", run, "@1\n"));
  r = Ckpt({"rm", v1});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: FAILED_PRECONDITION: ")) << r;
  EXPECT_THAT(r.err, HasSubstr("pinned")) << r;

  r = Ckpt({"unpin", v1});
  ASSERT_EQ(r.exit_code, 0) << r;
  r = Ckpt({"rm", v1});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_EQ(r.out, absl::StrCat("deleted ", run, "@1\n"));
  j = ParseJson(Ckpt({"--json", "ls", run}));
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["version"], 2);
  r = Ckpt({"show", v1});
  EXPECT_EQ(r.exit_code, 1) << r;
}

TEST_F(CkptCliTest, PolicySetAndShow) {
  const std::string run = Run();
  PushSample(run, 1, 1, {"--metric", "loss=3"});
  CkptResult r = Ckpt({"policy", run});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr("keep all"));

  r = Ckpt({"policy", run, "--monitor", "loss", "--mode", "min", "--keep-last",
            "3", "--keep-every-n-steps", "100"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr("loss (min)"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex("keep last: +3\n"));

  // Only the given field changes.
  r = Ckpt({"policy", run, "--keep-best", "2"});
  ASSERT_EQ(r.exit_code, 0) << r;
  Json j = ParseJson(Ckpt({"--json", "policy", run}));
  EXPECT_EQ(j["monitor"], "loss");
  EXPECT_EQ(j["mode"], "min");
  EXPECT_EQ(j["keep_last"], 3);
  EXPECT_EQ(j["keep_best"], 2);
  EXPECT_EQ(j["keep_every_n_steps"], 100);

  j = ParseJson(Ckpt({"--json", "policy", run, "--clear-retention"}));
  EXPECT_EQ(j["monitor"], "loss");
  EXPECT_TRUE(j["keep_last"].is_null());
  EXPECT_TRUE(j["keep_best"].is_null());
  EXPECT_TRUE(j["keep_every_n_steps"].is_null());

  // With a monitor, `best` exists.
  PushSample(run, 2, 2, {"--metric", "loss=1"});
  j = ParseJson(Ckpt({"--json", "show", absl::StrCat(run, "@best")}));
  EXPECT_EQ(j["version"], 2);

  // The server's rule comes back verbatim.
  r = Ckpt({"policy", run, "--monitor", "", "--keep-best", "1"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: INVALID_ARGUMENT: ")) << r;
}

TEST_F(CkptCliTest, VerifyAndGc) {
  const std::string run = Run();
  PushSample(run, 1, 1);
  CkptResult r = Ckpt({"verify", absl::StrCat(run, "@1")});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr("0 errors"));
  r = Ckpt({"verify", run});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr("every version"));
  Json j = ParseJson(Ckpt({"--json", "verify", run}));
  EXPECT_EQ(j["ok"], true);
  EXPECT_GT(j["blobs_checked"].get<uint64_t>(), 0u);

  r = Ckpt({"gc"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, StartsWith("deleted "));
  j = ParseJson(Ckpt({"--json", "gc"}));
  EXPECT_TRUE(j.contains("bytes_freed"));
}

TEST_F(CkptCliTest, WatchPrintsALinePerMove) {
  const std::string run = Run();
  PushSample(run, 1, 1);

  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const std::string server = server_->address();
  const std::string target = absl::StrCat(run, "@last");
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], 1);
    const int devnull = ::open("/dev/null", O_WRONLY);
    ::dup2(devnull, 2);
    ::close(fds[0]);
    ::execl(CKPT_BINARY, CKPT_BINARY, "--server", server.c_str(), "watch",
            target.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(fds[1]);

  // Reads stdout until `want` appears or the deadline passes; false if the
  // process ended first.
  std::string seen;
  auto wait_for = [&](const std::string& want, int timeout_ms) {
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::milliseconds(timeout_ms);
    while (!absl::StrContains(seen, want)) {
      const int left = static_cast<int>(
          std::chrono::duration_cast<std::chrono::milliseconds>(
              deadline - std::chrono::steady_clock::now())
              .count());
      if (left <= 0) return false;
      pollfd p = {fds[0], POLLIN, 0};
      if (::poll(&p, 1, left) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::read(fds[0], buf, sizeof(buf));
      if (n <= 0) return false;
      seen.append(buf, static_cast<size_t>(n));
    }
    return true;
  };

  // Give the stream a moment to open, then move `last` twice.
  ::usleep(500'000);
  PushSample(run, 2, 2);
  const bool saw_two = wait_for(absl::StrCat("@last -> 2"), 10'000);
  PushSample(run, 3, 3);
  const bool saw_three = wait_for(absl::StrCat("@last -> 3"), 10'000);

  ::kill(pid, SIGINT);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ::close(fds[0]);
  EXPECT_TRUE(saw_two) << "watch output so far:\n"
                       << seen << "\nexit: "
                       << (WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  EXPECT_TRUE(saw_three) << seen;
  EXPECT_THAT(seen, ::testing::ContainsRegex(
                        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z  "));
}

}  // namespace
}  // namespace ckptd::cli
