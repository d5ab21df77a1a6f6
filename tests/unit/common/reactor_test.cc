#include "common/reactor.h"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "common/async_mutex.h"
#include "common/when_all.h"

namespace cairn {
namespace {

Task<Status> write_then_read(Reactor& r, int fd, std::string* out) {
  const char msg[] = "hello ring";
  int n = co_await r.write(fd, msg, sizeof(msg), 0);
  if (n != static_cast<int>(sizeof(msg))) co_return errno_code(n < 0 ? -n : EIO);
  char buf[sizeof(msg)] = {};
  n = co_await r.read(fd, buf, sizeof(buf), 0);
  if (n != static_cast<int>(sizeof(msg))) co_return errno_code(n < 0 ? -n : EIO);
  out->assign(buf);
  co_return ok();
}

TEST(Reactor, FileWriteThenReadThroughRing) {
  auto r = Reactor::create(64);
  ASSERT_TRUE(r);
  char path[] = "/tmp/cairn-reactor-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  unlink(path);
  std::string got;
  Status result = errno_code(EINPROGRESS);
  Reactor& reactor = *r.value();
  reactor.post([&] {
    spawn([](Reactor& rr, int f, std::string* g, Status* res) -> Task<void> {
      *res = co_await write_then_read(rr, f, g);
      rr.stop();
    }(reactor, fd, &got, &result));
  });
  reactor.run();
  close(fd);
  ASSERT_TRUE(result) << result.error().message();
  EXPECT_EQ(got, "hello ring");
}

TEST(Reactor, WhenAllJoinsConcurrentTasksAndReportsFirstError) {
  auto r = Reactor::create(64);
  ASSERT_TRUE(r);
  Reactor& reactor = *r.value();
  Status result = ok();
  reactor.post([&] {
    spawn([](Reactor& rr, Status* res) -> Task<void> {
      std::vector<Task<Status>> tasks;
      for (int i = 0; i < 8; ++i) {
        tasks.push_back([](Reactor& x, int k) -> Task<Status> {
          co_await x.sleep_ns(1000u * static_cast<unsigned>(k));
          if (k == 5) co_return Errc::io_error;
          co_return ok();
        }(rr, i));
      }
      *res = co_await when_all(std::move(tasks));
      rr.stop();
    }(reactor, &result));
  });
  reactor.run();
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error(), make_error_code(Errc::io_error));
}

struct MutexProbe {
  AsyncMutex mu;
  std::atomic<int> inside{0};
  std::atomic<int> max_inside{0};
  std::atomic<int> done{0};
};

Task<void> contend(Reactor& r, MutexProbe& p) {
  for (int i = 0; i < 200; ++i) {
    co_await p.mu.lock();
    int now = ++p.inside;
    if (now > p.max_inside) p.max_inside = now;
    co_await r.sleep_ns(1000);
    --p.inside;
    p.mu.unlock();
  }
  ++p.done;
}

TEST(Reactor, AsyncMutexSerializesAcrossThreads) {
  auto a = Reactor::create(64);
  auto b = Reactor::create(64);
  ASSERT_TRUE(a && b);
  MutexProbe probe;
  Reactor& ra = *a.value();
  Reactor& rb = *b.value();
  ra.post([&] { spawn(contend(ra, probe)); });
  rb.post([&] { spawn(contend(rb, probe)); });
  std::thread ta([&] { ra.run(); });
  std::thread tb([&] { rb.run(); });
  for (int i = 0; i < 2000 && probe.done < 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ra.stop();
  rb.stop();
  ta.join();
  tb.join();
  EXPECT_EQ(probe.done, 2);
  EXPECT_EQ(probe.max_inside, 1);
}

}  // namespace
}  // namespace cairn
