#include "common/socket_io.h"

#include <algorithm>
#include <cstring>

namespace cairn {

Task<bool> SocketReader::read_exact(void* dst, size_t n) {
  auto* out = static_cast<uint8_t*>(dst);
  while (n > 0) {
    if (pos_ < end_) {
      size_t k = std::min(n, end_ - pos_);
      memcpy(out, buf_.get() + pos_, k);
      pos_ += k;
      out += k;
      n -= k;
      continue;
    }
    if (n >= kBufferBytes / 2) {
      int res = co_await r_.recv(fd_, out, n, 0);
      if (res <= 0) co_return false;
      out += res;
      n -= static_cast<size_t>(res);
      continue;
    }
    int res = co_await r_.recv(fd_, buf_.get(), kBufferBytes, 0);
    if (res <= 0) co_return false;
    pos_ = 0;
    end_ = static_cast<size_t>(res);
  }
  co_return true;
}

Task<uint64_t> SocketReader::drain(uint64_t max_bytes) {
  uint64_t dropped = end_ - pos_;
  pos_ = end_ = 0;
  while (dropped < max_bytes) {
    int res = co_await r_.recv(fd_, buf_.get(), kBufferBytes, 0);
    if (res <= 0) break;
    dropped += static_cast<uint64_t>(res);
  }
  co_return dropped;
}

Task<bool> send_all(Reactor& reactor, int fd, const void* p, size_t n) {
  auto* in = static_cast<const uint8_t*>(p);
  while (n > 0) {
    int res = co_await reactor.send(fd, in, n);
    if (res <= 0) co_return false;
    in += res;
    n -= static_cast<size_t>(res);
  }
  co_return true;
}

}  // namespace cairn
