// The pieces that bound ckptd's memory and disk use: --min_free_disk
// parsing (server/service/disk_watermark.h) and the in-flight byte budget
// (server/service/inflight_budget.h).
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/error_reason.h"
#include "server/service/disk_watermark.h"
#include "server/service/inflight_budget.h"

namespace ckptd::service {
namespace {

using ::testing::HasSubstr;

TEST(MinFreeDiskTest, AcceptsBytesBinaryUnitsAndPercentages) {
  struct Case {
    const char* text;
    uint64_t bytes;
    double percent;
    bool is_percent;
    const char* canonical;
  };
  const Case cases[] = {
      {"0", 0, 0, false, "0"},
      {"1073741824", 1ull << 30, 0, false, "1G"},
      {"12345", 12345, 0, false, "12345"},
      {"512K", 512ull << 10, 0, false, "512K"},
      {"256M", 256ull << 20, 0, false, "256M"},
      {"256m", 256ull << 20, 0, false, "256M"},
      {"10G", 10ull << 30, 0, false, "10G"},
      {"10GiB", 10ull << 30, 0, false, "10G"},
      {"1.5G", 3ull << 29, 0, false, "1536M"},
      {"2T", 2ull << 40, 0, false, "2T"},
      {"100B", 100, 0, false, "100"},
      {"5%", 0, 5, true, "5%"},
      {"0.5%", 0, 0.5, true, "0.5%"},
      {"0%", 0, 0, true, "0%"},
      {"99.9%", 0, 99.9, true, "99.9%"},
  };
  for (const Case& c : cases) {
    auto got = ParseMinFreeDisk(c.text);
    ASSERT_TRUE(got.ok()) << c.text << ": " << got.status();
    EXPECT_EQ(got->is_percent, c.is_percent) << c.text;
    EXPECT_EQ(got->bytes, c.bytes) << c.text;
    EXPECT_DOUBLE_EQ(got->percent, c.percent) << c.text;
    EXPECT_EQ(got->ToString(), c.canonical) << c.text;
    EXPECT_EQ(got->enabled(), c.bytes > 0 || c.percent > 0) << c.text;
  }
}

TEST(MinFreeDiskTest, RefusesWhatIsNotASizeNamingTheValueAndTheForms) {
  struct Case {
    const char* text;
    const char* why;
  };
  const Case cases[] = {
      {"", "is empty"},
      {"abc", "does not start with a number"},
      {"-1", "is negative"},
      {"-5%", "is negative"},
      {"150%", "100% or more"},
      {"100%", "100% or more"},
      {"10X", "unknown unit 'x'"},
      {"10GB", "unknown unit 'gb'"},
      {"5%M", "unknown unit"},
      {"5M%", "mixes a unit"},
      {"1.5", "fraction of a byte"},
      {"1.", "no digits after"},
      {" 5G", "does not start with a number"},
      {"5G ", "unknown unit"},
      {"99999999999T", "too large"},
      {"99999999999999999999", "too large"},
  };
  for (const Case& c : cases) {
    auto got = ParseMinFreeDisk(c.text);
    ASSERT_FALSE(got.ok()) << "'" << c.text << "' was accepted";
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument)
        << c.text;
    EXPECT_THAT(got.status().message(), HasSubstr(c.why)) << c.text;
    EXPECT_THAT(got.status().message(),
                HasSubstr(std::string("--min_free_disk='") + c.text + "'"))
        << c.text;
    EXPECT_THAT(got.status().message(), HasSubstr("10G")) << c.text;
  }
}

TEST(MinFreeDiskTest, PercentFloorScalesWithTheDisk) {
  auto five = ParseMinFreeDisk("5%");
  ASSERT_TRUE(five.ok());
  EXPECT_EQ(five->FloorBytes(1000ull << 20), 50ull << 20);
  auto bytes = ParseMinFreeDisk("1G");
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(bytes->FloorBytes(1000ull << 20), 1ull << 30);
}

TEST(HumanBytesTest, Formats) {
  EXPECT_EQ(HumanBytes(0), "0 B");
  EXPECT_EQ(HumanBytes(1023), "1023 B");
  EXPECT_EQ(HumanBytes(1024), "1 KiB");
  EXPECT_EQ(HumanBytes(3ull << 29), "1.5 GiB");
  EXPECT_EQ(HumanBytes(256ull << 20), "256 MiB");
}

TEST(DiskWatermarkTest, DisabledRefusesNothingAndReservesNothing) {
  DiskWatermark off("/nonexistent-ckptd-dir", MinFreeDisk{});
  EXPECT_FALSE(off.enabled());
  EXPECT_TRUE(off.CheckBegin("BeginVersion").ok());
  EXPECT_TRUE(off.Reserve(uint64_t{1} << 50, "an upload").ok());
}

TEST(DiskWatermarkTest, RefusesWithDiskFullWhenTheFloorExceedsTheDisk) {
  // A floor larger than any disk: every push is refused, before writing.
  auto floor = ParseMinFreeDisk("1000000T");
  ASSERT_TRUE(floor.ok());
  DiskWatermark full(::testing::TempDir(), *floor);
  std::vector<bool> seen;
  full.SetListener([&](bool accepting) { seen.push_back(accepting); });
  absl::Status begin = full.CheckBegin("BeginVersion of run@1");
  EXPECT_EQ(begin.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ReasonOf(begin), v1::DISK_FULL);
  EXPECT_THAT(begin.message(), HasSubstr("BeginVersion of run@1"));
  EXPECT_THAT(begin.message(), HasSubstr("--min_free_disk=1000000T"));
  EXPECT_THAT(begin.message(), HasSubstr("reads keep working"));
  auto upload = full.Reserve(1, "blob x");
  EXPECT_EQ(upload.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ReasonOf(upload.status()), v1::DISK_FULL);
  EXPECT_THAT(upload.status().message(), HasSubstr("blob x needs 1 B"));
  // The listener heard "accepting" at once, then one crossing.
  EXPECT_EQ(seen, (std::vector<bool>{true, false}));
  full.SetListener(nullptr);
}

TEST(DiskWatermarkTest, ReservationsCountAgainstTheFreeSpaceUntilWritten) {
  // A 1-byte floor on a real disk: a reservation of (almost) all the free
  // space is granted once, a second one is refused until the first is
  // consumed or dropped.
  auto floor = ParseMinFreeDisk("1");
  ASSERT_TRUE(floor.ok());
  DiskWatermark w(::testing::TempDir(), *floor);
  // Far more than any test machine has free: refused outright.
  EXPECT_FALSE(w.Reserve(uint64_t{1} << 60, "huge").ok());
  auto small = w.Reserve(4096, "small");
  ASSERT_TRUE(small.ok()) << small.status();
  small->Consume(1000);
  small->Consume(1 << 20);  // more than reserved: harmless
  small->Reset();
  EXPECT_TRUE(w.CheckBegin("begin").ok());
}

// ---------------------------------------------------------------------------
// InflightBudget

TEST(InflightBudgetTest, GrantsInOrderAsBytesComeBack) {
  InflightBudget budget(10);
  std::vector<int> granted;
  EXPECT_EQ(budget.Acquire(6, [] { FAIL() << "granted at once"; }), 0u);
  const auto t1 = budget.Acquire(6, [&] { granted.push_back(1); });
  const auto t2 = budget.Acquire(4, [&] { granted.push_back(2); });
  EXPECT_NE(t1, 0u);
  // First come, first served: 2 would fit, but 1 is ahead of it.
  EXPECT_NE(t2, 0u);
  EXPECT_TRUE(granted.empty());
  budget.Release(6);
  EXPECT_EQ(granted, (std::vector<int>{1, 2}));
  EXPECT_EQ(budget.peak(), 10u);
  EXPECT_EQ(budget.waits(), 2u);
  EXPECT_EQ(budget.in_use(), 10u);
  EXPECT_EQ(budget.grants(), 3u);
  budget.Release(10);
  EXPECT_EQ(budget.in_use(), 0u);
  EXPECT_EQ(budget.Acquire(10, [] {}), 0u);
  EXPECT_EQ(budget.grants(), 4u);
}

TEST(InflightBudgetTest, CancelWithdrawsAQueuedRequestAndUnblocksFollowers) {
  InflightBudget budget(10);
  std::vector<int> granted;
  EXPECT_EQ(budget.Acquire(5, [] {}), 0u);
  const auto big = budget.Acquire(8, [&] { granted.push_back(8); });
  const auto small = budget.Acquire(5, [&] { granted.push_back(5); });
  EXPECT_TRUE(budget.Cancel(big));
  EXPECT_EQ(granted, (std::vector<int>{5}));
  EXPECT_FALSE(budget.Cancel(big));    // gone
  EXPECT_FALSE(budget.Cancel(small));  // granted already
}

TEST(BudgetSlotTest, RunsAtOnceOrWhenTheSlotFrees) {
  InflightBudget budget(2 * kStreamSlotBytes);
  BudgetSlot a(&budget, kStreamSlotBytes);
  BudgetSlot b(&budget, kStreamSlotBytes);
  BudgetSlot c(&budget, kStreamSlotBytes);
  std::vector<char> ran;
  a.Acquire([&] { ran.push_back('a'); });
  b.Acquire([&] { ran.push_back('b'); });
  c.Acquire([&] { ran.push_back('c'); });
  EXPECT_EQ(ran, (std::vector<char>{'a', 'b'}));
  a.Release();
  EXPECT_EQ(ran, (std::vector<char>{'a', 'b', 'c'}));
  EXPECT_FALSE(c.CancelWait());  // held, not queued
  a.Acquire([&] { ran.push_back('A'); });
  EXPECT_TRUE(a.CancelWait());
  b.Release();
  c.Release();
  EXPECT_EQ(ran.size(), 3u) << "a cancelled request ran";
  BudgetSlot unbudgeted(nullptr, kStreamSlotBytes);
  bool now = false;
  unbudgeted.Acquire([&] { now = true; });
  EXPECT_TRUE(now);
}

}  // namespace
}  // namespace ckptd::service
