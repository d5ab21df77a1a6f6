// Result<T> and Status: how every fallible Cairn function reports an expected failure.
//
// A failure is a std::error_code: either errno (std::system_category, from syscalls and
// io_uring completions) or a Cairn Errc (cairn_category()). Codes say what the caller can
// do about it; the human message is logged where the failure happens.
#pragma once

#include <boost/outcome/std_result.hpp>
#include <boost/outcome/try.hpp>
#include <system_error>

namespace cairn {

template <class T>
using Result = boost::outcome_v2::std_result<T>;
using Status = Result<void>;

// Cairn's own error codes. Values are stable (they appear in API errors).
enum class Errc {
  ok = 0,
  invalid_argument = 1,   // caller error: do not retry
  not_found = 2,          // named thing does not exist
  already_exists = 3,     // create of an existing name
  no_space = 4,           // out of capacity: retry after freeing space
  io_error = 5,           // the device failed: retry the operation later
  busy = 6,               // in use (e.g. volume attached): retry after detaching
  permission_denied = 7,  // read-only export, missing token
  out_of_range = 8,       // offset/length beyond the end
  corrupt = 9,            // metadata or data failed verification
  unavailable = 10,       // shutting down or not ready: retry the call
  too_large = 11,         // request exceeds a limit
  unsupported = 12,       // feature not implemented
};

const std::error_category& cairn_category() noexcept;

inline std::error_code make_error_code(Errc e) noexcept {
  return {static_cast<int>(e), cairn_category()};
}

inline std::error_code errno_code(int err) noexcept {
  return {err, std::system_category()};
}

// Maps any error to the closest errno (NBD replies, exit statuses).
int to_errno(const std::error_code& ec) noexcept;

inline Status ok() { return boost::outcome_v2::success(); }

}  // namespace cairn

template <>
struct std::is_error_code_enum<cairn::Errc> : std::true_type {};

// CAIRN_TRY(v, expr): declare `auto&& v` = the value of Result `expr`, or return its error.
// CAIRN_TRY(expr): for a Status, return its error. (Boost 1.74 spelling: no `auto` before v.)
#define CAIRN_TRY(...) BOOST_OUTCOME_TRY(__VA_ARGS__)
#define CAIRN_CO_TRY(...) BOOST_OUTCOME_CO_TRY(__VA_ARGS__)
