// The token store (SPEC §4): a TOML file of token records, its immutable
// in-memory lookup table, its single locked writer, and the last-use state file.
//
// File format (`auth.token_store`, mode 0600 or stricter, owned by whoever runs
// portcullisctl / the proxy):
//
//     # Portcullis token store. Holds no secrets, only their SHA-256.
//     [[token]]
//     id = "k3j5x7q2m4n6"                  # 12 chars a-z2-7
//     secret_sha256 = "<64 lowercase hex>" # SHA-256 of the 32 raw secret bytes
//     account = "ACME"                     # [A-Za-z0-9._-], 1..64, starts alphanumeric
//     roles = ["uploader", "reader"]       # same charset as accounts; may be empty
//     created = 2026-12-04T17:00:00Z       # TOML offset date-times (RFC 3339), written in UTC
//     expires = 2027-03-04T17:00:00Z
//     revoked = false
//     label = "ci runner"                  # optional, printable ASCII, <= 128 chars
//     previous_sha256 = "<64 hex>"         # optional, both or neither: the secret
//     previous_until = 2026-12-05T17:00:00Z # replaced by the last rotation stays valid until then
//
// Unknown keys, duplicate ids, a secret hash used twice (current or previous, in
// any token) and malformed values are errors; a store that fails validation is
// refused as a whole, so the caller keeps whatever table it had.
//
// Times are Unix seconds (int64) throughout. Nothing in this file logs.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "proxy/token.h"

namespace portcullis {

struct TokenRecord {
  std::string id;
  SecretHash secret_sha256;
  std::string account;
  std::vector<std::string> roles;
  int64_t created = 0;
  int64_t expires = 0;
  bool revoked = false;
  std::string label;
  bool has_previous = false;
  SecretHash previous_sha256;
  int64_t previous_until = 0;
};

// Names accepted for accounts and roles: 1..64 characters of [A-Za-z0-9._-],
// the first one alphanumeric (so "." and ".." can never be an account, which is
// substituted for {account} in paths).
bool isValidAccountName(std::string_view s);
bool isValidRoleName(std::string_view s);
// Labels: 0..128 printable ASCII characters (0x20..0x7e).
bool isValidLabel(std::string_view s);

// RFC 3339 UTC text, "2026-12-04T17:00:00Z".
std::string formatRfc3339(int64_t unix_seconds);

// The outcome of checking a presented credential. Only kOk admits a request.
enum class TokenVerdict : uint8_t {
  kOk = 0,
  kUnknown,     // no token with this id
  kBadSecret,   // the id exists but neither its secret nor a previous one matches
  kRevoked,
  kExpired,     // now >= expires
  kInactive,    // unused (or, never used, since created) for longer than the inactivity limit
  kRotatedOut,  // the previous secret of a rotated token, presented at or after previous_until
};
// "ok", "unknown_token", "bad_secret", "revoked", "expired", "inactive", "rotated_out".
const char* tokenVerdictName(TokenVerdict v);

// An immutable table of token records, looked up by id. Built once, then only
// read, from any number of threads. Lookup packs the id into 60 bits and probes
// an open-addressing table of (key, index) pairs: no string hashing, no
// allocation, one or two cache lines for a hit.
class TokenTable {
 public:
  // Validates `records` (see the file comment) and builds the table. On failure
  // returns null and describes every problem in `error` (one per line).
  static std::shared_ptr<const TokenTable> build(std::vector<TokenRecord> records, std::string& error);

  // The record with this id, or null (also for any id of the wrong shape).
  const TokenRecord* find(std::string_view id) const;
  // Index of the record in records(), or -1. Stable for the table's lifetime, so
  // callers can keep per-token side tables (e.g. last use) indexed by it.
  int32_t indexOf(std::string_view id) const;

  // Checks a presented credential. The secret hash is compared in constant time
  // against the current hash and, if the token has one, the previous hash (both
  // comparisons always run). Order: unknown id, then secret, and only for a
  // matching secret: revoked, expired, rotated-out, inactive — so nobody
  // without the secret learns a token's state.
  //   now, last_use: Unix seconds; last_use <= 0 means never used.
  //   inactive_expiry_s: 0 disables the inactivity check.
  // `record` (optional) receives the record when the id is known.
  TokenVerdict check(std::string_view id, const SecretHash& presented, int64_t now, int64_t last_use,
                     int64_t inactive_expiry_s, const TokenRecord** record = nullptr) const;
  // The same check against an already found record.
  static TokenVerdict checkRecord(const TokenRecord& r, const SecretHash& presented, int64_t now, int64_t last_use,
                                  int64_t inactive_expiry_s);

  const std::vector<TokenRecord>& records() const { return records_; }
  size_t size() const { return records_.size(); }

 private:
  struct Slot {
    uint64_t key = 0;  // packed id + 1; 0 = empty
    int32_t index = -1;
  };
  std::vector<TokenRecord> records_;
  std::vector<Slot> slots_;
  uint64_t mask_ = 0;
};

// Parses store text. `name` (usually the path) prefixes error messages, which
// name the line and key like config errors do. Returns false and sets `error`
// on any problem; does not check duplicates (TokenTable::build does).
bool parseTokenStore(std::string_view text, const std::string& name, std::vector<TokenRecord>& out,
                     std::string& error);
// The store text for `records`, in their order. Deterministic.
std::string serializeTokenStore(const std::vector<TokenRecord>& records);

// Reads the store at `path`: refuses anything but a regular file of mode 0600 or
// stricter (no group/other bits), then parses and builds the table.
std::shared_ptr<const TokenTable> loadTokenStore(const std::string& path, std::string& error);

// --- The writer ------------------------------------------------------------
//
// Every change goes through updateTokenStore(): it takes an exclusive flock on
// the sibling lock file `<path>.lock` (created 0600, left in place), reads the
// current store (a missing store is an empty one and will be created), lets
// `mutate` change the records, validates the result with TokenTable::build, writes
// it to a temporary file in the same directory (mode 0600), fsyncs it, renames
// it over the store and fsyncs the directory. Concurrent writers (threads or
// processes) are serialised by the lock, and readers only ever see a complete
// old or new file. `mutate` returns false (with `error` set) to abandon the
// change; the file is then left untouched.
template <class F>
bool updateTokenStore(const std::string& path, F&& mutate, std::string& error, int lock_timeout_ms = -1);
// lock_timeout_ms >= 0: give up (false) when the writers' lock is not had
// within about that long, instead of waiting for it (FileLock::lock).
bool updateTokenStoreFn(const std::string& path, bool (*mutate)(std::vector<TokenRecord>&, void*, std::string&),
                        void* arg, std::string& error, int lock_timeout_ms = -1);

struct IssueRequest {
  std::string account;
  std::vector<std::string> roles;
  int64_t ttl_s = 90 * 86400;
  std::string label;
  int64_t now = 0;  // 0 = current time
};

// Issues a new token: fresh id (re-drawn on the astronomically unlikely
// collision) and secret from the CSPRNG. On success `out` holds the token, which
// the caller prints once; the store receives only its hash.
bool issueToken(const std::string& path, const IssueRequest& req, GeneratedToken& out, std::string& error);
// Marks a token revoked. Revoking a revoked token succeeds and sets
// `already_revoked`. An unknown id is an error. lock_timeout_ms: as for
// updateTokenStoreFn (the proxy never waits on another writer for long).
bool revokeToken(const std::string& path, std::string_view id, std::string& error,
                 bool* already_revoked = nullptr, int lock_timeout_ms = -1);
// How long the proxy's own store writes wait for another writer's lock.
inline constexpr int kProxyStoreLockWaitMs = 1000;
// Gives the token a new secret; the old hash becomes previous_sha256, valid until
// now + grace_s (grace 0: the old secret stops at once). Refuses a revoked or
// expired token. `out.id` is the unchanged id, `out.token` the new token.
bool rotateToken(const std::string& path, std::string_view id, int64_t grace_s, GeneratedToken& out,
                 std::string& error, int64_t now = 0);

// --- Last-use state ---------------------------------------------------------
//
// `<state_dir>/token_last_use.tsv`: one line per token, "<id>\t<unix seconds>\n",
// written whole to a temporary file (0600) and renamed into place. A missing file
// means no recorded use. Lines starting with '#' are comments.
std::string lastUsePath(const std::string& state_dir);
// Reads the file. A missing file is success with an empty map; a malformed line
// is an error naming its line number.
bool readLastUse(const std::string& path, std::unordered_map<std::string, int64_t>& out, std::string& error);
bool writeLastUse(const std::string& path, const std::unordered_map<std::string, int64_t>& values,
                  std::string& error);

// `<state_dir>/token_revoked_here.tsv`: tokens the proxy revoked itself
// (https.revoke_tokens_seen_in_plaintext) that the store has not taken yet,
// "<id>\t<unix seconds>\n" as for last use, read and written the same way;
// so a restart keeps refusing them (auth_state.h InMemoryRevocations).
std::string revokedHerePath(const std::string& state_dir);
// Unlike readLastUse, a malformed line does not cost the others: the good
// lines are in `out` even when it returns false (`error` names the bad ones).
bool readRevokedHere(const std::string& path, std::unordered_map<std::string, int64_t>& out, std::string& error);
bool writeRevokedHere(const std::string& path, const std::unordered_map<std::string, int64_t>& values,
                      std::string& error);

int64_t unixNow();

// --- implementation of the template ------------------------------------------
namespace token_store_detail {
template <class F>
bool thunk(std::vector<TokenRecord>& records, void* arg, std::string& error) {
  return (*static_cast<F*>(arg))(records, error);
}
}  // namespace token_store_detail

template <class F>
bool updateTokenStore(const std::string& path, F&& mutate, std::string& error, int lock_timeout_ms) {
  using Fn = std::remove_reference_t<F>;
  return updateTokenStoreFn(path, &token_store_detail::thunk<Fn>, const_cast<void*>(static_cast<const void*>(&mutate)),
                            error, lock_timeout_ms);
}

}  // namespace portcullis
