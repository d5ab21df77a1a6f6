// EtcdClient, Watch and LeaseKeeper against a real etcd (Debian's etcd-server), started
// per test on free 127.0.0.1 ports in a temporary directory and stopped by its PID
// (etcd_server.h).
#include "replication/etcd_client.h"

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <barrier>
#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>

#include "common/asio.h"
#include "etcd_server.h"
#include "replication/lease_keeper.h"

namespace cairn::replication {
namespace {

using namespace std::chrono_literals;
using namespace test;
using tcp = asio::ip::tcp;

// A TCP relay to an upstream port on 127.0.0.1 that can cut every open link at once
// (new links are still accepted): a connection lost mid-stream or while idle.
class CuttingProxy {
 public:
  explicit CuttingProxy(uint16_t upstream_port)
      : upstream_(asio::ip::make_address("127.0.0.1"), upstream_port),
        acceptor_(ioc_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    accept();
    thread_ = std::thread([this] { ioc_.run(); });
  }
  ~CuttingProxy() {
    asio::post(ioc_, [this] {
      beast::error_code ignored;
      acceptor_.close(ignored);
      close_links();
    });
    thread_.join();
  }

  std::string endpoint() const { return url(acceptor_.local_endpoint().port()); }

  // Closes every open link; returns once they are closed.
  void cut() {
    std::promise<void> done;
    asio::post(ioc_, [this, &done] {
      close_links();
      done.set_value();
    });
    done.get_future().wait();
  }

 private:
  struct Link {
    explicit Link(asio::io_context& ioc) : client(ioc), server(ioc) {}
    tcp::socket client, server;
    std::array<char, 16384> up{}, down{};
  };

  void accept() {
    acceptor_.async_accept([this](beast::error_code ec, tcp::socket socket) {
      if (ec) return;
      auto link = std::make_shared<Link>(ioc_);
      link->client = std::move(socket);
      link->server.connect(upstream_, ec);  // loopback: completes at once
      if (!ec) {
        links_.push_back(link);
        pump(link, link->client, link->server, link->up);
        pump(link, link->server, link->client, link->down);
      }
      accept();
    });
  }

  void pump(std::shared_ptr<Link> link, tcp::socket& from, tcp::socket& to,
            std::array<char, 16384>& buf) {
    from.async_read_some(asio::buffer(buf), [this, link, &from, &to, &buf](
                                                beast::error_code ec, size_t n) {
      if (ec) return close(*link);
      asio::async_write(to, asio::buffer(buf.data(), n),
                        [this, link, &from, &to, &buf](beast::error_code wec, size_t) {
                          if (wec) return close(*link);
                          pump(link, from, to, buf);
                        });
    });
  }

  static void close(Link& link) {
    beast::error_code ignored;
    link.client.close(ignored);
    link.server.close(ignored);
  }
  void close_links() {
    for (auto& link : links_) close(*link);
    links_.clear();
  }

  asio::io_context ioc_;
  tcp::endpoint upstream_;
  tcp::acceptor acceptor_;
  std::vector<std::shared_ptr<Link>> links_;  // owned by the proxy's thread
  std::thread thread_;
};

uint16_t port_of(const std::string& endpoint) {
  return static_cast<uint16_t>(std::stoi(endpoint.substr(endpoint.rfind(':') + 1)));
}

// Waits (bounded) for the next event of `w`.
WatchEvent next_event(Watch& w) {
  auto r = w.next(std::chrono::duration_cast<std::chrono::milliseconds>(kEventually));
  EXPECT_TRUE(r) << r.error().message();
  if (!r || !r.value()) {
    ADD_FAILURE() << "no watch event";
    return {};
  }
  return *r.value();
}

std::string binary(std::initializer_list<int> bytes) {
  std::string s;
  for (int b : bytes) s.push_back(static_cast<char>(b));
  return s;
}

// ---- key-value ----

TEST_F(Etcd, PutGetRangeDeleteAreBinarySafe) {
  EtcdClient c({endpoint()});
  const std::string key = "cfg/" + binary({0, 0xff, '\n', '"', 0x80});
  std::string all_bytes;
  for (int i = 0; i < 256; ++i) all_bytes.push_back(static_cast<char>(i));

  auto rev1 = c.put(key, all_bytes);
  ASSERT_TRUE(rev1) << rev1.error().message();
  auto kv = c.get(key);
  ASSERT_TRUE(kv);
  EXPECT_EQ(kv.value().key, key);
  EXPECT_EQ(kv.value().value, all_bytes);
  EXPECT_EQ(kv.value().create_revision, rev1.value());
  EXPECT_EQ(kv.value().mod_revision, rev1.value());
  EXPECT_EQ(kv.value().version, 1);
  EXPECT_EQ(kv.value().lease, 0);

  auto rev2 = c.put(key, "");
  ASSERT_TRUE(rev2);
  EXPECT_GT(rev2.value(), rev1.value());
  kv = c.get(key);
  ASSERT_TRUE(kv);
  EXPECT_EQ(kv.value().value, "");
  EXPECT_EQ(kv.value().version, 2);
  EXPECT_EQ(kv.value().create_revision, rev1.value());

  // Neighbours of the prefix stay outside it; the one ending in 0xff stays inside.
  ASSERT_TRUE(c.put("cfg/a", "A"));
  ASSERT_TRUE(c.put("cfg/" + binary({0xff, 0xff}), "FF"));
  ASSERT_TRUE(c.put("cfg0", "outside"));
  ASSERT_TRUE(c.put("cfg", "outside"));
  auto r = c.range("cfg/");
  ASSERT_TRUE(r);
  ASSERT_EQ(r.value().kvs.size(), 3u);
  EXPECT_EQ(r.value().kvs[0].key, key);  // 0x00 sorts first
  EXPECT_EQ(r.value().kvs[1].key, "cfg/a");
  EXPECT_EQ(r.value().kvs[2].key, "cfg/" + binary({0xff, 0xff}));
  EXPECT_EQ(r.value().kvs[2].value, "FF");
  EXPECT_EQ(r.value().count, 3);
  EXPECT_FALSE(r.value().more);
  EXPECT_GE(r.value().revision, rev2.value());

  auto ff = c.range("cfg/" + binary({0xff}));
  ASSERT_TRUE(ff);
  ASSERT_EQ(ff.value().kvs.size(), 1u);
  EXPECT_EQ(ff.value().kvs[0].value, "FF");

  auto limited = c.range("cfg/", {.revision = 0, .limit = 1});
  ASSERT_TRUE(limited);
  EXPECT_EQ(limited.value().kvs.size(), 1u);
  EXPECT_TRUE(limited.value().more);
  EXPECT_EQ(limited.value().count, 3);

  // A read at an older revision sees the older value.
  auto old = c.range(key, {.revision = rev1.value()});
  ASSERT_TRUE(old);
  ASSERT_EQ(old.value().kvs.size(), 1u);
  EXPECT_EQ(old.value().kvs[0].value, all_bytes);
  auto future = c.range(key, {.revision = rev2.value() + 1000});
  ASSERT_FALSE(future);
  EXPECT_EQ(future.error(), Errc::out_of_range);

  auto everything = c.range("");
  ASSERT_TRUE(everything);
  EXPECT_EQ(everything.value().kvs.size(), 5u);

  auto deleted = c.del(key);
  ASSERT_TRUE(deleted);
  EXPECT_EQ(deleted.value(), 1);
  deleted = c.del(key);
  ASSERT_TRUE(deleted);
  EXPECT_EQ(deleted.value(), 0);
  auto gone = c.get(key);
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error(), Errc::not_found);

  deleted = c.del_prefix("cfg/");
  ASSERT_TRUE(deleted);
  EXPECT_EQ(deleted.value(), 2);
  r = c.range("cfg");
  ASSERT_TRUE(r);
  ASSERT_EQ(r.value().kvs.size(), 2u);
  EXPECT_EQ(r.value().kvs[0].key, "cfg");
  EXPECT_EQ(r.value().kvs[1].key, "cfg0");
}

TEST_F(Etcd, InvalidArgumentsAreRefusedLocally) {
  EtcdClient c({endpoint()});
  auto p = c.put("", "v");
  ASSERT_FALSE(p);
  EXPECT_EQ(p.error(), Errc::invalid_argument);
  auto g = c.get("");
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error(), Errc::invalid_argument);

  EtcdClient bad({"127.0.0.1:2379"});  // no scheme
  auto b = bad.get("k");
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error(), Errc::invalid_argument);
  auto w = bad.watch("k");
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error(), Errc::invalid_argument);
}

// ---- transactions ----

TEST_F(Etcd, TxnComparesAndSwaps) {
  EtcdClient c({endpoint()});
  using Op = Compare::Op;
  ASSERT_TRUE(c.put("vol/1/epoch", "0"));
  auto kv = c.get("vol/1/epoch");
  ASSERT_TRUE(kv);
  const int64_t rev = kv.value().mod_revision;

  auto t = c.txn({Compare::mod_revision("vol/1/epoch", Op::equal, rev)},
                 {TxnOp::put("vol/1/epoch", "1")}, {TxnOp::get("vol/1/epoch")});
  ASSERT_TRUE(t) << t.error().message();
  EXPECT_TRUE(t.value().succeeded);
  ASSERT_EQ(t.value().responses.size(), 1u);
  EXPECT_EQ(t.value().responses[0].type, TxnOp::Type::put);
  EXPECT_GT(t.value().revision, rev);

  // The same swap again is stale: the failure branch reads what won.
  t = c.txn({Compare::mod_revision("vol/1/epoch", Op::equal, rev)},
            {TxnOp::put("vol/1/epoch", "1")}, {TxnOp::get("vol/1/epoch")});
  ASSERT_TRUE(t);
  EXPECT_FALSE(t.value().succeeded);
  ASSERT_EQ(t.value().responses.size(), 1u);
  EXPECT_EQ(t.value().responses[0].type, TxnOp::Type::range);
  ASSERT_EQ(t.value().responses[0].range.kvs.size(), 1u);
  EXPECT_EQ(t.value().responses[0].range.kvs[0].value, "1");

  // Create-if-absent holds once.
  t = c.txn({Compare::absent("vol/2/owner")}, {TxnOp::put("vol/2/owner", "node-a")});
  ASSERT_TRUE(t);
  EXPECT_TRUE(t.value().succeeded);
  t = c.txn({Compare::absent("vol/2/owner")}, {TxnOp::put("vol/2/owner", "node-b")});
  ASSERT_TRUE(t);
  EXPECT_FALSE(t.value().succeeded);
  EXPECT_TRUE(t.value().responses.empty());
  EXPECT_EQ(c.get("vol/2/owner").value().value, "node-a");

  // Value, version and combined compares; several ops in one branch.
  t = c.txn({Compare::value_is("vol/2/owner", Op::equal, "node-a"),
             Compare::version("vol/1/epoch", Op::greater, 1)},
            {TxnOp::del("vol/2/owner"), TxnOp::put("vol/1/epoch", "2"), TxnOp::range("vol/")});
  ASSERT_TRUE(t);
  EXPECT_TRUE(t.value().succeeded);
  ASSERT_EQ(t.value().responses.size(), 3u);
  EXPECT_EQ(t.value().responses[0].deleted, 1);
  ASSERT_EQ(t.value().responses[2].range.kvs.size(), 1u);
  EXPECT_EQ(t.value().responses[2].range.kvs[0].value, "2");

  // A value compare on an absent key is false.
  t = c.txn({Compare::value_is("vol/2/owner", Op::not_equal, "x")}, {});
  ASSERT_TRUE(t);
  EXPECT_FALSE(t.value().succeeded);

  // etcd refuses two writes of one key in a branch.
  t = c.txn({}, {TxnOp::put("dup", "1"), TxnOp::put("dup", "2")});
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error(), Errc::invalid_argument);
}

TEST_F(Etcd, TwoClientsRacingToBumpAnEpochOneWinsEachRound) {
  constexpr int kRounds = 25;
  {
    EtcdClient c({endpoint()});
    ASSERT_TRUE(c.put("vol/9/epoch", "0"));
  }
  std::array<std::atomic<int>, kRounds> winners{};
  std::barrier sync(2);
  auto contender = [&] {
    EtcdClient c({endpoint()});
    for (int round = 0; round < kRounds; ++round) {
      auto kv = c.get("vol/9/epoch");
      EXPECT_TRUE(kv);
      sync.arrive_and_wait();  // both read the same epoch before either swaps
      if (kv) {
        const int epoch = std::stoi(kv.value().value);
        auto t = c.txn({Compare::mod_revision("vol/9/epoch", Compare::Op::equal,
                                              kv.value().mod_revision)},
                       {TxnOp::put("vol/9/epoch", std::to_string(epoch + 1))});
        EXPECT_TRUE(t);
        if (t && t.value().succeeded) winners[round].fetch_add(1);
      }
      sync.arrive_and_wait();
    }
  };
  std::thread a(contender), b(contender);
  a.join();
  b.join();
  for (int round = 0; round < kRounds; ++round) EXPECT_EQ(winners[round].load(), 1) << round;
  EtcdClient c({endpoint()});
  EXPECT_EQ(c.get("vol/9/epoch").value().value, std::to_string(kRounds));
}

// ---- leases ----

TEST_F(Etcd, LeaseKeysGoWithRevoke) {
  EtcdClient c({endpoint()});
  auto lease = c.lease_grant(30);
  ASSERT_TRUE(lease) << lease.error().message();
  EXPECT_NE(lease.value().id, 0);
  EXPECT_EQ(lease.value().ttl_s, 30);
  ASSERT_TRUE(c.put("node/1", "up", lease.value().id));
  auto kv = c.get("node/1");
  ASSERT_TRUE(kv);
  EXPECT_EQ(kv.value().lease, lease.value().id);

  auto ttl = c.lease_keepalive_once(lease.value().id);
  ASSERT_TRUE(ttl) << ttl.error().message();
  EXPECT_EQ(ttl.value(), 30);

  ASSERT_TRUE(c.lease_revoke(lease.value().id));
  auto gone = c.get("node/1");
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error(), Errc::not_found);

  ttl = c.lease_keepalive_once(lease.value().id);
  ASSERT_FALSE(ttl);
  EXPECT_EQ(ttl.error(), Errc::not_found);
  auto again = c.lease_revoke(lease.value().id);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error(), Errc::not_found);
  auto put = c.put("node/1", "up", lease.value().id);
  ASSERT_FALSE(put);
  EXPECT_EQ(put.error(), Errc::not_found);
}

TEST_F(Etcd, LeaseKeysGoWithExpiry) {
  EtcdClient c({endpoint()});
  auto lease = c.lease_grant(2);
  ASSERT_TRUE(lease);
  ASSERT_TRUE(c.put("node/2", "up", lease.value().id));
  bool expired = false;
  for (int i = 0; i < 600 && !expired; ++i) {  // a state wait, bounded at about 60 s
    auto kv = c.get("node/2");
    if (!kv) {
      EXPECT_EQ(kv.error(), Errc::not_found);
      expired = true;
    } else {
      std::this_thread::sleep_for(100ms);
    }
  }
  ASSERT_TRUE(expired);
  auto ttl = c.lease_keepalive_once(lease.value().id);
  ASSERT_FALSE(ttl);
  EXPECT_EQ(ttl.error(), Errc::not_found);
}

// Records LeaseKeeper's loss callback.
struct LossProbe {
  std::mutex mu;
  std::condition_variable cv;
  int calls = 0;
  std::error_code reason;

  LeaseKeeper::LossCallback callback() {
    return [this](std::error_code why) {
      std::lock_guard lock(mu);
      ++calls;
      reason = why;
      cv.notify_all();
    };
  }
  bool wait() {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, kEventually, [&] { return calls > 0; });
  }
};

TEST_F(Etcd, LeaseKeeperKeepsAKeyAlivePastSeveralTtls) {
  EtcdClient c({endpoint()});
  LossProbe probe;
  auto keeper = LeaseKeeper::start(c, 2, probe.callback());
  ASSERT_TRUE(keeper) << keeper.error().message();
  const int64_t ttl_s = keeper.value()->ttl_s();
  ASSERT_TRUE(c.put("node/3", "up", keeper.value()->lease_id()));
  std::this_thread::sleep_for(std::chrono::seconds(4 * ttl_s));  // several TTLs
  auto kv = c.get("node/3");
  ASSERT_TRUE(kv) << "the key expired although its lease was kept alive";
  EXPECT_EQ(kv.value().lease, keeper.value()->lease_id());
  EXPECT_FALSE(keeper.value()->lost());

  ASSERT_TRUE(keeper.value()->revoke());
  auto gone = c.get("node/3");
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error(), Errc::not_found);
  std::lock_guard lock(probe.mu);
  EXPECT_EQ(probe.calls, 0);
}

TEST_F(Etcd, LeaseKeeperReportsLossWhenEtcdStops) {
  EtcdClient::Options o;
  o.timeout = 4s;  // etcd must answer until it is stopped, even on a loaded machine
  o.attempt_timeout = 2s;
  EtcdClient c({endpoint()}, o);
  LossProbe probe;
  auto keeper = LeaseKeeper::start(c, 2, probe.callback());
  ASSERT_TRUE(keeper);
  server().stop();
  ASSERT_TRUE(probe.wait()) << "no loss reported";
  EXPECT_EQ(probe.reason, Errc::unavailable);
  EXPECT_TRUE(keeper.value()->lost());
  keeper.value()->stop();
  std::lock_guard lock(probe.mu);
  EXPECT_EQ(probe.calls, 1);
}

TEST_F(Etcd, LeaseKeeperReportsLossWhenTheLeaseIsRevoked) {
  EtcdClient c({endpoint()});
  LossProbe probe;
  auto keeper = LeaseKeeper::start(c, 3, probe.callback());
  ASSERT_TRUE(keeper);
  ASSERT_TRUE(c.lease_revoke(keeper.value()->lease_id()));  // e.g. an operator evicting it
  ASSERT_TRUE(probe.wait());
  EXPECT_EQ(probe.reason, Errc::not_found);
  EXPECT_TRUE(keeper.value()->lost());
}

// ---- watches ----

TEST_F(Etcd, WatchDeliversPutsAndDeletesInOrderFromARevision) {
  EtcdClient c({endpoint()});
  auto first = c.put("w/a", "1");
  ASSERT_TRUE(first);
  ASSERT_TRUE(c.put("w/" + binary({0, 0xfe}), binary({0xff, 0})));
  ASSERT_TRUE(c.put("other/x", "not watched"));
  ASSERT_TRUE(c.del("w/a"));
  ASSERT_TRUE(c.put("w/a", "3"));

  auto w = c.watch("w/", first.value());
  ASSERT_TRUE(w) << w.error().message();
  EXPECT_EQ(w.value()->start_revision(), first.value());

  struct Expected {
    WatchEvent::Type type;
    std::string key, value;
  };
  std::vector<Expected> expected = {
      {WatchEvent::Type::put, "w/a", "1"},
      {WatchEvent::Type::put, "w/" + binary({0, 0xfe}), binary({0xff, 0})},
      {WatchEvent::Type::del, "w/a", ""},
      {WatchEvent::Type::put, "w/a", "3"},
  };
  int64_t last_revision = 0;
  for (const auto& e : expected) {
    WatchEvent ev = next_event(*w.value());
    EXPECT_EQ(ev.type, e.type);
    EXPECT_EQ(ev.kv.key, e.key);
    EXPECT_EQ(ev.kv.value, e.value);
    EXPECT_GT(ev.kv.mod_revision, last_revision);
    last_revision = ev.kv.mod_revision;
  }
  EXPECT_EQ(c.get("w/a").value().mod_revision, last_revision);

  // Live changes after the history, one transaction's events in one revision.
  auto t = c.txn({}, {TxnOp::put("w/b", "B"), TxnOp::del("w/a"), TxnOp::put("other/y", "no")});
  ASSERT_TRUE(t);
  WatchEvent b = next_event(*w.value());
  WatchEvent a = next_event(*w.value());
  EXPECT_EQ(b.type, WatchEvent::Type::put);
  EXPECT_EQ(b.kv.key, "w/b");
  EXPECT_EQ(a.type, WatchEvent::Type::del);
  EXPECT_EQ(a.kv.key, "w/a");
  EXPECT_EQ(a.kv.mod_revision, t.value().revision);
  EXPECT_EQ(b.kv.mod_revision, t.value().revision);

  auto none = w.value()->next(0ms);
  ASSERT_TRUE(none);
  EXPECT_FALSE(none.value().has_value());
}

TEST_F(Etcd, WatchFromNowSeesOnlyLaterChanges) {
  EtcdClient c({endpoint()});
  auto before = c.put("n/old", "1");
  ASSERT_TRUE(before);
  auto w = c.watch("n/");
  ASSERT_TRUE(w);
  EXPECT_EQ(w.value()->start_revision(), before.value() + 1);
  auto after = c.put("n/new", "2");
  ASSERT_TRUE(after);
  WatchEvent ev = next_event(*w.value());
  EXPECT_EQ(ev.kv.key, "n/new");
  EXPECT_EQ(ev.kv.mod_revision, after.value());
}

TEST_F(Etcd, WatchCancelWakesABlockedNext) {
  EtcdClient c({endpoint()});
  auto w = c.watch("c/");
  ASSERT_TRUE(w);
  Watch& watch = *w.value();
  std::error_code seen;
  std::thread consumer([&] {
    auto r = watch.next(std::chrono::duration_cast<std::chrono::milliseconds>(kEventually));
    if (!r) seen = r.error();
  });
  watch.cancel();
  consumer.join();
  EXPECT_EQ(seen, std::errc::operation_canceled);
  watch.cancel();  // idempotent
  ASSERT_TRUE(c.put("c/after", "x"));
  auto r = watch.next(0ms);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), std::errc::operation_canceled);
}

TEST_F(Etcd, WatchEndsUnavailableWhenEtcdStops) {
  EtcdClient::Options o;
  o.timeout = 4s;  // etcd must answer until it is stopped, even on a loaded machine
  o.attempt_timeout = 2s;
  EtcdClient c({endpoint()}, o);
  auto w = c.watch("s/");
  ASSERT_TRUE(w);
  ASSERT_TRUE(c.put("s/1", "x"));
  WatchEvent ev = next_event(*w.value());
  EXPECT_EQ(ev.kv.key, "s/1");
  server().stop();
  auto r = w.value()->next(std::chrono::duration_cast<std::chrono::milliseconds>(kEventually));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), Errc::unavailable);
}

TEST_F(Etcd, WatchResumesWhereItStoppedAfterTheConnectionIsCut) {
  CuttingProxy proxy(port_of(endpoint()));
  EtcdClient direct({endpoint()});
  EtcdClient c({proxy.endpoint()});
  auto w = c.watch("r/");
  ASSERT_TRUE(w) << w.error().message();
  ASSERT_TRUE(direct.put("r/1", "a"));
  EXPECT_EQ(next_event(*w.value()).kv.key, "r/1");
  proxy.cut();
  ASSERT_TRUE(direct.put("r/2", "b"));  // while the stream is down, or after it resumed
  ASSERT_TRUE(direct.del("r/1"));
  WatchEvent two = next_event(*w.value());
  EXPECT_EQ(two.type, WatchEvent::Type::put);
  EXPECT_EQ(two.kv.key, "r/2");
  WatchEvent del = next_event(*w.value());
  EXPECT_EQ(del.type, WatchEvent::Type::del);
  EXPECT_EQ(del.kv.key, "r/1");
  proxy.cut();
  ASSERT_TRUE(direct.put("r/3", "c"));
  EXPECT_EQ(next_event(*w.value()).kv.key, "r/3");
  // Nothing twice.
  ASSERT_TRUE(direct.put("r/4", "d"));
  EXPECT_EQ(next_event(*w.value()).kv.key, "r/4");
}

TEST_F(Etcd, AnIdleConnectionClosedUnderneathIsReplacedQuietly) {
  CuttingProxy proxy(port_of(endpoint()));
  EtcdClient c({proxy.endpoint()});
  ASSERT_TRUE(c.put("i/k", "v"));
  proxy.cut();  // the pooled connection is now dead
  auto kv = c.get("i/k");
  ASSERT_TRUE(kv) << kv.error().message();
  EXPECT_EQ(kv.value().value, "v");
  proxy.cut();
  auto t = c.txn({Compare::value_is("i/k", Compare::Op::equal, "v")}, {TxnOp::put("i/k", "w")});
  ASSERT_TRUE(t) << t.error().message();
  EXPECT_TRUE(t.value().succeeded);
}

// ---- endpoints ----

TEST(EtcdEndpoints, UnreachableEndpointIsUnavailable) {
  EtcdClient::Options o;
  o.timeout = 2s;
  o.attempt_timeout = 1s;
  EtcdClient c({url(unused_port())}, o);
  auto g = c.get("k");
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error(), Errc::unavailable);
  auto p = c.put("k", "v");
  ASSERT_FALSE(p);
  EXPECT_EQ(p.error(), Errc::unavailable);
  // Nothing was sent, so even a transaction is plainly unavailable.
  auto t = c.txn({}, {TxnOp::put("k", "v")});
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error(), Errc::unavailable);
  auto l = c.lease_grant(5);
  ASSERT_FALSE(l);
  EXPECT_EQ(l.error(), Errc::unavailable);
  auto w = c.watch("k");
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error(), Errc::unavailable);
}

// A listener that never accepts: connecting works (the kernel's backlog), answers never
// come. Reads end with unavailable once the timeout passes; a transaction that went out
// ends with io_error, as its outcome is unknown.
TEST(EtcdEndpoints, SilentEndpointTimesOut) {
  asio::io_context ioc;
  tcp::acceptor silent(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  EtcdClient::Options o;
  o.timeout = 1s;
  o.attempt_timeout = 500ms;
  EtcdClient c({url(silent.local_endpoint().port())}, o);
  auto g = c.get("k");
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error(), Errc::unavailable);
  auto t = c.txn({}, {TxnOp::put("k", "v")});
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error(), Errc::io_error);
}

TEST_F(Etcd, FailsOverToTheSecondEndpointWhenTheFirstIsDead) {
  EtcdClient::Options o;
  o.timeout = 10s;
  o.attempt_timeout = 2s;
  EtcdClient c({url(unused_port()), endpoint()}, o);
  auto rev = c.put("f/k", "v");
  ASSERT_TRUE(rev) << rev.error().message();
  auto kv = c.get("f/k");
  ASSERT_TRUE(kv);
  EXPECT_EQ(kv.value().value, "v");
  auto t = c.txn({Compare::mod_revision("f/k", Compare::Op::equal, rev.value())},
                 {TxnOp::put("f/k", "w")});
  ASSERT_TRUE(t);
  EXPECT_TRUE(t.value().succeeded);
  auto lease = c.lease_grant(10);
  ASSERT_TRUE(lease);
  ASSERT_TRUE(c.lease_keepalive_once(lease.value().id));
  auto w = c.watch("f/", rev.value());
  ASSERT_TRUE(w);
  EXPECT_EQ(next_event(*w.value()).kv.value, "v");
  EXPECT_EQ(next_event(*w.value()).kv.value, "w");
}

TEST_F(Etcd, FailsOverPastASilentFirstEndpoint) {
  asio::io_context ioc;
  tcp::acceptor silent(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  EtcdClient::Options o;
  // Generous per attempt: on a loaded machine etcd's own fsync may take a second.
  o.timeout = 20s;
  o.attempt_timeout = 3s;
  EtcdClient c({url(silent.local_endpoint().port()), endpoint()}, o);
  auto rev = c.put("h/k", "v");
  ASSERT_TRUE(rev) << rev.error().message();
  // The endpoint that answered is tried first from now on, transactions included.
  auto t = c.txn({Compare::mod_revision("h/k", Compare::Op::equal, rev.value())},
                 {TxnOp::put("h/k", "w")});
  ASSERT_TRUE(t) << t.error().message();
  EXPECT_TRUE(t.value().succeeded);
}

TEST_F(Etcd, ReplyLargerThanTheLimitIsTooLarge) {
  EtcdClient writer({endpoint()});
  ASSERT_TRUE(writer.put("big", std::string(8192, 'x')));
  EtcdClient::Options o;
  o.reply_body_max_bytes = 4096;
  EtcdClient c({endpoint()}, o);
  auto g = c.get("big");
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error(), Errc::too_large);
  ASSERT_TRUE(c.put("small", "fits"));
  EXPECT_EQ(c.get("small").value().value, "fits");
}

}  // namespace
}  // namespace cairn::replication
