// ErasureCoder (ISA-L) checked against a plain Reed-Solomon coder written here: GF(2^8) with the
// polynomial 0x11d and the same Cauchy matrix as ISA-L's gf_gen_cauchy1_matrix (identity on
// top; row i >= k, column j: 1 / (i ^ j)). Parity must be equal byte for byte, and every
// erasure pattern of up to m shards must reconstruct the original shards.
#include "objectd/erasure.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "objectd/errors.h"

namespace cairn::objectd {
namespace {

uint64_t test_seed() {
  static const uint64_t seed = [] {
    const char* env = getenv("CAIRN_SEED");
    uint64_t s = env != nullptr ? strtoull(env, nullptr, 10) : std::random_device()();
    printf("erasure_test seed: %llu (replay with CAIRN_SEED=%llu)\n",
           static_cast<unsigned long long>(s), static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

// Reference GF(2^8) arithmetic, polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11d).
struct Gf {
  uint8_t exp[512];
  uint8_t log[256];
  Gf() {
    int x = 1;
    for (int i = 0; i < 255; ++i) {
      exp[i] = static_cast<uint8_t>(x);
      log[x] = static_cast<uint8_t>(i);
      x <<= 1;
      if (x & 0x100) x ^= 0x11d;
    }
    for (int i = 255; i < 512; ++i) exp[i] = exp[i - 255];
    log[0] = 0;
  }
  uint8_t mul(uint8_t a, uint8_t b) const {
    if (a == 0 || b == 0) return 0;
    return exp[log[a] + log[b]];
  }
  uint8_t inv(uint8_t a) const { return exp[255 - log[a]]; }
};
const Gf gf;

class ReferenceRs {
 public:
  ReferenceRs(int k, int m) : k_(k), m_(m), a_((k + m) * k, 0) {
    for (int i = 0; i < k; ++i) a_[i * k + i] = 1;
    for (int i = k; i < k + m; ++i)
      for (int j = 0; j < k; ++j) a_[i * k + j] = gf.inv(static_cast<uint8_t>(i ^ j));
  }
  void encode(std::vector<std::vector<uint8_t>>& shards) const {
    size_t len = shards[0].size();
    for (int p = k_; p < k_ + m_; ++p) {
      for (size_t b = 0; b < len; ++b) {
        uint8_t s = 0;
        for (int j = 0; j < k_; ++j) s ^= gf.mul(a_[p * k_ + j], shards[j][b]);
        shards[p][b] = s;
      }
    }
  }
  // Solves for the data from the first k present shards (Gauss-Jordan), then re-encodes.
  bool reconstruct(std::vector<std::vector<uint8_t>>& shards, const std::vector<bool>& present) const {
    std::vector<int> rows;
    for (int i = 0; i < k_ + m_ && static_cast<int>(rows.size()) < k_; ++i)
      if (present[i]) rows.push_back(i);
    if (static_cast<int>(rows.size()) < k_) return false;
    size_t len = shards[0].size();
    // Augmented system: M (k x k) * data = survivors.
    std::vector<std::vector<uint8_t>> mat(k_, std::vector<uint8_t>(k_));
    std::vector<std::vector<uint8_t>> rhs(k_);
    for (int r = 0; r < k_; ++r) {
      for (int c = 0; c < k_; ++c) mat[r][c] = a_[rows[r] * k_ + c];
      rhs[r] = shards[rows[r]];
    }
    for (int col = 0; col < k_; ++col) {
      int piv = col;
      while (piv < k_ && mat[piv][col] == 0) ++piv;
      if (piv == k_) return false;
      std::swap(mat[piv], mat[col]);
      std::swap(rhs[piv], rhs[col]);
      uint8_t f = gf.inv(mat[col][col]);
      for (int c = 0; c < k_; ++c) mat[col][c] = gf.mul(mat[col][c], f);
      for (size_t b = 0; b < len; ++b) rhs[col][b] = gf.mul(rhs[col][b], f);
      for (int r = 0; r < k_; ++r) {
        if (r == col || mat[r][col] == 0) continue;
        uint8_t g = mat[r][col];
        for (int c = 0; c < k_; ++c) mat[r][c] ^= gf.mul(g, mat[col][c]);
        for (size_t b = 0; b < len; ++b) rhs[r][b] ^= gf.mul(g, rhs[col][b]);
      }
    }
    for (int j = 0; j < k_; ++j) shards[j] = rhs[j];
    encode(shards);
    return true;
  }

 private:
  int k_, m_;
  std::vector<uint8_t> a_;
};

std::vector<std::vector<uint8_t>> random_shards(int k, int m, size_t len, std::mt19937_64& rng) {
  std::vector<std::vector<uint8_t>> shards(k + m, std::vector<uint8_t>(len, 0));
  for (int i = 0; i < k; ++i)
    for (auto& b : shards[i]) b = static_cast<uint8_t>(rng());
  return shards;
}

std::vector<uint8_t*> pointers(std::vector<std::vector<uint8_t>>& shards) {
  std::vector<uint8_t*> p;
  for (auto& s : shards) p.push_back(s.data());
  return p;
}

// Calls f(mask) for every subset of {0..n-1} with 1..max_size members.
template <class F>
void for_each_erasure(int n, int max_size, F&& f) {
  for (uint32_t mask = 1; mask < (1u << n); ++mask)
    if (__builtin_popcount(mask) <= max_size) f(mask);
}

struct Code {
  int k, m;
};
const Code kCodes[] = {{4, 2}, {8, 3}, {16, 4}, {1, 0}, {2, 1}, {1, 4}, {3, 3}, {12, 4}};
const size_t kLengths[] = {1, 7, 63, 64, 65, 1031};

TEST(ErasureCoder, ParityMatchesReferenceCoder) {
  std::mt19937_64 rng(test_seed());
  for (Code code : kCodes) {
    auto coder = ErasureCoder::create(code.k, code.m);
    ASSERT_TRUE(coder) << code.k << "+" << code.m;
    ReferenceRs ref(code.k, code.m);
    for (size_t len : kLengths) {
      SCOPED_TRACE(std::to_string(code.k) + "+" + std::to_string(code.m) + " len " +
                   std::to_string(len));
      auto shards = random_shards(code.k, code.m, len, rng);
      auto expect = shards;
      ref.encode(expect);
      coder.value()->encode(pointers(shards), len);
      EXPECT_EQ(shards, expect);
    }
  }
}

TEST(ErasureCoder, ReconstructsEveryErasurePatternUpToM) {
  std::mt19937_64 rng(test_seed() + 1);
  for (Code code : kCodes) {
    const int n = code.k + code.m;
    auto coder = ErasureCoder::create(code.k, code.m);
    ASSERT_TRUE(coder);
    for (size_t len : {size_t{1}, size_t{65}, size_t{1031}}) {
      auto original = random_shards(code.k, code.m, len, rng);
      coder.value()->encode(pointers(original), len);
      int patterns = 0;
      for_each_erasure(n, code.m, [&](uint32_t mask) {
        auto shards = original;
        std::vector<bool> present(n, true);
        for (int i = 0; i < n; ++i) {
          if (mask & (1u << i)) {
            present[i] = false;
            for (auto& b : shards[i]) b = static_cast<uint8_t>(rng());  // garbage
          }
        }
        Status st = coder.value()->reconstruct(pointers(shards), present, len);
        ASSERT_TRUE(st) << "mask " << mask;
        ASSERT_EQ(shards, original) << code.k << "+" << code.m << " len " << len << " mask "
                                    << mask;
        ++patterns;
      });
      if (code.m == 0) {
        EXPECT_EQ(patterns, 0);
      }
    }
  }
}

TEST(ErasureCoder, ReferenceDecoderAgreesOnEveryPattern) {
  // The reference decoder solving the same systems independently gives the same shards.
  std::mt19937_64 rng(test_seed() + 2);
  for (Code code : {Code{4, 2}, Code{5, 3}, Code{2, 1}}) {
    const int n = code.k + code.m;
    auto coder = ErasureCoder::create(code.k, code.m);
    ASSERT_TRUE(coder);
    ReferenceRs ref(code.k, code.m);
    auto original = random_shards(code.k, code.m, 33, rng);
    ref.encode(original);
    for_each_erasure(n, code.m, [&](uint32_t mask) {
      std::vector<bool> present(n, true);
      auto a = original;
      auto b = original;
      for (int i = 0; i < n; ++i) {
        if (mask & (1u << i)) {
          present[i] = false;
          std::fill(a[i].begin(), a[i].end(), 0xa5);
          std::fill(b[i].begin(), b[i].end(), 0x5a);
        }
      }
      ASSERT_TRUE(coder.value()->reconstruct(pointers(a), present, 33));
      ASSERT_TRUE(ref.reconstruct(b, present));
      ASSERT_EQ(a, b) << "mask " << mask;
      ASSERT_EQ(a, original);
    });
  }
}

TEST(ErasureCoder, NothingMissingIsANoOp) {
  auto coder = ErasureCoder::create(4, 2);
  ASSERT_TRUE(coder);
  std::mt19937_64 rng(test_seed() + 3);
  auto shards = random_shards(4, 2, 100, rng);
  coder.value()->encode(pointers(shards), 100);
  auto copy = shards;
  EXPECT_TRUE(coder.value()->reconstruct(pointers(copy), std::vector<bool>(6, true), 100));
  EXPECT_EQ(copy, shards);
}

TEST(ErasureCoder, TooFewShardsIsAnError) {
  auto coder = ErasureCoder::create(4, 2);
  ASSERT_TRUE(coder);
  std::vector<std::vector<uint8_t>> shards(6, std::vector<uint8_t>(16, 1));
  std::vector<bool> present = {true, false, true, false, true, false};
  Status st = coder.value()->reconstruct(pointers(shards), present, 16);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error(), ObjErrc::invalid_argument);
}

TEST(ErasureCoder, RejectsUnsupportedCodes) {
  EXPECT_FALSE(ErasureCoder::create(0, 2));
  EXPECT_FALSE(ErasureCoder::create(17, 2));
  EXPECT_FALSE(ErasureCoder::create(4, 5));
  EXPECT_FALSE(ErasureCoder::create(4, -1));
  auto ok16 = ErasureCoder::create(16, 4);
  ASSERT_TRUE(ok16);
  EXPECT_EQ(ok16.value()->data_shards(), 16);
  EXPECT_EQ(ok16.value()->parity_shards(), 4);
}

}  // namespace
}  // namespace cairn::objectd
