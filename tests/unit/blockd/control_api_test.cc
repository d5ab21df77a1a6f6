// ControlApi over a fake in-memory VolumeStore, driven by the real ControlClient and, for
// malformed requests, by raw sockets.
#include "blockd/control_api.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <atomic>
#include <map>
#include <mutex>
#include <set>
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
    if (SnapshotInfo* parent = find_parent_locked(it->second)) --parent->clones;
    volumes_.erase(it);
    snapshots_.erase(name);
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

  // Snapshots: kept in creation order, answered newest first (the API must sort them).
  Result<SnapshotInfo> create_snapshot(const std::string& volume,
                                       const std::string& snapshot) override {
    if (!snapshots_supported_) return VolumeStore::create_snapshot(volume, snapshot);
    std::lock_guard lock(mu_);
    auto it = volumes_.find(volume);
    if (it == volumes_.end()) return Errc::not_found;
    if (find_snapshot_locked(volume, snapshot)) return Errc::already_exists;
    SnapshotInfo s;
    s.id = next_id_++;
    s.volume = volume;
    s.name = snapshot;
    s.seq = ++seq_;
    s.created_unix_s = 1700000000 + static_cast<int64_t>(s.seq);
    s.size_bytes = it->second.size_bytes;
    s.shared_bytes = it->second.allocated_bytes;
    snapshots_[volume].push_back(s);
    return s;
  }
  Result<std::vector<SnapshotInfo>> list_snapshots(const std::string& volume) override {
    if (!snapshots_supported_) return VolumeStore::list_snapshots(volume);
    std::lock_guard lock(mu_);
    if (!volumes_.count(volume)) return Errc::not_found;
    auto it = snapshots_.find(volume);
    if (it == snapshots_.end()) return std::vector<SnapshotInfo>{};
    return std::vector<SnapshotInfo>(it->second.rbegin(), it->second.rend());
  }
  Status delete_snapshot(const std::string& volume, const std::string& snapshot) override {
    if (!snapshots_supported_) return VolumeStore::delete_snapshot(volume, snapshot);
    std::lock_guard lock(mu_);
    SnapshotInfo* s = find_snapshot_locked(volume, snapshot);
    if (!s) return Errc::not_found;
    if (s->clones > 0 || exported_.count(volume + "@" + snapshot)) return Errc::busy;
    auto& list = snapshots_[volume];
    list.erase(list.begin() + (s - list.data()));
    return ok();
  }
  Result<VolumeInfo> clone_volume(const std::string& volume, const std::string& snapshot,
                                  const std::string& new_volume) override {
    if (!snapshots_supported_) return VolumeStore::clone_volume(volume, snapshot, new_volume);
    std::lock_guard lock(mu_);
    SnapshotInfo* s = find_snapshot_locked(volume, snapshot);
    if (!s) return Errc::not_found;
    if (volumes_.count(new_volume)) return Errc::already_exists;
    VolumeInfo v;
    v.id = next_id_++;
    v.name = new_volume;
    v.size_bytes = s->size_bytes;
    v.created_unix_s = 1700000000;
    v.shared_bytes = s->shared_bytes;
    v.parent = volume + "@" + snapshot;
    ++s->clones;
    volumes_[new_volume] = v;
    return v;
  }
  Status flatten_volume(const std::string& volume) override {
    if (!snapshots_supported_) return VolumeStore::flatten_volume(volume);
    std::lock_guard lock(mu_);
    auto it = volumes_.find(volume);
    if (it == volumes_.end()) return Errc::not_found;
    if (SnapshotInfo* parent = find_parent_locked(it->second)) --parent->clones;
    it->second.exclusive_bytes += it->second.shared_bytes;
    it->second.allocated_bytes = it->second.exclusive_bytes;
    it->second.shared_bytes = 0;
    it->second.parent.clear();
    return ok();
  }
  // Answers diff_runs_ whatever the points are; remembers the last question.
  Result<std::vector<DiffRun>> diff(const std::string& volume, const std::string& from,
                                    const std::string& to) override {
    if (!snapshots_supported_) return VolumeStore::diff(volume, from, to);
    std::lock_guard lock(mu_);
    if (!volumes_.count(volume)) return Errc::not_found;
    if (!from.empty() && !find_snapshot_locked(volume, from)) return Errc::not_found;
    if (!to.empty() && !find_snapshot_locked(volume, to)) return Errc::not_found;
    last_diff_ = {volume, from, to};
    return diff_runs_;
  }

  void set_snapshots_supported(bool supported) { snapshots_supported_ = supported; }
  void set_exported(const std::string& ref) {
    std::lock_guard lock(mu_);
    exported_.insert(ref);
  }
  void set_diff_runs(std::vector<DiffRun> runs) {
    std::lock_guard lock(mu_);
    diff_runs_ = std::move(runs);
  }
  std::vector<std::string> last_diff() {
    std::lock_guard lock(mu_);
    return last_diff_;
  }

  void set_attached(const std::string& name, uint32_t connections, uint64_t allocated_bytes) {
    std::lock_guard lock(mu_);
    volumes_.at(name).attached_connections = connections;
    volumes_.at(name).allocated_bytes = allocated_bytes;
  }

  static constexpr uint64_t kCapacityBytes = 1ull << 40;

 private:
  SnapshotInfo* find_snapshot_locked(const std::string& volume, const std::string& snapshot) {
    auto it = snapshots_.find(volume);
    if (it == snapshots_.end()) return nullptr;
    for (SnapshotInfo& s : it->second)
      if (s.name == snapshot) return &s;
    return nullptr;
  }
  SnapshotInfo* find_parent_locked(const VolumeInfo& v) {
    size_t at = v.parent.find('@');
    if (at == std::string::npos) return nullptr;
    return find_snapshot_locked(v.parent.substr(0, at), v.parent.substr(at + 1));
  }

  std::mutex mu_;
  std::map<std::string, VolumeInfo> volumes_;
  std::map<std::string, std::vector<SnapshotInfo>> snapshots_;  // by volume, oldest first
  std::set<std::string> exported_;                              // "vol@snap" open over NBD
  std::vector<DiffRun> diff_runs_;
  std::vector<std::string> last_diff_;  // volume, from, to
  std::atomic<bool> snapshots_supported_{true};
  uint64_t next_id_ = 1;
  uint64_t seq_ = 0;
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

// --- Snapshots, clones, diff ---------------------------------------------------------

TEST_F(ControlApi, SnapshotCreateListGetDelete) {
  ASSERT_TRUE(client_->create_volume("db", 1 << 30));
  store_.set_attached("db", 0, 1 << 20);
  auto s1 = client_->create_snapshot("db", "s1");
  ASSERT_TRUE(s1) << s1.error().message;
  EXPECT_EQ(s1.value().name(), "s1");
  EXPECT_EQ(s1.value().volume(), "db");
  EXPECT_EQ(s1.value().nbd_export(), "db@s1");
  EXPECT_EQ(s1.value().size_bytes(), 1u << 30);
  EXPECT_EQ(s1.value().shared_bytes(), 1u << 20);
  EXPECT_EQ(s1.value().created_unix_s(), 1700000001);
  ASSERT_TRUE(client_->create_snapshot("db", "s2"));
  ASSERT_TRUE(client_->create_snapshot("db", "a-first-by-name"));

  // The fake answers newest first; the API sorts oldest first.
  auto list = client_->list_snapshots("db");
  ASSERT_TRUE(list) << list.error().message;
  ASSERT_EQ(list.value().snapshots_size(), 3);
  EXPECT_EQ(list.value().snapshots(0).name(), "s1");
  EXPECT_EQ(list.value().snapshots(1).name(), "s2");
  EXPECT_EQ(list.value().snapshots(2).name(), "a-first-by-name");

  auto got = client_->get_snapshot("db", "s2");
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ(got.value().nbd_export(), "db@s2");
  EXPECT_EQ(got.value().id(), list.value().snapshots(1).id());

  auto deleted = client_->delete_snapshot("db", "s1");
  ASSERT_TRUE(deleted) << deleted.error().message;
  EXPECT_EQ(client_->list_snapshots("db").value().snapshots_size(), 2);
  auto gone = client_->get_snapshot("db", "s1");
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error().http_status, 404);

  auto empty = client_->create_volume("empty", 1 << 20);
  ASSERT_TRUE(empty);
  EXPECT_EQ(client_->list_snapshots("empty").value().snapshots_size(), 0);
}

TEST_F(ControlApi, SnapshotJsonUsesCamelCaseAndStatusCodes) {
  ASSERT_TRUE(client_->create_volume("db", 1 << 20));
  auto r = client_->raw("POST", "/v1/volumes/db/snapshots", R"({"name":"s1"})");
  ASSERT_TRUE(r);
  EXPECT_EQ(r.value().status, 201) << r.value().body;
  for (const char* field : {"\"nbdExport\":\"db@s1\"", "\"createdUnixS\":", "\"exclusiveBytes\":",
                            "\"sharedBytes\":", "\"clones\":0", "\"volume\":\"db\""})
    EXPECT_NE(r.value().body.find(field), std::string::npos) << field << " in " << r.value().body;
  r = client_->raw("GET", "/v1/volumes/db");
  for (const char* field : {"\"exclusiveBytes\":", "\"sharedBytes\":", "\"parent\":\"\""})
    EXPECT_NE(r.value().body.find(field), std::string::npos) << field << " in " << r.value().body;
  r = client_->raw("DELETE", "/v1/volumes/db/snapshots/s1");
  EXPECT_EQ(r.value().status, 204);
  EXPECT_EQ(r.value().body, "");
}

TEST_F(ControlApi, DuplicateSnapshotIsConflict) {
  ASSERT_TRUE(client_->create_volume("db", 1 << 20));
  ASSERT_TRUE(client_->create_snapshot("db", "s1"));
  auto again = client_->create_snapshot("db", "s1");
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().http_status, 409);
  EXPECT_EQ(again.error().code, Errc::already_exists);
  EXPECT_NE(again.error().message.find("db@s1"), std::string::npos) << again.error().message;
}

TEST_F(ControlApi, BusySnapshotDeleteSaysWhy) {
  ASSERT_TRUE(client_->create_volume("db", 1 << 20));
  ASSERT_TRUE(client_->create_snapshot("db", "cloned"));
  ASSERT_TRUE(client_->create_snapshot("db", "exported"));
  ASSERT_TRUE(client_->clone_volume("db", "cloned", "child"));
  store_.set_exported("db@exported");

  auto r = client_->delete_snapshot("db", "cloned");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().http_status, 409);
  EXPECT_EQ(r.error().code, Errc::busy);
  EXPECT_NE(r.error().message.find("1 clone(s) depend on it"), std::string::npos)
      << r.error().message;

  r = client_->delete_snapshot("db", "exported");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().http_status, 409);
  EXPECT_NE(r.error().message.find("exported over NBD as \"db@exported\""), std::string::npos)
      << r.error().message;
  EXPECT_EQ(client_->list_snapshots("db").value().snapshots_size(), 2);
}

TEST_F(ControlApi, CloneThenFlattenDetachesFromSnapshot) {
  ASSERT_TRUE(client_->create_volume("db", 1 << 30));
  store_.set_attached("db", 0, 1 << 20);
  ASSERT_TRUE(client_->create_snapshot("db", "s1"));
  auto clone = client_->clone_volume("db", "s1", "db-copy");
  ASSERT_TRUE(clone) << clone.error().message;
  EXPECT_EQ(clone.value().name(), "db-copy");
  EXPECT_EQ(clone.value().parent(), "db@s1");
  EXPECT_EQ(clone.value().size_bytes(), 1u << 30);
  EXPECT_EQ(clone.value().shared_bytes(), 1u << 20);
  EXPECT_EQ(clone.value().nbd_export(), "db-copy");
  EXPECT_EQ(client_->get_snapshot("db", "s1").value().clones(), 1u);
  EXPECT_EQ(client_->get_volume("db-copy").value().parent(), "db@s1");

  auto again = client_->clone_volume("db", "s1", "db-copy");
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().http_status, 409);
  EXPECT_EQ(again.error().code, Errc::already_exists);

  auto flat = client_->flatten_volume("db-copy");
  ASSERT_TRUE(flat) << flat.error().message;
  EXPECT_EQ(flat.value().parent(), "");
  EXPECT_EQ(flat.value().exclusive_bytes(), 1u << 20);
  EXPECT_EQ(flat.value().shared_bytes(), 0u);
  EXPECT_EQ(client_->get_snapshot("db", "s1").value().clones(), 0u);
  EXPECT_TRUE(client_->delete_snapshot("db", "s1"));

  // An empty body is accepted as well as "{}"; unknown fields are not.
  auto r = client_->raw("POST", "/v1/volumes/db-copy/flatten");
  EXPECT_EQ(r.value().status, 200) << r.value().body;
  r = client_->raw("POST", "/v1/volumes/db-copy/flatten", R"({"fast":true})");
  EXPECT_EQ(r.value().status, 400) << r.value().body;
}

TEST_F(ControlApi, DiffPassesPointsAndTotalsRuns) {
  ASSERT_TRUE(client_->create_volume("db", 1 << 30));
  ASSERT_TRUE(client_->create_snapshot("db", "s1"));
  ASSERT_TRUE(client_->create_snapshot("db", "s.2"));
  store_.set_diff_runs({{0, 65536, false}, {1 << 20, 4096, true}, {2 << 20, 8192, false}});

  auto d = client_->diff("db", "s1", "s.2");
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(store_.last_diff(), (std::vector<std::string>{"db", "s1", "s.2"}));
  ASSERT_EQ(d.value().runs_size(), 3);
  EXPECT_EQ(d.value().runs(1).offset_bytes(), 1u << 20);
  EXPECT_EQ(d.value().runs(1).length_bytes(), 4096u);
  EXPECT_TRUE(d.value().runs(1).zero());
  EXPECT_FALSE(d.value().runs(2).zero());
  EXPECT_EQ(d.value().changed_bytes(), 65536u + 8192u);
  EXPECT_EQ(d.value().zeroed_bytes(), 4096u);

  ASSERT_TRUE(client_->diff("db", "", ""));
  EXPECT_EQ(store_.last_diff(), (std::vector<std::string>{"db", "", ""}));
  ASSERT_TRUE(client_->diff("db", "s1", ""));
  EXPECT_EQ(store_.last_diff(), (std::vector<std::string>{"db", "s1", ""}));
  ASSERT_TRUE(client_->diff("db", "", "s1"));
  EXPECT_EQ(store_.last_diff(), (std::vector<std::string>{"db", "", "s1"}));

  auto r = client_->raw("GET", "/v1/volumes/db/diff?from=s1&to=s%2E2&from=s1");
  ASSERT_TRUE(r);
  EXPECT_EQ(r.value().status, 200) << r.value().body;
  EXPECT_EQ(store_.last_diff(), (std::vector<std::string>{"db", "s1", "s.2"}));
  for (const char* field : {"\"offsetBytes\":\"1048576\"", "\"lengthBytes\":\"4096\"",
                            "\"zero\":true", "\"changedBytes\":\"73728\"",
                            "\"zeroedBytes\":\"4096\""})
    EXPECT_NE(r.value().body.find(field), std::string::npos) << field << " in " << r.value().body;
  r = client_->raw("GET", "/v1/volumes/db/diff?from=&to=");
  EXPECT_EQ(r.value().status, 200) << r.value().body;
  EXPECT_EQ(store_.last_diff(), (std::vector<std::string>{"db", "", ""}));
}

TEST_F(ControlApi, UnknownSnapshotOrVolumeIsNotFound) {
  ASSERT_TRUE(client_->create_volume("db", 1 << 20));
  ASSERT_TRUE(client_->create_snapshot("db", "s1"));
  auto get = client_->get_snapshot("db", "nope");
  ASSERT_FALSE(get);
  EXPECT_EQ(get.error().http_status, 404);
  EXPECT_EQ(get.error().code, Errc::not_found);
  EXPECT_NE(get.error().message.find("db@nope"), std::string::npos) << get.error().message;
  auto del = client_->delete_snapshot("db", "nope");
  ASSERT_FALSE(del);
  EXPECT_EQ(del.error().http_status, 404);
  auto clone = client_->clone_volume("db", "nope", "c");
  ASSERT_FALSE(clone);
  EXPECT_EQ(clone.error().http_status, 404);
  auto diff = client_->diff("db", "nope", "");
  ASSERT_FALSE(diff);
  EXPECT_EQ(diff.error().http_status, 404);

  // An unknown volume is named as such.
  auto create = client_->create_snapshot("ghost", "s1");
  ASSERT_FALSE(create);
  EXPECT_EQ(create.error().http_status, 404);
  EXPECT_NE(create.error().message.find("no volume \"ghost\""), std::string::npos)
      << create.error().message;
  auto list = client_->list_snapshots("ghost");
  ASSERT_FALSE(list);
  EXPECT_EQ(list.error().http_status, 404);
  EXPECT_EQ(client_->get_snapshot("ghost", "s1").error().http_status, 404);
  EXPECT_EQ(client_->flatten_volume("ghost").error().http_status, 404);
  EXPECT_EQ(client_->diff("ghost", "", "").error().http_status, 404);
  EXPECT_EQ(client_->clone_volume("ghost", "s1", "c").error().http_status, 404);
  EXPECT_FALSE(client_->get_volume("c"));
}

TEST_F(ControlApi, BadSnapshotNamesAreBadRequest) {
  ASSERT_TRUE(client_->create_volume("db", 1 << 20));
  ASSERT_TRUE(client_->create_snapshot("db", "s1"));
  for (std::string bad : {std::string("a@b"), std::string("-x"), std::string(""),
                          std::string("a/b"), std::string(kVolumeNameMaxBytes + 1, 's')}) {
    auto r = client_->create_snapshot("db", bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().http_status, 400) << bad;
    EXPECT_EQ(r.error().code, Errc::invalid_argument) << bad;
    auto c = client_->clone_volume("db", "s1", bad);
    ASSERT_FALSE(c) << bad;
    EXPECT_EQ(c.error().http_status, 400) << bad;
  }
  EXPECT_EQ(client_->diff("db", "a@b", "").error().http_status, 400);
  EXPECT_EQ(client_->diff("db", "", "-x").error().http_status, 400);
  auto r = client_->raw("GET", "/v1/volumes/db/diff?from=%zz");
  EXPECT_EQ(r.value().status, 400) << r.value().body;
  r = client_->raw("POST", "/v1/volumes/db/snapshots", R"({"name":"s2","size":1})");
  EXPECT_EQ(r.value().status, 400) << r.value().body;
  r = client_->raw("POST", "/v1/volumes/db/snapshots/s1/clone", "not json");
  EXPECT_EQ(r.value().status, 400) << r.value().body;
  EXPECT_EQ(client_->list_snapshots("db").value().snapshots_size(), 1);
  EXPECT_EQ(client_->list_volumes().value().volumes_size(), 1);
}

TEST_F(ControlApi, SnapshotsUnsupportedByEngineIsNotImplemented) {
  ASSERT_TRUE(client_->create_volume("db", 1 << 20));
  store_.set_snapshots_supported(false);
  auto create = client_->create_snapshot("db", "s1");
  ASSERT_FALSE(create);
  EXPECT_EQ(create.error().http_status, 501);
  EXPECT_EQ(create.error().code, Errc::unsupported);
  EXPECT_NE(create.error().message.find("does not implement snapshots"), std::string::npos)
      << create.error().message;
  EXPECT_EQ(client_->list_snapshots("db").error().http_status, 501);
  EXPECT_EQ(client_->get_snapshot("db", "s1").error().http_status, 501);
  EXPECT_EQ(client_->delete_snapshot("db", "s1").error().http_status, 501);
  EXPECT_EQ(client_->clone_volume("db", "s1", "c").error().http_status, 501);
  EXPECT_EQ(client_->flatten_volume("db").error().http_status, 501);
  EXPECT_EQ(client_->diff("db", "", "").error().http_status, 501);
  auto raw = client_->raw("GET", "/v1/volumes/db/snapshots");
  EXPECT_NE(raw.value().body.find("\"code\":\"unsupported\""), std::string::npos)
      << raw.value().body;
}

TEST_F(ControlApi, SnapshotRoutesWrongMethodAndUnknownPath) {
  ASSERT_TRUE(client_->create_volume("db", 1 << 20));
  const std::pair<const char*, const char*> wrong[] = {
      {"PUT", "/v1/volumes/db/snapshots"},         {"POST", "/v1/volumes/db/snapshots/s1"},
      {"GET", "/v1/volumes/db/snapshots/s1/clone"}, {"GET", "/v1/volumes/db/flatten"},
      {"POST", "/v1/volumes/db/diff"},              {"DELETE", "/v1/volumes/db/diff"},
  };
  for (auto [method, path] : wrong) {
    auto r = client_->raw(method, path);
    ASSERT_TRUE(r);
    EXPECT_EQ(r.value().status, 405) << method << " " << path;
  }
  for (const char* path :
       {"/v1/volumes/db/snapshots/s1/copy", "/v1/volumes/db/snapshots/s1/clone/x",
        "/v1/volumes/db/diff/x", "/v1/volumes/db/snapshot"}) {
    auto r = client_->raw("GET", path);
    ASSERT_TRUE(r);
    EXPECT_EQ(r.value().status, 404) << path;
  }
  auto anonymous = client_->raw("GET", "/v1/volumes/db/snapshots", {}, /*with_token=*/false);
  EXPECT_EQ(anonymous.value().status, 401);
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
