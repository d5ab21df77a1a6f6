// Snapshots, clones and changed-block diffs of the volume engine: the views (what a snapshot
// or a clone reads), the control operations (create/list/delete snapshot, clone, flatten,
// diff), the read-only snapshot handle and their part of recovery. The write-side half
// (redirect-on-write, copy-on-write, zero markers, the write gate) is in volume_store.cc.
// Design and format: docs/FORMAT-blockd.md ("Snapshots, versions and clones").
#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <cstring>
#include <ctime>

#include "common/assert.h"
#include "common/fault.h"
#include "common/log.h"
#include "common/when_all.h"
#include "store_impl.h"

namespace cairn::blockd {

namespace {

constexpr const char* kLog = "blockd.snapshot";

unsigned long long ull(uint64_t v) { return static_cast<unsigned long long>(v); }

std::string_view sv(const rocksdb::Slice& s) { return std::string_view(s.data(), s.size()); }

using OptRecord = std::optional<ExtentRecord>;

// Two views of one extent read the same bytes (same extent, same blocks).
bool same_view(const OptRecord& a, const OptRecord& b) {
  if (!a || !b) return a.has_value() == b.has_value();
  return a->phys_extent == b->phys_extent && a->written == b->written;
}

ExtentMap::Records::const_iterator lower_bound_ext(const ExtentMap::Records& v, uint64_t ext) {
  return std::lower_bound(v.begin(), v.end(), ext,
                          [](const ExtentMap::Entry& e, uint64_t x) { return e.first < x; });
}

// True when some snapshot seq s (sorted) has birth <= s < death.
template <class SeqRange>
bool seen_by(const SeqRange& seqs, uint64_t birth, uint64_t death) {
  auto it = std::lower_bound(seqs.begin(), seqs.end(), birth);
  return it != seqs.end() && *it < death;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Views

Status VolumeCore::load_parent_view_locked() {
  if (!parent_ || parent_view_loaded_) return ok();
  ExtentMap::Records v;
  CAIRN_TRY(parent_->view_records(parent_seq_, 0, kLiveSeq, &v));
  parent_view_ = std::move(v);
  parent_view_loaded_ = true;
  return ok();
}

Result<const ExtentRecord*> VolumeCore::parent_find_locked(uint64_t ext) {
  const ExtentRecord* none = nullptr;
  if (!parent_) return none;
  CAIRN_TRY(load_parent_view_locked());
  auto it = lower_bound_ext(parent_view_, ext);
  if (it != parent_view_.end() && it->first == ext) return &it->second;
  return none;
}

Result<OptRecord> VolumeCore::live_visible_locked(uint64_t ext) {
  const ExtentRecord* rec = map_.find(ext);
  if (rec != nullptr) return rec->is_marker() ? OptRecord() : OptRecord(*rec);
  CAIRN_TRY(p, parent_find_locked(ext));
  return p != nullptr ? OptRecord(*p) : OptRecord();
}

Status VolumeCore::view_records(uint64_t seq, uint64_t first, uint64_t end,
                                ExtentMap::Records* out) {
  out->clear();
  std::map<uint64_t, ExtentRecord> own;  // this volume's records (markers included)
  ExtentMap::Records inherited;          // the parent snapshot's, for a clone
  {
    std::lock_guard lk(map_mu_);
    if (!alive()) return Errc::not_found;
    for (auto it = map_.lower_bound(first); it != map_.end() && it->first < end; ++it)
      if (seq == kLiveSeq || it->second.birth_seq <= seq) own.emplace(it->first, it->second);
    // Under the same lock as the live records: flatten moves an extent from the parent's
    // view into this volume's records under it, and drops the parent only at the end.
    if (parent_) {
      CAIRN_TRY(load_parent_view_locked());
      for (auto it = lower_bound_ext(parent_view_, first);
           it != parent_view_.end() && it->first < end; ++it)
        inherited.push_back(*it);
    }
  }
  if (seq != kLiveSeq) {
    // Versions: a snapshot's view never changes, so no lock is needed to read them.
    std::unique_ptr<rocksdb::Iterator> it(store_.db()->NewIterator(rocksdb::ReadOptions()));
    const std::string prefix = version_key_prefix(id_);
    for (it->Seek(version_key(id_, first, 0)); it->Valid() && it->key().starts_with(prefix);
         it->Next()) {
      uint64_t vol = 0, ext = 0, death = 0;
      if (!parse_version_key(sv(it->key()), &vol, &ext, &death)) return Errc::corrupt;
      if (ext >= end) break;
      if (death <= seq) continue;
      auto rec = decode_extent_record(sv(it->value()));
      if (!rec) return Errc::corrupt;
      if (rec.value().birth_seq <= seq) own[ext] = rec.value();
    }
    CAIRN_TRY(db_status(it->status(), "scan versions"));
  }
  size_t j = 0;
  auto o = own.begin();
  while (o != own.end() || j < inherited.size()) {
    if (j == inherited.size() || (o != own.end() && o->first <= inherited[j].first)) {
      if (j < inherited.size() && inherited[j].first == o->first) ++j;  // own wins
      if (!o->second.is_marker()) out->emplace_back(o->first, o->second);
      ++o;
    } else {
      out->push_back(inherited[j++]);
    }
  }
  return ok();
}

Result<OptRecord> VolumeCore::view_at(uint64_t seq, uint64_t ext, rocksdb::Iterator* it) {
  OptRecord inherited;
  {
    std::lock_guard lk(map_mu_);
    if (!alive()) return Errc::not_found;
    const ExtentRecord* rec = map_.find(ext);
    if (rec != nullptr && (seq == kLiveSeq || rec->birth_seq <= seq))
      return rec->is_marker() ? OptRecord() : OptRecord(*rec);
    CAIRN_TRY(p, parent_find_locked(ext));
    if (p != nullptr) inherited = *p;
    if (seq == kLiveSeq) return inherited;
  }
  // The version with the smallest death above seq is the only one that can cover seq
  // (a volume's versions of one extent have disjoint [birth, death) intervals).
  it->Seek(version_key(id_, ext, seq + 1));
  if (it->Valid()) {
    uint64_t vol = 0, vext = 0, death = 0;
    if (!parse_version_key(sv(it->key()), &vol, &vext, &death)) {
      if (it->key()[0] != kVersionKeyTag) return inherited;  // past every version key
      return Errc::corrupt;
    }
    if (vol == id_ && vext == ext) {
      auto rec = decode_extent_record(sv(it->value()));
      if (!rec) return Errc::corrupt;
      if (rec.value().birth_seq <= seq)
        return rec.value().is_marker() ? OptRecord() : OptRecord(rec.value());
    }
  }
  CAIRN_TRY(db_status(it->status(), "read version"));
  // Nothing of its own covered seq: before its first record the extent was its parent's.
  return inherited;
}

std::vector<std::string> VolumeCore::snapshots_before(uint64_t seq) {
  std::vector<std::string> out;
  std::lock_guard lk(map_mu_);
  for (auto& [s, snap] : snaps_)
    if (s < seq) out.push_back(snap->name);
  return out;
}

Result<std::vector<AllocationRun>> VolumeCore::changed_since(const std::string& since,
                                                             uint64_t seq, uint64_t offset,
                                                             uint64_t length, size_t max_runs) {
  CAIRN_TRY(check_view_io(seq, offset, length));
  if (max_runs == 0) return Errc::invalid_argument;
  uint64_t from_seq = 0;
  {
    std::lock_guard lk(map_mu_);
    std::shared_ptr<SnapState> s = snapshot_by_name_locked(since);
    if (!s) return Errc::not_found;
    if (s->seq >= seq) return Errc::invalid_argument;  // not older than this point
    from_seq = s->seq;
  }
  std::vector<DiffRun> diff;
  CAIRN_TRY(store_.diff_views(*this, from_seq, seq, offset, length, &diff));
  std::vector<AllocationRun> runs;
  auto add = [&](bool changed, uint64_t n) {
    if (n == 0) return true;
    if (!runs.empty() && runs.back().allocated == changed) {
      runs.back().length_bytes += n;
      return true;
    }
    if (runs.size() == max_runs) return false;
    runs.push_back({n, changed});
    return true;
  };
  uint64_t pos = offset;
  for (const DiffRun& d : diff) {
    if (!add(false, d.offset_bytes - pos) || !add(true, d.length_bytes)) return runs;
    pos = d.offset_bytes + d.length_bytes;
  }
  add(false, offset + length - pos);
  return runs;
}

// ---------------------------------------------------------------------------------------
// Snapshot handles

SnapshotHandle::SnapshotHandle(std::shared_ptr<VolumeCore> core, std::shared_ptr<SnapState> snap)
    : core_(std::move(core)), snap_(std::move(snap)), name_(core_->name() + "@" + snap_->name) {
  snap_->attached.fetch_add(1, std::memory_order_acq_rel);
}

SnapshotHandle::~SnapshotHandle() { snap_->attached.fetch_sub(1, std::memory_order_acq_rel); }

Task<Status> SnapshotHandle::read(uint64_t offset, uint64_t length, void* buf) {
  return core_->read(snap_->seq, offset, length, buf);
}

namespace {
Task<Status> refuse_write() { co_return Errc::permission_denied; }
Task<Status> accept_flush() { co_return ok(); }
}  // namespace

Task<Status> SnapshotHandle::write(uint64_t, uint64_t, const void*, bool) {
  return refuse_write();
}
Task<Status> SnapshotHandle::trim(uint64_t, uint64_t, bool) { return refuse_write(); }
Task<Status> SnapshotHandle::write_zeroes(uint64_t, uint64_t, bool, bool) {
  return refuse_write();
}
// Nothing to make durable: the snapshot's content was synced when it was taken.
Task<Status> SnapshotHandle::flush() { return accept_flush(); }
Result<std::vector<AllocationRun>> SnapshotHandle::allocation(uint64_t offset, uint64_t length,
                                                              size_t max_runs) {
  return core_->allocation(snap_->seq, offset, length, max_runs);
}
Result<std::vector<AllocationRun>> SnapshotHandle::changed_since(const std::string& since,
                                                                 uint64_t offset,
                                                                 uint64_t length,
                                                                 size_t max_runs) {
  return core_->changed_since(since, snap_->seq, offset, length, max_runs);
}
std::vector<std::string> SnapshotHandle::dirty_bitmap_sources() {
  return core_->snapshots_before(snap_->seq);
}

// ---------------------------------------------------------------------------------------
// Diff

Status StoreImpl::changed_extents(uint64_t volume_id, uint64_t from_seq, uint64_t to_seq,
                                  uint64_t first, uint64_t end, std::vector<uint64_t>* out) {
  out->clear();
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  const std::string prefix = change_key_prefix(volume_id);
  // One seek per seq that holds changes (seqs without changes are skipped by the seek).
  for (uint64_t seq = from_seq + 1; seq <= to_seq;) {
    it->Seek(change_key(volume_id, seq, first));
    if (!it->Valid() || !it->key().starts_with(prefix)) break;
    uint64_t vol = 0, s = 0, ext = 0;
    if (!parse_change_key(sv(it->key()), &vol, &s, &ext)) return Errc::corrupt;
    if (s > to_seq) break;
    if (s != seq) {
      seq = s;
      if (ext < first) continue;  // seek again inside seq s
    }
    for (; it->Valid() && it->key().starts_with(prefix); it->Next()) {
      if (!parse_change_key(sv(it->key()), &vol, &s, &ext)) return Errc::corrupt;
      if (s != seq || ext >= end) break;
      out->push_back(ext);
    }
    if (seq == kLiveSeq) break;
    ++seq;
  }
  CAIRN_TRY(db_status(it->status(), "scan changes"));
  std::sort(out->begin(), out->end());
  out->erase(std::unique(out->begin(), out->end()), out->end());
  return ok();
}

Status StoreImpl::diff_views(VolumeCore& core, uint64_t from_seq, uint64_t to_seq,
                             uint64_t offset, uint64_t length, std::vector<DiffRun>* out) {
  out->clear();
  if (length == 0) return ok();
  const uint64_t end = offset + length;
  const uint64_t first = offset / kExtentSizeBytes;
  const uint64_t last_end = (end - 1) / kExtentSizeBytes + 1;
  auto add = [&](uint64_t off, uint64_t len, bool zero) {
    const uint64_t s = std::max(off, offset);
    const uint64_t e = std::min(off + len, end);
    if (s >= e) return;
    if (!out->empty() && out->back().zero == zero &&
        out->back().offset_bytes + out->back().length_bytes == s) {
      out->back().length_bytes += e - s;
      return;
    }
    out->push_back({s, e - s, zero});
  };
  auto emit = [&](uint64_t ext, BlockBitmap data, BlockBitmap zero) {
    for (uint32_t b = 0; b < kBlocksPerExtent; ++b) {
      const uint64_t off = ext * kExtentSizeBytes + b * kBlockSizeBytes;
      if (data & (1u << b)) add(off, kBlockSizeBytes, false);
      else if (zero & (1u << b)) add(off, kBlockSizeBytes, true);
    }
  };
  if (from_seq == 0) {  // from the empty volume: every written block of `to`
    ExtentMap::Records recs;
    CAIRN_TRY(core.view_records(to_seq, first, last_end, &recs));
    for (const auto& [ext, rec] : recs) emit(ext, rec.written, 0);
    return ok();
  }
  std::vector<uint64_t> changed;
  CAIRN_TRY(changed_extents(core.id(), from_seq, to_seq, first, last_end, &changed));
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (uint64_t ext : changed) {
    CAIRN_TRY(before, core.view_at(from_seq, ext, it.get()));
    CAIRN_TRY(after, core.view_at(to_seq, ext, it.get()));
    if (same_view(before, after)) continue;  // changed and changed back, or after `to`
    const BlockBitmap data = after ? after->written : BlockBitmap{0};
    const BlockBitmap zero = static_cast<BlockBitmap>((before ? before->written : 0) & ~data);
    emit(ext, data, zero);
  }
  return ok();
}

Result<std::vector<DiffRun>> StoreImpl::diff(const std::string& volume, const std::string& from,
                                             const std::string& to) {
  std::shared_ptr<VolumeCore> core;
  uint64_t from_seq = 0, to_seq = kLiveSeq, size = 0;
  {
    std::lock_guard lk(mu_);
    CAIRN_TRY(c, find_locked(volume));
    core = c;
    std::lock_guard ml(core->map_mu_);
    size = core->size_bytes();
    if (!from.empty()) {
      std::shared_ptr<SnapState> s = core->snapshot_by_name_locked(from);
      if (!s) return Errc::not_found;
      from_seq = s->seq;
    }
    if (!to.empty()) {
      std::shared_ptr<SnapState> s = core->snapshot_by_name_locked(to);
      if (!s) return Errc::not_found;
      to_seq = s->seq;
      size = s->size_bytes;
    }
  }
  std::vector<DiffRun> out;
  if (from_seq == to_seq) return out;
  if (from_seq > to_seq) return Errc::invalid_argument;
  CAIRN_TRY(diff_views(*core, from_seq, to_seq, 0, size, &out));
  return out;
}

// ---------------------------------------------------------------------------------------
// Snapshot create / list / delete

namespace {
struct GateReopen {
  VolumeCore& core;
  void (VolumeCore::*open)();
  ~GateReopen() { (core.*open)(); }
};
}  // namespace

Result<SnapshotInfo> StoreImpl::create_snapshot(const std::string& volume,
                                                const std::string& snapshot) {
  if (!valid_volume_name(snapshot)) return Errc::invalid_argument;
  std::lock_guard cl(ctl_mu_);
  std::shared_ptr<VolumeCore> core;
  {
    std::lock_guard lk(mu_);
    CAIRN_TRY(c, find_locked(volume));
    core = c;
    std::lock_guard ml(core->map_mu_);
    if (core->snapshot_by_name_locked(snapshot)) return Errc::already_exists;
  }
  // 1. Drain the volume's writes: each lies wholly before or wholly after the snapshot.
  if (!core->gate_close_and_drain(kSnapshotDrainMax)) {
    CAIRN_LOG_WARN(kLog, "snapshot %s@%s: writes did not drain", volume.c_str(),
                   snapshot.c_str());
    return Errc::unavailable;
  }
  GateReopen reopen{*core, &VolumeCore::gate_open};
  // 2. Everything it contains is durable (data file, then the WAL that maps it): after a
  // crash the snapshot reads exactly what it froze, or does not exist.
  CAIRN_TRY(sync_all_blocking());
  if (int f = CAIRN_FAULT_POINT("blockd.snapshot.before_commit")) return errno_code(f);
  // 3. One synced batch of three keys, whatever the volume's size: O(1).
  std::lock_guard lk(mu_);
  if (core->deleting_ || !core->alive()) return Errc::not_found;
  std::lock_guard ml(core->map_mu_);
  auto snap = std::make_shared<SnapState>();
  snap->id = next_snapshot_id_;
  snap->name = snapshot;
  snap->seq = core->seq_;
  snap->size_bytes = core->size_bytes();
  snap->created_unix_s = static_cast<int64_t>(::time(nullptr));
  VolumeRecord vrec = core->record_locked();
  vrec.seq = core->seq_ + 1;
  SnapshotRecord srec{snap->id, snap->seq, snap->size_bytes, snap->created_unix_s, snapshot};
  rocksdb::WriteBatch batch;
  batch.Put(snapshot_key(core->id(), snap->id), encode_snapshot_record(srec));
  batch.Put(volume_key(volume), encode_volume_record(vrec));
  batch.Put(kNextSnapshotIdKey, encode_be64(snap->id + 1));
  CAIRN_TRY(write_metadata_sync(batch, "create snapshot"));
  ++next_snapshot_id_;
  core->seq_ = vrec.seq;
  core->snaps_[snap->seq] = snap;
  core->max_snap_seq_ = snap->seq;
  core->shared_blocks_ = core->map_.written_blocks();  // every live record is now shared
  CAIRN_LOG_INFO(kLog, "snapshot created %s@%s id=%llu seq=%llu mapped_extents=%zu",
                 volume.c_str(), snapshot.c_str(), ull(snap->id), ull(snap->seq),
                 core->map_.mapped_extents());
  SnapshotInfo info;
  info.id = snap->id;
  info.volume = volume;
  info.name = snapshot;
  info.created_unix_s = snap->created_unix_s;
  info.seq = snap->seq;
  info.size_bytes = snap->size_bytes;
  // At birth it sees exactly the live volume's records: all shared, nothing exclusive.
  info.shared_bytes = core->map_.written_blocks() * kBlockSizeBytes;
  return info;
}

Result<std::vector<SnapshotInfo>> StoreImpl::list_snapshots(const std::string& volume) {
  std::shared_ptr<VolumeCore> core;
  std::vector<SnapshotInfo> out;
  std::vector<uint64_t> seqs;
  std::vector<std::pair<uint64_t, uint32_t>> live;  // (birth, blocks) of shared live records
  {
    std::lock_guard lk(mu_);
    CAIRN_TRY(c, find_locked(volume));
    core = c;
    std::lock_guard ml(core->map_mu_);
    for (auto& [seq, s] : core->snaps_) {
      SnapshotInfo info;
      info.id = s->id;
      info.volume = volume;
      info.name = s->name;
      info.created_unix_s = s->created_unix_s;
      info.seq = s->seq;
      info.size_bytes = s->size_bytes;
      info.clones = s->clones;
      out.push_back(info);
      seqs.push_back(seq);
    }
    if (seqs.empty()) return out;
    core->map_.for_each([&](uint64_t, const ExtentRecord& r) {
      if (core->shared_locked(r)) live.emplace_back(r.birth_seq, block_count(r.written));
    });
  }
  // Accounting by a scan of the volume's shared live records and its versions (cost:
  // O(records + versions), on demand). A block seen by one snapshot only is exclusive to it
  // (delete frees it); seen by more views (live, other snapshots, clones) it is shared.
  const size_t k = seqs.size();
  std::vector<int64_t> shared_delta(k + 1, 0);
  std::vector<uint64_t> exclusive(k, 0);
  auto range = [&](uint64_t birth, uint64_t death) {
    size_t lo = std::lower_bound(seqs.begin(), seqs.end(), birth) - seqs.begin();
    size_t hi = std::lower_bound(seqs.begin(), seqs.end(), death) - seqs.begin();
    return std::make_pair(lo, hi);
  };
  for (auto [birth, n] : live) {
    auto [lo, hi] = range(birth, kLiveSeq);
    shared_delta[lo] += n;
    shared_delta[hi] -= n;
  }
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  const std::string prefix = version_key_prefix(core->id());
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    uint64_t vol = 0, ext = 0, death = 0;
    if (!parse_version_key(sv(it->key()), &vol, &ext, &death)) return Errc::corrupt;
    auto rec = decode_extent_record(sv(it->value()));
    if (!rec) return Errc::corrupt;
    const uint32_t n = block_count(rec.value().data_blocks());
    auto [lo, hi] = range(rec.value().birth_seq, death);
    if (hi - lo == 1) {
      exclusive[lo] += n;
    } else if (hi > lo) {
      shared_delta[lo] += n;
      shared_delta[hi] -= n;
    }
  }
  CAIRN_TRY(db_status(it->status(), "scan versions"));
  int64_t shared = 0;
  for (size_t i = 0; i < k; ++i) {
    shared += shared_delta[i];
    uint64_t excl = exclusive[i];
    uint64_t sh = static_cast<uint64_t>(shared);
    if (out[i].clones > 0) {  // its clones read its blocks too
      sh += excl;
      excl = 0;
    }
    out[i].exclusive_bytes = excl * kBlockSizeBytes;
    out[i].shared_bytes = sh * kBlockSizeBytes;
  }
  return out;
}

Status StoreImpl::delete_snapshot(const std::string& volume, const std::string& snapshot) {
  std::lock_guard cl(ctl_mu_);
  std::shared_ptr<VolumeCore> core;
  std::shared_ptr<SnapState> snap;
  {
    std::lock_guard lk(mu_);
    CAIRN_TRY(c, find_locked(volume));
    core = c;
    std::lock_guard ml(core->map_mu_);
    snap = core->snapshot_by_name_locked(snapshot);
    if (!snap) return Errc::not_found;
    if (snap->clones > 0 || snap->attached.load() > 0) return Errc::busy;
  }
  // Which live records are shared changes with the set of snapshots: drain writes so that
  // none decided "shared" (copying) or "not shared" (in place) under the old set.
  if (!core->gate_close_and_drain(kSnapshotDrainMax)) {
    CAIRN_LOG_WARN(kLog, "snapshot delete %s@%s: writes did not drain", volume.c_str(),
                   snapshot.c_str());
    return Errc::unavailable;
  }
  {
    GateReopen reopen{*core, &VolumeCore::gate_open};
    std::lock_guard lk(mu_);
    std::lock_guard ml(core->map_mu_);
    // Checked again under the lock that open_volume("vol@snap") takes.
    if (snap->clones > 0 || snap->attached.load() > 0) return Errc::busy;
    // 1. The record goes (synced). From here every version only it saw is garbage: freed
    // below, or by the next open if we crash first.
    rocksdb::WriteBatch batch;
    batch.Delete(snapshot_key(core->id(), snap->id));
    CAIRN_TRY(write_metadata_sync(batch, "delete snapshot"));
    core->snaps_.erase(snap->seq);
    core->max_snap_seq_ = core->snaps_.empty() ? 0 : core->snaps_.rbegin()->first;
    core->recompute_shared_locked();
  }
  // 2. Free the versions no remaining snapshot sees (quarantined like trimmed extents).
  size_t freed = 0;
  CAIRN_TRY(collect_versions(*core, &freed));
  CAIRN_TRY(compact_changes(*core));
  CAIRN_LOG_INFO(kLog, "snapshot deleted %s@%s id=%llu seq=%llu freed_versions=%zu",
                 volume.c_str(), snapshot.c_str(), ull(snap->id), ull(snap->seq), freed);
  return ok();
}

Status StoreImpl::collect_versions(VolumeCore& core, size_t* freed) {
  std::vector<uint64_t> seqs;
  {
    std::lock_guard ml(core.map_mu_);
    for (auto& [seq, s] : core.snaps_) seqs.push_back(seq);
  }
  // Versions created while this runs are seen by a remaining snapshot (a redirect makes one
  // only for a record the newest snapshot sees), so they are never collected here.
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  rocksdb::WriteBatch batch;
  std::vector<uint64_t> phys;
  auto commit = [&]() -> Status {
    if (int f = CAIRN_FAULT_POINT("blockd.snapshot.delete.mid")) return errno_code(f);
    CAIRN_TRY(write_metadata(batch));
    batch.Clear();
    for (uint64_t p : phys) alloc_.quarantine(p);  // unmapped before quarantined
    *freed += phys.size();
    phys.clear();
    return ok();
  };
  const std::string prefix = version_key_prefix(core.id());
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    uint64_t vol = 0, ext = 0, death = 0;
    if (!parse_version_key(sv(it->key()), &vol, &ext, &death)) return Errc::corrupt;
    auto rec = decode_extent_record(sv(it->value()));
    if (!rec) return Errc::corrupt;
    if (seen_by(seqs, rec.value().birth_seq, death)) continue;
    batch.Delete(it->key());
    if (!rec.value().is_marker()) phys.push_back(rec.value().phys_extent);
    if (batch.Count() >= kDeleteBatchKeys) {
      CAIRN_TRY(commit());
    }
  }
  CAIRN_TRY(db_status(it->status(), "scan versions"));
  if (batch.Count() > 0) {
    CAIRN_TRY(commit());
  }
  return ok();
}

Status StoreImpl::compact_changes(VolumeCore& core) {
  uint64_t limit = 0;  // change keys with seq <= limit can no longer be asked for
  {
    std::lock_guard ml(core.map_mu_);
    limit = core.snaps_.empty() ? kLiveSeq : core.snaps_.begin()->first;
  }
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  rocksdb::WriteBatch batch;
  const std::string prefix = change_key_prefix(core.id());
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    uint64_t vol = 0, seq = 0, ext = 0;
    if (!parse_change_key(sv(it->key()), &vol, &seq, &ext)) return Errc::corrupt;
    if (seq > limit) break;
    batch.Delete(it->key());
    if (batch.Count() >= kDeleteBatchKeys) {
      CAIRN_TRY(write_metadata(batch));
      batch.Clear();
    }
  }
  CAIRN_TRY(db_status(it->status(), "scan changes"));
  if (batch.Count() > 0) {
    CAIRN_TRY(write_metadata(batch));
  }
  return ok();
}

// ---------------------------------------------------------------------------------------
// Clones

Result<VolumeInfo> StoreImpl::clone_volume(const std::string& volume, const std::string& snapshot,
                                           const std::string& new_volume) {
  if (!valid_volume_name(new_volume)) return Errc::invalid_argument;
  std::lock_guard cl(ctl_mu_);
  std::lock_guard lk(mu_);
  CAIRN_TRY(src, find_locked(volume));
  if (volumes_.count(new_volume) != 0) return Errc::already_exists;
  std::shared_ptr<SnapState> snap;
  {
    std::lock_guard ml(src->map_mu_);
    snap = src->snapshot_by_name_locked(snapshot);
  }
  if (!snap) return Errc::not_found;
  VolumeRecord rec;
  rec.id = next_volume_id_;
  rec.size_bytes = snap->size_bytes;
  rec.created_unix_s = static_cast<int64_t>(::time(nullptr));
  rec.seq = 1;
  rec.parent_volume_id = src->id();
  rec.parent_snapshot_id = snap->id;
  rocksdb::WriteBatch batch;
  batch.Put(volume_key(new_volume), encode_volume_record(rec));
  batch.Put(kNextVolumeIdKey, encode_be64(rec.id + 1));
  CAIRN_TRY(write_metadata_sync(batch, "clone volume"));
  ++next_volume_id_;
  auto core = std::make_shared<VolumeCore>(*this, new_volume, rec);
  {
    std::lock_guard ml(core->map_mu_);
    core->parent_ = src;
    core->parent_snap_ = snap;
    core->parent_seq_ = snap->seq;
  }
  ++snap->clones;
  volumes_[new_volume] = core;
  CAIRN_LOG_INFO(kLog, "volume cloned name=%s id=%llu from=%s@%s", new_volume.c_str(),
                 ull(rec.id), volume.c_str(), snapshot.c_str());
  return core->info(/*parent_accounting=*/false);  // O(1): the parent view loads on first use
}

Status StoreImpl::flatten_extent(VolumeCore& core, uint64_t ext, const ExtentRecord& prec,
                                 bool* copied) {
  *copied = false;
  // What the clone needs of the parent's extent: a live record when it has none (it still
  // reads the parent's), or a version [1, oldest birth) when one of its own snapshots is
  // older than its first record of the extent (that snapshot reads the parent's).
  bool need_live = false, need_version = false;
  uint64_t oldest_birth = 0;
  auto decide = [&]() -> Status {  // under core.map_mu_
    const ExtentRecord* own = core.map_.find(ext);
    need_live = own == nullptr;
    need_version = false;
    if (own == nullptr || core.snaps_.empty()) return ok();
    oldest_birth = own->birth_seq;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    const std::string prefix = version_key(core.id(), ext, 0).substr(0, 17);
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      auto rec = decode_extent_record(sv(it->value()));
      if (!rec) return Errc::corrupt;
      oldest_birth = std::min(oldest_birth, rec.value().birth_seq);
    }
    CAIRN_TRY(db_status(it->status(), "scan versions"));
    need_version = core.snaps_.begin()->first < oldest_birth;
    return ok();
  };
  {
    std::lock_guard ml(core.map_mu_);
    CAIRN_TRY(decide());
    if (!need_live && !need_version) return ok();
  }
  Result<uint64_t> phys = allocate_extent();
  for (int i = 0; !phys && phys.error() == make_error_code(Errc::no_space) &&
                  i < kAllocRetriesMax && alloc_.quarantined_extents() > 0;
       ++i) {
    (void)run_maintenance_round();
    phys = allocate_extent();
  }
  if (!phys) return phys.error();
  // Copy first, durably (FUA); the mapping follows.
  AlignedBuffer buf(kExtentSizeBytes);
  if (!buf.ok()) {
    alloc_.unallocate(phys.value());
    return errno_code(ENOMEM);
  }
  Status st = ok();
  {
    EpochGuard epoch(epochs_);
    for (uint32_t b = 0; st && b < kBlocksPerExtent;) {
      if (!(prec.written & (1u << b))) {
        ++b;
        continue;
      }
      uint32_t e = b;
      while (e < kBlocksPerExtent && (prec.written & (1u << e))) ++e;
      const uint64_t len = (e - b) * kBlockSizeBytes;
      uint8_t* p = buf.data() + b * kBlockSizeBytes;
      st = run_sync(dev_->read(p, len, prec.phys_extent * kExtentSizeBytes + b * kBlockSizeBytes));
      if (st)
        st = run_sync(dev_->write(p, len, phys.value() * kExtentSizeBytes + b * kBlockSizeBytes,
                                  /*fua=*/true));
      b = e;
    }
  }
  if (!st) {
    alloc_.quarantine(phys.value());
    return st;
  }
  std::lock_guard ml(core.map_mu_);
  if (!core.alive()) {
    alloc_.quarantine(phys.value());
    return Errc::not_found;
  }
  CAIRN_TRY(decide());  // a write may have copied it meanwhile
  const ExtentRecord copy{phys.value(), prec.written, 1};
  rocksdb::WriteBatch batch;
  if (need_live) batch.Put(extent_key(core.id(), ext), encode_extent_record(copy));
  else if (need_version) batch.Put(version_key(core.id(), ext, oldest_birth), encode_extent_record(copy));
  if (batch.Count() == 0) {
    alloc_.quarantine(phys.value());
    return ok();
  }
  st = write_metadata(batch);
  if (!st) {
    alloc_.quarantine(phys.value());
    return st;
  }
  if (need_live) core.map_set_locked(ext, copy);
  *copied = true;
  return ok();
}

Status StoreImpl::flatten_volume(const std::string& volume) {
  return off_reactor([&]() -> Status {
    std::shared_ptr<VolumeCore> core;
    ExtentMap::Records view;
    {
      std::lock_guard cl(ctl_mu_);
      std::lock_guard lk(mu_);
      CAIRN_TRY(c, find_locked(volume));
      core = c;
      std::lock_guard ml(core->map_mu_);
      if (!core->parent_) return ok();
      if (core->flattening_.exchange(true)) return Errc::busy;
      Status st = core->load_parent_view_locked();
      if (!st) {
        core->flattening_ = false;
        return st;
      }
      view = core->parent_view_;
    }
    struct Done {
      VolumeCore& c;
      ~Done() { c.flattening_ = false; }
    } done{*core};
    // Extent by extent, each copy committed on its own: an interrupted flatten (error,
    // crash) keeps what it copied and is resumed by calling it again.
    size_t copied = 0;
    for (const auto& [ext, prec] : view) {
      bool c = false;
      CAIRN_TRY(flatten_extent(*core, ext, prec, &c));
      copied += c ? 1 : 0;
    }
    // Detach: nothing it (or its snapshots) reads is the parent's any more.
    std::lock_guard cl(ctl_mu_);
    std::lock_guard lk(mu_);
    if (core->deleting_ || !core->alive()) return Errc::not_found;
    std::lock_guard ml(core->map_mu_);
    VolumeRecord rec = core->record_locked();
    rec.parent_volume_id = 0;
    rec.parent_snapshot_id = 0;
    rocksdb::WriteBatch batch;
    batch.Put(volume_key(volume), encode_volume_record(rec));
    CAIRN_TRY(write_metadata_sync(batch, "flatten"));
    const std::string parent = core->parent_->name() + "@" + core->parent_snap_->name;
    --core->parent_snap_->clones;
    core->parent_.reset();
    core->parent_snap_.reset();
    core->parent_seq_ = 0;
    core->parent_view_.clear();
    core->parent_view_loaded_ = false;
    CAIRN_LOG_INFO(kLog, "volume flattened name=%s from=%s copied_extents=%zu", volume.c_str(),
                   parent.c_str(), copied);
    return ok();
  });
}

// ---------------------------------------------------------------------------------------
// Recovery

Status StoreImpl::recover_snapshots(std::map<uint64_t, std::shared_ptr<VolumeCore>>& by_id,
                                    rocksdb::WriteBatch& cleanup, uint64_t* dropped_keys) {
  auto drop = [&](const rocksdb::Slice& key) -> Status {
    cleanup.Delete(key);
    ++*dropped_keys;
    if (cleanup.Count() >= kDeleteBatchKeys) {
      CAIRN_TRY(write_metadata(cleanup));
      cleanup.Clear();
    }
    return ok();
  };
  {
    std::string v;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), kNextSnapshotIdKey, &v);
    if (!s.IsNotFound()) {
      CAIRN_TRY(db_status(s, "read next snapshot id"));
      if (v.size() != 8) return Errc::corrupt;
      next_snapshot_id_ = get_be64(reinterpret_cast<const uint8_t*>(v.data()));
    }
  }
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  // 1. Snapshots (of deleted volumes: dropped).
  size_t snapshots = 0;
  const std::string sprefix(1, kSnapshotKeyTag);
  for (it->Seek(sprefix); it->Valid() && it->key().starts_with(sprefix); it->Next()) {
    if (it->key().size() != 17) return Errc::corrupt;
    const uint64_t vol = get_be64(reinterpret_cast<const uint8_t*>(it->key().data()) + 1);
    auto owner = by_id.find(vol);
    if (owner == by_id.end()) {
      CAIRN_TRY(drop(it->key()));
      continue;
    }
    auto rec = decode_snapshot_record(sv(it->value()));
    if (!rec) {
      CAIRN_LOG_ERROR(kLog, "corrupt snapshot record volume_id=%llu", ull(vol));
      return Errc::corrupt;
    }
    auto snap = std::make_shared<SnapState>();
    snap->id = rec.value().id;
    snap->name = rec.value().name;
    snap->seq = rec.value().seq;
    snap->size_bytes = rec.value().size_bytes;
    snap->created_unix_s = rec.value().created_unix_s;
    owner->second->snaps_[snap->seq] = snap;
    next_snapshot_id_ = std::max(next_snapshot_id_, snap->id + 1);
    ++snapshots;
  }
  CAIRN_TRY(db_status(it->status(), "scan snapshots"));
  // 2. Clone links.
  for (auto& [id, core] : by_id) {
    if (core->loaded_parent_volume_id_ == 0) continue;
    auto parent = by_id.find(core->loaded_parent_volume_id_);
    std::shared_ptr<SnapState> snap;
    if (parent != by_id.end()) {
      for (auto& [seq, s] : parent->second->snaps_)
        if (s->id == core->loaded_parent_snapshot_id_) snap = s;
    }
    if (!snap) {
      CAIRN_LOG_ERROR(kLog, "clone %s: parent snapshot volume_id=%llu snapshot_id=%llu missing",
                      core->name().c_str(), ull(core->loaded_parent_volume_id_),
                      ull(core->loaded_parent_snapshot_id_));
      return Errc::corrupt;
    }
    core->parent_ = parent->second;
    core->parent_snap_ = snap;
    core->parent_seq_ = snap->seq;
    ++snap->clones;
  }
  // 3. Versions: those a snapshot sees keep their extents; the rest (an interrupted
  // snapshot delete, a deleted volume) are dropped and their extents punched as unused.
  uint64_t versions = 0;
  const std::string hprefix(1, kVersionKeyTag);
  for (it->Seek(hprefix); it->Valid() && it->key().starts_with(hprefix); it->Next()) {
    uint64_t vol = 0, ext = 0, death = 0;
    if (!parse_version_key(sv(it->key()), &vol, &ext, &death)) return Errc::corrupt;
    auto owner = by_id.find(vol);
    auto rec = decode_extent_record(sv(it->value()));
    if (owner != by_id.end() && !rec) return Errc::corrupt;
    bool seen = false;
    if (owner != by_id.end()) {
      for (auto s = owner->second->snaps_.lower_bound(rec.value().birth_seq);
           s != owner->second->snaps_.end() && s->first < death; ++s) {
        seen = true;
        break;
      }
    }
    if (!seen) {
      CAIRN_TRY(drop(it->key()));
      continue;
    }
    if (!rec.value().is_marker()) alloc_.mark_used(rec.value().phys_extent);
    ++versions;
  }
  CAIRN_TRY(db_status(it->status(), "scan versions"));
  // 4. Change keys no diff can ask for (deleted volume, or not after the oldest snapshot).
  const std::string cprefix(1, kChangeKeyTag);
  for (it->Seek(cprefix); it->Valid() && it->key().starts_with(cprefix); it->Next()) {
    uint64_t vol = 0, seq = 0, ext = 0;
    if (!parse_change_key(sv(it->key()), &vol, &seq, &ext)) return Errc::corrupt;
    auto owner = by_id.find(vol);
    if (owner == by_id.end() || owner->second->snaps_.empty() ||
        seq <= owner->second->snaps_.begin()->first) {
      CAIRN_TRY(drop(it->key()));
    }
  }
  CAIRN_TRY(db_status(it->status(), "scan changes"));
  for (auto& [id, core] : by_id) {
    std::lock_guard ml(core->map_mu_);
    core->max_snap_seq_ = core->snaps_.empty() ? 0 : core->snaps_.rbegin()->first;
    core->recompute_shared_locked();
  }
  CAIRN_LOG_INFO(kLog, "snapshots recovered snapshots=%zu versions=%llu", snapshots,
                 ull(versions));
  return ok();
}

}  // namespace cairn::blockd
