#include "proxy/config.h"

#include <gtest/gtest.h>

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

namespace portcullis {
namespace {

struct Result {
  bool ok = false;
  Config cfg;
  std::string error;
};

Result load(std::string_view text) {
  Result r;
  r.ok = loadConfigFromString(text, "t.toml", r.cfg, r.error);
  return r;
}

// The smallest valid config. Text appended by withBase() starts on line 11, so
// appended keys land in [server] unless the extra text opens another table.
constexpr std::string_view kBase = R"([[upstream]]
name = "app"
servers = ["127.0.0.1:9000"]

[[route]]
prefix = "/"
upstream = "app"

[server]
listen_http = "127.0.0.1:8080"
)";

Result withBase(std::string_view extra) { return load(std::string(kBase) + std::string(extra)); }

// Expects a failed load whose whole error text is `expected`.
void expectError(std::string_view extra, const std::string& expected) {
  Result r = withBase(extra);
  EXPECT_FALSE(r.ok) << extra;
  EXPECT_EQ(r.error, expected) << extra;
}

TEST(ConfigTest, BaseConfigGetsAllDefaults) {
  Result r = load(kBase);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_TRUE(r.error.empty());
  const Config& c = r.cfg;
  EXPECT_EQ(c.path, "t.toml");

  // workers = 0: one per CPU this process may use (taskset, cpuset).
  cpu_set_t usable;
  CPU_ZERO(&usable);
  ASSERT_EQ(sched_getaffinity(0, sizeof(usable), &usable), 0);
  EXPECT_EQ(c.server.workers, static_cast<unsigned>(CPU_COUNT(&usable)));
  EXPECT_TRUE(c.server.cpu_affinity.empty());
  EXPECT_FALSE(c.server.cpu_affinity_auto);
  EXPECT_EQ(c.server.worker_priority, 0);
  EXPECT_TRUE(c.server.listen_https.empty());
  EXPECT_EQ(c.server.listen_http.str(), "127.0.0.1:8080");
  EXPECT_EQ(c.server.admin_listen.str(), "127.0.0.1:9901");
  EXPECT_TRUE(c.server.names.empty());
  EXPECT_EQ(c.server.shutdown_grace_ms, 10000u);
  EXPECT_EQ(c.server.state_dir, "var/state");
  EXPECT_EQ(c.server.max_connections, 100000u);
  EXPECT_EQ(c.server.max_connections_per_ip, 1000u);

  EXPECT_EQ(c.timeouts.request_header_ms, 10000u);
  EXPECT_EQ(c.timeouts.body_idle_ms, 30000u);
  EXPECT_EQ(c.timeouts.min_body_rate, 500u);
  EXPECT_EQ(c.timeouts.keepalive_idle_ms, 60000u);
  EXPECT_EQ(c.timeouts.upstream_connect_ms, 2000u);
  EXPECT_EQ(c.timeouts.upstream_response_ms, 30000u);

  EXPECT_EQ(c.limits.max_uri_bytes, 8192u);
  EXPECT_EQ(c.limits.max_header_bytes, 16384u);
  EXPECT_EQ(c.limits.max_headers, 100u);
  EXPECT_EQ(c.limits.max_body_bytes, 10485760u);
  EXPECT_EQ(c.limits.buffer_memory_bytes, 1ull << 30);

  ASSERT_EQ(c.upstreams.size(), 1u);
  const UpstreamConfig& u = c.upstreams[0];
  EXPECT_EQ(u.name, "app");
  ASSERT_EQ(u.servers.size(), 1u);
  EXPECT_EQ(u.servers[0].host, "127.0.0.1");
  EXPECT_EQ(u.servers[0].port, 9000);
  EXPECT_EQ(u.lb, LbPolicy::kRoundRobin);
  EXPECT_FALSE(u.health_check.enabled);
  EXPECT_EQ(u.max_idle_per_server, 64u);
  EXPECT_EQ(u.fail_timeout_ms, 10000u);

  ASSERT_EQ(c.routes.size(), 1u);
  const RouteConfig& rt = c.routes[0];
  EXPECT_EQ(rt.prefix, "/");
  EXPECT_EQ(rt.upstream, "app");
  EXPECT_EQ(rt.upstream_index, 0u);
  EXPECT_EQ(rt.methods, kDefaultRouteMethods);
  EXPECT_TRUE(rt.auth);
  EXPECT_TRUE(rt.content_types.empty());
  EXPECT_EQ(rt.max_body_bytes, 10485760u);  // resolved from limits
  EXPECT_FALSE(rt.validate_json);
  EXPECT_FALSE(rt.upload);
  EXPECT_FALSE(rt.encrypt_body);

  EXPECT_EQ(c.log.access, "var/log/access.log");
  EXPECT_EQ(c.log.audit, "var/log/audit.log");
  EXPECT_EQ(c.log.syslog, "");
}

TEST(ConfigTest, EveryKeyIsStored) {
  Result r = load(R"(
[server]
workers = 3
listen_https = "0.0.0.0:8443"
listen_http = "[::]:8080"
admin_listen = "[::1]:9902"
names = ["api.example.com", "api2.example.com"]
shutdown_grace_ms = 0
state_dir = "/var/lib/portcullis"
max_connections = 50
max_connections_per_ip = 5

[timeouts]
request_header_ms = 1
body_idle_ms = 2
min_body_rate = 0
keepalive_idle_ms = 4
upstream_connect_ms = 5
upstream_response_ms = 4294967295

[limits]
max_uri_bytes = 100
max_header_bytes = 200
max_headers = 10
max_body_bytes = 5000000000

[[upstream]]
name = "a"
servers = ["10.0.0.1:80", "[2001:db8::1]:8080"]
lb = "least_request"
health_check = { path = "/ping", interval_ms = 500, timeout_ms = 100, unhealthy_threshold = 3, healthy_threshold = 2 }
max_idle_per_server = 0
fail_timeout_ms = 1

[[upstream]]
name = "b"
servers = ["10.0.0.2:81"]
health_check = { }

[[route]]
prefix = "/v1/"
upstream = "b"
methods = ["GET", "TRACE", "CONNECT"]
auth = false
content_types = ["application/json", "text/csv"]
max_body_bytes = 7
validate_json = true
upload = true
encrypt_body = true

[[route]]
prefix = "/v2/"
upstream = "a"

[tls]
cert = "/etc/portcullis/server.crt"
key = "/etc/portcullis/server.key"
min_version = "1.3"

[log]
access = ""
audit = "/tmp/audit.log"
syslog = "tcp://192.0.2.1:6514"
)");
  ASSERT_TRUE(r.ok) << r.error;
  const Config& c = r.cfg;
  EXPECT_EQ(c.server.workers, 3u);
  EXPECT_EQ(c.server.listen_https.str(), "0.0.0.0:8443");
  EXPECT_EQ(c.tls.cert, "/etc/portcullis/server.crt");
  EXPECT_EQ(c.tls.key, "/etc/portcullis/server.key");
  EXPECT_TRUE(c.tls.min_tls13);
  EXPECT_EQ(c.server.listen_http.host, "::");
  EXPECT_EQ(c.server.listen_http.port, 8080);
  EXPECT_EQ(c.server.admin_listen.str(), "[::1]:9902");
  EXPECT_EQ(c.server.names, (std::vector<std::string>{"api.example.com", "api2.example.com"}));
  EXPECT_EQ(c.server.shutdown_grace_ms, 0u);
  EXPECT_EQ(c.server.state_dir, "/var/lib/portcullis");
  EXPECT_EQ(c.server.max_connections, 50u);
  EXPECT_EQ(c.server.max_connections_per_ip, 5u);

  EXPECT_EQ(c.timeouts.request_header_ms, 1u);
  EXPECT_EQ(c.timeouts.body_idle_ms, 2u);
  EXPECT_EQ(c.timeouts.min_body_rate, 0u);
  EXPECT_EQ(c.timeouts.keepalive_idle_ms, 4u);
  EXPECT_EQ(c.timeouts.upstream_connect_ms, 5u);
  EXPECT_EQ(c.timeouts.upstream_response_ms, 4294967295u);

  EXPECT_EQ(c.limits.max_uri_bytes, 100u);
  EXPECT_EQ(c.limits.max_header_bytes, 200u);
  EXPECT_EQ(c.limits.max_headers, 10u);
  EXPECT_EQ(c.limits.max_body_bytes, 5000000000u);

  ASSERT_EQ(c.upstreams.size(), 2u);
  const UpstreamConfig& a = c.upstreams[0];
  ASSERT_EQ(a.servers.size(), 2u);
  EXPECT_EQ(a.servers[0].str(), "10.0.0.1:80");
  EXPECT_EQ(a.servers[1].host, "2001:db8::1");
  EXPECT_EQ(a.servers[1].str(), "[2001:db8::1]:8080");
  EXPECT_EQ(a.lb, LbPolicy::kLeastRequest);
  EXPECT_TRUE(a.health_check.enabled);
  EXPECT_EQ(a.health_check.path, "/ping");
  EXPECT_EQ(a.health_check.interval_ms, 500u);
  EXPECT_EQ(a.health_check.timeout_ms, 100u);
  EXPECT_EQ(a.health_check.unhealthy_threshold, 3u);
  EXPECT_EQ(a.health_check.healthy_threshold, 2u);
  EXPECT_EQ(a.max_idle_per_server, 0u);
  EXPECT_EQ(a.fail_timeout_ms, 1u);
  // An empty health_check table enables checking with every default.
  const UpstreamConfig& b = c.upstreams[1];
  EXPECT_TRUE(b.health_check.enabled);
  EXPECT_EQ(b.health_check.path, "/healthz");
  EXPECT_EQ(b.health_check.interval_ms, 2000u);
  EXPECT_EQ(b.health_check.timeout_ms, 1000u);
  EXPECT_EQ(b.health_check.unhealthy_threshold, 2u);
  EXPECT_EQ(b.health_check.healthy_threshold, 1u);

  ASSERT_EQ(c.routes.size(), 2u);
  const RouteConfig& v1 = c.routes[0];
  EXPECT_EQ(v1.upstream_index, 1u);
  EXPECT_EQ(v1.methods, kMethodGet | kMethodTrace | kMethodConnect);
  EXPECT_FALSE(v1.auth);
  EXPECT_EQ(v1.content_types, (std::vector<std::string>{"application/json", "text/csv"}));
  EXPECT_EQ(v1.max_body_bytes, 7u);
  EXPECT_TRUE(v1.validate_json);
  EXPECT_TRUE(v1.upload);
  EXPECT_TRUE(v1.encrypt_body);
  const RouteConfig& v2 = c.routes[1];
  EXPECT_EQ(v2.upstream, "a");
  EXPECT_EQ(v2.upstream_index, 0u);
  EXPECT_EQ(v2.max_body_bytes, 5000000000u);  // resolved from the custom limit

  EXPECT_EQ(c.log.access, "");
  EXPECT_EQ(c.log.audit, "/tmp/audit.log");
  EXPECT_EQ(c.log.syslog, "tcp://192.0.2.1:6514");
}

TEST(ConfigTest, ListenHttpsAloneIsEnoughAndPortZeroIsAllowedOnListeners) {
  Result r = load(R"([server]
listen_https = ":0"
admin_listen = "127.0.0.1:0"
[tls]
cert = "c.pem"
key = "k.pem"
[[upstream]]
name = "app"
servers = ["127.0.0.1:9000"]
[[route]]
prefix = "/"
upstream = "app"
)");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.cfg.server.listen_https.str(), "0.0.0.0:0");
  EXPECT_TRUE(r.cfg.server.listen_http.empty());
  EXPECT_EQ(r.cfg.server.admin_listen.port, 0);
}

TEST(ConfigTest, RouteMaxBodyZeroInheritsLimit) {
  Result r = load(std::string(kBase) + "[limits]\nmax_body_bytes = 42\n[[route]]\nprefix = \"/x/\"\n"
                                       "upstream = \"app\"\nmax_body_bytes = 0\n");
  ASSERT_TRUE(r.ok) << r.error;
  ASSERT_EQ(r.cfg.routes.size(), 2u);
  EXPECT_EQ(r.cfg.routes[0].max_body_bytes, 42u);
  EXPECT_EQ(r.cfg.routes[1].max_body_bytes, 42u);
}

TEST(ConfigTest, WebsocketRouteAndTunnelIdleTimeout) {
  Result d = load(kBase);
  ASSERT_TRUE(d.ok) << d.error;
  EXPECT_FALSE(d.cfg.routes[0].websocket);
  EXPECT_EQ(d.cfg.timeouts.tunnel_idle_ms, 300000u);

  Result r = load(std::string(kBase) + "[timeouts]\ntunnel_idle_ms = 1234\n[[route]]\nprefix = \"/ws/\"\n"
                                       "upstream = \"app\"\nwebsocket = true\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.cfg.timeouts.tunnel_idle_ms, 1234u);
  EXPECT_TRUE(r.cfg.routes[1].websocket);

  // A handshake is a GET: a websocket route that refuses GET is a mistake.
  expectError("[[route]]\nprefix = \"/ws/\"\nupstream = \"app\"\nmethods = [\"POST\"]\nwebsocket = true\n",
              "t.toml:15: route[1].websocket: a WebSocket handshake is a GET: add \"GET\" to methods");
  expectError("[timeouts]\ntunnel_idle_ms = 0\n", "t.toml:12: timeouts.tunnel_idle_ms: 0 is out of range (1..4294967295)");
}

TEST(ConfigTest, UnknownKeyInTable) {
  expectError("listen_htp = \"1.2.3.4:80\"\n", "t.toml:11: server.listen_htp: unknown key");
}

TEST(ConfigTest, UnknownKeyInArrayOfTables) {
  expectError("[[route]]\nprefix = \"/a/\"\nupstream = \"app\"\n"
              "[[route]]\nprefx = \"/b/\"\nprefix = \"/b/\"\nupstream = \"app\"\n",
              "t.toml:15: route[2].prefx: unknown key");
}

TEST(ConfigTest, UnknownKeyInInlineTable) {
  Result r = load(R"([server]
listen_http = ":8080"
[[upstream]]
name = "app"
servers = ["127.0.0.1:9000"]
health_check = { pth = "/x", interval_ms = 5 }
[[route]]
prefix = "/"
upstream = "app"
)");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error, "t.toml:6: upstream[0].health_check.pth: unknown key");
}

TEST(ConfigTest, TlsSectionIsCheckedAndListenHttpsNeedsIt) {
  Result r = load(std::string(kBase) + R"(listen_https = ":8443"
)");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error, "t.toml:11: server.listen_https: needs a [tls] section with cert and key");
  Result bad = load(std::string(kBase) + R"(listen_https = ":8443"
[tls]
cert = "c.pem"
min_version = "1.1"
ciphers = "ALL"
)");
  EXPECT_FALSE(bad.ok);
  EXPECT_EQ(bad.error,
            "t.toml:12: tls.key: missing (PEM private key)\n"
            "t.toml:14: tls.min_version: must be \"1.2\" or \"1.3\" (nothing older is ever offered)\n"
            "t.toml:15: tls.ciphers: unknown key");
}

TEST(ConfigTest, BufferMemoryWatermark) {
  Result r = withBase("[limits]\nbuffer_memory_bytes = 0\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.cfg.limits.buffer_memory_bytes, 0u);  // off
  expectError("[limits]\nbuffer_memory_bytes = 4096\n",
              "t.toml:12: limits.buffer_memory_bytes: must be 0 (off) or at least 65536");
}

TEST(ConfigTest, UpstreamTlsKeys) {
  Result r = withBase("[[upstream]]\nname = \"secure\"\nservers = [\"10.0.0.1:443\"]\ntls = true\n"
                      "ca = \"/etc/app/ca.pem\"\nsni = \"api.internal\"\n");
  ASSERT_TRUE(r.ok) << r.error;
  const UpstreamConfig& u = r.cfg.upstreams[1];
  EXPECT_TRUE(u.tls);
  EXPECT_EQ(u.ca, "/etc/app/ca.pem");
  EXPECT_EQ(u.sni, "api.internal");
  EXPECT_TRUE(u.verify);  // on unless turned off
  EXPECT_FALSE(r.cfg.upstreams[0].tls);
  expectError("[[upstream]]\nname = \"b\"\nservers = [\"10.0.0.1:443\"]\nca = \"/x.pem\"\n",
              "t.toml:14: upstream[1].ca: only valid with tls = true");
  expectError("[[upstream]]\nname = \"b\"\nservers = [\"10.0.0.1:443\"]\nverify = false\n",
              "t.toml:14: upstream[1].verify: only valid with tls = true");
  expectError("[[upstream]]\nname = \"b\"\nservers = [\"10.0.0.1:443\"]\ntls = true\nsni = \"a b\"\n",
              "t.toml:15: upstream[1].sni: must be a DNS name");
  expectError("[[upstream]]\nname = \"b\"\nservers = [\"10.0.0.1:443\"]\ntls = true\nca = \"\"\n",
              "t.toml:15: upstream[1].ca: must not be empty");
}

TEST(ConfigTest, HttpsSection) {
  Result r = withBase(R"([https]
plaintext = "reject"
hsts_max_age_s = 63072000
revoke_tokens_seen_in_plaintext = false
trusted_proxies = ["10.0.0.0/8", "::1", "192.168.1.0/24"]
)");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.cfg.https.plaintext, HttpsConfig::Plaintext::kReject);
  EXPECT_EQ(r.cfg.https.hsts_max_age_s, 63072000u);
  EXPECT_FALSE(r.cfg.https.revoke_tokens_seen_in_plaintext);
  EXPECT_EQ(r.cfg.https.trusted_proxies.size(), 3u);
  Result bad = withBase(R"([https]
plaintext = "maybe"
trusted_proxies = ["10.0.0.1/8", "300.1.1.1", "::/129"]
)");
  EXPECT_FALSE(bad.ok);
  EXPECT_EQ(bad.error,
            "t.toml:12: https.plaintext: must be \"redirect\", \"reject\" or \"allow\" (testing only)\n"
            "t.toml:13: https.trusted_proxies[0]: invalid network \"10.0.0.1/8\" (expected an IP address or CIDR such as 10.0.0.0/8)\n"
            "t.toml:13: https.trusted_proxies[1]: invalid network \"300.1.1.1\" (expected an IP address or CIDR such as 10.0.0.0/8)\n"
            "t.toml:13: https.trusted_proxies[2]: invalid network \"::/129\" (expected an IP address or CIDR such as 10.0.0.0/8)");
}

TEST(ConfigTest, AuthAndRoles) {
  Result r = withBase(R"([auth]
token_store = "conf/tokens.toml"
inactive_expiry_days = 30
watch = false
account_header = "X-Tenant"
forward_authorization = true
[[role]]
name = "reader"
allow = ["GET /v1/*", "HEAD /v1/*"]
[[role]]
name = "uploader"
allow = ["POST /v1/accounts/{account}/uploads"]
rate = { rps = 20, burst = 40 }
)");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.cfg.auth.token_store, "conf/tokens.toml");
  EXPECT_EQ(r.cfg.auth.inactive_expiry_days, 30u);
  EXPECT_FALSE(r.cfg.auth.watch);
  EXPECT_EQ(r.cfg.auth.account_header, "X-Tenant");
  EXPECT_TRUE(r.cfg.auth.forward_authorization);
  ASSERT_EQ(r.cfg.roles.size(), 2u);
  EXPECT_EQ(r.cfg.roles[1].allow[0], "POST /v1/accounts/{account}/uploads");
  EXPECT_TRUE(r.cfg.roles[1].has_rate);
  EXPECT_EQ(r.cfg.roles[1].burst, 40u);

  Result bad = withBase(R"([auth]
watch = "yes"
[[role]]
name = "reader"
allow = ["FETCH /v1/*", "GET v1"]
[[role]]
name = "reader"
)");
  EXPECT_FALSE(bad.ok);
  EXPECT_NE(bad.error.find("t.toml:11: auth.token_store: missing"), std::string::npos) << bad.error;
  EXPECT_NE(bad.error.find("t.toml:12: auth.watch: expected boolean"), std::string::npos) << bad.error;
  EXPECT_NE(bad.error.find("t.toml:15: role[0].allow[1]: invalid pattern"), std::string::npos) << bad.error;
  EXPECT_NE(bad.error.find("t.toml:17: role[1].name: duplicate role \"reader\""), std::string::npos) << bad.error;

  // A route that needs tokens without a token store is refused (at -t and start).
  Config c;
  std::string error;
  ASSERT_TRUE(loadConfigFromString(R"([server]
listen_http = ":8080"
[[upstream]]
name = "app"
servers = ["127.0.0.1:9000"]
[[route]]
prefix = "/"
upstream = "app"
)",
                                   "t.toml", c, error))
      << error;
  EXPECT_FALSE(checkSupported(c, error));
  EXPECT_EQ(error, "t.toml:6: route[0].auth: needs an [auth] section with token_store (or auth = false for a public route)");
}

TEST(ConfigTest, NonAsciiIsRefusedBeforeTheTomlParserSeesIt) {
  // toml++ 3.3.0 has undefined behaviour for many such code points.
  Result r = withBase("# caf\xc3\xa9\nworkers = 1\n");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error, "t.toml:11: non-ASCII character (not accepted: this build's TOML parser mishandles them)");
}

TEST(ConfigTest, EncryptionAndDetectSections) {
  Result r = load(std::string(kBase) + R"(listen_https = ":8443"
[tls]
cert = "x"
key = "y"
[encryption]
keyring = "conf/keyring.toml"
segment_bytes = 4096
[detect]
auth_failures = { count = 5, window_s = 30 }
forbidden = { count = 7, window_s = 20 }
not_found = { count = 9, window_s = 10 }
rate_spike_factor = 4.5
bytes_spike_factor = 8
alert_webhook = "http://127.0.0.1:9/alerts"
)");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.cfg.encryption.keyring, "conf/keyring.toml");
  EXPECT_EQ(r.cfg.encryption.segment_bytes, 4096u);
  const DetectConfig& d = r.cfg.detect.thresholds;
  EXPECT_EQ(d.auth_failures_count, 5u);
  EXPECT_EQ(d.auth_failures_window_s, 30u);
  EXPECT_EQ(d.forbidden_count, 7u);
  EXPECT_EQ(d.not_found_window_s, 10u);
  EXPECT_DOUBLE_EQ(d.rate_factor, 4.5);
  EXPECT_DOUBLE_EQ(d.bytes_factor, 8.0);
  EXPECT_EQ(r.cfg.detect.alert_webhook, "http://127.0.0.1:9/alerts");

  Result bad = load(std::string(kBase) + R"([encryption]
segment_bytes = 8
[detect]
rate_spike_factor = 1.0
alert_webhook = "https://collector"
surprise = 1
)");
  EXPECT_FALSE(bad.ok);
  EXPECT_NE(bad.error.find("encryption.keyring: missing"), std::string::npos) << bad.error;
  EXPECT_NE(bad.error.find("encryption.segment_bytes"), std::string::npos) << bad.error;
  EXPECT_NE(bad.error.find("detect.rate_spike_factor: must be between"), std::string::npos) << bad.error;
  EXPECT_NE(bad.error.find("detect.alert_webhook: invalid URL"), std::string::npos) << bad.error;
  EXPECT_NE(bad.error.find("detect.surprise: unknown key"), std::string::npos) << bad.error;
}

TEST(ConfigTest, UnknownTopLevelKey) {
  Result r = load(std::string("workers = 4\n") + std::string(kBase));
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error, "t.toml:1: workers: unknown key");
}

TEST(ConfigTest, WrongTypes) {
  expectError("workers = \"4\"\n", "t.toml:11: server.workers: expected integer, got string");
  expectError("workers = 2.0\n", "t.toml:11: server.workers: expected integer, got float");
  expectError("listen_https = 8443\n", "t.toml:11: server.listen_https: expected string, got integer");
  expectError("names = \"a.example\"\n", "t.toml:11: server.names: expected array of strings, got string");
  expectError("names = [\"a.example\",\n  7]\n", "t.toml:12: server.names[1]: expected string, got integer");
  expectError("[log]\naccess = false\n", "t.toml:12: log.access: expected string, got boolean");
  expectError("[[route]]\nprefix = \"/x/\"\nupstream = \"app\"\nauth = \"yes\"\n",
              "t.toml:14: route[1].auth: expected boolean, got string");
  expectError("[timeouts]\nbody_idle_ms = [1]\n", "t.toml:12: timeouts.body_idle_ms: expected integer, got array");

  Result r = load(std::string("server = 5\n") + std::string(kBase.substr(0, kBase.find("[server]"))));
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error, "t.toml:1: server: expected table, got integer");

  r = load(R"([server]
listen_http = ":80"
[upstream]
name = "app"
[route]
prefix = "/"
)");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error,
            "t.toml:3: upstream: expected array of tables ([[upstream]]), got table\n"
            "t.toml:5: route: expected array of tables ([[route]]), got table");

  r = load(R"([server]
listen_http = ":80"
[[upstream]]
name = "app"
servers = ["127.0.0.1:1"]
health_check = "/healthz"
[[route]]
prefix = "/"
upstream = "app"
)");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error, "t.toml:6: upstream[0].health_check: expected table, got string");
}

TEST(ConfigTest, WorkerPlacement) {
  Result r = withBase("cpu_affinity = [1, 0, 3]\nworker_priority = -5\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.cfg.server.cpu_affinity, (std::vector<uint32_t>{1, 0, 3}));
  EXPECT_FALSE(r.cfg.server.cpu_affinity_auto);
  EXPECT_EQ(r.cfg.server.worker_priority, -5);
  r = withBase("cpu_affinity = \"auto\"\nworker_priority = 19\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_TRUE(r.cfg.server.cpu_affinity.empty());
  EXPECT_TRUE(r.cfg.server.cpu_affinity_auto);
  EXPECT_EQ(r.cfg.server.worker_priority, 19);
  r = withBase("cpu_affinity = \"none\"\n");
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_TRUE(r.cfg.server.cpu_affinity.empty());
  EXPECT_FALSE(r.cfg.server.cpu_affinity_auto);

  expectError("cpu_affinity = \"all\"\n",
              "t.toml:11: server.cpu_affinity: expected \"auto\", \"none\" or an array of CPU numbers, got \"all\"");
  expectError("cpu_affinity = 2\n",
              "t.toml:11: server.cpu_affinity: expected \"auto\", \"none\" or an array of CPU numbers, got integer");
  expectError("cpu_affinity = []\n", "t.toml:11: server.cpu_affinity: empty CPU list (use \"none\" for no pinning)");
  expectError("cpu_affinity = [0, \"1\"]\n", "t.toml:11: server.cpu_affinity[1]: expected integer, got string");
  expectError("cpu_affinity = [0, -1]\n", "t.toml:11: server.cpu_affinity[1]: -1 is out of range (0..1023)");
  expectError("cpu_affinity = [1024]\n", "t.toml:11: server.cpu_affinity[0]: 1024 is out of range (0..1023)");
  expectError("worker_priority = -21\n", "t.toml:11: server.worker_priority: -21 is out of range (-20..19)");
  expectError("worker_priority = 20\n", "t.toml:11: server.worker_priority: 20 is out of range (-20..19)");
  expectError("worker_priority = \"high\"\n", "t.toml:11: server.worker_priority: expected integer, got string");
}

TEST(ConfigTest, OutOfRangeNumbers) {
  expectError("workers = -1\n", "t.toml:11: server.workers: -1 is out of range (0..1024)");
  expectError("workers = 1025\n", "t.toml:11: server.workers: 1025 is out of range (0..1024)");
  expectError("max_connections = 0\n", "t.toml:11: server.max_connections: 0 is out of range (1..4294967295)");
  expectError("shutdown_grace_ms = 4294967296\n",
              "t.toml:11: server.shutdown_grace_ms: 4294967296 is out of range (0..4294967295)");
  expectError("[timeouts]\nrequest_header_ms = 0\n",
              "t.toml:12: timeouts.request_header_ms: 0 is out of range (1..4294967295)");
  expectError("[timeouts]\nupstream_connect_ms = 0\n",
              "t.toml:12: timeouts.upstream_connect_ms: 0 is out of range (1..4294967295)");
  expectError("[limits]\nmax_headers = 0\n", "t.toml:12: limits.max_headers: 0 is out of range (1..4294967295)");
  expectError("[limits]\nmax_body_bytes = -1\n",
              "t.toml:12: limits.max_body_bytes: -1 is out of range (0..9223372036854775807)");
  expectError("[[route]]\nprefix = \"/x/\"\nupstream = \"app\"\nmax_body_bytes = -5\n",
              "t.toml:14: route[1].max_body_bytes: -5 is out of range (0..9223372036854775807)");

  Result r = load(R"([server]
listen_http = ":80"
[[upstream]]
name = "app"
servers = ["127.0.0.1:1"]
health_check = { interval_ms = 0, timeout_ms = -3 }
fail_timeout_ms = 0
[[route]]
prefix = "/"
upstream = "app"
)");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error,
            "t.toml:6: upstream[0].health_check.interval_ms: 0 is out of range (1..4294967295)\n"
            "t.toml:6: upstream[0].health_check.timeout_ms: -3 is out of range (1..4294967295)\n"
            "t.toml:7: upstream[0].fail_timeout_ms: 0 is out of range (1..4294967295)");
}

TEST(ConfigTest, MalformedAddresses) {
  const std::string hint = " (expected IPv4:port, [IPv6]:port or :port, port 0..65535)";
  expectError("admin_listen = \"localhost:9901\"\n",
              "t.toml:11: server.admin_listen: invalid address \"localhost:9901\"" + hint);
  expectError("listen_https = \"1.2.3.4\"\n", "t.toml:11: server.listen_https: invalid address \"1.2.3.4\"" + hint);
  expectError("listen_https = \"1.2.3.4:65536\"\n",
              "t.toml:11: server.listen_https: invalid address \"1.2.3.4:65536\"" + hint);
  expectError("listen_https = \"::1:80\"\n", "t.toml:11: server.listen_https: invalid address \"::1:80\"" + hint);

  Result r = load(R"([server]
listen_http = ":80"
[[upstream]]
name = "app"
servers = ["127.0.0.1:0",
           "[::1]80",
           "10.0.0.1:8080"]
[[route]]
prefix = "/"
upstream = "app"
)");
  EXPECT_FALSE(r.ok);
  const std::string server_hint = " (expected IPv4:port, [IPv6]:port or :port, port 1..65535)";
  EXPECT_EQ(r.error, "t.toml:5: upstream[0].servers[0]: invalid address \"127.0.0.1:0\"" + server_hint +
                         "\n"
                         "t.toml:6: upstream[0].servers[1]: invalid address \"[::1]80\"" +
                         server_hint);
}

TEST(ConfigTest, DuplicateUpstreamNames) {
  Result r = load(R"([server]
listen_http = ":80"
[[upstream]]
name = "app"
servers = ["127.0.0.1:1"]
[[upstream]]
name = "app"
servers = ["127.0.0.1:2"]
[[route]]
prefix = "/"
upstream = "app"
)");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error, "t.toml:7: upstream[1].name: duplicate upstream name \"app\" (first defined on line 4)");
}

TEST(ConfigTest, DuplicateRoutePrefixes) {
  expectError("[[route]]\nprefix = \"/\"\nupstream = \"app\"\n",
              "t.toml:12: route[1].prefix: duplicate route prefix \"/\" (first defined on line 6)");
}

TEST(ConfigTest, BadRoutePrefix) {
  const std::string what = "must start with \"/\" and contain no spaces, '?' or '#': ";
  expectError("[[route]]\nprefix = \"v1/\"\nupstream = \"app\"\n", "t.toml:12: route[1].prefix: " + what + "\"v1/\"");
  expectError("[[route]]\nprefix = \"\"\nupstream = \"app\"\n", "t.toml:12: route[1].prefix: " + what + "\"\"");
  expectError("[[route]]\nprefix = \"/a b\"\nupstream = \"app\"\n",
              "t.toml:12: route[1].prefix: " + what + "\"/a b\"");
}

TEST(ConfigTest, RouteNamingUnknownUpstream) {
  expectError("[[route]]\nprefix = \"/x/\"\n\nupstream = \"ap\"\n",
              "t.toml:14: route[1].upstream: unknown upstream \"ap\"");
}

TEST(ConfigTest, MissingRequiredKeys) {
  Result r = load(R"([server]
listen_http = ":80"
[[upstream]]
lb = "round_robin"
[[route]]
methods = ["GET"]
)");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error,
            "t.toml:3: upstream[0].name: missing required key\n"
            "t.toml:3: upstream[0].servers: missing required key\n"
            "t.toml:5: route[0].prefix: missing required key\n"
            "t.toml:5: route[0].upstream: missing required key");
}

TEST(ConfigTest, UpstreamWithNoServers) {
  Result r = load(R"([server]
listen_http = ":80"
[[upstream]]
name = "app"
servers = []
[[route]]
prefix = "/"
upstream = "app"
)");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error, "t.toml:5: upstream[0].servers: must list at least one server");
}

TEST(ConfigTest, UnknownMethods) {
  expectError("[[route]]\nprefix = \"/x/\"\nupstream = \"app\"\nmethods = [\"GET\", \"get\", \"FOO\"]\n",
              "t.toml:14: route[1].methods[1]: unknown method \"get\" (expected GET HEAD POST PUT PATCH DELETE "
              "OPTIONS TRACE CONNECT)\n"
              "t.toml:14: route[1].methods[2]: unknown method \"FOO\" (expected GET HEAD POST PUT PATCH DELETE "
              "OPTIONS TRACE CONNECT)");
  expectError("[[route]]\nprefix = \"/x/\"\nupstream = \"app\"\nmethods = []\n",
              "t.toml:14: route[1].methods: must list at least one method");
}

TEST(ConfigTest, UnknownLbPolicy) {
  Result r = load(R"([server]
listen_http = ":80"
[[upstream]]
name = "app"
servers = ["127.0.0.1:1"]
lb = "random"
[[route]]
prefix = "/"
upstream = "app"
)");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error,
            "t.toml:6: upstream[0].lb: unknown policy \"random\" (expected \"round_robin\" or \"least_request\")");
}

TEST(ConfigTest, NoListener) {
  Result r = load(R"([[upstream]]
name = "app"
servers = ["127.0.0.1:1"]
[[route]]
prefix = "/"
upstream = "app"
[server]
workers = 1
)");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error, "t.toml:7: server: neither listen_http nor listen_https is set");

  r = load(R"([[upstream]]
name = "app"
servers = ["127.0.0.1:1"]
[[route]]
prefix = "/"
upstream = "app"
)");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error, "t.toml:1: server: neither listen_http nor listen_https is set");
}

TEST(ConfigTest, EmptyFileNeedsListenerUpstreamAndRoute) {
  Result r = load("");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error,
            "t.toml:1: upstream: at least one [[upstream]] is required\n"
            "t.toml:1: route: at least one [[route]] is required\n"
            "t.toml:1: server: neither listen_http nor listen_https is set");
}

TEST(ConfigTest, OtherValueChecks) {
  expectError("names = [\"api.example.com\", \"bad name\"]\n",
              "t.toml:11: server.names[1]: invalid host name \"bad name\"");
  expectError("state_dir = \"\"\n", "t.toml:11: server.state_dir: must not be empty");
  expectError("[log]\naudit = \"\"\n", "t.toml:12: log.audit: must not be empty");
  expectError("[log]\nsyslog = \"udp://1.2.3.4:514\"\n",
              "t.toml:12: log.syslog: invalid syslog target \"udp://1.2.3.4:514\" (expected \"\" or \"tcp://IP:port\")");
  expectError("[[route]]\nprefix = \"/x/\"\nupstream = \"app\"\ncontent_types = [\"text/csv\", \"text\", \"a/b; q=1\"]\n",
              "t.toml:14: route[1].content_types[1]: invalid media type \"text\" (expected type/subtype, no "
              "parameters)\n"
              "t.toml:14: route[1].content_types[2]: invalid media type \"a/b; q=1\" (expected type/subtype, no "
              "parameters)");
}

TEST(ConfigTest, CollectsAllErrorsInLineOrder) {
  Result r = load(R"([server]
workers = -2
listen_http = "nowhere"
bogus = 1

[[upstream]]
name = "app"
servers = ["127.0.0.1:9000"]
health_check = { path = "/h", interval = 5 }

[[route]]
prefix = "/v1/"
upstream = "missing"
methods = ["DELETE", "delete"]

[timeouts]
keepalive_idle_ms = 0
)");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error,
            "t.toml:2: server.workers: -2 is out of range (0..1024)\n"
            "t.toml:3: server.listen_http: invalid address \"nowhere\" (expected IPv4:port, [IPv6]:port or :port, "
            "port 0..65535)\n"
            "t.toml:4: server.bogus: unknown key\n"
            "t.toml:9: upstream[0].health_check.interval: unknown key\n"
            "t.toml:13: route[0].upstream: unknown upstream \"missing\"\n"
            "t.toml:14: route[0].methods[1]: unknown method \"delete\" (expected GET HEAD POST PUT PATCH DELETE "
            "OPTIONS TRACE CONNECT)\n"
            "t.toml:17: timeouts.keepalive_idle_ms: 0 is out of range (1..4294967295)");
}

TEST(ConfigTest, SyntaxErrorReportsLineAndColumn) {
  Result r = load("[server]\nlisten_http = \"1.2.3.4:80\"\nworkers = = 2\n");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error.rfind("t.toml:3:", 0), 0u) << r.error;
  EXPECT_EQ(r.error.find('\n'), std::string::npos) << r.error;

  r = load("[server]\nworkers = 1\nworkers = 2\n");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error.rfind("t.toml:3:", 0), 0u) << r.error;
}

TEST(ConfigTest, FailedLoadLeavesOutputUntouched) {
  Config c;
  c.path = "previous";
  c.server.workers = 7;
  std::string error;
  EXPECT_FALSE(loadConfigFromString("[server]\nworkers = 2\n", "t.toml", c, error));
  EXPECT_FALSE(error.empty());
  EXPECT_EQ(c.path, "previous");
  EXPECT_EQ(c.server.workers, 7u);
}

TEST(ConfigTest, LoadConfigReadsFile) {
  std::filesystem::path file =
      std::filesystem::temp_directory_path() / ("portcullis_config_test_" + std::to_string(getpid()) + ".toml");
  {
    std::ofstream f(file);
    f << kBase;
  }
  Config c;
  std::string error;
  EXPECT_TRUE(loadConfig(file.string(), c, error)) << error;
  EXPECT_EQ(c.path, file.string());
  EXPECT_EQ(c.routes.size(), 1u);

  {
    std::ofstream f(file);
    f << kBase << "typo = 1\n";
  }
  EXPECT_FALSE(loadConfig(file.string(), c, error));
  EXPECT_EQ(error, file.string() + ":11: server.typo: unknown key");
  std::filesystem::remove(file);
}

TEST(ConfigTest, LoadConfigCannotRead) {
  Config c;
  std::string error;
  EXPECT_FALSE(loadConfig("/nonexistent/portcullis.toml", c, error));
  EXPECT_EQ(error, "/nonexistent/portcullis.toml: cannot read: No such file or directory");

  std::string dir = std::filesystem::temp_directory_path().string();
  EXPECT_FALSE(loadConfig(dir, c, error));
  EXPECT_EQ(error, dir + ": cannot read: Is a directory");
}

TEST(ConfigTest, ExampleConfigLoads) {
  std::filesystem::path example =
      std::filesystem::path(__FILE__).parent_path() / ".." / ".." / "conf" / "portcullis.toml";
  Config c;
  std::string error;
  ASSERT_TRUE(loadConfig(example.string(), c, error)) << error;
  EXPECT_EQ(c.server.listen_https.str(), "127.0.0.1:8443");
  EXPECT_TRUE(c.server.listen_http.empty());
  EXPECT_EQ(c.tls.cert, "var/demo/server.crt");
  EXPECT_EQ(c.tls.key, "var/demo/server.key");
  EXPECT_EQ(c.server.admin_listen.str(), "127.0.0.1:9901");
  EXPECT_GE(c.server.workers, 1u);
  ASSERT_EQ(c.upstreams.size(), 1u);
  EXPECT_EQ(c.upstreams[0].name, "app");
  ASSERT_EQ(c.upstreams[0].servers.size(), 1u);
  EXPECT_EQ(c.upstreams[0].servers[0].str(), "127.0.0.1:9000");
  EXPECT_TRUE(c.upstreams[0].health_check.enabled);
  ASSERT_FALSE(c.routes.empty());
  EXPECT_EQ(c.routes[0].prefix, "/v1/");
  EXPECT_EQ(c.routes[0].upstream, "app");
  EXPECT_TRUE(c.routes[0].auth);
  EXPECT_TRUE(c.routes[0].validate_json);
  EXPECT_EQ(c.auth.token_store, "var/demo/tokens.toml");
  EXPECT_EQ(c.roles.size(), 3u);
  EXPECT_TRUE(checkSupported(c, error)) << error;
  EXPECT_EQ(c.server.state_dir, "var/state");
  EXPECT_EQ(c.log.access.rfind("var/log/", 0), 0u);
  EXPECT_EQ(c.log.audit.rfind("var/log/", 0), 0u);
}

TEST(HostPortTest, ParsesAllForms) {
  HostPort hp;
  ASSERT_TRUE(parseHostPort("1.2.3.4:80", hp));
  EXPECT_EQ(hp.host, "1.2.3.4");
  EXPECT_EQ(hp.port, 80);
  EXPECT_EQ(hp.str(), "1.2.3.4:80");

  ASSERT_TRUE(parseHostPort("[::1]:443", hp));
  EXPECT_EQ(hp.host, "::1");
  EXPECT_EQ(hp.port, 443);
  EXPECT_EQ(hp.str(), "[::1]:443");

  ASSERT_TRUE(parseHostPort(":8080", hp));
  EXPECT_EQ(hp.host, "0.0.0.0");
  EXPECT_EQ(hp.port, 8080);

  ASSERT_TRUE(parseHostPort("[2001:db8::a]:65535", hp));
  EXPECT_EQ(hp.str(), "[2001:db8::a]:65535");

  ASSERT_TRUE(parseHostPort("0.0.0.0:0", hp));
  EXPECT_EQ(hp.port, 0);
  EXPECT_FALSE(parseHostPort("0.0.0.0:0", hp, /*allow_zero=*/false));
  EXPECT_TRUE(parseHostPort("0.0.0.0:1", hp, /*allow_zero=*/false));
}

TEST(HostPortTest, RejectsMalformed) {
  for (std::string_view bad :
       {"", ":", "1.2.3.4", "1.2.3.4:", "1.2.3.4:65536", "1.2.3.4:99999999", "1.2.3.4:-1", "1.2.3.4:+80",
        "1.2.3.4:8 0", "1.2.3:80", "256.1.1.1:80", "localhost:80", "::1:80", "[::1]", "[::1]:", "[::1]80",
        "[]:80", "[1.2.3.4]:80", "[::1:80", "1.2.3.4:80:90", " 1.2.3.4:80", "[fe80::1%eth0]:80"}) {
    HostPort hp{"untouched", 1};
    EXPECT_FALSE(parseHostPort(bad, hp)) << bad;
    EXPECT_EQ(hp.host, "untouched") << bad;
  }
  HostPort hp;
  EXPECT_FALSE(parseHostPort(std::string_view("1.2.3.4\0x:80", 11), hp));
}

TEST(HostPortTest, EmptyHostPrintsNothing) { EXPECT_EQ(HostPort{}.str(), ""); }

TEST(MethodTest, NamesMapToBits) {
  EXPECT_EQ(methodBitFromName("GET"), kMethodGet);
  EXPECT_EQ(methodBitFromName("HEAD"), kMethodHead);
  EXPECT_EQ(methodBitFromName("POST"), kMethodPost);
  EXPECT_EQ(methodBitFromName("PUT"), kMethodPut);
  EXPECT_EQ(methodBitFromName("PATCH"), kMethodPatch);
  EXPECT_EQ(methodBitFromName("DELETE"), kMethodDelete);
  EXPECT_EQ(methodBitFromName("OPTIONS"), kMethodOptions);
  EXPECT_EQ(methodBitFromName("TRACE"), kMethodTrace);
  EXPECT_EQ(methodBitFromName("CONNECT"), kMethodConnect);
  EXPECT_EQ(methodBitFromName("get"), 0);
  EXPECT_EQ(methodBitFromName("GETS"), 0);
  EXPECT_EQ(methodBitFromName(""), 0);
}

}  // namespace
}  // namespace portcullis
