// The volume engine: VolumeStore::open, StoreImpl (control, flush, maintenance, recovery)
// and VolumeCore (the I/O paths). Design and format: docs/FORMAT-blockd.md.
#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <bitset>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <optional>

#include "blockd/volume_store.h"
#include "common/assert.h"
#include "common/fault.h"
#include "common/log.h"
#include "common/stripe_locks.h"
#include "common/when_all.h"
#include "store_impl.h"
#include "uring_block_device.h"

namespace cairn::blockd {

const char kFormatKey[] = "m/format";
const char kNextVolumeIdKey[] = "m/next_volume_id";
const char kVolumeKeyPrefix[] = "v/";
const char kNextSnapshotIdKey[] = "m/next_snapshot_id";

namespace {

constexpr const char* kLog = "blockd.store";
constexpr size_t kZeroChunkBytes = 1u << 20;

uint64_t round_down(uint64_t v, uint64_t a) { return v / a * a; }
uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
bool is_aligned(const void* p, uint64_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }
unsigned long long ull(uint64_t v) { return static_cast<unsigned long long>(v); }

// Read-only source of zeros for WRITE_ZEROES without hole (allocated once, never freed).
const uint8_t* zero_chunk() {
  static const uint8_t* zeros = [] {
    void* p = nullptr;
    int rc = posix_memalign(&p, kBufferAlignBytes, kZeroChunkBytes);
    CAIRN_ASSERT(rc == 0);
    std::memset(p, 0, kZeroChunkBytes);
    return static_cast<const uint8_t*>(p);
  }();
  return zeros;
}

using StripeLocks = cairn::StripeLocks<kRmwStripes>;

std::string encode_be32(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 3; i >= 0; --i) {
    s[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Shared internals (store_impl.h)

AlignedBuffer::AlignedBuffer(size_t n) {
  if (posix_memalign(&p_, kBufferAlignBytes, std::max<size_t>(n, 1)) != 0) p_ = nullptr;
}

std::string encode_be64(uint64_t v) {
  std::string s(8, '\0');
  put_be64(reinterpret_cast<uint8_t*>(s.data()), v);
  return s;
}

Status db_status(const rocksdb::Status& s, const char* what) {
  if (s.ok()) return ok();
  CAIRN_LOG_ERROR(kLog, "metadata %s failed: %s", what, s.ToString().c_str());
  return Errc::io_error;
}

// ---------------------------------------------------------------------------------------
// Records and names

std::string encode_volume_record(const VolumeRecord& rec) {
  std::string v(kVolumeRecordBytes, '\0');
  auto* p = reinterpret_cast<uint8_t*>(v.data());
  p[0] = 2;  // record layout version
  put_be64(p + 1, rec.id);
  put_be64(p + 9, rec.size_bytes);
  put_be64(p + 17, static_cast<uint64_t>(rec.created_unix_s));
  put_be64(p + 25, rec.seq);
  p[33] = rec.deleting ? 1 : 0;
  put_be64(p + 34, rec.parent_volume_id);
  put_be64(p + 42, rec.parent_snapshot_id);
  return v;
}

Result<VolumeRecord> decode_volume_record(std::string_view value) {
  const bool v1 = value.size() == kVolumeRecordV1Bytes && value[0] == 1;
  const bool v2 = value.size() == kVolumeRecordBytes && value[0] == 2;
  if (!v1 && !v2) return Errc::corrupt;
  const auto* p = reinterpret_cast<const uint8_t*>(value.data());
  VolumeRecord rec;
  rec.id = get_be64(p + 1);
  rec.size_bytes = get_be64(p + 9);
  rec.created_unix_s = static_cast<int64_t>(get_be64(p + 17));
  rec.seq = get_be64(p + 25);
  rec.deleting = (p[33] & 1) != 0;
  if (v2) {
    rec.parent_volume_id = get_be64(p + 34);
    rec.parent_snapshot_id = get_be64(p + 42);
  }
  return rec;
}

std::string snapshot_key(uint64_t volume_id, uint64_t snapshot_id) {
  std::string k(17, '\0');
  auto* p = reinterpret_cast<uint8_t*>(k.data());
  p[0] = static_cast<uint8_t>(kSnapshotKeyTag);
  put_be64(p + 1, volume_id);
  put_be64(p + 9, snapshot_id);
  return k;
}

std::string snapshot_key_prefix(uint64_t volume_id) {
  std::string k(9, '\0');
  auto* p = reinterpret_cast<uint8_t*>(k.data());
  p[0] = static_cast<uint8_t>(kSnapshotKeyTag);
  put_be64(p + 1, volume_id);
  return k;
}

std::string encode_snapshot_record(const SnapshotRecord& rec) {
  std::string v(34, '\0');
  auto* p = reinterpret_cast<uint8_t*>(v.data());
  p[0] = 1;  // record layout version
  put_be64(p + 1, rec.id);
  put_be64(p + 9, rec.seq);
  put_be64(p + 17, rec.size_bytes);
  put_be64(p + 25, static_cast<uint64_t>(rec.created_unix_s));
  p[33] = static_cast<uint8_t>(rec.name.size());
  return v + rec.name;
}

Result<SnapshotRecord> decode_snapshot_record(std::string_view value) {
  if (value.size() < 34 || value[0] != 1) return Errc::corrupt;
  const auto* p = reinterpret_cast<const uint8_t*>(value.data());
  if (value.size() != 34u + p[33]) return Errc::corrupt;
  SnapshotRecord rec;
  rec.id = get_be64(p + 1);
  rec.seq = get_be64(p + 9);
  rec.size_bytes = get_be64(p + 17);
  rec.created_unix_s = static_cast<int64_t>(get_be64(p + 25));
  rec.name.assign(value.substr(34));
  return rec;
}

std::string volume_key(const std::string& name) { return kVolumeKeyPrefix + name; }

bool valid_volume_name(const std::string& name) {
  if (name.empty() || name.size() > kVolumeNameMaxBytes) return false;
  if (name[0] == '.' || name[0] == '-') return false;
  for (char c : name) {
    bool okc = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               c == '.' || c == '_' || c == '-';
    if (!okc) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------
// EpochTracker

unsigned EpochTracker::enter() noexcept {
  for (;;) {
    unsigned e = epoch_.load(std::memory_order_seq_cst);
    inflight_[e].fetch_add(1, std::memory_order_seq_cst);
    // Re-check: if the epoch flipped meanwhile, the flipper may already have seen our old
    // counter at zero, so count ourselves in the new epoch instead.
    if (epoch_.load(std::memory_order_seq_cst) == e) return e;
    inflight_[e].fetch_sub(1, std::memory_order_seq_cst);
  }
}

void EpochTracker::leave(unsigned epoch) noexcept {
  uint64_t before = inflight_[epoch].fetch_sub(1, std::memory_order_seq_cst);
  CAIRN_ASSERT(before > 0);
}

bool EpochTracker::wait_zero(unsigned epoch, std::chrono::steady_clock::time_point deadline) {
  while (inflight_[epoch].load(std::memory_order_seq_cst) != 0) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(kEpochPoll);
  }
  return true;
}

bool EpochTracker::flip_and_wait(std::chrono::steady_clock::duration timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const unsigned cur = epoch_.load(std::memory_order_seq_cst);
  const unsigned next = cur ^ 1u;
  // After an earlier timeout the other epoch may still hold old I/O: drain it before reuse.
  if (!wait_zero(next, deadline)) return false;
  epoch_.store(next, std::memory_order_seq_cst);
  return wait_zero(cur, deadline);
}

// ---------------------------------------------------------------------------------------
// VolumeCore

VolumeCore::VolumeCore(StoreImpl& store, std::string name, const VolumeRecord& rec)
    : store_(store),
      name_(std::move(name)),
      id_(rec.id),
      created_unix_s_(rec.created_unix_s),
      size_bytes_(rec.size_bytes),
      seq_(rec.seq) {}

VolumeInfo VolumeCore::info(bool parent_accounting) {
  VolumeInfo info;
  info.id = id_;
  info.name = name_;
  info.size_bytes = size_bytes();
  info.extent_size_bytes = kExtentSizeBytes;
  info.created_unix_s = created_unix_s_;
  info.attached_connections = attached();
  std::lock_guard lk(map_mu_);
  const uint64_t written = map_.written_blocks();
  info.allocated_bytes = written * kBlockSizeBytes;
  info.exclusive_bytes = (written - shared_blocks_) * kBlockSizeBytes;
  uint64_t shared = shared_blocks_;
  if (parent_) {
    info.parent = parent_->name() + "@" + parent_snap_->name;
    // What the clone still reads from its parent snapshot is shared with it (O(parent view)).
    if (parent_accounting && load_parent_view_locked()) {
      for (const auto& [ext, rec] : parent_view_)
        if (map_.find(ext) == nullptr) shared += block_count(rec.data_blocks());
    }
  }
  info.shared_bytes = shared * kBlockSizeBytes;
  return info;
}

VolumeRecord VolumeCore::record() {
  std::lock_guard lk(map_mu_);
  return record_locked();
}

VolumeRecord VolumeCore::record_locked() {
  VolumeRecord rec;
  rec.id = id_;
  rec.size_bytes = size_bytes();
  rec.created_unix_s = created_unix_s_;
  rec.seq = seq_;
  if (parent_) {
    rec.parent_volume_id = parent_->id();
    rec.parent_snapshot_id = parent_snap_->id;
  }
  rec.deleting = deleting_;
  return rec;
}

uint64_t VolumeCore::written_blocks() {
  std::lock_guard lk(map_mu_);
  return map_.written_blocks();
}

size_t VolumeCore::mapped_extents() {
  std::lock_guard lk(map_mu_);
  return map_.mapped_extents();
}

void VolumeCore::map_set_locked(uint64_t ext, const std::optional<ExtentRecord>& rec) {
  if (const ExtentRecord* old = map_.find(ext); old != nullptr && shared_locked(*old))
    shared_blocks_ -= block_count(old->written);
  if (rec) {
    map_.put(ext, *rec);
    if (shared_locked(*rec)) shared_blocks_ += block_count(rec->written);
  } else {
    map_.erase(ext);
  }
}

void VolumeCore::recompute_shared_locked() {
  uint64_t n = 0;
  map_.for_each([&](uint64_t, const ExtentRecord& r) {
    if (shared_locked(r)) n += block_count(r.written);
  });
  shared_blocks_ = n;
}

void VolumeCore::note_change_locked(rocksdb::WriteBatch& batch, uint64_t ext,
                                    const ExtentRecord* old) {
  // A diff asks only for seqs after an existing snapshot's seq; a snapshot can only appear
  // with a new seq, so without snapshots now no diff will ever ask for this seq. A record
  // born in this seq while snapshots existed already put the key.
  if (snaps_.empty()) return;
  if (old != nullptr && old->birth_seq == seq_) return;
  batch.Put(change_key(id_, seq_, ext), rocksdb::Slice());
}

std::shared_ptr<SnapState> VolumeCore::snapshot_by_name_locked(const std::string& name) {
  for (auto& [seq, s] : snaps_)
    if (s->name == name) return s;
  return nullptr;
}

Status VolumeCore::check_io(uint64_t offset, uint64_t length) const {
  if (!alive()) return Errc::not_found;
  const uint64_t size = size_bytes();
  if (offset > size || length > size - offset) return Errc::out_of_range;
  return ok();
}

Status VolumeCore::check_view_io(uint64_t seq, uint64_t offset, uint64_t length) {
  if (seq == kLiveSeq) return check_io(offset, length);
  if (!alive()) return Errc::not_found;
  uint64_t size = 0;
  {
    std::lock_guard lk(map_mu_);
    auto it = snaps_.find(seq);
    if (it == snaps_.end()) return Errc::not_found;
    size = it->second->size_bytes;
  }
  if (offset > size || length > size - offset) return Errc::out_of_range;
  return ok();
}

// ---------------------------------------------------------------------------------------
// VolumeCore: write gate

bool VolumeCore::GateAwaiter::await_suspend(std::coroutine_handle<> h) noexcept {
  // Fast path: count ourselves in, then look at the gate.
  core.gate_inflight_.fetch_add(1, std::memory_order_seq_cst);
  if (!core.gate_closed_.load(std::memory_order_seq_cst)) return false;
  core.gate_leave();  // closed: step back out (waking the closer if we were the last)
  std::unique_lock lk(core.gate_mu_);
  if (!core.gate_closed_.load(std::memory_order_seq_cst)) {  // reopened meanwhile
    core.gate_inflight_.fetch_add(1, std::memory_order_seq_cst);
    return false;
  }
  reactor = Reactor::current();
  if (reactor == nullptr) {  // a plain thread (run_sync): block it until the gate opens
    core.gate_cv_.wait(lk, [&] { return !core.gate_closed_.load(std::memory_order_seq_cst); });
    core.gate_inflight_.fetch_add(1, std::memory_order_seq_cst);
    return false;
  }
  handle = h;
  core.gate_waiters_.push_back(this);  // admitted (and counted) by gate_open
  return true;
}

void VolumeCore::gate_leave() {
  const uint64_t before = gate_inflight_.fetch_sub(1, std::memory_order_seq_cst);
  CAIRN_ASSERT(before > 0);
  if (before == 1 && gate_closed_.load(std::memory_order_seq_cst)) {
    std::lock_guard lk(gate_mu_);  // no lost wake-up: the closer checks under this mutex
    gate_cv_.notify_all();
  }
}

bool VolumeCore::gate_close_and_drain(std::chrono::steady_clock::duration timeout) {
  std::unique_lock lk(gate_mu_);
  CAIRN_ASSERT(!gate_closed_.load());
  gate_closed_.store(true, std::memory_order_seq_cst);
  if (gate_cv_.wait_for(lk, timeout, [&] {
        return gate_inflight_.load(std::memory_order_seq_cst) == 0;
      }))
    return true;
  lk.unlock();
  gate_open();
  return false;
}

void VolumeCore::gate_open() {
  std::vector<GateAwaiter*> waiters;
  {
    std::lock_guard lk(gate_mu_);
    waiters.swap(gate_waiters_);
    gate_inflight_.fetch_add(waiters.size(), std::memory_order_seq_cst);  // admitted now
    gate_closed_.store(false, std::memory_order_seq_cst);
  }
  gate_cv_.notify_all();  // plain threads blocked in await_suspend
  for (GateAwaiter* w : waiters) {
    Reactor* r = w->reactor;
    std::coroutine_handle<> h = w->handle;  // `w` lives in the waiter's frame
    r->resume_on(h);
  }
}

// ---------------------------------------------------------------------------------------
// VolumeCore: I/O

Task<Status> VolumeCore::read(uint64_t seq, uint64_t offset, uint64_t length, void* buf) {
  CAIRN_CO_TRY(check_view_io(seq, offset, length));
  if (length == 0) co_return ok();
  EpochGuard epoch(store_.epochs());
  const uint64_t a = store_.device().alignment_bytes();
  if (offset % a == 0 && length % a == 0 && is_aligned(buf, a))
    co_return co_await read_aligned(seq, offset, length, static_cast<uint8_t*>(buf));
  const uint64_t a0 = round_down(offset, a);
  const uint64_t a1 = round_up(offset + length, a);
  AlignedBuffer bounce(a1 - a0);
  if (!bounce.ok()) co_return errno_code(ENOMEM);
  CAIRN_CO_TRY(co_await read_aligned(seq, a0, a1 - a0, bounce.data()));
  std::memcpy(buf, bounce.data() + (offset - a0), length);
  co_return ok();
}

Task<Status> VolumeCore::read_aligned(uint64_t seq, uint64_t offset, uint64_t length,
                                      uint8_t* buf) {
  std::vector<Seg> reads;
  std::vector<Seg> zeros;
  auto add = [](std::vector<Seg>& v, uint64_t dev_off, uint64_t len, uint8_t* p) {
    if (!v.empty() && v.back().dev_off + v.back().len == dev_off && v.back().buf + v.back().len == p)
      v.back().len += len;
    else
      v.push_back({dev_off, len, p});
  };
  const uint64_t end = offset + length;
  // One extent's part [pos, ext_end) as `rec` (null or a marker: zeros) maps it.
  auto add_extent = [&](uint64_t pos, uint64_t ext_start, uint64_t ext_end,
                        const ExtentRecord* rec) {
    if (rec == nullptr || rec->is_marker()) {
      add(zeros, pos, ext_end - pos, buf + (pos - offset));
      return;
    }
    while (pos < ext_end) {
      const uint64_t b = (pos - ext_start) / kBlockSizeBytes;
      const uint64_t bend = std::min(ext_end, ext_start + (b + 1) * kBlockSizeBytes);
      if (rec->written & (1u << b)) {
        add(reads, rec->phys_extent * kExtentSizeBytes + (pos - ext_start), bend - pos,
            buf + (pos - offset));
      } else {
        add(zeros, pos, bend - pos, buf + (pos - offset));
      }
      pos = bend;
    }
  };
  if (seq == kLiveSeq) {
    std::lock_guard lk(map_mu_);
    if (!alive()) co_return Errc::not_found;
    for (uint64_t pos = offset; pos < end;) {
      const uint64_t ext = pos / kExtentSizeBytes;
      const uint64_t ext_start = ext * kExtentSizeBytes;
      const uint64_t ext_end = std::min(end, ext_start + kExtentSizeBytes);
      const ExtentRecord* rec = map_.find(ext);
      if (rec == nullptr && parent_) {
        Result<const ExtentRecord*> p = parent_find_locked(ext);
        if (!p) co_return p.error();
        rec = p.value();
      }
      add_extent(pos, ext_start, ext_end, rec);
      pos = ext_end;
    }
  } else {
    // A snapshot's view never changes and its extents stay allocated while it is open.
    ExtentMap::Records recs;
    CAIRN_CO_TRY(view_records(seq, offset / kExtentSizeBytes, (end - 1) / kExtentSizeBytes + 1,
                              &recs));
    size_t i = 0;
    for (uint64_t pos = offset; pos < end;) {
      const uint64_t ext = pos / kExtentSizeBytes;
      const uint64_t ext_start = ext * kExtentSizeBytes;
      const uint64_t ext_end = std::min(end, ext_start + kExtentSizeBytes);
      while (i < recs.size() && recs[i].first < ext) ++i;
      add_extent(pos, ext_start, ext_end,
                 i < recs.size() && recs[i].first == ext ? &recs[i].second : nullptr);
      pos = ext_end;
    }
  }
  for (const Seg& z : zeros) std::memset(z.buf, 0, z.len);
  std::vector<Task<Status>> tasks;
  tasks.reserve(reads.size());
  for (const Seg& r : reads) tasks.push_back(store_.device().read(r.buf, r.len, r.dev_off));
  co_return co_await when_all(std::move(tasks));
}

void VolumeCore::revert_locked(Undo& undo, const std::vector<uint64_t>& allocated) {
  for (auto it = undo.rbegin(); it != undo.rend(); ++it) map_set_locked(it->first, it->second);
  undo.clear();
  // Never written and never visible outside the lock: straight back to the free pool.
  for (uint64_t p : allocated) store_.allocator().unallocate(p);
}

Task<Status> VolumeCore::write_blocks(EpochGuard& epoch, uint64_t offset, uint64_t length,
                                      const uint8_t* buf, bool fua, bool serialized,
                                      bool* metadata_changed, int depth) {
  CAIRN_ASSERT(offset % kBlockSizeBytes == 0 && length % kBlockSizeBytes == 0);
  std::vector<Seg> writes;
  std::vector<SlowExtent> slow;
  bool changed = false;
  for (int attempt = 0;; ++attempt) {
    writes.clear();
    slow.clear();
    bool no_space = false;
    {
      std::lock_guard lk(map_mu_);
      if (!alive()) co_return Errc::not_found;
      rocksdb::WriteBatch batch;
      Undo undo;
      std::vector<uint64_t> allocated;
      Status failed = ok();
      const uint64_t end = offset + length;
      for (uint64_t pos = offset; pos < end;) {
        const uint64_t ext = pos / kExtentSizeBytes;
        const uint64_t ext_start = ext * kExtentSizeBytes;
        const uint64_t ext_end = std::min(end, ext_start + kExtentSizeBytes);
        const uint32_t b0 = static_cast<uint32_t>((pos - ext_start) / kBlockSizeBytes);
        const uint32_t b1 = static_cast<uint32_t>((ext_end - ext_start) / kBlockSizeBytes);
        const BlockBitmap mask = block_mask(b0, b1);
        const uint8_t* src = buf + (pos - offset);
        const ExtentRecord* rec = map_.find(ext);
        bool fresh = false;  // a new extent holding only this write
        if (rec == nullptr) {
          if (parent_) {
            Result<const ExtentRecord*> p = parent_find_locked(ext);
            if (!p) {
              failed = p.error();
              break;
            }
            if (p.value() != nullptr) {  // copy-on-write from the parent snapshot
              slow.push_back({ext, b0, b1, src});
              pos = ext_end;
              continue;
            }
          }
          fresh = true;
        } else if (rec->is_marker()) {
          fresh = true;
        } else if (shared_locked(*rec)) {  // redirect-on-write
          slow.push_back({ext, b0, b1, src});
          pos = ext_end;
          continue;
        }
        ExtentRecord next;
        bool put = false;
        if (fresh) {
          Result<uint64_t> phys = store_.allocate_extent();
          if (!phys) {
            if (phys.error() == make_error_code(Errc::no_space)) no_space = true;
            else failed = phys.error();
            break;
          }
          allocated.push_back(phys.value());
          next = ExtentRecord{phys.value(), mask, seq_};
          if (rec != nullptr && marker_shared_locked(*rec))
            batch.Put(version_key(id_, ext, seq_), encode_extent_record(*rec));
          undo.emplace_back(ext, rec != nullptr ? std::optional<ExtentRecord>(*rec) : std::nullopt);
          note_change_locked(batch, ext, rec);
          put = true;
        } else {
          next = *rec;
          if ((rec->written & mask) != mask) {
            undo.emplace_back(ext, *rec);
            note_change_locked(batch, ext, rec);
            next.written = static_cast<BlockBitmap>(next.written | mask);
            next.birth_seq = seq_;
            put = true;
          }
        }
        if (put) {
          map_set_locked(ext, next);
          batch.Put(extent_key(id_, ext), encode_extent_record(next));
        }
        const uint64_t dev_off = next.phys_extent * kExtentSizeBytes + (pos - ext_start);
        uint8_t* wsrc = const_cast<uint8_t*>(src);
        if (!writes.empty() && writes.back().dev_off + writes.back().len == dev_off &&
            writes.back().buf + writes.back().len == wsrc)
          writes.back().len += ext_end - pos;
        else
          writes.push_back({dev_off, ext_end - pos, wsrc});
        pos = ext_end;
      }
      if (no_space || !failed) {
        revert_locked(undo, allocated);
        if (!failed) co_return failed;
      } else if (batch.Count() > 0) {
        // Metadata before data: after a crash the mapping finds the new data or zeros.
        int f = CAIRN_FAULT_POINT("blockd.volume.before_metadata");
        Status st = f != 0 ? Status(errno_code(f)) : store_.write_metadata(batch);
        if (!st) {
          revert_locked(undo, allocated);
          co_return st;
        }
        changed = true;
      }
    }
    if (!no_space) break;
    if (attempt >= kAllocRetriesMax || store_.allocator().quarantined_extents() == 0) {
      CAIRN_LOG_WARN(kLog, "no space volume=%s offset=%llu length=%llu", name_.c_str(),
                     ull(offset), ull(length));
      co_return Errc::no_space;
    }
    // Freed extents exist but are still quarantined: wait for a promotion round, outside
    // our epoch (the round waits for it).
    epoch.leave();
    co_await store_.wait_for_promotion();
    epoch.enter();
  }
  if (changed) {
    *metadata_changed = true;
    if (int f = CAIRN_FAULT_POINT("blockd.volume.after_metadata")) co_return errno_code(f);
  }
  if (!writes.empty()) {
    std::vector<Task<Status>> tasks;
    tasks.reserve(writes.size());
    for (const Seg& w : writes)
      tasks.push_back(store_.device().write(w.buf, w.len, w.dev_off, fua));
    CAIRN_CO_TRY(co_await when_all(std::move(tasks)));
  }
  for (const SlowExtent& sx : slow) {
    Result<Rewrite> r = co_await rewrite_extent(epoch, sx, serialized, metadata_changed);
    if (!r) co_return r.error();
    if (r.value() == Rewrite::retry_fast) {
      // The extent stopped being shared / parent-backed meanwhile: the plain path serves it.
      if (depth >= 2) co_return Errc::unavailable;
      CAIRN_CO_TRY(co_await write_blocks(epoch, sx.ext * kExtentSizeBytes + sx.b0 * kBlockSizeBytes,
                                         (sx.b1 - sx.b0) * kBlockSizeBytes, sx.data, fua,
                                         serialized, metadata_changed, depth + 1));
    }
  }
  co_return ok();
}

Task<Result<VolumeCore::Rewrite>> VolumeCore::rewrite_extent(EpochGuard& epoch,
                                                             const SlowExtent& sx,
                                                             bool serialized,
                                                             bool* metadata_changed) {
  // Serialized with RMW writes and other rewrites of this extent (the lock is taken outside
  // the epoch).
  StripeLocks stripe(rmw_mu_);
  if (!serialized) {
    epoch.leave();
    co_await stripe.lock(sx.ext, sx.ext);
    epoch.enter();
  }
  const BlockBitmap mask = block_mask(sx.b0, sx.b1);
  const bool release = sx.data == nullptr;
  for (int attempt = 0;; ++attempt) {
    if (attempt > kAllocRetriesMax + 2) co_return Errc::unavailable;
    ExtentRecord src;
    bool own = false;
    BlockBitmap next_written = 0;
    uint64_t phys = 0;
    bool no_space = false;
    {
      std::lock_guard lk(map_mu_);
      if (!alive()) co_return Errc::not_found;
      const ExtentRecord* rec = map_.find(sx.ext);
      if (rec != nullptr) {
        if (!shared_locked(*rec)) co_return Rewrite::retry_fast;
        src = *rec;
        own = true;
      } else {
        if (!parent_) co_return Rewrite::retry_fast;
        Result<const ExtentRecord*> p = parent_find_locked(sx.ext);
        if (!p) co_return p.error();
        if (p.value() == nullptr) co_return Rewrite::retry_fast;
        src = *p.value();
      }
      const BlockBitmap keep = static_cast<BlockBitmap>(src.written & ~mask);
      if (release && (src.written & mask) == 0) co_return Rewrite::done;  // nothing to drop
      next_written = release ? keep : static_cast<BlockBitmap>(keep | mask);
      if (next_written == 0) {
        // Everything it held is released: no data to copy, metadata only. The old record
        // stays visible to its snapshots as a version; a clone hides the parent's data.
        rocksdb::WriteBatch batch;
        if (own) batch.Put(version_key(id_, sx.ext, seq_), encode_extent_record(src));
        note_change_locked(batch, sx.ext, own ? &src : nullptr);
        std::optional<ExtentRecord> next;
        if (parent_) next = zero_marker(seq_);
        if (next) batch.Put(extent_key(id_, sx.ext), encode_extent_record(*next));
        else batch.Delete(extent_key(id_, sx.ext));
        int f = CAIRN_FAULT_POINT("blockd.volume.before_metadata");
        Status st = f != 0 ? Status(errno_code(f)) : store_.write_metadata(batch);
        if (!st) co_return st.error();
        map_set_locked(sx.ext, next);
        *metadata_changed = true;
        co_return Rewrite::done;
      }
      Result<uint64_t> p = store_.allocate_extent();
      if (p) phys = p.value();
      else if (p.error() == make_error_code(Errc::no_space)) no_space = true;
      else co_return p.error();
    }
    if (no_space) {
      if (attempt >= kAllocRetriesMax || store_.allocator().quarantined_extents() == 0) {
        CAIRN_LOG_WARN(kLog, "no space for redirect volume=%s extent=%llu", name_.c_str(),
                       ull(sx.ext));
        co_return Errc::no_space;
      }
      epoch.leave();
      co_await store_.wait_for_promotion();
      epoch.enter();
      continue;
    }
    // The new extent is not mapped yet: its data goes first, durably (FUA), so that once the
    // mapping moves to it (a metadata write that survives kill -9) it holds every block the
    // old one did. After a crash before the switch it is unmapped space (punched at open).
    AlignedBuffer ebuf(kExtentSizeBytes);
    if (!ebuf.ok()) {
      store_.allocator().unallocate(phys);
      co_return errno_code(ENOMEM);
    }
    std::vector<Seg> reads, writes;
    for (uint32_t b = 0; b < kBlocksPerExtent;) {
      if (!(next_written & (1u << b))) {
        ++b;
        continue;
      }
      uint32_t e = b;
      while (e < kBlocksPerExtent && (next_written & (1u << e))) ++e;
      writes.push_back({phys * kExtentSizeBytes + b * kBlockSizeBytes, (e - b) * kBlockSizeBytes,
                        ebuf.data() + b * kBlockSizeBytes});
      b = e;
    }
    const BlockBitmap copy = static_cast<BlockBitmap>(src.written & ~mask);
    for (uint32_t b = 0; b < kBlocksPerExtent;) {
      if (!(copy & (1u << b))) {
        ++b;
        continue;
      }
      uint32_t e = b;
      while (e < kBlocksPerExtent && (copy & (1u << e))) ++e;
      reads.push_back({src.phys_extent * kExtentSizeBytes + b * kBlockSizeBytes,
                       (e - b) * kBlockSizeBytes, ebuf.data() + b * kBlockSizeBytes});
      b = e;
    }
    Status st = ok();
    {
      std::vector<Task<Status>> tasks;
      for (const Seg& r : reads) tasks.push_back(store_.device().read(r.buf, r.len, r.dev_off));
      st = co_await when_all(std::move(tasks));
    }
    if (st) {
      if (!release)
        std::memcpy(ebuf.data() + sx.b0 * kBlockSizeBytes, sx.data,
                    (sx.b1 - sx.b0) * kBlockSizeBytes);
      std::vector<Task<Status>> tasks;
      for (const Seg& w : writes)
        tasks.push_back(store_.device().write(w.buf, w.len, w.dev_off, /*fua=*/true));
      st = co_await when_all(std::move(tasks));
    }
    if (!st) {
      store_.allocator().quarantine(phys);  // may hold some of the bytes
      co_return st.error();
    }
    {
      std::lock_guard lk(map_mu_);
      if (!alive()) {
        store_.allocator().quarantine(phys);
        co_return Errc::not_found;
      }
      const ExtentRecord* cur = map_.find(sx.ext);
      const bool same = own ? (cur != nullptr && *cur == src) : cur == nullptr;
      if (!same) {  // changed under us (a metadata-only release): start over
        store_.allocator().quarantine(phys);
        continue;
      }
      rocksdb::WriteBatch batch;
      if (own) batch.Put(version_key(id_, sx.ext, seq_), encode_extent_record(src));
      note_change_locked(batch, sx.ext, own ? &src : nullptr);
      const ExtentRecord next{phys, next_written, seq_};
      batch.Put(extent_key(id_, sx.ext), encode_extent_record(next));
      int f = CAIRN_FAULT_POINT("blockd.volume.before_metadata");
      st = f != 0 ? Status(errno_code(f)) : store_.write_metadata(batch);
      if (!st) {
        store_.allocator().quarantine(phys);
        co_return st.error();
      }
      map_set_locked(sx.ext, next);
    }
    *metadata_changed = true;
    if (int f = CAIRN_FAULT_POINT("blockd.volume.after_metadata")) co_return errno_code(f);
    co_return Rewrite::done;
  }
}

Task<Status> VolumeCore::write_any(uint64_t offset, uint64_t length, const void* buf, bool fua,
                                   bool* metadata_changed) {
  const uint64_t a = store_.device().alignment_bytes();
  if (offset % kBlockSizeBytes == 0 && length % kBlockSizeBytes == 0) {
    EpochGuard epoch(store_.epochs());
    if (is_aligned(buf, a)) {
      co_return co_await write_blocks(epoch, offset, length, static_cast<const uint8_t*>(buf),
                                      fua, false, metadata_changed);
    }
    AlignedBuffer bounce(length);
    if (!bounce.ok()) co_return errno_code(ENOMEM);
    std::memcpy(bounce.data(), buf, length);
    co_return co_await write_blocks(epoch, offset, length, bounce.data(), fua, false,
                                    metadata_changed);
  }
  // Not whole blocks: read-modify-write of the covering blocks. Clear blocks read as zeros,
  // so a partly written block is zero-filled. Serialized per extent: two such writes into
  // one block must not overwrite each other's bytes. Lock before entering the epoch.
  const uint64_t a0 = round_down(offset, kBlockSizeBytes);
  const uint64_t a1 = round_up(offset + length, kBlockSizeBytes);
  StripeLocks stripes(rmw_mu_);
  co_await stripes.lock(a0 / kExtentSizeBytes, (a1 - 1) / kExtentSizeBytes);
  EpochGuard epoch(store_.epochs());
  AlignedBuffer bounce(a1 - a0);
  if (!bounce.ok()) co_return errno_code(ENOMEM);
  bool head_read = false;
  if (offset != a0) {
    CAIRN_CO_TRY(co_await read_aligned(kLiveSeq, a0, kBlockSizeBytes, bounce.data()));
    head_read = true;
  }
  if (offset + length != a1 && !(head_read && a1 - kBlockSizeBytes == a0)) {
    CAIRN_CO_TRY(co_await read_aligned(kLiveSeq, a1 - kBlockSizeBytes, kBlockSizeBytes,
                                       bounce.data() + (a1 - kBlockSizeBytes - a0)));
  }
  std::memcpy(bounce.data() + (offset - a0), buf, length);
  co_return co_await write_blocks(epoch, a0, a1 - a0, bounce.data(), fua, true,
                                  metadata_changed);
}

Task<Status> VolumeCore::write(uint64_t offset, uint64_t length, const void* buf, bool fua) {
  CAIRN_CO_TRY(check_io(offset, length));
  if (length == 0) co_return ok();
  GateAwaiter gate{*this};
  co_await gate;
  GateExit exit{*this};
  bool metadata_changed = false;
  CAIRN_CO_TRY(co_await write_any(offset, length, buf, fua, &metadata_changed));
  // The data went out with FUA; the mapping that finds it must be durable too (it may have
  // been written by this request or by an earlier, unflushed one).
  if (fua && (metadata_changed || store_.metadata_unsynced())) co_return co_await store_.flush();
  co_return ok();
}

Task<Status> VolumeCore::zero_partial_block(uint64_t offset, uint64_t length,
                                            bool* metadata_changed) {
  const uint64_t blk = round_down(offset, kBlockSizeBytes);
  CAIRN_ASSERT(offset + length <= blk + kBlockSizeBytes);
  StripeLocks stripe(rmw_mu_);
  co_await stripe.lock(blk / kExtentSizeBytes, blk / kExtentSizeBytes);
  EpochGuard epoch(store_.epochs());
  {
    std::lock_guard lk(map_mu_);
    if (!alive()) co_return Errc::not_found;
    Result<std::optional<ExtentRecord>> rec = live_visible_locked(blk / kExtentSizeBytes);
    if (!rec) co_return rec.error();
    const uint64_t b = (blk % kExtentSizeBytes) / kBlockSizeBytes;
    if (!rec.value() || !(rec.value()->written & (1u << b))) co_return ok();  // zeros already
  }
  AlignedBuffer bounce(kBlockSizeBytes);
  if (!bounce.ok()) co_return errno_code(ENOMEM);
  CAIRN_CO_TRY(co_await read_aligned(kLiveSeq, blk, kBlockSizeBytes, bounce.data()));
  std::memset(bounce.data() + (offset - blk), 0, length);
  co_return co_await write_blocks(epoch, blk, kBlockSizeBytes, bounce.data(), false, true,
                                  metadata_changed);
}

Task<Status> VolumeCore::release_blocks(uint64_t offset, uint64_t length) {
  CAIRN_ASSERT(offset % kBlockSizeBytes == 0 && length % kBlockSizeBytes == 0 && length > 0);
  EpochGuard epoch(store_.epochs());
  const uint64_t end = offset + length;
  const uint64_t last_ext = (end - 1) / kExtentSizeBytes;
  uint64_t cursor = offset / kExtentSizeBytes;
  std::vector<SlowExtent> slow;
  while (cursor <= last_ext) {
    std::vector<Seg> punches;
    {
      std::lock_guard lk(map_mu_);
      if (!alive()) co_return Errc::not_found;
      rocksdb::WriteBatch batch;
      Undo undo;
      std::vector<uint64_t> freed;
      size_t visited = 0;
      auto it = map_.lower_bound(cursor);
      // A clone also releases what it reads from its parent snapshot (sorted by extent).
      const ExtentMap::Records* pv = nullptr;
      size_t pi = 0;
      if (parent_) {
        CAIRN_CO_TRY(load_parent_view_locked());
        pv = &parent_view_;
        pi = static_cast<size_t>(
            std::lower_bound(pv->begin(), pv->end(), cursor,
                             [](const ExtentMap::Entry& e, uint64_t x) { return e.first < x; }) -
            pv->begin());
      }
      cursor = last_ext + 1;
      for (;;) {
        const uint64_t own_next =
            it != map_.end() && it->first <= last_ext ? it->first : kLiveSeq;
        const uint64_t par_next =
            pv != nullptr && pi < pv->size() && (*pv)[pi].first <= last_ext ? (*pv)[pi].first
                                                                            : kLiveSeq;
        const uint64_t ext = std::min(own_next, par_next);
        if (ext == kLiveSeq) break;
        if (visited == kReleaseBatchExtents) {  // bound the critical section
          cursor = ext;
          break;
        }
        ++visited;
        const uint64_t ext_start = ext * kExtentSizeBytes;
        const uint64_t s = std::max(offset, ext_start);
        const uint64_t e = std::min(end, ext_start + kExtentSizeBytes);
        const uint32_t b0 = static_cast<uint32_t>((s - ext_start) / kBlockSizeBytes);
        const uint32_t b1 = static_cast<uint32_t>((e - ext_start) / kBlockSizeBytes);
        const BlockBitmap mask = block_mask(b0, b1);
        if (par_next == ext) ++pi;
        if (own_next != ext) {
          // Parent-backed (no own record): hide the parent's blocks.
          const ExtentRecord prec = (*pv)[pi - 1].second;
          if ((prec.written & mask) == 0) continue;
          if ((prec.written & ~mask) != 0) {  // some blocks stay: copy them
            slow.push_back({ext, b0, b1, nullptr});
            continue;
          }
          undo.emplace_back(ext, std::nullopt);
          note_change_locked(batch, ext, nullptr);
          const ExtentRecord m = zero_marker(seq_);
          map_set_locked(ext, m);
          batch.Put(extent_key(id_, ext), encode_extent_record(m));
          continue;
        }
        const ExtentRecord rec = it->second;
        ++it;
        if (rec.is_marker()) continue;
        const BlockBitmap cleared = rec.written & mask;
        if (cleared == 0) continue;
        const BlockBitmap rest = static_cast<BlockBitmap>(rec.written & ~mask);
        if (shared_locked(rec)) {
          if (rest != 0) {  // the surviving blocks move to a new extent
            slow.push_back({ext, b0, b1, nullptr});
            continue;
          }
          // A snapshot still sees it: it becomes a version, nothing is freed or punched.
          undo.emplace_back(ext, rec);
          batch.Put(version_key(id_, ext, seq_), encode_extent_record(rec));
          note_change_locked(batch, ext, &rec);
          std::optional<ExtentRecord> next;
          if (parent_) next = zero_marker(seq_);
          map_set_locked(ext, next);
          if (next) batch.Put(extent_key(id_, ext), encode_extent_record(*next));
          else batch.Delete(extent_key(id_, ext));
          continue;
        }
        undo.emplace_back(ext, rec);
        note_change_locked(batch, ext, &rec);
        if (rest == 0) {
          std::optional<ExtentRecord> next;
          if (parent_) next = zero_marker(seq_);
          map_set_locked(ext, next);
          if (next) batch.Put(extent_key(id_, ext), encode_extent_record(*next));
          else batch.Delete(extent_key(id_, ext));
          freed.push_back(rec.phys_extent);
          continue;
        }
        ExtentRecord next = rec;
        next.written = rest;
        next.birth_seq = seq_;
        map_set_locked(ext, next);
        batch.Put(extent_key(id_, ext), encode_extent_record(next));
        for (uint32_t b = 0; b < kBlocksPerExtent;) {  // punch runs of the cleared blocks
          if (!(cleared & (1u << b))) {
            ++b;
            continue;
          }
          uint32_t bend = b;
          while (bend < kBlocksPerExtent && (cleared & (1u << bend))) ++bend;
          punches.push_back({rec.phys_extent * kExtentSizeBytes + b * kBlockSizeBytes,
                             (bend - b) * kBlockSizeBytes, nullptr});
          b = bend;
        }
      }
      if (batch.Count() > 0) {
        int f = CAIRN_FAULT_POINT("blockd.volume.before_metadata");
        Status st = f != 0 ? Status(errno_code(f)) : store_.write_metadata(batch);
        if (!st) {
          revert_locked(undo, {});
          co_return st;
        }
      }
      // Unmapped (in RocksDB too) before quarantined: a promotion round that takes these
      // syncs the WAL first, so the unmapping is durable before the extent is reused.
      for (uint64_t p : freed) store_.allocator().quarantine(p);
    }
    if (!punches.empty()) {
      if (int f = CAIRN_FAULT_POINT("blockd.volume.after_metadata")) co_return errno_code(f);
    }
    std::vector<Task<Status>> tasks;
    tasks.reserve(punches.size());
    for (const Seg& p : punches) tasks.push_back(store_.device().punch_hole(p.dev_off, p.len));
    CAIRN_CO_TRY(co_await when_all(std::move(tasks)));
  }
  bool changed = false;
  for (const SlowExtent& sx : slow) {
    Result<Rewrite> r = co_await rewrite_extent(epoch, sx, false, &changed);
    if (!r) co_return r.error();
    if (r.value() == Rewrite::retry_fast) {
      // No longer shared / parent-backed: the plain release serves it.
      CAIRN_CO_TRY(co_await release_blocks(sx.ext * kExtentSizeBytes + sx.b0 * kBlockSizeBytes,
                                           (sx.b1 - sx.b0) * kBlockSizeBytes));
    }
  }
  co_return ok();
}

Task<Status> VolumeCore::trim_any(uint64_t offset, uint64_t length, bool fua) {
  const uint64_t end = offset + length;
  const uint64_t b0 = round_up(offset, kBlockSizeBytes);
  const uint64_t b1 = round_down(end, kBlockSizeBytes);
  bool metadata_changed = false;
  if (b0 > b1) {  // inside one block
    CAIRN_CO_TRY(co_await zero_partial_block(offset, length, &metadata_changed));
  } else {
    if (offset < b0) {
      CAIRN_CO_TRY(co_await zero_partial_block(offset, b0 - offset, &metadata_changed));
    }
    if (b1 < end) {
      CAIRN_CO_TRY(co_await zero_partial_block(b1, end - b1, &metadata_changed));
    }
    if (b0 < b1) {
      CAIRN_CO_TRY(co_await release_blocks(b0, b1 - b0));
    }
  }
  if (fua) co_return co_await store_.flush();
  co_return ok();
}

Task<Status> VolumeCore::trim(uint64_t offset, uint64_t length, bool fua) {
  CAIRN_CO_TRY(check_io(offset, length));
  if (length == 0) co_return ok();
  GateAwaiter gate{*this};
  co_await gate;
  GateExit exit{*this};
  co_return co_await trim_any(offset, length, fua);
}

Task<Status> VolumeCore::write_zeroes(uint64_t offset, uint64_t length, bool may_release,
                                      bool fua) {
  CAIRN_CO_TRY(check_io(offset, length));
  if (length == 0) co_return ok();
  GateAwaiter gate{*this};
  co_await gate;
  GateExit exit{*this};
  if (may_release) co_return co_await trim_any(offset, length, fua);
  const uint64_t end = offset + length;
  bool metadata_changed = false;
  for (uint64_t pos = offset; pos < end;) {
    uint64_t n;
    if (pos % kBlockSizeBytes != 0) n = std::min(end, round_up(pos, kBlockSizeBytes)) - pos;
    else if (end - pos < kBlockSizeBytes) n = end - pos;
    else n = std::min<uint64_t>(round_down(end - pos, kBlockSizeBytes), kZeroChunkBytes);
    CAIRN_CO_TRY(co_await write_any(pos, n, zero_chunk(), false, &metadata_changed));
    pos += n;
  }
  if (fua) co_return co_await store_.flush();
  co_return ok();
}

Result<std::vector<AllocationRun>> VolumeCore::allocation(uint64_t seq, uint64_t offset,
                                                          uint64_t length, size_t max_runs) {
  CAIRN_TRY(check_view_io(seq, offset, length));
  if (max_runs == 0) return Errc::invalid_argument;
  std::vector<AllocationRun> runs;
  auto add = [&](bool allocated, uint64_t n) {
    if (!runs.empty() && runs.back().allocated == allocated) {
      runs.back().length_bytes += n;
      return true;
    }
    if (runs.size() == max_runs) return false;
    runs.push_back({n, allocated});
    return true;
  };
  const uint64_t end = offset + length;
  if (length == 0) return runs;
  bool simple = false;
  if (seq == kLiveSeq) {
    std::lock_guard lk(map_mu_);
    simple = !parent_;
    if (simple) {
      for (uint64_t pos = offset; pos < end;) {
        const uint64_t ext = pos / kExtentSizeBytes;
        const uint64_t ext_start = ext * kExtentSizeBytes;
        auto it = map_.lower_bound(ext);
        while (it != map_.end() && it->second.is_marker()) ++it;  // markers read as zeros
        if (it == map_.end() || it->first != ext) {
          const uint64_t hole_end =
              it == map_.end() ? end : std::min(end, std::max(pos, it->first * kExtentSizeBytes));
          if (!add(false, hole_end - pos)) break;
          pos = hole_end;
          continue;
        }
        const uint64_t b = (pos - ext_start) / kBlockSizeBytes;
        const uint64_t bend = std::min(end, ext_start + (b + 1) * kBlockSizeBytes);
        if (!add((it->second.written >> b) & 1u, bend - pos)) break;
        pos = bend;
      }
    }
  }
  if (simple) return runs;
  // Snapshots and clones: the merged view of the range.
  ExtentMap::Records recs;
  CAIRN_TRY(view_records(seq, offset / kExtentSizeBytes, (end - 1) / kExtentSizeBytes + 1, &recs));
  size_t i = 0;
  for (uint64_t pos = offset; pos < end;) {
    const uint64_t ext = pos / kExtentSizeBytes;
    const uint64_t ext_start = ext * kExtentSizeBytes;
    while (i < recs.size() && recs[i].first < ext) ++i;
    if (i == recs.size() || recs[i].first != ext) {
      const uint64_t hole_end =
          i == recs.size() ? end : std::min(end, recs[i].first * kExtentSizeBytes);
      if (!add(false, hole_end - pos)) break;
      pos = hole_end;
      continue;
    }
    const uint64_t b = (pos - ext_start) / kBlockSizeBytes;
    const uint64_t bend = std::min(end, ext_start + (b + 1) * kBlockSizeBytes);
    if (!add((recs[i].second.written >> b) & 1u, bend - pos)) break;
    pos = bend;
  }
  return runs;
}

// ---------------------------------------------------------------------------------------
// VolumeHandle

VolumeHandle::VolumeHandle(std::shared_ptr<VolumeCore> core) : core_(std::move(core)) {
  core_->attached_.fetch_add(1, std::memory_order_acq_rel);
}

VolumeHandle::~VolumeHandle() { core_->attached_.fetch_sub(1, std::memory_order_acq_rel); }

Task<Status> VolumeHandle::read(uint64_t offset, uint64_t length, void* buf) {
  return core_->read(kLiveSeq, offset, length, buf);
}
Task<Status> VolumeHandle::write(uint64_t offset, uint64_t length, const void* buf, bool fua) {
  return core_->write(offset, length, buf, fua);
}
Task<Status> VolumeHandle::trim(uint64_t offset, uint64_t length, bool fua) {
  return core_->trim(offset, length, fua);
}
Task<Status> VolumeHandle::write_zeroes(uint64_t offset, uint64_t length, bool may_release,
                                        bool fua) {
  return core_->write_zeroes(offset, length, may_release, fua);
}
Task<Status> VolumeHandle::flush() {
  if (!core_->alive()) {
    return []() -> Task<Status> { co_return Errc::not_found; }();
  }
  return core_->store_.flush();
}
Result<std::vector<AllocationRun>> VolumeHandle::allocation(uint64_t offset, uint64_t length,
                                                            size_t max_runs) {
  return core_->allocation(kLiveSeq, offset, length, max_runs);
}
Result<std::vector<AllocationRun>> VolumeHandle::changed_since(const std::string& since,
                                                               uint64_t offset,
                                                               uint64_t length,
                                                               size_t max_runs) {
  return core_->changed_since(since, kLiveSeq, offset, length, max_runs);
}
std::vector<std::string> VolumeHandle::dirty_bitmap_sources() {
  return core_->snapshots_before(kLiveSeq);
}

// ---------------------------------------------------------------------------------------
// StoreImpl: control

StoreImpl::StoreImpl(const Options& options, std::unique_ptr<BlockDevice> device,
                     rocksdb::DB* db, uint64_t capacity_extents, uint64_t next_volume_id)
    : options_(options),
      dev_(std::move(device)),
      db_(db),
      alloc_(capacity_extents),
      next_volume_id_(next_volume_id) {}

StoreImpl::~StoreImpl() {
  {
    std::lock_guard lk(mt_mu_);
    mt_stop_ = true;
  }
  mt_cv_.notify_all();
  if (maintenance_.joinable()) maintenance_.join();
  // Clean close: make everything durable (fails quietly on a dead device).
  off_reactor([this] {
    Status st = run_sync(dev_->sync());
    (void)st;
    (void)db_->SyncWAL();
    return 0;
  });
  db_->Close();
  delete db_;
  CAIRN_LOG_INFO(kLog, "store closed data_dir=%s", options_.data_dir.c_str());
}

Result<std::shared_ptr<VolumeCore>> StoreImpl::find_locked(const std::string& name) {
  auto it = volumes_.find(name);
  if (it == volumes_.end() || it->second->deleting_) return Errc::not_found;
  return it->second;
}

Result<VolumeInfo> StoreImpl::create_volume(const std::string& name, uint64_t size_bytes) {
  if (!valid_volume_name(name)) return Errc::invalid_argument;
  if (size_bytes == 0 || size_bytes % kSectorSizeBytes != 0 || size_bytes > kVolumeSizeMaxBytes)
    return Errc::invalid_argument;
  std::lock_guard lk(mu_);
  if (volumes_.count(name) != 0) return Errc::already_exists;
  VolumeRecord rec;
  rec.id = next_volume_id_;
  rec.size_bytes = size_bytes;
  rec.created_unix_s = static_cast<int64_t>(::time(nullptr));
  rec.seq = 1;
  rocksdb::WriteBatch batch;
  batch.Put(volume_key(name), encode_volume_record(rec));
  batch.Put(kNextVolumeIdKey, encode_be64(rec.id + 1));
  rocksdb::WriteOptions wo;
  wo.sync = true;
  CAIRN_TRY(db_status(db_->Write(wo, &batch), "create volume"));
  ++next_volume_id_;
  auto core = std::make_shared<VolumeCore>(*this, name, rec);
  volumes_[name] = core;
  CAIRN_LOG_INFO(kLog, "volume created name=%s id=%llu size_bytes=%llu", name.c_str(),
                 ull(rec.id), ull(size_bytes));
  return core->info();
}

std::vector<VolumeInfo> StoreImpl::list_volumes() {
  std::lock_guard lk(mu_);
  std::vector<VolumeInfo> out;
  for (auto& [name, core] : volumes_)
    if (!core->deleting_) out.push_back(core->info());
  return out;
}

Result<VolumeInfo> StoreImpl::get_volume(const std::string& name) {
  std::lock_guard lk(mu_);
  CAIRN_TRY(core, find_locked(name));
  return core->info();
}

Result<VolumeInfo> StoreImpl::resize_volume(const std::string& name, uint64_t size_bytes) {
  if (size_bytes == 0 || size_bytes % kSectorSizeBytes != 0 || size_bytes > kVolumeSizeMaxBytes)
    return Errc::invalid_argument;
  std::lock_guard lk(mu_);
  CAIRN_TRY(core, find_locked(name));
  const uint64_t old_size = core->size_bytes();
  if (size_bytes < old_size) return Errc::invalid_argument;
  if (size_bytes == old_size) return core->info();
  VolumeRecord rec = core->record();
  rec.size_bytes = size_bytes;
  rocksdb::WriteOptions wo;
  wo.sync = true;
  CAIRN_TRY(db_status(db_->Put(wo, volume_key(name), encode_volume_record(rec)), "resize"));
  core->size_bytes_.store(size_bytes, std::memory_order_release);
  CAIRN_LOG_INFO(kLog, "volume resized name=%s id=%llu old_size_bytes=%llu size_bytes=%llu",
                 name.c_str(), ull(core->id()), ull(old_size), ull(size_bytes));
  return core->info();
}

Status StoreImpl::finish_delete(uint64_t volume_id, ExtentMap::Records& extents,
                                bool quarantine) {
  size_t done = 0;
  while (done < extents.size()) {
    rocksdb::WriteBatch batch;
    std::vector<uint64_t> phys;
    size_t i = done;
    for (; i < extents.size() && batch.Count() < kDeleteBatchKeys; ++i) {
      batch.Delete(extent_key(volume_id, extents[i].first));
      if (!extents[i].second.is_marker()) phys.push_back(extents[i].second.phys_extent);
    }
    Status st = write_metadata(batch);
    if (!st) {
      extents.erase(extents.begin(), extents.begin() + static_cast<ptrdiff_t>(done));
      return st;  // the caller puts back what is left
    }
    done = i;
    if (quarantine)
      for (uint64_t p : phys) alloc_.quarantine(p);
  }
  extents.clear();
  return ok();
}

Status StoreImpl::delete_volume(const std::string& name, bool force) {
  std::lock_guard cl(ctl_mu_);
  std::lock_guard lk(mu_);
  auto found = volumes_.find(name);
  if (found == volumes_.end()) return Errc::not_found;
  std::shared_ptr<VolumeCore> core = found->second;
  const uint32_t attached = core->attached();
  if (!core->deleting_) {  // else: an earlier delete failed half-way; finish it
    if (core->flattening_.load()) return Errc::busy;
    bool has_snapshots = false, has_clones = false, snapshot_open = false;
    {
      std::lock_guard ml(core->map_mu_);
      for (auto& [seq, snap] : core->snaps_) {
        has_snapshots = true;
        has_clones = has_clones || snap->clones > 0;
        snapshot_open = snapshot_open || snap->attached.load() > 0;
      }
    }
    // Clones read from its snapshots: even a forced delete waits for them to go or flatten.
    if (has_clones) return Errc::busy;
    if ((attached > 0 || has_snapshots || snapshot_open) && !force) return Errc::busy;
    // 1. Mark the record: a crash from here on finishes the delete at open.
    VolumeRecord rec = core->record();
    rec.deleting = true;
    rocksdb::WriteOptions wo;
    wo.sync = true;
    CAIRN_TRY(db_status(db_->Put(wo, volume_key(name), encode_volume_record(rec)), "delete mark"));
    core->deleting_ = true;
  }
  // 2. Kill the handles (their I/O fails with not_found) and take the map.
  ExtentMap::Records extents;
  {
    std::lock_guard ml(core->map_mu_);
    core->alive_.store(false, std::memory_order_release);
    extents = core->map_.take_all();
  }
  const size_t freed = extents.size();
  // 3. Unmap in batches; each batch's extents go to quarantine once unmapped.
  Status st = finish_delete(core->id(), extents, true);
  if (!st) {
    std::lock_guard ml(core->map_mu_);
    for (auto& [ext, rec] : extents) core->map_.put(ext, rec);  // retried by the next delete
    return st;
  }
  // 3b. Snapshot versions (quarantined like unmapped extents), change index, snapshots.
  CAIRN_TRY(delete_prefix(version_key_prefix(core->id()), true));
  CAIRN_TRY(delete_prefix(change_key_prefix(core->id()), false));
  CAIRN_TRY(delete_prefix(snapshot_key_prefix(core->id()), false));
  // 4. Drop the record.
  rocksdb::WriteOptions wo;
  wo.sync = true;
  CAIRN_TRY(db_status(db_->Delete(wo, volume_key(name)), "delete record"));
  {
    std::lock_guard ml(core->map_mu_);
    if (core->parent_snap_) --core->parent_snap_->clones;
    core->snaps_.clear();
    core->parent_.reset();
    core->parent_snap_.reset();
    core->parent_view_.clear();
  }
  volumes_.erase(found);
  CAIRN_LOG_INFO(kLog, "volume deleted name=%s id=%llu force=%d attached=%u freed_extents=%zu",
                 name.c_str(), ull(core->id()), force ? 1 : 0, attached, freed);
  return ok();
}

Result<std::shared_ptr<Volume>> StoreImpl::open_volume(const std::string& name) {
  const size_t at = name.find('@');
  if (at != std::string::npos) {  // volume@snapshot: read-only
    std::lock_guard lk(mu_);
    CAIRN_TRY(core, find_locked(name.substr(0, at)));
    if (!core->alive()) return Errc::not_found;
    // Attached under the lock delete_snapshot checks it under.
    std::lock_guard ml(core->map_mu_);
    std::shared_ptr<SnapState> snap = core->snapshot_by_name_locked(name.substr(at + 1));
    if (!snap) return Errc::not_found;
    return std::shared_ptr<Volume>(std::make_shared<SnapshotHandle>(core, std::move(snap)));
  }
  std::lock_guard lk(mu_);
  CAIRN_TRY(core, find_locked(name));
  if (!core->alive()) return Errc::not_found;
  return std::shared_ptr<Volume>(std::make_shared<VolumeHandle>(std::move(core)));
}

std::vector<uint64_t> StoreImpl::mapped_physical_extents() {
  std::vector<uint64_t> out;
  {
    std::lock_guard lk(mu_);
    for (auto& [name, core] : volumes_) {
      std::lock_guard ml(core->map_mu_);
      core->map_.for_each([&](uint64_t, const ExtentRecord& rec) {
        if (!rec.is_marker()) out.push_back(rec.phys_extent);
      });
    }
  }
  // Snapshot versions.
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  const std::string prefix(1, kVersionKeyTag);
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    auto rec = decode_extent_record(std::string_view(it->value().data(), it->value().size()));
    if (rec && !rec.value().is_marker()) out.push_back(rec.value().phys_extent);
  }
  std::sort(out.begin(), out.end());
  return out;
}

StoreStats StoreImpl::stats() {
  StoreStats s;
  s.capacity_bytes = capacity_bytes();
  s.used_bytes = (alloc_.used_extents() + alloc_.quarantined_extents()) * kExtentSizeBytes;
  std::lock_guard lk(mu_);
  for (auto& [name, core] : volumes_)
    if (!core->deleting_) ++s.volumes;
  return s;
}

// ---------------------------------------------------------------------------------------
// StoreImpl: space, metadata, durability

Result<uint64_t> StoreImpl::allocate_extent() {
  std::optional<uint64_t> phys = alloc_.allocate();
  if (!phys) return Errc::no_space;
  const uint64_t need = (*phys + 1) * kExtentSizeBytes;
  if (need > dev_->size_bytes()) {
    std::lock_guard lk(grow_mu_);
    if (need > dev_->size_bytes()) {
      uint64_t target = std::max(need, std::min(round_up(need, kGrowStepBytes), capacity_bytes()));
      Status st = dev_->grow(target);
      if (!st) {
        alloc_.unallocate(*phys);
        CAIRN_LOG_WARN(kLog, "data file cannot grow to %llu bytes: %s", ull(target),
                       st.error().message().c_str());
        return st.error();
      }
    }
  }
  return *phys;
}

Status StoreImpl::write_metadata(rocksdb::WriteBatch& batch) {
  rocksdb::WriteOptions wo;
  wo.sync = false;  // the WAL write reaches the OS: survives kill -9; flush() syncs it
  CAIRN_TRY(db_status(db_->Write(wo, &batch), "write"));
  keys_written_.fetch_add(batch.Count(), std::memory_order_acq_rel);
  metadata_writes_.fetch_add(1, std::memory_order_acq_rel);
  return ok();
}

Status StoreImpl::write_metadata_sync(rocksdb::WriteBatch& batch, const char* what) {
  rocksdb::WriteOptions wo;
  wo.sync = true;
  CAIRN_TRY(db_status(db_->Write(wo, &batch), what));
  keys_written_.fetch_add(batch.Count(), std::memory_order_acq_rel);
  return ok();
}

Status StoreImpl::delete_prefix(const std::string& prefix, bool versions) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  rocksdb::WriteBatch batch;
  std::vector<uint64_t> phys;
  auto commit = [&]() -> Status {
    CAIRN_TRY(write_metadata(batch));
    batch.Clear();
    for (uint64_t p : phys) alloc_.quarantine(p);  // unmapped before quarantined
    phys.clear();
    return ok();
  };
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    batch.Delete(it->key());
    if (versions) {
      auto rec = decode_extent_record(std::string_view(it->value().data(), it->value().size()));
      if (rec && !rec.value().is_marker()) phys.push_back(rec.value().phys_extent);
    }
    if (batch.Count() >= kDeleteBatchKeys) {
      CAIRN_TRY(commit());
    }
  }
  CAIRN_TRY(db_status(it->status(), "scan"));
  if (batch.Count() > 0) {
    CAIRN_TRY(commit());
  }
  return ok();
}

Task<Status> StoreImpl::sync_all() {
  if (int f = CAIRN_FAULT_POINT("blockd.store.before_sync")) co_return errno_code(f);
  const uint64_t covered = metadata_writes_.load(std::memory_order_acquire);
  CAIRN_CO_TRY(co_await dev_->sync());
  CAIRN_CO_TRY(db_status(db_->SyncWAL(), "WAL sync"));
  uint64_t prev = metadata_synced_.load(std::memory_order_acquire);
  while (prev < covered && !metadata_synced_.compare_exchange_weak(prev, covered)) {
  }
  co_return ok();
}

Status StoreImpl::sync_all_blocking() {
  return off_reactor([this] { return run_sync(sync_all()); });
}

bool StoreImpl::QueueAwaiter::await_suspend(std::coroutine_handle<> h) noexcept {
  waiter.handle = h;
  waiter.reactor = Reactor::current();
  queued = waiter.reactor != nullptr && store.enqueue(&waiter, queue);
  return queued;
}

bool StoreImpl::enqueue(Waiter* w, Queue q) {
  {
    std::lock_guard lk(mt_mu_);
    if (mt_stop_) return false;
    auto& v = q == Queue::flush ? flush_waiters_ : promotion_waiters_;
    if (v.size() >= kWaitersMax) return false;
    v.push_back(w);
  }
  mt_cv_.notify_one();
  return true;
}

void StoreImpl::complete(std::vector<Waiter*>& batch, const Status& st) {
  for (Waiter* w : batch) {
    Reactor* r = w->reactor;
    std::coroutine_handle<> h = w->handle;
    w->result = st;  // `w` lives in the waiter's frame: do not touch it after resume_on
    r->resume_on(h);
  }
  batch.clear();
}

Task<Status> StoreImpl::flush() {
  if (Reactor::current() == nullptr) co_return co_await sync_all();  // unit tests: inline
  if (!metadata_unsynced()) {
    // Fast path: no mapping changed since the last WAL sync, so only the data device needs
    // syncing; do it on the caller's own ring (no hand-off to the maintenance thread).
    if (int f = CAIRN_FAULT_POINT("blockd.store.before_sync")) co_return errno_code(f);
    co_return co_await dev_->sync();
  }
  QueueAwaiter a{*this, Queue::flush, {}, false};
  co_await a;
  if (!a.queued) co_return co_await sync_all();  // queue full or closing: sync ourselves
  co_return a.waiter.result;
}

Task<void> StoreImpl::wait_for_promotion() {
  if (Reactor::current() == nullptr) {
    (void)run_maintenance_round();
    co_return;
  }
  QueueAwaiter a{*this, Queue::promotion, {}, false};
  co_await a;  // not queued (full, closing): the caller retries and may answer no_space
}

Status StoreImpl::run_maintenance_round() {
  return off_reactor([this]() -> Status {
    std::lock_guard lk(round_mu_);
    std::vector<uint64_t> extents = alloc_.take_quarantine();
    if (extents.empty()) return ok();
    // 1. No I/O that may still use an old mapping of these extents is running.
    if (!epochs_.flip_and_wait(kEpochWaitMax)) {
      CAIRN_LOG_WARN(kLog, "quarantine round postponed: in-flight I/O did not drain");
      alloc_.requarantine(extents);
      return Errc::unavailable;
    }
    // 2. The unmapping is durable: a crash cannot bring back a mapping to them.
    Status st = db_status(db_->SyncWAL(), "WAL sync");
    // 3. Old bytes are gone, durably.
    std::vector<Allocator::Run> runs = Allocator::coalesce(extents);
    for (size_t i = 0; st && i < runs.size(); ++i) {
      st = run_sync(dev_->punch_hole(runs[i].first * kExtentSizeBytes,
                                     runs[i].count * kExtentSizeBytes));
    }
    if (st) st = run_sync(dev_->sync());
    if (!st) {
      CAIRN_LOG_WARN(kLog, "quarantine round failed extents=%zu: %s", extents.size(),
                     st.error().message().c_str());
      alloc_.requarantine(extents);
      return st;
    }
    // 4. Reusable.
    alloc_.promote(extents);
    CAIRN_LOG_DEBUG(kLog, "quarantine promoted extents=%zu runs=%zu", extents.size(),
                    runs.size());
    return ok();
  });
}

void StoreImpl::maintenance_loop() {
  using Clock = std::chrono::steady_clock;
  const auto interval = std::chrono::milliseconds(options_.maintenance_interval_ms);
  auto next_round = Clock::now() + interval;
  std::unique_lock lk(mt_mu_);
  while (!mt_stop_) {
    const bool round_due = interval.count() > 0 && Clock::now() >= next_round;
    if (flush_waiters_.empty() && promotion_waiters_.empty() && !round_due) {
      if (interval.count() > 0) mt_cv_.wait_until(lk, next_round);
      else mt_cv_.wait(lk);
      continue;  // re-check stop, the queues and the timer
    }
    if (!flush_waiters_.empty()) {
      // Group commit: one device sync + WAL sync for every flush queued before it began.
      std::vector<Waiter*> batch;
      batch.swap(flush_waiters_);
      lk.unlock();
      Status st = run_sync(sync_all());
      complete(batch, st);
      lk.lock();
      continue;
    }
    // A promotion was requested (an allocating write found no free extent) or the timer
    // fired.
    std::vector<Waiter*> batch;
    batch.swap(promotion_waiters_);
    lk.unlock();
    if (alloc_.quarantined_extents() > 0) (void)run_maintenance_round();
    complete(batch, ok());
    lk.lock();
    next_round = Clock::now() + interval;
  }
  std::vector<Waiter*> rest;
  rest.swap(flush_waiters_);
  rest.insert(rest.end(), promotion_waiters_.begin(), promotion_waiters_.end());
  promotion_waiters_.clear();
  lk.unlock();
  complete(rest, make_error_code(Errc::unavailable));
}

// ---------------------------------------------------------------------------------------
// Open and recovery

Status StoreImpl::recover() {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  // Volumes.
  std::map<uint64_t, std::shared_ptr<VolumeCore>> by_id;
  std::vector<std::pair<std::string, uint64_t>> deleting;
  const std::string vprefix = kVolumeKeyPrefix;
  for (it->Seek(vprefix); it->Valid() && it->key().starts_with(vprefix); it->Next()) {
    std::string name = it->key().ToString().substr(vprefix.size());
    auto decoded = decode_volume_record(std::string_view(it->value().data(), it->value().size()));
    if (!decoded) {
      CAIRN_LOG_ERROR(kLog, "corrupt volume record name=%s", name.c_str());
      return Errc::corrupt;
    }
    const VolumeRecord& rec = decoded.value();
    next_volume_id_ = std::max(next_volume_id_, rec.id + 1);
    if (rec.deleting) {
      deleting.emplace_back(name, rec.id);
      continue;
    }
    auto core = std::make_shared<VolumeCore>(*this, name, rec);
    core->loaded_parent_volume_id_ = rec.parent_volume_id;
    core->loaded_parent_snapshot_id_ = rec.parent_snapshot_id;
    by_id[rec.id] = core;
    volumes_[name] = core;
  }
  CAIRN_TRY(db_status(it->status(), "scan volumes"));
  // Extents: live ones rebuild the maps and the allocator; keys of deleted volumes go.
  rocksdb::WriteBatch cleanup;
  uint64_t dropped_keys = 0, mapped = 0;
  const std::string eprefix(1, kExtentKeyTag);
  for (it->Seek(eprefix); it->Valid() && it->key().starts_with(eprefix); it->Next()) {
    uint64_t vol = 0, logical = 0;
    std::string_view key(it->key().data(), it->key().size());
    if (!parse_extent_key(key, &vol, &logical)) {
      CAIRN_LOG_ERROR(kLog, "corrupt extent key size=%zu", key.size());
      return Errc::corrupt;
    }
    auto owner = by_id.find(vol);
    auto rec = decode_extent_record(std::string_view(it->value().data(), it->value().size()));
    if (owner == by_id.end() || (rec && rec.value().written == 0)) {
      cleanup.Delete(it->key());
      ++dropped_keys;
      if (cleanup.Count() >= kDeleteBatchKeys) {
        CAIRN_TRY(write_metadata(cleanup));
        cleanup.Clear();
      }
      continue;
    }
    if (!rec) {
      CAIRN_LOG_ERROR(kLog, "corrupt extent record volume_id=%llu extent=%llu", ull(vol),
                      ull(logical));
      return Errc::corrupt;
    }
    owner->second->map_.put(logical, rec.value());
    if (!rec.value().is_marker()) alloc_.mark_used(rec.value().phys_extent);
    ++mapped;
  }
  CAIRN_TRY(db_status(it->status(), "scan extents"));
  it.reset();
  // Snapshots, clone links, versions (their extents are used too), change index.
  CAIRN_TRY(recover_snapshots(by_id, cleanup, &dropped_keys));
  for (auto& [name, id] : deleting) cleanup.Delete(volume_key(name));
  if (cleanup.Count() > 0) {
    CAIRN_TRY(write_metadata(cleanup));
  }

  // Space: everything unmapped may hold bytes from before the crash; punch it.
  std::vector<Allocator::Run> unused;
  if (!alloc_.finish_scan(dev_->size_bytes() / kExtentSizeBytes, &unused)) {
    CAIRN_LOG_ERROR(kLog, "two extent records share one physical extent");
    return Errc::corrupt;
  }
  const uint64_t hw_bytes = alloc_.high_water() * kExtentSizeBytes;
  if (hw_bytes > dev_->size_bytes()) {
    CAIRN_TRY(dev_->grow(hw_bytes));
  }
  uint64_t punched = 0;
  for (const auto& run : unused) {
    CAIRN_TRY(run_sync(dev_->punch_hole(run.first * kExtentSizeBytes,
                                        run.count * kExtentSizeBytes)));
    punched += run.count;
  }
  CAIRN_TRY(run_sync(sync_all()));
  CAIRN_LOG_INFO(kLog,
                 "store opened data_dir=%s volumes=%zu mapped_extents=%llu high_water_extents=%llu "
                 "capacity_bytes=%llu punched_extents=%llu punched_runs=%zu finished_deletes=%zu "
                 "dropped_keys=%llu",
                 options_.data_dir.c_str(), volumes_.size(), ull(mapped),
                 ull(alloc_.high_water()), ull(capacity_bytes()), ull(punched), unused.size(),
                 deleting.size(), ull(dropped_keys));
  maintenance_ = std::thread([this] { maintenance_loop(); });
  return ok();
}

namespace {

Result<uint64_t> read_next_volume_id(rocksdb::DB* db) {
  std::string v;
  rocksdb::Status s = db->Get(rocksdb::ReadOptions(), kNextVolumeIdKey, &v);
  if (s.IsNotFound()) return uint64_t{1};
  CAIRN_TRY(db_status(s, "read next volume id"));
  if (v.size() != 8) return Errc::corrupt;
  return get_be64(reinterpret_cast<const uint8_t*>(v.data()));
}

Status check_format(rocksdb::DB* db) {
  std::string v;
  rocksdb::Status s = db->Get(rocksdb::ReadOptions(), kFormatKey, &v);
  if (s.IsNotFound()) {
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
    it->SeekToFirst();
    if (it->Valid()) {
      CAIRN_LOG_ERROR(kLog, "metadata has keys but no %s", kFormatKey);
      return Errc::corrupt;
    }
    rocksdb::WriteBatch b;
    b.Put(kFormatKey, encode_be32(kFormatVersion));
    b.Put(kNextVolumeIdKey, encode_be64(1));
    rocksdb::WriteOptions wo;
    wo.sync = true;
    return db_status(db->Write(wo, &b), "format");
  }
  CAIRN_TRY(db_status(s, "read format"));
  uint32_t version = 0;
  for (unsigned char c : v) version = (version << 8) | c;
  if (v.size() == 4 && version == 1) {
    // Format 1 is format 2 without snapshot keys: upgrading is writing the new version.
    rocksdb::WriteOptions wo;
    wo.sync = true;
    CAIRN_LOG_INFO(kLog, "metadata format 1 upgraded to %u", kFormatVersion);
    return db_status(db->Put(wo, kFormatKey, encode_be32(kFormatVersion)), "format upgrade");
  }
  if (v.size() != 4 || version != kFormatVersion) {
    CAIRN_LOG_ERROR(kLog, "unsupported metadata format version=%u", version);
    return Errc::unsupported;
  }
  return ok();
}

}  // namespace

Result<std::unique_ptr<VolumeStore>> VolumeStore::open(const Options& options,
                                                       std::unique_ptr<BlockDevice> device) {
  // Recovery does blocking device I/O; never on a Reactor thread.
  if (Reactor::current() != nullptr) {
    std::optional<Result<std::unique_ptr<VolumeStore>>> out;
    std::thread t([&] { out.emplace(open(options, std::move(device))); });
    t.join();
    return std::move(*out);
  }
  if (options.data_dir.empty()) return Errc::invalid_argument;
  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  if (ec) {
    CAIRN_LOG_ERROR(kLog, "cannot create %s: %s", options.data_dir.c_str(), ec.message().c_str());
    return ec;
  }
  if (!device) {
    CAIRN_TRY(dev, UringBlockDevice::open(options.data_dir + "/data.img", options.direct_io));
    device = std::move(dev);
  }
  const uint32_t align = device->alignment_bytes();
  if (align == 0 || align > kBlockSizeBytes || kBlockSizeBytes % align != 0) {
    CAIRN_LOG_ERROR(kLog, "device alignment %u unsupported", align);
    return Errc::unsupported;
  }
  uint64_t capacity = options.capacity_bytes;
  if (capacity == 0) {
    struct statvfs vfs {};
    if (::statvfs(options.data_dir.c_str(), &vfs) != 0) return errno_code(errno);
    capacity = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize + device->size_bytes();
  }

  rocksdb::Options dbo;
  dbo.create_if_missing = true;
  dbo.keep_log_file_num = 4;
  dbo.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(dbo, options.data_dir + "/meta", &db);
  if (!s.ok()) {
    CAIRN_LOG_ERROR(kLog, "cannot open metadata %s/meta: %s", options.data_dir.c_str(),
                    s.ToString().c_str());
    return Errc::io_error;
  }
  Status fmt = check_format(db);
  Result<uint64_t> next_id = fmt ? read_next_volume_id(db) : Result<uint64_t>(fmt.error());
  if (!next_id) {
    db->Close();
    delete db;
    return next_id.error();
  }
  auto store = std::make_unique<StoreImpl>(options, std::move(device), db,
                                           capacity / kExtentSizeBytes, next_id.value());
  CAIRN_TRY(store->recover());
  return std::unique_ptr<VolumeStore>(std::move(store));
}

Result<std::shared_ptr<Volume>> open_or_create_volume(VolumeStore& store, const std::string& name,
                                                      uint64_t size_bytes, bool* created) {
  *created = false;
  auto info = store.get_volume(name);
  if (!info) {
    if (info.error() != Errc::not_found) return info.error();
    auto made = store.create_volume(name, size_bytes);
    if (!made) return made.error();
    *created = true;
  } else if (info.value().size_bytes < size_bytes) {
    auto grown = store.resize_volume(name, size_bytes);
    if (!grown) return grown.error();
  }
  return store.open_volume(name);
}

}  // namespace cairn::blockd

