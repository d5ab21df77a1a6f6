// ExtentMap and its RocksDB encoding.
#include "extent_map.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

namespace cairn::blockd {
namespace {

TEST(ExtentMap, PutFindEraseKeepWrittenBlockCount) {
  ExtentMap m;
  EXPECT_EQ(m.find(3), nullptr);
  m.put(3, {7, 0x000f, 1});
  m.put(9, {8, 0xffff, 1});
  ASSERT_NE(m.find(3), nullptr);
  EXPECT_EQ(m.find(3)->phys_extent, 7u);
  EXPECT_EQ(m.mapped_extents(), 2u);
  EXPECT_EQ(m.written_blocks(), 4u + 16u);
  m.put(3, {7, 0x00ff, 2});  // replace: count follows the new bitmap
  EXPECT_EQ(m.written_blocks(), 8u + 16u);
  auto gone = m.erase(9);
  ASSERT_TRUE(gone.has_value());
  EXPECT_EQ(gone->phys_extent, 8u);
  EXPECT_FALSE(m.erase(9).has_value());
  EXPECT_EQ(m.written_blocks(), 8u);
  EXPECT_EQ(m.mapped_extents(), 1u);
}

TEST(ExtentMap, LowerBoundWalksInLogicalOrder) {
  ExtentMap m;
  for (uint64_t e : {40u, 2u, 17u}) m.put(e, {e + 100, 1, 1});
  auto it = m.lower_bound(3);
  ASSERT_NE(it, m.end());
  EXPECT_EQ(it->first, 17u);
  ++it;
  EXPECT_EQ(it->first, 40u);
  EXPECT_EQ(m.lower_bound(41), m.end());
}

TEST(ExtentMap, TakeAllEmptiesTheMap) {
  ExtentMap m;
  m.put(1, {1, 3, 1});
  m.put(2, {2, 1, 1});
  auto all = m.take_all();
  EXPECT_EQ(all.size(), 2u);
  EXPECT_EQ(m.mapped_extents(), 0u);
  EXPECT_EQ(m.written_blocks(), 0u);
}

TEST(ExtentMap, RecordEncodingRoundTrips) {
  ExtentRecord r{0x0102030405060708ull, 0xa55a, 0x1122334455667788ull};
  std::string v = encode_extent_record(r);
  ASSERT_EQ(v.size(), kExtentRecordBytes);
  EXPECT_EQ(static_cast<uint8_t>(v[0]), 0x01);  // big-endian
  EXPECT_EQ(static_cast<uint8_t>(v[8]), 0xa5);
  auto back = decode_extent_record(v);
  ASSERT_TRUE(back);
  EXPECT_EQ(back.value(), r);
  EXPECT_FALSE(decode_extent_record(v.substr(1)));
}

TEST(ExtentMap, KeysSortInNumericOrderAndParse) {
  std::vector<std::pair<uint64_t, uint64_t>> ids = {
      {1, 0}, {1, 255}, {1, 256}, {2, 0}, {256, 1}, {1ull << 40, 1ull << 33}};
  std::vector<std::string> keys;
  for (auto [v, e] : ids) keys.push_back(extent_key(v, e));
  EXPECT_TRUE(std::is_sorted(keys.begin(), keys.end()));
  for (size_t i = 0; i < ids.size(); ++i) {
    uint64_t v = 0, e = 0;
    ASSERT_TRUE(parse_extent_key(keys[i], &v, &e));
    EXPECT_EQ(v, ids[i].first);
    EXPECT_EQ(e, ids[i].second);
    EXPECT_EQ(keys[i].rfind(extent_key_prefix(ids[i].first), 0), 0u);
  }
  uint64_t v = 0, e = 0;
  EXPECT_FALSE(parse_extent_key("v/name", &v, &e));
}

TEST(ExtentMap, BlockMaskCoversHalfOpenRange) {
  EXPECT_EQ(block_mask(0, 16), 0xffff);
  EXPECT_EQ(block_mask(0, 1), 0x0001);
  EXPECT_EQ(block_mask(15, 16), 0x8000);
  EXPECT_EQ(block_mask(4, 8), 0x00f0);
  EXPECT_EQ(block_mask(5, 5), 0);
  EXPECT_EQ(block_count(0x0ff0), 8u);
}

}  // namespace
}  // namespace cairn::blockd

namespace cairn::blockd {

TEST(ExtentMap, SparseExtentsAcrossLeavesAndDirectoryPagesIterateInOrder) {
  ExtentMap m;
  // 1 PiB volume: the last extent is 2^34 - 1; leaves are 512 extents, directory pages 2^20.
  const std::vector<uint64_t> keys = {0, 511, 512, (1ull << 20) - 1, 1ull << 20, (1ull << 34) - 1};
  for (uint64_t k : keys) m.put(k, {k, 1, 1});
  std::vector<uint64_t> seen;
  m.for_each([&](uint64_t ext, const ExtentRecord& rec) {
    EXPECT_EQ(rec.phys_extent, ext);
    seen.push_back(ext);
  });
  EXPECT_EQ(seen, keys);
  EXPECT_EQ(m.lower_bound(513)->first, (1ull << 20) - 1);
  EXPECT_EQ(m.lower_bound((1ull << 20) + 1)->first, (1ull << 34) - 1);
  ASSERT_NE(m.find((1ull << 34) - 1), nullptr);
  EXPECT_EQ(m.find(513), nullptr);
  for (uint64_t k : keys) EXPECT_TRUE(m.erase(k).has_value());
  EXPECT_EQ(m.mapped_extents(), 0u);
  EXPECT_EQ(m.lower_bound(0), m.end());
}

TEST(ExtentMap, IteratorSurvivesErasingTheRecordItLeft) {
  ExtentMap m;
  for (uint64_t k = 0; k < 1100; k += 3) m.put(k, {k, 1, 1});
  size_t visited = 0;
  for (auto it = m.lower_bound(0); it != m.end();) {
    uint64_t ext = it->first;
    ++it;
    m.erase(ext);  // the trim/delete loops erase behind the iterator
    ++visited;
  }
  EXPECT_EQ(visited, 367u);
  EXPECT_EQ(m.mapped_extents(), 0u);
}

}  // namespace cairn::blockd
