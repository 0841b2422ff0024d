// DirWatch on a real libuv loop and real files in a temporary directory: the
// watched files' replacements and rewrites reach the callback, appends to
// other files in the same directory (logs) do not even wake the loop.
#include "proxy/dir_watch.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <uv.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace portcullis {
namespace {

struct Fixture {
  uv_loop_t loop;
  std::string dir;
  DirWatch* watch = nullptr;
  int changes = 0;

  Fixture() {
    uv_loop_init(&loop);
    char tmpl[] = "/tmp/pc-dirwatch-XXXXXX";
    dir = mkdtemp(tmpl);
    writeFile("tokens.toml", "v1\n");
    watch = new DirWatch(&loop, dir, {"tokens.toml", "keyring.toml"}, [this] { ++changes; });
  }
  ~Fixture() {
    if (watch != nullptr) watch->close([this] {
        delete watch;
        watch = nullptr;
      });
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    std::filesystem::remove_all(dir);
  }
  std::string path(const std::string& name) const { return dir + "/" + name; }
  void writeFile(const std::string& name, const std::string& data) const {
    const int fd = ::open(path(name).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    ::close(fd);
  }
  // Events are queued by the system calls themselves: a few non-blocking
  // loop turns deliver all of them.
  void turn() {
    for (int i = 0; i < 3; ++i) uv_run(&loop, UV_RUN_NOWAIT);
  }
};

TEST(DirWatch, AppendsToOtherFilesInTheDirectoryRaiseNothing) {
  Fixture f;
  ASSERT_EQ(f.watch->start(), 0);
  const int log = ::open(f.path("access.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  ASSERT_GE(log, 0);
  f.turn();
  const uint64_t after_create = f.watch->eventsRead();  // IN_CREATE of access.log
  EXPECT_EQ(after_create, 1u);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(::write(log, "{\"line\":1}\n", 11), 11);
  f.turn();
  EXPECT_EQ(f.watch->eventsRead(), after_create) << "a write queued an event";
  ::close(log);
  f.turn();
  EXPECT_EQ(f.watch->eventsRead(), after_create + 1);  // IN_CLOSE_WRITE, not ours
  EXPECT_EQ(f.changes, 0);
  EXPECT_EQ(f.watch->eventsOurs(), 0u);
}

TEST(DirWatch, ReplacementsRewritesModeChangesAndRemovalsOfWatchedFiles) {
  Fixture f;
  ASSERT_EQ(f.watch->start(), 0);
  // Replaced by a rename (how portcullisctl and most editors save).
  f.writeFile("tokens.toml.tmp", "v2\n");
  f.turn();
  EXPECT_EQ(f.changes, 0) << "the temporary file is not ours";
  ASSERT_EQ(::rename(f.path("tokens.toml.tmp").c_str(), f.path("tokens.toml").c_str()), 0);
  f.turn();
  EXPECT_EQ(f.changes, 1);
  // Rewritten in place: nothing while it is open for writing, once closed.
  const int fd = ::open(f.path("tokens.toml").c_str(), O_WRONLY | O_TRUNC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, "v3\n", 3), 3);
  f.turn();
  EXPECT_EQ(f.changes, 1);
  ::close(fd);
  f.turn();
  EXPECT_EQ(f.changes, 2);
  ASSERT_EQ(::chmod(f.path("tokens.toml").c_str(), 0400), 0);
  f.turn();
  EXPECT_EQ(f.changes, 3);
  f.writeFile("keyring.toml", "k\n");  // created: the second watched name
  f.turn();
  EXPECT_EQ(f.changes, 4);
  ASSERT_EQ(::unlink(f.path("keyring.toml").c_str()), 0);
  f.turn();
  EXPECT_EQ(f.changes, 5);
}

TEST(DirWatch, ClosedFromItsOwnCallback) {
  Fixture f;
  ASSERT_EQ(f.watch->start(), 0);
  DirWatch* w = f.watch;
  f.watch = nullptr;
  bool deleted = false;
  // The owner's reaction to a change may replace its watches (a reload).
  DirWatch* self = new DirWatch(&f.loop, f.dir, {"tokens.toml"}, [&] {
    self->close([&] {
      delete self;
      deleted = true;
    });
  });
  ASSERT_EQ(self->start(), 0);
  f.writeFile("tokens.toml", "v2\n");
  f.turn();
  EXPECT_TRUE(deleted);
  w->close([w] { delete w; });
  f.turn();
}

TEST(DirWatch, MissingDirectoryIsAnErrorAndClosesAtOnce) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  int changes = 0;
  auto* w = new DirWatch(&loop, "/nonexistent/pc-dirwatch", {"tokens.toml"}, [&] { ++changes; });
  EXPECT_EQ(w->start(), UV_ENOENT);
  bool closed = false;
  w->close([&] {
    delete w;
    closed = true;
  });
  EXPECT_TRUE(closed);
  EXPECT_EQ(uv_run(&loop, UV_RUN_NOWAIT), 0) << "no handle left behind";
  EXPECT_EQ(uv_loop_close(&loop), 0);
  EXPECT_EQ(changes, 0);
}

}  // namespace
}  // namespace portcullis
