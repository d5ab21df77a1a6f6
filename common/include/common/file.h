// Small durable-file helpers.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>

#include "common/result.h"

namespace cairn {

// Writes all of `data` to `fd` (retrying short writes and EINTR), then fsyncs it.
Status write_all_and_sync(int fd, std::string_view data);

// Replaces `path` with `data` atomically and durably: writes PATH.tmp (mode `mode`), fsyncs
// it, renames it over `path` and fsyncs the directory. After a crash the file holds either
// the old or the new contents. Errors are errno codes.
Status write_file_atomic(const std::string& path, std::string_view data, mode_t mode = 0600);

// The whole file; errno codes (ENOENT when absent).
Result<std::string> read_file(const std::string& path);

}  // namespace cairn
