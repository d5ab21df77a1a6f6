// Shared helpers of the blockd unit tests: temp dirs, seeds, fault arming, a Reactor thread.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "common/assert.h"
#include "common/fault.h"
#include "common/reactor.h"
#include "common/reactor_thread.h"
#include "temp_dir.h"

namespace cairn::blockd::test {

using cairn::test::TempDir;

// The seed of a random test: CAIRN_SEED if set, else `fallback`; printed for replay.
inline uint64_t test_seed(uint64_t fallback) {
  const char* env = getenv("CAIRN_SEED");
  uint64_t seed = env != nullptr ? strtoull(env, nullptr, 10) : fallback;
  printf("CAIRN_SEED=%llu\n", static_cast<unsigned long long>(seed));
  return seed;
}

// Arms one fault point for the scope of a test, and disarms it after.
class ScopedFault {
 public:
  explicit ScopedFault(const std::string& spec) {
    setenv("CAIRN_FAULTS", spec.c_str(), 1);
    CAIRN_ASSERT(arm_faults_from_env());
  }
  ~ScopedFault() {
    setenv("CAIRN_FAULTS", "blockd.test.none:error=EIO", 1);  // an empty spec would not disarm
    CAIRN_ASSERT(arm_faults_from_env());
    unsetenv("CAIRN_FAULTS");
  }
};

using ::cairn::ReactorThread;

// Which BlockDevice a store-level test runs over.
enum class Backend { sim, uring };
inline const char* backend_name(Backend b) { return b == Backend::sim ? "sim" : "uring"; }

}  // namespace cairn::blockd::test
