// Connection limits (SPEC §3 [server]): past max_connections_per_ip or
// max_connections a new connection is closed at once, counted, and nothing of
// it reaches the backend; a slot frees up when a connection closes. IPv6
// clients count per /64 (distinct source addresses in a private network
// namespace; root only).
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <sstream>
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

// max_connections_per_ip counts an IPv6 client's whole /64: connections from
// three different addresses of one /64 share its limit of 2, while an address
// of the neighbouring /64 (differing only in the prefix's last bit) is
// admitted. Needs a private network namespace for the source addresses.
TEST_F(LimitsE2E, PerAddressLimitCountsAnIpv6ClientsWholeSlash64) {
  PrivateNetwork net;  // before the proxy: it and the clients live inside it
  if (!net.available()) GTEST_SKIP() << "needs a private network namespace to add client addresses: " << net.error();
  const char* a1 = "2001:db8:0:10::1";
  const char* a2 = "2001:db8:0:10:8000::2";
  const char* a3 = "2001:db8:0:10:ffff:ffff:ffff:fffe";
  const char* b = "2001:db8:0:11::1";
  for (const char* a : {a1, a2, a3, b}) net.addIpv6(a);
  DemoBackend backend;  // in the namespace too (the fixture's one is not reachable from it)
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.listen_host = "::1";
  o.workers = 2;  // the count holds across workers
  o.server_toml = "max_connections_per_ip = 2\n";
  Proxy proxy(o);
  const uint16_t port = proxy.httpPort();
  auto refusedFrom = [&](const char* from) {
    Client c("::1", port, from, Millis(3000));
    c.send(getRequest("/refused"));
    size_t extra = 0;
    return c.waitClosed(Millis(3000), &extra) && extra == 0;
  };

  Client held1("::1", port, a1);
  Client held2("::1", port, a2);
  ASSERT_TRUE(served(held1));
  ASSERT_TRUE(served(held2));
  EXPECT_TRUE(refusedFrom(a3)) << "a third address of the same /64 got past its limit";
  EXPECT_TRUE(refusedFrom(a1));
  EXPECT_EQ(proxy.waitForMetric("portcullis_connections_refused_total", 2), 2);
  {
    Client other1("::1", port, b);
    Client other2("::1", port, b);
    EXPECT_TRUE(served(other1)) << "the neighbouring /64 has a limit of its own";
    EXPECT_TRUE(served(other2));
    EXPECT_TRUE(refusedFrom(b));
  }
  EXPECT_EQ(proxy.waitForMetric("portcullis_connections_refused_total", 3), 3);
  EXPECT_EQ(backend.requests(), 4u) << "a refused connection's request reached the backend";
  EXPECT_TRUE(served(held1));
  EXPECT_TRUE(served(held2));
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

// Descriptors run out (EMFILE on accept, as with a low `ulimit -n`): the
// proxy neither spins nor dies (libuv's reserve-descriptor trick closes the
// connections it cannot serve), and serves again once descriptors free up.
TEST(DescriptorLimitE2E, EmfileOnAcceptNeitherSpinsNorStops) {
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.exec_prefix = {"/usr/bin/prlimit", "--nofile=64:64", "--"};
  Proxy proxy(o);
  Client first(proxy.httpPort());
  ASSERT_EQ(first.roundTrip(getRequest("/before")).status, 200);
  std::vector<std::unique_ptr<Client>> hogs;
  for (int i = 0; i < 100; ++i) {
    try {
      hogs.push_back(std::make_unique<Client>(proxy.httpPort(), Millis(2000)));
    } catch (const std::exception&) {
      break;
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto cpuTicks = [&]() {
    std::ifstream f("/proc/" + std::to_string(proxy.process().pid()) + "/stat");
    std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::istringstream in(stat.substr(stat.rfind(')') + 2));
    std::string field;
    uint64_t ticks = 0;
    for (int i = 3; i <= 15 && (in >> field); ++i) {
      if (i == 14 || i == 15) ticks += std::stoull(field);
    }
    return ticks;
  };
  const uint64_t t0 = cpuTicks();
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const uint64_t used = cpuTicks() - t0;
  EXPECT_LT(used, 30u) << "the accept loop spins while descriptors are exhausted (" << used << " ticks in 1 s)";
  EXPECT_FALSE(proxy.process().waitExit(Millis(0))) << "the proxy died";
  // Descriptors really ran out: libuv closed the connections it could not
  // accept, so some of the extra clients see an immediate EOF.
  size_t shed = 0;
  for (const auto& h : hogs) {
    char b;
    pollfd p{h->fd(), POLLIN, 0};
    if (::poll(&p, 1, 0) > 0 && ::recv(h->fd(), &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0) ++shed;
  }
  EXPECT_GT(shed, 0u) << "the test did not exhaust the proxy's descriptors";
  hogs.clear();
  bool ok = false;
  for (int i = 0; i < 50 && !ok; ++i) {
    try {
      Client c(proxy.httpPort(), Millis(2000));
      ok = c.roundTrip(getRequest("/after")).status == 200;
    } catch (const std::exception&) {
    }
    if (!ok) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(ok) << "not serving after descriptors were freed";
}

// 1,000 garbage payloads on fresh connections (random bytes, random
// lengths, some with a plausible request line first): every one is refused
// or dropped, nothing crashes, nothing reaches the backend, and a valid
// request afterwards is served.
TEST(GarbageE2E, ThousandGarbagePayloadsThenAValidRequest) {
  DemoBackend backend;
  Proxy proxy(ProxyOptions::forBackend(backend.address()));
  const uint64_t before = backend.requests();
  uint64_t x = 0x9e3779b97f4a7c15ull;
  auto next = [&x]() {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  for (int i = 0; i < 1000; ++i) {
    std::string payload;
    if (i % 3 == 0) payload = "POST / HTTP/1.1\r\n";
    const size_t n = 1 + next() % 2048;
    for (size_t k = 0; k < n; ++k) payload += static_cast<char>(next() & 0xff);
    Client c(proxy.httpPort(), Millis(3000));
    c.send(payload);
    c.shutdownWrite();
    c.waitClosed(Millis(3000));
  }
  EXPECT_FALSE(proxy.process().waitExit(Millis(0))) << "the proxy died";
  Client ok(proxy.httpPort());
  EXPECT_EQ(ok.roundTrip(getRequest("/after-garbage")).status, 200);
  EXPECT_EQ(backend.requests(), before + 1) << "only the valid request reached the backend";
}

}  // namespace portcullis::e2e
