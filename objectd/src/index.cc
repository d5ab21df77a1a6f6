#include "index.h"

#include <rocksdb/options.h>

#include "common/log.h"

namespace cairn::objectd::engine {
namespace {

constexpr char kLog[] = "objectd";

Status db_status(const rocksdb::Status& s, const char* what) {
  if (s.ok()) return ok();
  CAIRN_LOG_ERROR(kLog, "index %s failed: %s", what, s.ToString().c_str());
  return Errc::io_error;
}

}  // namespace

std::string prefix_successor(std::string_view prefix) {
  std::string s(prefix);
  while (!s.empty()) {
    auto c = static_cast<unsigned char>(s.back());
    if (c != 0xff) {
      s.back() = static_cast<char>(c + 1);
      return s;
    }
    s.pop_back();
  }
  return s;
}

Result<std::unique_ptr<Index>> Index::open(const std::string& path) {
  rocksdb::Options o;
  o.create_if_missing = true;
  o.keep_log_file_num = 4;
  o.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(o, path, &db);
  if (!s.ok()) {
    CAIRN_LOG_ERROR(kLog, "cannot open index %s: %s", path.c_str(), s.ToString().c_str());
    return Errc::io_error;
  }
  return std::unique_ptr<Index>(new Index(db));
}

Index::~Index() {
  db_->Close();
  delete db_;
}

Result<std::optional<std::string>> Index::get(std::string_view key) {
  std::string v;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), rocksdb::Slice(key.data(), key.size()), &v);
  if (s.IsNotFound()) return std::optional<std::string>();
  CAIRN_TRY(db_status(s, "get"));
  return std::optional<std::string>(std::move(v));
}

Status Index::put(std::string_view key, std::string_view value, bool sync) {
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  return db_status(db_->Put(wo, rocksdb::Slice(key.data(), key.size()),
                            rocksdb::Slice(value.data(), value.size())),
                   "put");
}

Status Index::write(rocksdb::WriteBatch& batch, bool sync) {
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  return db_status(db_->Write(wo, &batch), "write");
}

std::unique_ptr<rocksdb::Iterator> Index::iterator() {
  return std::unique_ptr<rocksdb::Iterator>(db_->NewIterator(rocksdb::ReadOptions()));
}

}  // namespace cairn::objectd::engine
