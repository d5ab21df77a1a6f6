// NBD wire constants, byte-order helpers and the one place where transmission requests are
// validated (bounds, flags, sizes, read-only), so that the engine only ever sees requests
// that make sense. Reference: the NBD protocol, doc/proto.md of NetworkBlockDevice/nbd;
// what Cairn implements of it is in docs/FORMAT-nbd.md.
#pragma once

#include <cstdint>
#include <cstring>

namespace cairn::blockd::nbd {

constexpr uint64_t kMagicNbd = 0x4e42444d41474943ull;        // "NBDMAGIC"
constexpr uint64_t kMagicOpt = 0x49484156454f5054ull;        // "IHAVEOPT"
constexpr uint64_t kMagicOptReply = 0x3e889045565a9ull;
constexpr uint32_t kMagicRequest = 0x25609513u;
constexpr uint32_t kMagicSimpleReply = 0x67446698u;
constexpr uint32_t kMagicStructuredReply = 0x668e33efu;

// Handshake flags (server) and client flags.
constexpr uint16_t kFlagFixedNewstyle = 1u << 0;
constexpr uint16_t kFlagNoZeroes = 1u << 1;
constexpr uint32_t kClientFlagFixedNewstyle = 1u << 0;
constexpr uint32_t kClientFlagNoZeroes = 1u << 1;

// Options.
enum Opt : uint32_t {
  kOptExportName = 1,
  kOptAbort = 2,
  kOptList = 3,
  kOptStartTls = 5,
  kOptInfo = 6,
  kOptGo = 7,
  kOptStructuredReply = 8,
  kOptListMetaContext = 9,
  kOptSetMetaContext = 10,
};

// Option replies.
constexpr uint32_t kRepAck = 1;
constexpr uint32_t kRepServer = 2;
constexpr uint32_t kRepInfo = 3;
constexpr uint32_t kRepMetaContext = 4;
constexpr uint32_t kRepErrUnsup = 0x80000001u;
constexpr uint32_t kRepErrPolicy = 0x80000002u;
constexpr uint32_t kRepErrInvalid = 0x80000003u;
constexpr uint32_t kRepErrUnknown = 0x80000006u;
constexpr uint32_t kRepErrShutdown = 0x80000007u;
constexpr uint32_t kRepErrTooBig = 0x80000009u;

// NBD_INFO_* items of INFO/GO.
constexpr uint16_t kInfoExport = 0;
constexpr uint16_t kInfoName = 1;
constexpr uint16_t kInfoDescription = 2;
constexpr uint16_t kInfoBlockSize = 3;

// Transmission flags.
constexpr uint16_t kTxHasFlags = 1u << 0;
constexpr uint16_t kTxReadOnly = 1u << 1;
constexpr uint16_t kTxSendFlush = 1u << 2;
constexpr uint16_t kTxSendFua = 1u << 3;
constexpr uint16_t kTxSendTrim = 1u << 5;
constexpr uint16_t kTxSendWriteZeroes = 1u << 6;
constexpr uint16_t kTxSendDf = 1u << 7;
constexpr uint16_t kTxCanMultiConn = 1u << 8;
constexpr uint16_t kTxSendCache = 1u << 10;
constexpr uint16_t kTxSendFastZero = 1u << 11;

// Commands and command flags.
enum Cmd : uint16_t {
  kCmdRead = 0,
  kCmdWrite = 1,
  kCmdDisc = 2,
  kCmdFlush = 3,
  kCmdTrim = 4,
  kCmdCache = 5,
  kCmdWriteZeroes = 6,
  kCmdBlockStatus = 7,
};
constexpr uint16_t kCmdFlagFua = 1u << 0;
constexpr uint16_t kCmdFlagNoHole = 1u << 1;
constexpr uint16_t kCmdFlagDf = 1u << 2;
constexpr uint16_t kCmdFlagReqOne = 1u << 3;
constexpr uint16_t kCmdFlagFastZero = 1u << 4;

// Structured reply chunk types and flags.
constexpr uint16_t kReplyFlagDone = 1u << 0;
constexpr uint16_t kReplyTypeNone = 0;
constexpr uint16_t kReplyTypeOffsetData = 1;
constexpr uint16_t kReplyTypeOffsetHole = 2;
constexpr uint16_t kReplyTypeBlockStatus = 5;
constexpr uint16_t kReplyTypeError = 0x8001;

// base:allocation state flags.
constexpr uint32_t kStateHole = 1u << 0;
constexpr uint32_t kStateZero = 1u << 1;
// qemu:dirty-bitmap:<name> state flag (QEMU's convention).
constexpr uint32_t kStateDirty = 1u << 0;
constexpr const char* kDirtyBitmapPrefix = "qemu:dirty-bitmap:";

// Errors the protocol allows in replies.
constexpr uint32_t kEPerm = 1;
constexpr uint32_t kEIo = 5;
constexpr uint32_t kENoMem = 12;
constexpr uint32_t kEInval = 22;
constexpr uint32_t kENoSpc = 28;
constexpr uint32_t kEOverflow = 75;
constexpr uint32_t kENotSup = 95;
constexpr uint32_t kEShutdown = 108;

// Limits of this server.
constexpr uint32_t kBlockSizeMinBytes = 512;
constexpr uint32_t kBlockSizePreferredBytes = 4096;
constexpr uint32_t kPayloadMaxBytes = 32u << 20;    // largest READ/WRITE
constexpr uint32_t kOptionDataMaxBytes = 64u << 10; // larger options end the connection
constexpr uint32_t kStringMaxBytes = 4096;          // export names, queries
constexpr size_t kContextsMax = 64;                 // contexts one SET may select
constexpr size_t kRequestHeaderBytes = 28;
constexpr size_t kSimpleReplyHeaderBytes = 16;
constexpr size_t kStructuredReplyHeaderBytes = 20;

inline void put_be16(uint8_t* p, uint16_t v) { p[0] = uint8_t(v >> 8); p[1] = uint8_t(v); }
inline void put_be32(uint8_t* p, uint32_t v) {
  for (int i = 3; i >= 0; --i) { p[i] = uint8_t(v); v >>= 8; }
}
inline void put_be64(uint8_t* p, uint64_t v) {
  for (int i = 7; i >= 0; --i) { p[i] = uint8_t(v); v >>= 8; }
}
inline uint16_t get_be16(const uint8_t* p) { return uint16_t((p[0] << 8) | p[1]); }
inline uint32_t get_be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3];
}
inline uint64_t get_be64(const uint8_t* p) {
  return (uint64_t(get_be32(p)) << 32) | get_be32(p + 4);
}

struct Request {
  uint32_t magic = 0;
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t handle = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
};

inline Request parse_request(const uint8_t* p) {
  Request r;
  r.magic = get_be32(p);
  r.flags = get_be16(p + 4);
  r.type = get_be16(p + 6);
  r.handle = get_be64(p + 8);
  r.offset = get_be64(p + 16);
  r.length = get_be32(p + 24);
  return r;
}

// What the protocol layer knows about the export a connection is in transmission with.
struct ExportView {
  uint64_t size_bytes = 0;
  bool read_only = false;
  bool structured_replies = false;
  bool base_allocation = false;  // some metadata context selected with SET_META_CONTEXT
};

// Returns 0 when the request may be executed, else the NBD error to reply with.
// (A WRITE whose payload is rejected still has its payload consumed by the caller.)
uint32_t validate_request(const Request& r, const ExportView& e);

// Transmission flags advertised for an export.
uint16_t transmission_flags(bool read_only, bool structured_replies);

}  // namespace cairn::blockd::nbd
