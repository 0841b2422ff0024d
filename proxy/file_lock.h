// The writers' lock convention for files that several processes rewrite
// (the token store, the keyring): an exclusive flock on the sibling file
// `<path>.lock` (created 0600, left in place) held for the whole
// read-modify-write, so concurrent writers are serialised.
#pragma once

#include <string>

namespace portcullis {

class FileLock {
 public:
  FileLock() = default;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  ~FileLock();  // releases the lock, if held

  // Blocks until `path`.lock is held exclusively; with timeout_ms >= 0, for
  // at most about that long (then false: another process holds it). False
  // with `error` when the lock file cannot be opened or locked.
  bool lock(const std::string& path, std::string& error, int timeout_ms = -1);

 private:
  int fd_ = -1;
};

}  // namespace portcullis
