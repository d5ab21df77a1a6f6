// ErasureCoder: Reed-Solomon k data + m parity shards over GF(2^8), computed by ISA-L.
//
// Immutable after construction; thread-safe (encode tables are built once; decode tables are
// built per call on the caller's stack/heap). Limits: 1 <= k <= 16, 0 <= m <= 4 (k + m <= 20).
// All shards of one call have the same length; any length is accepted (ISA-L is fastest with
// multiples of 64 bytes). Shard order: 0..k-1 data, k..k+m-1 parity. Matrix: ISA-L's Cauchy
// matrix (gf_gen_cauchy1_matrix), so every k x k submatrix is invertible. Format:
// docs/FORMAT-objectd.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/result.h"

namespace cairn::objectd {

class ErasureCoder {
 public:
  static constexpr int kDataShardsMax = 16;
  static constexpr int kParityShardsMax = 4;

  // invalid_argument for k/m out of range.
  static Result<std::unique_ptr<ErasureCoder>> create(int k, int m);
  ~ErasureCoder();

  int data_shards() const { return k_; }
  int parity_shards() const { return m_; }

  // Computes the m parity shards from the k data shards. shards.size() == k + m.
  void encode(const std::vector<uint8_t*>& shards, size_t shard_bytes) const;

  // Rebuilds the shards whose `present[i]` is false from any k present ones, in place.
  // shards.size() == present.size() == k + m. Fails with invalid_argument when fewer than
  // k shards are present.
  Status reconstruct(const std::vector<uint8_t*>& shards, const std::vector<bool>& present,
                     size_t shard_bytes) const;

 private:
  ErasureCoder(int k, int m);
  int k_, m_;
  std::vector<uint8_t> matrix_;        // (k+m) x k encode matrix
  std::vector<uint8_t> encode_tables_; // ec_init_tables of the parity rows
};

}  // namespace cairn::objectd
