// ServerProcess: a real `ckptd` child process on a loopback port over a
// temporary data directory, for integration tests.
//
// Start() forks/execs the binary built by this tree (CKPTD_BINARY). The first
// start listens on 127.0.0.1:0 and learns the port the server bound from its
// --port_file (no free-port guess that another process could take between
// the guess and the bind); Start() returns once that file is written and the
// port accepts gRPC connections. Stop() sends SIGTERM and waits; Kill()
// sends SIGKILL (crash tests); WaitForExit() waits for a server that is
// expected to die on its own (a kill point). A later Start() or Restart()
// runs the server again over the same data dir and the same port, so that
// clients keep their address across a restart. The destructor stops the
// process and removes the data dir. Not thread-safe.
#ifndef CKPTD_TESTS_INTEGRATION_SUPPORT_SERVER_PROCESS_H_
#define CKPTD_TESTS_INTEGRATION_SUPPORT_SERVER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "grpcpp/security/credentials.h"

namespace ckptd::testing {

class ServerProcess {
 public:
  // `extra_flags` are appended to the command line, e.g. "--log_level=debug".
  explicit ServerProcess(std::vector<std::string> extra_flags = {});
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // Changes to the inherited environment for the following Start()s:
  // "NAME=value" sets NAME (e.g. "CKPTD_KILL_AT=commit.before_publish"), a
  // bare "NAME" removes it; {} goes back to the inherited environment.
  void set_extra_env(std::vector<std::string> env) {
    extra_env_ = std::move(env);
  }
  // Credentials Start() connects with to see that the server serves (for a
  // TLS server); default: plaintext.
  void set_ready_credentials(std::shared_ptr<grpc::ChannelCredentials> creds) {
    ready_credentials_ = std::move(creds);
  }

  absl::Status Start();
  // SIGTERM, then waits; returns the exit status seen (0 for a clean exit).
  int Stop();
  // SIGKILL, then waits.
  void Kill();
  absl::Status Restart();
  // Waits up to `timeout_seconds` for the process to exit by itself and
  // returns its waitpid() status (test it with WIFSIGNALED, WTERMSIG, ...);
  // nullopt if it is still running (or was not started).
  std::optional<int> WaitForExit(double timeout_seconds);

  const std::string& address() const { return address_; }
  const std::string& data_dir() const { return data_dir_; }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  // The end of the server's log (its stdout and stderr, all starts), for
  // failure messages.
  std::string LogTail(size_t max_bytes = 4000) const;

  // A path for a second `ckptd` command line over the same dir, etc.
  static std::string BinaryPath();
  // A TCP port on 127.0.0.1 that was free a moment ago (bound, then
  // released). Only for addresses where nothing is meant to listen; a
  // server to talk to binds port 0 instead (see Start()).
  static int PickFreePort();
  // A fresh directory under $TMPDIR (or /tmp).
  static std::string MakeTempDir(const std::string& prefix);

 private:
  absl::Status WaitUntilServing(double timeout_seconds);

  std::vector<std::string> extra_flags_;
  std::vector<std::string> extra_env_;
  std::shared_ptr<grpc::ChannelCredentials> ready_credentials_;
  std::string data_dir_;
  std::string address_;
  std::string log_path_;
  std::string port_file_;
  int port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace ckptd::testing

#endif  // CKPTD_TESTS_INTEGRATION_SUPPORT_SERVER_PROCESS_H_
