// Token check + RBAC decision per request (issue 4 target: <= 300 ns with
// 10,000 tokens and 50 roles). The full benchmark does exactly what the token
// check filter will do per request: parse the Authorization value, SHA-256 the
// secret, look the id up in the immutable table, compare hashes in constant
// time, check revoked/expired/inactive, then decide RBAC with the token's
// pre-resolved role indices. Requests cycle through all 10,000 tokens so the
// table is not hot in L1 for one entry.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "filters/rbac.h"
#include "proxy/token.h"
#include "proxy/token_store.h"

namespace portcullis {
namespace {

constexpr int kTokens = 10000;
constexpr int kRoles = 50;

struct Fixture {
  std::shared_ptr<const TokenTable> table;
  std::shared_ptr<const RbacPolicy> policy;
  std::vector<std::vector<int32_t>> role_ids;  // by token table index
  std::vector<std::string> headers;            // "Bearer pct_..."
  std::vector<std::string> paths;              // an allowed path per token
  int64_t now = 0;

  Fixture() {
    std::vector<RbacRoleConfig> roles;
    for (int i = 0; i < kRoles; ++i) {
      std::string n = std::to_string(i);
      roles.push_back({"role" + n,
                       {"GET /v1/reports/" + n + "/*", "HEAD /v1/reports/" + n + "/*",
                        "POST /v1/accounts/{account}/uploads", "GET /v1/accounts/{account}/uploads/*"}});
    }
    std::string error;
    policy = RbacPolicy::build(roles, error);
    if (!policy) {
      std::fprintf(stderr, "rbac: %s\n", error.c_str());
      std::abort();
    }
    now = unixNow();
    std::vector<TokenRecord> records;
    for (int i = 0; i < kTokens; ++i) {
      GeneratedToken g;
      if (!generateToken(g)) std::abort();
      TokenRecord r;
      r.id = g.id;
      r.secret_sha256 = g.hash;
      r.account = "acct" + std::to_string(i % 997);
      r.roles = {"role" + std::to_string(i % kRoles), "role" + std::to_string((i * 7 + 3) % kRoles)};
      r.created = now - 86400;
      r.expires = now + 90 * 86400;
      records.push_back(r);
      headers.push_back("Bearer " + g.token);
      paths.push_back("/v1/accounts/" + r.account + "/uploads/file-" + std::to_string(i) + ".csv");
    }
    table = TokenTable::build(std::move(records), error);
    if (!table) {
      std::fprintf(stderr, "table: %s\n", error.c_str());
      std::abort();
    }
    for (const TokenRecord& r : table->records()) role_ids.push_back(policy->resolveRoles(r.roles));
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

void BM_TokenCheckAndRbac(benchmark::State& state) {
  Fixture& f = fixture();
  size_t i = 0;
  int64_t allowed = 0;
  for (auto _ : state) {
    const std::string& header = f.headers[i];
    ParsedToken t;
    if (parseAuthorization(header, t) != TokenError::kOk) std::abort();
    int32_t idx = f.table->indexOf(t.id);
    if (idx < 0) std::abort();
    const TokenRecord& rec = f.table->records()[static_cast<size_t>(idx)];
    TokenVerdict v = TokenTable::checkRecord(rec, hashSecret(t.secret), f.now, f.now - 60, 90 * 86400);
    if (v != TokenVerdict::kOk) std::abort();
    bool ok = f.policy->allowed(f.role_ids[static_cast<size_t>(idx)], "GET", f.paths[i], rec.account);
    allowed += ok;
    if (++i == f.headers.size()) i = 0;
  }
  benchmark::DoNotOptimize(allowed);
  if (allowed != static_cast<int64_t>(state.iterations())) state.SkipWithError("unexpected deny");
}
BENCHMARK(BM_TokenCheckAndRbac);

// The same, for a request RBAC refuses (every pattern of both roles is tried).
void BM_TokenCheckAndRbacDenied(benchmark::State& state) {
  Fixture& f = fixture();
  size_t i = 0;
  int64_t allowed = 0;
  for (auto _ : state) {
    ParsedToken t;
    if (parseAuthorization(f.headers[i], t) != TokenError::kOk) std::abort();
    const TokenRecord* rec = nullptr;
    TokenVerdict v = f.table->check(t.id, hashSecret(t.secret), f.now, f.now - 60, 90 * 86400, &rec);
    if (v != TokenVerdict::kOk) std::abort();
    allowed += f.policy->allowed(f.role_ids[static_cast<size_t>(f.table->indexOf(t.id))], "DELETE",
                                 "/v1/accounts/other/uploads/x", rec->account);
    if (++i == f.headers.size()) i = 0;
  }
  benchmark::DoNotOptimize(allowed);
}
BENCHMARK(BM_TokenCheckAndRbacDenied);

void BM_ParseAuthorization(benchmark::State& state) {
  Fixture& f = fixture();
  size_t i = 0;
  for (auto _ : state) {
    ParsedToken t;
    benchmark::DoNotOptimize(parseAuthorization(f.headers[i], t));
    benchmark::DoNotOptimize(t);
    if (++i == f.headers.size()) i = 0;
  }
}
BENCHMARK(BM_ParseAuthorization);

void BM_HashSecret(benchmark::State& state) {
  TokenSecret s{};
  for (auto _ : state) {
    SecretHash h = hashSecret(s);
    benchmark::DoNotOptimize(h);
    s[0]++;
  }
}
BENCHMARK(BM_HashSecret);

void BM_Lookup10k(benchmark::State& state) {
  Fixture& f = fixture();
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(f.table->find(f.table->records()[i].id));
    if (++i == f.table->size()) i = 0;
  }
}
BENCHMARK(BM_Lookup10k);

void BM_RbacAllowed(benchmark::State& state) {
  Fixture& f = fixture();
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(f.policy->allowed(f.role_ids[i], "GET", f.paths[i], f.table->records()[i].account));
    if (++i == f.table->size()) i = 0;
  }
}
BENCHMARK(BM_RbacAllowed);

}  // namespace
}  // namespace portcullis

BENCHMARK_MAIN();
