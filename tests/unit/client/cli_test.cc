// The cairn CLI in-process: formatting, token lookup, exit statuses. Talking to a live
// server is covered by tests/unit/blockd/control_api_test.cc (ControlClient).
#include "cli.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace cairn::client {
namespace {

struct CliRun {
  int status;
  std::string out;
  std::string err;
};

GetEnv env_of(std::map<std::string, std::string> vars) {
  return [vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

CliRun run(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
  args.insert(args.begin(), "cairn");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  std::ostringstream out, err;
  int status = run_cli(static_cast<int>(argv.size()), argv.data(), out, err, env_of(env));
  return {status, out.str(), err.str()};
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/cairn-cli-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string write(const std::string& name, const std::string& content) const {
    std::string p = path_ + "/" + name;
    std::ofstream(p) << content;
    return p;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A port nothing listens on (port 1 needs root to bind; nobody does in tests).
constexpr const char* kDeadApi = "http://127.0.0.1:1";

TEST(Cli, FormatsVolumeTableAligned) {
  cairn::v1::ListVolumesResponse list;
  auto* a = list.add_volumes();
  a->set_name("db");
  a->set_size_bytes(10ull << 30);
  a->set_allocated_bytes(1536ull << 20);
  a->set_attached_connections(2);
  auto* b = list.add_volumes();
  b->set_name("scratch-volume");
  b->set_size_bytes(512ull << 20);
  EXPECT_EQ(format_volume_table(list),
            "NAME            SIZE     ALLOCATED  ATTACHED\n"
            "db              10 GiB   1.5 GiB    2\n"
            "scratch-volume  512 MiB  0 B        0\n");
}

TEST(Cli, FormatsTableWithoutTrailingSpaces) {
  EXPECT_EQ(format_table({"A", "LONGER"}, {{"xyz", ""}, {"", "v"}}),
            "A    LONGER\n"
            "xyz\n"
            "     v\n");
}

TEST(Cli, FormatsVolumeInfoAsKeyValueBlock) {
  cairn::v1::Volume v;
  v.set_name("db");
  v.set_id(7);
  v.set_size_bytes(10ull << 30);
  v.set_allocated_bytes(4096);
  v.set_extent_size_bytes(65536);
  v.set_created_unix_s(1700000000);
  v.set_attached_connections(1);
  v.set_nbd_export("db");
  EXPECT_EQ(format_volume_info(v),
            "name:        db\n"
            "id:          7\n"
            "size:        10 GiB (10737418240 bytes)\n"
            "allocated:   4 KiB (4096 bytes)\n"
            "extent size: 64 KiB\n"
            "created:     2023-11-14T22:13:20Z\n"
            "attached:    1 connection(s)\n"
            "nbd export:  db\n");
}

TEST(Cli, FormatsNodeStatus) {
  cairn::v1::NodeStatus s;
  s.set_version("0.1.0");
  s.set_capacity_bytes(100ull << 30);
  s.set_used_bytes(25ull << 30);
  s.set_volumes(3);
  s.set_nbd_tcp("127.0.0.1:10809");
  std::string text = format_node_status(s);
  EXPECT_NE(text.find("used:            25 GiB (25.0%)\n"), std::string::npos) << text;
  EXPECT_NE(text.find("nbd tcp:         127.0.0.1:10809\n"), std::string::npos) << text;
  EXPECT_NE(text.find("nbd socket:      -\n"), std::string::npos) << text;
}

TEST(Cli, JsonUsesProtobufMapping) {
  cairn::v1::Volume v;
  v.set_name("db");
  v.set_size_bytes(4096);
  std::string json = format_json(v);
  EXPECT_NE(json.find("\"sizeBytes\": \"4096\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"attachedConnections\": 0"), std::string::npos) << json;
  EXPECT_EQ(json.back(), '\n');
}

TEST(Cli, TokenPrecedence) {
  TempDir dir;
  std::string flag_file = dir.write("flag.token", "from-flag-file\n");
  std::string env_file = dir.write("env.token", "  from-env-file  \n");
  std::string default_file = dir.write("default.token", "from-default-file");
  auto env = env_of({{"CAIRN_TOKEN", "from-env"}, {"CAIRN_TOKEN_FILE", env_file}});
  EXPECT_EQ(resolve_token("from-flag", flag_file, env, default_file).value(), "from-flag");
  EXPECT_EQ(resolve_token("", flag_file, env, default_file).value(), "from-flag-file");
  EXPECT_EQ(resolve_token("", "", env, default_file).value(), "from-env");
  EXPECT_EQ(resolve_token("", "", env_of({{"CAIRN_TOKEN_FILE", env_file}}), default_file).value(),
            "from-env-file");
  EXPECT_EQ(resolve_token("", "", env_of({}), default_file).value(), "from-default-file");
  EXPECT_EQ(resolve_token("", "", env_of({}), dir.path() + "/missing").value(), "");
}

TEST(Cli, UnreadableTokenFileIsAnError) {
  auto r = resolve_token("", "/nonexistent/admin.token", env_of({}), "");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("/nonexistent/admin.token"), std::string::npos);
  auto cli = run({"--token-file", "/nonexistent/admin.token", "volume", "list"});
  EXPECT_EQ(cli.status, 1);
  EXPECT_EQ(cli.err.rfind("cairn: error: cannot read token file /nonexistent/admin.token", 0), 0u)
      << cli.err;
}

TEST(Cli, UsageErrorsExitTwo) {
  for (std::vector<std::string> args : {std::vector<std::string>{},
                                        {"volume"},
                                        {"volume", "create", "x"},
                                        {"volume", "create", "x", "--size", "10Q"},
                                        {"volume", "frobnicate"},
                                        {"--bogus", "status"},
                                        {"volume", "info"}}) {
    auto r = run(args, {{"CAIRN_API", kDeadApi}});
    EXPECT_EQ(r.status, 2) << r.err;
    EXPECT_EQ(r.err.rfind("cairn: error: ", 0), 0u) << r.err;
    EXPECT_EQ(r.out, "");
  }
}

TEST(Cli, HelpExitsZero) {
  auto r = run({"--help"});
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("volume"), std::string::npos) << r.out;
  r = run({"volume", "create", "--help"});
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("--size"), std::string::npos) << r.out;
}

TEST(Cli, UnreachableApiIsOneLineErrorNamingUrl) {
  auto r = run({"--api", kDeadApi, "--token", "t", "volume", "list"});
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "cairn: error: cannot connect to http://127.0.0.1:1: Connection refused\n");
  // Global options after the subcommand, API URL from the environment.
  r = run({"status", "--json"}, {{"CAIRN_API", kDeadApi}});
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find(kDeadApi), std::string::npos) << r.err;
}

TEST(Cli, InvalidApiUrlIsAnError) {
  auto r = run({"--api", "ftp://x", "status"});
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("invalid API URL \"ftp://x\""), std::string::npos) << r.err;
}

}  // namespace
}  // namespace cairn::client
