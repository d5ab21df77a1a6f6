// StoreImpl and VolumeCore: the concrete volume engine behind VolumeStore / Volume.
//
// StoreImpl owns the data device, RocksDB (<data_dir>/meta), the Allocator, every volume's
// VolumeCore and one maintenance thread. VolumeCore is the shared state of one volume (its
// ExtentMap under map_mu_); NBD connections hold VolumeHandles on it, which count as
// attached. Format and recovery: docs/FORMAT-blockd.md.
//
// Threads: control methods (create/resize/delete/open/list) run on any thread and take the
// store mutex; I/O coroutines run on Reactor threads (or, over SimBlockDevice, under
// run_sync on a plain thread) and take only the volume's map mutex, briefly and never across
// a co_await. The maintenance thread owns group-committed flushes and quarantine promotion.
// Lock order: store mu_ -> volume map_mu_ -> grow_mu_ -> Allocator's mutex.
//
// Rule that keeps the epoch wait deadlock-free: an I/O leaves its epoch before it waits for
// the maintenance thread (flush, promotion) and never waits for the RMW mutex inside one.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <coroutine>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
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
class WriteBatch;
}  // namespace rocksdb

namespace cairn::blockd {

constexpr uint32_t kFormatVersion = 1;
constexpr uint64_t kGrowStepBytes = 1ull << 30;      // the data file grows in 1 GiB steps
constexpr size_t kDeleteBatchKeys = 1024;            // extent keys per delete WriteBatch
constexpr size_t kReleaseBatchExtents = 4096;        // records per TRIM critical section
constexpr size_t kWaitersMax = 4096;                 // queued flush / promotion waiters
constexpr auto kEpochWaitMax = std::chrono::seconds(10);
constexpr auto kEpochPoll = std::chrono::microseconds(100);
constexpr int kAllocRetriesMax = 3;  // promotion rounds an allocating write waits for

extern const char kFormatKey[];      // "m/format"
extern const char kNextVolumeIdKey[];  // "m/next_volume_id"
extern const char kVolumeKeyPrefix[];  // "v/"

// Value of v/<name>. Fixed 34-byte big-endian layout (FORMAT-blockd.md).
struct VolumeRecord {
  uint64_t id = 0;
  uint64_t size_bytes = 0;
  int64_t created_unix_s = 0;
  uint64_t seq = 1;  // current write sequence (snapshots will bump it)
  bool deleting = false;
};
constexpr size_t kVolumeRecordBytes = 34;
std::string encode_volume_record(const VolumeRecord& rec);
Result<VolumeRecord> decode_volume_record(std::string_view value);
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

  Task<Status> read(uint64_t offset, uint64_t length, void* buf);
  Task<Status> write(uint64_t offset, uint64_t length, const void* buf, bool fua);
  Task<Status> trim(uint64_t offset, uint64_t length, bool fua);
  Task<Status> write_zeroes(uint64_t offset, uint64_t length, bool may_release, bool fua);
  Result<std::vector<AllocationRun>> allocation(uint64_t offset, uint64_t length,
                                                size_t max_runs);

  VolumeInfo info();
  VolumeRecord record();
  uint64_t written_blocks();
  size_t mapped_extents();

 private:
  friend class StoreImpl;
  friend class VolumeHandle;
  struct Seg {
    uint64_t dev_off;
    uint64_t len;
    uint8_t* buf;
  };

  Status check_io(uint64_t offset, uint64_t length) const;
  // Device-aligned range into a device-aligned buffer; clear blocks read as zeros.
  Task<Status> read_aligned(uint64_t offset, uint64_t length, uint8_t* buf);
  // 4 KiB-aligned range from a device-aligned buffer: metadata first, then the data.
  Task<Status> write_blocks(EpochGuard& epoch, uint64_t offset, uint64_t length,
                            const uint8_t* buf, bool fua, bool* metadata_changed);
  // Any range; takes the RMW mutex when not 4 KiB-aligned.
  Task<Status> write_any(uint64_t offset, uint64_t length, const void* buf, bool fua,
                         bool* metadata_changed);
  // Zeros a part of one 4 KiB block, only if the block holds data (RMW mutex held inside).
  Task<Status> zero_partial_block(uint64_t offset, uint64_t length, bool* metadata_changed);
  // Releases whole blocks [offset, offset + length) (4 KiB-aligned).
  Task<Status> release_blocks(uint64_t offset, uint64_t length);
  // Restores `undo` (newest last) and returns new extents; caller holds map_mu_.
  void revert_locked(std::vector<std::pair<uint64_t, std::optional<ExtentRecord>>>& undo,
                     const std::vector<uint64_t>& allocated);

  StoreImpl& store_;
  const std::string name_;
  const uint64_t id_;
  const int64_t created_unix_s_;
  std::atomic<uint64_t> size_bytes_;
  std::atomic<bool> alive_{true};
  std::atomic<uint32_t> attached_{0};
  bool deleting_ = false;  // guarded by the store mutex

  std::mutex map_mu_;  // guards map_ and seq_
  ExtentMap map_;
  uint64_t seq_ = 1;

  AsyncMutex rmw_mu_;  // serializes writes that are not 4 KiB-aligned
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

 private:
  std::shared_ptr<VolumeCore> core_;
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
  Task<Status> flush() override;
  StoreStats stats() override;

  // Test hooks and internals shared with VolumeCore.
  // Promotes the current quarantine now (blocking; call off Reactor threads).
  Status run_maintenance_round();
  Allocator& allocator() { return alloc_; }
  // Physical extents referenced by any live mapping (tests check that the rest is zeros).
  std::vector<uint64_t> mapped_physical_extents();
  BlockDevice& device() { return *dev_; }
  EpochTracker& epochs() { return epochs_; }
  uint64_t capacity_bytes() const { return alloc_.capacity_extents() * kExtentSizeBytes; }

  // An extent for a new mapping, growing the device when needed; no_space when none.
  Result<uint64_t> allocate_extent();
  Status write_metadata(rocksdb::WriteBatch& batch);
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
  Result<std::shared_ptr<VolumeCore>> find_locked(const std::string& name);

  const Options options_;
  std::unique_ptr<BlockDevice> dev_;
  rocksdb::DB* db_;
  Allocator alloc_;
  EpochTracker epochs_;
  std::mutex grow_mu_;
  std::atomic<uint64_t> metadata_writes_{0};  // successful write_metadata() calls
  std::atomic<uint64_t> metadata_synced_{0};  // metadata_writes_ covered by a WAL sync

  std::mutex mu_;  // volumes_, next_volume_id_, volume records
  std::map<std::string, std::shared_ptr<VolumeCore>> volumes_;
  uint64_t next_volume_id_ = 1;

  std::mutex round_mu_;  // one promotion round at a time

  std::mutex mt_mu_;
  std::condition_variable mt_cv_;
  bool mt_stop_ = false;
  std::vector<Waiter*> flush_waiters_;
  std::vector<Waiter*> promotion_waiters_;
  std::thread maintenance_;
};

}  // namespace cairn::blockd
