// Test helper: a fresh directory under $TMPDIR (default /tmp), removed with
// its files by the destructor.
#pragma once

#include <stdlib.h>

#include <fstream>
#include <sstream>
#include <string>

namespace portcullis::testing_support {

struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp") + std::string("/pctestXXXXXX");
    path = mkdtemp(tmpl.data());
  }
  ~TempDir() { (void)system(("rm -rf '" + path + "'").c_str()); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// The whole content of `path` ("" if it cannot be read).
inline std::string readWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace portcullis::testing_support
