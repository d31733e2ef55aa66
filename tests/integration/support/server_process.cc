#include "tests/integration/support/server_process.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "tests/support/temp_dir.h"

namespace ckptd::testing {
namespace {

constexpr double kStartTimeoutSeconds = 30;

// Minimal hand-rolled health probe: a channel that reaches READY and a
// successful unary call proves the server is up.
bool ChannelReady(const std::string& address, double seconds) {
  auto channel =
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  return channel->WaitForConnected(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int>(seconds * 1000)));
}

}  // namespace

ServerProcess::ServerProcess(std::vector<std::string> extra_flags)
    : extra_flags_(std::move(extra_flags)), data_dir_(MakeTempDir("ckptd-it")) {
  log_path_ = data_dir_ + ".log";
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) Stop();
  std::error_code ec;
  std::filesystem::remove_all(data_dir_, ec);
  std::filesystem::remove(log_path_, ec);
}

std::string ServerProcess::BinaryPath() {
  if (const char* env = std::getenv("CKPTD_BINARY"); env && *env) return env;
  return CKPTD_BINARY;
}

int ServerProcess::PickFreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  int port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

std::string ServerProcess::MakeTempDir(const std::string& prefix) {
  return ::ckptd::testing::MakeTempDir(prefix);
}

absl::Status ServerProcess::Start() {
  if (port_ == 0) port_ = PickFreePort();
  address_ = absl::StrCat("127.0.0.1:", port_);
  std::vector<std::string> args = {BinaryPath(), "--listen=" + address_,
                                   "--data_dir=" + data_dir_};
  for (const auto& f : extra_flags_) args.push_back(f);
  pid_ = ::fork();
  if (pid_ < 0) return absl::InternalError("fork failed");
  if (pid_ == 0) {
    FILE* log = std::fopen(log_path_.c_str(), "a");
    if (log != nullptr) {
      ::dup2(fileno(log), STDOUT_FILENO);
      ::dup2(fileno(log), STDERR_FILENO);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    std::perror("execv ckptd");
    ::_exit(127);
  }
  return WaitUntilServing(kStartTimeoutSeconds);
}

absl::Status ServerProcess::WaitUntilServing(double timeout_seconds) {
  auto deadline =
      std::chrono::steady_clock::now() +
      std::chrono::milliseconds(static_cast<int>(timeout_seconds * 1000));
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      std::ifstream log(log_path_);
      std::stringstream ss;
      ss << log.rdbuf();
      return absl::InternalError(
          absl::StrCat("ckptd exited during start-up; log:\n", ss.str()));
    }
    if (ChannelReady(address_, 0.2)) return absl::OkStatus();
  }
  return absl::DeadlineExceededError(
      absl::StrCat("ckptd did not serve on ", address_, " within ",
                   timeout_seconds, "s; log at ", log_path_));
}

int ServerProcess::Stop() {
  if (pid_ <= 0) return 0;
  ::kill(pid_, SIGTERM);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

void ServerProcess::Kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
}

absl::Status ServerProcess::Restart() {
  if (pid_ > 0) Stop();
  return Start();
}

}  // namespace ckptd::testing
