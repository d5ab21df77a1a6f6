#include "replication/cluster_volumes.h"

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "common/log.h"
#include "common/reactor_thread.h"
#include "replication/replica_link.h"
#include "replication/replicated_volume.h"
#include "replication/volume_registry.h"

namespace cairn::replication {

namespace {
constexpr const char* kLog = "cluster";
constexpr int kCasAttemptsMax = 16;
constexpr auto kServeWait = std::chrono::seconds(5);
// How long recording a replica's state may retry a slow or unreachable etcd. Shorter than
// the lease TTL would not help: once the lease is lost the node stops serving anyway.
constexpr auto kRecordWait = std::chrono::seconds(10);
namespace fs = std::filesystem;
using v1::ClusterVolume;
}  // namespace

class ClusterVolumes::Impl {
 public:
  explicit Impl(Options o)
      : o_(std::move(o)), self_(o_.member->node_id()), registry_(o_.member->etcd()) {}

  void start() { agent_ = std::thread([this] { loop(); }); }

  void stop() {
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    if (agent_.joinable()) agent_.join();
    std::unique_lock lock(mu_);
    for (auto& [name, a] : active_) a.vol->fence();
    active_.clear();
    // Resyncs fail once their volume is fenced; wait for them before the Reactor goes.
    cv_.wait_for(lock, std::chrono::seconds(30), [&] { return resyncing_.empty(); });
  }

  Result<std::shared_ptr<Volume>> open(const std::string& name, std::string* why) {
    std::lock_guard lock(mu_);
    auto it = active_.find(name);
    if (it != active_.end() && !it->second.vol->fenced()) {
      auto a = std::make_shared<Attachment>(it->second.vol, it->second.clients);
      return std::shared_ptr<Volume>(a, a->vol.get());
    }
    auto k = known_.find(name);
    if (k == known_.end()) {
      if (why) *why = "no such volume: " + name;
      return Errc::not_found;
    }
    const std::string& primary = k->second.primary();
    if (why) {
      if (primary == self_) {
        *why = "volume " + name + " is not served yet on its primary (this node, " + self_ + "); retry";
      } else {
        auto n = node_nbd_.find(primary);
        *why = "volume " + name + " is served by its primary, node " + primary +
               (n != node_nbd_.end() && !n->second.empty() ? " at nbd://" + n->second + "/" + name
                                                            : " (not up now)");
      }
    }
    return Errc::unavailable;
  }

  bool is_cluster_volume(const std::string& name) const {
    std::lock_guard lock(mu_);
    return known_.count(name) > 0;
  }

  Result<ClusterVolume> create(const std::string& name, uint64_t size, uint32_t replicas,
                               std::string* why) {
    if (replicas == 0) replicas = kDefaultReplicas;
    auto nodes = o_.member->list_nodes();
    if (!nodes) return fail(nodes.error(), "cannot list nodes: " + nodes.error().message(), why);
    CAIRN_TRY(placed, place_replicas(nodes.value(), replicas, size, self_, why));
    ClusterVolume v = new_volume(name, size, placed, ::time(nullptr));
    std::random_device rd;
    uint32_t incarnation = 0;
    while (incarnation == 0) incarnation = rd();
    v.set_incarnation(incarnation);
    auto created = registry_.create(v);
    if (!created) {
      if (created.error() == Errc::already_exists)
        return fail(Errc::already_exists, "volume " + name + " already exists", why);
      return fail(created.error(), "cannot record the volume: " + created.error().message(), why);
    }
    CAIRN_LOG_INFO(kLog, "volume %s created: %zu replicas, primary %s", name.c_str(),
                   placed.size(), placed[0].c_str());
    if (placed[0] == self_) wait_served(name, 1);
    return info(name, why);
  }

  Result<ClusterVolume> attach(const std::string& name, const std::string& node_in, std::string* why) {
    const std::string node = node_in.empty() ? self_ : node_in;
    uint64_t epoch = 0;
    for (int i = 0;; ++i) {
      auto vv = registry_.get(name);
      if (!vv) return fail(vv.error(), "volume " + name + ": " + vv.error().message(), why);
      CAIRN_TRY(next, attach_to(vv.value().volume, node, why));
      const std::string& old = vv.value().volume.primary();
      // The former primary may hold writes nobody acknowledged: rebuild it as a replica.
      if (old != node) {
        if (auto* r = find_replica(next, old)) r->set_state(kOut);
      }
      auto u = registry_.update(vv.value(), next);
      if (u) {
        epoch = next.epoch();
        break;
      }
      if (u.error() != Errc::busy || i + 1 >= kCasAttemptsMax)
        return fail(u.error(), "cannot attach " + name + ": " + u.error().message(), why);
    }
    CAIRN_LOG_INFO(kLog, "volume %s attached to node %s (epoch %llu)", name.c_str(), node.c_str(),
                   static_cast<unsigned long long>(epoch));
    if (node == self_) wait_served(name, epoch);
    return info(name, why);
  }

  Result<ClusterVolume> info(const std::string& name, std::string* why) {
    auto vv = registry_.get(name);
    if (!vv) return fail(vv.error(), vv.error() == Errc::not_found ? "no such volume: " + name
                                                               : "cannot read volume " + name + " from etcd: " + vv.error().message(), why);
    ClusterVolume v = std::move(vv.value().volume);
    decorate(v);
    return v;
  }

  Result<std::vector<ClusterVolume>> list(std::string* why) {
    auto vols = registry_.list();
    if (!vols) return fail(vols.error(), "cannot read the volumes from etcd: " + vols.error().message(), why);
    std::vector<ClusterVolume> out;
    for (auto& vv : vols.value()) {
      out.push_back(std::move(vv.volume));
      decorate(out.back());
    }
    return out;
  }

  Status remove(const std::string& name, std::string* why) {
    for (int i = 0;; ++i) {
      auto vv = registry_.get(name);
      if (!vv) return fail(vv.error(), vv.error() == Errc::not_found ? "no such volume: " + name : vv.error().message(), why);
      {
        std::lock_guard lock(mu_);
        auto it = active_.find(name);
        if (it != active_.end() && it->second.clients->load() > 0)
          return fail(Errc::busy, "volume " + name + " has NBD clients attached", why);
      }
      Status st = registry_.remove(vv.value());
      if (st) break;
      if (st.error() != Errc::busy || i + 1 >= kCasAttemptsMax)
        return fail(st.error(), "cannot delete " + name + ": " + st.error().message(), why);
    }
    CAIRN_LOG_INFO(kLog, "volume %s deleted", name.c_str());
    return ok();
  }

  Status snapshot(const std::string& name, const std::string& snapshot, bool remove,
                  std::function<Status()> local, std::string* why) {
    std::shared_ptr<ReplicatedVolume> vol;
    std::string primary_api;
    {
      std::lock_guard lock(mu_);
      auto it = active_.find(name);
      if (it != active_.end() && !it->second.vol->fenced()) vol = it->second.vol;
      auto k = known_.find(name);
      if (k != known_.end()) {
        auto a = node_api_.find(k->second.primary());
        primary_api = "node " + k->second.primary() +
                      (a != node_api_.end() ? " (" + a->second + ")" : std::string());
      }
    }
    if (!vol) {
      return fail(Errc::unavailable, "snapshots of " + name + " are taken by its primary, " +
                                         (primary_api.empty() ? "which is not known" : primary_api) +
                                         "; ask it", why);
    }
    Status st = resync_reactor_.run(vol->snapshot(snapshot, remove, std::move(local)));
    if (!st) {
      return fail(st.error(), "snapshot " + name + "@" + snapshot + " not " +
                                  (remove ? "deleted" : "taken") + " on every in-sync replica: " +
                                  st.error().message(), why);
    }
    return ok();
  }

  Result<ClusterVolume> set_rebuild_rate(const std::string& name, uint64_t rate, std::string* why) {
    for (int i = 0;; ++i) {
      auto vv = registry_.get(name);
      if (!vv) return fail(vv.error(), "volume " + name + ": " + vv.error().message(), why);
      ClusterVolume next = vv.value().volume;
      next.set_rebuild_rate_bytes_per_s(rate);
      auto u = registry_.update(vv.value(), next);
      if (u) break;
      if (u.error() != Errc::busy || i + 1 >= kCasAttemptsMax)
        return fail(u.error(), "cannot update " + name + ": " + u.error().message(), why);
    }
    {
      std::lock_guard lock(mu_);
      rates_[name] = rate;
      auto it = active_.find(name);
      if (it != active_.end()) it->second.vol->set_rebuild_rate(rate);  // a running resync too
    }
    return info(name, why);
  }

 private:
  struct Active {
    std::shared_ptr<ReplicatedVolume> vol;
    uint64_t epoch = 0;
    std::shared_ptr<std::atomic<int>> clients = std::make_shared<std::atomic<int>>(0);
  };
  // An NBD client's hold on a volume: keeps it alive and counts as attached meanwhile.
  struct Attachment {
    Attachment(std::shared_ptr<ReplicatedVolume> v, std::shared_ptr<std::atomic<int>> c)
        : vol(std::move(v)), clients(std::move(c)) {
      clients->fetch_add(1);
    }
    ~Attachment() { clients->fetch_sub(1); }
    std::shared_ptr<ReplicatedVolume> vol;
    std::shared_ptr<std::atomic<int>> clients;
  };

  static std::error_code fail(std::error_code ec, const std::string& message, std::string* why) {
    if (why && why->empty()) *why = message;
    return ec;
  }

  std::string dirty_path(const std::string& volume, const std::string& node) const {
    return o_.state_dir + "/" + volume + "@" + node + ".dirty";
  }

  // Fills the fields readers compute: NBD URI, serving, live resync progress.
  void decorate(ClusterVolume& v) {
    std::lock_guard lock(mu_);
    auto n = node_nbd_.find(v.primary());
    if (n != node_nbd_.end() && !n->second.empty()) v.set_nbd_uri("nbd://" + n->second + "/" + v.name());
    v.set_serving(node_nbd_.count(v.primary()) > 0);
    auto a = active_.find(v.name());
    if (v.primary() == self_) v.set_serving(a != active_.end() && !a->second.vol->fenced());
    if (a == active_.end()) return;
    for (const auto& p : a->second.vol->peers()) {
      auto* r = find_replica(v, p.node);
      if (!r) continue;
      r->set_state(p.state);
      r->set_resync_total_bytes(p.resync_total_bytes);
      r->set_resync_done_bytes(p.resync_done_bytes);
      r->set_resync_bytes_per_s(p.resync_bytes_per_s);
      r->set_resync_data_bytes(p.resync_data_bytes);
    }
  }

  void wait_served(const std::string& name, uint64_t epoch) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, kServeWait, [&] {
      auto it = active_.find(name);
      return stopping_ || (it != active_.end() && it->second.epoch >= epoch);
    });
  }

  // --- the agent ---

  void loop() {
    std::unique_ptr<Watch> watch;
    while (true) {
      {
        std::lock_guard lock(mu_);
        if (stopping_) return;
      }
      std::vector<std::string> deleted;
      if (!watch) {
        auto w = o_.member->etcd().watch("/cairn/");
        if (w) watch = std::move(w).value();
      }
      if (watch) {
        auto ev = watch->next(o_.poll_interval);
        // Take whatever else is queued, then act once on the newest state.
        while (ev && ev.value()) {
          const WatchEvent& e = *ev.value();
          if (e.type == WatchEvent::Type::del && e.kv.key.starts_with(kVolumesPrefix))
            deleted.push_back(e.kv.key.substr(std::string(kVolumesPrefix).size()));
          ev = watch->next(std::chrono::milliseconds(0));
        }
        if (!ev) watch.reset();
      } else {
        std::this_thread::sleep_for(o_.poll_interval);
      }
      reconcile(deleted);
    }
  }

  void deactivate(const std::string& name, const char* why) {
    std::shared_ptr<ReplicatedVolume> vol;
    {
      std::lock_guard lock(mu_);
      auto it = active_.find(name);
      if (it == active_.end()) return;
      vol = std::move(it->second.vol);
      active_.erase(it);
    }
    CAIRN_LOG_INFO(kLog, "volume %s: no longer served here (%s)", name.c_str(), why);
    vol->fence();
  }

  void handle_deleted(const std::string& name) {
    deactivate(name, "deleted");
    {
      std::lock_guard lock(mu_);
      known_.erase(name);
    }
    if (o_.delete_local) {
      Status st = o_.delete_local(name);
      if (!st && st.error() != Errc::not_found) {
        CAIRN_LOG_WARN(kLog, "volume %s: cannot delete the local copy: %s", name.c_str(),
                       st.error().message().c_str());
      }
    }
    if (o_.forget_epoch) o_.forget_epoch(name);
    std::error_code ec;
    for (auto& f : fs::directory_iterator(o_.state_dir, ec)) {
      if (f.path().filename().string().starts_with(name + "@")) fs::remove(f.path(), ec);
    }
  }

  void reconcile(const std::vector<std::string>& deleted) {
    for (const auto& name : deleted) handle_deleted(name);
    std::vector<std::string> served;
    {
      std::lock_guard lock(mu_);
      for (auto& [name, a] : active_) served.push_back(name);
    }
    if (!o_.member->registered()) {
      for (auto& name : served) deactivate(name, "this node's lease is lost");
      return;
    }
    auto nodes = o_.member->list_nodes();
    if (!nodes) return;
    std::set<std::string> live;
    std::map<std::string, std::string> replication_addr, nbd_addr, api_addr;
    for (auto& n : nodes.value()) {
      if (n.state() != "up") continue;
      live.insert(n.id());
      replication_addr[n.id()] = n.replication();
      nbd_addr[n.id()] = n.nbd();
      api_addr[n.id()] = n.api();
    }
    auto vols = registry_.list();
    if (!vols) return;
    std::map<std::string, VersionedVolume> by_name;
    for (auto& vv : vols.value()) by_name[vv.volume.name()] = vv;
    {
      std::lock_guard lock(mu_);
      node_nbd_ = nbd_addr;
      node_api_ = api_addr;
      known_.clear();
      for (auto& [name, vv] : by_name) {
        known_[name] = vv.volume;
        rates_[name] = vv.volume.rebuild_rate_bytes_per_s();
        auto a = active_.find(name);
        if (a != active_.end()) a->second.vol->set_rebuild_rate(rates_[name]);
      }
    }
    for (auto& name : served) {
      auto it = by_name.find(name);
      uint64_t epoch = 0;
      bool fenced = false;
      {
        std::lock_guard lock(mu_);
        auto a = active_.find(name);
        if (a == active_.end()) continue;
        epoch = a->second.epoch;
        fenced = a->second.vol->fenced();
      }
      if (it == by_name.end()) deactivate(name, "its record is gone");
      else if (it->second.volume.primary() != self_) deactivate(name, "another node is primary");
      else if (it->second.volume.epoch() != epoch) deactivate(name, "its epoch changed");
      else if (fenced) deactivate(name, "fenced");
    }
    for (auto& [name, vv] : by_name) {
      const ClusterVolume& v = vv.volume;
      if (!find_replica(v, self_)) continue;
      if (v.primary() == self_) {
        if (!is_active(name)) activate(vv, replication_addr);
        else reconnect_out(name, v, replication_addr, live);
      } else if (should_take_over(v, self_, live)) {
        auto t = registry_.take_over(vv, self_);
        if (!t) continue;
        CAIRN_LOG_WARN(kLog, "volume %s: primary %s is gone; this node takes over (epoch %llu)",
                       name.c_str(), v.primary().c_str(),
                       static_cast<unsigned long long>(t.value().volume.epoch()));
        activate(t.value(), replication_addr);
      }
    }
  }

  bool is_active(const std::string& name) {
    std::lock_guard lock(mu_);
    return active_.count(name) > 0;
  }

  ReplicaLink::Options link_options(const ClusterVolume& v, const std::string& addr) const {
    ReplicaLink::Options lo;
    lo.address = addr;
    lo.volume = v.name();
    lo.size_bytes = v.size_bytes();
    lo.epoch = v.epoch();
    lo.incarnation = v.incarnation();
    lo.connect_timeout = o_.connect_timeout;
    lo.op_timeout = o_.op_timeout;
    return lo;
  }

  // Serves `vv` (whose primary is this node) as a ReplicatedVolume.
  void activate(VersionedVolume vv, const std::map<std::string, std::string>& addr) {
    const ClusterVolume& v = vv.volume;
    const std::string& name = v.name();
    // A new epoch begins here (a takeover or an attach; not this node serving its own
    // epoch again after a restart): the old primary may have died or been fenced between
    // sending a write to one replica and to another, so the in-sync replicas may differ
    // where writes were in flight, which no one here recorded. This copy becomes the
    // reference and every other replica is resynced in full (allocated extents copied,
    // holes trimmed).
    // The full dirty maps are written before the epoch is admitted, so a retry of this
    // activation (after a failed CAS, say) still finds them.
    if (v.epoch() > 1 && o_.fenced_epoch(name) < v.epoch()) {
      for (const auto& r : v.replicas()) {
        if (r.node() == self_) continue;
        auto d = DirtyMap::open(dirty_path(name, r.node()), v.size_bytes());
        Status st = d ? d.value()->mark_all() : Status(d.error());
        if (!st) {
          CAIRN_LOG_ERROR(kLog, "volume %s: dirty map of %s: %s", name.c_str(), r.node().c_str(),
                          st.error().message().c_str());
          return;
        }
      }
    }
    // The fence first: it also drops a copy kept for a deleted volume of this name.
    if (Status st = o_.admit_epoch(name, v.epoch(), v.incarnation()); !st) {
      CAIRN_LOG_WARN(kLog, "volume %s: epoch %llu not admitted here (%s): not serving", name.c_str(),
                     static_cast<unsigned long long>(v.epoch()), st.error().message().c_str());
      return;
    }
    bool local_created = false;
    auto local = o_.open_local(name, v.size_bytes(), &local_created);
    if (!local) {
      CAIRN_LOG_ERROR(kLog, "volume %s: cannot open the local copy: %s", name.c_str(),
                      local.error().message().c_str());
      return;
    }
    ClusterVolume next = v;
    std::vector<ReplicatedVolume::PeerInit> peers;
    for (const auto& r : v.replicas()) {
      if (r.node() == self_) continue;
      const std::string path = dirty_path(name, r.node());
      const bool had_dirty = fs::exists(path);
      std::shared_ptr<ReplicaLink> link;
      bool created = false;
      if (r.state() != kOut) {
        auto a = addr.find(r.node());
        if (a != addr.end()) {
          auto l = ReplicaLink::connect(link_options(v, a->second), &created);
          if (l) link = std::move(l).value();
          else if (l.error() == Errc::permission_denied) {
            CAIRN_LOG_WARN(kLog, "volume %s: replica %s has a newer epoch: not serving", name.c_str(), r.node().c_str());
            return;
          }
        }
      }
      ReplicatedVolume::PeerInit init;
      init.node = r.node();
      // A new volume's first start: every copy is created now, and that is no loss.
      if (link && created && local_created && v.epoch() == 1) created = false;
      else if (link && !created && local_created) {
        CAIRN_LOG_ERROR(kLog, "volume %s: this node's copy is empty but replica %s holds data: "
                        "not serving (attach the volume to an in-sync replica)", name.c_str(),
                        r.node().c_str());
        return;
      }
      if (link && !created && r.state() == kInSync && !had_dirty) {
        init.link = std::move(link);
      } else {
        if (link) link->close();
        auto d = DirtyMap::open(path, v.size_bytes());
        if (!d) {
          CAIRN_LOG_ERROR(kLog, "volume %s: dirty map of %s: %s", name.c_str(), r.node().c_str(),
                          d.error().message().c_str());
          return;
        }
        // In sync under this epoch but unreachable now: it misses only what is written from
        // now on. Anything else without a record of ours: rebuild it in full.
        const bool full = created || (!had_dirty && r.state() != kInSync);
        if (full) {
          if (Status st = d.value()->mark_all(); !st) return;
        }
        init.dirty = std::move(d).value();
        if (auto* nr = find_replica(next, r.node())) nr->set_state(kOut);
      }
      peers.push_back(std::move(init));
    }
    if (next.SerializeAsString() != v.SerializeAsString()) {
      auto u = registry_.update(vv, next);
      if (!u) return;  // the record moved on: look again next round
    }
    ReplicatedVolume::Hooks hooks;
    const uint64_t epoch = v.epoch();
    hooks.set_state = [this, name, epoch](const std::string& node, const std::string& state) {
      return set_state(name, epoch, node, state);
    };
    hooks.open_dirty = [this, name, size = v.size_bytes()](const std::string& node) {
      return DirtyMap::open(dirty_path(name, node), size);
    };
    hooks.may_serve = [m = o_.member] { return m->registered(); };
    auto vol = std::make_shared<ReplicatedVolume>(std::move(local).value(), epoch, std::move(peers),
                                                  std::move(hooks));
    {
      std::lock_guard lock(mu_);
      active_[name] = Active{vol, epoch, std::make_shared<std::atomic<int>>(0)};
    }
    cv_.notify_all();
    CAIRN_LOG_INFO(kLog, "volume %s: serving as primary (epoch %llu)", name.c_str(),
                   static_cast<unsigned long long>(epoch));
  }

  // Records replica `node`'s state, if this node is still `name`'s primary at `epoch`.
  // A slow or briefly unreachable etcd is retried for up to kRecordWait (every attempt
  // re-reads the record, so a repeat never acts on a stale view).
  Status set_state(const std::string& name, uint64_t epoch, const std::string& node,
                   const std::string& state) {
    const auto deadline = std::chrono::steady_clock::now() + kRecordWait;
    Status st = Errc::busy;
    for (int i = 0; i < kCasAttemptsMax * 4; ++i) {
      st = set_state_once(name, epoch, node, state);
      if (st || (st.error() != Errc::busy && st.error() != Errc::unavailable &&
                 st.error() != Errc::io_error)) {
        return st;
      }
      if (std::chrono::steady_clock::now() >= deadline || !o_.member->registered()) return st;
      if (st.error() != Errc::busy) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return st;
  }

  Status set_state_once(const std::string& name, uint64_t epoch, const std::string& node,
                        const std::string& state) {
    CAIRN_TRY(vv, registry_.get(name));
    if (vv.volume.primary() != self_ || vv.volume.epoch() != epoch) return Errc::permission_denied;
    ClusterVolume next = vv.volume;
    auto* r = find_replica(next, node);
    if (!r) return Errc::not_found;
    if (r->state() == state) return ok();
    r->set_state(state);
    auto u = registry_.update(vv, next);
    if (!u) return u.error();
    CAIRN_LOG_INFO(kLog, "volume %s: replica %s is %s", name.c_str(), node.c_str(), state.c_str());
    return ok();
  }

  // Reconnects the out replicas of a volume served here and starts their resync.
  void reconnect_out(const std::string& name, const ClusterVolume& v,
                     const std::map<std::string, std::string>& addr,
                     const std::set<std::string>& live) {
    std::shared_ptr<ReplicatedVolume> vol;
    uint64_t rate;
    {
      std::lock_guard lock(mu_);
      vol = active_[name].vol;
      rate = rates_[name];
    }
    if (Status st = vol->check_links(); !st) {
      CAIRN_LOG_WARN(kLog, "volume %s: cannot record a broken replica link: %s", name.c_str(),
                     st.error().message().c_str());
    }
    ClusterVolume at_epoch = v;
    at_epoch.set_epoch(vol->epoch());
    for (const auto& node : vol->out_peers()) {
      const std::string key = name + "@" + node;
      {
        std::lock_guard lock(mu_);
        if (resyncing_.count(key)) continue;
      }
      auto a = addr.find(node);
      if (!live.count(node) || a == addr.end()) continue;
      bool created = false;
      auto l = ReplicaLink::connect(link_options(at_epoch, a->second), &created);
      if (!l) {
        if (l.error() == Errc::permission_denied) vol->fence();
        continue;
      }
      if (Status st = vol->attach_link(node, std::move(l).value(), created); !st) continue;
      // Informational (a resyncing replica never becomes primary): a failure is retried at
      // the end of the resync, which records the final state.
      (void)set_state(name, vol->epoch(), node, kResyncing);
      {
        std::lock_guard lock(mu_);
        resyncing_.insert(key);
      }
      resync_reactor_.start(run_resync(vol, name, node, rate));
    }
  }

  Task<Status> run_resync(std::shared_ptr<ReplicatedVolume> vol, std::string name, std::string node,
                          uint64_t rate) {
    uint64_t copied = 0;
    Status st = co_await vol->resync(node, rate, &copied);
    if (!st) {
      CAIRN_LOG_WARN(kLog, "volume %s: resync of %s stopped: %s", name.c_str(), node.c_str(),
                     st.error().message().c_str());
    }
    {
      std::lock_guard lock(mu_);
      resyncing_.erase(name + "@" + node);
    }
    cv_.notify_all();
    co_return st;
  }

  Options o_;
  const std::string self_;
  VolumeRegistry registry_;
  ReactorThread resync_reactor_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::map<std::string, Active> active_;
  std::map<std::string, ClusterVolume> known_;       // as of the agent's last look
  std::map<std::string, std::string> node_nbd_;      // live nodes' NBD addresses
  std::map<std::string, std::string> node_api_;      // live nodes' control API URLs
  std::map<std::string, uint64_t> rates_;            // rebuild rate per volume
  std::set<std::string> resyncing_;                  // "volume@node"
  std::thread agent_;
};

Result<std::unique_ptr<ClusterVolumes>> ClusterVolumes::start(Options options) {
  if (!options.member || !options.open_local || !options.admit_epoch || !options.fenced_epoch ||
      options.state_dir.empty())
    return Errc::invalid_argument;
  std::error_code ec;
  fs::create_directories(options.state_dir, ec);
  if (ec) return ec;
  auto impl = std::make_unique<Impl>(std::move(options));
  impl->start();
  return std::unique_ptr<ClusterVolumes>(new ClusterVolumes(std::move(impl)));
}

ClusterVolumes::ClusterVolumes(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ClusterVolumes::~ClusterVolumes() { stop(); }
void ClusterVolumes::stop() { impl_->stop(); }

Result<std::shared_ptr<Volume>> ClusterVolumes::open(const std::string& name, std::string* why) {
  return impl_->open(name, why);
}
bool ClusterVolumes::is_cluster_volume(const std::string& name) const {
  return impl_->is_cluster_volume(name);
}
Result<v1::ClusterVolume> ClusterVolumes::create(const std::string& name, uint64_t size_bytes,
                                                 uint32_t replicas, std::string* why) {
  return impl_->create(name, size_bytes, replicas, why);
}
Result<v1::ClusterVolume> ClusterVolumes::attach(const std::string& name, const std::string& node,
                                                 std::string* why) {
  return impl_->attach(name, node, why);
}
Result<v1::ClusterVolume> ClusterVolumes::info(const std::string& name, std::string* why) {
  return impl_->info(name, why);
}
Result<std::vector<v1::ClusterVolume>> ClusterVolumes::list(std::string* why) {
  return impl_->list(why);
}
Status ClusterVolumes::remove(const std::string& name, std::string* why) {
  return impl_->remove(name, why);
}
Status ClusterVolumes::snapshot(const std::string& name, const std::string& snapshot, bool remove,
                                std::function<Status()> local, std::string* why) {
  return impl_->snapshot(name, snapshot, remove, std::move(local), why);
}
Result<v1::ClusterVolume> ClusterVolumes::set_rebuild_rate(const std::string& name,
                                                           uint64_t bytes_per_s, std::string* why) {
  return impl_->set_rebuild_rate(name, bytes_per_s, why);
}

}  // namespace cairn::replication
