#include "filters/token_check.h"

#include <ctime>

#include "proxy/auth_state.h"
#include "proxy/headers.h"
#include "proxy/snapshot.h"
#include "proxy/token.h"

namespace portcullis {

namespace {

constexpr std::string_view kChallenge = "Bearer";
constexpr std::string_view kInvalidChallenge = "Bearer error=\"invalid_token\"";

class TokenCheck final : public Filter {
 public:
  explicit TokenCheck(const AuthState* auth) : auth_(auth) {}

  FilterStatus onRequestHead(RequestContext& ctx, RequestHead& head) override {
    if (auth_ == nullptr) return unauthorized(ctx, kChallenge, "no token store");  // fail closed
    const Header* h = head.find(HeaderId::kAuthorization);
    if (h == nullptr) return unauthorized(ctx, kChallenge, "no token");
    ParsedToken token;
    TokenError perr = parseAuthorization(h->value, token);
    if (perr != TokenError::kOk) return unauthorized(ctx, kInvalidChallenge, tokenErrorName(perr));
    const int32_t idx = auth_->tokens->indexOf(token.id);
    if (idx < 0) return unauthorized(ctx, kInvalidChallenge, "unknown");
    const TokenRecord& rec = auth_->tokens->records()[static_cast<size_t>(idx)];
    const int64_t now = static_cast<int64_t>(std::time(nullptr));
    const TokenVerdict v = TokenTable::checkRecord(rec, hashSecret(token.secret), now, auth_->last_use->get(idx),
                                                   auth_->inactive_expiry_s);
    ctx.token_id = rec.id;  // public; lets the audit log name a revoked or expired token
    if (v != TokenVerdict::kOk) return unauthorized(ctx, kInvalidChallenge, tokenVerdictName(v));
    ctx.account = rec.account;
    if (!auth_->rbac->allowed(auth_->token_roles[static_cast<size_t>(idx)], head.method_name, head.path,
                              rec.account)) {
      ctx.respond(403, "forbidden", "token_check", "no role allows this request");
      return FilterStatus::kRespond;
    }
    auth_->last_use->record(idx, now);
    ctx.token_index = idx;

    // Identity for the backend comes from the token only. The client's
    // Authorization and any copy of the account header are stripped on
    // every route by Connection::editRequestHead (SPEC §3, §6).
    head.add(auth_->account_header, rec.account);
    head.add("X-Portcullis-Token-Id", rec.id);
    head.add("X-Portcullis-Roles", auth_->token_roles_header[static_cast<size_t>(idx)]);
    return FilterStatus::kContinue;
  }

 private:
  FilterStatus unauthorized(RequestContext& ctx, std::string_view challenge, std::string_view reason) {
    ctx.respond(401, "unauthorized", "token_check", reason);
    ctx.local_reply.headers.push_back({"WWW-Authenticate", challenge});
    return FilterStatus::kRespond;
  }
  const AuthState* auth_;
};

}  // namespace

Filter* TokenCheckFactory::create(RequestContext& ctx) const {
  if (ctx.route == nullptr || !ctx.route->auth) return nullptr;
  const AuthState* auth = ctx.snapshot != nullptr ? ctx.snapshot->auth.get() : nullptr;
  return ctx.arena().make<TokenCheck>(auth);
}

}  // namespace portcullis
