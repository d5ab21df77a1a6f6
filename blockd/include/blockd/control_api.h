// ControlApi: blockd's HTTP/1.1 control API (volumes, snapshots and clones, backups, node
// status, cluster nodes, /metrics, /healthz).
//
// Created by the daemon after the VolumeStore, which must outlive it; stop() (or the
// destructor) returns only when no request is running any more. The API owns one
// io_context and the one thread that runs it; every request, including its synchronous
// VolumeStore calls and the status callback, runs on that thread. start() and stop() are
// called by the owner from one thread; port() from any thread.
// Wire format (paths, JSON bodies, error codes): docs/CONTROL_API.md.
// Limits: request body 64 KiB, request header 8 KiB, 256 concurrent connections (more are
// closed on accept), 30 s to read a request (also the keep-alive idle timeout).
// Every /v1 request needs `Authorization: Bearer <admin token>`; /metrics and /healthz
// are open.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "blockd/backup_service.h"
#include "blockd/volume_store.h"
#include "cairn/v1/cluster.pb.h"
#include "cairn/v1/volume.pb.h"
#include "common/metrics.h"
#include "common/result.h"

namespace cairn::replication {
class ClusterVolumes;
}

namespace cairn::blockd {

class ControlApi {
 public:
  // Returns the daemon's view (version, data_dir, NBD endpoints and connections). The API
  // overwrites capacity_bytes, used_bytes and volumes from VolumeStore::stats().
  using StatusFn = std::function<cairn::v1::NodeStatus()>;

  struct Options {
    size_t body_max_bytes = 64 * 1024;
    size_t header_max_bytes = 8 * 1024;
    size_t connections_max = 256;
    std::chrono::milliseconds read_timeout_ms{30'000};
    MetricsRegistry* metrics = nullptr;  // null: MetricsRegistry::global()
    // Serves /v1/backup/... when set (must outlive the API); else those paths are 404.
    BackupService* backups = nullptr;
    // GET /v1/nodes in cluster mode: the registered nodes (called on the API's thread; an
    // error is answered as such, e.g. unavailable when etcd does not answer). Null in
    // single-node mode: the API answers the local node alone, with id "local".
    std::function<Result<std::vector<cairn::v1::ClusterNode>>()> nodes;
    // Cluster mode: volumes are replicated volumes (create with replicas, attach,
    // rebuild-rate, info with the cluster section), served by the ClusterVolumes given to
    // set_cluster(); until then volume requests answer 503 unavailable.
    bool cluster_mode = false;
  };

  // An empty admin_token refuses every authenticated request.
  ControlApi(VolumeStore& store, std::string admin_token, StatusFn status_fn);
  ControlApi(VolumeStore& store, std::string admin_token, StatusFn status_fn, Options options);
  ~ControlApi();
  ControlApi(const ControlApi&) = delete;
  ControlApi& operator=(const ControlApi&) = delete;

  // Binds host:port (port 0 = ephemeral) and starts serving on the API's thread. Call at
  // most once. Fails with the bind/listen errno, or invalid_argument when already started
  // or when host does not resolve.
  Status start(const std::string& host, uint16_t port);
  // Closes the listener and every connection, then joins the thread. Idempotent.
  void stop();
  // The bound port once start() succeeded, else 0.
  uint16_t port() const;
  // Cluster mode: the node's replicated volumes, once it joined (must outlive the API, or
  // be unset with nullptr first). Any thread.
  void set_cluster(replication::ClusterVolumes* cluster);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// Reads <data_dir>/admin.token, or creates it (32 random bytes, hex, mode 0600) when it
// does not exist. Creates data_dir if missing.
Result<std::string> load_or_create_admin_token(const std::string& data_dir);

}  // namespace cairn::blockd
