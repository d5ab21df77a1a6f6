// ObjectStore: the erasure-coded object engine under the S3 API.
//
// Owns the node's drives (directories), the metadata index (RocksDB under
// <data_dir>/index), the tenants and access keys, and the heal/scrub machinery. Created once by
// objectd's main and shared by the HTTP worker threads: every method is thread-safe and
// synchronous (blocking file I/O on the calling thread; the S3 layer runs it on worker
// threads). Data is streamed: a writer buffers at most one stripe, a reader at most one
// stripe, so memory per request is bounded whatever the object size.
//
// Storage model (docs/FORMAT-objectd.md): an object version has a random 128-bit id; its data is
// cut into stripes of k x shard_block_bytes; each stripe is Reed-Solomon coded (ErasureCoder)
// into k+m shard blocks, block i of every stripe stored on drive (i + rotation) % (k+m) in one
// shard file per drive that also carries the object's metadata record (so the index can be
// rebuilt from the drives) and a CRC32C per shard block. A PUT is visible only after its shard
// files are durable (fsync'd and renamed) on at least k+1 drives and the index entry is
// written; otherwise it fails with quorum_lost and leaves nothing visible. Reads verify CRCs,
// reconstruct through missing or corrupt shards, and queue the object for healing.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "objectd/errors.h"

namespace cairn::objectd {

constexpr uint64_t kObjectSizeMaxBytes = 5ull << 40;   // 5 TiB, as S3
constexpr uint64_t kPartSizeMinBytes = 5ull << 20;     // all multipart parts but the last
constexpr uint32_t kPartNumberMax = 10000;
constexpr size_t kKeyBytesMax = 1024;
constexpr size_t kUserMetadataBytesMax = 2048;         // all x-amz-meta-* names + values

struct ObjectMeta {
  std::string bucket;
  std::string key;
  uint64_t size_bytes = 0;
  std::string etag;                                  // hex MD5, or "<hex>-N" for multipart; no quotes
  int64_t mtime_unix_ms = 0;
  std::string content_type;
  std::map<std::string, std::string> user_metadata;  // lower-case name without x-amz-meta-
  std::map<std::string, std::string> checksums;      // "crc32c" -> base64 value, as sent/computed
  std::map<std::string, std::string> headers;        // stored response headers: cache-control,
                                                     // content-disposition, content-encoding,
                                                     // content-language, expires
  uint32_t parts = 0;                                // multipart: number of parts, else 0
};

struct BucketInfo {
  std::string name;
  std::string owner;          // tenant id
  int64_t created_unix_s = 0;
  bool public_read = false;   // anonymous GET/HEAD/list allowed
};

struct ListRequest {
  std::string prefix;
  std::string delimiter;      // empty: no grouping
  std::string start_after;    // exclusive: list keys > start_after (v1 marker, v2 start-after
                              // or decoded continuation token)
  uint32_t max_keys = 1000;   // 0..1000; 0 returns nothing and is_truncated per S3
};

struct ListResult {
  std::vector<ObjectMeta> objects;
  std::vector<std::string> common_prefixes;
  bool is_truncated = false;
  std::string next_marker;    // the last key or common prefix returned, when truncated
};

struct PartInfo {
  uint32_t part_number = 0;
  std::string etag;           // hex MD5, no quotes
  uint64_t size_bytes = 0;
  int64_t mtime_unix_ms = 0;
  std::map<std::string, std::string> checksums;
};

struct UploadInfo {
  std::string upload_id;
  std::string bucket;
  std::string key;
  int64_t initiated_unix_ms = 0;
};

struct AccessKey {
  std::string access_key_id;
  std::string secret_key;
  std::string tenant;
  bool root = false;          // the root key may use the admin API (tenants, keys, heal)
};

struct HealStatus {
  bool running = false;
  uint64_t objects_total = 0;     // objects in the index when the round started
  uint64_t objects_scanned = 0;
  uint64_t objects_healed = 0;    // objects that had a missing/corrupt shard rewritten
  uint64_t objects_failed = 0;    // could not be healed (fewer than k good shards)
  uint64_t bytes_rewritten = 0;
  uint64_t queued = 0;            // objects queued by reads (heal on read)
  double bytes_per_second = 0;    // recent rewrite+verify throughput
  double eta_seconds = -1;        // -1 when unknown
  bool fully_redundant = false;   // last completed round found every shard healthy
};

// Streams one object's data in. Not thread-safe (one request); destroying an uncommitted
// writer aborts it (its shard files are removed). Writers and readers must be destroyed
// before the ObjectStore that made them.
class ObjectWriter {
 public:
  virtual ~ObjectWriter() = default;
  virtual Status write(const void* data, size_t len) = 0;
  // Makes the object durable and visible. `meta.size_bytes` must equal the bytes written;
  // `meta.etag`, when not empty, is the MD5 (hex) the data must have (Content-MD5), else
  // bad_digest; etag, bucket/key/mtime are filled by the store (the writer computes the MD5
  // of what it was given). Returns the stored metadata.
  virtual Result<ObjectMeta> commit(ObjectMeta meta) = 0;
};

// Streams one object's data (or a byte range of it) out. Not thread-safe (one request).
class ObjectReader {
 public:
  virtual ~ObjectReader() = default;
  virtual const ObjectMeta& meta() const = 0;
  // Fills up to len bytes of the selected range in order; 0 at its end.
  virtual Result<size_t> read(void* buf, size_t len) = 0;
};

class ObjectStore {
 public:
  struct Options {
    std::string data_dir;                 // index/ and, by default, drive0..driveN-1/
    std::vector<std::string> drives;      // empty: k+m directories under data_dir
    int data_shards = 4;                  // k
    int parity_shards = 2;                // m
    uint32_t shard_block_bytes = 256 * 1024;  // per shard per stripe (stripe = k x this)
    double scrub_period_hours = 24 * 7;   // a background pass verifies every shard this often;
                                          // 0 disables the scrubber
    uint64_t heal_bytes_per_second = 256ull << 20;  // rate limit of heal/scrub I/O; 0: none
    uint32_t drive_check_interval_ms = 5000;  // offline drives (and online ones) re-checked
    double orphan_grace_seconds = 3600;   // heal passes remove unreferenced shard/temp files
                                          // older than this (leftovers of deletes on offline
                                          // drives); those older than the open go at start-up
    size_t heal_queue_max = 10000;        // heal-on-read queue; overflow waits for a pass
  };

  // Opens (creating if empty) the store: formats empty drives, loads or rebuilds the index
  // (rebuilt from the shard files when index/ is missing), starts the heal/scrub thread,
  // whose first job removes what an earlier run's interrupted writes and heals left behind
  // (temp files and shard files no index entry references, older than the open).
  // A drive that is missing, unreadable or not a directory is reported and skipped (the
  // store serves what quorum allows); open fails only when fewer than k+1 drives work.
  static Result<std::unique_ptr<ObjectStore>> open(const Options& options);
  virtual ~ObjectStore() = default;

  // Tenants and keys. The root key (tenant "root") is created at first open from the
  // arguments, or randomly when they are empty, and returned by root_key().
  virtual Result<AccessKey> ensure_root_key(const std::string& access_key_id,
                                            const std::string& secret_key) = 0;
  virtual Status create_tenant(const std::string& tenant) = 0;
  virtual Result<AccessKey> create_access_key(const std::string& tenant) = 0;
  virtual Result<AccessKey> lookup_access_key(const std::string& access_key_id) = 0;
  virtual std::vector<std::string> list_tenants() = 0;

  // Buckets. Names follow S3's rules (3-63 chars of a-z 0-9 . -, ...): invalid_bucket_name.
  virtual Status create_bucket(const std::string& tenant, const std::string& bucket) = 0;
  virtual Status delete_bucket(const std::string& bucket) = 0;  // bucket_not_empty
  virtual Result<BucketInfo> get_bucket(const std::string& bucket) = 0;
  virtual std::vector<BucketInfo> list_buckets(const std::string& tenant) = 0;
  virtual Status set_bucket_public(const std::string& bucket, bool public_read) = 0;

  // Objects.
  virtual Result<std::unique_ptr<ObjectWriter>> put_object(const std::string& bucket,
                                                           const std::string& key) = 0;
  // length = UINT64_MAX means to the end. invalid_range when offset >= size (size > 0).
  virtual Result<std::unique_ptr<ObjectReader>> get_object(const std::string& bucket,
                                                           const std::string& key,
                                                           uint64_t offset = 0,
                                                           uint64_t length = UINT64_MAX) = 0;
  virtual Result<ObjectMeta> head_object(const std::string& bucket, const std::string& key) = 0;
  // Deleting a missing key succeeds (S3 semantics); a missing bucket is no_such_bucket.
  virtual Status delete_object(const std::string& bucket, const std::string& key) = 0;
  virtual Result<ListResult> list_objects(const std::string& bucket, const ListRequest& req) = 0;

  // Multipart uploads. Parts are stored as their own erasure-coded data; completing writes
  // the object's record referencing them (no data is copied).
  virtual Result<std::string> create_multipart(const std::string& bucket, const std::string& key,
                                               const ObjectMeta& meta) = 0;
  // The writer's commit() stores the part (meta.etag = part MD5 hex, meta.size_bytes) and
  // replaces an earlier part with the same number.
  virtual Result<std::unique_ptr<ObjectWriter>> upload_part(const std::string& bucket,
                                                            const std::string& key,
                                                            const std::string& upload_id,
                                                            uint32_t part_number) = 0;
  // `parts` in the order the client listed them (ascending part numbers, ETags to match).
  virtual Result<ObjectMeta> complete_multipart(const std::string& bucket, const std::string& key,
                                                const std::string& upload_id,
                                                const std::vector<PartInfo>& parts) = 0;
  virtual Status abort_multipart(const std::string& bucket, const std::string& key,
                                 const std::string& upload_id) = 0;
  virtual Result<std::vector<PartInfo>> list_parts(const std::string& bucket,
                                                   const std::string& key,
                                                   const std::string& upload_id) = 0;
  virtual Result<std::vector<UploadInfo>> list_uploads(const std::string& bucket,
                                                       const std::string& prefix) = 0;

  // Healing.
  virtual Status start_heal() = 0;          // a full pass now (no-op if one is running)
  virtual HealStatus heal_status() = 0;
  // Number of drives currently usable, of k+m.
  virtual int drives_online() = 0;
};

}  // namespace cairn::objectd
