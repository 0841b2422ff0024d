#include "proxy/audit_log.h"

#include <gtest/gtest.h>
#include <openssl/base64.h>
#include <openssl/digest.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "proxy/access_log.h"
#include "proxy/audit_verify.h"
#include "proxy/keyring.h"
#include "tests/audit_chain_check.h"
#include "tests/unit/page_cache.h"
#include "tests/unit/temp_dir.h"

namespace portcullis {
namespace {

using testing_audit::expectChainedAfter;
using testing_support::TempDir;

std::string readFile(const std::string& path) { return testing_support::readWholeFile(path); }

void writeFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

std::vector<std::string> lines(const std::string& path) {
  std::vector<std::string> v;
  std::istringstream in(readFile(path));
  for (std::string l; std::getline(in, l);) v.push_back(l);
  return v;
}

std::string joinLines(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& l : v) s += l + "\n";
  return s;
}

MasterKey keyFromByte(uint8_t b) {
  MasterKey k;
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(b + i * 7);
  return k;
}

// Writes a keyring with the given (id, seed) keys and active id; loads it.
std::shared_ptr<const LocalKeyring> makeKeyring(const std::string& path,
                                                const std::vector<std::pair<std::string, uint8_t>>& keys,
                                                const std::string& active) {
  KeyringData data;
  data.active = active;
  for (const auto& [id, seed] : keys) data.keys.emplace_back(id, keyFromByte(seed));
  std::string error;
  EXPECT_TRUE(writeKeyring(path, data, error)) << error;
  auto ring = LocalKeyring::load(path, error);
  EXPECT_TRUE(ring) << error;
  return ring;
}

class AuditLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    log_path = dir.path + "/sub/audit.log";
    ring = makeKeyring(dir.path + "/keyring.toml", {{"k1", 1}}, "k1");
  }

  // Writes `n` events (plus the audit.start record) and stops.
  void writeEvents(int n, const std::string& path) {
    AuditLog log;
    std::string error;
    ASSERT_TRUE(log.start(path, ring, error)) << error;
    for (int i = 0; i < n; ++i) {
      log.record("auth.failure", AuditFields().str("reason", "bad_secret").num("i", i).take());
    }
    log.stop();
    EXPECT_GE(log.written(), static_cast<uint64_t>(n) + 1);
    EXPECT_EQ(log.lost(), 0u);
  }

  VerifyResult verify(const std::string& path) { return verifyAuditFile(path, *ring); }

  // Edits the "bad_secret" of line `i` (0-based) of the log, keeping it parsable.
  void editLine(size_t i) {
    auto v = lines(log_path);
    ASSERT_LT(i, v.size());
    const size_t at = v[i].find("bad_secret");
    ASSERT_NE(at, std::string::npos);
    v[i].replace(at, 3, "BAD");
    writeFile(log_path, joinLines(v));
  }

  TempDir dir;
  std::string log_path;
  std::shared_ptr<const LocalKeyring> ring;
};

// Each sync drops what it made durable from the page cache, except the
// newest DropBehind::kKeep bytes (drop_behind.h); the chain still verifies.
TEST_F(AuditLogTest, SyncedRecordsLeaveThePageCache) {
  if (testing_support::onTmpfs(dir.path)) GTEST_SKIP() << dir.path << " is on tmpfs, whose pages cannot be dropped";
  const std::string big(4000, 'v');
  {
    AuditLog log;
    std::string error;
    ASSERT_TRUE(log.start(log_path, ring, error)) << error;
    for (int i = 0; i < 6000; ++i) log.record("auth.failure", AuditFields().str("detail", big).num("i", i).take());
    log.stop();  // the last sync
    EXPECT_EQ(log.lost(), 0u);
  }
  struct stat st;
  ASSERT_EQ(::stat(log_path.c_str(), &st), 0);
  ASSERT_GT(st.st_size, 3 * DropBehind::kKeep);
  const off_t dropped = st.st_size - DropBehind::kKeep;
  EXPECT_EQ(testing_support::residentFraction(log_path, 0, dropped - dropped % DropBehind::kAlign), 0.0);
  EXPECT_TRUE(verify(log_path).ok);
}

TEST_F(AuditLogTest, IntactChainVerifies) {
  writeEvents(20, log_path);
  auto v = lines(log_path);
  ASSERT_EQ(v.size(), 21u);
  EXPECT_NE(v[0].find("\"seq\":1,"), std::string::npos);
  EXPECT_NE(v[0].find("\"event\":\"audit.start\",\"pid\":"), std::string::npos);
  EXPECT_NE(v[0].find("\"prev\":\"" + std::string(kAuditZeroMac) + "\""), std::string::npos);
  EXPECT_NE(v[5].find("\"reason\":\"bad_secret\",\"i\":4,\"key_id\":\"k1\""), std::string::npos);
  const VerifyResult r = verify(log_path);
  EXPECT_TRUE(r.ok) << r.why << ": " << r.detail;
  EXPECT_EQ(r.records, 21u);
  EXPECT_EQ(r.last_seq, 21u);
  EXPECT_EQ(r.continues_from_seq, 0u);
  struct stat st {};
  ASSERT_EQ(stat(log_path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
}

TEST_F(AuditLogTest, ParsesItsOwnLinesAndMacMatchesDefinition) {
  writeEvents(1, log_path);
  auto v = lines(log_path);
  AuditLine rec;
  ASSERT_TRUE(parseAuditLine(v[1], rec));
  EXPECT_EQ(rec.seq, 2u);
  EXPECT_EQ(rec.key_id, "k1");
  // mac = HMAC(HKDF(master), prev || line-without-mac-member)
  const std::string line = v[1];
  const size_t cut = line.rfind(",\"mac\":\"");
  ASSERT_EQ(cut, rec.mac_cut);
  auto m = AuditMac::create(*ring, "k1");
  std::string hex;
  m->appendMacHex(rec.prev, std::string_view(line).substr(0, cut), hex);
  EXPECT_EQ(hex, rec.mac);
  EXPECT_FALSE(parseAuditLine(line.substr(0, line.size() - 1), rec));
  EXPECT_FALSE(parseAuditLine("{}", rec));
}

// AuditMac computes HMAC-SHA256 from precomputed pad states; it must agree
// with BoringSSL's one-shot HMAC() for every message length around the block
// boundaries (the record layout puts a 64-byte prev before the body).
TEST_F(AuditLogTest, MacEqualsOneShotHmacSha256OfTheDerivedKey) {
  uint8_t master[32];
  ASSERT_TRUE(ring->masterKey("k1", master));
  uint8_t key[32];
  ASSERT_TRUE(deriveAuditKey(master, key));
  auto m = AuditMac::create(*ring, "k1");
  ASSERT_TRUE(m);
  const std::string prev(kAuditZeroMac);
  std::string body;
  for (size_t len = 0; len <= 300; ++len) {
    const std::string message = prev + body + "}";
    uint8_t want[32];
    unsigned want_len = 0;
    ASSERT_NE(HMAC(EVP_sha256(), key, sizeof key, reinterpret_cast<const uint8_t*>(message.data()), message.size(),
                   want, &want_len),
              nullptr);
    ASSERT_EQ(want_len, 32u);
    uint8_t got[32];
    m->mac(prev, body, got);
    ASSERT_EQ(std::memcmp(got, want, 32), 0) << "body length " << len;
    body += static_cast<char>('a' + len % 26);
  }
}

TEST_F(AuditLogTest, HostileFieldValuesStayInsideTheirString) {
  AuditLog log;
  std::string error;
  ASSERT_TRUE(log.start(log_path, ring, error)) << error;
  log.record("auth.failure",
             AuditFields().str("ip", "1.2.3.4\",\"key_id\":\"k9\",\"prev\":\"x\n").take());
  log.record("alert", std::string("\"raw\":\"a\nb\""));  // raw newline in a bad fragment
  log.stop();
  auto v = lines(log_path);
  ASSERT_EQ(v.size(), 3u);
  EXPECT_TRUE(verify(log_path).ok);
}

// A packing is the same whether it stays in the object's own buffer or
// outgrows it (at every size around the switch), and writePackedFields
// writes what formatPackedFields appends.
TEST(PackedFields, SameLayoutInlineAndSpilled) {
  for (size_t first = 0; first < 420; first += 7) {
    for (size_t second = 0; second < 40; ++second) {
      const std::string a(first, 'a'), b(second, 'b');
      PackedFields f;
      f.str("k1", a).str(b, "v2").str("", "");
      std::string want;
      for (std::string_view item : {std::string_view("k1"), std::string_view(a), std::string_view(b),
                                    std::string_view("v2"), std::string_view(), std::string_view()}) {
        appendLengthPrefixed(item, want);
      }
      ASSERT_EQ(f.view(), want) << first << " " << second;
      ASSERT_EQ(f.take(), want);
      std::string appended = "x";
      formatPackedFields(f.view(), appended);
      std::string written(1 + f.view().size() * kJsonEscapeMax, '\0');
      written[0] = 'x';
      written.resize(static_cast<size_t>(writePackedFields(f.view(), written.data() + 1) - written.data()));
      ASSERT_EQ(written, appended);
      ASSERT_EQ(appended, "x" + AuditFields().str("k1", a).str(b, "v2").str("", "").view());
    }
  }
}

// Packed members are written exactly as AuditFields would write them, in
// record order with plain records, and the chain verifies.
TEST_F(AuditLogTest, PackedFieldsAreFormattedByTheWriter) {
  const std::string hostile = "1.2.3.4\",\"key_id\":\"k9\",\"prev\":\"x\n\r\x01\xff\xe2\x82\xac";
  std::string direct = AuditFields().str("request_id", "abc").str("ip", hostile).str("", "").view();
  std::string packed = PackedFields().str("request_id", "abc").str("ip", hostile).str("", "").take();
  std::string formatted;
  formatPackedFields(packed, formatted);
  EXPECT_EQ(formatted, direct);
  // The worst case for the room formatPackedFields reserves: every byte of
  // every name and value escaped to six, after text already in the buffer.
  const std::string controls(200, '\x01');
  const std::string worst = AuditFields().str(controls, controls).str("", controls).str(controls, "").view();
  std::string worst_formatted = "already here";
  formatPackedFields(PackedFields().str(controls, controls).str("", controls).str(controls, "").take(),
                     worst_formatted);
  EXPECT_EQ(worst_formatted, "already here" + worst);

  AuditLog log;
  std::string error;
  ASSERT_TRUE(log.start(log_path, ring, error)) << error;
  for (int i = 0; i < 100; ++i) {
    if (i % 2 == 0) {
      log.record("auth.success", PackedFields().str("n", std::to_string(i)).str("ip", hostile));
    } else {
      log.record("auth.success", AuditFields().str("n", std::to_string(i)).str("ip", hostile).take());
    }
  }
  // The record's room for packed members is their worst case: a packing of
  // control bytes only, formatted straight into the record.
  log.record("worst", PackedFields().str(controls, controls).str("", controls).str(controls, ""));
  log.stop();
  auto v = lines(log_path);
  ASSERT_EQ(v.size(), 102u);
  EXPECT_NE(v[101].find("\"event\":\"worst\"," + worst + ",\"key_id\""), std::string::npos);
  const std::string members = AuditFields().str("ip", hostile).view();
  for (int i = 0; i < 100; ++i) {
    const std::string& l = v[static_cast<size_t>(i) + 1];
    EXPECT_NE(l.find("\"event\":\"auth.success\",\"n\":\"" + std::to_string(i) + "\"," + members + ",\"key_id\""),
              std::string::npos)
        << l;
  }
  const VerifyResult r = verify(log_path);
  EXPECT_TRUE(r.ok) << r.why << ": " << r.detail;
}

TEST_F(AuditLogTest, EditedFieldIsDetectedWithItsSeq) {
  writeEvents(10, log_path);
  editLine(4);
  const VerifyResult r = verify(log_path);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.why, "edited");
  EXPECT_EQ(r.first_bad_seq, 5u);
  EXPECT_EQ(r.first_bad_line, 5u);
}

TEST_F(AuditLogTest, DeletedLineIsDetected) {
  writeEvents(10, log_path);
  auto v = lines(log_path);
  v.erase(v.begin() + 4);  // seq 5
  writeFile(log_path, joinLines(v));
  const VerifyResult r = verify(log_path);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.why, "deleted");
  EXPECT_EQ(r.first_bad_seq, 6u);
  EXPECT_EQ(r.first_bad_line, 5u);
}

TEST_F(AuditLogTest, ReorderedLinesAreDetected) {
  writeEvents(10, log_path);
  auto v = lines(log_path);
  std::swap(v[4], v[5]);  // seq 6 before seq 5
  writeFile(log_path, joinLines(v));
  VerifyResult r = verify(log_path);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.why, "reordered");
  EXPECT_EQ(r.first_bad_seq, 6u);
  EXPECT_EQ(r.first_bad_line, 5u);

  // A record moved earlier by several lines.
  v = lines(log_path);
  std::swap(v[4], v[5]);  // undo
  std::string moved = v[8];
  v.erase(v.begin() + 8);
  v.insert(v.begin() + 2, moved);
  writeFile(log_path, joinLines(v));
  r = verify(log_path);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.why, "reordered");
  EXPECT_EQ(r.first_bad_line, 3u);
}

TEST_F(AuditLogTest, InsertedCopyIsDetected) {
  writeEvents(10, log_path);
  auto v = lines(log_path);
  v.insert(v.begin() + 7, v[3]);  // a copy of seq 4 after seq 7
  writeFile(log_path, joinLines(v));
  VerifyResult r = verify(log_path);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.why, "inserted");
  EXPECT_EQ(r.first_bad_seq, 4u);
  EXPECT_EQ(r.first_bad_line, 8u);

  v = lines(log_path);
  v.erase(v.begin() + 7);
  v.insert(v.begin() + 4, v[3]);  // a duplicate right after itself
  writeFile(log_path, joinLines(v));
  r = verify(log_path);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.why, "inserted");
  EXPECT_EQ(r.first_bad_line, 5u);
}

TEST_F(AuditLogTest, TruncatedMidLineIsTorn) {
  writeEvents(10, log_path);
  std::string data = readFile(log_path);
  data.resize(data.size() - 30);
  writeFile(log_path, data);
  const VerifyResult r = verify(log_path);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.why, "torn");
  EXPECT_EQ(r.first_bad_line, 11u);
  EXPECT_EQ(r.records, 10u);
}

TEST_F(AuditLogTest, GarbageLineMidFileIsTorn) {
  writeEvents(5, log_path);
  auto v = lines(log_path);
  v.insert(v.begin() + 2, "not a record");
  writeFile(log_path, joinLines(v));
  const VerifyResult r = verify(log_path);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.why, "torn");
  EXPECT_EQ(r.first_bad_line, 3u);
}

TEST_F(AuditLogTest, RestartContinuesTheChain) {
  writeEvents(5, log_path);
  writeEvents(5, log_path);
  auto v = lines(log_path);
  ASSERT_EQ(v.size(), 12u);
  EXPECT_NE(v[6].find("\"seq\":7,"), std::string::npos);
  EXPECT_NE(v[6].find("\"event\":\"audit.start\""), std::string::npos);
  const VerifyResult r = verify(log_path);
  EXPECT_TRUE(r.ok) << r.why << ": " << r.detail;
  EXPECT_EQ(r.records, 12u);
  EXPECT_EQ(r.torn_accepted, 0u);
}

TEST_F(AuditLogTest, TornTailIsRecordedOnRestart) {
  writeEvents(5, log_path);
  std::string data = readFile(log_path);
  const std::string good = data;
  data.resize(data.size() - 40);  // tear the last record
  writeFile(log_path, data);
  const std::string torn = data.substr(good.rfind('\n', good.size() - 2) + 1);
  writeEvents(2, log_path);
  auto v = lines(log_path);
  ASSERT_EQ(v.size(), 10u);  // 5 good, torn, audit.torn, audit.start, 2
  EXPECT_EQ(v[5], torn);
  EXPECT_NE(v[6].find("\"seq\":6,"), std::string::npos);
  EXPECT_NE(v[6].find("\"event\":\"audit.torn\",\"torn_bytes\":" + std::to_string(torn.size())),
            std::string::npos);
  EXPECT_NE(v[7].find("\"event\":\"audit.start\""), std::string::npos);
  VerifyResult r = verify(log_path);
  EXPECT_TRUE(r.ok) << r.why << ": " << r.detail << " line " << r.first_bad_line;
  EXPECT_EQ(r.torn_accepted, 1u);
  EXPECT_EQ(r.records, 9u);

  // Editing the torn bytes afterwards is caught.
  v[5][3] = 'X';
  writeFile(log_path, joinLines(v));
  r = verify(log_path);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.why, "torn");
  EXPECT_EQ(r.first_bad_line, 6u);
}

TEST_F(AuditLogTest, CompleteLastRecordWithoutNewlineIsKept) {
  writeEvents(3, log_path);
  std::string data = readFile(log_path);
  data.pop_back();
  writeFile(log_path, data);
  EXPECT_EQ(verify(log_path).why, "torn");
  writeEvents(1, log_path);
  const VerifyResult r = verify(log_path);
  EXPECT_TRUE(r.ok) << r.why << ": " << r.detail;
  EXPECT_EQ(r.records, 6u);
  EXPECT_EQ(r.torn_accepted, 0u);
}

// Complete lines that do not parse were not left by a crash (a crash leaves
// at most one unterminated line): a restart must not cover them.
TEST_F(AuditLogTest, GarbageOnlyFileIsNotCoveredOnRestart) {
  mkdir((dir.path + "/sub").c_str(), 0750);
  writeFile(log_path, "garbage\n\nmore");
  writeEvents(1, log_path);
  const VerifyResult r = verify(log_path);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.why, "torn");
  EXPECT_EQ(r.first_bad_line, 1u);
  auto v = lines(log_path);
  ASSERT_EQ(v.size(), 6u);  // garbage, "", more, the tamper alert, audit.start, 1
  EXPECT_EQ(v[2], "more");
  EXPECT_NE(v[3].find("{\"seq\":1,\"ts\""), std::string::npos);
  EXPECT_NE(v[3].find("\"event\":\"alert\",\"kind\":\"audit_tamper\",\"found\":\"unparsable_lines\","
                      "\"bytes\":9,\"lines\":2,\"after_seq\":0,"),
            std::string::npos)
      << v[3];
  EXPECT_NE(v[4].find("\"event\":\"audit.start\""), std::string::npos);
}

TEST_F(AuditLogTest, UnterminatedGarbageOnlyFileStartsAChainAfterIt) {
  mkdir((dir.path + "/sub").c_str(), 0750);
  writeFile(log_path, "more");
  writeEvents(1, log_path);
  const VerifyResult r = verify(log_path);
  EXPECT_TRUE(r.ok) << r.why << ": " << r.detail;
  EXPECT_EQ(r.torn_accepted, 1u);
  auto v = lines(log_path);
  ASSERT_EQ(v.size(), 4u);
  EXPECT_NE(v[1].find("\"seq\":1,"), std::string::npos);
  EXPECT_NE(v[1].find("\"torn_bytes\":4,"), std::string::npos);
}

// Security review: records 2-5 edited so that they no longer parse were
// covered by an audit.torn on restart and then verified intact.
TEST_F(AuditLogTest, EditedCompleteRecordsStayDetectedAfterRestart) {
  writeEvents(4, log_path);
  auto v = lines(log_path);
  ASSERT_EQ(v.size(), 5u);
  for (size_t i = 1; i <= 4; ++i) v[i] += ' ';  // seq 2-5, the end of the file
  writeFile(log_path, joinLines(v));
  ASSERT_EQ(verify(log_path).why, "torn");
  writeEvents(2, log_path);
  const std::string text = readFile(log_path);
  EXPECT_EQ(text.find("audit.torn"), std::string::npos) << text;
  VerifyResult r = verify(log_path);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.why, "torn");
  EXPECT_EQ(r.first_bad_line, 2u);
  // The same with a torn last line after the edited ones: nothing is covered.
  writeFile(log_path, joinLines(v) + "{\"seq\":9");
  writeEvents(1, log_path);
  EXPECT_EQ(readFile(log_path).find("audit.torn"), std::string::npos);
  r = verify(log_path);
  EXPECT_EQ(r.why, "torn");
  EXPECT_EQ(r.first_bad_line, 2u);
}

// A parsable last record whose mac was edited stays "edited" after a restart.
TEST_F(AuditLogTest, EditedLastRecordStaysDetectedAfterRestart) {
  writeEvents(3, log_path);
  editLine(3);
  writeEvents(1, log_path);
  const VerifyResult r = verify(log_path);
  EXPECT_EQ(r.why, "edited");
  EXPECT_EQ(r.first_bad_seq, 4u);
}

// Starts and stops a log on `path`; returns what it found at start.
std::vector<std::string> startAlertsOf(const std::string& path, const std::shared_ptr<const LocalKeyring>& ring) {
  AuditLog log;
  std::string error;
  EXPECT_TRUE(log.start(path, ring, error)) << error;
  return log.startAlerts();
}

// Tampering found at start is an audit_tamper alert record, the first one
// after the old content and chained from its last record; verify keeps
// failing where it did.
TEST_F(AuditLogTest, EditedLinesAfterTheLastRecordAreATamperAlertRecord) {
  writeEvents(3, log_path);
  const auto before = lines(log_path);
  writeFile(log_path, joinLines(before) + "forged one\nforged two\n");
  EXPECT_EQ(startAlertsOf(log_path, ring),
            std::vector<std::string>{"\"kind\":\"audit_tamper\",\"found\":\"unparsable_lines\",\"bytes\":22,"
                                     "\"lines\":2,\"after_seq\":4"});
  const auto v = lines(log_path);
  ASSERT_EQ(v.size(), 8u);  // 4 records, 2 forged lines, the alert, audit.start
  EXPECT_NE(v[6].find("\"event\":\"alert\",\"kind\":\"audit_tamper\",\"found\":\"unparsable_lines\""),
            std::string::npos)
      << v[6];
  expectChainedAfter(*ring, v[6], v[3]);
  EXPECT_NE(v[7].find("\"event\":\"audit.start\""), std::string::npos);
  expectChainedAfter(*ring, v[7], v[6]);
  const VerifyResult r = verify(log_path);
  EXPECT_EQ(r.why, "torn");
  EXPECT_EQ(r.first_bad_line, 5u);
}

TEST_F(AuditLogTest, LastRecordWithABadMacIsATamperAlertRecord) {
  writeEvents(3, log_path);
  editLine(3);
  EXPECT_EQ(startAlertsOf(log_path, ring),
            std::vector<std::string>{"\"kind\":\"audit_tamper\",\"found\":\"bad_mac\",\"seq\":4"});
  const auto v = lines(log_path);
  ASSERT_EQ(v.size(), 6u);
  EXPECT_NE(v[4].find("\"event\":\"alert\",\"kind\":\"audit_tamper\",\"found\":\"bad_mac\",\"seq\":4,"),
            std::string::npos)
      << v[4];
  expectChainedAfter(*ring, v[4], v[3]);
  const VerifyResult r = verify(log_path);
  EXPECT_EQ(r.why, "edited");
  EXPECT_EQ(r.first_bad_seq, 4u);
}

// Both findings: two alerts, in file order. With a torn last line after a
// bad last record, the audit.torn still follows the torn line directly.
TEST_F(AuditLogTest, EachFindingIsOneAlertInFileOrderAfterAnyAuditTorn) {
  writeEvents(3, log_path);
  editLine(3);
  const std::string edited = readFile(log_path);
  writeFile(log_path, edited + "forged\n");
  const auto alerts = startAlertsOf(log_path, ring);
  ASSERT_EQ(alerts.size(), 2u);
  EXPECT_EQ(alerts[0], "\"kind\":\"audit_tamper\",\"found\":\"bad_mac\",\"seq\":4");
  EXPECT_EQ(alerts[1],
            "\"kind\":\"audit_tamper\",\"found\":\"unparsable_lines\",\"bytes\":7,\"lines\":1,\"after_seq\":4");
  auto v = lines(log_path);
  ASSERT_EQ(v.size(), 8u);  // 4 records, forged, 2 alerts, audit.start
  EXPECT_NE(v[5].find("\"found\":\"bad_mac\""), std::string::npos) << v[5];
  EXPECT_NE(v[6].find("\"found\":\"unparsable_lines\""), std::string::npos) << v[6];
  expectChainedAfter(*ring, v[6], v[5]);

  writeFile(log_path, edited + "{\"seq\":5,");
  EXPECT_EQ(startAlertsOf(log_path, ring),
            std::vector<std::string>{"\"kind\":\"audit_tamper\",\"found\":\"bad_mac\",\"seq\":4"});
  v = lines(log_path);
  ASSERT_EQ(v.size(), 8u);  // 4 records, the torn line, audit.torn, the alert, audit.start
  EXPECT_NE(v[5].find("\"event\":\"audit.torn\""), std::string::npos) << v[5];
  EXPECT_NE(v[6].find("\"found\":\"bad_mac\""), std::string::npos) << v[6];
  EXPECT_EQ(verify(log_path).why, "edited");
}

// A crash-cut last line, or a restart of an intact log, is no tampering.
TEST_F(AuditLogTest, TornTailAndIntactLogRaiseNoTamperAlert) {
  writeEvents(2, log_path);
  EXPECT_TRUE(startAlertsOf(log_path, ring).empty());
  std::string data = readFile(log_path);
  data.resize(data.size() - 40);
  writeFile(log_path, data);
  EXPECT_TRUE(startAlertsOf(log_path, ring).empty());
  EXPECT_EQ(readFile(log_path).find("audit_tamper"), std::string::npos);
  const VerifyResult r = verify(log_path);
  EXPECT_TRUE(r.ok) << r.why << ": " << r.detail;
  EXPECT_EQ(r.torn_accepted, 1u);
}

// One signed record line (key k1 of the fixture's ring) for hand-built logs.
std::string signedLine(const KeyProvider& keys, uint64_t seq, const std::string& event_and_fields,
                       const std::string& prev) {
  const std::string body = "{\"seq\":" + std::to_string(seq) + ",\"ts\":\"2026-01-01T00:00:00.000000Z\",\"event\":" +
                           event_and_fields + ",\"key_id\":\"k1\",\"prev\":\"" + prev + "\"";
  std::string mac;
  AuditMac::create(keys, "k1")->appendMacHex(prev, body, mac);
  return body + ",\"mac\":\"" + mac + "\"}";
}

std::string tornRecord(const KeyProvider& keys, uint64_t seq, const std::string& covered, const std::string& prev) {
  uint8_t d[32];
  SHA256(reinterpret_cast<const uint8_t*>(covered.data()), covered.size(), d);
  std::string hex;
  for (uint8_t b : d) {
    hex += "0123456789abcdef"[b >> 4];
    hex += "0123456789abcdef"[b & 0xF];
  }
  return signedLine(keys, seq,
                    "\"audit.torn\",\"torn_bytes\":" + std::to_string(covered.size()) + ",\"torn_sha256\":\"" + hex +
                        "\"",
                    prev);
}

// The verifier accepts an audit.torn only over exactly one line: what a
// crash can leave unterminated at the end of a file.
TEST_F(AuditLogTest, AuditTornCoversExactlyOneLine) {
  const std::string first = signedLine(*ring, 1, "\"audit.start\",\"pid\":1", std::string(kAuditZeroMac));
  AuditLine rec;
  ASSERT_TRUE(parseAuditLine(first, rec));
  const std::string prev(rec.mac);
  mkdir((dir.path + "/sub").c_str(), 0750);

  writeFile(log_path, first + "\n{\"seq\":2,\n" + tornRecord(*ring, 2, "{\"seq\":2,", prev) + "\n");
  VerifyResult r = verify(log_path);
  EXPECT_TRUE(r.ok) << r.why << ": " << r.detail;
  EXPECT_EQ(r.torn_accepted, 1u);

  writeFile(log_path, first + "\nedited 2\nedited 3\n" + tornRecord(*ring, 2, "edited 2\nedited 3", prev) + "\n");
  r = verify(log_path);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.why, "torn");
  EXPECT_EQ(r.first_bad_line, 2u);

  writeFile(log_path, first + "\n\n" + tornRecord(*ring, 2, "", prev) + "\n");
  r = verify(log_path);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.why, "torn");
}

TEST_F(AuditLogTest, KeyRotationMidFile) {
  const std::string both = dir.path + "/both.toml";
  AuditLog log;
  std::string error;
  ASSERT_TRUE(log.start(log_path, ring, error)) << error;
  for (int i = 0; i < 5; ++i) log.record("auth.success", AuditFields().num("i", i).take());
  log.flush();
  auto rotated = makeKeyring(both, {{"k1", 1}, {"k2", 2}}, "k2");
  ASSERT_TRUE(log.setKeys(rotated, error)) << error;
  for (int i = 5; i < 10; ++i) log.record("auth.success", AuditFields().num("i", i).take());
  log.stop();
  auto v = lines(log_path);
  ASSERT_EQ(v.size(), 11u);
  EXPECT_NE(v[5].find("\"key_id\":\"k1\""), std::string::npos);
  EXPECT_NE(v[6].find("\"key_id\":\"k2\""), std::string::npos);

  VerifyResult r = verifyAuditFile(log_path, *rotated);
  EXPECT_TRUE(r.ok) << r.why << ": " << r.detail;
  EXPECT_EQ(r.records, 11u);

  auto only_new = makeKeyring(dir.path + "/new.toml", {{"k2", 2}}, "k2");
  r = verifyAuditFile(log_path, *only_new);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.why, "unknown key id");
  EXPECT_EQ(r.first_bad_seq, 1u);

  // A wrong key under the right id reads as an edit.
  auto wrong = makeKeyring(dir.path + "/wrong.toml", {{"k1", 9}, {"k2", 2}}, "k2");
  r = verifyAuditFile(log_path, *wrong);
  EXPECT_EQ(r.why, "edited");

  // A restart whose keyring no longer has the last record's key continues.
  auto k3 = makeKeyring(dir.path + "/k3.toml", {{"k3", 3}}, "k3");
  AuditLog log2;
  ASSERT_TRUE(log2.start(log_path, k3, error)) << error;
  log2.record("config.reload", "");
  log2.stop();
  auto all = makeKeyring(dir.path + "/all.toml", {{"k1", 1}, {"k2", 2}, {"k3", 3}}, "k3");
  r = verifyAuditFile(log_path, *all);
  EXPECT_TRUE(r.ok) << r.why << ": " << r.detail;
  EXPECT_EQ(r.records, 13u);
  EXPECT_FALSE(log2.setKeys(nullptr, error));
}

TEST_F(AuditLogTest, ReopenAfterRenameContinuesSeqAndPrev) {
  AuditLog log;
  std::string error;
  ASSERT_TRUE(log.start(log_path, ring, error)) << error;
  for (int i = 0; i < 4; ++i) log.record("auth.success", "");
  log.flush();
  ASSERT_EQ(rename(log_path.c_str(), (log_path + ".1").c_str()), 0);
  log.reopen();
  for (int i = 0; i < 3; ++i) log.record("auth.failure", "");
  log.stop();
  auto old_lines = lines(log_path + ".1");
  auto new_lines = lines(log_path);
  ASSERT_EQ(old_lines.size(), 5u);
  ASSERT_EQ(new_lines.size(), 3u);
  AuditLine last, first;
  ASSERT_TRUE(parseAuditLine(old_lines.back(), last));
  ASSERT_TRUE(parseAuditLine(new_lines.front(), first));
  EXPECT_EQ(first.seq, last.seq + 1);
  EXPECT_EQ(first.prev, last.mac);
  VerifyResult r = verify(log_path + ".1");
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.continues_from_seq, 0u);
  r = verify(log_path);
  EXPECT_TRUE(r.ok) << r.why << ": " << r.detail;
  EXPECT_EQ(r.continues_from_seq, 6u);
  // The two files together are one chain.
  writeFile(dir.path + "/joined", readFile(log_path + ".1") + readFile(log_path));
  EXPECT_TRUE(verify(dir.path + "/joined").ok);
}

TEST_F(AuditLogTest, OverflowPathKeepsEveryEventInOrder) {
  AuditLog log(4);
  // Recorded before start(): 50 events for a ring of 4, so most overflow.
  for (int i = 0; i < 50; ++i) log.record("pre", AuditFields().num("t", 99).num("n", i).take());
  EXPECT_GE(log.overflowed(), 46u);
  std::string error;
  ASSERT_TRUE(log.start(log_path, ring, error)) << error;
  constexpr int kThreads = 8, kEach = 3000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&log, t] {
      for (int n = 0; n < kEach; ++n) log.record("ratelimit.ban", AuditFields().num("t", t).num("n", n).take());
    });
  }
  for (auto& th : threads) th.join();
  log.flush();
  EXPECT_EQ(log.depth(), 0u);
  log.stop();
  const uint64_t total = 1 + 50 + uint64_t(kThreads) * kEach;
  EXPECT_EQ(log.written(), total);
  EXPECT_EQ(log.lost(), 0u);
  auto v = lines(log_path);
  ASSERT_EQ(v.size(), total);
  std::map<int, int> next;  // per producer: the n expected next (in order, once)
  uint64_t seq = 0;
  for (const auto& l : v) {
    AuditLine rec;
    ASSERT_TRUE(parseAuditLine(l, rec));
    EXPECT_EQ(rec.seq, ++seq);
    const size_t t_at = l.find("\"t\":");
    if (t_at == std::string::npos) continue;
    const int t = std::atoi(l.c_str() + t_at + 4);
    const int n = std::atoi(l.c_str() + l.find("\"n\":") + 4);
    EXPECT_EQ(n, next[t]) << "producer " << t;
    next[t] = n + 1;
  }
  EXPECT_EQ(next[99], 50);
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(next[t], kEach);
  EXPECT_TRUE(verify(log_path).ok);
}

// A thread with an attached Stage: its record()s wait in the stage until
// published, then get consecutive seqs in recording order, whatever other
// threads record meanwhile; detach publishes; the chain verifies.
TEST_F(AuditLogTest, StagedEventsArePublishedTogetherInOrder) {
  AuditLog log;
  std::string error;
  ASSERT_TRUE(log.start(log_path, ring, error)) << error;
  std::thread loop([&log] {
    AuditLog::Stage stage;
    stage.attach(&log);
    for (int n = 0; n < 3; ++n) log.record("auth.success", AuditFields().num("n", n).take());
    PackedFields f;
    f.str("reason", "bad \"secret\"\n");
    log.record("auth.failure", f);
    log.flush();  // covers published events only
    EXPECT_EQ(log.written(), 1u);  // audit.start
    EXPECT_EQ(log.depth(), 0u);
    log.record("staged.too", std::string());
    stage.publishAndKick(1);  // as an event loop does: publishes, wakes the writer
    log.flush();
    EXPECT_EQ(log.written(), 6u);
    // Over kStageMaxEvents the stage publishes itself.
    for (uint32_t n = 0; n < AuditLog::kStageMaxEvents; ++n) log.record("bulk", AuditFields().unum("n", n).take());
    log.flush();
    EXPECT_EQ(log.written(), 6u + AuditLog::kStageMaxEvents);
    log.record("last", std::string());
    stage.detach();  // publishes "last"; later records go straight to the queue
    log.record("direct", std::string());
  });
  loop.join();
  log.stop();
  EXPECT_EQ(log.lost(), 0u);
  auto v = lines(log_path);
  ASSERT_EQ(v.size(), 8u + AuditLog::kStageMaxEvents);
  const std::vector<std::string> want_events = {"audit.start", "auth.success", "auth.success", "auth.success",
                                                "auth.failure", "staged.too"};
  for (size_t i = 0; i < v.size(); ++i) {
    AuditLine rec;
    ASSERT_TRUE(parseAuditLine(v[i], rec)) << v[i];
    EXPECT_EQ(rec.seq, i + 1);
    if (i < want_events.size()) {
      EXPECT_NE(v[i].find("\"event\":\"" + want_events[i] + "\""), std::string::npos) << v[i];
    }
  }
  EXPECT_NE(v[1].find("\"n\":0,"), std::string::npos);
  EXPECT_NE(v[4].find("\"reason\":\"bad \\\"secret\\\"\\u000a\""), std::string::npos) << v[4];
  EXPECT_NE(v[6 + AuditLog::kStageMaxEvents - 1].find("\"n\":" + std::to_string(AuditLog::kStageMaxEvents - 1)),
            std::string::npos);
  EXPECT_NE(v[v.size() - 2].find("\"event\":\"last\""), std::string::npos);
  EXPECT_NE(v.back().find("\"event\":\"direct\""), std::string::npos);
  const VerifyResult r = verify(log_path);
  EXPECT_TRUE(r.ok) << r.why << ": " << r.detail;
}

// recordRequest() writes what record(event, PackedFields) with a str() per
// member writes: staged (packed straight into the stage) and not, with
// every optional member present or absent and hostile values.
TEST_F(AuditLogTest, RequestMembersAreTheSameRecordAsPackedFields) {
  std::string hostile = "a\"b\\c\n\r\x01";
  hostile += std::string(1, '\0');
  hostile += "\xff\xc3\xa9 </script>";
  const std::vector<AuditLog::RequestMembers> cases = {
      {"rid1", "127.0.0.1", "GET", "/tiny", "tok1", "acct", ""},
      {"rid2", "::1", "POST", "/up", "", "", "bad_secret"},
      {"", "", "", "", "", "", ""},
      {hostile, hostile, hostile, hostile, hostile, hostile, hostile},
      {"rid5", "10.0.0.1", "DELETE", std::string_view(hostile.data(), 3), "t", "", "r"},
  };
  AuditLog log;
  std::string error;
  ASSERT_TRUE(log.start(log_path, ring, error)) << error;
  auto viaPacked = [&log](const AuditLog::RequestMembers& m) {
    PackedFields f;
    f.str("request_id", m.request_id).str("ip", m.ip).str("method", m.method).str("path", m.path);
    if (!m.token_id.empty()) f.str("token_id", m.token_id);
    if (!m.account.empty()) f.str("account", m.account);
    if (!m.reason.empty()) f.str("reason", m.reason);
    log.record("ev", f);
  };
  for (const auto& m : cases) {
    viaPacked(m);
    log.recordRequest("ev", m);  // no stage on this thread
  }
  std::thread loop([&] {
    AuditLog::Stage stage;
    stage.attach(&log);
    for (const auto& m : cases) {
      viaPacked(m);
      log.recordRequest("ev", m);
    }
    stage.detach();
  });
  loop.join();
  log.stop();
  auto v = lines(log_path);
  ASSERT_EQ(v.size(), 1 + 4 * cases.size());
  // Equal but for seq, ts, prev and mac.
  auto members = [](const std::string& line) {
    const size_t from = line.find("\"event\":");
    const size_t to = line.find(",\"key_id\":");
    return line.substr(from, to - from);
  };
  for (size_t i = 1; i < v.size(); i += 2) {
    EXPECT_EQ(members(v[i]), members(v[i + 1])) << i;
  }
  EXPECT_NE(v[1].find("\"request_id\":\"rid1\",\"ip\":\"127.0.0.1\",\"method\":\"GET\",\"path\":\"/tiny\","
                      "\"token_id\":\"tok1\",\"account\":\"acct\",\"key_id\""),
            std::string::npos)
      << v[1];
  const VerifyResult r = verify(log_path);
  EXPECT_TRUE(r.ok) << r.why << ": " << r.detail;
}

// Stages on several threads at once, published at arbitrary points, mixed
// with unstaged producers: every event exactly once, each thread's in order,
// and after stop() a published stage counts as lost, never silently gone.
TEST_F(AuditLogTest, StagesOnManyThreadsKeepEveryEventOnce) {
  AuditLog log(8);  // small ring: stages also take the overflow path
  std::string error;
  ASSERT_TRUE(log.start(log_path, ring, error)) << error;
  constexpr int kThreads = 6, kEach = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&log, t] {
      AuditLog::Stage stage;
      if (t % 2 == 0) stage.attach(&log);  // odd threads record directly
      for (int n = 0; n < kEach; ++n) {
        log.record("e", AuditFields().num("t", t).num("n", n).take());
        if (n % (t + 3) == 0) stage.publish();
      }
    });  // ~Stage publishes what is left
  }
  for (auto& th : threads) th.join();
  log.stop();
  const uint64_t total = 1 + uint64_t(kThreads) * kEach;
  EXPECT_EQ(log.written(), total);
  EXPECT_EQ(log.depth(), 0u);
  auto v = lines(log_path);
  ASSERT_EQ(v.size(), total);
  std::map<int, int> next;
  for (size_t i = 1; i < v.size(); ++i) {
    const int t = std::atoi(v[i].c_str() + v[i].find("\"t\":") + 4);
    const int n = std::atoi(v[i].c_str() + v[i].find("\"n\":") + 4);
    EXPECT_EQ(n, next[t]) << "producer " << t;
    next[t] = n + 1;
  }
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(next[t], kEach);
  EXPECT_TRUE(verify(log_path).ok);

  AuditLog::Stage late;
  late.attach(&log);
  log.record("after.stop", std::string());
  late.detach();
  EXPECT_EQ(log.lost(), 1u);
}

TEST_F(AuditLogTest, TeeSeesEveryLine) {
  AuditLog log;
  std::vector<std::string> seen;
  log.setTee([&seen](std::string_view l) { seen.emplace_back(l); });
  std::string error;
  ASSERT_TRUE(log.start(log_path, ring, error)) << error;
  log.record("alert", AuditFields().str("kind", "auth_failures").str("ip", "203.0.113.9").take());
  log.stop();
  EXPECT_EQ(joinLines(lines(log_path)), seen.size() == 2 ? seen[0] + seen[1] : "");
}

TEST_F(AuditLogTest, KeyMaterialNeverAppearsInTheFile) {
  writeEvents(50, log_path);
  const std::string data = readFile(log_path);
  const MasterKey master = keyFromByte(1);
  uint8_t audit_key[32];
  ASSERT_TRUE(deriveAuditKey(master.data(), audit_key));
  auto hex = [](const uint8_t* p, size_t n) {
    static const char* h = "0123456789abcdef";
    std::string s;
    for (size_t i = 0; i < n; ++i) s += {h[p[i] >> 4], h[p[i] & 15]};
    return s;
  };
  uint8_t b64[48];
  const size_t b64_len = EVP_EncodeBlock(b64, master.data(), master.size());
  for (const std::string& needle :
       {std::string(reinterpret_cast<const char*>(master.data()), 8), hex(master.data(), 8),
        std::string(reinterpret_cast<const char*>(b64), b64_len).substr(0, 12),
        std::string(reinterpret_cast<const char*>(audit_key), 8), hex(audit_key, 8)}) {
    EXPECT_EQ(data.find(needle), std::string::npos);
  }
}

TEST_F(AuditLogTest, StartRefusesBadKeysAndDoubleStart) {
  AuditLog log;
  std::string error;
  EXPECT_FALSE(log.start(log_path, nullptr, error));
  ASSERT_TRUE(log.start(log_path, ring, error)) << error;
  EXPECT_FALSE(log.start(log_path, ring, error));
  log.stop();
  log.record("auth.success", "");
  EXPECT_EQ(log.lost(), 1u);
}

// One writer per file (flock): a second would fork the chain. A reopen of
// the same, unrotated file keeps writing it.
TEST_F(AuditLogTest, SecondWriterOnTheSameFileIsRefused) {
  AuditLog log;
  std::string error;
  ASSERT_TRUE(log.start(log_path, ring, error)) << error;
  AuditLog other;
  EXPECT_FALSE(other.start(log_path, ring, error));
  EXPECT_NE(error.find("is in use by another process"), std::string::npos) << error;
  log.record("auth.success", "");
  log.reopen();
  log.record("auth.success", "");
  log.stop();
  EXPECT_EQ(log.lost(), 0u);
  const VerifyResult r = verify(log_path);
  EXPECT_TRUE(r.ok) << r.why << ": " << r.detail;
  EXPECT_EQ(r.records, 3u);
  AuditLog after;
  EXPECT_TRUE(after.start(log_path, ring, error)) << error;
}

}  // namespace
}  // namespace portcullis
