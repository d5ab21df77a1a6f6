// ObjectStore over temp directories: objects, ranges, listing, buckets, keys, multipart,
// tenants and access keys. Small shard blocks (4 KiB, stripe 16 KiB) make multi-stripe objects
// cheap. Random data is seeded; the seed is printed and CAIRN_SEED replays it.
#include "temp_dir.h"
#include "objectd/object_store.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <stdlib.h>

#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/assert.h"
#include "store_impl.h"

namespace cairn::objectd::store_test {
namespace {

using cairn::test::TempDir;

namespace fs = std::filesystem;

PartInfo part(uint32_t number, std::string etag) {
  PartInfo p;
  p.part_number = number;
  p.etag = std::move(etag);
  return p;
}

uint64_t test_seed() {
  static const uint64_t seed = [] {
    const char* env = getenv("CAIRN_SEED");
    uint64_t s = env != nullptr ? strtoull(env, nullptr, 10) : std::random_device()();
    printf("store_test seed: %llu (replay with CAIRN_SEED=%llu)\n",
           static_cast<unsigned long long>(s), static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

std::string md5_hex(const std::string& data) {
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), d, &n, EVP_md5(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < n; ++i) {
    out.push_back(hex[d[i] >> 4]);
    out.push_back(hex[d[i] & 15]);
  }
  return out;
}

std::string random_bytes(size_t n, std::mt19937_64& rng) {
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

size_t count_files(const std::string& dir) {
  size_t n = 0;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return 0;
  for (auto& e : fs::recursive_directory_iterator(dir, ec))
    if (e.is_regular_file()) ++n;
  return n;
}

// The fixture carries the class name so tests read ObjectStore.<Behaviour>.
class ObjectStore : public ::testing::Test {
 protected:
  objectd::ObjectStore::Options options() {
    objectd::ObjectStore::Options o;
    o.data_dir = dir_.path() + "/data";
    o.shard_block_bytes = 4096;
    o.scrub_period_hours = 0;
    o.drive_check_interval_ms = 100;
    return o;
  }
  void open(objectd::ObjectStore::Options o) {
    store_.reset();
    auto s = objectd::ObjectStore::open(o);
    ASSERT_TRUE(s) << s.error().message();
    store_ = std::move(s.value());
  }
  void SetUp() override {
    open(options());
    ASSERT_TRUE(store_->create_tenant("acme"));
    ASSERT_TRUE(store_->create_bucket("acme", "bkt"));
  }
  engine::StoreImpl& impl() { return dynamic_cast<engine::StoreImpl&>(*store_); }

  Result<ObjectMeta> put(const std::string& bucket, const std::string& key, const std::string& data,
                         ObjectMeta meta = {}, size_t chunk = 777) {
    CAIRN_TRY(w, store_->put_object(bucket, key));
    for (size_t off = 0; off < data.size(); off += chunk) {
      CAIRN_TRY(w->write(data.data() + off, std::min(chunk, data.size() - off)));
    }
    meta.size_bytes = data.size();
    return w->commit(meta);
  }
  Result<std::string> get(const std::string& bucket, const std::string& key, uint64_t offset = 0,
                          uint64_t length = UINT64_MAX, size_t chunk = 1000) {
    CAIRN_TRY(r, store_->get_object(bucket, key, offset, length));
    std::string out, buf(chunk, '\0');
    for (int guard = 0; guard < 10'000'000; ++guard) {
      CAIRN_TRY(n, r->read(buf.data(), buf.size()));
      if (n == 0) break;
      out.append(buf.data(), n);
    }
    return out;
  }
  size_t object_files() {
    size_t n = 0;
    for (int i = 0; i < 6; ++i) n += count_files(options().data_dir + "/drive" + std::to_string(i) + "/objects");
    return n;
  }
  size_t tmp_files() {
    size_t n = 0;
    for (int i = 0; i < 6; ++i) n += count_files(options().data_dir + "/drive" + std::to_string(i) + "/tmp");
    return n;
  }

  TempDir dir_;
  std::unique_ptr<objectd::ObjectStore> store_;
};

TEST_F(ObjectStore, PutGetHeadDelete) {
  ObjectMeta meta;
  meta.content_type = "text/plain";
  meta.user_metadata["color"] = "blue";
  meta.checksums["crc32c"] = "yZRlqg==";
  meta.headers["cache-control"] = "no-cache";
  auto put_meta = put("bkt", "hello.txt", "hello", meta);
  ASSERT_TRUE(put_meta) << put_meta.error().message();
  EXPECT_EQ(put_meta.value().etag, "5d41402abc4b2a76b9719d911017c592");
  EXPECT_EQ(put_meta.value().bucket, "bkt");
  EXPECT_EQ(put_meta.value().key, "hello.txt");

  auto head = store_->head_object("bkt", "hello.txt");
  ASSERT_TRUE(head);
  EXPECT_EQ(head.value().size_bytes, 5u);
  EXPECT_EQ(head.value().etag, "5d41402abc4b2a76b9719d911017c592");
  EXPECT_EQ(head.value().content_type, "text/plain");
  EXPECT_EQ(head.value().user_metadata.at("color"), "blue");
  EXPECT_EQ(head.value().checksums.at("crc32c"), "yZRlqg==");
  EXPECT_EQ(head.value().headers.at("cache-control"), "no-cache");
  EXPECT_EQ(head.value().parts, 0u);
  EXPECT_GT(head.value().mtime_unix_ms, 0);

  auto data = get("bkt", "hello.txt");
  ASSERT_TRUE(data);
  EXPECT_EQ(data.value(), "hello");
  EXPECT_EQ(object_files(), 6u);  // one shard file per drive

  ASSERT_TRUE(store_->delete_object("bkt", "hello.txt"));
  EXPECT_EQ(store_->head_object("bkt", "hello.txt").error(), ObjErrc::no_such_key);
  EXPECT_EQ(store_->get_object("bkt", "hello.txt").error(), ObjErrc::no_such_key);
  EXPECT_TRUE(store_->delete_object("bkt", "hello.txt"));  // S3: deleting a missing key is fine
  EXPECT_EQ(store_->delete_object("nobucket", "x").error(), ObjErrc::no_such_bucket);
  EXPECT_EQ(store_->put_object("nobucket", "x").error(), ObjErrc::no_such_bucket);
  EXPECT_EQ(object_files(), 0u);
}

TEST_F(ObjectStore, ZeroByteObject) {
  auto m = put("bkt", "empty", "");
  ASSERT_TRUE(m);
  EXPECT_EQ(m.value().etag, "d41d8cd98f00b204e9800998ecf8427e");
  EXPECT_EQ(m.value().size_bytes, 0u);
  auto data = get("bkt", "empty");
  ASSERT_TRUE(data);
  EXPECT_EQ(data.value(), "");
  auto r = store_->get_object("bkt", "empty", 0, 10);
  ASSERT_TRUE(r);
  EXPECT_EQ(r.value()->meta().size_bytes, 0u);
  char c;
  EXPECT_EQ(r.value()->read(&c, 1).value(), 0u);
}

TEST_F(ObjectStore, ManyStripesOddSizes) {
  std::mt19937_64 rng(test_seed());
  const size_t stripe = 4 * 4096;
  for (size_t size : {size_t{1}, size_t{3}, size_t{4095}, size_t{4097}, stripe - 1, stripe,
                      stripe + 1, 5 * stripe + 12345, size_t{200001}}) {
    SCOPED_TRACE(size);
    std::string data = random_bytes(size, rng);
    std::string key = "obj-" + std::to_string(size);
    auto m = put("bkt", key, data, {}, 1 + rng() % 50000);
    ASSERT_TRUE(m) << m.error().message();
    EXPECT_EQ(m.value().etag, md5_hex(data));
    auto back = get("bkt", key, 0, UINT64_MAX, 1 + rng() % 30000);
    ASSERT_TRUE(back) << back.error().message();
    EXPECT_TRUE(back.value() == data);
  }
}

TEST_F(ObjectStore, Ranges) {
  std::mt19937_64 rng(test_seed() + 1);
  std::string data = random_bytes(50000, rng);
  ASSERT_TRUE(put("bkt", "r", data));
  struct Case {
    uint64_t off, len;
  };
  for (Case c : {Case{0, 1}, Case{4095, 2}, Case{16383, 3}, Case{16384, 16384}, Case{49999, 1},
                 Case{100, UINT64_MAX}, Case{40000, 100000}, Case{0, 50000}, Case{12345, 0}}) {
    SCOPED_TRACE(std::to_string(c.off) + "+" + std::to_string(c.len));
    auto got = get("bkt", "r", c.off, c.len, 333);
    ASSERT_TRUE(got);
    EXPECT_TRUE(got.value() == data.substr(c.off, c.len));
  }
  // Random ranges.
  for (int i = 0; i < 50; ++i) {
    uint64_t off = rng() % data.size();
    uint64_t len = rng() % 20000;
    auto got = get("bkt", "r", off, len, 1 + rng() % 5000);
    ASSERT_TRUE(got);
    ASSERT_TRUE(got.value() == data.substr(off, len)) << off << "+" << len;
  }
  EXPECT_EQ(store_->get_object("bkt", "r", 50000, 1).error(), ObjErrc::invalid_range);
  EXPECT_EQ(store_->get_object("bkt", "r", 1u << 30, 1).error(), ObjErrc::invalid_range);
}

TEST_F(ObjectStore, OverwriteReplaces) {
  std::mt19937_64 rng(test_seed() + 2);
  std::string v1 = random_bytes(70000, rng), v2 = random_bytes(1000, rng);
  ASSERT_TRUE(put("bkt", "k", v1));
  ASSERT_TRUE(put("bkt", "k", v2));
  EXPECT_TRUE(get("bkt", "k").value() == v2);
  EXPECT_EQ(store_->head_object("bkt", "k").value().etag, md5_hex(v2));
  EXPECT_EQ(object_files(), 6u);  // the old version's shard files are gone
  auto list = store_->list_objects("bkt", {});
  ASSERT_TRUE(list);
  EXPECT_EQ(list.value().objects.size(), 1u);
}

TEST_F(ObjectStore, KeysWithDotsAndOddBytesStayInsideTheDataDir) {
  const std::vector<std::string> keys = {
      "../../escape", "../escape", "/abs/escape", "a//b", "./.", "..", ".",
      "sp ace\ttab\nnewline", std::string("\x01\x7f", 2), "\xc3\xbc\x6e\xc3\xaf", "%2e%2e/x",
      std::string(1024, 'k')};
  std::set<std::string> before;
  for (auto& e : fs::directory_iterator(dir_.path())) before.insert(e.path().filename());
  for (const auto& key : keys) {
    SCOPED_TRACE(key);
    ASSERT_TRUE(put("bkt", key, "data:" + key));
    auto got = get("bkt", key);
    ASSERT_TRUE(got);
    EXPECT_EQ(got.value(), "data:" + key);
  }
  std::set<std::string> after;
  for (auto& e : fs::directory_iterator(dir_.path())) after.insert(e.path().filename());
  EXPECT_EQ(before, after);
  EXPECT_FALSE(fs::exists("/abs/escape"));
  EXPECT_FALSE(fs::exists(dir_.path() + "/escape"));
  // Only ids, never keys, name files.
  for (auto& e : fs::recursive_directory_iterator(dir_.path()))
    EXPECT_EQ(e.path().filename().string().find("escape"), std::string::npos) << e.path();
  auto list = store_->list_objects("bkt", {});
  ASSERT_TRUE(list);
  EXPECT_EQ(list.value().objects.size(), keys.size());
  for (const auto& key : keys) ASSERT_TRUE(store_->delete_object("bkt", key));
  EXPECT_EQ(object_files(), 0u);
}

TEST_F(ObjectStore, KeyValidation) {
  for (const std::string& bad :
       {std::string(), std::string(1025, 'k'), std::string("a\0b", 3), std::string("\xff"),
        std::string("\xc0\x80"), std::string("\xed\xa0\x80"), std::string("\xe2\x82"),
        std::string("\xf4\x90\x80\x80")}) {
    EXPECT_EQ(store_->put_object("bkt", bad).error(), ObjErrc::invalid_object_name);
    EXPECT_EQ(store_->create_multipart("bkt", bad, {}).error(), ObjErrc::invalid_object_name);
  }
  EXPECT_TRUE(store_->put_object("bkt", std::string(1024, 'k')));
  EXPECT_TRUE(store_->put_object("bkt", "\xf0\x9f\x98\x80 emoji"));
}

TEST_F(ObjectStore, BucketRules) {
  for (const std::string& good : std::vector<std::string>{"abc", "my-bucket.1", "a.b-c", "0ab", std::string(63, 'a'),
                                 "1.2.3.4a", "10.0.0"}) {
    EXPECT_TRUE(store_->create_bucket("acme", good)) << good;
  }
  for (const std::string& bad : std::vector<std::string>{"ab", std::string(64, 'a'), "Abc", "-abc", "abc-", ".abc",
                                "a..b", "192.168.1.1", "a_b", "xn--abc", "a.-b", "a-.b",
                                "ab c", "bucket-s3alias", ""}) {
    EXPECT_EQ(store_->create_bucket("acme", bad).error(), ObjErrc::invalid_bucket_name) << bad;
  }
  EXPECT_EQ(store_->create_bucket("acme", "bkt").error(), ObjErrc::bucket_already_owned_by_you);
  EXPECT_EQ(store_->create_bucket("other", "bkt").error(), ObjErrc::bucket_already_exists);

  auto info = store_->get_bucket("bkt");
  ASSERT_TRUE(info);
  EXPECT_EQ(info.value().owner, "acme");
  EXPECT_FALSE(info.value().public_read);
  EXPECT_GT(info.value().created_unix_s, 0);
  ASSERT_TRUE(store_->set_bucket_public("bkt", true));
  EXPECT_TRUE(store_->get_bucket("bkt").value().public_read);
  EXPECT_EQ(store_->set_bucket_public("nope-bucket", true).error(), ObjErrc::no_such_bucket);

  ASSERT_TRUE(store_->create_tenant("other"));
  ASSERT_TRUE(store_->create_bucket("other", "theirs"));
  EXPECT_EQ(store_->list_buckets("other").size(), 1u);
  EXPECT_EQ(store_->list_buckets("acme").size(), 8u);
  auto all = store_->list_buckets("");
  EXPECT_EQ(all.size(), 9u);
  EXPECT_TRUE(std::is_sorted(all.begin(), all.end(),
                             [](auto& a, auto& b) { return a.name < b.name; }));

  ASSERT_TRUE(put("bkt", "x", "y"));
  EXPECT_EQ(store_->delete_bucket("bkt").error(), ObjErrc::bucket_not_empty);
  ASSERT_TRUE(store_->delete_object("bkt", "x"));
  auto upload = store_->create_multipart("bkt", "mp", {});
  ASSERT_TRUE(upload);
  ASSERT_TRUE(store_->delete_bucket("bkt"));  // in-progress uploads go with it
  EXPECT_EQ(store_->get_bucket("bkt").error(), ObjErrc::no_such_bucket);
  EXPECT_EQ(store_->delete_bucket("bkt").error(), ObjErrc::no_such_bucket);
  EXPECT_EQ(object_files(), 0u);
  // The name is free again.
  EXPECT_TRUE(store_->create_bucket("other", "bkt"));
}

std::vector<std::string> keys_of(const ListResult& r) {
  std::vector<std::string> out;
  for (const auto& o : r.objects) out.push_back(o.key);
  return out;
}

TEST_F(ObjectStore, ListPrefixDelimiterStartAfter) {
  const std::vector<std::string> keys = {"a/1", "a/2", "a/b/1", "a/b/2", "b", "c/x", "c/y", "d",
                                         "e/f/g"};
  for (const auto& k : keys) ASSERT_TRUE(put("bkt", k, k));
  ListRequest req;
  auto all = store_->list_objects("bkt", req);
  ASSERT_TRUE(all);
  EXPECT_EQ(keys_of(all.value()), keys);
  EXPECT_FALSE(all.value().is_truncated);
  EXPECT_EQ(all.value().objects[0].size_bytes, 3u);
  EXPECT_EQ(all.value().objects[0].etag, md5_hex("a/1"));

  req.delimiter = "/";
  auto top = store_->list_objects("bkt", req).value();
  EXPECT_EQ(keys_of(top), (std::vector<std::string>{"b", "d"}));
  EXPECT_EQ(top.common_prefixes, (std::vector<std::string>{"a/", "c/", "e/"}));

  req.prefix = "a/";
  auto a = store_->list_objects("bkt", req).value();
  EXPECT_EQ(keys_of(a), (std::vector<std::string>{"a/1", "a/2"}));
  EXPECT_EQ(a.common_prefixes, (std::vector<std::string>{"a/b/"}));

  req.prefix = "a/b";
  auto ab = store_->list_objects("bkt", req).value();
  EXPECT_TRUE(ab.objects.empty());
  EXPECT_EQ(ab.common_prefixes, (std::vector<std::string>{"a/b/"}));

  req = {};
  req.prefix = "c";
  EXPECT_EQ(keys_of(store_->list_objects("bkt", req).value()),
            (std::vector<std::string>{"c/x", "c/y"}));
  req = {};
  req.start_after = "a/b/1";
  EXPECT_EQ(keys_of(store_->list_objects("bkt", req).value()),
            (std::vector<std::string>{"a/b/2", "b", "c/x", "c/y", "d", "e/f/g"}));
  req.prefix = "zz";
  EXPECT_TRUE(store_->list_objects("bkt", req).value().objects.empty());

  // A delimiter other than "/".
  req = {};
  req.delimiter = "b";
  auto byb = store_->list_objects("bkt", req).value();
  EXPECT_EQ(byb.common_prefixes, (std::vector<std::string>{"a/b", "b"}));
  EXPECT_EQ(keys_of(byb), (std::vector<std::string>{"a/1", "a/2", "c/x", "c/y", "d", "e/f/g"}));

  EXPECT_EQ(store_->list_objects("nobucket", {}).error(), ObjErrc::no_such_bucket);
}

TEST_F(ObjectStore, ListPagesWithMaxKeysAndNextMarker) {
  std::vector<std::string> keys;
  for (int i = 0; i < 30; ++i) keys.push_back(std::string("k").append(std::to_string(100 + i)));
  for (int i = 0; i < 40; ++i) keys.push_back(std::string("dir/").append(std::to_string(100 + i)));
  for (int i = 0; i < 5; ++i) keys.push_back("other/" + std::to_string(i) + "/x");
  for (const auto& k : keys) ASSERT_TRUE(put("bkt", k, "v"));

  for (std::string delimiter : {"", "/"}) {
    for (uint32_t page : {1u, 2u, 7u, 1000u}) {
      SCOPED_TRACE("delimiter '" + delimiter + "' page " + std::to_string(page));
      ListRequest full;
      full.delimiter = delimiter;
      auto expect = store_->list_objects("bkt", full).value();
      std::vector<std::string> got_keys, got_prefixes;
      ListRequest req = full;
      req.max_keys = page;
      for (int round = 0; round < 200; ++round) {
        auto r = store_->list_objects("bkt", req);
        ASSERT_TRUE(r);
        EXPECT_LE(r.value().objects.size() + r.value().common_prefixes.size(), page);
        for (auto& o : r.value().objects) got_keys.push_back(o.key);
        for (auto& p : r.value().common_prefixes) got_prefixes.push_back(p);
        if (!r.value().is_truncated) break;
        ASSERT_FALSE(r.value().next_marker.empty());
        req.start_after = r.value().next_marker;
      }
      EXPECT_EQ(got_keys, keys_of(expect));
      EXPECT_EQ(got_prefixes, expect.common_prefixes);
      if (delimiter == "/") {
        EXPECT_EQ(expect.common_prefixes.size(), 2u);
      }
    }
  }
  ListRequest zero;
  zero.max_keys = 0;
  auto z = store_->list_objects("bkt", zero).value();
  EXPECT_TRUE(z.objects.empty());
  EXPECT_TRUE(z.is_truncated);
  // Exactly max_keys entries left: not truncated.
  ListRequest exact;
  exact.prefix = "k";
  exact.max_keys = 30;
  auto e = store_->list_objects("bkt", exact).value();
  EXPECT_EQ(e.objects.size(), 30u);
  EXPECT_FALSE(e.is_truncated);
  EXPECT_TRUE(e.next_marker.empty());
}

TEST_F(ObjectStore, CommitChecksSizeAndDigest) {
  auto w = store_->put_object("bkt", "k");
  ASSERT_TRUE(w);
  ASSERT_TRUE(w.value()->write("abc", 3));
  ObjectMeta m;
  m.size_bytes = 4;
  EXPECT_EQ(w.value()->commit(m).error(), ObjErrc::incomplete_body);
  w = store_->put_object("bkt", "k");
  ASSERT_TRUE(w.value()->write("abc", 3));
  m.size_bytes = 3;
  m.etag = "00000000000000000000000000000000";
  EXPECT_EQ(w.value()->commit(m).error(), ObjErrc::bad_digest);
  w = store_->put_object("bkt", "k");
  ASSERT_TRUE(w.value()->write("abc", 3));
  m.etag = "\"900150983CD24FB0D6963F7D28E17F72\"";  // quotes and case do not matter
  EXPECT_TRUE(w.value()->commit(m));
  EXPECT_EQ(store_->head_object("bkt", "k").value().etag, "900150983cd24fb0d6963f7d28e17f72");
  w.value().reset();
  EXPECT_EQ(object_files(), 6u);
  EXPECT_EQ(tmp_files(), 0u);
}

TEST_F(ObjectStore, UncommittedWriterLeavesNothing) {
  std::mt19937_64 rng(test_seed() + 3);
  {
    auto w = store_->put_object("bkt", "abandoned");
    ASSERT_TRUE(w);
    std::string data = random_bytes(100000, rng);
    ASSERT_TRUE(w.value()->write(data.data(), data.size()));
    EXPECT_GT(tmp_files(), 0u);
  }
  EXPECT_EQ(tmp_files(), 0u);
  EXPECT_EQ(object_files(), 0u);
  EXPECT_EQ(store_->head_object("bkt", "abandoned").error(), ObjErrc::no_such_key);
}

std::string upload_part(objectd::ObjectStore& store, const std::string& key, const std::string& upload,
                        uint32_t number, const std::string& data) {
  auto w = store.upload_part("bkt", key, upload, number);
  EXPECT_TRUE(w);
  if (!w) return "";
  for (size_t off = 0; off < data.size(); off += 100000)
    EXPECT_TRUE(w.value()->write(data.data() + off, std::min<size_t>(100000, data.size() - off)));
  ObjectMeta m;
  m.size_bytes = data.size();
  auto done = w.value()->commit(m);
  EXPECT_TRUE(done);
  return done ? done.value().etag : "";
}

TEST_F(ObjectStore, MultipartUploadComplete) {
  std::mt19937_64 rng(test_seed() + 4);
  ObjectMeta meta;
  meta.content_type = "video/mp4";
  meta.user_metadata["origin"] = "camera";
  auto upload = store_->create_multipart("bkt", "movie", meta);
  ASSERT_TRUE(upload);
  const std::string id = upload.value();

  std::string p1 = random_bytes(kPartSizeMinBytes, rng);
  std::string p2_old = random_bytes(kPartSizeMinBytes + 10, rng);
  std::string p2 = random_bytes(kPartSizeMinBytes + 4097, rng);
  std::string p3 = random_bytes(12345, rng);
  std::string e1 = upload_part(*store_, "movie", id, 1, p1);
  upload_part(*store_, "movie", id, 2, p2_old);
  std::string e2 = upload_part(*store_, "movie", id, 2, p2);  // replaces
  std::string e3 = upload_part(*store_, "movie", id, 3, p3);
  std::string e9 = upload_part(*store_, "movie", id, 9, "unused part");
  EXPECT_EQ(e2, md5_hex(p2));

  auto parts = store_->list_parts("bkt", "movie", id);
  ASSERT_TRUE(parts);
  ASSERT_EQ(parts.value().size(), 4u);
  EXPECT_EQ(parts.value()[1].part_number, 2u);
  EXPECT_EQ(parts.value()[1].etag, e2);
  EXPECT_EQ(parts.value()[1].size_bytes, p2.size());
  auto uploads = store_->list_uploads("bkt", "");
  ASSERT_TRUE(uploads);
  ASSERT_EQ(uploads.value().size(), 1u);
  EXPECT_EQ(uploads.value()[0].upload_id, id);
  EXPECT_EQ(uploads.value()[0].key, "movie");
  EXPECT_TRUE(store_->list_uploads("bkt", "zzz").value().empty());
  EXPECT_EQ(object_files(), 6u * 5);  // upload manifest + parts 1, 2, 3, 9

  std::vector<PartInfo> list = {part(1, e1), part(2, "\"" + e2 + "\""), part(3, e3)};
  auto done = store_->complete_multipart("bkt", "movie", id, list);
  ASSERT_TRUE(done) << done.error().message();
  std::string binary;
  for (const auto& e : {e1, e2, e3})
    for (size_t i = 0; i < e.size(); i += 2)
      binary.push_back(static_cast<char>(std::stoi(e.substr(i, 2), nullptr, 16)));
  EXPECT_EQ(done.value().etag, md5_hex(binary) + "-3");
  EXPECT_EQ(done.value().size_bytes, p1.size() + p2.size() + p3.size());
  EXPECT_EQ(done.value().parts, 3u);
  EXPECT_EQ(done.value().content_type, "video/mp4");
  EXPECT_EQ(done.value().user_metadata.at("origin"), "camera");

  auto head = store_->head_object("bkt", "movie");
  ASSERT_TRUE(head);
  EXPECT_EQ(head.value().etag, done.value().etag);
  EXPECT_EQ(head.value().parts, 3u);
  const std::string whole = p1 + p2 + p3;
  auto back = get("bkt", "movie", 0, UINT64_MAX, 65536);
  ASSERT_TRUE(back);
  EXPECT_TRUE(back.value() == whole);
  // Ranges across part boundaries.
  for (uint64_t off : {p1.size() - 10, p1.size() + p2.size() - 1, uint64_t{0}}) {
    auto r = get("bkt", "movie", off, 100);
    ASSERT_TRUE(r);
    EXPECT_TRUE(r.value() == whole.substr(off, 100));
  }
  // The upload is gone; the unused part and the old part 2 are deleted.
  EXPECT_TRUE(store_->list_uploads("bkt", "").value().empty());
  EXPECT_EQ(store_->list_parts("bkt", "movie", id).error(), ObjErrc::no_such_upload);
  EXPECT_EQ(object_files(), 6u * 4);  // final manifest + 3 parts
  // Overwriting or deleting the object removes its parts.
  ASSERT_TRUE(put("bkt", "movie", "small now"));
  EXPECT_EQ(object_files(), 6u);
  EXPECT_EQ(get("bkt", "movie").value(), "small now");
}

TEST_F(ObjectStore, MultipartErrors) {
  std::mt19937_64 rng(test_seed() + 5);
  auto upload = store_->create_multipart("bkt", "obj", {});
  ASSERT_TRUE(upload);
  const std::string id = upload.value();
  std::string small = random_bytes(1000, rng);
  std::string big = random_bytes(kPartSizeMinBytes, rng);
  std::string e1 = upload_part(*store_, "obj", id, 1, small);
  std::string e2 = upload_part(*store_, "obj", id, 2, big);
  std::string e3 = upload_part(*store_, "obj", id, 3, small);

  EXPECT_EQ(store_->complete_multipart("bkt", "obj", id, {part(1, e1), part(2, e2)}).error(),
            ObjErrc::entity_too_small);
  EXPECT_EQ(store_->complete_multipart("bkt", "obj", id, {part(2, e2), part(1, e1)}).error(),
            ObjErrc::invalid_part_order);
  EXPECT_EQ(store_->complete_multipart("bkt", "obj", id, {part(2, e2), part(2, e2)}).error(),
            ObjErrc::invalid_part_order);
  EXPECT_EQ(store_->complete_multipart("bkt", "obj", id, {part(2, e2), part(4, e3)}).error(),
            ObjErrc::invalid_part);
  EXPECT_EQ(store_->complete_multipart("bkt", "obj", id, {part(2, e2), part(3, e1 == e3 ? "00" : e1)})
                .error(),
            ObjErrc::invalid_part);
  EXPECT_EQ(store_->complete_multipart("bkt", "obj", id, {}).error(), ObjErrc::malformed_xml);
  EXPECT_EQ(store_->complete_multipart("bkt", "obj", "0123456789abcdef0123456789abcdef",
                                       {part(2, e2)})
                .error(),
            ObjErrc::no_such_upload);
  EXPECT_EQ(store_->complete_multipart("bkt", "other-key", id, {part(2, e2)}).error(),
            ObjErrc::no_such_upload);
  EXPECT_EQ(store_->upload_part("bkt", "obj", id, 0).error(), ObjErrc::invalid_argument);
  EXPECT_EQ(store_->upload_part("bkt", "obj", id, kPartNumberMax + 1).error(),
            ObjErrc::invalid_argument);
  EXPECT_EQ(store_->upload_part("bkt", "obj", "../../etc", 1).error(), ObjErrc::no_such_upload);
  EXPECT_EQ(store_->head_object("bkt", "obj").error(), ObjErrc::no_such_key);

  // Parts 2 and 3 complete (part 1 is dropped and deleted).
  auto done = store_->complete_multipart("bkt", "obj", id, {part(2, e2), part(3, e3)});
  ASSERT_TRUE(done);
  EXPECT_TRUE(get("bkt", "obj").value() == big + small);
  EXPECT_EQ(object_files(), 6u * 3);

  // Abort removes everything.
  auto second = store_->create_multipart("bkt", "obj2", {});
  ASSERT_TRUE(second);
  upload_part(*store_, "obj2", second.value(), 1, small);
  upload_part(*store_, "obj2", second.value(), 2, small);
  EXPECT_EQ(object_files(), 6u * 6);
  ASSERT_TRUE(store_->abort_multipart("bkt", "obj2", second.value()));
  EXPECT_EQ(object_files(), 6u * 3);
  EXPECT_EQ(store_->abort_multipart("bkt", "obj2", second.value()).error(),
            ObjErrc::no_such_upload);
  EXPECT_EQ(store_->list_parts("bkt", "obj2", second.value()).error(), ObjErrc::no_such_upload);
  EXPECT_EQ(store_->upload_part("bkt", "obj2", second.value(), 1).error(),
            ObjErrc::no_such_upload);
  EXPECT_EQ(tmp_files(), 0u);
}

TEST_F(ObjectStore, PartWriterOutlivingAbortIsRolledBack) {
  auto upload = store_->create_multipart("bkt", "obj", {});
  ASSERT_TRUE(upload);
  auto w = store_->upload_part("bkt", "obj", upload.value(), 1);
  ASSERT_TRUE(w);
  ASSERT_TRUE(w.value()->write("abc", 3));
  ASSERT_TRUE(store_->abort_multipart("bkt", "obj", upload.value()));
  ObjectMeta m;
  m.size_bytes = 3;
  EXPECT_EQ(w.value()->commit(m).error(), ObjErrc::no_such_upload);
  w.value().reset();
  EXPECT_EQ(object_files(), 0u);
  EXPECT_EQ(tmp_files(), 0u);
}

TEST_F(ObjectStore, TenantsAndKeys) {
  auto root = store_->ensure_root_key("", "");
  ASSERT_TRUE(root);
  EXPECT_TRUE(root.value().root);
  EXPECT_EQ(root.value().tenant, "root");
  EXPECT_EQ(root.value().access_key_id.size(), 20u);
  EXPECT_EQ(root.value().secret_key.size(), 40u);
  auto again = store_->ensure_root_key("", "");
  ASSERT_TRUE(again);
  EXPECT_EQ(again.value().access_key_id, root.value().access_key_id);
  EXPECT_EQ(again.value().secret_key, root.value().secret_key);

  auto configured = store_->ensure_root_key("ADMINKEY", "adminsecret");
  ASSERT_TRUE(configured);
  EXPECT_EQ(configured.value().access_key_id, "ADMINKEY");
  EXPECT_EQ(store_->lookup_access_key(root.value().access_key_id).error(),
            ObjErrc::invalid_access_key_id);
  auto found = store_->lookup_access_key("ADMINKEY");
  ASSERT_TRUE(found);
  EXPECT_EQ(found.value().secret_key, "adminsecret");
  EXPECT_TRUE(found.value().root);

  auto key = store_->create_access_key("acme");
  ASSERT_TRUE(key);
  EXPECT_FALSE(key.value().root);
  auto looked = store_->lookup_access_key(key.value().access_key_id);
  ASSERT_TRUE(looked);
  EXPECT_EQ(looked.value().secret_key, key.value().secret_key);
  EXPECT_EQ(looked.value().tenant, "acme");
  EXPECT_NE(store_->create_access_key("acme").value().access_key_id, key.value().access_key_id);
  EXPECT_EQ(store_->create_access_key("ghost").error(), Errc::not_found);
  EXPECT_EQ(store_->lookup_access_key("nope").error(), ObjErrc::invalid_access_key_id);
  EXPECT_EQ(store_->create_tenant("bad/name").error(), ObjErrc::invalid_argument);
  EXPECT_EQ(store_->create_tenant("acme").error(), Errc::already_exists);
  // A tenant's key id cannot become the root key.
  EXPECT_EQ(store_->ensure_root_key(key.value().access_key_id, "whatever12").error(),
            ObjErrc::invalid_argument);
  EXPECT_EQ(store_->list_tenants(), (std::vector<std::string>{"acme", "root"}));
}

TEST_F(ObjectStore, ReopenKeepsEverything) {
  std::mt19937_64 rng(test_seed() + 6);
  std::string data = random_bytes(123457, rng);
  ASSERT_TRUE(put("bkt", "persist", data));
  auto key = store_->create_access_key("acme");
  ASSERT_TRUE(key);
  open(options());
  EXPECT_TRUE(get("bkt", "persist").value() == data);
  EXPECT_EQ(store_->lookup_access_key(key.value().access_key_id).value().secret_key,
            key.value().secret_key);
  EXPECT_EQ(store_->drives_online(), 6);
}

TEST_F(ObjectStore, ExplicitDrivesAndOtherCodes) {
  // 2+1 over explicitly listed drive directories (which must exist; they are never created).
  auto o = options();
  o.data_dir = dir_.path() + "/explicit";
  o.data_shards = 2;
  o.parity_shards = 1;
  for (int i = 0; i < 3; ++i) o.drives.push_back(dir_.path() + "/mnt" + std::to_string(i));
  store_.reset();
  EXPECT_EQ(objectd::ObjectStore::open(o).error(), ObjErrc::quorum_lost);  // none exist
  for (const auto& d : o.drives) fs::create_directories(d);
  open(o);
  ASSERT_TRUE(store_->create_tenant("t"));
  ASSERT_TRUE(store_->create_bucket("t", "b23"));
  std::mt19937_64 rng(test_seed() + 7);
  std::string data = random_bytes(30001, rng);
  {  // writers and readers never outlive their store
    auto w = store_->put_object("b23", "k");
    ASSERT_TRUE(w);
    ASSERT_TRUE(w.value()->write(data.data(), data.size()));
    ObjectMeta m;
    m.size_bytes = data.size();
    ASSERT_TRUE(w.value()->commit(m));
    auto r = store_->get_object("b23", "k");
    ASSERT_TRUE(r);
    std::string back(40000, '\0');
    size_t got = 0;
    for (;;) {
      auto n = r.value()->read(back.data() + got, back.size() - got);
      ASSERT_TRUE(n);
      if (n.value() == 0) break;
      got += n.value();
    }
    back.resize(got);
    EXPECT_TRUE(back == data);
  }
  // Opening with a different drive count than the store was made with is refused.
  store_.reset();
  o.parity_shards = 2;
  o.drives.push_back(dir_.path() + "/mnt3");
  fs::create_directories(o.drives.back());
  EXPECT_EQ(objectd::ObjectStore::open(o).error(), ObjErrc::invalid_argument);
  // Bad options.
  o = options();
  o.data_shards = 0;
  EXPECT_EQ(objectd::ObjectStore::open(o).error(), ObjErrc::invalid_argument);
  o = options();
  o.shard_block_bytes = 0;
  EXPECT_EQ(objectd::ObjectStore::open(o).error(), ObjErrc::invalid_argument);
}

TEST_F(ObjectStore, ConcurrentWritersOfOneKeyLeaveOneVersion) {
  std::mt19937_64 rng(test_seed() + 8);
  std::vector<std::string> datas;
  for (int i = 0; i < 4; ++i) datas.push_back(random_bytes(20000 + i, rng));
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      for (int round = 0; round < 5; ++round) EXPECT_TRUE(put("bkt", "hot", datas[i]));
    });
  }
  for (auto& t : threads) t.join();
  auto back = get("bkt", "hot");
  ASSERT_TRUE(back);
  EXPECT_NE(std::find(datas.begin(), datas.end(), back.value()), datas.end());
  EXPECT_EQ(object_files(), 6u);
}

}  // namespace
}  // namespace cairn::objectd::store_test
