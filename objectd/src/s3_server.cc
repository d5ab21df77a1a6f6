// S3Server's network layer: accept, per-connection coroutines, request header parsing with
// bounds and timeouts, streaming request/response bodies. The operations are in
// s3_handlers.cc, s3_objects.cc and s3_admin.cc.
#include "objectd/s3_server.h"

#include <openssl/rand.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "common/asio.h"
// After common/asio.h, which orders the Boost includes.
#include <boost/asio/strand.hpp>

#include "common/log.h"
#include "common/metrics.h"
#include "s3_exchange.h"
#include "s3_xml.h"

namespace cairn::objectd {
namespace {

constexpr const char* kLog = "s3";
using tcp = asio::ip::tcp;

// Room for the largest header plus one read's worth of body that arrived with it.
constexpr size_t kReadBufferExtraBytes = 64 * 1024;
// Bodies are bounded by the object size limit (plus aws-chunked framing) and, for
// everything but object data, by the handlers.
constexpr uint64_t kBodyMaxBytes = kObjectSizeMaxBytes + (kObjectSizeMaxBytes >> 6);
// An unread request body up to this size is drained to keep the connection.
constexpr uint64_t kDrainMaxBytes = 256 * 1024;
// Connections over the limit get a 503 SlowDown from at most this many extra coroutines.
constexpr size_t kRejectingMax = 16;

bool is_disconnect(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == asio::error::eof ||
         ec == asio::error::connection_reset || ec == asio::error::operation_aborted ||
         ec == asio::error::bad_descriptor || ec == beast::error::timeout ||
         ec == http::error::partial_message || ec == asio::error::broken_pipe;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Exchange: body reading.

Exchange::Exchange(S3Context& c, beast::tcp_stream& stream, beast::flat_buffer& buffer,
                   RequestParser& parser, std::string id)
    : ctx(c), request_id(std::move(id)), stream_(stream), buffer_(buffer), parser_(parser) {}

Exchange::~Exchange() = default;

std::string_view Exchange::header(std::string_view name) const {
  auto it = req().find(to_beast(name));
  return it == req().end() ? std::string_view{} : to_std(it->value());
}

std::string_view Exchange::header(http::field f) const {
  auto it = req().find(f);
  return it == req().end() ? std::string_view{} : to_std(it->value());
}

asio::awaitable<bool> Exchange::send_continue() {
  // Also for an empty body: a client that sent Expect: 100-continue (botocore does) keeps
  // its connection's state right only if it sees the interim response.
  if (continue_sent_) co_return true;
  continue_sent_ = true;
  if (!iequals_ascii(trim(header(http::field::expect)), "100-continue")) co_return true;
  http::response<http::empty_body> cont{http::status::continue_, req().version()};
  beast::error_code ec;
  stream_.expires_after(ctx.options.idle_timeout);
  co_await http::async_write(stream_, cont, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) broken_ = true;
  co_return !ec;
}

asio::awaitable<Result<size_t>> Exchange::read_raw(char* buf, size_t len) {
  if (broken_) co_return ObjErrc::incomplete_body;
  bool sent = co_await send_continue();
  if (!sent) co_return ObjErrc::incomplete_body;
  if (parser_.is_done() || len == 0) co_return size_t{0};
  auto& body = parser_.get().body();
  body.data = buf;
  body.size = len;
  beast::error_code ec;
  // Return as soon as some bytes arrived: the idle timeout measures progress, not chunks.
  while (!parser_.is_done() && body.size == len) {
    stream_.expires_after(ctx.options.idle_timeout);
    co_await http::async_read_some(stream_, buffer_, parser_,
                                   asio::redirect_error(asio::use_awaitable, ec));
    if (ec == http::error::need_buffer) ec = {};
    if (ec) break;
  }
  size_t got = len - body.size;
  body.data = nullptr;
  body.size = 0;
  bytes_in_ += got;
  if (ec) {
    broken_ = true;
    CAIRN_LOG_DEBUG(kLog, "request %s: body read: %s", request_id.c_str(), ec.message().c_str());
    if (ec == http::error::body_limit) co_return ObjErrc::entity_too_large;
    co_return ObjErrc::incomplete_body;
  }
  co_return got;
}

std::optional<uint64_t> Exchange::declared_payload_bytes() const {
  std::string_view decoded = header("x-amz-decoded-content-length");
  if (!decoded.empty()) return parse_u64(trim(decoded));
  if (auto len = parser_.content_length()) return *len;
  return std::nullopt;
}

asio::awaitable<Result<size_t>> Exchange::read_payload(char* buf, size_t len) {
  if (payload_error_) co_return ObjErrc::invalid_argument;
  if (!payload_started_) {
    payload_started_ = true;
    if (is_streaming(auth.payload)) {
      auto d = ctx.auth.chunked_decoder(auth, req());
      if (!d) co_return d.error();
      decoder_ = std::move(d).value();
      raw_.resize(std::min<size_t>(ctx.options.io_chunk_bytes, 256 * 1024));
    } else if (auth.payload == PayloadMode::sha256) {
      sha256_ = std::make_unique<sigv4::Sha256>();
    }
  }
  if (payload_done_ || len == 0) co_return size_t{0};
  if (!decoder_) {
    auto n = co_await read_raw(buf, len);
    if (!n) co_return n;
    if (n.value() == 0) {
      payload_done_ = true;
      if (sha256_ && sha256_->finish_hex() != auth.payload_sha256) {
        payload_error_ = s3_error(http::status::bad_request, "XAmzContentSHA256Mismatch",
                                  "The provided 'x-amz-content-sha256' header does not match "
                                  "what was computed.");
        co_return ObjErrc::bad_digest;
      }
      co_return size_t{0};
    }
    if (sha256_) sha256_->update({buf, n.value()});
    payload_bytes_ += n.value();
    co_return n;
  }
  while (decoded_off_ == decoded_.size()) {
    decoded_.clear();
    decoded_off_ = 0;
    auto n = co_await read_raw(raw_.data(), raw_.size());
    if (!n) co_return n.error();
    if (n.value() == 0) {
      Status st = decoder_->finish();
      if (!st) co_return st.error();
      trailers_ = decoder_->trailers();
      payload_done_ = true;
      std::string_view decl = header("x-amz-decoded-content-length");
      if (!decl.empty()) {
        auto want = parse_u64(trim(decl));
        if (!want || *want != payload_bytes_) co_return ObjErrc::incomplete_body;
      }
      co_return size_t{0};
    }
    Status st = decoder_->feed({raw_.data(), n.value()}, decoded_);
    if (!st) co_return st.error();
  }
  size_t m = std::min(len, decoded_.size() - decoded_off_);
  memcpy(buf, decoded_.data() + decoded_off_, m);
  decoded_off_ += m;
  payload_bytes_ += m;
  co_return m;
}

asio::awaitable<Result<std::string>> Exchange::read_small_payload(size_t max_bytes) {
  auto declared = declared_payload_bytes();
  if (declared && *declared > max_bytes) co_return ObjErrc::entity_too_large;
  std::string out;
  std::vector<char> buf(16 * 1024);
  for (;;) {
    auto n = co_await read_payload(buf.data(), buf.size());
    if (!n) co_return n.error();
    if (n.value() == 0) break;
    if (out.size() + n.value() > max_bytes) co_return ObjErrc::entity_too_large;
    out.append(buf.data(), n.value());
  }
  co_return out;
}

std::vector<std::pair<std::string, std::string>> Exchange::trailers() const { return trailers_; }

S3Error Exchange::body_error(const std::error_code& ec) const {
  if (payload_error_) return *payload_error_;
  return s3_error(ec);
}

asio::awaitable<bool> Exchange::drain(uint64_t max_bytes) {
  if (parser_.is_done()) co_return true;
  if (broken_) co_return false;
  if (!continue_sent_ && iequals_ascii(trim(header(http::field::expect)), "100-continue"))
    co_return false;
  if (auto len = parser_.content_length(); len && *len > max_bytes) co_return false;
  std::vector<char> sink(16 * 1024);
  uint64_t drained = 0;
  while (drained <= max_bytes) {
    auto n = co_await read_raw(sink.data(), sink.size());
    if (!n) co_return false;
    if (n.value() == 0) co_return true;
    drained += n.value();
  }
  co_return false;
}

Reply error_reply(const Exchange& x, const S3Error& e) {
  Reply r;
  r.status = e.status;
  r.error_code = e.code;
  r.log_detail = e.message;
  if (e.status == http::status::not_modified) {
    r.no_body = true;
    return r;
  }
  std::string body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>";
  body += XmlWriter::escape(e.code);
  body += "</Code><Message>";
  body += XmlWriter::escape(e.message);
  body += "</Message>";
  if (!x.target.bucket.empty()) {
    body += "<BucketName>" + XmlWriter::escape(x.target.bucket) + "</BucketName>";
    if (!x.target.key.empty()) body += "<Key>" + XmlWriter::escape(x.target.key) + "</Key>";
  }
  body += "<Resource>" + XmlWriter::escape(x.path.empty() ? x.raw_path : x.path) + "</Resource>";
  body += "<RequestId>" + x.request_id + "</RequestId><HostId>" + x.request_id +
          "</HostId></Error>";
  r.body = std::move(body);
  r.headers.set(http::field::content_type, "application/xml");
  return r;
}

// ---------------------------------------------------------------------------------------
// The server.

class S3Server::Impl {
 public:
  Impl(ObjectStore& store, Options options)
      : store_(store),
        options_(std::move(options)),
        auth_(options_.authenticator ? options_.authenticator : make_sigv4_authenticator(store)),
        metrics_(options_.metrics ? *options_.metrics : MetricsRegistry::global()),
        pool_(std::max(1u, options_.store_threads)),
        ioc_(static_cast<int>(std::max(1u, options_.threads))),
        acceptor_(ioc_),
        ctx_{store_, options_, *auth_, metrics_, pool_, connections_} {
    uint64_t seed = 0;
    if (RAND_bytes(reinterpret_cast<unsigned char*>(&seed), sizeof(seed)) != 1)
      seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    request_seed_ = seed;
    connections_gauge_ = &metrics_.gauge("cairn_s3_connections", {}, "Open S3 connections");
    rejected_ = &metrics_.counter("cairn_s3_connections_rejected_total", {},
                                  "Connections refused at the connection limit");
    bytes_in_ = &metrics_.counter("cairn_s3_received_bytes_total", {},
                                  "Request body bytes received by the S3 API");
    bytes_out_ = &metrics_.counter("cairn_s3_sent_bytes_total", {},
                                   "Response body bytes sent by the S3 API");
  }

  ~Impl() {
    stop();
    pool_.join();
  }

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
    started_ = true;
    asio::co_spawn(ioc_, accept_loop(), asio::detached);
    unsigned n = std::max(1u, options_.threads);
    for (unsigned i = 0; i < n; ++i) {
      threads_.emplace_back([this] {
        for (;;) {
          try {
            ioc_.run();
            return;
          } catch (const std::exception& e) {
            CAIRN_LOG_ERROR(kLog, "handler escaped with an exception: %s", e.what());
          }
        }
      });
    }
    CAIRN_LOG_INFO(kLog, "listening on http://%s", format_endpoint().c_str());
    return ok();
  }

  void stop() {
    if (threads_.empty()) return;
    stopping_.store(true);
    asio::post(ioc_, [this] {
      beast::error_code ignored;
      acceptor_.close(ignored);
    });
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [id, weak] : conns_) {
        if (auto c = weak.lock()) {
          asio::post(c->stream.get_executor(), [c] {
            beast::error_code ignored;
            c->stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
            c->stream.close();
          });
        }
      }
    }
    for (auto& t : threads_) t.join();
    threads_.clear();
    port_.store(0, std::memory_order_release);
  }

  uint16_t port() const { return port_.load(std::memory_order_acquire); }
  size_t connections() const { return connections_.load(); }

 private:
  struct Conn {
    explicit Conn(tcp::socket s) : stream(std::move(s)) {}
    beast::tcp_stream stream;
  };

  std::string format_endpoint() const {
    beast::error_code ec;
    auto ep = acceptor_.local_endpoint(ec);
    if (ec) return "?";
    std::string host = ep.address().to_string();
    if (ep.address().is_v6()) host = "[" + host + "]";
    return host + ":" + std::to_string(ep.port());
  }

  std::string new_request_id() {
    uint64_t v = splitmix64(request_seed_ + request_counter_.fetch_add(1));
    static const char* kHex = "0123456789ABCDEF";
    std::string id(16, '0');
    for (int i = 15; i >= 0; --i) {
      id[i] = kHex[v & 15];
      v >>= 4;
    }
    return id;
  }

  asio::awaitable<void> accept_loop() {
    for (;;) {
      tcp::socket socket(asio::make_strand(ioc_));
      beast::error_code ec;
      co_await acceptor_.async_accept(socket, asio::redirect_error(asio::use_awaitable, ec));
      if (stopping_.load() || !acceptor_.is_open()) co_return;
      if (ec) {
        CAIRN_LOG_WARN(kLog, "accept: %s", ec.message().c_str());
        asio::steady_timer timer(ioc_, std::chrono::milliseconds(100));
        co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        continue;
      }
      if (connections_.load() >= options_.connections_max) {
        rejected_->inc();
        if (rejecting_.load() < kRejectingMax) {
          ++rejecting_;
          auto ex = socket.get_executor();
          asio::co_spawn(ex, reject(std::move(socket)), asio::detached);
        } else {
          socket.close(ec);
        }
        continue;
      }
      // Replies are written whole (header with the first body chunk): nothing is gained by
      // Nagle's algorithm, and a small reply would wait for the peer's delayed ACK.
      socket.set_option(tcp::no_delay(true), ec);
      ++connections_;
      connections_gauge_->set(static_cast<int64_t>(connections_.load()));
      auto conn = std::make_shared<Conn>(std::move(socket));
      uint64_t id = next_conn_id_++;
      {
        std::lock_guard<std::mutex> lock(mu_);
        conns_.emplace(id, conn);
      }
      asio::co_spawn(conn->stream.get_executor(), session(conn, id), asio::detached);
    }
  }

  // Over the connection limit: one canned 503 SlowDown, then close.
  asio::awaitable<void> reject(tcp::socket socket) {
    try {
      beast::tcp_stream stream(std::move(socket));
      http::response<http::string_body> res{http::status::service_unavailable, 11};
      res.set(http::field::server, "Cairn");
      res.set(http::field::content_type, "application/xml");
      res.set(http::field::retry_after, "1");
      res.set("x-amz-request-id", new_request_id());
      res.body() =
          "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
          "<Message>Too many connections; please reduce your request rate.</Message></Error>";
      res.keep_alive(false);
      res.prepare_payload();
      beast::error_code ec;
      stream.expires_after(std::chrono::seconds(1));
      co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
      stream.socket().shutdown(tcp::socket::shutdown_both, ec);
      stream.close();
    } catch (...) {
    }
    --rejecting_;
  }

  // Root of one connection: the catch-all here closes this connection only.
  asio::awaitable<void> session(std::shared_ptr<Conn> conn, uint64_t id) {
    try {
      co_await serve(conn->stream);
    } catch (const std::exception& e) {
      CAIRN_LOG_WARN(kLog, "connection closed after error: %s", e.what());
    } catch (...) {
      CAIRN_LOG_WARN(kLog, "connection closed after unknown error");
    }
    beast::error_code ignored;
    conn->stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    conn->stream.close();
    {
      std::lock_guard<std::mutex> lock(mu_);
      conns_.erase(id);
    }
    --connections_;
    connections_gauge_->set(static_cast<int64_t>(connections_.load()));
  }

  asio::awaitable<void> serve(beast::tcp_stream& stream) {
    beast::flat_buffer buffer(options_.header_max_bytes + kReadBufferExtraBytes);
    // Beast sizes each socket read by the buffer's free capacity (at least 512 bytes): a
    // buffer that grew only as far as a header needed makes every body read a 512-byte recv.
    buffer.reserve(options_.header_max_bytes + kReadBufferExtraBytes);
    for (;;) {
      if (stopping_.load()) co_return;
      RequestParser parser;
      parser.header_limit(static_cast<uint32_t>(options_.header_max_bytes));
      parser.body_limit(kBodyMaxBytes);
      beast::error_code ec;
      stream.expires_after(options_.idle_timeout);
      co_await http::async_read_header(stream, buffer, parser,
                                       asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
          co_await refuse(stream, http::status::request_header_fields_too_large,
                          "RequestHeaderSectionTooLarge",
                          "Your request header section exceeds the maximum allowed size.");
        } else if (!is_disconnect(ec)) {
          co_await refuse(stream, http::status::bad_request, "BadRequest",
                          "The HTTP request could not be parsed: " + ec.message());
        }
        co_return;
      }

      Exchange x(ctx_, stream, buffer, parser, new_request_id());
      auto started = std::chrono::steady_clock::now();
      Reply r = co_await dispatch(x);
      bool keep = parser.get().keep_alive() && !r.close && !stopping_.load() &&
                  !x.stream_broken();
      if (keep && !parser.is_done()) {
        bool drained = co_await x.drain(kDrainMaxBytes);
        keep = drained;
      }
      uint64_t sent_bytes = 0;
      bool sent = co_await write_reply(stream, x, r, keep, sent_bytes);
      account(x, r, sent_bytes, started);
      if (!sent || x.stream_broken()) co_return;
      if (!keep) {
        if (!parser.is_done()) {
          co_await linger_close(stream);
        } else {
          beast::error_code ignored;
          stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
        }
        co_return;
      }
    }
  }

  // A request we cannot parse: answer with an S3 error, then close.
  asio::awaitable<void> refuse(beast::tcp_stream& stream, http::status status, const char* code,
                               std::string message) {
    http::response<http::string_body> res{status, 11};
    std::string id = new_request_id();
    res.set(http::field::server, "Cairn");
    res.set("x-amz-request-id", id);
    res.set(http::field::content_type, "application/xml");
    res.body() = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>" + std::string(code) +
                 "</Code><Message>" + XmlWriter::escape(message) + "</Message><RequestId>" + id +
                 "</RequestId></Error>";
    res.keep_alive(false);
    res.prepare_payload();
    metrics_
        .counter("cairn_s3_requests_total",
                 {{"op", "Unparsable"}, {"code", std::to_string(static_cast<unsigned>(status))}},
                 "S3 API requests answered, by operation and HTTP status")
        .inc();
    CAIRN_LOG_WARN(kLog, "unparsable request: %s", message.c_str());
    beast::error_code ec;
    stream.expires_after(std::chrono::seconds(5));
    co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
    if (!ec) co_await linger_close(stream);
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
    while (!ec && drained < 4 * 1024 * 1024 && !stopping_.load()) {
      drained += co_await stream.async_read_some(asio::buffer(sink),
                                                 asio::redirect_error(asio::use_awaitable, ec));
    }
    stream.close();
  }

  template <class Res>
  void common_headers(Res& res, const Exchange& x, Reply& r, bool keep) {
    for (const auto& f : r.headers) res.set(f.name_string(), f.value());
    res.set(http::field::server, "Cairn");
    res.set("x-amz-request-id", x.request_id);
    res.set("x-amz-id-2", x.request_id);
    res.set(http::field::date,
            http_date(std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count()));
    res.keep_alive(keep);
  }

  asio::awaitable<bool> write_reply(beast::tcp_stream& stream, Exchange& x, Reply& r, bool keep,
                                    uint64_t& sent_bytes) {
    unsigned version = x.req().version();
    beast::error_code ec;
    if (r.reader && !x.is_head()) {
      bool ok = co_await stream_reply(stream, x, r, keep, sent_bytes);
      co_return ok;
    }
    if (r.reader) {
      auto reader = std::move(r.reader);
      co_await x.blocking([&] {
        reader.reset();
        return 0;
      });
    }
    if (r.no_body || x.is_head()) {
      http::response<http::empty_body> res{r.status, version};
      common_headers(res, x, r, keep);
      if (r.content_length) {
        res.content_length(*r.content_length);
      } else if (r.status != http::status::no_content && r.status != http::status::not_modified) {
        res.content_length(x.is_head() ? r.body.size() : 0);
      }
      stream.expires_after(options_.idle_timeout);
      co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
      co_return !ec;
    }
    http::response<http::string_body> res{r.status, version};
    common_headers(res, x, r, keep);
    res.body() = std::move(r.body);
    res.prepare_payload();
    sent_bytes = res.body().size();
    stream.expires_after(options_.idle_timeout);
    co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
    co_return !ec;
  }

  // GET: the object's bytes from its reader, one chunk at a time. The first chunk is read
  // before anything is sent, so it leaves with the header in one write, and a read that
  // fails at once is still answered with an S3 error instead of a cut-off body.
  asio::awaitable<bool> stream_reply(beast::tcp_stream& stream, Exchange& x, Reply& r, bool keep,
                                     uint64_t& sent_bytes) {
    std::unique_ptr<ObjectReader> reader = std::move(r.reader);
    uint64_t left = r.content_length.value_or(0);
    const size_t chunk = std::min<uint64_t>(options_.io_chunk_bytes, std::max<uint64_t>(left, 1));
    std::unique_ptr<char[]> buf(new char[chunk]);  // not zero-filled: every byte sent is read
    auto read_chunk = [&]() -> Result<size_t> {
      size_t want = static_cast<size_t>(std::min<uint64_t>(chunk, left));
      CAIRN_TRY(n, reader->read(buf.get(), want));
      if (n == 0) return ObjErrc::data_corrupt;  // the object ended early
      return n;
    };
    Result<size_t> n = size_t{0};
    if (left > 0) n = co_await x.blocking(read_chunk);
    if (!n) {
      CAIRN_LOG_ERROR(kLog, "request %s: GET %s: read failed: %s", x.request_id.c_str(),
                      x.path.c_str(), n.error().message().c_str());
      co_await x.blocking([&] {
        reader.reset();
        return 0;
      });
      Reply err = error_reply(x, s3_error(n.error()));
      r.status = err.status;  // what the metrics and the log count
      r.error_code = err.error_code;
      bool sent = co_await write_reply(stream, x, err, keep, sent_bytes);
      co_return sent;
    }
    http::response<http::buffer_body> res{r.status, x.req().version()};
    common_headers(res, x, r, keep);
    res.content_length(left);
    http::response_serializer<http::buffer_body> sr{res};
    beast::error_code ec;
    bool ok = true;
    for (;;) {
      // The header goes out with the first chunk; then one write per chunk.
      res.body().data = n.value() > 0 ? buf.get() : nullptr;
      res.body().size = n.value();
      res.body().more = left > n.value();
      stream.expires_after(options_.idle_timeout);
      co_await http::async_write(stream, sr, asio::redirect_error(asio::use_awaitable, ec));
      if (ec == http::error::need_buffer) ec = {};
      if (ec) {
        ok = false;
        break;
      }
      left -= n.value();
      sent_bytes += n.value();
      if (left == 0) break;
      n = co_await x.blocking(read_chunk);
      if (!n) {
        CAIRN_LOG_ERROR(kLog, "request %s: GET %s: read failed after the header was sent: %s",
                        x.request_id.c_str(), x.path.c_str(), n.error().message().c_str());
        ok = false;
        break;
      }
    }
    co_await x.blocking([&] {
      reader.reset();
      return 0;
    });
    co_return ok;
  }

  void account(const Exchange& x, const Reply& r, uint64_t sent_bytes,
               std::chrono::steady_clock::time_point started) {
    unsigned code = static_cast<unsigned>(r.status);
    metrics_
        .counter("cairn_s3_requests_total", {{"op", x.op}, {"code", std::to_string(code)}},
                 "S3 API requests answered, by operation and HTTP status")
        .inc();
    bytes_in_->inc(x.bytes_in());
    bytes_out_->inc(sent_bytes);
    auto took_us = std::chrono::duration_cast<std::chrono::microseconds>(
                       std::chrono::steady_clock::now() - started)
                       .count();
    std::string method(to_std(x.req().method_string()));
    if (code >= 500 && code != 501) {
      CAIRN_LOG_WARN(kLog, "%s %s %s -> %u %s: %s (request %s)", x.op, method.c_str(),
                     x.raw_path.c_str(), code, r.error_code.c_str(), r.log_detail.c_str(),
                     x.request_id.c_str());
    } else {
      CAIRN_LOG_DEBUG(kLog, "%s %s %s -> %u %s %s (%lld us, in %llu, out %llu, request %s)",
                      x.op, method.c_str(), x.raw_path.c_str(), code, r.error_code.c_str(),
                      r.log_detail.c_str(), static_cast<long long>(took_us),
                      static_cast<unsigned long long>(x.bytes_in()),
                      static_cast<unsigned long long>(sent_bytes), x.request_id.c_str());
    }
  }

  ObjectStore& store_;
  const Options options_;
  std::shared_ptr<Authenticator> auth_;
  MetricsRegistry& metrics_;
  asio::thread_pool pool_;
  asio::io_context ioc_;
  tcp::acceptor acceptor_;
  std::atomic<size_t> connections_{0};
  S3Context ctx_;
  std::vector<std::thread> threads_;
  std::atomic<uint16_t> port_{0};
  std::atomic<bool> stopping_{false};
  std::atomic<size_t> rejecting_{0};
  bool started_ = false;
  uint64_t next_conn_id_ = 1;  // accept loop only
  std::mutex mu_;
  std::unordered_map<uint64_t, std::weak_ptr<Conn>> conns_;
  uint64_t request_seed_ = 0;
  std::atomic<uint64_t> request_counter_{0};
  Gauge* connections_gauge_ = nullptr;
  Counter* rejected_ = nullptr;
  Counter* bytes_in_ = nullptr;
  Counter* bytes_out_ = nullptr;
};

S3Server::S3Server(ObjectStore& store, Options options)
    : impl_(std::make_unique<Impl>(store, std::move(options))) {}
S3Server::~S3Server() = default;
Status S3Server::start(const std::string& host, uint16_t port) { return impl_->start(host, port); }
void S3Server::stop() { impl_->stop(); }
uint16_t S3Server::port() const { return impl_->port(); }
size_t S3Server::connections() const { return impl_->connections(); }

}  // namespace cairn::objectd
