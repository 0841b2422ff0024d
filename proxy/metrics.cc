#include "proxy/metrics.h"

#include <xxhash.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <cctype>
#include <map>

#include "proxy/detect.h"

namespace portcullis {

namespace {

constexpr int kKnownStatuses[] = {100, 101, 200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404,
                                  405, 408, 409, 411, 413, 414, 415, 422, 429, 431, 500, 501, 502, 503, 504, 505};
constexpr size_t kKnown = sizeof(kKnownStatuses) / sizeof(kKnownStatuses[0]);
static_assert(kKnown + 6 <= kStatusSlots);

constexpr std::string_view kMethodNames[kMethodSlots] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"};

void appendF(std::string& out, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
// NOLINTNEXTLINE(cert-dcl50-cpp): printf-style on purpose; the format attribute has the compiler check every call
void appendF(std::string& out, const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  if (n > 0) out.append(buf, static_cast<size_t>(n) < sizeof(buf) ? static_cast<size_t>(n) : sizeof(buf) - 1);
}

std::string escapeLabel(std::string_view v) {
  std::string s;
  for (char c : v) {
    if (c == '\\' || c == '"') s.push_back('\\');
    if (c == '\n') {
      s += "\\n";
      continue;
    }
    s.push_back(c);
  }
  return s;
}

void renderHistogram(std::string& out, const char* name, const char* help,
                     const std::vector<const WorkerMetrics*>& workers, const Histogram WorkerMetrics::*member) {
  appendF(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
  uint64_t cumulative = 0;
  uint64_t sum_us = 0;
  for (size_t b = 0; b < Histogram::kBuckets; ++b) {
    for (const WorkerMetrics* w : workers) cumulative += (w->*member).bucket(b);
    if (b < Histogram::kBuckets - 1) {
      appendF(out, "%s_bucket{le=\"%g\"} %llu\n", name, static_cast<double>(Histogram::kBoundsUs[b]) / 1e6,
              static_cast<unsigned long long>(cumulative));
    } else {
      appendF(out, "%s_bucket{le=\"+Inf\"} %llu\n", name, static_cast<unsigned long long>(cumulative));
    }
  }
  for (const WorkerMetrics* w : workers) sum_us += (w->*member).sumUs();
  appendF(out, "%s_sum %.6f\n%s_count %llu\n", name, static_cast<double>(sum_us) / 1e6, name,
          static_cast<unsigned long long>(cumulative));
}

template <typename F>
uint64_t sum(const std::vector<const WorkerMetrics*>& workers, F f) {
  uint64_t s = 0;
  for (const WorkerMetrics* w : workers) s += f(*w);
  return s;
}

}  // namespace

size_t methodSlot(std::string_view m) {
  for (size_t i = 0; i < kMethodSlots - 1; ++i)
    if (kMethodNames[i] == m) return i;
  return kMethodSlots - 1;
}

std::string_view methodSlotName(size_t slot) { return kMethodNames[slot < kMethodSlots ? slot : kMethodSlots - 1]; }

size_t statusSlot(int status) {
  for (size_t i = 0; i < kKnown; ++i)
    if (kKnownStatuses[i] == status) return i;
  int cls = status / 100;
  if (cls < 1 || cls > 5) cls = 6;  // nonsense codes share one slot
  return kKnown + static_cast<size_t>(cls - 1);
}

std::string statusSlotLabel(size_t slot) {
  if (slot < kKnown) return std::to_string(kKnownStatuses[slot]);
  size_t cls = slot - kKnown + 1;
  if (cls > 5) return "other";
  return std::to_string(cls) + "xx";
}

void RefusalCounters::incLowerCase(std::string_view filter, const char* reason) {
  char lower[kReasonLen];
  size_t n = 0;
  for (const char* p = reason; *p != '\0' && n < sizeof(lower); ++p) {
    lower[n++] = static_cast<char>(std::tolower(static_cast<unsigned char>(*p)));
  }
  inc(filter, std::string_view(lower, n));
}

std::string_view upstreamErrorName(UpstreamError e) {
  switch (e) {
    case UpstreamError::kConnectFailed: return "connect_failed";
    case UpstreamError::kConnectTimeout: return "connect_timeout";
    case UpstreamError::kResponseTimeout: return "response_timeout";
    case UpstreamError::kReset: return "reset";
    case UpstreamError::kBadResponse: return "bad_response";
    case UpstreamError::kNoHealthyServer: return "no_healthy_server";
    case UpstreamError::kTlsHandshake: return "tls_handshake";
    case UpstreamError::kCount: break;
  }
  return "unknown";
}

size_t RouteLabels::idFor(std::string_view prefix) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 1; i < names_.size(); ++i)
    if (names_[i] == prefix) return i < kMaxRouteLabels ? i : kMaxRouteLabels - 1;
  names_.emplace_back(prefix);
  size_t id = names_.size() - 1;
  return id < kMaxRouteLabels ? id : kMaxRouteLabels - 1;
}

std::string RouteLabels::name(size_t id) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (id == kMaxRouteLabels - 1 && names_.size() > kMaxRouteLabels) return "other";
  return id < names_.size() ? names_[id] : std::string();
}

size_t RouteLabels::count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return names_.size() < kMaxRouteLabels ? names_.size() : kMaxRouteLabels;
}

void RefusalCounters::inc(std::string_view filter, std::string_view reason) {
  filter = filter.substr(0, kFilterLen);
  reason = reason.substr(0, kReasonLen);
  uint64_t h = XXH3_64bits_withSeed(reason.data(), reason.size(), XXH3_64bits(filter.data(), filter.size()));
  h |= 1;  // 0 marks an empty slot
  for (size_t i = 0; i < 8; ++i) {
    Slot& s = slots_[(h + i) % kSlots];
    const uint64_t have = s.hash.load(std::memory_order_relaxed);
    if (have == h) {
      s.count.inc();
      return;
    }
    if (have == 0) {
      // Only this worker writes the table, so filling the slot races with
      // nobody; readers skip it until the hash is published.
      s.flen = static_cast<uint8_t>(filter.size());
      s.rlen = static_cast<uint8_t>(reason.size());
      std::memcpy(s.filter, filter.data(), filter.size());
      std::memcpy(s.reason, reason.data(), reason.size());
      s.count.inc();
      s.hash.store(h, std::memory_order_release);
      return;
    }
  }
  overflow_.inc();
}

std::string renderMetrics(const std::vector<const WorkerMetrics*>& workers, const RouteLabels& labels,
                          const MetricsExtra& extra) {
  std::string out;
  out.reserve(16384);
  out += "# HELP portcullis_requests_total Requests answered, by route prefix, method and status.\n";
  out += "# TYPE portcullis_requests_total counter\n";
  const size_t nroutes = labels.count();
  for (size_t r = 0; r < nroutes; ++r) {
    std::string route = escapeLabel(labels.name(r));
    for (size_t m = 0; m < kMethodSlots; ++m) {
      for (size_t s = 0; s < kStatusSlots; ++s) {
        uint64_t v = sum(workers, [&](const WorkerMetrics& w) { return w.requests[r][m][s].get(); });
        if (v == 0) continue;
        appendF(out, "portcullis_requests_total{route=\"%s\",method=\"%s\",status=\"%s\"} %llu\n", route.c_str(),
                std::string(methodSlotName(m)).c_str(), statusSlotLabel(s).c_str(),
                static_cast<unsigned long long>(v));
      }
    }
  }
  renderHistogram(out, "portcullis_request_duration_seconds",
                  "Time from request head received to response complete.", workers, &WorkerMetrics::request_latency);
  renderHistogram(out, "portcullis_upstream_response_seconds",
                  "Time from request sent upstream to response head received.", workers,
                  &WorkerMetrics::upstream_latency);
  renderHistogram(out, "portcullis_proxy_added_seconds",
                  "Time the proxy adds before the backend sees a request: from request head received (routing, "
                  "filters, token check, rate limits, upstream connection) to the request head written upstream.",
                  workers, &WorkerMetrics::proxy_added_latency);

  auto counter = [&](const char* name, const char* help, uint64_t v) {
    appendF(out, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
            static_cast<unsigned long long>(v));
  };
  auto gauge = [&](const char* name, const char* help, int64_t v) {
    appendF(out, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", name, help, name, name, static_cast<long long>(v));
  };
  gauge("portcullis_connections_active", "Client connections currently open.",
        static_cast<int64_t>(sum(workers, [](const WorkerMetrics& w) { return w.connections_active.get(); })));
  counter("portcullis_connections_total", "Client connections accepted.",
          sum(workers, [](const WorkerMetrics& w) { return w.connections_total.get(); }));
  counter("portcullis_connections_refused_total", "Client connections closed at once by connection limits.",
          sum(workers, [](const WorkerMetrics& w) { return w.connections_refused.get(); }));
  gauge("portcullis_buffered_bytes", "Bytes of I/O buffers currently held by connections.",
        static_cast<int64_t>(sum(workers, [](const WorkerMetrics& w) { return w.buffered_bytes.get(); })));
  gauge("portcullis_overload_active", "Workers over their share of limits.buffer_memory_bytes.",
        static_cast<int64_t>(sum(workers, [](const WorkerMetrics& w) { return w.overload_active.get(); })));
  counter("portcullis_overload_episodes_total", "Times a worker went over its buffer memory watermark.",
          sum(workers, [](const WorkerMetrics& w) { return w.overload_episodes.get(); }));
  counter("portcullis_overload_refused_connections_total", "Connections closed at once while over the watermark.",
          sum(workers, [](const WorkerMetrics& w) { return w.overload_refused.get(); }));
  counter("portcullis_overload_paused_reads_total", "Connections whose reading paused while over the watermark.",
          sum(workers, [](const WorkerMetrics& w) { return w.overload_paused.get(); }));
  counter("portcullis_received_bytes_total", "Bytes received from clients.",
          sum(workers, [](const WorkerMetrics& w) { return w.bytes_in.get(); }));
  counter("portcullis_sent_bytes_total", "Bytes sent to clients.",
          sum(workers, [](const WorkerMetrics& w) { return w.bytes_out.get(); }));
  {
    std::map<std::pair<std::string, std::string>, uint64_t> refusals;
    for (const WorkerMetrics* w : workers) {
      w->refusals.forEach([&](std::string_view f, std::string_view r, uint64_t n) {
        refusals[{std::string(f), std::string(r)}] += n;
      });
    }
    out += "# HELP portcullis_refusals_total Requests the proxy answered itself, by refusing filter and reason.\n";
    out += "# TYPE portcullis_refusals_total counter\n";
    for (const auto& [key, n] : refusals) {
      appendF(out, "portcullis_refusals_total{filter=\"%s\",reason=\"%s\"} %llu\n", escapeLabel(key.first).c_str(),
              escapeLabel(key.second).c_str(), static_cast<unsigned long long>(n));
    }
  }
  counter("portcullis_auth_success_total", "Requests whose token passed the token check.",
          sum(workers, [](const WorkerMetrics& w) { return w.auth_success.get(); }));
  counter("portcullis_accept_errors_total", "Connections that could not be accepted (EMFILE, ENFILE, ...).",
          sum(workers, [](const WorkerMetrics& w) { return w.accept_errors.get(); }));
  counter("portcullis_parse_errors_total", "Requests refused because they could not be parsed.",
          sum(workers, [](const WorkerMetrics& w) { return w.parse_errors.get(); }));
  out += "# HELP portcullis_tls_handshakes_total Completed TLS handshakes, by kind.\n";
  out += "# TYPE portcullis_tls_handshakes_total counter\n";
  appendF(out, "portcullis_tls_handshakes_total{kind=\"full\"} %llu\n",
          static_cast<unsigned long long>(sum(workers, [](const WorkerMetrics& w) { return w.tls_handshakes_full.get(); })));
  appendF(out, "portcullis_tls_handshakes_total{kind=\"resumed\"} %llu\n",
          static_cast<unsigned long long>(sum(workers, [](const WorkerMetrics& w) { return w.tls_handshakes_resumed.get(); })));
  for (const char* side : {"tls", "upstream"}) {
    // "tls": handshakes on the HTTPS listener; "upstream": TLS to upstreams.
    std::map<std::string, uint64_t> reasons;
    for (const WorkerMetrics* w : workers) {
      w->tls_failure_reasons.forEach([&](std::string_view s, std::string_view r, uint64_t n) {
        if (s == side) reasons[std::string(r)] += n;
      });
    }
    const bool up = std::string_view(side) == "upstream";
    const char* name = up ? "portcullis_upstream_tls_failure_reasons_total" : "portcullis_tls_handshake_failure_reasons_total";
    appendF(out, "# HELP %s Failed TLS handshakes %s by BoringSSL reason.\n# TYPE %s counter\n", name,
            up ? "to upstream servers" : "on the HTTPS listener", name);
    for (const auto& [r, n] : reasons) {
      appendF(out, "%s{reason=\"%s\"} %llu\n", name, escapeLabel(r).c_str(), static_cast<unsigned long long>(n));
    }
  }
  out += "# HELP portcullis_upstream_tls_handshakes_total Completed TLS handshakes to upstream servers, by kind.\n";
  out += "# TYPE portcullis_upstream_tls_handshakes_total counter\n";
  appendF(out, "portcullis_upstream_tls_handshakes_total{kind=\"full\"} %llu\n",
          static_cast<unsigned long long>(sum(workers, [](const WorkerMetrics& w) { return w.upstream_tls_full.get(); })));
  appendF(out, "portcullis_upstream_tls_handshakes_total{kind=\"resumed\"} %llu\n",
          static_cast<unsigned long long>(sum(workers, [](const WorkerMetrics& w) { return w.upstream_tls_resumed.get(); })));
  counter("portcullis_tls_handshake_failures_total", "TLS handshakes that failed (protocol, cipher or certificate).",
          sum(workers, [](const WorkerMetrics& w) { return w.tls_handshake_failures.get(); }));
  gauge("portcullis_websocket_tunnels_active", "WebSocket tunnels currently open.",
        static_cast<int64_t>(sum(workers, [](const WorkerMetrics& w) { return w.tunnels_active.get(); })));
  counter("portcullis_websocket_tunnels_total", "WebSocket tunnels that ended.",
          sum(workers, [](const WorkerMetrics& w) { return w.tunnels_total.get(); }));
  out += "# HELP portcullis_websocket_tunnel_bytes_total Bytes carried by ended WebSocket tunnels, by direction.\n";
  out += "# TYPE portcullis_websocket_tunnel_bytes_total counter\n";
  appendF(out, "portcullis_websocket_tunnel_bytes_total{direction=\"to_upstream\"} %llu\n",
          static_cast<unsigned long long>(sum(workers, [](const WorkerMetrics& w) { return w.tunnel_bytes[0].get(); })));
  appendF(out, "portcullis_websocket_tunnel_bytes_total{direction=\"to_client\"} %llu\n",
          static_cast<unsigned long long>(sum(workers, [](const WorkerMetrics& w) { return w.tunnel_bytes[1].get(); })));
  counter("portcullis_upstream_retries_total", "Requests retried on a new upstream connection.",
          sum(workers, [](const WorkerMetrics& w) { return w.upstream_retries.get(); }));

  out += "# HELP portcullis_upstream_errors_total Upstream failures by kind.\n";
  out += "# TYPE portcullis_upstream_errors_total counter\n";
  for (size_t k = 0; k < static_cast<size_t>(UpstreamError::kCount); ++k) {
    uint64_t v = sum(workers, [&](const WorkerMetrics& w) { return w.upstream_errors[k].get(); });
    appendF(out, "portcullis_upstream_errors_total{kind=\"%s\"} %llu\n",
            std::string(upstreamErrorName(static_cast<UpstreamError>(k))).c_str(),
            static_cast<unsigned long long>(v));
  }
  out += "# HELP portcullis_upstream_healthy Active health check state of each upstream server (1 = healthy).\n";
  out += "# TYPE portcullis_upstream_healthy gauge\n";
  for (const auto& [name, healthy] : extra.upstream_health) {
    appendF(out, "portcullis_upstream_healthy{server=\"%s\"} %d\n", escapeLabel(name).c_str(), healthy ? 1 : 0);
  }
  if (!extra.encryption.empty()) {
    auto perKey = [&](const char* name, const char* help, uint64_t MetricsExtra::KeyUse::*field) {
      appendF(out, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
      for (const auto& k : extra.encryption) {
        appendF(out, "%s{key_id=\"%s\"} %llu\n", name, escapeLabel(k.key_id).c_str(),
                static_cast<unsigned long long>(k.*field));
      }
    };
    perKey("portcullis_uploads_encrypted_total", "Request bodies encrypted completely (pcx1), by master key id.",
           &MetricsExtra::KeyUse::uploads);
    perKey("portcullis_bytes_encrypted_total", "Plaintext bytes of completely encrypted bodies, by master key id.",
           &MetricsExtra::KeyUse::bytes);
    perKey("portcullis_uploads_encryption_aborted_total",
           "Encrypted bodies that never ended (client gone, refused, upstream failed), by master key id.",
           &MetricsExtra::KeyUse::aborted);
  }
  if (extra.ratelimit_enabled) {
    out += "# HELP portcullis_ratelimit_allowed_total Requests a rate limit checked and allowed, by limit kind "
           "(refused ones: portcullis_refusals_total{filter=\"rate_limit\"}).\n";
    out += "# TYPE portcullis_ratelimit_allowed_total counter\n";
    const char* kinds[] = {"ip", "token", "route"};
    for (size_t k = 0; k < 3; ++k) {
      appendF(out, "portcullis_ratelimit_allowed_total{kind=\"%s\"} %llu\n", kinds[k],
              static_cast<unsigned long long>(sum(workers, [k](const WorkerMetrics& w) { return w.rate_allowed[k].get(); })));
    }
    counter("portcullis_ratelimit_fallbacks_total",
            "Rate-limit decisions made by a shard's shared overflow cell (table full).", extra.ratelimit_fallbacks);
    counter("portcullis_ratelimit_bans_total", "Brute-force bans started.", extra.ratelimit_bans_started);
    gauge("portcullis_ratelimit_bans_active", "Client IPs banned right now.",
          static_cast<int64_t>(extra.ratelimit_bans_active));
    gauge("portcullis_ratelimit_keys", "Rate-limit table cells holding live state.",
          static_cast<int64_t>(extra.ratelimit_keys));
    gauge("portcullis_ratelimit_cells", "Rate-limit table capacity in cells (fixed at start).",
          static_cast<int64_t>(extra.ratelimit_cells));
  }
  if (extra.audit_enabled) {
    counter("portcullis_audit_records_written_total", "Audit records written (hash-chained).", extra.audit_written);
    counter("portcullis_audit_overflowed_total",
            "Audit events that found the queue full and took the overflow path (never dropped).",
            extra.audit_overflowed);
    gauge("portcullis_audit_queue_depth", "Audit events waiting to be written.",
          static_cast<int64_t>(extra.audit_queue_depth));
  }
  if (extra.detect_enabled || extra.audit_enabled) {
    // The detector's kinds with [detect]; audit_tamper with the audit log.
    out += "# HELP portcullis_alerts_total Alerts raised, by kind.\n";
    out += "# TYPE portcullis_alerts_total counter\n";
    for (size_t k = 0; k < kAlertKinds; ++k) {
      const auto kind = static_cast<AlertKind>(k);
      if (!(kind == AlertKind::kAuditTamper ? extra.audit_enabled : extra.detect_enabled)) continue;
      appendF(out, "portcullis_alerts_total{kind=\"%s\"} %llu\n", std::string(alertKindName(kind)).c_str(),
              static_cast<unsigned long long>(extra.alerts[k]));
    }
  }
  if (extra.detect_enabled) {
    counter("portcullis_detect_fallbacks_total", "Detector events for keys that found no table cell.",
            extra.detect_fallbacks);
  }
  if (extra.webhook_enabled) {
    counter("portcullis_alert_webhook_sent_total", "Alerts the webhook collector accepted (2xx).", extra.webhook_sent);
    counter("portcullis_alert_webhook_failed_total", "Alerts given up after every retry failed.",
            extra.webhook_failed);
    counter("portcullis_alert_webhook_dropped_total", "Alerts not queued for the webhook (queue full).",
            extra.webhook_dropped);
  }
  if (extra.syslog_enabled) {
    counter("portcullis_syslog_sent_total", "Audit records sent to the syslog collector.", extra.syslog_sent);
    counter("portcullis_syslog_dropped_total",
            "Audit records not sent to the syslog collector (queue full); the audit file keeps them.",
            extra.syslog_dropped);
  }
  counter("portcullis_log_lines_written_total", "Access log lines written.", extra.log_written);
  counter("portcullis_log_lines_dropped_total", "Access log lines dropped because the queue was full.",
          extra.log_dropped);
  gauge("portcullis_log_queue_depth", "Access log lines waiting to be written.",
        static_cast<int64_t>(extra.log_queue_depth));
  counter("portcullis_config_reloads_total", "Successful configuration reloads.", extra.config_reloads);
  counter("portcullis_config_reload_failures_total", "Refused configuration reloads.",
          extra.config_reload_failures);
  gauge("portcullis_config_generation", "Generation of the running configuration (1 at start, +1 per applied change: a reload, a "
        "token store or keyring re-read, a token refused in memory).",
        static_cast<int64_t>(extra.config_generation));
  gauge("portcullis_config_generation_applied",
        "Oldest configuration generation a worker still takes new requests under (equals "
        "portcullis_config_generation once every worker has taken up a reload).",
        static_cast<int64_t>(extra.config_generation_applied));
  counter("portcullis_file_watch_events_total",
          "Change notifications (inotify) for the token store, keyring and TLS files: one per batch of events naming them.",
          extra.file_watch_events);
  return out;
}

}  // namespace portcullis
