// Backup, restore, verify, prune: the jobs over a Repository (docs/FORMAT-backup.md).
//
// A backup reads a snapshot through BackupSource (blockd implements it over its volume
// engine), cuts it into the repository's fixed chunks, and stores each chunk the
// repository does not hold yet. Chunks that were never written are holes (nothing stored).
// An incremental backup reads only the chunks the snapshot diff since the previous
// backup's snapshot touches and takes the rest from that backup's manifest; every
// manifest is nevertheless a complete image. A rerun after a crash uploads nothing the
// repository already holds (every new chunk is looked up first).
//
// Concurrency with garbage collection (prune/delete) follows the lock/marker protocol of
// FORMAT-backup.md: a running backup holds `locks/<id>`; GC keeps chunks younger than the
// oldest lock and the chunks of the backups running ones build on; a backup that finishes
// while a GC ran re-checks the chunks it did not upload itself and stores again any that
// went missing, before its manifest counts.
//
// Jobs run on the calling thread plus `threads` workers; progress is published through
// JobProgress atomics for a status endpoint to read.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "cairn/v1/backup.pb.h"
#include "common/result.h"
#include "snapshot/repository.h"

namespace cairn::backup {

struct ByteRange {
  uint64_t offset = 0;
  uint64_t length = 0;
};

// A snapshot as a backup reads it. Thread-safe: workers call read() concurrently.
class BackupSource {
 public:
  virtual ~BackupSource() = default;
  virtual uint64_t size_bytes() const = 0;
  // The ranges in [offset, offset + length) that hold written data; the rest reads zeros.
  virtual Result<std::vector<ByteRange>> allocated(uint64_t offset, uint64_t length) = 0;
  // The ranges that may differ from snapshot `since` of the same volume (written, trimmed
  // or zeroed since). not_found when `since` no longer exists.
  virtual Result<std::vector<ByteRange>> changed_since(const std::string& since) = 0;
  virtual Status read(uint64_t offset, uint64_t length, char* buf) = 0;
};

// Where a restore writes. Thread-safe. Only non-zero 4 KiB blocks are written, so holes
// stay holes on a new (zero-filled) volume.
class RestoreSink {
 public:
  virtual ~RestoreSink() = default;
  virtual Status write(uint64_t offset, std::string_view data) = 0;
};

struct JobProgress {
  std::atomic<uint64_t> total_bytes{0};     // bytes the job will process
  std::atomic<uint64_t> done_bytes{0};
  std::atomic<uint64_t> transferred_bytes{0};  // uploaded (backup) or downloaded (restore)
  std::atomic<bool> cancel{false};          // set to stop the job early (it fails: canceled)
};

struct BackupOptions {
  std::string volume;
  std::string snapshot;
  int threads = 4;
  JobProgress* progress = nullptr;  // optional
  // Wall clock (unix seconds) for ids and stats; tests substitute their own.
  std::function<int64_t()> now_unix_s;
  // Called once the lock is written (tests use it to interleave a GC).
  std::function<void(const std::string& backup_id)> on_started;
};

Result<cairn::v1::BackupManifest> run_backup(Repository& repo, BackupSource& source,
                                             const BackupOptions& options);

Status run_restore(Repository& repo, const cairn::v1::BackupManifest& manifest, RestoreSink& sink,
                   int threads, JobProgress* progress);

// Writes the non-zero 4 KiB blocks of `data` (placed at `offset`) to `sink`, in runs; zero
// blocks are not written, so they stay holes on a new volume.
Status write_nonzero_blocks(RestoreSink& sink, uint64_t offset, std::string_view data);

// The plaintext of chunk `index` of a backup (zeros for a hole; the last chunk is cut at the
// volume size). For on-demand reads during an instant restore.
Result<std::string> read_backup_chunk(Repository& repo, const cairn::v1::BackupManifest& manifest,
                                      uint64_t index);

// Re-reads every chunk the chosen backups reference (`backup_ref` empty = all) and checks it.
Result<cairn::v1::VerifyResponse> run_verify(Repository& repo, const std::string& backup_ref,
                                             int threads, JobProgress* progress = nullptr);

// ---- retention and garbage collection ----

struct RetentionRules {
  uint32_t keep_last = 0, keep_daily = 0, keep_weekly = 0, keep_monthly = 0;
  bool any() const { return keep_last || keep_daily || keep_weekly || keep_monthly; }
};

// Given creation times (unix seconds, UTC) of one volume's backups, oldest first (equal
// times: the later entry is the newer), returns which to keep (same order): the newest keep_last; the newest backup of each of the newest
// keep_daily days that have one; likewise per ISO week and per month.
std::vector<bool> retention_keep(const std::vector<int64_t>& created_unix_s, const RetentionRules& rules);

struct GcOptions {
  bool dry_run = false;
  int64_t lock_stale_after_s = 24 * 3600;  // a lock not refreshed this long is a dead job's
  std::function<void()> on_listed;          // after GC listed manifests (tests interleave here)
};

// Applies `request` (rules per volume, or explicit delete_ids), then collects garbage.
Result<cairn::v1::PruneResponse> run_prune(Repository& repo, const cairn::v1::PruneRequest& request,
                                           const GcOptions& gc);

// Deletes chunk objects no manifest references, except those a running backup may rely on.
struct GcResult {
  uint64_t chunks_deleted = 0;
  uint64_t bytes_freed = 0;
};
Result<GcResult> collect_garbage(Repository& repo, const GcOptions& options);

// Totals of the repository's chunk objects.
struct RepoUsage {
  uint64_t chunks = 0;
  uint64_t bytes = 0;
};
Result<RepoUsage> repository_usage(Repository& repo);

}  // namespace cairn::backup
