// Token store: parse, validate, look up, write. See token_store.h.
#include "proxy/toml_guard.h"
#include "proxy/token_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <unordered_set>

#include <toml++/toml.h>

#include "proxy/errno_message.h"
#include "proxy/file_lock.h"

namespace portcullis {

namespace {

bool isAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

bool isSafeName(std::string_view s) {
  if (s.empty() || s.size() > 64 || !isAlnum(s[0])) return false;
  for (char c : s) {
    if (!isAlnum(c) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
int64_t daysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

std::string errnoText(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + errnoMessage(errno);
}

bool readAll(int fd, std::string& out) {
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) return true;
    out.append(buf, static_cast<size_t>(n));
  }
}

bool writeAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

std::string dirOf(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Writes `data` to `path` atomically: temp file (0600) in the same directory,
// fsync, rename, fsync of the directory.
bool writeFileAtomic(const std::string& path, std::string_view data, std::string& error) {
  std::string tmpl = path + ".tmp.XXXXXX";
  int fd = ::mkostemp(tmpl.data(), O_CLOEXEC);
  if (fd < 0) {
    error = errnoText("cannot create temporary file for", path);
    return false;
  }
  bool ok = ::fchmod(fd, 0600) == 0 && writeAll(fd, data) && ::fsync(fd) == 0;
  if (!ok) error = errnoText("cannot write", tmpl);
  if (::close(fd) != 0 && ok) {
    ok = false;
    error = errnoText("cannot write", tmpl);
  }
  if (ok && ::rename(tmpl.c_str(), path.c_str()) != 0) {
    ok = false;
    error = errnoText("cannot rename temporary file onto", path);
  }
  if (!ok) {
    ::unlink(tmpl.c_str());
    return false;
  }
  int dfd = ::open(dirOf(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return true;
}

// Reads a file that must be a regular file with no group/other permission bits.
// `missing` is set (and true returned) when it does not exist.
bool readPrivateFile(const std::string& path, std::string& text, bool& missing, std::string& error) {
  missing = false;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT) {
      missing = true;
      return true;
    }
    error = errnoText("cannot open", path);
    return false;
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    error = errnoText("cannot stat", path);
    ::close(fd);
    return false;
  }
  if (!S_ISREG(st.st_mode)) {
    error = path + ": not a regular file";
    ::close(fd);
    return false;
  }
  if (st.st_mode & 077) {
    char mode[8];
    (void)std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));  // cannot truncate
    error = path + ": mode " + mode + " is too open; the token store must be 0600 or stricter (chmod 600)";
    ::close(fd);
    return false;
  }
  bool ok = readAll(fd, text);
  if (!ok) error = errnoText("cannot read", path);
  ::close(fd);
  return ok;
}

void appendTomlString(std::string& out, std::string_view s) {
  out.push_back('"');
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      (void)std::snprintf(buf, sizeof(buf), "\\u%04x", c);  // c < 0x80: 6 characters, cannot truncate
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  out.push_back('"');
}

uint64_t mix(uint64_t x) {
  x ^= x >> 31;
  x *= 0x7fb5d329728ea185ULL;
  x ^= x >> 27;
  x *= 0x81dadef4bc2dd44dULL;
  x ^= x >> 33;
  return x;
}

class StoreParser {
 public:
  explicit StoreParser(const std::string& name) : name_(name) {}

  bool parse(std::string_view text, std::vector<TokenRecord>& out, std::string& error) {
    if (uint32_t bad = firstNonAsciiLine(text)) {
      error = nonAsciiError(name_, bad);
      return false;
    }
    toml::parse_result parsed = toml::parse(text, name_);
    if (!parsed) {
      const toml::parse_error& e = parsed.error();
      error = name_ + ":" + std::to_string(e.source().begin.line) + ":" + std::to_string(e.source().begin.column) +
              ": " + std::string(e.description());
      return false;
    }
    const toml::table& root = parsed.table();
    for (const auto& [key, node] : root) {
      if (key.str() != "token") fail(lineOf(node), std::string(key.str()), "unknown key");
    }
    if (const toml::node* n = root.get("token")) {
      const toml::array* arr = n->as_array();
      if (!arr || !arr->is_array_of_tables()) {
        fail(lineOf(*n), "token", "expected an array of tables ([[token]])");
      } else {
        for (size_t i = 0; i < arr->size(); ++i) {
          TokenRecord r;
          if (loadRecord(*arr->get(i)->as_table(), "token[" + std::to_string(i) + "]", r)) out.push_back(std::move(r));
        }
      }
    }
    if (!problems_.empty()) {
      error = problems_;
      return false;
    }
    return true;
  }

 private:
  static uint32_t lineOf(const toml::node& n) {
    uint32_t line = n.source().begin.line;
    return line ? line : 1;
  }

  void fail(uint32_t line, const std::string& key, std::string_view what) {
    if (!problems_.empty()) problems_.push_back('\n');
    problems_ += name_ + ":" + std::to_string(line) + ": " + key + ": " + std::string(what);
  }

  const toml::node* need(const toml::table& t, std::string_view key, const std::string& path) {
    const toml::node* n = t.get(key);
    if (!n) fail(lineOf(t), path + "." + std::string(key), "missing");
    return n;
  }

  bool getString(const toml::table& t, std::string_view key, const std::string& path, std::string& out,
                 bool required) {
    const toml::node* n = required ? need(t, key, path) : t.get(key);
    if (!n) return false;
    const auto* v = n->as_string();
    if (!v) {
      fail(lineOf(*n), path + "." + std::string(key), "expected string");
      return false;
    }
    out = v->get();
    return true;
  }

  bool getHash(const toml::table& t, std::string_view key, const std::string& path, SecretHash& out, bool required) {
    std::string hex;
    if (!getString(t, key, path, hex, required)) return false;
    if (!secretHashFromHex(hex, out)) {
      fail(lineOf(*t.get(key)), path + "." + std::string(key), "expected 64 lowercase hex characters");
      return false;
    }
    return true;
  }

  bool getTime(const toml::table& t, std::string_view key, const std::string& path, int64_t& out, bool required) {
    const toml::node* n = required ? need(t, key, path) : t.get(key);
    if (!n) return false;
    const auto* v = n->as_date_time();
    if (!v || !v->get().offset) {
      fail(lineOf(*n), path + "." + std::string(key), "expected an RFC 3339 date-time with offset, e.g. 2026-12-04T17:00:00Z");
      return false;
    }
    const toml::date_time& dt = v->get();
    int64_t days = daysFromCivil(dt.date.year, dt.date.month, dt.date.day);
    out = days * 86400 + dt.time.hour * 3600 + dt.time.minute * 60 + dt.time.second - int64_t{dt.offset->minutes} * 60;
    return true;
  }

  bool loadRecord(const toml::table& t, const std::string& path, TokenRecord& r) {
    size_t before = problems_.size();
    static constexpr std::string_view kKnown[] = {"id",      "secret_sha256", "account", "roles",
                                                  "created", "expires",       "revoked", "label",
                                                  "previous_sha256", "previous_until"};
    for (const auto& [key, node] : t) {
      bool known = false;
      for (std::string_view k : kKnown) known = known || key.str() == k;
      if (!known) fail(lineOf(node), path + "." + std::string(key.str()), "unknown key");
    }
    if (getString(t, "id", path, r.id, true) && !isValidTokenId(r.id)) {
      fail(lineOf(*t.get("id")), path + ".id", "expected 12 characters of a-z2-7");
    }
    getHash(t, "secret_sha256", path, r.secret_sha256, true);
    if (getString(t, "account", path, r.account, true) && !isValidAccountName(r.account)) {
      fail(lineOf(*t.get("account")), path + ".account", "expected 1..64 characters of [A-Za-z0-9._-], starting alphanumeric");
    }
    if (const toml::node* n = need(t, "roles", path)) {
      const toml::array* arr = n->as_array();
      if (!arr) {
        fail(lineOf(*n), path + ".roles", "expected array of strings");
      } else {
        for (size_t i = 0; i < arr->size(); ++i) {
          const auto* s = arr->get(i)->as_string();
          std::string key = path + ".roles[" + std::to_string(i) + "]";
          if (!s || !isValidRoleName(s->get())) {
            fail(lineOf(*arr->get(i)), key, "expected a role name of [A-Za-z0-9._-], 1..64, starting alphanumeric");
            continue;
          }
          for (const std::string& prev : r.roles) {
            if (prev == s->get()) fail(lineOf(*arr->get(i)), key, "duplicate role");
          }
          r.roles.push_back(s->get());
        }
      }
    }
    bool have_created = getTime(t, "created", path, r.created, true);
    bool have_expires = getTime(t, "expires", path, r.expires, true);
    if (have_created && have_expires && r.expires <= r.created) {
      fail(lineOf(*t.get("expires")), path + ".expires", "must be later than created");
    }
    if (const toml::node* n = need(t, "revoked", path)) {
      if (const auto* b = n->as_boolean()) {
        r.revoked = b->get();
      } else {
        fail(lineOf(*n), path + ".revoked", "expected boolean");
      }
    }
    if (getString(t, "label", path, r.label, false) && !isValidLabel(r.label)) {
      fail(lineOf(*t.get("label")), path + ".label", "expected at most 128 printable ASCII characters");
    }
    bool has_prev_hash = t.get("previous_sha256") != nullptr;
    bool has_prev_until = t.get("previous_until") != nullptr;
    if (has_prev_hash != has_prev_until) {
      fail(lineOf(t), path, "previous_sha256 and previous_until go together");
    } else if (has_prev_hash) {
      bool a = getHash(t, "previous_sha256", path, r.previous_sha256, true);
      bool b = getTime(t, "previous_until", path, r.previous_until, true);
      r.has_previous = a && b;
    }
    return problems_.size() == before;
  }

  std::string name_;
  std::string problems_;
};

struct HashKey {
  size_t operator()(const SecretHash& h) const {
    uint64_t v;
    std::memcpy(&v, h.bytes.data(), sizeof(v));
    return static_cast<size_t>(v);
  }
};
struct HashEq {
  bool operator()(const SecretHash& a, const SecretHash& b) const { return a.bytes == b.bytes; }
};

}  // namespace

bool isValidAccountName(std::string_view s) { return isSafeName(s); }
bool isValidRoleName(std::string_view s) { return isSafeName(s); }
bool isValidLabel(std::string_view s) {
  if (s.size() > 128) return false;
  for (char c : s) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

std::string formatRfc3339(int64_t unix_seconds) {
  time_t t = static_cast<time_t>(unix_seconds);
  struct tm tm;
  if (!::gmtime_r(&t, &tm)) return "invalid";
  // Four-digit years always (strftime's %Y writes "759" for 0759, which is
  // not a TOML date: found by the token-store fuzzer's round trip).
  char buf[48];  // 11 characters for any int year + 15: snprintf cannot truncate
  (void)std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec);
  return buf;
}

int64_t unixNow() { return static_cast<int64_t>(::time(nullptr)); }

const char* tokenVerdictName(TokenVerdict v) {
  switch (v) {
    case TokenVerdict::kOk: return "ok";
    case TokenVerdict::kUnknown: return "unknown_token";
    case TokenVerdict::kBadSecret: return "bad_secret";
    case TokenVerdict::kRevoked: return "revoked";
    case TokenVerdict::kExpired: return "expired";
    case TokenVerdict::kInactive: return "inactive";
    case TokenVerdict::kRotatedOut: return "rotated_out";
  }
  return "unknown";
}

std::shared_ptr<const TokenTable> TokenTable::build(std::vector<TokenRecord> records, std::string& error) {
  std::string problems;
  auto report = [&](const std::string& text) {
    if (!problems.empty()) problems.push_back('\n');
    problems += text;
  };
  auto table = std::shared_ptr<TokenTable>(new TokenTable());
  size_t cap = 16;
  while (cap < records.size() * 2) cap <<= 1;
  table->slots_.assign(cap, Slot{});
  table->mask_ = cap - 1;
  std::unordered_set<SecretHash, HashKey, HashEq> hashes;
  hashes.reserve(records.size() * 2);
  for (size_t i = 0; i < records.size(); ++i) {
    const TokenRecord& r = records[i];
    std::string where = "token[" + std::to_string(i) + "] (id " + r.id + ")";
    uint64_t packed;
    if (!packTokenId(r.id, packed)) {
      report(where + ": invalid id");
      continue;
    }
    if (!isValidAccountName(r.account)) report(where + ": invalid account");
    for (const std::string& role : r.roles) {
      if (!isValidRoleName(role)) report(where + ": invalid role");
    }
    if (!isValidLabel(r.label)) report(where + ": invalid label");
    if (r.expires <= r.created) report(where + ": expires must be later than created");
    if (!hashes.insert(r.secret_sha256).second) report(where + ": secret_sha256 is already used by another token");
    if (r.has_previous && !hashes.insert(r.previous_sha256).second) {
      report(where + ": previous_sha256 is already used by another token or secret");
    }
    uint64_t key = packed + 1;
    for (uint64_t p = mix(key) & table->mask_;; p = (p + 1) & table->mask_) {
      Slot& s = table->slots_[p];
      if (s.key == 0) {
        s.key = key;
        s.index = static_cast<int32_t>(i);
        break;
      }
      if (s.key == key) {
        report(where + ": duplicate id");
        break;
      }
    }
  }
  if (!problems.empty()) {
    error = problems;
    return nullptr;
  }
  table->records_ = std::move(records);
  return table;
}

int32_t TokenTable::indexOf(std::string_view id) const {
  uint64_t packed;
  if (!packTokenId(id, packed)) return -1;
  uint64_t key = packed + 1;
  for (uint64_t p = mix(key) & mask_;; p = (p + 1) & mask_) {
    const Slot& s = slots_[p];
    if (s.key == key) return s.index;
    if (s.key == 0) return -1;
  }
}

const TokenRecord* TokenTable::find(std::string_view id) const {
  int32_t i = indexOf(id);
  return i < 0 ? nullptr : &records_[static_cast<size_t>(i)];
}

TokenVerdict TokenTable::checkRecord(const TokenRecord& r, const SecretHash& presented, int64_t now,
                                     int64_t last_use, int64_t inactive_expiry_s) {
  bool current = secretHashEqual(r.secret_sha256, presented);
  // Always compare against a previous hash too (a zero hash when there is none)
  // so timing does not tell whether the token was rotated.
  static const SecretHash kNone{};
  bool previous = secretHashEqual(r.has_previous ? r.previous_sha256 : kNone, presented) && r.has_previous;
  if (!current && !previous) return TokenVerdict::kBadSecret;
  if (r.revoked) return TokenVerdict::kRevoked;
  if (now >= r.expires) return TokenVerdict::kExpired;
  if (!current && now >= r.previous_until) return TokenVerdict::kRotatedOut;
  if (inactive_expiry_s > 0) {
    int64_t since = last_use > r.created ? last_use : r.created;
    if (now - since > inactive_expiry_s) return TokenVerdict::kInactive;
  }
  return TokenVerdict::kOk;
}

TokenVerdict TokenTable::check(std::string_view id, const SecretHash& presented, int64_t now, int64_t last_use,
                               int64_t inactive_expiry_s, const TokenRecord** record) const {
  const TokenRecord* r = find(id);
  if (record) *record = r;
  if (!r) return TokenVerdict::kUnknown;
  return checkRecord(*r, presented, now, last_use, inactive_expiry_s);
}

bool parseTokenStore(std::string_view text, const std::string& name, std::vector<TokenRecord>& out,
                     std::string& error) {
  StoreParser p(name);
  return p.parse(text, out, error);
}

std::string serializeTokenStore(const std::vector<TokenRecord>& records) {
  std::string out =
      "# Portcullis token store (SPEC section 4). Written by portcullisctl through one locked\n"
      "# writer; keep it mode 0600. It holds no secrets, only their SHA-256.\n";
  for (const TokenRecord& r : records) {
    out += "\n[[token]]\nid = ";
    appendTomlString(out, r.id);
    out += "\nsecret_sha256 = \"" + secretHashToHex(r.secret_sha256) + "\"\naccount = ";
    appendTomlString(out, r.account);
    out += "\nroles = [";
    for (size_t i = 0; i < r.roles.size(); ++i) {
      if (i) out += ", ";
      appendTomlString(out, r.roles[i]);
    }
    out += "]\ncreated = " + formatRfc3339(r.created) + "\nexpires = " + formatRfc3339(r.expires) +
           "\nrevoked = " + (r.revoked ? "true" : "false") + "\n";
    if (!r.label.empty()) {
      out += "label = ";
      appendTomlString(out, r.label);
      out += "\n";
    }
    if (r.has_previous) {
      out += "previous_sha256 = \"" + secretHashToHex(r.previous_sha256) + "\"\nprevious_until = " +
             formatRfc3339(r.previous_until) + "\n";
    }
  }
  return out;
}

std::shared_ptr<const TokenTable> loadTokenStore(const std::string& path, std::string& error) {
  std::string text;
  bool missing = false;
  if (!readPrivateFile(path, text, missing, error)) return nullptr;
  if (missing) {
    error = path + ": no such file (the first 'portcullisctl token issue' creates it)";
    return nullptr;
  }
  std::vector<TokenRecord> records;
  if (!parseTokenStore(text, path, records, error)) return nullptr;
  std::string build_error;
  auto table = TokenTable::build(std::move(records), build_error);
  if (!table) {
    // Prefix each problem with the file name.
    error.clear();
    size_t start = 0;
    while (start <= build_error.size()) {
      size_t nl = build_error.find('\n', start);
      if (nl == std::string::npos) nl = build_error.size();
      if (!error.empty()) error.push_back('\n');
      error += path + ": " + build_error.substr(start, nl - start);
      start = nl + 1;
    }
  }
  return table;
}

bool updateTokenStoreFn(const std::string& path, bool (*mutate)(std::vector<TokenRecord>&, void*, std::string&),
                        void* arg, std::string& error, int lock_timeout_ms) {
  FileLock lock;
  if (!lock.lock(path, error, lock_timeout_ms)) return false;
  bool ok = false;
  do {
    std::string text;
    bool missing = false;
    if (!readPrivateFile(path, text, missing, error)) break;
    std::vector<TokenRecord> records;
    if (!missing && !parseTokenStore(text, path, records, error)) break;
    if (!mutate(records, arg, error)) break;
    std::string build_error;
    std::string serialized = serializeTokenStore(records);
    if (!TokenTable::build(std::move(records), build_error)) {
      error = path + ": refusing to write an invalid store: " + build_error;
      break;
    }
    ok = writeFileAtomic(path, serialized, error);
  } while (false);
  return ok;
}

bool issueToken(const std::string& path, const IssueRequest& req, GeneratedToken& out, std::string& error) {
  if (!isValidAccountName(req.account)) {
    error = "invalid account name (1..64 characters of [A-Za-z0-9._-], starting alphanumeric)";
    return false;
  }
  for (size_t i = 0; i < req.roles.size(); ++i) {
    if (!isValidRoleName(req.roles[i])) {
      error = "invalid role name (1..64 characters of [A-Za-z0-9._-], starting alphanumeric)";
      return false;
    }
    for (size_t j = 0; j < i; ++j) {
      if (req.roles[i] == req.roles[j]) {
        error = "role given twice: " + req.roles[i];
        return false;
      }
    }
  }
  if (!isValidLabel(req.label)) {
    error = "invalid label (at most 128 printable ASCII characters)";
    return false;
  }
  if (req.ttl_s <= 0) {
    error = "ttl must be positive";
    return false;
  }
  const int64_t now = req.now ? req.now : unixNow();
  return updateTokenStore(
      path,
      [&](std::vector<TokenRecord>& records, std::string& err) {
        for (int attempt = 0;; ++attempt) {
          if (attempt == 8 || !generateToken(out)) {
            err = "cannot generate a unique token";
            return false;
          }
          bool clash = false;
          for (const TokenRecord& r : records) {
            clash = clash || r.id == out.id || r.secret_sha256.bytes == out.hash.bytes ||
                    (r.has_previous && r.previous_sha256.bytes == out.hash.bytes);
          }
          if (!clash) break;
        }
        TokenRecord r;
        r.id = out.id;
        r.secret_sha256 = out.hash;
        r.account = req.account;
        r.roles = req.roles;
        r.created = now;
        r.expires = now + req.ttl_s;
        r.label = req.label;
        records.push_back(std::move(r));
        return true;
      },
      error);
}

bool revokeToken(const std::string& path, std::string_view id, std::string& error, bool* already_revoked,
                 int lock_timeout_ms) {
  if (already_revoked) *already_revoked = false;
  return updateTokenStore(
      path,
      [&](std::vector<TokenRecord>& records, std::string& err) {
        for (TokenRecord& r : records) {
          if (r.id != id) continue;
          if (r.revoked && already_revoked) *already_revoked = true;
          r.revoked = true;
          return true;
        }
        err = "no token with id " + std::string(id);
        return false;
      },
      error, lock_timeout_ms);
}

bool rotateToken(const std::string& path, std::string_view id, int64_t grace_s, GeneratedToken& out,
                 std::string& error, int64_t now) {
  if (grace_s < 0) {
    error = "grace must not be negative";
    return false;
  }
  if (!now) now = unixNow();
  return updateTokenStore(
      path,
      [&](std::vector<TokenRecord>& records, std::string& err) {
        TokenRecord* target = nullptr;
        for (TokenRecord& r : records) {
          if (r.id == id) target = &r;
        }
        if (!target) {
          err = "no token with id " + std::string(id);
          return false;
        }
        if (target->revoked) {
          err = "token " + target->id + " is revoked; issue a new one";
          return false;
        }
        if (now >= target->expires) {
          err = "token " + target->id + " has expired; issue a new one";
          return false;
        }
        for (int attempt = 0;; ++attempt) {
          if (attempt == 8 || !generateTokenSecret(out.secret)) {
            err = "cannot generate a unique secret";
            return false;
          }
          out.hash = hashSecret(out.secret);
          bool clash = false;
          for (const TokenRecord& r : records) {
            clash = clash || r.secret_sha256.bytes == out.hash.bytes ||
                    (r.has_previous && r.previous_sha256.bytes == out.hash.bytes);
          }
          if (!clash) break;
        }
        out.id = target->id;
        out.token = formatToken(out.id, out.secret);
        target->previous_sha256 = target->secret_sha256;
        target->previous_until = now + grace_s;
        target->has_previous = true;
        target->secret_sha256 = out.hash;
        return true;
      },
      error);
}

namespace {

std::string statePath(const std::string& state_dir, const char* name) {
  if (state_dir.empty()) return name;
  if (state_dir.back() == '/') return state_dir + name;
  return state_dir + "/" + name;
}

bool writeIdSeconds(const std::string& path, const char* header,
                    const std::unordered_map<std::string, int64_t>& values, std::string& error) {
  std::string text = header;
  for (const auto& [id, ts] : values) {
    if (!isValidTokenId(id) || ts < 0) continue;
    text += id;
    text.push_back('\t');
    text += std::to_string(ts);
    text.push_back('\n');
  }
  return writeFileAtomic(path, text, error);
}

}  // namespace

std::string lastUsePath(const std::string& state_dir) { return statePath(state_dir, "token_last_use.tsv"); }

std::string revokedHerePath(const std::string& state_dir) { return statePath(state_dir, "token_revoked_here.tsv"); }

namespace {

// "<id>\t<unix seconds>" lines. keep_good: a malformed line is skipped (and
// named in `error`, the result false) instead of failing the whole file.
bool readIdSeconds(const std::string& path, std::unordered_map<std::string, int64_t>& out, std::string& error,
                   bool keep_good) {
  out.clear();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return true;
    error = errnoText("cannot open", path);
    return false;
  }
  std::string text;
  bool ok = readAll(fd, text);
  ::close(fd);
  if (!ok) {
    error = errnoText("cannot read", path);
    return false;
  }
  std::string bad;
  size_t line_no = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos) nl = text.size();
    std::string_view line(text.data() + start, nl - start);
    start = nl + 1;
    ++line_no;
    if (line.empty() || line[0] == '#') continue;
    size_t tab = line.find('\t');
    bool good = tab != std::string_view::npos && isValidTokenId(line.substr(0, tab));
    int64_t value = 0;
    if (good) {
      std::string_view num = line.substr(tab + 1);
      good = !num.empty() && num.size() <= 18;
      for (char c : good ? num : std::string_view()) {
        if (c < '0' || c > '9') {
          good = false;
          break;
        }
        value = value * 10 + (c - '0');
      }
    }
    if (!good) {
      if (!keep_good) {
        error = path + ":" + std::to_string(line_no) + ": expected <id>\\t<unix seconds>";
        out.clear();
        return false;
      }
      bad += (bad.empty() ? "" : ", ") + std::to_string(line_no);
      continue;
    }
    int64_t& slot = out[std::string(line.substr(0, tab))];
    if (value > slot) slot = value;
  }
  if (!bad.empty()) {
    error = path + ": skipped malformed line(s) " + bad + " (expected <id>\\t<unix seconds>)";
    return false;
  }
  return true;
}

}  // namespace

bool readLastUse(const std::string& path, std::unordered_map<std::string, int64_t>& out, std::string& error) {
  return readIdSeconds(path, out, error, /*keep_good=*/false);
}

bool readRevokedHere(const std::string& path, std::unordered_map<std::string, int64_t>& out, std::string& error) {
  return readIdSeconds(path, out, error, /*keep_good=*/true);
}

bool writeLastUse(const std::string& path, const std::unordered_map<std::string, int64_t>& values,
                  std::string& error) {
  return writeIdSeconds(path, "# portcullis token last use: <id>\\t<unix seconds>\n", values, error);
}

bool writeRevokedHere(const std::string& path, const std::unordered_map<std::string, int64_t>& values,
                      std::string& error) {
  return writeIdSeconds(path,
                        "# portcullis: tokens revoked by the proxy that the token store has not taken yet, "
                        "refused until it does: <id>\\t<unix seconds>\n",
                        values, error);
}

}  // namespace portcullis
