// MetricsRegistry: process-wide counters and gauges, rendered as Prometheus text.
//
// A metric is a name plus an ordered label set (e.g. cairn_http_requests_total{code="200"}).
// counter()/gauge() find or create it and return a reference that stays valid for the life
// of the registry, so hot paths look a metric up once and then only touch an atomic.
// Thread-safe: lookups and render() take a mutex; inc()/set()/add() are lock-free atomics.
// Limits: at most kSeriesMax series per registry; past that, lookups return a shared
// overflow metric that is never rendered (a label with unbounded values is a bug, not a
// reason to grow without bound). Names follow Prometheus rules; they are not validated.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cairn {

using MetricLabels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  void inc(uint64_t n = 1) noexcept { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

class Gauge {
 public:
  void set(int64_t v) noexcept { value_.store(v, std::memory_order_relaxed); }
  void add(int64_t n) noexcept { value_.fetch_add(n, std::memory_order_relaxed); }
  int64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> value_{0};
};

class MetricsRegistry {
 public:
  static constexpr size_t kSeriesMax = 10000;

  // The registry every daemon exposes on /metrics.
  static MetricsRegistry& global();

  // `help` is recorded the first time a name is seen. Asking for an existing name with the
  // other kind (counter vs gauge) is a bug and asserts.
  Counter& counter(std::string_view name, const MetricLabels& labels = {},
                   std::string_view help = {});
  Gauge& gauge(std::string_view name, const MetricLabels& labels = {}, std::string_view help = {});

  // Prometheus text exposition format 0.0.4, families sorted by name.
  std::string render() const;

 private:
  enum class Kind { counter, gauge };
  struct Family {
    Kind kind;
    std::string help;
    // Key: rendered label set, e.g. `code="200"` (empty for none).
    std::map<std::string, std::unique_ptr<Counter>> counters;
    std::map<std::string, std::unique_ptr<Gauge>> gauges;
  };

  Family& family(std::string_view name, Kind kind, std::string_view help);

  mutable std::mutex mu_;
  std::map<std::string, Family, std::less<>> families_;
  size_t series_ = 0;
  Counter overflow_counter_;
  Gauge overflow_gauge_;
};

}  // namespace cairn
