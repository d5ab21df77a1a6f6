// BlobStore: what a backup repository needs of an S3 bucket (and optional key prefix):
// put, get, head, list, remove of whole objects by key.
//
// Keys are relative to the store's bucket/prefix ("chunks/ab/abcd..."). Implementations
// are thread-safe: a backup uploads and a restore fetches chunks from several threads at
// once. Errors: Errc::not_found (absent object or bucket), Errc::permission_denied (bad
// credentials, AccessDenied), Errc::unavailable (endpoint unreachable after retries),
// Errc::io_error (any other failed request), Errc::corrupt (a body that fails its check).
//
// S3BlobStore (s3_blob_store.h) speaks S3 over HTTP; MemBlobStore is the in-memory store the
// unit tests drive, with failure injection.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace cairn::backup {

struct BlobInfo {
  std::string key;  // relative to the store's prefix
  uint64_t size = 0;
  int64_t last_modified_unix_s = 0;
};

class BlobStore {
 public:
  virtual ~BlobStore() = default;

  // Creates the bucket if it does not exist (ok when it exists and is ours).
  virtual Status create_bucket() = 0;
  virtual Status put(const std::string& key, std::string_view data) = 0;
  virtual Result<std::string> get(const std::string& key) = 0;
  // nullopt when absent.
  virtual Result<std::optional<BlobInfo>> head(const std::string& key) = 0;
  // Every object whose key starts with `prefix`, in key order, across all pages; `fn`
  // returns false to stop early.
  virtual Status list(const std::string& prefix,
                      const std::function<bool(const BlobInfo&)>& fn) = 0;
  // Absent objects are not an error.
  virtual Status remove(const std::string& key) = 0;

  // Human name for messages: "s3://bucket/prefix" or "mem://".
  virtual std::string describe() const = 0;
};

// In-memory BlobStore for tests. `fail_next` makes the next N calls of any kind fail with
// io_error; `on_op` (if set) is called first in every operation with its name and key, so a
// test can interleave other work at exact points.
class MemBlobStore final : public BlobStore {
 public:
  Status create_bucket() override;
  Status put(const std::string& key, std::string_view data) override;
  Result<std::string> get(const std::string& key) override;
  Result<std::optional<BlobInfo>> head(const std::string& key) override;
  Status list(const std::string& prefix, const std::function<bool(const BlobInfo&)>& fn) override;
  Status remove(const std::string& key) override;
  std::string describe() const override { return "mem://"; }

  // Test hooks.
  std::atomic<int> fail_next{0};
  std::function<void(std::string_view op, const std::string& key)> on_op;
  // The store's clock (seconds): stamps last_modified; tests advance it.
  std::atomic<int64_t> now_s{1'700'000'000};
  // Direct access, bypassing hooks.
  void set_raw(const std::string& key, std::string data);
  std::optional<std::string> raw(const std::string& key) const;
  size_t count(const std::string& prefix) const;
  uint64_t puts() const { return puts_.load(); }
  uint64_t put_bytes() const { return put_bytes_.load(); }

 private:
  Status enter(std::string_view op, const std::string& key);

  struct Obj {
    std::string data;
    int64_t mtime = 0;
  };
  mutable std::mutex mu_;
  std::map<std::string, Obj> objects_;
  std::atomic<uint64_t> puts_{0}, put_bytes_{0};
};

}  // namespace cairn::backup
