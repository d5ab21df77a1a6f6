#include "s3_admin_client.h"

#include <google/protobuf/util/json_util.h>

#include <chrono>
#include <optional>

#include "common/asio.h"
#include "http_url.h"
#include "json_reply.h"

namespace cairn::client {
namespace {

using tcp = asio::ip::tcp;
namespace outcome = boost::outcome_v2;

constexpr size_t kReplyBodyMaxBytes = 16 * 1024 * 1024;
constexpr std::string_view kAdminPrefix = "/_cairn/admin";

// The admin API lives at the endpoint's root: a path prefix is refused.
std::optional<HttpUrl> parse_endpoint(std::string_view url) {
  auto u = parse_http_url(url);
  if (!u || !u->prefix.empty()) return std::nullopt;
  return u;
}

ClientError make_error(std::error_code code, int http_status, std::string message) {
  return ClientError{code, http_status, std::move(message)};
}

std::error_code transport_code(const beast::error_code& ec) {
  if (ec.category() == asio::error::get_system_category()) return errno_code(ec.value());
  if (ec == beast::error::timeout) return errno_code(ETIMEDOUT);
  return Errc::unavailable;
}

std::string to_json(const google::protobuf::Message& msg) {
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(msg, &out, {});
  return out;
}

// Text of the first <tag>...</tag> (S3 XML errors), empty if absent.
std::string xml_text(const std::string& body, const std::string& tag) {
  size_t a = body.find("<" + tag + ">");
  if (a == std::string::npos) return {};
  a += tag.size() + 2;
  size_t b = body.find("</" + tag + ">", a);
  return b == std::string::npos ? std::string() : body.substr(a, b - a);
}

// A non-2xx answer: AdminError JSON, or an S3 XML error, or only a status.
ClientError reply_error(const HttpReply& reply) {
  std::string code, message;
  cairn::v1::AdminError err;
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = true;
  if (!reply.body.empty() && reply.body.front() == '{' &&
      google::protobuf::util::JsonStringToMessage(reply.body, &err, opts).ok()) {
    code = err.code();
    message = err.message();
  } else if (reply.body.find("<Error>") != std::string::npos) {
    code = xml_text(reply.body, "Code");
    message = xml_text(reply.body, "Message");
  }
  std::string line = "HTTP " + std::to_string(reply.status);
  std::string_view reason = to_std(http::obsolete_reason(static_cast<http::status>(reply.status)));
  if (!reason.empty()) line += " " + std::string(reason);
  if (!code.empty() || !message.empty()) {
    line = code.empty() ? message : message.empty() ? code : code + ": " + message;
  }
  return make_error(s3_error_code(code, reply.status), reply.status, line);
}

template <class M>
ClientResult<M> decode(ClientResult<HttpReply> reply, int expected_status) {
  if (!reply) return outcome::failure(std::move(reply.error()));
  if (reply.value().status != expected_status) return outcome::failure(reply_error(reply.value()));
  return parse_json_reply<M>(reply.value());
}

std::string encode_segment(std::string_view s) { return sigv4::uri_encode(s, true); }

int64_t system_now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// One request on a fresh connection, driven on a private io_context.
class Exchange {
 public:
  Exchange(const HttpUrl& ep, std::chrono::milliseconds timeout)
      : ep_(ep), timeout_(timeout), stream_(ioc_) {}

  // Returns the error (if any) and the stage it happened in.
  beast::error_code run(const http::request<http::string_body>& req, HttpReply& reply,
                        std::string& stage) {
    std::exception_ptr failure;
    asio::co_spawn(ioc_, go(req, reply, stage), [&failure](std::exception_ptr e) { failure = e; });
    ioc_.run();
    if (failure) std::rethrow_exception(failure);  // only bad_alloc can get here
    return ec_;
  }

 private:
  asio::awaitable<void> go(const http::request<http::string_body>& req, HttpReply& reply,
                           std::string& stage) {
    auto use = asio::redirect_error(asio::use_awaitable, ec_);
    stage = "resolve";
    tcp::resolver resolver(ioc_);
    auto endpoints = co_await resolver.async_resolve(ep_.host, ep_.port, use);
    if (ec_) co_return;
    stage = "connect";
    stream_.expires_after(timeout_);
    co_await stream_.async_connect(endpoints, use);
    if (ec_) co_return;
    stage = "write";
    stream_.expires_after(timeout_);
    co_await http::async_write(stream_, req, use);
    if (ec_) co_return;
    stage = "read";
    http::response_parser<http::string_body> parser;
    parser.body_limit(kReplyBodyMaxBytes);
    stream_.expires_after(timeout_);
    co_await http::async_read(stream_, buffer_, parser, use);
    if (ec_) co_return;
    auto res = parser.release();
    reply.status = static_cast<int>(res.result_int());
    reply.content_type = std::string(res[http::field::content_type]);
    reply.body = std::move(res.body());
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
  }

  const HttpUrl& ep_;
  std::chrono::milliseconds timeout_;
  asio::io_context ioc_{1};
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  beast::error_code ec_;
};

}  // namespace

Result<sigv4::HeaderList> sign_admin_request(
    std::string_view method, std::string_view host_header, std::string_view target,
    std::string_view body, const sigv4::Credentials& credentials, int64_t now_unix_s,
    const std::string& region) {
  sigv4::HeaderList extra;
  if (!body.empty()) extra.emplace_back("content-type", "application/json");
  if (!body.empty() || method == "POST" || method == "PUT")
    extra.emplace_back("content-length", std::to_string(body.size()));
  sigv4::SignOptions so;
  so.region = region;
  so.now_unix_s = now_unix_s;
  so.payload_hash = sigv4::sha256_hex(body);
  return sigv4::sign_request(method, host_header, target, credentials, so, std::move(extra));
}

std::error_code s3_error_code(std::string_view code, int http_status) {
  static const std::pair<std::string_view, Errc> kCodes[] = {
      {"AccessDenied", Errc::permission_denied},
      {"SignatureDoesNotMatch", Errc::permission_denied},
      {"InvalidAccessKeyId", Errc::permission_denied},
      {"RequestTimeTooSkewed", Errc::permission_denied},
      {"AlreadyExists", Errc::already_exists},
      {"NotFound", Errc::not_found},
      {"InvalidArgument", Errc::invalid_argument},
      {"InvalidRequest", Errc::invalid_argument},
      {"MethodNotAllowed", Errc::unsupported},
      {"NotImplemented", Errc::unsupported},
      {"ServiceUnavailable", Errc::unavailable},
      {"SlowDown", Errc::unavailable},
  };
  for (const auto& [name, errc] : kCodes)
    if (name == code) return errc;
  return api_error_code("", http_status);
}

S3AdminClient::S3AdminClient(std::string endpoint, sigv4::Credentials credentials)
    : S3AdminClient(std::move(endpoint), std::move(credentials), Options{}) {}

S3AdminClient::S3AdminClient(std::string endpoint, sigv4::Credentials credentials,
                             Options options)
    : endpoint_(std::move(endpoint)),
      credentials_(std::move(credentials)),
      options_(std::move(options)) {
  while (!endpoint_.empty() && endpoint_.back() == '/') endpoint_.pop_back();
  if (!options_.now_unix_s) options_.now_unix_s = system_now_s;
}

S3AdminClient::~S3AdminClient() = default;

ClientResult<HttpReply> S3AdminClient::raw(std::string_view method, std::string_view target,
                                           std::string body) {
  auto ep = parse_endpoint(endpoint_);
  if (!ep) {
    return outcome::failure(make_error(
        Errc::invalid_argument, 0,
        "invalid S3 endpoint \"" + endpoint_ + "\" (expected http://host:port)"));
  }
  auto headers = sign_admin_request(method, ep->host_header, target, body, credentials_,
                                    options_.now_unix_s(), options_.region);
  if (!headers) {
    return outcome::failure(make_error(headers.error(), 0,
                                       "cannot sign the request: " + headers.error().message()));
  }
  http::request<http::string_body> req;
  req.method(http::string_to_verb(to_beast(method)));
  if (req.method() == http::verb::unknown) req.method_string(to_beast(method));
  req.target(to_beast(target));
  req.version(11);
  for (const auto& [name, value] : headers.value()) req.set(name, value);
  req.set(http::field::user_agent, "cairn-client");
  req.set(http::field::accept, "application/json");
  req.keep_alive(false);
  req.body() = std::move(body);

  HttpReply reply;
  std::string stage;
  Exchange ex(*ep, options_.timeout_ms);
  beast::error_code ec = ex.run(req, reply, stage);
  if (!ec) return reply;
  if (ec == beast::error::timeout) {
    return outcome::failure(make_error(errno_code(ETIMEDOUT), 0,
                                       endpoint_ + ": no answer within " +
                                           std::to_string(options_.timeout_ms.count()) + " ms"));
  }
  if (stage == "resolve")
    return outcome::failure(make_error(Errc::unavailable, 0,
                                       "cannot resolve " + ep->host + " (" + endpoint_ +
                                           "): " + ec.message()));
  if (stage == "connect")
    return outcome::failure(make_error(transport_code(ec), 0,
                                       "cannot connect to " + endpoint_ + ": " + ec.message()));
  return outcome::failure(
      make_error(transport_code(ec), 0, "request to " + endpoint_ + " failed: " + ec.message()));
}

ClientResult<cairn::v1::Tenant> S3AdminClient::create_tenant(const std::string& name) {
  cairn::v1::Tenant req;
  req.set_name(name);
  return decode<cairn::v1::Tenant>(
      raw("POST", std::string(kAdminPrefix) + "/tenants", to_json(req)), 201);
}

ClientResult<cairn::v1::ListTenantsResponse> S3AdminClient::list_tenants() {
  return decode<cairn::v1::ListTenantsResponse>(
      raw("GET", std::string(kAdminPrefix) + "/tenants"), 200);
}

ClientResult<cairn::v1::S3AccessKey> S3AdminClient::create_access_key(const std::string& tenant) {
  return decode<cairn::v1::S3AccessKey>(
      raw("POST", std::string(kAdminPrefix) + "/tenants/" + encode_segment(tenant) + "/keys"),
      201);
}

ClientResult<cairn::v1::HealStatus> S3AdminClient::start_heal() {
  return decode<cairn::v1::HealStatus>(raw("POST", std::string(kAdminPrefix) + "/heal"), 202);
}

ClientResult<cairn::v1::HealStatus> S3AdminClient::heal_status() {
  return decode<cairn::v1::HealStatus>(raw("GET", std::string(kAdminPrefix) + "/heal"), 200);
}

}  // namespace cairn::client
