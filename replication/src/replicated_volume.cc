#include "replication/replicated_volume.h"

#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <future>
#include <thread>

#include "common/assert.h"
#include "common/log.h"
#include "common/when_all.h"
#include "replication/volume_registry.h"

namespace cairn::replication {

namespace {
constexpr const char* kLog = "replication";
constexpr uint64_t kExtent = DirtyMap::kExtentBytes;
constexpr uint64_t kCopyExtentsMax = 16;  // one copy request: at most 1 MiB
constexpr size_t kCopyPipeline = 16;      // copy requests in flight per resync
constexpr uint64_t kTrimExtentsMax = link::kRangeMaxBytes / kExtent;  // one TRIM: 1 GiB
constexpr size_t kCheckpointExtents = 1024;  // 64 MiB copied: flush the replica, persist
constexpr auto kCheckpointInterval = std::chrono::seconds(1);  // ... or a second passed
using Clock = std::chrono::steady_clock;

struct AlignedBuffer {
  explicit AlignedBuffer(size_t n) {
    void* p = nullptr;
    CAIRN_ASSERT(posix_memalign(&p, 4096, n) == 0);
    data = static_cast<uint8_t*>(p);
  }
  ~AlignedBuffer() { free(data); }
  uint8_t* data;
};
}  // namespace

// A thread for the blocking parts of the write path (DirtyMap fsyncs, etcd calls): a
// coroutine hands it a function and is resumed on its own Reactor with the result. Jobs
// run in order; the destructor runs those still queued, then joins.
class BlockingWorker {
 public:
  BlockingWorker() : thread_([this] { loop(); }) {}
  ~BlockingWorker() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  struct Run {
    BlockingWorker* worker;
    std::function<Status()> fn;
    Status result = ok();
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
      Reactor* r = Reactor::current();
      CAIRN_ASSERT(r != nullptr);
      worker->post([this, h, r] {
        result = fn();
        r->resume_on(h);
      });
    }
    Status await_resume() const { return result; }
  };
  Run run(std::function<Status()> fn) { return Run{this, std::move(fn)}; }
  // The same from a thread that is not a Reactor: blocks until `fn` ran on the worker.
  Status call(std::function<Status()> fn) {
    std::promise<Status> done;
    auto result = done.get_future();
    post([&] { done.set_value(fn()); });
    return result.get();
  }

 private:
  void post(std::function<void()> job) {
    {
      std::lock_guard lock(mu_);
      jobs_.push_back(std::move(job));
    }
    cv_.notify_one();
  }
  void loop() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stop_ = false;
  std::thread thread_;
};

struct ReplicatedVolume::Peer {
  std::string node;
  std::string state;  // kInSync, kResyncing, kOut
  std::shared_ptr<ReplicaLink> link;
  std::unique_ptr<DirtyMap> dirty;
  bool out_recorded = true;  // etcd knows it is out (true for peers that start out)
  uint64_t resync_total_bytes = 0;
  uint64_t resync_done_bytes = 0;
  uint64_t resync_data_bytes = 0;  // of which data (the rest were holes, sent as TRIM)
  Clock::time_point resync_started;
};

ReplicatedVolume::ReplicatedVolume(std::shared_ptr<Volume> local, uint64_t epoch,
                                   std::vector<PeerInit> peers, Hooks hooks)
    : local_(std::move(local)), epoch_(epoch), hooks_(std::move(hooks)),
      worker_(std::make_unique<BlockingWorker>()) {
  for (auto& init : peers) {
    auto p = std::make_unique<Peer>();
    p->node = init.node;
    p->link = std::move(init.link);
    p->state = p->link ? kInSync : kOut;
    p->dirty = std::move(init.dirty);
    CAIRN_ASSERT(p->link || p->dirty);
    peers_.push_back(std::move(p));
  }
}

ReplicatedVolume::~ReplicatedVolume() {
  fence();
  worker_.reset();
}

void ReplicatedVolume::fence() {
  fenced_.store(true, std::memory_order_release);
  std::vector<std::shared_ptr<ReplicaLink>> links;
  {
    std::lock_guard lock(mu_);
    for (auto& p : peers_) {
      if (p->link) links.push_back(p->link);
    }
  }
  for (auto& l : links) l->close();
}

bool ReplicatedVolume::serving() const {
  return !fenced() && (!hooks_.may_serve || hooks_.may_serve());
}

Task<Status> ReplicatedVolume::read(uint64_t offset, uint64_t length, void* buf) {
  if (!serving()) co_return Errc::io_error;
  co_return co_await local_->read(offset, length, buf);
}

Task<Status> ReplicatedVolume::write(uint64_t offset, uint64_t length, const void* buf, bool fua) {
  link::Request req;
  req.type = link::Type::write;
  req.flags = fua ? link::kFua : 0;
  req.offset = offset;
  req.length = static_cast<uint32_t>(length);
  req.data_length = req.length;
  if (length > link::kDataMaxBytes) co_return Errc::too_large;
  co_return co_await mirror(req, buf, local_->write(offset, length, buf, fua));
}

Task<Status> ReplicatedVolume::trim(uint64_t offset, uint64_t length, bool fua) {
  // Ranges beyond one link request are split (NBD allows 4 GiB - 1 per TRIM).
  while (length > 0) {
    const uint64_t n = std::min(length, link::kRangeMaxBytes);
    link::Request req;
    req.type = link::Type::trim;
    req.flags = fua ? link::kFua : 0;
    req.offset = offset;
    req.length = static_cast<uint32_t>(n);
    Status st = co_await mirror(req, nullptr, local_->trim(offset, n, fua));
    if (!st) co_return st;
    offset += n;
    length -= n;
  }
  co_return ok();
}

Task<Status> ReplicatedVolume::write_zeroes(uint64_t offset, uint64_t length, bool may_release,
                                            bool fua) {
  while (length > 0) {
    const uint64_t n = std::min(length, link::kRangeMaxBytes);
    link::Request req;
    req.type = link::Type::zero;
    req.flags = uint16_t((fua ? link::kFua : 0) | (may_release ? 0 : link::kNoHole));
    req.offset = offset;
    req.length = static_cast<uint32_t>(n);
    Status st = co_await mirror(req, nullptr, local_->write_zeroes(offset, n, may_release, fua));
    if (!st) co_return st;
    offset += n;
    length -= n;
  }
  co_return ok();
}

Task<Status> ReplicatedVolume::send_to(std::shared_ptr<ReplicaLink> link, link::Request req,
                                       const void* data, Status* out) {
  auto call = link->call(req, data);
  *out = co_await call;
  co_return ok();
}

Task<Status> ReplicatedVolume::mirror(link::Request req, const void* data, Task<Status> local) {
  if (!serving()) co_return Errc::io_error;
  const uint64_t first = req.offset / kExtent;
  const uint64_t last = (req.offset + std::max<uint64_t>(req.length, 1) - 1) / kExtent;
  Stripes locks(stripes_);
  co_await locks.lock(first, last);

  std::vector<std::shared_ptr<ReplicaLink>> links;
  std::vector<std::string> nodes;
  std::vector<std::string> skipped;  // out now: they must find this write in their maps
  {
    std::lock_guard lock(mu_);
    for (auto& p : peers_) {
      if (p->link && p->state != kOut) {
        links.push_back(p->link);
        nodes.push_back(p->node);
      } else {
        skipped.push_back(p->node);
      }
    }
  }
  std::vector<Status> results(links.size(), ok());
  std::vector<Task<Status>> tasks;
  tasks.push_back(std::move(local));
  for (size_t i = 0; i < links.size(); ++i) tasks.push_back(send_to(links[i], req, data, &results[i]));
  Status local_st = co_await when_all(std::move(tasks));
  if (req.length > 0) remember_unflushed(first, last);

  std::vector<std::string> failed;
  for (size_t i = 0; i < results.size(); ++i) {
    if (results[i]) continue;
    if (results[i].error() == Errc::permission_denied) {
      CAIRN_LOG_WARN(kLog, "volume %s: replica %s has a newer epoch than %llu: fenced",
                     name().c_str(), nodes[i].c_str(), static_cast<unsigned long long>(epoch_));
      fence();
      co_return Errc::io_error;
    }
    failed.push_back(nodes[i]);
  }
  if (!failed.empty() || !skipped_cover(skipped, req.offset, req.length)) {
    auto job = worker_->run([&] { return record_missed(failed, skipped, req.offset, req.length); });
    Status st = co_await job;
    if (!st) co_return Errc::io_error;
  }
  co_return local_st;
}

void ReplicatedVolume::remember_unflushed(uint64_t first, uint64_t last) {
  // Added once the write completed, to the generation current now: a FLUSH that began
  // before does not cover it. Kept until a FLUSH every replica completed covers it, for a
  // replica that fails meanwhile may have lost it in a crash.
  std::lock_guard lock(mu_);
  auto& gen = unflushed_[flush_gen_];
  if (unflushed_count_ + (last - first + 1) > kUnflushedExtentsMax) {
    unflushed_overflow_ = true;
    return;
  }
  for (uint64_t e = first; e <= last; ++e) unflushed_count_ += gen.insert(e).second;
}

bool ReplicatedVolume::skipped_cover(const std::vector<std::string>& skipped, uint64_t offset,
                                     uint64_t length) {
  if (skipped.empty()) return true;
  const uint64_t first = offset / kExtent;
  const uint64_t last = (offset + std::max<uint64_t>(length, 1) - 1) / kExtent;
  if (last - first >= 64) return false;
  std::lock_guard lock(mu_);
  for (const auto& node : skipped) {
    Peer* p = find_locked(node);
    if (!p->dirty || (p->state == kOut && !p->out_recorded)) return false;
    if (length == 0) continue;
    for (uint64_t e = first; e <= last; ++e) {
      if (!p->dirty->test(e)) return false;
    }
  }
  return true;
}

ReplicatedVolume::Peer* ReplicatedVolume::find_locked(const std::string& node) {
  for (auto& p : peers_) {
    if (p->node == node) return p.get();
  }
  CAIRN_ASSERT(false);
  return nullptr;
}

Status ReplicatedVolume::record_missed(const std::vector<std::string>& failed,
                                       const std::vector<std::string>& skipped, uint64_t offset,
                                       uint64_t length) {
  std::vector<std::shared_ptr<ReplicaLink>> dropped;
  std::vector<Peer*> newly_out;
  std::vector<uint64_t> unflushed;
  bool overflow = false;
  {
    std::lock_guard lock(mu_);
    for (const auto& node : failed) {
      Peer* p = find_locked(node);
      if (p->state == kOut) continue;
      CAIRN_LOG_WARN(kLog, "volume %s: replica %s failed: out of sync", name().c_str(), node.c_str());
      if (p->link) dropped.push_back(std::move(p->link));
      p->link.reset();
      p->state = kOut;
      p->out_recorded = false;
      newly_out.push_back(p);
    }
    if (!newly_out.empty()) {
      overflow = unflushed_overflow_;
      for (auto& [gen, set] : unflushed_) unflushed.insert(unflushed.end(), set.begin(), set.end());
    }
  }
  for (auto& l : dropped) l->close();
  for (Peer* p : newly_out) {
    if (!p->dirty) {
      auto d = hooks_.open_dirty(p->node);
      if (!d) {
        CAIRN_LOG_ERROR(kLog, "volume %s: cannot keep the dirty map of %s: %s", name().c_str(),
                        p->node.c_str(), d.error().message().c_str());
        return d.error();
      }
      std::lock_guard lock(mu_);
      p->dirty = std::move(d).value();
    }
    CAIRN_TRY(overflow ? p->dirty->mark_all() : p->dirty->mark_extents(unflushed));
  }
  // The range goes into the map of every replica that did not get it: those out now, and
  // those this request skipped (one may have become resyncing since; its copier then
  // finds the bit before it can call the replica in sync).
  std::vector<Peer*> missing;
  {
    std::lock_guard lock(mu_);
    for (auto& p : peers_) {
      const bool was_skipped = std::find(skipped.begin(), skipped.end(), p->node) != skipped.end();
      if (p->state == kOut || was_skipped) missing.push_back(p.get());
    }
  }
  for (Peer* p : missing) {
    if (length > 0) {
      CAIRN_TRY(p->dirty->mark(offset, length));
    }
    bool record;
    {
      std::lock_guard lock(mu_);
      record = p->state == kOut && !p->out_recorded;
    }
    if (!record) continue;
    Status st = hooks_.set_state(p->node, kOut);
    if (!st) {
      CAIRN_LOG_ERROR(kLog, "volume %s: cannot record replica %s out of sync: %s",
                      name().c_str(), p->node.c_str(), st.error().message().c_str());
      return st;
    }
    std::lock_guard lock(mu_);
    p->out_recorded = true;
  }
  return ok();
}

Task<Status> ReplicatedVolume::flush() {
  if (!serving()) co_return Errc::io_error;
  std::vector<std::shared_ptr<ReplicaLink>> links;
  std::vector<std::string> nodes;
  uint64_t gen;
  {
    std::lock_guard lock(mu_);
    gen = flush_gen_++;
    for (auto& p : peers_) {
      if (p->link && p->state != kOut) {
        links.push_back(p->link);
        nodes.push_back(p->node);
      }
    }
  }
  link::Request req;
  req.type = link::Type::flush;
  std::vector<Status> results(links.size(), ok());
  std::vector<Task<Status>> tasks;
  tasks.push_back(local_->flush());
  for (size_t i = 0; i < links.size(); ++i) tasks.push_back(send_to(links[i], req, nullptr, &results[i]));
  Status local_st = co_await when_all(std::move(tasks));
  std::vector<std::string> failed;
  for (size_t i = 0; i < results.size(); ++i) {
    if (results[i]) continue;
    if (results[i].error() == Errc::permission_denied) {
      fence();
      co_return Errc::io_error;
    }
    failed.push_back(nodes[i]);
  }
  if (!failed.empty()) {
    auto job = worker_->run([&] { return record_missed(failed, {}, 0, 0); });
    Status st = co_await job;
    if (!st) co_return Errc::io_error;
  }
  if (local_st) {
    std::lock_guard lock(mu_);
    // Every replica still in the write set made the writes before `gen` durable.
    for (auto it = unflushed_.begin(); it != unflushed_.end() && it->first <= gen;) {
      unflushed_count_ -= it->second.size();
      it = unflushed_.erase(it);
    }
    if (unflushed_.empty()) unflushed_overflow_ = false;
  }
  co_return local_st;
}

Status ReplicatedVolume::check_links() {
  std::vector<std::string> broken;
  bool unrecorded = false;
  {
    std::lock_guard lock(mu_);
    for (auto& p : peers_) {
      if (p->state != kOut && p->link && p->link->broken()) broken.push_back(p->node);
      unrecorded = unrecorded || (p->state == kOut && !p->out_recorded);
    }
  }
  if ((broken.empty() && !unrecorded) || fenced()) return ok();
  // On the worker, like every other recording: they never interleave. This also retries
  // recording a replica out whose CAS failed before (etcd slow or away).
  return worker_->call([&] { return record_missed(broken, {}, 0, 0); });
}

std::vector<std::string> ReplicatedVolume::out_peers() const {
  std::vector<std::string> out;
  std::lock_guard lock(mu_);
  for (auto& p : peers_) {
    if (p->state == kOut && p->out_recorded) out.push_back(p->node);
  }
  return out;
}

Status ReplicatedVolume::attach_link(const std::string& node, std::shared_ptr<ReplicaLink> link,
                                     bool emptied) {
  Peer* peer = nullptr;
  {
    std::lock_guard lock(mu_);
    for (auto& p : peers_) {
      if (p->node == node) peer = p.get();
    }
    if (!peer || peer->state != kOut || !peer->dirty) return Errc::invalid_argument;
  }
  if (emptied) {
    // A new copy reads as zeros everywhere: only what holds data here needs copying.
    std::vector<uint64_t> extents;
    const uint64_t size = size_bytes();
    for (uint64_t pos = 0; pos < size;) {
      CAIRN_TRY(runs, local_->allocation(pos, size - pos, 1024));
      if (runs.empty()) return Errc::io_error;
      for (const auto& run : runs) {
        const uint64_t n = std::min(run.length_bytes, size - pos);
        for (uint64_t e = pos / kExtent; run.allocated && e <= (pos + n - 1) / kExtent; ++e) {
          if (extents.empty() || extents.back() != e) extents.push_back(e);
        }
        pos += n;
      }
    }
    CAIRN_TRY(peer->dirty->mark_extents(extents));
  }
  std::lock_guard lock(mu_);
  peer->link = std::move(link);
  peer->state = kResyncing;
  peer->resync_total_bytes = peer->dirty->count() * kExtent;
  peer->resync_done_bytes = 0;
  peer->resync_data_bytes = 0;
  peer->resync_started = Clock::now();
  CAIRN_LOG_INFO(kLog, "volume %s: replica %s back, resyncing %llu extents%s", name().c_str(),
                 node.c_str(), static_cast<unsigned long long>(peer->dirty->count()),
                 emptied ? " (full rebuild)" : "");
  return ok();
}

Task<Status> ReplicatedVolume::copy_run(Peer& peer, uint64_t first, uint64_t count,
                                        uint64_t* copied, std::vector<uint64_t>* done) {
  Stripes locks(stripes_);
  co_await locks.lock(first, first + count - 1);
  std::shared_ptr<ReplicaLink> link;
  {
    std::lock_guard lock(mu_);
    link = peer.link;
  }
  if (!link || link->broken()) co_return Errc::io_error;
  const uint64_t offset = first * kExtent;
  const uint64_t length = std::min(count * kExtent, size_bytes() - offset);
  auto buffer = std::make_unique<AlignedBuffer>(kCopyExtentsMax * kExtent);
  uint64_t data_bytes = 0;
  // Holes are trimmed, data is copied; the allocation map may come in several answers.
  const uint64_t end = offset + length;
  for (uint64_t pos = offset; pos < end;) {
    CAIRN_CO_TRY(runs, local_->allocation(pos, end - pos, 64));
    if (runs.empty()) co_return Errc::io_error;
    for (const auto& run : runs) {
      const uint64_t n = std::min({run.length_bytes, end - pos,
                                   run.allocated ? kCopyExtentsMax * kExtent : link::kRangeMaxBytes});
      if (n == 0) break;
      link::Request req;
      req.offset = pos;
      req.length = static_cast<uint32_t>(n);
      if (run.allocated) {
        data_bytes += n;
        Status rd = co_await local_->read(pos, n, buffer->data);
        if (!rd) co_return rd;
        req.type = link::Type::write;
        req.data_length = req.length;
      } else {
        req.type = link::Type::trim;
      }
      auto call = link->call(req, run.allocated ? buffer->data : nullptr);
      Status st = co_await call;
      if (!st) co_return st;
      pos += n;
      break;  // re-read the map from pos: the run may have been longer than one request
    }
  }
  // Cleared only once the replica flushed them: a crash before may still lose them.
  for (uint64_t e = first; e < first + count; ++e) done->push_back(e);
  *copied += length;
  std::lock_guard lock(mu_);
  peer.resync_done_bytes += length;
  peer.resync_data_bytes += data_bytes;
  co_return ok();
}

Task<Status> ReplicatedVolume::checkpoint(Peer& peer, std::vector<uint64_t>* done) {
  std::shared_ptr<ReplicaLink> link;
  {
    std::lock_guard lock(mu_);
    link = peer.link;
  }
  if (!link) co_return Errc::io_error;
  link::Request req;
  req.type = link::Type::flush;
  auto call = link->call(req);
  Status st = co_await call;
  if (!st) co_return st;
  for (uint64_t e : *done) peer.dirty->clear(e);
  done->clear();
  co_return peer.dirty->sync();
}

Task<Status> ReplicatedVolume::resync(const std::string& node, uint64_t rate_bytes_per_s,
                                      uint64_t* copied) {
  Peer* peer = nullptr;
  {
    std::lock_guard lock(mu_);
    for (auto& p : peers_) {
      if (p->node == node && p->state == kResyncing) peer = p.get();
    }
  }
  if (!peer) co_return Errc::invalid_argument;
  set_rebuild_rate(rate_bytes_per_s);
  const auto started = Clock::now();
  uint64_t pass_copied = 0;
  Status st = ok();
  std::vector<uint64_t> done;  // copied this pass, cleared after the replica's FLUSH
  auto last_checkpoint = Clock::now();
  for (;;) {
    // Up to kCopyPipeline runs of dirty extents are copied at once: distinct extents, each
    // run under its own stripes (runs that share a stripe simply take turns).
    for (auto e = peer->dirty->next(0); e;) {
      if (!serving()) {
        st = Errc::io_error;
        break;
      }
      std::vector<Task<Status>> batch;
      const auto batch_started = Clock::now();
      const uint64_t copied_before = pass_copied;
      // Under a rate bound, batches of about a tenth of a second's worth keep it smooth.
      const uint64_t rate_now = rebuild_rate_.load(std::memory_order_relaxed);
      const size_t pipeline =
          rate_now == 0 ? kCopyPipeline
                        : std::clamp<size_t>(rate_now / 10 / (kCopyExtentsMax * kExtent), 1,
                                             kCopyPipeline);
      while (e && batch.size() < pipeline) {
        // A run of dirty extents: up to 1 MiB where there is data, up to 1 GiB of hole
        // (one TRIM) where the local copy holds nothing.
        // The map is asked about 1 MiB first (its cost grows with the range asked), and
        // about up to 1 GiB only when that much is a hole.
        uint64_t limit = kCopyExtentsMax;
        const uint64_t at = *e * kExtent;
        const uint64_t probe = std::min(kCopyExtentsMax * kExtent, size_bytes() - at);
        auto head = local_->allocation(at, probe, 1);
        if (head && !head.value().empty() && !head.value()[0].allocated &&
            head.value()[0].length_bytes >= probe) {
          auto hole = local_->allocation(at, std::min(kTrimExtentsMax * kExtent, size_bytes() - at), 1);
          if (hole && !hole.value().empty() && !hole.value()[0].allocated)
            limit = std::clamp<uint64_t>(hole.value()[0].length_bytes / kExtent, 1, kTrimExtentsMax);
        }
        uint64_t count = 1;
        while (count < limit && *e + count < peer->dirty->extents() &&
               peer->dirty->test(*e + count)) {
          ++count;
        }
        batch.push_back(copy_run(*peer, *e, count, &pass_copied, &done));
        e = peer->dirty->next(*e + count);
      }
      st = co_await when_all(std::move(batch));
      if (!st) break;
      // Progress survives a restart of either side: checkpointed every kCheckpointExtents
      // or every kCheckpointInterval, whichever comes first.
      if (done.size() >= kCheckpointExtents ||
          (!done.empty() && Clock::now() - last_checkpoint >= kCheckpointInterval)) {
        st = co_await checkpoint(*peer, &done);
        if (!st) break;
        last_checkpoint = Clock::now();
      }
      // The rate bound (read per batch: a change applies at once): the batch's bytes are
      // due that long after it started; wait in slices, so that a fenced or stopping
      // volume does not keep its resync waiting.
      const uint64_t rate = rebuild_rate_.load(std::memory_order_relaxed);
      const auto due = rate == 0 ? batch_started
                       : batch_started + std::chrono::nanoseconds(static_cast<uint64_t>(
                                             double(pass_copied - copied_before) * 1e9 / double(rate)));
      for (auto now = Clock::now(); due > now && serving(); now = Clock::now()) {
        const auto slice = std::min<Clock::duration>(due - now, std::chrono::milliseconds(100));
        co_await Reactor::current()->sleep_ns(
            std::chrono::duration_cast<std::chrono::nanoseconds>(slice).count());
      }
    }
    if (!st) break;
    // Make the copies durable, then check under a barrier (every stripe: no write in
    // flight) that nothing is dirty any more; writes after it reach the replica anyway.
    st = co_await checkpoint(*peer, &done);
    if (!st) break;
    Stripes all(stripes_);
    co_await all.lock_all();
    if (peer->dirty->count() == 0) {
      std::lock_guard lock(mu_);
      if (peer->state == kResyncing) peer->state = kInSync;
      break;
    }
  }
  *copied += pass_copied;
  if (!st) {
    if (st.error() == Errc::permission_denied) {
      fence();
      co_return Errc::io_error;
    }
    auto job = worker_->run([&] { return record_missed({node}, {}, 0, 0); });
    co_await job;
    co_return st;
  }
  const double secs = std::chrono::duration<double>(Clock::now() - started).count();
  CAIRN_LOG_INFO(kLog, "volume %s: replica %s in sync again (%llu bytes copied in %.1f s)",
                 name().c_str(), node.c_str(), static_cast<unsigned long long>(pass_copied), secs);
  // On the worker, after any recording of a failure that came first: a replica that failed
  // again right after the barrier is not called in sync.
  auto job = worker_->run([&]() -> Status {
    {
      std::lock_guard lock(mu_);
      if (peer->state != kInSync) return Errc::io_error;
    }
    CAIRN_TRY(hooks_.set_state(node, kInSync));
    // A map left behind only makes a later primary here resync this replica again.
    if (Status rm = peer->dirty->remove(); !rm) {
      CAIRN_LOG_WARN(kLog, "volume %s: cannot remove %s: %s", name().c_str(),
                     peer->dirty->path().c_str(), rm.error().message().c_str());
    }
    // A later failure opens a new map (and persists it again).
    std::lock_guard lock(mu_);
    peer->dirty.reset();
    return ok();
  });
  co_return co_await job;
}

Task<Status> ReplicatedVolume::snapshot(std::string snapshot, bool remove,
                                        std::function<Status()> local) {
  if (!serving()) co_return Errc::io_error;
  if (snapshot.empty() || snapshot.size() > link::kNameMaxBytes) co_return Errc::invalid_argument;
  Stripes all(stripes_);
  co_await all.lock_all();
  std::vector<std::shared_ptr<ReplicaLink>> links;
  std::vector<std::string> nodes;
  {
    std::lock_guard lock(mu_);
    for (auto& p : peers_) {
      if (p->link && p->state == kInSync) {
        links.push_back(p->link);
        nodes.push_back(p->node);
      }
    }
  }
  link::Request req;
  req.type = remove ? link::Type::snapshot_delete : link::Type::snapshot;
  req.data_length = static_cast<uint32_t>(snapshot.size());
  std::vector<Status> results(links.size(), ok());
  std::vector<Task<Status>> tasks;
  for (size_t i = 0; i < links.size(); ++i)
    tasks.push_back(send_to(links[i], req, snapshot.data(), &results[i]));
  co_await when_all(std::move(tasks));
  for (size_t i = 0; i < results.size(); ++i) {
    if (results[i]) continue;
    // Deleting what a replica does not have is done already.
    if (remove && results[i].error() == Errc::not_found) continue;
    if (results[i].error() == Errc::permission_denied) fence();
    CAIRN_LOG_WARN(kLog, "volume %s: snapshot %s %s on replica %s failed: %s", name().c_str(),
                   snapshot.c_str(), remove ? "delete" : "create", nodes[i].c_str(),
                   results[i].error().message().c_str());
    co_return results[i];
  }
  co_return local();
}

std::vector<ReplicatedVolume::PeerStatus> ReplicatedVolume::peers() const {
  std::vector<PeerStatus> out;
  std::lock_guard lock(mu_);
  for (auto& p : peers_) {
    PeerStatus s;
    s.node = p->node;
    s.state = p->state;
    s.dirty_extents = p->dirty ? p->dirty->count() : 0;
    // In sync: the numbers of the last resync (none: zeros).
    s.resync_total_bytes = p->resync_total_bytes;
    s.resync_done_bytes = p->resync_done_bytes;
    s.resync_data_bytes = p->resync_data_bytes;
    if (p->state == kResyncing) {
      const double secs = std::chrono::duration<double>(Clock::now() - p->resync_started).count();
      s.resync_bytes_per_s = secs > 0 ? p->resync_done_bytes / secs : 0;
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace cairn::replication
