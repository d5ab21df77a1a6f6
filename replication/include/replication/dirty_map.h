// DirtyMap: which extents of a volume one replica has missed while it was out of sync, kept
// by the volume's primary so that the replica's return copies only those (resync), and a
// replica that came back empty copies everything allocated (full rebuild).
//
// One bit per kExtentBytes of the volume, in memory and in a file (`path`, docs/
// FORMAT-replication.md: a 4 KiB header page then the bitmap). mark() persists the pages
// whose bits it set (pwrite + fdatasync) before returning, so a write acknowledged to the
// client while the replica was out is always found again after a crash of the primary.
// clear() is persisted lazily (next mark() or sync()): after a crash an extent may be
// copied twice, never zero times. Thread-safe; mark() blocks for one fdatasync when it set
// a bit that was clear (extents already dirty cost nothing).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/result.h"

namespace cairn::replication {

class DirtyMap {
 public:
  static constexpr uint64_t kExtentBytes = 64 * 1024;  // blockd's extent (change-index unit)

  // Opens the map in `path`, creating it (all clear) when absent; a map made for a smaller
  // volume is grown to `size_bytes` (new extents clear). corrupt when the file is not a
  // dirty map; io_error on I/O failure.
  static Result<std::unique_ptr<DirtyMap>> open(const std::string& path, uint64_t size_bytes);
  ~DirtyMap();
  DirtyMap(const DirtyMap&) = delete;
  DirtyMap& operator=(const DirtyMap&) = delete;

  // Sets the bits of every extent overlapping [offset, offset + length) (clamped to the
  // volume); durable when it returns ok.
  Status mark(uint64_t offset, uint64_t length);
  // Sets the bits of the listed extents (those past the end are ignored) with one write of
  // the changed pages; durable on return.
  Status mark_extents(const std::vector<uint64_t>& extents);
  // Sets every bit (a full rebuild); durable on return.
  Status mark_all();
  // Clears one extent's bit (durable at the next mark() or sync()).
  void clear(uint64_t extent);
  // Persists cleared bits.
  Status sync();

  bool test(uint64_t extent) const;
  uint64_t count() const;    // dirty extents
  uint64_t extents() const;  // extents of the volume
  // The first dirty extent at or after `from`; nullopt when none.
  std::optional<uint64_t> next(uint64_t from) const;
  // Deletes the file (the replica is in sync again, or gone). The object stays usable
  // in memory only.
  Status remove();
  const std::string& path() const { return path_; }

 private:
  DirtyMap(std::string path, int fd, uint64_t extents);
  Status write_pages_locked(const std::set<uint64_t>& pages);

  const std::string path_;
  int fd_ = -1;
  mutable std::mutex mu_;
  uint64_t extents_ = 0;
  std::vector<uint64_t> bits_;
  uint64_t count_ = 0;
  std::set<uint64_t> unsynced_pages_;  // pages with cleared bits not yet written
};

}  // namespace cairn::replication
