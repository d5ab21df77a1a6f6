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
  auto it = map_.find(logical_extent);
  return it == map_.end() ? nullptr : &it->second;
}

void ExtentMap::put(uint64_t logical_extent, const ExtentRecord& rec) {
  CAIRN_ASSERT(rec.written != 0);
  auto [it, inserted] = map_.try_emplace(logical_extent, rec);
  if (!inserted) {
    written_blocks_ -= block_count(it->second.written);
    it->second = rec;
  }
  written_blocks_ += block_count(rec.written);
}

std::optional<ExtentRecord> ExtentMap::erase(uint64_t logical_extent) {
  auto it = map_.find(logical_extent);
  if (it == map_.end()) return std::nullopt;
  ExtentRecord rec = it->second;
  written_blocks_ -= block_count(rec.written);
  map_.erase(it);
  return rec;
}

ExtentMap::Records ExtentMap::take_all() {
  Records out;
  out.swap(map_);
  written_blocks_ = 0;
  return out;
}

}  // namespace cairn::blockd
