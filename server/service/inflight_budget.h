// InflightBudget: the server-wide bound on payload bytes held in memory
// (--max_inflight_bytes, DESIGN invariant 6).
//
// Every streaming call that moves blob bytes (an UploadBlobs stream reading
// a chunk, a ReadBlobs or export stream sending one) takes a fixed slot of
// the budget before it asks gRPC for the next message, and gives it back
// once that message's bytes are written to disk (or handed to the
// transport). When the budget is spent the call waits: it asks for no more
// bytes, so HTTP/2 flow control stops its sender after the stream's small
// window (server.cc disables the BDP probe that would grow it). Waiters are
// served first come, first served, so every stream progresses. Memory is
// then about the budget, plus one flow-control window per open stream,
// whatever clients send or how many of them connect.
//
// BudgetSlot is one call's use of the budget: Acquire(then) runs `then` once
// the slot is held (at once, or later from the Release() that made room),
// Release() gives it back, CancelWait() withdraws a queued request.
//
// Thread safety: InflightBudget is safe for concurrent use. A BudgetSlot's
// Acquire and Release are called by one thread at a time (the call's
// sequence of reactions), CancelWait from any thread. Grant callbacks run
// without any lock held, on the thread whose Release made room.
#ifndef CKPTD_SERVER_SERVICE_INFLIGHT_BUDGET_H_
#define CKPTD_SERVER_SERVICE_INFLIGHT_BUDGET_H_

#include <cstdint>
#include <deque>
#include <functional>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace ckptd::service {

// What one streaming call holds while a chunk is in memory: a chunk of the
// largest size (4 MiB, and its framing) twice, since it exists twice for a
// while: as gRPC received (or serialized) it, and as the copy ckptd parses
// it into (or reads it from disk into).
inline constexpr uint64_t kStreamSlotBytes = 2 * ((4 << 20) + (64 << 10));
// The smallest --max_inflight_bytes: two slots, so that one slow stream
// never stops all the others.
inline constexpr uint64_t kMinInflightBytes = 2 * kStreamSlotBytes;

class InflightBudget {
 public:
  explicit InflightBudget(uint64_t capacity) : capacity_(capacity) {}
  InflightBudget(const InflightBudget&) = delete;
  InflightBudget& operator=(const InflightBudget&) = delete;

  // 0 for "taken at once", else the ticket of a queued request.
  using Ticket = uint64_t;
  // Takes `bytes` (REQUIRES: <= capacity()) and returns 0 if they are free
  // and nobody waits; otherwise queues the request and returns its ticket:
  // once the bytes are taken for the caller, `on_grant` runs.
  Ticket Acquire(uint64_t bytes, std::function<void()> on_grant);
  // Withdraws a queued request: true if it was still queued (`on_grant`
  // never runs); false if it was granted already (`on_grant` runs or ran).
  bool Cancel(Ticket ticket);
  // Gives back `bytes` and grants the queued requests that now fit.
  void Release(uint64_t bytes);

  uint64_t capacity() const { return capacity_; }
  // The most bytes ever taken at once, and how many requests ever waited.
  uint64_t peak() const;
  uint64_t waits() const;
  // The bytes taken now, and how many requests were ever granted.
  uint64_t in_use() const;
  uint64_t grants() const;

 private:
  struct Waiter {
    Ticket ticket;
    uint64_t bytes;
    std::function<void()> on_grant;
  };

  void Take(uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const uint64_t capacity_;
  mutable absl::Mutex mu_;
  uint64_t in_use_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t peak_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t waits_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t grants_ ABSL_GUARDED_BY(mu_) = 0;
  Ticket next_ticket_ ABSL_GUARDED_BY(mu_) = 1;
  std::deque<Waiter> waiters_ ABSL_GUARDED_BY(mu_);
};

// One streaming call's slot of an InflightBudget (or of none: with a null
// budget, Acquire runs `then` at once and nothing is counted).
class BudgetSlot {
 public:
  BudgetSlot(InflightBudget* budget, uint64_t bytes)
      : budget_(budget), bytes_(bytes) {}
  // Gives the slot back if held. REQUIRES: no request queued.
  ~BudgetSlot() { Release(); }
  BudgetSlot(const BudgetSlot&) = delete;
  BudgetSlot& operator=(const BudgetSlot&) = delete;

  // Runs `then` once the slot is held: on this thread if it is free,
  // otherwise later on the thread of the Release() that frees it.
  // REQUIRES: the slot is neither held nor requested.
  void Acquire(std::function<void()> then);
  // Gives the slot back (no-op when not held).
  void Release();
  // Withdraws a queued request: true if it was queued (`then` never runs);
  // false if nothing was queued or the grant already happened.
  bool CancelWait();

 private:
  InflightBudget* const budget_;
  const uint64_t bytes_;
  absl::Mutex mu_;
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  InflightBudget::Ticket ticket_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_INFLIGHT_BUDGET_H_
