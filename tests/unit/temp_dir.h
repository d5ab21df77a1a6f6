// TempDir: a fresh directory under /tmp for one unit test, removed with its contents at the
// end of the scope. Shared by every component's unit tests.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/assert.h"

namespace cairn::test {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/cairn-test-XXXXXX";
    char* p = mkdtemp(tmpl);
    CAIRN_ASSERT(p != nullptr);
    path_ = p;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // Writes `content` to a file named `name` in the directory and returns its path.
  std::string write(const std::string& name, const std::string& content) const {
    std::string p = path_ + "/" + name;
    std::ofstream(p) << content;
    return p;
  }

 private:
  std::string path_;
};

}  // namespace cairn::test
