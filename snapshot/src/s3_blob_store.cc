// S3BlobStore: SigV4-signed path-style S3 requests over a bounded pool of keep-alive
// HTTP/1.1 connections (Boost.Beast, synchronous from the caller's point of view).
//
// Each connection owns a private io_context; a request runs its asynchronous steps on it
// from the calling thread, so every step can carry a deadline (Beast's synchronous calls
// cannot). A connection is used by one thread at a time, handed over through the pool.
#include "snapshot/s3_blob_store.h"

#include <algorithm>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "common/asio.h"
#include "common/assert.h"
#include "common/log.h"
#include "common/net.h"
#include "common/sigv4.h"

namespace cairn::backup {
namespace {

using tcp = asio::ip::tcp;
using SteadyClock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr const char* k_log = "s3";
constexpr uint64_t k_get_body_max_bytes = 256ull << 20;
constexpr uint64_t k_other_body_max_bytes = 16ull << 20;
constexpr size_t k_prefix_max_bytes = 512;
constexpr size_t k_read_buffer_bytes = 128 * 1024;  // Beast reads at most 64 KiB per step
constexpr int k_connections_max = 1024;
constexpr int k_retries_max = 100;
// An idle connection older than this is closed instead of reused: servers drop idle
// connections (objectd after 60 s, others sooner), and a request on a connection the
// server already closed fails.
constexpr auto k_idle_reuse_max = 20s;
constexpr auto k_backoff_first = 100ms;
constexpr auto k_backoff_max = 2s;
constexpr std::string_view k_s3_xmlns = "http://s3.amazonaws.com/doc/2006-03-01/";

// ---- names ----

bool is_lower_or_digit(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Why `name` is not a valid bucket name, or nullptr if it is.
const char* bucket_name_problem(std::string_view name) {
  if (name.size() < 3 || name.size() > 63) return "must be 3 to 63 characters long";
  for (char c : name) {
    if (!is_lower_or_digit(c) && c != '.' && c != '-')
      return "may contain only lowercase letters, digits, '.' and '-'";
  }
  if (!is_lower_or_digit(name.front()) || !is_lower_or_digit(name.back()))
    return "must start and end with a letter or digit";
  if (name.find("..") != std::string_view::npos || name.find(".-") != std::string_view::npos ||
      name.find("-.") != std::string_view::npos)
    return "may not contain \"..\", \".-\" or \"-.\"";
  int dots = 0;
  bool ipv4 = true;
  size_t start = 0;
  for (size_t i = 0; i <= name.size(); ++i) {
    if (i == name.size() || name[i] == '.') {
      ipv4 = ipv4 && all_digits(name.substr(start, i - start));
      dots += i < name.size();
      start = i + 1;
    }
  }
  if (ipv4 && dots == 3) return "may not be formatted as an IP address";
  for (std::string_view p : {"xn--", "sthree-", "amzn-s3-demo-"}) {
    if (name.starts_with(p)) return "uses a reserved prefix";
  }
  for (std::string_view s : {"-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"}) {
    if (name.ends_with(s)) return "uses a reserved suffix";
  }
  return nullptr;
}

// Why `prefix` (already without trailing '/') is not a valid key prefix, or nullptr.
const char* prefix_problem(std::string_view prefix) {
  if (prefix.empty()) return nullptr;
  if (prefix.size() > k_prefix_max_bytes) return "is longer than 512 bytes";
  for (char c : prefix) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) return "contains a control character";
    if (c == '?' || c == '#') return "contains '?' or '#'";
  }
  size_t start = 0;
  for (size_t i = 0; i <= prefix.size(); ++i) {
    if (i == prefix.size() || prefix[i] == '/') {
      std::string_view seg = prefix.substr(start, i - start);
      if (seg.empty()) return "has an empty segment (leading or doubled '/')";
      if (seg == "." || seg == "..") return "has a \".\" or \"..\" segment";
      start = i + 1;
    }
  }
  return nullptr;
}

struct Endpoint {
  std::string host;         // without IPv6 brackets
  std::string port;         // "80" when absent
  std::string host_header;  // the authority as written
};

std::optional<Endpoint> parse_endpoint(std::string_view url, const char*& problem) {
  constexpr std::string_view k_scheme = "http://";
  if (url.starts_with("https://")) {
    problem = "https is not supported (use http://host:port)";
    return std::nullopt;
  }
  if (!url.starts_with(k_scheme)) {
    problem = "expected http://host:port";
    return std::nullopt;
  }
  std::string_view authority = url.substr(k_scheme.size());
  while (!authority.empty() && authority.back() == '/') authority.remove_suffix(1);
  if (authority.empty() || authority.find_first_of("/?#@ ") != std::string_view::npos) {
    problem = "expected http://host:port without a path";
    return std::nullopt;
  }
  bool has_port = false;
  if (authority.front() == '[') {
    const size_t close = authority.find(']');
    has_port = close != std::string_view::npos && close + 1 < authority.size();
  } else {
    has_port = authority.find(':') != std::string_view::npos;
  }
  const std::string with_port = std::string(authority) + (has_port ? "" : ":80");
  auto hp = parse_host_port(with_port);
  if (!hp || authority.front() == ':' || authority.starts_with("[]") || hp->second == 0) {
    problem = "bad host or port";
    return std::nullopt;
  }
  return Endpoint{hp->first, std::to_string(hp->second), std::string(authority)};
}

bool valid_region(std::string_view region) {
  return !region.empty() && region.size() <= 64 &&
         std::all_of(region.begin(), region.end(),
                     [](char c) { return is_lower_or_digit(c) || c == '-'; });
}

// ---- minimal XML (S3 answers: no DTDs, no namespaces that matter) ----

struct XmlNode {
  std::string_view name;
  std::string_view inner;  // raw content between the start and end tags
};

// Markup that is not an element (<?..?>, <!--..-->, <![CDATA[..]]>, <!DOCTYPE..>) starting at
// `lt`: the position after it, 0 if there is none there, npos if it is unterminated.
size_t skip_non_element(std::string_view s, size_t lt) {
  auto past = [&](size_t from, std::string_view end) {
    const size_t e = s.find(end, from);
    return e == std::string_view::npos ? e : e + end.size();
  };
  if (s.compare(lt, 4, "<!--") == 0) return past(lt + 4, "-->");
  if (s.compare(lt, 9, "<![CDATA[") == 0) return past(lt + 9, "]]>");
  if (s.compare(lt, 2, "<?") == 0) return past(lt + 2, "?>");
  if (s.compare(lt, 2, "<!") == 0) return past(lt + 2, ">");
  return 0;
}

// The direct child elements of an XML fragment, in order; nullopt if it is malformed.
std::optional<std::vector<XmlNode>> xml_children(std::string_view s) {
  std::vector<XmlNode> out;
  XmlNode current;
  size_t inner_begin = 0;
  int depth = 0;
  size_t pos = 0;
  while ((pos = s.find('<', pos)) != std::string_view::npos) {
    const size_t skipped = skip_non_element(s, pos);
    if (skipped == std::string_view::npos) return std::nullopt;
    if (skipped != 0) {
      pos = skipped;
      continue;
    }
    const size_t gt = s.find('>', pos);
    if (gt == std::string_view::npos) return std::nullopt;
    std::string_view tag = s.substr(pos + 1, gt - pos - 1);
    if (tag.starts_with('/')) {
      if (depth == 0) return std::nullopt;
      if (--depth == 0) {
        std::string_view name = tag.substr(1);
        while (!name.empty() && std::strchr(" \t\r\n", name.back())) name.remove_suffix(1);
        if (name != current.name) return std::nullopt;
        current.inner = s.substr(inner_begin, pos - inner_begin);
        out.push_back(current);
      }
    } else {
      const bool empty_element = tag.ends_with('/');
      if (depth == 0) {
        current.name = tag.substr(0, tag.find_first_of(" \t\r\n/"));
        if (current.name.empty()) return std::nullopt;
        if (empty_element) {
          out.push_back(XmlNode{current.name, {}});
        } else {
          depth = 1;
          inner_begin = gt + 1;
        }
      } else if (!empty_element) {
        ++depth;
      }
    }
    pos = gt + 1;
  }
  if (depth != 0) return std::nullopt;
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

// Character data of an element: entities and character references resolved, CDATA
// sections taken as they are; nullopt if it holds elements or a bad reference.
std::optional<std::string> xml_text(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const char c = s[i];
    if (c == '<') {
      if (s.compare(i, 9, "<![CDATA[") != 0) return std::nullopt;
      const size_t end = s.find("]]>", i + 9);
      if (end == std::string_view::npos) return std::nullopt;
      out.append(s.substr(i + 9, end - i - 9));
      i = end + 3;
      continue;
    }
    if (c != '&') {
      out += c;
      ++i;
      continue;
    }
    const size_t semi = s.find(';', i);
    if (semi == std::string_view::npos) return std::nullopt;
    const std::string_view entity = s.substr(i + 1, semi - i - 1);
    if (entity == "amp") {
      out += '&';
    } else if (entity == "lt") {
      out += '<';
    } else if (entity == "gt") {
      out += '>';
    } else if (entity == "quot") {
      out += '"';
    } else if (entity == "apos") {
      out += '\'';
    } else if (entity.size() >= 2 && entity[0] == '#') {
      const bool hex = entity[1] == 'x';
      const std::string_view digits = entity.substr(hex ? 2 : 1);
      uint32_t cp = 0;
      auto [end, ec] =
          std::from_chars(digits.data(), digits.data() + digits.size(), cp, hex ? 16 : 10);
      if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() || cp == 0 ||
          cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return std::nullopt;
      append_utf8(out, cp);
    } else {
      return std::nullopt;
    }
    i = semi + 1;
  }
  return out;
}

const XmlNode* find_child(const std::vector<XmlNode>& nodes, std::string_view name) {
  for (const auto& n : nodes) {
    if (n.name == name) return &n;
  }
  return nullptr;
}

std::optional<std::string> child_text(const std::vector<XmlNode>& nodes, std::string_view name) {
  const XmlNode* n = find_child(nodes, name);
  if (!n) return std::nullopt;
  return xml_text(n->inner);
}

// "2024-01-02T03:04:05.000Z" (fraction optional; Z or +hh:mm/-hh:mm) -> unix seconds.
std::optional<int64_t> parse_iso8601(std::string_view t) {
  if (t.size() < 20 || t[4] != '-' || t[7] != '-' || t[10] != 'T' || t[13] != ':' || t[16] != ':')
    return std::nullopt;
  std::string compact;
  compact.append(t.substr(0, 4)).append(t.substr(5, 2)).append(t.substr(8, 2));
  compact.append("T").append(t.substr(11, 2)).append(t.substr(14, 2)).append(t.substr(17, 2));
  compact.append("Z");
  const auto base = sigv4::parse_amz_date(compact);
  if (!base) return std::nullopt;
  std::string_view rest = t.substr(19);
  if (rest.starts_with('.')) {
    size_t n = 1;
    while (n < rest.size() && rest[n] >= '0' && rest[n] <= '9') ++n;
    if (n == 1) return std::nullopt;
    rest.remove_prefix(n);
  }
  if (rest == "Z") return base;
  if (rest.size() != 6 || (rest[0] != '+' && rest[0] != '-') || rest[3] != ':' ||
      !all_digits(rest.substr(1, 2)) || !all_digits(rest.substr(4, 2)))
    return std::nullopt;
  const int64_t offset_s = ((rest[1] - '0') * 10 + (rest[2] - '0')) * 3600 +
                           ((rest[4] - '0') * 10 + (rest[5] - '0')) * 60;
  return rest[0] == '+' ? *base - offset_s : *base + offset_s;
}

std::optional<uint64_t> parse_u64(std::string_view s) {
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

struct S3ErrorBody {
  std::string code;
  std::string message;
};

S3ErrorBody parse_error_body(std::string_view body) {
  S3ErrorBody out;
  auto top = xml_children(body);
  if (!top) return out;
  const XmlNode* error = find_child(*top, "Error");
  if (!error) return out;
  auto kids = xml_children(error->inner);
  if (!kids) return out;
  out.code = child_text(*kids, "Code").value_or("");
  out.message = child_text(*kids, "Message").value_or("");
  return out;
}

struct ListPage {
  std::vector<BlobInfo> objects;  // keys as the service has them (full keys)
  bool truncated = false;
  std::string next_token;
};

// One ListObjectsV2 answer; keys are %-decoded when the answer says EncodingType=url.
std::optional<ListPage> parse_list_page(std::string_view body, const char*& problem) {
  auto top = xml_children(body);
  const XmlNode* root = top ? find_child(*top, "ListBucketResult") : nullptr;
  if (!root) {
    problem = "not a ListBucketResult document";
    return std::nullopt;
  }
  auto kids = xml_children(root->inner);
  if (!kids) {
    problem = "malformed ListBucketResult";
    return std::nullopt;
  }
  ListPage page;
  const bool url_encoded = child_text(*kids, "EncodingType").value_or("") == "url";
  page.truncated = child_text(*kids, "IsTruncated").value_or("false") == "true";
  page.next_token = child_text(*kids, "NextContinuationToken").value_or("");
  for (const XmlNode& node : *kids) {
    if (node.name != "Contents") continue;
    auto fields = xml_children(node.inner);
    if (!fields) {
      problem = "malformed Contents";
      return std::nullopt;
    }
    auto key = child_text(*fields, "Key");
    auto size = child_text(*fields, "Size");
    auto mtime = child_text(*fields, "LastModified");
    if (!key || !size || !mtime) {
      problem = "Contents without a readable Key, Size or LastModified";
      return std::nullopt;
    }
    BlobInfo info;
    if (url_encoded) {
      // S3 writes a space as '+' there, and a '+' as %2B.
      auto decoded = sigv4::uri_decode(*key, true);
      if (!decoded) {
        problem = "bad %-escape in a Key";
        return std::nullopt;
      }
      info.key = std::move(*decoded);
    } else {
      info.key = std::move(*key);
    }
    auto size_bytes = parse_u64(*size);
    auto mtime_s = parse_iso8601(*mtime);
    if (!size_bytes || !mtime_s) {
      problem = "bad Size or LastModified";
      return std::nullopt;
    }
    info.size = *size_bytes;
    info.last_modified_unix_s = *mtime_s;
    page.objects.push_back(std::move(info));
  }
  return page;
}

int64_t system_now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// ---- connections ----

struct Connection {
  // Beast reads max(512, capacity - size) bytes at a time (at most 64 KiB): a buffer left to
  // grow by itself stays at a few hundred bytes, and a 4 MiB GET then costs ~8000 reads,
  // each with an epoll round and a timer set and cancelled.
  Connection() { buffer.reserve(k_read_buffer_bytes); }

  asio::io_context ioc{1};
  beast::tcp_stream stream{ioc};
  beast::flat_buffer buffer;
  SteadyClock::time_point idle_since{};
};

// Runs the connection's io_context until the operations started on it have completed.
void run(Connection& c) {
  c.ioc.restart();
  c.ioc.run();
}

// getaddrinfo cannot be interrupted: a name is resolved on a detached thread and waited
// for at most `timeout`. Address literals need no lookup.
beast::error_code resolve(const Endpoint& ep, std::chrono::milliseconds timeout,
                          std::vector<tcp::endpoint>& out) {
  const auto port = static_cast<uint16_t>(std::stoul(ep.port));
  beast::error_code ec;
  const auto address = asio::ip::make_address(ep.host, ec);
  if (!ec) {
    out.assign(1, tcp::endpoint(address, port));
    return {};
  }
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    beast::error_code ec;
    std::vector<tcp::endpoint> endpoints;
  };
  auto shared = std::make_shared<Shared>();
  std::thread([shared, host = ep.host, service = ep.port] {
    asio::io_context ioc;
    tcp::resolver resolver(ioc);
    beast::error_code e;
    auto results = resolver.resolve(host, service, e);
    std::lock_guard lock(shared->mu);
    shared->ec = e;
    for (const auto& r : results) shared->endpoints.push_back(r.endpoint());
    shared->done = true;
    shared->cv.notify_all();
  }).detach();
  std::unique_lock lock(shared->mu);
  if (!shared->cv.wait_for(lock, timeout, [&] { return shared->done; }))
    return beast::error::timeout;
  if (shared->ec) return shared->ec;
  if (shared->endpoints.empty()) return asio::error::host_not_found;
  out = std::move(shared->endpoints);
  return {};
}

// Bounded set of connections: at most `max` open (in use or idle) at once.
class Pool {
 public:
  explicit Pool(int max) : max_(max) {}

  // An idle connection (reused = true), or a new unconnected one. Waits while `max` are in use.
  std::unique_ptr<Connection> take(bool& reused) {
    std::unique_lock lock(mu_);
    for (;;) {
      while (!idle_.empty()) {
        std::unique_ptr<Connection> c = std::move(idle_.back());
        idle_.pop_back();
        if (SteadyClock::now() - c->idle_since < k_idle_reuse_max) {
          reused = true;
          return c;
        }
        --open_;  // the newest idle one is stale, so are the others: close them all
      }
      if (open_ < max_) {
        ++open_;
        reused = false;
        return std::make_unique<Connection>();
      }
      cv_.wait(lock);
    }
  }

  void give_back(std::unique_ptr<Connection> c, bool keep) {
    std::lock_guard lock(mu_);
    if (keep) {
      c->idle_since = SteadyClock::now();
      idle_.push_back(std::move(c));
    } else {
      --open_;
      c.reset();
    }
    cv_.notify_one();
  }

 private:
  const int max_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Connection>> idle_;  // most recently used last
  int open_ = 0;
};

// A connection taken from the pool for one exchange; returned (kept only if `keep`).
class Lease {
 public:
  explicit Lease(Pool& pool) : pool_(pool), conn_(pool.take(reused_)) {}
  ~Lease() { pool_.give_back(std::move(conn_), keep); }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;

  Connection& conn() { return *conn_; }
  bool reused() const { return reused_; }
  bool keep = false;

 private:
  Pool& pool_;
  bool reused_ = false;
  std::unique_ptr<Connection> conn_;
};

using Response = http::response<http::string_body>;

struct Request {
  http::verb method = http::verb::get;
  std::string target;  // path and query, %-encoded
  std::string_view body;
  sigv4::HeaderList extra_headers;
  uint64_t reply_body_max_bytes = k_other_body_max_bytes;
};

// The outcome of one try on one connection.
struct Exchange {
  beast::error_code ec;  // transport error, if any
  const char* stage = "";
  bool nothing_received = true;  // no byte of an answer arrived
  Response response;
};

}  // namespace

// ---- public helpers ----

bool valid_bucket_name(std::string_view name) { return bucket_name_problem(name) == nullptr; }

Result<S3Location> parse_repo_url(std::string_view url) {
  constexpr std::string_view k_scheme = "s3://";
  if (!url.starts_with(k_scheme)) {
    CAIRN_LOG_WARN(k_log, "bad repository URL \"%.*s\": expected s3://BUCKET[/PREFIX]",
                   static_cast<int>(url.size()), url.data());
    return Errc::invalid_argument;
  }
  std::string_view rest = url.substr(k_scheme.size());
  const size_t slash = rest.find('/');
  const std::string_view bucket = rest.substr(0, slash);
  std::string_view prefix =
      slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
  if (const char* problem = bucket_name_problem(bucket)) {
    CAIRN_LOG_WARN(k_log, "bad repository URL \"%.*s\": bucket name \"%.*s\" %s",
                   static_cast<int>(url.size()), url.data(), static_cast<int>(bucket.size()),
                   bucket.data(), problem);
    return Errc::invalid_argument;
  }
  while (!prefix.empty() && prefix.back() == '/') prefix.remove_suffix(1);
  if (const char* problem = prefix_problem(prefix)) {
    CAIRN_LOG_WARN(k_log, "bad repository URL \"%.*s\": prefix %s", static_cast<int>(url.size()),
                   url.data(), problem);
    return Errc::invalid_argument;
  }
  return S3Location{std::string(bucket), std::string(prefix)};
}

// ---- the store ----

struct S3BlobStore::Impl {
  Impl(S3Config c, Endpoint ep)
      : config(std::move(c)),
        endpoint(std::move(ep)),
        credentials{config.access_key, config.secret_key},
        pool(config.max_connections) {}

  const S3Config config;
  const Endpoint endpoint;
  const sigv4::Credentials credentials;
  Pool pool;

  std::string describe() const {
    return "s3://" + config.bucket + (config.prefix.empty() ? "" : "/" + config.prefix);
  }
  std::string full_key(std::string_view key) const {
    return config.prefix.empty() ? std::string(key) : config.prefix + "/" + std::string(key);
  }
  std::string object_target(std::string_view key) const {
    return "/" + config.bucket + "/" + sigv4::uri_encode(full_key(key), false);
  }

  // Connects a new connection: resolve, then connect, each within the timeout.
  beast::error_code connect(Connection& c, const char*& stage) {
    stage = "resolve";
    std::vector<tcp::endpoint> addresses;
    if (auto ec = resolve(endpoint, config.timeout, addresses)) return ec;
    stage = "connect";
    beast::error_code ec;
    c.stream.expires_after(config.timeout);
    c.stream.async_connect(addresses, [&](beast::error_code e, const tcp::endpoint&) { ec = e; });
    run(c);
    if (!ec) {
      beast::error_code ignored;
      c.stream.socket().set_option(tcp::no_delay(true), ignored);
    }
    return ec;
  }

  // One try: sign, (connect,) write, read. Each read or write of progress has its own
  // deadline, so a large body on a slow link is fine and a stalled one is not.
  Exchange exchange_once(Lease& lease, const Request& r, const std::string& payload_hash) {
    Exchange x;
    Connection& c = lease.conn();
    sigv4::SignOptions so;
    so.region = config.region;
    so.now_unix_s = system_now_s();
    so.payload_hash = payload_hash;
    auto headers = sigv4::sign_request(to_std(http::to_string(r.method)), endpoint.host_header,
                                       r.target, credentials, so, r.extra_headers);
    CAIRN_ASSERT(headers);  // targets are built here from encoded keys: always well-formed

    if (!lease.reused()) {
      if ((x.ec = connect(c, x.stage))) return x;
    }
    http::request<http::span_body<const char>> req;
    req.method(r.method);
    req.target(to_beast(r.target));
    req.version(11);
    for (const auto& [name, value] : headers.value()) req.set(name, value);
    req.set(http::field::user_agent, "cairn-backup");
    req.body() = beast::span<const char>(r.body.data(), r.body.size());

    x.stage = "write";
    http::request_serializer<http::span_body<const char>> serializer(req);
    beast::error_code write_ec;
    while (!serializer.is_done()) {
      c.stream.expires_after(config.timeout);
      http::async_write_some(c.stream, serializer,
                             [&](beast::error_code e, size_t) { write_ec = e; });
      run(c);
      if (write_ec) break;
    }
    if (write_ec == beast::error::timeout) {
      x.ec = write_ec;
      return x;
    }
    // After a failed write the server may still have answered (a 403 before it read a
    // large body, say): read what it sent, and report the write error only if nothing came.
    x.stage = "read";
    http::response_parser<http::string_body> parser;
    parser.body_limit(r.reply_body_max_bytes);
    if (r.method == http::verb::head) parser.skip(true);
    c.stream.expires_after(config.timeout);
    http::async_read_header(c.stream, c.buffer, parser,
                            [&](beast::error_code e, size_t) { x.ec = e; });
    run(c);
    x.nothing_received = !parser.got_some();
    while (!x.ec && !parser.is_done()) {
      c.stream.expires_after(config.timeout);
      http::async_read_some(c.stream, c.buffer, parser,
                            [&](beast::error_code e, size_t) { x.ec = e; });
      run(c);
    }
    if (x.ec) {
      if (write_ec && x.ec != http::error::body_limit) {
        x.stage = "write";
        x.ec = write_ec;
      }
      return x;
    }
    x.response = parser.release();
    lease.keep = !write_ec && x.response.keep_alive();
    return x;
  }

  // Sends a request, retrying transport errors and 500/502/503/504. Returns the last answer
  // (any status), or unavailable (transport failure after the retries) or io_error (an
  // answer over its size bound).
  Result<Response> perform(const Request& r, std::string_view what) {
    const std::string payload_hash = sigv4::sha256_hex(r.body);
    int attempt = 0;
    // A kept-alive connection the server has closed meanwhile fails before any answer; such
    // a failure is not counted, and drops the connection. At most every pooled one can be.
    int stale_budget = config.max_connections;
    for (;;) {
      Exchange x;
      bool reused = false;
      {
        Lease lease(pool);
        reused = lease.reused();
        x = exchange_once(lease, r, payload_hash);
      }
      if (!x.ec) {
        const unsigned status = x.response.result_int();
        const bool retryable = status == 500 || status == 502 || status == 503 || status == 504;
        if (!retryable || attempt >= config.retries) return std::move(x.response);
        CAIRN_LOG_DEBUG(k_log, "%.*s: HTTP %u, retrying", static_cast<int>(what.size()),
                        what.data(), status);
      } else if (x.ec == http::error::body_limit) {
        CAIRN_LOG_WARN(k_log, "%.*s: the answer is larger than %llu bytes",
                       static_cast<int>(what.size()), what.data(),
                       static_cast<unsigned long long>(r.reply_body_max_bytes));
        return Errc::io_error;
      } else if (reused && x.nothing_received && x.ec != beast::error::timeout &&
                 stale_budget > 0) {
        --stale_budget;
        CAIRN_LOG_DEBUG(k_log, "%.*s: kept-alive connection failed (%s), reconnecting",
                        static_cast<int>(what.size()), what.data(), x.ec.message().c_str());
        continue;
      } else if (attempt >= config.retries) {
        CAIRN_LOG_WARN(k_log, "%.*s: %s failed after %d tries: %s (endpoint %s)",
                       static_cast<int>(what.size()), what.data(), x.stage, attempt + 1,
                       x.ec.message().c_str(), config.endpoint.c_str());
        return Errc::unavailable;
      } else {
        CAIRN_LOG_DEBUG(k_log, "%.*s: %s failed: %s, retrying", static_cast<int>(what.size()),
                        what.data(), x.stage, x.ec.message().c_str());
      }
      ++attempt;
      std::this_thread::sleep_for(std::min<std::chrono::milliseconds>(
          k_backoff_first * (1 << std::min(attempt - 1, 10)), k_backoff_max));
    }
  }

  // A non-2xx answer -> its Errc, logged once with the S3 code and message.
  std::error_code answer_error(std::string_view what, const Response& res) const {
    const S3ErrorBody err = parse_error_body(res.body());
    const unsigned status = res.result_int();
    Errc e = Errc::io_error;
    if (status == 404 &&
        (err.code.empty() || err.code == "NoSuchKey" || err.code == "NoSuchBucket"))
      e = Errc::not_found;
    else if (status == 403)
      e = Errc::permission_denied;
    else if (status == 503)
      e = Errc::unavailable;
    const LogLevel level = e == Errc::not_found ? LogLevel::debug : LogLevel::warn;
    if (log_level() <= level) {
      const std::string message =
          err.message.empty() ? std::string(to_std(res.reason())) : err.message;
      logf(level, k_log, "%.*s: HTTP %u %s: %s", static_cast<int>(what.size()), what.data(), status,
           err.code.empty() ? "-" : err.code.c_str(), message.c_str());
    }
    return e;
  }

  static bool is_2xx(const Response& res) { return res.result_int() / 100 == 2; }

  std::string what(std::string_view op, std::string_view key) const {
    std::string out(op);
    out += ' ';
    out += describe();
    if (!key.empty()) out.append("/").append(key);
    return out;
  }
};

Result<std::unique_ptr<S3BlobStore>> S3BlobStore::open(S3Config config) {
  const char* problem = nullptr;
  auto endpoint = parse_endpoint(config.endpoint, problem);
  auto bad = [&](const char* fmt_what, const std::string& value, const char* why) {
    CAIRN_LOG_WARN(k_log, "bad S3 configuration: %s \"%s\" %s", fmt_what, value.c_str(), why);
    return Errc::invalid_argument;
  };
  if (!endpoint) return bad("endpoint", config.endpoint, problem);
  if (const char* why = bucket_name_problem(config.bucket))
    return bad("bucket", config.bucket, why);
  if (!config.prefix.empty() && config.prefix.back() == '/')
    return bad("prefix", config.prefix, "ends with '/'");
  if (const char* why = prefix_problem(config.prefix)) return bad("prefix", config.prefix, why);
  if (!valid_region(config.region))
    return bad("region", config.region, "must be lowercase letters, digits and '-'");
  if (config.access_key.empty() || config.secret_key.empty())
    return bad("access key", config.access_key, "and a secret key are required");
  if (config.max_connections < 1 || config.max_connections > k_connections_max)
    return bad("max_connections", std::to_string(config.max_connections), "is not in 1..1024");
  if (config.retries < 0 || config.retries > k_retries_max)
    return bad("retries", std::to_string(config.retries), "is not in 0..100");
  if (config.timeout.count() <= 0)
    return bad("timeout", std::to_string(config.timeout.count()), "must be positive");
  if (config.list_max_keys < 1 || config.list_max_keys > 1000)
    return bad("list_max_keys", std::to_string(config.list_max_keys), "is not in 1..1000");
  auto impl = std::make_unique<Impl>(std::move(config), std::move(*endpoint));
  return std::unique_ptr<S3BlobStore>(new S3BlobStore(std::move(impl)));
}

S3BlobStore::S3BlobStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
S3BlobStore::~S3BlobStore() = default;

const S3Config& S3BlobStore::config() const { return impl_->config; }
std::string S3BlobStore::describe() const { return impl_->describe(); }

Status S3BlobStore::create_bucket() {
  Request r;
  r.method = http::verb::put;
  r.target = "/" + impl_->config.bucket;
  std::string body;
  if (impl_->config.region != "us-east-1") {
    body = "<CreateBucketConfiguration xmlns=\"" + std::string(k_s3_xmlns) +
           "\"><LocationConstraint>" + impl_->config.region +
           "</LocationConstraint></CreateBucketConfiguration>";
    r.extra_headers.emplace_back("content-type", "application/xml");
  }
  r.body = body;
  r.extra_headers.emplace_back("content-length", std::to_string(body.size()));
  const std::string what = "create bucket s3://" + impl_->config.bucket;
  CAIRN_TRY(res, impl_->perform(r, what));
  if (Impl::is_2xx(res)) return ok();
  if (res.result_int() == 409) {
    const S3ErrorBody err = parse_error_body(res.body());
    if (err.code == "BucketAlreadyOwnedByYou") return ok();
    if (err.code == "BucketAlreadyExists") {
      // Some services (s3rver) answer BucketAlreadyExists for a bucket of one's own too: one
      // that we may reach (HEAD 2xx) is ours to use; only a refusal means someone else's.
      Request probe;
      probe.method = http::verb::head;
      probe.target = "/" + impl_->config.bucket;
      CAIRN_TRY(head, impl_->perform(probe, "HEAD bucket s3://" + impl_->config.bucket));
      if (Impl::is_2xx(head)) return ok();
      CAIRN_LOG_WARN(k_log, "%s: BucketAlreadyExists: %s", what.c_str(), err.message.c_str());
      return Errc::already_exists;
    }
  }
  return impl_->answer_error(what, res);
}

Status S3BlobStore::put(const std::string& key, std::string_view data) {
  if (key.empty()) return Errc::invalid_argument;
  Request r;
  r.method = http::verb::put;
  r.target = impl_->object_target(key);
  r.body = data;
  r.extra_headers.emplace_back("content-type", "application/octet-stream");
  r.extra_headers.emplace_back("content-length", std::to_string(data.size()));
  const std::string what = impl_->what("PUT", key);
  CAIRN_TRY(res, impl_->perform(r, what));
  if (Impl::is_2xx(res)) return ok();
  return impl_->answer_error(what, res);
}

Result<std::string> S3BlobStore::get(const std::string& key) {
  if (key.empty()) return Errc::invalid_argument;
  Request r;
  r.method = http::verb::get;
  r.target = impl_->object_target(key);
  r.reply_body_max_bytes = k_get_body_max_bytes;
  const std::string what = impl_->what("GET", key);
  CAIRN_TRY(res, impl_->perform(r, what));
  if (Impl::is_2xx(res)) return std::move(res.body());
  return impl_->answer_error(what, res);
}

Result<std::optional<BlobInfo>> S3BlobStore::head(const std::string& key) {
  if (key.empty()) return Errc::invalid_argument;
  Request r;
  r.method = http::verb::head;
  r.target = impl_->object_target(key);
  const std::string what = impl_->what("HEAD", key);
  CAIRN_TRY(res, impl_->perform(r, what));
  if (!Impl::is_2xx(res)) {
    auto e = impl_->answer_error(what, res);
    if (e == Errc::not_found) return std::optional<BlobInfo>();
    return e;
  }
  auto size = parse_u64(to_std(res[http::field::content_length]));
  auto mtime = sigv4::parse_http_date(to_std(res[http::field::last_modified]));
  if (!size || !mtime) {
    CAIRN_LOG_WARN(k_log, "%s: answer lacks a valid Content-Length or Last-Modified", what.c_str());
    return Errc::io_error;
  }
  return std::optional<BlobInfo>(BlobInfo{key, *size, *mtime});
}

Status S3BlobStore::list(const std::string& prefix,
                         const std::function<bool(const BlobInfo&)>& fn) {
  const std::string base = impl_->config.prefix.empty() ? "" : impl_->config.prefix + "/";
  const std::string full_prefix = base + prefix;
  const std::string what = impl_->what("LIST", prefix);
  std::string token;
  for (;;) {
    Request r;
    r.method = http::verb::get;
    r.target = "/" + impl_->config.bucket + "?list-type=2&encoding-type=url&max-keys=" +
               std::to_string(impl_->config.list_max_keys);
    if (!full_prefix.empty()) r.target += "&prefix=" + sigv4::uri_encode(full_prefix, true);
    if (!token.empty()) r.target += "&continuation-token=" + sigv4::uri_encode(token, true);
    CAIRN_TRY(res, impl_->perform(r, what));
    if (!Impl::is_2xx(res)) return impl_->answer_error(what, res);
    const char* problem = "";
    auto page = parse_list_page(res.body(), problem);
    if (!page) {
      CAIRN_LOG_WARN(k_log, "%s: bad ListObjectsV2 answer: %s", what.c_str(), problem);
      return Errc::io_error;
    }
    for (BlobInfo& info : page->objects) {
      if (!info.key.starts_with(full_prefix)) {
        CAIRN_LOG_WARN(k_log, "%s: the answer holds a key outside the prefix", what.c_str());
        return Errc::io_error;
      }
      info.key.erase(0, base.size());
      if (!fn(info)) return ok();
    }
    if (!page->truncated) return ok();
    if (page->next_token.empty() || page->next_token == token) {
      CAIRN_LOG_WARN(k_log, "%s: truncated listing without a new continuation token", what.c_str());
      return Errc::io_error;
    }
    token = std::move(page->next_token);
  }
}

Status S3BlobStore::remove(const std::string& key) {
  if (key.empty()) return Errc::invalid_argument;
  Request r;
  r.method = http::verb::delete_;
  r.target = impl_->object_target(key);
  const std::string what = impl_->what("DELETE", key);
  CAIRN_TRY(res, impl_->perform(r, what));
  if (Impl::is_2xx(res)) return ok();
  if (res.result_int() == 404 && parse_error_body(res.body()).code == "NoSuchKey") return ok();
  return impl_->answer_error(what, res);
}

}  // namespace cairn::backup
