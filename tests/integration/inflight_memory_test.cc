// Server memory under many concurrent pushes (DESIGN invariant 6): 64
// clients, each with its own connections, push 32 MiB at once to one real
// `ckptd` process. Every push must succeed (some wait for the server's
// --max_inflight_bytes budget), and the peak resident memory of the ckptd
// process (VmHWM in /proc/PID/status) must stay within 512 MiB.
//
// The test prints the peak RSS and the wall time of the 64 pushes. Memory is
// asserted; time is only printed.
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/barrier.h"
#include "ckptd/client.h"
#include "gtest/gtest.h"
#include "tests/integration/support/server_process.h"
#include "tests/support/random_bytes.h"

namespace ckptd {
namespace {

using ::ckptd::testing::RandomBytes;
using ::ckptd::testing::ServerProcess;

constexpr int kClients = 64;
constexpr uint64_t kTensorsPerPush = 4;  // 4 blobs: 4 upload streams each
constexpr uint64_t kTensorBytes = 8 << 20;
constexpr uint64_t kPushBytes = kTensorsPerPush * kTensorBytes;  // 32 MiB
constexpr uint64_t kMaxServerPeakRss = 512ull << 20;
// Under AddressSanitizer (the asan preset builds ckptd with it too) freed
// memory sits in quarantine and shadow memory grows beside it, so ckptd's
// RSS says nothing about the budget: the figure is printed, not checked.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kRssReflectsTheBudget = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kRssReflectsTheBudget = false;
#else
constexpr bool kRssReflectsTheBudget = true;
#endif
#else
constexpr bool kRssReflectsTheBudget = true;
#endif

// A "VmXXX:   123 kB" line of /proc/PID/status, in bytes.
std::optional<uint64_t> ProcStatusBytes(pid_t pid, const std::string& key) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view rest = line;
    if (!absl::ConsumePrefix(&rest, key + ":")) continue;
    rest = absl::StripAsciiWhitespace(rest);
    if (!absl::ConsumeSuffix(&rest, " kB")) return std::nullopt;
    uint64_t kb = 0;
    if (!absl::SimpleAtoi(rest, &kb)) return std::nullopt;
    return kb * 1024;
  }
  return std::nullopt;
}

std::string MiB(uint64_t bytes) {
  return absl::StrCat(bytes / (1 << 20), " MiB");
}

PushRequest MakePush(int client, std::vector<std::string>* storage) {
  PushRequest req;
  req.run = absl::StrCat("mem-", client);
  req.step = 1;
  ManifestEntry root;
  root.mutable_container()->set_kind(v1::ContainerInfo::DICT);
  req.entries.push_back({root, {}});
  for (uint64_t i = 0; i < kTensorsPerPush; ++i) {
    // Distinct bytes everywhere: nothing deduplicates.
    storage->push_back(
        RandomBytes(kTensorBytes, static_cast<uint64_t>(client) * 100 + i));
  }
  for (uint64_t i = 0; i < kTensorsPerPush; ++i) {
    ManifestEntry e;
    e.add_path()->set_key(absl::StrCat("w", i));
    e.mutable_tensor()->set_dtype(v1::UINT8);
    e.mutable_tensor()->add_shape(static_cast<int64_t>(kTensorBytes));
    TensorData data;
    data.data = (*storage)[i].data();
    data.byte_length = kTensorBytes;
    req.entries.push_back({e, data});
  }
  return req;
}

TEST(InflightMemoryTest, SixtyFourConcurrentPushesOfThirtyTwoMiB) {
  // Default flags: the default --max_inflight_bytes is what is measured.
  ServerProcess server({"--log_level=warn"});
  ASSERT_TRUE(server.Start().ok());
  const std::optional<uint64_t> idle_rss =
      ProcStatusBytes(server.pid(), "VmRSS");
  ASSERT_TRUE(idle_rss.has_value());

  std::vector<std::vector<std::string>> storage(kClients);
  std::vector<PushRequest> requests;
  for (int c = 0; c < kClients; ++c) {
    requests.push_back(MakePush(c, &storage[c]));
  }
  std::vector<std::unique_ptr<Client>> clients;
  for (int c = 0; c < kClients; ++c) {
    ClientOptions options;
    options.address = server.address();
    auto client = Client::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    clients.push_back(*std::move(client));
  }

  std::vector<absl::StatusOr<VersionInfo>> results(
      kClients, absl::UnknownError("not run"));
  absl::Barrier* start = new absl::Barrier(kClients + 1);
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      if (start->Block()) delete start;
      results[c] = clients[c]->Push(requests[c], PushOptions());
    });
  }
  const auto began = std::chrono::steady_clock::now();
  if (start->Block()) delete start;
  for (auto& t : threads) t.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - began)
          .count();

  const std::optional<uint64_t> peak = ProcStatusBytes(server.pid(), "VmHWM");
  ASSERT_TRUE(peak.has_value());
  std::printf(
      "[ figures  ] %d concurrent pushes of %s: %.2f s wall, %.0f MiB/s; "
      "ckptd peak RSS (VmHWM) %s, idle RSS before %s\n",
      kClients, MiB(kPushBytes).c_str(), seconds,
      static_cast<double>(kClients * kPushBytes) / (1 << 20) / seconds,
      MiB(*peak).c_str(), MiB(*idle_rss).c_str());
  std::fflush(stdout);

  int ok = 0;
  for (int c = 0; c < kClients; ++c) {
    if (results[c].ok()) {
      ++ok;
      EXPECT_EQ(results[c]->state(), v1::COMMITTED) << "client " << c;
      EXPECT_EQ(results[c]->total_bytes(), kPushBytes) << "client " << c;
    } else {
      ADD_FAILURE() << "push of client " << c << ": " << results[c].status();
    }
  }
  EXPECT_EQ(ok, kClients);
  if (kRssReflectsTheBudget) {
    EXPECT_LE(*peak, kMaxServerPeakRss)
        << "ckptd's peak RSS " << MiB(*peak) << " exceeds "
        << MiB(kMaxServerPeakRss) << "; end of its log:\n"
        << server.LogTail();
  }

  // The bytes are the ones pushed (one client's version, pulled back).
  auto got = clients[7]->GetVersion("mem-7", "last", GetVersionOptions());
  ASSERT_TRUE(got.ok()) << got.status();
  auto tensors = clients[7]->ReadAllTensors(*got, nullptr, PullOptions());
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  ASSERT_EQ(tensors->size(), kTensorsPerPush);
  for (const OwnedTensor& t : *tensors) {
    EXPECT_TRUE(t.bytes == storage[7][t.entry - 1])
        << "tensor w" << t.entry - 1 << " does not read back bit-identical";
  }
  clients.clear();
  EXPECT_EQ(server.Stop(), 0);
}

}  // namespace
}  // namespace ckptd
