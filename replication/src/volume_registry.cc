#include "replication/volume_registry.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <optional>
#include <utility>

#include "common/assert.h"
#include "common/log.h"

namespace cairn::replication {

namespace {

constexpr const char* kLog = "registry";

// The record as stored: protobuf's JSON mapping with every field printed (as ClusterMember
// writes ClusterNode), so `etcdctl get` shows zeros and empty states too.
std::string encode(const cairn::v1::ClusterVolume& v) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.always_print_primitive_fields = true;
  std::string out;
  CAIRN_ASSERT(google::protobuf::util::MessageToJsonString(v, &out, opts).ok());
  return out;
}

// nullopt when `json` is not a ClusterVolume; fields a newer writer added are ignored.
std::optional<cairn::v1::ClusterVolume> decode(const std::string& json) {
  cairn::v1::ClusterVolume v;
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = true;
  if (!google::protobuf::util::JsonStringToMessage(json, &v, opts).ok()) return std::nullopt;
  return v;
}

uint64_t free_bytes(const cairn::v1::ClusterNode& n) {
  return n.capacity_bytes() > n.used_bytes() ? n.capacity_bytes() - n.used_bytes() : 0;
}

// The compare-and-swap every change shares: runs `op` when every compare holds; otherwise
// the record's current state tells busy (changed) from not_found (deleted).
Result<TxnResult> guarded(EtcdClient& etcd, const std::string& key,
                          const std::vector<Compare>& compares, TxnOp op) {
  CAIRN_TRY(txn, etcd.txn(compares, {std::move(op)}, {TxnOp::get(key)}));
  if (txn.succeeded) return std::move(txn);
  const bool gone = txn.responses.empty() || txn.responses[0].range.kvs.empty();
  if (gone) return Errc::not_found;
  return Errc::busy;
}

}  // namespace

Result<std::vector<std::string>> place_replicas(const std::vector<cairn::v1::ClusterNode>& nodes,
                                                uint32_t n, uint64_t size_bytes,
                                                const std::string& preferred, std::string* why) {
  if (n == 0) {
    if (why) *why = "a volume needs at least one replica";
    return Errc::invalid_argument;
  }
  std::vector<const cairn::v1::ClusterNode*> fit;
  std::set<std::string> up;
  for (const auto& node : nodes) {
    if (node.state() != "up" || !up.insert(node.id()).second) continue;  // one entry per id
    if (free_bytes(node) >= size_bytes) fit.push_back(&node);
  }
  if (fit.size() < n) {
    if (why) {
      *why = "need " + std::to_string(n) + " nodes with " + std::to_string(size_bytes) +
             " bytes free: " + std::to_string(up.size()) + " nodes up, " +
             std::to_string(fit.size()) + " with room";
    }
    return Errc::no_space;
  }
  std::sort(fit.begin(), fit.end(), [&](const auto* a, const auto* b) {
    const bool a_pref = a->id() == preferred, b_pref = b->id() == preferred;
    if (a_pref != b_pref) return a_pref;
    if (free_bytes(*a) != free_bytes(*b)) return free_bytes(*a) > free_bytes(*b);
    return a->id() < b->id();
  });
  std::vector<std::string> out;
  for (uint32_t i = 0; i < n; ++i) out.push_back(fit[i]->id());
  return out;
}

const cairn::v1::ClusterReplica* find_replica(const cairn::v1::ClusterVolume& v,
                                              const std::string& node) {
  for (const auto& r : v.replicas()) {
    if (r.node() == node) return &r;
  }
  return nullptr;
}

cairn::v1::ClusterReplica* find_replica(cairn::v1::ClusterVolume& v, const std::string& node) {
  for (auto& r : *v.mutable_replicas()) {
    if (r.node() == node) return &r;
  }
  return nullptr;
}

cairn::v1::ClusterVolume new_volume(const std::string& name, uint64_t size_bytes,
                                    const std::vector<std::string>& replicas, int64_t now_unix_s) {
  cairn::v1::ClusterVolume v;
  v.set_name(name);
  v.set_size_bytes(size_bytes);
  if (!replicas.empty()) v.set_primary(replicas[0]);
  v.set_epoch(1);
  v.set_created_unix_s(now_unix_s);
  for (const auto& node : replicas) {
    auto* r = v.add_replicas();
    r->set_node(node);
    r->set_state(kInSync);
  }
  return v;
}

Result<cairn::v1::ClusterVolume> attach_to(const cairn::v1::ClusterVolume& v,
                                           const std::string& node, std::string* why) {
  const auto* r = find_replica(v, node);
  if (!r) {
    if (why) *why = "node " + node + " holds no replica of volume " + v.name();
    return Errc::not_found;
  }
  if (r->state() != kInSync) {
    if (why) {
      *why = "the replica of volume " + v.name() + " on node " + node + " is " + r->state() +
             ", not in_sync: it may lack acknowledged writes";
    }
    return Errc::invalid_argument;
  }
  cairn::v1::ClusterVolume next = v;
  next.set_primary(node);
  next.set_epoch(v.epoch() + 1);
  return next;
}

bool should_take_over(const cairn::v1::ClusterVolume& v, const std::string& self,
                      const std::set<std::string>& live_nodes) {
  if (live_nodes.count(v.primary()) || !live_nodes.count(self)) return false;
  const std::string* lowest = nullptr;
  for (const auto& r : v.replicas()) {
    if (r.node() == v.primary() || r.state() != kInSync || !live_nodes.count(r.node())) continue;
    if (!lowest || r.node() < *lowest) lowest = &r.node();
  }
  return lowest && *lowest == self;
}

cairn::v1::ClusterVolume taken_over(const cairn::v1::ClusterVolume& v, const std::string& self) {
  cairn::v1::ClusterVolume next = v;
  if (auto* old = find_replica(next, v.primary())) {
    old->set_state(kOut);
    old->set_resync_total_bytes(0);
    old->set_resync_done_bytes(0);
    old->set_resync_bytes_per_s(0);
  }
  next.set_primary(self);
  next.set_epoch(v.epoch() + 1);
  return next;
}

VolumeRegistry::VolumeRegistry(EtcdClient& etcd, std::string prefix, std::string nodes_prefix)
    : etcd_(etcd), prefix_(std::move(prefix)), nodes_prefix_(std::move(nodes_prefix)) {}

Result<VersionedVolume> VolumeRegistry::get(const std::string& name) {
  if (name.empty()) return Errc::invalid_argument;
  CAIRN_TRY(kv, etcd_.get(prefix_ + name));
  auto v = decode(kv.value);
  if (!v) {
    CAIRN_LOG_WARN(kLog, "%s does not hold a volume record (%zu bytes); ignoring it",
                   kv.key.c_str(), kv.value.size());
    return Errc::corrupt;
  }
  return VersionedVolume{std::move(*v), kv.mod_revision};
}

Result<std::vector<VersionedVolume>> VolumeRegistry::list(int64_t* revision) {
  CAIRN_TRY(range, etcd_.range(prefix_));
  std::vector<VersionedVolume> out;
  out.reserve(range.kvs.size());
  for (const auto& kv : range.kvs) {
    auto v = decode(kv.value);
    if (!v) {
      CAIRN_LOG_WARN(kLog, "%s does not hold a volume record (%zu bytes); skipping it",
                     kv.key.c_str(), kv.value.size());
      continue;
    }
    out.push_back(VersionedVolume{std::move(*v), kv.mod_revision});
  }
  // Key order is name order unless a record's name disagrees with its key (written by hand).
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.volume.name() < b.volume.name();
  });
  if (revision) *revision = range.revision;
  return out;
}

Result<VersionedVolume> VolumeRegistry::create(const cairn::v1::ClusterVolume& v) {
  if (v.name().empty()) return Errc::invalid_argument;
  const std::string key = prefix_ + v.name();
  CAIRN_TRY(txn, etcd_.txn({Compare::absent(key)}, {TxnOp::put(key, encode(v))}));
  if (!txn.succeeded) return Errc::already_exists;
  // The transaction wrote one key, so the store's revision after it is the key's.
  return VersionedVolume{v, txn.revision};
}

Result<VersionedVolume> VolumeRegistry::update(const VersionedVolume& expected,
                                               const cairn::v1::ClusterVolume& next) {
  // mod_revision 0 would compare as "absent" and recreate a deleted record; a rename
  // would leave the record under its old key.
  if (expected.mod_revision <= 0 || expected.volume.name().empty() ||
      next.name() != expected.volume.name()) {
    return Errc::invalid_argument;
  }
  const std::string key = prefix_ + next.name();
  CAIRN_TRY(txn, guarded(etcd_, key,
                         {Compare::mod_revision(key, Compare::Op::equal, expected.mod_revision)},
                         TxnOp::put(key, encode(next))));
  return VersionedVolume{next, txn.revision};
}

// A record deleted meanwhile is not_found (as for update), so a caller repeating a remove
// whose answer was lost learns that it is gone.
Status VolumeRegistry::remove(const VersionedVolume& expected) {
  if (expected.mod_revision <= 0 || expected.volume.name().empty()) return Errc::invalid_argument;
  const std::string key = prefix_ + expected.volume.name();
  CAIRN_TRY(guarded(etcd_, key,
                    {Compare::mod_revision(key, Compare::Op::equal, expected.mod_revision)},
                    TxnOp::del(key)));
  return ok();
}

Result<VersionedVolume> VolumeRegistry::take_over(const VersionedVolume& expected,
                                                  const std::string& self) {
  const auto& v = expected.volume;
  if (expected.mod_revision <= 0 || v.name().empty() || v.primary().empty()) {
    return Errc::invalid_argument;
  }
  // Only another in_sync replica may take over: an out or resyncing one lacks writes.
  const auto* mine = find_replica(v, self);
  if (self == v.primary() || !mine || mine->state() != kInSync) {
    CAIRN_LOG_WARN(kLog, "node %s may not take over volume %s (primary %s, its replica %s)",
                   self.c_str(), v.name().c_str(), v.primary().c_str(),
                   mine ? mine->state().c_str() : "absent");
    return Errc::invalid_argument;
  }
  const std::string key = prefix_ + v.name();
  const cairn::v1::ClusterVolume next = taken_over(v, self);
  CAIRN_TRY(txn, guarded(etcd_, key,
                         {Compare::mod_revision(key, Compare::Op::equal, expected.mod_revision),
                          Compare::absent(nodes_prefix_ + v.primary())},
                         TxnOp::put(key, encode(next))));
  return VersionedVolume{next, txn.revision};
}

}  // namespace cairn::replication
