// TLS from the proxy to its upstreams ([[upstream]] tls = true, ca, sni,
// verify) against a real TLS origin (tests/e2e/tls_upstream.h): verified
// connections are pooled and resumed, every certificate problem is a 502 that
// never reaches the origin's application, health checks speak TLS too, and
// large bodies stream both ways with backpressure.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <string>
#include <thread>

#include "tests/e2e/harness.h"
#include "tests/e2e/tls_upstream.h"

namespace portcullis::e2e {
namespace {

class UpstreamTlsE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(makeTestCertificate(dir_.path(), "ip", "IP:127.0.0.1"));
    ASSERT_TRUE(makeTestCertificate(dir_.path(), "other", "IP:127.0.0.1"));
    ASSERT_TRUE(makeTestCertificate(dir_.path(), "wrongip", "IP:127.0.0.2"));
    ASSERT_TRUE(makeTestCertificate(dir_.path(), "named", "DNS:api.internal"));
  }
  // One upstream "app" at `server` with these [[upstream]] keys.
  ProxyOptions options(const std::string& server, const std::string& upstream_toml) {
    ProxyOptions o = ProxyOptions::forBackend(server);
    o.upstreams[0].extra_toml = upstream_toml;
    o.routes[0].max_body_bytes = 64ull << 20;
    return o;
  }
  std::string ca(const std::string& name) { return "ca = \"" + dir_.file(name + ".crt") + "\"\n"; }
  std::string crt(const std::string& name) { return dir_.file(name + ".crt"); }
  std::string key(const std::string& name) { return dir_.file(name + ".key"); }

  TempDir dir_;
};

TEST_F(UpstreamTlsE2E, VerifiedConnectionsArePooledAndResumed) {
  TlsUpstream origin(crt("ip"), key("ip"));
  Proxy proxy(options(origin.address(), "tls = true\n" + ca("ip")));
  Client c(proxy.httpPort());
  // Keep-alive requests reuse one pooled TLS connection.
  for (int i = 0; i < 5; ++i) {
    HttpResponse r = c.roundTrip(getRequest("/hello"));
    ASSERT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "conn=0 req=" + std::to_string(i) + " resumed=0 sni= host=e2e.test") << r.body;
  }
  EXPECT_EQ(origin.handshakes(), 1);
  // The origin closes after /close: the next connection resumes the session
  // the pool kept (TLS 1.3 ticket).
  ASSERT_EQ(c.roundTrip(getRequest("/close")).status, 200);
  HttpResponse r = c.roundTrip(getRequest("/after"));
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "conn=1 req=0 resumed=1 sni= host=e2e.test") << r.body;
  EXPECT_EQ(origin.handshakes(), 2);
  EXPECT_EQ(origin.resumed(), 1);
  EXPECT_EQ(proxy.waitForMetric("portcullis_upstream_tls_handshakes_total{kind=\"full\"}", 1), 1);
  EXPECT_EQ(proxy.waitForMetric("portcullis_upstream_tls_handshakes_total{kind=\"resumed\"}", 1), 1);
  // A reload builds a new TLS context (the CA may have changed): the kept
  // session is dropped, so the next connection verifies the server afresh.
  ASSERT_EQ(c.roundTrip(getRequest("/close")).status, 200);
  ASSERT_TRUE(proxy.reload());
  r = c.roundTrip(getRequest("/after-reload"));
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "conn=2 req=0 resumed=0 sni= host=e2e.test") << r.body;
  EXPECT_EQ(proxy.waitForMetric("portcullis_upstream_tls_handshakes_total{kind=\"full\"}", 2), 2);
}

TEST_F(UpstreamTlsE2E, SniNameIsSentAndVerified) {
  TlsUpstream origin(crt("named"), key("named"));
  Proxy proxy(options(origin.address(), "tls = true\n" + ca("named") + "sni = \"api.internal\"\n"));
  Client c(proxy.httpPort());
  HttpResponse r = c.roundTrip(getRequest("/n"));
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "conn=0 req=0 resumed=0 sni=api.internal host=e2e.test") << r.body;
}

// Each certificate problem: the handshake fails at the proxy, the client gets
// the proxy's own 502, and no request reaches the origin.
TEST_F(UpstreamTlsE2E, BadCertificatesAreBadGateway) {
  struct Case {
    const char* what;
    std::string cert;
    std::string toml;
  };
  const Case cases[] = {
      {"unknown CA", "ip", "tls = true\n" + ca("other")},
      {"certificate for another IP", "wrongip", "tls = true\n" + ca("wrongip")},
      {"certificate for another name", "named", "tls = true\n" + ca("named") + "sni = \"db.internal\"\n"},
      {"name certificate, no sni (IP checked)", "named", "tls = true\n" + ca("named")},
      {"system CA bundle, self-signed origin", "ip", "tls = true\n"},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.what);
    TlsUpstream origin(crt(k.cert), key(k.cert));
    Proxy proxy(options(origin.address(), k.toml));
    Client c(proxy.httpPort());
    HttpResponse r = c.roundTrip(getRequest("/secret"));
    expectProxyError(r, 502, "bad_gateway", origin.address());
    EXPECT_EQ(origin.requests(), 0);
    EXPECT_EQ(proxy.waitForMetric("portcullis_upstream_errors_total{kind=\"tls_handshake\"}", 1), 1);
    EXPECT_GE(proxy.metricOr0("portcullis_upstream_tls_failure_reasons_total{reason=\"certificate_verify_failed\"}"),
              1)
        << proxy.metricsText();
  }
}

TEST_F(UpstreamTlsE2E, VerifyOffAcceptsAnyCertificate) {
  TlsUpstream origin(crt("wrongip"), key("wrongip"));
  Proxy proxy(options(origin.address(), "tls = true\nverify = false\n"));
  Client c(proxy.httpPort());
  EXPECT_EQ(c.roundTrip(getRequest("/v")).status, 200);
}

TEST_F(UpstreamTlsE2E, PlaintextOriginBehindTlsUpstreamIsBadGateway) {
  TlsUpstream origin(crt("ip"), key("ip"), /*plaintext=*/true);
  Proxy proxy(options(origin.address(), "tls = true\n" + ca("ip")));
  Client c(proxy.httpPort());
  expectProxyError(c.roundTrip(getRequest("/p")), 502, "bad_gateway", origin.address());
  EXPECT_EQ(origin.requests(), 0);
  EXPECT_EQ(proxy.waitForMetric("portcullis_upstream_errors_total{kind=\"tls_handshake\"}", 1), 1);
}

TEST_F(UpstreamTlsE2E, LargeBodiesBothWaysWithASlowReader) {
  TlsUpstream origin(crt("ip"), key("ip"));
  Proxy proxy(options(origin.address(), "tls = true\n" + ca("ip")));
  constexpr uint64_t kBytes = 24ull << 20;
  // Upload: the origin answers with the SHA-256 of what it decrypted.
  {
    Client c(proxy.httpPort());
    const std::string head = "POST /up HTTP/1.1\r\nHost: a\r\nContent-Type: application/octet-stream\r\n"
                             "Content-Length: " + std::to_string(kBytes) + "\r\n\r\n";
    ASSERT_TRUE(c.send(head));
    for (uint64_t off = 0; off < kBytes; off += 1 << 20) ASSERT_TRUE(c.send(patternBytes(off, 1 << 20)));
    HttpResponse r;
    ASSERT_EQ(c.readResponse(r), ReadResult::kOk);
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, patternSha256(kBytes));
  }
  // Download to a client that stops reading: the proxy stops reading the
  // origin (the TLS engine holds at most one socket read beyond its buffer),
  // its buffers stay bounded, then everything arrives intact.
  {
    Client c(proxy.httpPort(), Millis(30000), /*rcvbuf=*/65536);
    ASSERT_TRUE(c.send(getRequest("/big/" + std::to_string(kBytes))));
    ASSERT_TRUE(c.prefetch(4096));
    expectBufferedBounded(proxy, 256 * 1024, kBytes);
    HttpResponse r;
    const std::string sha = readHashedResponse(c, r);
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body_bytes, kBytes);
    EXPECT_EQ(sha, patternSha256(kBytes));
    // The same pooled connection serves the next request.
    HttpResponse again = c.roundTrip(getRequest("/again"));
    EXPECT_EQ(again.status, 200);
  }
  EXPECT_EQ(origin.handshakes(), 1);
}

TEST_F(UpstreamTlsE2E, HealthChecksSpeakTls) {
  TlsUpstream good(crt("ip"), key("ip"));
  TlsUpstream bad(crt("wrongip"), key("wrongip"));
  ProxyOptions o = options(good.address(), "tls = true\n" + ca("ip"));
  o.upstreams[0].servers.push_back(bad.address());
  o.upstreams[0].health_check = "{ path = \"/healthz\", interval_ms = 100, timeout_ms = 1000 }";
  Proxy proxy(o);
  EXPECT_EQ(proxy.waitForMetric("portcullis_upstream_healthy{server=\"app/" + good.address() + "\"}", 1), 1);
  EXPECT_EQ(proxy.waitForMetric("portcullis_upstream_healthy{server=\"app/" + bad.address() + "\"}", 0), 0);
  EXPECT_GE(good.requests(), 1);  // the probe's GET arrived over TLS
  EXPECT_EQ(bad.requests(), 0);
  // Traffic goes to the healthy server only.
  Client c(proxy.httpPort());
  for (int i = 0; i < 4; ++i) EXPECT_EQ(c.roundTrip(getRequest("/x")).status, 200);
}

TEST(UpstreamTlsConfigE2E, MissingCaFileIsRefusedByCheckAndStart) {
  TempDir dir;
  ProxyOptions o = ProxyOptions::forBackend("127.0.0.1:9");
  o.upstreams[0].extra_toml = "tls = true\nca = \"" + dir.file("missing.crt") + "\"\n";
  const std::string cfg = dir.file("p.toml");
  writeFileAtomic(cfg, renderConfig(o, dir.path()));
  for (bool check : {true, false}) {
    std::vector<std::string> args = {PORTCULLIS_BIN, "-c", cfg};
    if (check) args.push_back("-t");
    ChildProcess p(args);
    int ws = 0;
    ASSERT_TRUE(p.waitExit(Millis(10000), &ws));
    EXPECT_TRUE(WIFEXITED(ws) && WEXITSTATUS(ws) != 0);
    EXPECT_NE(p.stderrText().find("cannot load CA file " + dir.file("missing.crt")), std::string::npos)
        << p.stderrText();
  }
}

}  // namespace
}  // namespace portcullis::e2e
