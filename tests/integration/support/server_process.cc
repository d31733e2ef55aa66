#include "tests/integration/support/server_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "tests/support/temp_dir.h"

extern char** environ;

namespace ckptd::testing {
namespace {

constexpr double kStartTimeoutSeconds = 30;
constexpr auto kPollInterval = std::chrono::milliseconds(5);

// A channel that reaches READY proves the server accepts connections.
bool ChannelReady(const std::string& address, double seconds,
                  std::shared_ptr<grpc::ChannelCredentials> creds) {
  auto channel = grpc::CreateChannel(
      address, creds != nullptr ? creds : grpc::InsecureChannelCredentials());
  return channel->WaitForConnected(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int>(seconds * 1000)));
}

// The inherited environment changed by `extra`: "NAME=value" sets NAME
// (replacing an inherited value), a bare "NAME" removes it.
std::vector<std::string> ChildEnvironment(
    const std::vector<std::string>& extra) {
  auto name_of = [](absl::string_view entry) {
    return entry.substr(0, entry.find('='));
  };
  std::vector<std::string> out;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const absl::string_view entry(*e);
    bool overridden = false;
    for (const std::string& x : extra) {
      if (name_of(x) == name_of(entry)) overridden = true;
    }
    if (!overridden) out.emplace_back(entry);
  }
  for (const std::string& x : extra) {
    if (x.find('=') != std::string::npos) out.push_back(x);
  }
  return out;
}

std::vector<char*> NullTerminated(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// The port in a complete port file ("<port>\n"); nullopt while it is absent.
// The server renames the file into place, so it is never seen half-written;
// anything else in it is an error.
absl::StatusOr<std::optional<int>> ReadPortFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  int port = 0;
  if (!absl::EndsWith(text, "\n") ||
      !absl::SimpleAtoi(absl::StripTrailingAsciiWhitespace(text), &port) ||
      port <= 0 || port > 65535) {
    return absl::InternalError(absl::StrCat("port file ", path, " holds '",
                                            absl::CEscape(text),
                                            "', not a port and a newline"));
  }
  return port;
}

}  // namespace

ServerProcess::ServerProcess(std::vector<std::string> extra_flags)
    : extra_flags_(std::move(extra_flags)), data_dir_(MakeTempDir("ckptd-it")) {
  log_path_ = data_dir_ + ".log";
  port_file_ = data_dir_ + ".port";
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) Stop();
  std::error_code ec;
  std::filesystem::remove_all(data_dir_, ec);
  std::filesystem::remove(log_path_, ec);
  std::filesystem::remove(port_file_, ec);
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

std::string ServerProcess::LogTail(size_t max_bytes) const {
  std::ifstream log(log_path_, std::ios::binary);
  if (!log) return "<no log>";
  std::stringstream ss;
  ss << log.rdbuf();
  std::string text = ss.str();
  if (text.size() <= max_bytes) return text;
  text = text.substr(text.size() - max_bytes);
  const size_t newline = text.find('\n');
  if (newline != std::string::npos) text = text.substr(newline + 1);
  return absl::StrCat("...\n", text);
}

absl::Status ServerProcess::Start() {
  if (pid_ > 0) return absl::FailedPreconditionError("ckptd is running");
  // The first start binds port 0; restarts take the same port again.
  const std::string listen = absl::StrCat("127.0.0.1:", port_);
  std::error_code ec;
  std::filesystem::remove(port_file_, ec);
  // Everything the child needs is prepared before fork(): between fork and
  // exec a multi-threaded parent's child may only make async-signal-safe
  // calls.
  std::vector<std::string> args = {BinaryPath(), "--listen=" + listen,
                                   "--data_dir=" + data_dir_,
                                   "--port_file=" + port_file_};
  for (const auto& f : extra_flags_) args.push_back(f);
  std::vector<std::string> env = ChildEnvironment(extra_env_);
  std::vector<char*> argv = NullTerminated(args);
  std::vector<char*> envp = NullTerminated(env);
  const int log_fd = ::open(log_path_.c_str(),
                            O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return absl::InternalError(absl::StrCat("open ", log_path_, " failed"));
  }
  pid_ = ::fork();
  if (pid_ < 0) {
    ::close(log_fd);
    return absl::InternalError("fork failed");
  }
  if (pid_ == 0) {
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    ::execve(argv[0], argv.data(), envp.data());
    static const char kExecFailed[] = "execve ckptd failed\n";
    (void)!::write(STDERR_FILENO, kExecFailed, sizeof(kExecFailed) - 1);
    ::_exit(127);
  }
  ::close(log_fd);
  return WaitUntilServing(kStartTimeoutSeconds);
}

absl::Status ServerProcess::WaitUntilServing(double timeout_seconds) {
  const auto deadline =
      std::chrono::steady_clock::now() +
      std::chrono::milliseconds(static_cast<int>(timeout_seconds * 1000));
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::InternalError(
          absl::StrCat("ckptd exited during start-up (wait status ", status,
                       "); end of its log (", log_path_, "):\n", LogTail()));
    }
    absl::StatusOr<std::optional<int>> bound = ReadPortFile(port_file_);
    if (!bound.ok()) {
      Kill();
      return absl::InternalError(absl::StrCat(
          bound.status().message(), "; end of the ckptd log:\n", LogTail()));
    }
    if (bound->has_value()) {
      if (port_ != 0 && **bound != port_) {
        Kill();
        return absl::InternalError(
            absl::StrCat("ckptd bound port ", **bound, " instead of ", port_));
      }
      port_ = **bound;
      address_ = absl::StrCat("127.0.0.1:", port_);
      const double left = std::chrono::duration<double>(
                              deadline - std::chrono::steady_clock::now())
                              .count();
      if (ChannelReady(address_, std::max(left, 0.1), ready_credentials_)) {
        return absl::OkStatus();
      }
      break;
    }
    std::this_thread::sleep_for(kPollInterval);
  }
  Kill();
  return absl::DeadlineExceededError(absl::StrCat(
      "ckptd did not write its port to ", port_file_, " and serve within ",
      timeout_seconds, "s (killed it); end of its log (", log_path_, "):\n",
      LogTail()));
}

std::optional<int> ServerProcess::WaitForExit(double timeout_seconds) {
  if (pid_ <= 0) return std::nullopt;
  const auto deadline =
      std::chrono::steady_clock::now() +
      std::chrono::milliseconds(static_cast<int>(timeout_seconds * 1000));
  do {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return status;
    }
    std::this_thread::sleep_for(kPollInterval);
  } while (std::chrono::steady_clock::now() < deadline);
  return std::nullopt;
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
