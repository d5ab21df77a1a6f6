// S3AdminClient and the objectd commands of the cairn CLI against a tiny in-test HTTP server
// that checks every request's SigV4 signature with the server-side verifier
// (sigv4::verify). The real objectd is covered by tests/integration/test_s3_*.py.
#include "s3_admin_client.h"

#include <gtest/gtest.h>

#include <atomic>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "cli.h"
#include "common/asio.h"

namespace cairn::client {
namespace {

using tcp = asio::ip::tcp;

const sigv4::Credentials kRoot{"AKROOTEXAMPLE", "root-secret/with+odd=chars"};

int64_t now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct Seen {
  std::string method;
  std::string target;
  std::string body;
  bool verified = false;
  std::string verify_error;
  std::string access_key_id;
};

struct Canned {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
};

// Answers each request with the next canned reply (the last one repeats), after checking its
// signature against the keys it knows.
class FakeObjectd {
 public:
  FakeObjectd() : acceptor_(ioc_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    port_ = acceptor_.local_endpoint().port();
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeObjectd() {
    stop_ = true;
    beast::error_code ec;
    asio::io_context ioc;
    tcp::socket wake(ioc);
    wake.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port_), ec);
    thread_.join();
  }

  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  void reply(int status, std::string body, std::string content_type = "application/json") {
    std::lock_guard lk(mu_);
    canned_.push_back({status, std::move(body), std::move(content_type)});
  }
  std::vector<Seen> seen() {
    std::lock_guard lk(mu_);
    return seen_;
  }

 private:
  void serve() {
    while (!stop_) {
      tcp::socket s(ioc_);
      beast::error_code ec;
      acceptor_.accept(s, ec);
      if (ec || stop_) return;
      handle(s);
    }
  }

  void handle(tcp::socket& s) {
    beast::flat_buffer buf;
    http::request<http::string_body> req;
    beast::error_code ec;
    http::read(s, buf, req, ec);
    if (ec) return;
    Seen seen;
    seen.method = std::string(to_std(req.method_string()));
    seen.target = std::string(to_std(req.target()));
    seen.body = req.body();
    sigv4::HttpRequestView v;
    v.method = seen.method;
    size_t q = seen.target.find('?');
    v.raw_path = std::string_view(seen.target).substr(0, q);
    v.raw_query = q == std::string::npos ? "" : std::string_view(seen.target).substr(q + 1);
    for (const auto& f : req) v.headers.emplace_back(std::string(to_std(f.name_string())),
                                                     std::string(to_std(f.value())));
    auto lookup = [](std::string_view ak) -> Result<std::string> {
      if (ak == kRoot.access_key_id) return kRoot.secret_access_key;
      return sigv4::AuthErrc::invalid_access_key_id;
    };
    auto auth = sigv4::verify(v, lookup, now_s());
    if (auth) {
      // The body must match the signed hash, as objectd checks it.
      seen.verified = auth.value().content_sha256 == sigv4::sha256_hex(seen.body);
      if (!seen.verified) seen.verify_error = "x-amz-content-sha256 does not match the body";
      seen.access_key_id = auth.value().access_key_id;
    } else {
      seen.verify_error = auth.error().message();
    }
    Canned c;
    {
      std::lock_guard lk(mu_);
      seen_.push_back(seen);
      if (!canned_.empty()) {
        last_ = canned_.front();
        canned_.pop_front();
      }
      c = last_;
    }
    http::response<http::string_body> res{static_cast<http::status>(c.status), 11};
    res.set(http::field::content_type, c.content_type);
    res.body() = c.body;
    res.keep_alive(false);
    res.prepare_payload();
    http::write(s, res, ec);
    s.shutdown(tcp::socket::shutdown_both, ec);
  }

  asio::io_context ioc_;
  tcp::acceptor acceptor_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::deque<Canned> canned_;
  Canned last_;
  std::vector<Seen> seen_;
};

TEST(S3AdminSigning, SignedHeadersVerifyOnTheServerSide) {
  auto headers = sign_admin_request("POST", "127.0.0.1:9000", "/_cairn/admin/tenants",
                                    R"({"name":"acme"})", kRoot, now_s());
  ASSERT_TRUE(headers) << headers.error().message();
  sigv4::HttpRequestView v;
  v.method = "POST";
  v.raw_path = "/_cairn/admin/tenants";
  v.headers = headers.value();
  std::map<std::string, std::string> by_name;
  for (const auto& [name, value] : headers.value()) {
    std::string lower = name;
    for (char& ch : lower) ch = static_cast<char>(tolower(static_cast<unsigned char>(ch)));
    by_name[lower] = value;
  }
  EXPECT_EQ(by_name["host"], "127.0.0.1:9000");
  EXPECT_EQ(by_name["content-length"], "15");
  EXPECT_EQ(by_name["x-amz-content-sha256"], sigv4::sha256_hex(R"({"name":"acme"})"));
  EXPECT_EQ(by_name["authorization"].rfind("AWS4-HMAC-SHA256 Credential=AKROOTEXAMPLE/", 0), 0u);

  auto good = [](std::string_view) -> Result<std::string> { return kRoot.secret_access_key; };
  auto bad = [](std::string_view) -> Result<std::string> { return std::string("other"); };
  auto ok = sigv4::verify(v, good, now_s());
  ASSERT_TRUE(ok) << ok.error().message();
  EXPECT_EQ(ok.value().access_key_id, kRoot.access_key_id);
  auto wrong = sigv4::verify(v, bad, now_s());
  ASSERT_FALSE(wrong);
  EXPECT_EQ(wrong.error(), sigv4::AuthErrc::signature_does_not_match);

  // A tampered path no longer verifies.
  v.raw_path = "/_cairn/admin/heal";
  EXPECT_FALSE(sigv4::verify(v, good, now_s()));
}

TEST(S3AdminSigning, OldSignatureIsRefusedAsSkewed) {
  auto headers = sign_admin_request("GET", "h:1", "/_cairn/admin/heal", "", kRoot,
                                    now_s() - 3600);
  ASSERT_TRUE(headers);
  sigv4::HttpRequestView v;
  v.method = "GET";
  v.raw_path = "/_cairn/admin/heal";
  v.headers = headers.value();
  auto good = [](std::string_view) -> Result<std::string> { return kRoot.secret_access_key; };
  auto r = sigv4::verify(v, good, now_s());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), sigv4::AuthErrc::request_expired);
}

TEST(S3AdminClient, TenantsAndKeysAreSignedRequests) {
  FakeObjectd srv;
  S3AdminClient client(srv.endpoint(), kRoot);
  srv.reply(201, R"({"name":"acme"})");
  auto t = client.create_tenant("acme");
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ(t.value().name(), "acme");

  srv.reply(200, R"({"tenants":[{"name":"acme"},{"name":"root"}]})");
  srv.reply(201, R"({"accessKeyId":"AK1","secretKey":"SK1","tenant":"acme","root":false})");
  auto list = client.list_tenants();
  ASSERT_TRUE(list) << list.error().message;
  ASSERT_EQ(list.value().tenants_size(), 2);
  EXPECT_EQ(list.value().tenants(1).name(), "root");
  auto key = client.create_access_key("acme");
  ASSERT_TRUE(key) << key.error().message;
  EXPECT_EQ(key.value().access_key_id(), "AK1");
  EXPECT_EQ(key.value().secret_key(), "SK1");
  EXPECT_EQ(key.value().tenant(), "acme");

  auto seen = srv.seen();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].method, "POST");
  EXPECT_EQ(seen[0].target, "/_cairn/admin/tenants");
  EXPECT_EQ(seen[0].body, R"({"name":"acme"})");
  EXPECT_EQ(seen[1].method, "GET");
  EXPECT_EQ(seen[1].target, "/_cairn/admin/tenants");
  EXPECT_EQ(seen[2].method, "POST");
  EXPECT_EQ(seen[2].target, "/_cairn/admin/tenants/acme/keys");
  for (const auto& s : seen) {
    EXPECT_TRUE(s.verified) << s.method << " " << s.target << ": " << s.verify_error;
    EXPECT_EQ(s.access_key_id, kRoot.access_key_id);
  }
}

TEST(S3AdminClient, ErrorsCarryTheServersCodeAndMessage) {
  FakeObjectd srv;
  S3AdminClient client(srv.endpoint(), kRoot);
  srv.reply(403, R"({"code":"AccessDenied","message":"the admin API needs the root key"})");
  auto r = client.list_tenants();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().http_status, 403);
  EXPECT_EQ(r.error().code, Errc::permission_denied);
  EXPECT_EQ(r.error().message, "AccessDenied: the admin API needs the root key");

  FakeObjectd xml;
  S3AdminClient xclient(xml.endpoint(), kRoot);
  xml.reply(403,
            "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>bad "
            "sig</Message></Error>",
            "application/xml");
  auto x = xclient.heal_status();
  ASSERT_FALSE(x);
  EXPECT_EQ(x.error().message, "SignatureDoesNotMatch: bad sig");

  FakeObjectd conflict;
  S3AdminClient cclient(conflict.endpoint(), kRoot);
  conflict.reply(409, R"({"code":"AlreadyExists","message":"tenant acme: already exists"})");
  auto c = cclient.create_tenant("acme");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, Errc::already_exists);
}

TEST(S3AdminClient, UnreachableEndpointNamesIt) {
  S3AdminClient client("http://127.0.0.1:1", kRoot);
  auto r = client.heal_status();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().http_status, 0);
  EXPECT_NE(r.error().message.find("http://127.0.0.1:1"), std::string::npos) << r.error().message;
  S3AdminClient bad("ftp://x", kRoot);
  auto b = bad.heal_status();
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, Errc::invalid_argument);
}

// ---- the CLI commands

struct CliRun {
  int status;
  std::string out;
  std::string err;
};

CliRun run(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
  args.insert(args.begin(), "cairn");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  std::ostringstream out, err;
  GetEnv getenv = [env](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
  int status = run_cli(static_cast<int>(argv.size()), argv.data(), out, err, getenv);
  return {status, out.str(), err.str()};
}

std::map<std::string, std::string> root_env(const FakeObjectd& srv) {
  return {{"CAIRN_S3_ENDPOINT", srv.endpoint()},
          {"CAIRN_S3_ACCESS_KEY", kRoot.access_key_id},
          {"CAIRN_S3_SECRET_KEY", kRoot.secret_access_key}};
}

TEST(CliObjects, TenantCommandsPrintTablesAndJson) {
  FakeObjectd srv;
  srv.reply(200, R"({"tenants":[{"name":"acme"},{"name":"root"}]})");
  auto r = run({"tenant", "list"}, root_env(srv));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "NAME\nacme\nroot\n");
  r = run({"tenant", "list", "--json"}, root_env(srv));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("\"name\": \"acme\""), std::string::npos) << r.out;
  for (const auto& s : srv.seen()) EXPECT_TRUE(s.verified) << s.verify_error;
}

TEST(CliObjects, KeyCreatePrintsTheSecretOnce) {
  FakeObjectd srv;
  srv.reply(201, R"({"accessKeyId":"AK1","secretKey":"SK1","tenant":"acme","root":false})");
  auto r = run({"--s3-endpoint", srv.endpoint(), "--access-key", kRoot.access_key_id,
                "--secret-key", kRoot.secret_access_key, "tenant", "key", "create", "acme"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("access key id:     AK1\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("secret access key: SK1\n"), std::string::npos) << r.out;
  ASSERT_EQ(srv.seen().size(), 1u);
  EXPECT_EQ(srv.seen()[0].target, "/_cairn/admin/tenants/acme/keys");
  EXPECT_TRUE(srv.seen()[0].verified) << srv.seen()[0].verify_error;
}

TEST(CliObjects, ServerErrorIsOneLineAndExitsOne) {
  FakeObjectd srv;
  srv.reply(403, R"({"code":"AccessDenied","message":"needs the root key"})");
  auto r = run({"tenant", "create", "acme"}, root_env(srv));
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err.rfind("cairn: error: AccessDenied: needs the root key", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

TEST(CliObjects, HealFollowsThePassAndExitsZeroWhenFullyRedundant) {
  FakeObjectd srv;
  srv.reply(202, R"({"running":true,"objectsTotal":"10","objectsScanned":"0"})");
  srv.reply(200, R"({"running":true,"objectsTotal":"10","objectsScanned":"5",
                    "objectsHealed":"2","bytesPerSecond":1048576,"etaSeconds":3})");
  srv.reply(200, R"({"running":false,"objectsTotal":"10","objectsScanned":"10",
                    "objectsHealed":"4","fullyRedundant":true,"drivesOnline":6})");
  auto r = run({"objects", "heal", "--poll-ms", "10"}, root_env(srv));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("heal: 0/10 objects (0%)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("heal finished: 10 objects scanned, 4 healed, 0 failed"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("fully redundant (6 drives online)"), std::string::npos) << r.out;
  auto seen = srv.seen();
  ASSERT_GE(seen.size(), 3u);
  EXPECT_EQ(seen[0].method, "POST");
  EXPECT_EQ(seen[0].target, "/_cairn/admin/heal");
  EXPECT_EQ(seen[1].method, "GET");
}

TEST(CliObjects, HealExitsOneWhenObjectsFailed) {
  FakeObjectd srv;
  srv.reply(202, R"({"running":true,"objectsTotal":"3"})");
  srv.reply(200, R"({"running":false,"objectsTotal":"3","objectsScanned":"3",
                    "objectsFailed":"1","drivesOnline":6})");
  auto r = run({"objects", "heal", "--poll-ms", "10"}, root_env(srv));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("1 object(s) could not be healed"), std::string::npos) << r.err;
}

TEST(CliObjects, HealExitsOneWhenNotFullyRedundant) {
  FakeObjectd srv;
  srv.reply(202, R"({"running":false,"objectsTotal":"3","objectsScanned":"3","drivesOnline":5})");
  srv.reply(200, R"({"running":false,"objectsTotal":"3","objectsScanned":"3","drivesOnline":5})");
  auto r = run({"objects", "heal", "--poll-ms", "100"}, root_env(srv));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("not fully redundant (5 drives online)"), std::string::npos) << r.err;
}

TEST(CliObjects, HealStatusAndNoWaitAskOnce) {
  FakeObjectd srv;
  srv.reply(200, R"({"running":true,"objectsTotal":"8","objectsScanned":"2","etaSeconds":75,
                    "drivesOnline":6})");
  srv.reply(202, R"({"running":true,"objectsTotal":"8","objectsScanned":"2"})");
  auto r = run({"objects", "heal", "--status"}, root_env(srv));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("objects scanned: 2 of 8\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("eta:             1m15s\n"), std::string::npos) << r.out;
  r = run({"objects", "heal", "--no-wait", "--json"}, root_env(srv));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("\"objectsScanned\": \"2\""), std::string::npos) << r.out;
  auto seen = srv.seen();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].method, "GET");
  EXPECT_EQ(seen[1].method, "POST");
  EXPECT_EQ(run({"objects", "heal", "--no-wait", "--status"}, root_env(srv)).status, 2);
}

TEST(CliObjects, CredentialPrecedence) {
  char tmpl[] = "/tmp/cairn-s3cli-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  std::string file = dir + "/s3.credentials";
  std::ofstream(file) << "access_key_id=AKFILE\nsecret_access_key=SKFILE\n";
  std::string other = dir + "/other";
  std::ofstream(other) << "# comment\naccess_key_id=AKOTHER\r\nsecret_access_key=SKOTHER\n";
  std::string broken = dir + "/broken";
  std::ofstream(broken) << "access_key_id=AK\n";
  auto env = [](std::map<std::string, std::string> m) -> GetEnv {
    return [m](const std::string& n) -> std::optional<std::string> {
      auto it = m.find(n);
      return it == m.end() ? std::nullopt : std::optional<std::string>(it->second);
    };
  };
  auto e = env({{"CAIRN_S3_ACCESS_KEY", "AKENV"}, {"CAIRN_S3_SECRET_KEY", "SKENV"},
                {"CAIRN_S3_CREDENTIALS", other}});
  EXPECT_EQ(resolve_s3_credentials("AKF", "SKF", "", e, file).value().access_key_id, "AKF");
  EXPECT_EQ(resolve_s3_credentials("", "", other, e, file).value().secret_access_key, "SKOTHER");
  EXPECT_EQ(resolve_s3_credentials("", "", "", e, file).value().access_key_id, "AKENV");
  auto e2 = env({{"CAIRN_S3_CREDENTIALS", other}});
  EXPECT_EQ(resolve_s3_credentials("", "", "", e2, file).value().access_key_id, "AKOTHER");
  EXPECT_EQ(resolve_s3_credentials("", "", "", env({}), file).value().access_key_id, "AKFILE");
  EXPECT_FALSE(resolve_s3_credentials("", "", "", env({}), dir + "/missing"));
  EXPECT_FALSE(resolve_s3_credentials("AK", "", "", env({}), file));
  EXPECT_FALSE(resolve_s3_credentials("", "", broken, env({}), file));
  EXPECT_FALSE(resolve_s3_credentials("", "", "", env({{"CAIRN_S3_ACCESS_KEY", "x"}}), file));
  std::filesystem::remove_all(dir);

  auto r = run({"tenant", "list", "--access-key", "AK"});
  EXPECT_EQ(r.status, 2) << r.err;
}

TEST(CliObjects, FormatsHealProgress) {
  cairn::v1::HealStatus s;
  s.set_running(true);
  s.set_eta_seconds(-1);
  EXPECT_EQ(format_heal_progress(s), "heal: 0/? objects, 0 healed, 0 failed, 0 B/s, ETA ?");
  s.set_objects_total(400);
  s.set_objects_scanned(100);
  s.set_objects_healed(7);
  s.set_bytes_per_second(3.0 * 1024 * 1024);
  s.set_eta_seconds(3725);
  EXPECT_EQ(format_heal_progress(s),
            "heal: 100/400 objects (25%), 7 healed, 0 failed, 3 MiB/s, ETA 1h02m");
}

}  // namespace
}  // namespace cairn::client
