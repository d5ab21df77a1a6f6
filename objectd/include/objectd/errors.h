// objectd's error codes: what the object engine and the S3 layer report. The S3 layer maps
// each to one S3 error code and HTTP status (s3_errors.cc); a std::error_code of another
// category (errno, cairn::Errc) becomes InternalError unless mapped explicitly there.
#pragma once

#include <system_error>

namespace cairn::objectd {

enum class ObjErrc {
  ok = 0,
  no_such_bucket = 1,
  no_such_key = 2,
  bucket_already_exists = 3,        // owned by another tenant
  bucket_already_owned_by_you = 4,
  bucket_not_empty = 5,
  invalid_bucket_name = 6,
  invalid_object_name = 7,          // empty, too long (> 1024 bytes), or not UTF-8/NUL
  no_such_upload = 8,
  invalid_part = 9,                 // part missing or ETag mismatch at complete
  invalid_part_order = 10,
  entity_too_small = 11,            // a non-last multipart part under 5 MiB
  entity_too_large = 12,            // over the object size limit
  quorum_lost = 13,                 // fewer than write/read quorum drives answered
  data_corrupt = 14,                // more shards bad than parity can repair
  invalid_range = 15,
  bad_digest = 16,                  // Content-MD5 or x-amz-checksum-* mismatch
  access_denied = 17,
  precondition_failed = 18,
  not_modified = 19,
  incomplete_body = 20,
  invalid_argument = 21,
  malformed_xml = 22,
  signature_does_not_match = 23,
  invalid_access_key_id = 24,
  request_expired = 25,             // presigned URL past expiry, or clock skew too large
  not_implemented = 26,
  slow_down = 27,                   // a bound was hit (connections, in-flight bytes)
  key_too_long = 28,
};

const std::error_category& obj_category() noexcept;
inline std::error_code make_error_code(ObjErrc e) noexcept {
  return {static_cast<int>(e), obj_category()};
}

}  // namespace cairn::objectd

template <>
struct std::is_error_code_enum<cairn::objectd::ObjErrc> : std::true_type {};
