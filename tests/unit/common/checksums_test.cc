#include "common/checksums.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

namespace cairn {
namespace {

constexpr std::string_view k_check_input = "123456789";

std::string one_shot(ChecksumAlgorithm algorithm, std::string_view data) {
  auto c = make_checksum(algorithm);
  c->update(data);
  return c->finish_base64();
}

TEST(Checksums, CrcCheckValues) {
  // The CRC catalogue's check values (input "123456789"):
  //   CRC-32/ISO-HDLC (zlib) 0xCBF43926, CRC-32/ISCSI 0xE3069283,
  //   CRC-64/NVME 0xAE8B14860A799888 (poly 0xAD93D23594C93659, reflected, init/xorout ~0;
  //   the value the AWS SDKs and crc64fast-nvme test against).
  EXPECT_EQ(crc32_update(0, k_check_input.data(), k_check_input.size()), 0xCBF43926u);
  EXPECT_EQ(crc32c_update(0, k_check_input.data(), k_check_input.size()), 0xE3069283u);
  EXPECT_EQ(crc64nvme_update(0, k_check_input.data(), k_check_input.size()), 0xAE8B14860A799888ull);
  EXPECT_EQ(crc32_update(0, nullptr, 0), 0u);
  EXPECT_EQ(crc64nvme_update(0, nullptr, 0), 0u);
}

TEST(Checksums, Crc64NvmeSpecVectors) {
  // NVM Express NVM Command Set Specification 1.0d, section 5.2.1.3.5, figure 122 (also in
  // the Linux kernel's crypto/testmgr.h): 4 KiB of 0x00 and of 0xFF.
  const std::string zeros(4096, '\0'), ones(4096, '\xff');
  EXPECT_EQ(crc64nvme_update(0, zeros.data(), zeros.size()), 0x6482D367EB22B64Eull);
  EXPECT_EQ(crc64nvme_update(0, ones.data(), ones.size()), 0xC0DDBA7302ECA3ACull);
}

TEST(Checksums, Base64OfBigEndianDigest) {
  EXPECT_EQ(one_shot(ChecksumAlgorithm::crc32, k_check_input), "y/Q5Jg==");
  EXPECT_EQ(one_shot(ChecksumAlgorithm::crc32c, k_check_input), "4waSgw==");
  EXPECT_EQ(one_shot(ChecksumAlgorithm::crc64nvme, k_check_input), "rosUhgp5mIg=");
  // FIPS 180 "abc" vectors.
  EXPECT_EQ(one_shot(ChecksumAlgorithm::sha1, "abc"), "qZk+NkcGgWq6PiVxeFDCbJzQ2J0=");
  EXPECT_EQ(one_shot(ChecksumAlgorithm::sha256, "abc"),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=");
  // AWS sigv4-streaming-trailers example: x-amz-checksum-crc32c of 66560 'a' is sOO8/Q==.
  EXPECT_EQ(one_shot(ChecksumAlgorithm::crc32c, std::string(66560, 'a')), "sOO8/Q==");
}

TEST(Checksums, IncrementalEqualsOneShot) {
  std::mt19937 rng(7);
  std::string data(100003, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  for (auto algorithm : {ChecksumAlgorithm::crc32, ChecksumAlgorithm::crc32c,
                         ChecksumAlgorithm::crc64nvme, ChecksumAlgorithm::sha1,
                         ChecksumAlgorithm::sha256}) {
    const std::string expected = one_shot(algorithm, data);
    for (size_t piece : {1u, 3u, 7u, 64u, 4095u, 65536u}) {
      auto c = make_checksum(algorithm);
      for (size_t off = 0; off < data.size(); off += piece) {
        c->update(std::string_view(data).substr(off, piece));
      }
      EXPECT_EQ(c->finish_base64(), expected) << checksum_algorithm_name(algorithm) << " " << piece;
    }
  }
}

TEST(Checksums, FactoryByNameIsCaseInsensitive) {
  for (std::string_view name : {"CRC32", "crc32c", "Crc64Nvme", "sha1", "SHA256"}) {
    auto c = make_checksum(name);
    ASSERT_NE(c, nullptr) << name;
  }
  EXPECT_EQ(make_checksum("crc32c")->algorithm(), ChecksumAlgorithm::crc32c);
  EXPECT_EQ(make_checksum("MD5"), nullptr);
  EXPECT_EQ(make_checksum(""), nullptr);
  EXPECT_EQ(checksum_header_name(ChecksumAlgorithm::crc64nvme), "x-amz-checksum-crc64nvme");
  EXPECT_EQ(checksum_algorithm_from_header("X-Amz-Checksum-SHA1"), ChecksumAlgorithm::sha1);
  EXPECT_EQ(checksum_algorithm_from_header("x-amz-checksum-md5"), std::nullopt);
}

TEST(Checksums, Md5HexAndBase64) {
  // RFC 1321 test suite.
  EXPECT_EQ(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
  EXPECT_EQ(md5_hex("abc"), "900150983cd24fb0d6963f7d28e17f72");
  EXPECT_EQ(md5_base64(""), "1B2M2Y8AsgTpgAmY7PhCfg==");
  Md5 md5;
  md5.update("a");
  md5.update("bc");
  const auto d = md5.finish();
  EXPECT_EQ(hex_encode(d.data(), d.size()), "900150983cd24fb0d6963f7d28e17f72");
}

TEST(Checksums, Base64RoundTripAndRejects) {
  for (std::string s : {"", "f", "fo", "foo", "foob", "fooba", "foobar"}) {
    const std::string e = base64_encode(s.data(), s.size());
    EXPECT_EQ(base64_decode(e), s) << e;
  }
  EXPECT_EQ(base64_encode("foobar", 6), "Zm9vYmFy");  // RFC 4648 section 10
  EXPECT_EQ(base64_decode("Zm8="), "fo");
  EXPECT_FALSE(base64_decode("Zm8"));
  EXPECT_FALSE(base64_decode("Zm=8"));
  EXPECT_FALSE(base64_decode("Z==="));
  EXPECT_FALSE(base64_decode("Zm 8"));
  EXPECT_FALSE(base64_decode("Zm8*"));
}

}  // namespace
}  // namespace cairn
