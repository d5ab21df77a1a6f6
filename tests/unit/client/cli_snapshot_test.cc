// The snapshot, clone, flatten and diff commands of the cairn CLI, run in-process against
// a canned HTTP server: checks the requests the CLI sends (method, path, query, body) and
// how it prints the answers. The API itself is tested in tests/unit/blockd/control_api_test.cc.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "cli.h"
#include "common/asio.h"

namespace cairn::client {
namespace {

using tcp = asio::ip::tcp;

struct Canned {
  int status = 200;
  std::string body;
};

struct Seen {
  std::string method;
  std::string target;
  std::string body;
  std::string authorization;
};

// A blocking one-connection-at-a-time HTTP server on 127.0.0.1 that answers "METHOD target"
// from a table (404 otherwise) and records every request.
class CannedServer {
 public:
  CannedServer() : acceptor_(ioc_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    thread_ = std::thread([this] { serve(); });
  }
  ~CannedServer() {
    stopping_ = true;
    boost::system::error_code ec;
    tcp::socket wake(ioc_);
    wake.connect(acceptor_.local_endpoint(), ec);  // unblocks accept()
    thread_.join();
  }

  std::string url() const {
    return "http://127.0.0.1:" + std::to_string(acceptor_.local_endpoint().port());
  }
  void answer(const std::string& method_and_target, int status, std::string body) {
    std::lock_guard lock(mu_);
    answers_[method_and_target] = Canned{status, std::move(body)};
  }
  std::vector<Seen> seen() {
    std::lock_guard lock(mu_);
    return seen_;
  }

 private:
  void serve() {
    while (!stopping_) {
      boost::system::error_code ec;
      tcp::socket socket(ioc_);
      acceptor_.accept(socket, ec);
      if (ec || stopping_) continue;
      beast::flat_buffer buffer;
      for (int i = 0; i < 100; ++i) {  // keep-alive: the CLI sends one request per run
        http::request<http::string_body> req;
        http::read(socket, buffer, req, ec);
        if (ec) break;
        Canned reply{404, R"({"code":"not_found","message":"no canned answer"})"};
        {
          std::lock_guard lock(mu_);
          seen_.push_back({std::string(to_std(req.method_string())),
                           std::string(to_std(req.target())), req.body(),
                           std::string(to_std(req[http::field::authorization]))});
          auto it = answers_.find(seen_.back().method + " " + seen_.back().target);
          if (it != answers_.end()) reply = it->second;
        }
        http::response<http::string_body> res{static_cast<http::status>(reply.status), 11};
        if (reply.status != 204) {
          res.set(http::field::content_type, "application/json");
          res.body() = reply.body;
        }
        res.keep_alive(req.keep_alive());
        res.prepare_payload();
        http::write(socket, res, ec);
        if (ec || !req.keep_alive()) break;
      }
    }
  }

  asio::io_context ioc_;
  tcp::acceptor acceptor_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::map<std::string, Canned> answers_;
  std::vector<Seen> seen_;
};

struct CliRun {
  int status;
  std::string out;
  std::string err;
};

class CliSnapshot : public ::testing::Test {
 protected:
  CliRun run(std::vector<std::string> args) {
    args.insert(args.begin(), {"cairn", "--api", server_.url(), "--token", "tok"});
    std::vector<const char*> argv;
    for (const auto& a : args) argv.push_back(a.c_str());
    std::ostringstream out, err;
    auto no_env = [](const std::string&) -> std::optional<std::string> { return std::nullopt; };
    int status = run_cli(static_cast<int>(argv.size()), argv.data(), out, err, no_env);
    return {status, out.str(), err.str()};
  }
  Seen last() {
    auto all = server_.seen();
    if (all.empty()) return {};
    return all.back();
  }

  CannedServer server_;
};

constexpr const char* kSnapshotJson =
    R"({"name":"s1","volume":"db","id":"4","createdUnixS":"1700000000","sizeBytes":"1073741824",)"
    R"("exclusiveBytes":"0","sharedBytes":"65536","clones":0,"nbdExport":"db@s1"})";

constexpr const char* kCloneJson =
    R"({"name":"copy","id":"5","sizeBytes":"1073741824","allocatedBytes":"0",)"
    R"("extentSizeBytes":"65536","createdUnixS":"1700000000","attachedConnections":0,)"
    R"("nbdExport":"copy","exclusiveBytes":"0","sharedBytes":"65536","parent":"db@s1"})";

TEST_F(CliSnapshot, CreateAcceptsVolSnapAndVolAtSnap) {
  server_.answer("POST /v1/volumes/db/snapshots", 201, kSnapshotJson);
  auto r = run({"snapshot", "create", "db", "s1"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(last().body, R"({"name":"s1"})");
  EXPECT_EQ(last().authorization, "Bearer tok");
  EXPECT_NE(r.out.find("nbd export: db@s1\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("shared:     64 KiB (65536 bytes)\n"), std::string::npos) << r.out;

  auto at = run({"snapshot", "create", "db@s1"});
  EXPECT_EQ(at.status, 0) << at.err;
  EXPECT_EQ(last().target, "/v1/volumes/db/snapshots");
  EXPECT_EQ(last().body, R"({"name":"s1"})");
  EXPECT_EQ(at.out, r.out);

  auto json = run({"snapshot", "create", "db@s1", "--json"});
  EXPECT_EQ(json.status, 0) << json.err;
  EXPECT_NE(json.out.find("\"nbdExport\": \"db@s1\""), std::string::npos) << json.out;
}

TEST_F(CliSnapshot, ListPrintsTableOrNone) {
  server_.answer("GET /v1/volumes/db/snapshots", 200,
                 std::string(R"({"snapshots":[)") + kSnapshotJson + "]}");
  auto r = run({"snapshot", "list", "db"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out,
            "NAME  CREATED               SIZE   EXCLUSIVE  SHARED  CLONES\n"
            "s1    2023-11-14T22:13:20Z  1 GiB  0 B        64 KiB  0\n");
  server_.answer("GET /v1/volumes/empty/snapshots", 200, R"({"snapshots":[]})");
  r = run({"snapshot", "list", "empty"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "no snapshots of empty\n");
}

TEST_F(CliSnapshot, DeleteAndBusyError) {
  server_.answer("DELETE /v1/volumes/db/snapshots/s1", 204, "");
  auto r = run({"snapshot", "delete", "db@s1"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "deleted snapshot db@s1\n");
  server_.answer("DELETE /v1/volumes/db/snapshots/s2", 409,
                 R"json({"code":"busy","message":"delete snapshot \"db@s2\": busy (1 clone(s) )json"
                 R"json(depend on it; flatten or delete them first)"})json");
  r = run({"snapshot", "delete", "db", "s2"});
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err,
            "cairn: error: delete snapshot \"db@s2\": busy (1 clone(s) depend on it; flatten or "
            "delete them first)\n");
}

TEST_F(CliSnapshot, InfoShowsOneSnapshot) {
  server_.answer("GET /v1/volumes/db/snapshots/s1", 200, kSnapshotJson);
  auto r = run({"snapshot", "info", "db@s1"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out.rfind("name:       s1\nvolume:     db\n", 0), 0u) << r.out;
}

TEST_F(CliSnapshot, DiffSendsFromAndToAndPrintsTable) {
  const char* diff_json =
      R"({"runs":[{"offsetBytes":"0","lengthBytes":"65536","zero":false},)"
      R"({"offsetBytes":"1048576","lengthBytes":"4096","zero":true}],)"
      R"("changedBytes":"65536","zeroedBytes":"4096"})";
  server_.answer("GET /v1/volumes/db/diff?from=s1&to=s2", 200, diff_json);
  server_.answer("GET /v1/volumes/db/diff", 200, R"({"runs":[]})");
  server_.answer("GET /v1/volumes/db/diff?to=s2", 200, R"({"runs":[]})");
  auto r = run({"snapshot", "diff", "db", "--from", "s1", "--to", "s2"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out,
            "OFFSET  LENGTH  KIND\n"
            "0 B     64 KiB  data\n"
            "1 MiB   4 KiB   zero\n"
            "total: 2 run(s), 64 KiB (65536 bytes) changed, 4 KiB (4096 bytes) zeroed\n");

  r = run({"snapshot", "diff", "db", "--from", "s1", "--to", "s2", "--json"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("\"offsetBytes\": \"1048576\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"changedBytes\": \"65536\""), std::string::npos) << r.out;

  r = run({"snapshot", "diff", "db"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(last().target, "/v1/volumes/db/diff");
  EXPECT_EQ(r.out, "no changes\n");
  r = run({"snapshot", "diff", "db", "--to", "s2"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(last().target, "/v1/volumes/db/diff?to=s2");
}

TEST_F(CliSnapshot, CloneAndFlattenPrintVolume) {
  server_.answer("POST /v1/volumes/db/snapshots/s1/clone", 201, kCloneJson);
  auto r = run({"volume", "clone", "db@s1", "copy"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(last().body, R"({"name":"copy"})");
  EXPECT_NE(r.out.find("parent:      db@s1\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("shared:      64 KiB (65536 bytes)\n"), std::string::npos) << r.out;

  server_.answer("POST /v1/volumes/copy/flatten", 200,
                 R"({"name":"copy","exclusiveBytes":"65536","parent":""})");
  r = run({"volume", "flatten", "copy"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(last().method, "POST");
  EXPECT_NE(r.out.find("parent:      -\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("exclusive:   64 KiB (65536 bytes)\n"), std::string::npos) << r.out;
}

TEST_F(CliSnapshot, ServerErrorsAreOneLineExitOne) {
  server_.answer("POST /v1/volumes/db/snapshots", 501,
                 R"({"code":"unsupported","message":"create snapshot \"db@s1\": unsupported"})");
  auto r = run({"snapshot", "create", "db", "s1"});
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "cairn: error: create snapshot \"db@s1\": unsupported\n");
  r = run({"snapshot", "list", "nope"});  // no canned answer: 404
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "cairn: error: no canned answer\n");
}

TEST_F(CliSnapshot, MalformedRefsAreUsageErrorsWithoutRequests) {
  for (std::vector<std::string> args :
       {std::vector<std::string>{"snapshot", "create", "db"},
        {"snapshot", "create", "db@s1", "s2"},
        {"snapshot", "delete", "@s1"},
        {"volume", "clone", "db", "copy"},
        {"volume", "clone", "db@", "copy"}}) {
    auto r = run(args);
    EXPECT_EQ(r.status, 2) << r.err;
    EXPECT_EQ(r.err.rfind("cairn: error: ", 0), 0u) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  EXPECT_TRUE(server_.seen().empty());
}

}  // namespace
}  // namespace cairn::client
