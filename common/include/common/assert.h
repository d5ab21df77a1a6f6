// CAIRN_ASSERT: an invariant check that runs in every build (Release included) and aborts
// with file:line. Use for bugs, never for expected failures (those return Result).
#pragma once

namespace cairn::detail {
[[noreturn]] void assert_fail(const char* expr, const char* file, int line) noexcept;
}

#define CAIRN_ASSERT(cond)                                                   \
  do {                                                                       \
    if (__builtin_expect(!(cond), 0))                                        \
      ::cairn::detail::assert_fail(#cond, __FILE__, __LINE__);               \
  } while (0)
