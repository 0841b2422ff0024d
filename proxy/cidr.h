// IPv4/IPv6 addresses and network prefixes ("10.0.0.0/8", "::1/128", a bare
// address = a single host), for https.trusted_proxies.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace portcullis {

// A numeric IP address. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is held
// as the IPv4 address it maps, so both spellings compare and print alike.
struct IpAddress {
  int family = 0;          // AF_INET or AF_INET6
  uint8_t bytes[16] = {};  // network order; IPv4 uses the first 4

  // Parses a plain numeric address as inet_pton(3) does: nothing around it
  // (no spaces, port, brackets, zone id or "/prefix"). False otherwise, with
  // `out` unspecified.
  static bool parse(std::string_view text, IpAddress& out);
  // Writes the canonical text (inet_ntop(3): dotted quad, RFC 5952 IPv6) and
  // a NUL to `out`, which must hold INET6_ADDRSTRLEN (46) bytes. Returns the
  // length without the NUL.
  size_t format(char* out) const;
};

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
  // The same for an address already parsed.
  bool contains(const IpAddress& ip) const;
};

// True if `ip` lies in any of `nets`.
bool anyContains(const std::vector<Cidr>& nets, std::string_view ip);
bool anyContains(const std::vector<Cidr>& nets, const IpAddress& ip);

}  // namespace portcullis
