#include "objectd/erasure.h"

#include <isa-l/erasure_code.h>

#include "common/assert.h"
#include "objectd/errors.h"

namespace cairn::objectd {

Result<std::unique_ptr<ErasureCoder>> ErasureCoder::create(int k, int m) {
  if (k < 1 || k > kDataShardsMax || m < 0 || m > kParityShardsMax)
    return ObjErrc::invalid_argument;
  return std::unique_ptr<ErasureCoder>(new ErasureCoder(k, m));
}

ErasureCoder::ErasureCoder(int k, int m) : k_(k), m_(m) {
  matrix_.resize(static_cast<size_t>(k + m) * k);
  gf_gen_cauchy1_matrix(matrix_.data(), k + m, k);
  if (m > 0) {
    encode_tables_.resize(static_cast<size_t>(32) * k * m);
    ec_init_tables(k, m, &matrix_[static_cast<size_t>(k) * k], encode_tables_.data());
  }
}

ErasureCoder::~ErasureCoder() = default;

void ErasureCoder::encode(const std::vector<uint8_t*>& shards, size_t shard_bytes) const {
  CAIRN_ASSERT(shards.size() == static_cast<size_t>(k_ + m_));
  if (m_ == 0 || shard_bytes == 0) return;
  CAIRN_ASSERT(shard_bytes <= static_cast<size_t>(INT32_MAX));
  ec_encode_data(static_cast<int>(shard_bytes), k_, m_,
                 const_cast<unsigned char*>(encode_tables_.data()),
                 const_cast<unsigned char**>(shards.data()),
                 const_cast<unsigned char**>(shards.data() + k_));
}

Status ErasureCoder::reconstruct(const std::vector<uint8_t*>& shards,
                                 const std::vector<bool>& present, size_t shard_bytes) const {
  const int n = k_ + m_;
  CAIRN_ASSERT(shards.size() == static_cast<size_t>(n));
  CAIRN_ASSERT(present.size() == static_cast<size_t>(n));
  std::vector<int> survivors, missing;
  for (int i = 0; i < n; ++i) {
    if (present[i]) {
      if (static_cast<int>(survivors.size()) < k_) survivors.push_back(i);
    } else {
      missing.push_back(i);
    }
  }
  if (static_cast<int>(survivors.size()) < k_) return ObjErrc::invalid_argument;
  if (missing.empty() || shard_bytes == 0) return ok();
  CAIRN_ASSERT(shard_bytes <= static_cast<size_t>(INT32_MAX));

  // Rows of the surviving shards form an invertible k x k matrix (Cauchy property); its
  // inverse maps survivors back to data. A missing parity row is its encode row times it.
  const size_t kk = static_cast<size_t>(k_) * k_;
  std::vector<uint8_t> sub(kk), inv(kk);
  for (int r = 0; r < k_; ++r)
    for (int c = 0; c < k_; ++c) sub[r * k_ + c] = matrix_[survivors[r] * k_ + c];
  if (gf_invert_matrix(sub.data(), inv.data(), k_) != 0) return ObjErrc::data_corrupt;

  const int rows = static_cast<int>(missing.size());
  std::vector<uint8_t> decode(static_cast<size_t>(rows) * k_);
  for (int r = 0; r < rows; ++r) {
    const int lost = missing[r];
    if (lost < k_) {
      for (int c = 0; c < k_; ++c) decode[r * k_ + c] = inv[lost * k_ + c];
    } else {
      for (int c = 0; c < k_; ++c) {
        uint8_t s = 0;
        for (int j = 0; j < k_; ++j) s ^= gf_mul(matrix_[lost * k_ + j], inv[j * k_ + c]);
        decode[r * k_ + c] = s;
      }
    }
  }
  std::vector<uint8_t> tables(static_cast<size_t>(32) * k_ * rows);
  ec_init_tables(k_, rows, decode.data(), tables.data());
  std::vector<uint8_t*> in(k_), out(rows);
  for (int i = 0; i < k_; ++i) in[i] = shards[survivors[i]];
  for (int r = 0; r < rows; ++r) out[r] = shards[missing[r]];
  ec_encode_data(static_cast<int>(shard_bytes), k_, rows, tables.data(), in.data(), out.data());
  return ok();
}

}  // namespace cairn::objectd
