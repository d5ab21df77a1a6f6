// blockd: serves thin volumes over NBD, managed through the HTTP control API.
// Usage: see README.md ("blockd flags"); `blockd --help`.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>

#include "blockd/backup_service.h"
#include "blockd/control_api.h"
#include "blockd/nbd_server.h"
#include "blockd/volume_store.h"
#include "common/fault.h"
#include "common/log.h"
#include "common/net.h"
#include "common/size.h"

using namespace cairn;
using namespace cairn::blockd;

int main(int argc, char** argv) {
  CLI::App app{"blockd: Cairn's NBD volume server"};
  std::string data_dir = "./var/blockd", nbd_listen = "127.0.0.1:10809", nbd_socket,
              api_listen = "127.0.0.1:8080", capacity = "0", level = "info";
  unsigned threads = 2;
  bool no_direct_io = false;
  app.set_config("--config", "", "TOML/INI file with the same keys as the flags");
  app.add_option("--data-dir", data_dir, "Directory of the node's data and metadata")->capture_default_str();
  app.add_option("--nbd-listen", nbd_listen, "NBD TCP HOST:PORT ('none' disables)")->capture_default_str();
  app.add_option("--nbd-socket", nbd_socket, "NBD unix socket path (default DATA_DIR/nbd.sock; 'none' disables)");
  app.add_option("--api-listen", api_listen, "Control API HOST:PORT")->capture_default_str();
  app.add_option("--threads", threads, "I/O threads (one io_uring ring each)")->capture_default_str()->check(CLI::Range(1, 64));
  app.add_option("--capacity", capacity, "Data file limit, e.g. 100G (0 = free space)")->capture_default_str();
  app.add_flag("--no-direct-io", no_direct_io, "Do not open the data file with O_DIRECT");
  app.add_option("--log-level", level, "debug|info|warn|error")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  set_log_level(level == "debug" ? LogLevel::debug : level == "warn" ? LogLevel::warn
                : level == "error" ? LogLevel::error : LogLevel::info);
  if (!arm_faults_from_env()) return 2;
  auto cap = parse_size_bytes(capacity);
  auto nbd_ep = parse_host_port(nbd_listen);
  auto api_ep = parse_host_port(api_listen);
  if (!cap || (!nbd_ep && nbd_listen != "none") || !api_ep) {
    fprintf(stderr, "blockd: error: bad --capacity, --nbd-listen or --api-listen value\n");
    return 2;
  }
  std::error_code fs_ec;
  std::filesystem::create_directories(data_dir, fs_ec);
  if (nbd_socket.empty()) nbd_socket = data_dir + "/nbd.sock";

  // Signals are taken synchronously by sigwait below; threads inherit the mask.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto store = VolumeStore::open({data_dir, *cap, !no_direct_io});
  if (!store) {
    fprintf(stderr, "blockd: error: cannot open store in %s: %s\n", data_dir.c_str(),
            store.error().message().c_str());
    return 1;
  }
  auto token = load_or_create_admin_token(data_dir);
  if (!token) {
    fprintf(stderr, "blockd: error: admin token: %s\n", token.error().message().c_str());
    return 1;
  }
  NbdServer::Options nbd_opts;
  nbd_opts.tcp_enabled = nbd_listen != "none";
  if (nbd_ep) std::tie(nbd_opts.tcp_host, nbd_opts.tcp_port) = *nbd_ep;
  nbd_opts.unix_path = nbd_socket == "none" ? "" : nbd_socket;
  nbd_opts.threads = threads;
  BackupService::Options backup_opts;
  backup_opts.state_dir = data_dir + "/hydrate";
  auto backups = std::make_unique<BackupService>(*store.value(), backup_opts);
  nbd_opts.open_volume = [b = backups.get()](const std::string& name) { return b->open_volume(name); };
  NbdServer nbd(*store.value(), nbd_opts);
  if (auto st = nbd.start(); !st) return 1;
  std::string nbd_tcp = nbd_opts.tcp_enabled ? format_host_port(nbd_opts.tcp_host, nbd.tcp_port()) : "";

  ControlApi::Options api_opts;
  api_opts.backups = backups.get();
  ControlApi api(*store.value(), token.value(), [&] {
    v1::NodeStatus s;
    s.set_data_dir(data_dir);
    s.set_nbd_tcp(nbd_tcp);
    s.set_nbd_socket(nbd_opts.unix_path);
    s.set_nbd_connections(nbd.connections());
    return s;
  }, api_opts);
  if (auto st = api.start(api_ep->first, api_ep->second); !st) {
    fprintf(stderr, "blockd: error: cannot listen on %s: %s\n", api_listen.c_str(),
            st.error().message().c_str());
    nbd.stop();
    return 1;
  }
  CAIRN_LOG_INFO("blockd", "blockd ready nbd=%s socket=%s api=http://%s token_file=%s/admin.token",
                 nbd_tcp.empty() ? "none" : nbd_tcp.c_str(),
                 nbd_opts.unix_path.empty() ? "none" : nbd_opts.unix_path.c_str(),
                 format_host_port(api_ep->first, api.port()).c_str(), data_dir.c_str());
  int sig = 0;
  sigwait(&sigs, &sig);
  CAIRN_LOG_INFO("blockd", "signal %d: shutting down", sig);
  api.stop();
  nbd.stop();
  backups.reset();  // cancels and joins running jobs; instant restores resume at next start
  store.value().reset();
  CAIRN_LOG_INFO("blockd", "stopped");
  return 0;
}
