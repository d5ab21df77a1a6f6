// StoreImpl and VolumeCore: the concrete volume engine behind VolumeStore / Volume.
//
// StoreImpl owns the data device, RocksDB (<data_dir>/meta), the Allocator, every volume's
// VolumeCore and one maintenance thread. VolumeCore is the shared state of one volume (its
// ExtentMap under map_mu_); NBD connections hold VolumeHandles on it, which count as
// attached. Format and recovery: docs/FORMAT-blockd.md.
//
// Snapshots (docs/FORMAT-blockd.md, "Snapshots"): a snapshot freezes the volume's seq; live
// records born at or before the newest snapshot's seq are shared and never changed in place
// (redirect-on-write: the old record becomes a version). Clones read what they do not map
// from their parent snapshot's view. A per-volume write gate drains writes for snapshot
// create/delete so that a write lies wholly before or after a snapshot.
//
// Threads: control methods (create/resize/delete/open/list/snapshots) run on any thread and
// take the store mutex (snapshot, clone, flatten and delete first take ctl_mu_, which
// serializes them and may be held while a volume's writes drain); I/O coroutines run on Reactor threads (or, over SimBlockDevice, under
// run_sync on a plain thread) and take only the volume's map mutex, briefly and never across
// a co_await. The maintenance thread owns group-committed flushes and quarantine promotion.
// Lock order: ctl_mu_ -> store mu_ -> volume map_mu_ -> parent volume map_mu_ -> grow_mu_ ->
// Allocator's mutex. A volume's gate_mu_ is a leaf lock.
//
// Rule that keeps the epoch wait deadlock-free: an I/O leaves its epoch before it waits for
// the maintenance thread (flush, promotion) and never waits for the RMW mutex inside one.
// Writes enter the gate before anything else (before the RMW mutex), so a drain never waits
// for a request that itself waits for the gate.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <coroutine>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "allocator.h"
#include "blockd/volume_store.h"
#include "common/async_mutex.h"
#include "common/reactor.h"
#include "extent_map.h"

namespace rocksdb {
class DB;
class Iterator;
class Status;
class WriteBatch;
}  // namespace rocksdb

namespace cairn::blockd {

constexpr uint32_t kFormatVersion = 2;  // 2: snapshots, versions, clones (1 is upgraded)
constexpr uint64_t kGrowStepBytes = 1ull << 30;      // the data file grows in 1 GiB steps
constexpr size_t kDeleteBatchKeys = 1024;            // extent keys per delete WriteBatch
constexpr size_t kReleaseBatchExtents = 4096;        // records per TRIM critical section
constexpr size_t kWaitersMax = 4096;                 // queued flush / promotion waiters
constexpr auto kEpochWaitMax = std::chrono::seconds(10);
constexpr auto kEpochPoll = std::chrono::microseconds(100);
constexpr int kAllocRetriesMax = 3;  // promotion rounds an allocating write waits for
constexpr auto kSnapshotDrainMax = std::chrono::seconds(10);  // write drain for snapshot ops
constexpr uint64_t kLiveSeq = ~uint64_t{0};  // "seq" of the live view in view lookups

// Small internals shared by volume_store.cc and snapshot_store.cc.
constexpr size_t kBufferAlignBytes = 4096;
// A heap buffer aligned for O_DIRECT (bounce buffers for misaligned callers, RMW, copies).
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t n);
  ~AlignedBuffer() { free(p_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  bool ok() const { return p_ != nullptr; }
  uint8_t* data() const { return static_cast<uint8_t*>(p_); }

 private:
  void* p_ = nullptr;
};
// Blocking work (run_sync over the device, fdatasync) must not run on a Reactor thread: the
// device would submit to a ring nobody is driving. Runs `fn` on a helper thread there.
template <class Fn>
auto off_reactor(Fn fn) -> decltype(fn()) {
  if (Reactor::current() == nullptr) return fn();
  std::optional<decltype(fn())> out;
  std::thread t([&] { out.emplace(fn()); });
  t.join();
  return std::move(*out);
}
std::string encode_be64(uint64_t v);
// Logs a failed RocksDB call and maps it to io_error.
Status db_status(const rocksdb::Status& s, const char* what);

extern const char kFormatKey[];      // "m/format"
extern const char kNextVolumeIdKey[];  // "m/next_volume_id"
extern const char kVolumeKeyPrefix[];  // "v/"
extern const char kNextSnapshotIdKey[];  // "m/next_snapshot_id"
constexpr char kSnapshotKeyTag = 's';    // 's' + volume id + snapshot id -> SnapshotRecord

// Value of v/<name>. Fixed big-endian layout (FORMAT-blockd.md): 34 bytes (layout 1) or 50
// (layout 2, with the clone's parent); encode writes layout 2.
struct VolumeRecord {
  uint64_t id = 0;
  uint64_t size_bytes = 0;
  int64_t created_unix_s = 0;
  uint64_t seq = 1;  // current write sequence; each snapshot create bumps it
  bool deleting = false;
  uint64_t parent_volume_id = 0;    // clone not yet flattened: its parent snapshot, else 0
  uint64_t parent_snapshot_id = 0;
};
constexpr size_t kVolumeRecordV1Bytes = 34;
constexpr size_t kVolumeRecordBytes = 50;
std::string encode_volume_record(const VolumeRecord& rec);
Result<VolumeRecord> decode_volume_record(std::string_view value);

// Value of 's' + volume id + snapshot id.
struct SnapshotRecord {
  uint64_t id = 0;
  uint64_t seq = 0;
  uint64_t size_bytes = 0;
  int64_t created_unix_s = 0;
  std::string name;
};
std::string snapshot_key(uint64_t volume_id, uint64_t snapshot_id);
std::string snapshot_key_prefix(uint64_t volume_id);
std::string encode_snapshot_record(const SnapshotRecord& rec);
Result<SnapshotRecord> decode_snapshot_record(std::string_view value);
std::string volume_key(const std::string& name);
bool valid_volume_name(const std::string& name);

// In-flight data I/O per epoch: the maintenance thread flips the epoch and waits for the old
// epoch's I/O to drain before it punches or reuses extents unmapped before the flip.
class EpochTracker {
 public:
  unsigned enter() noexcept;
  void leave(unsigned epoch) noexcept;
  // Single caller at a time. False on timeout (the next call waits for the rest first).
  bool flip_and_wait(std::chrono::steady_clock::duration timeout);

 private:
  bool wait_zero(unsigned epoch, std::chrono::steady_clock::time_point deadline);
  std::atomic<unsigned> epoch_{0};
  std::atomic<uint64_t> inflight_[2] = {0, 0};
};

class EpochGuard {
 public:
  explicit EpochGuard(EpochTracker& t) : t_(t) { enter(); }
  ~EpochGuard() { leave(); }
  EpochGuard(const EpochGuard&) = delete;
  EpochGuard& operator=(const EpochGuard&) = delete;
  void enter() {
    if (!in_) {
      epoch_ = t_.enter();
      in_ = true;
    }
  }
  void leave() {
    if (in_) {
      t_.leave(epoch_);
      in_ = false;
    }
  }

 private:
  EpochTracker& t_;
  unsigned epoch_ = 0;
  bool in_ = false;
};

class StoreImpl;

// Stripes of VolumeCore::rmw_mu_.
inline constexpr size_t kRmwStripes = 64;

class VolumeCore;

// One snapshot of a volume, in memory. Owned by its VolumeCore (and by the handles and clones
// that refer to it).
struct SnapState {
  uint64_t id = 0;
  std::string name;
  uint64_t seq = 0;
  uint64_t size_bytes = 0;
  int64_t created_unix_s = 0;
  std::atomic<uint32_t> attached{0};  // open `volume@snapshot` handles
  uint32_t clones = 0;                // guarded by the store mutex
};

// One volume's shared state and I/O paths. Lives as long as the store's table entry or any
// handle on it.
class VolumeCore {
 public:
  VolumeCore(StoreImpl& store, std::string name, const VolumeRecord& rec);

  const std::string& name() const { return name_; }
  uint64_t id() const { return id_; }
  uint64_t size_bytes() const { return size_bytes_.load(std::memory_order_acquire); }
  bool alive() const { return alive_.load(std::memory_order_acquire); }
  uint32_t attached() const { return attached_.load(std::memory_order_acquire); }

  // `seq` = kLiveSeq reads the live volume, else the snapshot that froze `seq`.
  Task<Status> read(uint64_t seq, uint64_t offset, uint64_t length, void* buf);
  Task<Status> write(uint64_t offset, uint64_t length, const void* buf, bool fua);
  Task<Status> trim(uint64_t offset, uint64_t length, bool fua);
  Task<Status> write_zeroes(uint64_t offset, uint64_t length, bool may_release, bool fua);
  Result<std::vector<AllocationRun>> allocation(uint64_t seq, uint64_t offset, uint64_t length,
                                                size_t max_runs);
  // Changed runs of [offset, offset+length) between snapshot `since` and `seq`.
  Result<std::vector<AllocationRun>> changed_since(const std::string& since, uint64_t seq,
                                                   uint64_t offset, uint64_t length,
                                                   size_t max_runs);
  std::vector<std::string> snapshots_before(uint64_t seq);

  // parent_accounting=false skips a clone's parent-backed blocks in shared_bytes (the scan
  // of the parent's view).
  VolumeInfo info(bool parent_accounting = true);
  VolumeRecord record();
  VolumeRecord record_locked();  // map_mu_ held
  uint64_t written_blocks();
  size_t mapped_extents();

  // Records visible at `seq` for logical extents [first, end), sorted; zero markers dropped.
  Status view_records(uint64_t seq, uint64_t first, uint64_t end, ExtentMap::Records* out);
  // The record visible at `seq` for one extent (nullopt: reads zeros). `it` iterates the
  // metadata database (reused across calls).
  Result<std::optional<ExtentRecord>> view_at(uint64_t seq, uint64_t ext, rocksdb::Iterator* it);

 private:
  friend class StoreImpl;
  friend class VolumeHandle;
  friend class SnapshotHandle;
  struct GateAwaiter {
    VolumeCore& core;
    std::coroutine_handle<> handle{};
    Reactor* reactor = nullptr;
    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h) noexcept;
    void await_resume() const noexcept {}
  };
  struct GateExit {
    VolumeCore& core;
    ~GateExit() { core.gate_leave(); }
  };
  struct SlowExtent {
    uint64_t ext;
    uint32_t b0, b1;      // blocks [b0, b1) of the extent
    const uint8_t* data;  // bytes of block b0 (write), null (release)
  };
  enum class Rewrite { done, retry_fast };
  using Undo = std::vector<std::pair<uint64_t, std::optional<ExtentRecord>>>;
  struct Seg {
    uint64_t dev_off;
    uint64_t len;
    uint8_t* buf;
  };

  Status check_io(uint64_t offset, uint64_t length) const;
  Status check_view_io(uint64_t seq, uint64_t offset, uint64_t length);
  // Device-aligned range into a device-aligned buffer; clear blocks read as zeros.
  Task<Status> read_aligned(uint64_t seq, uint64_t offset, uint64_t length, uint8_t* buf);
  // 4 KiB-aligned range from a device-aligned buffer: metadata first, then the data; shared
  // and parent-backed extents go through rewrite_extent. `serialized`: RMW mutex held.
  Task<Status> write_blocks(EpochGuard& epoch, uint64_t offset, uint64_t length,
                            const uint8_t* buf, bool fua, bool serialized,
                            bool* metadata_changed, int depth = 0);
  // Redirect / copy-on-write of one extent: a new physical extent gets the blocks of the
  // current content that survive plus the new data (FUA), then the mapping switches to it
  // (the old record becomes a version when a snapshot sees it).
  Task<Result<Rewrite>> rewrite_extent(EpochGuard& epoch, const SlowExtent& s, bool serialized,
                                       bool* metadata_changed);
  // Any range; takes the RMW mutex when not 4 KiB-aligned.
  Task<Status> write_any(uint64_t offset, uint64_t length, const void* buf, bool fua,
                         bool* metadata_changed);
  // Zeros a part of one 4 KiB block, only if the block holds data (RMW mutex held inside).
  Task<Status> zero_partial_block(uint64_t offset, uint64_t length, bool* metadata_changed);
  // Releases whole blocks [offset, offset + length) (4 KiB-aligned).
  Task<Status> release_blocks(uint64_t offset, uint64_t length);
  Task<Status> trim_any(uint64_t offset, uint64_t length, bool fua);
  // Restores `undo` (newest last) and returns new extents; caller holds map_mu_.
  void revert_locked(Undo& undo, const std::vector<uint64_t>& allocated);

  // Write gate (snapshot create/delete drain in-flight writes).
  void gate_leave();
  bool gate_close_and_drain(std::chrono::steady_clock::duration timeout);
  void gate_open();

  // All under map_mu_.
  bool shared_locked(const ExtentRecord& r) const {
    return !r.is_marker() && r.birth_seq <= max_snap_seq_;
  }
  bool marker_shared_locked(const ExtentRecord& r) const {
    return r.is_marker() && r.birth_seq <= max_snap_seq_;
  }
  // Changes the live map, keeping shared_blocks_ right (nullopt erases).
  void map_set_locked(uint64_t ext, const std::optional<ExtentRecord>& rec);
  // Adds the change-index key for `ext` in the current seq when a diff may need it.
  void note_change_locked(rocksdb::WriteBatch& batch, uint64_t ext, const ExtentRecord* old);
  // Parent snapshot's record for `ext` (clones only; loads the parent view on first use).
  Result<const ExtentRecord*> parent_find_locked(uint64_t ext);
  Status load_parent_view_locked();
  // What the live volume reads at `ext` (own record or parent's); nullopt: zeros.
  Result<std::optional<ExtentRecord>> live_visible_locked(uint64_t ext);
  void recompute_shared_locked();
  std::shared_ptr<SnapState> snapshot_by_name_locked(const std::string& name);

  StoreImpl& store_;
  const std::string name_;
  const uint64_t id_;
  const int64_t created_unix_s_;
  std::atomic<uint64_t> size_bytes_;
  std::atomic<bool> alive_{true};
  std::atomic<uint32_t> attached_{0};
  bool deleting_ = false;  // guarded by the store mutex

  std::mutex map_mu_;  // guards map_, seq_, the snapshot table and the parent link
  ExtentMap map_;
  uint64_t seq_ = 1;
  std::map<uint64_t, std::shared_ptr<SnapState>> snaps_;  // by seq
  uint64_t max_snap_seq_ = 0;   // newest snapshot's seq, 0 without snapshots
  uint64_t shared_blocks_ = 0;  // data blocks of live records a snapshot also sees
  // Clone: the parent snapshot, and its view (immutable) loaded on first use.
  std::shared_ptr<VolumeCore> parent_;
  std::shared_ptr<SnapState> parent_snap_;
  uint64_t parent_seq_ = 0;
  bool parent_view_loaded_ = false;
  ExtentMap::Records parent_view_;
  std::atomic<bool> flattening_{false};
  uint64_t loaded_parent_volume_id_ = 0;  // from the record at open, resolved by recovery
  uint64_t loaded_parent_snapshot_id_ = 0;

  // Serializes, per extent, writes that are not 4 KiB-aligned and redirects/copy-on-writes:
  // two of them on one extent must not interleave; on different extents they run in
  // parallel. Striped: extent e uses rmw_mu_[e % kRmwStripes] (see StripeLocks).
  std::array<AsyncMutex, kRmwStripes> rmw_mu_;

  // Write gate. Fast path (gate open): one atomic add on enter and one on leave. A closer
  // sets gate_closed_ then waits for gate_inflight_ to reach 0; a writer adds itself then
  // checks gate_closed_ (both seq_cst), so one of them always sees the other.
  std::mutex gate_mu_;  // guards gate_waiters_ and the closed -> open transition
  std::condition_variable gate_cv_;
  std::atomic<bool> gate_closed_{false};
  std::atomic<uint64_t> gate_inflight_{0};
  std::vector<GateAwaiter*> gate_waiters_;
};

// What open_volume() returns: counts as one attached connection while it lives.
class VolumeHandle final : public Volume {
 public:
  explicit VolumeHandle(std::shared_ptr<VolumeCore> core);
  ~VolumeHandle() override;
  const std::string& name() const override { return core_->name(); }
  uint64_t size_bytes() const override { return core_->size_bytes(); }
  bool alive() const override { return core_->alive(); }
  Task<Status> read(uint64_t offset, uint64_t length, void* buf) override;
  Task<Status> write(uint64_t offset, uint64_t length, const void* buf, bool fua) override;
  Task<Status> trim(uint64_t offset, uint64_t length, bool fua) override;
  Task<Status> write_zeroes(uint64_t offset, uint64_t length, bool may_release,
                            bool fua) override;
  Task<Status> flush() override;
  Result<std::vector<AllocationRun>> allocation(uint64_t offset, uint64_t length,
                                                size_t max_runs) override;
  Result<std::vector<AllocationRun>> changed_since(const std::string& since, uint64_t offset,
                                                   uint64_t length, size_t max_runs) override;
  std::vector<std::string> dirty_bitmap_sources() override;

 private:
  std::shared_ptr<VolumeCore> core_;
};

// What open_volume("volume@snapshot") returns: a read-only view of one snapshot. Counts as
// attached to the snapshot (delete_snapshot refuses while it lives).
class SnapshotHandle final : public Volume {
 public:
  SnapshotHandle(std::shared_ptr<VolumeCore> core, std::shared_ptr<SnapState> snap);
  ~SnapshotHandle() override;
  const std::string& name() const override { return name_; }
  uint64_t size_bytes() const override { return snap_->size_bytes; }
  bool alive() const override { return core_->alive(); }
  bool read_only() const override { return true; }
  Task<Status> read(uint64_t offset, uint64_t length, void* buf) override;
  Task<Status> write(uint64_t offset, uint64_t length, const void* buf, bool fua) override;
  Task<Status> trim(uint64_t offset, uint64_t length, bool fua) override;
  Task<Status> write_zeroes(uint64_t offset, uint64_t length, bool may_release,
                            bool fua) override;
  Task<Status> flush() override;
  Result<std::vector<AllocationRun>> allocation(uint64_t offset, uint64_t length,
                                                size_t max_runs) override;
  Result<std::vector<AllocationRun>> changed_since(const std::string& since, uint64_t offset,
                                                   uint64_t length, size_t max_runs) override;
  std::vector<std::string> dirty_bitmap_sources() override;

 private:
  std::shared_ptr<VolumeCore> core_;
  std::shared_ptr<SnapState> snap_;
  std::string name_;
};

class StoreImpl final : public VolumeStore {
 public:
  // Takes ownership of `db`.
  StoreImpl(const Options& options, std::unique_ptr<BlockDevice> device, rocksdb::DB* db,
            uint64_t capacity_extents, uint64_t next_volume_id);
  ~StoreImpl() override;

  // Loads metadata, finishes interrupted deletes, punches unmapped space, syncs, and starts
  // the maintenance thread. Called once by VolumeStore::open.
  Status recover();

  Result<VolumeInfo> create_volume(const std::string& name, uint64_t size_bytes) override;
  std::vector<VolumeInfo> list_volumes() override;
  Result<VolumeInfo> get_volume(const std::string& name) override;
  Result<VolumeInfo> resize_volume(const std::string& name, uint64_t size_bytes) override;
  Status delete_volume(const std::string& name, bool force) override;
  Result<std::shared_ptr<Volume>> open_volume(const std::string& name) override;
  Result<SnapshotInfo> create_snapshot(const std::string& volume,
                                       const std::string& snapshot) override;
  Result<std::vector<SnapshotInfo>> list_snapshots(const std::string& volume) override;
  Status delete_snapshot(const std::string& volume, const std::string& snapshot) override;
  Result<VolumeInfo> clone_volume(const std::string& volume, const std::string& snapshot,
                                  const std::string& new_volume) override;
  Status flatten_volume(const std::string& volume) override;
  Result<std::vector<DiffRun>> diff(const std::string& volume, const std::string& from,
                                    const std::string& to) override;
  Task<Status> flush() override;
  StoreStats stats() override;

  // Test hooks and internals shared with VolumeCore.
  // Promotes the current quarantine now (blocking; call off Reactor threads).
  Status run_maintenance_round();
  Allocator& allocator() { return alloc_; }
  // Physical extents referenced by any live mapping or snapshot version (tests check that
  // the rest is zeros).
  std::vector<uint64_t> mapped_physical_extents();
  // Metadata keys written (put or delete) since open: tests check that snapshot create is
  // O(1) in keys.
  uint64_t metadata_keys_written() const {
    return keys_written_.load(std::memory_order_acquire);
  }
  rocksdb::DB* db() { return db_; }
  BlockDevice& device() { return *dev_; }
  EpochTracker& epochs() { return epochs_; }
  uint64_t capacity_bytes() const { return alloc_.capacity_extents() * kExtentSizeBytes; }

  // An extent for a new mapping, growing the device when needed; no_space when none.
  Result<uint64_t> allocate_extent();
  Status write_metadata(rocksdb::WriteBatch& batch);
  // A synced metadata write (control operations).
  Status write_metadata_sync(rocksdb::WriteBatch& batch, const char* what);
  // Changed extents of volume `id` with seq in (from_seq, to_seq] and extent in [first, end).
  Status changed_extents(uint64_t volume_id, uint64_t from_seq, uint64_t to_seq, uint64_t first,
                         uint64_t end, std::vector<uint64_t>* out);
  // Changed runs between two views of `core` (from_seq 0: the empty volume) over the byte
  // range [offset, offset + length).
  Status diff_views(VolumeCore& core, uint64_t from_seq, uint64_t to_seq, uint64_t offset,
                    uint64_t length, std::vector<DiffRun>* out);
  // True while some metadata write has not been covered by a WAL sync yet: a FUA write
  // whose mapping may depend on it must flush.
  bool metadata_unsynced() const {
    return metadata_synced_.load(std::memory_order_acquire) <
           metadata_writes_.load(std::memory_order_acquire);
  }
  // Suspends until the next promotion round ends (runs one inline without a Reactor).
  Task<void> wait_for_promotion();

 private:
  struct Waiter {
    std::coroutine_handle<> handle;
    Reactor* reactor = nullptr;
    Status result = ok();
  };
  enum class Queue { flush, promotion };
  struct QueueAwaiter {
    StoreImpl& store;
    Queue queue;
    Waiter waiter;
    bool queued = false;
    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h) noexcept;
    void await_resume() const noexcept {}
  };

  // Device sync + WAL sync (the store's durability point).
  Task<Status> sync_all();
  Status sync_all_blocking();
  void maintenance_loop();
  bool enqueue(Waiter* w, Queue q);
  static void complete(std::vector<Waiter*>& batch, const Status& st);
  Status finish_delete(uint64_t volume_id, ExtentMap::Records& extents, bool quarantine);
  // Deletes every key under `prefix` in batches; version keys' extents are quarantined.
  Status delete_prefix(const std::string& prefix, bool versions);
  // Deletes the versions of `core` that no snapshot sees any more; quarantines their extents.
  Status collect_versions(VolumeCore& core, size_t* freed);
  // Deletes change keys that no diff can ask for any more (seq <= oldest snapshot's seq).
  Status compact_changes(VolumeCore& core);
  Status flatten_extent(VolumeCore& core, uint64_t ext, const ExtentRecord& prec, bool* copied);
  Result<std::shared_ptr<VolumeCore>> find_locked(const std::string& name);
  Status recover_snapshots(std::map<uint64_t, std::shared_ptr<VolumeCore>>& by_id,
                           rocksdb::WriteBatch& cleanup, uint64_t* dropped_keys);

  const Options options_;
  std::unique_ptr<BlockDevice> dev_;
  rocksdb::DB* db_;
  Allocator alloc_;
  EpochTracker epochs_;
  std::mutex grow_mu_;
  std::atomic<uint64_t> metadata_writes_{0};  // successful write_metadata() calls
  std::atomic<uint64_t> metadata_synced_{0};  // metadata_writes_ covered by a WAL sync

  std::atomic<uint64_t> keys_written_{0};

  std::mutex ctl_mu_;  // snapshot / clone / flatten / delete control operations
  std::mutex mu_;  // volumes_, next_volume_id_, next_snapshot_id_, volume records
  std::map<std::string, std::shared_ptr<VolumeCore>> volumes_;
  uint64_t next_volume_id_ = 1;
  uint64_t next_snapshot_id_ = 1;

  std::mutex round_mu_;  // one promotion round at a time

  std::mutex mt_mu_;
  std::condition_variable mt_cv_;
  bool mt_stop_ = false;
  std::vector<Waiter*> flush_waiters_;
  std::vector<Waiter*> promotion_waiters_;
  std::thread maintenance_;
};

}  // namespace cairn::blockd
