// Streaming UTF-8 well-formedness check shared by the body validators.
//
// Implements the table of well-formed byte sequences of Unicode §3.9 (D92):
// overlong forms, UTF-16 surrogates (U+D800..U+DFFF) and code points above
// U+10FFFF are refused, as are stray continuation bytes and lead bytes C0, C1,
// F5..FF. The state between two bytes is three small integers, so a sequence
// may be split anywhere between feed() calls of the validator that uses it.
#pragma once

#include <cstdint>

namespace portcullis::utf8 {

// State of a partially read multi-byte sequence: `need` continuation bytes are
// still expected and the next one must lie in [lo, hi]. need == 0: between
// characters.
struct State {
  uint8_t need = 0;
  uint8_t lo = 0x80;
  uint8_t hi = 0xBF;
};

// Starts a sequence at lead byte `c` (>= 0x80). Returns false if `c` cannot
// start a well-formed sequence.
inline bool lead(uint8_t c, State& s) {
  if (c < 0xC2) return false;
  if (c < 0xE0) { s = {1, 0x80, 0xBF}; return true; }
  if (c < 0xF0) {
    if (c == 0xE0) s = {2, 0xA0, 0xBF};       // no overlongs below U+0800
    else if (c == 0xED) s = {2, 0x80, 0x9F};  // no surrogates
    else s = {2, 0x80, 0xBF};
    return true;
  }
  if (c == 0xF0) { s = {3, 0x90, 0xBF}; return true; }  // no overlongs below U+10000
  if (c < 0xF4) { s = {3, 0x80, 0xBF}; return true; }
  if (c == 0xF4) { s = {3, 0x80, 0x8F}; return true; }   // nothing above U+10FFFF
  return false;
}

// Feeds continuation byte `c` of a started sequence. Returns false if it is not
// acceptable here.
inline bool cont(uint8_t c, State& s) {
  if (c < s.lo || c > s.hi) return false;
  s.lo = 0x80;
  s.hi = 0xBF;
  --s.need;
  return true;
}

}  // namespace portcullis::utf8
