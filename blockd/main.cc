// blockd: serves thin volumes over NBD, managed through the HTTP control API.
// Usage: see README.md ("blockd flags"); `blockd --help`.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "blockd/backup_service.h"
#include "blockd/control_api.h"
#include "blockd/nbd_server.h"
#include "blockd/volume_store.h"
#include "common/fault.h"
#include "common/log.h"
#include "common/net.h"
#include "common/size.h"
#include "replication/cluster_member.h"
#include "replication/cluster_volumes.h"
#include "replication/replica_server.h"

using namespace cairn;
using namespace cairn::blockd;
using replication::ClusterMember;
using replication::ClusterVolumes;
using replication::ReplicaServer;

namespace {

// Cluster mode (--node-id, --cluster, --replication-listen): the node's place in etcd.
struct ClusterFlags {
  std::string node_id, cluster, replication_listen, replication_advertise;
  int64_t lease_ttl_s = 3;
  std::vector<std::string> etcd_endpoints;
  std::pair<std::string, uint16_t> replication_ep;
  bool enabled() const { return !node_id.empty(); }
};

// The three flags come together or not at all; prints the problem and returns false.
bool check_cluster_flags(ClusterFlags& f) {
  const int given = !f.node_id.empty() + !f.cluster.empty() + !f.replication_listen.empty();
  if (given == 0) return true;
  if (given != 3) {
    fprintf(stderr, "blockd: error: --node-id, --cluster and --replication-listen go together "
                    "(cluster mode) or not at all (single node, no etcd)\n");
    return false;
  }
  if (!ClusterMember::valid_node_id(f.node_id)) {
    fprintf(stderr, "blockd: error: invalid --node-id \"%s\": use 1-%zu characters of [a-z0-9_-]\n",
            f.node_id.c_str(), ClusterMember::kNodeIdMaxBytes);
    return false;
  }
  auto endpoints = replication::parse_etcd_endpoints(f.cluster);
  if (!endpoints) {
    fprintf(stderr, "blockd: error: bad --cluster \"%s\": expected http://HOST:PORT[,http://HOST:PORT...]\n",
            f.cluster.c_str());
    return false;
  }
  f.etcd_endpoints = std::move(endpoints.value());
  auto ep = parse_host_port(f.replication_listen);
  if (!ep) {
    fprintf(stderr, "blockd: error: bad --replication-listen \"%s\": expected HOST:PORT\n",
            f.replication_listen.c_str());
    return false;
  }
  f.replication_ep = *ep;
  if (!f.replication_advertise.empty() && !parse_host_port(f.replication_advertise)) {
    fprintf(stderr, "blockd: error: bad --replication-advertise \"%s\": expected HOST:PORT\n",
            f.replication_advertise.c_str());
    return false;
  }
  return true;
}

// Other nodes and clients reach a node at the addresses it publishes: warn when one of
// them is a wildcard.
void warn_if_wildcard(const char* what, const std::string& host) {
  if (host == "0.0.0.0" || host == "::") {
    CAIRN_LOG_WARN("blockd", "%s listens on %s, which is published as-is in the cluster; "
                   "listen on the node's own address so that others can reach it", what, host.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"blockd: Cairn's NBD volume server"};
  std::string data_dir = "./var/blockd", nbd_listen = "127.0.0.1:10809", nbd_socket,
              api_listen = "127.0.0.1:8080", capacity = "0", level = "info";
  unsigned threads = 2;
  bool no_direct_io = false;
  ClusterFlags cluster;
  app.set_config("--config", "", "TOML/INI file with the same keys as the flags");
  app.add_option("--data-dir", data_dir, "Directory of the node's data and metadata")->capture_default_str();
  app.add_option("--nbd-listen", nbd_listen, "NBD TCP HOST:PORT ('none' disables)")->capture_default_str();
  app.add_option("--nbd-socket", nbd_socket, "NBD unix socket path (default DATA_DIR/nbd.sock; 'none' disables)");
  app.add_option("--api-listen", api_listen, "Control API HOST:PORT")->capture_default_str();
  app.add_option("--threads", threads, "I/O threads (one io_uring ring each)")->capture_default_str()->check(CLI::Range(1, 64));
  app.add_option("--capacity", capacity, "Data file limit, e.g. 100G (0 = free space)")->capture_default_str();
  app.add_flag("--no-direct-io", no_direct_io, "Do not open the data file with O_DIRECT");
  app.add_option("--log-level", level, "debug|info|warn|error")->capture_default_str();
  app.add_option("--node-id", cluster.node_id, "Cluster mode: this node's id, 1-64 of [a-z0-9_-]");
  app.add_option("--cluster", cluster.cluster, "Cluster mode: etcd endpoints http://HOST:PORT[,...]");
  app.add_option("--replication-listen", cluster.replication_listen,
                 "Cluster mode: replication link HOST:PORT (replicas of other nodes' volumes)");
  app.add_option("--replication-advertise", cluster.replication_advertise,
                 "Cluster mode: HOST:PORT other nodes connect to for the replication link "
                 "(default: the --replication-listen address with its bound port)");
  app.add_option("--lease-ttl", cluster.lease_ttl_s,
                 "Cluster mode: seconds without etcd contact before the node counts as gone "
                 "(its volumes fail over)")->capture_default_str()->check(CLI::Range(2, 60));
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
  if (!check_cluster_flags(cluster)) return 2;
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
  // Cluster mode: replicated volumes are served by the node that is their primary; set
  // once the node joined.
  std::atomic<ClusterVolumes*> cluster_volumes_ptr{nullptr};
  nbd_opts.open_volume = [b = backups.get(), &cluster_volumes_ptr](const std::string& name,
                                                                  std::string* why) {
    ClusterVolumes* c = cluster_volumes_ptr.load(std::memory_order_acquire);
    if (c && c->is_cluster_volume(name)) return c->open(name, why);
    return b->open_volume(name);
  };
  NbdServer nbd(*store.value(), nbd_opts);
  if (auto st = nbd.start(); !st) return 1;
  std::string nbd_tcp = nbd_opts.tcp_enabled ? format_host_port(nbd_opts.tcp_host, nbd.tcp_port()) : "";

  ControlApi::Options api_opts;
  api_opts.backups = backups.get();
  api_opts.cluster_mode = cluster.enabled();
  // Set once the node joined; the API may be asked before that.
  std::atomic<ClusterMember*> member_ptr{nullptr};
  if (cluster.enabled()) {
    api_opts.nodes = [&member_ptr]() -> Result<std::vector<v1::ClusterNode>> {
      ClusterMember* m = member_ptr.load(std::memory_order_acquire);
      if (!m) return Errc::unavailable;
      return m->list_nodes();
    };
  }
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
  const std::string api_url = "http://" + format_host_port(api_ep->first, api.port());

  VolumeStore* s = store.value().get();
  auto open_local = [s](const std::string& name, uint64_t size, bool* created) {
    return open_or_create_volume(*s, name, size, created);
  };
  ReplicaServer::Options rs_opts;
  rs_opts.state_dir = data_dir + "/replication/epochs";
  rs_opts.open_volume = open_local;
  rs_opts.snapshot = [s](const std::string& volume, const std::string& snapshot) -> Status {
    auto snap = s->create_snapshot(volume, snapshot);
    if (!snap) return snap.error();
    return ok();
  };
  rs_opts.delete_volume = [s](const std::string& volume) { return s->delete_volume(volume, true); };
  rs_opts.delete_snapshot = [s](const std::string& volume, const std::string& snapshot) {
    return s->delete_snapshot(volume, snapshot);
  };
  ReplicaServer replica_server(rs_opts);
  std::unique_ptr<ClusterMember> member;
  std::unique_ptr<ClusterVolumes> cluster_volumes;
  std::string cluster_ready;  // " node=ID replication=HOST:PORT" in cluster mode
  if (cluster.enabled()) {
    const auto& [rep_host, rep_port] = cluster.replication_ep;
    if (auto st = replica_server.start(rep_host, rep_port); !st) {
      fprintf(stderr, "blockd: error: cannot listen on %s: %s\n", cluster.replication_listen.c_str(),
              st.error().message().c_str());
      api.stop();
      nbd.stop();
      return 1;
    }
    warn_if_wildcard("--api-listen", api_ep->first);
    if (cluster.replication_advertise.empty()) warn_if_wildcard("--replication-listen", rep_host);
    if (nbd_ep) warn_if_wildcard("--nbd-listen", nbd_ep->first);
    ClusterMember::Options m;
    m.node_id = cluster.node_id;
    m.etcd_endpoints = cluster.etcd_endpoints;
    m.nbd = nbd_tcp;
    m.api = api_url;
    m.replication = cluster.replication_advertise.empty()
                        ? format_host_port(rep_host, replica_server.port())
                        : cluster.replication_advertise;
    m.lease_ttl_s = cluster.lease_ttl_s;
    m.usage = [s = store.value().get()] {
      StoreStats st = s->stats();
      return replication::NodeUsage{st.capacity_bytes, st.used_bytes, st.volumes};
    };
    std::string why;
    auto joined = ClusterMember::start(m, &why);
    if (!joined) {
      fprintf(stderr, "blockd: error: cannot join the cluster as node %s: %s\n",
              cluster.node_id.c_str(), why.c_str());
      replica_server.stop();
      api.stop();
      nbd.stop();
      return 1;
    }
    member = std::move(joined.value());
    member_ptr.store(member.get(), std::memory_order_release);
    ClusterVolumes::Options cv;
    cv.member = member.get();
    cv.state_dir = data_dir + "/replication/dirty";
    cv.open_local = open_local;
    cv.delete_local = [s](const std::string& name) { return s->delete_volume(name, true); };
    cv.admit_epoch = [&replica_server](const std::string& name, uint64_t epoch, uint32_t inc) {
      return replica_server.admit_epoch(name, epoch, inc);
    };
    cv.forget_epoch = [&replica_server](const std::string& name) { replica_server.forget_epoch(name); };
    cv.fenced_epoch = [&replica_server](const std::string& name) { return replica_server.epoch(name); };
    auto started = ClusterVolumes::start(cv);
    if (!started) {
      fprintf(stderr, "blockd: error: cannot start replicated volumes: %s\n",
              started.error().message().c_str());
      member->stop();
      replica_server.stop();
      api.stop();
      nbd.stop();
      return 1;
    }
    cluster_volumes = std::move(started).value();
    cluster_volumes_ptr.store(cluster_volumes.get(), std::memory_order_release);
    api.set_cluster(cluster_volumes.get());
    cluster_ready = " node=" + cluster.node_id + " replication=" + m.replication;
  }
  CAIRN_LOG_INFO("blockd", "blockd ready nbd=%s socket=%s api=%s token_file=%s/admin.token%s",
                 nbd_tcp.empty() ? "none" : nbd_tcp.c_str(),
                 nbd_opts.unix_path.empty() ? "none" : nbd_opts.unix_path.c_str(),
                 api_url.c_str(), data_dir.c_str(), cluster_ready.c_str());
  int sig = 0;
  sigwait(&sigs, &sig);
  CAIRN_LOG_INFO("blockd", "signal %d: shutting down", sig);
  // Revoking the lease makes the node leave at once: its volumes fail over to replicas.
  if (member) member->stop();
  api.set_cluster(nullptr);
  cluster_volumes_ptr.store(nullptr, std::memory_order_release);
  if (cluster_volumes) cluster_volumes->stop();  // fences the volumes served here
  api.stop();
  replica_server.stop();
  nbd.stop();
  backups.reset();  // cancels and joins running jobs; instant restores resume at next start
  store.value().reset();
  CAIRN_LOG_INFO("blockd", "stopped");
  return 0;
}
