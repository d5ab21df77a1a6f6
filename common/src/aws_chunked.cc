#include "common/aws_chunked.h"

#include <algorithm>

#include "common/assert.h"
#include "common/log.h"

namespace cairn::sigv4 {
namespace {

constexpr const char* k_log = "aws-chunked";
constexpr std::string_view k_trailer_signature = "x-amz-trailer-signature";
constexpr std::string_view k_chunk_signature = "chunk-signature";

std::error_code err(AuthErrc e) { return make_error_code(e); }

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool is_signature(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) { return hex_digit(c) >= 0; });
}

std::string hex_size(uint64_t n) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(n));
  return buf;
}

// The trailer's canonical form for its signature: "name:value\n" per header, by name.
std::string canonical_trailers(std::vector<std::pair<std::string, std::string>> trailers) {
  std::stable_sort(trailers.begin(), trailers.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::string out;
  for (const auto& [name, value] : trailers) out.append(name).append(":").append(value).append("\n");
  return out;
}

}  // namespace

Result<AwsChunkedOptions> aws_chunked_options(const AuthContext& auth,
                                              const HttpRequestView& request) {
  if (!is_streaming(auth.payload_mode)) {
    CAIRN_LOG_DEBUG(k_log, "request is not a streaming upload");
    return err(AuthErrc::invalid_argument);
  }
  AwsChunkedOptions options;
  options.mode = auth.payload_mode;
  options.signing = auth.signing;
  if (auto v = request.header("x-amz-decoded-content-length")) {
    const std::string_view t = trim(*v);
    if (t.empty() || t.size() > 19 ||
        !std::all_of(t.begin(), t.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      CAIRN_LOG_DEBUG(k_log, "malformed x-amz-decoded-content-length");
      return err(AuthErrc::invalid_argument);
    }
    options.decoded_content_length = std::stoull(std::string(t));
  }
  if (auto v = request.header("x-amz-trailer"); v && has_trailer(auth.payload_mode)) {
    std::string_view rest = *v;
    while (!rest.empty()) {
      const size_t comma = rest.find(',');
      const std::string_view name = trim(rest.substr(0, comma));
      if (!name.empty()) options.declared_trailers.push_back(lower(name));
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return options;
}

// ---- decoder ----

struct AwsChunkedDecoder::Impl {
  enum class State { size_line, data, data_crlf, trailer_lines, done };

  AwsChunkedOptions opt;
  bool signed_chunks;
  bool trailer_mode;
  State state = State::size_line;
  std::error_code failed;

  std::string line;            // the partial size or trailer line
  uint64_t remaining = 0;      // bytes left in the current chunk's data
  bool saw_cr = false;         // in data_crlf
  uint64_t decoded = 0;
  size_t trailer_bytes = 0;
  bool trailer_blank_skipped = false;

  Sha256 chunk_hash;
  std::string chunk_signature;     // of the chunk being read
  std::string previous_signature;  // the chain
  std::vector<std::pair<std::string, std::string>> trailers;
  std::string trailer_signature;

  std::unique_ptr<Checksum> checksum;
  std::optional<ChecksumAlgorithm> checksum_algorithm;
  std::string checksum_value;

  explicit Impl(AwsChunkedOptions o) : opt(std::move(o)) {
    CAIRN_ASSERT(is_streaming(opt.mode));
    signed_chunks = chunks_signed(opt.mode);
    trailer_mode = has_trailer(opt.mode);
    previous_signature = opt.signing.seed_signature_hex;
    if (trailer_mode && opt.verify_checksum_trailer) {
      for (const auto& name : opt.declared_trailers) {
        if (auto a = checksum_algorithm_from_header(name)) {
          checksum_algorithm = a;
          checksum = make_checksum(*a);
          break;
        }
      }
    }
  }

  Status fail(AuthErrc e) {
    failed = err(e);
    return failed;
  }

  Status check_chunk_signature() {
    if (!signed_chunks) return ok();
    const std::string sts = chunk_string_to_sign(opt.signing.amz_date, opt.signing.scope,
                                                 previous_signature, chunk_hash.finish_hex());
    if (!signatures_equal(sign(opt.signing.signing_key, sts), chunk_signature)) {
      CAIRN_LOG_DEBUG(k_log, "chunk signature mismatch after %llu decoded bytes",
                      static_cast<unsigned long long>(decoded));
      return fail(AuthErrc::signature_does_not_match);
    }
    previous_signature = std::move(chunk_signature);
    chunk_signature.clear();
    return ok();
  }

  Status on_size_line(std::string_view l) {
    const size_t semi = l.find(';');
    const std::string_view size_text = trim(l.substr(0, semi));
    if (size_text.empty() || size_text.size() > 16) {
      CAIRN_LOG_DEBUG(k_log, "malformed chunk size");
      return fail(AuthErrc::invalid_argument);
    }
    uint64_t size = 0;
    for (char c : size_text) {
      const int d = hex_digit(c);
      if (d < 0) {
        CAIRN_LOG_DEBUG(k_log, "malformed chunk size");
        return fail(AuthErrc::invalid_argument);
      }
      size = size * 16 + static_cast<uint64_t>(d);
    }
    if (size > opt.limits.chunk_bytes_max) {
      CAIRN_LOG_DEBUG(k_log, "chunk of %llu bytes over the limit", static_cast<unsigned long long>(size));
      return fail(AuthErrc::invalid_argument);
    }
    chunk_signature.clear();
    bool have_signature = false;
    std::string_view ext = semi == std::string_view::npos ? std::string_view{} : l.substr(semi + 1);
    while (semi != std::string_view::npos) {
      const size_t next = ext.find(';');
      const std::string_view piece = ext.substr(0, next);
      const size_t eq = piece.find('=');
      const std::string_view name = trim(piece.substr(0, eq));
      const std::string_view value = eq == std::string_view::npos ? std::string_view{} : trim(piece.substr(eq + 1));
      if (name == k_chunk_signature) {
        if (have_signature || !is_signature(value)) {
          CAIRN_LOG_DEBUG(k_log, "malformed chunk-signature");
          return fail(AuthErrc::invalid_argument);
        }
        chunk_signature = lower(value);
        have_signature = true;
      }
      if (next == std::string_view::npos) break;
      ext.remove_prefix(next + 1);
    }
    if (signed_chunks && !have_signature) {
      CAIRN_LOG_DEBUG(k_log, "chunk without chunk-signature in a signed stream");
      return fail(AuthErrc::invalid_argument);
    }
    if (opt.decoded_content_length && decoded + size > *opt.decoded_content_length) {
      CAIRN_LOG_DEBUG(k_log, "more data than x-amz-decoded-content-length");
      return fail(AuthErrc::invalid_argument);
    }
    if (size > 0) {
      remaining = size;
      state = State::data;
      return ok();
    }
    // The final chunk: its signature covers no data.
    if (Status s = check_chunk_signature(); !s) return s;
    if (opt.decoded_content_length && decoded != *opt.decoded_content_length) {
      CAIRN_LOG_DEBUG(k_log, "stream ended after %llu of %llu declared bytes",
                      static_cast<unsigned long long>(decoded),
                      static_cast<unsigned long long>(*opt.decoded_content_length));
      return fail(AuthErrc::incomplete_body);
    }
    state = State::trailer_lines;
    return ok();
  }

  Status on_trailer_line(std::string_view l) {
    if (l.empty()) {
      // Tolerate a blank line between the final chunk and the trailers.
      if (trailer_mode && trailers.empty() && trailer_signature.empty() &&
          !opt.declared_trailers.empty() && !trailer_blank_skipped) {
        trailer_blank_skipped = true;
        return ok();
      }
      return end_of_stream();
    }
    if (!trailer_mode) {
      CAIRN_LOG_DEBUG(k_log, "trailer after the final chunk of a stream without trailers");
      return fail(AuthErrc::invalid_argument);
    }
    const size_t colon = l.find(':');
    if (colon == std::string_view::npos || trim(l.substr(0, colon)).empty()) {
      CAIRN_LOG_DEBUG(k_log, "malformed trailer line");
      return fail(AuthErrc::invalid_argument);
    }
    std::string name = lower(trim(l.substr(0, colon)));
    const std::string_view value = trim(l.substr(colon + 1));
    if (name == k_trailer_signature) {
      if (!signed_chunks || !trailer_signature.empty() || !is_signature(value)) {
        CAIRN_LOG_DEBUG(k_log, "unexpected or malformed x-amz-trailer-signature");
        return fail(AuthErrc::invalid_argument);
      }
      trailer_signature = lower(value);
      return ok();
    }
    const bool declared = std::find(opt.declared_trailers.begin(), opt.declared_trailers.end(),
                                    name) != opt.declared_trailers.end();
    const bool repeated = std::any_of(trailers.begin(), trailers.end(),
                                      [&](const auto& kv) { return kv.first == name; });
    if (!declared || repeated) {
      CAIRN_LOG_DEBUG(k_log, "trailer %s not declared in x-amz-trailer, or repeated", name.c_str());
      return fail(AuthErrc::invalid_argument);
    }
    trailers.emplace_back(std::move(name), std::string(value));
    return ok();
  }

  Status end_of_stream() {
    for (const auto& name : opt.declared_trailers) {
      if (std::none_of(trailers.begin(), trailers.end(), [&](const auto& kv) { return kv.first == name; })) {
        CAIRN_LOG_DEBUG(k_log, "declared trailer %s missing", name.c_str());
        return fail(AuthErrc::incomplete_body);
      }
    }
    if (trailer_mode && signed_chunks) {
      if (trailer_signature.empty()) {
        CAIRN_LOG_DEBUG(k_log, "x-amz-trailer-signature missing");
        return fail(AuthErrc::signature_does_not_match);
      }
      const std::string sts =
          trailer_string_to_sign(opt.signing.amz_date, opt.signing.scope, previous_signature,
                                 sha256_hex(canonical_trailers(trailers)));
      if (!signatures_equal(sign(opt.signing.signing_key, sts), trailer_signature)) {
        CAIRN_LOG_DEBUG(k_log, "trailer signature mismatch");
        return fail(AuthErrc::signature_does_not_match);
      }
    }
    if (checksum) {
      checksum_value = checksum->finish_base64();
      checksum.reset();
      const std::string_view header = checksum_header_name(*checksum_algorithm);
      for (const auto& [name, value] : trailers) {
        if (name == header && value != checksum_value) {
          CAIRN_LOG_DEBUG(k_log, "%s trailer %s, data has %s", name.c_str(), value.c_str(),
                          checksum_value.c_str());
          return fail(AuthErrc::bad_digest);
        }
      }
    }
    state = State::done;
    return ok();
  }

  // Appends to the line buffer up to and including '\n'; returns the bytes consumed and
  // whether the line is complete.
  Status take_line(std::string_view& bytes, size_t max_bytes, bool& complete) {
    const size_t nl = bytes.find('\n');
    const size_t n = nl == std::string_view::npos ? bytes.size() : nl + 1;
    if (line.size() + n > max_bytes) {
      CAIRN_LOG_DEBUG(k_log, "line longer than %zu bytes", max_bytes);
      return fail(AuthErrc::invalid_argument);
    }
    line.append(bytes.substr(0, n));
    bytes.remove_prefix(n);
    complete = nl != std::string_view::npos;
    if (complete) {
      line.pop_back();
      if (!line.empty() && line.back() == '\r') line.pop_back();
    }
    return ok();
  }

  Status feed(std::string_view bytes, const Sink& sink) {
    if (failed) return failed;
    while (!bytes.empty()) {
      switch (state) {
        case State::size_line: {
          bool complete = false;
          if (Status s = take_line(bytes, opt.limits.line_bytes_max, complete); !s) return s;
          if (!complete) return ok();
          const std::string l = std::move(line);
          line.clear();
          if (Status s = on_size_line(l); !s) return s;
          break;
        }
        case State::data: {
          const size_t n = static_cast<size_t>(std::min<uint64_t>(remaining, bytes.size()));
          const std::string_view piece = bytes.substr(0, n);
          if (signed_chunks) chunk_hash.update(piece);
          if (checksum) checksum->update(piece);
          decoded += n;
          remaining -= n;
          bytes.remove_prefix(n);
          if (Status s = sink(piece); !s) {
            failed = s.error();
            return s;
          }
          if (remaining == 0) {
            if (Status s = check_chunk_signature(); !s) return s;
            state = State::data_crlf;
            saw_cr = false;
          }
          break;
        }
        case State::data_crlf: {
          const char c = bytes.front();
          bytes.remove_prefix(1);
          if (c == '\r' && !saw_cr) {
            saw_cr = true;
          } else if (c == '\n') {
            state = State::size_line;
          } else {
            CAIRN_LOG_DEBUG(k_log, "chunk data not followed by CRLF");
            return fail(AuthErrc::invalid_argument);
          }
          break;
        }
        case State::trailer_lines: {
          const size_t before = bytes.size();
          bool complete = false;
          if (Status s = take_line(bytes, opt.limits.line_bytes_max, complete); !s) return s;
          trailer_bytes += before - bytes.size();
          if (trailer_bytes > opt.limits.trailer_bytes_max) {
            CAIRN_LOG_DEBUG(k_log, "trailer section over %zu bytes", opt.limits.trailer_bytes_max);
            return fail(AuthErrc::invalid_argument);
          }
          if (!complete) return ok();
          const std::string l = std::move(line);
          line.clear();
          if (Status s = on_trailer_line(l); !s) return s;
          break;
        }
        case State::done:
          CAIRN_LOG_DEBUG(k_log, "%zu bytes after the end of the stream", bytes.size());
          return fail(AuthErrc::invalid_argument);
      }
    }
    return ok();
  }

  Status finish() {
    if (failed) return failed;
    if (state == State::done) return ok();
    if (state == State::trailer_lines) {
      // Tolerate a body that ends without the closing CRLF, not one cut inside a line.
      if (line.empty()) return end_of_stream();
    }
    CAIRN_LOG_DEBUG(k_log, "body ended inside the stream after %llu decoded bytes",
                    static_cast<unsigned long long>(decoded));
    return fail(AuthErrc::incomplete_body);
  }
};

AwsChunkedDecoder::AwsChunkedDecoder(AwsChunkedOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}
AwsChunkedDecoder::~AwsChunkedDecoder() = default;
AwsChunkedDecoder::AwsChunkedDecoder(AwsChunkedDecoder&&) noexcept = default;
AwsChunkedDecoder& AwsChunkedDecoder::operator=(AwsChunkedDecoder&&) noexcept = default;

Status AwsChunkedDecoder::feed(std::string_view bytes, const Sink& sink) {
  return impl_->feed(bytes, sink);
}
Status AwsChunkedDecoder::finish() { return impl_->finish(); }
bool AwsChunkedDecoder::done() const { return impl_->state == Impl::State::done && !impl_->failed; }
uint64_t AwsChunkedDecoder::decoded_bytes() const { return impl_->decoded; }

const std::vector<std::pair<std::string, std::string>>& AwsChunkedDecoder::trailers() const {
  return impl_->trailers;
}

std::optional<std::string_view> AwsChunkedDecoder::trailer(std::string_view name) const {
  const std::string l = lower(name);
  for (const auto& [n, v] : impl_->trailers) {
    if (n == l) return std::string_view(v);
  }
  return std::nullopt;
}

std::optional<ChecksumAlgorithm> AwsChunkedDecoder::checksum_algorithm() const {
  if (!done()) return std::nullopt;
  return impl_->checksum_algorithm;
}

std::optional<std::string> AwsChunkedDecoder::checksum_base64() const {
  if (!done() || !impl_->checksum_algorithm) return std::nullopt;
  return impl_->checksum_value;
}

// ---- encoder ----

struct AwsChunkedEncoder::Impl {
  PayloadMode mode;
  SigningContext signing;
  std::string previous_signature;
  std::unique_ptr<Checksum> checksum;
  std::optional<ChecksumAlgorithm> algorithm;
  bool finished = false;

  std::string frame(std::string_view data) {
    std::string out = hex_size(data.size());
    if (chunks_signed(mode)) {
      const std::string sts = chunk_string_to_sign(signing.amz_date, signing.scope,
                                                   previous_signature, sha256_hex(data));
      previous_signature = sign(signing.signing_key, sts);
      out.append(";chunk-signature=").append(previous_signature);
    }
    out.append("\r\n").append(data);
    if (!data.empty()) out.append("\r\n");
    return out;
  }
};

AwsChunkedEncoder::AwsChunkedEncoder(PayloadMode mode, SigningContext signing,
                                     std::optional<ChecksumAlgorithm> trailer_checksum)
    : impl_(std::make_unique<Impl>()) {
  CAIRN_ASSERT(is_streaming(mode));
  CAIRN_ASSERT(!trailer_checksum || has_trailer(mode));
  impl_->mode = mode;
  impl_->previous_signature = signing.seed_signature_hex;
  impl_->signing = std::move(signing);
  impl_->algorithm = trailer_checksum;
  if (trailer_checksum) impl_->checksum = make_checksum(*trailer_checksum);
}

AwsChunkedEncoder::~AwsChunkedEncoder() = default;
AwsChunkedEncoder::AwsChunkedEncoder(AwsChunkedEncoder&&) noexcept = default;
AwsChunkedEncoder& AwsChunkedEncoder::operator=(AwsChunkedEncoder&&) noexcept = default;

std::string AwsChunkedEncoder::encode_chunk(std::string_view data) {
  CAIRN_ASSERT(!data.empty() && !impl_->finished);
  if (impl_->checksum) impl_->checksum->update(data);
  return impl_->frame(data);
}

std::string AwsChunkedEncoder::finish() {
  CAIRN_ASSERT(!impl_->finished);
  impl_->finished = true;
  std::string out = impl_->frame({});
  if (impl_->checksum) {
    const std::string name(checksum_header_name(*impl_->algorithm));
    const std::string value = impl_->checksum->finish_base64();
    out.append(name).append(":").append(value).append("\r\n");
    if (chunks_signed(impl_->mode)) {
      const std::string sts = trailer_string_to_sign(
          impl_->signing.amz_date, impl_->signing.scope, impl_->previous_signature,
          sha256_hex(name + ":" + value + "\n"));
      out.append(k_trailer_signature).append(":").append(sign(impl_->signing.signing_key, sts));
      out.append("\r\n");
    }
  }
  out.append("\r\n");
  return out;
}

uint64_t AwsChunkedEncoder::encoded_length(PayloadMode mode, uint64_t decoded_bytes,
                                           uint64_t chunk_bytes,
                                           std::optional<ChecksumAlgorithm> trailer_checksum) {
  CAIRN_ASSERT(chunk_bytes > 0);
  const uint64_t signature_bytes = chunks_signed(mode) ? k_chunk_signature.size() + 2 + 64 : 0;
  auto chunk = [&](uint64_t n) {
    return hex_size(n).size() + signature_bytes + 2 + n + (n > 0 ? 2 : 0);
  };
  uint64_t total = (decoded_bytes / chunk_bytes) * chunk(chunk_bytes);
  if (decoded_bytes % chunk_bytes != 0) total += chunk(decoded_bytes % chunk_bytes);
  total += chunk(0);
  if (trailer_checksum) {
    const uint64_t b64 = 4 * ((checksum_digest_bytes(*trailer_checksum) + 2) / 3);
    total += checksum_header_name(*trailer_checksum).size() + 1 + b64 + 2;
    if (chunks_signed(mode)) total += k_trailer_signature.size() + 1 + 64 + 2;
  }
  return total + 2;
}

}  // namespace cairn::sigv4
