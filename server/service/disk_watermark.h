// DiskWatermark: the free-space floor of the data dir (--min_free_disk)
// under which ckptd refuses pushes before writing anything, so that a
// filling disk stops new saves instead of failing them half-way, and
// RocksDB keeps the room it needs to commit, flush and recover.
//
// What is refused: BeginVersion while the free space is under the floor,
// and the upload of a blob whose remaining bytes (together with the bytes
// other uploads in progress have yet to write) would take it under the
// floor: RESOURCE_EXHAUSTED with reason DISK_FULL, naming the free space,
// the floor and the flag. What is not: reads, CommitShard (its blobs are on
// disk already), aborts, deletions and GC, which free space.
//
// The free space comes from statvfs(2) of the data dir (f_bavail, what an
// unprivileged writer may use), read at each check and by Refresh() (the
// maintenance thread), never under the repository lock. Crossing the floor
// either way is logged once, and reported to the listener (the server sets
// the health of "ckptd.v1.Checkpoint.push" from it).
//
// Thread safety: all methods are safe for concurrent use. The listener is
// called with the watermark's lock held, so it must not call back in.
#ifndef CKPTD_SERVER_SERVICE_DISK_WATERMARK_H_
#define CKPTD_SERVER_SERVICE_DISK_WATERMARK_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace ckptd::service {

// The health service name that is NOT_SERVING while pushes are refused (the
// overall "" status stays SERVING: reads work).
inline constexpr char kPushHealthService[] = "ckptd.v1.Checkpoint.push";

// A parsed --min_free_disk: bytes, or a percentage of the filesystem's size.
struct MinFreeDisk {
  uint64_t bytes = 0;
  double percent = 0;
  bool is_percent = false;

  bool enabled() const { return is_percent ? percent > 0 : bytes > 0; }
  // The floor in bytes on a filesystem of `total` bytes.
  uint64_t FloorBytes(uint64_t total) const;
  // As a flag value: "256M", "5%", "0".
  std::string ToString() const;
};

// Parses "1073741824", "512K", "256M", "10G", "1T" (binary units; "10GiB"
// too, and fractions such as "1.5G") or "5%" (of the filesystem's size,
// below 100). "0" (or "0%") turns the floor off. INVALID_ARGUMENT naming the
// text and the accepted forms otherwise.
absl::StatusOr<MinFreeDisk> ParseMinFreeDisk(absl::string_view text);

// "1.5 GiB", "512 MiB", "12 B".
std::string HumanBytes(uint64_t bytes);

class DiskWatermark {
 public:
  // `dir`: the data dir. A disabled `floor` refuses nothing and never reads
  // the free space.
  DiskWatermark(std::string dir, MinFreeDisk floor);
  DiskWatermark(const DiskWatermark&) = delete;
  DiskWatermark& operator=(const DiskWatermark&) = delete;

  // Bytes an upload in progress has yet to write: counted against the free
  // space until written (Consume) or the reservation is destroyed.
  class Reservation {
   public:
    Reservation() = default;
    Reservation(Reservation&& other) noexcept { *this = std::move(other); }
    Reservation& operator=(Reservation&& other) noexcept;
    ~Reservation() { Reset(); }
    // `bytes` of the reservation were written.
    void Consume(uint64_t bytes);
    void Reset();

   private:
    friend class DiskWatermark;
    Reservation(DiskWatermark* owner, uint64_t bytes)
        : owner_(owner), bytes_(bytes) {}
    DiskWatermark* owner_ = nullptr;
    uint64_t bytes_ = 0;
  };

  // OK, or RESOURCE_EXHAUSTED (DISK_FULL) while the free space is under the
  // floor. `what` names the refused request in the message.
  absl::Status CheckBegin(absl::string_view what);
  // Reserves `bytes` for an upload, or refuses it (RESOURCE_EXHAUSTED,
  // DISK_FULL) when that would take the free space under the floor.
  absl::StatusOr<Reservation> Reserve(uint64_t bytes, absl::string_view what);
  // Re-reads the free space; logs and reports a crossing of the floor.
  void Refresh();
  // Calls `fn(accepting)` now and after every crossing; nullptr stops.
  void SetListener(std::function<void(bool accepting)> fn);

  bool enabled() const { return floor_.enabled(); }
  const MinFreeDisk& floor() const { return floor_; }

 private:
  struct Space {
    uint64_t free = 0;
    uint64_t total = 0;
  };
  // statvfs of dir_; an error (logged once per failing spell) if it fails.
  absl::StatusOr<Space> ReadSpace();
  // Records whether pushes are accepted; logs and notifies a change.
  void SetAccepting(bool accepting, const Space& space, uint64_t floor_bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Refusal(absl::string_view what, const Space& space,
                       uint64_t reserved, uint64_t needed,
                       uint64_t floor_bytes) const;
  void Unreserve(uint64_t bytes);

  const std::string dir_;
  const MinFreeDisk floor_;
  absl::Mutex mu_;
  uint64_t reserved_ ABSL_GUARDED_BY(mu_) = 0;
  bool accepting_ ABSL_GUARDED_BY(mu_) = true;
  bool space_error_logged_ ABSL_GUARDED_BY(mu_) = false;
  std::function<void(bool)> listener_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_DISK_WATERMARK_H_
