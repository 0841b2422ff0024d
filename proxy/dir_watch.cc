#include "proxy/dir_watch.h"

#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace portcullis {

namespace {

// What ends a change to a file read whole; not IN_MODIFY (every write) nor
// IN_ACCESS / IN_OPEN / IN_CLOSE_NOWRITE (reads).
constexpr uint32_t kMask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_ATTRIB |
                           IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;

}  // namespace

DirWatch::DirWatch(uv_loop_t* loop, std::string dir, std::vector<std::string> names, std::function<void()> on_change)
    : loop_(loop), dir_(std::move(dir)), names_(std::move(names)), on_change_(std::move(on_change)) {}

DirWatch::~DirWatch() {
  // Only reached after close() has finished (or when never started).
  if (fd_ >= 0) ::close(fd_);
}

int DirWatch::start() {
  fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd_ < 0) return -errno;
  int rc = 0;
  if (inotify_add_watch(fd_, dir_.c_str(), kMask) < 0) {
    rc = -errno;
  } else if ((rc = uv_poll_init(loop_, &poll_, fd_)) == 0) {
    poll_.data = this;
    polling_ = true;
    rc = uv_poll_start(&poll_, UV_READABLE, &DirWatch::onReadable);
    if (rc == 0) return 0;
    // An initialised handle must be closed; close() does that.
    return rc;
  }
  ::close(fd_);
  fd_ = -1;
  return rc;
}

void DirWatch::close(std::function<void()> on_closed) {
  on_closed_ = std::move(on_closed);
  if (!polling_) {
    std::function<void()> done = std::move(on_closed_);
    if (done) done();  // may delete this
    return;
  }
  polling_ = false;
  uv_close(reinterpret_cast<uv_handle_t*>(&poll_), [](uv_handle_t* h) {
    auto* w = static_cast<DirWatch*>(h->data);
    // The descriptor outlives the poll handle (libuv's rule for uv_poll).
    ::close(w->fd_);
    w->fd_ = -1;
    std::function<void()> done = std::move(w->on_closed_);
    if (done) done();  // may delete w
  });
}

void DirWatch::onReadable(uv_poll_t* h, int status, int /*events*/) {
  auto* w = static_cast<DirWatch*>(h->data);
  if (status < 0) {
    // Unreadable inotify descriptor: stop the readiness storm; the owner's
    // periodic check still sees changes.
    uv_poll_stop(h);
    return;
  }
  w->drain();
}

void DirWatch::drain() {
  alignas(struct inotify_event) char buf[4096];
  bool ours = false;
  for (;;) {
    const ssize_t n = ::read(fd_, buf, sizeof buf);
    if (n <= 0) break;  // EAGAIN: drained (EINTR: the next readiness retries)
    for (ssize_t off = 0; off + static_cast<ssize_t>(sizeof(struct inotify_event)) <= n;) {
      const auto* ev = reinterpret_cast<const struct inotify_event*>(buf + off);
      off += static_cast<ssize_t>(sizeof(struct inotify_event) + ev->len);
      ++events_read_;
      if (ev->len == 0) {
        // The directory itself (deleted, moved), the watch gone (IN_IGNORED)
        // or the queue overflowed: anything may have changed.
        ours = true;
        continue;
      }
      const char* name = ev->name;
      for (const std::string& want : names_) {
        if (want == name) {
          ours = true;
          break;
        }
      }
    }
  }
  if (!ours) return;
  ++events_ours_;
  on_change_();  // last: it may close (and so later delete) this watch
}

}  // namespace portcullis
