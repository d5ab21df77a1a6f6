// Volume: a handle on one open volume, the interface the NBD server serves and wrappers
// (instant restore's HydratingVolume, replication's ReplicatedVolume) decorate. The engine
// behind it is blockd's VolumeStore (blockd/volume_store.h); it lives in common/ so that
// replication/ can wrap and feed volumes without depending on blockd.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/task.h"

namespace cairn {

// One run of a BLOCK_STATUS answer (NBD base:allocation semantics).
struct AllocationRun {
  uint64_t length_bytes = 0;
  bool allocated = false;  // false: a hole that reads as zeros
};

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
  // Snapshot exports (`volume@snapshot`) are read-only: writes fail with permission_denied.
  virtual bool read_only() const { return false; }
  // Runs of [offset, offset+length) changed since snapshot `since` of the same volume
  // (allocated=true: changed), for the NBD context qemu:dirty-bitmap:<since>. For a
  // snapshot export, "changed" means between `since` and this snapshot.
  virtual Result<std::vector<AllocationRun>> changed_since(const std::string& since,
                                                           uint64_t offset, uint64_t length,
                                                           size_t max_runs) {
    return Errc::unsupported;
  }
  // Names of the snapshots a dirty-bitmap context can be asked for (older than this point).
  virtual std::vector<std::string> dirty_bitmap_sources() { return {}; }
};

}  // namespace cairn
