// Rate limiting end to end (SPEC §3 [rate_limit], §5): per-IP limits before
// authentication, per-token limits (role overrides), the brute-force lockout,
// 429 with Retry-After and the RateLimit fields, and nothing limited reaches
// the backend. IPv6 clients over real IPv6 sockets: one budget per /64, proved
// with distinct source addresses in a private network namespace (root only).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

#include "tests/e2e/harness.h"

namespace portcullis::e2e {
namespace {

std::string bearer(const std::string& t) { return "Authorization: Bearer " + t + "\r\n"; }

TEST(RateLimitE2E, IpLimitBurstThen429WithHeaders) {
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  // 3 at once, then one every 100 s: the 4th within the test is refused.
  o.extra_toml = "[rate_limit]\nip = { rps = 0.01, burst = 3 }\n";
  Proxy proxy(o);
  Client c(proxy.httpPort());
  for (int i = 0; i < 3; ++i) {
    HttpResponse r = c.roundTrip(getRequest("/ok"));
    ASSERT_EQ(r.status, 200) << i;
    EXPECT_EQ(r.header("ratelimit-policy").value_or(""), "\"ip\";q=3;w=300");
    EXPECT_EQ(r.header("ratelimit").value_or("").rfind("\"ip\";r=" + std::to_string(2 - i) + ";t=", 0), 0u)
        << r.header("ratelimit").value_or("");
  }
  ASSERT_EQ(backend.requests(), 3u);
  HttpResponse limited = c.roundTrip(getRequest("/too-many"));
  expectProxyError(limited, 429, "rate_limited");
  const int retry = std::atoi(limited.header("retry-after").value_or("0").c_str());
  EXPECT_GE(retry, 90);
  EXPECT_LE(retry, 101);
  EXPECT_EQ(limited.header("ratelimit").value_or("").rfind("\"ip\";r=0;t=", 0), 0u);
  EXPECT_EQ(backend.requests(), 3u) << "a limited request reached the backend";
  // Nothing limited reached the backend: it echoed exactly 3 requests.
  EXPECT_EQ(proxy.waitForMetric("portcullis_requests_total{route=\"/\",method=\"GET\",status=\"200\"}", 3), 3);
  EXPECT_EQ(proxy.waitForMetric("portcullis_requests_total{route=\"/\",method=\"GET\",status=\"429\"}", 1), 1);
}

TEST(RateLimitE2E, IpLimitRecoversAfterItsInterval) {
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.extra_toml = "[rate_limit]\nip = { rps = 1, burst = 1 }\n";  // one request a second
  Proxy proxy(o);
  Client c(proxy.httpPort());
  EXPECT_EQ(c.roundTrip(getRequest("/a")).status, 200);
  HttpResponse limited = c.roundTrip(getRequest("/b"));
  expectProxyError(limited, 429, "rate_limited");
  EXPECT_EQ(limited.header("retry-after").value_or(""), "1") << "whole seconds, at least 1, never early";
  // The next request is allowed 1 s after the first: come back after the
  // Retry-After the proxy gave.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  EXPECT_EQ(c.roundTrip(getRequest("/c")).status, 200) << "no recovery after the interval";
}

TEST(RateLimitE2E, PerRouteLimitIsPerClientAndOnlyOnItsRoute) {
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  RouteSpec search;
  search.prefix = "/search";
  search.extra_toml = "rate = { rps = 0.01, burst = 2 }\n";
  o.routes = {search, RouteSpec{}};
  Proxy proxy(o);
  Client c(proxy.httpPort());
  for (int i = 0; i < 2; ++i) {
    HttpResponse r = c.roundTrip(getRequest("/search?q=" + std::to_string(i)));
    ASSERT_EQ(r.status, 200) << i;
    EXPECT_EQ(r.header("ratelimit-policy").value_or(""), "\"route\";q=2;w=200");
  }
  HttpResponse limited = c.roundTrip(getRequest("/search?q=3"));
  expectProxyError(limited, 429, "rate_limited");
  EXPECT_GE(std::atoi(limited.header("retry-after").value_or("0").c_str()), 90);
  // Other routes are not limited, and carry no route policy.
  for (int i = 0; i < 5; ++i) {
    HttpResponse r = c.roundTrip(getRequest("/other"));
    ASSERT_EQ(r.status, 200);
    EXPECT_FALSE(r.hasHeader("ratelimit-policy"));
  }
  EXPECT_EQ(backend.requests(), 7u) << "the limited request never reached the backend";
  EXPECT_EQ(proxy.waitForMetric("portcullis_ratelimit_allowed_total{kind=\"route\"}", 2), 2);
  EXPECT_EQ(proxy.metricOr0("portcullis_refusals_total{filter=\"rate_limit\",reason=\"route rate\"}"), 1);
  EXPECT_GT(proxy.metricOr0("portcullis_ratelimit_cells"), 0);
  EXPECT_GE(proxy.metricOr0("portcullis_ratelimit_keys"), 1);
}

class TokenRateE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = dir_.file("tokens.toml");
    a_ = ctlIssue(store_, "acme", "reader");
    b_ = ctlIssue(store_, "beta", "reader");
    fast_ = ctlIssue(store_, "gamma", "bulk");
    ProxyOptions o = ProxyOptions::forBackend(backend_.address());
    o.routes = {RouteSpec{"/", "app", {}, 0, "", true}};
    o.extra_toml = "[auth]\ntoken_store = \"" + store_ + "\"\n" +
                   "[[role]]\nname = \"reader\"\nallow = [\"GET /*\"]\n"
                   "[[role]]\nname = \"bulk\"\nallow = [\"GET /*\"]\nrate = { rps = 0.01, burst = 5 }\n"
                   "[rate_limit]\ntoken = { rps = 0.01, burst = 2 }\nauth_failures = { max = 2, window_s = 60, ban_s = 2 }\n";
    proxy_ = std::make_unique<Proxy>(o);
  }
  TempDir dir_;
  std::string store_, a_, b_, fast_;
  DemoBackend backend_;
  std::unique_ptr<Proxy> proxy_;
};

TEST_F(TokenRateE2E, EachTokenHasItsOwnBucketAndRolesOverride) {
  Client c(proxy_->httpPort());
  EXPECT_EQ(c.roundTrip(getRequest("/x", bearer(a_))).status, 200);
  HttpResponse second = c.roundTrip(getRequest("/x", bearer(a_)));
  EXPECT_EQ(second.status, 200);
  EXPECT_EQ(second.header("ratelimit-policy").value_or(""), "\"token\";q=2;w=200");
  const uint64_t before = backend_.requests();
  HttpResponse third = c.roundTrip(getRequest("/x", bearer(a_)));
  expectProxyError(third, 429, "rate_limited");
  EXPECT_EQ(backend_.requests(), before) << "a limited request reached the backend";
  EXPECT_GE(std::atoi(third.header("retry-after").value_or("0").c_str()), 1);
  // Another token is independent of the first.
  EXPECT_EQ(c.roundTrip(getRequest("/x", bearer(b_))).status, 200);
  // A role with a more generous rate overrides rate_limit.token.
  for (int i = 0; i < 5; ++i) EXPECT_EQ(c.roundTrip(getRequest("/x", bearer(fast_))).status, 200) << i;
  expectProxyError(c.roundTrip(getRequest("/x", bearer(fast_))), 429, "rate_limited");
}

// Every policy that applied to an allowed request is in ONE RateLimit-Policy
// and ONE RateLimit line, as a structured-field list in chain order (ip,
// token, route); a refusal by a later policy still carries the earlier
// policies' fields besides its own.
TEST(RateLimitE2E, AllowedResponseListsEveryPolicyInOneLineEach) {
  TempDir dir;
  const std::string store = dir.file("tokens.toml");
  const std::string tok = ctlIssue(store, "acme", "reader");
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  RouteSpec search{"/search", "app", {}, 0, "rate = { rps = 0.01, burst = 2 }\n", true};
  o.routes = {search, RouteSpec{"/", "app", {}, 0, "", true}};
  o.extra_toml = "[auth]\ntoken_store = \"" + store + "\"\n" +
                 "[[role]]\nname = \"reader\"\nallow = [\"GET /*\"]\n"
                 "[rate_limit]\nip = { rps = 0.01, burst = 50 }\ntoken = { rps = 0.01, burst = 10 }\n";
  Proxy proxy(o);
  Client c(proxy.httpPort());
  for (int i = 0; i < 2; ++i) {
    HttpResponse r = c.roundTrip(getRequest("/search?q=" + std::to_string(i), bearer(tok)));
    ASSERT_EQ(r.status, 200) << i;
    EXPECT_EQ(r.headerCount("ratelimit-policy"), 1u);
    EXPECT_EQ(r.headerCount("ratelimit"), 1u);
    EXPECT_EQ(r.header("ratelimit-policy").value_or(""),
              "\"ip\";q=50;w=5000, \"token\";q=10;w=1000, \"route\";q=2;w=200");
    const std::string v = r.header("ratelimit").value_or("");
    const std::string want = "\"ip\";r=" + std::to_string(49 - i) + ";t=";
    EXPECT_EQ(v.rfind(want, 0), 0u) << v;
    EXPECT_NE(v.find(", \"token\";r=" + std::to_string(9 - i) + ";t="), std::string::npos) << v;
    EXPECT_NE(v.find(", \"route\";r=" + std::to_string(1 - i) + ";t="), std::string::npos) << v;
  }
  // A route without `rate`: ip and token only.
  HttpResponse other = c.roundTrip(getRequest("/other", bearer(tok)));
  ASSERT_EQ(other.status, 200);
  EXPECT_EQ(other.header("ratelimit-policy").value_or(""), "\"ip\";q=50;w=5000, \"token\";q=10;w=1000");
  // The route limit refuses the third: 429 with the route's own fields, and
  // the fields of the policies that allowed it.
  const uint64_t before = backend.requests();
  HttpResponse limited = c.roundTrip(getRequest("/search?q=3", bearer(tok)));
  expectProxyError(limited, 429, "rate_limited");
  EXPECT_EQ(backend.requests(), before) << "a limited request reached the backend";
  std::string policies;
  for (const auto& [name, value] : limited.headers) {
    if (name == "ratelimit-policy") policies += (policies.empty() ? "" : " | ") + value;
  }
  EXPECT_NE(policies.find("\"route\";q=2;w=200"), std::string::npos) << policies;
  EXPECT_NE(policies.find("\"ip\";q=50;w=5000, \"token\";q=10;w=1000"), std::string::npos) << policies;
}

TEST_F(TokenRateE2E, RepeatedAuthFailuresBanTheIpEvenForValidTokens) {
  Client c(proxy_->httpPort());
  const std::string wrong = bearer("pct_aaaaaaaaaaaa_" + a_.substr(17));
  for (int i = 0; i < 3; ++i) expectProxyError(c.roundTrip(getRequest("/x", wrong)), 401, "unauthorized");
  // Failure max+1 started the ban: even a valid token is refused now.
  bool banned = false;
  for (int i = 0; i < 50 && !banned; ++i) {
    HttpResponse r = c.roundTrip(getRequest("/x", bearer(b_)));
    banned = r.status == 429;
    if (!banned) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(banned);
  EXPECT_EQ(proxy_->waitForMetric("portcullis_ratelimit_bans_total", 1), 1);
  EXPECT_EQ(proxy_->metricOr0("portcullis_ratelimit_bans_active"), 1);
  // A ban is audited once, and is always an alert.
  EXPECT_EQ(proxy_->waitForMetric("portcullis_alerts_total{kind=\"ban\"}", 1), 1);
  const uint64_t before = backend_.requests();
  HttpResponse r = c.roundTrip(getRequest("/x", bearer(b_)));
  expectProxyError(r, 429, "rate_limited");
  EXPECT_EQ(backend_.requests(), before) << "a banned IP's request reached the backend";
  const std::string retry_after = r.header("retry-after").value_or("0");
  EXPECT_GE(std::atoi(retry_after.c_str()), 1);
  // SPEC §5: this 429 carries the RateLimit fields too, the ban as the policy.
  EXPECT_EQ(r.header("ratelimit-policy").value_or(""), "\"ban\";q=2;w=2");
  EXPECT_EQ(r.header("ratelimit").value_or(""), "\"ban\";r=0;t=" + retry_after);
  // The ban ends after ban_s (2 s); a successful request would not have
  // lifted it earlier.
  int status = 429;
  for (int i = 0; i < 60 && status == 429; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    status = c.roundTrip(getRequest("/x", bearer(b_))).status;
  }
  EXPECT_EQ(status, 200);
  EXPECT_NE(proxy_->process().stderrText().find("ratelimit.ban ip=127.0.0.1"), std::string::npos);
  EXPECT_EQ(proxy_->metricOr0("portcullis_ratelimit_bans_active"), 0);
  // Audited exactly once per ban.
  size_t bans = 0;
  for (int i = 0; i < 100 && bans == 0; ++i) {
    std::ifstream f(proxy_->dir().file("audit.log"));
    const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    bans = 0;
    for (size_t at = text.find("\"event\":\"ratelimit.ban\""); at != std::string::npos;
         at = text.find("\"event\":\"ratelimit.ban\"", at + 1)) {
      ++bans;
    }
    if (bans == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(bans, 1u);
  // A second ban within detect.cooldown_s (300 s) is a second alert (SPEC §8).
  for (int i = 0; i < 3; ++i) expectProxyError(c.roundTrip(getRequest("/x", wrong)), 401, "unauthorized");
  EXPECT_EQ(proxy_->waitForMetric("portcullis_ratelimit_bans_total", 2), 2);
  EXPECT_EQ(proxy_->waitForMetric("portcullis_alerts_total{kind=\"ban\"}", 2), 2);
}

// ---------------------------------------------------------------------------
// IPv6 clients (issue 5: "IPv6 clients keyed by /64")

// The remaining quota `r` of `policy` in a response's RateLimit field
// ("ip";r=2;t=0), or -1 when absent.
int remaining(const HttpResponse& r, const std::string& policy) {
  const std::string v = r.header("ratelimit").value_or("");
  const std::string prefix = "\"" + policy + "\";r=";
  if (v.rfind(prefix, 0) != 0) return -1;
  return std::atoi(v.c_str() + prefix.size());
}

// The X-Forwarded-For the backend received: the client address the proxy saw.
std::string forwardedFor(const HttpResponse& r) {
  std::optional<Echo> e = parseEcho(r.body);
  return e ? e->headers["x-forwarded-for"] : "<no echo>";
}

// Without any privilege: the proxy listens on [::1] and an IPv6 client is
// limited per address like an IPv4 one; a forged X-Forwarded-For from a peer
// that is not a trusted proxy neither changes the key nor reaches the backend.
TEST(RateLimitIpv6E2E, Ipv6ListenerLimitsTheClientAndIgnoresForgedForwardedFor) {
  std::string why;
  if (!ipv6LoopbackUsable(&why)) GTEST_SKIP() << "no IPv6 loopback here: " << why;
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.listen_host = "::1";
  o.extra_toml = "[rate_limit]\nip = { rps = 0.01, burst = 3 }\n";
  Proxy proxy(o);
  EXPECT_NE(proxy.process().stderrText().find("listening http [::1]:"), std::string::npos)
      << proxy.process().stderrText();
  // The listener is IPv6 only: nothing answers on 127.0.0.1 at that port.
  EXPECT_LT(Client::tryConnect(proxy.httpPort()), 0);

  Client c("::1", proxy.httpPort());
  const char* forged[] = {"", "X-Forwarded-For: 2001:db8::1\r\n", "X-Forwarded-For: 198.51.100.7, 2001:db8:1::9\r\n"};
  for (int i = 0; i < 3; ++i) {
    HttpResponse r = c.roundTrip(getRequest("/ok", forged[i]));
    ASSERT_EQ(r.status, 200) << i << " " << r.body;
    EXPECT_EQ(r.header("ratelimit-policy").value_or(""), "\"ip\";q=3;w=300");
    EXPECT_EQ(remaining(r, "ip"), 2 - i) << r.header("ratelimit").value_or("");
    EXPECT_EQ(forwardedFor(r), "::1") << "the backend must see the real peer, overwriting a forged chain";
  }
  // A fresh connection from the same address and yet another forged header:
  // the same budget, now spent.
  Client c2("::1", proxy.httpPort());
  HttpResponse limited = c2.roundTrip(getRequest("/too-many", "X-Forwarded-For: 2001:db8:ffff::1\r\n"));
  expectProxyError(limited, 429, "rate_limited");
  EXPECT_GE(std::atoi(limited.header("retry-after").value_or("0").c_str()), 90);
  EXPECT_EQ(remaining(limited, "ip"), 0);
  EXPECT_EQ(backend.requests(), 3u) << "a limited request reached the backend";
  EXPECT_EQ(proxy.waitForMetric("portcullis_ratelimit_allowed_total{kind=\"ip\"}", 3), 3);
  EXPECT_EQ(proxy.waitForMetric("portcullis_refusals_total{filter=\"rate_limit\",reason=\"ip rate\"}", 1), 1);
}

// Distinct client addresses need a private network namespace (root): the
// proxy listens on [::1]; clients bind source addresses added to that
// namespace's loopback. A and B differ only in bit 63, the last bit of the
// /64 prefix; the three A addresses differ in every one of the 64 host bits
// (including bit 64, the first of them).
constexpr const char* kA1 = "2001:db8:0:10::1";
constexpr const char* kA2 = "2001:db8:0:10:8000::2";
constexpr const char* kA3 = "2001:db8:0:10:ffff:ffff:ffff:fffe";
constexpr const char* kB = "2001:db8:0:11::1";

class RateLimitSlash64E2E : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!net_.available()) GTEST_SKIP() << "needs a private network namespace to add client addresses: " << net_.error();
    for (const char* a : {kA1, kA2, kA3, kB}) net_.addIpv6(a);
  }
  PrivateNetwork net_;  // first: everything below is made inside it, and gone before it is left
};

TEST_F(RateLimitSlash64E2E, AddressesOfOneSlash64ShareOneBudgetAndTheNextSlash64HasItsOwn) {
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.listen_host = "::1";
  o.workers = 2;  // one table shared by every worker
  o.extra_toml = "[rate_limit]\nip = { rps = 0.01, burst = 4 }\n";  // no refill within the test
  Proxy proxy(o);
  const uint16_t port = proxy.httpPort();

  // One budget of 4 for the /64, drawn from three different addresses, each
  // on its own connection: the remaining quota counts down across them.
  struct Step {
    const char* from;
    int remaining;
  };
  for (const Step& s : {Step{kA1, 3}, Step{kA1, 2}, Step{kA2, 1}, Step{kA3, 0}}) {
    Client c("::1", port, s.from);
    HttpResponse r = c.roundTrip(getRequest("/a"));
    ASSERT_EQ(r.status, 200) << s.from << " " << r.body;
    EXPECT_EQ(remaining(r, "ip"), s.remaining) << s.from << ": " << r.header("ratelimit").value_or("");
    EXPECT_EQ(forwardedFor(r), s.from) << "the proxy must see the client's own address";
  }
  // The /64 is spent, whichever of its addresses asks.
  for (const char* from : {kA2, kA1, kA3}) {
    Client c("::1", port, from);
    HttpResponse r = c.roundTrip(getRequest("/a-again"));
    expectProxyError(r, 429, "rate_limited");
    EXPECT_GE(std::atoi(r.header("retry-after").value_or("0").c_str()), 90) << from;
    EXPECT_EQ(remaining(r, "ip"), 0) << from;
  }
  EXPECT_EQ(backend.requests(), 4u) << "a limited request reached the backend";

  // The neighbouring /64 has a full budget of its own: exactly 4, then 429.
  Client b("::1", port, kB);
  for (int i = 0; i < 4; ++i) {
    HttpResponse r = b.roundTrip(getRequest("/b"));
    ASSERT_EQ(r.status, 200) << i << " " << r.body;
    EXPECT_EQ(remaining(r, "ip"), 3 - i);
    EXPECT_EQ(forwardedFor(r), kB);
  }
  expectProxyError(b.roundTrip(getRequest("/b-again")), 429, "rate_limited");
  EXPECT_EQ(backend.requests(), 8u);
  EXPECT_EQ(proxy.waitForMetric("portcullis_ratelimit_allowed_total{kind=\"ip\"}", 8), 8);
  EXPECT_EQ(proxy.waitForMetric("portcullis_refusals_total{filter=\"rate_limit\",reason=\"ip rate\"}", 4), 4);
}

TEST_F(RateLimitSlash64E2E, AuthFailuresFromOneSlash64BanAllOfItButNotTheNextSlash64) {
  TempDir dir;
  const std::string store = dir.file("tokens.toml");
  const std::string token = ctlIssue(store, "acme", "reader");
  ASSERT_FALSE(token.empty());
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.listen_host = "::1";
  o.routes = {RouteSpec{"/", "app", {}, 0, "", true}};
  o.extra_toml = "[auth]\ntoken_store = \"" + store + "\"\n" +
                 "[[role]]\nname = \"reader\"\nallow = [\"GET /*\"]\n"
                 "[rate_limit]\nauth_failures = { max = 2, window_s = 60, ban_s = 60 }\n";
  Proxy proxy(o);
  const uint16_t port = proxy.httpPort();
  const std::string wrong = bearer("pct_aaaaaaaaaaaa_" + token.substr(17));

  // Failures max+1 = 3, one from each address of the /64: the third bans the /64.
  for (const char* from : {kA1, kA2, kA3}) {
    Client c("::1", port, from);
    expectProxyError(c.roundTrip(getRequest("/x", wrong)), 401, "unauthorized");
  }
  EXPECT_EQ(proxy.waitForMetric("portcullis_ratelimit_bans_total", 1), 1);
  const uint64_t before = backend.requests();
  for (const char* from : {kA1, kA2, kA3}) {  // a valid token does not help any of them
    Client c("::1", port, from);
    HttpResponse r = c.roundTrip(getRequest("/x", bearer(token)));
    expectProxyError(r, 429, "rate_limited");
    EXPECT_GE(std::atoi(r.header("retry-after").value_or("0").c_str()), 50) << from;
  }
  EXPECT_EQ(backend.requests(), before) << "a banned client's request reached the backend";
  // The neighbouring /64 is not banned, and its own first failure bans nothing.
  Client b("::1", port, kB);
  expectProxyError(b.roundTrip(getRequest("/x", wrong)), 401, "unauthorized");
  HttpResponse ok = b.roundTrip(getRequest("/x", bearer(token)));
  EXPECT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(forwardedFor(ok), kB);
  EXPECT_EQ(proxy.metricOr0("portcullis_ratelimit_bans_total"), 1);
  EXPECT_EQ(proxy.metricOr0("portcullis_ratelimit_bans_active"), 1);
  EXPECT_NE(proxy.process().stderrText().find(std::string("ratelimit.ban ip=") + kA3), std::string::npos)
      << proxy.process().stderrText();
}

}  // namespace
}  // namespace portcullis::e2e
