// SimBlockDevice: an in-memory BlockDevice for tests that models what a disk keeps after a
// power cut.
//
// Every write and punch lands in the "current" image at once (reads see it) and is also
// logged as unsynced; sync() makes the log durable. crash() throws the unsynced part away
// (all of it, a seeded random subset of whole operations, or random 512-byte sectors of
// them: torn writes) and powers the disk off: every handle that existed before the crash
// fails all further operations with EIO, the way a dead process can no longer write. A test
// keeps its own handle (attach()) to crash the disk, inspect it, and hand a fresh handle to
// the reopened store. Operations complete synchronously (no Reactor needed: run_sync works).
//
// Thread-safe (one mutex per disk). Alignment is checked with CAIRN_ASSERT: a misaligned
// buffer, offset or length is an engine bug. Limits: memory grows with the bytes written
// (all-zero sectors are not stored).
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "blockd/block_device.h"

namespace cairn::blockd {

enum class CrashMode {
  drop_unsynced,       // nothing written since the last sync survives
  keep_random_subset,  // each unsynced write/punch survives whole, or not at all (seeded)
  tear_sectors,        // each 512-byte sector of each unsynced write/punch survives or not
};

class SimBlockDevice final : public BlockDevice {
 public:
  struct Options {
    uint64_t size_bytes = 0;
    uint64_t size_max_bytes = 1ull << 40;  // grow() beyond this fails with no_space
    uint32_t alignment_bytes = 512;
  };

  explicit SimBlockDevice(const Options& options);
  ~SimBlockDevice() override;

  // Another handle on the same simulated disk (works on a powered-off handle too).
  std::unique_ptr<SimBlockDevice> attach() const;
  // Power cut: keeps the durable image plus what `mode` lets survive of the unsynced log,
  // then fails every handle created before this call.
  void crash(CrashMode mode, uint64_t seed);
  // The next `count` operations (read, write, punch, sync, grow) fail with `err`.
  void fail_next_ops(uint32_t count, int err = EIO);
  // Test inspection, ignoring alignment and power state: the current (or durable) bytes.
  void peek(uint64_t off, size_t len, void* out, bool durable = false) const;
  // Operations logged since the last sync; total syncs so far.
  uint64_t unsynced_ops() const;
  uint64_t syncs() const;

  uint64_t size_bytes() const override;
  Status grow(uint64_t new_size_bytes) override;
  uint32_t alignment_bytes() const override;
  Task<Status> read(void* buf, size_t len, uint64_t off) override;
  Task<Status> write(const void* buf, size_t len, uint64_t off, bool fua) override;
  Task<Status> punch_hole(uint64_t off, uint64_t len) override;
  Task<Status> sync() override;

 private:
  struct Disk;
  SimBlockDevice(std::shared_ptr<Disk> disk, uint64_t generation);
  Status read_now(void* buf, size_t len, uint64_t off);
  Status write_now(const void* buf, size_t len, uint64_t off, bool fua);
  Status punch_now(uint64_t off, uint64_t len);
  Status sync_now();

  std::shared_ptr<Disk> disk_;
  uint64_t generation_;  // power cycle this handle belongs to
};

}  // namespace cairn::blockd
