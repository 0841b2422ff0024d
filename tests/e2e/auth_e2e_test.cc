// Token authentication and RBAC end to end (SPEC §3 [auth] [[role]], §4-§6):
// every refusal has its exact status and challenge, the backend sees nothing
// of refused requests, identity headers come from the token only, tenants
// cannot reach each other, and a revocation stops an open connection.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <vector>
#include <string>
#include <thread>

#include "proxy/token_store.h"
#include "tests/e2e/harness.h"

namespace portcullis::e2e {
namespace {

// Runs portcullisctl and returns its stdout (trimmed); fails the test on a
// non-zero exit.
std::string ctl(const std::string& args) {
  const std::string cmd = std::string(PORTCULLISCTL_BIN) + " " + args + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[512];
  while (p != nullptr && fgets(buf, sizeof(buf), p) != nullptr) out += buf;
  const int st = p != nullptr ? pclose(p) : -1;
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << cmd;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

std::string bearer(const std::string& token) { return "Authorization: Bearer " + token + "\r\n"; }

std::string tokenId(const std::string& token) { return token.substr(4, 12); }

class AuthE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = dir_.file("tokens.toml");
    acme_ = ctl("token issue --store " + store_ + " --account acme --role reader --role uploader --label test");
    beta_ = ctl("token issue --store " + store_ + " --account beta --role reader");
    ASSERT_EQ(acme_.size(), 4u + 12u + 1u + 43u) << acme_;
    ProxyOptions o = ProxyOptions::forBackend(backend_.address());
    RouteSpec api{"/v1/", "app", {}, 0, "", true};
    RouteSpec open{"/public/", "app", {}, 0, ""};
    o.routes = {api, open};
    o.extra_toml = "[auth]\ntoken_store = \"" + store_ + "\"\n" +
                   "[[role]]\nname = \"reader\"\nallow = [\"GET /v1/accounts/{account}/*\", \"GET /v1/status\"]\n"
                   "[[role]]\nname = \"uploader\"\nallow = [\"POST /v1/accounts/{account}/uploads\"]\n";
    proxy_ = std::make_unique<Proxy>(o);
  }

  TempDir dir_;
  std::string store_;
  std::string acme_, beta_;
  DemoBackend backend_;
  std::unique_ptr<Proxy> proxy_;
};

TEST_F(AuthE2E, MissingOrBadTokensGet401WithTheRightChallenge) {
  const uint64_t before = backend_.requests();
  Client c(proxy_->httpPort());
  HttpResponse none = c.roundTrip(getRequest("/v1/status"));
  expectProxyError(none, 401, "unauthorized");
  EXPECT_EQ(none.header("www-authenticate").value_or(""), "Bearer");

  // A wrong last secret character: flip it between two canonical values.
  std::string wrong = acme_;
  wrong[wrong.size() - 2] = wrong[wrong.size() - 2] == 'A' ? 'B' : 'A';
  const std::vector<std::string> bads = {"Bearer pct_notatoken", "Basic dXNlcjpwYXNz", "Bearer " + wrong,
                                         "Bearer pct_aaaaaaaaaaaa_" + acme_.substr(17)};
  for (const std::string& bad : bads) {
    SCOPED_TRACE(bad);
    HttpResponse r = c.roundTrip(getRequest("/v1/status", "Authorization: " + bad + "\r\n"));
    expectProxyError(r, 401, "unauthorized");
    EXPECT_EQ(r.header("www-authenticate").value_or(""), "Bearer error=\"invalid_token\"");
  }
  EXPECT_EQ(backend_.requests(), before) << "a refused request reached the backend";
  // Public routes need nothing.
  EXPECT_EQ(c.roundTrip(getRequest("/public/x")).status, 200);
}

TEST_F(AuthE2E, ValidTokenGetsThroughWithIdentityFromTheTokenOnly) {
  Client c(proxy_->httpPort());
  HttpResponse r = c.roundTrip(getRequest(
      "/v1/accounts/acme/orders", bearer(acme_) + "X-Portcullis-Account: beta\r\nX-Portcullis-Roles: admin\r\n"));
  ASSERT_EQ(r.status, 200) << r.body;
  std::optional<Echo> echo = parseEcho(r.body);
  ASSERT_TRUE(echo.has_value()) << r.body;
  EXPECT_EQ(echo->headers["x-portcullis-account"], "acme");
  EXPECT_EQ(echo->headers["x-portcullis-token-id"], tokenId(acme_));
  EXPECT_EQ(echo->headers["x-portcullis-roles"], "reader,uploader");
  EXPECT_EQ(echo->headers.count("authorization"), 0u) << "the credential is not forwarded";
  EXPECT_EQ(r.body.find(acme_.substr(22)), std::string::npos);
}

TEST_F(AuthE2E, TenantsCannotReachEachOtherAndRolesAreLeastPrivilege) {
  const uint64_t before = backend_.requests();
  Client c(proxy_->httpPort());
  expectProxyError(c.roundTrip(getRequest("/v1/accounts/beta/orders", bearer(acme_))), 403, "forbidden");
  expectProxyError(c.roundTrip(getRequest("/v1/accounts/acme/orders", bearer(beta_))), 403, "forbidden");
  EXPECT_EQ(backend_.requests(), before) << "a refused request reached the backend";
  EXPECT_EQ(c.roundTrip(getRequest("/v1/accounts/beta/orders", bearer(beta_))).status, 200);
  // Traversal cannot borrow another tenant's path: normalised first.
  expectProxyError(c.roundTrip(getRequest("/v1/accounts/acme/../beta/orders", bearer(acme_))), 403, "forbidden");
  // beta is only a reader: no uploads, not even to its own account. (A
  // refusal with an unread body closes the connection, so this goes last.)
  HttpResponse up = c.roundTrip("POST /v1/accounts/beta/uploads HTTP/1.1\r\nHost: e2e.test\r\n" + bearer(beta_) +
                                "Content-Length: 2\r\n\r\nhi");
  expectProxyError(up, 403, "forbidden");
  EXPECT_EQ(backend_.requests(), before + 1) << "only the allowed request reached the backend";
}

TEST_F(AuthE2E, RevocationStopsAnOpenConnectionWithoutASignal) {
  Client c(proxy_->httpPort());
  ASSERT_EQ(c.roundTrip(getRequest("/v1/status", bearer(acme_))).status, 200);
  ctl("token revoke --store " + store_ + " " + tokenId(acme_));
  // auth.watch (default on) picks the change up within about a second.
  int status = 200;
  for (int i = 0; i < 60 && status == 200; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    status = c.roundTrip(getRequest("/v1/status", bearer(acme_))).status;
  }
  EXPECT_EQ(status, 401) << "revoked token still accepted on the same keep-alive connection";
  const uint64_t before = backend_.requests();
  expectProxyError(c.roundTrip(getRequest("/v1/status", bearer(acme_))), 401, "unauthorized");
  EXPECT_EQ(backend_.requests(), before) << "a revoked token's request reached the backend";
  EXPECT_EQ(c.roundTrip(getRequest("/v1/status", bearer(beta_))).status, 200) << "others are unaffected";
  // The change was seen by the directory watch (inotify), not only by the
  // once-a-second stat.
  EXPECT_GT(proxy_->metricOr0("portcullis_file_watch_events_total"), 0);
}

// What the backend gets of the client's credentials and claimed identity,
// on every route (SPEC §3 account_header, §6): the Authorization header
// never (forward_authorization is off), a client copy of a custom
// account_header never, not even on a route without `auth`; a second
// Authorization header is refused (only one is ever checked), and so is a
// dot segment with path parameters ("..;"), which Tomcat-like backends
// resolve after the proxy routed and authorised the path as a name.
TEST(AuthHeadersE2E, CredentialsAndClaimedIdentityNeverPassOnAnyRoute) {
  TempDir dir;
  DemoBackend backend;
  const std::string store = dir.file("tokens.toml");
  const std::string acme = ctl("token issue --store " + store + " --account acme --role reader");
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  RouteSpec api{"/v1/", "app", {}, 0, "", true};
  RouteSpec open{"/public/", "app", {}, 0, ""};
  o.routes = {api, open};
  o.extra_toml = "[auth]\ntoken_store = \"" + store + "\"\naccount_header = \"X-Tenant\"\n" +
                 "[[role]]\nname = \"reader\"\nallow = [\"GET /v1/accounts/{account}/*\"]\n";
  Proxy proxy(o);
  Client c(proxy.httpPort());

  HttpResponse pub = c.roundTrip(getRequest("/public/x", bearer(acme) + "X-Tenant: beta\r\nx-tenant: beta\r\n"));
  ASSERT_EQ(pub.status, 200) << pub.body;
  std::optional<Echo> e = parseEcho(pub.body);
  ASSERT_TRUE(e.has_value()) << pub.body;
  EXPECT_EQ(e->headers.count("authorization"), 0u) << "a token reached a public route's backend";
  EXPECT_EQ(e->headers.count("x-tenant"), 0u) << "a claimed account reached the backend";

  HttpResponse own = c.roundTrip(getRequest("/v1/accounts/acme/orders", bearer(acme) + "X-Tenant: beta\r\n"));
  ASSERT_EQ(own.status, 200) << own.body;
  e = parseEcho(own.body);
  ASSERT_TRUE(e.has_value()) << own.body;
  EXPECT_EQ(e->headers["x-tenant"], "acme");
  EXPECT_EQ(e->headers.count("authorization"), 0u);

  const uint64_t before = backend.requests();
  expectProxyError(c.roundTrip(getRequest("/v1/accounts/acme/orders", bearer(acme) + "Authorization: Bearer x\r\n")),
                   400, "bad_request");
  expectProxyError(c.roundTrip(getRequest("/v1/accounts/acme/orders", "Authorization: Bearer x\r\n" + bearer(acme))),
                   400, "bad_request");
  for (const char* path : {"/v1/accounts/acme/..;/beta/x", "/v1/accounts/acme/..;jsessionid=1/beta/x",
                           "/v1/accounts/acme/%2e%2e%3B/beta/x", "/public/..;/v1/accounts/beta/x"}) {
    expectProxyError(c.roundTrip(getRequest(path, bearer(acme))), 400, "bad_request");
  }
  EXPECT_EQ(backend.requests(), before) << "a refused request reached the backend";
}

TEST(AuthInactivityE2E, TokenUnusedTooLongIsRefused) {
  TempDir dir;
  const std::string store = dir.file("tokens.toml");
  const std::string token = ctl("token issue --store " + store + " --account acme --role reader");
  const std::string fresh = ctl("token issue --store " + store + " --account acme --role reader");
  // The token is 60 days old and was last used 40 days ago, as the state
  // file of an earlier run recorded it.
  {
    std::ifstream in(store);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<TokenRecord> recs;
    std::string perr;
    ASSERT_TRUE(parseTokenStore(text, store, recs, perr)) << perr;
    for (TokenRecord& r : recs) r.created = unixNow() - 60 * 86400;
    std::ofstream(store, std::ios::trunc) << serializeTokenStore(recs);
  }
  std::string state = dir.file("state");
  ::mkdir(state.c_str(), 0700);
  // `fresh` was used yesterday: only the state file says so, so it proves
  // the file is read back at start.
  std::unordered_map<std::string, int64_t> last{{tokenId(token), unixNow() - 40 * 86400},
                                                {tokenId(fresh), unixNow() - 86400}};
  std::string err;
  ASSERT_TRUE(writeLastUse(lastUsePath(state), last, err)) << err;
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.routes = {RouteSpec{"/", "app", {}, 0, "", true}};
  o.extra_toml = "[auth]\ntoken_store = \"" + store + "\"\ninactive_expiry_days = 30\n" +
                 "[[role]]\nname = \"reader\"\nallow = [\"GET /*\"]\n";
  o.state_dir = state;
  Proxy proxy(o);
  Client c(proxy.httpPort());
  HttpResponse r = c.roundTrip(getRequest("/x", bearer(token)));
  expectProxyError(r, 401, "unauthorized");
  EXPECT_EQ(backend.requests(), 0u) << "an inactive token's request reached the backend";
  EXPECT_EQ(c.roundTrip(getRequest("/x", bearer(fresh))).status, 200);
}

TEST(AuthLastUseE2E, LastUseIsWrittenToTheStateDirAtShutdown) {
  TempDir dir;
  const std::string store = dir.file("tokens.toml");
  const std::string token = ctl("token issue --store " + store + " --account acme --role reader");
  const std::string state = dir.file("state");
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.routes = {RouteSpec{"/", "app", {}, 0, "", true}};
  o.extra_toml = "[auth]\ntoken_store = \"" + store + "\"\n[[role]]\nname = \"reader\"\nallow = [\"GET /*\"]\n";
  o.state_dir = state;
  {
    Proxy proxy(o);
    Client c(proxy.httpPort());
    ASSERT_EQ(c.roundTrip(getRequest("/x", bearer(token))).status, 200);
  }  // SIGTERM: drains and flushes
  std::unordered_map<std::string, int64_t> last;
  std::string err;
  ASSERT_TRUE(readLastUse(lastUsePath(state), last, err)) << err;
  ASSERT_EQ(last.count(tokenId(token)), 1u);
  EXPECT_GE(last[tokenId(token)], unixNow() - 60);
  const std::string listing = ctl("token list --store " + store + " --state-dir " + state);
  EXPECT_NE(listing.find(tokenId(token)), std::string::npos) << listing;
  EXPECT_EQ(listing.find(token.substr(17)), std::string::npos) << "list never shows secrets";
}

}  // namespace
}  // namespace portcullis::e2e

namespace portcullis::e2e {
namespace {

TEST(AuthPlaintextE2E, ValidTokenSentOverPlaintextIsRevoked) {
  TempDir dir;
  const std::string store = dir.file("tokens.toml");
  const std::string token = ctl("token issue --store " + store + " --account acme --role reader");
  const std::string other = ctl("token issue --store " + store + " --account acme --role reader");
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.routes = {RouteSpec{"/", "app", {}, 0, "", true}};
  // The loopback peer stands in for a TLS-terminating load balancer: with
  // X-Forwarded-Proto: https its requests count as HTTPS.
  o.https_toml = "plaintext = \"redirect\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n";
  o.extra_toml = "[auth]\ntoken_store = \"" + store + "\"\n[[role]]\nname = \"reader\"\nallow = [\"GET /*\"]\n";
  Proxy proxy(o);
  Client c(proxy.httpPort());
  const std::string via_tls = "X-Forwarded-Proto: https\r\n";
  ASSERT_EQ(c.roundTrip(getRequest("/x", via_tls + bearer(token))).status, 200);
  // The same token in a plaintext request: refused (308) and revoked.
  EXPECT_EQ(c.roundTrip(getRequest("/x", bearer(token))).status, 308);
  int status = 200;
  for (int i = 0; i < 60 && status == 200; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    status = c.roundTrip(getRequest("/x", via_tls + bearer(token))).status;
  }
  EXPECT_EQ(status, 401);
  EXPECT_EQ(c.roundTrip(getRequest("/x", via_tls + bearer(other))).status, 200) << "only the exposed token";
  EXPECT_NE(ctl("token list --store " + store).find("revoked"), std::string::npos);
  EXPECT_NE(proxy.process().stderrText().find("token.plaintext_revoked token_id=" + tokenId(token)),
            std::string::npos);
  // Audited: the revocation, then the revoked token's use.
  const std::string id = "\"token_id\":\"" + tokenId(token) + "\"";
  std::string audit;
  for (int i = 0; i < 100 && audit.find("token.revoked_used") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::ifstream f(proxy.dir().file("audit.log"));
    audit.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  const size_t revoked = audit.find("\"event\":\"token.plaintext_revoked\"");
  const size_t used = audit.find("\"event\":\"token.revoked_used\"");
  ASSERT_NE(revoked, std::string::npos) << audit;
  ASSERT_NE(used, std::string::npos) << audit;
  EXPECT_LT(revoked, used);
  EXPECT_NE(audit.find(id, revoked), std::string::npos);
  EXPECT_NE(audit.find(id, used), std::string::npos);
}

}  // namespace
}  // namespace portcullis::e2e
