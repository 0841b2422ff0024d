// The file behind a log writer thread (access log, audit log): appends whole
// batches of lines, syncs, drops what is durable from the page cache, and
// under sustained load writes in large O_DIRECT blocks instead of through the
// page cache.
//
// Why direct writes: a buffered append costs the kernel a page-cache page per
// 4 KiB (allocation, delayed-allocation bookkeeping, writeback, then the
// drop-behind that frees it again). On the 2-core development VM (ext4)
// appending 1 GiB cost 323 us of system time per MiB in 64 KiB buffered
// writes, 149 us in 256 KiB O_DIRECT writes and 79 us in 1 MiB ones; at full
// proxy load the logs write ~40 MB/s, and this is most of what the log
// threads cost (PostgreSQL writes its WAL with O_DIRECT for the same reason).
//
// Policy (one writer thread per LogFile, which may block on the disk; never
// an event loop):
//  - A batch below `small_batch` bytes with nothing held back is written at
//    once with write(2) on the O_APPEND descriptor: a lightly loaded log
//    behaves exactly as a plain appender, lines visible within the batch.
//  - A larger batch is held back in an aligned buffer (held()). Once
//    `direct_bytes` are held they go out with one pwrite(2) on a second
//    O_DIRECT descriptor, from the last block boundary (a short head up to
//    that boundary first goes through write(2)); the unaligned rest, under
//    one block, stays held for the next round.
//  - Later batches of any size join what is held. Held bytes reach the file
//    through write(2) (drain()) once they are older than `max_hold_us`
//    (drainIfStale(), which the owner calls on every wake), and in sync(),
//    which the owner calls before reopening or closing and for flushes. So
//    under load a line reaches the file within ~max_hold_us + the owner's
//    wake interval.
//  - O_DIRECT is used only where it works: the second descriptor must open
//    (not every file system does O_DIRECT), be the same inode, and the
//    first direct write must succeed (EINVAL turns direct writes off for the
//    file).
//  - One appender per file is assumed for direct writes. Both descriptors
//    are O_APPEND, so every write lands at the file's real end, but a direct
//    write must start on a block boundary: before each one the file size is
//    checked (fstat), and if it is not what this writer wrote, held bytes
//    go out through write(2), and if someone else appended, direct writes
//    stay off for this file (until adopt()); after a truncation (logrotate
//    copytruncate) they continue from the new end. A change between the
//    check and the write ends up the same way (the next check, or the
//    direct write's EINVAL at an unaligned end). A
//    line that straddled the last direct write's end may then be split
//    around the other appender's data, or across the two files of a
//    copytruncate; prefer rename + reopen (SIGUSR1) for rotation.
//  - Crash loss: what is held (at most ~direct_bytes, ~max_hold_us of lines)
//    is lost if the process dies, as are lines still queued for the writer.
//
// Drop-behind: every sync() drops the synced file's pages from the page
// cache except the newest DropBehind::kKeep bytes (drop_behind.h).
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "proxy/drop_behind.h"

namespace portcullis {

// CLOCK_MONOTONIC in microseconds (the `now_us` LogFile takes).
int64_t monotonicUs();

class LogFile {
 public:
  struct Tuning {
    size_t direct_bytes = 512 * 1024;  // held bytes that trigger a direct write
    size_t small_batch = 16 * 1024;    // a batch below this is written at once
    int64_t max_hold_us = 50 * 1000;   // held bytes older than this: drainIfStale() writes them
    bool direct = true;                // false: never O_DIRECT (a plain appender)
  };
  // Block size for direct writes: offsets, lengths and memory aligned to it.
  static constexpr size_t kAlign = 4096;

  LogFile() : LogFile(Tuning{}) {}
  explicit LogFile(const Tuning& tuning);
  ~LogFile();
  LogFile(const LogFile&) = delete;
  LogFile& operator=(const LogFile&) = delete;

  // Takes `fd` (opened with O_APPEND on `path`; a regular file gets drop-
  // behind and, when possible, direct writes). The previous descriptor is
  // closed and anything still held for it is discarded: sync() it first.
  void adopt(int fd, const std::string& path);
  // Closes the descriptors (held bytes are discarded: sync() first).
  void close();
  int fd() const { return fd_; }
  bool isOpen() const { return fd_ >= 0; }

  // Appends the bytes of `iov` (whole lines, in order after everything
  // appended before). Returns how many bytes were taken (written or held;
  // fewer than all only when write(2) wrote fewer), or -1 with errno when
  // none could be taken (a write error; held bytes stay held and are retried
  // by the next call).
  ssize_t appendv(const struct iovec* iov, int iovcnt, int64_t now_us);
  ssize_t append(const char* p, size_t n, int64_t now_us);

  // Writes every held byte with write(2). False (errno set) if some could
  // not be written; they stay held.
  bool drain();
  // drain() if held bytes are older than max_hold_us at now_us.
  bool drainIfStale(int64_t now_us);
  // drain() (a held run of direct_bytes / 4 or more first goes out direct,
  // as far as it fills whole blocks), then fdatasync(2) and drop-behind.
  // False if either failed.
  bool sync();
  // Whether DropBehind::kSyncEvery bytes were appended since the last sync.
  bool syncDue() const { return drop_behind_.due(); }

  // Bytes taken but not yet in the file.
  size_t held() const { return held_; }
  // Discards what is held; returns how many line ends ('\n') it held (the
  // lines that are lost), for a writer giving up at shutdown.
  size_t discardHeld();
  // Direct writes made since adopt() (tests, diagnostics).
  uint64_t directWrites() const { return direct_writes_; }
  // Whether direct writes are on for the current file.
  bool directEnabled() const { return dfd_ >= 0; }

 private:
  bool reserve();
  // writev(2) on the O_APPEND descriptor, accounted like any append.
  ssize_t plainWritev(const struct iovec* iov, int iovcnt);
  void take(const struct iovec* iov, int iovcnt, size_t total);
  bool writeDirect();
  bool resyncEnd(off_t size);
  void disableDirect();
  void consumed(size_t n);

  Tuning tuning_;
  int fd_ = -1;   // O_APPEND
  int dfd_ = -1;  // O_APPEND | O_DIRECT, same inode; -1 when direct writes are off
  DropBehind drop_behind_;
  off_t end_ = 0;  // file size as this writer knows it (held bytes not included)
  // Held bytes: buf_[begin_, begin_ + held_), for file offsets end_ onwards,
  // with begin_ % kAlign == end_ % kAlign while direct writes are on, so a
  // block-aligned file offset is a block-aligned address.
  char* buf_ = nullptr;
  size_t cap_ = 0;
  size_t begin_ = 0;
  size_t held_ = 0;
  int64_t held_since_us_ = 0;
  uint64_t direct_writes_ = 0;
};

}  // namespace portcullis
