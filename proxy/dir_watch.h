// Watches named files in one directory for being replaced or rewritten, on a
// libuv loop (the main thread's: token store, keyring, TLS certificates and
// keys, upstream CA files).
//
// Why not uv_fs_event: it watches a directory for every change, IN_MODIFY
// included, so each write(2) to any file in that directory queues an inotify
// event and wakes the loop. Logs kept beside the token store (one `var/` for
// everything) woke the main thread ~400 times a second under load, once per
// log-writer batch, and made every one of those writes queue an event.
//
// DirWatch asks inotify only for what ends a change to a file we read whole:
// IN_CLOSE_WRITE (rewritten in place), IN_MOVED_TO / IN_CREATE (replaced by a
// rename or created), IN_DELETE / IN_MOVED_FROM (removed), IN_ATTRIB (mode or
// owner changed), and the directory itself going away. Files held open for
// appending, like logs, raise nothing until closed.
//
// Contract: `on_change` runs on the loop's thread once per batch of events
// read in which at least one names one of `names` or the directory itself
// (never for other files alone); the owner compares what it cares about
// (stat) and acts. close() then wait for the
// loop to run the handle's close callback before destroying the object (as
// with any uv handle); `on_closed` runs there.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace portcullis {

class DirWatch {
 public:
  DirWatch(uv_loop_t* loop, std::string dir, std::vector<std::string> names, std::function<void()> on_change);
  ~DirWatch();
  DirWatch(const DirWatch&) = delete;
  DirWatch& operator=(const DirWatch&) = delete;

  // 0, or a negative errno (uv error code) when inotify or the watch could
  // not be set up; then nothing is watched and the owner polls instead.
  int start();
  // Stops watching; `on_closed` runs from the loop once the handle is closed
  // (at once if start() never succeeded).
  void close(std::function<void()> on_closed);

  const std::string& dir() const { return dir_; }
  const std::vector<std::string>& names() const { return names_; }
  // inotify events read (any name), and how often on_change ran.
  uint64_t eventsRead() const { return events_read_; }
  uint64_t eventsOurs() const { return events_ours_; }

 private:
  static void onReadable(uv_poll_t* h, int status, int events);
  void drain();

  uv_loop_t* loop_;
  std::string dir_;
  std::vector<std::string> names_;
  std::function<void()> on_change_;
  std::function<void()> on_closed_;
  uv_poll_t poll_{};
  int fd_ = -1;
  bool polling_ = false;
  uint64_t events_read_ = 0;
  uint64_t events_ours_ = 0;
};

}  // namespace portcullis
