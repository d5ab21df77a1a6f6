// StoreImpl: the concrete ObjectStore, plus the pieces its files share: ShardSet (the shard
// files of one version being written), VersionReader (reads and reconstructs stripes of one
// version), WriterImpl and ReaderImpl (the streaming object I/O). Format and protocols:
// docs/FORMAT-objectd.md.
//
// Threads: every public method runs on any caller thread; one heal thread (heal.cc) runs heal
// on read, heal/scrub passes, orphan sweeps and drive re-checks. Locks, in order:
// bucket_mu_ (shared by object commits, exclusive by bucket create/delete) -> key_mu_[hash] (one
// per bucket+key stripe: object, upload and part commits of that key) -> catalog_mu_ ->
// heal_mu_ / active_mu_ / coders_mu_ (leaves). File I/O happens outside every lock except the
// key lock, which covers only the index read-modify-write.
// The index entry is the commit point: shard files without one are orphans, removed at
// start-up (those of an earlier run) and by heal passes after Options::orphan_grace_seconds.
#pragma once

#include <openssl/evp.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "cairn/v1/object.pb.h"
#include "drive.h"
#include "index.h"
#include "objectd/erasure.h"
#include "objectd/object_store.h"
#include "shard_file.h"

namespace cairn::objectd::engine {

using cairn::v1::ObjectRecord;

constexpr size_t kKeyLockStripes = 64;
constexpr uint32_t kShardBlockBytesMax = 16u << 20;

ObjectMeta to_meta(const ObjectRecord& rec);
bool valid_bucket_name(std::string_view name);
bool valid_object_key(std::string_view key);

class StoreImpl;

// The shard files of one version under construction: temp files (<drive>/tmp/<id>.<shard>)
// until commit renames them into objects/. Destroying it removes every file not committed.
class ShardSet {
 public:
  // write_mask: the shards to write (all for a new version, the damaged ones for heal).
  ShardSet(StoreImpl& store, const StripeLayout& layout, std::string id,
           std::vector<bool> write_mask, bool heal);
  ~ShardSet();
  ShardSet(const ShardSet&) = delete;
  ShardSet& operator=(const ShardSet&) = delete;

  // Creates the temp files; quorum_lost when fewer than `quorum` could be created.
  Status open(int quorum);
  // Appends block i of one stripe to shard i's file (i in the write mask). A file that fails
  // is dropped; quorum_lost when fewer than `quorum` files remain.
  Status append_stripe(const std::vector<uint8_t*>& blocks, uint32_t len, int quorum);
  // Writes trailers (rec with each shard_index), fsyncs, renames into objects/ and fsyncs the
  // directories. Fewer than `quorum` committed: removes them all and returns quorum_lost.
  Result<int> commit(const ObjectRecord& rec, int quorum);
  // Undoes a commit (the index write failed).
  void remove_committed();
  int live() const;

 private:
  struct File {
    int shard = 0;
    int drive = 0;
    ShardFileWriter writer;
    std::string tmp;
    bool failed = false;
    bool committed = false;
  };
  void fail(File& f, const Status& why);

  StoreImpl& store_;
  StripeLayout layout_;
  std::string id_;
  bool heal_;
  std::vector<std::unique_ptr<File>> files_;
};

// Reads stripes of one data version (OBJECT or PART record) from its shard files, verifying
// CRCs and reconstructing through missing or damaged shards. One caller at a time.
class VersionReader {
 public:
  // exclude: shards not to read (heal: the ones being rewritten). report: queue damage for heal.
  VersionReader(StoreImpl& store, ObjectRecord rec, std::vector<bool> exclude, bool report);
  const StripeLayout& layout() const { return layout_; }
  const ObjectRecord& record() const { return rec_; }
  void open_data_shards();
  // Makes bufs[i] hold block i of `stripe` for every i in `want` (bufs: k+m buffers of
  // block_bytes; valid: which already hold this stripe's block, updated).
  Status load(uint64_t stripe, const std::vector<bool>& want, const std::vector<uint8_t*>& bufs,
              std::vector<bool>& valid);

 private:
  enum class State { untried, open, missing, offline };
  bool read_shard(int shard, uint64_t stripe, uint8_t* buf);
  void damaged();

  StoreImpl& store_;
  ObjectRecord rec_;
  StripeLayout layout_;
  std::vector<bool> exclude_;
  bool report_;
  bool reported_ = false;
  std::vector<ShardFileReader> files_;
  std::vector<State> state_;
  std::vector<bool> logged_;  // a damaged block of this shard was logged
};

class WriterImpl final : public ObjectWriter {
 public:
  // rec: bucket, key, kind (OBJECT or PART), upload/part fields; id and layout are set here.
  WriterImpl(StoreImpl& store, ObjectRecord rec);
  ~WriterImpl() override;
  Status start();
  Status write(const void* data, size_t len) override;
  Result<ObjectMeta> commit(ObjectMeta meta) override;

 private:
  Status flush_stripe();
  void reserve_data(size_t bytes);

  StoreImpl& store_;
  ObjectRecord rec_;
  StripeLayout layout_;
  std::unique_ptr<ShardSet> shards_;
  // The stripe being filled (up to k x B) and its parity (m x B). Allocated uninitialized
  // and grown as data arrives, so a small object costs small buffers.
  std::unique_ptr<uint8_t[]> data_, parity_;
  size_t data_cap_ = 0, parity_cap_ = 0;
  size_t fill_ = 0;               // data bytes in data_
  uint64_t written_ = 0;
  EVP_MD_CTX* md5_ = nullptr;
  Status failed_ = ok();
  bool done_ = false;
};

class ReaderImpl final : public ObjectReader {
 public:
  // rec: the object's index record; [offset, offset + length) within its size.
  ReaderImpl(StoreImpl& store, const ObjectRecord& rec, uint64_t offset, uint64_t length);
  const ObjectMeta& meta() const override { return meta_; }
  Result<size_t> read(void* buf, size_t len) override;

 private:
  Status enter_segment(size_t index);

  StoreImpl& store_;
  ObjectMeta meta_;
  std::vector<ObjectRecord> segments_;  // data versions in object order
  std::vector<uint64_t> segment_start_;
  uint64_t pos_, end_;
  size_t segment_ = SIZE_MAX;
  std::unique_ptr<VersionReader> version_;
  uint64_t stripe_ = UINT64_MAX;
  std::unique_ptr<uint8_t[]> buf_;      // k+m blocks of one stripe (uninitialized)
  size_t buf_cap_ = 0;
  std::vector<uint8_t*> blocks_;
  std::vector<bool> valid_;
};

class StoreImpl final : public ObjectStore {
 public:
  explicit StoreImpl(const Options& options);
  ~StoreImpl() override;
  Status init();

  Result<AccessKey> ensure_root_key(const std::string& access_key_id,
                                    const std::string& secret_key) override;
  Status create_tenant(const std::string& tenant) override;
  Result<AccessKey> create_access_key(const std::string& tenant) override;
  Result<AccessKey> lookup_access_key(const std::string& access_key_id) override;
  std::vector<std::string> list_tenants() override;

  Status create_bucket(const std::string& tenant, const std::string& bucket) override;
  Status delete_bucket(const std::string& bucket) override;
  Result<BucketInfo> get_bucket(const std::string& bucket) override;
  std::vector<BucketInfo> list_buckets(const std::string& tenant) override;
  Status set_bucket_public(const std::string& bucket, bool public_read) override;

  Result<std::unique_ptr<ObjectWriter>> put_object(const std::string& bucket,
                                                   const std::string& key) override;
  Result<std::unique_ptr<ObjectReader>> get_object(const std::string& bucket,
                                                   const std::string& key, uint64_t offset,
                                                   uint64_t length) override;
  Result<ObjectMeta> head_object(const std::string& bucket, const std::string& key) override;
  Status delete_object(const std::string& bucket, const std::string& key) override;
  Result<ListResult> list_objects(const std::string& bucket, const ListRequest& req) override;

  Result<std::string> create_multipart(const std::string& bucket, const std::string& key,
                                       const ObjectMeta& meta) override;
  Result<std::unique_ptr<ObjectWriter>> upload_part(const std::string& bucket,
                                                    const std::string& key,
                                                    const std::string& upload_id,
                                                    uint32_t part_number) override;
  Result<ObjectMeta> complete_multipart(const std::string& bucket, const std::string& key,
                                        const std::string& upload_id,
                                        const std::vector<PartInfo>& parts) override;
  Status abort_multipart(const std::string& bucket, const std::string& key,
                         const std::string& upload_id) override;
  Result<std::vector<PartInfo>> list_parts(const std::string& bucket, const std::string& key,
                                           const std::string& upload_id) override;
  Result<std::vector<UploadInfo>> list_uploads(const std::string& bucket,
                                               const std::string& prefix) override;

  Status start_heal() override;
  HealStatus heal_status() override;
  int drives_online() override;

  // ---- shared with ShardSet, VersionReader, WriterImpl, ReaderImpl and heal.cc
  const Options& options() const { return opt_; }
  int drive_count() const { return n_; }
  int write_quorum() const { return std::min(k_ + 1, n_); }
  Drive& drive(int i) { return *drives_[static_cast<size_t>(i)]; }
  const ErasureCoder& coder(uint32_t k, uint32_t m);
  // Fills id, layout fields and rotation of a new version from the options.
  void init_version(ObjectRecord& rec);
  // A read found a missing or damaged shard of version `id`: heal it soon (bounded queue).
  void queue_heal(const std::string& id);
  // An I/O error on drive `d` (other than a missing shard file): re-check the drive now.
  void drive_error(int d);
  void set_active(const std::string& id, bool active);
  // Index commit of a written OBJECT or PART version (its shard files are in objects/).
  Status commit_version(const ObjectRecord& rec);
  // Removes the shard files of a version (and of its parts) from every online drive.
  void remove_version_files(const ObjectRecord& rec);

  // ---- test hooks
  void check_drives_now() { check_drives(); }
  bool wait_heal_idle(int timeout_ms);
  std::vector<ObjectRecord> records_for_test();  // every o/, p/ and u/ record

 private:
  Status open_drives_and_index();
  Status rebuild_index(const std::string& path);
  void check_drives();
  Status save_catalog_locked();
  void write_catalog_to_drives(const std::string& bytes);
  Result<std::optional<ObjectRecord>> get_record(const std::string& index_key);
  Status bucket_exists(const std::string& bucket);
  Result<ObjectRecord> get_upload(const std::string& bucket, const std::string& key,
                                  const std::string& upload_id);
  Status write_manifest(const ObjectRecord& rec);
  Status abort_upload_locked(const ObjectRecord& upload);
  std::mutex& key_lock(const std::string& bucket, const std::string& key);

  // heal.cc
  void heal_main();
  void heal_begin_pass_locked();
  bool heal_pass_step();
  void heal_finish_pass();
  void heal_by_id(const std::string& id);
  enum class HealOutcome { healthy, healed, degraded, failed };
  HealOutcome heal_record(const ObjectRecord& rec, uint64_t* bytes_scanned,
                          uint64_t* bytes_rewritten);
  HealOutcome heal_version(const ObjectRecord& rec, uint64_t* bytes_scanned,
                           uint64_t* bytes_rewritten);
  // Unlinks unreferenced shard files and temp files (of no active write or heal) whose
  // mtime is <= mtime_max_unix_ms; returns how many.
  uint64_t sweep_orphans(int64_t mtime_max_unix_ms);
  bool still_referenced(const std::string& id);
  void account_locked(uint64_t objects, uint64_t data_bytes);
  void throttle(uint64_t bytes);
  void save_heal_state_locked();

  const Options opt_;
  const int k_, m_, n_;
  std::string store_id_;
  std::vector<std::unique_ptr<Drive>> drives_;
  std::unique_ptr<Index> index_;

  const ErasureCoder* default_coder_ = nullptr;  // k_+m_, set by init()
  std::mutex coders_mu_;
  std::map<std::pair<uint32_t, uint32_t>, std::unique_ptr<ErasureCoder>> coders_;

  std::shared_mutex bucket_mu_;
  std::array<std::mutex, kKeyLockStripes> key_mu_;
  std::mutex catalog_mu_;
  uint64_t catalog_gen_ = 0;  // guarded by catalog_mu_

  std::mutex active_mu_;
  std::multiset<std::string> active_ids_;  // versions being written or healed

  // Heal state, guarded by heal_mu_.
  std::mutex heal_mu_;
  std::condition_variable heal_cv_;
  std::atomic<bool> stop_{false};
  bool pass_requested_ = false;
  bool drive_check_requested_ = false;
  std::deque<std::string> heal_queue_;
  std::set<std::string> heal_queued_;
  cairn::v1::ObjectHealState hs_;
  bool heal_busy_ = false;          // the heal thread is working (drive check, queue, pass)
  bool count_pending_ = false;      // the running pass has not counted its objects yet
  bool damage_seen_ = false;        // damage reported since the last pass started
  double disk_rate_ = 0;            // recent verify+rewrite bytes per second
  double object_rate_ = 0;          // recent objects per second of the pass
  double data_rate_ = 0;            // recent object bytes per second of the pass
  int64_t window_ms_ = 0;           // start of the current rate window
  uint64_t window_disk_bytes_ = 0, window_objects_ = 0, window_data_bytes_ = 0;
  int64_t last_save_ms_ = 0;
  bool queue_full_logged_ = false;
  bool started_ = false;            // init() completed: the heal state is loaded
  int64_t opened_unix_ms_ = 0;      // when init() started: older leftovers are swept at once
  // Heal thread only: the rate limiter.
  double tokens_ = 0;
  int64_t tokens_ms_ = 0;
  std::thread heal_thread_;
};

}  // namespace cairn::objectd::engine
