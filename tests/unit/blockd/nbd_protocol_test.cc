#include "nbd_protocol.h"

#include <gtest/gtest.h>

namespace cairn::blockd::nbd {
namespace {

ExportView rw_export() {
  ExportView e;
  e.size_bytes = 1 << 20;
  e.structured_replies = true;
  e.base_allocation = true;
  return e;
}

Request req(uint16_t type, uint64_t offset, uint32_t length, uint16_t flags = 0) {
  Request r;
  r.magic = kMagicRequest;
  r.type = type;
  r.offset = offset;
  r.length = length;
  r.flags = flags;
  return r;
}

TEST(NbdProtocol, AcceptsRequestsInsideTheExport) {
  auto e = rw_export();
  EXPECT_EQ(validate_request(req(kCmdRead, 0, 4096), e), 0u);
  EXPECT_EQ(validate_request(req(kCmdWrite, (1 << 20) - 512, 512, kCmdFlagFua), e), 0u);
  EXPECT_EQ(validate_request(req(kCmdWriteZeroes, 0, 1 << 20, kCmdFlagNoHole | kCmdFlagFastZero), e), 0u);
  EXPECT_EQ(validate_request(req(kCmdTrim, 1000, 3000), e), 0u);  // unaligned is served
  EXPECT_EQ(validate_request(req(kCmdBlockStatus, 0, 1 << 20, kCmdFlagReqOne), e), 0u);
  EXPECT_EQ(validate_request(req(kCmdFlush, 0, 0), e), 0u);
  EXPECT_EQ(validate_request(req(kCmdCache, 0, 4096), e), 0u);
}

TEST(NbdProtocol, OutOfRangeIsEinvalForReadsAndTrimsAndEnospcForWrites) {
  auto e = rw_export();
  EXPECT_EQ(validate_request(req(kCmdRead, 1 << 20, 1), e), kEInval);
  EXPECT_EQ(validate_request(req(kCmdWrite, (1 << 20) - 511, 512), e), kENoSpc);
  EXPECT_EQ(validate_request(req(kCmdWriteZeroes, (1 << 20) - 511, 512), e), kENoSpc);
  EXPECT_EQ(validate_request(req(kCmdTrim, 8192, 1 << 20), e), kEInval);
  EXPECT_EQ(validate_request(req(kCmdWrite, ~0ull - 10, 4096), e), kENoSpc);  // wraps
  EXPECT_EQ(validate_request(req(kCmdBlockStatus, 0, (1 << 20) + 1), e), kEInval);
}

TEST(NbdProtocol, PayloadOverTheAdvertisedMaximumIsEinval) {
  auto e = rw_export();
  e.size_bytes = 1ull << 40;
  EXPECT_EQ(validate_request(req(kCmdRead, 0, kPayloadMaxBytes + 1), e), kEInval);
  EXPECT_EQ(validate_request(req(kCmdWrite, 0, kPayloadMaxBytes + 1), e), kEInval);
  // Commands without payload may cover large ranges.
  EXPECT_EQ(validate_request(req(kCmdTrim, 0, 0xffffffffu), e), 0u);
}

TEST(NbdProtocol, UnknownCommandsAndFlagsAreEinval) {
  auto e = rw_export();
  EXPECT_EQ(validate_request(req(99, 0, 0), e), kEInval);
  EXPECT_EQ(validate_request(req(kCmdRead, 0, 512, kCmdFlagNoHole), e), kEInval);
  EXPECT_EQ(validate_request(req(kCmdWrite, 0, 512, kCmdFlagReqOne), e), kEInval);
  EXPECT_EQ(validate_request(req(kCmdWrite, 0, 512, 1u << 9), e), kEInval);
  e.structured_replies = false;
  EXPECT_EQ(validate_request(req(kCmdRead, 0, 512, kCmdFlagDf), e), kEInval);
}

TEST(NbdProtocol, BlockStatusNeedsANegotiatedContext) {
  auto e = rw_export();
  e.base_allocation = false;
  EXPECT_EQ(validate_request(req(kCmdBlockStatus, 0, 4096), e), kEInval);
}

TEST(NbdProtocol, ReadOnlyExportRefusesWritesWithEperm) {
  auto e = rw_export();
  e.read_only = true;
  EXPECT_EQ(validate_request(req(kCmdWrite, 0, 512), e), kEPerm);
  EXPECT_EQ(validate_request(req(kCmdTrim, 0, 512), e), kEPerm);
  EXPECT_EQ(validate_request(req(kCmdWriteZeroes, 0, 512), e), kEPerm);
  EXPECT_EQ(validate_request(req(kCmdRead, 0, 512), e), 0u);
  EXPECT_EQ(transmission_flags(true, true) & (kTxSendTrim | kTxSendWriteZeroes), 0);
  EXPECT_NE(transmission_flags(true, true) & kTxReadOnly, 0);
}

TEST(NbdProtocol, RequestHeaderRoundTrip) {
  uint8_t b[kRequestHeaderBytes];
  put_be32(b, kMagicRequest);
  put_be16(b + 4, kCmdFlagFua);
  put_be16(b + 6, kCmdWrite);
  put_be64(b + 8, 0x1122334455667788ull);
  put_be64(b + 16, 1ull << 40);
  put_be32(b + 24, 4096);
  Request r = parse_request(b);
  EXPECT_EQ(r.magic, kMagicRequest);
  EXPECT_EQ(r.flags, kCmdFlagFua);
  EXPECT_EQ(r.type, kCmdWrite);
  EXPECT_EQ(r.handle, 0x1122334455667788ull);
  EXPECT_EQ(r.offset, 1ull << 40);
  EXPECT_EQ(r.length, 4096u);
}

}  // namespace
}  // namespace cairn::blockd::nbd
