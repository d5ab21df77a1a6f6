// ControlApi over a fake in-memory VolumeStore, driven by the real ControlClient and, for
// malformed requests, by raw sockets.
#include "blockd/control_api.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "client/control_client.h"
#include "common/asio.h"

namespace cairn::blockd::test {
namespace {

using client::ControlClient;
using tcp = asio::ip::tcp;

constexpr const char* kToken = "0123456789abcdef-test-token";

// Metadata-only VolumeStore: enough for the control API; I/O is not supported.
class FakeVolumeStore final : public VolumeStore {
 public:
  Result<VolumeInfo> create_volume(const std::string& name, uint64_t size_bytes) override {
    std::lock_guard lock(mu_);
    if (volumes_.count(name)) return Errc::already_exists;
    if (size_bytes > kVolumeSizeMaxBytes) return Errc::too_large;
    if (size_bytes > kCapacityBytes) return Errc::no_space;
    VolumeInfo v;
    v.id = next_id_++;
    v.name = name;
    v.size_bytes = size_bytes;
    v.created_unix_s = 1700000000;
    volumes_[name] = v;
    return v;
  }
  std::vector<VolumeInfo> list_volumes() override {
    std::lock_guard lock(mu_);
    std::vector<VolumeInfo> out;
    for (const auto& [name, v] : volumes_) out.push_back(v);
    return out;
  }
  Result<VolumeInfo> get_volume(const std::string& name) override {
    std::lock_guard lock(mu_);
    auto it = volumes_.find(name);
    if (it == volumes_.end()) return Errc::not_found;
    return it->second;
  }
  Result<VolumeInfo> resize_volume(const std::string& name, uint64_t size_bytes) override {
    std::lock_guard lock(mu_);
    auto it = volumes_.find(name);
    if (it == volumes_.end()) return Errc::not_found;
    if (size_bytes < it->second.size_bytes) return Errc::invalid_argument;
    it->second.size_bytes = size_bytes;
    return it->second;
  }
  Status delete_volume(const std::string& name, bool force) override {
    std::lock_guard lock(mu_);
    auto it = volumes_.find(name);
    if (it == volumes_.end()) return Errc::not_found;
    if (it->second.attached_connections > 0 && !force) return Errc::busy;
    volumes_.erase(it);
    return ok();
  }
  Result<std::shared_ptr<Volume>> open_volume(const std::string&) override {
    return Errc::unsupported;
  }
  Task<Status> flush() override { co_return Errc::unsupported; }
  StoreStats stats() override {
    std::lock_guard lock(mu_);
    StoreStats s;
    s.capacity_bytes = kCapacityBytes;
    s.volumes = volumes_.size();
    for (const auto& [name, v] : volumes_) s.used_bytes += v.allocated_bytes;
    return s;
  }

  void set_attached(const std::string& name, uint32_t connections, uint64_t allocated_bytes) {
    std::lock_guard lock(mu_);
    volumes_.at(name).attached_connections = connections;
    volumes_.at(name).allocated_bytes = allocated_bytes;
  }

  static constexpr uint64_t kCapacityBytes = 1ull << 40;

 private:
  std::mutex mu_;
  std::map<std::string, VolumeInfo> volumes_;
  uint64_t next_id_ = 1;
};

// The suite's fixture; the class under test is spelled blockd::ControlApi here.
class ControlApi : public ::testing::Test {
 protected:
  void SetUp() override { start(blockd::ControlApi::Options{}); }

  void start(blockd::ControlApi::Options options) {
    api_.reset();
    options.metrics = &metrics_;
    api_ = std::make_unique<blockd::ControlApi>(
        store_, kToken,
        [] {
          cairn::v1::NodeStatus s;
          s.set_version("test");
          s.set_nbd_tcp("127.0.0.1:10809");
          return s;
        },
        options);
    ASSERT_TRUE(api_->start("127.0.0.1", 0));
    ASSERT_NE(api_->port(), 0);
    url_ = "http://127.0.0.1:" + std::to_string(api_->port());
    client_ = std::make_unique<ControlClient>(url_, kToken);
  }

  // One raw request on a fresh connection; returns everything the server sent until close.
  std::string raw_exchange(const std::string& bytes) {
    asio::io_context ioc;
    tcp::socket s(ioc);
    s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), api_->port()));
    asio::write(s, asio::buffer(bytes));
    s.shutdown(tcp::socket::shutdown_send);
    std::string out;
    char buf[4096];
    boost::system::error_code ec;
    for (int i = 0; i < 1000; ++i) {
      size_t n = s.read_some(asio::buffer(buf), ec);
      if (ec) break;
      out.append(buf, n);
    }
    return out;
  }

  FakeVolumeStore store_;
  MetricsRegistry metrics_;
  std::unique_ptr<blockd::ControlApi> api_;
  std::string url_;
  std::unique_ptr<ControlClient> client_;
};

TEST_F(ControlApi, CreateListGetResizeDelete) {
  auto created = client_->create_volume("vol1", 10ull << 30);
  ASSERT_TRUE(created) << created.error().message;
  EXPECT_EQ(created.value().name(), "vol1");
  EXPECT_EQ(created.value().size_bytes(), 10ull << 30);
  EXPECT_EQ(created.value().nbd_export(), "vol1");
  EXPECT_EQ(created.value().extent_size_bytes(), kExtentSizeBytes);
  ASSERT_TRUE(client_->create_volume("vol2", 1 << 20));

  auto list = client_->list_volumes();
  ASSERT_TRUE(list) << list.error().message;
  ASSERT_EQ(list.value().volumes_size(), 2);
  EXPECT_EQ(list.value().volumes(0).name(), "vol1");
  EXPECT_EQ(list.value().volumes(1).name(), "vol2");

  auto got = client_->get_volume("vol1");
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ(got.value().id(), created.value().id());
  EXPECT_EQ(got.value().created_unix_s(), 1700000000);

  auto resized = client_->resize_volume("vol1", 20ull << 30);
  ASSERT_TRUE(resized) << resized.error().message;
  EXPECT_EQ(resized.value().size_bytes(), 20ull << 30);
  EXPECT_EQ(client_->get_volume("vol1").value().size_bytes(), 20ull << 30);

  auto shrink = client_->resize_volume("vol1", 1 << 20);
  ASSERT_FALSE(shrink);
  EXPECT_EQ(shrink.error().http_status, 400);
  EXPECT_EQ(shrink.error().code, Errc::invalid_argument);

  auto deleted = client_->delete_volume("vol1");
  ASSERT_TRUE(deleted) << deleted.error().message;
  EXPECT_EQ(client_->list_volumes().value().volumes_size(), 1);
  EXPECT_EQ(client_->get_volume("vol1").error().http_status, 404);
}

TEST_F(ControlApi, DuplicateNameIsConflict) {
  ASSERT_TRUE(client_->create_volume("dup", 1 << 20));
  auto again = client_->create_volume("dup", 1 << 20);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().http_status, 409);
  EXPECT_EQ(again.error().code, Errc::already_exists);
  EXPECT_NE(again.error().message.find("dup"), std::string::npos) << again.error().message;
}

TEST_F(ControlApi, UnknownVolumeIsNotFound) {
  for (auto r : {client_->get_volume("nope"), client_->resize_volume("nope", 1 << 30)}) {
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().http_status, 404);
    EXPECT_EQ(r.error().code, Errc::not_found);
  }
  auto d = client_->delete_volume("nope");
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().http_status, 404);
}

TEST_F(ControlApi, EngineErrorsMapToHttpStatus) {
  auto huge = client_->create_volume("huge", kVolumeSizeMaxBytes + 1);
  ASSERT_FALSE(huge);
  EXPECT_EQ(huge.error().http_status, 413);
  EXPECT_EQ(huge.error().code, Errc::too_large);
  auto full = client_->create_volume("full", FakeVolumeStore::kCapacityBytes + 1);
  ASSERT_FALSE(full);
  EXPECT_EQ(full.error().http_status, 507);
  EXPECT_EQ(full.error().code, Errc::no_space);
}

TEST_F(ControlApi, InvalidRequestsAreBadRequest) {
  auto bad_name = client_->create_volume("a/b", 1 << 20);
  ASSERT_FALSE(bad_name);
  EXPECT_EQ(bad_name.error().http_status, 400);
  auto zero = client_->create_volume("zero", 0);
  ASSERT_FALSE(zero);
  EXPECT_EQ(zero.error().http_status, 400);
  auto too_long = client_->create_volume(std::string(kVolumeNameMaxBytes + 1, 'a'), 1 << 20);
  ASSERT_FALSE(too_long);
  EXPECT_EQ(too_long.error().http_status, 400);
}

TEST_F(ControlApi, MalformedJsonIsBadRequest) {
  for (const char* body :
       {"{\"name\": ", "not json", "", "{\"name\":\"x\",\"sizeBytes\":1,\"color\":1}",
        "{\"name\":\"x\",\"sizeBytes\":\"ten\"}"}) {
    auto r = client_->raw("POST", "/v1/volumes", body);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r.value().status, 400) << body;
    EXPECT_NE(r.value().body.find("\"code\":\"invalid_argument\""), std::string::npos)
        << r.value().body;
  }
  EXPECT_EQ(client_->list_volumes().value().volumes_size(), 0);
}

TEST_F(ControlApi, AcceptsSnakeCaseAndStringNumbers) {
  auto r = client_->raw("POST", "/v1/volumes", R"({"name":"snake","size_bytes":"4096"})");
  ASSERT_TRUE(r);
  EXPECT_EQ(r.value().status, 201) << r.value().body;
  EXPECT_NE(r.value().body.find("\"sizeBytes\":\"4096\""), std::string::npos) << r.value().body;
  EXPECT_NE(r.value().body.find("\"nbdExport\":\"snake\""), std::string::npos) << r.value().body;
  EXPECT_EQ(r.value().content_type, "application/json");
}

TEST_F(ControlApi, MissingTokenIsUnauthorized) {
  ControlClient anonymous(url_, "");
  auto r = anonymous.list_volumes();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().http_status, 401);
  EXPECT_EQ(r.error().code, Errc::permission_denied);
  auto raw = client_->raw("GET", "/v1/volumes", {}, /*with_token=*/false);
  ASSERT_TRUE(raw);
  EXPECT_EQ(raw.value().status, 401);
  EXPECT_NE(raw.value().body.find("\"code\":\"unauthenticated\""), std::string::npos);
}

TEST_F(ControlApi, WrongTokenIsUnauthorized) {
  for (std::string token :
       {std::string("wrong"), std::string(kToken) + "x", std::string(kToken).substr(1)}) {
    ControlClient wrong(url_, token);
    auto r = wrong.create_volume("v", 1 << 20);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().http_status, 401);
  }
  auto basic = raw_exchange("GET /v1/volumes HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " +
                            std::string(kToken) + "\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(basic.rfind("HTTP/1.1 401", 0), 0u) << basic;
  EXPECT_EQ(client_->list_volumes().value().volumes_size(), 0);
}

TEST_F(ControlApi, OversizedBodyIsTooLarge) {
  std::string body = R"({"name":"big","sizeBytes":1,"x":")" + std::string(100 * 1024, 'a') + "\"}";
  auto r = client_->raw("POST", "/v1/volumes", body);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r.value().status, 413);
  EXPECT_NE(r.value().body.find("too_large"), std::string::npos) << r.value().body;
  // The server closed that connection; the client reconnects.
  ASSERT_TRUE(client_->create_volume("after", 1 << 20));
}

TEST_F(ControlApi, OversizedHeaderIsRejected) {
  auto reply = raw_exchange(
      "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(16 * 1024, 'h') + "\r\n\r\n");
  EXPECT_EQ(reply.rfind("HTTP/1.1 431", 0), 0u) << reply.substr(0, 200);
}

TEST_F(ControlApi, BusyDeleteConflictsThenForceSucceeds) {
  ASSERT_TRUE(client_->create_volume("busy", 1 << 20));
  store_.set_attached("busy", 2, 65536);
  auto info = client_->get_volume("busy");
  EXPECT_EQ(info.value().attached_connections(), 2u);
  EXPECT_EQ(info.value().allocated_bytes(), 65536u);
  auto refused = client_->delete_volume("busy");
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().http_status, 409);
  EXPECT_EQ(refused.error().code, Errc::busy);
  EXPECT_TRUE(client_->get_volume("busy"));
  auto forced = client_->delete_volume("busy", /*force=*/true);
  ASSERT_TRUE(forced) << forced.error().message;
  EXPECT_FALSE(client_->get_volume("busy"));
}

TEST_F(ControlApi, WrongMethodAndUnknownPath) {
  auto r = client_->raw("PUT", "/v1/volumes");
  ASSERT_TRUE(r);
  EXPECT_EQ(r.value().status, 405);
  r = client_->raw("GET", "/v1/volumes/x/resize");
  EXPECT_EQ(r.value().status, 405);
  r = client_->raw("POST", "/healthz");
  EXPECT_EQ(r.value().status, 405);
  for (const char* path :
       {"/v2/volumes", "/v1/volumes/x/grow", "/v1/nothing", "/", "/v1/volumes//x"}) {
    r = client_->raw("GET", path);
    ASSERT_TRUE(r);
    EXPECT_EQ(r.value().status, 404) << path;
    EXPECT_NE(r.value().body.find("not_found"), std::string::npos) << path;
  }
}

TEST_F(ControlApi, HealthzAndMetricsNeedNoToken) {
  ASSERT_TRUE(client_->create_volume("m", 1 << 20));
  auto health = client_->raw("GET", "/healthz", {}, false);
  ASSERT_TRUE(health);
  EXPECT_EQ(health.value().status, 200);
  EXPECT_EQ(health.value().body, "ok\n");
  auto m = client_->raw("GET", "/metrics", {}, false);
  ASSERT_TRUE(m);
  EXPECT_EQ(m.value().status, 200);
  const std::string& text = m.value().body;
  EXPECT_NE(text.find("\ncairn_volumes 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\ncairn_capacity_bytes 1099511627776\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\ncairn_used_bytes 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("cairn_http_requests_total{code=\"201\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("cairn_http_requests_total{code=\"200\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE cairn_http_requests_total counter"), std::string::npos) << text;
}

TEST_F(ControlApi, StatusMergesDaemonViewAndStoreStats) {
  ASSERT_TRUE(client_->create_volume("s", 1 << 20));
  auto st = client_->status();
  ASSERT_TRUE(st) << st.error().message;
  EXPECT_EQ(st.value().version(), "test");
  EXPECT_EQ(st.value().nbd_tcp(), "127.0.0.1:10809");
  EXPECT_EQ(st.value().volumes(), 1u);
  EXPECT_EQ(st.value().capacity_bytes(), FakeVolumeStore::kCapacityBytes);
}

TEST_F(ControlApi, KeepAliveServesPipelinedRequests) {
  std::string req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
  std::string reply = raw_exchange(req + req + req);
  size_t count = 0;
  for (size_t pos = 0; (pos = reply.find("HTTP/1.1 200 OK", pos)) != std::string::npos; ++pos)
    ++count;
  EXPECT_EQ(count, 3u) << reply;
}

TEST_F(ControlApi, GarbageClosesOnlyThatConnection) {
  auto reply = raw_exchange(std::string("\x16\x03\x01\x02\x00garbage\r\n\r\n", 16));
  EXPECT_EQ(reply.rfind("HTTP/1.1 400", 0), 0u) << reply;
  reply = raw_exchange("GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n");
  EXPECT_EQ(reply.rfind("HTTP/1.1 400", 0), 0u) << reply;
  reply = raw_exchange("GET /v1/volumes/%zz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                       std::string(kToken) + "\r\n\r\n");
  EXPECT_EQ(reply.rfind("HTTP/1.1 404", 0), 0u) << reply;
  reply = raw_exchange("GET /heal");  // cut mid-request
  EXPECT_EQ(reply, "");
  EXPECT_TRUE(client_->list_volumes());
}

TEST_F(ControlApi, ConnectionLimitClosesExtraConnections) {
  blockd::ControlApi::Options options;
  options.connections_max = 2;
  start(options);
  asio::io_context ioc;
  auto ep = tcp::endpoint(asio::ip::make_address("127.0.0.1"), api_->port());
  tcp::socket a(ioc), b(ioc), c(ioc);
  a.connect(ep);
  b.connect(ep);
  c.connect(ep);
  char byte;
  boost::system::error_code ec;
  c.read_some(asio::buffer(&byte, 1), ec);  // the server closes the third at once
  EXPECT_EQ(ec, asio::error::eof);
  a.close();
  b.close();
  for (int i = 0; i < 100 && !client_->list_volumes(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(client_->list_volumes());
}

TEST_F(ControlApi, ReadTimeoutClosesIdleConnections) {
  blockd::ControlApi::Options options;
  options.read_timeout_ms = std::chrono::milliseconds(200);
  start(options);
  asio::io_context ioc;
  tcp::socket s(ioc);
  s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), api_->port()));
  auto t0 = std::chrono::steady_clock::now();
  char byte;
  boost::system::error_code ec;
  s.read_some(asio::buffer(&byte, 1), ec);
  EXPECT_TRUE(ec == asio::error::eof || ec == asio::error::connection_reset) << ec.message();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
}

TEST_F(ControlApi, StopClosesOpenConnections) {
  asio::io_context ioc;
  tcp::socket s(ioc);
  s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), api_->port()));
  ASSERT_TRUE(client_->list_volumes());  // client_ holds a keep-alive connection too
  auto t0 = std::chrono::steady_clock::now();
  api_->stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  EXPECT_EQ(api_->port(), 0);
  api_->stop();  // idempotent
}

TEST_F(ControlApi, ConnectionRefusedNamesUrl) {
  // Find a free port by binding and closing.
  asio::io_context ioc;
  tcp::acceptor probe(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  uint16_t port = probe.local_endpoint().port();
  probe.close();
  std::string url = "http://127.0.0.1:" + std::to_string(port);
  ControlClient client(url, kToken);
  auto r = client.list_volumes();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().http_status, 0);
  EXPECT_NE(r.error().message.find(url), std::string::npos) << r.error().message;
  EXPECT_EQ(r.error().code, std::error_code(ECONNREFUSED, std::system_category()));
}

TEST_F(ControlApi, StartFailsOnPortInUse) {
  FakeVolumeStore store;
  blockd::ControlApi first(store, kToken, nullptr);
  ASSERT_TRUE(first.start("127.0.0.1", 0));
  blockd::ControlApi second(store, kToken, nullptr);
  auto st = second.start("127.0.0.1", first.port());
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error(), std::error_code(EADDRINUSE, std::system_category()));
}

TEST_F(ControlApi, AdminTokenIsCreatedOnceWithMode0600) {
  char tmpl[] = "/tmp/cairn-token-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::string dir = std::string(tmpl) + "/data";
  auto token = load_or_create_admin_token(dir);
  ASSERT_TRUE(token) << token.error().message();
  EXPECT_EQ(token.value().size(), 64u);
  EXPECT_EQ(token.value().find_first_not_of("0123456789abcdef"), std::string::npos);
  struct stat st {};
  ASSERT_EQ(::stat((dir + "/admin.token").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto again = load_or_create_admin_token(dir);
  ASSERT_TRUE(again);
  EXPECT_EQ(again.value(), token.value());
  auto other = load_or_create_admin_token(std::string(tmpl) + "/other");
  ASSERT_TRUE(other);
  EXPECT_NE(other.value(), token.value());
  std::filesystem::remove_all(tmpl);
}

TEST(MetricsRegistry, RendersPrometheusText) {
  MetricsRegistry m;
  m.counter("cairn_test_total", {{"code", "200"}}, "Requests").inc(3);
  m.counter("cairn_test_total", {{"code", "200"}}).inc();
  m.counter("cairn_test_total", {{"code", "4\"0\\4\n"}}).inc();
  m.gauge("cairn_a_bytes").set(-5);
  EXPECT_EQ(m.render(),
            "# TYPE cairn_a_bytes gauge\n"
            "cairn_a_bytes -5\n"
            "# HELP cairn_test_total Requests\n"
            "# TYPE cairn_test_total counter\n"
            "cairn_test_total{code=\"200\"} 4\n"
            "cairn_test_total{code=\"4\\\"0\\\\4\\n\"} 1\n");
}

}  // namespace
}  // namespace cairn::blockd::test
