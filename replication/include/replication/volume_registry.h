// VolumeRegistry: replicated volumes' records in etcd (`/cairn/volumes/<name>`, a
// cairn.v1.ClusterVolume in protobuf's JSON mapping, no lease), and the pure rules that
// decide placement, attach, replica states and failover.
//
// Every change is a transaction comparing the key's mod_revision with the revision the
// caller read (VersionedVolume::mod_revision): when someone else changed the record in
// between, the call fails with Errc::busy and writes nothing; the caller re-reads and
// decides again. So no epoch is ever bumped, and no replica state changed, on a stale view.
// Thread-safe (the EtcdClient is); calls block for at most the client's timeout.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "cairn/v1/cluster.pb.h"
#include "cairn/v1/volume.pb.h"
#include "common/result.h"
#include "replication/etcd_client.h"

namespace cairn::replication {

constexpr const char* kVolumesPrefix = "/cairn/volumes/";
// ClusterReplica.state values.
constexpr const char* kInSync = "in_sync";
constexpr const char* kResyncing = "resyncing";
constexpr const char* kOut = "out";

struct VersionedVolume {
  cairn::v1::ClusterVolume volume;
  int64_t mod_revision = 0;  // of the etcd key when read
};

// Chooses `n` distinct nodes among `nodes` (those with state "up") that have room for
// `size_bytes` (capacity_bytes - used_bytes >= size_bytes): `preferred` first when it
// qualifies, then the most free bytes first, ties by id. Errors: invalid_argument when
// n == 0; no_space when fewer than n nodes qualify, with `*why` (if given) saying how many
// nodes are up and how many have room.
Result<std::vector<std::string>> place_replicas(const std::vector<cairn::v1::ClusterNode>& nodes,
                                                uint32_t n, uint64_t size_bytes,
                                                const std::string& preferred,
                                                std::string* why = nullptr);

// The replica entry of `node`, or nullptr.
const cairn::v1::ClusterReplica* find_replica(const cairn::v1::ClusterVolume& v,
                                              const std::string& node);
cairn::v1::ClusterReplica* find_replica(cairn::v1::ClusterVolume& v, const std::string& node);

// A new record: epoch 1, primary = replicas[0], every replica in_sync (all copies are empty).
cairn::v1::ClusterVolume new_volume(const std::string& name, uint64_t size_bytes,
                                    const std::vector<std::string>& replicas, int64_t now_unix_s);

// The record after making `node` primary: epoch + 1. Errors: not_found when node holds no
// replica; invalid_argument (with *why) when its replica is not in_sync (it may lack
// acknowledged writes). Attaching the current primary still bumps the epoch.
Result<cairn::v1::ClusterVolume> attach_to(const cairn::v1::ClusterVolume& v,
                                           const std::string& node, std::string* why = nullptr);

// Failover rule: true when `v.primary` is not among `live_nodes`, `self` is live and
// in_sync, and `self` has the lowest id among the live in_sync replicas other than the
// primary. Exactly one live node decides yes on a given view.
bool should_take_over(const cairn::v1::ClusterVolume& v, const std::string& self,
                      const std::set<std::string>& live_nodes);

// The record after a takeover by `self`: epoch + 1, primary = self, the old primary's
// replica out (it may have written locally what nobody acknowledged).
cairn::v1::ClusterVolume taken_over(const cairn::v1::ClusterVolume& v, const std::string& self);

class VolumeRegistry {
 public:
  // `nodes_prefix` is where ClusterMember registers nodes (take_over checks the primary's
  // key there).
  VolumeRegistry(EtcdClient& etcd, std::string prefix = kVolumesPrefix,
                 std::string nodes_prefix = "/cairn/nodes/");

  // not_found when absent; corrupt when the value does not parse.
  Result<VersionedVolume> get(const std::string& name);
  // Every record, sorted by name (records that do not parse are skipped and logged), and
  // the etcd revision of the read.
  Result<std::vector<VersionedVolume>> list(int64_t* revision = nullptr);
  // Creates the record if no volume of that name exists: already_exists otherwise.
  Result<VersionedVolume> create(const cairn::v1::ClusterVolume& v);
  // Replaces the record with `next` if it is unchanged since `expected` was read: busy
  // otherwise (re-read), not_found when it was deleted.
  Result<VersionedVolume> update(const VersionedVolume& expected, const cairn::v1::ClusterVolume& next);
  // Deletes the record if unchanged since `expected`: busy otherwise.
  Status remove(const VersionedVolume& expected);
  // Failover: writes taken_over(expected.volume, self) if the record is unchanged AND the
  // primary's node key is absent (its lease is gone), in one transaction: busy otherwise.
  Result<VersionedVolume> take_over(const VersionedVolume& expected, const std::string& self);

  EtcdClient& etcd() { return etcd_; }
  const std::string& prefix() const { return prefix_; }

 private:
  EtcdClient& etcd_;
  const std::string prefix_;
  const std::string nodes_prefix_;
};

}  // namespace cairn::replication
