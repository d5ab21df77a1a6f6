// ReplicationListener, the placeholder listening socket of the replication link: it binds,
// accepts and closes.
#include "replication/replication_listener.h"

#include <gtest/gtest.h>

#include <thread>

#include "common/asio.h"

namespace cairn::replication {
namespace {

using tcp = asio::ip::tcp;

TEST(ReplicationListener, AcceptsAndClosesEveryConnection) {
  ReplicationListener listener;
  ASSERT_TRUE(listener.start("127.0.0.1", 0));
  const uint16_t port = listener.port();
  ASSERT_NE(port, 0);
  asio::io_context ioc;
  for (int i = 0; i < 3; ++i) {
    tcp::socket s(ioc);
    beast::error_code ec;
    s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), ec);
    ASSERT_FALSE(ec) << ec.message();
    char byte = 0;
    s.read_some(asio::buffer(&byte, 1), ec);  // blocks until the listener closes it
    EXPECT_TRUE(ec == asio::error::eof || ec == asio::error::connection_reset) << ec.message();
  }
  EXPECT_EQ(listener.accepted(), 3u);
  listener.stop();
  EXPECT_EQ(listener.port(), 0);
  listener.stop();  // idempotent
  tcp::socket s(ioc);
  beast::error_code ec;
  s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), ec);
  EXPECT_TRUE(ec) << "still accepting after stop()";
}

TEST(ReplicationListener, ReportsAPortInUse) {
  ReplicationListener first, second;
  ASSERT_TRUE(first.start("127.0.0.1", 0));
  auto st = second.start("127.0.0.1", first.port());
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error(), std::errc::address_in_use);
  EXPECT_EQ(second.port(), 0);
}

}  // namespace
}  // namespace cairn::replication
