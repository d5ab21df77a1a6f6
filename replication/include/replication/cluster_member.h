// ClusterMember: this node's membership in the cluster, kept in etcd.
//
// The node registers under `/cairn/nodes/<id>`, the key attached to the node's lease
// (LeaseKeeper, TTL 5 s): while the node runs the key stays, when it stops renewing (crash,
// partition) etcd deletes it within the TTL, and a clean stop() revokes the lease so the
// node leaves at once. The value is a cairn.v1.ClusterNode (common/proto/cairn/v1/cluster.proto)
// in protobuf's JSON mapping, readable with `etcdctl get --prefix /cairn/nodes/`; readers
// ignore unknown fields. Capacity, used bytes and volume count are republished every
// refresh_interval (10 s) from the usage callback.
//
// One id, one live node: registration is a create-if-absent transaction. A key already
// held by another lease is either a live node with the same id or this node's own key
// from a run that died without revoking; start() waits up to the lease TTL plus a margin
// for it to expire and then refuses (already_exists, with a message naming the holder).
// A key with no lease is taken over at once (nothing keeps it alive).
//
// After start(), a background thread refreshes the record and, when the lease is lost
// (etcd unreachable for a TTL, or the lease revoked), re-registers with a new lease as
// soon as etcd answers again, logging it; the node keeps serving meanwhile. If another
// node took the id in between, it logs the conflict and keeps retrying.
//
// Owned by the daemon (blockd's main); created after its listeners are bound, since it
// advertises their addresses. Thread-safe: every method may be called from any thread;
// the usage callback runs on start()'s caller and on the member's thread.
// Errors (cairn::Errc): invalid_argument (bad id, endpoints or options), unavailable (etcd
// did not answer within start_timeout), already_exists (the id is held by a live node).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "cairn/v1/cluster.pb.h"
#include "common/result.h"
#include "replication/etcd_client.h"

namespace cairn::replication {

struct NodeUsage {
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t volumes = 0;
};

class ClusterMember {
 public:
  static constexpr const char* kNodesPrefix = "/cairn/nodes/";
  static constexpr size_t kNodeIdMaxBytes = 64;

  using UsageFn = std::function<NodeUsage()>;

  struct Options {
    std::string node_id;                  // 1-64 characters of [a-z0-9_-]
    std::vector<std::string> etcd_endpoints;  // "http://host:port"
    // What other nodes and clients reach this node at (ClusterNode.nbd/api/replication).
    std::string nbd, api, replication;
    UsageFn usage;                        // null: zeros are published
    int64_t lease_ttl_s = 5;
    std::chrono::milliseconds refresh_interval{10'000};
    // Bound on start(): waiting for etcd to answer, and for a stale key to expire.
    std::chrono::milliseconds start_timeout{30'000};
    // Pause between attempts while etcd does not answer: constant at start; after a
    // loss it doubles up to the lease TTL.
    std::chrono::milliseconds retry_interval{1'000};
    // How long past the lease TTL start() waits for a key held by another lease to go.
    std::chrono::milliseconds expiry_margin{2'000};
    std::string key_prefix = kNodesPrefix;  // tests isolate themselves with another prefix
    EtcdClient::Options etcd = default_etcd_options();
  };

  // Calls to etcd are bounded at 2 s (1 s per endpoint): well inside the lease TTL, and
  // short enough for list_nodes() on a control API thread.
  static EtcdClient::Options default_etcd_options();

  // Registers the node and starts its background thread. On failure `error_message` (if
  // given) gets one human line saying why (also logged).
  static Result<std::unique_ptr<ClusterMember>> start(Options options,
                                                      std::string* error_message = nullptr);
  ~ClusterMember();  // stop()
  ClusterMember(const ClusterMember&) = delete;
  ClusterMember& operator=(const ClusterMember&) = delete;

  // Stops the background thread and revokes the lease: the node's key is deleted at once
  // (if etcd does not answer, it expires within the TTL). Idempotent. list_nodes() and
  // etcd() keep working after it.
  void stop();

  // Every registered node (key present = state "up"), sorted by id; a record that does
  // not parse is listed with its id and state "invalid". Errors: those of EtcdClient.
  Result<std::vector<cairn::v1::ClusterNode>> list_nodes();

  const std::string& node_id() const;
  // The lease the node's key is attached to now; 0 while not registered (lease lost and
  // not yet re-registered, or after stop()).
  int64_t lease_id() const;
  bool registered() const;
  // Times the node registered (1 after start(); +1 per re-registration after a loss).
  int registrations() const;
  // The member's etcd client, for the cluster state built on membership (placement,
  // epochs). Lives as long as the member.
  EtcdClient& etcd();

  static bool valid_node_id(std::string_view id);

  class Impl;

 private:
  explicit ClusterMember(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// "http://h1:2379,http://h2:2379" -> one entry per endpoint. invalid_argument when the list
// is empty or an entry is not http://host:port (a trailing '/' is allowed).
Result<std::vector<std::string>> parse_etcd_endpoints(std::string_view comma_list);

}  // namespace cairn::replication
