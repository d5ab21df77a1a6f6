// Private: the thread and stream behind a Watch.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "etcd_http.h"
#include "replication/etcd_client.h"

namespace cairn::v1::etcd {
class WatchResponse;
}

namespace cairn::replication {

// One watch stream (POST /v3/watch). The gateway answers with a chunked body of
// newline-delimited JSON messages that lasts as long as the connection; the request body
// (one create_request) ends at once, which etcd 3.4 does not treat as the end of the
// watch. Cancelling closes the connection.
class Watch::Impl {
 public:
  Impl(std::shared_ptr<const detail::Shared> shared, std::string key, std::string range_end,
       int64_t start_revision);
  ~Impl();

  // Opens the stream on the first endpoint that confirms the watch, then starts the
  // reader thread. Called once, before the Watch is handed out.
  Status start();
  Result<std::optional<WatchEvent>> next(std::chrono::milliseconds timeout);
  void cancel();
  int64_t start_revision() const { return start_revision_; }

 private:
  // Connects to endpoint `ep` and waits for etcd's "created" reply.
  Status open(size_t ep, detail::Clock::time_point deadline);
  // Tries every endpoint once, the last good one first.
  Status reopen();
  // Reads and queues events until the stream fails; returns why it stopped.
  std::error_code pump();
  // The next message of the stream (nullopt deadline = wait as long as it takes).
  Status read_message(cairn::v1::etcd::WatchResponse& out,
                      std::optional<detail::Clock::time_point> deadline);
  // Queues the events of one message; false when cancelled while waiting for room.
  bool deliver(const cairn::v1::etcd::WatchResponse& msg);
  void finish(std::error_code why);
  bool cancelled();
  void run();

  std::shared_ptr<const detail::Shared> shared_;
  const std::string key_;
  const std::string range_end_;
  int64_t start_revision_;
  int64_t next_revision_;  // where a reopened stream resumes
  size_t endpoint_ = 0;    // the endpoint of the current stream

  // Owned by the reader thread (by start() before it runs).
  asio::io_context ioc_;
  std::unique_ptr<detail::HttpConnection> conn_;
  std::optional<http::response_parser<http::buffer_body>> parser_;
  std::string pending_;  // received bytes not yet split into messages
  std::unique_ptr<char[]> chunk_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<WatchEvent> queue_;
  std::optional<std::error_code> end_;
  bool cancelled_ = false;
  std::mutex join_mu_;
  std::thread thread_;
};

}  // namespace cairn::replication
