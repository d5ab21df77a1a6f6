// Allocator: allocation, quarantine, the open-time scan; and, through the store, that reused
// physical space never shows a former owner's bytes.
#include "test_support.h"
#include "allocator.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <vector>

#include "blockd/sim_block_device.h"
#include "blockd/volume_store.h"
#include "common/when_all.h"

namespace cairn::blockd {
namespace {

using namespace cairn::blockd::test;

std::vector<Allocator::Run> scan(Allocator& a, std::vector<uint64_t> used, uint64_t device) {
  for (uint64_t u : used) a.mark_used(u);
  std::vector<Allocator::Run> holes;
  EXPECT_TRUE(a.finish_scan(device, &holes));
  return holes;
}

TEST(Allocator, AllocatesLowestFreeThenAboveHighWater) {
  Allocator a(100);
  auto holes = scan(a, {0, 3}, 0);
  ASSERT_EQ(holes, (std::vector<Allocator::Run>{{1, 2}}));
  EXPECT_EQ(a.high_water(), 4u);
  EXPECT_EQ(a.allocate(), 1u);
  EXPECT_EQ(a.allocate(), 2u);
  EXPECT_EQ(a.allocate(), 4u);  // free pool empty: bump the high-water mark
  EXPECT_EQ(a.high_water(), 5u);
  EXPECT_EQ(a.used_extents(), 5u);
  a.unallocate(2);  // never written: straight back to the pool
  EXPECT_EQ(a.allocate(), 2u);
}

TEST(Allocator, QuarantinedExtentsAreNotReusedBeforePromotion) {
  Allocator a(3);
  scan(a, {}, 0);
  uint64_t e0 = a.allocate().value(), e1 = a.allocate().value(), e2 = a.allocate().value();
  EXPECT_EQ(std::vector<uint64_t>({e0, e1, e2}), std::vector<uint64_t>({0, 1, 2}));
  a.quarantine(e1);
  EXPECT_FALSE(a.allocate().has_value()) << "a quarantined extent was handed out";
  EXPECT_EQ(a.quarantined_extents(), 1u);
  auto taken = a.take_quarantine();
  ASSERT_EQ(taken, std::vector<uint64_t>{1});
  EXPECT_FALSE(a.allocate().has_value()) << "an extent being promoted was handed out";
  a.requarantine(taken);  // a failed round puts them back
  EXPECT_FALSE(a.allocate().has_value());
  taken = a.take_quarantine();
  a.promote(taken);
  EXPECT_EQ(a.quarantined_extents(), 0u);
  EXPECT_EQ(a.allocate(), 1u);
  EXPECT_FALSE(a.allocate().has_value());
}

TEST(Allocator, ScanReturnsEveryUnmappedRunUpToTheDeviceEnd) {
  Allocator a(1000);
  auto holes = scan(a, {5, 2, 3, 9}, 20);
  EXPECT_EQ(holes, (std::vector<Allocator::Run>{{0, 2}, {4, 1}, {6, 3}, {10, 10}}));
  EXPECT_EQ(a.high_water(), 10u);
  // The pool holds the holes below the mark; the tail stays above it.
  std::vector<uint64_t> got;
  for (int i = 0; i < 7; ++i) got.push_back(a.allocate().value());
  EXPECT_EQ(got, (std::vector<uint64_t>{0, 1, 4, 6, 7, 8, 10}));
}

TEST(Allocator, ScanRejectsTwoMappingsOfOneExtent) {
  Allocator a(10);
  a.mark_used(4);
  a.mark_used(4);
  std::vector<Allocator::Run> holes;
  EXPECT_FALSE(a.finish_scan(0, &holes));
}

TEST(Allocator, StopsAtCapacity) {
  Allocator a(2);
  scan(a, {}, 0);
  EXPECT_TRUE(a.allocate().has_value());
  EXPECT_TRUE(a.allocate().has_value());
  EXPECT_FALSE(a.allocate().has_value());
  EXPECT_EQ(a.free_extents(), 0u);
}

TEST(Allocator, CoalescesAdjacentExtents) {
  auto runs = Allocator::coalesce({7, 3, 4, 5, 9, 8, 1});
  EXPECT_EQ(runs, (std::vector<Allocator::Run>{{1, 1}, {3, 3}, {7, 3}}));
  EXPECT_TRUE(Allocator::coalesce({}).empty());
}

// --- through the store: reuse after delete ------------------------------------------------

bool all_zero(const std::vector<uint8_t>& v, size_t from = 0, size_t to = SIZE_MAX) {
  to = std::min(to, v.size());
  return std::all_of(v.begin() + from, v.begin() + to, [](uint8_t b) { return b == 0; });
}

TEST(Allocator, ReuseAfterDeleteNeverExposesOldBytes) {
  constexpr uint64_t kVolBytes = 16 * kExtentSizeBytes;  // exactly the capacity
  TempDir dir;
  SimBlockDevice disk({});
  VolumeStore::Options o;
  o.data_dir = dir.path();
  o.capacity_bytes = kVolBytes;
  o.maintenance_interval_ms = 0;  // promotion only on demand: deterministic
  auto store = VolumeStore::open(o, disk.attach());
  ASSERT_TRUE(store) << store.error().message();
  VolumeStore& s = *store.value();

  ASSERT_TRUE(s.create_volume("a", kVolBytes));
  {
    auto a = s.open_volume("a").value();
    std::vector<uint8_t> secret(kVolBytes, 0xA5);
    ASSERT_TRUE(run_sync(a->write(0, secret.size(), secret.data(), false)));
    ASSERT_TRUE(run_sync(a->flush()));
  }
  EXPECT_EQ(s.stats().used_bytes, kVolBytes);
  ASSERT_TRUE(s.delete_volume("a", false));

  ASSERT_TRUE(s.create_volume("b", kVolBytes));
  auto b = s.open_volume("b").value();
  std::vector<uint8_t> got(kVolBytes, 0xFF);
  ASSERT_TRUE(run_sync(b->read(0, got.size(), got.data())));
  EXPECT_TRUE(all_zero(got)) << "a new volume shows bytes before its first write";

  // The pool is empty and the file is at capacity: this write waits for a promotion round
  // (punch + sync) and then reuses one of a's extents.
  std::vector<uint8_t> block(kBlockSizeBytes, 0x5B);
  const uint64_t off = 3 * kExtentSizeBytes + 5 * kBlockSizeBytes;
  ASSERT_TRUE(run_sync(b->write(off, block.size(), block.data(), false)));
  std::vector<uint8_t> ext(kExtentSizeBytes, 0xFF);
  ASSERT_TRUE(run_sync(b->read(3 * kExtentSizeBytes, ext.size(), ext.data())));
  EXPECT_TRUE(all_zero(ext, 0, 5 * kBlockSizeBytes));
  EXPECT_TRUE(std::all_of(ext.begin() + 5 * kBlockSizeBytes, ext.begin() + 6 * kBlockSizeBytes,
                          [](uint8_t x) { return x == 0x5B; }));
  EXPECT_TRUE(all_zero(ext, 6 * kBlockSizeBytes));

  // Below the volume: every byte of the data file except that block is zero.
  std::vector<uint8_t> raw(disk.size_bytes());
  disk.peek(0, raw.size(), raw.data());
  size_t nonzero = std::count_if(raw.begin(), raw.end(), [](uint8_t x) { return x != 0; });
  EXPECT_EQ(nonzero, kBlockSizeBytes);
  EXPECT_EQ(std::count(raw.begin(), raw.end(), 0xA5), 0) << "old owner's bytes still on disk";

  // Every extent of a is reusable, and all of b can be written.
  std::vector<uint8_t> full(kVolBytes, 0x77);
  ASSERT_TRUE(run_sync(b->write(0, full.size(), full.data(), false)));
  EXPECT_EQ(s.stats().used_bytes, kVolBytes);
  std::vector<uint8_t> more(kBlockSizeBytes, 1);
  ASSERT_TRUE(s.create_volume("c", kVolBytes));
  auto c = s.open_volume("c").value();
  auto full_write = run_sync(c->write(0, more.size(), more.data(), false));
  ASSERT_FALSE(full_write);
  EXPECT_EQ(full_write.error(), make_error_code(Errc::no_space));
}

}  // namespace
}  // namespace cairn::blockd
