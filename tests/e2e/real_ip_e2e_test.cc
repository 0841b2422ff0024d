// The client address behind trusted proxies (SPEC §3 https.trusted_proxies,
// §6): when the TCP peer is a trusted proxy, the client is the rightmost
// X-Forwarded-For entry that is not itself a trusted proxy (nginx realip with
// real_ip_recursive on), and that address is what the per-IP rate limit, the
// brute-force lockout, the audit log and the access log key on. The peer
// still gets appended to the X-Forwarded-For the backend receives, still
// counts for max_connections_per_ip, and is logged as peer_ip. From any other
// peer X-Forwarded-For changes nothing.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/e2e/harness.h"

namespace portcullis::e2e {
namespace {

// The access log line (parsed) of the request to `path`, polling (bounded)
// while the log thread catches up; nullopt if none appears.
std::optional<JsonValue> accessLine(const Proxy& proxy, const std::string& path) {
  const std::string needle = "\"path\":\"" + path + "\"";
  for (int i = 0; i < 250; ++i) {
    const std::string text = slurp(proxy.dir().file("access.log"));
    size_t at = text.find(needle);
    if (at != std::string::npos) {
      const size_t begin = text.rfind('\n', at);
      const size_t end = text.find('\n', at);
      const size_t from = begin == std::string::npos ? 0 : begin + 1;
      return parseJson(text.substr(from, end == std::string::npos ? std::string::npos : end - from));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return std::nullopt;
}

// remote_ip and peer_ip ("-" when absent) of the access log line for `path`.
std::string loggedIps(const Proxy& proxy, const std::string& path) {
  std::optional<JsonValue> l = accessLine(proxy, path);
  if (!l) return "<no line>";
  return l->getString("remote_ip") + " via " + (l->has("peer_ip") ? l->getString("peer_ip") : "-");
}

// The remaining quota of the "ip" policy in a response's RateLimit field, or
// -1 when absent.
int ipRemaining(const HttpResponse& r) {
  const std::string v = r.header("ratelimit").value_or("");
  const std::string prefix = "\"ip\";r=";
  if (v.rfind(prefix, 0) != 0) return -1;
  return std::atoi(v.c_str() + prefix.size());
}

// The X-Forwarded-For the backend received.
std::string upstreamXff(const HttpResponse& r) {
  std::optional<Echo> e = parseEcho(r.body);
  return e ? e->headers["x-forwarded-for"] : "<no echo>";
}

std::string xff(const std::string& v) { return "X-Forwarded-For: " + v + "\r\n"; }

ProxyOptions limited(const DemoBackend& backend, const std::string& trusted, int burst) {
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.https_toml = "plaintext = \"allow\"\ntrusted_proxies = [" + trusted + "]\n";
  // No refill within a test: `burst` requests per key, then 429.
  o.extra_toml = "[rate_limit]\nip = { rps = 0.01, burst = " + std::to_string(burst) + " }\n";
  return o;
}

// Two clients behind one balancer (the loopback peer) each get the whole
// per-IP budget; the balancer's own requests have theirs.
TEST(TrustedProxyE2E, ForwardedClientsHaveSeparateIpBudgets) {
  DemoBackend backend;
  Proxy proxy(limited(backend, "\"127.0.0.1/32\"", 2));
  Client lb(proxy.httpPort());

  HttpResponse a1 = lb.roundTrip(getRequest("/a1", xff("203.0.113.9")));
  ASSERT_EQ(a1.status, 200) << a1.body;
  EXPECT_EQ(ipRemaining(a1), 1);
  EXPECT_EQ(upstreamXff(a1), "203.0.113.9, 127.0.0.1") << "the peer is appended, not the client";
  HttpResponse a2 = lb.roundTrip(getRequest("/a2", xff("203.0.113.9")));
  ASSERT_EQ(a2.status, 200);
  EXPECT_EQ(ipRemaining(a2), 0);
  expectProxyError(lb.roundTrip(getRequest("/a3", xff("203.0.113.9"))), 429, "rate_limited");

  // Another client through the same connection: its own, untouched budget.
  HttpResponse b1 = lb.roundTrip(getRequest("/b1", xff("198.51.100.7")));
  ASSERT_EQ(b1.status, 200) << "one client's 429 hit another behind the same balancer";
  EXPECT_EQ(ipRemaining(b1), 1);
  EXPECT_EQ(upstreamXff(b1), "198.51.100.7, 127.0.0.1");

  // 10.0.0.5 is not trusted here: it is the client, with a budget of its own.
  HttpResponse c1 = lb.roundTrip(getRequest("/c1", xff("203.0.113.9, 10.0.0.5")));
  ASSERT_EQ(c1.status, 200);
  EXPECT_EQ(ipRemaining(c1), 1);

  // The balancer's own request (no X-Forwarded-For) is keyed on the peer.
  HttpResponse own = lb.roundTrip(getRequest("/own"));
  ASSERT_EQ(own.status, 200);
  EXPECT_EQ(ipRemaining(own), 1);
  EXPECT_EQ(upstreamXff(own), "127.0.0.1");
  EXPECT_EQ(backend.requests(), 5u) << "a limited request reached the backend";

  EXPECT_EQ(loggedIps(proxy, "/a1"), "203.0.113.9 via 127.0.0.1");
  EXPECT_EQ(loggedIps(proxy, "/a3"), "203.0.113.9 via 127.0.0.1") << "refusals are logged against the client too";
  EXPECT_EQ(loggedIps(proxy, "/b1"), "198.51.100.7 via 127.0.0.1");
  EXPECT_EQ(loggedIps(proxy, "/c1"), "10.0.0.5 via 127.0.0.1");
  EXPECT_EQ(loggedIps(proxy, "/own"), "127.0.0.1 via -") << "peer_ip only when it differs";
}

// With the inner hops trusted too, the walk from the right passes them and
// stops at the first untrusted address; what the client wrote to the left of
// it is never believed. Several header lines are one list.
TEST(TrustedProxyE2E, ChainThroughTrustedHopsKeysOnTheClient) {
  DemoBackend backend;
  Proxy proxy(limited(backend, "\"127.0.0.1/32\", \"10.0.0.0/8\"", 2));
  Client lb(proxy.httpPort());

  HttpResponse r1 = lb.roundTrip(getRequest("/r1", xff("203.0.113.9, 10.0.0.5")));
  ASSERT_EQ(r1.status, 200) << r1.body;
  EXPECT_EQ(ipRemaining(r1), 1);
  EXPECT_EQ(upstreamXff(r1), "203.0.113.9, 10.0.0.5, 127.0.0.1");
  // Two header lines, another inner hop: the same client, the same budget.
  HttpResponse r2 = lb.roundTrip(getRequest("/r2", xff("203.0.113.9") + xff("10.0.0.6")));
  ASSERT_EQ(r2.status, 200) << r2.body;
  EXPECT_EQ(ipRemaining(r2), 0);
  EXPECT_EQ(upstreamXff(r2), "203.0.113.9, 10.0.0.6, 127.0.0.1") << "every line of a trusted chain is kept";
  // A spoofed address to the left of the client changes nothing.
  expectProxyError(lb.roundTrip(getRequest("/r3", xff("198.51.100.1, 203.0.113.9, 10.0.0.5"))), 429, "rate_limited");
  // A chain of trusted hops only: the leftmost is the client.
  HttpResponse inner = lb.roundTrip(getRequest("/inner", xff("10.0.0.7, 10.0.0.5")));
  ASSERT_EQ(inner.status, 200);
  EXPECT_EQ(ipRemaining(inner), 1);
  EXPECT_EQ(backend.requests(), 3u);

  EXPECT_EQ(loggedIps(proxy, "/r1"), "203.0.113.9 via 127.0.0.1");
  EXPECT_EQ(loggedIps(proxy, "/r3"), "203.0.113.9 via 127.0.0.1");
  EXPECT_EQ(loggedIps(proxy, "/inner"), "10.0.0.7 via 127.0.0.1");
}

// IPv6 clients named by X-Forwarded-For are keyed by their /64 like direct
// ones, whatever their spelling, and logged in canonical form.
TEST(TrustedProxyE2E, ForwardedIpv6ClientsAreKeyedByTheirSlash64) {
  DemoBackend backend;
  Proxy proxy(limited(backend, "\"127.0.0.1/32\"", 2));
  Client lb(proxy.httpPort());
  HttpResponse a = lb.roundTrip(getRequest("/v6a", xff("2001:DB8:0:10:0:0:0:1")));
  ASSERT_EQ(a.status, 200);
  EXPECT_EQ(ipRemaining(a), 1);
  HttpResponse a2 = lb.roundTrip(getRequest("/v6a2", xff("2001:db8:0:10:ffff::2")));
  ASSERT_EQ(a2.status, 200);
  EXPECT_EQ(ipRemaining(a2), 0) << "same /64, same budget";
  expectProxyError(lb.roundTrip(getRequest("/v6a3", xff("2001:db8:0:10::3"))), 429, "rate_limited");
  HttpResponse b = lb.roundTrip(getRequest("/v6b", xff("2001:db8:0:11::1")));
  ASSERT_EQ(b.status, 200) << "the next /64 has its own budget";
  EXPECT_EQ(ipRemaining(b), 1);
  EXPECT_EQ(loggedIps(proxy, "/v6a"), "2001:db8:0:10::1 via 127.0.0.1");
}

// trusted_proxies is set but the peer is not in it: X-Forwarded-For neither
// picks the key nor reaches the backend nor the log.
TEST(TrustedProxyE2E, UntrustedPeerForwardedForChangesNothing) {
  DemoBackend backend;
  Proxy proxy(limited(backend, "\"10.0.0.0/8\"", 2));
  Client c(proxy.httpPort());
  HttpResponse r1 = c.roundTrip(getRequest("/u1", xff("203.0.113.9")));
  ASSERT_EQ(r1.status, 200);
  EXPECT_EQ(ipRemaining(r1), 1);
  EXPECT_EQ(upstreamXff(r1), "127.0.0.1") << "a forged chain is overwritten";
  HttpResponse r2 = c.roundTrip(getRequest("/u2", xff("198.51.100.7")));
  ASSERT_EQ(r2.status, 200);
  EXPECT_EQ(ipRemaining(r2), 0) << "a different forged address drew on the same budget";
  expectProxyError(c.roundTrip(getRequest("/u3", xff("10.0.0.5"))), 429, "rate_limited");
  EXPECT_EQ(backend.requests(), 2u);
  EXPECT_EQ(loggedIps(proxy, "/u1"), "127.0.0.1 via -");
  EXPECT_EQ(loggedIps(proxy, "/u3"), "127.0.0.1 via -");
}

// An entry that is not a plain address stops the walk: the client is the
// last trusted hop walked (or the peer), never the garbage and never anything
// the client wrote beyond it.
TEST(TrustedProxyE2E, UnparsableForwardedForFallsBackSafely) {
  DemoBackend backend;
  Proxy proxy(limited(backend, "\"127.0.0.1/32\", \"10.0.0.0/8\"", 1));
  Client lb(proxy.httpPort());
  // Rightmost entry garbage: keyed on the peer, whose one request it spends.
  HttpResponse u = lb.roundTrip(getRequest("/unknown", xff("unknown")));
  ASSERT_EQ(u.status, 200);
  EXPECT_EQ(upstreamXff(u), "unknown, 127.0.0.1");
  expectProxyError(lb.roundTrip(getRequest("/own")), 429, "rate_limited");
  expectProxyError(lb.roundTrip(getRequest("/port", xff("203.0.113.9:443"))), 429, "rate_limited");
  expectProxyError(lb.roundTrip(getRequest("/bracket", xff("[2001:db8::1]"))), 429, "rate_limited");
  // Garbage behind a trusted hop: the hop is the client.
  HttpResponse g = lb.roundTrip(getRequest("/garbage", xff("203.0.113.9, not-an-ip, 10.0.0.5")));
  ASSERT_EQ(g.status, 200);
  EXPECT_EQ(upstreamXff(g), "203.0.113.9, not-an-ip, 10.0.0.5, 127.0.0.1");
  expectProxyError(lb.roundTrip(getRequest("/hop", xff("10.0.0.5"))), 429, "rate_limited");
  // ... and 203.0.113.9, left of the garbage, was never charged.
  EXPECT_EQ(lb.roundTrip(getRequest("/left", xff("203.0.113.9"))).status, 200);
  EXPECT_EQ(backend.requests(), 3u);

  EXPECT_EQ(loggedIps(proxy, "/unknown"), "127.0.0.1 via -");
  EXPECT_EQ(loggedIps(proxy, "/port"), "127.0.0.1 via -");
  EXPECT_EQ(loggedIps(proxy, "/garbage"), "10.0.0.5 via 127.0.0.1");
  EXPECT_EQ(loggedIps(proxy, "/left"), "203.0.113.9 via 127.0.0.1");
}

// max_connections_per_ip is about TCP connections: it counts the balancer,
// whatever clients its requests name.
TEST(TrustedProxyE2E, ConnectionLimitCountsThePeerNotTheForwardedClients) {
  DemoBackend backend;
  ProxyOptions o = limited(backend, "\"127.0.0.1/32\"", 100);
  o.server_toml = "max_connections_per_ip = 2\n";
  Proxy proxy(o);
  std::vector<std::unique_ptr<Client>> held;
  for (const char* client : {"203.0.113.1", "203.0.113.2"}) {
    held.push_back(std::make_unique<Client>(proxy.httpPort()));
    ASSERT_EQ(held.back()->roundTrip(getRequest("/held", xff(client))).status, 200) << client;
  }
  Client third(proxy.httpPort(), Millis(3000));
  third.send(getRequest("/third", xff("203.0.113.3")));
  size_t extra = 0;
  EXPECT_TRUE(third.waitClosed(Millis(3000), &extra) && extra == 0) << "a third connection from the peer was served";
  EXPECT_EQ(proxy.waitForMetric("portcullis_connections_refused_total", 1), 1);
}

// The brute-force lockout bans the client that failed, not the balancer and
// not the other clients behind it; the audit log and the ban alert name it.
TEST(TrustedProxyE2E, BruteForceBanHitsTheForwardedClientOnly) {
  TempDir dir;
  const std::string store = dir.file("tokens.toml");
  const std::string token = ctlIssue(store, "acme", "reader");
  ASSERT_FALSE(token.empty());
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.routes = {RouteSpec{"/", "app", {}, 0, "", true}};
  o.https_toml = "plaintext = \"allow\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n";
  o.extra_toml = "[auth]\ntoken_store = \"" + store + "\"\n" +
                 "[[role]]\nname = \"reader\"\nallow = [\"GET /*\"]\n"
                 "[rate_limit]\nauth_failures = { max = 2, window_s = 60, ban_s = 60 }\n";
  Proxy proxy(o);
  const std::string good = "Authorization: Bearer " + token + "\r\n";
  const std::string wrong = "Authorization: Bearer pct_aaaaaaaaaaaa_" + token.substr(17) + "\r\n";
  Client lb(proxy.httpPort());

  // max+1 = 3 failures from one client (once with a spoofed address to its left).
  for (const char* chain : {"203.0.113.9", "198.51.100.1, 203.0.113.9", "203.0.113.9"}) {
    expectProxyError(lb.roundTrip(getRequest("/x", xff(chain) + wrong)), 401, "unauthorized");
  }
  EXPECT_EQ(proxy.waitForMetric("portcullis_ratelimit_bans_total", 1), 1);
  const uint64_t before = backend.requests();
  HttpResponse banned = lb.roundTrip(getRequest("/banned", xff("203.0.113.9") + good));
  expectProxyError(banned, 429, "rate_limited");
  EXPECT_GE(std::atoi(banned.header("retry-after").value_or("0").c_str()), 50);
  EXPECT_EQ(backend.requests(), before) << "a banned client's request reached the backend";
  // Another client, and the balancer itself, are not banned.
  HttpResponse other = lb.roundTrip(getRequest("/other", xff("198.51.100.7") + good));
  EXPECT_EQ(other.status, 200) << other.body;
  EXPECT_EQ(lb.roundTrip(getRequest("/own", good)).status, 200);
  EXPECT_EQ(proxy.metricOr0("portcullis_ratelimit_bans_active"), 1);

  EXPECT_NE(proxy.process().stderrText().find("ratelimit.ban ip=203.0.113.9 "), std::string::npos)
      << proxy.process().stderrText();
  std::string audit;
  for (int i = 0; i < 250; ++i) {
    audit = slurp(proxy.dir().file("audit.log"));
    if (audit.find("\"kind\":\"ban\"") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // Every failure, the ban and its alert name the client.
  int failures = 0;
  bool ban = false, alert = false;
  for (const std::string& line : lines(audit)) {
    const bool is_failure = line.find("\"event\":\"auth.failure\"") != std::string::npos;
    const bool is_ban = line.find("\"event\":\"ratelimit.ban\"") != std::string::npos;
    const bool is_alert = line.find("\"kind\":\"ban\"") != std::string::npos;
    if (!is_failure && !is_ban && !is_alert) continue;
    EXPECT_NE(line.find("\"ip\":\"203.0.113.9\""), std::string::npos) << line;
    failures += is_failure;
    ban |= is_ban;
    alert |= is_alert;
  }
  EXPECT_EQ(failures, 3) << audit;
  EXPECT_TRUE(ban) << audit;
  EXPECT_TRUE(alert) << audit;
  EXPECT_EQ(loggedIps(proxy, "/banned"), "203.0.113.9 via 127.0.0.1");
}

}  // namespace
}  // namespace portcullis::e2e
