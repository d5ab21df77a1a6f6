// Index: the store's RocksDB (<data_dir>/index) and its key scheme (FORMAT-objectd.md).
//
//   m/format                       store id and drive count
//   m/heal                         ObjectHealState (the pass cursor)
//   m/catalog_gen                  generation of the drives' catalog mirror
//   b/<bucket>                     BucketRecord
//   t/<tenant>                     TenantRecord
//   k/<access key id>              AccessKeyRecord
//   o/<bucket>\0<key>              ObjectRecord (OBJECT or MULTIPART): the live version
//   u/<bucket>\0<key>\0<upload>    ObjectRecord (UPLOAD): an in-progress multipart upload
//   p/<upload>/<part u32 BE>       ObjectRecord (PART) of an in-progress upload
//   i/<id>                         the o/, u/ or p/ key that references shard files named <id>
//
// Owned by StoreImpl; RocksDB is thread-safe, so is this wrapper.
#pragma once

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace cairn::objectd::engine {

inline std::string object_key(std::string_view bucket, std::string_view key) {
  std::string k = "o/";
  k.append(bucket).push_back('\0');
  k.append(key);
  return k;
}
inline std::string object_prefix(std::string_view bucket) {
  std::string k = "o/";
  k.append(bucket).push_back('\0');
  return k;
}
inline std::string upload_key(std::string_view bucket, std::string_view key,
                              std::string_view upload_id) {
  std::string k = "u/";
  k.append(bucket).push_back('\0');
  k.append(key).push_back('\0');
  k.append(upload_id);
  return k;
}
inline std::string upload_prefix(std::string_view bucket) {
  std::string k = "u/";
  k.append(bucket).push_back('\0');
  return k;
}
inline std::string part_prefix(std::string_view upload_id) {
  std::string k = "p/";
  k.append(upload_id).push_back('/');
  return k;
}
inline std::string part_key(std::string_view upload_id, uint32_t part_number) {
  std::string k = part_prefix(upload_id);
  for (int i = 3; i >= 0; --i) k.push_back(static_cast<char>((part_number >> (8 * i)) & 0xff));
  return k;
}
inline std::string id_key(std::string_view id) { return "i/" + std::string(id); }
inline std::string bucket_key(std::string_view b) { return "b/" + std::string(b); }
inline std::string tenant_key(std::string_view t) { return "t/" + std::string(t); }
inline std::string access_key_key(std::string_view a) { return "k/" + std::string(a); }
inline constexpr char kFormatKey[] = "m/format";
inline constexpr char kHealKey[] = "m/heal";
inline constexpr char kCatalogGenKey[] = "m/catalog_gen";

// The smallest string greater than every string starting with `prefix` ("" if none).
std::string prefix_successor(std::string_view prefix);

class Index {
 public:
  static Result<std::unique_ptr<Index>> open(const std::string& path);
  ~Index();

  Result<std::optional<std::string>> get(std::string_view key);
  Status put(std::string_view key, std::string_view value, bool sync);
  Status write(rocksdb::WriteBatch& batch, bool sync);
  std::unique_ptr<rocksdb::Iterator> iterator();

 private:
  explicit Index(rocksdb::DB* db) : db_(db) {}
  rocksdb::DB* db_;
};

}  // namespace cairn::objectd::engine
