#include "common/checksums.h"

#include <isa-l/crc.h>
#include <openssl/evp.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "common/assert.h"

namespace cairn {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

// CRC-64/NVME: reflected, poly 0xAD93D23594C93659 (0x9A6C9329AC4BC9B5 reflected),
// init and xorout all ones. Slicing-by-8 tables, built at compile time.
constexpr uint64_t k_crc64nvme_poly_reflected = 0x9A6C9329AC4BC9B5ull;

struct Crc64Tables {
  uint64_t t[8][256];
};

constexpr Crc64Tables make_crc64_tables() {
  Crc64Tables tables{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint64_t crc = i;
    for (int bit = 0; bit < 8; ++bit) {
      crc = (crc & 1) ? (crc >> 1) ^ k_crc64nvme_poly_reflected : crc >> 1;
    }
    tables.t[0][i] = crc;
  }
  for (int k = 1; k < 8; ++k) {
    for (uint32_t i = 0; i < 256; ++i) {
      const uint64_t prev = tables.t[k - 1][i];
      tables.t[k][i] = (prev >> 8) ^ tables.t[0][prev & 0xff];
    }
  }
  return tables;
}

constexpr Crc64Tables k_crc64_tables = make_crc64_tables();

template <class Int>
void store_be(Int v, uint8_t* out) {
  for (size_t i = 0; i < sizeof(Int); ++i) {
    out[i] = static_cast<uint8_t>(v >> (8 * (sizeof(Int) - 1 - i)));
  }
}

class Crc32Checksum final : public Checksum {
 public:
  explicit Crc32Checksum(bool castagnoli) : castagnoli_(castagnoli) {}
  ChecksumAlgorithm algorithm() const override {
    return castagnoli_ ? ChecksumAlgorithm::crc32c : ChecksumAlgorithm::crc32;
  }
  void update(const void* data, size_t size_bytes) override {
    crc_ = castagnoli_ ? crc32c_update(crc_, data, size_bytes)
                       : crc32_update(crc_, data, size_bytes);
  }
  std::string finish_base64() override {
    uint8_t out[4];
    store_be(crc_, out);
    return base64_encode(out, sizeof out);
  }

 private:
  bool castagnoli_;
  uint32_t crc_ = 0;
};

class Crc64NvmeChecksum final : public Checksum {
 public:
  ChecksumAlgorithm algorithm() const override { return ChecksumAlgorithm::crc64nvme; }
  void update(const void* data, size_t size_bytes) override {
    crc_ = crc64nvme_update(crc_, data, size_bytes);
  }
  std::string finish_base64() override {
    uint8_t out[8];
    store_be(crc_, out);
    return base64_encode(out, sizeof out);
  }

 private:
  uint64_t crc_ = 0;
};

class EvpChecksum final : public Checksum {
 public:
  explicit EvpChecksum(ChecksumAlgorithm algorithm) : algorithm_(algorithm) {
    ctx_ = EVP_MD_CTX_new();
    CAIRN_ASSERT(ctx_ != nullptr);
    const EVP_MD* md = algorithm == ChecksumAlgorithm::sha1 ? EVP_sha1() : EVP_sha256();
    CAIRN_ASSERT(EVP_DigestInit_ex(ctx_, md, nullptr) == 1);
  }
  ~EvpChecksum() override { EVP_MD_CTX_free(ctx_); }
  EvpChecksum(const EvpChecksum&) = delete;
  EvpChecksum& operator=(const EvpChecksum&) = delete;

  ChecksumAlgorithm algorithm() const override { return algorithm_; }
  void update(const void* data, size_t size_bytes) override {
    CAIRN_ASSERT(EVP_DigestUpdate(ctx_, data, size_bytes) == 1);
  }
  std::string finish_base64() override {
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    CAIRN_ASSERT(EVP_DigestFinal_ex(ctx_, out, &n) == 1);
    return base64_encode(out, n);
  }

 private:
  ChecksumAlgorithm algorithm_;
  EVP_MD_CTX* ctx_ = nullptr;
};

struct AlgorithmNames {
  ChecksumAlgorithm algorithm;
  std::string_view name;
  std::string_view header;
  size_t digest_bytes;
};

constexpr AlgorithmNames k_algorithms[] = {
    {ChecksumAlgorithm::crc32, "CRC32", "x-amz-checksum-crc32", 4},
    {ChecksumAlgorithm::crc32c, "CRC32C", "x-amz-checksum-crc32c", 4},
    {ChecksumAlgorithm::crc64nvme, "CRC64NVME", "x-amz-checksum-crc64nvme", 8},
    {ChecksumAlgorithm::sha1, "SHA1", "x-amz-checksum-sha1", 20},
    {ChecksumAlgorithm::sha256, "SHA256", "x-amz-checksum-sha256", 32},
};

const AlgorithmNames& names_of(ChecksumAlgorithm algorithm) {
  for (const auto& a : k_algorithms) {
    if (a.algorithm == algorithm) return a;
  }
  CAIRN_ASSERT(false);
  __builtin_unreachable();
}

}  // namespace

std::optional<ChecksumAlgorithm> parse_checksum_algorithm(std::string_view name) {
  std::string upper(name);
  for (char& c : upper) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  for (const auto& a : k_algorithms) {
    if (a.name == upper) return a.algorithm;
  }
  return std::nullopt;
}

std::string_view checksum_algorithm_name(ChecksumAlgorithm algorithm) {
  return names_of(algorithm).name;
}

std::string_view checksum_header_name(ChecksumAlgorithm algorithm) {
  return names_of(algorithm).header;
}

std::optional<ChecksumAlgorithm> checksum_algorithm_from_header(std::string_view header_name) {
  const std::string l = lower(header_name);
  for (const auto& a : k_algorithms) {
    if (a.header == l) return a.algorithm;
  }
  return std::nullopt;
}

size_t checksum_digest_bytes(ChecksumAlgorithm algorithm) {
  return names_of(algorithm).digest_bytes;
}

std::unique_ptr<Checksum> make_checksum(ChecksumAlgorithm algorithm) {
  switch (algorithm) {
    case ChecksumAlgorithm::crc32: return std::make_unique<Crc32Checksum>(false);
    case ChecksumAlgorithm::crc32c: return std::make_unique<Crc32Checksum>(true);
    case ChecksumAlgorithm::crc64nvme: return std::make_unique<Crc64NvmeChecksum>();
    case ChecksumAlgorithm::sha1:
    case ChecksumAlgorithm::sha256: return std::make_unique<EvpChecksum>(algorithm);
  }
  CAIRN_ASSERT(false);
  __builtin_unreachable();
}

std::unique_ptr<Checksum> make_checksum(std::string_view algorithm_name) {
  const auto algorithm = parse_checksum_algorithm(algorithm_name);
  if (!algorithm) return nullptr;
  return make_checksum(*algorithm);
}

// ISA-L's crc32_gzip_refl inverts on entry and exit, so it already has zlib's convention.
uint32_t crc32_update(uint32_t crc, const void* data, size_t size_bytes) {
  return crc32_gzip_refl(crc, static_cast<const unsigned char*>(data), size_bytes);
}

// ISA-L's crc32_iscsi does no inversion: the caller starts from ~0 and inverts the end.
uint32_t crc32c_update(uint32_t crc, const void* data, size_t size_bytes) {
  auto* p = static_cast<unsigned char*>(const_cast<void*>(data));  // ISA-L does not write
  uint32_t raw = ~crc;
  while (size_bytes > 0) {
    const size_t n = std::min<size_t>(size_bytes, size_t{1} << 30);  // its length is an int
    raw = crc32_iscsi(p, static_cast<int>(n), raw);
    p += n;
    size_bytes -= n;
  }
  return ~raw;
}

uint64_t crc64nvme_update(uint64_t crc, const void* data, size_t size_bytes) {
  const auto* p = static_cast<const uint8_t*>(data);
  const auto& t = k_crc64_tables.t;
  uint64_t c = ~crc;
  while (size_bytes >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    if constexpr (__BYTE_ORDER__ == __ORDER_BIG_ENDIAN__) word = __builtin_bswap64(word);
    c ^= word;
    c = t[7][c & 0xff] ^ t[6][(c >> 8) & 0xff] ^ t[5][(c >> 16) & 0xff] ^
        t[4][(c >> 24) & 0xff] ^ t[3][(c >> 32) & 0xff] ^ t[2][(c >> 40) & 0xff] ^
        t[1][(c >> 48) & 0xff] ^ t[0][c >> 56];
    p += 8;
    size_bytes -= 8;
  }
  while (size_bytes-- > 0) c = (c >> 8) ^ t[0][(c ^ *p++) & 0xff];
  return ~c;
}

struct Md5::Impl {
  EVP_MD_CTX* ctx = nullptr;
};

Md5::Md5() : impl_(std::make_unique<Impl>()) {
  impl_->ctx = EVP_MD_CTX_new();
  CAIRN_ASSERT(impl_->ctx != nullptr);
  CAIRN_ASSERT(EVP_DigestInit_ex(impl_->ctx, EVP_md5(), nullptr) == 1);
}

Md5::~Md5() { EVP_MD_CTX_free(impl_->ctx); }

void Md5::update(const void* data, size_t size_bytes) {
  CAIRN_ASSERT(EVP_DigestUpdate(impl_->ctx, data, size_bytes) == 1);
}

std::array<uint8_t, 16> Md5::finish() {
  std::array<uint8_t, 16> out{};
  unsigned int n = 0;
  CAIRN_ASSERT(EVP_DigestFinal_ex(impl_->ctx, out.data(), &n) == 1 && n == out.size());
  return out;
}

std::string md5_hex(std::string_view data) {
  Md5 md5;
  md5.update(data);
  const auto d = md5.finish();
  return hex_encode(d.data(), d.size());
}

std::string md5_base64(std::string_view data) {
  Md5 md5;
  md5.update(data);
  const auto d = md5.finish();
  return base64_encode(d.data(), d.size());
}

std::string base64_encode(const void* data, size_t size_bytes) {
  std::string out(4 * ((size_bytes + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                static_cast<const unsigned char*>(data),
                                static_cast<int>(size_bytes));
  CAIRN_ASSERT(n >= 0);
  out.resize(static_cast<size_t>(n));
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0 || text.size() > INT_MAX) return std::nullopt;
  size_t pad = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (alnum || c == '+' || c == '/') {
      if (pad > 0) return std::nullopt;  // data after '='
    } else if (c == '=' && i + 2 >= text.size()) {
      ++pad;
    } else {
      return std::nullopt;
    }
  }
  std::string out(text.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(text.data()),
                                static_cast<int>(text.size()));
  if (n < 0 || static_cast<size_t>(n) < pad) return std::nullopt;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

std::string hex_encode(const void* data, size_t size_bytes) {
  static constexpr char k_digits[] = "0123456789abcdef";
  const auto* p = static_cast<const uint8_t*>(data);
  std::string out(2 * size_bytes, '\0');
  for (size_t i = 0; i < size_bytes; ++i) {
    out[2 * i] = k_digits[p[i] >> 4];
    out[2 * i + 1] = k_digits[p[i] & 0xf];
  }
  return out;
}

}  // namespace cairn
