// Shared helpers of the blockd unit tests: temp dirs, seeds, fault arming, a Reactor thread.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "common/assert.h"
#include "common/fault.h"
#include "common/reactor.h"
#include "temp_dir.h"

namespace cairn::blockd::test {

using cairn::test::TempDir;

// The seed of a random test: CAIRN_SEED if set, else `fallback`; printed for replay.
inline uint64_t test_seed(uint64_t fallback) {
  const char* env = getenv("CAIRN_SEED");
  uint64_t seed = env != nullptr ? strtoull(env, nullptr, 10) : fallback;
  printf("CAIRN_SEED=%llu\n", static_cast<unsigned long long>(seed));
  return seed;
}

// Arms one fault point for the scope of a test, and disarms it after.
class ScopedFault {
 public:
  explicit ScopedFault(const std::string& spec) {
    setenv("CAIRN_FAULTS", spec.c_str(), 1);
    CAIRN_ASSERT(arm_faults_from_env());
  }
  ~ScopedFault() {
    setenv("CAIRN_FAULTS", "blockd.test.none:error=EIO", 1);  // an empty spec would not disarm
    CAIRN_ASSERT(arm_faults_from_env());
    unsetenv("CAIRN_FAULTS");
  }
};

// A Reactor on its own thread; run() executes a task there and blocks for its result.
class ReactorThread {
 public:
  ReactorThread() {
    auto r = Reactor::create(256);
    CAIRN_ASSERT(r);
    reactor_ = std::move(r.value());
    thread_ = std::thread([this] { reactor_->run(); });
  }
  ~ReactorThread() {
    reactor_->stop();
    thread_.join();
  }
  Status run(Task<Status> t) { return start(std::move(t)).get(); }
  std::future<Status> start(Task<Status> t) {
    auto task = std::make_shared<Task<Status>>(std::move(t));
    auto done = std::make_shared<std::promise<Status>>();
    std::future<Status> result = done->get_future();
    reactor_->post([task, done] { spawn(drive(std::move(*task), done)); });
    return result;
  }

 private:
  static Task<void> drive(Task<Status> t, std::shared_ptr<std::promise<Status>> done) {
    Status st = co_await std::move(t);
    done->set_value(st);
  }
  std::unique_ptr<Reactor> reactor_;
  std::thread thread_;
};

// Which BlockDevice a store-level test runs over.
enum class Backend { sim, uring };
inline const char* backend_name(Backend b) { return b == Backend::sim ? "sim" : "uring"; }

}  // namespace cairn::blockd::test
