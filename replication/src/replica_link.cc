#include "replication/replica_link.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <limits.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/log.h"
#include "common/net.h"

namespace cairn::replication {

namespace {
constexpr const char* kLog = "replication";
constexpr auto kReceiveTick = std::chrono::milliseconds(100);
using Clock = std::chrono::steady_clock;

timeval to_timeval(std::chrono::milliseconds ms) {
  return timeval{static_cast<time_t>(ms.count() / 1000),
                 static_cast<suseconds_t>(ms.count() % 1000 * 1000)};
}

// A connected blocking TCP socket to host:port within `timeout`, or -errno.
int connect_with_timeout(const std::string& address, std::chrono::milliseconds timeout) {
  auto ep = parse_host_port(address);
  if (!ep) return -EINVAL;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (getaddrinfo(ep->first.c_str(), std::to_string(ep->second).c_str(), &hints, &res) != 0 || !res)
    return -EHOSTUNREACH;
  int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    freeaddrinfo(res);
    return -errno;
  }
  int rc = ::connect(fd, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  if (rc != 0 && errno != EINPROGRESS) {
    int err = errno;
    ::close(fd);
    return -err;
  }
  if (rc != 0) {
    pollfd p{fd, POLLOUT, 0};
    rc = ::poll(&p, 1, static_cast<int>(timeout.count()));
    int err = 0;
    socklen_t len = sizeof(err);
    if (rc <= 0) err = rc == 0 ? ETIMEDOUT : errno;
    else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) {
      ::close(fd);
      return -err;
    }
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

// Sends every byte of the iovecs (blocking, bounded by SO_SNDTIMEO); false on failure.
bool send_all(int fd, iovec* iov, int n) {
  while (n > 0) {
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = n;
    ssize_t sent = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    while (n > 0 && static_cast<size_t>(sent) >= iov->iov_len) {
      sent -= iov->iov_len;
      ++iov;
      --n;
    }
    if (n > 0) {
      iov->iov_base = static_cast<char*>(iov->iov_base) + sent;
      iov->iov_len -= sent;
    }
  }
  return true;
}

// Reads exactly `len` bytes (blocking, bounded by SO_RCVTIMEO per read); false on failure.
bool recv_all(int fd, void* buf, size_t len) {
  auto* p = static_cast<uint8_t*>(buf);
  while (len > 0) {
    ssize_t got = ::recv(fd, p, len, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    p += got;
    len -= got;
  }
  return true;
}
}  // namespace

Status link_status(uint32_t error) {
  if (error == 0) return ok();
  if (error == ESTALE) return Errc::permission_denied;
  if (error == EPIPE) return Errc::io_error;
  if (error == ENOSPC) return Errc::no_space;
  if (error == EINVAL) return Errc::invalid_argument;
  if (error == ENOENT) return Errc::not_found;
  return errno_code(static_cast<int>(error));
}

Result<std::shared_ptr<ReplicaLink>> ReplicaLink::connect(const Options& options, bool* created) {
  if (options.volume.empty() || options.volume.size() > link::kNameMaxBytes)
    return Errc::invalid_argument;
  int fd = connect_with_timeout(options.address, options.connect_timeout);
  if (fd < 0) {
    CAIRN_LOG_DEBUG(kLog, "connect to %s: %s", options.address.c_str(), strerror(-fd));
    return Errc::unavailable;
  }
  timeval tv = to_timeval(options.op_timeout);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  link::Request hello;
  hello.type = link::Type::hello;
  hello.epoch = options.epoch;
  hello.offset = options.size_bytes;
  hello.length = options.incarnation;
  hello.data_length = static_cast<uint32_t>(options.volume.size());
  uint8_t header[link::kRequestHeaderBytes];
  link::encode(hello, header);
  iovec iov[2] = {{header, sizeof(header)},
                  {const_cast<char*>(options.volume.data()), options.volume.size()}};
  uint8_t raw[link::kReplyBytes];
  link::Reply reply;
  if (!send_all(fd, iov, 2) || !recv_all(fd, raw, sizeof(raw)) || !link::decode(raw, &reply) ||
      reply.handle != 0) {
    ::close(fd);
    return Errc::io_error;
  }
  if (reply.error != 0) {
    ::close(fd);
    return link_status(reply.error).error();
  }
  if (created) *created = (reply.value & link::kHelloCreated) != 0;
  tv = to_timeval(kReceiveTick);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::shared_ptr<ReplicaLink> l(new ReplicaLink(options, fd));
  l->receiver_ = std::thread([p = l.get()] { p->receive_loop(); });
  return l;
}

ReplicaLink::ReplicaLink(Options options, int fd) : options_(std::move(options)), fd_(fd) {}

ReplicaLink::~ReplicaLink() {
  close();
  ::close(fd_);
}

void ReplicaLink::close() {
  std::call_once(close_once_, [this] {
    broken_.store(true, std::memory_order_release);
    ::shutdown(fd_, SHUT_RDWR);
    if (receiver_.joinable()) receiver_.join();
    fail_all();
  });
}

void ReplicaLink::fail_all() {
  std::map<uint64_t, Pending*> failed;
  {
    std::lock_guard lock(mu_);
    broken_.store(true, std::memory_order_release);
    failed.swap(pending_);
  }
  std::vector<Pending*> ready;
  for (auto& [handle, p] : failed) {
    p->error = EPIPE;
    ready.push_back(p);
  }
  resume(ready);
}

bool ReplicaLink::submit(Pending* pending, link::Request& req, const void* data) {
  {
    std::lock_guard lock(mu_);
    if (broken_.load(std::memory_order_acquire)) {
      pending->error = EPIPE;
      return false;
    }
    if (pending_.size() >= kInflightMax) {
      pending->error = EBUSY;
      return false;
    }
    req.handle = next_handle_++;
    req.epoch = options_.epoch;
    pending->sent = Clock::now();
    pending_.emplace(req.handle, pending);
  }
  pending->request_handle = req.handle;
  link::encode(req, pending->header);
  pending->data = data;
  pending->data_length = req.data_length;
  bool first;
  {
    std::lock_guard lock(batch_mu_);
    auto& batch = batches_[pending->reactor];
    first = batch.empty();
    batch.push_back(pending);
  }
  if (first) pending->reactor->defer([self = shared_from_this(), r = pending->reactor] {
    self->flush_batch(r);
  });
  return true;
}

void ReplicaLink::flush_batch(Reactor* reactor) {
  std::vector<Pending*> batch;
  {
    std::lock_guard lock(batch_mu_);
    batch.swap(batches_[reactor]);
  }
  // Only requests still waiting: one failed meanwhile may already be resumed (its frame
  // gone). Those still registered cannot be resumed before this returns (their resumption
  // runs on this thread), so their buffers stay valid while they are sent.
  std::vector<iovec> iov;
  {
    std::lock_guard lock(mu_);
    for (Pending* p : batch) {
      auto it = pending_.find(p->request_handle);
      if (it == pending_.end() || it->second != p) continue;
      iov.push_back({p->header, sizeof(p->header)});
      if (p->data_length > 0) iov.push_back({const_cast<void*>(p->data), p->data_length});
    }
  }
  bool sent = true;
  {
    std::lock_guard lock(send_mu_);
    for (size_t at = 0; sent && at < iov.size(); at += IOV_MAX) {
      sent = send_all(fd_, iov.data() + at, static_cast<int>(std::min<size_t>(IOV_MAX, iov.size() - at)));
    }
  }
  if (!sent) {
    // The receiver sees the shutdown and fails every waiter.
    CAIRN_LOG_WARN(kLog, "volume %s: send to %s failed: %s", options_.volume.c_str(),
                   options_.address.c_str(), strerror(errno));
    ::shutdown(fd_, SHUT_RDWR);
  }
}

bool ReplicaLink::Call::await_suspend(std::coroutine_handle<> h) {
  pending.reactor = Reactor::current();
  pending.handle = h;
  return link->submit(&pending, req, data);
}

Status ReplicaLink::Call::await_resume() const { return link_status(pending.error); }

void ReplicaLink::receive_loop() {
  // Replies are read in bulk and their waiters resumed with one post per Reactor, so a
  // burst of replies costs one wake-up, not one per request.
  std::vector<uint8_t> buf(64 * 1024);
  size_t have = 0;
  std::vector<Pending*> ready;
  for (;;) {
    ssize_t got = ::recv(fd_, buf.data() + have, buf.size() - have, 0);
    if (got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      if (!broken()) {
        CAIRN_LOG_WARN(kLog, "volume %s: link to %s closed", options_.volume.c_str(),
                       options_.address.c_str());
      }
      break;
    }
    if (got > 0) have += got;
    size_t used = 0;
    bool bad = false;
    {
      std::lock_guard lock(mu_);
      for (; have - used >= link::kReplyBytes; used += link::kReplyBytes) {
        link::Reply reply;
        auto it = pending_.end();
        if (link::decode(buf.data() + used, &reply)) it = pending_.find(reply.handle);
        if (it == pending_.end()) {
          bad = true;
          break;
        }
        it->second->error = reply.error;
        ready.push_back(it->second);
        pending_.erase(it);
      }
    }
    resume(ready);
    if (bad) {
      CAIRN_LOG_WARN(kLog, "volume %s: bad reply from %s", options_.volume.c_str(),
                     options_.address.c_str());
      break;
    }
    std::memmove(buf.data(), buf.data() + used, have - used);
    have -= used;
    // Is the oldest request overdue?
    std::lock_guard lock(mu_);
    if (!pending_.empty() && Clock::now() - pending_.begin()->second->sent > options_.op_timeout) {
      CAIRN_LOG_WARN(kLog, "volume %s: %s did not answer within %lld ms", options_.volume.c_str(),
                     options_.address.c_str(), static_cast<long long>(options_.op_timeout.count()));
      break;
    }
  }
  ::shutdown(fd_, SHUT_RDWR);
  fail_all();
}

void ReplicaLink::resume(std::vector<Pending*>& ready) {
  while (!ready.empty()) {
    Reactor* r = ready.front()->reactor;
    std::vector<std::coroutine_handle<>> handles;
    auto keep = std::remove_if(ready.begin(), ready.end(), [&](Pending* p) {
      if (p->reactor != r) return false;
      handles.push_back(p->handle);
      return true;
    });
    ready.erase(keep, ready.end());
    r->post([handles = std::move(handles)] {
      for (auto h : handles) h.resume();
    });
  }
}

}  // namespace cairn::replication
