#include "filters/rate_limit.h"

#include <time.h>
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

uint64_t monotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

Limit toLimit(const RateSpec& r) { return Limit{r.rps, r.burst}; }

// Sets the 429 reply with Retry-After and the RateLimit fields of `policy`.
FilterStatus limited(RequestContext& ctx, std::string_view policy, const Limit* limit, const Decision* d,
                     uint64_t retry_after_ns, std::string_view reason) {
  ctx.respond(429, "rate_limited", "rate_limit", reason);
  char secs[24];
  (void)std::snprintf(secs, sizeof(secs), "%llu", static_cast<unsigned long long>(retryAfterSeconds(retry_after_ns)));
  ctx.local_reply.headers.push_back({"Retry-After", ctx.arena().copy(secs)});
  if (limit != nullptr && d != nullptr) {
    ctx.local_reply.headers.push_back(
        {"RateLimit-Policy", ctx.arena().copy(rateLimitPolicyHeader(policy, *limit).view())});
    ctx.local_reply.headers.push_back({"RateLimit", ctx.arena().copy(rateLimitHeader(policy, *d).view())});
  }
  return FilterStatus::kRespond;
}

class RateLimitIp final : public Filter {
 public:
  RateLimitIp(RateLimiter* table, const RateLimitConfig* cfg) : table_(table), cfg_(cfg) {}

  FilterStatus onRequestHead(RequestContext& ctx, RequestHead&) override {
    key_ = ipKey(ctx.remote_ip);
    const uint64_t now = monotonicNs();
    if (cfg_->auth_failures_set) {
      BanStatus ban = table_->checkBan(key_.view(), lockout(), now);
      if (ban.banned) return limited(ctx, "ip", nullptr, nullptr, ban.retry_after_ns, "ip banned after auth failures");
    }
    if (cfg_->ip.set) {
      limit_ = toLimit(cfg_->ip);
      decision_ = table_->decide(LimitKind::kIp, key_.view(), limit_, now);
      if (!decision_.allowed) {
        return limited(ctx, "ip", &limit_, &decision_, decision_.retry_after_ns, "ip rate");
      }
      ctx.rate_allowed |= 1u << static_cast<unsigned>(LimitKind::kIp);
      decided_ = true;
    }
    return FilterStatus::kContinue;
  }

  void onResponseHead(RequestContext& ctx, ResponseHead& head) override {
    if (!decided_) return;
    head.add("RateLimit-Policy", ctx.arena().copy(rateLimitPolicyHeader("ip", limit_).view()));
    head.add("RateLimit", ctx.arena().copy(rateLimitHeader("ip", decision_).view()));
  }

  void onComplete(const RequestContext& ctx) override {
    // Brute-force lockout counts the token check's refusals.
    if (!cfg_->auth_failures_set || ctx.local_reply.status != 401 || ctx.rejected_by != "token_check") return;
    BanStatus b = table_->recordAuthFailure(key_.view(), lockout(), monotonicNs());
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
  IpKey key_;
  Limit limit_;
  Decision decision_;
  bool decided_ = false;
};

class RateLimitToken final : public Filter {
 public:
  RateLimitToken(RateLimiter* table, const AuthState* auth) : table_(table), auth_(auth) {}

  FilterStatus onRequestHead(RequestContext& ctx, RequestHead&) override {
    if (ctx.token_id.empty() || auth_ == nullptr) return FilterStatus::kContinue;
    const int32_t idx = auth_->tokens->indexOf(ctx.token_id);
    if (idx < 0) return FilterStatus::kContinue;
    const RateSpec& r = auth_->token_rate[static_cast<size_t>(idx)];
    if (!r.set) return FilterStatus::kContinue;
    limit_ = toLimit(r);
    decision_ = table_->decide(LimitKind::kToken, ctx.token_id, limit_, monotonicNs());
    if (!decision_.allowed) return limited(ctx, "token", &limit_, &decision_, decision_.retry_after_ns, "token rate");
    ctx.rate_allowed |= 1u << static_cast<unsigned>(LimitKind::kToken);
    decided_ = true;
    return FilterStatus::kContinue;
  }

  void onResponseHead(RequestContext& ctx, ResponseHead& head) override {
    if (!decided_) return;
    head.add("RateLimit-Policy", ctx.arena().copy(rateLimitPolicyHeader("token", limit_).view()));
    head.add("RateLimit", ctx.arena().copy(rateLimitHeader("token", decision_).view()));
  }

 private:
  RateLimiter* table_;
  const AuthState* auth_;
  Limit limit_;
  Decision decision_;
  bool decided_ = false;
};

// Per route, per client: the token when the request carries one that passed
// the token check, else the client's IP key. Runs after the token limit.
class RateLimitRoute final : public Filter {
 public:
  // cppcheck-suppress uninitMemberVar ; key_ is scratch space, written before every read in onRequestHead
  explicit RateLimitRoute(RateLimiter* table) : table_(table) {}

  FilterStatus onRequestHead(RequestContext& ctx, RequestHead&) override {
    const RouteConfig& route = *ctx.route;
    limit_ = toLimit(route.rate);
    // Key, in a fixed buffer (no allocation): 8 bytes of XXH3 of the route
    // prefix, then 't' + token id or 'i' + the client's IP key.
    const uint64_t h = XXH3_64bits(route.prefix.data(), route.prefix.size());
    std::memcpy(key_, &h, 8);
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
    decision_ = table_->decide(LimitKind::kRoute, key, limit_, monotonicNs());
    if (!decision_.allowed) return limited(ctx, "route", &limit_, &decision_, decision_.retry_after_ns, "route rate");
    ctx.rate_allowed |= 1u << static_cast<unsigned>(LimitKind::kRoute);
    decided_ = true;
    return FilterStatus::kContinue;
  }

  void onResponseHead(RequestContext& ctx, ResponseHead& head) override {
    if (!decided_) return;
    head.add("RateLimit-Policy", ctx.arena().copy(rateLimitPolicyHeader("route", limit_).view()));
    head.add("RateLimit", ctx.arena().copy(rateLimitHeader("route", decision_).view()));
  }

 private:
  RateLimiter* table_;
  char key_[64];
  Limit limit_;
  Decision decision_;
  bool decided_ = false;
};

}  // namespace

Filter* RateLimitIpFactory::create(RequestContext& ctx) const {
  const Snapshot* s = ctx.snapshot;
  if (s == nullptr || s->rate_limiter == nullptr) return nullptr;
  const RateLimitConfig& c = s->config->rate_limit;
  if (!c.ip.set && !c.auth_failures_set) return nullptr;
  return ctx.arena().make<RateLimitIp>(s->rate_limiter, &c);
}

Filter* RateLimitRouteFactory::create(RequestContext& ctx) const {
  const Snapshot* s = ctx.snapshot;
  if (s == nullptr || s->rate_limiter == nullptr || ctx.route == nullptr || !ctx.route->rate.set) return nullptr;
  return ctx.arena().make<RateLimitRoute>(s->rate_limiter);
}

Filter* RateLimitTokenFactory::create(RequestContext& ctx) const {
  const Snapshot* s = ctx.snapshot;
  if (s == nullptr || s->rate_limiter == nullptr || !s->auth || ctx.route == nullptr || !ctx.route->auth) {
    return nullptr;
  }
  return ctx.arena().make<RateLimitToken>(s->rate_limiter, s->auth.get());
}

}  // namespace portcullis
