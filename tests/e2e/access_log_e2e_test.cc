// The access log end to end: one JSON line per request with the SPEC §8
// fields, written by the log thread, and reopened on SIGUSR1 (logrotate).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/e2e/harness.h"

namespace portcullis::e2e {
namespace {

std::vector<std::string> readLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

// The log thread writes within ~20 ms; poll with a generous bound.
std::vector<std::string> waitForLines(const std::string& path, size_t n) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  std::vector<std::string> lines;
  while (std::chrono::steady_clock::now() < deadline) {
    lines = readLines(path);
    if (lines.size() >= n) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return lines;
}

class AccessLogE2E : public ::testing::Test {
 protected:
  DemoBackend backend_;
};

TEST_F(AccessLogE2E, OneJsonLinePerRequestWithSpecFields) {
  ProxyOptions o = ProxyOptions::forBackend(backend_.address());
  o.routes = {RouteSpec{"/v1/", "app", {}, 0}};
  Proxy proxy(o);
  const std::string log = proxy.dir().file("access.log");

  Client c(proxy.httpPort());
  HttpResponse ok = c.roundTrip(getRequest("/v1/orders?token=should-not-be-logged"));
  ASSERT_EQ(ok.status, 200);
  HttpResponse missing = c.roundTrip(getRequest("/nope"));
  ASSERT_EQ(missing.status, 404);

  std::vector<std::string> lines = waitForLines(log, 2);
  ASSERT_EQ(lines.size(), 2u);
  for (const std::string& l : lines) {
    EXPECT_EQ(l.find("should-not-be-logged"), std::string::npos) << "query strings never reach the log";
  }

  std::optional<JsonValue> a = parseJson(lines[0]);
  ASSERT_TRUE(a.has_value()) << lines[0];
  EXPECT_TRUE(std::regex_match(a->getString("ts"),
                               std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)")))
      << a->getString("ts");
  EXPECT_EQ(a->getString("request_id"), ok.header("x-request-id").value_or(""));
  EXPECT_EQ(a->getString("remote_ip"), "127.0.0.1");
  EXPECT_EQ(a->getString("method"), "GET");
  EXPECT_EQ(a->getString("path"), "/v1/orders");
  ASSERT_TRUE(a->has("status"));
  EXPECT_EQ(a->get("status")->num, 200);
  EXPECT_GT(a->get("bytes_in")->num, 0);
  EXPECT_GT(a->get("bytes_out")->num, 0);
  EXPECT_TRUE(a->has("duration_us"));
  EXPECT_EQ(a->getString("upstream"), "app");
  EXPECT_EQ(a->get("upstream_status")->num, 200);
  EXPECT_FALSE(a->has("rejected_by"));

  std::optional<JsonValue> b = parseJson(lines[1]);
  ASSERT_TRUE(b.has_value()) << lines[1];
  EXPECT_EQ(b->get("status")->num, 404);
  EXPECT_EQ(b->getString("request_id"), missing.header("x-request-id").value_or(""));
  EXPECT_EQ(b->get("upstream")->type, JsonValue::Type::kNull);
  EXPECT_EQ(b->get("upstream_status")->type, JsonValue::Type::kNull);
  EXPECT_EQ(b->getString("rejected_by"), "router");
  EXPECT_FALSE(b->getString("reason").empty());

  EXPECT_EQ(proxy.waitForMetric("portcullis_requests_total{route=\"/v1/\",method=\"GET\",status=\"200\"}", 1), 1);
  EXPECT_EQ(proxy.waitForMetric("portcullis_requests_total{route=\"none\",method=\"GET\",status=\"404\"}", 1), 1);
}

TEST_F(AccessLogE2E, Sigusr1ReopensTheLogAfterRotation) {
  Proxy proxy(ProxyOptions::forBackend(backend_.address()));
  const std::string log = proxy.dir().file("access.log");
  const std::string rotated = proxy.dir().file("access.log.1");

  {
    Client c(proxy.httpPort());
    ASSERT_EQ(c.roundTrip(getRequest("/before")).status, 200);
  }
  ASSERT_EQ(waitForLines(log, 1).size(), 1u);
  ASSERT_EQ(std::rename(log.c_str(), rotated.c_str()), 0);

  proxy.process().sendSignal(SIGUSR1);
  // The reopen is asynchronous: keep sending until a line lands in the new
  // file (bounded), then check that nothing went to the rotated one.
  bool reopened = false;
  for (int i = 0; i < 100 && !reopened; ++i) {
    Client c(proxy.httpPort());
    ASSERT_EQ(c.roundTrip(getRequest("/after")).status, 200);
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    struct stat st;
    reopened = ::stat(log.c_str(), &st) == 0 && !readLines(log).empty();
  }
  ASSERT_TRUE(reopened) << "no new access.log after SIGUSR1";
  std::vector<std::string> fresh = readLines(log);
  for (const std::string& l : fresh) EXPECT_NE(l.find("\"/after\""), std::string::npos) << l;
  std::vector<std::string> old = readLines(rotated);
  ASSERT_GE(old.size(), 1u);
  EXPECT_NE(old[0].find("\"/before\""), std::string::npos);
  struct stat st;
  ASSERT_EQ(::stat(log.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
}

}  // namespace
}  // namespace portcullis::e2e
