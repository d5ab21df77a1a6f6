#include "blockd/nbd_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>

#include "common/assert.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/socket_io.h"
#include "nbd_protocol.h"

namespace cairn::blockd {

using namespace nbd;

namespace {

constexpr const char* kLog = "nbd";
constexpr uint32_t kInflightMax = 128;
constexpr uint64_t kInflightBytesMax = 64ull << 20;
constexpr unsigned kOptionsMax = 256;   // options per handshake before we give up on a client
constexpr uint64_t kHandshakeTimeoutNs = 30ull * 1000 * 1000 * 1000;
constexpr size_t kIovMax = 256;         // iovecs per sendmsg

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

// The errno values NBD allows in replies; anything else becomes EIO.
uint32_t nbd_errno(const std::error_code& ec) {
  if (ec == make_error_code(Errc::not_found) || ec == make_error_code(Errc::unavailable))
    return kEShutdown;  // the volume went away: tell the client to disconnect
  switch (to_errno(ec)) {
    case EPERM: return kEPerm;
    case ENOMEM: return kENoMem;
    case EINVAL: return kEInval;
    case ENOSPC: case EDQUOT: case EFBIG: return kENoSpc;
    case EOVERFLOW: return kEOverflow;
    case ENOTSUP: return kENotSup;
    case ESHUTDOWN: return kEShutdown;
    default: return kEIo;
  }
}

const char* nbd_error_text(uint32_t e) {
  switch (e) {
    case kEPerm: return "export is read-only";
    case kEInval: return "invalid request";
    case kENoSpc: return "no space / beyond end of volume";
    case kEOverflow: return "request too large";
    case kENotSup: return "operation cannot be done fast";
    case kEShutdown: return "volume is no longer served";
    case kENoMem: return "out of memory";
    default: return "I/O error";
  }
}

// Counters on /metrics, looked up once; the hot path only touches atomics.
struct NbdMetrics {
  Counter* requests[8];
  Counter& read_bytes;
  Counter& write_bytes;
  Counter& errors;
  Gauge& connections;
  static NbdMetrics& get() {
    static NbdMetrics m;
    return m;
  }

 private:
  NbdMetrics()
      : read_bytes(MetricsRegistry::global().counter("cairn_nbd_bytes_total", {{"op", "read"}},
                                                     "Payload bytes served over NBD")),
        write_bytes(MetricsRegistry::global().counter("cairn_nbd_bytes_total", {{"op", "write"}})),
        errors(MetricsRegistry::global().counter("cairn_nbd_errors_total", {},
                                                 "NBD requests answered with an error")),
        connections(MetricsRegistry::global().gauge("cairn_nbd_connections", {},
                                                    "Open NBD connections")) {
    static const char* names[8] = {"read", "write", "disc", "flush", "trim", "cache",
                                   "write_zeroes", "block_status"};
    for (int i = 0; i < 8; ++i)
      requests[i] = &MetricsRegistry::global().counter("cairn_nbd_requests_total",
                                                       {{"op", names[i]}}, "NBD requests");
  }
};

// One reply waiting to be sent: a small header and optional data.
struct Reply {
  uint8_t head[96];
  uint32_t head_len = 0;
  AlignedBuf data;
  size_t data_len = 0;
};

}  // namespace

struct NbdServer::Impl {
  NbdServer& server;
  VolumeStore& store;
  std::vector<std::unique_ptr<Reactor>> reactors;
  std::vector<std::thread> threads;
  std::vector<int> listen_fds;
  std::atomic<unsigned> next_reactor{0};
  std::atomic<bool> stopping{false};
  std::mutex conns_mu;
  std::unordered_set<int> conn_fds;

  Impl(NbdServer& s, VolumeStore& st) : server(s), store(st) {}

  // `*why`: the client's error message when the export cannot be opened.
  Result<std::shared_ptr<Volume>> open_volume(const std::string& name, std::string* why) {
    const auto& hook = server.options_.open_volume;
    auto v = hook ? hook(name, why) : store.open_volume(name);
    if (!v && why->empty()) *why = "no such export: " + name;
    return v;
  }

  Task<void> accept_loop(int lfd, bool tcp);
  void register_fd(int fd) {
    std::lock_guard lk(conns_mu);
    conn_fds.insert(fd);
  }
  void unregister_fd(int fd) {
    std::lock_guard lk(conns_mu);
    conn_fds.erase(fd);
  }
  void connection_closed() { server.connections_.fetch_sub(1, std::memory_order_relaxed); }
};

namespace {

// One NBD connection, from handshake to close. Lives on one Reactor thread; owned by its
// root coroutine and by every request coroutine it spawned (shared_ptr).
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(NbdServer::Impl& srv, Reactor& r, int fd) : srv_(srv), r_(r), fd_(fd) {}

  static Task<void> run(std::shared_ptr<Connection> self) {
    NbdMetrics::get().connections.add(1);
    spawn(handshake_deadline(self, self->r_));
    bool entered = co_await self->handshake();
    self->handshake_done_ = true;
    if (entered) co_await self->transmission();
    co_await self->drain();
    self->srv_.unregister_fd(self->fd_);
    ::close(self->fd_);
    self->volume_.reset();
    self->srv_.connection_closed();
    NbdMetrics::get().connections.add(-1);
  }

 private:
  // A client must finish the handshake within kHandshakeTimeoutNs, or its connection is
  // shut down: a silent client cannot hold a connection slot forever. Holds only a weak
  // reference so a closed connection is freed at once.
  static Task<void> handshake_deadline(std::weak_ptr<Connection> weak, Reactor& r) {
    co_await r.sleep_ns(kHandshakeTimeoutNs);
    if (auto c = weak.lock(); c && !c->handshake_done_) {
      CAIRN_LOG_INFO(kLog, "handshake not finished within %llu s: closing",
                     static_cast<unsigned long long>(kHandshakeTimeoutNs / 1000000000ull));
      ::shutdown(c->fd_, SHUT_RDWR);
    }
  }

  // ---- socket helpers ----
  Task<bool> read_exact(void* dst, size_t n) { return reader_.read_exact(dst, n); }

  Task<bool> skip(uint64_t n) {
    uint8_t scratch[4096];
    while (n > 0) {
      size_t k = static_cast<size_t>(std::min<uint64_t>(n, sizeof(scratch)));
      if (bool ok = co_await read_exact(scratch, k); !ok) co_return false;
      n -= k;
    }
    co_return true;
  }

  Task<bool> send_all(const void* p, size_t n) { return cairn::send_all(r_, fd_, p, n); }

  // ---- handshake ----
  Task<bool> opt_reply(uint32_t opt, uint32_t type, std::string_view data = {}) {
    std::string out(20, '\0');
    auto* p = reinterpret_cast<uint8_t*>(out.data());
    put_be64(p, kMagicOptReply);
    put_be32(p + 8, opt);
    put_be32(p + 12, type);
    put_be32(p + 16, static_cast<uint32_t>(data.size()));
    out.append(data);
    co_return co_await send_all(out.data(), out.size());
  }

  static void append_be16(std::string& s, uint16_t v) {
    uint8_t b[2];
    put_be16(b, v);
    s.append(reinterpret_cast<char*>(b), 2);
  }
  static void append_be32(std::string& s, uint32_t v) {
    uint8_t b[4];
    put_be32(b, v);
    s.append(reinterpret_cast<char*>(b), 4);
  }
  static void append_be64(std::string& s, uint64_t v) {
    uint8_t b[8];
    put_be64(b, v);
    s.append(reinterpret_cast<char*>(b), 8);
  }

  // Sends the INFO replies of INFO/GO for export `vol`, then ACK.
  Task<bool> send_export_info(uint32_t opt, const Volume& vol,
                              const std::vector<uint16_t>& requested) {
    std::string ex;
    append_be16(ex, kInfoExport);
    append_be64(ex, vol.size_bytes());
    append_be16(ex, transmission_flags(vol.read_only(), structured_));
    if (bool ok = co_await opt_reply(opt, kRepInfo, ex); !ok) co_return false;
    for (uint16_t item : requested) {
      std::string s;
      if (item == kInfoName) {
        append_be16(s, kInfoName);
        s.append(vol.name());
      } else if (item == kInfoDescription) {
        append_be16(s, kInfoDescription);
        s.append(vol.read_only() ? "cairn snapshot " + vol.name() : "cairn volume " + vol.name());
      } else {
        continue;
      }
      if (bool ok = co_await opt_reply(opt, kRepInfo, s); !ok) co_return false;
    }
    std::string bs;  // block sizes are always sent; clients that asked honour them
    append_be16(bs, kInfoBlockSize);
    append_be32(bs, kBlockSizeMinBytes);
    append_be32(bs, kBlockSizePreferredBytes);
    append_be32(bs, kPayloadMaxBytes);
    if (bool ok = co_await opt_reply(opt, kRepInfo, bs); !ok) co_return false;
    co_return co_await opt_reply(opt, kRepAck);
  }

  Task<bool> handle_info_or_go(uint32_t opt, const std::string& data, bool* entered) {
    const auto* p = reinterpret_cast<const uint8_t*>(data.data());
    if (data.size() < 6) co_return co_await opt_reply(opt, kRepErrInvalid, "short option");
    uint32_t name_len = get_be32(p);
    if (name_len > kStringMaxBytes || data.size() < 4ull + name_len + 2)
      co_return co_await opt_reply(opt, kRepErrInvalid, "bad name length");
    std::string name(data.data() + 4, name_len);
    uint16_t n = get_be16(p + 4 + name_len);
    if (data.size() != 4ull + name_len + 2 + 2ull * n)
      co_return co_await opt_reply(opt, kRepErrInvalid, "bad information request count");
    std::vector<uint16_t> requested;
    for (uint16_t i = 0; i < n; ++i) requested.push_back(get_be16(p + 6 + name_len + 2 * i));

    // A volume, or "volume@snapshot" (read-only). INFO only looks; the handle is dropped.
    std::string why;
    auto vol = srv_.open_volume(name, &why);
    if (!vol) co_return co_await opt_reply(opt, kRepErrUnknown, why);
    std::shared_ptr<Volume> v = std::move(vol).value();
    if (bool ok = co_await send_export_info(opt, *v, requested); !ok) co_return false;
    if (opt == kOptGo) {
      volume_ = std::move(v);
      if (meta_export_ != name) contexts_.clear();
      *entered = true;
    }
    co_return true;
  }

  // The metadata contexts export `vol` offers: base:allocation and one
  // qemu:dirty-bitmap:<snapshot> per older snapshot (changed blocks since it).
  static std::vector<std::string> available_contexts(Volume& vol) {
    std::vector<std::string> out{"base:allocation"};
    for (const auto& s : vol.dirty_bitmap_sources()) out.push_back(kDirtyBitmapPrefix + s);
    return out;
  }

  static bool query_matches(const std::string& query, const std::string& context, bool list) {
    if (query == context) return true;
    // LIST accepts namespace / leaf-prefix queries: "base:", "qemu:", "qemu:dirty-bitmap:".
    return list && !query.empty() && query.back() == ':' && context.starts_with(query);
  }

  Task<bool> handle_meta_context(uint32_t opt, const std::string& data) {
    if (!structured_)
      co_return co_await opt_reply(opt, kRepErrInvalid, "structured replies not negotiated");
    const auto* p = reinterpret_cast<const uint8_t*>(data.data());
    size_t pos = 0;
    auto need = [&](size_t k) { return data.size() >= pos + k; };
    if (!need(4)) co_return co_await opt_reply(opt, kRepErrInvalid, "short option");
    uint32_t name_len = get_be32(p);
    pos = 4;
    if (name_len > kStringMaxBytes || !need(name_len + 4ull))
      co_return co_await opt_reply(opt, kRepErrInvalid, "bad name length");
    std::string name(data.data() + pos, name_len);
    pos += name_len;
    uint32_t nq = get_be32(p + pos);
    pos += 4;
    std::vector<std::string> queries;
    for (uint32_t i = 0; i < nq; ++i) {
      if (!need(4)) co_return co_await opt_reply(opt, kRepErrInvalid, "short query");
      uint32_t ql = get_be32(p + pos);
      pos += 4;
      if (ql > kStringMaxBytes || !need(ql))
        co_return co_await opt_reply(opt, kRepErrInvalid, "bad query length");
      queries.emplace_back(data.data() + pos, ql);
      pos += ql;
    }
    if (pos != data.size()) co_return co_await opt_reply(opt, kRepErrInvalid, "trailing bytes");
    std::string why;
    auto vol = srv_.open_volume(name, &why);
    if (!vol) co_return co_await opt_reply(opt, kRepErrUnknown, why);

    const bool list = opt == kOptListMetaContext;
    std::vector<std::string> chosen;
    for (const auto& c : available_contexts(*vol.value())) {
      bool match = list && queries.empty();
      for (const auto& q : queries) match = match || query_matches(q, c, list);
      if (match && chosen.size() < kContextsMax) chosen.push_back(c);
    }
    if (!list) {
      contexts_ = chosen;  // ids are positions + 1
      meta_export_ = name;
    }
    for (size_t i = 0; i < chosen.size(); ++i) {
      std::string s;
      append_be32(s, list ? 0 : static_cast<uint32_t>(i + 1));
      s.append(chosen[i]);
      if (bool ok = co_await opt_reply(opt, kRepMetaContext, s); !ok) co_return false;
    }
    co_return co_await opt_reply(opt, kRepAck);
  }

  // Returns true when the connection entered transmission with volume_ set.
  Task<bool> handshake() {
    uint8_t hello[18];
    put_be64(hello, kMagicNbd);
    put_be64(hello + 8, kMagicOpt);
    put_be16(hello + 16, kFlagFixedNewstyle | kFlagNoZeroes);
    if (bool ok = co_await send_all(hello, sizeof(hello)); !ok) co_return false;
    uint8_t cf[4];
    if (bool ok = co_await read_exact(cf, 4); !ok) co_return false;
    uint32_t client_flags = get_be32(cf);
    if ((client_flags & ~(kClientFlagFixedNewstyle | kClientFlagNoZeroes)) != 0) {
      CAIRN_LOG_DEBUG(kLog, "unknown client flags 0x%x: closing", client_flags);
      co_return false;
    }
    bool no_zeroes = (client_flags & kClientFlagNoZeroes) != 0;

    for (unsigned count = 0; count < kOptionsMax; ++count) {
      uint8_t oh[16];
      if (bool ok = co_await read_exact(oh, sizeof(oh)); !ok) co_return false;
      if (get_be64(oh) != kMagicOpt) {
        CAIRN_LOG_DEBUG(kLog, "bad option magic: closing");
        co_return false;
      }
      uint32_t opt = get_be32(oh + 8);
      uint32_t len = get_be32(oh + 12);
      if (len > kOptionDataMaxBytes) {
        CAIRN_LOG_DEBUG(kLog, "option %u data of %u bytes: closing", opt, len);
        co_return false;
      }
      std::string data(len, '\0');
      bool got = len == 0 || co_await read_exact(data.data(), len);
      if (!got) co_return false;
      if (srv_.stopping.load()) {
        if (opt == kOptAbort) co_return false;
        if (bool ok = co_await opt_reply(opt, kRepErrShutdown, "server is shutting down"); !ok) co_return false;
        continue;
      }

      switch (opt) {
        case kOptExportName: {
          std::string why;
          auto vol = srv_.open_volume(data, &why);
          if (!vol) {
            CAIRN_LOG_DEBUG(kLog, "EXPORT_NAME '%s' refused (%s): closing", data.c_str(), why.c_str());
            co_return false;
          }
          volume_ = std::move(vol).value();
          if (meta_export_ != data) contexts_.clear();
          uint8_t out[10 + 124] = {};
          put_be64(out, volume_->size_bytes());
          put_be16(out + 8, transmission_flags(volume_->read_only(), structured_));
          co_return co_await send_all(out, no_zeroes ? 10 : sizeof(out));
        }
        case kOptAbort:
          co_await opt_reply(opt, kRepAck);
          co_return false;
        case kOptList: {
          if (len != 0) {
            if (bool ok = co_await opt_reply(opt, kRepErrInvalid, "LIST takes no data"); !ok) co_return false;
            break;
          }
          for (const auto& v : srv_.store.list_volumes()) {
            std::string s;
            append_be32(s, static_cast<uint32_t>(v.name.size()));
            s.append(v.name);
            if (bool ok = co_await opt_reply(opt, kRepServer, s); !ok) co_return false;
          }
          if (bool ok = co_await opt_reply(opt, kRepAck); !ok) co_return false;
          break;
        }
        case kOptStartTls:
          if (bool ok = co_await opt_reply(opt, kRepErrPolicy, "TLS is not configured on this listener"); !ok)
            co_return false;
          break;
        case kOptInfo:
        case kOptGo: {
          bool entered = false;
          if (bool ok = co_await handle_info_or_go(opt, data, &entered); !ok) co_return false;
          if (entered) co_return true;
          break;
        }
        case kOptStructuredReply:
          if (len != 0) {
            if (bool ok = co_await opt_reply(opt, kRepErrInvalid, "STRUCTURED_REPLY takes no data"); !ok)
              co_return false;
            break;
          }
          structured_ = true;
          if (bool ok = co_await opt_reply(opt, kRepAck); !ok) co_return false;
          break;
        case kOptListMetaContext:
        case kOptSetMetaContext:
          if (bool ok = co_await handle_meta_context(opt, data); !ok) co_return false;
          break;
        default:
          if (bool ok = co_await opt_reply(opt, kRepErrUnsup, "unsupported option"); !ok) co_return false;
          break;
      }
    }
    CAIRN_LOG_DEBUG(kLog, "too many options: closing");
    co_return false;
  }

  // ---- transmission ----
  bool over_limit() const {
    return inflight_ >= kInflightMax || inflight_bytes_ >= kInflightBytesMax;
  }

  struct WaitSlot {
    Connection* c;
    bool await_ready() const noexcept { return !c->over_limit(); }
    void await_suspend(std::coroutine_handle<> h) noexcept { c->slot_waiter_ = h; }
    void await_resume() const noexcept {}
  };

  struct WaitIdle {
    Connection* c;
    bool await_ready() const noexcept { return c->inflight_ == 0 && !c->writing_; }
    void await_suspend(std::coroutine_handle<> h) noexcept { c->idle_waiter_ = h; }
    void await_resume() const noexcept {}
  };

  ExportView view() const {
    ExportView v;
    v.size_bytes = volume_->size_bytes();
    v.read_only = volume_->read_only();
    v.structured_replies = structured_;
    v.base_allocation = !contexts_.empty();
    return v;
  }

  Task<void> transmission() {
    uint8_t hb[kRequestHeaderBytes];
    while (!dead_) {
      if (bool ok = co_await read_exact(hb, sizeof(hb)); !ok) break;
      Request req = parse_request(hb);
      if (req.magic != kMagicRequest) {
        CAIRN_LOG_DEBUG(kLog, "bad request magic: closing");
        break;
      }
      if (req.type == kCmdDisc) break;
      uint32_t err = validate_request(req, view());
      AlignedBuf payload;
      if (req.type == kCmdWrite) {
        if (err != 0) {
          if (bool ok = co_await skip(req.length); !ok) break;
        } else {
          payload = alloc_aligned(req.length);
          if (!payload) {
            if (bool ok = co_await skip(req.length); !ok) break;
            err = kENoMem;
          } else {
            bool got = req.length == 0 || co_await read_exact(payload.get(), req.length);
            if (!got) break;
          }
        }
      }
      if (err != 0) {
        enqueue_error(req, err);
        continue;
      }
      WaitSlot slot{this};
      co_await slot;
      ++inflight_;
      inflight_bytes_ += (req.type == kCmdRead || req.type == kCmdWrite) ? req.length : 0;
      spawn(handle(shared_from_this(), req, std::move(payload)));
    }
  }

  Task<void> drain() {
    WaitIdle idle{this};
    co_await idle;
  }

  static Task<void> handle(std::shared_ptr<Connection> self, Request req, AlignedBuf payload) {
    Connection& c = *self;
    Volume& vol = *c.volume_;
    bool fua = (req.flags & kCmdFlagFua) != 0;
    Status st = ok();
    switch (req.type) {
      case kCmdRead: {
        AlignedBuf buf = alloc_aligned(req.length);
        if (!buf) {
          st = Errc::io_error;
          break;
        }
        if (req.length > 0) st = co_await vol.read(req.offset, req.length, buf.get());
        if (st) {
          c.enqueue_read(req, std::move(buf));
          c.finish(req);
          co_return;
        }
        break;
      }
      case kCmdWrite:
        if (req.length > 0) st = co_await vol.write(req.offset, req.length, payload.get(), fua);
        break;
      case kCmdFlush:
        st = co_await vol.flush();
        break;
      case kCmdTrim:
        if (req.length > 0) st = co_await vol.trim(req.offset, req.length, fua);
        break;
      case kCmdWriteZeroes: {
        bool no_hole = (req.flags & kCmdFlagNoHole) != 0;
        if (no_hole && (req.flags & kCmdFlagFastZero) != 0) {
          c.enqueue_error(req, kENotSup);  // zeroing while keeping allocation writes data
          c.finish(req);
          co_return;
        }
        if (req.length > 0) st = co_await vol.write_zeroes(req.offset, req.length, !no_hole, fua);
        break;
      }
      case kCmdCache:
        break;  // no server-side cache to warm: every read goes to the device
      case kCmdBlockStatus: {
        // One BLOCK_STATUS chunk per selected context, DONE on the last.
        size_t max_runs = (req.flags & kCmdFlagReqOne) ? 1 : 1024;
        std::vector<std::vector<AllocationRun>> per_context;
        for (const auto& ctx : c.contexts_) {
          auto runs = ctx.starts_with(kDirtyBitmapPrefix)
                          ? vol.changed_since(ctx.substr(strlen(kDirtyBitmapPrefix)), req.offset,
                                              req.length, max_runs)
                          : vol.allocation(req.offset, req.length, max_runs);
          if (!runs) {
            st = runs.error();
            break;
          }
          per_context.push_back(std::move(runs).value());
        }
        if (!st) break;
        for (size_t i = 0; i < per_context.size(); ++i) {
          bool dirty = c.contexts_[i].starts_with(kDirtyBitmapPrefix);
          c.enqueue_block_status(req, static_cast<uint32_t>(i + 1), dirty, per_context[i],
                                 i + 1 == per_context.size());
        }
        c.finish(req);
        co_return;
      }
      default:
        st = Errc::invalid_argument;
    }
    if (st) {
      c.enqueue_ok(req);
    } else {
      uint32_t e = nbd_errno(st.error());
      CAIRN_LOG_DEBUG(kLog, "request type=%u offset=%llu length=%u failed: %s", req.type,
                      static_cast<unsigned long long>(req.offset), req.length,
                      st.error().message().c_str());
      c.enqueue_error(req, e);
    }
    c.finish(req);
  }

  void finish(const Request& req) {
    auto& m = NbdMetrics::get();
    if (req.type < 8) m.requests[req.type]->inc();
    if (req.type == kCmdRead) m.read_bytes.inc(req.length);
    if (req.type == kCmdWrite) m.write_bytes.inc(req.length);
    --inflight_;
    inflight_bytes_ -= (req.type == kCmdRead || req.type == kCmdWrite) ? req.length : 0;
    if (slot_waiter_ && !over_limit()) std::exchange(slot_waiter_, {}).resume();
    maybe_idle();
  }

  void maybe_idle() {
    if (idle_waiter_ && inflight_ == 0 && !writing_) std::exchange(idle_waiter_, {}).resume();
  }

  // ---- replies ----
  void enqueue_ok(const Request& req) {
    Reply r;
    put_be32(r.head, kMagicSimpleReply);
    put_be32(r.head + 4, 0);
    put_be64(r.head + 8, req.handle);
    r.head_len = kSimpleReplyHeaderBytes;
    push(std::move(r));
  }

  void enqueue_error(const Request& req, uint32_t err) {
    NbdMetrics::get().errors.inc();
    Reply r;
    if (structured_) {
      const char* msg = nbd_error_text(err);
      uint16_t mlen = static_cast<uint16_t>(
          std::min<size_t>(strlen(msg), sizeof(r.head) - kStructuredReplyHeaderBytes - 6));
      put_be32(r.head, kMagicStructuredReply);
      put_be16(r.head + 4, kReplyFlagDone);
      put_be16(r.head + 6, kReplyTypeError);
      put_be64(r.head + 8, req.handle);
      put_be32(r.head + 16, 6u + mlen);
      put_be32(r.head + 20, err);
      put_be16(r.head + 24, mlen);
      memcpy(r.head + 26, msg, mlen);
      r.head_len = 26u + mlen;
    } else {
      put_be32(r.head, kMagicSimpleReply);
      put_be32(r.head + 4, err);
      put_be64(r.head + 8, req.handle);
      r.head_len = kSimpleReplyHeaderBytes;
    }
    push(std::move(r));
  }

  void enqueue_read(const Request& req, AlignedBuf data) {
    Reply r;
    if (!structured_) {
      put_be32(r.head, kMagicSimpleReply);
      put_be32(r.head + 4, 0);
      put_be64(r.head + 8, req.handle);
      r.head_len = kSimpleReplyHeaderBytes;
    } else if (req.length == 0) {
      put_be32(r.head, kMagicStructuredReply);
      put_be16(r.head + 4, kReplyFlagDone);
      put_be16(r.head + 6, kReplyTypeNone);
      put_be64(r.head + 8, req.handle);
      put_be32(r.head + 16, 0);
      r.head_len = kStructuredReplyHeaderBytes;
    } else {
      put_be32(r.head, kMagicStructuredReply);
      put_be16(r.head + 4, kReplyFlagDone);
      put_be16(r.head + 6, kReplyTypeOffsetData);
      put_be64(r.head + 8, req.handle);
      put_be32(r.head + 16, 8u + req.length);
      put_be64(r.head + 20, req.offset);
      r.head_len = kStructuredReplyHeaderBytes + 8;
    }
    r.data = std::move(data);
    r.data_len = req.length;
    push(std::move(r));
  }

  // base:allocation: a run not allocated is HOLE|ZERO. qemu:dirty-bitmap: an "allocated"
  // (changed) run is DIRTY (1), the rest 0.
  void enqueue_block_status(const Request& req, uint32_t context_id, bool dirty_bitmap,
                            const std::vector<AllocationRun>& runs, bool last) {
    Reply r;
    size_t n = std::max<size_t>(runs.size(), 1);
    r.data = alloc_aligned(4 + 8 * n);
    if (!r.data) {
      enqueue_error(req, kENoMem);
      return;
    }
    uint8_t* d = r.data.get();
    put_be32(d, context_id);
    size_t k = 0;
    for (const auto& run : runs) {
      if (run.length_bytes == 0) continue;
      uint32_t flags = dirty_bitmap ? (run.allocated ? kStateDirty : 0)
                                    : (run.allocated ? 0 : (kStateHole | kStateZero));
      put_be32(d + 4 + 8 * k, static_cast<uint32_t>(std::min<uint64_t>(run.length_bytes, req.length)));
      put_be32(d + 8 + 8 * k, flags);
      ++k;
    }
    if (k == 0) {  // the engine reported nothing: "unknown" over the whole range is always true
      put_be32(d + 4, req.length);
      put_be32(d + 8, 0);
      k = 1;
    }
    r.data_len = 4 + 8 * k;
    put_be32(r.head, kMagicStructuredReply);
    put_be16(r.head + 4, last ? kReplyFlagDone : 0);
    put_be16(r.head + 6, kReplyTypeBlockStatus);
    put_be64(r.head + 8, req.handle);
    put_be32(r.head + 16, static_cast<uint32_t>(r.data_len));
    r.head_len = kStructuredReplyHeaderBytes;
    push(std::move(r));
  }

  void push(Reply r) {
    if (dead_) return;
    queue_.push_back(std::move(r));
    if (!writing_) {
      // Start the writer once this batch of completions is handled: every reply that became
      // ready in the batch then goes out in one sendmsg.
      writing_ = true;
      r_.defer([self = shared_from_this()]() mutable { spawn(writer(std::move(self))); });
    }
  }

  // Sends queued replies in batches with sendmsg until the queue is empty.
  static Task<void> writer(std::shared_ptr<Connection> self) {
    Connection& c = *self;
    iovec iov[kIovMax];
    size_t head_sent = 0;  // bytes of queue_.front() already sent
    while (!c.queue_.empty() && !c.dead_) {
      size_t n = 0, skip = head_sent;
      for (auto it = c.queue_.begin(); it != c.queue_.end() && n + 2 <= kIovMax; ++it) {
        uint8_t* parts[2] = {it->head, it->data.get()};
        size_t lens[2] = {it->head_len, it->data_len};
        for (int i = 0; i < 2; ++i) {
          size_t len = lens[i];
          if (len == 0) continue;
          if (skip >= len) {
            skip -= len;
            continue;
          }
          iov[n].iov_base = parts[i] + skip;
          iov[n].iov_len = len - skip;
          skip = 0;
          ++n;
        }
      }
      msghdr msg{};
      msg.msg_iov = iov;
      msg.msg_iovlen = n;
      int res = co_await c.r_.sendmsg(c.fd_, &msg);
      if (res <= 0) {
        c.dead_ = true;
        c.queue_.clear();
        break;
      }
      size_t sent = head_sent + static_cast<size_t>(res);
      while (!c.queue_.empty()) {
        size_t total = c.queue_.front().head_len + c.queue_.front().data_len;
        if (sent < total) break;
        sent -= total;
        c.queue_.pop_front();
      }
      head_sent = sent;
    }
    c.writing_ = false;
    if (c.dead_) ::shutdown(c.fd_, SHUT_RDWR);  // wake the reader too
    c.maybe_idle();
  }

  NbdServer::Impl& srv_;
  Reactor& r_;
  int fd_;
  SocketReader reader_{r_, fd_};
  bool structured_ = false;
  std::vector<std::string> contexts_;  // selected metadata contexts; id = index + 1
  std::string meta_export_;
  std::shared_ptr<Volume> volume_;
  uint32_t inflight_ = 0;
  uint64_t inflight_bytes_ = 0;
  bool writing_ = false;
  bool dead_ = false;
  bool handshake_done_ = false;
  std::deque<Reply> queue_;
  std::coroutine_handle<> slot_waiter_;
  std::coroutine_handle<> idle_waiter_;
};

void start_connection(NbdServer::Impl& impl, Reactor& r, int fd) {
  auto conn = std::make_shared<Connection>(impl, r, fd);
  spawn(Connection::run(std::move(conn)));
}

Result<int> listen_tcp(const std::string& host, uint16_t port) {
  int fd = ::socket(host.find(':') != std::string::npos ? AF_INET6 : AF_INET,
                    SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_code(errno);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_storage ss{};
  socklen_t sl = 0;
  if (host.find(':') != std::string::npos) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    if (inet_pton(AF_INET6, host.c_str(), &a->sin6_addr) != 1) {
      ::close(fd);
      return Errc::invalid_argument;
    }
    sl = sizeof(*a);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    if (inet_pton(AF_INET, host.c_str(), &a->sin_addr) != 1) {
      ::close(fd);
      return Errc::invalid_argument;
    }
    sl = sizeof(*a);
  }
  if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), sl) != 0 || ::listen(fd, 256) != 0) {
    int e = errno;
    ::close(fd);
    return errno_code(e);
  }
  return fd;
}

Result<int> listen_unix(const std::string& path) {
  sockaddr_un a{};
  if (path.size() >= sizeof(a.sun_path)) return Errc::invalid_argument;
  struct stat st{};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return Errc::already_exists;  // never remove a non-socket
    ::unlink(path.c_str());
  }
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_code(errno);
  a.sun_family = AF_UNIX;
  memcpy(a.sun_path, path.c_str(), path.size() + 1);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(fd, 256) != 0) {
    int e = errno;
    ::close(fd);
    return errno_code(e);
  }
  ::chmod(path.c_str(), 0660);
  return fd;
}

}  // namespace

Task<void> NbdServer::Impl::accept_loop(int lfd, bool tcp) {
  Reactor& self = *Reactor::current();
  while (!stopping.load()) {
    int fd = co_await self.accept(lfd);
    if (fd < 0) {
      if (stopping.load()) break;
      if (fd == -EMFILE || fd == -ENFILE || fd == -ENOMEM || fd == -ENOBUFS) {
        CAIRN_LOG_WARN(kLog, "accept: %s; pausing", strerror(-fd));
        co_await self.sleep_ns(50'000'000);
      }
      continue;
    }
    if (server.connections_.load() >= server.options_.connections_max) {
      CAIRN_LOG_WARN(kLog, "connection limit %u reached: refusing a connection",
                     server.options_.connections_max);
      ::close(fd);
      continue;
    }
    if (tcp) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    server.connections_.fetch_add(1, std::memory_order_relaxed);
    register_fd(fd);
    Reactor* target = reactors[next_reactor.fetch_add(1) % reactors.size()].get();
    Impl* impl = this;
    target->post([impl, target, fd] {
      start_connection(*impl, *target, fd);
    });
  }
}

NbdServer::NbdServer(VolumeStore& store, Options options)
    : store_(store), options_(std::move(options)) {}

NbdServer::~NbdServer() { stop(); }

Status NbdServer::start() {
  CAIRN_ASSERT(!impl_);
  impl_ = std::make_unique<Impl>(*this, store_);
  unsigned n = std::max(1u, options_.threads);
  for (unsigned i = 0; i < n; ++i) {
    CAIRN_TRY(r, Reactor::create(1024));
    impl_->reactors.push_back(std::move(r));
  }
  std::vector<std::pair<int, bool>> listeners;
  if (options_.tcp_enabled) {
    auto fd = listen_tcp(options_.tcp_host, options_.tcp_port);
    if (!fd) {
      CAIRN_LOG_ERROR(kLog, "cannot listen on %s:%u: %s", options_.tcp_host.c_str(),
                      options_.tcp_port, fd.error().message().c_str());
      return fd.error();
    }
    sockaddr_storage ss{};
    socklen_t sl = sizeof(ss);
    getsockname(fd.value(), reinterpret_cast<sockaddr*>(&ss), &sl);
    bound_tcp_port_ = ntohs(ss.ss_family == AF_INET6
                                ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    listeners.emplace_back(fd.value(), true);
  }
  if (!options_.unix_path.empty()) {
    auto fd = listen_unix(options_.unix_path);
    if (!fd) {
      CAIRN_LOG_ERROR(kLog, "cannot listen on %s: %s", options_.unix_path.c_str(),
                      fd.error().message().c_str());
      for (auto& l : listeners) ::close(l.first);
      return fd.error();
    }
    listeners.emplace_back(fd.value(), false);
  }
  Impl* impl = impl_.get();
  for (auto& [fd, tcp] : listeners) {
    impl->listen_fds.push_back(fd);
    bool is_tcp = tcp;
    int lfd = fd;
    impl->reactors[0]->post([impl, lfd, is_tcp] { spawn(impl->accept_loop(lfd, is_tcp)); });
  }
  for (auto& r : impl->reactors) {
    Reactor* rp = r.get();
    impl->threads.emplace_back([rp] { rp->run(); });
  }
  return ok();
}

void NbdServer::stop() {
  if (!impl_) return;
  impl_->stopping.store(true);
  for (int fd : impl_->listen_fds) ::shutdown(fd, SHUT_RDWR);
  {
    std::lock_guard lk(impl_->conns_mu);
    for (int fd : impl_->conn_fds) ::shutdown(fd, SHUT_RDWR);
  }
  // Connections finish their in-flight requests, then close (bounded wait).
  for (int i = 0; i < 1000 && connections_.load() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  for (auto& r : impl_->reactors) r->stop();
  for (auto& t : impl_->threads) t.join();
  for (int fd : impl_->listen_fds) ::close(fd);
  if (!options_.unix_path.empty()) ::unlink(options_.unix_path.c_str());
  impl_.reset();
}

}  // namespace cairn::blockd
