// Authenticator: the S3 layer's seam to request authentication (AWS Signature V4 over
// headers or presigned query strings) and to aws-chunked body decoding.
//
// The production implementation (make_sigv4_authenticator, auth.cc) delegates to
// common/sigv4.h and common/aws_chunked.h and looks secrets up with
// ObjectStore::lookup_access_key; tests may substitute a fake. Implementations are called
// concurrently from the S3 server's store threads (lookups block): they must be
// thread-safe. A ChunkedDecoder belongs to one request.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/asio.h"
#include "common/result.h"
#include "objectd/object_store.h"

namespace cairn::objectd {

// How the request body is protected, from x-amz-content-sha256.
enum class PayloadMode {
  unsigned_payload,            // UNSIGNED-PAYLOAD, presigned URLs, anonymous requests
  sha256,                      // hex SHA-256 given in the header: the body must hash to it
  streaming_signed,            // STREAMING-AWS4-HMAC-SHA256-PAYLOAD (aws-chunked)
  streaming_signed_trailer,    // STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER
  streaming_unsigned_trailer,  // STREAMING-UNSIGNED-PAYLOAD-TRAILER
};

inline bool is_streaming(PayloadMode m) {
  return m == PayloadMode::streaming_signed || m == PayloadMode::streaming_signed_trailer ||
         m == PayloadMode::streaming_unsigned_trailer;
}

struct AuthResult {
  bool anonymous = true;        // no Authorization header and no X-Amz-Signature query
  bool presigned = false;
  AccessKey key;                // when !anonymous
  PayloadMode payload = PayloadMode::unsigned_payload;
  std::string payload_sha256;   // lowercase hex, for PayloadMode::sha256
  // Implementation state the chunk decoder needs (signing key, seed signature, scope).
  std::shared_ptr<const void> state;
};

// Raw HTTP body bytes in (after Transfer-Encoding), payload bytes out; chunk signatures
// and the trailer are verified. Bounded: buffers at most one chunk header/trailer line.
class ChunkedDecoder {
 public:
  virtual ~ChunkedDecoder() = default;
  // Appends the payload bytes decoded from `raw` to `out`. Errors: incomplete_body or
  // invalid_argument (bad framing), signature_does_not_match (a chunk or trailer).
  virtual Status feed(std::string_view raw, std::string& out) = 0;
  // The raw body ended: fails with incomplete_body unless the final chunk (and the
  // trailer, if announced) was complete.
  virtual Status finish() = 0;
  // Trailing headers after finish(), names lower-case (e.g. x-amz-checksum-crc32).
  virtual std::vector<std::pair<std::string, std::string>> trailers() const = 0;
};

class Authenticator {
 public:
  virtual ~Authenticator() = default;
  // A request with neither an Authorization header nor X-Amz-Signature in its query is
  // anonymous (not an error). Errors: invalid_access_key_id, signature_does_not_match,
  // request_expired, access_denied / invalid_argument (malformed authorization),
  // not_implemented (e.g. Signature V2). `detail` gets a human reason for the log.
  virtual Result<AuthResult> authenticate(const http::request_header<>& req,
                                          std::string& detail) = 0;
  // For a streaming PayloadMode: the decoder of this request's aws-chunked body.
  virtual Result<std::unique_ptr<ChunkedDecoder>> chunked_decoder(
      const AuthResult& auth, const http::request_header<>& req) = 0;
};

// SigV4 against `store`'s access keys; `store` must outlive the result.
std::shared_ptr<Authenticator> make_sigv4_authenticator(ObjectStore& store);

}  // namespace cairn::objectd
