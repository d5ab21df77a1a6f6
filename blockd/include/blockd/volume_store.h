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
};

// One run of a BLOCK_STATUS answer (NBD base:allocation semantics).
struct AllocationRun {
  uint64_t length_bytes = 0;
  bool allocated = false;  // false: a hole that reads as zeros
};

struct StoreStats {
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t volumes = 0;
};

class VolumeStore;

// A handle on one open volume, shared by the NBD connections that export it. Thread-safe.
// Offsets and lengths are validated by the caller (protocol layer) against size_bytes();
// the engine still checks bounds and returns out_of_range rather than trusting them.
// Buffers passed to read/write need no particular alignment; aligned ones (4096) are faster.
class Volume {
 public:
  virtual ~Volume() = default;
  virtual const std::string& name() const = 0;
  virtual uint64_t size_bytes() const = 0;
  // False once the volume was deleted (forced): I/O then fails with not_found.
  virtual bool alive() const = 0;

  virtual Task<Status> read(uint64_t offset, uint64_t length, void* buf) = 0;
  virtual Task<Status> write(uint64_t offset, uint64_t length, const void* buf, bool fua) = 0;
  // Releases whole blocks inside the range (space returns to the store); partial blocks at
  // the edges are zeroed. Reads of the range return zeros afterwards.
  virtual Task<Status> trim(uint64_t offset, uint64_t length, bool fua) = 0;
  // Makes the range read as zeros. may_release=false (NBD NO_HOLE) keeps it allocated.
  virtual Task<Status> write_zeroes(uint64_t offset, uint64_t length, bool may_release,
                                    bool fua) = 0;
  // Durable: every write completed before flush() began (any connection, any volume).
  virtual Task<Status> flush() = 0;
  // Allocation map of [offset, offset+length), runs merged, at most max_runs runs.
  virtual Result<std::vector<AllocationRun>> allocation(uint64_t offset, uint64_t length,
                                                        size_t max_runs) = 0;
};

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
  virtual Result<std::shared_ptr<Volume>> open_volume(const std::string& name) = 0;

  // Node-wide durability point (group-committed): data device sync + metadata WAL sync.
  virtual Task<Status> flush() = 0;
  virtual StoreStats stats() = 0;
};

}  // namespace cairn::blockd
