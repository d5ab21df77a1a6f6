#include "snapshot/blob_store.h"

namespace cairn::backup {

Status MemBlobStore::enter(std::string_view op, const std::string& key) {
  if (on_op) on_op(op, key);
  int n = fail_next.load();
  while (n > 0) {
    if (fail_next.compare_exchange_weak(n, n - 1)) return Errc::io_error;
  }
  return ok();
}

Status MemBlobStore::create_bucket() { return enter("create_bucket", ""); }

Status MemBlobStore::put(const std::string& key, std::string_view data) {
  CAIRN_TRY(enter("put", key));
  std::lock_guard lock(mu_);
  objects_[key] = Obj{std::string(data), now_s.load()};
  puts_++;
  put_bytes_ += data.size();
  return ok();
}

Result<std::string> MemBlobStore::get(const std::string& key) {
  CAIRN_TRY(enter("get", key));
  std::lock_guard lock(mu_);
  auto it = objects_.find(key);
  if (it == objects_.end()) return Errc::not_found;
  return it->second.data;
}

Result<std::optional<BlobInfo>> MemBlobStore::head(const std::string& key) {
  CAIRN_TRY(enter("head", key));
  std::lock_guard lock(mu_);
  auto it = objects_.find(key);
  if (it == objects_.end()) return std::optional<BlobInfo>();
  return std::optional<BlobInfo>(BlobInfo{key, it->second.data.size(), it->second.mtime});
}

Status MemBlobStore::list(const std::string& prefix,
                          const std::function<bool(const BlobInfo&)>& fn) {
  CAIRN_TRY(enter("list", prefix));
  std::vector<BlobInfo> page;
  {
    std::lock_guard lock(mu_);
    for (auto it = objects_.lower_bound(prefix);
         it != objects_.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
      page.push_back(BlobInfo{it->first, it->second.data.size(), it->second.mtime});
    }
  }
  for (const auto& info : page) {
    if (!fn(info)) break;
  }
  return ok();
}

Status MemBlobStore::remove(const std::string& key) {
  CAIRN_TRY(enter("remove", key));
  std::lock_guard lock(mu_);
  objects_.erase(key);
  return ok();
}

void MemBlobStore::set_raw(const std::string& key, std::string data) {
  std::lock_guard lock(mu_);
  objects_[key] = Obj{std::move(data), now_s.load()};
}

std::optional<std::string> MemBlobStore::raw(const std::string& key) const {
  std::lock_guard lock(mu_);
  auto it = objects_.find(key);
  if (it == objects_.end()) return std::nullopt;
  return it->second.data;
}

size_t MemBlobStore::count(const std::string& prefix) const {
  std::lock_guard lock(mu_);
  size_t n = 0;
  for (auto it = objects_.lower_bound(prefix);
       it != objects_.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
    n++;
  }
  return n;
}

}  // namespace cairn::backup
