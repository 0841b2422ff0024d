// Audit log (SPEC §8): verifier throughput over a ~64 MiB log (target
// >= 200 MB/s on one core) and the producer-side cost of AuditLog::record().
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "proxy/audit_log.h"
#include "proxy/audit_verify.h"
#include "proxy/keyring.h"

namespace portcullis {
namespace {

struct Fixture {
  std::string dir;
  std::string log_path;
  std::shared_ptr<const LocalKeyring> ring;
  uint64_t bytes = 0;

  Fixture() {
    std::string tmpl = "/tmp/pcauditbenchXXXXXX";
    dir = mkdtemp(tmpl.data());
    KeyringData data;
    data.active = "k1";
    MasterKey k{};
    for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(i * 13 + 5);
    data.keys.emplace_back("k1", k);
    std::string error;
    if (!writeKeyring(dir + "/keyring.toml", data, error) || !(ring = LocalKeyring::load(dir + "/keyring.toml", error))) {
      std::fprintf(stderr, "keyring: %s\n", error.c_str());
      std::abort();
    }
    log_path = dir + "/audit.log";
    AuditLog log(1 << 16);
    if (!log.start(log_path, ring, error)) {
      std::fprintf(stderr, "audit log: %s\n", error.c_str());
      std::abort();
    }
    // A typical mix: ~220-byte records.
    for (uint64_t i = 0; bytes < (64ull << 20); ++i) {
      log.record("auth.failure", AuditFields()
                                     .str("reason", "bad_secret")
                                     .str("ip", "203.0.113." + std::to_string(i % 250))
                                     .str("token_id", "tok_" + std::to_string(i % 9973))
                                     .take());
      if ((i & 4095) == 4095) {
        log.flush();
        struct stat st {};
        stat(log_path.c_str(), &st);
        bytes = static_cast<uint64_t>(st.st_size);
      }
    }
    log.stop();
  }
  ~Fixture() { (void)system(("rm -rf '" + dir + "'").c_str()); }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

void BM_AuditVerify(benchmark::State& state) {
  Fixture& f = fixture();
  VerifyResult r;
  for (auto _ : state) {
    r = verifyAuditFile(f.log_path, *f.ring);
    if (!r.ok) {
      state.SkipWithError(("verify failed: " + r.why).c_str());
      break;
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * r.bytes));
  state.counters["records"] = static_cast<double>(r.records);
  state.counters["file_MiB"] = static_cast<double>(r.bytes) / (1 << 20);
}
// Rates use CPU time: on a shared machine wall time measures the neighbours.
BENCHMARK(BM_AuditVerify)->Unit(benchmark::kMillisecond);

// Producer side: what an event loop pays per record(), including building the
// fields, while the writer drains concurrently on its own thread into a file
// in /tmp. Arg 0: ring capacity. With 1<<20 (more than the iterations) every
// event takes the ring path; with 2 nearly every one takes the overflow path
// (a heap node each). Both counted in "overflowed".
void BM_AuditRecord(benchmark::State& state) {
  static AuditLog* log = nullptr;
  Fixture& f = fixture();
  if (state.thread_index() == 0) {
    log = new AuditLog(static_cast<size_t>(state.range(0)));
    std::string error;
    if (!log->start(f.dir + "/record.log", f.ring, error)) std::abort();
  }
  uint64_t i = 0;
  for (auto _ : state) {
    log->record("auth.failure",
                AuditFields().str("reason", "bad_secret").str("ip", "203.0.113.9").unum("n", ++i).take());
  }
  if (state.thread_index() == 0) {
    log->stop();
    state.counters["overflowed"] = static_cast<double>(log->overflowed());
    delete log;
    log = nullptr;
    ::unlink((f.dir + "/record.log").c_str());
  }
}
BENCHMARK(BM_AuditRecord)->Arg(1 << 20)->Arg(2)->Iterations(1 << 18)->Threads(1)->Threads(2);

}  // namespace
}  // namespace portcullis

BENCHMARK_MAIN();
