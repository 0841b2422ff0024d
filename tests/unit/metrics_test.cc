// RefusalCounters: refusals by (filter, reason) per worker (proxy/metrics.h).
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "proxy/metrics.h"

namespace portcullis {
namespace {

std::map<std::string, uint64_t> dump(const RefusalCounters& c) {
  std::map<std::string, uint64_t> out;
  c.forEach([&](std::string_view f, std::string_view r, uint64_t n) { out[std::string(f) + "/" + std::string(r)] += n; });
  return out;
}

TEST(RefusalCountersTest, CountsByFilterAndReason) {
  RefusalCounters c;
  EXPECT_TRUE(dump(c).empty());
  c.inc("token_check", "no token");
  c.inc("token_check", "no token");
  c.inc("token_check", "bad_secret");
  c.inc("validate", "no token");
  auto d = dump(c);
  EXPECT_EQ(d.size(), 3u);
  EXPECT_EQ(d["token_check/no token"], 2u);
  EXPECT_EQ(d["token_check/bad_secret"], 1u);
  EXPECT_EQ(d["validate/no token"], 1u);
}

TEST(RefusalCountersTest, LongNamesAreCutAndTooManyPairsShareOther) {
  RefusalCounters c;
  const std::string long_reason(200, 'r');
  c.inc("f", long_reason);
  auto d = dump(c);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d.begin()->first.size(), 2 + RefusalCounters::kReasonLen);
  uint64_t total = 0;
  for (int i = 0; i < 1000; ++i) c.inc("f", "reason " + std::to_string(i));
  d = dump(c);
  for (const auto& [k, n] : d) total += n;
  EXPECT_EQ(total, 1001u) << "nothing is lost";
  EXPECT_LE(d.size(), RefusalCounters::kSlots + 1);
  EXPECT_GT(d["other/other"], 0u);
}

// portcullis_alerts_total: the detector's kinds with [detect], audit_tamper
// with the audit log (which raises it), each only when it can move.
TEST(RenderMetricsTest, AlertKindsFollowWhatIsEnabled) {
  RouteLabels labels;
  MetricsExtra extra;
  extra.alerts[static_cast<size_t>(AlertKind::kAuditTamper)] = 2;
  extra.alerts[static_cast<size_t>(AlertKind::kBan)] = 3;
  EXPECT_EQ(renderMetrics({}, labels, extra).find("portcullis_alerts_total"), std::string::npos);
  extra.audit_enabled = true;
  std::string text = renderMetrics({}, labels, extra);
  EXPECT_NE(text.find("\nportcullis_alerts_total{kind=\"audit_tamper\"} 2\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("portcullis_alerts_total{kind=\"ban\"}"), std::string::npos) << text;
  extra.detect_enabled = true;
  text = renderMetrics({}, labels, extra);
  EXPECT_NE(text.find("\nportcullis_alerts_total{kind=\"ban\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nportcullis_alerts_total{kind=\"audit_tamper\"} 2\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("# TYPE portcullis_alerts_total counter"), text.rfind("# TYPE portcullis_alerts_total counter"));
  extra.audit_enabled = false;
  text = renderMetrics({}, labels, extra);
  EXPECT_EQ(text.find("audit_tamper"), std::string::npos) << text;
}

}  // namespace
}  // namespace portcullis
