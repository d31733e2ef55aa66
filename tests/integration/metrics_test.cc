// Metrics and logs against a real ckptd: --metrics_listen on 127.0.0.1:0
// (the port read from --metrics_port_file), pushes and pulls through the
// C++ client, /metrics scraped over HTTP and its counters checked by the
// amounts the calls should move them; the request id each call gets back;
// --log_format json lines parsed; bad flag values refused.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "ckptd/client.h"
#include "ckptd/v1/checkpoint.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/base/secret.h"
#include "tests/integration/support/ckptd_run.h"
#include "tests/integration/support/server_process.h"
#include "tests/support/assert_ok.h"
#include "tests/support/file_bytes.h"
#include "tests/support/random_bytes.h"

namespace ckptd {
namespace {

using ::ckptd::testing::CkptdRun;
using ::ckptd::testing::RandomBytes;
using ::ckptd::testing::ReadFile;
using ::ckptd::testing::RunCkptdToExit;
using ::ckptd::testing::ServerProcess;
using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1 << 20;

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// GET http://127.0.0.1:port/path; the whole response (status line, headers,
// body), or "" when the connection fails.
std::string HttpGet(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return "";
  }
  const std::string request =
      absl::StrCat("GET ", path,
                   " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n =
        ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  std::string response;
  char buf[8192];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    response.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return response;
}

// A scrape: series ("name{k=\"v\",...}" with labels sorted by name) to
// value, and the metric families announced by "# TYPE" lines.
struct Scrape {
  std::map<std::string, double> series;
  std::map<std::string, std::string> types;  // family -> counter, gauge, ...
  std::string text;

  bool Has(const std::string& key) const { return series.contains(key); }
  double Get(const std::string& key) const {
    auto it = series.find(key);
    return it == series.end() ? -1 : it->second;
  }
};

// The key of a series: name and labels sorted by label name.
std::string Key(const std::string& name,
                std::map<std::string, std::string> labels = {}) {
  if (labels.empty()) return name;
  std::string out = name + "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) out += ",";
    first = false;
    absl::StrAppend(&out, k, "=\"", v, "\"");
  }
  return out + "}";
}

Scrape ParseExposition(const std::string& body) {
  Scrape s;
  s.text = body;
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    if (line.empty()) continue;
    if (absl::ConsumePrefix(&line, "# TYPE ")) {
      std::vector<std::string> parts = absl::StrSplit(line, ' ');
      if (parts.size() == 2) s.types[parts[0]] = parts[1];
      continue;
    }
    if (line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == absl::string_view::npos) continue;
    absl::string_view id = line.substr(0, space);
    double value = 0;
    if (!absl::SimpleAtod(line.substr(space + 1), &value)) continue;
    std::string name(id);
    std::map<std::string, std::string> labels;
    if (const size_t brace = id.find('{'); brace != absl::string_view::npos) {
      name = std::string(id.substr(0, brace));
      absl::string_view inner = id.substr(brace + 1);
      absl::ConsumeSuffix(&inner, "}");
      for (absl::string_view pair : absl::StrSplit(inner, ',')) {
        const size_t eq = pair.find('=');
        if (eq == absl::string_view::npos) continue;
        absl::string_view v = pair.substr(eq + 1);
        absl::ConsumePrefix(&v, "\"");
        absl::ConsumeSuffix(&v, "\"");
        labels[std::string(pair.substr(0, eq))] = std::string(v);
      }
    }
    s.series[Key(name, labels)] = value;
  }
  return s;
}

// A ckptd with metrics on 127.0.0.1:0, and a client to it.
class MetricsServer {
 public:
  explicit MetricsServer(std::vector<std::string> extra_flags = {}) {
    dir_ = ServerProcess::MakeTempDir("ckptd-metrics");
    metrics_port_file_ = dir_ + "/metrics_port";
    std::vector<std::string> flags = {
        "--metrics_listen=127.0.0.1:0",
        "--metrics_port_file=" + metrics_port_file_};
    flags.insert(flags.end(), extra_flags.begin(), extra_flags.end());
    server_ = std::make_unique<ServerProcess>(std::move(flags));
  }
  ~MetricsServer() {
    server_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  absl::Status Start(const std::string& token = "") {
    if (absl::Status st = server_->Start(); !st.ok()) return st;
    // Written before --port_file, which Start() waited for.
    const std::string text = ReadFile(metrics_port_file_);
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &metrics_port_) ||
        metrics_port_ <= 0) {
      return absl::InternalError(
          absl::StrCat("no port in --metrics_port_file: '", text, "'"));
    }
    ClientOptions options;
    options.address = server_->address();
    options.token = token;
    options.rpc_timeout_seconds = 30;
    auto client = Client::Connect(options);
    if (!client.ok()) return client.status();
    client_ = *std::move(client);
    return absl::OkStatus();
  }

  Scrape ScrapeMetrics() const {
    const std::string response = HttpGet(metrics_port_, "/metrics");
    EXPECT_THAT(response, HasSubstr("200 OK")) << response.substr(0, 500);
    const size_t body = response.find("\r\n\r\n");
    return ParseExposition(
        body == std::string::npos ? "" : response.substr(body + 4));
  }

  std::unique_ptr<v1::Checkpoint::Stub> Stub() const {
    return v1::Checkpoint::NewStub(grpc::CreateChannel(
        server_->address(), grpc::InsecureChannelCredentials()));
  }

  ServerProcess& process() { return *server_; }
  Client& client() { return *client_; }
  int metrics_port() const { return metrics_port_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::string metrics_port_file_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> client_;
  int metrics_port_ = 0;
};

// A state of one float32 tensor of `bytes` (a multiple of 4) and an int.
struct OneTensorState {
  std::string bytes;
  PushRequest Request(const std::string& run, int64_t step) const {
    PushRequest req;
    req.run = run;
    req.step = step;
    ManifestEntry root;
    root.mutable_container()->set_kind(v1::ContainerInfo::DICT);
    req.entries.push_back(PushEntry{root, {}});
    ManifestEntry w;
    w.add_path()->set_key("w");
    w.mutable_tensor()->set_dtype(v1::FLOAT32);
    w.mutable_tensor()->add_shape(static_cast<int64_t>(bytes.size() / 4));
    TensorData t;
    t.data = bytes.data();
    t.byte_length = bytes.size();
    req.entries.push_back(PushEntry{w, t});
    ManifestEntry step_value;
    step_value.add_path()->set_key("step");
    step_value.mutable_value()->set_int_value(step);
    req.entries.push_back(PushEntry{step_value, {}});
    return req;
  }
};

std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token = "",
                                         const std::string& request_id = "") {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
  if (!request_id.empty()) ctx->AddMetadata("x-request-id", request_id);
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(30));
  return ctx;
}

// The x-request-id the server sent back in its initial metadata.
std::string RequestIdOf(const grpc::ClientContext& ctx) {
  const auto& md = ctx.GetServerInitialMetadata();
  auto it = md.find("x-request-id");
  if (it == md.end()) return "";
  return std::string(it->second.data(), it->second.size());
}

TEST(MetricsTest, PushPullAndAFailingCallMoveTheCountersByTheirAmounts) {
  MetricsServer server;
  ASSERT_OK(server.Start());
  Scrape before = server.ScrapeMetrics();
  EXPECT_EQ(before.Get("ckptd_versions_committed_total"), 0) << before.text;
  EXPECT_EQ(before.Get("ckptd_pending_versions"), 0);
  EXPECT_EQ(before.types["ckptd_rpc_duration_seconds"], "histogram");
  EXPECT_EQ(before.types["ckptd_push_duration_seconds"], "histogram");
  EXPECT_EQ(before.types["ckptd_pull_duration_seconds"], "histogram");
  EXPECT_EQ(before.types["ckptd_disk_free_bytes"], "gauge");
  EXPECT_EQ(before.types["ckptd_auth_failures_total"], "counter");
  // A series of ckptd_rpcs_total appears with the first call of its kind.
  EXPECT_FALSE(before.types.contains("ckptd_rpcs_total"));

  // Three versions: v2 repeats v1's tensor (deduplicated), v3 is new.
  const OneTensorState a{RandomBytes(2 * kMiB, 1)};
  const OneTensorState b{RandomBytes(3 * kMiB, 2)};
  std::vector<VersionInfo> pushed;
  for (const auto& [state, step] :
       std::vector<std::pair<const OneTensorState*, int64_t>>{
           {&a, 10}, {&a, 20}, {&b, 30}}) {
    auto info = server.client().Push(state->Request("metrics-run", step), {});
    ASSERT_TRUE(info.ok()) << info.status();
    ASSERT_EQ(info->state(), v1::COMMITTED);
    pushed.push_back(*info);
  }
  uint64_t offered = 0, uploaded = 0;
  for (const VersionInfo& v : pushed) {
    offered += v.total_bytes();
    uploaded += v.uploaded_bytes();
  }
  ASSERT_EQ(offered, (2 + 2 + 3) * kMiB);
  ASSERT_LT(uploaded, offered);  // v2 travelled as digests only

  // A pull of v3, and a call that fails.
  auto version = server.client().GetVersion("metrics-run", "last", {});
  ASSERT_TRUE(version.ok()) << version.status();
  auto tensors = server.client().ReadAllTensors(*version, nullptr, {});
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  ASSERT_EQ(tensors->size(), 1u);
  EXPECT_EQ((*tensors)[0].bytes, b.bytes);
  auto missing = server.client().GetVersion("no-such-run", "last", {});
  ASSERT_EQ(missing.status().code(), absl::StatusCode::kNotFound);

  // A version begun and never committed is pending.
  {
    auto stub = server.Stub();
    v1::BeginVersionRequest begin;
    begin.set_run("metrics-run");
    begin.set_step(40);
    begin.set_world_size(1);
    v1::BeginVersionResponse out;
    auto ctx = Ctx();
    ASSERT_TRUE(stub->BeginVersion(ctx.get(), begin, &out).ok());
  }

  Scrape after = server.ScrapeMetrics();
  EXPECT_EQ(after.types["ckptd_rpcs_total"], "counter");
  EXPECT_EQ(after.Get("ckptd_versions_committed_total"), 3) << after.text;
  EXPECT_EQ(after.Get(Key("ckptd_rpcs_total",
                          {{"method", "CommitShard"}, {"code", "OK"}})),
            3);
  EXPECT_EQ(after.Get(Key("ckptd_rpcs_total",
                          {{"method", "GetVersion"}, {"code", "NOT_FOUND"}})),
            1);
  EXPECT_EQ(after.Get(Key("ckptd_rpcs_total",
                          {{"method", "GetVersion"}, {"code", "OK"}})),
            1);
  EXPECT_EQ(after.Get(Key("ckptd_rpcs_total",
                          {{"method", "BeginVersion"}, {"code", "OK"}})),
            4);
  EXPECT_EQ(after.Get(Key("ckptd_rpc_duration_seconds_count",
                          {{"method", "CommitShard"}})),
            3);
  // The tensor bytes of v1 and v3 came in; v3's went out.
  EXPECT_GE(after.Get("ckptd_received_bytes_total"), (2 + 3) * kMiB);
  EXPECT_GE(after.Get("ckptd_sent_bytes_total"), 3 * kMiB);
  EXPECT_EQ(after.Get("ckptd_dedup_offered_bytes_total"),
            static_cast<double>(offered));
  EXPECT_EQ(after.Get("ckptd_dedup_uploaded_bytes_total"),
            static_cast<double>(uploaded));
  EXPECT_NEAR(after.Get("ckptd_dedup_ratio"),
              1 - static_cast<double>(uploaded) / offered, 1e-9);
  EXPECT_EQ(after.Get("ckptd_push_duration_seconds_count"), 3);
  EXPECT_GE(after.Get("ckptd_pull_duration_seconds_count"), 1);
  EXPECT_EQ(after.Get("ckptd_pending_versions"), 1);
  EXPECT_EQ(after.Get("ckptd_active_uploads"), 0);
  EXPECT_GE(after.Get("ckptd_stored_bytes"), (2 + 3) * kMiB);
  EXPECT_GE(after.Get("ckptd_stored_blobs"), 2);
  EXPECT_GT(after.Get("ckptd_disk_free_bytes"), 0);
  EXPECT_GE(after.Get("ckptd_disk_total_bytes"),
            after.Get("ckptd_disk_free_bytes"));
  for (const char* reason : {"bad_token", "unknown_certificate",
                             "no_credential", "permission_denied"}) {
    EXPECT_EQ(after.Get(Key("ckptd_auth_failures_total", {{"reason", reason}})),
              0)
        << reason;
  }
  // No per-run labels anywhere. The scrub is on (24h by default) and has
  // not run yet.
  EXPECT_THAT(after.text, ::testing::Not(HasSubstr("metrics-run")));
  EXPECT_EQ(after.Get("ckptd_scrub_passes_total"), 0);
  EXPECT_EQ(after.Get("ckptd_scrub_last_pass_timestamp_seconds"), 0);
  EXPECT_EQ(after.Get("ckptd_quarantined_blobs"), 0);

  // Text logs (the default): one "rpc" line per call with its fields.
  const std::string log = server.process().LogTail(1 << 20);
  EXPECT_THAT(log, HasSubstr("method=GetVersion identity=local"));
  EXPECT_THAT(log, HasSubstr("run=no-such-run ref=last"));
  EXPECT_THAT(log, HasSubstr("status=NOT_FOUND error="));
  EXPECT_THAT(log, HasSubstr("metrics on http://127.0.0.1:"));
}

// A byte flipped in the stored blob: the scrub (every 200 ms here) finds it,
// and its counters and the quarantine gauge say so; a re-push of the same
// state heals it. With --scrub_interval=0 no scrub metric is exported.
TEST(MetricsTest, ScrubResultsAndQuarantinedBlobs) {
  MetricsServer server({"--scrub_interval=200ms"});
  ASSERT_OK(server.Start());
  const OneTensorState a{RandomBytes(1 * kMiB, 7)};
  auto info = server.client().Push(a.Request("scrub-run", 1), {});
  ASSERT_TRUE(info.ok()) << info.status();
  const std::string blobs = server.process().data_dir() + "/blobs";
  int flipped = 0;
  for (const auto& entry :
       std::filesystem::recursive_directory_iterator(blobs)) {
    if (!entry.is_regular_file() || entry.file_size() < kMiB) continue;
    std::string bytes = ReadFile(entry.path().string());
    bytes[100] = static_cast<char>(~bytes[100]);
    WriteFile(entry.path().string(), bytes);
    ++flipped;
  }
  ASSERT_EQ(flipped, 1);

  // Polled: the scrub runs on its own schedule. The bound only ends a hang.
  Scrape s;
  const auto give_up =
      std::chrono::steady_clock::now() + std::chrono::seconds(60);
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    s = server.ScrapeMetrics();
  } while (s.Get(Key("ckptd_scrub_failures_total", {{"kind", "corrupt"}})) <
               1 &&
           std::chrono::steady_clock::now() < give_up);
  EXPECT_EQ(s.Get(Key("ckptd_scrub_failures_total", {{"kind", "corrupt"}})), 1)
      << s.text;
  EXPECT_EQ(s.Get(Key("ckptd_scrub_failures_total", {{"kind", "missing"}})), 0);
  EXPECT_EQ(s.Get("ckptd_quarantined_blobs"), 1);
  EXPECT_GE(s.Get("ckptd_scrub_blobs_checked_total"), 1);
  EXPECT_EQ(s.types["ckptd_scrub_failures_total"], "counter");

  // The same state again uploads the bytes and lifts the quarantine.
  info = server.client().Push(a.Request("scrub-run", 2), {});
  ASSERT_TRUE(info.ok()) << info.status();
  s = server.ScrapeMetrics();
  EXPECT_EQ(s.Get("ckptd_quarantined_blobs"), 0) << s.text;
  EXPECT_EQ(s.Get(Key("ckptd_scrub_failures_total", {{"kind", "corrupt"}})), 1);
  // A read that fails its first chunk's checksum counts no bytes; a pass
  // that starts after the heal reads the whole blob.
  const double passes_at_heal = s.Get("ckptd_scrub_passes_total");
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    s = server.ScrapeMetrics();
  } while (s.Get("ckptd_scrub_passes_total") < passes_at_heal + 2 &&
           std::chrono::steady_clock::now() < give_up);
  EXPECT_GE(s.Get("ckptd_scrub_passes_total"), passes_at_heal + 2);
  EXPECT_GE(s.Get("ckptd_scrub_bytes_checked_total"), kMiB) << s.text;
  EXPECT_EQ(s.Get(Key("ckptd_scrub_failures_total", {{"kind", "corrupt"}})), 1);
  EXPECT_GT(s.Get("ckptd_scrub_last_pass_timestamp_seconds"), 1.7e9);

  MetricsServer off({"--scrub_interval=0"});
  ASSERT_OK(off.Start());
  const Scrape o = off.ScrapeMetrics();
  EXPECT_THAT(o.text, ::testing::Not(HasSubstr("ckptd_scrub_")));
  EXPECT_EQ(o.Get("ckptd_quarantined_blobs"), 0) << o.text;
}

TEST(MetricsTest, UnknownPathIsNotFoundAndMetricsStopWithTheServer) {
  MetricsServer server;
  ASSERT_OK(server.Start());
  EXPECT_THAT(HttpGet(server.metrics_port(), "/other"), HasSubstr("404"));
  EXPECT_EQ(server.process().Stop(), 0) << server.process().LogTail();
  EXPECT_EQ(HttpGet(server.metrics_port(), "/metrics"), "");
}

TEST(MetricsTest, EveryCallReturnsARequestIdAndAdoptsASaneOne) {
  MetricsServer server;
  ASSERT_OK(server.Start());
  auto stub = server.Stub();
  struct Case {
    std::string name;
    std::string sent;
    bool adopted;
  };
  const std::vector<Case> cases = {
      {"none", "", false},
      {"sane", "trace-42:span/7_a.b", true},
      {"space", "has space", false},
      {"quote", "a\"b", false},
      {"too long", std::string(65, 'x'), false},
      {"longest", std::string(64, 'y'), true},
  };
  for (const Case& c : cases) {
    for (const bool fails : {false, true}) {
      v1::GetVersionRequest req;
      req.set_run("no-such-run");
      req.set_ref("last");
      v1::ListRunsResponse runs;
      v1::GetVersionResponse out;
      auto ctx = Ctx("", c.sent);
      const grpc::Status st =
          fails ? stub->GetVersion(ctx.get(), req, &out)
                : stub->ListRuns(ctx.get(), v1::ListRunsRequest(), &runs);
      ASSERT_EQ(st.ok(), !fails) << c.name << ": " << st.error_message();
      const std::string id = RequestIdOf(*ctx);
      if (c.adopted) {
        EXPECT_EQ(id, c.sent) << c.name;
      } else {
        EXPECT_EQ(id.size(), 16u) << c.name << ": '" << id << "'";
        EXPECT_EQ(id.find_first_not_of("0123456789abcdef"), std::string::npos)
            << c.name << ": '" << id << "'";
      }
      // The same id is in the call's log line.
      EXPECT_THAT(server.process().LogTail(1 << 20),
                  HasSubstr(absl::StrCat("request_id=", id, " ")))
          << c.name;
    }
  }
}

TEST(MetricsTest, StreamsReturnARequestIdToo) {
  MetricsServer server;
  ASSERT_OK(server.Start());
  auto stub = server.Stub();
  auto ctx = Ctx("", "read-stream-1");
  v1::ReadBlobsRequest req;
  req.set_run("no-such-run");
  req.set_version(1);
  auto reader = stub->ReadBlobs(ctx.get(), req);
  v1::ReadChunk chunk;
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(RequestIdOf(*ctx), "read-stream-1");
  const Scrape s = server.ScrapeMetrics();
  EXPECT_EQ(s.Get(Key("ckptd_rpcs_total",
                      {{"method", "ReadBlobs"}, {"code", "NOT_FOUND"}})),
            1)
      << s.text;
  // Only streams that sent everything count as pulls.
  EXPECT_EQ(s.Get("ckptd_pull_duration_seconds_count"), 0);
}

TEST(MetricsTest, AuthFailuresAreCountedByReason) {
  auto writer = NewBearerToken();
  auto admin = NewBearerToken();
  ASSERT_TRUE(writer.ok() && admin.ok());
  const std::string dir = ServerProcess::MakeTempDir("ckptd-metrics-auth");
  const std::string auth_file = dir + "/auth";
  WriteFile(auth_file,
            absl::StrCat("w writer team-a sha256:", Sha256Hex(*writer),
                         "\nroot admin * sha256:", Sha256Hex(*admin), "\n"));
  MetricsServer server({"--auth_file=" + auth_file});
  ASSERT_OK(server.Start(*writer));
  auto stub = server.Stub();
  v1::ListRunsResponse runs;
  {  // a token the file does not know: refused before any handler
    auto ctx = Ctx("not-a-known-token");
    EXPECT_EQ(
        stub->ListRuns(ctx.get(), v1::ListRunsRequest(), &runs).error_code(),
        grpc::StatusCode::UNAUTHENTICATED);
  }
  for (int i = 0; i < 2; ++i) {  // no credential at all
    auto ctx = Ctx();
    EXPECT_EQ(
        stub->ListRuns(ctx.get(), v1::ListRunsRequest(), &runs).error_code(),
        grpc::StatusCode::UNAUTHENTICATED);
  }
  {  // a writer deleting a version (admin only), then on another team's run
    v1::DeleteVersionRequest del;
    del.set_run("team-a");
    del.set_ref("1");
    v1::DeleteVersionResponse out;
    auto ctx = Ctx(*writer);
    EXPECT_EQ(stub->DeleteVersion(ctx.get(), del, &out).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
    v1::ListVersionsRequest list;
    list.set_run("team-b");
    v1::ListVersionsResponse versions;
    auto ctx2 = Ctx(*writer);
    EXPECT_EQ(stub->ListVersions(ctx2.get(), list, &versions).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  {  // and one that works
    auto ctx = Ctx(*admin);
    EXPECT_TRUE(stub->ListRuns(ctx.get(), v1::ListRunsRequest(), &runs).ok());
  }
  const Scrape s = server.ScrapeMetrics();
  EXPECT_EQ(s.Get(Key("ckptd_auth_failures_total", {{"reason", "bad_token"}})),
            1)
      << s.text;
  EXPECT_EQ(
      s.Get(Key("ckptd_auth_failures_total", {{"reason", "no_credential"}})),
      2);
  EXPECT_EQ(s.Get(Key("ckptd_auth_failures_total",
                      {{"reason", "permission_denied"}})),
            2);
  EXPECT_EQ(s.Get(Key("ckptd_auth_failures_total",
                      {{"reason", "unknown_certificate"}})),
            0);
  // The refusals that reached the service are RPCs by code too (the unknown
  // token was refused by the transport's auth step, before the service).
  EXPECT_EQ(s.Get(Key("ckptd_rpcs_total",
                      {{"method", "ListRuns"}, {"code", "UNAUTHENTICATED"}})),
            2);
  EXPECT_EQ(s.Get(Key("ckptd_rpcs_total", {{"method", "DeleteVersion"},
                                           {"code", "PERMISSION_DENIED"}})),
            1);
  EXPECT_EQ(
      s.Get(Key("ckptd_rpcs_total", {{"method", "ListRuns"}, {"code", "OK"}})),
      1);
  // The log names the identity of the authorized call.
  EXPECT_THAT(server.process().LogTail(1 << 20),
              HasSubstr("method=ListRuns identity=root"));
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

// Every line of `log` parsed as JSON; a line that is not JSON fails.
std::vector<nlohmann::json> ParseJsonLines(const std::string& log) {
  std::vector<nlohmann::json> lines;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr,
                                             /*allow_exceptions=*/false);
    EXPECT_FALSE(j.is_discarded()) << "not JSON: " << line;
    if (j.is_discarded()) continue;
    EXPECT_TRUE(j.is_object()) << line;
    EXPECT_TRUE(j.contains("time") && j.contains("level") && j.contains("msg"))
        << line;
    lines.push_back(std::move(j));
  }
  return lines;
}

TEST(MetricsTest, JsonLogsAreOneObjectPerLineWithTheRpcFields) {
  MetricsServer server({"--log_format=json"});
  ASSERT_OK(server.Start());
  // A push and a pull, then calls whose run, ref and error carry quotes,
  // backslashes and a newline.
  const OneTensorState a{RandomBytes(kMiB, 3)};
  auto info = server.client().Push(a.Request("json-run", 1), {});
  ASSERT_TRUE(info.ok()) << info.status();
  auto version = server.client().GetVersion("json-run", "1", {});
  ASSERT_TRUE(version.ok()) << version.status();
  ASSERT_TRUE(server.client().ReadAllTensors(*version, nullptr, {}).ok());
  const std::string weird_run = "run \"quoted\" \\ back\nslash";
  const std::string weird_ref = "ref\"\t{}";
  auto stub = server.Stub();
  {
    v1::GetVersionRequest req;
    req.set_run(weird_run);
    req.set_ref(weird_ref);
    v1::GetVersionResponse out;
    auto ctx = Ctx("", "json-weird-1");
    EXPECT_EQ(stub->GetVersion(ctx.get(), req, &out).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    v1::SetAliasRequest req;
    req.set_run("json-run");
    req.set_name("bad \"alias\"");
    req.set_ref("1");
    v1::AliasInfo out;
    auto ctx = Ctx("", "json-weird-2");
    EXPECT_EQ(stub->SetAlias(ctx.get(), req, &out).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  ASSERT_EQ(server.process().Stop(), 0);

  const std::vector<nlohmann::json> lines =
      ParseJsonLines(server.process().LogTail(1 << 22));
  ASSERT_FALSE(lines.empty());
  std::map<std::string, nlohmann::json> by_id;
  std::vector<nlohmann::json> rpcs;
  bool saw_listening = false, saw_shutdown = false;
  for (const nlohmann::json& j : lines) {
    const std::string msg = j["msg"];
    if (absl::StartsWith(msg, "ckptd listening on")) saw_listening = true;
    if (msg == "shutdown complete") saw_shutdown = true;
    if (msg != "rpc") continue;
    for (const char* field :
         {"request_id", "method", "identity", "peer", "run", "ref", "bytes_in",
          "bytes_out", "duration_ms", "status"}) {
      EXPECT_TRUE(j.contains(field)) << field << " missing in " << j.dump();
    }
    EXPECT_TRUE(j["bytes_in"].is_number_unsigned()) << j.dump();
    EXPECT_TRUE(j["duration_ms"].is_number()) << j.dump();
    rpcs.push_back(j);
    by_id[j["request_id"]] = j;
  }
  EXPECT_TRUE(saw_listening);
  EXPECT_TRUE(saw_shutdown);

  ASSERT_TRUE(by_id.contains("json-weird-1"));
  const nlohmann::json& weird = by_id["json-weird-1"];
  EXPECT_EQ(weird["method"], "GetVersion");
  EXPECT_EQ(weird["identity"], "local");
  EXPECT_EQ(weird["run"], weird_run);
  EXPECT_EQ(weird["ref"], weird_ref);
  EXPECT_EQ(weird["status"], "INVALID_ARGUMENT");
  EXPECT_EQ(weird["level"], "warning");
  EXPECT_TRUE(weird.contains("error")) << weird.dump();
  ASSERT_TRUE(by_id.contains("json-weird-2"));
  EXPECT_THAT(std::string(by_id["json-weird-2"]["error"]),
              HasSubstr(R"('bad \"alias\"')"));

  // The push and the pull: upload bytes in, tensor bytes out.
  uint64_t uploaded = 0, read = 0;
  int commits = 0;
  for (const nlohmann::json& j : rpcs) {
    if (j["method"] == "UploadBlobs" && j["status"] == "OK") {
      EXPECT_EQ(j["run"], "json-run");
      EXPECT_EQ(j["ref"], "1");
      uploaded += j["bytes_in"].get<uint64_t>();
    }
    if (j["method"] == "ReadBlobs" && j["status"] == "OK") {
      read += j["bytes_out"].get<uint64_t>();
    }
    if (j["method"] == "CommitShard" && j["status"] == "OK") {
      ++commits;
      EXPECT_EQ(j["level"], "info");
    }
  }
  EXPECT_GE(uploaded, kMiB);
  EXPECT_GE(read, kMiB);
  EXPECT_EQ(commits, 1);
}

// ---------------------------------------------------------------------------
// Flags ckptd must refuse.

// Runs ckptd with `args` over a fresh data dir; every caller expects it to
// refuse to start.
CkptdRun RunCkptd(std::vector<std::string> args) {
  const std::string dir = ServerProcess::MakeTempDir("ckptd-metrics-flags");
  args.insert(args.begin(), "--data_dir=" + dir + "/data");
  CkptdRun result = RunCkptdToExit(args);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return result;
}

TEST(MetricsFlagsTest, BadValuesAreRefusedNamingTheValueAndTheFix) {
  struct Case {
    std::vector<std::string> flags;
    int exit_code;
    std::vector<std::string> says;
  };
  const std::vector<Case> cases = {
      {{"--log_format=xml"}, 2, {"--log_format=xml", "text", "json"}},
      {{"--log_format=JSON"}, 2, {"--log_format=JSON"}},
      {{"--metrics_listen=9464"}, 1, {"'9464'", "IPV4:PORT"}},
      {{"--metrics_listen=127.0.0.1"}, 1, {"'127.0.0.1'", "IPV4:PORT"}},
      {{"--metrics_listen=127.0.0.1:"},
       1,
       {"does not end in a port in 0-65535"}},
      {{"--metrics_listen=127.0.0.1:70000"}, 1, {"'127.0.0.1:70000'"}},
      {{"--metrics_listen=127.0.0.1:0s"}, 1, {"'127.0.0.1:0s'"}},
      {{"--metrics_listen=127.0.0.1:1,127.0.0.1:2"}, 1, {"IPv4 address"}},
      {{"--metrics_listen=[::1]:9464"}, 1, {"'[::1]:9464'", "IPv6"}},
      {{"--metrics_listen=metrics.example.com:9464"},
       1,
       {"'metrics.example.com:9464'", "IPv4 address"}},
      {{"--metrics_listen=0.0.0.0:0"},
       1,
       {"'0.0.0.0:0' is not a loopback address", "--auth_file"}},
      {{"--metrics_port_file=/tmp/x"}, 2, {"needs --metrics_listen"}},
  };
  for (const Case& c : cases) {
    std::vector<std::string> flags = c.flags;
    flags.push_back("--listen=127.0.0.1:0");
    const CkptdRun r = RunCkptd(flags);
    const std::string name = c.flags[0];
    EXPECT_FALSE(r.served) << name;
    EXPECT_EQ(r.exit_code, c.exit_code) << name << "\n" << r.output;
    for (const std::string& s : c.says) {
      EXPECT_THAT(r.output, HasSubstr(s)) << name;
    }
  }
}

TEST(MetricsFlagsTest, AMetricsPortInUseStopsTheStart) {
  // A port something listens on: a running ckptd's metrics endpoint.
  MetricsServer server;
  ASSERT_OK(server.Start());
  const CkptdRun r = RunCkptd(
      {"--listen=127.0.0.1:0",
       absl::StrCat("--metrics_listen=127.0.0.1:", server.metrics_port())});
  EXPECT_FALSE(r.served);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr(absl::StrCat("cannot serve metrics on --metrics_listen "
                                     "'127.0.0.1:",
                                     server.metrics_port(), "'")));
}

}  // namespace
}  // namespace ckptd
