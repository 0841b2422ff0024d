// Token store: parsing, validation, verdicts, the locked atomic writer and the
// last-use state file.
#include "proxy/token_store.h"

#include "proxy/auth_state.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

namespace portcullis {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "pc_token_store_XXXXXX").string();
    char* p = ::mkdtemp(tmpl.data());
    EXPECT_NE(p, nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void writeFile(const std::string& path, const std::string& text, mode_t mode = 0600) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
  }
  ::chmod(path.c_str(), mode);
}

SecretHash hashOf(uint8_t fill) {
  SecretHash h;
  h.bytes.fill(fill);
  return h;
}

TokenRecord makeRecord(const std::string& id, uint8_t fill) {
  TokenRecord r;
  r.id = id;
  r.secret_sha256 = hashOf(fill);
  r.account = "ACME";
  r.roles = {"reader", "uploader"};
  r.created = 1764867600;  // 2025-12-04T17:00:00Z
  r.expires = r.created + 90 * 86400;
  return r;
}

const char* kStoreText = R"(# comment
[[token]]
id = "abcdefghijkl"
secret_sha256 = "0101010101010101010101010101010101010101010101010101010101010101"
account = "ACME"
roles = ["reader"]
created = 2025-12-04T17:00:00Z
expires = 2026-03-04T17:00:00Z
revoked = false
label = "ci \"runner\""

[[token]]
id = "mnopqrstuv23"
secret_sha256 = "0202020202020202020202020202020202020202020202020202020202020202"
account = "other.co-1"
roles = []
created = 2025-12-04T18:00:00+01:00
expires = 2026-12-04T17:00:00Z
revoked = true
previous_sha256 = "0303030303030303030303030303030303030303030303030303030303030303"
previous_until = 2025-12-05T17:00:00Z
)";

TEST(TokenStoreTest, ParsesTheDocumentedFormat) {
  std::vector<TokenRecord> recs;
  std::string error;
  ASSERT_TRUE(parseTokenStore(kStoreText, "tokens.toml", recs, error)) << error;
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[0].id, "abcdefghijkl");
  EXPECT_TRUE(secretHashEqual(recs[0].secret_sha256, hashOf(1)));
  EXPECT_EQ(recs[0].account, "ACME");
  EXPECT_EQ(recs[0].roles, std::vector<std::string>{"reader"});
  EXPECT_EQ(recs[0].created, 1764867600);
  EXPECT_EQ(recs[0].expires, 1764867600 + 90 * 86400);
  EXPECT_FALSE(recs[0].revoked);
  EXPECT_EQ(recs[0].label, "ci \"runner\"");
  EXPECT_FALSE(recs[0].has_previous);
  EXPECT_EQ(recs[1].created, 1764867600);  // +01:00 offset converted to UTC
  EXPECT_TRUE(recs[1].revoked);
  EXPECT_TRUE(recs[1].roles.empty());
  ASSERT_TRUE(recs[1].has_previous);
  EXPECT_TRUE(secretHashEqual(recs[1].previous_sha256, hashOf(3)));
  EXPECT_EQ(recs[1].previous_until, 1764867600 + 86400);
}

TEST(TokenStoreTest, SerializeRoundTrips) {
  std::vector<TokenRecord> recs;
  std::string error;
  ASSERT_TRUE(parseTokenStore(kStoreText, "t", recs, error)) << error;
  std::string text = serializeTokenStore(recs);
  std::vector<TokenRecord> again;
  ASSERT_TRUE(parseTokenStore(text, "t", again, error)) << error << "\n" << text;
  ASSERT_EQ(again.size(), recs.size());
  for (size_t i = 0; i < recs.size(); ++i) {
    EXPECT_EQ(again[i].id, recs[i].id);
    EXPECT_EQ(again[i].secret_sha256.bytes, recs[i].secret_sha256.bytes);
    EXPECT_EQ(again[i].account, recs[i].account);
    EXPECT_EQ(again[i].roles, recs[i].roles);
    EXPECT_EQ(again[i].created, recs[i].created);
    EXPECT_EQ(again[i].expires, recs[i].expires);
    EXPECT_EQ(again[i].revoked, recs[i].revoked);
    EXPECT_EQ(again[i].label, recs[i].label);
    EXPECT_EQ(again[i].has_previous, recs[i].has_previous);
    EXPECT_EQ(again[i].previous_sha256.bytes, recs[i].previous_sha256.bytes);
    EXPECT_EQ(again[i].previous_until, recs[i].previous_until);
  }
  EXPECT_EQ(serializeTokenStore(again), text);
  EXPECT_NE(text.find("created = 2025-12-04T17:00:00Z"), std::string::npos);
}

TEST(TokenStoreTest, RejectsMalformedRecords) {
  const std::string good_head =
      "[[token]]\nid = \"abcdefghijkl\"\nsecret_sha256 = \"" + std::string(64, 'a') +
      "\"\naccount = \"ACME\"\nroles = [\"r\"]\ncreated = 2025-12-04T17:00:00Z\nexpires = 2026-03-04T17:00:00Z\n";
  struct Case {
    std::string text;
    std::string expect;
  };
  const Case cases[] = {
      {good_head, "revoked: missing"},
      {good_head + "revoked = false\nextra = 1\n", "unknown key"},
      {"version = 1\n" + good_head + "revoked = false\n", "unknown key"},
      {good_head + "revoked = \"no\"\n", "expected boolean"},
      {"token = 1\n", "array of tables"},
      {"[[token]]\nid = \"ABCDEFGHIJKL\"\n", "a-z2-7"},
      {good_head + "revoked = false\nlabel = \"tab\\there\"\n", "printable ASCII"},
      {good_head + "revoked = false\nprevious_sha256 = \"" + std::string(64, 'b') + "\"\n", "go together"},
      {"[[token]]\nid = \"abcdefghijkl\"\nsecret_sha256 = \"" + std::string(64, 'A') + "\"\n", "lowercase hex"},
      {"[[token]]\naccount = \"../x\"\n", "account"},
      {"[[token]]\naccount = \".hidden\"\n", "account"},
      {"[[token]]\nroles = [\"a b\"]\n", "role name"},
      {"[[token]]\nroles = [\"a\", \"a\"]\n", "duplicate role"},
      {"[[token]]\ncreated = 2025-12-04T17:00:00\n", "RFC 3339"},
      {"[[token]]\ncreated = 2025-12-04\n", "RFC 3339"},
      {"[[token]]\ncreated = \"2025-12-04T17:00:00Z\"\n", "RFC 3339"},
      {"[[token]]\ncreated = 2025-12-04T17:00:00Z\nexpires = 2025-12-04T17:00:00Z\n", "later than created"},
      {"[[token]\n", ":1:"},
  };
  for (const Case& c : cases) {
    std::vector<TokenRecord> recs;
    std::string error;
    EXPECT_FALSE(parseTokenStore(c.text, "tokens.toml", recs, error)) << c.text;
    EXPECT_NE(error.find(c.expect), std::string::npos) << "want '" << c.expect << "' in: " << error;
    EXPECT_EQ(error.find("tokens.toml:"), 0u) << error;
  }
}

TEST(TokenStoreTest, BuildRefusesDuplicates) {
  std::string error;
  EXPECT_FALSE(TokenTable::build({makeRecord("abcdefghijkl", 1), makeRecord("abcdefghijkl", 2)}, error));
  EXPECT_NE(error.find("duplicate id"), std::string::npos) << error;
  error.clear();
  EXPECT_FALSE(TokenTable::build({makeRecord("abcdefghijkl", 1), makeRecord("bbcdefghijkl", 1)}, error));
  EXPECT_NE(error.find("already used"), std::string::npos) << error;
  // A previous hash equal to another token's current hash is a duplicate too.
  TokenRecord r = makeRecord("bbcdefghijkl", 2);
  r.has_previous = true;
  r.previous_sha256 = hashOf(1);
  r.previous_until = r.created + 10;
  error.clear();
  EXPECT_FALSE(TokenTable::build({makeRecord("abcdefghijkl", 1), r}, error));
  EXPECT_NE(error.find("previous_sha256"), std::string::npos) << error;
  error.clear();
  EXPECT_TRUE(TokenTable::build({}, error));
}

TEST(TokenStoreTest, LookupFindsEveryTokenAmongTenThousand) {
  std::vector<TokenRecord> recs;
  std::set<std::string> ids;
  for (int i = 0; i < 10000; ++i) {
    std::string id;
    ASSERT_TRUE(generateTokenId(id));
    if (!ids.insert(id).second) continue;
    TokenRecord r = makeRecord(id, 0);
    r.secret_sha256.bytes[0] = static_cast<uint8_t>(i);
    r.secret_sha256.bytes[1] = static_cast<uint8_t>(i >> 8);
    recs.push_back(r);
  }
  std::string error;
  auto table = TokenTable::build(recs, error);
  ASSERT_TRUE(table) << error;
  for (size_t i = 0; i < recs.size(); ++i) {
    const TokenRecord* r = table->find(recs[i].id);
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->id, recs[i].id);
    EXPECT_EQ(table->indexOf(recs[i].id), static_cast<int32_t>(i));
  }
  int misses = 0;
  for (int i = 0; i < 1000; ++i) {
    std::string id;
    ASSERT_TRUE(generateTokenId(id));
    if (!ids.count(id) && table->find(id) == nullptr) ++misses;
  }
  EXPECT_EQ(misses, 1000);
  EXPECT_EQ(table->find("ABCDEFGHIJKL"), nullptr);
  EXPECT_EQ(table->find(""), nullptr);
  EXPECT_EQ(table->find(recs[0].id + "a"), nullptr);
}

TEST(TokenStoreTest, EveryVerdict) {
  const int64_t t0 = 1764867600;
  TokenRecord active = makeRecord("aaaaaaaaaaaa", 1);
  TokenRecord revoked = makeRecord("bbbbbbbbbbbb", 2);
  revoked.revoked = true;
  TokenRecord rotated = makeRecord("cccccccccccc", 3);
  rotated.has_previous = true;
  rotated.previous_sha256 = hashOf(4);
  rotated.previous_until = t0 + 3600;
  std::string error;
  auto table = TokenTable::build({active, revoked, rotated}, error);
  ASSERT_TRUE(table) << error;
  const int64_t day = 86400;
  const int64_t inactive = 30 * day;
  const int64_t now = t0 + 60;

  const TokenRecord* rec = nullptr;
  EXPECT_EQ(table->check("aaaaaaaaaaaa", hashOf(1), now, 0, inactive, &rec), TokenVerdict::kOk);
  EXPECT_EQ(rec, table->find("aaaaaaaaaaaa"));
  EXPECT_EQ(table->check("dddddddddddd", hashOf(1), now, 0, inactive, &rec), TokenVerdict::kUnknown);
  EXPECT_EQ(rec, nullptr);
  EXPECT_EQ(table->check("aaaaaaaaaaaa", hashOf(9), now, 0, inactive), TokenVerdict::kBadSecret);
  // Another token's secret does not open this one.
  EXPECT_EQ(table->check("aaaaaaaaaaaa", hashOf(2), now, 0, inactive), TokenVerdict::kBadSecret);
  EXPECT_EQ(table->check("bbbbbbbbbbbb", hashOf(2), now, 0, inactive), TokenVerdict::kRevoked);
  // State is only revealed to holders of the secret.
  EXPECT_EQ(table->check("bbbbbbbbbbbb", hashOf(9), now, 0, inactive), TokenVerdict::kBadSecret);
  // Expiry: valid up to the second before expires.
  EXPECT_EQ(table->check("aaaaaaaaaaaa", hashOf(1), active.expires - 1, active.expires - 2, inactive),
            TokenVerdict::kOk);
  EXPECT_EQ(table->check("aaaaaaaaaaaa", hashOf(1), active.expires, active.expires - 2, inactive),
            TokenVerdict::kExpired);
  // Inactivity: never used counts from created; a recorded use resets it.
  EXPECT_EQ(table->check("aaaaaaaaaaaa", hashOf(1), t0 + inactive, 0, inactive), TokenVerdict::kOk);
  EXPECT_EQ(table->check("aaaaaaaaaaaa", hashOf(1), t0 + inactive + 1, 0, inactive), TokenVerdict::kInactive);
  EXPECT_EQ(table->check("aaaaaaaaaaaa", hashOf(1), t0 + inactive + 1, t0 + 10, inactive), TokenVerdict::kOk);
  EXPECT_EQ(table->check("aaaaaaaaaaaa", hashOf(1), t0 + 40 * day, t0 + 5 * day, inactive), TokenVerdict::kInactive);
  EXPECT_EQ(table->check("aaaaaaaaaaaa", hashOf(1), t0 + 40 * day, t0 + 20 * day, inactive), TokenVerdict::kOk);
  // 0 disables the inactivity check.
  EXPECT_EQ(table->check("aaaaaaaaaaaa", hashOf(1), t0 + 80 * day, 0, 0), TokenVerdict::kOk);
  // Rotation grace, both ways: the new secret always works, the old one until previous_until.
  EXPECT_EQ(table->check("cccccccccccc", hashOf(3), now, 0, inactive), TokenVerdict::kOk);
  EXPECT_EQ(table->check("cccccccccccc", hashOf(4), now, 0, inactive), TokenVerdict::kOk);
  EXPECT_EQ(table->check("cccccccccccc", hashOf(4), t0 + 3599, 0, inactive), TokenVerdict::kOk);
  EXPECT_EQ(table->check("cccccccccccc", hashOf(4), t0 + 3600, 0, inactive), TokenVerdict::kRotatedOut);
  EXPECT_EQ(table->check("cccccccccccc", hashOf(3), t0 + 3600, 0, inactive), TokenVerdict::kOk);
  // A zero hash never matches "no previous secret".
  EXPECT_EQ(table->check("aaaaaaaaaaaa", SecretHash{}, now, 0, inactive), TokenVerdict::kBadSecret);
  for (int v = 0; v <= static_cast<int>(TokenVerdict::kRotatedOut); ++v) {
    EXPECT_STRNE(tokenVerdictName(static_cast<TokenVerdict>(v)), "unknown");
  }
}

TEST(TokenStoreTest, WriterIssuesRevokesRotates) {
  TempDir dir;
  const std::string store = dir.file("tokens.toml");
  IssueRequest req;
  req.account = "ACME";
  req.roles = {"uploader", "reader"};
  req.ttl_s = 3600;
  req.label = "build bot";
  GeneratedToken tok;
  std::string error;
  ASSERT_TRUE(issueToken(store, req, tok, error)) << error;
  struct stat st;
  ASSERT_EQ(::stat(store.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::string text = readFile(store);
  EXPECT_EQ(text.find(tok.token), std::string::npos);
  EXPECT_EQ(text.find(tok.token.substr(17)), std::string::npos);  // the secret part
  EXPECT_NE(text.find(secretHashToHex(tok.hash)), std::string::npos);

  auto table = loadTokenStore(store, error);
  ASSERT_TRUE(table) << error;
  ParsedToken p;
  ASSERT_EQ(parseToken(tok.token, p), TokenError::kOk);
  const int64_t now = unixNow();
  EXPECT_EQ(table->check(p.id, hashSecret(p.secret), now, 0, 0), TokenVerdict::kOk);
  EXPECT_EQ(table->find(p.id)->roles, req.roles);
  EXPECT_EQ(table->find(p.id)->label, "build bot");
  EXPECT_EQ(table->find(p.id)->expires - table->find(p.id)->created, 3600);

  // Rotate with a grace: both secrets work until the grace ends.
  GeneratedToken rot;
  ASSERT_TRUE(rotateToken(store, tok.id, 600, rot, error, now)) << error;
  EXPECT_EQ(rot.id, tok.id);
  EXPECT_NE(rot.token, tok.token);
  table = loadTokenStore(store, error);
  ASSERT_TRUE(table) << error;
  ParsedToken p2;
  ASSERT_EQ(parseToken(rot.token, p2), TokenError::kOk);
  EXPECT_EQ(table->check(tok.id, hashSecret(p2.secret), now, 0, 0), TokenVerdict::kOk);
  EXPECT_EQ(table->check(tok.id, tok.hash, now + 599, 0, 0), TokenVerdict::kOk);
  EXPECT_EQ(table->check(tok.id, tok.hash, now + 600, 0, 0), TokenVerdict::kRotatedOut);
  EXPECT_EQ(table->check(tok.id, hashSecret(p2.secret), now + 600, 0, 0), TokenVerdict::kOk);

  // Rotating again with grace 0 retires the second secret at once; the first is gone.
  GeneratedToken rot2;
  ASSERT_TRUE(rotateToken(store, tok.id, 0, rot2, error, now)) << error;
  table = loadTokenStore(store, error);
  ASSERT_TRUE(table);
  EXPECT_EQ(table->check(tok.id, hashSecret(p2.secret), now, 0, 0), TokenVerdict::kRotatedOut);
  EXPECT_EQ(table->check(tok.id, tok.hash, now, 0, 0), TokenVerdict::kBadSecret);
  EXPECT_EQ(table->check(tok.id, rot2.hash, now, 0, 0), TokenVerdict::kOk);

  bool already = true;
  ASSERT_TRUE(revokeToken(store, tok.id, error, &already)) << error;
  EXPECT_FALSE(already);
  ASSERT_TRUE(revokeToken(store, tok.id, error, &already)) << error;
  EXPECT_TRUE(already);
  table = loadTokenStore(store, error);
  ASSERT_TRUE(table);
  EXPECT_EQ(table->check(tok.id, rot2.hash, now, 0, 0), TokenVerdict::kRevoked);
  GeneratedToken rot3;
  EXPECT_FALSE(rotateToken(store, tok.id, 0, rot3, error, now));
  EXPECT_NE(error.find("revoked"), std::string::npos);
  EXPECT_FALSE(revokeToken(store, "zzzzzzzzzzzz", error));
  EXPECT_NE(error.find("no token"), std::string::npos);
  EXPECT_FALSE(rotateToken(store, "zzzzzzzzzzzz", 0, rot3, error, now));

  // Invalid requests never touch the file.
  std::string before = readFile(store);
  IssueRequest bad = req;
  bad.account = "../etc";
  EXPECT_FALSE(issueToken(store, bad, rot3, error));
  bad = req;
  bad.roles = {"a", "a"};
  EXPECT_FALSE(issueToken(store, bad, rot3, error));
  bad = req;
  bad.label = "line\nbreak";
  EXPECT_FALSE(issueToken(store, bad, rot3, error));
  EXPECT_EQ(readFile(store), before);
  // No temporary files are left behind.
  for (const auto& e : fs::directory_iterator(dir.path())) {
    std::string name = e.path().filename().string();
    EXPECT_TRUE(name == "tokens.toml" || name == "tokens.toml.lock") << name;
  }
}

TEST(TokenStoreTest, RotateRefusesExpiredToken) {
  TempDir dir;
  const std::string store = dir.file("tokens.toml");
  IssueRequest req;
  req.account = "ACME";
  req.roles = {"r"};
  req.ttl_s = 10;
  req.now = 1000000;
  GeneratedToken tok, rot;
  std::string error;
  ASSERT_TRUE(issueToken(store, req, tok, error)) << error;
  EXPECT_FALSE(rotateToken(store, tok.id, 60, rot, error, 1000010));
  EXPECT_NE(error.find("expired"), std::string::npos);
  EXPECT_TRUE(rotateToken(store, tok.id, 60, rot, error, 1000009)) << error;
}

TEST(TokenStoreTest, ModeMustBe0600OrStricter) {
  TempDir dir;
  const std::string store = dir.file("tokens.toml");
  writeFile(store, kStoreText, 0644);
  std::string error;
  EXPECT_FALSE(loadTokenStore(store, error));
  EXPECT_NE(error.find("0644"), std::string::npos) << error;
  ::chmod(store.c_str(), 0640);
  EXPECT_FALSE(loadTokenStore(store, error));
  ::chmod(store.c_str(), 0604);
  EXPECT_FALSE(loadTokenStore(store, error));
  // The writer refuses to work on a too-open store too.
  IssueRequest req;
  req.account = "ACME";
  req.roles = {"r"};
  GeneratedToken tok;
  EXPECT_FALSE(issueToken(store, req, tok, error));
  EXPECT_NE(error.find("too open"), std::string::npos) << error;
  ::chmod(store.c_str(), 0600);
  EXPECT_TRUE(loadTokenStore(store, error)) << error;
  ::chmod(store.c_str(), 0400);
  EXPECT_TRUE(loadTokenStore(store, error)) << error;
  EXPECT_FALSE(loadTokenStore(dir.file("missing.toml"), error));
  // A symlink is not followed.
  ::chmod(store.c_str(), 0600);
  ASSERT_EQ(::symlink(store.c_str(), dir.file("link.toml").c_str()), 0);
  EXPECT_FALSE(loadTokenStore(dir.file("link.toml"), error));
}

TEST(TokenStoreTest, WriterRefusesDuplicateHashInExistingStore) {
  TempDir dir;
  const std::string store = dir.file("tokens.toml");
  std::string text = kStoreText;
  // Make the second token's secret hash equal to the first one's.
  size_t pos = text.find("0202020202020202020202020202020202020202020202020202020202020202");
  ASSERT_NE(pos, std::string::npos);
  text.replace(pos, 64, "0101010101010101010101010101010101010101010101010101010101010101");
  writeFile(store, text);
  std::string error;
  EXPECT_FALSE(loadTokenStore(store, error));
  EXPECT_NE(error.find("already used"), std::string::npos) << error;
  IssueRequest req;
  req.account = "ACME";
  req.roles = {"r"};
  GeneratedToken tok;
  EXPECT_FALSE(issueToken(store, req, tok, error));
  EXPECT_EQ(readFile(store), text);
}

TEST(TokenStoreTest, ConcurrentWritersAllLand) {
  TempDir dir;
  const std::string store = dir.file("tokens.toml");
  constexpr int kThreads = 6;
  constexpr int kPerThread = 8;
  constexpr int kProcs = 3;
  constexpr int kPerProc = 8;
  std::vector<pid_t> children;
  for (int p = 0; p < kProcs; ++p) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int failures = 0;
      for (int i = 0; i < kPerProc; ++i) {
        IssueRequest req;
        req.account = "proc" + std::to_string(p);
        req.roles = {"r"};
        GeneratedToken tok;
        std::string error;
        if (!issueToken(store, req, tok, error)) ++failures;
      }
      ::_exit(failures == 0 ? 0 : 1);
    }
    children.push_back(pid);
  }
  std::vector<std::thread> threads;
  std::mutex mu;
  std::set<std::string> issued;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        IssueRequest req;
        req.account = "thread" + std::to_string(t);
        req.roles = {"r"};
        GeneratedToken tok;
        std::string error;
        if (!issueToken(store, req, tok, error)) {
          ++failures;
          continue;
        }
        std::lock_guard<std::mutex> lock(mu);
        issued.insert(tok.id);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  EXPECT_EQ(failures.load(), 0);
  std::string error;
  auto table = loadTokenStore(store, error);
  ASSERT_TRUE(table) << error;
  EXPECT_EQ(table->size(), static_cast<size_t>(kThreads * kPerThread + kProcs * kPerProc));
  for (const std::string& id : issued) EXPECT_NE(table->find(id), nullptr);
}

TEST(TokenStoreTest, LastUseRoundTrip) {
  TempDir dir;
  const std::string path = lastUsePath(dir.path());
  EXPECT_EQ(path, dir.path() + "/token_last_use.tsv");
  EXPECT_EQ(lastUsePath(dir.path() + "/"), path);
  std::unordered_map<std::string, int64_t> values, back;
  std::string error;
  ASSERT_TRUE(readLastUse(path, back, error)) << error;  // missing = empty
  EXPECT_TRUE(back.empty());
  values["abcdefghijkl"] = 1764867600;
  values["mnopqrstuv23"] = 1;
  ASSERT_TRUE(writeLastUse(path, values, error)) << error;
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_TRUE(readLastUse(path, back, error)) << error;
  EXPECT_EQ(back, values);
  for (const char* bad : {"abcdefghijkl 5\n", "abcdefghijkl\t\n", "abcdefghijkl\t-5\n", "ABCDEFGHIJKL\t5\n",
                          "abcdefghijkl\t5x\n", "abcdefghijkl\t9999999999999999999\n"}) {
    writeFile(path, bad);
    EXPECT_FALSE(readLastUse(path, back, error)) << bad;
    EXPECT_TRUE(back.empty());
  }
  writeFile(path, "# c\n\nabcdefghijkl\t5\nabcdefghijkl\t7\nabcdefghijkl\t6");
  ASSERT_TRUE(readLastUse(path, back, error)) << error;
  EXPECT_EQ(back["abcdefghijkl"], 7);
}

TEST(TokenStoreTest, NameRules) {
  EXPECT_TRUE(isValidAccountName("ACME"));
  EXPECT_TRUE(isValidAccountName("a.b_c-d9"));
  EXPECT_TRUE(isValidAccountName(std::string(64, 'a')));
  EXPECT_FALSE(isValidAccountName(std::string(65, 'a')));
  EXPECT_FALSE(isValidAccountName(""));
  EXPECT_FALSE(isValidAccountName("."));
  EXPECT_FALSE(isValidAccountName(".."));
  EXPECT_FALSE(isValidAccountName("-x"));
  EXPECT_FALSE(isValidAccountName("a/b"));
  EXPECT_FALSE(isValidAccountName("a b"));
  EXPECT_FALSE(isValidAccountName("a%2f"));
  EXPECT_FALSE(isValidAccountName("{account}"));
  EXPECT_FALSE(isValidRoleName("a,b"));
  EXPECT_TRUE(isValidLabel(""));
  EXPECT_FALSE(isValidLabel("\x7f"));
  EXPECT_FALSE(isValidLabel(std::string(129, 'a')));
  EXPECT_EQ(formatRfc3339(0), "1970-01-01T00:00:00Z");
  EXPECT_EQ(formatRfc3339(1764867600), "2025-12-04T17:00:00Z");
}

}  // namespace
}  // namespace portcullis

namespace portcullis {
namespace {

TEST(TokenStoreRoundTrip, EarlyYearsAreWrittenWithFourDigits) {
  // Found by fuzz/token_fuzz.cc: a year below 1000 parsed but was written
  // back as "759-...", which is not TOML.
  const std::string text =
      "[[token]]\nid = \"abcdefghijkl\"\n"
      "secret_sha256 = \"0101010101010101010101010101010101010101010101010101010101010101\"\n"
      "account = \"ACME\"\nroles = [\"reader\"]\ncreated = 0759-12-04T17:00:00Z\n"
      "expires = 2026-03-04T17:00:00Z\nrevoked = false\n";
  std::vector<TokenRecord> records;
  std::string error;
  ASSERT_TRUE(parseTokenStore(text, "t", records, error)) << error;
  const std::string again = serializeTokenStore(records);
  EXPECT_NE(again.find("created = 0759-12-04T17:00:00Z"), std::string::npos) << again;
  std::vector<TokenRecord> records2;
  ASSERT_TRUE(parseTokenStore(again, "again", records2, error)) << error;
  EXPECT_EQ(serializeTokenStore(records2), again);
}

}  // namespace
}  // namespace portcullis

namespace portcullis {
namespace {

// InMemoryRevocations (auth_state.h): marked in a copy that keeps indices and
// the last-use table; pruned only against what the store itself says.
TEST(InMemoryRevocations, MarkedInACopyAndDroppedOnceTheStoreRevokesThem) {
  AuthState a;
  std::string error;
  TokenRecord gone_revoked = makeRecord("cbcdefghijkl", 3);
  gone_revoked.revoked = true;
  a.tokens = TokenTable::build({makeRecord("abcdefghijkl", 1), makeRecord("bbcdefghijkl", 2), gone_revoked}, error);
  ASSERT_TRUE(a.tokens) << error;
  a.last_use = std::make_shared<LastUseTable>(3);
  InMemoryRevocations revoked{{"bbcdefghijkl", {false, 1}}, {"cbcdefghijkl", {true, 1}}, {"zzzzzzzzzzzz", {true, 1}}};

  std::shared_ptr<const AuthState> b = withInMemoryRevocations(a, revoked, /*from_store=*/false);
  ASSERT_TRUE(b);
  EXPECT_FALSE(a.tokens->find("bbcdefghijkl")->revoked) << "the running state is immutable";
  EXPECT_TRUE(b->tokens->find("bbcdefghijkl")->revoked);
  EXPECT_FALSE(b->tokens->find("abcdefghijkl")->revoked);
  EXPECT_EQ(b->tokens->indexOf("bbcdefghijkl"), a.tokens->indexOf("bbcdefghijkl"));
  EXPECT_EQ(b->last_use, a.last_use);
  EXPECT_EQ(revoked.size(), 3u) << "nothing is dropped without a store read";
  EXPECT_FALSE(withInMemoryRevocations(*b, revoked, /*from_store=*/false)) << "nothing left to mark";

  // A store read drops the one it revokes itself; the one it lacks stays
  // (a later store may have it again).
  b = withInMemoryRevocations(a, revoked, /*from_store=*/true);
  ASSERT_TRUE(b);
  EXPECT_TRUE(b->tokens->find("bbcdefghijkl")->revoked);
  EXPECT_EQ(revoked.size(), 2u);
  EXPECT_EQ(revoked.count("bbcdefghijkl"), 1u);
  EXPECT_EQ(revoked.count("zzzzzzzzzzzz"), 1u);
}

}  // namespace
}  // namespace portcullis
