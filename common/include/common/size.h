// Human byte sizes: "10G", "512M", "4KiB", "1T", "4096". Powers of 1024.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace cairn {

// Returns nullopt on malformed input or overflow.
std::optional<uint64_t> parse_size_bytes(std::string_view text);
// 10737418240 -> "10 GiB"; exact multiples print without decimals, others with one.
std::string format_size_bytes(uint64_t bytes);

}  // namespace cairn
