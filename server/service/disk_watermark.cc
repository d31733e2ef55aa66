#include "server/service/disk_watermark.h"

#include <sys/statvfs.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "proto/base/error_reason.h"
#include "proto/base/status.h"
#include "spdlog/spdlog.h"

namespace ckptd::service {
namespace {

// Floors above this are typos, not disks.
constexpr double kMaxFloorBytes = static_cast<double>(uint64_t{1} << 62);

struct Unit {
  absl::string_view name;
  uint64_t multiplier;
};
constexpr Unit kUnits[] = {
    {"", 1},
    {"b", 1},
    {"k", uint64_t{1} << 10},
    {"kib", uint64_t{1} << 10},
    {"m", uint64_t{1} << 20},
    {"mib", uint64_t{1} << 20},
    {"g", uint64_t{1} << 30},
    {"gib", uint64_t{1} << 30},
    {"t", uint64_t{1} << 40},
    {"tib", uint64_t{1} << 40},
};

}  // namespace

uint64_t MinFreeDisk::FloorBytes(uint64_t total) const {
  if (!is_percent) return bytes;
  return static_cast<uint64_t>(static_cast<double>(total) * percent / 100.0);
}

std::string MinFreeDisk::ToString() const {
  if (is_percent) return absl::StrCat(percent, "%");
  for (const auto& [suffix, shift] : {std::pair<const char*, int>{"T", 40},
                                      {"G", 30},
                                      {"M", 20},
                                      {"K", 10}}) {
    const uint64_t unit = uint64_t{1} << shift;
    if (bytes >= unit && bytes % unit == 0) {
      return absl::StrCat(bytes / unit, suffix);
    }
  }
  return absl::StrCat(bytes);
}

absl::StatusOr<MinFreeDisk> ParseMinFreeDisk(absl::string_view text) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--min_free_disk='", absl::CHexEscape(text), "' ", why,
        ": give bytes (1073741824), a size in binary units (512M, 10G, 1T, "
        "or 10GiB) or a percentage of the disk's size below 100 (5%); 0 "
        "turns the floor off"));
  };
  if (text.empty()) return bad("is empty");
  if (text[0] == '-') return bad("is negative");
  absl::string_view rest = text;
  const bool percent = absl::ConsumeSuffix(&rest, "%");
  size_t end = 0;
  while (end < rest.size() && absl::ascii_isdigit(rest[end])) ++end;
  if (end == 0) return bad("does not start with a number");
  bool fraction = false;
  if (end < rest.size() && rest[end] == '.') {
    const size_t digits = ++end;
    while (end < rest.size() && absl::ascii_isdigit(rest[end])) ++end;
    if (end == digits) return bad("has no digits after the '.'");
    fraction = true;
  }
  const absl::string_view number = rest.substr(0, end);
  const std::string unit = absl::AsciiStrToLower(rest.substr(end));
  double value = 0;
  if (!absl::SimpleAtod(number, &value) || !std::isfinite(value)) {
    return bad("is not a number");
  }
  MinFreeDisk out;
  if (percent) {
    if (!unit.empty()) return bad("mixes a unit with '%'");
    if (value >= 100) {
      return bad("is 100% or more of the disk: every push would be refused");
    }
    out.is_percent = true;
    out.percent = value;
    return out;
  }
  const Unit* found = nullptr;
  for (const Unit& u : kUnits) {
    if (u.name == unit) found = &u;
  }
  if (found == nullptr) {
    return bad(absl::StrCat("has an unknown unit '", absl::CHexEscape(unit),
                            "' (units are binary: K, M, G, T)"));
  }
  if (found->multiplier == 1) {
    if (fraction) return bad("is a fraction of a byte");
    if (!absl::SimpleAtoi(number, &out.bytes) ||
        static_cast<double>(out.bytes) > kMaxFloorBytes) {
      return bad("is too large");
    }
    return out;
  }
  const double bytes = value * static_cast<double>(found->multiplier);
  if (bytes > kMaxFloorBytes) return bad("is too large");
  out.bytes = static_cast<uint64_t>(std::llround(bytes));
  return out;
}

std::string HumanBytes(uint64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  constexpr const char* kNames[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes) / 1024;
  int unit = 0;
  while (value >= 1024 && unit + 1 < 6) {
    value /= 1024;
    ++unit;
  }
  const std::string digits = absl::StrFormat("%.1f", value);
  return absl::StrCat(absl::StripSuffix(digits, ".0"), " ", kNames[unit]);
}

// ---------------------------------------------------------------------------
// DiskWatermark

DiskWatermark::Reservation& DiskWatermark::Reservation::operator=(
    Reservation&& other) noexcept {
  if (this != &other) {
    Reset();
    owner_ = std::exchange(other.owner_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DiskWatermark::Reservation::Consume(uint64_t bytes) {
  if (owner_ == nullptr) return;
  const uint64_t n = std::min(bytes, bytes_);
  bytes_ -= n;
  owner_->Unreserve(n);
}

void DiskWatermark::Reservation::Reset() {
  if (owner_ != nullptr && bytes_ > 0) owner_->Unreserve(bytes_);
  owner_ = nullptr;
  bytes_ = 0;
}

DiskWatermark::DiskWatermark(std::string dir, MinFreeDisk floor)
    : dir_(std::move(dir)), floor_(floor) {}

absl::StatusOr<DiskWatermark::Space> DiskWatermark::ReadSpace() {
  struct statvfs st;
  if (::statvfs(dir_.c_str(), &st) != 0) {
    absl::Status error =
        ErrnoToStatus(errno, absl::StrCat("statvfs of the data dir ", dir_));
    absl::MutexLock lock(&mu_);
    if (!space_error_logged_) {
      space_error_logged_ = true;
      spdlog::warn("{}; --min_free_disk is not checked while this fails",
                   error.ToString());
    }
    return error;
  }
  Space space;
  space.free = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  space.total = static_cast<uint64_t>(st.f_blocks) * st.f_frsize;
  return space;
}

absl::Status DiskWatermark::Refusal(absl::string_view what, const Space& space,
                                    uint64_t reserved, uint64_t needed,
                                    uint64_t floor_bytes) const {
  std::string held;
  if (reserved > 0) {
    held = absl::StrCat(", ", HumanBytes(reserved),
                        " of it promised to uploads in progress");
  }
  const std::string floor = absl::StrCat("--min_free_disk=", floor_.ToString(),
                                         " (", HumanBytes(floor_bytes), ")");
  const std::string why =
      needed > 0
          ? absl::StrCat(" needs ", HumanBytes(needed),
                         ", which would leave less than ", floor, " free")
          : absl::StrCat(" is refused: the free space is under ", floor);
  return WithReason(
      absl::ResourceExhaustedError(absl::StrCat(
          "ckptd's disk is nearly full: ", HumanBytes(space.free), " free of ",
          HumanBytes(space.total), held, "; ", what, why,
          ". Pushes are refused until space is freed (delete versions, "
          "tighten retention, `ckpt gc`) or --min_free_disk is lowered; "
          "reads keep working")),
      v1::DISK_FULL);
}

absl::Status DiskWatermark::CheckBegin(absl::string_view what) {
  if (!enabled()) return absl::OkStatus();
  absl::StatusOr<Space> space = ReadSpace();
  if (!space.ok()) return absl::OkStatus();  // the write itself will tell
  absl::MutexLock lock(&mu_);
  const uint64_t floor_bytes = floor_.FloorBytes(space->total);
  const bool accepting = space->free >= reserved_ + floor_bytes;
  SetAccepting(accepting, *space, floor_bytes);
  if (!accepting) return Refusal(what, *space, reserved_, 0, floor_bytes);
  return absl::OkStatus();
}

absl::StatusOr<DiskWatermark::Reservation> DiskWatermark::Reserve(
    uint64_t bytes, absl::string_view what) {
  if (!enabled()) return Reservation();
  absl::StatusOr<Space> space = ReadSpace();
  if (!space.ok()) return Reservation();
  absl::MutexLock lock(&mu_);
  const uint64_t floor_bytes = floor_.FloorBytes(space->total);
  SetAccepting(space->free >= reserved_ + floor_bytes, *space, floor_bytes);
  const uint64_t promised = reserved_ + bytes;
  if (promised < reserved_ || space->free < promised ||
      space->free - promised < floor_bytes) {
    return Refusal(what, *space, reserved_, bytes, floor_bytes);
  }
  reserved_ = promised;
  return Reservation(this, bytes);
}

void DiskWatermark::Refresh() {
  if (!enabled()) return;
  absl::StatusOr<Space> space = ReadSpace();
  if (!space.ok()) return;
  absl::MutexLock lock(&mu_);
  const uint64_t floor_bytes = floor_.FloorBytes(space->total);
  SetAccepting(space->free >= reserved_ + floor_bytes, *space, floor_bytes);
}

void DiskWatermark::SetListener(std::function<void(bool)> fn) {
  absl::MutexLock lock(&mu_);
  listener_ = std::move(fn);
  if (listener_) listener_(accepting_);
}

void DiskWatermark::SetAccepting(bool accepting, const Space& space,
                                 uint64_t floor_bytes) {
  space_error_logged_ = false;
  if (accepting == accepting_) return;
  accepting_ = accepting;
  if (!accepting) {
    spdlog::warn(
        "data dir {}: {} free of {} ({} promised to uploads in progress) is "
        "under --min_free_disk={} ({}): pushes are refused with "
        "RESOURCE_EXHAUSTED and health service {} is NOT_SERVING until "
        "space is freed; reads keep working",
        dir_, HumanBytes(space.free), HumanBytes(space.total),
        HumanBytes(reserved_), floor_.ToString(), HumanBytes(floor_bytes),
        kPushHealthService);
  } else {
    spdlog::info(
        "data dir {}: {} free of {}, above --min_free_disk={} ({}) again: "
        "pushes are accepted",
        dir_, HumanBytes(space.free), HumanBytes(space.total),
        floor_.ToString(), HumanBytes(floor_bytes));
  }
  if (listener_) listener_(accepting);
}

void DiskWatermark::Unreserve(uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  reserved_ -= std::min(bytes, reserved_);
}

}  // namespace ckptd::service
