#include "extent_map.h"

#include "common/assert.h"

namespace cairn::blockd {

std::string extent_key(uint64_t volume_id, uint64_t logical_extent) {
  std::string k(kExtentKeyBytes, '\0');
  auto* p = reinterpret_cast<uint8_t*>(k.data());
  p[0] = static_cast<uint8_t>(kExtentKeyTag);
  put_be64(p + 1, volume_id);
  put_be64(p + 9, logical_extent);
  return k;
}

std::string extent_key_prefix(uint64_t volume_id) {
  std::string k(9, '\0');
  auto* p = reinterpret_cast<uint8_t*>(k.data());
  p[0] = static_cast<uint8_t>(kExtentKeyTag);
  put_be64(p + 1, volume_id);
  return k;
}

bool parse_extent_key(std::string_view key, uint64_t* volume_id, uint64_t* logical_extent) {
  if (key.size() != kExtentKeyBytes || key[0] != kExtentKeyTag) return false;
  const auto* p = reinterpret_cast<const uint8_t*>(key.data());
  *volume_id = get_be64(p + 1);
  *logical_extent = get_be64(p + 9);
  return true;
}

namespace {

std::string key3(char tag, uint64_t a, uint64_t b, uint64_t c) {
  std::string k(25, '\0');
  auto* p = reinterpret_cast<uint8_t*>(k.data());
  p[0] = static_cast<uint8_t>(tag);
  put_be64(p + 1, a);
  put_be64(p + 9, b);
  put_be64(p + 17, c);
  return k;
}

std::string prefix1(char tag, uint64_t a) {
  std::string k(9, '\0');
  auto* p = reinterpret_cast<uint8_t*>(k.data());
  p[0] = static_cast<uint8_t>(tag);
  put_be64(p + 1, a);
  return k;
}

bool parse3(std::string_view key, char tag, uint64_t* a, uint64_t* b, uint64_t* c) {
  if (key.size() != 25 || key[0] != tag) return false;
  const auto* p = reinterpret_cast<const uint8_t*>(key.data());
  *a = get_be64(p + 1);
  *b = get_be64(p + 9);
  *c = get_be64(p + 17);
  return true;
}

}  // namespace

std::string version_key(uint64_t volume_id, uint64_t logical_extent, uint64_t death_seq) {
  return key3(kVersionKeyTag, volume_id, logical_extent, death_seq);
}
std::string version_key_prefix(uint64_t volume_id) { return prefix1(kVersionKeyTag, volume_id); }
bool parse_version_key(std::string_view key, uint64_t* volume_id, uint64_t* logical_extent,
                       uint64_t* death_seq) {
  return parse3(key, kVersionKeyTag, volume_id, logical_extent, death_seq);
}
std::string change_key(uint64_t volume_id, uint64_t seq, uint64_t logical_extent) {
  return key3(kChangeKeyTag, volume_id, seq, logical_extent);
}
std::string change_key_prefix(uint64_t volume_id) { return prefix1(kChangeKeyTag, volume_id); }
bool parse_change_key(std::string_view key, uint64_t* volume_id, uint64_t* seq,
                      uint64_t* logical_extent) {
  return parse3(key, kChangeKeyTag, volume_id, seq, logical_extent);
}

std::string encode_extent_record(const ExtentRecord& rec) {
  std::string v(kExtentRecordBytes, '\0');
  auto* p = reinterpret_cast<uint8_t*>(v.data());
  put_be64(p, rec.phys_extent);
  p[8] = static_cast<uint8_t>(rec.written >> 8);
  p[9] = static_cast<uint8_t>(rec.written);
  put_be64(p + 10, rec.birth_seq);
  return v;
}

Result<ExtentRecord> decode_extent_record(std::string_view value) {
  if (value.size() != kExtentRecordBytes) return Errc::corrupt;
  const auto* p = reinterpret_cast<const uint8_t*>(value.data());
  ExtentRecord rec;
  rec.phys_extent = get_be64(p);
  rec.written = static_cast<BlockBitmap>((p[8] << 8) | p[9]);
  rec.birth_seq = get_be64(p + 10);
  return rec;
}

const ExtentRecord* ExtentMap::find(uint64_t logical_extent) const {
  const uint64_t t = logical_extent >> (kLeafBits + kDirBits);
  if (t >= top_.size() || !top_[t]) return nullptr;
  const Leaf* leaf = top_[t]->leaves[(logical_extent >> kLeafBits) & (kDirSize - 1)].get();
  if (leaf == nullptr) return nullptr;
  const ExtentRecord& r = leaf->records[logical_extent & (kLeafSize - 1)];
  return r.written != 0 ? &r : nullptr;
}

void ExtentMap::put(uint64_t logical_extent, const ExtentRecord& rec) {
  CAIRN_ASSERT(rec.written != 0);
  const uint64_t t = logical_extent >> (kLeafBits + kDirBits);
  if (t >= top_.size()) top_.resize(t + 1);
  if (!top_[t]) top_[t] = std::make_unique<DirPage>();
  DirPage& dir = *top_[t];
  auto& leaf = dir.leaves[(logical_extent >> kLeafBits) & (kDirSize - 1)];
  if (!leaf) {
    leaf = std::make_unique<Leaf>();
    ++dir.count;
  }
  ExtentRecord& slot = leaf->records[logical_extent & (kLeafSize - 1)];
  if (slot.written != 0) {
    forget(slot);
  } else {
    ++leaf->count;
  }
  slot = rec;
  if (rec.is_marker()) {
    ++markers_;
  } else {
    ++mapped_;
    written_blocks_ += block_count(rec.written);
  }
}

void ExtentMap::forget(const ExtentRecord& rec) {
  if (rec.is_marker()) {
    --markers_;
  } else {
    --mapped_;
    written_blocks_ -= block_count(rec.written);
  }
}

std::optional<ExtentRecord> ExtentMap::erase(uint64_t logical_extent) {
  const uint64_t t = logical_extent >> (kLeafBits + kDirBits);
  if (t >= top_.size() || !top_[t]) return std::nullopt;
  DirPage& dir = *top_[t];
  auto& leaf = dir.leaves[(logical_extent >> kLeafBits) & (kDirSize - 1)];
  if (!leaf) return std::nullopt;
  ExtentRecord& slot = leaf->records[logical_extent & (kLeafSize - 1)];
  if (slot.written == 0) return std::nullopt;
  ExtentRecord rec = slot;
  slot = ExtentRecord{};
  forget(rec);
  if (--leaf->count == 0) {
    leaf.reset();
    if (--dir.count == 0) top_[t].reset();
  }
  return rec;
}

ExtentMap::Records ExtentMap::take_all() {
  Records out;
  out.reserve(mapped_);
  for_each([&](uint64_t ext, const ExtentRecord& rec) { out.emplace_back(ext, rec); });
  top_.clear();
  mapped_ = 0;
  markers_ = 0;
  written_blocks_ = 0;
  return out;
}

void ExtentMap::const_iterator::seek(uint64_t from) {
  at_end_ = true;
  if (m_ == nullptr) return;
  const auto& top = m_->top_;
  for (uint64_t t = from >> (kLeafBits + kDirBits); t < top.size(); ++t) {
    if (!top[t]) {
      from = (t + 1) << (kLeafBits + kDirBits);
      continue;
    }
    for (uint64_t d = (from >> kLeafBits) & (kDirSize - 1); d < kDirSize; ++d) {
      const Leaf* leaf = top[t]->leaves[d].get();
      const uint64_t leaf_base = (t << (kLeafBits + kDirBits)) | (d << kLeafBits);
      if (leaf != nullptr) {
        for (uint64_t i = from > leaf_base ? from - leaf_base : 0; i < kLeafSize; ++i) {
          if (leaf->records[i].written != 0) {
            cur_ = {leaf_base + i, leaf->records[i]};
            at_end_ = false;
            return;
          }
        }
      }
      from = leaf_base + kLeafSize;
    }
  }
}

}  // namespace cairn::blockd
