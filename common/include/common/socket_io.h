// Socket I/O for connection coroutines on a Reactor: SocketReader reads exact byte counts
// through a 64 KiB buffer (small headers cost one recv per buffer, not one per field;
// large payloads go straight into the caller's memory), send_all writes a whole buffer.
// Used by blockd's NBD server and replication's replica server. A reader belongs to one
// connection and is used by one coroutine at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "common/reactor.h"
#include "common/task.h"

namespace cairn {

class SocketReader {
 public:
  static constexpr size_t kBufferBytes = 64 * 1024;

  SocketReader(Reactor& reactor, int fd) : r_(reactor), fd_(fd) {}
  // Exactly n bytes into dst; false when the peer closed or the socket failed.
  Task<bool> read_exact(void* dst, size_t n);
  // Reads and drops what the peer sends until it closes or max_bytes went by; returns the
  // bytes dropped.
  Task<uint64_t> drain(uint64_t max_bytes);

 private:
  Reactor& r_;
  const int fd_;
  std::unique_ptr<uint8_t[]> buf_{new uint8_t[kBufferBytes]};
  size_t pos_ = 0, end_ = 0;
};

// Sends all n bytes; false when the socket failed.
Task<bool> send_all(Reactor& reactor, int fd, const void* p, size_t n);

}  // namespace cairn
