// In-memory test doubles for replication/'s unit tests: MemVolume (a cairn::Volume over a
// std::vector, with an allocation map, counters and a gate that parks writes) and MemStore
// (one node's copies, as the daemon's open_volume hook manages them).
#pragma once

#include <algorithm>
#include <coroutine>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "common/assert.h"
#include "common/reactor.h"
#include "common/volume.h"

namespace cairn::replication::mem {

// A volume over a std::vector that keeps an allocation map (kBlock blocks) and counts what
// it was asked to do. Operations complete synchronously unless a gate holds them: writes
// overlapping a gated range park until release(), so a test can hold one request in flight.
// Thread-safe: a server or the primary writes on its thread while the test reads on its own.
class MemVolume final : public Volume {
 public:
  static constexpr uint64_t kBlock = 4096;  // allocation unit

  MemVolume(std::string name, uint64_t size)
      : name_(std::move(name)), data_(size, 0), allocated_(size / kBlock, false) {}

  const std::string& name() const override { return name_; }
  uint64_t size_bytes() const override {
    std::lock_guard lk(mu_);
    return data_.size();
  }
  bool alive() const override { return true; }

  Task<Status> read(uint64_t offset, uint64_t length, void* buf) override {
    std::lock_guard lk(mu_);
    if (!in_range(offset, length)) co_return Errc::out_of_range;
    memcpy(buf, data_.data() + offset, length);
    co_return ok();
  }
  Task<Status> write(uint64_t offset, uint64_t length, const void* buf, bool fua) override {
    Gate gate{this, offset, length};
    co_await gate;
    std::lock_guard lk(mu_);
    if (!in_range(offset, length)) co_return Errc::out_of_range;
    memcpy(data_.data() + offset, buf, length);
    set_allocated(offset, length, true, false);
    ++writes_;
    write_bytes_ += length;
    if (fua) ++fua_writes_;
    co_return ok();
  }
  Task<Status> trim(uint64_t offset, uint64_t length, bool) override {
    std::lock_guard lk(mu_);
    if (!in_range(offset, length)) co_return Errc::out_of_range;
    memset(data_.data() + offset, 0, length);
    set_allocated(offset, length, false, true);
    ++trims_;
    trim_bytes_ += length;
    co_return ok();
  }
  Task<Status> write_zeroes(uint64_t offset, uint64_t length, bool may_release,
                            bool) override {
    std::lock_guard lk(mu_);
    if (!in_range(offset, length)) co_return Errc::out_of_range;
    memset(data_.data() + offset, 0, length);
    set_allocated(offset, length, !may_release, may_release);
    ++(may_release ? zeroes_released_ : zeroes_kept_);
    co_return ok();
  }
  Task<Status> flush() override {
    std::lock_guard lk(mu_);
    ++flushes_;
    co_return ok();
  }
  Result<std::vector<AllocationRun>> allocation(uint64_t offset, uint64_t length,
                                                size_t max_runs) override {
    std::lock_guard lk(mu_);
    if (!in_range(offset, length)) return Errc::out_of_range;
    std::vector<AllocationRun> runs;
    for (uint64_t pos = offset; pos < offset + length;) {
      const uint64_t n = std::min(offset + length, (pos / kBlock + 1) * kBlock) - pos;
      const bool a = allocated_[pos / kBlock];
      if (!runs.empty() && runs.back().allocated == a) {
        runs.back().length_bytes += n;
      } else {
        if (runs.size() == max_runs) break;
        runs.push_back({n, a});
      }
      pos += n;
    }
    return runs;
  }

  void grow(uint64_t size) {
    std::lock_guard lk(mu_);
    if (data_.size() < size) {
      data_.resize(size, 0);
      allocated_.resize(size / kBlock, false);
    }
  }
  std::vector<uint8_t> bytes(uint64_t offset, uint64_t length) const {
    std::lock_guard lk(mu_);
    return std::vector<uint8_t>(data_.begin() + offset, data_.begin() + offset + length);
  }
  std::vector<uint8_t> bytes() const { return bytes(0, size_bytes()); }
  void fill(uint8_t b) {
    std::lock_guard lk(mu_);
    std::fill(data_.begin(), data_.end(), b);
  }
  // Changes the copy behind everybody's back (as a replica's own disk would differ).
  void poke(uint64_t offset, const std::vector<uint8_t>& b) {
    std::lock_guard lk(mu_);
    memcpy(data_.data() + offset, b.data(), b.size());
    set_allocated(offset, b.size(), true, false);
  }
  uint64_t allocated_bytes() const {
    std::lock_guard lk(mu_);
    return static_cast<uint64_t>(std::count(allocated_.begin(), allocated_.end(), true)) * kBlock;
  }
  int writes() const { std::lock_guard lk(mu_); return writes_; }
  int fua_writes() const { std::lock_guard lk(mu_); return fua_writes_; }
  uint64_t write_bytes() const { std::lock_guard lk(mu_); return write_bytes_; }
  int trims() const { std::lock_guard lk(mu_); return trims_; }
  uint64_t trim_bytes() const { std::lock_guard lk(mu_); return trim_bytes_; }
  int flushes() const { std::lock_guard lk(mu_); return flushes_; }
  int zeroes_kept() const { std::lock_guard lk(mu_); return zeroes_kept_; }
  int zeroes_released() const { std::lock_guard lk(mu_); return zeroes_released_; }

  // Writes overlapping [offset, offset + length) park from now on, until release().
  void gate(uint64_t offset, uint64_t length) {
    std::lock_guard lk(mu_);
    gate_offset_ = offset;
    gate_length_ = length;
  }
  // Opens the gate and resumes the parked writes (each on its own Reactor).
  void release() {
    std::vector<std::pair<std::coroutine_handle<>, Reactor*>> parked;
    {
      std::lock_guard lk(mu_);
      gate_length_ = 0;
      parked.swap(parked_);
    }
    for (auto& [h, r] : parked) r->resume_on(h);
  }
  size_t parked() const {
    std::lock_guard lk(mu_);
    return parked_.size();
  }

 private:
  struct Gate {
    MemVolume* v;
    uint64_t offset, length;
    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h) {
      std::lock_guard lk(v->mu_);
      const bool held = v->gate_length_ > 0 && offset < v->gate_offset_ + v->gate_length_ &&
                        v->gate_offset_ < offset + length;
      if (!held) return false;
      Reactor* r = Reactor::current();
      CAIRN_ASSERT(r != nullptr);
      v->parked_.emplace_back(h, r);
      return true;
    }
    void await_resume() const noexcept {}
  };

  bool in_range(uint64_t offset, uint64_t length) const {
    return length <= data_.size() && offset <= data_.size() - length;
  }
  // Whole blocks only when releasing (edges stay as they were); any touched block when
  // allocating.
  void set_allocated(uint64_t offset, uint64_t length, bool allocate, bool release) {
    if (length == 0) return;
    if (allocate) {
      for (uint64_t b = offset / kBlock; b <= (offset + length - 1) / kBlock; ++b)
        allocated_[b] = true;
    } else if (release) {
      for (uint64_t b = (offset + kBlock - 1) / kBlock; (b + 1) * kBlock <= offset + length; ++b)
        allocated_[b] = false;
    }
  }

  const std::string name_;
  mutable std::mutex mu_;
  std::vector<uint8_t> data_;
  std::vector<bool> allocated_;
  int writes_ = 0, fua_writes_ = 0, trims_ = 0, flushes_ = 0;
  int zeroes_kept_ = 0, zeroes_released_ = 0;
  uint64_t write_bytes_ = 0, trim_bytes_ = 0;
  uint64_t gate_offset_ = 0, gate_length_ = 0;
  std::vector<std::pair<std::coroutine_handle<>, Reactor*>> parked_;
};

// One node's copies of volumes, as the daemon's open_volume hook would manage them.
class MemStore {
 public:
  Result<std::shared_ptr<Volume>> open(const std::string& name, uint64_t size, bool* created) {
    std::lock_guard lk(mu_);
    auto& v = volumes_[name];
    *created = !v;
    if (!v) {
      v = std::make_shared<MemVolume>(name, size);
    } else {
      v->grow(size);
    }
    return std::shared_ptr<Volume>(v);
  }
  std::shared_ptr<MemVolume> get(const std::string& name) {
    std::lock_guard lk(mu_);
    auto it = volumes_.find(name);
    return it == volumes_.end() ? nullptr : it->second;
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<MemVolume>> volumes_;
};

}  // namespace cairn::replication::mem
