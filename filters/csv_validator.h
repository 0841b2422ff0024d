// Streaming `text/csv` checker for upload routes (issue 6).
//
// Accepts a body when:
//  - it is well-formed UTF-8 (filters/utf8.h), optionally starting with one
//    byte order mark EF BB BF, which is not part of the first field;
//  - it contains no control character other than TAB, CR and LF: U+0000..U+001F
//    (NUL included) and DEL (0x7F) are refused. C1 controls (U+0080..U+009F,
//    encoded C2 80..C2 9F) are not refused: they are valid UTF-8 text;
//  - RFC 4180 quoting is well formed: a field is quoted only if its FIRST byte
//    is '"' (a '"' anywhere else in an unquoted field is an error); inside a
//    quoted field a quote is written as "" ; the closing quote must be followed
//    by ',', CR, LF or the end of the body; a quoted field still open at the
//    end of the body is an error.
// Line endings are not checked for CRLF pairing (bare LF and bare CR end a
// record too), the number of fields per record is not compared, and an empty
// body is accepted: those are the backend's business, not a framing risk.
//
// Streaming contract as for JsonValidator: feed() slices in order, finish() at
// the end; the outcome and the error offset (of the first bad byte, or the
// body length for a truncation found by finish()) do not depend on how the
// body is split; errors are sticky; no allocation, state is a few scalars.
//
// The caller answers 422 `invalid_upload` on any error (SPEC §5).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "filters/utf8.h"

namespace portcullis {

class CsvValidator {
 public:
  enum class Error : uint8_t {
    kNone = 0,
    kBadUtf8,             // ill-formed or truncated UTF-8
    kControlChar,         // NUL, another C0 control other than TAB CR LF, or DEL
    kQuoteInUnquoted,     // '"' inside a field that did not start with '"'
    kBadCharAfterQuote,   // closing quote not followed by ',', CR, LF or end
    kUnterminatedQuote,   // end of body inside a quoted field
  };

  struct Result {
    Error error = Error::kNone;
    uint64_t offset = 0;
    bool ok() const { return error == Error::kNone; }
  };

  CsvValidator() = default;

  Result feed(const char* p, size_t n);
  Result feed(std::string_view s) { return feed(s.data(), s.size()); }
  Result finish();
  Result result() const { return {error_, error_offset_}; }
  void reset() { *this = CsvValidator(); }

  static const char* errorName(Error e);

 private:
  enum State : uint8_t { kStart, kUnquoted, kQuoted, kQuoteInQuoted, kUtf8 };

  uint64_t consumed_ = 0;
  uint64_t error_offset_ = 0;
  Error error_ = Error::kNone;
  uint8_t state_ = kStart;
  uint8_t bom_pos_ = 0;            // BOM bytes matched at the start
  bool field_start_ = true;        // kUnquoted: the next byte begins a field
  bool utf8_quoted_ = false;       // kUtf8: state to return to is kQuoted
  utf8::State u8_;
};

}  // namespace portcullis
