#include "proxy/access_log.h"

#include <gtest/gtest.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdint>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <atomic>
#include <future>
#include <thread>
#include <vector>

#include "tests/unit/temp_dir.h"

namespace portcullis {
namespace {

std::string escaped(std::string_view s) {
  std::string out;
  appendJsonEscaped(s, out);
  return out;
}

std::string ts(int64_t us) {
  std::string out;
  appendRfc3339Micros(us, out);
  return out;
}

std::vector<std::string> readLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

using testing_support::TempDir;

// --- formatting -------------------------------------------------------------

TEST(AccessLogFormat, FullRecordFieldOrderAndTypes) {
  AccessRecord r;
  r.ts_unix_us = 1796402447123456;  // 2026-12-04T16:40:47.123456Z
  r.request_id = "7f3a";
  r.remote_ip = "203.0.113.9";
  r.method = "POST";
  r.path = "/v1/upload";
  r.status = 403;
  r.bytes_in = 1234;
  r.bytes_out = 56;
  r.duration_us = 789;
  r.upstream = "10.0.0.2:8080";
  r.upstream_status = 201;
  r.token_id = "tok_1";
  r.account = "acme";
  r.tls_version = "TLSv1.3";
  r.rejected_by = "token_check";
  r.reason = "expired";
  std::string out;
  formatAccessRecord(r, out);
  EXPECT_EQ(out,
            "{\"ts\":\"2026-12-04T16:40:47.123456Z\",\"request_id\":\"7f3a\","
            "\"remote_ip\":\"203.0.113.9\",\"method\":\"POST\",\"path\":\"/v1/upload\","
            "\"status\":403,\"bytes_in\":1234,\"bytes_out\":56,\"duration_us\":789,"
            "\"upstream\":\"10.0.0.2:8080\",\"upstream_status\":201,\"token_id\":\"tok_1\","
            "\"account\":\"acme\",\"tls_version\":\"TLSv1.3\",\"rejected_by\":\"token_check\","
            "\"reason\":\"expired\"}\n");
}

TEST(AccessLogFormat, NullAndOmittedFields) {
  AccessRecord r;
  r.ts_unix_us = 0;
  r.method = "GET";
  r.path = "/";
  r.status = 200;
  std::string out = "previous\n";
  formatAccessRecord(r, out);
  EXPECT_EQ(out,
            "previous\n"
            "{\"ts\":\"1970-01-01T00:00:00.000000Z\",\"request_id\":\"\",\"remote_ip\":\"\","
            "\"method\":\"GET\",\"path\":\"/\",\"status\":200,\"bytes_in\":0,\"bytes_out\":0,"
            "\"duration_us\":0,\"upstream\":null,\"upstream_status\":null}\n");
}

TEST(AccessLogFormat, PeerIpOnlyWhenItDiffersFromRemoteIp) {
  AccessRecord r;
  r.remote_ip = "203.0.113.9";
  r.peer_ip = "127.0.0.1";
  r.token_id = "tok_1";
  std::string out;
  formatAccessRecord(r, out);
  EXPECT_NE(out.find("\"upstream_status\":null,\"peer_ip\":\"127.0.0.1\",\"token_id\":\"tok_1\"}"),
            std::string::npos)
      << "first of the optional fields: " << out;
  out.clear();
  r.peer_ip = r.remote_ip;
  formatAccessRecord(r, out);
  EXPECT_EQ(out.find("peer_ip"), std::string::npos) << out;
  out.clear();
  r.peer_ip = {};
  formatAccessRecord(r, out);
  EXPECT_EQ(out.find("peer_ip"), std::string::npos) << out;
}

TEST(AccessLogFormat, PathLosesQueryString) {
  AccessRecord r;
  r.path = "/search?q=secret&token=abc";
  std::string out;
  formatAccessRecord(r, out);
  EXPECT_NE(out.find("\"path\":\"/search\","), std::string::npos) << out;
  EXPECT_EQ(out.find("secret"), std::string::npos);
}

TEST(AccessLogFormat, Timestamps) {
  EXPECT_EQ(ts(0), "1970-01-01T00:00:00.000000Z");
  EXPECT_EQ(ts(1), "1970-01-01T00:00:00.000001Z");
  EXPECT_EQ(ts(1796402447123456), "2026-12-04T16:40:47.123456Z");
  EXPECT_EQ(ts(951782400000000), "2000-02-29T00:00:00.000000Z");  // leap day
  EXPECT_EQ(ts(253402300799999999), "9999-12-31T23:59:59.999999Z");
  EXPECT_EQ(ts(-1), "1969-12-31T23:59:59.999999Z");
  EXPECT_EQ(ts(1709251199999999), "2024-02-29T23:59:59.999999Z");
}

// The date part is cached per second per thread: calls that go forward,
// back and across seconds, days and years all match the full formatting.
TEST(AccessLogFormat, TimestampsAcrossTheSecondCache) {
  EXPECT_EQ(ts(1796402447123456), "2026-12-04T16:40:47.123456Z");
  EXPECT_EQ(ts(1796402447999999), "2026-12-04T16:40:47.999999Z");
  EXPECT_EQ(ts(1796402448000000), "2026-12-04T16:40:48.000000Z");
  EXPECT_EQ(ts(1796402447000001), "2026-12-04T16:40:47.000001Z");
  EXPECT_EQ(ts(1798761599999999), "2026-12-31T23:59:59.999999Z");
  EXPECT_EQ(ts(1798761600000000), "2027-01-01T00:00:00.000000Z");
  EXPECT_EQ(ts(-1), "1969-12-31T23:59:59.999999Z");
  EXPECT_EQ(ts(0), "1970-01-01T00:00:00.000000Z");
  EXPECT_EQ(ts(253402300800000000), "10000-01-01T00:00:00.000000Z");  // past year 9999: not cached
  EXPECT_EQ(ts(253402300799000001), "9999-12-31T23:59:59.000001Z");
  std::string two;
  appendRfc3339Micros(1796402447000010, two);
  appendRfc3339Micros(1796402447000020, two);
  EXPECT_EQ(two, "2026-12-04T16:40:47.000010Z2026-12-04T16:40:47.000020Z");
}

// Escaping skips plain bytes 8 at a time: every special byte and every
// multi-byte sequence at every offset of a longer string (so at every
// position within and across the 8-byte words) gives the same result as on
// its own.
TEST(AccessLogFormat, EscapingIsTheSameAtEveryOffset) {
  const std::string plain = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN";  // 40 bytes
  struct Case {
    std::string in, out;
  };
  std::vector<Case> cases = {{"\"", "\\\""}, {"\\", "\\\\"}, {"\n", "\\u000a"}, {std::string(1, '\0'), "\\u0000"},
                             {"\x1f", "\\u001f"}, {"\x7f", "\\u007f"}, {"\x80", "\\ufffd"}, {"\xff", "\\ufffd"},
                             {"\xc3\xa9", "\xc3\xa9"}, {"\xe2\x82\xac", "\xe2\x82\xac"},
                             {"\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80"}, {"\xe2\x82", "\\ufffd\\ufffd"}, {" ", " "},
                             {"~", "~"}};
  // Every length of plain text around it (short strings take a one-word
  // test, longer ones whole words and an overlapping last word).
  for (const Case& c : cases) {
    for (size_t len = 0; len <= plain.size(); ++len) {
      for (size_t at = 0; at <= len; ++at) {
        const std::string in = plain.substr(0, at) + c.in + plain.substr(at, len - at);
        const std::string want = plain.substr(0, at) + c.out + plain.substr(at, len - at);
        EXPECT_EQ(escaped(in), want) << "offset " << at << " of " << len << " plain bytes, " << escaped(c.in);
      }
    }
  }
  for (size_t len = 0; len <= plain.size(); ++len) EXPECT_EQ(escaped(plain.substr(0, len)), plain.substr(0, len));
}

// The inline "nothing to escape" test (16 bytes at a time) against the
// definition, for every byte value at every position of every length 1-48.
TEST(AccessLogFormat, PlainTestMatchesTheDefinitionForEveryByte) {
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    const bool plain = b >= 0x20 && b < 0x7F && c != '"' && c != '\\';
    for (size_t len = 1; len <= 48; ++len) {
      for (size_t at = 0; at < len; ++at) {
        std::string s(len, 'x');
        s[at] = c;
        ASSERT_EQ(jsonPlain(s), plain) << "byte " << b << " at " << at << " of " << len;
      }
    }
  }
  EXPECT_TRUE(jsonPlain(""));
}

TEST(AccessLogFormat, EscapesQuotesBackslashesAndControls) {
  EXPECT_EQ(escaped("plain /a-b_c.d~"), "plain /a-b_c.d~");
  EXPECT_EQ(escaped("a\"b\\c"), "a\\\"b\\\\c");
  EXPECT_EQ(escaped("\n\r\t\b\f"), "\\u000a\\u000d\\u0009\\u0008\\u000c");
  EXPECT_EQ(escaped(std::string_view("\0\x01\x1f\x7f", 4)), "\\u0000\\u0001\\u001f\\u007f");
  EXPECT_EQ(escaped("/x\"}\n{\"status\":200"), "/x\\\"}\\u000a{\\\"status\\\":200");
}

TEST(AccessLogFormat, KeepsValidUtf8) {
  EXPECT_EQ(escaped("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
            "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  EXPECT_EQ(escaped("\xef\xbf\xbf\xf4\x8f\xbf\xbf"), "\xef\xbf\xbf\xf4\x8f\xbf\xbf");  // U+FFFF, U+10FFFF
}

TEST(AccessLogFormat, ReplacesInvalidUtf8BytesOneForOne) {
  EXPECT_EQ(escaped("a\x80z"), "a\\ufffdz");                 // lone continuation byte
  EXPECT_EQ(escaped("\xc0\xaf"), "\\ufffd\\ufffd");          // overlong '/'
  EXPECT_EQ(escaped("\xc1\xbf"), "\\ufffd\\ufffd");          // overlong
  EXPECT_EQ(escaped("\xe0\x80\xaf"), "\\ufffd\\ufffd\\ufffd");  // overlong 3-byte
  EXPECT_EQ(escaped("\xed\xa0\x80"), "\\ufffd\\ufffd\\ufffd");  // surrogate U+D800
  EXPECT_EQ(escaped("\xf4\x90\x80\x80"), "\\ufffd\\ufffd\\ufffd\\ufffd");  // > U+10FFFF
  EXPECT_EQ(escaped("\xf5\xff\xfe"), "\\ufffd\\ufffd\\ufffd");
  EXPECT_EQ(escaped("x\xe2\x82"), "x\\ufffd\\ufffd");        // truncated at the end
  EXPECT_EQ(escaped("\xe2\x82\"q"), "\\ufffd\\ufffd\\\"q");   // truncated before a quote
  EXPECT_EQ(escaped("\xc3\xa9\xc3"), "\xc3\xa9\\ufffd");
}

TEST(AccessLogFormat, HostileFieldsStayOneLine) {
  std::string hostile;
  for (int c = 0; c < 256; ++c) hostile += static_cast<char>(c);
  AccessRecord r;
  r.path = hostile;
  r.method = hostile;
  r.request_id = hostile;
  r.reason = hostile;
  std::string out;
  formatAccessRecord(r, out);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out.back(), '\n');
  for (size_t i = 0; i + 1 < out.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(out[i]);
    ASSERT_TRUE(c >= 0x20 && c < 0x7F) << "raw byte " << int(c) << " at " << i;
  }
}

// The line is written through a cursor into room reserved up front: the
// largest line there is (every field present, every byte of every string
// escaped to six, the widest numbers, a timestamp outside the cached years)
// must come out whole, after text already in the buffer and byte for byte
// what the pieces make.
TEST(AccessLogFormat, WorstCaseLineComesOutWhole) {
  const std::string controls(300, '\x01');  // each byte -> \u0001
  const std::string six = escaped(controls);
  const std::string peer(299, '\x01');  // differs from remote_ip, so written
  ASSERT_EQ(six.size(), controls.size() * 6);
  AccessRecord r;
  r.ts_unix_us = INT64_MIN;
  r.request_id = controls;
  r.remote_ip = controls;
  r.peer_ip = peer;
  r.method = controls;
  r.path = controls;
  r.status = INT32_MIN;
  r.bytes_in = UINT64_MAX;
  r.bytes_out = UINT64_MAX;
  r.duration_us = UINT64_MAX;
  r.upstream = controls;
  r.upstream_status = INT32_MIN;
  r.token_id = controls;
  r.account = controls;
  r.tls_version = controls;
  r.rejected_by = controls;
  r.reason = controls;
  std::string out = "already here\n";
  formatAccessRecord(r, out);
  const std::string max = std::to_string(UINT64_MAX);
  const std::string min = std::to_string(INT32_MIN);
  const std::string expected =
      "already here\n{\"ts\":\"" + ts(INT64_MIN) + "\",\"request_id\":\"" + six + "\",\"remote_ip\":\"" + six +
      "\",\"method\":\"" + six + "\",\"path\":\"" + six + "\",\"status\":" + min + ",\"bytes_in\":" + max +
      ",\"bytes_out\":" + max + ",\"duration_us\":" + max + ",\"upstream\":\"" + six +
      "\",\"upstream_status\":" + min + ",\"peer_ip\":\"" + escaped(r.peer_ip) + "\",\"token_id\":\"" + six +
      "\",\"account\":\"" + six + "\",\"tls_version\":\"" + six + "\",\"rejected_by\":\"" + six +
      "\",\"reason\":\"" + six + "\"}\n";
  EXPECT_EQ(out, expected);
  std::string packed;
  packAccessRecord(r, packed);
  std::string from_packed = "already here\n";
  formatPackedAccessRecord(packed, from_packed);
  EXPECT_EQ(from_packed, expected);
}

// --- LogWriter ----------------------------------------------------------------

TEST(LogWriter, ManyThreadsEveryLineExactlyOnce) {
  TempDir dir;
  const std::string path = dir.path + "/access.log";
  LogWriter w(1024);  // small, so producers also run into a full queue
  std::string error;
  ASSERT_TRUE(w.start(path, error)) << error;

  constexpr int kThreads = 8;
  constexpr int kPerThread = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&w, t] {
      for (int i = 0; i < kPerThread; ++i) {
        std::string line = "t" + std::to_string(t) + " i" + std::to_string(i) +
                           std::string(i % 97, 'x') + "\n";
        // On false the line is left intact, so it can be offered again.
        while (!w.submit(std::move(line))) std::this_thread::yield();
      }
    });
  }
  for (auto& th : threads) th.join();
  w.flush();
  EXPECT_EQ(w.written(), uint64_t{kThreads} * kPerThread);
  EXPECT_EQ(w.depth(), 0u);

  std::vector<std::string> lines = readLines(path);
  ASSERT_EQ(lines.size(), size_t{kThreads} * kPerThread);
  std::set<std::string> seen;
  std::vector<int> next(kThreads, 0);  // each producer's lines stay in its order
  for (const auto& l : lines) {
    ASSERT_TRUE(seen.insert(l).second) << "duplicate: " << l;
    int t = 0, i = 0;
    ASSERT_EQ(sscanf(l.c_str(), "t%d i%d", &t, &i), 2) << l;
    ASSERT_EQ(l, "t" + std::to_string(t) + " i" + std::to_string(i) + std::string(i % 97, 'x'));
    ASSERT_EQ(i, next[t]) << l;
    ++next[t];
  }
}

TEST(LogWriter, FullQueueCountsDropsAndKeepsTheLine) {
  TempDir dir;
  LogWriter w(3);  // rounded up to 4
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(w.submit("line" + std::to_string(i) + "\n"));
  EXPECT_EQ(w.depth(), 4u);
  std::string extra = "extra\n";
  EXPECT_FALSE(w.submit(std::move(extra)));
  EXPECT_EQ(extra, "extra\n");
  EXPECT_FALSE(w.submit("another\n"));
  EXPECT_EQ(w.dropped(), 2u);

  // Lines queued before start() are written once it starts.
  std::string error;
  ASSERT_TRUE(w.start(dir.path + "/a.log", error)) << error;
  w.flush();
  EXPECT_EQ(w.written(), 4u);
  EXPECT_EQ(w.depth(), 0u);
  EXPECT_EQ(readLines(dir.path + "/a.log"),
            (std::vector<std::string>{"line0", "line1", "line2", "line3"}));
  EXPECT_TRUE(w.submit("after\n"));
  w.flush();
  EXPECT_EQ(readLines(dir.path + "/a.log").size(), 5u);
}

TEST(LogWriter, ReopenAfterRenameWritesToANewFile) {
  TempDir dir;
  const std::string path = dir.path + "/access.log";
  LogWriter w;
  std::string error;
  ASSERT_TRUE(w.start(path, error)) << error;
  w.submit("before\n");
  w.flush();
  ASSERT_EQ(rename(path.c_str(), (path + ".1").c_str()), 0);
  w.submit("still old\n");  // no reopen yet: follows the renamed file
  w.flush();
  w.reopen();
  w.submit("after\n");
  w.flush();
  EXPECT_EQ(readLines(path + ".1"), (std::vector<std::string>{"before", "still old"}));
  EXPECT_EQ(readLines(path), (std::vector<std::string>{"after"}));
}

// Under load the file holds large batches back for a direct write
// (log_file.h); flush() still returns only once they are in the file.
TEST(LogWriter, FlushWritesWhatTheFileHoldsBack) {
  TempDir dir;
  const std::string path = dir.path + "/access.log";
  LogWriter w;
  std::string error;
  ASSERT_TRUE(w.start(path, error)) << error;
  constexpr int kLines = 3000;  // ~300 KB: under one direct write, so held
  for (int i = 0; i < kLines; ++i) ASSERT_TRUE(w.submit(std::to_string(i) + std::string(96, '.') + "\n"));
  w.flush();
  std::vector<std::string> lines = readLines(path);
  ASSERT_EQ(lines.size(), size_t{kLines});
  for (int i = 0; i < kLines; ++i) ASSERT_EQ(lines[i], std::to_string(i) + std::string(96, '.'));
}

// A flush() while lines keep coming (the writer seldom finds its queue
// empty and the file keeps a partial block held back) returns, with every
// line accepted before it in the file.
TEST(LogWriter, FlushReturnsUnderContinuousLoad) {
  TempDir dir;
  const std::string path = dir.path + "/access.log";
  LogWriter w(1 << 16);
  std::string error;
  ASSERT_TRUE(w.start(path, error)) << error;
  std::atomic<bool> stop{false};
  std::atomic<int> submitted{0};
  std::thread producer([&] {
    const std::string pad(200, '.');
    for (int i = 0; !stop.load(std::memory_order_relaxed); ++i) {
      if (w.submit(std::to_string(i) + pad + "\n")) submitted.fetch_add(1, std::memory_order_relaxed);
    }
  });
  while (submitted.load() < 200000) std::this_thread::yield();
  const int before = submitted.load();
  auto flushed = std::async(std::launch::async, [&w] { w.flush(); });
  const bool returned = flushed.wait_for(std::chrono::seconds(20)) == std::future_status::ready;
  stop = true;
  producer.join();
  flushed.wait();
  ASSERT_TRUE(returned) << "flush() did not return while lines kept coming";
  EXPECT_GE(readLines(path).size(), static_cast<size_t>(before));
}

TEST(LogWriter, StopDrainsEverything) {
  TempDir dir;
  const std::string path = dir.path + "/access.log";
  constexpr int kLines = 50000;
  {
    LogWriter w;
    std::string error;
    ASSERT_TRUE(w.start(path, error)) << error;
    for (int i = 0; i < kLines; ++i) ASSERT_TRUE(w.submit(std::to_string(i) + "\n"));
    w.stop();
    EXPECT_EQ(w.written(), uint64_t{kLines});
    EXPECT_FALSE(w.submit("late\n"));
    w.stop();  // idempotent
  }
  std::vector<std::string> lines = readLines(path);
  ASSERT_EQ(lines.size(), size_t{kLines});
  for (int i = 0; i < kLines; ++i) ASSERT_EQ(lines[i], std::to_string(i));
}

// The event loop packs, the writer formats: a packed record formats to
// exactly what formatAccessRecord writes, for full, empty and hostile
// records (a long path, every byte value, empty optional fields).
TEST(AccessLogFormat, PackedRecordFormatsLikeTheRecord) {
  std::string every_byte;
  for (int c = 0; c < 256; ++c) every_byte.push_back(static_cast<char>(c));
  const std::string long_path = "/" + std::string(10000, 'p') + "?q=secret";
  std::vector<AccessRecord> records(4);
  records[0].ts_unix_us = 1796402447123456;
  records[0].request_id = "7f3a";
  records[0].remote_ip = "203.0.113.9";
  records[0].peer_ip = "127.0.0.1";
  records[0].method = "POST";
  records[0].path = "/v1/upload";
  records[0].status = 403;
  records[0].bytes_in = 1234;
  records[0].bytes_out = 56;
  records[0].duration_us = 789;
  records[0].upstream = "10.0.0.2:8080";
  records[0].upstream_status = 201;
  records[0].token_id = "tok_1";
  records[0].account = "acme";
  records[0].tls_version = "TLSv1.3";
  records[0].rejected_by = "token_check";
  records[0].reason = "expired";
  records[2].path = long_path;
  records[2].ts_unix_us = -5;
  records[2].status = -1;
  records[2].bytes_out = UINT64_MAX;
  records[3].method = every_byte;
  records[3].reason = every_byte;
  records[3].account = "\xe2\x82\xac\"}\n";
  for (size_t i = 0; i < records.size(); ++i) {
    std::string direct;
    formatAccessRecord(records[i], direct);
    std::string packed;
    packAccessRecord(records[i], packed);
    std::string formatted = "before\n";
    formatPackedAccessRecord(packed, formatted);
    EXPECT_EQ(formatted, "before\n" + direct) << i;
  }
  // Not a packing (cut short): nothing is written, nothing is read past it.
  std::string packed;
  packAccessRecord(records[0], packed);
  for (size_t cut : {size_t{0}, size_t{7}, packed.size() - 1}) {
    std::string out;
    formatPackedAccessRecord(std::string_view(packed).substr(0, cut), out);
    EXPECT_TRUE(out.empty()) << cut;
  }
}

// Deferred and plain lines from many threads: each written once, formatted,
// in submission order per thread.
TEST(LogWriter, DeferredItemsAreFormattedByTheWriter) {
  TempDir dir;
  const std::string path = dir.path + "/access.log";
  constexpr int kThreads = 4, kEach = 20000;
  const LogWriter::Formatter upper = [](std::string_view item, std::string& out) {
    out += "fmt:";
    out += item;
    out += '\n';
  };
  {
    LogWriter w(1 << 17);
    std::string error;
    ASSERT_TRUE(w.start(path, error)) << error;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&w, t, upper] {
        for (int i = 0; i < kEach; ++i) {
          const std::string text = std::to_string(t) + " " + std::to_string(i);
          if (i % 3 == 0) {
            EXPECT_TRUE(w.submit(text + "\n"));
          } else {
            EXPECT_TRUE(w.submit(std::string(text), upper));
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    w.stop();
    EXPECT_EQ(w.written(), uint64_t{kThreads} * kEach);
    EXPECT_EQ(w.dropped(), 0u);
  }
  std::vector<std::string> lines = readLines(path);
  ASSERT_EQ(lines.size(), size_t{kThreads} * kEach);
  std::vector<int> next(kThreads, 0);
  for (const std::string& l : lines) {
    const bool deferred = l.rfind("fmt:", 0) == 0;
    const std::string body = deferred ? l.substr(4) : l;
    const int t = std::atoi(body.c_str());
    const int i = std::atoi(body.c_str() + body.find(' ') + 1);
    ASSERT_GE(t, 0);
    ASSERT_LT(t, kThreads);
    EXPECT_EQ(i, next[t]) << l;
    EXPECT_EQ(deferred, i % 3 != 0) << l;
    next[t] = i + 1;
  }
}

// A Stage: items reach the writer only when published, in stage order, each
// formatted by the stage's formatter; counters count lines, not entries; a
// stage publishes itself at kStageMaxItems; destroying it publishes the rest.
TEST(LogWriter, StagedItemsArePublishedAsOneEntryAndCountedPerLine) {
  TempDir dir;
  const std::string path = dir.path + "/access.log";
  LogWriter w;
  std::string error;
  ASSERT_TRUE(w.start(path, error)) << error;
  const LogWriter::Formatter upper = [](std::string_view item, std::string& out) {
    for (char c : item) out += static_cast<char>(c >= 'a' && c <= 'z' ? c - 32 : c);
    out += '\n';
  };
  {
    LogWriter::Stage stage(&w, upper);
    EXPECT_TRUE(stage.empty());
    for (int i = 0; i < 3; ++i) {
      stage.begin() += "item" + std::to_string(i);
      stage.end();
    }
    stage.begin();  // an empty item is a line too
    stage.end();
    EXPECT_FALSE(stage.empty());
    w.flush();
    EXPECT_EQ(w.written(), 0u);  // nothing published yet
    EXPECT_TRUE(readLines(path).empty());
    stage.publishAndKick(1);  // as an event loop does: publishes, wakes the writer
    EXPECT_TRUE(stage.empty());
    w.flush();
    EXPECT_EQ(w.written(), 4u);
    EXPECT_EQ(readLines(path), (std::vector<std::string>{"ITEM0", "ITEM1", "ITEM2", ""}));

    // Filling a stage publishes it on its own: kStageMaxItems lines at once.
    for (uint32_t i = 0; i < LogWriter::kStageMaxItems + 5; ++i) {
      stage.begin() += "x";
      stage.end();
    }
    w.flush();
    EXPECT_EQ(w.written(), 4u + LogWriter::kStageMaxItems);
    stage.publish();  // an empty stage adds nothing
  }  // the destructor publishes the last 5
  w.flush();
  EXPECT_EQ(w.written(), 4u + LogWriter::kStageMaxItems + 5);
  EXPECT_EQ(w.depth(), 0u);
  EXPECT_EQ(w.dropped(), 0u);
  EXPECT_EQ(readLines(path).size(), 4u + LogWriter::kStageMaxItems + 5);
}

// The queue bound is in lines: a stage that would take the queue past its
// capacity is dropped whole (counted per line), and depth() counts lines.
TEST(LogWriter, StagedEntryOverTheLineBoundIsDroppedWhole) {
  TempDir dir;
  LogWriter w(8);
  LogWriter::Stage stage(&w, nullptr);  // no formatter: items are the text
  for (int i = 0; i < 6; ++i) {
    stage.begin() += "a" + std::to_string(i) + "\n";
    stage.end();
  }
  stage.publish();
  EXPECT_EQ(w.depth(), 6u);
  for (int i = 0; i < 3; ++i) {
    stage.begin() += "b\n";
    stage.end();
  }
  stage.publish();  // 6 + 3 > 8
  EXPECT_EQ(w.dropped(), 3u);
  EXPECT_EQ(w.depth(), 6u);
  std::string error;
  ASSERT_TRUE(w.start(dir.path + "/a.log", error)) << error;
  w.flush();
  EXPECT_EQ(w.written(), 6u);
  EXPECT_EQ(w.depth(), 0u);
  EXPECT_EQ(readLines(dir.path + "/a.log"), (std::vector<std::string>{"a0", "a1", "a2", "a3", "a4", "a5"}));
}

TEST(LogWriter, DestructorDrains) {
  TempDir dir;
  const std::string path = dir.path + "/access.log";
  {
    LogWriter w;
    std::string error;
    ASSERT_TRUE(w.start(path, error)) << error;
    w.submit("one\n");
    w.submit("two\n");
  }
  EXPECT_EQ(readLines(path), (std::vector<std::string>{"one", "two"}));
}

TEST(LogWriter, CreatesParentDirectoriesAndFileMode) {
  TempDir dir;
  const std::string path = dir.path + "/a/b/c/access.log";
  mode_t old = umask(022);
  LogWriter w;
  std::string error;
  ASSERT_TRUE(w.start(path, error)) << error;
  umask(old);
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  w.submit("x\n");
  w.flush();
  EXPECT_EQ(readLines(path), (std::vector<std::string>{"x"}));
}

TEST(LogWriter, StartFailsOnUnopenablePath) {
  TempDir dir;
  const std::string file = dir.path + "/plainfile";
  { std::ofstream(file) << "x"; }
  LogWriter w;
  std::string error;
  EXPECT_FALSE(w.start(file + "/sub/access.log", error));
  EXPECT_NE(error.find("plainfile"), std::string::npos) << error;
}

TEST(LogWriter, WriteErrorsCountAsDropped) {
  if (access("/dev/full", W_OK) != 0) GTEST_SKIP() << "no /dev/full";
  LogWriter w;
  std::string error;
  ASSERT_TRUE(w.start("/dev/full", error)) << error;
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(w.submit("lost\n"));
  w.flush();
  EXPECT_EQ(w.written(), 0u);
  EXPECT_EQ(w.dropped(), 10u);
}

TEST(LogWriter, EmptyPathDiscards) {
  LogWriter w(4);
  std::string error;
  ASSERT_TRUE(w.start("", error)) << error;
  EXPECT_FALSE(w.enabled());
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(w.submit("ignored\n"));
  w.flush();
  w.reopen();
  EXPECT_EQ(w.written(), 0u);
  EXPECT_EQ(w.dropped(), 0u);
  EXPECT_EQ(w.depth(), 0u);
  EXPECT_FALSE(w.start("/tmp/x.log", error));  // only once
}

TEST(LogWriter, IdleWriterWakesForALateLine) {
  TempDir dir;
  const std::string path = dir.path + "/access.log";
  LogWriter w;
  std::string error;
  ASSERT_TRUE(w.start(path, error)) << error;
  for (int round = 0; round < 20; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(round % 3));
    w.submit("r" + std::to_string(round) + "\n");
    w.flush();
    ASSERT_EQ(readLines(path).size(), size_t(round + 1));
  }
}

}  // namespace
}  // namespace portcullis
