#include "common/reactor.h"

#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/assert.h"
#include "common/log.h"

namespace cairn {
namespace {
thread_local Reactor* t_current = nullptr;
}

Result<std::unique_ptr<Reactor>> Reactor::create(unsigned entries) {
  std::unique_ptr<Reactor> r(new Reactor());
  // Completions are processed only when the loop asks for them (DEFER_TASKRUN): no
  // interrupts of the loop thread, fewer context switches per request. The ring is created
  // disabled and enabled by the thread that runs it, which SINGLE_ISSUER makes its owner.
  // Older kernels fall back to COOP_TASKRUN, then to plain rings.
  const unsigned tries[] = {
      IORING_SETUP_CLAMP | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
          IORING_SETUP_R_DISABLED,
      IORING_SETUP_CLAMP | IORING_SETUP_COOP_TASKRUN,
      IORING_SETUP_CLAMP};
  int rc = -EINVAL;
  for (unsigned flags : tries) {
    io_uring_params params{};
    params.flags = flags;
    rc = io_uring_queue_init_params(entries, &r->ring_, &params);
    if (rc == 0) {
      r->disabled_ = (flags & IORING_SETUP_R_DISABLED) != 0;
      break;
    }
  }
  if (rc < 0) {
    CAIRN_LOG_ERROR("reactor", "io_uring_queue_init failed: %s", strerror(-rc));
    return errno_code(-rc);
  }
  r->event_fd_ = eventfd(0, EFD_CLOEXEC);
  if (r->event_fd_ < 0) return errno_code(errno);
  return r;
}

Reactor::~Reactor() {
  if (event_fd_ >= 0) ::close(event_fd_);
  io_uring_queue_exit(&ring_);
}

Reactor* Reactor::current() noexcept { return t_current; }

io_uring_sqe* Reactor::get_sqe() noexcept {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void Reactor::post(std::function<void()> fn) {
  {
    std::lock_guard lk(post_mu_);
    posted_.push_back(std::move(fn));
  }
  if (!wake_pending_.exchange(true, std::memory_order_acq_rel)) {
    uint64_t one = 1;
    ssize_t n = ::write(event_fd_, &one, sizeof(one));
    (void)n;
  }
}

void Reactor::stop() noexcept {
  stop_.store(true, std::memory_order_release);
  uint64_t one = 1;
  ssize_t n = ::write(event_fd_, &one, sizeof(one));
  (void)n;
}

void Reactor::arm_eventfd() {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_read(sqe, event_fd_, &event_buf_, sizeof(event_buf_), 0);
  io_uring_sqe_set_data(sqe, &event_completion_);
}

void Reactor::drain_posted() {
  std::vector<std::function<void()>> batch;
  {
    std::lock_guard lk(post_mu_);
    batch.swap(posted_);
  }
  for (auto& fn : batch) fn();
}

void Reactor::run_deferred() {
  // Deferred work may defer more; bounded so a loop that keeps deferring cannot starve I/O.
  for (int round = 0; round < 8 && !deferred_.empty(); ++round) {
    std::vector<std::function<void()>> batch;
    batch.swap(deferred_);
    for (auto& fn : batch) fn();
  }
}

Task<void> Reactor::sleep_ns(uint64_t ns) {
  __kernel_timespec ts{};
  ts.tv_sec = static_cast<long long>(ns / 1000000000ull);
  ts.tv_nsec = static_cast<long long>(ns % 1000000000ull);
  __kernel_timespec* tsp = &ts;
  co_await make_op([tsp](io_uring_sqe* s) { io_uring_prep_timeout(s, tsp, 0, 0); });
}

void Reactor::run() {
  CAIRN_ASSERT(t_current == nullptr);
  t_current = this;
  if (disabled_) {
    // io_uring_enable_rings() is declared by liburing 2.3 but not exported by Debian's build.
    long rc = syscall(__NR_io_uring_register, ring_.ring_fd, IORING_REGISTER_ENABLE_RINGS,
                      nullptr, 0);
    CAIRN_ASSERT(rc == 0);
    disabled_ = false;
  }
  arm_eventfd();
  constexpr unsigned kBatch = 256;
  io_uring_cqe* cqes[kBatch];
  Completion* ready[kBatch];
  int ready_res[kBatch];
  while (true) {
    drain_posted();
    run_deferred();
    if (stopping()) break;
    int rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      CAIRN_LOG_ERROR("reactor", "io_uring_submit_and_wait: %s", strerror(-rc));
    }
    while (true) {
      unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, kBatch);
      if (n == 0) break;
      for (unsigned i = 0; i < n; ++i) {
        ready[i] = static_cast<Completion*>(io_uring_cqe_get_data(cqes[i]));
        ready_res[i] = cqes[i]->res;
      }
      io_uring_cq_advance(&ring_, n);
      for (unsigned i = 0; i < n; ++i) {
        Completion* c = ready[i];
        if (c == &event_completion_) {
          wake_pending_.store(false, std::memory_order_release);
          drain_posted();
          arm_eventfd();
          continue;
        }
        if (c == nullptr) continue;
        c->res = ready_res[i];
        c->handle.resume();
      }
    }
    run_deferred();
  }
  drain_posted();
  t_current = nullptr;
}

}  // namespace cairn
