// keysNeedingRestart: which keys of a reloaded config the running process
// keeps until a restart (README "Configuration reference"), key by key.
#include "proxy/fixed_settings.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

namespace portcullis {
namespace {

// A config with every section whose keys a reload may not apply. `extra`
// goes at the end (a table of its own); `server`, `log` and `detect` go
// inside those tables.
std::shared_ptr<const Config> load(const std::string& server = "", const std::string& log = "",
                                   const std::string& detect = "", const std::string& extra = "") {
  const std::string text = "[server]\nworkers = 2\nlisten_http = \"127.0.0.1:8080\"\n" + server +
                           "\n[rate_limit]\nip = { rps = 10, burst = 20 }\n" +
                           "[encryption]\nkeyring = \"k.toml\"\n" + "[log]\naccess = \"a.log\"\n" + log +
                           "\n[detect]\n" + detect +
                           "\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9000\"]\n" +
                           "[[route]]\nprefix = \"/\"\nupstream = \"app\"\nauth = false\n" + extra;
  auto cfg = std::make_shared<Config>();
  std::string error;
  EXPECT_TRUE(loadConfigFromString(text, "t.toml", *cfg, error)) << error << "\n" << text;
  return cfg;
}

// What a process started with `started` keeps, as Server::startup sets it.
FixedSettings runningFrom(const std::shared_ptr<const Config>& started) {
  FixedSettings f;
  f.started = started;
  f.max_header_bytes = 61440;  // 64 KiB buffers (the default max_header_bytes)
  f.audit_running = true;
  f.rate_limit_keys = started->rate_limit.max_keys;
  f.detect = started->detect.thresholds;
  return f;
}

using Keys = std::vector<std::string>;

TEST(FixedSettings, TheSameConfigNeedsNoRestart) {
  const auto cfg = load();
  EXPECT_EQ(keysNeedingRestart(runningFrom(cfg), *load()), Keys{});
}

TEST(FixedSettings, KeysAReloadAppliesAreNeverReported) {
  const FixedSettings running = runningFrom(load());
  const auto next = load("names = [\"api.example.com\"]\nshutdown_grace_ms = 1\nstate_dir = \"elsewhere\"\n"
                         "max_connections = 5\nmax_connections_per_ip = 2\n",
                         "", "enabled = true\n",
                         "[timeouts]\nrequest_header_ms = 5\n[limits]\nmax_body_bytes = 9\nmax_header_bytes = 61440\n"
                         "[https]\nplaintext = \"reject\"\nhsts_max_age_s = 0\n");
  EXPECT_EQ(keysNeedingRestart(running, *next), Keys{});
}

TEST(FixedSettings, EachRestartOnlyKeyIsNamed) {
  const FixedSettings running = runningFrom(load());
  struct Case {
    std::shared_ptr<const Config> next;
    const char* key;
  };
  const Case cases[] = {
      {load("cpu_affinity = \"auto\"\n"), "server.cpu_affinity"},
      {load("worker_priority = 5\n"), "server.worker_priority"},
      {load("listen_https = \"127.0.0.1:8443\"\n", "", "",
            "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n"),
       "server.listen_https"},
      {load("admin_listen = \"127.0.0.1:9902\"\n"), "server.admin_listen"},
      {load("", "", "", "[limits]\nmax_header_bytes = 61441\n"), "limits.max_header_bytes"},
      {load("", "audit = \"other.log\"\n"), "log.audit"},
      {load("", "syslog = \"tcp://127.0.0.1:514\"\n"), "log.syslog"},
      {load("", "", "auth_failures = { count = 3, window_s = 60 }\n"), "detect.auth_failures"},
      {load("", "", "forbidden = { count = 20, window_s = 61 }\n"), "detect.forbidden"},
      {load("", "", "not_found = { count = 2, window_s = 60 }\n"), "detect.not_found"},
      {load("", "", "rate_spike_factor = 3.0\n"), "detect.rate_spike_factor"},
      {load("", "", "bytes_spike_factor = 3.0\n"), "detect.bytes_spike_factor"},
      {load("", "", "alert_webhook = \"http://127.0.0.1:1/a\"\n"), "detect.alert_webhook"},
      {load("", "", "cooldown_s = 1\n"), "detect.cooldown_s"},
      {load("", "", "interval_s = 1\n"), "detect.interval_s"},
      {load("", "", "rate_min = 1\n"), "detect.rate_min"},
      {load("", "", "bytes_min = 1\n"), "detect.bytes_min"},
      {load("", "", "warmup_intervals = 1\n"), "detect.warmup_intervals"},
      {load("", "", "max_keys = 1024\n"), "detect.max_keys"},
  };
  for (const Case& c : cases) EXPECT_EQ(keysNeedingRestart(running, *c.next), Keys{c.key}) << c.key;
  // Keys the base sets itself, changed in a copy.
  auto workers = std::make_shared<Config>(*load());
  workers->server.workers = 3;
  EXPECT_EQ(keysNeedingRestart(running, *workers), Keys{"server.workers"});
  auto listen = std::make_shared<Config>(*load());
  listen->server.listen_http.port = 8081;
  EXPECT_EQ(keysNeedingRestart(running, *listen), Keys{"server.listen_http"});
  auto access = std::make_shared<Config>(*load());
  access->log.access = "other.log";
  EXPECT_EQ(keysNeedingRestart(running, *access), Keys{"log.access"});
  auto keys = std::make_shared<Config>(*load());
  keys->rate_limit.max_keys = 1024;
  EXPECT_EQ(keysNeedingRestart(running, *keys), Keys{"rate_limit.max_keys"});
}

TEST(FixedSettings, SeveralKeysComeInTheReferenceOrder) {
  auto next = std::make_shared<Config>(*load("", "", "not_found = { count = 2, window_s = 60 }\n"));
  next->rate_limit.max_keys = 1024;
  next->server.workers = 4;
  EXPECT_EQ(keysNeedingRestart(runningFrom(load()), *next),
            (Keys{"server.workers", "rate_limit.max_keys", "detect.not_found"}));
}

TEST(FixedSettings, TablesNotBuiltYetTakeTheReloadedSize) {
  FixedSettings running = runningFrom(load());
  running.rate_limit_keys.reset();  // no config asked for rate limiting yet
  running.detect.reset();           // nor enabled detection
  auto next = std::make_shared<Config>(*load("", "", "not_found = { count = 2, window_s = 60 }\nmax_keys = 1024\n"));
  next->rate_limit.max_keys = 1024;
  EXPECT_EQ(keysNeedingRestart(running, *next), Keys{});
}

TEST(FixedSettings, SettingsOfAFeatureTheReloadTurnsOffAreNotReported) {
  const FixedSettings running = runningFrom(load());
  // Detection off: its thresholds do not matter (detect.enabled applies).
  EXPECT_EQ(keysNeedingRestart(running, *load("", "", "enabled = false\nnot_found = { count = 2, window_s = 60 }\n")),
            Keys{});
  // No rate limit left: the table's size does not matter.
  auto no_limits = std::make_shared<Config>(*load());
  no_limits->rate_limit = RateLimitConfig{};
  no_limits->rate_limit.max_keys = 1024;
  EXPECT_EQ(keysNeedingRestart(running, *no_limits), Keys{});
  // No keyring left: no audit log to ask for.
  auto no_ring = std::make_shared<Config>(*load("", "audit = \"other.log\"\n"));
  no_ring->encryption = EncryptionConfig{};
  EXPECT_EQ(keysNeedingRestart(running, *no_ring), Keys{});
}

TEST(FixedSettings, AnAuditLogThatDidNotStartNeedsARestart) {
  FixedSettings running = runningFrom(load());
  running.audit_running = false;  // started without a keyring
  EXPECT_EQ(keysNeedingRestart(running, *load()), Keys{"log.audit"});
}

}  // namespace
}  // namespace portcullis
