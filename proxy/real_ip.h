// The client address of a request that reached the proxy through trusted
// proxies (https.trusted_proxies): taken from X-Forwarded-For the way nginx's
// realip module does with `real_ip_header X-Forwarded-For;
// real_ip_recursive on;` (Envoy: trusted hops).
#pragma once

#include <netinet/in.h>  // INET6_ADDRSTRLEN

#include <cstdint>
#include <string_view>
#include <vector>

#include "proxy/cidr.h"
#include "proxy/http_message.h"

namespace portcullis {

// A normalised textual IP address in a fixed buffer: no allocation.
struct IpText {
  char text[INET6_ADDRSTRLEN] = {};
  uint8_t len = 0;
  std::string_view view() const { return {text, len}; }
};

// For a request whose TCP peer is in `trusted` (the caller checks that; for
// any other peer X-Forwarded-For must not be read at all). Every
// X-Forwarded-For line of `headers`, in order, is read as one comma-separated
// list (RFC 9110 §5.3), and the list is walked from the right:
//   - an entry is trimmed of spaces and tabs; an empty one is list syntax
//     ("a,,b", a trailing comma, an empty line) and skipped;
//   - an entry must be a plain numeric IPv4 or IPv6 address (IpAddress::parse:
//     no port, brackets, zone id, "unknown" or obfuscated name);
//   - an entry inside `trusted` is another proxy of ours: walk on;
//   - the first entry not inside `trusted` is the client: the answer;
//   - an entry that does not parse stops the walk: the answer is the last
//     (leftmost) trusted entry walked, if any;
//   - a list made only of trusted entries gives its leftmost entry.
// Returns true with the answer in `out`, normalised by IpAddress::format (an
// IPv4-mapped IPv6 address as IPv4, IPv6 in RFC 5952 form, so rate-limit keys
// by /64 and log lines are stable whatever the spelling). Returns false when
// the header yields no address (absent, empty, or its rightmost entry does not
// parse): the TCP peer is then the client. Never allocates, never throws.
bool forwardedClientAddress(const std::vector<Header>& headers, const std::vector<Cidr>& trusted, IpText& out);

}  // namespace portcullis
