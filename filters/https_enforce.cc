#include "filters/https_enforce.h"

#include <llhttp.h>

#include <cctype>

#include "proxy/headers.h"

namespace portcullis {

namespace {

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
