// DirtyMap: marking, clearing and scanning in memory, and what the file keeps across a
// reopen (the map is rebuilt from the file alone, as after a crash of the primary).
#include "replication/dirty_map.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "temp_dir.h"

namespace cairn::replication {
namespace {

constexpr uint64_t kE = DirtyMap::kExtentBytes;
constexpr uint64_t kPage = 4096;
constexpr uint64_t kExtentsPerPage = kPage * 8;

std::unique_ptr<DirtyMap> must_open(const std::string& path, uint64_t size_bytes) {
  auto m = DirtyMap::open(path, size_bytes);
  EXPECT_TRUE(m) << m.error().message();
  return m ? std::move(m.value()) : nullptr;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::vector<uint64_t> dirty(const DirtyMap& m) {
  std::vector<uint64_t> out;
  for (auto e = m.next(0); e; e = m.next(*e + 1)) out.push_back(*e);
  return out;
}

class DirtyMapTest : public ::testing::Test {
 protected:
  std::string path(const std::string& name = "map") const { return dir_.path() + "/" + name; }
  cairn::test::TempDir dir_;
};

TEST_F(DirtyMapTest, NewMapIsClearAndHasAHeader) {
  auto m = must_open(path(), 10 * kE + 1);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->extents(), 11u);
  EXPECT_EQ(m->count(), 0u);
  EXPECT_FALSE(m->next(0));
  EXPECT_EQ(m->path(), path());

  const std::string bytes = read_file(path());
  ASSERT_EQ(bytes.size(), 2 * kPage);  // header + one bitmap page
  EXPECT_EQ(bytes.substr(0, 8), "CAIRNDRT");
  uint32_t version = 0;
  uint64_t extents = 0, extent_bytes = 0;
  std::memcpy(&version, bytes.data() + 8, 4);
  std::memcpy(&extents, bytes.data() + 12, 8);
  std::memcpy(&extent_bytes, bytes.data() + 20, 8);
  EXPECT_EQ(version, 1u);
  EXPECT_EQ(extents, 11u);
  EXPECT_EQ(extent_bytes, kE);
  EXPECT_EQ(bytes.find_first_not_of('\0', 28), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(path() + ".tmp"));
}

TEST_F(DirtyMapTest, MarkClearNextCount) {
  auto m = must_open(path(), 200 * kE);
  ASSERT_TRUE(m);
  ASSERT_TRUE(m->mark(kE - 1, 2));  // straddles extents 0 and 1
  ASSERT_TRUE(m->mark(70 * kE, 3 * kE));  // 70..72
  ASSERT_TRUE(m->mark(63 * kE + 5, kE));  // 63 and 64: across a word boundary
  ASSERT_TRUE(m->mark(150 * kE, 0));      // empty: nothing
  EXPECT_EQ(dirty(*m), (std::vector<uint64_t>{0, 1, 63, 64, 70, 71, 72}));
  EXPECT_EQ(m->count(), 7u);
  EXPECT_TRUE(m->test(63));
  EXPECT_FALSE(m->test(62));
  EXPECT_FALSE(m->test(100000));
  EXPECT_EQ(m->next(2), 63u);
  EXPECT_EQ(m->next(65), 70u);
  EXPECT_FALSE(m->next(73));
  EXPECT_FALSE(m->next(1u << 30));

  // Marking dirty extents again changes nothing.
  ASSERT_TRUE(m->mark(0, 2 * kE));
  EXPECT_EQ(m->count(), 7u);

  m->clear(64);
  m->clear(64);   // twice: no effect
  m->clear(5);    // clear already
  m->clear(500);  // past the end: ignored
  EXPECT_EQ(m->count(), 6u);
  EXPECT_FALSE(m->test(64));
  EXPECT_EQ(m->next(64), 70u);
  ASSERT_TRUE(m->sync());
}

TEST_F(DirtyMapTest, MarkClampsAtTheVolumeEnd) {
  auto m = must_open(path(), 3 * kE + kE / 2);  // 4 extents, the last one partial
  ASSERT_TRUE(m);
  ASSERT_EQ(m->extents(), 4u);
  ASSERT_TRUE(m->mark(3 * kE, 100 * kE));
  EXPECT_EQ(dirty(*m), (std::vector<uint64_t>{3}));
  ASSERT_TRUE(m->mark(4 * kE, kE));  // wholly past the end
  ASSERT_TRUE(m->mark(UINT64_MAX - 10, 100));  // would overflow
  EXPECT_EQ(m->count(), 1u);
  ASSERT_TRUE(m->mark(2 * kE, UINT64_MAX));
  EXPECT_EQ(dirty(*m), (std::vector<uint64_t>{2, 3}));

  m.reset();
  m = must_open(path(), 3 * kE + kE / 2);
  ASSERT_TRUE(m);
  EXPECT_EQ(dirty(*m), (std::vector<uint64_t>{2, 3}));
}

TEST_F(DirtyMapTest, MarksSurviveReopen) {
  const uint64_t size = 3 * kExtentsPerPage * kE + 7 * kE;  // four bitmap pages
  {
    auto m = must_open(path(), size);
    ASSERT_TRUE(m);
    ASSERT_TRUE(m->mark(0, kE));
    ASSERT_TRUE(m->mark((kExtentsPerPage - 1) * kE, 2 * kE));  // across a page boundary
    ASSERT_TRUE(m->mark((3 * kExtentsPerPage + 6) * kE, kE));  // the last extent
  }
  EXPECT_EQ(read_file(path()).size(), 5 * kPage);
  auto m = must_open(path(), size);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->extents(), 3 * kExtentsPerPage + 7);
  EXPECT_EQ(dirty(*m), (std::vector<uint64_t>{0, kExtentsPerPage - 1, kExtentsPerPage,
                                              3 * kExtentsPerPage + 6}));
  EXPECT_EQ(m->count(), 4u);
}

TEST_F(DirtyMapTest, ClearsSurviveReopenAfterSync) {
  {
    auto m = must_open(path(), 100 * kE);
    ASSERT_TRUE(m);
    ASSERT_TRUE(m->mark(0, 10 * kE));
    m->clear(3);
    m->clear(7);
    ASSERT_TRUE(m->sync());
    m->clear(9);  // never synced: may come back
  }
  auto m = must_open(path(), 100 * kE);
  ASSERT_TRUE(m);
  EXPECT_FALSE(m->test(3));
  EXPECT_FALSE(m->test(7));
  for (uint64_t e : {0, 1, 2, 4, 5, 6, 8}) EXPECT_TRUE(m->test(e)) << e;
  // An extent may be copied twice, never zero times: whatever 9 is, 8 is still dirty.
  EXPECT_GE(m->count(), 7u);
}

TEST_F(DirtyMapTest, MarkPersistsEarlierClears) {
  {
    auto m = must_open(path(), 100 * kE);
    ASSERT_TRUE(m);
    ASSERT_TRUE(m->mark(0, 4 * kE));
    m->clear(1);
    ASSERT_TRUE(m->mark(50 * kE, kE));  // writes the page holding the clear too
  }
  auto m = must_open(path(), 100 * kE);
  ASSERT_TRUE(m);
  EXPECT_EQ(dirty(*m), (std::vector<uint64_t>{0, 2, 3, 50}));
}

TEST_F(DirtyMapTest, GrowsOnReopen) {
  {
    auto m = must_open(path(), 10 * kE);
    ASSERT_TRUE(m);
    ASSERT_TRUE(m->mark(9 * kE, kE));
  }
  const uint64_t grown = 2 * kExtentsPerPage + 1;  // three bitmap pages
  {
    auto m = must_open(path(), grown * kE);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->extents(), grown);
    EXPECT_EQ(dirty(*m), (std::vector<uint64_t>{9}));  // new extents clear
    ASSERT_TRUE(m->mark((grown - 1) * kE, kE));
  }
  EXPECT_EQ(read_file(path()).size(), 4 * kPage);
  {
    auto m = must_open(path(), grown * kE);
    ASSERT_TRUE(m);
    EXPECT_EQ(dirty(*m), (std::vector<uint64_t>{9, grown - 1}));
  }
  // Opened for a smaller volume, it keeps its size (volumes only grow).
  auto m = must_open(path(), 5 * kE);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->extents(), grown);
  EXPECT_EQ(dirty(*m), (std::vector<uint64_t>{9, grown - 1}));
}

TEST_F(DirtyMapTest, GrowsWithinTheLastPage) {
  {
    auto m = must_open(path(), 3 * kE);
    ASSERT_TRUE(m);
    ASSERT_TRUE(m->mark(0, 3 * kE));
  }
  auto m = must_open(path(), 130 * kE);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->extents(), 130u);
  EXPECT_EQ(dirty(*m), (std::vector<uint64_t>{0, 1, 2}));
  ASSERT_TRUE(m->mark(129 * kE, kE));
  EXPECT_EQ(m->count(), 4u);
}

TEST_F(DirtyMapTest, CorruptFilesAreRefused) {
  auto expect_corrupt = [&](const std::string& bytes, const char* what) {
    write_file(path(), bytes);
    auto m = DirtyMap::open(path(), 10 * kE);
    ASSERT_FALSE(m) << what;
    EXPECT_EQ(m.error(), Errc::corrupt) << what;
  };
  expect_corrupt("", "empty");
  expect_corrupt("hello, not a dirty map", "short");
  expect_corrupt(std::string(3 * kPage, 'x'), "garbage");

  // A valid map to damage one field at a time.
  {
    auto m = must_open(path("good"), 10 * kE);
    ASSERT_TRUE(m);
    ASSERT_TRUE(m->mark(0, kE));
  }
  const std::string good = read_file(path("good"));
  ASSERT_EQ(good.size(), 2 * kPage);
  std::string bad = good;
  bad[0] = 'X';
  expect_corrupt(bad, "magic");
  bad = good;
  bad[8] = 2;
  expect_corrupt(bad, "version");
  bad = good;
  bad[21] = 0x7f;  // extent bytes
  expect_corrupt(bad, "extent size");
  bad = good;
  bad[12 + 3] = 1;  // 2^24 + 10 extents: longer than the file
  expect_corrupt(bad, "extents");
  expect_corrupt(good.substr(0, kPage + 100), "truncated bitmap");
  bad = good;
  bad[kPage + 2] = 1;  // extent 16 of a 10-extent map
  expect_corrupt(bad, "bits past the end");

  // The damaged file is left alone.
  EXPECT_EQ(read_file(path()), bad);
}

TEST_F(DirtyMapTest, MarkAll) {
  const uint64_t extents = kExtentsPerPage + 3;
  {
    auto m = must_open(path(), extents * kE);
    ASSERT_TRUE(m);
    ASSERT_TRUE(m->mark_all());
    EXPECT_EQ(m->count(), extents);
    EXPECT_EQ(m->next(0), 0u);
    EXPECT_EQ(m->next(extents - 1), extents - 1);
    EXPECT_FALSE(m->next(extents));
    m->clear(5);
    ASSERT_TRUE(m->mark_all());
    EXPECT_EQ(m->count(), extents);
  }
  auto m = must_open(path(), extents * kE);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->count(), extents);
  EXPECT_TRUE(m->test(5));
}

TEST_F(DirtyMapTest, EmptyVolume) {
  auto m = must_open(path(), 0);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->extents(), 0u);
  ASSERT_TRUE(m->mark(0, kE));
  ASSERT_TRUE(m->mark_all());
  EXPECT_EQ(m->count(), 0u);
  EXPECT_FALSE(m->next(0));
  EXPECT_EQ(read_file(path()).size(), kPage);
}

TEST_F(DirtyMapTest, Remove) {
  auto m = must_open(path(), 10 * kE);
  ASSERT_TRUE(m);
  ASSERT_TRUE(m->mark(0, kE));
  ASSERT_TRUE(m->remove());
  EXPECT_FALSE(std::filesystem::exists(path()));
  // Usable in memory only.
  EXPECT_TRUE(m->test(0));
  ASSERT_TRUE(m->mark(kE, kE));
  m->clear(0);
  ASSERT_TRUE(m->sync());
  EXPECT_EQ(dirty(*m), (std::vector<uint64_t>{1}));
  EXPECT_FALSE(std::filesystem::exists(path()));
  ASSERT_TRUE(m->remove());  // again: nothing to do

  // A new map in its place starts clear.
  auto fresh = must_open(path(), 10 * kE);
  ASSERT_TRUE(fresh);
  EXPECT_EQ(fresh->count(), 0u);
}

TEST_F(DirtyMapTest, MissingDirectoryIsAnIoError) {
  auto m = DirtyMap::open(path("no/such/dir"), 10 * kE);
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error(), Errc::io_error);
}

}  // namespace
}  // namespace cairn::replication
