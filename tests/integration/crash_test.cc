// Crash safety of a real ckptd: SIGKILL at random instants while two ranks
// push sharded versions, restart, let the clients retry, and check the
// invariants of DESIGN.md after every restart:
//  - every acknowledged version is intact (pulls back bit-identical and the
//    server's Verify finds no damage);
//  - `last` points at a committed version;
//  - nothing partial is visible (every listed version has all its shards).
#include <signal.h>

#include <atomic>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "ckptd/client.h"
#include "gtest/gtest.h"
#include "tests/integration/support/server_process.h"

namespace ckptd {
namespace {

constexpr uint32_t kWorldSize = 2;
constexpr int kTensorsPerShard = 6;
constexpr int kKills = 6;

// The deterministic content of (step, rank, tensor): re-creatable when
// checking what the server returns.
std::string TensorBytes(int64_t step, uint32_t rank, int index) {
  const size_t size = (index % 3 == 0) ? (3 << 20) + 17 : 4096 + index;
  std::mt19937_64 rng(step * 1000 + rank * 100 + index);
  std::string bytes(size, '\0');
  for (size_t i = 0; i + 8 <= size; i += 8) {
    uint64_t v = rng();
    std::memcpy(&bytes[i], &v, 8);
  }
  return bytes;
}

PushRequest ShardRequest(int64_t step, uint32_t rank,
                         std::vector<std::string>* storage) {
  PushRequest req;
  req.run = "crash";
  req.step = step;
  req.rank = rank;
  req.world_size = kWorldSize;
  req.metrics["loss"] = 1.0 / (step + 1);
  ManifestEntry root;
  root.mutable_container()->set_kind(v1::ContainerInfo::DICT);
  req.entries.push_back(PushEntry{root, {}});
  storage->clear();
  storage->reserve(kTensorsPerShard);
  for (int i = 0; i < kTensorsPerShard; ++i) {
    storage->push_back(TensorBytes(step, rank, i));
    ManifestEntry e;
    e.add_path()->set_key(absl::StrCat("t", i));
    e.mutable_tensor()->set_dtype(v1::UINT8);
    e.mutable_tensor()->add_shape(storage->back().size());
    TensorData data;
    data.data = storage->back().data();
    data.byte_length = storage->back().size();
    req.entries.push_back(PushEntry{e, data});
  }
  return req;
}

// Pushes shard `rank` of `step` until it is acknowledged.
void PushUntilAcknowledged(Client& client, int64_t step, uint32_t rank,
                           const std::atomic<bool>& stop) {
  std::vector<std::string> storage;
  PushRequest req = ShardRequest(step, rank, &storage);
  PushOptions options;
  options.streams = 2;
  options.max_attempts = 3;
  while (!stop.load()) {
    auto info = client.Push(req, options);
    if (info.ok()) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

void CheckInvariants(Client& client, const std::map<int64_t, bool>& acked) {
  ListVersionsRequest list;
  list.set_run("crash");
  auto versions = client.ListVersions(list);
  if (absl::IsNotFound(versions.status())) {
    EXPECT_TRUE(acked.empty());
    return;
  }
  ASSERT_TRUE(versions.ok()) << versions.status();
  std::map<int64_t, uint64_t> by_step;
  for (const auto& v : *versions) {
    EXPECT_EQ(v.state(), v1::COMMITTED);
    EXPECT_EQ(v.shards_size(), static_cast<int>(kWorldSize))
        << "partial version visible: " << v.DebugString();
    by_step[v.step()] = v.version();
  }
  // Every fully acknowledged step is listed.
  for (const auto& [step, done] : acked) {
    if (done) {
      EXPECT_TRUE(by_step.contains(step)) << "lost step " << step;
    }
  }
  if (!versions->empty()) {
    auto last = client.GetVersion("crash", "last", {});
    ASSERT_TRUE(last.ok()) << last.status();
    EXPECT_EQ(last->info.state(), v1::COMMITTED);
  }
  // Spot-check content of the newest version, then the server's own scrub.
  if (!versions->empty()) {
    const auto& newest = versions->back();
    auto manifest = client.GetVersion("crash", absl::StrCat(newest.version()),
                                      GetVersionOptions{});
    ASSERT_TRUE(manifest.ok()) << manifest.status();
    auto tensors = client.ReadAllTensors(
        *manifest, [](size_t, size_t) { return true; }, PullOptions{});
    ASSERT_TRUE(tensors.ok()) << tensors.status();
    for (const OwnedTensor& t : *tensors) {
      const auto& shard = manifest->shards[t.shard];
      const auto& entry = shard.entries(t.entry);
      const int index = std::stoi(entry.path(0).key().substr(1));
      EXPECT_EQ(t.bytes, TensorBytes(newest.step(), shard.rank(), index))
          << "step " << newest.step() << " rank " << shard.rank() << " t"
          << index;
    }
  }
  auto verify = client.Verify("crash", "");
  ASSERT_TRUE(verify.ok()) << verify.status();
  EXPECT_TRUE(verify->errors().empty()) << verify->errors(0);
}

TEST(CrashTest, KillNineDuringShardedPushesLosesNothingAcknowledged) {
  testing::ServerProcess server;
  ASSERT_TRUE(server.Start().ok());
  ClientOptions options;
  options.address = server.address();
  options.rpc_timeout_seconds = 5;
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();

  std::mt19937 rng(20261122);
  std::map<int64_t, bool> acked;
  int64_t step = 0;
  for (int kill = 0; kill < kKills; ++kill) {
    std::atomic<bool> stop{false};
    // Both ranks push steps in order; a step is acknowledged when both
    // ranks' Push returned OK.
    const int64_t first = step;
    std::thread ranks[kWorldSize];
    std::atomic<int64_t> rank_done[kWorldSize] = {first - 1, first - 1};
    for (uint32_t r = 0; r < kWorldSize; ++r) {
      ranks[r] = std::thread([&, r] {
        for (int64_t s = first; !stop.load(); ++s) {
          PushUntilAcknowledged(**client, s, r, stop);
          if (!stop.load()) rank_done[r] = s;
        }
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200 + rng() % 600));
    server.Kill();
    ASSERT_TRUE(server.Restart().ok()) << "restart " << kill;
    // Clients retry against the restarted server; give them time to finish
    // the step they were on.
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    stop = true;
    for (auto& t : ranks) t.join();
    const int64_t both = std::min(rank_done[0].load(), rank_done[1].load());
    for (int64_t s = first; s <= both; ++s) acked[s] = true;
    step = std::max(rank_done[0].load(), rank_done[1].load()) + 1;
    CheckInvariants(**client, acked);
    if (::testing::Test::HasFatalFailure()) return;
  }
  EXPECT_GE(acked.size(), 3u) << "too few versions completed to mean much";
}

}  // namespace
}  // namespace ckptd
