#include "common/fault.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/log.h"

namespace cairn {
namespace {

struct FaultSpec {
  std::string name;
  int error = 0;
  bool exit = false;
  int delay_ms = 0;
  double p = 1.0;
  long after = 0;
  long hits = 0;
  std::mt19937_64 rng{1};
};

std::atomic<bool> g_armed{false};
std::mutex g_mu;
std::vector<FaultSpec> g_specs;

int errno_by_name(const std::string& s) {
  if (s == "EIO") return EIO;
  if (s == "ENOSPC") return ENOSPC;
  if (s == "EINVAL") return EINVAL;
  if (s == "ENOMEM") return ENOMEM;
  if (s == "EAGAIN") return EAGAIN;
  return atoi(s.c_str());
}

}  // namespace

bool arm_faults_from_env() {
  const char* env = getenv("CAIRN_FAULTS");
  if (env == nullptr || *env == '\0') return true;
  std::vector<FaultSpec> specs;
  std::stringstream all(env);
  std::string one;
  while (std::getline(all, one, ',')) {
    std::stringstream parts(one);
    std::string field;
    FaultSpec f;
    if (!std::getline(parts, f.name, ':') || f.name.empty()) {
      CAIRN_LOG_ERROR("fault", "malformed CAIRN_FAULTS entry '%s'", one.c_str());
      return false;
    }
    while (std::getline(parts, field, ':')) {
      auto eq = field.find('=');
      std::string key = field.substr(0, eq);
      std::string val = eq == std::string::npos ? "" : field.substr(eq + 1);
      if (key == "error") f.error = errno_by_name(val);
      else if (key == "exit") f.exit = true;
      else if (key == "delay_ms") f.delay_ms = atoi(val.c_str());
      else if (key == "p") f.p = atof(val.c_str());
      else if (key == "after") f.after = atol(val.c_str());
      else if (key == "seed") f.rng.seed(strtoull(val.c_str(), nullptr, 10));
      else {
        CAIRN_LOG_ERROR("fault", "unknown fault option '%s'", key.c_str());
        return false;
      }
    }
    CAIRN_LOG_INFO("fault", "armed fault point %s", f.name.c_str());
    specs.push_back(std::move(f));
  }
  std::lock_guard lk(g_mu);
  g_specs = std::move(specs);
  g_armed.store(!g_specs.empty(), std::memory_order_release);
  return true;
}

int fault_hit(const char* name) noexcept {
  if (!g_armed.load(std::memory_order_relaxed)) return 0;
  int delay_ms = 0, err = 0;
  {
    std::lock_guard lk(g_mu);
    for (auto& f : g_specs) {
      if (f.name != name) continue;
      if (++f.hits <= f.after) return 0;
      if (f.p < 1.0 && std::uniform_real_distribution<double>(0, 1)(f.rng) >= f.p) return 0;
      if (f.exit) {
        CAIRN_LOG_WARN("fault", "fault point %s: exiting", name);
        _exit(137);
      }
      delay_ms = f.delay_ms;
      err = f.error;
      break;
    }
  }
  if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
  return err;
}

}  // namespace cairn
