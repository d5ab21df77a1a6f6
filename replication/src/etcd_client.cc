#include "replication/etcd_client.h"

#include <condition_variable>
#include <mutex>

#include "cairn/v1/etcd.pb.h"
#include "common/assert.h"
#include "common/log.h"
#include "etcd_http.h"
#include "etcd_watch.h"

namespace cairn::replication {

using namespace detail;
namespace pb = cairn::v1::etcd;
namespace outcome = boost::outcome_v2;
using std::chrono::milliseconds;

namespace {

using detail::from_pb;  // KeyValue

RangeResult from_pb(const pb::RangeResponse& r) {
  RangeResult out;
  out.kvs.reserve(r.kvs_size());
  for (const auto& kv : r.kvs()) out.kvs.push_back(from_pb(kv));
  out.revision = r.header().revision();
  out.more = r.more();
  out.count = r.count();
  return out;
}

void set_range(std::string_view prefix, std::string* key, std::string* range_end) {
  // etcd rejects an empty key; "\0".."\0" is its spelling of "every key".
  *key = prefix.empty() ? std::string(1, '\0') : std::string(prefix);
  *range_end = prefix_end(prefix);
}

pb::Compare to_pb(const Compare& c) {
  pb::Compare out;
  out.set_key(c.key);
  switch (c.op) {
    case Compare::Op::equal: out.set_result(pb::Compare::EQUAL); break;
    case Compare::Op::not_equal: out.set_result(pb::Compare::NOT_EQUAL); break;
    case Compare::Op::less: out.set_result(pb::Compare::LESS); break;
    case Compare::Op::greater: out.set_result(pb::Compare::GREATER); break;
  }
  switch (c.target) {
    case Compare::Target::version:
      out.set_target(pb::Compare::VERSION);
      out.set_version(c.number);
      break;
    case Compare::Target::create_revision:
      out.set_target(pb::Compare::CREATE);
      out.set_create_revision(c.number);
      break;
    case Compare::Target::mod_revision:
      out.set_target(pb::Compare::MOD);
      out.set_mod_revision(c.number);
      break;
    case Compare::Target::value:
      out.set_target(pb::Compare::VALUE);
      out.set_value(c.value);
      break;
    case Compare::Target::lease:
      out.set_target(pb::Compare::LEASE);
      out.set_lease(c.number);
      break;
  }
  return out;
}

pb::RequestOp to_pb(const TxnOp& op) {
  pb::RequestOp out;
  switch (op.type) {
    case TxnOp::Type::put: {
      auto* put = out.mutable_request_put();
      put->set_key(op.key);
      put->set_value(op.value);
      put->set_lease(op.lease);
      break;
    }
    case TxnOp::Type::del: {
      auto* del = out.mutable_request_delete_range();
      if (op.prefix)
        set_range(op.key, del->mutable_key(), del->mutable_range_end());
      else
        del->set_key(op.key);
      break;
    }
    case TxnOp::Type::range: {
      auto* range = out.mutable_request_range();
      if (op.prefix)
        set_range(op.key, range->mutable_key(), range->mutable_range_end());
      else
        range->set_key(op.key);
      break;
    }
  }
  return out;
}

bool valid_op(const TxnOp& op) { return op.prefix || !op.key.empty(); }

}  // namespace

// ---- Compare / TxnOp helpers ----

Compare Compare::mod_revision(std::string key, Op op, int64_t revision) {
  return Compare{std::move(key), Target::mod_revision, op, revision, {}};
}
Compare Compare::create_revision(std::string key, Op op, int64_t revision) {
  return Compare{std::move(key), Target::create_revision, op, revision, {}};
}
Compare Compare::version(std::string key, Op op, int64_t version) {
  return Compare{std::move(key), Target::version, op, version, {}};
}
Compare Compare::value_is(std::string key, Op op, std::string value) {
  return Compare{std::move(key), Target::value, op, 0, std::move(value)};
}
Compare Compare::lease_is(std::string key, Op op, int64_t lease_id) {
  return Compare{std::move(key), Target::lease, op, lease_id, {}};
}

TxnOp TxnOp::put(std::string key, std::string value, int64_t lease_id) {
  return TxnOp{Type::put, std::move(key), std::move(value), lease_id, false};
}
TxnOp TxnOp::del(std::string key) { return TxnOp{Type::del, std::move(key), {}, 0, false}; }
TxnOp TxnOp::del_prefix(std::string prefix) {
  return TxnOp{Type::del, std::move(prefix), {}, 0, true};
}
TxnOp TxnOp::get(std::string key) { return TxnOp{Type::range, std::move(key), {}, 0, false}; }
TxnOp TxnOp::range(std::string prefix) {
  return TxnOp{Type::range, std::move(prefix), {}, 0, true};
}

// ---- the call machinery ----

class EtcdClient::Impl {
 public:
  // How a call may be repeated when an endpoint fails after the request went out.
  enum class Retry {
    safe,  // repeating it changes nothing that matters: try the next endpoint
    never  // the outcome is unknown: report io_error
  };

  Impl(std::vector<std::string> endpoints, Options options)
      : shared_(std::make_shared<Shared>()) {
    shared_->options = options;
    shared_->endpoints_valid = !endpoints.empty();
    for (const auto& url : endpoints) {
      auto ep = parse_endpoint(url);
      if (!ep) {
        CAIRN_LOG_ERROR(kLogComponent, "invalid etcd endpoint \"%s\" (expected http://host:port)",
                        url.c_str());
        shared_->endpoints_valid = false;
        continue;
      }
      shared_->endpoints.push_back(std::move(*ep));
    }
    if (endpoints.empty()) CAIRN_LOG_ERROR(kLogComponent, "no etcd endpoint configured");
    CAIRN_ASSERT(options.calls_in_flight_max > 0 && options.watch_queue_events_max > 0);
  }

  const std::shared_ptr<Shared>& shared() const { return shared_; }
  const Options& options() const { return shared_->options; }

  // POSTs `request` as JSON to `target`; returns the body of a 200 reply.
  Result<std::string> call(std::string_view target, const google::protobuf::Message& request,
                           Retry retry, milliseconds timeout);

  template <class Reply>
  Result<Reply> unary(std::string_view target, const google::protobuf::Message& request,
                      Retry retry, milliseconds timeout) {
    CAIRN_TRY(body, call(target, request, retry, timeout));
    Reply reply;
    if (!from_json(body, reply)) {
      CAIRN_LOG_ERROR(kLogComponent, "%.*s: malformed reply from etcd",
                      static_cast<int>(target.size()), target.data());
      return Errc::io_error;
    }
    return reply;
  }

 private:
  struct Pooled {
    explicit Pooled(const Endpoint& ep) : conn(ioc, ep) {}
    asio::io_context ioc;
    HttpConnection conn;
  };

  // Waits for a free call slot until `deadline`.
  bool acquire_slot(Clock::time_point deadline) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_until(lock, deadline,
                        [&] { return in_flight_ < shared_->options.calls_in_flight_max; }))
      return false;
    ++in_flight_;
    return true;
  }
  void release_slot() {
    {
      std::lock_guard lock(mu_);
      --in_flight_;
    }
    cv_.notify_one();
  }
  std::unique_ptr<Pooled> take_idle(size_t ep) {
    std::lock_guard lock(mu_);
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
      if ((*it)->conn.endpoint().url == shared_->endpoints[ep].url) {
        auto pooled = std::move(*it);
        idle_.erase(it);
        return pooled;
      }
    }
    return nullptr;
  }
  void give_back(std::unique_ptr<Pooled> pooled) {
    std::lock_guard lock(mu_);
    if (idle_.size() < shared_->options.idle_connections_max) idle_.push_back(std::move(pooled));
  }

  std::shared_ptr<Shared> shared_;
  std::mutex mu_;
  std::condition_variable cv_;
  size_t in_flight_ = 0;
  std::vector<std::unique_ptr<Pooled>> idle_;
};

Result<std::string> EtcdClient::Impl::call(std::string_view target,
                                           const google::protobuf::Message& request, Retry retry,
                                           milliseconds timeout) {
  if (!shared_->endpoints_valid) return Errc::invalid_argument;
  const auto start = Clock::now();
  const auto overall = start + timeout;
  const auto& opts = shared_->options;
  const int target_len = static_cast<int>(target.size());
  if (!acquire_slot(overall)) {
    CAIRN_LOG_WARN(kLogComponent, "%.*s: %zu calls already in flight for %lld ms", target_len,
                   target.data(), opts.calls_in_flight_max,
                   static_cast<long long>(timeout.count()));
    return Errc::unavailable;
  }
  struct SlotGuard {
    Impl* impl;
    ~SlotGuard() { impl->release_slot(); }
  } slot_guard{this};

  const std::string body = to_json(request);
  const size_t n = shared_->endpoints.size();
  const size_t first = shared_->preferred.load(std::memory_order_relaxed) % n;
  std::string last_failure = "no attempt within the timeout";
  for (size_t i = 0; i < n; ++i) {
    const size_t ep = (first + i) % n;
    const Endpoint& endpoint = shared_->endpoints[ep];
    const auto now = Clock::now();
    if (now >= overall) break;
    const auto attempt_deadline = std::min(overall, now + opts.attempt_timeout);
    const auto exchange_deadline = retry == Retry::safe ? attempt_deadline : overall;
    auto req = make_request(endpoint, target, body);
    // A pooled connection may have been closed by the server while idle; then the request
    // goes once more on a fresh one. A call that must not repeat never takes a pooled one.
    for (int tries = 0; tries < 2; ++tries) {
      std::unique_ptr<Pooled> pooled = retry == Retry::safe ? take_idle(ep) : nullptr;
      const bool reused = pooled != nullptr;
      if (!pooled) {
        pooled = std::make_unique<Pooled>(endpoint);
        auto ec = pooled->conn.connect(attempt_deadline);
        if (ec) {
          last_failure = "cannot connect to " + endpoint.url + ": " + describe(ec);
          CAIRN_LOG_WARN(kLogComponent, "%s", last_failure.c_str());
          break;  // next endpoint: nothing was sent
        }
      }
      http::response_parser<http::string_body> parser;
      parser.body_limit(opts.reply_body_max_bytes);
      auto ec = pooled->conn.write(req, exchange_deadline);
      if (!ec) ec = pooled->conn.read(parser, exchange_deadline);
      if (!ec) {
        auto& res = parser.get();
        const int status = static_cast<int>(res.result_int());
        if (res.keep_alive()) give_back(std::move(pooled));
        if (status == 200) {
          shared_->preferred.store(ep, std::memory_order_relaxed);
          return std::move(res.body());
        }
        std::string message;
        bool transient = false;
        auto code = gateway_error(status, res.body(), message, transient);
        if (transient && retry == Retry::safe) {
          last_failure = endpoint.url + " answered: " + message;
          CAIRN_LOG_WARN(kLogComponent, "%.*s: %s", target_len, target.data(),
                         last_failure.c_str());
          break;  // next endpoint
        }
        shared_->preferred.store(ep, std::memory_order_relaxed);
        if (transient) {
          // e.g. "request timed out": the transaction may still be applied.
          CAIRN_LOG_WARN(kLogComponent, "%.*s on %s: %s (outcome unknown)", target_len,
                         target.data(), endpoint.url.c_str(), message.c_str());
          return Errc::io_error;
        }
        if (code != Errc::not_found)
          CAIRN_LOG_WARN(kLogComponent, "%.*s on %s: %s", target_len, target.data(),
                         endpoint.url.c_str(), message.c_str());
        return code;
      }
      pooled.reset();
      if (ec == http::error::body_limit) {
        CAIRN_LOG_WARN(kLogComponent, "%.*s on %s: reply exceeds %zu bytes", target_len,
                       target.data(), endpoint.url.c_str(), opts.reply_body_max_bytes);
        return Errc::too_large;
      }
      if (reused && !parser.got_some() && is_stale_connection_error(ec)) continue;
      last_failure = std::string(target) + " on " + endpoint.url + ": " + describe(ec);
      if (retry == Retry::never) {
        CAIRN_LOG_WARN(kLogComponent, "%s (outcome unknown)", last_failure.c_str());
        return Errc::io_error;
      }
      CAIRN_LOG_WARN(kLogComponent, "%s", last_failure.c_str());
      break;  // next endpoint
    }
  }
  CAIRN_LOG_WARN(kLogComponent, "%.*s: no etcd endpoint answered within %lld ms (last: %s)",
                 target_len, target.data(), static_cast<long long>(timeout.count()),
                 last_failure.c_str());
  return Errc::unavailable;
}

// ---- EtcdClient ----

EtcdClient::EtcdClient(std::vector<std::string> endpoints)
    : EtcdClient(std::move(endpoints), Options{}) {}

EtcdClient::EtcdClient(std::vector<std::string> endpoints, Options options)
    : impl_(std::make_shared<Impl>(std::move(endpoints), options)) {}

EtcdClient::~EtcdClient() = default;

const EtcdClient::Options& EtcdClient::options() const { return impl_->options(); }

Result<KeyValue> EtcdClient::get(std::string_view key) {
  if (key.empty()) return Errc::invalid_argument;
  pb::RangeRequest req;
  req.set_key(std::string(key));
  CAIRN_TRY(reply, impl_->unary<pb::RangeResponse>("/v3/kv/range", req, Impl::Retry::safe,
                                                   options().timeout));
  if (reply.kvs_size() == 0) return Errc::not_found;
  return from_pb(reply.kvs(0));
}

Result<RangeResult> EtcdClient::range(std::string_view prefix, RangeOptions options) {
  if (options.revision < 0 || options.limit < 0) return Errc::invalid_argument;
  pb::RangeRequest req;
  set_range(prefix, req.mutable_key(), req.mutable_range_end());
  req.set_revision(options.revision);
  req.set_limit(options.limit);
  CAIRN_TRY(reply, impl_->unary<pb::RangeResponse>("/v3/kv/range", req, Impl::Retry::safe,
                                                   this->options().timeout));
  return from_pb(reply);
}

Result<int64_t> EtcdClient::put(std::string_view key, std::string_view value, int64_t lease_id) {
  if (key.empty()) return Errc::invalid_argument;
  pb::PutRequest req;
  req.set_key(std::string(key));
  req.set_value(std::string(value));
  req.set_lease(lease_id);
  // Safe to repeat: a second put of the same value leaves the same state.
  CAIRN_TRY(reply, impl_->unary<pb::PutResponse>("/v3/kv/put", req, Impl::Retry::safe,
                                                 options().timeout));
  return reply.header().revision();
}

Result<int64_t> EtcdClient::del(std::string_view key) {
  if (key.empty()) return Errc::invalid_argument;
  pb::DeleteRangeRequest req;
  req.set_key(std::string(key));
  CAIRN_TRY(reply, impl_->unary<pb::DeleteRangeResponse>("/v3/kv/deleterange", req,
                                                         Impl::Retry::safe, options().timeout));
  return reply.deleted();
}

Result<int64_t> EtcdClient::del_prefix(std::string_view prefix) {
  pb::DeleteRangeRequest req;
  set_range(prefix, req.mutable_key(), req.mutable_range_end());
  CAIRN_TRY(reply, impl_->unary<pb::DeleteRangeResponse>("/v3/kv/deleterange", req,
                                                         Impl::Retry::safe, options().timeout));
  return reply.deleted();
}

Result<TxnResult> EtcdClient::txn(const std::vector<Compare>& compares,
                                  const std::vector<TxnOp>& success,
                                  const std::vector<TxnOp>& failure) {
  pb::TxnRequest req;
  for (const auto& c : compares) {
    if (c.key.empty()) return Errc::invalid_argument;
    *req.add_compare() = to_pb(c);
  }
  for (const auto& op : success) {
    if (!valid_op(op)) return Errc::invalid_argument;
    *req.add_success() = to_pb(op);
  }
  for (const auto& op : failure) {
    if (!valid_op(op)) return Errc::invalid_argument;
    *req.add_failure() = to_pb(op);
  }
  CAIRN_TRY(reply, impl_->unary<pb::TxnResponse>("/v3/kv/txn", req, Impl::Retry::never,
                                                 options().timeout));
  TxnResult out;
  out.succeeded = reply.succeeded();
  out.revision = reply.header().revision();
  const auto& ops = out.succeeded ? success : failure;
  if (static_cast<size_t>(reply.responses_size()) != ops.size()) {
    CAIRN_LOG_ERROR(kLogComponent, "txn: %d responses for %zu operations", reply.responses_size(),
                    ops.size());
    return Errc::io_error;
  }
  for (const auto& r : reply.responses()) {
    TxnOpResult op;
    if (r.has_response_range()) {
      op.type = TxnOp::Type::range;
      op.range = from_pb(r.response_range());
    } else if (r.has_response_delete_range()) {
      op.type = TxnOp::Type::del;
      op.deleted = r.response_delete_range().deleted();
    } else {
      op.type = TxnOp::Type::put;
    }
    out.responses.push_back(std::move(op));
  }
  return out;
}

Result<Lease> EtcdClient::lease_grant(int64_t ttl_s) {
  if (ttl_s <= 0) return Errc::invalid_argument;
  pb::LeaseGrantRequest req;
  req.set_ttl(ttl_s);
  // Safe to repeat: a lease granted by a lost attempt expires on its own.
  CAIRN_TRY(reply, impl_->unary<pb::LeaseGrantResponse>("/v3/lease/grant", req,
                                                        Impl::Retry::safe, options().timeout));
  if (!reply.error().empty() || reply.id() == 0) {
    CAIRN_LOG_WARN(kLogComponent, "lease grant refused: %s", reply.error().c_str());
    return Errc::io_error;
  }
  return Lease{reply.id(), reply.ttl()};
}

Result<int64_t> EtcdClient::lease_keepalive_once(int64_t lease_id) {
  return lease_keepalive_once(lease_id, options().timeout);
}

Result<int64_t> EtcdClient::lease_keepalive_once(int64_t lease_id, milliseconds timeout) {
  if (lease_id == 0) return Errc::invalid_argument;
  pb::LeaseKeepAliveRequest req;
  req.set_id(lease_id);
  // A streaming call: one request in the body gives one {"result": ...} line back, and
  // the stream ends when etcd has read the end of the body.
  CAIRN_TRY(body, impl_->call("/v3/lease/keepalive", req, Impl::Retry::safe, timeout));
  std::string_view text = body;
  text = text.substr(0, text.find('\n'));
  pb::LeaseKeepAliveStreamMessage msg;
  if (!from_json(text, msg)) {
    CAIRN_LOG_ERROR(kLogComponent, "lease keepalive: malformed reply from etcd");
    return Errc::io_error;
  }
  if (msg.has_error()) {
    CAIRN_LOG_WARN(kLogComponent, "lease keepalive %lld: %s", static_cast<long long>(lease_id),
                   msg.error().message().c_str());
    return grpc_error(msg.error().grpc_code() != 0 ? msg.error().grpc_code() : 2);
  }
  // etcd answers an expired or unknown lease with TTL 0 rather than an error.
  if (msg.result().ttl() <= 0) return Errc::not_found;
  return msg.result().ttl();
}

Status EtcdClient::lease_revoke(int64_t lease_id) {
  if (lease_id == 0) return Errc::invalid_argument;
  pb::LeaseRevokeRequest req;
  req.set_id(lease_id);
  CAIRN_TRY(impl_->unary<pb::LeaseRevokeResponse>("/v3/lease/revoke", req, Impl::Retry::safe,
                                                  options().timeout));
  return ok();
}

Result<std::unique_ptr<Watch>> EtcdClient::watch(std::string_view prefix,
                                                 int64_t start_revision) {
  if (!impl_->shared()->endpoints_valid || start_revision < 0) return Errc::invalid_argument;
  std::string key, range_end;
  set_range(prefix, &key, &range_end);
  auto impl = std::make_unique<Watch::Impl>(impl_->shared(), std::move(key), std::move(range_end),
                                            start_revision);
  CAIRN_TRY(impl->start());
  return std::make_unique<Watch>(std::move(impl));
}

}  // namespace cairn::replication
