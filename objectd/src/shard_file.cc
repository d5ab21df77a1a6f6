#include "shard_file.h"

#include <fcntl.h>
#include <isa-l/crc.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "common/assert.h"

namespace cairn::objectd::engine {
namespace {

constexpr char kHeaderMagic[8] = {'C', 'A', 'I', 'R', 'N', 'S', 'H', 'D'};
constexpr char kFooterMagic[8] = {'C', 'A', 'I', 'R', 'N', 'E', 'N', 'D'};

void put_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t get_u32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}

Status pread_all(int fd, void* buf, size_t len, uint64_t offset) {
  auto* p = static_cast<uint8_t*>(buf);
  while (len > 0) {
    ssize_t r = ::pread(fd, p, len, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno_code(errno);
    }
    if (r == 0) return Errc::corrupt;  // short file: truncated
    p += r;
    len -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return ok();
}

}  // namespace

uint32_t crc32c(const void* data, size_t len, uint32_t crc) {
  // ISA-L's crc32_iscsi neither pre- nor post-inverts; the standard CRC32C does both.
  uint32_t c = ~crc;
  const auto* p = static_cast<const unsigned char*>(data);
  while (len > 0) {
    int chunk = len > (1u << 30) ? (1 << 30) : static_cast<int>(len);
    c = crc32_iscsi(const_cast<unsigned char*>(p), chunk, c);
    p += chunk;
    len -= static_cast<size_t>(chunk);
  }
  return ~c;
}

StripeLayout StripeLayout::of(const cairn::v1::ObjectRecord& rec) {
  StripeLayout l;
  using K = cairn::v1::ObjectRecord;
  l.data_bytes = (rec.kind() == K::OBJECT || rec.kind() == K::PART) ? rec.size_bytes() : 0;
  l.k = rec.data_shards() == 0 ? 1 : rec.data_shards();
  l.m = rec.parity_shards();
  l.block_bytes = rec.shard_block_bytes() == 0 ? 1 : rec.shard_block_bytes();
  l.rotation = rec.rotation();
  return l;
}

uint64_t StripeLayout::stripe_data_bytes(uint64_t stripe) const {
  uint64_t start = stripe * stripe_bytes();
  if (start >= data_bytes) return 0;
  return std::min<uint64_t>(stripe_bytes(), data_bytes - start);
}

uint32_t StripeLayout::block_len(uint64_t stripe) const {
  uint64_t bytes = stripe_data_bytes(stripe);
  if (bytes == stripe_bytes()) return block_bytes;
  return static_cast<uint32_t>((bytes + k - 1) / k);
}

uint64_t StripeLayout::blocks_end() const {
  uint64_t n = stripes();
  if (n == 0) return kShardHeaderBytes;
  return block_offset(n - 1) + block_len(n - 1) + kBlockCrcBytes;
}

Status ShardFileWriter::write_all(const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (len > 0) {
    ssize_t w = ::write(fd_, p, len);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno_code(errno);
    }
    p += w;
    len -= static_cast<size_t>(w);
  }
  return ok();
}

Status ShardFileWriter::create(const std::string& path) {
  close();
  path_ = path;
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd_ < 0) return errno_code(errno);
  uint8_t header[kShardHeaderBytes];
  memcpy(header, kHeaderMagic, 8);
  put_u32(header + 8, kShardFormatVersion);
  put_u32(header + 12, crc32c(header, 12));
  return write_all(header, sizeof header);
}

Status ShardFileWriter::append_block(const uint8_t* data, uint32_t len) {
  CAIRN_ASSERT(fd_ >= 0);
  uint8_t crc[kBlockCrcBytes];
  put_u32(crc, crc32c(data, len));
  struct iovec iov[2] = {{const_cast<uint8_t*>(data), len}, {crc, sizeof crc}};
  size_t want = len + sizeof crc;
  ssize_t w;
  do {
    w = ::writev(fd_, iov, 2);
  } while (w < 0 && errno == EINTR);
  if (w < 0) return errno_code(errno);
  if (static_cast<size_t>(w) == want) return ok();
  // Partial write (rare): finish the rest piecewise.
  size_t done = static_cast<size_t>(w);
  if (done < len) {
    CAIRN_TRY(write_all(data + done, len - done));
    return write_all(crc, sizeof crc);
  }
  return write_all(crc + (done - len), sizeof crc - (done - len));
}

Status ShardFileWriter::finish(const cairn::v1::ObjectRecord& rec) {
  CAIRN_ASSERT(fd_ >= 0);
  std::string trailer = rec.SerializeAsString();
  if (trailer.size() > kRecordBytesMax) return Errc::too_large;
  uint8_t footer[kShardFooterBytes];
  put_u32(footer, static_cast<uint32_t>(trailer.size()));
  put_u32(footer + 4, crc32c(trailer.data(), trailer.size()));
  memcpy(footer + 8, kFooterMagic, 8);
  trailer.append(reinterpret_cast<const char*>(footer), sizeof footer);
  CAIRN_TRY(write_all(trailer.data(), trailer.size()));
  if (::fsync(fd_) != 0) return errno_code(errno);
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) return errno_code(errno);
  return ok();
}

void ShardFileWriter::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Status ShardFileReader::open(const std::string& path) {
  close();
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) return errno_code(errno);
  return ok();
}

void ShardFileReader::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Status ShardFileReader::read_block(const StripeLayout& layout, uint64_t stripe,
                                   uint8_t* buf) const {
  CAIRN_ASSERT(fd_ >= 0);
  uint32_t len = layout.block_len(stripe);
  uint8_t crc[kBlockCrcBytes];
  struct iovec iov[2] = {{buf, len}, {crc, sizeof crc}};
  uint64_t offset = layout.block_offset(stripe);
  ssize_t r;
  do {
    r = ::preadv(fd_, iov, 2, static_cast<off_t>(offset));
  } while (r < 0 && errno == EINTR);
  if (r < 0) return errno_code(errno);
  if (static_cast<size_t>(r) < len + sizeof crc) {
    size_t done = static_cast<size_t>(r);
    if (r == 0) return Errc::corrupt;
    if (done < len) {
      CAIRN_TRY(pread_all(fd_, buf + done, len - done, offset + done));
      CAIRN_TRY(pread_all(fd_, crc, sizeof crc, offset + len));
    } else {
      CAIRN_TRY(pread_all(fd_, crc + (done - len), sizeof crc - (done - len), offset + done));
    }
  }
  if (crc32c(buf, len) != get_u32(crc)) return Errc::corrupt;
  return ok();
}

Result<cairn::v1::ObjectRecord> ShardFileReader::read_record(uint64_t* file_bytes) const {
  CAIRN_ASSERT(fd_ >= 0);
  struct stat st {};
  if (::fstat(fd_, &st) != 0) return errno_code(errno);
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (file_bytes != nullptr) *file_bytes = size;
  if (size < kShardHeaderBytes + kShardFooterBytes) return Errc::corrupt;
  uint8_t header[kShardHeaderBytes];
  CAIRN_TRY(pread_all(fd_, header, sizeof header, 0));
  if (memcmp(header, kHeaderMagic, 8) != 0 || get_u32(header + 12) != crc32c(header, 12))
    return Errc::corrupt;
  if (get_u32(header + 8) != kShardFormatVersion) return Errc::unsupported;
  uint8_t footer[kShardFooterBytes];
  CAIRN_TRY(pread_all(fd_, footer, sizeof footer, size - kShardFooterBytes));
  if (memcmp(footer + 8, kFooterMagic, 8) != 0) return Errc::corrupt;
  uint32_t len = get_u32(footer);
  if (len > kRecordBytesMax || len > size - kShardHeaderBytes - kShardFooterBytes)
    return Errc::corrupt;
  std::string bytes(len, '\0');
  CAIRN_TRY(pread_all(fd_, bytes.data(), len, size - kShardFooterBytes - len));
  if (crc32c(bytes.data(), len) != get_u32(footer + 4)) return Errc::corrupt;
  cairn::v1::ObjectRecord rec;
  if (!rec.ParseFromString(bytes)) return Errc::corrupt;
  // The blocks must fill exactly the space between header and trailer.
  if (StripeLayout::of(rec).blocks_end() != size - kShardFooterBytes - len) return Errc::corrupt;
  return rec;
}

Status verify_shard_file(const std::string& path, const cairn::v1::ObjectRecord& expect,
                         uint32_t shard_index, const std::function<void(uint64_t)>& on_bytes) {
  ShardFileReader reader;
  CAIRN_TRY(reader.open(path));
  CAIRN_TRY(rec, reader.read_record());
  if (rec.id() != expect.id() || rec.kind() != expect.kind() ||
      rec.shard_index() != shard_index || rec.size_bytes() != expect.size_bytes() ||
      rec.data_shards() != expect.data_shards() ||
      rec.parity_shards() != expect.parity_shards() ||
      rec.shard_block_bytes() != expect.shard_block_bytes() ||
      rec.rotation() != expect.rotation())
    return Errc::corrupt;
  StripeLayout layout = StripeLayout::of(rec);
  std::vector<uint8_t> buf(layout.stripes() > 0 ? layout.block_bytes : 0);
  for (uint64_t s = 0; s < layout.stripes(); ++s) {
    CAIRN_TRY(reader.read_block(layout, s, buf.data()));
    if (on_bytes) on_bytes(layout.block_len(s) + kBlockCrcBytes);
  }
  return ok();
}

}  // namespace cairn::objectd::engine
