// Drive: one of the store's k+m drive directories, and the small filesystem helpers the engine
// uses (durable file replace, directory fsync, random ids).
//
// Owned by StoreImpl for its lifetime. Thread-safe: online() is a relaxed atomic read; check()
// and mark_failed() serialize on the drive's mutex. A drive is online when its directory exists,
// is readable and holds a format file of this store at this position; an empty directory is
// formatted by check() (first open, or an operator's replacement). Offline drives are skipped by
// reads and writes and re-checked periodically by the heal thread. Layout: FORMAT-objectd.md.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>

#include "cairn/v1/object.pb.h"
#include "common/result.h"

namespace cairn::objectd::engine {

constexpr uint32_t kDriveFormatVersion = 1;
constexpr int kObjectSubdirs = 256;  // objects/00 .. objects/ff

int64_t now_unix_ms();
std::string random_hex(size_t bytes);  // RAND_bytes, lower-case hex (2 chars per byte)
bool is_object_id(std::string_view name);  // 32 lower-case hex chars

Status make_dir(const std::string& path);  // EEXIST is success
Status fsync_dir(const std::string& path);
Status fsync_parent_dir(const std::string& path);
// Writes `data` to tmp_path, fsyncs it, renames it over path and fsyncs path's directory.
Status write_file_durable(const std::string& path, const std::string& tmp_path,
                          std::string_view data);
Result<std::string> read_small_file(const std::string& path, size_t bytes_max);

Result<cairn::v1::ObjectDriveFormat> read_drive_format(const std::string& drive_path);

class Drive {
 public:
  Drive(int position, std::string path) : position_(position), path_(std::move(path)) {}
  Drive(const Drive&) = delete;
  Drive& operator=(const Drive&) = delete;

  int position() const { return position_; }
  const std::string& path() const { return path_; }
  bool online() const { return online_.load(std::memory_order_relaxed); }

  std::string object_path(const std::string& id) const {
    return path_ + "/objects/" + id.substr(0, 2) + "/" + id;
  }
  std::string object_dir(const std::string& id) const {
    return path_ + "/objects/" + id.substr(0, 2);
  }
  std::string tmp_path(const std::string& name) const { return path_ + "/tmp/" + name; }
  std::string catalog_path() const { return path_ + "/meta/catalog.pb"; }

  // Re-examines the directory; formats it when empty. Sets *formatted when it did. Logs each
  // online/offline transition once. Returns online().
  bool check(const std::string& store_id, uint32_t drive_count, bool* formatted);
  // Marks the drive offline after an I/O failure that implicates the whole drive.
  void mark_failed(const std::string& why);

 private:
  Status format(const std::string& store_id, uint32_t drive_count);
  void set_online(bool online, const std::string& why);

  const int position_;
  const std::string path_;
  std::atomic<bool> online_{false};
  std::mutex mu_;
  bool state_known_ = false;  // guarded by mu_: a transition has been logged
};

}  // namespace cairn::objectd::engine
