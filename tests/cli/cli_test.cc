// End-to-end tests of the `ckpt` binary (CKPT_BINARY) against a real ckptd
// (ServerProcess). Every test uses its own run name over one shared server.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "ckptd/client.h"
#include "client/cli/commands.h"
#include "client/cli/format.h"
#include "client/cli/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/base/digest.h"
#include "proto/base/secret.h"
#include "tests/cli/cli_test_util.h"
#include "tests/integration/support/server_process.h"

namespace ckptd::cli {
namespace {

using ::ckptd::cli::test_util::CkptResult;
using ::ckptd::cli::test_util::EncodeRaw;
using ::ckptd::cli::test_util::EncodeSafetensors;
using ::ckptd::cli::test_util::EnvOverrides;
using ::ckptd::cli::test_util::ExitCode;
using ::ckptd::cli::test_util::FileExists;
using ::ckptd::cli::test_util::PatternBytes;
using ::ckptd::cli::test_util::ReadFile;
using ::ckptd::cli::test_util::RunProcess;
using ::ckptd::cli::test_util::SpawnProcess;
using ::ckptd::cli::test_util::TestTensor;
using ::ckptd::cli::test_util::WriteFile;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;
using Json = nlohmann::json;

const char* const kCommands[] = {
    "runs",    "ls",     "show",  "metrics", "pull",   "push",  "alias",
    "unalias", "pin",    "unpin", "rm",      "policy", "gc",    "watch",
    "history", "verify", "token", "audit",   "admin",  "health"};

std::vector<TestTensor> SampleTensors(uint32_t seed) {
  return {
      {"model.layers.0.weight", "F32", {4, 3}, PatternBytes(48, seed + 1)},
      {"model.layers.0.bias", "F32", {3}, PatternBytes(12, seed + 2)},
      {"model.embed", "BF16", {8, 2}, PatternBytes(32, seed + 3)},
      {"model.big", "F16", {300, 1024}, PatternBytes(614400, seed + 4)},
      {"optimizer.step", "I64", {}, PatternBytes(8, seed + 5)},
      {"mask", "BOOL", {5}, std::string("\x01\x00\x01\x01\x00", 5)},
  };
}

// ---------------------------------------------------------------------------
// A .safetensors reader written from the format description alone (not the
// CLI's parser, not the server's writer), for checking what `ckpt pull`
// writes:
//   bytes [0, 8)      N, the header length, unsigned 64-bit little-endian
//   bytes [8, 8 + N)  a UTF-8 JSON object: each tensor name maps to
//                     {"dtype": str, "shape": [int...], "data_offsets":
//                     [begin, end]}; the optional "__metadata__" maps str
//                     to str
//   bytes [8 + N, ..) the data buffer; offsets are relative to its start,
//                     the tensors cover it exactly, back to back, without
//                     overlap, and each range is product(shape) x dtype size
// Every violation is a test failure naming the rule.

struct SpecTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
  uint64_t file_offset = 0;  // where its bytes start in the whole file
};

struct SpecFile {
  std::map<std::string, SpecTensor> tensors;
  std::vector<std::string> order;  // tensor names by data offset
  std::map<std::string, std::string> metadata;
  bool has_metadata = false;
};

// Bytes per element of the dtypes the format defines.
std::optional<uint64_t> SpecDTypeSize(const std::string& dtype) {
  static const std::map<std::string, uint64_t> kSizes = {
      {"BOOL", 1},    {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1},
      {"F8_E4M3", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
      {"BF16", 2},    {"I32", 4}, {"U32", 4}, {"F32", 4},
      {"F64", 8},     {"I64", 8}, {"U64", 8}, {"C64", 8}};
  auto it = kSizes.find(dtype);
  if (it == kSizes.end()) return std::nullopt;
  return it->second;
}

// Reads `bytes` as a .safetensors file; ADD_FAILURE()s on any violation.
SpecFile ReadSpecSafetensors(const std::string& bytes) {
  SpecFile out;
  if (bytes.size() < 8) {
    ADD_FAILURE() << "file of " << bytes.size() << " bytes has no length";
    return out;
  }
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) {
    n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  }
  if (n > bytes.size() - 8) {
    ADD_FAILURE() << "header length " << n << " runs past the end ("
                  << bytes.size() << " bytes)";
    return out;
  }
  const std::string header_text = bytes.substr(8, n);
  if (header_text.empty() || header_text[0] != '{') {
    ADD_FAILURE() << "header does not start with '{'";
  }
  // Only trailing spaces may pad the JSON.
  const size_t json_end = header_text.find_last_not_of(' ');
  if (json_end == std::string::npos || header_text[json_end] != '}') {
    ADD_FAILURE() << "header is not a JSON object padded with spaces";
  }
  const Json header =
      Json::parse(header_text, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    ADD_FAILURE() << "header is not a JSON object: " << header_text;
    return out;
  }
  const std::string buffer = bytes.substr(8 + n);

  struct Range {
    uint64_t begin;
    uint64_t end;
    std::string name;
  };
  std::vector<Range> ranges;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      out.has_metadata = true;
      if (!value.is_object()) {
        ADD_FAILURE() << "__metadata__ is not an object";
        continue;
      }
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) {
          ADD_FAILURE() << "__metadata__['" << k
                        << "'] is not a string: " << v.dump();
          continue;
        }
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    if (!value.is_object() || !value.contains("dtype") ||
        !value["dtype"].is_string() || !value.contains("shape") ||
        !value["shape"].is_array() || !value.contains("data_offsets") ||
        !value["data_offsets"].is_array() ||
        value["data_offsets"].size() != 2) {
      ADD_FAILURE() << "tensor '" << name
                    << "' entry is malformed: " << value.dump();
      continue;
    }
    SpecTensor t;
    t.dtype = value["dtype"].get<std::string>();
    const std::optional<uint64_t> size = SpecDTypeSize(t.dtype);
    if (!size) ADD_FAILURE() << "tensor '" << name << "' dtype " << t.dtype;
    uint64_t elements = 1;
    for (const Json& d : value["shape"]) {
      if (!d.is_number_unsigned()) {
        ADD_FAILURE() << "tensor '" << name << "' shape " << value["shape"];
        continue;
      }
      t.shape.push_back(d.get<int64_t>());
      elements *= d.get<uint64_t>();
    }
    const Json& offsets = value["data_offsets"];
    if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) {
      ADD_FAILURE() << "tensor '" << name << "' data_offsets " << offsets;
      continue;
    }
    const uint64_t begin = offsets[0].get<uint64_t>();
    const uint64_t end = offsets[1].get<uint64_t>();
    if (begin > end || end > buffer.size()) {
      ADD_FAILURE() << "tensor '" << name << "' data_offsets [" << begin << ", "
                    << end << "] outside the buffer of " << buffer.size();
      continue;
    }
    if (size) {
      EXPECT_EQ(end - begin, elements * *size)
          << "tensor '" << name << "': bytes != product(shape) x dtype size";
    }
    t.bytes = buffer.substr(begin, end - begin);
    t.file_offset = 8 + n + begin;
    ranges.push_back({begin, end, name});
    out.tensors[name] = std::move(t);
  }
  // Contiguous and non-overlapping: sorted by (begin, end), each range starts
  // where the previous one ended, from 0 to the end of the buffer.
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  uint64_t at = 0;
  for (const Range& r : ranges) {
    EXPECT_EQ(r.begin, at) << "tensor '" << r.name
                           << "' leaves a gap or overlaps the one before";
    at = r.end;
    out.order.push_back(r.name);
  }
  EXPECT_EQ(at, buffer.size()) << "the data buffer has bytes no tensor covers";
  return out;
}

// ---------------------------------------------------------------------------
// A state pushed through the C++ client: several dtypes and shapes,
// including a 0-d tensor, a zero-size one and one above the client's
// pack threshold, nested containers and value leaves.

struct ClientTensor {
  std::string name;  // dotted path
  DType dtype;
  std::string st_dtype;  // the safetensors spelling
  std::vector<int64_t> shape;
  std::string bytes;
};

std::vector<ClientTensor> ClientTensors() {
  std::string mask = {1, 0, 0, 1, 1, 0};
  return {
      {"model.encoder.weight",
       v1::FLOAT32,
       "F32",
       {4, 3},
       PatternBytes(48, 11)},
      {"model.encoder.bias", v1::FLOAT16, "F16", {3}, PatternBytes(6, 12)},
      {"model.embed", v1::BFLOAT16, "BF16", {5, 2}, PatternBytes(20, 13)},
      {"model.empty", v1::FLOAT32, "F32", {0, 3}, ""},
      {"model.big",
       v1::FLOAT16,
       "F16",
       {1024, 600},
       PatternBytes(1024 * 600 * 2, 14)},
      {"optimizer.step", v1::INT64, "I64", {}, PatternBytes(8, 15)},
      {"mask", v1::BOOL, "BOOL", {2, 3}, mask},
      {"pixels", v1::UINT8, "U8", {7}, PatternBytes(7, 16)},
  };
}

ManifestEntry EntryAt(const std::string& dotted) {
  ManifestEntry e;
  if (dotted.empty()) return e;
  for (absl::string_view seg : absl::StrSplit(dotted, '.')) {
    e.add_path()->set_key(std::string(seg));
  }
  return e;
}

// Pre-order entries for ClientTensors(), pointing into `tensors`.
std::vector<PushEntry> ClientEntries(const std::vector<ClientTensor>& tensors) {
  std::vector<PushEntry> out;
  auto container = [&](const std::string& path) {
    PushEntry e{EntryAt(path), {}};
    e.entry.mutable_container()->set_kind(v1::ContainerInfo::DICT);
    out.push_back(std::move(e));
  };
  auto tensor = [&](const ClientTensor& t) {
    PushEntry e{EntryAt(t.name), {}};
    e.entry.mutable_tensor()->set_dtype(t.dtype);
    for (int64_t d : t.shape) e.entry.mutable_tensor()->add_shape(d);
    e.tensor.data = t.bytes.data();
    e.tensor.byte_length = t.bytes.size();
    out.push_back(std::move(e));
  };
  auto value = [&](const std::string& path, double v) {
    PushEntry e{EntryAt(path), {}};
    e.entry.mutable_value()->set_float_value(v);
    out.push_back(std::move(e));
  };
  container("");
  container("model");
  container("model.encoder");
  for (size_t i = 0; i < 5; ++i) tensor(tensors[i]);  // model.*
  container("optimizer");
  tensor(tensors[5]);
  value("optimizer.lr", 0.001);  // a value leaf: never exported
  tensor(tensors[6]);
  tensor(tensors[7]);
  return out;
}

// Expects `file` to hold exactly `want` (names, dtypes, shapes, bytes).
void ExpectTensors(const SpecFile& file, const std::vector<ClientTensor>& want,
                   const std::string& what) {
  std::set<std::string> want_names;
  for (const ClientTensor& t : want) want_names.insert(t.name);
  std::set<std::string> got_names;
  for (const auto& [name, t] : file.tensors) got_names.insert(name);
  EXPECT_EQ(got_names, want_names) << what;
  for (const ClientTensor& t : want) {
    auto it = file.tensors.find(t.name);
    if (it == file.tensors.end()) continue;
    EXPECT_EQ(it->second.dtype, t.st_dtype) << what << ": " << t.name;
    EXPECT_EQ(it->second.shape, t.shape) << what << ": " << t.name;
    EXPECT_EQ(it->second.bytes.size(), t.bytes.size())
        << what << ": " << t.name;
    EXPECT_TRUE(it->second.bytes == t.bytes)
        << what << ": " << t.name << " bytes differ";
  }
}

// A `ckpt` child whose stdout is read line by line (for `watch`).
class CkptChild {
 public:
  CkptChild(const std::vector<std::string>& args,
            const EnvOverrides& env = {}) {
    int fds[2];
    EXPECT_EQ(::pipe(fds), 0);
    const int devnull = ::open("/dev/null", O_WRONLY);
    pid_ = SpawnProcess(CKPT_BINARY, args, fds[1], devnull, env);
    ::close(fds[1]);
    ::close(devnull);
    fd_ = fds[0];
  }
  ~CkptChild() { Stop(); }

  // Reads until `count` complete lines have arrived in total; false if the
  // process closed stdout first or `timeout_ms` passed (a hang guard, not a
  // timing assertion).
  bool WaitForLines(size_t count, int timeout_ms = 30'000) {
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::milliseconds(timeout_ms);
    while (lines_.size() < count) {
      const int left = static_cast<int>(
          std::chrono::duration_cast<std::chrono::milliseconds>(
              deadline - std::chrono::steady_clock::now())
              .count());
      if (left <= 0 || fd_ < 0) return false;
      pollfd p = {fd_, POLLIN, 0};
      if (::poll(&p, 1, left) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::read(fd_, buf, sizeof(buf));
      if (n <= 0) return false;
      partial_.append(buf, static_cast<size_t>(n));
      for (size_t nl; (nl = partial_.find('\n')) != std::string::npos;) {
        lines_.push_back(partial_.substr(0, nl));
        partial_.erase(0, nl + 1);
      }
    }
    return true;
  }

  // SIGINT (Ctrl-C), then waits; returns the exit code.
  int Stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGINT);
      int status = 0;
      ::waitpid(pid_, &status, 0);
      exit_code_ = ExitCode(status);
      pid_ = -1;
    }
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
    return exit_code_;
  }

  const std::vector<std::string>& lines() const { return lines_; }
  std::string Output() const {
    return absl::StrCat(absl::StrJoin(lines_, "\n"), "\n", partial_);
  }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  int exit_code_ = -1;
  std::vector<std::string> lines_;
  std::string partial_;
};

class CkptCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ::ckptd::testing::ServerProcess();
    const absl::Status st = server_->Start();
    ASSERT_TRUE(st.ok()) << st;
    scratch_ = new std::string(
        ::ckptd::testing::ServerProcess::MakeTempDir("ckpt-cli-test"));
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    if (scratch_ != nullptr) {
      std::error_code ignored;
      std::filesystem::remove_all(*scratch_, ignored);
      delete scratch_;
      scratch_ = nullptr;
    }
  }

  // `ckpt --server ADDR args...`
  CkptResult Ckpt(std::vector<std::string> args) {
    args.insert(args.begin(), {"--server", server_->address()});
    return RunProcess(CKPT_BINARY, args, *scratch_);
  }

  // A unique run name for this test.
  std::string Run() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = absl::StrCat("t-", info->name());
    for (char& c : name) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') c = '-';
    }
    return name;
  }

  std::string Path(const std::string& name) {
    return absl::StrCat(*scratch_, "/", name);
  }

  // Writes a sample file and pushes it as step `step`; returns the file path.
  std::string PushSample(const std::string& run, int step, uint32_t seed,
                         std::vector<std::string> extra = {}) {
    const std::string file = Path(absl::StrCat(run, "-", step, ".safetensors"));
    WriteFile(file, EncodeSafetensors(SampleTensors(seed), {{"format", "pt"}}));
    std::vector<std::string> args = {"push", run, file, "--step",
                                     absl::StrCat(step)};
    args.insert(args.end(), extra.begin(), extra.end());
    const CkptResult r = Ckpt(args);
    EXPECT_EQ(r.exit_code, 0) << r;
    return file;
  }

  Json ParseJson(const CkptResult& r) {
    Json j = Json::parse(r.out, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(j.is_discarded()) << r;
    return j;
  }

  static ::ckptd::testing::ServerProcess* server_;
  static std::string* scratch_;
};

::ckptd::testing::ServerProcess* CkptCliTest::server_ = nullptr;
std::string* CkptCliTest::scratch_ = nullptr;

TEST_F(CkptCliTest, HelpWorksForEveryCommand) {
  CkptResult r = RunProcess(CKPT_BINARY, {"--help"}, *scratch_);
  EXPECT_EQ(r.exit_code, 0) << r;
  for (const char* cmd : kCommands) {
    EXPECT_THAT(r.out, HasSubstr(cmd)) << "top-level help lists " << cmd;
  }
  for (const char* cmd : kCommands) {
    r = RunProcess(CKPT_BINARY, {cmd, "--help"}, *scratch_);
    EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r;
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat("Usage: ckpt ", cmd))) << cmd;
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat("Example:\n  ckpt ", cmd)))
        << cmd;
    EXPECT_EQ(r.err, "") << cmd;
  }
}

TEST_F(CkptCliTest, UsageErrorsExitTwoWithoutContactingTheServer) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"show", "x@"},
       "ckpt: bad version reference 'x@': expected RUN@REF such as llama@best "
       "or llama@12\n"},
      {{"rm", "llama"}, "ckpt: missing version in 'llama'"},
      {{"pin", "@3"}, "ckpt: bad version reference '@3'"},
      {{"ls", "bad/name"}, "ckpt: run name 'bad/name'"},
      {{"ls", "llama@3"}, "ckpt: expected a run name"},
      {{"ls"}, "RUN is required"},
      {{"push", "llama", "f.safetensors"}, "--step is required"},
      {{"push", "llama", "f.safetensors", "--step", "ten"}, "ten"},
      {{"push", "llama", "f.safetensors", "--step", "1", "--metric", "loss"},
       "bad --metric 'loss': expected KEY=VALUE"},
      {{"push", "llama", "f.safetensors", "--step", "1", "--metric", "loss=x"},
       "'x' is not a number"},
      {{"policy", "llama", "--mode", "median"}, "median"},
      {{"alias", "llama", "best", "3"}, "kept by the server"},
      {{"alias", "llama", "prod", "0"}, "versions start at 1"},
      {{"frobnicate"}, "ckpt: "},
      {{}, "A subcommand is required"},
  };
  for (const Case& c : cases) {
    const CkptResult r = Ckpt(c.args);
    EXPECT_EQ(r.exit_code, 2) << r;
    EXPECT_THAT(r.err, HasSubstr(c.message)) << r;
    EXPECT_EQ(r.out, "") << r;
  }
  // The file is never read when the arguments are already wrong, and a
  // missing file is a runtime error (1), not a usage error.
  const CkptResult r =
      Ckpt({"push", Run(), Path("missing.safetensors"), "--step", "1"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: NOT_FOUND: open "));
}

TEST_F(CkptCliTest, UnknownRunExitsOneWithServerMessage) {
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"show", "no-such-run"},
                                             {"show", "no-such-run@best"},
                                             {"policy", "no-such-run"}}) {
    const CkptResult r = Ckpt(args);
    EXPECT_EQ(r.exit_code, 1) << r;
    EXPECT_THAT(r.err, StartsWith("ckpt: NOT_FOUND: ")) << r;
    EXPECT_THAT(r.err, HasSubstr("no-such-run")) << r;
  }
}

TEST_F(CkptCliTest, ServerDownExitsOne) {
  const int port = ::ckptd::testing::ServerProcess::PickFreePort();
  const CkptResult r = RunProcess(
      CKPT_BINARY, {"--server", absl::StrCat("127.0.0.1:", port), "runs"},
      *scratch_);
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: UNAVAILABLE: ")) << r;
}

TEST_F(CkptCliTest, ServerAddressMayBeTheLocalSocket) {
  // The shared server serves its default socket, <data_dir>/ckptd.sock.
  const std::string socket = server_->data_dir() + "/ckptd.sock";
  if (socket.size() > 107) GTEST_SKIP() << "temp dir too deep: " << socket;
  const std::string run = Run();
  const std::string file = Path("local.safetensors");
  // Over 4 MiB to send: Push takes the data plane.
  std::vector<TestTensor> tensors = SampleTensors(5);
  tensors.push_back({"model.huge", "U8", {6 << 20}, PatternBytes(6 << 20, 9)});
  WriteFile(file, EncodeSafetensors(tensors, {{"format", "pt"}}));
  const CkptResult pushed = RunProcess(
      CKPT_BINARY,
      {"--server", "unix:" + socket, "push", run, file, "--step", "1"},
      *scratch_);
  ASSERT_EQ(pushed.exit_code, 0) << pushed;
  // The daemon took the tensors through its data plane (socket.data).
  EXPECT_THAT(server_->LogTail(100000),
              HasSubstr("co-located save of " + run + " step 1"));
  // Over TCP the same server has it; over the socket it pulls back intact.
  EXPECT_EQ(Ckpt({"show", run + "@1"}).exit_code, 0);
  const std::string out = Path("local-out.safetensors");
  const CkptResult pulled = RunProcess(
      CKPT_BINARY,
      {"--server", "unix:" + socket, "pull", run + "@1", "-o", out}, *scratch_);
  ASSERT_EQ(pulled.exit_code, 0) << pulled;
  const std::string over_tcp = Path("local-tcp.safetensors");
  ASSERT_EQ(Ckpt({"pull", run + "@1", "-o", over_tcp}).exit_code, 0);
  EXPECT_FALSE(ReadFile(out).empty());
  EXPECT_TRUE(ReadFile(out) == ReadFile(over_tcp));
}

TEST_F(CkptCliTest, TokenNewPrintsATokenAndTheLineThatAdmitsIt) {
  CkptResult r = Ckpt({"token", "new", "alice", "writer", "llama-*,bert"});
  ASSERT_EQ(r.exit_code, 0) << r;
  const std::regex shape(
      "token:  (ckptd_[A-Za-z0-9_-]{43})\nline:   alice writer llama-\\*,bert "
      "sha256:([0-9a-f]{64})\n");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, shape)) << r.out;
  EXPECT_EQ(Sha256Hex(m[1].str()), m[2].str());
  CkptResult again = Ckpt({"token", "new", "alice", "writer", "llama-*,bert"});
  EXPECT_THAT(again.out, Not(HasSubstr(m[1].str()))) << "tokens are fresh";
  r = Ckpt({"--json", "token", "new", "ci", "reader", "*"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr("\"auth_file_line\": \"ci reader * sha256:"));
  for (const auto& bad : std::vector<std::vector<std::string>>{
           {"token", "new", "alice", "owner", "*"},
           {"token", "new", "al ice", "reader", "*"},
           {"token", "new", "alice", "reader", "a/b"},
           {"token", "new", "alice", "reader", "a,,b"}}) {
    r = Ckpt(bad);
    EXPECT_EQ(r.exit_code, 2) << r;
    EXPECT_THAT(r.err, StartsWith("ckpt: ")) << r;
    EXPECT_EQ(r.out, "") << r;
  }
}

TEST_F(CkptCliTest, AuditListsAliasMovesAndDestructiveOperations) {
  const std::string run = Run();
  PushSample(run, 100, 1, {});
  PushSample(run, 200, 2, {});
  ASSERT_EQ(Ckpt({"alias", run, "prod", "1"}).exit_code, 0);
  ASSERT_EQ(Ckpt({"pin", absl::StrCat(run, "@2")}).exit_code, 0);
  CkptResult r = Ckpt({"audit", run});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, StartsWith("TIME"));
  EXPECT_THAT(r.out, HasSubstr("alias_move"));
  EXPECT_THAT(r.out, HasSubstr("prod: new -> 1"));
  EXPECT_THAT(r.out, HasSubstr("pin"));
  EXPECT_THAT(r.out, HasSubstr("local")) << "the identity without auth";
  r = Ckpt({"--json", "audit", run, "--limit", "1"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr("\"action\": \"pin\""));
  EXPECT_THAT(r.out, Not(HasSubstr("alias_move")));
}

TEST_F(CkptCliTest, PushThenRunsLsShow) {
  const std::string run = Run();
  const std::string file = Path("push.safetensors");
  WriteFile(file, EncodeSafetensors(SampleTensors(1)));
  CkptResult r = Ckpt({"push", run, file, "--step", "100", "--epoch", "2",
                       "--metric", "loss=0.5", "--metric", "acc=0.75",
                       "--label", "git_sha=abc123", "--label", "dataset=v3"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("pushed ", run, "@1: step 100")));
  EXPECT_THAT(r.out, HasSubstr("6 tensors"));
  EXPECT_EQ(r.err, "") << "no progress bar when stderr is not a terminal";

  PushSample(run, 200, 2, {"--metric", "loss=0.25"});

  r = Ckpt({"runs"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, StartsWith("RUN"));
  EXPECT_THAT(r.out, HasSubstr(run));

  r = Ckpt({"ls", run});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, StartsWith("VERSION"));
  EXPECT_THAT(r.out, HasSubstr("acc=0.75 loss=0.5"));
  EXPECT_THAT(r.out, HasSubstr("loss=0.25"));
  EXPECT_THAT(r.out, HasSubstr("COMMITTED"));
  EXPECT_THAT(r.out, HasSubstr("last"));

  r = Ckpt({"show", absl::StrCat(run, "@1")});
  ASSERT_EQ(r.exit_code, 0) << r;
  for (const char* want : {"version:",
                           "step:",
                           "100",
                           "epoch:",
                           "git_sha=abc123",
                           "dataset=v3",
                           "loss",
                           "0.5",
                           "model.layers.0.weight",
                           "float32",
                           "[4, 3]",
                           "model.embed",
                           "bfloat16",
                           "[8, 2]",
                           "optimizer.step",
                           "int64",
                           "[]",
                           "model.big",
                           "float16",
                           "600.0 KiB",
                           "mask",
                           "bool",
                           "tensors (6)",
                           "shards:",
                           "environment:",
                           "hostname:",
                           "T"}) {
    EXPECT_THAT(r.out, HasSubstr(want)) << want << "\n" << r;
  }
  // `show RUN` is RUN@last: version 2.
  r = Ckpt({"show", run});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr("200"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex("version: +2\n"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex(
                         "committed: +[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:"
                         "[0-9]{2}:[0-9]{2}Z"));
}

TEST_F(CkptCliTest, JsonOutputParses) {
  const std::string run = Run();
  PushSample(run, 10, 1, {"--metric", "loss=2", "--label", "k=v"});
  PushSample(run, 20, 2, {"--metric", "loss=1", "--epoch", "1"});

  Json j = ParseJson(Ckpt({"--json", "ls", run}));
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["run"], run);
  EXPECT_EQ(j[0]["version"], 1);
  EXPECT_EQ(j[0]["step"], 10);
  EXPECT_EQ(j[0]["state"], "COMMITTED");
  EXPECT_EQ(j[0]["metrics"]["loss"], 2.0);
  EXPECT_EQ(j[0]["env"]["labels"]["k"], "v");
  EXPECT_EQ(j[1]["epoch"], 1);
  EXPECT_TRUE(j[1]["committed_at"].is_string());
  EXPECT_GT(j[1]["total_bytes"].get<uint64_t>(), 614400u);

  // Global flags also work after the command.
  j = ParseJson(Ckpt({"show", absl::StrCat(run, "@1"), "--json"}));
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["version"], 1);
  ASSERT_TRUE(j["tensors"].is_array());
  EXPECT_EQ(j["tensors"].size(), 6u);
  std::map<std::string, Json> by_key;
  for (const Json& t : j["tensors"]) by_key[t["key"]] = t;
  ASSERT_TRUE(by_key.count("model.layers.0.weight"));
  EXPECT_EQ(by_key["model.layers.0.weight"]["dtype"], "float32");
  EXPECT_EQ(by_key["model.layers.0.weight"]["shape"], Json({4, 3}));
  EXPECT_EQ(by_key["model.layers.0.weight"]["bytes"], 48);
  EXPECT_EQ(by_key["optimizer.step"]["shape"], Json::array());

  j = ParseJson(Ckpt({"--json", "runs"}));
  ASSERT_TRUE(j.is_array());
  bool found = false;
  for (const Json& r : j) {
    if (r["name"] == run) {
      found = true;
      EXPECT_EQ(r["version_count"], 2);
      EXPECT_EQ(r["last_version"], 2);
    }
  }
  EXPECT_TRUE(found);

  j = ParseJson(Ckpt({"--json", "metrics", run}));
  ASSERT_TRUE(j["metrics"]["loss"].is_array());
  ASSERT_EQ(j["metrics"]["loss"].size(), 2u);
  EXPECT_EQ(j["metrics"]["loss"][1]["value"], 1.0);
  EXPECT_EQ(j["metrics"]["loss"][1]["step"], 20);

  j = ParseJson(Ckpt({"--json", "policy", run}));
  EXPECT_EQ(j["run"], run);
  EXPECT_TRUE(j["keep_last"].is_null());
}

TEST_F(CkptCliTest, MetricsTableAndSparkline) {
  const std::string run = Run();
  PushSample(run, 1, 1, {"--metric", "loss=3", "--metric", "acc=0.1"});
  PushSample(run, 2, 2, {"--metric", "loss=2", "--metric", "acc=0.5"});
  PushSample(run, 3, 3, {"--metric", "loss=1", "--metric", "acc=0.9"});
  CkptResult r = Ckpt({"metrics", run});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr("VERSION"));
  EXPECT_THAT(r.out, HasSubstr("loss"));
  EXPECT_THAT(r.out, HasSubstr("acc"));
  EXPECT_THAT(r.out, HasSubstr("\u2588\u2585\u2581")) << "loss falls";
  EXPECT_THAT(r.out, HasSubstr("\u2581\u2585\u2588")) << "acc rises";
  r = Ckpt({"metrics", run, "loss"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, Not(HasSubstr("acc")));
}

TEST_F(CkptCliTest, PullProducesTheSameTensors) {
  const std::string run = Run();
  const std::vector<TestTensor> tensors = SampleTensors(7);
  const std::string src = Path("src.safetensors");
  WriteFile(src, EncodeSafetensors(tensors));
  CkptResult r = Ckpt({"push", run, src, "--step", "5"});
  ASSERT_EQ(r.exit_code, 0) << r;

  const std::string out = Path("pulled.safetensors");
  r = Ckpt({"pull", absl::StrCat(run, "@1"), "-o", out});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("wrote ", out, ": 6 tensors")));
  EXPECT_FALSE(FileExists(out + ".tmp"));
  const std::string pulled = ReadFile(out);
  absl::StatusOr<SafetensorsFile> file = ParseSafetensors(pulled);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->tensors.size(), tensors.size());
  std::map<std::string, const SafetensorsTensor*> by_name;
  for (const SafetensorsTensor& t : file->tensors) by_name[t.name] = &t;
  for (const TestTensor& want : tensors) {
    ASSERT_TRUE(by_name.count(want.name)) << want.name;
    const SafetensorsTensor& got = *by_name[want.name];
    EXPECT_EQ(got.dtype, want.dtype) << want.name;
    EXPECT_EQ(got.shape, want.shape) << want.name;
    EXPECT_TRUE(file->TensorBytes(got) == want.bytes) << want.name;
  }

  // --keys selects by dotted prefix; RUN alone is RUN@last.
  const std::string model_only = Path("model.safetensors");
  r = Ckpt({"pull", run, "-o", model_only, "--keys", "model"});
  ASSERT_EQ(r.exit_code, 0) << r;
  const std::string model_bytes = ReadFile(model_only);
  file = ParseSafetensors(model_bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->tensors.size(), 4u);
  for (const SafetensorsTensor& t : file->tensors) {
    EXPECT_THAT(t.name, StartsWith("model.")) << t.name;
  }

  // JSON mode, and a pulled file pushes back unchanged.
  Json j = ParseJson(Ckpt({"--json", "pull", run, "-o", Path("again.st")}));
  EXPECT_EQ(j["tensors"], 6);
  EXPECT_EQ(j["bytes"].get<uint64_t>(), pulled.size());
  r = Ckpt({"push", run, out, "--step", "6"});
  ASSERT_EQ(r.exit_code, 0) << r;
  j = ParseJson(Ckpt({"--json", "show", run}));
  EXPECT_EQ(j["version"], 2);
  EXPECT_EQ(j["tensors"].size(), 6u);
}

TEST_F(CkptCliTest, PullFailureLeavesNoFile) {
  const std::string out = Path("never.safetensors");
  const CkptResult r = Ckpt({"pull", "no-such-run@1", "-o", out});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: NOT_FOUND: ")) << r;
  EXPECT_FALSE(FileExists(out));
  EXPECT_FALSE(FileExists(out + ".tmp"));
}

TEST_F(CkptCliTest, PushRejectsInvalidFileBeforeSending) {
  const std::string run = Run();
  const std::string bad = Path("bad.safetensors");
  WriteFile(bad, EncodeRaw(R"({"w":{"dtype":"F32","shape":[2,2],)"
                           R"("data_offsets":[0,12]}})",
                           std::string(12, 'x')));
  CkptResult r = Ckpt({"push", run, bad, "--step", "1"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: INVALID_ARGUMENT: "));
  EXPECT_THAT(r.err, HasSubstr("tensor 'w'"));
  EXPECT_THAT(r.err, HasSubstr("needs 16 bytes"));

  // Flat names never collide ("a" and "a.b" are two keys), but recorded key
  // paths can.
  WriteFile(bad, EncodeSafetensors(
                     {{"a", "U8", {1}, "x"}, {"a.b", "U8", {1}, "y"}},
                     {{kKeyPathsMetadata, R"({"a":["a"],"a.b":["a","b"]})"}}));
  r = Ckpt({"push", run, bad, "--step", "1"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, HasSubstr("tensor 'a'"));

  // Nothing reached the server: the run does not exist.
  r = Ckpt({"ls", run});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: NOT_FOUND: "));
}

TEST_F(CkptCliTest, AliasPinRmRules) {
  const std::string run = Run();
  PushSample(run, 1, 1);
  PushSample(run, 2, 2);
  const std::string v1 = absl::StrCat(run, "@1");

  CkptResult r = Ckpt({"alias", run, "prod", "1"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_EQ(r.out, absl::StrCat(run, "@prod -> 1\n"));
  Json j = ParseJson(Ckpt({"--json", "show", absl::StrCat(run, "@prod")}));
  EXPECT_EQ(j["version"], 1);
  EXPECT_THAT(j["aliases"].dump(), HasSubstr("prod"));

  r = Ckpt({"alias", run, "prod", "last"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_EQ(r.out, absl::StrCat(run, "@prod -> 2\n"));

  r = Ckpt({"history", run});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, StartsWith("TIME"));
  EXPECT_THAT(r.out, HasSubstr("(none) -> 1"));
  EXPECT_THAT(r.out, HasSubstr("1 -> 2"));
  j = ParseJson(Ckpt({"--json", "history", run, "prod"}));
  ASSERT_TRUE(j.is_array());
  ASSERT_GE(j.size(), 2u);
  EXPECT_EQ(j[0]["alias"], "prod");

  r = Ckpt({"unalias", run, "prod"});
  ASSERT_EQ(r.exit_code, 0) << r;
  r = Ckpt({"show", absl::StrCat(run, "@prod")});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: NOT_FOUND: ")) << r;
  r = Ckpt({"history", run, "prod"});
  EXPECT_THAT(r.out, HasSubstr("2 -> (deleted)")) << r;

  r = Ckpt({"pin", v1});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_EQ(r.out, absl::StrCat("pinned ", run, "@1\n"));
  r = Ckpt({"rm", v1});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: FAILED_PRECONDITION: ")) << r;
  EXPECT_THAT(r.err, HasSubstr("pinned")) << r;

  r = Ckpt({"unpin", v1});
  ASSERT_EQ(r.exit_code, 0) << r;
  r = Ckpt({"rm", v1});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_EQ(r.out, absl::StrCat("deleted ", run, "@1\n"));
  j = ParseJson(Ckpt({"--json", "ls", run}));
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["version"], 2);
  r = Ckpt({"show", v1});
  EXPECT_EQ(r.exit_code, 1) << r;
}

TEST_F(CkptCliTest, PolicySetAndShow) {
  const std::string run = Run();
  PushSample(run, 1, 1, {"--metric", "loss=3"});
  CkptResult r = Ckpt({"policy", run});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr("keep all"));

  r = Ckpt({"policy", run, "--monitor", "loss", "--mode", "min", "--keep-last",
            "3", "--keep-every-n-steps", "100"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr("loss (min)"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex("keep last: +3\n"));

  // Only the given field changes.
  r = Ckpt({"policy", run, "--keep-best", "2"});
  ASSERT_EQ(r.exit_code, 0) << r;
  Json j = ParseJson(Ckpt({"--json", "policy", run}));
  EXPECT_EQ(j["monitor"], "loss");
  EXPECT_EQ(j["mode"], "min");
  EXPECT_EQ(j["keep_last"], 3);
  EXPECT_EQ(j["keep_best"], 2);
  EXPECT_EQ(j["keep_every_n_steps"], 100);

  j = ParseJson(Ckpt({"--json", "policy", run, "--clear-retention"}));
  EXPECT_EQ(j["monitor"], "loss");
  EXPECT_TRUE(j["keep_last"].is_null());
  EXPECT_TRUE(j["keep_best"].is_null());
  EXPECT_TRUE(j["keep_every_n_steps"].is_null());

  // With a monitor, `best` exists.
  PushSample(run, 2, 2, {"--metric", "loss=1"});
  j = ParseJson(Ckpt({"--json", "show", absl::StrCat(run, "@best")}));
  EXPECT_EQ(j["version"], 2);

  // The server's rule comes back verbatim.
  r = Ckpt({"policy", run, "--monitor", "", "--keep-best", "1"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: INVALID_ARGUMENT: ")) << r;
}

TEST_F(CkptCliTest, VerifyAndGc) {
  const std::string run = Run();
  PushSample(run, 1, 1);
  CkptResult r = Ckpt({"verify", absl::StrCat(run, "@1")});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr("0 errors"));
  r = Ckpt({"verify", run});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr("every version"));
  Json j = ParseJson(Ckpt({"--json", "verify", run}));
  EXPECT_EQ(j["ok"], true);
  EXPECT_GT(j["blobs_checked"].get<uint64_t>(), 0u);

  r = Ckpt({"gc"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, StartsWith("deleted "));
  j = ParseJson(Ckpt({"--json", "gc"}));
  EXPECT_TRUE(j.contains("bytes_freed"));
}

// A byte flipped in a stored blob: `ckpt verify` lists the damaged version
// (exit 1), `ckpt pull` fails naming the tensor and no server path, and
// `ckpt rm --force` deletes the damaged `best`, moving best and last.
TEST_F(CkptCliTest, VerifyListsDamagedVersionsAndRmForceMovesAliases) {
  const std::string run = Run();
  ASSERT_EQ(
      Ckpt({"policy", run, "--monitor", "loss", "--mode", "min"}).exit_code, 0);
  PushSample(run, 1, 101, {"--metric", "loss=0.5"});
  PushSample(run, 2, 102, {"--metric", "loss=0.1"});
  PushSample(run, 3, 103, {"--metric", "loss=0.9"});
  ClientOptions options;
  options.address = server_->address();
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  auto v2 = (*client)->GetVersion(run, "2", GetVersionOptions());
  ASSERT_TRUE(v2.ok()) << v2.status();
  std::set<std::string> blobs;
  for (const auto& e : v2->shards[0].entries()) {
    if (e.has_tensor()) blobs.insert(e.tensor().blob_digest());
  }
  for (const std::string& d : blobs) {
    const std::string hex = DigestFromBytes(d)->Hex();
    const std::string path = absl::StrCat(server_->data_dir(), "/blobs/",
                                          hex.substr(0, 2), "/", hex);
    std::string bytes = ReadFile(path);
    ASSERT_GT(bytes.size(), 40u) << path;
    bytes[5] = static_cast<char>(~bytes[5]);
    WriteFile(path, bytes);
  }

  CkptResult r = Ckpt({"verify", run});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.out, HasSubstr("damaged versions:")) << r;
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat(run, "@2"))) << r;
  EXPECT_THAT(r.out, HasSubstr("model.big")) << r;
  EXPECT_THAT(r.out, HasSubstr("ckpt rm --force")) << r;
  EXPECT_THAT(r.out, Not(HasSubstr(absl::StrCat(run, "@1 ")))) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: DATA_LOSS: verify found 1 bad blob"))
      << r;
  EXPECT_THAT(r.err, HasSubstr(absl::StrCat("damaged: ", run, "@2"))) << r;
  EXPECT_THAT(r.out + r.err, Not(HasSubstr(server_->data_dir()))) << r;
  Json j = ParseJson(Ckpt({"--json", "verify", run}));
  EXPECT_EQ(j["ok"], false);
  ASSERT_EQ(j["damaged"].size(), 1u) << j.dump();
  EXPECT_EQ(j["damaged"][0]["version"], 2);
  EXPECT_EQ(j["damaged"][0]["aliases"], Json::array({"best"}));
  EXPECT_EQ(j["damaged"][0]["tensors"].size(), SampleTensors(0).size());

  r = Ckpt({"pull", absl::StrCat(run, "@best"), "-o", Path("damaged.st")});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: DATA_LOSS: "));
  EXPECT_THAT(r.err, HasSubstr(absl::StrCat(run, "@2: tensors '"))) << r;
  EXPECT_THAT(r.err, Not(HasSubstr(server_->data_dir()))) << r;
  EXPECT_FALSE(FileExists(Path("damaged.st")));

  r = Ckpt({"rm", absl::StrCat(run, "@best")});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, HasSubstr("--force")) << r;
  r = Ckpt({"rm", "--force", absl::StrCat(run, "@best")});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_EQ(r.out, absl::StrCat("deleted ", run, "@best\n  last -> ", run,
                                "@3\n  best -> ", run, "@1\n"));
  r = Ckpt({"verify", run});
  EXPECT_EQ(r.exit_code, 0) << r;
  j = ParseJson(Ckpt({"--json", "rm", "--force", absl::StrCat(run, "@last")}));
  EXPECT_EQ(j["deleted"], true);
  EXPECT_EQ(j["last"], 1);
  EXPECT_EQ(j["best"], 1);
  j = ParseJson(Ckpt({"--json", "rm", "--force", absl::StrCat(run, "@1")}));
  EXPECT_TRUE(j["last"].is_null()) << j.dump();
  EXPECT_TRUE(j["best"].is_null()) << j.dump();
  r = Ckpt({"history", run, "best"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr("2 -> 1")) << r;
  EXPECT_THAT(r.out, HasSubstr("1 -> (deleted)")) << r;
}

TEST_F(CkptCliTest, AdminBackupWritesADataDirAndRefusesBadDirs) {
  const std::string run = Run();
  PushSample(run, 1, 1);
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> usage = {
      {{"admin"}, "A subcommand is required"},
      {{"admin", "backup"}, "DIR is required"},
      {{"admin", "backup", "backups/today"},
       "backup DIR 'backups/today' must be an absolute path: it names a "
       "directory on the server's filesystem"},
      {{"admin", "backup", Path("x"), "--timeout", "soon"},
       "bad --timeout 'soon'"},
      {{"admin", "backup", Path("x"), "--timeout", "0s"},
       "give a positive duration"},
  };
  for (const Case& c : usage) {
    const CkptResult r = Ckpt(c.args);
    EXPECT_EQ(r.exit_code, 2) << r;
    EXPECT_THAT(r.err, HasSubstr(c.message)) << r;
  }
  EXPECT_FALSE(FileExists(Path("x")));

  const std::string dir = Path(absl::StrCat(run, "-backup"));
  CkptResult r = Ckpt({"admin", "backup", dir, "--timeout", "10m"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, StartsWith(absl::StrCat("backed up to ", dir, "\n")));
  EXPECT_THAT(r.out, HasSubstr("pending left out)"));
  EXPECT_THAT(r.out, HasSubstr(" linked, 0 copied)"));
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("ckptd --data_dir ", dir, "\n")));
  EXPECT_TRUE(FileExists(dir + "/BACKUP"));
  EXPECT_TRUE(FileExists(dir + "/meta/CURRENT"));

  // The server's refusal comes back verbatim.
  r = Ckpt({"admin", "backup", dir});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: FAILED_PRECONDITION: backup dir "));
  EXPECT_THAT(r.err, HasSubstr("is not empty"));

  const Json j = ParseJson(
      Ckpt({"--json", "admin", "backup", absl::StrCat(dir, "-json")}));
  EXPECT_GE(j["versions"].get<uint64_t>(), 1u);
  EXPECT_GT(j["blobs"].get<uint64_t>(), 0u);
  EXPECT_EQ(j["blobs_linked"], j["blobs"]);
  EXPECT_EQ(j["dir"], absl::StrCat(dir, "-json"));
}

// `watch` prints the ref's current target first (the server's WatchRef
// sends it on open), then one line per move; waiting for that first line
// instead of sleeping makes the pushes race-free.
TEST_F(CkptCliTest, WatchPrintsALinePerMove) {
  const std::string run = Run();
  PushSample(run, 1, 1);
  CkptChild watch(
      {"--server", server_->address(), "watch", absl::StrCat(run, "@last")});
  ASSERT_TRUE(watch.WaitForLines(1)) << watch.Output();
  PushSample(run, 2, 2, {"--metric", "loss=0.5"});
  ASSERT_TRUE(watch.WaitForLines(2)) << watch.Output();
  PushSample(run, 3, 3);
  ASSERT_TRUE(watch.WaitForLines(3)) << watch.Output();
  watch.Stop();
  const std::vector<std::string>& lines = watch.lines();
  ASSERT_EQ(lines.size(), 3u) << watch.Output();
  for (size_t i = 0; i < lines.size(); ++i) {
    EXPECT_THAT(lines[i], ::testing::MatchesRegex(absl::StrCat(
                              "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z  ", run,
                              "@last -> ", i + 1, "  step ", i + 1, ".*")))
        << i;
  }
  EXPECT_THAT(lines[1], HasSubstr("loss=0.5"));
}

// `watch --json`: one JSON object per line — the current target, then each
// move, in order. Watching `best`: a push that does not improve it prints
// nothing (the lines are exactly 1, 3, 4: had 2 printed, it would come
// before 3).
TEST_F(CkptCliTest, WatchJsonPrintsOneObjectPerLinePerMove) {
  const std::string run = Run();
  CkptResult r = Ckpt({"policy", run, "--monitor", "loss", "--mode", "min"});
  ASSERT_EQ(r.exit_code, 0) << r;
  PushSample(run, 10, 1, {"--metric", "loss=0.5"});
  CkptChild watch({"--server", server_->address(), "watch",
                   absl::StrCat(run, "@best"), "--json"});
  ASSERT_TRUE(watch.WaitForLines(1)) << watch.Output();
  PushSample(run, 20, 2, {"--metric", "loss=0.7"});  // not better
  PushSample(run, 30, 3, {"--metric", "loss=0.25"});
  ASSERT_TRUE(watch.WaitForLines(2)) << watch.Output();
  PushSample(run, 40, 4, {"--metric", "loss=0.125"});
  ASSERT_TRUE(watch.WaitForLines(3)) << watch.Output();
  watch.Stop();

  std::vector<uint64_t> versions;
  std::vector<int64_t> steps;
  std::vector<double> losses;
  for (const std::string& line : watch.lines()) {
    const Json j = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(j.is_discarded()) << "not one JSON value: " << line;
    ASSERT_TRUE(j.is_object()) << line;
    EXPECT_EQ(j["run"], run) << line;
    EXPECT_EQ(j["ref"], "best") << line;
    EXPECT_EQ(j["state"], "COMMITTED") << line;
    EXPECT_TRUE(j["seen_at"].is_string()) << line;
    EXPECT_TRUE(j["committed_at"].is_string()) << line;
    versions.push_back(j["version"].get<uint64_t>());
    steps.push_back(j["step"].get<int64_t>());
    losses.push_back(j["metrics"]["loss"].get<double>());
  }
  EXPECT_THAT(versions, ElementsAre(1, 3, 4));
  EXPECT_THAT(steps, ElementsAre(10, 30, 40));
  EXPECT_THAT(losses, ElementsAre(0.5, 0.25, 0.125));
}

// Without --server, the address comes from $CKPTD_SERVER; --server wins
// over it.
TEST_F(CkptCliTest, ServerDefaultsToTheEnvironment) {
  const std::string run = Run();
  PushSample(run, 1, 1, {"--metric", "loss=2"});
  const std::string dead = absl::StrCat(
      "127.0.0.1:", ::ckptd::testing::ServerProcess::PickFreePort());

  CkptResult r = RunProcess(CKPT_BINARY, {"--json", "show", run}, *scratch_,
                            {{"CKPTD_SERVER", server_->address()}});
  ASSERT_EQ(r.exit_code, 0) << r;
  Json j = ParseJson(r);
  EXPECT_EQ(j["run"], run);
  EXPECT_EQ(j["version"], 1);

  // Writes go there too.
  const std::string file = Path("env.safetensors");
  WriteFile(file, EncodeSafetensors(SampleTensors(5)));
  r = RunProcess(CKPT_BINARY, {"push", run, file, "--step", "2"}, *scratch_,
                 {{"CKPTD_SERVER", server_->address()}});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("pushed ", run, "@2")));

  // A dead address in the environment is really used...
  r = RunProcess(CKPT_BINARY, {"show", run}, *scratch_,
                 {{"CKPTD_SERVER", dead}});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: UNAVAILABLE: ")) << r;
  // ...unless --server overrides it, before or after the command.
  r = RunProcess(CKPT_BINARY, {"--server", server_->address(), "show", run},
                 *scratch_, {{"CKPTD_SERVER", dead}});
  EXPECT_EQ(r.exit_code, 0) << r;
  r = RunProcess(CKPT_BINARY, {"show", run, "--server", server_->address()},
                 *scratch_, {{"CKPTD_SERVER", dead}});
  EXPECT_EQ(r.exit_code, 0) << r;
}

// `ckpt policy` with setting flags works before the first push (the server
// creates the run); without flags an unknown run is still NOT_FOUND.
TEST_F(CkptCliTest, PolicyOnANewRunCreatesIt) {
  const std::string run = Run();
  CkptResult r = Ckpt({"policy", run});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: NOT_FOUND: ")) << r;
  EXPECT_THAT(r.err, HasSubstr(run)) << r;

  // A policy the server refuses leaves no run behind.
  r = Ckpt({"policy", run, "--keep-best", "1"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: INVALID_ARGUMENT: ")) << r;
  EXPECT_THAT(r.err, HasSubstr("monitor")) << r;
  r = Ckpt({"policy", run});
  EXPECT_EQ(r.exit_code, 1) << r;

  r = Ckpt({"policy", run, "--monitor", "loss", "--mode", "min", "--keep-last",
            "1", "--keep-best", "1"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr("loss (min)"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex("keep last: +1\n"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex("keep best: +1\n"));
  Json j = ParseJson(Ckpt({"--json", "policy", run}));
  EXPECT_EQ(j["monitor"], "loss");
  EXPECT_EQ(j["mode"], "min");
  EXPECT_EQ(j["keep_last"], 1);
  EXPECT_EQ(j["keep_best"], 1);
  EXPECT_TRUE(j["keep_every_n_steps"].is_null());

  // The policy rules from the first push on: best, then retention.
  PushSample(run, 1, 1, {"--metric", "loss=0.3"});
  PushSample(run, 2, 2, {"--metric", "loss=0.9"});
  PushSample(run, 3, 3, {"--metric", "loss=0.8"});
  j = ParseJson(Ckpt({"--json", "show", absl::StrCat(run, "@best")}));
  EXPECT_EQ(j["version"], 1);
  j = ParseJson(Ckpt({"--json", "ls", run}));
  ASSERT_TRUE(j.is_array());
  std::vector<uint64_t> listed;
  for (const Json& v : j) listed.push_back(v["version"].get<uint64_t>());
  EXPECT_THAT(listed, ElementsAre(1, 3));

  // --json on a new run prints the policy the server stored.
  const std::string other = run + "-json";
  j = ParseJson(Ckpt({"--json", "policy", other, "--keep-last", "4"}));
  EXPECT_EQ(j["run"], other);
  EXPECT_EQ(j["keep_last"], 4);
  EXPECT_EQ(j["monitor"], "");
  EXPECT_TRUE(j["mode"].is_null());
}

// A version pushed through the C++ client, pulled with `ckpt pull`, read
// with the spec reader above: every tensor's dtype, shape and bytes, and the
// metadata. Then the pulled file pushed back with `ckpt push` and pulled
// again carries the same bytes; --keys selects by dotted prefix.
TEST_F(CkptCliTest, PulledSafetensorsFollowTheSpecAndRoundTrip) {
  const std::string run = Run();
  const std::vector<ClientTensor> tensors = ClientTensors();
  {
    ClientOptions options;
    options.address = server_->address();
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    PushRequest req;
    req.run = run;
    req.step = 1234;
    req.epoch = 3;
    req.metrics = {{"val_loss", 0.125}, {"acc", 0.75}};
    req.env.set_torch_version("2.3.1+cpu");
    req.entries = ClientEntries(tensors);
    absl::StatusOr<VersionInfo> v = (*client)->Push(req, PushOptions());
    ASSERT_TRUE(v.ok()) << v.status();
    ASSERT_EQ(v->version(), 1u);
    ASSERT_EQ(v->state(), v1::COMMITTED);
  }

  const std::string pulled = Path("spec.safetensors");
  CkptResult r = Ckpt({"pull", absl::StrCat(run, "@1"), "-o", pulled});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr("8 tensors"));
  const SpecFile file = ReadSpecSafetensors(ReadFile(pulled));
  ExpectTensors(file, tensors, "pulled @1");
  // Aligned without holes (the reader above checks there are none): every
  // tensor whose size is a multiple of 8 starts at a multiple of 8 in the
  // file, every other one at a multiple of its element size; so those come
  // first, then the rest by element size, largest first, each group in
  // manifest order. Zero-size tensors share their offset with the next one,
  // so compare the order of the non-empty ones.
  for (const auto& [name, t] : file.tensors) {
    const uint64_t element = SpecDTypeSize(t.dtype).value_or(1);
    if (t.bytes.size() % 8 == 0) {
      EXPECT_EQ(t.file_offset % 8, 0u) << name << " at " << t.file_offset;
    }
    EXPECT_EQ(t.file_offset % element, 0u) << name << " at " << t.file_offset;
  }
  std::vector<std::string> nonempty_order;
  for (const std::string& name : file.order) {
    if (!file.tensors.at(name).bytes.empty()) nonempty_order.push_back(name);
  }
  EXPECT_EQ(nonempty_order,
            (std::vector<std::string>{"model.encoder.weight", "model.big",
                                      "optimizer.step", "model.encoder.bias",
                                      "model.embed", "mask", "pixels"}));

  ASSERT_TRUE(file.has_metadata);
  EXPECT_EQ(file.metadata.count("run") ? file.metadata.at("run") : "", run);
  EXPECT_EQ(file.metadata.count("version") ? file.metadata.at("version") : "",
            "1");
  EXPECT_EQ(file.metadata.count("step") ? file.metadata.at("step") : "",
            "1234");
  EXPECT_EQ(file.metadata.count("epoch") ? file.metadata.at("epoch") : "", "3");
  EXPECT_EQ(file.metadata.count("torch_version")
                ? file.metadata.at("torch_version")
                : "",
            "2.3.1+cpu");
  ASSERT_TRUE(file.metadata.count("metrics"));
  // metrics is a string holding a JSON object of numbers.
  const Json metrics = Json::parse(file.metadata.at("metrics"), nullptr,
                                   /*allow_exceptions=*/false);
  ASSERT_TRUE(metrics.is_object()) << file.metadata.at("metrics");
  EXPECT_EQ(metrics.size(), 2u) << metrics;
  EXPECT_EQ(metrics.value("val_loss", -1.0), 0.125) << metrics;
  EXPECT_EQ(metrics.value("acc", -1.0), 0.75) << metrics;

  // `ckpt push` of the pulled file, then pull the new version: same bytes.
  r = Ckpt({"push", run, pulled, "--step", "1235", "--metric", "val_loss=0.1"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("pushed ", run, "@2")));
  const std::string again = Path("spec-again.safetensors");
  r = Ckpt({"pull", absl::StrCat(run, "@2"), "-o", again});
  ASSERT_EQ(r.exit_code, 0) << r;
  const SpecFile round_trip = ReadSpecSafetensors(ReadFile(again));
  ExpectTensors(round_trip, tensors, "pushed back as @2");
  EXPECT_EQ(round_trip.metadata.count("version")
                ? round_trip.metadata.at("version")
                : "",
            "2");
  EXPECT_EQ(
      round_trip.metadata.count("step") ? round_trip.metadata.at("step") : "",
      "1235");
  Json j = ParseJson(Ckpt({"--json", "show", absl::StrCat(run, "@2")}));
  EXPECT_EQ(j["tensors"].size(), tensors.size());

  // --keys model: only model.*, with their bytes, in a valid file.
  const std::string model = Path("spec-model.safetensors");
  r = Ckpt({"pull", absl::StrCat(run, "@1"), "-o", model, "--keys", "model"});
  ASSERT_EQ(r.exit_code, 0) << r;
  std::vector<ClientTensor> model_tensors;
  for (const ClientTensor& t : tensors) {
    if (absl::StartsWith(t.name, "model.")) model_tensors.push_back(t);
  }
  ASSERT_EQ(model_tensors.size(), 5u);
  ExpectTensors(ReadSpecSafetensors(ReadFile(model)), model_tensors,
                "--keys model");
  // Several prefixes; a prefix matches whole segments only.
  r = Ckpt({"pull", absl::StrCat(run, "@1"), "-o", model, "--keys",
            "model.encoder", "--keys", "mask", "--keys", "pix"});
  ASSERT_EQ(r.exit_code, 0) << r;
  ExpectTensors(ReadSpecSafetensors(ReadFile(model)),
                {tensors[0], tensors[1], tensors[6]},
                "--keys model.encoder mask pix");
  // Keys that select nothing: the server's message, and no file replaced.
  const std::string before = ReadFile(model);
  r = Ckpt({"pull", absl::StrCat(run, "@1"), "-o", model, "--keys", "nosuch"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.err, StartsWith("ckpt: NOT_FOUND: ")) << r;
  EXPECT_THAT(r.err, HasSubstr("nosuch")) << r;
  EXPECT_TRUE(ReadFile(model) == before);
}

// `ckpt alias RUN@REF NAME`, and the old `ckpt alias RUN NAME REF`.
TEST_F(CkptCliTest, AliasTakesRunAtRefThenName) {
  const std::string run = Run();
  PushSample(run, 1, 1);
  PushSample(run, 2, 2);
  CkptResult r = Ckpt({"alias", absl::StrCat(run, "@1"), "prod"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_EQ(r.out, absl::StrCat(run, "@prod -> 1\n"));
  r = Ckpt({"alias", absl::StrCat(run, "@last"), "prod"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_EQ(r.out, absl::StrCat(run, "@prod -> 2\n"));
  r = Ckpt({"alias", run, "canary", "1"});  // old order
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_EQ(r.out, absl::StrCat(run, "@canary -> 1\n"));

  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> usage = {
      {{"alias", run, "prod"}, "ckpt alias RUN@REF NAME"},
      {{"alias", absl::StrCat(run, "@1"), "prod", "2"}, "given twice"},
      {{"alias", absl::StrCat(run, "@"), "prod"}, "bad version reference"},
      {{"alias", absl::StrCat(run, "@1"), "last"}, "last"},
      {{"alias", absl::StrCat(run, "@0"), "prod"}, ""},
  };
  for (const Case& c : usage) {
    r = Ckpt(c.args);
    EXPECT_EQ(r.exit_code, 2) << absl::StrJoin(c.args, " ") << "\n" << r;
    EXPECT_THAT(r.err, HasSubstr(c.message)) << absl::StrJoin(c.args, " ");
  }
  Json j = ParseJson(Ckpt({"--json", "show", absl::StrCat(run, "@prod")}));
  EXPECT_EQ(j["version"], 2) << "usage errors changed nothing";
}

TEST_F(CkptCliTest, LsFilters) {
  const std::string run = Run();
  PushSample(run, 100, 1, {"--metric", "loss=0.5", "--label", "data=a"});
  PushSample(run, 200, 2, {"--label", "data=b"});
  PushSample(run, 300, 3, {"--metric", "loss=0.25", "--label", "data=b"});
  const auto versions = [&](std::vector<std::string> flags) {
    std::vector<std::string> args = {"--json", "ls", run};
    args.insert(args.end(), flags.begin(), flags.end());
    Json j = ParseJson(Ckpt(args));
    std::vector<int> out;
    for (const Json& v : j) out.push_back(v["version"].get<int>());
    return out;
  };
  EXPECT_EQ(versions({}), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(versions({"--metric", "loss"}), (std::vector<int>{1, 3}));
  EXPECT_EQ(versions({"--min-step", "200"}), (std::vector<int>{2, 3}));
  EXPECT_EQ(versions({"--max-step", "200"}), (std::vector<int>{1, 2}));
  EXPECT_EQ(versions({"--min-step", "150", "--max-step", "250"}),
            (std::vector<int>{2}));
  EXPECT_EQ(versions({"--label", "data=b"}), (std::vector<int>{2, 3}));
  EXPECT_EQ(versions({"--label", "data=b", "--metric", "loss"}),
            (std::vector<int>{3}));
  EXPECT_EQ(versions({"--label", "data=c"}), (std::vector<int>{}));
  CkptResult r = Ckpt({"ls", run, "--metric", "acc"});
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.out, StartsWith("VERSION")) << "a table, if empty";

  struct Case {
    std::vector<std::string> flags;
    std::string message;
  };
  const std::vector<Case> usage = {
      {{"--label", "data"}, "bad --label 'data': expected KEY=VALUE"},
      {{"--label", "=b"}, "bad --label '=b'"},
      {{"--min-step", "300", "--max-step", "200"},
       "--min-step 300 is above --max-step 200"},
      {{"--label", "data=a", "--label", "data=b"}, "given twice"},
      {{"--min-step", "ten"}, "--min-step"},
  };
  for (const Case& c : usage) {
    std::vector<std::string> args = {"ls", run};
    args.insert(args.end(), c.flags.begin(), c.flags.end());
    r = Ckpt(args);
    EXPECT_EQ(r.exit_code, 2) << absl::StrJoin(c.flags, " ") << "\n" << r;
    EXPECT_THAT(r.err, HasSubstr(c.message)) << absl::StrJoin(c.flags, " ");
  }
}

// A push the server already has every byte of says so, instead of drawing
// a bar of "0 B / 0 B". RunCli in-process with progress on (as for a
// terminal).
TEST_F(CkptCliTest, PushOfStoredBytesSaysNothingToSend) {
  const std::string run = Run();
  const std::string file = PushSample(run, 1, 7);
  uint64_t bytes = 0;
  for (const TestTensor& t : SampleTensors(7)) bytes += t.bytes.size();
  const std::string size = cli::HumanBytes(bytes);
  std::ostringstream out, err;
  cli::CliContext context;
  context.out = &out;
  context.err = &err;
  context.progress = true;
  const int code = cli::RunCli({"ckpt", "--server", server_->address(), "push",
                                run, file, "--step", "2"},
                               context);
  ASSERT_EQ(code, 0) << err.str();
  EXPECT_EQ(err.str(), absl::StrCat("push ", run, ": 0 B to send, ", size,
                                    " already stored\n"));
  EXPECT_THAT(err.str(), Not(HasSubstr("0 B / 0 B")));
  EXPECT_THAT(out.str(), HasSubstr(absl::StrCat("(0 B to send, ", size,
                                                " already stored)")));

  // New bytes: a bar that ends at 100%.
  const std::string fresh = Path("fresh.safetensors");
  WriteFile(fresh, EncodeSafetensors(SampleTensors(8)));
  std::ostringstream out2, err2;
  context.out = &out2;
  context.err = &err2;
  ASSERT_EQ(cli::RunCli({"ckpt", "--server", server_->address(), "push", run,
                         fresh, "--step", "3"},
                        context),
            0)
      << err2.str();
  EXPECT_THAT(err2.str(), HasSubstr("100%"));
  EXPECT_THAT(err2.str(), Not(HasSubstr("already stored")));
  EXPECT_THAT(out2.str(), HasSubstr("(uploaded "));
}

}  // namespace
}  // namespace ckptd::cli
