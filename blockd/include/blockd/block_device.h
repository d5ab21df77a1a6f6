// BlockDevice: the seam between the volume engine and the storage under it.
//
// One BlockDevice is the node's physical space (a data file or a raw device). The volume
// engine owns it for the life of the VolumeStore. Methods may be called from any Reactor
// thread concurrently; the uring implementation submits to the calling thread's Reactor.
// Implementations: UringBlockDevice (real file, O_DIRECT where the filesystem allows it) and
// SimBlockDevice (memory; keeps unsynced writes apart so crash() can drop or tear them).
//
// Contract: after punch_hole(off, len) completes, reads of that range return zeros; after
// sync() completes, every write and punch completed before sync() started survives a crash.
// Buffers, offsets and lengths passed to read/write must be multiples of alignment_bytes().
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/result.h"
#include "common/task.h"

namespace cairn::blockd {

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  virtual uint64_t size_bytes() const = 0;
  // Grows the device (a file is extended sparsely); a fixed device fails with no_space.
  virtual Status grow(uint64_t new_size_bytes) = 0;
  // Required alignment of buffers, offsets and lengths (512 or 4096 with O_DIRECT).
  virtual uint32_t alignment_bytes() const = 0;

  virtual Task<Status> read(void* buf, size_t len, uint64_t off) = 0;
  virtual Task<Status> write(const void* buf, size_t len, uint64_t off, bool fua) = 0;
  virtual Task<Status> punch_hole(uint64_t off, uint64_t len) = 0;
  virtual Task<Status> sync() = 0;
};

}  // namespace cairn::blockd
