// Hydrator: fills a volume restored with --instant from its backup, in the background and on
// demand, and HydratingVolume, the wrapper NBD clients use meanwhile.
//
// Unit of work: one backup chunk. Before any read, write, trim or zero touches a chunk that
// is not hydrated yet, the chunk is fetched, its non-zero blocks are written into the volume,
// the volume is flushed, and the chunk's bit is set in the state file
// (DATA_DIR/hydrate/<volume>.state, written atomically). Only then does the request go on.
// So a client never reads bytes that did not come from the backup or from its own writes,
// and no client write can be overwritten by hydration, even across a crash: a chunk whose
// bit was not durable when blockd died is hydrated again before anyone touches it.
//
// Threads: `workers` threads take on-demand chunks first, then the next chunk of the
// background pass; S3 fetches block these threads, never a Reactor. A request waiting for
// chunks suspends its coroutine and is resumed on its own Reactor. A failed fetch fails the
// waiting requests (EIO to the NBD client) and is retried by the background pass (every
// few seconds) until the job is stopped.
#pragma once

#include <atomic>
#include <condition_variable>
#include <coroutine>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "blockd/volume_store.h"
#include "cairn/v1/backup.pb.h"
#include "common/reactor.h"
#include "snapshot/backup.h"
#include "snapshot/s3_blob_store.h"
#include "volume_sink.h"

namespace cairn::blockd {

class Hydrator {
 public:
  // `state` names the volume, the backup and the target; `volume` is the open volume.
  Hydrator(std::string state_path, cairn::v1::HydrationState state, std::shared_ptr<Volume> volume,
           int workers, backup::JobProgress* progress);
  ~Hydrator();

  // Connects to the repository (retrying until stop) and starts the workers.
  void start();
  // Stops and joins the workers (idempotent, from any thread but a worker); waiting
  // requests fail with unavailable.
  void stop();
  // Blocks until every chunk is hydrated (true) or the hydrator stopped/failed (false).
  bool wait_done();
  bool done() const { return remaining_.load() == 0; }
  std::string last_error() const;

  const std::string& volume_name() const { return volume_->name(); }
  uint64_t chunk_size() const { return chunk_size_; }

  // Makes every chunk overlapping [offset, offset + length) hydrated, then resumes.
  struct Ensure {
    Hydrator* h;
    uint64_t offset, length;
    Status result = ok();
    bool await_ready() const noexcept { return h->all_hydrated(offset, length); }
    bool await_suspend(std::coroutine_handle<> handle) { return h->enqueue(offset, length, handle, &result); }
    Status await_resume() const { return result; }
  };
  Ensure ensure(uint64_t offset, uint64_t length) { return Ensure{this, offset, length}; }

  bool is_hydrated(uint64_t chunk) const;
  // Whether chunk `chunk` holds data in the backup (false: a hole).
  bool chunk_in_backup(uint64_t chunk) const;

 private:
  struct Waiter {
    Reactor* reactor;
    std::coroutine_handle<> handle;
    Status* result;
    size_t remaining;
  };

  bool all_hydrated(uint64_t offset, uint64_t length) const;
  bool enqueue(uint64_t offset, uint64_t length, std::coroutine_handle<> handle, Status* result);
  void worker();
  bool connect();  // under no lock; true once the manifest is loaded
  Status hydrate(uint64_t chunk);
  Status persist();
  void finish_chunk(uint64_t chunk, const Status& status);

  const std::string state_path_;
  cairn::v1::HydrationState state_;  // guarded by persist_mu_
  std::shared_ptr<Volume> volume_;
  const int workers_;
  backup::JobProgress* progress_;
  VolumeSink sink_;  // writes into volume_

  std::unique_ptr<backup::S3BlobStore> store_;
  std::unique_ptr<backup::Repository> repo_;
  cairn::v1::BackupManifest manifest_;
  std::vector<bool> in_backup_;
  uint64_t chunk_size_ = 0;
  uint64_t nchunks_ = 0;

  std::unique_ptr<std::atomic<uint64_t>[]> bits_;  // hydrated bitmap, readable without a lock
  std::atomic<uint64_t> remaining_{1};
  std::atomic<bool> connected_{false};

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::deque<uint64_t> wanted_;                    // on-demand chunks, oldest first
  std::map<uint64_t, std::vector<Waiter*>> waiting_;
  std::vector<bool> busy_;                         // chunk being hydrated by a worker
  uint64_t cursor_ = 0;                            // background pass position
  std::string last_error_;
  std::mutex persist_mu_;
  std::mutex connect_mu_;
  std::mutex threads_mu_;  // guards threads_ (start/stop)
  std::vector<std::thread> threads_;
  std::condition_variable done_cv_;
};

// The volume as NBD clients see it while it hydrates: every request first makes its chunks
// hydrated. Allocation reports chunks not yet hydrated as data where the backup holds data.
class HydratingVolume final : public Volume {
 public:
  HydratingVolume(std::shared_ptr<Volume> inner, std::shared_ptr<Hydrator> hydrator)
      : inner_(std::move(inner)), hydrator_(std::move(hydrator)) {}

  const std::string& name() const override { return inner_->name(); }
  uint64_t size_bytes() const override { return inner_->size_bytes(); }
  bool alive() const override { return inner_->alive(); }
  Task<Status> read(uint64_t offset, uint64_t length, void* buf) override;
  Task<Status> write(uint64_t offset, uint64_t length, const void* buf, bool fua) override;
  Task<Status> trim(uint64_t offset, uint64_t length, bool fua) override;
  Task<Status> write_zeroes(uint64_t offset, uint64_t length, bool may_release, bool fua) override;
  Task<Status> flush() override { return inner_->flush(); }
  Result<std::vector<AllocationRun>> allocation(uint64_t offset, uint64_t length, size_t max_runs) override;

 private:
  std::shared_ptr<Volume> inner_;
  std::shared_ptr<Hydrator> hydrator_;
};

}  // namespace cairn::blockd
