// ReplicaLink: the primary's end of the replication link to one replica of one volume
// (wire format: replication/link_protocol.h). connect() opens the TCP connection and says
// HELLO; call() sends one request from a coroutine on any Reactor and resumes that
// coroutine on its own Reactor when the reply arrives. Requests are pipelined.
//
// Threads: requests are sent on the caller's Reactor thread: those submitted in one loop
// iteration leave together in one sendmsg (Reactor::defer), under a mutex (blocking socket
// with a send timeout); one receiver thread per link reads replies and resumes the waiters. A link
// that fails (connection error, malformed reply, or a request unanswered for
// op_timeout) is broken for good: every waiting and later call fails with io_error, and
// the owner connects a new one. Bounds: at most kInflightMax requests waiting (beyond that
// call() fails with busy); a reply must match a waiting handle or the link breaks.
// Errors from call(): the replica's errno mapped back (ESTALE -> Errc::permission_denied,
// i.e. this primary is fenced), io_error when the link broke.
#pragma once

#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/reactor.h"
#include "common/result.h"
#include "common/task.h"
#include "replication/link_protocol.h"

namespace cairn::replication {

class ReplicaLink : public std::enable_shared_from_this<ReplicaLink> {
 public:
  static constexpr size_t kInflightMax = 1024;

  struct Options {
    std::string address;  // the replica node's replication HOST:PORT
    std::string volume;
    uint64_t size_bytes = 0;
    uint64_t epoch = 0;
    uint32_t incarnation = 0;  // the volume record's (0 = unknown)
    std::chrono::milliseconds connect_timeout{1000};
    std::chrono::milliseconds op_timeout{5000};
  };

  // Connects and says HELLO (blocking: call it off the Reactors). *created: the replica
  // created its copy now (it holds nothing). Errors: unavailable (cannot connect),
  // permission_denied (the replica has admitted a newer epoch), io_error, others mapped
  // from the replica's errno.
  static Result<std::shared_ptr<ReplicaLink>> connect(const Options& options, bool* created);
  ~ReplicaLink();  // close()
  ReplicaLink(const ReplicaLink&) = delete;
  ReplicaLink& operator=(const ReplicaLink&) = delete;

  struct Pending {
    Reactor* reactor = nullptr;
    std::coroutine_handle<> handle;
    std::chrono::steady_clock::time_point sent;
    uint32_t error = 0;  // errno from the reply; EPIPE when the link broke
    // What goes on the wire (sent from the Reactor's deferred flush).
    uint64_t request_handle = 0;
    uint8_t header[link::kRequestHeaderBytes];
    const void* data = nullptr;
    uint32_t data_length = 0;
  };

  // Awaitable: sends `req` (epoch and handle are filled in) with `data` (WRITE payload,
  // SNAPSHOT name) and completes with the reply.
  struct Call {
    ReplicaLink* link;
    link::Request req;
    const void* data;
    Pending pending;
    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h);
    Status await_resume() const;
  };
  Call call(link::Request req, const void* data = nullptr) { return Call{this, req, data, {}}; }

  bool broken() const { return broken_.load(std::memory_order_acquire); }
  // Breaks the link: waiting calls fail with io_error. Idempotent; joins the receiver.
  void close();
  const Options& options() const { return options_; }

 private:
  ReplicaLink(Options options, int fd);
  // Registers the request and queues it for this Reactor's flush; false when it failed at
  // once (pending->error set).
  bool submit(Pending* pending, link::Request& req, const void* data);
  // Sends the requests `reactor` queued (on its thread, once per loop iteration).
  void flush_batch(Reactor* reactor);
  void receive_loop();
  void fail_all();
  // Resumes the waiters of `ready` on their Reactors, one post per Reactor; empties it.
  static void resume(std::vector<Pending*>& ready);

  const Options options_;
  int fd_ = -1;
  std::atomic<bool> broken_{false};
  std::mutex send_mu_;
  std::mutex mu_;  // pending_, next_handle_
  std::map<uint64_t, Pending*> pending_;
  uint64_t next_handle_ = 1;
  std::mutex batch_mu_;
  std::map<Reactor*, std::vector<Pending*>> batches_;  // queued, not sent yet
  std::thread receiver_;
  std::once_flag close_once_;
};

// The replica's errno as a Status: ESTALE -> permission_denied (fenced), ENOENT ->
// not_found, ENOSPC -> no_space, EINVAL -> invalid_argument, others via errno.
Status link_status(uint32_t error);

}  // namespace cairn::replication
