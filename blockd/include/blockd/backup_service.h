// BackupService: blockd's side of backups (issue: backups of volumes into the object
// store). It runs backup, restore and verify jobs next to the data, over the snapshot
// library's repository code (snapshot/), and answers the quick repository calls (init,
// list, prune) directly.
//
// Jobs run on threads of their own (one per job plus its workers and one Reactor for its
// volume I/O); at most `max_running_jobs` run at once (busy beyond). Finished jobs are
// kept for `finished_kept` entries so that a client can read their outcome. The
// destructor cancels running jobs and joins them. Thread-safe.
//
// Every call takes the repository's S3 target (endpoint, keys, s3://bucket/prefix, and the
// key of an encrypted repository) in the request: blockd stores no credentials. Errors are
// a code and one human line in *message.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "blockd/volume_store.h"
#include "cairn/v1/backup.pb.h"
#include "common/result.h"

namespace cairn::backup {
struct JobProgress;
}

namespace cairn::blockd {

class Hydrator;

class BackupService {
 public:
  struct Options {
    int max_running_jobs = 4;
    int threads_per_job = 4;
    size_t finished_kept = 64;
    // Where instant restores keep their state (DATA_DIR/hydrate); empty disables them.
    std::string state_dir;
  };

  // Resumes the instant restores found in options.state_dir.
  BackupService(VolumeStore& store, Options options);
  ~BackupService();
  BackupService(const BackupService&) = delete;
  BackupService& operator=(const BackupService&) = delete;

  Result<cairn::v1::RepoConfig> init_repo(const cairn::v1::InitRepoRequest& req, std::string* message);
  Result<cairn::v1::ListBackupsResponse> list(const cairn::v1::ListBackupsRequest& req,
                                              std::string* message);
  Result<cairn::v1::PruneResponse> prune(const cairn::v1::PruneRequest& req, std::string* message);

  Result<cairn::v1::BackupJob> start_backup(const cairn::v1::CreateBackupRequest& req,
                                            std::string* message);
  Result<cairn::v1::BackupJob> start_restore(const cairn::v1::RestoreBackupRequest& req,
                                             std::string* message);
  Result<cairn::v1::BackupJob> start_verify(const cairn::v1::VerifyRequest& req, std::string* message);

  cairn::v1::ListBackupJobsResponse jobs();
  Result<cairn::v1::BackupJob> job(const std::string& id);

  // For the NBD server: a volume under instant restore comes wrapped so that every request
  // first pulls the chunks it touches; any other name goes to VolumeStore::open_volume.
  Result<std::shared_ptr<Volume>> open_volume(const std::string& name);
  // True while `volume` is being hydrated (snapshots and clones of it wait until then).
  bool hydrating(const std::string& volume);

 private:
  struct Job;
  using JobBody = std::function<Status(Job&, std::string* message)>;
  Result<cairn::v1::BackupJob> launch(cairn::v1::BackupJob proto, JobBody body, std::string* message,
                                      std::shared_ptr<backup::JobProgress> progress = nullptr);
  static cairn::v1::BackupJob snapshot_of(const Job& job);
  // Registers a hydrator for `state` and starts its job.
  Result<cairn::v1::BackupJob> start_hydration(cairn::v1::HydrationState state, std::shared_ptr<Volume> volume,
                                               std::string* message);

  VolumeStore& store_;
  Options options_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Job>> jobs_;  // by id; ids sort by start
  std::map<std::string, std::shared_ptr<Hydrator>> hydrators_;  // by volume, while hydrating
  uint64_t next_job_ = 1;
};

}  // namespace cairn::blockd
