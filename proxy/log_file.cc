#include "proxy/log_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <ctime>

namespace portcullis {

int64_t monotonicUs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

LogFile::LogFile(const Tuning& tuning) : tuning_(tuning) {
  tuning_.direct_bytes = std::max(tuning_.direct_bytes, 2 * kAlign);
  tuning_.direct_bytes -= tuning_.direct_bytes % kAlign;
}

LogFile::~LogFile() {
  close();
  std::free(buf_);
}

void LogFile::close() {
  if (fd_ >= 0) ::close(fd_);
  if (dfd_ >= 0) ::close(dfd_);
  fd_ = dfd_ = -1;
  held_ = 0;
  begin_ = 0;
  end_ = 0;
}

void LogFile::adopt(int fd, const std::string& path) {
  close();
  fd_ = fd;
  direct_writes_ = 0;
  drop_behind_.reset(fd);
  struct stat st;
  if (fd < 0 || ::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return;
  end_ = st.st_size;
  begin_ = static_cast<size_t>(end_ % static_cast<off_t>(kAlign));
  if (!tuning_.direct) return;
  // The same file, opened again for O_DIRECT. A rename between the two
  // opens (logrotate) would give another inode: then no direct writes.
  // O_APPEND: a direct write lands at the file's real end even if it was
  // truncated or appended to since the size check in writeDirect().
  const int dfd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_DIRECT | O_CLOEXEC);
  if (dfd < 0) return;  // a file system without O_DIRECT: EINVAL
  struct stat dst;
  if (::fstat(dfd, &dst) != 0 || dst.st_dev != st.st_dev || dst.st_ino != st.st_ino) {
    ::close(dfd);
    return;
  }
  dfd_ = dfd;
}

void LogFile::disableDirect() {
  if (dfd_ >= 0) ::close(dfd_);
  dfd_ = -1;
}

bool LogFile::reserve() {
  if (buf_ != nullptr) return true;
  // Room for a run of direct_bytes plus the largest batch that joins it
  // (an access-log batch is at most a few hundred KiB), and one block of
  // slack for the alignment of the first held byte.
  const size_t cap = 2 * tuning_.direct_bytes;
  buf_ = static_cast<char*>(std::aligned_alloc(kAlign, cap + kAlign));
  if (buf_ == nullptr) return false;
  cap_ = cap;
  return true;
}

void LogFile::consumed(size_t n) {
  begin_ += n;
  held_ -= n;
  end_ += static_cast<off_t>(n);
  drop_behind_.appended(n);
  if (held_ == 0) begin_ = static_cast<size_t>(end_ % static_cast<off_t>(kAlign));
}

void LogFile::take(const struct iovec* iov, int iovcnt, size_t total) {
  char* p = buf_ + begin_ + held_;
  for (int i = 0; i < iovcnt; ++i) {
    if (iov[i].iov_len == 0) continue;
    std::memcpy(p, iov[i].iov_base, iov[i].iov_len);
    p += iov[i].iov_len;
  }
  held_ += total;
}

ssize_t LogFile::plainWritev(const struct iovec* iov, int iovcnt) {
  const ssize_t w = ::writev(fd_, iov, iovcnt);
  if (w > 0) {
    end_ += w;
    drop_behind_.appended(static_cast<size_t>(w));
    begin_ = static_cast<size_t>(end_ % static_cast<off_t>(kAlign));
  }
  return w;
}

ssize_t LogFile::append(const char* p, size_t n, int64_t now_us) {
  struct iovec iov = {const_cast<char*>(p), n};
  return appendv(&iov, 1, now_us);
}

ssize_t LogFile::appendv(const struct iovec* iov, int iovcnt, int64_t now_us) {
  size_t total = 0;
  for (int i = 0; i < iovcnt; ++i) total += iov[i].iov_len;
  if (total == 0) return 0;
  // A plain appender: no direct writes, or a light load with nothing held.
  if (dfd_ < 0 || (held_ == 0 && total < tuning_.small_batch) || !reserve()) {
    if (held_ > 0 && !drain()) return -1;
    return plainWritev(iov, iovcnt);
  }
  if (held_ == 0) held_since_us_ = now_us;
  if (begin_ + held_ + total > cap_) {
    // No room behind what is held: write that first.
    if (held_ >= tuning_.direct_bytes) (void)writeDirect();
    if (held_ > 0 && !drain()) return -1;
    held_since_us_ = now_us;
    if (begin_ + total > cap_) return plainWritev(iov, iovcnt);  // larger than the whole buffer
  }
  take(iov, iovcnt, total);
  if (held_ >= tuning_.direct_bytes) {
    // What is left (under a block) is the end of what was held: if all of
    // it came in this batch, its age starts now; older bytes keep theirs.
    if (writeDirect() && held_ <= total) held_since_us_ = now_us;
  }
  return static_cast<ssize_t>(total);
}

// The file is not where this writer left it: someone else appended (direct
// writes off for this file) or it was truncated (continue from its new end).
// Held bytes go out with O_APPEND, at the real end.
bool LogFile::resyncEnd(off_t size) {
  if (size > end_) disableDirect();
  end_ = size;
  const size_t to = static_cast<size_t>(end_ % static_cast<off_t>(kAlign));  // keep the alignment invariant
  std::memmove(buf_ + to, buf_ + begin_, held_);
  begin_ = to;
  return drain();
}

bool LogFile::writeDirect() {
  if (dfd_ < 0) return drain();
  struct stat st;
  if (::fstat(fd_, &st) != 0) return drain();
  if (st.st_size != end_) return resyncEnd(st.st_size);
  // Up to the next block boundary through the page cache.
  const size_t head = (kAlign - static_cast<size_t>(end_ % static_cast<off_t>(kAlign))) % kAlign;
  if (head >= held_) return true;
  size_t left = head;
  while (left > 0) {
    const ssize_t w = ::write(fd_, buf_ + begin_, left);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    consumed(static_cast<size_t>(w));
    left -= static_cast<size_t>(w);
  }
  const size_t blocks = held_ - held_ % kAlign;
  if (blocks == 0) return true;
  // O_APPEND: written at the real end (the offset is ignored), so a change
  // of size since the check above never overwrites or leaves a hole; the
  // next check (or the EINVAL of an unaligned end) notices it.
  ssize_t w;
  do {
    w = ::pwrite(dfd_, buf_ + begin_, blocks, end_);
  } while (w < 0 && errno == EINTR);
  if (w <= 0) {
    if (w < 0 && errno == EINVAL) {
      // The end moved off the block boundary since the check, or the file
      // system does not do O_DIRECT after all.
      if (::fstat(fd_, &st) == 0 && st.st_size != end_) return resyncEnd(st.st_size);
      disableDirect();
      return drain();
    }
    return false;  // held, retried later
  }
  consumed(static_cast<size_t>(w));
  ++direct_writes_;
  // The unaligned rest (under one block) to the front, same alignment.
  if (held_ > 0 && begin_ >= kAlign) {
    const size_t to = begin_ % kAlign;
    std::memmove(buf_ + to, buf_ + begin_, held_);
    begin_ = to;
  }
  return true;
}

bool LogFile::drain() {
  while (held_ > 0) {
    const ssize_t w = ::write(fd_, buf_ + begin_, held_);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      if (w == 0) errno = EIO;
      return false;
    }
    consumed(static_cast<size_t>(w));
  }
  return true;
}

bool LogFile::drainIfStale(int64_t now_us) {
  if (held_ == 0 || now_us - held_since_us_ < tuning_.max_hold_us) return true;
  return drain();
}

bool LogFile::sync() {
  if (fd_ < 0) return false;
  // A large held run still goes out direct (under load a sync comes every
  // second or 8 MiB, with up to direct_bytes held); only the rest, under a
  // block, through the page cache. Smaller runs cost less as one write(2).
  if (dfd_ >= 0 && held_ >= tuning_.direct_bytes / 4) (void)writeDirect();
  bool ok = drain();
  if (::fdatasync(fd_) == 0) {
    drop_behind_.synced();
  } else {
    ok = false;
  }
  return ok;
}

size_t LogFile::discardHeld() {
  const size_t lines = static_cast<size_t>(std::count(buf_ + begin_, buf_ + begin_ + held_, '\n'));
  held_ = 0;
  begin_ = static_cast<size_t>(end_ % static_cast<off_t>(kAlign));
  return lines;
}

}  // namespace portcullis
