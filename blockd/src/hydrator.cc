#include "hydrator.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "common/assert.h"
#include "common/fault.h"
#include "common/file.h"
#include "common/log.h"

namespace cairn::blockd {
namespace {

constexpr const char* kLog = "backup";
constexpr auto kRetryEvery = std::chrono::seconds(2);

bool bit(const std::string& bytes, uint64_t i) {
  return i / 8 < bytes.size() && (static_cast<uint8_t>(bytes[i / 8]) >> (i % 8)) & 1;
}

}  // namespace

Hydrator::Hydrator(std::string state_path, cairn::v1::HydrationState state, std::shared_ptr<Volume> volume,
                   int workers, backup::JobProgress* progress)
    : state_path_(std::move(state_path)),
      state_(std::move(state)),
      volume_(std::move(volume)),
      workers_(std::max(1, workers)),
      progress_(progress),
      sink_(volume_),
      chunk_size_(state_.chunk_size()),
      nchunks_(state_.chunks()) {
  CAIRN_ASSERT(chunk_size_ > 0);
  size_t words = (nchunks_ + 63) / 64;
  bits_ = std::make_unique<std::atomic<uint64_t>[]>(words);
  uint64_t missing = 0;
  for (uint64_t i = 0; i < nchunks_; i++) {
    if (bit(state_.hydrated(), i)) {
      bits_[i / 64].fetch_or(1ull << (i % 64));
    } else {
      missing++;
    }
  }
  state_.mutable_hydrated()->resize((nchunks_ + 7) / 8, '\0');
  remaining_ = missing;
  busy_.assign(nchunks_, false);
  if (progress_) {
    progress_->total_bytes = volume_->size_bytes();
    progress_->done_bytes = std::min<uint64_t>(volume_->size_bytes(), (nchunks_ - missing) * chunk_size_);
  }
}

Hydrator::~Hydrator() { stop(); }

bool Hydrator::is_hydrated(uint64_t chunk) const {
  return (bits_[chunk / 64].load(std::memory_order_acquire) >> (chunk % 64)) & 1;
}

bool Hydrator::chunk_in_backup(uint64_t chunk) const {
  if (!connected_.load(std::memory_order_acquire)) return true;  // not known yet: say data
  return in_backup_[chunk];
}

bool Hydrator::all_hydrated(uint64_t offset, uint64_t length) const {
  if (remaining_.load(std::memory_order_acquire) == 0 || length == 0) return true;
  uint64_t last = std::min((offset + length - 1) / chunk_size_, nchunks_ - 1);
  for (uint64_t c = offset / chunk_size_; c <= last; c++) {
    if (!is_hydrated(c)) return false;
  }
  return true;
}

std::string Hydrator::last_error() const {
  std::lock_guard lock(mu_);
  return last_error_;
}

void Hydrator::start() {
  std::lock_guard lock(threads_mu_);
  for (int i = 0; i < workers_; i++) threads_.emplace_back([this] { worker(); });
}

void Hydrator::stop() {
  std::vector<Waiter*> failed;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    for (auto& [chunk, waiters] : waiting_) {
      for (Waiter* w : waiters) {
        *w->result = Errc::unavailable;
        if (--w->remaining == 0) failed.push_back(w);
      }
    }
    waiting_.clear();
  }
  for (Waiter* w : failed) {
    w->reactor->post([h = w->handle] { h.resume(); });
    delete w;
  }
  cv_.notify_all();
  done_cv_.notify_all();
  std::lock_guard lock(threads_mu_);  // stop() may run on the job's thread and the owner's at once
  for (auto& t : threads_) t.join();
  threads_.clear();
}

bool Hydrator::wait_done() {
  std::unique_lock lock(mu_);
  done_cv_.wait(lock, [&] { return remaining_.load() == 0 || stopping_; });
  return remaining_.load() == 0;
}

bool Hydrator::enqueue(uint64_t offset, uint64_t length, std::coroutine_handle<> handle, Status* result) {
  Reactor* reactor = Reactor::current();
  CAIRN_ASSERT(reactor != nullptr);
  std::lock_guard lock(mu_);
  if (stopping_) {
    *result = Errc::unavailable;
    return false;
  }
  auto* w = new Waiter{reactor, handle, result, 0};
  uint64_t last = std::min((offset + length - 1) / chunk_size_, nchunks_ - 1);
  for (uint64_t c = offset / chunk_size_; c <= last; c++) {
    if (is_hydrated(c)) continue;
    waiting_[c].push_back(w);
    wanted_.push_back(c);
    w->remaining++;
  }
  if (w->remaining == 0) {
    delete w;
    return false;  // hydrated meanwhile: go on at once
  }
  cv_.notify_all();
  return true;
}

bool Hydrator::connect() {
  const auto& req = state_.request();
  auto loc = backup::parse_repo_url(req.target().repo());
  if (!loc) return false;
  backup::S3Config config;
  config.endpoint = req.target().endpoint();
  config.access_key = req.target().access_key();
  config.secret_key = req.target().secret_key();
  if (!req.target().region().empty()) config.region = req.target().region();
  config.bucket = loc.value().bucket;
  config.prefix = loc.value().prefix;
  std::optional<backup::RepoKey> key;
  if (!req.target().key_hex().empty()) {
    auto k = backup::parse_repo_key(req.target().key_hex());
    if (!k) return false;
    key = k.value();
  }
  auto store = backup::S3BlobStore::open(config);
  if (!store) return false;
  auto repo = backup::Repository::open(*store.value(), key);
  if (!repo) {
    std::lock_guard lock(mu_);
    last_error_ = "repository " + req.target().repo() + ": " + repo.error().message();
    return false;
  }
  auto manifest = repo.value()->get_manifest(req.backup_id());
  if (!manifest || manifest.value().chunk_size() != chunk_size_ ||
      (manifest.value().volume_size() + chunk_size_ - 1) / chunk_size_ != nchunks_) {
    std::lock_guard lock(mu_);
    last_error_ = "backup " + req.backup_id() + ": " +
                  (manifest ? std::string("does not match the volume") : manifest.error().message());
    return false;
  }
  store_ = std::move(store.value());
  repo_ = std::move(repo.value());
  manifest_ = std::move(manifest.value());
  in_backup_.assign(nchunks_, false);
  for (const auto& c : manifest_.chunks()) in_backup_[c.index()] = true;
  connected_.store(true, std::memory_order_release);
  return true;
}

Status Hydrator::persist() {
  return write_file_atomic(state_path_, state_.SerializeAsString(), 0600);
}

Status Hydrator::hydrate(uint64_t chunk) {
  if (int e = CAIRN_FAULT_POINT("backup.hydrate.chunk")) return errno_code(e);
  CAIRN_TRY(data, backup::read_backup_chunk(*repo_, manifest_, chunk));
  CAIRN_TRY(backup::write_nonzero_blocks(sink_, chunk * chunk_size_, data));
  // Data durable before the bit: a bit never claims bytes a crash could lose.
  CAIRN_TRY(sink_.flush());
  std::lock_guard lock(persist_mu_);
  auto& bytes = *state_.mutable_hydrated();
  bytes[chunk / 8] = static_cast<char>(static_cast<uint8_t>(bytes[chunk / 8]) | (1u << (chunk % 8)));
  return persist();
}

void Hydrator::finish_chunk(uint64_t chunk, const Status& status) {
  std::vector<Waiter*> ready;
  {
    std::lock_guard lock(mu_);
    busy_[chunk] = false;
    if (status) {
      bits_[chunk / 64].fetch_or(1ull << (chunk % 64), std::memory_order_release);
      remaining_--;
      if (progress_) progress_->done_bytes += std::min(chunk_size_, volume_->size_bytes() - chunk * chunk_size_);
    } else {
      last_error_ = "chunk " + std::to_string(chunk) + ": " + status.error().message();
    }
    auto it = waiting_.find(chunk);
    if (it != waiting_.end()) {
      for (Waiter* w : it->second) {
        if (!status && *w->result) *w->result = status.error();
        if (--w->remaining == 0) ready.push_back(w);
      }
      waiting_.erase(it);
    }
  }
  for (Waiter* w : ready) {
    w->reactor->post([h = w->handle] { h.resume(); });
    delete w;
  }
  if (remaining_.load() == 0) done_cv_.notify_all();
}

void Hydrator::worker() {
  // The first worker connects; the others wait for it.
  while (!connected_.load()) {
    {
      std::lock_guard c(connect_mu_);
      if (!connected_.load() && connect()) break;
    }
    if (connected_.load()) break;
    std::unique_lock lock(mu_);
    if (cv_.wait_for(lock, kRetryEvery, [&] { return stopping_; })) return;
  }
  auto last_failure = std::chrono::steady_clock::now() - kRetryEvery;
  for (;;) {
    uint64_t chunk = nchunks_;
    {
      std::unique_lock lock(mu_);
      for (;;) {
        if (stopping_ || remaining_.load() == 0) return;
        if (!volume_->alive()) {  // deleted (forced) under us: nothing left to fill
          last_error_ = "the volume was deleted";
          stopping_ = true;
          done_cv_.notify_all();
          return;
        }
        while (!wanted_.empty()) {
          uint64_t c = wanted_.front();
          wanted_.pop_front();
          if (!is_hydrated(c) && !busy_[c]) {
            chunk = c;
            break;
          }
        }
        if (chunk < nchunks_) break;
        // Background pass; after a failure, wait a little before going round again.
        if (std::chrono::steady_clock::now() - last_failure >= kRetryEvery) {
          for (uint64_t n = 0; n < nchunks_ && chunk == nchunks_; n++) {
            uint64_t c = (cursor_ + n) % nchunks_;
            if (!is_hydrated(c) && !busy_[c]) chunk = c;
          }
          if (chunk < nchunks_) {
            cursor_ = chunk + 1;
            break;
          }
        }
        cv_.wait_for(lock, std::chrono::milliseconds(200));
      }
      busy_[chunk] = true;
    }
    Status s = hydrate(chunk);
    if (!s) {
      last_failure = std::chrono::steady_clock::now();
      CAIRN_LOG_WARN(kLog, "hydrate %s: chunk %llu failed: %s", volume_->name().c_str(),
                     static_cast<unsigned long long>(chunk), s.error().message().c_str());
    }
    finish_chunk(chunk, s);
  }
}

// ---- HydratingVolume ----

Task<Status> HydratingVolume::read(uint64_t offset, uint64_t length, void* buf) {
  auto ready = hydrator_->ensure(offset, length);
  Status s = co_await ready;
  if (!s) co_return s;
  co_return co_await inner_->read(offset, length, buf);
}

Task<Status> HydratingVolume::write(uint64_t offset, uint64_t length, const void* buf, bool fua) {
  auto ready = hydrator_->ensure(offset, length);
  Status s = co_await ready;
  if (!s) co_return s;
  co_return co_await inner_->write(offset, length, buf, fua);
}

Task<Status> HydratingVolume::trim(uint64_t offset, uint64_t length, bool fua) {
  auto ready = hydrator_->ensure(offset, length);
  Status s = co_await ready;
  if (!s) co_return s;
  co_return co_await inner_->trim(offset, length, fua);
}

Task<Status> HydratingVolume::write_zeroes(uint64_t offset, uint64_t length, bool may_release, bool fua) {
  auto ready = hydrator_->ensure(offset, length);
  Status s = co_await ready;
  if (!s) co_return s;
  co_return co_await inner_->write_zeroes(offset, length, may_release, fua);
}

Result<std::vector<AllocationRun>> HydratingVolume::allocation(uint64_t offset, uint64_t length, size_t max_runs) {
  std::vector<AllocationRun> out;
  auto add = [&](uint64_t len, bool allocated) {
    if (!out.empty() && out.back().allocated == allocated) {
      out.back().length_bytes += len;
    } else {
      out.push_back({len, allocated});
    }
  };
  const uint64_t cs = hydrator_->chunk_size();
  uint64_t at = offset, end = offset + length;
  while (at < end && out.size() < max_runs) {
    uint64_t chunk = at / cs;
    uint64_t piece = std::min(end, (chunk + 1) * cs) - at;
    if (hydrator_->is_hydrated(chunk)) {
      CAIRN_TRY(runs, inner_->allocation(at, piece, max_runs));
      for (const auto& r : runs) add(r.length_bytes, r.allocated);
    } else {
      add(piece, hydrator_->chunk_in_backup(chunk));
    }
    at += piece;
  }
  if (out.size() > max_runs) out.resize(max_runs);
  return out;
}

}  // namespace cairn::blockd
