// Upstream selection and health end to end: round_robin alternates servers,
// least_request avoids a busy one, and a server failing its active health
// check is taken out (503 when none is left) and put back when it recovers.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "tests/e2e/harness.h"

namespace portcullis::e2e {
namespace {

// Answers every request on a connection with `name` as the body, keep-alive.
// If `hold` is set, the first request waits until it is cleared.
ScriptedUpstream::Handler namedServer(std::string name, std::atomic<bool>* hold = nullptr) {
  return [name, hold](int fd, int) {
    bool first = true;
    for (;;) {
      std::string head = ScriptedUpstream::readRequest(fd, Millis(10000));
      if (head.empty()) return;
      if (first && hold != nullptr) {
        for (int i = 0; i < 1000 && hold->load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      first = false;
      std::string resp = "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(name.size()) + "\r\n\r\n" + name;
      if (!ScriptedUpstream::writeAll(fd, resp)) return;
    }
  };
}

ProxyOptions twoServers(const std::string& a, const std::string& b, const std::string& lb) {
  ProxyOptions o;
  UpstreamSpec u;
  u.servers = {a, b};
  u.lb = lb;
  o.upstreams = {u};
  return o;
}

TEST(UpstreamLbE2E, RoundRobinAlternatesServers) {
  ScriptedUpstream a(namedServer("A"));
  ScriptedUpstream b(namedServer("B"));
  Proxy proxy(twoServers(a.address(), b.address(), "round_robin"));
  Client c(proxy.httpPort());
  std::string seen;
  for (int i = 0; i < 6; ++i) {
    HttpResponse r = c.roundTrip(getRequest("/rr"));
    ASSERT_EQ(r.status, 200);
    seen += r.body;
  }
  EXPECT_TRUE(seen == "ABABAB" || seen == "BABABA") << seen;
}

TEST(UpstreamLbE2E, LeastRequestAvoidsTheBusyServer) {
  std::atomic<bool> hold_a{true};
  ScriptedUpstream a(namedServer("A", &hold_a));
  ScriptedUpstream b(namedServer("B"));
  Proxy proxy(twoServers(a.address(), b.address(), "least_request"));

  // First request: ties go round robin from the first server, so A; it is
  // held there, leaving A with one request in flight.
  Client slow(proxy.httpPort());
  ASSERT_TRUE(slow.send(getRequest("/slow")));
  for (int i = 0; i < 200 && a.connectionCount() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(a.connectionCount(), 1);

  Client c(proxy.httpPort());
  for (int i = 0; i < 3; ++i) {
    HttpResponse r = c.roundTrip(getRequest("/fast"));
    ASSERT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "B") << "request " << i << " went to the busy server";
  }
  hold_a = false;
  HttpResponse r;
  ASSERT_EQ(slow.readResponse(r), ReadResult::kOk);
  EXPECT_EQ(r.body, "A");
}

TEST(UpstreamLbE2E, FailingHealthCheckTakesServerOutAndBack) {
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  // /status/500 always fails: the only server goes unhealthy -> 503.
  o.upstreams[0].health_check = "{ path = \"/status/500\", interval_ms = 50, timeout_ms = 500, unhealthy_threshold = 1 }";
  Proxy proxy(o);
  const std::string healthy_series = "portcullis_upstream_healthy{server=\"app/" + backend.address() + "\"}";
  EXPECT_EQ(proxy.waitForMetric(healthy_series, 0), 0);
  {
    Client c(proxy.httpPort());
    HttpResponse r = c.roundTrip(getRequest("/x"));
    EXPECT_EQ(r.status, 503);
    std::optional<JsonValue> body = parseJson(r.body);
    ASSERT_TRUE(body.has_value()) << r.body;
    EXPECT_EQ(body->getString("error"), "unavailable");
  }
  EXPECT_GE(proxy.metricOr0("portcullis_upstream_errors_total{kind=\"no_healthy_server\"}"), 1);

  // A config whose check passes puts it back (health state survives reloads
  // and is re-probed at once).
  o.upstreams[0].health_check = "{ path = \"/healthz\", interval_ms = 50, timeout_ms = 500 }";
  proxy.writeConfig(o);
  ASSERT_TRUE(proxy.reload());
  EXPECT_EQ(proxy.waitForMetric(healthy_series, 1), 1);
  Client c(proxy.httpPort());
  EXPECT_EQ(c.roundTrip(getRequest("/x")).status, 200);
}

}  // namespace
}  // namespace portcullis::e2e
