// Drop-behind for an append-only log file: what the log thread wrote leaves
// the page cache once it is on disk, except the most recent kKeep bytes.
//
// Why: a proxy writes its access and audit logs at tens of MB/s and never
// reads them back, so without this the page cache fills with GBs of log
// pages nobody reads (crowding out what is worth caching), and every page
// the log writes into is a page never used before. Both cost: measured on
// the 2-core development VM, appending 3 GiB in 64 KiB writes cost 3.4 ms
// of system time per MiB while the page cache grew, 0.27 ms per MiB when the
// written pages were dropped behind the writer (so the next pages were
// recycled ones); at full load the log threads' CPU per request tripled
// once the logs passed ~1.5 GiB. PostgreSQL drops its WAL behind the same
// way. Readers that keep up (tail -f, a log shipper) still read from the
// cache; one that falls more than kKeep behind reads from disk.
//
// The owner (a log's writer thread, which may block on the disk; never an
// event loop) reports what it appended, and after each fdatasync(2) of the
// file calls synced(), which drops everything written before the last kKeep
// bytes: those pages are clean then, so the drop is certain, on any file
// system with a page cache (overlayfs passes it to the file below; on tmpfs
// it does nothing). A LogWriter, which does not sync otherwise, syncs once
// every kSyncEvery bytes (due()). Advisory throughout: a failure changes
// nothing but the cache.
#pragma once

#include <sys/types.h>

#include <cstddef>

namespace portcullis {

class DropBehind {
 public:
  static constexpr off_t kKeep = 8 << 20;       // the newest bytes left cached
  static constexpr off_t kSyncEvery = 8 << 20;  // due() after this much since the last sync
  // The page cache holds a file in folios of up to 2 MiB (a PMD on x86-64),
  // and a drop takes only the folios wholly inside its range: what is
  // dropped for certain ends at the kAlign boundary below end - kKeep.
  static constexpr off_t kAlign = 2 << 20;

  // Follows `fd` (the log just opened, positioned at its end by O_APPEND)
  // from now on; anything but a regular file is left alone.
  void reset(int fd);
  // `n` bytes were appended to the file.
  void appended(size_t n) { end_ += static_cast<off_t>(n); }
  // Whether kSyncEvery bytes were appended since the last synced().
  bool due() const { return fd_ >= 0 && end_ - synced_end_ >= kSyncEvery; }
  // Everything appended so far is on disk (the owner has just run
  // fdatasync): drops the file's pages up to the last kKeep bytes.
  void synced();

 private:
  int fd_ = -1;
  off_t end_ = 0;         // the file's size as far as this writer knows
  off_t synced_end_ = 0;  // end_ at the last synced()
  off_t dropped_ = 0;     // pages before this offset were dropped
};

}  // namespace portcullis
