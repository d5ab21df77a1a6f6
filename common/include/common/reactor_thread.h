// ReactorThread: a Reactor on a thread of its own, for code that is not a coroutine (a
// backup job's workers, tests) to run Tasks on a ring: run() executes a task there and
// blocks the caller until it finishes. Thread-safe: any number of threads may run() tasks
// at once; they interleave on the one ring. The destructor stops the loop and joins; no
// task may be running then.
#pragma once

#include <future>
#include <memory>
#include <thread>

#include "common/assert.h"
#include "common/reactor.h"
#include "common/task.h"

namespace cairn {

class ReactorThread {
 public:
  explicit ReactorThread(unsigned entries = 256) {
    auto r = Reactor::create(entries);
    CAIRN_ASSERT(r);
    reactor_ = std::move(r.value());
    thread_ = std::thread([this] { reactor_->run(); });
  }
  ~ReactorThread() {
    reactor_->stop();
    thread_.join();
  }
  ReactorThread(const ReactorThread&) = delete;
  ReactorThread& operator=(const ReactorThread&) = delete;

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

}  // namespace cairn
