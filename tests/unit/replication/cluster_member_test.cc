// ClusterMember against a real etcd (etcd_server.h): registration, listing, one live node
// per id, re-registration after a lost lease, clean leave. Every check reads etcd back.
#include "replication/cluster_member.h"

#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>

#include "etcd_server.h"
#include "replication/lease_keeper.h"

namespace cairn::replication {
namespace {

using namespace std::chrono_literals;
using namespace test;

std::string key_of(const std::string& id) { return std::string(ClusterMember::kNodesPrefix) + id; }

// A node's options with a short lease (expiry-driven tests end sooner) and fast retries.
ClusterMember::Options node(const std::string& id, const std::string& endpoint, int port_base = 1000) {
  ClusterMember::Options o;
  o.node_id = id;
  o.etcd_endpoints = {endpoint};
  o.nbd = "127.0.0.1:" + std::to_string(port_base + 1);
  o.api = "http://127.0.0.1:" + std::to_string(port_base + 2);
  o.replication = "127.0.0.1:" + std::to_string(port_base + 3);
  o.lease_ttl_s = 2;
  o.retry_interval = 200ms;
  o.expiry_margin = 1s;
  return o;
}

cairn::v1::ClusterNode parse(const std::string& json) {
  cairn::v1::ClusterNode n;
  auto st = google::protobuf::util::JsonStringToMessage(json, &n);
  EXPECT_TRUE(st.ok()) << json;
  return n;
}

// Polls `done` until it holds; false if it never did within kEventually (a hang).
template <class F>
bool eventually(F done) {
  const auto deadline = std::chrono::steady_clock::now() + kEventually;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(50ms);
  }
  return true;
}

std::unique_ptr<ClusterMember> must_start(ClusterMember::Options o) {
  std::string why;
  auto m = ClusterMember::start(std::move(o), &why);
  EXPECT_TRUE(m) << why;
  return m ? std::move(m.value()) : nullptr;
}

TEST_F(Etcd, MemberRegistersUnderItsLeaseAndIsListed) {
  auto opts = node("node-a", endpoint(), 1000);
  opts.usage = [] { return NodeUsage{100 << 20, 40 << 20, 3}; };
  auto a = must_start(opts);
  ASSERT_TRUE(a);
  EXPECT_TRUE(a->registered());
  EXPECT_NE(a->lease_id(), 0);
  EXPECT_EQ(a->registrations(), 1);
  EXPECT_EQ(a->node_id(), "node-a");

  EtcdClient c({endpoint()});
  auto kv = c.get(key_of("node-a"));
  ASSERT_TRUE(kv) << kv.error().message();
  EXPECT_EQ(kv.value().lease, a->lease_id());
  cairn::v1::ClusterNode stored = parse(kv.value().value);
  EXPECT_EQ(stored.id(), "node-a");
  EXPECT_EQ(stored.nbd(), "127.0.0.1:1001");
  EXPECT_EQ(stored.api(), "http://127.0.0.1:1002");
  EXPECT_EQ(stored.replication(), "127.0.0.1:1003");
  EXPECT_EQ(stored.capacity_bytes(), 100u << 20);
  EXPECT_EQ(stored.used_bytes(), 40u << 20);
  EXPECT_EQ(stored.volumes(), 3u);
  EXPECT_GT(stored.started_unix_s(), 0);
  EXPECT_EQ(stored.state(), "");  // state is the reader's, never stored

  auto b = must_start(node("node-b", endpoint(), 2000));
  ASSERT_TRUE(b);
  EXPECT_NE(b->lease_id(), a->lease_id());
  auto list = a->list_nodes();
  ASSERT_TRUE(list) << list.error().message();
  ASSERT_EQ(list.value().size(), 2u);
  EXPECT_EQ(list.value()[0].id(), "node-a");
  EXPECT_EQ(list.value()[0].state(), "up");
  EXPECT_EQ(list.value()[0].volumes(), 3u);
  EXPECT_EQ(list.value()[1].id(), "node-b");
  EXPECT_EQ(list.value()[1].state(), "up");
  EXPECT_EQ(list.value()[1].nbd(), "127.0.0.1:2001");
  EXPECT_EQ(list.value()[1].replication(), "127.0.0.1:2003");
  // Every member sees the same registry.
  auto from_b = b->list_nodes();
  ASSERT_TRUE(from_b);
  ASSERT_EQ(from_b.value().size(), 2u);
  EXPECT_EQ(from_b.value()[0].api(), "http://127.0.0.1:1002");
}

TEST_F(Etcd, DuplicateIdIsRefusedWhileTheFirstNodeIsAlive) {
  auto first = must_start(node("dup", endpoint(), 1000));
  ASSERT_TRUE(first);
  const int64_t lease = first->lease_id();

  std::string why;
  auto second = ClusterMember::start(node("dup", endpoint(), 5000), &why);
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error(), Errc::already_exists);
  EXPECT_NE(why.find("already registered by a live node"), std::string::npos) << why;
  EXPECT_NE(why.find("127.0.0.1:1001"), std::string::npos) << why;  // names the holder

  // The first node's registration is untouched, and its lease is still kept alive.
  EtcdClient c({endpoint()});
  auto kv = c.get(key_of("dup"));
  ASSERT_TRUE(kv);
  EXPECT_EQ(kv.value().lease, lease);
  EXPECT_EQ(parse(kv.value().value).nbd(), "127.0.0.1:1001");
  EXPECT_TRUE(first->registered());
  EXPECT_EQ(first->lease_id(), lease);
  auto list = first->list_nodes();
  ASSERT_TRUE(list);
  ASSERT_EQ(list.value().size(), 1u);
  EXPECT_EQ(list.value()[0].nbd(), "127.0.0.1:1001");
}

TEST_F(Etcd, StopRemovesTheNodeAtOnce) {
  auto a = must_start(node("a", endpoint(), 1000));
  auto b = must_start(node("b", endpoint(), 2000));
  ASSERT_TRUE(a && b);
  const int64_t lease = a->lease_id();
  a->stop();
  EXPECT_FALSE(a->registered());
  EXPECT_EQ(a->lease_id(), 0);
  // No waiting: the lease was revoked, so the key is gone now.
  EtcdClient c({endpoint()});
  auto gone = c.get(key_of("a"));
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error(), Errc::not_found);
  auto ttl = c.lease_keepalive_once(lease);
  ASSERT_FALSE(ttl);
  EXPECT_EQ(ttl.error(), Errc::not_found);
  auto list = b->list_nodes();
  ASSERT_TRUE(list);
  ASSERT_EQ(list.value().size(), 1u);
  EXPECT_EQ(list.value()[0].id(), "b");
  a->stop();  // idempotent
  // The id is free again at once.
  auto again = must_start(node("a", endpoint(), 3000));
  ASSERT_TRUE(again);
  EXPECT_EQ(parse(c.get(key_of("a")).value().value).nbd(), "127.0.0.1:3001");
}

// A node killed with SIGKILL leaves its key under a lease nobody renews; restarted, it
// takes the key over once that lease expired.
TEST_F(Etcd, AKeyLeftByADeadRunIsTakenOverOnceItsLeaseExpires) {
  EtcdClient c({endpoint()});
  auto dead = c.lease_grant(2);
  ASSERT_TRUE(dead);
  cairn::v1::ClusterNode old;
  old.set_id("n1");
  old.set_nbd("127.0.0.1:9");
  std::string old_json;
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(old, &old_json).ok());
  ASSERT_TRUE(c.put(key_of("n1"), old_json, dead.value().id));

  auto n1 = must_start(node("n1", endpoint(), 1000));
  ASSERT_TRUE(n1);
  auto kv = c.get(key_of("n1"));
  ASSERT_TRUE(kv);
  EXPECT_EQ(kv.value().lease, n1->lease_id());
  EXPECT_NE(kv.value().lease, dead.value().id);
  EXPECT_EQ(parse(kv.value().value).nbd(), "127.0.0.1:1001");
}

TEST_F(Etcd, AKeyWithoutLeaseIsTakenOverAtOnce) {
  EtcdClient c({endpoint()});
  ASSERT_TRUE(c.put(key_of("n2"), "left by hand"));
  auto n2 = must_start(node("n2", endpoint(), 1000));
  ASSERT_TRUE(n2);
  auto kv = c.get(key_of("n2"));
  ASSERT_TRUE(kv);
  EXPECT_EQ(kv.value().lease, n2->lease_id());
  EXPECT_EQ(parse(kv.value().value).id(), "n2");
}

TEST_F(Etcd, AnUnreadableRecordIsListedAsInvalid) {
  auto a = must_start(node("a", endpoint(), 1000));
  ASSERT_TRUE(a);
  EtcdClient c({endpoint()});
  ASSERT_TRUE(c.put(key_of("zz"), "not json"));
  auto list = a->list_nodes();
  ASSERT_TRUE(list);
  ASSERT_EQ(list.value().size(), 2u);
  EXPECT_EQ(list.value()[1].id(), "zz");
  EXPECT_EQ(list.value()[1].state(), "invalid");
  EXPECT_EQ(list.value()[0].state(), "up");
}

TEST_F(Etcd, ReRegistersWithANewLeaseAfterItsLeaseIsRevoked) {
  auto a = must_start(node("a", endpoint(), 1000));
  ASSERT_TRUE(a);
  const int64_t old_lease = a->lease_id();
  EtcdClient c({endpoint()});
  ASSERT_TRUE(c.lease_revoke(old_lease));  // e.g. an operator evicting it: the key goes
  ASSERT_TRUE(eventually([&] { return a->registrations() == 2 && a->registered(); }))
      << "the member did not register again";
  const int64_t new_lease = a->lease_id();
  EXPECT_NE(new_lease, old_lease);
  auto kv = c.get(key_of("a"));
  ASSERT_TRUE(kv) << kv.error().message();
  EXPECT_EQ(kv.value().lease, new_lease);
  EXPECT_EQ(parse(kv.value().value).nbd(), "127.0.0.1:1001");
  // The new lease is kept alive like the first.
  auto ttl = c.lease_keepalive_once(new_lease);
  ASSERT_TRUE(ttl) << ttl.error().message();
}

TEST_F(Etcd, ReRegistersWhenEtcdComesBack) {
  auto opts = node("a", endpoint(), 1000);
  opts.etcd.timeout = 4s;  // etcd must answer until it is stopped, even on a loaded machine
  opts.etcd.attempt_timeout = 2s;
  auto a = must_start(opts);
  ASSERT_TRUE(a);
  const int64_t old_lease = a->lease_id();
  server().stop();
  ASSERT_TRUE(eventually([&] { return !a->registered(); })) << "the lease loss was not noticed";
  auto unreachable = a->list_nodes();
  ASSERT_FALSE(unreachable);
  EXPECT_EQ(unreachable.error(), Errc::unavailable);

  // etcd restarts with its data: the old lease comes back with it for a while; the member
  // revokes it (it is its own) and registers under a new one.
  server().start();
  ASSERT_EQ(server().error(), "");
  ASSERT_TRUE(eventually([&] { return a->registered(); })) << "the member did not register again";
  EXPECT_EQ(a->registrations(), 2);
  EXPECT_NE(a->lease_id(), old_lease);
  EtcdClient c({endpoint()});
  auto kv = c.get(key_of("a"));
  ASSERT_TRUE(kv) << kv.error().message();
  EXPECT_EQ(kv.value().lease, a->lease_id());
  auto list = a->list_nodes();
  ASSERT_TRUE(list);
  ASSERT_EQ(list.value().size(), 1u);
  EXPECT_EQ(list.value()[0].state(), "up");
}

TEST_F(Etcd, RefreshRepublishesUsage) {
  std::atomic<uint64_t> used{1000}, volumes{1};
  auto opts = node("a", endpoint(), 1000);
  opts.refresh_interval = 100ms;
  opts.usage = [&] { return NodeUsage{1 << 30, used.load(), volumes.load()}; };
  auto a = must_start(opts);
  ASSERT_TRUE(a);
  EtcdClient c({endpoint()});
  EXPECT_EQ(parse(c.get(key_of("a")).value().value).used_bytes(), 1000u);
  used = 5000;
  volumes = 2;
  cairn::v1::ClusterNode seen;
  ASSERT_TRUE(eventually([&] {
    auto kv = c.get(key_of("a"));
    if (!kv) return false;
    seen = parse(kv.value().value);
    return seen.used_bytes() == 5000u && seen.volumes() == 2u;
  })) << "usage was not republished";
  EXPECT_EQ(seen.capacity_bytes(), 1u << 30);
  EXPECT_EQ(c.get(key_of("a")).value().lease, a->lease_id());  // same lease, same key
  EXPECT_EQ(a->registrations(), 1);
}

TEST_F(Etcd, StartWaitsForAnEtcdThatComesUpLate) {
  server().stop();
  auto opts = node("late", endpoint(), 1000);
  opts.start_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(kEventually);
  auto joining = std::async(std::launch::async, [opts] {
    std::string why;
    auto m = ClusterMember::start(opts, &why);
    EXPECT_TRUE(m) << why;
    return m ? std::move(m.value()) : nullptr;
  });
  server().start();
  ASSERT_EQ(server().error(), "");
  auto late = joining.get();
  ASSERT_TRUE(late);
  EtcdClient c({endpoint()});
  auto kv = c.get(key_of("late"));
  ASSERT_TRUE(kv);
  EXPECT_EQ(kv.value().lease, late->lease_id());
}

TEST(ClusterMemberStart, GivesUpWhenEtcdNeverAnswers) {
  ClusterMember::Options o;
  o.node_id = "lonely";
  o.etcd_endpoints = {url(unused_port())};
  o.start_timeout = 2s;
  o.retry_interval = 200ms;
  std::string why;
  auto m = ClusterMember::start(o, &why);
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error(), Errc::unavailable);
  EXPECT_NE(why.find("did not answer"), std::string::npos) << why;
  EXPECT_NE(why.find(o.etcd_endpoints[0]), std::string::npos) << why;
}

TEST(ClusterMemberStart, RefusesBadIdsAndEndpoints) {
  EXPECT_TRUE(ClusterMember::valid_node_id("node-1_a"));
  EXPECT_TRUE(ClusterMember::valid_node_id(std::string(64, 'x')));
  EXPECT_FALSE(ClusterMember::valid_node_id(""));
  EXPECT_FALSE(ClusterMember::valid_node_id(std::string(65, 'x')));
  EXPECT_FALSE(ClusterMember::valid_node_id("Node1"));
  EXPECT_FALSE(ClusterMember::valid_node_id("a/b"));
  EXPECT_FALSE(ClusterMember::valid_node_id("a.b"));

  std::string why;
  ClusterMember::Options o;
  o.node_id = "Bad";
  o.etcd_endpoints = {"http://127.0.0.1:2379"};
  auto m = ClusterMember::start(o, &why);
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error(), Errc::invalid_argument);
  EXPECT_NE(why.find("invalid node id"), std::string::npos) << why;
  o.node_id = "good";
  o.etcd_endpoints = {"127.0.0.1:2379"};
  m = ClusterMember::start(o, &why);
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error(), Errc::invalid_argument);

  auto eps = parse_etcd_endpoints("http://127.0.0.1:2379,http://[::1]:2381/");
  ASSERT_TRUE(eps);
  ASSERT_EQ(eps.value().size(), 2u);
  EXPECT_EQ(eps.value()[0], "http://127.0.0.1:2379");
  EXPECT_EQ(eps.value()[1], "http://[::1]:2381/");
  EXPECT_FALSE(parse_etcd_endpoints(""));
  EXPECT_FALSE(parse_etcd_endpoints("http://127.0.0.1:2379,"));
  EXPECT_FALSE(parse_etcd_endpoints("127.0.0.1:2379"));
  EXPECT_FALSE(parse_etcd_endpoints("https://127.0.0.1:2379"));
  EXPECT_FALSE(parse_etcd_endpoints("http://127.0.0.1"));
}

}  // namespace
}  // namespace cairn::replication
