#include "blockd/sim_block_device.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <mutex>
#include <random>
#include <unordered_map>
#include <vector>

#include "common/assert.h"

namespace cairn::blockd {
namespace {

constexpr uint64_t kSimSectorBytes = 512;
using Sector = std::array<uint8_t, kSimSectorBytes>;
using Image = std::unordered_map<uint64_t, Sector>;  // sector index -> bytes; absent = zeros

bool all_zero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (p[i] != 0) return false;
  return true;
}

void put_sector(Image& img, uint64_t sector, const uint8_t* src) {
  if (all_zero(src, kSimSectorBytes)) {
    img.erase(sector);
    return;
  }
  std::memcpy(img[sector].data(), src, kSimSectorBytes);
}

void punch_sectors(Image& img, uint64_t first, uint64_t count) {
  if (count < img.size()) {
    for (uint64_t s = first; s < first + count; ++s) img.erase(s);
    return;
  }
  for (auto it = img.begin(); it != img.end();) {
    if (it->first >= first && it->first < first + count) it = img.erase(it);
    else ++it;
  }
}

}  // namespace

struct SimBlockDevice::Disk {
  struct LoggedOp {
    bool punch = false;
    bool fua = false;
    uint64_t first_sector = 0;
    uint64_t sectors = 0;
    std::vector<uint8_t> data;  // writes only
  };

  mutable std::mutex mu;
  uint64_t size_bytes = 0;
  uint64_t size_max_bytes = 0;
  uint32_t alignment_bytes = 512;
  uint64_t generation = 0;
  Image current;
  Image durable;
  std::vector<LoggedOp> log;
  uint32_t fail_remaining = 0;
  int fail_err = EIO;
  uint64_t syncs = 0;

  void apply(Image& img, const LoggedOp& op) {
    if (op.punch) {
      punch_sectors(img, op.first_sector, op.sectors);
      return;
    }
    for (uint64_t i = 0; i < op.sectors; ++i)
      put_sector(img, op.first_sector + i, op.data.data() + i * kSimSectorBytes);
  }
};

SimBlockDevice::SimBlockDevice(const Options& options) : disk_(std::make_shared<Disk>()) {
  CAIRN_ASSERT(options.alignment_bytes >= kSimSectorBytes &&
               options.alignment_bytes % kSimSectorBytes == 0);
  CAIRN_ASSERT(options.size_bytes % kSimSectorBytes == 0);
  disk_->size_bytes = options.size_bytes;
  disk_->size_max_bytes = options.size_max_bytes;
  disk_->alignment_bytes = options.alignment_bytes;
  generation_ = 0;
}

SimBlockDevice::SimBlockDevice(std::shared_ptr<Disk> disk, uint64_t generation)
    : disk_(std::move(disk)), generation_(generation) {}

SimBlockDevice::~SimBlockDevice() = default;

std::unique_ptr<SimBlockDevice> SimBlockDevice::attach() const {
  std::lock_guard lk(disk_->mu);
  return std::unique_ptr<SimBlockDevice>(new SimBlockDevice(disk_, disk_->generation));
}

void SimBlockDevice::crash(CrashMode mode, uint64_t seed) {
  std::lock_guard lk(disk_->mu);
  Disk& d = *disk_;
  std::mt19937_64 rng(seed);
  for (const auto& op : d.log) {
    if (op.fua || mode == CrashMode::keep_random_subset) {
      if (op.fua || (rng() & 1)) d.apply(d.durable, op);
      continue;
    }
    if (mode == CrashMode::drop_unsynced) continue;
    for (uint64_t i = 0; i < op.sectors; ++i) {  // tear_sectors
      if ((rng() & 1) == 0) continue;
      uint64_t s = op.first_sector + i;
      if (op.punch) d.durable.erase(s);
      else put_sector(d.durable, s, op.data.data() + i * kSimSectorBytes);
    }
  }
  d.log.clear();
  d.current = d.durable;
  d.fail_remaining = 0;
  ++d.generation;
}

void SimBlockDevice::fail_next_ops(uint32_t count, int err) {
  std::lock_guard lk(disk_->mu);
  disk_->fail_remaining = count;
  disk_->fail_err = err;
}

void SimBlockDevice::peek(uint64_t off, size_t len, void* out, bool durable) const {
  std::lock_guard lk(disk_->mu);
  const Image& img = durable ? disk_->durable : disk_->current;
  auto* dst = static_cast<uint8_t*>(out);
  size_t done = 0;
  while (done < len) {
    uint64_t pos = off + done;
    uint64_t sector = pos / kSimSectorBytes;
    size_t in = pos % kSimSectorBytes;
    size_t n = std::min<size_t>(len - done, kSimSectorBytes - in);
    auto it = img.find(sector);
    if (it == img.end()) std::memset(dst + done, 0, n);
    else std::memcpy(dst + done, it->second.data() + in, n);
    done += n;
  }
}

uint64_t SimBlockDevice::unsynced_ops() const {
  std::lock_guard lk(disk_->mu);
  return disk_->log.size();
}

uint64_t SimBlockDevice::syncs() const {
  std::lock_guard lk(disk_->mu);
  return disk_->syncs;
}

uint64_t SimBlockDevice::size_bytes() const {
  std::lock_guard lk(disk_->mu);
  return disk_->size_bytes;
}

uint32_t SimBlockDevice::alignment_bytes() const { return disk_->alignment_bytes; }

// Shared preamble of every operation: power state and injected failures. Caller holds mu.
#define SIM_CHECK_OP()                                                              \
  do {                                                                              \
    if (generation_ != disk_->generation) return errno_code(EIO);                   \
    if (disk_->fail_remaining > 0) {                                                \
      --disk_->fail_remaining;                                                      \
      return errno_code(disk_->fail_err);                                           \
    }                                                                               \
  } while (0)

Status SimBlockDevice::grow(uint64_t new_size_bytes) {
  std::lock_guard lk(disk_->mu);
  SIM_CHECK_OP();
  if (new_size_bytes <= disk_->size_bytes) return ok();
  if (new_size_bytes > disk_->size_max_bytes) return Errc::no_space;
  CAIRN_ASSERT(new_size_bytes % kSimSectorBytes == 0);
  disk_->size_bytes = new_size_bytes;
  return ok();
}

Status SimBlockDevice::read_now(void* buf, size_t len, uint64_t off) {
  const uint32_t a = disk_->alignment_bytes;
  CAIRN_ASSERT(off % a == 0 && len % a == 0 && reinterpret_cast<uintptr_t>(buf) % a == 0);
  {
    std::lock_guard lk(disk_->mu);
    SIM_CHECK_OP();
    if (off + len > disk_->size_bytes || off + len < off) return Errc::out_of_range;
  }
  peek(off, len, buf, false);
  return ok();
}

Status SimBlockDevice::write_now(const void* buf, size_t len, uint64_t off, bool fua) {
  const uint32_t a = disk_->alignment_bytes;
  CAIRN_ASSERT(off % a == 0 && len % a == 0 && reinterpret_cast<uintptr_t>(buf) % a == 0);
  std::lock_guard lk(disk_->mu);
  SIM_CHECK_OP();
  if (off + len > disk_->size_bytes || off + len < off) return Errc::out_of_range;
  Disk::LoggedOp op;
  op.fua = fua;
  op.first_sector = off / kSimSectorBytes;
  op.sectors = len / kSimSectorBytes;
  op.data.assign(static_cast<const uint8_t*>(buf), static_cast<const uint8_t*>(buf) + len);
  disk_->apply(disk_->current, op);
  disk_->log.push_back(std::move(op));
  return ok();
}

Status SimBlockDevice::punch_now(uint64_t off, uint64_t len) {
  CAIRN_ASSERT(off % kSimSectorBytes == 0 && len % kSimSectorBytes == 0);
  std::lock_guard lk(disk_->mu);
  SIM_CHECK_OP();
  if (off >= disk_->size_bytes || len == 0) return ok();
  len = std::min(len, disk_->size_bytes - off);
  Disk::LoggedOp op;
  op.punch = true;
  op.first_sector = off / kSimSectorBytes;
  op.sectors = len / kSimSectorBytes;
  disk_->apply(disk_->current, op);
  disk_->log.push_back(std::move(op));
  return ok();
}

Status SimBlockDevice::sync_now() {
  std::lock_guard lk(disk_->mu);
  SIM_CHECK_OP();
  for (const auto& op : disk_->log) disk_->apply(disk_->durable, op);
  disk_->log.clear();
  ++disk_->syncs;
  return ok();
}

#undef SIM_CHECK_OP

Task<Status> SimBlockDevice::read(void* buf, size_t len, uint64_t off) {
  co_return read_now(buf, len, off);
}

Task<Status> SimBlockDevice::write(const void* buf, size_t len, uint64_t off, bool fua) {
  co_return write_now(buf, len, off, fua);
}

Task<Status> SimBlockDevice::punch_hole(uint64_t off, uint64_t len) {
  co_return punch_now(off, len);
}

Task<Status> SimBlockDevice::sync() { co_return sync_now(); }

}  // namespace cairn::blockd
