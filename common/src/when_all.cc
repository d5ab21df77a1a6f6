#include "common/when_all.h"

#include <memory>

#include "common/assert.h"

namespace cairn {
namespace {

struct JoinState {
  size_t remaining = 0;
  std::vector<Status> results;
  std::coroutine_handle<> waiter;
};

Task<void> run_one(Task<Status> t, std::shared_ptr<JoinState> st, size_t index) {
  st->results[index] = co_await std::move(t);
  if (--st->remaining == 0 && st->waiter) {
    auto w = std::exchange(st->waiter, {});
    w.resume();
  }
}

struct JoinAwaiter {
  std::shared_ptr<JoinState> st;
  bool await_ready() const noexcept { return st->remaining == 0; }
  void await_suspend(std::coroutine_handle<> h) noexcept { st->waiter = h; }
  void await_resume() const noexcept {}
};

}  // namespace

Task<Status> when_all(std::vector<Task<Status>> tasks) {
  if (tasks.empty()) co_return ok();
  if (tasks.size() == 1) co_return co_await std::move(tasks[0]);
  auto st = std::make_shared<JoinState>();
  st->remaining = tasks.size();
  st->results.resize(tasks.size(), ok());
  for (size_t i = 0; i < tasks.size(); ++i) spawn(run_one(std::move(tasks[i]), st, i));
  co_await JoinAwaiter{st};
  for (auto& r : st->results)
    if (!r) co_return r;
  co_return ok();
}

Status run_sync(Task<Status> t) {
  auto st = std::make_shared<JoinState>();
  st->remaining = 1;
  st->results.resize(1, ok());
  spawn(run_one(std::move(t), st, 0));
  CAIRN_ASSERT(st->remaining == 0);
  return st->results[0];
}

}  // namespace cairn
