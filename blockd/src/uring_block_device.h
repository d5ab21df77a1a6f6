// UringBlockDevice: the node's data file as a BlockDevice, driven by io_uring.
//
// Owned by the VolumeStore for its whole life. Opened with O_DIRECT where the filesystem
// allows it (falls back to buffered I/O when open(O_DIRECT) fails with EINVAL, e.g. tmpfs).
// Each operation is submitted to the calling thread's Reactor (Reactor::current()); on a
// thread without one (the store's maintenance thread, start-up) it uses plain syscalls and
// completes synchronously, so run_sync() works there. Thread-safe.
//
// alignment_bytes(): with O_DIRECT the filesystem's direct-I/O alignment (statx
// STATX_DIOALIGN, else 4096); buffered: 512. Never above kBlockSizeBytes (4096): the engine
// relies on whole 4 KiB blocks being aligned. FUA = RWF_DSYNC; punch_hole =
// fallocate(PUNCH_HOLE|KEEP_SIZE) (writes zeros where the filesystem cannot punch);
// sync = fdatasync; grow = ftruncate.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "blockd/block_device.h"

namespace cairn::blockd {

class UringBlockDevice final : public BlockDevice {
 public:
  static Result<std::unique_ptr<UringBlockDevice>> open(const std::string& path, bool direct_io);
  ~UringBlockDevice() override;
  UringBlockDevice(const UringBlockDevice&) = delete;
  UringBlockDevice& operator=(const UringBlockDevice&) = delete;

  bool direct_io() const { return direct_; }

  uint64_t size_bytes() const override { return size_bytes_.load(std::memory_order_acquire); }
  Status grow(uint64_t new_size_bytes) override;
  uint32_t alignment_bytes() const override { return alignment_bytes_; }
  Task<Status> read(void* buf, size_t len, uint64_t off) override;
  Task<Status> write(const void* buf, size_t len, uint64_t off, bool fua) override;
  Task<Status> punch_hole(uint64_t off, uint64_t len) override;
  Task<Status> sync() override;

 private:
  UringBlockDevice(int fd, bool direct, uint32_t alignment_bytes, uint64_t size_bytes,
                   std::string path);
  Task<Status> write_zeroes(uint64_t off, uint64_t len);

  const int fd_;
  const bool direct_;
  const uint32_t alignment_bytes_;
  const std::string path_;
  std::atomic<uint64_t> size_bytes_;
  std::mutex grow_mu_;
};

}  // namespace cairn::blockd
