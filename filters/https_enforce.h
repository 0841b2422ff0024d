// HTTPS enforcement (SPEC §3 [https], issue "HTTPS only"): plaintext HTTP
// never carries an API call to a backend.
//
// On a request that did not arrive over TLS: with plaintext = "redirect",
// GET and HEAD get 308 to the same path and query on https (the host is the
// request's Host name only if it is one of server.names, else names[0]; with
// no names configured, the Host header's name after a syntax check; never an
// open redirect), anything else 403 https_required; with "reject", 403 for
// all. A request from one of https.trusted_proxies that says
// "X-Forwarded-Proto: https" counts as HTTPS (ctx.secure is set).
// A valid token on a refused plaintext request is revoked in the token store
// at once (https.revoke_tokens_seen_in_plaintext, default on).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "filters/filter.h"
#include "proxy/config.h"

namespace portcullis {

class HttpsEnforceFactory : public FilterFactory {
 public:
  HttpsEnforceFactory(const Config& config);
  std::string_view name() const override { return "https_enforce"; }
  Filter* create(RequestContext& ctx) const override;

  // Builds the redirect target for `head` into `out`; false if the request
  // has no usable host (then the caller answers 400).
  bool redirectLocation(const RequestHead& head, std::string& out) const;

  HttpsConfig::Plaintext mode() const { return mode_; }

 private:
  HttpsConfig::Plaintext mode_;
  std::vector<std::string> names_;  // lower-case
  uint16_t https_port_;             // 0 = no HTTPS listener configured
};

// Strict syntax check of a Host header value's name part (RFC 3986 reg-name
// of LDH labels, or an IPv4 literal); `name` is without port.
bool isValidHostName(std::string_view name);

}  // namespace portcullis
