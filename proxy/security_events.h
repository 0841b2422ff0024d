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
// and the webhook (a JSON object, queued; never blocks).
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

 private:
  AuditLog* audit_ = nullptr;
  AlertWebhook* webhook_ = nullptr;
};

}  // namespace portcullis
