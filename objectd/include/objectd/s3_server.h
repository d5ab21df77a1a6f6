// S3Server: the S3-compatible HTTP/1.1 API (plus /healthz, /metrics and the /_cairn/admin/
// JSON API) over an ObjectStore. Protocol reference: docs/S3_API.md.
//
// Created and owned by objectd's main (or a test); the ObjectStore must outlive it.
// start()/stop()/port() are called from the owning thread.
//
// Threads: `threads` I/O threads run one io_context. Each connection is one coroutine on
// its own strand (so a connection's socket, timer and parser are touched by one thread at
// a time) and serves its requests in order (keep-alive, no pipelining overlap). Every
// ObjectStore call blocks (file I/O, fsync), so it never runs on an I/O thread: it is
// posted to a separate pool of `store_threads` threads and the connection coroutine
// resumes on its strand when the call returns. A slow disk therefore delays only the
// requests waiting for it; /healthz, /metrics and other connections keep being served.
//
// Bounds: `connections_max` open connections (more are accepted and closed at once);
// request header `header_max_bytes` (431 RequestHeaderSectionTooLarge); bodies are
// streamed in chunks of `io_chunk_bytes` into ObjectWriter and out of ObjectReader, so a
// connection holds O(io_chunk_bytes + one aws-chunked chunk) of memory whatever the object
// size; XML/JSON request bodies are read whole only up to `xml_body_max_bytes`. A
// connection that makes no progress for `idle_timeout` (reading a header, a body chunk,
// writing a response chunk, or idle between keep-alive requests) is closed.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"
#include "objectd/object_store.h"

namespace cairn {
class MetricsRegistry;
}

namespace cairn::objectd {

class Authenticator;  // objectd/src/auth.h: SigV4 verification seam

class S3Server {
 public:
  struct Options {
    unsigned threads = 4;                 // I/O threads (Asio io_context runners)
    unsigned store_threads = 16;          // threads for blocking ObjectStore calls
    size_t connections_max = 1024;
    size_t header_max_bytes = 16 * 1024;
    size_t xml_body_max_bytes = 1 << 20;  // CompleteMultipartUpload, DeleteObjects, admin
    size_t io_chunk_bytes = 1 << 20;      // body read/write granularity (one stripe of 4x256K)
    std::chrono::milliseconds idle_timeout{60'000};
    // Virtual-host-style addressing: Host `bucket.D` for each D here and `bucket.s3.D`;
    // a Host equal to D or s3.D (or an IP, or anything else) is path-style.
    std::vector<std::string> domains = {"localhost"};
    std::string region = "us-east-1";     // GetBucketLocation, x-amz-bucket-region
    // Null: SigV4 (header, presigned query, aws-chunked) against the store's access keys.
    std::shared_ptr<Authenticator> authenticator;
    MetricsRegistry* metrics = nullptr;   // null: MetricsRegistry::global()
  };

  S3Server(ObjectStore& store, Options options);
  ~S3Server();  // stops
  S3Server(const S3Server&) = delete;
  S3Server& operator=(const S3Server&) = delete;

  // Binds HOST:PORT (port 0: an ephemeral port, see port()) and starts serving.
  Status start(const std::string& host, uint16_t port);
  // Stops accepting, closes every connection, waits for in-flight store calls. Idempotent.
  void stop();
  uint16_t port() const;
  size_t connections() const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace cairn::objectd
