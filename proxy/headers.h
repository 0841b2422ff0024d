// Known header names mapped to an enum once at parse time, so filters and the
// proxy compare integers instead of strings on the hot path.
#pragma once

#include <cstdint>
#include <string_view>

namespace portcullis {

enum class HeaderId : uint8_t {
  kOther = 0,
  kHost,
  kContentLength,
  kTransferEncoding,
  kConnection,
  kKeepAlive,
  kProxyConnection,
  kTe,
  kTrailer,
  kUpgrade,
  kProxyAuthenticate,
  kProxyAuthorization,
  kHttp2Settings,
  kExpect,
  kAuthorization,
  kContentType,
  kXForwardedFor,
  kXForwardedProto,
  kXRequestId,
  kServer,
  kXPortcullis,  // any header whose name starts with "X-Portcullis-"
  kStrictTransportSecurity,
  kCount
};

// Case-insensitive lookup of a header name. Names not in the table map to
// kOther. Runs in O(length) with no allocation.
HeaderId lookupHeader(std::string_view name);

// True for the hop-by-hop headers of RFC 9110 §7.6.1 plus Proxy-Connection,
// Keep-Alive and HTTP2-Settings: never forwarded in either direction.
bool isHopByHop(HeaderId id);

// ASCII case-insensitive equality.
bool equalsIgnoreCase(std::string_view a, std::string_view b);

// True if the comma-separated header value `list` contains `token`
// (case-insensitive, optional whitespace around elements).
bool headerListContains(std::string_view list, std::string_view token);

}  // namespace portcullis
