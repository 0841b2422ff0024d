// Active upstream health checks (SPEC.md §3, [[upstream]] health_check).
//
// The HealthChecker runs on the main thread's libuv loop. For every server of
// every upstream whose health_check is enabled it sends a small HTTP/1.1 GET
// every interval_ms and publishes the outcome through the server's
// HealthTable::Entry::healthy atomic, which workers read without locks. It never
// blocks the loop: every step (connect, write, read, timeout) is asynchronous.
#pragma once

#include <uv.h>

#include <atomic>
#include <cstdint>
#include <unordered_map>

#include "proxy/snapshot.h"

namespace portcullis {

class HealthChecker {
 public:
  // `loop` must outlive every handle this checker creates, i.e. it must keep
  // running until the closes started by stop() (or the destructor) completed.
  explicit HealthChecker(uv_loop_t* loop);

  // Call stop() first and let the loop run so that the closes it started
  // complete. Destroying a checker that was not stopped is safe (the destructor
  // calls stop()), but the memory of its probes and timers is only released
  // when the loop later runs their close callbacks. Main thread only.
  ~HealthChecker();

  HealthChecker(const HealthChecker&) = delete;
  HealthChecker& operator=(const HealthChecker&) = delete;

  // Replaces the set of checks with those of `snap`. Called by the main thread
  // at start and after every reload; `snap` need not outlive the call (the
  // checker copies what it needs and keeps only the stable Entry pointers of
  // the HealthTable, which must outlive the checker).
  //
  // For each upstream whose health_check.enabled is true, each server gets a
  // probe every interval_ms: a TCP connect to its numeric IPv4 or IPv6 address,
  // (over TLS for a tls = true upstream: handshake and certificate check as
  // on the data path, Host = sni when set; a TLS failure is a failure),
  // then "GET <path> HTTP/1.1" with Host, User-Agent: portcullis-health and
  // Connection: close, then the status line is read. A 2xx or 3xx status within
  // timeout_ms (counted from the start of the connect) is a success; anything
  // else (refused, timeout, other status, garbage, close before the status
  // line, no status line within the first 1 KiB) is a failure. After
  // unhealthy_threshold consecutive failures the entry's healthy flag becomes
  // false; after healthy_threshold consecutive successes it becomes true again
  // (a threshold of 0 counts as 1). Each change is logged to stderr as one line:
  //   portcullis: upstream <key> is now healthy|unhealthy (<reason>)
  //
  // Servers of upstreams without an enabled health_check are set healthy=true.
  // A server (identified by its Entry) present before and after the call keeps
  // its counters and its schedule (its timing and request are updated if the
  // settings changed); probes of servers no longer in `snap` stop, including
  // one in flight. The first probe of a new server starts at once. A server
  // listed twice in one upstream is probed once. Does nothing after stop().
  void update(const Snapshot& snap);

  // Stops all timers and in-flight probes: closes their handles, which the loop
  // completes on its next iteration. Idempotent; update() is a no-op afterwards.
  void stop();

  // Total probes completed (success or failure; aborted probes do not count).
  // May be read from any thread.
  uint64_t probes() const { return probes_.load(std::memory_order_relaxed); }

  struct Target;  // one checked server (implementation detail)

 private:
  uv_loop_t* loop_;
  bool stopped_ = false;
  std::unordered_map<const HealthTable::Entry*, Target*> targets_;
  std::atomic<uint64_t> probes_{0};
};

}  // namespace portcullis
