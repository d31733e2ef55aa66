// `ckpt health` (the real binary, CKPT_BINARY) against a real ckptd: on its
// main port and on --health_listen, SERVING, NOT_SERVING during a graceful
// shutdown, nothing listening, an unknown service, and bad arguments.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "ckptd/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli/cli_test_util.h"
#include "tests/integration/support/server_process.h"

namespace ckptd::cli {
namespace {

using ::ckptd::cli::test_util::CkptResult;
using ::ckptd::cli::test_util::RunProcess;
using ::ckptd::testing::ServerProcess;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using Json = nlohmann::json;

// Only a guard against a test that would otherwise hang; nothing asserts
// how fast anything happens.
constexpr auto kGuard = std::chrono::seconds(60);

class HealthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    scratch_ = ServerProcess::MakeTempDir("ckpt-health");
  }
  void TearDown() override {
    std::error_code ignored;
    std::filesystem::remove_all(scratch_, ignored);
  }

  CkptResult Ckpt(const std::vector<std::string>& args) {
    return RunProcess(CKPT_BINARY, args, scratch_);
  }

  std::string scratch_;
};

// The port ckptd logged for --health_listen (it logs it before writing
// --port_file, so it is there once Start() returns).
std::optional<int> HealthPort(const ServerProcess& server) {
  static const std::regex kLine(
      "health probes \\(grpc\\.health\\.v1 only, plaintext\\) on "
      "127\\.0\\.0\\.1:0 \\(port ([0-9]+)\\)");
  const std::string log = server.LogTail(1 << 20);
  std::smatch m;
  if (!std::regex_search(log, m, kLine)) return std::nullopt;
  return std::stoi(m[1].str());
}

// A one-tensor version of `run`, so that a watch has something to follow.
void PushOne(Client& client, const std::string& run, std::string* bytes) {
  *bytes = std::string(4096, 'x');
  PushRequest req;
  req.run = run;
  req.step = 1;
  ManifestEntry root;
  root.mutable_container()->set_kind(v1::ContainerInfo::DICT);
  req.entries.push_back({root, {}});
  ManifestEntry e;
  e.add_path()->set_key("w");
  e.mutable_tensor()->set_dtype(v1::UINT8);
  e.mutable_tensor()->add_shape(static_cast<int64_t>(bytes->size()));
  req.entries.push_back({e, {bytes->data(), bytes->size()}});
  auto info = client.Push(req, PushOptions());
  ASSERT_TRUE(info.ok()) << info.status();
}

int Lines(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

TEST_F(HealthTest, AServingServerExitsZero) {
  ServerProcess server;
  ASSERT_TRUE(server.Start().ok()) << server.LogTail();
  CkptResult r = Ckpt({"--server", server.address(), "health"});
  EXPECT_EQ(r.exit_code, 0) << r;
  EXPECT_EQ(r.out, absl::StrCat(server.address(), ": SERVING\n"));
  EXPECT_EQ(r.err, "") << r;

  r = Ckpt(
      {"health", "--server", server.address(), "--timeout", "500ms", "--json"});
  EXPECT_EQ(r.exit_code, 0) << r;
  const Json j = Json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << r;
  EXPECT_EQ(j["status"], "SERVING");
  EXPECT_EQ(j["serving"], true);
  EXPECT_EQ(j["address"], server.address());
  EXPECT_EQ(j["service"], "");
}

TEST_F(HealthTest, NothingListeningExitsOneWithOneLineSayingUnreachable) {
  const std::string dead =
      absl::StrCat("127.0.0.1:", ServerProcess::PickFreePort());
  CkptResult r = Ckpt({"--server", dead, "health", "--timeout", "10s"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith(absl::StrCat("ckpt: UNAVAILABLE: ", dead,
                                             " is unreachable: ")))
      << r;
  EXPECT_EQ(Lines(r.err), 1) << r;
  EXPECT_EQ(r.out, "") << r;

  r = Ckpt({"--server", dead, "--json", "health"});
  EXPECT_EQ(r.exit_code, 1) << r;
  const Json j = Json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << r;
  EXPECT_EQ(j["serving"], false);
  EXPECT_EQ(j["status"], "UNAVAILABLE");
  EXPECT_THAT(j["error"].get<std::string>(), HasSubstr("is unreachable"));
}

// A TCP listener that never speaks HTTP/2 (the kernel accepts, nobody
// answers): the call waits for the connection until --timeout.
TEST_F(HealthTest, AServerThatDoesNotAnswerExitsOneAfterTheTimeout) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 16), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string silent = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));
  const CkptResult r =
      Ckpt({"--server", silent, "health", "--timeout", "300ms"});
  ::close(fd);
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_EQ(r.err, absl::StrCat("ckpt: DEADLINE_EXCEEDED: ", silent,
                                " did not answer within 300ms (--timeout)\n"))
      << r;
}

TEST_F(HealthTest, AServiceTheServerDoesNotReportOnExitsOne) {
  ServerProcess server;
  ASSERT_TRUE(server.Start().ok()) << server.LogTail();
  const CkptResult r = Ckpt(
      {"--server", server.address(), "health", "--service", "no.such.Svc"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: NOT_FOUND: "));
  EXPECT_THAT(r.err, HasSubstr("does not report on service 'no.such.Svc'"));
  EXPECT_EQ(Lines(r.err), 1) << r;
}

TEST_F(HealthTest, BadArgumentsAreUsageErrorsNamingTheValue) {
  const std::string dead =
      absl::StrCat("127.0.0.1:", ServerProcess::PickFreePort());
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--timeout", "soon"}, "--timeout 'soon' is not a positive duration"},
      {{"--timeout", "5"}, "--timeout '5' is not a positive duration"},
      {{"--timeout", "0s"}, "--timeout '0s' is not a positive duration"},
      {{"--timeout", "-1s"}, "--timeout '-1s' is not a positive duration"},
      {{"--timeout", "inf"}, "--timeout 'inf' is not a positive duration"},
      {{"--service", "ckptd v1"}, "--service 'ckptd v1' is not a gRPC"},
      {{"--service", ".ckptd"}, "--service '.ckptd' is not a gRPC"},
      {{"--service", "a/b"}, "--service 'a/b' is not a gRPC"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"--server", dead, "health"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    const CkptResult r = Ckpt(args);
    EXPECT_EQ(r.exit_code, 2) << r;
    EXPECT_THAT(r.err, HasSubstr(c.message)) << r;
    EXPECT_EQ(r.out, "") << r;
  }
}

// --health_listen: plaintext health alone. SERVING while the server serves,
// NOT_SERVING once SIGTERM starts the graceful shutdown (an open watch
// stream holds it in its grace period), gone after the exit.
TEST_F(HealthTest, HealthListenFollowsTheServerThroughShutdown) {
  ServerProcess server(
      {"--health_listen=127.0.0.1:0", "--shutdown_grace=300s"});
  ASSERT_TRUE(server.Start().ok()) << server.LogTail();
  const std::optional<int> port = HealthPort(server);
  ASSERT_TRUE(port.has_value()) << server.LogTail();
  ASSERT_NE(*port, server.port());
  const std::string health = absl::StrCat("127.0.0.1:", *port);

  CkptResult r = Ckpt({"--server", health, "health"});
  EXPECT_EQ(r.exit_code, 0) << r;
  EXPECT_EQ(r.out, absl::StrCat(health, ": SERVING\n"));
  // It serves nothing but health.
  r = Ckpt({"--server", health, "runs"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: UNIMPLEMENTED")) << r;

  ClientOptions options;
  options.address = server.address();
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::string bytes;
  PushOne(**client, "health-run", &bytes);
  auto watch = (*client)->OpenWatch("health-run", "last");
  ASSERT_TRUE(watch.ok()) << watch.status();
  VersionInfo seen;
  auto first = (*watch)->Next(absl::FromChrono(kGuard), &seen);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(*first, WatchResult::kMoved);  // the stream is open

  ASSERT_EQ(::kill(server.pid(), SIGTERM), 0);
  const auto deadline = std::chrono::steady_clock::now() + kGuard;
  while (server.LogTail().find("shutting down: NOT_SERVING") ==
             std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_THAT(server.LogTail(), HasSubstr("shutting down: NOT_SERVING"));
  r = Ckpt({"--server", health, "health"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_EQ(r.err,
            absl::StrCat("ckpt: UNAVAILABLE: ", health,
                         " is NOT_SERVING (starting up or shutting down)\n"))
      << r;
  EXPECT_EQ(r.out, "") << r;

  (*watch)->Cancel();
  watch->reset();
  client->reset();
  const std::optional<int> status =
      server.WaitForExit(std::chrono::duration<double>(kGuard).count());
  ASSERT_TRUE(status.has_value()) << "ckptd did not exit\n" << server.LogTail();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
      << *status << "\n"
      << server.LogTail();
  r = Ckpt({"--server", health, "health"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, HasSubstr("is unreachable")) << r;
}

TEST_F(HealthTest, BadHealthListenStopsCkptdWithTheReason) {
  ServerProcess other;
  ASSERT_TRUE(other.Start().ok()) << other.LogTail();
  struct Case {
    std::string flag;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"--health_listen=50052",
       "--health_listen '50052' is not HOST:PORT with a port in 0-65535"},
      {"--health_listen=127.0.0.1:http",
       "--health_listen '127.0.0.1:http' is not HOST:PORT"},
      {"--health_listen=127.0.0.1:70000",
       "--health_listen '127.0.0.1:70000' is not HOST:PORT"},
      {"--health_listen=" + other.address(),
       absl::StrCat("cannot listen on --health_listen '", other.address(),
                    "': address in use")},
  };
  for (const Case& c : cases) {
    const std::string dir = ServerProcess::MakeTempDir("ckpt-health-bad");
    const CkptResult r = RunProcess(
        ServerProcess::BinaryPath(),
        {"--listen=127.0.0.1:0", "--data_dir=" + dir, c.flag}, scratch_);
    EXPECT_EQ(r.exit_code, 1) << c.flag << "\n" << r;
    EXPECT_THAT(r.err, HasSubstr(c.message)) << c.flag << "\n" << r;
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
}

}  // namespace
}  // namespace ckptd::cli
