// portcullisctl token issue|revoke|rotate|list (SPEC §4).
//
// issue and rotate print the new token on stdout as one line and nowhere else;
// a human-readable note (id, account, expiry) goes to stderr. Nothing else this
// command prints contains a secret or a secret hash. Exit status: 0 done, 1 the
// operation failed (message on stderr), 2 usage error.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

#include "proxy/token.h"
#include "proxy/token_store.h"
#include "tools/ctl.h"

namespace portcullis::ctl {
namespace {

constexpr int64_t kMaxTtlSeconds = 3650LL * 86400;
constexpr int64_t kMaxGraceSeconds = 365LL * 86400;

void tokenUsage() {
  std::fprintf(stderr,
               "usage:\n"
               "  portcullisctl token issue  --store FILE --account ACCOUNT --role ROLE [--role ROLE]... [--ttl 90d] "
               "[--label TEXT]\n"
               "  portcullisctl token revoke --store FILE ID\n"
               "  portcullisctl token rotate --store FILE ID [--grace 24h]\n"
               "  portcullisctl token list   --store FILE [--state-dir DIR] [--inactive-days 90]\n"
               "durations: <n>s, <n>m, <n>h or <n>d\n");
}

// "30s", "15m", "12h", "90d" -> seconds. At most 9 digits.
bool parseDuration(const std::string& s, int64_t& out) {
  if (s.size() < 2 || s.size() > 10) return false;
  int64_t n = 0;
  for (size_t i = 0; i + 1 < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
    n = n * 10 + (s[i] - '0');
  }
  switch (s.back()) {
    case 's': out = n; return true;
    case 'm': out = n * 60; return true;
    case 'h': out = n * 3600; return true;
    case 'd': out = n * 86400; return true;
    default: return false;
  }
}

struct Parsed {
  std::unordered_map<std::string, std::vector<std::string>> opts;
  std::vector<std::string> positional;
};

// Splits "--name value" / "--name=value" options (all of which take a value)
// from positional arguments. Unknown options are an error.
bool parseArgs(const Args& args, size_t first, const std::vector<std::string>& known, Parsed& out) {
  for (size_t i = first; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.size() > 2 && a[0] == '-' && a[1] == '-') {
      std::string name = a.substr(2);
      std::string value;
      size_t eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name.resize(eq);
      } else {
        if (i + 1 >= args.size()) {
          std::fprintf(stderr, "portcullisctl token: --%s needs a value\n", name.c_str());
          return false;
        }
        value = args[++i];
      }
      bool ok = false;
      for (const std::string& k : known) ok = ok || k == name;
      if (!ok) {
        std::fprintf(stderr, "portcullisctl token: unknown option --%s\n", name.c_str());
        return false;
      }
      out.opts[name].push_back(value);
    } else if (a == "-h" || a == "--help") {
      return false;
    } else {
      out.positional.push_back(a);
    }
  }
  return true;
}

// The single value of an option given at most once; false (with a message) if
// it was repeated.
bool single(const Parsed& p, const char* name, std::string& out, bool required) {
  auto it = p.opts.find(name);
  if (it == p.opts.end()) {
    if (required) std::fprintf(stderr, "portcullisctl token: --%s is required\n", name);
    return !required;
  }
  if (it->second.size() != 1) {
    std::fprintf(stderr, "portcullisctl token: --%s given more than once\n", name);
    return false;
  }
  out = it->second[0];
  return true;
}

// Prints a new token's secret, its only copy, on stdout. Returns the exit
// status: 1 when stdout did not take it (a full disk behind a redirect), so a
// script does not mistake a lost secret for success.
int printSecret(const char* cmd, const GeneratedToken& tok) {
  std::fprintf(stdout, "%s\n", tok.token.c_str());
  if (std::fflush(stdout) != 0 || std::ferror(stdout) != 0) {
    std::fprintf(stderr, "portcullisctl token %s: writing the token to stdout failed; its secret is lost (id %s)\n",
                 cmd, tok.id.c_str());
    return 1;
  }
  return 0;
}

int runIssue(const Args& args) {
  Parsed p;
  if (!parseArgs(args, 1, {"store", "account", "role", "ttl", "label"}, p)) return tokenUsage(), 2;
  std::string store, ttl_text = "90d";
  IssueRequest req;
  if (!single(p, "store", store, true) || !single(p, "account", req.account, true) ||
      !single(p, "ttl", ttl_text, false) || !single(p, "label", req.label, false)) {
    return tokenUsage(), 2;
  }
  if (!p.positional.empty()) {
    std::fprintf(stderr, "portcullisctl token issue: unexpected argument\n");
    return 2;
  }
  auto roles = p.opts.find("role");
  if (roles == p.opts.end()) {
    std::fprintf(stderr, "portcullisctl token issue: at least one --role is required\n");
    return 2;
  }
  req.roles = roles->second;
  if (!parseDuration(ttl_text, req.ttl_s) || req.ttl_s <= 0 || req.ttl_s > kMaxTtlSeconds) {
    std::fprintf(stderr, "portcullisctl token issue: --ttl must be a duration like 30s, 15m, 12h or 90d (1s..3650d)\n");
    return 2;
  }
  req.now = unixNow();
  GeneratedToken tok;
  std::string error;
  if (!issueToken(store, req, tok, error)) {
    std::fprintf(stderr, "portcullisctl token issue: %s\n", error.c_str());
    return 1;
  }
  std::fprintf(stderr, "issued token %s for account %s, expires %s; it is shown once, below\n", tok.id.c_str(),
               req.account.c_str(), formatRfc3339(req.now + req.ttl_s).c_str());
  return printSecret("issue", tok);
}

int runRevoke(const Args& args) {
  Parsed p;
  if (!parseArgs(args, 1, {"store"}, p)) return tokenUsage(), 2;
  std::string store;
  if (!single(p, "store", store, true)) return tokenUsage(), 2;
  if (p.positional.size() != 1) {
    std::fprintf(stderr, "portcullisctl token revoke: exactly one token ID is required\n");
    return 2;
  }
  const std::string& id = p.positional[0];
  if (!isValidTokenId(id)) {
    std::fprintf(stderr, "portcullisctl token revoke: not a token id (12 characters of a-z2-7)\n");
    return 2;
  }
  bool already = false;
  std::string error;
  if (!revokeToken(store, id, error, &already)) {
    std::fprintf(stderr, "portcullisctl token revoke: %s\n", error.c_str());
    return 1;
  }
  std::fprintf(stderr, already ? "token %s was already revoked\n" : "revoked token %s\n", id.c_str());
  return 0;
}

int runRotate(const Args& args) {
  Parsed p;
  if (!parseArgs(args, 1, {"store", "grace"}, p)) return tokenUsage(), 2;
  std::string store, grace_text = "24h";
  if (!single(p, "store", store, true) || !single(p, "grace", grace_text, false)) return tokenUsage(), 2;
  if (p.positional.size() != 1) {
    std::fprintf(stderr, "portcullisctl token rotate: exactly one token ID is required\n");
    return 2;
  }
  const std::string& id = p.positional[0];
  if (!isValidTokenId(id)) {
    std::fprintf(stderr, "portcullisctl token rotate: not a token id (12 characters of a-z2-7)\n");
    return 2;
  }
  int64_t grace = 0;
  if (!parseDuration(grace_text, grace) || grace > kMaxGraceSeconds) {
    std::fprintf(stderr, "portcullisctl token rotate: --grace must be a duration like 0s, 15m, 24h (up to 365d)\n");
    return 2;
  }
  const int64_t now = unixNow();
  GeneratedToken tok;
  std::string error;
  if (!rotateToken(store, id, grace, tok, error, now)) {
    std::fprintf(stderr, "portcullisctl token rotate: %s\n", error.c_str());
    return 1;
  }
  std::fprintf(stderr, "rotated token %s; the previous secret stays valid until %s; the new token is shown once, below\n",
               id.c_str(), formatRfc3339(now + grace).c_str());
  return printSecret("rotate", tok);
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) {
    if (!s.empty()) s.push_back(',');
    s += x;
  }
  return s.empty() ? "-" : s;
}

int runList(const Args& args) {
  Parsed p;
  if (!parseArgs(args, 1, {"store", "state-dir", "inactive-days"}, p)) return tokenUsage(), 2;
  std::string store, state_dir, inactive_text;
  if (!single(p, "store", store, true) || !single(p, "state-dir", state_dir, false) ||
      !single(p, "inactive-days", inactive_text, false)) {
    return tokenUsage(), 2;
  }
  if (!p.positional.empty()) {
    std::fprintf(stderr, "portcullisctl token list: unexpected argument\n");
    return 2;
  }
  int64_t inactive_days = 90;  // SPEC §3 default of auth.inactive_expiry_days
  if (!inactive_text.empty()) {
    char* end = nullptr;
    long long v = std::strtoll(inactive_text.c_str(), &end, 10);
    if (!end || *end || v < 0 || v > 36500) {
      std::fprintf(stderr, "portcullisctl token list: --inactive-days must be 0..36500\n");
      return 2;
    }
    inactive_days = v;
  }
  std::string error;
  auto table = loadTokenStore(store, error);
  if (!table) {
    std::fprintf(stderr, "portcullisctl token list: %s\n", error.c_str());
    return 1;
  }
  std::unordered_map<std::string, int64_t> last_use;
  bool have_state = !state_dir.empty();
  if (have_state && !readLastUse(lastUsePath(state_dir), last_use, error)) {
    std::fprintf(stderr, "portcullisctl token list: %s\n", error.c_str());
    return 1;
  }
  const int64_t now = unixNow();
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"ID", "ACCOUNT", "ROLES", "CREATED", "EXPIRES", "LAST_USE", "STATE", "LABEL"});
  for (const TokenRecord& r : table->records()) {
    auto lu = last_use.find(r.id);
    int64_t used = lu == last_use.end() ? 0 : lu->second;
    std::string last = !have_state ? "?" : used > 0 ? formatRfc3339(used) : "never";
    std::string state;
    if (r.revoked) {
      state = "revoked";
    } else if (now >= r.expires) {
      state = "expired";
    } else if (have_state && inactive_days > 0 && now - (used > r.created ? used : r.created) > inactive_days * 86400) {
      state = "inactive";
    } else if (r.has_previous && now < r.previous_until) {
      state = "rotating";  // active; the previous secret is still accepted
    } else {
      state = "active";
    }
    rows.push_back({r.id, r.account, join(r.roles), formatRfc3339(r.created), formatRfc3339(r.expires), last, state,
                    r.label.empty() ? "-" : r.label});
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line.append(width[i] - row[i].size() + 2, ' ');
    }
    std::fprintf(stdout, "%s\n", line.c_str());
  }
  return 0;
}

int runToken(const Args& args) {
  if (args.empty()) {
    tokenUsage();
    return 2;
  }
  const std::string& sub = args[0];
  if (sub == "issue") return runIssue(args);
  if (sub == "revoke") return runRevoke(args);
  if (sub == "rotate") return runRotate(args);
  if (sub == "list") return runList(args);
  if (sub == "-h" || sub == "--help" || sub == "help") {
    tokenUsage();
    return 0;
  }
  std::fprintf(stderr, "portcullisctl token: unknown subcommand '%s'\n", sub.c_str());
  tokenUsage();
  return 2;
}

const CommandRegistration kRegisterToken("token", &runToken);

}  // namespace
}  // namespace portcullis::ctl
