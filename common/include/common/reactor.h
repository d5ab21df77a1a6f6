// Reactor: one io_uring ring and the event loop of one thread.
//
// Every I/O thread owns exactly one Reactor; sockets and disk I/O of the coroutines running
// on that thread are submitted to its ring and resumed from its completion queue. Other
// threads talk to a Reactor only through post(), which is thread-safe (an eventfd wakes the
// ring). Submissions are batched: SQEs prepared while coroutines run are submitted together
// once per loop iteration. Limits: the ring has `entries` SQEs; when it is full the pending
// ones are submitted before more are prepared. Posted work is unbounded by design of the
// callers (each poster bounds its own messages).
#pragma once

#include <liburing.h>
#include <linux/time_types.h>
#include <sys/socket.h>

#include <atomic>
#include <coroutine>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "common/result.h"
#include "common/task.h"

namespace cairn {

class Reactor {
 public:
  // A submitted operation; `res` is the CQE result (>= 0 success, -errno failure).
  struct Completion {
    std::coroutine_handle<> handle;
    int res = 0;
  };

  template <class Prep>
  struct Op : Completion {
    Reactor* reactor;
    Prep prep;
    Op(Reactor* r, Prep p) : reactor(r), prep(std::move(p)) {}
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) noexcept {
      handle = h;
      io_uring_sqe* sqe = reactor->get_sqe();
      prep(sqe);
      io_uring_sqe_set_data(sqe, static_cast<Completion*>(this));
    }
    int await_resume() const noexcept { return res; }
  };

  static Result<std::unique_ptr<Reactor>> create(unsigned entries = 512);
  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  // The Reactor whose loop runs on this thread, or nullptr.
  static Reactor* current() noexcept;

  // Runs the loop on the calling thread until stop(). Returns after draining posted work.
  // Only this thread may submit to the ring (get_sqe and the awaitables below).
  void run();
  // Thread-safe: asks the loop to return.
  void stop() noexcept;
  bool stopping() const noexcept { return stop_.load(std::memory_order_acquire); }
  // Thread-safe: runs `fn` on the loop thread.
  void post(std::function<void()> fn);
  // Loop thread only: runs `fn` after the current batch of completions has been handled and
  // before the next submission, so work produced by many completions can be coalesced
  // (e.g. one sendmsg for all replies that became ready together).
  void defer(std::function<void()> fn) { deferred_.push_back(std::move(fn)); }

  // Awaitable I/O. Each returns the CQE result: bytes transferred or -errno.
  auto read(int fd, void* buf, unsigned len, uint64_t off) {
    return make_op([=](io_uring_sqe* s) { io_uring_prep_read(s, fd, buf, len, off); });
  }
  auto write(int fd, const void* buf, unsigned len, uint64_t off, int rw_flags = 0) {
    return make_op([=](io_uring_sqe* s) {
      io_uring_prep_write(s, fd, buf, len, off);
      s->rw_flags = rw_flags;
    });
  }
  auto readv(int fd, const iovec* iov, unsigned n, uint64_t off) {
    return make_op([=](io_uring_sqe* s) { io_uring_prep_readv(s, fd, iov, n, off); });
  }
  auto writev(int fd, const iovec* iov, unsigned n, uint64_t off, int rw_flags = 0) {
    return make_op([=](io_uring_sqe* s) {
      io_uring_prep_writev(s, fd, iov, n, off);
      s->rw_flags = rw_flags;
    });
  }
  auto recv(int fd, void* buf, size_t len, int flags = 0) {
    return make_op([=](io_uring_sqe* s) { io_uring_prep_recv(s, fd, buf, len, flags); });
  }
  auto send(int fd, const void* buf, size_t len, int flags = MSG_NOSIGNAL) {
    return make_op([=](io_uring_sqe* s) { io_uring_prep_send(s, fd, buf, len, flags); });
  }
  auto sendmsg(int fd, const msghdr* msg, unsigned flags = MSG_NOSIGNAL) {
    return make_op([=](io_uring_sqe* s) { io_uring_prep_sendmsg(s, fd, msg, flags); });
  }
  auto accept(int fd) {
    return make_op([=](io_uring_sqe* s) {
      io_uring_prep_accept(s, fd, nullptr, nullptr, SOCK_CLOEXEC);
    });
  }
  auto fsync(int fd, bool datasync) {
    return make_op([=](io_uring_sqe* s) {
      io_uring_prep_fsync(s, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
    });
  }
  auto fallocate(int fd, int mode, uint64_t off, uint64_t len) {
    return make_op([=](io_uring_sqe* s) { io_uring_prep_fallocate(s, fd, mode, off, len); });
  }
  // Completes with -ETIME after `ns`; the timespec lives in the awaitable's frame slot.
  Task<void> sleep_ns(uint64_t ns);

  // Resumes `h` on this reactor's thread (from any thread).
  void resume_on(std::coroutine_handle<> h) {
    post([h] { h.resume(); });
  }

  io_uring_sqe* get_sqe() noexcept;

 private:
  Reactor() = default;
  template <class Prep>
  Op<Prep> make_op(Prep p) {
    return Op<Prep>(this, std::move(p));
  }
  void drain_posted();
  void run_deferred();
  void arm_eventfd();

  io_uring ring_{};
  bool disabled_ = false;  // created disabled; enabled by the thread that runs the loop
  int event_fd_ = -1;
  uint64_t event_buf_ = 0;
  Completion event_completion_{};
  std::atomic<bool> stop_{false};
  std::mutex post_mu_;
  std::vector<std::function<void()>> posted_;
  std::vector<std::function<void()>> deferred_;
  std::atomic<bool> wake_pending_{false};
};

// Awaitable that moves the awaiting coroutine onto `target`'s thread.
struct SwitchTo {
  Reactor* target;
  bool await_ready() const noexcept { return Reactor::current() == target; }
  void await_suspend(std::coroutine_handle<> h) { target->resume_on(h); }
  void await_resume() const noexcept {}
};

}  // namespace cairn
