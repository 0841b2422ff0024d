// An immutable view of everything a request needs that can change on reload:
// the config, the routing table, the filter chain and shared upstream health.
// Built and validated by the main thread, then published to each worker; a
// request keeps the snapshot it started with until it completes.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "filters/filter_chain.h"
#include "proxy/cidr.h"
#include "proxy/config.h"

namespace portcullis {

// Health state of every upstream server, written by the health checker on the
// main thread and read by workers without locks. Survives reloads: entries
// are keyed by "upstream/host:port" and only ever added.
class HealthTable {
 public:
  struct Entry {
    std::string key;
    std::atomic<bool> healthy{true};
  };
  // Main thread only. Returns a stable pointer.
  Entry* entryFor(const std::string& key);
  std::vector<std::pair<std::string, bool>> list() const;

 private:
  std::vector<std::unique_ptr<Entry>> entries_;
};

class RouteLabels;
class TlsContext;
class UpstreamTlsContext;
struct AuthState;
class RateLimiter;
class AuditLog;
class Detector;
class KeyProvider;

struct Snapshot {
  std::shared_ptr<const Config> config;
  uint64_t generation = 0;
  FilterFactoryList filters;
  // Certificate and policy for new HTTPS connections (null without [tls]).
  std::shared_ptr<const TlsContext> tls;
  // Per upstream (config order): its client TLS context, null when tls = false.
  std::vector<std::shared_ptr<const UpstreamTlsContext>> upstream_tls;
  // Tokens, roles and last use (null without [auth]).
  std::shared_ptr<const AuthState> auth;
  // The process-wide rate-limit table (owned by the server, outlives every
  // snapshot); null when [rate_limit] is not configured.
  RateLimiter* rate_limiter = nullptr;
  // The audit log and the detector (owned by the server, outlive every
  // snapshot); null when off. `keys` is the [encryption] keyring (null without).
  AuditLog* audit = nullptr;
  Detector* detector = nullptr;
  std::shared_ptr<const KeyProvider> keys;
  // Call (any thread) once the proxy tried to revoke token `id` in the store
  // itself; `written` says whether the store took it. The main thread then
  // refuses the token in memory in every worker at once, re-reads a store
  // that was written (whatever auth.watch says), and retries a failed write
  // every second (auth_state.h InMemoryRevocations). Empty when no server
  // runs the snapshot (unit tests).
  std::function<void(const std::string& id, bool written)> token_revoked;
  // https.trusted_proxies, parsed; and the Strict-Transport-Security value
  // every HTTPS response carries (empty when hsts_max_age_s = 0).
  std::vector<Cidr> trusted_proxies;
  std::string hsts;
  // Routes sorted by prefix length, longest first (longest prefix wins).
  std::vector<const RouteConfig*> routes;
  std::vector<size_t> route_labels;  // metrics label id per config route index
  // Per upstream (config order), per server: its health entry.
  std::vector<std::vector<HealthTable::Entry*>> health;

  // Returns the route whose prefix is the longest prefix of `path`, or null.
  const RouteConfig* match(std::string_view path) const;
  size_t routeIndex(const RouteConfig* r) const { return static_cast<size_t>(r - config->routes.data()); }
};

// A worker's record of one snapshot and how many of its requests use it.
// Requests pin through this (a plain counter on the worker's thread) instead
// of copying the shared_ptr, whose atomic count would bounce between cores.
struct SnapshotPin {
  std::shared_ptr<const Snapshot> snap;
  uint32_t users = 0;
};

// Builds a snapshot from a loaded config (routing table, health entries,
// metric labels) and the given filter factories.
std::shared_ptr<const Snapshot> buildSnapshot(const std::shared_ptr<const Config>& config, FilterFactoryList filters,
                                              HealthTable& health, RouteLabels& labels, uint64_t generation);

}  // namespace portcullis
