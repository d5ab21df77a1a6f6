// The backup side of the GC protocol (docs/FORMAT-backup.md, "Garbage collection").
#pragma once

#include <cstdint>

#include "common/result.h"
#include "snapshot/repository.h"

namespace cairn::backup {

// Whether a GC ran at any time since `since_server_s` (server clock) or runs now; waits
// for running ones to finish (or to stop refreshing their marker: a dead GC deletes
// nothing more) before answering, so that a following check sees the final state.
Result<bool> wait_for_overlapping_gc(Repository& repo, int64_t since_server_s);

// Seconds without a refresh after which a GC marker is a dead GC's.
inline constexpr int64_t kGcMarkerStaleS = 600;
// LastModified has one-second resolution: comparisons leave this margin.
inline constexpr int64_t kClockMarginS = 2;

}  // namespace cairn::backup
