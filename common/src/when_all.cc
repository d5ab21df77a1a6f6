#include "common/when_all.h"

#include <cstdint>
#include <utility>

#include "common/assert.h"

namespace cairn {
namespace {

// Lives in the awaiting coroutine's frame, which outlives every child (it waits for all).
// Awaiters are named, trivially destructible objects: g++ 12.2 miscompiles
// co_await of a braced Awaiter temporary holding a shared_ptr (it is freed early).
struct JoinState {
  size_t remaining = 0;
  size_t first_error_index = SIZE_MAX;
  Status first_error = ok();
  std::coroutine_handle<> waiter;
};

Task<void> join_one(Task<Status> t, JoinState* st, size_t index) {
  Status r = co_await std::move(t);
  if (!r && index < st->first_error_index) {
    st->first_error_index = index;
    st->first_error = r;
  }
  if (--st->remaining == 0 && st->waiter) {
    std::coroutine_handle<> w = std::exchange(st->waiter, {});
    w.resume();  // may free *st: touch nothing after this
  }
}

struct JoinAwaiter {
  JoinState* st;
  bool await_ready() const noexcept { return st->remaining == 0; }
  void await_suspend(std::coroutine_handle<> h) noexcept { st->waiter = h; }
  void await_resume() const noexcept {}
};

}  // namespace

Task<Status> when_all(std::vector<Task<Status>> tasks) {
  if (tasks.empty()) co_return ok();
  if (tasks.size() == 1) co_return co_await std::move(tasks[0]);
  JoinState st;
  st.remaining = tasks.size();
  for (size_t i = 0; i < tasks.size(); ++i) spawn(join_one(std::move(tasks[i]), &st, i));
  JoinAwaiter awaiter{&st};
  co_await awaiter;
  co_return st.first_error;
}

Status run_sync(Task<Status> t) {
  JoinState st;
  st.remaining = 1;
  spawn(join_one(std::move(t), &st, 0));
  CAIRN_ASSERT(st.remaining == 0);  // the task suspended on something that needs a loop
  return st.first_error;
}

}  // namespace cairn
