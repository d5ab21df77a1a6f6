// Decoding of a 2xx JSON answer of Cairn's HTTP APIs into a protobuf message (shared by the
// control and S3 admin clients).
#pragma once

#include <google/protobuf/util/json_util.h>

#include <string>

#include "client/control_client.h"

namespace cairn::client {

template <class M>
ClientResult<M> parse_json_reply(const HttpReply& reply) {
  M msg;
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = true;  // a newer server may add fields
  auto st = google::protobuf::util::JsonStringToMessage(reply.body, &msg, opts);
  if (!st.ok()) {
    return boost::outcome_v2::failure(ClientError{
        make_error_code(Errc::corrupt), reply.status,
        "malformed answer from server: " + std::string(st.message().data(), st.message().size())});
  }
  return msg;
}

}  // namespace cairn::client
