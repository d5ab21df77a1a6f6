#include "replication/epoch_fence.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string_view>

#include "common/file.h"
#include "common/log.h"

namespace cairn::replication {

namespace {

constexpr const char* kLog = "replication";
// One file per volume: `<escaped volume name>.epoch` holding the epoch in decimal and a
// newline. Names are escaped so that any volume name is one safe path segment: bytes
// outside [A-Za-z0-9_.-] (and a leading '.') become %XX.
constexpr std::string_view kSuffix = ".epoch";
constexpr std::string_view kTmpSuffix = ".epoch.tmp";  // write_file_atomic's leftovers
constexpr size_t kFileNameMaxBytes = 255;

bool safe_char(char c, bool first) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  if (c == '_' || c == '-') return true;
  return c == '.' && !first;
}

std::string escape(const std::string& name) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(name.size());
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    if (safe_char(c, i == 0)) {
      out.push_back(c);
    } else {
      auto b = static_cast<unsigned char>(c);
      out.push_back('%');
      out.push_back(kHex[b >> 4]);
      out.push_back(kHex[b & 15]);
    }
  }
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Inverse of escape(); nullopt unless `s` is exactly what escape() produces for some name.
std::optional<std::string> unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      if (!safe_char(s[i], out.empty())) return std::nullopt;
      out.push_back(s[i]);
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    int hi = hex_value(s[i + 1]), lo = hex_value(s[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    char c = static_cast<char>(hi << 4 | lo);
    if (safe_char(c, out.empty())) return std::nullopt;  // not canonical
    out.push_back(c);
    i += 2;
  }
  if (out.empty()) return std::nullopt;
  return out;
}

// "<decimal>\n" -> the epoch; nullopt for anything else.
std::optional<uint64_t> parse_epoch(std::string_view text) {
  if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  if (text.empty() || text.size() > 20) return std::nullopt;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return v;
}

}  // namespace

Result<std::unique_ptr<EpochFence>> EpochFence::open(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    CAIRN_LOG_ERROR(kLog, "cannot create epoch fence directory %s: %s", dir.c_str(),
                    ec.message().c_str());
    return errno_code(ec.value());
  }
  std::unique_ptr<EpochFence> fence(new EpochFence(dir));
  fs::directory_iterator it(dir, ec);
  if (ec) {
    CAIRN_LOG_ERROR(kLog, "cannot list %s: %s", dir.c_str(), ec.message().c_str());
    return errno_code(ec.value());
  }
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    const std::string file = it->path().filename().string();
    const std::string full = it->path().string();
    if (file.ends_with(kTmpSuffix)) {
      ::unlink(full.c_str());  // an admit() interrupted before its rename: never admitted
      continue;
    }
    if (!file.ends_with(kSuffix)) continue;
    auto name = unescape(std::string_view(file).substr(0, file.size() - kSuffix.size()));
    if (!name) {
      CAIRN_LOG_ERROR(kLog, "epoch fence file %s: not a volume name", full.c_str());
      return Errc::corrupt;
    }
    auto text = read_file(full);
    if (!text) {
      CAIRN_LOG_ERROR(kLog, "cannot read epoch fence file %s: %s", full.c_str(),
                      text.error().message().c_str());
      return text.error();
    }
    // "EPOCH" or "EPOCH INCARNATION".
    std::string_view body = text.value();
    std::optional<uint64_t> incarnation = 0;
    if (auto sp = body.find(' '); sp != std::string_view::npos) {
      incarnation = parse_epoch(body.substr(sp + 1));
      body = body.substr(0, sp);
    }
    auto epoch = parse_epoch(body);
    if (!epoch || !incarnation || *incarnation > UINT32_MAX) {
      CAIRN_LOG_ERROR(kLog, "epoch fence file %s does not hold an epoch", full.c_str());
      return Errc::corrupt;
    }
    fence->epochs_[*name] = *epoch;
    if (*incarnation != 0) fence->incarnations_[*name] = static_cast<uint32_t>(*incarnation);
  }
  if (ec) {
    CAIRN_LOG_ERROR(kLog, "cannot list %s: %s", dir.c_str(), ec.message().c_str());
    return errno_code(ec.value());
  }
  return fence;
}

std::string EpochFence::path(const std::string& volume) const {
  return dir_ + "/" + escape(volume) + std::string(kSuffix);
}

Status EpochFence::admit(const std::string& volume, uint64_t epoch, uint32_t incarnation) {
  if (volume.empty()) return Errc::invalid_argument;
  std::lock_guard lk(mu_);
  auto inc = incarnations_.find(volume);
  const uint32_t stored_inc = inc == incarnations_.end() ? 0 : inc->second;
  if (incarnation != 0 && stored_inc != 0 && incarnation != stored_inc) return Errc::busy;
  if (incarnation == 0) incarnation = stored_inc;
  auto it = epochs_.find(volume);
  if (it != epochs_.end()) {
    if (epoch < it->second) return Errc::permission_denied;
    if (epoch == it->second && incarnation == stored_inc) return ok();
  }
  if (escape(volume).size() + kTmpSuffix.size() > kFileNameMaxBytes)
    return Errc::invalid_argument;  // the name cannot be a file name here
  const std::string file = path(volume);
  const std::string body = incarnation == 0
                               ? std::to_string(epoch) + "\n"
                               : std::to_string(epoch) + " " + std::to_string(incarnation) + "\n";
  Status st = write_file_atomic(file, body);
  if (!st) {
    CAIRN_LOG_ERROR(kLog, "cannot persist epoch %llu of volume %s in %s: %s",
                    static_cast<unsigned long long>(epoch), volume.c_str(), file.c_str(),
                    st.error().message().c_str());
    return Errc::io_error;
  }
  epochs_[volume] = epoch;
  if (incarnation != 0) incarnations_[volume] = incarnation;
  return ok();
}

uint32_t EpochFence::incarnation(const std::string& volume) const {
  std::lock_guard lk(mu_);
  auto it = incarnations_.find(volume);
  return it == incarnations_.end() ? 0 : it->second;
}

bool EpochFence::current(const std::string& volume, uint64_t epoch) const {
  std::lock_guard lk(mu_);
  auto it = epochs_.find(volume);
  return it == epochs_.end() || epoch >= it->second;
}

uint64_t EpochFence::epoch(const std::string& volume) const {
  std::lock_guard lk(mu_);
  auto it = epochs_.find(volume);
  return it == epochs_.end() ? 0 : it->second;
}

Status EpochFence::forget(const std::string& volume) {
  std::lock_guard lk(mu_);
  auto it = epochs_.find(volume);
  if (it == epochs_.end()) return ok();
  const std::string file = path(volume);
  if (::unlink(file.c_str()) != 0 && errno != ENOENT) {
    int err = errno;
    CAIRN_LOG_ERROR(kLog, "cannot remove epoch fence file %s: %s", file.c_str(), strerror(err));
    return errno_code(err);
  }
  epochs_.erase(it);
  incarnations_.erase(volume);
  return ok();
}

}  // namespace cairn::replication
