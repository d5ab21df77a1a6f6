// ControlClient: a synchronous client of blockd's control API (docs/CONTROL_API.md).
//
// Owned by its caller (the `cairn` CLI, tests). Not thread-safe: use one client per thread.
// Keeps one keep-alive connection to the server and reconnects (retrying the request once)
// when the server closed it while idle. Every call blocks for at most `timeout_ms` per
// network step (resolve, connect, write, read).
// A non-2xx answer becomes a ClientError carrying the server's code and message; transport
// failures become a ClientError with http_status 0 and a message naming the URL.
#pragma once

#include <boost/outcome/basic_result.hpp>
#include <boost/outcome/policy/terminate.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>

#include "cairn/v1/backup.pb.h"
#include "cairn/v1/cluster.pb.h"
#include "cairn/v1/volume.pb.h"
#include "common/result.h"

namespace cairn::client {

struct ClientError {
  std::error_code code;  // the server's code as an Errc, or the transport's errno
  int http_status = 0;   // 0: no answer received
  std::string message;   // one human line
};

// Like Result<T>, with the server's message kept beside the code.
template <class T>
using ClientResult =
    boost::outcome_v2::basic_result<T, ClientError, boost::outcome_v2::policy::terminate>;

struct HttpReply {
  int status = 0;
  std::string content_type;
  std::string body;
};

// Maps an API error code ("not_found", ...) to its Errc; unknown codes fall back on the
// HTTP status.
std::error_code api_error_code(std::string_view code, int http_status);

class ControlClient {
 public:
  struct Options {
    std::chrono::milliseconds timeout_ms{30'000};
  };

  // base_url: http://host[:port] (IPv6 as http://[::1]:8080). An empty token sends no
  // Authorization header.
  ControlClient(std::string base_url, std::string token);
  ControlClient(std::string base_url, std::string token, Options options);
  ~ControlClient();
  ControlClient(const ControlClient&) = delete;
  ControlClient& operator=(const ControlClient&) = delete;

  // replicas: cluster mode's copies on distinct nodes (0 = the server's default).
  ClientResult<cairn::v1::Volume> create_volume(const std::string& name, uint64_t size_bytes,
                                                uint32_t replicas = 0);
  // Cluster mode: makes `node` (empty: the node asked) the volume's primary.
  ClientResult<cairn::v1::Volume> attach_volume(const std::string& name, const std::string& node);
  // Cluster mode: bounds the volume's resync/rebuild bandwidth (0 = unbounded).
  ClientResult<cairn::v1::Volume> set_rebuild_rate(const std::string& name, uint64_t bytes_per_s);
  ClientResult<cairn::v1::ListVolumesResponse> list_volumes();
  ClientResult<cairn::v1::Volume> get_volume(const std::string& name);
  ClientResult<cairn::v1::Volume> resize_volume(const std::string& name, uint64_t size_bytes);
  ClientResult<void> delete_volume(const std::string& name, bool force = false);
  ClientResult<cairn::v1::NodeStatus> status();
  // The cluster's nodes (single-node mode: the local node alone, id "local").
  ClientResult<cairn::v1::ListNodesResponse> list_nodes();

  // Snapshots ("volume@snapshot"), clones and changed-block diffs.
  ClientResult<cairn::v1::Snapshot> create_snapshot(const std::string& volume,
                                                    const std::string& snapshot);
  ClientResult<cairn::v1::ListSnapshotsResponse> list_snapshots(const std::string& volume);
  ClientResult<cairn::v1::Snapshot> get_snapshot(const std::string& volume,
                                                 const std::string& snapshot);
  ClientResult<void> delete_snapshot(const std::string& volume, const std::string& snapshot);
  ClientResult<cairn::v1::Volume> clone_volume(const std::string& volume,
                                               const std::string& snapshot,
                                               const std::string& new_volume);
  ClientResult<cairn::v1::Volume> flatten_volume(const std::string& volume);
  // from empty: since the empty volume; to empty: up to the live volume.
  ClientResult<cairn::v1::DiffResponse> diff(const std::string& volume, const std::string& from,
                                             const std::string& to);

  // Backups (docs/CONTROL_API.md, "Backups"): repository calls answer at once; create,
  // restore and verify start a job to follow with backup_job().
  ClientResult<cairn::v1::RepoConfig> init_backup_repo(const cairn::v1::InitRepoRequest& req);
  ClientResult<cairn::v1::ListBackupsResponse> list_backups(const cairn::v1::ListBackupsRequest& req);
  ClientResult<cairn::v1::PruneResponse> prune_backups(const cairn::v1::PruneRequest& req);
  ClientResult<cairn::v1::BackupJob> create_backup(const cairn::v1::CreateBackupRequest& req);
  ClientResult<cairn::v1::BackupJob> restore_backup(const cairn::v1::RestoreBackupRequest& req);
  ClientResult<cairn::v1::BackupJob> verify_backups(const cairn::v1::VerifyRequest& req);
  ClientResult<cairn::v1::ListBackupJobsResponse> backup_jobs();
  ClientResult<cairn::v1::BackupJob> backup_job(const std::string& id);

  // One request as given (target = path and query). Answers of any status are values;
  // only transport failures are errors. Sends the token unless with_token is false.
  ClientResult<HttpReply> raw(std::string_view method, std::string_view target,
                              std::string body = {}, bool with_token = true);

  const std::string& base_url() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cairn::client
