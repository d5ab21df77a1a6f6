// Named fault points for tests, compiled into every build.
//
// Armed once at start-up from the environment:
//   CAIRN_FAULTS="name:error=EIO:p=0.1:seed=7,other.name:exit:after=100"
// Actions: error=ERRNO (the point returns that errno), exit (the process _exit(137)s, like a
// crash), delay_ms=N (sleeps). `p` is the probability per hit (default 1), `after` skips the
// first N hits. Unarmed points cost one relaxed atomic load.
#pragma once

namespace cairn {

// Parses CAIRN_FAULTS; call once from main before any thread starts. Returns false and logs
// on a malformed spec.
bool arm_faults_from_env();

// Returns 0, or the errno the point is armed to inject (exit and delay act inside).
int fault_hit(const char* name) noexcept;

}  // namespace cairn

#define CAIRN_FAULT_POINT(name) ::cairn::fault_hit(name)
