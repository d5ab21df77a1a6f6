#include "replication/replication_listener.h"

#include <atomic>
#include <thread>

#include "common/asio.h"
#include "common/log.h"

namespace cairn::replication {

namespace {
constexpr const char* kLog = "replication";
using tcp = asio::ip::tcp;
}  // namespace

class ReplicationListener::Impl {
 public:
  ~Impl() { stop(); }

  Status start(const std::string& host, uint16_t port) {
    if (thread_.joinable()) return Errc::invalid_argument;
    beast::error_code ec;
    tcp::resolver resolver(ioc_);
    auto endpoints = resolver.resolve(host, std::to_string(port),
                                      tcp::resolver::numeric_service | tcp::resolver::passive, ec);
    if (ec || endpoints.empty()) {
      CAIRN_LOG_ERROR(kLog, "cannot resolve %s: %s", host.c_str(), ec.message().c_str());
      return Errc::invalid_argument;
    }
    const tcp::endpoint ep = endpoints.begin()->endpoint();
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
    accept();
    thread_ = std::thread([this] { ioc_.run(); });
    CAIRN_LOG_INFO(kLog, "replication link placeholder listening on %s:%u (accepts and closes)",
                   host.c_str(), port_.load());
    return ok();
  }

  void stop() {
    if (!thread_.joinable()) return;
    asio::post(ioc_, [this] {
      beast::error_code ignored;
      acceptor_.close(ignored);
      timer_.cancel();
    });
    thread_.join();
    port_.store(0, std::memory_order_release);
  }

  uint16_t port() const { return port_.load(std::memory_order_acquire); }
  uint64_t accepted() const { return accepted_.load(std::memory_order_relaxed); }

 private:
  void accept() {
    acceptor_.async_accept([this](beast::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
      if (!ec) {
        accepted_.fetch_add(1, std::memory_order_relaxed);
        beast::error_code ignored;
        socket.shutdown(tcp::socket::shutdown_both, ignored);
        socket.close(ignored);
        accept();
        return;
      }
      // Out of descriptors or similar: back off instead of spinning.
      CAIRN_LOG_WARN(kLog, "accept: %s", ec.message().c_str());
      timer_.expires_after(std::chrono::milliseconds(100));
      timer_.async_wait([this](beast::error_code) {
        if (acceptor_.is_open()) accept();
      });
    });
  }

  asio::io_context ioc_{1};
  tcp::acceptor acceptor_{ioc_};
  asio::steady_timer timer_{ioc_};
  std::thread thread_;
  std::atomic<uint16_t> port_{0};
  std::atomic<uint64_t> accepted_{0};
};

ReplicationListener::ReplicationListener() : impl_(std::make_unique<Impl>()) {}
ReplicationListener::~ReplicationListener() = default;
Status ReplicationListener::start(const std::string& host, uint16_t port) { return impl_->start(host, port); }
void ReplicationListener::stop() { impl_->stop(); }
uint16_t ReplicationListener::port() const { return impl_->port(); }
uint64_t ReplicationListener::accepted() const { return impl_->accepted(); }

}  // namespace cairn::replication
