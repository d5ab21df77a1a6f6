// The production Authenticator: common/sigv4.h verification against the store's access
// keys, and common/aws_chunked.h for streaming bodies.
#include "auth.h"

#include <chrono>

#include "common/aws_chunked.h"
#include "common/sigv4.h"

namespace cairn::objectd {
namespace {

// AuthErrc values equal ObjErrc's (sigv4.h); other categories pass through.
std::error_code to_obj(const std::error_code& ec) {
  if (ec.category() == sigv4::auth_category()) return static_cast<ObjErrc>(ec.value());
  return ec;
}

Status to_obj(const Status& st) {
  if (st) return ok();
  return to_obj(st.error());
}

// The request as sigv4 sees it; views into `req`, which must outlive the result.
sigv4::HttpRequestView make_view(const http::request_header<>& req) {
  sigv4::HttpRequestView v;
  v.method = to_std(req.method_string());
  std::string_view target = to_std(req.target());
  size_t q = target.find('?');
  v.raw_path = target.substr(0, q);
  v.raw_query = q == std::string_view::npos ? std::string_view{} : target.substr(q + 1);
  for (const auto& f : req) v.headers.emplace_back(to_std(f.name_string()), to_std(f.value()));
  return v;
}

PayloadMode from_sigv4(sigv4::PayloadMode m) {
  switch (m) {
    case sigv4::PayloadMode::signed_hash:
      return PayloadMode::sha256;
    case sigv4::PayloadMode::unsigned_payload:
      return PayloadMode::unsigned_payload;
    case sigv4::PayloadMode::streaming_signed:
      return PayloadMode::streaming_signed;
    case sigv4::PayloadMode::streaming_signed_trailer:
      return PayloadMode::streaming_signed_trailer;
    case sigv4::PayloadMode::streaming_unsigned_trailer:
      return PayloadMode::streaming_unsigned_trailer;
  }
  return PayloadMode::unsigned_payload;
}

class AwsChunkedAdapter : public ChunkedDecoder {
 public:
  explicit AwsChunkedAdapter(sigv4::AwsChunkedOptions options) : decoder_(std::move(options)) {}

  Status feed(std::string_view raw, std::string& out) override {
    return to_obj(decoder_.feed(raw, [&out](std::string_view decoded) -> Status {
      out.append(decoded.data(), decoded.size());
      return ok();
    }));
  }
  Status finish() override { return to_obj(decoder_.finish()); }
  std::vector<std::pair<std::string, std::string>> trailers() const override {
    return decoder_.trailers();
  }

 private:
  sigv4::AwsChunkedDecoder decoder_;
};

class SigV4Authenticator : public Authenticator {
 public:
  explicit SigV4Authenticator(ObjectStore& store) : store_(store) {}

  Result<AuthResult> authenticate(const http::request_header<>& req, std::string& detail) override {
    sigv4::HttpRequestView view = make_view(req);
    sigv4::AuthKind kind = sigv4::auth_kind(view);
    if (kind == sigv4::AuthKind::none) return AuthResult{};
    if (kind == sigv4::AuthKind::unsupported) {
      detail = "unsupported authorization scheme";
      return ObjErrc::not_implemented;
    }
    AccessKey found;
    sigv4::SecretLookup lookup = [&](std::string_view id) -> Result<std::string> {
      auto key = store_.lookup_access_key(std::string(id));
      if (!key) {
        std::error_code ec = key.error();
        if (ec == ObjErrc::invalid_access_key_id || ec == Errc::not_found ||
            ec == ObjErrc::no_such_key || ec == ObjErrc::access_denied)
          return sigv4::AuthErrc::invalid_access_key_id;
        return ec;
      }
      found = std::move(key).value();
      return found.secret_key;
    };
    int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
    auto ctx = sigv4::verify(view, lookup, now);
    if (!ctx) {
      detail = ctx.error().message();
      return to_obj(ctx.error());
    }
    AuthResult r;
    r.anonymous = false;
    r.presigned = ctx.value().presigned;
    r.key = std::move(found);
    r.payload = from_sigv4(ctx.value().payload_mode);
    if (r.payload == PayloadMode::sha256) r.payload_sha256 = ctx.value().content_sha256;
    r.state = std::make_shared<sigv4::AuthContext>(std::move(ctx).value());
    return r;
  }

  Result<std::unique_ptr<ChunkedDecoder>> chunked_decoder(
      const AuthResult& auth, const http::request_header<>& req) override {
    auto ctx = std::static_pointer_cast<const sigv4::AuthContext>(auth.state);
    if (!ctx) return ObjErrc::invalid_argument;
    sigv4::HttpRequestView view = make_view(req);
    auto options = sigv4::aws_chunked_options(*ctx, view);
    if (!options) return to_obj(options.error());
    // The S3 layer checks x-amz-checksum-* itself (header or trailer alike).
    options.value().verify_checksum_trailer = false;
    return std::unique_ptr<ChunkedDecoder>(
        std::make_unique<AwsChunkedAdapter>(std::move(options).value()));
  }

 private:
  ObjectStore& store_;
};

}  // namespace

std::shared_ptr<Authenticator> make_sigv4_authenticator(ObjectStore& store) {
  return std::make_shared<SigV4Authenticator>(store);
}

}  // namespace cairn::objectd
