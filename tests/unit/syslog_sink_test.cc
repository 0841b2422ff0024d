#include "proxy/syslog_sink.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "tests/unit/loopback_server.h"

namespace portcullis {
namespace {

using testing::LoopbackServer;
using testing::unusedLoopbackPort;
using testing::waitFor;

// A TCP syslog collector that splits the stream with RFC 6587 octet counting
// (MSG-LEN = NONZERO-DIGIT *DIGIT, one SP, then exactly MSG-LEN bytes) and records
// each frame. Anything else in the stream is a framing error.
class FakeSyslogCollector {
 public:
  explicit FakeSyslogCollector(uint16_t port = 0)
      : server_(port, [this](int fd, const std::atomic<bool>& stopping) { serve(fd, stopping); }) {}

  uint16_t port() const { return server_.port(); }
  bool ok() const { return server_.ok(); }
  int connections() const { return server_.connections(); }
  void stop() { server_.stop(); }

  std::vector<std::string> frames() {
    std::lock_guard<std::mutex> lock(mu_);
    return frames_;
  }
  size_t count() {
    std::lock_guard<std::mutex> lock(mu_);
    return frames_.size();
  }
  bool framingError() {
    std::lock_guard<std::mutex> lock(mu_);
    return framing_error_;
  }

 private:
  void serve(int fd, const std::atomic<bool>& stopping) {
    std::string buf;
    while (!stopping) {
      if (!LoopbackServer::readSome(fd, buf)) break;
      std::lock_guard<std::mutex> lock(mu_);
      for (;;) {
        const size_t sp = buf.find(' ');
        if (sp == std::string::npos) {
          if (buf.find_first_not_of("0123456789") != std::string::npos) framing_error_ = true;
          break;
        }
        const std::string len_text = buf.substr(0, sp);
        if (len_text.empty() || len_text[0] == '0' ||
            len_text.find_first_not_of("0123456789") != std::string::npos) {
          framing_error_ = true;
          return;
        }
        const size_t len = std::stoul(len_text);
        if (buf.size() < sp + 1 + len) break;
        frames_.push_back(buf.substr(sp + 1, len));
        buf.erase(0, sp + 1 + len);
      }
    }
    // A frame cut short by a lost connection is expected to be resent whole; a
    // truncated tail is not an error here.
  }

  std::mutex mu_;
  std::vector<std::string> frames_;
  bool framing_error_ = false;
  LoopbackServer server_;  // last: its thread uses the members above
};

std::string urlFor(uint16_t port) { return "tcp://127.0.0.1:" + std::to_string(port); }

struct Parsed {
  int pri = -1;
  std::string timestamp, hostname, app, procid, msgid, msg;
};

// RFC 5424: <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [SP MSG], with
// the field lengths of its ABNF and a NILVALUE ("-") STRUCTURED-DATA.
bool parse5424(const std::string& frame, Parsed& p) {
  std::string_view f = frame;
  const size_t gt = f.find('>');
  if (f.empty() || f[0] != '<' || gt == std::string_view::npos || gt < 2 || gt > 4) return false;
  const std::string_view pri = f.substr(1, gt - 1);
  if (pri.find_first_not_of("0123456789") != std::string_view::npos) return false;
  p.pri = std::stoi(std::string(pri));
  f.remove_prefix(gt + 1);
  if (f.substr(0, 2) != "1 ") return false;
  f.remove_prefix(2);
  std::string* fields[] = {&p.timestamp, &p.hostname, &p.app, &p.procid, &p.msgid};
  const size_t max_len[] = {64, 255, 48, 128, 32};
  for (int i = 0; i < 5; ++i) {
    const size_t sp = f.find(' ');
    if (sp == std::string_view::npos || sp == 0 || sp > max_len[i]) return false;
    *fields[i] = std::string(f.substr(0, sp));
    for (char c : *fields[i]) {
      if (c < 33 || c > 126) return false;
    }
    f.remove_prefix(sp + 1);
  }
  if (f.substr(0, 2) != "- ") return false;
  p.msg = std::string(f.substr(2));
  return true;
}

// "2026-12-04T16:40:47.123456Z"
bool isRfc3339Micros(const std::string& ts) {
  const std::string shape = "dddd-dd-ddTdd:dd:dd.ddddddZ";
  if (ts.size() != shape.size()) return false;
  for (size_t i = 0; i < ts.size(); ++i) {
    if (shape[i] == 'd' ? (ts[i] < '0' || ts[i] > '9') : ts[i] != shape[i]) return false;
  }
  return true;
}

TEST(SyslogSink, SendsOctetCountedRfc5424) {
  FakeSyslogCollector collector;
  ASSERT_TRUE(collector.ok());
  SyslogSink sink;
  std::string error;
  ASSERT_TRUE(sink.start(urlFor(collector.port()), "gw-1.example", error)) << error;
  ASSERT_TRUE(waitFor([&] { return sink.connected(); }));

  const std::string audit = R"({"seq":1,"event":"auth.failure","reason":"bad token"})";
  const std::string alert = R"({"seq":2,"event":"alert","kind":"exfil","ip":"198.51.100.7"})";
  ASSERT_TRUE(sink.send("auth.failure", audit + "\n"));
  ASSERT_TRUE(sink.send("alert", alert, SyslogSink::Severity::kWarning));
  ASSERT_TRUE(waitFor([&] { return collector.count() == 2; }));

  const auto frames = collector.frames();
  EXPECT_FALSE(collector.framingError());
  Parsed a, b;
  ASSERT_TRUE(parse5424(frames[0], a)) << frames[0];
  ASSERT_TRUE(parse5424(frames[1], b)) << frames[1];
  EXPECT_EQ(a.pri, 10 * 8 + 5);  // authpriv.notice
  EXPECT_EQ(b.pri, 10 * 8 + 4);  // authpriv.warning
  EXPECT_TRUE(isRfc3339Micros(a.timestamp)) << a.timestamp;
  EXPECT_EQ(a.hostname, "gw-1.example");
  EXPECT_EQ(a.app, "portcullis");
  EXPECT_EQ(a.procid, std::to_string(getpid()));
  EXPECT_EQ(a.msgid, "auth.failure");
  EXPECT_EQ(a.msg, audit);  // trailing newline removed
  EXPECT_EQ(b.msgid, "alert");
  EXPECT_EQ(b.msg, alert);
  EXPECT_EQ(sink.sent(), 2u);
  EXPECT_EQ(sink.dropped(), 0u);
  EXPECT_EQ(sink.reconnects(), 0u);
}

TEST(SyslogSink, SanitizesMsgidAndDefaultsHostname) {
  FakeSyslogCollector collector;
  ASSERT_TRUE(collector.ok());
  SyslogSink sink;
  std::string error;
  ASSERT_TRUE(sink.start(urlFor(collector.port()), "", error)) << error;
  ASSERT_TRUE(sink.send("bad id\x01", "{}"));
  ASSERT_TRUE(sink.send("", "{}"));
  ASSERT_TRUE(sink.send(std::string(40, 'm'), "{}", SyslogSink::Severity::kWarning));
  ASSERT_TRUE(waitFor([&] { return collector.count() == 3; }));
  const auto frames = collector.frames();
  Parsed p[3];
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(parse5424(frames[i], p[i])) << frames[i];
  EXPECT_EQ(p[0].hostname, "-");
  EXPECT_EQ(p[0].msgid, "bad_id_");
  EXPECT_EQ(p[1].msgid, "-");
  EXPECT_EQ(p[2].msgid, std::string(32, 'm'));
}

TEST(SyslogSink, ManyMessagesInOneStream) {
  FakeSyslogCollector collector;
  ASSERT_TRUE(collector.ok());
  SyslogSink sink;
  std::string error;
  ASSERT_TRUE(sink.start(urlFor(collector.port()), "gw", error)) << error;
  constexpr int kCount = 2000;
  for (int i = 0; i < kCount; ++i) {
    // Varying lengths cross digit boundaries of MSG-LEN and the send batches.
    const std::string line =
        R"({"seq":)" + std::to_string(i) + R"(,"pad":")" + std::string(i % 300, 'x') + "\"}\n";
    ASSERT_TRUE(sink.send("auth.success", line));
  }
  ASSERT_TRUE(waitFor([&] { return collector.count() == kCount; }));
  EXPECT_FALSE(collector.framingError());
  const auto frames = collector.frames();
  for (int i = 0; i < kCount; ++i) {
    Parsed p;
    ASSERT_TRUE(parse5424(frames[i], p)) << i;
    ASSERT_EQ(p.msg, R"({"seq":)" + std::to_string(i) + R"(,"pad":")" +
                         std::string(i % 300, 'x') + "\"}");
  }
  EXPECT_EQ(collector.connections(), 1);
  EXPECT_EQ(sink.sent(), static_cast<uint64_t>(kCount));
}

TEST(SyslogSink, ConcurrentProducers) {
  FakeSyslogCollector collector;
  ASSERT_TRUE(collector.ok());
  SyslogSink sink;
  std::string error;
  ASSERT_TRUE(sink.start(urlFor(collector.port()), "gw", error)) << error;
  constexpr int kThreads = 4, kEach = 500;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&sink, t] {
      for (int i = 0; i < kEach; ++i) {
        sink.send("auth.success",
                  "{\"t\":" + std::to_string(t) + ",\"i\":" + std::to_string(i) + "}");
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_TRUE(waitFor([&] { return collector.count() == kThreads * kEach; }));
  EXPECT_FALSE(collector.framingError());
  std::set<std::string> seen;
  for (const auto& f : collector.frames()) {
    Parsed p;
    ASSERT_TRUE(parse5424(f, p)) << f;
    seen.insert(p.msg);
  }
  EXPECT_EQ(seen.size(), static_cast<size_t>(kThreads * kEach));
  EXPECT_EQ(sink.dropped(), 0u);
}

TEST(SyslogSink, ReconnectsAfterCollectorRestart) {
  auto collector = std::make_unique<FakeSyslogCollector>();
  ASSERT_TRUE(collector->ok());
  const uint16_t port = collector->port();
  SyslogSink sink;
  std::string error;
  ASSERT_TRUE(sink.start(urlFor(port), "gw", error)) << error;
  ASSERT_TRUE(sink.send("a", R"({"n":1})"));
  ASSERT_TRUE(waitFor([&] { return collector->count() == 1; }));

  collector.reset();  // closes the connection and the listener
  ASSERT_TRUE(waitFor([&] { return !sink.connected(); }));
  ASSERT_TRUE(sink.send("a", R"({"n":2})"));  // queued while the collector is down
  std::this_thread::sleep_for(std::chrono::milliseconds(150));

  collector = std::make_unique<FakeSyslogCollector>(port);
  ASSERT_TRUE(collector->ok());
  ASSERT_TRUE(sink.send("a", R"({"n":3})"));
  ASSERT_TRUE(waitFor([&] { return collector->count() == 2; }));
  EXPECT_TRUE(sink.connected());
  EXPECT_GE(sink.reconnects(), 1u);
  const auto frames = collector->frames();
  Parsed p2, p3;
  ASSERT_TRUE(parse5424(frames[0], p2));
  ASSERT_TRUE(parse5424(frames[1], p3));
  EXPECT_EQ(p2.msg, R"({"n":2})");
  EXPECT_EQ(p3.msg, R"({"n":3})");
  EXPECT_EQ(sink.sent(), 3u);
  EXPECT_EQ(sink.dropped(), 0u);
}

TEST(SyslogSink, DropsWhenCollectorDownAndQueueFull) {
  SyslogSink::Options options;
  options.capacity = 8;
  SyslogSink sink(options);
  std::string error;
  ASSERT_TRUE(sink.start(urlFor(unusedLoopbackPort()), "gw", error)) << error;
  for (int i = 0; i < 1000; ++i) sink.send("a", "{}");
  EXPECT_FALSE(sink.connected());
  EXPECT_EQ(sink.dropped(), 1000u - 8);
  EXPECT_EQ(sink.depth(), 8u);
  EXPECT_EQ(sink.sent(), 0u);
  const auto t0 = std::chrono::steady_clock::now();
  sink.stop();  // mid-backoff: prompt
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1));
  EXPECT_EQ(sink.dropped(), 1000u);
  EXPECT_FALSE(sink.send("a", "{}"));
  EXPECT_EQ(sink.dropped(), 1001u);
}

TEST(SyslogSink, StopWritesWhatIsQueued) {
  FakeSyslogCollector collector;
  ASSERT_TRUE(collector.ok());
  SyslogSink sink;
  std::string error;
  ASSERT_TRUE(sink.start(urlFor(collector.port()), "gw", error)) << error;
  ASSERT_TRUE(waitFor([&] { return sink.connected(); }));
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(sink.send("a", "{}"));  // no wake: below 64
  sink.stop();
  EXPECT_EQ(sink.sent(), 10u);
  EXPECT_EQ(sink.dropped(), 0u);
  EXPECT_TRUE(waitFor([&] { return collector.count() == 10; }));
}

TEST(SyslogSink, UrlAndHostnameValidation) {
  const struct {
    const char* url;
    const char* hostname;
    const char* error_part;
  } bad[] = {
      {"udp://127.0.0.1:514", "h", "must be tcp://host:port"},
      {"tls://127.0.0.1:6514", "h", "must be tcp://host:port"},
      {"127.0.0.1:514", "h", "must be tcp://host:port"},
      {"tcp://127.0.0.1", "h", "missing port"},
      {"tcp://127.0.0.1:514/x", "h", "nothing after the port"},
      {"tcp://siem.internal:514", "h", "not an IP literal or localhost"},
      {"tcp://127.0.0.1:99999", "h", "invalid port"},
      {"tcp://127.0.0.1:514", "has space", "printable US-ASCII"},
      {"tcp://127.0.0.1:514", "tab\there", "printable US-ASCII"},
  };
  for (const auto& c : bad) {
    SyslogSink sink;
    std::string error;
    EXPECT_FALSE(sink.start(c.url, c.hostname, error)) << c.url;
    EXPECT_NE(error.find(c.error_part), std::string::npos) << c.url << " -> " << error;
  }
  {
    SyslogSink sink;
    std::string error;
    EXPECT_FALSE(sink.start("tcp://127.0.0.1:514", std::string(256, 'h'), error));
  }
  for (const char* good : {"tcp://127.0.0.1:9", "tcp://[::1]:9", "tcp://localhost:9"}) {
    SyslogSink sink;
    std::string error;
    EXPECT_TRUE(sink.start(good, "-", error)) << good << " -> " << error;
  }
}

}  // namespace
}  // namespace portcullis
