// The `cairn` command line: argument parsing, token lookup, output formatting.
//
// client/main.cc only forwards argv, the streams and the environment to run_cli(), so every
// behaviour of the CLI can be tested in-process. Not thread-safe (one run per thread).
#pragma once

#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "cairn/v1/volume.pb.h"
#include "client/control_client.h"

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
// Protobuf JSON (lowerCamelCase, every field printed), indented, with a final newline.
std::string format_json(const google::protobuf::Message& msg);

}  // namespace cairn::client
