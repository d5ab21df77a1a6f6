// A real etcd for replication/'s unit tests (Debian's etcd-server, or $CAIRN_ETCD_BIN):
// one member on free 127.0.0.1 ports with its data in a temporary directory, started per
// test and stopped by its PID. The `Etcd` fixture skips a test when the binary is absent.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/asio.h"
#include "common/assert.h"
#include "common/log.h"
#include "replication/etcd_client.h"
#include "temp_dir.h"

namespace cairn::replication::test {

using namespace std::chrono_literals;

// Generous bound for things that must happen (an event, a callback): only a hang hits it.
constexpr auto kEventually = std::chrono::seconds(60);

inline std::string etcd_binary() {
  const char* env = ::getenv("CAIRN_ETCD_BIN");
  return env && *env ? env : "/usr/bin/etcd";
}

// A port nobody listens on (bound and released at once).
inline uint16_t unused_port() {
  asio::io_context ioc;
  asio::ip::tcp::acceptor a(ioc, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();
}

inline std::string url(uint16_t port) { return "http://127.0.0.1:" + std::to_string(port); }

// One etcd member serving clients on 127.0.0.1, data under `dir`. stop() and start() again
// restart it on the same ports with the same data (leases and keys survive, as in etcd).
class EtcdServer {
 public:
  // A port picked free may be taken by another process before etcd binds it: the first
  // start tries fresh ports a few times (restarts keep theirs).
  explicit EtcdServer(const std::string& dir) : dir_(dir), log_path_(dir + "/etcd.log") {
    for (int attempt = 0; attempt < 5; ++attempt) {
      ::unlink(log_path_.c_str());
      endpoint_ = url(unused_port());
      peer_ = url(unused_port());
      start();
      if (error_.find("address already in use") == std::string::npos) return;
    }
  }
  ~EtcdServer() { stop(); }
  EtcdServer(const EtcdServer&) = delete;
  EtcdServer& operator=(const EtcdServer&) = delete;

  // Starts etcd and waits until it answers; error() says why when it did not.
  void start() {
    CAIRN_ASSERT(pid_ == 0);
    error_.clear();
    std::vector<std::string> args = {etcd_binary(),
                                     "--data-dir", dir_ + "/data",
                                     "--listen-client-urls", endpoint_,
                                     "--advertise-client-urls", endpoint_,
                                     "--listen-peer-urls", peer_,
                                     "--initial-advertise-peer-urls", peer_,
                                     "--initial-cluster", "default=" + peer_};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int log_fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    CAIRN_ASSERT(log_fd >= 0 && null_fd >= 0);
    pid_ = ::fork();
    CAIRN_ASSERT(pid_ >= 0);
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test
      ::dup2(null_fd, 0);
      ::dup2(log_fd, 1);
      ::dup2(log_fd, 2);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(log_fd);
    ::close(null_fd);
    wait_ready();
  }

  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int status = 0;
    for (int i = 0; i < 300; ++i) {  // 30 s, then SIGKILL
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = 0;
        return;
      }
      std::this_thread::sleep_for(100ms);
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
    pid_ = 0;
  }

  const std::string& endpoint() const { return endpoint_; }
  const std::string& error() const { return error_; }

 private:
  std::string log() const {
    std::ifstream f(log_path_);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

  // Ready when a read is answered (found or not).
  void wait_ready() {
    EtcdClient::Options o;
    o.timeout = 1s;
    o.attempt_timeout = 1s;
    EtcdClient probe({endpoint_}, o);
    const LogLevel saved = log_level();
    set_log_level(LogLevel::error);  // refused connections are expected while it starts
    for (int i = 0; i < 600; ++i) {  // bounded: about 60 s
      auto r = probe.get("cairn-test/ready");
      if (r || r.error() == Errc::not_found) {
        set_log_level(saved);
        return;
      }
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = 0;
        set_log_level(saved);
        error_ = "etcd exited before it was ready:\n" + log();
        return;
      }
      std::this_thread::sleep_for(100ms);
    }
    set_log_level(saved);
    error_ = "etcd did not answer:\n" + log();
  }

  const std::string dir_;
  const std::string log_path_;
  std::string endpoint_;
  std::string peer_;
  pid_t pid_ = 0;
  std::string error_;
};

// A test with its own etcd.
class Etcd : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access(etcd_binary().c_str(), X_OK) != 0)
      GTEST_SKIP() << "etcd binary not found at " << etcd_binary()
                   << " (Debian package etcd-server; scripts/install-deps.sh installs it)";
    server_ = std::make_unique<EtcdServer>(dir_.path());
    ASSERT_EQ(server_->error(), "");
  }

  EtcdServer& server() { return *server_; }
  std::string endpoint() const { return server_->endpoint(); }

  cairn::test::TempDir dir_;
  std::unique_ptr<EtcdServer> server_;
};

}  // namespace cairn::replication::test
