// The co-located Unix socket (--local_socket, server/service/local_socket.h)
// against a real ckptd that also listens on loopback TCP: pushes and pulls
// over `unix:PATH`, the socket file's mode and lifecycle (stale socket
// replaced, a non-socket path and a too-long path refused), and the same
// tokens and roles as over TCP (auth_test's matrix covers every RPC).
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "ckptd/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/secret.h"
#include "tests/integration/support/server_process.h"
#include "tests/support/assert_ok.h"
#include "tests/support/random_bytes.h"

namespace ckptd {
namespace {

using ::ckptd::testing::RandomBytes;
using ::ckptd::testing::ServerProcess;
using ::testing::HasSubstr;

// A short directory for socket paths (sun_path holds 107 bytes).
class SocketDir {
 public:
  SocketDir() : dir_(ServerProcess::MakeTempDir("ckptd-sock")) {}
  ~SocketDir() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const {
    return absl::StrCat(dir_, "/", name);
  }

 private:
  std::string dir_;
};

// A state of a few tensors, one of several chunks, with its bytes.
struct State {
  std::vector<std::string> bytes;
  PushRequest Request(const std::string& run, int64_t step) const {
    PushRequest req;
    req.run = run;
    req.step = step;
    PushEntry root;
    root.entry.mutable_container()->set_kind(v1::ContainerInfo::DICT);
    req.entries.push_back(root);
    for (size_t i = 0; i < bytes.size(); ++i) {
      PushEntry e;
      e.entry.add_path()->set_key(absl::StrCat("t", i));
      e.entry.mutable_tensor()->set_dtype(v1::UINT8);
      e.entry.mutable_tensor()->add_shape(
          static_cast<int64_t>(bytes[i].size()));
      e.tensor.data = bytes[i].data();
      e.tensor.byte_length = bytes[i].size();
      req.entries.push_back(std::move(e));
    }
    return req;
  }
};

State MakeState(uint64_t seed) {
  // 9 MiB + 1 crosses chunk boundaries; the small ones get packed.
  return State{{RandomBytes((9 << 20) + 1, seed), RandomBytes(4096, seed + 1),
                RandomBytes(100, seed + 2)}};
}

absl::StatusOr<std::unique_ptr<Client>> ConnectTo(const std::string& address,
                                                  const std::string& token) {
  ClientOptions options;
  options.address = address;
  options.token = token;
  options.rpc_timeout_seconds = 30;
  return Client::Connect(options);
}

// Pulls run@last through `client` and returns the tensors' bytes.
std::vector<std::string> PullBytes(Client& client, const std::string& run) {
  auto version = client.GetVersion(run, "last", GetVersionOptions());
  EXPECT_TRUE(version.ok()) << version.status();
  if (!version.ok()) return {};
  auto tensors = client.ReadAllTensors(*version, nullptr, PullOptions());
  EXPECT_TRUE(tensors.ok()) << tensors.status();
  if (!tensors.ok()) return {};
  std::vector<std::string> out;
  for (OwnedTensor& t : *tensors) out.push_back(std::move(t.bytes));
  return out;
}

// A socket file at `path` that nobody listens on: what a killed server
// leaves behind.
void MakeStaleSocket(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
      << std::strerror(errno);
  ::close(fd);
}

TEST(LocalSocketTest, PushAndPullOverTheSocketAreBitIdentical) {
  SocketDir dir;
  const std::string path = dir.Path("ckptd.sock");
  ServerProcess server({"--local_socket=" + path});
  ASSERT_OK(server.Start());
  auto local = ConnectTo("unix:" + path, "");
  ASSERT_TRUE(local.ok()) << local.status();
  const State state = MakeState(7);
  auto pushed = (*local)->Push(state.Request("sock-run", 1), PushOptions());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  EXPECT_EQ(pushed->state(), v1::COMMITTED);
  EXPECT_EQ(PullBytes(**local, "sock-run"), state.bytes);
  // The same version over TCP: one server, two ways in.
  auto tcp = ConnectTo(server.address(), "");
  ASSERT_TRUE(tcp.ok()) << tcp.status();
  EXPECT_EQ(PullBytes(**tcp, "sock-run"), state.bytes);
}

TEST(LocalSocketTest, SocketFileHasMode0660AndGoesAwayOnShutdown) {
  SocketDir dir;
  const std::string path = dir.Path("s.sock");
  ServerProcess server({"--local_socket=" + path});
  ASSERT_OK(server.Start());
  struct stat st;
  ASSERT_EQ(::lstat(path.c_str(), &st), 0) << std::strerror(errno);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  EXPECT_EQ(server.Stop(), 0);
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(LocalSocketTest, DefaultSocketIsInTheDataDir) {
  ServerProcess server;
  ASSERT_OK(server.Start());
  const std::string path = server.data_dir() + "/ckptd.sock";
  if (path.size() > 107) GTEST_SKIP() << "temp dir too deep: " << path;
  struct stat st;
  ASSERT_EQ(::lstat(path.c_str(), &st), 0) << server.LogTail();
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  auto local = ConnectTo("unix:" + path, "");
  ASSERT_TRUE(local.ok()) << local.status();
  auto runs = (*local)->ListRuns();
  EXPECT_TRUE(runs.ok()) << runs.status();
}

TEST(LocalSocketTest, StaleSocketIsReplaced) {
  SocketDir dir;
  const std::string path = dir.Path("stale.sock");
  MakeStaleSocket(path);
  ServerProcess server({"--local_socket=" + path});
  ASSERT_OK(server.Start());
  EXPECT_THAT(server.LogTail(), HasSubstr("replaced the stale socket"));
  // A kill -9 leaves the file; the restart takes it over again.
  const State state = MakeState(11);
  {
    auto local = ConnectTo("unix:" + path, "");
    ASSERT_TRUE(local.ok()) << local.status();
    ASSERT_TRUE((*local)->Push(state.Request("stale", 1), PushOptions()).ok());
  }
  server.Kill();
  ASSERT_TRUE(std::filesystem::is_socket(path));
  ASSERT_OK(server.Start());
  auto local = ConnectTo("unix:" + path, "");
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_EQ(PullBytes(**local, "stale"), state.bytes);
}

TEST(LocalSocketTest, SocketInUseIsRefused) {
  SocketDir dir;
  const std::string path = dir.Path("busy.sock");
  ServerProcess first({"--local_socket=" + path});
  ASSERT_OK(first.Start());
  ServerProcess second({"--local_socket=" + path});
  const absl::Status st = second.Start();
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr("is in use"));
  // The first server's socket is untouched.
  auto local = ConnectTo("unix:" + path, "");
  ASSERT_TRUE(local.ok());
  EXPECT_TRUE((*local)->ListRuns().ok());
}

TEST(LocalSocketTest, PathThatIsNotASocketIsRefusedAndKept) {
  SocketDir dir;
  const std::string path = dir.Path("notes.txt");
  {
    std::ofstream out(path);
    out << "precious";
  }
  ServerProcess server({"--local_socket=" + path});
  const absl::Status st = server.Start();
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()),
              HasSubstr("exists and is a regular file, not a socket"));
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_EQ(text.str(), "precious");
  // A directory is refused too.
  const std::string sub = dir.Path("subdir");
  std::filesystem::create_directory(sub);
  ServerProcess server2({"--local_socket=" + sub});
  const absl::Status st2 = server2.Start();
  ASSERT_FALSE(st2.ok());
  EXPECT_THAT(std::string(st2.message()), HasSubstr("is a directory"));
  EXPECT_TRUE(std::filesystem::is_directory(sub));
}

TEST(LocalSocketTest, TooLongPathIsRefusedNamingTheFlag) {
  SocketDir dir;
  const std::string path = dir.Path(std::string(120, 'x') + ".sock");
  ServerProcess server({"--local_socket=" + path});
  const absl::Status st = server.Start();
  ASSERT_FALSE(st.ok());
  const std::string message(st.message());
  EXPECT_THAT(message, HasSubstr("--local_socket " + path));
  EXPECT_THAT(message, HasSubstr("at most 107"));
  EXPECT_THAT(message, HasSubstr("give a shorter --local_socket"));
}

TEST(LocalSocketTest, TooLongDefaultPathFallsBackToTcpOnly) {
  const std::string base = ServerProcess::MakeTempDir("ckptd-deep");
  const std::string deep = absl::StrCat(base, "/", std::string(110, 'd'));
  std::filesystem::create_directories(deep);
  {
    ServerProcess server({"--data_dir=" + deep});
    ASSERT_OK(server.Start());
    EXPECT_THAT(server.LogTail(), HasSubstr("serving TCP only"));
    EXPECT_FALSE(std::filesystem::exists(deep + "/ckptd.sock"));
    auto tcp = ConnectTo(server.address(), "");
    ASSERT_TRUE(tcp.ok());
    EXPECT_TRUE((*tcp)->ListRuns().ok());
  }
  std::error_code ec;
  std::filesystem::remove_all(base, ec);
}

TEST(LocalSocketTest, EmptyFlagTurnsTheSocketOff) {
  ServerProcess server({"--local_socket="});
  ASSERT_OK(server.Start());
  EXPECT_FALSE(std::filesystem::exists(server.data_dir() + "/ckptd.sock"));
}

// The same identities and roles as over TCP: the socket is no way around
// the auth file.
TEST(LocalSocketTest, TokensAndRolesApplyOnTheSocket) {
  SocketDir dir;
  const std::string path = dir.Path("auth.sock");
  const std::string reader = "reader-token-0123456789abcdef";
  const std::string writer = "writer-token-0123456789abcdef";
  const std::string auth_file = dir.Path("auth_file");
  {
    std::ofstream out(auth_file);
    out << "r reader team-* sha256:" << Sha256Hex(reader) << "\n"
        << "w writer team-* sha256:" << Sha256Hex(writer) << "\n";
  }
  ServerProcess server({"--local_socket=" + path, "--auth_file=" + auth_file});
  ASSERT_OK(server.Start());
  const std::string address = "unix:" + path;
  const State state = MakeState(3);
  struct Case {
    const char* name;
    std::string token;
    std::string run;
    absl::StatusCode want;
  };
  const Case cases[] = {
      {"no token", "", "team-a", absl::StatusCode::kUnauthenticated},
      {"unknown token", "not-a-token", "team-a",
       absl::StatusCode::kUnauthenticated},
      {"reader pushes", reader, "team-a", absl::StatusCode::kPermissionDenied},
      {"writer on another run", writer, "other",
       absl::StatusCode::kPermissionDenied},
      {"writer", writer, "team-a", absl::StatusCode::kOk},
  };
  for (const Case& c : cases) {
    for (const std::string& where : {address, server.address()}) {
      auto client = ConnectTo(where, c.token);
      ASSERT_TRUE(client.ok()) << c.name;
      auto pushed = (*client)->Push(state.Request(c.run, 1), PushOptions());
      EXPECT_EQ(pushed.status().code(), c.want)
          << c.name << " over " << where << ": " << pushed.status();
    }
  }
  // A reader reads over the socket; no token reads nothing.
  auto as_reader = ConnectTo(address, reader);
  ASSERT_TRUE(as_reader.ok());
  EXPECT_EQ(PullBytes(**as_reader, "team-a"), state.bytes);
  auto anonymous = ConnectTo(address, "");
  ASSERT_TRUE(anonymous.ok());
  EXPECT_EQ((*anonymous)
                ->GetVersion("team-a", "last", GetVersionOptions())
                .status()
                .code(),
            absl::StatusCode::kUnauthenticated);
}

// The socket has no TLS: a client certificate cannot identify anyone there,
// so a client given one for a unix: address is refused before it connects.
TEST(LocalSocketTest, ClientCertificateOnTheSocketIsRefused) {
  ClientOptions options;
  options.address = "unix:/nonexistent/ckptd.sock";
  options.client_certificate = "-----BEGIN CERTIFICATE-----";
  options.client_key = "-----BEGIN PRIVATE KEY-----";
  auto client = Client::Connect(options);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(client.status().message()),
              HasSubstr("has no TLS: a client certificate does not identify "
                        "you there; use a token"));
}

}  // namespace
}  // namespace ckptd
