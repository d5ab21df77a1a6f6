// S3Server over an in-memory store, driven over real sockets by a small Beast client whose
// requests are signed with common/sigv4.h (the same verifier the daemon uses).
#include "objectd/s3_server.h"

#include <gtest/gtest.h>

#include <thread>

#include "common/checksums.h"
#include "common/metrics.h"
#include "mem_object_store.h"
#include "s3_test_client.h"

namespace cairn::objectd::testing {
namespace {

const sigv4::Credentials kRoot{"ROOTKEY", "rootsecret"};
const sigv4::Credentials kAlice{"AKALICE", "alicesecret"};
const sigv4::Credentials kBob{"AKBOB", "bobsecret"};

class S3ServerTest : public ::testing::Test {
 protected:
  void SetUp() override { start({}); }
  void TearDown() override {
    if (server_) server_->stop();
  }

  void start(S3Server::Options opts) {
    ASSERT_TRUE(store_.ensure_root_key(kRoot.access_key_id, kRoot.secret_access_key));
    store_.add_key({kAlice.access_key_id, kAlice.secret_access_key, "alice", false});
    store_.add_key({kBob.access_key_id, kBob.secret_access_key, "bob", false});
    opts.threads = 2;
    opts.store_threads = 4;
    opts.metrics = &metrics_;
    server_ = std::make_unique<S3Server>(store_, opts);
    ASSERT_TRUE(server_->start("127.0.0.1", 0));
    client_ = std::make_unique<TestClient>(server_->port());
  }

  Resp call(const std::string& method, const std::string& target, const std::string& body = "",
            std::vector<std::pair<std::string, std::string>> headers = {},
            std::optional<sigv4::Credentials> creds = kAlice) {
    Req r;
    r.method = method;
    r.target = target;
    r.body = body;
    r.headers = std::move(headers);
    r.creds = creds;
    return client_->send(r);
  }

  void make_bucket(const std::string& b, std::optional<sigv4::Credentials> c = kAlice) {
    Resp r = call("PUT", "/" + b, "", {}, c);
    ASSERT_EQ(r.status, 200u) << r.body;
  }
  void put(const std::string& b, const std::string& k, const std::string& data,
           std::vector<std::pair<std::string, std::string>> headers = {}) {
    Resp r = call("PUT", "/" + b + "/" + k, data, std::move(headers));
    ASSERT_EQ(r.status, 200u) << r.body;
  }

  MetricsRegistry metrics_;
  MemObjectStore store_;
  std::unique_ptr<S3Server> server_;
  std::unique_ptr<TestClient> client_;
};

TEST_F(S3ServerTest, PutGetHeadDeleteRoundTrip) {
  make_bucket("photos");
  Resp p = call("PUT", "/photos/a/b%20c.txt", "hello world",
                {{"content-type", "text/plain"}, {"x-amz-meta-color", "blue"},
                 {"cache-control", "max-age=60"}});
  ASSERT_EQ(p.status, 200u) << p.body;
  EXPECT_EQ(p.header("etag"), "\"" + md5_hex("hello world") + "\"");
  EXPECT_FALSE(p.header("x-amz-request-id").empty());
  ASSERT_TRUE(store_.object("photos", "a/b c.txt"));

  Resp g = call("GET", "/photos/a/b%20c.txt");
  EXPECT_EQ(g.status, 200u);
  EXPECT_EQ(g.body, "hello world");
  EXPECT_EQ(g.header("content-type"), "text/plain");
  EXPECT_EQ(g.header("x-amz-meta-color"), "blue");
  EXPECT_EQ(g.header("cache-control"), "max-age=60");
  EXPECT_EQ(g.header("etag"), p.header("etag"));
  EXPECT_NE(g.header("last-modified").find(" GMT"), std::string::npos);

  Resp h = call("HEAD", "/photos/a/b%20c.txt");
  EXPECT_EQ(h.status, 200u);
  EXPECT_EQ(h.header("content-length"), "11");
  EXPECT_TRUE(h.body.empty());

  EXPECT_EQ(call("DELETE", "/photos/a/b%20c.txt").status, 204u);
  Resp gone = call("GET", "/photos/a/b%20c.txt");
  EXPECT_EQ(gone.status, 404u);
  EXPECT_EQ(gone.xml("Code"), "NoSuchKey");
  Resp head_gone = call("HEAD", "/photos/a/b%20c.txt");
  EXPECT_EQ(head_gone.status, 404u);
  EXPECT_TRUE(head_gone.body.empty());
  EXPECT_EQ(call("DELETE", "/photos/never-there").status, 204u);
}

TEST_F(S3ServerTest, EmptyObjectsAndIgnoredParameters) {
  make_bucket("empty");
  put("empty", "zero", "");
  Resp g = call("GET", "/empty/zero?x-id=GetObject");
  EXPECT_EQ(g.status, 200u);
  EXPECT_EQ(g.header("content-length"), "0");
  EXPECT_EQ(g.header("etag"), "\"" + md5_hex("") + "\"");
  EXPECT_EQ(call("GET", "/empty/zero", "", {{"range", "bytes=0-"}}).status, 416u);
  // The connection stays usable after an empty streamed body.
  asio::io_context ioc;
  asio::ip::tcp::socket s(ioc);
  client_->connect(s);
  Req r;
  r.target = "/empty/zero";
  r.creds = kAlice;
  EXPECT_EQ(client_->exchange(s, r).status, 200u);
  EXPECT_EQ(client_->exchange(s, r).status, 200u);
}

TEST_F(S3ServerTest, VirtualHostAndPathStyleAddressTheSameObject) {
  make_bucket("vhost");
  Req r;
  r.method = "PUT";
  r.target = "/dir/key";
  r.body = "via vhost";
  r.creds = kAlice;
  r.host = "vhost.localhost:" + std::to_string(server_->port());
  ASSERT_EQ(client_->send(r).status, 200u);
  EXPECT_EQ(call("GET", "/vhost/dir/key").body, "via vhost");
  r.method = "GET";
  r.body.clear();
  r.host = "vhost.s3.localhost";
  EXPECT_EQ(client_->send(r).body, "via vhost");
  // The domain itself (and s3.domain) is path-style.
  r.host = "s3.localhost";
  r.target = "/vhost/dir/key";
  EXPECT_EQ(client_->send(r).body, "via vhost");
}

TEST_F(S3ServerTest, BucketErrorsHaveS3CodesAndStatuses) {
  make_bucket("dup");
  Resp again = call("PUT", "/dup");
  EXPECT_EQ(again.status, 409u);
  EXPECT_EQ(again.xml("Code"), "BucketAlreadyOwnedByYou");
  Resp taken = call("PUT", "/dup", "", {}, kBob);
  EXPECT_EQ(taken.status, 409u);
  EXPECT_EQ(taken.xml("Code"), "BucketAlreadyExists");
  Resp bad = call("PUT", "/Bad_Name");
  EXPECT_EQ(bad.status, 400u);
  EXPECT_EQ(bad.xml("Code"), "InvalidBucketName");
  Resp missing = call("GET", "/nosuch");
  EXPECT_EQ(missing.status, 404u);
  EXPECT_EQ(missing.xml("Code"), "NoSuchBucket");
  EXPECT_EQ(missing.xml("Resource"), "/nosuch");
  EXPECT_FALSE(missing.xml("RequestId").empty());
  EXPECT_EQ(missing.xml("RequestId"), missing.header("x-amz-request-id"));
  put("dup", "k", "x");
  Resp not_empty = call("DELETE", "/dup");
  EXPECT_EQ(not_empty.status, 409u);
  EXPECT_EQ(not_empty.xml("Code"), "BucketNotEmpty");
  EXPECT_EQ(call("DELETE", "/dup/k").status, 204u);
  EXPECT_EQ(call("DELETE", "/dup").status, 204u);
  EXPECT_EQ(call("HEAD", "/dup").status, 404u);
}

TEST_F(S3ServerTest, CreateBucketConfigurationAndLocation) {
  Resp r = call("PUT", "/located",
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                "<LocationConstraint>us-east-1</LocationConstraint></CreateBucketConfiguration>");
  EXPECT_EQ(r.status, 200u) << r.body;
  Resp bad = call("PUT", "/located2", "<oops");
  EXPECT_EQ(bad.status, 400u);
  EXPECT_EQ(bad.xml("Code"), "MalformedXML");
  Resp loc = call("GET", "/located?location");
  EXPECT_EQ(loc.status, 200u);
  EXPECT_NE(loc.body.find("<LocationConstraint"), std::string::npos);
  Resp head = call("HEAD", "/located");
  EXPECT_EQ(head.status, 200u);
  EXPECT_EQ(head.header("x-amz-bucket-region"), "us-east-1");
  Resp ver = call("GET", "/located?versioning");
  EXPECT_EQ(ver.status, 200u);
  EXPECT_NE(ver.body.find("VersioningConfiguration"), std::string::npos);
  for (const char* sub : {"?policy", "?tagging", "?lifecycle", "?cors"}) {
    Resp ni = call("GET", std::string("/located") + sub);
    EXPECT_EQ(ni.status, 501u) << sub;
    EXPECT_EQ(ni.xml("Code"), "NotImplemented");
  }
}

TEST_F(S3ServerTest, ListBucketsShowsOnlyTheTenantsBuckets) {
  make_bucket("alice-1");
  make_bucket("alice-2");
  make_bucket("bob-1", kBob);
  Resp a = call("GET", "/");
  ASSERT_EQ(a.status, 200u);
  EXPECT_NE(a.body.find("<ListAllMyBucketsResult"), std::string::npos);
  EXPECT_EQ(a.count("<Bucket><Name>"), 2u);
  EXPECT_EQ(a.body.find("bob-1"), std::string::npos);
  EXPECT_EQ(a.xml("ID"), "alice");
  Resp anon = call("GET", "/", "", {}, std::nullopt);
  EXPECT_EQ(anon.status, 403u);
}

TEST_F(S3ServerTest, TenantsCannotTouchEachOthersBuckets) {
  make_bucket("private-a");
  put("private-a", "secret", "alice's");
  for (auto [method, target] : std::vector<std::pair<std::string, std::string>>{
           {"GET", "/private-a/secret"},
           {"HEAD", "/private-a/secret"},
           {"PUT", "/private-a/intruder"},
           {"DELETE", "/private-a/secret"},
           {"GET", "/private-a"},
           {"GET", "/private-a?list-type=2"},
           {"DELETE", "/private-a"},
           {"POST", "/private-a/x?uploads"}}) {
    Resp r = call(method, target, "", {}, kBob);
    EXPECT_EQ(r.status, 403u) << method << " " << target;
    if (method != "HEAD") {
      EXPECT_EQ(r.xml("Code"), "AccessDenied") << method << " " << target;
    }
  }
  // Copy from another tenant's private bucket is denied too.
  make_bucket("bobs", kBob);
  Resp copy = call("PUT", "/bobs/stolen", "", {{"x-amz-copy-source", "/private-a/secret"}}, kBob);
  EXPECT_EQ(copy.status, 403u);
  EXPECT_EQ(store_.object("private-a", "secret")->data, "alice's");
}

TEST_F(S3ServerTest, AnonymousAccessOnlyToPublicBucketReads) {
  make_bucket("pub");
  put("pub", "file", "public data");
  Resp denied = call("GET", "/pub/file", "", {}, std::nullopt);
  EXPECT_EQ(denied.status, 403u);
  EXPECT_EQ(denied.xml("Code"), "AccessDenied");
  ASSERT_EQ(call("PUT", "/pub?acl", "", {{"x-amz-acl", "public-read"}}).status, 200u);
  EXPECT_EQ(call("GET", "/pub/file", "", {}, std::nullopt).body, "public data");
  EXPECT_EQ(call("HEAD", "/pub/file", "", {}, std::nullopt).status, 200u);
  Resp list = call("GET", "/pub?list-type=2", "", {}, std::nullopt);
  EXPECT_EQ(list.status, 200u);
  EXPECT_EQ(list.xml("Key"), "file");
  EXPECT_EQ(call("PUT", "/pub/evil", "x", {}, std::nullopt).status, 403u);
  EXPECT_EQ(call("DELETE", "/pub/file", "", {}, std::nullopt).status, 403u);
  EXPECT_EQ(call("GET", "/pub?acl", "", {}, std::nullopt).status, 403u);
  // Another tenant may read a public bucket but not write it.
  EXPECT_EQ(call("GET", "/pub/file", "", {}, kBob).status, 200u);
  EXPECT_EQ(call("PUT", "/pub/bob", "x", {}, kBob).status, 403u);
  Resp acl = call("GET", "/pub?acl");
  EXPECT_NE(acl.body.find("AllUsers"), std::string::npos);
  ASSERT_EQ(call("PUT", "/pub?acl", "", {{"x-amz-acl", "private"}}).status, 200u);
  EXPECT_EQ(call("GET", "/pub/file", "", {}, std::nullopt).status, 403u);
  // The same through an AccessControlPolicy document (s3cmd setacl --acl-public).
  std::string policy =
      "<AccessControlPolicy><Owner><ID>alice</ID></Owner><AccessControlList>"
      "<Grant><Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" "
      "xsi:type=\"CanonicalUser\"><ID>alice</ID></Grantee><Permission>FULL_CONTROL</Permission></Grant>"
      "<Grant><Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"Group\">"
      "<URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee>"
      "<Permission>READ</Permission></Grant></AccessControlList></AccessControlPolicy>";
  ASSERT_EQ(call("PUT", "/pub?acl", policy).status, 200u);
  EXPECT_EQ(call("GET", "/pub/file", "", {}, std::nullopt).status, 200u);
  std::string write_policy = policy;
  write_policy.replace(write_policy.rfind("READ"), 4, "WRITE");
  EXPECT_EQ(call("PUT", "/pub?acl", write_policy).status, 501u);
  EXPECT_EQ(call("PUT", "/pub?acl", "<AccessControlPolicy>").status, 400u);
  ASSERT_EQ(call("PUT", "/pub?acl", "", {{"x-amz-acl", "private"}}).status, 200u);
  // public-read at creation.
  ASSERT_EQ(call("PUT", "/pub2", "", {{"x-amz-acl", "public-read"}}).status, 200u);
  EXPECT_TRUE(store_.get_bucket("pub2").value().public_read);
  EXPECT_EQ(call("PUT", "/pub3", "", {{"x-amz-acl", "public-read-write"}}).status, 501u);
}

TEST_F(S3ServerTest, AuthenticationFailures) {
  make_bucket("authb");
  Resp unknown = call("GET", "/authb", "", {}, sigv4::Credentials{"NOPE", "x"});
  EXPECT_EQ(unknown.status, 403u);
  EXPECT_EQ(unknown.xml("Code"), "InvalidAccessKeyId");
  Resp wrong = call("GET", "/authb", "", {}, sigv4::Credentials{kAlice.access_key_id, "wrong"});
  EXPECT_EQ(wrong.status, 403u);
  EXPECT_EQ(wrong.xml("Code"), "SignatureDoesNotMatch");
  // A body that does not match the signed x-amz-content-sha256.
  Req r;
  r.method = "PUT";
  r.target = "/authb/k";
  r.body = "actual body";
  r.payload_hash = sigv4::sha256_hex("another body");
  r.creds = kAlice;
  Resp mismatch = client_->send(r);
  EXPECT_EQ(mismatch.status, 400u);
  EXPECT_EQ(mismatch.xml("Code"), "XAmzContentSHA256Mismatch");
  EXPECT_FALSE(store_.object("authb", "k"));
}

TEST_F(S3ServerTest, PresignedUrls) {
  make_bucket("pre");
  put("pre", "obj", "presigned!");
  std::string url = client_->presign_url("GET", "/pre/obj", kAlice, 300, unix_now());
  Resp ok = call("GET", url, "", {}, std::nullopt);
  EXPECT_EQ(ok.status, 200u) << ok.body;
  EXPECT_EQ(ok.body, "presigned!");
  std::string old = client_->presign_url("GET", "/pre/obj", kAlice, 60, unix_now() - 3600);
  Resp expired = call("GET", old, "", {}, std::nullopt);
  EXPECT_EQ(expired.status, 403u);
  EXPECT_EQ(expired.xml("Code"), "AccessDenied");
  EXPECT_EQ(expired.xml("Message"), "Request has expired");
  std::string tampered = url;
  tampered[tampered.size() - 1] = tampered.back() == '0' ? '1' : '0';
  EXPECT_EQ(call("GET", tampered, "", {}, std::nullopt).xml("Code"), "SignatureDoesNotMatch");
}

TEST_F(S3ServerTest, ListObjectsV1AndV2WithDelimiterAndPagination) {
  make_bucket("list");
  for (const char* k : {"a/1", "a/2", "b/1", "c", "d", "e"}) put("list", k, k);
  Resp v1 = call("GET", "/list?delimiter=/&max-keys=3");
  ASSERT_EQ(v1.status, 200u);
  EXPECT_EQ(v1.xml("IsTruncated"), "true");
  EXPECT_EQ(v1.xml("NextMarker"), "c");
  EXPECT_EQ(v1.count("<CommonPrefixes><Prefix>"), 2u);
  EXPECT_EQ(v1.xml("Key"), "c");
  EXPECT_EQ(v1.xml("MaxKeys"), "3");
  EXPECT_EQ(v1.xml("Delimiter"), "/");
  EXPECT_NE(v1.body.find("<Owner><ID>alice</ID>"), std::string::npos);
  Resp v1b = call("GET", "/list?delimiter=/&max-keys=3&marker=c");
  EXPECT_EQ(v1b.xml("IsTruncated"), "false");
  EXPECT_EQ(v1b.count("<Contents>"), 2u);
  EXPECT_EQ(v1b.xml("NextMarker"), "<none>");
  // Without a delimiter v1 has no NextMarker, as S3.
  Resp v1c = call("GET", "/list?max-keys=2");
  EXPECT_EQ(v1c.xml("IsTruncated"), "true");
  EXPECT_EQ(v1c.xml("NextMarker"), "<none>");

  // v2: walk all pages with continuation tokens.
  std::vector<std::string> seen;
  std::string token;
  for (int page = 0; page < 10; ++page) {
    std::string target = "/list?list-type=2&max-keys=2";
    if (!token.empty()) target += "&continuation-token=" + sigv4::uri_encode(token, true);
    Resp r = call("GET", target);
    ASSERT_EQ(r.status, 200u) << r.body;
    EXPECT_EQ(r.xml("KeyCount"), std::to_string(r.count("<Contents>")));
    EXPECT_EQ(r.body.find("<Owner>"), std::string::npos);  // no fetch-owner
    for (size_t p = r.body.find("<Key>"); p != std::string::npos; p = r.body.find("<Key>", p + 1))
      seen.push_back(r.body.substr(p + 5, r.body.find("</Key>", p) - p - 5));
    if (r.xml("IsTruncated") == "false") break;
    token = r.xml("NextContinuationToken");
    ASSERT_NE(token, "<none>");
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"a/1", "a/2", "b/1", "c", "d", "e"}));
  Resp sa = call("GET", "/list?list-type=2&start-after=c&fetch-owner=true&prefix=");
  EXPECT_EQ(sa.count("<Contents>"), 2u);
  EXPECT_EQ(sa.xml("StartAfter"), "c");
  EXPECT_NE(sa.body.find("<Owner>"), std::string::npos);
  Resp pre = call("GET", "/list?list-type=2&prefix=a/&delimiter=/");
  EXPECT_EQ(pre.count("<Contents>"), 2u);
  EXPECT_EQ(pre.xml("Prefix"), "a/");
  Resp badtoken = call("GET", "/list?list-type=2&continuation-token=%21%21");
  EXPECT_EQ(badtoken.status, 400u);
  Resp badmax = call("GET", "/list?max-keys=abc");
  EXPECT_EQ(badmax.xml("Code"), "InvalidArgument");
}

TEST_F(S3ServerTest, ListEncodingTypeUrl) {
  make_bucket("enc");
  put("enc", "dir%20x/a%2Bb%26c.txt", "1");  // key "dir x/a+b&c.txt"
  Resp r = call("GET", "/enc?list-type=2&encoding-type=url&delimiter=%2F&prefix=dir%20x%2F");
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_EQ(r.xml("Key"), "dir%20x/a%2Bb%26c.txt");
  EXPECT_EQ(r.xml("Prefix"), "dir%20x/");
  EXPECT_EQ(r.xml("Delimiter"), "/");
  EXPECT_EQ(r.xml("EncodingType"), "url");
  Resp plain = call("GET", "/enc?list-type=2");
  EXPECT_EQ(plain.xml("Key"), "dir x/a+b&amp;c.txt");
  EXPECT_EQ(call("GET", "/enc?encoding-type=base64").status, 400u);
}

TEST_F(S3ServerTest, RangeRequests) {
  make_bucket("ranges");
  put("ranges", "digits", "0123456789");
  auto get = [&](const std::string& range) {
    return call("GET", "/ranges/digits", "", {{"range", range}});
  };
  Resp a = get("bytes=2-5");
  EXPECT_EQ(a.status, 206u);
  EXPECT_EQ(a.body, "2345");
  EXPECT_EQ(a.header("content-range"), "bytes 2-5/10");
  EXPECT_EQ(get("bytes=7-").body, "789");
  EXPECT_EQ(get("bytes=-3").body, "789");
  EXPECT_EQ(get("bytes=-30").body, "0123456789");
  EXPECT_EQ(get("bytes=8-100").header("content-range"), "bytes 8-9/10");
  Resp bad = get("bytes=10-");
  EXPECT_EQ(bad.status, 416u);
  EXPECT_EQ(bad.xml("Code"), "InvalidRange");
  EXPECT_EQ(bad.header("content-range"), "bytes */10");
  Resp ignored = get("bytes=5-2");
  EXPECT_EQ(ignored.status, 200u);
  EXPECT_EQ(ignored.body.size(), 10u);
  Resp head = call("HEAD", "/ranges/digits", "", {{"range", "bytes=0-3"}});
  EXPECT_EQ(head.status, 206u);
  EXPECT_EQ(head.header("content-length"), "4");
}

TEST_F(S3ServerTest, ConditionalRequests) {
  make_bucket("cond");
  put("cond", "k", "v1");
  std::string etag = call("HEAD", "/cond/k").header("etag");
  auto get = [&](const std::string& h, const std::string& v, const std::string& method = "GET") {
    return call(method, "/cond/k", "", {{h, v}});
  };
  EXPECT_EQ(get("if-match", etag).status, 200u);
  Resp pf = get("if-match", "\"nope\"");
  EXPECT_EQ(pf.status, 412u);
  EXPECT_EQ(pf.xml("Code"), "PreconditionFailed");
  Resp nm = get("if-none-match", etag);
  EXPECT_EQ(nm.status, 304u);
  EXPECT_TRUE(nm.body.empty());
  EXPECT_EQ(nm.header("etag"), etag);
  EXPECT_EQ(get("if-none-match", "*").status, 304u);
  EXPECT_EQ(get("if-none-match", etag, "HEAD").status, 304u);
  EXPECT_EQ(get("if-modified-since", "Sun, 06 Nov 2050 08:49:37 GMT").status, 304u);
  EXPECT_EQ(get("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT").status, 200u);
  EXPECT_EQ(get("if-unmodified-since", "Sun, 06 Nov 1994 08:49:37 GMT").status, 412u);
  // If-Match true wins over If-Unmodified-Since false; If-None-Match false over IMS.
  Resp both = call("GET", "/cond/k", "",
                   {{"if-match", etag}, {"if-unmodified-since", "Sun, 06 Nov 1994 08:49:37 GMT"}});
  EXPECT_EQ(both.status, 200u);
  Resp both2 = call("GET", "/cond/k", "",
                    {{"if-none-match", "\"other\""},
                     {"if-modified-since", "Sun, 06 Nov 2050 08:49:37 GMT"}});
  EXPECT_EQ(both2.status, 200u);
}

TEST_F(S3ServerTest, ContentMd5AndChecksums) {
  make_bucket("sums");
  Resp bad = call("PUT", "/sums/k", "data", {{"content-md5", md5_base64("other")}});
  EXPECT_EQ(bad.status, 400u);
  EXPECT_EQ(bad.xml("Code"), "BadDigest");
  EXPECT_FALSE(store_.object("sums", "k"));
  Resp invalid = call("PUT", "/sums/k", "data", {{"content-md5", "notbase64!"}});
  EXPECT_EQ(invalid.xml("Code"), "InvalidDigest");
  EXPECT_EQ(call("PUT", "/sums/k", "data", {{"content-md5", md5_base64("data")}}).status, 200u);

  auto crc = make_checksum(ChecksumAlgorithm::crc32c);
  crc->update("data");
  std::string good = crc->finish_base64();
  Resp c_bad = call("PUT", "/sums/c", "data", {{"x-amz-checksum-crc32c", "AAAAAA=="}});
  EXPECT_EQ(c_bad.status, 400u);
  EXPECT_EQ(c_bad.xml("Code"), "BadDigest");
  Resp c_invalid = call("PUT", "/sums/c", "data", {{"x-amz-checksum-crc32c", "AAAA"}});
  EXPECT_EQ(c_invalid.xml("Code"), "InvalidRequest");
  Resp c_ok = call("PUT", "/sums/c", "data",
                   {{"x-amz-checksum-crc32c", good}, {"x-amz-sdk-checksum-algorithm", "CRC32C"}});
  ASSERT_EQ(c_ok.status, 200u) << c_ok.body;
  EXPECT_EQ(c_ok.header("x-amz-checksum-crc32c"), good);
  EXPECT_EQ(store_.object("sums", "c")->meta.checksums.at("crc32c"), good);
  // Returned only when asked.
  EXPECT_EQ(call("GET", "/sums/c").header("x-amz-checksum-crc32c"), "");
  EXPECT_EQ(call("GET", "/sums/c", "", {{"x-amz-checksum-mode", "ENABLED"}})
                .header("x-amz-checksum-crc32c"),
            good);
  // Algorithm only: computed and stored.
  Resp sha = call("PUT", "/sums/s", "data", {{"x-amz-sdk-checksum-algorithm", "SHA256"}});
  EXPECT_FALSE(sha.header("x-amz-checksum-sha256").empty());
}

TEST_F(S3ServerTest, AwsChunkedSignedUpload) {
  make_bucket("chunked");
  std::string part1(64 * 1024, 'a'), part2(1000, 'b');
  Req r;
  r.method = "PUT";
  r.target = "/chunked/streamed";
  r.creds = kAlice;
  r.payload_hash = std::string(sigv4::k_streaming_signed);
  r.add_content_length = false;
  r.now_unix_s = unix_now();
  uint64_t encoded = sigv4::AwsChunkedEncoder::encoded_length(
      sigv4::PayloadMode::streaming_signed, part1.size() + part2.size(), part1.size(), std::nullopt);
  r.headers = {{"content-encoding", "aws-chunked"},
               {"x-amz-decoded-content-length", std::to_string(part1.size() + part2.size())},
               {"content-length", std::to_string(encoded)}};
  client_->prepare(r);
  sigv4::AwsChunkedEncoder enc(sigv4::PayloadMode::streaming_signed, client_->last_signing());
  // send() signs again at the same time: the same seed signature.
  r.body = enc.encode_chunk(part1);
  r.body += enc.encode_chunk(part2);
  r.body += enc.finish();
  ASSERT_EQ(r.body.size(), encoded);
  Resp p = client_->send(r);
  ASSERT_EQ(p.status, 200u) << p.body;
  auto obj = store_.object("chunked", "streamed");
  ASSERT_TRUE(obj);
  EXPECT_EQ(obj->data, part1 + part2);
  EXPECT_TRUE(obj->meta.headers.count("content-encoding") == 0);

  // A tampered chunk fails its signature and leaves nothing.
  Req t = r;
  t.target = "/chunked/tampered";
  client_->prepare(t);
  sigv4::AwsChunkedEncoder enc2(sigv4::PayloadMode::streaming_signed, client_->last_signing());
  t.body = enc2.encode_chunk(part1);
  t.body += enc2.encode_chunk(part2);
  t.body += enc2.finish();
  t.body[t.body.size() / 2] ^= 1;
  Resp bad = client_->send(t);
  EXPECT_EQ(bad.status, 403u);
  EXPECT_FALSE(store_.object("chunked", "tampered"));
}

TEST_F(S3ServerTest, AwsChunkedUnsignedTrailerWithChecksum) {
  make_bucket("trailer");
  std::string data(100 * 1024, 'z');
  Req r;
  r.method = "PUT";
  r.target = "/trailer/obj";
  r.creds = kAlice;
  r.payload_hash = std::string(sigv4::k_streaming_unsigned_trailer);
  r.add_content_length = false;
  sigv4::AwsChunkedEncoder enc(sigv4::PayloadMode::streaming_unsigned_trailer, {},
                               ChecksumAlgorithm::crc32);
  std::string body = enc.encode_chunk(data.substr(0, 65536));
  body += enc.encode_chunk(data.substr(65536));
  body += enc.finish();
  r.headers = {{"content-encoding", "aws-chunked"},
               {"x-amz-decoded-content-length", std::to_string(data.size())},
               {"x-amz-trailer", "x-amz-checksum-crc32"},
               {"x-amz-sdk-checksum-algorithm", "CRC32"},
               {"content-length", std::to_string(body.size())}};
  r.body = body;
  Resp p = client_->send(r);
  ASSERT_EQ(p.status, 200u) << p.body;
  auto crc = make_checksum(ChecksumAlgorithm::crc32);
  crc->update(data);
  std::string want = crc->finish_base64();
  EXPECT_EQ(p.header("x-amz-checksum-crc32"), want);
  EXPECT_EQ(store_.object("trailer", "obj")->data, data);
  EXPECT_EQ(store_.object("trailer", "obj")->meta.checksums.at("crc32"), want);

  // A wrong trailing checksum is BadDigest.
  std::string wrong = body;
  size_t pos = wrong.find("x-amz-checksum-crc32:");
  ASSERT_NE(pos, std::string::npos);
  wrong.replace(pos + 21, 8, "AAAAAA==");
  r.body = wrong;
  r.target = "/trailer/wrong";
  Resp bad = client_->send(r);
  EXPECT_EQ(bad.status, 400u);
  EXPECT_EQ(bad.xml("Code"), "BadDigest");
  EXPECT_FALSE(store_.object("trailer", "wrong"));
}

TEST_F(S3ServerTest, MultipartUploadFlow) {
  make_bucket("multipart");
  Resp init = call("POST", "/multipart/big?uploads", "", {{"content-type", "video/mp4"}, {"x-amz-meta-a", "1"}});
  ASSERT_EQ(init.status, 200u) << init.body;
  std::string id = init.xml("UploadId");
  EXPECT_EQ(init.xml("Key"), "big");
  std::string p1(kPartSizeMinBytes, 'x'), p2 = "tail";
  Resp u1 = call("PUT", "/multipart/big?partNumber=1&uploadId=" + id, p1);
  Resp u2 = call("PUT", "/multipart/big?partNumber=2&uploadId=" + id, p2);
  ASSERT_EQ(u1.status, 200u) << u1.body;
  ASSERT_EQ(u2.status, 200u);
  EXPECT_EQ(u1.header("etag"), "\"" + md5_hex(p1) + "\"");
  EXPECT_EQ(call("PUT", "/multipart/big?partNumber=0&uploadId=" + id, "x").xml("Code"), "InvalidArgument");
  EXPECT_EQ(call("PUT", "/multipart/big?partNumber=1&uploadId=nope", "x").xml("Code"), "NoSuchUpload");

  Resp parts = call("GET", "/multipart/big?uploadId=" + id);
  EXPECT_EQ(parts.count("<Part>"), 2u);
  EXPECT_EQ(parts.xml("Size"), std::to_string(p1.size()));
  Resp parts_page = call("GET", "/multipart/big?uploadId=" + id + "&max-parts=1");
  EXPECT_EQ(parts_page.xml("IsTruncated"), "true");
  EXPECT_EQ(parts_page.xml("NextPartNumberMarker"), "1");
  Resp uploads = call("GET", "/multipart?uploads");
  EXPECT_EQ(uploads.xml("UploadId"), id);

  auto complete_body = [&](std::vector<std::pair<int, std::string>> ps) {
    std::string b = "<CompleteMultipartUpload>";
    for (auto& [n, e] : ps)
      b += "<Part><PartNumber>" + std::to_string(n) + "</PartNumber><ETag>" + e + "</ETag></Part>";
    return b + "</CompleteMultipartUpload>";
  };
  Resp order = call("POST", "/multipart/big?uploadId=" + id,
                    complete_body({{2, u2.header("etag")}, {1, u1.header("etag")}}));
  EXPECT_EQ(order.status, 400u);
  EXPECT_EQ(order.xml("Code"), "InvalidPartOrder");
  Resp badpart = call("POST", "/multipart/big?uploadId=" + id,
                      complete_body({{1, u1.header("etag")}, {2, "\"0000\""}}));
  EXPECT_EQ(badpart.xml("Code"), "InvalidPart");
  Resp malformed = call("POST", "/multipart/big?uploadId=" + id, "<CompleteMultipartUpload><Part>");
  EXPECT_EQ(malformed.xml("Code"), "MalformedXML");
  Resp done = call("POST", "/multipart/big?uploadId=" + id,
                   complete_body({{1, u1.header("etag")}, {2, u2.header("etag")}}));
  ASSERT_EQ(done.status, 200u) << done.body;
  EXPECT_NE(done.xml("ETag").find("-2"), std::string::npos);
  Resp g = call("GET", "/multipart/big");
  EXPECT_EQ(g.body.size(), p1.size() + p2.size());
  EXPECT_EQ(g.header("content-type"), "video/mp4");
  EXPECT_EQ(g.header("x-amz-meta-a"), "1");

  // Small non-last part: EntityTooSmall; abort then NoSuchUpload.
  std::string id2 = call("POST", "/multipart/small?uploads").xml("UploadId");
  Resp s1 = call("PUT", "/multipart/small?partNumber=1&uploadId=" + id2, "tiny");
  Resp s2 = call("PUT", "/multipart/small?partNumber=2&uploadId=" + id2, "tiny");
  Resp small = call("POST", "/multipart/small?uploadId=" + id2,
                    complete_body({{1, s1.header("etag")}, {2, s2.header("etag")}}));
  EXPECT_EQ(small.xml("Code"), "EntityTooSmall");
  EXPECT_EQ(call("DELETE", "/multipart/small?uploadId=" + id2).status, 204u);
  EXPECT_EQ(call("GET", "/multipart/small?uploadId=" + id2).xml("Code"), "NoSuchUpload");
  EXPECT_EQ(store_.uploads(), 0u);
}

TEST_F(S3ServerTest, UploadPartCopy) {
  make_bucket("upc");
  put("upc", "src", "0123456789");
  std::string id = call("POST", "/upc/dst?uploads").xml("UploadId");
  Resp c = call("PUT", "/upc/dst?partNumber=1&uploadId=" + id, "",
                {{"x-amz-copy-source", "upc/src"}, {"x-amz-copy-source-range", "bytes=2-4"}});
  ASSERT_EQ(c.status, 200u) << c.body;
  EXPECT_EQ(c.xml("ETag"), "&quot;" + md5_hex("234") + "&quot;");
  Resp bad = call("PUT", "/upc/dst?partNumber=2&uploadId=" + id, "",
                  {{"x-amz-copy-source", "upc/src"}, {"x-amz-copy-source-range", "bytes=5-50"}});
  EXPECT_EQ(bad.status, 400u);  // S3 rejects copy ranges past the end of the source
  EXPECT_EQ(bad.xml("Code"), "InvalidArgument");
  Resp done = call("POST", "/upc/dst?uploadId=" + id,
                   "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>" +
                       c.xml("ETag") + "</ETag></Part></CompleteMultipartUpload>");
  ASSERT_EQ(done.status, 200u) << done.body;
  EXPECT_EQ(call("GET", "/upc/dst").body, "234");
}

TEST_F(S3ServerTest, CopyObjectDirectives) {
  make_bucket("copies");
  put("copies", "src%20key", "payload", {{"content-type", "text/x-a"}, {"x-amz-meta-m", "orig"}});
  Resp c = call("PUT", "/copies/copy1", "", {{"x-amz-copy-source", "/copies/src%20key"}});
  ASSERT_EQ(c.status, 200u) << c.body;
  EXPECT_EQ(c.xml("ETag"), "&quot;" + md5_hex("payload") + "&quot;");
  Resp g = call("GET", "/copies/copy1");
  EXPECT_EQ(g.body, "payload");
  EXPECT_EQ(g.header("content-type"), "text/x-a");
  EXPECT_EQ(g.header("x-amz-meta-m"), "orig");
  Resp r = call("PUT", "/copies/copy2", "",
                {{"x-amz-copy-source", "copies/src%20key"}, {"x-amz-metadata-directive", "REPLACE"},
                 {"content-type", "text/x-b"}, {"x-amz-meta-m", "new"}});
  ASSERT_EQ(r.status, 200u);
  Resp g2 = call("HEAD", "/copies/copy2");
  EXPECT_EQ(g2.header("content-type"), "text/x-b");
  EXPECT_EQ(g2.header("x-amz-meta-m"), "new");
  Resp self = call("PUT", "/copies/src%20key", "", {{"x-amz-copy-source", "copies/src%20key"}});
  EXPECT_EQ(self.status, 400u);
  EXPECT_EQ(self.xml("Code"), "InvalidRequest");
  Resp self_replace = call("PUT", "/copies/src%20key", "",
                           {{"x-amz-copy-source", "copies/src%20key"},
                            {"x-amz-metadata-directive", "REPLACE"}, {"x-amz-meta-m", "again"}});
  EXPECT_EQ(self_replace.status, 200u);
  EXPECT_EQ(store_.object("copies", "src key")->meta.user_metadata.at("m"), "again");
  EXPECT_EQ(call("PUT", "/copies/x", "", {{"x-amz-copy-source", "copies/missing"}}).xml("Code"),
            "NoSuchKey");
  EXPECT_EQ(call("PUT", "/copies/x", "", {{"x-amz-copy-source", "nobucketkey"}}).xml("Code"),
            "InvalidArgument");
  Resp cond = call("PUT", "/copies/x", "",
                   {{"x-amz-copy-source", "copies/copy1"}, {"x-amz-copy-source-if-match", "\"zz\""}});
  EXPECT_EQ(cond.status, 412u);
}

TEST_F(S3ServerTest, DeleteObjects) {
  make_bucket("del");
  for (const char* k : {"a", "b", "c"}) put("del", k, k);
  std::string body =
      "<Delete><Object><Key>a</Key></Object><Object><Key>b</Key></Object>"
      "<Object><Key>zz</Key></Object></Delete>";
  Resp r = call("POST", "/del?delete", body, {{"content-md5", md5_base64(body)}});
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_EQ(r.count("<Deleted>"), 3u);
  EXPECT_FALSE(store_.object("del", "a"));
  EXPECT_TRUE(store_.object("del", "c"));
  std::string quiet = "<Delete><Quiet>true</Quiet><Object><Key>c</Key></Object></Delete>";
  Resp q = call("POST", "/del?delete", quiet);
  EXPECT_EQ(q.status, 200u);
  EXPECT_EQ(q.count("<Deleted>"), 0u);
  EXPECT_FALSE(store_.object("del", "c"));
  EXPECT_EQ(call("POST", "/del?delete", body, {{"content-md5", md5_base64("x")}}).xml("Code"),
            "BadDigest");
  for (const std::string& bad :
       {std::string("<Delete>"), std::string("<Delete></Delete>"), std::string("<Other/>"),
        std::string("<Delete><Object><VersionId>1</VersionId></Object></Delete>"),
        std::string(1000, '<'), std::string("\xff\xfe\x00garbage", 10)}) {
    Resp m = call("POST", "/del?delete", bad);
    EXPECT_EQ(m.status, 400u);
    EXPECT_EQ(m.xml("Code"), "MalformedXML");
  }
  std::string many = "<Delete>";
  for (int i = 0; i < 1001; ++i) many += "<Object><Key>k" + std::to_string(i) + "</Key></Object>";
  many += "</Delete>";
  EXPECT_EQ(call("POST", "/del?delete", many).xml("Code"), "MalformedXML");
  std::string deep(200, ' ');
  deep = "<Delete>";
  for (int i = 0; i < 10000; ++i) deep += "<a>";
  EXPECT_EQ(call("POST", "/del?delete", deep).xml("Code"), "MalformedXML");
}

TEST_F(S3ServerTest, KeyTooLongAndUnsupported) {
  make_bucket("limits");
  Resp r = call("PUT", "/limits/" + std::string(1025, 'k'), "x");
  EXPECT_EQ(r.status, 400u);
  EXPECT_EQ(r.xml("Code"), "KeyTooLongError");
  EXPECT_EQ(call("PUT", "/limits/k", "x", {{"x-amz-server-side-encryption", "AES256"}}).status, 501u);
  EXPECT_EQ(call("GET", "/limits/k?tagging").status, 501u);
  EXPECT_EQ(call("PATCH", "/limits/k").status, 405u);
}

TEST_F(S3ServerTest, AdminApiNeedsRootKey) {
  Resp denied = call("POST", "/_cairn/admin/tenants", "{\"name\":\"carol\"}", {}, kAlice);
  EXPECT_EQ(denied.status, 403u);
  EXPECT_NE(denied.body.find("AccessDenied"), std::string::npos);
  EXPECT_EQ(call("GET", "/_cairn/admin/tenants", "", {}, std::nullopt).status, 403u);
  Resp created = call("POST", "/_cairn/admin/tenants", "{\"name\":\"carol\"}", {}, kRoot);
  EXPECT_EQ(created.status, 201u) << created.body;
  EXPECT_EQ(call("POST", "/_cairn/admin/tenants", "{\"name\":\"carol\"}", {}, kRoot).status, 409u);
  EXPECT_EQ(call("POST", "/_cairn/admin/tenants", "{\"nam\":1}", {}, kRoot).status, 400u);
  Resp list = call("GET", "/_cairn/admin/tenants", "", {}, kRoot);
  EXPECT_NE(list.body.find("\"carol\""), std::string::npos);
  Resp key = call("POST", "/_cairn/admin/tenants/carol/keys", "", {}, kRoot);
  ASSERT_EQ(key.status, 201u) << key.body;
  EXPECT_NE(key.body.find("\"accessKeyId\""), std::string::npos);
  EXPECT_NE(key.body.find("\"secretKey\""), std::string::npos);
  EXPECT_NE(key.body.find("\"tenant\":\"carol\""), std::string::npos);
  Resp heal = call("POST", "/_cairn/admin/heal", "", {}, kRoot);
  EXPECT_EQ(heal.status, 202u);
  Resp hs = call("GET", "/_cairn/admin/heal", "", {}, kRoot);
  EXPECT_NE(hs.body.find("\"running\":true"), std::string::npos);
  EXPECT_NE(hs.body.find("\"objectsTotal\":\"7\""), std::string::npos);
}

TEST_F(S3ServerTest, HealthAndMetricsWithoutAuth) {
  Resp h = call("GET", "/healthz", "", {}, std::nullopt);
  EXPECT_EQ(h.status, 200u);
  make_bucket("m-one");
  Resp m = call("GET", "/metrics", "", {}, std::nullopt);
  EXPECT_EQ(m.status, 200u);
  EXPECT_NE(m.body.find("cairn_s3_requests_total{op=\"CreateBucket\",code=\"200\"} 1"),
            std::string::npos)
      << m.body;
  EXPECT_NE(m.body.find("cairn_objectd_drives_online 6"), std::string::npos);
}

TEST_F(S3ServerTest, KeepAliveAndExpectContinue) {
  make_bucket("keepalive");
  asio::io_context ioc;
  asio::ip::tcp::socket s(ioc);
  client_->connect(s);
  for (int i = 0; i < 3; ++i) {
    Req r;
    r.method = "PUT";
    r.target = "/keepalive/k" + std::to_string(i);
    r.body = "v" + std::to_string(i);
    r.creds = kAlice;
    EXPECT_EQ(client_->exchange(s, r).status, 200u);
  }
  // Expect: 100-continue: the server answers 100 before the body.
  Req r;
  r.method = "PUT";
  r.target = "/keepalive/expect";
  r.body = "after continue";
  r.creds = kAlice;
  r.headers = {{"expect", "100-continue"}};
  std::string raw = client_->raw_request(r);
  std::string head = raw.substr(0, raw.size() - r.body.size());
  asio::write(s, asio::buffer(head));
  char buf[64];
  size_t n = s.read_some(asio::buffer(buf));
  EXPECT_EQ(std::string(buf, n).rfind("HTTP/1.1 100", 0), 0u);
  asio::write(s, asio::buffer(r.body));
  EXPECT_EQ(TestClient::read_response(s, false).status, 200u);
  EXPECT_EQ(store_.object("keepalive", "expect")->data, "after continue");
  // Refused before the body: the client never has to send it.
  Req denied = r;
  denied.creds = kBob;
  raw = client_->raw_request(denied);
  asio::write(s, asio::buffer(raw.substr(0, raw.size() - r.body.size())));
  Resp d = TestClient::read_response(s, false);
  EXPECT_EQ(d.status, 403u);
  EXPECT_EQ(d.header("connection"), "close");
}

TEST_F(S3ServerTest, OversizedHeaderIs431) {
  Req r;
  r.target = "/x";
  r.headers = {{"x-big", std::string(20000, 'a')}};
  Resp resp = client_->send(r);
  EXPECT_EQ(resp.status, 431u);
  EXPECT_EQ(resp.xml("Code"), "RequestHeaderSectionTooLarge");
}

TEST_F(S3ServerTest, TruncatedBodyLeavesNothing) {
  make_bucket("trunc");
  Req r;
  r.method = "PUT";
  r.target = "/trunc/k";
  r.body = std::string(1000, 'q');
  r.creds = kAlice;
  r.payload_hash = std::string(sigv4::k_unsigned_payload);
  std::string raw = client_->raw_request(r);
  {
    asio::io_context ioc;
    asio::ip::tcp::socket s(ioc);
    client_->connect(s);
    asio::write(s, asio::buffer(raw.substr(0, raw.size() - 500)));
    s.shutdown(asio::ip::tcp::socket::shutdown_send);
    beast::error_code ec;
    char buf[1024];
    while (!ec) s.read_some(asio::buffer(buf), ec);
  }
  for (int i = 0; i < 100 && server_->connections() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_FALSE(store_.object("trunc", "k"));
}

TEST(S3ServerTimeouts, SlowClientIsDisconnected) {
  MemObjectStore store;
  S3Server::Options opts;
  opts.threads = 1;
  opts.idle_timeout = std::chrono::milliseconds(300);
  MetricsRegistry metrics;
  opts.metrics = &metrics;
  S3Server server(store, opts);
  ASSERT_TRUE(server.start("127.0.0.1", 0));
  asio::io_context ioc;
  asio::ip::tcp::socket s(ioc);
  TestClient(server.port()).connect(s);
  asio::write(s, asio::buffer(std::string("GET / HTTP/1.1\r\nHost: x\r\n")));  // never ends
  auto start = std::chrono::steady_clock::now();
  beast::error_code ec;
  char buf[256];
  while (!ec) s.read_some(asio::buffer(buf), ec);
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_LT(took, std::chrono::seconds(5));
  EXPECT_GE(took, std::chrono::milliseconds(250));
  server.stop();
}

TEST(S3ServerLimits, ConnectionsOverTheLimitGetSlowDown) {
  MemObjectStore store;
  S3Server::Options opts;
  opts.threads = 1;
  opts.connections_max = 1;
  MetricsRegistry metrics;
  opts.metrics = &metrics;
  S3Server server(store, opts);
  ASSERT_TRUE(server.start("127.0.0.1", 0));
  asio::io_context ioc;
  asio::ip::tcp::socket first(ioc), second(ioc);
  TestClient c(server.port());
  c.connect(first);
  for (int i = 0; i < 100 && server.connections() == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  c.connect(second);
  Resp r = TestClient::read_response(second, false);
  EXPECT_EQ(r.status, 503u);
  EXPECT_EQ(r.xml("Code"), "SlowDown");
  server.stop();
}

}  // namespace
}  // namespace cairn::objectd::testing
