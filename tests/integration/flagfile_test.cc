// `ckptd --flagfile`: a real ckptd configured from a file (dash and
// underscore names, comments, nesting, command-line overrides) and the
// reasons it gives for files it refuses.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "ckptd/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/secret.h"
#include "tests/integration/support/ckptd_run.h"
#include "tests/integration/support/server_process.h"
#include "tests/support/file_bytes.h"

namespace ckptd {
namespace {

using ::ckptd::testing::CkptdRun;
using ::ckptd::testing::ReadFile;
using ::ckptd::testing::RunCkptdToExit;
using ::ckptd::testing::ServerProcess;
using ::testing::HasSubstr;

constexpr char kToken[] = "ckptd_flagfile_test_token";

class FlagfileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    scratch_ = ServerProcess::MakeTempDir("ckptd-flagfile");
    auth_file_ =
        Write("auth_file",
              absl::StrCat("ops admin * sha256:", Sha256Hex(kToken), "\n"));
  }
  void TearDown() override {
    std::error_code ignored;
    std::filesystem::remove_all(scratch_, ignored);
  }

  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = absl::StrCat(scratch_, "/", name);
    std::ofstream(path) << text;
    return path;
  }

  std::unique_ptr<Client> Connect(const ServerProcess& server,
                                  const std::string& token) {
    ClientOptions options;
    options.address = server.address();
    options.token = token;
    auto client = Client::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  std::string scratch_;
  std::string auth_file_;
};

// The file's flags, in either spelling, take effect: its data dir (it comes
// after ServerProcess's own --data_dir, so it wins) and its auth file.
TEST_F(FlagfileTest, FlagsFromAFileTakeEffect) {
  const std::string data_dir = scratch_ + "/data-from-file";
  const std::string inner = Write("inner.flags", "--log-level=debug\n");
  const std::string flags =
      Write("ckptd.flags", absl::StrCat("# ckptd test configuration\n"
                                        "\n"
                                        "--data-dir=",
                                        data_dir,
                                        "\n"
                                        "   --auth_file=",
                                        auth_file_,
                                        "   \n"
                                        "--flagfile=",
                                        inner,
                                        "\n"
                                        "--pending-timeout=90s\n"));
  ServerProcess server({"--flagfile=" + flags});
  ASSERT_TRUE(server.Start().ok()) << server.LogTail();
  EXPECT_TRUE(std::filesystem::is_directory(data_dir + "/meta"))
      << "RocksDB is not in the file's --data-dir\n"
      << server.LogTail();
  EXPECT_FALSE(std::filesystem::exists(server.data_dir() + "/meta"));
  EXPECT_THAT(server.LogTail(),
              HasSubstr(absl::StrCat("authentication on (1 credentials from ",
                                     auth_file_, ")")));

  auto anonymous = Connect(server, "");
  ASSERT_NE(anonymous, nullptr);
  auto runs = anonymous->ListRuns();
  EXPECT_EQ(runs.status().code(), absl::StatusCode::kUnauthenticated)
      << runs.status();
  auto ops = Connect(server, kToken);
  ASSERT_NE(ops, nullptr);
  runs = ops->ListRuns();
  EXPECT_TRUE(runs.ok()) << runs.status();
  anonymous.reset();
  ops.reset();
  EXPECT_EQ(server.Stop(), 0);
}

// A flag after --flagfile overrides the file's; one before it does not.
TEST_F(FlagfileTest, TheLaterFlagWins) {
  const std::string flags =
      Write("ckptd.flags", absl::StrCat("--auth-file=", auth_file_, "\n"));
  {
    ServerProcess server({"--flagfile", flags, "--auth_file="});
    ASSERT_TRUE(server.Start().ok()) << server.LogTail();
    auto client = Connect(server, "");
    ASSERT_NE(client, nullptr);
    auto runs = client->ListRuns();
    EXPECT_TRUE(runs.ok()) << "--auth_file= after the file should turn "
                              "authentication off: "
                           << runs.status();
  }
  {
    ServerProcess server({"--auth_file=", "--flagfile=" + flags});
    ASSERT_TRUE(server.Start().ok()) << server.LogTail();
    auto client = Connect(server, "");
    ASSERT_NE(client, nullptr);
    auto runs = client->ListRuns();
    EXPECT_EQ(runs.status().code(), absl::StatusCode::kUnauthenticated)
        << runs.status();
  }
}

TEST_F(FlagfileTest, BadFlagfilesStopCkptdWithTheReason) {
  const std::string missing = scratch_ + "/missing.flags";
  struct Case {
    std::string name;
    std::string flagfile_arg;
    int exit_code;
    std::vector<std::string> message_parts;
  };
  const std::vector<Case> cases = {
      {"missing", "--flagfile=" + missing, 2, {missing, "cannot read"}},
      {"empty", "--flagfile=", 2, {"--flagfile needs a file"}},
      {"directory", "--flagfile=" + scratch_, 2, {"is a directory"}},
      {"not a flag",
       "--flagfile=" + Write("a.flags", "data_dir=/x\n"),
       2,
       {"a.flags line 1", "'data_dir=/x' is not a flag"}},
      {"space",
       "--flagfile=" + Write("b.flags", "#\n--listen 0.0.0.0:1\n"),
       2,
       {"b.flags line 2", "--listen=0.0.0.0:1"}},
      {"unknown",
       "--flagfile=" + Write("c.flags", "--data-dri=/x\n"),
       2,
       {"c.flags line 1", "unknown flag --data_dri"}},
      {"no value",
       "--flagfile=" + Write("d.flags", "--auth_file\n"),
       2,
       {"d.flags line 1", "--auth_file needs a value"}},
      // Values are checked by the flags themselves, as on the command line.
      {"bad duration",
       "--flagfile=" + Write("e.flags", "--pending-timeout=soon\n"),
       1,
       {"soon", "pending_timeout"}},
      {"bad number",
       "--flagfile=" + Write("f.flags", "--io_threads=0\n"),
       2,
       {"--io_threads must be at least 1"}},
  };
  for (const Case& c : cases) {
    const CkptdRun r =
        RunCkptdToExit({"--listen=127.0.0.1:0",
                        "--data_dir=" + scratch_ + "/data", c.flagfile_arg});
    EXPECT_FALSE(r.served) << c.name << "\n" << r.output;
    EXPECT_EQ(r.exit_code, c.exit_code) << c.name << "\n" << r.output;
    for (const std::string& part : c.message_parts) {
      EXPECT_THAT(r.output, HasSubstr(part)) << c.name;
    }
  }
}

TEST_F(FlagfileTest, HelpExplainsFlagfiles) {
  const CkptdRun r = RunCkptdToExit({"--help"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--flagfile=FILE reads flags from FILE"));
  EXPECT_THAT(r.output, HasSubstr("--health_listen"));
}

}  // namespace
}  // namespace ckptd
