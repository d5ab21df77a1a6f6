// The one project header that includes Boost.Asio and Boost.Beast.
//
// Boost 1.74's asio/awaitable.hpp uses std::exchange without including <utility>, so
// <utility> must come first; every Cairn file that needs Asio or Beast includes this header
// instead of the Boost ones. Coroutine support (co_await with use_awaitable) requires C++20.
#pragma once

// clang-format off: <utility> must precede the Boost headers.
#include <string_view>
#include <utility>
// clang-format on

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace cairn {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;

// Beast 1.74 speaks boost::string_view; these convert at the boundary.
inline std::string_view to_std(beast::string_view s) noexcept { return {s.data(), s.size()}; }
inline beast::string_view to_beast(std::string_view s) noexcept { return {s.data(), s.size()}; }
}  // namespace cairn
