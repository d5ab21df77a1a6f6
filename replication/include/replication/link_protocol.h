// The replication link's wire format: how a volume's primary sends its writes to the
// volume's replicas (docs/FORMAT-replication.md). TCP, one connection per (volume, replica),
// big-endian integers, requests pipelined, replies in any order (matched by handle).
//
//   request  = header (40 bytes) + data_length bytes of payload
//     u32 magic 0x43524c4b ("CRLK")   u16 type   u16 flags   u64 handle   u64 epoch
//     u64 offset   u32 length   u32 data_length
//   reply    = 24 bytes
//     u32 magic 0x43524c52 ("CRLR")   u32 error (0 or an errno)   u64 handle   u64 value
//
// The first request of a connection is HELLO: payload = the volume name, offset = the
// volume's size, epoch = the sender's epoch, length = the volume's incarnation (0 =
// unknown): a copy kept for another incarnation (a deleted volume of the same name) is
// deleted and created anew. The replica opens its copy of the volume
// (creating it when absent, growing it when smaller) and admits the epoch (persisting it
// when higher than any seen); reply value bit 0 (kHelloCreated) says the copy was created
// now, i.e. holds nothing (the primary must rebuild it in full). Every later request carries
// the connection's epoch; the replica answers ESTALE to any request whose epoch is older
// than the highest it has admitted for the volume (a newer primary has since said HELLO),
// and to a HELLO with an older epoch.
// WRITE: payload = length bytes at offset. TRIM, ZERO: the range [offset, offset+length),
// no payload (flag kNoHole on ZERO keeps it allocated). FLUSH: makes every write the
// replica acknowledged before durable. kFua on WRITE/TRIM/ZERO: durable before the reply.
// SNAPSHOT: payload = a snapshot name; the replica snapshots its copy. SNAPSHOT_DELETE:
// payload = a snapshot name; the replica deletes that snapshot of its copy.
// Errors: EINVAL for a malformed request (the replica then closes the connection),
// ESTALE (fenced), ENOSPC, EIO and the other errnos of the local engine.
#pragma once

#include <cstdint>
#include <cstring>

namespace cairn::replication::link {

constexpr uint32_t kRequestMagic = 0x43524c4b;
constexpr uint32_t kReplyMagic = 0x43524c52;
constexpr size_t kRequestHeaderBytes = 40;
constexpr size_t kReplyBytes = 24;
// Largest WRITE payload (the NBD server's request bound) and name payloads.
constexpr uint32_t kDataMaxBytes = 32u << 20;
constexpr uint32_t kNameMaxBytes = 256;
// Largest TRIM/ZERO range per request.
constexpr uint64_t kRangeMaxBytes = 1ull << 30;

enum class Type : uint16_t {
  hello = 1, write = 2, trim = 3, zero = 4, flush = 5, snapshot = 6, snapshot_delete = 7
};
constexpr uint16_t kFua = 1;
constexpr uint16_t kNoHole = 2;
constexpr uint64_t kHelloCreated = 1;

struct Request {
  Type type = Type::flush;
  uint16_t flags = 0;
  uint64_t handle = 0;
  uint64_t epoch = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
  uint32_t data_length = 0;
};

struct Reply {
  uint32_t error = 0;
  uint64_t handle = 0;
  uint64_t value = 0;
};

namespace detail {
inline void put16(uint8_t* p, uint16_t v) { p[0] = v >> 8; p[1] = uint8_t(v); }
inline void put32(uint8_t* p, uint32_t v) { for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (24 - 8 * i)); }
inline void put64(uint8_t* p, uint64_t v) { for (int i = 0; i < 8; ++i) p[i] = uint8_t(v >> (56 - 8 * i)); }
inline uint16_t get16(const uint8_t* p) { return uint16_t(p[0] << 8 | p[1]); }
inline uint32_t get32(const uint8_t* p) { uint32_t v = 0; for (int i = 0; i < 4; ++i) v = v << 8 | p[i]; return v; }
inline uint64_t get64(const uint8_t* p) { uint64_t v = 0; for (int i = 0; i < 8; ++i) v = v << 8 | p[i]; return v; }
}  // namespace detail

inline void encode(const Request& r, uint8_t out[kRequestHeaderBytes]) {
  using namespace detail;
  put32(out, kRequestMagic);
  put16(out + 4, uint16_t(r.type));
  put16(out + 6, r.flags);
  put64(out + 8, r.handle);
  put64(out + 16, r.epoch);
  put64(out + 24, r.offset);
  put32(out + 32, r.length);
  put32(out + 36, r.data_length);
}

// False when the magic is wrong, the type unknown, or the payload length not what the type
// allows (WRITE: data_length == length <= kDataMaxBytes; HELLO/SNAPSHOT/SNAPSHOT_DELETE:
// 1..kNameMaxBytes;
// others: 0).
inline bool decode(const uint8_t in[kRequestHeaderBytes], Request* r) {
  using namespace detail;
  if (get32(in) != kRequestMagic) return false;
  uint16_t type = get16(in + 4);
  if (type < uint16_t(Type::hello) || type > uint16_t(Type::snapshot_delete)) return false;
  r->type = Type(type);
  r->flags = get16(in + 6);
  r->handle = get64(in + 8);
  r->epoch = get64(in + 16);
  r->offset = get64(in + 24);
  r->length = get32(in + 32);
  r->data_length = get32(in + 36);
  switch (r->type) {
    case Type::write: return r->data_length == r->length && r->length <= kDataMaxBytes;
    case Type::hello:
    case Type::snapshot:
    case Type::snapshot_delete: return r->data_length >= 1 && r->data_length <= kNameMaxBytes;
    case Type::trim:
    case Type::zero: return r->data_length == 0 && r->length > 0;
    case Type::flush: return r->data_length == 0;
  }
  return false;
}

inline void encode(const Reply& r, uint8_t out[kReplyBytes]) {
  using namespace detail;
  put32(out, kReplyMagic);
  put32(out + 4, r.error);
  put64(out + 8, r.handle);
  put64(out + 16, r.value);
}

inline bool decode(const uint8_t in[kReplyBytes], Reply* r) {
  using namespace detail;
  if (get32(in) != kReplyMagic) return false;
  r->error = get32(in + 4);
  r->handle = get64(in + 8);
  r->value = get64(in + 16);
  return true;
}

}  // namespace cairn::replication::link
