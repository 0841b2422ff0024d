#include "proxy/audit_log.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "proxy/access_log.h"
#include "proxy/background_thread.h"
#include "proxy/audit_verify.h"
#include "proxy/detect.h"
#include "proxy/errno_message.h"
#include "proxy/write_cursor.h"

namespace portcullis {

// ---------------------------------------------------------------------------
// AuditFields
// ---------------------------------------------------------------------------

void AuditFields::key(std::string_view k) {
  if (out_.empty()) {
    // One allocation for a typical record (a request's six members are ~150
    // bytes) instead of a doubling series of them.
    out_.reserve(256);
  } else {
    out_ += ',';
  }
  out_ += '"';
  appendJsonEscaped(k, out_);
  out_ += "\":";
}

AuditFields& AuditFields::str(std::string_view k, std::string_view value) {
  key(k);
  out_ += '"';
  appendJsonEscaped(value, out_);
  out_ += '"';
  return *this;
}

PackedFields& PackedFields::str(std::string_view k, std::string_view value) {
  // On the event loop, once per member of every event.
  const size_t need = 8 + k.size() + value.size();
  if (spill_.empty() && need <= kInline - len_) {
    char* p = writeLengthPrefixed(k, inline_ + len_);
    p = writeLengthPrefixed(value, p);
    len_ = static_cast<size_t>(p - inline_);
    return *this;
  }
  if (spill_.empty()) {
    spill_.reserve(2 * kInline + need);
    spill_.assign(inline_, len_);
  }
  WriteCursor w(spill_, need);
  w.moveTo(writeLengthPrefixed(k, w.at()));
  w.moveTo(writeLengthPrefixed(value, w.at()));
  return *this;
}

char* writePackedFields(std::string_view packed, char* p) {
  // What AuditFields::str writes for each member: the worst case is every
  // byte escaped to six, plus "":"" and a comma per member, which its two
  // 4-byte lengths (x6) more than cover.
  char* const start = p;
  size_t at = 0;
  std::string_view k;
  std::string_view v;
  while (readLengthPrefixed(packed, at, k) && readLengthPrefixed(packed, at, v)) {
    if (p != start) *p++ = ',';
    *p++ = '"';
    p = writeJsonEscaped(k, p);
    *p++ = '"';
    *p++ = ':';
    *p++ = '"';
    p = writeJsonEscaped(v, p);
    *p++ = '"';
  }
  return p;
}

void formatPackedFields(std::string_view packed, std::string& out) {
  WriteCursor w(out, packed.size() * kJsonEscapeMax);
  w.moveTo(writePackedFields(packed, w.at()));
}

AuditFields& AuditFields::num(std::string_view k, int64_t value) {
  key(k);
  char buf[24];
  out_.append(buf, std::to_chars(buf, buf + sizeof buf, value).ptr);
  return *this;
}

AuditFields& AuditFields::unum(std::string_view k, uint64_t value) {
  key(k);
  char buf[24];
  out_.append(buf, std::to_chars(buf, buf + sizeof buf, value).ptr);
  return *this;
}

// ---------------------------------------------------------------------------
// AuditLog
// ---------------------------------------------------------------------------

namespace {

// As LogWriter's writer (see kIdleWake in access_log.cc): kicked by the event
// loops every 5 ms while events keep coming (small batches), else every 20 ms.
constexpr int64_t kIdleWakeNs = 20 * 1000 * 1000;
constexpr size_t kWakeEvery = 1024;
constexpr int64_t kSyncEveryUs = 1000 * 1000;
// An idle writer syncs what it wrote once this much has passed since the last
// sync (it wakes at least every kIdleWakeNs to check), so a steady stream of
// events costs at most ~10 fdatasync a second instead of one per empty queue.
constexpr int64_t kSyncIdleUs = 100 * 1000;
// The stream counts as quiet (idle sync allowed) once no event was taken for
// this long (half an idle wake period, so one wake that finds nothing is
// enough). Under load the writer still empties the ring and sleeps between
// batches, but every wake finds new events, so those pauses are not idleness
// and cost no sync (before, they cost up to ten a second).
constexpr int64_t kQuietUs = kIdleWakeNs / 2000;
constexpr size_t kMaxBatch = 4096;
constexpr size_t kTailChunk = 64 * 1024;
// A last line longer than this is not read to see whether it parses.
constexpr size_t kMaxTailLine = 16u << 20;

int64_t nowUs() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

int64_t monoUs() { return monotonicUs(); }

void futexWait(std::atomic<uint32_t>* word, uint32_t expected, long timeout_ns) {
  struct timespec ts = {timeout_ns / 1000000000L, timeout_ns % 1000000000L};
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, &ts, nullptr, 0);
}

void futexWakeOne(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}

bool makeParentDirs(const std::string& path, std::string& error) {
  for (size_t pos = path.find('/', 1); pos != std::string::npos; pos = path.find('/', pos + 1)) {
    const std::string dir = path.substr(0, pos);
    if (dir.back() != '/' && mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST) {
      error = "cannot create directory " + dir + ": " + errnoMessage(errno);
      return false;
    }
  }
  return true;
}

int openAudit(const std::string& path, std::string& error) {
  if (!makeParentDirs(path, error)) return -1;
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (fd < 0) error = "cannot open audit log " + path + ": " + errnoMessage(errno);
  return fd;
}

// Takes a non-blocking exclusive flock() on `fd`, the audit log at `path`,
// held until the descriptor is closed: two writers on one file would fork
// its chain (each continues from the end it read).
bool lockAudit(int fd, const std::string& path, std::string& error) {
  while (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    error = errno == EWOULDBLOCK
                ? "audit log " + path + " is in use by another process (another portcullis with the same log.audit?)"
                : "cannot lock audit log " + path + ": " + errnoMessage(errno);
    return false;
  }
  return true;
}

bool preadAll(int fd, char* p, size_t n, off_t off) {
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, n, off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
    off += r;
  }
  return true;
}

bool writeAllFd(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Offset of the first byte of the line whose content ends at `content_end`
// (just after the '\n' before it, or 0). -1 on a read error.
off_t findLineStart(int fd, off_t content_end) {
  char buf[kTailChunk];
  off_t end = content_end;
  while (end > 0) {
    const off_t begin = end > static_cast<off_t>(kTailChunk) ? end - static_cast<off_t>(kTailChunk) : 0;
    if (!preadAll(fd, buf, static_cast<size_t>(end - begin), begin)) return -1;
    const void* nl = memrchr(buf, '\n', static_cast<size_t>(end - begin));
    if (nl != nullptr) return begin + (static_cast<const char*>(nl) - buf) + 1;
    end = begin;
  }
  return 0;
}

// The MAC context of the active key of `keys`, or nullptr with `error`.
std::unique_ptr<AuditMac> activeMac(const KeyProvider* keys, std::string& error) {
  if (keys == nullptr || !validKeyringId(keys->activeKeyId())) {
    error = "audit log: no valid active key in the keyring";
    return nullptr;
  }
  std::unique_ptr<AuditMac> m = AuditMac::create(*keys, keys->activeKeyId());
  if (!m) error = "audit log: active key '" + keys->activeKeyId() + "' is not in the keyring";
  return m;
}

size_t roundUpPow2(size_t n) {
  size_t c = 2;
  while (c < n) c <<= 1;
  return c;
}

}  // namespace

void AuditLog::Event::setName(std::string_view n) {
  if (n.size() <= sizeof event) {
    if (!n.empty()) std::memcpy(event, n.data(), n.size());
    event_len = static_cast<uint8_t>(n.size());
    if (!long_event.empty()) long_event.clear();
  } else {
    long_event.assign(n.data(), n.size());
  }
}

std::string_view AuditLog::Event::name() const {
  return long_event.empty() ? std::string_view(event, event_len) : std::string_view(long_event);
}

AuditLog::AuditLog(size_t capacity)
    : mask_(roundUpPow2(capacity) - 1), cells_(new Cell[mask_ + 1]), prev_(kAuditZeroMac) {
  for (size_t i = 0; i <= mask_; ++i) cells_[i].seq.store(i, std::memory_order_relaxed);
}

AuditLog::~AuditLog() { stop(); }

bool AuditLog::setKeys(const std::shared_ptr<const KeyProvider>& keys, std::string& error) {
  std::unique_ptr<AuditMac> m = activeMac(keys.get(), error);
  if (!m) return false;
  std::lock_guard<std::mutex> lock(handoff_mu_);
  pending_mac_ = std::move(m);
  key_pending_.store(true, std::memory_order_release);
  return true;
}

void AuditLog::setTee(std::function<void(std::string_view)> tee) {
  std::lock_guard<std::mutex> lock(handoff_mu_);
  pending_tee_ = std::move(tee);
  tee_pending_.store(true, std::memory_order_release);
  key_pending_.store(true, std::memory_order_release);  // makes the writer look
}

void AuditLog::refreshKey() {
  if (!key_pending_.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> lock(handoff_mu_);
  if (pending_mac_) mac_ = std::move(pending_mac_);
  if (tee_pending_.load(std::memory_order_relaxed)) {
    tee_ = std::move(pending_tee_);
    pending_tee_ = nullptr;
    tee_pending_.store(false, std::memory_order_relaxed);
  }
  key_pending_.store(false, std::memory_order_relaxed);
}

namespace {

// Reads [start, end) of `fd` into `line` and parses it into `rec` (views into
// `line`). -1: read error; 0: not a record (or longer than kMaxTailLine); 1: a record.
int readRecord(int fd, off_t start, off_t end, std::string& line, AuditLine& rec) {
  const size_t len = static_cast<size_t>(end - start);
  if (len > kMaxTailLine) return 0;
  line.resize(len);
  if (len > 0 && !preadAll(fd, line.data(), len, start)) return -1;
  return parseAuditLine(line, rec) ? 1 : 0;
}

// Whether the mac of `rec` (parsed from `line`) verifies; true when `keys`
// no longer holds its key (nothing to check it with).
bool lastMacVerifies(const KeyProvider& keys, std::string_view line, const AuditLine& rec) {
  std::unique_ptr<AuditMac> m = AuditMac::create(keys, rec.key_id);
  if (!m) return true;
  std::string hex;
  m->appendMacHex(rec.prev, line.substr(0, rec.mac_cut), hex);
  return hex == rec.mac;
}

}  // namespace

// Finds where the chain in `fd` ends (see start()), writes the missing '\n' of
// a torn tail, and formats the audit.torn record describing it.
//
// A crash can leave only the bytes after the last '\n' (one write cut short);
// complete lines after the last parsable record, or a last record whose mac
// does not verify, were edited. Then the log still starts (whoever can write
// the file must not be able to stop the proxy through it) but blesses
// nothing: no audit.torn covers the edited lines and the chain continues from
// the last parsable record, so `portcullisctl audit verify` keeps failing at
// the first edited line. Each finding is an error line on stderr and an
// audit_tamper alert record, chained like any record: it tells whoever reads
// the log, or its syslog copy, from the log itself, and lets the server
// raise it in real time (startAlerts()).
bool AuditLog::initChain(int fd, const KeyProvider& keys, std::string& error) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    error = "audit log " + path_ + ": " + errnoMessage(errno);
    return false;
  }
  const off_t size = st.st_size;
  if (size == 0) return true;
  char last = 0;
  if (!preadAll(fd, &last, 1, size - 1)) {
    error = "audit log " + path_ + ": read failed";
    return false;
  }
  std::string line;
  AuditLine rec;
  // [tail, size): the unterminated last line, if any.
  const off_t tail = last == '\n' ? size : findLineStart(fd, size);
  int got = tail < 0 ? -1 : 0;
  if (tail >= 0 && tail < size) got = readRecord(fd, tail, size, line, rec);
  const bool torn = got == 0 && tail < size;  // not a complete record that only lacks its '\n'
  off_t end = tail;  // the complete lines in [end, tail) do not parse
  uint64_t bad_lines = 0;
  while (got == 0 && end > 0) {
    const off_t start = findLineStart(fd, end - 1);
    got = start < 0 ? -1 : readRecord(fd, start, end - 1, line, rec);
    if (got == 0) {
      end = start;
      ++bad_lines;
    }
  }
  if (got < 0) {
    error = "audit log " + path_ + ": read failed";
    return false;
  }
  std::string last_seq = "the start of the file";
  uint64_t last_seq_num = 0;  // 0: no record
  bool bad_mac = false;
  if (got == 1) {
    next_seq_ = rec.seq + 1;
    prev_.assign(rec.mac.data(), rec.mac.size());
    last_seq_num = rec.seq;
    last_seq = "seq " + std::to_string(rec.seq);
    bad_mac = !lastMacVerifies(keys, line, rec);
    if (bad_mac) {
      std::fprintf(stderr, "portcullis: error: audit log %s: the mac of the last record (%s) does not verify: "
                   "it was edited; `portcullisctl audit verify` reports it\n", path_.c_str(), last_seq.c_str());
    }
  }
  if (end < tail) {
    std::fprintf(stderr, "portcullis: error: audit log %s: %lld bytes of complete lines after %s do not parse: "
                 "edited, not torn by a crash; left uncovered (`portcullisctl audit verify` reports them)\n",
                 path_.c_str(), static_cast<long long>(tail - end), last_seq.c_str());
  }
  if (tail < size && !writeAllFd(fd, "\n", 1)) {
    error = "audit log " + path_ + ": write failed: " + errnoMessage(errno);
    return false;
  }
  if (torn && end == tail && !emitTorn(fd, tail, size, error)) return false;
  if (bad_mac) emitTamper(AuditFields().str("found", "bad_mac").unum("seq", last_seq_num));
  if (end < tail) {
    emitTamper(AuditFields()
                   .str("found", "unparsable_lines")
                   .unum("bytes", static_cast<uint64_t>(tail - end))
                   .unum("lines", bad_lines)
                   .unum("after_seq", last_seq_num));
  }
  return true;
}

void AuditLog::emitTamper(const AuditFields& fields) {
  std::string members = AuditFields().str("kind", alertKindName(AlertKind::kAuditTamper)).take();
  members += ',';
  members += fields.view();
  emit("alert", members, false);
  start_alerts_.push_back(std::move(members));
}

bool AuditLog::emitTorn(int fd, off_t tail, off_t size, std::string& error) {
  // The torn line [tail, size), without the '\n' since added.
  SHA256_CTX sha;
  SHA256_Init(&sha);
  std::string chunk(kTailChunk, '\0');
  for (off_t off = tail; off < size;) {
    const size_t n = static_cast<size_t>(std::min<off_t>(size - off, static_cast<off_t>(kTailChunk)));
    if (!preadAll(fd, chunk.data(), n, off)) {
      error = "audit log " + path_ + ": read failed";
      return false;
    }
    SHA256_Update(&sha, chunk.data(), n);
    off += static_cast<off_t>(n);
  }
  uint8_t digest[32];
  SHA256_Final(digest, &sha);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (uint8_t b : digest) {
    hex += kHex[b >> 4];
    hex += kHex[b & 0xF];
  }
  // Not AuditFields: parseAuditLine expects exactly this layout.
  std::string fields = "\"torn_bytes\":" + std::to_string(size - tail) + ",\"torn_sha256\":\"" + hex + "\"";
  emit("audit.torn", fields, false);
  return true;
}

bool AuditLog::start(const std::string& path, const std::shared_ptr<const KeyProvider>& keys, std::string& error) {
  std::lock_guard<std::mutex> lock(lifecycle_mu_);
  if (started_ || stopped_) {
    error = "audit log already started";
    return false;
  }
  std::unique_ptr<AuditMac> m = activeMac(keys.get(), error);
  if (!m) return false;
  const int fd = openAudit(path, error);
  if (fd < 0) return false;
  if (!lockAudit(fd, path, error)) {
    ::close(fd);
    return false;
  }
  path_ = path;
  mac_ = std::move(m);
  now_us_ = nowUs();
  if (!initChain(fd, *keys, error)) {
    ::close(fd);
    out_.clear();
    out_records_ = 0;
    start_alerts_.clear();
    return false;
  }
  file_.adopt(fd, path);
  emit("audit.start", "\"pid\":" + std::to_string(::getpid()), false);
  next_seq_pub_.store(next_seq_, std::memory_order_relaxed);
  started_ = true;
  running_.store(true, std::memory_order_release);
  thread_ = startBackgroundThread("pc-audit", [this] { run(); });
  return true;
}

void AuditLog::wakeWriter() {
  if (sleeping_.exchange(0, std::memory_order_seq_cst) != 0) futexWakeOne(&sleeping_);
}

void AuditLog::pushOverflow(Node* node) {
  overflow_pending_.fetch_add(1, std::memory_order_seq_cst);
  Node* head = overflow_head_.load(std::memory_order_relaxed);
  do {
    node->next = head;
  } while (!overflow_head_.compare_exchange_weak(head, node, std::memory_order_release,
                                                 std::memory_order_relaxed));
}

namespace {
// The calling thread's stage, if it has one (see AuditLog::Stage).
thread_local AuditLog::Stage* t_audit_stage = nullptr;

// Calls f(key, value) for each member of a request event, in record order.
template <typename F>
void forEachRequestMember(const AuditLog::RequestMembers& m, F&& f) {
  f(std::string_view("request_id"), m.request_id);
  f(std::string_view("ip"), m.ip);
  f(std::string_view("method"), m.method);
  f(std::string_view("path"), m.path);
  if (!m.token_id.empty()) f(std::string_view("token_id"), m.token_id);
  if (!m.account.empty()) f(std::string_view("account"), m.account);
  if (!m.reason.empty()) f(std::string_view("reason"), m.reason);
}
}  // namespace

void AuditLog::recordRequest(std::string_view event, const RequestMembers& m) {
  if (Stage* st = t_audit_stage; st != nullptr && st->log_ == this) {
    st->addRequest(event, m);
    return;
  }
  PackedFields f;
  forEachRequestMember(m, [&f](std::string_view k, std::string_view v) { f.str(k, v); });
  record(event, f);
}

void AuditLog::record(std::string_view event, std::string&& fields) {
  if (Stage* st = t_audit_stage; st != nullptr && st->log_ == this) {
    st->add(event, fields, false);
    return;
  }
  enqueue(event, std::move(fields), false, 0);
}

void AuditLog::record(std::string_view event, const PackedFields& fields) {
  if (Stage* st = t_audit_stage; st != nullptr && st->log_ == this) {
    st->add(event, fields.view(), true);
    return;
  }
  enqueue(event, fields.take(), true, 0);
}

void AuditLog::Stage::attach(AuditLog* log) {
  if (log_ != nullptr && log_ != log) detach();
  log_ = log;
  t_audit_stage = log != nullptr ? this : nullptr;
}

void AuditLog::Stage::detach() {
  publish();
  if (t_audit_stage == this) t_audit_stage = nullptr;
  log_ = nullptr;
}

// Per event: the name length-prefixed, one byte (1: `fields` is packed), the
// fields length-prefixed.
void AuditLog::Stage::add(std::string_view event, std::string_view fields, bool packed) {
  if (buf_.capacity() == 0) buf_.reserve(4096);  // after a publish: one allocation per stage
  {
    WriteCursor w(buf_, 9 + event.size() + fields.size());
    w.moveTo(writeLengthPrefixed(event, w.at()));
    w.put(packed ? '\1' : '\0');
    w.moveTo(writeLengthPrefixed(fields, w.at()));
  }
  if (++count_ >= kStageMaxEvents || buf_.size() >= kStageMaxBytes) publish();
}

// The layout add() writes for a packed event, with PackedFields::str()'s
// packing (key and value, each length-prefixed) built in place.
void AuditLog::Stage::addRequest(std::string_view event, const RequestMembers& m) {
  if (buf_.capacity() == 0) buf_.reserve(4096);
  size_t packed = 0;
  forEachRequestMember(m, [&packed](std::string_view k, std::string_view v) { packed += 8 + k.size() + v.size(); });
  {
    WriteCursor w(buf_, 9 + event.size() + packed);
    char* p = writeLengthPrefixed(event, w.at());
    *p++ = '\1';
    const auto len = static_cast<uint32_t>(packed);
    std::memcpy(p, &len, 4);
    p += 4;
    forEachRequestMember(m, [&p](std::string_view k, std::string_view v) {
      p = writeLengthPrefixed(k, p);
      p = writeLengthPrefixed(v, p);
    });
    w.moveTo(p);
  }
  if (++count_ >= kStageMaxEvents || buf_.size() >= kStageMaxBytes) publish();
}

void AuditLog::Stage::publish() {
  if (count_ == 0) return;
  if (log_ != nullptr) log_->enqueue({}, std::move(buf_), false, count_);
  buf_ = std::string();
  count_ = 0;
  unkicked_ = true;
}

void AuditLog::Stage::publishAndKick(uint64_t now_ms) {
  publish();
  if (log_ != nullptr && log_->kick_.dueFor(unkicked_, now_ms)) log_->wakeWriter();
}

void AuditLog::enqueue(std::string_view event, std::string&& fields, bool packed, uint32_t staged) {
  const uint64_t events = staged > 0 ? staged : 1;
  inflight_.fetch_add(1, std::memory_order_seq_cst);
  if (!accepting_.load(std::memory_order_seq_cst)) {
    inflight_.fetch_sub(1, std::memory_order_release);
    lost_.fetch_add(events, std::memory_order_relaxed);
    return;
  }
  if (events > 1) extra_events_.fetch_add(events - 1, std::memory_order_relaxed);
  if (overflow_pending_.load(std::memory_order_seq_cst) == 0) {
    size_t pos = enqueue_pos_.load(std::memory_order_relaxed);
    for (;;) {
      Cell* cell = &cells_[pos & mask_];
      const size_t seq = cell->seq.load(std::memory_order_acquire);
      const intptr_t dif = static_cast<intptr_t>(seq) - static_cast<intptr_t>(pos);
      if (dif == 0) {
        if (enqueue_pos_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) {
          cell->ev.setName(event);
          cell->ev.fields = std::move(fields);
          cell->ev.packed = packed;
          cell->ev.staged = staged;
          cell->seq.store(pos + 1, std::memory_order_seq_cst);
          inflight_.fetch_sub(1, std::memory_order_release);
          if ((pos & (kWakeEvery - 1)) == kWakeEvery - 1 && sleeping_.load(std::memory_order_seq_cst) != 0) {
            wakeWriter();
          }
          return;
        }
      } else if (dif < 0) {
        break;  // full: overflow path
      } else {
        pos = enqueue_pos_.load(std::memory_order_relaxed);
      }
    }
  }
  Node* node = new Node;
  node->ev.setName(event);
  node->ev.fields = std::move(fields);
  node->ev.packed = packed;
  node->ev.staged = staged;
  overflowed_.fetch_add(events, std::memory_order_relaxed);
  pushOverflow(node);
  inflight_.fetch_sub(1, std::memory_order_release);
  if (sleeping_.load(std::memory_order_seq_cst) != 0) wakeWriter();
}

void AuditLog::reopen() {
  reopen_requested_.store(true, std::memory_order_seq_cst);
  wakeWriter();
}

void AuditLog::flush() {
  if (!running_.load(std::memory_order_acquire)) return;
  inflight_.fetch_add(1, std::memory_order_seq_cst);
  if (!accepting_.load(std::memory_order_seq_cst)) {
    inflight_.fetch_sub(1, std::memory_order_release);
    return;
  }
  Barrier barrier;
  Node* node = new Node;
  node->barrier = &barrier;
  pushOverflow(node);
  inflight_.fetch_sub(1, std::memory_order_release);
  wakeWriter();
  std::unique_lock<std::mutex> lock(flush_mu_);
  flush_cv_.wait(lock, [&] { return barrier.done; });
}

void AuditLog::stop() {
  std::lock_guard<std::mutex> lock(lifecycle_mu_);
  if (stopped_) return;
  stopped_ = true;
  accepting_.store(false, std::memory_order_seq_cst);
  if (thread_.joinable()) {
    stopping_.store(true, std::memory_order_seq_cst);
    wakeWriter();
    thread_.join();
  } else {
    // Never started: events recorded so far cannot be written.
    while (inflight_.load(std::memory_order_seq_cst) != 0) sched_yield();
    lost_.fetch_add(depth(), std::memory_order_relaxed);
    for (Node* n = overflow_head_.exchange(nullptr); n != nullptr;) {
      Node* next = n->next;
      delete n;
      n = next;
    }
  }
  running_.store(false, std::memory_order_release);
  file_.close();
}

uint64_t AuditLog::depth() const {
  const size_t enq = enqueue_pos_.load(std::memory_order_relaxed);
  const size_t deq = dequeue_pos_.load(std::memory_order_relaxed);
  return (enq > deq ? enq - deq : 0) + overflow_pending_.load(std::memory_order_relaxed) +
         extra_events_.load(std::memory_order_relaxed);
}

void AuditLog::emitEvent(const Event& ev) {
  if (ev.staged > 0) {  // a Stage's buffer: see Stage::add for the layout
    const std::string_view all(ev.fields);
    size_t at = 0;
    std::string_view name;
    std::string_view fields;
    for (uint32_t k = 0; k < ev.staged; ++k) {
      if (!readLengthPrefixed(all, at, name) || at >= all.size()) break;
      const bool packed = all[at++] != 0;
      if (!readLengthPrefixed(all, at, fields)) break;
      emit(name, fields, packed);
    }
    extra_events_.fetch_sub(ev.staged - 1, std::memory_order_relaxed);
    return;
  }
  emit(ev.name(), ev.fields, ev.packed);
}

void AuditLog::emit(std::string_view event, std::string_view fields, bool packed) {
  // Per event, so that an event recorded after setKeys() returned is always
  // signed with the new key (setKeys publishes before that record() does).
  refreshKey();
  // Every record of a batch has the same ts: format it once per batch.
  if (ts_text_us_ != now_us_ || ts_text_.empty()) {
    ts_text_.clear();
    appendRfc3339Micros(now_us_, ts_text_);
    ts_text_us_ = now_us_;
  }
  const std::string_view key_id = mac_->keyId();
  // Written through a cursor into room for the record's longest form: 128
  // for the member names and punctuation (60 bytes), a 20-digit seq, every
  // byte of the event name escaped to six, the members (a packing formatted:
  // every byte escaped to six, see writePackedFields), the 64-digit MAC.
  WriteCursor w(out_, 128 + WriteCursor::kMaxDigits + ts_text_.size() + event.size() * kJsonEscapeMax +
                          fields.size() * (packed ? kJsonEscapeMax : 1) + key_id.size() + prev_.size() + 64);
  const char* const start = w.at();
  w.lit("{\"seq\":");
  w.number(next_seq_);
  w.lit(",\"ts\":\"");
  w.put(ts_text_);
  w.lit("\",\"event\":\"");
  w.moveTo(writeJsonEscaped(event, w.at()));
  w.put('"');
  if (packed) {  // formatted straight into the record; escaped: no raw CR or LF
    if (!fields.empty()) {
      w.put(',');
      w.moveTo(writePackedFields(fields, w.at()));
    }
  } else if (!fields.empty()) {
    w.put(',');
    char* const f = w.at();
    w.put(fields);
    // AuditFields never produces a raw CR or LF; memchr finds a stray one fast.
    if (std::memchr(fields.data(), '\n', fields.size()) != nullptr ||
        std::memchr(fields.data(), '\r', fields.size()) != nullptr) {
      for (char* c = f; c < w.at(); ++c) {
        if (*c == '\n' || *c == '\r') *c = ' ';
      }
    }
  }
  w.lit(",\"key_id\":\"");
  w.put(key_id);
  w.lit("\",\"prev\":\"");
  w.put(prev_);
  w.put('"');
  uint8_t mac[32];
  mac_->mac(prev_, w.since(start), mac);
  w.lit(",\"mac\":\"");
  static constexpr char kHexDigits[] = "0123456789abcdef";
  char hex[64];
  for (size_t i = 0; i < sizeof mac; ++i) {
    hex[2 * i] = kHexDigits[mac[i] >> 4];
    hex[2 * i + 1] = kHexDigits[mac[i] & 0xF];
  }
  w.put(std::string_view(hex, sizeof hex));
  w.lit("\"}\n");
  prev_.assign(hex, sizeof hex);  // capacity 64 already: no allocation
  ++next_seq_;
  ++out_records_;
}

// Moves up to `limit` published events from the ring into out_. With
// `wait_claimed`, a cell claimed but not yet published is waited for (its
// producer is between two stores) instead of ending the batch.
size_t AuditLog::drainRing(size_t limit, bool wait_claimed) {
  size_t pos = dequeue_pos_.load(std::memory_order_relaxed);
  size_t n = 0;
  while (n < limit) {
    Cell& cell = cells_[pos & mask_];
    if (cell.seq.load(std::memory_order_acquire) != pos + 1) {
      if (!wait_claimed) break;
      sched_yield();
      continue;
    }
    emitEvent(cell.ev);
    std::string().swap(cell.ev.fields);
    cell.seq.store(pos + mask_ + 1, std::memory_order_release);
    ++pos;
    ++n;
    dequeue_pos_.store(pos, std::memory_order_relaxed);
  }
  return n;
}

// One step of the writer: formats the next events into out_ in order.
// Returns whether there was anything to take.
bool AuditLog::drainOnce() {
  now_us_ = nowUs();
  Node* list = overflow_head_.exchange(nullptr, std::memory_order_acq_rel);
  if (list == nullptr) return drainRing(kMaxBatch, false) > 0;
  // Everything claimed in the ring before these nodes were pushed goes first.
  const size_t target = enqueue_pos_.load(std::memory_order_seq_cst);
  const size_t deq = dequeue_pos_.load(std::memory_order_relaxed);
  if (target > deq) drainRing(target - deq, true);
  Node* fifo = nullptr;
  while (list != nullptr) {
    Node* next = list->next;
    list->next = fifo;
    fifo = list;
    list = next;
  }
  while (fifo != nullptr) {
    Node* next = fifo->next;
    if (fifo->barrier != nullptr) {
      writeOut(false);
      syncNow();
      overflow_pending_.fetch_sub(1, std::memory_order_seq_cst);
      std::lock_guard<std::mutex> lock(flush_mu_);
      fifo->barrier->done = true;
      flush_cv_.notify_all();
    } else {
      emitEvent(fifo->ev);
      overflow_pending_.fetch_sub(1, std::memory_order_seq_cst);
    }
    delete fifo;
    fifo = next;
  }
  return true;
}

void AuditLog::writeOut(bool stopping) {
  if (out_written_bytes_ == out_.size()) {
    out_.clear();
    out_written_bytes_ = 0;
    return;
  }
  const int64_t first_failure = monoUs();
  while (out_written_bytes_ < out_.size()) {
    const ssize_t w = file_.append(out_.data() + out_written_bytes_, out_.size() - out_written_bytes_, monoUs());
    if (w > 0) {
      out_written_bytes_ += static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (!write_failing_) {
      std::fprintf(stderr, "portcullis: writing audit log %s failed: %s; retrying\n", path_.c_str(),
                   errnoMessage(errno).c_str());
      write_failing_ = true;
    }
    if ((stopping || stopping_.load(std::memory_order_relaxed)) && monoUs() - first_failure > 5000000) {
      std::fprintf(stderr, "portcullis: audit log %s: giving up on %zu records at shutdown\n", path_.c_str(),
                   out_records_);
      lost_.fetch_add(out_records_, std::memory_order_relaxed);
      out_.clear();
      out_written_bytes_ = 0;
      out_records_ = 0;
      return;
    }
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, nullptr);
  }
  write_failing_ = false;
  dirty_ = true;
  written_.fetch_add(out_records_, std::memory_order_relaxed);
  if (tee_) {
    std::string_view all(out_);
    while (!all.empty()) {
      const size_t nl = all.find('\n');
      tee_(all.substr(0, nl + 1));
      all.remove_prefix(nl + 1);
    }
  }
  out_.clear();
  out_written_bytes_ = 0;
  out_records_ = 0;
}

void AuditLog::syncNow() {
  // A failed sync (held bytes not written, or fdatasync failed) is retried
  // at the next one; the data path does not wait for it.
  if (dirty_ && file_.isOpen()) dirty_ = !file_.sync();
  last_sync_us_ = monoUs();
}

void AuditLog::giveUpHeld() {
  const int64_t first_failure = monoUs();
  while (file_.held() > 0 && !file_.drain()) {
    if (monoUs() - first_failure > 5000000) {
      const size_t lost = file_.discardHeld();
      std::fprintf(stderr, "portcullis: audit log %s: giving up on %zu records: %s\n", path_.c_str(), lost,
                   errnoMessage(errno).c_str());
      lost_.fetch_add(lost, std::memory_order_relaxed);
      return;
    }
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, nullptr);
  }
}

void AuditLog::doReopen() {
  std::string error;
  const int fd = openAudit(path_, error);
  if (fd < 0) {
    std::fprintf(stderr, "portcullis: reopening audit log failed, keeping the old file: %s\n", error.c_str());
    return;
  }
  struct stat now {}, cur {};
  if (::fstat(fd, &now) == 0 && ::fstat(file_.fd(), &cur) == 0 && now.st_dev == cur.st_dev &&
      now.st_ino == cur.st_ino) {
    ::close(fd);  // not rotated: the file we hold (and have locked)
    return;
  }
  if (!lockAudit(fd, path_, error)) {
    std::fprintf(stderr, "portcullis: reopening audit log failed, keeping the old file: %s\n", error.c_str());
    ::close(fd);
    return;
  }
  giveUpHeld();  // syncNow() ran before: only a write failure leaves bytes held
  file_.adopt(fd, path_);
  write_failing_ = false;
}

void AuditLog::run() {
  last_sync_us_ = monoUs();
  for (;;) {
    refreshKey();
    if (reopen_requested_.exchange(false, std::memory_order_acq_rel)) {
      writeOut(false);
      syncNow();
      doReopen();
    }
    const bool stopping = stopping_.load(std::memory_order_acquire);
    const bool got = drainOnce();
    writeOut(stopping);
    (void)file_.drainIfStale(monoUs());
    next_seq_pub_.store(next_seq_, std::memory_order_relaxed);
    if (dirty_) {
      // Under steady load every wake finds events: one sync a second. Once a
      // whole sleep passed without any (the stream went quiet), sync what is
      // left, at most once per kSyncIdleUs.
      const int64_t now = monoUs();
      if (got) last_event_us_ = now;
      const int64_t since_sync = now - last_sync_us_;
      if (since_sync >= kSyncEveryUs || (!got && now - last_event_us_ >= kQuietUs && since_sync >= kSyncIdleUs)) {
        syncNow();
      }
    }
    if (got) continue;
    if (stopping) break;
    sleeping_.store(1, std::memory_order_seq_cst);
    const size_t pos = dequeue_pos_.load(std::memory_order_relaxed);
    const bool ready = cells_[pos & mask_].seq.load(std::memory_order_seq_cst) == pos + 1 ||
                       overflow_head_.load(std::memory_order_seq_cst) != nullptr ||
                       stopping_.load(std::memory_order_seq_cst) ||
                       reopen_requested_.load(std::memory_order_seq_cst);
    if (!ready) futexWait(&sleeping_, 1, kIdleWakeNs);
    sleeping_.store(0, std::memory_order_relaxed);
  }
  // accepting_ is false: wait for record() calls already past their check,
  // then write everything they published.
  while (inflight_.load(std::memory_order_seq_cst) != 0) sched_yield();
  while (drainOnce()) writeOut(true);
  writeOut(true);
  syncNow();
  giveUpHeld();
  next_seq_pub_.store(next_seq_, std::memory_order_relaxed);
}

}  // namespace portcullis
