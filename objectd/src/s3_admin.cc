// /_cairn/admin/: tenants, access keys and heal, JSON through protobuf's mapping
// (cairn/v1/objectd_admin.proto). SigV4-signed by a root key; errors are AdminError JSON.
#include <google/protobuf/util/json_util.h>

#include <algorithm>

#include "cairn/v1/objectd_admin.pb.h"
#include "common/log.h"
#include "s3_handlers.h"

namespace cairn::objectd {
namespace {

constexpr const char* kLog = "s3_admin";

std::string to_json(const google::protobuf::Message& msg) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.always_print_primitive_fields = true;
  std::string out;
  auto st = google::protobuf::util::MessageToJsonString(msg, &out, opts);
  if (!st.ok()) return "{}\n";
  out.push_back('\n');
  return out;
}

Reply json_reply(const google::protobuf::Message& msg, http::status status = http::status::ok) {
  Reply r;
  r.status = status;
  r.body = to_json(msg);
  r.headers.set(http::field::content_type, "application/json");
  return r;
}

Reply admin_error(http::status status, const std::string& code, const std::string& message) {
  cairn::v1::AdminError e;
  e.set_code(code);
  e.set_message(message);
  Reply r = json_reply(e, status);
  r.error_code = code;
  r.log_detail = message;
  return r;
}

Reply admin_error(const std::error_code& ec, const std::string& what) {
  if (ec == Errc::already_exists || ec == ObjErrc::bucket_already_exists ||
      ec == ObjErrc::bucket_already_owned_by_you)
    return admin_error(http::status::conflict, "AlreadyExists", what + ": already exists");
  if (ec == Errc::not_found) return admin_error(http::status::not_found, "NotFound", what + ": not found");
  S3Error e = s3_error(ec);
  return admin_error(e.status, e.code, what + ": " + e.message);
}

bool valid_tenant_name(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (!ok) return false;
  }
  return true;
}

template <class M>
asio::awaitable<std::optional<Reply>> read_json(Exchange& x, M& msg) {
  auto body = co_await x.read_small_payload(x.ctx.options.xml_body_max_bytes);
  if (!body) {
    S3Error e = x.body_error(body.error());
    co_return admin_error(e.status, e.code, e.message);
  }
  std::string text = body.value().empty() ? std::string("{}") : body.value();
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = false;
  auto st = google::protobuf::util::JsonStringToMessage(text, &msg, opts);
  if (!st.ok()) {
    co_return admin_error(http::status::bad_request, "InvalidArgument",
                          "malformed JSON body: " + std::string(st.message().data(), st.message().size()));
  }
  co_return std::nullopt;
}

cairn::v1::HealStatus heal_proto(const HealStatus& h, int drives_online) {
  cairn::v1::HealStatus p;
  p.set_running(h.running);
  p.set_objects_total(h.objects_total);
  p.set_objects_scanned(h.objects_scanned);
  p.set_objects_healed(h.objects_healed);
  p.set_objects_failed(h.objects_failed);
  p.set_bytes_rewritten(h.bytes_rewritten);
  p.set_queued(h.queued);
  p.set_bytes_per_second(h.bytes_per_second);
  p.set_eta_seconds(h.eta_seconds);
  p.set_fully_redundant(h.fully_redundant);
  p.set_drives_online(drives_online);
  return p;
}

Reply method_not_allowed(const char* allow) {
  Reply r = admin_error(http::status::method_not_allowed, "MethodNotAllowed",
                        std::string("allowed: ") + allow);
  r.headers.set(http::field::allow, allow);
  return r;
}

}  // namespace

Reply admin_error_reply(const S3Error& e) { return admin_error(e.status, e.code, e.message); }

asio::awaitable<Reply> admin(Exchange& x) {
  if (x.auth.anonymous || !x.auth.key.root)
    co_return admin_error(http::status::forbidden, "AccessDenied",
                          "the admin API needs a request signed with the root access key");
  std::string_view rest = std::string_view(x.path).substr(std::string_view("/_cairn/admin").size());
  while (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  http::verb m = x.method();
  ObjectStore& store = x.ctx.store;

  if (rest == "/tenants") {
    if (m == http::verb::get) {
      auto names = co_await x.blocking([&] { return store.list_tenants(); });
      cairn::v1::ListTenantsResponse out;
      std::sort(names.begin(), names.end());
      for (const std::string& n : names) out.add_tenants()->set_name(n);
      co_return json_reply(out);
    }
    if (m == http::verb::post) {
      cairn::v1::Tenant req;
      auto bad = co_await read_json(x, req);
      if (bad) co_return std::move(*bad);
      if (!valid_tenant_name(req.name()))
        co_return admin_error(http::status::bad_request, "InvalidArgument",
                              "tenant names are 1-64 characters of [a-z0-9_-]");
      Status st = co_await x.blocking([&] { return store.create_tenant(req.name()); });
      if (!st) co_return admin_error(st.error(), "tenant " + req.name());
      CAIRN_LOG_INFO(kLog, "created tenant %s", req.name().c_str());
      co_return json_reply(req, http::status::created);
    }
    co_return method_not_allowed("GET, POST");
  }
  constexpr std::string_view kTenants = "/tenants/";
  if (rest.rfind(kTenants, 0) == 0 && rest.size() > kTenants.size() + 5 &&
      rest.substr(rest.size() - 5) == "/keys") {
    std::string tenant(rest.substr(kTenants.size(), rest.size() - kTenants.size() - 5));
    if (m != http::verb::post) co_return method_not_allowed("POST");
    if (!valid_tenant_name(tenant))
      co_return admin_error(http::status::bad_request, "InvalidArgument", "bad tenant name");
    auto key = co_await x.blocking([&] { return store.create_access_key(tenant); });
    if (!key) co_return admin_error(key.error(), "tenant " + tenant);
    cairn::v1::S3AccessKey out;
    out.set_access_key_id(key.value().access_key_id);
    out.set_secret_key(key.value().secret_key);
    out.set_tenant(key.value().tenant);
    out.set_root(key.value().root);
    CAIRN_LOG_INFO(kLog, "created access key %s for tenant %s", key.value().access_key_id.c_str(),
                   tenant.c_str());
    co_return json_reply(out, http::status::created);
  }
  if (rest == "/heal") {
    if (m == http::verb::post) {
      Status st = co_await x.blocking([&] { return store.start_heal(); });
      if (!st) co_return admin_error(st.error(), "start heal");
      CAIRN_LOG_INFO(kLog, "heal started by the admin API");
    } else if (m != http::verb::get) {
      co_return method_not_allowed("GET, POST");
    }
    auto status = co_await x.blocking([&] { return store.heal_status(); });
    int online = co_await x.blocking([&] { return store.drives_online(); });
    co_return json_reply(heal_proto(status, online),
                         m == http::verb::post ? http::status::accepted : http::status::ok);
  }
  co_return admin_error(http::status::not_found, "NotFound", "no such admin path " + x.path);
}

}  // namespace cairn::objectd
