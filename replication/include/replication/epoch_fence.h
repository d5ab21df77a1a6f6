// EpochFence: a replica's memory of the highest epoch each volume's primaries have
// presented, the rule that keeps a former primary from ever writing again.
//
// Rule: a primary with epoch e may write to volume v's copy here only while e >= the
// highest epoch admitted for v. Admitting a higher epoch is persisted (one small file per
// volume under `dir`, written atomically and fsynced) before admit() returns, so the fence
// survives a crash of the replica: a primary that says HELLO with epoch e+1 has fenced out
// epoch e for good. Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "common/result.h"

namespace cairn::replication {

class EpochFence {
 public:
  // Loads every volume's epoch from `dir` (created when absent). corrupt when a file does
  // not parse.
  static Result<std::unique_ptr<EpochFence>> open(const std::string& dir);

  // Admits `epoch` for `volume`: ok when epoch >= the highest admitted (raising and
  // persisting it when higher); Errc::permission_denied (stale) when older; io_error when
  // it could not be persisted (nothing admitted). `incarnation` (0 = unknown) names the
  // volume's record (a volume deleted and created again under the same name gets a new
  // one): it is stored with the epoch, and one different from the stored one is refused
  // with Errc::busy (the copy here belongs to a deleted volume: forget() it and its copy).
  Status admit(const std::string& volume, uint64_t epoch, uint32_t incarnation = 0);
  // The incarnation stored for `volume`; 0 when none.
  uint32_t incarnation(const std::string& volume) const;
  // Whether a request carrying `epoch` may still act on `volume` (epoch >= highest).
  bool current(const std::string& volume, uint64_t epoch) const;
  // The highest epoch admitted for `volume`; 0 when none.
  uint64_t epoch(const std::string& volume) const;
  // Drops the volume's epoch and incarnation (its copy was deleted).
  Status forget(const std::string& volume);

 private:
  explicit EpochFence(std::string dir) : dir_(std::move(dir)) {}
  std::string path(const std::string& volume) const;
  const std::string dir_;
  mutable std::mutex mu_;
  std::map<std::string, uint64_t> epochs_;
  std::map<std::string, uint32_t> incarnations_;
};

}  // namespace cairn::replication
