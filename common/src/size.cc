#include "common/size.h"

#include <cctype>
#include <cstdio>

namespace cairn {

std::optional<uint64_t> parse_size_bytes(std::string_view text) {
  size_t i = 0;
  uint64_t value = 0;
  if (text.empty() || !isdigit(static_cast<unsigned char>(text[0]))) return std::nullopt;
  while (i < text.size() && isdigit(static_cast<unsigned char>(text[i]))) {
    uint64_t d = static_cast<uint64_t>(text[i] - '0');
    if (value > (UINT64_MAX - d) / 10) return std::nullopt;
    value = value * 10 + d;
    ++i;
  }
  std::string unit;
  for (; i < text.size(); ++i) unit.push_back(static_cast<char>(toupper(text[i])));
  int shift = 0;
  if (unit.empty() || unit == "B") shift = 0;
  else if (unit == "K" || unit == "KB" || unit == "KIB") shift = 10;
  else if (unit == "M" || unit == "MB" || unit == "MIB") shift = 20;
  else if (unit == "G" || unit == "GB" || unit == "GIB") shift = 30;
  else if (unit == "T" || unit == "TB" || unit == "TIB") shift = 40;
  else if (unit == "P" || unit == "PB" || unit == "PIB") shift = 50;
  else return std::nullopt;
  if (shift > 0 && value > (UINT64_MAX >> shift)) return std::nullopt;
  return value << shift;
}

std::string format_size_bytes(uint64_t bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  double v = static_cast<double>(bytes);
  uint64_t exact = bytes;
  bool is_exact = true;
  while (u < 5 && v >= 1024.0) {
    if (exact % 1024 != 0) is_exact = false;
    exact /= 1024;
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  if (is_exact) snprintf(buf, sizeof(buf), "%llu %s", static_cast<unsigned long long>(exact), units[u]);
  else snprintf(buf, sizeof(buf), "%.1f %s", v, units[u]);
  return buf;
}

}  // namespace cairn
