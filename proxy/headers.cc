#include "proxy/headers.h"

namespace portcullis {

namespace {

inline char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

struct Entry {
  std::string_view name;  // lower case
  HeaderId id;
};

// Grouped by length; the table is tiny so a linear scan within one length is
// cheaper than hashing.
constexpr Entry kTable[] = {
    {"te", HeaderId::kTe},
    {"host", HeaderId::kHost},
    {"expect", HeaderId::kExpect},
    {"server", HeaderId::kServer},
    {"trailer", HeaderId::kTrailer},
    {"upgrade", HeaderId::kUpgrade},
    {"keep-alive", HeaderId::kKeepAlive},
    {"connection", HeaderId::kConnection},
    {"x-request-id", HeaderId::kXRequestId},
    {"content-type", HeaderId::kContentType},
    {"authorization", HeaderId::kAuthorization},
    {"http2-settings", HeaderId::kHttp2Settings},
    {"content-length", HeaderId::kContentLength},
    {"x-forwarded-for", HeaderId::kXForwardedFor},
    {"proxy-connection", HeaderId::kProxyConnection},
    {"x-forwarded-proto", HeaderId::kXForwardedProto},
    {"transfer-encoding", HeaderId::kTransferEncoding},
    {"proxy-authenticate", HeaderId::kProxyAuthenticate},
    {"proxy-authorization", HeaderId::kProxyAuthorization},
};

}  // namespace

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

HeaderId lookupHeader(std::string_view name) {
  const size_t n = name.size();
  if (n < 2 || n > 19) {
    if (n > 13 && equalsIgnoreCase(name.substr(0, 13), "x-portcullis-")) return HeaderId::kXPortcullis;
    return HeaderId::kOther;
  }
  for (const Entry& e : kTable) {
    if (e.name.size() == n && equalsIgnoreCase(name, e.name)) return e.id;
  }
  if (n > 13 && equalsIgnoreCase(name.substr(0, 13), "x-portcullis-")) return HeaderId::kXPortcullis;
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
