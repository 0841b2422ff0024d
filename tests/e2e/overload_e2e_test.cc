// The overload manager (limits.buffer_memory_bytes): over the watermark a
// worker closes new connections at once and idle connections stop reading;
// exchanges in flight complete, and once buffer memory falls back under 7/8
// of the watermark everything is served again.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "tests/e2e/harness.h"

namespace portcullis::e2e {
namespace {

TEST(OverloadE2E, OverWatermarkRefusesNewConnectionsAndPausesIdleOnesUntilDrained) {
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.workers = 1;
  // Pool buffers are 64 KiB: a fifth buffer held by connections passes it.
  o.limits["buffer_memory_bytes"] = 4 * 65536;
  o.routes[0].max_body_bytes = 1 << 20;
  Proxy proxy(o);

  // A keep-alive client, idle between requests (it holds no buffer).
  Client idle(proxy.httpPort());
  ASSERT_EQ(idle.roundTrip(getRequest("/before")).status, 200);
  EXPECT_EQ(proxy.metricOr0("portcullis_overload_active"), 0);

  // Five uploads in progress each hold their read buffer.
  constexpr size_t kBody = 100000;
  std::vector<std::unique_ptr<Client>> uploads;
  for (int i = 0; i < 5; ++i) {
    auto c = std::make_unique<Client>(proxy.httpPort());
    ASSERT_TRUE(c->send("POST /upload HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: " + std::to_string(kBody) +
                        "\r\n\r\n" + patternBytes(0, 1000)));
    uploads.push_back(std::move(c));
  }
  ASSERT_EQ(proxy.waitForMetric("portcullis_overload_active", 1), 1) << proxy.metricsText();
  EXPECT_EQ(proxy.metricOr0("portcullis_overload_episodes_total"), 1);

  // A new connection is closed at once, unanswered.
  {
    Client fresh(proxy.httpPort());
    fresh.send(getRequest("/new"));
    size_t extra = 0;
    EXPECT_TRUE(fresh.waitClosed(Millis(3000), &extra));
    EXPECT_EQ(extra, 0u);
  }
  EXPECT_EQ(proxy.waitForMetric("portcullis_overload_refused_connections_total", 1), 1);

  // The idle connection's next request waits (nothing is read from it).
  ASSERT_TRUE(idle.send(getRequest("/during")));
  idle.setTimeout(Millis(400));
  std::string got;
  EXPECT_EQ(idle.readSome(got, 4096), -1) << got;
  EXPECT_GE(proxy.metricOr0("portcullis_overload_paused_reads_total"), 1);

  // The uploads complete: their buffers come back, the worker recovers.
  for (auto& c : uploads) ASSERT_TRUE(c->send(patternBytes(1000, kBody - 1000)));
  for (auto& c : uploads) {
    HttpResponse r;
    ASSERT_EQ(c->readResponse(r), ReadResult::kOk);
    EXPECT_EQ(r.status, 200);
    std::optional<Echo> echo = parseEcho(r.body);
    ASSERT_TRUE(echo.has_value());
    EXPECT_EQ(echo->body_bytes, kBody);
    EXPECT_EQ(echo->body_sha256, patternSha256(kBody));
  }
  uploads.clear();
  EXPECT_EQ(proxy.waitForMetric("portcullis_overload_active", 0), 0);
  // The paused request is served now, and new connections are accepted.
  idle.setTimeout(Millis(5000));
  HttpResponse r;
  ASSERT_EQ(idle.readResponse(r), ReadResult::kOk);
  EXPECT_EQ(r.status, 200);
  std::optional<Echo> echo = parseEcho(r.body);
  ASSERT_TRUE(echo.has_value());
  EXPECT_EQ(echo->path, "/during");
  Client after(proxy.httpPort());
  EXPECT_EQ(after.roundTrip(getRequest("/after")).status, 200);
  EXPECT_EQ(backend.requests(), 8u);  // /before, five uploads, /during, /after; never /new
}

}  // namespace
}  // namespace portcullis::e2e
