// Token authentication and role-based authorisation (SPEC §3 [auth] [[role]],
// §4, §5, §6). Runs on routes with auth = true.
//
// - No Authorization header: 401 with "WWW-Authenticate: Bearer".
// - A malformed, unknown, wrong, revoked, expired, rotated-out or inactive
//   token: 401 with `WWW-Authenticate: Bearer error="invalid_token"`; the
//   access log's reason names which, the client is told nothing more.
// - A valid token none of whose roles allows the method and normalised path
//   (with {account} bound to the token's account): 403 forbidden.
// - Allowed: the backend gets the account header, X-Portcullis-Token-Id and
//   X-Portcullis-Roles from the token (client copies, and the client's
//   Authorization unless auth.forward_authorization, are removed on every
//   route by Connection::editRequestHead). The token's last use is recorded
//   for the inactivity expiry.
// Checked on every request, so a revocation also stops an open connection.
#pragma once

#include "filters/filter.h"

namespace portcullis {

class TokenCheckFactory : public FilterFactory {
 public:
  std::string_view name() const override { return "token_check"; }
  Filter* create(RequestContext& ctx) const override;
};

}  // namespace portcullis
