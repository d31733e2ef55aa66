// ServerProcess: a real `ckptd` child process on a free loopback port over a
// temporary data directory, for integration tests.
//
// Start() forks/execs the binary built by this tree (CKPTD_BINARY), waits
// until the port accepts gRPC health checks, and returns. Stop() sends
// SIGTERM and waits; Kill() sends SIGKILL (crash tests); Restart() starts the
// server again over the same data dir and port. The destructor stops the
// process and removes the data dir. Not thread-safe.
#ifndef CKPTD_TESTS_INTEGRATION_SUPPORT_SERVER_PROCESS_H_
#define CKPTD_TESTS_INTEGRATION_SUPPORT_SERVER_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace ckptd::testing {

class ServerProcess {
 public:
  // `extra_flags` are appended to the command line, e.g. "--log_level=debug".
  explicit ServerProcess(std::vector<std::string> extra_flags = {});
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  absl::Status Start();
  // SIGTERM, then waits; returns the exit status seen (0 for a clean exit).
  int Stop();
  // SIGKILL, then waits.
  void Kill();
  absl::Status Restart();

  const std::string& address() const { return address_; }
  const std::string& data_dir() const { return data_dir_; }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }

  // A path for a second `ckptd` command line over the same dir, etc.
  static std::string BinaryPath();
  // A free TCP port on 127.0.0.1 (bound then released).
  static int PickFreePort();
  // A fresh directory under $TMPDIR (or /tmp).
  static std::string MakeTempDir(const std::string& prefix);

 private:
  absl::Status WaitUntilServing(double timeout_seconds);

  std::vector<std::string> extra_flags_;
  std::string data_dir_;
  std::string address_;
  std::string log_path_;
  int port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace ckptd::testing

#endif  // CKPTD_TESTS_INTEGRATION_SUPPORT_SERVER_PROCESS_H_
