// aws-chunked bodies (`Content-Encoding: aws-chunked`, x-amz-content-sha256 STREAMING-*):
// an incremental decoder for the server and an encoder for clients and tests.
//
// Wire format (AWS "sigv4-streaming" and "sigv4-streaming-trailers"):
//   hex-size[;chunk-signature=<64 hex>]\r\n <size bytes> \r\n      ... repeated
//   0[;chunk-signature=<64 hex>]\r\n                               final chunk
//   [x-amz-checksum-crc32c:<base64>\r\n [x-amz-trailer-signature:<64 hex>\r\n]]   trailer modes
//   \r\n
// Chunk n's signature is HMAC(signing key, "AWS4-HMAC-SHA256-PAYLOAD\n" date scope
// signature(n-1) hash("") hash(data n)), seeded by the request's signature; the trailer's
// is chained to the final chunk's ("AWS4-HMAC-SHA256-TRAILER\n" ... hash(trailers)).
//
// AwsChunkedDecoder: owned by the request handler for one body; single-threaded. It never
// buffers a chunk: data goes to the sink as it arrives and is hashed on the way, so a
// chunk's bytes reach the sink before its signature is checked. The caller must treat the
// body as unauthenticated until finish() returns ok (write it, but commit only then).
// Limits: a chunk-size line <= 4 KiB, a chunk <= 16 MiB, the trailer section <= 16 KiB.
// Errors (sticky): invalid_argument (framing), signature_does_not_match,
// incomplete_body (ended early, shorter than x-amz-decoded-content-length, a declared
// trailer missing), bad_digest (the trailing x-amz-checksum-* differs from the data), or
// whatever the sink returned.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/checksums.h"
#include "common/result.h"
#include "common/sigv4.h"

namespace cairn::sigv4 {

struct AwsChunkedLimits {
  size_t line_bytes_max = 4 * 1024;
  uint64_t chunk_bytes_max = 16 * 1024 * 1024;
  size_t trailer_bytes_max = 16 * 1024;
};

struct AwsChunkedOptions {
  PayloadMode mode = PayloadMode::streaming_signed;  // one of the streaming modes
  SigningContext signing;                             // from verify(); unused if unsigned
  std::optional<uint64_t> decoded_content_length;     // x-amz-decoded-content-length
  std::vector<std::string> declared_trailers;         // x-amz-trailer names, lowercase
  // Compute the x-amz-checksum-* named in declared_trailers over the data and compare it
  // with the trailer's value (bad_digest if it differs).
  bool verify_checksum_trailer = true;
  AwsChunkedLimits limits;
};

// Options from verify()'s result and the request's x-amz-decoded-content-length and
// x-amz-trailer. invalid_argument if the mode is not streaming or a header is malformed.
Result<AwsChunkedOptions> aws_chunked_options(const AuthContext& auth,
                                              const HttpRequestView& request);

class AwsChunkedDecoder {
 public:
  // Receives decoded payload bytes, in order. An error stops decoding and is returned.
  using Sink = std::function<Status(std::string_view decoded)>;

  explicit AwsChunkedDecoder(AwsChunkedOptions options);
  ~AwsChunkedDecoder();
  AwsChunkedDecoder(AwsChunkedDecoder&&) noexcept;
  AwsChunkedDecoder& operator=(AwsChunkedDecoder&&) noexcept;

  // Feed the next bytes of the body, split anywhere.
  Status feed(std::string_view bytes, const Sink& sink);
  // The body has ended: ok only if the whole stream (and its trailer) arrived and checked out.
  Status finish();

  bool done() const;
  uint64_t decoded_bytes() const;
  // Trailer headers as received (lowercase names), x-amz-trailer-signature excluded.
  const std::vector<std::pair<std::string, std::string>>& trailers() const;
  std::optional<std::string_view> trailer(std::string_view name) const;
  // The verified x-amz-checksum-* trailer, when there was one (valid once done()).
  std::optional<ChecksumAlgorithm> checksum_algorithm() const;
  std::optional<std::string> checksum_base64() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Client side: frames a body as aws-chunked, signing chunks in the signed modes and
// appending an x-amz-checksum-* trailer (and its signature) in the trailer modes. Feed it
// chunks of the size announced (all but the last the same size); then finish().
class AwsChunkedEncoder {
 public:
  AwsChunkedEncoder(PayloadMode mode, SigningContext signing,
                    std::optional<ChecksumAlgorithm> trailer_checksum = std::nullopt);
  ~AwsChunkedEncoder();
  AwsChunkedEncoder(AwsChunkedEncoder&&) noexcept;
  AwsChunkedEncoder& operator=(AwsChunkedEncoder&&) noexcept;

  std::string encode_chunk(std::string_view data);  // data non-empty
  std::string finish();                             // final chunk, trailer, closing CRLF

  // The encoded size (Content-Length) of decoded_bytes cut into chunk_bytes chunks.
  static uint64_t encoded_length(PayloadMode mode, uint64_t decoded_bytes, uint64_t chunk_bytes,
                                 std::optional<ChecksumAlgorithm> trailer_checksum);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cairn::sigv4
