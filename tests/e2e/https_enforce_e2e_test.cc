// HTTPS enforcement on the plaintext listener (SPEC §3 [https]): redirect
// and reject modes, never an open redirect, trusted proxies, and nothing of a
// refused plaintext request reaches the backend.
#include <gtest/gtest.h>

#include <string>

#include "tests/e2e/harness.h"

namespace portcullis::e2e {
namespace {

class HttpsEnforceE2E : public ::testing::Test {
 protected:
  ProxyOptions options(const std::string& https_toml, const std::string& server_toml = "") {
    ProxyOptions o = ProxyOptions::forBackend(upstream_.address());
    o.https_toml = https_toml;
    o.server_toml = server_toml;
    return o;
  }
  // Counts connections and closes them: any connection means a request got through.
  ScriptedUpstream upstream_;
};

TEST_F(HttpsEnforceE2E, RedirectModeSends308ForSafeMethodsAnd403Otherwise) {
  Proxy proxy(options("plaintext = \"redirect\"\n", "names = [\"api.example.com\", \"alt.example.com\"]\n"));
  Client c(proxy.httpPort());
  HttpResponse get = c.roundTrip("GET /v1/items?page=2 HTTP/1.1\r\nHost: alt.example.com:8080\r\n\r\n");
  EXPECT_EQ(get.status, 308);
  EXPECT_EQ(get.header("location").value_or(""), "https://alt.example.com/v1/items?page=2");
  EXPECT_TRUE(isRequestId(get.header("x-request-id").value_or("")));
  EXPECT_FALSE(get.hasHeader("strict-transport-security")) << "HSTS is only sent over HTTPS";

  ReadOptions for_head;
  for_head.head_request = true;
  HttpResponse head = c.roundTrip("HEAD /x HTTP/1.1\r\nHost: api.example.com\r\n\r\n", for_head);
  EXPECT_EQ(head.status, 308);
  EXPECT_TRUE(head.body.empty());

  // Not a listed name: never an open redirect.
  HttpResponse evil = c.roundTrip("GET /login HTTP/1.1\r\nHost: evil.example.net\r\n\r\n");
  EXPECT_EQ(evil.status, 308);
  EXPECT_EQ(evil.header("location").value_or(""), "https://api.example.com/login");

  HttpResponse post = c.roundTrip("POST /v1/items HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 2\r\n\r\n{}");
  EXPECT_EQ(post.status, 403);
  std::optional<JsonValue> body = parseJson(post.body);
  ASSERT_TRUE(body.has_value()) << post.body;
  EXPECT_EQ(body->getString("error"), "https_required");
  EXPECT_EQ(upstream_.connectionCount(), 0) << "a plaintext request reached the backend";
}

TEST_F(HttpsEnforceE2E, RejectModeRefusesEverything) {
  Proxy proxy(options("plaintext = \"reject\"\n"));
  Client c(proxy.httpPort());
  for (const std::string m : {"GET", "HEAD", "DELETE"}) {
    ReadOptions opts;
    opts.head_request = m == "HEAD";
    HttpResponse r = c.roundTrip(m + " /x HTTP/1.1\r\nHost: a.example\r\n\r\n", opts);
    EXPECT_EQ(r.status, 403) << m;
  }
  EXPECT_EQ(upstream_.connectionCount(), 0);
}

TEST_F(HttpsEnforceE2E, WithoutNamesTheHostIsSyntaxChecked) {
  Proxy proxy(options("plaintext = \"redirect\"\n"));
  Client c(proxy.httpPort());
  HttpResponse ok = c.roundTrip("GET /p HTTP/1.1\r\nHost: Api.Example.com\r\n\r\n");
  EXPECT_EQ(ok.status, 308);
  EXPECT_EQ(ok.header("location").value_or(""), "https://api.example.com/p");
  HttpResponse bad = c.roundTrip("GET /p HTTP/1.1\r\nHost: -bad-.example..com\r\n\r\n");
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(upstream_.connectionCount(), 0);
}

TEST_F(HttpsEnforceE2E, UnroutedPlaintextPathsAreRedirectedNotRevealed) {
  ProxyOptions o = options("plaintext = \"redirect\"\n", "names = [\"api.example.com\"]\n");
  o.routes = {RouteSpec{"/v1/", "app", {}, 0}};
  Proxy proxy(o);
  Client c(proxy.httpPort());
  HttpResponse r = c.roundTrip("GET /admin/secret HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
  EXPECT_EQ(r.status, 308);
}

TEST(HttpsEnforceTrustedE2E, TrustedProxySayingHttpsIsServed) {
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.https_toml = "plaintext = \"reject\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n";
  Proxy proxy(o);
  Client c(proxy.httpPort());
  HttpResponse r = c.roundTrip(
      "GET /via-lb HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n");
  ASSERT_EQ(r.status, 200);
  std::optional<Echo> echo = parseEcho(r.body);
  ASSERT_TRUE(echo.has_value()) << r.body;
  EXPECT_EQ(echo->headers["x-forwarded-proto"], "https");
  EXPECT_EQ(echo->headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1") << "a trusted proxy's chain is extended";
  HttpResponse plain = c.roundTrip("GET /via-lb HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-Proto: http\r\n\r\n");
  EXPECT_EQ(plain.status, 403);
}

TEST(HttpsEnforceTrustedE2E, UntrustedPeerCannotClaimHttps) {
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.https_toml = "plaintext = \"reject\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n";
  Proxy proxy(o);
  Client c(proxy.httpPort());
  HttpResponse r = c.roundTrip("GET /x HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-Proto: https\r\n\r\n");
  EXPECT_EQ(r.status, 403);
}

}  // namespace
}  // namespace portcullis::e2e
