// when_all: run several Task<Status> concurrently on the current thread and wait for all.
//
// Every task is started at once (each runs until its first suspension); the awaiting
// coroutine resumes when the last one finishes, on the thread that finished it (the owning
// Reactor's thread, since all tasks of one caller complete on the caller's ring). The result
// is the first error in task order, or success.
#pragma once

#include <vector>

#include "common/result.h"
#include "common/task.h"

namespace cairn {

Task<Status> when_all(std::vector<Task<Status>> tasks);

// Drives `t` to completion on the calling thread without a Reactor. Only for tasks whose
// awaits all complete synchronously (e.g. over SimBlockDevice in unit tests); aborts if the
// task suspends on something that would need a loop.
Status run_sync(Task<Status> t);

}  // namespace cairn
