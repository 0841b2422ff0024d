// Rate limiter micro-benchmarks: one decision uncontended, 1..8 threads on
// distinct keys, 1..8 threads on one key, each side by side with a
// std::mutex + std::unordered_map GCRA baseline in the same binary.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "filters/rate_limiter.h"

namespace {

using namespace portcullis;

// The obvious design: one map of TATs behind one mutex, same GCRA math.
class MutexLimiter {
 public:
  bool decide(LimitKind kind, std::string_view key, const Limit& lim, uint64_t now) {
    uint64_t interval = static_cast<uint64_t>(std::ceil(1e9 / lim.rps));
    uint64_t cap = uint64_t{lim.burst} * interval;
    std::lock_guard<std::mutex> g(mu_);
    auto [it, inserted] = map_.try_emplace(std::string(key), 0);
    (void)kind;
    uint64_t next = std::max(it->second, now) + interval;
    if (next > now + cap) return false;
    it->second = next;
    return true;
  }

 private:
  std::mutex mu_;
  std::unordered_map<std::string, uint64_t> map_;
};

RateLimiter& lockFree() {
  static RateLimiter rl;  // default: 1M keys, 32 MiB
  return rl;
}
MutexLimiter& mutexed() {
  static MutexLimiter m;
  return m;
}

// Generous limits so the timed path is the admitting one (a CAS per call):
// I = 1 ns and a 4 s burst, at a clock fixed for the run, admit every call.
constexpr Limit kLimit{1e9, 4000000000u};
constexpr uint64_t kT0 = 1000000000000ull;

// The fake clock of each benchmark run starts 10^4 s after the previous run's,
// so state left in the shared static tables by earlier runs (Google Benchmark
// runs each function several times) has expired. Thread 0 moves the epoch
// before the timing loop; every thread reads it once inside the loop, after
// the start barrier.
std::atomic<uint64_t> g_epoch{kT0};
constexpr uint64_t kRunSpacing = 10000000000000ull;
inline void newRun(benchmark::State& state) {
  if (state.thread_index() == 0) g_epoch.fetch_add(kRunSpacing);
}
#define PC_RUN_CLOCK(now)                  \
  if (now == 0) [[unlikely]]               \
    now = g_epoch.load(std::memory_order_relaxed)

inline bool admitted(const Decision& d) { return d.allowed; }
inline bool admitted(bool b) { return b; }

std::vector<std::string> keysFor(int thread, int n, const char* prefix) {
  std::vector<std::string> keys;
  for (int i = 0; i < n; ++i) keys.push_back(std::string(prefix) + std::to_string(thread) + "-" + std::to_string(i));
  return keys;
}

// --- One decision, one thread, one key ------------------------------------------

void BM_LockFree_Uncontended(benchmark::State& state) {
  RateLimiter& rl = lockFree();
  newRun(state);
  uint64_t now = 0;
  size_t allowed = 0;
  for (auto _ : state) {
    PC_RUN_CLOCK(now);
    allowed += rl.decide(LimitKind::kToken, "uncontended-token", kLimit, now).allowed;
  }
  state.counters["allowed%"] = 100.0 * allowed / std::max<size_t>(state.iterations(), 1);
}
BENCHMARK(BM_LockFree_Uncontended);

void BM_LockFree_Uncontended_Denied(benchmark::State& state) {
  RateLimiter& rl = lockFree();
  const Limit lim{1, 1};
  for (auto _ : state) benchmark::DoNotOptimize(rl.decide(LimitKind::kIp, "denied-ip", lim, kT0).allowed);
}
BENCHMARK(BM_LockFree_Uncontended_Denied);

void BM_Mutex_Uncontended(benchmark::State& state) {
  MutexLimiter& m = mutexed();
  newRun(state);
  uint64_t now = 0;
  size_t allowed = 0;
  for (auto _ : state) {
    PC_RUN_CLOCK(now);
    allowed += m.decide(LimitKind::kToken, "uncontended-token", kLimit, now);
  }
  state.counters["allowed%"] = 100.0 * allowed / std::max<size_t>(state.iterations(), 1);
}
BENCHMARK(BM_Mutex_Uncontended);

// --- Distinct keys per thread (1024 keys each, cycled) -------------------------

template <class L>
void distinctKeys(benchmark::State& state, L& lim) {
  std::vector<std::string> keys = keysFor(state.thread_index(), 1024, "distinct-");
  newRun(state);
  uint64_t now = 0;
  size_t i = 0, allowed = 0;
  for (auto _ : state) {
    PC_RUN_CLOCK(now);
    allowed += admitted(lim.decide(LimitKind::kToken, keys[i++ & 1023], kLimit, now));
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["allowed%"] = benchmark::Counter(100.0 * allowed / std::max<size_t>(state.iterations(), 1),
                                                  benchmark::Counter::kAvgThreads);
}
void BM_LockFree_DistinctKeys(benchmark::State& state) { distinctKeys(state, lockFree()); }
void BM_Mutex_DistinctKeys(benchmark::State& state) { distinctKeys(state, mutexed()); }
BENCHMARK(BM_LockFree_DistinctKeys)->ThreadRange(1, 8)->UseRealTime();
BENCHMARK(BM_Mutex_DistinctKeys)->ThreadRange(1, 8)->UseRealTime();

// --- All threads on one key -------------------------------------------------------

template <class L>
void sameKey(benchmark::State& state, L& lim) {
  newRun(state);
  uint64_t now = 0;
  size_t allowed = 0;
  for (auto _ : state) {
    PC_RUN_CLOCK(now);
    allowed += admitted(lim.decide(LimitKind::kToken, "the-hot-key", kLimit, now));
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["allowed%"] = benchmark::Counter(100.0 * allowed / std::max<size_t>(state.iterations(), 1),
                                                  benchmark::Counter::kAvgThreads);
}
void BM_LockFree_SameKey(benchmark::State& state) { sameKey(state, lockFree()); }
void BM_Mutex_SameKey(benchmark::State& state) { sameKey(state, mutexed()); }
BENCHMARK(BM_LockFree_SameKey)->ThreadRange(1, 8)->UseRealTime();
BENCHMARK(BM_Mutex_SameKey)->ThreadRange(1, 8)->UseRealTime();

// --- Helpers on the response path --------------------------------------------------

void BM_IpKey_V6(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(ipKey("2001:db8:85a3:8d3:1319:8a2e:370:7348"));
}
BENCHMARK(BM_IpKey_V6);

void BM_RateLimitHeader(benchmark::State& state) {
  Decision d;
  d.remaining = 123;
  d.reset_ns = 1500000000;
  for (auto _ : state) benchmark::DoNotOptimize(rateLimitHeader("token", d));
}
BENCHMARK(BM_RateLimitHeader);

}  // namespace

BENCHMARK_MAIN();
