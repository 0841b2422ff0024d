#include "filters/rate_limit.h"

#include <xxhash.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "filters/rate_limiter.h"
#include "proxy/audit_log.h"
#include "proxy/config.h"
#include "proxy/auth_state.h"
#include "proxy/detect.h"
#include "proxy/security_events.h"
#include "proxy/snapshot.h"

namespace portcullis {

namespace {

Limit toLimit(const RateSpec& r) { return Limit{r.rps, r.burst}; }

// Sets the 429 reply with Retry-After and the given RateLimit fields (SPEC §5).
FilterStatus limited(RequestContext& ctx, const HeaderValue& policy, const HeaderValue& value, uint64_t retry_after_ns,
                     std::string_view reason) {
  ctx.respond(429, "rate_limited", "rate_limit", reason);
  char secs[24];
  (void)std::snprintf(secs, sizeof(secs), "%llu", static_cast<unsigned long long>(retryAfterSeconds(retry_after_ns)));
  ctx.local_reply.headers.push_back({"Retry-After", ctx.arena().copy(secs)});
  ctx.local_reply.headers.push_back({"RateLimit-Policy", ctx.arena().copy(policy.view())});
  ctx.local_reply.headers.push_back({"RateLimit", ctx.arena().copy(value.view())});
  return FilterStatus::kRespond;
}

// The 429 of a denying decision of `policy`, with that policy's fields.
FilterStatus limited(RequestContext& ctx, std::string_view policy, const Limit& limit, const Decision& d,
                     std::string_view reason) {
  return limited(ctx, rateLimitPolicyHeader(policy, limit), rateLimitHeader(policy, d), d.retry_after_ns, reason);
}

// Records an allowing decision of `kind` for the response fields.
void noteAllowed(RequestContext& ctx, LimitKind kind, std::string_view policy, const Decision& d) {
  const auto k = static_cast<unsigned>(kind);
  ctx.rate_allowed |= static_cast<uint8_t>(1u << k);
  ctx.rate_notes[k] = RequestContext::RateNote{policy, d.remaining, d.reset_ns};
}

constexpr std::string_view kPolicyNames[3] = {"ip", "token", "route"};

// The response fields of every limit that allowed the request, one line
// each as a structured-field list in chain order:
//   RateLimit-Policy: "ip";q=100;w=1, "token";q=10;w=1
//   RateLimit: "ip";r=99;t=1, "token";r=9;t=1
// Each rate-limit filter calls it from onResponseHead; only the last one in
// the chain that allowed (the highest bit of rate_allowed: the bits follow
// chain order ip, token, route) writes, so the fields appear once. Values
// are built in the request arena, which outlives the serialized head.
void addRateLimitFields(RequestContext& ctx, LimitKind self, ResponseHead& head) {
  const unsigned bits = ctx.rate_allowed & 7u;
  if (bits == 0 || 31 - __builtin_clz(bits) != static_cast<int>(self)) return;
  size_t policy_len = 0;
  size_t n = 0;
  for (unsigned k = 0; k < 3; ++k) {
    if ((bits & (1u << k)) == 0) continue;
    policy_len += ctx.rate_notes[k].policy.size() + 2;
    ++n;
  }
  char* policy = static_cast<char*>(ctx.arena().allocate(policy_len, 1));
  char* value = static_cast<char*>(ctx.arena().allocate(n * (sizeof(HeaderValue::data) + 2), 1));
  size_t pl = 0;
  size_t vl = 0;
  for (unsigned k = 0; k < 3; ++k) {
    if ((bits & (1u << k)) == 0) continue;
    const RequestContext::RateNote& note = ctx.rate_notes[k];
    if (pl > 0) {
      policy[pl] = value[vl] = ',';
      policy[pl + 1] = value[vl + 1] = ' ';
      pl += 2;
      vl += 2;
    }
    std::memcpy(policy + pl, note.policy.data(), note.policy.size());
    pl += note.policy.size();
    Decision d;
    d.remaining = note.remaining;
    d.reset_ns = note.reset_ns;
    const HeaderValue v = rateLimitHeader(kPolicyNames[k], d);
    std::memcpy(value + vl, v.data, v.size);
    vl += v.size;
  }
  head.add("RateLimit-Policy", std::string_view(policy, pl));
  head.add("RateLimit", std::string_view(value, vl));
}

class RateLimitIp final : public Filter {
 public:
  RateLimitIp(RateLimiter* table, const RateLimitConfig* cfg, std::string_view policy)
      : table_(table), cfg_(cfg), policy_(policy) {}

  FilterStatus onRequestHead(RequestContext& ctx, RequestHead&) override {
    key_ = ipKey(ctx.remote_ip);
    const uint64_t now = ctx.start_ns;
    if (cfg_->auth_failures_set) {
      BanStatus ban = table_->checkBan(key_.view(), lockout(), now);
      if (ban.banned) {
        return limited(ctx, banPolicyHeader(lockout()), banHeader(ban.retry_after_ns), ban.retry_after_ns,
                       "ip banned after auth failures");
      }
    }
    if (cfg_->ip.set) {
      limit_ = toLimit(cfg_->ip);
      decision_ = table_->decide(LimitKind::kIp, key_.view(), limit_, now);
      if (!decision_.allowed) {
        return limited(ctx, "ip", limit_, decision_, "ip rate");
      }
      noteAllowed(ctx, LimitKind::kIp, policy_, decision_);
    }
    return FilterStatus::kContinue;
  }

  void onResponseHead(RequestContext& ctx, ResponseHead& head) override {
    addRateLimitFields(ctx, LimitKind::kIp, head);
  }

  void onComplete(const RequestContext& ctx) override {
    // Brute-force lockout counts the token check's refusals.
    if (!cfg_->auth_failures_set || ctx.local_reply.status != 401 || ctx.rejected_by != "token_check") return;
    BanStatus b = table_->recordAuthFailure(key_.view(), lockout(), ctx.start_ns);
    if (b.ban_started) {
      std::fprintf(stderr, "portcullis: ratelimit.ban ip=%.*s ban_s=%u (auth failures)\n",
                   static_cast<int>(ctx.remote_ip.size()), ctx.remote_ip.data(), cfg_->af_ban_s);
      // A ban is always an alert (SPEC §8), besides its own audit record.
      if (AuditLog* audit = ctx.snapshot->audit) {
        AuditFields f;
        f.str("ip", ctx.remote_ip).unum("ban_s", cfg_->af_ban_s).unum("failures", cfg_->af_max + 1);
        audit->record("ratelimit.ban", f.take());
      }
      if (Detector* d = ctx.snapshot->detector) d->ban(ctx.remote_ip, monotonicNowNs());
    }
  }

 private:
  AuthFailureLimit lockout() const { return AuthFailureLimit{cfg_->af_max, cfg_->af_window_s, cfg_->af_ban_s}; }
  RateLimiter* table_;
  const RateLimitConfig* cfg_;
  std::string_view policy_;  // RateLimit-Policy value of cfg_->ip, formatted once per snapshot
  IpKey key_;
  Limit limit_;
  Decision decision_;
};

class RateLimitToken final : public Filter {
 public:
  RateLimitToken(RateLimiter* table, const AuthState* auth) : table_(table), auth_(auth) {}

  // ctx.token_index is the token check's verdict in the same snapshot's
  // AuthState (auth_), so it indexes auth_'s per-token tables.
  FilterStatus onRequestHead(RequestContext& ctx, RequestHead&) override {
    if (ctx.token_index < 0 || auth_ == nullptr) return FilterStatus::kContinue;
    const auto idx = static_cast<size_t>(ctx.token_index);
    const RateSpec& r = auth_->token_rate[idx];
    if (!r.set) return FilterStatus::kContinue;
    policy_ = auth_->token_rate_policy[idx];
    limit_ = toLimit(r);
    decision_ = table_->decide(LimitKind::kToken, ctx.token_id, limit_, ctx.start_ns);
    if (!decision_.allowed) return limited(ctx, "token", limit_, decision_, "token rate");
    noteAllowed(ctx, LimitKind::kToken, policy_, decision_);
    return FilterStatus::kContinue;
  }

  void onResponseHead(RequestContext& ctx, ResponseHead& head) override {
    addRateLimitFields(ctx, LimitKind::kToken, head);
  }

 private:
  RateLimiter* table_;
  const AuthState* auth_;
  std::string_view policy_;
  Limit limit_;
  Decision decision_;
};

// Per route, per client: the token when the request carries one that passed
// the token check, else the client's IP key. Runs after the token limit.
class RateLimitRoute final : public Filter {
 public:
  // cppcheck-suppress uninitMemberVar ; key_ is scratch space, written before every read in onRequestHead
  RateLimitRoute(RateLimiter* table, const RouteRateInfo* info) : table_(table), info_(info) {}

  FilterStatus onRequestHead(RequestContext& ctx, RequestHead&) override {
    limit_ = toLimit(ctx.route->rate);
    // Key, in a fixed buffer (no allocation): 8 bytes of XXH3 of the route
    // prefix, then 't' + token id or 'i' + the client's IP key.
    std::memcpy(key_, &info_->prefix_hash, 8);
    std::string_view client = ctx.token_id;
    IpKey ip;
    if (client.empty()) {
      ip = ipKey(ctx.remote_ip);
      client = ip.view();
    }
    key_[8] = ctx.token_id.empty() ? 'i' : 't';
    client = client.substr(0, sizeof(key_) - 9);
    std::memcpy(key_ + 9, client.data(), client.size());
    const std::string_view key(key_, 9 + client.size());
    decision_ = table_->decide(LimitKind::kRoute, key, limit_, ctx.start_ns);
    if (!decision_.allowed) return limited(ctx, "route", limit_, decision_, "route rate");
    noteAllowed(ctx, LimitKind::kRoute, info_->policy.view(), decision_);
    return FilterStatus::kContinue;
  }

  void onResponseHead(RequestContext& ctx, ResponseHead& head) override {
    addRateLimitFields(ctx, LimitKind::kRoute, head);
  }

 private:
  RateLimiter* table_;
  const RouteRateInfo* info_;
  char key_[64];
  Limit limit_;
  Decision decision_;
};

}  // namespace

RateLimitIpFactory::RateLimitIpFactory(const Config& config) {
  if (config.rate_limit.ip.set) ip_policy_ = rateLimitPolicyHeader("ip", toLimit(config.rate_limit.ip));
}

Filter* RateLimitIpFactory::create(RequestContext& ctx) const {
  const Snapshot* s = ctx.snapshot;
  if (s == nullptr || s->rate_limiter == nullptr) return nullptr;
  const RateLimitConfig& c = s->config->rate_limit;
  if (!c.ip.set && !c.auth_failures_set) return nullptr;
  return ctx.arena().make<RateLimitIp>(s->rate_limiter, &c, ip_policy_.view());
}

RateLimitRouteFactory::RateLimitRouteFactory(const Config& config) {
  routes_.reserve(config.routes.size());
  for (const RouteConfig& r : config.routes) {
    RouteRateInfo info;
    info.prefix_hash = XXH3_64bits(r.prefix.data(), r.prefix.size());
    if (r.rate.set) info.policy = rateLimitPolicyHeader("route", toLimit(r.rate));
    routes_.push_back(info);
  }
}

Filter* RateLimitRouteFactory::create(RequestContext& ctx) const {
  const Snapshot* s = ctx.snapshot;
  if (s == nullptr || s->rate_limiter == nullptr || ctx.route == nullptr || !ctx.route->rate.set) return nullptr;
  // ctx.route points into the snapshot's config, the one this factory was
  // built from (both belong to the same snapshot).
  const size_t i = s->routeIndex(ctx.route);
  if (i >= routes_.size()) return nullptr;
  return ctx.arena().make<RateLimitRoute>(s->rate_limiter, &routes_[i]);
}

Filter* RateLimitTokenFactory::create(RequestContext& ctx) const {
  const Snapshot* s = ctx.snapshot;
  if (s == nullptr || s->rate_limiter == nullptr || !s->auth || ctx.route == nullptr || !ctx.route->auth) {
    return nullptr;
  }
  return ctx.arena().make<RateLimitToken>(s->rate_limiter, s->auth.get());
}

}  // namespace portcullis
