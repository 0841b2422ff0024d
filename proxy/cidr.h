// IPv4/IPv6 network prefixes ("10.0.0.0/8", "::1/128", a bare address = a
// single host), for https.trusted_proxies.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace portcullis {

struct Cidr {
  int family = 0;  // AF_INET or AF_INET6
  uint8_t addr[16] = {};
  uint8_t prefix = 0;

  // Parses `text`; false if it is not an address or prefix of valid length,
  // or has host bits set beyond the prefix.
  static bool parse(std::string_view text, Cidr& out);
  // True if the textual address `ip` lies in this prefix. IPv4-mapped IPv6
  // addresses are matched as IPv4.
  bool contains(std::string_view ip) const;
};

// True if `ip` lies in any of `nets`.
bool anyContains(const std::vector<Cidr>& nets, std::string_view ip);

}  // namespace portcullis
