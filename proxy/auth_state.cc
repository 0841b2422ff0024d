#include "proxy/auth_state.h"

#include "filters/rate_limiter.h"

namespace portcullis {

std::unordered_map<std::string, int64_t> AuthState::lastUseById() const {
  std::unordered_map<std::string, int64_t> out;
  const auto& recs = tokens->records();
  for (size_t i = 0; i < recs.size(); ++i) {
    int64_t v = last_use->get(static_cast<int32_t>(i));
    if (v > 0) out[recs[i].id] = v;
  }
  return out;
}

std::shared_ptr<const AuthState> buildAuthState(const Config& config, const AuthState* previous,
                                                const std::unordered_map<std::string, int64_t>& seed,
                                                std::string& error) {
  auto a = std::make_shared<AuthState>();
  a->tokens = loadTokenStore(config.auth.token_store, error);
  if (!a->tokens) return nullptr;
  std::vector<RbacRoleConfig> roles;
  for (const RoleConfig& r : config.roles) roles.push_back({r.name, r.allow});
  a->rbac = RbacPolicy::build(roles, error);
  if (!a->rbac) return nullptr;
  const auto& recs = a->tokens->records();
  a->last_use = std::make_shared<LastUseTable>(recs.size());
  for (size_t i = 0; i < recs.size(); ++i) {
    a->token_roles.push_back(a->rbac->resolveRoles(recs[i].roles));
    std::string header;
    for (const std::string& r : recs[i].roles) {
      if (!header.empty()) header.push_back(',');
      header += r;
    }
    a->token_roles_header.push_back(std::move(header));
    RateSpec rate = config.rate_limit.token;
    bool from_role = false;
    for (const std::string& name : recs[i].roles) {
      for (const RoleConfig& rc : config.roles) {
        if (rc.name != name || !rc.has_rate) continue;
        const bool better = !from_role || rc.rps > rate.rps || (rc.rps == rate.rps && rc.burst > rate.burst);
        if (better) rate = RateSpec{true, rc.rps, rc.burst};
        from_role = true;
      }
    }
    a->token_rate.push_back(rate);
    a->token_rate_policy.emplace_back(
        rate.set ? rateLimitPolicyHeader("token", Limit{rate.rps, rate.burst}).view() : std::string_view());
    int64_t last = 0;
    if (auto it = seed.find(recs[i].id); it != seed.end()) last = it->second;
    if (previous != nullptr) {
      int32_t j = previous->tokens->indexOf(recs[i].id);
      if (j >= 0 && previous->last_use->get(j) > last) last = previous->last_use->get(j);
    }
    if (last > 0) a->last_use->record(static_cast<int32_t>(i), last);
  }
  a->inactive_expiry_s = static_cast<int64_t>(config.auth.inactive_expiry_days) * 86400;
  a->account_header = config.auth.account_header;
  return a;
}

std::shared_ptr<const AuthState> withInMemoryRevocations(const AuthState& a, InMemoryRevocations& revoked,
                                                         bool from_store) {
  const std::vector<TokenRecord>& recs = a.tokens->records();
  std::vector<int32_t> mark;
  for (auto it = revoked.begin(); it != revoked.end();) {
    const int32_t i = a.tokens->indexOf(it->first);
    if (i < 0) {  // not in this store: kept, in case a later one has it again
      ++it;
      continue;
    }
    if (!recs[static_cast<size_t>(i)].revoked) {
      mark.push_back(i);
    } else if (from_store) {
      it = revoked.erase(it);  // the store revokes it itself
      continue;
    }
    ++it;
  }
  if (mark.empty()) return nullptr;
  std::vector<TokenRecord> copy = recs;
  for (int32_t i : mark) copy[static_cast<size_t>(i)].revoked = true;
  std::string error;
  std::shared_ptr<const TokenTable> table = TokenTable::build(std::move(copy), error);
  if (!table) return nullptr;  // cannot happen: the records were valid and only a flag changed
  auto b = std::make_shared<AuthState>(a);
  b->tokens = std::move(table);
  return b;
}

}  // namespace portcullis
