// Blocking-with-timeout socket helpers for the background threads of the
// secondary sinks (AlertWebhook, SyslogSink). Every wait is a poll(2) that also
// watches a StopSignal, so stop() interrupts a connect, a send, a receive or a
// backoff sleep at once. None of this runs on an event loop.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "proxy/bounded_queue.h"

namespace portcullis {

// Where a sink connects: an IP literal or "localhost" (127.0.0.1) and a port.
// No name resolution: a sink must not depend on DNS, and loopback or an internal
// collector address is the expected use.
struct SinkEndpoint {
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  std::string authority;  // "host:port" as written in the URL (for a Host header)
};

// Parses "host:port" where host is a dotted IPv4 literal, a bracketed IPv6 literal
// ("[::1]") or "localhost". The port is 1..65535 and required unless
// `default_port` is non-zero. Returns false with a one-line message in `error`.
bool parseSinkHostPort(std::string_view hostport, uint16_t default_port, SinkEndpoint& out,
                       std::string& error);

// An eventfd that, once raised, stays readable: every poll that includes it
// returns at once from then on.
class StopSignal {
 public:
  StopSignal();
  ~StopSignal();
  StopSignal(const StopSignal&) = delete;
  StopSignal& operator=(const StopSignal&) = delete;

  bool valid() const { return fd_ >= 0; }
  void raise();
  bool raised() const;
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
};

enum class SinkIo : uint8_t {
  kOk,
  kTimeout,
  kStopped,  // the StopSignal was raised
  kError,    // with errno-style detail lost; callers only retry or reconnect
};

// Waits until `fd` has one of `events` (POLLIN/POLLOUT), an error or hangup
// (reported as kOk: the following I/O call sees the error), `timeout_ms` passes,
// or `stop` is raised.
SinkIo waitFd(int fd, short events, const StopSignal& stop, int timeout_ms);

// Sleeps `ms` milliseconds unless `stop` is raised first. Returns false if stopped.
bool sleepUnlessStopped(const StopSignal& stop, int ms);

// Opens a non-blocking TCP connection (TCP_NODELAY, close-on-exec) to `ep` within
// `timeout_ms`. Returns the fd, or -1 with the outcome in `result`.
int connectSink(const SinkEndpoint& ep, const StopSignal& stop, int timeout_ms, SinkIo& result);

// Sends all of `data` on non-blocking `fd` (MSG_NOSIGNAL), waiting at most
// `timeout_ms` for each stretch of writability. On failure `*sent` (if given)
// tells how many bytes went out.
SinkIo sendAll(int fd, std::string_view data, const StopSignal& stop, int timeout_ms,
               size_t* sent = nullptr);

// Exponential backoff: 100 ms, 200 ms, 400 ms, ... capped at 5 s.
class Backoff {
 public:
  static constexpr int kInitialMs = 100;
  static constexpr int kMaxMs = 5000;
  // The delay to wait now; each call doubles the next one up to kMaxMs.
  int next() {
    const int d = next_ms_;
    next_ms_ = next_ms_ >= kMaxMs / 2 ? kMaxMs : next_ms_ * 2;
    return d;
  }
  void reset() { next_ms_ = kInitialMs; }

 private:
  int next_ms_ = kInitialMs;
};

// The lifecycle the secondary sinks share: one background thread, the flags that
// producers and the thread check, an IdleWaker for producers to wake the thread,
// and a StopSignal that interrupts every wait of the thread at once.
class SinkThread {
 public:
  SinkThread() = default;
  // The owner must have called stop() (its members are gone before this runs).
  ~SinkThread() = default;
  SinkThread(const SinkThread&) = delete;
  SinkThread& operator=(const SinkThread&) = delete;

  // Under the lifecycle lock: fails with "<what> already started" if start() or
  // stop() ran before; otherwise runs `prepare` (validation; it fills `error` and
  // returns false to refuse) and then starts `body` on a thread named `name`. An
  // empty `body` marks the sink started without a thread.
  bool start(const char* what, const char* name, std::string& error,
             const std::function<bool(std::string&)>& prepare, std::function<void()> body);

  // Under the lifecycle lock, the first time only: stops accepting, sets stopping,
  // raises the StopSignal, wakes and joins the thread, then runs `after_join`
  // (which may touch the thread's state: the thread is gone). Idempotent.
  void stop(const std::function<void()>& after_join);

  // For producers: false once stop() has begun.
  bool accepting() const { return accepting_.load(std::memory_order_relaxed); }
  // For the thread: true once stop() has begun.
  bool stopping() const { return stopping_.load(std::memory_order_acquire); }
  // For producers, after publishing work.
  void wake() { waker_.wake(); }
  const StopSignal& stopSignal() const { return stop_signal_; }

  // For the thread: sleeps up to `timeout_ns` unless `ready()` (checked after the
  // sleep is announced, see IdleWaker) or stopping.
  template <typename Ready>
  void idle(const Ready& ready, long timeout_ns) {
    waker_.prepareSleep();
    if (ready() || stopping_.load(std::memory_order_seq_cst)) return;
    waker_.sleep(timeout_ns);
  }

 private:
  IdleWaker waker_;
  StopSignal stop_signal_;
  std::atomic<bool> accepting_{true};
  std::atomic<bool> stopping_{false};
  std::mutex mu_;  // start()/stop() against each other, never on a producer's path
  bool started_ = false;
  bool stopped_ = false;
  std::thread thread_;
};

// Microseconds since the Unix epoch (CLOCK_REALTIME; normally a vDSO call, no
// system call).
int64_t sinkNowUnixMicros();

}  // namespace portcullis
