#include "server/common/structured_log.h"

#include <atomic>
#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/sinks/stdout_sinks.h"

namespace ckptd {
namespace {

std::atomic<LogFormat> g_format{LogFormat::kText};

// LogEvent passes this as the source file of its lines, so that the JSON
// formatter knows their payload is already JSON members (a pointer no other
// log call can pass: plain spdlog calls carry no source location).
constexpr char kEventSource[] = "ckptd-log-event";

constexpr absl::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the valid UTF-8 sequence starting at s[i] (2-4), or 0.
size_t Utf8SequenceLength(absl::string_view s, size_t i) {
  const auto byte = [&](size_t k) -> unsigned {
    return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0u;
  };
  const unsigned c = byte(0);
  const auto cont = [&](size_t k) { return (byte(k) & 0xC0u) == 0x80u; };
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    const unsigned c1 = byte(1);
    if (c == 0xE0 && c1 < 0xA0) return 0;  // overlong
    if (c == 0xED && c1 > 0x9F) return 0;  // surrogate
    return cont(1) && cont(2) ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    const unsigned c1 = byte(1);
    if (c == 0xF0 && c1 < 0x90) return 0;  // overlong
    if (c == 0xF4 && c1 > 0x8F) return 0;  // above U+10FFFF
    return cont(1) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

bool NeedsQuotes(absl::string_view value) {
  if (value.empty()) return true;
  for (char ch : value) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c >= 0x7F || c == '"' || c == '\\' || c == '=') {
      return true;
    }
  }
  return false;
}

class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg,
              spdlog::memory_buf_t& dest) override {
    std::string line = "{\"time\":\"";
    line += absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::FromChrono(msg.time),
                             absl::UTCTimeZone());
    line += "\",\"level\":\"";
    const auto level = spdlog::level::to_string_view(msg.level);
    line.append(level.data(), level.size());
    line += "\",";
    const absl::string_view payload(msg.payload.data(), msg.payload.size());
    if (msg.source.filename == kEventSource) {
      absl::StrAppend(&line, payload);
    } else {
      line += "\"msg\":";
      AppendJsonString(&line, payload);
    }
    line += "}\n";
    dest.append(line.data(), line.data() + line.size());
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

}  // namespace

absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name) {
  if (name == "text") return LogFormat::kText;
  if (name == "json") return LogFormat::kJson;
  return absl::InvalidArgumentError(
      absl::StrCat("--log_format=", name,
                   " is not a log format; use text (the default) or json "
                   "(one JSON object per line)"));
}

void InstallStderrLogger(LogFormat format) {
  std::shared_ptr<spdlog::sinks::sink> sink;
  if (format == LogFormat::kJson) {
    sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    sink->set_formatter(NewJsonLogFormatter());
  } else {
    sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  }
  g_format.store(format);
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("ckptd", sink));
}

LogFormat CurrentLogFormat() { return g_format.load(); }

std::unique_ptr<spdlog::formatter> NewJsonLogFormatter() {
  return std::make_unique<JsonFormatter>();
}

void AppendJsonString(std::string* out, absl::string_view s) {
  out->push_back('"');
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '"':
          out->append("\\\"");
          break;
        case '\\':
          out->append("\\\\");
          break;
        case '\n':
          out->append("\\n");
          break;
        case '\r':
          out->append("\\r");
          break;
        case '\t':
          out->append("\\t");
          break;
        default:
          if (c < 0x20) {
            absl::StrAppendFormat(out, "\\u%04x", c);
          } else {
            out->push_back(static_cast<char>(c));
          }
      }
      ++i;
      continue;
    }
    const size_t n = Utf8SequenceLength(s, i);
    if (n == 0) {
      absl::StrAppend(out, kReplacement);
      ++i;
    } else {
      absl::StrAppend(out, s.substr(i, n));
      i += n;
    }
  }
  out->push_back('"');
}

LogEvent::LogEvent(absl::string_view message, LogFormat format)
    : format_(format) {
  if (format_ == LogFormat::kJson) {
    line_ = "\"msg\":";
    AppendJsonString(&line_, message);
  } else {
    line_ = std::string(message);
  }
}

void LogEvent::Key(absl::string_view key) {
  if (format_ == LogFormat::kJson) {
    line_.push_back(',');
    AppendJsonString(&line_, key);
    line_.push_back(':');
  } else {
    absl::StrAppend(&line_, " ", key, "=");
  }
}

LogEvent& LogEvent::Str(absl::string_view key, absl::string_view value) {
  Key(key);
  if (format_ == LogFormat::kJson || NeedsQuotes(value)) {
    AppendJsonString(&line_, value);
  } else {
    absl::StrAppend(&line_, value);
  }
  return *this;
}

LogEvent& LogEvent::Int(absl::string_view key, int64_t value) {
  Key(key);
  absl::StrAppend(&line_, value);
  return *this;
}

LogEvent& LogEvent::Uint(absl::string_view key, uint64_t value) {
  Key(key);
  absl::StrAppend(&line_, value);
  return *this;
}

LogEvent& LogEvent::Fixed3(absl::string_view key, double value) {
  Key(key);
  if (!std::isfinite(value)) {
    line_.append(format_ == LogFormat::kJson ? "null" : "nan");
  } else {
    absl::StrAppendFormat(&line_, "%.3f", value);
  }
  return *this;
}

void LogEvent::Log(spdlog::level::level_enum level,
                   spdlog::logger* logger) const {
  if (logger == nullptr) logger = spdlog::default_logger_raw();
  logger->log(spdlog::source_loc{kEventSource, 1, ""}, level,
              spdlog::string_view_t(line_.data(), line_.size()));
}

}  // namespace ckptd
