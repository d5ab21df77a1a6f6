// run_backup, run_restore, read_backup_chunk, run_verify.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "common/fault.h"
#include "common/log.h"
#include "gc_protocol.h"
#include "snapshot/backup.h"

namespace cairn::backup {
namespace {

constexpr uint64_t kZeroBlock = 4096;
constexpr int64_t kLockRefreshS = 300;
constexpr int kMaxRecheckRounds = 3;

std::string id_bytes(const ChunkId& id) { return std::string(reinterpret_cast<const char*>(id.data()), id.size()); }

ChunkId id_from_bytes(const std::string& bytes) {
  ChunkId id{};
  std::memcpy(id.data(), bytes.data(), std::min(bytes.size(), id.size()));
  return id;
}

bool all_zero(const char* p, size_t n) {
  static const char kZeros[kZeroBlock] = {};
  while (n > 0) {
    size_t step = std::min<size_t>(n, kZeroBlock);
    if (std::memcmp(p, kZeros, step) != 0) return false;
    p += step;
    n -= step;
  }
  return true;
}

// Runs fn(i) for i in [0, n) on `threads` threads (the caller's included); stops handing out
// work at the first error or cancel and returns that error.
Status parallel_for(size_t n, int threads, JobProgress* progress,
                    const std::function<Status(size_t)>& fn) {
  std::atomic<size_t> next{0};
  std::mutex mu;
  Status first = ok();
  std::atomic<bool> failed{false};
  auto worker = [&] {
    for (;;) {
      if (failed.load() || (progress && progress->cancel.load())) return;
      size_t i = next.fetch_add(1);
      if (i >= n) return;
      Status s = fn(i);
      if (!s) {
        std::lock_guard lock(mu);
        if (!failed.exchange(true)) first = s;
        return;
      }
    }
  };
  int extra = std::clamp(threads, 1, 64) - 1;
  std::vector<std::thread> pool;
  pool.reserve(extra);
  for (int t = 0; t < extra; t++) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (!failed.load() && progress && progress->cancel.load()) return Errc::unavailable;
  return first;
}

uint64_t chunk_length(const cairn::v1::BackupManifest& m, uint64_t index) {
  uint64_t off = index * m.chunk_size();
  return std::min<uint64_t>(m.chunk_size(), m.volume_size() - off);
}

// State of one backup run shared by its workers.
class BackupRun {
 public:
  BackupRun(Repository& repo, BackupSource& source, const BackupOptions& options)
      : repo_(repo), source_(source), options_(options), cs_(repo.chunk_size()) {}

  Result<cairn::v1::BackupManifest> run();

 private:
  int64_t now() const { return options_.now_unix_s ? options_.now_unix_s() : std::time(nullptr); }
  Status choose_parent();
  Status process(uint64_t index, bool force_upload);
  Status write_lock(bool first);
  void maybe_refresh_lock();
  Result<std::vector<uint64_t>> missing_chunks(const cairn::v1::BackupManifest& manifest);

  Repository& repo_;
  BackupSource& source_;
  const BackupOptions& options_;
  const uint64_t cs_;
  uint64_t size_ = 0;
  uint64_t nchunks_ = 0;
  std::string backup_id_;
  int64_t started_server_s_ = 0;
  int64_t started_unix_s_ = 0;  // our clock: the id's time and the manifest's creation time
  int64_t newest_created_ = 0;  // of the volume's existing backups

  std::optional<cairn::v1::BackupManifest> parent_;
  std::vector<std::optional<cairn::v1::ChunkRef>> refs_;
  std::vector<uint64_t> todo_;

  std::mutex mu_;  // guards known_, uploaded_, claimed_
  std::unordered_map<std::string, uint32_t> known_;  // id -> stored size, known to be stored
  std::unordered_set<std::string> uploaded_;         // ids this run stored itself
  std::unordered_set<std::string> claimed_;          // ids a worker is looking up or storing
  std::atomic<uint64_t> read_bytes_{0}, new_bytes_{0}, new_chunks_{0}, reused_chunks_{0};
  std::atomic<int64_t> last_refresh_{0};
  std::mutex lock_mu_;
};

Status BackupRun::choose_parent() {
  CAIRN_TRY(previous, repo_.list_manifests(options_.volume));
  for (const auto& m : previous) newest_created_ = std::max(newest_created_, m.created_unix_s());
  for (auto it = previous.rbegin(); it != previous.rend(); ++it) {
    auto changes = source_.changed_since(it->snapshot());
    if (!changes) {
      if (changes.error() == Errc::not_found) continue;  // that snapshot is gone: try older
      return changes.error();
    }
    parent_ = *it;
    std::vector<bool> touched(nchunks_, false);
    for (const auto& r : changes.value()) {
      if (r.length == 0) continue;
      uint64_t last = std::min((r.offset + r.length - 1) / cs_, nchunks_ - 1);
      for (uint64_t i = r.offset / cs_; i <= last && i < nchunks_; i++) touched[i] = true;
    }
    // A grown volume: the parent's last chunk and everything after it are new ground.
    if (parent_->volume_size() != size_) {
      uint64_t from = std::min(parent_->volume_size(), size_) / cs_;
      for (uint64_t i = from; i < nchunks_; i++) touched[i] = true;
    }
    for (const auto& c : parent_->chunks()) {
      known_[c.id()] = c.stored_size();
      if (c.index() < nchunks_ && !touched[c.index()]) refs_[c.index()] = c;
    }
    for (uint64_t i = 0; i < nchunks_; i++) {
      if (touched[i]) todo_.push_back(i);
    }
    return ok();
  }
  for (uint64_t i = 0; i < nchunks_; i++) todo_.push_back(i);
  return ok();
}

Status BackupRun::write_lock(bool first) {
  cairn::v1::BackupLock lock;
  lock.set_backup_id(backup_id_);
  lock.set_volume(options_.volume);
  if (parent_) lock.set_parent_id(parent_->backup_id());
  lock.set_refreshed_unix_s(now());
  lock.set_started_unix_s(started_server_s_);
  CAIRN_TRY(repo_.put_record(lock_key(backup_id_), lock));
  if (first) {
    CAIRN_TRY(t, repo_.server_time_of(lock_key(backup_id_)));
    started_server_s_ = t;
  }
  last_refresh_ = now();
  return ok();
}

void BackupRun::maybe_refresh_lock() {
  if (now() - last_refresh_.load() < kLockRefreshS) return;
  std::unique_lock lock(lock_mu_, std::try_to_lock);
  if (!lock.owns_lock() || now() - last_refresh_.load() < kLockRefreshS) return;
  if (!write_lock(false)) CAIRN_LOG_WARN("backup", "%s: could not refresh its lock", backup_id_.c_str());
}

Status BackupRun::process(uint64_t index, bool force_upload) {
  maybe_refresh_lock();
  uint64_t off = index * cs_;
  uint64_t len = std::min(cs_, size_ - off);
  JobProgress* progress = options_.progress;
  CAIRN_TRY(alloc, source_.allocated(off, len));
  if (alloc.empty()) {
    refs_[index].reset();
    if (progress) progress->done_bytes += len;
    return ok();
  }
  // One read buffer per worker thread, reused: a fresh 4 MiB string per chunk is zeroed and
  // faulted in page by page every time (the allocator hands the freed pages back to the
  // kernel), which cost about a third of a worker's CPU.
  thread_local std::string buf;
  buf.resize(len);
  CAIRN_TRY(source_.read(off, len, buf.data()));
  read_bytes_ += len;
  if (all_zero(buf.data(), buf.size())) {
    refs_[index].reset();
    if (progress) progress->done_bytes += len;
    return ok();
  }
  ChunkId id = repo_.chunk_id(buf);
  std::string key = id_bytes(id);
  std::optional<uint32_t> stored;
  if (!force_upload) {
    std::lock_guard lock(mu_);
    if (auto it = known_.find(key); it != known_.end()) {
      stored = it->second;
    } else if (!claimed_.insert(key).second) {
      // Another worker is storing this same chunk right now: reuse it. Its size is filled
      // in once every worker is done (a failure there fails the whole run).
      stored = 0;
    }
  }
  if (!stored && !force_upload) {
    CAIRN_TRY(info, repo_.store().head(chunk_key(id)));
    if (info) {
      stored = static_cast<uint32_t>(info->size);
      std::lock_guard lock(mu_);
      known_[key] = *stored;
    }
  }
  if (stored) {
    reused_chunks_++;
  } else {
    std::string object = repo_.encode_chunk(id, buf);
    if (int e = CAIRN_FAULT_POINT("backup.chunk.before_put")) return errno_code(e);
    CAIRN_TRY(repo_.store().put(chunk_key(id), object));
    stored = static_cast<uint32_t>(object.size());
    new_bytes_ += object.size();
    new_chunks_++;
    if (progress) progress->transferred_bytes += object.size();
    std::lock_guard lock(mu_);
    known_[key] = *stored;
    uploaded_.insert(key);
  }
  cairn::v1::ChunkRef ref;
  ref.set_index(index);
  ref.set_id(key);
  ref.set_stored_size(*stored);
  refs_[index] = std::move(ref);
  if (progress) progress->done_bytes += len;
  return ok();
}

Result<std::vector<uint64_t>> BackupRun::missing_chunks(const cairn::v1::BackupManifest& manifest) {
  std::vector<const cairn::v1::ChunkRef*> check;
  for (const auto& c : manifest.chunks()) {
    if (!uploaded_.count(c.id())) check.push_back(&c);
  }
  std::mutex mu;
  std::vector<uint64_t> missing;
  CAIRN_TRY(parallel_for(check.size(), options_.threads, nullptr, [&](size_t i) -> Status {
    CAIRN_TRY(present, repo_.has_chunk(id_from_bytes(check[i]->id())));
    if (!present) {
      std::lock_guard lock(mu);
      missing.push_back(check[i]->index());
    }
    return ok();
  }));
  std::sort(missing.begin(), missing.end());
  return missing;
}

Result<cairn::v1::BackupManifest> BackupRun::run() {
  auto t0 = std::chrono::steady_clock::now();
  size_ = source_.size_bytes();
  if (size_ == 0) return Errc::invalid_argument;
  nchunks_ = (size_ + cs_ - 1) / cs_;
  refs_.resize(nchunks_);
  CAIRN_TRY(choose_parent());

  // Ids (and creation times) of one volume's backups strictly increase, also for backups
  // made within one second: listings and retention order them by it.
  started_unix_s_ = std::max(now(), newest_created_ + 1);
  backup_id_ = make_backup_id(started_unix_s_);
  CAIRN_TRY(write_lock(true));
  CAIRN_TRY(write_lock(false));  // records the server's start time in the lock
  if (options_.on_started) options_.on_started(backup_id_);
  CAIRN_LOG_INFO("backup", "%s: %s@%s to %s, %s, %zu of %llu chunks to read", backup_id_.c_str(),
                 options_.volume.c_str(), options_.snapshot.c_str(), repo_.store().describe().c_str(),
                 parent_ ? ("incremental to " + parent_->backup_id()).c_str() : "full", todo_.size(),
                 static_cast<unsigned long long>(nchunks_));

  JobProgress* progress = options_.progress;
  if (progress) {
    uint64_t total = 0;
    for (uint64_t i : todo_) total += std::min(cs_, size_ - i * cs_);
    progress->total_bytes = total;
  }
  CAIRN_TRY(parallel_for(todo_.size(), options_.threads, progress,
                         [&](size_t i) { return process(todo_[i], false); }));
  for (auto& ref : refs_) {
    if (ref && ref->stored_size() == 0) ref->set_stored_size(known_.at(ref->id()));
  }

  cairn::v1::BackupManifest manifest;
  manifest.set_format(1);
  manifest.set_backup_id(backup_id_);
  manifest.set_volume(options_.volume);
  manifest.set_snapshot(options_.snapshot);
  manifest.set_volume_size(size_);
  manifest.set_chunk_size(cs_);
  manifest.set_created_unix_s(started_unix_s_);
  if (parent_) manifest.set_parent_id(parent_->backup_id());
  auto fill = [&] {
    manifest.clear_chunks();
    uint64_t logical = 0;
    for (uint64_t i = 0; i < nchunks_; i++) {
      if (!refs_[i]) continue;
      *manifest.add_chunks() = *refs_[i];
      logical += std::min(cs_, size_ - i * cs_);
    }
    auto* stats = manifest.mutable_stats();
    stats->set_logical_bytes(logical);
    stats->set_read_bytes(read_bytes_);
    stats->set_new_bytes(new_bytes_);
    stats->set_new_chunks(new_chunks_);
    stats->set_reused_chunks(reused_chunks_);
    stats->set_duration_s(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  };
  fill();
  CAIRN_TRY(repo_.put_manifest(manifest));

  // A GC that ran while we did may have removed chunks we found stored: check and store them
  // again. Once the manifest is written, later GCs see it, so this settles in a round or two.
  for (int round = 0;; round++) {
    CAIRN_TRY(overlapped, wait_for_overlapping_gc(repo_, started_server_s_));
    if (!overlapped) break;
    CAIRN_TRY(missing, missing_chunks(manifest));
    if (missing.empty()) break;
    if (round == kMaxRecheckRounds) return Errc::unavailable;
    CAIRN_LOG_WARN("backup", "%s: %zu chunks went away during a concurrent GC: storing them again",
                   backup_id_.c_str(), missing.size());
    CAIRN_TRY(parallel_for(missing.size(), options_.threads, nullptr,
                           [&](size_t i) { return process(missing[i], true); }));
    fill();
    CAIRN_TRY(repo_.put_manifest(manifest));
  }
  CAIRN_TRY(repo_.store().remove(lock_key(backup_id_)));
  CAIRN_LOG_INFO("backup", "%s: done: %llu chunks, %llu new (%llu bytes), %.1f s", backup_id_.c_str(),
                 static_cast<unsigned long long>(manifest.chunks_size()),
                 static_cast<unsigned long long>(new_chunks_.load()),
                 static_cast<unsigned long long>(new_bytes_.load()), manifest.stats().duration_s());
  return manifest;
}

}  // namespace

Result<cairn::v1::BackupManifest> run_backup(Repository& repo, BackupSource& source,
                                             const BackupOptions& options) {
  BackupRun run(repo, source, options);
  return run.run();
}

Status write_nonzero_blocks(RestoreSink& sink, uint64_t offset, std::string_view data) {
  size_t i = 0;
  while (i < data.size()) {
    size_t step = std::min<size_t>(kZeroBlock, data.size() - i);
    if (all_zero(data.data() + i, step)) {
      i += step;
      continue;
    }
    size_t j = i + step;
    while (j < data.size()) {
      size_t s = std::min<size_t>(kZeroBlock, data.size() - j);
      if (all_zero(data.data() + j, s)) break;
      j += s;
    }
    CAIRN_TRY(sink.write(offset + i, data.substr(i, j - i)));
    i = j;
  }
  return ok();
}

Status run_restore(Repository& repo, const cairn::v1::BackupManifest& manifest, RestoreSink& sink,
                   int threads, JobProgress* progress) {
  if (progress) progress->total_bytes = manifest.stats().logical_bytes();
  return parallel_for(manifest.chunks_size(), threads, progress, [&](size_t i) -> Status {
    const auto& ref = manifest.chunks(static_cast<int>(i));
    if (int e = CAIRN_FAULT_POINT("backup.restore.chunk")) return errno_code(e);
    auto plain = repo.get_chunk(id_from_bytes(ref.id()));
    if (!plain) {
      CAIRN_LOG_ERROR("backup", "restore of %s/%s: chunk %llu (%s) is %s", manifest.volume().c_str(),
                      manifest.backup_id().c_str(), static_cast<unsigned long long>(ref.index()),
                      chunk_id_hex(id_from_bytes(ref.id())).c_str(),
                      plain.error() == Errc::not_found ? "missing" : plain.error().message().c_str());
      return plain.error();
    }
    if (plain.value().size() != chunk_length(manifest, ref.index())) return Errc::corrupt;
    if (progress) progress->transferred_bytes += ref.stored_size();
    CAIRN_TRY(write_nonzero_blocks(sink, ref.index() * manifest.chunk_size(), plain.value()));
    if (progress) progress->done_bytes += plain.value().size();
    return ok();
  });
}

Result<std::string> read_backup_chunk(Repository& repo, const cairn::v1::BackupManifest& manifest,
                                      uint64_t index) {
  uint64_t nchunks = (manifest.volume_size() + manifest.chunk_size() - 1) / manifest.chunk_size();
  if (index >= nchunks) return Errc::out_of_range;
  uint64_t len = chunk_length(manifest, index);
  const auto& chunks = manifest.chunks();
  auto it = std::lower_bound(chunks.begin(), chunks.end(), index,
                             [](const cairn::v1::ChunkRef& c, uint64_t i) { return c.index() < i; });
  if (it == chunks.end() || it->index() != index) return std::string(len, '\0');
  CAIRN_TRY(plain, repo.get_chunk(id_from_bytes(it->id())));
  if (plain.size() != len) return Errc::corrupt;
  return std::move(plain);
}

Result<cairn::v1::VerifyResponse> run_verify(Repository& repo, const std::string& backup_ref, int threads,
                                             JobProgress* progress) {
  std::vector<cairn::v1::BackupManifest> manifests;
  if (backup_ref.empty()) {
    CAIRN_TRY(all, repo.list_manifests(""));
    manifests = std::move(all);
  } else {
    CAIRN_TRY(one, repo.get_manifest(backup_ref));
    manifests.push_back(std::move(one));
  }
  // Each distinct chunk is read once.
  std::unordered_map<std::string, size_t> slot;
  std::vector<std::string> ids;
  std::vector<uint32_t> stored;
  for (const auto& m : manifests) {
    for (const auto& c : m.chunks()) {
      if (slot.emplace(c.id(), ids.size()).second) {
        ids.push_back(c.id());
        stored.push_back(c.stored_size());
      }
    }
  }
  if (progress) {
    uint64_t total = 0;
    for (uint32_t n : stored) total += n;
    progress->total_bytes = total;
  }
  enum State : uint8_t { good, missing, corrupt };
  std::vector<State> state(ids.size(), good);
  std::atomic<uint64_t> bytes{0};
  CAIRN_TRY(parallel_for(ids.size(), threads, progress, [&](size_t i) -> Status {
    auto plain = repo.get_chunk(id_from_bytes(ids[i]));
    if (progress) {
      progress->done_bytes += stored[i];
      progress->transferred_bytes += stored[i];
    }
    if (plain) {
      bytes += plain.value().size();
      return ok();
    }
    if (plain.error() == Errc::not_found) {
      state[i] = missing;
    } else if (plain.error() == Errc::corrupt) {
      state[i] = corrupt;
    } else {
      return plain.error();  // the store failed: no verdict
    }
    return ok();
  }));
  cairn::v1::VerifyResponse out;
  out.set_backups_checked(manifests.size());
  out.set_chunks_checked(ids.size());
  out.set_bytes_checked(bytes);
  for (size_t i = 0; i < ids.size(); i++) {
    if (state[i] != good) {
      out.add_bad_chunks(std::string(state[i] == missing ? "missing " : "corrupt ") +
                         chunk_id_hex(id_from_bytes(ids[i])));
    }
  }
  for (const auto& m : manifests) {
    uint64_t nmissing = 0, ncorrupt = 0;
    std::unordered_set<std::string> seen;
    for (const auto& c : m.chunks()) {
      if (!seen.insert(c.id()).second) continue;
      State s = state[slot[c.id()]];
      nmissing += s == missing;
      ncorrupt += s == corrupt;
    }
    if (nmissing + ncorrupt == 0) continue;
    auto* d = out.add_damaged();
    d->set_backup_id(m.backup_id());
    d->set_volume(m.volume());
    d->set_missing_chunks(nmissing);
    d->set_corrupt_chunks(ncorrupt);
  }
  return out;
}

}  // namespace cairn::backup
