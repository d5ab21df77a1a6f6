// S3AdminClient: a synchronous client of objectd's admin API (/_cairn/admin/, JSON through
// protobuf's mapping, docs/S3_API.md "Admin API"): tenants, access keys, heal.
//
// Owned by its caller (the `cairn` CLI, tests). Not thread-safe: one client per thread.
// Every request is signed with AWS Signature V4 (service s3, common/sigv4.h) with the
// given credentials, which must be objectd's root key for the admin API to answer. One
// connection per request (the CLI makes few, and a heal poll a second). Every network step
// (resolve, connect, write, read) is bounded by `timeout_ms`. A non-2xx answer becomes a
// ClientError carrying the server's code (AdminError JSON, or S3 XML) and message; transport
// failures have http_status 0 and a message naming the endpoint.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cairn/v1/objectd_admin.pb.h"
#include "client/control_client.h"
#include "common/sigv4.h"

namespace cairn::client {

// The signed headers of one admin request (host, content-type/-length when there is a
// body, x-amz-date, x-amz-content-sha256, authorization), in the order to send them: the
// admin API's headers over sigv4::sign_request. `target` is the path and query as sent
// (already %-encoded).
Result<sigv4::HeaderList> sign_admin_request(
    std::string_view method, std::string_view host_header, std::string_view target,
    std::string_view body, const sigv4::Credentials& credentials, int64_t now_unix_s,
    const std::string& region = "us-east-1");

// Maps an S3 or admin error code ("AccessDenied", "AlreadyExists", ...) to an Errc; unknown
// codes fall back on the HTTP status.
std::error_code s3_error_code(std::string_view code, int http_status);

class S3AdminClient {
 public:
  struct Options {
    std::chrono::milliseconds timeout_ms{30'000};
    std::string region = "us-east-1";
    // Signing time; defaults to the system clock.
    std::function<int64_t()> now_unix_s;
  };

  // endpoint: http://host[:port] (IPv6 as http://[::1]:9000).
  S3AdminClient(std::string endpoint, sigv4::Credentials credentials);
  S3AdminClient(std::string endpoint, sigv4::Credentials credentials, Options options);
  ~S3AdminClient();
  S3AdminClient(const S3AdminClient&) = delete;
  S3AdminClient& operator=(const S3AdminClient&) = delete;

  ClientResult<cairn::v1::Tenant> create_tenant(const std::string& name);
  ClientResult<cairn::v1::ListTenantsResponse> list_tenants();
  ClientResult<cairn::v1::S3AccessKey> create_access_key(const std::string& tenant);
  // Starts a full pass (a no-op if one runs) and returns the status right after.
  ClientResult<cairn::v1::HealStatus> start_heal();
  ClientResult<cairn::v1::HealStatus> heal_status();

  // One signed request as given (target = path and query). Answers of any status are
  // values; only transport failures are errors.
  ClientResult<HttpReply> raw(std::string_view method, std::string_view target,
                              std::string body = {});

  const std::string& endpoint() const { return endpoint_; }

 private:
  std::string endpoint_;
  sigv4::Credentials credentials_;
  Options options_;
};

}  // namespace cairn::client
