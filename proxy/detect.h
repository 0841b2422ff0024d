// Suspicious-activity detection (SPEC §8, config section [detect]).
//
// One Detector is shared by every worker thread and fed from the request path.
// Like the RateLimiter (filters/rate_limiter.h) it allocates all its memory at
// construction and then never allocates, never locks and never blocks: every
// update is a compare-and-swap on a 64-bit word of a fixed, set-associative
// table. The caller passes the clock (`now_ns`, CLOCK_MONOTONIC in production,
// any non-decreasing value in tests; values must be < 2^62).
//
// What it watches, and the alert kind each raises:
//   authFailure(ip)          "auth_failures"  >= auth_failures_count in a window, per IP
//   forbidden(ip, token)     "forbidden"      >= forbidden_count 403s in a window, per IP
//                                             and, separately, per token
//   notFound(ip)             "scanning"       >= not_found_count unrouted paths in a window, per IP
//   tokenRequest(token, n)   "token_rate"     requests in the current interval far above the
//                                             token's own EWMA baseline
//                            "exfiltration"   response bytes in the current interval far
//                                             above the token's own EWMA baseline
//   ban(ip)                  "ban"            always, every ban (a brute-force lockout started)
// One more kind is never raised by the Detector: "audit_tamper", tampering
// the audit log found at start (AuditLog::startAlerts, AlertDispatcher).
//
// Counting kinds use a fixed window per (kind, key) that starts at the key's
// first event and lasts window_s; the count restarts in the next window. The
// alert is raised by the event that brings the count in the window to the
// threshold, or by a later event of a window already at or above it once the
// cooldown is over. A ban is not counted: every ban() raises its alert.
//
// Baseline kinds: time is cut into intervals of interval_s. Per token the table
// keeps the count of the current interval and an exponentially weighted moving
// average (alpha = kEwmaAlpha) of the counts of past intervals; an idle
// interval counts as zero. An alert is raised when, in the current interval,
//     count > factor * baseline  and  count > min  and  intervals seen >= warmup.
// The first completed interval seeds the baseline (a token first seen mid-way
// through an interval therefore starts with a low baseline; `min` guards it).
//
// Dedup: an alert for a given (kind, key) is raised at most once per
// cooldown_s, except "ban", which has no cooldown: the lockout reports each
// ban once (BanStatus::ban_started), so ban alerts are already bounded to one
// per ban_s per IP, and a repeat ban within cooldown_s is news. The cooldown
// is exact under any number of racing threads: raising is a CAS on the key's
// "quiet until" word, and only the thread whose CAS succeeds calls the sink.
//
// Approximations (all documented, none can duplicate an alert):
//   - Baseline kinds: the interval roll-over is one CAS on the count word, and
//     the thread that wins it folds the finished interval into the EWMA word
//     right after with a second CAS. Between the two, other threads may compare
//     against the previous baseline (one interval stale). The finished count is
//     folded exactly once; folds of two consecutive roll-overs may apply in
//     either order when a thread is descheduled between its two CASes.
//   - Byte counts per interval saturate at 2^34 - 1 (16 GiB), request counts
//     too; window counts saturate at 65535 (thresholds are clamped below).
//   - Table full (every cell of the key's group in use and not expired): a
//     counting kind is counted on the shard's overflow counter for that kind,
//     one fixed window shared by all such homeless keys. This is conservative
//     (homeless keys add up, so an alert comes early, never late) and the alert
//     names the key whose event crossed the threshold; the overflow counter
//     has one shared cooldown. A baseline kind is not tracked for a homeless
//     token (a shared baseline would mean nothing). Both cases are counted in
//     fallbacks(). Tokens live in a table of their own, so a flood of client
//     IPs cannot push authenticated tokens out.
//   - A cell is reclaimed only when it carries nothing: its window is over (or,
//     for a baseline cell, it has been idle kStaleIntervals intervals, by which
//     time its baseline has decayed below 0.2 %) and its cooldown has ended. A
//     reclaimed token restarts its warmup.
//
// IP keys are grouped as the rate limiter groups them (ipKey(): IPv4 address,
// IPv6 /64); the alert reports the IP text of the event that raised it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

namespace portcullis {

struct DetectConfig {
  uint32_t auth_failures_count = 20;  // per IP, in a fixed window of auth_failures_window_s
  uint32_t auth_failures_window_s = 60;
  uint32_t forbidden_count = 20;  // 403s per IP and per token
  uint32_t forbidden_window_s = 60;
  uint32_t not_found_count = 50;  // requests for unrouted paths per IP
  uint32_t not_found_window_s = 60;
  double rate_factor = 10.0;         // token requests per interval vs its baseline
  uint64_t rate_min = 100;           // ... and more than this many requests in the interval
  double bytes_factor = 10.0;        // token response bytes per interval vs its baseline
  uint64_t bytes_min = 10ull << 20;  // ... and more than this many bytes in the interval
  uint32_t interval_s = 10;          // baseline interval
  uint32_t warmup_intervals = 6;     // intervals of history before a token can alert (<= 63)
  uint32_t cooldown_s = 300;         // the same (kind, key) alerts at most once per cooldown; bans excepted
  size_t capacity_keys = 65536;      // per table (IPs, tokens), at load factor <= 0.5
  bool enabled = true;               // false: every call returns at once, nothing is allocated
};

enum class AlertKind : uint8_t {
  kAuthFailures,
  kForbidden,
  kScanning,
  kTokenRate,
  kExfiltration,
  kBan,
  kAuditTamper,  // raised by the audit log at start, not by the Detector
  kCount
};
inline constexpr size_t kAlertKinds = static_cast<size_t>(AlertKind::kCount);
// "auth_failures", "forbidden", "scanning", "token_rate", "exfiltration", "ban",
// "audit_tamper".
std::string_view alertKindName(AlertKind k);

// An alert, valid only for the duration of AlertSink::onAlert (the views point
// into the caller's arguments); a sink that keeps it must copy.
struct Alert {
  AlertKind kind_id = AlertKind::kBan;
  std::string_view kind;      // alertKindName(kind_id)
  std::string_view ip;        // set for per-IP alerts (and "forbidden" when keyed by IP)
  std::string_view token_id;  // set for per-token alerts
  uint64_t count = 0;         // events in the window, or requests/bytes in the current interval
  uint64_t threshold = 0;     // the count that had to be reached (baseline kinds: exceeded)
  uint64_t window_s = 0;      // window, or the baseline interval
  double baseline = 0;        // baseline kinds: the EWMA per interval; 0 otherwise
};

// Receives alerts. Called on the thread that fed the event, with no lock held;
// it must not block (hand the alert to the audit/webhook thread's queue).
class AlertSink {
 public:
  virtual ~AlertSink() = default;
  virtual void onAlert(const Alert& alert) = 0;
};

class Detector {
 public:
  static constexpr double kEwmaAlpha = 0.1;        // weight of the newest interval
  static constexpr uint32_t kStaleIntervals = 64;  // idle intervals before a token cell may be reclaimed
  static constexpr size_t kGroupCells = 8;

  // `sink` may be null (alerts are then only counted); it must outlive the
  // Detector. Allocates two tables of next_pow2(2 * capacity_keys) cells of
  // 32 bytes each (8 MiB at the default capacity) unless !config.enabled.
  Detector(const DetectConfig& config, AlertSink* sink);
  ~Detector();
  Detector(const Detector&) = delete;
  Detector& operator=(const Detector&) = delete;

  // All event methods: thread-safe, lock-free, no allocation. Empty keys are
  // ignored (an anonymous request has no token; an unknown peer no IP).

  // A failed authentication from `ip`.
  void authFailure(std::string_view ip, uint64_t now_ns);
  // A 403: counted for `ip` and, when non-empty, for `token_id`.
  void forbidden(std::string_view ip, std::string_view token_id, uint64_t now_ns);
  // A request whose path no route serves.
  void notFound(std::string_view ip, uint64_t now_ns);
  // Once per completed request that carried a valid token, with the bytes of
  // the response body sent to the client.
  void tokenRequest(std::string_view token_id, uint64_t response_bytes, uint64_t now_ns);
  // The brute-force lockout just banned `ip` (BanStatus::ban_started).
  // Raises a "ban" alert on every call, with no cooldown: call it once per ban.
  void ban(std::string_view ip, uint64_t now_ns);

  // For /metrics. Relaxed reads; a scrape may miss increments in flight.
  uint64_t alertsRaised(AlertKind kind) const;
  uint64_t fallbacks() const;
  size_t memoryBytes() const;
  const DetectConfig& config() const { return cfg_; }
  // The group (of kGroupCells cells) that `ip`'s auth-failure counter hashes
  // to: keys of one group compete for its cells. For tests; which keys share
  // a group depends on each table's secret random seed. 0 when disabled.
  size_t ipGroupOf(std::string_view ip) const;

  // Internal table (detect.cc); public only so detect.cc can name it.
  class Table;

 private:
  void count(int slot, AlertKind kind, std::string_view ip, std::string_view token, uint32_t threshold,
             uint64_t window_s, uint64_t now_ns);
  void baseline(int slot, AlertKind kind, std::string_view token, uint64_t amount, double factor, uint64_t min,
                uint64_t now_ns);
  void raise(Alert& a);

  DetectConfig cfg_;
  AlertSink* sink_;
  uint64_t cooldown_ns_ = 0;
  uint64_t interval_ns_ = 0;
  std::unique_ptr<Table> ips_;
  std::unique_ptr<Table> tokens_;
  std::atomic<uint64_t> raised_[kAlertKinds] = {};
};

}  // namespace portcullis
