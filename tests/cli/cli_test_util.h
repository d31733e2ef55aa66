// Test helpers for the `ckpt` CLI: a minimal .safetensors writer written from
// the format description (independent of the CLI's parser), file helpers and
// a runner that executes the real `ckpt` binary and captures its output.
//
// Not thread-safe; for single-threaded tests.
#ifndef CKPTD_TESTS_CLI_CLI_TEST_UTIL_H_
#define CKPTD_TESTS_CLI_CLI_TEST_UTIL_H_

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"

namespace ckptd::cli::test_util {

struct TestTensor {
  std::string name;
  std::string dtype;  // "F32", ...
  std::vector<int64_t> shape;
  std::string bytes;
};

inline std::string JsonString(absl::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// 8-byte little-endian length, then `header` verbatim, then `data`.
inline std::string EncodeRaw(absl::string_view header, absl::string_view data) {
  std::string out;
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out += static_cast<char>((n >> (8 * i)) & 0xFF);
  absl::StrAppend(&out, header, data);
  return out;
}

// A valid file: tensors back to back in the given order, header padded with
// spaces to a multiple of 8 (as the reference writer does).
inline std::string EncodeSafetensors(
    const std::vector<TestTensor>& tensors,
    const std::map<std::string, std::string>& metadata = {}) {
  std::vector<std::string> fields;
  if (!metadata.empty()) {
    std::vector<std::string> kv;
    for (const auto& [k, v] : metadata) {
      kv.push_back(absl::StrCat(JsonString(k), ":", JsonString(v)));
    }
    fields.push_back(
        absl::StrCat("\"__metadata__\":{", absl::StrJoin(kv, ","), "}"));
  }
  std::string data;
  for (const TestTensor& t : tensors) {
    const uint64_t begin = data.size();
    data += t.bytes;
    fields.push_back(
        absl::StrCat(JsonString(t.name), ":{\"dtype\":", JsonString(t.dtype),
                     ",\"shape\":[", absl::StrJoin(t.shape, ","),
                     "],\"data_offsets\":[", begin, ",", data.size(), "]}"));
  }
  std::string header = absl::StrCat("{", absl::StrJoin(fields, ","), "}");
  while (header.size() % 8 != 0) header += ' ';
  return EncodeRaw(header, data);
}

// `n` deterministic bytes that differ per seed.
inline std::string PatternBytes(size_t n, uint32_t seed) {
  std::string out(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    out[i] = static_cast<char>(x >> 24);
  }
  return out;
}

inline void WriteFile(const std::string& path, absl::string_view bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline bool FileExists(const std::string& path) {
  return ::access(path.c_str(), F_OK) == 0;
}

struct CkptResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

inline std::ostream& operator<<(std::ostream& os, const CkptResult& r) {
  return os << "exit " << r.exit_code << "\n--- stdout ---\n"
            << r.out << "--- stderr ---\n"
            << r.err;
}

// Environment changes for a child process: a value sets the variable,
// nullopt removes it; everything else is inherited.
using EnvOverrides = std::map<std::string, std::optional<std::string>>;

// The child's environment: this process's, with `overrides` applied. Built
// before fork, so the child only calls async-signal-safe functions.
inline std::vector<std::string> ChildEnvironment(
    const EnvOverrides& overrides) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const absl::string_view entry(*e);
    const absl::string_view name = entry.substr(0, entry.find('='));
    if (overrides.count(std::string(name)) == 0) env.emplace_back(entry);
  }
  for (const auto& [name, value] : overrides) {
    if (value.has_value()) env.push_back(absl::StrCat(name, "=", *value));
  }
  return env;
}

inline std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Forks and execs `binary args...` with stdin from /dev/null, stdout to
// `stdout_fd` and stderr to `stderr_fd` (dup'ed in the child); returns the
// child's pid.
inline pid_t SpawnProcess(const std::string& binary,
                          const std::vector<std::string>& args, int stdout_fd,
                          int stderr_fd, const EnvOverrides& env = {}) {
  std::vector<std::string> argv_strings = {binary};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<std::string> env_strings = ChildEnvironment(env);
  std::vector<char*> argv = CStrings(argv_strings);
  std::vector<char*> envp = CStrings(env_strings);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int in = ::open("/dev/null", O_RDONLY);
    ::dup2(in, 0);
    ::dup2(stdout_fd, 1);
    ::dup2(stderr_fd, 2);
    ::execve(binary.c_str(), argv.data(), envp.data());
    ::_exit(127);
  }
  return pid;
}

inline int ExitCode(int wait_status) {
  return WIFEXITED(wait_status) ? WEXITSTATUS(wait_status)
                                : 128 + WTERMSIG(wait_status);
}

// Runs `binary args...` with stdout and stderr captured through temp files
// (no pipe deadlocks), and waits for it.
inline CkptResult RunProcess(const std::string& binary,
                             const std::vector<std::string>& args,
                             const std::string& scratch_dir,
                             const EnvOverrides& env = {}) {
  static int counter = 0;
  const std::string base = absl::StrCat(scratch_dir, "/run", ++counter);
  const std::string out_path = base + ".out";
  const std::string err_path = base + ".err";
  const int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  const int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  const pid_t pid = SpawnProcess(binary, args, out, err, env);
  ::close(out);
  ::close(err);
  CkptResult r;
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.exit_code = ExitCode(status);
  r.out = ReadFile(out_path);
  r.err = ReadFile(err_path);
  ::unlink(out_path.c_str());
  ::unlink(err_path.c_str());
  return r;
}

}  // namespace ckptd::cli::test_util

#endif  // CKPTD_TESTS_CLI_CLI_TEST_UTIL_H_
