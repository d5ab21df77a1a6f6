#include "allocator.h"

#include <algorithm>

#include "common/assert.h"

namespace cairn::blockd {

Allocator::Allocator(uint64_t capacity_extents) : capacity_extents_(capacity_extents) {}

void Allocator::mark_used(uint64_t phys) {
  std::lock_guard lk(mu_);
  CAIRN_ASSERT(scanning_);
  scan_used_.push_back(phys);
}

bool Allocator::finish_scan(uint64_t device_extents, std::vector<Run>* unused) {
  std::lock_guard lk(mu_);
  CAIRN_ASSERT(scanning_);
  std::vector<uint64_t> used;
  used.swap(scan_used_);
  std::sort(used.begin(), used.end());
  if (std::adjacent_find(used.begin(), used.end()) != used.end()) return false;
  scanning_ = false;
  used_ = used.size();
  high_water_ = used.empty() ? 0 : used.back() + 1;
  // Unused extents below the high-water mark become the free pool once punched; the tail up
  // to the device end is punched too but stays above the mark.
  const uint64_t end = std::max(high_water_, device_extents);
  unused->clear();
  uint64_t next = 0;
  for (uint64_t u : used) {
    if (u > next) unused->push_back({next, u - next});
    next = u + 1;
  }
  if (end > next) unused->push_back({next, end - next});
  for (const Run& r : *unused) {
    for (uint64_t e = r.first; e < r.first + r.count && e < high_water_; ++e) free_.insert(e);
  }
  return true;
}

std::optional<uint64_t> Allocator::allocate() {
  std::lock_guard lk(mu_);
  CAIRN_ASSERT(!scanning_);
  if (!free_.empty()) {
    uint64_t e = *free_.begin();
    free_.erase(free_.begin());
    ++used_;
    return e;
  }
  if (high_water_ < capacity_extents_) {
    ++used_;
    return high_water_++;
  }
  return std::nullopt;
}

void Allocator::unallocate(uint64_t phys) {
  std::lock_guard lk(mu_);
  CAIRN_ASSERT(used_ > 0 && phys < high_water_);
  --used_;
  bool inserted = free_.insert(phys).second;
  CAIRN_ASSERT(inserted);
}

void Allocator::quarantine(uint64_t phys) {
  std::lock_guard lk(mu_);
  CAIRN_ASSERT(used_ > 0 && phys < high_water_);
  --used_;
  quarantine_.push_back(phys);
}

std::vector<uint64_t> Allocator::take_quarantine() {
  std::lock_guard lk(mu_);
  std::vector<uint64_t> out;
  out.swap(quarantine_);
  promoting_ += out.size();
  return out;
}

void Allocator::promote(const std::vector<uint64_t>& extents) {
  std::lock_guard lk(mu_);
  CAIRN_ASSERT(promoting_ >= extents.size());
  promoting_ -= extents.size();
  for (uint64_t e : extents) {
    bool inserted = free_.insert(e).second;
    CAIRN_ASSERT(inserted);
  }
}

void Allocator::requarantine(const std::vector<uint64_t>& extents) {
  std::lock_guard lk(mu_);
  CAIRN_ASSERT(promoting_ >= extents.size());
  promoting_ -= extents.size();
  quarantine_.insert(quarantine_.end(), extents.begin(), extents.end());
}

uint64_t Allocator::high_water() const {
  std::lock_guard lk(mu_);
  return high_water_;
}

uint64_t Allocator::free_extents() const {
  std::lock_guard lk(mu_);
  return free_.size() + (capacity_extents_ > high_water_ ? capacity_extents_ - high_water_ : 0);
}

uint64_t Allocator::quarantined_extents() const {
  std::lock_guard lk(mu_);
  return quarantine_.size() + promoting_;
}

uint64_t Allocator::used_extents() const {
  std::lock_guard lk(mu_);
  return used_;
}

std::vector<Allocator::Run> Allocator::coalesce(std::vector<uint64_t> extents) {
  std::sort(extents.begin(), extents.end());
  std::vector<Run> runs;
  for (uint64_t e : extents) {
    if (!runs.empty() && runs.back().first + runs.back().count == e) ++runs.back().count;
    else if (runs.empty() || runs.back().first + runs.back().count <= e) runs.push_back({e, 1});
  }
  return runs;
}

}  // namespace cairn::blockd
