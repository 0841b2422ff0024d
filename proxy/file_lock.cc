#include "proxy/file_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "proxy/errno_message.h"

namespace portcullis {

FileLock::~FileLock() {
  if (fd_ < 0) return;
  ::flock(fd_, LOCK_UN);
  ::close(fd_);
}

bool FileLock::lock(const std::string& path, std::string& error, int timeout_ms) {
  const std::string lock_path = path + ".lock";
  fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd_ < 0) {
    error = "cannot open lock file " + lock_path + ": " + errnoMessage(errno);
    return false;
  }
  int waited_ms = 0;
  while (::flock(fd_, timeout_ms < 0 ? LOCK_EX : LOCK_EX | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    if (errno == EWOULDBLOCK && waited_ms < timeout_ms) {
      ::usleep(10000);
      waited_ms += 10;
      continue;
    }
    error = errno == EWOULDBLOCK ? lock_path + " is held by another process (waited " + std::to_string(timeout_ms) +
                                       " ms)"
                                 : "cannot lock " + lock_path + ": " + errnoMessage(errno);
    ::close(fd_);
    fd_ = -1;
    return false;
  }
  return true;
}

}  // namespace portcullis
