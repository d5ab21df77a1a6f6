// The S3 layer's per-request state (Exchange) and what a handler answers (Reply).
//
// An Exchange lives for one request on its connection's strand. It owns the parsed target,
// the authentication result and the body reader: handlers pull the payload in chunks
// (read_payload), which sends `100 Continue` on first use, decodes aws-chunked bodies and
// checks x-amz-content-sha256. blocking() runs an ObjectStore call on the store pool and
// resumes the handler on the connection's strand.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "common/asio.h"
// After common/asio.h (which puts <utility> first); the store pool is an Asio thread_pool.
#include <boost/asio/thread_pool.hpp>

#include "auth.h"
#include "common/assert.h"
#include "common/metrics.h"
#include "common/sigv4.h"
#include "objectd/object_store.h"
#include "objectd/s3_server.h"
#include "s3_errors.h"
#include "s3_util.h"

namespace cairn::objectd {

using RequestParser = http::request_parser<http::buffer_body>;

// Shared by every connection of one server: references only, all thread-safe.
struct S3Context {
  ObjectStore& store;
  const S3Server::Options& options;
  Authenticator& auth;
  MetricsRegistry& metrics;
  asio::thread_pool& pool;
  const std::atomic<size_t>& connections;
};

struct Reply {
  http::status status = http::status::ok;
  http::fields headers;
  std::string body;                       // XML/JSON/text; Content-Type set by the handler
  std::unique_ptr<ObjectReader> reader;   // streamed body of `content_length` bytes (GET)
  std::optional<uint64_t> content_length; // HEAD object: announced, not sent
  bool no_body = false;                   // 204/304/HEAD: send nothing after the header
  std::string error_code;                 // S3 code, for the log and metrics
  std::string log_detail;
  bool close = false;
};

class Exchange {
 public:
  Exchange(S3Context& ctx, beast::tcp_stream& stream, beast::flat_buffer& buffer,
           RequestParser& parser, std::string request_id);
  ~Exchange();

  S3Context& ctx;
  const std::string request_id;

  const http::request_header<>& req() const { return parser_.get().base(); }
  http::verb method() const { return parser_.get().method(); }
  bool is_head() const { return method() == http::verb::head; }
  // Header value, "" when absent.
  std::string_view header(std::string_view name) const;
  std::string_view header(http::field f) const;

  // Filled by the router.
  std::string raw_path, raw_query, path;  // path: decoded
  Query query;
  S3Target target;
  AuthResult auth;
  const char* op = "Unknown";

  // ---- body ----
  // Raw body bytes (after Transfer-Encoding); 0 at the end.
  asio::awaitable<Result<size_t>> read_raw(char* buf, size_t len);
  // The payload: aws-chunked decoded, x-amz-content-sha256 checked at the end; 0 at end.
  asio::awaitable<Result<size_t>> read_payload(char* buf, size_t len);
  // The whole payload, at most `max_bytes` (else entity_too_large / MalformedXML upstream).
  asio::awaitable<Result<std::string>> read_small_payload(size_t max_bytes);
  bool body_complete() const { return parser_.is_done(); }
  bool stream_broken() const { return broken_; }
  // Trailing headers of an aws-chunked body, after read_payload returned 0.
  std::vector<std::pair<std::string, std::string>> trailers() const;
  // The declared payload size: x-amz-decoded-content-length or Content-Length.
  std::optional<uint64_t> declared_payload_bytes() const;
  // The S3 error a failed read_payload/read_raw stands for.
  S3Error body_error(const std::error_code& ec) const;
  // Reads and discards up to max_bytes of remaining body so the connection can be reused;
  // false when the body is longer, the peer waits for 100 Continue, or the read failed.
  asio::awaitable<bool> drain(uint64_t max_bytes);

  uint64_t bytes_in() const { return bytes_in_; }

  // Runs f() (a blocking ObjectStore call) on the store pool; resumes on this strand.
  template <class F>
  asio::awaitable<std::invoke_result_t<F&>> blocking(F f) {
    using R = std::invoke_result_t<F&>;
    std::optional<R> result;
    // A tracked executor keeps io_context::run() from returning while a call is out.
    auto strand = co_await asio::this_coro::executor;
    auto ex = asio::prefer(strand, asio::execution::outstanding_work.tracked);
    auto init = [&](auto handler) {
      asio::post(ctx.pool, [&result, &f, ex, h = std::move(handler)]() mutable {
        result.emplace(f());
        asio::post(ex, std::move(h));
      });
    };
    co_await asio::async_initiate<const asio::use_awaitable_t<>&, void()>(init,
                                                                          asio::use_awaitable);
    co_return std::move(*result);
  }

  // A blocking store call that runs on the pool while the handler goes on with other work
  // on its strand (reading the next body chunk while the previous one is stored). Start it
  // with start(); wait() returns its result. Whatever f() uses must stay alive until wait()
  // has returned, so a handler awaits every call it started before it returns.
  template <class R>
  class Background {
   public:
    template <class F>
    asio::awaitable<void> start(Exchange& x, F f) {
      CAIRN_ASSERT(!state_);
      auto strand = co_await asio::this_coro::executor;
      state_ = std::make_shared<State>(strand);
      auto ex = asio::prefer(strand, asio::execution::outstanding_work.tracked);
      asio::post(x.ctx.pool, [st = state_, f = std::move(f), ex]() mutable {
        R r = f();
        asio::post(ex, [st, r = std::move(r)]() mutable {
          st->result.emplace(std::move(r));
          st->wake.cancel();
        });
      });
    }
    bool running() const { return state_ != nullptr; }
    asio::awaitable<R> wait() {
      CAIRN_ASSERT(state_);
      // The completion runs on this strand: either it already has, or it will cancel the
      // wait below.
      while (!state_->result) {
        state_->wake.expires_at(asio::steady_timer::time_point::max());
        beast::error_code ec;
        co_await state_->wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      }
      R r = std::move(*state_->result);
      state_.reset();
      co_return r;
    }

   private:
    struct State {
      explicit State(const asio::any_io_executor& ex) : wake(ex) {}
      std::optional<R> result;
      asio::steady_timer wake;
    };
    std::shared_ptr<State> state_;
  };

 private:
  asio::awaitable<bool> send_continue();

  beast::tcp_stream& stream_;
  beast::flat_buffer& buffer_;
  RequestParser& parser_;
  bool continue_sent_ = false;
  bool broken_ = false;
  uint64_t bytes_in_ = 0;

  // Payload decoding.
  bool payload_started_ = false;
  bool payload_done_ = false;
  std::unique_ptr<ChunkedDecoder> decoder_;
  std::vector<char> raw_;
  std::string decoded_;
  size_t decoded_off_ = 0;
  uint64_t payload_bytes_ = 0;
  std::unique_ptr<sigv4::Sha256> sha256_;
  std::optional<S3Error> payload_error_;
  std::vector<std::pair<std::string, std::string>> trailers_;
};

// Entry points of the handlers (s3_handlers.cc, s3_objects.cc, s3_admin.cc).
asio::awaitable<Reply> dispatch(Exchange& x);
Reply error_reply(const Exchange& x, const S3Error& e);

}  // namespace cairn::objectd
