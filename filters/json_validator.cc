#include "filters/json_validator.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace portcullis {

enum JsonValidator::State : uint8_t {
  kValue,         // a value must follow (top level, after ':' or after ',' in an array)
  kValueOrClose,  // after '[': a value or ']'
  kKeyOrClose,    // after '{': a key string or '}'
  kKey,           // after ',' in an object: a key string
  kColon,         // after a key
  kAfter,         // after a value: ',' or the closer of the enclosing container, or end
  kString,
  kEscape,        // after a backslash
  kHex,           // inside \uXXXX, hex_left_ digits to go
  kLowBackslash,  // after a high surrogate escape: '\' must follow
  kLowU,          // after that '\': 'u' must follow
  kUtf8,          // inside a multi-byte UTF-8 sequence in a string
  kNumMinus,      // "-"
  kNumZero,       // "-?0"
  kNumInt,        // "-?[1-9][0-9]*"
  kNumDot,        // int "."
  kNumFrac,       // int "." [0-9]+
  kNumE,          // mantissa [eE]
  kNumESign,      // mantissa [eE][+-]
  kNumExp,        // mantissa [eE][+-]?[0-9]+
  kLiteral,       // inside true / false / null
};

namespace {

constexpr const char* kLiterals[3] = {"true", "false", "null"};
constexpr uint8_t kLiteralLen[3] = {4, 5, 4};

inline bool isWs(uint8_t c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }
inline bool isDigit(uint8_t c) { return static_cast<uint8_t>(c - '0') < 10; }
inline int hexVal(uint8_t c) {
  if (isDigit(c)) return c - '0';
  uint8_t l = c | 0x20;
  if (l >= 'a' && l <= 'f') return l - 'a' + 10;
  return -1;
}
// Plain string byte: printable ASCII other than '"' and '\'.
inline bool plainStr(uint8_t c) { return c >= 0x20 && c < 0x80 && c != '"' && c != '\\'; }

}  // namespace

JsonValidator::JsonValidator(uint32_t max_depth)
    : max_depth_(max_depth > kMaxSupportedDepth ? kMaxSupportedDepth : max_depth), state_(kValue) {}

void JsonValidator::reset() {
  uint32_t d = max_depth_;
  *this = JsonValidator(d);
}

JsonValidator::Result JsonValidator::feed(const char* data, size_t n) {
  if (error_ != Error::kNone) return result();
  const uint8_t* const begin = reinterpret_cast<const uint8_t*>(data);
  const uint8_t* p = begin;
  const uint8_t* const end = begin + n;
  uint8_t st = state_;
  uint32_t depth = depth_;
  Error err = Error::kNone;
  uint8_t c;

  while (p < end) {
    switch (st) {
      case kValue:
      case kValueOrClose:
        c = *p;
        if (isWs(c)) {
          ++p;
          while (p < end && isWs(*p)) ++p;
          continue;
        }
        if (c == ']' && st == kValueOrClose) {
          --depth;
          ++p;
          st = kAfter;
          continue;
        }
        goto value_start;

      case kKeyOrClose:
      case kKey:
        c = *p;
        if (isWs(c)) {
          ++p;
          while (p < end && isWs(*p)) ++p;
          continue;
        }
        if (c == '"') {
          ++p;
          in_key_ = true;
          st = kString;
          continue;
        }
        if (c == '}' && st == kKeyOrClose) {
          --depth;
          ++p;
          st = kAfter;
          continue;
        }
        err = Error::kUnexpectedByte;
        goto fail;

      case kColon:
        c = *p;
        if (isWs(c)) {
          ++p;
          continue;
        }
        if (c != ':') {
          err = Error::kUnexpectedByte;
          goto fail;
        }
        ++p;
        st = kValue;
        continue;

      case kAfter:
        c = *p;
        if (isWs(c)) {
          ++p;
          while (p < end && isWs(*p)) ++p;
          continue;
        }
        if (depth == 0) {
          err = Error::kTrailingData;
          goto fail;
        }
        {
          const uint32_t lvl = depth - 1;
          const bool is_obj = (stack_[lvl >> 6] >> (lvl & 63)) & 1;
          if (c == ',') {
            ++p;
            st = is_obj ? kKey : kValue;
            continue;
          }
          if (c == static_cast<uint8_t>(is_obj ? '}' : ']')) {
            --depth;
            ++p;
            continue;  // still kAfter
          }
        }
        err = Error::kUnexpectedByte;
        goto fail;

      case kString:
      str_scan:
#if defined(__SSE2__)
      {
        const __m128i q = _mm_set1_epi8('"');
        const __m128i bs = _mm_set1_epi8('\\');
        const __m128i sp = _mm_set1_epi8(0x20);
        while (end - p >= 16) {
          const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
          // Signed compare: bytes >= 0x80 are negative, so "< 0x20" catches
          // both control characters and non-ASCII.
          const __m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, q), _mm_cmpeq_epi8(v, bs)),
                                         _mm_cmplt_epi8(v, sp));
          const unsigned mask = static_cast<unsigned>(_mm_movemask_epi8(m));
          if (mask != 0) {
            p += __builtin_ctz(mask);
            goto str_hit;
          }
          p += 16;
        }
      }
#endif
        while (p < end && plainStr(*p)) ++p;
        if (p == end) {
          st = kString;
          goto done;
        }
      // cppcheck-suppress unusedLabelSwitchConfiguration ; the SSE2 block above jumps here, and x86-64 (the only
      // target: CMakeLists.txt links BoringSSL from x86_64-linux-gnu) always has SSE2
      str_hit:
        c = *p;
        if (c == '"') {
          ++p;
          st = in_key_ ? kColon : kAfter;
          continue;
        }
        if (c == '\\') {
          ++p;
          st = kEscape;
          continue;
        }
        if (c < 0x20) {
          err = Error::kControlInString;
          goto fail;
        }
        if (!utf8::lead(c, u8_)) {
          err = Error::kBadUtf8;
          goto fail;
        }
        ++p;
        while (u8_.need != 0 && p < end) {
          if (!utf8::cont(*p, u8_)) {
            err = Error::kBadUtf8;
            goto fail;
          }
          ++p;
        }
        if (u8_.need != 0) {
          st = kUtf8;
          goto done;
        }
        goto str_scan;

      case kUtf8:
        if (!utf8::cont(*p, u8_)) {
          err = Error::kBadUtf8;
          goto fail;
        }
        ++p;
        if (u8_.need == 0) st = kString;
        continue;

      case kEscape:
        c = *p;
        switch (c) {
          case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            ++p;
            st = kString;
            continue;
          case 'u':
            ++p;
            st = kHex;
            hex_left_ = 4;
            want_low_ = false;
            continue;
          default:
            err = Error::kBadEscape;
            goto fail;
        }

      case kHex: {
        c = *p;
        const int v = hexVal(c);
        if (v < 0) {
          err = Error::kBadEscape;
          goto fail;
        }
        // Surrogates are decided by the first two digits: D8..DB high, DC..DF low.
        if (hex_left_ == 4) {
          if (want_low_ && v != 0xD) {
            err = Error::kLoneSurrogate;
            goto fail;
          }
          hex_kind_ = static_cast<uint8_t>(v);  // first digit, kept until the second
        } else if (hex_left_ == 3) {
          const bool first_d = hex_kind_ == 0xD;
          const bool low = first_d && v >= 0xC;
          const bool high = first_d && v >= 0x8 && v < 0xC;
          if (want_low_ ? !low : low) {
            err = Error::kLoneSurrogate;
            goto fail;
          }
          hex_kind_ = high ? 1 : 0;  // remembered: this escape is a high surrogate
        }
        ++p;
        if (--hex_left_ == 0) {
          st = (hex_kind_ == 1 && !want_low_) ? kLowBackslash : kString;
          hex_kind_ = 0;
        }
        continue;
      }

      case kLowBackslash:
        if (*p != '\\') {
          err = Error::kLoneSurrogate;
          goto fail;
        }
        ++p;
        st = kLowU;
        continue;

      case kLowU:
        if (*p != 'u') {
          err = Error::kLoneSurrogate;
          goto fail;
        }
        ++p;
        st = kHex;
        hex_left_ = 4;
        want_low_ = true;
        continue;

      case kNumMinus:
        c = *p;
        if (c == '0') {
          st = kNumZero;
        } else if (isDigit(c)) {
          st = kNumInt;
        } else {
          err = Error::kBadNumber;
          goto fail;
        }
        ++p;
        continue;

      case kNumZero:
        c = *p;
        if (isDigit(c)) {
          err = Error::kBadNumber;
          goto fail;
        }
        goto num_tail;

      case kNumInt:
        while (p < end && isDigit(*p)) ++p;
        if (p == end) goto done;
        c = *p;
      num_tail:
        if (c == '.') {
          ++p;
          st = kNumDot;
          continue;
        }
        if ((c | 0x20) == 'e') {
          ++p;
          st = kNumE;
          continue;
        }
        st = kAfter;  // the number ended; this byte is looked at again
        continue;

      case kNumDot:
        if (!isDigit(*p)) {
          err = Error::kBadNumber;
          goto fail;
        }
        ++p;
        st = kNumFrac;
        continue;

      case kNumFrac:
        while (p < end && isDigit(*p)) ++p;
        if (p == end) goto done;
        c = *p;
        if ((c | 0x20) == 'e') {
          ++p;
          st = kNumE;
          continue;
        }
        st = kAfter;
        continue;

      case kNumE:
        c = *p;
        if (c == '+' || c == '-') {
          ++p;
          st = kNumESign;
          continue;
        }
        [[fallthrough]];
      case kNumESign:
        if (!isDigit(*p)) {
          err = Error::kBadNumber;
          goto fail;
        }
        ++p;
        st = kNumExp;
        continue;

      case kNumExp:
        while (p < end && isDigit(*p)) ++p;
        if (p == end) goto done;
        st = kAfter;
        continue;

      case kLiteral:
        if (*p != static_cast<uint8_t>(kLiterals[lit_id_][lit_pos_])) {
          err = Error::kBadLiteral;
          goto fail;
        }
        ++p;
        if (++lit_pos_ == kLiteralLen[lit_id_]) {
          lit_pos_ = 0;
          st = kAfter;
        }
        continue;
    }
    continue;

  value_start:
    // c = *p, not whitespace, a value must start here.
    switch (c) {
      case '"':
        ++p;
        in_key_ = false;
        st = kString;
        continue;
      case '{':
      case '[':
        if (depth >= max_depth_) {
          err = Error::kTooDeep;
          goto fail;
        }
        if (c == '{') {
          stack_[depth >> 6] |= uint64_t{1} << (depth & 63);
          st = kKeyOrClose;
        } else {
          stack_[depth >> 6] &= ~(uint64_t{1} << (depth & 63));
          st = kValueOrClose;
        }
        ++depth;
        ++p;
        continue;
      case '-':
      case '0': case '1': case '2': case '3': case '4':
      case '5': case '6': case '7': case '8': case '9': {
        // Fast path: a whole, well-formed number followed by a byte of this
        // slice. Anything else (a number cut by the slice end, or a malformed
        // one) goes through the byte-wise states, which also place the error.
        const uint8_t* q = p;
        if (*q == '-') ++q;
        if (q < end && *q == '0') {
          ++q;
        } else if (q < end && isDigit(*q)) {
          ++q;
          while (q < end && isDigit(*q)) ++q;
        } else {
          goto num_slow;
        }
        if (q < end && *q == '.') {
          ++q;
          if (q >= end || !isDigit(*q)) goto num_slow;
          while (q < end && isDigit(*q)) ++q;
        }
        if (q < end && (*q | 0x20) == 'e') {
          ++q;
          if (q < end && (*q == '+' || *q == '-')) ++q;
          if (q >= end || !isDigit(*q)) goto num_slow;
          while (q < end && isDigit(*q)) ++q;
        }
        if (q >= end || isDigit(*q)) goto num_slow;
        p = q;
        st = kAfter;
        continue;
      num_slow:
        st = c == '-' ? kNumMinus : c == '0' ? kNumZero : kNumInt;
        ++p;
        continue;
      }
      case 't':
      case 'f':
      case 'n':
        lit_id_ = c == 't' ? 0 : c == 'f' ? 1 : 2;
        lit_pos_ = 1;
        ++p;
        st = kLiteral;
        continue;
      default:
        err = Error::kUnexpectedByte;
        goto fail;
    }
  }

done:
  state_ = st;
  depth_ = depth;
  consumed_ += n;
  return {};

fail:
  state_ = st;
  depth_ = depth;
  error_ = err;
  error_offset_ = consumed_ + static_cast<uint64_t>(p - begin);
  consumed_ += n;
  return result();
}

JsonValidator::Result JsonValidator::finish() {
  if (error_ != Error::kNone) return result();
  bool complete = false;
  if (depth_ == 0) {
    switch (state_) {
      case kAfter:
      case kNumZero:
      case kNumInt:
      case kNumFrac:
      case kNumExp:
        complete = true;
        break;
      default:
        break;
    }
  }
  if (!complete) {
    error_ = Error::kUnexpectedEnd;
    error_offset_ = consumed_;
  }
  return result();
}

const char* JsonValidator::errorName(Error e) {
  switch (e) {
    case Error::kNone: return "none";
    case Error::kBadUtf8: return "bad_utf8";
    case Error::kControlInString: return "control_in_string";
    case Error::kBadEscape: return "bad_escape";
    case Error::kLoneSurrogate: return "lone_surrogate";
    case Error::kBadNumber: return "bad_number";
    case Error::kBadLiteral: return "bad_literal";
    case Error::kUnexpectedByte: return "unexpected_byte";
    case Error::kTrailingData: return "trailing_data";
    case Error::kTooDeep: return "too_deep";
    case Error::kUnexpectedEnd: return "unexpected_end";
  }
  return "unknown";
}

}  // namespace portcullis
