// S3BlobStore: repository URLs and configuration checks; retries, bounds, listing XML and
// kept-alive connections against a scripted in-test HTTP server; and end to end against the
// real objectd (CAIRN_OBJECTD_BIN), started once per test process in a temp dir and
// stopped by its PID.
#include "snapshot/s3_blob_store.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "common/asio.h"
#include "common/sigv4.h"
#include "temp_dir.h"

extern char** environ;

namespace cairn::backup {
namespace {

using tcp = asio::ip::tcp;

// ---- parse_repo_url and open() ----

TEST(S3RepoUrl, ParsesBucketAndPrefix) {
  struct Case {
    const char* url;
    const char* bucket;
    const char* prefix;
  };
  const Case good[] = {
      {"s3://my-bucket", "my-bucket", ""},
      {"s3://my-bucket/", "my-bucket", ""},
      {"s3://abc/backups", "abc", "backups"},
      {"s3://b.example-1/backups/vol1/", "b.example-1", "backups/vol1"},
      {"s3://b0b/a b/ü+x///", "b0b", "a b/ü+x"},
      {"s3://123/x", "123", "x"},
      {"s3://1.2.3/x", "1.2.3", "x"},
      {"s3://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", ""},
  };
  for (const Case& c : good) {
    auto r = parse_repo_url(c.url);
    ASSERT_TRUE(r) << c.url;
    EXPECT_EQ(r.value().bucket, c.bucket) << c.url;
    EXPECT_EQ(r.value().prefix, c.prefix) << c.url;
  }
}

TEST(S3RepoUrl, RejectsBadUrlsAndBucketNames) {
  const std::string bad[] = {
      "",
      "s3://",
      "s3:///prefix",
      "bucket/prefix",
      "S3://bucket",
      "http://bucket/x",
      "s3:/bucket",
      "s3://ab",                       // too short
      "s3://" + std::string(64, 'a'),  // too long
      "s3://My-Bucket",                // uppercase
      "s3://my_bucket",                // '_'
      "s3://-abc",
      "s3://abc-",
      "s3://.abc",
      "s3://abc.",
      "s3://a..b",
      "s3://a.-b",
      "s3://a-.b",
      "s3://192.168.1.1",
      "s3://xn--abc",
      "s3://sthree-abc",
      "s3://abc-s3alias",
      "s3://abc--ol-s3",
      "s3://b u",
      "s3://bucket//x",
      "s3://bucket/a//b",
      "s3://bucket/./x",
      "s3://bucket/a/../b",
      "s3://bucket/a?b",
      "s3://bucket/a#b",
      std::string("s3://bucket/a\x01") + "b",
      "s3://bucket/" + std::string(513, 'p'),
  };
  for (const std::string& url : bad) {
    auto r = parse_repo_url(url);
    ASSERT_FALSE(r) << url;
    EXPECT_EQ(r.error(), Errc::invalid_argument) << url;
  }
  EXPECT_TRUE(valid_bucket_name("backups-2024.example"));
  EXPECT_FALSE(valid_bucket_name("10.0.0.1"));
}

S3Config base_config(std::string endpoint) {
  S3Config c;
  c.endpoint = std::move(endpoint);
  c.access_key = "AKEXAMPLE";
  c.secret_key = "secret-example";
  c.bucket = "bucket";
  return c;
}

TEST(S3BlobStoreConfig, OpenChecksTheConfiguration) {
  auto open_with = [](auto mutate) {
    S3Config c = base_config("http://127.0.0.1:9000");
    mutate(c);
    return S3BlobStore::open(c);
  };
  ASSERT_TRUE(open_with([](S3Config&) {}));
  EXPECT_TRUE(open_with([](S3Config& c) { c.endpoint = "http://[::1]:9000/"; }));
  EXPECT_TRUE(open_with([](S3Config& c) { c.endpoint = "http://s3.example.com"; }));
  EXPECT_TRUE(open_with([](S3Config& c) { c.prefix = "a/b c/ü"; }));
  using Mutate = void (*)(S3Config&);
  const Mutate bad[] = {
      [](S3Config& c) { c.endpoint = "https://127.0.0.1:9000"; },
      [](S3Config& c) { c.endpoint = "127.0.0.1:9000"; },
      [](S3Config& c) { c.endpoint = "http://"; },
      [](S3Config& c) { c.endpoint = "http://:9000"; },
      [](S3Config& c) { c.endpoint = "http://h:99999"; },
      [](S3Config& c) { c.endpoint = "http://h:0"; },
      [](S3Config& c) { c.endpoint = "http://h:1/path"; },
      [](S3Config& c) { c.endpoint = "http://::1:9000"; },
      [](S3Config& c) { c.bucket = "Bad_Bucket"; },
      [](S3Config& c) { c.prefix = "/x"; },
      [](S3Config& c) { c.prefix = "x/"; },
      [](S3Config& c) { c.prefix = "a//b"; },
      [](S3Config& c) { c.region = ""; },
      [](S3Config& c) { c.region = "EU West"; },
      [](S3Config& c) { c.secret_key = ""; },
      [](S3Config& c) { c.max_connections = 0; },
      [](S3Config& c) { c.retries = -1; },
      [](S3Config& c) { c.timeout = std::chrono::milliseconds(0); },
      [](S3Config& c) { c.list_max_keys = 0; },
      [](S3Config& c) { c.list_max_keys = 1001; },
  };
  for (size_t i = 0; i < std::size(bad); ++i) {
    auto r = open_with(bad[i]);
    ASSERT_FALSE(r) << "case " << i;
    EXPECT_EQ(r.error(), Errc::invalid_argument) << "case " << i;
  }
}

TEST(S3BlobStoreConfig, DescribeNamesBucketAndPrefix) {
  S3Config c = base_config("http://127.0.0.1:9000");
  auto plain = S3BlobStore::open(c);
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain.value()->describe(), "s3://bucket");
  c.prefix = "backups/vol1";
  auto prefixed = S3BlobStore::open(c);
  ASSERT_TRUE(prefixed);
  EXPECT_EQ(prefixed.value()->describe(), "s3://bucket/backups/vol1");
}

// ---- a scripted HTTP server ----

struct Scripted {
  Scripted() = default;
  Scripted(int s, std::string b, bool close = false)
      : status(s), body(std::move(b)), close_silently(close) {}
  static Scripted raw_bytes(std::string bytes) {
    Scripted out;
    out.raw = std::move(bytes);
    return out;
  }

  int status = 200;
  std::string body;
  bool close_silently = false;  // close after answering, without "Connection: close"
  std::string raw;              // if set, sent as is instead of an answer, then closed
};

// Answers each request with the next scripted answer (the last one repeats). One thread per
// connection; records the targets it was asked for.
class ScriptedServer {
 public:
  ScriptedServer() : acceptor_(ioc_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    port_ = acceptor_.local_endpoint().port();
    accept_thread_ = std::thread([this] { accept_loop(); });
  }
  ~ScriptedServer() {
    stop_ = true;
    {
      asio::io_context ioc;
      tcp::socket wake(ioc);
      beast::error_code ec;
      wake.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port_), ec);
    }
    accept_thread_.join();
    {
      std::lock_guard lock(mu_);
      for (auto& s : sockets_) ::shutdown(s->native_handle(), SHUT_RDWR);
    }
    for (auto& t : conn_threads_) t.join();
  }

  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  void then(Scripted s) {
    std::lock_guard lock(mu_);
    script_.push_back(std::move(s));
  }
  std::vector<std::string> targets() {
    std::lock_guard lock(mu_);
    return targets_;
  }
  size_t requests() { return targets().size(); }
  size_t connections() {
    std::lock_guard lock(mu_);
    return sockets_.size();
  }

 private:
  void accept_loop() {
    while (!stop_) {
      auto s = std::make_shared<tcp::socket>(ioc_);
      beast::error_code ec;
      acceptor_.accept(*s, ec);
      if (ec || stop_) break;
      std::lock_guard lock(mu_);
      sockets_.push_back(s);
      conn_threads_.emplace_back([this, s] { serve(*s); });
    }
  }

  void serve(tcp::socket& s) {
    beast::flat_buffer buffer;
    for (;;) {
      http::request<http::string_body> req;
      beast::error_code ec;
      http::read(s, buffer, req, ec);
      if (ec) return;
      Scripted answer;
      {
        std::lock_guard lock(mu_);
        targets_.push_back(std::string(to_std(req.target())));
        if (!script_.empty()) {
          last_ = script_.front();
          script_.pop_front();
        }
        answer = last_;
      }
      if (!answer.raw.empty()) {
        asio::write(s, asio::buffer(answer.raw), ec);
        s.shutdown(tcp::socket::shutdown_both, ec);
        return;
      }
      http::response<http::string_body> res{static_cast<http::status>(answer.status), 11};
      res.body() = answer.body;
      res.keep_alive(true);
      res.prepare_payload();
      http::write(s, res, ec);
      if (ec || answer.close_silently) {
        s.shutdown(tcp::socket::shutdown_both, ec);
        s.close(ec);
        return;
      }
    }
  }

  asio::io_context ioc_;
  tcp::acceptor acceptor_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread accept_thread_;
  std::mutex mu_;
  std::vector<std::shared_ptr<tcp::socket>> sockets_;
  std::vector<std::thread> conn_threads_;
  std::deque<Scripted> script_;
  Scripted last_;
  std::vector<std::string> targets_;
};

std::string s3_error_xml(const std::string& code, const std::string& message) {
  return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>" + code + "</Code><Message>" +
         message + "</Message><RequestId>1</RequestId></Error>";
}

std::unique_ptr<S3BlobStore> open_store(const S3Config& c) {
  auto r = S3BlobStore::open(c);
  CAIRN_ASSERT(r);
  return std::move(r.value());
}

TEST(S3BlobStoreScripted, ServerErrorsAreRetriedThenSucceed) {
  ScriptedServer srv;
  srv.then({503, s3_error_xml("SlowDown", "Please reduce your request rate.")});
  srv.then({500, s3_error_xml("InternalError", "oops")});
  srv.then({200, "hello"});
  auto store = open_store(base_config(srv.endpoint()));
  auto r = store->get("k");
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r.value(), "hello");
  EXPECT_EQ(srv.requests(), 3u);
}

TEST(S3BlobStoreScripted, RetriesAreBounded) {
  {
    ScriptedServer srv;
    srv.then({503, s3_error_xml("ServiceUnavailable", "busy")});
    S3Config c = base_config(srv.endpoint());
    c.retries = 2;
    auto store = open_store(c);
    auto r = store->get("k");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), Errc::unavailable);
    EXPECT_EQ(srv.requests(), 3u);
  }
  {
    ScriptedServer srv;
    srv.then({502, ""});
    S3Config c = base_config(srv.endpoint());
    c.retries = 1;
    auto store = open_store(c);
    auto st = store->put("k", "data");
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error(), Errc::io_error);
    EXPECT_EQ(srv.requests(), 2u);
  }
}

TEST(S3BlobStoreScripted, ClientErrorsAreNotRetried) {
  struct Case {
    int status;
    const char* code;
    Errc expected;
  };
  const Case cases[] = {
      {400, "InvalidArgument", Errc::io_error},
      {403, "AccessDenied", Errc::permission_denied},
      {403, "SignatureDoesNotMatch", Errc::permission_denied},
      {404, "NoSuchBucket", Errc::not_found},
      {404, "NoSuchUpload", Errc::io_error},
      {409, "OperationAborted", Errc::io_error},
  };
  for (const Case& c : cases) {
    ScriptedServer srv;
    srv.then({c.status, s3_error_xml(c.code, "message")});
    auto store = open_store(base_config(srv.endpoint()));
    auto r = store->get("k");
    ASSERT_FALSE(r) << c.code;
    EXPECT_EQ(r.error(), c.expected) << c.code;
    EXPECT_EQ(srv.requests(), 1u) << c.code;
  }
}

TEST(S3BlobStoreScripted, OversizedAnswerIsAnErrorNotACrash) {
  ScriptedServer srv;
  srv.then(
      Scripted::raw_bytes("HTTP/1.1 200 OK\r\nContent-Length: 16777217\r\n\r\n<ListBucketResult>"));
  auto store = open_store(base_config(srv.endpoint()));
  auto st = store->list("", [](const BlobInfo&) { return true; });
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error(), Errc::io_error);
  EXPECT_EQ(srv.requests(), 1u);
}

TEST(S3BlobStoreScripted, ConnectionsAreKeptAliveAndAClosedOneIsReplaced) {
  ScriptedServer srv;
  srv.then({200, "one"});
  srv.then({200, "two", true});  // the server then drops the kept-alive connection
  srv.then({200, "three"});
  S3Config c = base_config(srv.endpoint());
  c.retries = 0;  // replacing a connection the server closed is not a retry
  c.max_connections = 1;
  auto store = open_store(c);
  auto one = store->get("k");
  auto two = store->get("k");
  auto three = store->get("k");
  ASSERT_TRUE(one && two && three);
  EXPECT_EQ(one.value(), "one");
  EXPECT_EQ(two.value(), "two");
  EXPECT_EQ(three.value(), "three");
  EXPECT_EQ(srv.requests(), 3u);
  EXPECT_EQ(srv.connections(), 2u);  // one and two shared a connection
}

TEST(S3BlobStoreScripted, ThreadsShareABoundedSetOfConnections) {
  ScriptedServer srv;
  srv.then({200, "same"});
  S3Config c = base_config(srv.endpoint());
  c.max_connections = 3;
  auto store = open_store(c);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 25; ++i) {
        auto r = store->get("k");
        if (!r || r.value() != "same") failures++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(srv.requests(), 200u);
  EXPECT_LE(srv.connections(), 3u);
}

TEST(S3BlobStoreScripted, ListingDecodesKeysAndFollowsContinuationTokens) {
  ScriptedServer srv;
  // Page 1: url-encoded keys (S3 writes a space as '+'), XML escapes, an offset time.
  srv.then({200,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
            "<Name>bucket</Name><Prefix>p%2Fc</Prefix><KeyCount>3</KeyCount>"
            "<EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
            "<NextContinuationToken>tok+/=&amp;1</NextContinuationToken>"
            "<Contents><Key>p/c/a+b%2Bc</Key><LastModified>2023-11-14T22:13:20.000Z</LastModified>"
            "<ETag>&quot;x&quot;</ETag><Size>5</Size><Owner><ID>o</ID></Owner></Contents>"
            "<!-- a comment --><Contents><Key>p/c/%C3%BC%26%3C</Key>"
            "<LastModified>2023-11-15T00:13:20+02:00</LastModified><Size>0</Size></Contents>"
            "</ListBucketResult>"});
  // Page 2: plain keys with entities and CDATA.
  srv.then({200,
            "<ListBucketResult><IsTruncated>false</IsTruncated>"
            "<Contents><Key>p/c/x&amp;y&lt;z&#x41;&#66;</Key>"
            "<LastModified>2023-11-14T22:13:21Z</LastModified><Size>7</Size></Contents>"
            "<Contents><Key><![CDATA[p/c/<raw>]]></Key>"
            "<LastModified>2023-11-14T22:13:22Z</LastModified><Size>8</Size></Contents>"
            "</ListBucketResult>"});
  S3Config c = base_config(srv.endpoint());
  c.prefix = "p";
  c.list_max_keys = 2;
  auto store = open_store(c);
  std::vector<BlobInfo> seen;
  auto st = store->list("c/", [&](const BlobInfo& b) {
    seen.push_back(b);
    return true;
  });
  ASSERT_TRUE(st) << st.error().message();
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(seen[0].key, "c/a b+c");
  EXPECT_EQ(seen[0].size, 5u);
  EXPECT_EQ(seen[0].last_modified_unix_s, 1700000000);
  EXPECT_EQ(seen[1].key, "c/\xC3\xBC&<");
  EXPECT_EQ(seen[1].size, 0u);
  EXPECT_EQ(seen[1].last_modified_unix_s, 1700000000);
  EXPECT_EQ(seen[2].key, "c/x&y<zAB");
  EXPECT_EQ(seen[2].last_modified_unix_s, 1700000001);
  EXPECT_EQ(seen[3].key, "c/<raw>");
  const auto targets = srv.targets();
  ASSERT_EQ(targets.size(), 2u);
  EXPECT_NE(targets[0].find("list-type=2"), std::string::npos);
  EXPECT_NE(targets[0].find("encoding-type=url"), std::string::npos);
  EXPECT_NE(targets[0].find("max-keys=2"), std::string::npos);
  EXPECT_NE(targets[0].find("prefix=p%2Fc%2F"), std::string::npos);
  EXPECT_EQ(targets[0].find("continuation-token"), std::string::npos);
  EXPECT_NE(targets[1].find("continuation-token=tok%2B%2F%3D%261"), std::string::npos);
}

TEST(S3BlobStoreScripted, MalformedListingIsAnError) {
  const std::string bodies[] = {
      "not xml",
      "<ListBucketResult><Contents><Key>p/a</Key></Contents></ListBucketResult>",
      "<ListBucketResult><Contents><Key>p/a</Key><Size>x</Size>"
      "<LastModified>2023-11-14T22:13:20Z</LastModified></Contents></ListBucketResult>",
      "<ListBucketResult><Contents><Key>p/a&bogus;</Key><Size>1</Size>"
      "<LastModified>2023-11-14T22:13:20Z</LastModified></Contents></ListBucketResult>",
      "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>",
      "<ListBucketResult><Contents><Key>q/outside</Key><Size>1</Size>"
      "<LastModified>2023-11-14T22:13:20Z</LastModified></Contents></ListBucketResult>",
      "<ListBucketResult><Contents><Key>p/a</Key>",
  };
  for (const std::string& body : bodies) {
    ScriptedServer srv;
    srv.then({200, body});
    S3Config c = base_config(srv.endpoint());
    c.prefix = "p";
    auto store = open_store(c);
    auto st = store->list("", [](const BlobInfo&) { return true; });
    ASSERT_FALSE(st) << body;
    EXPECT_EQ(st.error(), Errc::io_error) << body;
  }
}

TEST(S3BlobStoreScripted, NoAnswerTimesOutAsUnavailable) {
  // A listening socket that never accepts: connects succeed, answers never come.
  asio::io_context ioc;
  tcp::acceptor silent(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  S3Config c = base_config("http://127.0.0.1:" + std::to_string(silent.local_endpoint().port()));
  c.timeout = std::chrono::milliseconds(200);
  c.retries = 1;
  auto store = open_store(c);
  auto r = store->get("k");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), Errc::unavailable);
}

TEST(S3BlobStoreScripted, UnreachableEndpointIsUnavailable) {
  uint16_t port = 0;
  {
    asio::io_context ioc;
    tcp::acceptor a(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    port = a.local_endpoint().port();
  }  // closed: connecting is refused
  S3Config c = base_config("http://127.0.0.1:" + std::to_string(port));
  c.timeout = std::chrono::milliseconds(1000);
  c.retries = 2;
  auto store = open_store(c);
  auto st = store->put("k", "data");
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error(), Errc::unavailable);
  auto r = store->head("k");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), Errc::unavailable);
}

// ---- the real objectd ----

constexpr const char* k_root_access_key = "backup-test-root";
constexpr const char* k_root_secret_key = "backup-test-secret-0123456789";

// objectd started on 127.0.0.1 (port chosen by the kernel) in `dir`, stopped by its PID.
class Objectd {
 public:
  explicit Objectd(const std::string& dir) : log_path_(dir + "/objectd.log") {
    std::vector<std::string> args = {
        CAIRN_OBJECTD_BIN, "--data-dir", dir + "/data", "--listen", "127.0.0.1:0", "--ec", "2+1",
        "--threads",       "2"};
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) {
      std::string_view v(*e);
      if (!v.starts_with("CAIRN_S3_")) env.emplace_back(v);
    }
    env.push_back(std::string("CAIRN_S3_ACCESS_KEY=") + k_root_access_key);
    env.push_back(std::string("CAIRN_S3_SECRET_KEY=") + k_root_secret_key);
    std::vector<char*> argv, envp;
    for (auto& a : args) argv.push_back(a.data());
    for (auto& e : env) envp.push_back(e.data());
    argv.push_back(nullptr);
    envp.push_back(nullptr);
    const int log_fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    CAIRN_ASSERT(log_fd >= 0 && null_fd >= 0);
    pid_ = ::fork();
    CAIRN_ASSERT(pid_ >= 0);
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test
      ::dup2(null_fd, 0);
      ::dup2(log_fd, 1);
      ::dup2(log_fd, 2);
      ::execve(argv[0], argv.data(), envp.data());
      ::_exit(127);
    }
    ::close(log_fd);
    ::close(null_fd);
    wait_ready();
  }

  ~Objectd() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int status = 0;
    for (int i = 0; i < 300; ++i) {  // 30 s, then SIGKILL
      if (::waitpid(pid_, &status, WNOHANG) == pid_) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
  }

  const std::string& endpoint() const { return endpoint_; }
  const std::string& error() const { return error_; }
  std::string log() const {
    std::ifstream f(log_path_);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

 private:
  void wait_ready() {
    constexpr std::string_view k_ready = "objectd ready endpoint=";
    for (int i = 0; i < 600; ++i) {  // bounded: 60 s
      const std::string text = log();
      if (const size_t at = text.find(k_ready); at != std::string::npos) {
        const size_t begin = at + k_ready.size();
        const size_t end = text.find_first_of(" \n", begin);
        if (end != std::string::npos) {
          endpoint_ = text.substr(begin, end - begin);
          return;
        }
      }
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = 0;
        error_ = "objectd exited before it was ready:\n" + text;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    error_ = "objectd did not log its ready line:\n" + log();
  }

  std::string log_path_;
  pid_t pid_ = 0;
  std::string endpoint_;
  std::string error_;
};

// A signed request to objectd's admin API (root key); returns status and body.
std::pair<int, std::string> admin_post(const std::string& endpoint, const std::string& target,
                                       const std::string& body) {
  const std::string authority = endpoint.substr(std::string_view("http://").size());
  const size_t colon = authority.rfind(':');
  sigv4::SignOptions so;
  so.now_unix_s = std::chrono::duration_cast<std::chrono::seconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  so.payload_hash = sigv4::sha256_hex(body);
  sigv4::HeaderList extra = {{"content-type", "application/json"},
                             {"content-length", std::to_string(body.size())}};
  auto headers = sigv4::sign_request("POST", authority, target,
                                     {k_root_access_key, k_root_secret_key}, so, extra);
  CAIRN_ASSERT(headers);
  asio::io_context ioc;
  tcp::socket s(ioc);
  s.connect(tcp::endpoint(asio::ip::make_address(authority.substr(0, colon)),
                          static_cast<uint16_t>(std::stoi(authority.substr(colon + 1)))));
  http::request<http::string_body> req{http::verb::post, target, 11};
  for (const auto& [name, value] : headers.value()) req.set(name, value);
  req.body() = body;
  http::write(s, req);
  beast::flat_buffer buffer;
  http::response<http::string_body> res;
  http::read(s, buffer, res);
  return {static_cast<int>(res.result_int()), res.body()};
}

// The string value of "name" in a flat JSON object (no escapes expected).
std::string json_field(const std::string& json, const std::string& name) {
  const std::string needle = "\"" + name + "\":\"";
  const size_t at = json.find(needle);
  if (at == std::string::npos) return {};
  const size_t begin = at + needle.size();
  return json.substr(begin, json.find('"', begin) - begin);
}

class S3BlobStoreObjectd : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    server_ = new Objectd(dir_->path());
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    ASSERT_TRUE(server_->error().empty()) << server_->error();
    ASSERT_FALSE(server_->endpoint().empty());
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "objectd log:\n" << server_->log() << "\n";
  }

  static S3Config config(const std::string& bucket, const std::string& prefix = "") {
    S3Config c;
    c.endpoint = server_->endpoint();
    c.access_key = k_root_access_key;
    c.secret_key = k_root_secret_key;
    c.bucket = bucket;
    c.prefix = prefix;
    return c;
  }
  static std::unique_ptr<S3BlobStore> store(const S3Config& c) { return open_store(c); }

  static test::TempDir* dir_;
  static Objectd* server_;
};

test::TempDir* S3BlobStoreObjectd::dir_ = nullptr;
Objectd* S3BlobStoreObjectd::server_ = nullptr;

std::string pattern(size_t size, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(size, '\0');
  for (size_t i = 0; i < size; i += 8) {
    const uint64_t v = rng();
    std::memcpy(out.data() + i, &v, std::min<size_t>(8, size - i));
  }
  return out;
}

TEST_F(S3BlobStoreObjectd, CreateBucketTwiceIsOk) {
  auto s = store(config("create-twice"));
  ASSERT_TRUE(s->create_bucket());
  ASSERT_TRUE(s->create_bucket());
  auto other_prefix = store(config("create-twice", "some/prefix"));
  EXPECT_TRUE(other_prefix->create_bucket());
  // Outside us-east-1 the request carries a LocationConstraint.
  S3Config eu = config("create-in-eu");
  eu.region = "eu-west-1";
  auto in_eu = store(eu);
  ASSERT_TRUE(in_eu->create_bucket());
  ASSERT_TRUE(in_eu->create_bucket());
  ASSERT_TRUE(in_eu->put("k", "v"));
  EXPECT_EQ(in_eu->get("k").value(), "v");
}

TEST_F(S3BlobStoreObjectd, BucketOfAnotherTenantIsAlreadyExists) {
  auto tenant = admin_post(server_->endpoint(), "/_cairn/admin/tenants", R"({"name":"other"})");
  ASSERT_EQ(tenant.first, 201) << tenant.second;
  auto key = admin_post(server_->endpoint(), "/_cairn/admin/tenants/other/keys", "");
  ASSERT_EQ(key.first, 201) << key.second;
  S3Config theirs = config("taken-bucket");
  theirs.access_key = json_field(key.second, "accessKeyId");
  theirs.secret_key = json_field(key.second, "secretKey");
  ASSERT_FALSE(theirs.access_key.empty()) << key.second;
  ASSERT_TRUE(store(theirs)->create_bucket());
  auto st = store(config("taken-bucket"))->create_bucket();
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error(), Errc::already_exists);
  // Their objects are not ours to read.
  ASSERT_TRUE(store(theirs)->put("secret", "x"));
  auto r = store(config("taken-bucket"))->get("secret");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), Errc::permission_denied);
}

TEST_F(S3BlobStoreObjectd, RoundTripsOfAllSizesAndOddKeys) {
  auto s = store(config("round-trips", "backups/vol 1"));
  ASSERT_TRUE(s->create_bucket());
  struct Case {
    std::string key;
    std::string data;
  };
  const std::vector<Case> cases = {
      {"empty", ""},
      {"chunks/ab/abcdef", "small body"},
      {"big/20MiB", pattern(20u << 20, 1)},
      {"with space/and more spaces ", pattern(1000, 2)},
      {"unicodé/日本語/ключ", pattern(333, 3)},
      {"plus+sign+key", pattern(4097, 4)},
      {"odd &<>\"'=?#%20~!*()[]{}$,;:@", pattern(17, 5)},
      {"dots/./and/../segments", pattern(9, 6)},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.key);
    ASSERT_TRUE(s->put(c.key, c.data));
    auto h = s->head(c.key);
    ASSERT_TRUE(h) << h.error().message();
    ASSERT_TRUE(h.value().has_value());
    EXPECT_EQ(h.value()->key, c.key);
    EXPECT_EQ(h.value()->size, c.data.size());
    EXPECT_GT(h.value()->last_modified_unix_s, 1'600'000'000);
    auto g = s->get(c.key);
    ASSERT_TRUE(g) << g.error().message();
    EXPECT_TRUE(g.value() == c.data) << "body differs, " << g.value().size() << " bytes";
  }
  // Overwrite replaces.
  ASSERT_TRUE(s->put("chunks/ab/abcdef", "second version"));
  EXPECT_EQ(s->get("chunks/ab/abcdef").value(), "second version");
  // Everything is listed under its own key.
  std::vector<std::string> listed;
  ASSERT_TRUE(s->list("", [&](const BlobInfo& b) {
    listed.push_back(b.key);
    return true;
  }));
  std::vector<std::string> expected;
  for (const Case& c : cases) expected.push_back(c.key);
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(listed, expected);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.key);
    ASSERT_TRUE(s->remove(c.key));
    auto h = s->head(c.key);
    ASSERT_TRUE(h);
    EXPECT_FALSE(h.value().has_value());
    auto g = s->get(c.key);
    ASSERT_FALSE(g);
    EXPECT_EQ(g.error(), Errc::not_found);
    EXPECT_TRUE(s->remove(c.key));  // absent: not an error
  }
  EXPECT_EQ(s->put("", "x").error(), Errc::invalid_argument);
}

TEST_F(S3BlobStoreObjectd, AbsentKeysAndBucketsAreNotFound) {
  auto s = store(config("absent-keys"));
  ASSERT_TRUE(s->create_bucket());
  auto g = s->get("never/written");
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error(), Errc::not_found);
  auto h = s->head("never/written");
  ASSERT_TRUE(h);
  EXPECT_FALSE(h.value().has_value());
  EXPECT_TRUE(s->remove("never/written"));

  auto none = store(config("no-such-bucket"));
  auto g2 = none->get("k");
  ASSERT_FALSE(g2);
  EXPECT_EQ(g2.error(), Errc::not_found);
  auto p2 = none->put("k", "v");
  ASSERT_FALSE(p2);
  EXPECT_EQ(p2.error(), Errc::not_found);
  auto l2 = none->list("", [](const BlobInfo&) { return true; });
  ASSERT_FALSE(l2);
  EXPECT_EQ(l2.error(), Errc::not_found);
}

TEST_F(S3BlobStoreObjectd, ListWithPrefixAcrossPages) {
  S3Config c = config("listing", "repo/a");
  c.list_max_keys = 7;  // objectd honors max-keys: 23 keys make 4 pages
  auto s = store(c);
  ASSERT_TRUE(s->create_bucket());
  std::map<std::string, size_t> expected;
  for (int i = 0; i < 19; ++i) {
    char key[32];
    std::snprintf(key, sizeof key, "chunks/%02x/%04d", i * 13 % 256, i);
    expected[key] = static_cast<size_t>(i) * 3;
  }
  for (const char* odd : {"chunks/ sp ace", "chunks/a+b", "chunks/x&y<z>", "chunks/ü"}) {
    expected[odd] = std::strlen(odd);
  }
  for (const auto& [key, size] : expected) ASSERT_TRUE(s->put(key, std::string(size, 'k'))) << key;
  for (const char* other : {"index/1", "index/2", "chunkz"}) ASSERT_TRUE(s->put(other, "i"));
  // Neighbours that share the bucket: a sibling prefix and one that extends ours.
  ASSERT_TRUE(store(config("listing", "repo/a2"))->put("chunks/zz", "n"));
  ASSERT_TRUE(store(config("listing", "repo/b"))->put("chunks/00", "n"));

  std::vector<BlobInfo> seen;
  ASSERT_TRUE(s->list("chunks/", [&](const BlobInfo& b) {
    seen.push_back(b);
    return true;
  }));
  ASSERT_EQ(seen.size(), expected.size());
  size_t i = 0;
  for (const auto& [key, size] : expected) {
    EXPECT_EQ(seen[i].key, key);
    EXPECT_EQ(seen[i].size, size) << key;
    EXPECT_GT(seen[i].last_modified_unix_s, 1'600'000'000) << key;
    ++i;
  }

  int calls = 0;
  ASSERT_TRUE(s->list("chunks/", [&](const BlobInfo&) { return ++calls < 10; }));
  EXPECT_EQ(calls, 10);

  size_t all = 0;
  ASSERT_TRUE(s->list("", [&](const BlobInfo&) {
    ++all;
    return true;
  }));
  EXPECT_EQ(all, expected.size() + 3);

  // The parent prefix sees our keys with "a/" in front; the sibling sees only its own.
  S3Config parent = config("listing", "repo");
  parent.list_max_keys = 5;
  std::vector<std::string> parent_keys;
  ASSERT_TRUE(store(parent)->list("a/chunks/", [&](const BlobInfo& b) {
    parent_keys.push_back(b.key);
    return true;
  }));
  ASSERT_EQ(parent_keys.size(), expected.size());
  EXPECT_EQ(parent_keys.front(), "a/" + expected.begin()->first);
  std::vector<std::string> sibling;
  ASSERT_TRUE(store(config("listing", "repo/b"))->list("", [&](const BlobInfo& b) {
    sibling.push_back(b.key);
    return true;
  }));
  EXPECT_EQ(sibling, std::vector<std::string>{"chunks/00"});
}

TEST_F(S3BlobStoreObjectd, ConcurrentPutsFromEightThreads) {
  S3Config c = config("concurrent", "p");
  c.max_connections = 4;  // fewer connections than threads: requests wait for one
  auto s = store(c);
  ASSERT_TRUE(s->create_bucket());
  constexpr int k_threads = 8, k_per_thread = 12;
  auto key_of = [](int t, int i) {
    char key[32];
    std::snprintf(key, sizeof key, "t%d/%d", t, i);
    return std::string(key);
  };
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < k_threads; ++t) {
    threads.emplace_back([&, key_of, t] {
      for (int i = 0; i < k_per_thread; ++i) {
        const std::string key = key_of(t, i);
        if (!s->put(key, pattern(1000 + 4099 * i, t * 100 + i))) failures++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  for (int t = 0; t < k_threads; ++t) {
    for (int i = 0; i < k_per_thread; ++i) {
      const std::string key = key_of(t, i);
      auto g = s->get(key);
      ASSERT_TRUE(g) << key;
      EXPECT_TRUE(g.value() == pattern(1000 + 4099 * i, t * 100 + i)) << key;
    }
  }
  size_t n = 0;
  ASSERT_TRUE(s->list("", [&](const BlobInfo&) {
    ++n;
    return true;
  }));
  EXPECT_EQ(n, static_cast<size_t>(k_threads * k_per_thread));
}

TEST_F(S3BlobStoreObjectd, WrongSecretIsPermissionDenied) {
  auto good = store(config("wrong-secret"));
  ASSERT_TRUE(good->create_bucket());
  ASSERT_TRUE(good->put("k", "v"));
  S3Config c = config("wrong-secret");
  c.secret_key = "not-the-secret-key";
  auto s = store(c);
  EXPECT_EQ(s->create_bucket().error(), Errc::permission_denied);
  EXPECT_EQ(s->put("k", "v").error(), Errc::permission_denied);
  EXPECT_EQ(s->put("big", pattern(8u << 20, 7)).error(), Errc::permission_denied);
  EXPECT_EQ(s->get("k").error(), Errc::permission_denied);
  EXPECT_EQ(s->head("k").error(), Errc::permission_denied);
  EXPECT_EQ(s->remove("k").error(), Errc::permission_denied);
  EXPECT_EQ(s->list("", [](const BlobInfo&) { return true; }).error(), Errc::permission_denied);
  S3Config unknown = config("wrong-secret");
  unknown.access_key = "AKNOBODY";
  EXPECT_EQ(store(unknown)->get("k").error(), Errc::permission_denied);
}

}  // namespace
}  // namespace cairn::backup
