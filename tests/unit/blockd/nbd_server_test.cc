// NbdServer against an in-memory VolumeStore, driven by real NBD clients (nbdinfo, qemu-io,
// nbdsh through python3-libnbd). Tests the protocol layer independently of the engine.
#include "blockd/nbd_server.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace cairn::blockd {
namespace {

class MemVolume final : public Volume {
 public:
  MemVolume(std::string name, uint64_t size) : name_(std::move(name)), data_(size, 0) {}
  // A read-only copy: the snapshot `snap` of this volume, after which this volume tracks
  // the 4 KiB blocks written since (its qemu:dirty-bitmap:<snap> context).
  std::shared_ptr<MemVolume> snapshot(const std::string& snap) {
    std::lock_guard lk(mu_);
    auto s = std::make_shared<MemVolume>(name_ + "@" + snap, data_.size());
    s->data_ = data_;
    s->written_ = written_;
    s->read_only_ = true;
    since_ = snap;
    dirty_.clear();
    return s;
  }
  bool read_only() const override { return read_only_; }
  std::vector<std::string> dirty_bitmap_sources() override {
    std::lock_guard lk(mu_);
    if (since_.empty()) return {};
    return {since_};
  }
  Result<std::vector<AllocationRun>> changed_since(const std::string& snap, uint64_t off,
                                                   uint64_t len, size_t max_runs) override {
    std::lock_guard lk(mu_);
    if (snap != since_) return Errc::not_found;
    return runs_of(dirty_, off, len, max_runs);
  }
  const std::string& name() const override { return name_; }
  uint64_t size_bytes() const override { return data_.size(); }
  bool alive() const override { return true; }
  Task<Status> read(uint64_t off, uint64_t len, void* buf) override {
    std::lock_guard lk(mu_);
    memcpy(buf, data_.data() + off, len);
    co_return ok();
  }
  Task<Status> write(uint64_t off, uint64_t len, const void* buf, bool) override {
    std::lock_guard lk(mu_);
    if (read_only_) co_return Errc::permission_denied;
    memcpy(data_.data() + off, buf, len);
    for (uint64_t b = off / 4096; b <= (off + len - 1) / 4096; ++b) written_[b] = dirty_[b] = true;
    co_return ok();
  }
  Task<Status> trim(uint64_t off, uint64_t len, bool) override {
    std::lock_guard lk(mu_);
    memset(data_.data() + off, 0, len);
    for (uint64_t b = (off + 4095) / 4096; (b + 1) * 4096 <= off + len; ++b) written_.erase(b);
    co_return ok();
  }
  Task<Status> write_zeroes(uint64_t off, uint64_t len, bool, bool fua) override {
    co_return co_await trim(off, len, fua);
  }
  Task<Status> flush() override { co_return ok(); }
  Result<std::vector<AllocationRun>> allocation(uint64_t off, uint64_t len, size_t max_runs) override {
    std::lock_guard lk(mu_);
    return runs_of(written_, off, len, max_runs);
  }

 private:
  static std::vector<AllocationRun> runs_of(const std::map<uint64_t, bool>& set, uint64_t off,
                                            uint64_t len, size_t max_runs) {
    std::vector<AllocationRun> runs;
    for (uint64_t pos = off; pos < off + len && runs.size() < max_runs;) {
      uint64_t b = pos / 4096;
      uint64_t end = std::min(off + len, (b + 1) * 4096);
      bool alloc = set.count(b) != 0;
      if (!runs.empty() && runs.back().allocated == alloc) runs.back().length_bytes += end - pos;
      else runs.push_back({end - pos, alloc});
      pos = end;
    }
    return runs;
  }

  std::string name_;
  std::mutex mu_;
  std::vector<uint8_t> data_;
  std::map<uint64_t, bool> written_;
  std::map<uint64_t, bool> dirty_;
  std::string since_;
  bool read_only_ = false;
};

class MemStore final : public VolumeStore {
 public:
  Result<VolumeInfo> create_volume(const std::string& name, uint64_t size) override {
    vols_[name] = std::make_shared<MemVolume>(name, size);
    return get_volume(name);
  }
  std::vector<VolumeInfo> list_volumes() override {
    std::vector<VolumeInfo> out;
    for (auto& [n, v] : vols_) out.push_back(get_volume(n).value());
    return out;
  }
  Result<VolumeInfo> get_volume(const std::string& name) override {
    auto it = vols_.find(name);
    if (it == vols_.end()) return Errc::not_found;
    VolumeInfo i;
    i.name = name;
    i.size_bytes = it->second->size_bytes();
    return i;
  }
  Result<VolumeInfo> resize_volume(const std::string&, uint64_t) override { return Errc::unsupported; }
  Status delete_volume(const std::string&, bool) override { return Errc::unsupported; }
  Result<std::shared_ptr<Volume>> open_volume(const std::string& name) override {
    auto it = vols_.find(name);
    if (it == vols_.end()) return Errc::not_found;
    return std::shared_ptr<Volume>(it->second);
  }
  Task<Status> flush() override { co_return ok(); }
  StoreStats stats() override { return {}; }
  void snapshot(const std::string& vol, const std::string& snap) {
    vols_[vol + "@" + snap] = vols_[vol]->snapshot(snap);
  }

 private:
  std::map<std::string, std::shared_ptr<MemVolume>> vols_;
};

std::string run(const std::string& cmd) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int rc = pclose(p);
  if (rc != 0) out += "\n[exit " + std::to_string(rc) + "]";
  return out;
}

class NbdServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/cairn-nbd-XXXXXX";
    dir_ = mkdtemp(tmpl);
    store_.create_volume("vol1", 8 << 20).value();
    NbdServer::Options o;
    o.tcp_host = "127.0.0.1";
    o.tcp_port = 0;
    o.unix_path = dir_ + "/nbd.sock";
    o.threads = 2;
    server_ = std::make_unique<NbdServer>(store_, o);
    ASSERT_TRUE(server_->start());
  }
  void TearDown() override {
    server_->stop();
    rmdir(dir_.c_str());
  }
  std::string unix_uri(const std::string& vol) {
    return "'nbd+unix:///" + vol + "?socket=" + dir_ + "/nbd.sock'";
  }
  std::string tcp_uri(const std::string& vol) {
    return "nbd://127.0.0.1:" + std::to_string(server_->tcp_port()) + "/" + vol;
  }

  std::string dir_;
  MemStore store_;
  std::unique_ptr<NbdServer> server_;
};

TEST_F(NbdServerTest, NbdinfoSeesSizeFlagsBlockSizesAndContexts) {
  std::string out = run("nbdinfo --json " + tcp_uri("vol1"));
  EXPECT_NE(out.find("\"export-size\": 8388608"), std::string::npos) << out;
  EXPECT_NE(out.find("\"can_multi_conn\": true"), std::string::npos) << out;
  EXPECT_NE(out.find("\"can_fua\": true"), std::string::npos) << out;
  EXPECT_NE(out.find("\"can_fast_zero\": true"), std::string::npos) << out;
  EXPECT_NE(out.find("\"block_size_maximum\": 33554432"), std::string::npos) << out;
  EXPECT_NE(out.find("base:allocation"), std::string::npos) << out;
  std::string list = run("nbdinfo --list " + unix_uri(""));
  EXPECT_NE(list.find("vol1"), std::string::npos) << list;
}

TEST_F(NbdServerTest, UnknownExportIsRefused) {
  std::string out = run("nbdinfo " + tcp_uri("nope"));
  EXPECT_NE(out.find("[exit"), std::string::npos) << out;
}

TEST_F(NbdServerTest, QemuIoWritesAndReadsBackOverBothTransports) {
  std::string out = run("qemu-io -f raw -c 'write -P 0xa5 4096 1M' -c 'read -P 0xa5 4096 1M' "
                        "-c 'write -P 0x11 1000 3000' -c 'read -P 0x11 1000 3000' " +
                        tcp_uri("vol1"));
  EXPECT_EQ(out.find("[exit"), std::string::npos) << out;
  EXPECT_EQ(out.find("Pattern verification failed"), std::string::npos) << out;
  out = run("qemu-io -f raw -c 'read -P 0xa5 8192 4096' " + unix_uri("vol1"));
  EXPECT_EQ(out.find("Pattern verification failed"), std::string::npos) << out;
  EXPECT_EQ(out.find("[exit"), std::string::npos) << out;
}

TEST_F(NbdServerTest, MapShowsWrittenAndHoleRuns) {
  run("qemu-io -f raw -c 'write -P 1 0 64k' " + tcp_uri("vol1"));
  std::string out = run("nbdinfo --map " + tcp_uri("vol1"));
  EXPECT_NE(out.find("0       65536    0  data"), std::string::npos) << out;
  EXPECT_NE(out.find("hole,zero"), std::string::npos) << out;
}

TEST_F(NbdServerTest, SnapshotExportIsReadOnlyAndDirtyBitmapShowsChangesSinceIt) {
  run("qemu-io -f raw -c 'write -P 0x11 0 64k' " + tcp_uri("vol1"));
  store_.snapshot("vol1", "s1");
  run("qemu-io -f raw -c 'write -P 0x22 1M 4k' -c 'write -P 0x33 0 4k' " + tcp_uri("vol1"));

  std::string map = run("nbdinfo --map=qemu:dirty-bitmap:s1 " + tcp_uri("vol1"));
  EXPECT_NE(map.find("         0        4096    1  dirty"), std::string::npos) << map;
  EXPECT_NE(map.find("   1048576        4096    1  dirty"), std::string::npos) << map;
  EXPECT_NE(map.find("      4096     1044480    0  clean"), std::string::npos) << map;
  std::string ctx = run("nbdinfo --list --content " + tcp_uri("vol1") + " 2>&1; nbdinfo --json " + tcp_uri("vol1"));
  EXPECT_NE(ctx.find("qemu:dirty-bitmap:s1"), std::string::npos) << ctx;

  std::string info = run("nbdinfo --json " + tcp_uri("vol1@s1"));
  EXPECT_NE(info.find("\"is_read_only\": true"), std::string::npos) << info;
  std::string rd = run("qemu-io -f raw -r -c 'read -P 0x11 0 64k' -c 'read -P 0 1M 4k' " +
                       tcp_uri("vol1@s1"));
  EXPECT_EQ(rd.find("Pattern verification failed"), std::string::npos) << rd;
  EXPECT_EQ(rd.find("[exit"), std::string::npos) << rd;
  // Bypass libnbd's own read-only check so the server has to refuse the write itself.
  std::string wr = run("/usr/bin/python3 -c \"import nbd; h = nbd.NBD(); h.set_strict_mode(0); "
                       "h.connect_uri('" + tcp_uri("vol1@s1") + "'); h.pwrite(b'x' * 512, 0)\"");
  EXPECT_NE(wr.find("Operation not permitted"), std::string::npos) << wr;
}

}  // namespace
}  // namespace cairn::blockd
