// AlertWebhook: delivers detection alerts (SPEC.md §8) as JSON by HTTP POST to
// `detect.alert_webhook`, from a background thread so that an event loop never
// waits on the network.
//
// This is a secondary copy: every alert is also an audit event. When the
// collector is slow or down, alerts wait in a bounded queue and are retried with
// backoff; when the queue is full a new alert is dropped from the webhook copy
// and counted, and the proxy carries on.
//
// Transport: plain HTTP/1.1 to an internal collector ("http://host:port/path",
// host an IP literal or localhost). TLS to the collector (https://) is not
// supported yet and is refused by start(); put the collector on a trusted network
// or loopback, or front it with a local TLS-originating relay.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "proxy/bounded_queue.h"
#include "proxy/sink_io.h"

namespace portcullis {

class AlertWebhook {
 public:
  struct Options {
    size_t capacity = 1024;    // queued alerts, rounded up to a power of two
    int max_attempts = 6;      // POSTs per alert before it counts as failed
    int io_timeout_ms = 2000;  // for the connect, each send wait and each receive wait
  };

  AlertWebhook() : AlertWebhook(Options()) {}
  explicit AlertWebhook(const Options& options);
  // Calls stop().
  ~AlertWebhook();

  AlertWebhook(const AlertWebhook&) = delete;
  AlertWebhook& operator=(const AlertWebhook&) = delete;

  // Validates `url` and starts the delivery thread. Accepted: "http://HOST[:PORT][/PATH]"
  // where HOST is a dotted IPv4 literal, a bracketed IPv6 literal or "localhost"
  // (no name resolution), PORT defaults to 80 and PATH (which may carry a query)
  // to "/". Refused with a one-line message in `error`: https:// (TLS to the
  // collector is not supported yet), any other scheme, user info, fragments,
  // spaces or control characters, host names, bad ports. An empty `url` makes
  // this a disabled webhook: post() accepts and discards every alert without
  // counting it and no thread is started. Alerts posted before start() wait in
  // the queue. Call once; returns false if already started or stopped.
  bool start(const std::string& url, std::string& error);

  // Queues one alert body (a JSON object; sent as is). Thread-safe; meant for
  // event-loop threads: never blocks, never takes a mutex, never allocates (the
  // string is moved), and makes a system call only to wake an idle delivery
  // thread. Returns false, leaves `json_body` unchanged and counts a drop when the
  // queue is full or after stop().
  bool post(std::string&& json_body);

  // Stops promptly (well under a second) even while a POST is in flight or a
  // retry is waiting out its backoff: the in-flight alert and every queued one
  // are abandoned and counted in dropped(). A post() racing with stop() returns
  // false or is counted too, except one caught between its check and its push at
  // that instant (freed with the webhook, uncounted). Joins the thread and closes
  // the connection. Idempotent; a stopped webhook cannot be started again. Not
  // from an event loop.
  void stop();

  bool enabled() const { return !disabled_.load(std::memory_order_relaxed); }

  // Counters for /metrics (relaxed reads; exact only when quiescent).
  // Alerts the collector answered with a 2xx.
  uint64_t sent() const { return sent_.load(std::memory_order_relaxed); }
  // Alerts given up after max_attempts failed POSTs (refused or failed connect,
  // timeout, broken connection, malformed or non-2xx response).
  uint64_t failed() const { return failed_.load(std::memory_order_relaxed); }
  // Alerts refused by post() (queue full, stopped) or abandoned by stop().
  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
  // POSTs repeated after a failure (attempts beyond the first).
  uint64_t retries() const { return retries_.load(std::memory_order_relaxed); }
  // Alerts queued and not yet taken by the delivery thread.
  size_t depth() const { return queue_.depth(); }

 private:
  enum class Attempt : uint8_t { kDelivered, kFailed, kStopped };

  void run();
  void deliver(const std::string& body);
  Attempt postOnce(const std::string& body);
  // One request/response on the open connection. `responded` tells whether any
  // response byte arrived (a keep-alive connection the server closed in the
  // meantime fails before that and is retried on a fresh one).
  SinkIo exchange(const std::string& request, int& status, bool& keep_alive, bool& responded);
  SinkIo readMore();
  SinkIo skipBody(size_t n);
  SinkIo readLine(std::string& line);
  void closeConnection();

  const Options options_;
  BoundedMpscQueue<std::string> queue_;
  SinkThread worker_;
  std::atomic<bool> disabled_{false};
  std::atomic<uint64_t> sent_{0};
  std::atomic<uint64_t> failed_{0};
  std::atomic<uint64_t> dropped_{0};
  std::atomic<uint64_t> retries_{0};

  // Delivery thread state.
  SinkEndpoint endpoint_;
  std::string path_;
  int fd_ = -1;
  std::string rbuf_;  // received and not yet consumed
};

}  // namespace portcullis
