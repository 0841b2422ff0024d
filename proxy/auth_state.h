// What the token check needs, built with each config snapshot: the token
// table, the compiled roles, each token's resolved roles, and the last-use
// table shared by all workers.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "filters/rbac.h"
#include "proxy/config.h"
#include "proxy/token_store.h"

namespace portcullis {

// Last use per token (Unix seconds), written by workers on each successful
// check with a relaxed store (only when the second changed, so a busy token
// does not keep a cache line bouncing) and read by the flusher.
class LastUseTable {
 public:
  explicit LastUseTable(size_t n) : n_(n), v_(new std::atomic<int64_t>[n]) {
    for (size_t i = 0; i < n; ++i) v_[i].store(0, std::memory_order_relaxed);
  }
  void record(int32_t i, int64_t now) {
    std::atomic<int64_t>& a = v_[static_cast<size_t>(i)];
    if (a.load(std::memory_order_relaxed) < now) a.store(now, std::memory_order_relaxed);
  }
  int64_t get(int32_t i) const { return v_[static_cast<size_t>(i)].load(std::memory_order_relaxed); }
  size_t size() const { return n_; }

 private:
  size_t n_;
  std::unique_ptr<std::atomic<int64_t>[]> v_;
};

struct AuthState {
  std::shared_ptr<const TokenTable> tokens;
  std::shared_ptr<const RbacPolicy> rbac;
  std::vector<std::vector<int32_t>> token_roles;  // per token index
  std::vector<std::string> token_roles_header;    // per token index: "a,b"
  std::shared_ptr<LastUseTable> last_use;         // per token index
  // Per token index: its rate limit (the most generous `rate` of its roles,
  // else rate_limit.token); `set` false = no token limit.
  std::vector<RateSpec> token_rate;
  // Its RateLimit-Policy value ("token";q=..;w=..), empty when not set.
  std::vector<std::string> token_rate_policy;
  int64_t inactive_expiry_s = 0;
  std::string account_header;

  // id -> last use, for the state file.
  std::unordered_map<std::string, int64_t> lastUseById() const;
};

// Loads the token store named by config.auth and compiles the roles. Last-use
// values are carried over from `previous` (a reload) and from `seed` (the
// state file read at start), whichever is newer. Null with `error` on failure.
std::shared_ptr<const AuthState> buildAuthState(const Config& config, const AuthState* previous,
                                                const std::unordered_map<std::string, int64_t>& seed,
                                                std::string& error);

// Tokens the proxy revoked itself (https.revoke_tokens_seen_in_plaintext),
// by id. They are refused in memory from the moment the main thread hears of
// them until the store revokes them itself, so a store that cannot be
// written (read-only mount, lock file in the way) or read back (replaced by
// a broken file) holds no revocation back; the server keeps them in
// <state_dir>/token_revoked_here.tsv across restarts.
struct InMemoryRevocation {
  bool written = false;  // the store write succeeded (else it is retried)
  int64_t since = 0;     // Unix seconds
};
using InMemoryRevocations = std::map<std::string, InMemoryRevocation>;

// `a` with every token of `revoked` marked revoked: a copy sharing `a`'s
// last-use table (token indices do not change), or null when none needed
// marking. With `from_store`, `a` was just read from the store: ids it
// revokes itself are dropped from `revoked`. Ids it does not have are kept
// (a store put in place in two steps, or a SIGHUP naming another store and
// then this one again, must not end the refusal): the set grows only with
// exposures of working tokens, and the refusal is by id, so a token
// rotated at the store's source stays refused until its id is revoked.
std::shared_ptr<const AuthState> withInMemoryRevocations(const AuthState& a, InMemoryRevocations& revoked,
                                                         bool from_store);

}  // namespace portcullis
