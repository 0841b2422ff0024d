#include <string>

#include "proxy/config.h"

namespace portcullis {

bool checkSupported(const Config& config, std::string& error) {
  std::string out;
  for (size_t i = 0; i < config.routes.size(); ++i) {
    const RouteConfig& r = config.routes[i];
    const std::string k = "route[" + std::to_string(i) + "].";
    if (r.auth && !config.auth.configured()) {
      out += config.path + ":" + std::to_string(r.line) + ": " + k +
             "auth: needs an [auth] section with token_store (or auth = false for a public route)\n";
    }
    if (r.encrypt_body && !config.encryption.configured()) {
      out += config.path + ":" + std::to_string(r.line) + ": " + k +
             "encrypt_body: needs an [encryption] section with keyring\n";
    }
  }
  if (config.log.audit_explicit && !config.encryption.configured()) {
    out += config.path + ": log.audit: needs an [encryption] keyring (the audit MAC key is derived from it)\n";
  }
  if (out.empty()) return true;
  out.pop_back();
  error = out;
  return false;
}

}  // namespace portcullis

#include "proxy/auth_state.h"
#include "proxy/keyring.h"
#include "proxy/supported.h"
#include "proxy/tls.h"

namespace portcullis {

bool checkNamedFiles(const Config& config, std::string& error) {
  if (config.tls.configured() && !TlsContext::create(config.tls, error)) return false;
  for (const UpstreamConfig& u : config.upstreams) {
    if (u.tls && !UpstreamTlsContext::create(u, error)) return false;
  }
  if (config.auth.configured() && !buildAuthState(config, nullptr, {}, error)) return false;
  if (config.encryption.configured() && !LocalKeyring::load(config.encryption.keyring, error)) return false;
  return true;
}

}  // namespace portcullis
