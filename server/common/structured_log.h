// Structured logging: ckptd's log lines as text (the default) or as one
// JSON object per line (--log_format json), over spdlog.
//
// InstallStderrLogger makes the default spdlog logger ("ckptd", on stderr)
// write every line in the chosen format, so plain `spdlog::info(...)` calls
// come out as
//
//   text  [2024-05-01 12:00:00.123] [ckptd] [info] ckptd listening on ...
//   json  {"time":"2024-05-01T12:00:00.123456Z","level":"info",
//          "msg":"ckptd listening on ..."}
//
// and a LogEvent carries named fields, which JSON writes as keys of the
// object and text as `key=value` after the message (a value with a space,
// quote, backslash, '=' or a non-printable byte, or an empty one, is quoted
// and escaped like a JSON string):
//
//   LogEvent("rpc").Str("method", "GetVersion").Uint("bytes_out", 120)
//       .Log(spdlog::level::info);
//   text  ... [info] rpc method=GetVersion bytes_out=120
//   json  {"time":"...","level":"info","msg":"rpc","method":"GetVersion",
//          "bytes_out":120}
//
// JSON strings are escaped (quotes, backslashes, control characters) and
// invalid UTF-8 becomes U+FFFD, so a line stays valid JSON whatever bytes a
// request put in a message.
//
// Thread safety: InstallStderrLogger once, at start-up, before other threads
// log; everything else is thread-safe.
#ifndef CKPTD_SERVER_COMMON_STRUCTURED_LOG_H_
#define CKPTD_SERVER_COMMON_STRUCTURED_LOG_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "spdlog/formatter.h"
#include "spdlog/spdlog.h"

namespace ckptd {

enum class LogFormat { kText, kJson };

// "text" or "json"; INVALID_ARGUMENT naming the value otherwise.
absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name);

// Replaces spdlog's default logger with "ckptd" on stderr writing `format`
// (text: spdlog's default pattern, colours on a terminal; json: no colours).
void InstallStderrLogger(LogFormat format);
// The format LogEvent renders for (kText until InstallStderrLogger).
LogFormat CurrentLogFormat();

// Appends `s` to `out` as a JSON string literal, quotes included.
void AppendJsonString(std::string* out, absl::string_view s);

// The formatter behind --log_format json, for a sink of one's own (tests).
std::unique_ptr<spdlog::formatter> NewJsonLogFormatter();

// One log line with named fields (see the file comment). Build it, then
// Log() it once.
class LogEvent {
 public:
  // Rendered for `format` (the installed one unless a test says otherwise).
  explicit LogEvent(absl::string_view message,
                    LogFormat format = CurrentLogFormat());
  LogEvent(const LogEvent&) = delete;
  LogEvent& operator=(const LogEvent&) = delete;

  LogEvent& Str(absl::string_view key, absl::string_view value);
  LogEvent& Int(absl::string_view key, int64_t value);
  LogEvent& Uint(absl::string_view key, uint64_t value);
  // Written with 3 decimals (a duration in ms, a ratio).
  LogEvent& Fixed3(absl::string_view key, double value);

  // Writes the line to `logger` (default: spdlog's default logger).
  void Log(spdlog::level::level_enum level,
           spdlog::logger* logger = nullptr) const;

 private:
  void Key(absl::string_view key);

  const LogFormat format_;
  // Text: "message k=v ..."; JSON: the members after "level",
  // "\"msg\":\"message\",\"k\":v,...".
  std::string line_;
};

}  // namespace ckptd

#endif  // CKPTD_SERVER_COMMON_STRUCTURED_LOG_H_
