#include "replication/cluster_member.h"

#include <google/protobuf/util/json_util.h>

#include <condition_variable>
#include <ctime>
#include <mutex>
#include <optional>
#include <thread>

#include "common/assert.h"
#include "common/log.h"
#include "etcd_http.h"
#include "replication/lease_keeper.h"

namespace cairn::replication {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
constexpr const char* kLog = "cluster";
// While a stale key is waited on, it is re-checked this often.
constexpr milliseconds kHolderPoll{250};

int64_t unix_now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string utc_time(int64_t unix_s) {
  if (unix_s <= 0) return "?";
  time_t t = static_cast<time_t>(unix_s);
  tm utc{};
  gmtime_r(&t, &utc);
  char buf[32];
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return buf;
}

std::string lease_hex(int64_t lease) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%llx", static_cast<unsigned long long>(lease));
  return buf;
}

// LeaseKeeper's loss reasons, for the log.
std::string loss_reason(std::error_code why) {
  if (why == Errc::not_found) return "etcd expired or revoked it";
  if (why == Errc::unavailable) return "no keepalive reached etcd for a whole TTL";
  return why.message();
}

std::optional<cairn::v1::ClusterNode> parse_record(const std::string& json) {
  cairn::v1::ClusterNode node;
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = true;  // written by a newer node
  if (!google::protobuf::util::JsonStringToMessage(json, &node, opts).ok()) return std::nullopt;
  return node;
}

std::string comma_joined(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ",") + p;
  return out;
}

}  // namespace

EtcdClient::Options ClusterMember::default_etcd_options() {
  EtcdClient::Options o;
  o.timeout = milliseconds(2000);
  o.attempt_timeout = milliseconds(1000);
  return o;
}

bool ClusterMember::valid_node_id(std::string_view id) {
  if (id.empty() || id.size() > kNodeIdMaxBytes) return false;
  for (char c : id) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) return false;
  }
  return true;
}

Result<std::vector<std::string>> parse_etcd_endpoints(std::string_view comma_list) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    const size_t comma = comma_list.find(',', start);
    std::string_view entry = comma_list.substr(start, comma == std::string_view::npos ? comma : comma - start);
    if (!detail::parse_endpoint(entry)) return Errc::invalid_argument;
    out.emplace_back(entry);
    if (comma == std::string_view::npos) return out;
    start = comma + 1;
  }
}

class ClusterMember::Impl {
 public:
  explicit Impl(Options options)
      : options_(std::move(options)),
        key_(options_.key_prefix + options_.node_id),
        started_unix_s_(unix_now_s()),
        etcd_(std::make_unique<EtcdClient>(options_.etcd_endpoints, options_.etcd)) {}

  ~Impl() { stop(); }

  // Registers for the first time (bounded by start_timeout); see the header.
  Status join(std::string* why) {
    const auto deadline = Clock::now() + options_.start_timeout;
    std::optional<Clock::time_point> holder_deadline;
    std::optional<KeyValue> holder;
    std::error_code last_error = Errc::unavailable;
    bool warned = false;
    for (;;) {
      if (keeper_ && keeper_->lost()) keeper_.reset();
      if (!keeper_) {
        auto keeper = new_keeper();
        if (keeper) {
          keeper_ = std::move(keeper.value());
        } else {
          last_error = keeper.error();
        }
      }
      if (keeper_) {
        auto claim = try_claim(keeper_->lease_id(), 0);
        if (claim && !claim.value()) {
          std::lock_guard lock(mu_);
          lease_id_ = keeper_->lease_id();
          registrations_ = 1;
          CAIRN_LOG_INFO(kLog, "node %s registered at %s (lease %s, ttl %lld s)",
                         options_.node_id.c_str(), key_.c_str(), lease_hex(lease_id_).c_str(),
                         static_cast<long long>(keeper_->ttl_s()));
          return ok();
        }
        if (claim) {
          holder = claim.value();
          if (!holder_deadline) {
            const auto wait = std::chrono::seconds(std::max(keeper_->ttl_s(), options_.lease_ttl_s)) +
                              options_.expiry_margin;
            holder_deadline = Clock::now() + wait;
            CAIRN_LOG_INFO(kLog,
                           "%s is held by lease %s (%s); waiting up to %lld ms for it to expire "
                           "(the key of an earlier run of this node expires, a live node's does not)",
                           key_.c_str(), lease_hex(holder->lease).c_str(),
                           describe_holder(*holder).c_str(),
                           static_cast<long long>(std::chrono::duration_cast<milliseconds>(wait).count()));
          }
          if (Clock::now() >= *holder_deadline) return fail(Errc::already_exists, held_message(*holder), why);
        } else {
          last_error = claim.error();
        }
      }
      if (last_error == Errc::invalid_argument || last_error == Errc::permission_denied) {
        return fail(last_error, "etcd at " + comma_joined(options_.etcd_endpoints) + " refused to register node " +
                                    options_.node_id + ": " + last_error.message(), why);
      }
      const milliseconds pause = holder ? kHolderPoll : options_.retry_interval;
      if (Clock::now() + pause > deadline) {
        if (holder) return fail(Errc::already_exists, held_message(*holder), why);
        return fail(Errc::unavailable,
                    "etcd at " + comma_joined(options_.etcd_endpoints) + " did not answer within " +
                        std::to_string(options_.start_timeout.count() / 1000) + " s (" +
                        last_error.message() + "); is etcd running?", why);
      }
      if (!holder && !warned) {
        warned = true;
        CAIRN_LOG_WARN(kLog, "etcd at %s does not answer (%s); retrying for up to %lld s",
                       comma_joined(options_.etcd_endpoints).c_str(), last_error.message().c_str(),
                       static_cast<long long>(options_.start_timeout.count() / 1000));
      }
      std::this_thread::sleep_for(pause);
    }
  }

  void start_thread() {
    thread_ = std::thread([this] { run(); });
  }

  void stop() {
    std::lock_guard stop_lock(stop_mu_);
    if (stopped_) return;
    stopped_ = true;
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    bool joined = false;
    {
      std::lock_guard lock(mu_);
      lease_id_ = 0;
      joined = registrations_ > 0;
    }
    if (!keeper_) return;
    const int64_t lease = keeper_->lease_id();
    auto revoked = keeper_->revoke();
    keeper_.reset();
    if (!joined) return;  // start() failed: the lease it granted is simply given back
    if (revoked) {
      CAIRN_LOG_INFO(kLog, "node %s left the cluster (lease %s revoked)", options_.node_id.c_str(),
                     lease_hex(lease).c_str());
    } else if (revoked.error() == Errc::not_found) {
      CAIRN_LOG_INFO(kLog, "node %s left the cluster (lease %s had already expired)",
                     options_.node_id.c_str(), lease_hex(lease).c_str());
    } else {
      CAIRN_LOG_WARN(kLog, "node %s: cannot revoke lease %s (%s); its key expires within %lld s",
                     options_.node_id.c_str(), lease_hex(lease).c_str(),
                     revoked.error().message().c_str(), static_cast<long long>(options_.lease_ttl_s));
    }
  }

  Result<std::vector<cairn::v1::ClusterNode>> list_nodes() {
    CAIRN_TRY(range, etcd_->range(options_.key_prefix));
    std::vector<cairn::v1::ClusterNode> nodes;
    nodes.reserve(range.kvs.size());
    for (const KeyValue& kv : range.kvs) {
      const std::string id = kv.key.substr(options_.key_prefix.size());
      auto node = parse_record(kv.value);
      if (!node || node->id() != id) {
        CAIRN_LOG_WARN(kLog, "%s: unreadable node record", kv.key.c_str());
        cairn::v1::ClusterNode invalid;
        invalid.set_id(id);
        invalid.set_state("invalid");
        nodes.push_back(std::move(invalid));
        continue;
      }
      node->set_state("up");
      nodes.push_back(std::move(*node));
    }
    return nodes;
  }

  const std::string& node_id() const { return options_.node_id; }
  EtcdClient& etcd() { return *etcd_; }

  int64_t lease_id() const {
    std::lock_guard lock(mu_);
    return lease_id_;
  }
  int registrations() const {
    std::lock_guard lock(mu_);
    return registrations_;
  }

 private:
  Status fail(std::error_code ec, const std::string& message, std::string* why) {
    CAIRN_LOG_ERROR(kLog, "node %s: %s", options_.node_id.c_str(), message.c_str());
    if (why) *why = message;
    return ec;
  }

  std::string record() const {
    const NodeUsage usage = options_.usage ? options_.usage() : NodeUsage{};
    cairn::v1::ClusterNode node;
    node.set_id(options_.node_id);
    node.set_nbd(options_.nbd);
    node.set_api(options_.api);
    node.set_replication(options_.replication);
    node.set_capacity_bytes(usage.capacity_bytes);
    node.set_used_bytes(usage.used_bytes);
    node.set_volumes(usage.volumes);
    node.set_started_unix_s(started_unix_s_);
    node.set_updated_unix_s(unix_now_s());
    google::protobuf::util::JsonPrintOptions opts;
    opts.always_print_primitive_fields = true;
    std::string out;
    CAIRN_ASSERT(google::protobuf::util::MessageToJsonString(node, &out, opts).ok());
    return out;
  }

  static std::string describe_holder(const KeyValue& kv) {
    auto node = parse_record(kv.value);
    if (!node) return "unreadable record";
    return "nbd=" + (node->nbd().empty() ? std::string("none") : node->nbd()) + " api=" + node->api() +
           " started " + utc_time(node->started_unix_s());
  }

  std::string held_message(const KeyValue& kv) const {
    return "node id \"" + options_.node_id + "\" is already registered by a live node (" + key_ +
           ", lease " + lease_hex(kv.lease) + ", " + describe_holder(kv) +
           "); another blockd with --node-id " + options_.node_id +
           " is running: stop it or choose another id";
  }

  Result<std::unique_ptr<LeaseKeeper>> new_keeper() {
    uint64_t generation = 0;
    {
      std::lock_guard lock(mu_);
      generation = ++keeper_generation_;
      lost_ = false;
    }
    return LeaseKeeper::start(*etcd_, options_.lease_ttl_s, [this, generation](std::error_code why) {
      {
        std::lock_guard lock(mu_);
        if (generation != keeper_generation_) return;
        lost_ = true;
        lost_reason_ = why;
      }
      cv_.notify_all();
    });
  }

  // One attempt to make the key ours under `lease`. nullopt: registered (the key now holds
  // our record under `lease`). A KeyValue: the key is held by another live lease. A key
  // with no lease, or under `previous_lease` (ours, lost), is taken over.
  Result<std::optional<KeyValue>> try_claim(int64_t lease, int64_t previous_lease) {
    const std::string value = record();
    for (int attempt = 0; attempt < 4; ++attempt) {  // bounded: the key may change under us
      CAIRN_TRY(created, etcd_->txn({Compare::absent(key_)}, {TxnOp::put(key_, value, lease)},
                                    {TxnOp::get(key_)}));
      if (created.succeeded) return std::optional<KeyValue>();
      if (created.responses.empty() || created.responses[0].range.kvs.empty()) continue;
      const KeyValue kv = created.responses[0].range.kvs[0];
      if (kv.lease == lease) {
        // An earlier attempt of ours landed although its answer was lost: refresh it.
        CAIRN_TRY(put, etcd_->txn({Compare::lease_is(key_, Compare::Op::equal, lease)},
                                  {TxnOp::put(key_, value, lease)}));
        if (put.succeeded) return std::optional<KeyValue>();
        continue;
      }
      if (kv.lease != 0 && kv.lease != previous_lease) return std::optional<KeyValue>(kv);
      if (kv.lease != 0) {
        // Our own lost lease still holds the key: revoking it deletes the key.
        auto revoked = etcd_->lease_revoke(kv.lease);
        if (!revoked && revoked.error() != Errc::not_found) return revoked.error();
        continue;
      }
      CAIRN_LOG_WARN(kLog, "%s has no lease (written by hand?); taking it over", key_.c_str());
      CAIRN_TRY(taken, etcd_->txn({Compare::mod_revision(key_, Compare::Op::equal, kv.mod_revision)},
                                  {TxnOp::put(key_, value, lease)}));
      if (taken.succeeded) return std::optional<KeyValue>();
    }
    return Errc::busy;  // the key kept changing: try again later
  }

  // Republishes usage under the current lease. False when the key is no longer ours
  // (deleted by hand, or taken): the caller registers again.
  bool refresh(int64_t lease) {
    auto put = etcd_->txn({Compare::lease_is(key_, Compare::Op::equal, lease)},
                          {TxnOp::put(key_, record(), lease)});
    if (!put) {
      if (!refresh_warned_) {
        refresh_warned_ = true;
        CAIRN_LOG_WARN(kLog, "node %s: cannot refresh %s (%s); still serving, retrying",
                       options_.node_id.c_str(), key_.c_str(), put.error().message().c_str());
      }
      return true;
    }
    refresh_warned_ = false;
    if (put.value().succeeded) return true;
    CAIRN_LOG_WARN(kLog, "node %s: %s vanished or changed hands while lease %s is alive; registering again",
                   options_.node_id.c_str(), key_.c_str(), lease_hex(lease).c_str());
    return false;
  }

  // The member's thread: refreshes, and re-registers after a loss. Retries never end
  // while the node runs (backing off from retry_interval up to the lease TTL); each state
  // change is logged once.
  void run() {
    const milliseconds backoff_max = std::max(options_.retry_interval, milliseconds(options_.lease_ttl_s * 1000));
    milliseconds backoff = options_.retry_interval;
    auto retry_later = [&] {
      const auto at = Clock::now() + backoff;
      backoff = std::min(backoff * 2, backoff_max);
      return at;
    };
    auto next_refresh = Clock::now() + options_.refresh_interval;
    auto wake = next_refresh;
    int64_t lease = lease_id();  // registered under this lease; 0 = not registered
    int64_t previous_lease = 0;  // the lease lost last (may still hold the key)
    std::error_code lost_reason;
    bool warned = false;
    for (;;) {
      bool lost = false;
      {
        std::unique_lock lock(mu_);
        cv_.wait_until(lock, wake, [&] { return stopping_ || lost_; });
        if (stopping_) return;
        if (lost_) {
          lost = true;
          lost_ = false;
          lost_reason = lost_reason_;
          lease_id_ = 0;
        }
      }
      if (lost && keeper_) {
        previous_lease = keeper_->lease_id();
        lease = 0;
        CAIRN_LOG_WARN(kLog, "node %s lost lease %s (%s); registering again once etcd answers",
                       options_.node_id.c_str(), lease_hex(previous_lease).c_str(),
                       loss_reason(lost_reason).c_str());
        keeper_.reset();  // its thread has ended; mu_ is not held here
      }
      if (!keeper_) {
        auto keeper = new_keeper();
        if (!keeper) {
          if (!warned) {
            warned = true;
            CAIRN_LOG_WARN(kLog, "node %s: etcd does not answer (%s); still serving, retrying",
                           options_.node_id.c_str(), keeper.error().message().c_str());
          }
          wake = retry_later();
          continue;
        }
        keeper_ = std::move(keeper.value());
      }
      if (lease == 0) {
        auto claim = try_claim(keeper_->lease_id(), previous_lease);
        if (claim && !claim.value()) {
          lease = keeper_->lease_id();
          warned = false;
          backoff = options_.retry_interval;
          int registrations = 0;
          {
            std::lock_guard lock(mu_);
            lease_id_ = lease;
            registrations = ++registrations_;
          }
          CAIRN_LOG_INFO(kLog, "node %s registered again at %s with lease %s (registration %d%s%s)",
                         options_.node_id.c_str(), key_.c_str(), lease_hex(lease).c_str(),
                         registrations, previous_lease ? ", after losing lease " : "",
                         previous_lease ? lease_hex(previous_lease).c_str() : "");
          previous_lease = 0;
          next_refresh = Clock::now() + options_.refresh_interval;
          wake = next_refresh;
          continue;
        }
        if (!warned) {
          warned = true;
          if (claim) {
            CAIRN_LOG_ERROR(kLog, "node %s: %s; retrying", options_.node_id.c_str(),
                            held_message(*claim.value()).c_str());
          } else {
            CAIRN_LOG_WARN(kLog, "node %s: cannot register (%s); still serving, retrying",
                           options_.node_id.c_str(), claim.error().message().c_str());
          }
        }
        wake = retry_later();
        continue;
      }
      if (Clock::now() >= next_refresh) {
        if (!refresh(lease)) {
          lease = 0;
          std::lock_guard lock(mu_);
          lease_id_ = 0;
        }
        next_refresh = Clock::now() + options_.refresh_interval;
      }
      wake = lease == 0 ? Clock::now() : next_refresh;
    }
  }

  const Options options_;
  const std::string key_;
  const int64_t started_unix_s_;
  const std::unique_ptr<EtcdClient> etcd_;  // outlives keeper_ (declared before it)

  // Used by join() before the thread exists, then by the thread, then by stop() after
  // joining it: never by two threads at once.
  std::unique_ptr<LeaseKeeper> keeper_;
  bool refresh_warned_ = false;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  uint64_t keeper_generation_ = 0;  // the keeper whose loss counts
  bool lost_ = false;               // that keeper reported loss
  std::error_code lost_reason_;
  int64_t lease_id_ = 0;            // registered under this lease; 0 = not registered
  int registrations_ = 0;

  std::thread thread_;
  std::mutex stop_mu_;
  bool stopped_ = false;
};

Result<std::unique_ptr<ClusterMember>> ClusterMember::start(Options options, std::string* error_message) {
  auto invalid = [&](const std::string& message) -> Result<std::unique_ptr<ClusterMember>> {
    CAIRN_LOG_ERROR(kLog, "%s", message.c_str());
    if (error_message) *error_message = message;
    return Errc::invalid_argument;
  };
  if (!valid_node_id(options.node_id)) {
    return invalid("invalid node id \"" + options.node_id + "\": use 1-" +
                   std::to_string(kNodeIdMaxBytes) + " characters of [a-z0-9_-]");
  }
  if (options.etcd_endpoints.empty()) return invalid("no etcd endpoint given");
  for (const auto& e : options.etcd_endpoints) {
    if (!detail::parse_endpoint(e)) return invalid("invalid etcd endpoint \"" + e + "\" (expected http://host:port)");
  }
  if (options.lease_ttl_s <= 0 || options.refresh_interval.count() <= 0 ||
      options.retry_interval.count() <= 0 || options.key_prefix.empty()) {
    return invalid("invalid cluster membership options");
  }
  auto impl = std::make_unique<Impl>(std::move(options));
  CAIRN_TRY(impl->join(error_message));
  impl->start_thread();
  return std::unique_ptr<ClusterMember>(new ClusterMember(std::move(impl)));
}

ClusterMember::ClusterMember(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ClusterMember::~ClusterMember() = default;
void ClusterMember::stop() { impl_->stop(); }
Result<std::vector<cairn::v1::ClusterNode>> ClusterMember::list_nodes() { return impl_->list_nodes(); }
const std::string& ClusterMember::node_id() const { return impl_->node_id(); }
int64_t ClusterMember::lease_id() const { return impl_->lease_id(); }
bool ClusterMember::registered() const { return impl_->lease_id() != 0; }
int ClusterMember::registrations() const { return impl_->registrations(); }
EtcdClient& ClusterMember::etcd() { return impl_->etcd(); }

}  // namespace cairn::replication
