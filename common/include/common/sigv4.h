// AWS Signature Version 4: verification for a server (objectd's S3 layer) and signing for
// a client (the `cairn` CLI, tests).
//
// Covers header auth (`Authorization: AWS4-HMAC-SHA256 ...`), presigned query auth
// (X-Amz-*), and the seed of streaming uploads (`x-amz-content-sha256:
// STREAMING-...`; the chunks themselves are checked by AwsChunkedDecoder, aws_chunked.h).
// S3's canonicalization: the path is not normalized (no dot-segment removal, no double
// encoding); every byte but A-Za-z0-9-._~ is %XX (uppercase), '/' kept in the path.
//
// Everything here is a pure function of its arguments (time comes in as now_unix_s):
// thread-safe. Limits: header auth within max_skew_s (15 min) of now; presigned URLs live
// 1..604800 s. Signatures are compared in constant time.
//
// Errors are AuthErrc (auth_category()), whose values equal objectd::ObjErrc's codes of
// the same name, so the S3 layer can map them one to one.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "common/result.h"

namespace cairn::sigv4 {

// Values mirror cairn::objectd::ObjErrc (objectd/errors.h): same name, same number.
enum class AuthErrc {
  ok = 0,
  bad_digest = 16,                // a trailing x-amz-checksum-* did not match the body
  access_denied = 17,             // unsigned x-amz-* header, presigned URL not valid yet
  incomplete_body = 20,           // body ended early or is shorter than declared
  invalid_argument = 21,          // malformed Authorization, query, date, framing
  signature_does_not_match = 23,  // request, chunk or trailer signature wrong
  invalid_access_key_id = 24,     // secret_lookup does not know the key
  request_expired = 25,           // presigned URL expired, or clock skew > 15 min
  not_implemented = 26,           // e.g. SigV4A / ECDSA streaming, AWS2 signatures
};

const std::error_category& auth_category() noexcept;
inline std::error_code make_error_code(AuthErrc e) noexcept {
  return {static_cast<int>(e), auth_category()};
}

inline constexpr std::string_view k_algorithm = "AWS4-HMAC-SHA256";
inline constexpr std::string_view k_unsigned_payload = "UNSIGNED-PAYLOAD";
inline constexpr std::string_view k_streaming_signed = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
inline constexpr std::string_view k_streaming_signed_trailer =
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";
inline constexpr std::string_view k_streaming_unsigned_trailer =
    "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
inline constexpr std::string_view k_empty_sha256_hex =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
inline constexpr int64_t k_max_skew_s = 15 * 60;
inline constexpr int64_t k_presign_expires_max_s = 7 * 24 * 3600;

// ---- hashing helpers (OpenSSL EVP) ----

using Digest = std::array<uint8_t, 32>;  // SHA-256 / HMAC-SHA256 output; also a signing key

std::string sha256_hex(std::string_view data);
Digest hmac_sha256(std::string_view key, std::string_view data);
Digest hmac_sha256(const Digest& key, std::string_view data);
std::string to_hex(const Digest& digest);

// Incremental SHA-256, e.g. to check a body against x-amz-content-sha256.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&& other) noexcept;
  Sha256& operator=(Sha256&& other) noexcept;
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(std::string_view data);
  Digest finish();           // then reset(): ready for the next message
  std::string finish_hex();  // likewise

 private:
  void* ctx_;  // EVP_MD_CTX
};

// ---- the request as the server received it (or as a client will send it) ----

struct HttpRequestView {
  std::string_view method;     // "GET"
  std::string_view raw_path;   // as sent, %-encoded, without the query: "/bucket/a%20b"
  std::string_view raw_query;  // as sent, without '?': "list-type=2&prefix=a%2Fb"
  // Names in any case; repeated names allowed (values are joined with ',' in order).
  std::vector<std::pair<std::string, std::string>> headers;
  // Only for services other than S3, whose requests carry no x-amz-content-sha256: the
  // hex SHA-256 of the body. Empty means the empty body.
  std::string_view payload_sha256_hex;

  // First value of a header (case-insensitive name), nullopt if absent.
  std::optional<std::string_view> header(std::string_view name) const;
};

// ---- parsing ----

struct Credential {
  std::string access_key_id;
  std::string date;  // YYYYMMDD
  std::string region;
  std::string service;
  std::string scope() const;  // DATE/REGION/SERVICE/aws4_request
};

struct AuthorizationHeader {
  Credential credential;
  std::string signed_headers;  // as sent: "host;range;x-amz-date"
  std::vector<std::string> signed_header_names;
  std::string signature_hex;  // lowercase
};

struct PresignedQuery {
  Credential credential;
  std::string amz_date;  // YYYYMMDDTHHMMSSZ
  int64_t expires_s = 0;
  std::string signed_headers;
  std::vector<std::string> signed_header_names;
  std::string signature_hex;
  std::optional<std::string> content_sha256;  // X-Amz-Content-Sha256, rarely present
};

// "AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3/aws4_request,
// SignedHeaders=host;x-amz-date, Signature=<64 hex>". invalid_argument if malformed,
// not_implemented for another algorithm (AWS v2 "AWS AK:sig", SigV4A).
Result<AuthorizationHeader> parse_authorization(std::string_view value);
// The X-Amz-* parameters of a presigned URL. invalid_argument if one is missing or
// malformed, X-Amz-Expires outside 1..604800 included.
Result<PresignedQuery> parse_presigned_query(std::string_view raw_query);

enum class AuthKind { none, header, presigned, unsupported };
// Which scheme a request uses, before verifying it; none = anonymous.
AuthKind auth_kind(const HttpRequestView& request);

// ---- canonicalization and signing primitives (exposed for tests and the CLI) ----

// S3 URI encoding: every byte but A-Za-z0-9-._~ becomes %XX; '/' kept unless asked.
std::string uri_encode(std::string_view bytes, bool encode_slash);
// %XX-decoding; '+' stays '+' unless plus_is_space. nullopt for a bad escape.
std::optional<std::string> uri_decode(std::string_view text, bool plus_is_space);
// The path as sent -> its canonical form: each '/'-separated segment decoded and
// re-encoded; no normalization. "" -> "/".
Result<std::string> canonical_uri(std::string_view raw_path);
// Parameters decoded ('+' as space) and re-encoded, sorted by name then value;
// X-Amz-Signature left out when exclude_signature.
Result<std::string> canonical_query(std::string_view raw_query, bool exclude_signature);
// Trim, and collapse runs of spaces into one.
std::string canonical_header_value(std::string_view value);
// "name:value\n" for each signed name (lowercase, in the order given).
// signature_does_not_match if a signed header is absent from the request.
Result<std::string> canonical_headers(const HttpRequestView& request,
                                      const std::vector<std::string>& signed_header_names);

std::string canonical_request(std::string_view method, std::string_view canonical_uri,
                              std::string_view canonical_query,
                              std::string_view canonical_headers,
                              std::string_view signed_headers, std::string_view payload_hash);
std::string string_to_sign(std::string_view amz_date, std::string_view scope,
                           std::string_view canonical_request);
Digest derive_signing_key(std::string_view secret_access_key, std::string_view date,
                          std::string_view region, std::string_view service);
std::string sign(const Digest& signing_key, std::string_view string_to_sign);  // hex

// Chunked uploads (sigv4-streaming): the string to sign for one chunk and for trailers.
std::string chunk_string_to_sign(std::string_view amz_date, std::string_view scope,
                                 std::string_view previous_signature_hex,
                                 std::string_view chunk_sha256_hex);
std::string trailer_string_to_sign(std::string_view amz_date, std::string_view scope,
                                   std::string_view previous_signature_hex,
                                   std::string_view trailer_sha256_hex);

// Constant-time comparison of two signatures (hex).
bool signatures_equal(std::string_view a, std::string_view b);

// Time: "20130524T000000Z" <-> unix seconds; RFC 1123 dates ("Fri, 24 May 2013 00:00:00 GMT").
std::optional<int64_t> parse_amz_date(std::string_view text);
std::optional<int64_t> parse_http_date(std::string_view text);
std::string format_amz_date(int64_t unix_s);

// ---- server side ----

enum class PayloadMode {
  signed_hash,                 // x-amz-content-sha256 is the body's SHA-256 (hex)
  unsigned_payload,            // UNSIGNED-PAYLOAD (and every presigned URL)
  streaming_signed,            // STREAMING-AWS4-HMAC-SHA256-PAYLOAD
  streaming_signed_trailer,    // STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER
  streaming_unsigned_trailer,  // STREAMING-UNSIGNED-PAYLOAD-TRAILER
};

bool is_streaming(PayloadMode mode);
bool chunks_signed(PayloadMode mode);
bool has_trailer(PayloadMode mode);

// What continues a signature chain: the seed (request) signature, the key and the scope.
struct SigningContext {
  Digest signing_key{};
  std::string amz_date;  // YYYYMMDDTHHMMSSZ of the request
  std::string scope;     // DATE/REGION/SERVICE/aws4_request
  std::string seed_signature_hex;
};

struct AuthContext {
  std::string access_key_id;
  std::string region;
  std::string service;
  bool presigned = false;
  PayloadMode payload_mode = PayloadMode::unsigned_payload;
  // x-amz-content-sha256 as declared: the hex hash in signed_hash mode, else the literal.
  // In signed_hash mode the S3 layer must check the body against it.
  std::string content_sha256;
  std::vector<std::string> signed_header_names;
  SigningContext signing;
};

// Returns the secret for an access key id, or an error (AuthErrc::invalid_access_key_id
// for an unknown key; other errors are passed through).
using SecretLookup = std::function<Result<std::string>(std::string_view access_key_id)>;

struct VerifyOptions {
  // Accepted credential-scope services; any region is accepted unless `region` is set.
  std::vector<std::string> services{"s3"};
  std::string region;
  int64_t max_skew_s = k_max_skew_s;
  // S3 rules: x-amz-content-sha256 present and signed (header auth), every x-amz-*
  // header signed. Off only for other services (the AWS test suite's "service").
  bool s3_rules = true;
};

// Verifies a header-signed or presigned request. Errors: invalid_argument (malformed),
// invalid_access_key_id, request_expired, access_denied, signature_does_not_match,
// not_implemented. Logs the reason at debug level; never logs secrets.
Result<AuthContext> verify(const HttpRequestView& request, const SecretLookup& secret_lookup,
                           int64_t now_unix_s, const VerifyOptions& options = {});

// ---- client side ----

struct Credentials {
  std::string access_key_id;
  std::string secret_access_key;
};

struct SignOptions {
  std::string region = "us-east-1";
  std::string service = "s3";
  int64_t now_unix_s = 0;
  // Body SHA-256 hex, or k_unsigned_payload, or a k_streaming_* literal. Empty = empty body.
  std::string payload_hash;
  // Adds x-amz-content-sha256 (S3 requires it; the generic test suite does not use it).
  bool add_content_sha256_header = true;
};

// Adds x-amz-date (replacing any), x-amz-content-sha256 and Authorization to the
// request's headers, signing every header present except hop-by-hop ones, user-agent and
// expect. Host must be present. Returns the chain state (the seed for aws-chunked).
Result<SigningContext> sign_headers(HttpRequestView& request, const Credentials& credentials,
                                    const SignOptions& options);

// Header list of a client request, in the order to send it.
using HeaderList = std::vector<std::pair<std::string, std::string>>;

// Signs a whole client request (header auth) and returns every header to send, in order:
// host, `extra_headers` as given (content-type, content-length, range...; all signed),
// x-amz-date, x-amz-content-sha256 (options.payload_hash: the body's SHA-256 hex, empty for
// the empty body, or k_unsigned_payload) and Authorization. `host_header` is the authority
// as sent ("127.0.0.1:9000", "[::1]:9000"); `target` the path and query as sent
// (%-encoded). Errors as sign_headers, and invalid_argument for a malformed target.
Result<HeaderList> sign_request(std::string_view method, std::string_view host_header,
                                std::string_view target, const Credentials& credentials,
                                const SignOptions& options, HeaderList extra_headers = {});

struct PresignOptions {
  std::string region = "us-east-1";
  std::string service = "s3";
  int64_t now_unix_s = 0;
  int64_t expires_s = 3600;  // 1..604800
};

// The query string of a presigned URL for the request: its own parameters plus the
// X-Amz-* ones, canonical order, ending in X-Amz-Signature. Signs the headers present
// (host at least); the payload is UNSIGNED-PAYLOAD.
Result<std::string> presign(const HttpRequestView& request, const Credentials& credentials,
                            const PresignOptions& options);

}  // namespace cairn::sigv4

template <>
struct std::is_error_code_enum<cairn::sigv4::AuthErrc> : std::true_type {};
