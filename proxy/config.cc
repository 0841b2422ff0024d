// TOML -> Config. The loader walks the parsed document once, checks every key it
// finds against the keys it knows, converts and range-checks each value, and
// records every problem it meets instead of stopping at the first one, so an
// operator fixes a broken file in one pass. Nothing here throws: toml++ is built
// with TOML_EXCEPTIONS=0 and the loader reports through its return value.
#include "proxy/config.h"

#include "filters/rbac.h"
#include "proxy/cidr.h"
#include "proxy/errno_message.h"
#include "proxy/toml_guard.h"
#include "proxy/token_store.h"

#include <arpa/inet.h>
#include <sched.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <thread>
#include <unordered_map>
#include <utility>

#include <toml++/toml.h>

namespace portcullis {

std::string HostPort::str() const {
  if (host.empty()) return {};
  std::string port_text = std::to_string(port);
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + port_text;
  return host + ":" + port_text;
}

bool parseHostPort(std::string_view s, HostPort& out, bool allow_zero) {
  std::string host;
  std::string_view port;
  if (!s.empty() && s.front() == '[') {
    size_t close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':') return false;
    host.assign(s.substr(1, close - 1));
    port = s.substr(close + 2);
    in6_addr a6;
    if (host.empty() || inet_pton(AF_INET6, host.c_str(), &a6) != 1) return false;
  } else {
    size_t colon = s.find(':');
    if (colon == std::string_view::npos) return false;
    host.assign(s.substr(0, colon));
    port = s.substr(colon + 1);
    if (host.empty()) {
      host = "0.0.0.0";
    } else {
      in_addr a4;
      if (inet_pton(AF_INET, host.c_str(), &a4) != 1) return false;
    }
  }
  // inet_pton stops at an embedded NUL, so "1.2.3.4\0junk" would pass without this.
  if (host.find('\0') != std::string::npos) return false;
  if (port.empty() || port.size() > 5) return false;
  uint32_t value = 0;
  for (char c : port) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<uint32_t>(c - '0');
  }
  if (value > 65535 || (value == 0 && !allow_zero)) return false;
  out.host = std::move(host);
  out.port = static_cast<uint16_t>(value);
  return true;
}

uint16_t methodBitFromName(std::string_view name) {
  static constexpr std::pair<std::string_view, uint16_t> kMethods[] = {
      {"GET", kMethodGet},         {"HEAD", kMethodHead},   {"POST", kMethodPost},
      {"PUT", kMethodPut},         {"PATCH", kMethodPatch}, {"DELETE", kMethodDelete},
      {"OPTIONS", kMethodOptions}, {"TRACE", kMethodTrace}, {"CONNECT", kMethodConnect},
  };
  for (const auto& [method, bit] : kMethods) {
    if (method == name) return bit;
  }
  return 0;
}

namespace {

constexpr uint64_t kU32Max = std::numeric_limits<uint32_t>::max();
constexpr uint64_t kI64Max = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
constexpr uint64_t kMaxWorkers = 1024;

const char* typeName(toml::node_type type) {
  switch (type) {
    case toml::node_type::table: return "table";
    case toml::node_type::array: return "array";
    case toml::node_type::string: return "string";
    case toml::node_type::integer: return "integer";
    case toml::node_type::floating_point: return "float";
    case toml::node_type::boolean: return "boolean";
    case toml::node_type::date: return "date";
    case toml::node_type::time: return "time";
    case toml::node_type::date_time: return "date-time";
    default: return "nothing";
  }
}

std::string join(const std::string& path, std::string_view key) {
  if (path.empty()) return std::string(key);
  std::string out = path;
  out += '.';
  out += key;
  return out;
}

std::string indexed(std::string_view name, size_t i) {
  return std::string(name) + "[" + std::to_string(i) + "]";
}

std::string quoted(std::string_view s) { return "\"" + std::string(s) + "\""; }

// workers = 0: one loop per CPU this process may run on (taskset, a
// container's cpuset), not per CPU the machine has.
unsigned usableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return static_cast<unsigned>(CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// RFC 9110 token characters, for the parts of a media type.
bool isTokenChar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != '\0';
}

bool isMediaType(std::string_view s) {
  size_t slash = s.find('/');
  if (slash == std::string_view::npos || slash == 0 || slash + 1 == s.size()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i != slash && !isTokenChar(s[i])) return false;
  }
  return true;
}

// A DNS name or IPv4 literal as it appears in a Host header (no port).
bool isHostName(std::string_view s) {
  if (s.empty() || s.size() > 253 || s.front() == '.' || s.front() == '-') return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.';
  });
}

// Path prefixes are compared byte for byte against the request target's path.
bool isPathPrefix(std::string_view s) {
  if (s.empty() || s.front() != '/') return false;
  return std::none_of(s.begin(), s.end(), [](char c) {
    return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f || c == '?' || c == '#';
  });
}

class Loader {
 public:
  explicit Loader(const std::string& file) : file_(file) {}

  bool load(std::string_view text, Config& out, std::string& error);

 private:
  struct Problem {
    uint32_t line;
    std::string text;
  };

  static uint32_t lineOf(const toml::node& n, uint32_t fallback = 1) {
    uint32_t line = n.source().begin.line;
    return line ? line : fallback;
  }

  void fail(uint32_t line, std::string_view key, std::string_view what) {
    std::string text = file_ + ":" + std::to_string(line ? line : 1) + ": ";
    text += key;
    text += ": ";
    text += what;
    problems_.push_back({line ? line : 1, std::move(text)});
  }

  void typeError(const toml::node& n, const std::string& key, std::string_view expected) {
    fail(lineOf(n), key, "expected " + std::string(expected) + ", got " + typeName(n.type()));
  }

  // Reports every key of `t` not in `known`.
  void checkKeys(const toml::table& t, const std::string& path, std::initializer_list<std::string_view> known) {
    for (const auto& [key, node] : t) {
      if (std::find(known.begin(), known.end(), key.str()) != known.end()) continue;
      uint32_t line = key.source().begin.line;
      fail(line ? line : lineOf(node, lineOf(t)), join(path, key.str()), "unknown key");
    }
  }

  // Each getter leaves `out` untouched when the key is absent or invalid, so the
  // default from config.h stands; it returns true only when it stored a value.
  const toml::table* getTable(const toml::table& t, std::string_view key, const std::string& path) {
    const toml::node* n = t.get(key);
    if (!n) return nullptr;
    if (!n->is_table()) {
      typeError(*n, join(path, key), "table");
      return nullptr;
    }
    return n->as_table();
  }

  template <class T>
  bool getUint(const toml::table& t, std::string_view key, const std::string& path, T& out, uint64_t min,
               uint64_t max) {
    const toml::node* n = t.get(key);
    if (!n) return false;
    const auto* v = n->as_integer();
    if (!v) {
      typeError(*n, join(path, key), "integer");
      return false;
    }
    int64_t x = v->get();
    if (x < 0 || static_cast<uint64_t>(x) < min || static_cast<uint64_t>(x) > max) {
      fail(lineOf(*n), join(path, key),
           std::to_string(x) + " is out of range (" + std::to_string(min) + ".." + std::to_string(max) + ")");
      return false;
    }
    out = static_cast<T>(x);
    return true;
  }

  bool getBool(const toml::table& t, std::string_view key, const std::string& path, bool& out) {
    const toml::node* n = t.get(key);
    if (!n) return false;
    const auto* v = n->as_boolean();
    if (!v) {
      typeError(*n, join(path, key), "boolean");
      return false;
    }
    out = v->get();
    return true;
  }

  bool getString(const toml::table& t, std::string_view key, const std::string& path, std::string& out) {
    const toml::node* n = t.get(key);
    if (!n) return false;
    const auto* v = n->as_string();
    if (!v) {
      typeError(*n, join(path, key), "string");
      return false;
    }
    out = v->get();
    return true;
  }

  // A string that must not be empty when given.
  bool getNonEmptyString(const toml::table& t, std::string_view key, const std::string& path, std::string& out) {
    std::string value;
    if (!getString(t, key, path, value)) return false;
    if (value.empty()) {
      fail(lineOf(*t.get(key)), join(path, key), "must not be empty");
      return false;
    }
    out = std::move(value);
    return true;
  }

  struct Item {
    std::string value;
    uint32_t line;
    std::string key;  // full path, e.g. route[0].methods[2]
  };

  // An array of strings. Returns false (and reports) if the key is not an array;
  // elements that are not strings are reported and left out of `out`.
  bool getStringArray(const toml::table& t, std::string_view key, const std::string& path,
                      std::vector<Item>& out) {
    const toml::node* n = t.get(key);
    if (!n) return false;
    const toml::array* arr = n->as_array();
    if (!arr) {
      typeError(*n, join(path, key), "array of strings");
      return false;
    }
    uint32_t array_line = lineOf(*n);
    for (size_t i = 0; i < arr->size(); ++i) {
      const toml::node& element = *arr->get(i);
      std::string element_key = indexed(join(path, key), i);
      if (const auto* s = element.as_string()) {
        out.push_back({s->get(), lineOf(element, array_line), std::move(element_key)});
      } else {
        typeError(element, element_key, "string");
      }
    }
    return true;
  }

  bool getAddress(const toml::table& t, std::string_view key, const std::string& path, HostPort& out,
                  bool allow_zero) {
    std::string text;
    if (!getString(t, key, path, text)) return false;
    if (!parseHostPort(text, out, allow_zero)) {
      fail(lineOf(*t.get(key)), join(path, key), addressError(text, allow_zero));
      return false;
    }
    return true;
  }

  static std::string addressError(std::string_view text, bool allow_zero) {
    return "invalid address " + quoted(text) + " (expected IPv4:port, [IPv6]:port or :port" +
           (allow_zero ? ", port 0..65535)" : ", port 1..65535)");
  }

  // `[[name]]`: an array whose elements are tables. Reports a wrong type.
  const toml::array* getTableArray(const toml::table& t, std::string_view key) {
    const toml::node* n = t.get(key);
    if (!n) return nullptr;
    if (!n->is_array()) {
      typeError(*n, std::string(key), "array of tables ([[" + std::string(key) + "]])");
      return nullptr;
    }
    return n->as_array();
  }

  void loadServer(const toml::table& t, ServerConfig& s);
  void loadTimeouts(const toml::table& t, TimeoutsConfig& c);
  void loadLimits(const toml::table& t, LimitsConfig& c);
  void loadUpstreams(const toml::table& root, std::vector<UpstreamConfig>& out);
  void loadHealthCheck(const toml::table& t, const std::string& path, HealthCheckConfig& hc);
  void loadRoutes(const toml::table& root, const Config& cfg, std::vector<RouteConfig>& out);
  void loadLog(const toml::table& t, LogConfig& c);
  void loadTls(const toml::table& t, TlsConfig& c);
  void loadHttps(const toml::table& t, HttpsConfig& c);
  void loadAuth(const toml::table& t, AuthConfig& c);
  void loadEncryption(const toml::table& t, EncryptionConfig& c);
  void loadDetect(const toml::table& t, DetectSettings& c);
  void loadCountWindow(const toml::table& t, std::string_view key, const std::string& path, uint32_t& count,
                       uint32_t& window_s);
  void getFactor(const toml::table& t, std::string_view key, const std::string& path, double& out);
  void loadRoles(const toml::table& root, std::vector<RoleConfig>& out);
  void loadRateLimit(const toml::table& t, RateLimitConfig& c);
  bool loadRate(const toml::table& t, std::string_view key, const std::string& path, RateSpec& out);

  std::string file_;
  std::vector<Problem> problems_;
};

void Loader::loadServer(const toml::table& t, ServerConfig& s) {
  const std::string path = "server";
  checkKeys(t, path,
            {"workers", "listen_https", "listen_http", "admin_listen", "names", "shutdown_grace_ms", "state_dir",
             "max_connections", "max_connections_per_ip", "cpu_affinity", "worker_priority"});
  getUint(t, "workers", path, s.workers, 0, kMaxWorkers);
  if (const toml::node* n = t.get("cpu_affinity")) {
    const std::string key = join(path, "cpu_affinity");
    if (const auto* str = n->as_string()) {
      if (str->get() == "auto") {
        s.cpu_affinity_auto = true;
      } else if (str->get() != "none") {
        fail(lineOf(*n), key, "expected \"auto\", \"none\" or an array of CPU numbers, got " + quoted(str->get()));
      }
    } else if (const auto* arr = n->as_array()) {
      if (arr->empty()) fail(lineOf(*n), key, "empty CPU list (use \"none\" for no pinning)");
      for (size_t i = 0; i < arr->size(); ++i) {
        const toml::node& e = *arr->get(i);
        const auto* v = e.as_integer();
        if (v == nullptr) {
          typeError(e, indexed(key, i), "integer");
        } else if (v->get() < 0 || v->get() >= CPU_SETSIZE) {
          fail(lineOf(e, lineOf(*n)), indexed(key, i),
               std::to_string(v->get()) + " is out of range (0.." + std::to_string(CPU_SETSIZE - 1) + ")");
        } else {
          s.cpu_affinity.push_back(static_cast<uint32_t>(v->get()));
        }
      }
    } else {
      typeError(*n, key, "\"auto\", \"none\" or an array of CPU numbers");
    }
  }
  if (const toml::node* n = t.get("worker_priority")) {
    const auto* v = n->as_integer();
    if (v == nullptr) {
      typeError(*n, join(path, "worker_priority"), "integer");
    } else if (v->get() < -20 || v->get() > 19) {
      fail(lineOf(*n), join(path, "worker_priority"), std::to_string(v->get()) + " is out of range (-20..19)");
    } else {
      s.worker_priority = static_cast<int32_t>(v->get());
    }
  }
  // Port 0 on a listener asks the kernel for a free port (tests use it).
  getAddress(t, "listen_https", path, s.listen_https, true);
  getAddress(t, "listen_http", path, s.listen_http, true);
  getAddress(t, "admin_listen", path, s.admin_listen, true);
  std::vector<Item> names;
  if (getStringArray(t, "names", path, names)) {
    for (Item& name : names) {
      if (!isHostName(name.value)) {
        fail(name.line, name.key, "invalid host name " + quoted(name.value));
      } else {
        s.names.push_back(std::move(name.value));
      }
    }
  }
  getUint(t, "shutdown_grace_ms", path, s.shutdown_grace_ms, 0, kU32Max);
  getNonEmptyString(t, "state_dir", path, s.state_dir);
  getUint(t, "max_connections", path, s.max_connections, 1, kU32Max);
  getUint(t, "max_connections_per_ip", path, s.max_connections_per_ip, 1, kU32Max);
}

void Loader::loadTimeouts(const toml::table& t, TimeoutsConfig& c) {
  const std::string path = "timeouts";
  checkKeys(t, path,
            {"request_header_ms", "body_idle_ms", "min_body_rate", "min_body_rate_grace_ms", "keepalive_idle_ms",
             "upstream_connect_ms", "upstream_response_ms", "tunnel_idle_ms"});
  getUint(t, "request_header_ms", path, c.request_header_ms, 1, kU32Max);
  getUint(t, "body_idle_ms", path, c.body_idle_ms, 1, kU32Max);
  // A rate, not a timeout: 0 means no minimum.
  getUint(t, "min_body_rate", path, c.min_body_rate, 0, kU32Max);
  getUint(t, "min_body_rate_grace_ms", path, c.min_body_rate_grace_ms, 0, kU32Max);
  getUint(t, "keepalive_idle_ms", path, c.keepalive_idle_ms, 1, kU32Max);
  getUint(t, "upstream_connect_ms", path, c.upstream_connect_ms, 1, kU32Max);
  getUint(t, "upstream_response_ms", path, c.upstream_response_ms, 1, kU32Max);
  getUint(t, "tunnel_idle_ms", path, c.tunnel_idle_ms, 1, kU32Max);
}

void Loader::loadLimits(const toml::table& t, LimitsConfig& c) {
  const std::string path = "limits";
  checkKeys(t, path, {"max_uri_bytes", "max_header_bytes", "max_headers", "max_body_bytes", "buffer_memory_bytes"});
  getUint(t, "max_uri_bytes", path, c.max_uri_bytes, 1, kU32Max);
  getUint(t, "max_header_bytes", path, c.max_header_bytes, 1, kU32Max);
  getUint(t, "max_headers", path, c.max_headers, 1, kU32Max);
  getUint(t, "max_body_bytes", path, c.max_body_bytes, 0, kI64Max);
  if (t.get("buffer_memory_bytes")) {
    getUint(t, "buffer_memory_bytes", path, c.buffer_memory_bytes, 0, kI64Max);
    if (c.buffer_memory_bytes != 0 && c.buffer_memory_bytes < 65536) {
      fail(lineOf(*t.get("buffer_memory_bytes")), join(path, "buffer_memory_bytes"), "must be 0 (off) or at least 65536");
    }
  }
}

void Loader::loadHealthCheck(const toml::table& t, const std::string& path, HealthCheckConfig& hc) {
  checkKeys(t, path, {"path", "interval_ms", "timeout_ms", "unhealthy_threshold", "healthy_threshold"});
  hc.enabled = true;
  std::string probe_path;
  if (getString(t, "path", path, probe_path)) {
    if (!isPathPrefix(probe_path)) {
      fail(lineOf(*t.get("path")), join(path, "path"),
           "must start with \"/\" and contain no spaces, '?' or '#': " + quoted(probe_path));
    } else {
      hc.path = std::move(probe_path);
    }
  }
  getUint(t, "interval_ms", path, hc.interval_ms, 1, kU32Max);
  getUint(t, "timeout_ms", path, hc.timeout_ms, 1, kU32Max);
  getUint(t, "unhealthy_threshold", path, hc.unhealthy_threshold, 1, kU32Max);
  getUint(t, "healthy_threshold", path, hc.healthy_threshold, 1, kU32Max);
}

void Loader::loadUpstreams(const toml::table& root, std::vector<UpstreamConfig>& out) {
  const toml::array* arr = getTableArray(root, "upstream");
  if (!arr) {
    if (!root.get("upstream")) fail(1, "upstream", "at least one [[upstream]] is required");
    return;
  }
  if (arr->empty()) fail(lineOf(*root.get("upstream")), "upstream", "at least one [[upstream]] is required");
  std::unordered_map<std::string, uint32_t> first_line;  // name -> line of its first definition
  for (size_t i = 0; i < arr->size(); ++i) {
    const std::string path = indexed("upstream", i);
    const toml::table* t = arr->get(i)->as_table();
    if (!t) {
      typeError(*arr->get(i), path, "table");
      continue;
    }
    const uint32_t line = lineOf(*t);
    checkKeys(*t, path,
              {"name", "servers", "lb", "health_check", "max_idle_per_server", "fail_timeout_ms", "tls", "ca", "sni",
               "verify"});
    UpstreamConfig u;

    if (!t->get("name")) {
      fail(line, join(path, "name"), "missing required key");
    } else if (getNonEmptyString(*t, "name", path, u.name)) {
      uint32_t name_line = lineOf(*t->get("name"), line);
      auto [it, inserted] = first_line.emplace(u.name, name_line);
      if (!inserted) {
        fail(name_line, join(path, "name"),
             "duplicate upstream name " + quoted(u.name) + " (first defined on line " + std::to_string(it->second) +
                 ")");
      }
    }

    std::vector<Item> servers;
    if (!t->get("servers")) {
      fail(line, join(path, "servers"), "missing required key");
    } else if (getStringArray(*t, "servers", path, servers)) {
      if (t->get("servers")->as_array()->empty()) {
        fail(lineOf(*t->get("servers"), line), join(path, "servers"), "must list at least one server");
      }
      for (const Item& server : servers) {
        HostPort hp;
        if (parseHostPort(server.value, hp, false)) {
          u.servers.push_back(std::move(hp));
        } else {
          fail(server.line, server.key, addressError(server.value, false));
        }
      }
    }

    std::string lb;
    if (getString(*t, "lb", path, lb)) {
      if (lb == "round_robin") {
        u.lb = LbPolicy::kRoundRobin;
      } else if (lb == "least_request") {
        u.lb = LbPolicy::kLeastRequest;
      } else {
        fail(lineOf(*t->get("lb"), line), join(path, "lb"),
             "unknown policy " + quoted(lb) + " (expected \"round_robin\" or \"least_request\")");
      }
    }

    if (const toml::table* hc = getTable(*t, "health_check", path)) {
      loadHealthCheck(*hc, join(path, "health_check"), u.health_check);
    }
    getUint(*t, "max_idle_per_server", path, u.max_idle_per_server, 0, kU32Max);
    getUint(*t, "fail_timeout_ms", path, u.fail_timeout_ms, 1, kU32Max);
    getBool(*t, "tls", path, u.tls);
    getNonEmptyString(*t, "ca", path, u.ca);
    if (getNonEmptyString(*t, "sni", path, u.sni)) {
      const bool name_ok = std::all_of(u.sni.begin(), u.sni.end(), [](char ch) {
        return std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '-';
      }) && u.sni.size() <= 253 && u.sni.front() != '.' && u.sni.front() != '-';
      if (!name_ok) fail(lineOf(*t->get("sni"), line), join(path, "sni"), "must be a DNS name");
    }
    getBool(*t, "verify", path, u.verify);
    if (!u.tls) {
      for (const char* k : {"ca", "sni", "verify"}) {
        if (t->get(k)) fail(lineOf(*t->get(k), line), join(path, k), "only valid with tls = true");
      }
    }
    out.push_back(std::move(u));
  }
}

void Loader::loadRoutes(const toml::table& root, const Config& cfg, std::vector<RouteConfig>& out) {
  const toml::array* arr = getTableArray(root, "route");
  if (!arr) {
    if (!root.get("route")) fail(1, "route", "at least one [[route]] is required");
    return;
  }
  if (arr->empty()) fail(lineOf(*root.get("route")), "route", "at least one [[route]] is required");
  std::unordered_map<std::string, uint32_t> first_line;  // prefix -> line of its first definition
  for (size_t i = 0; i < arr->size(); ++i) {
    const std::string path = indexed("route", i);
    const toml::table* t = arr->get(i)->as_table();
    if (!t) {
      typeError(*arr->get(i), path, "table");
      continue;
    }
    const uint32_t line = lineOf(*t);
    checkKeys(*t, path,
              {"prefix", "upstream", "methods", "auth", "content_types", "max_body_bytes", "validate_json", "upload",
               "encrypt_body", "rate", "websocket"});
    RouteConfig r;
    r.line = t->get("auth") != nullptr ? lineOf(*t->get("auth")) : line;

    if (!t->get("prefix")) {
      fail(line, join(path, "prefix"), "missing required key");
    } else if (getString(*t, "prefix", path, r.prefix)) {
      uint32_t prefix_line = lineOf(*t->get("prefix"), line);
      if (!isPathPrefix(r.prefix)) {
        fail(prefix_line, join(path, "prefix"),
             "must start with \"/\" and contain no spaces, '?' or '#': " + quoted(r.prefix));
      } else if (auto [it, inserted] = first_line.emplace(r.prefix, prefix_line); !inserted) {
        fail(prefix_line, join(path, "prefix"),
             "duplicate route prefix " + quoted(r.prefix) + " (first defined on line " + std::to_string(it->second) +
                 ")");
      }
    }

    if (!t->get("upstream")) {
      fail(line, join(path, "upstream"), "missing required key");
    } else if (getString(*t, "upstream", path, r.upstream)) {
      auto found = std::find_if(cfg.upstreams.begin(), cfg.upstreams.end(),
                                [&](const UpstreamConfig& u) { return u.name == r.upstream; });
      if (found == cfg.upstreams.end()) {
        fail(lineOf(*t->get("upstream"), line), join(path, "upstream"), "unknown upstream " + quoted(r.upstream));
      } else {
        r.upstream_index = static_cast<size_t>(found - cfg.upstreams.begin());
      }
    }

    std::vector<Item> methods;
    if (getStringArray(*t, "methods", path, methods)) {
      uint16_t bits = 0;
      bool all_valid = methods.size() == t->get("methods")->as_array()->size();
      for (const Item& m : methods) {
        uint16_t bit = methodBitFromName(m.value);
        if (bit == 0) {
          fail(m.line, m.key,
               "unknown method " + quoted(m.value) + " (expected GET HEAD POST PUT PATCH DELETE OPTIONS TRACE CONNECT)");
          all_valid = false;
        }
        bits |= bit;
      }
      if (t->get("methods")->as_array()->empty()) {
        fail(lineOf(*t->get("methods"), line), join(path, "methods"), "must list at least one method");
      } else if (all_valid) {
        r.methods = bits;
      }
    }

    getBool(*t, "auth", path, r.auth);

    std::vector<Item> content_types;
    if (getStringArray(*t, "content_types", path, content_types)) {
      for (Item& ct : content_types) {
        if (!isMediaType(ct.value)) {
          fail(ct.line, ct.key, "invalid media type " + quoted(ct.value) + " (expected type/subtype, no parameters)");
        } else {
          r.content_types.push_back(std::move(ct.value));
        }
      }
    }

    getUint(*t, "max_body_bytes", path, r.max_body_bytes, 0, kI64Max);
    if (r.max_body_bytes == 0) r.max_body_bytes = cfg.limits.max_body_bytes;
    getBool(*t, "validate_json", path, r.validate_json);
    getBool(*t, "upload", path, r.upload);
    getBool(*t, "encrypt_body", path, r.encrypt_body);
    getBool(*t, "websocket", path, r.websocket);
    if (r.websocket && (r.methods & kMethodGet) == 0) {
      fail(lineOf(*t->get("websocket"), line), join(path, "websocket"),
           "a WebSocket handshake is a GET: add \"GET\" to methods");
    }
    loadRate(*t, "rate", path, r.rate);
    out.push_back(std::move(r));
  }
}

void Loader::loadLog(const toml::table& t, LogConfig& c) {
  const std::string path = "log";
  checkKeys(t, path, {"access", "audit", "syslog"});
  getString(t, "access", path, c.access);
  getNonEmptyString(t, "audit", path, c.audit);
  c.audit_explicit = t.get("audit") != nullptr;
  std::string syslog;
  if (getString(t, "syslog", path, syslog)) {
    constexpr std::string_view kScheme = "tcp://";
    HostPort hp;
    if (!syslog.empty() &&
        (syslog.compare(0, kScheme.size(), kScheme) != 0 || !parseHostPort(syslog.substr(kScheme.size()), hp, false))) {
      fail(lineOf(*t.get("syslog")), "log.syslog",
           "invalid syslog target " + quoted(syslog) + " (expected \"\" or \"tcp://IP:port\")");
    } else {
      c.syslog = std::move(syslog);
    }
  }
}

void Loader::loadTls(const toml::table& t, TlsConfig& c) {
  const std::string path = "tls";
  checkKeys(t, path, {"cert", "key", "min_version", "sni"});
  getNonEmptyString(t, "cert", path, c.cert);
  getNonEmptyString(t, "key", path, c.key);
  if (!t.get("cert")) fail(lineOf(t), "tls.cert", "missing (PEM certificate chain)");
  if (!t.get("key")) fail(lineOf(t), "tls.key", "missing (PEM private key)");
  std::string v;
  if (getString(t, "min_version", path, v)) {
    if (v == "1.3") {
      c.min_tls13 = true;
    } else if (v != "1.2") {
      fail(lineOf(*t.get("min_version")), "tls.min_version",
           "must be \"1.2\" or \"1.3\" (nothing older is ever offered)");
    }
  }
  const toml::node* sni = t.get("sni");
  if (sni == nullptr) return;
  const toml::array* arr = sni->as_array();
  if (arr == nullptr || !arr->is_array_of_tables()) {
    fail(lineOf(*sni), "tls.sni", "expected [[tls.sni]] tables");
    return;
  }
  for (size_t i = 0; i < arr->size(); ++i) {
    const std::string p = indexed("tls.sni", i);
    const toml::table* e = arr->get(i)->as_table();
    checkKeys(*e, p, {"names", "cert", "key"});
    TlsSniConfig entry;
    std::vector<Item> names;
    if (getStringArray(*e, "names", p, names)) {
      for (Item& n : names) {
        std::string name = n.value;
        for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        std::string_view check = name;
        if (check.size() > 2 && check.substr(0, 2) == "*.") check.remove_prefix(2);
        if (!isHostName(check)) {
          fail(n.line, n.key, "invalid host name " + quoted(n.value));
        } else {
          entry.names.push_back(std::move(name));
        }
      }
    }
    if (!e->get("names") || entry.names.empty()) fail(lineOf(*e), join(p, "names"), "at least one name is required");
    if (!e->get("cert")) fail(lineOf(*e), join(p, "cert"), "missing (PEM certificate chain)");
    if (!e->get("key")) fail(lineOf(*e), join(p, "key"), "missing (PEM private key)");
    getNonEmptyString(*e, "cert", p, entry.cert);
    getNonEmptyString(*e, "key", p, entry.key);
    c.sni.push_back(std::move(entry));
  }
}

void Loader::loadHttps(const toml::table& t, HttpsConfig& c) {
  const std::string path = "https";
  checkKeys(t, path, {"plaintext", "hsts_max_age_s", "revoke_tokens_seen_in_plaintext", "trusted_proxies"});
  std::string mode;
  if (getString(t, "plaintext", path, mode)) {
    if (mode == "redirect") {
      c.plaintext = HttpsConfig::Plaintext::kRedirect;
    } else if (mode == "reject") {
      c.plaintext = HttpsConfig::Plaintext::kReject;
    } else if (mode == "allow") {
      c.plaintext = HttpsConfig::Plaintext::kAllow;
    } else {
      fail(lineOf(*t.get("plaintext")), "https.plaintext",
           "must be \"redirect\", \"reject\" or \"allow\" (testing only)");
    }
  }
  getUint(t, "hsts_max_age_s", path, c.hsts_max_age_s, 0, 2147483647);
  getBool(t, "revoke_tokens_seen_in_plaintext", path, c.revoke_tokens_seen_in_plaintext);
  std::vector<Item> nets;
  if (getStringArray(t, "trusted_proxies", path, nets)) {
    for (Item& n : nets) {
      Cidr cidr;
      if (!Cidr::parse(n.value, cidr)) {
        fail(n.line, n.key, "invalid network " + quoted(n.value) + " (expected an IP address or CIDR such as 10.0.0.0/8)");
      } else {
        c.trusted_proxies.push_back(std::move(n.value));
      }
    }
  }
}

void Loader::loadAuth(const toml::table& t, AuthConfig& c) {
  const std::string path = "auth";
  checkKeys(t, path, {"token_store", "inactive_expiry_days", "watch", "account_header", "forward_authorization"});
  if (!t.get("token_store")) fail(lineOf(t), "auth.token_store", "missing (path of the token store)");
  getNonEmptyString(t, "token_store", path, c.token_store);
  getUint(t, "inactive_expiry_days", path, c.inactive_expiry_days, 0, 36500);
  getBool(t, "watch", path, c.watch);
  std::string header;
  if (getString(t, "account_header", path, header)) {
    bool ok = !header.empty();
    for (char ch : header) ok = ok && isTokenChar(ch) && ch != '_';
    if (!ok) {
      fail(lineOf(*t.get("account_header")), "auth.account_header", "invalid header name " + quoted(header));
    } else {
      c.account_header = std::move(header);
    }
  }
  getBool(t, "forward_authorization", path, c.forward_authorization);
}

void Loader::loadEncryption(const toml::table& t, EncryptionConfig& c) {
  const std::string path = "encryption";
  checkKeys(t, path, {"keyring", "segment_bytes", "watch"});
  if (!t.get("keyring")) fail(lineOf(t), "encryption.keyring", "missing (path of the master keyring)");
  getNonEmptyString(t, "keyring", path, c.keyring);
  // 16 bytes is only useful in tests; the format allows up to 16 MiB.
  getUint(t, "segment_bytes", path, c.segment_bytes, 16, 16u << 20);
  getBool(t, "watch", path, c.watch);
}

// `key = { count = N, window_s = S }`.
void Loader::loadCountWindow(const toml::table& t, std::string_view key, const std::string& path, uint32_t& count,
                             uint32_t& window_s) {
  const toml::node* n = t.get(key);
  if (n == nullptr) return;
  const std::string p = join(path, key);
  const toml::table* ct = n->as_table();
  if (ct == nullptr) {
    typeError(*n, p, "inline table { count, window_s }");
    return;
  }
  checkKeys(*ct, p, {"count", "window_s"});
  getUint(*ct, "count", p, count, 1, 65534);
  getUint(*ct, "window_s", p, window_s, 1, 86400);
}

void Loader::getFactor(const toml::table& t, std::string_view key, const std::string& path, double& out) {
  const toml::node* n = t.get(key);
  if (n == nullptr) return;
  if (!n->is_number()) {
    typeError(*n, join(path, key), "number");
    return;
  }
  const double v = n->is_integer() ? static_cast<double>(n->as_integer()->get()) : n->as_floating_point()->get();
  if (!(v >= 1.5) || v > 1e6) {
    fail(lineOf(*n), join(path, key), "must be between 1.5 and 1000000");
    return;
  }
  out = v;
}

void Loader::loadDetect(const toml::table& t, DetectSettings& c) {
  const std::string path = "detect";
  c.present = true;
  checkKeys(t, path,
            {"auth_failures", "forbidden", "not_found", "rate_spike_factor", "bytes_spike_factor", "alert_webhook",
             "rate_min", "bytes_min", "interval_s", "warmup_intervals", "cooldown_s", "max_keys", "enabled"});
  DetectConfig& d = c.thresholds;
  loadCountWindow(t, "auth_failures", path, d.auth_failures_count, d.auth_failures_window_s);
  loadCountWindow(t, "forbidden", path, d.forbidden_count, d.forbidden_window_s);
  loadCountWindow(t, "not_found", path, d.not_found_count, d.not_found_window_s);
  getFactor(t, "rate_spike_factor", path, d.rate_factor);
  getFactor(t, "bytes_spike_factor", path, d.bytes_factor);
  getUint(t, "rate_min", path, d.rate_min, 1, 1ull << 32);
  getUint(t, "bytes_min", path, d.bytes_min, 1, 1ull << 40);
  getUint(t, "interval_s", path, d.interval_s, 1, 3600);
  getUint(t, "warmup_intervals", path, d.warmup_intervals, 1, 63);
  getUint(t, "cooldown_s", path, d.cooldown_s, 1, 86400);
  getUint(t, "max_keys", path, d.capacity_keys, 1024, 1ull << 24);
  getBool(t, "enabled", path, d.enabled);
  std::string url;
  if (getString(t, "alert_webhook", path, url)) {
    constexpr std::string_view kScheme = "http://";
    if (!url.empty() && url.compare(0, kScheme.size(), kScheme) != 0) {
      fail(lineOf(*t.get("alert_webhook")), "detect.alert_webhook",
           "invalid URL " + quoted(url) + " (expected \"\" or \"http://host:port/path\")");
    } else {
      c.alert_webhook = std::move(url);
    }
  }
}

// `key = { rps = N, burst = M }`; rps may be fractional.
bool Loader::loadRate(const toml::table& t, std::string_view key, const std::string& path, RateSpec& out) {
  const toml::node* n = t.get(key);
  if (n == nullptr) return false;
  const std::string p = join(path, key);
  const toml::table* rt = n->as_table();
  if (rt == nullptr) {
    typeError(*n, p, "inline table { rps, burst }");
    return false;
  }
  checkKeys(*rt, p, {"rps", "burst"});
  const toml::node* rps = rt->get("rps");
  if (rps == nullptr || !rps->is_number()) {
    fail(lineOf(*rt), join(p, "rps"), "required number of requests per second");
    return false;
  }
  out.rps = rps->is_integer() ? static_cast<double>(rps->as_integer()->get()) : rps->as_floating_point()->get();
  if (!(out.rps > 0) || out.rps > 1e9) {
    fail(lineOf(*rps), join(p, "rps"), "must be greater than 0");
    return false;
  }
  if (!rt->get("burst")) {
    fail(lineOf(*rt), join(p, "burst"), "missing required key");
    return false;
  }
  if (!getUint(*rt, "burst", p, out.burst, 1, 1000000000)) return false;
  out.set = true;
  return true;
}

void Loader::loadRateLimit(const toml::table& t, RateLimitConfig& c) {
  const std::string path = "rate_limit";
  checkKeys(t, path, {"token", "ip", "auth_failures", "max_keys"});
  loadRate(t, "token", path, c.token);
  loadRate(t, "ip", path, c.ip);
  if (const toml::node* n = t.get("auth_failures")) {
    const std::string p = join(path, "auth_failures");
    if (const toml::table* af = n->as_table()) {
      checkKeys(*af, p, {"max", "window_s", "ban_s"});
      getUint(*af, "max", p, c.af_max, 1, 1000000);
      getUint(*af, "window_s", p, c.af_window_s, 1, 86400);
      getUint(*af, "ban_s", p, c.af_ban_s, 1, 86400 * 30);
      c.auth_failures_set = true;
    } else {
      typeError(*n, p, "inline table { max, window_s, ban_s }");
    }
  }
  getUint(t, "max_keys", path, c.max_keys, 1024, 1ull << 28);
}

void Loader::loadRoles(const toml::table& root, std::vector<RoleConfig>& out) {
  const toml::node* node = root.get("role");
  if (node == nullptr) return;
  const toml::array* arr = node->as_array();
  if (arr == nullptr || !arr->is_array_of_tables()) {
    fail(lineOf(*node), "role", "expected [[role]] tables");
    return;
  }
  std::unordered_map<std::string, uint32_t> first_line;
  for (size_t i = 0; i < arr->size(); ++i) {
    const std::string path = indexed("role", i);
    const toml::table* t = arr->get(i)->as_table();
    const uint32_t line = lineOf(*t);
    checkKeys(*t, path, {"name", "allow", "rate"});
    RoleConfig r;
    if (!t->get("name")) {
      fail(line, join(path, "name"), "missing required key");
    } else if (getNonEmptyString(*t, "name", path, r.name)) {
      if (!isValidRoleName(r.name)) {
        fail(lineOf(*t->get("name")), join(path, "name"), "invalid role name " + quoted(r.name));
      }
      auto [it, inserted] = first_line.emplace(r.name, lineOf(*t->get("name")));
      if (!inserted) {
        fail(lineOf(*t->get("name")), join(path, "name"),
             "duplicate role " + quoted(r.name) + " (first defined on line " + std::to_string(it->second) + ")");
      }
    }
    std::vector<Item> allow;
    if (getStringArray(*t, "allow", path, allow)) {
      for (Item& a : allow) {
        RbacPatternError e = RbacPolicy::checkPattern(a.value);
        if (e != RbacPatternError::kOk) {
          fail(a.line, a.key, "invalid pattern " + quoted(a.value) + ": " + rbacPatternErrorName(e));
        } else {
          r.allow.push_back(std::move(a.value));
        }
      }
    }
    RateSpec rate;
    if (loadRate(*t, "rate", path, rate)) {
      r.has_rate = true;
      r.rps = rate.rps;
      r.burst = rate.burst;
    }
    out.push_back(std::move(r));
  }
}

bool Loader::load(std::string_view text, Config& out, std::string& error) {
  if (uint32_t bad = firstNonAsciiLine(text)) {
    error = nonAsciiError(file_, bad);
    return false;
  }
  toml::parse_result parsed = toml::parse(text, file_);
  if (!parsed) {
    const toml::parse_error& e = parsed.error();
    error = file_ + ":" + std::to_string(e.source().begin.line) + ":" + std::to_string(e.source().begin.column) +
            ": " + std::string(e.description());
    return false;
  }
  const toml::table& root = parsed.table();

  Config cfg;
  cfg.path = file_;
  checkKeys(root, "",
            {"server", "timeouts", "limits", "tls", "https", "auth", "role", "rate_limit", "upstream", "route", "log",
             "encryption", "detect"});
  uint32_t server_line = 1;
  if (const toml::table* t = getTable(root, "server", "")) {
    server_line = lineOf(*t);
    loadServer(*t, cfg.server);
  }
  if (const toml::table* t = getTable(root, "timeouts", "")) loadTimeouts(*t, cfg.timeouts);
  if (const toml::table* t = getTable(root, "limits", "")) loadLimits(*t, cfg.limits);
  loadUpstreams(root, cfg.upstreams);
  loadRoutes(root, cfg, cfg.routes);
  if (const toml::table* t = getTable(root, "log", "")) loadLog(*t, cfg.log);
  if (const toml::table* t = getTable(root, "tls", "")) loadTls(*t, cfg.tls);
  if (const toml::table* t = getTable(root, "https", "")) loadHttps(*t, cfg.https);
  if (const toml::table* t = getTable(root, "auth", "")) loadAuth(*t, cfg.auth);
  if (const toml::table* t = getTable(root, "encryption", "")) loadEncryption(*t, cfg.encryption);
  if (const toml::table* t = getTable(root, "detect", "")) loadDetect(*t, cfg.detect);
  loadRoles(root, cfg.roles);
  if (const toml::table* t = getTable(root, "rate_limit", "")) loadRateLimit(*t, cfg.rate_limit);

  // Only complain about a missing listener if neither key was given at all; a
  // malformed one has already been reported.
  const toml::node* server = root.get("server");
  if (!server || (server->is_table() && !server->as_table()->get("listen_http") &&
                  !server->as_table()->get("listen_https"))) {
    fail(server_line, "server", "neither listen_http nor listen_https is set");
  }

  if (server != nullptr && server->is_table()) {
    const toml::node* https = server->as_table()->get("listen_https");
    if (https != nullptr && !cfg.server.listen_https.empty() && !root.get("tls")) {
      fail(lineOf(*https), "server.listen_https", "needs a [tls] section with cert and key");
    }
  }

  if (!problems_.empty()) {
    std::stable_sort(problems_.begin(), problems_.end(),
                     [](const Problem& a, const Problem& b) { return a.line < b.line; });
    error.clear();
    for (const Problem& p : problems_) {
      if (!error.empty()) error += '\n';
      error += p.text;
    }
    return false;
  }

  for (const RouteConfig& r : cfg.routes) cfg.rate_limit.any_route_rate = cfg.rate_limit.any_route_rate || r.rate.set;
  if (cfg.server.workers == 0) cfg.server.workers = usableCpus();
  out = std::move(cfg);
  error.clear();
  return true;
}

}  // namespace

bool loadConfigFromString(std::string_view text, const std::string& source_name, Config& out, std::string& error) {
  return Loader(source_name).load(text, out, error);
}

bool loadConfig(const std::string& path, Config& out, std::string& error) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    error = path + ": cannot read: " + errnoMessage(errno);
    return false;
  }
  std::string text;
  char buf[16384];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  bool read_failed = std::ferror(f) != 0;
  int read_errno = errno;
  (void)std::fclose(f);  // opened for reading: closing cannot lose data
  if (read_failed) {
    error = path + ": cannot read: " + errnoMessage(read_errno);
    return false;
  }
  return loadConfigFromString(text, path, out, error);
}

}  // namespace portcullis
