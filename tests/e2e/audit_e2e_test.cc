// Audit log, detection and alert delivery end to end (SPEC §8): security
// events of real requests land in the hash-chained audit log, which
// `portcullisctl audit verify` accepts and rejects once edited; a burst of
// auth failures or unrouted paths POSTs an alert to a real collector within
// 2 s; audit records also reach a syslog collector; no token is in any log.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "proxy/keyring.h"
#include "tests/audit_chain_check.h"
#include "tests/e2e/harness.h"

namespace portcullis::e2e {
namespace {

using Steady = std::chrono::steady_clock;

// Runs portcullisctl; stdout (and stderr when `with_stderr`), trimmed.
std::string ctlOut(const std::string& args, int* rc = nullptr, bool with_stderr = true) {
  const std::string cmd = std::string(PORTCULLISCTL_BIN) + " " + args + (with_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[512];
  while (p != nullptr && fgets(buf, sizeof(buf), p) != nullptr) out += buf;
  const int st = p != nullptr ? pclose(p) : -1;
  if (rc != nullptr) *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// Collects what arrives at a plain TCP listener (one connection at a time):
// HTTP POST bodies for the webhook (answered 200), raw bytes for syslog.
class Collector {
 public:
  explicit Collector(bool http) : http_(http) {
    upstream_ = std::make_unique<ScriptedUpstream>([this](int fd, int) { serve(fd); });
  }
  std::string address() const { return upstream_->address(); }
  // Waits (bounded) until `needle` has arrived; returns when it did, or -1.
  double waitFor(const std::string& needle, Steady::time_point since, Millis timeout) {
    const auto deadline = Steady::now() + timeout;
    while (Steady::now() < deadline) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (data_.find(needle) != std::string::npos) {
          return std::chrono::duration<double>(seen_at_ - since).count();
        }
      }
      std::this_thread::sleep_for(Millis(5));
    }
    return -1;
  }
  std::string data() {
    std::lock_guard<std::mutex> lock(mu_);
    return data_;
  }

 private:
  void serve(int fd) {
    if (http_) {
      for (;;) {
        std::string body;
        std::string req = ScriptedUpstream::readRequest(fd, Millis(1000), &body);
        if (req.empty()) return;
        append(req + body);
        if (!ScriptedUpstream::writeAll(fd, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")) return;
      }
    }
    char buf[4096];
    for (;;) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 1000) <= 0) return;
      const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) return;
      append(std::string(buf, static_cast<size_t>(n)));
    }
  }
  void append(const std::string& s) {
    std::lock_guard<std::mutex> lock(mu_);
    data_ += s;
    seen_at_ = Steady::now();
  }
  bool http_;
  std::mutex mu_;
  std::string data_;
  Steady::time_point seen_at_;
  std::unique_ptr<ScriptedUpstream> upstream_;
};

class AuditE2E : public ::testing::Test {
 protected:
  void start(const std::string& detect_toml, const std::string& syslog = "") {
    store_ = dir_.file("tokens.toml");
    token_ = ctlOut("token issue --store " + store_ + " --account acme --role reader", nullptr, false);
    ASSERT_EQ(token_.size(), 60u) << token_;
    ProxyOptions o = ProxyOptions::forBackend(backend_.address());
    RouteSpec api{"/v1/", "app", {}, 0, "", true};
    o.routes = {api};
    o.extra_toml = "[auth]\ntoken_store = \"" + store_ + "\"\n" +
                   "[[role]]\nname = \"reader\"\nallow = [\"GET /v1/accounts/{account}/*\"]\n" + detect_toml;
    if (!syslog.empty()) o.log_toml = "syslog = \"tcp://" + syslog + "\"\n";
    proxy_ = std::make_unique<Proxy>(o);
    audit_ = proxy_->dir().file("audit.log");
    keyring_ = proxy_->dir().file("keyring.toml");
  }

  // SIGTERM and wait: everything is written and synced; the files stay.
  void stopProxy() {
    proxy_->process().sendSignal(SIGTERM);
    int ws = 0;
    EXPECT_TRUE(proxy_->process().waitExit(Millis(10000), &ws));
    EXPECT_TRUE(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
  }

  TempDir dir_;
  DemoBackend backend_;
  std::string store_, token_, audit_, keyring_;
  std::unique_ptr<Proxy> proxy_;
};

TEST_F(AuditE2E, SecurityEventsAreChainedAndVerify) {
  start("");
  Client c(proxy_->httpPort());
  expectProxyError(c.roundTrip(getRequest("/v1/accounts/acme/x")), 401, "unauthorized");
  expectProxyError(c.roundTrip(getRequest("/v1/accounts/acme/x", "Authorization: Bearer pct_nope\r\n")), 401,
                   "unauthorized");
  HttpResponse ok = c.roundTrip(getRequest("/v1/accounts/acme/x", "Authorization: Bearer " + token_ + "\r\n"));
  EXPECT_EQ(ok.status, 200);
  expectProxyError(c.roundTrip(getRequest("/v1/accounts/beta/x", "Authorization: Bearer " + token_ + "\r\n")), 403,
                   "forbidden");
  // The counters moved by exactly the traffic sent.
  EXPECT_EQ(proxy_->waitForMetric("portcullis_refusals_total{filter=\"token_check\",reason=\"no token\"}", 1), 1);
  // Counters move after the reply is written: wait for each (bounded).
  EXPECT_EQ(proxy_->waitForMetric("portcullis_refusals_total{filter=\"token_check\",reason=\"bad_length\"}", 1), 1);
  EXPECT_EQ(proxy_->waitForMetric(
                "portcullis_refusals_total{filter=\"token_check\",reason=\"no role allows this request\"}", 1),
            1);
  EXPECT_EQ(proxy_->waitForMetric("portcullis_auth_success_total", 1), 1);
  EXPECT_EQ(proxy_->waitForMetric("portcullis_proxy_added_seconds_count", 1), 1) << "one request reached the backend";
  EXPECT_EQ(proxy_->waitForMetric("portcullis_audit_records_written_total", 5), 5);
  EXPECT_TRUE(proxy_->reload());
  stopProxy();

  const std::string text = slurp(audit_);
  const std::string id = token_.substr(4, 12);
  std::vector<std::string> ls = lines(text);
  auto has = [&](const std::string& a, const std::string& b = "") {
    for (const std::string& l : ls) {
      if (l.find(a) != std::string::npos && l.find(b) != std::string::npos) return true;
    }
    return false;
  };
  EXPECT_TRUE(has("\"event\":\"audit.start\""));
  EXPECT_TRUE(has("\"event\":\"auth.failure\"", "\"reason\":\"no token\"")) << text;
  EXPECT_TRUE(has("\"event\":\"auth.failure\"", "\"reason\":\"bad_length\"")) << text;
  EXPECT_TRUE(has("\"event\":\"auth.success\"", "\"token_id\":\"" + id + "\"")) << text;
  EXPECT_TRUE(has("\"event\":\"authz.forbidden\"", "\"path\":\"/v1/accounts/beta/x\"")) << text;
  EXPECT_TRUE(has("\"event\":\"config.reload\"", "\"result\":\"applied\"")) << text;
  for (const std::string& l : ls) EXPECT_EQ(l.find(",\"mac\":\""), l.size() - 74) << l;
  EXPECT_EQ(text.find(token_.substr(17)), std::string::npos) << "no token secret in the audit log";

  int rc = -1;
  std::string out = ctlOut("audit verify --keyring " + keyring_ + " " + audit_, &rc);
  EXPECT_EQ(rc, 0) << out;

  // An edited copy fails and names the record.
  std::string edited = text;
  const size_t at = edited.find("\"reason\":\"no token\"");
  ASSERT_NE(at, std::string::npos);
  edited.replace(at, 19, "\"reason\":\"no tokem\"");
  const std::string copy = dir_.file("edited.log");
  std::ofstream(copy, std::ios::binary) << edited;
  out = ctlOut("audit verify --keyring " + keyring_ + " " + copy, &rc);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("edited"), std::string::npos) << out;
  EXPECT_NE(out.find("seq"), std::string::npos) << out;
}

TEST_F(AuditE2E, AuthFailureBurstPostsAnAlertWithinTwoSeconds) {
  Collector hook(true);
  start("[detect]\nauth_failures = { count = 5, window_s = 60 }\nalert_webhook = \"http://" + hook.address() +
        "/alerts\"\n");
  Client c(proxy_->httpPort());
  const auto t0 = Steady::now();
  for (int i = 0; i < 5; ++i) {
    expectProxyError(c.roundTrip(getRequest("/v1/accounts/acme/x", "Authorization: Bearer pct_nope\r\n")), 401,
                     "unauthorized");
  }
  const double took = hook.waitFor("\"kind\":\"auth_failures\"", t0, Millis(5000));
  ASSERT_GE(took, 0) << "no alert arrived; got: " << hook.data();
  EXPECT_LT(took, 2.0);
  const std::string got = hook.data();
  EXPECT_NE(got.find("POST /alerts HTTP/1.1"), std::string::npos) << got;
  EXPECT_NE(got.find("\"ip\":\"127.0.0.1\""), std::string::npos) << got;
  EXPECT_NE(got.find("\"count\":5"), std::string::npos) << got;
  EXPECT_EQ(proxy_->waitForMetric("portcullis_alerts_total{kind=\"auth_failures\"}", 1), 1);
  EXPECT_EQ(proxy_->waitForMetric("portcullis_alert_webhook_sent_total", 1), 1);
  stopProxy();
  const std::string text = slurp(audit_);
  EXPECT_NE(text.find("\"event\":\"alert\",\"kind\":\"auth_failures\",\"ip\":\"127.0.0.1\""), std::string::npos)
      << text;
}

TEST_F(AuditE2E, ScanningAndForbiddenBurstsAlert) {
  Collector hook(true);
  start("[detect]\nnot_found = { count = 3, window_s = 60 }\nforbidden = { count = 3, window_s = 60 }\n"
        "alert_webhook = \"http://" + hook.address() + "/\"\n");
  Client c(proxy_->httpPort());
  const auto t0 = Steady::now();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(c.roundTrip(getRequest("/admin/" + std::to_string(i))).status, 404);
  EXPECT_GE(hook.waitFor("\"kind\":\"scanning\"", t0, Millis(5000)), 0) << hook.data();
  for (int i = 0; i < 3; ++i) {
    expectProxyError(c.roundTrip(getRequest("/v1/accounts/other/x", "Authorization: Bearer " + token_ + "\r\n")),
                     403, "forbidden");
  }
  EXPECT_GE(hook.waitFor("\"kind\":\"forbidden\",\"token_id\":\"" + token_.substr(4, 12), t0, Millis(5000)), 0)
      << hook.data();
  EXPECT_EQ(hook.data().find(token_.substr(17)), std::string::npos);
}

TEST_F(AuditE2E, AuditRecordsAlsoReachASyslogCollector) {
  Collector siem(false);
  const auto t0 = Steady::now();
  start("", siem.address());
  ASSERT_GE(siem.waitFor("audit.start", t0, Millis(5000)), 0) << siem.data();
  Client c(proxy_->httpPort());
  expectProxyError(c.roundTrip(getRequest("/v1/accounts/acme/x")), 401, "unauthorized");
  ASSERT_GE(siem.waitFor("\"event\":\"auth.failure\"", t0, Millis(5000)), 0) << siem.data();
  EXPECT_EQ(proxy_->waitForMetric("portcullis_syslog_sent_total", 2), 2);
  const std::string got = siem.data();
  // Octet counting: "LEN SP <85>1 TS HOST portcullis PID MSGID - MSG" (authpriv.notice).
  size_t at = 0;
  int frames = 0;
  while (at < got.size()) {
    const size_t sp = got.find(' ', at);
    ASSERT_NE(sp, std::string::npos) << got;
    const size_t len = std::strtoul(got.c_str() + at, nullptr, 10);
    ASSERT_GT(len, 0u) << got;
    ASSERT_LE(sp + 1 + len, got.size()) << got;
    const std::string msg = got.substr(sp + 1, len);
    EXPECT_EQ(msg.compare(0, 6, "<85>1 "), 0) << msg;
    EXPECT_NE(msg.find(" portcullis "), std::string::npos) << msg;
    EXPECT_EQ(msg.back(), '}') << msg;
    at = sp + 1 + len;
    ++frames;
  }
  EXPECT_EQ(frames, 2);
}

TEST_F(AuditE2E, Sigusr1ReopenContinuesTheChainInTheNewFile) {
  start("");
  Client c(proxy_->httpPort());
  expectProxyError(c.roundTrip(getRequest("/v1/accounts/acme/x")), 401, "unauthorized");
  EXPECT_EQ(proxy_->waitForMetric("portcullis_audit_records_written_total", 2), 2);
  const std::string old_file = audit_ + ".1";
  ASSERT_EQ(::rename(audit_.c_str(), old_file.c_str()), 0);
  proxy_->process().sendSignal(SIGUSR1);
  // Wait until the new file exists (the writer reopens on its next batch).
  for (int i = 0; i < 200 && ::access(audit_.c_str(), F_OK) != 0; ++i) {
    expectProxyError(c.roundTrip(getRequest("/v1/accounts/acme/y")), 401, "unauthorized");
    std::this_thread::sleep_for(Millis(10));
  }
  expectProxyError(c.roundTrip(getRequest("/v1/accounts/acme/z")), 401, "unauthorized");
  stopProxy();
  int rc = -1;
  std::string out = ctlOut("audit verify --keyring " + keyring_ + " " + old_file, &rc);
  EXPECT_EQ(rc, 0) << out;
  out = ctlOut("audit verify --keyring " + keyring_ + " " + audit_, &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("continues a chain from seq"), std::string::npos) << out;
  // The new file's first record links to the old file's last one.
  const std::vector<std::string> a = lines(slurp(old_file)), b = lines(slurp(audit_));
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  const std::string last_mac = a.back().substr(a.back().size() - 66, 64);
  EXPECT_NE(b.front().find("\"prev\":\"" + last_mac + "\""), std::string::npos) << a.back() << "\n" << b.front();
}

TEST_F(AuditE2E, TokenRequestBurstFarAboveItsBaselineAlerts) {
  Collector hook(true);
  start("[detect]\ninterval_s = 1\nwarmup_intervals = 2\nrate_min = 10\nrate_spike_factor = 5\n"
        "alert_webhook = \"http://" + hook.address() + "/\"\n");
  Client c(proxy_->httpPort());
  const std::string auth = "Authorization: Bearer " + token_ + "\r\n";
  // A steady baseline of ~2 requests a second for 3 s...
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(c.roundTrip(getRequest("/v1/accounts/acme/x", auth)).status, 200);
    std::this_thread::sleep_for(Millis(500));
  }
  EXPECT_EQ(proxy_->metricOr0("portcullis_alerts_total{kind=\"token_rate\"}"), 0) << "steady traffic is no spike";
  // ...then a burst of 60 in well under a second.
  const auto t0 = Steady::now();
  for (int i = 0; i < 60; ++i) EXPECT_EQ(c.roundTrip(getRequest("/v1/accounts/acme/x", auth)).status, 200);
  EXPECT_GE(hook.waitFor("\"kind\":\"token_rate\"", t0, Millis(5000)), 0) << hook.data();
  EXPECT_NE(hook.data().find("\"token_id\":\"" + token_.substr(4, 12) + "\""), std::string::npos);
  EXPECT_EQ(proxy_->waitForMetric("portcullis_alerts_total{kind=\"token_rate\"}", 1), 1);
}

// Security review: records at the end of the log edited so that they no
// longer parse were covered by an audit.torn at the next start and then
// verified intact. A restart must leave them for verify to report.
TEST_F(AuditE2E, EditedTailRecordsStayDetectedAfterARestart) {
  start("");
  Client c(proxy_->httpPort());
  for (int i = 0; i < 3; ++i) expectProxyError(c.roundTrip(getRequest("/v1/accounts/acme/x")), 401, "unauthorized");
  EXPECT_EQ(proxy_->waitForMetric("portcullis_audit_records_written_total", 4), 4);
  stopProxy();
  std::vector<std::string> ls = lines(slurp(audit_));
  ASSERT_EQ(ls.size(), 4u);
  std::string text = ls[0] + "\n";
  for (size_t i = 1; i < ls.size(); ++i) text += ls[i] + " \n";  // seq 2-4 no longer parse
  std::ofstream(audit_, std::ios::binary | std::ios::trunc) << text;
  const std::string verify = "audit verify --keyring " + keyring_ + " " + audit_;
  int rc = -1;
  ctlOut(verify, &rc);
  EXPECT_EQ(rc, 1);
  {
    ChildProcess again({PORTCULLIS_BIN, "-c", proxy_->configPath()});
    ASSERT_TRUE(again.waitForStderr("admin listening ", Millis(20000))) << again.stderrText();
    EXPECT_NE(again.stderrText().find("complete lines after seq 1 do not parse"), std::string::npos)
        << again.stderrText();
    EXPECT_EQ(again.stop(), 0);
  }
  const std::string out = ctlOut(verify, &rc);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("line 2"), std::string::npos) << out;
  EXPECT_NE(out.find("torn"), std::string::npos) << out;
  EXPECT_EQ(slurp(audit_).find("audit.torn"), std::string::npos);
}

// Audit log tampering found at start (SECURITY.md): besides the stderr line,
// an `alert` record of kind audit_tamper is the first record after the old
// content, chained from its last parsable record, and the alert reaches the
// webhook and /metrics like a detector alert. verify keeps failing at the
// edited line. A crash-cut last line is no tampering: audit.torn, no alert.
class AuditTamperE2E : public AuditE2E {
 protected:
  // A proxy with a webhook and an auth-failure alert after 3 failures; when it
  // stops, the log holds audit.start, 3 auth.failure and the auth_failures
  // alert (seq 1-5), and the webhook has had that alert.
  void writeFiveRecordsAndStop() {
    start("[detect]\nauth_failures = { count = 3, window_s = 60 }\nalert_webhook = \"http://" + hook_.address() +
          "/alerts\"\n");
    Client c(proxy_->httpPort());
    const auto t0 = Steady::now();
    for (int i = 0; i < 3; ++i) expectProxyError(c.roundTrip(getRequest("/v1/accounts/acme/x")), 401, "unauthorized");
    EXPECT_EQ(proxy_->waitForMetric("portcullis_audit_records_written_total", 5), 5);  // + the auth_failures alert
    ASSERT_GE(hook_.waitFor("\"kind\":\"auth_failures\"", t0, Millis(5000)), 0) << hook_.data();
    stopProxy();
    ls_ = lines(slurp(audit_));
    ASSERT_EQ(ls_.size(), 5u);
  }

  // `line` continues `prev_line` (tests/audit_chain_check.h) under the
  // proxy's keyring.
  void expectChainedAfter(const std::string& line, const std::string& prev_line) {
    std::string error;
    auto ring = LocalKeyring::load(keyring_, error);
    ASSERT_TRUE(ring) << error;
    testing_audit::expectChainedAfter(*ring, line, prev_line);
  }

  std::string verifyOut(int& rc) { return ctlOut("audit verify --keyring " + keyring_ + " " + audit_, &rc); }

  Collector hook_{true};
  std::vector<std::string> ls_;  // the log's lines after writeFiveRecordsAndStop()
};

TEST_F(AuditTamperE2E, EditedLineAfterTheLastRecordRaisesAnAlertOnRestart) {
  writeFiveRecordsAndStop();
  const std::string forged = "{\"seq\":6,\"ts\":\"2026-01-01T00:00:00.000000Z\",\"event\":\"auth.success\"}";
  std::ofstream(audit_, std::ios::binary | std::ios::app) << forged << "\n";
  const auto t0 = Steady::now();
  proxy_->relaunch();
  const std::string members = "\"kind\":\"audit_tamper\",\"found\":\"unparsable_lines\",\"bytes\":" +
                              std::to_string(forged.size() + 1) + ",\"lines\":1,\"after_seq\":5";
  ASSERT_GE(hook_.waitFor(members, t0, Millis(5000)), 0) << hook_.data();
  EXPECT_NE(hook_.data().find("POST /alerts HTTP/1.1"), std::string::npos);
  EXPECT_NE(hook_.data().find("{\"event\":\"alert\",\"ts\":\""), std::string::npos) << hook_.data();
  EXPECT_EQ(proxy_->metric("portcullis_alerts_total{kind=\"audit_tamper\"}"), 1);
  EXPECT_EQ(proxy_->waitForMetric("portcullis_alert_webhook_sent_total", 1), 1);
  const std::string err = proxy_->process().stderrText();
  EXPECT_NE(err.find("complete lines after seq 5 do not parse"), std::string::npos) << err;
  EXPECT_NE(err.find("alert audit_tamper {" + members + "}"), std::string::npos) << err;
  stopProxy();

  const std::vector<std::string> now = lines(slurp(audit_));
  ASSERT_EQ(now.size(), 8u) << slurp(audit_);  // 5 records, the forged line, the alert, audit.start
  EXPECT_EQ(now[5], forged);
  EXPECT_NE(now[6].find(",\"event\":\"alert\"," + members + ",\"key_id\":"), std::string::npos) << now[6];
  expectChainedAfter(now[6], now[4]);
  EXPECT_NE(now[7].find("\"event\":\"audit.start\""), std::string::npos) << now[7];
  expectChainedAfter(now[7], now[6]);
  int rc = -1;
  const std::string out = verifyOut(rc);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("line 6"), std::string::npos) << out;
  EXPECT_NE(out.find("torn"), std::string::npos) << out;
}

TEST_F(AuditTamperE2E, LastRecordWithAChangedMacRaisesAnAlertOnRestart) {
  writeFiveRecordsAndStop();
  std::vector<std::string> edited = ls_;
  std::string& last = edited.back();
  char& digit = last[last.size() - 3];  // a hex digit of the mac
  digit = digit == '0' ? '1' : '0';
  std::string text;
  for (const std::string& l : edited) text += l + "\n";
  std::ofstream(audit_, std::ios::binary | std::ios::trunc) << text;
  const auto t0 = Steady::now();
  proxy_->relaunch();
  const std::string members = "\"kind\":\"audit_tamper\",\"found\":\"bad_mac\",\"seq\":5";
  ASSERT_GE(hook_.waitFor(members, t0, Millis(5000)), 0) << hook_.data();
  EXPECT_EQ(proxy_->metric("portcullis_alerts_total{kind=\"audit_tamper\"}"), 1);
  const std::string err = proxy_->process().stderrText();
  EXPECT_NE(err.find("the mac of the last record (seq 5) does not verify"), std::string::npos) << err;
  EXPECT_NE(err.find("alert audit_tamper {" + members + "}"), std::string::npos) << err;
  stopProxy();

  const std::vector<std::string> now = lines(slurp(audit_));
  ASSERT_EQ(now.size(), 7u) << slurp(audit_);  // 5 records, the alert, audit.start
  EXPECT_EQ(now[4], last);
  EXPECT_NE(now[5].find(",\"event\":\"alert\"," + members + ",\"key_id\":"), std::string::npos) << now[5];
  expectChainedAfter(now[5], now[4]);  // from the mac as the file has it
  int rc = -1;
  const std::string out = verifyOut(rc);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("line 5, seq 5: edited"), std::string::npos) << out;
}

TEST_F(AuditTamperE2E, CrashCutLastLineIsTornNotTampering) {
  writeFiveRecordsAndStop();
  std::string text = slurp(audit_);
  text.resize(text.size() - 40);  // the last record, cut mid-line as by a crash
  std::ofstream(audit_, std::ios::binary | std::ios::trunc) << text;
  proxy_->relaunch();
  EXPECT_EQ(proxy_->metric("portcullis_alerts_total{kind=\"audit_tamper\"}"), 0);
  // An alert raised now reaches the collector after any raised at start (one
  // queue, in order): once it arrived, no audit_tamper alert is coming.
  Client c(proxy_->httpPort());
  for (int i = 0; i < 3; ++i) expectProxyError(c.roundTrip(getRequest("/v1/accounts/acme/x")), 401, "unauthorized");
  const std::string burst = "\"kind\":\"auth_failures\"";
  auto bursts = [&] {
    const std::string got = hook_.data();
    size_t n = 0;
    for (size_t at = got.find(burst); at != std::string::npos; at = got.find(burst, at + 1)) ++n;
    return n;
  };
  for (int i = 0; i < 500 && bursts() < 2; ++i) std::this_thread::sleep_for(Millis(10));
  ASSERT_EQ(bursts(), 2u) << "the second run's auth_failures alert did not arrive: " << hook_.data();
  EXPECT_EQ(hook_.data().find("audit_tamper"), std::string::npos) << hook_.data();
  const std::string err = proxy_->process().stderrText();
  EXPECT_EQ(err.find("audit_tamper"), std::string::npos) << err;
  EXPECT_EQ(err.find("do not parse"), std::string::npos) << err;
  EXPECT_EQ(err.find("does not verify"), std::string::npos) << err;
  stopProxy();

  const std::vector<std::string> now = lines(slurp(audit_));
  ASSERT_GE(now.size(), 7u) << slurp(audit_);  // 4 records, the torn line, audit.torn, audit.start, ...
  EXPECT_NE(now[5].find("\"event\":\"audit.torn\""), std::string::npos) << now[5];
  expectChainedAfter(now[5], now[3]);
  EXPECT_NE(now[6].find("\"event\":\"audit.start\""), std::string::npos) << now[6];
  EXPECT_EQ(slurp(audit_).find("audit_tamper"), std::string::npos);
  int rc = -1;
  const std::string out = verifyOut(rc);
  EXPECT_EQ(rc, 0) << out;
}

// Security review: a second instance with the same config opened the audit
// log and appended audit.start from the chain end it read, forking the
// chain. It must refuse to start and leave the running instance's log alone.
TEST_F(AuditE2E, SecondInstanceOnTheSameAuditLogRefusesToStart) {
  start("");
  Client c(proxy_->httpPort());
  expectProxyError(c.roundTrip(getRequest("/v1/accounts/acme/x")), 401, "unauthorized");
  EXPECT_EQ(proxy_->waitForMetric("portcullis_audit_records_written_total", 2), 2);
  {
    ChildProcess second({PORTCULLIS_BIN, "-c", proxy_->configPath()});
    int ws = 0;
    ASSERT_TRUE(second.waitExit(Millis(10000), &ws)) << second.stderrText();
    EXPECT_TRUE(WIFEXITED(ws) && WEXITSTATUS(ws) != 0) << ws;
    EXPECT_NE(second.stderrText().find("audit log " + audit_ + " is in use by another process"), std::string::npos)
        << second.stderrText();
  }
  expectProxyError(c.roundTrip(getRequest("/v1/accounts/acme/y")), 401, "unauthorized");
  stopProxy();
  int rc = -1;
  const std::string out = ctlOut("audit verify --keyring " + keyring_ + " " + audit_, &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("intact, 3 records"), std::string::npos) << out;
}

// The harness scans every file a test proxy wrote (and its stderr) for
// tokens and key material when it stops it; prove the scan can fail.
TEST_F(AuditE2E, LogScanCatchesALeakedToken) {
  start("");
  std::ofstream(proxy_->dir().file("access.log"), std::ios::app) << "{\"leak\":\"" << token_ << "\"}\n";
  EXPECT_NONFATAL_FAILURE(proxy_.reset(), "contains a token");
}

}  // namespace
}  // namespace portcullis::e2e
