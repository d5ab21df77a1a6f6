// NbdServer: serves the volumes of a VolumeStore over the NBD protocol (fixed newstyle).
//
// Owns `threads` I/O threads, each running one Reactor (one io_uring ring) that carries both
// the sockets of the connections assigned to it and their disk I/O. Listeners (TCP and/or a
// unix socket) accept on the first thread and hand connections out round-robin. Created and
// stopped by the daemon's main thread; the VolumeStore must outlive it.
// Limits: connections_max open connections (more are closed at accept), per connection at
// most kInflightMax requests and kInflightBytesMax bytes of payload in flight, requests of
// at most 32 MiB of payload. Protocol details: docs/FORMAT-nbd.md.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "blockd/volume_store.h"
#include "common/reactor.h"
#include "common/result.h"

namespace cairn::blockd {

class NbdServer {
 public:
  struct Options {
    std::string tcp_host = "127.0.0.1";
    uint16_t tcp_port = 10809;   // 0 = ephemeral (see tcp_port())
    bool tcp_enabled = true;
    std::string unix_path;       // empty = no unix socket
    unsigned threads = 2;
    unsigned connections_max = 1024;
    // Opens an export by name; default VolumeStore::open_volume. blockd passes
    // BackupService::open_volume so that a volume under instant restore is served through
    // its hydrating wrapper, and in cluster mode ClusterVolumes::open for replicated
    // volumes. On failure the hook may set `*why`, the message the client gets (e.g. the
    // node that serves the volume); default "no such export: NAME".
    std::function<Result<std::shared_ptr<Volume>>(const std::string& name, std::string* why)>
        open_volume;
  };

  NbdServer(VolumeStore& store, Options options);
  ~NbdServer();
  NbdServer(const NbdServer&) = delete;
  NbdServer& operator=(const NbdServer&) = delete;

  // Binds the listeners and starts the I/O threads.
  Status start();
  // Closes listeners and connections (in-flight requests finish first), joins threads.
  void stop();

  uint16_t tcp_port() const { return bound_tcp_port_; }
  const std::string& unix_path() const { return options_.unix_path; }
  uint32_t connections() const { return connections_.load(std::memory_order_relaxed); }

  struct Impl;

 private:
  VolumeStore& store_;
  Options options_;
  uint16_t bound_tcp_port_ = 0;
  std::atomic<uint32_t> connections_{0};
  std::unique_ptr<Impl> impl_;
};

}  // namespace cairn::blockd
