// ReplicaServer: the replica side of the replication link, started on a free 127.0.0.1 port
// over in-memory volumes and driven by a plain blocking TCP client that speaks
// link_protocol.h.
#include "replication/replica_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <utility>
#include <vector>

#include "replication/epoch_fence.h"
#include "replication/link_protocol.h"
#include "temp_dir.h"

#include "mem_volume.h"

namespace cairn::replication {
namespace {

using link::Reply;
using link::Request;
using link::Type;

using mem::MemStore;
using mem::MemVolume;

// A blocking client of the link. A receive timeout keeps a broken server from hanging the
// test run; no assertion depends on it.
class Client {
 public:
  explicit Client(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval tv{60, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  }
  ~Client() { ::close(fd_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return connected_; }

  bool send_raw(const void* p, size_t n) {
    auto* in = static_cast<const uint8_t*>(p);
    while (n > 0) {
      ssize_t k = ::send(fd_, in, n, MSG_NOSIGNAL);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) return false;
      in += k;
      n -= static_cast<size_t>(k);
    }
    return true;
  }
  bool send(const Request& r, const void* payload = nullptr, size_t len = 0) {
    uint8_t h[link::kRequestHeaderBytes];
    link::encode(r, h);
    return send_raw(h, sizeof(h)) && (len == 0 || send_raw(payload, len));
  }
  bool send(const Request& r, const std::string& payload) {
    return send(r, payload.data(), payload.size());
  }

  // Reads one reply; false on end of stream or error.
  bool recv(Reply* r) {
    uint8_t b[link::kReplyBytes];
    size_t got = 0;
    while (got < sizeof(b)) {
      ssize_t k = ::recv(fd_, b + got, sizeof(b) - got, 0);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) return false;
      got += static_cast<size_t>(k);
    }
    return link::decode(b, r);
  }
  Reply call(const Request& r, const void* payload = nullptr, size_t len = 0) {
    Reply rep;
    rep.error = 0xffffffff;
    EXPECT_TRUE(send(r, payload, len));
    EXPECT_TRUE(recv(&rep));
    EXPECT_EQ(rep.handle, r.handle);
    return rep;
  }
  Reply call(const Request& r, const std::string& payload) {
    return call(r, payload.data(), payload.size());
  }
  // True when the server closed the connection (end of stream or reset).
  bool closed() {
    uint8_t b;
    for (;;) {
      ssize_t k = ::recv(fd_, &b, 1, 0);
      if (k < 0 && errno == EINTR) continue;
      return k == 0 || (k < 0 && errno == ECONNRESET);
    }
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

Request hello_req(uint64_t epoch, uint64_t size, const std::string& name, uint64_t handle = 1) {
  Request r;
  r.type = Type::hello;
  r.handle = handle;
  r.epoch = epoch;
  r.offset = size;
  r.data_length = static_cast<uint32_t>(name.size());
  return r;
}

Request io_req(Type t, uint64_t epoch, uint64_t offset, uint32_t length, uint64_t handle,
               uint16_t flags = 0) {
  Request r;
  r.type = t;
  r.flags = flags;
  r.handle = handle;
  r.epoch = epoch;
  r.offset = offset;
  r.length = length;
  r.data_length = t == Type::write ? length : 0;
  return r;
}

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7);
  return v;
}

constexpr uint64_t kSize = 1 << 20;

class ReplicaServerTest : public ::testing::Test {
 protected:
  ReplicaServer::Options options() {
    ReplicaServer::Options o;
    o.state_dir = dir_.path() + "/fence";
    o.open_volume = [this](const std::string& name, uint64_t size, bool* created) {
      return store_.open(name, size, created);
    };
    o.snapshot = [this](const std::string& volume, const std::string& snapshot) -> Status {
      std::lock_guard lk(snap_mu_);
      snapshots_.emplace_back(volume, snapshot);
      return ok();
    };
    return o;
  }
  std::unique_ptr<ReplicaServer> start(ReplicaServer::Options o) {
    auto s = std::make_unique<ReplicaServer>(std::move(o));
    Status st = s->start("127.0.0.1", 0);
    EXPECT_TRUE(st) << (st ? "" : st.error().message());
    EXPECT_NE(s->port(), 0);
    return s;
  }
  void SetUp() override { server_ = start(options()); }

  // A connection that said HELLO for `name` with `epoch`.
  std::unique_ptr<Client> connect(uint64_t epoch, const std::string& name = "vol",
                                  uint64_t* value = nullptr) {
    auto c = std::make_unique<Client>(server_->port());
    EXPECT_TRUE(c->connected());
    Reply r = c->call(hello_req(epoch, kSize, name), name);
    EXPECT_EQ(r.error, 0u);
    if (value) *value = r.value;
    return c;
  }

  test::TempDir dir_;
  MemStore store_;
  std::mutex snap_mu_;
  std::vector<std::pair<std::string, std::string>> snapshots_;
  std::unique_ptr<ReplicaServer> server_;
};

TEST_F(ReplicaServerTest, HelloCreatesTheVolumeOnce) {
  uint64_t value = 0;
  auto c1 = connect(1, "vol", &value);
  EXPECT_EQ(value, link::kHelloCreated);
  auto vol = store_.get("vol");
  ASSERT_TRUE(vol);
  EXPECT_EQ(vol->size_bytes(), kSize);
  auto c2 = connect(1, "vol", &value);
  EXPECT_EQ(value, 0u);
  EXPECT_EQ(server_->epoch("vol"), 1u);
  EXPECT_EQ(server_->accepted(), 2u);
}

TEST_F(ReplicaServerTest, WriteLandsInTheVolume) {
  auto c = connect(3);
  auto data = pattern(8192, 11);
  Reply r = c->call(io_req(Type::write, 3, 4096, 8192, 42), data.data(), data.size());
  EXPECT_EQ(r.error, 0u);
  auto vol = store_.get("vol");
  EXPECT_EQ(vol->bytes(4096, 8192), data);
  EXPECT_EQ(vol->bytes(0, 4096), std::vector<uint8_t>(4096, 0));
  EXPECT_EQ(vol->fua_writes(), 0);

  r = c->call(io_req(Type::write, 3, 0, 512, 43, link::kFua), data.data(), 512);
  EXPECT_EQ(r.error, 0u);
  EXPECT_EQ(vol->fua_writes(), 1);
}

TEST_F(ReplicaServerTest, TrimAndZeroMakeZeros) {
  auto c = connect(1);
  auto vol = store_.get("vol");
  vol->fill(0xab);
  Reply r = c->call(io_req(Type::trim, 1, 4096, 4096, 1));
  EXPECT_EQ(r.error, 0u);
  r = c->call(io_req(Type::zero, 1, 65536, 1000, 2));
  EXPECT_EQ(r.error, 0u);
  r = c->call(io_req(Type::zero, 1, 131072, 4096, 3, link::kNoHole));
  EXPECT_EQ(r.error, 0u);
  EXPECT_EQ(vol->bytes(4096, 4096), std::vector<uint8_t>(4096, 0));
  EXPECT_EQ(vol->bytes(65536, 1000), std::vector<uint8_t>(1000, 0));
  EXPECT_EQ(vol->bytes(131072, 4096), std::vector<uint8_t>(4096, 0));
  EXPECT_EQ(vol->bytes(0, 4096), std::vector<uint8_t>(4096, 0xab));
  EXPECT_EQ(vol->bytes(65536 + 1000, 10), std::vector<uint8_t>(10, 0xab));
  EXPECT_EQ(vol->zeroes_released(), 1);
  EXPECT_EQ(vol->zeroes_kept(), 1);
}

TEST_F(ReplicaServerTest, FlushReachesTheVolume) {
  auto c = connect(1);
  Reply r = c->call(io_req(Type::flush, 1, 0, 0, 77));
  EXPECT_EQ(r.error, 0u);
  EXPECT_EQ(store_.get("vol")->flushes(), 1);
}

// Sends `n` writes of `len` bytes before reading any reply.
void pipeline(Client& c, MemVolume& vol, int n, uint32_t len) {
  std::vector<std::vector<uint8_t>> data;
  for (int i = 0; i < n; ++i) {
    data.push_back(pattern(len, static_cast<uint8_t>(i)));
    ASSERT_TRUE(c.send(io_req(Type::write, 1, uint64_t(i) * len, len, 1000 + i),
                       data.back().data(), len));
  }
  std::set<uint64_t> handles;
  for (int i = 0; i < n; ++i) {
    Reply r;
    ASSERT_TRUE(c.recv(&r)) << "reply " << i;
    EXPECT_EQ(r.error, 0u);
    handles.insert(r.handle);
  }
  std::set<uint64_t> expected;
  for (int i = 0; i < n; ++i) expected.insert(1000 + i);
  EXPECT_EQ(handles, expected);
  for (int i = 0; i < n; ++i) EXPECT_EQ(vol.bytes(uint64_t(i) * len, len), data[i]) << i;
}

TEST_F(ReplicaServerTest, PipelinedRequestsAllGetTheirReplies) {
  auto c = connect(1);
  pipeline(*c, *store_.get("vol"), 20, 4096);
}

TEST_F(ReplicaServerTest, PipelinedBeyondTheInflightLimit) {
  auto c = connect(1);
  pipeline(*c, *store_.get("vol"), 3 * ReplicaServer::kInflightMax + 5, 512);
}

TEST_F(ReplicaServerTest, HelloWithAnOlderEpochIsStale) {
  auto c1 = connect(5);
  Client c2(server_->port());
  Reply r = c2.call(hello_req(4, kSize, "vol"), std::string("vol"));
  EXPECT_EQ(r.error, uint32_t(ESTALE));
  EXPECT_EQ(server_->epoch("vol"), 5u);
}

TEST_F(ReplicaServerTest, AStaleHelloDoesNotCreateTheCopy) {
  server_->stop();
  {
    auto fence = EpochFence::open(options().state_dir);
    ASSERT_TRUE(fence);
    ASSERT_TRUE(fence.value()->admit("gone", 5));  // the copy was deleted, its fence kept
  }
  server_ = start(options());
  Client c(server_->port());
  Reply r = c.call(hello_req(4, kSize, "gone"), std::string("gone"));
  EXPECT_EQ(r.error, uint32_t(ESTALE));
  EXPECT_FALSE(store_.get("gone"));
}

TEST_F(ReplicaServerTest, ANewerHelloFencesOutTheOlderConnection) {
  auto old_primary = connect(1);
  auto a = pattern(4096, 1);
  Reply r = old_primary->call(io_req(Type::write, 1, 0, 4096, 10), a.data(), a.size());
  ASSERT_EQ(r.error, 0u);

  auto new_primary = connect(2);
  EXPECT_EQ(server_->epoch("vol"), 2u);

  auto b = pattern(4096, 99);
  r = old_primary->call(io_req(Type::write, 1, 0, 4096, 11), b.data(), b.size());
  EXPECT_EQ(r.error, uint32_t(ESTALE));
  r = old_primary->call(io_req(Type::trim, 1, 0, 4096, 12));
  EXPECT_EQ(r.error, uint32_t(ESTALE));
  r = old_primary->call(io_req(Type::flush, 1, 0, 0, 13));
  EXPECT_EQ(r.error, uint32_t(ESTALE));
  EXPECT_EQ(store_.get("vol")->bytes(0, 4096), a);

  r = new_primary->call(io_req(Type::write, 2, 0, 4096, 14), b.data(), b.size());
  EXPECT_EQ(r.error, 0u);
  EXPECT_EQ(store_.get("vol")->bytes(0, 4096), b);
}

TEST_F(ReplicaServerTest, MalformedRequestsGetEinvalAndCloseTheConnection) {
  auto vol = [&] { connect(1).reset(); return store_.get("vol"); }();
  const std::vector<uint8_t> zeros(kSize, 0);
  auto payload = pattern(4096, 5);

  {  // bad magic
    auto c = connect(1);
    uint8_t h[link::kRequestHeaderBytes];
    link::encode(io_req(Type::write, 1, 0, 16, 21), h);
    h[0] ^= 0xff;
    ASSERT_TRUE(c->send_raw(h, sizeof(h)));
    ASSERT_TRUE(c->send_raw(payload.data(), 16));
    Reply r;
    ASSERT_TRUE(c->recv(&r));
    EXPECT_EQ(r.error, uint32_t(EINVAL));
    EXPECT_EQ(r.handle, 21u);
    EXPECT_TRUE(c->closed());
  }
  {  // WRITE whose payload length differs from its length
    auto c = connect(1);
    Request req = io_req(Type::write, 1, 0, 4096, 22);
    req.data_length = 100;
    ASSERT_TRUE(c->send(req, payload.data(), 100));
    Reply r;
    ASSERT_TRUE(c->recv(&r));
    EXPECT_EQ(r.error, uint32_t(EINVAL));
    EXPECT_EQ(r.handle, 22u);
    EXPECT_TRUE(c->closed());
  }
  {  // larger than any payload may be: only the header is sent
    auto c = connect(1);
    ASSERT_TRUE(c->send(io_req(Type::write, 1, 0, link::kDataMaxBytes + 1, 23)));
    Reply r;
    ASSERT_TRUE(c->recv(&r));
    EXPECT_EQ(r.error, uint32_t(EINVAL));
    EXPECT_EQ(r.handle, 23u);
    EXPECT_TRUE(c->closed());
  }
  {  // an epoch other than the connection's
    auto c = connect(1);
    Reply r = c->call(io_req(Type::write, 2, 0, 16, 24), payload.data(), 16);
    EXPECT_EQ(r.error, uint32_t(EINVAL));
    EXPECT_TRUE(c->closed());
  }
  {  // beyond the end of the volume
    auto c = connect(1);
    Reply r = c->call(io_req(Type::trim, 1, kSize - 4096, 8192, 25));
    EXPECT_EQ(r.error, uint32_t(EINVAL));
    EXPECT_TRUE(c->closed());
  }
  {  // requests queued behind a malformed one are not applied
    auto c = connect(1);
    uint8_t bad[link::kRequestHeaderBytes] = {};
    ASSERT_TRUE(c->send_raw(bad, sizeof(bad)));
    ASSERT_TRUE(c->send(io_req(Type::write, 1, 0, 4096, 26), payload.data(), payload.size()));
    Reply r;
    ASSERT_TRUE(c->recv(&r));
    EXPECT_EQ(r.error, uint32_t(EINVAL));
    EXPECT_TRUE(c->closed());
  }
  EXPECT_EQ(vol->writes(), 0);
  EXPECT_EQ(vol->bytes(0, kSize), zeros);
  // The server still serves new connections.
  auto c = connect(1);
  Reply r = c->call(io_req(Type::flush, 1, 0, 0, 27));
  EXPECT_EQ(r.error, 0u);
}

TEST_F(ReplicaServerTest, RequestBeforeHelloIsInvalid) {
  Client c(server_->port());
  ASSERT_TRUE(c.connected());
  auto payload = pattern(512, 3);
  Reply r = c.call(io_req(Type::write, 1, 0, 512, 5), payload.data(), payload.size());
  EXPECT_EQ(r.error, uint32_t(EINVAL));
  EXPECT_TRUE(c.closed());
  EXPECT_FALSE(store_.get("vol"));
}

TEST_F(ReplicaServerTest, TheEpochSurvivesARestart) {
  connect(7).reset();
  EXPECT_EQ(server_->epoch("vol"), 7u);
  server_->stop();
  server_ = start(options());
  EXPECT_EQ(server_->epoch("vol"), 7u);
  Client stale(server_->port());
  Reply r = stale.call(hello_req(6, kSize, "vol"), std::string("vol"));
  EXPECT_EQ(r.error, uint32_t(ESTALE));
  uint64_t value = 1;
  auto c = connect(7, "vol", &value);
  EXPECT_EQ(value, 0u);  // the copy was there already
}

TEST_F(ReplicaServerTest, SnapshotCallsTheCallback) {
  auto c = connect(4);
  Request req = io_req(Type::snapshot, 4, 0, 0, 8);
  req.data_length = 5;
  Reply r = c->call(req, std::string("snap1"));
  EXPECT_EQ(r.error, 0u);
  std::lock_guard lk(snap_mu_);
  ASSERT_EQ(snapshots_.size(), 1u);
  EXPECT_EQ(snapshots_[0].first, "vol");
  EXPECT_EQ(snapshots_[0].second, "snap1");
}

TEST_F(ReplicaServerTest, SnapshotWithoutACallbackIsUnsupported) {
  server_->stop();
  auto o = options();
  o.snapshot = nullptr;
  server_ = start(std::move(o));
  auto c = connect(4);
  Request req = io_req(Type::snapshot, 4, 0, 0, 8);
  req.data_length = 5;
  Reply r = c->call(req, std::string("snap1"));
  EXPECT_EQ(r.error, uint32_t(EOPNOTSUPP));
  std::lock_guard lk(snap_mu_);
  EXPECT_TRUE(snapshots_.empty());
}

TEST_F(ReplicaServerTest, EngineErrorsBecomeErrnos) {
  server_->stop();
  auto o = options();
  o.open_volume = [](const std::string&, uint64_t, bool*) -> Result<std::shared_ptr<Volume>> {
    return Errc::no_space;
  };
  server_ = start(std::move(o));
  Client c(server_->port());
  Reply r = c.call(hello_req(1, kSize, "vol"), std::string("vol"));
  EXPECT_EQ(r.error, uint32_t(ENOSPC));
  EXPECT_EQ(server_->epoch("vol"), 0u);  // nothing admitted for a copy that is not there
}

TEST_F(ReplicaServerTest, ConnectionsBeyondTheLimitAreClosed) {
  server_->stop();
  auto o = options();
  o.connections_max = 1;
  server_ = start(std::move(o));
  auto c1 = connect(1);
  Client c2(server_->port());
  EXPECT_TRUE(c2.closed());
  Reply r = c1->call(io_req(Type::flush, 1, 0, 0, 3));
  EXPECT_EQ(r.error, 0u);
}

TEST_F(ReplicaServerTest, StopWithConnectionsOpenReturns) {
  auto c1 = connect(1);
  auto c2 = connect(1, "other");
  Client idle(server_->port());
  ASSERT_TRUE(idle.connected());
  auto payload = pattern(4096, 9);
  ASSERT_TRUE(c1->send(io_req(Type::write, 1, 0, 4096, 1), payload.data(), payload.size()));
  server_->stop();
  EXPECT_TRUE(c2->closed());
  EXPECT_TRUE(idle.closed());
  EXPECT_EQ(server_->port(), 0);
  server_->stop();  // idempotent
}

}  // namespace
}  // namespace cairn::replication
