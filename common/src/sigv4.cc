#include "common/sigv4.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <cstring>

#include "common/assert.h"
#include "common/log.h"

namespace cairn::sigv4 {
namespace {

constexpr const char* k_log = "sigv4";

class AuthCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "sigv4"; }
  std::string message(int c) const override {
    switch (static_cast<AuthErrc>(c)) {
      case AuthErrc::ok: return "ok";
      case AuthErrc::bad_digest: return "checksum does not match the body";
      case AuthErrc::access_denied: return "access denied";
      case AuthErrc::incomplete_body: return "incomplete body";
      case AuthErrc::invalid_argument: return "malformed authentication data";
      case AuthErrc::signature_does_not_match: return "signature does not match";
      case AuthErrc::invalid_access_key_id: return "unknown access key id";
      case AuthErrc::request_expired: return "request expired or clock skew too large";
      case AuthErrc::not_implemented: return "authentication scheme not implemented";
    }
    return "unknown sigv4 error " + std::to_string(c);
  }
};

std::error_code err(AuthErrc e) { return make_error_code(e); }

char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = ascii_lower(c);
  return out;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  }
  return true;
}

bool is_space(char c) { return c == ' ' || c == '\t'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

bool is_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool is_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

bool is_sha256_hex(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), is_hex);
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    const size_t pos = s.find(sep, start);
    if (pos == std::string_view::npos) {
      out.push_back(s.substr(start));
      return out;
    }
    out.push_back(s.substr(start, pos - start));
    start = pos + 1;
  }
}

// Decoded query parameters in order of appearance; empty pieces ("a=1&&b") skipped.
Result<std::vector<std::pair<std::string, std::string>>> parse_query(std::string_view raw) {
  std::vector<std::pair<std::string, std::string>> out;
  if (raw.empty()) return out;
  for (std::string_view piece : split(raw, '&')) {
    if (piece.empty()) continue;
    const size_t eq = piece.find('=');
    const std::string_view name = piece.substr(0, eq);
    const std::string_view value = eq == std::string_view::npos ? std::string_view{} : piece.substr(eq + 1);
    auto n = uri_decode(name, true);
    auto v = uri_decode(value, true);
    if (!n || !v) {
      CAIRN_LOG_DEBUG(k_log, "bad %%-escape in query parameter");
      return err(AuthErrc::invalid_argument);
    }
    out.emplace_back(std::move(*n), std::move(*v));
  }
  return out;
}

Result<Credential> parse_credential(std::string_view text) {
  // AK/DATE/REGION/SERVICE/aws4_request, taken from the right.
  const auto parts = split(text, '/');
  if (parts.size() < 5 || parts.back() != "aws4_request") {
    CAIRN_LOG_DEBUG(k_log, "malformed credential scope");
    return err(AuthErrc::invalid_argument);
  }
  const size_t n = parts.size();
  Credential c;
  const size_t ak_len = text.size() - (parts[n - 4].size() + parts[n - 3].size() +
                                        parts[n - 2].size() + parts[n - 1].size() + 4);
  c.access_key_id = std::string(text.substr(0, ak_len));
  c.date = std::string(parts[n - 4]);
  c.region = std::string(parts[n - 3]);
  c.service = std::string(parts[n - 2]);
  if (c.access_key_id.empty() || c.date.size() != 8 || !is_digits(c.date) || c.region.empty() ||
      c.service.empty()) {
    CAIRN_LOG_DEBUG(k_log, "malformed credential scope");
    return err(AuthErrc::invalid_argument);
  }
  return c;
}

Result<std::vector<std::string>> parse_signed_headers(std::string_view text) {
  std::vector<std::string> names;
  for (std::string_view name : split(text, ';')) {
    if (name.empty()) {
      CAIRN_LOG_DEBUG(k_log, "empty name in SignedHeaders");
      return err(AuthErrc::invalid_argument);
    }
    names.push_back(lower(name));
  }
  return names;
}

Result<std::string> parse_signature(std::string_view text) {
  if (!is_sha256_hex(text)) {
    CAIRN_LOG_DEBUG(k_log, "signature is not 64 hex digits");
    return err(AuthErrc::invalid_argument);
  }
  return lower(text);
}

bool contains(const std::vector<std::string>& names, std::string_view name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

bool valid_civil(int64_t y, unsigned mo, unsigned d, unsigned h, unsigned mi, unsigned s) {
  if (y < 1970 || y > 9999 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || s > 60) return false;
  static constexpr unsigned k_days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return d <= k_days[mo - 1] + (mo == 2 && leap ? 1 : 0);
}

unsigned num(std::string_view s) {
  unsigned v = 0;
  for (char c : s) v = v * 10 + static_cast<unsigned>(c - '0');
  return v;
}

// Headers a signer leaves out: they change hop by hop or are added by HTTP libraries.
bool skip_when_signing(std::string_view lower_name) {
  static constexpr std::string_view k_skip[] = {
      "authorization", "connection", "expect", "keep-alive", "proxy-authenticate",
      "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
      "user-agent", "x-amzn-trace-id"};
  return std::find(std::begin(k_skip), std::end(k_skip), lower_name) != std::end(k_skip);
}

Result<PayloadMode> payload_mode_of(std::string_view content_sha256) {
  if (content_sha256 == k_unsigned_payload) return PayloadMode::unsigned_payload;
  if (content_sha256 == k_streaming_signed) return PayloadMode::streaming_signed;
  if (content_sha256 == k_streaming_signed_trailer) return PayloadMode::streaming_signed_trailer;
  if (content_sha256 == k_streaming_unsigned_trailer) return PayloadMode::streaming_unsigned_trailer;
  if (is_sha256_hex(content_sha256)) return PayloadMode::signed_hash;
  if (content_sha256.starts_with("STREAMING-")) {
    CAIRN_LOG_DEBUG(k_log, "unsupported streaming mode %.*s",
                    static_cast<int>(content_sha256.size()), content_sha256.data());
    return err(AuthErrc::not_implemented);
  }
  CAIRN_LOG_DEBUG(k_log, "x-amz-content-sha256 is neither a hash nor a known literal");
  return err(AuthErrc::invalid_argument);
}

Status check_scope(const Credential& c, const VerifyOptions& options) {
  if (!contains(options.services, c.service)) {
    CAIRN_LOG_DEBUG(k_log, "credential scope names service '%s'", c.service.c_str());
    return err(AuthErrc::invalid_argument);
  }
  if (!options.region.empty() && c.region != options.region) {
    CAIRN_LOG_DEBUG(k_log, "credential scope names region '%s'", c.region.c_str());
    return err(AuthErrc::invalid_argument);
  }
  return ok();
}

// Computes the signature of a request under the given pieces and compares it.
Result<Digest> check_signature(const HttpRequestView& request, const Credential& credential,
                               std::string_view amz_date, std::string_view signed_headers,
                               const std::vector<std::string>& signed_header_names,
                               std::string_view canonical_query_string,
                               std::string_view payload_hash, std::string_view signature_hex,
                               const SecretLookup& secret_lookup) {
  CAIRN_TRY(secret, secret_lookup(credential.access_key_id));
  CAIRN_TRY(uri, canonical_uri(request.raw_path));
  CAIRN_TRY(headers, canonical_headers(request, signed_header_names));
  const std::string creq = canonical_request(request.method, uri, canonical_query_string, headers,
                                             signed_headers, payload_hash);
  const std::string sts = string_to_sign(amz_date, credential.scope(), creq);
  const Digest key =
      derive_signing_key(secret, credential.date, credential.region, credential.service);
  const std::string expected = sign(key, sts);
  if (!signatures_equal(expected, signature_hex)) {
    CAIRN_LOG_DEBUG(k_log, "signature mismatch for key %s; canonical request:\n%s",
                    credential.access_key_id.c_str(), creq.c_str());
    return err(AuthErrc::signature_does_not_match);
  }
  return key;
}

Result<AuthContext> verify_header(const HttpRequestView& request, std::string_view authorization,
                                  const SecretLookup& secret_lookup, int64_t now_unix_s,
                                  const VerifyOptions& options) {
  CAIRN_TRY(auth, parse_authorization(authorization));
  CAIRN_TRY(check_scope(auth.credential, options));

  std::string amz_date;
  std::string_view date_header;
  int64_t request_s = 0;
  if (auto x_amz_date = request.header("x-amz-date")) {
    amz_date = std::string(trim(*x_amz_date));
    date_header = "x-amz-date";
    auto t = parse_amz_date(amz_date);
    if (!t) {
      CAIRN_LOG_DEBUG(k_log, "malformed x-amz-date");
      return err(AuthErrc::access_denied);
    }
    request_s = *t;
  } else if (auto date = request.header("date")) {
    date_header = "date";
    auto t = parse_http_date(trim(*date));
    if (!t) {
      CAIRN_LOG_DEBUG(k_log, "malformed Date header");
      return err(AuthErrc::access_denied);
    }
    request_s = *t;
    amz_date = format_amz_date(request_s);
  } else {
    CAIRN_LOG_DEBUG(k_log, "neither x-amz-date nor Date present");
    return err(AuthErrc::access_denied);
  }
  if (request_s > now_unix_s + options.max_skew_s || request_s < now_unix_s - options.max_skew_s) {
    CAIRN_LOG_DEBUG(k_log, "request time %lld is more than %lld s from now %lld",
                    static_cast<long long>(request_s), static_cast<long long>(options.max_skew_s),
                    static_cast<long long>(now_unix_s));
    return err(AuthErrc::request_expired);
  }
  if (auth.credential.date != std::string_view(amz_date).substr(0, 8)) {
    CAIRN_LOG_DEBUG(k_log, "credential date differs from the request date");
    return err(AuthErrc::invalid_argument);
  }
  if (!contains(auth.signed_header_names, "host") ||
      !contains(auth.signed_header_names, date_header)) {
    CAIRN_LOG_DEBUG(k_log, "host and the date header must be signed");
    return err(AuthErrc::access_denied);
  }

  std::string payload_hash;
  const auto content_sha256 = request.header("x-amz-content-sha256");
  if (content_sha256) {
    payload_hash = std::string(trim(*content_sha256));
  } else if (options.s3_rules) {
    CAIRN_LOG_DEBUG(k_log, "x-amz-content-sha256 missing");
    return err(AuthErrc::invalid_argument);
  } else {
    payload_hash = request.payload_sha256_hex.empty() ? std::string(k_empty_sha256_hex)
                                                      : std::string(request.payload_sha256_hex);
  }
  if (options.s3_rules) {
    for (const auto& [name, value] : request.headers) {
      const std::string l = lower(name);
      if (l.starts_with("x-amz-") && !contains(auth.signed_header_names, l)) {
        CAIRN_LOG_DEBUG(k_log, "header %s present but not signed", l.c_str());
        return err(AuthErrc::access_denied);
      }
    }
  }
  PayloadMode mode = PayloadMode::signed_hash;
  if (content_sha256 || options.s3_rules) {
    CAIRN_TRY(m, payload_mode_of(payload_hash));
    mode = m;
  }

  CAIRN_TRY(query, canonical_query(request.raw_query, false));
  CAIRN_TRY(key, check_signature(request, auth.credential, amz_date, auth.signed_headers,
                                 auth.signed_header_names, query, payload_hash,
                                 auth.signature_hex, secret_lookup));
  AuthContext ctx;
  ctx.access_key_id = auth.credential.access_key_id;
  ctx.region = auth.credential.region;
  ctx.service = auth.credential.service;
  ctx.presigned = false;
  ctx.payload_mode = mode;
  ctx.content_sha256 = std::move(payload_hash);
  ctx.signed_header_names = std::move(auth.signed_header_names);
  ctx.signing.signing_key = key;
  ctx.signing.amz_date = std::move(amz_date);
  ctx.signing.scope = auth.credential.scope();
  ctx.signing.seed_signature_hex = std::move(auth.signature_hex);
  return ctx;
}

Result<AuthContext> verify_presigned(const HttpRequestView& request,
                                     const SecretLookup& secret_lookup, int64_t now_unix_s,
                                     const VerifyOptions& options) {
  CAIRN_TRY(q, parse_presigned_query(request.raw_query));
  CAIRN_TRY(check_scope(q.credential, options));
  const int64_t signed_at_s = *parse_amz_date(q.amz_date);  // validated by the parser
  if (now_unix_s < signed_at_s - options.max_skew_s) {
    CAIRN_LOG_DEBUG(k_log, "presigned URL not valid yet");
    return err(AuthErrc::access_denied);
  }
  if (now_unix_s > signed_at_s + q.expires_s) {
    CAIRN_LOG_DEBUG(k_log, "presigned URL expired");
    return err(AuthErrc::request_expired);
  }
  if (q.credential.date != std::string_view(q.amz_date).substr(0, 8)) {
    CAIRN_LOG_DEBUG(k_log, "credential date differs from X-Amz-Date");
    return err(AuthErrc::invalid_argument);
  }
  if (!contains(q.signed_header_names, "host")) {
    CAIRN_LOG_DEBUG(k_log, "host must be signed");
    return err(AuthErrc::access_denied);
  }
  // As in MinIO: the query's X-Amz-Content-Sha256, else the header, else unsigned.
  std::string payload_hash(k_unsigned_payload);
  if (q.content_sha256) {
    payload_hash = *q.content_sha256;
  } else if (auto h = request.header("x-amz-content-sha256")) {
    payload_hash = std::string(trim(*h));
  }
  CAIRN_TRY(mode, payload_mode_of(payload_hash));
  if (is_streaming(mode)) {
    CAIRN_LOG_DEBUG(k_log, "streaming payloads cannot be presigned");
    return err(AuthErrc::invalid_argument);
  }
  CAIRN_TRY(query, canonical_query(request.raw_query, true));
  CAIRN_TRY(key, check_signature(request, q.credential, q.amz_date, q.signed_headers,
                                 q.signed_header_names, query, payload_hash, q.signature_hex,
                                 secret_lookup));
  AuthContext ctx;
  ctx.access_key_id = q.credential.access_key_id;
  ctx.region = q.credential.region;
  ctx.service = q.credential.service;
  ctx.presigned = true;
  ctx.payload_mode = mode;
  ctx.content_sha256 = std::move(payload_hash);
  ctx.signed_header_names = std::move(q.signed_header_names);
  ctx.signing.signing_key = key;
  ctx.signing.amz_date = std::move(q.amz_date);
  ctx.signing.scope = q.credential.scope();
  ctx.signing.seed_signature_hex = std::move(q.signature_hex);
  return ctx;
}

// Signed names (lowercase, sorted, unique) of every header a client signs.
std::vector<std::string> names_to_sign(const HttpRequestView& request) {
  std::vector<std::string> names;
  for (const auto& [name, value] : request.headers) {
    std::string l = lower(name);
    if (!skip_when_signing(l)) names.push_back(std::move(l));
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

std::string join(const std::vector<std::string>& names, char sep) {
  std::string out;
  for (const auto& n : names) {
    if (!out.empty()) out += sep;
    out += n;
  }
  return out;
}

void erase_header(HttpRequestView& request, std::string_view name) {
  auto& h = request.headers;
  h.erase(std::remove_if(h.begin(), h.end(), [&](const auto& kv) { return iequals(kv.first, name); }),
          h.end());
}

}  // namespace

const std::error_category& auth_category() noexcept {
  static const AuthCategory category;
  return category;
}

// ---- hashing ----

std::string to_hex(const Digest& digest) {
  static constexpr char k_digits[] = "0123456789abcdef";
  std::string out(64, '\0');
  for (size_t i = 0; i < digest.size(); ++i) {
    out[2 * i] = k_digits[digest[i] >> 4];
    out[2 * i + 1] = k_digits[digest[i] & 0xf];
  }
  return out;
}

std::string sha256_hex(std::string_view data) {
  Digest d{};
  unsigned int n = 0;
  CAIRN_ASSERT(EVP_Digest(data.data(), data.size(), d.data(), &n, EVP_sha256(), nullptr) == 1);
  return to_hex(d);
}

Digest hmac_sha256(std::string_view key, std::string_view data) {
  Digest d{};
  unsigned int n = 0;
  CAIRN_ASSERT(HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
                    reinterpret_cast<const unsigned char*>(data.data()), data.size(), d.data(),
                    &n) != nullptr &&
               n == d.size());
  return d;
}

Digest hmac_sha256(const Digest& key, std::string_view data) {
  return hmac_sha256(std::string_view(reinterpret_cast<const char*>(key.data()), key.size()), data);
}

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  CAIRN_ASSERT(ctx_ != nullptr);
  CAIRN_ASSERT(EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), EVP_sha256(), nullptr) == 1);
}

Sha256::~Sha256() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }

Sha256::Sha256(Sha256&& other) noexcept : ctx_(std::exchange(other.ctx_, nullptr)) {}

Sha256& Sha256::operator=(Sha256&& other) noexcept {
  std::swap(ctx_, other.ctx_);
  return *this;
}

void Sha256::update(std::string_view data) {
  CAIRN_ASSERT(EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data.data(), data.size()) == 1);
}

Digest Sha256::finish() {
  auto* ctx = static_cast<EVP_MD_CTX*>(ctx_);
  Digest d{};
  unsigned int n = 0;
  CAIRN_ASSERT(EVP_DigestFinal_ex(ctx, d.data(), &n) == 1 && n == d.size());
  CAIRN_ASSERT(EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) == 1);
  return d;
}

std::string Sha256::finish_hex() { return to_hex(finish()); }

// ---- request view ----

std::optional<std::string_view> HttpRequestView::header(std::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (iequals(n, name)) return std::string_view(v);
  }
  return std::nullopt;
}

std::string Credential::scope() const {
  return date + "/" + region + "/" + service + "/aws4_request";
}

// ---- parsing ----

Result<AuthorizationHeader> parse_authorization(std::string_view value) {
  value = trim(value);
  if (!value.starts_with(k_algorithm) || value.size() == k_algorithm.size() ||
      !is_space(value[k_algorithm.size()])) {
    if (value.starts_with("AWS ") || value.starts_with("AWS4-ECDSA-P256-SHA256")) {
      CAIRN_LOG_DEBUG(k_log, "unsupported Authorization scheme");
      return err(AuthErrc::not_implemented);
    }
    CAIRN_LOG_DEBUG(k_log, "Authorization does not start with %s", k_algorithm.data());
    return err(AuthErrc::invalid_argument);
  }
  std::optional<std::string_view> credential, signed_headers, signature;
  for (std::string_view part : split(value.substr(k_algorithm.size() + 1), ',')) {
    part = trim(part);
    const size_t eq = part.find('=');
    if (eq == std::string_view::npos) {
      CAIRN_LOG_DEBUG(k_log, "Authorization component without '='");
      return err(AuthErrc::invalid_argument);
    }
    const std::string_view key = trim(part.substr(0, eq));
    const std::string_view val = trim(part.substr(eq + 1));
    std::optional<std::string_view>* slot = key == "Credential"      ? &credential
                                            : key == "SignedHeaders" ? &signed_headers
                                            : key == "Signature"     ? &signature
                                                                     : nullptr;
    if (slot == nullptr || slot->has_value()) {
      CAIRN_LOG_DEBUG(k_log, "unknown or repeated Authorization component");
      return err(AuthErrc::invalid_argument);
    }
    *slot = val;
  }
  if (!credential || !signed_headers || !signature) {
    CAIRN_LOG_DEBUG(k_log, "Authorization lacks Credential, SignedHeaders or Signature");
    return err(AuthErrc::invalid_argument);
  }
  AuthorizationHeader out;
  CAIRN_TRY(c, parse_credential(*credential));
  out.credential = std::move(c);
  out.signed_headers = std::string(*signed_headers);
  CAIRN_TRY(names, parse_signed_headers(*signed_headers));
  out.signed_header_names = std::move(names);
  CAIRN_TRY(sig, parse_signature(*signature));
  out.signature_hex = std::move(sig);
  return out;
}

Result<PresignedQuery> parse_presigned_query(std::string_view raw_query) {
  CAIRN_TRY(params, parse_query(raw_query));
  std::optional<std::string> algorithm, credential, date, expires, signed_headers, signature,
      content_sha256;
  for (auto& [name, value] : params) {
    std::optional<std::string>* slot = name == "X-Amz-Algorithm"        ? &algorithm
                                       : name == "X-Amz-Credential"     ? &credential
                                       : name == "X-Amz-Date"           ? &date
                                       : name == "X-Amz-Expires"        ? &expires
                                       : name == "X-Amz-SignedHeaders"  ? &signed_headers
                                       : name == "X-Amz-Signature"      ? &signature
                                       : name == "X-Amz-Content-Sha256" ? &content_sha256
                                                                        : nullptr;
    if (slot == nullptr) continue;
    if (slot->has_value()) {
      CAIRN_LOG_DEBUG(k_log, "repeated %s", name.c_str());
      return err(AuthErrc::invalid_argument);
    }
    *slot = std::move(value);
  }
  if (!algorithm || !credential || !date || !expires || !signed_headers || !signature) {
    CAIRN_LOG_DEBUG(k_log, "presigned URL lacks an X-Amz-* parameter");
    return err(AuthErrc::invalid_argument);
  }
  if (*algorithm != k_algorithm) {
    CAIRN_LOG_DEBUG(k_log, "unsupported X-Amz-Algorithm");
    return err(*algorithm == "AWS4-ECDSA-P256-SHA256" ? AuthErrc::not_implemented
                                                      : AuthErrc::invalid_argument);
  }
  PresignedQuery out;
  CAIRN_TRY(c, parse_credential(*credential));
  out.credential = std::move(c);
  if (!parse_amz_date(*date)) {
    CAIRN_LOG_DEBUG(k_log, "malformed X-Amz-Date");
    return err(AuthErrc::invalid_argument);
  }
  out.amz_date = std::move(*date);
  if (!is_digits(*expires) || expires->size() > 7) {
    CAIRN_LOG_DEBUG(k_log, "malformed X-Amz-Expires");
    return err(AuthErrc::invalid_argument);
  }
  out.expires_s = std::stoll(*expires);
  if (out.expires_s < 1 || out.expires_s > k_presign_expires_max_s) {
    CAIRN_LOG_DEBUG(k_log, "X-Amz-Expires outside 1..604800");
    return err(AuthErrc::invalid_argument);
  }
  out.signed_headers = std::move(*signed_headers);
  CAIRN_TRY(names, parse_signed_headers(out.signed_headers));
  out.signed_header_names = std::move(names);
  CAIRN_TRY(sig, parse_signature(*signature));
  out.signature_hex = std::move(sig);
  out.content_sha256 = std::move(content_sha256);
  return out;
}

AuthKind auth_kind(const HttpRequestView& request) {
  if (auto a = request.header("authorization")) {
    const std::string_view v = trim(*a);
    return v.starts_with(k_algorithm) && v.size() > k_algorithm.size() && is_space(v[k_algorithm.size()])
               ? AuthKind::header
               : AuthKind::unsupported;
  }
  bool v4 = false, v2 = false;
  for (std::string_view piece : split(request.raw_query, '&')) {
    const std::string_view name = piece.substr(0, piece.find('='));
    if (name == "X-Amz-Algorithm" || name == "X-Amz-Signature" || name == "X-Amz-Credential") v4 = true;
    if (name == "AWSAccessKeyId") v2 = true;
  }
  if (v4) return AuthKind::presigned;
  return v2 ? AuthKind::unsupported : AuthKind::none;
}

// ---- canonicalization ----

std::string uri_encode(std::string_view bytes, bool encode_slash) {
  static constexpr char k_digits[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(bytes.size() * 3 / 2);
  for (const char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    const bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                            (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
    if (unreserved || (c == '/' && !encode_slash)) {
      out += ch;
    } else {
      out += '%';
      out += k_digits[c >> 4];
      out += k_digits[c & 0xf];
    }
  }
  return out;
}

std::optional<std::string> uri_decode(std::string_view text, bool plus_is_space) {
  auto hexval = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '%') {
      if (i + 2 >= text.size()) return std::nullopt;
      const int hi = hexval(text[i + 1]), lo = hexval(text[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

Result<std::string> canonical_uri(std::string_view raw_path) {
  if (raw_path.empty()) return std::string("/");
  std::string out;
  out.reserve(raw_path.size() + 16);
  bool first = true;
  for (std::string_view segment : split(raw_path, '/')) {
    if (!first) out += '/';
    first = false;
    auto decoded = uri_decode(segment, false);
    if (!decoded) {
      CAIRN_LOG_DEBUG(k_log, "bad %%-escape in path");
      return err(AuthErrc::invalid_argument);
    }
    out += uri_encode(*decoded, true);
  }
  return out;
}

Result<std::string> canonical_query(std::string_view raw_query, bool exclude_signature) {
  CAIRN_TRY(params, parse_query(raw_query));
  std::vector<std::pair<std::string, std::string>> encoded;
  encoded.reserve(params.size());
  for (const auto& [name, value] : params) {
    if (exclude_signature && name == "X-Amz-Signature") continue;
    encoded.emplace_back(uri_encode(name, true), uri_encode(value, true));
  }
  std::sort(encoded.begin(), encoded.end());
  std::string out;
  for (const auto& [name, value] : encoded) {
    if (!out.empty()) out += '&';
    out += name;
    out += '=';
    out += value;
  }
  return out;
}

std::string canonical_header_value(std::string_view value) {
  value = trim(value);
  std::string out;
  out.reserve(value.size());
  bool in_space = false;
  for (const char c : value) {
    if (is_space(c)) {
      if (!in_space) out += ' ';
      in_space = true;
    } else {
      out += c;
      in_space = false;
    }
  }
  return out;
}

Result<std::string> canonical_headers(const HttpRequestView& request,
                                      const std::vector<std::string>& signed_header_names) {
  std::string out;
  for (const auto& name : signed_header_names) {
    bool found = false;
    out += name;
    out += ':';
    for (const auto& [n, v] : request.headers) {
      if (!iequals(n, name)) continue;
      if (found) out += ',';
      out += canonical_header_value(v);
      found = true;
    }
    if (!found) {
      CAIRN_LOG_DEBUG(k_log, "signed header %s is not in the request", name.c_str());
      return err(AuthErrc::signature_does_not_match);
    }
    out += '\n';
  }
  return out;
}

std::string canonical_request(std::string_view method, std::string_view canonical_uri,
                              std::string_view canonical_query,
                              std::string_view canonical_headers,
                              std::string_view signed_headers, std::string_view payload_hash) {
  std::string out;
  out.reserve(method.size() + canonical_uri.size() + canonical_query.size() +
              canonical_headers.size() + signed_headers.size() + payload_hash.size() + 8);
  out.append(method).append("\n");
  out.append(canonical_uri).append("\n");
  out.append(canonical_query).append("\n");
  out.append(canonical_headers).append("\n");
  out.append(signed_headers).append("\n");
  out.append(payload_hash);
  return out;
}

std::string string_to_sign(std::string_view amz_date, std::string_view scope,
                           std::string_view canonical_request) {
  std::string out(k_algorithm);
  out.append("\n").append(amz_date).append("\n").append(scope).append("\n");
  out.append(sha256_hex(canonical_request));
  return out;
}

Digest derive_signing_key(std::string_view secret_access_key, std::string_view date,
                          std::string_view region, std::string_view service) {
  std::string k = "AWS4";
  k.append(secret_access_key);
  const Digest k_date = hmac_sha256(std::string_view(k), date);
  OPENSSL_cleanse(k.data(), k.size());
  const Digest k_region = hmac_sha256(k_date, region);
  const Digest k_service = hmac_sha256(k_region, service);
  return hmac_sha256(k_service, "aws4_request");
}

std::string sign(const Digest& signing_key, std::string_view string_to_sign) {
  return to_hex(hmac_sha256(signing_key, string_to_sign));
}

std::string chunk_string_to_sign(std::string_view amz_date, std::string_view scope,
                                 std::string_view previous_signature_hex,
                                 std::string_view chunk_sha256_hex) {
  std::string out = "AWS4-HMAC-SHA256-PAYLOAD\n";
  out.append(amz_date).append("\n").append(scope).append("\n");
  out.append(previous_signature_hex).append("\n");
  out.append(k_empty_sha256_hex).append("\n");
  out.append(chunk_sha256_hex);
  return out;
}

std::string trailer_string_to_sign(std::string_view amz_date, std::string_view scope,
                                   std::string_view previous_signature_hex,
                                   std::string_view trailer_sha256_hex) {
  std::string out = "AWS4-HMAC-SHA256-TRAILER\n";
  out.append(amz_date).append("\n").append(scope).append("\n");
  out.append(previous_signature_hex).append("\n");
  out.append(trailer_sha256_hex);
  return out;
}

bool signatures_equal(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

// ---- time ----

std::optional<int64_t> parse_amz_date(std::string_view t) {
  if (t.size() != 16 || t[8] != 'T' || t[15] != 'Z' || !is_digits(t.substr(0, 8)) ||
      !is_digits(t.substr(9, 6))) {
    return std::nullopt;
  }
  const int64_t y = num(t.substr(0, 4));
  const unsigned mo = num(t.substr(4, 2)), d = num(t.substr(6, 2)), h = num(t.substr(9, 2)),
                 mi = num(t.substr(11, 2)), s = num(t.substr(13, 2));
  if (!valid_civil(y, mo, d, h, mi, s)) return std::nullopt;
  return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s;
}

std::optional<int64_t> parse_http_date(std::string_view t) {
  // RFC 1123: "Fri, 24 May 2013 00:00:00 GMT" (the weekday is optional and not checked).
  if (const size_t comma = t.find(','); comma != std::string_view::npos) t = trim(t.substr(comma + 1));
  if (t.size() != 24 || t[2] != ' ' || t[6] != ' ' || t[11] != ' ' || t[14] != ':' ||
      t[17] != ':' || t[20] != ' ' || t.substr(21) != "GMT" || !is_digits(t.substr(0, 2)) ||
      !is_digits(t.substr(7, 4)) || !is_digits(t.substr(12, 2)) || !is_digits(t.substr(15, 2)) ||
      !is_digits(t.substr(18, 2))) {
    return std::nullopt;
  }
  static constexpr std::string_view k_months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  unsigned mo = 0;
  for (unsigned i = 0; i < 12; ++i) {
    if (t.substr(3, 3) == k_months[i]) mo = i + 1;
  }
  const int64_t y = num(t.substr(7, 4));
  const unsigned d = num(t.substr(0, 2)), h = num(t.substr(12, 2)), mi = num(t.substr(15, 2)),
                 s = num(t.substr(18, 2));
  if (mo == 0 || !valid_civil(y, mo, d, h, mi, s)) return std::nullopt;
  return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s;
}

std::string format_amz_date(int64_t unix_s) {
  int64_t days = unix_s / 86400;
  int64_t secs = unix_s % 86400;
  if (secs < 0) {
    secs += 86400;
    --days;
  }
  // civil_from_days (Howard Hinnant).
  days += 719468;
  const int64_t era = (days >= 0 ? days : days - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(days - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  const unsigned d = doy - (153 * mp + 2) / 5 + 1;
  const unsigned m = mp < 10 ? mp + 3 : mp - 9;
  const int64_t y = static_cast<int64_t>(yoe) + era * 400 + (m <= 2);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%04lld%02u%02uT%02lld%02lld%02lldZ", static_cast<long long>(y), m,
                d, static_cast<long long>(secs / 3600), static_cast<long long>(secs / 60 % 60),
                static_cast<long long>(secs % 60));
  return buf;
}

// ---- modes ----

bool is_streaming(PayloadMode mode) {
  return mode == PayloadMode::streaming_signed || mode == PayloadMode::streaming_signed_trailer ||
         mode == PayloadMode::streaming_unsigned_trailer;
}

bool chunks_signed(PayloadMode mode) {
  return mode == PayloadMode::streaming_signed || mode == PayloadMode::streaming_signed_trailer;
}

bool has_trailer(PayloadMode mode) {
  return mode == PayloadMode::streaming_signed_trailer ||
         mode == PayloadMode::streaming_unsigned_trailer;
}

// ---- server ----

Result<AuthContext> verify(const HttpRequestView& request, const SecretLookup& secret_lookup,
                           int64_t now_unix_s, const VerifyOptions& options) {
  const AuthKind kind = auth_kind(request);
  switch (kind) {
    case AuthKind::none:
      CAIRN_LOG_DEBUG(k_log, "request carries no signature");
      return err(AuthErrc::access_denied);
    case AuthKind::unsupported:
      CAIRN_LOG_DEBUG(k_log, "request uses an unsupported signature scheme");
      return err(AuthErrc::not_implemented);
    case AuthKind::header:
      for (std::string_view piece : split(request.raw_query, '&')) {
        if (piece.starts_with("X-Amz-Algorithm=") || piece.starts_with("X-Amz-Signature=")) {
          CAIRN_LOG_DEBUG(k_log, "both an Authorization header and a presigned query");
          return err(AuthErrc::invalid_argument);
        }
      }
      return verify_header(request, *request.header("authorization"), secret_lookup, now_unix_s,
                           options);
    case AuthKind::presigned:
      return verify_presigned(request, secret_lookup, now_unix_s, options);
  }
  CAIRN_ASSERT(false);
  __builtin_unreachable();
}

// ---- client ----

Result<SigningContext> sign_headers(HttpRequestView& request, const Credentials& credentials,
                                    const SignOptions& options) {
  if (!request.header("host")) {
    CAIRN_LOG_DEBUG(k_log, "cannot sign a request without Host");
    return err(AuthErrc::invalid_argument);
  }
  const std::string amz_date = format_amz_date(options.now_unix_s);
  const std::string payload_hash =
      options.payload_hash.empty() ? std::string(k_empty_sha256_hex) : options.payload_hash;
  erase_header(request, "authorization");
  erase_header(request, "x-amz-date");
  request.headers.emplace_back("x-amz-date", amz_date);
  if (options.add_content_sha256_header && !request.header("x-amz-content-sha256")) {
    request.headers.emplace_back("x-amz-content-sha256", payload_hash);
  }
  const std::vector<std::string> names = names_to_sign(request);
  const std::string signed_headers = join(names, ';');
  const Credential credential{credentials.access_key_id, amz_date.substr(0, 8), options.region,
                              options.service};
  CAIRN_TRY(uri, canonical_uri(request.raw_path));
  CAIRN_TRY(query, canonical_query(request.raw_query, false));
  CAIRN_TRY(headers, canonical_headers(request, names));
  const std::string creq =
      canonical_request(request.method, uri, query, headers, signed_headers, payload_hash);
  SigningContext ctx;
  ctx.signing_key = derive_signing_key(credentials.secret_access_key, credential.date,
                                       credential.region, credential.service);
  ctx.amz_date = amz_date;
  ctx.scope = credential.scope();
  ctx.seed_signature_hex = sign(ctx.signing_key, string_to_sign(amz_date, ctx.scope, creq));
  request.headers.emplace_back("Authorization", std::string(k_algorithm) + " Credential=" +
                                                    credentials.access_key_id + "/" + ctx.scope +
                                                    ", SignedHeaders=" + signed_headers +
                                                    ", Signature=" + ctx.seed_signature_hex);
  return ctx;
}

Result<HeaderList> sign_request(std::string_view method, std::string_view host_header,
                                std::string_view target, const Credentials& credentials,
                                const SignOptions& options, HeaderList extra_headers) {
  const size_t q = target.find('?');
  HttpRequestView view;
  view.method = method;
  view.raw_path = target.substr(0, q);
  view.raw_query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
  view.headers.reserve(extra_headers.size() + 4);
  view.headers.emplace_back("host", std::string(host_header));
  for (auto& header : extra_headers) view.headers.push_back(std::move(header));
  CAIRN_TRY(sign_headers(view, credentials, options));
  return std::move(view.headers);
}

Result<std::string> presign(const HttpRequestView& request, const Credentials& credentials,
                            const PresignOptions& options) {
  if (!request.header("host")) {
    CAIRN_LOG_DEBUG(k_log, "cannot presign a request without Host");
    return err(AuthErrc::invalid_argument);
  }
  if (options.expires_s < 1 || options.expires_s > k_presign_expires_max_s) {
    CAIRN_LOG_DEBUG(k_log, "expiry outside 1..604800 s");
    return err(AuthErrc::invalid_argument);
  }
  const std::string amz_date = format_amz_date(options.now_unix_s);
  const Credential credential{credentials.access_key_id, amz_date.substr(0, 8), options.region,
                              options.service};
  const std::vector<std::string> names = names_to_sign(request);
  const std::string signed_headers = join(names, ';');
  std::string raw_query(request.raw_query);
  auto add = [&](std::string_view name, std::string_view value) {
    if (!raw_query.empty()) raw_query += '&';
    raw_query.append(name).append("=").append(uri_encode(value, true));
  };
  add("X-Amz-Algorithm", k_algorithm);
  add("X-Amz-Credential", credentials.access_key_id + "/" + credential.scope());
  add("X-Amz-Date", amz_date);
  add("X-Amz-Expires", std::to_string(options.expires_s));
  add("X-Amz-SignedHeaders", signed_headers);
  CAIRN_TRY(uri, canonical_uri(request.raw_path));
  CAIRN_TRY(query, canonical_query(raw_query, true));
  CAIRN_TRY(headers, canonical_headers(request, names));
  const std::string creq =
      canonical_request(request.method, uri, query, headers, signed_headers, k_unsigned_payload);
  const Digest key = derive_signing_key(credentials.secret_access_key, credential.date,
                                        credential.region, credential.service);
  const std::string signature = sign(key, string_to_sign(amz_date, credential.scope(), creq));
  return query + "&X-Amz-Signature=" + signature;
}

}  // namespace cairn::sigv4
