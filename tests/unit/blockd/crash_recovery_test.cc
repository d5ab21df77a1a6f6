// Crash recovery over SimBlockDevice: a seeded random workload, a power cut that drops or
// tears unsynced writes, a reopen with a fresh RocksDB handle (the old one closed without a
// flush: like a killed process, whose WAL writes reached the OS), and a full verification:
//   - a sector written and then flushed (or FUA-written) reads exactly that value unless it
//     was written again later;
//   - any other sector reads its durable value or one written since, zeros included;
//   - never bytes of another sector, volume or volume incarnation (every 8-byte word of a
//     sector encodes volume tag, sector index, generation and its position).
// Seed: printed; replay with CAIRN_SEED=<n>.
#include <gtest/gtest.h>
#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <stdlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "test_support.h"
#include "blockd/sim_block_device.h"
#include "blockd/volume_store.h"
#include "common/assert.h"
#include "common/when_all.h"
#include "store_impl.h"

namespace cairn::blockd {
namespace {

using namespace cairn::blockd::test;

constexpr uint64_t kSector = 512;
constexpr uint64_t kVolBytes = 1 << 20;
constexpr uint64_t kSectors = kVolBytes / kSector;
constexpr int kVolumes = 2;
constexpr int kCycles = 6;  // crash + recover + verify rounds per test

// Sector contents: word i = base ^ (i * K), base = magic | tag | sector | generation.
constexpr uint64_t kMagic = 0xC5ull << 56;
constexpr uint64_t kWordMix = 0x9E3779B97F4A7C15ull;

void fill_sector(uint8_t* p, uint16_t tag, uint64_t sector, uint32_t gen) {
  const uint64_t base = kMagic | (uint64_t{tag} << 40) | ((sector & 0xffff) << 24) | (gen & 0xffffff);
  for (uint64_t i = 0; i < kSector / 8; ++i) {
    uint64_t w = base ^ (i * kWordMix);
    std::memcpy(p + i * 8, &w, 8);
  }
}

// Generation the sector holds (0 = zeros), or -1 with `why` for foreign or torn bytes.
int64_t decode_sector(const uint8_t* p, uint16_t tag, uint64_t sector, std::string* why) {
  if (std::all_of(p, p + kSector, [](uint8_t b) { return b == 0; })) return 0;
  uint64_t base;
  std::memcpy(&base, p, 8);
  for (uint64_t i = 1; i < kSector / 8; ++i) {
    uint64_t w;
    std::memcpy(&w, p + i * 8, 8);
    if ((w ^ (i * kWordMix)) != base) {
      *why = "sector mixes bytes of different writes (word " + std::to_string(i) + ")";
      return -1;
    }
  }
  if ((base & (0xffull << 56)) != kMagic) {
    *why = "not a pattern sector";
    return -1;
  }
  const uint16_t got_tag = static_cast<uint16_t>(base >> 40);
  const uint64_t got_sector = (base >> 24) & 0xffff;
  if (got_tag != tag || got_sector != (sector & 0xffff)) {
    *why = "bytes of tag " + std::to_string(got_tag) + " sector " + std::to_string(got_sector);
    return -1;
  }
  return static_cast<int64_t>(base & 0xffffff);
}

struct SectorModel {
  uint32_t durable = 0;             // value at the last flush (or FUA)
  std::vector<uint32_t> since;      // values written after it (0 = zeroed)
  uint32_t current = 0;             // what a read returns now
};

struct VolModel {
  std::string name;
  uint16_t tag = 0;
  std::vector<SectorModel> sectors = std::vector<SectorModel>(kSectors);
  std::shared_ptr<Volume> handle;
};

struct CrashRig {
  TempDir dir;
  std::unique_ptr<SimBlockDevice> disk;
  VolumeStore::Options options;
  std::unique_ptr<VolumeStore> store;

  CrashRig(uint32_t alignment, uint64_t capacity_bytes) {
    SimBlockDevice::Options so;
    so.alignment_bytes = alignment;
    disk = std::make_unique<SimBlockDevice>(so);
    options.data_dir = dir.path();
    options.capacity_bytes = capacity_bytes;
    options.maintenance_interval_ms = 0;  // on demand only: the run is deterministic
  }
  void open() {
    auto s = VolumeStore::open(options, disk->attach());
    ASSERT_TRUE(s) << s.error().message();
    store = std::move(s.value());
  }
  StoreImpl& impl() { return dynamic_cast<StoreImpl&>(*store); }
};

class Workload {
 public:
  Workload(CrashRig& rig, uint64_t seed) : rig_(rig), rng_(seed) {}

  void create_all() {
    for (int i = 0; i < kVolumes; ++i) {
      vols_[i].name = "vol" + std::to_string(i);
      recreate(i, false);
    }
  }

  // One random operation; false (with a gtest failure) on an engine error.
  void step() {
    const int i = static_cast<int>(rng_() % kVolumes);
    VolModel& v = vols_[i];
    const uint64_t r = rng_() % 100;
    if (r < 55) return do_write(v);
    if (r < 70) return do_zero(v, /*release=*/true);
    if (r < 75) return do_zero(v, /*release=*/false);
    if (r < 85) return do_flush(v);
    if (r < 95) return check_current(v);
    if (r < 97) {
      ASSERT_TRUE(rig_.impl().run_maintenance_round());
      return;
    }
    recreate(i, true);
  }

  void crash_and_verify(CrashMode mode, uint64_t crash_seed) {
    rig_.disk->crash(mode, crash_seed);
    for (auto& v : vols_) v.handle.reset();
    rig_.store.reset();  // the dead device fails everything the old store still tries
    rig_.open();
    if (::testing::Test::HasFatalFailure()) return;
    // The invariant behind tenant isolation, checked on the durable image right after
    // recovery: every physical extent no mapping references reads as zeros.
    const std::vector<uint64_t> mapped = rig_.impl().mapped_physical_extents();
    std::vector<uint8_t> ext(kExtentSizeBytes);
    for (uint64_t p = 0; p < rig_.disk->size_bytes() / kExtentSizeBytes; ++p) {
      if (std::binary_search(mapped.begin(), mapped.end(), p)) continue;
      rig_.disk->peek(p * kExtentSizeBytes, ext.size(), ext.data(), /*durable=*/true);
      ASSERT_TRUE(std::all_of(ext.begin(), ext.end(), [](uint8_t b) { return b == 0; }))
          << "unmapped physical extent " << p << " holds stale bytes after recovery";
    }
    for (auto& v : vols_) {
      auto h = rig_.store->open_volume(v.name);
      ASSERT_TRUE(h) << v.name << ": " << h.error().message();
      v.handle = h.value();
      std::vector<uint8_t> buf(kVolBytes);
      ASSERT_TRUE(run_sync(v.handle->read(0, kVolBytes, buf.data())));
      for (uint64_t s = 0; s < kSectors; ++s) {
        std::string why;
        int64_t gen = decode_sector(buf.data() + s * kSector, v.tag, s, &why);
        ASSERT_GE(gen, 0) << v.name << " sector " << s << ": " << why;
        SectorModel& m = v.sectors[s];
        const bool allowed = static_cast<uint32_t>(gen) == m.durable ||
                             std::find(m.since.begin(), m.since.end(), gen) != m.since.end();
        ASSERT_TRUE(allowed) << v.name << " sector " << s << " reads generation " << gen
                             << ", durable " << m.durable << ", " << m.since.size()
                             << " written since";
        // What survived is now on disk and synced by recovery: the new baseline.
        m.durable = m.current = static_cast<uint32_t>(gen);
        m.since.clear();
      }
    }
    ++crashes_;
  }

  int crashes() const { return crashes_; }

 private:
  void do_write(VolModel& v) {
    uint64_t sectors = 1 + rng_() % 64;
    uint64_t first = rng_() % kSectors;
    if (rng_() % 2) {  // whole 4 KiB blocks half of the time
      first &= ~uint64_t{7};
      sectors = (sectors + 7) & ~uint64_t{7};
    }
    sectors = std::min(sectors, kSectors - first);
    const bool fua = rng_() % 10 == 0;
    const uint32_t gen = ++gen_;
    std::vector<uint8_t> buf(sectors * kSector + 1);
    uint8_t* data = buf.data() + (rng_() % 2);  // misaligned buffers too
    for (uint64_t k = 0; k < sectors; ++k) fill_sector(data + k * kSector, v.tag, first + k, gen);
    Status st = run_sync(v.handle->write(first * kSector, sectors * kSector, data, fua));
    ASSERT_TRUE(st) << st.error().message();
    for (uint64_t k = 0; k < sectors; ++k) record(v.sectors[first + k], gen, fua);
  }

  void do_zero(VolModel& v, bool release) {
    uint64_t sectors = 1 + rng_() % 256;  // up to two extents
    uint64_t first = rng_() % kSectors;
    if (rng_() % 3 == 0) {  // whole extents
      first &= ~uint64_t{127};
      sectors = 128 * (1 + rng_() % 2);
    }
    sectors = std::min(sectors, kSectors - first);
    const bool fua = rng_() % 10 == 0;
    Status st = release
                    ? run_sync(v.handle->trim(first * kSector, sectors * kSector, fua))
                    : run_sync(v.handle->write_zeroes(first * kSector, sectors * kSector, false, fua));
    ASSERT_TRUE(st) << st.error().message();
    for (uint64_t k = 0; k < sectors; ++k) record(v.sectors[first + k], 0, fua);
  }

  void do_flush(VolModel& v) {
    ASSERT_TRUE(run_sync(v.handle->flush()));
    for (auto& vol : vols_)  // a flush covers every volume
      for (auto& m : vol.sectors) {
        m.durable = m.current;
        m.since.clear();
      }
  }

  void check_current(VolModel& v) {
    const uint64_t first = rng_() % kSectors;
    const uint64_t sectors = std::min<uint64_t>(1 + rng_() % 300, kSectors - first);
    std::vector<uint8_t> buf(sectors * kSector + 1);
    uint8_t* data = buf.data() + (rng_() % 2);
    ASSERT_TRUE(run_sync(v.handle->read(first * kSector, sectors * kSector, data)));
    for (uint64_t k = 0; k < sectors; ++k) {
      std::string why;
      int64_t gen = decode_sector(data + k * kSector, v.tag, first + k, &why);
      ASSERT_EQ(gen, v.sectors[first + k].current) << v.name << " sector " << first + k << why;
    }
  }

  void record(SectorModel& m, uint32_t value, bool durable) {
    m.current = value;
    if (durable) {
      m.durable = value;
      m.since.clear();
    } else {
      m.since.push_back(value);
    }
  }

  // Deletes (if it exists) and creates volume i again: a new incarnation that must never
  // show the old one's bytes.
  void recreate(int i, bool existing) {
    VolModel& v = vols_[i];
    if (existing) {
      v.handle.reset();
      ASSERT_TRUE(rig_.store->delete_volume(v.name, false));
    }
    ASSERT_TRUE(rig_.store->create_volume(v.name, kVolBytes));
    v.tag = static_cast<uint16_t>(++tags_);
    v.sectors.assign(kSectors, SectorModel{});
    v.handle = rig_.store->open_volume(v.name).value();
  }

  CrashRig& rig_;
  std::mt19937_64 rng_;
  VolModel vols_[kVolumes];
  uint32_t gen_ = 0;
  uint16_t tags_ = 0;
  int crashes_ = 0;
};

void run_crash_cycles(CrashMode mode, uint32_t alignment, uint64_t default_seed) {
  const uint64_t seed = test_seed(default_seed);
  // 2 volumes of 16 extents in 40 extents: trims and deletes must recycle space.
  CrashRig rig(alignment, 40 * kExtentSizeBytes);
  rig.open();
  ASSERT_TRUE(rig.store);
  Workload w(rig, seed);
  w.create_all();
  std::mt19937_64 rng(seed ^ 0x5eed);
  for (int cycle = 0; cycle < kCycles; ++cycle) {
    const int steps = 100 + static_cast<int>(rng() % 300);
    for (int i = 0; i < steps; ++i) {
      w.step();
      if (::testing::Test::HasFatalFailure()) {
        ADD_FAILURE() << "cycle " << cycle << " step " << i << " seed " << seed;
        return;
      }
    }
    w.crash_and_verify(mode, rng());
    if (::testing::Test::HasFatalFailure()) {
      ADD_FAILURE() << "after crash " << cycle << " seed " << seed;
      return;
    }
  }
  EXPECT_EQ(w.crashes(), kCycles);
}

TEST(CrashRecovery, RandomWorkloadLosingAllUnsyncedWrites) {
  run_crash_cycles(CrashMode::drop_unsynced, 512, 1);
}

TEST(CrashRecovery, RandomWorkloadKeepingARandomSubset) {
  run_crash_cycles(CrashMode::keep_random_subset, 512, 2);
}

TEST(CrashRecovery, RandomWorkloadWithTornSectors) {
  run_crash_cycles(CrashMode::tear_sectors, 512, 3);
}

TEST(CrashRecovery, RandomWorkloadWithTornSectorsOn4KiBDevice) {
  run_crash_cycles(CrashMode::tear_sectors, 4096, 4);
}

TEST(CrashRecovery, SimDeviceKeepsSyncedAndFuaWritesOnly) {
  SimBlockDevice d({.size_bytes = 8192});
  alignas(512) uint8_t a[512], b[512], c[512], got[512];
  std::memset(a, 0xA, 512);
  std::memset(b, 0xB, 512);
  std::memset(c, 0xC, 512);
  auto same = [](const uint8_t* x, const uint8_t* y) { return std::memcmp(x, y, 512) == 0; };
  ASSERT_TRUE(run_sync(d.write(a, 512, 0, false)));
  ASSERT_TRUE(run_sync(d.sync()));
  ASSERT_TRUE(run_sync(d.write(b, 512, 0, false)));     // lost
  ASSERT_TRUE(run_sync(d.write(c, 512, 512, true)));    // FUA: kept
  ASSERT_TRUE(run_sync(d.punch_hole(1024, 512)));
  d.peek(0, 512, got);
  EXPECT_TRUE(same(got, b));
  auto next = d.attach();
  d.crash(CrashMode::drop_unsynced, 1);
  EXPECT_FALSE(run_sync(d.read(got, 512, 0))) << "a handle from before the crash works";
  EXPECT_FALSE(run_sync(next->read(got, 512, 0)));
  auto fresh = d.attach();
  ASSERT_TRUE(run_sync(fresh->read(got, 512, 0)));
  EXPECT_TRUE(same(got, a));
  ASSERT_TRUE(run_sync(fresh->read(got, 512, 512)));
  EXPECT_TRUE(same(got, c));
  // Injected failures.
  fresh->fail_next_ops(2);
  EXPECT_FALSE(run_sync(fresh->sync()));
  EXPECT_FALSE(run_sync(fresh->read(got, 512, 0)));
  EXPECT_TRUE(run_sync(fresh->read(got, 512, 0)));
}

TEST(CrashRecovery, UnflushedTrimAndDeleteLeaveNoStaleBytesAfterCrash) {
  CrashRig rig(512, 4 << 20);
  rig.open();
  ASSERT_TRUE(rig.store);
  ASSERT_TRUE(rig.store->create_volume("keep", kVolBytes));
  ASSERT_TRUE(rig.store->create_volume("gone", kVolBytes));
  {
    auto keep = rig.store->open_volume("keep").value();
    auto gone = rig.store->open_volume("gone").value();
    std::vector<uint8_t> data(kVolBytes, 0x3C);
    ASSERT_TRUE(run_sync(keep->write(0, kVolBytes, data.data(), false)));
    ASSERT_TRUE(run_sync(gone->write(0, kVolBytes, data.data(), false)));
    ASSERT_TRUE(run_sync(keep->flush()));
    // Freed but never promoted (no round ran): quarantined extents still hold 0x3C.
    ASSERT_TRUE(run_sync(keep->trim(0, kVolBytes / 2, false)));
  }
  ASSERT_TRUE(rig.store->delete_volume("gone", false));
  EXPECT_GT(rig.impl().allocator().quarantined_extents(), 0u);
  rig.disk->crash(CrashMode::drop_unsynced, 9);
  rig.store.reset();
  rig.open();
  ASSERT_TRUE(rig.store);
  // Recovery punched every unmapped extent: only keep's second half holds bytes.
  std::vector<uint8_t> raw(rig.disk->size_bytes());
  rig.disk->peek(0, raw.size(), raw.data(), /*durable=*/true);
  EXPECT_EQ(static_cast<uint64_t>(std::count(raw.begin(), raw.end(), 0x3C)), kVolBytes / 2);
  EXPECT_EQ(rig.store->list_volumes().size(), 1u);
  EXPECT_EQ(rig.store->stats().used_bytes, kVolBytes / 2);
}

TEST(CrashRecovery, FuaWriteIsDurableWithoutFlush) {
  CrashRig rig(512, 4 << 20);
  rig.open();
  ASSERT_TRUE(rig.store);
  ASSERT_TRUE(rig.store->create_volume("f", kVolBytes));
  std::vector<uint8_t> data(3 * 4096 + 512, 0x61), got(data.size());
  {
    auto v = rig.store->open_volume("f").value();
    ASSERT_TRUE(run_sync(v->write(4096 + 512, data.size(), data.data(), true)));
  }
  rig.disk->crash(CrashMode::drop_unsynced, 1);
  rig.store.reset();
  rig.open();
  ASSERT_TRUE(rig.store);
  auto v = rig.store->open_volume("f").value();
  ASSERT_TRUE(run_sync(v->read(4096 + 512, got.size(), got.data())));
  EXPECT_EQ(got, data);
}

TEST(CrashRecovery, InterruptedDeleteIsFinishedAtOpen) {
  CrashRig rig(512, 4 << 20);
  rig.open();
  ASSERT_TRUE(rig.store);
  ASSERT_TRUE(rig.store->create_volume("half", kVolBytes));
  uint64_t id = rig.store->get_volume("half").value().id;
  {
    auto v = rig.store->open_volume("half").value();
    std::vector<uint8_t> data(kVolBytes, 0x7E);
    ASSERT_TRUE(run_sync(v->write(0, kVolBytes, data.data(), false)));
    ASSERT_TRUE(run_sync(v->flush()));
  }
  rig.store.reset();
  {  // A delete that died after marking the record: flag set, every extent key still there.
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::Options(), rig.dir.path() + "/meta", &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    std::string value;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), volume_key("half"), &value).ok());
    VolumeRecord rec = decode_volume_record(value).value();
    rec.deleting = true;
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), volume_key("half"), encode_volume_record(rec)).ok());
  }
  rig.open();
  ASSERT_TRUE(rig.store);
  EXPECT_FALSE(rig.store->get_volume("half"));
  EXPECT_EQ(rig.store->stats().used_bytes, 0u);
  std::vector<uint8_t> raw(rig.disk->size_bytes());
  rig.disk->peek(0, raw.size(), raw.data(), /*durable=*/true);
  EXPECT_EQ(std::count(raw.begin(), raw.end(), 0x7E), 0);
  ASSERT_TRUE(rig.store->create_volume("half", kVolBytes));  // the name is free
  EXPECT_GT(rig.store->get_volume("half").value().id, id);
  rig.store.reset();
  rocksdb::DB* raw_db = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(rocksdb::Options(), rig.dir.path() + "/meta", &raw_db).ok());
  std::unique_ptr<rocksdb::DB> db(raw_db);
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
  it->Seek(extent_key_prefix(id));
  EXPECT_FALSE(it->Valid() && it->key().starts_with(extent_key_prefix(id)))
      << "extent keys of the deleted volume survived";
}

}  // namespace
}  // namespace cairn::blockd
