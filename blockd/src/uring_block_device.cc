#include "uring_block_device.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "blockd/volume_store.h"
#include "common/assert.h"
#include "common/log.h"
#include "common/reactor.h"

namespace cairn::blockd {
namespace {

constexpr const char* kLog = "blockd.disk";
constexpr size_t kChunkBytesMax = 1u << 30;  // one ring op moves at most this much
constexpr int kRetriesMax = 64;              // EINTR/EAGAIN retries per operation
constexpr size_t kZeroChunkBytes = 1u << 20;

uint32_t dio_alignment(int fd) {
#ifdef STATX_DIOALIGN
  struct statx stx {};
  if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 && (stx.stx_mask & STATX_DIOALIGN) &&
      stx.stx_dio_offset_align != 0) {
    return std::max<uint32_t>({stx.stx_dio_offset_align, stx.stx_dio_mem_align,
                               static_cast<uint32_t>(kSectorSizeBytes)});
  }
#endif
  return 4096;
}

bool retryable(int err) { return err == EINTR || err == EAGAIN; }

}  // namespace

UringBlockDevice::UringBlockDevice(int fd, bool direct, uint32_t alignment_bytes,
                                   uint64_t size_bytes, std::string path)
    : fd_(fd),
      direct_(direct),
      alignment_bytes_(alignment_bytes),
      path_(std::move(path)),
      size_bytes_(size_bytes) {}

UringBlockDevice::~UringBlockDevice() { ::close(fd_); }

Result<std::unique_ptr<UringBlockDevice>> UringBlockDevice::open(const std::string& path,
                                                                 bool direct_io) {
  const int flags = O_RDWR | O_CREAT | O_CLOEXEC;
  int fd = -1;
  bool direct = false;
  if (direct_io) {
    fd = ::open(path.c_str(), flags | O_DIRECT, 0600);
    if (fd >= 0) {
      direct = true;
    } else if (errno != EINVAL) {
      int err = errno;
      CAIRN_LOG_ERROR(kLog, "open %s failed: %s", path.c_str(), strerror(err));
      return errno_code(err);
    }
  }
  if (fd < 0) {
    fd = ::open(path.c_str(), flags, 0600);
    if (fd < 0) {
      int err = errno;
      CAIRN_LOG_ERROR(kLog, "open %s failed: %s", path.c_str(), strerror(err));
      return errno_code(err);
    }
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return errno_code(err);
  }
  uint32_t alignment = static_cast<uint32_t>(kSectorSizeBytes);
  if (direct) {
    alignment = dio_alignment(fd);
    if (alignment > kBlockSizeBytes || kBlockSizeBytes % alignment != 0) {
      // The engine issues whole 4 KiB blocks; a coarser device is served buffered.
      CAIRN_LOG_WARN(kLog, "direct-I/O alignment %u unsupported, using buffered I/O path=%s",
                     alignment, path.c_str());
      ::close(fd);
      fd = ::open(path.c_str(), flags, 0600);
      if (fd < 0) return errno_code(errno);
      direct = false;
      alignment = static_cast<uint32_t>(kSectorSizeBytes);
    }
  }
  CAIRN_LOG_INFO(kLog, "data file opened path=%s direct_io=%d alignment_bytes=%u size_bytes=%llu",
                 path.c_str(), direct ? 1 : 0, alignment,
                 static_cast<unsigned long long>(st.st_size));
  return std::unique_ptr<UringBlockDevice>(new UringBlockDevice(
      fd, direct, alignment, static_cast<uint64_t>(st.st_size), path));
}

Status UringBlockDevice::grow(uint64_t new_size_bytes) {
  std::lock_guard lk(grow_mu_);
  if (new_size_bytes <= size_bytes()) return ok();
  if (::ftruncate(fd_, static_cast<off_t>(new_size_bytes)) != 0) {
    int err = errno;
    CAIRN_LOG_ERROR(kLog, "ftruncate %s to %llu failed: %s", path_.c_str(),
                    static_cast<unsigned long long>(new_size_bytes), strerror(err));
    if (err == ENOSPC || err == EFBIG) return Errc::no_space;
    return errno_code(err);
  }
  size_bytes_.store(new_size_bytes, std::memory_order_release);
  return ok();
}

Task<Status> UringBlockDevice::read(void* buf, size_t len, uint64_t off) {
  auto* p = static_cast<uint8_t*>(buf);
  Reactor* r = Reactor::current();
  size_t done = 0;
  int retries = 0;
  while (done < len) {
    size_t chunk = std::min(len - done, kChunkBytesMax);
    int n;
    if (r != nullptr) {
      n = co_await r->read(fd_, p + done, static_cast<unsigned>(chunk), off + done);
    } else {
      ssize_t s = ::pread(fd_, p + done, chunk, static_cast<off_t>(off + done));
      n = s < 0 ? -errno : static_cast<int>(s);
    }
    if (n < 0) {
      if (retryable(-n) && ++retries < kRetriesMax) continue;
      CAIRN_LOG_ERROR(kLog, "read off=%llu len=%zu failed: %s",
                      static_cast<unsigned long long>(off + done), chunk, strerror(-n));
      co_return errno_code(-n);
    }
    if (n == 0) {  // past the end of the file: a sparse tail reads as zeros
      std::memset(p + done, 0, len - done);
      break;
    }
    done += static_cast<size_t>(n);
  }
  co_return ok();
}

Task<Status> UringBlockDevice::write(const void* buf, size_t len, uint64_t off, bool fua) {
  const auto* p = static_cast<const uint8_t*>(buf);
  const int rw_flags = fua ? RWF_DSYNC : 0;
  Reactor* r = Reactor::current();
  size_t done = 0;
  int retries = 0;
  while (done < len) {
    size_t chunk = std::min(len - done, kChunkBytesMax);
    int n;
    if (r != nullptr) {
      n = co_await r->write(fd_, p + done, static_cast<unsigned>(chunk), off + done, rw_flags);
    } else {
      iovec iov{const_cast<uint8_t*>(p + done), chunk};
      ssize_t s = ::pwritev2(fd_, &iov, 1, static_cast<off_t>(off + done), rw_flags);
      n = s < 0 ? -errno : static_cast<int>(s);
    }
    if (n < 0) {
      if (retryable(-n) && ++retries < kRetriesMax) continue;
      CAIRN_LOG_ERROR(kLog, "write off=%llu len=%zu failed: %s",
                      static_cast<unsigned long long>(off + done), chunk, strerror(-n));
      co_return errno_code(-n);
    }
    if (n == 0) {
      CAIRN_LOG_ERROR(kLog, "write off=%llu made no progress",
                      static_cast<unsigned long long>(off + done));
      co_return errno_code(EIO);
    }
    done += static_cast<size_t>(n);
  }
  co_return ok();
}

Task<Status> UringBlockDevice::write_zeroes(uint64_t off, uint64_t len) {
  void* raw = nullptr;
  if (posix_memalign(&raw, kBlockSizeBytes, kZeroChunkBytes) != 0) co_return errno_code(ENOMEM);
  std::unique_ptr<void, decltype(&free)> zeros(raw, &free);
  std::memset(raw, 0, kZeroChunkBytes);
  for (uint64_t done = 0; done < len;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(len - done, kZeroChunkBytes));
    CAIRN_CO_TRY(co_await write(raw, n, off + done, false));
    done += n;
  }
  co_return ok();
}

Task<Status> UringBlockDevice::punch_hole(uint64_t off, uint64_t len) {
  const int mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
  Reactor* r = Reactor::current();
  int rc;
  for (int retries = 0;; ++retries) {
    if (r != nullptr) {
      rc = co_await r->fallocate(fd_, mode, off, len);
    } else {
      rc = ::fallocate(fd_, mode, static_cast<off_t>(off), static_cast<off_t>(len)) == 0 ? 0 : -errno;
    }
    if (rc < 0 && retryable(-rc) && retries < kRetriesMax) continue;
    break;
  }
  if (rc == -EOPNOTSUPP) {
    // The filesystem cannot punch: zeros written in place give the same reads.
    uint64_t end = std::min(off + len, size_bytes());
    if (end > off) co_return co_await write_zeroes(off, end - off);
    co_return ok();
  }
  if (rc < 0) {
    CAIRN_LOG_ERROR(kLog, "punch_hole off=%llu len=%llu failed: %s",
                    static_cast<unsigned long long>(off), static_cast<unsigned long long>(len),
                    strerror(-rc));
    co_return errno_code(-rc);
  }
  co_return ok();
}

Task<Status> UringBlockDevice::sync() {
  Reactor* r = Reactor::current();
  int rc;
  for (int retries = 0;; ++retries) {
    if (r != nullptr) rc = co_await r->fsync(fd_, true);
    else rc = ::fdatasync(fd_) == 0 ? 0 : -errno;
    if (rc < 0 && retryable(-rc) && retries < kRetriesMax) continue;
    break;
  }
  if (rc < 0) {
    CAIRN_LOG_ERROR(kLog, "fdatasync %s failed: %s", path_.c_str(), strerror(-rc));
    co_return errno_code(-rc);
  }
  co_return ok();
}

}  // namespace cairn::blockd
