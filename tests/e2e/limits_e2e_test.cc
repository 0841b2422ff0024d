// Connection limits (SPEC §3 [server]): past max_connections_per_ip or
// max_connections a new connection is closed at once, counted, and nothing of
// it reaches the backend; a slot frees up when a connection closes.
#include <gtest/gtest.h>
#include <poll.h>

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/e2e/harness.h"

namespace portcullis::e2e {
namespace {

// A connection the proxy accepted and kept: it answers a request. (A
// connection the proxy refused makes roundTrip() throw: that is a "no".)
bool served(Client& c) {
  try {
    HttpResponse r = c.roundTrip(getRequest("/ok"));
    return r.status == 200;
  } catch (const std::exception&) {
    return false;
  }
}

// The proxy closed the connection without answering anything.
bool refused(uint16_t port) {
  Client c(port, Millis(3000));
  c.send(getRequest("/refused"));
  size_t extra = 0;
  return c.waitClosed(Millis(3000), &extra) && extra == 0;
}

class LimitsE2E : public ::testing::Test {
 protected:
  DemoBackend backend_;
};

TEST_F(LimitsE2E, PerAddressLimitClosesExtraConnectionsAndFreesSlots) {
  ProxyOptions o = ProxyOptions::forBackend(backend_.address());
  o.workers = 2;  // the limit holds across workers
  o.server_toml = "max_connections_per_ip = 3\n";
  Proxy proxy(o);

  std::vector<std::unique_ptr<Client>> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(std::make_unique<Client>(proxy.httpPort()));
    ASSERT_TRUE(served(*held.back())) << "connection " << i;
  }
  EXPECT_TRUE(refused(proxy.httpPort()));
  EXPECT_TRUE(refused(proxy.httpPort()));
  EXPECT_EQ(proxy.waitForMetric("portcullis_connections_refused_total", 2), 2);

  held.pop_back();  // closing one frees its slot once the proxy sees the close
  bool admitted = false;
  for (int i = 0; i < 100 && !admitted; ++i) {
    Client c(proxy.httpPort());
    admitted = served(c);
    if (!admitted) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(admitted);
  // The held connections were never disturbed.
  for (auto& c : held) EXPECT_TRUE(served(*c));
}

TEST_F(LimitsE2E, TotalLimitClosesExtraConnections) {
  ProxyOptions o = ProxyOptions::forBackend(backend_.address());
  o.server_toml = "max_connections = 2\n";
  Proxy proxy(o);
  Client a(proxy.httpPort());
  Client b(proxy.httpPort());
  ASSERT_TRUE(served(a));
  ASSERT_TRUE(served(b));
  EXPECT_TRUE(refused(proxy.httpPort()));
  EXPECT_GE(proxy.waitForMetric("portcullis_connections_refused_total", 1), 1);
  EXPECT_TRUE(served(a));
}

}  // namespace
// timeouts.min_body_rate: a body trickled below the rate is cut with 408
// after the grace, while the backend never gets the whole body; a body at a
// normal pace on the same proxy goes through.
TEST(SlowClientE2E, TrickleUploadBelowMinBodyRateIsCut) {
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.timeouts["min_body_rate"] = 2000;          // bytes/s
  o.timeouts["min_body_rate_grace_ms"] = 300;
  o.timeouts["body_idle_ms"] = 10000;          // the idle timeout alone would not fire
  Proxy proxy(o);
  const uint64_t before = backend.requests();
  Client c(proxy.httpPort());
  ASSERT_TRUE(c.send("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"));
  const auto t0 = std::chrono::steady_clock::now();
  bool cut = false;
  for (int i = 0; i < 100 && !cut; ++i) {  // 20 bytes every 50 ms: 400 B/s
    if (!c.send(std::string(20, 'x'))) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    pollfd p{c.fd(), POLLIN, 0};
    cut = ::poll(&p, 1, 0) > 0;
  }
  HttpResponse r;
  ASSERT_EQ(c.readResponse(r), ReadResult::kOk);
  expectProxyError(r, 408, "request_timeout");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(4));
  EXPECT_TRUE(c.waitClosed(Millis(2000)));
  EXPECT_EQ(backend.requests(), before) << "the backend never completed the trickled request";
  EXPECT_EQ(proxy.waitForMetric(
                "portcullis_refusals_total{filter=\"timeout\",reason=\"request body below min_body_rate\"}", 1),
            1);

  // A body at a normal pace passes on the same proxy.
  Client ok(proxy.httpPort());
  HttpResponse fine = ok.roundTrip("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 300000\r\n\r\n" +
                                   std::string(300000, 'y'));
  EXPECT_EQ(fine.status, 200);
}

}  // namespace portcullis::e2e
