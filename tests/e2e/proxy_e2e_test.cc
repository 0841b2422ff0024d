// End-to-end tests of the proxy's data path: the real `portcullis` binary in
// front of the real `demo-backend` (or a scripted in-test upstream), driven
// with raw bytes over loopback. See tests/e2e/harness.h for the machinery.
//
// What the backend received is read back from its JSON echo; "the backend saw
// nothing" is checked with a ScriptedUpstream whose accept count must stay 0.
// No test asserts on timing: waits are only upper bounds.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include "tests/e2e/harness.h"

namespace portcullis::e2e {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kBig = 64ull << 20;  // 64 MiB

class ProxyE2E : public ::testing::Test {
 protected:
  ProxyOptions options() const { return ProxyOptions::forBackend(backend_.address()); }

  DemoBackend backend_;
};


Echo echoOf(const HttpResponse& r) {
  auto e = parseEcho(r.body);
  if (!e) throw std::runtime_error("not an echo body: " + r.body.substr(0, 300));
  return *e;
}

std::string chunked(const std::vector<std::string>& pieces, std::string_view trailer = "") {
  std::string out;
  char line[32];
  for (const auto& p : pieces) {
    std::snprintf(line, sizeof(line), "%zx\r\n", p.size());
    out += line;
    out += p;
    out += "\r\n";
  }
  out += "0\r\n";
  out += trailer;
  out += "\r\n";
  return out;
}

// A deterministic 1 MiB block of upload data (not the backend's pattern).
const std::string& uploadBlock() {
  static const std::string block = [] {
    std::string b(1u << 20, '\0');
    uint32_t x = 0x9e3779b9u;
    for (char& c : b) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      c = static_cast<char>(x >> 24);
    }
    return b;
  }();
  return block;
}

// ---------------------------------------------------------------------------
// 1. Keep-alive and the request edits of SPEC §6

TEST_F(ProxyE2E, KeepAliveForwardsOnlyCleanHeaders) {
  Proxy proxy(options());
  Client c(proxy.httpPort());
  std::set<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    const std::string path = "/echo/" + std::to_string(i) + "?n=" + std::to_string(i);
    const std::string req = "GET " + path +
                            " HTTP/1.1\r\n"
                            "Host: e2e.test\r\n"
                            "X-Portcullis-Foo: evil\r\n"
                            "X-Portcullis-Account: mallory\r\n"
                            "X-Forwarded-For: 6.6.6.6\r\n"
                            "X-Forwarded-Proto: https\r\n"
                            "X-Request-Id: chosen-by-client\r\n"
                            "Connection: keep-alive, Foo\r\n"
                            "Foo: bar\r\n"
                            "Keep-Alive: timeout=5\r\n"
                            "TE: trailers\r\n"
                            "Upgrade: websocket\r\n"
                            "Proxy-Connection: keep-alive\r\n"
                            "X-Custom: kept\r\n"
                            "\r\n";
    HttpResponse r = c.roundTrip(req);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_FALSE(r.hasHeader("server"));
    EXPECT_NE(r.header("connection").value_or(""), "close");
    ASSERT_EQ(r.headerCount("x-request-id"), 1u);
    const std::string id = *r.header("x-request-id");
    EXPECT_TRUE(isRequestId(id)) << id;
    ids.insert(id);

    Echo e = echoOf(r);
    EXPECT_EQ(e.method, "GET");
    EXPECT_EQ(e.path, path);
    EXPECT_EQ(e.headers["host"], "e2e.test");
    EXPECT_EQ(e.headers["x-request-id"], id);
    EXPECT_EQ(e.headers["x-forwarded-for"], "127.0.0.1");
    EXPECT_EQ(e.headers["x-forwarded-proto"], "http");  // plaintext listener: the truth, not the client's claim
    EXPECT_EQ(e.headers["x-custom"], "kept");
    for (const char* gone : {"foo", "connection", "keep-alive", "te", "upgrade", "proxy-connection"}) {
      EXPECT_EQ(e.headers.count(gone), 0u) << gone << " was forwarded";
    }
    for (const auto& [k, v] : e.headers) {
      EXPECT_NE(k.rfind("x-portcullis-", 0), 0u) << k << ": " << v << " was forwarded";
    }
  }
  EXPECT_EQ(ids.size(), 5u);
  EXPECT_EQ(proxy.metricOr0("portcullis_connections_total"), 1);
  EXPECT_EQ(proxy.waitForMetric("portcullis_requests_total{route=\"/\",method=\"GET\",status=\"200\"}", 5), 5);
}

// ---------------------------------------------------------------------------
// 2. Pipelining

TEST_F(ProxyE2E, PipelinedRequestsAnsweredInOrder) {
  Proxy proxy(options());
  Client c(proxy.httpPort());
  enum Kind { kGet, kPost, kDelay, kHead, kRefused };
  struct Item {
    Kind kind;
    std::string path;
    std::string body;
  };
  std::vector<Item> items;
  std::string batch;
  for (int i = 0; i < 14; ++i) {
    const std::string n = std::to_string(i);
    if (i % 4 == 1) {
      Item it{kPost, "/pipe/" + n, "body-of-" + n + std::string(static_cast<size_t>(i) * 100, 'x')};
      batch += "POST " + it.path + " HTTP/1.1\r\nHost: e2e.test\r\nTransfer-Encoding: chunked\r\n\r\n" +
               chunked({it.body.substr(0, 5), it.body.substr(5)});
      items.push_back(it);
    } else if (i % 4 == 2) {
      items.push_back({kDelay, "/delay/50", ""});
      batch += getRequest("/delay/50");
    } else if (i == 7) {
      items.push_back({kHead, "/bytes/1000", ""});
      batch += "HEAD /bytes/1000 HTTP/1.1\r\nHost: e2e.test\r\n\r\n";
    } else if (i == 8) {
      // Answered by the proxy itself (405), the connection goes on.
      items.push_back({kRefused, "/pipe/" + n, ""});
      batch += "TRACE /pipe/" + n + " HTTP/1.1\r\nHost: e2e.test\r\n\r\n";
    } else {
      items.push_back({kGet, "/pipe/" + n + "?i=" + n, ""});
      batch += getRequest(items.back().path);
    }
  }
  ASSERT_TRUE(c.send(batch));  // one write
  std::set<std::string> ids;
  for (size_t i = 0; i < items.size(); ++i) {
    SCOPED_TRACE("response " + std::to_string(i));
    HttpResponse r;
    ReadOptions ro;
    ro.head_request = items[i].kind == kHead;
    ASSERT_EQ(c.readResponse(r, ro), ReadResult::kOk);
    ids.insert(r.header("x-request-id").value_or(""));
    if (items[i].kind == kRefused) {
      expectProxyError(r, 405, "method_not_allowed");
      continue;
    }
    ASSERT_EQ(r.status, 200) << r.body;
    switch (items[i].kind) {
      case kRefused:
        break;
      case kDelay:
        EXPECT_EQ(r.body, "{}");
        break;
      case kHead:
        EXPECT_EQ(r.header("content-length").value_or(""), "1000");
        EXPECT_EQ(r.body_bytes, 0u);
        break;
      case kGet: {
        Echo e = echoOf(r);
        EXPECT_EQ(e.method, "GET");
        EXPECT_EQ(e.path, items[i].path);
        EXPECT_EQ(e.body_bytes, 0u);
        break;
      }
      case kPost: {
        Echo e = echoOf(r);
        EXPECT_EQ(e.method, "POST");
        EXPECT_EQ(e.path, items[i].path);
        EXPECT_EQ(e.body_bytes, items[i].body.size());
        EXPECT_EQ(e.body_sha256, sha256Hex(items[i].body));
        break;
      }
    }
  }
  EXPECT_EQ(ids.size(), items.size());
  // The connection is still usable afterwards.
  HttpResponse r = c.roundTrip(getRequest("/after"));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(echoOf(r).path, "/after");
}

// ---------------------------------------------------------------------------
// 3. Chunked in both directions

TEST_F(ProxyE2E, ChunkedUploadReachesBackendIntact) {
  Proxy proxy(options());
  Client c(proxy.httpPort());
  const std::string big = patternBytes(0, 70000);
  const std::string body = "a" + std::string(26, 'b') + big + "tail";
  // Upper-case hex, a chunk extension and a trailer, all legal; the big chunk
  // spans several reads.
  char big_size[32];
  std::snprintf(big_size, sizeof(big_size), "%zX", big.size());
  const std::string wire = "POST /upload-chunked HTTP/1.1\r\nHost: e2e.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                           "1;ext=yes\r\na\r\n"
                           "1A\r\n" + std::string(26, 'b') + "\r\n" +
                           big_size + "\r\n" + big + "\r\n"
                           "4\r\ntail\r\n"
                           "0\r\nX-Trailer: t\r\n\r\n";
  HttpResponse r = c.roundTrip(wire);
  ASSERT_EQ(r.status, 200) << r.body;
  Echo e = echoOf(r);
  EXPECT_EQ(e.method, "POST");
  EXPECT_EQ(e.body_bytes, body.size());
  EXPECT_EQ(e.body_sha256, sha256Hex(body));
  EXPECT_EQ(e.headers["transfer-encoding"], "chunked");
  EXPECT_EQ(e.headers.count("content-length"), 0u);

  // And a keep-alive follow-up on the same connection.
  HttpResponse r2 = c.roundTrip(getRequest("/next"));
  EXPECT_EQ(r2.status, 200);
  EXPECT_EQ(echoOf(r2).path, "/next");
}

TEST_F(ProxyE2E, ChunkedResponseToHttp11Client) {
  Proxy proxy(options());
  Client c(proxy.httpPort());
  HttpResponse r = c.roundTrip(getRequest("/chunked/100000"));
  ASSERT_EQ(r.status, 200);
  EXPECT_TRUE(r.chunked);
  EXPECT_FALSE(r.hasHeader("content-length"));
  EXPECT_GT(r.chunks, 1u);
  EXPECT_EQ(r.body.size(), 100000u);
  EXPECT_TRUE(r.body == patternBytes(0, 100000));
  HttpResponse r2 = c.roundTrip(getRequest("/tiny"));
  EXPECT_EQ(r2.status, 200);
  EXPECT_EQ(r2.body.size(), 64u);
}

TEST_F(ProxyE2E, ChunkedResponseToHttp10ClientEndsWithClose) {
  Proxy proxy(options());
  Client c(proxy.httpPort());
  ASSERT_TRUE(c.send("GET /chunked/100000 HTTP/1.0\r\nHost: e2e.test\r\n\r\n"));
  HttpResponse r;
  ASSERT_EQ(c.readResponse(r), ReadResult::kOk);
  ASSERT_EQ(r.status, 200);
  EXPECT_TRUE(r.until_close);
  EXPECT_FALSE(r.chunked);
  EXPECT_FALSE(r.hasHeader("transfer-encoding"));
  EXPECT_FALSE(r.hasHeader("content-length"));
  EXPECT_EQ(r.body.size(), 100000u);
  EXPECT_TRUE(r.body == patternBytes(0, 100000));
}

TEST_F(ProxyE2E, ExpectContinueIsAnsweredByProxy) {
  Proxy proxy(options());
  Client c(proxy.httpPort());
  ASSERT_TRUE(c.send("POST /expect HTTP/1.1\r\nHost: e2e.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"));
  std::string got;
  while (got.find("\r\n\r\n") == std::string::npos) {
    ASSERT_GT(c.readSome(got, 1), 0) << "no 100 Continue; got: " << got;
  }
  EXPECT_EQ(got.rfind("HTTP/1.1 100 ", 0), 0u) << got;
  ASSERT_TRUE(c.send("hello"));
  HttpResponse r;
  ASSERT_EQ(c.readResponse(r), ReadResult::kOk);
  ASSERT_EQ(r.status, 200);
  Echo e = echoOf(r);
  EXPECT_EQ(e.body_sha256, sha256Hex("hello"));
  EXPECT_EQ(e.headers.count("expect"), 0u);
}

// ---------------------------------------------------------------------------
// 4. 64 MiB each way

ProxyOptions bigBodyOptions(const std::string& backend) {
  ProxyOptions o = ProxyOptions::forBackend(backend);
  o.routes[0].max_body_bytes = 2 * kBig;
  return o;
}

TEST_F(ProxyE2E, LargeUploadContentLength) {
  Proxy proxy(bigBodyOptions(backend_.address()));
  Client c(proxy.httpPort(), Millis(30000));
  ASSERT_TRUE(c.send("POST /big-cl HTTP/1.1\r\nHost: e2e.test\r\nContent-Type: application/octet-stream\r\n"
                     "Content-Length: " + std::to_string(kBig) + "\r\n\r\n"));
  const std::string& block = uploadBlock();
  Sha256 h;
  for (uint64_t sent = 0; sent < kBig; sent += block.size()) {
    ASSERT_TRUE(c.send(block)) << "send failed at " << sent;
    h.update(block);
  }
  HttpResponse r;
  ASSERT_EQ(c.readResponse(r), ReadResult::kOk);
  ASSERT_EQ(r.status, 200) << r.body;
  Echo e = echoOf(r);
  EXPECT_EQ(e.body_bytes, kBig);
  EXPECT_EQ(e.body_sha256, h.hexDigest());
  EXPECT_EQ(e.headers["content-length"], std::to_string(kBig));
}

TEST_F(ProxyE2E, LargeUploadChunked) {
  Proxy proxy(bigBodyOptions(backend_.address()));
  Client c(proxy.httpPort(), Millis(30000));
  ASSERT_TRUE(c.send("POST /big-chunked HTTP/1.1\r\nHost: e2e.test\r\nTransfer-Encoding: chunked\r\n\r\n"));
  const std::string& block = uploadBlock();
  const size_t sizes[] = {block.size(), 65536 + 3, 7, 300001, 16384};
  Sha256 h;
  uint64_t sent = 0;
  for (size_t k = 0; sent < kBig; ++k) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(sizes[k % 5], kBig - sent));
    char line[32];
    std::snprintf(line, sizeof(line), "%zx\r\n", n);
    std::string frame = line;
    frame.append(block.data(), n);
    frame += "\r\n";
    ASSERT_TRUE(c.send(frame)) << "send failed at " << sent;
    h.update(block.data(), n);
    sent += n;
  }
  ASSERT_TRUE(c.send("0\r\n\r\n"));
  HttpResponse r;
  ASSERT_EQ(c.readResponse(r), ReadResult::kOk);
  ASSERT_EQ(r.status, 200) << r.body;
  Echo e = echoOf(r);
  EXPECT_EQ(e.body_bytes, kBig);
  EXPECT_EQ(e.body_sha256, h.hexDigest());
}

TEST_F(ProxyE2E, LargeDownload) {
  Proxy proxy(bigBodyOptions(backend_.address()));
  Client c(proxy.httpPort(), Millis(30000));
  Sha256 h;
  ReadOptions ro;
  ro.sink = [&](const char* p, size_t n) { h.update(p, n); };
  HttpResponse r = c.roundTrip(getRequest("/bytes/" + std::to_string(kBig)), ro);
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.header("content-length").value_or(""), std::to_string(kBig));
  EXPECT_EQ(r.body_bytes, kBig);
  EXPECT_EQ(h.hexDigest(), patternSha256(kBig));
}

// ---------------------------------------------------------------------------
// 5. A client that stops reading: the proxy's memory stays bounded

TEST_F(ProxyE2E, SlowReaderKeepsProxyBuffersBounded) {
  Proxy proxy(options());
  Client c(proxy.httpPort(), Millis(30000), /*rcvbuf=*/65536);
  ASSERT_TRUE(c.send(getRequest("/bytes/" + std::to_string(kBig))));
  ASSERT_TRUE(c.prefetch(4096));  // the head and the first bytes, then read nothing for a while
  constexpr double kBound = 256 * 1024;  // two 64 KiB pool buffers plus slack
  const double peak = expectBufferedBounded(proxy, kBound, kBig);
  HttpResponse r;
  const std::string sha = readHashedResponse(c, r);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body_bytes, kBig);
  EXPECT_EQ(sha, patternSha256(kBig));
  RecordProperty("peak_buffered_bytes", std::to_string(static_cast<long long>(peak)));
}

// ---------------------------------------------------------------------------
// 6-8. Upstream failures

TEST_F(ProxyE2E, UpstreamDownGives502WithoutDetails) {
  const std::string dead = "127.0.0.1:" + std::to_string(unusedPort());
  Proxy proxy(ProxyOptions::forBackend(dead));
  {
    // Two body-less requests on one connection: a 502 does not cost the
    // client its keep-alive connection.
    Client c(proxy.httpPort());
    for (int i = 0; i < 2; ++i) {
      SCOPED_TRACE("attempt " + std::to_string(i));
      HttpResponse r = c.roundTrip(getRequest("/anything"));
      expectProxyError(r, 502, "bad_gateway", dead);
      EXPECT_FALSE(r.header("connection") == "close");
    }
  }
  {
    Client c(proxy.httpPort());
    HttpResponse r = c.roundTrip("POST /with-body HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: 5\r\n\r\nhello");
    expectProxyError(r, 502, "bad_gateway", dead);
  }
  // One failed connect per request, counted once.
  EXPECT_EQ(proxy.metricOr0("portcullis_upstream_errors_total{kind=\"connect_failed\"}"), 3);
}

TEST_F(ProxyE2E, SlowUpstreamGives504) {
  ProxyOptions o = options();
  o.timeouts["upstream_response_ms"] = 300;
  Proxy proxy(o);
  {
    Client c(proxy.httpPort());
    HttpResponse r = c.roundTrip(getRequest("/delay/3000"));
    expectProxyError(r, 504, "gateway_timeout", backend_.address());
  }
  EXPECT_EQ(proxy.metricOr0("portcullis_upstream_errors_total{kind=\"response_timeout\"}"), 1);
  // A fast request still goes through.
  Client c(proxy.httpPort());
  HttpResponse r = c.roundTrip(getRequest("/delay/1"));
  EXPECT_EQ(r.status, 200);
}

// upstream_response_ms bounds the wait for the upstream's answer, not the
// time a client takes to upload: a steady upload longer than it succeeds.
TEST_F(ProxyE2E, SlowUploadIsNotAnUpstreamTimeout) {
  ProxyOptions o = options();
  o.timeouts["upstream_response_ms"] = 300;
  Proxy proxy(o);
  Client c(proxy.httpPort());
  ASSERT_TRUE(c.send("POST /slow-upload HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: 8\r\n\r\n"));
  std::string body;
  for (int i = 0; i < 4; ++i) {
    std::this_thread::sleep_for(Millis(150));
    ASSERT_TRUE(c.send("ab"));
    body += "ab";
  }
  HttpResponse r;
  ASSERT_EQ(c.readResponse(r), ReadResult::kOk);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(echoOf(r).body_sha256, sha256Hex(body));
}

TEST_F(ProxyE2E, UpstreamDyingMidResponseIsNeverCompleteForClient) {
  Proxy proxy(options());
  Client c(proxy.httpPort());
  ASSERT_TRUE(c.send(getRequest("/close-mid/100000")));
  HttpResponse r;
  ReadResult rr = c.readResponse(r);
  EXPECT_EQ(rr, ReadResult::kClosed) << "status " << r.status << ", " << r.body_bytes << " body bytes";
  if (r.status != 0) {
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.header("content-length").value_or(""), "100000");
    EXPECT_LT(r.body_bytes, 100000u);
    EXPECT_TRUE(r.body == patternBytes(0, r.body.size()));
  }
  EXPECT_EQ(proxy.metricOr0("portcullis_upstream_errors_total{kind=\"reset\"}"), 1);
}

TEST(ProxyE2EUpstream, ResponseHeadersFromUpstreamAreCleaned) {
  ScriptedUpstream upstream([](int fd, int) {
    for (int k = 0; k < 2; ++k) {
      if (ScriptedUpstream::readRequest(fd).empty()) return;
      ScriptedUpstream::writeAll(fd,
                                 "HTTP/1.1 200 OK\r\n"
                                 "Server: nginx/1.2.3\r\n"
                                 "X-Request-Id: chosen-by-upstream\r\n"
                                 "Connection: keep-alive, X-Hop\r\n"
                                 "X-Hop: secret\r\n"
                                 "Keep-Alive: timeout=5\r\n"
                                 "X-App: visible\r\n"
                                 "Content-Length: 2\r\n\r\nok");
    }
  });
  Proxy proxy(ProxyOptions::forBackend(upstream.address()));
  Client c(proxy.httpPort());
  for (int k = 0; k < 2; ++k) {
    HttpResponse r = c.roundTrip(getRequest("/x"));
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "ok");
    EXPECT_FALSE(r.hasHeader("server"));
    EXPECT_FALSE(r.hasHeader("x-hop"));
    EXPECT_FALSE(r.hasHeader("keep-alive"));
    EXPECT_EQ(r.header("x-app").value_or(""), "visible");
    ASSERT_EQ(r.headerCount("x-request-id"), 1u);
    EXPECT_TRUE(isRequestId(*r.header("x-request-id")));
  }
  EXPECT_EQ(upstream.connectionCount(), 1);  // the upstream connection was kept alive
}

// Bytes a backend sends after a response are never taken for the response
// to the next request. Here they sit in the socket unread: the response
// ends exactly where a read filled the proxy's 64 KiB upstream buffer, and
// the client's pipelined second request is served in that same read
// callback. The connection must not be reused; the second request goes
// to a fresh connection and gets that backend's answer.
TEST(ProxyE2EUpstream, BytesAfterAResponseNeverAnswerTheNextRequest) {
  constexpr size_t kBuffer = 65536;  // the worker's buffer size with default limits
  const std::string first = "HTTP/1.1 200 OK\r\nX-Pad: " + std::string(59000, 'a') + "\r\n";
  std::string tail;
  for (size_t n = 1; tail.size() != kBuffer - first.size(); ++n) {
    tail = "Content-Length: " + std::to_string(n) + "\r\n\r\n" + std::string(n, 'B');
  }
  const size_t body1 = tail.size() - tail.find("\r\n\r\n") - 4;
  ScriptedUpstream upstream([&](int fd, int index) {
    if (ScriptedUpstream::readRequest(fd).empty()) return;
    if (index > 0) {
      ScriptedUpstream::writeAll(fd, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal");
      return;
    }
    ScriptedUpstream::writeAll(fd, first);
    std::this_thread::sleep_for(Millis(300));  // the proxy reads the head's start on its own
    ScriptedUpstream::writeAll(fd, tail + "HTTP/1.1 200 OK\r\nContent-Length: 8\r\nSet-Cookie: s=attacker\r\n\r\nINJECTED");
    if (!ScriptedUpstream::readRequest(fd, Millis(1000)).empty()) {
      ScriptedUpstream::writeAll(fd, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal");
    }
  });
  Proxy proxy(ProxyOptions::forBackend(upstream.address()));
  Client c(proxy.httpPort());
  ASSERT_TRUE(c.send(getRequest("/p1") + getRequest("/p2")));
  HttpResponse r1;
  ASSERT_EQ(c.readResponse(r1), ReadResult::kOk);
  EXPECT_EQ(r1.status, 200);
  EXPECT_EQ(r1.body.size(), body1);
  HttpResponse r2;
  ASSERT_EQ(c.readResponse(r2), ReadResult::kOk);
  EXPECT_EQ(r2.body, "real");
  EXPECT_FALSE(r2.hasHeader("set-cookie")) << "the stray bytes answered the pipelined request";
  EXPECT_EQ(upstream.connectionCount(), 2);
}

// A response that breaks off never looks complete to the client, also
// where its end is the end of the connection: a chunked body cut short
// before its last chunk, sent to an HTTP/1.0 client (who gets it
// close-delimited), and a backend response without a length that ends in a
// reset. The proxy resets the client connection instead of closing it.
TEST(ProxyE2EUpstream, BrokenOffResponseEndsInAResetNotAnEnd) {
  ScriptedUpstream upstream([](int fd, int index) {
    if (ScriptedUpstream::readRequest(fd).empty()) return;
    if (index == 0) {
      ScriptedUpstream::writeAll(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
      return;  // closed without the last chunk
    }
    ScriptedUpstream::writeAll(fd, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello");
    std::this_thread::sleep_for(Millis(100));
    linger l{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);  // the close is a reset
  });
  Proxy proxy(ProxyOptions::forBackend(upstream.address()));
  for (const char* request : {"GET /cut HTTP/1.0\r\nHost: e2e.test\r\n\r\n",
                              "GET /reset HTTP/1.1\r\nHost: e2e.test\r\n\r\n"}) {
    SCOPED_TRACE(request);
    Client c(proxy.httpPort());
    ASSERT_TRUE(c.send(request));
    HttpResponse r;
    // A close-delimited body ended by FIN would read as complete (kOk).
    EXPECT_EQ(c.readResponse(r), ReadResult::kClosed) << "a cut response read as complete: " << r.body;
  }
}

TEST(ProxyE2EUpstream, MalformedUpstreamResponseGives502) {
  const std::vector<std::string> replies = {
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
      "HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
      "SSH-2.0-OpenSSH_9.2\r\n",
      std::string("HTTP/1.1 200 O\0K\r\nContent-Length: 0\r\n\r\n", 39),  // control bytes in the reason
      "HTTP/1.1 200 \x1b[31mOK\x0b\r\nContent-Length: 0\r\n\r\n",
      "HTTP/1.1 200 OK\r\n: x\r\nContent-Length: 0\r\n\r\n",  // empty field name
  };
  ScriptedUpstream upstream([&](int fd, int index) {
    if (ScriptedUpstream::readRequest(fd).empty()) return;
    ScriptedUpstream::writeAll(fd, replies[static_cast<size_t>(index) % replies.size()]);
    char tmp[64];
    (void)!::recv(fd, tmp, sizeof(tmp), 0);  // until the proxy closes (or the 5 s timeout)
  });
  Proxy proxy(ProxyOptions::forBackend(upstream.address()));
  for (size_t i = 0; i < replies.size(); ++i) {
    SCOPED_TRACE(replies[i]);
    Client c(proxy.httpPort());
    HttpResponse r = c.roundTrip(getRequest("/x"));
    expectProxyError(r, 502, "bad_gateway", upstream.address());
  }
  EXPECT_EQ(proxy.metricOr0("portcullis_upstream_errors_total{kind=\"bad_response\"}"),
            static_cast<double>(replies.size()));
}

// ---------------------------------------------------------------------------
// 9. Reload under load

TEST_F(ProxyE2E, ReloadUnderLoadDropsNothing) {
  DemoBackend other;
  ProxyOptions base = options();
  base.workers = 2;
  base.routes[0].max_body_bytes = 1 << 20;
  Proxy proxy(base);

  std::atomic<bool> stop{false};
  std::atomic<int> ok{0};
  std::atomic<int> failures{0};
  std::mutex fail_mu;
  std::string first_failure;
  auto noteFailure = [&](const std::string& what) {
    failures++;
    std::lock_guard<std::mutex> lock(fail_mu);
    if (first_failure.empty()) first_failure = what;
  };
  auto load = [&](int thread_id) {
    int n = 0;
    while (!stop.load()) {
      try {
        Client c(proxy.httpPort());
        for (int k = 0; k < 20 && !stop.load(); ++k, ++n) {
          std::string path = "/load/" + std::to_string(thread_id) + "/" + std::to_string(n);
          HttpResponse r;
          if (n % 3 == 0) {
            std::string body(10000 + static_cast<size_t>(n % 7), 'p');
            r = c.roundTrip("POST " + path + " HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: " +
                            std::to_string(body.size()) + "\r\n\r\n" + body);
            if (r.status != 200 || echoOf(r).body_sha256 != sha256Hex(body)) {
              noteFailure("POST " + path + " -> " + std::to_string(r.status) + " " + r.body.substr(0, 200));
              continue;
            }
          } else if (n % 3 == 1) {
            r = c.roundTrip(getRequest("/delay/20"));
            if (r.status != 200 || r.body != "{}") {
              noteFailure("delay -> " + std::to_string(r.status) + " " + r.body.substr(0, 200));
              continue;
            }
          } else {
            r = c.roundTrip(getRequest(path));
            if (r.status != 200 || echoOf(r).path != path) {
              noteFailure("GET " + path + " -> " + std::to_string(r.status) + " " + r.body.substr(0, 200));
              continue;
            }
          }
          ok++;
        }
      } catch (const std::exception& e) {
        noteFailure(std::string("exception: ") + e.what());
      }
    }
  };
  std::thread t1(load, 1), t2(load, 2);
  struct Joiner {  // also on an early exit (a throwing helper)
    std::atomic<bool>& stop;
    std::thread& a;
    std::thread& b;
    ~Joiner() {
      stop = true;
      if (a.joinable()) a.join();
      if (b.joinable()) b.join();
    }
  } joiner{stop, t1, t2};

  int applied = 0;
  for (int i = 0; i < 6; ++i) {
    std::this_thread::sleep_for(Millis(200));
    ProxyOptions next = base;
    next.upstreams[0].servers = {i % 2 == 0 ? other.address() : backend_.address()};
    next.routes[0].max_body_bytes = (1u << 20) + static_cast<uint64_t>(i) * 4096;
    next.timeouts["keepalive_idle_ms"] = 30000 + static_cast<uint64_t>(i);
    proxy.writeConfig(next);
    if (proxy.reload()) applied++;
  }
  // A broken config is refused and the running one keeps serving.
  const size_t err_mark = proxy.process().stderrSize();
  proxy.writeConfigText(renderConfig(base, proxy.dir().path()) + "\n[no_such_table]\nkey = 1\n");
  EXPECT_FALSE(proxy.reload());
  EXPECT_TRUE(proxy.process().waitForStderr("reload refused", Millis(5000), err_mark).has_value());
  // Requests keep succeeding after the refusal (bounded wait for a few).
  const int ok_at_refusal = ok.load();
  const auto more_deadline = Clock::now() + Millis(10000);
  while (ok.load() < ok_at_refusal + 5 && failures.load() == 0 && Clock::now() < more_deadline) {
    std::this_thread::sleep_for(Millis(10));
  }
  stop = true;
  t1.join();
  t2.join();

  EXPECT_EQ(applied, 6);
  EXPECT_EQ(failures.load(), 0) << "first failure: " << first_failure;
  EXPECT_GE(ok.load(), ok_at_refusal + 5) << "requests stalled after the refused reload";
  EXPECT_EQ(proxy.metricOr0("portcullis_config_reloads_total"), 6);
  EXPECT_EQ(proxy.metricOr0("portcullis_config_reload_failures_total"), 1);
  // Still serving, through the last applied config.
  Client c(proxy.httpPort());
  EXPECT_EQ(c.roundTrip(getRequest("/still-here")).status, 200);
}

// ---------------------------------------------------------------------------
// 10. SIGTERM drains in-flight requests, refuses new connections, exits 0

TEST(ProxyE2ELifecycle, SigtermDrainsInFlightRequest) {
  // The upstream holds its answer until the test opens the gate, so the
  // request is certainly in flight for as long as the test needs.
  std::mutex mu;
  std::condition_variable cv;
  bool request_seen = false;
  bool gate_open = false;
  ScriptedUpstream upstream([&](int fd, int) {
    if (ScriptedUpstream::readRequest(fd).find("GET /in-flight ") != 0) return;
    std::unique_lock<std::mutex> lock(mu);
    request_seen = true;
    cv.notify_all();
    cv.wait_for(lock, Millis(20000), [&] { return gate_open; });
    lock.unlock();
    ScriptedUpstream::writeAll(fd, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone");
  });
  auto openGate = [&] {
    std::lock_guard<std::mutex> lock(mu);
    gate_open = true;
    cv.notify_all();
  };
  ProxyOptions o = ProxyOptions::forBackend(upstream.address());
  o.shutdown_grace_ms = 20000;
  Proxy proxy(o);
  Client c(proxy.httpPort(), Millis(30000));
  ASSERT_TRUE(c.send(getRequest("/in-flight")));
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, Millis(10000), [&] { return request_seen; })) << "request never reached upstream";
  }
  proxy.process().sendSignal(SIGTERM);
  if (!proxy.process().waitForStderr("shutting down", Millis(10000)).has_value()) {
    openGate();
    FAIL() << "no shutdown";
  }
  // More signals during the drain change nothing (and are not fatal).
  proxy.process().sendSignal(SIGHUP);
  proxy.process().sendSignal(SIGTERM);

  // New connections are refused once the listener is closed, while the
  // request is still in flight.
  bool refused = false;
  const auto refuse_deadline = Clock::now() + Millis(10000);
  while (Clock::now() < refuse_deadline) {
    int fd = Client::tryConnect(proxy.httpPort());
    if (fd == -ECONNREFUSED) {
      refused = true;
      break;
    }
    if (fd >= 0) ::close(fd);
    std::this_thread::sleep_for(Millis(5));
  }
  EXPECT_TRUE(refused);
  EXPECT_FALSE(proxy.process().waitExit(Millis(0))) << "exited with a request in flight";

  openGate();
  HttpResponse r;
  ASSERT_EQ(c.readResponse(r), ReadResult::kOk);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "done");
  EXPECT_EQ(r.header("connection").value_or(""), "close");
  EXPECT_TRUE(c.waitClosed(Millis(10000)));

  int status = 0;
  ASSERT_TRUE(proxy.process().waitExit(Millis(20000), &status)) << "proxy did not exit";
  EXPECT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// The same through the demo backend's /delay endpoint.
TEST_F(ProxyE2E, SigtermDrainsDelayedResponse) {
  ProxyOptions o = options();
  o.shutdown_grace_ms = 10000;
  Proxy proxy(o);
  Client c(proxy.httpPort());
  const std::string req = getRequest("/delay/1000");
  ASSERT_TRUE(c.send(req));
  // Wait (bounded) until the proxy has read the whole request.
  const auto deadline = Clock::now() + Millis(10000);
  while (proxy.metricOr0("portcullis_received_bytes_total") < static_cast<double>(req.size())) {
    ASSERT_LT(Clock::now(), deadline) << "proxy never read the request";
    std::this_thread::sleep_for(Millis(5));
  }
  proxy.process().sendSignal(SIGTERM);
  HttpResponse r;
  ASSERT_EQ(c.readResponse(r), ReadResult::kOk);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "{}");
  int status = 0;
  ASSERT_TRUE(proxy.process().waitExit(Millis(20000), &status)) << "proxy did not exit";
  EXPECT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_TRUE(Client::tryConnect(proxy.httpPort()) == -ECONNREFUSED);
}

// Signals sent as soon as the listening ports are announced are handled, not
// fatal (a supervisor may reload or stop the proxy at once).
TEST(ProxyE2ELifecycle, SignalsRightAfterStartupAreHandled) {
  ScriptedUpstream upstream;
  for (int i = 0; i < 10; ++i) {
    SCOPED_TRACE("round " + std::to_string(i));
    Proxy proxy(ProxyOptions::forBackend(upstream.address()));
    proxy.process().sendSignal(i % 2 == 0 ? SIGHUP : SIGTERM);
    // ~Proxy sends SIGTERM and requires exit status 0.
  }
}

// ---------------------------------------------------------------------------
// 11. Requests that cannot be framed safely: 400 and close, nothing forwarded

TEST(ProxyE2EMalformed, AmbiguousIdentityAndFramingHeadersAreRefused) {
  ScriptedUpstream sentinel;  // counts connections; must see none
  Proxy proxy(ProxyOptions::forBackend(sentinel.address()));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"underscore in a header name", "GET / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\n"},
      {"missing host on HTTP/1.1", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"},
      {"duplicate host", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"},
      {"transfer-encoding gzip only", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"},
      {"transfer-encoding on HTTP/1.0", "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
      {"transfer-encoding twice",
       "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
  };
  for (const auto& [name, wire] : cases) {
    SCOPED_TRACE(name);
    Client c(proxy.httpPort());
    ASSERT_TRUE(c.send(wire));
    HttpResponse r;
    ReadResult rr = c.readResponse(r);
    if (rr == ReadResult::kOk) {
      expectProxyError(r, 400, "bad_request");
      EXPECT_EQ(r.header("connection").value_or(""), "close");
    }
    EXPECT_TRUE(c.waitClosed(Millis(5000)));
  }
  // HTTP/1.0 may omit Host.
  DemoBackend backend;
  Proxy ok(ProxyOptions::forBackend(backend.address()));
  Client c(ok.httpPort());
  HttpResponse r10 = c.roundTrip("GET /ok HTTP/1.0\r\n\r\n");
  ASSERT_EQ(r10.status, 200);
  std::optional<Echo> echo = parseEcho(r10.body);
  ASSERT_TRUE(echo.has_value()) << r10.body;
  EXPECT_EQ(echo->headers["host"], backend.address()) << "the upstream request is HTTP/1.1 and needs a Host";
  EXPECT_EQ(sentinel.connectionCount(), 0);
}

TEST(ProxyE2EMalformed, UnframeableRequestsNeverReachBackend) {
  ScriptedUpstream sentinel;  // counts connections; must see none
  Proxy proxy(ProxyOptions::forBackend(sentinel.address()));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"content-length and chunked",
       "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"},
      {"chunked then content-length",
       "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"},
      {"two content-lengths", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"},
      {"negative content-length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"},
      {"transfer-encoding not ending in chunked",
       "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"},
      {"garbage request line", "GARBAGE\r\n\r\n"},
      {"space in header name", "GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n"},
      {"space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n"},
      {"control byte in header value", std::string("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01" "b\r\n\r\n")},
  };
  for (const auto& [name, wire] : cases) {
    SCOPED_TRACE(name);
    Client c(proxy.httpPort());
    ASSERT_TRUE(c.send(wire));
    HttpResponse r;
    ASSERT_EQ(c.readResponse(r), ReadResult::kOk);
    expectProxyError(r, 400, "bad_request");
    EXPECT_EQ(r.header("connection").value_or(""), "close");
    EXPECT_TRUE(c.waitClosed(Millis(5000)));
  }
  EXPECT_EQ(sentinel.connectionCount(), 0);
  EXPECT_EQ(proxy.metricOr0("portcullis_parse_errors_total"), static_cast<double>(cases.size()));
}

TEST_F(ProxyE2E, BadChunkFramingGives400AndClose) {
  Proxy proxy(options());
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"non-hex chunk size", "POST /bad-chunk HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"},
      {"chunk size overflow",
       "POST /bad-chunk HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nhello\r\n0\r\n\r\n"},
      {"chunk data longer than its size",
       "POST /bad-chunk HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n"},
  };
  for (const auto& [name, wire] : cases) {
    SCOPED_TRACE(name);
    Client c(proxy.httpPort());
    ASSERT_TRUE(c.send(wire));
    HttpResponse r;
    ASSERT_EQ(c.readResponse(r), ReadResult::kOk);
    expectProxyError(r, 400, "bad_request", backend_.address());
    EXPECT_EQ(r.header("connection").value_or(""), "close");
    EXPECT_TRUE(c.waitClosed(Millis(5000)));
  }
  // No POST was answered by the backend.
  const std::string m = proxy.metricsText();
  EXPECT_FALSE(findMetric(m, "portcullis_requests_total{route=\"/\",method=\"POST\",status=\"200\"}").has_value()) << m;
  // The proxy is fine afterwards.
  Client c(proxy.httpPort());
  EXPECT_EQ(c.roundTrip(getRequest("/ok")).status, 200);
}

TEST(ProxyE2EMalformed, BodyOverRouteLimitGives413) {
  ScriptedUpstream sentinel;
  ProxyOptions o = ProxyOptions::forBackend(sentinel.address());
  o.routes[0].max_body_bytes = 1000;
  Proxy proxy(o);
  Client c(proxy.httpPort());
  ASSERT_TRUE(c.send("POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n"));
  HttpResponse r;
  ASSERT_EQ(c.readResponse(r), ReadResult::kOk);
  expectProxyError(r, 413, "payload_too_large");
  EXPECT_TRUE(c.waitClosed(Millis(5000)));
  EXPECT_EQ(sentinel.connectionCount(), 0);
}

// ---------------------------------------------------------------------------
// 12. Routing refusals, HEAD and body-less statuses on keep-alive

TEST_F(ProxyE2E, RoutingHeadAndBodylessStatuses) {
  ProxyOptions o = options();
  o.routes.clear();
  o.routes.push_back(RouteSpec{"/v1/", "app", {"GET", "HEAD", "POST"}, 0});
  o.routes.push_back(RouteSpec{"/status/", "app", {}, 0});
  o.routes.push_back(RouteSpec{"/bytes/", "app", {}, 0});
  Proxy proxy(o);
  Client c(proxy.httpPort());

  HttpResponse r = c.roundTrip(getRequest("/nope"));
  expectProxyError(r, 404, "not_found", backend_.address());

  r = c.roundTrip("DELETE /v1/thing HTTP/1.1\r\nHost: e2e.test\r\n\r\n");
  expectProxyError(r, 405, "method_not_allowed", backend_.address());
  EXPECT_EQ(r.header("allow").value_or(""), "GET, HEAD, POST");

  r = c.roundTrip("HEAD /nope HTTP/1.1\r\nHost: e2e.test\r\n\r\n", ReadOptions{true, nullptr});
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.body_bytes, 0u);

  r = c.roundTrip("HEAD /bytes/1000 HTTP/1.1\r\nHost: e2e.test\r\n\r\n", ReadOptions{true, nullptr});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("content-length").value_or(""), "1000");

  r = c.roundTrip(getRequest("/status/204"));
  EXPECT_EQ(r.status, 204);
  EXPECT_FALSE(r.hasHeader("transfer-encoding"));

  r = c.roundTrip(getRequest("/status/304"));
  EXPECT_EQ(r.status, 304);
  EXPECT_FALSE(r.hasHeader("transfer-encoding"));

  r = c.roundTrip(getRequest("/status/503"));
  EXPECT_EQ(r.status, 503);  // an upstream status passes through untouched
  EXPECT_EQ(r.body, "{\"status\":503}\n");

  // Nothing stray arrived after the body-less responses: the next exchange
  // on the same connection is clean.
  r = c.roundTrip(getRequest("/v1/echo"));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(echoOf(r).path, "/v1/echo");
  size_t extra = 0;
  EXPECT_FALSE(c.waitClosed(Millis(100), &extra));
  EXPECT_EQ(extra, 0u);
  EXPECT_EQ(proxy.metricOr0("portcullis_connections_total"), 1);
}

// ---------------------------------------------------------------------------
// 13. A request head that never completes

TEST_F(ProxyE2E, IncompleteHeadGets408) {
  ProxyOptions o = options();
  o.timeouts["request_header_ms"] = 300;
  Proxy proxy(o);
  {
    Client c(proxy.httpPort());
    ASSERT_TRUE(c.send("GET /slow HTTP/1.1\r\nHost: e2e.test\r\n"));
    HttpResponse r;
    ASSERT_EQ(c.readResponse(r), ReadResult::kOk);
    expectProxyError(r, 408, "request_timeout", backend_.address());
    EXPECT_TRUE(c.waitClosed(Millis(5000)));
  }
  {
    // The same on a keep-alive connection's second request.
    Client c(proxy.httpPort());
    EXPECT_EQ(c.roundTrip(getRequest("/first")).status, 200);
    ASSERT_TRUE(c.send("GET /second HTTP/1.1\r\nHo"));
    HttpResponse r;
    ASSERT_EQ(c.readResponse(r), ReadResult::kOk);
    expectProxyError(r, 408, "request_timeout", backend_.address());
    EXPECT_TRUE(c.waitClosed(Millis(5000)));
  }
}

// ---------------------------------------------------------------------------
// 13a. A client that half-closes (FIN) right after a complete request still
// gets its answer (RFC 9112 section 9.6 lets a client end its sending side
// once the request is sent), whatever the proxy was doing when the FIN came:
// opening the upstream connection (a fresh proxy has no pooled one), or
// forwarding a body it had already read. A FIN in the middle of a body is an
// abort: the backend never gets a complete request.

TEST_F(ProxyE2E, HalfCloseAfterACompleteRequestIsAnswered) {
  for (int i = 0; i < 5; ++i) {
    Proxy proxy(options());  // fresh each time: the upstream connection is opened for this request
    const uint64_t before = backend_.requests();
    Client c(proxy.httpPort());
    std::string body = uploadBlock().substr(0, 1000);
    ASSERT_TRUE(c.send(i % 2 == 0 ? getRequest("/half-close")
                                  : "POST /half-close HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: 1000\r\n\r\n" +
                                        body));
    c.shutdownWrite();
    HttpResponse r;
    ASSERT_EQ(c.readResponse(r), ReadResult::kOk) << "round " << i;
    EXPECT_EQ(r.status, 200) << r.body;
    if (i % 2 == 1) {
      Echo e = echoOf(r);
      EXPECT_EQ(e.body_bytes, 1000u);
      EXPECT_EQ(e.body_sha256, sha256Hex(body));
    }
    // Connection: close only if the FIN came before the response head.
    EXPECT_TRUE(c.waitClosed(Millis(5000))) << "the proxy closes once it answered";
    EXPECT_EQ(backend_.requests(), before + 1);
  }
}

TEST_F(ProxyE2E, HalfCloseInsideABodyIsAnAbort) {
  Proxy proxy(options());
  const uint64_t before = backend_.requests();
  Client c(proxy.httpPort());
  ASSERT_TRUE(c.send("POST /half-close HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: 100000\r\n\r\n" +
                     uploadBlock().substr(0, 50000)));
  c.shutdownWrite();
  size_t extra = 0;
  EXPECT_TRUE(c.waitClosed(Millis(5000), &extra));
  EXPECT_EQ(extra, 0u) << "no response for an aborted request";
  std::this_thread::sleep_for(Millis(200));
  EXPECT_EQ(backend_.requests(), before) << "the backend never completes the cut request";
}

// ---------------------------------------------------------------------------
// 13b. Lingering close (RFC 9112 section 9.6): a connection the proxy ends
// while the client may still be sending is half-closed (FIN) and drained, so
// the client reads its response and then a clean end of stream. Closing
// with unread input would send RST (ECONNRESET here after the response, and
// on many stacks the response itself lost).

// After the response: the next recv must see the proxy's FIN (0), not RST.
void expectCleanEnd(Client& c) {
  std::string rest;
  errno = 0;
  const ssize_t n = c.readSome(rest, 1 << 20);
  EXPECT_EQ(n, 0) << "errno " << errno << " (" << std::strerror(errno) << "), " << rest.size() << " bytes";
}

// Sends a POST whose Content-Length is over a 1000-byte route limit,
// followed by `sent` bytes of its body, and reads the 413.
void sendRefusedUpload(Client& c, size_t sent, const std::string& backend) {
  std::string req = "POST /upload HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: 10000000\r\n\r\n";
  req += uploadBlock().substr(0, sent);
  ASSERT_TRUE(c.send(req));
  HttpResponse r;
  ASSERT_EQ(c.readResponse(r), ReadResult::kOk);
  expectProxyError(r, 413, "payload_too_large", backend);
}

TEST_F(ProxyE2E, RefusedUploadStillBeingSentEndsWithFinNotReset) {
  ProxyOptions o = options();
  o.limits["max_body_bytes"] = 1000;
  Proxy proxy(o);
  for (int i = 0; i < 5; ++i) {
    Client c(proxy.httpPort());
    // Far more body than the proxy reads before refusing it at the head.
    sendRefusedUpload(c, 512 * 1024, backend_.address());
    // The client goes on sending for a while: the proxy drains it.
    EXPECT_TRUE(c.send(uploadBlock().substr(0, 256 * 1024)));
    expectCleanEnd(c);
  }
  EXPECT_EQ(proxy.waitForMetric("portcullis_connections_active", 0), 0);
}

TEST_F(ProxyE2E, LingeringEndsWhenTheClientGoesQuiet) {
  ProxyOptions o = options();
  o.limits["max_body_bytes"] = 1000;
  Proxy proxy(o);
  Client c(proxy.httpPort());
  sendRefusedUpload(c, 200 * 1024, backend_.address());
  // The client neither sends nor closes: the proxy gives up on it after its
  // idle linger (2 s) and the connection is gone.
  EXPECT_EQ(proxy.waitForMetric("portcullis_connections_active", 0, Millis(10000)), 0);
}

// ---------------------------------------------------------------------------
// 14. A pooled upstream connection closed by the server: safe requests are
// retried once on a fresh connection, requests with a body are not.

TEST(ProxyE2ERetry, StalePooledConnectionIsRetriedOnlyWhenSafe) {
  std::atomic<int> script_errors{0};
  ScriptedUpstream upstream([&](int fd, int index) {
    if (index == 0) {
      // Answer the first request keep-alive, then close on the second
      // without answering (a server that timed the connection out).
      if (ScriptedUpstream::readRequest(fd).find("GET /a ") != 0) script_errors++;
      ScriptedUpstream::writeAll(fd, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none");
      if (ScriptedUpstream::readRequest(fd).find("GET /b ") != 0) script_errors++;
    } else if (index == 1) {
      // The retry of /b on a fresh connection; then the same trick with a POST.
      if (ScriptedUpstream::readRequest(fd).find("GET /b ") != 0) script_errors++;
      ScriptedUpstream::writeAll(fd, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo");
      if (ScriptedUpstream::readRequest(fd).find("POST /c ") != 0) script_errors++;
    } else {
      script_errors++;  // the POST must not be retried
    }
  });
  Proxy proxy(ProxyOptions::forBackend(upstream.address()));
  Client c(proxy.httpPort());
  HttpResponse r = c.roundTrip(getRequest("/a"));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "one");
  r = c.roundTrip(getRequest("/b"));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "two");
  r = c.roundTrip("POST /c HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: 3\r\n\r\nxyz");
  expectProxyError(r, 502, "bad_gateway", upstream.address());
  EXPECT_EQ(proxy.metricOr0("portcullis_upstream_retries_total"), 1);
  EXPECT_EQ(upstream.connectionCount(), 2);
  EXPECT_EQ(script_errors.load(), 0);
}

}  // namespace
}  // namespace portcullis::e2e
