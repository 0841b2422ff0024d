// Security events (SPEC §8): what a finished request means for the audit log
// and the detector, and where alerts go.
//
// reportRequest() is called once per request by the connection, after the
// response (or local reply) is complete. From the request's outcome it
// records, without locks and without blocking:
//   token_check 401, reason "revoked"   -> audit token.revoked_used
//   token_check 401, reason "expired"   -> audit token.expired_used
//   token_check 401, any other reason   -> audit auth.failure {reason}
//     (all three)                        -> detector authFailure(ip)
//   token_check 403                     -> audit authz.forbidden, detector forbidden(ip, token)
//   a token that passed the check       -> audit auth.success, detector tokenRequest(token, bytes)
//   no route matched (404)              -> detector notFound(ip)
// Every audit record carries request_id, ip, method and path (normalised, no
// query string); token records the token id (never the token) and account.
//
// AlertDispatcher receives the detector's alerts on the thread that caused
// them and fans each out to: an `alert` audit record, one stderr log line,
// and the webhook (a JSON object, queued; never blocks). The audit log's own
// audit_tamper alerts, already recorded, get the log line and the webhook.
#pragma once

#include <atomic>
#include <cstdint>
#include <string_view>

#include "proxy/detect.h"

namespace portcullis {

class AuditLog;
class AlertWebhook;
class RequestContext;
struct Snapshot;

void reportRequest(const Snapshot& snap, const RequestContext& ctx, std::string_view method, std::string_view path,
                   int status, uint64_t bytes_out);

// CLOCK_MONOTONIC in ns (the detector's clock).
uint64_t monotonicNowNs();

class AlertDispatcher final : public AlertSink {
 public:
  // Either may be null (not configured). Both must outlive the dispatcher's use.
  void attach(AuditLog* audit, AlertWebhook* webhook) {
    audit_ = audit;
    webhook_ = webhook;
  }
  void onAlert(const Alert& a) override;

  // An alert whose `alert` audit record its source has already written: the
  // audit log's audit_tamper records (AuditLog::startAlerts()). `members` are
  // that record's members after "event", "kind" first. Raised like a
  // detector alert less the audit record: one stderr log line and the
  // webhook (queued: a webhook not started yet sends it once it starts), and
  // counted in recordedAlerts(kind). Thread-safe; never blocks.
  void onRecordedAlert(AlertKind kind, std::string_view members);
  // Alerts of `kind` raised through onRecordedAlert (the Detector counts its
  // own: Detector::alertsRaised). Relaxed read.
  uint64_t recordedAlerts(AlertKind kind) const {
    return kind < AlertKind::kCount ? recorded_[static_cast<size_t>(kind)].load(std::memory_order_relaxed) : 0;
  }

 private:
  // The log line and the webhook POST of an alert of `kind` with `members`.
  void logAndPost(std::string_view kind, std::string_view members);

  AuditLog* audit_ = nullptr;
  AlertWebhook* webhook_ = nullptr;
  std::atomic<uint64_t> recorded_[kAlertKinds] = {};
};

}  // namespace portcullis
