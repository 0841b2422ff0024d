// Per-worker counters, written only by their worker (relaxed load+store, no
// locked instruction on the hot path) and summed by the admin thread on scrape.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/detect.h"

namespace portcullis {

// A counter with a single writer thread and any number of readers.
class Counter {
 public:
  void inc(uint64_t n = 1) { v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  uint64_t get() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};

// A gauge with a single writer thread.
class Gauge {
 public:
  void add(int64_t n) { v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  int64_t get() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> v_{0};
};

// Latency histogram with fixed buckets in microseconds (Prometheus style:
// rendered cumulatively, in seconds).
class Histogram {
 public:
  static constexpr uint64_t kBoundsUs[] = {100,    250,    500,     1000,    2500,    5000,     10000,
                                           25000,  50000,  100000,  250000,  500000,  1000000,  2500000,
                                           5000000, 10000000};
  static constexpr size_t kBuckets = sizeof(kBoundsUs) / sizeof(kBoundsUs[0]) + 1;  // + Inf
  void observe(uint64_t us) {
    size_t i = 0;
    while (i < kBuckets - 1 && us > kBoundsUs[i]) ++i;
    buckets_[i].inc();
    sum_us_.inc(us);
  }
  uint64_t bucket(size_t i) const { return buckets_[i].get(); }
  uint64_t sumUs() const { return sum_us_.get(); }

 private:
  Counter buckets_[kBuckets];
  Counter sum_us_;
};

// Route labels are assigned by the main thread when a snapshot is built and
// never reused, so a worker's counters stay meaningful across reloads. Ids
// beyond kMaxRouteLabels - 1 share the last label "other".
inline constexpr size_t kMaxRouteLabels = 64;
inline constexpr size_t kMethodSlots = 8;   // GET HEAD POST PUT PATCH DELETE OPTIONS other
inline constexpr size_t kStatusSlots = 40;  // see statusSlot()

size_t methodSlot(std::string_view method);
std::string_view methodSlotName(size_t slot);
size_t statusSlot(int status);
std::string statusSlotLabel(size_t slot);  // "200", ..., or "1xx".."5xx" for others

enum class UpstreamError : uint8_t {
  kConnectFailed,
  kConnectTimeout,
  kResponseTimeout,
  kReset,           // closed or reset before the response completed
  kBadResponse,     // unparsable response
  kNoHealthyServer,
  kTlsHandshake,    // TLS to the upstream failed (handshake or certificate)
  kCount
};
std::string_view upstreamErrorName(UpstreamError e);

// Refused requests by (filter, reason), e.g. ("token_check", "bad_secret"):
// a fixed table per worker, written only by its worker and read by the
// scraper. A slot's strings are filled before its hash is published
// (release), so a reader that sees the hash (acquire) sees them too. Up to
// kSlots distinct pairs (reasons are the filters' fixed strings); more, or
// a pair whose probe window is full, count under ("other", "other").
class RefusalCounters {
 public:
  static constexpr size_t kSlots = 128;
  static constexpr size_t kFilterLen = 31, kReasonLen = 63;  // longer ones are cut
  void inc(std::string_view filter, std::string_view reason);
  // inc() with `reason` lower-cased, e.g. BoringSSL's "UNSUPPORTED_PROTOCOL"
  // as the label "unsupported_protocol".
  void incLowerCase(std::string_view filter, const char* reason);
  // Calls f(filter, reason, count) for every published slot, and for the
  // overflow when non-zero.
  template <class F>
  void forEach(F&& f) const {
    for (const Slot& s : slots_) {
      if (s.hash.load(std::memory_order_acquire) == 0) continue;
      f(std::string_view(s.filter, s.flen), std::string_view(s.reason, s.rlen), s.count.get());
    }
    if (overflow_.get() > 0) f(std::string_view("other"), std::string_view("other"), overflow_.get());
  }

 private:
  struct Slot {
    std::atomic<uint64_t> hash{0};
    uint8_t flen = 0, rlen = 0;
    char filter[kFilterLen];
    char reason[kReasonLen];
    Counter count;
  };
  Slot slots_[kSlots];
  Counter overflow_;
};

struct WorkerMetrics {
  Counter requests[kMaxRouteLabels][kMethodSlots][kStatusSlots];
  Histogram request_latency;   // head received -> response complete
  Histogram upstream_latency;  // request sent -> response head received
  Histogram proxy_added_latency;  // head received -> request head sent upstream
  Counter connections_total;
  Gauge connections_active;
  Counter connections_refused;  // over max_connections / per-IP limit
  Counter accept_errors;        // accept failed (EMFILE, ENFILE, ...)
  Counter upstream_errors[static_cast<size_t>(UpstreamError::kCount)];
  Counter upstream_retries;
  Counter bytes_in;
  Counter bytes_out;
  Gauge buffered_bytes;  // bytes of pooled I/O buffers currently held by connections
  Gauge overload_active;      // 1 while this worker is over its buffer watermark
  Counter overload_episodes;  // times it went over
  Counter overload_refused;   // connections closed at once meanwhile
  Counter overload_paused;    // connections whose reading was paused meanwhile
  Counter parse_errors;
  Counter tls_handshakes_full;
  Counter tls_handshakes_resumed;
  Counter upstream_tls_full;     // TLS handshakes to upstreams, full
  Counter upstream_tls_resumed;  // ... and resumed with a pooled session
  Counter tls_handshake_failures;
  RefusalCounters tls_failure_reasons;  // failed handshakes by BoringSSL reason ("tls" = listener or "upstream", reason)
  Counter auth_success;          // requests whose token passed the token check
  Counter rate_allowed[4];       // allowed rate-limit decisions by LimitKind (ip, token, route)
  RefusalCounters refusals;      // local refusals by filter and reason
  // WebSocket tunnels (route `websocket = true`), counted when they end.
  Gauge tunnels_active;
  Counter tunnels_total;
  Counter tunnel_bytes[2];  // payload bytes: [0] client -> upstream, [1] upstream -> client
};

class RouteLabels {
 public:
  // Returns the label id of `prefix`, assigning the next id the first time.
  // Called by the main thread only (snapshot building); readers use name().
  size_t idFor(std::string_view prefix);
  std::string name(size_t id) const;
  size_t count() const;

 private:
  mutable std::mutex mu_;  // main/admin thread only, never on the request path
  std::vector<std::string> names_{"none"};  // id 0: requests that matched no route
};

// Renders Prometheus text exposition for all workers' metrics.
struct MetricsExtra {
  uint64_t log_written = 0;
  uint64_t log_dropped = 0;
  size_t log_queue_depth = 0;
  uint64_t config_reloads = 0;
  uint64_t config_reload_failures = 0;
  uint64_t config_generation = 0;          // of the running snapshot (1 at start, +1 per applied change)
  uint64_t config_generation_applied = 0;  // the oldest generation a worker still serves new requests with
  uint64_t file_watch_events = 0;
  std::vector<std::pair<std::string, bool>> upstream_health;  // "upstream/host:port" -> healthy
  struct KeyUse {
    std::string key_id;
    uint64_t uploads = 0, bytes = 0, aborted = 0;
  };
  std::vector<KeyUse> encryption;  // per master key id
  bool ratelimit_enabled = false;
  uint64_t ratelimit_fallbacks = 0, ratelimit_bans_started = 0, ratelimit_bans_active = 0;
  uint64_t ratelimit_keys = 0, ratelimit_cells = 0;
  bool audit_enabled = false;
  uint64_t audit_written = 0, audit_overflowed = 0, audit_queue_depth = 0;
  bool detect_enabled = false;
  uint64_t alerts[kAlertKinds] = {};  // by AlertKind
  uint64_t detect_fallbacks = 0;
  bool webhook_enabled = false;
  uint64_t webhook_sent = 0, webhook_failed = 0, webhook_dropped = 0;
  bool syslog_enabled = false;
  uint64_t syslog_sent = 0, syslog_dropped = 0;
};
std::string renderMetrics(const std::vector<const WorkerMetrics*>& workers, const RouteLabels& labels,
                          const MetricsExtra& extra);

}  // namespace portcullis
