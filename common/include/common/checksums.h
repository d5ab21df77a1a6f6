// Checksums S3 clients send: the x-amz-checksum-* algorithms (CRC32, CRC32C, CRC64NVME,
// SHA1, SHA256) as incremental engines, plus MD5 for Content-MD5 and ETags.
//
// Values are what S3 puts on the wire: the base64 of the big-endian digest (a CRC32 of
// 0xCBF43926 is "y/Q5Jg=="). CRC32 and CRC32C run on ISA-L, CRC64NVME on a slicing-by-8
// table (ISA-L 2.30 has no NVMe polynomial), the hashes on OpenSSL EVP.
//
// A Checksum is a value owned by whoever hashes one body; not thread-safe; finish_*() may
// be called once. No limits: update() takes any length.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace cairn {

enum class ChecksumAlgorithm { crc32, crc32c, crc64nvme, sha1, sha256 };

// "CRC32", "crc32c", "Crc64Nvme", ... (case-insensitive); nullopt for anything else.
std::optional<ChecksumAlgorithm> parse_checksum_algorithm(std::string_view name);
// The S3 spelling: "CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256".
std::string_view checksum_algorithm_name(ChecksumAlgorithm algorithm);
// "x-amz-checksum-crc32", ...: the header (or trailer) that carries the value.
std::string_view checksum_header_name(ChecksumAlgorithm algorithm);
// Maps "x-amz-checksum-crc32c" (any case) back to its algorithm.
std::optional<ChecksumAlgorithm> checksum_algorithm_from_header(std::string_view header_name);
// Length in bytes of the raw digest (4, 4, 8, 20, 32).
size_t checksum_digest_bytes(ChecksumAlgorithm algorithm);

class Checksum {
 public:
  virtual ~Checksum() = default;
  virtual ChecksumAlgorithm algorithm() const = 0;
  virtual void update(const void* data, size_t size_bytes) = 0;
  void update(std::string_view data) { update(data.data(), data.size()); }
  // The digest, big-endian, base64 (as in x-amz-checksum-*). Call once.
  virtual std::string finish_base64() = 0;
};

std::unique_ptr<Checksum> make_checksum(ChecksumAlgorithm algorithm);
// nullptr for an unknown name.
std::unique_ptr<Checksum> make_checksum(std::string_view algorithm_name);

// Raw CRC functions with zlib's convention: start from 0, feed the previous result back
// to continue, the return value is the final CRC (no further inversion).
uint32_t crc32_update(uint32_t crc, const void* data, size_t size_bytes);
uint32_t crc32c_update(uint32_t crc, const void* data, size_t size_bytes);
uint64_t crc64nvme_update(uint64_t crc, const void* data, size_t size_bytes);

// Incremental MD5 (Content-MD5 is base64, ETags are hex).
class Md5 {
 public:
  Md5();
  ~Md5();
  Md5(const Md5&) = delete;
  Md5& operator=(const Md5&) = delete;
  void update(const void* data, size_t size_bytes);
  void update(std::string_view data) { update(data.data(), data.size()); }
  std::array<uint8_t, 16> finish();  // call once

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string md5_hex(std::string_view data);
std::string md5_base64(std::string_view data);

// Standard base64 with padding. decode returns nullopt for malformed input.
std::string base64_encode(const void* data, size_t size_bytes);
std::optional<std::string> base64_decode(std::string_view text);
std::string hex_encode(const void* data, size_t size_bytes);  // lowercase

}  // namespace cairn
