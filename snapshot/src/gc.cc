// Retention rules, prune, garbage collection and the backup side of the GC protocol.
#include <algorithm>
#include <chrono>
#include <ctime>
#include <map>
#include <set>
#include <thread>
#include <unordered_set>

#include "common/log.h"
#include "gc_protocol.h"
#include "snapshot/backup.h"

namespace cairn::backup {
namespace {

constexpr int64_t kGcRefreshS = 60;
constexpr int64_t kOldMarkerS = 3600;

int64_t day_of(int64_t t) { return t >= 0 ? t / 86400 : (t - 86399) / 86400; }
// Weeks start on Monday: 1970-01-01 was a Thursday, three days after one.
int64_t week_of(int64_t t) {
  int64_t d = day_of(t) + 3;
  return d >= 0 ? d / 7 : (d - 6) / 7;
}
int64_t month_of(int64_t t) {
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  return (tm.tm_year + 1900) * 12 + tm.tm_mon;
}

struct LiveLocks {
  int64_t oldest_start = INT64_MAX;  // server clock
  std::set<std::string> parents;     // backups that running backups build on
};

Result<LiveLocks> live_locks(Repository& repo, int64_t now_server_s, int64_t stale_after_s) {
  std::vector<BlobInfo> infos;
  CAIRN_TRY(repo.store().list("locks/", [&](const BlobInfo& i) {
    infos.push_back(i);
    return true;
  }));
  LiveLocks out;
  for (const auto& info : infos) {
    if (now_server_s - info.last_modified_unix_s > stale_after_s) continue;  // a dead job's
    cairn::v1::BackupLock lock;
    Status s = repo.get_record(info.key, &lock);
    if (!s) {
      if (s.error() == Errc::not_found) continue;  // finished meanwhile
      return s.error();
    }
    int64_t start = info.last_modified_unix_s;
    if (lock.started_unix_s() > 0) start = std::min(start, lock.started_unix_s());
    out.oldest_start = std::min(out.oldest_start, start);
    if (!lock.parent_id().empty()) out.parents.insert(lock.parent_id());
  }
  return out;
}

// One GC: its marker (refreshed while it works), the server time it started at and the
// running backups it must respect. A dry run writes nothing and treats every lock as live.
class GcSession {
 public:
  GcSession(Repository& repo, const GcOptions& options) : repo_(repo), options_(options) {}

  Status begin() {
    id_ = make_backup_id(std::time(nullptr));
    int64_t now_server = INT64_MAX;
    if (!options_.dry_run) {
      CAIRN_TRY(write(false));
      CAIRN_TRY(t, repo_.server_time_of(gc_key(id_)));
      now_server = t;
    }
    CAIRN_TRY(locks, live_locks(repo_, now_server, options_.lock_stale_after_s));
    locks_ = std::move(locks);
    // Chunks at least this old are not a running backup's fresh uploads.
    threshold_ = std::min(now_server, locks_.oldest_start) - kClockMarginS;
    return ok();
  }

  const LiveLocks& locks() const { return locks_; }

  // Deletes chunks no manifest (but those in `excluded`, for a dry run) references.
  Result<GcResult> collect(const std::set<std::string>& excluded_backups) {
    GcResult result;
    CAIRN_TRY(manifests, repo_.list_manifests(""));
    if (options_.on_listed) options_.on_listed();
    std::unordered_set<std::string> referenced;
    for (const auto& m : manifests) {
      if (excluded_backups.count(m.backup_id())) continue;
      for (const auto& c : m.chunks()) referenced.insert(c.id());
    }
    std::vector<BlobInfo> doomed;
    CAIRN_TRY(repo_.store().list("chunks/", [&](const BlobInfo& info) {
      auto slash = info.key.rfind('/');
      auto id = parse_chunk_id(std::string_view(info.key).substr(slash + 1));
      if (!id) return true;  // not ours: leave it
      std::string bytes(reinterpret_cast<const char*>(id->data()), id->size());
      if (!referenced.count(bytes) && info.last_modified_unix_s < threshold_) doomed.push_back(info);
      return true;
    }));
    for (const auto& info : doomed) {
      if (!options_.dry_run) {
        CAIRN_TRY(repo_.store().remove(info.key));
        if (std::time(nullptr) - last_write_ >= kGcRefreshS) {
          CAIRN_TRY(write(false));
        }
      }
      result.chunks_deleted++;
      result.bytes_freed += info.size;
    }
    if (options_.dry_run) return result;
    CAIRN_TRY(write(true));
    CAIRN_TRY(drop_old_markers());
    CAIRN_LOG_INFO("backup", "gc %s: %llu chunks deleted, %llu bytes freed", id_.c_str(),
                   static_cast<unsigned long long>(result.chunks_deleted),
                   static_cast<unsigned long long>(result.bytes_freed));
    return result;
  }

 private:
  Status write(bool finished) {
    cairn::v1::GcMarker m;
    m.set_gc_id(id_);
    m.set_finished(finished);
    last_write_ = std::time(nullptr);
    return repo_.put_record(gc_key(id_), m);
  }

  // Markers of GCs that finished before any running backup began matter to nobody.
  Status drop_old_markers() {
    std::vector<std::string> old;
    CAIRN_TRY(repo_.store().list("gc/", [&](const BlobInfo& info) {
      if (info.key != gc_key(id_) && info.last_modified_unix_s < threshold_ - kOldMarkerS) {
        old.push_back(info.key);
      }
      return true;
    }));
    for (const auto& key : old) {
      cairn::v1::GcMarker m;
      if (repo_.get_record(key, &m) && m.finished()) {
        CAIRN_TRY(repo_.store().remove(key));
      }
    }
    return ok();
  }

  Repository& repo_;
  const GcOptions& options_;
  std::string id_;
  LiveLocks locks_;
  int64_t threshold_ = 0;
  int64_t last_write_ = 0;
};

}  // namespace

Result<bool> wait_for_overlapping_gc(Repository& repo, int64_t since_server_s) {
  // key -> (LastModified seen, when we first saw that value)
  std::map<std::string, std::pair<int64_t, std::chrono::steady_clock::time_point>> seen;
  bool overlapped = false;
  for (;;) {
    std::vector<BlobInfo> markers;
    CAIRN_TRY(repo.store().list("gc/", [&](const BlobInfo& i) {
      markers.push_back(i);
      return true;
    }));
    bool waiting = false;
    auto now = std::chrono::steady_clock::now();
    for (const auto& info : markers) {
      cairn::v1::GcMarker m;
      Status s = repo.get_record(info.key, &m);
      if (!s) {
        if (s.error() == Errc::not_found) continue;
        return s.error();
      }
      if (m.finished()) {
        if (info.last_modified_unix_s >= since_server_s - kClockMarginS) overlapped = true;
        continue;
      }
      overlapped = true;
      auto& [mtime, since] = seen.try_emplace(info.key, info.last_modified_unix_s, now).first->second;
      if (mtime != info.last_modified_unix_s) {
        mtime = info.last_modified_unix_s;
        since = now;
      }
      if (now - since < std::chrono::seconds(kGcMarkerStaleS)) waiting = true;
    }
    if (!waiting) return overlapped;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
}

std::vector<bool> retention_keep(const std::vector<int64_t>& created, const RetentionRules& rules) {
  std::vector<size_t> order(created.size());
  for (size_t i = 0; i < order.size(); i++) order[i] = i;
  // Newest first; of equal times the later entry is the newer (callers list oldest first).
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return created[a] != created[b] ? created[a] > created[b] : a > b;
  });
  std::vector<bool> keep(created.size(), false);
  for (size_t r = 0; r < order.size() && r < rules.keep_last; r++) keep[order[r]] = true;
  auto by_bucket = [&](uint32_t n, int64_t (*bucket)(int64_t)) {
    uint32_t taken = 0;
    bool have_last = false;
    int64_t last = 0;
    for (size_t i : order) {
      if (taken >= n) return;
      int64_t b = bucket(created[i]);
      if (have_last && b == last) continue;  // an older backup of a bucket already kept
      keep[i] = true;
      have_last = true;
      last = b;
      taken++;
    }
  };
  by_bucket(rules.keep_daily, day_of);
  by_bucket(rules.keep_weekly, week_of);
  by_bucket(rules.keep_monthly, month_of);
  return keep;
}

Result<GcResult> collect_garbage(Repository& repo, const GcOptions& options) {
  GcSession gc(repo, options);
  CAIRN_TRY(gc.begin());
  return gc.collect({});
}

Result<cairn::v1::PruneResponse> run_prune(Repository& repo, const cairn::v1::PruneRequest& request,
                                           const GcOptions& gc) {
  RetentionRules rules{request.keep_last(), request.keep_daily(), request.keep_weekly(),
                       request.keep_monthly()};
  bool explicit_ids = request.delete_ids_size() > 0;
  if (explicit_ids == rules.any()) return Errc::invalid_argument;  // one or the other

  CAIRN_TRY(manifests, repo.list_manifests(request.volume()));
  std::vector<bool> remove(manifests.size(), false);
  if (explicit_ids) {
    for (const auto& ref : request.delete_ids()) {
      bool found = false;
      for (size_t i = 0; i < manifests.size(); i++) {
        const auto& m = manifests[i];
        if (ref == m.backup_id() || ref == m.volume() + "/" + m.backup_id()) {
          remove[i] = true;
          found = true;
        }
      }
      if (!found) return Errc::not_found;
    }
  } else {
    std::map<std::string, std::vector<size_t>> by_volume;
    for (size_t i = 0; i < manifests.size(); i++) by_volume[manifests[i].volume()].push_back(i);
    for (const auto& [volume, idx] : by_volume) {
      std::vector<int64_t> times;
      for (size_t i : idx) times.push_back(manifests[i].created_unix_s());
      auto keep = retention_keep(times, rules);
      for (size_t k = 0; k < idx.size(); k++) remove[idx[k]] = !keep[k];
    }
  }

  GcOptions gc_options = gc;
  gc_options.dry_run = request.dry_run();
  GcSession session(repo, gc_options);
  CAIRN_TRY(session.begin());
  cairn::v1::PruneResponse out;
  std::set<std::string> removed_ids;
  for (size_t i = 0; i < manifests.size(); i++) {
    const auto& m = manifests[i];
    std::string ref = m.volume() + "/" + m.backup_id();
    if (!remove[i]) {
      out.add_kept(ref);
    } else if (session.locks().parents.count(m.backup_id())) {
      out.add_deferred(ref);  // a running backup builds on it: next prune
    } else {
      out.add_removed(ref);
      removed_ids.insert(m.backup_id());
      if (!request.dry_run()) {
        CAIRN_TRY(repo.delete_manifest(m.volume(), m.backup_id()));
      }
    }
  }
  CAIRN_TRY(result, session.collect(request.dry_run() ? removed_ids : std::set<std::string>{}));
  out.set_chunks_deleted(result.chunks_deleted);
  out.set_bytes_freed(result.bytes_freed);
  return out;
}

Result<RepoUsage> repository_usage(Repository& repo) {
  RepoUsage usage;
  CAIRN_TRY(repo.store().list("chunks/", [&](const BlobInfo& info) {
    usage.chunks++;
    usage.bytes += info.size;
    return true;
  }));
  return usage;
}

}  // namespace cairn::backup
