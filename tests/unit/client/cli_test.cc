// The cairn CLI in-process: formatting, token lookup, exit statuses. Talking to a live
// server is covered by tests/unit/blockd/control_api_test.cc (ControlClient).
#include "temp_dir.h"
#include "cli.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace cairn::client {
namespace {

using cairn::test::TempDir;

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
  v.set_exclusive_bytes(4096);
  EXPECT_EQ(format_volume_info(v),
            "name:        db\n"
            "id:          7\n"
            "size:        10 GiB (10737418240 bytes)\n"
            "allocated:   4 KiB (4096 bytes)\n"
            "exclusive:   4 KiB (4096 bytes)\n"
            "shared:      0 B\n"
            "extent size: 64 KiB\n"
            "created:     2023-11-14T22:13:20Z\n"
            "attached:    1 connection(s)\n"
            "nbd export:  db\n"
            "parent:      -\n");
  v.set_parent("base@gold");
  v.set_shared_bytes(3ull << 30);
  std::string text = format_volume_info(v);
  EXPECT_NE(text.find("shared:      3 GiB (3221225472 bytes)\n"), std::string::npos) << text;
  EXPECT_NE(text.find("parent:      base@gold\n"), std::string::npos) << text;
}

TEST(Cli, FormatsSnapshotTable) {
  cairn::v1::ListSnapshotsResponse list;
  auto* a = list.add_snapshots();
  a->set_name("nightly-1");
  a->set_created_unix_s(1700000000);
  a->set_size_bytes(10ull << 30);
  a->set_exclusive_bytes(64ull << 20);
  a->set_shared_bytes(1536ull << 20);
  a->set_clones(2);
  auto* b = list.add_snapshots();
  b->set_name("s2");
  b->set_created_unix_s(1700003600);
  b->set_size_bytes(10ull << 30);
  EXPECT_EQ(format_snapshot_table(list),
            "NAME       CREATED               SIZE    EXCLUSIVE  SHARED   CLONES\n"
            "nightly-1  2023-11-14T22:13:20Z  10 GiB  64 MiB     1.5 GiB  2\n"
            "s2         2023-11-14T23:13:20Z  10 GiB  0 B        0 B      0\n");
}

TEST(Cli, FormatsSnapshotInfo) {
  cairn::v1::Snapshot s;
  s.set_name("s1");
  s.set_volume("db");
  s.set_id(9);
  s.set_created_unix_s(1700000000);
  s.set_size_bytes(1ull << 30);
  s.set_exclusive_bytes(8192);
  s.set_shared_bytes(1ull << 20);
  s.set_clones(1);
  s.set_nbd_export("db@s1");
  EXPECT_EQ(format_snapshot_info(s),
            "name:       s1\n"
            "volume:     db\n"
            "id:         9\n"
            "created:    2023-11-14T22:13:20Z\n"
            "size:       1 GiB (1073741824 bytes)\n"
            "exclusive:  8 KiB (8192 bytes)\n"
            "shared:     1 MiB (1048576 bytes)\n"
            "clones:     1\n"
            "nbd export: db@s1\n");
}

TEST(Cli, FormatsDiffTableWithExactSizesAndTotals) {
  cairn::v1::DiffResponse d;
  auto add = [&](uint64_t offset, uint64_t length, bool zero) {
    auto* r = d.add_runs();
    r->set_offset_bytes(offset);
    r->set_length_bytes(length);
    r->set_zero(zero);
  };
  add(0, 65536, false);
  add(1ull << 20, 4096, true);
  add((1ull << 30) + 12288, 1536ull << 20, false);
  d.set_changed_bytes(65536 + (1536ull << 20));
  d.set_zeroed_bytes(4096);
  EXPECT_EQ(format_diff(d),
            "OFFSET       LENGTH    KIND\n"
            "0 B          64 KiB    data\n"
            "1 MiB        4 KiB     zero\n"
            "1048588 KiB  1536 MiB  data\n"
            "total: 3 run(s), 1.5 GiB (1610678272 bytes) changed, 4 KiB (4096 bytes) zeroed\n");
  EXPECT_EQ(format_diff(cairn::v1::DiffResponse{}), "no changes\n");
}

TEST(Cli, ExactSizesAreNeverRounded) {
  EXPECT_EQ(format_exact_size(0), "0 B");
  EXPECT_EQ(format_exact_size(512), "512 B");
  EXPECT_EQ(format_exact_size(1000), "1000 B");
  EXPECT_EQ(format_exact_size(1024), "1 KiB");
  EXPECT_EQ(format_exact_size(1536), "1536 B");
  EXPECT_EQ(format_exact_size(3ull << 40), "3 TiB");
  EXPECT_EQ(format_exact_size(1ull << 60), "1024 PiB");
}

TEST(Cli, DiffJsonUsesProtobufMapping) {
  cairn::v1::DiffResponse d;
  auto* r = d.add_runs();
  r->set_offset_bytes(4096);
  r->set_length_bytes(8192);
  d.set_changed_bytes(8192);
  std::string json = format_json(d);
  for (const char* field : {"\"offsetBytes\": \"4096\"", "\"lengthBytes\": \"8192\"",
                            "\"zero\": false", "\"changedBytes\": \"8192\"",
                            "\"zeroedBytes\": \"0\""})
    EXPECT_NE(json.find(field), std::string::npos) << field << " in " << json;
}

TEST(Cli, SplitsSnapshotRefs) {
  auto ref = split_snapshot_ref("db@s1");
  ASSERT_TRUE(ref);
  EXPECT_EQ(ref->first, "db");
  EXPECT_EQ(ref->second, "s1");
  for (const char* bad : {"db", "@s1", "db@", "a@b@c", "", "@"})
    EXPECT_FALSE(split_snapshot_ref(bad)) << bad;
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
                                        {"volume", "info"},
                                        {"snapshot"},
                                        {"snapshot", "create", "db"},
                                        {"snapshot", "create", "db@"},
                                        {"snapshot", "create", "db@s1", "s2"},
                                        {"snapshot", "delete", "db"},
                                        {"snapshot", "list"},
                                        {"snapshot", "diff"},
                                        {"snapshot", "diff", "db", "--from"},
                                        {"volume", "clone", "db", "copy"},
                                        {"volume", "clone", "db@s1"},
                                        {"volume", "flatten"}}) {
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
