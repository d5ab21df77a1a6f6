// Structured, line-oriented logging to stderr: `ts level component: message key=value`.
// Thread-safe (one write(2) per line). The level is set once at start-up.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

namespace cairn {

enum class LogLevel { debug = 0, info = 1, warn = 2, error = 3 };

void set_log_level(LogLevel level) noexcept;
LogLevel log_level() noexcept;
void log_line(LogLevel level, std::string_view component, std::string_view message) noexcept;

// printf-style convenience; formats into a bounded buffer (lines are cut at 2 KiB).
void logf(LogLevel level, const char* component, const char* fmt, ...) noexcept
    __attribute__((format(printf, 3, 4)));

}  // namespace cairn

#define CAIRN_LOG_DEBUG(comp, ...) \
  do { if (::cairn::log_level() <= ::cairn::LogLevel::debug) ::cairn::logf(::cairn::LogLevel::debug, comp, __VA_ARGS__); } while (0)
#define CAIRN_LOG_INFO(comp, ...) ::cairn::logf(::cairn::LogLevel::info, comp, __VA_ARGS__)
#define CAIRN_LOG_WARN(comp, ...) ::cairn::logf(::cairn::LogLevel::warn, comp, __VA_ARGS__)
#define CAIRN_LOG_ERROR(comp, ...) ::cairn::logf(::cairn::LogLevel::error, comp, __VA_ARGS__)
