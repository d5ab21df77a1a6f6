// Snapshots, clones and changed-block diffs of the volume engine (docs/FORMAT-blockd.md,
// "Snapshots, versions and clones"): redirect-on-write, space ownership and reclaim, clone
// isolation and flatten, diffs against a model under a seeded random workload, crash safety
// over SimBlockDevice, and the O(1) create. Seeded tests print their seed; replay with
// CAIRN_SEED=<n>.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <cstring>
#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"
#include "blockd/sim_block_device.h"
#include "blockd/volume_store.h"
#include "common/assert.h"
#include "common/fault.h"
#include "common/reactor.h"
#include "common/when_all.h"
#include "store_impl.h"

namespace cairn::blockd {
namespace {

using namespace cairn::blockd::test;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kExt = kExtentSizeBytes;
constexpr uint64_t kBlk = kBlockSizeBytes;


class Env {
 public:
  explicit Env(Backend b, uint64_t capacity_bytes = 0, uint32_t alignment = 512) : backend_(b) {
    options_.data_dir = dir_.path();
    options_.capacity_bytes = capacity_bytes;
    options_.maintenance_interval_ms = 0;  // rounds on demand only: deterministic
    if (b == Backend::uring) {
      reactor_ = std::make_unique<ReactorThread>();
    } else {
      SimBlockDevice::Options so;
      so.alignment_bytes = alignment;
      disk_ = std::make_unique<SimBlockDevice>(so);
    }
    open();
  }
  void open() {
    auto s = VolumeStore::open(options_, disk_ ? disk_->attach() : nullptr);
    CAIRN_ASSERT(s);
    store_ = std::move(s.value());
  }
  void close() { store_.reset(); }
  // Power cut (sim only): unsynced device writes are dropped or torn, the store is dropped
  // without a flush (its WAL writes reached the OS, like a killed process), then reopened.
  void crash_and_reopen(CrashMode mode, uint64_t seed) {
    CAIRN_ASSERT(disk_);
    disk_->crash(mode, seed);
    store_.reset();
    open();
  }
  VolumeStore& store() { return *store_; }
  StoreImpl& impl() { return dynamic_cast<StoreImpl&>(*store_); }
  SimBlockDevice* disk() { return disk_.get(); }
  Status run(Task<Status> t) {
    return reactor_ ? reactor_->run(std::move(t)) : run_sync(std::move(t));
  }
  ReactorThread* reactor() { return reactor_.get(); }
  std::shared_ptr<Volume> create_open(const std::string& name, uint64_t size) {
    auto info = store_->create_volume(name, size);
    CAIRN_ASSERT(info);
    return store_->open_volume(name).value();
  }
  std::shared_ptr<Volume> open(const std::string& name) {
    auto v = store_->open_volume(name);
    CAIRN_ASSERT(v);
    return v.value();
  }
  VolumeInfo info(const std::string& name) { return store_->get_volume(name).value(); }
  uint64_t used() { return store_->stats().used_bytes; }
  SnapshotInfo snapshot(const std::string& vol, const std::string& name) {
    auto list = store_->list_snapshots(vol);
    CAIRN_ASSERT(list);
    for (auto& s : list.value())
      if (s.name == name) return s;
    CAIRN_ASSERT(false);
    return {};
  }

 private:
  Backend backend_;
  TempDir dir_;
  VolumeStore::Options options_;
  std::unique_ptr<ReactorThread> reactor_;
  std::unique_ptr<SimBlockDevice> disk_;
  std::unique_ptr<VolumeStore> store_;
};

#define FOR_EACH_BACKEND(b)                        \
  for (Backend b : {Backend::sim, Backend::uring}) \
    if (SCOPED_TRACE(backend_name(b)); true)

void fill_random(uint8_t* p, size_t n, std::mt19937_64& rng) {
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(rng() | 1);  // never 0
}

::testing::AssertionResult reads(Env& env, Volume& v, const std::vector<uint8_t>& model,
                                 uint64_t off = 0, uint64_t len = 0) {
  if (len == 0) len = model.size() - off;
  std::vector<uint8_t> buf(len + 1, 0xEE);
  Status st = env.run(v.read(off, len, buf.data() + 1));  // misaligned on purpose
  if (!st) return ::testing::AssertionFailure() << "read failed: " << st.error().message();
  for (uint64_t i = 0; i < len; ++i) {
    if (buf[1 + i] != model[off + i]) {
      return ::testing::AssertionFailure() << v.name() << ": byte " << off + i << " is "
                                           << int(buf[1 + i]) << ", want "
                                           << int(model[off + i]);
    }
  }
  return ::testing::AssertionSuccess();
}

Status write_model(Env& env, Volume& v, std::vector<uint8_t>& model, uint64_t off, uint64_t len,
                   std::mt19937_64& rng, bool fua = false) {
  std::vector<uint8_t> buf(len);
  fill_random(buf.data(), len, rng);
  Status st = env.run(v.write(off, len, buf.data(), fua));
  if (st) std::memcpy(model.data() + off, buf.data(), len);
  return st;
}

Status trim_model(Env& env, Volume& v, std::vector<uint8_t>& model, uint64_t off, uint64_t len) {
  Status st = env.run(v.trim(off, len, false));
  if (st) std::memset(model.data() + off, 0, len);
  return st;
}

// Every physical extent no live record or version references reads as zeros (durable image).
::testing::AssertionResult unmapped_space_is_zero(Env& env) {
  const std::vector<uint64_t> mapped = env.impl().mapped_physical_extents();
  if (std::adjacent_find(mapped.begin(), mapped.end()) != mapped.end())
    return ::testing::AssertionFailure() << "two mappings share a physical extent";
  std::vector<uint8_t> ext(kExt);
  for (uint64_t p = 0; p < env.disk()->size_bytes() / kExt; ++p) {
    if (std::binary_search(mapped.begin(), mapped.end(), p)) continue;
    env.disk()->peek(p * kExt, ext.size(), ext.data(), /*durable=*/true);
    if (!std::all_of(ext.begin(), ext.end(), [](uint8_t b) { return b == 0; }))
      return ::testing::AssertionFailure() << "unmapped physical extent " << p << " holds bytes";
  }
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------------------------------
// Redirect-on-write and accounting

TEST(Snapshot, RedirectOnWriteKeepsBothViews) {
  FOR_EACH_BACKEND(b) {
    Env env(b);
    auto v = env.create_open("vol", 2 * kMiB);
    std::vector<uint8_t> live(2 * kMiB, 0);
    std::mt19937_64 rng(1);
    ASSERT_TRUE(write_model(env, *v, live, 0, kMiB, rng));  // extents 0..15, 256 blocks
    auto snap = env.store().create_snapshot("vol", "s1");
    ASSERT_TRUE(snap) << snap.error().message();
    EXPECT_EQ(snap.value().name, "s1");
    EXPECT_EQ(snap.value().size_bytes, 2 * kMiB);
    const std::vector<uint8_t> frozen = live;
    EXPECT_EQ(env.info("vol").shared_bytes, kMiB);
    EXPECT_EQ(env.info("vol").exclusive_bytes, 0u);
    EXPECT_EQ(env.used(), 16 * kExt);

    ASSERT_TRUE(write_model(env, *v, live, 0, kExt, rng));                  // whole extent 0
    ASSERT_TRUE(write_model(env, *v, live, 2 * kExt + 1000, 3000, rng));    // bytes in 2
    ASSERT_TRUE(write_model(env, *v, live, 5 * kExt - kBlk, 2 * kBlk, rng));  // 4 | 5
    ASSERT_TRUE(write_model(env, *v, live, 20 * kExt, kBlk, rng));          // new space
    ASSERT_TRUE(trim_model(env, *v, live, 7 * kExt + 2 * kBlk, 4 * kBlk));  // part of 7
    ASSERT_TRUE(trim_model(env, *v, live, 8 * kExt, kExt));                 // all of 8
    ASSERT_TRUE(trim_model(env, *v, live, 9 * kExt + 100, 5000));           // edges of 9
    ASSERT_TRUE(env.run(v->write_zeroes(10 * kExt, 2 * kBlk, false, false)));  // 10, kept
    std::memset(live.data() + 10 * kExt, 0, 2 * kBlk);

    ASSERT_TRUE(reads(env, *v, live));
    auto s = env.store().open_volume("vol@s1");
    ASSERT_TRUE(s) << s.error().message();
    EXPECT_TRUE(s.value()->read_only());
    EXPECT_EQ(s.value()->name(), "vol@s1");
    ASSERT_TRUE(reads(env, *s.value(), frozen));

    // Live: 256 - 4 (trimmed in 7) - 16 (extent 8) + 1 (extent 20) written blocks; the
    // redirected extents 0 2 4 5 7 9 10 (16 blocks each, 12 for 7) and 20 are its own.
    VolumeInfo info = env.info("vol");
    EXPECT_EQ(info.allocated_bytes, 237 * kBlk);
    EXPECT_EQ(info.exclusive_bytes, (6 * 16 + 12 + 1) * kBlk);
    EXPECT_EQ(info.shared_bytes, 8 * 16 * kBlk);
    // The snapshot alone holds the old versions of 0 2 4 5 7 8 9 10.
    SnapshotInfo si = env.snapshot("vol", "s1");
    EXPECT_EQ(si.exclusive_bytes, 8 * 16 * kBlk);
    EXPECT_EQ(si.shared_bytes, 8 * 16 * kBlk);
    EXPECT_EQ(si.clones, 0u);
    EXPECT_EQ(env.used(), (16 + 7 + 1) * kExt);  // nothing shared was freed

    // The snapshot's allocation map is its own.
    auto runs = s.value()->allocation(0, 2 * kMiB, 8).value();
    ASSERT_EQ(runs.size(), 2u);
    EXPECT_TRUE(runs[0].allocated);
    EXPECT_EQ(runs[0].length_bytes, kMiB);
    EXPECT_FALSE(runs[1].allocated);
    EXPECT_EQ(v->allocation(8 * kExt, kExt, 4).value().size(), 1u);
    EXPECT_FALSE(v->allocation(8 * kExt, kExt, 4).value()[0].allocated);

    // Read-only export.
    std::vector<uint8_t> buf(kBlk, 1);
    EXPECT_EQ(env.run(s.value()->write(0, kBlk, buf.data(), false)).error(),
              make_error_code(Errc::permission_denied));
    EXPECT_EQ(env.run(s.value()->trim(0, kBlk, false)).error(),
              make_error_code(Errc::permission_denied));
    EXPECT_EQ(env.run(s.value()->write_zeroes(0, kBlk, true, false)).error(),
              make_error_code(Errc::permission_denied));
    EXPECT_TRUE(env.run(s.value()->flush()));
    EXPECT_FALSE(env.run(s.value()->read(2 * kMiB, 1, buf.data())));

    // Both views survive a reopen.
    s.value().reset();
    v.reset();
    env.close();
    env.open();
    v = env.open("vol");
    ASSERT_TRUE(reads(env, *v, live));
    ASSERT_TRUE(reads(env, *env.open("vol@s1"), frozen));
    EXPECT_EQ(env.info("vol").exclusive_bytes, info.exclusive_bytes);
    EXPECT_EQ(env.snapshot("vol", "s1").exclusive_bytes, si.exclusive_bytes);
  }
}

TEST(Snapshot, ExportCountsAsAttachedAndNamesAreChecked) {
  Env env(Backend::sim);
  auto v = env.create_open("vol", kMiB);
  auto& st = env.store();
  EXPECT_EQ(st.create_snapshot("vol", "a@b").error(), make_error_code(Errc::invalid_argument));
  EXPECT_EQ(st.create_snapshot("nope", "s").error(), make_error_code(Errc::not_found));
  ASSERT_TRUE(st.create_snapshot("vol", "s1"));
  EXPECT_EQ(st.create_snapshot("vol", "s1").error(), make_error_code(Errc::already_exists));
  ASSERT_TRUE(st.create_snapshot("vol", "s2"));
  EXPECT_EQ(st.open_volume("vol@nope").error(), make_error_code(Errc::not_found));
  auto h = st.open_volume("vol@s2").value();
  EXPECT_EQ(st.delete_snapshot("vol", "s2").error(), make_error_code(Errc::busy));
  EXPECT_EQ(h->dirty_bitmap_sources(), std::vector<std::string>{"s1"});
  EXPECT_EQ(v->dirty_bitmap_sources(), (std::vector<std::string>{"s1", "s2"}));
  h.reset();
  ASSERT_TRUE(st.delete_snapshot("vol", "s2"));
  EXPECT_EQ(st.delete_snapshot("vol", "s2").error(), make_error_code(Errc::not_found));
  EXPECT_EQ(st.list_snapshots("vol").value().size(), 1u);
  // A volume with snapshots is deleted only by force, which takes its snapshots along.
  v.reset();
  EXPECT_EQ(st.delete_volume("vol", false).error(), make_error_code(Errc::busy));
  ASSERT_TRUE(st.delete_volume("vol", true));
  ASSERT_TRUE(st.create_volume("vol", kMiB));
  EXPECT_TRUE(st.list_snapshots("vol").value().empty());
}

// ---------------------------------------------------------------------------------------
// Ownership and reclaim

TEST(Snapshot, DeleteReclaimsExactlyItsExclusiveSpace) {
  Env env(Backend::sim);
  auto v = env.create_open("vol", 2 * kMiB);
  std::vector<uint8_t> live(2 * kMiB, 0);
  std::mt19937_64 rng(2);
  std::map<std::string, std::vector<uint8_t>> frozen;
  // Whole extents only, so that exclusive blocks are whole freed extents.
  ASSERT_TRUE(write_model(env, *v, live, 0, kMiB, rng));
  ASSERT_TRUE(env.store().create_snapshot("vol", "s1"));
  frozen["s1"] = live;
  ASSERT_TRUE(write_model(env, *v, live, 0, 4 * kExt, rng));
  ASSERT_TRUE(env.store().create_snapshot("vol", "s2"));
  frozen["s2"] = live;
  ASSERT_TRUE(write_model(env, *v, live, 2 * kExt, 4 * kExt, rng));
  ASSERT_TRUE(trim_model(env, *v, live, 12 * kExt, kExt));
  ASSERT_TRUE(env.store().create_snapshot("vol", "s3"));
  frozen["s3"] = live;
  ASSERT_TRUE(write_model(env, *v, live, 14 * kExt, 2 * kExt, rng));
  // s1 alone: the first versions of 0 1 2 3; s2 alone: the second versions of 2 3; s1+s2:
  // 4 5 and 12; s3 alone: nothing (14 15 are also seen by s1 and s2).
  EXPECT_EQ(env.snapshot("vol", "s1").exclusive_bytes, 4 * kExt);
  EXPECT_EQ(env.snapshot("vol", "s2").exclusive_bytes, 2 * kExt);
  EXPECT_EQ(env.snapshot("vol", "s3").exclusive_bytes, 0u);
  EXPECT_EQ(env.snapshot("vol", "s1").shared_bytes, 12 * kExt);
  EXPECT_EQ(env.snapshot("vol", "s2").shared_bytes, 14 * kExt);
  EXPECT_EQ(env.snapshot("vol", "s3").shared_bytes, 15 * kExt);

  auto delete_and_check = [&](const std::string& name) {
    const uint64_t exclusive = env.snapshot("vol", name).exclusive_bytes;
    ASSERT_TRUE(env.impl().run_maintenance_round());
    const uint64_t before = env.used();
    ASSERT_TRUE(env.store().delete_snapshot("vol", name));
    frozen.erase(name);
    // Freed versions are quarantined (still counted) until a round punched them.
    EXPECT_EQ(env.used(), before);
    ASSERT_TRUE(env.impl().run_maintenance_round());
    EXPECT_EQ(env.used(), before - exclusive) << "deleting " << name;
    ASSERT_TRUE(unmapped_space_is_zero(env));
    for (auto& [n, model] : frozen) ASSERT_TRUE(reads(env, *env.open("vol@" + n), model)) << n;
    ASSERT_TRUE(reads(env, *v, live));
  };
  delete_and_check("s2");  // the middle one: s1 and s3 stay intact
  // Without s2 the second versions of 2 3 were freed; 4 5 12 are s1's alone now.
  EXPECT_EQ(env.snapshot("vol", "s1").exclusive_bytes, 7 * kExt);
  delete_and_check("s1");
  delete_and_check("s3");
  EXPECT_EQ(env.used(), 15 * kExt);
  EXPECT_EQ(env.info("vol").exclusive_bytes, env.info("vol").allocated_bytes);
  EXPECT_EQ(env.info("vol").shared_bytes, 0u);
  // With no snapshot left, writes go in place again: no new extent.
  ASSERT_TRUE(write_model(env, *v, live, 0, kExt, rng));
  EXPECT_EQ(env.used(), 15 * kExt);
  ASSERT_TRUE(reads(env, *v, live));
}

TEST(Snapshot, ForcedVolumeDeleteFreesSnapshotsToo) {
  Env env(Backend::sim);
  auto v = env.create_open("vol", kMiB);
  std::vector<uint8_t> live(kMiB, 0);
  std::mt19937_64 rng(3);
  ASSERT_TRUE(write_model(env, *v, live, 0, kMiB, rng));
  ASSERT_TRUE(env.store().create_snapshot("vol", "s1"));
  ASSERT_TRUE(write_model(env, *v, live, 0, kMiB / 2, rng));
  ASSERT_TRUE(env.store().create_snapshot("vol", "s2"));
  auto h = env.open("vol@s1");
  ASSERT_TRUE(env.store().delete_volume("vol", true));
  EXPECT_FALSE(h->alive());
  std::vector<uint8_t> buf(kBlk);
  EXPECT_EQ(env.run(h->read(0, kBlk, buf.data())).error(), make_error_code(Errc::not_found));
  h.reset();
  v.reset();
  ASSERT_TRUE(env.impl().run_maintenance_round());
  EXPECT_EQ(env.used(), 0u);
  ASSERT_TRUE(unmapped_space_is_zero(env));
  // A new volume of the same name starts empty, without snapshots, also after a reopen.
  auto fresh = env.create_open("vol", kMiB);
  ASSERT_TRUE(reads(env, *fresh, std::vector<uint8_t>(kMiB, 0)));
  fresh.reset();
  env.close();
  env.open();
  EXPECT_TRUE(env.store().list_snapshots("vol").value().empty());
  EXPECT_EQ(env.used(), 0u);
}

// ---------------------------------------------------------------------------------------
// Clones

TEST(Snapshot, ClonesAreIsolatedAndFlattenDetachesThem) {
  FOR_EACH_BACKEND(b) {
    Env env(b);
    auto src = env.create_open("src", kMiB);
    std::vector<uint8_t> src_model(kMiB, 0);
    std::mt19937_64 rng(4);
    ASSERT_TRUE(write_model(env, *src, src_model, 0, kMiB / 2, rng));
    ASSERT_TRUE(write_model(env, *src, src_model, 600 * 1024, 100 * 1024, rng));
    ASSERT_TRUE(env.store().create_snapshot("src", "s"));
    const std::vector<uint8_t> snap_model = src_model;
    const uint64_t used_before_clone = env.used();
    auto ci = env.store().clone_volume("src", "s", "cl");
    ASSERT_TRUE(ci) << ci.error().message();
    EXPECT_EQ(ci.value().parent, "src@s");
    EXPECT_EQ(ci.value().size_bytes, kMiB);
    EXPECT_EQ(env.used(), used_before_clone);  // O(1): nothing copied
    EXPECT_EQ(env.store().clone_volume("src", "s", "cl").error(),
              make_error_code(Errc::already_exists));
    EXPECT_EQ(env.store().clone_volume("src", "nope", "c2").error(),
              make_error_code(Errc::not_found));
    auto cl = env.open("cl");
    std::vector<uint8_t> cl_model = snap_model;
    ASSERT_TRUE(reads(env, *cl, cl_model));
    EXPECT_EQ(env.info("cl").allocated_bytes, 0u);
    EXPECT_EQ(env.info("cl").shared_bytes, (kMiB / 2 + 100 * 1024));

    // Writes to the clone touch neither the source nor the snapshot.
    ASSERT_TRUE(write_model(env, *cl, cl_model, 10 * 1024, 10 * 1024, rng));  // CoW, partial
    ASSERT_TRUE(write_model(env, *cl, cl_model, 3 * kExt, kExt, rng));        // CoW, whole
    ASSERT_TRUE(write_model(env, *cl, cl_model, 12 * kExt + 5, 7, rng));      // parent hole
    ASSERT_TRUE(env.store().create_snapshot("cl", "cs"));
    const std::vector<uint8_t> cs_model = cl_model;
    // Trims in the clone hide the parent's data.
    ASSERT_TRUE(trim_model(env, *cl, cl_model, 5 * kExt, kExt));                // whole
    ASSERT_TRUE(trim_model(env, *cl, cl_model, 6 * kExt + 2 * kBlk, 4 * kBlk));  // part
    ASSERT_TRUE(trim_model(env, *cl, cl_model, 7 * kExt + 100, 10000));          // unaligned
    ASSERT_TRUE(trim_model(env, *cl, cl_model, 3 * kExt, kExt));  // its own, seen by cs
    ASSERT_TRUE(write_model(env, *cl, cl_model, 1 * kExt, kExt / 2, rng));  // CoW, unshared
    ASSERT_TRUE(trim_model(env, *cl, cl_model, 1 * kExt, kExt));  // then all of its copy
    ASSERT_TRUE(env.run(cl->write_zeroes(9 * kExt, kBlk, false, false)));
    std::memset(cl_model.data() + 9 * kExt, 0, kBlk);
    EXPECT_FALSE(cl->allocation(5 * kExt, kExt, 4).value()[0].allocated);
    // Writes to the source touch neither the clone nor the snapshot.
    ASSERT_TRUE(write_model(env, *src, src_model, 0, 100 * 1024, rng));
    ASSERT_TRUE(trim_model(env, *src, src_model, 4 * kExt, 2 * kExt));
    ASSERT_TRUE(reads(env, *cl, cl_model));
    ASSERT_TRUE(reads(env, *src, src_model));
    ASSERT_TRUE(reads(env, *env.open("src@s"), snap_model));
    ASSERT_TRUE(reads(env, *env.open("cl@cs"), cs_model));
    EXPECT_EQ(env.snapshot("src", "s").clones, 1u);

    // The snapshot and its volume are pinned by the clone.
    EXPECT_EQ(env.store().delete_snapshot("src", "s").error(), make_error_code(Errc::busy));
    EXPECT_EQ(env.store().delete_volume("src", true).error(), make_error_code(Errc::busy));

    // Reopen: the clone link and the zero markers are durable.
    cl.reset();
    src.reset();
    env.close();
    env.open();
    cl = env.open("cl");
    src = env.open("src");
    ASSERT_TRUE(reads(env, *cl, cl_model));
    EXPECT_EQ(env.info("cl").parent, "src@s");

    // Flatten, then the snapshot (and the source) can go.
    ASSERT_TRUE(env.store().flatten_volume("cl"));
    EXPECT_EQ(env.info("cl").parent, "");
    EXPECT_EQ(env.snapshot("src", "s").clones, 0u);
    ASSERT_TRUE(env.store().flatten_volume("cl"));  // already flat: no-op
    ASSERT_TRUE(env.store().delete_snapshot("src", "s"));
    src.reset();
    ASSERT_TRUE(env.store().delete_volume("src", false));
    ASSERT_TRUE(env.impl().run_maintenance_round());
    ASSERT_TRUE(reads(env, *cl, cl_model));
    // The clone's own snapshot still reads what the parent held when it was taken.
    ASSERT_TRUE(reads(env, *env.open("cl@cs"), cs_model));
    cl.reset();
    env.close();
    env.open();
    cl = env.open("cl");
    ASSERT_TRUE(reads(env, *cl, cl_model));
    ASSERT_TRUE(reads(env, *env.open("cl@cs"), cs_model));
    ASSERT_TRUE(write_model(env, *cl, cl_model, 0, kMiB, rng));
    ASSERT_TRUE(reads(env, *cl, cl_model));
    ASSERT_TRUE(reads(env, *env.open("cl@cs"), cs_model));
  }
}

TEST(Snapshot, CloneOfACloneReadsThroughBothParents) {
  Env env(Backend::sim);
  auto a = env.create_open("a", kMiB);
  std::vector<uint8_t> am(kMiB, 0);
  std::mt19937_64 rng(5);
  ASSERT_TRUE(write_model(env, *a, am, 0, kMiB / 2, rng));
  ASSERT_TRUE(env.store().create_snapshot("a", "sa"));
  ASSERT_TRUE(env.store().clone_volume("a", "sa", "b"));
  auto b = env.open("b");
  std::vector<uint8_t> bm = am;
  ASSERT_TRUE(write_model(env, *b, bm, kMiB / 4, kMiB / 2, rng));
  ASSERT_TRUE(env.store().create_snapshot("b", "sb"));
  ASSERT_TRUE(env.store().clone_volume("b", "sb", "c"));
  auto c = env.open("c");
  std::vector<uint8_t> cm = bm;
  ASSERT_TRUE(reads(env, *c, cm));
  ASSERT_TRUE(trim_model(env, *c, cm, 0, kExt));
  ASSERT_TRUE(write_model(env, *c, cm, kExt + 7, 9000, rng));
  ASSERT_TRUE(write_model(env, *b, bm, 0, kMiB, rng));
  ASSERT_TRUE(write_model(env, *a, am, 0, kMiB, rng));
  ASSERT_TRUE(reads(env, *c, cm));
  EXPECT_EQ(env.store().delete_volume("b", true).error(), make_error_code(Errc::busy));
  ASSERT_TRUE(env.store().flatten_volume("c"));
  ASSERT_TRUE(env.store().delete_snapshot("b", "sb"));
  b.reset();
  ASSERT_TRUE(env.store().delete_volume("b", false));
  ASSERT_TRUE(reads(env, *c, cm));
  ASSERT_TRUE(env.impl().run_maintenance_round());
  ASSERT_TRUE(unmapped_space_is_zero(env));
}

// ---------------------------------------------------------------------------------------
// Diff against a model

// Per 4 KiB block: written or not, and a generation that changes with every operation that
// touches its content (the engine's view changes whenever one does).
struct BlockView {
  std::vector<uint8_t> written;
  std::vector<uint32_t> gen;
  std::vector<uint8_t> bytes;
  explicit BlockView(uint64_t size = 0)
      : written(size / kBlk, 0), gen(size / kBlk, 0), bytes(size, 0) {}
};

// The diff the engine must report: an extent in which some block differs between the two
// views reports its blocks written in `to` as data and those written only in `from` as zero.
std::vector<DiffRun> model_diff(const BlockView* from, const BlockView& to, uint64_t off,
                                uint64_t len) {
  std::vector<DiffRun> runs;
  auto add = [&](uint64_t o, bool zero) {
    const uint64_t s = std::max(o, off), e = std::min(o + kBlk, off + len);
    if (s >= e) return;
    if (!runs.empty() && runs.back().zero == zero &&
        runs.back().offset_bytes + runs.back().length_bytes == s) {
      runs.back().length_bytes += e - s;
      return;
    }
    runs.push_back({s, e - s, zero});
  };
  const uint64_t blocks = to.written.size();
  for (uint64_t e0 = 0; e0 < blocks; e0 += kBlocksPerExtent) {
    bool changed = false;
    for (uint64_t b = e0; b < e0 + kBlocksPerExtent && b < blocks; ++b) {
      const bool fw = from != nullptr && from->written[b];
      const bool tw = to.written[b];
      if (fw != tw || (fw && from->gen[b] != to.gen[b])) changed = true;
    }
    if (!changed) continue;
    for (uint64_t b = e0; b < e0 + kBlocksPerExtent && b < blocks; ++b) {
      if (to.written[b]) add(b * kBlk, false);
      else if (from != nullptr && from->written[b]) add(b * kBlk, true);
    }
  }
  return runs;
}

std::vector<AllocationRun> as_changed_runs(const std::vector<DiffRun>& d, uint64_t off,
                                           uint64_t len) {
  std::vector<AllocationRun> runs;
  auto add = [&](bool changed, uint64_t n) {
    if (n == 0) return;
    if (!runs.empty() && runs.back().allocated == changed) runs.back().length_bytes += n;
    else runs.push_back({n, changed});
  };
  uint64_t pos = off;
  for (const DiffRun& r : d) {
    add(false, r.offset_bytes - pos);
    add(true, r.length_bytes);
    pos = r.offset_bytes + r.length_bytes;
  }
  add(false, off + len - pos);
  return runs;
}

std::string show(const std::vector<DiffRun>& runs) {
  std::string s;
  for (const DiffRun& r : runs)
    s += "[" + std::to_string(r.offset_bytes) + "+" + std::to_string(r.length_bytes) +
         (r.zero ? " zero] " : " data] ");
  return s;
}

class DiffWorkload {
 public:
  static constexpr uint64_t kSize = kMiB;  // 16 extents: operations collide often

  DiffWorkload(Env& env, uint64_t seed) : env_(env), rng_(seed), live_(kSize) {
    v_ = env_.create_open("vol", kSize);
  }

  void step() {
    const uint64_t r = rng_() % 100;
    if (r < 45) return op_write();
    if (r < 60) return op_zero(/*release=*/true);
    if (r < 67) return op_zero(/*release=*/false);
    if (r < 77 && snaps_.size() < 5) return op_snapshot();
    if (r < 80 && !snaps_.empty()) return op_delete_snapshot();
    if (r < 82) {
      ASSERT_TRUE(env_.impl().run_maintenance_round());
    }
  }

  void reopen() {
    v_.reset();
    env_.close();
    env_.open();
    v_ = env_.open("vol");
  }

  void check_all() {
    ASSERT_TRUE(reads(env_, *v_, live_.bytes));
    std::vector<std::string> names;
    for (auto& [n, view] : snaps_) {
      names.push_back(n);
      ASSERT_TRUE(reads(env_, *env_.open("vol@" + n), view.bytes)) << n;
    }
    // Snapshots in creation order (names carry a counter).
    std::sort(names.begin(), names.end(), [](const std::string& a, const std::string& b) {
      return std::stoi(a.substr(1)) < std::stoi(b.substr(1));
    });
    auto check = [&](const std::string& from, const std::string& to) {
      const BlockView* f = from.empty() ? nullptr : &snaps_.at(from);
      const BlockView& t = to.empty() ? live_ : snaps_.at(to);
      auto got = env_.store().diff("vol", from, to);
      ASSERT_TRUE(got) << got.error().message();
      auto want = model_diff(f, t, 0, kSize);
      ASSERT_EQ(show(got.value()), show(want)) << "diff(" << from << ", " << to << ")";
      ++diffs_checked_;
    };
    check("", "");
    for (size_t i = 0; i < names.size(); ++i) {
      check("", names[i]);
      check(names[i], "");
      for (size_t j = i + 1; j < names.size(); ++j) check(names[i], names[j]);
    }
    // The NBD dirty-bitmap form, on random ranges, from the live volume and from snapshots.
    for (int k = 0; k < 8 && !names.empty(); ++k) {
      const uint64_t off = (rng_() % (kSize / 512)) * 512;
      const uint64_t len = std::min<uint64_t>(kSize - off, 512 * (1 + rng_() % 600));
      const size_t i = rng_() % names.size();
      auto got = v_->changed_since(names[i], off, len, 1 << 20);
      ASSERT_TRUE(got) << got.error().message();
      auto want = as_changed_runs(model_diff(&snaps_.at(names[i]), live_, off, len), off, len);
      ASSERT_EQ(got.value().size(), want.size()) << "changed_since " << names[i];
      for (size_t x = 0; x < want.size(); ++x) {
        EXPECT_EQ(got.value()[x].length_bytes, want[x].length_bytes);
        EXPECT_EQ(got.value()[x].allocated, want[x].allocated);
      }
      if (i + 1 < names.size()) {
        auto h = env_.open("vol@" + names.back());
        auto g2 = h->changed_since(names[i], off, len, 1 << 20);
        ASSERT_TRUE(g2);
        auto w2 = as_changed_runs(
            model_diff(&snaps_.at(names[i]), snaps_.at(names.back()), off, len), off, len);
        ASSERT_EQ(g2.value().size(), w2.size());
        for (size_t x = 0; x < w2.size(); ++x) {
          EXPECT_EQ(g2.value()[x].length_bytes, w2[x].length_bytes);
          EXPECT_EQ(g2.value()[x].allocated, w2[x].allocated);
        }
        EXPECT_EQ(h->changed_since(names.back(), off, len, 8).error(),
                  make_error_code(Errc::invalid_argument));
      }
    }
  }

  int diffs_checked() const { return diffs_checked_; }

 private:
  void op_write() {
    uint64_t len = 1 + rng_() % (3 * kExt);
    uint64_t off = rng_() % (kSize - 1);
    if (rng_() % 2) off = off / kBlk * kBlk, len = (len + kBlk - 1) / kBlk * kBlk;
    len = std::min(len, kSize - off);
    std::vector<uint8_t> buf(len);
    fill_random(buf.data(), len, rng_);
    Status st = env_.run(v_->write(off, len, buf.data(), false));
    ASSERT_TRUE(st) << st.error().message();
    std::memcpy(live_.bytes.data() + off, buf.data(), len);
    touch_cover(off, len);
  }

  void op_zero(bool release) {
    uint64_t len = 1 + rng_() % (3 * kExt);
    uint64_t off = rng_() % (kSize - 1);
    if (rng_() % 3 == 0) off = off / kExt * kExt, len = kExt * (1 + rng_() % 2);
    len = std::min(len, kSize - off);
    Status st = env_.run(v_->write_zeroes(off, len, release, false));
    ASSERT_TRUE(st) << st.error().message();
    std::memset(live_.bytes.data() + off, 0, len);
    if (!release) return touch_cover(off, len);
    // Trim: whole blocks are released; partial edge blocks are rewritten if written.
    const uint64_t end = off + len;
    for (uint64_t b = off / kBlk; b * kBlk < end; ++b) {
      const bool whole = b * kBlk >= off && (b + 1) * kBlk <= end;
      if (whole) live_.written[b] = 0;
      else if (live_.written[b]) live_.gen[b] = ++gen_;
    }
  }

  void touch_cover(uint64_t off, uint64_t len) {
    for (uint64_t b = off / kBlk; b * kBlk < off + len; ++b) {
      live_.written[b] = 1;
      live_.gen[b] = ++gen_;
    }
  }

  void op_snapshot() {
    const std::string name = "s" + std::to_string(++snap_counter_);
    auto s = env_.store().create_snapshot("vol", name);
    ASSERT_TRUE(s) << s.error().message();
    snaps_.emplace(name, live_);
  }

  void op_delete_snapshot() {
    auto it = snaps_.begin();
    std::advance(it, static_cast<long>(rng_() % snaps_.size()));
    ASSERT_TRUE(env_.store().delete_snapshot("vol", it->first));
    snaps_.erase(it);
  }

  Env& env_;
  std::mt19937_64 rng_;
  std::shared_ptr<Volume> v_;
  BlockView live_;
  std::map<std::string, BlockView> snaps_;
  uint32_t gen_ = 0;
  int snap_counter_ = 0;
  int diffs_checked_ = 0;
};

TEST(Snapshot, DiffMatchesModelUnderRandomWorkload) {
  const uint64_t seed = test_seed(11);
  Env env(Backend::sim, 0, 4096);
  DiffWorkload w(env, seed);
  for (int round = 0; round < 6; ++round) {
    for (int i = 0; i < 60; ++i) {
      w.step();
      if (::testing::Test::HasFatalFailure()) {
        ADD_FAILURE() << "round " << round << " step " << i << " seed " << seed;
        return;
      }
    }
    w.check_all();
    if (::testing::Test::HasFatalFailure()) {
      ADD_FAILURE() << "check after round " << round << " seed " << seed;
      return;
    }
    if (round == 2) w.reopen();  // the change index and versions are durable
  }
  EXPECT_GT(w.diffs_checked(), 20);
}

TEST(Snapshot, DiffCostFollowsChangesAndRejectsBadPoints) {
  Env env(Backend::sim);
  auto v = env.create_open("vol", 64 * kMiB);
  std::vector<uint8_t> buf(kMiB, 7);
  for (uint64_t off = 0; off < 64 * kMiB; off += kMiB)
    ASSERT_TRUE(env.run(v->write(off, kMiB, buf.data(), false)));
  ASSERT_TRUE(env.store().create_snapshot("vol", "s1"));
  ASSERT_TRUE(env.run(v->write(33 * kExt + kBlk, kBlk, buf.data(), false)));
  ASSERT_TRUE(env.run(v->trim(900 * kExt, 2 * kExt, false)));
  ASSERT_TRUE(env.store().create_snapshot("vol", "s2"));
  auto d = env.store().diff("vol", "s1", "s2").value();
  ASSERT_EQ(d.size(), 2u) << show(d);
  EXPECT_EQ(d[0].offset_bytes, 33 * kExt);
  EXPECT_EQ(d[0].length_bytes, kExt);
  EXPECT_FALSE(d[0].zero);
  EXPECT_EQ(d[1].offset_bytes, 900 * kExt);
  EXPECT_EQ(d[1].length_bytes, 2 * kExt);
  EXPECT_TRUE(d[1].zero);
  EXPECT_TRUE(env.store().diff("vol", "s2", "").value().empty());
  EXPECT_TRUE(env.store().diff("vol", "s2", "s2").value().empty());
  EXPECT_EQ(env.store().diff("vol", "s2", "s1").error(), make_error_code(Errc::invalid_argument));
  EXPECT_EQ(env.store().diff("vol", "nope", "").error(), make_error_code(Errc::not_found));
  EXPECT_EQ(v->changed_since("nope", 0, kMiB, 4).error(), make_error_code(Errc::not_found));
  // A bounded answer: at most max_runs runs.
  auto runs = v->changed_since("s1", 0, 64 * kMiB, 2).value();
  EXPECT_EQ(runs.size(), 2u);
  EXPECT_FALSE(runs[0].allocated);
  EXPECT_EQ(runs[0].length_bytes, 33 * kExt);
}

// ---------------------------------------------------------------------------------------
// O(1) create

TEST(Snapshot, CreateWritesAConstantNumberOfKeys) {
  Env env(Backend::sim);
  auto small = env.create_open("small", kMiB);
  auto big = env.create_open("big", 64 * kMiB);
  std::vector<uint8_t> buf(kMiB, 3);
  ASSERT_TRUE(env.run(small->write(0, kExt, buf.data(), false)));
  for (uint64_t off = 0; off < 64 * kMiB; off += kMiB)
    ASSERT_TRUE(env.run(big->write(off, kMiB, buf.data(), false)));
  auto keys_for = [&](const std::string& vol, const std::string& snap) {
    const uint64_t before = env.impl().metadata_keys_written();
    EXPECT_TRUE(env.store().create_snapshot(vol, snap));
    return env.impl().metadata_keys_written() - before;
  };
  const uint64_t k_small = keys_for("small", "s");
  const uint64_t k_big = keys_for("big", "s");
  EXPECT_EQ(k_small, k_big);
  EXPECT_EQ(k_big, 3u);  // snapshot record, volume record (seq), next snapshot id
  EXPECT_EQ(keys_for("big", "t"), 3u);
  EXPECT_EQ(env.info("big").shared_bytes, 64 * kMiB);
}

// ---------------------------------------------------------------------------------------
// Concurrency: a snapshot never contains half a write

constexpr uint64_t kRegionBytes = 4 * kExt;  // 5 extents from offset kBlk
constexpr uint64_t kRegions = 8;

uint64_t region_offset(uint64_t r) { return kBlk + r * 8 * kExt; }

// Rewrites the regions in turn, each write stamping its generation in every sector. After a
// snapshot the first write to each region is a redirect (extent by extent).
Task<Status> rewrite_loop(Volume* v, std::atomic<bool>* stop, uint32_t* gens) {
  std::vector<uint8_t> buf(kRegionBytes, 0);
  for (uint32_t gen = 1; !stop->load() && gen < 100000; ++gen) {
    for (uint64_t i = 0; i < kRegionBytes; i += 512) std::memcpy(buf.data() + i, &gen, 4);
    CAIRN_CO_TRY(co_await v->write(region_offset(gen % kRegions), kRegionBytes, buf.data(), false));
    *gens = gen;
  }
  co_return ok();
}

// The generation every sector of region `r` of `h` holds, or -1 if they differ.
int64_t uniform_generation(Env& env, Volume& h, uint64_t r) {
  std::vector<uint8_t> buf(kRegionBytes);
  if (!env.run(h.read(region_offset(r), kRegionBytes, buf.data()))) return -2;
  uint32_t first;
  std::memcpy(&first, buf.data(), 4);
  for (uint64_t p = 0; p < kRegionBytes; p += 512) {
    uint32_t g;
    std::memcpy(&g, buf.data() + p, 4);
    if (g != first) return -1;
  }
  return first;
}

TEST(Snapshot, CreateDrainsConcurrentWrites) {
  Env env(Backend::uring);
  constexpr int kSnapshots = 16;
  auto v = env.create_open("vol", 4 * kMiB);
  // Each create pauses between its drain and its commit: a write let in meanwhile would be
  // cut in two by the snapshot.
  ScopedFault slow("blockd.snapshot.before_commit:delay_ms=25");
  std::atomic<bool> stop{false};
  uint32_t gens = 0;
  auto done = env.reactor()->start(rewrite_loop(v.get(), &stop, &gens));
  std::vector<int64_t> seen;
  for (int i = 0; i < kSnapshots; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    ASSERT_TRUE(env.store().create_snapshot("vol", "s" + std::to_string(i)));
    auto h = env.open("vol@s" + std::to_string(i));
    for (uint64_t r = 0; r < kRegions; ++r) {
      seen.push_back(uniform_generation(env, *h, r));
      ASSERT_GE(seen.back(), 0) << "snapshot s" << i << " holds parts of two writes";
    }
  }
  stop = true;
  ASSERT_TRUE(done.get());
  EXPECT_GT(gens, 0u);
  for (int i = 0; i < kSnapshots; ++i) {  // ... and never changes afterwards
    auto h = env.open("vol@s" + std::to_string(i));
    for (uint64_t r = 0; r < kRegions; ++r)
      EXPECT_EQ(uniform_generation(env, *h, r), seen[i * kRegions + r])
          << "snapshot s" << i << " changed after it was taken";
  }
}

TEST(Snapshot, GateDrainsWritesInFlightAndHoldsNewOnes) {
  using namespace std::chrono_literals;
  Env env(Backend::uring);
  constexpr uint64_t kLen = 4 * kExt;
  auto v = env.create_open("vol", kMiB);
  std::vector<uint8_t> a(kLen, 0xA1), b(kLen, 0xB2), c(kLen, 0xC3);
  ASSERT_TRUE(env.run(v->write(0, kLen, a.data(), false)));
  ASSERT_TRUE(env.store().create_snapshot("vol", "s0"));  // from here the extents are shared
  {
    // A create paused between its drain and its commit holds new writes back.
    ScopedFault pause("blockd.snapshot.before_commit:delay_ms=300");
    auto create = std::async(std::launch::async,
                             [&] { return env.store().create_snapshot("vol", "s1"); });
    std::this_thread::sleep_for(100ms);
    auto w = env.reactor()->start(v->write(0, kLen, b.data(), false));
    EXPECT_EQ(w.wait_for(50ms), std::future_status::timeout)
        << "a write ran while a snapshot was being taken";
    ASSERT_TRUE(create.get());
    ASSERT_TRUE(w.get());
  }
  ASSERT_TRUE(reads(env, *env.open("vol@s1"), a, 0, kLen));
  ASSERT_TRUE(reads(env, *v, b, 0, kLen));
  ASSERT_TRUE(env.store().create_snapshot("vol", "s1b"));  // b's extents shared too
  {
    // A write in flight (paused after each redirected extent) is waited for.
    ScopedFault slow("blockd.volume.after_metadata:delay_ms=100");
    auto w = env.reactor()->start(v->write(0, kLen, c.data(), false));
    std::this_thread::sleep_for(50ms);
    ASSERT_TRUE(env.store().create_snapshot("vol", "s2"));
    EXPECT_EQ(w.wait_for(0ms), std::future_status::ready) << "the snapshot did not drain";
    ASSERT_TRUE(w.get());
  }
  ASSERT_TRUE(reads(env, *env.open("vol@s2"), c, 0, kLen));
}

// One worker owns [base, base + len) (not block- or extent-aligned, so neighbours share
// blocks and extents) and checks every read against its own model.
Task<Status> region_worker(Volume* v, uint64_t base, uint64_t len, uint64_t seed, int ops) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> model(len, 0), buf;
  for (int i = 0; i < ops; ++i) {
    const uint64_t off = rng() % len;
    const uint64_t n = 1 + rng() % std::min<uint64_t>(len - off, 96 * 1024);
    const uint64_t kind = rng() % 10;
    if (kind < 5) {
      buf.resize(n);
      fill_random(buf.data(), n, rng);
      CAIRN_CO_TRY(co_await v->write(base + off, n, buf.data(), rng() % 8 == 0));
      std::memcpy(model.data() + off, buf.data(), n);
    } else if (kind < 7) {
      CAIRN_CO_TRY(co_await v->write_zeroes(base + off, n, rng() % 2 == 0, false));
      std::memset(model.data() + off, 0, n);
    } else if (kind < 8) {
      CAIRN_CO_TRY(co_await v->flush());
    } else {
      buf.assign(n, 0xEE);
      CAIRN_CO_TRY(co_await v->read(base + off, n, buf.data()));
      if (std::memcmp(buf.data(), model.data() + off, n) != 0) co_return Errc::corrupt;
    }
  }
  buf.assign(len, 0xEE);
  CAIRN_CO_TRY(co_await v->read(base, len, buf.data()));
  if (buf != model) co_return Errc::corrupt;
  co_return ok();
}

struct Group {
  std::vector<Status> results;
  std::atomic<int> pending{0};
};

Task<void> report(Task<Status> t, std::shared_ptr<Group> g, size_t i) {
  g->results[i] = co_await std::move(t);
  --g->pending;
}

Task<Status> run_group(std::shared_ptr<std::vector<Task<Status>>> tasks) {
  auto g = std::make_shared<Group>();
  g->results.resize(tasks->size(), ok());
  g->pending = static_cast<int>(tasks->size());
  for (size_t i = 0; i < tasks->size(); ++i) spawn(report(std::move((*tasks)[i]), g, i));
  Reactor* r = Reactor::current();
  for (int i = 0; i < 600000 && g->pending > 0; ++i) co_await r->sleep_ns(100000);  // <= 60 s
  if (g->pending != 0) co_return Errc::unavailable;
  for (auto& st : g->results)
    if (!st) co_return st;
  co_return ok();
}

TEST(Snapshot, ConcurrentIoFromTwoReactorsWithSnapshotChurn) {
  ReactorThread first, second;  // outlive the store (its maintenance thread posts to them)
  TempDir dir;
  VolumeStore::Options o;
  o.data_dir = dir.path();
  o.capacity_bytes = 12 * kMiB;
  o.maintenance_interval_ms = 2;  // background rounds recycle freed extents meanwhile
  auto opened = VolumeStore::open(o);
  ASSERT_TRUE(opened);
  auto store = std::move(opened.value());
  ASSERT_TRUE(store->create_volume("mixed", 4 * kMiB));
  auto v = store->open_volume("mixed").value();
  constexpr int kWorkers = 8;
  constexpr uint64_t kRegion = 300000;
  std::vector<Task<Status>> a, b;
  for (int w = 0; w < kWorkers; ++w)
    (w % 2 ? a : b).push_back(region_worker(v.get(), w * kRegion + 100, kRegion, 500 + w, 120));
  auto fa = first.start(run_group(std::make_shared<std::vector<Task<Status>>>(std::move(a))));
  auto fb = second.start(run_group(std::make_shared<std::vector<Task<Status>>>(std::move(b))));
  std::deque<std::string> snaps;
  for (int i = 0; fa.wait_for(std::chrono::milliseconds(3)) != std::future_status::ready ||
                  fb.wait_for(std::chrono::milliseconds(0)) != std::future_status::ready;
       ++i) {
    if (i > 5000) break;
    const std::string name = "c" + std::to_string(i);
    auto s = store->create_snapshot("mixed", name);
    if (s) snaps.push_back(name);
    else ASSERT_EQ(s.error(), make_error_code(Errc::unavailable)) << s.error().message();
    if (snaps.size() > 3) {
      ASSERT_TRUE(store->delete_snapshot("mixed", snaps.front()));
      snaps.pop_front();
    }
  }
  Status sa = fa.get(), sb = fb.get();
  ASSERT_TRUE(sa) << sa.error().message();
  ASSERT_TRUE(sb) << sb.error().message();
  std::vector<uint8_t> buf(4 * kMiB);
  for (const std::string& n : snaps) {
    auto h = store->open_volume("mixed@" + n).value();
    ASSERT_TRUE(first.run(h->read(0, 4 * kMiB, buf.data()))) << n;
  }
  while (!snaps.empty()) {
    ASSERT_TRUE(store->delete_snapshot("mixed", snaps.front()));
    snaps.pop_front();
  }
  VolumeInfo info = store->get_volume("mixed").value();
  EXPECT_EQ(info.shared_bytes, 0u);
  EXPECT_EQ(info.exclusive_bytes, info.allocated_bytes);
  v.reset();
  ASSERT_TRUE(store->delete_volume("mixed", false));
  auto impl = dynamic_cast<StoreImpl*>(store.get());
  for (int i = 0; i < 100 && store->stats().used_bytes != 0; ++i) (void)impl->run_maintenance_round();
  EXPECT_EQ(store->stats().used_bytes, 0u) << "space leaked";
}

// ---------------------------------------------------------------------------------------
// Crash safety

TEST(Snapshot, SnapshotCreatedJustBeforeACrashIsWhole) {
  Env env(Backend::sim, 0, 512);
  auto v = env.create_open("vol", kMiB);
  std::vector<uint8_t> live(kMiB, 0);
  std::mt19937_64 rng(6);
  ASSERT_TRUE(write_model(env, *v, live, 0, kMiB / 2, rng));  // never flushed by the user
  ASSERT_TRUE(env.store().create_snapshot("vol", "s"));
  const std::vector<uint8_t> frozen = live;
  v.reset();
  env.crash_and_reopen(CrashMode::drop_unsynced, 1);
  ASSERT_TRUE(reads(env, *env.open("vol@s"), frozen));
  ASSERT_TRUE(reads(env, *env.open("vol"), frozen));  // create made them durable
  ASSERT_TRUE(unmapped_space_is_zero(env));
}

TEST(Snapshot, FaultBeforeCommitLeavesNoSnapshot) {
  Env env(Backend::sim, 0, 512);
  auto v = env.create_open("vol", kMiB);
  std::vector<uint8_t> live(kMiB, 0);
  std::mt19937_64 rng(7);
  ASSERT_TRUE(write_model(env, *v, live, 0, kMiB / 2, rng));
  {
    ScopedFault f("blockd.snapshot.before_commit:error=EIO");
    auto s = env.store().create_snapshot("vol", "s");
    ASSERT_FALSE(s);
    EXPECT_EQ(to_errno(s.error()), EIO);
  }
  EXPECT_TRUE(env.store().list_snapshots("vol").value().empty());
  // Writes after the failed create go in place (no snapshot shares anything).
  const uint64_t used = env.used();
  ASSERT_TRUE(write_model(env, *v, live, 0, kExt, rng, /*fua=*/true));
  EXPECT_EQ(env.used(), used);
  v.reset();
  env.crash_and_reopen(CrashMode::tear_sectors, 2);
  EXPECT_TRUE(env.store().list_snapshots("vol").value().empty());
  ASSERT_TRUE(reads(env, *env.open("vol"), live));  // synced by the create, then FUA
  ASSERT_TRUE(env.store().create_snapshot("vol", "s"));  // the name is free
}

TEST(Snapshot, InterruptedDeleteIsFinishedAtOpen) {
  Env env(Backend::sim, 0, 512);
  auto v = env.create_open("vol", kMiB);
  std::vector<uint8_t> live(kMiB, 0);
  std::mt19937_64 rng(8);
  ASSERT_TRUE(write_model(env, *v, live, 0, kMiB, rng));
  ASSERT_TRUE(env.store().create_snapshot("vol", "s1"));
  ASSERT_TRUE(write_model(env, *v, live, 0, kMiB / 2, rng));
  ASSERT_TRUE(env.store().create_snapshot("vol", "s2"));
  const std::vector<uint8_t> s2 = live;
  ASSERT_TRUE(write_model(env, *v, live, kMiB / 4, kMiB / 2, rng));
  ASSERT_TRUE(env.run(v->flush()));
  const uint64_t s1_exclusive = env.snapshot("vol", "s1").exclusive_bytes;
  EXPECT_EQ(s1_exclusive, kMiB / 2);
  const uint64_t used = env.used();
  {
    ScopedFault f("blockd.snapshot.delete.mid:error=EIO");
    auto st = env.store().delete_snapshot("vol", "s1");
    ASSERT_FALSE(st);
  }
  // The record is gone (synced) even though its versions are not freed yet.
  EXPECT_EQ(env.store().list_snapshots("vol").value().size(), 1u);
  EXPECT_EQ(env.used(), used);
  v.reset();
  env.crash_and_reopen(CrashMode::keep_random_subset, 3);
  EXPECT_EQ(env.store().list_snapshots("vol").value().size(), 1u);
  EXPECT_EQ(env.used(), used - s1_exclusive);  // recovery dropped s1's versions
  ASSERT_TRUE(unmapped_space_is_zero(env));
  ASSERT_TRUE(reads(env, *env.open("vol@s2"), s2));
  ASSERT_TRUE(reads(env, *env.open("vol"), live));
}

TEST(Snapshot, FaultsAroundARedirectLoseNoDurableBlock) {
  for (const char* point : {"blockd.volume.before_metadata", "blockd.volume.after_metadata"}) {
    SCOPED_TRACE(point);
    Env env(Backend::sim, 0, 512);
    auto v = env.create_open("vol", kMiB);
    std::vector<uint8_t> old_model(kMiB, 0);
    std::mt19937_64 rng(9);
    ASSERT_TRUE(write_model(env, *v, old_model, 0, kMiB, rng));
    ASSERT_TRUE(env.store().create_snapshot("vol", "s"));
    {
      ScopedFault f(std::string(point) + ":error=EIO");
      // A partial-extent write into a shared extent: redirect with a copy of the rest.
      std::vector<uint8_t> scratch = old_model;
      EXPECT_FALSE(write_model(env, *v, scratch, 3 * kExt + 1000, 5000, rng));
    }
    v.reset();
    env.crash_and_reopen(CrashMode::drop_unsynced, 4);
    ASSERT_TRUE(reads(env, *env.open("vol@s"), old_model));
    // The failed write may or may not have landed, but the rest of the extent is intact.
    auto live = env.open("vol");
    ASSERT_TRUE(reads(env, *live, old_model, 0, 3 * kExt + 1000));
    ASSERT_TRUE(reads(env, *live, old_model, 3 * kExt + 6000, kMiB - (3 * kExt + 6000)));
    ASSERT_TRUE(unmapped_space_is_zero(env));
  }
}

// Random workload with snapshots, cut by power failures: each surviving snapshot reads
// exactly what it froze, deleted ones stay deleted, and every live sector reads its durable
// value or one written since (never bytes of another sector or of a snapshot's past).
class CrashWorkload {
 public:
  static constexpr uint64_t kSector = 512;
  static constexpr uint64_t kSize = kMiB;
  static constexpr uint64_t kSectors = kSize / kSector;

  CrashWorkload(Env& env, uint64_t seed) : env_(env), rng_(seed) {
    cur_.assign(kSectors, 0);
    durable_.assign(kSectors, 0);
    since_.assign(kSectors, {});
    v_ = env_.create_open("vol", kSize);
  }

  void step() {
    const uint64_t r = rng_() % 100;
    if (r < 50) return op_write();
    if (r < 62) return op_trim();
    if (r < 70) {
      ASSERT_TRUE(env_.run(v_->flush()));
      return durable_all();
    }
    if (r < 80 && snaps_.size() < 4) return op_snapshot();
    if (r < 86 && !snaps_.empty()) return op_delete();
    if (r < 90) {
      ASSERT_TRUE(env_.impl().run_maintenance_round());
    }
  }

  void crash_and_verify(CrashMode mode, uint64_t crash_seed) {
    v_.reset();
    env_.crash_and_reopen(mode, crash_seed);
    ASSERT_TRUE(unmapped_space_is_zero(env_));
    auto list = env_.store().list_snapshots("vol");
    ASSERT_TRUE(list);
    ASSERT_EQ(list.value().size(), snaps_.size()) << "a snapshot appeared or vanished";
    std::vector<uint8_t> buf(kSize);
    for (auto& [name, gens] : snaps_) {
      auto h = env_.open("vol@" + name);
      ASSERT_TRUE(env_.run(h->read(0, kSize, buf.data())));
      for (uint64_t s = 0; s < kSectors; ++s)
        ASSERT_EQ(decode(buf.data() + s * kSector, s), int64_t{gens[s]})
            << "snapshot " << name << " sector " << s;
    }
    v_ = env_.open("vol");
    ASSERT_TRUE(env_.run(v_->read(0, kSize, buf.data())));
    for (uint64_t s = 0; s < kSectors; ++s) {
      const int64_t g = decode(buf.data() + s * kSector, s);
      ASSERT_GE(g, 0) << "sector " << s << " holds foreign or torn bytes";
      const bool allowed = static_cast<uint32_t>(g) == durable_[s] ||
                           std::find(since_[s].begin(), since_[s].end(), g) != since_[s].end();
      ASSERT_TRUE(allowed) << "sector " << s << " reads " << g << ", durable " << durable_[s];
      cur_[s] = durable_[s] = static_cast<uint32_t>(g);
      since_[s].clear();
    }
  }

 private:
  static constexpr uint64_t kMagic = 0xA7ull << 56;
  static void fill(uint8_t* p, uint64_t sector, uint32_t gen) {
    const uint64_t base = kMagic | (sector << 24) | gen;
    for (uint64_t i = 0; i < kSector / 8; ++i) {
      const uint64_t w = base ^ (i * 0x9E3779B97F4A7C15ull);
      std::memcpy(p + i * 8, &w, 8);
    }
  }
  // Generation held (0: zeros), -1: not a whole sector of this volume.
  static int64_t decode(const uint8_t* p, uint64_t sector) {
    if (std::all_of(p, p + kSector, [](uint8_t b) { return b == 0; })) return 0;
    uint64_t base;
    std::memcpy(&base, p, 8);
    for (uint64_t i = 1; i < kSector / 8; ++i) {
      uint64_t w;
      std::memcpy(&w, p + i * 8, 8);
      if ((w ^ (i * 0x9E3779B97F4A7C15ull)) != base) return -1;
    }
    if ((base >> 56) != (kMagic >> 56) || ((base >> 24) & 0xffffffff) != sector) return -1;
    return static_cast<int64_t>(base & 0xffffff);
  }

  void set(uint64_t s, uint32_t g, bool durable) {
    cur_[s] = g;
    if (durable) {
      durable_[s] = g;
      since_[s].clear();
    } else {
      since_[s].push_back(g);
    }
  }
  void durable_all() {
    durable_ = cur_;
    for (auto& v : since_) v.clear();
  }

  void op_write() {
    uint64_t n = 1 + rng_() % 160;
    uint64_t first = rng_() % kSectors;
    if (rng_() % 2) first &= ~uint64_t{7}, n = (n + 7) & ~uint64_t{7};
    n = std::min(n, kSectors - first);
    const bool fua = rng_() % 8 == 0;
    const uint32_t gen = ++gen_;
    std::vector<uint8_t> buf(n * kSector);
    for (uint64_t k = 0; k < n; ++k) fill(buf.data() + k * kSector, first + k, gen);
    ASSERT_TRUE(env_.run(v_->write(first * kSector, n * kSector, buf.data(), fua)));
    for (uint64_t k = 0; k < n; ++k) set(first + k, gen, fua);
  }

  void op_trim() {
    uint64_t n = 1 + rng_() % 300;
    uint64_t first = rng_() % kSectors;
    if (rng_() % 3 == 0) first &= ~uint64_t{127}, n = 128;
    n = std::min(n, kSectors - first);
    const bool fua = rng_() % 8 == 0;
    ASSERT_TRUE(env_.run(v_->trim(first * kSector, n * kSector, fua)));
    for (uint64_t k = 0; k < n; ++k) set(first + k, 0, fua);
  }

  void op_snapshot() {
    const std::string name = "s" + std::to_string(++snap_counter_);
    ASSERT_TRUE(env_.store().create_snapshot("vol", name));
    snaps_[name] = cur_;
    durable_all();  // create syncs the data and the metadata it contains
  }

  void op_delete() {
    auto it = snaps_.begin();
    std::advance(it, static_cast<long>(rng_() % snaps_.size()));
    ASSERT_TRUE(env_.store().delete_snapshot("vol", it->first));
    snaps_.erase(it);
  }

  Env& env_;
  std::mt19937_64 rng_;
  std::shared_ptr<Volume> v_;
  std::vector<uint32_t> cur_, durable_;
  std::vector<std::vector<uint32_t>> since_;
  std::map<std::string, std::vector<uint32_t>> snaps_;
  uint32_t gen_ = 0;
  int snap_counter_ = 0;
};

void run_crash_cycles(CrashMode mode, uint32_t alignment, uint64_t default_seed) {
  const uint64_t seed = test_seed(default_seed);
  Env env(Backend::sim, /*capacity_bytes=*/12 * kMiB, alignment);
  CrashWorkload w(env, seed);
  std::mt19937_64 rng(seed ^ 0x5eed);
  for (int cycle = 0; cycle < 5; ++cycle) {
    const int steps = 80 + static_cast<int>(rng() % 150);
    for (int i = 0; i < steps; ++i) {
      w.step();
      if (::testing::Test::HasFatalFailure()) {
        ADD_FAILURE() << "cycle " << cycle << " step " << i << " seed " << seed;
        return;
      }
    }
    w.crash_and_verify(mode, rng());
    if (::testing::Test::HasFatalFailure()) {
      ADD_FAILURE() << "after crash " << cycle << " seed " << seed;
      return;
    }
  }
}

TEST(Snapshot, CrashCyclesDroppingUnsyncedWrites) {
  run_crash_cycles(CrashMode::drop_unsynced, 512, 21);
}

TEST(Snapshot, CrashCyclesKeepingARandomSubset) {
  run_crash_cycles(CrashMode::keep_random_subset, 512, 22);
}

TEST(Snapshot, CrashCyclesWithTornSectorsOn4KiBDevice) {
  run_crash_cycles(CrashMode::tear_sectors, 4096, 23);
}

}  // namespace
}  // namespace cairn::blockd
