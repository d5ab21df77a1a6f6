// StoreImpl: open, drives, index rebuild, tenants/keys/buckets (+ the catalog mirror on the
// drives), object index operations, listing and multipart. Streaming I/O is in object_io.cc,
// healing in heal.cc. Format and protocols: docs/FORMAT-objectd.md.
#include <dirent.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>

#include "common/assert.h"
#include "common/fault.h"
#include "common/log.h"
#include "store_impl.h"

namespace cairn::objectd {

Result<std::unique_ptr<ObjectStore>> ObjectStore::open(const Options& options) {
  auto store = std::make_unique<engine::StoreImpl>(options);
  CAIRN_TRY(store->init());
  return std::unique_ptr<ObjectStore>(std::move(store));
}

}  // namespace cairn::objectd

namespace cairn::objectd::engine {
namespace {

constexpr char kLog[] = "objectd";
constexpr size_t kRebuildBatchEntries = 10000;

bool starts_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.compare(0, p.size(), p) == 0;
}

std::string_view as_view(const rocksdb::Slice& s) { return {s.data(), s.size()}; }

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t j = 1; j < len; ++j) {
      auto cc = static_cast<unsigned char>(s[i + j]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += len;
  }
  return true;
}

bool valid_name_token(std::string_view s, size_t max) {
  if (s.empty() || s.size() > max) return false;
  for (char c : s)
    if (!isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') return false;
  return true;
}

std::string random_alnum(size_t n, bool upper_only) {
  static const char* upper = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  static const char* mixed = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  const char* alphabet = upper_only ? upper : mixed;
  const size_t size = strlen(alphabet);
  std::string out;
  while (out.size() < n) {
    unsigned char b[64];
    CAIRN_ASSERT(RAND_bytes(b, sizeof b) == 1);
    for (unsigned char c : b) {
      // Rejection sampling keeps the distribution uniform.
      if (c >= 256 - 256 % size) continue;
      out.push_back(alphabet[c % size]);
      if (out.size() == n) break;
    }
  }
  return out;
}

AccessKey to_access_key(const cairn::v1::AccessKeyRecord& r) {
  AccessKey k;
  k.access_key_id = r.access_key_id();
  k.secret_key = r.secret_key();
  k.tenant = r.tenant();
  k.root = r.root();
  return k;
}

BucketInfo to_bucket_info(const cairn::v1::BucketRecord& r) {
  BucketInfo b;
  b.name = r.name();
  b.owner = r.owner();
  b.created_unix_s = r.created_unix_s();
  b.public_read = r.public_read();
  return b;
}

std::string normalize_etag(std::string s) {
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') s = s.substr(1, s.size() - 2);
  for (char& c : s) c = static_cast<char>(tolower(static_cast<unsigned char>(c)));
  return s;
}

bool hex_to_bytes(std::string_view hex, std::string* out) {
  if (hex.size() % 2 != 0) return false;
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  out->clear();
  for (size_t i = 0; i < hex.size(); i += 2) {
    int hi = nib(hex[i]), lo = nib(hex[i + 1]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(static_cast<char>(hi * 16 + lo));
  }
  return true;
}

// Collects the index keys i/<id> of a record and of its parts.
void delete_id_keys(rocksdb::WriteBatch& batch, const ObjectRecord& rec) {
  batch.Delete(id_key(rec.id()));
  for (const auto& p : rec.parts()) batch.Delete(id_key(p.id()));
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Names and conversions

ObjectMeta to_meta(const ObjectRecord& rec) {
  ObjectMeta m;
  m.bucket = rec.bucket();
  m.key = rec.key();
  m.size_bytes = rec.size_bytes();
  m.etag = rec.etag();
  m.mtime_unix_ms = rec.mtime_unix_ms();
  m.content_type = rec.content_type();
  m.user_metadata.insert(rec.user_metadata().begin(), rec.user_metadata().end());
  m.checksums.insert(rec.checksums().begin(), rec.checksums().end());
  m.headers.insert(rec.headers().begin(), rec.headers().end());
  m.parts = rec.kind() == ObjectRecord::MULTIPART ? static_cast<uint32_t>(rec.parts_size()) : 0;
  return m;
}

bool valid_bucket_name(std::string_view name) {
  if (name.size() < 3 || name.size() > 63) return false;
  for (char c : name)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-'))
      return false;
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!alnum(name.front()) || !alnum(name.back())) return false;
  if (name.find("..") != std::string_view::npos || name.find(".-") != std::string_view::npos ||
      name.find("-.") != std::string_view::npos)
    return false;
  if (starts_with(name, "xn--") || starts_with(name, "sthree-")) return false;
  if (name.size() >= 8 && name.substr(name.size() - 8) == "-s3alias") return false;
  if (name.size() >= 7 && name.substr(name.size() - 7) == "--ol-s3") return false;
  // Not formatted like an IPv4 address (four dot-separated decimal groups).
  int groups = 1;
  bool digits_only = true;
  for (char c : name) {
    if (c == '.') ++groups;
    else if (c < '0' || c > '9') digits_only = false;
  }
  if (digits_only && groups == 4) return false;
  return true;
}

bool valid_object_key(std::string_view key) {
  if (key.empty() || key.size() > kKeyBytesMax) return false;
  if (key.find('\0') != std::string_view::npos) return false;
  return valid_utf8(key);
}

// ---------------------------------------------------------------------------------------
// Open

StoreImpl::StoreImpl(const Options& options)
    : opt_(options),
      k_(options.data_shards),
      m_(options.parity_shards),
      n_(options.data_shards + options.parity_shards) {}

StoreImpl::~StoreImpl() {
  {
    std::lock_guard lock(heal_mu_);
    stop_ = true;
    heal_cv_.notify_all();
  }
  if (heal_thread_.joinable()) heal_thread_.join();
  if (started_) {
    std::lock_guard lock(heal_mu_);
    save_heal_state_locked();
  }
}

Status StoreImpl::init() {
  opened_unix_ms_ = now_unix_ms();
  if (opt_.data_dir.empty()) {
    CAIRN_LOG_ERROR(kLog, "data_dir is empty");
    return ObjErrc::invalid_argument;
  }
  if (k_ < 1 || k_ > ErasureCoder::kDataShardsMax || m_ < 0 ||
      m_ > ErasureCoder::kParityShardsMax) {
    CAIRN_LOG_ERROR(kLog, "unsupported erasure code %d+%d", k_, m_);
    return ObjErrc::invalid_argument;
  }
  if (opt_.shard_block_bytes == 0 || opt_.shard_block_bytes > kShardBlockBytesMax) {
    CAIRN_LOG_ERROR(kLog, "shard_block_bytes %u out of range", opt_.shard_block_bytes);
    return ObjErrc::invalid_argument;
  }
  if (!opt_.drives.empty() && static_cast<int>(opt_.drives.size()) != n_) {
    CAIRN_LOG_ERROR(kLog, "%zu drives configured, the code %d+%d needs %d", opt_.drives.size(),
                    k_, m_, n_);
    return ObjErrc::invalid_argument;
  }
  default_coder_ = &coder(static_cast<uint32_t>(k_), static_cast<uint32_t>(m_));
  std::error_code ec;
  std::filesystem::create_directories(opt_.data_dir, ec);
  if (ec) {
    CAIRN_LOG_ERROR(kLog, "cannot create %s: %s", opt_.data_dir.c_str(), ec.message().c_str());
    return ec;
  }
  for (int i = 0; i < n_; ++i) {
    std::string path = opt_.drives.empty() ? opt_.data_dir + "/drive" + std::to_string(i)
                                           : opt_.drives[static_cast<size_t>(i)];
    drives_.push_back(std::make_unique<Drive>(i, path));
  }
  CAIRN_TRY(open_drives_and_index());

  CAIRN_TRY(gen, index_->get(kCatalogGenKey));
  if (gen) catalog_gen_ = strtoull(gen->c_str(), nullptr, 10);
  CAIRN_TRY(heal, index_->get(kHealKey));
  if (heal) hs_.ParseFromString(*heal);
  if (hs_.last_completed_unix_ms() == 0) {
    hs_.set_last_completed_unix_ms(now_unix_ms());  // first scrub one period after creation
    save_heal_state_locked();
  }
  if (hs_.running())
    CAIRN_LOG_INFO(kLog, "resuming heal pass at object %llu of %llu",
                   static_cast<unsigned long long>(hs_.objects_scanned()),
                   static_cast<unsigned long long>(hs_.objects_total()));

  uint64_t keys = 0;
  {
    auto it = index_->iterator();
    for (it->Seek("o/"); it->Valid() && starts_with(as_view(it->key()), "o/"); it->Next()) ++keys;
  }
  CAIRN_LOG_INFO(kLog, "opened store %s at %s: code %d+%d, drives online %d/%d, objects %llu",
                 store_id_.c_str(), opt_.data_dir.c_str(), k_, m_, drives_online(), n_,
                 static_cast<unsigned long long>(keys));
  started_ = true;
  heal_busy_ = true;  // the start-up sweep (heal_main clears it)
  heal_thread_ = std::thread([this] { heal_main(); });
  return ok();
}

Status StoreImpl::open_drives_and_index() {
  const std::string index_path = opt_.data_dir + "/index";
  std::error_code ec;
  const bool index_exists = std::filesystem::exists(index_path, ec);
  if (index_exists) {
    CAIRN_TRY(idx, Index::open(index_path));
    index_ = std::move(idx);
    CAIRN_TRY(fmt_bytes, index_->get(kFormatKey));
    cairn::v1::ObjectDriveFormat fmt;
    if (!fmt_bytes || !fmt.ParseFromString(*fmt_bytes) || fmt.store_id().empty()) {
      CAIRN_LOG_ERROR(kLog, "index %s has no store format record", index_path.c_str());
      index_.reset();
      return Errc::corrupt;
    }
    if (fmt.drive_count() != static_cast<uint32_t>(n_)) {
      CAIRN_LOG_ERROR(kLog, "store was created with %u drives, configured %d", fmt.drive_count(),
                      n_);
      index_.reset();
      return ObjErrc::invalid_argument;
    }
    store_id_ = fmt.store_id();
  } else {
    // The store id is the one most drives carry; none: a new store.
    std::map<std::string, int> votes;
    for (auto& d : drives_) {
      Result<cairn::v1::ObjectDriveFormat> f = read_drive_format(d->path());
      if (f) ++votes[f.value().store_id()];
    }
    if (votes.empty()) {
      store_id_ = random_hex(16);
      if (opt_.drives.empty()) {
        for (auto& d : drives_) (void)make_dir(d->path());
      }
    } else {
      store_id_ = std::max_element(votes.begin(), votes.end(), [](auto& a, auto& b) {
                    return a.second < b.second;
                  })->first;
    }
  }
  bool formatted_any = false;
  for (auto& d : drives_) {
    bool formatted = false;
    d->check(store_id_, static_cast<uint32_t>(n_), &formatted);
    formatted_any = formatted_any || formatted;
  }
  // Drives replaced while the store was down are rebuilt by a pass right after open.
  if (formatted_any && index_exists) pass_requested_ = true;
  if (drives_online() < write_quorum()) {
    CAIRN_LOG_ERROR(kLog, "only %d of %d drives usable, need %d", drives_online(), n_,
                    write_quorum());
    index_.reset();
    return ObjErrc::quorum_lost;
  }
  if (index_exists) return ok();

  // Build the index aside and rename it into place, so a crash mid-rebuild rebuilds again.
  const std::string tmp_path = opt_.data_dir + "/index.rebuild";
  std::filesystem::remove_all(tmp_path, ec);
  {
    CAIRN_TRY(idx, Index::open(tmp_path));
    index_ = std::move(idx);
    Status st = rebuild_index(tmp_path);
    index_.reset();
    if (!st) return st;
  }
  if (::rename(tmp_path.c_str(), index_path.c_str()) != 0) return errno_code(errno);
  CAIRN_TRY(fsync_dir(opt_.data_dir));
  CAIRN_TRY(idx, Index::open(index_path));
  index_ = std::move(idx);
  return ok();
}

Status StoreImpl::rebuild_index(const std::string& path) {
  // Catalog: the mirror with the highest generation.
  cairn::v1::ObjectCatalog catalog;
  for (auto& d : drives_) {
    if (!d->online()) continue;
    Result<std::string> bytes = read_small_file(d->catalog_path(), 256u << 20);
    cairn::v1::ObjectCatalog c;
    if (bytes && c.ParseFromString(bytes.value()) && c.generation() >= catalog.generation())
      catalog = std::move(c);
  }

  struct Found {
    ObjectRecord rec;
    std::set<uint32_t> shards;
  };
  std::map<std::string, Found> by_id;
  uint64_t files = 0, unreadable = 0;
  for (auto& d : drives_) {
    if (!d->online()) continue;
    for (int sub = 0; sub < kObjectSubdirs; ++sub) {
      char name[4];
      snprintf(name, sizeof name, "%02x", sub);
      std::string dir = d->path() + "/objects/" + name;
      DIR* dh = ::opendir(dir.c_str());
      if (dh == nullptr) continue;
      while (dirent* e = ::readdir(dh)) {
        if (!is_object_id(e->d_name)) continue;
        ++files;
        ShardFileReader r;
        Result<ObjectRecord> rec = r.open(dir + "/" + e->d_name)
                                       ? r.read_record()
                                       : Result<ObjectRecord>(Errc::io_error);
        if (!rec || rec.value().id() != e->d_name || rec.value().data_shards() < 1 ||
            rec.value().data_shards() + rec.value().parity_shards() !=
                static_cast<uint32_t>(n_) ||
            rec.value().parity_shards() > ErasureCoder::kParityShardsMax ||
            rec.value().shard_block_bytes() == 0 ||
            rec.value().shard_block_bytes() > kShardBlockBytesMax) {
          ++unreadable;
          continue;
        }
        StripeLayout l = StripeLayout::of(rec.value());
        if (l.drive_of(static_cast<int>(rec.value().shard_index())) != d->position()) {
          ++unreadable;
          continue;
        }
        const uint32_t shard = rec.value().shard_index();
        Found& f = by_id[e->d_name];
        if (f.shards.empty()) {
          f.rec = std::move(rec.value());
          f.rec.set_shard_index(0);
        }
        f.shards.insert(shard);
      }
      ::closedir(dh);
    }
  }

  // A version counts when enough shards exist to read it.
  std::map<std::pair<std::string, std::string>, const ObjectRecord*> objects;
  std::map<std::string, const ObjectRecord*> uploads;
  std::map<std::pair<std::string, uint32_t>, const ObjectRecord*> parts;
  auto newer = [](const ObjectRecord* a, const ObjectRecord* b) {
    return a->mtime_unix_ms() != b->mtime_unix_ms() ? a->mtime_unix_ms() > b->mtime_unix_ms()
                                                    : a->id() > b->id();
  };
  for (auto& [id, f] : by_id) {
    if (f.shards.size() < f.rec.data_shards()) continue;
    const ObjectRecord* r = &f.rec;
    switch (r->kind()) {
      case ObjectRecord::OBJECT:
      case ObjectRecord::MULTIPART: {
        auto& slot = objects[{r->bucket(), r->key()}];
        if (slot == nullptr || newer(r, slot)) slot = r;
        break;
      }
      case ObjectRecord::UPLOAD: uploads[r->id()] = r; break;
      default: break;
    }
  }
  for (auto& [id, f] : by_id) {
    const ObjectRecord* r = &f.rec;
    if (r->kind() != ObjectRecord::PART || f.shards.size() < r->data_shards()) continue;
    if (uploads.count(r->upload_id()) == 0) continue;
    auto& slot = parts[{r->upload_id(), r->part_number()}];
    if (slot == nullptr || newer(r, slot)) slot = r;
  }

  rocksdb::WriteBatch batch;
  auto flush = [&](bool force) -> Status {
    if (!force && static_cast<size_t>(batch.Count()) < kRebuildBatchEntries) return ok();
    CAIRN_TRY(index_->write(batch, force));
    batch.Clear();
    return ok();
  };
  std::set<std::string> buckets;
  for (const auto& b : catalog.buckets()) {
    batch.Put(bucket_key(b.name()), b.SerializeAsString());
    buckets.insert(b.name());
  }
  for (const auto& t : catalog.tenants()) batch.Put(tenant_key(t.name()), t.SerializeAsString());
  for (const auto& k : catalog.access_keys())
    batch.Put(access_key_key(k.access_key_id()), k.SerializeAsString());
  for (auto& [bk, r] : objects) {
    if (buckets.insert(r->bucket()).second) {
      CAIRN_LOG_WARN(kLog, "rebuild: bucket %s missing from the catalog; recreated for root",
                     r->bucket().c_str());
      cairn::v1::BucketRecord b;
      b.set_name(r->bucket());
      b.set_owner("root");
      b.set_created_unix_s(r->mtime_unix_ms() / 1000);
      batch.Put(bucket_key(b.name()), b.SerializeAsString());
    }
    std::string okey = object_key(r->bucket(), r->key());
    batch.Put(okey, r->SerializeAsString());
    batch.Put(id_key(r->id()), okey);
    for (const auto& p : r->parts()) batch.Put(id_key(p.id()), okey);
    CAIRN_TRY(flush(false));
  }
  for (auto& [id, r] : uploads) {
    if (buckets.count(r->bucket()) == 0) continue;
    std::string ukey = upload_key(r->bucket(), r->key(), r->id());
    batch.Put(ukey, r->SerializeAsString());
    batch.Put(id_key(r->id()), ukey);
    CAIRN_TRY(flush(false));
  }
  for (auto& [pk, r] : parts) {
    std::string pkey = part_key(r->upload_id(), r->part_number());
    batch.Put(pkey, r->SerializeAsString());
    batch.Put(id_key(r->id()), pkey);
    CAIRN_TRY(flush(false));
  }
  cairn::v1::ObjectDriveFormat fmt;
  fmt.set_version(kDriveFormatVersion);
  fmt.set_store_id(store_id_);
  fmt.set_drive_count(static_cast<uint32_t>(n_));
  fmt.set_created_unix_ms(now_unix_ms());
  batch.Put(kFormatKey, fmt.SerializeAsString());
  batch.Put(kCatalogGenKey, std::to_string(catalog.generation()));
  CAIRN_TRY(flush(true));
  if (files > 0 || catalog.generation() > 0)
    CAIRN_LOG_INFO(kLog,
                   "rebuilt index %s from the drives: %zu objects, %zu uploads, %zu parts, "
                   "%d buckets, %d tenants, %d keys (%llu shard files, %llu unreadable)",
                   path.c_str(), objects.size(), uploads.size(), parts.size(),
                   static_cast<int>(buckets.size()), catalog.tenants_size(),
                   catalog.access_keys_size(), static_cast<unsigned long long>(files),
                   static_cast<unsigned long long>(unreadable));
  return ok();
}

void StoreImpl::check_drives() {
  bool formatted_any = false;
  for (auto& d : drives_) {
    bool formatted = false;
    d->check(store_id_, static_cast<uint32_t>(n_), &formatted);
    formatted_any = formatted_any || formatted;
  }
  if (formatted_any) {
    CAIRN_LOG_INFO(kLog, "replacement drive formatted: a heal pass will rebuild it");
    std::lock_guard lock(heal_mu_);
    // A pass that has not scanned anything yet covers the new drive already.
    if (!hs_.running() || !hs_.cursor().empty()) pass_requested_ = true;
    heal_cv_.notify_all();
  }
}

void StoreImpl::drive_error(int d) {
  bool formatted = false;
  drive(d).check(store_id_, static_cast<uint32_t>(n_), &formatted);
  if (formatted) {
    std::lock_guard lock(heal_mu_);
    pass_requested_ = true;
    heal_cv_.notify_all();
  }
}

int StoreImpl::drives_online() {
  int n = 0;
  for (auto& d : drives_) n += d->online() ? 1 : 0;
  return n;
}

const ErasureCoder& StoreImpl::coder(uint32_t k, uint32_t m) {
  if (default_coder_ != nullptr && k == static_cast<uint32_t>(k_) && m == static_cast<uint32_t>(m_))
    return *default_coder_;
  std::lock_guard lock(coders_mu_);
  auto& slot = coders_[{k, m}];
  if (slot == nullptr) {
    Result<std::unique_ptr<ErasureCoder>> c =
        ErasureCoder::create(static_cast<int>(k), static_cast<int>(m));
    CAIRN_ASSERT(c.has_value());
    slot = std::move(c.value());
  }
  return *slot;
}

void StoreImpl::init_version(ObjectRecord& rec) {
  rec.set_id(random_hex(16));
  rec.set_data_shards(static_cast<uint32_t>(k_));
  rec.set_parity_shards(static_cast<uint32_t>(m_));
  rec.set_shard_block_bytes(opt_.shard_block_bytes);
  rec.set_rotation(static_cast<uint32_t>(strtoul(rec.id().substr(0, 8).c_str(), nullptr, 16) %
                                         static_cast<uint32_t>(n_)));
}

void StoreImpl::set_active(const std::string& id, bool active) {
  std::lock_guard lock(active_mu_);
  if (active) {
    active_ids_.insert(id);
  } else {
    auto it = active_ids_.find(id);
    if (it != active_ids_.end()) active_ids_.erase(it);
  }
}

std::mutex& StoreImpl::key_lock(const std::string& bucket, const std::string& key) {
  size_t h = std::hash<std::string>()(bucket) * 31 + std::hash<std::string>()(key);
  return key_mu_[h % kKeyLockStripes];
}

Result<std::optional<ObjectRecord>> StoreImpl::get_record(const std::string& index_key) {
  CAIRN_TRY(v, index_->get(index_key));
  if (!v) return std::optional<ObjectRecord>();
  ObjectRecord rec;
  if (!rec.ParseFromString(*v)) {
    CAIRN_LOG_ERROR(kLog, "index record unparsable");
    return Errc::corrupt;
  }
  return std::optional<ObjectRecord>(std::move(rec));
}

Status StoreImpl::bucket_exists(const std::string& bucket) {
  if (!valid_bucket_name(bucket)) return ObjErrc::no_such_bucket;
  CAIRN_TRY(v, index_->get(bucket_key(bucket)));
  if (!v) return ObjErrc::no_such_bucket;
  return ok();
}

void StoreImpl::remove_version_files(const ObjectRecord& rec) {
  if (!is_object_id(rec.id())) return;
  for (auto& d : drives_) {
    if (!d->online()) continue;  // left as an orphan; a heal pass removes it later
    ::unlink(d->object_path(rec.id()).c_str());
    for (const auto& p : rec.parts()) ::unlink(d->object_path(p.id()).c_str());
  }
}

std::vector<ObjectRecord> StoreImpl::records_for_test() {
  std::vector<ObjectRecord> out;
  auto it = index_->iterator();
  for (const char* prefix : {"o/", "p/", "u/"}) {
    for (it->Seek(prefix); it->Valid() && starts_with(as_view(it->key()), prefix); it->Next()) {
      ObjectRecord r;
      CAIRN_ASSERT(r.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())));
      out.push_back(std::move(r));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Catalog: tenants, keys, buckets

Status StoreImpl::save_catalog_locked() {
  cairn::v1::ObjectCatalog cat;
  catalog_gen_ = std::max<uint64_t>(catalog_gen_ + 1, static_cast<uint64_t>(now_unix_ms()));
  cat.set_generation(catalog_gen_);
  auto it = index_->iterator();
  for (it->Seek("b/"); it->Valid() && starts_with(as_view(it->key()), "b/"); it->Next())
    cat.add_buckets()->ParseFromArray(it->value().data(), static_cast<int>(it->value().size()));
  for (it->Seek("k/"); it->Valid() && starts_with(as_view(it->key()), "k/"); it->Next())
    cat.add_access_keys()->ParseFromArray(it->value().data(),
                                          static_cast<int>(it->value().size()));
  for (it->Seek("t/"); it->Valid() && starts_with(as_view(it->key()), "t/"); it->Next())
    cat.add_tenants()->ParseFromArray(it->value().data(), static_cast<int>(it->value().size()));
  CAIRN_TRY(index_->put(kCatalogGenKey, std::to_string(catalog_gen_), false));
  write_catalog_to_drives(cat.SerializeAsString());
  return ok();
}

void StoreImpl::write_catalog_to_drives(const std::string& bytes) {
  for (auto& d : drives_) {
    if (!d->online()) continue;
    Status st = write_file_durable(d->catalog_path(), d->catalog_path() + ".tmp", bytes);
    if (!st) {
      CAIRN_LOG_WARN(kLog, "catalog write to drive %d failed: %s", d->position(),
                     st.error().message().c_str());
      drive_error(d->position());
    }
  }
}

Result<AccessKey> StoreImpl::ensure_root_key(const std::string& access_key_id,
                                             const std::string& secret_key) {
  auto printable = [](const std::string& s) {
    return std::all_of(s.begin(), s.end(), [](char c) { return c > ' ' && c < 127; });
  };
  if (access_key_id.size() > 128 || secret_key.size() > 128 || !printable(access_key_id) ||
      !printable(secret_key) || (!secret_key.empty() && secret_key.size() < 8))
    return ObjErrc::invalid_argument;
  std::lock_guard lock(catalog_mu_);
  std::vector<cairn::v1::AccessKeyRecord> roots;
  {
    auto it = index_->iterator();
    for (it->Seek("k/"); it->Valid() && starts_with(as_view(it->key()), "k/"); it->Next()) {
      cairn::v1::AccessKeyRecord r;
      if (r.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())) && r.root())
        roots.push_back(r);
    }
  }
  if (roots.size() == 1 && (access_key_id.empty() || access_key_id == roots[0].access_key_id()) &&
      (secret_key.empty() || secret_key == roots[0].secret_key()))
    return to_access_key(roots[0]);

  rocksdb::WriteBatch batch;
  CAIRN_TRY(tenant, index_->get(tenant_key("root")));
  if (!tenant) {
    cairn::v1::TenantRecord t;
    t.set_name("root");
    t.set_created_unix_ms(now_unix_ms());
    batch.Put(tenant_key("root"), t.SerializeAsString());
  }
  if (!access_key_id.empty()) {
    CAIRN_TRY(existing, index_->get(access_key_key(access_key_id)));
    cairn::v1::AccessKeyRecord r;
    if (existing && r.ParseFromString(*existing) && !r.root()) {
      CAIRN_LOG_ERROR(kLog, "root access key id %s belongs to tenant %s", access_key_id.c_str(),
                      r.tenant().c_str());
      return ObjErrc::invalid_argument;
    }
  }
  for (const auto& r : roots) batch.Delete(access_key_key(r.access_key_id()));
  cairn::v1::AccessKeyRecord root;
  root.set_access_key_id(access_key_id.empty() ? "AK" + random_alnum(18, true) : access_key_id);
  root.set_secret_key(secret_key.empty() ? random_alnum(40, false) : secret_key);
  root.set_tenant("root");
  root.set_root(true);
  root.set_created_unix_ms(now_unix_ms());
  batch.Put(access_key_key(root.access_key_id()), root.SerializeAsString());
  CAIRN_TRY(index_->write(batch, true));
  CAIRN_TRY(save_catalog_locked());
  CAIRN_LOG_INFO(kLog, "root access key %s %s", root.access_key_id().c_str(),
                 roots.empty() ? "created" : "replaced");
  return to_access_key(root);
}

Status StoreImpl::create_tenant(const std::string& tenant) {
  if (!valid_name_token(tenant, 64)) return ObjErrc::invalid_argument;
  std::lock_guard lock(catalog_mu_);
  CAIRN_TRY(v, index_->get(tenant_key(tenant)));
  if (v) return Errc::already_exists;
  cairn::v1::TenantRecord t;
  t.set_name(tenant);
  t.set_created_unix_ms(now_unix_ms());
  CAIRN_TRY(index_->put(tenant_key(tenant), t.SerializeAsString(), true));
  CAIRN_LOG_INFO(kLog, "created tenant %s", tenant.c_str());
  return save_catalog_locked();
}

Result<AccessKey> StoreImpl::create_access_key(const std::string& tenant) {
  std::lock_guard lock(catalog_mu_);
  if (!valid_name_token(tenant, 64)) return ObjErrc::invalid_argument;
  CAIRN_TRY(v, index_->get(tenant_key(tenant)));
  if (!v) return Errc::not_found;
  cairn::v1::AccessKeyRecord r;
  for (;;) {
    r.set_access_key_id("AK" + random_alnum(18, true));
    CAIRN_TRY(clash, index_->get(access_key_key(r.access_key_id())));
    if (!clash) break;
  }
  r.set_secret_key(random_alnum(40, false));
  r.set_tenant(tenant);
  r.set_created_unix_ms(now_unix_ms());
  CAIRN_TRY(index_->put(access_key_key(r.access_key_id()), r.SerializeAsString(), true));
  CAIRN_TRY(save_catalog_locked());
  CAIRN_LOG_INFO(kLog, "created access key %s for tenant %s", r.access_key_id().c_str(),
                 tenant.c_str());
  return to_access_key(r);
}

Result<AccessKey> StoreImpl::lookup_access_key(const std::string& access_key_id) {
  if (access_key_id.empty()) return ObjErrc::invalid_access_key_id;
  CAIRN_TRY(v, index_->get(access_key_key(access_key_id)));
  cairn::v1::AccessKeyRecord r;
  if (!v || !r.ParseFromString(*v)) return ObjErrc::invalid_access_key_id;
  return to_access_key(r);
}

std::vector<std::string> StoreImpl::list_tenants() {
  std::vector<std::string> out;
  auto it = index_->iterator();
  for (it->Seek("t/"); it->Valid() && starts_with(as_view(it->key()), "t/"); it->Next())
    out.emplace_back(as_view(it->key()).substr(2));
  return out;
}

Status StoreImpl::create_bucket(const std::string& tenant, const std::string& bucket) {
  if (!valid_bucket_name(bucket)) return ObjErrc::invalid_bucket_name;
  if (tenant.empty()) return ObjErrc::invalid_argument;
  std::unique_lock bl(bucket_mu_);
  std::lock_guard lock(catalog_mu_);
  CAIRN_TRY(v, index_->get(bucket_key(bucket)));
  if (v) {
    cairn::v1::BucketRecord r;
    r.ParseFromString(*v);
    return r.owner() == tenant ? ObjErrc::bucket_already_owned_by_you
                               : ObjErrc::bucket_already_exists;
  }
  cairn::v1::BucketRecord r;
  r.set_name(bucket);
  r.set_owner(tenant);
  r.set_created_unix_s(now_unix_ms() / 1000);
  CAIRN_TRY(index_->put(bucket_key(bucket), r.SerializeAsString(), true));
  CAIRN_LOG_INFO(kLog, "created bucket %s for tenant %s", bucket.c_str(), tenant.c_str());
  return save_catalog_locked();
}

Status StoreImpl::delete_bucket(const std::string& bucket) {
  std::unique_lock bl(bucket_mu_);
  CAIRN_TRY(bucket_exists(bucket));
  {
    auto it = index_->iterator();
    std::string prefix = object_prefix(bucket);
    it->Seek(prefix);
    if (it->Valid() && starts_with(as_view(it->key()), prefix)) return ObjErrc::bucket_not_empty;
  }
  // In-progress uploads go with the bucket.
  std::vector<ObjectRecord> uploads;
  {
    auto it = index_->iterator();
    std::string prefix = upload_prefix(bucket);
    for (it->Seek(prefix); it->Valid() && starts_with(as_view(it->key()), prefix); it->Next()) {
      ObjectRecord r;
      if (r.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())))
        uploads.push_back(std::move(r));
    }
  }
  for (const auto& u : uploads) {
    CAIRN_TRY(abort_upload_locked(u));
  }
  std::lock_guard lock(catalog_mu_);
  rocksdb::WriteBatch batch;
  batch.Delete(bucket_key(bucket));
  CAIRN_TRY(index_->write(batch, true));
  CAIRN_LOG_INFO(kLog, "deleted bucket %s", bucket.c_str());
  return save_catalog_locked();
}

Result<BucketInfo> StoreImpl::get_bucket(const std::string& bucket) {
  if (!valid_bucket_name(bucket)) return ObjErrc::no_such_bucket;
  CAIRN_TRY(v, index_->get(bucket_key(bucket)));
  cairn::v1::BucketRecord r;
  if (!v || !r.ParseFromString(*v)) return ObjErrc::no_such_bucket;
  return to_bucket_info(r);
}

std::vector<BucketInfo> StoreImpl::list_buckets(const std::string& tenant) {
  std::vector<BucketInfo> out;
  auto it = index_->iterator();
  for (it->Seek("b/"); it->Valid() && starts_with(as_view(it->key()), "b/"); it->Next()) {
    cairn::v1::BucketRecord r;
    if (!r.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) continue;
    if (tenant.empty() || r.owner() == tenant) out.push_back(to_bucket_info(r));
  }
  return out;
}

Status StoreImpl::set_bucket_public(const std::string& bucket, bool public_read) {
  std::unique_lock bl(bucket_mu_);
  std::lock_guard lock(catalog_mu_);
  if (!valid_bucket_name(bucket)) return ObjErrc::no_such_bucket;
  CAIRN_TRY(v, index_->get(bucket_key(bucket)));
  cairn::v1::BucketRecord r;
  if (!v || !r.ParseFromString(*v)) return ObjErrc::no_such_bucket;
  if (r.public_read() == public_read) return ok();
  r.set_public_read(public_read);
  CAIRN_TRY(index_->put(bucket_key(bucket), r.SerializeAsString(), true));
  return save_catalog_locked();
}

// ---------------------------------------------------------------------------------------
// Objects

Result<std::unique_ptr<ObjectWriter>> StoreImpl::put_object(const std::string& bucket,
                                                            const std::string& key) {
  if (!valid_object_key(key)) return ObjErrc::invalid_object_name;
  CAIRN_TRY(bucket_exists(bucket));
  if (drives_online() < write_quorum()) return ObjErrc::quorum_lost;
  ObjectRecord rec;
  rec.set_kind(ObjectRecord::OBJECT);
  rec.set_bucket(bucket);
  rec.set_key(key);
  auto w = std::make_unique<WriterImpl>(*this, std::move(rec));
  CAIRN_TRY(w->start());
  return std::unique_ptr<ObjectWriter>(std::move(w));
}

Status StoreImpl::commit_version(const ObjectRecord& rec) {
  std::shared_lock bl(bucket_mu_);
  CAIRN_TRY(bucket_exists(rec.bucket()));
  std::optional<ObjectRecord> old;
  {
    std::lock_guard kl(key_lock(rec.bucket(), rec.key()));
    rocksdb::WriteBatch batch;
    std::string ikey;
    if (rec.kind() == ObjectRecord::PART) {
      CAIRN_TRY(upload, index_->get(upload_key(rec.bucket(), rec.key(), rec.upload_id())));
      if (!upload) return ObjErrc::no_such_upload;
      ikey = part_key(rec.upload_id(), rec.part_number());
    } else {
      CAIRN_ASSERT(rec.kind() == ObjectRecord::OBJECT);
      ikey = object_key(rec.bucket(), rec.key());
    }
    CAIRN_TRY(prev, get_record(ikey));
    old = std::move(prev);
    batch.Put(ikey, rec.SerializeAsString());
    batch.Put(id_key(rec.id()), ikey);
    if (old) delete_id_keys(batch, *old);
    CAIRN_TRY(index_->write(batch, true));
  }
  if (int f = CAIRN_FAULT_POINT("objectd.put.after_index")) return errno_code(f);
  if (old) remove_version_files(*old);
  return ok();
}

Result<std::unique_ptr<ObjectReader>> StoreImpl::get_object(const std::string& bucket,
                                                            const std::string& key,
                                                            uint64_t offset, uint64_t length) {
  if (!valid_object_key(key)) return ObjErrc::invalid_object_name;
  CAIRN_TRY(bucket_exists(bucket));
  CAIRN_TRY(rec, get_record(object_key(bucket, key)));
  if (!rec) return ObjErrc::no_such_key;
  const uint64_t size = rec->size_bytes();
  if (rec->kind() == ObjectRecord::MULTIPART) {
    uint64_t sum = 0;
    for (const auto& p : rec->parts()) sum += p.size_bytes();
    if (sum != size) {
      CAIRN_LOG_ERROR(kLog, "%s/%s: parts add up to %llu bytes, record says %llu",
                      bucket.c_str(), key.c_str(), static_cast<unsigned long long>(sum),
                      static_cast<unsigned long long>(size));
      return ObjErrc::data_corrupt;
    }
  }
  if (size == 0) {
    offset = 0;
    length = 0;
  } else if (offset >= size) {
    return ObjErrc::invalid_range;
  }
  length = std::min(length, size - offset);
  return std::unique_ptr<ObjectReader>(new ReaderImpl(*this, *rec, offset, length));
}

Result<ObjectMeta> StoreImpl::head_object(const std::string& bucket, const std::string& key) {
  if (!valid_object_key(key)) return ObjErrc::invalid_object_name;
  CAIRN_TRY(bucket_exists(bucket));
  CAIRN_TRY(rec, get_record(object_key(bucket, key)));
  if (!rec) return ObjErrc::no_such_key;
  return to_meta(*rec);
}

Status StoreImpl::delete_object(const std::string& bucket, const std::string& key) {
  if (!valid_object_key(key)) return ObjErrc::invalid_object_name;
  std::shared_lock bl(bucket_mu_);
  CAIRN_TRY(bucket_exists(bucket));
  std::optional<ObjectRecord> old;
  {
    std::lock_guard kl(key_lock(bucket, key));
    std::string okey = object_key(bucket, key);
    CAIRN_TRY(prev, get_record(okey));
    if (!prev) return ok();
    old = std::move(prev);
    rocksdb::WriteBatch batch;
    batch.Delete(okey);
    delete_id_keys(batch, *old);
    CAIRN_TRY(index_->write(batch, true));
  }
  remove_version_files(*old);
  return ok();
}

Result<ListResult> StoreImpl::list_objects(const std::string& bucket, const ListRequest& req) {
  CAIRN_TRY(bucket_exists(bucket));
  ListResult res;
  const std::string base = object_prefix(bucket);
  const std::string scope = base + req.prefix;  // every listed key starts with this
  const uint32_t max_keys = std::min<uint32_t>(req.max_keys, 1000);
  std::string seek = scope;
  if (!req.start_after.empty()) {
    std::string after = base + req.start_after;
    after.push_back('\0');  // the smallest key greater than start_after
    seek = std::max(seek, after);
  }
  auto it = index_->iterator();
  uint32_t count = 0;
  std::string last;
  it->Seek(seek);
  while (it->Valid()) {
    std::string_view ikey = as_view(it->key());
    if (!starts_with(ikey, scope)) break;
    std::string_view key = ikey.substr(base.size());
    if (!req.delimiter.empty()) {
      size_t pos = key.find(req.delimiter, req.prefix.size());
      if (pos != std::string_view::npos) {
        std::string cp(key.substr(0, pos + req.delimiter.size()));
        // Every key under a common prefix folds into it: emit it once, then seek past them all.
        std::string next = prefix_successor(cp);
        bool skip = !req.start_after.empty() && cp <= req.start_after;
        if (!skip) {
          if (count == max_keys) {
            res.is_truncated = true;
            break;
          }
          res.common_prefixes.push_back(cp);
          last = cp;
          ++count;
        }
        if (next.empty()) break;
        it->Seek(base + next);
        continue;
      }
    }
    if (count == max_keys) {
      res.is_truncated = true;
      break;
    }
    ObjectRecord rec;
    if (!rec.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      CAIRN_LOG_ERROR(kLog, "unparsable index record in bucket %s", bucket.c_str());
      return Errc::corrupt;
    }
    res.objects.push_back(to_meta(rec));
    last.assign(key);
    ++count;
    it->Next();
  }
  if (!it->status().ok()) {
    CAIRN_LOG_ERROR(kLog, "list of %s failed: %s", bucket.c_str(),
                    it->status().ToString().c_str());
    return Errc::io_error;
  }
  if (res.is_truncated) res.next_marker = last;
  return res;
}

// ---------------------------------------------------------------------------------------
// Multipart

Result<ObjectRecord> StoreImpl::get_upload(const std::string& bucket, const std::string& key,
                                           const std::string& upload_id) {
  if (!is_object_id(upload_id)) return ObjErrc::no_such_upload;
  CAIRN_TRY(rec, get_record(upload_key(bucket, key, upload_id)));
  if (!rec) return ObjErrc::no_such_upload;
  return std::move(*rec);
}

Status StoreImpl::write_manifest(const ObjectRecord& rec) {
  // Header-only shard files: they carry the record to the drives (index rebuild, heal).
  StripeLayout layout = StripeLayout::of(rec);
  ShardSet set(*this, layout, rec.id(), std::vector<bool>(layout.shards(), true), false);
  CAIRN_TRY(set.open(write_quorum()));
  CAIRN_TRY(set.commit(rec, write_quorum()));
  return ok();
}

Result<std::string> StoreImpl::create_multipart(const std::string& bucket,
                                                const std::string& key, const ObjectMeta& meta) {
  if (!valid_object_key(key)) return ObjErrc::invalid_object_name;
  CAIRN_TRY(bucket_exists(bucket));
  if (drives_online() < write_quorum()) return ObjErrc::quorum_lost;
  ObjectRecord rec;
  rec.set_kind(ObjectRecord::UPLOAD);
  rec.set_bucket(bucket);
  rec.set_key(key);
  init_version(rec);
  rec.set_mtime_unix_ms(now_unix_ms());
  rec.set_content_type(meta.content_type);
  rec.mutable_user_metadata()->insert(meta.user_metadata.begin(), meta.user_metadata.end());
  rec.mutable_checksums()->insert(meta.checksums.begin(), meta.checksums.end());
  rec.mutable_headers()->insert(meta.headers.begin(), meta.headers.end());
  set_active(rec.id(), true);
  Status st = write_manifest(rec);
  if (st) {
    std::shared_lock bl(bucket_mu_);
    st = bucket_exists(bucket);
    if (st) {
      rocksdb::WriteBatch batch;
      std::string ukey = upload_key(bucket, key, rec.id());
      batch.Put(ukey, rec.SerializeAsString());
      batch.Put(id_key(rec.id()), ukey);
      st = index_->write(batch, true);
    }
    if (!st) remove_version_files(rec);
  }
  set_active(rec.id(), false);
  if (!st) return st.error();
  return rec.id();
}

Result<std::unique_ptr<ObjectWriter>> StoreImpl::upload_part(const std::string& bucket,
                                                             const std::string& key,
                                                             const std::string& upload_id,
                                                             uint32_t part_number) {
  if (!valid_object_key(key)) return ObjErrc::invalid_object_name;
  if (part_number < 1 || part_number > kPartNumberMax) return ObjErrc::invalid_argument;
  CAIRN_TRY(bucket_exists(bucket));
  CAIRN_TRY(get_upload(bucket, key, upload_id));
  if (drives_online() < write_quorum()) return ObjErrc::quorum_lost;
  ObjectRecord rec;
  rec.set_kind(ObjectRecord::PART);
  rec.set_bucket(bucket);
  rec.set_key(key);
  rec.set_upload_id(upload_id);
  rec.set_part_number(part_number);
  auto w = std::make_unique<WriterImpl>(*this, std::move(rec));
  CAIRN_TRY(w->start());
  return std::unique_ptr<ObjectWriter>(std::move(w));
}

Result<ObjectMeta> StoreImpl::complete_multipart(const std::string& bucket,
                                                 const std::string& key,
                                                 const std::string& upload_id,
                                                 const std::vector<PartInfo>& parts) {
  if (!valid_object_key(key)) return ObjErrc::invalid_object_name;
  std::shared_lock bl(bucket_mu_);
  CAIRN_TRY(bucket_exists(bucket));
  std::lock_guard kl(key_lock(bucket, key));
  CAIRN_TRY(upload, get_upload(bucket, key, upload_id));
  if (parts.empty()) return ObjErrc::malformed_xml;
  for (size_t i = 1; i < parts.size(); ++i)
    if (parts[i].part_number <= parts[i - 1].part_number) return ObjErrc::invalid_part_order;

  std::map<uint32_t, ObjectRecord> stored;
  {
    auto it = index_->iterator();
    std::string prefix = part_prefix(upload_id);
    for (it->Seek(prefix); it->Valid() && starts_with(as_view(it->key()), prefix); it->Next()) {
      ObjectRecord r;
      if (!r.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())))
        return Errc::corrupt;
      uint32_t number = r.part_number();
      stored.emplace(number, std::move(r));
    }
  }
  ObjectRecord final_rec;
  final_rec.set_kind(ObjectRecord::MULTIPART);
  final_rec.set_bucket(bucket);
  final_rec.set_key(key);
  init_version(final_rec);
  std::string md5s, raw;
  uint64_t size = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    auto found = stored.find(parts[i].part_number);
    if (found == stored.end() || normalize_etag(parts[i].etag) != found->second.etag())
      return ObjErrc::invalid_part;
    if (i + 1 < parts.size() && found->second.size_bytes() < kPartSizeMinBytes)
      return ObjErrc::entity_too_small;
    if (!hex_to_bytes(found->second.etag(), &raw)) return Errc::corrupt;
    md5s += raw;
    size += found->second.size_bytes();
    *final_rec.add_parts() = found->second;
  }
  if (size > kObjectSizeMaxBytes) return ObjErrc::entity_too_large;
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  CAIRN_ASSERT(EVP_Digest(md5s.data(), md5s.size(), digest, &digest_len, EVP_md5(), nullptr) ==
               1);
  static const char* hexd = "0123456789abcdef";
  std::string etag;
  for (unsigned int i = 0; i < digest_len; ++i) {
    etag.push_back(hexd[digest[i] >> 4]);
    etag.push_back(hexd[digest[i] & 15]);
  }
  final_rec.set_etag(etag + "-" + std::to_string(parts.size()));
  final_rec.set_size_bytes(size);
  final_rec.set_mtime_unix_ms(now_unix_ms());
  final_rec.set_content_type(upload.content_type());
  *final_rec.mutable_user_metadata() = upload.user_metadata();
  *final_rec.mutable_checksums() = upload.checksums();
  *final_rec.mutable_headers() = upload.headers();

  set_active(final_rec.id(), true);
  Status st = write_manifest(final_rec);
  std::optional<ObjectRecord> old;
  const std::string okey = object_key(bucket, key);
  if (st) {
    rocksdb::WriteBatch batch;
    Result<std::optional<ObjectRecord>> prev = get_record(okey);
    if (!prev) {
      st = prev.error();
    } else {
      old = std::move(prev.value());
      batch.Put(okey, final_rec.SerializeAsString());
      batch.Put(id_key(final_rec.id()), okey);
      if (old) delete_id_keys(batch, *old);
      for (const auto& [number, part] : stored) {
        batch.Delete(part_key(upload_id, number));
        bool used = std::any_of(final_rec.parts().begin(), final_rec.parts().end(),
                                [&](const ObjectRecord& p) { return p.id() == part.id(); });
        if (used)
          batch.Put(id_key(part.id()), okey);
        else
          batch.Delete(id_key(part.id()));
      }
      batch.Delete(upload_key(bucket, key, upload_id));
      batch.Delete(id_key(upload_id));
      if (int f = CAIRN_FAULT_POINT("objectd.complete.before_index"))
        st = errno_code(f);
      else
        st = index_->write(batch, true);
    }
    if (!st) {
      for (auto& d : drives_)
        if (d->online()) ::unlink(d->object_path(final_rec.id()).c_str());
    }
  }
  set_active(final_rec.id(), false);
  if (!st) return st.error();

  // Committed: drop the replaced version, the parts not used and the upload's manifest.
  if (old) remove_version_files(*old);
  for (const auto& [number, part] : stored) {
    bool used = std::any_of(final_rec.parts().begin(), final_rec.parts().end(),
                            [&](const ObjectRecord& p) { return p.id() == part.id(); });
    if (!used) remove_version_files(part);
  }
  remove_version_files(upload);
  return to_meta(final_rec);
}

Status StoreImpl::abort_upload_locked(const ObjectRecord& upload) {
  std::vector<ObjectRecord> parts;
  rocksdb::WriteBatch batch;
  {
    auto it = index_->iterator();
    std::string prefix = part_prefix(upload.id());
    for (it->Seek(prefix); it->Valid() && starts_with(as_view(it->key()), prefix); it->Next()) {
      ObjectRecord r;
      batch.Delete(it->key());
      if (!r.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) continue;
      batch.Delete(id_key(r.id()));
      parts.push_back(std::move(r));
    }
  }
  batch.Delete(upload_key(upload.bucket(), upload.key(), upload.id()));
  batch.Delete(id_key(upload.id()));
  CAIRN_TRY(index_->write(batch, true));
  for (const auto& p : parts) remove_version_files(p);
  remove_version_files(upload);
  return ok();
}

Status StoreImpl::abort_multipart(const std::string& bucket, const std::string& key,
                                  const std::string& upload_id) {
  if (!valid_object_key(key)) return ObjErrc::invalid_object_name;
  std::shared_lock bl(bucket_mu_);
  CAIRN_TRY(bucket_exists(bucket));
  std::lock_guard kl(key_lock(bucket, key));
  CAIRN_TRY(upload, get_upload(bucket, key, upload_id));
  return abort_upload_locked(upload);
}

Result<std::vector<PartInfo>> StoreImpl::list_parts(const std::string& bucket,
                                                    const std::string& key,
                                                    const std::string& upload_id) {
  if (!valid_object_key(key)) return ObjErrc::invalid_object_name;
  CAIRN_TRY(bucket_exists(bucket));
  CAIRN_TRY(get_upload(bucket, key, upload_id));
  std::vector<PartInfo> out;
  auto it = index_->iterator();
  std::string prefix = part_prefix(upload_id);
  for (it->Seek(prefix); it->Valid() && starts_with(as_view(it->key()), prefix); it->Next()) {
    ObjectRecord r;
    if (!r.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())))
      return Errc::corrupt;
    PartInfo p;
    p.part_number = r.part_number();
    p.etag = r.etag();
    p.size_bytes = r.size_bytes();
    p.mtime_unix_ms = r.mtime_unix_ms();
    p.checksums.insert(r.checksums().begin(), r.checksums().end());
    out.push_back(std::move(p));
  }
  return out;
}

Result<std::vector<UploadInfo>> StoreImpl::list_uploads(const std::string& bucket,
                                                        const std::string& prefix) {
  CAIRN_TRY(bucket_exists(bucket));
  std::vector<UploadInfo> out;
  auto it = index_->iterator();
  std::string scope = upload_prefix(bucket) + prefix;
  for (it->Seek(scope); it->Valid() && starts_with(as_view(it->key()), scope); it->Next()) {
    ObjectRecord r;
    if (!r.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())))
      return Errc::corrupt;
    UploadInfo u;
    u.upload_id = r.id();
    u.bucket = r.bucket();
    u.key = r.key();
    u.initiated_unix_ms = r.mtime_unix_ms();
    out.push_back(std::move(u));
  }
  return out;
}

}  // namespace cairn::objectd::engine
