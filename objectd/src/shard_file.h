// The shard file: one drive's share of one object version (docs/FORMAT-objectd.md).
//
//   header   16 bytes: "CAIRNSHD", format version (u32 LE), CRC32C of the previous 12 bytes
//   blocks   per stripe: this shard's block (B bytes, the last stripe's ceil(rest / k)) + CRC32C
//   trailer  the ObjectRecord (with this file's shard_index), then a 16-byte footer:
//            record length (u32 LE), CRC32C of the record (u32 LE), "CAIRNEND"
//
// The record is a trailer because the data is streamed before the metadata is known (commit).
// StripeLayout is the geometry shared by writers, readers and heal. ShardFileWriter and
// ShardFileReader each serve one caller (not thread-safe); they own one file descriptor.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "cairn/v1/object.pb.h"
#include "common/result.h"

namespace cairn::objectd::engine {

constexpr uint32_t kShardFormatVersion = 1;
constexpr size_t kShardHeaderBytes = 16;
constexpr size_t kShardFooterBytes = 16;
constexpr size_t kBlockCrcBytes = 4;
constexpr size_t kRecordBytesMax = 64u << 20;

// Standard CRC32C (Castagnoli; "123456789" -> 0xe3069283), chainable: crc32c(b, crc32c(a)).
uint32_t crc32c(const void* data, size_t len, uint32_t crc = 0);

struct StripeLayout {
  uint64_t data_bytes = 0;   // bytes of data carried (0 for MULTIPART and UPLOAD records)
  uint32_t k = 1;
  uint32_t m = 0;
  uint32_t block_bytes = 1;  // B
  uint32_t rotation = 0;

  static StripeLayout of(const cairn::v1::ObjectRecord& rec);

  uint32_t shards() const { return k + m; }
  uint64_t stripe_bytes() const { return static_cast<uint64_t>(k) * block_bytes; }
  uint64_t stripes() const { return (data_bytes + stripe_bytes() - 1) / stripe_bytes(); }
  uint64_t stripe_data_bytes(uint64_t stripe) const;  // object bytes in this stripe
  uint32_t block_len(uint64_t stripe) const;          // B, or ceil(rest / k) for the last
  uint64_t block_offset(uint64_t stripe) const {
    return kShardHeaderBytes + stripe * (static_cast<uint64_t>(block_bytes) + kBlockCrcBytes);
  }
  uint64_t blocks_end() const;  // file offset where the trailer starts
  int drive_of(int shard) const { return static_cast<int>((shard + rotation) % shards()); }
  int shard_on(int drive) const {
    return static_cast<int>((drive + shards() - rotation % shards()) % shards());
  }
};

class ShardFileWriter {
 public:
  ShardFileWriter() = default;
  ShardFileWriter(const ShardFileWriter&) = delete;
  ShardFileWriter& operator=(const ShardFileWriter&) = delete;
  ~ShardFileWriter() { close(); }

  Status create(const std::string& path);  // truncates; writes the header
  Status append_block(const uint8_t* data, uint32_t len);
  // Writes the trailer, fsyncs and closes. The file stays at path().
  Status finish(const cairn::v1::ObjectRecord& rec);
  void close();
  bool is_open() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }

 private:
  Status write_all(const void* data, size_t len);
  int fd_ = -1;
  std::string path_;
};

class ShardFileReader {
 public:
  ShardFileReader() = default;
  ShardFileReader(const ShardFileReader&) = delete;
  ShardFileReader& operator=(const ShardFileReader&) = delete;
  ShardFileReader(ShardFileReader&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  ~ShardFileReader() { close(); }

  Status open(const std::string& path);  // errno codes (ENOENT: the shard is missing)
  void close();
  bool is_open() const { return fd_ >= 0; }

  // Reads block `stripe` (layout.block_len(stripe) bytes) into buf and verifies its CRC:
  // Errc::corrupt on a mismatch or a short file.
  Status read_block(const StripeLayout& layout, uint64_t stripe, uint8_t* buf) const;
  // Reads and verifies the header and trailer; returns the record. Errc::corrupt when damaged.
  // *file_bytes (optional) receives the file's length.
  Result<cairn::v1::ObjectRecord> read_record(uint64_t* file_bytes = nullptr) const;

 private:
  int fd_ = -1;
};

// Full check of one shard file against the record it should hold: header, trailer, id, kind,
// shard index and geometry, file length, and every block's CRC. on_bytes(n) is called after
// each block (heal's rate limiter). Errc::corrupt when damaged, errno codes when unreadable.
Status verify_shard_file(const std::string& path, const cairn::v1::ObjectRecord& expect,
                         uint32_t shard_index, const std::function<void(uint64_t)>& on_bytes);

}  // namespace cairn::objectd::engine
