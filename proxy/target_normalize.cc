#include "proxy/target_normalize.h"

namespace portcullis {

namespace {

// 1 = unreserved, 2 = other raw pchar (sub-delims, ":", "@").
constexpr uint8_t kClassUnreserved = 1;
constexpr uint8_t kClassPchar = 2;

struct CharTable {
  uint8_t cls[256] = {};
  constexpr CharTable() {
    for (int c = 'a'; c <= 'z'; ++c) cls[c] = kClassUnreserved;
    for (int c = 'A'; c <= 'Z'; ++c) cls[c] = kClassUnreserved;
    for (int c = '0'; c <= '9'; ++c) cls[c] = kClassUnreserved;
    for (char c : {'-', '.', '_', '~'}) cls[static_cast<uint8_t>(c)] = kClassUnreserved;
    for (char c : {'!', '$', '&', '\'', '(', ')', '*', '+', ',', ';', '=', ':', '@'})
      cls[static_cast<uint8_t>(c)] = kClassPchar;
  }
};
constexpr CharTable kTable;

int hexVal(char ch) {
  const uint8_t c = static_cast<uint8_t>(ch);
  if (c >= '0' && c <= '9') return c - '0';
  const uint8_t l = c | 0x20;
  if (l >= 'a' && l <= 'f') return l - 'a' + 10;
  return -1;
}

constexpr char kHexUpper[] = "0123456789ABCDEF";

// A normalised segment (escapes of unreserved characters decoded, others
// uppercased) that is "." or ".." followed by path parameters: ";" or "%3B"
// and whatever comes after.
bool hasDotName(const char* s, size_t len) {
  size_t name = 0;
  while (name < len && s[name] != ';' && !(s[name] == '%' && name + 2 < len && s[name + 1] == '3' && s[name + 2] == 'B')) {
    ++name;
  }
  if (name == len) return false;  // no parameters
  return (name == 1 && s[0] == '.') || (name == 2 && s[0] == '.' && s[1] == '.');
}

}  // namespace

NormalizedTarget normalizeTarget(std::string_view target, char* out, size_t out_cap) {
  NormalizedTarget r;
  auto fail = [&r](TargetError e, size_t off) {
    r.error = e;
    r.error_offset = off;
    r.path_len = 0;
    return r;
  };
  if (target.empty()) return fail(TargetError::kEmpty, 0);
  if (target == "*") {
    r.asterisk = true;
    return r;
  }
  if (target[0] != '/') return fail(TargetError::kNotOriginForm, 0);

  size_t path_end = target.find('?');
  if (path_end != std::string_view::npos) {
    r.has_query = true;
    r.query = target.substr(path_end + 1);
    for (size_t i = 0; i < r.query.size(); ++i) {
      const uint8_t c = static_cast<uint8_t>(r.query[i]);
      if (c <= 0x20 || c == 0x7F || c == '#') return fail(TargetError::kBadQueryChar, path_end + 1 + i);
    }
  } else {
    path_end = target.size();
  }
  if (out_cap < path_end) return fail(TargetError::kBufferTooSmall, 0);

  // Invariant: out[0..w) is the resolved path so far and, between segments,
  // ends with '/'. seg is where the current segment starts in out.
  size_t w = 0;
  size_t seg = 1;
  out[w++] = '/';
  size_t i = 1;
  for (;;) {
    const bool at_end = i == path_end;
    const char ch = at_end ? '/' : target[i];
    if (ch == '/') {
      const size_t len = w - seg;
      if (len >= 2 && out[seg] == '.' && hasDotName(out + seg, len)) return fail(TargetError::kDotSegmentParams, i - 1);
      if (len == 1 && out[seg] == '.') {
        w = seg;  // drop ".", keep the '/' before it
      } else if (len == 2 && out[seg] == '.' && out[seg + 1] == '.') {
        // Drop ".." and the segment before it.
        if (seg == 1) return fail(TargetError::kAboveRoot, i - 1);
        size_t k = seg - 1;  // the '/' before ".."
        while (out[k - 1] != '/') --k;
        w = k;
      } else if (!at_end) {
        out[w++] = '/';
      }
      if (at_end) break;
      seg = w;
      ++i;
      continue;
    }
    const uint8_t c = static_cast<uint8_t>(ch);
    if (c == '%') {
      if (i + 2 >= path_end) return fail(TargetError::kBadPercent, i);
      const int h = hexVal(target[i + 1]);
      const int l = h < 0 ? -1 : hexVal(target[i + 2]);
      if (h < 0 || l < 0) return fail(TargetError::kBadPercent, i);
      const uint8_t v = static_cast<uint8_t>(h * 16 + l);
      if (v == '/') return fail(TargetError::kEncodedSlash, i);
      if (v == '\\') return fail(TargetError::kBackslash, i);
      if (v == 0) return fail(TargetError::kEncodedNul, i);
      if (kTable.cls[v] == kClassUnreserved) {
        out[w++] = static_cast<char>(v);
      } else {
        out[w++] = '%';
        out[w++] = kHexUpper[v >> 4];
        out[w++] = kHexUpper[v & 15];
      }
      i += 3;
      continue;
    }
    if (kTable.cls[c] == 0) return fail(c == '\\' ? TargetError::kBackslash : TargetError::kBadChar, i);
    out[w++] = ch;
    ++i;
  }
  r.path_len = w;
  return r;
}

const char* targetErrorName(TargetError e) {
  switch (e) {
    case TargetError::kNone: return "none";
    case TargetError::kEmpty: return "empty_target";
    case TargetError::kNotOriginForm: return "not_origin_form";
    case TargetError::kBadPercent: return "bad_percent_encoding";
    case TargetError::kEncodedSlash: return "encoded_slash";
    case TargetError::kBackslash: return "backslash";
    case TargetError::kEncodedNul: return "encoded_nul";
    case TargetError::kBadChar: return "bad_char";
    case TargetError::kAboveRoot: return "above_root";
    case TargetError::kDotSegmentParams: return "dot_segment_params";
    case TargetError::kBadQueryChar: return "bad_query_char";
    case TargetError::kBufferTooSmall: return "buffer_too_small";
  }
  return "unknown";
}

}  // namespace portcullis
