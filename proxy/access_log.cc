#include "proxy/access_log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <charconv>
#include <cstdint>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "proxy/background_thread.h"
#include "proxy/errno_message.h"
#include "proxy/short_copy.h"
#include "proxy/write_cursor.h"

namespace portcullis {

// ---------------------------------------------------------------------------
// JSON formatting
// ---------------------------------------------------------------------------

namespace {

constexpr char kHex[] = "0123456789abcdef";

// Length of the well-formed UTF-8 sequence starting at s[i], or 0 if the byte at
// s[i] does not start one (RFC 3629 table 3-7: no overlongs, no surrogates, no
// code points above U+10FFFF).
size_t utf8SequenceLength(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const auto cont = [&](size_t k) { return (b(k) & 0xC0) == 0x80; };
  const size_t left = s.size() - i;
  const unsigned char c = b(0);
  if (c >= 0xC2 && c <= 0xDF) return left >= 2 && cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (left < 3 || !cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && b(1) < 0xA0) return 0;   // overlong
    if (c == 0xED && b(1) >= 0xA0) return 0;  // UTF-16 surrogate
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (left < 4 || !cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && b(1) < 0x90) return 0;   // overlong
    if (c == 0xF4 && b(1) >= 0x90) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

template <typename T>
void appendNumber(T v, std::string& out) {
  char buf[24];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, res.ptr);
}

// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
// civil_from_days), valid for the whole int64 microsecond range.
void civilFromDays(int64_t z, int64_t& y, unsigned& m, unsigned& d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  y = static_cast<int64_t>(yoe) + era * 400 + (m <= 2 ? 1 : 0);
}

void appendDigits(uint64_t v, int width, std::string& out) {
  char buf[20];
  for (int i = width - 1; i >= 0; --i) {
    buf[i] = static_cast<char>('0' + v % 10);
    v /= 10;
  }
  out.append(buf, static_cast<size_t>(width));
}

}  // namespace

char* writeJsonEscapedSlow(std::string_view s, char* p) {
  using json_detail::anyNeedsEscape;
  size_t run = 0;  // start of the pending run of bytes copied verbatim
  size_t i = 0;
  auto flush = [&](size_t end) {
    if (end > run) std::memcpy(p, s.data() + run, end - run);
    p += end - run;
  };
  while (i < s.size()) {
    if (i + 8 <= s.size()) {  // 8 plain bytes at a time
      uint64_t w;
      std::memcpy(&w, s.data() + i, 8);
      if (!anyNeedsEscape(w)) {
        i += 8;
        continue;
      }
    }
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') {
      ++i;
      continue;
    }
    if (c >= 0x80) {
      if (size_t n = utf8SequenceLength(s, i)) {
        i += n;
        continue;
      }
    }
    flush(i);
    if (c == '"') {
      std::memcpy(p, "\\\"", 2);
      p += 2;
    } else if (c == '\\') {
      std::memcpy(p, "\\\\", 2);
      p += 2;
    } else if (c >= 0x80) {
      std::memcpy(p, "\\ufffd", 6);
      p += 6;
    } else {  // control character or DEL
      const char esc[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xF]};
      std::memcpy(p, esc, sizeof esc);
      p += sizeof esc;
    }
    run = ++i;
  }
  flush(s.size());
  return p;
}

void appendJsonEscaped(std::string_view s, std::string& out) {
  if (jsonPlain(s)) {  // the usual case: no room to reserve for escapes
    out.append(s);
    return;
  }
  const size_t at = out.size();
  out.resize(at + s.size() * kJsonEscapeMax);
  char* end = writeJsonEscaped(s, out.data() + at);
  out.resize(static_cast<size_t>(end - out.data()));
}

namespace {
// Any timestamp, formatted from scratch (civil date arithmetic).
void appendRfc3339MicrosSlow(int64_t ts_unix_us, std::string& out);
}  // namespace

namespace {
// Room writeRfc3339Micros needs: 27 bytes for years 1970..9999, a few more
// for the signed six-digit years of the int64 microsecond range.
constexpr size_t kRfc3339Max = 40;

char* writeRfc3339Micros(int64_t ts_unix_us, char* p) {
  // Records come in bursts within one second: the date and time of day are
  // formatted once per second per thread, only the microseconds each time.
  struct SecondCache {
    int64_t second = INT64_MIN;
    char text[24];  // "YYYY-MM-DDTHH:MM:SS."
  };
  thread_local SecondCache cache;
  const int64_t second = ts_unix_us >= 0 ? ts_unix_us / 1000000 : -1;
  if (second >= 0 && second < 253402300800LL) {  // years 1970 .. 9999
    if (cache.second != second) {
      std::string t;
      t.reserve(32);
      appendRfc3339MicrosSlow(second * 1000000, t);  // "....:SS.000000Z"
      std::memcpy(cache.text, t.data(), 20);
      cache.second = second;
    }
    std::memcpy(p, cache.text, 20);
    uint64_t us = static_cast<uint64_t>(ts_unix_us % 1000000);
    for (int i = 25; i >= 20; --i) {
      p[i] = static_cast<char>('0' + us % 10);
      us /= 10;
    }
    p[26] = 'Z';
    return p + 27;
  }
  std::string t;
  appendRfc3339MicrosSlow(ts_unix_us, t);
  return p + t.copy(p, kRfc3339Max);  // never more than ~30 bytes
}
}  // namespace

void appendRfc3339Micros(int64_t ts_unix_us, std::string& out) {
  char buf[kRfc3339Max];
  const char* end = writeRfc3339Micros(ts_unix_us, buf);
  out.append(buf, static_cast<size_t>(end - buf));
}

namespace {
void appendRfc3339MicrosSlow(int64_t ts_unix_us, std::string& out) {
  constexpr int64_t kUsPerDay = 86400LL * 1000000;
  int64_t days = ts_unix_us / kUsPerDay;
  int64_t rem = ts_unix_us % kUsPerDay;
  if (rem < 0) {
    rem += kUsPerDay;
    --days;
  }
  int64_t year;
  unsigned month, day;
  civilFromDays(days, year, month, day);
  const uint64_t us_of_day = static_cast<uint64_t>(rem);
  const uint64_t secs = us_of_day / 1000000;
  if (year < 0 || year > 9999) {
    // RFC 3339 has four-digit years only; out-of-range clocks stay parseable.
    appendNumber(year, out);
  } else {
    appendDigits(static_cast<uint64_t>(year), 4, out);
  }
  out += '-';
  appendDigits(month, 2, out);
  out += '-';
  appendDigits(day, 2, out);
  out += 'T';
  appendDigits(secs / 3600, 2, out);
  out += ':';
  appendDigits(secs / 60 % 60, 2, out);
  out += ':';
  appendDigits(secs % 60, 2, out);
  out += '.';
  appendDigits(us_of_day % 1000000, 6, out);
  out += 'Z';
}
}  // namespace

namespace {
// Packing: the fixed-size numbers, then each string as a 4-byte length and
// its bytes, in kPackedStrings order.
struct PackedNumbers {
  int64_t ts_unix_us;
  uint64_t bytes_in, bytes_out, duration_us;
  int32_t status, upstream_status;
};
constexpr std::string_view AccessRecord::*kPackedStrings[] = {
    &AccessRecord::request_id, &AccessRecord::remote_ip, &AccessRecord::peer_ip,     &AccessRecord::method,
    &AccessRecord::path,       &AccessRecord::upstream,  &AccessRecord::token_id,    &AccessRecord::account,
    &AccessRecord::tls_version, &AccessRecord::rejected_by, &AccessRecord::reason};
}  // namespace

void packAccessRecord(const AccessRecord& r, std::string& out) {
  // Once per request on the event loop: one reservation, plain copies.
  const PackedNumbers nums{r.ts_unix_us, r.bytes_in, r.bytes_out, r.duration_us, r.status, r.upstream_status};
  size_t total = sizeof nums + 4 * std::size(kPackedStrings);
  for (auto field : kPackedStrings) total += (r.*field).size();
  WriteCursor w(out, total);
  w.put(std::string_view(reinterpret_cast<const char*>(&nums), sizeof nums));
  for (auto field : kPackedStrings) w.moveTo(writeLengthPrefixed(r.*field, w.at()));
}

void formatPackedAccessRecord(std::string_view packed, std::string& out) {
  PackedNumbers nums;
  if (packed.size() < sizeof nums) return;  // not a packing: nothing to write
  std::memcpy(&nums, packed.data(), sizeof nums);
  AccessRecord r;
  r.ts_unix_us = nums.ts_unix_us;
  r.bytes_in = nums.bytes_in;
  r.bytes_out = nums.bytes_out;
  r.duration_us = nums.duration_us;
  r.status = nums.status;
  r.upstream_status = nums.upstream_status;
  const char* q = packed.data() + sizeof nums;
  const char* const end = packed.data() + packed.size();
  for (auto field : kPackedStrings) {  // readLengthPrefixed's layout, unrolled for the writer's loop
    uint32_t len;
    if (end - q < 4) return;
    std::memcpy(&len, q, 4);
    q += 4;
    if (static_cast<size_t>(end - q) < len) return;
    r.*field = std::string_view(q, len);
    q += len;
  }
  formatAccessRecord(r, out);
}

namespace {
// The pieces of a JSON line, written through a WriteCursor.
// ,"key":  (`key` needs no escaping: callers pass literals)
template <size_t N>
void putKey(WriteCursor& w, const char (&k)[N]) {
  w.lit(",\"");
  w.lit(k);
  w.lit("\":");
}
template <size_t N>
void putString(WriteCursor& w, const char (&k)[N], std::string_view v) {
  putKey(w, k);
  w.put('"');
  w.moveTo(writeJsonEscaped(v, w.at()));
  w.put('"');
}
template <size_t N>
void putOptional(WriteCursor& w, const char (&k)[N], std::string_view v) {
  if (!v.empty()) putString(w, k, v);
}

// What an access line holds besides its escaped strings, at most: every
// member name with its punctuation (,"": and two quotes), the opening
// {"ts":"", the timestamp, two nulls, five numbers and the closing }\n.
constexpr std::string_view kAccessKeys[] = {
    "request_id", "remote_ip", "method",  "path",        "status",      "bytes_in", "bytes_out", "duration_us",
    "upstream",   "upstream_status", "peer_ip", "token_id", "account", "tls_version", "rejected_by", "reason"};
constexpr size_t kAccessFixedMax = [] {
  size_t n = 8 + kRfc3339Max + 8 + 5 * WriteCursor::kMaxDigits + 2;
  for (std::string_view k : kAccessKeys) n += k.size() + 6;
  return n;
}();
}  // namespace

void formatAccessRecord(const AccessRecord& r, std::string& out) {
  std::string_view path = r.path;
  if (size_t q = path.find('?'); q != std::string_view::npos) path = path.substr(0, q);
  size_t bound = kAccessFixedMax;
  for (std::string_view v : {r.request_id, r.remote_ip, r.method, path, r.upstream, r.peer_ip, r.token_id, r.account,
                             r.tls_version, r.rejected_by, r.reason}) {
    bound += v.size() * kJsonEscapeMax;
  }
  WriteCursor c(out, bound);
  c.lit("{\"ts\":\"");
  c.moveTo(writeRfc3339Micros(r.ts_unix_us, c.at()));
  c.put('"');
  putString(c, "request_id", r.request_id);
  putString(c, "remote_ip", r.remote_ip);
  putString(c, "method", r.method);
  putString(c, "path", path);
  putKey(c, "status");
  c.number(r.status);
  putKey(c, "bytes_in");
  c.number(r.bytes_in);
  putKey(c, "bytes_out");
  c.number(r.bytes_out);
  putKey(c, "duration_us");
  c.number(r.duration_us);
  if (r.upstream.empty()) {
    putKey(c, "upstream");
    c.lit("null");
  } else {
    putString(c, "upstream", r.upstream);
  }
  putKey(c, "upstream_status");
  if (r.upstream_status == 0) {
    c.lit("null");
  } else {
    c.number(r.upstream_status);
  }
  if (r.peer_ip != r.remote_ip) putOptional(c, "peer_ip", r.peer_ip);
  putOptional(c, "token_id", r.token_id);
  putOptional(c, "account", r.account);
  putOptional(c, "tls_version", r.tls_version);
  putOptional(c, "rejected_by", r.rejected_by);
  putOptional(c, "reason", r.reason);
  c.lit("}\n");
}

// ---------------------------------------------------------------------------
// LogWriter
// ---------------------------------------------------------------------------

namespace {

// Producers wake the writer only every kWakeEveryLines entries: a futex wake
// per request cost more CPU on the event loop than formatting the line
// (measured with perf under wrk). While lines keep coming the event loops
// kick it every 5 ms (writer_kick.h), so it writes small batches: with 20 ms
// batches (~1,600 lines at 80k req/s, ~0.6 ms of writer CPU, the audit
// writer's twice that) a writer that landed on an event loop's CPU held the
// loop up: same-run A/B, logs on, 64 conns, p99 1.95 ms at 20 ms, 1.57 at
// 2 ms, ~1.6 at 5 or 10 ms; 2 ms cost the writers ~0.25 us more CPU per
// request than 5 ms (smaller writes, colder caches). Otherwise it wakes on
// its own every kIdleWake, so an idle proxy costs 50 wakes a second. Lines
// reach the file within kIdleWake at a light load, within ~LogFile's
// max_hold_us + kIdleWake under load (log_file.h: large batches are held
// back for a direct write); flush() and stop() wake it at once.
constexpr auto kIdleWake = std::chrono::milliseconds(20);
constexpr size_t kWakeEveryLines = 1024;

void futexWait(std::atomic<uint32_t>* word, uint32_t expected, long timeout_ns) {
  struct timespec ts = {timeout_ns / 1000000000L, timeout_ns % 1000000000L};
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, &ts,
          nullptr, 0);
}

void futexWakeOne(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, 1, nullptr,
          nullptr, 0);
}

size_t roundUpPow2(size_t n) {
  size_t c = 2;
  while (c < n) c <<= 1;
  return c;
}

// mkdir -p for the directories above `path`.
bool makeParents(const std::string& path, std::string& error) {
  for (size_t pos = path.find('/', 1); pos != std::string::npos;
       pos = path.find('/', pos + 1)) {
    std::string dir = path.substr(0, pos);
    if (dir.empty() || dir.back() == '/') continue;
    if (mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST) {
      error = "cannot create directory " + dir + ": " + errnoMessage(errno);
      return false;
    }
  }
  return true;
}

int openLog(const std::string& path, std::string& error) {
  if (!makeParents(path, error)) return -1;
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (fd < 0) error = "cannot open " + path + ": " + errnoMessage(errno);
  return fd;
}

}  // namespace

LogWriter::LogWriter(size_t capacity)
    : mask_(roundUpPow2(capacity) - 1),
      cells_(new Cell[mask_ + 1]),
      batch_(new Item[kMaxBatch]) {
  for (size_t i = 0; i <= mask_; ++i) cells_[i].seq.store(i, std::memory_order_relaxed);
}

LogWriter::~LogWriter() { stop(); }

bool LogWriter::start(const std::string& path, std::string& error) {
  std::lock_guard<std::mutex> lock(lifecycle_mu_);
  if (started_ || stopped_) {
    error = "log writer already started";
    return false;
  }
  if (path.empty()) {
    discard_.store(true, std::memory_order_relaxed);
    started_ = true;
    // Lines queued before start() are discarded too.
    while (collectBatch() > 0) {
      for (size_t i = 0; i < batch_len_; ++i) std::string().swap(batch_[i].text);
      batch_len_ = 0;
      batch_lines_ = 0;
    }
    return true;
  }
  int fd = openLog(path, error);
  if (fd < 0) return false;
  path_ = path;
  file_.adopt(fd, path);
  started_ = true;
  running_.store(true, std::memory_order_release);

  thread_ = startBackgroundThread("pc-logwriter", [this] { run(); });
  return true;
}

bool LogWriter::submit(std::string&& line) { return submit(std::move(line), nullptr); }

bool LogWriter::submit(std::string&& line, Formatter format) { return enqueue(std::move(line), format, 1, false); }

bool LogWriter::enqueue(std::string&& text, Formatter format, uint32_t lines, bool staged) {
  if (discard_.load(std::memory_order_relaxed)) return true;
  if (!accepting_.load(std::memory_order_relaxed)) {
    dropped_.fetch_add(lines, std::memory_order_relaxed);
    return false;
  }
  // A staged entry holds many lines: the bound is on lines, not entries.
  if (staged && depth() + lines > mask_ + 1) {
    dropped_.fetch_add(lines, std::memory_order_relaxed);
    return false;
  }
  size_t pos = enqueue_pos_.load(std::memory_order_relaxed);
  Cell* cell;
  for (;;) {
    cell = &cells_[pos & mask_];
    const size_t seq = cell->seq.load(std::memory_order_acquire);
    const intptr_t dif = static_cast<intptr_t>(seq) - static_cast<intptr_t>(pos);
    if (dif == 0) {
      if (enqueue_pos_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) break;
    } else if (dif < 0) {
      // Full. This is the one place the overflow policy lives: the access log
      // drops (the audit log has its own queue and never drops).
      dropped_.fetch_add(lines, std::memory_order_relaxed);
      return false;
    } else {
      pos = enqueue_pos_.load(std::memory_order_relaxed);
    }
  }
  if (lines > 1) extra_lines_.fetch_add(lines - 1, std::memory_order_relaxed);
  cell->line = std::move(text);
  cell->format = format;
  cell->lines = lines;
  cell->staged = staged;
  // Producers wake a sleeping writer only every kWakeEveryLines entries;
  // otherwise the writer's periodic wake-up picks the entry up.
  cell->seq.store(pos + 1, std::memory_order_seq_cst);
  if ((pos & (kWakeEveryLines - 1)) == kWakeEveryLines - 1 && sleeping_.load(std::memory_order_seq_cst) != 0) {
    wakeWriter();
  }
  return true;
}

std::string& LogWriter::Stage::begin() {
  if (buf_.capacity() == 0) buf_.reserve(4096);  // after a publish: one allocation per stage, not per item
  item_at_ = buf_.size();
  buf_.append(4, '\0');  // the item's length (appendLengthPrefixed's layout), filled in by end()
  return buf_;
}

void LogWriter::Stage::end() {
  const auto len = static_cast<uint32_t>(buf_.size() - item_at_ - 4);
  std::memcpy(buf_.data() + item_at_, &len, 4);
  if (++count_ >= kStageMaxItems || buf_.size() >= kStageMaxBytes) publish();
}

void LogWriter::Stage::publish() {
  if (count_ == 0) return;
  if (log_ != nullptr) log_->enqueue(std::move(buf_), format_, count_, true);
  buf_ = std::string();
  count_ = 0;
  unkicked_ = true;
}

void LogWriter::Stage::publishAndKick(uint64_t now_ms) {
  publish();
  if (log_ != nullptr && log_->kick_.dueFor(unkicked_, now_ms)) log_->wakeWriter();
}

void LogWriter::wakeWriter() {
  if (sleeping_.exchange(0, std::memory_order_seq_cst) != 0) futexWakeOne(&sleeping_);
}

void LogWriter::reopen() {
  reopen_requested_.store(true, std::memory_order_seq_cst);
  wakeWriter();
}

void LogWriter::flush() {
  if (!running_.load(std::memory_order_acquire)) return;
  const size_t target = enqueue_pos_.load(std::memory_order_seq_cst);
  std::unique_lock<std::mutex> lock(flush_mu_);
  flush_waiters_.fetch_add(1, std::memory_order_seq_cst);
  wakeWriter();  // it drains what the file holds back for a waiter
  while (processed_.load(std::memory_order_seq_cst) < target &&
         running_.load(std::memory_order_acquire)) {
    // The timeout only guards against a missed notify; progress is notified.
    flush_cv_.wait_for(lock, kIdleWake);
  }
  flush_waiters_.fetch_sub(1, std::memory_order_relaxed);
}

void LogWriter::stop() {
  std::lock_guard<std::mutex> lock(lifecycle_mu_);
  if (stopped_) return;
  stopped_ = true;
  accepting_.store(false, std::memory_order_relaxed);
  if (thread_.joinable()) {
    stopping_.store(true, std::memory_order_seq_cst);
    wakeWriter();
    thread_.join();
    // A producer that passed the accepting_ check just before stop() may have
    // published after the thread's last look; the thread is gone, so write here.
    while (collectBatch() > 0) writeBatch();
    drainOrDrop();
    processed_.store(dequeue_pos_.load(std::memory_order_relaxed), std::memory_order_seq_cst);
  }
  running_.store(false, std::memory_order_release);
  {
    std::lock_guard<std::mutex> flush_lock(flush_mu_);
    flush_cv_.notify_all();
  }
  file_.close();
}

size_t LogWriter::depth() const {
  const size_t enq = enqueue_pos_.load(std::memory_order_relaxed);
  const size_t deq = dequeue_pos_.load(std::memory_order_relaxed);
  return (enq > deq ? enq - deq : 0) + extra_lines_.load(std::memory_order_relaxed);
}

// Moves published entries from the ring into batch_, up to kMaxBatch entries
// or kMaxBatch lines. A cell claimed by a producer but not yet published ends
// the batch: entries leave in queue order.
size_t LogWriter::collectBatch() {
  size_t pos = dequeue_pos_.load(std::memory_order_relaxed);
  size_t extra = 0;
  while (batch_len_ < kMaxBatch && batch_lines_ < kMaxBatch) {
    Cell& cell = cells_[pos & mask_];
    if (cell.seq.load(std::memory_order_acquire) != pos + 1) break;
    Item& item = batch_[batch_len_++];
    item.text = std::move(cell.line);
    item.format = cell.format;
    item.lines = cell.lines;
    item.staged = cell.staged;
    batch_lines_ += cell.lines;
    extra += cell.lines - 1;
    cell.seq.store(pos + mask_ + 1, std::memory_order_release);
    ++pos;
  }
  dequeue_pos_.store(pos, std::memory_order_relaxed);
  if (extra > 0) extra_lines_.fetch_sub(extra, std::memory_order_relaxed);
  return batch_len_;
}

void LogWriter::writeBatch() {
  // Deferred items are formatted first, back to back in formatted_ (which
  // does not move afterwards), then every entry goes out in one appendv: one
  // iovec per entry, carrying that entry's line count.
  const int64_t now_us = monotonicUs();
  size_t ends[kMaxBatch];
  formatted_.clear();
  for (size_t i = 0; i < batch_len_; ++i) {
    const Item& item = batch_[i];
    if (item.staged) {
      std::string_view one;
      for (size_t at = 0; readLengthPrefixed(item.text, at, one);) {
        if (item.format != nullptr) {
          item.format(one, formatted_);
        } else {
          formatted_.append(one);
        }
      }
    } else if (item.format != nullptr) {
      item.format(item.text, formatted_);
    }
    ends[i] = formatted_.size();
  }
  struct iovec iov[kMaxBatch];
  uint32_t iov_lines[kMaxBatch];
  size_t n = 0;
  size_t empty_lines = 0;  // entries that came to nothing count as written
  size_t begin = 0;
  for (size_t i = 0; i < batch_len_; ++i) {
    const Item& item = batch_[i];
    char* data;
    size_t len;
    if (item.staged || item.format != nullptr) {
      data = formatted_.data() + begin;
      len = ends[i] - begin;
      begin = ends[i];
    } else {
      data = batch_[i].text.data();
      len = batch_[i].text.size();
    }
    if (len == 0) {
      empty_lines += item.lines;
      continue;
    }
    iov[n].iov_base = data;
    iov[n].iov_len = len;
    iov_lines[n] = item.lines;
    ++n;
  }
  size_t first = 0;
  while (first < n) {
    ssize_t w = file_.appendv(iov + first, static_cast<int>(n - first), now_us);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (!write_failing_) {
        std::fprintf(stderr, "portcullis: writing %s failed: %s; dropping lines\n",
                     path_.c_str(), errnoMessage(errno).c_str());
        write_failing_ = true;
      }
      break;
    }
    size_t left = static_cast<size_t>(w);
    while (first < n && left >= iov[first].iov_len) left -= iov[first++].iov_len;
    if (first < n) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
      iov[first].iov_len -= left;
    }
  }
  if (first == n) write_failing_ = false;
  // Every few MiB: on disk, then out of the page cache (drop_behind.h). The
  // sync waits for the disk here, on the writer thread, never on a loop.
  if (file_.syncDue()) (void)file_.sync();
  // A line counts as written only when all of its entry's bytes are.
  size_t written = empty_lines, dropped = 0;
  for (size_t k = 0; k < n; ++k) (k < first ? written : dropped) += iov_lines[k];
  written_.fetch_add(written, std::memory_order_relaxed);
  if (dropped > 0) dropped_.fetch_add(dropped, std::memory_order_relaxed);
  for (size_t i = 0; i < batch_len_; ++i) std::string().swap(batch_[i].text);
  batch_len_ = 0;
  batch_lines_ = 0;
  if (formatted_.capacity() > (4u << 20)) std::string().swap(formatted_);  // after a burst of huge lines
}

void LogWriter::doReopen() {
  std::string error;
  int fd = openLog(path_, error);
  if (fd < 0) {
    std::fprintf(stderr, "portcullis: reopening log failed, keeping the old file: %s\n",
                 error.c_str());
    return;
  }
  drainOrDrop();  // what the old file was still owed goes to it
  file_.adopt(fd, path_);
  write_failing_ = false;
}

void LogWriter::drainOrDrop() {
  if (file_.held() == 0 || file_.drain()) return;
  std::fprintf(stderr, "portcullis: writing %s failed: %s; dropping lines\n", path_.c_str(),
               errnoMessage(errno).c_str());
  dropped_.fetch_add(file_.discardHeld(), std::memory_order_relaxed);
}

void LogWriter::publishProgress() {
  // Lines the file still holds back (log_file.h) are not written yet: a
  // flush() waits for them (the writer drains for it).
  if (file_.held() == 0) {
    processed_.store(dequeue_pos_.load(std::memory_order_relaxed), std::memory_order_seq_cst);
  }
  if (flush_waiters_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard<std::mutex> lock(flush_mu_);
    flush_cv_.notify_all();
  }
}

void LogWriter::run() {
  for (;;) {
    const bool stopping = stopping_.load(std::memory_order_acquire);
    if (reopen_requested_.exchange(false, std::memory_order_acq_rel)) doReopen();
    if (collectBatch() > 0) {
      writeBatch();
      // A flush() waiter gets what the file holds back now, not at the next
      // quiet moment or 8 MiB sync.
      if (flush_waiters_.load(std::memory_order_seq_cst) > 0) drainOrDrop();
      publishProgress();
      continue;
    }
    if (file_.held() > 0) {
      if (stopping || flush_waiters_.load(std::memory_order_seq_cst) > 0) {
        drainOrDrop();
      } else {
        (void)file_.drainIfStale(monotonicUs());
      }
      publishProgress();
    }
    if (stopping) break;
    // Announce the sleep, then look once more: a producer that published after
    // our last look either is seen here or sees sleeping_ == 1 and wakes us.
    sleeping_.store(1, std::memory_order_seq_cst);
    const size_t pos = dequeue_pos_.load(std::memory_order_relaxed);
    const bool ready =
        cells_[pos & mask_].seq.load(std::memory_order_seq_cst) == pos + 1 ||
        stopping_.load(std::memory_order_seq_cst) ||
        reopen_requested_.load(std::memory_order_seq_cst);
    if (!ready) {
      futexWait(&sleeping_, 1, std::chrono::duration_cast<std::chrono::nanoseconds>(kIdleWake).count());
    }
    sleeping_.store(0, std::memory_order_relaxed);
  }
  publishProgress();
}

}  // namespace portcullis
