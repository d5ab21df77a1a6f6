// S3BlobStore: a BlobStore over one bucket (and optional key prefix) of any S3 service,
// objectd first. Path-style requests (http://host:port/bucket/key) over plain HTTP/1.1,
// signed with AWS SigV4 header auth (common/sigv4.h). A PUT carries the body's SHA-256 as
// x-amz-content-sha256, so the service refuses a body damaged in transit.
//
// Owned by its caller (the backup/restore code) for as long as it uses the repository.
// Thread-safe: any number of threads may call it; at most max_connections requests are on
// the wire at once, the others wait for a connection. Connections are kept alive and
// reused; one that fails is dropped.
//
// Limits and timeouts: every network step (resolve, connect, and each write or read of
// progress) must complete within `timeout`; a transport error or an answer 500/502/503/504
// is retried up to `retries` times with a short backoff, a 4xx never. Reply bodies are
// bounded (256 MiB for GET, 16 MiB for the others); a larger one fails with io_error.
// Listing pages hold at most list_max_keys keys (S3 caps them at 1000).
//
// Errors (see blob_store.h): 404 NoSuchKey/NoSuchBucket -> not_found; 403 ->
// permission_denied; transport failure or 503 after the retries -> unavailable; anything
// else -> io_error. The S3 error code and message are logged (component "s3"), once per
// failed call.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "common/result.h"
#include "snapshot/blob_store.h"

namespace cairn::backup {

struct S3Config {
  std::string endpoint;  // http://host:port, IPv6 as http://[::1]:9000; no path
  std::string access_key, secret_key, region = "us-east-1";
  std::string bucket;
  std::string prefix;  // without leading/trailing '/', may be empty
  int max_connections = 16;
  std::chrono::milliseconds timeout{30000};
  int retries = 3;
  int list_max_keys = 1000;  // page size of ListObjectsV2 (1..1000)
};

// Where a repository lives: "s3://BUCKET[/PREFIX]".
struct S3Location {
  std::string bucket;
  std::string prefix;  // without leading/trailing '/', may be empty
};

// Parses "s3://BUCKET[/PREFIX]". The bucket must follow S3's naming rules (3-63 characters
// of a-z 0-9 . -, starting and ending with a letter or digit, no "..", not an IPv4
// address, none of the reserved prefixes and suffixes); the prefix may not contain empty,
// "." or ".." segments, control characters, '?' or '#', and is at most 512 bytes. Trailing
// '/' are dropped. invalid_argument (with a logged reason) otherwise.
Result<S3Location> parse_repo_url(std::string_view url);

// True if `name` is a valid S3 bucket name (rules as above).
bool valid_bucket_name(std::string_view name);

class S3BlobStore final : public BlobStore {
 public:
  // Checks the configuration (endpoint, bucket, prefix, bounds); invalid_argument with a
  // logged reason if it is wrong. Opens no connection.
  static Result<std::unique_ptr<S3BlobStore>> open(S3Config config);
  ~S3BlobStore() override;
  S3BlobStore(const S3BlobStore&) = delete;
  S3BlobStore& operator=(const S3BlobStore&) = delete;

  // PUT /bucket (with a LocationConstraint outside us-east-1). BucketAlreadyOwnedByYou is
  // success; BucketAlreadyExists (someone else's) is already_exists.
  Status create_bucket() override;
  // Keys: non-empty, relative to the prefix; invalid_argument for an empty key.
  Status put(const std::string& key, std::string_view data) override;
  Result<std::string> get(const std::string& key) override;
  Result<std::optional<BlobInfo>> head(const std::string& key) override;
  Status list(const std::string& prefix, const std::function<bool(const BlobInfo&)>& fn) override;
  Status remove(const std::string& key) override;
  std::string describe() const override;  // "s3://bucket/prefix" ("s3://bucket" if none)

  const S3Config& config() const;

 private:
  struct Impl;
  explicit S3BlobStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cairn::backup
