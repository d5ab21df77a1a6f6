#include "drive.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/assert.h"
#include "common/log.h"

namespace cairn::objectd::engine {
namespace {

constexpr char kLog[] = "objectd";

Status write_all(int fd, const char* p, size_t len) {
  while (len > 0) {
    ssize_t w = ::write(fd, p, len);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno_code(errno);
    }
    p += w;
    len -= static_cast<size_t>(w);
  }
  return ok();
}

// Empty, or only the lost+found of a fresh filesystem.
Result<bool> dir_is_empty(const std::string& path) {
  DIR* d = ::opendir(path.c_str());
  if (d == nullptr) return errno_code(errno);
  bool empty = true;
  while (dirent* e = ::readdir(d)) {
    std::string_view name = e->d_name;
    if (name == "." || name == ".." || name == "lost+found") continue;
    empty = false;
    break;
  }
  ::closedir(d);
  return empty;
}

}  // namespace

int64_t now_unix_ms() {
  struct timespec ts {};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

std::string random_hex(size_t bytes) {
  std::string raw(bytes, '\0');
  CAIRN_ASSERT(RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()),
                          static_cast<int>(bytes)) == 1);
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(bytes * 2);
  for (unsigned char c : raw) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

bool is_object_id(std::string_view name) {
  if (name.size() != 32) return false;
  for (char c : name)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

Status make_dir(const std::string& path) {
  if (::mkdir(path.c_str(), 0750) == 0 || errno == EEXIST) return ok();
  return errno_code(errno);
}

Status fsync_dir(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno_code(errno);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) return errno_code(err);
  return ok();
}

Status fsync_parent_dir(const std::string& path) {
  size_t slash = path.rfind('/');
  return fsync_dir(slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash)));
}

Status write_file_durable(const std::string& path, const std::string& tmp_path,
                          std::string_view data) {
  int fd = ::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) return errno_code(errno);
  Status st = write_all(fd, data.data(), data.size());
  if (st && ::fsync(fd) != 0) st = errno_code(errno);
  ::close(fd);
  if (st && ::rename(tmp_path.c_str(), path.c_str()) != 0) st = errno_code(errno);
  if (!st) {
    ::unlink(tmp_path.c_str());
    return st;
  }
  return fsync_parent_dir(path);
}

Result<std::string> read_small_file(const std::string& path, size_t bytes_max) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_code(errno);
  std::string out;
  char buf[64 * 1024];
  for (;;) {
    ssize_t r = ::read(fd, buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return errno_code(err);
    }
    if (r == 0) break;
    out.append(buf, static_cast<size_t>(r));
    if (out.size() > bytes_max) {
      ::close(fd);
      return Errc::too_large;
    }
  }
  ::close(fd);
  return out;
}

Result<cairn::v1::ObjectDriveFormat> read_drive_format(const std::string& drive_path) {
  CAIRN_TRY(data, read_small_file(drive_path + "/format.pb", 4096));
  cairn::v1::ObjectDriveFormat fmt;
  if (!fmt.ParseFromString(data) || fmt.version() != kDriveFormatVersion) return Errc::corrupt;
  return fmt;
}

Status Drive::format(const std::string& store_id, uint32_t drive_count) {
  for (const char* sub : {"/objects", "/tmp", "/meta"}) {
    CAIRN_TRY(make_dir(path_ + sub));
  }
  // objects/<xx> directories are created on first use (ShardSet::commit).
  CAIRN_TRY(fsync_dir(path_));
  cairn::v1::ObjectDriveFormat fmt;
  fmt.set_version(kDriveFormatVersion);
  fmt.set_store_id(store_id);
  fmt.set_drive_id(random_hex(16));
  fmt.set_position(static_cast<uint32_t>(position_));
  fmt.set_drive_count(drive_count);
  fmt.set_created_unix_ms(now_unix_ms());
  return write_file_durable(path_ + "/format.pb", path_ + "/format.pb.tmp",
                            fmt.SerializeAsString());
}

bool Drive::check(const std::string& store_id, uint32_t drive_count, bool* formatted) {
  std::lock_guard lock(mu_);
  *formatted = false;
  struct stat st {};
  if (::stat(path_.c_str(), &st) != 0) {
    set_online(false, std::string("cannot stat directory: ") + strerror(errno));
    return false;
  }
  if (!S_ISDIR(st.st_mode)) {
    set_online(false, "not a directory");
    return false;
  }
  Result<cairn::v1::ObjectDriveFormat> fmt = read_drive_format(path_);
  if (!fmt) {
    if (fmt.error() != std::errc::no_such_file_or_directory) {
      set_online(false, "unreadable format file: " + fmt.error().message());
      return false;
    }
    Result<bool> empty = dir_is_empty(path_);
    if (!empty) {
      set_online(false, "unreadable directory: " + empty.error().message());
      return false;
    }
    if (!empty.value()) {
      set_online(false, "not empty and not formatted (refusing to take it over)");
      return false;
    }
    Status f = format(store_id, drive_count);
    if (!f) {
      set_online(false, "cannot format: " + f.error().message());
      return false;
    }
    CAIRN_LOG_INFO(kLog, "formatted empty drive %d at %s", position_, path_.c_str());
    *formatted = true;
  } else if (fmt.value().store_id() != store_id) {
    set_online(false, "belongs to another store (store_id " + fmt.value().store_id() + ")");
    return false;
  } else if (fmt.value().position() != static_cast<uint32_t>(position_) ||
             fmt.value().drive_count() != drive_count) {
    set_online(false, "formatted as drive " + std::to_string(fmt.value().position()) + " of " +
                          std::to_string(fmt.value().drive_count()) + " (drive order changed?)");
    return false;
  } else if (::access((path_ + "/objects").c_str(), R_OK | W_OK | X_OK) != 0 ||
             ::access((path_ + "/tmp").c_str(), R_OK | W_OK | X_OK) != 0) {
    set_online(false, std::string("objects/ or tmp/ not accessible: ") + strerror(errno));
    return false;
  }
  set_online(true, "");
  return true;
}

void Drive::mark_failed(const std::string& why) {
  std::lock_guard lock(mu_);
  set_online(false, why);
}

void Drive::set_online(bool online, const std::string& why) {
  bool was = online_.exchange(online);
  if (state_known_ && was == online) return;
  state_known_ = true;
  if (online)
    CAIRN_LOG_INFO(kLog, "drive %d online path=%s", position_, path_.c_str());
  else
    CAIRN_LOG_WARN(kLog, "drive %d offline path=%s: %s", position_, path_.c_str(), why.c_str());
}

}  // namespace cairn::objectd::engine
