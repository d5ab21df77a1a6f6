// Small, pure helpers of the S3 layer: URL coding, query strings, addressing, HTTP dates,
// Range and ETag conditions. No I/O; unit-tested in tests/unit/objectd/s3_util_test.cc.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cairn::objectd {

// Percent-decoding; `plus_is_space` for query strings (form encoding). Nullopt on a bad
// escape.
std::optional<std::string> url_decode(std::string_view in, bool plus_is_space);
// Escapes every byte but A-Z a-z 0-9 - _ . ~ (and '/' when keep_slash) as %XX: what
// encoding-type=url responses and Location headers carry.
std::string url_encode(std::string_view in, bool keep_slash);

// A decoded query string, in order; a name without '=' has an empty value.
class Query {
 public:
  static std::optional<Query> parse(std::string_view raw);
  bool has(std::string_view name) const;
  const std::string* get(std::string_view name) const;
  const std::vector<std::pair<std::string, std::string>>& params() const { return params_; }

 private:
  std::vector<std::pair<std::string, std::string>> params_;
};

// Where a request points: virtual-host style (`bucket.D[:port]` for a configured domain D
// or s3.D) or path style (`/bucket/key`). The key keeps every byte after "/bucket/".
struct S3Target {
  std::string bucket;
  std::string key;
  bool virtual_host = false;
};
std::optional<S3Target> parse_target(std::string_view host_header, std::string_view decoded_path,
                                     const std::vector<std::string>& domains);

// RFC 1123 ("Sun, 06 Nov 1994 08:49:37 GMT"); parse also takes RFC 850 and asctime.
std::string http_date(int64_t unix_s);
std::optional<int64_t> parse_http_date(std::string_view text);
// ISO 8601 with milliseconds, as in S3 XML: "2009-10-12T17:50:30.000Z".
std::string iso8601_ms(int64_t unix_ms);

// A single byte range resolved against an object size.
struct ByteRange {
  uint64_t offset = 0;
  uint64_t length = 0;
};
enum class RangeParse { none, ok, unsatisfiable };
// `bytes=a-b`, `bytes=a-`, `bytes=-n`. Malformed or multi-range headers are ignored
// (none: serve the whole object), as RFC 9110 allows.
RangeParse parse_range(std::string_view header, uint64_t size, ByteRange& out);

// If-Match / If-None-Match lists: `*`, `"etag"`, `W/"etag"`, unquoted, comma-separated.
bool etag_list_matches(std::string_view header, std::string_view etag_unquoted);

// Conditional request evaluation (RFC 9110 order, as S3): 0 = proceed, 304 or 412.
struct Conditions {
  std::string_view if_match, if_none_match, if_modified_since, if_unmodified_since;
};
int evaluate_conditions(const Conditions& c, std::string_view etag, int64_t mtime_unix_s,
                        bool is_get_or_head);

// Strips "aws-chunked" from a Content-Encoding list; empty when nothing else remains.
std::string strip_aws_chunked(std::string_view content_encoding);

bool iequals_ascii(std::string_view a, std::string_view b);
std::string lower_ascii(std::string_view s);
std::string_view trim(std::string_view s);
std::optional<uint64_t> parse_u64(std::string_view s);

}  // namespace cairn::objectd
