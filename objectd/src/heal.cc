// Healing: the heal thread (drive re-checks, heal on read, heal/scrub passes, orphan sweeps).
// A pass walks the index's o/, p/ and u/ records in key order, verifies every shard file of
// every version (header, trailer, each block's CRC) and rewrites missing or damaged ones from
// the others; its cursor is persisted in m/heal so a restart resumes it. Rate-limited by
// Options::heal_bytes_per_second. Protocol: docs/FORMAT-objectd.md.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "common/fault.h"
#include "common/log.h"
#include "store_impl.h"

namespace cairn::objectd::engine {
namespace {

constexpr char kLog[] = "objectd";
constexpr int64_t kPassStepMs = 100;      // a pass yields to the queue this often
constexpr int64_t kStateSaveMs = 1000;    // the cursor is persisted at least this often
constexpr int64_t kRateWindowMs = 1000;

bool starts_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.compare(0, p.size(), p) == 0;
}
bool is_record_key(std::string_view k) {
  return starts_with(k, "o/") || starts_with(k, "p/") || starts_with(k, "u/");
}

}  // namespace

void StoreImpl::heal_main() {
  // First the leftovers of the previous run: temp files and unreferenced shard files that
  // predate this open cannot belong to a write of this process (and those that a write of
  // this process has made since are skipped as active).
  {
    const int64_t t0 = now_unix_ms();
    const int64_t grace_ms = static_cast<int64_t>(opt_.orphan_grace_seconds * 1000.0);
    uint64_t removed = sweep_orphans(std::max(t0 - grace_ms, opened_unix_ms_ - 1));
    CAIRN_LOG_INFO(kLog, "start-up sweep done in %.1f s: %llu leftover files of interrupted "
                   "writes and heals removed",
                   static_cast<double>(now_unix_ms() - t0) / 1000.0,
                   static_cast<unsigned long long>(removed));
    std::lock_guard lk(heal_mu_);
    heal_busy_ = false;  // set by init()
  }
  const int64_t interval = std::max<int64_t>(10, opt_.drive_check_interval_ms);
  int64_t next_check = now_unix_ms() + interval;
  std::unique_lock lk(heal_mu_);
  while (!stop_) {
    int64_t now = now_unix_ms();
    if (drive_check_requested_ || now >= next_check) {
      drive_check_requested_ = false;
      heal_busy_ = true;
      lk.unlock();
      check_drives();
      lk.lock();
      heal_busy_ = false;
      next_check = now_unix_ms() + interval;
      if (drives_online() < n_) damage_seen_ = true;
      continue;
    }
    if (!heal_queue_.empty()) {
      std::string id = std::move(heal_queue_.front());
      heal_queue_.pop_front();
      heal_queued_.erase(id);
      if (heal_queue_.size() < opt_.heal_queue_max / 2) queue_full_logged_ = false;
      heal_busy_ = true;
      lk.unlock();
      heal_by_id(id);
      lk.lock();
      heal_busy_ = false;
      continue;
    }
    if (!hs_.running() && pass_requested_) {
      pass_requested_ = false;
      heal_begin_pass_locked();
    }
    if (hs_.running()) {
      heal_busy_ = true;
      lk.unlock();
      bool more = heal_pass_step();
      if (!more && !stop_) heal_finish_pass();
      lk.lock();
      heal_busy_ = false;
      continue;
    }
    int64_t wake = next_check;
    if (opt_.scrub_period_hours > 0) {
      int64_t due = hs_.last_completed_unix_ms() +
                    static_cast<int64_t>(opt_.scrub_period_hours * 3600.0 * 1000.0);
      if (now >= due) {
        CAIRN_LOG_INFO(kLog, "scrub due: starting a heal pass");
        pass_requested_ = true;
        continue;
      }
      wake = std::min(wake, due);
    }
    heal_cv_.wait_for(lk, std::chrono::milliseconds(std::max<int64_t>(1, wake - now)));
  }
}

Status StoreImpl::start_heal() {
  std::lock_guard lk(heal_mu_);
  drive_check_requested_ = true;
  if (!hs_.running()) heal_begin_pass_locked();
  heal_cv_.notify_all();
  return ok();
}

void StoreImpl::heal_begin_pass_locked() {
  const int64_t last_completed = hs_.last_completed_unix_ms();
  const bool last_clean = hs_.last_pass_clean();
  hs_.Clear();
  hs_.set_last_completed_unix_ms(last_completed);
  hs_.set_last_pass_clean(last_clean);
  hs_.set_running(true);
  hs_.set_pass_clean(true);
  hs_.set_started_unix_ms(now_unix_ms());
  count_pending_ = true;
  damage_seen_ = false;
  window_ms_ = now_unix_ms();
  window_disk_bytes_ = window_objects_ = window_data_bytes_ = 0;
  object_rate_ = data_rate_ = 0;
  save_heal_state_locked();
  CAIRN_LOG_INFO(kLog, "heal pass started");
}

void StoreImpl::save_heal_state_locked() {
  last_save_ms_ = now_unix_ms();
  (void)index_->put(kHealKey, hs_.SerializeAsString(), false);
}

void StoreImpl::account_locked(uint64_t objects, uint64_t data_bytes) {
  window_objects_ += objects;
  window_data_bytes_ += data_bytes;
  int64_t now = now_unix_ms();
  int64_t dt = now - window_ms_;
  if (dt < kRateWindowMs) return;
  auto blend = [](double old, double fresh) { return old == 0 ? fresh : 0.5 * old + 0.5 * fresh; };
  double secs = static_cast<double>(dt) / 1000.0;
  disk_rate_ = blend(disk_rate_, static_cast<double>(window_disk_bytes_) / secs);
  object_rate_ = blend(object_rate_, static_cast<double>(window_objects_) / secs);
  data_rate_ = blend(data_rate_, static_cast<double>(window_data_bytes_) / secs);
  window_ms_ = now;
  window_disk_bytes_ = window_objects_ = window_data_bytes_ = 0;
}

void StoreImpl::throttle(uint64_t bytes) {
  {
    std::lock_guard lk(heal_mu_);
    window_disk_bytes_ += bytes;
  }
  const double rate = static_cast<double>(opt_.heal_bytes_per_second);
  if (rate <= 0) return;
  auto refill = [&] {
    int64_t now = now_unix_ms();
    if (tokens_ms_ == 0) {
      tokens_ = rate;  // one second of burst
    } else {
      tokens_ = std::min(rate, tokens_ + static_cast<double>(now - tokens_ms_) * rate / 1000.0);
    }
    tokens_ms_ = now;
  };
  refill();
  tokens_ -= static_cast<double>(bytes);
  while (tokens_ < 0 && !stop_) {
    int64_t wait_ms = std::clamp<int64_t>(static_cast<int64_t>(-tokens_ * 1000.0 / rate), 1, 100);
    std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
    refill();
  }
}

bool StoreImpl::heal_pass_step() {
  bool count;
  std::string cursor;
  {
    std::lock_guard lk(heal_mu_);
    count = count_pending_;
    cursor = hs_.cursor();
  }
  if (count) {
    uint64_t objects = 0, bytes = 0;
    auto it = index_->iterator();
    for (const char* prefix : {"o/", "p/", "u/"}) {
      for (it->Seek(prefix); it->Valid() && starts_with({it->key().data(), it->key().size()}, prefix);
           it->Next()) {
        ObjectRecord rec;
        if (rec.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())))
          bytes += rec.size_bytes();
        ++objects;
      }
    }
    std::lock_guard lk(heal_mu_);
    hs_.set_objects_total(objects);
    hs_.set_bytes_total(bytes);
    count_pending_ = false;
  }

  auto it = index_->iterator();
  if (cursor.empty()) {
    it->Seek("o/");
  } else {
    cursor.push_back('\0');  // the smallest key after the cursor
    it->Seek(cursor);
  }
  const int64_t deadline = now_unix_ms() + kPassStepMs;
  while (!stop_) {
    if (!it->Valid()) return false;
    std::string key = it->key().ToString();
    if (!is_record_key(key)) {
      if (key < "o/") {
        it->Seek("o/");
      } else if (key < "u/") {
        it->Seek("u/");  // past t/
      } else {
        return false;
      }
      continue;
    }
    ObjectRecord rec;
    HealOutcome outcome = HealOutcome::healthy;
    uint64_t scanned = 0, rewritten = 0;
    if (rec.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      outcome = heal_record(rec, &scanned, &rewritten);
      // Shutting down interrupted this object: leave the cursor before it so the resumed
      // pass heals it, and do not count it against the pass.
      if (stop_ && outcome == HealOutcome::degraded) break;
    } else {
      CAIRN_LOG_ERROR(kLog, "heal: unparsable index record skipped");
      outcome = HealOutcome::failed;
    }
    {
      std::lock_guard lk(heal_mu_);
      hs_.set_objects_scanned(hs_.objects_scanned() + 1);
      hs_.set_bytes_scanned(hs_.bytes_scanned() + rec.size_bytes());
      hs_.set_bytes_rewritten(hs_.bytes_rewritten() + rewritten);
      if (outcome == HealOutcome::healed) hs_.set_objects_healed(hs_.objects_healed() + 1);
      if (outcome == HealOutcome::failed) hs_.set_objects_failed(hs_.objects_failed() + 1);
      if (outcome == HealOutcome::failed || outcome == HealOutcome::degraded)
        hs_.set_pass_clean(false);
      hs_.set_cursor(key);
      account_locked(1, rec.size_bytes());
      if (now_unix_ms() - last_save_ms_ >= kStateSaveMs) save_heal_state_locked();
    }
    if (int f = CAIRN_FAULT_POINT("objectd.heal.after_object")) (void)f;
    it->Next();
    if (now_unix_ms() >= deadline) return true;
  }
  return true;
}

void StoreImpl::heal_finish_pass() {
  uint64_t removed =
      sweep_orphans(now_unix_ms() - static_cast<int64_t>(opt_.orphan_grace_seconds * 1000.0));
  {
    std::lock_guard lk(catalog_mu_);
    (void)save_catalog_locked();  // replaced drives get the catalog mirror too
  }
  const bool all_online = drives_online() == n_;
  std::lock_guard lk(heal_mu_);
  const bool clean = hs_.pass_clean() && all_online;
  hs_.set_running(false);
  hs_.set_last_completed_unix_ms(now_unix_ms());
  hs_.set_last_pass_clean(clean);
  last_save_ms_ = now_unix_ms();
  (void)index_->put(kHealKey, hs_.SerializeAsString(), true);
  CAIRN_LOG_INFO(kLog,
                 "heal pass done in %.1f s: %llu objects scanned, %llu healed, %llu failed, "
                 "%llu bytes rewritten, %llu orphan files removed, drives online %d/%d%s",
                 static_cast<double>(now_unix_ms() - hs_.started_unix_ms()) / 1000.0,
                 static_cast<unsigned long long>(hs_.objects_scanned()),
                 static_cast<unsigned long long>(hs_.objects_healed()),
                 static_cast<unsigned long long>(hs_.objects_failed()),
                 static_cast<unsigned long long>(hs_.bytes_rewritten()),
                 static_cast<unsigned long long>(removed), drives_online(), n_,
                 clean ? ", fully redundant" : "");
}

HealStatus StoreImpl::heal_status() {
  const int online = drives_online();
  std::lock_guard lk(heal_mu_);
  HealStatus s;
  s.running = hs_.running();
  s.objects_total = hs_.objects_total();
  s.objects_scanned = hs_.objects_scanned();
  s.objects_healed = hs_.objects_healed();
  s.objects_failed = hs_.objects_failed();
  s.bytes_rewritten = hs_.bytes_rewritten();
  s.queued = heal_queue_.size();
  s.bytes_per_second = disk_rate_;
  if (!s.running) {
    s.eta_seconds = 0;
  } else if (object_rate_ > 0) {
    double objects_left = static_cast<double>(hs_.objects_total() - std::min(hs_.objects_total(), hs_.objects_scanned()));
    double bytes_left = static_cast<double>(hs_.bytes_total() - std::min(hs_.bytes_total(), hs_.bytes_scanned()));
    s.eta_seconds = objects_left / object_rate_;
    if (data_rate_ > 0) s.eta_seconds = std::max(s.eta_seconds, bytes_left / data_rate_);
  }
  s.fully_redundant = hs_.last_pass_clean() && !damage_seen_ && online == n_;
  return s;
}

void StoreImpl::queue_heal(const std::string& id) {
  std::lock_guard lk(heal_mu_);
  damage_seen_ = true;
  if (heal_queued_.count(id) != 0) return;
  if (heal_queue_.size() >= opt_.heal_queue_max) {
    if (!queue_full_logged_)
      CAIRN_LOG_WARN(kLog, "heal queue full (%zu): further damage is left to heal passes",
                     heal_queue_.size());
    queue_full_logged_ = true;
    return;
  }
  heal_queue_.push_back(id);
  heal_queued_.insert(id);
  heal_cv_.notify_all();
}

bool StoreImpl::wait_heal_idle(int timeout_ms) {
  for (int waited = 0; waited <= timeout_ms; waited += 10) {
    {
      std::lock_guard lk(heal_mu_);
      if (!hs_.running() && heal_queue_.empty() && !heal_busy_ && !pass_requested_ &&
          !drive_check_requested_)
        return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

bool StoreImpl::still_referenced(const std::string& id) {
  Result<std::optional<std::string>> v = index_->get(id_key(id));
  return !v || v.value().has_value();  // on an index error, assume it is
}

void StoreImpl::heal_by_id(const std::string& id) {
  Result<std::optional<std::string>> owner = index_->get(id_key(id));
  if (!owner || !owner.value()) return;
  Result<std::optional<ObjectRecord>> rec = get_record(*owner.value());
  if (!rec || !rec.value()) return;
  const ObjectRecord* target = nullptr;
  if (rec.value()->id() == id) {
    target = &*rec.value();
  } else {
    for (const auto& p : rec.value()->parts())
      if (p.id() == id) target = &p;
  }
  if (target == nullptr) return;
  uint64_t scanned = 0, rewritten = 0;
  HealOutcome outcome = heal_version(*target, &scanned, &rewritten);
  std::lock_guard lk(heal_mu_);
  hs_.set_bytes_rewritten(hs_.bytes_rewritten() + rewritten);
  if (outcome == HealOutcome::healed) hs_.set_objects_healed(hs_.objects_healed() + 1);
}

StoreImpl::HealOutcome StoreImpl::heal_record(const ObjectRecord& rec, uint64_t* bytes_scanned,
                                              uint64_t* bytes_rewritten) {
  HealOutcome worst = heal_version(rec, bytes_scanned, bytes_rewritten);
  for (const auto& part : rec.parts())
    worst = std::max(worst, heal_version(part, bytes_scanned, bytes_rewritten));
  return worst;
}

StoreImpl::HealOutcome StoreImpl::heal_version(const ObjectRecord& rec, uint64_t* bytes_scanned,
                                               uint64_t* bytes_rewritten) {
  const StripeLayout layout = StripeLayout::of(rec);
  const int n = static_cast<int>(layout.shards());
  if (n != n_) {
    CAIRN_LOG_ERROR(kLog, "heal: %s has %d shards, the store %d drives", rec.id().c_str(), n, n_);
    return HealOutcome::failed;
  }
  std::vector<bool> bad(n, false), skip(n, false);
  int bad_count = 0, offline_count = 0;
  for (int s = 0; s < n; ++s) {
    Drive& d = drive(layout.drive_of(s));
    if (!d.online()) {
      skip[s] = true;
      ++offline_count;
      continue;
    }
    Status st = verify_shard_file(d.object_path(rec.id()), rec, static_cast<uint32_t>(s),
                                  [&](uint64_t b) {
                                    *bytes_scanned += b;
                                    throttle(b);
                                  });
    if (st) continue;
    if (st.error().category() == std::system_category() &&
        st.error() != std::errc::no_such_file_or_directory)
      drive_error(d.position());
    skip[s] = true;
    if (!d.online()) {
      ++offline_count;
    } else {
      bad[s] = true;
      ++bad_count;
    }
  }
  if (bad_count == 0) return offline_count > 0 ? HealOutcome::degraded : HealOutcome::healthy;
  if (!still_referenced(rec.id())) return HealOutcome::healthy;  // deleted meanwhile
  const int good = n - bad_count - offline_count;
  if (good < static_cast<int>(layout.k)) {
    CAIRN_LOG_ERROR(kLog, "heal: %s/%s version %s has %d good shards of %d, needs %u",
                    rec.bucket().c_str(), rec.key().c_str(), rec.id().c_str(), good, n, layout.k);
    return HealOutcome::failed;
  }

  ShardSet set(*this, layout, rec.id(), bad, /*heal=*/true);
  if (!set.open(1)) return HealOutcome::degraded;
  VersionReader reader(*this, rec, skip, /*report=*/false);
  std::vector<uint8_t> buf(static_cast<size_t>(n) * layout.block_bytes);
  std::vector<uint8_t*> blocks(n);
  for (int s = 0; s < n; ++s) blocks[s] = buf.data() + static_cast<size_t>(s) * layout.block_bytes;
  for (uint64_t stripe = 0; stripe < layout.stripes() && !stop_; ++stripe) {
    std::vector<bool> valid(n, false);
    Status st = reader.load(stripe, bad, blocks, valid);
    if (!st) {
      CAIRN_LOG_ERROR(kLog, "heal: %s stripe %llu unrecoverable: %s", rec.id().c_str(),
                      static_cast<unsigned long long>(stripe), st.error().message().c_str());
      return HealOutcome::failed;
    }
    const uint32_t len = layout.block_len(stripe);
    if (!set.append_stripe(blocks, len, 1)) return HealOutcome::degraded;
    // Crash tests: a rewrite is half done (temp files in tmp/, nothing renamed yet).
    if (CAIRN_FAULT_POINT("objectd.heal.mid") != 0) return HealOutcome::degraded;
    *bytes_rewritten += static_cast<uint64_t>(len) * static_cast<uint64_t>(bad_count);
    throttle(static_cast<uint64_t>(len) * (layout.k + static_cast<uint64_t>(bad_count)));
  }
  if (stop_) return HealOutcome::degraded;
  if (!set.commit(rec, 1)) return HealOutcome::degraded;
  if (!still_referenced(rec.id())) {
    set.remove_committed();
    return HealOutcome::healthy;
  }
  std::string which;
  for (int s = 0; s < n; ++s)
    if (bad[s]) {
      if (!which.empty()) which.push_back(',');
      which += std::to_string(s);
    }
  CAIRN_LOG_INFO(kLog, "healed %s/%s version %s: rewrote shard(s) %s", rec.bucket().c_str(),
                 rec.key().c_str(), rec.id().c_str(), which.c_str());
  return offline_count > 0 ? HealOutcome::degraded : HealOutcome::healed;
}

uint64_t StoreImpl::sweep_orphans(int64_t mtime_max_unix_ms) {
  auto old_enough = [&](const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return false;
    int64_t mtime_ms = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000 + st.st_mtim.tv_nsec / 1000000;
    return mtime_ms <= mtime_max_unix_ms;
  };
  auto active = [&](const std::string& id) {
    std::lock_guard lk(active_mu_);
    return active_ids_.count(id) != 0;
  };
  uint64_t removed = 0;
  for (auto& d : drives_) {
    if (!d->online()) continue;
    for (int sub = 0; sub < kObjectSubdirs && !stop_; ++sub) {
      char name[4];
      snprintf(name, sizeof name, "%02x", sub);
      std::string dir = d->path() + "/objects/" + name;
      DIR* dh = ::opendir(dir.c_str());
      if (dh == nullptr) continue;
      std::vector<std::string> ids;
      while (dirent* e = ::readdir(dh))
        if (is_object_id(e->d_name)) ids.emplace_back(e->d_name);
      ::closedir(dh);
      for (const auto& id : ids) {
        std::string path = dir + "/" + id;
        if (active(id) || !old_enough(path)) continue;
        Result<std::optional<std::string>> ref = index_->get(id_key(id));
        if (!ref || ref.value()) continue;
        if (active(id)) continue;
        if (::unlink(path.c_str()) == 0) ++removed;
      }
    }
    std::string tmp = d->path() + "/tmp";
    DIR* dh = ::opendir(tmp.c_str());
    if (dh == nullptr) continue;
    std::vector<std::string> names;
    while (dirent* e = ::readdir(dh)) {
      std::string_view name = e->d_name;
      if (name != "." && name != "..") names.emplace_back(name);
    }
    ::closedir(dh);
    for (const auto& name : names) {
      std::string path = tmp + "/" + name;
      if (name.size() >= 32 && is_object_id(name.substr(0, 32)) && active(name.substr(0, 32)))
        continue;
      if (old_enough(path) && ::unlink(path.c_str()) == 0) ++removed;
    }
  }
  return removed;
}

}  // namespace cairn::objectd::engine
