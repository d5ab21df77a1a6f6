// MemObjectStore: an in-memory ObjectStore for the S3 layer's tests. One mutex, whole
// objects in memory; follows object_store.h's contract closely enough for S3 semantics
// (listing with delimiter and start_after, multipart rules, errors), nothing more.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <set>

#include "common/checksums.h"
#include "objectd/object_store.h"

namespace cairn::objectd::testing {

class MemObjectStore : public ObjectStore {
 public:
  struct Obj {
    ObjectMeta meta;
    std::string data;
  };

  Result<AccessKey> ensure_root_key(const std::string& id, const std::string& secret) override {
    std::lock_guard<std::mutex> l(mu_);
    tenants_.insert("root");
    AccessKey k{id.empty() ? "ROOTKEY" : id, secret.empty() ? "rootsecret" : secret, "root", true};
    keys_[k.access_key_id] = k;
    return k;
  }
  Status create_tenant(const std::string& t) override {
    std::lock_guard<std::mutex> l(mu_);
    if (!tenants_.insert(t).second) return Errc::already_exists;
    return ok();
  }
  Result<AccessKey> create_access_key(const std::string& t) override {
    std::lock_guard<std::mutex> l(mu_);
    if (!tenants_.count(t)) return Errc::not_found;
    AccessKey k{"AK" + t + std::to_string(++seq_), "secret-" + t + std::to_string(seq_), t, false};
    keys_[k.access_key_id] = k;
    return k;
  }
  // Test helper: a key with a chosen id and secret.
  void add_key(const AccessKey& k) {
    std::lock_guard<std::mutex> l(mu_);
    tenants_.insert(k.tenant);
    keys_[k.access_key_id] = k;
  }
  Result<AccessKey> lookup_access_key(const std::string& id) override {
    std::lock_guard<std::mutex> l(mu_);
    auto it = keys_.find(id);
    if (it == keys_.end()) return ObjErrc::invalid_access_key_id;
    return it->second;
  }
  std::vector<std::string> list_tenants() override {
    std::lock_guard<std::mutex> l(mu_);
    return {tenants_.begin(), tenants_.end()};
  }

  Status create_bucket(const std::string& t, const std::string& b) override {
    std::lock_guard<std::mutex> l(mu_);
    if (b.size() < 3 || b.size() > 63 || b.find('_') != std::string::npos ||
        std::any_of(b.begin(), b.end(), [](char c) { return c >= 'A' && c <= 'Z'; }))
      return ObjErrc::invalid_bucket_name;
    auto it = buckets_.find(b);
    if (it != buckets_.end())
      return it->second.info.owner == t ? ObjErrc::bucket_already_owned_by_you
                                        : ObjErrc::bucket_already_exists;
    buckets_[b].info = BucketInfo{b, t, now_ms() / 1000, false};
    return ok();
  }
  Status delete_bucket(const std::string& b) override {
    std::lock_guard<std::mutex> l(mu_);
    auto it = buckets_.find(b);
    if (it == buckets_.end()) return ObjErrc::no_such_bucket;
    if (!it->second.objects.empty()) return ObjErrc::bucket_not_empty;
    buckets_.erase(it);
    return ok();
  }
  Result<BucketInfo> get_bucket(const std::string& b) override {
    std::lock_guard<std::mutex> l(mu_);
    auto it = buckets_.find(b);
    if (it == buckets_.end()) return ObjErrc::no_such_bucket;
    return it->second.info;
  }
  std::vector<BucketInfo> list_buckets(const std::string& t) override {
    std::lock_guard<std::mutex> l(mu_);
    std::vector<BucketInfo> out;
    for (auto& [n, b] : buckets_)
      if (b.info.owner == t) out.push_back(b.info);
    return out;
  }
  Status set_bucket_public(const std::string& b, bool p) override {
    std::lock_guard<std::mutex> l(mu_);
    auto it = buckets_.find(b);
    if (it == buckets_.end()) return ObjErrc::no_such_bucket;
    it->second.info.public_read = p;
    return ok();
  }

  class Writer : public ObjectWriter {
   public:
    Writer(MemObjectStore& s, std::function<Result<ObjectMeta>(ObjectMeta, std::string)> done)
        : s_(s), done_(std::move(done)) {}
    Status write(const void* d, size_t n) override {
      data_.append(static_cast<const char*>(d), n);
      return ok();
    }
    Result<ObjectMeta> commit(ObjectMeta meta) override {
      if (meta.size_bytes != data_.size()) return Errc::invalid_argument;
      std::string md5 = md5hex(data_);
      if (!meta.etag.empty() && meta.etag != md5) return ObjErrc::bad_digest;
      meta.etag = md5;
      meta.mtime_unix_ms = now_ms();
      return done_(std::move(meta), std::move(data_));
    }

   private:
    MemObjectStore& s_;
    std::function<Result<ObjectMeta>(ObjectMeta, std::string)> done_;
    std::string data_;
  };

  class Reader : public ObjectReader {
   public:
    Reader(ObjectMeta m, std::string d) : m_(std::move(m)), d_(std::move(d)) {}
    const ObjectMeta& meta() const override { return m_; }
    Result<size_t> read(void* buf, size_t len) override {
      size_t n = std::min(len, d_.size() - off_);
      memcpy(buf, d_.data() + off_, n);
      off_ += n;
      return n;
    }

   private:
    ObjectMeta m_;
    std::string d_;
    size_t off_ = 0;
  };

  Result<std::unique_ptr<ObjectWriter>> put_object(const std::string& b,
                                                   const std::string& k) override {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!buckets_.count(b)) return ObjErrc::no_such_bucket;
    }
    return std::unique_ptr<ObjectWriter>(
        std::make_unique<Writer>(*this, [this, b, k](ObjectMeta m, std::string d) -> Result<ObjectMeta> {
          std::lock_guard<std::mutex> l(mu_);
          auto it = buckets_.find(b);
          if (it == buckets_.end()) return ObjErrc::no_such_bucket;
          m.bucket = b;
          m.key = k;
          it->second.objects[k] = Obj{m, std::move(d)};
          return m;
        }));
  }
  Result<std::unique_ptr<ObjectReader>> get_object(const std::string& b, const std::string& k,
                                                   uint64_t off, uint64_t len) override {
    std::lock_guard<std::mutex> l(mu_);
    CAIRN_TRY(o, find(b, k));
    if (o->data.size() > 0 && off >= o->data.size()) return ObjErrc::invalid_range;
    std::string slice = o->data.substr(std::min<uint64_t>(off, o->data.size()), len);
    return std::unique_ptr<ObjectReader>(std::make_unique<Reader>(o->meta, std::move(slice)));
  }
  Result<ObjectMeta> head_object(const std::string& b, const std::string& k) override {
    std::lock_guard<std::mutex> l(mu_);
    CAIRN_TRY(o, find(b, k));
    return o->meta;
  }
  Status delete_object(const std::string& b, const std::string& k) override {
    std::lock_guard<std::mutex> l(mu_);
    auto it = buckets_.find(b);
    if (it == buckets_.end()) return ObjErrc::no_such_bucket;
    it->second.objects.erase(k);
    return ok();
  }
  Result<ListResult> list_objects(const std::string& b, const ListRequest& req) override {
    std::lock_guard<std::mutex> l(mu_);
    auto bit = buckets_.find(b);
    if (bit == buckets_.end()) return ObjErrc::no_such_bucket;
    ListResult out;
    size_t n = 0;
    for (auto it = bit->second.objects.upper_bound(req.start_after);
         it != bit->second.objects.end(); ++it) {
      const std::string& key = it->first;
      if (key.compare(0, req.prefix.size(), req.prefix) != 0) continue;
      std::string cp;
      if (!req.delimiter.empty()) {
        size_t d = key.find(req.delimiter, req.prefix.size());
        if (d != std::string::npos) cp = key.substr(0, d + req.delimiter.size());
      }
      if (!cp.empty() && (cp <= req.start_after ||
                          (!out.common_prefixes.empty() && out.common_prefixes.back() == cp)))
        continue;
      if (n == req.max_keys) {
        out.is_truncated = true;
        break;
      }
      ++n;
      if (!cp.empty()) {
        out.common_prefixes.push_back(cp);
        out.next_marker = cp;
      } else {
        out.objects.push_back(it->second.meta);
        out.next_marker = key;
      }
    }
    if (!out.is_truncated) out.next_marker.clear();
    return out;
  }

  struct Upload {
    UploadInfo info;
    ObjectMeta meta;
    std::map<uint32_t, std::pair<PartInfo, std::string>> parts;
  };
  Result<std::string> create_multipart(const std::string& b, const std::string& k,
                                       const ObjectMeta& meta) override {
    std::lock_guard<std::mutex> l(mu_);
    if (!buckets_.count(b)) return ObjErrc::no_such_bucket;
    std::string id = "upload" + std::to_string(++seq_);
    uploads_[id] = Upload{UploadInfo{id, b, k, now_ms()}, meta, {}};
    return id;
  }
  Result<std::unique_ptr<ObjectWriter>> upload_part(const std::string& b, const std::string& k,
                                                    const std::string& id,
                                                    uint32_t pn) override {
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = uploads_.find(id);
      if (it == uploads_.end() || it->second.info.bucket != b || it->second.info.key != k)
        return ObjErrc::no_such_upload;
    }
    return std::unique_ptr<ObjectWriter>(
        std::make_unique<Writer>(*this, [this, id, pn](ObjectMeta m, std::string d) -> Result<ObjectMeta> {
          std::lock_guard<std::mutex> l(mu_);
          auto it = uploads_.find(id);
          if (it == uploads_.end()) return ObjErrc::no_such_upload;
          it->second.parts[pn] = {PartInfo{pn, m.etag, m.size_bytes, m.mtime_unix_ms, m.checksums},
                                  std::move(d)};
          return m;
        }));
  }
  Result<ObjectMeta> complete_multipart(const std::string& b, const std::string& k,
                                        const std::string& id,
                                        const std::vector<PartInfo>& parts) override {
    std::lock_guard<std::mutex> l(mu_);
    auto it = uploads_.find(id);
    if (it == uploads_.end() || it->second.info.bucket != b || it->second.info.key != k)
      return ObjErrc::no_such_upload;
    std::string data, md5s;
    for (size_t i = 0; i < parts.size(); ++i) {
      if (i > 0 && parts[i].part_number <= parts[i - 1].part_number)
        return ObjErrc::invalid_part_order;
      auto p = it->second.parts.find(parts[i].part_number);
      if (p == it->second.parts.end() || p->second.first.etag != parts[i].etag)
        return ObjErrc::invalid_part;
      if (i + 1 < parts.size() && p->second.second.size() < kPartSizeMinBytes)
        return ObjErrc::entity_too_small;
      data += p->second.second;
    }
    ObjectMeta m = it->second.meta;
    m.bucket = b;
    m.key = k;
    m.size_bytes = data.size();
    m.etag = md5hex(data) + "-" + std::to_string(parts.size());
    m.parts = static_cast<uint32_t>(parts.size());
    m.mtime_unix_ms = now_ms();
    buckets_[b].objects[k] = Obj{m, std::move(data)};
    uploads_.erase(it);
    return m;
  }
  Status abort_multipart(const std::string&, const std::string&, const std::string& id) override {
    std::lock_guard<std::mutex> l(mu_);
    if (!uploads_.erase(id)) return ObjErrc::no_such_upload;
    return ok();
  }
  Result<std::vector<PartInfo>> list_parts(const std::string&, const std::string&,
                                           const std::string& id) override {
    std::lock_guard<std::mutex> l(mu_);
    auto it = uploads_.find(id);
    if (it == uploads_.end()) return ObjErrc::no_such_upload;
    std::vector<PartInfo> out;
    for (auto& [n, p] : it->second.parts) out.push_back(p.first);
    return out;
  }
  Result<std::vector<UploadInfo>> list_uploads(const std::string& b,
                                               const std::string& prefix) override {
    std::lock_guard<std::mutex> l(mu_);
    std::vector<UploadInfo> out;
    for (auto& [id, u] : uploads_)
      if (u.info.bucket == b && u.info.key.compare(0, prefix.size(), prefix) == 0)
        out.push_back(u.info);
    return out;
  }

  Status start_heal() override {
    heal_started_ = true;
    return ok();
  }
  HealStatus heal_status() override {
    HealStatus h;
    h.running = heal_started_;
    h.objects_total = 7;
    return h;
  }
  int drives_online() override { return 6; }

  // Test access.
  std::optional<Obj> object(const std::string& b, const std::string& k) {
    std::lock_guard<std::mutex> l(mu_);
    auto r = find(b, k);
    if (!r) return std::nullopt;
    return *r.value();
  }
  size_t uploads() {
    std::lock_guard<std::mutex> l(mu_);
    return uploads_.size();
  }

  static std::string md5hex(const std::string& d) { return md5_hex(d); }
  static int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }

 private:
  Result<Obj*> find(const std::string& b, const std::string& k) {
    auto it = buckets_.find(b);
    if (it == buckets_.end()) return ObjErrc::no_such_bucket;
    auto o = it->second.objects.find(k);
    if (o == it->second.objects.end()) return ObjErrc::no_such_key;
    return &o->second;
  }

  struct Bucket {
    BucketInfo info;
    std::map<std::string, Obj> objects;
  };
  std::mutex mu_;
  std::set<std::string> tenants_;
  std::map<std::string, AccessKey> keys_;
  std::map<std::string, Bucket> buckets_;
  std::map<std::string, Upload> uploads_;
  uint64_t seq_ = 0;
  bool heal_started_ = false;
};

}  // namespace cairn::objectd::testing
