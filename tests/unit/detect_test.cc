// Detector: each kind fires exactly at its threshold, once per cooldown, with
// an injected clock and a recording sink; window expiry, independence of keys,
// EWMA baselines with warmup, exactly one alert under racing threads, and a
// table overflowing into its fallback.
#include "proxy/detect.h"

#include <gtest/gtest.h>

#include <atomic>
#include <barrier>
#include <string>
#include <thread>
#include <vector>

namespace portcullis {
namespace {

constexpr uint64_t kSec = 1000000000ull;
constexpr uint64_t kT0 = 1000 * kSec;  // tests start at an arbitrary non-zero time

struct Recorded {
  AlertKind kind_id;
  std::string kind, ip, token_id;
  uint64_t count, threshold, window_s;
  double baseline;
};

// Copies every alert (the Alert's views die with the call). Thread-safe
// enough for the concurrency tests: they only count.
class RecordingSink : public AlertSink {
 public:
  void onAlert(const Alert& a) override {
    calls.fetch_add(1);
    if (record)
      alerts.push_back({a.kind_id, std::string(a.kind), std::string(a.ip), std::string(a.token_id), a.count,
                        a.threshold, a.window_s, a.baseline});
  }
  std::vector<Recorded> alerts;
  std::atomic<uint64_t> calls{0};
  bool record = true;
};

class DetectTest : public ::testing::Test {
 protected:
  DetectConfig cfg;
  RecordingSink sink;
};

TEST_F(DetectTest, AuthFailuresFireExactlyAtThreshold) {
  Detector d(cfg, &sink);
  for (uint32_t i = 0; i + 1 < cfg.auth_failures_count; ++i) d.authFailure("192.0.2.1", kT0 + i * kSec);
  EXPECT_TRUE(sink.alerts.empty());
  d.authFailure("192.0.2.1", kT0 + 20 * kSec);
  ASSERT_EQ(sink.alerts.size(), 1u);
  const Recorded& a = sink.alerts[0];
  EXPECT_EQ(a.kind, "auth_failures");
  EXPECT_EQ(a.kind_id, AlertKind::kAuthFailures);
  EXPECT_EQ(a.ip, "192.0.2.1");
  EXPECT_EQ(a.token_id, "");
  EXPECT_EQ(a.count, 20u);
  EXPECT_EQ(a.threshold, 20u);
  EXPECT_EQ(a.window_s, 60u);
  // More failures in the same window (and cooldown): nothing more.
  for (int i = 0; i < 100; ++i) d.authFailure("192.0.2.1", kT0 + 30 * kSec);
  EXPECT_EQ(sink.alerts.size(), 1u);
  EXPECT_EQ(d.alertsRaised(AlertKind::kAuthFailures), 1u);
  EXPECT_EQ(d.alertsRaised(AlertKind::kScanning), 0u);
}

TEST_F(DetectTest, CooldownThenNewWindowAlertsAgain) {
  Detector d(cfg, &sink);
  auto burst = [&](uint64_t at) {
    for (uint32_t i = 0; i < cfg.auth_failures_count; ++i) d.authFailure("198.51.100.7", at);
  };
  burst(kT0);
  EXPECT_EQ(sink.alerts.size(), 1u);
  burst(kT0 + 100 * kSec);  // a new window, still in the 300 s cooldown
  EXPECT_EQ(sink.alerts.size(), 1u);
  burst(kT0 + 301 * kSec);  // a new window after the cooldown
  ASSERT_EQ(sink.alerts.size(), 2u);
  EXPECT_EQ(sink.alerts[1].count, 20u);
}

TEST_F(DetectTest, WindowExpiryResetsTheCount) {
  Detector d(cfg, &sink);
  for (uint32_t i = 0; i + 1 < cfg.auth_failures_count; ++i) d.authFailure("192.0.2.9", kT0);
  d.authFailure("192.0.2.9", kT0 + 60 * kSec);  // the window [t0, t0+60s) is over
  for (uint32_t i = 0; i + 2 < cfg.auth_failures_count; ++i) d.authFailure("192.0.2.9", kT0 + 61 * kSec);
  EXPECT_TRUE(sink.alerts.empty());  // 19 in the new window
  d.authFailure("192.0.2.9", kT0 + 119 * kSec);
  ASSERT_EQ(sink.alerts.size(), 1u);
  EXPECT_EQ(sink.alerts[0].count, 20u);
}

TEST_F(DetectTest, KeysAreIndependent) {
  Detector d(cfg, &sink);
  for (uint32_t i = 0; i + 1 < cfg.auth_failures_count; ++i) {
    d.authFailure("192.0.2.1", kT0);
    d.authFailure("192.0.2.2", kT0);
    d.notFound("192.0.2.1", kT0);  // another kind, same IP
  }
  EXPECT_TRUE(sink.alerts.empty());
  d.authFailure("192.0.2.2", kT0);
  ASSERT_EQ(sink.alerts.size(), 1u);
  EXPECT_EQ(sink.alerts[0].ip, "192.0.2.2");
}

TEST_F(DetectTest, IPv6GroupedByPrefix) {
  Detector d(cfg, &sink);
  for (uint32_t i = 0; i < cfg.auth_failures_count; ++i)
    d.authFailure("2001:db8:1:2::" + std::to_string(i + 1), kT0);  // one /64, 20 addresses
  ASSERT_EQ(sink.alerts.size(), 1u);
  EXPECT_EQ(sink.alerts[0].ip, "2001:db8:1:2::20");  // the 20th address (decimal text)
}

TEST_F(DetectTest, IPv4AndMappedIPv6AreOneKey) {
  Detector d(cfg, &sink);
  for (uint32_t i = 0; i + 1 < cfg.auth_failures_count; ++i)
    d.authFailure(i % 2 ? "192.0.2.5" : "::ffff:192.0.2.5", kT0);
  d.authFailure("192.0.2.05", kT0);  // not canonical text: a key of its own
  EXPECT_TRUE(sink.alerts.empty());
  d.authFailure("192.0.2.5", kT0);
  ASSERT_EQ(sink.alerts.size(), 1u);
  EXPECT_EQ(sink.alerts[0].count, 20u);
}

TEST_F(DetectTest, ForbiddenPerIpAndPerToken) {
  Detector d(cfg, &sink);
  // One token from many IPs: the token alerts, no IP does.
  for (uint32_t i = 0; i < cfg.forbidden_count; ++i)
    d.forbidden("203.0.113." + std::to_string(i + 1), "abcdefghijkl", kT0);
  ASSERT_EQ(sink.alerts.size(), 1u);
  EXPECT_EQ(sink.alerts[0].kind, "forbidden");
  EXPECT_EQ(sink.alerts[0].token_id, "abcdefghijkl");
  EXPECT_EQ(sink.alerts[0].ip, "");
  // One IP with many tokens (and without one): the IP alerts, at exactly 20.
  for (uint32_t i = 0; i + 1 < cfg.forbidden_count; ++i)
    d.forbidden("203.0.113.200", i % 2 ? "" : "t" + std::to_string(i), kT0);
  EXPECT_EQ(sink.alerts.size(), 1u);
  d.forbidden("203.0.113.200", "", kT0);
  ASSERT_EQ(sink.alerts.size(), 2u);
  EXPECT_EQ(sink.alerts[1].kind, "forbidden");
  EXPECT_EQ(sink.alerts[1].ip, "203.0.113.200");
  EXPECT_EQ(sink.alerts[1].token_id, "");
  EXPECT_EQ(sink.alerts[1].count, 20u);
  EXPECT_EQ(d.alertsRaised(AlertKind::kForbidden), 2u);
}

TEST_F(DetectTest, NotFoundIsScanning) {
  Detector d(cfg, &sink);
  for (uint32_t i = 0; i + 1 < cfg.not_found_count; ++i) d.notFound("192.0.2.50", kT0 + i * 1000000);
  EXPECT_TRUE(sink.alerts.empty());
  d.notFound("192.0.2.50", kT0 + kSec);
  ASSERT_EQ(sink.alerts.size(), 1u);
  EXPECT_EQ(sink.alerts[0].kind, "scanning");
  EXPECT_EQ(sink.alerts[0].count, 50u);
  EXPECT_EQ(sink.alerts[0].threshold, 50u);
}

TEST_F(DetectTest, EveryBanAlertsEvenWithinTheCooldown) {
  Detector d(cfg, &sink);
  d.ban("192.0.2.66", kT0);
  ASSERT_EQ(sink.alerts.size(), 1u);
  EXPECT_EQ(sink.alerts[0].kind, "ban");
  EXPECT_EQ(sink.alerts[0].ip, "192.0.2.66");
  // A second ban of the same IP within cooldown_s (ban_s < cooldown_s): the
  // brute force goes on, and SPEC §8 makes every ban an alert.
  d.ban("192.0.2.66", kT0 + 10 * kSec);
  ASSERT_EQ(sink.alerts.size(), 2u);
  EXPECT_EQ(sink.alerts[1].kind, "ban");
  EXPECT_EQ(sink.alerts[1].ip, "192.0.2.66");
  d.ban("192.0.2.67", kT0 + 10 * kSec);  // another IP
  EXPECT_EQ(sink.alerts.size(), 3u);
  EXPECT_EQ(d.alertsRaised(AlertKind::kBan), 3u);
  EXPECT_EQ(d.fallbacks(), 0u);
}

// Feeds `per_interval` requests of `bytes` each, spread over one interval.
void feedInterval(Detector& d, std::string_view token, uint64_t interval, uint64_t per_interval, uint64_t bytes) {
  const uint64_t start = kT0 + interval * 10 * kSec;
  for (uint64_t i = 0; i < per_interval; ++i) d.tokenRequest(token, bytes, start + i * (10 * kSec / per_interval));
}

TEST_F(DetectTest, TokenRateSpikeAfterWarmup) {
  Detector d(cfg, &sink);
  for (uint64_t iv = 0; iv < 6; ++iv) feedInterval(d, "steadytoken1", iv, 50, 100);
  EXPECT_TRUE(sink.alerts.empty());
  feedInterval(d, "steadytoken1", 6, 1000, 100);  // 20x
  ASSERT_EQ(sink.alerts.size(), 1u);
  const Recorded& a = sink.alerts[0];
  EXPECT_EQ(a.kind, "token_rate");
  EXPECT_EQ(a.token_id, "steadytoken1");
  EXPECT_EQ(a.window_s, 10u);
  EXPECT_NEAR(a.baseline, 50.0, 0.5);
  EXPECT_EQ(a.threshold, 500u);
  EXPECT_EQ(a.count, 501u);  // the first request above 10x the baseline
  // The burst continues: cooldown.
  feedInterval(d, "steadytoken1", 7, 1000, 100);
  EXPECT_EQ(sink.alerts.size(), 1u);
}

TEST_F(DetectTest, SteadyTokenNeverAlerts) {
  Detector d(cfg, &sink);
  for (uint64_t iv = 0; iv < 100; ++iv) feedInterval(d, "steadytoken2", iv, 300 + (iv % 3) * 50, 4096);
  EXPECT_TRUE(sink.alerts.empty());
}

TEST_F(DetectTest, NewTokenBurstWithoutHistoryDoesNotAlert) {
  Detector d(cfg, &sink);
  for (uint64_t iv = 0; iv < 5; ++iv) feedInterval(d, "newtoken0001", iv, iv == 0 ? 1 : 5000, 1 << 20);
  EXPECT_TRUE(sink.alerts.empty());  // 5 intervals of history < warmup 6
}

TEST_F(DetectTest, RateBelowMinimumDoesNotAlert) {
  Detector d(cfg, &sink);
  for (uint64_t iv = 0; iv < 10; ++iv) feedInterval(d, "quiettoken01", iv, 2, 10);
  feedInterval(d, "quiettoken01", 10, 100, 10);  // 50x, but not above rate_min
  EXPECT_TRUE(sink.alerts.empty());
}

TEST_F(DetectTest, ExfiltrationOnBytes) {
  Detector d(cfg, &sink);
  const uint64_t kMiB = 1 << 20;
  for (uint64_t iv = 0; iv < 6; ++iv) feedInterval(d, "bytestoken01", iv, 10, 200 * 1024);  // 2 MB/interval
  EXPECT_TRUE(sink.alerts.empty());
  feedInterval(d, "bytestoken01", 6, 10, 4 * kMiB);  // 40 MiB: 20x, request rate unchanged
  ASSERT_EQ(sink.alerts.size(), 1u);
  EXPECT_EQ(sink.alerts[0].kind, "exfiltration");
  EXPECT_EQ(sink.alerts[0].token_id, "bytestoken01");
  EXPECT_NEAR(sink.alerts[0].baseline, 2048000.0, 1.0);
  EXPECT_GT(sink.alerts[0].count, 10 * kMiB);
  EXPECT_EQ(d.alertsRaised(AlertKind::kTokenRate), 0u);

  // A new token moving lots of bytes at once: no history, no alert.
  for (uint64_t iv = 0; iv < 3; ++iv) feedInterval(d, "bytestoken02", iv, 10, iv == 0 ? 1 : 100 * kMiB);
  // A steady heavy token: never.
  for (uint64_t iv = 0; iv < 50; ++iv) feedInterval(d, "bytestoken03", iv, 10, 3 * kMiB);
  EXPECT_EQ(sink.alerts.size(), 1u);
}

TEST_F(DetectTest, IdleIntervalsDecayTheBaseline) {
  Detector d(cfg, &sink);
  for (uint64_t iv = 0; iv < 10; ++iv) feedInterval(d, "idletoken001", iv, 100, 1);
  // 40 idle intervals: the baseline decays to 100 * 0.9^40 ~ 1.5, so a modest
  // burst is far above it.
  feedInterval(d, "idletoken001", 50, 300, 1);
  ASSERT_EQ(sink.alerts.size(), 1u);
  EXPECT_EQ(sink.alerts[0].kind, "token_rate");
  EXPECT_LT(sink.alerts[0].baseline, 5.0);
  EXPECT_EQ(sink.alerts[0].count, 101u);  // the first request above rate_min
}

TEST_F(DetectTest, DisabledDoesNothing) {
  cfg.enabled = false;
  Detector d(cfg, &sink);
  for (int i = 0; i < 100; ++i) d.authFailure("192.0.2.1", kT0);
  d.ban("192.0.2.1", kT0);
  d.tokenRequest("x", 1, kT0);
  EXPECT_TRUE(sink.alerts.empty());
  EXPECT_EQ(d.memoryBytes(), 0u);
  EXPECT_EQ(d.fallbacks(), 0u);
}

TEST_F(DetectTest, RacingThreadsRaiseExactlyOneAlert) {
  sink.record = false;
  for (int round = 0; round < 20; ++round) {
    sink.calls = 0;
    Detector d(cfg, &sink);
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&] {
        while (!go.load()) std::this_thread::yield();
        for (int i = 0; i < 200; ++i) {
          d.authFailure("192.0.2.77", kT0 + i);
          d.tokenRequest("racetoken001", 1, kT0 + i);
        }
      });
    go = true;
    for (auto& th : threads) th.join();
    EXPECT_EQ(d.alertsRaised(AlertKind::kAuthFailures), 1u);
    EXPECT_EQ(sink.calls.load(), 1u);
  }
}

// Racing first inserts of many keys: a key never gets two cells, so each key
// alerts exactly once.
TEST_F(DetectTest, RacingInsertsGiveEachKeyOneAlert) {
  sink.record = false;
  cfg.capacity_keys = 1024;
  Detector d(cfg, &sink);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (uint32_t pass = 0; pass < cfg.auth_failures_count; ++pass)
        for (int ip = 0; ip < 300; ++ip)
          d.authFailure("198.18." + std::to_string(ip / 256) + "." + std::to_string(ip % 256), kT0);
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(d.fallbacks(), 0u);
  EXPECT_EQ(d.alertsRaised(AlertKind::kAuthFailures), 300u);
  EXPECT_EQ(sink.calls.load(), 300u);
}

TEST_F(DetectTest, RacingThreadsOnATokenBaseline) {
  sink.record = false;
  Detector d(cfg, &sink);
  std::vector<std::thread> threads;
  std::barrier sync(4);
  // 4 threads, 50 requests each per interval (200 total) for 8 intervals,
  // then 4000 per interval (20x): exactly one token_rate alert.
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (uint64_t iv = 0; iv < 10; ++iv) {
        sync.arrive_and_wait();  // every thread reads a clock in the same interval
        feedInterval(d, "racetoken002", iv, iv < 8 ? 50 : 1000, 10);
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(d.alertsRaised(AlertKind::kTokenRate), 1u);
  EXPECT_EQ(sink.calls.load(), 1u);
}

TEST_F(DetectTest, BeyondCapacityFallsBackWithoutLosingAHotKey) {
  cfg.capacity_keys = 64;  // 128 cells
  Detector d(cfg, &sink);
  // A hot IP is counted first, then 10000 distinct IPs each fail once.
  for (uint32_t i = 0; i + 1 < cfg.auth_failures_count; ++i) d.authFailure("192.0.2.1", kT0);
  for (int i = 0; i < 10000; ++i) {
    std::string ip =
        "10." + std::to_string(i / 65536) + "." + std::to_string((i / 256) % 256) + "." + std::to_string(i % 256);
    d.authFailure(ip, kT0 + 1);
    d.tokenRequest("tok" + std::to_string(i), 100, kT0 + 1);
  }
  EXPECT_GT(d.fallbacks(), 0u);
  uint64_t before = d.alertsRaised(AlertKind::kAuthFailures);
  d.authFailure("192.0.2.1", kT0 + 2);
  EXPECT_EQ(d.alertsRaised(AlertKind::kAuthFailures), before + 1);
  ASSERT_FALSE(sink.alerts.empty());
  EXPECT_EQ(sink.alerts.back().ip, "192.0.2.1");
  EXPECT_EQ(sink.alerts.back().count, 20u);
  // Once the windows are over, every cell is reclaimed for new keys: the
  // auth-failure counters of 128 addresses picked to fill each group's 8
  // cells exactly (placement depends on the table's random seed) find a cell
  // each.
  std::vector<std::string> fill;
  std::vector<int> per_group(16, 0);
  for (int i = 0; fill.size() < 128 && i < 65536; ++i) {
    std::string ip = "172.16." + std::to_string(i / 256) + "." + std::to_string(i % 256);
    const size_t g = d.ipGroupOf(ip);
    ASSERT_LT(g, per_group.size());
    if (per_group[g] < 8) {
      ++per_group[g];
      fill.push_back(std::move(ip));
    }
  }
  ASSERT_EQ(fill.size(), 128u);
  uint64_t fb = d.fallbacks();
  for (const std::string& ip : fill) d.authFailure(ip, kT0 + 400 * kSec);
  EXPECT_EQ(d.fallbacks(), fb);
}

TEST_F(DetectTest, HashSeedIsRandomPerTable) {
  // With a fixed seed two detectors place every address alike, so addresses
  // that crowd one group (and push a victim onto the shared overflow counter)
  // could be computed offline; with a random seed per table, 64 addresses over
  // 16 groups land alike with probability 2^-256.
  cfg.capacity_keys = 64;  // 128 cells, 16 groups
  Detector a(cfg, &sink), b(cfg, &sink);
  int same = 0;
  for (int i = 0; i < 64; ++i) {
    const std::string ip = "198.51.100." + std::to_string(i);
    ASSERT_LT(a.ipGroupOf(ip), 16u);
    same += a.ipGroupOf(ip) == b.ipGroupOf(ip);
  }
  EXPECT_LT(same, 64);
}

TEST(DetectKindNames, Stable) {
  EXPECT_EQ(alertKindName(AlertKind::kAuthFailures), "auth_failures");
  EXPECT_EQ(alertKindName(AlertKind::kForbidden), "forbidden");
  EXPECT_EQ(alertKindName(AlertKind::kScanning), "scanning");
  EXPECT_EQ(alertKindName(AlertKind::kTokenRate), "token_rate");
  EXPECT_EQ(alertKindName(AlertKind::kExfiltration), "exfiltration");
  EXPECT_EQ(alertKindName(AlertKind::kBan), "ban");
  EXPECT_EQ(alertKindName(AlertKind::kAuditTamper), "audit_tamper");
}

}  // namespace
}  // namespace portcullis
