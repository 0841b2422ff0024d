// Connection limits (SPEC §3 [server]): past max_connections_per_ip or
// max_connections a new connection is closed at once, counted, and nothing of
// it reaches the backend; a slot frees up when a connection closes.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <stdexcept>
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
}  // namespace portcullis::e2e
