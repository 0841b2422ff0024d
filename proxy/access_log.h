// Access log: the JSON line format of SPEC.md §8 and LogWriter, the background
// thread that owns a log file so that an event loop never blocks on disk.
//
// The data path formats one AccessRecord into a std::string (formatAccessRecord)
// and hands it to LogWriter::submit(), which moves it into a bounded lock-free
// queue and returns at once. One writer thread per LogWriter drains the queue and
// writes whole batches with one writev(2) each.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "proxy/log_file.h"
#include "proxy/json_escape.h"
#include "proxy/short_copy.h"
#include "proxy/writer_kick.h"

namespace portcullis {

// One finished (or refused) request. The string_views are borrowed: they need to
// stay valid only for the duration of the formatAccessRecord() call, so a caller
// can point them straight into its request state.
struct AccessRecord {
  int64_t ts_unix_us = 0;  // written as "ts", RFC 3339 UTC with microseconds:
                           // "2026-12-04T16:40:47.123456Z"
  std::string_view request_id;
  std::string_view remote_ip;  // the client: behind trusted proxies, from X-Forwarded-For
  std::string_view peer_ip;    // the TCP peer; written only when non-empty and not remote_ip
  std::string_view method;
  std::string_view path;  // without the query string; cut at the first '?' anyway
  int status = 0;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  uint64_t duration_us = 0;
  std::string_view upstream;  // "" is written as JSON null (no upstream was chosen)
  int upstream_status = 0;    // 0 is written as JSON null (no upstream response)
  std::string_view token_id;  // "" omits the field (never the token itself)
  std::string_view account;   // "" omits the field
  std::string_view tls_version;  // "" omits the field (plaintext listener)
  std::string_view rejected_by;  // the refusing filter; "" omits the field
  std::string_view reason;       // why it refused; "" omits the field
};

// Appends exactly one JSON object followed by '\n' to `out`. The keys are, in this
// order: ts, request_id, remote_ip, method, path, status, bytes_in, bytes_out,
// duration_us, upstream, upstream_status, then peer_ip (when non-empty and not
// equal to remote_ip), token_id, account, tls_version, rejected_by, reason when
// non-empty. Every string is escaped per RFC 8259: '"'
// and '\\' as \" and \\, every control character (U+0000..U+001F) and DEL as
// \u00XX, and each byte that is not part of a well-formed UTF-8 sequence (RFC 3629:
// no overlongs, no surrogates, nothing above U+10FFFF) as \ufffd. Whatever a client
// puts in a path or header, the result is one valid JSON line. Never fails, never
// throws (beyond std::bad_alloc from growing `out`), takes no lock.
void formatAccessRecord(const AccessRecord& r, std::string& out);

// Deferred formatting (the event loop copies, the log thread formats): packs
// `r` into `out` (its numbers and a copy of every string, length-prefixed),
// and, on the log thread, appends exactly what formatAccessRecord(r) would to
// `out` from such a packing. A packing is only for formatPackedAccessRecord.
void packAccessRecord(const AccessRecord& r, std::string& out);
void formatPackedAccessRecord(std::string_view packed, std::string& out);

// Appends `s` to `out` as the body of a JSON string (without the quotes), escaped
// as described above. Shared with the audit log and other JSON line writers.
void appendJsonEscaped(std::string_view s, std::string& out);

// The same escaping written at a pointer: writeJsonEscaped (json_escape.h).

// The length-prefixed encoding of the loop-to-writer packings (access records,
// audit fields, stages): a 4-byte length in host order, then the bytes. Both
// ends run in this process. appendLengthPrefixed writes one item;
// readLengthPrefixed reads the one at `at` into `item` and moves `at` past
// it, or returns false (leaving `at`) when `all` holds no complete item there.
inline void appendLengthPrefixed(std::string_view s, std::string& out) {
  const auto len = static_cast<uint32_t>(s.size());
  out.append(reinterpret_cast<const char*>(&len), 4);
  out.append(s.data(), s.size());
}
// The same layout written at `p` (room for 4 + s.size() bytes); returns the
// end. For packings written through a cursor (write_cursor.h).
inline char* writeLengthPrefixed(std::string_view s, char* p) {
  const auto len = static_cast<uint32_t>(s.size());
  std::memcpy(p, &len, 4);
  copyShort(p + 4, s.data(), s.size());
  return p + 4 + s.size();
}
inline bool readLengthPrefixed(std::string_view all, size_t& at, std::string_view& item) {
  uint32_t len;
  if (at > all.size() || all.size() - at < 4) return false;
  std::memcpy(&len, all.data() + at, 4);
  if (all.size() - at - 4 < len) return false;
  item = all.substr(at + 4, len);
  at += 4 + static_cast<size_t>(len);
  return true;
}

// Appends `ts_unix_us` as RFC 3339 UTC with exactly six fractional digits, e.g.
// "2026-12-04T16:40:47.123456Z". Pure arithmetic: no gmtime, no locale, no lock.
void appendRfc3339Micros(int64_t ts_unix_us, std::string& out);

// LogWriter owns one append-only log file and one background thread that writes
// to it. Any number of threads may call submit() concurrently; none of them ever
// blocks, takes a lock or makes a system call except, rarely, one futex wake when
// the writer thread is asleep.
//
// Queue: a bounded multi-producer ring with a sequence number per cell (Dmitry
// Vyukov's bounded MPMC queue, used here with a single consumer). When it is full,
// submit() returns false and the line is counted in dropped(): an access log loses
// lines under overload rather than slow down the proxy.
//
// Writer thread: drains up to kMaxBatch entries at a time and writes them with
// one writev(2) (more only after a short write). When the queue is empty it
// sleeps on a futex for up to 20 ms, until an event loop kicks it
// (Stage::publishAndKick: at most every 5 ms, see writer_kick.h), a submit()
// finds it asleep at every 1024th entry, or reopen(), flush() or stop(). Lines
// are in the file at most ~20 ms after they were queued (for a Stage:
// published), under any load short of a saturated CPU.
//
// The audit log (audit_log.h) has its own queue: it never drops.
class LogWriter {
 public:
  // `capacity` is the number of queued lines (and ring entries), rounded up to
  // a power of two (at least 2). The ring is allocated here, once.
  explicit LogWriter(size_t capacity = 65536);
  // Calls stop(): every line submitted before is written.
  ~LogWriter();

  LogWriter(const LogWriter&) = delete;
  LogWriter& operator=(const LogWriter&) = delete;

  // Opens `path` for appending (O_WRONLY|O_CREAT|O_APPEND|O_CLOEXEC, mode 0640,
  // creating missing parent directories with mode 0750) and starts the writer
  // thread. An empty path makes this a discarding writer: submit() accepts and
  // drops every line without counting it and no thread is started. Returns false
  // with a message in `error` if the file cannot be opened or the writer was
  // already started. Lines submitted before start() wait in the queue and are
  // written once it has started. Call once.
  bool start(const std::string& path, std::string& error);

  // Queues one line (it should end in '\n'; nothing is added). Thread-safe and
  // wait-free in practice: never blocks, never takes a mutex, never allocates
  // (the string's buffer is moved, not copied). Returns false, leaves `line`
  // unchanged and counts a drop when the queue is full or after stop().
  bool submit(std::string&& line);

  // Turns a queued item into its text on the writer thread (appending to
  // `out`), so the submitting thread only copies its data (e.g.
  // packAccessRecord / formatPackedAccessRecord). Must not throw.
  using Formatter = void (*)(std::string_view item, std::string& out);
  // As submit(line), but `item` is written as format(item). Same guarantees.
  bool submit(std::string&& item, Formatter format);

  // Staged submission, for an event loop: the loop appends items to a buffer
  // it owns (no allocation, atomic or queue slot per item), and the stage
  // reaches the queue as one entry when the loop calls publish() (once per
  // loop iteration, before it blocks for I/O) or on its own once it holds
  // kStageMaxItems items or kStageMaxBytes bytes. The writer writes each item
  // as format(item), in stage order, and counts lines, not entries, in
  // written(), dropped() and depth(). A full queue drops the whole stage
  // (counted per line). A Stage belongs to one thread at a time; the
  // LogWriter must outlive it; destroying a Stage publishes what it holds.
  class Stage {
   public:
    Stage(LogWriter* log, Formatter format) : log_(log), format_(format) {}
    ~Stage() { publish(); }
    Stage(const Stage&) = delete;
    Stage& operator=(const Stage&) = delete;

    // One item: append its bytes to the string begin() returns, then call
    // end(). Nothing else may touch the string in between.
    std::string& begin();
    void end();
    // Hands everything staged to the queue as one entry (no-op when empty).
    void publish();
    // publish(), then wakes the writer if anything was published since this
    // stage last woke it and the writer's KickThrottle says it is due. For an
    // event loop, once per iteration, with its loop time (uv_now).
    void publishAndKick(uint64_t now_ms);
    bool empty() const { return count_ == 0; }

   private:
    LogWriter* log_;
    Formatter format_;
    std::string buf_;  // items, each as a 4-byte length and its bytes
    size_t item_at_ = 0;
    uint32_t count_ = 0;
    bool unkicked_ = false;  // published since the last kick
  };
  static constexpr uint32_t kStageMaxItems = 256;
  static constexpr size_t kStageMaxBytes = 64 * 1024;

  // Asks the writer thread to reopen the path (for logrotate: rename the file,
  // then reopen(), e.g. from the SIGUSR1 handler on the main loop). Thread-safe,
  // non-blocking, not async-signal-safe. Every write after the reopen goes to the
  // new file; if opening it fails, the old file stays in use and the failure is
  // reported on stderr.
  void reopen();

  // Blocks until every line submitted before this call (and accepted) has been
  // written or has failed to write. For tests and shutdown; never call it from
  // an event loop. Returns at once if the writer is not running.
  void flush();

  // Stops accepting lines, writes everything already queued, joins the thread and
  // closes the file. A submit() racing with stop() either returns false or has its
  // line written, except one still between claiming and filling its cell at that
  // instant (its line is freed with the writer). Idempotent; a stopped writer
  // cannot be started again. Not from an event loop (it waits for the disk).
  void stop();

  // Whether lines are kept at all (false for an empty path), so callers can skip
  // formatting a record nobody will read.
  bool enabled() const { return !discard_.load(std::memory_order_relaxed); }

  // Counters for /metrics (relaxed reads; exact only when quiescent).
  uint64_t written() const { return written_.load(std::memory_order_relaxed); }
  // Lines refused because the queue was full or the writer stopped, plus lines
  // lost to write errors (disk full, I/O error).
  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
  // Lines queued and not yet written.
  size_t depth() const;

  // Most entries written by one writev(2) (IOV_MAX on Linux); the writer also
  // stops taking entries once it holds this many lines.
  static constexpr size_t kMaxBatch = 1024;

 private:
  struct Cell {
    std::atomic<size_t> seq;
    std::string line;
    Formatter format = nullptr;  // null: `line` is the text
    uint32_t lines = 1;          // lines this entry becomes
    bool staged = false;         // `line` is a Stage's items, each format()ted
  };
  struct Item {  // a queue entry taken by the writer
    std::string text;
    Formatter format = nullptr;
    uint32_t lines = 1;
    bool staged = false;
  };

  bool enqueue(std::string&& text, Formatter format, uint32_t lines, bool staged);

  void run();
  size_t collectBatch();
  void writeBatch();
  void doReopen();
  // Writes what file_ holds back; on failure counts its lines dropped.
  void drainOrDrop();
  void wakeWriter();
  void publishProgress();

  const size_t mask_;
  std::unique_ptr<Cell[]> cells_;

  // Producers contend on enqueue_pos_; the writer alone advances dequeue_pos_
  // (atomic only so depth() can read it). Separate cache lines.
  alignas(64) std::atomic<size_t> enqueue_pos_{0};
  alignas(64) std::atomic<size_t> dequeue_pos_{0};
  // Writer: 1 while it sleeps (or is about to) on the futex; producers that see 1
  // swap it to 0 and wake it. 32-bit because it is the futex word.
  alignas(64) std::atomic<uint32_t> sleeping_{0};
  alignas(64) KickThrottle kick_;
  std::atomic<bool> reopen_requested_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> accepting_{true};
  std::atomic<bool> running_{false};
  std::atomic<bool> discard_{false};
  std::atomic<uint64_t> written_{0};
  std::atomic<uint64_t> dropped_{0};
  // Lines queued beyond one per entry (staged entries hold several), so that
  // depth() counts lines; published before the entry, taken off after it.
  std::atomic<size_t> extra_lines_{0};

  // flush() waiters only; producers never touch these. processed_ is the queue
  // position up to which every line has been written or has failed.
  std::atomic<size_t> processed_{0};
  std::atomic<int> flush_waiters_{0};
  std::mutex flush_mu_;
  std::condition_variable flush_cv_;

  // Writer thread state.
  std::string path_;
  LogFile file_;                // writer thread only (stop() after the join)
  bool write_failing_ = false;  // to report a failure streak once, not per batch
  std::unique_ptr<Item[]> batch_;
  size_t batch_len_ = 0;
  size_t batch_lines_ = 0;
  std::string formatted_;  // the batch's formatted items, back to back

  std::mutex lifecycle_mu_;  // start()/stop() against each other, never on the data path
  bool started_ = false;
  bool stopped_ = false;
  std::thread thread_;
};

}  // namespace portcullis
