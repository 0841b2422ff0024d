#include "proxy/cidr.h"

#include <arpa/inet.h>

#include <cstring>
#include <string>

namespace portcullis {

namespace {

bool parseAddress(std::string_view text, int& family, uint8_t out[16]) {
  if (text.size() >= INET6_ADDRSTRLEN) return false;
  char buf[INET6_ADDRSTRLEN];
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  std::memset(out, 0, 16);
  if (inet_pton(AF_INET, buf, out) == 1) {
    family = AF_INET;
    return true;
  }
  if (inet_pton(AF_INET6, buf, out) == 1) {
    static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(out, kMapped, 12) == 0) {
      std::memmove(out, out + 12, 4);
      std::memset(out + 4, 0, 12);
      family = AF_INET;
    } else {
      family = AF_INET6;
    }
    return true;
  }
  return false;
}

bool prefixMatches(const uint8_t* a, const uint8_t* b, unsigned bits) {
  unsigned full = bits / 8;
  if (std::memcmp(a, b, full) != 0) return false;
  unsigned rest = bits % 8;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[full] & mask) == (b[full] & mask);
}

}  // namespace

bool Cidr::parse(std::string_view text, Cidr& out) {
  size_t slash = text.find('/');
  std::string_view addr = text.substr(0, slash);
  if (!parseAddress(addr, out.family, out.addr)) return false;
  const unsigned max = out.family == AF_INET ? 32 : 128;
  unsigned prefix = max;
  if (slash != std::string_view::npos) {
    std::string_view p = text.substr(slash + 1);
    if (p.empty() || p.size() > 3) return false;
    prefix = 0;
    for (char c : p) {
      if (c < '0' || c > '9') return false;
      prefix = prefix * 10 + static_cast<unsigned>(c - '0');
    }
    if (prefix > max) return false;
  }
  out.prefix = static_cast<uint8_t>(prefix);
  // Host bits beyond the prefix must be zero: "10.0.0.1/8" is a typo, not a network.
  uint8_t masked[16] = {};
  std::memcpy(masked, out.addr, prefix / 8);
  if (prefix % 8 != 0) masked[prefix / 8] = static_cast<uint8_t>(out.addr[prefix / 8] & (0xff << (8 - prefix % 8)));
  return std::memcmp(masked, out.addr, 16) == 0;
}

bool IpAddress::parse(std::string_view text, IpAddress& out) { return parseAddress(text, out.family, out.bytes); }

size_t IpAddress::format(char* out) const {
  if (inet_ntop(family, bytes, out, INET6_ADDRSTRLEN) == nullptr) {
    out[0] = '\0';  // only for an IpAddress that parse() did not fill
    return 0;
  }
  return std::strlen(out);
}

bool Cidr::contains(std::string_view ip) const {
  IpAddress a;
  return IpAddress::parse(ip, a) && contains(a);
}

bool Cidr::contains(const IpAddress& ip) const { return ip.family == family && prefixMatches(ip.bytes, addr, prefix); }

bool anyContains(const std::vector<Cidr>& nets, std::string_view ip) {
  IpAddress a;
  return IpAddress::parse(ip, a) && anyContains(nets, a);
}

bool anyContains(const std::vector<Cidr>& nets, const IpAddress& ip) {
  for (const Cidr& n : nets)
    if (n.contains(ip)) return true;
  return false;
}

}  // namespace portcullis
