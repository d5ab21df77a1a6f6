// The one place where errors become S3 error codes and HTTP statuses (docs/S3_API.md).
#pragma once

#include <string>
#include <system_error>

#include "common/asio.h"
#include "objectd/errors.h"

namespace cairn::objectd {

struct S3Error {
  http::status status = http::status::internal_server_error;
  std::string code = "InternalError";
  std::string message = "We encountered an internal error. Please try again.";
};

// ObjErrc values map one to one; cairn::Errc and errno codes to their closest S3 code;
// anything else is InternalError. `message` replaces the default message when not empty.
S3Error s3_error(const std::error_code& ec, std::string message = {});
// An S3 code with no ObjErrc (InvalidRequest, InvalidDigest, MethodNotAllowed, ...).
S3Error s3_error(http::status status, std::string code, std::string message);

}  // namespace cairn::objectd
