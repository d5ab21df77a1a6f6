#include "common/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdlib>
#include <ctime>

#include "common/assert.h"

namespace cairn {
namespace {
std::atomic<LogLevel> g_level{LogLevel::info};
const char* level_name(LogLevel l) {
  switch (l) {
    case LogLevel::debug: return "DEBUG";
    case LogLevel::info: return "INFO";
    case LogLevel::warn: return "WARN";
    case LogLevel::error: return "ERROR";
  }
  return "?";
}
}  // namespace

void set_log_level(LogLevel level) noexcept { g_level.store(level, std::memory_order_relaxed); }
LogLevel log_level() noexcept { return g_level.load(std::memory_order_relaxed); }

void log_line(LogLevel level, std::string_view component, std::string_view message) noexcept {
  if (level < log_level()) return;
  char head[96];
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm tm_utc{};
  gmtime_r(&ts.tv_sec, &tm_utc);
  char when[32];
  strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm_utc);
  int n = snprintf(head, sizeof(head), "%s.%03ldZ %s %.*s: ", when, ts.tv_nsec / 1000000,
                   level_name(level), static_cast<int>(component.size()), component.data());
  std::string line;
  line.reserve(static_cast<size_t>(n) + message.size() + 1);
  line.append(head, static_cast<size_t>(n));
  line.append(message);
  line.push_back('\n');
  ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

void logf(LogLevel level, const char* component, const char* fmt, ...) noexcept {
  if (level < log_level()) return;
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  log_line(level, component, buf);
}

namespace detail {
void assert_fail(const char* expr, const char* file, int line) noexcept {
  logf(LogLevel::error, "assert", "%s:%d: assertion failed: %s", file, line, expr);
  std::abort();
}
}  // namespace detail

}  // namespace cairn
