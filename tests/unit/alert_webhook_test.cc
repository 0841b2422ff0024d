#include "proxy/alert_webhook.h"

#include <gtest/gtest.h>

#include <chrono>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "proxy/audit_log.h"
#include "proxy/keyring.h"
#include "proxy/security_events.h"
#include "tests/unit/loopback_server.h"
#include "tests/unit/temp_dir.h"

namespace portcullis {
namespace {

using testing::LoopbackServer;
using testing::unusedLoopbackPort;
using testing::waitFor;
using Clock = std::chrono::steady_clock;

struct Received {
  std::string head;  // request line and headers, up to and including the blank line
  std::string body;
  int connection = 0;
};

// A minimal HTTP/1.1 collector: records each request and answers with the next
// scripted status (200 once the script is used up), keeping the connection open.
// With `silent`, it reads requests and never answers.
class FakeCollector {
 public:
  explicit FakeCollector(std::vector<int> statuses = {}, uint16_t port = 0, bool silent = false)
      : statuses_(statuses.begin(), statuses.end()),
        silent_(silent),
        server_(port, [this](int fd, const std::atomic<bool>& stopping) { serve(fd, stopping); }) {}

  uint16_t port() const { return server_.port(); }
  bool ok() const { return server_.ok(); }
  int connections() const { return server_.connections(); }

  // Replies sent verbatim, in order, before the scripted statuses; after one that
  // is HTTP/1.0, says "Connection: close" or carries the test's own
  // "X-Test-Close" header the collector closes the connection.
  void setRawReplies(std::vector<std::string> replies) {
    std::lock_guard<std::mutex> lock(mu_);
    raw_.assign(replies.begin(), replies.end());
  }

  std::vector<Received> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }
  size_t count() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_.size();
  }

 private:
  void serve(int fd, const std::atomic<bool>& stopping) {
    const int connection = server_.connections();
    std::string buf;
    while (!stopping) {
      if (!LoopbackServer::readSome(fd, buf)) return;
      const size_t end = buf.find("\r\n\r\n");
      if (end == std::string::npos) continue;
      size_t length = 0;
      const size_t cl = buf.find("Content-Length: ");
      if (cl != std::string::npos && cl < end) length = std::stoul(buf.substr(cl + 16));
      if (buf.size() < end + 4 + length) continue;
      Received r{buf.substr(0, end + 4), buf.substr(end + 4, length), connection};
      buf.erase(0, end + 4 + length);
      int status = 200;
      std::string raw;
      {
        std::lock_guard<std::mutex> lock(mu_);
        requests_.push_back(r);
        if (!raw_.empty()) {
          raw = raw_.front();
          raw_.pop_front();
        } else if (!statuses_.empty()) {
          status = statuses_.front();
          statuses_.pop_front();
        }
      }
      if (silent_) continue;
      if (!raw.empty()) {
        testing::writeAllTo(fd, raw);
        if (raw.compare(0, 8, "HTTP/1.0") == 0 ||
            raw.find("Connection: close") != std::string::npos ||
            raw.find("X-Test-Close") != std::string::npos) {
          return;
        }
        continue;
      }
      testing::writeAllTo(fd, "HTTP/1.1 " + std::to_string(status) +
                                  " Whatever\r\nContent-Length: 2\r\n\r\nok");
    }
  }

  std::mutex mu_;
  std::deque<int> statuses_;
  std::deque<std::string> raw_;
  std::vector<Received> requests_;
  const bool silent_;
  LoopbackServer server_;  // last: its thread uses the members above
};

std::string urlFor(uint16_t port, const std::string& path = "/alerts") {
  return "http://127.0.0.1:" + std::to_string(port) + path;
}

TEST(AlertWebhook, PostsExactBodyAndHeadersAndReusesConnection) {
  FakeCollector collector;
  ASSERT_TRUE(collector.ok());
  AlertWebhook hook;
  std::string error;
  ASSERT_TRUE(hook.start(urlFor(collector.port(), "/hooks/alert?src=pc"), error)) << error;

  const std::string body = R"({"event":"alert","kind":"auth_failures","ip":"203.0.113.9"})";
  ASSERT_TRUE(hook.post(std::string(body)));
  ASSERT_TRUE(waitFor([&] { return hook.sent() == 1; }));
  ASSERT_TRUE(hook.post(std::string(R"({"n":2})")));
  ASSERT_TRUE(waitFor([&] { return hook.sent() == 2; }));

  const auto reqs = collector.requests();
  ASSERT_EQ(reqs.size(), 2u);
  const std::string expected_head =
      "POST /hooks/alert?src=pc HTTP/1.1\r\n"
      "Host: 127.0.0.1:" + std::to_string(collector.port()) + "\r\n"
      "User-Agent: portcullis\r\n"
      "Content-Type: application/json\r\n"
      "Content-Length: " + std::to_string(body.size()) + "\r\n"
      "Connection: keep-alive\r\n\r\n";
  EXPECT_EQ(reqs[0].head, expected_head);
  EXPECT_EQ(reqs[0].body, body);
  EXPECT_EQ(reqs[1].body, R"({"n":2})");
  EXPECT_EQ(reqs[1].connection, reqs[0].connection);  // kept alive
  EXPECT_EQ(collector.connections(), 1);
  EXPECT_EQ(hook.failed(), 0u);
  EXPECT_EQ(hook.retries(), 0u);
  EXPECT_EQ(hook.dropped(), 0u);
  EXPECT_EQ(hook.depth(), 0u);
}

TEST(AlertWebhook, ReadsChunkedAndCloseDelimitedResponses) {
  FakeCollector collector;
  ASSERT_TRUE(collector.ok());
  collector.setRawReplies({
      "HTTP/1.1 100 Continue\r\n\r\n"
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
      "2;ext=1\r\nok\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n",
      "HTTP/1.1 204 No Content\r\n\r\n",
      "HTTP/1.0 202 Accepted\r\n\r\nqueued",  // body ends with the connection
      "HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
  });
  AlertWebhook hook;
  std::string error;
  ASSERT_TRUE(hook.start(urlFor(collector.port()), error)) << error;
  for (int i = 1; i <= 5; ++i) {
    ASSERT_TRUE(hook.post("{}"));
    ASSERT_TRUE(waitFor([&] { return hook.sent() == static_cast<uint64_t>(i); })) << i;
  }
  const auto reqs = collector.requests();
  ASSERT_EQ(reqs.size(), 5u);
  EXPECT_EQ(reqs[0].connection, 1);
  EXPECT_EQ(reqs[1].connection, 1);  // after a chunked response and a 204
  EXPECT_EQ(reqs[2].connection, 1);
  EXPECT_EQ(reqs[3].connection, 2);  // the HTTP/1.0 reply closed the first
  EXPECT_EQ(reqs[4].connection, 3);  // "Connection: close"
  EXPECT_EQ(hook.retries(), 0u);
  EXPECT_EQ(hook.failed(), 0u);
}

TEST(AlertWebhook, StaleKeptAliveConnectionIsReplacedWithoutARetry) {
  FakeCollector collector;
  ASSERT_TRUE(collector.ok());
  // Looks kept alive, but the collector closes right after answering.
  collector.setRawReplies({"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Test-Close: 1\r\n\r\n"});
  AlertWebhook hook;
  std::string error;
  ASSERT_TRUE(hook.start(urlFor(collector.port()), error)) << error;
  ASSERT_TRUE(hook.post(R"({"n":1})"));
  ASSERT_TRUE(waitFor([&] { return hook.sent() == 1; }));
  ASSERT_TRUE(waitFor([&] { return collector.connections() == 1; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let the close arrive
  ASSERT_TRUE(hook.post(R"({"n":2})"));
  ASSERT_TRUE(waitFor([&] { return hook.sent() == 2; }));
  EXPECT_EQ(hook.retries(), 0u);
  EXPECT_EQ(hook.failed(), 0u);
  EXPECT_EQ(collector.connections(), 2);
  const auto reqs = collector.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[1].body, R"({"n":2})");
}

TEST(AlertWebhook, RetriesAfterServerErrors) {
  FakeCollector collector({500, 500, 200});
  ASSERT_TRUE(collector.ok());
  AlertWebhook hook;
  std::string error;
  ASSERT_TRUE(hook.start(urlFor(collector.port()), error)) << error;
  ASSERT_TRUE(hook.post(R"({"kind":"rate_spike"})"));
  ASSERT_TRUE(waitFor([&] { return hook.sent() == 1; }));
  EXPECT_EQ(hook.retries(), 2u);
  EXPECT_EQ(hook.failed(), 0u);
  const auto reqs = collector.requests();
  ASSERT_EQ(reqs.size(), 3u);
  for (const auto& r : reqs) EXPECT_EQ(r.body, R"({"kind":"rate_spike"})");
}

// Posts one alert to `collector` and expects the webhook to give up on it after
// options.max_attempts attempts.
void expectGivesUp(FakeCollector& collector, const AlertWebhook::Options& options) {
  AlertWebhook hook(options);
  std::string error;
  ASSERT_TRUE(hook.start(urlFor(collector.port()), error)) << error;
  ASSERT_TRUE(hook.post("{}"));
  ASSERT_TRUE(waitFor([&] { return hook.failed() == 1; }));
  EXPECT_EQ(hook.sent(), 0u);
  EXPECT_EQ(hook.retries(), static_cast<uint64_t>(options.max_attempts - 1));
  EXPECT_EQ(hook.dropped(), 0u);
  EXPECT_EQ(collector.count(), static_cast<size_t>(options.max_attempts));
}

TEST(AlertWebhook, GivesUpAfterMaxAttempts) {
  FakeCollector collector({503, 503, 503, 503});
  ASSERT_TRUE(collector.ok());
  AlertWebhook::Options options;
  options.max_attempts = 3;
  expectGivesUp(collector, options);
}

TEST(AlertWebhook, CollectorStartingLateStillGetsTheAlert) {
  const uint16_t port = unusedLoopbackPort();
  AlertWebhook hook;
  std::string error;
  ASSERT_TRUE(hook.start(urlFor(port), error)) << error;
  ASSERT_TRUE(hook.post(R"({"late":true})"));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(hook.sent(), 0u);
  FakeCollector collector({}, port);
  ASSERT_TRUE(collector.ok());
  ASSERT_TRUE(waitFor([&] { return hook.sent() == 1; }));
  EXPECT_GE(hook.retries(), 1u);
  EXPECT_EQ(hook.failed(), 0u);
  ASSERT_EQ(collector.count(), 1u);
  EXPECT_EQ(collector.requests()[0].body, R"({"late":true})");
}

TEST(AlertWebhook, ResponseTimeoutCountsAsFailure) {
  FakeCollector collector({}, 0, /*silent=*/true);
  ASSERT_TRUE(collector.ok());
  AlertWebhook::Options options;
  options.io_timeout_ms = 150;
  options.max_attempts = 2;
  expectGivesUp(collector, options);
}

TEST(AlertWebhook, FullQueueDropsAndNeverBlocks) {
  AlertWebhook::Options options;
  options.capacity = 16;
  AlertWebhook hook(options);
  std::string error;
  ASSERT_TRUE(hook.start(urlFor(unusedLoopbackPort()), error)) << error;
  const auto t0 = Clock::now();
  size_t accepted = 0;
  for (int i = 0; i < 10000; ++i) accepted += hook.post(R"({"i":)" + std::to_string(i) + "}");
  const auto elapsed = Clock::now() - t0;
  // Generous: 10k posts take a few milliseconds; a blocking post() would take
  // seconds (connect refusals and backoff).
  EXPECT_LT(elapsed, std::chrono::seconds(1));
  EXPECT_LE(accepted, 17u);  // the queue, plus the one the thread may hold
  EXPECT_EQ(hook.dropped(), 10000u - accepted);
  EXPECT_LE(hook.depth(), 16u);
  hook.stop();
  EXPECT_EQ(hook.dropped(), 10000u);  // the queued ones are abandoned by stop()
  EXPECT_FALSE(hook.post("{}"));
  EXPECT_EQ(hook.dropped(), 10001u);
}

TEST(AlertWebhook, StopIsPromptWhileRetrying) {
  FakeCollector collector({500, 500, 500, 500, 500, 500});
  ASSERT_TRUE(collector.ok());
  AlertWebhook hook;
  std::string error;
  ASSERT_TRUE(hook.start(urlFor(collector.port()), error)) << error;
  ASSERT_TRUE(hook.post("{}"));
  ASSERT_TRUE(hook.post("{}"));
  ASSERT_TRUE(waitFor([&] { return hook.retries() >= 2; }));  // now in a 400 ms+ backoff
  const auto t0 = Clock::now();
  hook.stop();
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(1));
  EXPECT_EQ(hook.sent(), 0u);
  EXPECT_EQ(hook.dropped(), 2u);  // the one in backoff and the queued one
}

TEST(AlertWebhook, StopIsPromptWhileWaitingForAResponse) {
  FakeCollector collector({}, 0, /*silent=*/true);
  ASSERT_TRUE(collector.ok());
  AlertWebhook hook;  // 2 s timeouts
  std::string error;
  ASSERT_TRUE(hook.start(urlFor(collector.port()), error)) << error;
  ASSERT_TRUE(hook.post("{}"));
  ASSERT_TRUE(waitFor([&] { return collector.count() == 1; }));
  const auto t0 = Clock::now();
  hook.stop();
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(1));
  EXPECT_EQ(hook.dropped(), 1u);
}

TEST(AlertWebhook, UrlValidation) {
  const struct {
    const char* url;
    const char* error_part;
  } bad[] = {
      {"https://127.0.0.1:8443/alerts", "https:// is not supported"},
      {"HTTPS://127.0.0.1/alerts", "https:// is not supported"},
      {"ftp://127.0.0.1/x", "must start with http://"},
      {"127.0.0.1:80/x", "must start with http://"},
      {"http://collector.internal:8080/x", "not an IP literal or localhost"},
      {"http://:8080/x", "not an IP literal"},
      {"http:///x", "missing host"},
      {"http://127.0.0.1:0/x", "invalid port"},
      {"http://127.0.0.1:65536/x", "invalid port"},
      {"http://127.0.0.1:80a/x", "invalid port"},
      {"http://user:pw@127.0.0.1/x", "user info"},
      {"http://127.0.0.1/x#frag", "fragment"},
      {"http://127.0.0.1/a b", "must not contain spaces"},
      {"http://127.0.0.1/a\r\nX-Injected: 1", "must not contain spaces"},
      {"http://127.0.0.1/caf\xc3\xa9", "must not contain spaces"},
      {"http://[::1/x", "unterminated IPv6"},
      {"http://::1/x", "invalid port"},
  };
  for (const auto& c : bad) {
    AlertWebhook hook;
    std::string error;
    EXPECT_FALSE(hook.start(c.url, error)) << c.url;
    EXPECT_NE(error.find(c.error_part), std::string::npos) << c.url << " -> " << error;
    EXPECT_EQ(error.find('\n'), std::string::npos) << error;
  }
  for (const char* good : {"http://127.0.0.1:9/alerts", "http://[::1]:9/", "http://localhost:9",
                           "http://127.0.0.1", "http://127.0.0.1:9?x=1"}) {
    AlertWebhook hook;
    std::string error;
    EXPECT_TRUE(hook.start(good, error)) << good << " -> " << error;
  }
  AlertWebhook twice;
  std::string error;
  ASSERT_TRUE(twice.start("http://127.0.0.1:9/", error));
  EXPECT_FALSE(twice.start("http://127.0.0.1:9/", error));
}

TEST(AlertWebhook, EmptyUrlDisables) {
  AlertWebhook hook;
  std::string error;
  ASSERT_TRUE(hook.start("", error)) << error;
  EXPECT_FALSE(hook.enabled());
  EXPECT_TRUE(hook.post("{}"));
  EXPECT_EQ(hook.dropped(), 0u);
  EXPECT_EQ(hook.depth(), 0u);
}

// The audit log's audit_tamper alerts are found at start, before the webhook
// may have started: posted then, it is delivered once the webhook starts;
// it is a log line and a POST like a detector alert, counted, and not
// recorded again (the audit log wrote it already).
TEST(AlertDispatcher, RecordedAlertReachesAWebhookStartedLaterAndIsNotRecordedAgain) {
  testing_support::TempDir dir;
  KeyringData data;
  data.active = "k1";
  MasterKey key{};
  key[0] = 42;
  data.keys.emplace_back("k1", key);
  std::string error;
  ASSERT_TRUE(writeKeyring(dir.path + "/keyring.toml", data, error)) << error;
  const auto ring = LocalKeyring::load(dir.path + "/keyring.toml", error);
  ASSERT_TRUE(ring) << error;
  AuditLog audit;
  ASSERT_TRUE(audit.start(dir.path + "/audit.log", ring, error)) << error;
  FakeCollector collector;
  ASSERT_TRUE(collector.ok());
  AlertWebhook hook;
  AlertDispatcher alerts;
  alerts.attach(&audit, &hook);

  const std::string members = R"("kind":"audit_tamper","found":"bad_mac","seq":7)";
  alerts.onRecordedAlert(AlertKind::kAuditTamper, members);
  EXPECT_EQ(alerts.recordedAlerts(AlertKind::kAuditTamper), 1u);
  EXPECT_EQ(alerts.recordedAlerts(AlertKind::kBan), 0u);
  ASSERT_TRUE(hook.start(urlFor(collector.port()), error)) << error;
  ASSERT_TRUE(waitFor([&] { return hook.sent() == 1; }));
  const std::string body = collector.requests().at(0).body;
  EXPECT_EQ(body.rfind("{\"event\":\"alert\",\"ts\":\"", 0), 0u) << body;
  EXPECT_NE(body.find("Z\"," + members + "}"), std::string::npos) << body;
  EXPECT_EQ(body.back(), '}');
  audit.stop();
  EXPECT_EQ(audit.written(), 1u) << "only audit.start: the alert is not recorded twice";
}

}  // namespace
}  // namespace portcullis
