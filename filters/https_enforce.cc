#include "filters/https_enforce.h"

#include <llhttp.h>
#include <uv.h>

#include <cctype>
#include <cstdio>
#include <ctime>
#include <functional>

#include "proxy/audit_log.h"
#include "proxy/auth_state.h"
#include "proxy/headers.h"
#include "proxy/snapshot.h"
#include "proxy/token.h"

namespace portcullis {

namespace {

// A valid token sent over plaintext is exposed: the server is told at once
// (Snapshot::token_revoked), so every worker refuses it in memory whatever
// happens to the store; then it is revoked in the store (on libuv's thread
// pool: an event loop never writes files; waiting at most
// kProxyStoreLockWaitMs for another writer), and the server hears how that
// went: a written store is re-read, a failed write audited and retried by
// the server every second.

void revokeExposedToken(RequestContext& ctx, const RequestHead& head) {
  const Snapshot* s = ctx.snapshot;
  if (s == nullptr || !s->auth || !s->config->https.revoke_tokens_seen_in_plaintext || ctx.loop == nullptr) return;
  const Header* h = head.find(HeaderId::kAuthorization);
  if (h == nullptr) return;
  ParsedToken token;
  if (parseAuthorization(h->value, token) != TokenError::kOk) return;
  const AuthState& a = *s->auth;
  const int32_t idx = a.tokens->indexOf(token.id);
  if (idx < 0) return;
  const TokenRecord& rec = a.tokens->records()[static_cast<size_t>(idx)];
  const TokenVerdict v = TokenTable::checkRecord(rec, hashSecret(token.secret), static_cast<int64_t>(std::time(nullptr)),
                                                 a.last_use->get(idx), a.inactive_expiry_s);
  if (v != TokenVerdict::kOk) return;  // only a working credential needs revoking
  struct Job {
    uv_work_t req;
    std::string store;
    std::string id;
    bool ok = false;
    std::string error;
    std::function<void(const std::string&, bool)> revoked;
    AuditLog* audit = nullptr;
    std::string request_id;
  };
  auto* job = new Job;
  job->req.data = job;
  job->store = s->config->auth.token_store;
  job->id = rec.id;
  job->revoked = s->token_revoked;
  job->audit = s->audit;
  job->request_id = std::string(ctx.request_id);
  std::fprintf(stderr, "portcullis: token.plaintext_revoked token_id=%s remote_ip=%.*s\n", job->id.c_str(),
               static_cast<int>(ctx.remote_ip.size()), ctx.remote_ip.data());
  if (s->audit != nullptr) {
    AuditFields f;
    f.str("request_id", ctx.request_id).str("ip", ctx.remote_ip).str("token_id", rec.id).str("account", rec.account);
    s->audit->record("token.plaintext_revoked", f.take());
  }
  if (job->revoked) job->revoked(job->id, false);  // refused in memory now
  uv_queue_work(
      ctx.loop, &job->req,
      [](uv_work_t* r) {
        auto* j = static_cast<Job*>(r->data);
        j->ok = revokeToken(j->store, j->id, j->error, nullptr, kProxyStoreLockWaitMs);
      },
      [](uv_work_t* r, int) {
        auto* j = static_cast<Job*>(r->data);
        if (!j->ok) {
          std::fprintf(stderr, "portcullis: cannot revoke token %s in the store: %s\n", j->id.c_str(),
                       j->error.c_str());
          if (j->audit != nullptr) {
            AuditFields f;
            f.str("request_id", j->request_id).str("token_id", j->id).str("error", j->error);
            j->audit->record("token.revocation_pending", f.take());
          }
        }
        if (j->ok && j->revoked) j->revoked(j->id, true);
        delete j;
      });
}

class HttpsEnforce final : public Filter {
 public:
  explicit HttpsEnforce(const HttpsEnforceFactory* f) : f_(f) {}

  FilterStatus onRequestHead(RequestContext& ctx, RequestHead& head) override {
    if (ctx.secure) return FilterStatus::kContinue;
    if (ctx.trusted_peer) {
      const Header* proto = head.find(HeaderId::kXForwardedProto);
      if (proto != nullptr && equalsIgnoreCase(proto->value, "https")) {
        ctx.secure = true;
        return FilterStatus::kContinue;
      }
    }
    revokeExposedToken(ctx, head);
    const bool safe = head.method == HTTP_GET || head.method == HTTP_HEAD;
    if (f_->mode() == HttpsConfig::Plaintext::kRedirect && safe) {
      std::string location;
      if (!f_->redirectLocation(head, location)) {
        ctx.respond(400, "bad_request", "https_enforce", "no valid host for the https redirect");
        return FilterStatus::kRespond;
      }
      ctx.respond(308, "https_required", "https_enforce", "plaintext request redirected");
      ctx.local_reply.headers.push_back({"Location", ctx.arena().copy(location)});
      return FilterStatus::kRespond;
    }
    ctx.respond(403, "https_required", "https_enforce", "plaintext request refused");
    return FilterStatus::kRespond;
  }

 private:
  const HttpsEnforceFactory* f_;
};

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

bool isValidHostName(std::string_view name) {
  if (name.empty() || name.size() > 253) return false;
  size_t label = 0;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    if (c == '.') {
      if (label == 0 || name[i - 1] == '-') return false;
      label = 0;
      continue;
    }
    const bool ok = std::isalnum(static_cast<unsigned char>(c)) || (c == '-' && label > 0);
    if (!ok || ++label > 63) return false;
  }
  return label > 0 && name.back() != '-';
}

HttpsEnforceFactory::HttpsEnforceFactory(const Config& config)
    : mode_(config.https.plaintext), https_port_(config.server.listen_https.port) {
  for (const std::string& n : config.server.names) names_.push_back(lower(n));
}

Filter* HttpsEnforceFactory::create(RequestContext& ctx) const {
  // Only plaintext requests have anything to do here.
  if (mode_ == HttpsConfig::Plaintext::kAllow || (ctx.secure && !ctx.trusted_peer)) return nullptr;
  return ctx.arena().make<HttpsEnforce>(this);
}

bool HttpsEnforceFactory::redirectLocation(const RequestHead& head, std::string& out) const {
  std::string host;
  if (const Header* h = head.find(HeaderId::kHost)) {
    std::string_view v = h->value;
    size_t colon = v.rfind(':');
    if (colon != std::string_view::npos && v.find(']') == std::string_view::npos) v = v.substr(0, colon);
    host = lower(v);
  }
  if (!names_.empty()) {
    bool listed = false;
    for (const std::string& n : names_) listed = listed || n == host;
    if (!listed) host = names_[0];
  } else if (!isValidHostName(host)) {
    return false;
  }
  out = "https://" + host;
  if (https_port_ != 0 && https_port_ != 443) out += ":" + std::to_string(https_port_);
  // Only an origin-form target is carried over ("*" and absolute forms
  // become "/"), so the redirect can never name another host.
  if (!head.target.empty() && head.target[0] == '/') {
    out.append(head.target.data(), head.target.size());
  } else {
    out.push_back('/');
  }
  return true;
}

}  // namespace portcullis
