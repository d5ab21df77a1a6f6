// ReplicationListener: the listening socket of the replication link (HOST:PORT from
// blockd's --replication-listen). A placeholder for now: it accepts each connection and
// closes it at once, so that the port a node advertises in etcd is really bound and
// reachable. The replica protocol will be served here (docs/PLAN-replication.md, step 4).
//
// Owned by the daemon. Runs one thread with its own io_context. start() and stop() are
// called by the owner from one thread; port() from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "common/result.h"

namespace cairn::replication {

class ReplicationListener {
 public:
  ReplicationListener();
  ~ReplicationListener();  // stop()
  ReplicationListener(const ReplicationListener&) = delete;
  ReplicationListener& operator=(const ReplicationListener&) = delete;

  // Binds host:port (port 0 = ephemeral) and starts accepting. Call at most once. Fails
  // with the bind/listen errno, or invalid_argument when host does not resolve.
  Status start(const std::string& host, uint16_t port);
  // Closes the listener and joins the thread. Idempotent.
  void stop();
  // The bound port once start() succeeded, else 0.
  uint16_t port() const;
  // Connections accepted (and closed) so far.
  uint64_t accepted() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cairn::replication
