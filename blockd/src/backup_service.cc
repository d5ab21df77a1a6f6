#include "blockd/backup_service.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "common/file.h"
#include "common/log.h"
#include "hydrator.h"
#include "common/reactor_thread.h"
#include "snapshot/backup.h"
#include "snapshot/s3_blob_store.h"
#include "store_impl.h"
#include "volume_sink.h"

namespace cairn::blockd {
namespace {

constexpr const char* kLog = "backup";

using backup::BackupSource;
using backup::ByteRange;
using backup::Repository;
using backup::RestoreSink;

// A repository reached through one S3 target.
struct OpenRepo {
  std::unique_ptr<backup::S3BlobStore> store;
  std::unique_ptr<Repository> repo;
};

std::string describe_error(const std::error_code& ec, const std::string& repo_url) {
  if (ec == Errc::not_found) return "no backup repository at " + repo_url + " (run `cairn backup init`)";
  if (ec == Errc::permission_denied) {
    return "access to " + repo_url + " denied: check the S3 keys, and the repository key if it is encrypted";
  }
  if (ec == Errc::unavailable) return "S3 endpoint unreachable for " + repo_url;
  return repo_url + ": " + ec.message();
}

Result<std::unique_ptr<backup::S3BlobStore>> open_store(const cairn::v1::S3Target& t, std::string* message) {
  auto loc = backup::parse_repo_url(t.repo());
  if (!loc) {
    *message = "invalid repository " + std::string(t.repo().empty() ? "(none given)" : "'" + t.repo() + "'") +
               ": expected s3://BUCKET[/PREFIX]";
    return Errc::invalid_argument;
  }
  if (t.endpoint().empty() || t.access_key().empty() || t.secret_key().empty()) {
    *message = "the S3 endpoint and keys are required (CAIRN_S3_ENDPOINT, CAIRN_S3_ACCESS_KEY, CAIRN_S3_SECRET_KEY)";
    return Errc::invalid_argument;
  }
  backup::S3Config config;
  config.endpoint = t.endpoint();
  config.access_key = t.access_key();
  config.secret_key = t.secret_key();
  if (!t.region().empty()) config.region = t.region();
  config.bucket = loc.value().bucket;
  config.prefix = loc.value().prefix;
  auto store = backup::S3BlobStore::open(config);
  if (!store) *message = "invalid S3 endpoint '" + t.endpoint() + "'";
  return store;
}

Result<std::optional<backup::RepoKey>> parse_key(const cairn::v1::S3Target& t, std::string* message) {
  if (t.key_hex().empty()) return std::optional<backup::RepoKey>();
  auto key = backup::parse_repo_key(t.key_hex());
  if (!key) {
    *message = "the repository key must be 64 hex characters (32 bytes)";
    return Errc::invalid_argument;
  }
  return std::optional<backup::RepoKey>(key.value());
}

Result<OpenRepo> open_repo(const cairn::v1::S3Target& t, std::string* message) {
  OpenRepo out;
  CAIRN_TRY(store, open_store(t, message));
  out.store = std::move(store);
  CAIRN_TRY(key, parse_key(t, message));
  auto repo = Repository::open(*out.store, key);
  if (!repo) {
    *message = describe_error(repo.error(), t.repo());
    return repo.error();
  }
  out.repo = std::move(repo.value());
  return out;
}

// A snapshot of a volume as a backup reads it: data through the snapshot's read-only
// handle on the job's Reactor, allocation and diffs from the engine's metadata.
class SnapshotSource final : public BackupSource {
 public:
  SnapshotSource(VolumeStore& store, std::shared_ptr<Volume> handle, std::string volume,
                 std::string snapshot)
      : store_(store), handle_(std::move(handle)), volume_(std::move(volume)), snapshot_(std::move(snapshot)) {}

  uint64_t size_bytes() const override { return handle_->size_bytes(); }

  Result<std::vector<ByteRange>> allocated(uint64_t offset, uint64_t length) override {
    CAIRN_TRY(runs, handle_->allocation(offset, length, 1u << 20));
    std::vector<ByteRange> out;
    uint64_t at = offset;
    for (const auto& r : runs) {
      if (r.allocated) out.push_back({at, r.length_bytes});
      at += r.length_bytes;
    }
    return out;
  }

  Result<std::vector<ByteRange>> changed_since(const std::string& since) override {
    CAIRN_TRY(runs, store_.diff(volume_, since, snapshot_));
    std::vector<ByteRange> out;
    out.reserve(runs.size());
    for (const auto& r : runs) out.push_back({r.offset_bytes, r.length_bytes});
    return out;
  }

  Status read(uint64_t offset, uint64_t length, char* buf) override {
    return reactor_.run(handle_->read(offset, length, buf));
  }

 private:
  VolumeStore& store_;
  std::shared_ptr<Volume> handle_;
  std::string volume_, snapshot_;
  ReactorThread reactor_;
};

cairn::v1::BackupSummary summary_of(const cairn::v1::BackupManifest& m) {
  cairn::v1::BackupSummary s;
  s.set_backup_id(m.backup_id());
  s.set_volume(m.volume());
  s.set_snapshot(m.snapshot());
  s.set_created_unix_s(m.created_unix_s());
  s.set_volume_size(m.volume_size());
  s.set_parent_id(m.parent_id());
  *s.mutable_stats() = m.stats();
  return s;
}

}  // namespace

struct BackupService::Job {
  mutable std::mutex mu;  // guards proto's state, error and results
  cairn::v1::BackupJob proto;
  std::shared_ptr<backup::JobProgress> progress_ptr = std::make_shared<backup::JobProgress>();
  backup::JobProgress& progress = *progress_ptr;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::atomic<bool> finished{false};
  std::thread thread;
};

BackupService::BackupService(VolumeStore& store, Options options) : store_(store), options_(options) {
  if (options_.state_dir.empty()) return;
  std::error_code ec;
  std::filesystem::create_directories(options_.state_dir, ec);
  for (const auto& entry : std::filesystem::directory_iterator(options_.state_dir, ec)) {
    const std::string path = entry.path().string();
    if (entry.path().extension() == ".restoring") {
      // A restore interrupted by a crash or restart: its volume is partial; it goes.
      const std::string name = entry.path().stem().string();
      Status deleted = store_.delete_volume(name, true);
      if (deleted || deleted.error() == Errc::not_found) {
        CAIRN_LOG_WARN(kLog, "deleted volume %s: its restore was interrupted (run it again)", name.c_str());
        ::unlink(path.c_str());
      } else {
        CAIRN_LOG_ERROR(kLog, "cannot delete the partial volume %s of an interrupted restore: %s", name.c_str(),
                        deleted.error().message().c_str());
      }
      continue;
    }
    if (entry.path().extension() != ".state") continue;
    cairn::v1::HydrationState state;
    auto text = read_file(path);
    if (!text || !state.ParseFromString(text.value()) || state.chunk_size() == 0) {
      CAIRN_LOG_ERROR(kLog, "unreadable instant-restore state %s: left alone", path.c_str());
      continue;
    }
    const std::string name = state.request().volume();
    auto volume = store_.open_volume(name);
    if (!volume) {
      CAIRN_LOG_WARN(kLog, "instant restore of %s: the volume is gone; dropping its state", name.c_str());
      ::unlink(path.c_str());
      continue;
    }
    std::string message;
    auto job = start_hydration(std::move(state), std::move(volume.value()), &message);
    if (!job) {
      CAIRN_LOG_ERROR(kLog, "cannot resume instant restore of %s: %s", name.c_str(), message.c_str());
    } else {
      CAIRN_LOG_INFO(kLog, "resumed instant restore of %s as %s", name.c_str(), job.value().id().c_str());
    }
  }
}

BackupService::~BackupService() {
  std::map<std::string, std::shared_ptr<Job>> jobs;
  std::map<std::string, std::shared_ptr<Hydrator>> hydrators;
  {
    std::lock_guard lock(mu_);
    jobs = jobs_;
    hydrators = hydrators_;
  }
  for (auto& [id, job] : jobs) job->progress.cancel = true;
  for (auto& [name, h] : hydrators) h->stop();  // state files stay: resumed at next start
  for (auto& [id, job] : jobs) {
    if (job->thread.joinable()) job->thread.join();
  }
}

cairn::v1::BackupJob BackupService::snapshot_of(const Job& job) {
  cairn::v1::BackupJob out;
  {
    std::lock_guard lock(job.mu);
    out = job.proto;
  }
  uint64_t total = job.progress.total_bytes, done = job.progress.done_bytes;
  out.set_total_bytes(total);
  out.set_done_bytes(done);
  out.set_uploaded_bytes(job.progress.transferred_bytes);
  if (out.state() == "running") {
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - job.started).count();
    out.set_elapsed_s(elapsed);
    double rate = elapsed > 0 ? done / elapsed : 0;
    out.set_rate_bytes_per_s(rate);
    out.set_eta_s(rate > 0 && total > done ? (total - done) / rate : 0);
  }
  return out;
}

Result<cairn::v1::BackupJob> BackupService::launch(cairn::v1::BackupJob proto, JobBody body,
                                                   std::string* message,
                                                   std::shared_ptr<backup::JobProgress> progress) {
  std::lock_guard lock(mu_);
  int running = 0;
  for (const auto& [id, job] : jobs_) running += !job->finished;
  if (running >= options_.max_running_jobs) {
    *message = "too many backup jobs running (" + std::to_string(running) + "); retry when one finishes";
    return Errc::busy;
  }
  // Forget the oldest finished jobs beyond the bound.
  size_t finished = 0;
  for (const auto& [id, job] : jobs_) finished += job->finished.load();
  for (auto it = jobs_.begin(); it != jobs_.end() && finished > options_.finished_kept;) {
    if (it->second->finished) {
      it->second->thread.join();
      it = jobs_.erase(it);
      finished--;
    } else {
      ++it;
    }
  }
  char id[32];
  std::snprintf(id, sizeof id, "job-%06llu", static_cast<unsigned long long>(next_job_++));
  auto job = std::make_shared<Job>();
  if (progress) job->progress_ptr = std::move(progress);
  proto.set_id(id);
  proto.set_state("running");
  job->proto = proto;
  jobs_[id] = job;
  job->thread = std::thread([job, body = std::move(body)] {
    std::string msg;
    Status s = body(*job, &msg);
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - job->started).count();
    {
      std::lock_guard lock(job->mu);
      job->proto.set_state(s ? "done" : "failed");
      job->proto.set_elapsed_s(elapsed);
      job->proto.set_rate_bytes_per_s(elapsed > 0 ? job->progress.done_bytes / elapsed : 0);
      job->proto.set_eta_s(0);
      if (!s) job->proto.set_error(msg.empty() ? s.error().message() : msg);
    }
    CAIRN_LOG_INFO(kLog, "%s (%s) %s%s%s", job->proto.id().c_str(), job->proto.kind().c_str(),
                   s ? "done" : "failed", s ? "" : ": ", s ? "" : job->proto.error().c_str());
    job->finished = true;
  });
  return snapshot_of(*job);
}

Result<cairn::v1::RepoConfig> BackupService::init_repo(const cairn::v1::InitRepoRequest& req,
                                                       std::string* message) {
  CAIRN_TRY(store, open_store(req.target(), message));
  CAIRN_TRY(key, parse_key(req.target(), message));
  if (req.encrypt() && !key) {
    *message = "an encrypted repository needs a key (--key-file)";
    return Errc::invalid_argument;
  }
  Repository::InitOptions opts;
  if (req.chunk_size() != 0) opts.chunk_size = req.chunk_size();
  if (req.encrypt()) opts.key = key;
  auto repo = Repository::init(*store, opts);
  if (!repo) {
    if (repo.error() == Errc::already_exists) {
      *message = "a backup repository exists already at " + req.target().repo();
    } else if (repo.error() == Errc::invalid_argument) {
      *message = "chunk size must be a power of two between 64 KiB and 64 MiB";
    } else {
      *message = describe_error(repo.error(), req.target().repo());
    }
    return repo.error();
  }
  cairn::v1::RepoConfig config = repo.value()->config();
  config.clear_key_check();
  CAIRN_LOG_INFO(kLog, "initialized repository %s", req.target().repo().c_str());
  return config;
}

Result<cairn::v1::ListBackupsResponse> BackupService::list(const cairn::v1::ListBackupsRequest& req,
                                                           std::string* message) {
  CAIRN_TRY(open, open_repo(req.target(), message));
  auto manifests = open.repo->list_manifests(req.volume());
  if (!manifests) {
    *message = describe_error(manifests.error(), req.target().repo());
    return manifests.error();
  }
  cairn::v1::ListBackupsResponse out;
  for (const auto& m : manifests.value()) *out.add_backups() = summary_of(m);
  auto usage = backup::repository_usage(*open.repo);
  if (!usage) {
    *message = describe_error(usage.error(), req.target().repo());
    return usage.error();
  }
  out.set_repo_unique_bytes(usage.value().bytes);
  out.set_repo_chunks(usage.value().chunks);
  return out;
}

Result<cairn::v1::PruneResponse> BackupService::prune(const cairn::v1::PruneRequest& req, std::string* message) {
  CAIRN_TRY(open, open_repo(req.target(), message));
  auto out = backup::run_prune(*open.repo, req, {});
  if (!out) {
    if (out.error() == Errc::invalid_argument) {
      *message = "give retention rules (--keep-last/--keep-daily/--keep-weekly/--keep-monthly) or backups to delete";
    } else if (out.error() == Errc::not_found) {
      *message = "no such backup in " + req.target().repo();
    } else {
      *message = describe_error(out.error(), req.target().repo());
    }
  }
  return out;
}

Result<cairn::v1::BackupJob> BackupService::start_backup(const cairn::v1::CreateBackupRequest& req,
                                                         std::string* message) {
  const std::string ref = req.volume() + "@" + req.snapshot();
  if (!valid_volume_name(req.volume()) || !valid_volume_name(req.snapshot())) {
    *message = "give the backup source as VOLUME@SNAPSHOT";
    return Errc::invalid_argument;
  }
  auto handle = store_.open_volume(ref);
  if (!handle) {
    *message = "snapshot '" + ref + "': " + (handle.error() == Errc::not_found ? "not found" : handle.error().message());
    return handle.error();
  }
  CAIRN_TRY(open, open_repo(req.target(), message));  // fail fast: no repository, wrong key
  cairn::v1::BackupJob proto;
  proto.set_kind("backup");
  proto.set_volume(req.volume());
  proto.set_snapshot(req.snapshot());
  proto.set_repo(req.target().repo());
  auto shared = std::make_shared<OpenRepo>(std::move(open));
  auto source = std::make_shared<SnapshotSource>(store_, std::move(handle.value()), req.volume(), req.snapshot());
  int threads = options_.threads_per_job;
  return launch(proto, [shared, source, req, threads](Job& job, std::string* msg) -> Status {
    backup::BackupOptions opts;
    opts.volume = req.volume();
    opts.snapshot = req.snapshot();
    opts.threads = threads;
    opts.progress = &job.progress;
    opts.on_started = [&job](const std::string& id) {
      std::lock_guard lock(job.mu);
      job.proto.set_backup_id(id);
    };
    auto m = backup::run_backup(*shared->repo, *source, opts);
    if (!m) {
      *msg = describe_error(m.error(), req.target().repo());
      return m.error();
    }
    cairn::v1::BackupManifest result = m.value();
    result.clear_chunks();
    std::lock_guard lock(job.mu);
    *job.proto.mutable_result() = std::move(result);
    return ok();
  }, message);
}

Result<cairn::v1::BackupJob> BackupService::start_restore(const cairn::v1::RestoreBackupRequest& req,
                                                          std::string* message) {
  if (req.instant() && options_.state_dir.empty()) {
    *message = "instant restore is not enabled on this node";
    return Errc::unsupported;
  }
  if (!valid_volume_name(req.volume())) {
    *message = "invalid volume name '" + req.volume() + "'";
    return Errc::invalid_argument;
  }
  CAIRN_TRY(open, open_repo(req.target(), message));
  auto manifest = open.repo->get_manifest(req.backup_id());
  if (!manifest) {
    *message = manifest.error() == Errc::not_found
                   ? "no backup '" + req.backup_id() + "' in " + req.target().repo()
                   : manifest.error() == Errc::invalid_argument
                         ? "invalid backup id '" + req.backup_id() + "' (VOLUME/YYYYMMDDTHHMMSSZ-xxxxxxxx)"
                         : describe_error(manifest.error(), req.target().repo());
    return manifest.error();
  }
  auto created = store_.create_volume(req.volume(), manifest.value().volume_size());
  if (!created) {
    *message = "create volume '" + req.volume() + "': " +
               (created.error() == Errc::already_exists ? "exists already" : created.error().message());
    return created.error();
  }
  auto volume = store_.open_volume(req.volume());
  if (!volume) {
    (void)store_.delete_volume(req.volume(), true);
    *message = "open volume '" + req.volume() + "': " + volume.error().message();
    return volume.error();
  }
  if (req.instant()) {
    const auto& m = manifest.value();
    cairn::v1::HydrationState state;
    *state.mutable_request() = req;
    state.mutable_request()->set_backup_id(m.volume() + "/" + m.backup_id());
    state.set_chunk_size(m.chunk_size());
    uint64_t nchunks = (m.volume_size() + m.chunk_size() - 1) / m.chunk_size();
    state.set_chunks(nchunks);
    // Holes of the backup are hydrated from the start: the new volume reads zeros there.
    std::string bits((nchunks + 7) / 8, static_cast<char>(0xff));
    for (const auto& c : m.chunks()) bits[c.index() / 8] &= static_cast<char>(~(1u << (c.index() % 8)));
    if (nchunks % 8) bits.back() &= static_cast<char>((1u << (nchunks % 8)) - 1);
    state.set_hydrated(bits);
    auto job = start_hydration(std::move(state), std::move(volume.value()), message);
    if (!job) (void)store_.delete_volume(req.volume(), true);
    return job;
  }
  cairn::v1::BackupJob proto;
  proto.set_kind("restore");
  proto.set_volume(req.volume());
  proto.set_snapshot(manifest.value().snapshot());
  proto.set_backup_id(manifest.value().volume() + "/" + manifest.value().backup_id());
  proto.set_repo(req.target().repo());
  // Until the restore is complete, a marker says the volume is partial: after a crash the
  // next start deletes it, so nothing half-restored stays behind under the new name.
  std::string marker;
  if (!options_.state_dir.empty()) {
    marker = options_.state_dir + "/" + req.volume() + ".restoring";
    Status written = write_file_atomic(marker, proto.backup_id(), 0600);
    if (!written) {
      (void)store_.delete_volume(req.volume(), true);
      *message = "cannot write " + marker + ": " + written.error().message();
      return written.error();
    }
  }
  auto shared = std::make_shared<OpenRepo>(std::move(open));
  auto m = std::make_shared<cairn::v1::BackupManifest>(std::move(manifest.value()));
  auto sink = std::make_shared<VolumeSink>(std::move(volume.value()));
  int threads = options_.threads_per_job;
  VolumeStore* store = &store_;
  return launch(proto, [shared, m, sink, threads, store, req, marker](Job& job, std::string* msg) -> Status {
    Status s = backup::run_restore(*shared->repo, *m, *sink, threads, &job.progress);
    if (s) s = sink->flush();
    if (!s) {
      // Nothing half-restored stays behind under the new name.
      *msg = "restore of " + m->volume() + "/" + m->backup_id() + " failed: " +
             (s.error() == Errc::corrupt     ? "a chunk is corrupt (run `cairn backup verify`)"
              : s.error() == Errc::not_found ? "a chunk is missing (run `cairn backup verify`)"
                                             : describe_error(s.error(), req.target().repo()));
      (void)store->delete_volume(req.volume(), true);
    }
    if (!marker.empty()) ::unlink(marker.c_str());  // complete, or deleted
    return s;
  }, message);
}

Result<cairn::v1::BackupJob> BackupService::start_verify(const cairn::v1::VerifyRequest& req,
                                                         std::string* message) {
  CAIRN_TRY(open, open_repo(req.target(), message));
  cairn::v1::BackupJob proto;
  proto.set_kind("verify");
  proto.set_backup_id(req.backup_id());
  proto.set_repo(req.target().repo());
  auto shared = std::make_shared<OpenRepo>(std::move(open));
  int threads = options_.threads_per_job;
  return launch(proto, [shared, req, threads](Job& job, std::string* msg) -> Status {
    auto v = backup::run_verify(*shared->repo, req.backup_id(), threads, &job.progress);
    if (!v) {
      *msg = v.error() == Errc::not_found ? "no backup '" + req.backup_id() + "' in " + req.target().repo()
                                          : describe_error(v.error(), req.target().repo());
      return v.error();
    }
    std::lock_guard lock(job.mu);
    *job.proto.mutable_verify() = v.value();
    if (v.value().damaged_size() > 0) {
      job.proto.set_error(std::to_string(v.value().damaged_size()) + " damaged backup(s)");
      *msg = job.proto.error();
      return Errc::corrupt;
    }
    return ok();
  }, message);
}

Result<cairn::v1::BackupJob> BackupService::start_hydration(cairn::v1::HydrationState state,
                                                            std::shared_ptr<Volume> volume, std::string* message) {
  const std::string name = state.request().volume();
  const std::string path = options_.state_dir + "/" + name + ".state";
  Status written = write_file_atomic(path, state.SerializeAsString(), 0600);
  if (!written) {
    *message = "cannot write " + path + ": " + written.error().message();
    return written.error();
  }
  cairn::v1::BackupJob proto;
  proto.set_kind("hydrate");
  proto.set_volume(name);
  proto.set_backup_id(state.request().backup_id());
  proto.set_repo(state.request().target().repo());
  auto progress = std::make_shared<backup::JobProgress>();
  auto hydrator = std::make_shared<Hydrator>(path, std::move(state), std::move(volume), options_.threads_per_job,
                                             progress.get());
  {
    std::lock_guard lock(mu_);
    hydrators_[name] = hydrator;
  }
  auto job = launch(proto, [this, hydrator, progress, name, path](Job&, std::string* msg) -> Status {
    hydrator->start();
    bool finished = hydrator->wait_done();
    hydrator->stop();
    {
      std::lock_guard lock(mu_);
      hydrators_.erase(name);
    }
    if (finished) {
      ::unlink(path.c_str());
      return ok();
    }
    *msg = "hydration of " + name + " stopped: " + hydrator->last_error();
    if (!store_.get_volume(name)) ::unlink(path.c_str());  // volume gone: nothing to resume
    return Errc::unavailable;
  }, message, progress);
  if (!job) {
    std::lock_guard lock(mu_);
    hydrators_.erase(name);
    ::unlink(path.c_str());
  }
  return job;
}

Result<std::shared_ptr<Volume>> BackupService::open_volume(const std::string& name) {
  std::shared_ptr<Hydrator> hydrator;
  {
    std::lock_guard lock(mu_);
    auto it = hydrators_.find(name);
    if (it != hydrators_.end() && !it->second->done()) hydrator = it->second;
  }
  CAIRN_TRY(volume, store_.open_volume(name));
  if (!hydrator) return std::move(volume);
  return std::shared_ptr<Volume>(std::make_shared<HydratingVolume>(std::move(volume), std::move(hydrator)));
}

bool BackupService::hydrating(const std::string& volume) {
  std::lock_guard lock(mu_);
  return hydrators_.count(volume) > 0;
}

cairn::v1::ListBackupJobsResponse BackupService::jobs() {
  cairn::v1::ListBackupJobsResponse out;
  std::lock_guard lock(mu_);
  for (const auto& [id, job] : jobs_) *out.add_jobs() = snapshot_of(*job);
  return out;
}

Result<cairn::v1::BackupJob> BackupService::job(const std::string& id) {
  std::lock_guard lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return Errc::not_found;
  return snapshot_of(*it->second);
}

}  // namespace cairn::blockd
