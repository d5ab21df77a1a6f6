#include "client/control_client.h"

#include <google/protobuf/util/json_util.h>

#include <optional>

#include "common/asio.h"
#include "http_url.h"
#include "json_reply.h"

namespace cairn::client {
namespace {

using tcp = asio::ip::tcp;
namespace outcome = boost::outcome_v2;

constexpr size_t kReplyBodyMaxBytes = 64 * 1024 * 1024;

std::string encode_segment(std::string_view s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    if (isalnum(u) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(c);
    } else {
      out.push_back('%');
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 15]);
    }
  }
  return out;
}

std::error_code transport_code(const beast::error_code& ec) {
  if (ec.category() == asio::error::get_system_category()) return errno_code(ec.value());
  if (ec == beast::error::timeout) return errno_code(ETIMEDOUT);
  return Errc::unavailable;
}

ClientError make_error(std::error_code code, int http_status, std::string message) {
  return ClientError{code, http_status, std::move(message)};
}

std::string to_json(const google::protobuf::Message& msg) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  (void)google::protobuf::util::MessageToJsonString(msg, &out, opts);
  return out;
}

}  // namespace

std::error_code api_error_code(std::string_view code, int http_status) {
  static const std::pair<std::string_view, Errc> kCodes[] = {
      {"invalid_argument", Errc::invalid_argument},
      {"not_found", Errc::not_found},
      {"already_exists", Errc::already_exists},
      {"no_space", Errc::no_space},
      {"io_error", Errc::io_error},
      {"busy", Errc::busy},
      {"permission_denied", Errc::permission_denied},
      {"unauthenticated", Errc::permission_denied},
      {"out_of_range", Errc::out_of_range},
      {"corrupt", Errc::corrupt},
      {"unavailable", Errc::unavailable},
      {"too_large", Errc::too_large},
      {"unsupported", Errc::unsupported},
      {"method_not_allowed", Errc::unsupported},
  };
  for (const auto& [name, errc] : kCodes)
    if (name == code) return errc;
  switch (http_status) {
    case 400:
      return Errc::invalid_argument;
    case 401:
    case 403:
      return Errc::permission_denied;
    case 404:
      return Errc::not_found;
    case 409:
      return Errc::already_exists;
    case 413:
    case 431:
      return Errc::too_large;
    case 501:
      return Errc::unsupported;
    case 503:
      return Errc::unavailable;
    case 507:
      return Errc::no_space;
    default:
      return Errc::io_error;
  }
}

class ControlClient::Impl {
 public:
  Impl(std::string base_url, std::string token, Options options)
      : base_url_(std::move(base_url)), token_(std::move(token)), options_(options) {
    while (!base_url_.empty() && base_url_.back() == '/') base_url_.pop_back();
    url_ = parse_http_url(base_url_);
  }

  const std::string& base_url() const { return base_url_; }

  ClientResult<HttpReply> raw(std::string_view method, std::string_view target, std::string body,
                              bool with_token) {
    if (!url_) {
      return outcome::failure(
          make_error(Errc::invalid_argument, 0,
                     "invalid API URL \"" + base_url_ + "\" (expected http://host:port)"));
    }
    http::request<http::string_body> req;
    req.method(http::string_to_verb(to_beast(method)));
    if (req.method() == http::verb::unknown) req.method_string(to_beast(method));
    req.target(url_->prefix + std::string(target));
    req.version(11);
    req.set(http::field::host, url_->host_header);
    req.set(http::field::user_agent, "cairn-client");
    req.set(http::field::accept, "application/json");
    if (with_token && !token_.empty()) req.set(http::field::authorization, "Bearer " + token_);
    if (!body.empty()) req.set(http::field::content_type, "application/json");
    req.body() = std::move(body);
    req.keep_alive(true);
    req.prepare_payload();

    for (int attempt = 0;; ++attempt) {
      Exchange ex;
      run(exchange(req, ex));
      if (!ex.ec) {
        HttpReply reply;
        reply.status = static_cast<int>(ex.res.result_int());
        reply.content_type = std::string(ex.res[http::field::content_type]);
        reply.body = std::move(ex.res.body());
        if (!ex.res.keep_alive()) close();
        return reply;
      }
      close();
      // The server may close an idle keep-alive connection just as we reuse it.
      bool stale = ex.reused &&
                   (ex.stage == Stage::write || (ex.stage == Stage::read && !ex.got_bytes)) &&
                   (ex.ec == asio::error::eof || ex.ec == http::error::end_of_stream ||
                    ex.ec == asio::error::connection_reset || ex.ec == asio::error::broken_pipe);
      if (stale && attempt == 0) continue;
      return outcome::failure(describe(ex));
    }
  }

 private:
  enum class Stage { resolve, connect, write, read };
  struct Exchange {
    beast::error_code ec;
    Stage stage = Stage::resolve;
    bool reused = false;
    bool got_bytes = false;
    http::response<http::string_body> res;
  };

  ClientError describe(const Exchange& ex) const {
    if (ex.ec == beast::error::timeout) {
      return make_error(
          errno_code(ETIMEDOUT), 0,
          base_url_ + ": no answer within " + std::to_string(options_.timeout_ms.count()) + " ms");
    }
    switch (ex.stage) {
      case Stage::resolve:
        return make_error(
            Errc::unavailable, 0,
            "cannot resolve " + url_->host + " (" + base_url_ + "): " + ex.ec.message());
      case Stage::connect:
        return make_error(transport_code(ex.ec), 0,
                          "cannot connect to " + base_url_ + ": " + ex.ec.message());
      case Stage::write:
      case Stage::read:
        break;
    }
    return make_error(transport_code(ex.ec), 0,
                      "request to " + base_url_ + " failed: " + ex.ec.message());
  }

  void close() {
    if (stream_) {
      beast::error_code ignored;
      stream_->socket().shutdown(tcp::socket::shutdown_both, ignored);
      stream_->close();
      stream_.reset();
    }
    buffer_.clear();
  }

  void run(asio::awaitable<void> work) {
    std::exception_ptr failure;
    asio::co_spawn(ioc_, std::move(work), [&failure](std::exception_ptr e) { failure = e; });
    ioc_.restart();
    ioc_.run();
    if (failure) std::rethrow_exception(failure);  // only bad_alloc can get here
  }

  asio::awaitable<void> exchange(const http::request<http::string_body>& req, Exchange& ex) {
    auto use = asio::redirect_error(asio::use_awaitable, ex.ec);
    ex.reused = stream_.has_value();
    if (!stream_) {
      stream_.emplace(ioc_);
      ex.stage = Stage::resolve;
      tcp::resolver resolver(ioc_);
      auto endpoints = co_await resolver.async_resolve(url_->host, url_->port, use);
      if (ex.ec) co_return;
      ex.stage = Stage::connect;
      stream_->expires_after(options_.timeout_ms);
      co_await stream_->async_connect(endpoints, use);
      if (ex.ec) co_return;
    }
    ex.stage = Stage::write;
    stream_->expires_after(options_.timeout_ms);
    co_await http::async_write(*stream_, req, use);
    if (ex.ec) co_return;
    ex.stage = Stage::read;
    http::response_parser<http::string_body> parser;
    parser.body_limit(kReplyBodyMaxBytes);
    stream_->expires_after(options_.timeout_ms);
    co_await http::async_read(*stream_, buffer_, parser, use);
    ex.got_bytes = parser.got_some();
    if (ex.ec) co_return;
    stream_->expires_never();
    ex.res = parser.release();
  }

  std::string base_url_;
  std::string token_;
  Options options_;
  std::optional<HttpUrl> url_;
  asio::io_context ioc_{1};
  std::optional<beast::tcp_stream> stream_;
  beast::flat_buffer buffer_;
};

ControlClient::ControlClient(std::string base_url, std::string token)
    : ControlClient(std::move(base_url), std::move(token), Options{}) {}

ControlClient::ControlClient(std::string base_url, std::string token, Options options)
    : impl_(std::make_unique<Impl>(std::move(base_url), std::move(token), options)) {}

ControlClient::~ControlClient() = default;

const std::string& ControlClient::base_url() const { return impl_->base_url(); }

ClientResult<HttpReply> ControlClient::raw(std::string_view method, std::string_view target,
                                           std::string body, bool with_token) {
  return impl_->raw(method, target, std::move(body), with_token);
}

namespace {

// A non-2xx answer as a ClientError with the server's code and message.
ClientError reply_error(const HttpReply& reply) {
  cairn::v1::Error err;
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = true;
  if (!reply.body.empty() &&
      google::protobuf::util::JsonStringToMessage(reply.body, &err, opts).ok() &&
      !err.message().empty()) {
    return make_error(api_error_code(err.code(), reply.status), reply.status, err.message());
  }
  std::string message = "HTTP " + std::to_string(reply.status);
  std::string_view reason = to_std(http::obsolete_reason(static_cast<http::status>(reply.status)));
  if (!reason.empty()) message += " " + std::string(reason);
  return make_error(api_error_code("", reply.status), reply.status, message);
}

template <class M>
ClientResult<M> decode(ClientResult<HttpReply> reply, int expected_status) {
  if (!reply) return outcome::failure(std::move(reply.error()));
  if (reply.value().status != expected_status) return outcome::failure(reply_error(reply.value()));
  return parse_json_reply<M>(reply.value());
}

ClientResult<void> expect_no_content(ClientResult<HttpReply> reply) {
  if (!reply) return outcome::failure(std::move(reply.error()));
  if (reply.value().status != 204 && reply.value().status != 200)
    return outcome::failure(reply_error(reply.value()));
  return outcome::success();
}

std::string snapshots_path(const std::string& volume) {
  return "/v1/volumes/" + encode_segment(volume) + "/snapshots";
}

}  // namespace

ClientResult<cairn::v1::Volume> ControlClient::create_volume(const std::string& name,
                                                             uint64_t size_bytes, uint32_t replicas) {
  cairn::v1::CreateVolumeRequest req;
  req.set_name(name);
  req.set_size_bytes(size_bytes);
  req.set_replicas(replicas);
  return decode<cairn::v1::Volume>(raw("POST", "/v1/volumes", to_json(req)), 201);
}

ClientResult<cairn::v1::Volume> ControlClient::attach_volume(const std::string& name,
                                                             const std::string& node) {
  cairn::v1::AttachVolumeRequest req;
  req.set_node(node);
  return decode<cairn::v1::Volume>(
      raw("POST", "/v1/volumes/" + encode_segment(name) + "/attach", to_json(req)), 200);
}

ClientResult<cairn::v1::Volume> ControlClient::set_rebuild_rate(const std::string& name,
                                                                uint64_t bytes_per_s) {
  cairn::v1::RebuildRateRequest req;
  req.set_bytes_per_s(bytes_per_s);
  return decode<cairn::v1::Volume>(
      raw("POST", "/v1/volumes/" + encode_segment(name) + "/rebuild-rate", to_json(req)), 200);
}

ClientResult<cairn::v1::ListVolumesResponse> ControlClient::list_volumes() {
  return decode<cairn::v1::ListVolumesResponse>(raw("GET", "/v1/volumes"), 200);
}

ClientResult<cairn::v1::Volume> ControlClient::get_volume(const std::string& name) {
  return decode<cairn::v1::Volume>(raw("GET", "/v1/volumes/" + encode_segment(name)), 200);
}

ClientResult<cairn::v1::Volume> ControlClient::resize_volume(const std::string& name,
                                                             uint64_t size_bytes) {
  cairn::v1::ResizeVolumeRequest req;
  req.set_size_bytes(size_bytes);
  return decode<cairn::v1::Volume>(
      raw("POST", "/v1/volumes/" + encode_segment(name) + "/resize", to_json(req)), 200);
}

ClientResult<void> ControlClient::delete_volume(const std::string& name, bool force) {
  std::string target = "/v1/volumes/" + encode_segment(name);
  if (force) target += "?force=true";
  return expect_no_content(raw("DELETE", target));
}

ClientResult<cairn::v1::NodeStatus> ControlClient::status() {
  return decode<cairn::v1::NodeStatus>(raw("GET", "/v1/status"), 200);
}

ClientResult<cairn::v1::ListNodesResponse> ControlClient::list_nodes() {
  return decode<cairn::v1::ListNodesResponse>(raw("GET", "/v1/nodes"), 200);
}

ClientResult<cairn::v1::Snapshot> ControlClient::create_snapshot(const std::string& volume,
                                                                 const std::string& snapshot) {
  cairn::v1::CreateSnapshotRequest req;
  req.set_name(snapshot);
  return decode<cairn::v1::Snapshot>(raw("POST", snapshots_path(volume), to_json(req)), 201);
}

ClientResult<cairn::v1::ListSnapshotsResponse> ControlClient::list_snapshots(
    const std::string& volume) {
  return decode<cairn::v1::ListSnapshotsResponse>(raw("GET", snapshots_path(volume)), 200);
}

ClientResult<cairn::v1::Snapshot> ControlClient::get_snapshot(const std::string& volume,
                                                              const std::string& snapshot) {
  return decode<cairn::v1::Snapshot>(
      raw("GET", snapshots_path(volume) + "/" + encode_segment(snapshot)), 200);
}

ClientResult<void> ControlClient::delete_snapshot(const std::string& volume,
                                                  const std::string& snapshot) {
  return expect_no_content(
      raw("DELETE", snapshots_path(volume) + "/" + encode_segment(snapshot)));
}

ClientResult<cairn::v1::Volume> ControlClient::clone_volume(const std::string& volume,
                                                            const std::string& snapshot,
                                                            const std::string& new_volume) {
  cairn::v1::CloneVolumeRequest req;
  req.set_name(new_volume);
  return decode<cairn::v1::Volume>(
      raw("POST", snapshots_path(volume) + "/" + encode_segment(snapshot) + "/clone",
          to_json(req)),
      201);
}

ClientResult<cairn::v1::Volume> ControlClient::flatten_volume(const std::string& volume) {
  return decode<cairn::v1::Volume>(
      raw("POST", "/v1/volumes/" + encode_segment(volume) + "/flatten", "{}"), 200);
}

ClientResult<cairn::v1::DiffResponse> ControlClient::diff(const std::string& volume,
                                                          const std::string& from,
                                                          const std::string& to) {
  std::string target = "/v1/volumes/" + encode_segment(volume) + "/diff";
  char sep = '?';
  if (!from.empty()) {
    target += sep + ("from=" + encode_segment(from));
    sep = '&';
  }
  if (!to.empty()) target += sep + ("to=" + encode_segment(to));
  return decode<cairn::v1::DiffResponse>(raw("GET", target), 200);
}

ClientResult<cairn::v1::RepoConfig> ControlClient::init_backup_repo(const cairn::v1::InitRepoRequest& req) {
  return decode<cairn::v1::RepoConfig>(raw("POST", "/v1/backup/init", to_json(req)), 201);
}

ClientResult<cairn::v1::ListBackupsResponse> ControlClient::list_backups(
    const cairn::v1::ListBackupsRequest& req) {
  return decode<cairn::v1::ListBackupsResponse>(raw("POST", "/v1/backup/list", to_json(req)), 200);
}

ClientResult<cairn::v1::PruneResponse> ControlClient::prune_backups(const cairn::v1::PruneRequest& req) {
  return decode<cairn::v1::PruneResponse>(raw("POST", "/v1/backup/prune", to_json(req)), 200);
}

ClientResult<cairn::v1::BackupJob> ControlClient::create_backup(const cairn::v1::CreateBackupRequest& req) {
  return decode<cairn::v1::BackupJob>(raw("POST", "/v1/backup/create", to_json(req)), 202);
}

ClientResult<cairn::v1::BackupJob> ControlClient::restore_backup(const cairn::v1::RestoreBackupRequest& req) {
  return decode<cairn::v1::BackupJob>(raw("POST", "/v1/backup/restore", to_json(req)), 202);
}

ClientResult<cairn::v1::BackupJob> ControlClient::verify_backups(const cairn::v1::VerifyRequest& req) {
  return decode<cairn::v1::BackupJob>(raw("POST", "/v1/backup/verify", to_json(req)), 202);
}

ClientResult<cairn::v1::ListBackupJobsResponse> ControlClient::backup_jobs() {
  return decode<cairn::v1::ListBackupJobsResponse>(raw("GET", "/v1/backup/jobs"), 200);
}

ClientResult<cairn::v1::BackupJob> ControlClient::backup_job(const std::string& id) {
  return decode<cairn::v1::BackupJob>(raw("GET", "/v1/backup/jobs/" + encode_segment(id)), 200);
}

}  // namespace cairn::client
