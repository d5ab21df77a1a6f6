#include "objectd/errors.h"

#include <string>

namespace cairn::objectd {
namespace {

class ObjCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "objectd"; }
  std::string message(int c) const override {
    switch (static_cast<ObjErrc>(c)) {
      case ObjErrc::ok: return "ok";
      case ObjErrc::no_such_bucket: return "the bucket does not exist";
      case ObjErrc::no_such_key: return "the key does not exist";
      case ObjErrc::bucket_already_exists: return "the bucket name is taken by another tenant";
      case ObjErrc::bucket_already_owned_by_you: return "the bucket already exists and is yours";
      case ObjErrc::bucket_not_empty: return "the bucket is not empty";
      case ObjErrc::invalid_bucket_name: return "invalid bucket name";
      case ObjErrc::invalid_object_name: return "invalid object key";
      case ObjErrc::no_such_upload: return "the multipart upload does not exist";
      case ObjErrc::invalid_part: return "a listed part is missing or its ETag does not match";
      case ObjErrc::invalid_part_order: return "parts are not in ascending order";
      case ObjErrc::entity_too_small: return "a part other than the last is under 5 MiB";
      case ObjErrc::entity_too_large: return "the object exceeds the size limit";
      case ObjErrc::quorum_lost: return "not enough drives available for the operation";
      case ObjErrc::data_corrupt: return "more shards damaged than parity can repair";
      case ObjErrc::invalid_range: return "the range is not satisfiable";
      case ObjErrc::bad_digest: return "the content digest does not match";
      case ObjErrc::access_denied: return "access denied";
      case ObjErrc::precondition_failed: return "a precondition failed";
      case ObjErrc::not_modified: return "not modified";
      case ObjErrc::incomplete_body: return "the body is shorter than declared";
      case ObjErrc::invalid_argument: return "invalid argument";
      case ObjErrc::malformed_xml: return "malformed XML";
      case ObjErrc::signature_does_not_match: return "the request signature does not match";
      case ObjErrc::invalid_access_key_id: return "the access key id does not exist";
      case ObjErrc::request_expired: return "the request has expired";
      case ObjErrc::not_implemented: return "not implemented";
      case ObjErrc::slow_down: return "too many requests; slow down";
      case ObjErrc::key_too_long: return "the key is too long";
    }
    std::string unknown = "unknown objectd error ";
    unknown += std::to_string(c);
    return unknown;
  }
};

}  // namespace

const std::error_category& obj_category() noexcept {
  static const ObjCategory category;
  return category;
}

}  // namespace cairn::objectd
