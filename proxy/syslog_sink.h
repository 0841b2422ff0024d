// SyslogSink: a secondary copy of audit events and alerts for a SIEM collector
// (`log.syslog = "tcp://host:port"`, SPEC.md §3 and §8), sent from a background
// thread as RFC 5424 messages over TCP with octet-counting framing (RFC 6587
// §3.4.1).
//
// Wire format of one message (no trailing newline; the next frame follows at once):
//
//   LEN SP <PRI>1 TIMESTAMP HOSTNAME portcullis PROCID MSGID - MSG
//
// PRI = facility authpriv (10) * 8 + severity (notice 5 for audit events,
// warning 4 for alerts). TIMESTAMP is RFC 3339 UTC with microseconds, taken in
// send(). PROCID is the process id. No STRUCTURED-DATA ("-"). MSG is the JSON
// line as given, without its trailing newline and without a UTF-8 BOM (MSG-ANY in
// RFC 5424 terms; the JSON itself is valid UTF-8). LEN is MSG's frame length in
// bytes, in decimal.
//
// The audit log file is the record of truth; this copy is best-effort. A full
// queue drops new messages (counted). While the collector is down the thread
// reconnects with exponential backoff (100 ms doubling to 5 s) and queued messages
// wait, up to the queue bound. Delivery is at-least-once for a message whose
// send was cut short (it is resent whole on the next connection, so the
// collector may see it twice, once truncated) and at-most-once for a message
// already handed in full to the kernel when the connection died (TCP syslog has
// no acknowledgements; such a message may be lost).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>

#include "proxy/bounded_queue.h"
#include "proxy/sink_io.h"

namespace portcullis {

class SyslogSink {
 public:
  enum class Severity : uint8_t { kWarning = 4, kNotice = 5 };
  static constexpr int kFacilityAuthpriv = 10;

  struct Options {
    size_t capacity = 16384;   // queued messages, rounded up to a power of two
    int io_timeout_ms = 2000;  // for the connect and each wait for writability
  };

  SyslogSink() : SyslogSink(Options()) {}
  explicit SyslogSink(const Options& options);
  // Calls stop().
  ~SyslogSink();

  SyslogSink(const SyslogSink&) = delete;
  SyslogSink& operator=(const SyslogSink&) = delete;

  // Validates `url` ("tcp://HOST:PORT", HOST a dotted IPv4 literal, a bracketed
  // IPv6 literal or "localhost"; no name resolution, no path) and starts the
  // sender thread, which connects in the background: start() succeeds while the
  // collector is down. `hostname_or_dash` is the HOSTNAME field: 1 to 255
  // printable US-ASCII characters without spaces, or "-" (also used when empty).
  // Returns false with a one-line message in `error` for a bad URL or hostname, or
  // if already started or stopped. Messages sent before start() wait in the queue.
  // Call once.
  bool start(const std::string& url, std::string hostname_or_dash, std::string& error);

  // Queues one message. `msgid` is the event name ("auth.failure", "alert"); it is
  // cut to 32 bytes and any byte outside printable US-ASCII becomes '_' ("-" if
  // empty). `json_line` is the MSG, one trailing "\n" or "\r\n" removed. Thread-safe;
  // meant for event-loop threads: never blocks, never takes a mutex, makes a system
  // call only to wake an idle sender (for every warning, otherwise every 64th
  // message; an idle sender also looks every 20 ms). It allocates one string for
  // the copy. Returns false and counts a drop when the queue is full or after stop().
  bool send(std::string_view msgid, std::string_view json_line,
            Severity severity = Severity::kNotice);

  // Stops the sender: messages already queued are written if the connection is up
  // and the socket takes them without waiting; the rest are counted in dropped().
  // Returns promptly (no reconnect, no waiting on a slow collector). Joins the
  // thread and closes the connection. Idempotent; a stopped sink cannot be started
  // again. Not from an event loop.
  void stop();

  // Counters for /metrics (relaxed reads; exact only when quiescent).
  // Messages written in full to a connection.
  uint64_t sent() const { return sent_.load(std::memory_order_relaxed); }
  // Messages refused by send() (queue full, stopped) or abandoned by stop().
  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
  // Connections established after the first one (after a loss or refusal).
  uint64_t reconnects() const { return reconnects_.load(std::memory_order_relaxed); }
  // Whether the sender holds an open connection to the collector now.
  bool connected() const { return connected_.load(std::memory_order_relaxed); }
  // Messages queued and not yet taken by the sender.
  size_t depth() const { return queue_.depth(); }

 private:
  struct Item {
    int64_t ts_unix_us = 0;
    Severity severity = Severity::kNotice;
    uint8_t msgid_len = 0;  // text = msgid bytes, then the MSG bytes
    std::string text;
  };

  bool configure(const std::string& url, std::string hostname, std::string& error);
  void run();
  void fillPending();
  void formatFrame(const Item& item, std::string& out) const;
  // Writes pending_ frames; waits for writability only if `may_wait`.
  SinkIo writePending(bool may_wait);
  bool peerClosed() const;
  void closeConnection();

  const Options options_;
  BoundedMpscQueue<Item> queue_;
  SinkThread worker_;
  std::atomic<uint64_t> sent_{0};
  std::atomic<uint64_t> dropped_{0};
  std::atomic<uint64_t> reconnects_{0};
  std::atomic<bool> connected_{false};

  // Sender thread state.
  SinkEndpoint endpoint_;
  std::string hostname_;
  std::string procid_;
  int fd_ = -1;
  std::deque<std::string> pending_;  // framed, taken from the queue, not yet fully sent
  size_t front_sent_ = 0;            // bytes of pending_.front() already written
};

}  // namespace portcullis
