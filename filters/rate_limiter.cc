// Lock-free GCRA rate-limit table. Layout and guarantees: rate_limiter.h.
//
// Cell protocol (per group of 8 cells, all memory_order_seq_cst where noted):
//
//  decide(K):
//   1. Scan the group. A LIVE cell whose `key` == fp(K) is K's cell. A
//      TENTATIVE cell whose value == tag(K) means another thread is inserting
//      K right now: wait (pause, then yield) and rescan.
//   2. Found: loop { compute the decision from state s; if it changes the
//      state, CAS(s -> s'), where s' keeps status and generation }. A CAS
//      failure reloads s; if status or generation changed the cell now
//      belongs to someone else: restart at 1. A denied GCRA decision writes
//      nothing (read-only, linearised at the load).
//   3. Not found: pick the first EMPTY cell, else the first LIVE cell whose
//      value has expired at now - grace (reclaim: an expired key carries no
//      information).
//      None: the shard's overflow cell decides (fallback, counted).
//      Claim it: CAS(observed -> TENTATIVE | gen+1 | tag(K)) (seq_cst), then
//      store key = fp(K). Validate: rescan the other 7 cells (seq_cst loads);
//      if any is LIVE with fp(K) or TENTATIVE with tag(K), another thread is
//      inserting or has inserted K: give the cell back (EMPTY | gen+1), back
//      off, restart at 1. Otherwise publish LIVE | gen+1 | f(fresh) (release);
//      a new cell never starts from the overflow state (see "Fallback").
//
//  Why K never gets two cells: two claimants A and B of K each CAS their own
//  cell (seq_cst) and then load the other cells (seq_cst). In the single total
//  order of seq_cst operations one of the claims precedes the other's
//  validation scan, so at least one claimant sees the other and gives up; a
//  claimant publishes only when it saw no other cell for K. An already LIVE
//  cell for K is found in step 1 or in the validation scan. Hence the GCRA
//  state of K is one word and every admission one successful CAS on it.
//
//  Why `key` may be read with relaxed order after an acquire load of LIVE:
//  the claimant stores `key` before the release store of LIVE, so the read
//  sees that incarnation's key or a later one; a later incarnation has a
//  different generation and the CAS in step 2 fails. (2 generation bits: an
//  ABA would need 4 re-incarnations of the cell, all ending on the very same
//  58-bit value, between one thread's load and its CAS.)
//
//  Fallback: a key with no cell (its group full of unexpired cells, or after
//  kMaxConflicts give-backs) is decided by overflow[kind] of its shard, one
//  GCRA/lockout word shared by every homeless key of that shard and kind.
//  A newly placed cell always starts fresh, never from the overflow word:
//  limits are per key (SPEC §3), so one homeless key's debt or ban must not
//  reach a key that does have a cell. The price: a key that was homeless and
//  then gets a cell starts with a new burst (at most one extra burst per
//  homeless episode; for kAuthFailure, an overflow ban does not follow it).
//  Since the hash seed is random per RateLimiter, a client cannot compute
//  colliding keys to make itself or others homeless. Counted in
//  stats().fallbacks.
//
//  Progress: decisions on existing keys and inserts of distinct keys are
//  lock-free (a failed CAS means another thread succeeded). The one wait is
//  step 1's: a thread that finds K TENTATIVE waits for that claimant's next
//  few instructions (key store, 7 loads, one store); no lock is held across
//  anything else. Give-back-and-retry livelock is broken by randomised
//  backoff and, after kMaxConflicts rounds, by the overflow fallback.
#include "filters/rate_limiter.h"

#include <arpa/inet.h>
#include <openssl/rand.h>
#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PC_CPU_PAUSE() _mm_pause()
#else
#define PC_CPU_PAUSE() std::atomic_signal_fence(std::memory_order_seq_cst)
#endif

namespace portcullis {
namespace {

constexpr uint64_t kStatusShift = 62;
constexpr uint64_t kEmpty = 0, kTentative = 1, kLive = 2;
constexpr uint64_t kStatusMask = uint64_t{3} << kStatusShift;
constexpr uint64_t kBanned = uint64_t{1} << 61;
constexpr uint64_t kLockout = uint64_t{1} << 60;
constexpr uint64_t kGenShift = 58;
constexpr uint64_t kGenMask = uint64_t{3} << kGenShift;
constexpr uint64_t kValueMask = (uint64_t{1} << 58) - 1;
constexpr uint64_t kPayloadMask = kBanned | kLockout | kValueMask;
constexpr uint64_t kMaxCount = 0xffff;
constexpr int kMaxConflicts = 64;

inline uint64_t status(uint64_t s) { return s >> kStatusShift; }

// Has this payload stopped carrying information at `now`?
inline bool expired(uint64_t payload, uint64_t now) {
  uint64_t v = payload & kValueMask;
  if ((payload & kLockout) && !(payload & kBanned)) return (v >> 16) * 1000000ull <= now;
  return v <= now;
}

inline uint64_t sat(unsigned __int128 v) { return v > kValueMask ? kValueMask : static_cast<uint64_t>(v); }

uint64_t emissionIntervalNs(double rps) {
  if (!(rps > 0)) return kValueMask;  // invalid rate: the burst, then nothing
  double i = std::ceil(1e9 / rps);
  if (i < 1) return 1;
  if (i >= static_cast<double>(kValueMask)) return kValueMask;
  return static_cast<uint64_t>(i);
}

template <class R>
struct Step {
  bool write;
  uint64_t payload;
  R result;
};

// GCRA: allowed iff max(TAT, now) + I <= now + burst * I.
struct Gcra {
  uint64_t interval;
  unsigned __int128 cap;  // burst * interval
  uint64_t now;

  Gcra(const Limit& l, uint64_t now_ns) : interval(emissionIntervalNs(l.rps)), now(std::min(now_ns, kValueMask)) {
    cap = static_cast<unsigned __int128>(std::max<uint32_t>(l.burst, 1)) * interval;
  }

  Step<Decision> operator()(uint64_t payload) const {
    Decision d;
    uint64_t tat = std::max(payload & kValueMask, now);
    unsigned __int128 next = static_cast<unsigned __int128>(tat) + interval;
    unsigned __int128 limit = static_cast<unsigned __int128>(now) + cap;
    if (next <= limit && next <= kValueMask) {
      d.allowed = true;
      d.remaining = static_cast<uint32_t>(std::min<unsigned __int128>((limit - next) / interval, UINT32_MAX));
      d.reset_ns = static_cast<uint64_t>(next - now);
      return {true, static_cast<uint64_t>(next), d};
    }
    d.allowed = false;
    d.remaining = 0;
    d.retry_after_ns = next > limit ? sat(next - limit) : kValueMask;
    d.reset_ns = tat - now;
    return {false, 0, d};
  }
};

// Brute-force lockout: fixed window from the first failure; failure max+1
// inside the window starts a ban of ban_s.
struct Failure {
  const AuthFailureLimit& lim;
  uint64_t now;

  Step<BanStatus> operator()(uint64_t payload) const {
    BanStatus b;
    uint64_t v = payload & kValueMask;
    if ((payload & kBanned) && v > now) {  // active ban: unchanged
      b.banned = true;
      b.retry_after_ns = v - now;
      return {false, 0, b};
    }
    uint64_t window_end_ms = 0, count = 0;
    if ((payload & kLockout) && !(payload & kBanned) && (v >> 16) * 1000000ull > now) {
      window_end_ms = v >> 16;
      count = v & kMaxCount;
    }
    if (count == 0) window_end_ms = (now + uint64_t{lim.window_s} * 1000000000ull + 999999) / 1000000;
    ++count;
    if (count > std::min<uint64_t>(lim.max, kMaxCount - 1)) {
      uint64_t until = sat(static_cast<unsigned __int128>(now) + uint64_t{lim.ban_s} * 1000000000ull);
      b.banned = true;
      b.ban_started = true;
      b.retry_after_ns = until - now;
      return {true, kLockout | kBanned | until, b};
    }
    return {true, kLockout | ((window_end_ms << 16) & kValueMask) | count, b};
  }
};

inline void backoff(unsigned& n) {
  unsigned spins = 1u << std::min(n, 10u);
  ++n;
  if (n > 12) {
    std::this_thread::yield();
    return;
  }
  for (unsigned i = 0; i < spins; ++i) PC_CPU_PAUSE();
}

struct Hashed {
  uint64_t group;
  uint64_t fp;
  uint64_t tag;
};

inline Hashed hashKey(uint64_t seed, LimitKind kind, std::string_view key, size_t groups) {
  XXH128_hash_t h = XXH3_128bits_withSeed(key.data(), key.size(), seed + static_cast<uint64_t>(kind));
  return {h.low64 & (groups - 1), h.high64, h.high64 & kValueMask};
}

}  // namespace

RateLimiter::RateLimiter(const RateLimiterOptions& opts) {
  size_t cells = std::bit_ceil(std::max<size_t>(opts.capacity_keys, 1) * 2);
  groups_ = std::max<size_t>(cells / kGroupCells, 1);
  shard_count_ = std::min(std::bit_ceil(std::max<size_t>(opts.shards, 1)), groups_);
  group_shift_ = static_cast<unsigned>(std::countr_zero(groups_ / shard_count_));
  grace_ns_ = std::min(opts.reclaim_grace_ns, kValueMask);
  // Secret per instance, so colliding keys cannot be computed offline.
  if (RAND_bytes(reinterpret_cast<uint8_t*>(&seed_), sizeof(seed_)) != 1) {
    std::fprintf(stderr, "RateLimiter: RAND_bytes failed\n");
    std::abort();
  }
  table_ = std::make_unique<Group[]>(groups_);
  shards_ = std::make_unique<Shard[]>(shard_count_);
}

RateLimiter::~RateLimiter() = default;

size_t RateLimiter::groupOf(LimitKind kind, std::string_view key) const {
  return hashKey(seed_, kind, key, groups_).group;
}

size_t RateLimiter::memoryBytes() const { return groups_ * sizeof(Group) + shard_count_ * sizeof(Shard); }

// The single read-modify-write path: finds or inserts the key's cell and
// applies f (payload -> Step) with CAS; homeless keys go to the overflow cell.
template <class F>
auto RateLimiter::update(LimitKind kind, std::string_view key, uint64_t now, F&& f) {
  const Hashed hk = hashKey(seed_, kind, key, groups_);
  Group& g = table_[hk.group];
  Shard& sh = shards_[hk.group >> group_shift_];
  unsigned waits = 0;
  int conflicts = 0;
  for (;;) {
    int found = -1, empty = -1, stale = -1;
    uint64_t found_s = 0, empty_s = 0, stale_s = 0;
    bool busy = false;
    for (int i = 0; i < static_cast<int>(kGroupCells); ++i) {
      uint64_t s = g.cells[i].state.load(std::memory_order_acquire);
      switch (status(s)) {
        case kLive:
          if (g.cells[i].key.load(std::memory_order_relaxed) == hk.fp) {
            found = i;
            found_s = s;
          } else if (stale < 0 && now >= grace_ns_ && expired(s & kPayloadMask, now - grace_ns_)) {
            stale = i;
            stale_s = s;
          }
          break;
        case kTentative:
          if ((s & kValueMask) == hk.tag) busy = true;
          break;
        default:
          if (empty < 0) {
            empty = i;
            empty_s = s;
          }
      }
      if (found >= 0) break;
    }

    if (found >= 0) {
      std::atomic<uint64_t>& st = g.cells[found].state;
      uint64_t s = found_s;
      for (;;) {
        auto step = f(s & kPayloadMask);
        if (!step.write) return step.result;
        uint64_t next = (s & ~kPayloadMask) | step.payload;
        if (st.compare_exchange_weak(s, next, std::memory_order_acq_rel, std::memory_order_acquire))
          return step.result;
        if ((s ^ found_s) & (kStatusMask | kGenMask)) break;  // the cell changed hands
      }
      continue;
    }
    if (busy) {  // another thread is inserting this key: wait for it
      backoff(waits);
      continue;
    }

    int idx = empty >= 0 ? empty : stale;
    if (idx < 0 || conflicts >= kMaxConflicts) break;  // homeless: fallback
    uint64_t observed = empty >= 0 ? empty_s : stale_s;
    uint64_t gen = (((observed & kGenMask) >> kGenShift) + 1) & 3;
    Cell& c = g.cells[idx];
    uint64_t tentative = (kTentative << kStatusShift) | (gen << kGenShift) | hk.tag;
    if (!c.state.compare_exchange_strong(observed, tentative, std::memory_order_seq_cst)) continue;
    c.key.store(hk.fp, std::memory_order_relaxed);
    bool conflict = false;
    for (int j = 0; j < static_cast<int>(kGroupCells) && !conflict; ++j) {
      if (j == idx) continue;
      uint64_t s = g.cells[j].state.load(std::memory_order_seq_cst);
      if (status(s) == kLive)
        conflict = g.cells[j].key.load(std::memory_order_relaxed) == hk.fp;
      else if (status(s) == kTentative)
        conflict = (s & kValueMask) == hk.tag;
    }
    if (conflict) {
      c.state.store(gen << kGenShift, std::memory_order_release);  // EMPTY, give it back
      ++conflicts;
      backoff(waits);
      continue;
    }
    // Fresh, never the overflow word: see "Fallback" above.
    auto step = f(0);
    c.state.store((kLive << kStatusShift) | (gen << kGenShift) | (step.write ? step.payload : 0),
                  std::memory_order_release);
    if (empty < 0) sh.reclaims.fetch_add(1, std::memory_order_relaxed);
    return step.result;
  }

  // Fallback: one shared state per (shard, kind) for every homeless key.
  sh.fallbacks.fetch_add(1, std::memory_order_relaxed);
  std::atomic<uint64_t>& ov = sh.overflow[static_cast<size_t>(kind)];
  uint64_t s = ov.load(std::memory_order_acquire);
  for (;;) {
    auto step = f(s);
    step.result.fallback = true;
    if (!step.write || ov.compare_exchange_weak(s, step.payload, std::memory_order_acq_rel, std::memory_order_acquire))
      return step.result;
  }
}

Decision RateLimiter::decide(LimitKind kind, std::string_view key, const Limit& limit, uint64_t now_ns) {
  Gcra gcra(limit, now_ns);
  return update(kind, key, gcra.now, [&](uint64_t p) { return gcra(p); });
}

BanStatus RateLimiter::recordAuthFailure(std::string_view ip_key, const AuthFailureLimit& lim, uint64_t now_ns) {
  Failure fail{lim, std::min(now_ns, kValueMask)};
  BanStatus b = update(LimitKind::kAuthFailure, ip_key, fail.now, [&](uint64_t p) { return fail(p); });
  if (b.ban_started) {
    const Hashed hk = hashKey(seed_, LimitKind::kAuthFailure, ip_key, groups_);
    shards_[hk.group >> group_shift_].bans_started.fetch_add(1, std::memory_order_relaxed);
  }
  return b;
}

BanStatus RateLimiter::checkBan(std::string_view ip_key, const AuthFailureLimit& lim, uint64_t now_ns) {
  const uint64_t now = std::min(now_ns, kValueMask);
  const Hashed hk = hashKey(seed_, LimitKind::kAuthFailure, ip_key, groups_);
  const Group& g = table_[hk.group];
  auto fromPayload = [&](uint64_t p) {
    BanStatus b;
    uint64_t v = p & kValueMask;
    if ((p & kBanned) && v > now) {
      b.banned = true;
      b.retry_after_ns = v - now;
    }
    return b;
  };
  bool room = false;
  for (const Cell& c : g.cells) {
    uint64_t s = c.state.load(std::memory_order_acquire);
    if (status(s) == kLive) {
      if (c.key.load(std::memory_order_relaxed) == hk.fp) return fromPayload(s);
      if (now >= grace_ns_ && expired(s & kPayloadMask, now - grace_ns_)) room = true;
    } else if (status(s) == kEmpty) {
      room = true;
    }
  }
  if (room) return BanStatus{};
  // No cell and none to be had: this IP would be counted by the overflow cell.
  BanStatus b = fromPayload(shards_[hk.group >> group_shift_].overflow[size_t(LimitKind::kAuthFailure)].load(
      std::memory_order_acquire));
  b.fallback = true;
  return b;
}

RateLimiterStats RateLimiter::stats() const {
  RateLimiterStats st;
  for (size_t i = 0; i < shard_count_; ++i) {
    st.fallbacks += shards_[i].fallbacks.load(std::memory_order_relaxed);
    st.reclaims += shards_[i].reclaims.load(std::memory_order_relaxed);
    st.bans_started += shards_[i].bans_started.load(std::memory_order_relaxed);
  }
  st.cells = cellCount();
  st.memory_bytes = memoryBytes();
  return st;
}

uint64_t RateLimiter::occupancy(uint64_t now_ns) const {
  uint64_t n = 0;
  for (size_t gi = 0; gi < groups_; ++gi)
    for (const Cell& c : table_[gi].cells) {
      uint64_t s = c.state.load(std::memory_order_relaxed);
      if (status(s) == kLive && !expired(s & kPayloadMask, now_ns)) ++n;
    }
  return n;
}

uint64_t RateLimiter::activeBans(uint64_t now_ns) const {
  auto banned = [&](uint64_t p) { return (p & kBanned) && (p & kValueMask) > now_ns; };
  uint64_t n = 0;
  for (size_t gi = 0; gi < groups_; ++gi)
    for (const Cell& c : table_[gi].cells) {
      uint64_t s = c.state.load(std::memory_order_relaxed);
      if (status(s) == kLive && banned(s)) ++n;
    }
  for (size_t i = 0; i < shard_count_; ++i)
    n += banned(shards_[i].overflow[size_t(LimitKind::kAuthFailure)].load(std::memory_order_relaxed));
  return n;
}

namespace {
// Canonical dotted quad ("192.0.2.1": four parts of 1..3 digits, no leading
// zero, each <= 255) into 4 bytes; false for anything else, which then goes
// to inet_pton (same result: inet_pton accepts exactly these and no other
// IPv4 text). The addresses the proxy formats itself are canonical, so the
// common case skips the libc parser.
bool parseCanonicalIpv4(std::string_view s, unsigned char out[4]) {
  size_t i = 0;
  for (int part = 0; part < 4; ++part) {
    if (part > 0) {
      if (i >= s.size() || s[i] != '.') return false;
      ++i;
    }
    const size_t begin = i;
    unsigned v = 0;
    while (i < s.size() && i - begin < 3 && s[i] >= '0' && s[i] <= '9') v = v * 10 + static_cast<unsigned>(s[i++] - '0');
    const size_t digits = i - begin;
    if (digits == 0 || v > 255 || (digits > 1 && s[begin] == '0')) return false;
    out[part] = static_cast<unsigned char>(v);
  }
  return i == s.size();
}
}  // namespace

IpKey ipKey(std::string_view ip) {
  IpKey k;
  if (unsigned char v4[4]; parseCanonicalIpv4(ip, v4)) {
    k.bytes[0] = '4';
    std::memcpy(k.bytes + 1, v4, 4);
    k.len = 5;
    return k;
  }
  char buf[64];
  size_t n = std::min(ip.size(), ip.find('%'));  // drop an IPv6 zone id
  if (n < sizeof(buf)) {
    std::memcpy(buf, ip.data(), n);
    buf[n] = '\0';
    unsigned char a[16];
    if (inet_pton(AF_INET, buf, a) == 1) {
      k.bytes[0] = '4';
      std::memcpy(k.bytes + 1, a, 4);
      k.len = 5;
      return k;
    }
    if (inet_pton(AF_INET6, buf, a) == 1) {
      static constexpr unsigned char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
      if (std::memcmp(a, kMapped, 12) == 0) {
        k.bytes[0] = '4';
        std::memcpy(k.bytes + 1, a + 12, 4);
        k.len = 5;
        return k;
      }
      k.bytes[0] = '6';
      std::memcpy(k.bytes + 1, a, 8);  // the /64
      k.len = 9;
      return k;
    }
  }
  uint64_t h = XXH3_64bits(ip.data(), ip.size());
  k.bytes[0] = '?';
  std::memcpy(k.bytes + 1, &h, 8);
  k.len = 9;
  return k;
}

namespace {
uint64_t ceilSeconds(uint64_t ns) { return ns / 1000000000ull + (ns % 1000000000ull != 0); }

char* putDigits(char* p, uint64_t v) {
  char tmp[20];
  int n = 0;
  do {
    tmp[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0) *p++ = tmp[--n];
  return p;
}

// `"<policy>";<k1>=<a>;<k2>=<b>` with the policy name cut at 48 bytes: at most
// 1 + 48 + 2 + 2 + 20 + 3 + 20 = 96 bytes, the size of HeaderValue::data. Built
// by hand: these run for every policy of every rate-limited response, and
// snprintf was the bulk of the filter's user-space cost.
HeaderValue format(std::string_view policy, char k1, uint64_t a, char k2, uint64_t b) {
  static_assert(sizeof(HeaderValue::data) >= 1 + 48 + 2 + 2 + 20 + 3 + 20);
  HeaderValue h;
  char* p = h.data;
  *p++ = '"';
  const size_t n = std::min<size_t>(policy.size(), 48);
  std::memcpy(p, policy.data(), n);
  p += n;
  *p++ = '"';
  *p++ = ';';
  *p++ = k1;
  *p++ = '=';
  p = putDigits(p, a);
  *p++ = ';';
  *p++ = k2;
  *p++ = '=';
  p = putDigits(p, b);
  h.size = static_cast<size_t>(p - h.data);
  return h;
}
}  // namespace

HeaderValue rateLimitPolicyHeader(std::string_view policy, const Limit& limit) {
  uint64_t burst = std::max<uint32_t>(limit.burst, 1);
  unsigned __int128 window_ns = static_cast<unsigned __int128>(burst) * emissionIntervalNs(limit.rps);
  uint64_t w = std::max<uint64_t>(ceilSeconds(sat(window_ns)), 1);
  return format(policy, 'q', burst, 'w', w);
}

HeaderValue rateLimitHeader(std::string_view policy, const Decision& d) {
  return format(policy, 'r', d.remaining, 't', ceilSeconds(d.reset_ns));
}

uint64_t retryAfterSeconds(uint64_t retry_after_ns) { return std::max<uint64_t>(ceilSeconds(retry_after_ns), 1); }

HeaderValue banPolicyHeader(const AuthFailureLimit& lim) { return format("ban", 'q', lim.max, 'w', lim.ban_s); }

HeaderValue banHeader(uint64_t retry_after_ns) { return format("ban", 'r', 0, 't', retryAfterSeconds(retry_after_ns)); }

}  // namespace portcullis
