// HealthChecker over real sockets on the loopback interface: a small blocking
// HTTP server in a thread answers each probe with a canned response (or holds
// the connection open), and the test drives the checker's loop with
// UV_RUN_ONCE until a condition holds or a generous deadline passes. The
// assertions are about counts and states, never about elapsed time.
#include "proxy/health_check.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace portcullis {
namespace {

constexpr const char* k200 = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
constexpr const char* k500 = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

bool fillAddr(const std::string& host, uint16_t port, sockaddr_storage& ss, socklen_t& len) {
  std::memset(&ss, 0, sizeof ss);
  if (host.find(':') != std::string::npos) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    len = sizeof *a;
    return inet_pton(AF_INET6, host.c_str(), &a->sin6_addr) == 1;
  }
  auto* a = reinterpret_cast<sockaddr_in*>(&ss);
  a->sin_family = AF_INET;
  a->sin_port = htons(port);
  len = sizeof *a;
  return inet_pton(AF_INET, host.c_str(), &a->sin_addr) == 1;
}

uint16_t boundPort(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

// A port on 127.0.0.1 that nothing listens on (bound once, then released).
uint16_t closedPort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_storage ss;
  socklen_t len;
  fillAddr("127.0.0.1", 0, ss, len);
  uint16_t port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0) port = boundPort(fd);
  close(fd);
  return port;
}

// Accepts one connection at a time, reads the request head, then either writes
// the configured response and closes or (hang mode) keeps the socket open
// without answering until the server stops.
class TestServer {
 public:
  explicit TestServer(std::string response = k200) : response_(std::move(response)) {}
  ~TestServer() { stop(); }

  bool listen(const std::string& host = "127.0.0.1") {
    host_ = host;
    sockaddr_storage ss;
    socklen_t len;
    if (!fillAddr(host, 0, ss, len)) return false;
    fd_ = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return false;
    int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd_, 64) != 0) {
      close(fd_);
      fd_ = -1;
      return false;
    }
    port_ = boundPort(fd_);
    thread_ = std::thread([this] { run(); });
    return true;
  }

  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    for (int c : held_) close(c);
    held_.clear();
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  void respond(std::string r) {
    std::lock_guard<std::mutex> lock(mu_);
    response_ = std::move(r);
    hang_ = false;
  }
  void hang() {
    std::lock_guard<std::mutex> lock(mu_);
    hang_ = true;
  }
  int accepted() const { return accepted_.load(); }
  std::string firstRequest() {
    std::lock_guard<std::mutex> lock(mu_);
    return first_request_;
  }
  uint16_t port() const { return port_; }
  HostPort hostPort() const { return HostPort{host_, port_}; }

 private:
  void run() {
    while (!stop_) {
      pollfd pfd{fd_, POLLIN, 0};
      if (poll(&pfd, 1, 10) <= 0) continue;
      int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      ++accepted_;
      std::string req = readHead(c);
      std::string response;
      bool hang;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (first_request_.empty()) first_request_ = req;
        response = response_;
        hang = hang_;
      }
      if (hang) {
        held_.push_back(c);
        continue;
      }
      if (!response.empty()) (void)send(c, response.data(), response.size(), MSG_NOSIGNAL);
      close(c);
    }
  }

  std::string readHead(int c) {
    std::string req;
    char buf[1024];
    while (req.find("\r\n\r\n") == std::string::npos && req.size() < 8192 && !stop_) {
      pollfd pfd{c, POLLIN, 0};
      if (poll(&pfd, 1, 1000) <= 0) break;
      ssize_t n = recv(c, buf, sizeof buf, 0);
      if (n <= 0) break;
      req.append(buf, static_cast<size_t>(n));
    }
    return req;
  }

  std::string host_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::mutex mu_;
  std::string response_;
  bool hang_ = false;
  std::string first_request_;
  std::vector<int> held_;  // server thread only, then stop()
};

HealthCheckConfig fastCheck(uint32_t unhealthy = 2, uint32_t healthy = 1) {
  HealthCheckConfig hc;
  hc.enabled = true;
  hc.path = "/healthz";
  hc.interval_ms = 50;
  hc.timeout_ms = 100;
  hc.unhealthy_threshold = unhealthy;
  hc.healthy_threshold = healthy;
  return hc;
}

UpstreamConfig upstream(const std::string& name, std::vector<HostPort> servers, HealthCheckConfig hc) {
  UpstreamConfig u;
  u.name = name;
  u.servers = std::move(servers);
  u.health_check = std::move(hc);
  return u;
}

// Builds a snapshot by hand the way buildSnapshot() does: one health entry per
// server, keyed "upstream/host:port".
Snapshot makeSnapshot(std::vector<UpstreamConfig> upstreams, HealthTable& table) {
  auto config = std::make_shared<Config>();
  config->upstreams = std::move(upstreams);
  Snapshot snap;
  for (const UpstreamConfig& u : config->upstreams) {
    std::vector<HealthTable::Entry*> entries;
    for (const HostPort& s : u.servers) entries.push_back(table.entryFor(u.name + "/" + s.str()));
    snap.health.push_back(std::move(entries));
  }
  snap.config = std::move(config);
  return snap;
}

// Captures stderr for its lifetime (the state-change log lines); ends the
// capture even when an ASSERT returns early, so the next test can capture.
class StderrCapture {
 public:
  StderrCapture() { testing::internal::CaptureStderr(); }
  ~StderrCapture() { take(); }
  std::string take() {
    if (!active_) return {};
    active_ = false;
    return testing::internal::GetCapturedStderr();
  }

 private:
  bool active_ = true;
};

class HealthCheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    // A short ticker so that UV_RUN_ONCE always returns soon, even while the
    // checker has nothing due.
    uv_timer_init(&loop_, &ticker_);
    uv_timer_start(&ticker_, [](uv_timer_t*) {}, 5, 5);
    checker_ = std::make_unique<HealthChecker>(&loop_);
  }

  void TearDown() override {
    if (checker_) checker_->stop();
    checker_.reset();
    uv_close(reinterpret_cast<uv_handle_t*>(&ticker_), nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);  // runs the closes; returns once no handle is left
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "a handle was left open";
  }

  // Runs the loop until `done` holds; false if it did not within `limit`.
  bool runUntil(const std::function<bool()>& done, std::chrono::milliseconds limit = std::chrono::seconds(5)) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      uv_run(&loop_, UV_RUN_ONCE);
    }
    return true;
  }

  // Runs `n` loop iterations (about n ticker periods) whatever happens.
  void spin(int n) {
    for (int i = 0; i < n; ++i) uv_run(&loop_, UV_RUN_ONCE);
  }

  uv_loop_t loop_;
  uv_timer_t ticker_;
  std::unique_ptr<HealthChecker> checker_;
};

TEST_F(HealthCheckTest, HealthyServerStaysHealthyAndGetsTheDocumentedRequest) {
  TestServer server(k200);
  ASSERT_TRUE(server.listen());
  HealthTable table;
  Snapshot snap = makeSnapshot({upstream("app", {server.hostPort()}, fastCheck())}, table);
  HealthTable::Entry* e = snap.health[0][0];
  checker_->update(snap);

  bool ever_unhealthy = false;
  ASSERT_TRUE(runUntil([&] {
    ever_unhealthy |= !e->healthy.load();
    return checker_->probes() >= 4;
  }));
  EXPECT_FALSE(ever_unhealthy);
  EXPECT_TRUE(e->healthy.load());
  EXPECT_GE(server.accepted(), 4);
  EXPECT_EQ(server.firstRequest(), "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(server.port()) +
                                       "\r\nUser-Agent: portcullis-health\r\nConnection: close\r\n\r\n");
}

TEST_F(HealthCheckTest, ServerErrorMarksUnhealthyAfterThresholdAndSuccessesRestoreIt) {
  TestServer server(k500);
  ASSERT_TRUE(server.listen());
  HealthTable table;
  Snapshot snap = makeSnapshot({upstream("app", {server.hostPort()}, fastCheck(2, 2))}, table);
  HealthTable::Entry* e = snap.health[0][0];
  const std::string key = "app/127.0.0.1:" + std::to_string(server.port());
  ASSERT_EQ(e->key, key);

  StderrCapture capture;
  checker_->update(snap);
  ASSERT_TRUE(runUntil([&] { return checker_->probes() >= 1; }));
  EXPECT_TRUE(e->healthy.load()) << "one failure is below unhealthy_threshold=2";
  ASSERT_TRUE(runUntil([&] { return !e->healthy.load(); }));
  EXPECT_EQ(checker_->probes(), 2u);

  server.respond(k200);
  const uint64_t at_switch = checker_->probes();
  ASSERT_TRUE(runUntil([&] { return e->healthy.load(); }));
  EXPECT_GE(checker_->probes(), at_switch + 2) << "healthy_threshold=2 needs two successes";
  std::string log = capture.take();

  EXPECT_NE(log.find("portcullis: upstream " + key + " is now unhealthy (status 500; 2 consecutive failures)\n"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("portcullis: upstream " + key + " is now healthy (status 200; 2 consecutive successes)\n"),
            std::string::npos)
      << log;
}

TEST_F(HealthCheckTest, RefusedConnectionMarksUnhealthy) {
  uint16_t port = closedPort();
  ASSERT_NE(port, 0);
  HealthTable table;
  Snapshot snap = makeSnapshot({upstream("app", {HostPort{"127.0.0.1", port}}, fastCheck())}, table);
  HealthTable::Entry* e = snap.health[0][0];
  StderrCapture capture;
  checker_->update(snap);
  ASSERT_TRUE(runUntil([&] { return !e->healthy.load(); }));
  std::string log = capture.take();
  EXPECT_EQ(checker_->probes(), 2u);
  EXPECT_NE(log.find("is now unhealthy (connect: connection refused; 2 consecutive failures)"), std::string::npos)
      << log;
}

TEST_F(HealthCheckTest, HangingServerTimesOut) {
  TestServer server;
  server.hang();
  ASSERT_TRUE(server.listen());
  HealthTable table;
  Snapshot snap = makeSnapshot({upstream("app", {server.hostPort()}, fastCheck())}, table);
  HealthTable::Entry* e = snap.health[0][0];
  StderrCapture capture;
  checker_->update(snap);
  ASSERT_TRUE(runUntil([&] { return !e->healthy.load(); }));
  std::string log = capture.take();
  EXPECT_EQ(checker_->probes(), 2u);
  EXPECT_GE(server.accepted(), 1) << "the connections were accepted; only the answer was missing";
  EXPECT_NE(log.find("is now unhealthy (timeout after 100 ms; 2 consecutive failures)"), std::string::npos) << log;
}

TEST_F(HealthCheckTest, ClassifiesResponses) {
  struct Case {
    std::string response;
    bool healthy;
  };
  const std::vector<Case> cases = {
      {"HTTP/1.1 204 No Content\r\n\r\n", true},
      {"HTTP/1.1 301 Moved Permanently\r\nLocation: /x\r\n\r\n", true},
      {"HTTP/1.0 200 OK\r\n\r\n", true},
      {"HTTP/1.1 200\r\n\r\n", true},
      {"HTTP/1.1 200 OK\n\n", true},
      {"HTTP/1.1 404 Not Found\r\n\r\n", false},
      {"HTTP/1.1 199 Odd\r\n\r\n", false},
      {"HTTP/1.1 400 Bad Request\r\n\r\n", false},
      {"HTTP/1.1 503 Service Unavailable\r\n\r\n", false},
      {"", false},                               // closed without a byte
      {"HTTP/1.1 200 OK", false},                // closed before the end of the status line
      {"SSH-2.0-OpenSSH_9.2\r\n", false},        // garbage
      {"HTTP/1.1 2000 OK\r\n\r\n", false},       // malformed code
      {"HTTP/1.1 20 OK\r\n\r\n", false},         // malformed code
      {"HTTP/2 200\r\n\r\n", false},             // not HTTP/1.x
      {"HTTP/1.1 200" + std::string(2000, 'x') + "\r\n\r\n", false},  // no line end in the first 1 KiB
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.response.substr(0, 40));
    TestServer server(c.response);
    ASSERT_TRUE(server.listen());
    HealthTable table;
    Snapshot snap = makeSnapshot({upstream("app", {server.hostPort()}, fastCheck(1, 1))}, table);
    HealthTable::Entry* e = snap.health[0][0];
    HealthChecker checker(&loop_);
    StderrCapture capture;
    checker.update(snap);
    bool done = runUntil([&] { return checker.probes() >= 1; });
    checker.stop();
    capture.take();
    ASSERT_TRUE(done);
    EXPECT_EQ(e->healthy.load(), c.healthy);
  }
}

TEST_F(HealthCheckTest, DroppedServerIsNoLongerProbed) {
  TestServer a(k200), b(k200);
  ASSERT_TRUE(a.listen());
  ASSERT_TRUE(b.listen());
  HealthTable table;
  checker_->update(makeSnapshot({upstream("app", {a.hostPort(), b.hostPort()}, fastCheck())}, table));
  ASSERT_TRUE(runUntil([&] { return a.accepted() >= 2 && b.accepted() >= 2; }));

  checker_->update(makeSnapshot({upstream("app", {a.hostPort()}, fastCheck())}, table));
  const int b_before = b.accepted();
  const int a_before = a.accepted();
  ASSERT_TRUE(runUntil([&] { return a.accepted() >= a_before + 5; }));
  // A connection B's server thread had not yet counted may have been started
  // before the update; nothing after it.
  EXPECT_LE(b.accepted(), b_before + 1);
}

TEST_F(HealthCheckTest, KeptServerKeepsItsCountersAcrossUpdates) {
  TestServer server(k500);
  ASSERT_TRUE(server.listen());
  HealthTable table;
  Snapshot first = makeSnapshot({upstream("app", {server.hostPort()}, fastCheck(3))}, table);
  HealthTable::Entry* e = first.health[0][0];
  StderrCapture capture;
  checker_->update(first);
  ASSERT_TRUE(runUntil([&] { return checker_->probes() >= 2; }));
  EXPECT_TRUE(e->healthy.load());

  // A reload: a new config object and snapshot, same server.
  Snapshot second = makeSnapshot({upstream("app", {server.hostPort()}, fastCheck(3))}, table);
  ASSERT_EQ(second.health[0][0], e);
  checker_->update(second);
  ASSERT_TRUE(runUntil([&] { return !e->healthy.load(); }));
  capture.take();
  EXPECT_EQ(checker_->probes(), 3u) << "the third consecutive failure counts across the reload";
}

TEST_F(HealthCheckTest, NewServerIsProbedImmediately) {
  TestServer a(k200), b(k200);
  ASSERT_TRUE(a.listen());
  ASSERT_TRUE(b.listen());
  HealthCheckConfig slow = fastCheck();
  slow.interval_ms = 600000;  // no second probe within the test
  slow.timeout_ms = 2000;
  HealthTable table;
  checker_->update(makeSnapshot({upstream("app", {a.hostPort()}, slow)}, table));
  ASSERT_TRUE(runUntil([&] { return checker_->probes() >= 1; }));
  EXPECT_EQ(a.accepted(), 1);

  checker_->update(makeSnapshot({upstream("app", {a.hostPort(), b.hostPort()}, slow)}, table));
  ASSERT_TRUE(runUntil([&] { return checker_->probes() >= 2; }));
  EXPECT_EQ(b.accepted(), 1);
  EXPECT_EQ(a.accepted(), 1) << "the kept server keeps its schedule";
}

TEST_F(HealthCheckTest, UpstreamWithoutHealthCheckIsHealthyAndNotProbed) {
  TestServer server(k500);
  ASSERT_TRUE(server.listen());
  HealthTable table;
  Snapshot checked = makeSnapshot({upstream("app", {server.hostPort()}, fastCheck())}, table);
  HealthTable::Entry* e = checked.health[0][0];
  StderrCapture capture;
  checker_->update(checked);
  ASSERT_TRUE(runUntil([&] { return !e->healthy.load(); }));

  // Reload with the health check switched off: healthy again at once, no probes.
  checker_->update(makeSnapshot({upstream("app", {server.hostPort()}, HealthCheckConfig{})}, table));
  std::string log = capture.take();
  EXPECT_TRUE(e->healthy.load());
  EXPECT_NE(log.find("is now healthy (health check disabled)"), std::string::npos) << log;
  const uint64_t probes = checker_->probes();
  const int accepted = server.accepted();
  spin(40);
  EXPECT_EQ(checker_->probes(), probes);
  EXPECT_LE(server.accepted(), accepted + 1);  // at most the probe cut short by the reload
}

TEST_F(HealthCheckTest, ProbesIpv6Literal) {
  TestServer server(k200);
  if (!server.listen("::1")) GTEST_SKIP() << "no IPv6 loopback";
  HealthTable table;
  Snapshot snap = makeSnapshot({upstream("app", {server.hostPort()}, fastCheck(1))}, table);
  checker_->update(snap);
  ASSERT_TRUE(runUntil([&] { return checker_->probes() >= 2; }));
  EXPECT_TRUE(snap.health[0][0]->healthy.load());
  EXPECT_EQ(snap.health[0][0]->key, "app/[::1]:" + std::to_string(server.port()));
  EXPECT_NE(server.firstRequest().find("\r\nHost: [::1]:" + std::to_string(server.port()) + "\r\n"),
            std::string::npos);
}

TEST_F(HealthCheckTest, StopAbortsInFlightProbes) {
  TestServer server;
  server.hang();
  ASSERT_TRUE(server.listen());
  HealthTable table;
  HealthCheckConfig hc = fastCheck();
  hc.timeout_ms = 60000;  // the probe stays in flight until stop()
  checker_->update(makeSnapshot({upstream("app", {server.hostPort()}, hc)}, table));
  ASSERT_TRUE(runUntil([&] { return server.accepted() >= 1; }));
  checker_->stop();
  checker_->update(makeSnapshot({upstream("app", {server.hostPort()}, hc)}, table));  // ignored after stop()
  spin(10);
  EXPECT_EQ(checker_->probes(), 0u) << "an aborted probe is not a completed one";
  EXPECT_EQ(server.accepted(), 1);
  // TearDown checks that every handle was closed.
}

TEST_F(HealthCheckTest, DestroyWithoutStopIsSafe) {
  TestServer server;
  server.hang();
  ASSERT_TRUE(server.listen());
  HealthTable table;
  HealthCheckConfig hc = fastCheck();
  hc.timeout_ms = 60000;
  checker_->update(makeSnapshot({upstream("app", {server.hostPort()}, hc)}, table));
  ASSERT_TRUE(runUntil([&] { return server.accepted() >= 1; }));
  checker_.reset();  // the loop completes the closes in TearDown
}

}  // namespace
}  // namespace portcullis
