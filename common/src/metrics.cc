#include "common/metrics.h"

#include "common/assert.h"

namespace cairn {
namespace {

void append_escaped(std::string& out, std::string_view value, bool is_help) {
  for (char c : value) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else if (c == '"' && !is_help)
      out += "\\\"";
    else
      out.push_back(c);
  }
}

std::string label_key(const MetricLabels& labels) {
  std::string key;
  for (const auto& [name, value] : labels) {
    if (!key.empty()) key.push_back(',');
    key += name;
    key += "=\"";
    append_escaped(key, value, false);
    key.push_back('"');
  }
  return key;
}

void append_series(std::string& out, const std::string& name, const std::string& key,
                   const std::string& value) {
  out += name;
  if (!key.empty()) {
    out.push_back('{');
    out += key;
    out.push_back('}');
  }
  out.push_back(' ');
  out += value;
  out.push_back('\n');
}

}  // namespace

MetricsRegistry& MetricsRegistry::global() {
  static MetricsRegistry registry;
  return registry;
}

MetricsRegistry::Family& MetricsRegistry::family(std::string_view name, Kind kind,
                                                 std::string_view help) {
  auto it = families_.find(name);
  if (it == families_.end()) {
    it = families_.emplace(std::string(name), Family{kind, std::string(help), {}, {}}).first;
  }
  CAIRN_ASSERT(it->second.kind == kind);
  return it->second;
}

Counter& MetricsRegistry::counter(std::string_view name, const MetricLabels& labels,
                                  std::string_view help) {
  std::lock_guard lock(mu_);
  Family& f = family(name, Kind::counter, help);
  auto key = label_key(labels);
  auto it = f.counters.find(key);
  if (it != f.counters.end()) return *it->second;
  if (series_ >= kSeriesMax) return overflow_counter_;
  ++series_;
  return *f.counters.emplace(std::move(key), std::make_unique<Counter>()).first->second;
}

Gauge& MetricsRegistry::gauge(std::string_view name, const MetricLabels& labels,
                              std::string_view help) {
  std::lock_guard lock(mu_);
  Family& f = family(name, Kind::gauge, help);
  auto key = label_key(labels);
  auto it = f.gauges.find(key);
  if (it != f.gauges.end()) return *it->second;
  if (series_ >= kSeriesMax) return overflow_gauge_;
  ++series_;
  return *f.gauges.emplace(std::move(key), std::make_unique<Gauge>()).first->second;
}

std::string MetricsRegistry::render() const {
  std::lock_guard lock(mu_);
  std::string out;
  for (const auto& [name, f] : families_) {
    if (!f.help.empty()) {
      out += "# HELP " + name + " ";
      append_escaped(out, f.help, true);
      out.push_back('\n');
    }
    out += "# TYPE " + name + (f.kind == Kind::counter ? " counter\n" : " gauge\n");
    for (const auto& [key, c] : f.counters)
      append_series(out, name, key, std::to_string(c->value()));
    for (const auto& [key, g] : f.gauges) append_series(out, name, key, std::to_string(g->value()));
  }
  return out;
}

}  // namespace cairn
