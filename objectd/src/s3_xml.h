// S3 XML: a writer for response documents and strict, bounded parsers for the few request
// documents S3 defines (CompleteMultipartUpload, Delete, CreateBucketConfiguration).
// Parsers never throw: malformed input is ObjErrc::malformed_xml (or the S3 error the
// document implies); nesting deeper than a few levels is rejected before parsing.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "objectd/object_store.h"

namespace cairn::objectd {

constexpr const char* kS3Namespace = "http://s3.amazonaws.com/doc/2006-03-01/";

class XmlWriter {
 public:
  // Starts the document: declaration and <root xmlns="..."> (no namespace when empty).
  explicit XmlWriter(std::string_view root, std::string_view ns = kS3Namespace);
  void open(std::string_view tag);
  void close(std::string_view tag);
  void element(std::string_view tag, std::string_view text);
  void element(std::string_view tag, uint64_t value);
  void element_bool(std::string_view tag, bool value);
  // Closes the root and returns the document.
  std::string finish();

  static std::string escape(std::string_view text);

 private:
  std::string root_;
  std::string out_;
};

// CompleteMultipartUpload: parts in document order with ETags unquoted and checksums
// ("crc32" -> base64). Errors: malformed_xml, invalid_part_order (not strictly ascending),
// invalid_argument (a part number outside 1..10000).
Result<std::vector<PartInfo>> parse_complete_multipart(std::string_view xml);

struct DeleteObjectsRequest {
  bool quiet = false;
  std::vector<std::string> keys;
};
// Delete: 1..1000 objects, each with a Key; else malformed_xml.
Result<DeleteObjectsRequest> parse_delete_objects(std::string_view xml);

// AccessControlPolicy (PutBucketAcl with an XML body, as s3cmd setacl sends): only what the
// canned ACLs express. Returns whether AllUsers get READ. Errors: malformed_xml;
// not_implemented for any other grant than FULL_CONTROL to `owner` and READ to AllUsers.
Result<bool> parse_access_control_policy(std::string_view xml, const std::string& owner);

// CreateBucketConfiguration (an empty body is fine); `location` gets LocationConstraint.
Status parse_create_bucket_configuration(std::string_view xml, std::string& location);

}  // namespace cairn::objectd
