#include "proxy/fixed_settings.h"

namespace portcullis {

std::vector<std::string> keysNeedingRestart(const FixedSettings& running, const Config& next) {
  std::vector<std::string> keys;
  auto differs = [&keys](bool changed, const char* key) {
    if (changed) keys.emplace_back(key);
  };
  if (running.started) {
    const ServerConfig& was = running.started->server;
    const ServerConfig& now = next.server;
    differs(now.workers != was.workers, "server.workers");
    differs(now.cpu_affinity != was.cpu_affinity || now.cpu_affinity_auto != was.cpu_affinity_auto,
            "server.cpu_affinity");
    differs(now.worker_priority != was.worker_priority, "server.worker_priority");
    differs(now.listen_http.str() != was.listen_http.str(), "server.listen_http");
    differs(now.listen_https.str() != was.listen_https.str(), "server.listen_https");
    differs(now.admin_listen.str() != was.admin_listen.str(), "server.admin_listen");
  }
  const bool uses_rate_table = next.rate_limit.configured() || next.rate_limit.any_route_rate;
  differs(uses_rate_table && running.rate_limit_keys && *running.rate_limit_keys != next.rate_limit.max_keys,
          "rate_limit.max_keys");
  differs(running.started && next.limits.max_header_bytes > running.max_header_bytes, "limits.max_header_bytes");
  if (running.started) {
    const LogConfig& was = running.started->log;
    differs(next.log.access != was.access, "log.access");
    differs(next.encryption.configured() && (!running.audit_running || next.log.audit != was.audit), "log.audit");
    differs(next.log.syslog != was.syslog, "log.syslog");
  }
  if (running.detect && next.detect.thresholds.enabled) {
    const DetectConfig& was = *running.detect;
    const DetectConfig& now = next.detect.thresholds;
    differs(now.auth_failures_count != was.auth_failures_count ||
                now.auth_failures_window_s != was.auth_failures_window_s,
            "detect.auth_failures");
    differs(now.forbidden_count != was.forbidden_count || now.forbidden_window_s != was.forbidden_window_s,
            "detect.forbidden");
    differs(now.not_found_count != was.not_found_count || now.not_found_window_s != was.not_found_window_s,
            "detect.not_found");
    differs(now.rate_factor != was.rate_factor, "detect.rate_spike_factor");
    differs(now.bytes_factor != was.bytes_factor, "detect.bytes_spike_factor");
  }
  differs(running.started && next.detect.alert_webhook != running.started->detect.alert_webhook,
          "detect.alert_webhook");
  if (running.detect && next.detect.thresholds.enabled) {
    const DetectConfig& was = *running.detect;
    const DetectConfig& now = next.detect.thresholds;
    differs(now.cooldown_s != was.cooldown_s, "detect.cooldown_s");
    differs(now.interval_s != was.interval_s, "detect.interval_s");
    differs(now.rate_min != was.rate_min, "detect.rate_min");
    differs(now.bytes_min != was.bytes_min, "detect.bytes_min");
    differs(now.warmup_intervals != was.warmup_intervals, "detect.warmup_intervals");
    differs(now.capacity_keys != was.capacity_keys, "detect.max_keys");
  }
  return keys;
}

}  // namespace portcullis
