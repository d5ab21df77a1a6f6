// DirtyMap's file (docs/FORMAT-replication.md):
//
//   page 0 (4096 bytes), little-endian, packed:
//     0   8  magic "CAIRNDRT"
//     8   4  u32 version = 1
//     12  8  u64 extents (bits in the bitmap)
//     20  8  u64 extent bytes = 65536
//     28  .. zero
//   pages 1..: the bitmap, extent e at byte e / 8, bit e % 8 (so u64 word e / 64, bit
//     e % 64, little-endian), padded with zero bits to whole pages. Bits past `extents`
//     are zero. The file may be longer than the bitmap needs (a crash while growing it).
#include "replication/dirty_map.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>

#include "common/assert.h"
#include "common/log.h"

namespace cairn::replication {

namespace {

static_assert(std::endian::native == std::endian::little, "the bitmap is stored as host words");

constexpr const char* kLog = "dirty_map";
constexpr uint64_t kPageBytes = 4096;
constexpr uint64_t kWordsPerPage = kPageBytes / sizeof(uint64_t);
constexpr uint64_t kExtentsPerPage = kPageBytes * 8;
constexpr char kMagic[8] = {'C', 'A', 'I', 'R', 'N', 'D', 'R', 'T'};
constexpr uint32_t kVersion = 1;
// 2^32 extents of 64 KiB: 256 TiB volumes, a 512 MiB bitmap.
constexpr uint64_t kExtentsMax = uint64_t{1} << 32;

uint64_t bitmap_pages(uint64_t extents) { return (extents + kExtentsPerPage - 1) / kExtentsPerPage; }
uint64_t file_bytes(uint64_t extents) { return kPageBytes * (1 + bitmap_pages(extents)); }

std::string header_page(uint64_t extents) {
  std::string page(kPageBytes, '\0');
  const uint64_t extent_bytes = DirtyMap::kExtentBytes;
  std::memcpy(page.data(), kMagic, sizeof(kMagic));
  std::memcpy(page.data() + 8, &kVersion, sizeof(kVersion));
  std::memcpy(page.data() + 12, &extents, sizeof(extents));
  std::memcpy(page.data() + 20, &extent_bytes, sizeof(extent_bytes));
  return page;
}

std::error_code io_failed(const char* what, const std::string& path, int err) {
  CAIRN_LOG_ERROR(kLog, "%s %s: %s", what, path.c_str(), std::strerror(err));
  return Errc::io_error;
}

Status pwrite_all(int fd, const void* data, size_t size, uint64_t offset, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, p, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return io_failed("cannot write", path, n < 0 ? errno : EIO);
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return ok();
}

// False at end of file.
Result<bool> pread_all(int fd, void* data, size_t size, uint64_t offset, const std::string& path) {
  char* p = static_cast<char*>(data);
  while (size > 0) {
    const ssize_t n = ::pread(fd, p, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return io_failed("cannot read", path, errno);
    if (n == 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return true;
}

// Makes a rename or unlink in the directory of `path` durable.
Status sync_dir(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  const std::string dir = parent.empty() ? std::string(".") : parent.string();
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return io_failed("cannot open directory", dir, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return io_failed("cannot sync directory", dir, err);
  return ok();
}

// Writes an all-clear map under a temporary name and renames it into place, so `path`
// is either absent or a whole map.
Status create_file(const std::string& path, uint64_t extents) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return io_failed("cannot create", tmp, errno);
  const std::string header = header_page(extents);
  Status st = ok();
  if (::ftruncate(fd, static_cast<off_t>(file_bytes(extents))) != 0) {
    st = io_failed("cannot size", tmp, errno);
  } else {
    st = pwrite_all(fd, header.data(), header.size(), 0, tmp);
    if (st && ::fsync(fd) != 0) st = io_failed("cannot sync", tmp, errno);
  }
  ::close(fd);
  if (st && ::rename(tmp.c_str(), path.c_str()) != 0) st = io_failed("cannot rename to", path, errno);
  if (!st) {
    ::unlink(tmp.c_str());
    return st;
  }
  return sync_dir(path);
}

// The bits of u64 word `word` that stand for extents in [first, last].
uint64_t word_mask(uint64_t word, uint64_t first, uint64_t last) {
  const uint64_t lo = std::max(first, word * 64) - word * 64;
  const uint64_t hi = std::min(last, word * 64 + 63) - word * 64;
  const uint64_t upto = hi == 63 ? ~uint64_t{0} : (uint64_t{1} << (hi + 1)) - 1;
  return upto & ~((uint64_t{1} << lo) - 1);
}

}  // namespace

Result<std::unique_ptr<DirtyMap>> DirtyMap::open(const std::string& path, uint64_t size_bytes) {
  const uint64_t wanted = size_bytes / kExtentBytes + (size_bytes % kExtentBytes != 0);
  if (wanted > kExtentsMax) {
    CAIRN_LOG_ERROR(kLog, "%s: a volume of %llu bytes exceeds the dirty map's limit", path.c_str(),
                    static_cast<unsigned long long>(size_bytes));
    return Errc::too_large;
  }
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    CAIRN_TRY(create_file(path, wanted));
    fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  }
  if (fd < 0) return io_failed("cannot open", path, errno);
  // From here on the map owns fd (closed by its destructor on every error path).
  std::unique_ptr<DirtyMap> map(new DirtyMap(path, fd, 0));

  auto corrupt = [&](const char* why) -> Result<std::unique_ptr<DirtyMap>> {
    CAIRN_LOG_ERROR(kLog, "%s is not a dirty map: %s", path.c_str(), why);
    return Errc::corrupt;
  };
  struct stat st {};
  if (::fstat(fd, &st) != 0) return io_failed("cannot stat", path, errno);
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  char header[kPageBytes];
  CAIRN_TRY(whole, pread_all(fd, header, sizeof(header), 0, path));
  if (!whole) return corrupt("shorter than its header");
  uint32_t version = 0;
  uint64_t extents = 0, extent_bytes = 0;
  std::memcpy(&version, header + 8, sizeof(version));
  std::memcpy(&extents, header + 12, sizeof(extents));
  std::memcpy(&extent_bytes, header + 20, sizeof(extent_bytes));
  if (std::memcmp(header, kMagic, sizeof(kMagic)) != 0) return corrupt("bad magic");
  if (version != kVersion) return corrupt("unknown version");
  if (extent_bytes != kExtentBytes) return corrupt("another extent size");
  if (extents > kExtentsMax) return corrupt("too many extents");
  if (size < file_bytes(extents)) return corrupt("shorter than its bitmap");

  // Read what the file holds before growing: the new extents start clear.
  std::vector<uint64_t> bits(bitmap_pages(extents) * kWordsPerPage);
  CAIRN_TRY(read, pread_all(fd, bits.data(), bits.size() * sizeof(uint64_t), kPageBytes, path));
  CAIRN_ASSERT(read);  // the size was checked
  if (extents % 64 != 0 && (bits[extents / 64] >> (extents % 64)) != 0) {
    return corrupt("bits set past the end");
  }
  for (uint64_t w = (extents + 63) / 64; w < bits.size(); ++w) {
    if (bits[w] != 0) return corrupt("bits set past the end");
  }

  if (wanted > extents) {
    // Length first: a crash before the header is rewritten leaves the old, valid map.
    if (::ftruncate(fd, static_cast<off_t>(std::max(size, file_bytes(wanted)))) != 0) {
      return io_failed("cannot grow", path, errno);
    }
    if (::fdatasync(fd) != 0) return io_failed("cannot sync", path, errno);
    const std::string page = header_page(wanted);
    CAIRN_TRY(pwrite_all(fd, page.data(), page.size(), 0, path));
    if (::fdatasync(fd) != 0) return io_failed("cannot sync", path, errno);
    extents = wanted;
  }
  // A map for a larger volume keeps its size (volumes only grow).

  bits.resize((extents + 63) / 64);
  map->extents_ = extents;
  map->count_ = 0;
  for (uint64_t w : bits) map->count_ += static_cast<uint64_t>(std::popcount(w));
  map->bits_ = std::move(bits);
  return map;
}

DirtyMap::DirtyMap(std::string path, int fd, uint64_t extents)
    : path_(std::move(path)), fd_(fd), extents_(extents), bits_((extents + 63) / 64) {}

DirtyMap::~DirtyMap() {
  if (fd_ >= 0) ::close(fd_);
}

Status DirtyMap::mark(uint64_t offset, uint64_t length) {
  if (length == 0) return ok();
  std::lock_guard lock(mu_);
  const uint64_t first = offset / kExtentBytes;
  if (first >= extents_) return ok();
  const uint64_t end = length > UINT64_MAX - offset ? UINT64_MAX : offset + length;  // exclusive
  const uint64_t last = std::min((end - 1) / kExtentBytes, extents_ - 1);

  // The words this call changes, as they were: a failed write is undone in memory, so
  // that repeating the mark writes again (a set bit always means "on disk").
  std::vector<std::pair<uint64_t, uint64_t>> before;
  std::set<uint64_t> pages = unsynced_pages_;
  for (uint64_t w = first / 64; w <= last / 64; ++w) {
    const uint64_t now = bits_[w] | word_mask(w, first, last);
    if (now == bits_[w]) continue;
    before.emplace_back(w, bits_[w]);
    count_ += static_cast<uint64_t>(std::popcount(now & ~bits_[w]));
    bits_[w] = now;
    pages.insert(w / kWordsPerPage);
  }
  if (before.empty()) return ok();  // every extent was dirty already (and durably so)
  auto written = write_pages_locked(pages);
  if (!written) {
    for (const auto& [w, old] : before) {
      count_ -= static_cast<uint64_t>(std::popcount(bits_[w] & ~old));
      bits_[w] = old;
    }
  }
  return written;
}

Status DirtyMap::mark_extents(const std::vector<uint64_t>& extents) {
  std::lock_guard lock(mu_);
  std::vector<std::pair<uint64_t, uint64_t>> before;  // words changed, as they were
  std::set<uint64_t> pages = unsynced_pages_;
  for (uint64_t e : extents) {
    if (e >= extents_) continue;
    const uint64_t w = e / 64;
    const uint64_t bit = uint64_t{1} << (e % 64);
    if (bits_[w] & bit) continue;
    before.emplace_back(w, bits_[w]);
    bits_[w] |= bit;
    ++count_;
    pages.insert(w / kWordsPerPage);
  }
  if (before.empty()) return ok();
  auto written = write_pages_locked(pages);
  if (!written) {
    // Undo in reverse so each word gets its oldest value back.
    for (auto it = before.rbegin(); it != before.rend(); ++it) {
      count_ -= static_cast<uint64_t>(std::popcount(bits_[it->first] & ~it->second));
      bits_[it->first] = it->second;
    }
  }
  return written;
}

Status DirtyMap::mark_all() {
  if (extents() == 0) return ok();
  return mark(0, extents() * kExtentBytes);
}

void DirtyMap::clear(uint64_t extent) {
  std::lock_guard lock(mu_);
  if (extent >= extents_) return;
  uint64_t& word = bits_[extent / 64];
  const uint64_t bit = uint64_t{1} << (extent % 64);
  if (!(word & bit)) return;
  word &= ~bit;
  --count_;
  unsynced_pages_.insert(extent / kExtentsPerPage);
}

Status DirtyMap::sync() {
  std::lock_guard lock(mu_);
  if (unsynced_pages_.empty()) return ok();
  return write_pages_locked(unsynced_pages_);
}

// Writes `pages` of the bitmap and syncs them once; on success they are no longer unsynced.
// On failure the pages with cleared bits stay unsynced (retried by the next write).
Status DirtyMap::write_pages_locked(const std::set<uint64_t>& pages) {
  if (fd_ < 0) {  // removed: memory only
    unsynced_pages_.clear();
    return ok();
  }
  std::vector<uint64_t> page(kWordsPerPage);
  for (uint64_t p : pages) {
    const uint64_t from = p * kWordsPerPage;
    CAIRN_ASSERT(from < bits_.size());
    const uint64_t n = std::min<uint64_t>(kWordsPerPage, bits_.size() - from);
    std::fill(page.begin(), page.end(), 0);
    std::copy_n(bits_.begin() + static_cast<ptrdiff_t>(from), n, page.begin());
    CAIRN_TRY(pwrite_all(fd_, page.data(), kPageBytes, kPageBytes * (1 + p), path_));
  }
  if (::fdatasync(fd_) != 0) return io_failed("cannot sync", path_, errno);
  // Copy first: `pages` may be unsynced_pages_ itself.
  const std::set<uint64_t> done = pages;
  for (uint64_t p : done) unsynced_pages_.erase(p);
  return ok();
}

bool DirtyMap::test(uint64_t extent) const {
  std::lock_guard lock(mu_);
  return extent < extents_ && (bits_[extent / 64] >> (extent % 64)) & 1;
}

uint64_t DirtyMap::count() const {
  std::lock_guard lock(mu_);
  return count_;
}

uint64_t DirtyMap::extents() const {
  std::lock_guard lock(mu_);
  return extents_;
}

std::optional<uint64_t> DirtyMap::next(uint64_t from) const {
  std::lock_guard lock(mu_);
  if (from >= extents_) return std::nullopt;
  uint64_t w = from / 64;
  uint64_t word = bits_[w] & (~uint64_t{0} << (from % 64));
  for (;;) {
    if (word != 0) return w * 64 + static_cast<uint64_t>(std::countr_zero(word));
    if (++w >= bits_.size()) return std::nullopt;
    word = bits_[w];
  }
}

Status DirtyMap::remove() {
  std::lock_guard lock(mu_);
  if (fd_ < 0) return ok();
  if (::unlink(path_.c_str()) != 0 && errno != ENOENT) return io_failed("cannot remove", path_, errno);
  ::close(fd_);
  fd_ = -1;
  unsynced_pages_.clear();
  return sync_dir(path_);
}

}  // namespace cairn::replication
