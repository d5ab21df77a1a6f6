#include "common/async_mutex.h"

namespace cairn {

bool AsyncMutex::LockAwaiter::await_ready() noexcept {
  std::lock_guard lk(m.mu_);
  if (!m.locked_) {
    m.locked_ = true;
    return true;
  }
  return false;
}

bool AsyncMutex::LockAwaiter::await_suspend(std::coroutine_handle<> handle) noexcept {
  std::lock_guard lk(m.mu_);
  if (!m.locked_) {
    m.locked_ = true;
    return false;  // got it after all; do not suspend
  }
  h = handle;
  reactor = Reactor::current();
  m.waiters_.push_back(this);
  return true;
}

void AsyncMutex::unlock() noexcept {
  LockAwaiter* next = nullptr;
  {
    std::lock_guard lk(mu_);
    if (waiters_.empty()) {
      locked_ = false;
      return;
    }
    next = waiters_.front();
    waiters_.pop_front();  // ownership passes to `next`; locked_ stays true
  }
  if (next->reactor != nullptr && next->reactor != Reactor::current()) {
    next->reactor->resume_on(next->h);
  } else {
    next->h.resume();
  }
}

}  // namespace cairn
