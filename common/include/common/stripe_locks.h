// StripeLocks: holds the stripes of a range of extents in an array of N AsyncMutexes
// (extent e maps to stripe e % N). Stripes are taken in ascending order, so two holders
// never wait for each other in a cycle; a range of N extents or more takes every stripe
// (a barrier against every other holder). Released when destroyed. Used by blockd's
// engine (read-modify-write of one extent) and replication's ReplicatedVolume (a write and
// the resync copy of the same extent never overlap).
#pragma once

#include <array>
#include <bitset>
#include <cstdint>

#include "common/async_mutex.h"
#include "common/task.h"

namespace cairn {

template <size_t N>
class StripeLocks {
 public:
  using Stripes = std::array<AsyncMutex, N>;
  explicit StripeLocks(Stripes& stripes) : stripes_(stripes) {}
  StripeLocks(const StripeLocks&) = delete;
  StripeLocks& operator=(const StripeLocks&) = delete;
  ~StripeLocks() { unlock(); }

  // Extents [first, last].
  Task<void> lock(uint64_t first, uint64_t last) {
    std::bitset<N> want;
    if (last - first + 1 >= N) {
      want.set();
    } else {
      for (uint64_t e = first; e <= last; ++e) want.set(e % N);
    }
    for (size_t i = 0; i < N; ++i) {
      if (!want.test(i) || held_.test(i)) continue;
      co_await stripes_[i].lock();
      held_.set(i);
    }
  }
  Task<void> lock_all() { return lock(0, N - 1); }
  void unlock() {
    for (size_t i = 0; i < N; ++i) {
      if (held_.test(i)) stripes_[i].unlock();
    }
    held_.reset();
  }

 private:
  Stripes& stripes_;
  std::bitset<N> held_;
};

}  // namespace cairn
