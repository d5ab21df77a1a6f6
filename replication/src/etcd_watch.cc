#include "etcd_watch.h"

#include "cairn/v1/etcd.pb.h"
#include "common/assert.h"
#include "common/log.h"

namespace cairn::replication {

using namespace detail;
namespace pb = cairn::v1::etcd;
namespace outcome = boost::outcome_v2;

namespace {
constexpr size_t kChunkBytes = 16 * 1024;
constexpr size_t kErrorBodyMaxBytes = 64 * 1024;

std::error_code cancelled_code() { return errno_code(ECANCELED); }

}  // namespace

// ---- Watch (the public face) ----

Watch::Watch(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Watch::~Watch() { impl_->cancel(); }
Result<std::optional<WatchEvent>> Watch::next(std::chrono::milliseconds timeout) {
  return impl_->next(timeout);
}
void Watch::cancel() { impl_->cancel(); }
int64_t Watch::start_revision() const { return impl_->start_revision(); }

// ---- Watch::Impl ----

Watch::Impl::Impl(std::shared_ptr<const Shared> shared, std::string key, std::string range_end,
                  int64_t start_revision)
    : shared_(std::move(shared)),
      key_(std::move(key)),
      range_end_(std::move(range_end)),
      start_revision_(start_revision),
      next_revision_(start_revision),
      chunk_(std::make_unique<char[]>(kChunkBytes)) {}

Watch::Impl::~Impl() { cancel(); }

Status Watch::Impl::start() {
  const auto& opts = shared_->options;
  const auto overall = Clock::now() + opts.timeout;
  const size_t n = shared_->endpoints.size();
  const size_t first = shared_->preferred.load(std::memory_order_relaxed) % n;
  std::error_code why = Errc::unavailable;
  bool opened = false;
  for (size_t i = 0; i < n && !opened; ++i) {
    const auto now = Clock::now();
    if (now >= overall) break;
    auto st = open((first + i) % n, std::min(overall, now + opts.attempt_timeout));
    if (st) {
      opened = true;
    } else if (st.error() != Errc::unavailable) {
      return st.error();  // etcd refused the watch itself: another endpoint would too
    }
  }
  if (!opened) {
    CAIRN_LOG_WARN(kLogComponent, "watch: no etcd endpoint answered within %lld ms",
                   static_cast<long long>(opts.timeout.count()));
    return why;
  }
  start_revision_ = next_revision_;
  thread_ = std::thread([this] { run(); });
  return ok();
}

Status Watch::Impl::open(size_t ep, Clock::time_point deadline) {
  const Endpoint& endpoint = shared_->endpoints[ep];
  endpoint_ = ep;
  pending_.clear();
  parser_.reset();
  conn_ = std::make_unique<HttpConnection>(ioc_, endpoint);
  auto ec = conn_->connect(deadline);
  if (ec) {
    CAIRN_LOG_WARN(kLogComponent, "watch: cannot connect to %s: %s", endpoint.url.c_str(),
                   describe(ec).c_str());
    return Errc::unavailable;
  }
  conn_->enable_keepalive_probes();

  pb::WatchRequest req;
  auto* create = req.mutable_create_request();
  create->set_key(key_);
  create->set_range_end(range_end_);
  create->set_start_revision(next_revision_);
  auto http_req = make_request(endpoint, "/v3/watch", to_json(req));
  ec = conn_->write(http_req, deadline);
  if (!ec) {
    parser_.emplace();
    parser_->body_limit(boost::none);  // a stream; each message is bounded instead
    ec = conn_->read_header(*parser_, deadline);
  }
  if (ec) {
    CAIRN_LOG_WARN(kLogComponent, "watch on %s: %s", endpoint.url.c_str(), describe(ec).c_str());
    conn_->close();
    return Errc::unavailable;
  }
  const int status = static_cast<int>(parser_->get().result_int());
  if (status != 200) {
    std::string body;
    while (!parser_->is_done() && body.size() < kErrorBodyMaxBytes) {
      size_t got = 0;
      ec = conn_->read_some(*parser_, chunk_.get(), kChunkBytes, got, deadline);
      body.append(chunk_.get(), got);
      if (ec) break;
    }
    conn_->close();
    std::string message;
    bool transient = false;
    auto code = gateway_error(status, body, message, transient);
    CAIRN_LOG_WARN(kLogComponent, "watch on %s refused: %s", endpoint.url.c_str(),
                   message.c_str());
    return transient ? Errc::unavailable : code;
  }
  pb::WatchResponse created;
  CAIRN_TRY(read_message(created, deadline));
  if (!created.created()) {
    CAIRN_LOG_ERROR(kLogComponent, "watch on %s: etcd did not confirm the watch",
                    endpoint.url.c_str());
    conn_->close();
    return Errc::io_error;
  }
  // With no start revision etcd watches from the revision after the one it reports.
  if (next_revision_ == 0) next_revision_ = created.header().revision() + 1;
  shared_->preferred.store(ep, std::memory_order_relaxed);
  return ok();
}

Status Watch::Impl::reopen() {
  const size_t n = shared_->endpoints.size();
  for (size_t i = 0; i < n; ++i) {
    if (cancelled()) return cancelled_code();
    // The endpoint that just failed first: it may only have dropped this connection.
    auto st = open((endpoint_ + (i == 0 ? 0 : 1)) % n,
                   Clock::now() + shared_->options.attempt_timeout);
    if (st) return ok();
    if (st.error() != Errc::unavailable) return st.error();
  }
  return Errc::unavailable;
}

Status Watch::Impl::read_message(pb::WatchResponse& out,
                                 std::optional<Clock::time_point> deadline) {
  const size_t max_bytes = shared_->options.reply_body_max_bytes;
  for (;;) {
    auto nl = pending_.find('\n');
    if (nl != std::string::npos) {
      std::string_view line(pending_.data(), nl);
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
      if (line.empty()) {
        pending_.erase(0, nl + 1);
        continue;
      }
      pb::WatchStreamMessage msg;
      const bool parsed = from_json(line, msg);
      pending_.erase(0, nl + 1);
      if (!parsed) {
        CAIRN_LOG_ERROR(kLogComponent, "watch: malformed message from etcd");
        return Errc::io_error;
      }
      if (msg.has_error()) {
        const int code = msg.error().grpc_code();
        CAIRN_LOG_WARN(kLogComponent, "watch: etcd reports: %s", msg.error().message().c_str());
        if (grpc_transient(code)) return Errc::unavailable;
        return grpc_error(code != 0 ? code : 2);
      }
      out = std::move(*msg.mutable_result());
      return ok();
    }
    if (pending_.size() > max_bytes) {
      CAIRN_LOG_ERROR(kLogComponent, "watch: a message exceeds %zu bytes", max_bytes);
      return Errc::too_large;
    }
    if (parser_->is_done()) {
      CAIRN_LOG_WARN(kLogComponent, "watch: %s ended the stream",
                     shared_->endpoints[endpoint_].url.c_str());
      return Errc::unavailable;
    }
    size_t got = 0;
    auto ec = conn_->read_some(*parser_, chunk_.get(), kChunkBytes, got, deadline);
    pending_.append(chunk_.get(), got);
    if (ec) {
      if (!cancelled())
        CAIRN_LOG_WARN(kLogComponent, "watch stream from %s: %s",
                       shared_->endpoints[endpoint_].url.c_str(), describe(ec).c_str());
      return Errc::unavailable;
    }
  }
}

bool Watch::Impl::deliver(const pb::WatchResponse& msg) {
  if (msg.events_size() == 0) return true;
  const size_t max_events = shared_->options.watch_queue_events_max;
  for (const auto& ev : msg.events()) {
    WatchEvent out;
    out.type = ev.type() == pb::Event::DELETE ? WatchEvent::Type::del : WatchEvent::Type::put;
    out.kv = from_pb(ev.kv());
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return cancelled_ || queue_.size() < max_events; });
    if (cancelled_) return false;
    queue_.push_back(std::move(out));
    cv_.notify_all();
  }
  // A message holds whole revisions, so the stream can resume after its last one.
  next_revision_ = msg.events(msg.events_size() - 1).kv().mod_revision() + 1;
  return true;
}

std::error_code Watch::Impl::pump() {
  for (;;) {
    if (cancelled()) return cancelled_code();
    pb::WatchResponse msg;
    auto st = read_message(msg, std::nullopt);
    if (!st) return st.error();
    if (msg.canceled()) {
      if (msg.compact_revision() > 0) {
        CAIRN_LOG_WARN(kLogComponent,
                       "watch: revision %lld is compacted (oldest kept: %lld); re-read and "
                       "watch again",
                       static_cast<long long>(next_revision_),
                       static_cast<long long>(msg.compact_revision()));
        return Errc::out_of_range;
      }
      CAIRN_LOG_WARN(kLogComponent, "watch: cancelled by etcd: %s", msg.cancel_reason().c_str());
      return Errc::io_error;
    }
    if (msg.created()) continue;
    if (!deliver(msg)) return cancelled_code();
  }
}

void Watch::Impl::run() {
  for (;;) {
    auto why = pump();
    if (cancelled()) break;
    if (why != Errc::unavailable) {
      finish(why);
      break;
    }
    conn_->close();
    CAIRN_LOG_WARN(kLogComponent, "watch: stream lost; resuming from revision %lld",
                   static_cast<long long>(next_revision_));
    auto st = reopen();
    if (cancelled()) break;
    if (!st) {
      CAIRN_LOG_WARN(kLogComponent, "watch: ended: %s", st.error().message().c_str());
      finish(st.error());
      break;
    }
  }
  if (conn_) conn_->close();
}

void Watch::Impl::finish(std::error_code why) {
  std::lock_guard lock(mu_);
  if (!end_) end_ = why;
  cv_.notify_all();
}

bool Watch::Impl::cancelled() {
  std::lock_guard lock(mu_);
  return cancelled_;
}

Result<std::optional<WatchEvent>> Watch::Impl::next(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !queue_.empty() || end_.has_value(); });
  if (!queue_.empty()) {
    WatchEvent ev = std::move(queue_.front());
    queue_.pop_front();
    cv_.notify_all();
    return std::optional<WatchEvent>(std::move(ev));
  }
  if (end_) return outcome::failure(*end_);
  return std::optional<WatchEvent>();
}

void Watch::Impl::cancel() {
  bool first = false;
  {
    std::lock_guard lock(mu_);
    if (!cancelled_) {
      first = true;
      cancelled_ = true;
      end_ = cancelled_code();  // wins over whatever the reader would report
      queue_.clear();
      cv_.notify_all();
    }
  }
  // Closing the socket on the reader's own context aborts whatever it waits for.
  if (first) {
    asio::post(ioc_, [this] {
      if (conn_) conn_->close();
    });
  }
  std::lock_guard join_lock(join_mu_);  // every caller returns after the reader ended
  if (thread_.joinable()) {
    CAIRN_ASSERT(thread_.get_id() != std::this_thread::get_id());
    thread_.join();
  }
}

}  // namespace cairn::replication
