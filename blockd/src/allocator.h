// Allocator: hands out the fixed-size (kExtentSizeBytes) physical extents of the data file.
//
// Owned by the store. Its state is not persisted: at open the store calls mark_used() for
// every extent record and then finish_scan(), which derives the high-water mark and the free
// pool and returns the unused runs the caller must punch (they may hold stale bytes from
// before a crash) before serving. Thread-safe (own mutex).
//
// Every extent below the capacity is in exactly one state:
//   above the high-water mark  never handed out since open: reads as zeros
//   free                       punched and synced: reads as zeros; handed out lowest first
//   used                       referenced by a mapping (or being mapped)
//   quarantined                unmapped, but may hold a former owner's bytes; never handed out
//                              until the store has waited out in-flight I/O, punched it, made
//                              the unmapping durable, and called promote()
// Limits: capacity_extents is fixed at construction; memory is O(free + quarantined).
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <set>
#include <vector>

namespace cairn::blockd {

class Allocator {
 public:
  struct Run {
    uint64_t first = 0;
    uint64_t count = 0;
    bool operator==(const Run&) const = default;
  };

  explicit Allocator(uint64_t capacity_extents);

  // Open-time scan: one call per extent record.
  void mark_used(uint64_t phys);
  // Ends the scan. Fills `unused` with the runs of unused extents below max(high water,
  // device_extents): the caller punches them before serving. False when two records share
  // one physical extent (corrupt metadata).
  bool finish_scan(uint64_t device_extents, std::vector<Run>* unused);

  // Lowest free extent, else the next one above the high-water mark; nullopt when neither
  // exists (the caller may wait for a promotion round).
  std::optional<uint64_t> allocate();
  // Returns an extent from allocate() that was never written nor made visible.
  void unallocate(uint64_t phys);
  void quarantine(uint64_t phys);
  // Moves the whole quarantine into "promoting"; promote() or requarantine() ends it.
  std::vector<uint64_t> take_quarantine();
  void promote(const std::vector<uint64_t>& extents);
  void requarantine(const std::vector<uint64_t>& extents);

  uint64_t capacity_extents() const { return capacity_extents_; }
  uint64_t high_water() const;
  uint64_t free_extents() const;         // free pool + room above the high-water mark
  uint64_t quarantined_extents() const;  // quarantined + being promoted
  uint64_t used_extents() const;         // mapped

  // Sorted, adjacent extents merged.
  static std::vector<Run> coalesce(std::vector<uint64_t> extents);

 private:
  mutable std::mutex mu_;
  const uint64_t capacity_extents_;
  uint64_t high_water_ = 0;
  std::set<uint64_t> free_;
  std::vector<uint64_t> quarantine_;
  uint64_t promoting_ = 0;
  uint64_t used_ = 0;
  std::vector<uint64_t> scan_used_;  // only during the open-time scan
  bool scanning_ = true;
};

}  // namespace cairn::blockd
