// The pieces behind metrics and logs, without a network: JSON log lines
// (escaping, invalid UTF-8, the formatter, structured events), text events,
// --log_format and --metrics_listen parsing, request id rules, the metric
// families a Metrics exports over a real Repository, and the README listing
// every metric name.
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/common/structured_log.h"
#include "server/core/repository.h"
#include "server/service/auth.h"
#include "server/service/metrics.h"
#include "server/service/rpc_scope.h"
#include "spdlog/sinks/ostream_sink.h"
#include "tests/support/temp_dir.h"

namespace ckptd {
namespace {

using ::testing::HasSubstr;

std::string Json(absl::string_view s) {
  std::string out;
  AppendJsonString(&out, s);
  return out;
}

TEST(StructuredLogTest, ParseLogFormat) {
  EXPECT_EQ(*ParseLogFormat("text"), LogFormat::kText);
  EXPECT_EQ(*ParseLogFormat("json"), LogFormat::kJson);
  for (const char* bad : {"", "JSON", "xml", "json "}) {
    auto f = ParseLogFormat(bad);
    ASSERT_FALSE(f.ok()) << bad;
    EXPECT_THAT(f.status().message(),
                HasSubstr(absl::StrCat("--log_format=", bad, " ")));
    EXPECT_THAT(f.status().message(), HasSubstr("text"));
  }
}

TEST(StructuredLogTest, JsonStringsParseBackToTheirText) {
  struct Case {
    const char* name;
    std::string in;
    std::string decoded;  // what a JSON parser reads back
  };
  const std::string fffd = "\xEF\xBF\xBD";
  const std::vector<Case> cases = {
      {"plain", "hello", "hello"},
      {"quotes", "say \"hi\"", "say \"hi\""},
      {"backslash", "a\\b", "a\\b"},
      {"controls", std::string("n\nr\rt\tnul\0bel\x07", 14),
       std::string("n\nr\rt\tnul\0bel\x07", 14)},
      {"del", "x\x7fy", "x\x7fy"},
      {"utf8", "\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80",
       "\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"},
      {"lone byte", "a\xFFz", "a" + fffd + "z"},
      {"cut sequence", "a\xE2\x82", "a" + fffd + fffd},
      {"overlong", "\xC0\xAF", fffd + fffd},
      {"surrogate", "\xED\xA0\x80", fffd + fffd + fffd},
      {"above max", "\xF4\x90\x80\x80", fffd + fffd + fffd + fffd},
      {"continuation first", "\x80x", fffd + "x"},
  };
  for (const Case& c : cases) {
    const std::string encoded = Json(c.in);
    auto j = nlohmann::json::parse(encoded, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << c.name << ": " << encoded;
    ASSERT_TRUE(j.is_string()) << c.name;
    EXPECT_EQ(j.get<std::string>(), c.decoded) << c.name;
    // Nothing raw below 0x20 in the line itself.
    for (char ch : encoded) {
      EXPECT_GE(static_cast<unsigned char>(ch), 0x20) << c.name;
    }
  }
}

// A logger writing to a string with the JSON formatter.
struct JsonCapture {
  std::ostringstream out;
  std::shared_ptr<spdlog::logger> logger;
  JsonCapture() {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
    sink->set_formatter(NewJsonLogFormatter());
    logger = std::make_shared<spdlog::logger>("test", sink);
    logger->set_level(spdlog::level::trace);
  }
  std::vector<nlohmann::json> Lines() const {
    std::vector<nlohmann::json> lines;
    for (absl::string_view line : absl::StrSplit(out.str(), '\n')) {
      if (line.empty()) continue;
      auto j = nlohmann::json::parse(line, nullptr, false);
      EXPECT_FALSE(j.is_discarded()) << line;
      lines.push_back(j);
    }
    return lines;
  }
};

TEST(StructuredLogTest, JsonFormatterWritesOneObjectPerLine) {
  JsonCapture capture;
  capture.logger->info("run {} said \"hi\"\nand left \\ {}", "r1", 7);
  capture.logger->warn("bytes \xFF here");
  LogEvent("rpc", LogFormat::kJson)
      .Str("request_id", "abc")
      .Str("run", "quo\"te")
      .Str("empty", "")
      .Uint("bytes_in", 18446744073709551615ull)
      .Int("delta", -3)
      .Fixed3("duration_ms", 1.23456)
      .Log(spdlog::level::err, capture.logger.get());
  const auto lines = capture.Lines();
  ASSERT_EQ(lines.size(), 3u) << capture.out.str();
  EXPECT_EQ(lines[0]["level"], "info");
  EXPECT_EQ(lines[0]["msg"], "run r1 said \"hi\"\nand left \\ 7");
  EXPECT_THAT(std::string(lines[0]["time"]), ::testing::EndsWith("Z"));
  EXPECT_EQ(lines[1]["level"], "warning");
  EXPECT_EQ(lines[1]["msg"], "bytes \xEF\xBF\xBD here");
  const nlohmann::json& e = lines[2];
  EXPECT_EQ(e["level"], "error");
  EXPECT_EQ(e["msg"], "rpc");
  EXPECT_EQ(e["request_id"], "abc");
  EXPECT_EQ(e["run"], "quo\"te");
  EXPECT_EQ(e["empty"], "");
  EXPECT_EQ(e["bytes_in"].get<uint64_t>(), 18446744073709551615ull);
  EXPECT_EQ(e["delta"].get<int64_t>(), -3);
  EXPECT_DOUBLE_EQ(e["duration_ms"].get<double>(), 1.235);
}

TEST(StructuredLogTest, TextEventsQuoteOnlyWhatNeedsIt) {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  sink->set_pattern("%v");
  spdlog::logger logger("text", sink);
  LogEvent("rpc", LogFormat::kText)
      .Str("a", "plain-value_1.2:x/y")
      .Str("b", "has space")
      .Str("c", "")
      .Str("d", "q\"=\\")
      .Str("e", "new\nline")
      .Uint("n", 5)
      .Fixed3("ms", 1.5)
      .Log(spdlog::level::info, &logger);
  EXPECT_EQ(out.str(),
            "rpc a=plain-value_1.2:x/y b=\"has space\" c=\"\" "
            "d=\"q\\\"=\\\\\" e=\"new\\nline\" n=5 ms=1.500\n");
}

TEST(RpcScopeTest, RequestIdsThatAreAdopted) {
  struct Case {
    std::string id;
    bool sane;
  };
  const std::vector<Case> cases = {
      {"abc", true},
      {"0af3-9c:span/1_2.x", true},
      {std::string(64, 'a'), true},
      {std::string(65, 'a'), false},
      {"", false},
      {"has space", false},
      {"quote\"", false},
      {"back\\slash", false},
      {"new\nline", false},
      {"eq=1", false},
      {"caf\xC3\xA9", false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(service::IsSaneRequestId(c.id), c.sane) << "'" << c.id << "'";
  }
}

TEST(MetricsListenTest, NormalizesOrNamesTheBadValue) {
  struct Good {
    const char* in;
    const char* out;
  };
  for (const Good& g : std::vector<Good>{{"127.0.0.1:9464", "127.0.0.1:9464"},
                                         {"127.0.0.1:0", "127.0.0.1:0"},
                                         {"localhost:9464", "127.0.0.1:9464"},
                                         {"0.0.0.0:65535", "0.0.0.0:65535"},
                                         {"10.1.2.3:00080", "10.1.2.3:80"}}) {
    auto n = service::NormalizeMetricsListen(g.in);
    ASSERT_TRUE(n.ok()) << g.in << ": " << n.status();
    EXPECT_EQ(*n, g.out);
  }
  struct Bad {
    const char* in;
    const char* says;
  };
  for (const Bad& b : std::vector<Bad>{
           {"", "is not HOST:PORT"},
           {"9464", "is not HOST:PORT"},
           {":9464", "is not HOST:PORT"},
           {"127.0.0.1:", "does not end in a port"},
           {"127.0.0.1:65536", "does not end in a port"},
           {"127.0.0.1:-1", "does not end in a port"},
           {"127.0.0.1:123456", "does not end in a port"},
           {"127.0.0.1:80s", "does not end in a port"},
           {"127.0.0.1:80r", "does not end in a port"},
           {"[::1]:9464", "IPv6"},
           {"::1:9464", "IPv4 address"},
           {"example.com:9464", "IPv4 address"},
           {"127.0.0.1:1,127.0.0.1:2", "IPv4 address"},
           {"127.1:9464", "IPv4 address"},
           {"256.0.0.1:9464", "IPv4 address"},
       }) {
    auto n = service::NormalizeMetricsListen(b.in);
    ASSERT_FALSE(n.ok()) << b.in << " -> " << *n;
    EXPECT_EQ(n.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(n.status().message(),
                HasSubstr(absl::StrCat("--metrics_listen '", b.in, "'")));
    EXPECT_THAT(n.status().message(), HasSubstr(b.says)) << b.in;
    EXPECT_THAT(n.status().message(), HasSubstr("127.0.0.1:9464"));
  }
}

TEST(MetricsExportTest, AuthFailureNamesAreDistinct) {
  std::vector<std::string> names;
  for (size_t i = 0; i < service::kAuthFailureKinds; ++i) {
    names.emplace_back(
        service::AuthFailureName(static_cast<service::AuthFailure>(i)));
  }
  EXPECT_THAT(names,
              ::testing::ElementsAre("bad_token", "unknown_certificate",
                                     "no_credential", "permission_denied"));
}

TEST(MetricsExportTest, ExportsEveryFamilyOverARealRepository) {
  const std::string dir = testing::MakeTempDir("ckptd-observability");
  auto repo = core::Repository::OpenDataDir(dir, {});
  ASSERT_TRUE(repo.ok()) << repo.status();
  service::Metrics metrics;
  metrics.SetSources({repo->get(), nullptr, dir});
  metrics.RecordRpc(service::Method::kGetVersion, grpc::StatusCode::NOT_FOUND,
                    absl::Milliseconds(3));
  metrics.RecordRpc(service::Method::kReadBlobs, grpc::StatusCode::OK,
                    absl::Seconds(2));
  metrics.AddReceivedBytes(1000);
  metrics.AddSentBytes(250);
  v1::VersionInfo info;
  info.set_created_at(1'000'000'000);
  info.set_committed_at(3'500'000'000);  // 2.5 s later
  info.set_total_bytes(4000);
  info.set_uploaded_bytes(1000);
  metrics.RecordPublish(info);
  const std::string text = metrics.TextExposition();
  for (absl::string_view name : service::kMetricNames) {
    if (absl::StartsWith(name, "ckptd_scrub_")) {
      EXPECT_THAT(text, ::testing::Not(HasSubstr(name)))
          << "no scrub yet, so no " << name;
      continue;
    }
    EXPECT_THAT(text, HasSubstr(absl::StrCat("# TYPE ", name, " ")))
        << name << " missing in\n"
        << text;
  }
  EXPECT_THAT(text, HasSubstr("ckptd_rpcs_total{code=\"NOT_FOUND\",method="
                              "\"GetVersion\"} 1"));
  EXPECT_THAT(text, HasSubstr("ckptd_received_bytes_total 1000"));
  EXPECT_THAT(text, HasSubstr("ckptd_sent_bytes_total 250"));
  EXPECT_THAT(text, HasSubstr("ckptd_versions_committed_total 1"));
  EXPECT_THAT(text, HasSubstr("ckptd_dedup_ratio 0.75"));
  EXPECT_THAT(text, HasSubstr("ckptd_push_duration_seconds_sum 2.5"));
  EXPECT_THAT(text, HasSubstr("ckptd_pull_duration_seconds_count 1"));
  EXPECT_THAT(text, HasSubstr("ckptd_pending_versions 0"));
  EXPECT_THAT(text, HasSubstr("ckptd_auth_failures_total{reason=\"bad_token\"}"
                              " 0"));
  repo->reset();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

TEST(MetricsExportTest, TheReadmeDocumentsEveryMetricName) {
  std::ifstream in(std::string(CKPTD_SOURCE_DIR) + "/README.md");
  ASSERT_TRUE(in.good());
  std::stringstream readme;
  readme << in.rdbuf();
  const std::string text = readme.str();
  for (absl::string_view name : service::kMetricNames) {
    // `name` or `name{labels}`
    const bool listed = absl::StrContains(text, absl::StrCat("`", name, "`")) ||
                        absl::StrContains(text, absl::StrCat("`", name, "{"));
    EXPECT_TRUE(listed) << "README (Operations, Metrics and logs) does not "
                           "list "
                        << name;
  }
}

}  // namespace
}  // namespace ckptd
