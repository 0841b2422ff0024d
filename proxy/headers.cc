#include "proxy/headers.h"

namespace portcullis {

namespace {

inline char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

}  // namespace

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

// Every header of every message goes through here (both directions), so it
// dispatches on the length and first letter before comparing: at most one
// full comparison per name, none for most unknown names.
HeaderId lookupHeader(std::string_view name) {
  const size_t n = name.size();
  if (n < 2) return HeaderId::kOther;
  const char c0 = lower(name[0]);
  auto is = [&](std::string_view lc, HeaderId id) {
    return c0 == lc[0] && equalsIgnoreCase(name, lc) ? id : HeaderId::kOther;
  };
  HeaderId id = HeaderId::kOther;
  switch (n) {
    case 2: id = is("te", HeaderId::kTe); break;
    case 4: id = is("host", HeaderId::kHost); break;
    case 6: id = c0 == 'e' ? is("expect", HeaderId::kExpect) : is("server", HeaderId::kServer); break;
    case 7: id = c0 == 't' ? is("trailer", HeaderId::kTrailer) : is("upgrade", HeaderId::kUpgrade); break;
    case 10: id = c0 == 'k' ? is("keep-alive", HeaderId::kKeepAlive) : is("connection", HeaderId::kConnection); break;
    case 12: id = c0 == 'x' ? is("x-request-id", HeaderId::kXRequestId) : is("content-type", HeaderId::kContentType); break;
    case 13: id = is("authorization", HeaderId::kAuthorization); break;
    case 14: id = c0 == 'h' ? is("http2-settings", HeaderId::kHttp2Settings) : is("content-length", HeaderId::kContentLength); break;
    case 15: id = is("x-forwarded-for", HeaderId::kXForwardedFor); break;
    case 16: id = is("proxy-connection", HeaderId::kProxyConnection); break;
    case 17: id = c0 == 'x' ? is("x-forwarded-proto", HeaderId::kXForwardedProto) : is("transfer-encoding", HeaderId::kTransferEncoding); break;
    case 18: id = is("proxy-authenticate", HeaderId::kProxyAuthenticate); break;
    case 19: id = is("proxy-authorization", HeaderId::kProxyAuthorization); break;
    default: break;
  }
  if (id != HeaderId::kOther) return id;
  if (n > 13 && c0 == 'x' && equalsIgnoreCase(name.substr(0, 13), "x-portcullis-")) return HeaderId::kXPortcullis;
  return HeaderId::kOther;
}

bool isHopByHop(HeaderId id) {
  switch (id) {
    case HeaderId::kConnection:
    case HeaderId::kKeepAlive:
    case HeaderId::kProxyConnection:
    case HeaderId::kTe:
    case HeaderId::kTrailer:
    case HeaderId::kTransferEncoding:
    case HeaderId::kUpgrade:
    case HeaderId::kProxyAuthenticate:
    case HeaderId::kProxyAuthorization:
    case HeaderId::kHttp2Settings:
      return true;
    default:
      return false;
  }
}

bool headerListContains(std::string_view list, std::string_view token) {
  size_t i = 0;
  while (i <= list.size()) {
    size_t comma = list.find(',', i);
    if (comma == std::string_view::npos) comma = list.size();
    std::string_view elem = list.substr(i, comma - i);
    while (!elem.empty() && (elem.front() == ' ' || elem.front() == '\t')) elem.remove_prefix(1);
    while (!elem.empty() && (elem.back() == ' ' || elem.back() == '\t')) elem.remove_suffix(1);
    if (equalsIgnoreCase(elem, token)) return true;
    i = comma + 1;
  }
  return false;
}

}  // namespace portcullis
