#include "tests/integration/support/ckptd_run.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "tests/integration/support/server_process.h"
#include "tests/support/file_bytes.h"

namespace ckptd::testing {

namespace {
// What ckptd logs once it serves (server/main.cc).
constexpr char kServingLogLine[] = "ckptd listening on";
}  // namespace

CkptdRun RunCkptdToExit(const std::vector<std::string>& args,
                        absl::Duration guard) {
  const std::string out_dir = ServerProcess::MakeTempDir("ckptd-run");
  const std::string out_path = out_dir + "/output";
  std::vector<std::string> argv_storage = {ServerProcess::BinaryPath()};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  CkptdRun result;
  const pid_t pid = ::fork();
  if (pid < 0) {
    result.output = "fork failed";
    return result;
  }
  if (pid == 0) {
    const int fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      ::dup2(fd, STDOUT_FILENO);
      ::dup2(fd, STDERR_FILENO);
    }
    ::execv(argv[0], argv.data());
    std::perror("execv ckptd");
    ::_exit(127);
  }
  int status = 0;
  const auto deadline =
      std::chrono::steady_clock::now() + absl::ToChronoSeconds(guard);
  for (;;) {
    if (::waitpid(pid, &status, WNOHANG) == pid) break;
    const bool serving =
        ReadFile(out_path).find(kServingLogLine) != std::string::npos;
    if (serving || std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      result.served = true;
      if (!serving)
        result.output = "[the test killed ckptd: it did not exit]\n";
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  result.exit_code = WIFEXITED(status)     ? WEXITSTATUS(status)
                     : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                                           : -1;
  result.output += ReadFile(out_path);
  std::error_code ec;
  std::filesystem::remove_all(out_dir, ec);
  return result;
}

}  // namespace ckptd::testing
