// Shard file framing: header, per-block CRC32C, record trailer (FORMAT-objectd.md). Round trip,
// every flipped byte detected, truncation detected.
#include "temp_dir.h"
#include "shard_file.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/assert.h"

namespace cairn::objectd::engine {
namespace {

using cairn::test::TempDir;

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
void write_all(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
}

cairn::v1::ObjectRecord make_record(uint64_t size) {
  cairn::v1::ObjectRecord rec;
  rec.set_id("0123456789abcdef0123456789abcdef");
  rec.set_bucket("bucket");
  rec.set_key("some/key");
  rec.set_kind(cairn::v1::ObjectRecord::OBJECT);
  rec.set_size_bytes(size);
  rec.set_etag("d41d8cd98f00b204e9800998ecf8427e");
  rec.set_data_shards(4);
  rec.set_parity_shards(2);
  rec.set_shard_block_bytes(100);
  rec.set_rotation(3);
  rec.set_shard_index(5);
  (*rec.mutable_user_metadata())["color"] = "blue";
  return rec;
}

// Writes a shard file for `rec` with deterministic block contents; returns the blocks.
std::vector<std::string> write_shard(const std::string& path, const cairn::v1::ObjectRecord& rec) {
  StripeLayout l = StripeLayout::of(rec);
  std::vector<std::string> blocks;
  ShardFileWriter w;
  EXPECT_TRUE(w.create(path));
  for (uint64_t s = 0; s < l.stripes(); ++s) {
    std::string b(l.block_len(s), '\0');
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<char>(s * 31 + i * 7);
    EXPECT_TRUE(w.append_block(reinterpret_cast<const uint8_t*>(b.data()),
                               static_cast<uint32_t>(b.size())));
    blocks.push_back(b);
  }
  EXPECT_TRUE(w.finish(rec));
  return blocks;
}

TEST(ShardFile, Crc32cIsTheStandardCastagnoli) {
  EXPECT_EQ(crc32c("123456789", 9), 0xe3069283u);
  EXPECT_EQ(crc32c("", 0), 0u);
  // Chainable.
  EXPECT_EQ(crc32c("6789", 4, crc32c("12345", 5)), 0xe3069283u);
}

TEST(ShardFile, LayoutGeometry) {
  StripeLayout l;
  l.k = 4;
  l.m = 2;
  l.block_bytes = 100;
  l.data_bytes = 0;
  EXPECT_EQ(l.stripes(), 0u);
  EXPECT_EQ(l.blocks_end(), kShardHeaderBytes);
  l.data_bytes = 400;
  EXPECT_EQ(l.stripes(), 1u);
  EXPECT_EQ(l.block_len(0), 100u);
  l.data_bytes = 401;
  EXPECT_EQ(l.stripes(), 2u);
  EXPECT_EQ(l.block_len(1), 1u);  // ceil(1 / 4)
  l.data_bytes = 1;
  EXPECT_EQ(l.block_len(0), 1u);
  l.data_bytes = 1000;  // 2 full stripes + 200 bytes -> last block 50
  EXPECT_EQ(l.stripes(), 3u);
  EXPECT_EQ(l.block_len(2), 50u);
  EXPECT_EQ(l.blocks_end(), kShardHeaderBytes + 2 * 104 + 54);
  l.rotation = 5;
  for (int s = 0; s < 6; ++s) EXPECT_EQ(l.shard_on(l.drive_of(s)), s);
  EXPECT_EQ(l.drive_of(0), 5);
  EXPECT_EQ(l.drive_of(1), 0);
}

TEST(ShardFile, RoundTrip) {
  TempDir dir;
  for (uint64_t size : {0ull, 1ull, 399ull, 400ull, 401ull, 1234ull}) {
    SCOPED_TRACE(size);
    std::string path = dir.path() + "/shard";
    cairn::v1::ObjectRecord rec = make_record(size);
    std::vector<std::string> blocks = write_shard(path, rec);
    ShardFileReader r;
    ASSERT_TRUE(r.open(path));
    uint64_t file_bytes = 0;
    auto got = r.read_record(&file_bytes);
    ASSERT_TRUE(got);
    EXPECT_EQ(got.value().SerializeAsString(), rec.SerializeAsString());
    EXPECT_EQ(file_bytes, std::filesystem::file_size(path));
    StripeLayout l = StripeLayout::of(rec);
    for (uint64_t s = 0; s < l.stripes(); ++s) {
      std::string buf(l.block_len(s), '\0');
      ASSERT_TRUE(r.read_block(l, s, reinterpret_cast<uint8_t*>(buf.data())));
      EXPECT_EQ(buf, blocks[s]);
    }
    EXPECT_TRUE(verify_shard_file(path, rec, 5, nullptr));
    // The wrong expectation is refused.
    EXPECT_FALSE(verify_shard_file(path, rec, 4, nullptr));
    cairn::v1::ObjectRecord other = rec;
    other.set_id("ffffffffffffffffffffffffffffffff");
    EXPECT_FALSE(verify_shard_file(path, other, 5, nullptr));
  }
}

TEST(ShardFile, EveryFlippedByteIsDetected) {
  TempDir dir;
  std::string path = dir.path() + "/shard";
  cairn::v1::ObjectRecord rec = make_record(1000);
  write_shard(path, rec);
  const std::string good = read_all(path);
  StripeLayout l = StripeLayout::of(rec);
  for (size_t pos = 0; pos < good.size(); ++pos) {
    std::string bad = good;
    bad[pos] = static_cast<char>(bad[pos] ^ 0x10);
    write_all(path, bad);
    Status st = verify_shard_file(path, rec, 5, nullptr);
    ASSERT_FALSE(st) << "flip at " << pos << " of " << good.size() << " undetected";
    // A flip inside a block (or its CRC) fails exactly that block's read.
    if (pos >= kShardHeaderBytes && pos < l.blocks_end()) {
      uint64_t stripe = (pos - kShardHeaderBytes) / (l.block_bytes + kBlockCrcBytes);
      ShardFileReader r;
      ASSERT_TRUE(r.open(path));
      std::string buf(l.block_bytes, '\0');
      Status rs = r.read_block(l, stripe, reinterpret_cast<uint8_t*>(buf.data()));
      ASSERT_FALSE(rs) << pos;
      EXPECT_EQ(rs.error(), Errc::corrupt);
      for (uint64_t s = 0; s < l.stripes(); ++s) {
        if (s != stripe) {
          EXPECT_TRUE(r.read_block(l, s, reinterpret_cast<uint8_t*>(buf.data())));
        }
      }
    }
  }
}

TEST(ShardFile, TruncationIsDetected) {
  TempDir dir;
  std::string path = dir.path() + "/shard";
  cairn::v1::ObjectRecord rec = make_record(1000);
  write_shard(path, rec);
  const std::string good = read_all(path);
  StripeLayout l = StripeLayout::of(rec);
  for (size_t len = 0; len < good.size(); len += (len < 40 ? 1 : 13)) {
    write_all(path, good.substr(0, len));
    ASSERT_FALSE(verify_shard_file(path, rec, 5, nullptr)) << "truncated to " << len;
    ShardFileReader r;
    ASSERT_TRUE(r.open(path));
    EXPECT_FALSE(r.read_record()) << len;
  }
  // A block cut off by truncation fails its read with corrupt (not garbage).
  write_all(path, good.substr(0, l.block_offset(2) + 10));
  ShardFileReader r;
  ASSERT_TRUE(r.open(path));
  std::string buf(l.block_bytes, '\0');
  EXPECT_TRUE(r.read_block(l, 1, reinterpret_cast<uint8_t*>(buf.data())));
  Status st = r.read_block(l, 2, reinterpret_cast<uint8_t*>(buf.data()));
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error(), Errc::corrupt);
  // Appended garbage is detected as well (the footer is no longer at the end).
  write_all(path, good + "xx");
  EXPECT_FALSE(verify_shard_file(path, rec, 5, nullptr));
}

TEST(ShardFile, MissingFileIsENOENT) {
  TempDir dir;
  Status st = verify_shard_file(dir.path() + "/nope", make_record(10), 5, nullptr);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error(), std::errc::no_such_file_or_directory);
}

}  // namespace
}  // namespace cairn::objectd::engine
