// Private: the HTTP/JSON plumbing under EtcdClient and Watch (endpoint parsing, one
// synchronous connection with deadlines, protobuf <-> gateway JSON, gateway errors).
#pragma once

#include <google/protobuf/message.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "cairn/v1/etcd.pb.h"
#include "common/asio.h"
#include "common/result.h"
#include "replication/etcd_client.h"

namespace cairn::replication::detail {

using Clock = std::chrono::steady_clock;
inline constexpr const char* kLogComponent = "etcd";

struct Endpoint {
  std::string url;          // as configured, for messages
  std::string host;         // without brackets
  uint16_t port = 0;
  std::string host_header;  // host:port
};

// "http://host:port" with an optional trailing '/'; nullopt when malformed.
std::optional<Endpoint> parse_endpoint(std::string_view url);

// What EtcdClient and every Watch it made share. Lives as long as the longest of them.
struct Shared {
  std::vector<Endpoint> endpoints;
  EtcdClient::Options options;
  bool endpoints_valid = false;
  // The endpoint that last answered; calls start there.
  mutable std::atomic<size_t> preferred{0};
};

// The end of the range that holds every key starting with `prefix` ("\0" = no end).
std::string prefix_end(std::string_view prefix);

// One TCP connection to one endpoint, driven synchronously on the owner's io_context:
// each operation runs the context until it completes or its deadline passes (error
// beast::error::timeout). Not thread-safe; the owner serializes use.
class HttpConnection {
 public:
  HttpConnection(asio::io_context& ioc, Endpoint endpoint);

  const Endpoint& endpoint() const { return endpoint_; }
  bool is_open() const { return stream_.socket().is_open(); }
  // Completed exchanges on this connection (0 for a fresh one).
  int exchanges() const { return exchanges_; }

  beast::error_code connect(Clock::time_point deadline);
  // Enables TCP keepalive probes: lets a long-lived stream notice a peer that vanished.
  void enable_keepalive_probes();
  beast::error_code write(http::request<http::string_body>& req, Clock::time_point deadline);
  beast::error_code read(http::response_parser<http::string_body>& parser,
                         Clock::time_point deadline);
  beast::error_code read_header(http::response_parser<http::buffer_body>& parser,
                                std::optional<Clock::time_point> deadline);
  // Reads some body bytes into [data, data + size); `got` says how many.
  beast::error_code read_some(http::response_parser<http::buffer_body>& parser, char* data,
                              size_t size, size_t& got, std::optional<Clock::time_point> deadline);
  void close();

 private:
  template <class Initiate>
  beast::error_code run(Initiate&& initiate);

  asio::io_context& ioc_;
  Endpoint endpoint_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  int exchanges_ = 0;
};

// The POST of `body` to `target` on `endpoint`.
http::request<http::string_body> make_request(const Endpoint& endpoint, std::string_view target,
                                              std::string body);

std::string to_json(const google::protobuf::Message& message);
// etcd's KeyValue (gateway JSON, decoded) -> the client's.
KeyValue from_pb(const cairn::v1::etcd::KeyValue& kv);
// False when `json` does not parse as `message` (unknown fields are ignored).
bool from_json(std::string_view json, google::protobuf::Message& message);

// The Errc for a gRPC status code the gateway reports.
std::error_code grpc_error(int grpc_code);
// Whether another endpoint may answer a call that failed with this gRPC code.
bool grpc_transient(int grpc_code);

// The error of a non-200 gateway reply; `message` gets etcd's text, `transient` whether
// another endpoint may answer differently.
std::error_code gateway_error(int http_status, std::string_view body, std::string& message,
                              bool& transient);

// Whether a transport error on a reused connection means the server had closed it while
// idle (the request can go again on a fresh connection).
bool is_stale_connection_error(const beast::error_code& ec);

std::string describe(const beast::error_code& ec);

}  // namespace cairn::replication::detail
