// AsyncMutex: a mutex for coroutines that may run on different Reactor threads.
//
// lock() suspends the awaiting coroutine instead of blocking its thread; unlock() hands the
// mutex to the oldest waiter and resumes it on the Reactor it was waiting on (or inline when
// it waited outside any Reactor). Fair (FIFO). Hold it only across short sequences.
#pragma once

#include <coroutine>
#include <deque>
#include <mutex>

#include "common/reactor.h"

namespace cairn {

class AsyncMutex {
 public:
  struct LockAwaiter {
    AsyncMutex& m;
    std::coroutine_handle<> h;
    Reactor* reactor = nullptr;
    bool await_ready() noexcept;
    bool await_suspend(std::coroutine_handle<> handle) noexcept;
    void await_resume() const noexcept {}
  };

  LockAwaiter lock() noexcept { return LockAwaiter{*this, {}}; }
  void unlock() noexcept;

 private:
  std::mutex mu_;
  bool locked_ = false;
  std::deque<LockAwaiter*> waiters_;
};

}  // namespace cairn
