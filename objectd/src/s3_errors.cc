#include "s3_errors.h"

#include <cerrno>

#include "common/result.h"

namespace cairn::objectd {
namespace {

S3Error make(http::status status, const char* code, const char* message) {
  return S3Error{status, code, message};
}

S3Error from_obj(ObjErrc e) {
  using s = http::status;
  switch (e) {
    case ObjErrc::no_such_bucket:
      return make(s::not_found, "NoSuchBucket", "The specified bucket does not exist");
    case ObjErrc::no_such_key:
      return make(s::not_found, "NoSuchKey", "The specified key does not exist.");
    case ObjErrc::bucket_already_exists:
      return make(s::conflict, "BucketAlreadyExists",
                  "The requested bucket name is not available. The bucket namespace is shared "
                  "by all users of the system. Please select a different name and try again.");
    case ObjErrc::bucket_already_owned_by_you:
      return make(s::conflict, "BucketAlreadyOwnedByYou",
                  "Your previous request to create the named bucket succeeded and you already "
                  "own it.");
    case ObjErrc::bucket_not_empty:
      return make(s::conflict, "BucketNotEmpty", "The bucket you tried to delete is not empty");
    case ObjErrc::invalid_bucket_name:
      return make(s::bad_request, "InvalidBucketName", "The specified bucket is not valid.");
    case ObjErrc::invalid_object_name:
      return make(s::bad_request, "InvalidArgument", "Object name is not valid.");
    case ObjErrc::no_such_upload:
      return make(s::not_found, "NoSuchUpload",
                  "The specified multipart upload does not exist. The upload ID may be invalid, "
                  "or the upload may have been aborted or completed.");
    case ObjErrc::invalid_part:
      return make(s::bad_request, "InvalidPart",
                  "One or more of the specified parts could not be found. The part may not have "
                  "been uploaded, or the specified entity tag may not match the part's entity "
                  "tag.");
    case ObjErrc::invalid_part_order:
      return make(s::bad_request, "InvalidPartOrder",
                  "The list of parts was not in ascending order. The parts list must be "
                  "specified in order by part number.");
    case ObjErrc::entity_too_small:
      return make(s::bad_request, "EntityTooSmall",
                  "Your proposed upload is smaller than the minimum allowed object size.");
    case ObjErrc::entity_too_large:
      return make(s::bad_request, "EntityTooLarge",
                  "Your proposed upload exceeds the maximum allowed object size.");
    case ObjErrc::quorum_lost:
      return make(s::service_unavailable, "ServiceUnavailable",
                  "Not enough drives are available to serve the request. Please try again.");
    case ObjErrc::data_corrupt:
      return make(s::internal_server_error, "InternalError",
                  "The object's data could not be read: too many shards are damaged.");
    case ObjErrc::invalid_range:
      return make(s::range_not_satisfiable, "InvalidRange", "The requested range is not satisfiable");
    case ObjErrc::bad_digest:
      return make(s::bad_request, "BadDigest",
                  "The Content-MD5 or checksum you specified did not match what we received.");
    case ObjErrc::access_denied:
      return make(s::forbidden, "AccessDenied", "Access Denied");
    case ObjErrc::precondition_failed:
      return make(s::precondition_failed, "PreconditionFailed",
                  "At least one of the pre-conditions you specified did not hold");
    case ObjErrc::not_modified:
      return make(s::not_modified, "NotModified", "Not Modified");
    case ObjErrc::incomplete_body:
      return make(s::bad_request, "IncompleteBody",
                  "You did not provide the number of bytes specified by the Content-Length "
                  "HTTP header.");
    case ObjErrc::invalid_argument:
      return make(s::bad_request, "InvalidArgument", "Invalid Argument");
    case ObjErrc::malformed_xml:
      return make(s::bad_request, "MalformedXML",
                  "The XML you provided was not well-formed or did not validate against our "
                  "published schema.");
    case ObjErrc::signature_does_not_match:
      return make(s::forbidden, "SignatureDoesNotMatch",
                  "The request signature we calculated does not match the signature you "
                  "provided. Check your key and signing method.");
    case ObjErrc::invalid_access_key_id:
      return make(s::forbidden, "InvalidAccessKeyId",
                  "The AWS Access Key Id you provided does not exist in our records.");
    case ObjErrc::request_expired:
      return make(s::forbidden, "RequestTimeTooSkewed",
                  "The difference between the request time and the server's time is too large.");
    case ObjErrc::not_implemented:
      return make(s::not_implemented, "NotImplemented",
                  "A header or query you provided implies functionality that is not implemented.");
    case ObjErrc::slow_down:
      return make(s::service_unavailable, "SlowDown", "Please reduce your request rate.");
    case ObjErrc::key_too_long:
      return make(s::bad_request, "KeyTooLongError", "Your key is too long");
    case ObjErrc::ok:
      break;
  }
  return S3Error{};
}

S3Error from_cairn(Errc e) {
  using s = http::status;
  switch (e) {
    case Errc::invalid_argument:
      return make(s::bad_request, "InvalidArgument", "Invalid Argument");
    case Errc::not_found:
      return make(s::not_found, "NoSuchKey", "The specified key does not exist.");
    case Errc::already_exists:
      return make(s::conflict, "BucketAlreadyExists", "The requested bucket name is not available.");
    case Errc::no_space:
      return make(s::insufficient_storage, "InsufficientStorage",
                  "The drives are out of space.");
    case Errc::permission_denied:
      return make(s::forbidden, "AccessDenied", "Access Denied");
    case Errc::out_of_range:
      return make(s::range_not_satisfiable, "InvalidRange", "The requested range is not satisfiable");
    case Errc::unavailable:
    case Errc::busy:
      return make(s::service_unavailable, "ServiceUnavailable", "Please try again.");
    case Errc::too_large:
      return make(s::bad_request, "EntityTooLarge",
                  "Your proposed upload exceeds the maximum allowed object size.");
    case Errc::unsupported:
      return make(s::not_implemented, "NotImplemented",
                  "A header or query you provided implies functionality that is not implemented.");
    default:
      break;
  }
  return S3Error{};
}

}  // namespace

S3Error s3_error(const std::error_code& ec, std::string message) {
  S3Error out;
  if (ec.category() == obj_category()) {
    out = from_obj(static_cast<ObjErrc>(ec.value()));
  } else if (ec.category() == cairn_category()) {
    out = from_cairn(static_cast<Errc>(ec.value()));
  } else if (ec.category() == std::system_category() || ec.category() == std::generic_category()) {
    switch (ec.value()) {
      case ENOSPC:
        out = from_cairn(Errc::no_space);
        break;
      case EACCES:
      case EPERM:
        out = from_obj(ObjErrc::access_denied);
        break;
      case EINVAL:
        out = from_obj(ObjErrc::invalid_argument);
        break;
      default:
        break;
    }
  }
  if (!message.empty()) out.message = std::move(message);
  return out;
}

S3Error s3_error(http::status status, std::string code, std::string message) {
  return S3Error{status, std::move(code), std::move(message)};
}

}  // namespace cairn::objectd
