#include "replication/lease_keeper.h"

#include "common/assert.h"
#include "common/log.h"

namespace cairn::replication {

namespace {
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
constexpr const char* kLogComponent = "etcd";

milliseconds ttl_fraction(int64_t ttl_s, int divisor) {
  return milliseconds(ttl_s * 1000 / divisor);
}
}  // namespace

Result<std::unique_ptr<LeaseKeeper>> LeaseKeeper::start(EtcdClient& client, int64_t ttl_s,
                                                        LossCallback on_loss) {
  if (!on_loss) return Errc::invalid_argument;
  const auto sent = Clock::now();
  CAIRN_TRY(lease, client.lease_grant(ttl_s));
  std::unique_ptr<LeaseKeeper> keeper(new LeaseKeeper(client, lease, sent, std::move(on_loss)));
  keeper->thread_ = std::thread([k = keeper.get()] { k->run(); });
  return keeper;
}

LeaseKeeper::LeaseKeeper(EtcdClient& client, Lease lease, Clock::time_point granted_at,
                         LossCallback on_loss)
    : client_(client),
      lease_(lease),
      on_loss_(std::move(on_loss)),
      expires_at_(granted_at + std::chrono::seconds(lease.ttl_s)) {}

LeaseKeeper::~LeaseKeeper() { stop(); }

bool LeaseKeeper::lost() const {
  std::lock_guard lock(mu_);
  return lost_;
}

void LeaseKeeper::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  std::lock_guard join_lock(join_mu_);
  if (thread_.joinable()) {
    CAIRN_ASSERT(thread_.get_id() != std::this_thread::get_id());
    thread_.join();
  }
}

Status LeaseKeeper::revoke() {
  stop();
  return client_.lease_revoke(lease_.id);
}

void LeaseKeeper::run() {
  const milliseconds interval = std::max(ttl_fraction(lease_.ttl_s, 3), milliseconds(1));
  const milliseconds retry_interval = std::max(ttl_fraction(lease_.ttl_s, 10), milliseconds(1));
  auto next = Clock::now() + interval;
  std::error_code reason;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      if (cv_.wait_until(lock, std::min(next, expires_at_), [&] { return stopping_; })) return;
    }
    const auto sent = Clock::now();
    if (sent >= expires_at_) {
      reason = Errc::unavailable;
      break;
    }
    // Never wait for an answer past the point where the lease may be gone.
    const auto budget = std::min(client_.options().timeout,
                                 std::chrono::duration_cast<milliseconds>(expires_at_ - sent));
    auto ttl = client_.lease_keepalive_once(lease_.id, std::max(budget, milliseconds(1)));
    if (ttl) {
      expires_at_ = sent + std::chrono::seconds(ttl.value());
      next = sent + std::max(ttl_fraction(ttl.value(), 3), milliseconds(1));
      continue;
    }
    if (ttl.error() == Errc::not_found) {
      reason = Errc::not_found;
      break;
    }
    CAIRN_LOG_WARN(kLogComponent, "lease %lld: keepalive failed (%s); %lld ms left",
                   static_cast<long long>(lease_.id), ttl.error().message().c_str(),
                   static_cast<long long>(
                       std::chrono::duration_cast<milliseconds>(expires_at_ - Clock::now())
                           .count()));
    next = Clock::now() + retry_interval;
  }
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    lost_ = true;
  }
  CAIRN_LOG_ERROR(kLogComponent, "lease %lld lost: %s", static_cast<long long>(lease_.id),
                  reason.message().c_str());
  on_loss_(reason);
}

}  // namespace cairn::replication
