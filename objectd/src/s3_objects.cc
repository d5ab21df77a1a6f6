// Object operations and multipart uploads: bodies are streamed between the connection and
// ObjectWriter/ObjectReader in io_chunk_bytes pieces; Content-MD5 and x-amz-checksum-*
// are computed on the way and checked before the object is committed.
#include <algorithm>
#include <array>
#include <cstring>

#include "common/checksums.h"
#include "common/log.h"
#include "s3_handlers.h"

namespace cairn::objectd {
namespace {

constexpr const char* kLog = "s3";
constexpr uint64_t kSinglePutMaxBytes = 5ull << 30;  // PutObject, UploadPart, copy source

// ---- request metadata ----

struct StoredHeader {
  const char* lower;
  const char* canonical;
};
constexpr StoredHeader kStoredHeaders[] = {{"cache-control", "Cache-Control"},
                                           {"content-disposition", "Content-Disposition"},
                                           {"content-encoding", "Content-Encoding"},
                                           {"content-language", "Content-Language"},
                                           {"expires", "Expires"}};

std::optional<S3Error> reject_unsupported_headers(const Exchange& x) {
  for (const auto& f : x.req()) {
    std::string name = lower_ascii(to_std(f.name_string()));
    if (name.rfind("x-amz-server-side-encryption", 0) == 0) {
      return s3_error(http::status::not_implemented, "NotImplemented",
                      "Server-side encryption is not implemented by Cairn.");
    }
  }
  return std::nullopt;
}

std::optional<S3Error> meta_from_request(const Exchange& x, ObjectMeta& m) {
  m.content_type = std::string(x.header(http::field::content_type));
  size_t meta_bytes = 0;
  for (const auto& f : x.req()) {
    std::string name = lower_ascii(to_std(f.name_string()));
    if (name.size() > 11 && name.rfind("x-amz-meta-", 0) == 0) {
      std::string key = name.substr(11);
      std::string value(to_std(f.value()));
      meta_bytes += key.size() + value.size();
      auto [it, inserted] = m.user_metadata.emplace(key, value);
      if (!inserted) it->second += "," + value;
    }
  }
  if (meta_bytes > kUserMetadataBytesMax) {
    return s3_error(http::status::bad_request, "MetadataTooLarge",
                    "Your metadata headers exceed the maximum allowed metadata size.");
  }
  for (const StoredHeader& h : kStoredHeaders) {
    std::string value(x.header(h.lower));
    if (std::string_view(h.lower) == "content-encoding") value = strip_aws_chunked(value);
    if (!value.empty()) m.headers[h.lower] = value;
  }
  return std::nullopt;
}

// ---- checksums ----

struct ChecksumPlan {
  struct Item {
    ChecksumAlgorithm algorithm;
    std::unique_ptr<Checksum> engine;
    std::string expected;       // from the header; empty: none
    bool from_trailer = false;  // the value arrives in the aws-chunked trailer
    std::string computed;
  };
  std::vector<Item> items;
  std::optional<std::string> content_md5;  // 16 raw bytes

  Item* find(ChecksumAlgorithm a) {
    for (Item& i : items)
      if (i.algorithm == a) return &i;
    return nullptr;
  }
  Item& add(ChecksumAlgorithm a) {
    if (Item* i = find(a)) return *i;
    items.push_back(Item{a, make_checksum(a), {}, false, {}});
    return items.back();
  }
  void update(const char* data, size_t n) {
    for (Item& i : items) i.engine->update(data, n);
  }
};

S3Error invalid_request(std::string message) {
  return s3_error(http::status::bad_request, "InvalidRequest", std::move(message));
}

std::optional<S3Error> plan_checksums(const Exchange& x, ChecksumPlan& plan) {
  std::string_view md5 = trim(x.header("content-md5"));
  if (!md5.empty()) {
    auto raw = base64_decode(md5);
    if (!raw || raw->size() != 16) {
      return s3_error(http::status::bad_request, "InvalidDigest",
                      "The Content-MD5 you specified is not valid.");
    }
    plan.content_md5 = std::move(*raw);
  }
  for (const auto& f : x.req()) {
    std::string name = lower_ascii(to_std(f.name_string()));
    if (name.rfind("x-amz-checksum-", 0) != 0 || name == "x-amz-checksum-mode" ||
        name == "x-amz-checksum-algorithm" || name == "x-amz-checksum-type")
      continue;
    auto algo = checksum_algorithm_from_header(name);
    if (!algo) continue;
    std::string value(trim(to_std(f.value())));
    auto raw = base64_decode(value);
    if (!raw || raw->size() != checksum_digest_bytes(*algo))
      return invalid_request("Value for " + name + " header is invalid.");
    plan.add(*algo).expected = value;
  }
  for (const char* h : {"x-amz-sdk-checksum-algorithm", "x-amz-checksum-algorithm"}) {
    std::string_view v = trim(x.header(h));
    if (v.empty()) continue;
    auto algo = parse_checksum_algorithm(v);
    if (!algo) return invalid_request("Checksum algorithm '" + std::string(v) + "' is not supported.");
    plan.add(*algo);
  }
  std::string_view trailer = x.header("x-amz-trailer");
  size_t start = 0;
  while (!trailer.empty() && start <= trailer.size()) {
    size_t comma = trailer.find(',', start);
    std::string name = lower_ascii(trim(trailer.substr(
        start, comma == std::string_view::npos ? std::string_view::npos : comma - start)));
    if (auto algo = checksum_algorithm_from_header(name)) plan.add(*algo).from_trailer = true;
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return std::nullopt;
}

// Content-MD5 of a body the handler hashed itself (object data is hashed by the writer,
// whose commit checks meta.etag instead: content_md5_hex()).
std::optional<S3Error> check_content_md5(const ChecksumPlan& plan, const std::array<uint8_t, 16>& md5) {
  if (plan.content_md5 && memcmp(plan.content_md5->data(), md5.data(), 16) != 0) {
    return s3_error(http::status::bad_request, "BadDigest",
                    "The Content-MD5 you specified did not match what we received.");
  }
  return std::nullopt;
}

// What ObjectWriter::commit is to check the data's MD5 against: "" when no Content-MD5.
std::string content_md5_hex(const ChecksumPlan& plan) {
  if (!plan.content_md5) return {};
  return hex_encode(plan.content_md5->data(), 16);
}

// The x-amz-checksum-* values (Content-MD5: check_content_md5 or the writer's commit).
std::optional<S3Error> verify_checksums(
    ChecksumPlan& plan, const std::vector<std::pair<std::string, std::string>>& trailers) {
  for (auto& item : plan.items) {
    item.computed = item.engine->finish_base64();
    std::string expected = item.expected;
    if (item.from_trailer) {
      std::string header(checksum_header_name(item.algorithm));
      for (const auto& [k, v] : trailers)
        if (iequals_ascii(k, header)) expected = std::string(trim(v));
    }
    if (!expected.empty() && expected != item.computed) {
      return s3_error(http::status::bad_request, "BadDigest",
                      "The " + std::string(checksum_algorithm_name(item.algorithm)) +
                          " you specified did not match the calculated checksum.");
    }
  }
  return std::nullopt;
}

void checksum_headers(Reply& r, const std::map<std::string, std::string>& checksums) {
  for (const auto& [algo, value] : checksums) r.headers.set("x-amz-checksum-" + algo, value);
}

std::map<std::string, std::string> computed_checksums(const ChecksumPlan& plan) {
  std::map<std::string, std::string> out;
  for (const auto& item : plan.items)
    out[lower_ascii(checksum_algorithm_name(item.algorithm))] = item.computed;
  return out;
}

// ---- streaming ----

// Destroys a writer or reader on the store pool (an uncommitted writer removes its files).
template <class T>
asio::awaitable<void> dispose(Exchange& x, std::unique_ptr<T>& p) {
  if (!p) co_return;
  co_await x.blocking([&] {
    p.reset();
    return 0;
  });
}

// Moves the request payload into `w`; the requested x-amz-checksum-* are computed on the way
// (the MD5 is the writer's). Two buffers: while one chunk is hashed and stored on the pool,
// the next is read from the socket. Sets size_bytes.
asio::awaitable<std::optional<S3Error>> receive_body(Exchange& x, ObjectWriter& w,
                                                     ChecksumPlan& plan, uint64_t max_bytes,
                                                     uint64_t& size_bytes) {
  // Chunks of io_chunk_bytes, or of the declared size when smaller; not zero-filled.
  size_t chunk = x.ctx.options.io_chunk_bytes;
  if (auto declared = x.declared_payload_bytes())
    chunk = static_cast<size_t>(std::clamp<uint64_t>(*declared, 1, chunk));
  std::unique_ptr<char[]> bufs[2] = {std::unique_ptr<char[]>(new char[chunk]),
                                     std::unique_ptr<char[]>(new char[chunk])};
  Exchange::Background<Status> store;
  std::optional<S3Error> err;
  size_bytes = 0;
  for (int cur = 0;; cur ^= 1) {
    // Fill the buffer (a chunk per store call keeps stripes whole and hops few).
    char* buf = bufs[cur].get();
    size_t filled = 0;
    bool end = false;
    while (filled < chunk) {
      auto n = co_await x.read_payload(buf + filled, chunk - filled);
      if (!n) {
        err = x.body_error(n.error());
        break;
      }
      if (n.value() == 0) {
        end = true;
        break;
      }
      filled += n.value();
    }
    if (store.running()) {
      Status st = co_await store.wait();
      if (!st && !err) err = s3_error(st.error());
    }
    if (err) co_return err;
    if (filled > 0) {
      size_bytes += filled;
      if (size_bytes > max_bytes) co_return s3_error(ObjErrc::entity_too_large);
      const char* data = buf;
      co_await store.start(x, [&w, &plan, data, filled] {
        plan.update(data, filled);
        return w.write(data, filled);
      });
    }
    if (end) break;
  }
  if (store.running()) {
    Status st = co_await store.wait();
    if (!st) co_return s3_error(st.error());
  }
  co_return std::nullopt;
}

// Copies `len` bytes from `r` into `w` (both blocking, one pool call per chunk).
asio::awaitable<std::optional<S3Error>> copy_data(Exchange& x, ObjectReader& r, ObjectWriter& w,
                                                  uint64_t len, ChecksumPlan& plan) {
  std::vector<char> buf(x.ctx.options.io_chunk_bytes);
  uint64_t left = len;
  while (left > 0) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
    auto st = co_await x.blocking([&]() -> Status {
      size_t got = 0;
      while (got < want) {
        CAIRN_TRY(n, r.read(buf.data() + got, want - got));
        if (n == 0) return ObjErrc::data_corrupt;  // the source ended early
        got += n;
      }
      plan.update(buf.data(), want);
      return w.write(buf.data(), want);
    });
    if (!st) co_return s3_error(st.error());
    left -= want;
  }
  co_return std::nullopt;
}

struct CopySource {
  std::string bucket, key;
};

std::optional<CopySource> parse_copy_source(std::string_view header, std::optional<S3Error>& err) {
  std::string_view v = trim(header);
  size_t q = v.find('?');
  if (q != std::string_view::npos) {
    std::string_view params = v.substr(q + 1);
    v = v.substr(0, q);
    if (params.rfind("versionId=", 0) == 0 && params.substr(10) != "null") {
      err = s3_error(http::status::not_implemented, "NotImplemented",
                     "Copying a specific version is not implemented by Cairn.");
      return std::nullopt;
    }
  }
  auto decoded = url_decode(v, false);
  std::string_view d = decoded ? std::string_view(*decoded) : std::string_view();
  if (!d.empty() && d.front() == '/') d.remove_prefix(1);
  size_t slash = d.find('/');
  if (!decoded || slash == std::string_view::npos || slash == 0 || slash + 1 >= d.size()) {
    err = s3_error(http::status::bad_request, "InvalidArgument",
                   "Copy Source must mention the source bucket and key: sourcebucket/sourcekey");
    return std::nullopt;
  }
  return CopySource{std::string(d.substr(0, slash)), std::string(d.substr(slash + 1))};
}

// x-amz-copy-source-if-*: a failed condition is 412 (never 304) for copies.
std::optional<S3Error> copy_conditions(const Exchange& x, const ObjectMeta& m) {
  Conditions c{x.header("x-amz-copy-source-if-match"), x.header("x-amz-copy-source-if-none-match"),
               x.header("x-amz-copy-source-if-modified-since"),
               x.header("x-amz-copy-source-if-unmodified-since")};
  if (evaluate_conditions(c, m.etag, m.mtime_unix_ms / 1000, true) != 0)
    return s3_error(ObjErrc::precondition_failed);
  return std::nullopt;
}

// Opens the copy source (access checked: owner or public-read) at [offset, offset+len).
asio::awaitable<std::optional<S3Error>> open_copy_source(Exchange& x, const CopySource& src,
                                                         uint64_t offset, uint64_t len,
                                                         std::unique_ptr<ObjectReader>& out) {
  BucketInfo info;
  auto err = co_await check_bucket(x, src.bucket, true, info);
  if (err) co_return err;
  auto reader = co_await x.blocking(
      [&] { return x.ctx.store.get_object(src.bucket, src.key, offset, len); });
  if (!reader) co_return s3_error(reader.error());
  out = std::move(reader).value();
  co_return std::nullopt;
}

std::optional<uint32_t> part_number(const Exchange& x) {
  const std::string* v = x.query.get("partNumber");
  if (!v) return std::nullopt;
  auto n = parse_u64(*v);
  if (!n || *n < 1 || *n > kPartNumberMax) return std::nullopt;
  return static_cast<uint32_t>(*n);
}

Reply part_number_error(const Exchange& x) {
  return error_reply(x, s3_error(http::status::bad_request, "InvalidArgument",
                                 "Part number must be an integer between 1 and 10000, inclusive"));
}

std::optional<S3Error> check_declared_size(const Exchange& x) {
  auto declared = x.declared_payload_bytes();
  if (declared && *declared > kSinglePutMaxBytes) return s3_error(ObjErrc::entity_too_large);
  return std::nullopt;
}

void object_headers(Reply& r, const ObjectMeta& m) {
  r.headers.set(http::field::etag, quote_etag(m.etag));
  r.headers.set(http::field::last_modified, http_date(m.mtime_unix_ms / 1000));
}

}  // namespace

// ---------------------------------------------------------------------------------------

asio::awaitable<Reply> put_object(Exchange& x, const OpContext& c) {
  if (auto e = reject_unsupported_headers(x)) co_return error_reply(x, *e);
  if (auto e = check_declared_size(x)) co_return error_reply(x, *e);
  ObjectMeta meta;
  if (auto e = meta_from_request(x, meta)) co_return error_reply(x, *e);
  ChecksumPlan plan;
  if (auto e = plan_checksums(x, plan)) co_return error_reply(x, *e);
  const std::string& bucket = c.bucket.name;
  const std::string& key = x.target.key;
  auto w = co_await x.blocking([&] { return x.ctx.store.put_object(bucket, key); });
  if (!w) co_return error_reply(x, w.error());
  std::unique_ptr<ObjectWriter> writer = std::move(w).value();
  uint64_t size = 0;
  auto err = co_await receive_body(x, *writer, plan, kSinglePutMaxBytes, size);
  if (!err) err = verify_checksums(plan, x.trailers());
  if (err) {
    co_await dispose(x, writer);
    co_return error_reply(x, *err);
  }
  meta.size_bytes = size;
  meta.etag = content_md5_hex(plan);
  meta.checksums = computed_checksums(plan);
  auto committed = co_await x.blocking([&] { return writer->commit(meta); });
  co_await dispose(x, writer);
  if (!committed) co_return error_reply(x, committed.error());
  Reply r;
  r.headers.set(http::field::etag, quote_etag(committed.value().etag));
  checksum_headers(r, meta.checksums);
  co_return r;
}

asio::awaitable<Reply> copy_object(Exchange& x, const OpContext& c) {
  if (auto e = reject_unsupported_headers(x)) co_return error_reply(x, *e);
  std::optional<S3Error> err;
  auto src = parse_copy_source(x.header("x-amz-copy-source"), err);
  if (!src) co_return error_reply(x, *err);
  std::string_view directive = trim(x.header("x-amz-metadata-directive"));
  bool replace = iequals_ascii(directive, "REPLACE");
  if (!directive.empty() && !replace && !iequals_ascii(directive, "COPY")) {
    co_return error_reply(x, s3_error(http::status::bad_request, "InvalidArgument",
                                      "Unknown metadata directive."));
  }
  const std::string& bucket = c.bucket.name;
  const std::string& key = x.target.key;
  if (src->bucket == bucket && src->key == key && !replace) {
    co_return error_reply(
        x, invalid_request("This copy request is illegal because it is trying to copy an object "
                           "to itself without changing the object's metadata, storage class, "
                           "website redirect location or encryption attributes."));
  }
  std::unique_ptr<ObjectReader> reader;
  err = co_await open_copy_source(x, *src, 0, UINT64_MAX, reader);
  if (err) co_return error_reply(x, *err);
  ObjectMeta src_meta = reader->meta();
  err = copy_conditions(x, src_meta);
  if (!err && src_meta.size_bytes > kSinglePutMaxBytes) {
    err = invalid_request(
        "The specified copy source is larger than the maximum allowable size for a copy "
        "source: 5368709120");
  }
  ObjectMeta meta;
  if (!err) {
    if (replace) {
      err = meta_from_request(x, meta);
    } else {
      meta.content_type = src_meta.content_type;
      meta.user_metadata = src_meta.user_metadata;
      meta.headers = src_meta.headers;
    }
  }
  ChecksumPlan plan;
  if (!err) {
    std::string_view algo = trim(x.header("x-amz-checksum-algorithm"));
    if (!algo.empty()) {
      auto a = parse_checksum_algorithm(algo);
      if (!a) err = invalid_request("Checksum algorithm '" + std::string(algo) + "' is not supported.");
      else plan.add(*a);
    } else {
      for (const auto& [name, value] : src_meta.checksums) {
        auto a = parse_checksum_algorithm(name);
        if (a && value.find('-') == std::string::npos) plan.add(*a);
      }
    }
  }
  if (err) {
    co_await dispose(x, reader);
    co_return error_reply(x, *err);
  }
  auto w = co_await x.blocking([&] { return x.ctx.store.put_object(bucket, key); });
  if (!w) {
    co_await dispose(x, reader);
    co_return error_reply(x, w.error());
  }
  std::unique_ptr<ObjectWriter> writer = std::move(w).value();
  err = co_await copy_data(x, *reader, *writer, src_meta.size_bytes, plan);
  co_await dispose(x, reader);
  if (err) {
    co_await dispose(x, writer);
    co_return error_reply(x, *err);
  }
  for (auto& item : plan.items) item.computed = item.engine->finish_base64();
  meta.size_bytes = src_meta.size_bytes;
  meta.checksums = computed_checksums(plan);
  auto committed = co_await x.blocking([&] { return writer->commit(meta); });
  co_await dispose(x, writer);
  if (!committed) co_return error_reply(x, committed.error());
  XmlWriter xw("CopyObjectResult");
  xw.element("LastModified", iso8601_ms(committed.value().mtime_unix_ms));
  xw.element("ETag", quote_etag(committed.value().etag));
  for (const auto& [algo, value] : meta.checksums) {
    auto a = parse_checksum_algorithm(algo);
    if (a) xw.element("Checksum" + std::string(checksum_algorithm_name(*a)), value);
  }
  Reply r = xml_reply(xw.finish());
  r.headers.set("x-amz-copy-source-version-id", "null");
  co_return r;
}

asio::awaitable<Reply> get_object(Exchange& x, const OpContext& c) {
  const std::string& bucket = c.bucket.name;
  const std::string& key = x.target.key;
  bool has_overrides = false;
  for (const auto& [k, v] : x.query.params())
    if (k.rfind("response-", 0) == 0) has_overrides = true;
  if (has_overrides && x.auth.anonymous) {
    co_return error_reply(x, invalid_request("Request specific response headers cannot be used "
                                             "for anonymous GET requests."));
  }
  for (int attempt = 0;; ++attempt) {
    auto head = co_await x.blocking([&] { return x.ctx.store.head_object(bucket, key); });
    if (!head) co_return error_reply(x, head.error());
    const ObjectMeta& m = head.value();

    if (auto pn = x.query.get("partNumber")) {
      auto n = parse_u64(*pn);
      if (!n || *n < 1 || *n > kPartNumberMax) co_return part_number_error(x);
      if (m.parts > 0 || *n != 1)
        co_return error_reply(x, s3_error(http::status::not_implemented, "NotImplemented",
                                          "GET of one part of a multipart object is not "
                                          "implemented by Cairn."));
    }

    Reply r;
    object_headers(r, m);
    Conditions cond{x.header(http::field::if_match), x.header(http::field::if_none_match),
                    x.header(http::field::if_modified_since),
                    x.header(http::field::if_unmodified_since)};
    int verdict = evaluate_conditions(cond, m.etag, m.mtime_unix_ms / 1000, true);
    if (verdict == 304) {
      r.status = http::status::not_modified;
      r.no_body = true;
      co_return r;
    }
    if (verdict == 412) co_return error_reply(x, ObjErrc::precondition_failed);

    ByteRange range{0, m.size_bytes};
    bool partial = false;
    std::string_view range_header = x.header(http::field::range);
    if (!range_header.empty()) {
      RangeParse rp = parse_range(range_header, m.size_bytes, range);
      if (rp == RangeParse::unsatisfiable) {
        Reply e = error_reply(x, ObjErrc::invalid_range);
        e.headers.set(http::field::content_range, "bytes */" + std::to_string(m.size_bytes));
        co_return e;
      }
      partial = rp == RangeParse::ok;
      if (!partial) range = {0, m.size_bytes};
    }

    r.headers.set(http::field::content_type,
                  m.content_type.empty() ? "binary/octet-stream" : m.content_type);
    r.headers.set(http::field::accept_ranges, "bytes");
    for (const StoredHeader& h : kStoredHeaders) {
      auto it = m.headers.find(h.lower);
      if (it != m.headers.end()) r.headers.set(h.canonical, it->second);
    }
    for (const auto& [name, value] : m.user_metadata) r.headers.set("x-amz-meta-" + name, value);
    if (m.parts > 0) r.headers.set("x-amz-mp-parts-count", std::to_string(m.parts));
    if (!partial && iequals_ascii(trim(x.header("x-amz-checksum-mode")), "ENABLED")) {
      checksum_headers(r, m.checksums);
      for (const auto& [algo, value] : m.checksums) {
        r.headers.set("x-amz-checksum-type",
                      value.find('-') != std::string::npos ? "COMPOSITE" : "FULL_OBJECT");
        break;
      }
    }
    static const std::pair<const char*, const char*> kOverrides[] = {
        {"response-content-type", "Content-Type"},
        {"response-content-language", "Content-Language"},
        {"response-expires", "Expires"},
        {"response-cache-control", "Cache-Control"},
        {"response-content-disposition", "Content-Disposition"},
        {"response-content-encoding", "Content-Encoding"}};
    for (const auto& [param, field] : kOverrides)
      if (const std::string* v = x.query.get(param)) r.headers.set(field, *v);
    if (partial) {
      r.status = http::status::partial_content;
      r.headers.set(http::field::content_range,
                    "bytes " + std::to_string(range.offset) + "-" +
                        std::to_string(range.offset + range.length - 1) + "/" +
                        std::to_string(m.size_bytes));
    }
    r.content_length = range.length;
    if (x.is_head()) {
      x.op = "HeadObject";
      r.no_body = true;
      co_return r;
    }
    x.op = "GetObject";
    auto reader = co_await x.blocking(
        [&] { return x.ctx.store.get_object(bucket, key, range.offset, range.length); });
    if (!reader) {
      // Replaced or deleted between head and open: start over (bounded).
      if ((reader.error() == ObjErrc::invalid_range || reader.error() == ObjErrc::no_such_key) &&
          attempt < 3)
        continue;
      co_return error_reply(x, reader.error());
    }
    std::unique_ptr<ObjectReader> rd = std::move(reader).value();
    if (rd->meta().etag != m.etag && attempt < 3) {
      co_await dispose(x, rd);
      continue;
    }
    r.reader = std::move(rd);
    co_return r;
  }
}

asio::awaitable<Reply> delete_object(Exchange& x, const OpContext& c) {
  const std::string& bucket = c.bucket.name;
  const std::string& key = x.target.key;
  Status st = co_await x.blocking([&] { return x.ctx.store.delete_object(bucket, key); });
  if (!st) co_return error_reply(x, st.error());
  Reply r;
  r.status = http::status::no_content;
  r.no_body = true;
  co_return r;
}

asio::awaitable<Reply> delete_objects(Exchange& x, const OpContext& c) {
  auto body = co_await x.read_small_payload(x.ctx.options.xml_body_max_bytes);
  if (!body) {
    if (body.error() == ObjErrc::entity_too_large) co_return error_reply(x, ObjErrc::malformed_xml);
    co_return error_reply(x, x.body_error(body.error()));
  }
  ChecksumPlan plan;
  if (auto e = plan_checksums(x, plan)) co_return error_reply(x, *e);
  Md5 md5;
  md5.update(body.value());
  plan.update(body.value().data(), body.value().size());
  if (auto e = check_content_md5(plan, md5.finish())) co_return error_reply(x, *e);
  if (auto e = verify_checksums(plan, x.trailers())) co_return error_reply(x, *e);
  auto req = parse_delete_objects(body.value());
  if (!req) co_return error_reply(x, req.error());
  const std::string& bucket = c.bucket.name;
  struct Outcome {
    std::string key;
    S3Error error;
    bool ok;
  };
  auto outcomes = co_await x.blocking([&] {
    std::vector<Outcome> out;
    for (const std::string& key : req.value().keys) {
      if (key.size() > kKeyBytesMax) {
        out.push_back({key, s3_error(ObjErrc::key_too_long), false});
        continue;
      }
      Status st = x.ctx.store.delete_object(bucket, key);
      out.push_back({key, st ? S3Error{} : s3_error(st.error()), static_cast<bool>(st)});
    }
    return out;
  });
  XmlWriter w("DeleteResult");
  for (const Outcome& o : outcomes) {
    if (o.ok) {
      if (req.value().quiet) continue;
      w.open("Deleted");
      w.element("Key", o.key);
      w.close("Deleted");
    } else {
      w.open("Error");
      w.element("Key", o.key);
      w.element("Code", o.error.code);
      w.element("Message", o.error.message);
      w.close("Error");
    }
  }
  co_return xml_reply(w.finish());
}

// ---- multipart ----

asio::awaitable<Reply> create_multipart(Exchange& x, const OpContext& c) {
  if (auto e = reject_unsupported_headers(x)) co_return error_reply(x, *e);
  ObjectMeta meta;
  if (auto e = meta_from_request(x, meta)) co_return error_reply(x, *e);
  std::string_view algo = trim(x.header("x-amz-checksum-algorithm"));
  if (!algo.empty() && !parse_checksum_algorithm(algo))
    co_return error_reply(x, invalid_request("Checksum algorithm '" + std::string(algo) +
                                             "' is not supported."));
  const std::string& bucket = c.bucket.name;
  const std::string& key = x.target.key;
  auto id = co_await x.blocking([&] { return x.ctx.store.create_multipart(bucket, key, meta); });
  if (!id) co_return error_reply(x, id.error());
  XmlWriter w("InitiateMultipartUploadResult");
  w.element("Bucket", bucket);
  w.element("Key", key);
  w.element("UploadId", id.value());
  Reply r = xml_reply(w.finish());
  if (!algo.empty()) r.headers.set("x-amz-checksum-algorithm", std::string(algo));
  co_return r;
}

asio::awaitable<Reply> upload_part(Exchange& x, const OpContext& c) {
  auto pn = part_number(x);
  if (!pn) co_return part_number_error(x);
  const std::string* upload_id = x.query.get("uploadId");
  if (!upload_id || upload_id->empty()) co_return error_reply(x, ObjErrc::no_such_upload);
  const std::string& bucket = c.bucket.name;
  const std::string& key = x.target.key;
  std::string_view copy_header = x.header("x-amz-copy-source");
  std::unique_ptr<ObjectReader> reader;
  uint64_t copy_len = 0;
  if (!copy_header.empty()) {
    std::optional<S3Error> err;
    auto src = parse_copy_source(copy_header, err);
    if (!src) co_return error_reply(x, *err);
    // Head first: the range is resolved against the source's size.
    BucketInfo info;
    err = co_await check_bucket(x, src->bucket, true, info);
    if (err) co_return error_reply(x, *err);
    auto head = co_await x.blocking([&] { return x.ctx.store.head_object(src->bucket, src->key); });
    if (!head) co_return error_reply(x, head.error());
    if (auto e = copy_conditions(x, head.value())) co_return error_reply(x, *e);
    ByteRange range{0, head.value().size_bytes};
    std::string_view range_header = x.header("x-amz-copy-source-range");
    if (!range_header.empty()) {
      // Stricter than GET: bytes=first-last, both inside the source.
      std::string_view spec = trim(range_header);
      size_t dash = spec.find('-');
      auto first = spec.rfind("bytes=", 0) == 0 && dash != std::string_view::npos
                       ? parse_u64(spec.substr(6, dash - 6))
                       : std::nullopt;
      auto last = dash != std::string_view::npos ? parse_u64(spec.substr(dash + 1)) : std::nullopt;
      uint64_t src_size = head.value().size_bytes;
      if (!first || !last || *first > *last || *last >= src_size) {
        co_return error_reply(x, s3_error(http::status::bad_request, "InvalidArgument",
                                          "Range specified is not valid for source object of "
                                          "size: " + std::to_string(src_size)));
      }
      range = {*first, *last - *first + 1};
    }
    if (range.length > kSinglePutMaxBytes) co_return error_reply(x, ObjErrc::entity_too_large);
    err = co_await open_copy_source(x, *src, range.offset, range.length, reader);
    if (err) co_return error_reply(x, *err);
    if (reader->meta().etag != head.value().etag) {
      co_await dispose(x, reader);
      co_return error_reply(x, ObjErrc::precondition_failed, "The copy source changed.");
    }
    copy_len = range.length;
  } else {
    if (auto e = check_declared_size(x)) co_return error_reply(x, *e);
  }
  ChecksumPlan plan;
  if (!reader) {
    if (auto e = plan_checksums(x, plan)) co_return error_reply(x, *e);
  }
  const std::string& upload = *upload_id;
  uint32_t part = *pn;
  auto w = co_await x.blocking([&] { return x.ctx.store.upload_part(bucket, key, upload, part); });
  if (!w) {
    co_await dispose(x, reader);
    co_return error_reply(x, w.error());
  }
  std::unique_ptr<ObjectWriter> writer = std::move(w).value();
  uint64_t size = 0;
  std::optional<S3Error> err;
  if (reader) {
    err = co_await copy_data(x, *reader, *writer, copy_len, plan);
    co_await dispose(x, reader);
    size = copy_len;
  } else {
    err = co_await receive_body(x, *writer, plan, kSinglePutMaxBytes, size);
  }
  if (!err) err = verify_checksums(plan, x.trailers());
  if (err) {
    co_await dispose(x, writer);
    co_return error_reply(x, *err);
  }
  ObjectMeta meta;
  meta.size_bytes = size;
  meta.etag = content_md5_hex(plan);
  meta.checksums = computed_checksums(plan);
  auto committed = co_await x.blocking([&] { return writer->commit(meta); });
  co_await dispose(x, writer);
  if (!committed) co_return error_reply(x, committed.error());
  const std::string& etag = committed.value().etag;
  if (!copy_header.empty()) {
    XmlWriter xw("CopyPartResult");
    xw.element("LastModified", iso8601_ms(committed.value().mtime_unix_ms));
    xw.element("ETag", quote_etag(etag));
    co_return xml_reply(xw.finish());
  }
  Reply r;
  r.headers.set(http::field::etag, quote_etag(etag));
  checksum_headers(r, meta.checksums);
  co_return r;
}

asio::awaitable<Reply> complete_multipart(Exchange& x, const OpContext& c) {
  const std::string& upload = *x.query.get("uploadId");
  // 10000 parts with checksums take more than the usual XML bound.
  auto body = co_await x.read_small_payload(4 * x.ctx.options.xml_body_max_bytes);
  if (!body) {
    if (body.error() == ObjErrc::entity_too_large) co_return error_reply(x, ObjErrc::malformed_xml);
    co_return error_reply(x, x.body_error(body.error()));
  }
  auto parts = parse_complete_multipart(body.value());
  if (!parts) co_return error_reply(x, parts.error());
  const std::string& bucket = c.bucket.name;
  const std::string& key = x.target.key;
  auto meta = co_await x.blocking(
      [&] { return x.ctx.store.complete_multipart(bucket, key, upload, parts.value()); });
  if (!meta) co_return error_reply(x, meta.error());
  CAIRN_LOG_DEBUG(kLog, "completed upload %s of %s/%s (%zu parts)", upload.c_str(), bucket.c_str(),
                  key.c_str(), parts.value().size());
  XmlWriter w("CompleteMultipartUploadResult");
  std::string host(x.header(http::field::host));
  w.element("Location", "http://" + host + "/" + bucket + "/" + url_encode(key, true));
  w.element("Bucket", bucket);
  w.element("Key", key);
  w.element("ETag", quote_etag(meta.value().etag));
  for (const auto& [algo, value] : meta.value().checksums) {
    auto a = parse_checksum_algorithm(algo);
    if (a) w.element("Checksum" + std::string(checksum_algorithm_name(*a)), value);
  }
  co_return xml_reply(w.finish());
}

asio::awaitable<Reply> abort_multipart(Exchange& x, const OpContext& c) {
  const std::string& upload = *x.query.get("uploadId");
  const std::string& bucket = c.bucket.name;
  const std::string& key = x.target.key;
  Status st = co_await x.blocking([&] { return x.ctx.store.abort_multipart(bucket, key, upload); });
  if (!st) co_return error_reply(x, st.error());
  Reply r;
  r.status = http::status::no_content;
  r.no_body = true;
  co_return r;
}

asio::awaitable<Reply> list_parts(Exchange& x, const OpContext& c) {
  const std::string& upload = *x.query.get("uploadId");
  const std::string& bucket = c.bucket.name;
  const std::string& key = x.target.key;
  uint64_t max_parts = 1000, marker = 0;
  if (const std::string* v = x.query.get("max-parts")) {
    auto n = parse_u64(*v);
    if (!n) co_return error_reply(x, ObjErrc::invalid_argument, "max-parts must be an integer");
    max_parts = std::min<uint64_t>(*n, 1000);
  }
  if (const std::string* v = x.query.get("part-number-marker")) {
    auto n = parse_u64(*v);
    if (!n) co_return error_reply(x, ObjErrc::invalid_argument, "part-number-marker must be an integer");
    marker = *n;
  }
  auto parts = co_await x.blocking([&] { return x.ctx.store.list_parts(bucket, key, upload); });
  if (!parts) co_return error_reply(x, parts.error());
  std::vector<PartInfo> ps = std::move(parts).value();
  std::sort(ps.begin(), ps.end(),
            [](const PartInfo& a, const PartInfo& b) { return a.part_number < b.part_number; });
  XmlWriter w("ListPartsResult");
  w.element("Bucket", bucket);
  w.element("Key", key);
  w.element("UploadId", upload);
  owner_xml(w, "Initiator", c.bucket.owner);
  owner_xml(w, "Owner", c.bucket.owner);
  w.element("StorageClass", "STANDARD");
  w.element("PartNumberMarker", marker);
  std::vector<const PartInfo*> page;
  bool truncated = false;
  for (const PartInfo& p : ps) {
    if (p.part_number <= marker) continue;
    if (page.size() == max_parts) {
      truncated = true;
      break;
    }
    page.push_back(&p);
  }
  w.element("NextPartNumberMarker",
            static_cast<uint64_t>(page.empty() ? marker : page.back()->part_number));
  w.element("MaxParts", max_parts);
  w.element_bool("IsTruncated", truncated);
  for (const PartInfo* p : page) {
    w.open("Part");
    w.element("PartNumber", static_cast<uint64_t>(p->part_number));
    w.element("LastModified", iso8601_ms(p->mtime_unix_ms));
    w.element("ETag", quote_etag(p->etag));
    w.element("Size", p->size_bytes);
    for (const auto& [algo, value] : p->checksums) {
      auto a = parse_checksum_algorithm(algo);
      if (a) w.element("Checksum" + std::string(checksum_algorithm_name(*a)), value);
    }
    w.close("Part");
  }
  co_return xml_reply(w.finish());
}

asio::awaitable<Reply> list_uploads(Exchange& x, const OpContext& c) {
  auto get = [&](const char* name) -> std::string {
    const std::string* v = x.query.get(name);
    return v ? *v : std::string();
  };
  std::string prefix = get("prefix"), delimiter = get("delimiter"), key_marker = get("key-marker"),
              id_marker = get("upload-id-marker");
  bool url = false;
  if (const std::string* e = x.query.get("encoding-type")) {
    if (!iequals_ascii(*e, "url"))
      co_return error_reply(x, ObjErrc::invalid_argument, "Invalid Encoding Method specified in Request");
    url = true;
  }
  uint64_t max_uploads = 1000;
  if (const std::string* v = x.query.get("max-uploads")) {
    auto n = parse_u64(*v);
    if (!n) co_return error_reply(x, ObjErrc::invalid_argument, "max-uploads must be an integer");
    max_uploads = std::min<uint64_t>(*n, 1000);
  }
  const std::string& bucket = c.bucket.name;
  auto uploads = co_await x.blocking([&] { return x.ctx.store.list_uploads(bucket, prefix); });
  if (!uploads) co_return error_reply(x, uploads.error());
  std::vector<UploadInfo> us = std::move(uploads).value();
  std::sort(us.begin(), us.end(), [](const UploadInfo& a, const UploadInfo& b) {
    if (a.key != b.key) return a.key < b.key;
    if (a.initiated_unix_ms != b.initiated_unix_ms) return a.initiated_unix_ms < b.initiated_unix_ms;
    return a.upload_id < b.upload_id;
  });
  auto e = [&](std::string_view s) { return url ? url_encode(s, true) : std::string(s); };
  std::vector<const UploadInfo*> page;
  std::vector<std::string> prefixes;
  bool truncated = false;
  std::string next_key, next_id;
  for (const UploadInfo& u : us) {
    if (u.key.compare(0, prefix.size(), prefix) != 0) continue;
    if (!key_marker.empty()) {
      if (u.key < key_marker) continue;
      if (u.key == key_marker && (id_marker.empty() || u.upload_id <= id_marker)) continue;
    }
    std::string common;
    if (!delimiter.empty()) {
      size_t d = u.key.find(delimiter, prefix.size());
      if (d != std::string::npos) common = u.key.substr(0, d + delimiter.size());
    }
    if (!common.empty() && !prefixes.empty() && prefixes.back() == common) continue;
    if (page.size() + prefixes.size() == max_uploads) {
      truncated = true;
      break;
    }
    if (!common.empty()) {
      prefixes.push_back(common);
      next_key = common;
      next_id.clear();
    } else {
      page.push_back(&u);
      next_key = u.key;
      next_id = u.upload_id;
    }
  }
  XmlWriter w("ListMultipartUploadsResult");
  w.element("Bucket", bucket);
  w.element("KeyMarker", e(key_marker));
  w.element("UploadIdMarker", id_marker);
  if (truncated) {
    w.element("NextKeyMarker", e(next_key));
    w.element("NextUploadIdMarker", next_id);
  }
  if (!delimiter.empty()) w.element("Delimiter", e(delimiter));
  w.element("Prefix", e(prefix));
  w.element("MaxUploads", max_uploads);
  if (url) w.element("EncodingType", "url");
  w.element_bool("IsTruncated", truncated);
  for (const UploadInfo* u : page) {
    w.open("Upload");
    w.element("Key", e(u->key));
    w.element("UploadId", u->upload_id);
    owner_xml(w, "Initiator", c.bucket.owner);
    owner_xml(w, "Owner", c.bucket.owner);
    w.element("StorageClass", "STANDARD");
    w.element("Initiated", iso8601_ms(u->initiated_unix_ms));
    w.close("Upload");
  }
  for (const std::string& p : prefixes) {
    w.open("CommonPrefixes");
    w.element("Prefix", e(p));
    w.close("CommonPrefixes");
  }
  co_return xml_reply(w.finish());
}

}  // namespace cairn::objectd
