// VolumeRegistry: the pure rules (placement, attach, failover) and the etcd-backed record
// store against a real etcd (etcd_server.h). Every store test reads etcd back, under a
// key prefix of its own.
#include "replication/volume_registry.h"

#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include "etcd_server.h"

namespace cairn::replication {
namespace {

using cairn::v1::ClusterNode;
using cairn::v1::ClusterVolume;

ClusterNode node(const std::string& id, uint64_t capacity, uint64_t used, const std::string& state = "up") {
  ClusterNode n;
  n.set_id(id);
  n.set_capacity_bytes(capacity);
  n.set_used_bytes(used);
  n.set_state(state);
  return n;
}

// A volume on a, b, c (primary a, epoch 1) with the given replica states.
ClusterVolume volume(const std::string& a = kInSync, const std::string& b = kInSync,
                     const std::string& c = kInSync) {
  ClusterVolume v = new_volume("vol", 1 << 20, {"a", "b", "c"}, 1000);
  v.mutable_replicas(0)->set_state(a);
  v.mutable_replicas(1)->set_state(b);
  v.mutable_replicas(2)->set_state(c);
  return v;
}

std::string state_of(const ClusterVolume& v, const std::string& n) {
  const auto* r = find_replica(v, n);
  return r ? r->state() : "absent";
}

// ---- Placement ----

TEST(Placement, MostFreeBytesFirstTiesById) {
  const std::vector<ClusterNode> nodes = {node("d", 100, 50), node("c", 100, 10), node("b", 100, 50),
                                          node("a", 100, 90)};
  auto r = place_replicas(nodes, 3, 10, "");
  ASSERT_TRUE(r);
  EXPECT_EQ(r.value(), (std::vector<std::string>{"c", "b", "d"}));
}

TEST(Placement, PreferredFirstWhenItQualifies) {
  const std::vector<ClusterNode> nodes = {node("a", 100, 0), node("b", 100, 50), node("c", 100, 95)};
  auto r = place_replicas(nodes, 2, 10, "b");
  ASSERT_TRUE(r);
  EXPECT_EQ(r.value(), (std::vector<std::string>{"b", "a"}));
  // c lacks room: it is skipped although preferred.
  r = place_replicas(nodes, 2, 10, "c");
  ASSERT_TRUE(r);
  EXPECT_EQ(r.value(), (std::vector<std::string>{"a", "b"}));
}

TEST(Placement, OnlyUpNodesWithRoom) {
  const std::vector<ClusterNode> nodes = {node("a", 100, 0, "down"), node("b", 100, 0),
                                          node("c", 100, 91), node("d", 100, 90),
                                          node("e", 10, 50)};  // used > capacity: no room
  auto r = place_replicas(nodes, 2, 10, "a");
  ASSERT_TRUE(r);
  EXPECT_EQ(r.value(), (std::vector<std::string>{"b", "d"}));
}

TEST(Placement, NoSpaceSaysWhy) {
  const std::vector<ClusterNode> nodes = {node("a", 100, 0), node("b", 100, 95), node("c", 100, 0, "")};
  std::string why;
  auto r = place_replicas(nodes, 2, 10, "", &why);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), Errc::no_space);
  EXPECT_NE(why.find("2 nodes up"), std::string::npos) << why;
  EXPECT_NE(why.find("1 with room"), std::string::npos) << why;
}

TEST(Placement, DistinctNodes) {
  const std::vector<ClusterNode> nodes = {node("a", 100, 0), node("a", 100, 0)};
  auto r = place_replicas(nodes, 2, 10, "");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), Errc::no_space);
  r = place_replicas(nodes, 1, 10, "");
  ASSERT_TRUE(r);
  EXPECT_EQ(r.value(), (std::vector<std::string>{"a"}));
}

TEST(Placement, ZeroReplicasIsInvalid) {
  auto r = place_replicas({node("a", 100, 0)}, 0, 10, "");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), Errc::invalid_argument);
}

// ---- The rules ----

TEST(VolumeRegistryRules, NewVolume) {
  const ClusterVolume v = new_volume("vol", 4096, {"b", "a"}, 1234);
  EXPECT_EQ(v.name(), "vol");
  EXPECT_EQ(v.size_bytes(), 4096u);
  EXPECT_EQ(v.primary(), "b");
  EXPECT_EQ(v.epoch(), 1u);
  EXPECT_EQ(v.created_unix_s(), 1234);
  ASSERT_EQ(v.replicas_size(), 2);
  EXPECT_EQ(v.replicas(0).node(), "b");
  EXPECT_EQ(v.replicas(1).node(), "a");
  EXPECT_EQ(v.replicas(0).state(), kInSync);
  EXPECT_EQ(v.replicas(1).state(), kInSync);
  EXPECT_EQ(find_replica(v, "c"), nullptr);
}

TEST(VolumeRegistryRules, AttachToInSyncReplicaBumpsEpoch) {
  auto r = attach_to(volume(), "b");
  ASSERT_TRUE(r);
  EXPECT_EQ(r.value().primary(), "b");
  EXPECT_EQ(r.value().epoch(), 2u);
  // The current primary too.
  r = attach_to(volume(), "a");
  ASSERT_TRUE(r);
  EXPECT_EQ(r.value().primary(), "a");
  EXPECT_EQ(r.value().epoch(), 2u);
}

TEST(VolumeRegistryRules, AttachRefusesMissingOrStaleReplica) {
  std::string why;
  auto r = attach_to(volume(), "z", &why);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), Errc::not_found);
  why.clear();
  r = attach_to(volume(kInSync, kOut), "b", &why);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), Errc::invalid_argument);
  EXPECT_NE(why.find("out"), std::string::npos) << why;
  r = attach_to(volume(kInSync, kResyncing), "b");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), Errc::invalid_argument);
}

TEST(VolumeRegistryRules, ShouldTakeOverLowestLiveInSync) {
  const ClusterVolume v = volume();
  // Primary live: nobody.
  EXPECT_FALSE(should_take_over(v, "b", {"a", "b", "c"}));
  EXPECT_FALSE(should_take_over(v, "c", {"a", "b", "c"}));
  // Primary gone: b (lowest), not c.
  EXPECT_TRUE(should_take_over(v, "b", {"b", "c"}));
  EXPECT_FALSE(should_take_over(v, "c", {"b", "c"}));
  // b gone too: c.
  EXPECT_TRUE(should_take_over(v, "c", {"c"}));
  // A node that is not live itself does not decide yes.
  EXPECT_FALSE(should_take_over(v, "b", {"c"}));
  // A node holding no replica never does.
  EXPECT_FALSE(should_take_over(v, "z", {"z", "c"}));
}

TEST(VolumeRegistryRules, ShouldTakeOverSkipsReplicasNotInSync) {
  const ClusterVolume v = volume(kInSync, kOut, kInSync);
  EXPECT_FALSE(should_take_over(v, "b", {"b", "c"}));
  EXPECT_TRUE(should_take_over(v, "c", {"b", "c"}));
  const ClusterVolume w = volume(kInSync, kResyncing, kOut);
  EXPECT_FALSE(should_take_over(w, "b", {"b", "c"}));
  EXPECT_FALSE(should_take_over(w, "c", {"b", "c"}));
}

TEST(VolumeRegistryRules, ExactlyOneLiveNodeDecidesYes) {
  const ClusterVolume v = volume(kInSync, kInSync, kInSync);
  const std::vector<std::set<std::string>> views = {{"b", "c"}, {"b"}, {"c"}, {"a", "c"}};
  for (const auto& live : views) {
    int yes = 0;
    for (const auto& n : live) yes += should_take_over(v, n, live);
    EXPECT_EQ(yes, live.count("a") ? 0 : 1);
  }
}

TEST(VolumeRegistryRules, TakenOverMarksOldPrimaryOut) {
  ClusterVolume v = volume();
  v.set_epoch(7);
  const ClusterVolume t = taken_over(v, "c");
  EXPECT_EQ(t.primary(), "c");
  EXPECT_EQ(t.epoch(), 8u);
  EXPECT_EQ(state_of(t, "a"), kOut);
  EXPECT_EQ(state_of(t, "b"), kInSync);
  EXPECT_EQ(state_of(t, "c"), kInSync);
  EXPECT_EQ(t.name(), v.name());
  EXPECT_EQ(t.size_bytes(), v.size_bytes());
}

// ---- The store (real etcd) ----

class VolumeRegistryEtcd : public test::Etcd {
 protected:
  void SetUp() override {
    test::Etcd::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    const std::string test = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    volumes_ = "/cairn-test/" + test + "/volumes/";
    nodes_ = "/cairn-test/" + test + "/nodes/";
    client_ = std::make_unique<EtcdClient>(std::vector<std::string>{endpoint()});
    registry_ = std::make_unique<VolumeRegistry>(*client_, volumes_, nodes_);
  }

  // The record as etcd holds it now.
  std::optional<std::pair<ClusterVolume, int64_t>> stored(const std::string& name) {
    auto kv = client_->get(volumes_ + name);
    if (!kv) {
      EXPECT_EQ(kv.error(), Errc::not_found);
      return std::nullopt;
    }
    ClusterVolume v;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(kv.value().value, &v).ok()) << kv.value().value;
    return std::make_pair(v, kv.value().mod_revision);
  }

  std::string volumes_, nodes_;
  std::unique_ptr<EtcdClient> client_;
  std::unique_ptr<VolumeRegistry> registry_;
};

bool same(const ClusterVolume& a, const ClusterVolume& b) { return a.SerializeAsString() == b.SerializeAsString(); }

TEST_F(VolumeRegistryEtcd, CreateThenGet) {
  const ClusterVolume v = new_volume("vol-1", 8 << 20, {"a", "b"}, 1000);
  auto created = registry_->create(v);
  ASSERT_TRUE(created) << created.error().message();
  EXPECT_TRUE(same(created.value().volume, v));
  EXPECT_GT(created.value().mod_revision, 0);

  auto got = registry_->get("vol-1");
  ASSERT_TRUE(got) << got.error().message();
  EXPECT_TRUE(same(got.value().volume, v));
  EXPECT_EQ(got.value().mod_revision, created.value().mod_revision);

  auto raw = stored("vol-1");
  ASSERT_TRUE(raw);
  EXPECT_TRUE(same(raw->first, v));
  EXPECT_EQ(raw->second, created.value().mod_revision);
  // Every field printed, in protobuf's JSON mapping.
  auto kv = client_->get(volumes_ + "vol-1");
  ASSERT_TRUE(kv);
  EXPECT_NE(kv.value().value.find("\"rebuildRateBytesPerS\""), std::string::npos) << kv.value().value;
  EXPECT_NE(kv.value().value.find("\"epoch\":\"1\""), std::string::npos) << kv.value().value;
  EXPECT_EQ(kv.value().lease, 0);
}

TEST_F(VolumeRegistryEtcd, GetAbsentAndCorrupt) {
  auto got = registry_->get("nope");
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error(), Errc::not_found);
  ASSERT_TRUE(client_->put(volumes_ + "bad", "not json"));
  got = registry_->get("bad");
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error(), Errc::corrupt);
}

TEST_F(VolumeRegistryEtcd, ReaderIgnoresUnknownFields) {
  ASSERT_TRUE(client_->put(volumes_ + "v", R"({"name":"v","sizeBytes":"4096","epoch":"3","future":1})"));
  auto got = registry_->get("v");
  ASSERT_TRUE(got) << got.error().message();
  EXPECT_EQ(got.value().volume.epoch(), 3u);
  EXPECT_EQ(got.value().volume.size_bytes(), 4096u);
}

TEST_F(VolumeRegistryEtcd, CreateTwiceIsAlreadyExists) {
  const ClusterVolume v = new_volume("vol", 1 << 20, {"a"}, 1000);
  auto first = registry_->create(v);
  ASSERT_TRUE(first);
  ClusterVolume other = new_volume("vol", 2 << 20, {"b"}, 2000);
  auto second = registry_->create(other);
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error(), Errc::already_exists);
  auto raw = stored("vol");
  ASSERT_TRUE(raw);
  EXPECT_TRUE(same(raw->first, v));
  EXPECT_EQ(raw->second, first.value().mod_revision);
}

TEST_F(VolumeRegistryEtcd, UpdateCompareAndSwap) {
  auto created = registry_->create(new_volume("vol", 1 << 20, {"a", "b"}, 1000));
  ASSERT_TRUE(created);
  auto next = attach_to(created.value().volume, "b");
  ASSERT_TRUE(next);
  auto updated = registry_->update(created.value(), next.value());
  ASSERT_TRUE(updated) << updated.error().message();
  EXPECT_GT(updated.value().mod_revision, created.value().mod_revision);
  EXPECT_EQ(updated.value().volume.epoch(), 2u);

  // A writer that read before that update loses, and writes nothing.
  ClusterVolume stale = created.value().volume;
  stale.set_rebuild_rate_bytes_per_s(123);
  auto lost = registry_->update(created.value(), stale);
  ASSERT_FALSE(lost);
  EXPECT_EQ(lost.error(), Errc::busy);
  auto raw = stored("vol");
  ASSERT_TRUE(raw);
  EXPECT_TRUE(same(raw->first, next.value()));
  EXPECT_EQ(raw->second, updated.value().mod_revision);

  // Re-read, decide again: it lands.
  auto current = registry_->get("vol");
  ASSERT_TRUE(current);
  ClusterVolume again = current.value().volume;
  again.set_rebuild_rate_bytes_per_s(123);
  auto landed = registry_->update(current.value(), again);
  ASSERT_TRUE(landed);
  raw = stored("vol");
  ASSERT_TRUE(raw);
  EXPECT_EQ(raw->first.rebuild_rate_bytes_per_s(), 123u);
  EXPECT_EQ(raw->first.epoch(), 2u);
}

TEST_F(VolumeRegistryEtcd, UpdateOfDeletedRecordIsNotFoundAndRecreatesNothing) {
  auto created = registry_->create(new_volume("vol", 1 << 20, {"a"}, 1000));
  ASSERT_TRUE(created);
  ASSERT_TRUE(client_->del(volumes_ + "vol"));
  auto r = registry_->update(created.value(), created.value().volume);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), Errc::not_found);
  EXPECT_FALSE(stored("vol"));
}

TEST_F(VolumeRegistryEtcd, UpdateRefusesRename) {
  auto created = registry_->create(new_volume("vol", 1 << 20, {"a"}, 1000));
  ASSERT_TRUE(created);
  ClusterVolume renamed = created.value().volume;
  renamed.set_name("other");
  auto r = registry_->update(created.value(), renamed);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), Errc::invalid_argument);
  EXPECT_FALSE(stored("other"));
}

TEST_F(VolumeRegistryEtcd, RemoveCompareAndSwap) {
  auto created = registry_->create(new_volume("vol", 1 << 20, {"a", "b"}, 1000));
  ASSERT_TRUE(created);
  auto updated = registry_->update(created.value(), attach_to(created.value().volume, "b").value());
  ASSERT_TRUE(updated);

  auto stale = registry_->remove(created.value());
  ASSERT_FALSE(stale);
  EXPECT_EQ(stale.error(), Errc::busy);
  ASSERT_TRUE(stored("vol"));

  auto removed = registry_->remove(updated.value());
  ASSERT_TRUE(removed) << removed.error().message();
  EXPECT_FALSE(stored("vol"));
  auto got = registry_->get("vol");
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error(), Errc::not_found);
}

TEST_F(VolumeRegistryEtcd, ListSortedSkippingBadRecords) {
  for (const char* name : {"zeta", "alpha", "mid"}) {
    ASSERT_TRUE(registry_->create(new_volume(name, 1 << 20, {"a"}, 1000)));
  }
  ASSERT_TRUE(client_->put(volumes_ + "broken", "{"));
  // Outside the prefix: not listed.
  ASSERT_TRUE(client_->put("/cairn-test/elsewhere/volumes/x", "{}"));
  int64_t revision = 0;
  auto all = registry_->list(&revision);
  ASSERT_TRUE(all) << all.error().message();
  ASSERT_EQ(all.value().size(), 3u);
  EXPECT_EQ(all.value()[0].volume.name(), "alpha");
  EXPECT_EQ(all.value()[1].volume.name(), "mid");
  EXPECT_EQ(all.value()[2].volume.name(), "zeta");
  auto kv = client_->get(volumes_ + "mid");
  ASSERT_TRUE(kv);
  EXPECT_EQ(all.value()[1].mod_revision, kv.value().mod_revision);
  auto head = client_->get(volumes_ + "broken");
  ASSERT_TRUE(head);
  EXPECT_GE(revision, head.value().mod_revision);
}

TEST_F(VolumeRegistryEtcd, ListEmpty) {
  int64_t revision = 0;
  auto all = registry_->list(&revision);
  ASSERT_TRUE(all);
  EXPECT_TRUE(all.value().empty());
  EXPECT_GT(revision, 0);
}

TEST_F(VolumeRegistryEtcd, TakeOverOnlyWhenPrimaryKeyIsGone) {
  auto created = registry_->create(new_volume("vol", 1 << 20, {"a", "b", "c"}, 1000));
  ASSERT_TRUE(created);
  ASSERT_TRUE(client_->put(nodes_ + "a", "{}"));

  // The primary's node key is present: refused, nothing written.
  auto r = registry_->take_over(created.value(), "b");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), Errc::busy);
  auto raw = stored("vol");
  ASSERT_TRUE(raw);
  EXPECT_EQ(raw->first.primary(), "a");
  EXPECT_EQ(raw->first.epoch(), 1u);
  EXPECT_EQ(raw->second, created.value().mod_revision);

  // Another node's key does not matter; the primary's does.
  ASSERT_TRUE(client_->put(nodes_ + "b", "{}"));
  ASSERT_TRUE(client_->del(nodes_ + "a"));
  r = registry_->take_over(created.value(), "b");
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r.value().volume.primary(), "b");
  EXPECT_EQ(r.value().volume.epoch(), 2u);
  raw = stored("vol");
  ASSERT_TRUE(raw);
  EXPECT_TRUE(same(raw->first, taken_over(created.value().volume, "b")));
  EXPECT_EQ(state_of(raw->first, "a"), kOut);
  EXPECT_EQ(raw->second, r.value().mod_revision);
}

TEST_F(VolumeRegistryEtcd, TakeOverOnAStaleViewIsBusy) {
  auto created = registry_->create(new_volume("vol", 1 << 20, {"a", "b", "c"}, 1000));
  ASSERT_TRUE(created);
  // b takes over first; c, deciding on the same (now stale) view, must lose.
  auto by_b = registry_->take_over(created.value(), "b");
  ASSERT_TRUE(by_b);
  auto by_c = registry_->take_over(created.value(), "c");
  ASSERT_FALSE(by_c);
  EXPECT_EQ(by_c.error(), Errc::busy);
  auto raw = stored("vol");
  ASSERT_TRUE(raw);
  EXPECT_EQ(raw->first.primary(), "b");
  EXPECT_EQ(raw->first.epoch(), 2u);
  EXPECT_EQ(raw->second, by_b.value().mod_revision);
}

TEST_F(VolumeRegistryEtcd, TakeOverRefusesReplicaNotInSync) {
  ClusterVolume v = new_volume("vol", 1 << 20, {"a", "b"}, 1000);
  v.mutable_replicas(1)->set_state(kOut);
  auto created = registry_->create(v);
  ASSERT_TRUE(created);
  auto r = registry_->take_over(created.value(), "b");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), Errc::invalid_argument);
  r = registry_->take_over(created.value(), "z");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), Errc::invalid_argument);
  auto raw = stored("vol");
  ASSERT_TRUE(raw);
  EXPECT_EQ(raw->second, created.value().mod_revision);
}

}  // namespace
}  // namespace cairn::replication
