#include "server/service/inflight_budget.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace ckptd::service {

InflightBudget::Ticket InflightBudget::Acquire(uint64_t bytes,
                                               std::function<void()> on_grant) {
  absl::MutexLock lock(&mu_);
  // First come, first served: nobody overtakes a waiter.
  if (waiters_.empty() && in_use_ + bytes <= capacity_) {
    Take(bytes);
    return 0;
  }
  const Ticket ticket = next_ticket_++;
  ++waits_;
  waiters_.push_back(Waiter{ticket, bytes, std::move(on_grant)});
  return ticket;
}

bool InflightBudget::Cancel(Ticket ticket) {
  std::vector<std::function<void()>> granted;
  bool removed = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = std::find_if(waiters_.begin(), waiters_.end(),
                           [&](const Waiter& w) { return w.ticket == ticket; });
    if (it == waiters_.end()) return false;
    const bool was_front = it == waiters_.begin();
    waiters_.erase(it);
    removed = true;
    // A large request at the front may have held back smaller ones.
    while (was_front && !waiters_.empty() &&
           in_use_ + waiters_.front().bytes <= capacity_) {
      Take(waiters_.front().bytes);
      granted.push_back(std::move(waiters_.front().on_grant));
      waiters_.pop_front();
    }
  }
  for (auto& fn : granted) fn();
  return removed;
}

void InflightBudget::Release(uint64_t bytes) {
  std::vector<std::function<void()>> granted;
  {
    absl::MutexLock lock(&mu_);
    in_use_ -= std::min(bytes, in_use_);
    while (!waiters_.empty() && in_use_ + waiters_.front().bytes <= capacity_) {
      Take(waiters_.front().bytes);
      granted.push_back(std::move(waiters_.front().on_grant));
      waiters_.pop_front();
    }
  }
  for (auto& fn : granted) fn();
}

void InflightBudget::Take(uint64_t bytes) {
  in_use_ += bytes;
  peak_ = std::max(peak_, in_use_);
  ++grants_;
}

uint64_t InflightBudget::in_use() const {
  absl::MutexLock lock(&mu_);
  return in_use_;
}

uint64_t InflightBudget::grants() const {
  absl::MutexLock lock(&mu_);
  return grants_;
}

uint64_t InflightBudget::peak() const {
  absl::MutexLock lock(&mu_);
  return peak_;
}

uint64_t InflightBudget::waits() const {
  absl::MutexLock lock(&mu_);
  return waits_;
}

void BudgetSlot::Acquire(std::function<void()> then) {
  if (budget_ == nullptr) {
    then();
    return;
  }
  bool now = false;
  {
    absl::MutexLock lock(&mu_);
    // The grant may come from another thread before Acquire returns: it
    // waits for mu_, so ticket_ is set before the grant clears it.
    const InflightBudget::Ticket ticket =
        budget_->Acquire(bytes_, [this, then]() {
          {
            absl::MutexLock grant_lock(&mu_);
            ticket_ = 0;
            held_ = true;
          }
          then();
        });
    if (ticket == 0) {
      held_ = true;
      now = true;
    } else {
      ticket_ = ticket;
    }
  }
  if (now) then();
}

void BudgetSlot::Release() {
  if (budget_ == nullptr) return;
  {
    absl::MutexLock lock(&mu_);
    if (!held_) return;
    held_ = false;
  }
  // Outside mu_: Release runs other calls' grants.
  budget_->Release(bytes_);
}

bool BudgetSlot::CancelWait() {
  if (budget_ == nullptr) return false;
  InflightBudget::Ticket ticket = 0;
  {
    absl::MutexLock lock(&mu_);
    ticket = ticket_;
  }
  // Outside mu_: Cancel may run other calls' grants. A grant of ours that
  // races with it finds the ticket gone from the queue, or Cancel does.
  if (ticket == 0 || !budget_->Cancel(ticket)) return false;
  absl::MutexLock lock(&mu_);
  ticket_ = 0;
  return true;
}

}  // namespace ckptd::service
