// push_pull_bench: Client::Push and Client::ReadTensors against a real
// `ckptd` on loopback, compared with `dd ... conv=fdatasync` on the same
// disk.
//
//   push_pull_bench [--dir=/tmp/x] [--mib=1024] [--tensor_mib=16]
//                   [--streams=4] [--channels=4]
//
// The server's data dir and dd's file live under --dir. Tensors are float32
// with random content (nothing dedups or compresses). Pull buffers are
// allocated and touched before timing, so page faults are not measured. An
// unchanged re-push is timed as well (dedup path).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "ckptd/client.h"
#include "tests/integration/support/server_process.h"

ABSL_FLAG(std::string, dir, "",
          "Directory for the server data and dd's file (default: a new "
          "directory under /tmp)");
ABSL_FLAG(int, mib, 1024, "Total tensor MiB to push and pull");
ABSL_FLAG(int, tensor_mib, 16, "MiB per tensor");
ABSL_FLAG(int, streams, 4, "Parallel upload / read streams");
ABSL_FLAG(int, channels, 4, "gRPC channels (TCP connections)");

namespace {

using Clock = std::chrono::steady_clock;
constexpr double kGB = 1e9;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Fills with splitmix64 output: fast, incompressible, no duplicate tensors.
void FillRandom(std::string& bytes, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i + 8 <= bytes.size(); i += 8) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::memcpy(&bytes[i], &z, 8);
  }
}

int Fail(const std::string& what, const absl::Status& st) {
  std::fprintf(stderr, "push_pull_bench: %s: %s\n", what.c_str(),
               st.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  std::string dir = absl::GetFlag(FLAGS_dir);
  const bool own_dir = dir.empty();
  if (own_dir) dir = ckptd::testing::ServerProcess::MakeTempDir("ckptd-bench");
  std::filesystem::create_directories(dir);
  // ServerProcess makes its data dir under $TMPDIR: put it under --dir.
  ::setenv("TMPDIR", dir.c_str(), 1);

  const uint64_t tensor_bytes =
      static_cast<uint64_t>(absl::GetFlag(FLAGS_tensor_mib)) << 20;
  const uint64_t total_mib = absl::GetFlag(FLAGS_mib);
  const size_t count = std::max<uint64_t>(1, (total_mib << 20) / tensor_bytes);
  const uint64_t total = count * tensor_bytes;

  std::printf(
      "ckptd push/pull bench: %zu x %llu MiB float32 = %.3f GB, "
      "dir %s\n",
      count, static_cast<unsigned long long>(tensor_bytes >> 20), total / kGB,
      dir.c_str());

  std::vector<std::string> tensors(count);
  for (size_t i = 0; i < count; ++i) {
    tensors[i].resize(tensor_bytes);
    FillRandom(tensors[i], i + 1);
  }
  ckptd::PushRequest req;
  req.run = "bench";
  req.step = 1;
  {
    ckptd::PushEntry root;
    root.entry.mutable_container()->set_kind(ckptd::v1::ContainerInfo::DICT);
    req.entries.push_back(root);
  }
  for (size_t i = 0; i < count; ++i) {
    ckptd::PushEntry e;
    e.entry.add_path()->set_key(absl::StrCat("w", i));
    e.entry.mutable_tensor()->set_dtype(ckptd::v1::FLOAT32);
    e.entry.mutable_tensor()->add_shape(static_cast<int64_t>(tensor_bytes / 4));
    e.tensor.data = tensors[i].data();
    e.tensor.byte_length = tensor_bytes;
    req.entries.push_back(e);
  }

  ckptd::testing::ServerProcess server({"--log_level=warn"});
  if (absl::Status st = server.Start(); !st.ok()) return Fail("start", st);
  ckptd::ClientOptions copts;
  copts.address = server.address();
  copts.channels = absl::GetFlag(FLAGS_channels);
  auto client = ckptd::Client::Connect(copts);
  if (!client.ok()) return Fail("connect", client.status());

  ckptd::PushOptions popts;
  popts.streams = absl::GetFlag(FLAGS_streams);
  auto t0 = Clock::now();
  auto pushed = (*client)->Push(req, popts);
  auto t1 = Clock::now();
  if (!pushed.ok()) return Fail("push", pushed.status());
  const double push_s = Seconds(t0, t1);

  req.step = 2;
  t0 = Clock::now();
  auto repushed = (*client)->Push(req, popts);
  t1 = Clock::now();
  if (!repushed.ok()) return Fail("re-push", repushed.status());
  const double repush_s = Seconds(t0, t1);

  auto version =
      (*client)->GetVersion("bench", "1", ckptd::GetVersionOptions());
  if (!version.ok()) return Fail("get version", version.status());
  std::vector<std::string> out(count);
  std::vector<ckptd::TensorDestination> dests;
  for (size_t i = 0; i < count; ++i) {
    out[i].assign(tensor_bytes, '\0');  // touched: no page faults timed
    ckptd::TensorDestination d;
    d.entry = i + 1;
    d.data = out[i].data();
    dests.push_back(d);
  }
  ckptd::PullOptions ropts;
  ropts.streams = absl::GetFlag(FLAGS_streams);
  t0 = Clock::now();
  absl::Status read = (*client)->ReadTensors(*version, dests, ropts);
  t1 = Clock::now();
  if (!read.ok()) return Fail("read", read);
  const double pull_s = Seconds(t0, t1);
  for (size_t i = 0; i < count; ++i) {
    if (out[i] != tensors[i]) {
      std::fprintf(stderr, "push_pull_bench: tensor %zu differs\n", i);
      return 1;
    }
  }
  out.clear();
  server.Stop();

  const std::string dd_file = dir + "/dd.bin";
  const std::string dd =
      absl::StrCat("dd if=/dev/zero of=", dd_file,
                   " bs=4M count=", std::max<uint64_t>(1, total >> 22),
                   " conv=fdatasync 2>/dev/null");
  t0 = Clock::now();
  const int dd_rc = std::system(dd.c_str());
  t1 = Clock::now();
  const double dd_s = Seconds(t0, t1);
  std::filesystem::remove(dd_file);
  if (own_dir) std::filesystem::remove_all(dir);
  if (dd_rc != 0) {
    std::fprintf(stderr, "push_pull_bench: '%s' failed (%d)\n", dd.c_str(),
                 dd_rc);
    return 1;
  }

  const double push_gbs = total / kGB / push_s;
  const double pull_gbs = total / kGB / pull_s;
  const double dd_gbs = total / kGB / dd_s;
  std::printf("push    %8.3f s  %6.2f GB/s  (uploaded %.3f GB)\n", push_s,
              push_gbs, pushed->uploaded_bytes() / kGB);
  std::printf(
      "re-push %8.3f s  %6.2f GB/s  (uploaded %llu bytes, %.1fx "
      "faster than the first)\n",
      repush_s, total / kGB / repush_s,
      static_cast<unsigned long long>(repushed->uploaded_bytes()),
      push_s / repush_s);
  std::printf("pull    %8.3f s  %6.2f GB/s\n", pull_s, pull_gbs);
  std::printf("dd      %8.3f s  %6.2f GB/s  (bs=4M conv=fdatasync)\n", dd_s,
              dd_gbs);
  std::printf("ratio push/dd %.2f   pull/dd %.2f\n", push_gbs / dd_gbs,
              pull_gbs / dd_gbs);
  return 0;
}
