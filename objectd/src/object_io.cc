// Streaming object I/O: ShardSet (writing a version's shard files), VersionReader (reading and
// reconstructing stripes), WriterImpl and ReaderImpl.
#include <errno.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <system_error>
#include <thread>

#include "common/assert.h"
#include "common/fault.h"
#include "common/log.h"
#include "store_impl.h"

namespace cairn::objectd::engine {
namespace {

constexpr char kLog[] = "objectd";

std::string to_hex(const unsigned char* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(digits[p[i] >> 4]);
    out.push_back(digits[p[i] & 15]);
  }
  return out;
}

std::string normalize_etag(std::string s) {
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') s = s.substr(1, s.size() - 2);
  for (char& c : s) c = static_cast<char>(tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// ShardSet

ShardSet::ShardSet(StoreImpl& store, const StripeLayout& layout, std::string id,
                   std::vector<bool> write_mask, bool heal)
    : store_(store), layout_(layout), id_(std::move(id)), heal_(heal) {
  CAIRN_ASSERT(write_mask.size() == layout_.shards());
  store_.set_active(id_, true);
  for (uint32_t s = 0; s < layout_.shards(); ++s) {
    if (!write_mask[s]) continue;
    auto f = std::make_unique<File>();
    f->shard = static_cast<int>(s);
    f->drive = layout_.drive_of(static_cast<int>(s));
    files_.push_back(std::move(f));
  }
}

ShardSet::~ShardSet() {
  for (auto& f : files_) {
    if (f->committed || f->failed) continue;
    f->writer.close();
    if (!f->tmp.empty()) ::unlink(f->tmp.c_str());
  }
  store_.set_active(id_, false);
}

void ShardSet::fail(File& f, const Status& why) {
  if (f.failed) return;
  f.failed = true;
  f.writer.close();
  if (!f.tmp.empty()) ::unlink(f.tmp.c_str());
  CAIRN_LOG_WARN(kLog, "shard %d of %s on drive %d failed: %s", f.shard, id_.c_str(), f.drive,
                 why.error().message().c_str());
  store_.drive_error(f.drive);
}

int ShardSet::live() const {
  int n = 0;
  for (const auto& f : files_) n += f->failed ? 0 : 1;
  return n;
}

Status ShardSet::open(int quorum) {
  for (auto& f : files_) {
    Drive& d = store_.drive(f->drive);
    if (!d.online()) {
      f->failed = true;
      continue;
    }
    f->tmp = d.tmp_path(id_ + "." + std::to_string(f->shard) + (heal_ ? ".heal" : ""));
    Status st = f->writer.create(f->tmp);
    if (st && CAIRN_FAULT_POINT("objectd.shard.create")) st = errno_code(EIO);
    if (!st) fail(*f, st);
  }
  if (live() < quorum) {
    CAIRN_LOG_WARN(kLog, "write of %s: %d of %zu shard files could be created, need %d",
                   id_.c_str(), live(), files_.size(), quorum);
    return ObjErrc::quorum_lost;
  }
  return ok();
}

Status ShardSet::append_stripe(const std::vector<uint8_t*>& blocks, uint32_t len, int quorum) {
  for (auto& f : files_) {
    if (f->failed) continue;
    Status st = f->writer.append_block(blocks[static_cast<size_t>(f->shard)], len);
    if (st && CAIRN_FAULT_POINT("objectd.shard.append")) st = errno_code(EIO);
    if (!st) fail(*f, st);
  }
  if (live() < quorum) return ObjErrc::quorum_lost;
  return ok();
}

Result<int> ShardSet::commit(const ObjectRecord& rec, int quorum) {
  // Each file: trailer, fsync, rename into objects/, fsync the directory. The drives work in
  // parallel (their fsyncs overlap); the first live file is done on this thread.
  auto commit_one = [&](File& f) {
    ObjectRecord r = rec;
    r.set_shard_index(static_cast<uint32_t>(f.shard));
    Drive& d = store_.drive(f.drive);
    Status st = f.writer.finish(r);
    if (st && CAIRN_FAULT_POINT("objectd.shard.finish")) st = errno_code(EIO);
    if (!st) {
      fail(f, st);
      return;
    }
    std::string final_path = d.object_path(id_);
    std::string dir = d.object_dir(id_);
    if (::rename(f.tmp.c_str(), final_path.c_str()) != 0) {
      int err = errno;
      // objects/<xx> may be gone (damaged drive): recreate it once.
      if (err == ENOENT && ::access(f.tmp.c_str(), F_OK) == 0 && make_dir(dir) &&
          fsync_parent_dir(dir) && ::rename(f.tmp.c_str(), final_path.c_str()) == 0) {
        err = 0;
      }
      if (err != 0) {
        fail(f, errno_code(err));
        return;
      }
    }
    // Crash tests: some shard files renamed into objects/, others not, no index entry yet.
    if (int fe = CAIRN_FAULT_POINT("objectd.shard.renamed")) {
      ::unlink(final_path.c_str());
      fail(f, errno_code(fe));
      return;
    }
    f.committed = true;
    Status ds = fsync_dir(dir);
    if (!ds) {
      ::unlink(final_path.c_str());
      f.committed = false;
      f.failed = true;
      CAIRN_LOG_WARN(kLog, "fsync of %s failed: %s", dir.c_str(), ds.error().message().c_str());
      store_.drive_error(f.drive);
    }
  };
  std::vector<std::thread> threads;
  File* inline_file = nullptr;
  for (auto& f : files_) {
    if (f->failed) continue;
    if (inline_file == nullptr) {
      inline_file = f.get();
      continue;
    }
    try {
      threads.emplace_back([&commit_one, file = f.get()] { commit_one(*file); });
    } catch (const std::system_error&) {
      commit_one(*f);  // no thread available: do it here
    }
  }
  if (inline_file != nullptr) commit_one(*inline_file);
  for (auto& t : threads) t.join();

  int committed = 0;
  for (const auto& f : files_) committed += f->committed ? 1 : 0;
  if (committed < quorum) {
    CAIRN_LOG_WARN(kLog, "commit of %s reached %d shard files, need %d: rolled back", id_.c_str(),
                   committed, quorum);
    remove_committed();
    return ObjErrc::quorum_lost;
  }
  return committed;
}

void ShardSet::remove_committed() {
  for (auto& f : files_) {
    if (!f->committed) continue;
    ::unlink(store_.drive(f->drive).object_path(id_).c_str());
    f->committed = false;
    f->failed = true;
  }
}

// ---------------------------------------------------------------------------------------
// VersionReader

VersionReader::VersionReader(StoreImpl& store, ObjectRecord rec, std::vector<bool> exclude,
                             bool report)
    : store_(store),
      rec_(std::move(rec)),
      layout_(StripeLayout::of(rec_)),
      exclude_(std::move(exclude)),
      report_(report) {
  const size_t n = layout_.shards();
  exclude_.resize(n, false);
  files_.resize(n);
  state_.assign(n, State::untried);
  logged_.assign(n, false);
}

void VersionReader::damaged() {
  if (report_ && !reported_) store_.queue_heal(rec_.id());
  reported_ = true;
}

void VersionReader::open_data_shards() {
  for (uint32_t s = 0; s < layout_.k; ++s) {
    if (exclude_[s] || state_[s] != State::untried) continue;
    int d = layout_.drive_of(static_cast<int>(s));
    if (d >= store_.drive_count() || !store_.drive(d).online()) {
      state_[s] = State::offline;
      continue;
    }
    Status st = files_[s].open(store_.drive(d).object_path(rec_.id()));
    if (st) {
      state_[s] = State::open;
    } else {
      state_[s] = State::missing;
      damaged();
      if (st.error() != std::errc::no_such_file_or_directory) store_.drive_error(d);
    }
  }
}

bool VersionReader::read_shard(int shard, uint64_t stripe, uint8_t* buf) {
  if (exclude_[shard]) return false;
  if (state_[shard] == State::untried) {
    int d = layout_.drive_of(shard);
    if (d >= store_.drive_count() || !store_.drive(d).online()) {
      state_[shard] = State::offline;
    } else {
      Status st = files_[shard].open(store_.drive(d).object_path(rec_.id()));
      if (st) {
        state_[shard] = State::open;
      } else {
        state_[shard] = State::missing;
        damaged();
        if (st.error() != std::errc::no_such_file_or_directory) store_.drive_error(d);
      }
    }
  }
  if (state_[shard] != State::open) return false;
  Status st = files_[shard].read_block(layout_, stripe, buf);
  if (st && CAIRN_FAULT_POINT("objectd.read.block")) st = Errc::corrupt;
  if (!st) {
    if (!logged_[shard]) {
      CAIRN_LOG_WARN(kLog, "shard %d of %s stripe %llu unreadable: %s", shard, rec_.id().c_str(),
                     static_cast<unsigned long long>(stripe), st.error().message().c_str());
    }
    logged_[shard] = true;
    damaged();
    if (st.error().category() == std::system_category())
      store_.drive_error(layout_.drive_of(shard));
    return false;
  }
  return true;
}

Status VersionReader::load(uint64_t stripe, const std::vector<bool>& want,
                           const std::vector<uint8_t*>& bufs, std::vector<bool>& valid) {
  const int n = static_cast<int>(layout_.shards());
  const int k = static_cast<int>(layout_.k);
  std::vector<bool> tried(n, false);
  bool complete = true;
  for (int s = 0; s < n; ++s) {
    if (!want[s] || valid[s]) continue;
    tried[s] = true;
    valid[s] = read_shard(s, stripe, bufs[s]);
    complete = complete && valid[s];
  }
  if (complete) return ok();

  int good = static_cast<int>(std::count(valid.begin(), valid.end(), true));
  for (int s = 0; s < n && good < k; ++s) {
    if (valid[s] || tried[s]) continue;
    tried[s] = true;
    if (read_shard(s, stripe, bufs[s])) {
      valid[s] = true;
      ++good;
    }
  }
  if (good < k) {
    bool offline = false;
    for (int s = 0; s < n; ++s) offline = offline || state_[s] == State::offline;
    CAIRN_LOG_ERROR(kLog, "object %s stripe %llu: %d of %d shards readable, need %d%s",
                    rec_.id().c_str(), static_cast<unsigned long long>(stripe), good, n, k,
                    offline ? " (drives offline)" : "");
    return offline ? ObjErrc::quorum_lost : ObjErrc::data_corrupt;
  }
  CAIRN_TRY(store_.coder(layout_.k, layout_.m).reconstruct(bufs, valid, layout_.block_len(stripe)));
  valid.assign(n, true);
  return ok();
}

// ---------------------------------------------------------------------------------------
// WriterImpl

WriterImpl::WriterImpl(StoreImpl& store, ObjectRecord rec) : store_(store), rec_(std::move(rec)) {
  store_.init_version(rec_);
  layout_ = StripeLayout::of(rec_);
}

WriterImpl::~WriterImpl() {
  if (md5_ != nullptr) EVP_MD_CTX_free(md5_);
}

Status WriterImpl::start() {
  md5_ = EVP_MD_CTX_new();
  CAIRN_ASSERT(md5_ != nullptr && EVP_DigestInit_ex(md5_, EVP_md5(), nullptr) == 1);
  shards_ = std::make_unique<ShardSet>(store_, layout_, rec_.id(),
                                       std::vector<bool>(layout_.shards(), true), false);
  return shards_->open(store_.write_quorum());
}

Status WriterImpl::write(const void* data, size_t len) {
  if (done_) return ObjErrc::invalid_argument;
  if (!failed_) return failed_;
  if (written_ + len > kObjectSizeMaxBytes) {
    failed_ = ObjErrc::entity_too_large;
    return failed_;
  }
  CAIRN_ASSERT(EVP_DigestUpdate(md5_, data, len) == 1);
  const size_t stripe_bytes = layout_.stripe_bytes();
  const auto* p = static_cast<const uint8_t*>(data);
  while (len > 0) {
    size_t n = std::min(len, stripe_bytes - fill_);
    reserve_data(fill_ + n);
    memcpy(data_.get() + fill_, p, n);
    fill_ += n;
    p += n;
    len -= n;
    written_ += n;
    if (fill_ == stripe_bytes) {
      Status st = flush_stripe();
      if (!st) {
        failed_ = st;
        return st;
      }
    }
  }
  return ok();
}

void WriterImpl::reserve_data(size_t bytes) {
  if (bytes <= data_cap_) return;
  // Doubling up to one stripe: a big object allocates its stripe once, a small one little.
  const size_t cap = std::max(bytes, std::min<size_t>(2 * data_cap_, layout_.stripe_bytes()));
  std::unique_ptr<uint8_t[]> grown(new uint8_t[cap]);
  if (fill_ > 0) memcpy(grown.get(), data_.get(), fill_);
  data_ = std::move(grown);
  data_cap_ = cap;
}

Status WriterImpl::flush_stripe() {
  if (fill_ == 0) return ok();
  const uint32_t k = layout_.k;
  const uint32_t len = fill_ == layout_.stripe_bytes()
                           ? layout_.block_bytes
                           : static_cast<uint32_t>((fill_ + k - 1) / k);
  // A short (last) stripe packs its k data blocks of `len` bytes at the front; pad with zeros.
  const size_t data_bytes = static_cast<size_t>(k) * len;
  reserve_data(data_bytes);
  memset(data_.get() + fill_, 0, data_bytes - fill_);
  const size_t parity_bytes = static_cast<size_t>(layout_.m) * len;
  if (parity_bytes > parity_cap_) {
    parity_.reset(new uint8_t[parity_bytes]);
    parity_cap_ = parity_bytes;
  }
  std::vector<uint8_t*> blocks(layout_.shards());
  for (uint32_t j = 0; j < k; ++j) blocks[j] = data_.get() + static_cast<size_t>(j) * len;
  for (uint32_t p = 0; p < layout_.m; ++p)
    blocks[k + p] = parity_.get() + static_cast<size_t>(p) * len;
  store_.coder(k, layout_.m).encode(blocks, len);
  fill_ = 0;
  return shards_->append_stripe(blocks, len, store_.write_quorum());
}

Result<ObjectMeta> WriterImpl::commit(ObjectMeta meta) {
  if (done_) return ObjErrc::invalid_argument;
  done_ = true;
  if (!failed_) return failed_.error();
  if (meta.size_bytes != written_) {
    CAIRN_LOG_WARN(kLog, "commit of %s/%s: %llu bytes declared, %llu written",
                   rec_.bucket().c_str(), rec_.key().c_str(),
                   static_cast<unsigned long long>(meta.size_bytes),
                   static_cast<unsigned long long>(written_));
    return ObjErrc::incomplete_body;
  }
  CAIRN_TRY(flush_stripe());
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  CAIRN_ASSERT(EVP_DigestFinal_ex(md5_, digest, &digest_len) == 1);
  std::string etag = to_hex(digest, digest_len);
  if (!meta.etag.empty() && normalize_etag(meta.etag) != etag) return ObjErrc::bad_digest;

  rec_.set_size_bytes(written_);
  rec_.set_etag(etag);
  rec_.set_mtime_unix_ms(now_unix_ms());
  rec_.set_content_type(meta.content_type);
  for (const auto& [k, v] : meta.user_metadata) (*rec_.mutable_user_metadata())[k] = v;
  for (const auto& [k, v] : meta.checksums) (*rec_.mutable_checksums())[k] = v;
  for (const auto& [k, v] : meta.headers) (*rec_.mutable_headers())[k] = v;
  layout_.data_bytes = written_;

  if (int f = CAIRN_FAULT_POINT("objectd.put.before_commit")) return errno_code(f);
  CAIRN_TRY(shards_->commit(rec_, store_.write_quorum()));
  if (int f = CAIRN_FAULT_POINT("objectd.put.before_index")) {
    shards_->remove_committed();
    return errno_code(f);
  }
  Status st = store_.commit_version(rec_);
  if (!st) {
    shards_->remove_committed();
    return st.error();
  }
  return to_meta(rec_);
}

// ---------------------------------------------------------------------------------------
// ReaderImpl

ReaderImpl::ReaderImpl(StoreImpl& store, const ObjectRecord& rec, uint64_t offset,
                       uint64_t length)
    : store_(store), meta_(to_meta(rec)), pos_(offset), end_(offset + length) {
  if (rec.kind() == ObjectRecord::MULTIPART) {
    segments_.assign(rec.parts().begin(), rec.parts().end());
  } else {
    segments_.push_back(rec);
  }
  uint64_t start = 0;
  for (const auto& s : segments_) {
    segment_start_.push_back(start);
    start += s.size_bytes();
  }
  CAIRN_ASSERT(end_ <= start);
  if (pos_ < end_) {
    size_t i = 0;
    while (pos_ >= segment_start_[i] + segments_[i].size_bytes()) ++i;
    (void)enter_segment(i);
  }
}

Status ReaderImpl::enter_segment(size_t index) {
  segment_ = index;
  version_ = std::make_unique<VersionReader>(store_, segments_[index], std::vector<bool>(), true);
  version_->open_data_shards();
  const StripeLayout& l = version_->layout();
  // One stripe's blocks; a version of one (short) stripe needs only its block length.
  const size_t stride = l.stripes() <= 1 ? std::max<size_t>(1, l.block_len(0)) : l.block_bytes;
  const size_t need = static_cast<size_t>(l.shards()) * stride;
  if (buf_cap_ < need) {
    buf_.reset(new uint8_t[need]);
    buf_cap_ = need;
  }
  blocks_.resize(l.shards());
  for (uint32_t s = 0; s < l.shards(); ++s)
    blocks_[s] = buf_.get() + static_cast<size_t>(s) * stride;
  valid_.assign(l.shards(), false);
  stripe_ = UINT64_MAX;
  return ok();
}

Result<size_t> ReaderImpl::read(void* buf, size_t len) {
  auto* out = static_cast<uint8_t*>(buf);
  size_t done = 0;
  while (done < len && pos_ < end_) {
    size_t i = segment_;
    while (pos_ >= segment_start_[i] + segments_[i].size_bytes()) ++i;
    if (i != segment_) {
      CAIRN_TRY(enter_segment(i));
    }
    const StripeLayout& l = version_->layout();
    uint64_t local = pos_ - segment_start_[segment_];
    uint64_t stripe = local / l.stripe_bytes();
    if (stripe != stripe_) {
      stripe_ = stripe;
      valid_.assign(l.shards(), false);
    }
    uint32_t block_len = l.block_len(stripe);
    uint64_t within = local - stripe * l.stripe_bytes();
    uint32_t j = static_cast<uint32_t>(within / block_len);
    uint32_t off = static_cast<uint32_t>(within % block_len);
    if (!valid_[j]) {
      std::vector<bool> want(l.shards(), false);
      want[j] = true;
      CAIRN_TRY(version_->load(stripe, want, blocks_, valid_));
    }
    // Capped by the segment too: a part's last block may end in zero padding.
    const uint64_t segment_end = segment_start_[segment_] + segments_[segment_].size_bytes();
    uint64_t n = std::min<uint64_t>({block_len - off, len - done, end_ - pos_, segment_end - pos_});
    memcpy(out + done, blocks_[j] + off, n);
    done += n;
    pos_ += n;
  }
  return done;
}

}  // namespace cairn::objectd::engine
