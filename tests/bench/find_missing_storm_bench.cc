// find_missing_storm_bench: does a storm of FindMissingBlobs calls delay
// unrelated reads? Several clients send millions of digests (in batches of
// the allowed maximum, kMaxFindMissingDigests) while another client calls
// GetVersion in a loop against a real `ckptd` on loopback; prints
// GetVersion's latency percentiles without and with the storm.
//
//   find_missing_storm_bench [--storm_clients=4] [--digests_per_client=3000000]
//                            [--probe_seconds=5]
//
// Target (issue: no I/O under the repository lock): p99 under the storm
// <= 100 ms. Not a test: the figures depend on the machine.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "ckptd/client.h"
#include "ckptd/v1/checkpoint.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "proto/base/limits.h"
#include "tests/integration/support/server_process.h"

ABSL_FLAG(int, storm_clients, 4, "Clients sending FindMissingBlobs at once");
ABSL_FLAG(int64_t, digests_per_client, 3'000'000,
          "Digests each storm client sends in all (in maximal batches)");
ABSL_FLAG(double, probe_seconds, 5,
          "How long GetVersion is probed without the storm");

namespace {

using Clock = std::chrono::steady_clock;
constexpr char kRun[] = "storm";

std::unique_ptr<ckptd::v1::Checkpoint::Stub> NewStub(const std::string& addr,
                                                     int index) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  args.SetInt("ckptd.bench.channel", index);  // a connection of its own
  return ckptd::v1::Checkpoint::NewStub(grpc::CreateCustomChannel(
      addr, grpc::InsecureChannelCredentials(), args));
}

struct Percentiles {
  double p50 = 0, p99 = 0, max = 0;
  size_t n = 0;
};

Percentiles Summarize(std::vector<double> ms) {
  Percentiles p;
  p.n = ms.size();
  if (ms.empty()) return p;
  std::sort(ms.begin(), ms.end());
  p.p50 = ms[ms.size() / 2];
  p.p99 = ms[std::min(ms.size() - 1, ms.size() * 99 / 100)];
  p.max = ms.back();
  return p;
}

// GetVersion(last) until `stop`; each latency in milliseconds.
std::vector<double> Probe(ckptd::v1::Checkpoint::Stub& stub,
                          const std::atomic<bool>& stop, bool* failed) {
  std::vector<double> ms;
  while (!stop.load()) {
    grpc::ClientContext ctx;
    ckptd::v1::GetVersionRequest req;
    req.set_run(kRun);
    req.set_ref("last");
    req.set_include_manifest(true);
    ckptd::v1::GetVersionResponse resp;
    const auto t0 = Clock::now();
    grpc::Status st = stub.GetVersion(&ctx, req, &resp);
    ms.push_back(
        std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    if (!st.ok()) {
      std::fprintf(stderr, "GetVersion: %s\n", st.error_message().c_str());
      *failed = true;
      return ms;
    }
  }
  return ms;
}

void Print(const char* what, const Percentiles& p) {
  std::printf("%-26s n=%-6zu p50 %7.2f ms   p99 %7.2f ms   max %7.2f ms\n",
              what, p.n, p.p50, p.p99, p.max);
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int clients = absl::GetFlag(FLAGS_storm_clients);
  const int64_t per_client = absl::GetFlag(FLAGS_digests_per_client);

  ckptd::testing::ServerProcess server;
  if (absl::Status st = server.Start(); !st.ok()) {
    std::fprintf(stderr, "start ckptd: %s\n", st.ToString().c_str());
    return 1;
  }
  // Something to read: one committed version of 64 small tensors.
  {
    ckptd::ClientOptions options;
    options.address = server.address();
    auto client = ckptd::Client::Connect(options);
    if (!client.ok()) return 1;
    ckptd::PushRequest push;
    push.run = kRun;
    push.step = 1;
    ckptd::ManifestEntry root;
    root.mutable_container()->set_kind(ckptd::v1::ContainerInfo::DICT);
    push.entries.push_back(ckptd::PushEntry{root, {}});
    std::vector<std::string> storage(64, std::string(4096, '\0'));
    for (size_t i = 0; i < storage.size(); ++i) {
      storage[i].assign(4096, static_cast<char>(i));
      ckptd::ManifestEntry e;
      e.add_path()->set_key(absl::StrCat("t", i));
      e.mutable_tensor()->set_dtype(ckptd::v1::UINT8);
      e.mutable_tensor()->add_shape(4096);
      ckptd::TensorData data;
      data.data = storage[i].data();
      data.byte_length = storage[i].size();
      push.entries.push_back(ckptd::PushEntry{e, data});
    }
    auto pushed = (*client)->Push(push, ckptd::PushOptions{});
    if (!pushed.ok()) {
      std::fprintf(stderr, "push: %s\n", pushed.status().ToString().c_str());
      return 1;
    }
  }

  auto probe_stub = NewStub(server.address(), 0);
  bool failed = false;
  std::atomic<bool> stop{false};
  std::vector<double> quiet;
  {
    std::thread t([&] { quiet = Probe(*probe_stub, stop, &failed); });
    std::this_thread::sleep_for(
        std::chrono::duration<double>(absl::GetFlag(FLAGS_probe_seconds)));
    stop = true;
    t.join();
  }

  // The storm: each client its own pending version and connection.
  stop = false;
  std::atomic<int64_t> sent{0};
  std::atomic<int> running{clients};
  std::vector<std::thread> storm;
  const auto storm_start = Clock::now();
  for (int c = 0; c < clients; ++c) {
    storm.emplace_back([&, c] {
      auto stub = NewStub(server.address(), c + 1);
      grpc::ClientContext begin_ctx;
      ckptd::v1::BeginVersionRequest begin;
      begin.set_run(kRun);
      begin.set_step(1000 + c);
      ckptd::v1::BeginVersionResponse begun;
      if (!stub->BeginVersion(&begin_ctx, begin, &begun).ok()) {
        failed = true;
        --running;
        return;
      }
      std::mt19937_64 rng(c);
      for (int64_t done = 0; done < per_client && !failed;) {
        ckptd::v1::FindMissingBlobsRequest req;
        req.set_run(kRun);
        req.set_version(begun.version());
        const int64_t n =
            std::min<int64_t>(ckptd::kMaxFindMissingDigests, per_client - done);
        for (int64_t i = 0; i < n; ++i) {
          uint64_t words[2] = {rng(), rng()};
          req.add_digests(std::string(reinterpret_cast<char*>(words), 16));
        }
        grpc::ClientContext ctx;
        ckptd::v1::FindMissingBlobsResponse resp;
        grpc::Status st = stub->FindMissingBlobs(&ctx, req, &resp);
        if (!st.ok()) {
          std::fprintf(stderr, "FindMissingBlobs: %s\n",
                       st.error_message().c_str());
          failed = true;
          break;
        }
        done += n;
        sent += n;
      }
      --running;
    });
  }
  std::vector<double> stormy;
  std::thread t([&] { stormy = Probe(*probe_stub, stop, &failed); });
  while (running.load() > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const double storm_seconds =
      std::chrono::duration<double>(Clock::now() - storm_start).count();
  stop = true;
  t.join();
  for (auto& s : storm) s.join();
  if (failed) return 1;

  std::printf(
      "FindMissingBlobs storm: %d clients, %lld digests in batches of "
      "%zu, %.1f s (%.2f M digests/s)\n",
      clients, static_cast<long long>(sent.load()),
      ckptd::kMaxFindMissingDigests, storm_seconds,
      sent.load() / storm_seconds / 1e6);
  Print("GetVersion without storm", Summarize(quiet));
  Print("GetVersion under storm", Summarize(stormy));
  const Percentiles p = Summarize(stormy);
  std::printf("target p99 under storm <= 100 ms: %s\n",
              p.p99 <= 100 ? "met" : "NOT met");
  return 0;
}
