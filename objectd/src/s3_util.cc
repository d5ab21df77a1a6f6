#include "s3_util.h"

#include <time.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>

namespace cairn::objectd {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

bool iequals_ascii(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

std::string lower_ascii(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::optional<uint64_t> parse_u64(std::string_view s) {
  uint64_t v = 0;
  if (s.empty()) return std::nullopt;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

std::optional<std::string> url_decode(std::string_view in, bool plus_is_space) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '+' && plus_is_space) {
      out.push_back(' ');
    } else if (c != '%') {
      out.push_back(c);
    } else {
      if (i + 2 >= in.size()) return std::nullopt;
      int hi = hex_value(in[i + 1]), lo = hex_value(in[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    }
  }
  return out;
}

std::string url_encode(std::string_view in, bool keep_slash) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  out.reserve(in.size() + in.size() / 4);
  for (char ch : in) {
    unsigned char c = static_cast<unsigned char>(ch);
    bool plain = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/');
    if (plain) {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::optional<Query> Query::parse(std::string_view raw) {
  Query q;
  size_t start = 0;
  while (start <= raw.size()) {
    size_t amp = raw.find('&', start);
    std::string_view part =
        raw.substr(start, amp == std::string_view::npos ? std::string_view::npos : amp - start);
    if (!part.empty()) {
      size_t eq = part.find('=');
      auto name = url_decode(part.substr(0, eq), true);
      auto value = eq == std::string_view::npos ? std::optional<std::string>(std::string())
                                                : url_decode(part.substr(eq + 1), true);
      if (!name || !value) return std::nullopt;
      q.params_.emplace_back(std::move(*name), std::move(*value));
    }
    if (amp == std::string_view::npos) break;
    start = amp + 1;
  }
  return q;
}

bool Query::has(std::string_view name) const { return get(name) != nullptr; }

const std::string* Query::get(std::string_view name) const {
  for (const auto& [k, v] : params_)
    if (k == name) return &v;
  return nullptr;
}

std::optional<S3Target> parse_target(std::string_view host_header, std::string_view decoded_path,
                                     const std::vector<std::string>& domains) {
  if (decoded_path.empty() || decoded_path.front() != '/') return std::nullopt;
  // Host without port (and without IPv6 brackets).
  std::string_view host = trim(host_header);
  if (!host.empty() && host.front() == '[') {
    host = host.substr(0, host.find(']') + 1);
  } else if (size_t colon = host.rfind(':'); colon != std::string_view::npos) {
    host = host.substr(0, colon);
  }
  while (!host.empty() && host.back() == '.') host.remove_suffix(1);
  std::string h = lower_ascii(host);

  S3Target t;
  std::string best;  // the longest endpoint name that is a proper suffix of the host
  bool exact = false;
  for (const std::string& d : domains) {
    if (d.empty()) continue;
    std::string dl = lower_ascii(d);
    for (const std::string& e : {dl, "s3." + dl}) {
      if (h == e) exact = true;
      if (h.size() > e.size() + 1 && h.compare(h.size() - e.size(), e.size(), e) == 0 &&
          h[h.size() - e.size() - 1] == '.' && e.size() > best.size())
        best = e;
    }
  }
  std::string_view path = decoded_path.substr(1);
  if (!exact && !best.empty()) {
    t.virtual_host = true;
    t.bucket = h.substr(0, h.size() - best.size() - 1);
    t.key = std::string(path);
    return t;
  }
  size_t slash = path.find('/');
  t.bucket = std::string(path.substr(0, slash));
  if (slash != std::string_view::npos) t.key = std::string(path.substr(slash + 1));
  return t;
}

std::string http_date(int64_t unix_s) {
  time_t t = static_cast<time_t>(unix_s);
  struct tm tm {};
  gmtime_r(&t, &tm);
  static const char* kDays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  char buf[64];
  snprintf(buf, sizeof(buf), "%s, %02d %s %04d %02d:%02d:%02d GMT", kDays[tm.tm_wday % 7],
           tm.tm_mday, kMonths[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
           tm.tm_sec);
  return buf;
}

std::optional<int64_t> parse_http_date(std::string_view text) {
  std::string s(trim(text));
  for (const char* fmt : {"%a, %d %b %Y %H:%M:%S GMT", "%A, %d-%b-%y %H:%M:%S GMT",
                          "%a %b %e %H:%M:%S %Y", "%a, %d %b %Y %H:%M:%S +0000"}) {
    struct tm tm {};
    const char* end = strptime(s.c_str(), fmt, &tm);
    if (end != nullptr && *end == '\0') return static_cast<int64_t>(timegm(&tm));
  }
  return std::nullopt;
}

std::string iso8601_ms(int64_t unix_ms) {
  int64_t secs = unix_ms >= 0 ? unix_ms / 1000 : (unix_ms - 999) / 1000;
  int ms = static_cast<int>(unix_ms - secs * 1000);
  time_t t = static_cast<time_t>(secs);
  struct tm tm {};
  gmtime_r(&t, &tm);
  char buf[64];
  snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
           tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
  return buf;
}

RangeParse parse_range(std::string_view header, uint64_t size, ByteRange& out) {
  std::string_view h = trim(header);
  if (h.size() < 6 || !iequals_ascii(h.substr(0, 6), "bytes=")) return RangeParse::none;
  h = trim(h.substr(6));
  if (h.find(',') != std::string_view::npos) return RangeParse::none;
  size_t dash = h.find('-');
  if (dash == std::string_view::npos) return RangeParse::none;
  std::string_view first = trim(h.substr(0, dash)), last = trim(h.substr(dash + 1));
  if (first.empty()) {
    auto n = parse_u64(last);
    if (!n) return RangeParse::none;
    if (*n == 0 || size == 0) return RangeParse::unsatisfiable;
    uint64_t len = std::min(*n, size);
    out = {size - len, len};
    return RangeParse::ok;
  }
  auto a = parse_u64(first);
  if (!a) return RangeParse::none;
  uint64_t b = UINT64_MAX;
  if (!last.empty()) {
    auto bv = parse_u64(last);
    if (!bv || *bv < *a) return RangeParse::none;
    b = *bv;
  }
  if (*a >= size) return RangeParse::unsatisfiable;
  if (b >= size) b = size - 1;
  out = {*a, b - *a + 1};
  return RangeParse::ok;
}

bool etag_list_matches(std::string_view header, std::string_view etag_unquoted) {
  size_t start = 0;
  while (start <= header.size()) {
    size_t comma = header.find(',', start);
    std::string_view item = trim(header.substr(
        start, comma == std::string_view::npos ? std::string_view::npos : comma - start));
    if (item == "*") return true;
    if (item.size() >= 2 && (item[0] == 'W' || item[0] == 'w') && item[1] == '/')
      item.remove_prefix(2);
    if (item.size() >= 2 && item.front() == '"' && item.back() == '"')
      item = item.substr(1, item.size() - 2);
    if (!item.empty() && item == etag_unquoted) return true;
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return false;
}

int evaluate_conditions(const Conditions& c, std::string_view etag, int64_t mtime_unix_s,
                        bool is_get_or_head) {
  if (!c.if_match.empty()) {
    if (!etag_list_matches(c.if_match, etag)) return 412;
  } else if (!c.if_unmodified_since.empty()) {
    auto t = parse_http_date(c.if_unmodified_since);
    if (t && mtime_unix_s > *t) return 412;
  }
  if (!c.if_none_match.empty()) {
    if (etag_list_matches(c.if_none_match, etag)) return is_get_or_head ? 304 : 412;
  } else if (!c.if_modified_since.empty() && is_get_or_head) {
    auto t = parse_http_date(c.if_modified_since);
    if (t && mtime_unix_s <= *t) return 304;
  }
  return 0;
}

std::string strip_aws_chunked(std::string_view content_encoding) {
  std::string out;
  size_t start = 0;
  while (start <= content_encoding.size()) {
    size_t comma = content_encoding.find(',', start);
    std::string_view item = trim(content_encoding.substr(
        start, comma == std::string_view::npos ? std::string_view::npos : comma - start));
    if (!item.empty() && !iequals_ascii(item, "aws-chunked")) {
      if (!out.empty()) out += ",";
      out += item;
    }
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return out;
}

}  // namespace cairn::objectd
