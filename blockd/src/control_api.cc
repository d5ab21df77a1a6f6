#include "blockd/control_api.h"

#include <fcntl.h>
#include <google/protobuf/util/json_util.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <vector>

#include "common/asio.h"
#include "common/assert.h"
#include "common/file.h"
#include "common/log.h"
#include "common/net.h"
#include "replication/cluster_volumes.h"

namespace cairn::blockd {
namespace {

constexpr const char* kLog = "control_api";
using tcp = asio::ip::tcp;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

// What a handler answers; turned into an HTTP response by the session.
struct Reply {
  http::status status = http::status::ok;
  std::string body;
  std::string content_type = "application/json";
  std::string allow;        // for 405
  std::string log_message;  // error detail for the WARN line
  bool close = false;
};

struct ApiError {
  http::status status;
  const char* code;
};

// The one place where engine errors become HTTP statuses and API error codes.
ApiError classify(const std::error_code& ec) {
  Errc e = Errc::io_error;
  if (ec.category() == cairn_category()) {
    e = static_cast<Errc>(ec.value());
  } else if (ec.category() == std::system_category() || ec.category() == std::generic_category()) {
    switch (ec.value()) {
      case EINVAL:
        e = Errc::invalid_argument;
        break;
      case ENOENT:
        e = Errc::not_found;
        break;
      case EEXIST:
        e = Errc::already_exists;
        break;
      case ENOSPC:
        e = Errc::no_space;
        break;
      case EBUSY:
        e = Errc::busy;
        break;
      case EFBIG:
      case EOVERFLOW:
        e = Errc::too_large;
        break;
      case ENOTSUP:
        e = Errc::unsupported;
        break;
      default:
        e = Errc::io_error;
        break;
    }
  }
  switch (e) {
    case Errc::invalid_argument:
      return {http::status::bad_request, "invalid_argument"};
    case Errc::out_of_range:
      return {http::status::bad_request, "out_of_range"};
    case Errc::not_found:
      return {http::status::not_found, "not_found"};
    case Errc::already_exists:
      return {http::status::conflict, "already_exists"};
    case Errc::busy:
      return {http::status::conflict, "busy"};
    case Errc::no_space:
      return {http::status::insufficient_storage, "no_space"};
    case Errc::too_large:
      return {http::status::payload_too_large, "too_large"};
    case Errc::unsupported:
      return {http::status::not_implemented, "unsupported"};
    case Errc::permission_denied:
      return {http::status::forbidden, "permission_denied"};
    case Errc::unavailable:
      return {http::status::service_unavailable, "unavailable"};
    case Errc::corrupt:
      return {http::status::internal_server_error, "corrupt"};
    case Errc::ok:
    case Errc::io_error:
      break;
  }
  return {http::status::internal_server_error, "io_error"};
}

std::string to_json(const google::protobuf::Message& msg) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.always_print_primitive_fields = true;
  std::string out;
  auto st = google::protobuf::util::MessageToJsonString(msg, &out, opts);
  CAIRN_ASSERT(st.ok());
  out.push_back('\n');
  return out;
}

Reply error_reply(http::status status, const char* code, std::string message) {
  cairn::v1::Error err;
  err.set_code(code);
  err.set_message(message);
  Reply r;
  r.status = status;
  r.body = to_json(err);
  r.log_message = std::move(message);
  return r;
}

Reply error_reply(const std::error_code& ec, std::string message) {
  ApiError e = classify(ec);
  return error_reply(e.status, e.code, std::move(message));
}

Reply json_reply(http::status status, const google::protobuf::Message& msg) {
  Reply r;
  r.status = status;
  r.body = to_json(msg);
  return r;
}

Reply method_not_allowed(std::string allow) {
  Reply r = error_reply(http::status::method_not_allowed, "method_not_allowed",
                        "method not allowed; allowed: " + allow);
  r.allow = std::move(allow);
  return r;
}

template <class M>
std::optional<Reply> parse_body(const std::string& body, M& msg) {
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = false;
  auto st = google::protobuf::util::JsonStringToMessage(body, &msg, opts);
  if (!st.ok()) {
    return error_reply(
        http::status::bad_request, "invalid_argument",
        "malformed JSON body: " + std::string(st.message().data(), st.message().size()));
  }
  return std::nullopt;
}

std::optional<std::string> percent_decode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out.push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size()) return std::nullopt;
    auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    int hi = hex(in[i + 1]), lo = hex(in[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return out;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  for (;;) {
    size_t pos = s.find(sep, start);
    parts.push_back(s.substr(start, pos == std::string_view::npos ? pos : pos - start));
    if (pos == std::string_view::npos) return parts;
    start = pos + 1;
  }
}

// Volume names are path segments and NBD export names ('@' separates snapshots there).
bool valid_volume_name(std::string_view name) {
  if (name.empty() || name.size() > kVolumeNameMaxBytes) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && (i == 0 || (c != '-' && c != '_' && c != '.'))) return false;
  }
  return true;
}

cairn::v1::Volume to_proto(const VolumeInfo& v) {
  cairn::v1::Volume out;
  out.set_name(v.name);
  out.set_id(v.id);
  out.set_size_bytes(v.size_bytes);
  out.set_allocated_bytes(v.allocated_bytes);
  out.set_extent_size_bytes(v.extent_size_bytes);
  out.set_created_unix_s(v.created_unix_s);
  out.set_attached_connections(v.attached_connections);
  out.set_nbd_export(v.name);
  out.set_exclusive_bytes(v.exclusive_bytes);
  out.set_shared_bytes(v.shared_bytes);
  out.set_parent(v.parent);
  return out;
}

std::string snapshot_ref(std::string_view volume, std::string_view snapshot) {
  return std::string(volume) + "@" + std::string(snapshot);
}

cairn::v1::Snapshot to_proto(const SnapshotInfo& s) {
  cairn::v1::Snapshot out;
  out.set_name(s.name);
  out.set_volume(s.volume);
  out.set_id(s.id);
  out.set_created_unix_s(s.created_unix_s);
  out.set_size_bytes(s.size_bytes);
  out.set_exclusive_bytes(s.exclusive_bytes);
  out.set_shared_bytes(s.shared_bytes);
  out.set_clones(s.clones);
  out.set_nbd_export(snapshot_ref(s.volume, s.name));
  return out;
}

// Query parameters in order, values percent-decoded; a key without '=' has value "true".
// nullopt when a value is not valid percent-encoding.
std::optional<std::vector<std::pair<std::string, std::string>>> parse_query(
    std::string_view query) {
  std::vector<std::pair<std::string, std::string>> out;
  for (auto kv : split(query, '&')) {
    if (kv.empty()) continue;
    size_t eq = kv.find('=');
    auto key = percent_decode(kv.substr(0, eq));
    auto value = percent_decode(eq == std::string_view::npos ? "true" : kv.substr(eq + 1));
    if (!key || !value) return std::nullopt;
    out.emplace_back(std::move(*key), std::move(*value));
  }
  return out;
}

std::string in_quotes(std::string_view s) { return "\"" + std::string(s) + "\""; }

int64_t unix_now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Reply invalid_name(std::string_view kind, std::string_view name) {
  return error_reply(http::status::bad_request, "invalid_argument",
                     "invalid " + std::string(kind) + " name " + in_quotes(name) + ": use 1-" +
                         std::to_string(kVolumeNameMaxBytes) +
                         " characters [A-Za-z0-9._-], starting with a letter or digit");
}

}  // namespace

class ControlApi::Impl {
 public:
  void set_cluster(replication::ClusterVolumes* c) { cluster_.store(c, std::memory_order_release); }
  Impl(VolumeStore& store, std::string token, StatusFn status_fn, Options options)
      : store_(store),
        token_(std::move(token)),
        status_fn_(std::move(status_fn)),
        options_(options),
        metrics_(options.metrics ? *options.metrics : MetricsRegistry::global()),
        acceptor_(ioc_) {
    SHA256(reinterpret_cast<const unsigned char*>(token_.data()), token_.size(), token_digest_);
  }

  ~Impl() { stop(); }

  Status start(const std::string& host, uint16_t port) {
    if (started_) return Errc::invalid_argument;
    beast::error_code ec;
    tcp::resolver resolver(ioc_);
    auto endpoints = resolver.resolve(host, std::to_string(port),
                                      tcp::resolver::numeric_service | tcp::resolver::passive, ec);
    if (ec || endpoints.empty()) {
      CAIRN_LOG_ERROR(kLog, "cannot resolve %s: %s", host.c_str(), ec.message().c_str());
      return Errc::invalid_argument;
    }
    tcp::endpoint ep = endpoints.begin()->endpoint();
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      CAIRN_LOG_ERROR(kLog, "cannot listen on %s:%u: %s", host.c_str(), port, ec.message().c_str());
      beast::error_code ignored;
      acceptor_.close(ignored);
      return errno_code(ec.value());
    }
    port_.store(acceptor_.local_endpoint().port(), std::memory_order_release);
    host_ = host.empty() ? ep.address().to_string() : host;
    started_unix_s_ = unix_now_s();
    started_ = true;
    asio::co_spawn(ioc_, accept_loop(), asio::detached);
    thread_ = std::thread([this] {
      try {
        ioc_.run();
      } catch (const std::exception& e) {
        CAIRN_LOG_ERROR(kLog, "event loop stopped: %s", e.what());
      }
    });
    CAIRN_LOG_INFO(kLog, "listening on http://%s:%u", host.c_str(), port_.load());
    return ok();
  }

  void stop() {
    if (!thread_.joinable()) return;
    asio::post(ioc_, [this] {
      stopping_ = true;
      beast::error_code ignored;
      acceptor_.close(ignored);
      for (beast::tcp_stream* s : connections_) s->close();
    });
    thread_.join();
    port_.store(0, std::memory_order_release);
  }

  uint16_t port() const { return port_.load(std::memory_order_acquire); }

 private:
  // Registers a connection so that stop() can close it; io thread only.
  class ConnectionGuard {
   public:
    ConnectionGuard(Impl& impl, beast::tcp_stream* s) : impl_(impl), s_(s) {
      impl_.connections_.insert(s_);
    }
    ~ConnectionGuard() { impl_.connections_.erase(s_); }
    ConnectionGuard(const ConnectionGuard&) = delete;
    ConnectionGuard& operator=(const ConnectionGuard&) = delete;

   private:
    Impl& impl_;
    beast::tcp_stream* s_;
  };

  asio::awaitable<void> accept_loop() {
    try {
      for (;;) {
        beast::error_code ec;
        tcp::socket socket =
            co_await acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
        if (stopping_ || !acceptor_.is_open()) co_return;
        if (ec) {
          CAIRN_LOG_WARN(kLog, "accept: %s", ec.message().c_str());
          // Out of descriptors or similar: back off instead of spinning.
          asio::steady_timer timer(ioc_, std::chrono::milliseconds(100));
          co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
          continue;
        }
        if (connections_.size() + pending_ >= options_.connections_max) {
          CAIRN_LOG_WARN(kLog, "connection limit (%zu) reached; closing new connection",
                         options_.connections_max);
          socket.close(ec);
          continue;
        }
        ++pending_;
        asio::co_spawn(ioc_, session(std::move(socket)), asio::detached);
      }
    } catch (const std::exception& e) {
      CAIRN_LOG_ERROR(kLog, "accept loop stopped: %s", e.what());
    }
  }

  // Root of one connection: the catch-all here closes this connection only.
  asio::awaitable<void> session(tcp::socket socket) {
    --pending_;
    try {
      beast::tcp_stream stream(std::move(socket));
      ConnectionGuard guard(*this, &stream);
      co_await serve(stream);
      beast::error_code ignored;
      stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
      stream.close();
    } catch (const std::exception& e) {
      CAIRN_LOG_WARN(kLog, "connection closed after error: %s", e.what());
    } catch (...) {
      CAIRN_LOG_WARN(kLog, "connection closed after unknown error");
    }
  }

  static bool is_disconnect(const beast::error_code& ec) {
    return ec == http::error::end_of_stream || ec == asio::error::eof ||
           ec == asio::error::connection_reset || ec == asio::error::operation_aborted ||
           ec == asio::error::bad_descriptor || ec == beast::error::timeout ||
           ec == http::error::partial_message;
  }

  asio::awaitable<void> serve(beast::tcp_stream& stream) {
    beast::flat_buffer buffer(options_.header_max_bytes + options_.body_max_bytes + 64 * 1024);
    for (;;) {
      if (stopping_) co_return;
      http::request_parser<http::string_body> parser;
      parser.header_limit(static_cast<uint32_t>(options_.header_max_bytes));
      parser.body_limit(options_.body_max_bytes);
      beast::error_code ec;
      stream.expires_after(options_.read_timeout_ms);
      co_await http::async_read_header(stream, buffer, parser,
                                       asio::redirect_error(asio::use_awaitable, ec));
      if (!ec && !parser.is_done()) {
        if (beast::iequals(parser.get()[http::field::expect], "100-continue")) {
          http::response<http::empty_body> cont{http::status::continue_, parser.get().version()};
          co_await http::async_write(stream, cont, asio::redirect_error(asio::use_awaitable, ec));
          if (ec) co_return;
        }
        co_await http::async_read(stream, buffer, parser,
                                  asio::redirect_error(asio::use_awaitable, ec));
      }
      if (ec) {
        if (is_disconnect(ec)) co_return;
        Reply r;
        if (ec == http::error::body_limit) {
          r = error_reply(
              http::status::payload_too_large, "too_large",
              "request body exceeds " + std::to_string(options_.body_max_bytes) + " bytes");
        } else if (ec == http::error::header_limit) {
          r = error_reply(
              http::status::request_header_fields_too_large, "too_large",
              "request header exceeds " + std::to_string(options_.header_max_bytes) + " bytes");
        } else {
          r = error_reply(http::status::bad_request, "invalid_argument",
                          "malformed HTTP request: " + ec.message());
        }
        r.close = true;
        if (parser.is_header_done()) {
          count_and_log(std::string(to_std(parser.get().method_string())),
                        std::string(to_std(parser.get().target())), r);
        } else {
          beast::error_code peer_ec;
          auto peer = stream.socket().remote_endpoint(peer_ec);
          count_and_log("unparsable request from",
                        peer_ec ? std::string("?") : peer.address().to_string(), r);
        }
        co_await send(stream, make_response(r, 11, false));
        co_await linger_close(stream);
        co_return;
      }

      Request req = parser.release();
      auto started = std::chrono::steady_clock::now();
      Reply r = handle(req);
      auto took_us = std::chrono::duration_cast<std::chrono::microseconds>(
                         std::chrono::steady_clock::now() - started)
                         .count();
      bool keep_alive = req.keep_alive() && !r.close && !stopping_;
      count_and_log(std::string(req.method_string()), std::string(req.target()), r, took_us);
      bool sent = co_await send(stream, make_response(r, req.version(), keep_alive));
      if (!sent) co_return;
      if (!keep_alive) {
        beast::error_code ignored;
        stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
        co_return;
      }
    }
  }

  Response make_response(const Reply& r, unsigned version, bool keep_alive) {
    Response res{r.status, version};
    res.set(http::field::server, "cairn-blockd");
    if (r.status != http::status::no_content) {
      res.set(http::field::content_type, r.content_type);
      res.body() = r.body;
    }
    if (!r.allow.empty()) res.set(http::field::allow, r.allow);
    if (r.status == http::status::unauthorized) res.set(http::field::www_authenticate, "Bearer");
    res.keep_alive(keep_alive);
    res.prepare_payload();
    return res;
  }

  asio::awaitable<bool> send(beast::tcp_stream& stream, Response res) {
    beast::error_code ec;
    stream.expires_after(options_.read_timeout_ms);
    co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) CAIRN_LOG_DEBUG(kLog, "write: %s", ec.message().c_str());
    co_return !ec;
  }

  // After refusing a request whose body we did not read: stop sending, then drain what the
  // peer still sends (bounded) so that closing does not reset the connection before the
  // peer has read our answer.
  asio::awaitable<void> linger_close(beast::tcp_stream& stream) {
    beast::error_code ec;
    stream.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream.expires_after(std::chrono::seconds(2));
    std::vector<char> sink(16 * 1024);
    size_t drained = 0;
    while (!ec && drained < 4 * 1024 * 1024 && !stopping_) {
      drained += co_await stream.async_read_some(asio::buffer(sink),
                                                 asio::redirect_error(asio::use_awaitable, ec));
    }
    stream.close();
  }

  void count_and_log(const std::string& method, const std::string& target, const Reply& r,
                     int64_t took_us = 0) {
    unsigned code = static_cast<unsigned>(r.status);
    metrics_
        .counter("cairn_http_requests_total", {{"code", std::to_string(code)}},
                 "Control API requests answered, by HTTP status")
        .inc();
    if (code >= 400) {
      CAIRN_LOG_WARN(kLog, "%s %s -> %u: %s", method.c_str(), target.c_str(), code,
                     r.log_message.c_str());
    } else {
      CAIRN_LOG_DEBUG(kLog, "%s %s -> %u (%lld us)", method.c_str(), target.c_str(), code,
                      static_cast<long long>(took_us));
    }
  }

  bool authorized(const Request& req) const {
    if (token_.empty()) return false;
    std::string_view header = to_std(req[http::field::authorization]);
    constexpr std::string_view kBearer = "Bearer ";
    if (header.size() <= kBearer.size() ||
        !beast::iequals(to_beast(header.substr(0, kBearer.size())), to_beast(kBearer)))
      return false;
    std::string_view presented = header.substr(kBearer.size());
    // Comparing digests keeps the comparison constant-time in the token's length too.
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(presented.data()), presented.size(), digest);
    return CRYPTO_memcmp(digest, token_digest_, sizeof(digest)) == 0;
  }

  Reply handle(const Request& req) {
    std::string_view target = to_std(req.target());
    size_t q = target.find('?');
    std::string_view path = target.substr(0, q);
    std::string_view query =
        q == std::string_view::npos ? std::string_view{} : target.substr(q + 1);
    auto method = req.method();

    if (path == "/healthz") {
      if (method != http::verb::get) return method_not_allowed("GET");
      Reply r;
      r.body = "ok\n";
      r.content_type = "text/plain; charset=utf-8";
      return r;
    }
    if (path == "/metrics") {
      if (method != http::verb::get) return method_not_allowed("GET");
      return metrics();
    }
    if (path != "/v1" && path.substr(0, 4) != "/v1/")
      return error_reply(http::status::not_found, "not_found", "no such path " + in_quotes(path));
    if (!authorized(req)) {
      return error_reply(http::status::unauthorized, "unauthenticated",
                         "missing or invalid bearer token");
    }

    auto raw_segments = split(path.substr(1), '/');
    std::vector<std::string> seg;
    for (auto s : raw_segments) {
      auto decoded = percent_decode(s);
      if (!decoded || decoded->empty())
        return error_reply(http::status::not_found, "not_found", "no such path " + in_quotes(path));
      seg.push_back(std::move(*decoded));
    }
    // seg[0] == "v1"
    if (seg.size() == 2 && seg[1] == "status") {
      if (method != http::verb::get) return method_not_allowed("GET");
      return status();
    }
    if (seg.size() == 2 && seg[1] == "nodes") {
      if (method != http::verb::get) return method_not_allowed("GET");
      return list_nodes();
    }
    if (seg.size() >= 2 && seg[1] == "volumes") {
      if (seg.size() == 2) {
        if (method == http::verb::get) return list_volumes();
        if (method == http::verb::post) return create_volume(req.body());
        return method_not_allowed("GET, POST");
      }
      if (seg.size() == 4 && options_.cluster_mode && (seg[3] == "attach" || seg[3] == "rebuild-rate")) {
        if (method != http::verb::post) return method_not_allowed("POST");
        return seg[3] == "attach" ? attach_volume(seg[2], req.body()) : rebuild_rate(seg[2], req.body());
      }
      if (seg.size() == 3) {
        if (method == http::verb::get) return get_volume(seg[2]);
        if (method == http::verb::delete_) return delete_volume(seg[2], query);
        return method_not_allowed("GET, DELETE");
      }
      if (seg.size() == 4 && seg[3] == "resize") {
        if (method != http::verb::post) return method_not_allowed("POST");
        return resize_volume(seg[2], req.body());
      }
      if (seg.size() == 4 && seg[3] == "flatten") {
        if (method != http::verb::post) return method_not_allowed("POST");
        return flatten_volume(seg[2], req.body());
      }
      if (seg.size() == 4 && seg[3] == "diff") {
        if (method != http::verb::get) return method_not_allowed("GET");
        return diff(seg[2], query);
      }
      if (seg.size() >= 4 && seg[3] == "snapshots") {
        if (seg.size() == 4) {
          if (method == http::verb::get) return list_snapshots(seg[2]);
          if (method == http::verb::post) return create_snapshot(seg[2], req.body());
          return method_not_allowed("GET, POST");
        }
        if (seg.size() == 5) {
          if (method == http::verb::get) return get_snapshot(seg[2], seg[4]);
          if (method == http::verb::delete_) return delete_snapshot(seg[2], seg[4]);
          return method_not_allowed("GET, DELETE");
        }
        if (seg.size() == 6 && seg[5] == "clone") {
          if (method != http::verb::post) return method_not_allowed("POST");
          return clone_volume(seg[2], seg[4], req.body());
        }
      }
    }
    if (seg.size() >= 3 && seg[1] == "backup" && options_.backups) return backup_route(seg, method, req.body());
    return error_reply(http::status::not_found, "not_found", "no such path " + in_quotes(path));
  }

  // /v1/backup/...: requests carry the repository's S3 target in their body, so every call
  // but the job queries is a POST.
  Reply backup_route(const std::vector<std::string>& seg, http::verb method, const std::string& body) {
    BackupService& b = *options_.backups;
    const std::string& op = seg[2];
    if (op == "jobs") {
      if (method != http::verb::get) return method_not_allowed("GET");
      if (seg.size() == 3) return json_reply(http::status::ok, b.jobs());
      if (seg.size() == 4) {
        auto job = b.job(seg[3]);
        if (!job) return error_reply(job.error(), "no backup job " + in_quotes(seg[3]));
        return json_reply(http::status::ok, job.value());
      }
    }
    if (seg.size() != 3) return error_reply(http::status::not_found, "not_found", "no such backup call");
    if (method != http::verb::post) return method_not_allowed("POST");
    if (op == "init") return backup_call<cairn::v1::InitRepoRequest>(body, http::status::created, &BackupService::init_repo);
    if (op == "list") return backup_call<cairn::v1::ListBackupsRequest>(body, http::status::ok, &BackupService::list);
    if (op == "prune") return backup_call<cairn::v1::PruneRequest>(body, http::status::ok, &BackupService::prune);
    if (op == "create") return backup_call<cairn::v1::CreateBackupRequest>(body, http::status::accepted, &BackupService::start_backup);
    if (op == "restore") return backup_call<cairn::v1::RestoreBackupRequest>(body, http::status::accepted, &BackupService::start_restore);
    if (op == "verify") return backup_call<cairn::v1::VerifyRequest>(body, http::status::accepted, &BackupService::start_verify);
    return error_reply(http::status::not_found, "not_found", "no such backup call " + in_quotes(op));
  }

  template <class Req, class Fn>
  Reply backup_call(const std::string& body, http::status success, Fn fn) {
    Req req;
    if (auto bad = parse_body(body, req)) return *bad;
    std::string message;
    auto out = (options_.backups->*fn)(req, &message);
    if (!out) return error_reply(out.error(), message.empty() ? out.error().message() : message);
    return json_reply(success, out.value());
  }

  Reply metrics() {
    StoreStats st = store_.stats();
    metrics_.gauge("cairn_volumes", {}, "Volumes on this node")
        .set(static_cast<int64_t>(st.volumes));
    metrics_.gauge("cairn_capacity_bytes", {}, "Capacity of the node's data file")
        .set(static_cast<int64_t>(st.capacity_bytes));
    metrics_.gauge("cairn_used_bytes", {}, "Bytes of the data file held by extents")
        .set(static_cast<int64_t>(st.used_bytes));
    Reply r;
    r.body = metrics_.render();
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    return r;
  }

  Reply status() {
    cairn::v1::NodeStatus ns;
    if (status_fn_) ns = status_fn_();
    StoreStats st = store_.stats();
    ns.set_capacity_bytes(st.capacity_bytes);
    ns.set_used_bytes(st.used_bytes);
    ns.set_volumes(st.volumes);
    return json_reply(http::status::ok, ns);
  }

  // Cluster mode: the nodes registered in etcd. Single-node mode: this node, id "local".
  Reply list_nodes() {
    cairn::v1::ListNodesResponse out;
    if (options_.nodes) {
      auto nodes = options_.nodes();
      if (!nodes) {
        return error_reply(nodes.error(),
                           "cannot read the cluster's nodes from etcd: " + nodes.error().message());
      }
      for (auto& n : nodes.value()) *out.add_nodes() = std::move(n);
      return json_reply(http::status::ok, out);
    }
    cairn::v1::NodeStatus ns;
    if (status_fn_) ns = status_fn_();
    StoreStats st = store_.stats();
    cairn::v1::ClusterNode* local = out.add_nodes();
    local->set_id("local");
    local->set_nbd(ns.nbd_tcp());
    local->set_api("http://" + format_host_port(host_, port()));
    local->set_capacity_bytes(st.capacity_bytes);
    local->set_used_bytes(st.used_bytes);
    local->set_volumes(st.volumes);
    local->set_started_unix_s(started_unix_s_);
    local->set_updated_unix_s(unix_now_s());
    local->set_state("up");
    return json_reply(http::status::ok, out);
  }

  // --- cluster mode: replicated volumes (replication::ClusterVolumes) ---

  // The answer for a replicated volume: this node's copy where it has one, and the
  // cluster section.
  cairn::v1::Volume cluster_proto(cairn::v1::ClusterVolume cv) {
    cairn::v1::Volume out;
    auto local = store_.get_volume(cv.name());
    if (local) out = to_proto(local.value());
    out.set_name(cv.name());
    out.set_size_bytes(cv.size_bytes());
    out.set_nbd_export(cv.name());
    out.set_created_unix_s(cv.created_unix_s());
    *out.mutable_cluster() = std::move(cv);
    return out;
  }

  replication::ClusterVolumes* cluster() const { return cluster_.load(std::memory_order_acquire); }
  Reply cluster_not_ready() {
    return error_reply(http::status::service_unavailable, "unavailable",
                       "this node has not joined the cluster yet; retry");
  }

  Reply cluster_error(std::error_code ec, const std::string& why) {
    return error_reply(ec, why.empty() ? ec.message() : why);
  }

  // Operations not built for replicated volumes yet answer so rather than acting on one copy.
  std::optional<Reply> not_for_replicated(const std::string& name, const char* what) {
    auto* c = cluster();
    if (!c || !c->is_cluster_volume(name)) return std::nullopt;
    return error_reply(http::status::bad_request, "unsupported",
                       std::string(what) + " of a replicated volume is not supported yet");
  }

  Reply attach_volume(const std::string& name, const std::string& body) {
    auto* c = cluster();
    if (!c) return cluster_not_ready();
    cairn::v1::AttachVolumeRequest req;
    if (auto bad = parse_body(body, req)) return *bad;
    std::string why;
    auto v = c->attach(name, req.node(), &why);
    if (!v) return cluster_error(v.error(), why);
    return json_reply(http::status::ok, cluster_proto(std::move(v).value()));
  }

  Reply rebuild_rate(const std::string& name, const std::string& body) {
    auto* c = cluster();
    if (!c) return cluster_not_ready();
    cairn::v1::RebuildRateRequest req;
    if (auto bad = parse_body(body, req)) return *bad;
    std::string why;
    auto v = c->set_rebuild_rate(name, req.bytes_per_s(), &why);
    if (!v) return cluster_error(v.error(), why);
    return json_reply(http::status::ok, cluster_proto(std::move(v).value()));
  }

  Reply list_volumes() {
    cairn::v1::ListVolumesResponse out;
    if (options_.cluster_mode) {
      auto* c = cluster();
      if (!c) return cluster_not_ready();
      std::string why;
      auto vols = c->list(&why);
      if (!vols) return cluster_error(vols.error(), why);
      for (auto& v : vols.value()) *out.add_volumes() = cluster_proto(std::move(v));
      return json_reply(http::status::ok, out);
    }
    std::vector<VolumeInfo> volumes = store_.list_volumes();
    std::sort(volumes.begin(), volumes.end(),
              [](const VolumeInfo& a, const VolumeInfo& b) { return a.name < b.name; });
    for (const VolumeInfo& v : volumes) *out.add_volumes() = to_proto(v);
    return json_reply(http::status::ok, out);
  }

  Reply create_volume(const std::string& body) {
    cairn::v1::CreateVolumeRequest req;
    if (auto bad = parse_body(body, req)) return *bad;
    if (!valid_volume_name(req.name())) return invalid_name("volume", req.name());
    if (req.size_bytes() == 0) {
      return error_reply(http::status::bad_request, "invalid_argument",
                         "sizeBytes must be greater than 0");
    }
    if (options_.cluster_mode) {
      auto* c = cluster();
      if (!c) return cluster_not_ready();
      std::string why;
      auto cv = c->create(req.name(), req.size_bytes(), req.replicas(), &why);
      if (!cv) return cluster_error(cv.error(), why);
      return json_reply(http::status::created, cluster_proto(std::move(cv).value()));
    }
    if (req.replicas() > 1) {
      return error_reply(http::status::bad_request, "invalid_argument",
                         "replicas > 1 needs cluster mode (blockd --node-id --cluster ...)");
    }
    auto v = store_.create_volume(req.name(), req.size_bytes());
    if (!v) {
      return error_reply(v.error(),
                         "create volume " + in_quotes(req.name()) + ": " + v.error().message());
    }
    CAIRN_LOG_INFO(kLog, "created volume %s (%llu bytes)", req.name().c_str(),
                   static_cast<unsigned long long>(req.size_bytes()));
    return json_reply(http::status::created, to_proto(v.value()));
  }

  Reply get_volume(const std::string& name) {
    if (options_.cluster_mode) {
      auto* c = cluster();
      if (!c) return cluster_not_ready();
      std::string why;
      auto cv = c->info(name, &why);
      if (!cv) return cluster_error(cv.error(), why);
      return json_reply(http::status::ok, cluster_proto(std::move(cv).value()));
    }
    auto v = store_.get_volume(name);
    if (!v) return error_reply(v.error(), "volume " + in_quotes(name) + ": " + v.error().message());
    return json_reply(http::status::ok, to_proto(v.value()));
  }

  Reply resize_volume(const std::string& name, const std::string& body) {
    if (auto r = not_for_replicated(name, "resize")) return *r;
    cairn::v1::ResizeVolumeRequest req;
    if (auto bad = parse_body(body, req)) return *bad;
    if (req.size_bytes() == 0) {
      return error_reply(http::status::bad_request, "invalid_argument",
                         "sizeBytes must be greater than 0");
    }
    auto v = store_.resize_volume(name, req.size_bytes());
    if (!v) {
      return error_reply(v.error(),
                         "resize volume " + in_quotes(name) + ": " + v.error().message());
    }
    CAIRN_LOG_INFO(kLog, "resized volume %s to %llu bytes", name.c_str(),
                   static_cast<unsigned long long>(req.size_bytes()));
    return json_reply(http::status::ok, to_proto(v.value()));
  }

  Reply delete_volume(const std::string& name, std::string_view query) {
    bool force = false;
    for (auto kv : split(query, '&')) {
      if (kv.empty()) continue;
      size_t eq = kv.find('=');
      std::string_view key = kv.substr(0, eq);
      std::string_view value = eq == std::string_view::npos ? "true" : kv.substr(eq + 1);
      if (key != "force") continue;
      if (value == "true" || value == "1")
        force = true;
      else if (value == "false" || value == "0")
        force = false;
      else
        return error_reply(http::status::bad_request, "invalid_argument",
                           "force must be true or false");
    }
    if (options_.cluster_mode) {
      auto* c = cluster();
      if (!c) return cluster_not_ready();
      std::string why;
      Status cst = c->remove(name, &why);
      if (!cst) return cluster_error(cst.error(), why);
      Reply r;
      r.status = http::status::no_content;
      return r;
    }
    auto st = store_.delete_volume(name, force);
    if (!st) {
      std::string msg = "delete volume " + in_quotes(name) + ": " + st.error().message();
      if (st.error() == Errc::busy) msg += " (attached; use force to delete anyway)";
      return error_reply(st.error(), std::move(msg));
    }
    CAIRN_LOG_INFO(kLog, "deleted volume %s%s", name.c_str(), force ? " (forced)" : "");
    Reply r;
    r.status = http::status::no_content;
    return r;
  }

  // An engine failure of operation `what` (e.g. `create snapshot "db@s1"`) on `volume`.
  Reply engine_error(const std::error_code& ec, const std::string& what,
                     const std::string& volume) {
    std::string msg = what + ": " + ec.message();
    if (ec == Errc::not_found && !store_.get_volume(volume)) {
      msg = what + ": no volume " + in_quotes(volume);
    } else if (ec == Errc::unsupported) {
      msg += " (this blockd's volume engine does not implement snapshots, clones or diff yet)";
    }
    return error_reply(ec, std::move(msg));
  }

  Result<std::vector<SnapshotInfo>> sorted_snapshots(const std::string& volume) {
    auto list = store_.list_snapshots(volume);
    if (!list) return list.error();
    std::sort(list.value().begin(), list.value().end(),
              [](const SnapshotInfo& a, const SnapshotInfo& b) {
                return a.seq != b.seq ? a.seq < b.seq : a.id < b.id;
              });
    return list;
  }

  Reply create_snapshot(const std::string& volume, const std::string& body) {
    cairn::v1::CreateSnapshotRequest req;
    if (auto bad = parse_body(body, req)) return *bad;
    if (!valid_volume_name(req.name())) return invalid_name("snapshot", req.name());
    const std::string ref = snapshot_ref(volume, req.name());
    if (options_.backups && options_.backups->hydrating(volume)) {
      return error_reply(Errc::busy, "create snapshot " + in_quotes(ref) +
                                         ": the volume is still being restored (instant); retry when its hydrate job is done");
    }
    Result<SnapshotInfo> s = Errc::unavailable;
    bool ran_local = false;
    auto take = [&]() -> Status {
      ran_local = true;
      s = store_.create_snapshot(volume, req.name());
      if (!s) return s.error();
      return ok();
    };
    if (auto* c = cluster(); c && c->is_cluster_volume(volume)) {
      // On every in-sync replica at one point of the write stream; only the primary can.
      std::string why;
      Status st = c->snapshot(volume, req.name(), false, take, &why);
      if (!st && !ran_local) return cluster_error(st.error(), why);
    } else {
      (void)take();
    }
    if (!s) return engine_error(s.error(), "create snapshot " + in_quotes(ref), volume);
    CAIRN_LOG_INFO(kLog, "created snapshot %s", ref.c_str());
    return json_reply(http::status::created, to_proto(s.value()));
  }

  Reply list_snapshots(const std::string& volume) {
    auto list = sorted_snapshots(volume);
    if (!list) return engine_error(list.error(), "snapshots of " + in_quotes(volume), volume);
    cairn::v1::ListSnapshotsResponse out;
    for (const SnapshotInfo& s : list.value()) *out.add_snapshots() = to_proto(s);
    return json_reply(http::status::ok, out);
  }

  Reply get_snapshot(const std::string& volume, const std::string& snapshot) {
    const std::string what = "snapshot " + in_quotes(snapshot_ref(volume, snapshot));
    auto list = store_.list_snapshots(volume);
    if (!list) return engine_error(list.error(), what, volume);
    for (const SnapshotInfo& s : list.value())
      if (s.name == snapshot) return json_reply(http::status::ok, to_proto(s));
    return error_reply(Errc::not_found, what + ": not found");
  }

  Reply delete_snapshot(const std::string& volume, const std::string& snapshot) {
    const std::string ref = snapshot_ref(volume, snapshot);
    Status st = ok();
    if (auto* c = cluster(); c && c->is_cluster_volume(volume)) {
      std::string why;
      bool ran_local = false;
      Status fanned = c->snapshot(volume, snapshot, true, [&] {
        ran_local = true;
        st = store_.delete_snapshot(volume, snapshot);
        return st;
      }, &why);
      if (!fanned && !ran_local) return cluster_error(fanned.error(), why);
    } else {
      st = store_.delete_snapshot(volume, snapshot);
    }
    if (!st) {
      if (st.error() != Errc::busy)
        return engine_error(st.error(), "delete snapshot " + in_quotes(ref), volume);
      // Say why: the engine refuses while clones depend on it or while it is exported.
      std::string why = " (exported over NBD as " + in_quotes(ref) + "; disconnect its clients)";
      if (auto list = store_.list_snapshots(volume)) {
        for (const SnapshotInfo& s : list.value()) {
          if (s.name == snapshot && s.clones > 0) {
            why = " (" + std::to_string(s.clones) +
                  " clone(s) depend on it; flatten or delete them first)";
          }
        }
      }
      return error_reply(st.error(),
                         "delete snapshot " + in_quotes(ref) + ": " + st.error().message() + why);
    }
    CAIRN_LOG_INFO(kLog, "deleted snapshot %s", ref.c_str());
    Reply r;
    r.status = http::status::no_content;
    return r;
  }

  Reply clone_volume(const std::string& volume, const std::string& snapshot,
                     const std::string& body) {
    cairn::v1::CloneVolumeRequest req;
    if (auto bad = parse_body(body, req)) return *bad;
    if (!valid_volume_name(req.name())) return invalid_name("volume", req.name());
    const std::string ref = snapshot_ref(volume, snapshot);
    auto v = store_.clone_volume(volume, snapshot, req.name());
    if (!v) {
      return engine_error(v.error(),
                          "clone " + in_quotes(ref) + " to " + in_quotes(req.name()), volume);
    }
    CAIRN_LOG_INFO(kLog, "cloned %s to volume %s", ref.c_str(), req.name().c_str());
    return json_reply(http::status::created, to_proto(v.value()));
  }

  Reply flatten_volume(const std::string& volume, const std::string& body) {
    if (auto r = not_for_replicated(volume, "flatten")) return *r;
    cairn::v1::FlattenVolumeRequest req;
    if (body.find_first_not_of(" \t\r\n") != std::string::npos) {
      if (auto bad = parse_body(body, req)) return *bad;
    }
    const std::string what = "flatten volume " + in_quotes(volume);
    auto st = store_.flatten_volume(volume);
    if (!st) return engine_error(st.error(), what, volume);
    auto v = store_.get_volume(volume);
    if (!v) return engine_error(v.error(), what, volume);
    CAIRN_LOG_INFO(kLog, "flattened volume %s", volume.c_str());
    return json_reply(http::status::ok, to_proto(v.value()));
  }

  Reply diff(const std::string& volume, std::string_view query) {
    auto params = parse_query(query);
    if (!params) {
      return error_reply(http::status::bad_request, "invalid_argument",
                         "malformed query string " + in_quotes(query));
    }
    std::string from, to;
    for (auto& [key, value] : *params) {
      if (key == "from") from = value;
      if (key == "to") to = value;
    }
    if (!from.empty() && !valid_volume_name(from)) return invalid_name("snapshot", from);
    if (!to.empty() && !valid_volume_name(to)) return invalid_name("snapshot", to);
    auto runs = store_.diff(volume, from, to);
    if (!runs) {
      return engine_error(runs.error(),
                          "diff " + in_quotes(volume) + " from " +
                              (from.empty() ? "empty" : in_quotes(snapshot_ref(volume, from))) +
                              " to " + (to.empty() ? "live" : in_quotes(snapshot_ref(volume, to))),
                          volume);
    }
    cairn::v1::DiffResponse out;
    uint64_t changed_bytes = 0, zeroed_bytes = 0;
    for (const DiffRun& r : runs.value()) {
      auto* run = out.add_runs();
      run->set_offset_bytes(r.offset_bytes);
      run->set_length_bytes(r.length_bytes);
      run->set_zero(r.zero);
      (r.zero ? zeroed_bytes : changed_bytes) += r.length_bytes;
    }
    out.set_changed_bytes(changed_bytes);
    out.set_zeroed_bytes(zeroed_bytes);
    return json_reply(http::status::ok, out);
  }

  VolumeStore& store_;
  const std::string token_;
  unsigned char token_digest_[SHA256_DIGEST_LENGTH];
  const StatusFn status_fn_;
  const Options options_;
  MetricsRegistry& metrics_;
  std::atomic<replication::ClusterVolumes*> cluster_{nullptr};  // cluster mode, once joined

  asio::io_context ioc_{1};
  tcp::acceptor acceptor_;
  std::thread thread_;
  std::atomic<uint16_t> port_{0};
  bool started_ = false;  // owner thread
  std::string host_;            // as given to start(); written before the thread starts
  int64_t started_unix_s_ = 0;  // likewise

  // io thread only:
  bool stopping_ = false;
  size_t pending_ = 0;  // accepted, session not yet started
  std::unordered_set<beast::tcp_stream*> connections_;
};

ControlApi::ControlApi(VolumeStore& store, std::string admin_token, StatusFn status_fn)
    : ControlApi(store, std::move(admin_token), std::move(status_fn), Options{}) {}

ControlApi::ControlApi(VolumeStore& store, std::string admin_token, StatusFn status_fn,
                       Options options)
    : impl_(std::make_unique<Impl>(store, std::move(admin_token), std::move(status_fn), options)) {}

ControlApi::~ControlApi() = default;

Status ControlApi::start(const std::string& host, uint16_t port) {
  return impl_->start(host, port);
}
void ControlApi::stop() { impl_->stop(); }
void ControlApi::set_cluster(replication::ClusterVolumes* cluster) { impl_->set_cluster(cluster); }
uint16_t ControlApi::port() const { return impl_->port(); }

namespace {

Result<std::string> read_token_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_code(errno);
  struct stat st {};
  if (::fstat(fd, &st) == 0 && (st.st_mode & 077) != 0) {
    CAIRN_LOG_WARN(kLog, "%s is readable by group or others (mode %03o); chmod 600 it",
                   path.c_str(), st.st_mode & 0777);
  }
  std::string data;
  char buf[256];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      return errno_code(err);
    }
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
    if (data.size() > 4096) break;
  }
  ::close(fd);
  while (!data.empty() && isspace(static_cast<unsigned char>(data.back()))) data.pop_back();
  size_t start = 0;
  while (start < data.size() && isspace(static_cast<unsigned char>(data[start]))) ++start;
  data.erase(0, start);
  if (data.empty() || data.size() > 4096) {
    CAIRN_LOG_ERROR(kLog, "%s is empty or malformed; delete it to create a new token",
                    path.c_str());
    return Errc::corrupt;
  }
  return data;
}

}  // namespace

Result<std::string> load_or_create_admin_token(const std::string& data_dir) {
  std::error_code fs_ec;
  std::filesystem::create_directories(data_dir, fs_ec);
  if (fs_ec) {
    CAIRN_LOG_ERROR(kLog, "cannot create %s: %s", data_dir.c_str(), fs_ec.message().c_str());
    return fs_ec;
  }
  const std::string path = data_dir + "/admin.token";
  auto existing = read_token_file(path);
  if (existing || existing.error() != std::errc::no_such_file_or_directory) {
    if (!existing && existing.error() != Errc::corrupt)
      CAIRN_LOG_ERROR(kLog, "cannot read %s: %s", path.c_str(), existing.error().message().c_str());
    return existing;
  }

  unsigned char raw[32];
  if (RAND_bytes(raw, sizeof(raw)) != 1) {
    CAIRN_LOG_ERROR(kLog, "RAND_bytes failed");
    return Errc::io_error;
  }
  std::string token;
  static const char* kHex = "0123456789abcdef";
  for (unsigned char b : raw) {
    token.push_back(kHex[b >> 4]);
    token.push_back(kHex[b & 15]);
  }

  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    int err = errno;
    if (err == EEXIST) return read_token_file(path);  // lost a race with another creator
    CAIRN_LOG_ERROR(kLog, "cannot create %s: %s", path.c_str(), strerror(err));
    return errno_code(err);
  }
  Status written = write_all_and_sync(fd, token + "\n");
  ::close(fd);
  int err = written ? 0 : written.error().value();
  if (err != 0) {
    CAIRN_LOG_ERROR(kLog, "cannot write %s: %s", path.c_str(), strerror(err));
    ::unlink(path.c_str());
    return errno_code(err);
  }
  int dir_fd = ::open(data_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
  CAIRN_LOG_INFO(kLog, "created admin token in %s", path.c_str());
  return token;
}

}  // namespace cairn::blockd
