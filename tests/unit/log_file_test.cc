// LogFile (proxy/log_file.h): the file behind a log writer. Whatever mix of
// plain writes, held bytes and O_DIRECT writes it uses, the file must end up
// holding exactly the appended bytes in order; held bytes reach the file on
// drain, staleness and sync; a truncation or a second appender is noticed.
// On real files in $TMPDIR; where the file system refuses O_DIRECT
// the direct-write expectations are skipped, the content ones still hold.
#include "proxy/log_file.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>

#include "tests/unit/temp_dir.h"

namespace portcullis {
namespace {

using testing_support::TempDir;

std::string slurp(const std::string& path) { return testing_support::readWholeFile(path); }

// Appends `s` in batches of `batch` bytes (each a "large batch").
void appendInBatches(LogFile& f, const std::string& s, size_t batch) {
  for (size_t at = 0; at < s.size(); at += batch) {
    const size_t n = std::min(s.size() - at, batch);
    ASSERT_EQ(f.append(s.data() + at, n, 0), static_cast<ssize_t>(n));
  }
}

off_t fileSize(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? st.st_size : -1;
}

int openAppend(const std::string& path) {
  return ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
}

// Lines of varying length, numbered, so a misplaced or repeated byte shows.
std::string makeLines(size_t bytes, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out;
  for (size_t i = 0; out.size() < bytes; ++i) {
    out += "{\"line\":" + std::to_string(i) + ",\"pad\":\"" + std::string(20 + rng() % 400, 'a' + static_cast<char>(i % 26)) + "\"}\n";
  }
  return out;
}

LogFile::Tuning smallTuning() {
  LogFile::Tuning t;
  t.direct_bytes = 64 * 1024;
  t.small_batch = 4096;
  t.max_hold_us = 50 * 1000;
  return t;
}

struct LogFileTest : ::testing::Test {
  void SetUp() override { path = dir.path + "/log"; }
  TempDir dir;
  std::string path;
};

// A light load (small batches, nothing held) is a plain appender: every
// batch is in the file as soon as append() returns.
TEST_F(LogFileTest, SmallBatchesAreWrittenAtOnce) {
  LogFile f(smallTuning());
  f.adopt(openAppend(path), path);
  std::string all;
  for (int i = 0; i < 50; ++i) {
    const std::string line = "{\"i\":" + std::to_string(i) + "}\n";
    ASSERT_EQ(f.append(line.data(), line.size(), 1000 * i), static_cast<ssize_t>(line.size()));
    all += line;
    EXPECT_EQ(f.held(), 0u);
    EXPECT_EQ(slurp(path), all);
  }
  EXPECT_EQ(f.directWrites(), 0u);
}

// Large batches, starting at an unaligned end (an existing file): the file
// ends up byte for byte what was appended, through direct writes where the
// file system has them.
TEST_F(LogFileTest, LargeBatchesEndUpExactlyInTheFile) {
  const std::string before = "an earlier line of 37 bytes, kept..\n";
  {
    std::ofstream(path, std::ios::binary) << before;
  }
  const std::string stream = makeLines(3 << 20, 1);
  LogFile f(smallTuning());
  f.adopt(openAppend(path), path);
  std::mt19937 rng(7);
  int64_t now = 0;
  for (size_t at = 0; at < stream.size();) {
    const size_t n = std::min(stream.size() - at, size_t(4096 + rng() % (40 * 1024)));
    ASSERT_EQ(f.append(stream.data() + at, n, now), static_cast<ssize_t>(n));
    at += n;
    now += 1000;
    // Never more than one run of direct_bytes plus a batch held back.
    EXPECT_LT(f.held(), size_t(2 * 64 * 1024));
  }
  ASSERT_TRUE(f.sync());
  EXPECT_EQ(f.held(), 0u);
  EXPECT_EQ(slurp(path), before + stream);
  if (!f.directEnabled()) GTEST_SKIP() << dir.path << ": no O_DIRECT on this file system (content checked)";
  EXPECT_GT(f.directWrites(), 20u);
}

// Held bytes are not in the file yet; drainIfStale writes them once they
// are max_hold_us old, not before; drain() at once.
TEST_F(LogFileTest, HeldBytesReachTheFileWhenStaleOrDrained) {
  LogFile f(smallTuning());
  f.adopt(openAppend(path), path);
  const std::string a = makeLines(10000, 2);
  ASSERT_EQ(f.append(a.data(), a.size(), 1000000), static_cast<ssize_t>(a.size()));
  if (!f.directEnabled()) GTEST_SKIP() << dir.path << ": no O_DIRECT here, so nothing is held";
  EXPECT_EQ(f.held(), a.size());
  EXPECT_EQ(fileSize(path), 0);
  ASSERT_TRUE(f.drainIfStale(1000000 + 49999));
  EXPECT_EQ(fileSize(path), 0);
  ASSERT_TRUE(f.drainIfStale(1000000 + 50000));
  EXPECT_EQ(f.held(), 0u);
  EXPECT_EQ(slurp(path), a);
  // A later small batch joins held bytes rather than overtaking them.
  const std::string b = makeLines(10000, 3);
  const std::string c = "{\"small\":1}\n";
  ASSERT_EQ(f.append(b.data(), b.size(), 2000000), static_cast<ssize_t>(b.size()));
  ASSERT_EQ(f.append(c.data(), c.size(), 2000001), static_cast<ssize_t>(c.size()));
  EXPECT_EQ(f.held(), b.size() + c.size());
  ASSERT_TRUE(f.drain());
  EXPECT_EQ(slurp(path), a + b + c);
}

// The bytes left held after a direct write (under a block) may be older
// than the batch that triggered it: they keep their age, so held lines
// reach the file within max_hold_us of their append, not twice that.
TEST_F(LogFileTest, BytesLeftAfterADirectWriteKeepTheirAge) {
  LogFile::Tuning t;  // direct_bytes 512 KiB, max_hold_us 50 ms
  LogFile f(t);
  const std::string start(3000, 's');  // the file ends 3000 bytes into a block
  {
    const int fd = openAppend(path);
    ASSERT_EQ(::write(fd, start.data(), start.size()), static_cast<ssize_t>(start.size()));
    ::close(fd);
  }
  f.adopt(openAppend(path), path);
  const std::string old = makeLines(t.direct_bytes - 100, 23).substr(0, t.direct_bytes - 100);
  ASSERT_EQ(f.append(old.data(), old.size(), 0), static_cast<ssize_t>(old.size()));
  if (!f.directEnabled()) GTEST_SKIP() << dir.path << ": no O_DIRECT on this file system";
  ASSERT_EQ(f.held(), old.size());
  const std::string young(200, 'y');
  ASSERT_EQ(f.append(young.data(), young.size(), 49000), static_cast<ssize_t>(young.size()));
  ASSERT_EQ(f.directWrites(), 1u);
  // Left: the end of `old` (appended at t = 0) and `young`, under a block.
  ASSERT_GT(f.held(), young.size());
  ASSERT_LT(f.held(), LogFile::kAlign);
  ASSERT_TRUE(f.drainIfStale(50000));
  EXPECT_EQ(f.held(), 0u) << "bytes appended at t = 0 still held at t = 50 ms";
  EXPECT_EQ(slurp(path), start + old + young);
}

// sync() writes a large held run direct (whole blocks), a small one, and
// the rest under a block, through the page cache; the file is complete.
TEST_F(LogFileTest, SyncWritesALargeHeldRunDirect) {
  LogFile f(smallTuning());  // direct_bytes 64 KiB: sync goes direct from 16 KiB held
  f.adopt(openAppend(path), path);
  const std::string small = makeLines(10 * 1024, 11);
  ASSERT_EQ(f.append(small.data(), small.size(), 0), static_cast<ssize_t>(small.size()));
  if (!f.directEnabled()) GTEST_SKIP() << dir.path << ": no O_DIRECT on this file system";
  ASSERT_EQ(f.held(), small.size());
  ASSERT_TRUE(f.sync());
  EXPECT_EQ(f.directWrites(), 0u);
  const std::string large = makeLines(40 * 1024, 12);
  ASSERT_EQ(f.append(large.data(), large.size(), 0), static_cast<ssize_t>(large.size()));
  ASSERT_EQ(f.held(), large.size());
  ASSERT_TRUE(f.sync());
  EXPECT_EQ(f.directWrites(), 1u);
  EXPECT_EQ(f.held(), 0u);
  EXPECT_EQ(slurp(path), small + large);
}

// logrotate's copytruncate while direct writes run: what is appended after
// the truncation starts the file again, and direct writes continue.
TEST_F(LogFileTest, TruncatedFileContinuesFromItsNewEnd) {
  LogFile f(smallTuning());
  f.adopt(openAppend(path), path);
  const std::string first = makeLines(300 * 1024, 4);
  appendInBatches(f, first, 20000);
  if (!f.directEnabled()) GTEST_SKIP() << dir.path << ": no O_DIRECT on this file system";
  ASSERT_GT(f.directWrites(), 0u);
  const size_t held_at_truncation = f.held();
  ASSERT_EQ(::truncate(path.c_str(), 0), 0);
  const std::string second = makeLines(300 * 1024, 5);
  appendInBatches(f, second, 20000);
  ASSERT_TRUE(f.sync());
  // What was held at the truncation (the end of `first`) and all of `second`.
  EXPECT_EQ(slurp(path), first.substr(first.size() - held_at_truncation) + second);
  EXPECT_TRUE(f.directEnabled());
}

// copytruncate racing the writer: truncations land at any moment, also
// between the size check and the direct write. Every direct write goes to
// the file's real end (O_APPEND), so the file never starts with a hole of
// NUL bytes where an old end was (a write at the remembered offset after a
// truncation would leave one). The truncating thread looks at the start of
// the file before each truncation.
TEST_F(LogFileTest, TruncationsAtAnyMomentNeverLeaveAHole) {
  LogFile f(smallTuning());
  f.adopt(openAppend(path), path);
  const std::string probe = makeLines(100 * 1024, 20);
  appendInBatches(f, probe, 20000);
  if (!f.directEnabled()) GTEST_SKIP() << dir.path << ": no O_DIRECT on this file system";
  std::atomic<bool> stop{false};
  std::atomic<int> truncations{0};
  std::atomic<int> holes{0};
  std::thread truncator([&] {
    std::mt19937 rng(21);
    const int rfd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    char head[64];
    while (rfd >= 0 && !stop.load()) {
      std::this_thread::sleep_for(std::chrono::microseconds(500 + rng() % 3000));
      const ssize_t n = ::pread(rfd, head, sizeof head, 0);
      if (n > 0 && std::memchr(head, '\0', static_cast<size_t>(n)) != nullptr) holes.fetch_add(1);
      if (::truncate(path.c_str(), 0) == 0) truncations.fetch_add(1);
    }
    if (rfd >= 0) ::close(rfd);
  });
  // At least 1 s and 100 truncations, at most 10 s (a bounded file either way).
  const std::string lines = makeLines(1024 * 1024, 22);
  const auto start = std::chrono::steady_clock::now();
  for (int round = 0;; ++round) {
    const auto spent = std::chrono::steady_clock::now() - start;
    if ((spent > std::chrono::seconds(1) && truncations.load() >= 100) || spent > std::chrono::seconds(10)) break;
    appendInBatches(f, lines, 20000 + 997 * static_cast<size_t>(round % 7));
  }
  stop.store(true);
  truncator.join();
  ASSERT_TRUE(f.sync());
  EXPECT_GE(truncations.load(), 100);
  EXPECT_EQ(holes.load(), 0) << "a file starting with NUL bytes, of " << truncations.load() << " truncations";
  EXPECT_EQ(slurp(path).find('\0'), std::string::npos);
  EXPECT_GT(f.directWrites(), 50u);
}

// Another process appending to the same file: no byte of either is lost or
// overwritten, and this writer stops writing directly to the file.
TEST_F(LogFileTest, AnotherAppenderTurnsDirectWritesOff) {
  LogFile f(smallTuning());
  f.adopt(openAppend(path), path);
  const std::string first = makeLines(200 * 1024, 6);
  appendInBatches(f, first, 20000);
  if (!f.directEnabled()) GTEST_SKIP() << dir.path << ": no O_DIRECT on this file system";
  ASSERT_GT(f.directWrites(), 0u);
  const std::string other = "{\"from\":\"another process\"}\n";
  const int ofd = openAppend(path);
  ASSERT_GE(ofd, 0);
  ASSERT_EQ(::write(ofd, other.data(), other.size()), static_cast<ssize_t>(other.size()));
  ::close(ofd);
  const std::string second = makeLines(200 * 1024, 7);
  appendInBatches(f, second, 20000);
  ASSERT_TRUE(f.sync());
  EXPECT_FALSE(f.directEnabled());
  // The other line sits where the file ended when it was written (after the
  // last direct write, possibly inside a line of ours); without it the file
  // is exactly this writer's stream.
  std::string got = slurp(path);
  const size_t pos = got.find(other);
  ASSERT_NE(pos, std::string::npos);
  EXPECT_GT(pos, 0u);
  got.erase(pos, other.size());
  EXPECT_EQ(got, first + second);
}

// adopt() of a reopened path (rename + reopen): after a sync of the old
// file, later bytes go to the new one only.
TEST_F(LogFileTest, AdoptSwitchesFiles) {
  LogFile f(smallTuning());
  f.adopt(openAppend(path), path);
  const std::string a = makeLines(100 * 1024, 8);
  ASSERT_EQ(f.append(a.data(), a.size(), 0), static_cast<ssize_t>(a.size()));
  ASSERT_TRUE(f.sync());
  ASSERT_EQ(::rename(path.c_str(), (path + ".1").c_str()), 0);
  f.adopt(openAppend(path), path);
  const std::string b = makeLines(100 * 1024, 9);
  ASSERT_EQ(f.append(b.data(), b.size(), 0), static_cast<ssize_t>(b.size()));
  ASSERT_TRUE(f.sync());
  EXPECT_EQ(slurp(path + ".1"), a);
  EXPECT_EQ(slurp(path), b);
}

// A writer giving up at shutdown learns how many lines it held.
TEST_F(LogFileTest, DiscardHeldCountsTheLinesLost) {
  LogFile f(smallTuning());
  f.adopt(openAppend(path), path);
  const std::string a = std::string(5000, 'x') + "\n" + std::string(5000, 'y') + "\n" + "z\n";
  ASSERT_EQ(f.append(a.data(), a.size(), 0), static_cast<ssize_t>(a.size()));
  if (!f.directEnabled()) GTEST_SKIP() << dir.path << ": no O_DIRECT here, so nothing is held";
  EXPECT_EQ(f.discardHeld(), 3u);
  EXPECT_EQ(f.held(), 0u);
  ASSERT_TRUE(f.sync());
  EXPECT_EQ(fileSize(path), 0);
}

// Not a regular file (a pipe, /dev/stdout): plain writes, never direct.
TEST_F(LogFileTest, PipesArePlainAppends) {
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  LogFile f(smallTuning());
  f.adopt(p[1], "/dev/stdout");
  EXPECT_FALSE(f.directEnabled());
  const std::string a = makeLines(20000, 10);
  ASSERT_EQ(f.append(a.data(), a.size(), 0), static_cast<ssize_t>(a.size()));
  EXPECT_EQ(f.held(), 0u);
  std::string got(a.size(), '\0');
  size_t n = 0;
  while (n < a.size()) {
    const ssize_t r = ::read(p[0], got.data() + n, got.size() - n);
    ASSERT_GT(r, 0);
    n += static_cast<size_t>(r);
  }
  EXPECT_EQ(got, a);
  f.close();
  ::close(p[0]);
}

}  // namespace
}  // namespace portcullis
