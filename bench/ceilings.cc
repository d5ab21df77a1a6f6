// cairn_bench_ceilings: single-core rates of the CPU work an objectd PUT does per byte, for
// bench/s3_bench.py to print beside the measured numbers. Prints one JSON object:
//   isal_encode_mb_s  ISA-L Reed-Solomon k+m encode (objectd's Cauchy matrix), data bytes in
//   md5_mb_s          OpenSSL MD5 (the ETag)
//   crc32c_mb_s       ISA-L CRC32C (one per shard block, over data and parity)
//   put_cpu_mb_s      the three together as a PUT does them: MD5 + encode + CRC32C of
//                     (k+m)/k of the bytes, one after the other on one core
// MB = 10^6 bytes. Usage: cairn_bench_ceilings [--seconds S] [--k K] [--m M] [--block-bytes B]
#include <isa-l/crc.h>
#include <isa-l/erasure_code.h>
#include <openssl/evp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

// Runs fn(bytes) repeatedly for about `seconds`; returns bytes per second in MB/s.
template <class F>
double rate_mb_s(double seconds, size_t bytes_per_call, F fn) {
  fn();  // warm caches and tables
  auto start = Clock::now();
  uint64_t bytes = 0;
  double elapsed = 0;
  do {
    fn();
    bytes += bytes_per_call;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < seconds);
  return static_cast<double>(bytes) / elapsed / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 2;
  int k = 4, m = 2;
  size_t block = 256 * 1024;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--k")) k = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--m")) m = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--block-bytes")) block = strtoull(argv[i + 1], nullptr, 10);
    else {
      fprintf(stderr, "usage: %s [--seconds S] [--k K] [--m M] [--block-bytes B]\n", argv[0]);
      return 2;
    }
  }
  if (k < 1 || m < 1 || k + m > 32 || block == 0 || seconds <= 0) {
    fprintf(stderr, "bad arguments\n");
    return 2;
  }
  // 16 stripes of data, so the working set is bigger than the L2 cache like a real stream.
  const int stripes = 16;
  const size_t stripe_bytes = static_cast<size_t>(k) * block;
  std::vector<uint8_t> data(stripes * stripe_bytes), parity(static_cast<size_t>(m) * block);
  std::mt19937_64 rng(1);
  for (auto& b : data) b = static_cast<uint8_t>(rng());

  std::vector<uint8_t> matrix(static_cast<size_t>(k + m) * k), tables(32ull * k * m);
  gf_gen_cauchy1_matrix(matrix.data(), k + m, k);
  ec_init_tables(k, m, &matrix[static_cast<size_t>(k) * k], tables.data());
  std::vector<uint8_t*> in(k), out(m);
  for (int j = 0; j < m; ++j) out[j] = parity.data() + static_cast<size_t>(j) * block;
  int s = 0;
  auto encode_stripe = [&] {
    for (int j = 0; j < k; ++j) in[j] = data.data() + s * stripe_bytes + static_cast<size_t>(j) * block;
    ec_encode_data(static_cast<int>(block), k, m, tables.data(), in.data(), out.data());
    s = (s + 1) % stripes;
  };
  double encode = rate_mb_s(seconds, stripe_bytes, encode_stripe);

  EVP_MD_CTX* md5 = EVP_MD_CTX_new();
  EVP_DigestInit_ex(md5, EVP_md5(), nullptr);
  auto md5_stripe = [&] {
    EVP_DigestUpdate(md5, data.data() + s * stripe_bytes, stripe_bytes);
    s = (s + 1) % stripes;
  };
  double md5_rate = rate_mb_s(seconds, stripe_bytes, md5_stripe);

  uint32_t crc = 0;
  auto crc_stripe = [&] {
    crc = crc32_iscsi(data.data() + s * stripe_bytes, static_cast<int>(stripe_bytes), crc);
    s = (s + 1) % stripes;
  };
  double crc_rate = rate_mb_s(seconds, stripe_bytes, crc_stripe);

  auto put_stripe = [&] {
    const size_t at = s * stripe_bytes;
    EVP_DigestUpdate(md5, data.data() + at, stripe_bytes);
    encode_stripe();  // advances s
    for (int j = 0; j < k; ++j) crc = crc32_iscsi(data.data() + at + j * block, static_cast<int>(block), crc);
    for (int j = 0; j < m; ++j) crc = crc32_iscsi(out[j], static_cast<int>(block), crc);
  };
  double put_rate = rate_mb_s(seconds, stripe_bytes, put_stripe);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  EVP_DigestFinal_ex(md5, digest, &digest_len);
  EVP_MD_CTX_free(md5);

  printf("{\"k\": %d, \"m\": %d, \"block_bytes\": %zu, \"isal_encode_mb_s\": %.1f, "
         "\"md5_mb_s\": %.1f, \"crc32c_mb_s\": %.1f, \"put_cpu_mb_s\": %.1f, "
         "\"checksum_sink\": %u}\n",
         k, m, block, encode, md5_rate, crc_rate, put_rate, crc ^ digest[0]);
  return 0;
}
