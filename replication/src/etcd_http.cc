#include "etcd_http.h"

#include <google/protobuf/util/json_util.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "cairn/v1/etcd.pb.h"
#include "common/assert.h"
#include "common/net.h"

namespace cairn::replication::detail {

using tcp = asio::ip::tcp;

namespace {
// Keepalive probes on watch streams: a silent peer is declared dead after about
// idle + interval * count seconds.
constexpr int kKeepaliveIdleS = 5;
constexpr int kKeepaliveIntervalS = 2;
constexpr int kKeepaliveCount = 3;
}  // namespace

std::optional<Endpoint> parse_endpoint(std::string_view url) {
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme) return std::nullopt;
  std::string_view rest = url.substr(kScheme.size());
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.empty() || rest.find('/') != std::string_view::npos) return std::nullopt;
  auto host_port = parse_host_port(rest);
  if (!host_port || host_port->second == 0) return std::nullopt;
  Endpoint ep;
  ep.url = std::string(url);
  ep.host = host_port->first;
  ep.port = host_port->second;
  ep.host_header = format_host_port(ep.host, ep.port);
  return ep;
}

std::string prefix_end(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    auto last = static_cast<unsigned char>(end.back());
    if (last < 0xff) {
      end.back() = static_cast<char>(last + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');
}

HttpConnection::HttpConnection(asio::io_context& ioc, Endpoint endpoint)
    : ioc_(ioc), endpoint_(std::move(endpoint)), stream_(ioc) {}

template <class Initiate>
beast::error_code HttpConnection::run(Initiate&& initiate) {
  beast::error_code result;
  bool done = false;
  initiate([&result, &done](beast::error_code ec, auto&&...) {
    result = ec;
    done = true;
  });
  ioc_.restart();
  ioc_.run();
  CAIRN_ASSERT(done);
  return result;
}

beast::error_code HttpConnection::connect(Clock::time_point deadline) {
  close();
  std::vector<tcp::endpoint> targets;
  beast::error_code ec;
  auto address = asio::ip::make_address(endpoint_.host, ec);
  if (!ec) {
    targets.emplace_back(address, endpoint_.port);
  } else {
    // A host name: resolve it, bounded by the deadline like everything else.
    tcp::resolver resolver(ioc_);
    asio::steady_timer timer(ioc_);
    bool timed_out = false;
    beast::error_code resolve_ec;
    timer.expires_at(deadline);
    timer.async_wait([&](beast::error_code tec) {
      if (!tec) {
        timed_out = true;
        resolver.cancel();
      }
    });
    resolver.async_resolve(endpoint_.host, std::to_string(endpoint_.port),
                           [&](beast::error_code rec, tcp::resolver::results_type results) {
                             resolve_ec = rec;
                             for (const auto& r : results) targets.push_back(r.endpoint());
                             timer.cancel();
                           });
    ioc_.restart();
    ioc_.run();
    if (timed_out) return beast::error::timeout;
    if (resolve_ec) return resolve_ec;
    if (targets.empty()) return asio::error::host_not_found;
  }
  stream_.expires_at(deadline);
  ec = run([&](auto handler) { stream_.async_connect(targets, std::move(handler)); });
  if (ec) {
    close();
    return ec;
  }
  beast::error_code ignored;
  stream_.socket().set_option(tcp::no_delay(true), ignored);
  return {};
}

void HttpConnection::enable_keepalive_probes() {
  beast::error_code ignored;
  stream_.socket().set_option(asio::socket_base::keep_alive(true), ignored);
  int fd = stream_.socket().native_handle();
  int idle = kKeepaliveIdleS, interval = kKeepaliveIntervalS, count = kKeepaliveCount;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
}

beast::error_code HttpConnection::write(http::request<http::string_body>& req,
                                        Clock::time_point deadline) {
  stream_.expires_at(deadline);
  return run([&](auto handler) { http::async_write(stream_, req, std::move(handler)); });
}

beast::error_code HttpConnection::read(http::response_parser<http::string_body>& parser,
                                       Clock::time_point deadline) {
  stream_.expires_at(deadline);
  auto ec = run([&](auto handler) {
    http::async_read(stream_, buffer_, parser, std::move(handler));
  });
  if (!ec) ++exchanges_;
  return ec;
}

beast::error_code HttpConnection::read_header(http::response_parser<http::buffer_body>& parser,
                                              std::optional<Clock::time_point> deadline) {
  if (deadline)
    stream_.expires_at(*deadline);
  else
    stream_.expires_never();
  return run([&](auto handler) {
    http::async_read_header(stream_, buffer_, parser, std::move(handler));
  });
}

beast::error_code HttpConnection::read_some(http::response_parser<http::buffer_body>& parser,
                                            char* data, size_t size, size_t& got,
                                            std::optional<Clock::time_point> deadline) {
  if (deadline)
    stream_.expires_at(*deadline);
  else
    stream_.expires_never();
  auto& body = parser.get().body();
  body.data = data;
  body.size = size;
  auto ec = run([&](auto handler) {
    http::async_read_some(stream_, buffer_, parser, std::move(handler));
  });
  got = size - body.size;
  if (ec == http::error::need_buffer) ec = {};
  return ec;
}

void HttpConnection::close() {
  if (stream_.socket().is_open()) {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }
  buffer_.clear();
}

http::request<http::string_body> make_request(const Endpoint& endpoint, std::string_view target,
                                              std::string body) {
  http::request<http::string_body> req;
  req.method(http::verb::post);
  req.target(to_beast(target));
  req.version(11);
  req.set(http::field::host, endpoint.host_header);
  req.set(http::field::user_agent, "cairn-etcd-client");
  req.set(http::field::content_type, "application/json");
  req.set(http::field::accept, "application/json");
  req.body() = std::move(body);
  req.keep_alive(true);
  req.prepare_payload();
  return req;
}

KeyValue from_pb(const cairn::v1::etcd::KeyValue& kv) {
  KeyValue out;
  out.key = kv.key();
  out.value = kv.value();
  out.create_revision = kv.create_revision();
  out.mod_revision = kv.mod_revision();
  out.version = kv.version();
  out.lease = kv.lease();
  return out;
}

std::string to_json(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;  // etcd's JSON uses the .proto names
  auto st = google::protobuf::util::MessageToJsonString(message, &out, opts);
  CAIRN_ASSERT(st.ok());
  return out;
}

bool from_json(std::string_view json, google::protobuf::Message& message) {
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = true;
  auto st = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), &message, opts);
  return st.ok();
}

std::error_code grpc_error(int grpc_code) {
  switch (grpc_code) {
    case 0: return {};
    case 3: return Errc::invalid_argument;    // INVALID_ARGUMENT
    case 5: return Errc::not_found;           // NOT_FOUND
    case 6: return Errc::already_exists;      // ALREADY_EXISTS
    case 7:                                   // PERMISSION_DENIED
    case 16: return Errc::permission_denied;  // UNAUTHENTICATED
    case 11: return Errc::out_of_range;       // OUT_OF_RANGE: compacted / future revision
    case 4:                                   // DEADLINE_EXCEEDED
    case 8:                                   // RESOURCE_EXHAUSTED: too many requests
    case 14: return Errc::unavailable;        // UNAVAILABLE: no leader, timeout, stopping
    default: return Errc::io_error;
  }
}

bool grpc_transient(int grpc_code) { return grpc_code == 4 || grpc_code == 8 || grpc_code == 14; }

std::error_code gateway_error(int http_status, std::string_view body, std::string& message,
                              bool& transient) {
  cairn::v1::etcd::GatewayError err;
  if (from_json(body, err) && err.code() != 0) {
    message = err.message().empty() ? err.error() : err.message();
    transient = grpc_transient(err.code());
    return grpc_error(err.code());
  }
  message = "HTTP " + std::to_string(http_status);
  transient = http_status == 502 || http_status == 503 || http_status == 504;
  if (transient) return Errc::unavailable;
  if (http_status == 404) return Errc::unsupported;  // not an etcd v3 gateway
  return Errc::io_error;
}

bool is_stale_connection_error(const beast::error_code& ec) {
  return ec == asio::error::eof || ec == http::error::end_of_stream ||
         ec == asio::error::connection_reset || ec == asio::error::broken_pipe;
}

std::string describe(const beast::error_code& ec) {
  if (ec == beast::error::timeout) return "timed out";
  return ec.message();
}

}  // namespace cairn::replication::detail
