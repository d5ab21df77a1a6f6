// Backup repository, backup/restore/verify/prune and the GC protocol over MemBlobStore.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <set>

#include "snapshot/backup.h"
#include "snapshot/blob_store.h"
#include "snapshot/repository.h"

namespace cairn::backup {
namespace {

constexpr uint64_t kCs = 64 * 1024;  // small chunks keep the tests fast
constexpr uint64_t kBlock = 4096;

// A volume image with an allocation map and change sets per snapshot name, like blockd's.
class FakeSource final : public BackupSource {
 public:
  explicit FakeSource(uint64_t size) : data_(size, '\0'), allocated_(size / kBlock, false) {}

  void write(uint64_t off, std::string_view bytes) {
    std::memcpy(data_.data() + off, bytes.data(), bytes.size());
    for (uint64_t b = off / kBlock; b * kBlock < off + bytes.size(); b++) {
      allocated_[b] = true;
      for (auto& [name, set] : changes_) set.insert(b);
    }
  }
  void fill_random(uint64_t off, uint64_t len, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::string s(len, '\0');
    for (auto& c : s) c = static_cast<char>(rng());
    write(off, s);
  }
  // Records a snapshot point: later writes count as changes since it.
  void snapshot(const std::string& name) { changes_[name]; }
  void drop_snapshot(const std::string& name) { changes_.erase(name); }
  const std::string& image() const { return data_; }
  uint64_t bytes_read() const { return bytes_read_; }

  uint64_t size_bytes() const override { return data_.size(); }
  Result<std::vector<ByteRange>> allocated(uint64_t offset, uint64_t length) override {
    std::vector<ByteRange> out;
    for (uint64_t b = offset / kBlock; b * kBlock < offset + length; b++) {
      if (allocated_[b]) out.push_back({b * kBlock, kBlock});
    }
    return out;
  }
  Result<std::vector<ByteRange>> changed_since(const std::string& since) override {
    auto it = changes_.find(since);
    if (it == changes_.end()) return Errc::not_found;
    std::vector<ByteRange> out;
    for (uint64_t b : it->second) out.push_back({b * kBlock, kBlock});
    return out;
  }
  Status read(uint64_t offset, uint64_t length, char* buf) override {
    std::memcpy(buf, data_.data() + offset, length);
    std::lock_guard lock(mu_);
    bytes_read_ += length;
    return ok();
  }

 private:
  std::string data_;
  std::vector<bool> allocated_;
  std::map<std::string, std::set<uint64_t>> changes_;
  std::mutex mu_;
  uint64_t bytes_read_ = 0;
};

class MemSink final : public RestoreSink {
 public:
  explicit MemSink(uint64_t size) : data_(size, '\0') {}
  Status write(uint64_t offset, std::string_view data) override {
    std::lock_guard lock(mu_);
    std::memcpy(data_.data() + offset, data.data(), data.size());
    written_ += data.size();
    return ok();
  }
  std::string data_;
  uint64_t written_ = 0;
  std::mutex mu_;
};

std::unique_ptr<Repository> init_repo(MemBlobStore& store, std::optional<RepoKey> key = std::nullopt) {
  Repository::InitOptions opts;
  opts.chunk_size = kCs;
  opts.key = key;
  auto repo = Repository::init(store, opts);
  EXPECT_TRUE(repo) << repo.error().message();
  return std::move(repo.value());
}

cairn::v1::BackupManifest backup(Repository& repo, FakeSource& src, const std::string& snap,
                                 const std::string& volume = "vol", int64_t now = 1'700'000'000) {
  src.snapshot(snap);
  BackupOptions opts;
  opts.volume = volume;
  opts.snapshot = snap;
  opts.threads = 3;
  opts.now_unix_s = [now] { return now; };
  auto m = run_backup(repo, src, opts);
  EXPECT_TRUE(m) << m.error().message();
  return m ? m.value() : cairn::v1::BackupManifest();
}

std::string restore(Repository& repo, const cairn::v1::BackupManifest& m, uint64_t* written = nullptr) {
  MemSink sink(m.volume_size());
  Status s = run_restore(repo, m, sink, 3, nullptr);
  EXPECT_TRUE(s) << s.error().message();
  if (written) *written = sink.written_;
  return sink.data_;
}

TEST(BackupRepo, InitOpenAndKeys) {
  MemBlobStore store;
  RepoKey key{};
  key[0] = 7;
  init_repo(store, key);
  EXPECT_EQ(Repository::init(store, {}).error(), Errc::already_exists);
  EXPECT_EQ(Repository::open(store, std::nullopt).error(), Errc::permission_denied);
  RepoKey wrong{};
  EXPECT_EQ(Repository::open(store, wrong).error(), Errc::permission_denied);
  auto repo = Repository::open(store, key);
  ASSERT_TRUE(repo);
  EXPECT_TRUE(repo.value()->encrypted());
  EXPECT_EQ(repo.value()->chunk_size(), kCs);

  MemBlobStore empty;
  EXPECT_EQ(Repository::open(empty, std::nullopt).error(), Errc::not_found);
  Repository::InitOptions bad;
  bad.chunk_size = 3 * kCs;
  EXPECT_EQ(Repository::init(empty, bad).error(), Errc::invalid_argument);
  EXPECT_TRUE(parse_repo_key(generate_repo_key_hex() + "\n"));
  EXPECT_FALSE(parse_repo_key("abc"));
}

TEST(BackupRepo, ChunkCodecChecksEverything) {
  for (bool encrypted : {false, true}) {
    SCOPED_TRACE(encrypted);
    MemBlobStore store;
    RepoKey key{};
    key[5] = 1;
    auto repo = init_repo(store, encrypted ? std::optional<RepoKey>(key) : std::nullopt);
    std::string compressible(kCs, 'a');
    std::string random(kCs, '\0');
    std::mt19937_64 rng(1);
    for (auto& c : random) c = static_cast<char>(rng());
    ChunkId a = repo->chunk_id(compressible), b = repo->chunk_id(random);
    std::string oa = repo->encode_chunk(a, compressible), ob = repo->encode_chunk(b, random);
    EXPECT_LT(oa.size(), compressible.size() / 10);
    EXPECT_LE(ob.size(), random.size() + 64);
    EXPECT_EQ(repo->decode_chunk(a, oa).value(), compressible);
    EXPECT_EQ(repo->decode_chunk(b, ob).value(), random);
    // Another chunk's object under this id, a flipped byte, a cut object: all corrupt.
    EXPECT_EQ(repo->decode_chunk(a, ob).error(), Errc::corrupt);
    std::string flipped = ob;
    flipped[flipped.size() / 2] ^= 1;
    EXPECT_EQ(repo->decode_chunk(b, flipped).error(), Errc::corrupt);
    EXPECT_EQ(repo->decode_chunk(b, ob.substr(0, 20)).error(), Errc::corrupt);
    // Encrypted: the id is keyed, so it differs from the plain SHA-256.
    MemBlobStore plain_store;
    auto plain = init_repo(plain_store);
    EXPECT_EQ(plain->chunk_id(random) == b, !encrypted);
    if (encrypted) {
      EXPECT_EQ(ob.find(random.substr(0, 64)), std::string::npos);
    }
  }
}

TEST(Backup, FullBackupStoresHolesAsNothingAndRestoresExactly) {
  MemBlobStore store;
  auto repo = init_repo(store);
  FakeSource src(16 * kCs + 8192);  // a short last chunk
  src.fill_random(0, kCs, 1);                      // chunk 0 full
  src.fill_random(3 * kCs + 4096, 8192, 2);        // chunk 3 partly written
  src.write(5 * kCs, std::string(kCs, '\0'));      // chunk 5 written with zeros
  src.fill_random(6 * kCs, kCs, 1);                // chunk 6 = chunk 0 (dedup)
  src.fill_random(16 * kCs, 8192, 3);              // the short last chunk
  auto m = backup(*repo, src, "s1");
  ASSERT_EQ(m.chunks_size(), 4);  // 0, 3, 6, 16: holes and the zero chunk stored as nothing
  EXPECT_EQ(m.chunks(0).index(), 0u);
  EXPECT_EQ(m.chunks(3).index(), 16u);
  EXPECT_EQ(m.chunks(0).id(), m.chunks(2).id());
  EXPECT_EQ(m.stats().new_chunks(), 3u);
  EXPECT_EQ(m.stats().reused_chunks(), 1u);
  EXPECT_EQ(store.count("chunks/"), 3u);
  EXPECT_EQ(store.count("locks/"), 0u);
  uint64_t written = 0;
  EXPECT_EQ(restore(*repo, m, &written), src.image());
  EXPECT_EQ(written, kCs + 8192 + kCs + 8192);  // zeros are not written: holes stay holes

  auto again = repo->get_manifest(m.backup_id());
  ASSERT_TRUE(again);
  EXPECT_EQ(again.value().SerializeAsString(), m.SerializeAsString());
  EXPECT_EQ(read_backup_chunk(*repo, m, 5).value(), std::string(kCs, '\0'));
  EXPECT_EQ(read_backup_chunk(*repo, m, 16).value(), src.image().substr(16 * kCs));
  EXPECT_EQ(read_backup_chunk(*repo, m, 17).error(), Errc::out_of_range);
}

TEST(Backup, IncrementalReadsOnlyChangedChunksAndIsComplete) {
  MemBlobStore store;
  auto repo = init_repo(store);
  FakeSource src(64 * kCs);
  for (uint64_t i = 0; i < 64; i += 2) src.fill_random(i * kCs, kCs, 100 + i);
  auto full = backup(*repo, src, "s1");
  std::string image1 = src.image();
  uint64_t read_before = src.bytes_read();
  EXPECT_EQ(full.stats().new_chunks(), 32u);

  src.fill_random(10 * kCs + 4096, 4096, 9);  // chunk 10 changes
  src.fill_random(33 * kCs, 100, 10);         // chunk 33 was a hole
  auto incr = backup(*repo, src, "s2", "vol", 1'700'000'100);
  EXPECT_EQ(incr.parent_id(), full.backup_id());
  EXPECT_EQ(src.bytes_read() - read_before, 2 * kCs);  // only the two touched chunks
  EXPECT_EQ(incr.stats().new_chunks(), 2u);
  EXPECT_EQ(incr.chunks_size(), 33);
  EXPECT_EQ(restore(*repo, incr), src.image());
  EXPECT_EQ(restore(*repo, full), image1);

  // The parent's snapshot is gone: a full read, but nothing new to upload.
  src.drop_snapshot("s1");
  src.drop_snapshot("s2");
  uint64_t puts = store.puts();
  auto third = backup(*repo, src, "s3", "vol", 1'700'000'200);
  EXPECT_EQ(third.parent_id(), "");
  EXPECT_EQ(third.stats().new_chunks(), 0u);
  EXPECT_EQ(store.puts() - puts, 3u);  // lock (twice) and manifest
  EXPECT_EQ(restore(*repo, third), src.image());
}

TEST(Backup, BackupsWithinOneSecondStillSortByCreation) {
  MemBlobStore store;
  auto repo = init_repo(store);
  FakeSource src(4 * kCs);
  src.fill_random(0, kCs, 1);
  auto a = backup(*repo, src, "s1");  // both at the same wall-clock second
  src.fill_random(0, kCs, 2);
  auto b = backup(*repo, src, "s2");
  EXPECT_LT(a.backup_id(), b.backup_id());
  EXPECT_EQ(b.created_unix_s(), a.created_unix_s() + 1);
  auto listed = repo->list_manifests("vol");
  ASSERT_TRUE(listed);
  ASSERT_EQ(listed.value().size(), 2u);
  EXPECT_EQ(listed.value()[1].backup_id(), b.backup_id());
  cairn::v1::PruneRequest req;
  req.set_keep_last(1);
  auto pruned = run_prune(*repo, req, {});
  ASSERT_TRUE(pruned);
  ASSERT_EQ(pruned.value().kept_size(), 1);
  EXPECT_EQ(pruned.value().kept(0), "vol/" + b.backup_id());
}

TEST(Backup, RerunAfterAFailureUploadsNothingTwice) {
  MemBlobStore store;
  auto repo = init_repo(store);
  FakeSource src(32 * kCs);
  src.fill_random(0, 32 * kCs, 5);
  int chunk_puts = 0;
  store.on_op = [&](std::string_view op, const std::string& key) {
    if (op == "put" && key.rfind("chunks/", 0) == 0 && ++chunk_puts == 20) store.fail_next = 1000;
  };
  src.snapshot("s1");
  BackupOptions opts;
  opts.volume = "vol";
  opts.snapshot = "s1";
  opts.threads = 1;
  EXPECT_FALSE(run_backup(*repo, src, opts));
  store.on_op = nullptr;
  store.fail_next = 0;
  uint64_t stored = store.count("chunks/");
  EXPECT_EQ(stored, 19u);
  auto m = run_backup(*repo, src, opts);
  ASSERT_TRUE(m);
  EXPECT_EQ(m.value().stats().new_chunks(), 32u - stored);
  EXPECT_EQ(m.value().stats().reused_chunks(), stored);
  EXPECT_EQ(restore(*repo, m.value()), src.image());
}

TEST(Backup, EncryptedRepositoryRoundTripsAndHidesData) {
  MemBlobStore store;
  RepoKey key{};
  key[31] = 9;
  auto repo = init_repo(store, key);
  FakeSource src(8 * kCs);
  std::string secret = "TOP-SECRET-" + std::string(kCs - 11, 'x');
  src.write(kCs, secret);
  auto m = backup(*repo, src, "s1");
  EXPECT_EQ(restore(*repo, m), src.image());
  (void)store.list("", [&](const BlobInfo& info) {
    EXPECT_EQ(store.raw(info.key)->find("TOP-SECRET"), std::string::npos) << info.key;
    EXPECT_EQ(store.raw(info.key)->find("vol"), std::string::npos) << info.key;
    return true;
  });
  RepoKey wrong{};
  EXPECT_EQ(Repository::open(store, wrong).error(), Errc::permission_denied);
}

TEST(Backup, VerifyNamesExactlyTheDamagedBackups) {
  MemBlobStore store;
  auto repo = init_repo(store);
  FakeSource a(8 * kCs), b(8 * kCs);
  a.fill_random(0, 4 * kCs, 1);
  b.fill_random(0, 4 * kCs, 2);
  auto ma = backup(*repo, a, "s1", "a");
  auto mb = backup(*repo, b, "s1", "b");
  auto clean = run_verify(*repo, "", 2);
  ASSERT_TRUE(clean);
  EXPECT_EQ(clean.value().damaged_size(), 0);
  EXPECT_EQ(clean.value().chunks_checked(), 8u);

  ChunkId victim{}, gone{};
  std::memcpy(victim.data(), ma.chunks(1).id().data(), 32);
  std::memcpy(gone.data(), ma.chunks(2).id().data(), 32);
  std::string obj = *store.raw(chunk_key(victim));
  obj[obj.size() - 1] ^= 0x40;
  store.set_raw(chunk_key(victim), obj);
  ASSERT_TRUE(store.remove(chunk_key(gone)));

  auto v = run_verify(*repo, "", 2);
  ASSERT_TRUE(v);
  ASSERT_EQ(v.value().damaged_size(), 1);
  EXPECT_EQ(v.value().damaged(0).backup_id(), ma.backup_id());
  EXPECT_EQ(v.value().damaged(0).corrupt_chunks(), 1u);
  EXPECT_EQ(v.value().damaged(0).missing_chunks(), 1u);
  EXPECT_EQ(v.value().bad_chunks_size(), 2);
  EXPECT_EQ(run_verify(*repo, mb.backup_id(), 2).value().damaged_size(), 0);

  MemSink sink(ma.volume_size());
  EXPECT_FALSE(run_restore(*repo, ma, sink, 2, nullptr));
  EXPECT_EQ(restore(*repo, mb), b.image());
}

TEST(Retention, KeepRulesTable) {
  constexpr int64_t day = 86400;
  const int64_t mon = 1'700'438'400;  // Monday 2023-11-20 00:00 UTC
  struct Case {
    std::vector<int64_t> times;
    RetentionRules rules;
    std::vector<bool> keep;
  };
  std::vector<Case> cases = {
      {{mon, mon + day, mon + 2 * day}, {2, 0, 0, 0}, {false, true, true}},
      // Two a day: keep_daily keeps the newest of each day.
      {{mon + 10, mon + 20, mon + day + 10, mon + day + 20}, {0, 2, 0, 0}, {false, true, false, true}},
      {{mon + 10, mon + 20, mon + day + 10, mon + day + 20}, {0, 1, 0, 0}, {false, false, false, true}},
      // Weeks start on Monday: Sunday and the Monday after are different weeks.
      {{mon - 1, mon, mon + 6 * day}, {0, 0, 2, 0}, {true, false, true}},
      // Months: 2023-10-31 and 2023-11-01.
      {{1'698'710'400, 1'698'796'800, 1'698'883'200}, {0, 0, 0, 5}, {true, false, true}},
      // Rules add up.
      {{mon, mon + 1, mon + 2, mon + 3}, {1, 1, 0, 0}, {false, false, false, true}},
      {{mon - 8 * day, mon, mon + 1}, {1, 0, 2, 0}, {true, false, true}},
      {{}, {3, 3, 3, 3}, {}},
  };
  for (size_t i = 0; i < cases.size(); i++) {
    EXPECT_EQ(retention_keep(cases[i].times, cases[i].rules), cases[i].keep) << "case " << i;
  }
}

TEST(Prune, RemovesExactlyTheExpiredAndTheirChunks) {
  MemBlobStore store;
  auto repo = init_repo(store);
  FakeSource src(16 * kCs);
  std::vector<cairn::v1::BackupManifest> ms;
  std::vector<std::string> images;
  for (int i = 0; i < 4; i++) {
    src.fill_random(i * kCs, kCs, 50 + i);  // each backup adds one chunk
    src.fill_random(15 * kCs, kCs, 90 + i);  // and rewrites the last one
    store.now_s = 1'700'000'000 + i * 100;
    ms.push_back(backup(*repo, src, "s" + std::to_string(i), "vol", 1'700'000'000 + i * 86400));
    images.push_back(src.image());
  }
  EXPECT_EQ(store.count("chunks/"), 8u);
  store.now_s = 1'700'100'000;
  cairn::v1::PruneRequest req;
  req.set_keep_last(2);
  req.set_dry_run(true);
  auto dry = run_prune(*repo, req, {});
  ASSERT_TRUE(dry);
  EXPECT_EQ(dry.value().removed_size(), 2);
  EXPECT_EQ(dry.value().chunks_deleted(), 2u);  // the last chunk of backups 0 and 1
  EXPECT_EQ(store.count("backups/"), 4u);
  EXPECT_EQ(store.count("chunks/"), 8u);

  req.set_dry_run(false);
  auto real = run_prune(*repo, req, {});
  ASSERT_TRUE(real);
  EXPECT_EQ(real.value().removed(0), "vol/" + ms[0].backup_id());
  EXPECT_EQ(real.value().removed(1), "vol/" + ms[1].backup_id());
  EXPECT_EQ(real.value().chunks_deleted(), 2u);
  EXPECT_EQ(store.count("chunks/"), 6u);
  EXPECT_EQ(store.count("backups/"), 2u);
  for (int i = 2; i < 4; i++) {
    EXPECT_EQ(restore(*repo, ms[i]), images[i]);
    EXPECT_EQ(run_verify(*repo, ms[i].backup_id(), 2).value().damaged_size(), 0);
  }
  cairn::v1::PruneRequest none;
  EXPECT_EQ(run_prune(*repo, none, {}).error(), Errc::invalid_argument);
  cairn::v1::PruneRequest del;
  del.add_delete_ids(ms[0].backup_id());
  EXPECT_EQ(run_prune(*repo, del, {}).error(), Errc::not_found);
  del.clear_delete_ids();
  del.add_delete_ids("vol/" + ms[2].backup_id());
  ASSERT_TRUE(run_prune(*repo, del, {}));
  EXPECT_EQ(restore(*repo, ms[3]), images[3]);
}

// GC while a backup runs: the chunks it uploaded are younger than its lock and stay.
TEST(GcSafety, FreshUploadsOfARunningBackupSurviveGc) {
  MemBlobStore store;
  auto repo = init_repo(store);
  FakeSource src(8 * kCs);
  src.fill_random(0, 8 * kCs, 3);
  int puts = 0;
  bool ran = false;
  store.on_op = [&](std::string_view op, const std::string& key) {
    if (op != "put" || key.rfind("chunks/", 0) != 0) return;
    store.now_s += 10;
    if (++puts == 5 && !ran) {
      ran = true;
      auto saved = std::move(store.on_op);
      auto gc = collect_garbage(*repo, {});
      EXPECT_TRUE(gc);
      EXPECT_EQ(gc.value().chunks_deleted, 0u);
      store.on_op = std::move(saved);
    }
  };
  src.snapshot("s1");
  BackupOptions opts;
  opts.volume = "vol";
  opts.snapshot = "s1";
  opts.threads = 1;
  auto m = run_backup(*repo, src, opts);
  store.on_op = nullptr;
  ASSERT_TRUE(m);
  EXPECT_TRUE(ran);
  EXPECT_EQ(run_verify(*repo, "", 1).value().damaged_size(), 0);
  EXPECT_EQ(restore(*repo, m.value()), src.image());
}

// Prune of the backup a running incremental builds on is deferred.
TEST(GcSafety, PruneDefersTheParentOfARunningBackup) {
  MemBlobStore store;
  auto repo = init_repo(store);
  FakeSource src(8 * kCs);
  src.fill_random(0, 8 * kCs, 4);
  auto full = backup(*repo, src, "s1");
  src.fill_random(0, 100, 5);
  cairn::v1::PruneResponse during;
  store.now_s += 100;
  src.snapshot("s2");
  BackupOptions opts;
  opts.volume = "vol";
  opts.snapshot = "s2";
  opts.on_started = [&](const std::string&) {
    cairn::v1::PruneRequest req;
    req.add_delete_ids(full.backup_id());
    auto r = run_prune(*repo, req, {});
    ASSERT_TRUE(r);
    during = r.value();
  };
  auto incr = run_backup(*repo, src, opts);
  ASSERT_TRUE(incr);
  EXPECT_EQ(incr.value().parent_id(), full.backup_id());
  ASSERT_EQ(during.deferred_size(), 1);
  EXPECT_EQ(during.removed_size(), 0);
  EXPECT_EQ(during.chunks_deleted(), 0u);
  // Now nothing runs: the delete goes through and the incremental still restores whole.
  cairn::v1::PruneRequest req;
  req.add_delete_ids(full.backup_id());
  store.now_s += 100;
  auto r = run_prune(*repo, req, {});
  ASSERT_TRUE(r);
  EXPECT_EQ(r.value().removed_size(), 1);
  EXPECT_EQ(r.value().chunks_deleted(), 1u);  // only chunk 0's old version
  EXPECT_EQ(restore(*repo, incr.value()), src.image());
}

// A backup that found a chunk stored by another backup, which a GC then removes: the
// backup notices the overlapping GC and stores the chunk again before it finishes.
TEST(GcSafety, ChunkFoundByLookupAndDeletedByAConcurrentGcIsStoredAgain) {
  MemBlobStore store;
  auto repo = init_repo(store);
  FakeSource other(4 * kCs), src(4 * kCs);
  other.fill_random(0, 4 * kCs, 6);
  src.fill_random(0, 4 * kCs, 6);  // the same data: every chunk deduplicates
  auto mo = backup(*repo, other, "s1", "other");
  store.now_s += 1000;
  bool ran = false;
  int heads = 0;
  // Before the second lookup: the first one found chunk 0 stored.
  store.on_op = [&](std::string_view op, const std::string& key) {
    if (op == "head" && key.rfind("chunks/", 0) == 0 && ++heads == 2) {
      ran = true;
      auto saved = std::move(store.on_op);
      store.now_s += 10;
      cairn::v1::PruneRequest req;
      req.add_delete_ids(mo.backup_id());
      auto r = run_prune(*repo, req, {});
      ASSERT_TRUE(r);
      EXPECT_EQ(r.value().chunks_deleted(), 4u);
      store.on_op = std::move(saved);
    }
  };
  src.snapshot("s1");
  BackupOptions opts;
  opts.volume = "vol";
  opts.snapshot = "s1";
  opts.threads = 1;
  auto m = run_backup(*repo, src, opts);
  store.on_op = nullptr;
  ASSERT_TRUE(m);
  EXPECT_TRUE(ran);
  EXPECT_EQ(run_verify(*repo, "", 1).value().damaged_size(), 0);
  EXPECT_EQ(restore(*repo, m.value()), src.image());
}

}  // namespace
}  // namespace cairn::backup
