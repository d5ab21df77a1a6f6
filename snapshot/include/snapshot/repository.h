// Repository: a backup repository in a BlobStore (an S3 bucket/prefix), as
// docs/FORMAT-backup.md describes it: `config`, content-addressed chunk objects, one
// manifest per backup, locks of running backups and GC markers.
//
// Every object but `config` is sealed in one envelope (header, optional zstd, optional
// AES-256-GCM bound to the object's key); chunk ids are SHA-256 of the plaintext, or
// HMAC-SHA-256 under a key derived from the repository key when the repository is
// encrypted (so ids reveal nothing about the data). Reading a chunk checks its id.
//
// Thread-safe after open: the codec is stateless and the BlobStore is thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cairn/v1/backup.pb.h"
#include "common/result.h"
#include "snapshot/blob_store.h"

namespace cairn::backup {

using ChunkId = std::array<uint8_t, 32>;
using RepoKey = std::array<uint8_t, 32>;

inline constexpr uint64_t kDefaultChunkSize = 4ull << 20;
inline constexpr uint64_t kMinChunkSize = 64ull << 10;
inline constexpr uint64_t kMaxChunkSize = 64ull << 20;
inline constexpr uint64_t kMaxManifestBytes = 256ull << 20;

std::string chunk_id_hex(const ChunkId& id);
std::optional<ChunkId> parse_chunk_id(std::string_view hex);
// 64 hex chars (a key file holds them, whitespace around is ignored).
Result<RepoKey> parse_repo_key(std::string_view text);
// A fresh random key as 64 hex chars.
std::string generate_repo_key_hex();

// Object keys.
inline constexpr std::string_view kConfigKey = "config";
std::string chunk_key(const ChunkId& id);              // chunks/ab/abcdef...
std::string manifest_key(const std::string& volume, const std::string& backup_id);
std::string lock_key(const std::string& backup_id);
std::string gc_key(const std::string& gc_id);

// "20261129T211500Z-1a2b3c4d" from a time and 32 random bits.
std::string make_backup_id(int64_t unix_s);
// Volume name and backup id as stored; "VOL/ID" or a bare id are accepted by lookups.
bool valid_backup_id(std::string_view id);

class Repository {
 public:
  struct InitOptions {
    uint64_t chunk_size = kDefaultChunkSize;
    int zstd_level = 3;
    std::optional<RepoKey> key;  // set: the repository is encrypted
  };

  // Creates the bucket if needed and writes `config`. already_exists if a repository is
  // there already (its config is left alone).
  static Result<std::unique_ptr<Repository>> init(BlobStore& store, const InitOptions& options);
  // not_found: no repository there. permission_denied: encrypted and the key is missing or
  // wrong. corrupt / unsupported: a config this version cannot read.
  static Result<std::unique_ptr<Repository>> open(BlobStore& store, std::optional<RepoKey> key);

  const cairn::v1::RepoConfig& config() const { return config_; }
  uint64_t chunk_size() const { return config_.chunk_size(); }
  bool encrypted() const { return key_.has_value(); }
  BlobStore& store() { return store_; }

  // ---- chunks ----
  ChunkId chunk_id(std::string_view plaintext) const;
  std::string encode_chunk(const ChunkId& id, std::string_view plaintext) const;
  // The plaintext, checked against `id`: corrupt if the object fails any check.
  Result<std::string> decode_chunk(const ChunkId& id, std::string_view object) const;
  Result<bool> has_chunk(const ChunkId& id);
  // Fetches and decodes; not_found if absent, corrupt if damaged.
  Result<std::string> get_chunk(const ChunkId& id);

  // ---- manifests ----
  Status put_manifest(const cairn::v1::BackupManifest& manifest);
  // `ref` is "VOLUME/ID" or a bare ID (then searched for). not_found if absent.
  Result<cairn::v1::BackupManifest> get_manifest(const std::string& ref);
  // Every manifest (of `volume`, or all when empty), oldest first.
  Result<std::vector<cairn::v1::BackupManifest>> list_manifests(const std::string& volume);
  Status delete_manifest(const std::string& volume, const std::string& backup_id);

  // ---- other records (locks, GC markers): sealed protobuf ----
  Status put_record(const std::string& key, const google::protobuf::MessageLite& msg);
  Status get_record(const std::string& key, google::protobuf::MessageLite* msg);

  // Server time, from the LastModified the store stamps on `key` (just written).
  Result<int64_t> server_time_of(const std::string& key);

 private:
  Repository(BlobStore& store, cairn::v1::RepoConfig config, std::optional<RepoKey> key);
  std::string seal(char kind, const std::string& object_key, std::string_view plaintext,
                   bool compress) const;
  Result<std::string> open_sealed(char kind, const std::string& object_key,
                                  std::string_view object, uint64_t max_plain) const;

  BlobStore& store_;
  cairn::v1::RepoConfig config_;
  std::optional<RepoKey> key_;
  RepoKey enc_key_{};
  RepoKey id_key_{};
};

}  // namespace cairn::backup
