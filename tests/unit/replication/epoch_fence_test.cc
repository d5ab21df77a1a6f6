// EpochFence: the replica's persistent memory of each volume's highest admitted epoch.
#include "replication/epoch_fence.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include "temp_dir.h"

namespace cairn::replication {
namespace {

std::unique_ptr<EpochFence> open_ok(const std::string& dir) {
  auto f = EpochFence::open(dir);
  EXPECT_TRUE(f) << (f ? "" : f.error().message());
  return f ? std::move(f).value() : nullptr;
}

std::vector<std::filesystem::path> files_in(const std::string& dir) {
  std::vector<std::filesystem::path> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) out.push_back(e.path());
  return out;
}

TEST(EpochFence, AdmitsAHigherEpochAndKeepsItAcrossReopen) {
  test::TempDir dir;
  const std::string state = dir.path() + "/fence";  // created by open()
  {
    auto fence = open_ok(state);
    ASSERT_TRUE(fence);
    EXPECT_EQ(fence->epoch("vol"), 0u);
    ASSERT_TRUE(fence->admit("vol", 3));
    EXPECT_EQ(fence->epoch("vol"), 3u);
    ASSERT_TRUE(fence->admit("vol", 9));
    EXPECT_EQ(fence->epoch("vol"), 9u);
    ASSERT_TRUE(fence->admit("other", 2));
  }
  auto fence = open_ok(state);
  ASSERT_TRUE(fence);
  EXPECT_EQ(fence->epoch("vol"), 9u);
  EXPECT_EQ(fence->epoch("other"), 2u);
  EXPECT_EQ(fence->epoch("absent"), 0u);
}

TEST(EpochFence, RefusesAnOlderEpochAndChangesNothing) {
  test::TempDir dir;
  {
    auto fence = open_ok(dir.path());
    ASSERT_TRUE(fence);
    ASSERT_TRUE(fence->admit("vol", 5));
    Status st = fence->admit("vol", 4);
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error(), Errc::permission_denied);
    EXPECT_EQ(fence->epoch("vol"), 5u);
  }
  auto fence = open_ok(dir.path());
  ASSERT_TRUE(fence);
  EXPECT_EQ(fence->epoch("vol"), 5u);
}

TEST(EpochFence, AdmitsTheSameEpochAgain) {
  test::TempDir dir;
  auto fence = open_ok(dir.path());
  ASSERT_TRUE(fence);
  ASSERT_TRUE(fence->admit("vol", 5));
  EXPECT_TRUE(fence->admit("vol", 5));
  EXPECT_EQ(fence->epoch("vol"), 5u);
}

TEST(EpochFence, CurrentSaysWhetherAnEpochMayStillAct) {
  test::TempDir dir;
  auto fence = open_ok(dir.path());
  ASSERT_TRUE(fence);
  EXPECT_TRUE(fence->current("vol", 0));  // nothing admitted yet
  ASSERT_TRUE(fence->admit("vol", 4));
  EXPECT_FALSE(fence->current("vol", 3));
  EXPECT_TRUE(fence->current("vol", 4));
  EXPECT_TRUE(fence->current("vol", 5));
  EXPECT_TRUE(fence->current("other", 1));
}

TEST(EpochFence, ForgetDropsTheRecordDurably) {
  test::TempDir dir;
  {
    auto fence = open_ok(dir.path());
    ASSERT_TRUE(fence);
    ASSERT_TRUE(fence->admit("vol", 7));
    ASSERT_TRUE(fence->admit("keep", 2));
    ASSERT_TRUE(fence->forget("vol"));
    EXPECT_EQ(fence->epoch("vol"), 0u);
    EXPECT_TRUE(fence->current("vol", 1));
    EXPECT_TRUE(fence->forget("never-admitted"));
  }
  auto fence = open_ok(dir.path());
  ASSERT_TRUE(fence);
  EXPECT_EQ(fence->epoch("vol"), 0u);
  EXPECT_EQ(fence->epoch("keep"), 2u);
  EXPECT_TRUE(fence->admit("vol", 1));
}

TEST(EpochFence, AGarbageFileIsCorruptOnOpen) {
  test::TempDir dir;
  {
    auto fence = open_ok(dir.path());
    ASSERT_TRUE(fence);
    ASSERT_TRUE(fence->admit("vol", 7));
  }
  auto files = files_in(dir.path());
  ASSERT_EQ(files.size(), 1u);
  std::ofstream(files[0], std::ios::trunc) << "not an epoch";
  auto reopened = EpochFence::open(dir.path());
  ASSERT_FALSE(reopened);
  EXPECT_EQ(reopened.error(), Errc::corrupt);

  std::ofstream(files[0], std::ios::trunc) << "";  // empty is garbage too
  reopened = EpochFence::open(dir.path());
  ASSERT_FALSE(reopened);
  EXPECT_EQ(reopened.error(), Errc::corrupt);
}

TEST(EpochFence, AnyVolumeNameStaysOneFileInsideTheDirectory) {
  test::TempDir dir;
  const std::string state = dir.path() + "/fence";
  const std::vector<std::string> names = {"../escape", "a/b", ".hidden", "x%41", "sp ace",
                                          std::string("nul\0byte", 8)};
  {
    auto fence = open_ok(state);
    ASSERT_TRUE(fence);
    uint64_t e = 1;
    for (const auto& n : names) ASSERT_TRUE(fence->admit(n, e++)) << n;
  }
  EXPECT_EQ(files_in(dir.path()).size(), 1u);  // only the fence directory itself
  EXPECT_EQ(files_in(state).size(), names.size());
  auto fence = open_ok(state);
  ASSERT_TRUE(fence);
  uint64_t e = 1;
  for (const auto& n : names) EXPECT_EQ(fence->epoch(n), e++) << n;
}

TEST(EpochFenceIncarnation, AnotherIncarnationOfTheNameIsRefusedUntilForgotten) {
  cairn::test::TempDir dir;
  {
    auto fence = EpochFence::open(dir.path());
    ASSERT_TRUE(fence);
    ASSERT_TRUE(fence.value()->admit("vol", 3, 77));
    EXPECT_EQ(fence.value()->incarnation("vol"), 77u);
    EXPECT_TRUE(fence.value()->admit("vol", 3));      // unknown incarnation: the stored one
    EXPECT_TRUE(fence.value()->admit("vol", 4, 77));
    auto other = fence.value()->admit("vol", 1, 99);  // a new volume of the same name
    ASSERT_FALSE(other);
    EXPECT_EQ(other.error(), make_error_code(Errc::busy));
    EXPECT_EQ(fence.value()->epoch("vol"), 4u);
  }
  auto fence = EpochFence::open(dir.path());  // both survive a restart
  ASSERT_TRUE(fence);
  EXPECT_EQ(fence.value()->epoch("vol"), 4u);
  EXPECT_EQ(fence.value()->incarnation("vol"), 77u);
  ASSERT_TRUE(fence.value()->forget("vol"));
  EXPECT_TRUE(fence.value()->admit("vol", 1, 99));
  EXPECT_EQ(fence.value()->incarnation("vol"), 99u);
}

}  // namespace
}  // namespace cairn::replication
