#include "filters/media_type.h"

namespace portcullis {

namespace {

bool isOws(char c) { return c == ' ' || c == '\t'; }

const char* skipOws(const char* p, const char* end) {
  while (p < end && isOws(*p)) ++p;
  return p;
}

const char* skipToken(const char* p, const char* end) {
  while (p < end && isTchar(static_cast<uint8_t>(*p))) ++p;
  return p;
}

}  // namespace

bool isTchar(uint8_t c) {
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
  if (c >= '0' && c <= '9') return true;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '.': case '^': case '_': case '`': case '|': case '~':
      return true;
    default:
      return false;
  }
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    uint8_t x = static_cast<uint8_t>(a[i]), y = static_cast<uint8_t>(b[i]);
    if (x >= 'A' && x <= 'Z') x += 32;
    if (y >= 'A' && y <= 'Z') y += 32;
    if (x != y) return false;
  }
  return true;
}

bool MediaParams::next(MediaParam& out) {
  if (bad_) return false;
  const char* p = skipOws(p_, end_);
  // Empty parameters ("text/csv;", "a=1;;b=2") are allowed (RFC 9110 §5.6.6).
  while (p < end_ && *p == ';') {
    const char* q = skipOws(p + 1, end_);
    if (q < end_ && *q != ';') break;
    p = q;
  }
  if (p == end_) {
    p_ = p;
    return false;
  }
  bad_ = true;  // until a whole parameter is read
  if (*p != ';') return false;
  p = skipOws(p + 1, end_);
  const char* name = p;
  p = skipToken(p, end_);
  if (p == name || p == end_ || *p != '=') return false;
  out.name = {name, static_cast<size_t>(p - name)};
  ++p;
  out.quoted = p < end_ && *p == '"';
  out.escaped = false;
  if (out.quoted) {
    const char* v = ++p;
    for (;;) {
      if (p == end_) return false;
      const auto c = static_cast<uint8_t>(*p);
      if (c == '"') break;
      if (c == '\\') {
        out.escaped = true;
        if (++p == end_) return false;
      } else if ((c < 0x20 && c != '\t') || c == 0x7F) {
        return false;
      }
      ++p;
    }
    out.value = {v, static_cast<size_t>(p - v)};
    ++p;  // the closing quote
  } else {
    const char* v = p;
    p = skipToken(p, end_);
    if (p == v) return false;
    out.value = {v, static_cast<size_t>(p - v)};
  }
  p_ = p;
  bad_ = false;
  return true;
}

bool splitMediaType(std::string_view ct, std::string_view& type, std::string_view& subtype,
                    std::string_view& params) {
  const char* end = ct.data() + ct.size();
  const char* p = skipOws(ct.data(), end);
  const char* t = p;
  p = skipToken(p, end);
  if (p == t || p == end || *p != '/') return false;
  type = {t, static_cast<size_t>(p - t)};
  const char* s = ++p;
  p = skipToken(p, end);
  if (p == s) return false;
  subtype = {s, static_cast<size_t>(p - s)};
  params = {p, static_cast<size_t>(end - p)};
  return true;
}

TextCharset textCharset(std::string_view content_type) {
  std::string_view type, subtype, rest;
  if (!splitMediaType(content_type, type, subtype, rest)) return TextCharset::kBadSyntax;
  MediaParams params(rest);
  MediaParam p;
  bool seen = false, other = false;
  while (params.next(p)) {
    if (!iequals(p.name, "charset")) continue;
    // A quoted-pair ("utf\-8") is legal but nobody sends one: refused, not unescaped.
    other = other || seen || p.escaped ||
            !(iequals(p.value, "utf-8") || iequals(p.value, "us-ascii"));
    seen = true;
  }
  if (params.bad()) return TextCharset::kBadSyntax;
  return other ? TextCharset::kOther : TextCharset::kUtf8;
}

}  // namespace portcullis
