// EtcdClient: Cairn's client of etcd's v3 API, the store of cluster state (nodes,
// placement, epochs, leases). Cairn runs no consensus of its own; every decision that
// must be agreed on is a compare-and-swap transaction here.
//
// Speaks etcd's JSON gateway (HTTP/1.1, POST /v3/...) over plain TCP to endpoints given
// as "http://host:port". Owned by whoever needs cluster state, usually one per process; a
// LeaseKeeper must not outlive it, a Watch may. Thread-safe: any thread may call any
// method; concurrent calls use separate pooled connections (at most
// Options::calls_in_flight_max at once, the others wait within their timeout).
//
// Errors (cairn::Errc unless noted):
//   unavailable       no endpoint answered within the timeout. Retry. From txn: it was
//                     sent nowhere. From the other calls (safe to repeat) a put or delete
//                     may have landed; repeating it leaves the same state.
//   io_error          the connection failed after a transaction was sent: it may or may
//                     not have been applied. Re-read, then decide.
//   not_found         get of an absent key; an unknown or expired lease (keepalive, revoke,
//                     put with it).
//   invalid_argument  empty key, malformed endpoint, request etcd rejects as malformed.
//   out_of_range      a revision that is compacted away or in the future.
//   too_large         a reply larger than Options::reply_body_max_bytes.
//   permission_denied etcd has authentication enabled (not supported).
// Failover: an endpoint that cannot be reached (connect fails or times out) is skipped for
// every call; a call that is safe to repeat (everything but txn) also moves to the next
// endpoint when the exchange fails or exceeds attempt_timeout. The client starts each call
// at the endpoint that last answered.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace cairn::replication {

struct KeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;  // revision of the put that created the key
  int64_t mod_revision = 0;     // revision of the latest put
  int64_t version = 0;          // puts since creation (1 after the first)
  int64_t lease = 0;            // attached lease id, 0 if none
};

struct RangeResult {
  std::vector<KeyValue> kvs;  // in key order
  int64_t revision = 0;       // the store's revision the read saw
  bool more = false;          // a limit cut the answer short
  int64_t count = 0;          // keys in the range (ignores the limit)
};

struct RangeOptions {
  int64_t revision = 0;  // read as of this revision; 0 = newest
  int64_t limit = 0;     // at most this many keys; 0 = all
};

// One condition of a transaction: `target(key) op operand`. An absent key has version,
// create_revision and mod_revision 0 (so create_revision == 0 means "does not exist"); a
// value comparison on an absent key is false.
struct Compare {
  enum class Target { version, create_revision, mod_revision, value, lease };
  enum class Op { equal, not_equal, less, greater };
  std::string key;
  Target target = Target::mod_revision;
  Op op = Op::equal;
  int64_t number = 0;  // operand for every target but value
  std::string value;   // operand for Target::value

  static Compare mod_revision(std::string key, Op op, int64_t revision);
  static Compare create_revision(std::string key, Op op, int64_t revision);
  static Compare version(std::string key, Op op, int64_t version);
  static Compare value_is(std::string key, Op op, std::string value);
  static Compare lease_is(std::string key, Op op, int64_t lease_id);
  static Compare absent(std::string key) { return create_revision(std::move(key), Op::equal, 0); }
};

// One operation of a transaction branch. etcd rejects a transaction that writes one key
// twice (invalid_argument).
struct TxnOp {
  enum class Type { put, del, range };
  Type type = Type::range;
  std::string key;
  std::string value;    // put
  int64_t lease = 0;    // put
  bool prefix = false;  // del, range: every key starting with `key`

  static TxnOp put(std::string key, std::string value, int64_t lease_id = 0);
  static TxnOp del(std::string key);
  static TxnOp del_prefix(std::string prefix);
  static TxnOp get(std::string key);
  static TxnOp range(std::string prefix);
};

struct TxnOpResult {
  TxnOp::Type type = TxnOp::Type::range;
  RangeResult range;    // range: the keys read
  int64_t deleted = 0;  // del: keys deleted
};

struct TxnResult {
  bool succeeded = false;                 // every compare held; the success branch ran
  int64_t revision = 0;                   // the store's revision after the transaction
  std::vector<TxnOpResult> responses;     // one per op of the branch that ran, in order
};

struct Lease {
  int64_t id = 0;
  int64_t ttl_s = 0;  // as granted: etcd raises TTLs below its minimum (about 2 s)
};

struct WatchEvent {
  enum class Type { put, del };
  Type type = Type::put;
  KeyValue kv;  // for del: key and mod_revision (the deletion's revision) only
};

// Watch: the events of one key prefix, from a start revision on, in revision order, each
// exactly once. Made by EtcdClient::watch; owns one HTTP connection and one thread that
// reads the stream into a bounded queue (when it is full the reader stops reading, which
// holds etcd back rather than dropping events). When the stream breaks, the thread
// resumes on the next reachable endpoint from the revision after the last event it
// delivered; when none is reachable the watch ends with unavailable.
// next() is for one consumer thread; cancel() may be called from any thread.
class Watch {
 public:
  class Impl;
  explicit Watch(std::unique_ptr<Impl> impl);
  ~Watch();  // cancels
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;

  // The next event; nullopt when none came within `timeout`. After the watch ended:
  // ECANCELED (errno) after cancel(), unavailable when no endpoint could resume it,
  // out_of_range when the revision to resume from was compacted (re-read with range()
  // and watch again). Events queued before an end other than cancel() come first.
  Result<std::optional<WatchEvent>> next(std::chrono::milliseconds timeout);
  // Ends the watch and closes its connection; wakes a blocked next(). Idempotent.
  void cancel();
  // The first revision this watch covers (resolved at creation when 0 was asked for).
  int64_t start_revision() const;

 private:
  std::unique_ptr<Impl> impl_;
};

class EtcdClient {
 public:
  struct Options {
    // Bound on a whole call, failover included.
    std::chrono::milliseconds timeout{5000};
    // Bound on one endpoint's attempt: connecting always; the exchange too for calls that
    // are safe to repeat elsewhere. Lets a call get past a hung endpoint.
    std::chrono::milliseconds attempt_timeout{2000};
    size_t reply_body_max_bytes = 64u << 20;  // also one watch message's limit
    size_t calls_in_flight_max = 16;          // concurrent calls (one connection each)
    size_t idle_connections_max = 4;          // kept open for reuse
    size_t watch_queue_events_max = 4096;     // per Watch
  };

  // `endpoints`: "http://host:port" (a trailing '/' is allowed). A malformed list makes
  // every call fail with invalid_argument.
  explicit EtcdClient(std::vector<std::string> endpoints);
  EtcdClient(std::vector<std::string> endpoints, Options options);
  ~EtcdClient();
  EtcdClient(const EtcdClient&) = delete;
  EtcdClient& operator=(const EtcdClient&) = delete;

  const Options& options() const;

  // not_found when the key is absent.
  Result<KeyValue> get(std::string_view key);
  // Every key starting with `prefix` ("" = the whole keyspace).
  Result<RangeResult> range(std::string_view prefix, RangeOptions options = {});
  // Returns the revision of the write.
  Result<int64_t> put(std::string_view key, std::string_view value, int64_t lease_id = 0);
  // Returns the number of keys deleted (0 when the key was absent).
  Result<int64_t> del(std::string_view key);
  Result<int64_t> del_prefix(std::string_view prefix);
  // Atomically: if every compare holds run `success`, else `failure`. Never repeated on
  // another endpoint once sent (io_error instead: the outcome is unknown).
  Result<TxnResult> txn(const std::vector<Compare>& compares, const std::vector<TxnOp>& success,
                        const std::vector<TxnOp>& failure = {});

  Result<Lease> lease_grant(int64_t ttl_s);
  // Renews the lease once; returns its TTL in seconds. not_found when it has expired or
  // was revoked. The overload bounds this call by `timeout` instead of Options::timeout.
  Result<int64_t> lease_keepalive_once(int64_t lease_id);
  Result<int64_t> lease_keepalive_once(int64_t lease_id, std::chrono::milliseconds timeout);
  // Deletes the lease and every key attached to it. not_found for an unknown lease.
  Status lease_revoke(int64_t lease_id);

  // Watches every key starting with `prefix` from `start_revision` (inclusive; 0 = from
  // now). Returns once etcd confirmed the watch, so every later change is seen.
  Result<std::unique_ptr<Watch>> watch(std::string_view prefix, int64_t start_revision = 0);

  class Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace cairn::replication
