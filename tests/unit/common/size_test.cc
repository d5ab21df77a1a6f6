#include "common/size.h"

#include <gtest/gtest.h>

namespace cairn {

TEST(Size, ParsesUnitsAsPowersOf1024) {
  EXPECT_EQ(parse_size_bytes("4096"), 4096u);
  EXPECT_EQ(parse_size_bytes("10G"), 10ull << 30);
  EXPECT_EQ(parse_size_bytes("512MiB"), 512ull << 20);
  EXPECT_EQ(parse_size_bytes("1t"), 1ull << 40);
}

TEST(Size, RejectsMalformedAndOverflow) {
  EXPECT_FALSE(parse_size_bytes(""));
  EXPECT_FALSE(parse_size_bytes("G"));
  EXPECT_FALSE(parse_size_bytes("10X"));
  EXPECT_FALSE(parse_size_bytes("-1"));
  EXPECT_FALSE(parse_size_bytes("99999999999999999999"));
  EXPECT_FALSE(parse_size_bytes("16777216P"));
}

TEST(Size, Formats) {
  EXPECT_EQ(format_size_bytes(10ull << 30), "10 GiB");
  EXPECT_EQ(format_size_bytes(1536), "1.5 KiB");
  EXPECT_EQ(format_size_bytes(0), "0 B");
}

}  // namespace cairn
