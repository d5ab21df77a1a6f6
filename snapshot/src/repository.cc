#include "snapshot/repository.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <zstd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <ctime>

#include "common/assert.h"
#include "common/log.h"
#include "common/sigv4.h"

namespace cairn::backup {
namespace {

constexpr char kMagic[4] = {'C', 'R', 'N', '1'};
constexpr size_t kHeaderBytes = 8;
constexpr size_t kNonceBytes = 12;
constexpr size_t kTagBytes = 16;
constexpr uint8_t kFlagZstd = 1;
constexpr uint8_t kFlagGcm = 2;
constexpr std::string_view kKeyCheckText = "cairn backup repository key check v1";

constexpr char kKindConfig = 'R';
constexpr char kKindChunk = 'C';
constexpr char kKindManifest = 'M';
constexpr char kKindRecord = 'K';

void random_bytes(void* out, size_t n) {
  CAIRN_ASSERT(RAND_bytes(static_cast<unsigned char*>(out), static_cast<int>(n)) == 1);
}

std::string hex(const uint8_t* p, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = kDigits[p[i] >> 4];
    out[2 * i + 1] = kDigits[p[i] & 15];
  }
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool parse_hex32(std::string_view text, std::array<uint8_t, 32>* out) {
  if (text.size() != 64) return false;
  for (size_t i = 0; i < 32; i++) {
    int hi = hex_value(text[2 * i]), lo = hex_value(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    (*out)[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return true;
}

// AES-256-GCM; `aad` binds the ciphertext to its header and object key.
std::string gcm_seal(const RepoKey& key, std::string_view aad, std::string_view plain) {
  std::string out(kNonceBytes + plain.size() + kTagBytes, '\0');
  auto* nonce = reinterpret_cast<unsigned char*>(out.data());
  random_bytes(nonce, kNonceBytes);
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  CAIRN_ASSERT(ctx != nullptr);
  int len = 0;
  bool good = EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, key.data(), nonce) == 1 &&
              EVP_EncryptUpdate(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                                static_cast<int>(aad.size())) == 1 &&
              EVP_EncryptUpdate(ctx, nonce + kNonceBytes, &len,
                                reinterpret_cast<const unsigned char*>(plain.data()),
                                static_cast<int>(plain.size())) == 1 &&
              EVP_EncryptFinal_ex(ctx, nonce + kNonceBytes + len, &len) == 1 &&
              EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, kTagBytes,
                                  nonce + kNonceBytes + plain.size()) == 1;
  EVP_CIPHER_CTX_free(ctx);
  CAIRN_ASSERT(good);
  return out;
}

std::optional<std::string> gcm_open(const RepoKey& key, std::string_view aad, std::string_view sealed) {
  if (sealed.size() < kNonceBytes + kTagBytes) return std::nullopt;
  size_t n = sealed.size() - kNonceBytes - kTagBytes;
  const auto* nonce = reinterpret_cast<const unsigned char*>(sealed.data());
  std::string plain(n, '\0');
  std::array<unsigned char, kTagBytes> tag;
  std::memcpy(tag.data(), nonce + kNonceBytes + n, kTagBytes);
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  CAIRN_ASSERT(ctx != nullptr);
  int len = 0;
  bool good = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, key.data(), nonce) == 1 &&
              EVP_DecryptUpdate(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                                static_cast<int>(aad.size())) == 1 &&
              EVP_DecryptUpdate(ctx, reinterpret_cast<unsigned char*>(plain.data()), &len,
                                nonce + kNonceBytes, static_cast<int>(n)) == 1 &&
              EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, kTagBytes, tag.data()) == 1 &&
              EVP_DecryptFinal_ex(ctx, reinterpret_cast<unsigned char*>(plain.data()) + len, &len) == 1;
  EVP_CIPHER_CTX_free(ctx);
  if (!good) return std::nullopt;
  return plain;
}

std::string header(char kind, uint8_t flags) {
  std::string h(kMagic, sizeof kMagic);
  h.push_back(kind);
  h.push_back(static_cast<char>(flags));
  h.append(2, '\0');
  return h;
}

Result<cairn::v1::RepoConfig> parse_config(std::string_view object) {
  if (object.size() < kHeaderBytes || std::memcmp(object.data(), kMagic, 4) != 0 ||
      object[4] != kKindConfig) {
    return Errc::corrupt;
  }
  cairn::v1::RepoConfig config;
  if (!config.ParseFromArray(object.data() + kHeaderBytes, static_cast<int>(object.size() - kHeaderBytes))) {
    return Errc::corrupt;
  }
  if (config.format() != 1) return Errc::unsupported;
  uint64_t cs = config.chunk_size();
  if (cs < kMinChunkSize || cs > kMaxChunkSize || (cs & (cs - 1)) != 0) return Errc::corrupt;
  if (config.encryption() != "none" && config.encryption() != "aes-256-gcm") return Errc::unsupported;
  if (config.compression() != "none" && config.compression() != "zstd") return Errc::unsupported;
  return config;
}

}  // namespace

std::string chunk_id_hex(const ChunkId& id) { return hex(id.data(), id.size()); }

std::optional<ChunkId> parse_chunk_id(std::string_view text) {
  ChunkId id;
  if (!parse_hex32(text, &id)) return std::nullopt;
  return id;
}

Result<RepoKey> parse_repo_key(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) text.remove_prefix(1);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.remove_suffix(1);
  RepoKey key;
  if (!parse_hex32(text, &key)) return Errc::invalid_argument;
  return key;
}

std::string generate_repo_key_hex() {
  RepoKey key;
  random_bytes(key.data(), key.size());
  return hex(key.data(), key.size());
}

std::string chunk_key(const ChunkId& id) {
  std::string h = chunk_id_hex(id);
  return "chunks/" + h.substr(0, 2) + "/" + h;
}

std::string manifest_key(const std::string& volume, const std::string& backup_id) {
  return "backups/" + volume + "/" + backup_id;
}

std::string lock_key(const std::string& backup_id) { return "locks/" + backup_id; }
std::string gc_key(const std::string& gc_id) { return "gc/" + gc_id; }

std::string make_backup_id(int64_t unix_s) {
  std::time_t t = static_cast<std::time_t>(unix_s);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  uint8_t rnd[4];
  random_bytes(rnd, sizeof rnd);
  return std::string(buf) + "-" + hex(rnd, sizeof rnd);
}

bool valid_backup_id(std::string_view id) {
  // YYYYMMDDTHHMMSSZ-xxxxxxxx
  if (id.size() != 25 || id[8] != 'T' || id[15] != 'Z' || id[16] != '-') return false;
  for (size_t i = 0; i < id.size(); i++) {
    if (i == 8 || i == 15 || i == 16) continue;
    if (i < 15 ? !std::isdigit(static_cast<unsigned char>(id[i])) : hex_value(id[i]) < 0) return false;
  }
  return true;
}

Repository::Repository(BlobStore& store, cairn::v1::RepoConfig config, std::optional<RepoKey> key)
    : store_(store), config_(std::move(config)), key_(key) {
  if (key_) {
    enc_key_ = sigv4::hmac_sha256(*key_, "cairn-backup-encryption");
    id_key_ = sigv4::hmac_sha256(*key_, "cairn-backup-chunk-id");
  }
}

Result<std::unique_ptr<Repository>> Repository::init(BlobStore& store, const InitOptions& options) {
  uint64_t cs = options.chunk_size;
  if (cs < kMinChunkSize || cs > kMaxChunkSize || (cs & (cs - 1)) != 0) return Errc::invalid_argument;
  if (options.zstd_level < 1 || options.zstd_level > 19) return Errc::invalid_argument;
  CAIRN_TRY(store.create_bucket());
  CAIRN_TRY(existing, store.head(std::string(kConfigKey)));
  if (existing) return Errc::already_exists;

  cairn::v1::RepoConfig config;
  config.set_format(1);
  uint8_t id[16];
  random_bytes(id, sizeof id);
  config.set_repo_id(hex(id, sizeof id));
  config.set_chunk_size(cs);
  config.set_compression("zstd");
  config.set_zstd_level(options.zstd_level);
  config.set_encryption(options.key ? "aes-256-gcm" : "none");
  config.set_created_unix_s(std::time(nullptr));
  std::unique_ptr<Repository> repo(new Repository(store, config, options.key));
  if (options.key) {
    repo->config_.set_key_check(repo->seal(kKindConfig, std::string(kConfigKey), kKeyCheckText, false));
  }
  std::string object = header(kKindConfig, 0) + repo->config_.SerializeAsString();
  CAIRN_TRY(store.put(std::string(kConfigKey), object));
  return repo;
}

Result<std::unique_ptr<Repository>> Repository::open(BlobStore& store, std::optional<RepoKey> key) {
  auto object = store.get(std::string(kConfigKey));
  if (!object) return object.error();
  CAIRN_TRY(config, parse_config(object.value()));
  bool encrypted = config.encryption() == "aes-256-gcm";
  if (!encrypted) key.reset();  // a key given for a plain repository is not needed
  if (encrypted && !key) {
    CAIRN_LOG_ERROR("backup", "repository %s is encrypted: give its key", store.describe().c_str());
    return Errc::permission_denied;
  }
  std::unique_ptr<Repository> repo(new Repository(store, config, key));
  if (encrypted) {
    auto check = repo->open_sealed(kKindConfig, std::string(kConfigKey), config.key_check(), 1024);
    if (!check || check.value() != kKeyCheckText) {
      CAIRN_LOG_ERROR("backup", "wrong key for repository %s", store.describe().c_str());
      return Errc::permission_denied;
    }
  }
  return repo;
}

std::string Repository::seal(char kind, const std::string& object_key, std::string_view plaintext,
                             bool compress) const {
  // zstd writes into a scratch buffer kept per thread, and the object is assembled in one
  // allocation: fresh 4 MiB buffers per chunk are zeroed and faulted in page by page.
  thread_local std::string scratch;
  std::string_view body = plaintext;
  uint8_t flags = 0;
  if (compress && config_.compression() == "zstd" && !plaintext.empty()) {
    const size_t bound = ZSTD_compressBound(plaintext.size());
    if (scratch.size() < bound) scratch.resize(bound);
    size_t n = ZSTD_compress(scratch.data(), bound, plaintext.data(), plaintext.size(),
                             config_.zstd_level());
    if (!ZSTD_isError(n) && n < plaintext.size()) {
      body = std::string_view(scratch.data(), n);
      flags |= kFlagZstd;
    }
  }
  if (key_) flags |= kFlagGcm;
  std::string head = header(kind, flags);
  if (key_) return head + gcm_seal(enc_key_, head + object_key, body);
  std::string out;
  out.reserve(head.size() + body.size());
  out.append(head).append(body);
  return out;
}

Result<std::string> Repository::open_sealed(char kind, const std::string& object_key,
                                            std::string_view object, uint64_t max_plain) const {
  if (object.size() < kHeaderBytes || std::memcmp(object.data(), kMagic, 4) != 0 || object[4] != kind) {
    return Errc::corrupt;
  }
  auto flags = static_cast<uint8_t>(object[5]);
  if ((flags & ~(kFlagZstd | kFlagGcm)) != 0) return Errc::corrupt;
  // An encrypted repository accepts only sealed objects, and the other way round.
  if (((flags & kFlagGcm) != 0) != key_.has_value()) return Errc::corrupt;
  std::string_view head = object.substr(0, kHeaderBytes);
  std::string_view body = object.substr(kHeaderBytes);
  std::string opened;
  if (key_) {
    auto plain = gcm_open(enc_key_, std::string(head) + object_key, body);
    if (!plain) return Errc::corrupt;
    opened = std::move(*plain);
    body = opened;
  }
  if (!(flags & kFlagZstd)) {
    if (body.size() > max_plain) return Errc::corrupt;
    return std::string(body);
  }
  unsigned long long size = ZSTD_getFrameContentSize(body.data(), body.size());
  if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN || size > max_plain) {
    return Errc::corrupt;
  }
  std::string plain(size, '\0');
  size_t n = ZSTD_decompress(plain.data(), plain.size(), body.data(), body.size());
  if (ZSTD_isError(n) || n != size) return Errc::corrupt;
  return plain;
}

ChunkId Repository::chunk_id(std::string_view plaintext) const {
  if (key_) return sigv4::hmac_sha256(id_key_, plaintext);
  sigv4::Sha256 h;
  h.update(plaintext);
  return h.finish();
}

std::string Repository::encode_chunk(const ChunkId& id, std::string_view plaintext) const {
  return seal(kKindChunk, chunk_key(id), plaintext, true);
}

Result<std::string> Repository::decode_chunk(const ChunkId& id, std::string_view object) const {
  CAIRN_TRY(plain, open_sealed(kKindChunk, chunk_key(id), object, config_.chunk_size()));
  if (chunk_id(plain) != id) return Errc::corrupt;
  return std::move(plain);
}

Result<bool> Repository::has_chunk(const ChunkId& id) {
  CAIRN_TRY(info, store_.head(chunk_key(id)));
  return info.has_value();
}

Result<std::string> Repository::get_chunk(const ChunkId& id) {
  CAIRN_TRY(object, store_.get(chunk_key(id)));
  return decode_chunk(id, object);
}

Status Repository::put_manifest(const cairn::v1::BackupManifest& manifest) {
  std::string key = manifest_key(manifest.volume(), manifest.backup_id());
  return store_.put(key, seal(kKindManifest, key, manifest.SerializeAsString(), true));
}

Result<cairn::v1::BackupManifest> Repository::get_manifest(const std::string& ref) {
  std::string key;
  size_t slash = ref.rfind('/');
  if (slash != std::string::npos) {
    if (!valid_backup_id(ref.substr(slash + 1))) return Errc::invalid_argument;
    key = "backups/" + ref;
  } else {
    if (!valid_backup_id(ref)) return Errc::invalid_argument;
    CAIRN_TRY(store_.list("backups/", [&](const BlobInfo& info) {
      if (info.key.size() > ref.size() + 1 && info.key.compare(info.key.size() - ref.size(), ref.size(), ref) == 0 &&
          info.key[info.key.size() - ref.size() - 1] == '/') {
        key = info.key;
        return false;
      }
      return true;
    }));
    if (key.empty()) return Errc::not_found;
  }
  CAIRN_TRY(object, store_.get(key));
  CAIRN_TRY(plain, open_sealed(kKindManifest, key, object, kMaxManifestBytes));
  cairn::v1::BackupManifest manifest;
  if (!manifest.ParseFromString(plain) || manifest.format() != 1 ||
      manifest_key(manifest.volume(), manifest.backup_id()) != key ||
      manifest.chunk_size() != config_.chunk_size()) {
    return Errc::corrupt;
  }
  uint64_t nchunks = (manifest.volume_size() + manifest.chunk_size() - 1) / manifest.chunk_size();
  uint64_t prev = 0;
  for (int i = 0; i < manifest.chunks_size(); i++) {
    const auto& c = manifest.chunks(i);
    if (c.index() >= nchunks || (i > 0 && c.index() <= prev) || c.id().size() != 32) return Errc::corrupt;
    prev = c.index();
  }
  return manifest;
}

Result<std::vector<cairn::v1::BackupManifest>> Repository::list_manifests(const std::string& volume) {
  std::vector<std::string> keys;
  std::string prefix = volume.empty() ? "backups/" : "backups/" + volume + "/";
  CAIRN_TRY(store_.list(prefix, [&](const BlobInfo& info) {
    keys.push_back(info.key.substr(std::string_view("backups/").size()));
    return true;
  }));
  std::vector<cairn::v1::BackupManifest> out;
  out.reserve(keys.size());
  for (const auto& ref : keys) {
    CAIRN_TRY(m, get_manifest(ref));
    out.push_back(std::move(m));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.backup_id() < b.backup_id();
  });
  return out;
}

Status Repository::delete_manifest(const std::string& volume, const std::string& backup_id) {
  return store_.remove(manifest_key(volume, backup_id));
}

Status Repository::put_record(const std::string& key, const google::protobuf::MessageLite& msg) {
  return store_.put(key, seal(kKindRecord, key, msg.SerializeAsString(), false));
}

Status Repository::get_record(const std::string& key, google::protobuf::MessageLite* msg) {
  CAIRN_TRY(object, store_.get(key));
  CAIRN_TRY(plain, open_sealed(kKindRecord, key, object, 1 << 20));
  if (!msg->ParseFromString(plain)) return Errc::corrupt;
  return ok();
}

Result<int64_t> Repository::server_time_of(const std::string& key) {
  CAIRN_TRY(info, store_.head(key));
  if (!info) return Errc::not_found;
  return info->last_modified_unix_s;
}

}  // namespace cairn::backup
