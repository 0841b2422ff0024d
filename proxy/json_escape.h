// JSON string escaping for the log lines (access log, audit log, alerts).
//
// Escaping (RFC 8259): '"' and '\\' get a backslash, control bytes and DEL
// become \u00XX, well-formed UTF-8 passes through, and any byte that does not
// start a well-formed sequence becomes \ufffd, so a line is always valid
// UTF-8 JSON whatever the client sent.
//
// Almost every string the logs write (ids, addresses, methods, paths, member
// names) needs none of that, so the test for "nothing to escape" and the
// plain copy are inline here, a few instructions for a short string; only a
// string with something to escape takes the out-of-line path.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "proxy/short_copy.h"

namespace portcullis {

// Room one input byte can take once escaped: "\u00XX" or "\ufffd".
inline constexpr size_t kJsonEscapeMax = 6;

namespace json_detail {

// The n < 8 bytes at `s` in a word, the other bytes spaces (plain padding),
// read with fixed-size loads only: a variable-length memcpy is a libc call,
// dearer than the whole test. Overlapping loads agree on the bytes they share.
inline uint64_t loadShortPadded(const char* s, size_t n) {
  static_assert(std::endian::native == std::endian::little, "byte positions below assume little-endian");
  constexpr uint64_t kSpaces = 0x2020202020202020ull;
  if (n == 0) return kSpaces;
  uint64_t v;
  if (n >= 4) {
    uint32_t lo, hi;
    std::memcpy(&lo, s, 4);
    std::memcpy(&hi, s + n - 4, 4);
    v = lo | (static_cast<uint64_t>(hi) << (8 * (n - 4)));
  } else {  // 1..3 bytes: first, middle, last
    const auto byte = [&](size_t i) { return static_cast<uint64_t>(static_cast<unsigned char>(s[i])) << (8 * i); };
    v = byte(0) | byte(n / 2) | byte(n - 1);
  }
  return v | (kSpaces << (8 * n));
}

// Does any of the 8 bytes of `w` need a look in a JSON string: below 0x20,
// '"', '\\', 0x7F or 0x80 and above? (SWAR, exact: the has-zero-byte and
// has-byte-below-n tests are exact as booleans for n <= 128.)
inline bool anyNeedsEscape(uint64_t w) {
  constexpr uint64_t k01 = 0x0101010101010101ull;
  constexpr uint64_t k80 = 0x8080808080808080ull;
  const auto zero = [](uint64_t v) { return (v - k01) & ~v & k80; };
  const uint64_t below_space = (w - k01 * 0x20) & ~w & k80;
  return ((w & k80) | below_space | zero(w ^ (k01 * '"')) | zero(w ^ (k01 * '\\')) | zero(w ^ (k01 * 0x7F))) != 0;
}

#if defined(__SSE2__)
// The same test on 16 bytes: a signed compare puts 0x80 and above (negative)
// below 0x20 too, so four compares cover every byte that needs a look.
inline bool plain16(__m128i v) {
  const __m128i bad =
      _mm_or_si128(_mm_or_si128(_mm_cmplt_epi8(v, _mm_set1_epi8(0x20)), _mm_cmpeq_epi8(v, _mm_set1_epi8('"'))),
                   _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('\\')), _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7F))));
  return _mm_movemask_epi8(bad) == 0;
}
#endif

}  // namespace json_detail

// True when no byte of `s` needs escaping (every byte 0x20..0x7E, not '"' or
// '\\'): the string is its own JSON string body.
inline bool jsonPlain(std::string_view s) {
  using namespace json_detail;
  const char* p = s.data();
  const size_t n = s.size();
#if defined(__SSE2__)
  if (n <= 16) {  // one 16-byte test, loaded without reading past the end
    if (n < 8) return plain16(_mm_set_epi64x(0x2020202020202020LL, static_cast<long long>(loadShortPadded(p, n))));
    uint64_t a, b;
    std::memcpy(&a, p, 8);
    std::memcpy(&b, p + n - 8, 8);
    return plain16(_mm_set_epi64x(static_cast<long long>(b), static_cast<long long>(a)));
  }
  for (size_t i = 0; i + 16 < n; i += 16) {
    if (!plain16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i)))) return false;
  }
  return plain16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + n - 16)));  // overlapping
#else
  if (n < 8) return !anyNeedsEscape(loadShortPadded(p, n));
  uint64_t w;
  for (size_t i = 0; i + 8 < n; i += 8) {
    std::memcpy(&w, p + i, 8);
    if (anyNeedsEscape(w)) return false;
  }
  std::memcpy(&w, p + n - 8, 8);  // the last 8 bytes, overlapping
  return !anyNeedsEscape(w);
#endif
}

// writeJsonEscaped for a string that is not jsonPlain (any string is fine).
char* writeJsonEscapedSlow(std::string_view s, char* p);

// Writes `s` escaped as the body of a JSON string (without the quotes) at
// `p`, which must have room for s.size() * kJsonEscapeMax bytes; returns the
// end of what was written.
inline char* writeJsonEscaped(std::string_view s, char* p) {
  if (jsonPlain(s)) {
    copyShort(p, s.data(), s.size());
    return p + s.size();
  }
  return writeJsonEscapedSlow(s, p);
}

}  // namespace portcullis
