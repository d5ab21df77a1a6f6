// Faults and healing: drives removed (rm -rf) or shard bytes corrupted -> every object reads back
// identical; heal passes restore full redundancy (checked on disk: every shard file present and
// CRC-clean); writes without write quorum leave nothing; a lost index is rebuilt from the
// drives; orphans are swept; an interrupted pass resumes. Seeded; CAIRN_SEED replays.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "temp_dir.h"
#include "common/assert.h"
#include "objectd/object_store.h"
#include "shard_file.h"
#include "store_impl.h"

namespace cairn::objectd {
namespace {

using cairn::test::TempDir;

namespace fs = std::filesystem;
using engine::StripeLayout;
using cairn::v1::ObjectRecord;

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
    printf("heal_test seed: %llu (replay with CAIRN_SEED=%llu)\n",
           static_cast<unsigned long long>(s), static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
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

void flip_byte(const std::string& path, uint64_t offset) {
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  ASSERT_TRUE(f.good()) << path;
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

class ObjectStoreHeal : public ::testing::Test {
 protected:
  ObjectStore::Options options() {
    ObjectStore::Options o;
    o.data_dir = dir_.path() + "/data";
    o.shard_block_bytes = 4096;
    o.scrub_period_hours = 0;
    o.drive_check_interval_ms = 50;
    return o;
  }
  void open(ObjectStore::Options o) {
    store_.reset();
    auto s = ObjectStore::open(o);
    ASSERT_TRUE(s) << s.error().message();
    store_ = std::move(s.value());
  }
  void SetUp() override {
    open(options());
    ASSERT_TRUE(store_->create_tenant("acme"));
    ASSERT_TRUE(store_->create_bucket("acme", "bkt"));
  }
  engine::StoreImpl& impl() { return dynamic_cast<engine::StoreImpl&>(*store_); }
  std::string drive_dir(int d) { return options().data_dir + "/drive" + std::to_string(d); }
  // rm -rf of a drive directory, made atomic (rename first) so the store never sees it
  // half-removed and empty (which it would format as a replacement).
  void remove_drive(int d) {
    std::string gone = drive_dir(d) + ".removed";
    fs::rename(drive_dir(d), gone);
    fs::remove_all(gone);
  }
  std::string shard_path(const ObjectRecord& v, int shard) {
    StripeLayout l = StripeLayout::of(v);
    return drive_dir(l.drive_of(shard)) + "/objects/" + v.id().substr(0, 2) + "/" + v.id();
  }

  Result<ObjectMeta> put(const std::string& key, const std::string& data) {
    CAIRN_TRY(w, store_->put_object("bkt", key));
    for (size_t off = 0; off < data.size(); off += 10000) {
      CAIRN_TRY(w->write(data.data() + off, std::min<size_t>(10000, data.size() - off)));
    }
    ObjectMeta m;
    m.size_bytes = data.size();
    return w->commit(m);
  }
  Result<std::string> get(const std::string& key) {
    CAIRN_TRY(r, store_->get_object("bkt", key));
    std::string out, buf(65536, '\0');
    for (int guard = 0; guard < 1'000'000; ++guard) {
      CAIRN_TRY(n, r->read(buf.data(), buf.size()));
      if (n == 0) break;
      out.append(buf.data(), n);
    }
    return out;
  }
  // Puts `count` objects of random sizes (0 .. 5 stripes); returns key -> data.
  std::map<std::string, std::string> put_many(int count, std::mt19937_64& rng) {
    std::map<std::string, std::string> objects;
    for (int i = 0; i < count; ++i) {
      std::string key = "obj/" + std::to_string(i);
      std::string data = random_bytes(i == 0 ? 0 : rng() % (5 * 16384 + 100), rng);
      EXPECT_TRUE(put(key, data));
      objects[key] = data;
    }
    return objects;
  }
  void expect_all_readable(const std::map<std::string, std::string>& objects) {
    for (const auto& [key, data] : objects) {
      auto got = get(key);
      ASSERT_TRUE(got) << key << ": " << got.error().message();
      ASSERT_TRUE(got.value() == data) << key;
    }
  }
  // Every version's shard files (objects, parts, uploads, manifests) present and CRC-clean.
  void expect_fully_redundant_on_disk() {
    int versions = 0;
    for (const ObjectRecord& rec : impl().records_for_test()) {
      std::vector<const ObjectRecord*> all = {&rec};
      for (const auto& p : rec.parts()) all.push_back(&p);
      for (const ObjectRecord* v : all) {
        ++versions;
        for (int s = 0; s < 6; ++s) {
          Status st = engine::verify_shard_file(shard_path(*v, s), *v, static_cast<uint32_t>(s),
                                                nullptr);
          EXPECT_TRUE(st) << rec.key() << " version " << v->id() << " shard " << s << ": "
                          << st.error().message();
        }
      }
    }
    EXPECT_GT(versions, 0);
  }
  void heal_and_wait() {
    ASSERT_TRUE(store_->start_heal());
    ASSERT_TRUE(impl().wait_heal_idle(30000));
  }
  void wait_drives_online(int n) {
    for (int i = 0; i < 600 && store_->drives_online() != n; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_EQ(store_->drives_online(), n);
  }
  size_t object_files() {
    size_t n = 0;
    for (int d = 0; d < 6; ++d) n += count_files(drive_dir(d) + "/objects");
    return n;
  }
  size_t tmp_files() {
    size_t n = 0;
    for (int d = 0; d < 6; ++d) n += count_files(drive_dir(d) + "/tmp");
    return n;
  }

  TempDir dir_;
  std::unique_ptr<ObjectStore> store_;
};

TEST_F(ObjectStoreHeal, ReadsSurviveRemovedDrivesAndHealRebuildsReplacements) {
  std::mt19937_64 rng(test_seed());
  auto objects = put_many(15, rng);
  heal_and_wait();
  EXPECT_TRUE(store_->heal_status().fully_redundant);

  // Lose m = 2 drives, chosen at random.
  int a = static_cast<int>(rng() % 6), b = static_cast<int>((a + 1 + rng() % 5) % 6);
  remove_drive(a);
  remove_drive(b);
  expect_all_readable(objects);
  wait_drives_online(4);
  EXPECT_FALSE(store_->heal_status().fully_redundant);
  EXPECT_EQ(store_->put_object("bkt", "new").error(), ObjErrc::quorum_lost);

  // A pass with drives missing cannot restore redundancy.
  heal_and_wait();
  EXPECT_FALSE(store_->heal_status().fully_redundant);
  EXPECT_EQ(store_->heal_status().objects_failed, 0u);

  // The operator puts empty directories in their place: they are formatted and rebuilt.
  fs::create_directories(drive_dir(a));
  fs::create_directories(drive_dir(b));
  heal_and_wait();
  EXPECT_EQ(store_->drives_online(), 6);
  HealStatus hs = store_->heal_status();
  EXPECT_TRUE(hs.fully_redundant);
  EXPECT_FALSE(hs.running);
  EXPECT_EQ(hs.objects_total, objects.size());
  EXPECT_EQ(hs.objects_scanned, objects.size());
  EXPECT_EQ(hs.objects_healed, objects.size());
  EXPECT_EQ(hs.objects_failed, 0u);
  EXPECT_GT(hs.bytes_rewritten, 0u);
  expect_fully_redundant_on_disk();
  expect_all_readable(objects);

  // Any other two drives can now fail.
  int c = (a + 2) % 6 == b ? (a + 3) % 6 : (a + 2) % 6;
  remove_drive(c);
  remove_drive(a);
  expect_all_readable(objects);
}

TEST_F(ObjectStoreHeal, CorruptShardsReadBackAndHealRepairs) {
  std::mt19937_64 rng(test_seed() + 1);
  auto objects = put_many(20, rng);
  // One multipart object as well: its parts are healed like objects.
  auto upload = store_->create_multipart("bkt", "mp", {});
  ASSERT_TRUE(upload);
  std::string p1 = random_bytes(kPartSizeMinBytes, rng), p2 = random_bytes(777, rng);
  std::vector<PartInfo> parts;
  uint32_t number = 1;
  for (const std::string* p : {&p1, &p2}) {
    auto w = store_->upload_part("bkt", "mp", upload.value(), number);
    ASSERT_TRUE(w);
    ASSERT_TRUE(w.value()->write(p->data(), p->size()));
    ObjectMeta m;
    m.size_bytes = p->size();
    auto done = w.value()->commit(m);
    ASSERT_TRUE(done);
    parts.push_back(part(number++, done.value().etag));
  }
  ASSERT_TRUE(store_->complete_multipart("bkt", "mp", upload.value(), parts));
  objects["mp"] = p1 + p2;

  // Damage up to m shard files of every version: random bytes anywhere in the file.
  int damaged = 0;
  for (const ObjectRecord& rec : impl().records_for_test()) {
    std::vector<const ObjectRecord*> all = {&rec};
    for (const auto& p : rec.parts()) all.push_back(&p);
    for (const ObjectRecord* v : all) {
      std::vector<int> shards = {0, 1, 2, 3, 4, 5};
      std::shuffle(shards.begin(), shards.end(), rng);
      int bad = static_cast<int>(rng() % 3);
      for (int i = 0; i < bad; ++i) {
        std::string path = shard_path(*v, shards[i]);
        uint64_t size = fs::file_size(path);
        for (int flips = 0; flips < 3; ++flips) flip_byte(path, rng() % size);
        ++damaged;
      }
    }
  }
  ASSERT_GT(damaged, 0);
  expect_all_readable(objects);
  heal_and_wait();
  HealStatus hs = store_->heal_status();
  EXPECT_TRUE(hs.fully_redundant);
  EXPECT_EQ(hs.objects_failed, 0u);
  expect_fully_redundant_on_disk();
  expect_all_readable(objects);
}

TEST_F(ObjectStoreHeal, HealOnReadRewritesDamagedShard) {
  std::mt19937_64 rng(test_seed() + 2);
  std::string data = random_bytes(3 * 16384 + 5, rng);
  ASSERT_TRUE(put("k", data));
  ObjectRecord rec = impl().records_for_test().at(0);
  // Damage the first block of data shard 1 and remove data shard 2's file.
  flip_byte(shard_path(rec, 1), engine::kShardHeaderBytes + 7);
  fs::remove(shard_path(rec, 2));
  auto got = get("k");
  ASSERT_TRUE(got);
  EXPECT_TRUE(got.value() == data);
  // No pass: the read queued the object and the heal thread rewrote both shards.
  ASSERT_TRUE(impl().wait_heal_idle(30000));
  EXPECT_EQ(store_->heal_status().queued, 0u);
  expect_fully_redundant_on_disk();
}

TEST_F(ObjectStoreHeal, TooManyDamagedShardsIsDataCorrupt) {
  std::mt19937_64 rng(test_seed() + 3);
  std::string good = random_bytes(20000, rng), bad = random_bytes(20000, rng);
  ASSERT_TRUE(put("good", good));
  ASSERT_TRUE(put("bad", bad));
  ObjectRecord rec;
  for (const auto& r : impl().records_for_test())
    if (r.key() == "bad") rec = r;
  for (int s : {0, 3, 5}) flip_byte(shard_path(rec, s), engine::kShardHeaderBytes + 1);
  auto got = get("bad");
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error(), ObjErrc::data_corrupt);
  EXPECT_TRUE(get("good").value() == good);
  heal_and_wait();
  HealStatus hs = store_->heal_status();
  EXPECT_EQ(hs.objects_failed, 1u);
  EXPECT_FALSE(hs.fully_redundant);
}

TEST_F(ObjectStoreHeal, PutWithoutWriteQuorumLeavesNothing) {
  std::mt19937_64 rng(test_seed() + 4);
  std::string keep = random_bytes(30000, rng);
  ASSERT_TRUE(put("keep", keep));
  const size_t files_before = object_files();

  // A writer that loses two drives mid-object (5 of 6 needed) fails at commit.
  {
    auto w = store_->put_object("bkt", "partial");
    ASSERT_TRUE(w);
    std::string data = random_bytes(100000, rng);
    ASSERT_TRUE(w.value()->write(data.data(), 50000));
    remove_drive(2);
    remove_drive(3);
    Status st = w.value()->write(data.data() + 50000, 50000);
    ObjectMeta m;
    m.size_bytes = data.size();
    auto done = st ? w.value()->commit(m) : Result<ObjectMeta>(st.error());
    ASSERT_FALSE(done);
    EXPECT_EQ(done.error(), ObjErrc::quorum_lost);
  }
  EXPECT_EQ(store_->head_object("bkt", "partial").error(), ObjErrc::no_such_key);
  auto list = store_->list_objects("bkt", {});
  ASSERT_TRUE(list);
  ASSERT_EQ(list.value().objects.size(), 1u);
  EXPECT_EQ(list.value().objects[0].key, "keep");
  EXPECT_EQ(object_files(), files_before - 2);  // keep's shards on the two lost drives
  EXPECT_EQ(tmp_files(), 0u);

  // With 4 of 6 drives nothing can be written at all.
  wait_drives_online(4);
  EXPECT_EQ(store_->put_object("bkt", "x").error(), ObjErrc::quorum_lost);
  EXPECT_EQ(store_->create_multipart("bkt", "x", {}).error(), ObjErrc::quorum_lost);
  EXPECT_TRUE(get("keep").value() == keep);
  EXPECT_EQ(object_files(), files_before - 2);
  EXPECT_EQ(tmp_files(), 0u);
  // Reopening needs write quorum too.
  store_.reset();
  EXPECT_EQ(ObjectStore::open(options()).error(), ObjErrc::quorum_lost);
}

TEST_F(ObjectStoreHeal, IndexRebuiltFromDrives) {
  std::mt19937_64 rng(test_seed() + 5);
  auto root = store_->ensure_root_key("ROOTKEY", "rootsecret1");
  ASSERT_TRUE(root);
  ASSERT_TRUE(store_->create_tenant("beta"));
  auto key = store_->create_access_key("acme");
  ASSERT_TRUE(key);
  ASSERT_TRUE(store_->create_bucket("beta", "empty-bucket"));
  ASSERT_TRUE(store_->create_bucket("acme", "pub"));
  ASSERT_TRUE(store_->set_bucket_public("pub", true));

  auto objects = put_many(10, rng);
  std::string newest = random_bytes(5000, rng);
  ASSERT_TRUE(put("obj/3", random_bytes(100, rng)));
  ASSERT_TRUE(put("obj/3", newest));
  objects["obj/3"] = newest;
  ASSERT_TRUE(store_->delete_object("bkt", "obj/4"));
  objects.erase("obj/4");

  auto done_upload = store_->create_multipart("bkt", "mp", {});
  ASSERT_TRUE(done_upload);
  std::string p1 = random_bytes(kPartSizeMinBytes, rng), p2 = random_bytes(10, rng);
  std::vector<PartInfo> parts;
  for (uint32_t n : {1u, 2u}) {
    const std::string& p = n == 1 ? p1 : p2;
    auto w = store_->upload_part("bkt", "mp", done_upload.value(), n);
    ASSERT_TRUE(w);
    ASSERT_TRUE(w.value()->write(p.data(), p.size()));
    ObjectMeta m;
    m.size_bytes = p.size();
    parts.push_back(part(n, w.value()->commit(m).value().etag));
  }
  auto mp = store_->complete_multipart("bkt", "mp", done_upload.value(), parts);
  ASSERT_TRUE(mp);
  objects["mp"] = p1 + p2;

  ObjectMeta pending_meta;
  pending_meta.content_type = "application/x-pending";
  auto pending = store_->create_multipart("bkt", "pending", pending_meta);
  ASSERT_TRUE(pending);
  {
    auto w = store_->upload_part("bkt", "pending", pending.value(), 7);
    ASSERT_TRUE(w);
    ASSERT_TRUE(w.value()->write("part seven", 10));
    ObjectMeta m;
    m.size_bytes = 10;
    ASSERT_TRUE(w.value()->commit(m));
  }
  auto list_before = store_->list_objects("bkt", {}).value();

  store_.reset();
  fs::remove_all(options().data_dir + "/index");
  open(options());

  auto list_after = store_->list_objects("bkt", {});
  ASSERT_TRUE(list_after);
  ASSERT_EQ(list_after.value().objects.size(), list_before.objects.size());
  for (size_t i = 0; i < list_before.objects.size(); ++i) {
    const auto& x = list_before.objects[i];
    const auto& y = list_after.value().objects[i];
    EXPECT_EQ(x.key, y.key);
    EXPECT_EQ(x.etag, y.etag);
    EXPECT_EQ(x.size_bytes, y.size_bytes);
    EXPECT_EQ(x.mtime_unix_ms, y.mtime_unix_ms);
    EXPECT_EQ(x.parts, y.parts);
  }
  expect_all_readable(objects);
  EXPECT_EQ(store_->head_object("bkt", "obj/4").error(), ObjErrc::no_such_key);
  EXPECT_EQ(store_->head_object("bkt", "mp").value().etag, mp.value().etag);

  auto buckets = store_->list_buckets("");
  ASSERT_EQ(buckets.size(), 3u);
  EXPECT_EQ(store_->get_bucket("empty-bucket").value().owner, "beta");
  EXPECT_TRUE(store_->get_bucket("pub").value().public_read);
  EXPECT_EQ(store_->get_bucket("bkt").value().owner, "acme");
  EXPECT_EQ(store_->list_tenants(), (std::vector<std::string>{"acme", "beta", "root"}));
  EXPECT_EQ(store_->lookup_access_key("ROOTKEY").value().secret_key, "rootsecret1");
  EXPECT_TRUE(store_->lookup_access_key("ROOTKEY").value().root);
  EXPECT_EQ(store_->lookup_access_key(key.value().access_key_id).value().secret_key,
            key.value().secret_key);
  auto again = store_->ensure_root_key("ROOTKEY", "rootsecret1");
  EXPECT_EQ(again.value().access_key_id, "ROOTKEY");

  auto uploads = store_->list_uploads("bkt", "");
  ASSERT_TRUE(uploads);
  ASSERT_EQ(uploads.value().size(), 1u);
  EXPECT_EQ(uploads.value()[0].upload_id, pending.value());
  auto pending_parts = store_->list_parts("bkt", "pending", pending.value());
  ASSERT_TRUE(pending_parts);
  ASSERT_EQ(pending_parts.value().size(), 1u);
  EXPECT_EQ(pending_parts.value()[0].part_number, 7u);
  auto finished = store_->complete_multipart("bkt", "pending", pending.value(),
                                             {part(7, pending_parts.value()[0].etag)});
  ASSERT_TRUE(finished);
  EXPECT_EQ(finished.value().content_type, "application/x-pending");
  EXPECT_EQ(get("pending").value(), "part seven");

  // The rebuilt index is consistent with the drives: a pass finds nothing to do.
  heal_and_wait();
  EXPECT_TRUE(store_->heal_status().fully_redundant);
  EXPECT_EQ(store_->heal_status().objects_healed, 0u);
  expect_fully_redundant_on_disk();
}

TEST_F(ObjectStoreHeal, OrphansRemovedAfterGrace) {
  std::mt19937_64 rng(test_seed() + 6);
  auto objects = put_many(3, rng);
  ObjectRecord rec = impl().records_for_test().at(1);
  // A shard file no index entry references (a PUT that crashed before its index write), and
  // a stale temp file.
  const std::string orphan_id = "00112233445566778899aabbccddeeff";
  const std::string orphan = drive_dir(0) + "/objects/00/" + orphan_id;
  fs::create_directories(drive_dir(0) + "/objects/00");
  fs::copy_file(shard_path(rec, 0), orphan);
  const std::string stale_tmp = drive_dir(1) + "/tmp/" + orphan_id + ".3";
  std::ofstream(stale_tmp) << "partial";

  heal_and_wait();  // inside the grace period: kept
  EXPECT_TRUE(fs::exists(orphan));
  EXPECT_TRUE(fs::exists(stale_tmp));

  auto o = options();
  o.orphan_grace_seconds = 0;
  open(o);
  heal_and_wait();
  EXPECT_FALSE(fs::exists(orphan));
  EXPECT_FALSE(fs::exists(stale_tmp));
  expect_fully_redundant_on_disk();
  expect_all_readable(objects);
}

TEST_F(ObjectStoreHeal, LeftoversOfAnEarlierRunRemovedAtStartup) {
  std::mt19937_64 rng(test_seed() + 9);
  auto objects = put_many(3, rng);
  ObjectRecord rec = impl().records_for_test().at(1);
  // What a crash leaves: a renamed shard file without index entry, temp files of a write
  // and of a heal.
  const std::string orphan_id = "00112233445566778899aabbccddeeff";
  const std::string orphan = drive_dir(2) + "/objects/00/" + orphan_id;
  fs::create_directories(drive_dir(2) + "/objects/00");
  fs::copy_file(shard_path(rec, 0), orphan);
  const std::string stale_tmp = drive_dir(3) + "/tmp/" + orphan_id + ".1";
  const std::string stale_heal = drive_dir(4) + "/tmp/" + rec.id() + ".2.heal";
  std::ofstream(stale_tmp) << "partial";
  std::ofstream(stale_heal) << "partial";
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // mtime before the next open

  open(options());  // default grace: an hour, which does not apply to an earlier run's files
  ASSERT_TRUE(impl().wait_heal_idle(30000));
  EXPECT_FALSE(fs::exists(orphan));
  EXPECT_FALSE(fs::exists(stale_tmp));
  EXPECT_FALSE(fs::exists(stale_heal));
  EXPECT_EQ(tmp_files(), 0u);
  expect_all_readable(objects);
  heal_and_wait();
  expect_fully_redundant_on_disk();
  EXPECT_TRUE(store_->heal_status().fully_redundant);
}

TEST_F(ObjectStoreHeal, InterruptedPassResumesAfterRestart) {
  std::mt19937_64 rng(test_seed() + 7);
  for (int i = 0; i < 12; ++i) {
    std::string key = "o";
    key += std::to_string(i);
    ASSERT_TRUE(put(key, random_bytes(20000, rng)));
  }
  auto o = options();
  o.heal_bytes_per_second = 40000;  // ~1 object per second after the first second's burst
  open(o);
  ASSERT_TRUE(store_->start_heal());
  uint64_t scanned = 0;
  for (int i = 0; i < 500 && scanned == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    scanned = store_->heal_status().objects_scanned;
  }
  ASSERT_GT(scanned, 0u);
  HealStatus mid = store_->heal_status();
  EXPECT_TRUE(mid.running);
  EXPECT_EQ(mid.objects_total, 12u);
  EXPECT_LT(mid.objects_scanned, 12u);

  open(options());  // full speed; the pass continues where it stopped
  HealStatus resumed = store_->heal_status();
  EXPECT_TRUE(resumed.running || resumed.objects_scanned == 12u);
  EXPECT_GE(resumed.objects_scanned, scanned);
  ASSERT_TRUE(impl().wait_heal_idle(30000));
  HealStatus end = store_->heal_status();
  EXPECT_FALSE(end.running);
  EXPECT_EQ(end.objects_scanned, 12u);
  EXPECT_TRUE(end.fully_redundant);
}

}  // namespace
}  // namespace cairn::objectd
