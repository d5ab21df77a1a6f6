// http://HOST[:PORT][/PREFIX] base URLs of Cairn's HTTP APIs, as given on command lines.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace cairn::client {

struct HttpUrl {
  std::string host;         // without IPv6 brackets
  std::string port;         // "80" when absent
  std::string prefix;       // path prefix without trailing '/', may be empty
  std::string host_header;  // the authority as written
};

// Nullopt for anything but plain http:// with a valid host and port.
std::optional<HttpUrl> parse_http_url(std::string_view url);

}  // namespace cairn::client
