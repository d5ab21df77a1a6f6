#include "common/net.h"

#include <gtest/gtest.h>

namespace cairn {

TEST(Net, ParsesHostPort) {
  auto a = parse_host_port("127.0.0.1:10809");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->first, "127.0.0.1");
  EXPECT_EQ(a->second, 10809);
  auto b = parse_host_port("[::1]:0");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->first, "::1");
  EXPECT_EQ(format_host_port(b->first, 80), "[::1]:80");
  EXPECT_EQ(parse_host_port(":8080")->first, "127.0.0.1");
}

TEST(Net, RejectsMalformed) {
  EXPECT_FALSE(parse_host_port("localhost"));
  EXPECT_FALSE(parse_host_port("1.2.3.4:99999"));
  EXPECT_FALSE(parse_host_port("::1:80"));
  EXPECT_FALSE(parse_host_port("host:"));
  EXPECT_FALSE(parse_host_port("host:12x"));
}

}  // namespace cairn
