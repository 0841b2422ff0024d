#include "proxy/real_ip.h"

namespace portcullis {

namespace {

std::string_view trimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// One X-Forwarded-For line, right to left, continuing the walk of the lines
// to its right. `last` is the last address walked (valid when `have`).
// Returns true when the walk is over: a client or an unparsable entry found.
bool walkLine(std::string_view list, const std::vector<Cidr>& trusted, IpAddress& last, bool& have) {
  for (;;) {
    const size_t comma = list.rfind(',');
    const std::string_view entry = trimOws(comma == std::string_view::npos ? list : list.substr(comma + 1));
    if (!entry.empty()) {
      IpAddress a;
      if (!IpAddress::parse(entry, a)) return true;
      last = a;
      have = true;
      if (!anyContains(trusted, a)) return true;
    }
    if (comma == std::string_view::npos) return false;
    list = list.substr(0, comma);
  }
}

}  // namespace

bool forwardedClientAddress(const std::vector<Header>& headers, const std::vector<Cidr>& trusted, IpText& out) {
  IpAddress last;
  bool have = false;
  for (auto h = headers.rbegin(); h != headers.rend(); ++h) {
    if (h->id == HeaderId::kXForwardedFor && walkLine(h->value, trusted, last, have)) break;
  }
  if (!have) return false;
  out.len = static_cast<uint8_t>(last.format(out.text));
  return out.len != 0;
}

}  // namespace portcullis
