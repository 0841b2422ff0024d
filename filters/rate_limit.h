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
// RateLimit-Policy / RateLimit fields; allowed responses carry RateLimit and
// RateLimit-Policy too, one line per applied policy ("ip", "token").
#pragma once

#include "filters/filter.h"

namespace portcullis {

class RateLimitIpFactory : public FilterFactory {
 public:
  std::string_view name() const override { return "rate_limit"; }
  Filter* create(RequestContext& ctx) const override;
};

class RateLimitTokenFactory : public FilterFactory {
 public:
  std::string_view name() const override { return "rate_limit"; }
  Filter* create(RequestContext& ctx) const override;
};

// Per-route limit (`[[route]] rate = { rps, burst }`): per client of the
// route, keyed by its token when authenticated, else by its IP key. After
// the token limit in the chain.
class RateLimitRouteFactory : public FilterFactory {
 public:
  std::string_view name() const override { return "rate_limit"; }
  Filter* create(RequestContext& ctx) const override;
};

}  // namespace portcullis
