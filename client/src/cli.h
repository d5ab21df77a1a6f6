// The `cairn` command line: argument parsing, token lookup, output formatting.
//
// client/main.cc only forwards argv, the streams and the environment to run_cli(), so every
// behaviour of the CLI can be tested in-process. Not thread-safe (one run per thread).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "cairn/v1/cluster.pb.h"
#include "cairn/v1/objectd_admin.pb.h"
#include "cairn/v1/volume.pb.h"
#include "client/control_client.h"
#include "common/sigv4.h"

namespace CLI {
class App;
}

namespace cairn::client {

// Environment lookup (std::getenv in main; a map in tests).
using GetEnv = std::function<std::optional<std::string>(const std::string& name)>;

constexpr const char* kDefaultApiUrl = "http://127.0.0.1:8080";
constexpr const char* kDefaultTokenFile = "./var/blockd/admin.token";

// Runs one command; returns the exit status: 0 ok, 1 failed, 2 usage error.
int run_cli(int argc, const char* const* argv, std::ostream& out, std::ostream& err,
            const GetEnv& getenv);

// Token precedence: --token, --token-file, $CAIRN_TOKEN, $CAIRN_TOKEN_FILE, then
// default_file if it exists. An empty string means none was found (requests go without).
ClientResult<std::string> resolve_token(const std::string& flag_token,
                                        const std::string& flag_token_file, const GetEnv& getenv,
                                        const std::string& default_file = kDefaultTokenFile);

// Columns left-aligned, separated by two spaces; the last column is not padded.
std::string format_table(const std::vector<std::string>& header,
                         const std::vector<std::vector<std::string>>& rows);
// "key: value" lines with the values aligned.
std::string format_fields(const std::vector<std::pair<std::string, std::string>>& fields);

std::string format_volume_table(const cairn::v1::ListVolumesResponse& list);
std::string format_volume_info(const cairn::v1::Volume& volume);
std::string format_node_status(const cairn::v1::NodeStatus& status);
// ID NBD API STATE CAPACITY USED VOLUMES, one row per node.
std::string format_node_table(const cairn::v1::ListNodesResponse& list);
std::string format_snapshot_table(const cairn::v1::ListSnapshotsResponse& list);
std::string format_snapshot_info(const cairn::v1::Snapshot& snapshot);
// A table OFFSET LENGTH KIND (exact sizes in the largest unit that divides them), then a
// totals line; "no changes" when there are no runs.
std::string format_diff(const cairn::v1::DiffResponse& diff);
// 65536 -> "64 KiB", 1073754112 -> "1048588 KiB", 1000 -> "1000 B": never rounded.
std::string format_exact_size(uint64_t bytes);
// "vol@snap" -> {"vol", "snap"}; nullopt unless both parts are non-empty and there is
// exactly one '@'.
std::optional<std::pair<std::string, std::string>> split_snapshot_ref(const std::string& ref);
// Protobuf JSON (lowerCamelCase, every field printed), indented, with a final newline.
std::string format_json(const google::protobuf::Message& msg);

// ---- objectd commands (client/src/cli_objects.cc): `tenant ...`, `objects heal` ----

constexpr const char* kDefaultS3Endpoint = "http://127.0.0.1:9000";
constexpr const char* kDefaultS3CredentialsFile = "./var/objectd/s3.credentials";

// The global S3 flags (objectd's admin commands and backup repositories share them).
struct S3Flags {
  std::string endpoint, access_key, secret_key, credentials_file;
};
void add_s3_flags(CLI::App& app, S3Flags& flags);
struct S3Access {
  std::string endpoint;
  sigv4::Credentials credentials;
};
// Endpoint: --s3-endpoint, $CAIRN_S3_ENDPOINT, else the default; credentials as
// resolve_s3_credentials. Check s3_keys_half_given() first (a usage error).
ClientResult<S3Access> resolve_s3_access(const S3Flags& flags, const GetEnv& getenv);
inline bool s3_keys_half_given(const S3Flags& f) { return f.access_key.empty() != f.secret_key.empty(); }

// The objectd commands' options and subcommands, registered on run_cli's app before parsing.
struct ObjectdCommands;
std::shared_ptr<ObjectdCommands> add_objectd_commands(CLI::App& app);
// Runs the objectd command that was parsed; nullopt when none of them was selected.
std::optional<int> run_objectd_commands(const ObjectdCommands& commands, const S3Flags& s3,
                                        bool json, std::ostream& out, std::ostream& err,
                                        const GetEnv& getenv);

// ---- backup commands (client/src/cli_backup.cc): `backup ...` through blockd ----

struct BackupCommands;
std::shared_ptr<BackupCommands> add_backup_commands(CLI::App& app);
// Runs the backup command that was parsed; nullopt when none was selected.
std::optional<int> run_backup_commands(const BackupCommands& commands, ControlClient& client,
                                       const S3Flags& s3, bool json, std::ostream& out,
                                       std::ostream& err, const GetEnv& getenv);

// Credential precedence: --access-key/--secret-key, --s3-credentials FILE,
// $CAIRN_S3_ACCESS_KEY/$CAIRN_S3_SECRET_KEY, $CAIRN_S3_CREDENTIALS, then default_file if it
// exists. Finding none is an error.
ClientResult<sigv4::Credentials> resolve_s3_credentials(
    const std::string& flag_access_key, const std::string& flag_secret_key,
    const std::string& flag_file, const GetEnv& getenv,
    const std::string& default_file = kDefaultS3CredentialsFile);
// objectd's DATA_DIR/s3.credentials: access_key_id=... and secret_access_key=... lines.
ClientResult<sigv4::Credentials> read_s3_credentials_file(const std::string& path);

std::string format_tenant_table(const cairn::v1::ListTenantsResponse& list);
std::string format_access_key(const cairn::v1::S3AccessKey& key);
// "heal: 120/500 objects (24%), 3 healed, 0 failed, 12.5 MiB/s, ETA 31s" (no newline).
std::string format_heal_progress(const cairn::v1::HealStatus& status);
std::string format_heal_status(const cairn::v1::HealStatus& status);
// 75 -> "1m15s"; negative or not finite -> "?".
std::string format_duration(double seconds);
// "12.5 MiB/s"; "0 B/s" when not positive.
std::string format_rate(double bytes_per_second);

}  // namespace cairn::client
