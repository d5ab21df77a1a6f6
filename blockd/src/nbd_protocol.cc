#include "nbd_protocol.h"

namespace cairn::blockd::nbd {

uint16_t transmission_flags(bool read_only, bool structured_replies) {
  uint16_t f = kTxHasFlags | kTxSendFlush | kTxSendFua | kTxCanMultiConn | kTxSendCache;
  if (read_only) {
    f |= kTxReadOnly;
  } else {
    f |= kTxSendTrim | kTxSendWriteZeroes | kTxSendFastZero;
  }
  if (structured_replies) f |= kTxSendDf;
  return f;
}

uint32_t validate_request(const Request& r, const ExportView& e) {
  // Which flags each command accepts; FUA is accepted everywhere (clients set it widely).
  uint16_t allowed = kCmdFlagFua;
  bool writes = false, ranged = true;
  switch (r.type) {
    case kCmdRead:
      if (e.structured_replies) allowed |= kCmdFlagDf;
      break;
    case kCmdWrite:
    case kCmdTrim:
      writes = true;
      break;
    case kCmdWriteZeroes:
      writes = true;
      allowed |= kCmdFlagNoHole | kCmdFlagFastZero;
      break;
    case kCmdCache:
      break;
    case kCmdBlockStatus:
      allowed |= kCmdFlagReqOne;
      if (!e.structured_replies || !e.base_allocation) return kEInval;
      break;
    case kCmdFlush:
    case kCmdDisc:
      ranged = false;
      break;
    default:
      return kEInval;
  }
  if ((r.flags & ~allowed) != 0) return kEInval;
  if (writes && e.read_only) return kEPerm;
  if (!ranged) return 0;

  if ((r.type == kCmdRead || r.type == kCmdWrite) && r.length > kPayloadMaxBytes)
    return kEInval;
  if (r.type == kCmdBlockStatus && r.length == 0) return kEInval;
  uint64_t end = r.offset + r.length;
  // The spec: ENOSPC for writes past the end, EINVAL for reads and trims.
  bool data_write = r.type == kCmdWrite || r.type == kCmdWriteZeroes;
  if (end < r.offset || end > e.size_bytes) return data_write ? kENoSpc : kEInval;
  return 0;
}

}  // namespace cairn::blockd::nbd
