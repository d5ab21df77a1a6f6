// A small synchronous HTTP client for the S3 server tests: one connection per request
// (or a kept-alive one), requests signed with common/sigv4.h's client signer.
#pragma once

#include <sys/socket.h>
#include <sys/time.h>

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/asio.h"
#include "common/aws_chunked.h"
#include "common/sigv4.h"

namespace cairn::objectd::testing {

struct Resp {
  unsigned status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
  // Text of the first <tag>...</tag> in the body.
  std::string xml(const std::string& tag) const {
    size_t a = body.find("<" + tag + ">");
    if (a == std::string::npos) return "<none>";
    a += tag.size() + 2;
    size_t b = body.find("</" + tag + ">", a);
    return body.substr(a, b - a);
  }
  size_t count(const std::string& needle) const {
    size_t n = 0;
    for (size_t p = body.find(needle); p != std::string::npos; p = body.find(needle, p + 1)) ++n;
    return n;
  }
};

struct Req {
  std::string method = "GET";
  std::string target = "/";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  std::optional<sigv4::Credentials> creds;  // nullopt: anonymous
  std::string host;                         // default 127.0.0.1:PORT
  std::string payload_hash;                 // default: SHA-256 of body
  bool add_content_length = true;
  int64_t now_unix_s = 0;                   // signing time; 0: now
};

inline int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

class TestClient {
 public:
  explicit TestClient(uint16_t port) : port_(port) {}

  std::string default_host() const { return "127.0.0.1:" + std::to_string(port_); }

  // Signs (when creds are set) and returns the request's headers in order.
  std::vector<std::pair<std::string, std::string>> prepare(const Req& r) const {
    std::string host = r.host.empty() ? default_host() : r.host;
    size_t q = r.target.find('?');
    std::string path = r.target.substr(0, q);
    std::string query = q == std::string::npos ? "" : r.target.substr(q + 1);
    sigv4::HttpRequestView v;
    v.method = r.method;
    v.raw_path = path;
    v.raw_query = query;
    v.headers.emplace_back("host", host);
    for (auto& h : r.headers) v.headers.push_back(h);
    if (r.add_content_length && (r.method == "PUT" || r.method == "POST"))
      v.headers.emplace_back("content-length", std::to_string(r.body.size()));
    if (r.creds) {
      sigv4::SignOptions so;
      so.now_unix_s = r.now_unix_s ? r.now_unix_s : unix_now();
      so.payload_hash = r.payload_hash.empty() ? sigv4::sha256_hex(r.body) : r.payload_hash;
      auto st = sign_headers(v, *r.creds, so);
      if (!st) throw std::runtime_error("sign: " + st.error().message());
      last_signing_ = st.value();
    }
    return v.headers;
  }

  std::string presign_url(const std::string& method, const std::string& target,
                          const sigv4::Credentials& c, int64_t expires_s, int64_t now) const {
    size_t q = target.find('?');
    std::string path = target.substr(0, q);
    std::string query = q == std::string::npos ? "" : target.substr(q + 1);
    sigv4::HttpRequestView v;
    v.method = method;
    v.raw_path = path;
    v.raw_query = query;
    v.headers.emplace_back("host", default_host());
    sigv4::PresignOptions po;
    po.now_unix_s = now;
    po.expires_s = expires_s;
    auto qs = sigv4::presign(v, c, po);
    if (!qs) throw std::runtime_error("presign: " + qs.error().message());
    return path + "?" + qs.value();
  }

  std::string raw_request(const Req& r) const {
    std::string out = r.method + " " + r.target + " HTTP/1.1\r\n";
    for (auto& [k, v] : prepare(r)) out += k + ": " + v + "\r\n";
    out += "\r\n";
    return out + r.body;
  }

  Resp send(const Req& r) {
    asio::io_context ioc;
    asio::ip::tcp::socket s(ioc);
    connect(s);
    return exchange(s, r);
  }

  void connect(asio::ip::tcp::socket& s) const {
    s.connect({asio::ip::make_address("127.0.0.1"), port_});
    timeval tv{10, 0};
    setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }

  Resp exchange(asio::ip::tcp::socket& s, const Req& r) {
    std::string raw = raw_request(r);
    asio::write(s, asio::buffer(raw));
    return read_response(s, r.method == "HEAD");
  }

  static Resp read_response(asio::ip::tcp::socket& s, bool head) {
    beast::flat_buffer buf;
    http::response_parser<http::string_body> p;
    p.body_limit(256ull << 20);
    if (head) p.skip(true);
    http::read(s, buf, p);
    Resp out;
    out.status = p.get().result_int();
    for (auto& f : p.get()) {
      std::string name(f.name_string());
      for (char& c : name) c = static_cast<char>(tolower(static_cast<unsigned char>(c)));
      out.headers[name] = std::string(f.value());
    }
    out.body = p.get().body();
    return out;
  }

  sigv4::SigningContext last_signing() const { return last_signing_; }

 private:
  uint16_t port_;
  mutable sigv4::SigningContext last_signing_;
};

}  // namespace cairn::objectd::testing
