// ReplicatedVolume: a volume as its primary serves it. Wraps this node's copy (the local
// Volume) and the links to the other replicas: reads are local; every WRITE, TRIM,
// WRITE_ZEROES, FLUSH and FUA goes to the local copy and to every in-sync or resyncing
// replica in parallel, and completes after all of them answered. So when the client hears
// "done", every in-sync replica holds the write (and, for FLUSH/FUA, has made it durable).
//
// A replica that fails (link error, timeout, refusal) while this primary is still current
// is recorded before the request completes: its DirtyMap (persisted on this node) gets the
// request's extents and every extent written since that replica's last completed flush
// (it may have lost those in a crash), and `Hooks::set_state` records it out of sync in etcd
// (CAS on the epoch). Only then does the request complete; writes go on with the rest.
// When the link comes back (attach_link), the replica is resyncing: it receives new writes
// and a copier (resync()) sends it the dirty extents, each under the extent's stripe lock so
// that a client write and a copy of the same extent never overlap; then it is in sync again.
//
// Fencing: a replica answering ESTALE means a newer primary exists; the volume is then
// fenced: every later request fails (EIO), reads included, so no stale data is served. So
// does `Hooks::may_serve` returning false (the node's lease is lost).
// Threads: I/O methods run on any Reactor; blocking work (DirtyMap fsyncs, etcd calls) is
// handed to the volume's worker thread. Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "common/async_mutex.h"
#include "common/stripe_locks.h"
#include "common/volume.h"
#include "replication/dirty_map.h"
#include "replication/link_protocol.h"
#include "replication/replica_link.h"

namespace cairn::replication {

class BlockingWorker;

class ReplicatedVolume final : public Volume {
 public:
  static constexpr size_t kStripes = 1024;
  // Extents written since a replica's last flush that are remembered one by one; beyond
  // that a failing replica is resynced in full.
  static constexpr size_t kUnflushedExtentsMax = 1 << 16;

  struct Hooks {
    // Records replica `node`'s state (kOut, kInSync, kResyncing) in etcd (CAS, this
    // epoch). Blocking; runs on the worker. An error recording kOut means this primary may
    // not acknowledge (fenced, or etcd unreachable).
    std::function<Status(const std::string& node, const std::string& state)> set_state;
    // Opens (creating) the DirtyMap this node keeps for replica `node`. Blocking.
    std::function<Result<std::unique_ptr<DirtyMap>>(const std::string& node)> open_dirty;
    // False when the node may no longer serve (its lease is lost). Called per request.
    std::function<bool()> may_serve;
  };

  // One replica other than this node, as the primary starts with it.
  struct PeerInit {
    std::string node;
    std::shared_ptr<ReplicaLink> link;  // null: out of sync
    std::unique_ptr<DirtyMap> dirty;    // required when link is null
  };

  struct PeerStatus {
    std::string node;
    std::string state;  // kInSync, kResyncing, kOut
    uint64_t dirty_extents = 0;
    uint64_t resync_total_bytes = 0, resync_done_bytes = 0;
    uint64_t resync_data_bytes = 0;  // of resync_done_bytes, data sent (the rest: holes trimmed)
    double resync_bytes_per_s = 0;
  };

  ReplicatedVolume(std::shared_ptr<Volume> local, uint64_t epoch, std::vector<PeerInit> peers,
                   Hooks hooks);
  ~ReplicatedVolume() override;

  const std::string& name() const override { return local_->name(); }
  uint64_t size_bytes() const override { return local_->size_bytes(); }
  bool alive() const override { return local_->alive(); }
  Task<Status> read(uint64_t offset, uint64_t length, void* buf) override;
  Task<Status> write(uint64_t offset, uint64_t length, const void* buf, bool fua) override;
  Task<Status> trim(uint64_t offset, uint64_t length, bool fua) override;
  Task<Status> write_zeroes(uint64_t offset, uint64_t length, bool may_release, bool fua) override;
  Task<Status> flush() override;
  Result<std::vector<AllocationRun>> allocation(uint64_t offset, uint64_t length,
                                                size_t max_runs) override {
    return local_->allocation(offset, length, max_runs);
  }
  Result<std::vector<AllocationRun>> changed_since(const std::string& since, uint64_t offset,
                                                   uint64_t length, size_t max_runs) override {
    return local_->changed_since(since, offset, length, max_runs);
  }
  std::vector<std::string> dirty_bitmap_sources() override { return local_->dirty_bitmap_sources(); }

  uint64_t epoch() const { return epoch_; }
  // Stops serving for good (a newer epoch exists): every later request fails.
  void fence();
  bool fenced() const { return fenced_.load(std::memory_order_acquire); }

  // Records every replica whose link broke while idle (no request noticed it) out of sync,
  // so that a replica that restarted, possibly empty, is never left listed in sync; and
  // retries recording replicas out whose recording failed (etcd unreachable).
  // Blocking (etcd, fsync): for the owner's thread, not a Reactor.
  Status check_links();
  // Out replicas without a link, for the owner to reconnect.
  std::vector<std::string> out_peers() const;
  // Gives an out replica its new link: it becomes resyncing (receives every new write).
  // `emptied`: the replica's copy is new (reads as zeros), so every extent holding data
  // here becomes dirty too (full rebuild).
  Status attach_link(const std::string& node, std::shared_ptr<ReplicaLink> link, bool emptied);
  // Copies the dirty extents of resyncing replica `node` (on the calling coroutine's
  // Reactor), at most `rate_bytes_per_s` (0 = unbounded; set_rebuild_rate changes it while
  // it runs), then flushes it and makes it in sync. Errors: the link failed (the replica is out again), or the volume is fenced.
  // Counts the bytes it copied in *copied.
  Task<Status> resync(const std::string& node, uint64_t rate_bytes_per_s, uint64_t* copied);
  std::vector<PeerStatus> peers() const;
  void set_rebuild_rate(uint64_t bytes_per_s) { rebuild_rate_.store(bytes_per_s); }

  // A snapshot at one point of the write stream on every in-sync replica and here: holds
  // every stripe (no write in flight), sends SNAPSHOT (or SNAPSHOT_DELETE when `remove`) to
  // the in-sync replicas, then runs `local` (the engine's own snapshot call, which may
  // block) on success of all of them. Replicas out or resyncing do not get it. Errors: a
  // replica's (the local snapshot is then not taken), `local`'s, io_error when fenced.
  Task<Status> snapshot(std::string snapshot, bool remove, std::function<Status()> local);

 private:
  struct Peer;
  using Stripes = StripeLocks<kStripes>;

  // What one request does on every target; `local` runs on this node.
  Task<Status> mirror(link::Request req, const void* data, Task<Status> local);
  Task<Status> send_to(std::shared_ptr<ReplicaLink> link, link::Request req, const void* data,
                       Status* out);
  // Blocking, on the worker only (so recordings never interleave): replicas in `failed`
  // become out (their maps get every unflushed extent, etcd hears it), and
  // [offset, offset+length) goes into the map of every replica out now or in `skipped`.
  Status record_missed(const std::vector<std::string>& failed,
                       const std::vector<std::string>& skipped, uint64_t offset, uint64_t length);
  // Whether every skipped replica's map already holds the range durably (no recording).
  bool skipped_cover(const std::vector<std::string>& skipped, uint64_t offset, uint64_t length);
  void remember_unflushed(uint64_t first, uint64_t last);
  Peer* find_locked(const std::string& node);
  bool serving() const;
  // Copies extents [first, first+count) to `peer` (data as WRITE, holes as TRIM); appends
  // them to *done, to be cleared once the replica flushed.
  Task<Status> copy_run(Peer& peer, uint64_t first, uint64_t count, uint64_t* copied,
                        std::vector<uint64_t>* done);
  // FLUSHes `peer`, then clears the extents in *done and persists the map.
  Task<Status> checkpoint(Peer& peer, std::vector<uint64_t>* done);

  std::shared_ptr<Volume> local_;
  const uint64_t epoch_;
  const Hooks hooks_;
  std::atomic<bool> fenced_{false};
  std::atomic<uint64_t> rebuild_rate_{0};  // resync bytes per second, 0 = unbounded
  typename Stripes::Stripes stripes_;
  std::unique_ptr<BlockingWorker> worker_;

  mutable std::mutex mu_;  // peers_ (states, links), unflushed_
  std::vector<std::unique_ptr<Peer>> peers_;
  // Extents written per flush generation since the last flush every replica completed.
  std::map<uint64_t, std::unordered_set<uint64_t>> unflushed_;
  size_t unflushed_count_ = 0;
  bool unflushed_overflow_ = false;
  uint64_t flush_gen_ = 0;
};

}  // namespace cairn::replication
