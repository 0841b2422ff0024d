#include "filters/csv_validator.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace portcullis {

namespace {

inline bool isSep(uint8_t c) { return c == ',' || c == '\r' || c == '\n'; }
// Bytes that need a closer look in any field: '"', non-ASCII, DEL and controls
// other than TAB CR LF. Everything else (',', CR, LF included) is plain.
inline bool plain(uint8_t c) {
  if (c >= 0x20) return c < 0x7F && c != '"';
  return c == '\t' || c == '\r' || c == '\n';
}

// Returns the first non-plain byte at or after p, or end.
inline const uint8_t* scanPlain(const uint8_t* p, const uint8_t* end) {
#if defined(__SSE2__)
  const __m128i sp = _mm_set1_epi8(0x20);
  const __m128i tab = _mm_set1_epi8('\t');
  const __m128i cr = _mm_set1_epi8('\r');
  const __m128i lf = _mm_set1_epi8('\n');
  const __m128i q = _mm_set1_epi8('"');
  const __m128i del = _mm_set1_epi8(0x7F);
  while (end - p >= 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    // Signed: bytes >= 0x80 are negative and so "< 0x20" too.
    __m128i bad = _mm_cmplt_epi8(v, sp);
    const __m128i ok_ctl = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, tab), _mm_cmpeq_epi8(v, cr)),
                                        _mm_cmpeq_epi8(v, lf));
    bad = _mm_andnot_si128(ok_ctl, bad);
    bad = _mm_or_si128(bad, _mm_or_si128(_mm_cmpeq_epi8(v, q), _mm_cmpeq_epi8(v, del)));
    const unsigned mask = static_cast<unsigned>(_mm_movemask_epi8(bad));
    if (mask != 0) return p + __builtin_ctz(mask);
    p += 16;
  }
#endif
  while (p < end && plain(*p)) ++p;
  return p;
}

constexpr uint8_t kBom[3] = {0xEF, 0xBB, 0xBF};

}  // namespace

CsvValidator::Result CsvValidator::feed(const char* data, size_t n) {
  if (error_ != Error::kNone) return result();
  const uint8_t* const begin = reinterpret_cast<const uint8_t*>(data);
  const uint8_t* p = begin;
  const uint8_t* const end = begin + n;
  uint8_t st = state_;
  Error err = Error::kNone;
  // In kUnquoted: position where the current run of unquoted bytes began in
  // this slice, and whether a field started there. Whether a later byte
  // starts a field follows from the byte before it.
  const uint8_t* run = p;
  bool run_field_start = field_start_;
  uint8_t c;

  while (p < end) {
    switch (st) {
      case kStart:
        c = *p;
        if (c == kBom[bom_pos_]) {
          ++p;
          if (++bom_pos_ == 3) {
            st = kUnquoted;
            run = p;
            run_field_start = true;
          }
          continue;
        }
        if (bom_pos_ == 0) {
          st = kUnquoted;
          run = p;
          run_field_start = true;
          continue;
        }
        // EF or EF BB that is not a BOM: an ordinary character (or an error).
        utf8::lead(0xEF, u8_);
        if (bom_pos_ == 2) utf8::cont(0xBB, u8_);
        utf8_quoted_ = false;
        st = kUtf8;
        continue;

      case kUnquoted:
        p = scanPlain(p, end);
        if (p == end) goto done;
        c = *p;
        if (c == '"') {
          const bool at_field_start = p == run ? run_field_start : isSep(p[-1]);
          if (!at_field_start) {
            err = Error::kQuoteInUnquoted;
            goto fail;
          }
          ++p;
          st = kQuoted;
          continue;
        }
        if (c >= 0x80) {
          utf8_quoted_ = false;
          goto utf8_start;
        }
        err = Error::kControlChar;
        goto fail;

      case kQuoted:
        p = scanPlain(p, end);
        if (p == end) goto done;
        c = *p;
        if (c == '"') {
          ++p;
          st = kQuoteInQuoted;
          continue;
        }
        if (c >= 0x80) {
          utf8_quoted_ = true;
          goto utf8_start;
        }
        err = Error::kControlChar;
        goto fail;

      case kQuoteInQuoted:
        c = *p;
        if (c == '"') {  // an escaped quote
          ++p;
          st = kQuoted;
          continue;
        }
        if (isSep(c)) {
          ++p;
          st = kUnquoted;
          run = p;
          run_field_start = true;
          continue;
        }
        err = Error::kBadCharAfterQuote;
        goto fail;

      case kUtf8:
        if (!utf8::cont(*p, u8_)) {
          err = Error::kBadUtf8;
          goto fail;
        }
        ++p;
        if (u8_.need == 0) {
          st = utf8_quoted_ ? kQuoted : kUnquoted;
          run = p;
          run_field_start = false;
        }
        continue;
    }
    continue;

  utf8_start:
    if (!utf8::lead(*p, u8_)) {
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
    run = p;
    run_field_start = false;
    // st unchanged (kQuoted or kUnquoted)
  }

done:
  if (st == kUnquoted) field_start_ = p == run ? run_field_start : isSep(p[-1]);
  state_ = st;
  consumed_ += n;
  return {};

fail:
  state_ = st;
  error_ = err;
  error_offset_ = consumed_ + static_cast<uint64_t>(p - begin);
  consumed_ += n;
  return result();
}

CsvValidator::Result CsvValidator::finish() {
  if (error_ != Error::kNone) return result();
  if (state_ == kQuoted) {
    error_ = Error::kUnterminatedQuote;
  } else if (state_ == kUtf8 || (state_ == kStart && bom_pos_ != 0)) {
    error_ = Error::kBadUtf8;
  } else {
    return {};
  }
  error_offset_ = consumed_;
  return result();
}

const char* CsvValidator::errorName(Error e) {
  switch (e) {
    case Error::kNone: return "none";
    case Error::kBadUtf8: return "bad_utf8";
    case Error::kControlChar: return "control_char";
    case Error::kQuoteInUnquoted: return "quote_in_unquoted_field";
    case Error::kBadCharAfterQuote: return "bad_char_after_quote";
    case Error::kUnterminatedQuote: return "unterminated_quote";
  }
  return "unknown";
}

}  // namespace portcullis
