#include "replication/replica_server.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <coroutine>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/assert.h"
#include "common/log.h"
#include "common/reactor.h"
#include "common/socket_io.h"
#include "common/task.h"
#include "replication/epoch_fence.h"
#include "replication/link_protocol.h"

namespace cairn::replication {

namespace {

constexpr const char* kLog = "replication";
constexpr unsigned kRingEntries = 256;
// Payload bytes held by the requests of one connection at once (one request of up to
// link::kDataMaxBytes is always admitted when nothing else is held).
constexpr uint64_t kInflightBytesMax = 64ull << 20;
constexpr size_t kRepliesPerSendMax = 256;
// After a malformed request: bytes read and dropped (so that close() sends FIN, not RST,
// and the EINVAL reply reaches the peer) before the connection is closed regardless.
constexpr uint64_t kDiscardMaxBytes = 64ull << 20;
// stop(): how long requests still executing may take before the loop is stopped anyway.
constexpr auto kStopWait = std::chrono::seconds(30);
constexpr uint64_t kAcceptBackoffNs = 50'000'000;

struct FreeDeleter {
  void operator()(uint8_t* p) const noexcept { free(p); }
};
using AlignedBuf = std::unique_ptr<uint8_t, FreeDeleter>;

AlignedBuf alloc_aligned(size_t len) {
  void* p = nullptr;
  size_t rounded = std::max<size_t>(4096, (len + 4095) & ~size_t(4095));
  if (posix_memalign(&p, 4096, rounded) != 0) return nullptr;
  return AlignedBuf(static_cast<uint8_t*>(p));
}

uint32_t reply_errno(const std::error_code& ec) {
  int e = to_errno(ec);
  return e > 0 ? static_cast<uint32_t>(e) : EIO;
}

const char* type_name(link::Type t) {
  switch (t) {
    case link::Type::hello: return "HELLO";
    case link::Type::write: return "WRITE";
    case link::Type::trim: return "TRIM";
    case link::Type::zero: return "ZERO";
    case link::Type::flush: return "FLUSH";
    case link::Type::snapshot: return "SNAPSHOT";
    case link::Type::snapshot_delete: return "SNAPSHOT_DELETE";
  }
  return "?";
}

Result<int> listen_tcp(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    CAIRN_LOG_ERROR(kLog, "cannot resolve %s: %s", host.c_str(), gai_strerror(rc));
    return Errc::invalid_argument;
  }
  int err = EADDRNOTAVAIL;
  int fd = -1;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 256) == 0) break;
    err = errno;
    ::close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) return errno_code(err);
  return fd;
}

uint16_t bound_port(int fd) {
  sockaddr_storage ss{};
  socklen_t sl = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &sl) != 0) return 0;
  return ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                        : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

// The server's state, shared by its connections (ReplicaServer::Impl is this).
struct Server {
  explicit Server(ReplicaServer::Options o) : options(std::move(o)) {}

  Task<void> accept_loop();
  // Deletes this node's copy of `name` and its fence record: they belong to a deleted
  // volume that had the same name.
  Status drop_stale_copy(const std::string& name) {
    CAIRN_LOG_WARN(kLog, "volume %s: this node's copy belongs to a deleted volume of that name: "
                   "deleting it", name.c_str());
    if (options.delete_volume) {
      Status st = options.delete_volume(name);
      if (!st && st.error() != Errc::not_found) return st;
    }
    return fence->forget(name);
  }

  // False (the caller closes fd) when stopping or at connections_max.
  bool register_connection(int fd) {
    std::lock_guard lk(mu);
    if (stopping.load() || connections >= options.connections_max) return false;
    conn_fds.insert(fd);
    ++connections;
    return true;
  }
  // Closes fd under the lock so that stop() never shuts down a reused descriptor.
  void connection_closed(int fd) {
    std::lock_guard lk(mu);
    conn_fds.erase(fd);
    ::close(fd);
    --connections;
    cv.notify_all();
  }

  const ReplicaServer::Options options;
  std::unique_ptr<EpochFence> fence;
  std::unique_ptr<Reactor> reactor;
  std::thread thread;
  int listen_fd = -1;
  bool started = false;  // start()/stop() caller's thread only
  bool stopped = false;
  std::atomic<uint16_t> port{0};
  std::atomic<uint64_t> accepted{0};
  std::atomic<bool> stopping{false};

  std::mutex mu;  // guards the members below
  std::condition_variable cv;
  std::unordered_set<int> conn_fds;
  unsigned connections = 0;
  bool accept_running = false;
};

// One replication link connection. Lives on the server's Reactor thread; owned by its root
// coroutine (run), the request coroutines it spawned and its reply writer (shared_ptr).
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Server& srv, int fd) : srv_(srv), r_(*srv.reactor), fd_(fd) {}

  static Task<void> run(std::shared_ptr<Connection> self) {
    bool malformed = co_await self->serve();
    Idle idle{self.get()};
    co_await idle;  // every request finished and its reply went out
    if (malformed) co_await self->linger();
    self->volume_.reset();
    self->srv_.connection_closed(self->fd_);
  }

 private:
  // ---- socket helpers ----
  Task<bool> read_exact(void* dst, size_t n) { return reader_.read_exact(dst, n); }

  Task<bool> send_all(const void* p, size_t n) { return cairn::send_all(r_, fd_, p, n); }

  // ---- limits ----
  // inflight_ counts requests from admission until their reply was handed to the socket, so
  // the reply queue is bounded too; inflight_bytes_ the payload bytes they hold.
  bool over_limit(uint64_t bytes) const {
    return inflight_ >= ReplicaServer::kInflightMax ||
           (inflight_bytes_ > 0 && inflight_bytes_ + bytes > kInflightBytesMax);
  }

  struct WaitSlot {
    Connection* c;
    bool await_ready() const noexcept { return c->dead_ || !c->over_limit(c->slot_bytes_); }
    void await_suspend(std::coroutine_handle<> h) noexcept { c->slot_waiter_ = h; }
    void await_resume() const noexcept {}
  };

  struct Idle {
    Connection* c;
    bool await_ready() const noexcept { return c->inflight_ == 0 && !c->writing_; }
    void await_suspend(std::coroutine_handle<> h) noexcept { c->idle_waiter_ = h; }
    void await_resume() const noexcept {}
  };

  void maybe_wake() {
    if (slot_waiter_ && (dead_ || !over_limit(slot_bytes_)))
      std::exchange(slot_waiter_, {}).resume();
  }
  void maybe_idle() {
    if (idle_waiter_ && inflight_ == 0 && !writing_) std::exchange(idle_waiter_, {}).resume();
  }

  // ---- requests ----
  // Why the request in `hb` must be refused with EINVAL (and the connection closed), or
  // nullptr. Fills *req.
  const char* check(const uint8_t* hb, link::Request* req) const {
    if (!link::decode(hb, req)) return "malformed header";
    if ((req->flags & ~(link::kFua | link::kNoHole)) != 0) return "unknown flags";
    if (req->type == link::Type::hello) return hello_ ? "second HELLO" : nullptr;
    if (!hello_) return "request before HELLO";
    if (req->epoch != epoch_) return "epoch differs from the connection's HELLO";
    switch (req->type) {
      case link::Type::trim:
      case link::Type::zero:
        if (req->length > link::kRangeMaxBytes) return "range too large";
        [[fallthrough]];
      case link::Type::write: {
        const uint64_t size = volume_->size_bytes();
        if (req->length > size || req->offset > size - req->length)
          return "range beyond the end of the volume";
        break;
      }
      default:
        break;
    }
    return nullptr;
  }

  // Reads and serves requests until the peer closes, the socket fails or a request is
  // malformed (then returns true after queueing its EINVAL reply).
  Task<bool> serve() {
    uint8_t hb[link::kRequestHeaderBytes];
    while (!dead_) {
      bool got = co_await read_exact(hb, sizeof(hb));
      if (!got) co_return false;
      link::Request req;
      if (const char* why = check(hb, &req); why != nullptr) {
        CAIRN_LOG_WARN(kLog, "volume %s: refusing request: %s; closing the connection",
                       hello_ ? volume_name_.c_str() : "(none)", why);
        ++inflight_;
        push(link::detail::get64(hb + 8), EINVAL, 0);
        co_return true;
      }
      if (req.type == link::Type::hello) {
        bool served = co_await hello(req);
        if (!served) co_return false;
        continue;
      }
      const uint64_t bytes = req.type == link::Type::write ? req.length : 0;
      slot_bytes_ = bytes;
      WaitSlot slot{this};
      co_await slot;
      if (dead_) co_return false;
      AlignedBuf data;
      std::string name;
      if (req.type == link::Type::write && req.length > 0) {
        data = alloc_aligned(req.length);
        if (!data) {
          CAIRN_LOG_ERROR(kLog, "no memory for a %u-byte write: closing the connection",
                          req.length);
          co_return false;
        }
        bool read = co_await read_exact(data.get(), req.length);
        if (!read) co_return false;
      } else if (req.type == link::Type::snapshot || req.type == link::Type::snapshot_delete) {
        name.resize(req.data_length);
        bool read = co_await read_exact(name.data(), name.size());
        if (!read) co_return false;
      }
      ++inflight_;
      inflight_bytes_ += bytes;
      spawn(execute(shared_from_this(), req, std::move(data), std::move(name)));
    }
    co_return false;
  }

  // Opens the volume's copy and admits the epoch; the connection then belongs to them.
  // Executed in order (the reader waits): nothing else may run before it on this connection.
  Task<bool> hello(const link::Request& req) {
    std::string name(req.data_length, '\0');
    bool got = co_await read_exact(name.data(), name.size());
    if (!got) co_return false;
    ++inflight_;
    uint32_t err = 0;
    uint64_t value = 0;
    EpochFence& fence = *srv_.fence;
    const auto epoch = static_cast<unsigned long long>(req.epoch);
    // A copy (and fence) of a deleted volume that had this name: not this volume's.
    const uint32_t incarnation = req.length;
    if (incarnation != 0 && fence.incarnation(name) != 0 && fence.incarnation(name) != incarnation) {
      Status dropped = srv_.drop_stale_copy(name);
      if (!dropped) {
        push(req.handle, reply_errno(dropped.error()), 0);
        co_return true;
      }
    }
    if (!fence.current(name, req.epoch)) {
      // Checked before opening, so a stale primary cannot even create the copy.
      CAIRN_LOG_WARN(kLog, "volume %s: HELLO with epoch %llu refused, %llu admitted",
                     name.c_str(), epoch, static_cast<unsigned long long>(fence.epoch(name)));
      err = ESTALE;
    } else {
      bool created = false;
      auto vol = srv_.options.open_volume(name, req.offset, &created);
      if (!vol) {
        CAIRN_LOG_WARN(kLog, "volume %s: cannot open this node's copy: %s", name.c_str(),
                       vol.error().message().c_str());
        err = reply_errno(vol.error());
      } else {
        Status admitted = fence.admit(name, req.epoch, incarnation);
        if (!admitted) {
          err = admitted.error() == Errc::permission_denied ? ESTALE
                                                            : reply_errno(admitted.error());
        } else {
          volume_ = std::move(vol).value();
          volume_name_ = name;
          epoch_ = req.epoch;
          hello_ = true;
          value = created ? link::kHelloCreated : 0;
          CAIRN_LOG_INFO(kLog, "volume %s: primary connected with epoch %llu%s", name.c_str(),
                         epoch, created ? " (copy created)" : "");
        }
      }
    }
    push(req.handle, err, value);
    co_return true;
  }

  static Task<void> execute(std::shared_ptr<Connection> self, link::Request req,
                            AlignedBuf data, std::string name) {
    Connection& c = *self;
    uint32_t err = 0;
    // Checked now, not when the request was read: a newer primary's HELLO on another
    // connection fences out requests already queued here.
    if (!c.srv_.fence->current(c.volume_name_, req.epoch)) {
      CAIRN_LOG_DEBUG(kLog, "volume %s: %s of epoch %llu refused (fenced)",
                      c.volume_name_.c_str(), type_name(req.type),
                      static_cast<unsigned long long>(req.epoch));
      err = ESTALE;
    } else {
      Volume& vol = *c.volume_;
      const bool fua = (req.flags & link::kFua) != 0;
      Status st = ok();
      switch (req.type) {
        case link::Type::write:
          if (req.length > 0) st = co_await vol.write(req.offset, req.length, data.get(), fua);
          break;
        case link::Type::trim:
          st = co_await vol.trim(req.offset, req.length, fua);
          break;
        case link::Type::zero:
          st = co_await vol.write_zeroes(req.offset, req.length,
                                         (req.flags & link::kNoHole) == 0, fua);
          break;
        case link::Type::flush:
          st = co_await vol.flush();
          break;
        case link::Type::snapshot:
          if (c.srv_.options.snapshot) {
            st = c.srv_.options.snapshot(c.volume_name_, name);
          } else {
            st = errno_code(EOPNOTSUPP);
          }
          break;
        case link::Type::snapshot_delete:
          if (c.srv_.options.delete_snapshot) {
            st = c.srv_.options.delete_snapshot(c.volume_name_, name);
          } else {
            st = errno_code(EOPNOTSUPP);
          }
          break;
        default:
          st = Errc::invalid_argument;
          break;
      }
      if (!st) {
        CAIRN_LOG_WARN(kLog, "volume %s: %s offset=%llu length=%u failed: %s",
                       c.volume_name_.c_str(), type_name(req.type),
                       static_cast<unsigned long long>(req.offset), req.length,
                       st.error().message().c_str());
        err = reply_errno(st.error());
      }
    }
    data.reset();
    c.inflight_bytes_ -= req.type == link::Type::write ? req.length : 0;
    c.push(req.handle, err, 0);
    c.maybe_wake();
  }

  // ---- replies ----
  // Queues one reply of a request counted in inflight_; one writer sends them in order, so
  // replies never interleave on the socket.
  void push(uint64_t handle, uint32_t err, uint64_t value) {
    if (dead_) {
      --inflight_;
      maybe_wake();
      maybe_idle();
      return;
    }
    link::Reply reply;
    reply.error = err;
    reply.handle = handle;
    reply.value = value;
    std::array<uint8_t, link::kReplyBytes> out;
    link::encode(reply, out.data());
    queue_.push_back(out);
    if (!writing_) {
      // Started once this batch of completions is handled, so that the replies that became
      // ready together leave in one send.
      writing_ = true;
      r_.defer([self = shared_from_this()]() mutable { spawn(writer(std::move(self))); });
    }
  }

  static Task<void> writer(std::shared_ptr<Connection> self) {
    Connection& c = *self;
    std::vector<uint8_t> buf;
    while (!c.queue_.empty() && !c.dead_) {
      const size_t n = std::min(c.queue_.size(), kRepliesPerSendMax);
      buf.resize(n * link::kReplyBytes);
      for (size_t i = 0; i < n; ++i)
        memcpy(buf.data() + i * link::kReplyBytes, c.queue_[i].data(), link::kReplyBytes);
      c.queue_.erase(c.queue_.begin(), c.queue_.begin() + static_cast<ptrdiff_t>(n));
      bool sent = co_await c.send_all(buf.data(), buf.size());
      c.inflight_ -= static_cast<unsigned>(n);
      if (!sent) {
        c.dead_ = true;
        ::shutdown(c.fd_, SHUT_RDWR);  // wakes the reader too
      }
      c.maybe_wake();
    }
    if (c.dead_) {
      c.inflight_ -= static_cast<unsigned>(c.queue_.size());
      c.queue_.clear();
    }
    c.writing_ = false;
    c.maybe_wake();
    c.maybe_idle();
  }

  // After a malformed request's EINVAL went out: half-close and drop what the peer still
  // sends, so the peer reads the reply and then end-of-stream.
  Task<void> linger() {
    if (dead_) co_return;
    ::shutdown(fd_, SHUT_WR);
    co_await reader_.drain(kDiscardMaxBytes);
  }

  Server& srv_;
  Reactor& r_;
  const int fd_;
  SocketReader reader_{r_, fd_};
  // Set by a successful HELLO; the connection then acts only on this volume and epoch.
  bool hello_ = false;
  std::string volume_name_;
  std::shared_ptr<Volume> volume_;
  uint64_t epoch_ = 0;
  unsigned inflight_ = 0;
  uint64_t inflight_bytes_ = 0;
  uint64_t slot_bytes_ = 0;  // the bytes the waiting reader wants admitted
  std::coroutine_handle<> slot_waiter_;
  std::coroutine_handle<> idle_waiter_;
  std::deque<std::array<uint8_t, link::kReplyBytes>> queue_;
  bool writing_ = false;
  bool dead_ = false;  // the socket failed: replies are dropped
};

Task<void> Server::accept_loop() {
  Reactor& r = *reactor;
  while (!stopping.load()) {
    int fd = co_await r.accept(listen_fd);
    if (fd < 0) {
      if (stopping.load()) break;
      if (fd == -EMFILE || fd == -ENFILE || fd == -ENOMEM || fd == -ENOBUFS) {
        CAIRN_LOG_WARN(kLog, "accept: %s; pausing", strerror(-fd));
        co_await r.sleep_ns(kAcceptBackoffNs);
      } else if (fd == -EINVAL || fd == -EBADF || fd == -ENOTSOCK) {
        CAIRN_LOG_ERROR(kLog, "accept: %s; no longer accepting", strerror(-fd));
        break;
      }
      continue;
    }
    if (!register_connection(fd)) {
      if (!stopping.load())
        CAIRN_LOG_WARN(kLog, "connection limit %u reached: refusing a connection",
                       options.connections_max);
      ::close(fd);
      continue;
    }
    accepted.fetch_add(1, std::memory_order_relaxed);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    spawn(Connection::run(std::make_shared<Connection>(*this, fd)));
  }
  std::lock_guard lk(mu);
  accept_running = false;
  cv.notify_all();
}

}  // namespace

class ReplicaServer::Impl : public Server {
 public:
  using Server::Server;
};

ReplicaServer::ReplicaServer(Options options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

ReplicaServer::~ReplicaServer() { stop(); }

Status ReplicaServer::start(const std::string& host, uint16_t port) {
  Impl& s = *impl_;
  if (s.started) return Errc::invalid_argument;
  if (!s.options.open_volume) {
    CAIRN_LOG_ERROR(kLog, "replica server: no open_volume hook");
    return Errc::invalid_argument;
  }
  CAIRN_TRY(fence, EpochFence::open(s.options.state_dir));
  CAIRN_TRY(reactor, Reactor::create(kRingEntries));
  auto fd = listen_tcp(host, port);
  if (!fd) {
    CAIRN_LOG_ERROR(kLog, "cannot listen on %s:%u: %s", host.c_str(), port,
                    fd.error().message().c_str());
    return fd.error();
  }
  s.fence = std::move(fence);
  s.reactor = std::move(reactor);
  s.listen_fd = fd.value();
  s.port.store(bound_port(s.listen_fd));
  s.accept_running = true;
  s.started = true;
  Impl* impl = impl_.get();
  s.reactor->post([impl] { spawn(impl->accept_loop()); });
  Reactor* r = s.reactor.get();
  s.thread = std::thread([r] { r->run(); });
  CAIRN_LOG_INFO(kLog, "replica server listening on %s:%u", host.c_str(), s.port.load());
  return ok();
}

void ReplicaServer::stop() {
  Impl& s = *impl_;
  if (!s.started || s.stopped) return;
  s.stopped = true;
  {
    std::lock_guard lk(s.mu);
    s.stopping.store(true);
    for (int fd : s.conn_fds) ::shutdown(fd, SHUT_RDWR);
  }
  ::shutdown(s.listen_fd, SHUT_RDWR);  // ends the pending accept
  {
    std::unique_lock lk(s.mu);
    bool done = s.cv.wait_for(lk, kStopWait,
                              [&] { return s.connections == 0 && !s.accept_running; });
    if (!done)
      CAIRN_LOG_WARN(kLog, "replica server: %u connections still busy after %llds; stopping",
                     s.connections,
                     static_cast<long long>(
                         std::chrono::duration_cast<std::chrono::seconds>(kStopWait).count()));
  }
  s.reactor->stop();
  s.thread.join();
  ::close(s.listen_fd);
  s.listen_fd = -1;
  s.port.store(0);
}

uint16_t ReplicaServer::port() const { return impl_->port.load(); }

uint64_t ReplicaServer::accepted() const {
  return impl_->accepted.load(std::memory_order_relaxed);
}

uint64_t ReplicaServer::epoch(const std::string& volume) const {
  return impl_->fence ? impl_->fence->epoch(volume) : 0;
}

Status ReplicaServer::admit_epoch(const std::string& volume, uint64_t epoch,
                                  uint32_t incarnation) {
  if (!impl_->fence) return Errc::unavailable;
  if (incarnation != 0 && impl_->fence->incarnation(volume) != 0 &&
      impl_->fence->incarnation(volume) != incarnation) {
    CAIRN_TRY(impl_->drop_stale_copy(volume));
  }
  return impl_->fence->admit(volume, epoch, incarnation);
}

void ReplicaServer::forget_epoch(const std::string& volume) {
  if (impl_->fence) (void)impl_->fence->forget(volume);
}

}  // namespace cairn::replication
