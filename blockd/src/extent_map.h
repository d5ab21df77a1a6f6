// ExtentMap: the live map of one volume's logical extents to physical extents, and the
// RocksDB encoding of its records (docs/FORMAT-blockd.md).
//
// Owned by the volume's state inside the store; loaded from RocksDB at open and kept in step
// with it: every change is written to RocksDB by the owner while it still holds the lock that
// guards the map, so the in-memory map is the source of truth and RocksDB follows it in
// order. Not thread-safe: the owner serializes access (the volume's map mutex).
// Invariants: a record's written bitmap is never 0 (an extent with no written block is
// unmapped instead); written_blocks() == sum of popcount(written) over all data records.
// A clone may hold zero markers (phys_extent == kZeroMarkerPhys): the extent reads as zeros
// and hides the parent snapshot's data; markers are not counted as mapped or written.
#pragma once

#include <bit>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "blockd/volume_store.h"
#include "common/result.h"

namespace cairn::blockd {

constexpr uint32_t kBlocksPerExtent = kExtentSizeBytes / kBlockSizeBytes;  // 16
using BlockBitmap = uint16_t;  // bit i: 4 KiB block i of the extent was written
static_assert(kBlocksPerExtent == 16, "the written bitmap is 16 bits");

// phys_extent of a zero marker: the logical extent reads as zeros (a clone's trim of data
// it would otherwise read from its parent snapshot). Its bitmap is kMarkerBitmap.
constexpr uint64_t kZeroMarkerPhys = ~uint64_t{0};
constexpr BlockBitmap kMarkerBitmap = 0xFFFF;

struct ExtentRecord {
  uint64_t phys_extent = 0;  // index of the 64 KiB physical extent in the data file
  BlockBitmap written = 0;
  uint64_t birth_seq = 0;  // volume sequence the record was created or last changed in
  bool operator==(const ExtentRecord&) const = default;
  bool is_marker() const { return phys_extent == kZeroMarkerPhys; }
  // Blocks that hold data (0 for a marker).
  BlockBitmap data_blocks() const { return is_marker() ? BlockBitmap{0} : written; }
};

inline ExtentRecord zero_marker(uint64_t birth_seq) {
  return ExtentRecord{kZeroMarkerPhys, kMarkerBitmap, birth_seq};
}

constexpr size_t kExtentKeyBytes = 17;     // 'e' + volume id (8) + logical extent (8)
constexpr size_t kExtentRecordBytes = 18;  // phys (8) + bitmap (2) + birth_seq (8)
constexpr char kExtentKeyTag = 'e';
// Old versions of extent records kept for snapshots: 'h' + volume id + logical extent +
// death_seq -> ExtentRecord (phys, bitmap, birth_seq). Visible to snapshot S iff
// birth_seq <= S.seq < death_seq.
constexpr size_t kVersionKeyBytes = 25;
constexpr char kVersionKeyTag = 'h';
// Change index for diffs: 'c' + volume id + seq + logical extent -> empty value. Exists for
// every (seq, extent) whose live record was created, changed or removed in that seq while
// the volume had a snapshot.
constexpr size_t kChangeKeyBytes = 25;
constexpr char kChangeKeyTag = 'c';

inline void put_be64(uint8_t* p, uint64_t v) {
  for (int i = 7; i >= 0; --i) {
    p[i] = static_cast<uint8_t>(v);
    v >>= 8;
  }
}
inline uint64_t get_be64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}

std::string extent_key(uint64_t volume_id, uint64_t logical_extent);
std::string extent_key_prefix(uint64_t volume_id);  // every key of the volume starts so
// False when `key` is not an extent key.
bool parse_extent_key(std::string_view key, uint64_t* volume_id, uint64_t* logical_extent);
std::string version_key(uint64_t volume_id, uint64_t logical_extent, uint64_t death_seq);
std::string version_key_prefix(uint64_t volume_id);
bool parse_version_key(std::string_view key, uint64_t* volume_id, uint64_t* logical_extent,
                       uint64_t* death_seq);
std::string change_key(uint64_t volume_id, uint64_t seq, uint64_t logical_extent);
std::string change_key_prefix(uint64_t volume_id);
bool parse_change_key(std::string_view key, uint64_t* volume_id, uint64_t* seq,
                      uint64_t* logical_extent);
std::string encode_extent_record(const ExtentRecord& rec);
Result<ExtentRecord> decode_extent_record(std::string_view value);

// Bits of blocks [first_block, end_block) of one extent.
inline BlockBitmap block_mask(uint32_t first_block, uint32_t end_block) {
  if (end_block <= first_block) return 0;
  uint32_t ones = (1u << (end_block - first_block)) - 1u;
  return static_cast<BlockBitmap>(ones << first_block);
}
inline uint32_t block_count(BlockBitmap b) { return static_cast<uint32_t>(std::popcount(b)); }

// Storage: a two-level radix table (directory -> leaf of 512 records, 32 MiB of logical
// space), so find() is three dependent loads whatever the volume size, and iteration in
// logical order skips empty leaves. Memory: about 24 bytes per mapped extent plus 8 bytes per
// 32 MiB up to the highest mapped extent (the directory), so thin volumes stay small.
class ExtentMap {
 public:
  using Entry = std::pair<uint64_t, ExtentRecord>;
  using Records = std::vector<Entry>;  // in logical order

  // Walks records in logical order. Invalidated by put/erase of another extent... except
  // that erasing the record it points at is allowed after it was advanced past it.
  class const_iterator {
   public:
    const Entry& operator*() const { return cur_; }
    const Entry* operator->() const { return &cur_; }
    const_iterator& operator++() {
      seek(cur_.first + 1);
      return *this;
    }
    bool operator==(const const_iterator& o) const { return at_end_ == o.at_end_ && (at_end_ || cur_.first == o.cur_.first); }

   private:
    friend class ExtentMap;
    const_iterator(const ExtentMap* m, uint64_t from) : m_(m) { seek(from); }
    const_iterator() = default;
    void seek(uint64_t from);
    const ExtentMap* m_ = nullptr;
    Entry cur_{};
    bool at_end_ = true;
  };

  ExtentMap() = default;
  ExtentMap(ExtentMap&&) = default;
  ExtentMap& operator=(ExtentMap&&) = default;

  const ExtentRecord* find(uint64_t logical_extent) const;
  // The first record at or after `logical_extent`, or end().
  const_iterator lower_bound(uint64_t logical_extent) const { return const_iterator(this, logical_extent); }
  const_iterator end() const { return const_iterator(); }
  // Inserts or replaces; rec.written must not be 0 (a marker's is kMarkerBitmap).
  void put(uint64_t logical_extent, const ExtentRecord& rec);
  std::optional<ExtentRecord> erase(uint64_t logical_extent);
  // Empties the map and returns what it held, in logical order.
  Records take_all();

  size_t mapped_extents() const { return mapped_; }  // data records (markers excluded)
  size_t markers() const { return markers_; }
  uint64_t written_blocks() const { return written_blocks_; }
  template <class F>
  void for_each(F&& f) const {
    for (auto it = lower_bound(0); it != end(); ++it) f(it->first, it->second);
  }

 private:
  void forget(const ExtentRecord& rec);  // counters of a record leaving its slot
  static constexpr unsigned kLeafBits = 9;    // 512 extents = 32 MiB per leaf
  static constexpr unsigned kDirBits = 11;    // 2048 leaves = 64 GiB per directory page
  static constexpr uint64_t kLeafSize = 1ull << kLeafBits;
  static constexpr uint64_t kDirSize = 1ull << kDirBits;
  struct Leaf {
    ExtentRecord records[kLeafSize];  // written == 0: absent
    uint32_t count = 0;
  };
  struct DirPage {
    std::unique_ptr<Leaf> leaves[kDirSize];
    uint32_t count = 0;  // non-null leaves
  };
  std::vector<std::unique_ptr<DirPage>> top_;
  size_t mapped_ = 0;
  size_t markers_ = 0;
  uint64_t written_blocks_ = 0;
};

}  // namespace cairn::blockd
