#include "proxy/headers.h"

#include <bit>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

namespace portcullis {

namespace {

inline char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

// Known names are compared a machine word at a time: a lowercase literal's
// bytes and a mask with 0x20 on its letters, so (bytes | mask) == literal
// holds exactly when each letter matches in either case and every other
// byte matches as is. Words are little-endian loads; the last word of a
// name overlaps the one before it instead of reading past the name.
static_assert(std::endian::native == std::endian::little, "header name words assume a little-endian load");

template <size_t N>
struct Lit {
  char s[N];
  constexpr Lit(const char (&a)[N]) {  // NOLINT(google-explicit-constructor): used as a template argument
    for (size_t i = 0; i < N; ++i) s[i] = a[i];
  }
};

constexpr uint64_t litWord(const char* lit, size_t at, size_t len, bool mask) {
  uint64_t v = 0;
  for (size_t k = 0; k < len; ++k) {
    const char c = lit[at + k];
    const uint64_t b = mask ? ((c >= 'a' && c <= 'z') ? 0x20 : 0) : static_cast<unsigned char>(c);
    v |= b << (8 * k);
  }
  return v;
}

template <typename W>
inline W load(const char* p) {
  W v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// True if the sizeof(L.s) - 1 bytes at p equal the lowercase literal L,
// ignoring ASCII case (the caller has checked the length).
template <Lit L>
inline bool is(const char* p) {
  constexpr size_t n = sizeof(L.s) - 1;
  static_assert(n >= 2, "names of 2 bytes or more");
  using W = std::conditional_t<(n >= 8), uint64_t, std::conditional_t<(n >= 4), uint32_t, uint16_t>>;
  constexpr size_t w = sizeof(W);
  constexpr size_t heads = (n - 1) / w;  // whole words before the last one
  W diff = 0;
  [&]<size_t... I>(std::index_sequence<I...>) {
    ((diff |= static_cast<W>((load<W>(p + w * I) | static_cast<W>(litWord(L.s, w * I, w, true))) ^
                             static_cast<W>(litWord(L.s, w * I, w, false)))),
     ...);
  }(std::make_index_sequence<heads>{});
  diff |= static_cast<W>((load<W>(p + n - w) | static_cast<W>(litWord(L.s, n - w, w, true))) ^
                         static_cast<W>(litWord(L.s, n - w, w, false)));
  return diff == 0;
}

}  // namespace

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

// Every header of every message goes through here (both directions), so it
// dispatches on the length and first letter, then compares whole words: at
// most one comparison per name, none for most unknown names.
HeaderId lookupHeader(std::string_view name) {
  const size_t n = name.size();
  if (n < 2) return HeaderId::kOther;
  const char* p = name.data();
  const char c0 = lower(p[0]);
  switch (n) {
    case 2: return is<"te">(p) ? HeaderId::kTe : HeaderId::kOther;
    case 4: return is<"host">(p) ? HeaderId::kHost : HeaderId::kOther;
    case 6:
      if (c0 == 'e') return is<"expect">(p) ? HeaderId::kExpect : HeaderId::kOther;
      return is<"server">(p) ? HeaderId::kServer : HeaderId::kOther;
    case 7:
      if (c0 == 't') return is<"trailer">(p) ? HeaderId::kTrailer : HeaderId::kOther;
      return is<"upgrade">(p) ? HeaderId::kUpgrade : HeaderId::kOther;
    case 10:
      if (c0 == 'k') return is<"keep-alive">(p) ? HeaderId::kKeepAlive : HeaderId::kOther;
      return is<"connection">(p) ? HeaderId::kConnection : HeaderId::kOther;
    case 12:
      if (c0 == 'x') return is<"x-request-id">(p) ? HeaderId::kXRequestId : HeaderId::kOther;
      return is<"content-type">(p) ? HeaderId::kContentType : HeaderId::kOther;
    case 13: return is<"authorization">(p) ? HeaderId::kAuthorization : HeaderId::kOther;
    case 14:  // from here on, a miss may still be an X-Portcullis-* name
      if (c0 == 'h') {
        if (is<"http2-settings">(p)) return HeaderId::kHttp2Settings;
        break;
      }
      if (is<"content-length">(p)) return HeaderId::kContentLength;
      break;
    case 15:
      if (is<"x-forwarded-for">(p)) return HeaderId::kXForwardedFor;
      break;
    case 16:
      if (is<"proxy-connection">(p)) return HeaderId::kProxyConnection;
      break;
    case 17:
      if (c0 == 'x') {
        if (is<"x-forwarded-proto">(p)) return HeaderId::kXForwardedProto;
        break;
      }
      if (is<"transfer-encoding">(p)) return HeaderId::kTransferEncoding;
      break;
    case 18:
      if (is<"proxy-authenticate">(p)) return HeaderId::kProxyAuthenticate;
      break;
    case 19:
      if (is<"proxy-authorization">(p)) return HeaderId::kProxyAuthorization;
      break;
    case 25:
      if (c0 == 's' && is<"strict-transport-security">(p)) return HeaderId::kStrictTransportSecurity;
      break;
    default: break;
  }
  if (n > 13 && c0 == 'x' && is<"x-portcullis-">(p)) return HeaderId::kXPortcullis;
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
