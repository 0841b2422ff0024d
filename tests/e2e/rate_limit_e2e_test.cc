// Rate limiting end to end (SPEC §3 [rate_limit], §5): per-IP limits before
// authentication, per-token limits (role overrides), the brute-force lockout,
// 429 with Retry-After and the RateLimit fields, and nothing limited reaches
// the backend.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>

#include "tests/e2e/harness.h"

namespace portcullis::e2e {
namespace {

std::string ctlIssue(const std::string& store, const std::string& account, const std::string& role) {
  const std::string cmd = std::string(PORTCULLISCTL_BIN) + " token issue --store " + store + " --account " + account +
                          " --role " + role + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  char buf[256] = {0};
  std::string out;
  while (p != nullptr && fgets(buf, sizeof(buf), p) != nullptr) out += buf;
  if (p != nullptr) pclose(p);
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

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
  EXPECT_GE(std::atoi(r.header("retry-after").value_or("0").c_str()), 1);
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
}

}  // namespace
}  // namespace portcullis::e2e
