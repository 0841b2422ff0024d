// Tamper-evident audit log (SPEC §8).
//
// Record format: one JSON object a line, members in exactly this order:
//
//   {"seq":N,"ts":"<RFC 3339 UTC, µs>","event":"<name>"[,<fields>],
//    "key_id":"<keyring id>","prev":"<64 hex>","mac":"<64 hex>"}\n
//
// (one line; wrapped here). `seq` counts from 1 and is gapless across restarts,
// log rotation and key rotation. `prev` is the `mac` of the previous record, or
// 64 '0' for the first record of a chain. `key_id` names the keyring key the
// record's MAC key is derived from (the keyring's ACTIVE key when it was
// written), so records written before a key rotation stay verifiable as long as
// the old key stays in the keyring.
//
// Canonical form and MAC. Let BODY be the record line up to, not including, the
// final `,"mac":"` (that is, the line with its `,"mac":"<64 hex>"}` tail and the
// '\n' removed). Then
//
//   mac = lowercase hex of HMAC-SHA256(audit_key, PREV || BODY || "}")
//
// where PREV is the 64 ASCII hex characters of `prev` (as they appear in the
// line) and audit_key = HKDF-SHA256(master key `key_id`, salt = empty,
// info = "portcullis-audit", 32 bytes). Editing any byte of a record breaks its
// mac; deleting, inserting or reordering records breaks the seq/prev chain.
//
// Reserved events, written by AuditLog itself:
//   audit.start  on every start(); fields: "pid":N
//   audit.torn   on start() when the file ended with an unterminated line
//                that is not a record (a write cut short by a crash):
//                "torn_bytes":K,"torn_sha256":"<hex>" over exactly the bytes
//                after the file's last '\n' (start() then adds the '\n').
//                Complete lines are never covered (see start()).
//   alert        kind "audit_tamper", on start() for each sign of editing it
//                finds at the end of the file (see start()), with either
//                  "found":"bad_mac","seq":N
//                    the last record (seq N) does not verify with its key, or
//                  "found":"unparsable_lines","bytes":K,"lines":L,"after_seq":N
//                    L complete lines, K bytes with their '\n's, after the
//                    record with seq N (0: no record before them) are not
//                    records.
// Callers must not use the `audit.` prefix; `alert` they share (the
// detector's alerts, SPEC §8).
//
// Key material and tokens are never written: callers put token ids, never
// tokens, into fields, and the audit key only ever lives in HMAC state.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "proxy/log_file.h"
#include "proxy/keyring.h"
#include "proxy/writer_kick.h"

namespace portcullis {

class AuditMac;

// Builds the `fields` fragment of AuditLog::record(): JSON members separated by
// commas, without braces, e.g. `"reason":"bad_secret","ip":"1.2.3.4"`. Keys and
// string values are escaped with appendJsonEscaped, so any value, however
// hostile, stays inside its string. Numbers are written with std::to_chars.
class AuditFields {
 public:
  AuditFields& str(std::string_view key, std::string_view value);
  AuditFields& num(std::string_view key, int64_t value);
  AuditFields& unum(std::string_view key, uint64_t value);
  // Moves the fragment out (for record()); the builder is empty afterwards.
  std::string take() { return std::move(out_); }
  const std::string& view() const { return out_; }

 private:
  void key(std::string_view k);
  std::string out_;
};

// String members for AuditLog::record(event, const PackedFields&), built on
// an event loop: each str() copies its key and value, length-prefixed, with
// no escaping, into a buffer inside the object (a request's members fit, so
// no allocation) or, past that, onto the heap; writePackedFields (on the
// writer thread) writes exactly what AuditFields with the same str() calls
// would produce.
class PackedFields {
 public:
  // cppcheck-suppress uninitMemberVar ; inline_ is written before it is read (len_ bytes of it are valid)
  PackedFields() = default;
  PackedFields(const PackedFields&) = delete;
  PackedFields& operator=(const PackedFields&) = delete;
  PackedFields& str(std::string_view key, std::string_view value);
  // The packing so far; valid until the next str() or the object's end.
  std::string_view view() const { return spill_.empty() ? std::string_view(inline_, len_) : spill_; }
  std::string take() const { return std::string(view()); }

 private:
  static constexpr size_t kInline = 384;
  char inline_[kInline];
  size_t len_ = 0;     // bytes used in inline_ while spill_ is empty
  std::string spill_;  // the whole packing, once it outgrew inline_
};

// Writes the JSON members of `packed` (a PackedFields packing) at `p`, which
// must have room for packed.size() * kJsonEscapeMax bytes; returns the end.
// The output never holds a raw CR or LF (every control byte is escaped).
char* writePackedFields(std::string_view packed, char* p);
// The same, appended to `out`.
void formatPackedFields(std::string_view packed, std::string& out);

// AuditLog owns one audit log file and one writer thread.
//
// record() policy: never blocks, never takes a mutex, never drops an accepted
// event. An event first goes into a bounded lock-free ring (Vyukov's bounded
// queue, as in LogWriter). When the ring is full it goes instead onto an
// unbounded lock-free overflow list (a Treiber stack of heap nodes that the
// writer takes whole and reverses), counted in overflowed(); memory, not events,
// is what an overload costs. The only system call record() can make is a futex
// wake of a sleeping writer, at most once every 1024 events or when the ring is
// full. (The overflow path allocates, and malloc may itself call mmap.)
//
// Ordering: the writer assigns seq in the order it takes events, and events
// are written in seq order. If record(A) happens-before record(B) (same thread,
// or any synchronisation between the callers), A gets the smaller seq. This
// holds across the two paths: while any overflow node is unconsumed, every
// record() also takes the overflow path, and before consuming overflow nodes the
// writer first drains every ring slot claimed before it took them.
//
// Writer thread: assigns seq, ts (its clock at write time), key_id, prev and
// mac; wakes when an event loop kicks it (Stage::publishAndKick, at most every
// 5 ms, see writer_kick.h) or every 20 ms on its own, and appends each batch
// to a LogFile (log_file.h: write(2) at a light load; under load large
// batches are held back, up to ~50 ms, for one O_DIRECT write per 512 KiB,
// and anything held is written before every sync); fdatasync()s at least
// once a second while records are being written, within ~120 ms of going
// idle with unsynced records (idle: a wake that finds no new event 10 ms or
// more after the last; at most one idle sync per 100 ms, so a steady trickle
// of events does not cost a sync each), and on flush() and stop(). On a write error it reports once on stderr and retries
// the unwritten bytes every 100 ms (events keep queueing in memory); only
// stop() gives up after 5 s of failures, counting the lost records in lost().
class AuditLog {
 public:
  // `capacity`: ring size in events, rounded up to a power of two (at least 2).
  explicit AuditLog(size_t capacity = 16384);
  // Calls stop().
  ~AuditLog();
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // Opens `path` for appending (creating it with mode 0640 and missing parent
  // directories with mode 0750), continues the chain found at its end, and
  // starts the writer thread. Continuing: the last line that parses as a
  // record gives the next seq and prev (its key_id need not be in `keys`).
  // An unterminated last line that is not a record is kept, terminated with
  // '\n' and described by an audit.torn record; then an audit.start record
  // follows. Events recorded before start() are written after these.
  // Tampering found at the end (a last record whose mac does not verify with
  // `keys`, complete lines after the last record that do not parse) is left
  // uncovered, so that verification keeps failing at the edited line; the
  // log still starts. Each finding is one line on stderr and one `alert`
  // record of kind audit_tamper (see above), listed in startAlerts() and
  // written right after the old content, before audit.start (when a torn
  // last line follows a bad last record, after the audit.torn, which must
  // follow the torn line directly). The file is locked (flock, exclusive,
  // until stop()): one writer per file, as two would fork the chain. Returns
  // false with a one-line `error` if the file cannot be opened, locked (it is
  // in use by another process or AuditLog) or read, `keys` is null or has no
  // usable active key, or start() was already called. Call once.
  bool start(const std::string& path, const std::shared_ptr<const KeyProvider>& keys, std::string& error);

  // The members (after "event", starting with "kind") of each audit_tamper
  // `alert` record start() wrote, in file order; empty if it found no
  // tampering. The log has recorded them; raising them in real time (log
  // line, webhook, metrics) is the caller's part (AlertDispatcher::
  // onRecordedAlert). Set by a successful start(); read it on the thread that
  // called start(), after it returned.
  const std::vector<std::string>& startAlerts() const { return start_alerts_; }

  // Switches the MAC key of later records to the active key of `keys` (config
  // reload / key rotation). The audit key is derived here, on the caller's
  // thread, and handed to the writer under a mutex that only this call and the
  // writer (once per batch, when a new key is pending) take. Records already
  // queued may still be written with the old key. Returns false with `error`
  // (and keeps the current key) when `keys` has no usable active key.
  bool setKeys(const std::shared_ptr<const KeyProvider>& keys, std::string& error);

  // Queues one event. `event` is the event name (e.g. "auth.failure"); it is
  // copied (escaped by the writer). `fields` is a JSON members fragment as
  // built by AuditFields (may be empty); its buffer is moved, not copied. Any
  // raw '\n' or '\r' in it is written as a space, so one event stays one line.
  // Thread-safe; see the class comment for blocking, ordering and overflow.
  // After stop() the event cannot be written: it is counted in lost().
  void record(std::string_view event, std::string&& fields);

  // Deferred formatting: the event's members are written by the writer
  // thread (writePackedFields), so the recording thread only copies its data
  // (on an event loop with a Stage: once, from `fields` into the stage). Same
  // guarantees as record().
  void record(std::string_view event, const PackedFields& fields);

  // The members of a request's audit event, written in this order;
  // token_id, account and reason are left out when empty.
  struct RequestMembers {
    std::string_view request_id, ip, method, path, token_id, account, reason;
  };
  // The same as record(event, PackedFields) with a str() per member, but on
  // a thread with a Stage the members are packed straight into the stage
  // (one copy, no intermediate PackedFields).
  void recordRequest(std::string_view event, const RequestMembers& m);

  // Staging, for event loops. Between stage.attach(log) and stage.detach() on
  // a thread, every record() made on that thread into `log` is appended to the
  // stage instead (no queue slot, atomic or allocation per event) and reaches
  // the queue as one entry when the thread calls stage.publish() (an event
  // loop does once per iteration, before it blocks for I/O) or on its own once
  // the stage holds kStageMaxEvents events or kStageMaxBytes bytes. The writer
  // gives a stage's events consecutive seqs in the order they were recorded.
  // For the ordering guarantee above and for flush(), a staged event counts as
  // recorded when its stage is published. Never drops: a stage is published
  // like one record(). One Stage per thread; the AuditLog must outlive it;
  // destroying a Stage detaches it (publishing what it holds).
  class Stage {
   public:
    Stage() = default;
    ~Stage() { detach(); }
    Stage(const Stage&) = delete;
    Stage& operator=(const Stage&) = delete;
    // Binds this stage to `log` on the calling thread (null: detach()).
    void attach(AuditLog* log);
    // Publishes, then unbinds (when bound on the calling thread).
    void detach();
    // Hands every staged event to the queue as one entry (no-op when empty).
    void publish();
    // publish(), then wakes the writer if anything was published since this
    // stage last woke it and the writer's KickThrottle says it is due. For an
    // event loop, once per iteration, with its loop time (uv_now).
    void publishAndKick(uint64_t now_ms);

   private:
    friend class AuditLog;
    void add(std::string_view event, std::string_view fields, bool packed);
    void addRequest(std::string_view event, const RequestMembers& m);
    AuditLog* log_ = nullptr;
    std::string buf_;  // per event: name, a packed flag byte, fields (see add())
    uint32_t count_ = 0;
    bool unkicked_ = false;  // published since the last kick
  };
  static constexpr uint32_t kStageMaxEvents = 256;
  static constexpr size_t kStageMaxBytes = 64 * 1024;

  // Asks the writer to reopen the path (logrotate: rename, then reopen()). The
  // new file continues seq and prev from the last record of the old one and
  // is locked like start()'s; if it cannot be opened or locked, or the path
  // still names the current file, the writer keeps the current file.
  // Thread-safe, non-blocking, not async-signal-safe.
  void reopen();

  // Blocks until every event recorded before this call is written and
  // fdatasync()ed. Not from an event loop. Returns at once if not running.
  void flush();

  // Writes everything recorded before, fdatasync()s, joins the writer and
  // closes the file. Idempotent; a stopped log cannot be started again.
  void stop();

  // Called on the writer thread with each written line (including its '\n'),
  // after it was written to the file. For a SIEM sink; it must not block for
  // long. Set before start(), or when nothing else calls setTee() (the writer
  // reads it under the same tiny mutex as the keys).
  void setTee(std::function<void(std::string_view line)> tee);

  // Counters (relaxed reads; exact when quiescent).
  uint64_t written() const { return written_.load(std::memory_order_relaxed); }
  uint64_t overflowed() const { return overflowed_.load(std::memory_order_relaxed); }
  uint64_t lost() const { return lost_.load(std::memory_order_relaxed); }
  // Events recorded and not yet written.
  uint64_t depth() const;
  // The seq the next record will get (writer-owned; exact when quiescent).
  uint64_t nextSeq() const { return next_seq_pub_.load(std::memory_order_relaxed); }

 private:
  struct Event {
    std::string fields;
    bool packed = false;  // `fields` is a PackedFields packing
    std::string long_event;  // only when the name does not fit in `event`
    char event[40];
    uint8_t event_len = 0;
    uint32_t staged = 0;  // > 0: `fields` is a Stage's buffer holding this many events
    void setName(std::string_view name);
    std::string_view name() const;
  };
  struct Cell {
    std::atomic<size_t> seq;
    Event ev;
  };
  struct Barrier {  // flush(): set under flush_mu_ once everything before is synced
    bool done = false;
  };
  struct Node {  // overflow list node, or a flush barrier (barrier != nullptr)
    Node* next = nullptr;
    Event ev;
    Barrier* barrier = nullptr;
  };

  void enqueue(std::string_view event, std::string&& fields, bool packed, uint32_t staged);
  void run();
  void pushOverflow(Node* node);
  size_t drainRing(size_t limit, bool wait_claimed);
  bool drainOnce();
  // Formats one record into out_; `packed`: `fields` is a PackedFields
  // packing, else a members fragment (AuditFields).
  void emit(std::string_view event, std::string_view fields, bool packed);
  void emitEvent(const Event& ev);
  void writeOut(bool stopping);
  void syncNow();
  // Writes what file_ still holds back after a failed write, retrying for
  // 5 s, then counts its records lost().
  void giveUpHeld();
  void doReopen();
  void wakeWriter();
  void refreshKey();
  bool initChain(int fd, const KeyProvider& keys, std::string& error);
  // Formats the audit.torn record of the torn line [tail, size) of `fd`.
  bool emitTorn(int fd, off_t tail, off_t size, std::string& error);
  // Formats an audit_tamper `alert` record with `fields` after its kind and
  // adds its members to start_alerts_.
  void emitTamper(const AuditFields& fields);

  const size_t mask_;
  std::unique_ptr<Cell[]> cells_;
  alignas(64) std::atomic<size_t> enqueue_pos_{0};
  alignas(64) std::atomic<size_t> dequeue_pos_{0};
  alignas(64) std::atomic<Node*> overflow_head_{nullptr};
  // Overflow nodes pushed and not yet consumed by the writer; while > 0 every
  // record() takes the overflow path (ordering, see class comment).
  alignas(64) std::atomic<uint64_t> overflow_pending_{0};
  // record() calls between their accepting_ check and their publication; the
  // writer's final drain waits for 0 after accepting_ turned false.
  alignas(64) std::atomic<uint64_t> inflight_{0};
  alignas(64) std::atomic<uint32_t> sleeping_{0};
  alignas(64) KickThrottle kick_;
  std::atomic<bool> accepting_{true};
  std::atomic<bool> reopen_requested_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> running_{false};
  std::atomic<uint64_t> written_{0};
  std::atomic<uint64_t> overflowed_{0};
  // Events queued beyond one per entry (a staged entry holds several), so
  // that depth() and lost() count events.
  std::atomic<uint64_t> extra_events_{0};
  std::atomic<uint64_t> lost_{0};
  std::atomic<uint64_t> next_seq_pub_{1};

  // Handed from setKeys()/setTee() to the writer.
  std::mutex handoff_mu_;
  std::atomic<bool> key_pending_{false};
  std::unique_ptr<AuditMac> pending_mac_;
  std::atomic<bool> tee_pending_{false};
  std::function<void(std::string_view)> pending_tee_;

  std::mutex flush_mu_;
  std::condition_variable flush_cv_;

  // Writer thread state.
  std::string path_;
  LogFile file_;  // writer thread only: each sync drains, syncs and drops what it made durable
  std::unique_ptr<AuditMac> mac_;
  std::function<void(std::string_view)> tee_;
  uint64_t next_seq_ = 1;
  std::string prev_;  // 64 hex
  std::string out_;   // formatted, not yet written
  size_t out_records_ = 0;
  size_t out_written_bytes_ = 0;  // prefix of out_ already written
  bool dirty_ = false;            // written but not yet fdatasync()ed
  int64_t last_sync_us_ = 0;
  bool write_failing_ = false;
  int64_t now_us_ = 0;  // the ts of records formatted in the current batch
  std::string ts_text_;    // now_us_ as RFC 3339, formatted once per batch
  int64_t ts_text_us_ = 0;
  int64_t last_event_us_ = 0;  // monotonic time the writer last took an event

  std::vector<std::string> start_alerts_;  // see startAlerts()

  std::mutex lifecycle_mu_;
  bool started_ = false;
  bool stopped_ = false;
  std::thread thread_;
};

}  // namespace portcullis
