// ClusterVolumes: this node's part in the cluster's replicated volumes (cluster mode).
//
// One agent thread keeps the node's view in line with etcd: it watches `/cairn/` (and
// re-reads every poll_interval as a backstop) and, for every volume record
// (VolumeRegistry):
//   - primary == this node, not served yet: activates it. Opens the local copy, raises the
//     local fence to the record's epoch, connects to each in-sync replica (HELLO with the
//     epoch: this fences out any older primary), records unreachable ones out (CAS), then
//     serves it as a ReplicatedVolume. When the epoch is new here (takeover, attach), the
//     other replicas are resynced in full: writes in flight at the change may have reached
//     some of them only.
//   - served here but the record names another primary or a newer epoch, or this node lost
//     its lease: fences and drops it (NBD clients get errors; new ones are told the
//     primary).
//   - the primary's node is gone (its lease expired) and this node is the in-sync replica
//     with the lowest id: takes over by CAS (epoch + 1), then activates.
//   - out replicas of volumes served here: reconnects them and resyncs them in the
//     background on the resync Reactor (rate: the record's rebuild_rate_bytes_per_s).
//   - a record deleted (watch event): deletes the local copy, its fence and dirty maps.
// The control API calls create/attach/info/list/remove/set_rebuild_rate from its thread;
// the NBD server calls open() from its Reactors. Thread-safe.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cairn/v1/cluster.pb.h"
#include "cairn/v1/volume.pb.h"
#include "common/result.h"
#include "common/volume.h"
#include "replication/cluster_member.h"

namespace cairn::replication {

class ClusterVolumes {
 public:
  static constexpr uint32_t kDefaultReplicas = 3;

  struct Options {
    ClusterMember* member = nullptr;  // must outlive this object
    std::string state_dir;            // dirty maps: <state_dir>/<volume>.<node>.dirty
    // This node's copy of `name`: created with `size_bytes` when absent (*created = true),
    // grown when smaller.
    std::function<Result<std::shared_ptr<Volume>>(const std::string& name, uint64_t size_bytes,
                                                  bool* created)>
        open_local;
    // Deletes this node's copy (the record was deleted); not_found is fine.
    std::function<Status(const std::string& name)> delete_local;
    // Raises this node's fence for `name` (the ReplicaServer's EpochFence) to `epoch`,
    // first deleting a copy kept for another `incarnation` of the name.
    std::function<Status(const std::string& name, uint64_t epoch, uint32_t incarnation)> admit_epoch;
    std::function<void(const std::string& name)> forget_epoch;
    // The highest epoch this node's fence admitted for `name` (0 when none).
    std::function<uint64_t(const std::string& name)> fenced_epoch;
    std::chrono::milliseconds poll_interval{1000};
    std::chrono::milliseconds op_timeout{5000};       // a replica's answer
    std::chrono::milliseconds connect_timeout{1000};  // a replica's connect + HELLO
  };

  static Result<std::unique_ptr<ClusterVolumes>> start(Options options);
  ~ClusterVolumes();  // stop()
  ClusterVolumes(const ClusterVolumes&) = delete;
  ClusterVolumes& operator=(const ClusterVolumes&) = delete;
  // Fences every volume served here and joins the threads. Idempotent.
  void stop();

  // For the NBD server: the volume if this node serves it as primary. Otherwise an error,
  // with `*why` naming the primary and its NBD address (or saying the volume is unknown).
  Result<std::shared_ptr<Volume>> open(const std::string& name, std::string* why);
  // Whether `name` is a replicated volume (as of the agent's last look).
  bool is_cluster_volume(const std::string& name) const;

  // Control API. Errors carry a human line in *why.
  // Places `replicas` copies (0 = kDefaultReplicas), this node first when it has room, and
  // waits (up to 5 s) until the primary serves it when that is this node.
  Result<cairn::v1::ClusterVolume> create(const std::string& name, uint64_t size_bytes,
                                          uint32_t replicas, std::string* why);
  // Makes `node` (empty: this node) primary: epoch + 1; the former primary's copy is
  // rebuilt as a replica. Waits (up to 5 s) until served when `node` is this node.
  Result<cairn::v1::ClusterVolume> attach(const std::string& name, const std::string& node,
                                          std::string* why);
  // The record, with nbd_uri/serving, and live resync progress when served here.
  Result<cairn::v1::ClusterVolume> info(const std::string& name, std::string* why);
  Result<std::vector<cairn::v1::ClusterVolume>> list(std::string* why);
  Status remove(const std::string& name, std::string* why);
  // Creates (or, with `remove`, deletes) snapshot `snapshot` of `name` on every in-sync
  // replica at one point of the write stream (ReplicatedVolume::snapshot); `local` is the
  // engine's call for this node's copy. Only the serving primary can: elsewhere
  // unavailable, with *why naming the primary's control API.
  Status snapshot(const std::string& name, const std::string& snapshot, bool remove,
                  std::function<Status()> local, std::string* why);
  Result<cairn::v1::ClusterVolume> set_rebuild_rate(const std::string& name, uint64_t bytes_per_s,
                                                    std::string* why);

  class Impl;

 private:
  explicit ClusterVolumes(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cairn::replication
