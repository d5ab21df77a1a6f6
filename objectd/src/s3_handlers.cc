// Routing, authentication and access checks, and the service/bucket operations.
#include <algorithm>
#include <array>
#include <cstring>

#include "common/checksums.h"
#include "common/log.h"
#include "s3_handlers.h"

namespace cairn::objectd {
namespace {

constexpr const char* kLog = "s3";

// Sub-resources S3 defines that Cairn does not implement: 501 NotImplemented.
constexpr std::array<std::string_view, 27> kUnsupportedSubresources = {
    "accelerate", "analytics",     "cors",         "encryption", "intelligent-tiering",
    "inventory",  "lifecycle",     "logging",      "metrics",    "notification",
    "object-lock", "ownershipControls", "policy",  "policyStatus", "publicAccessBlock",
    "replication", "requestPayment", "restore",    "retention",  "legal-hold",
    "select",     "tagging",       "torrent",      "versions",   "website",
    "attributes", "renameObject"};

bool wants_url_encoding(const Exchange& x, std::optional<S3Error>& err) {
  const std::string* e = x.query.get("encoding-type");
  if (!e) return false;
  if (iequals_ascii(*e, "url")) return true;
  err = s3_error(http::status::bad_request, "InvalidArgument",
                 "Invalid Encoding Method specified in Request");
  return false;
}

std::string enc(bool url, std::string_view s) { return url ? url_encode(s, true) : std::string(s); }

Reply not_implemented(const Exchange& x, std::string what) {
  return error_reply(x, s3_error(http::status::not_implemented, "NotImplemented",
                                 what + " is not implemented by Cairn."));
}

Reply method_not_allowed(const Exchange& x) {
  return error_reply(x, s3_error(http::status::method_not_allowed, "MethodNotAllowed",
                                 "The specified method is not allowed against this resource."));
}

// ---- health and metrics (no auth) ----

asio::awaitable<Reply> healthz(Exchange& x) {
  x.op = "Healthz";
  int online = co_await x.blocking([&] { return x.ctx.store.drives_online(); });
  Reply r;
  r.body = "ok drives_online=" + std::to_string(online) + "\n";
  r.headers.set(http::field::content_type, "text/plain; charset=utf-8");
  co_return r;
}

asio::awaitable<Reply> metrics(Exchange& x) {
  x.op = "Metrics";
  int online = co_await x.blocking([&] { return x.ctx.store.drives_online(); });
  x.ctx.metrics.gauge("cairn_objectd_drives_online", {}, "Drives of this node currently usable")
      .set(online);
  Reply r;
  r.body = x.ctx.metrics.render();
  r.headers.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
  co_return r;
}

// ---- service ----

asio::awaitable<Reply> list_buckets(Exchange& x) {
  x.op = "ListBuckets";
  if (x.auth.anonymous) co_return error_reply(x, ObjErrc::access_denied);
  auto buckets = co_await x.blocking([&] { return x.ctx.store.list_buckets(x.auth.key.tenant); });
  std::sort(buckets.begin(), buckets.end(),
            [](const BucketInfo& a, const BucketInfo& b) { return a.name < b.name; });
  XmlWriter w("ListAllMyBucketsResult");
  owner_xml(w, "Owner", x.auth.key.tenant);
  w.open("Buckets");
  for (const BucketInfo& b : buckets) {
    w.open("Bucket");
    w.element("Name", b.name);
    w.element("CreationDate", iso8601_ms(b.created_unix_s * 1000));
    w.close("Bucket");
  }
  w.close("Buckets");
  co_return xml_reply(w.finish());
}

// ---- buckets ----

// Canned ACLs on buckets: private and public-read only.
std::optional<bool> canned_bucket_acl(std::string_view acl) {
  if (acl.empty() || acl == "private") return false;
  if (acl == "public-read") return true;
  return std::nullopt;
}

asio::awaitable<Reply> create_bucket(Exchange& x) {
  x.op = "CreateBucket";
  if (x.auth.anonymous) co_return error_reply(x, ObjErrc::access_denied);
  std::string_view acl = trim(x.header("x-amz-acl"));
  auto public_read = canned_bucket_acl(acl);
  if (!public_read) co_return not_implemented(x, "The canned ACL '" + std::string(acl) + "'");
  if (iequals_ascii(trim(x.header("x-amz-bucket-object-lock-enabled")), "true"))
    co_return not_implemented(x, "Object Lock");
  auto body = co_await x.read_small_payload(64 * 1024);
  if (!body) {
    if (body.error() == ObjErrc::entity_too_large) co_return error_reply(x, ObjErrc::malformed_xml);
    co_return error_reply(x, x.body_error(body.error()));
  }
  std::string location;
  Status parsed = parse_create_bucket_configuration(body.value(), location);
  if (!parsed) co_return error_reply(x, parsed.error());
  const std::string& tenant = x.auth.key.tenant;
  const std::string& bucket = x.target.bucket;
  Status st = co_await x.blocking([&] { return x.ctx.store.create_bucket(tenant, bucket); });
  if (!st) co_return error_reply(x, st.error());
  if (*public_read) {
    st = co_await x.blocking([&] { return x.ctx.store.set_bucket_public(bucket, true); });
    if (!st) co_return error_reply(x, st.error());
  }
  CAIRN_LOG_INFO(kLog, "tenant %s created bucket %s%s", tenant.c_str(), bucket.c_str(),
                 *public_read ? " (public-read)" : "");
  Reply r;
  r.headers.set(http::field::location, "/" + bucket);
  r.headers.set(http::field::content_length, "0");
  co_return r;
}

asio::awaitable<Reply> put_bucket_acl(Exchange& x, const OpContext& c) {
  x.op = "PutBucketAcl";
  std::string_view acl = trim(x.header("x-amz-acl"));
  std::optional<bool> public_read;
  if (acl.empty()) {
    // An AccessControlPolicy document: accepted when a canned ACL could say the same.
    auto body = co_await x.read_small_payload(64 * 1024);
    if (!body) {
      if (body.error() == ObjErrc::entity_too_large) co_return error_reply(x, ObjErrc::malformed_xml);
      co_return error_reply(x, x.body_error(body.error()));
    }
    auto parsed = parse_access_control_policy(body.value(), c.bucket.owner);
    if (!parsed && parsed.error() == ObjErrc::not_implemented)
      co_return not_implemented(x, "Grants other than the owner's FULL_CONTROL and AllUsers READ");
    if (!parsed) co_return error_reply(x, parsed.error());
    public_read = parsed.value();
  } else {
    public_read = canned_bucket_acl(acl);
    if (!public_read) co_return not_implemented(x, "The canned ACL '" + std::string(acl) + "'");
  }
  const std::string& bucket = c.bucket.name;
  Status st = co_await x.blocking(
      [&] { return x.ctx.store.set_bucket_public(bucket, *public_read); });
  if (!st) co_return error_reply(x, st.error());
  co_return Reply{};
}

void acl_xml(XmlWriter& w, const std::string& owner, bool public_read) {
  owner_xml(w, "Owner", owner);
  w.open("AccessControlList");
  w.open("Grant");
  w.open(
      "Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" "
      "xsi:type=\"CanonicalUser\"");
  w.element("ID", owner);
  w.element("DisplayName", owner);
  w.close("Grantee");
  w.element("Permission", "FULL_CONTROL");
  w.close("Grant");
  if (public_read) {
    w.open("Grant");
    w.open("Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"Group\"");
    w.element("URI", "http://acs.amazonaws.com/groups/global/AllUsers");
    w.close("Grantee");
    w.element("Permission", "READ");
    w.close("Grant");
  }
  w.close("AccessControlList");
}

Reply get_acl(Exchange& x, const OpContext& c, const char* op) {
  x.op = op;
  XmlWriter w("AccessControlPolicy");
  acl_xml(w, c.bucket.owner, c.bucket.public_read);
  return xml_reply(w.finish());
}

asio::awaitable<Reply> delete_bucket(Exchange& x, const OpContext& c) {
  x.op = "DeleteBucket";
  const std::string& bucket = c.bucket.name;
  Status st = co_await x.blocking([&] { return x.ctx.store.delete_bucket(bucket); });
  if (!st) co_return error_reply(x, st.error());
  CAIRN_LOG_INFO(kLog, "tenant %s deleted bucket %s", x.auth.key.tenant.c_str(), bucket.c_str());
  Reply r;
  r.status = http::status::no_content;
  r.no_body = true;
  co_return r;
}

Reply head_bucket(Exchange& x, const OpContext&) {
  x.op = "HeadBucket";
  Reply r;
  r.headers.set("x-amz-bucket-region", x.ctx.options.region);
  r.no_body = true;
  r.content_length = 0;
  return r;
}

Reply get_bucket_location(Exchange& x, const OpContext&) {
  x.op = "GetBucketLocation";
  // us-east-1 is the empty constraint, as S3 answers.
  std::string region = x.ctx.options.region == "us-east-1" ? "" : x.ctx.options.region;
  XmlWriter w("LocationConstraint");
  std::string doc = w.finish();
  // <LocationConstraint xmlns="...">region</LocationConstraint>
  size_t close = doc.rfind("</LocationConstraint>");
  doc.insert(close, XmlWriter::escape(region));
  return xml_reply(std::move(doc));
}

Reply get_bucket_versioning(Exchange& x, const OpContext&) {
  x.op = "GetBucketVersioning";
  XmlWriter w("VersioningConfiguration");
  return xml_reply(w.finish());
}

// ListObjects (v1) and ListObjectsV2.
asio::awaitable<Reply> list_objects(Exchange& x, const OpContext& c, bool v2) {
  x.op = v2 ? "ListObjectsV2" : "ListObjects";
  std::optional<S3Error> err;
  bool url = wants_url_encoding(x, err);
  if (err) co_return error_reply(x, *err);
  ListRequest lr;
  auto get = [&](const char* name) -> std::string {
    const std::string* v = x.query.get(name);
    return v ? *v : std::string();
  };
  lr.prefix = get("prefix");
  lr.delimiter = get("delimiter");
  uint32_t max_keys = 1000;
  if (const std::string* mk = x.query.get("max-keys")) {
    auto n = parse_u64(trim(*mk));
    if (!n) {
      co_return error_reply(x, s3_error(http::status::bad_request, "InvalidArgument",
                                        "Provided max-keys not an integer or within integer "
                                        "range"));
    }
    max_keys = static_cast<uint32_t>(std::min<uint64_t>(*n, 1000));
  }
  lr.max_keys = max_keys;
  std::string marker, start_after, token;
  bool has_token = false;
  if (v2) {
    start_after = get("start-after");
    lr.start_after = start_after;
    if (const std::string* t = x.query.get("continuation-token")) {
      has_token = true;
      token = *t;
      auto decoded = base64_decode(token);
      if (!decoded || decoded->empty()) {
        co_return error_reply(x, s3_error(http::status::bad_request, "InvalidArgument",
                                          "The continuation token provided is incorrect"));
      }
      lr.start_after = std::max(*decoded, start_after);
    }
  } else {
    marker = get("marker");
    lr.start_after = marker;
  }
  const std::string& bucket = c.bucket.name;
  auto res = co_await x.blocking([&] { return x.ctx.store.list_objects(bucket, lr); });
  if (!res) co_return error_reply(x, res.error());
  const ListResult& l = res.value();

  XmlWriter w("ListBucketResult");
  w.element("Name", bucket);
  w.element("Prefix", enc(url, lr.prefix));
  if (v2) {
    if (x.query.has("start-after")) w.element("StartAfter", enc(url, start_after));
    if (has_token) w.element("ContinuationToken", token);
    if (l.is_truncated && !l.next_marker.empty())
      w.element("NextContinuationToken", base64_encode(l.next_marker.data(), l.next_marker.size()));
    w.element("KeyCount", static_cast<uint64_t>(l.objects.size() + l.common_prefixes.size()));
  } else {
    w.element("Marker", enc(url, marker));
    if (l.is_truncated && !lr.delimiter.empty() && !l.next_marker.empty())
      w.element("NextMarker", enc(url, l.next_marker));
  }
  w.element("MaxKeys", static_cast<uint64_t>(max_keys));
  if (!lr.delimiter.empty()) w.element("Delimiter", enc(url, lr.delimiter));
  if (url) w.element("EncodingType", "url");
  w.element_bool("IsTruncated", l.is_truncated);
  bool fetch_owner = !v2 || iequals_ascii(get("fetch-owner"), "true");
  for (const ObjectMeta& m : l.objects) {
    w.open("Contents");
    w.element("Key", enc(url, m.key));
    w.element("LastModified", iso8601_ms(m.mtime_unix_ms));
    w.element("ETag", quote_etag(m.etag));
    w.element("Size", m.size_bytes);
    if (fetch_owner) owner_xml(w, "Owner", c.bucket.owner);
    w.element("StorageClass", "STANDARD");
    w.close("Contents");
  }
  for (const std::string& p : l.common_prefixes) {
    w.open("CommonPrefixes");
    w.element("Prefix", enc(url, p));
    w.close("CommonPrefixes");
  }
  co_return xml_reply(w.finish());
}

// ---- routing ----

enum class Access { owner, public_read };

struct Route {
  const char* op = "Unknown";
  Access access = Access::owner;
  bool needs_bucket = true;
};

bool is_signed(const Exchange& x) {
  return !x.header(http::field::authorization).empty() || x.query.has("X-Amz-Signature") ||
         x.query.has("X-Amz-Credential");
}

}  // namespace

Reply xml_reply(std::string body, http::status status) {
  Reply r;
  r.status = status;
  r.body = std::move(body);
  r.headers.set(http::field::content_type, "application/xml");
  return r;
}

Reply error_reply(const Exchange& x, const std::error_code& ec, std::string message) {
  return error_reply(x, s3_error(ec, std::move(message)));
}

std::string quote_etag(const std::string& etag) { return "\"" + etag + "\""; }

void owner_xml(XmlWriter& w, std::string_view tag, const std::string& tenant) {
  w.open(tag);
  w.element("ID", tenant);
  w.element("DisplayName", tenant);
  w.close(tag);
}

asio::awaitable<std::optional<S3Error>> check_bucket(Exchange& x, const std::string& bucket,
                                                     bool public_read_ok, BucketInfo& out) {
  if (x.auth.anonymous && !public_read_ok) co_return s3_error(ObjErrc::access_denied);
  auto info = co_await x.blocking([&] { return x.ctx.store.get_bucket(bucket); });
  if (!info) co_return s3_error(info.error());
  bool allowed = x.auth.anonymous ? (public_read_ok && info.value().public_read)
                                  : (info.value().owner == x.auth.key.tenant ||
                                     (public_read_ok && info.value().public_read));
  if (!allowed) co_return s3_error(ObjErrc::access_denied);
  out = std::move(info).value();
  co_return std::nullopt;
}

asio::awaitable<Reply> dispatch(Exchange& x) {
  std::string_view target = to_std(x.req().target());
  size_t q = target.find('?');
  x.raw_path = std::string(target.substr(0, q));
  x.raw_query = q == std::string_view::npos ? std::string() : std::string(target.substr(q + 1));
  auto path = url_decode(x.raw_path, false);
  if (!path || x.raw_path.empty() || x.raw_path.front() != '/') {
    co_return error_reply(x, s3_error(http::status::bad_request, "InvalidURI",
                                      "Couldn't parse the specified URI."));
  }
  x.path = std::move(*path);
  auto query = Query::parse(x.raw_query);
  if (!query) {
    co_return error_reply(x, s3_error(http::status::bad_request, "InvalidURI",
                                      "Couldn't parse the specified URI."));
  }
  x.query = std::move(*query);
  http::verb method = x.method();
  bool read_method = method == http::verb::get || method == http::verb::head;

  // Unauthenticated endpoints. A signed request to /metrics is ListObjects of "metrics".
  if (!is_signed(x) && read_method) {
    if (x.raw_path == "/healthz") co_return co_await healthz(x);
    if (x.raw_path == "/metrics") co_return co_await metrics(x);
  }

  bool admin_path = x.raw_path.rfind("/_cairn/admin/", 0) == 0 || x.raw_path == "/_cairn/admin";
  std::string detail;
  auto auth = co_await x.blocking([&] { return x.ctx.auth.authenticate(x.req(), detail); });
  if (!auth) {
    x.op = admin_path ? "Admin" : "Auth";
    std::error_code ec = auth.error();
    if (!detail.empty())
      CAIRN_LOG_DEBUG(kLog, "request %s: auth: %s", x.request_id.c_str(), detail.c_str());
    S3Error e = s3_error(ec);
    if (ec == ObjErrc::request_expired && x.query.has("X-Amz-Signature")) {
      e = s3_error(http::status::forbidden, "AccessDenied", "Request has expired");
    } else if (ec == ObjErrc::invalid_argument) {
      bool presigned = x.query.has("X-Amz-Credential") || x.query.has("X-Amz-Signature");
      e = s3_error(http::status::bad_request,
                   presigned ? "AuthorizationQueryParametersError" : "AuthorizationHeaderMalformed",
                   detail.empty() ? "The authorization header is malformed." : detail);
    } else if (ec == ObjErrc::not_implemented) {
      e = s3_error(http::status::bad_request, "InvalidRequest",
                   "The authorization mechanism you have provided is not supported. Please use "
                   "AWS4-HMAC-SHA256.");
    }
    if (admin_path) co_return admin_error_reply(e);
    co_return error_reply(x, e);
  }
  x.auth = std::move(auth).value();

  if (admin_path) {
    x.op = "Admin";
    co_return co_await admin(x);
  }

  auto t = parse_target(x.header(http::field::host), x.path, x.ctx.options.domains);
  if (!t) {
    co_return error_reply(x, s3_error(http::status::bad_request, "InvalidURI",
                                      "Couldn't parse the specified URI."));
  }
  x.target = std::move(*t);

  for (std::string_view sub : kUnsupportedSubresources) {
    if (x.query.has(sub)) {
      x.op = "Unsupported";
      co_return not_implemented(x, "The '" + std::string(sub) + "' sub-resource");
    }
  }
  if (const std::string* v = x.query.get("versionId"); v && *v != "null") {
    x.op = "Unsupported";
    co_return not_implemented(x, "Versioning");
  }

  // ---- service ----
  if (x.target.bucket.empty()) {
    if (method == http::verb::get) co_return co_await list_buckets(x);
    x.op = "Service";
    co_return method_not_allowed(x);
  }

  // ---- bucket ----
  OpContext c;
  if (x.target.key.empty()) {
    if (method == http::verb::put) {
      if (x.query.has("acl")) {
        auto err = co_await check_bucket(x, x.target.bucket, false, c.bucket);
        x.op = "PutBucketAcl";
        if (err) co_return error_reply(x, *err);
        co_return co_await put_bucket_acl(x, c);
      }
      if (x.query.has("versioning")) co_return not_implemented(x, "Bucket versioning");
      co_return co_await create_bucket(x);
    }
    Route route;
    if (method == http::verb::get) {
      if (x.query.has("location")) route.op = "GetBucketLocation";
      else if (x.query.has("versioning")) route.op = "GetBucketVersioning";
      else if (x.query.has("acl")) route.op = "GetBucketAcl";
      else if (x.query.has("uploads")) route.op = "ListMultipartUploads";
      else if (const std::string* lt = x.query.get("list-type"); lt && *lt == "2") route = {"ListObjectsV2", Access::public_read};
      else route = {"ListObjects", Access::public_read};
    } else if (method == http::verb::head) {
      route.op = "HeadBucket";
    } else if (method == http::verb::delete_) {
      route.op = "DeleteBucket";
    } else if (method == http::verb::post && x.query.has("delete")) {
      route.op = "DeleteObjects";
    } else {
      x.op = "Bucket";
      co_return method_not_allowed(x);
    }
    x.op = route.op;
    auto err = co_await check_bucket(x, x.target.bucket, route.access == Access::public_read,
                                     c.bucket);
    if (err) co_return error_reply(x, *err);
    std::string_view op = route.op;
    if (op == "GetBucketLocation") co_return get_bucket_location(x, c);
    if (op == "GetBucketVersioning") co_return get_bucket_versioning(x, c);
    if (op == "GetBucketAcl") co_return get_acl(x, c, "GetBucketAcl");
    if (op == "ListMultipartUploads") co_return co_await list_uploads(x, c);
    if (op == "ListObjectsV2") co_return co_await list_objects(x, c, true);
    if (op == "ListObjects") co_return co_await list_objects(x, c, false);
    if (op == "HeadBucket") co_return head_bucket(x, c);
    if (op == "DeleteBucket") co_return co_await delete_bucket(x, c);
    co_return co_await delete_objects(x, c);
  }

  // ---- object ----
  if (x.target.key.size() > kKeyBytesMax) {
    x.op = "Object";
    co_return error_reply(x, ObjErrc::key_too_long);
  }
  Route route;
  bool copy = !x.header("x-amz-copy-source").empty();
  if (method == http::verb::put) {
    if (x.query.has("uploadId") || x.query.has("partNumber")) route.op = copy ? "UploadPartCopy" : "UploadPart";
    else if (x.query.has("acl")) route.op = "PutObjectAcl";
    else route.op = copy ? "CopyObject" : "PutObject";
  } else if (method == http::verb::get) {
    if (x.query.has("uploadId")) route.op = "ListParts";
    else if (x.query.has("acl")) route.op = "GetObjectAcl";
    else route = {"GetObject", Access::public_read};
  } else if (method == http::verb::head) {
    route = {"HeadObject", Access::public_read};
  } else if (method == http::verb::delete_) {
    route.op = x.query.has("uploadId") ? "AbortMultipartUpload" : "DeleteObject";
  } else if (method == http::verb::post) {
    if (x.query.has("uploads")) route.op = "CreateMultipartUpload";
    else if (x.query.has("uploadId")) route.op = "CompleteMultipartUpload";
    else {
      x.op = "Object";
      co_return not_implemented(x, "This POST operation");
    }
  } else {
    x.op = "Object";
    co_return method_not_allowed(x);
  }
  x.op = route.op;
  auto err = co_await check_bucket(x, x.target.bucket, route.access == Access::public_read,
                                   c.bucket);
  if (err) co_return error_reply(x, *err);
  std::string_view op = route.op;
  if (op == "PutObject") co_return co_await put_object(x, c);
  if (op == "CopyObject") co_return co_await copy_object(x, c);
  if (op == "UploadPart" || op == "UploadPartCopy") co_return co_await upload_part(x, c);
  if (op == "GetObject" || op == "HeadObject") co_return co_await get_object(x, c);
  if (op == "DeleteObject") co_return co_await delete_object(x, c);
  if (op == "AbortMultipartUpload") co_return co_await abort_multipart(x, c);
  if (op == "CreateMultipartUpload") co_return co_await create_multipart(x, c);
  if (op == "CompleteMultipartUpload") co_return co_await complete_multipart(x, c);
  if (op == "ListParts") co_return co_await list_parts(x, c);
  if (op == "GetObjectAcl") {
    const std::string& bucket = c.bucket.name;
    const std::string& key = x.target.key;
    auto meta = co_await x.blocking([&] { return x.ctx.store.head_object(bucket, key); });
    if (!meta) co_return error_reply(x, meta.error());
    co_return get_acl(x, c, "GetObjectAcl");
  }
  // PutObjectAcl: objects inherit their bucket's access; only "private" is accepted.
  std::string_view acl = trim(x.header("x-amz-acl"));
  if (acl != "private" && acl != "bucket-owner-full-control")
    co_return not_implemented(x, "Object ACLs other than 'private'");
  co_return Reply{};
}

}  // namespace cairn::objectd
