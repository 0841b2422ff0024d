// RateLimiter: GCRA decisions against a token-bucket reference model with an
// injected clock, Retry-After never early, exact counts under 8 threads, table
// full -> reclaim -> fallback, brute-force lockout, IP keys, header values.
#include "filters/rate_limiter.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace portcullis {
namespace {

constexpr uint64_t kSec = 1000000000ull;
constexpr uint64_t kT0 = 1000 * kSec;  // tests start at an arbitrary non-zero time

// Reference: a token bucket holding `credit` ns of allowance (one request
// costs I = ceil(1e9 / rps) ns, capacity burst * I), refilled by elapsed time.
// For a non-decreasing clock it is equivalent to GCRA.
struct RefBucket {
  uint64_t interval, cap, credit, last;
  bool started = false;
  explicit RefBucket(const Limit& l)
      : interval(static_cast<uint64_t>(std::ceil(1e9 / l.rps))), cap(l.burst * interval), credit(cap), last(0) {}
  Decision decide(uint64_t now) {
    if (started && now > last) credit = std::min<uint64_t>(cap, credit + std::min<uint64_t>(now - last, cap));
    started = true;
    last = std::max(last, now);
    Decision d;
    if (credit >= interval) {
      credit -= interval;
      d.allowed = true;
      d.remaining = static_cast<uint32_t>(credit / interval);
    } else {
      d.retry_after_ns = interval - credit;
    }
    d.reset_ns = cap - credit;
    return d;
  }
};

TEST(RateLimiter, BurstAtAFixedClock) {
  RateLimiter rl(RateLimiterOptions{1024, 4});
  Limit lim{10, 5};  // I = 100 ms
  for (uint32_t i = 0; i < 5; ++i) {
    Decision d = rl.decide(LimitKind::kToken, "t1", lim, kT0);
    ASSERT_TRUE(d.allowed) << i;
    EXPECT_EQ(d.remaining, 4 - i);
    EXPECT_EQ(d.reset_ns, (i + 1) * 100000000ull);
    EXPECT_FALSE(d.fallback);
  }
  Decision d = rl.decide(LimitKind::kToken, "t1", lim, kT0);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.remaining, 0u);
  EXPECT_EQ(d.retry_after_ns, 100000000ull);
  EXPECT_EQ(d.reset_ns, 500000000ull);
  EXPECT_EQ(retryAfterSeconds(d.retry_after_ns), 1u);
}

TEST(RateLimiter, SteadyRateAndRecovery) {
  RateLimiter rl(RateLimiterOptions{1024, 4});
  Limit lim{10, 3};
  uint64_t t = kT0;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(rl.decide(LimitKind::kIp, "a", lim, t).allowed);
  ASSERT_FALSE(rl.decide(LimitKind::kIp, "a", lim, t).allowed);
  // One request per interval is the steady rate; one ns early is too early.
  for (int i = 0; i < 50; ++i) {
    t += 100000000ull;
    EXPECT_FALSE(rl.decide(LimitKind::kIp, "a", lim, t - 1).allowed) << i;
    EXPECT_TRUE(rl.decide(LimitKind::kIp, "a", lim, t).allowed) << i;
    EXPECT_FALSE(rl.decide(LimitKind::kIp, "a", lim, t).allowed) << i;
  }
  // After an idle period of at least burst * I the full burst is back, no more.
  t += 300000000ull;
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(rl.decide(LimitKind::kIp, "a", lim, t).allowed);
  EXPECT_FALSE(rl.decide(LimitKind::kIp, "a", lim, t).allowed);
  // Huge gap: still exactly one burst.
  t += 1000000 * kSec;
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(rl.decide(LimitKind::kIp, "a", lim, t).allowed);
  EXPECT_FALSE(rl.decide(LimitKind::kIp, "a", lim, t).allowed);
}

TEST(RateLimiter, FractionalRate) {
  RateLimiter rl(RateLimiterOptions{1024, 4});
  Limit lim{0.5, 1};  // one request every 2 s
  EXPECT_TRUE(rl.decide(LimitKind::kRoute, "r", lim, kT0).allowed);
  Decision d = rl.decide(LimitKind::kRoute, "r", lim, kT0 + kSec);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after_ns, kSec);
  EXPECT_FALSE(rl.decide(LimitKind::kRoute, "r", lim, kT0 + 2 * kSec - 1).allowed);
  EXPECT_TRUE(rl.decide(LimitKind::kRoute, "r", lim, kT0 + 2 * kSec).allowed);
  EXPECT_EQ(rateLimitPolicyHeader("ip", lim).view(), "\"ip\";q=1;w=2");
}

TEST(RateLimiter, ClockGoingBackwardsIsConservative) {
  RateLimiter rl(RateLimiterOptions{1024, 4});
  Limit lim{1, 2};
  uint64_t t = kT0 + 10 * kSec;
  EXPECT_TRUE(rl.decide(LimitKind::kToken, "k", lim, t).allowed);
  EXPECT_TRUE(rl.decide(LimitKind::kToken, "k", lim, t).allowed);
  EXPECT_FALSE(rl.decide(LimitKind::kToken, "k", lim, t).allowed);
  // An earlier clock reading never admits more than the latest one would.
  for (uint64_t back : {uint64_t{1}, kSec, 5 * kSec, 10 * kSec}) {
    Decision d = rl.decide(LimitKind::kToken, "k", lim, t - back);
    EXPECT_FALSE(d.allowed) << back;
    EXPECT_GE(d.retry_after_ns, kSec + back);
  }
  // Equal clock: still denied; one interval later: exactly one.
  EXPECT_FALSE(rl.decide(LimitKind::kToken, "k", lim, t).allowed);
  EXPECT_TRUE(rl.decide(LimitKind::kToken, "k", lim, t + kSec).allowed);
  EXPECT_FALSE(rl.decide(LimitKind::kToken, "k", lim, t + kSec).allowed);
}

TEST(RateLimiter, MatchesReferenceModel) {
  RateLimiter rl(RateLimiterOptions{4096, 8});
  std::mt19937_64 rng(42);
  const Limit limits[] = {{100, 200}, {50, 100}, {0.5, 1}, {3, 7}, {1000, 1}, {0.1, 3}, {20, 40}};
  constexpr int kKeys = 40;
  std::vector<RefBucket> ref;
  std::vector<Limit> lim;
  for (int k = 0; k < kKeys; ++k) {
    lim.push_back(limits[k % std::size(limits)]);
    ref.emplace_back(lim.back());
  }
  uint64_t now = kT0;
  for (int i = 0; i < 200000; ++i) {
    switch (rng() % 8) {  // gaps: equal, tiny, around one interval, large, huge
      case 0:
      case 1: break;
      case 2: now += rng() % 1000; break;
      case 3:
      case 4: now += rng() % 20000000; break;
      case 5: now += rng() % (3 * kSec); break;
      case 6: now += rng() % 100000000; break;
      default: if (rng() % 100 == 0) now += (rng() % 100000) * kSec;
    }
    int k = static_cast<int>(rng() % kKeys);
    std::string key = "key-" + std::to_string(k);
    Decision got = rl.decide(k % 2 ? LimitKind::kToken : LimitKind::kIp, key, lim[k], now);
    Decision want = ref[k].decide(now);
    ASSERT_EQ(got.allowed, want.allowed) << "step " << i << " key " << k;
    ASSERT_EQ(got.remaining, want.remaining) << "step " << i;
    ASSERT_EQ(got.retry_after_ns, want.retry_after_ns) << "step " << i;
    ASSERT_EQ(got.reset_ns, want.reset_ns) << "step " << i;
    ASSERT_FALSE(got.fallback);
  }
  EXPECT_EQ(rl.stats().fallbacks, 0u);
}

TEST(RateLimiter, RetryAfterIsNeverEarly) {
  RateLimiter rl(RateLimiterOptions{1024, 4});
  std::mt19937_64 rng(7);
  const Limit limits[] = {{3, 2}, {0.3, 1}, {7, 5}, {100, 10}, {0.5, 4}};
  uint64_t now = kT0;
  int denied = 0;
  for (int i = 0; i < 20000; ++i) {
    const Limit& l = limits[i % std::size(limits)];
    std::string key = "k" + std::to_string(i % std::size(limits));
    now += rng() % 50000000;
    Decision d = rl.decide(LimitKind::kToken, key, l, now);
    if (d.allowed) continue;
    ++denied;
    ASSERT_GT(d.retry_after_ns, 0u);
    uint64_t secs = retryAfterSeconds(d.retry_after_ns);
    ASSERT_GE(secs, 1u);
    ASSERT_GE(secs * kSec, d.retry_after_ns);
    // retry_after is exact: one ns earlier is still denied, then allowed.
    ASSERT_FALSE(rl.decide(LimitKind::kToken, key, l, now + d.retry_after_ns - 1).allowed);
    ASSERT_TRUE(rl.decide(LimitKind::kToken, key, l, now + d.retry_after_ns).allowed);
    now += d.retry_after_ns;
  }
  EXPECT_GT(denied, 1000);
  EXPECT_EQ(retryAfterSeconds(0), 1u);
  EXPECT_EQ(retryAfterSeconds(1), 1u);
  EXPECT_EQ(retryAfterSeconds(kSec), 1u);
  EXPECT_EQ(retryAfterSeconds(kSec + 1), 2u);
}

TEST(RateLimiter, HeaderValues) {
  Limit lim{100, 200};
  EXPECT_EQ(rateLimitPolicyHeader("token", lim).view(), "\"token\";q=200;w=2");
  Decision d;
  d.remaining = 0;
  d.reset_ns = 1;
  EXPECT_EQ(rateLimitHeader("token", d).view(), "\"token\";r=0;t=1");
  d.remaining = 199;
  d.reset_ns = 10000000;
  EXPECT_EQ(rateLimitHeader("ip", d).view(), "\"ip\";r=199;t=1");
  d.reset_ns = 0;
  EXPECT_EQ(rateLimitHeader("ip", d).view(), "\"ip\";r=199;t=0");
  EXPECT_EQ(rateLimitPolicyHeader("ip", Limit{50, 100}).view(), "\"ip\";q=100;w=2");
  EXPECT_EQ(rateLimitPolicyHeader("ip", Limit{3, 10}).view(), "\"ip\";q=10;w=4");
  EXPECT_EQ(rateLimitPolicyHeader("ip", Limit{1000, 1}).view(), "\"ip\";q=1;w=1");
  // Policy and RateLimit agree with a real decision.
  RateLimiter rl(RateLimiterOptions{64, 1});
  Decision first = rl.decide(LimitKind::kToken, "tok", lim, kT0);
  EXPECT_EQ(rateLimitHeader("token", first).view(), "\"token\";r=199;t=1");
}

TEST(RateLimiter, BanHeaderValues) {
  EXPECT_EQ(banPolicyHeader(AuthFailureLimit{10, 60, 300}).view(), "\"ban\";q=10;w=300");
  EXPECT_EQ(banHeader(120 * kSec).view(), "\"ban\";r=0;t=120");
  EXPECT_EQ(banHeader(119 * kSec + 1).view(), "\"ban\";r=0;t=120");  // as Retry-After: rounded up
  EXPECT_EQ(banHeader(1).view(), "\"ban\";r=0;t=1");
}

// The hand-built header values equal what printf would make, at every digit
// count and at the extremes, and a policy name is cut at 48 bytes.
TEST(RateLimiter, HeaderValuesAtTheExtremes) {
  const std::string long_name(60, 'p');
  for (std::string_view policy : {std::string_view("ip"), std::string_view(long_name)}) {
    const std::string shown(policy.substr(0, 48));
    for (uint32_t remaining : {0u, 1u, 9u, 10u, 99u, 100u, 12345u, 4294967295u}) {
      for (uint64_t reset_ns : {0ull, 1ull, 999999999ull, 1000000000ull, 1000000001ull, 18446744073709551615ull}) {
        Decision d;
        d.remaining = remaining;
        d.reset_ns = reset_ns;
        const unsigned long long t = reset_ns / 1000000000ull + (reset_ns % 1000000000ull != 0);
        char want[160];
        std::snprintf(want, sizeof(want), "\"%s\";r=%u;t=%llu", shown.c_str(), remaining, t);
        EXPECT_EQ(rateLimitHeader(policy, d).view(), want);
      }
    }
    char want[160];
    std::snprintf(want, sizeof(want), "\"%s\";q=1000000000;w=1", shown.c_str());
    EXPECT_EQ(rateLimitPolicyHeader(policy, Limit{1e9, 1000000000}).view(), want);
  }
}

TEST(RateLimiter, KindsAndKeysAreIndependent) {
  RateLimiter rl(RateLimiterOptions{1024, 4});
  Limit lim{1, 1};
  EXPECT_TRUE(rl.decide(LimitKind::kIp, "x", lim, kT0).allowed);
  EXPECT_FALSE(rl.decide(LimitKind::kIp, "x", lim, kT0).allowed);
  EXPECT_TRUE(rl.decide(LimitKind::kToken, "x", lim, kT0).allowed);
  EXPECT_TRUE(rl.decide(LimitKind::kRoute, "x", lim, kT0).allowed);
  EXPECT_TRUE(rl.decide(LimitKind::kIp, "y", lim, kT0).allowed);
  EXPECT_FALSE(rl.decide(LimitKind::kToken, "x", lim, kT0).allowed);
}

TEST(RateLimiter, MemoryIsFixedAndStated) {
  RateLimiter rl;  // default: sized for 1M keys
  EXPECT_EQ(rl.cellCount(), size_t{1} << 21);
  EXPECT_EQ(sizeof(RateLimiter::Group), 128u);
  EXPECT_EQ(rl.memoryBytes(), (size_t{32} << 20) + 64 * sizeof(RateLimiter::Shard));
  EXPECT_EQ(rl.stats().memory_bytes, rl.memoryBytes());
}

// --- Table full: reclaim, then fallback ------------------------------------

TEST(RateLimiter, FullTableReclaimsExpiredThenFallsBack) {
  RateLimiter rl(RateLimiterOptions{4, 1, 0});
  ASSERT_EQ(rl.cellCount(), 8u);
  Limit slow{1, 2};  // a used key stays live for up to 2 s
  for (int i = 0; i < 8; ++i) {
    Decision d = rl.decide(LimitKind::kIp, "ip" + std::to_string(i), slow, kT0);
    ASSERT_TRUE(d.allowed);
    ASSERT_FALSE(d.fallback);
  }
  EXPECT_EQ(rl.occupancy(kT0), 8u);
  // A 9th key cannot get a cell: the overflow cell decides, and homeless keys
  // share one quota (conservative, never unlimited).
  Decision a = rl.decide(LimitKind::kIp, "homeless-a", slow, kT0);
  Decision b = rl.decide(LimitKind::kIp, "homeless-b", slow, kT0);
  Decision c = rl.decide(LimitKind::kIp, "homeless-c", slow, kT0);
  EXPECT_TRUE(a.fallback && b.fallback && c.fallback);
  EXPECT_TRUE(a.allowed);
  EXPECT_TRUE(b.allowed);
  EXPECT_FALSE(c.allowed);
  EXPECT_GT(c.retry_after_ns, 0u);
  EXPECT_EQ(rl.stats().fallbacks, 3u);
  EXPECT_EQ(rl.stats().reclaims, 0u);
  // Existing keys keep their cells and their state.
  EXPECT_TRUE(rl.decide(LimitKind::kIp, "ip0", slow, kT0).allowed);
  EXPECT_FALSE(rl.decide(LimitKind::kIp, "ip0", slow, kT0).allowed);
  // 2 s later every cell has expired: new keys reclaim them.
  uint64_t later = kT0 + 2 * kSec;
  EXPECT_EQ(rl.occupancy(later), 0u);
  for (int i = 0; i < 8; ++i) {
    Decision d = rl.decide(LimitKind::kToken, "tok" + std::to_string(i), slow, later);
    ASSERT_TRUE(d.allowed);
    ASSERT_FALSE(d.fallback);
  }
  EXPECT_EQ(rl.stats().reclaims, 8u);
  EXPECT_EQ(rl.stats().fallbacks, 3u);
  EXPECT_TRUE(rl.decide(LimitKind::kToken, "tok9", slow, later).fallback);
  EXPECT_EQ(rl.stats().fallbacks, 4u);
}

TEST(RateLimiter, HomelessKeyThatGetsACellStartsFresh) {
  RateLimiter rl(RateLimiterOptions{4, 1, 0});  // one group of 8 cells
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(rl.decide(LimitKind::kIp, "f" + std::to_string(i), Limit{10, 1}, kT0).allowed);
  Limit lim{1, 2};
  EXPECT_TRUE(rl.decide(LimitKind::kIp, "h", lim, kT0).fallback);
  EXPECT_TRUE(rl.decide(LimitKind::kIp, "h", lim, kT0).allowed);
  EXPECT_FALSE(rl.decide(LimitKind::kIp, "h", lim, kT0).allowed);
  // The fillers expire after 100 ms: "h" gets a cell, which starts fresh (the
  // overflow state may be another key's debt), so one new burst (header).
  Decision d = rl.decide(LimitKind::kIp, "h", lim, kT0 + 200000000ull);
  EXPECT_FALSE(d.fallback);
  EXPECT_TRUE(d.allowed);
  EXPECT_TRUE(rl.decide(LimitKind::kIp, "h", lim, kT0 + 200000000ull).allowed);
  EXPECT_FALSE(rl.decide(LimitKind::kIp, "h", lim, kT0 + 200000000ull).allowed);
}

// The first `n` keys "<prefix><i>" of `kind` that hash to group `g` (in = true)
// or to any other group (in = false).
std::vector<std::string> keysOf(const RateLimiter& rl, LimitKind kind, const std::string& prefix, size_t g, bool in,
                                size_t n) {
  std::vector<std::string> keys;
  for (int i = 0; keys.size() < n && i < 100000; ++i) {
    std::string k = prefix + std::to_string(i);
    if ((rl.groupOf(kind, k) == g) == in) keys.push_back(k);
  }
  EXPECT_EQ(keys.size(), n);
  return keys;
}

// 16 groups in one shard: every group shares the shard's overflow cells.
constexpr RateLimiterOptions kOneShard16Groups{64, 1, 0};

TEST(RateLimiter, OverflowDebtIsNotInheritedByNewKeys) {
  RateLimiter rl(kOneShard16Groups);
  ASSERT_EQ(rl.cellCount(), 128u);
  Limit lim{1, 1};
  const size_t g = rl.groupOf(LimitKind::kIp, "fill0");
  std::vector<std::string> fill = keysOf(rl, LimitKind::kIp, "fill", g, true, 9);
  for (size_t i = 0; i < 8; ++i) ASSERT_FALSE(rl.decide(LimitKind::kIp, fill[i], lim, kT0).fallback);
  // The 9th key of the full group uses up the overflow's only request.
  Decision h = rl.decide(LimitKind::kIp, fill[8], lim, kT0);
  EXPECT_TRUE(h.fallback && h.allowed);
  EXPECT_FALSE(rl.decide(LimitKind::kIp, fill[8], lim, kT0).allowed);
  // Never-seen keys of other groups of the shard are not charged that debt.
  for (const std::string& v : keysOf(rl, LimitKind::kIp, "victim", g, false, 3)) {
    Decision d = rl.decide(LimitKind::kIp, v, lim, kT0);
    EXPECT_FALSE(d.fallback) << v;
    EXPECT_TRUE(d.allowed) << v;
    EXPECT_FALSE(rl.decide(LimitKind::kIp, v, lim, kT0).allowed) << v;  // and have their own limit
  }
  // A key of the full group is still decided by the overflow cell.
  Decision late = rl.decide(LimitKind::kIp, keysOf(rl, LimitKind::kIp, "late", g, true, 1)[0], lim, kT0);
  EXPECT_TRUE(late.fallback);
  EXPECT_FALSE(late.allowed);
}

TEST(Lockout, OverflowBanIsNotInheritedByNewKeys) {
  RateLimiter rl(kOneShard16Groups);
  const size_t g = rl.groupOf(LimitKind::kAuthFailure, ipKey("198.51.100.0").view());
  std::vector<std::string> ips;
  for (int i = 0; ips.size() < 10 && i < 1 << 16; ++i) {
    std::string ip = "198.51." + std::to_string(i / 256) + "." + std::to_string(i % 256);
    if (rl.groupOf(LimitKind::kAuthFailure, ipKey(ip).view()) == g) ips.push_back(ip);
  }
  ASSERT_EQ(ips.size(), 10u);
  std::string victim;
  for (int i = 0; victim.empty() && i < 256; ++i) {
    std::string ip = "203.0.113." + std::to_string(i);
    if (rl.groupOf(LimitKind::kAuthFailure, ipKey(ip).view()) != g) victim = ip;
  }
  ASSERT_FALSE(victim.empty());
  AuthFailureLimit lim{2, 60, 120};
  // 8 colliding IPs fill the group; the 9th earns a ban in the overflow cell.
  for (int i = 0; i < 8; ++i) ASSERT_FALSE(rl.recordAuthFailure(ipKey(ips[i]).view(), lim, kT0).fallback);
  for (int i = 0; i < 2; ++i) EXPECT_FALSE(rl.recordAuthFailure(ipKey(ips[8]).view(), lim, kT0).banned);
  BanStatus a = rl.recordAuthFailure(ipKey(ips[8]).view(), lim, kT0);
  EXPECT_TRUE(a.banned && a.ban_started && a.fallback);
  // The victim's one failure gets its own cell, starting from zero failures.
  BanStatus v = rl.recordAuthFailure(ipKey(victim).view(), lim, kT0 + kSec);
  EXPECT_FALSE(v.fallback);
  EXPECT_FALSE(v.banned);
  EXPECT_FALSE(rl.checkBan(ipKey(victim).view(), lim, kT0 + kSec).banned);
  EXPECT_FALSE(rl.recordAuthFailure(ipKey(victim).view(), lim, kT0 + kSec).banned);  // failure 2 of max 2
  EXPECT_TRUE(rl.recordAuthFailure(ipKey(victim).view(), lim, kT0 + kSec).ban_started);  // its own ban
  // Homeless IPs of the full group still share the overflow's ban.
  EXPECT_TRUE(rl.checkBan(ipKey(ips[9]).view(), lim, kT0 + kSec).banned);
  EXPECT_EQ(rl.stats().bans_started, 2u);
}

TEST(RateLimiter, HashSeedIsRandomPerTable) {
  // With a fixed seed two tables place every key alike; with a random one
  // 64 keys over 16 groups land alike with probability 2^-256.
  RateLimiter a(kOneShard16Groups), b(kOneShard16Groups);
  int same = 0;
  for (int i = 0; i < 64; ++i) {
    std::string k = "k" + std::to_string(i);
    same += a.groupOf(LimitKind::kIp, k) == b.groupOf(LimitKind::kIp, k);
  }
  EXPECT_LT(same, 64);
}

TEST(RateLimiter, ReclaimWaitsForTheGracePeriod) {
  RateLimiter rl(RateLimiterOptions{4, 1, kSec});
  Limit lim{10, 1};  // a used key expires 100 ms later
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(rl.decide(LimitKind::kIp, "k" + std::to_string(i), lim, kT0).allowed);
  EXPECT_TRUE(rl.decide(LimitKind::kIp, "new", lim, kT0 + kSec).fallback);  // expired, but within grace
  EXPECT_EQ(rl.stats().reclaims, 0u);
  Decision d = rl.decide(LimitKind::kIp, "new2", lim, kT0 + kSec + 100000000ull);
  EXPECT_FALSE(d.fallback);
  EXPECT_EQ(rl.stats().reclaims, 1u);
}

TEST(RateLimiter, ReclaimedKeyStartsFresh) {
  RateLimiter rl(RateLimiterOptions{4, 1, 0});
  Limit lim{10, 1};
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(rl.decide(LimitKind::kIp, "k" + std::to_string(i), lim, kT0).allowed);
  uint64_t t = kT0 + kSec;  // all expired
  ASSERT_TRUE(rl.decide(LimitKind::kIp, "new", lim, t).allowed);  // reclaims one cell
  // The evicted key (whichever it was) behaves exactly as a fresh key would.
  for (int i = 0; i < 8; ++i) {
    std::string k = "k" + std::to_string(i);
    EXPECT_TRUE(rl.decide(LimitKind::kIp, k, lim, t).allowed) << k;
    EXPECT_FALSE(rl.decide(LimitKind::kIp, k, lim, t).allowed) << k;
  }
  EXPECT_FALSE(rl.decide(LimitKind::kIp, "new", lim, t).allowed);
}

// --- Concurrency --------------------------------------------------------------

template <class F>
void runThreads(int n, F&& body) {
  std::atomic<int> ready{0};
  std::vector<std::thread> ts;
  for (int i = 0; i < n; ++i)
    ts.emplace_back([&, i] {
      ready.fetch_add(1);
      while (ready.load() < n) std::this_thread::yield();
      body(i);
    });
  for (auto& t : ts) t.join();
}

TEST(RateLimiterConcurrency, EightThreadsOneKeyFixedClockAdmitExactlyBurst) {
  RateLimiter rl(RateLimiterOptions{1024, 4});
  for (int round = 0; round < 20; ++round) {  // each round races on a brand-new key (insert race)
    Limit lim{100, 500};
    std::string key = "hot-" + std::to_string(round);
    std::atomic<uint64_t> admitted{0};
    runThreads(8, [&](int) {
      uint64_t mine = 0;
      for (int i = 0; i < 2000; ++i) mine += rl.decide(LimitKind::kToken, key, lim, kT0).allowed;
      admitted.fetch_add(mine);
    });
    ASSERT_EQ(admitted.load(), 500u) << "round " << round;
  }
  EXPECT_EQ(rl.stats().fallbacks, 0u);
}

TEST(RateLimiterConcurrency, EightThreadsOneKeyAdvancingClockStayWithinBound) {
  RateLimiter rl(RateLimiterOptions{1024, 4});
  const Limit lim{1000, 50};  // I = 1 ms
  std::atomic<uint64_t> clock{kT0};
  std::atomic<uint64_t> admitted{0};
  runThreads(8, [&](int id) {
    std::mt19937_64 rng(id);
    uint64_t mine = 0;
    for (int i = 0; i < 20000; ++i) {
      uint64_t now = clock.fetch_add(rng() % 20000) ;  // each call moves time 0..20 us
      mine += rl.decide(LimitKind::kToken, "shared", lim, now).allowed;
    }
    admitted.fetch_add(mine);
  });
  double t = static_cast<double>(clock.load() - kT0) / 1e9;
  uint64_t bound = static_cast<uint64_t>(lim.burst + lim.rps * t + 1);
  EXPECT_LE(admitted.load(), bound) << "T=" << t;
  // Not starved either: time advanced ~1.6 s, so most of the rate was used.
  EXPECT_GE(admitted.load(), static_cast<uint64_t>(lim.burst + lim.rps * t * 0.9));
}

TEST(RateLimiterConcurrency, DistinctKeysAreIndependent) {
  RateLimiter rl(RateLimiterOptions{1024, 4});
  const Limit lim{10, 300};
  std::vector<uint64_t> admitted(8, 0);
  runThreads(8, [&](int id) {
    for (int k = 0; k < 20; ++k) {
      std::string key = "t" + std::to_string(id) + "-" + std::to_string(k);
      for (int i = 0; i < 400; ++i) admitted[id] += rl.decide(LimitKind::kToken, key, lim, kT0).allowed;
    }
  });
  for (int id = 0; id < 8; ++id) EXPECT_EQ(admitted[id], 20u * 300u) << id;
  EXPECT_EQ(rl.stats().fallbacks, 0u);
}

TEST(RateLimiterConcurrency, ManyKeysInATinyTableNeverOverAdmit) {
  // 8 threads, 64 keys, one 8-cell group: constant reclaiming and fallback.
  // Whatever happens, no key is ever admitted beyond burst + rate * T + 1
  // (fallback can only reduce what a key gets), and nothing crashes.
  RateLimiter rl(RateLimiterOptions{4, 1, 0});
  const Limit lim{50000, 2};  // I = 20 us: cells expire between a key's hits
  std::atomic<uint64_t> clock{kT0};
  std::vector<std::atomic<uint64_t>> per_key(64);
  runThreads(8, [&](int id) {
    std::mt19937_64 rng(id * 7 + 1);
    for (int i = 0; i < 20000; ++i) {
      int k = static_cast<int>(rng() % 64);
      uint64_t now = clock.fetch_add(rng() % 2000);
      if (rl.decide(LimitKind::kIp, "k" + std::to_string(k), lim, now).allowed) per_key[k].fetch_add(1);
    }
  });
  double t = static_cast<double>(clock.load() - kT0) / 1e9;
  for (int k = 0; k < 64; ++k) EXPECT_LE(per_key[k].load(), static_cast<uint64_t>(lim.burst + lim.rps * t + 1)) << k;
  EXPECT_GT(rl.stats().fallbacks, 0u);
  EXPECT_GT(rl.stats().reclaims, 0u);
}

// --- Brute-force lockout ------------------------------------------------------

TEST(Lockout, BanAfterMaxFailuresOnceAndReleaseAfterBanS) {
  RateLimiter rl(RateLimiterOptions{1024, 4});
  AuthFailureLimit lim{3, 60, 300};
  IpKey ip = ipKey("203.0.113.9");
  uint64_t t = kT0;
  for (int i = 0; i < 3; ++i) {
    BanStatus b = rl.recordAuthFailure(ip.view(), lim, t + i * kSec);
    EXPECT_FALSE(b.banned) << i;
    EXPECT_FALSE(b.ban_started);
  }
  EXPECT_FALSE(rl.checkBan(ip.view(), lim, t + 3 * kSec).banned);
  BanStatus b = rl.recordAuthFailure(ip.view(), lim, t + 3 * kSec);  // max + 1
  EXPECT_TRUE(b.banned);
  EXPECT_TRUE(b.ban_started);
  EXPECT_EQ(b.retry_after_ns, 300 * kSec);
  // More failures: still banned, ban neither restarted nor extended.
  for (int i = 0; i < 5; ++i) {
    BanStatus again = rl.recordAuthFailure(ip.view(), lim, t + 10 * kSec);
    EXPECT_TRUE(again.banned);
    EXPECT_FALSE(again.ban_started);
    EXPECT_EQ(again.retry_after_ns, 293 * kSec);
  }
  // A successful authentication does not lift it.
  rl.recordAuthSuccess(ip.view(), t + 20 * kSec);
  EXPECT_EQ(rl.activeBans(t + 20 * kSec), 1u);
  BanStatus chk = rl.checkBan(ip.view(), lim, t + 20 * kSec);
  EXPECT_TRUE(chk.banned);
  EXPECT_EQ(chk.retry_after_ns, 283 * kSec);
  EXPECT_EQ(retryAfterSeconds(chk.retry_after_ns), 283u);
  EXPECT_TRUE(rl.checkBan(ip.view(), lim, t + 303 * kSec - 1).banned);
  EXPECT_FALSE(rl.checkBan(ip.view(), lim, t + 303 * kSec).banned);
  EXPECT_EQ(rl.activeBans(t + 303 * kSec), 0u);
  // After the ban the count starts over.
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(rl.recordAuthFailure(ip.view(), lim, t + 304 * kSec).banned);
  BanStatus second = rl.recordAuthFailure(ip.view(), lim, t + 304 * kSec);
  EXPECT_TRUE(second.ban_started);
  EXPECT_EQ(rl.stats().bans_started, 2u);
  // Other IPs are unaffected.
  EXPECT_FALSE(rl.checkBan(ipKey("203.0.113.10").view(), lim, t + 304 * kSec).banned);
}

TEST(Lockout, FailuresOutsideTheWindowDoNotAccumulate) {
  RateLimiter rl(RateLimiterOptions{1024, 4});
  AuthFailureLimit lim{3, 60, 300};
  IpKey ip = ipKey("198.51.100.1");
  uint64_t t = kT0;
  for (int w = 0; w < 5; ++w) {
    for (int i = 0; i < 3; ++i) EXPECT_FALSE(rl.recordAuthFailure(ip.view(), lim, t + i * kSec).banned);
    t += 61 * kSec;
  }
  EXPECT_EQ(rl.stats().bans_started, 0u);
}

TEST(Lockout, ConcurrentFailuresStartExactlyOneBan) {
  RateLimiter rl(RateLimiterOptions{1024, 4});
  AuthFailureLimit lim{10, 60, 300};
  for (int round = 0; round < 10; ++round) {
    IpKey ip = ipKey("10.0.0." + std::to_string(round));
    std::atomic<int> started{0}, not_banned{0};
    runThreads(8, [&](int) {
      for (int i = 0; i < 50; ++i) {
        BanStatus b = rl.recordAuthFailure(ip.view(), lim, kT0);
        started += b.ban_started;
        not_banned += !b.banned;
      }
    });
    EXPECT_EQ(started.load(), 1) << round;
    EXPECT_EQ(not_banned.load(), 10) << round;  // exactly max failures counted before the ban
  }
  EXPECT_EQ(rl.stats().bans_started, 10u);
}

TEST(Lockout, HomelessIpsShareTheOverflowCell) {
  RateLimiter rl(RateLimiterOptions{4, 1, 0});
  AuthFailureLimit lim{2, 60, 300};
  Limit slow{1, 5};
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(rl.decide(LimitKind::kToken, "fill" + std::to_string(i), slow, kT0).allowed);
  // The table is full: these IPs are counted together (conservative).
  EXPECT_FALSE(rl.recordAuthFailure(ipKey("192.0.2.1").view(), lim, kT0).banned);
  EXPECT_FALSE(rl.recordAuthFailure(ipKey("192.0.2.2").view(), lim, kT0).banned);
  BanStatus b = rl.recordAuthFailure(ipKey("192.0.2.3").view(), lim, kT0);
  EXPECT_TRUE(b.banned && b.ban_started && b.fallback);
  EXPECT_TRUE(rl.checkBan(ipKey("192.0.2.1").view(), lim, kT0).banned);
  // Once cells free up, a new IP gets its own cell and is not banned.
  EXPECT_FALSE(rl.checkBan(ipKey("192.0.2.1").view(), lim, kT0 + 10 * kSec).banned);
}

// --- IP keys --------------------------------------------------------------------

TEST(IpKey, Ipv4AsIsIpv6ByPrefix64) {
  EXPECT_EQ(ipKey("2001:db8:1:2:aaaa::1").view(), ipKey("2001:db8:1:2:bbbb:cccc:dddd:2").view());
  EXPECT_EQ(ipKey("2001:db8:1:2::").view(), ipKey("2001:0db8:0001:0002:ffff:ffff:ffff:ffff").view());
  EXPECT_NE(ipKey("2001:db8:1:2::1").view(), ipKey("2001:db8:1:3::1").view());
  EXPECT_EQ(ipKey("fe80::1%eth0").view(), ipKey("fe80::2").view());
  EXPECT_NE(ipKey("192.0.2.1").view(), ipKey("192.0.2.2").view());
  EXPECT_EQ(ipKey("::ffff:192.0.2.1").view(), ipKey("192.0.2.1").view());
  EXPECT_EQ(ipKey("192.0.2.1").view().size(), 5u);
  EXPECT_EQ(ipKey("2001:db8::1").view().size(), 9u);
  // Not an address: a stable hash of the text, distinct per text.
  EXPECT_EQ(ipKey("bogus").view(), ipKey("bogus").view());
  EXPECT_NE(ipKey("bogus").view(), ipKey("bogus2").view());
  EXPECT_NE(ipKey("").view(), ipKey("192.0.2.1").view());

  RateLimiter rl(RateLimiterOptions{1024, 4});
  Limit lim{1, 1};
  EXPECT_TRUE(rl.decide(LimitKind::kIp, ipKey("2001:db8:0:7::a").view(), lim, kT0).allowed);
  EXPECT_FALSE(rl.decide(LimitKind::kIp, ipKey("2001:db8:0:7::b").view(), lim, kT0).allowed);
  EXPECT_TRUE(rl.decide(LimitKind::kIp, ipKey("2001:db8:0:8::a").view(), lim, kT0).allowed);
}

// ipKey parses canonical dotted quads itself; every IPv4 text must map to
// exactly what inet_pton makes of it (and non-addresses to the text hash).
TEST(IpKey, Ipv4FastPathAgreesWithInetPton) {
  const char* texts[] = {"0.0.0.0", "1.2.3.4", "9.99.199.255", "255.255.255.255", "10.0.0.1",
                         "127.0.0.1", "256.1.1.1", "1.2.3.256", "01.2.3.4", "1.02.3.4", "1.2.3.04",
                         "00.0.0.0", "1.2.3", "1.2.3.4.", "1.2.3.4.5", ".1.2.3", "1..2.3", "1.2.3.4 ",
                         " 1.2.3.4", "1.2.3.-4", "1.2.3.4a", "1234.1.1.1", "1.2.3.1000", "0x1.2.3.4",
                         "1.2.3.4%eth0", ""};
  for (const char* t : texts) {
    unsigned char a[4];
    const std::string text(t);
    const std::string without_zone = text.substr(0, text.find('%'));
    const IpKey k = ipKey(text);
    if (inet_pton(AF_INET, without_zone.c_str(), a) == 1) {
      ASSERT_EQ(k.view().size(), 5u) << t;
      EXPECT_EQ(k.view()[0], '4') << t;
      EXPECT_EQ(std::memcmp(k.view().data() + 1, a, 4), 0) << t;
    } else {
      EXPECT_NE(k.view()[0], '4') << t << " is not IPv4 text for inet_pton";
    }
  }
  // Exhaustive over one octet position: every value and its zero-padded forms.
  for (int v = 0; v < 1000; ++v) {
    for (const char* fmt : {"10.0.0.%d", "10.0.0.%02d", "10.0.0.%03d", "%d.0.0.1"}) {
      char buf[32];
      std::snprintf(buf, sizeof(buf), fmt, v);
      unsigned char a[4];
      const bool ok = inet_pton(AF_INET, buf, a) == 1;
      const IpKey k = ipKey(buf);
      EXPECT_EQ(k.view()[0] == '4', ok) << buf;
      if (ok) {
        EXPECT_EQ(std::memcmp(k.view().data() + 1, a, 4), 0) << buf;
      }
    }
  }
}

}  // namespace
}  // namespace portcullis
