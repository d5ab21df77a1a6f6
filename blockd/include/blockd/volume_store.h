// VolumeStore and Volume: the node's thin-provisioned volume engine.
//
// VolumeStore owns the node's physical space (a BlockDevice), the metadata database
// (RocksDB under <data_dir>/meta) and every volume's extent map. It is created once by the
// daemon and outlives every Volume handle. All methods are thread-safe; I/O methods are
// coroutines meant to run on a Reactor thread (they submit to that thread's ring).
//
// Model: a volume is a sparse map of fixed-size logical extents (kExtentSizeBytes) to
// physical extents, each with a per-kBlockSizeBytes written bitmap. Invariant that keeps
// tenants apart: physical space that no mapping references reads as zeros before it is handed
// out again (freed extents are hole-punched and quarantined until the unmapping is durable and
// every I/O that could still see them has finished). Hence metadata may be written before
// data: after a crash a mapping points at either the data written or zeros, never at bytes of
// another volume. Format: docs/FORMAT-blockd.md.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "blockd/block_device.h"
#include "common/volume.h"
#include "common/result.h"
#include "common/task.h"

namespace cairn::blockd {

constexpr uint64_t kExtentSizeBytes = 64 * 1024;  // logical -> physical mapping unit
constexpr uint64_t kBlockSizeBytes = 4096;        // written-bitmap granularity
constexpr uint64_t kSectorSizeBytes = 512;        // smallest alignment served without RMW
constexpr uint64_t kVolumeSizeMaxBytes = 1ull << 50;  // 1 PiB
constexpr size_t kVolumeNameMaxBytes = 128;

struct VolumeInfo {
  uint64_t id = 0;
  std::string name;
  uint64_t size_bytes = 0;
  uint64_t allocated_bytes = 0;
  uint64_t extent_size_bytes = kExtentSizeBytes;
  int64_t created_unix_s = 0;
  uint32_t attached_connections = 0;
  uint64_t exclusive_bytes = 0;  // written blocks only the live volume holds
  uint64_t shared_bytes = 0;     // written blocks the live volume shares with snapshots
  std::string parent;            // "volume@snapshot" for a clone not yet flattened
};


// A point-in-time, read-only image of a volume (issue: snapshots, clones, changed-block
// tracking; design in docs/FORMAT-blockd.md, "Snapshots").
struct SnapshotInfo {
  uint64_t id = 0;
  std::string volume;
  std::string name;
  int64_t created_unix_s = 0;
  uint64_t seq = 0;              // the volume sequence the snapshot froze
  uint64_t size_bytes = 0;       // the volume's size when taken
  uint64_t exclusive_bytes = 0;  // written blocks only this snapshot holds (freed by delete)
  uint64_t shared_bytes = 0;     // written blocks it shares with the live volume or others
  uint32_t clones = 0;           // volumes cloned from it (it cannot be deleted while > 0)
};

// One run of a diff between two points of a volume's history.
struct DiffRun {
  uint64_t offset_bytes = 0;
  uint64_t length_bytes = 0;
  bool zero = false;  // true: the range now reads as zeros (trimmed/zeroed/unwritten);
                      // false: it holds data written since the older point
};

struct StoreStats {
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t volumes = 0;
};

class VolumeStore;

// The volume handle and allocation runs are common/volume.h (replication/ wraps them too).
using cairn::AllocationRun;
using cairn::Volume;

class VolumeStore {
 public:
  struct Options {
    std::string data_dir;           // holds meta/ (RocksDB) and data.img
    uint64_t capacity_bytes = 0;    // data file limit; 0 = free space of the filesystem
    bool direct_io = true;          // O_DIRECT where the filesystem allows it
    // Period of the background round that recycles freed extents; 0 = only on demand (when
    // an allocating write finds no free extent). Tests use 0 for determinism.
    uint32_t maintenance_interval_ms = 200;
  };

  // Opens (creating if empty) the store; recovers after a crash. `device` replaces the data
  // file (tests pass a SimBlockDevice); null opens <data_dir>/data.img.
  static Result<std::unique_ptr<VolumeStore>> open(const Options& options,
                                                   std::unique_ptr<BlockDevice> device = nullptr);
  virtual ~VolumeStore() = default;

  virtual Result<VolumeInfo> create_volume(const std::string& name, uint64_t size_bytes) = 0;
  virtual std::vector<VolumeInfo> list_volumes() = 0;
  virtual Result<VolumeInfo> get_volume(const std::string& name) = 0;
  // Grows only: shrinking fails with invalid_argument. Open handles see the new size.
  virtual Result<VolumeInfo> resize_volume(const std::string& name, uint64_t size_bytes) = 0;
  // Refused with busy while any handle is open, unless force. Frees all the volume's space.
  virtual Status delete_volume(const std::string& name, bool force) = 0;
  // Opens a handle for an NBD connection (counts as attached until the handle is released).
  // "volume@snapshot" opens the snapshot read-only.
  virtual Result<std::shared_ptr<Volume>> open_volume(const std::string& name) = 0;

  // Snapshots and clones. Create is O(1) (no data copied) and crash-consistent: it contains
  // every write completed before the call, and writes in flight are drained first. Names as
  // volume names. Delete refuses (busy) while clones exist or the snapshot is exported.
  virtual Result<SnapshotInfo> create_snapshot(const std::string& volume,
                                               const std::string& snapshot) {
    return Errc::unsupported;
  }
  virtual Result<std::vector<SnapshotInfo>> list_snapshots(const std::string& volume) {
    return Errc::unsupported;
  }
  virtual Status delete_snapshot(const std::string& volume, const std::string& snapshot) {
    return Errc::unsupported;
  }
  // A writable volume whose initial content is the snapshot; O(1).
  virtual Result<VolumeInfo> clone_volume(const std::string& volume, const std::string& snapshot,
                                          const std::string& new_volume) {
    return Errc::unsupported;
  }
  // Copies what a clone still reads from its parent snapshot, then detaches it.
  virtual Status flatten_volume(const std::string& volume) { return Errc::unsupported; }
  // Changed ranges between `from` (empty = the empty volume) and `to` (empty = the live
  // volume), from metadata only; cost grows with the changed extents, not the volume size.
  virtual Result<std::vector<DiffRun>> diff(const std::string& volume, const std::string& from,
                                            const std::string& to) {
    return Errc::unsupported;
  }

  // Node-wide durability point (group-committed): data device sync + metadata WAL sync.
  virtual Task<Status> flush() = 0;
  virtual StoreStats stats() = 0;
};

// Opens `name`, creating it with `size_bytes` when absent (*created = true) and growing it
// when smaller: a replica's or a replicated volume's primary's copy (cluster mode).
Result<std::shared_ptr<Volume>> open_or_create_volume(VolumeStore& store, const std::string& name,
                                                      uint64_t size_bytes, bool* created);

}  // namespace cairn::blockd
