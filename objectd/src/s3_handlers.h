// S3 operations, one function each; dispatch() (s3_handlers.cc) routes a request to one of
// them after authentication and, for bucket and object operations, after the bucket access
// check (x.bucket holds the bucket then). Each returns the reply; none throws.
#pragma once

#include <optional>
#include <string>

#include "s3_exchange.h"
#include "s3_xml.h"

namespace cairn::objectd {

// Per-request state the router fills for the operations.
struct OpContext {
  BucketInfo bucket;  // the target bucket (checked: the caller may use it as `op` needs)
};

// s3_objects.cc
asio::awaitable<Reply> put_object(Exchange& x, const OpContext& c);
asio::awaitable<Reply> copy_object(Exchange& x, const OpContext& c);
asio::awaitable<Reply> get_object(Exchange& x, const OpContext& c);  // GET and HEAD
asio::awaitable<Reply> delete_object(Exchange& x, const OpContext& c);
asio::awaitable<Reply> delete_objects(Exchange& x, const OpContext& c);
asio::awaitable<Reply> create_multipart(Exchange& x, const OpContext& c);
asio::awaitable<Reply> upload_part(Exchange& x, const OpContext& c);  // and UploadPartCopy
asio::awaitable<Reply> complete_multipart(Exchange& x, const OpContext& c);
asio::awaitable<Reply> abort_multipart(Exchange& x, const OpContext& c);
asio::awaitable<Reply> list_parts(Exchange& x, const OpContext& c);
asio::awaitable<Reply> list_uploads(Exchange& x, const OpContext& c);

// s3_admin.cc: /_cairn/admin/... (x.auth is verified; root is checked there).
asio::awaitable<Reply> admin(Exchange& x);
// An error in the admin API's JSON shape (AdminError).
Reply admin_error_reply(const S3Error& e);

// Shared helpers (s3_handlers.cc).
Reply xml_reply(std::string body, http::status status = http::status::ok);
Reply error_reply(const Exchange& x, const std::error_code& ec, std::string message = {});
// Checks that the caller may use `bucket` (owner, or anonymous/any read of a public bucket
// when public_read_ok). An S3 error (NoSuchBucket, AccessDenied, ...) when not.
asio::awaitable<std::optional<S3Error>> check_bucket(Exchange& x, const std::string& bucket,
                                                     bool public_read_ok, BucketInfo& out);
std::string quote_etag(const std::string& etag);
void owner_xml(XmlWriter& w, std::string_view tag, const std::string& tenant);

}  // namespace cairn::objectd
