#include "proxy/security_events.h"

#include <time.h>

#include <cmath>
#include <string>

#include "filters/request_context.h"
#include "proxy/access_log.h"
#include "proxy/alert_webhook.h"
#include "proxy/audit_log.h"
#include "proxy/server.h"
#include "proxy/snapshot.h"

namespace portcullis {

uint64_t monotonicNowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

namespace {

// The members are copied into the loop's audit stage and formatted as JSON
// by the audit writer.
void auditRequest(AuditLog* audit, std::string_view event, const RequestContext& ctx, std::string_view method,
                  std::string_view path, std::string_view reason) {
  if (audit == nullptr) return;
  audit->recordRequest(event, {ctx.request_id, ctx.remote_ip, method, path, ctx.token_id, ctx.account, reason});
}

}  // namespace

void reportRequest(const Snapshot& snap, const RequestContext& ctx, std::string_view method, std::string_view path,
                   int status, uint64_t bytes_out) {
  AuditLog* audit = snap.audit;
  Detector* detector = snap.detector;
  if (audit == nullptr && detector == nullptr) return;
  const bool by_token_check = ctx.rejected_by == "token_check";
  if (by_token_check && status == 401) {
    std::string_view event = ctx.reason == "revoked"   ? "token.revoked_used"
                             : ctx.reason == "expired" ? "token.expired_used"
                                                       : "auth.failure";
    auditRequest(audit, event, ctx, method, path, ctx.reason);
    if (detector != nullptr) detector->authFailure(ctx.remote_ip, monotonicNowNs());
  } else if (by_token_check && status == 403) {
    auditRequest(audit, "authz.forbidden", ctx, method, path, ctx.reason);
    if (detector != nullptr) detector->forbidden(ctx.remote_ip, ctx.token_id, monotonicNowNs());
  } else if (!ctx.token_id.empty()) {
    auditRequest(audit, "auth.success", ctx, method, path, {});
    if (detector != nullptr) detector->tokenRequest(ctx.token_id, bytes_out, monotonicNowNs());
  }
  if (ctx.route == nullptr && status == 404 && detector != nullptr) detector->notFound(ctx.remote_ip, monotonicNowNs());
}

void AlertDispatcher::onAlert(const Alert& a) {
  AuditFields f;
  f.str("kind", a.kind);
  if (!a.ip.empty()) f.str("ip", a.ip);
  if (!a.token_id.empty()) f.str("token_id", a.token_id);
  f.unum("count", a.count).unum("threshold", a.threshold).unum("window_s", a.window_s);
  if (a.baseline > 0) f.unum("baseline", static_cast<uint64_t>(std::round(a.baseline)));
  logAndPost(a.kind, f.view());
  if (audit_ != nullptr) audit_->record("alert", f.take());
}

void AlertDispatcher::onRecordedAlert(AlertKind kind, std::string_view members) {
  if (kind >= AlertKind::kCount) return;
  recorded_[static_cast<size_t>(kind)].fetch_add(1, std::memory_order_relaxed);
  logAndPost(alertKindName(kind), members);
}

void AlertDispatcher::logAndPost(std::string_view kind, std::string_view members) {
  std::string line = "alert " + std::string(kind) + " {" + std::string(members) + "}";
  logLine("warn", line);
  if (webhook_ != nullptr && webhook_->enabled()) {
    std::string body = "{\"event\":\"alert\",\"ts\":\"";
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    appendRfc3339Micros(static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000, body);
    body += "\",";
    body += members;
    body += "}";
    webhook_->post(std::move(body));
  }
}

}  // namespace portcullis
