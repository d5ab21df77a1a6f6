// LeaseKeeper: a node's liveness in etcd. Grants a lease, keeps it alive from its own
// thread (a keepalive every ttl/3, retried sooner after a failure), and reports loss once:
// etcd says the lease is gone, or no keepalive succeeded for a whole TTL. That TTL is
// counted from when the last successful keepalive was *sent*, so the keeper declares loss
// no later than etcd can expire the lease: a node that stops acting as an owner on loss
// never overlaps with the next owner (up to the clock rates of the two machines).
// Keys put with lease_id() vanish with the lease.
//
// Owned by the node; must not outlive its EtcdClient. on_loss runs on the keeper's
// thread and must not destroy the keeper; after it the thread ends (the owner grants a
// new lease with a new keeper: a lost lease never comes back). Methods are thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>

#include "common/result.h"
#include "replication/etcd_client.h"

namespace cairn::replication {

class LeaseKeeper {
 public:
  // `reason`: not_found (etcd expired or revoked the lease) or unavailable (no keepalive
  // got through for a TTL).
  using LossCallback = std::function<void(std::error_code reason)>;

  // Grants a lease of `ttl_s` seconds (etcd may raise it) and starts keeping it alive.
  static Result<std::unique_ptr<LeaseKeeper>> start(EtcdClient& client, int64_t ttl_s,
                                                    LossCallback on_loss);
  ~LeaseKeeper();  // stop()
  LeaseKeeper(const LeaseKeeper&) = delete;
  LeaseKeeper& operator=(const LeaseKeeper&) = delete;

  int64_t lease_id() const { return lease_.id; }
  int64_t ttl_s() const { return lease_.ttl_s; }
  bool lost() const;

  // Stops keeping the lease alive (it expires within its TTL). Idempotent; no callback.
  void stop();
  // stop(), then revoke the lease at once (its keys are deleted).
  Status revoke();

 private:
  LeaseKeeper(EtcdClient& client, Lease lease, std::chrono::steady_clock::time_point granted_at,
              LossCallback on_loss);
  void run();

  EtcdClient& client_;
  const Lease lease_;
  const LossCallback on_loss_;
  std::chrono::steady_clock::time_point expires_at_;  // our conservative view of etcd's

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  bool lost_ = false;
  std::mutex join_mu_;
  std::thread thread_;
};

}  // namespace cairn::replication
