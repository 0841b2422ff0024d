#include "proxy/drop_behind.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace portcullis {

void DropBehind::reset(int fd) {
  struct stat st;
  if (fd < 0 || ::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    fd_ = -1;
    return;
  }
  fd_ = fd;
  end_ = st.st_size;
  synced_end_ = end_;
  dropped_ = 0;  // what an earlier writer left cached goes with the first synced()
}

void DropBehind::synced() {
  if (fd_ < 0) return;
  // Someone else may append too, or truncate the file (logrotate's
  // copytruncate): the file's size is the truth, read once per sync.
  struct stat st;
  if (::fstat(fd_, &st) == 0) {
    if (st.st_size < dropped_) dropped_ = 0;  // truncated: start over
    end_ = st.st_size;
  }
  synced_end_ = end_;
  const off_t upto = end_ - kKeep;
  if (upto <= dropped_) return;
  // The kernel drops only whole folios (up to kAlign, naturally aligned)
  // within the range: starting again at the kAlign boundary below dropped_
  // takes the one the last range ended in (walking dropped ones is cheap).
  const off_t from = dropped_ - dropped_ % kAlign;
  (void)::posix_fadvise(fd_, from, upto - from, POSIX_FADV_DONTNEED);
  dropped_ = upto;
}

}  // namespace portcullis
