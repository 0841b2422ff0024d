// Detector micro-benchmarks: ns per tokenRequest() and per authFailure(),
// 1 and 2 threads, on distinct keys (the common case) and on one shared key
// (every call a CAS on the same cache line).
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "filters/rate_limiter.h"
#include "proxy/detect.h"

namespace {

using namespace portcullis;

class CountingSink : public AlertSink {
 public:
  void onAlert(const Alert&) override { n.fetch_add(1, std::memory_order_relaxed); }
  std::atomic<uint64_t> n{0};
};

CountingSink g_sink;

Detector& detector() {
  static Detector d(DetectConfig{}, &g_sink);  // default: 65536 keys per table, 8 MiB
  return d;
}

// Each run's fake clock starts 10^6 s after the previous run's, so the state
// left in the shared static detector by earlier runs has expired; within a
// run it advances 1 us per call (an interval rolls every 10^7 calls).
std::atomic<uint64_t> g_epoch{1000000000000ull};
constexpr uint64_t kRunSpacing = 1000000000000000ull;

std::vector<std::string> keysFor(int thread, int n, bool ip) {
  std::vector<std::string> keys;
  for (int i = 0; i < n; ++i)
    keys.push_back(ip ? "10." + std::to_string(thread) + "." + std::to_string(i / 256) + "." + std::to_string(i % 256)
                      : "tok" + std::to_string(thread) + "x" + std::to_string(100000 + i));
  return keys;
}

template <class F>
void run(benchmark::State& state, bool ip, bool shared_key, F&& call) {
  Detector& d = detector();
  if (state.thread_index() == 0) g_epoch.fetch_add(kRunSpacing);
  const std::vector<std::string> keys = keysFor(shared_key ? 0 : state.thread_index(), shared_key ? 1 : 1024, ip);
  uint64_t now = 0;
  size_t i = 0;
  for (auto _ : state) {
    if (now == 0) [[unlikely]]
      now = g_epoch.load(std::memory_order_relaxed);
    call(d, keys[i], now);
    now += 1000;
    if (++i == keys.size()) i = 0;
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_TokenRequest(benchmark::State& state) {
  run(state, false, false, [](Detector& d, const std::string& k, uint64_t now) { d.tokenRequest(k, 4096, now); });
}
void BM_TokenRequest_SameToken(benchmark::State& state) {
  run(state, false, true, [](Detector& d, const std::string& k, uint64_t now) { d.tokenRequest(k, 4096, now); });
}
void BM_AuthFailure(benchmark::State& state) {
  run(state, true, false, [](Detector& d, const std::string& k, uint64_t now) { d.authFailure(k, now); });
}
void BM_AuthFailure_SameIp(benchmark::State& state) {
  run(state, true, true, [](Detector& d, const std::string& k, uint64_t now) { d.authFailure(k, now); });
}

// For reference: the IP normalisation (inet_pton) every per-IP call includes.
void BM_IpKeyOnly(benchmark::State& state) {
  const std::vector<std::string> keys = keysFor(0, 1024, true);
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(ipKey(keys[i]));
    if (++i == keys.size()) i = 0;
  }
}

BENCHMARK(BM_TokenRequest)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_TokenRequest_SameToken)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_AuthFailure)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_AuthFailure_SameIp)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_IpKeyOnly);

}  // namespace

BENCHMARK_MAIN();
