// Shared, lock-free rate limiter (GCRA) and brute-force lockout table.
//
// One RateLimiter is shared by every worker thread. It is the only shared
// mutable hot state of the proxy (DESIGN.md "Threads and ownership"): fixed
// memory allocated at construction, no mutex and no allocation on the request
// path, every update a compare-and-swap on a 64-bit word.
//
// Algorithm: GCRA (generic cell rate algorithm, as in redis-cell and Envoy's
// atomic token bucket). Each key has one "theoretical arrival time" (TAT).
// With emission interval I = 1e9 / rps ns and capacity `burst`, a request at
// `now` is allowed iff max(TAT, now) + I <= now + burst * I; if so
// TAT := max(TAT, now) + I. A denied request changes nothing. Because every
// admission is one successful CAS that advances TAT by I, the number of
// admissions over [t0, t1] is <= burst + rps * (t1 - t0) no matter how many
// threads race on the key (exact, not approximate), as long as the key keeps
// its cell or stays homeless (see "Full group" for the one exception).
//
// Table layout (see rate_limiter.cc for the full protocol):
//   - The table is an array of groups; a group is 8 cells (128 bytes, two
//     cache lines, 64-byte aligned). A key hashes (XXH3-128 of kind + key) to
//     one group and may live in any of its 8 cells (set-associative open
//     addressing; the probe window is the group).
//   - Groups are split into a power-of-two number of shards (high bits of the
//     group index). A shard owns nothing but its overflow cells and counters.
//   - A cell is two atomic 64-bit words: `key` (64-bit fingerprint, the high
//     half of the XXH3-128 hash) and `state`:
//         [63:62] status  0 = EMPTY, 1 = TENTATIVE (being claimed), 2 = LIVE
//         [61]    banned  (lockout cells only)
//         [60]    lockout encoding (kAuthFailure cells)
//         [59:58] generation, bumped on every claim (ABA guard for `key`)
//         [57:0]  value: TAT in ns (GCRA), ban-until in ns (banned), or
//                 window-end ms << 16 | count (lockout, not banned); for a
//                 TENTATIVE cell, 58 bits of the claimant's fingerprint.
//     A decision is a CAS on `state` only; the generation in the expected
//     value proves that `key` still names the same incarnation.
//   - Memory: 16 bytes per cell. Default capacity_keys = 1M gives
//     next_pow2(2 * 1M) = 2^21 cells = 32 MiB (+ 64 bytes per shard), i.e.
//     a load factor of at most 0.5 at 1M live keys.
//   - Full group: a cell whose value has expired (TAT <= now, ban over,
//     failure window over) holds no information (an expired GCRA key is
//     identical to a fresh one) and is reclaimed in place, once it has been
//     expired for reclaim_grace_ns (default 1 s). If none is
//     expired, the key is "homeless" and is decided by the shard's overflow
//     cell for its kind: one GCRA or lockout state shared by all homeless
//     keys of that shard and kind, with the requesting key's limit. Homeless
//     keys share one quota (never admitted unlimited) and, for kAuthFailure,
//     one ban; every such decision is counted in `fallbacks`. A key that gets
//     a cell always starts fresh, never from the overflow state: limits are
//     per key (SPEC §3), so a homeless key's debt or ban never reaches a
//     placed key. The exception to the exact bound: a key that was homeless
//     and then gets a cell starts with a new burst (one per such episode),
//     and leaves an overflow ban behind.
//   - Hash seed: drawn with RAND_bytes per RateLimiter, so which keys share a
//     group cannot be computed offline to make keys homeless on purpose.
//
// Clock: the caller passes `now_ns` (injectable; production passes
// CLOCK_MONOTONIC ns). Values must be < 2^58 ns (9.1 years of uptime).
// A clock that goes backwards is handled conservatively (the TAT is kept).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

namespace portcullis {

struct Limit {
  double rps = 0;      // sustained rate, requests per second (> 0; fractional allowed)
  uint32_t burst = 1;  // capacity: requests allowed at once from a fresh key (>= 1)
};

enum class LimitKind : uint8_t { kIp = 0, kToken = 1, kRoute = 2, kAuthFailure = 3 };
inline constexpr size_t kLimitKinds = 4;

struct Decision {
  bool allowed = false;
  bool fallback = false;        // decided by the shard's shared overflow cell
  uint32_t remaining = 0;       // requests still allowed right now after this one
  uint64_t retry_after_ns = 0;  // denied: exact time until a request would be allowed (0 if allowed)
  uint64_t reset_ns = 0;        // time until the full burst is available again
};

struct AuthFailureLimit {
  uint32_t max = 10;        // failures tolerated in a window; failure max+1 starts a ban
  uint32_t window_s = 60;   // fixed window, starting at the first failure
  uint32_t ban_s = 300;
};

struct BanStatus {
  bool banned = false;
  bool ban_started = false;     // true exactly once per ban: the failure that started it
  bool fallback = false;
  uint64_t retry_after_ns = 0;  // banned: time until the ban ends
};

struct RateLimiterOptions {
  size_t capacity_keys = 1u << 20;  // sized for this many keys at load factor <= 0.5
  size_t shards = 64;               // rounded up to a power of two
  // A cell is reclaimed only once it has been expired this long. Reclaiming
  // uses the reclaiming thread's clock; a thread whose clock reading is
  // older by d could otherwise see the evicted key as fresh d early (and
  // gain up to rps * d). Callers read a monotonic clock just before deciding,
  // so d is a scheduling delay; the grace makes the bound exact for d < grace.
  uint64_t reclaim_grace_ns = 1000000000;
};

struct RateLimiterStats {
  uint64_t fallbacks = 0;      // decisions made by an overflow cell
  uint64_t reclaims = 0;       // expired cells taken over by another key
  uint64_t bans_started = 0;
  uint64_t cells = 0;          // capacity in cells
  uint64_t memory_bytes = 0;
};

// A client IP turned into a limiter key without allocating: IPv4 as its 4
// bytes, IPv6 truncated to its /64 (IPv4-mapped IPv6 counts as IPv4), an
// unparsable string as a 64-bit hash of its text.
struct IpKey {
  char bytes[12] = {};
  uint8_t len = 0;
  std::string_view view() const { return {bytes, len}; }
};
IpKey ipKey(std::string_view ip);

class RateLimiter {
 public:
  explicit RateLimiter(const RateLimiterOptions& opts = {});
  ~RateLimiter();
  RateLimiter(const RateLimiter&) = delete;
  RateLimiter& operator=(const RateLimiter&) = delete;

  // One request by `key` under `limit`. Thread-safe, lock-free, no allocation.
  Decision decide(LimitKind kind, std::string_view key, const Limit& limit, uint64_t now_ns);

  // Brute-force lockout (kept in the same table under LimitKind::kAuthFailure).
  // Is `ip_key` banned at `now`? Read-only.
  BanStatus checkBan(std::string_view ip_key, const AuthFailureLimit& lim, uint64_t now_ns);
  // Records a failed authentication. Returns the ban state after it;
  // ban_started is set for exactly one call per ban. Failures during an
  // active ban neither extend nor restart it.
  BanStatus recordAuthFailure(std::string_view ip_key, const AuthFailureLimit& lim, uint64_t now_ns);
  // A successful authentication changes nothing: it does not lift an active
  // ban, nor forgive failures already counted in the window. (Spelled out so
  // callers do not invent a reset.)
  void recordAuthSuccess(std::string_view, uint64_t) {}

  RateLimiterStats stats() const;
  // Live (non-expired) cells at `now`; O(cells), for metrics scrapes only.
  uint64_t occupancy(uint64_t now_ns) const;
  // IPs banned at `now` (cells plus banned overflow cells); O(cells), for metrics.
  uint64_t activeBans(uint64_t now_ns) const;

  // The group (of 8 cells) `key` of `kind` hashes to in this table: keys of
  // one group compete for its cells. For tests and diagnostics; which keys
  // share a group depends on the instance's random seed.
  size_t groupOf(LimitKind kind, std::string_view key) const;

  size_t cellCount() const { return groups_ * kGroupCells; }
  size_t memoryBytes() const;
  static constexpr size_t kGroupCells = 8;

  struct Cell {
    std::atomic<uint64_t> key{0};
    std::atomic<uint64_t> state{0};
  };
  struct alignas(64) Group {
    Cell cells[kGroupCells];
  };
  struct alignas(64) Shard {
    std::atomic<uint64_t> overflow[kLimitKinds] = {};  // state words, same encoding as cells
    std::atomic<uint64_t> fallbacks{0};
    std::atomic<uint64_t> reclaims{0};
    std::atomic<uint64_t> bans_started{0};
  };

 private:
  template <class F>
  auto update(LimitKind kind, std::string_view key, uint64_t now_ns, F&& f);

  std::unique_ptr<Group[]> table_;
  std::unique_ptr<Shard[]> shards_;
  size_t groups_ = 0;
  size_t shard_count_ = 0;
  unsigned group_shift_ = 0;  // group index >> group_shift_ = shard index
  uint64_t grace_ns_ = 0;
  uint64_t seed_ = 0;  // XXH3 seed, random per instance (see "Hash seed")
};

// --- Response header values (SPEC §5, IETF httpapi RateLimit fields) -------

struct HeaderValue {
  char data[96];
  size_t size = 0;
  std::string_view view() const { return {data, size}; }
};

// `"token";q=200;w=2`: q = burst, w = burst / rps seconds rounded up (>= 1).
HeaderValue rateLimitPolicyHeader(std::string_view policy, const Limit& limit);
// `"token";r=0;t=1`: r = remaining, t = reset in whole seconds rounded up.
HeaderValue rateLimitHeader(std::string_view policy, const Decision& d);
// The fields of a 429 sent to a banned IP: `"ban";q=10;w=300` (q = failures
// tolerated, w = ban_s) and `"ban";r=0;t=120` (t = Retry-After's seconds).
HeaderValue banPolicyHeader(const AuthFailureLimit& lim);
HeaderValue banHeader(uint64_t retry_after_ns);
// Retry-After in whole seconds, rounded up, at least 1: never early.
uint64_t retryAfterSeconds(uint64_t retry_after_ns);

}  // namespace portcullis
