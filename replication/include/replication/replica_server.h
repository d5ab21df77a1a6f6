// ReplicaServer: the replica side of the replication link (--replication-listen). Volumes'
// primaries on other nodes connect here and send their writes (wire format:
// replication/link_protocol.h, docs/FORMAT-replication.md); this node applies them to its
// own copy of each volume and replies once its engine completed them.
//
// Fencing: every HELLO and request is checked against the EpochFence kept in
// Options::state_dir; requests of an epoch older than the highest a primary has presented
// for the volume are refused with ESTALE and change nothing.
// Threads: one Reactor thread (its own io_uring ring) runs every connection and their
// engine I/O. Bounds: connections_max connections (more are closed at accept), per
// connection kInflightMax requests executing at once (the reader waits beyond that),
// payloads of at most link::kDataMaxBytes. A malformed request gets EINVAL and the
// connection is closed; nothing is applied for it.
// Owned by the daemon (blockd's main): start() once, stop() before the volume engine goes.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/result.h"
#include "common/volume.h"

namespace cairn::replication {

class ReplicaServer {
 public:
  static constexpr unsigned kInflightMax = 64;

  struct Options {
    std::string state_dir;  // the EpochFence's files
    // Opens this node's copy of `name`, creating it with `size_bytes` when absent (then
    // *created = true) and growing it when smaller. Called on the server's thread.
    std::function<Result<std::shared_ptr<Volume>>(const std::string& name, uint64_t size_bytes,
                                                  bool* created)>
        open_volume;
    // Snapshots this node's copy (SNAPSHOT request). Null: SNAPSHOT answers EOPNOTSUPP.
    std::function<Status(const std::string& volume, const std::string& snapshot)> snapshot;
    // Deletes this node's copy of a volume (it belongs to a deleted volume of the same
    // name, see HELLO's incarnation); not_found is fine.
    std::function<Status(const std::string& volume)> delete_volume;
    // Deletes a snapshot of this node's copy (SNAPSHOT_DELETE); not_found is an error the
    // primary tolerates. Null: EOPNOTSUPP.
    std::function<Status(const std::string& volume, const std::string& snapshot)> delete_snapshot;
    unsigned connections_max = 256;
  };

  explicit ReplicaServer(Options options);
  ~ReplicaServer();  // stop()
  ReplicaServer(const ReplicaServer&) = delete;
  ReplicaServer& operator=(const ReplicaServer&) = delete;

  // Opens the fence, binds host:port (0 = ephemeral) and starts serving. Call at most once.
  Status start(const std::string& host, uint16_t port);
  // Closes the listener and every connection (requests executing finish first), joins.
  // Idempotent.
  void stop();
  uint16_t port() const;
  uint64_t accepted() const;
  // The highest epoch admitted for `volume` (0 when none).
  uint64_t epoch(const std::string& volume) const;
  // This node's own use of the fence: a node about to serve `volume` as primary at `epoch`
  // admits it here first, so that an older primary can no longer write to this copy. A
  // copy kept for another `incarnation` is deleted first (call before opening the copy).
  // Errors: those of EpochFence::admit; unavailable before start().
  Status admit_epoch(const std::string& volume, uint64_t epoch, uint32_t incarnation = 0);
  // Drops the volume's fence record (its copy was deleted).
  void forget_epoch(const std::string& volume);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cairn::replication
