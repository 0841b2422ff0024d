// SIGHUP reload end to end (README "Configuration reference", SPEC §2, §8
// config.reload): a key the reload cannot apply is named, in a warning and in
// the audit record, never silently ignored; keys it can apply do apply, also
// on an upstream pool that the reload keeps; a new state_dir is created as at
// start, and one that cannot be created refuses the reload.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tests/e2e/harness.h"
#include "tests/e2e/tls_upstream.h"

namespace portcullis::e2e {
namespace {

using Clock = std::chrono::steady_clock;

// Waits (bounded) until the file at `path` contains `needle`; its content.
std::string waitForFileText(const std::string& path, const std::string& needle, Millis timeout = Millis(5000)) {
  const auto deadline = Clock::now() + timeout;
  std::string text = slurp(path);
  while (text.find(needle) == std::string::npos && Clock::now() < deadline) {
    std::this_thread::sleep_for(Millis(20));
    text = slurp(path);
  }
  return text;
}

// The config.reload audit records of `text`, one a line.
std::vector<std::string> reloadRecords(const std::string& text) {
  std::vector<std::string> out;
  for (const std::string& l : lines(text)) {
    if (l.find("\"event\":\"config.reload\"") != std::string::npos) out.push_back(l);
  }
  return out;
}

ProxyOptions limitedOptions(const std::string& backend) {
  ProxyOptions o = ProxyOptions::forBackend(backend);
  o.extra_toml = "[rate_limit]\nip = { rps = 1000, burst = 1000 }\nmax_keys = 65536\n"
                 "[detect]\nnot_found = { count = 50, window_s = 60 }\n";
  return o;
}

// portcullis_config_generation counts applied configs; ..._applied is the
// oldest one a worker still takes new requests under (what Proxy::reload()
// waits for); a refused reload changes neither.
TEST(ReloadE2E, GenerationMetricsFollowAppliedReloads) {
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.workers = 2;
  Proxy proxy(o);
  EXPECT_EQ(proxy.metricOr0("portcullis_config_generation"), 1);
  EXPECT_EQ(proxy.metricOr0("portcullis_config_generation_applied"), 1);
  o.routes[0].max_body_bytes = 4096;
  proxy.writeConfig(o);
  ASSERT_TRUE(proxy.reload());
  EXPECT_EQ(proxy.metricOr0("portcullis_config_generation"), 2);
  EXPECT_EQ(proxy.metricOr0("portcullis_config_generation_applied"), 2);
  proxy.writeConfigText("[server]\nnot_a_key = 1\n");
  ASSERT_FALSE(proxy.reload());
  EXPECT_EQ(proxy.metricOr0("portcullis_config_generation"), 2);
  EXPECT_EQ(proxy.metricOr0("portcullis_config_generation_applied"), 2);
}

TEST(ReloadE2E, KeysOnlyARestartAppliesAreWarnedAndAudited) {
  DemoBackend backend;
  ProxyOptions o = limitedOptions(backend.address());
  Proxy proxy(o);
  const double cells = proxy.metricOr0("portcullis_ratelimit_cells");
  ASSERT_GT(cells, 0);

  ProxyOptions changed = o;
  changed.workers = 2;
  changed.extra_toml = "[rate_limit]\nip = { rps = 1000, burst = 1000 }\nmax_keys = 1024\n"
                       "[detect]\nnot_found = { count = 2, window_s = 60 }\n";
  changed.routes[0].max_body_bytes = 4096;  // applies
  proxy.writeConfig(changed);
  const size_t from = proxy.process().stderrSize();
  ASSERT_TRUE(proxy.reload());
  for (const char* key : {"server.workers", "rate_limit.max_keys", "detect.not_found"}) {
    EXPECT_TRUE(proxy.process().waitForStderr(std::string("[warn] reload: ") + key + " changes only on restart",
                                              Millis(5000), from))
        << key << "\n" << proxy.process().stderrText().substr(from);
  }
  const std::string audit = proxy.dir().file("audit.log");
  std::vector<std::string> records = reloadRecords(waitForFileText(audit, "restart_required"));
  ASSERT_EQ(records.size(), 1u) << slurp(audit);
  EXPECT_NE(records[0].find("\"result\":\"applied\""), std::string::npos) << records[0];
  EXPECT_NE(records[0].find("\"restart_required\":\"server.workers,rate_limit.max_keys,detect.not_found\""),
            std::string::npos)
      << records[0];
  // What the warning says: the table keeps its size, and the rest applied.
  EXPECT_EQ(proxy.metricOr0("portcullis_ratelimit_cells"), cells);
  EXPECT_EQ(Client(proxy.httpPort())
                .roundTrip("POST /x HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: 5000\r\n\r\n" +
                           patternBytes(0, 5000))
                .status,
            413);

  // Back to what runs: nothing to warn about, no restart_required.
  proxy.writeConfig(o);
  const size_t again = proxy.process().stderrSize();
  ASSERT_TRUE(proxy.reload());
  records = reloadRecords(waitForFileText(audit, "\"generation\":3"));
  ASSERT_EQ(records.size(), 2u) << slurp(audit);
  EXPECT_EQ(records[1].find("restart_required"), std::string::npos) << records[1];
  ASSERT_TRUE(proxy.process().waitForStderr("config reloaded (generation 3)", Millis(5000), again));
  EXPECT_EQ(proxy.process().stderrText().find("changes only on restart", again), std::string::npos)
      << proxy.process().stderrText().substr(again);
}

// An upstream whose servers stay keeps its pool (and warm connections) across
// a reload; the pool's other settings still follow the new config.
TEST(ReloadE2E, KeptUpstreamPoolTakesTheReloadedSettings) {
  TempDir dir;
  ASSERT_TRUE(makeTestCertificate(dir.path(), "unused", "IP:127.0.0.1"));
  TlsUpstream origin(dir.file("unused.crt"), dir.file("unused.key"), /*plaintext=*/true);
  ProxyOptions o = ProxyOptions::forBackend(origin.address());
  o.upstreams[0].extra_toml = "max_idle_per_server = 0\n";
  Proxy proxy(o);
  Client c(proxy.httpPort());
  for (int i = 0; i < 2; ++i) {
    HttpResponse r = c.roundTrip(getRequest("/nopool"));
    ASSERT_EQ(r.status, 200);
    EXPECT_EQ(r.body.rfind("conn=" + std::to_string(i) + " req=0 ", 0), 0u) << "nothing pooled: " << r.body;
  }
  o.upstreams[0].extra_toml = "max_idle_per_server = 4\n";
  proxy.writeConfig(o);
  ASSERT_TRUE(proxy.reload());
  // The first request the worker serves under the new config opens conn=2.
  ASSERT_EQ(Client(proxy.httpPort()).roundTrip(getRequest("/first")).status, 200);
  for (int i = 1; i <= 3; ++i) {
    HttpResponse r = c.roundTrip(getRequest("/pooled"));
    ASSERT_EQ(r.status, 200);
    EXPECT_EQ(r.body.rfind("conn=2 req=" + std::to_string(i) + " ", 0), 0u)
        << "max_idle_per_server = 4 must pool the connection: " << r.body;
  }
  EXPECT_EQ(origin.connections(), 3);
}

// limits.buffer_memory_bytes is split between the workers that run; a
// server.workers the reload cannot apply must not shrink each one's share.
TEST(ReloadE2E, UnappliedWorkerCountLeavesTheWatermarkShare) {
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.workers = 1;
  o.limits["buffer_memory_bytes"] = 8 * 65536;  // 64 KiB pool buffers: 8 of them
  o.routes[0].max_body_bytes = 1 << 20;
  Proxy proxy(o);
  o.workers = 8;  // would leave one buffer per worker
  proxy.writeConfig(o);
  ASSERT_TRUE(proxy.reload());
  ASSERT_TRUE(proxy.process().waitForStderr("server.workers changes only on restart", Millis(5000)));

  // Two uploads in progress hold a read buffer each, well under 8.
  constexpr size_t kBody = 100000;
  std::vector<std::unique_ptr<Client>> uploads;
  for (int i = 0; i < 2; ++i) {
    auto c = std::make_unique<Client>(proxy.httpPort());
    ASSERT_TRUE(c->send("POST /upload HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: " + std::to_string(kBody) +
                        "\r\n\r\n" + patternBytes(0, 1000)));
    uploads.push_back(std::move(c));
  }
  const auto deadline = Clock::now() + Millis(5000);
  double buffered = 0;
  double overloaded = 0;
  while (Clock::now() < deadline) {
    const std::string text = proxy.metricsText();
    buffered = findMetric(text, "portcullis_buffered_bytes").value_or(0);
    overloaded = findMetric(text, "portcullis_overload_active").value_or(0);
    if (overloaded != 0 || buffered >= 2 * 65536) break;
    std::this_thread::sleep_for(Millis(10));
  }
  EXPECT_GE(buffered, 2 * 65536);
  EXPECT_EQ(overloaded, 0) << "the watermark was split by the config's worker count, not the running one";
  for (auto& c : uploads) ASSERT_TRUE(c->send(patternBytes(1000, kBody - 1000)));
  for (auto& c : uploads) {
    HttpResponse r;
    ASSERT_EQ(c->readResponse(r), ReadResult::kOk);
    EXPECT_EQ(r.status, 200);
  }
}

mode_t modeOf(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return st.st_mode;
}

TEST(ReloadE2E, NewStateDirIsCreatedAsAtStart) {
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  Proxy proxy(o);
  const mode_t started = modeOf(proxy.dir().file("state"));
  ASSERT_TRUE(S_ISDIR(started));
  o.state_dir = proxy.dir().file("moved/state");
  proxy.writeConfig(o);
  ASSERT_TRUE(proxy.reload());
  EXPECT_EQ(modeOf(o.state_dir), started) << "reload must create the new state_dir as start does";
}

TEST(ReloadE2E, StateDirThatCannotBeCreatedRefusesTheReload) {
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  Proxy proxy(o);
  const std::string file = proxy.dir().file("plain-file");
  writeFileAtomic(file, "not a directory\n");
  ProxyOptions bad = o;
  bad.state_dir = file + "/state";
  bad.routes[0].prefix = "/moved/";  // would answer /x with 404 if applied
  proxy.writeConfig(bad);
  const size_t from = proxy.process().stderrSize();
  EXPECT_FALSE(proxy.reload());
  EXPECT_TRUE(proxy.process().waitForStderr(
      "reload refused, keeping the running config: " + bad.state_dir + ": cannot create state_dir: ", Millis(5000),
      from))
      << proxy.process().stderrText().substr(from);
  Client c(proxy.httpPort());
  EXPECT_EQ(c.roundTrip(getRequest("/x")).status, 200) << "the running config keeps serving";
  const std::vector<std::string> records = reloadRecords(waitForFileText(proxy.dir().file("audit.log"), "refused"));
  ASSERT_EQ(records.size(), 1u);
  EXPECT_NE(records[0].find("\"result\":\"refused\""), std::string::npos) << records[0];
  EXPECT_NE(records[0].find("cannot create state_dir"), std::string::npos) << records[0];
}

// A refused reload has no effect, also on what the first applied config
// fixes for the process: the rate-limit table's size and the generation.
TEST(ReloadE2E, RefusedReloadFixesNothing) {
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  Proxy proxy(o);
  EXPECT_EQ(proxy.metricOr0("portcullis_ratelimit_cells"), 0);
  const std::string file = proxy.dir().file("plain-file");
  writeFileAtomic(file, "not a directory\n");
  ProxyOptions bad = o;
  bad.state_dir = file + "/state";
  bad.extra_toml = "[rate_limit]\nip = { rps = 1000, burst = 1000 }\nmax_keys = 1024\n";
  proxy.writeConfig(bad);
  EXPECT_FALSE(proxy.reload());
  EXPECT_EQ(proxy.metricOr0("portcullis_config_generation"), 1);
  ProxyOptions good = o;
  good.extra_toml = "[rate_limit]\nip = { rps = 1000, burst = 1000 }\nmax_keys = 65536\n";
  proxy.writeConfig(good);
  const size_t from = proxy.process().stderrSize();
  ASSERT_TRUE(proxy.reload());
  EXPECT_EQ(proxy.metricOr0("portcullis_config_generation"), 2);
  EXPECT_GT(proxy.metricOr0("portcullis_ratelimit_cells"), 65536) << "sized by the refused config";
  EXPECT_EQ(proxy.process().stderrText().find("rate_limit.max_keys changes only on restart", from), std::string::npos)
      << proxy.process().stderrText().substr(from);
}

}  // namespace
}  // namespace portcullis::e2e
