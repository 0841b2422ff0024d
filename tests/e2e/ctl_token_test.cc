// portcullisctl token issue|revoke|rotate|list, driven as a real binary in a
// temporary directory.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "proxy/token.h"
#include "proxy/token_store.h"

namespace portcullis {
namespace {

namespace fs = std::filesystem;

// True for exactly "pct_" + 12 of [a-z2-7] + "_" + 43 of [A-Za-z0-9_-].
bool looksLikeToken(const std::string& s) {
  if (s.size() != 60 || s.compare(0, 4, "pct_") != 0 || s[16] != '_') return false;
  for (size_t i = 4; i < 16; ++i) {
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '2' && s[i] <= '7'))) return false;
  }
  for (size_t i = 17; i < 60; ++i) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) {
      return false;
    }
  }
  return true;
}

struct Result {
  int rc = -1;
  std::string out;
  std::string err;
};

// Runs portcullisctl with `args`, capturing stdout and stderr.
Result ctl(const std::vector<std::string>& args) {
  int out_pipe[2], err_pipe[2];
  EXPECT_EQ(::pipe2(out_pipe, O_CLOEXEC), 0);
  EXPECT_EQ(::pipe2(err_pipe, O_CLOEXEC), 0);
  std::vector<std::string> argv_s = {PORTCULLISCTL_BIN};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& s : argv_s) argv.push_back(s.data());
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out_pipe[1], 1);
    ::dup2(err_pipe[1], 2);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  Result r;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0) {
    if (::poll(fds, 2, 30000) <= 0) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[4096];
      ssize_t n = ::read(fds[i].fd, buf, sizeof(buf));
      if (n <= 0) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      } else {
        (i == 0 ? r.out : r.err).append(buf, static_cast<size_t>(n));
      }
    }
  }
  for (auto& f : fds) {
    if (f.fd >= 0) ::close(f.fd);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// True when `out` is exactly one token line.
bool isOneTokenLine(const std::string& out) {
  return out.size() == 61 && out.back() == '\n' && looksLikeToken(out.substr(0, 60));
}

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class CtlTokenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "pc_ctl_token_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    store_ = dir_ + "/tokens.toml";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  // Issues a token and returns it (checks the output shape on the way).
  std::string issue(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"token", "issue", "--store", store_, "--account", "ACME", "--role", "uploader"};
    args.insert(args.end(), extra.begin(), extra.end());
    Result r = ctl(args);
    EXPECT_EQ(r.rc, 0) << r.err;
    EXPECT_TRUE(isOneTokenLine(r.out)) << "stdout: [" << r.out << "]";
    std::string token = r.out.substr(0, r.out.size() - 1);
    EXPECT_EQ(r.err.find(token.substr(17)), std::string::npos) << "secret on stderr";
    return token;
  }
  std::string idOf(const std::string& token) { return token.substr(4, 12); }
  std::string secretOf(const std::string& token) { return token.substr(17); }

  std::string dir_;
  std::string store_;
};

TEST_F(CtlTokenTest, IssuePrintsOneTokenAndStoresOnlyTheHash) {
  std::string token = issue({"--role", "reader", "--ttl", "12h", "--label", "ci runner"});
  struct stat st;
  ASSERT_EQ(::stat(store_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::string text = readFile(store_);
  EXPECT_EQ(text.find(secretOf(token)), std::string::npos);
  EXPECT_EQ(text.find(token), std::string::npos);
  ParsedToken p;
  ASSERT_EQ(parseToken(token, p), TokenError::kOk);
  EXPECT_NE(text.find(secretHashToHex(hashSecret(p.secret))), std::string::npos);
  std::string error;
  auto table = loadTokenStore(store_, error);
  ASSERT_TRUE(table) << error;
  const TokenRecord* r = table->find(p.id);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->account, "ACME");
  EXPECT_EQ(r->roles, (std::vector<std::string>{"uploader", "reader"}));
  EXPECT_EQ(r->expires - r->created, 12 * 3600);
  EXPECT_EQ(r->label, "ci runner");
  EXPECT_EQ(table->check(p.id, hashSecret(p.secret), unixNow(), 0, 90 * 86400), TokenVerdict::kOk);
  // Default ttl is 90 days.
  std::string t2 = issue();
  table = loadTokenStore(store_, error);
  ASSERT_TRUE(table);
  r = table->find(idOf(t2));
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->expires - r->created, 90 * 86400);
  EXPECT_EQ(table->size(), 2u);
}

TEST_F(CtlTokenTest, IssueValidatesInput) {
  const std::vector<std::vector<std::string>> bad = {
      {"token", "issue", "--store", store_, "--role", "r"},                                  // no account
      {"token", "issue", "--store", store_, "--account", "ACME"},                           // no role
      {"token", "issue", "--account", "ACME", "--role", "r"},                              // no store
      {"token", "issue", "--store", store_, "--account", "../x", "--role", "r"},           // bad account
      {"token", "issue", "--store", store_, "--account", "ACME", "--role", "a b"},         // bad role
      {"token", "issue", "--store", store_, "--account", "ACME", "--role", "r", "--ttl", "90"},
      {"token", "issue", "--store", store_, "--account", "ACME", "--role", "r", "--ttl", "0d"},
      {"token", "issue", "--store", store_, "--account", "ACME", "--role", "r", "--ttl", "1w"},
      {"token", "issue", "--store", store_, "--account", "ACME", "--role", "r", "--ttl", "-5d"},
      {"token", "issue", "--store", store_, "--account", "ACME", "--role", "r", "--ttl", "99999d"},
      {"token", "issue", "--store", store_, "--account", "ACME", "--role", "r", "--bogus", "x"},
      {"token", "issue", "--store", store_, "--account", "ACME", "--role", "r", "extra"},
      {"token", "issue", "--store", store_, "--account", "A", "--account", "B", "--role", "r"},
      {"token", "issue", "--store", store_, "--account", "ACME", "--role", "r", "--label", "a\nb"},
      {"token", "frobnicate"},
      {"token"},
  };
  for (const auto& args : bad) {
    Result r = ctl(args);
    EXPECT_NE(r.rc, 0) << args.size();
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
  EXPECT_FALSE(fs::exists(store_));
  // A store in a missing directory is an error, not a crash.
  Result r = ctl({"token", "issue", "--store", dir_ + "/no/such/dir/t.toml", "--account", "A", "--role", "r"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_TRUE(r.out.empty());
}

TEST_F(CtlTokenTest, RevokeRotateAndList) {
  std::string t1 = issue();
  std::string t2 = issue({"--label", "second"});
  Result r = ctl({"token", "revoke", "--store", store_, idOf(t1)});
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(r.out.empty());
  r = ctl({"token", "revoke", "--store", store_, idOf(t1)});
  EXPECT_EQ(r.rc, 0) << r.err;  // idempotent
  r = ctl({"token", "revoke", "--store", store_, "zzzzzzzzzzzz"});
  EXPECT_EQ(r.rc, 1);
  r = ctl({"token", "revoke", "--store", store_, "not-an-id"});
  EXPECT_EQ(r.rc, 2);

  r = ctl({"token", "rotate", "--store", store_, idOf(t2), "--grace", "1h"});
  ASSERT_EQ(r.rc, 0) << r.err;
  ASSERT_TRUE(isOneTokenLine(r.out)) << r.out;
  std::string t2b = r.out.substr(0, r.out.size() - 1);
  EXPECT_EQ(idOf(t2b), idOf(t2));
  EXPECT_NE(t2b, t2);
  r = ctl({"token", "rotate", "--store", store_, idOf(t1)});
  EXPECT_EQ(r.rc, 1);  // revoked
  EXPECT_TRUE(r.out.empty());
  r = ctl({"token", "rotate", "--store", store_, idOf(t2), "--grace", "x"});
  EXPECT_EQ(r.rc, 2);

  std::string error;
  auto table = loadTokenStore(store_, error);
  ASSERT_TRUE(table) << error;
  ParsedToken p1, p2, p2b;
  ASSERT_EQ(parseToken(t1, p1), TokenError::kOk);
  ASSERT_EQ(parseToken(t2, p2), TokenError::kOk);
  ASSERT_EQ(parseToken(t2b, p2b), TokenError::kOk);
  const int64_t now = unixNow();
  EXPECT_EQ(table->check(p1.id, hashSecret(p1.secret), now, 0, 0), TokenVerdict::kRevoked);
  EXPECT_EQ(table->check(p2.id, hashSecret(p2.secret), now, 0, 0), TokenVerdict::kOk);
  EXPECT_EQ(table->check(p2.id, hashSecret(p2.secret), now + 3601, 0, 0), TokenVerdict::kRotatedOut);
  EXPECT_EQ(table->check(p2.id, hashSecret(p2b.secret), now + 3601, 0, 0), TokenVerdict::kOk);

  // list: ids, accounts, states; never secrets or hashes.
  std::string state_dir = dir_ + "/state";
  fs::create_directories(state_dir);
  std::unordered_map<std::string, int64_t> last_use = {{idOf(t2), now - 100}};
  ASSERT_TRUE(writeLastUse(lastUsePath(state_dir), last_use, error)) << error;
  r = ctl({"token", "list", "--store", store_, "--state-dir", state_dir});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("ID"), std::string::npos);
  EXPECT_NE(r.out.find("LAST_USE"), std::string::npos);
  EXPECT_NE(r.out.find(idOf(t1)), std::string::npos);
  EXPECT_NE(r.out.find(idOf(t2)), std::string::npos);
  EXPECT_NE(r.out.find("revoked"), std::string::npos);
  EXPECT_NE(r.out.find("rotating"), std::string::npos);
  EXPECT_NE(r.out.find("never"), std::string::npos);
  EXPECT_NE(r.out.find(formatRfc3339(now - 100)), std::string::npos);
  EXPECT_NE(r.out.find("uploader"), std::string::npos);
  EXPECT_NE(r.out.find("second"), std::string::npos);
  std::string text = readFile(store_);
  for (const std::string& t : {t1, t2, t2b}) {
    EXPECT_EQ(r.out.find(secretOf(t)), std::string::npos);
    EXPECT_EQ(r.err.find(secretOf(t)), std::string::npos);
    EXPECT_EQ(text.find(secretOf(t)), std::string::npos);
  }
  for (const TokenRecord& rec : table->records()) {
    EXPECT_EQ(r.out.find(secretHashToHex(rec.secret_sha256)), std::string::npos);
    if (rec.has_previous) {
      EXPECT_EQ(r.out.find(secretHashToHex(rec.previous_sha256)), std::string::npos);
    }
  }
  // Without a state dir, last use is unknown.
  r = ctl({"token", "list", "--store", store_});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out.find("never"), std::string::npos);
  // Inactivity shows when the state says so (the token is back-dated through
  // the library's writer so that a use 10 days ago is possible).
  ASSERT_TRUE(updateTokenStore(
      store_,
      [&](std::vector<TokenRecord>& recs, std::string&) {
        for (TokenRecord& rec : recs) {
          if (rec.id == idOf(t2)) rec.created = now - 20 * 86400;
        }
        return true;
      },
      error))
      << error;
  last_use[idOf(t2)] = now - 10 * 86400;
  ASSERT_TRUE(writeLastUse(lastUsePath(state_dir), last_use, error));
  r = ctl({"token", "list", "--store", store_, "--state-dir", state_dir, "--inactive-days", "5"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("inactive"), std::string::npos) << r.out;
  r = ctl({"token", "list", "--store", store_, "--state-dir", state_dir, "--inactive-days", "15"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out.find("inactive"), std::string::npos) << r.out;
}

TEST_F(CtlTokenTest, TooOpenStoreIsRefused) {
  issue();
  ASSERT_EQ(::chmod(store_.c_str(), 0644), 0);
  Result r = ctl({"token", "list", "--store", store_});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("0644"), std::string::npos) << r.err;
  r = ctl({"token", "issue", "--store", store_, "--account", "ACME", "--role", "r"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_TRUE(r.out.empty());
}

TEST_F(CtlTokenTest, ConcurrentInvocationsAllLand) {
  constexpr int kThreads = 4;
  constexpr int kEach = 5;
  std::vector<std::thread> threads;
  std::vector<std::vector<std::string>> tokens(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        Result r = ctl({"token", "issue", "--store", store_, "--account", "T" + std::to_string(t), "--role", "r"});
        if (r.rc == 0) tokens[t].push_back(r.out.substr(0, r.out.size() - 1));
      }
    });
  }
  for (auto& th : threads) th.join();
  std::string error;
  auto table = loadTokenStore(store_, error);
  ASSERT_TRUE(table) << error;
  EXPECT_EQ(table->size(), static_cast<size_t>(kThreads * kEach));
  for (const auto& list : tokens) {
    EXPECT_EQ(list.size(), static_cast<size_t>(kEach));
    for (const std::string& tok : list) {
      ParsedToken p;
      ASSERT_EQ(parseToken(tok, p), TokenError::kOk);
      EXPECT_EQ(table->check(p.id, hashSecret(p.secret), unixNow(), 0, 0), TokenVerdict::kOk);
    }
  }
}

}  // namespace
}  // namespace portcullis
