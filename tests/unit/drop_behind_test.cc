// Drop-behind (proxy/drop_behind.h): what a log writer has made durable
// leaves the page cache except the newest DropBehind::kKeep bytes. Checked
// on real files with mincore(2); skipped where the file system keeps every
// page (tmpfs).
#include "proxy/drop_behind.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <string>

#include "proxy/access_log.h"
#include "tests/unit/page_cache.h"
#include "tests/unit/temp_dir.h"

namespace portcullis {
namespace {

using testing_support::onTmpfs;
using testing_support::residentFraction;

using testing_support::TempDir;

constexpr off_t kMiB = 1 << 20;

// Where drops end for certain in a file of `size` bytes after its last sync
// (drop_behind.h): the kAlign boundary below size - kKeep.
off_t droppedUpTo(off_t size) {
  const off_t upto = size - DropBehind::kKeep;
  return upto - upto % DropBehind::kAlign;
}

// Appends `bytes` in 64 KiB writes, syncing and dropping whenever due().
void appendSynced(int fd, DropBehind& d, off_t bytes) {
  const std::string chunk(64 * 1024, 'x');
  for (off_t done = 0; done < bytes; done += static_cast<off_t>(chunk.size())) {
    ASSERT_EQ(::write(fd, chunk.data(), chunk.size()), static_cast<ssize_t>(chunk.size()));
    d.appended(chunk.size());
    if (d.due()) {
      ASSERT_EQ(::fdatasync(fd), 0);
      d.synced();
    }
  }
}

TEST(DropBehindTest, SyncedPagesLeaveTheCacheExceptTheNewest) {
  TempDir dir;
  if (onTmpfs(dir.path)) GTEST_SKIP() << dir.path << " is on tmpfs, whose pages cannot be dropped";
  const std::string path = dir.path + "/log";
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  DropBehind d;
  d.reset(fd);
  appendSynced(fd, d, 48 * kMiB);
  ASSERT_EQ(::fdatasync(fd), 0);
  d.synced();
  // Everything before the kept tail is gone; the tail is still cached.
  EXPECT_EQ(residentFraction(path, 0, droppedUpTo(48 * kMiB)), 0.0);
  EXPECT_GT(residentFraction(path, 48 * kMiB - DropBehind::kKeep / 2, 48 * kMiB), 0.9);

  // logrotate's copytruncate: the file starts over under the writer, which
  // drops the new content as it goes.
  ASSERT_EQ(::ftruncate(fd, 0), 0);
  appendSynced(fd, d, 32 * kMiB);
  ASSERT_EQ(::fdatasync(fd), 0);
  d.synced();
  EXPECT_EQ(residentFraction(path, 0, droppedUpTo(32 * kMiB)), 0.0);
  ::close(fd);
}

TEST(DropBehindTest, NotARegularFileIsLeftAlone) {
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  DropBehind d;
  d.reset(p[1]);
  d.appended(64 * kMiB);
  EXPECT_FALSE(d.due());
  d.synced();  // no-op, no crash
  ::close(p[0]);
  ::close(p[1]);
}

// The access log's writer syncs every DropBehind::kSyncEvery bytes and drops
// what is behind the kept tail: after ~40 MiB of lines little of the file
// stays cached.
TEST(DropBehindTest, AccessLogWriterDropsWhatItWrote) {
  TempDir dir;
  if (onTmpfs(dir.path)) GTEST_SKIP() << dir.path << " is on tmpfs, whose pages cannot be dropped";
  const std::string path = dir.path + "/access.log";
  LogWriter w;
  std::string error;
  ASSERT_TRUE(w.start(path, error)) << error;
  const std::string line = std::string(1023, 'a') + "\n";
  for (int i = 0; i < 40 * 1024; ++i) {
    std::string l = line;
    while (!w.submit(std::move(l))) {
      l = line;
      usleep(1000);  // the queue is full: let the writer catch up
    }
  }
  w.flush();
  w.stop();
  const off_t size = 40 * kMiB;
  // Synced and dropped up to at most kSyncEvery + kKeep before the end.
  EXPECT_EQ(residentFraction(path, 0, droppedUpTo(size - DropBehind::kSyncEvery)), 0.0);
}

}  // namespace
}  // namespace portcullis
