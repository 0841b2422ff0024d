// Portcullis configuration: the typed form of the TOML file described in
// SPEC.md §3. A Config is built once by loadConfig(), validated completely, and
// then never modified: it becomes part of an immutable Snapshot that workers read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "proxy/detect.h"

namespace portcullis {

// A parsed "host:port" listen or server address. `host` is a numeric IPv4 or
// IPv6 literal (without brackets); name resolution is never done at load time.
struct HostPort {
  std::string host;
  uint16_t port = 0;
  bool empty() const { return host.empty(); }
  std::string str() const;  // "1.2.3.4:80" or "[::1]:80"
};

struct ServerConfig {
  unsigned workers = 0;  // 0 = one per core (resolved by the loader to >= 1)
  HostPort listen_https;  // accepted by the loader, served once TLS lands
  HostPort listen_http;
  HostPort admin_listen{"127.0.0.1", 9901};
  std::vector<std::string> names;
  uint32_t shutdown_grace_ms = 10000;
  std::string state_dir = "var/state";
  uint32_t max_connections = 100000;
  uint32_t max_connections_per_ip = 1000;
  // Extension: where the worker threads run, like nginx's worker_cpu_affinity
  // and worker_priority (HAProxy: cpu-map, nice). Applied at start; a reload
  // keeps the running placement. cpu_affinity "auto": worker i on the i-th CPU
  // this process may use (modulo their count); a list: worker i on
  // cpu_affinity[i % size]; empty and not auto ("none"): the scheduler places
  // them. worker_priority: the workers' nice value (0: left at the process's
  // own; below 0 needs CAP_SYS_NICE, without it the workers keep the
  // process's value and a warning says so).
  std::vector<uint32_t> cpu_affinity;
  bool cpu_affinity_auto = false;
  int32_t worker_priority = 0;
};

struct TimeoutsConfig {
  uint32_t request_header_ms = 10000;
  uint32_t body_idle_ms = 30000;
  uint32_t min_body_rate = 500;             // bytes/s a body must average after the grace; 0 = none
  uint32_t min_body_rate_grace_ms = 10000;  // extension: time before the rate applies
  uint32_t keepalive_idle_ms = 60000;
  uint32_t upstream_connect_ms = 2000;
  uint32_t upstream_response_ms = 30000;
  // A WebSocket tunnel (route `websocket = true`) with no byte moving either
  // way for this long is closed.
  uint32_t tunnel_idle_ms = 300000;
};

struct LimitsConfig {
  uint32_t max_uri_bytes = 8192;
  uint32_t max_header_bytes = 16384;
  uint32_t max_headers = 100;
  uint64_t max_body_bytes = 10485760;
  // Overload watermark: I/O buffer memory the connections of the process may
  // hold (split equally between workers). Past it a worker closes new
  // connections at once and stops reading from connections that hold no
  // buffer, until it is back under 7/8 of its share. 0 = no watermark.
  uint64_t buffer_memory_bytes = 1ull << 30;
};

enum class LbPolicy : uint8_t { kRoundRobin, kLeastRequest };

struct HealthCheckConfig {
  bool enabled = false;
  std::string path = "/healthz";
  uint32_t interval_ms = 2000;
  uint32_t timeout_ms = 1000;
  uint32_t unhealthy_threshold = 2;  // consecutive failures that take a server out
  uint32_t healthy_threshold = 1;    // consecutive successes that put it back
};

struct UpstreamConfig {
  std::string name;
  std::vector<HostPort> servers;
  LbPolicy lb = LbPolicy::kRoundRobin;
  HealthCheckConfig health_check;
  uint32_t max_idle_per_server = 64;  // pooled keep-alive connections per worker
  uint32_t fail_timeout_ms = 10000;   // a server that failed to connect is skipped this long
  // TLS to the servers (tls = true): the certificate is verified against `ca`
  // (default: the system bundle) and the name `sni` (sent as SNI), or, without
  // sni, against the server's IP address. verify = false turns verification
  // off (logged as a warning at every load).
  bool tls = false;
  std::string ca;
  std::string sni;
  bool verify = true;
};

// Method bits, used for route method lists and role allow patterns.
enum MethodBit : uint16_t {
  kMethodGet = 1 << 0,
  kMethodHead = 1 << 1,
  kMethodPost = 1 << 2,
  kMethodPut = 1 << 3,
  kMethodPatch = 1 << 4,
  kMethodDelete = 1 << 5,
  kMethodOptions = 1 << 6,
  kMethodTrace = 1 << 7,
  kMethodConnect = 1 << 8,
};
inline constexpr uint16_t kDefaultRouteMethods = kMethodGet | kMethodHead | kMethodPost | kMethodPut |
                                                 kMethodPatch | kMethodDelete | kMethodOptions;

struct RateSpec {
  bool set = false;
  double rps = 0;
  uint32_t burst = 0;
};

struct RouteConfig {
  std::string prefix;
  std::string upstream;        // name of an [[upstream]]
  size_t upstream_index = 0;   // resolved by the loader
  uint16_t methods = kDefaultRouteMethods;
  bool auth = true;
  std::vector<std::string> content_types;
  uint64_t max_body_bytes = 0;  // 0 = limits.max_body_bytes (resolved by the loader)
  bool validate_json = false;
  bool upload = false;
  bool encrypt_body = false;
  // A valid WebSocket handshake (RFC 6455: GET, Upgrade: websocket, ...) is
  // forwarded with its Upgrade and, after the upstream's 101, the connection
  // becomes a byte tunnel. Off: Upgrade is stripped like any hop-by-hop header.
  bool websocket = false;
  RateSpec rate;  // per client on this route: its token, else its IP (IPv4 / IPv6 /64)
  uint32_t line = 0;  // of the route's `auth` key, else of the table (messages)
};

// [tls]: the certificate of the HTTPS listener. Protocol and cipher policy
// are fixed by the proxy (TLS 1.2 and 1.3, ECDHE with AEAD only).
// One [[tls.sni]] entry: another certificate, chosen when the client's SNI
// is one of `names` ("api.example.com", or "*.example.com" for exactly one
// label in front of example.com). Clients without SNI, or with a name no
// entry lists, get the default [tls] certificate.
struct TlsSniConfig {
  std::vector<std::string> names;  // lower case
  std::string cert;
  std::string key;
};

struct TlsConfig {
  std::string cert;          // PEM chain; relative paths from the working directory
  std::string key;           // PEM private key; must not be readable by group/others
  bool min_tls13 = false;    // min_version = "1.3"
  std::vector<TlsSniConfig> sni;
  bool configured() const { return !cert.empty(); }
};

// [https]: how the plaintext listener treats requests, and HSTS.
struct HttpsConfig {
  // kRedirect: GET/HEAD -> 308 to https, others 403. kReject: 403 for all.
  // kAllow (an extension of SPEC §3 for local tests and plain-HTTP benchmark
  // runs): plaintext requests are forwarded; the proxy warns at start.
  enum class Plaintext : uint8_t { kRedirect, kReject, kAllow };
  Plaintext plaintext = Plaintext::kRedirect;
  uint32_t hsts_max_age_s = 31536000;
  bool revoke_tokens_seen_in_plaintext = true;  // applied by token checking
  std::vector<std::string> trusted_proxies;     // CIDRs whose X-Forwarded-Proto/For are believed
};

// [auth]: where tokens come from and how they are applied (SPEC §3, §4).
struct AuthConfig {
  std::string token_store;  // empty: no [auth] section
  uint32_t inactive_expiry_days = 90;
  bool watch = true;        // re-read the store within 1 s of a change
  std::string account_header = "X-Portcullis-Account";
  bool forward_authorization = false;
  bool configured() const { return !token_store.empty(); }
};

// [rate_limit] (SPEC §3): each limit applies only when configured.
struct RateLimitConfig {
  RateSpec token;  // per token (a role's `rate` overrides: the most generous of its roles)
  RateSpec ip;     // per client IPv4 address / IPv6 /64, before authentication
  bool auth_failures_set = false;
  uint32_t af_max = 10, af_window_s = 60, af_ban_s = 300;
  uint64_t max_keys = 1u << 20;  // table size (fixed memory, 32 bytes per key)
  bool configured() const { return token.set || ip.set || auth_failures_set; }
  bool any_route_rate = false;  // some [[route]] has `rate` (the table is needed too)
};

// [[role]]: what a token with this role may do (default deny).
struct RoleConfig {
  std::string name;
  std::vector<std::string> allow;  // "METHOD /path/{account}/*"
  bool has_rate = false;           // rate = { rps, burst } overrides rate_limit.token
  double rps = 0;
  uint32_t burst = 0;
};

// [encryption] (SPEC §3, §7): the master keyring and the segment size of
// routes with `encrypt_body = true`.
struct EncryptionConfig {
  std::string keyring;              // empty: no [encryption] section
  uint32_t segment_bytes = 65536;   // plaintext bytes per pcx1 segment
  bool watch = true;                // re-read the keyring within 1 s of a change
  bool configured() const { return !keyring.empty(); }
};

// [detect] (SPEC §3, §8): thresholds of the Detector (proxy/detect.h), plus
// where alerts are POSTed.
struct DetectSettings {
  bool present = false;       // the file has a [detect] table
  DetectConfig thresholds;
  std::string alert_webhook;  // "" or "http://host:port/path"
};

struct LogConfig {
  std::string access = "var/log/access.log";  // empty = access log off
  std::string audit = "var/log/audit.log";
  bool audit_explicit = false;  // `audit` was given in the file
  std::string syslog;
};

struct Config {
  std::string path;  // the file this was loaded from
  ServerConfig server;
  TimeoutsConfig timeouts;
  LimitsConfig limits;
  TlsConfig tls;
  HttpsConfig https;
  AuthConfig auth;
  RateLimitConfig rate_limit;
  std::vector<RoleConfig> roles;
  std::vector<UpstreamConfig> upstreams;
  std::vector<RouteConfig> routes;
  EncryptionConfig encryption;
  DetectSettings detect;
  LogConfig log;
};

// Loads and validates `path`. On success fills `out` and returns true. On
// failure returns false and sets `error` to one line per problem, each of the
// form "FILE:LINE: KEY: what is wrong" (LINE is the line of the offending key
// or table). Unknown keys and tables are errors. Never throws.
bool loadConfig(const std::string& path, Config& out, std::string& error);

// Same, from TOML text already in memory; `source_name` is used in messages.
bool loadConfigFromString(std::string_view text, const std::string& source_name, Config& out,
                          std::string& error);

// Refuses settings whose enforcement is not built yet, so a config never
// silently promises a protection the proxy does not give (e.g. a route with
// `auth = true` while token checking is absent). Returns false with one
// "FILE: KEY: ..." line per problem.
bool checkSupported(const Config& config, std::string& error);

// Parses "host:port", "[v6]:port" or ":port" (= 0.0.0.0). Returns false on a
// malformed address or a port outside 1..65535 (0 allowed only if allow_zero).
bool parseHostPort(std::string_view s, HostPort& out, bool allow_zero = true);

// Parses a method name (exact, upper case) into its MethodBit; 0 if unknown.
uint16_t methodBitFromName(std::string_view name);

}  // namespace portcullis
