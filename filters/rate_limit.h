// Rate limiting at the edge (SPEC §3 [rate_limit], [[role]] rate, §5), over
// the one lock-free table shared by all workers (filters/rate_limiter.h).
//
// Two places in the chain:
// - RateLimitIpFactory runs first, before authentication: an IP (IPv6 by
//   /64) banned by the brute-force lockout gets 429 even with a valid token;
//   past rate_limit.ip it gets 429. When the request ends in a 401 from the
//   token check, the failure is counted; failure max+1 within window_s bans
//   the IP for ban_s (logged once per ban).
// - RateLimitTokenFactory runs after the token check: the token's limit is
//   the most generous `rate` of its roles, else rate_limit.token.
// A 429 carries Retry-After (whole seconds, never early) and the IETF
// RateLimit-Policy / RateLimit fields of the refusing policy; allowed
// responses carry RateLimit and RateLimit-Policy too: one line each, a
// structured-field list with a member per applied policy in chain order
// (`RateLimit: "ip";r=99;t=1, "token";r=9;t=1`).
#pragma once

#include <cstdint>
#include <vector>

#include "filters/filter.h"
#include "filters/rate_limiter.h"

namespace portcullis {

struct Config;

// Factories are built with the snapshot's config and precompute what is
// constant for it (policy header values, route key hashes), so a request
// formats only its own RateLimit value.
class RateLimitIpFactory : public FilterFactory {
 public:
  explicit RateLimitIpFactory(const Config& config);
  std::string_view name() const override { return "rate_limit"; }
  Filter* create(RequestContext& ctx) const override;

 private:
  HeaderValue ip_policy_{};  // "ip";q=..;w=.. when rate_limit.ip is set
};

class RateLimitTokenFactory : public FilterFactory {
 public:
  std::string_view name() const override { return "rate_limit"; }
  Filter* create(RequestContext& ctx) const override;
};

// Per-route limit (`[[route]] rate = { rps, burst }`): per client of the
// route, keyed by its token when authenticated, else by its IP key. After
// the token limit in the chain.
// Per route of the config (same index): the key prefix and policy value.
struct RouteRateInfo {
  uint64_t prefix_hash = 0;  // XXH3-64 of the route prefix
  HeaderValue policy{};      // "route";q=..;w=.. when the route has `rate`
};

class RateLimitRouteFactory : public FilterFactory {
 public:
  explicit RateLimitRouteFactory(const Config& config);
  std::string_view name() const override { return "rate_limit"; }
  Filter* create(RequestContext& ctx) const override;

 private:
  std::vector<RouteRateInfo> routes_;
};

}  // namespace portcullis
