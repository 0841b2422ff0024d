// Per-request logging work (SPEC §8), split by thread: what an event loop pays
// to log one authenticated request (its access line and its auth.success audit
// event), and what the audit writer thread then pays per record (seq, ts,
// prev, HMAC-SHA256 and the JSON line). bench/logging_cost.sh measures the
// same work end to end through the proxy; these isolate the user-space parts.
#include <benchmark/benchmark.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "filters/request_context.h"
#include "proxy/access_log.h"
#include "proxy/audit_log.h"
#include "proxy/audit_verify.h"
#include "proxy/keyring.h"
#include "proxy/security_events.h"
#include "proxy/snapshot.h"

namespace portcullis {
namespace {

std::shared_ptr<const LocalKeyring> benchKeyring() {
  static std::shared_ptr<const LocalKeyring> ring = [] {
    std::string tmpl = "/tmp/pclogbenchXXXXXX";
    const std::string dir = mkdtemp(tmpl.data());
    KeyringData data;
    data.active = "k1";
    MasterKey k{};
    for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(i * 7 + 3);
    data.keys.emplace_back("k1", k);
    std::string error;
    std::shared_ptr<const LocalKeyring> r;
    if (!writeKeyring(dir + "/keyring.toml", data, error) || !(r = LocalKeyring::load(dir + "/keyring.toml", error))) {
      std::fprintf(stderr, "keyring: %s\n", error.c_str());
      std::abort();
    }
    ::unlink((dir + "/keyring.toml").c_str());
    ::rmdir(dir.c_str());
    return r;
  }();
  return ring;
}

double processCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

AccessRecord benchAccessRecord() {
  AccessRecord r;
  r.ts_unix_us = 1796400000123456;
  r.request_id = "0f3a9c2b7d4e1f60a8b9c0d1e2f30415";
  r.remote_ip = "127.0.0.1";
  r.method = "GET";
  r.path = "/tiny";
  r.status = 200;
  r.bytes_in = 143;
  r.bytes_out = 211;
  r.duration_us = 230;
  r.upstream = "origin";
  r.upstream_status = 200;
  r.token_id = "abcdefghijkl";
  r.account = "bench";
  return r;
}

// The access line of one request, formatted as Connection::logAccess does.
void BM_AccessLineFormat(benchmark::State& state) {
  const AccessRecord r = benchAccessRecord();
  for (auto _ : state) {
    std::string line;
    line.reserve(384);
    formatAccessRecord(r, line);
    benchmark::DoNotOptimize(line.data());
  }
}
BENCHMARK(BM_AccessLineFormat);

// The auth.success fields of one request, as reportRequest() builds them:
// copied, length-prefixed (PackedFields); the audit writer formats them.
void BM_AuthSuccessFields(benchmark::State& state) {
  for (auto _ : state) {
    PackedFields f;
    f.str("request_id", "0f3a9c2b7d4e1f60a8b9c0d1e2f30415")
        .str("ip", "127.0.0.1")
        .str("method", "GET")
        .str("path", "/tiny")
        .str("token_id", "abcdefghijkl")
        .str("account", "bench");
    benchmark::DoNotOptimize(f.view().data());
  }
}
BENCHMARK(BM_AuthSuccessFields);

// Event-loop side of one authenticated request with both logs on, as a
// worker does it: reportRequest() (auth.success, staged by the thread's
// AuditLog::Stage) and the access record packed into a LogWriter::Stage, both
// published every `range(0)` requests (a worker publishes once per loop
// iteration; 1 = a queue entry per record). Both writers drain concurrently
// into /dev/null, so the loop pays for its queues, not for a disk.
void BM_RequestLoggingLoopSide(benchmark::State& state) {
  AuditLog audit(1 << 16);
  LogWriter access(1 << 16);
  std::string error;
  if (!audit.start("/dev/null", benchKeyring(), error) || !access.start("/dev/null", error)) {
    state.SkipWithError(error.c_str());
    return;
  }
  Snapshot snap;
  snap.audit = &audit;
  RequestContext ctx;
  ctx.request_id = "0f3a9c2b7d4e1f60a8b9c0d1e2f30415";
  ctx.remote_ip = "127.0.0.1";
  ctx.token_id = "abcdefghijkl";
  ctx.account = "bench";
  const AccessRecord r = benchAccessRecord();
  const int64_t per_publish = state.range(0);
  {
    LogWriter::Stage access_stage(&access, &formatPackedAccessRecord);
    AuditLog::Stage audit_stage;
    audit_stage.attach(&audit);
    int64_t n = 0;
    for (auto _ : state) {
      reportRequest(snap, ctx, "GET", "/tiny", 200, 211);
      packAccessRecord(r, access_stage.begin());
      access_stage.end();
      if (++n == per_publish) {
        n = 0;
        access_stage.publish();
        audit_stage.publish();
      }
    }
  }  // the stages publish what is left
  audit.stop();
  access.stop();
  state.counters["audit_overflowed"] = static_cast<double>(audit.overflowed());
  state.counters["access_dropped"] = static_cast<double>(access.dropped());
  state.counters["audit_written"] = static_cast<double>(audit.written());
}
BENCHMARK(BM_RequestLoggingLoopSide)->Arg(1)->Arg(16)->Iterations(1 << 17);

// Audit writer side: records queued before start() are then sealed (seq, ts,
// prev, HMAC) and written by the writer thread to /dev/null. The time is the
// process's CPU time from start() to stop() returning (the main thread only
// waits in join meanwhile), so neighbours on a shared machine do not count.
void BM_AuditWriterPerRecord(benchmark::State& state) {
  constexpr size_t kRecords = 1 << 16;
  std::string fields;
  {
    AuditFields f;
    f.str("request_id", "0f3a9c2b7d4e1f60a8b9c0d1e2f30415")
        .str("ip", "127.0.0.1")
        .str("method", "GET")
        .str("path", "/tiny")
        .str("token_id", "abcdefghijkl")
        .str("account", "bench");
    fields = f.take();
  }
  for (auto _ : state) {
    state.PauseTiming();
    auto audit = std::make_unique<AuditLog>(kRecords * 2);
    for (size_t i = 0; i < kRecords; ++i) audit->record("auth.success", std::string(fields));
    std::string error;
    state.ResumeTiming();
    const double t0 = processCpuSeconds();
    if (!audit->start("/dev/null", benchKeyring(), error)) {
      state.SkipWithError(error.c_str());
      return;
    }
    audit->stop();
    state.SetIterationTime(processCpuSeconds() - t0);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kRecords));
  state.counters["ns_per_record"] = benchmark::Counter(static_cast<double>(state.iterations() * kRecords),
                                                       benchmark::Counter::kIsRate | benchmark::Counter::kInvert,
                                                       benchmark::Counter::kIs1000);
}
BENCHMARK(BM_AuditWriterPerRecord)->Unit(benchmark::kMillisecond)->UseManualTime();

}  // namespace
}  // namespace portcullis

BENCHMARK_MAIN();
