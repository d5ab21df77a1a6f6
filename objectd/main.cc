// objectd: Cairn's S3-compatible, erasure-coded object server. Usage: docs/S3_API.md,
// `objectd --help`.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "common/fault.h"
#include "common/log.h"
#include "common/net.h"
#include "common/size.h"
#include "objectd/object_store.h"
#include "objectd/s3_server.h"

using namespace cairn;
using namespace cairn::objectd;

// <data-dir>/s3.credentials, mode 0600, replaced atomically.
static bool write_credentials(const std::string& path, const AccessKey& key) {
  std::string tmp = path + ".tmp", text = "access_key_id=" + key.access_key_id +
                                          "\nsecret_access_key=" + key.secret_key + "\n";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  bool ok = ::fchmod(fd, 0600) == 0 && ::write(fd, text.data(), text.size()) == ssize_t(text.size()) &&
            ::fsync(fd) == 0;
  ::close(fd);
  return ok && ::rename(tmp.c_str(), path.c_str()) == 0;
}

int main(int argc, char** argv) {
  CLI::App app{"objectd: Cairn's S3-compatible object server"};
  std::string data_dir = "./var/objectd", listen = "127.0.0.1:9000", ec = "4+2", level = "info",
              heal_rate = "256M";
  std::vector<std::string> drives, domains{"localhost"};
  unsigned threads = 4;
  double scrub_period_hours = 24 * 7, orphan_grace_s = 3600;
  app.set_config("--config", "", "TOML/INI file with the same keys as the flags");
  app.add_option("--data-dir", data_dir, "Directory of the index and default drives")->capture_default_str();
  app.add_option("--listen", listen, "S3 HOST:PORT")->capture_default_str();
  app.add_option("--drive", drives, "Drive directory (repeat; default K+M under DATA_DIR)");
  app.add_option("--ec", ec, "Erasure code K+M (data+parity shards)")->capture_default_str();
  app.add_option("--threads", threads, "HTTP I/O threads")->capture_default_str()->check(CLI::Range(1, 64));
  app.add_option("--domain", domains, "Domain for virtual-host buckets (bucket.DOMAIN)")->capture_default_str();
  app.add_option("--heal-rate", heal_rate, "Heal/scrub I/O per second, e.g. 64M (0 = unlimited)")
      ->capture_default_str();
  app.add_option("--scrub-period-hours", scrub_period_hours,
                 "Start a verifying heal pass this long after the last one (0 = never)")
      ->capture_default_str()->check(CLI::Range(0.0, 1e6));
  app.add_option("--orphan-grace-s", orphan_grace_s,
                 "Heal passes remove unreferenced shard/temp files older than this")
      ->capture_default_str()->check(CLI::Range(0.0, 1e9));
  app.add_option("--log-level", level, "debug|info|warn|error")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  set_log_level(level == "debug" ? LogLevel::debug : level == "warn" ? LogLevel::warn
                : level == "error" ? LogLevel::error : LogLevel::info);
  if (!arm_faults_from_env()) return 2;
  auto ep = parse_host_port(listen);
  auto heal_bps = parse_size_bytes(heal_rate);
  int k = 0, m = -1;
  if (!ep || !heal_bps || sscanf(ec.c_str(), "%d+%d", &k, &m) != 2 || k < 1 || m < 0) {
    fprintf(stderr, "objectd: error: bad --listen, --ec or --heal-rate value\n");
    return 2;
  }
  std::error_code fs_ec;
  std::filesystem::create_directories(data_dir, fs_ec);
  sigset_t sigs;  // taken synchronously by sigwait below; threads inherit the mask
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  ObjectStore::Options so;
  so.data_dir = data_dir;
  so.drives = drives;
  so.data_shards = k;
  so.parity_shards = m;
  so.heal_bytes_per_second = *heal_bps;
  so.scrub_period_hours = scrub_period_hours;
  so.orphan_grace_seconds = orphan_grace_s;
  auto store = ObjectStore::open(so);
  if (!store) {
    fprintf(stderr, "objectd: error: cannot open store in %s: %s\n", data_dir.c_str(),
            store.error().message().c_str());
    return 1;
  }
  const char* env_ak = getenv("CAIRN_S3_ACCESS_KEY");
  const char* env_sk = getenv("CAIRN_S3_SECRET_KEY");
  auto root = store.value()->ensure_root_key(env_ak ? env_ak : "", env_sk ? env_sk : "");
  std::string cred_path = data_dir + "/s3.credentials";
  if (!root || !write_credentials(cred_path, root.value())) {
    fprintf(stderr, "objectd: error: cannot set up root credentials in %s: %s\n", cred_path.c_str(),
            root ? strerror(errno) : root.error().message().c_str());
    return 1;
  }
  S3Server::Options opts;
  opts.threads = threads;
  opts.domains = domains;
  S3Server server(*store.value(), opts);
  if (auto st = server.start(ep->first, ep->second); !st) {
    fprintf(stderr, "objectd: error: cannot listen on %s: %s\n", listen.c_str(),
            st.error().message().c_str());
    return 1;
  }
  CAIRN_LOG_INFO("objectd", "objectd ready endpoint=http://%s credentials=%s drives=%d/%d ec=%d+%d",
                 format_host_port(ep->first, server.port()).c_str(), cred_path.c_str(),
                 store.value()->drives_online(), k + m, k, m);
  int sig = 0;
  sigwait(&sigs, &sig);
  CAIRN_LOG_INFO("objectd", "signal %d: shutting down", sig);
  server.stop();
  store.value().reset();
  CAIRN_LOG_INFO("objectd", "stopped");
  return 0;
}
