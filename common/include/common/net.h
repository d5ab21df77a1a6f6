// HOST:PORT endpoints as given on command lines: "127.0.0.1:10809", "[::1]:9000", ":8080".
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace cairn {

// Host without brackets, port. An empty host means 127.0.0.1. Nullopt when malformed.
std::optional<std::pair<std::string, uint16_t>> parse_host_port(std::string_view text);
// Inverse of parse_host_port: brackets an IPv6 host.
std::string format_host_port(const std::string& host, uint16_t port);

}  // namespace cairn
