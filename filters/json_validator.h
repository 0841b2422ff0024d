// Streaming JSON validator (issue 6, `validate_json`).
//
// Checks that a request body is exactly one RFC 8259 JSON text: one value with
// optional surrounding whitespace, encoded in well-formed UTF-8 (filters/utf8.h:
// no overlongs, no encoded surrogates, nothing above U+10FFFF, no truncated
// sequence), with nesting no deeper than a configurable limit (default 64).
//
// The body is fed in slices as it streams; the answer does not depend on how
// the body is split. Validation stops at the FIRST byte that cannot begin or
// continue a valid JSON text, reporting its offset from the start of the body
// and a reason; every later call returns the same result. Truncation (the body
// ends inside a value) is reported by finish() at offset == body length.
//
// Decisions beyond the RFC grammar, taken for a security proxy where the
// backend's parser may differ from ours:
//  - \u escapes must form valid Unicode scalar values: a high surrogate escape
//    (\uD800..\uDBFF) must be immediately followed by a low surrogate escape
//    (\uDC00..\uDFFF), and a low surrogate escape on its own is refused
//    (kLoneSurrogate), as in I-JSON (RFC 7493 §2.1). Parsers disagree on lone
//    surrogates (replacement, raw WTF-8, error), so none reaches a backend.
//  - A byte order mark is not accepted (RFC 8259 §8.1: must not be added).
//  - Duplicate object keys are NOT detected (that would need unbounded state).
//  - Numbers are checked against the grammar only; their magnitude is not.
//
// State: the nesting stack is one bit per level (object or array) in a fixed
// array inside the object; everything else is a handful of scalars. feed()
// never allocates. Not thread-safe; one instance per body.
//
// The caller answers 400 `bad_request` on any error (SPEC §5).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "filters/utf8.h"

namespace portcullis {

class JsonValidator {
 public:
  enum class Error : uint8_t {
    kNone = 0,
    kBadUtf8,          // ill-formed UTF-8 inside a string
    kControlInString,  // raw U+0000..U+001F inside a string
    kBadEscape,        // backslash followed by anything but " \ / b f n r t u, or bad hex
    kLoneSurrogate,    // \u surrogate escape that is not part of a valid pair
    kBadNumber,        // number not per grammar (leading zero, "1.", "1e", "-", "+1", ...)
    kBadLiteral,       // misspelt true / false / null
    kUnexpectedByte,   // a byte that cannot start or continue anything here
    kTrailingData,     // non-whitespace after the top-level value
    kTooDeep,          // an array or object opened beyond the depth limit
    kUnexpectedEnd,    // finish() inside a value, or an empty body
  };

  struct Result {
    Error error = Error::kNone;
    uint64_t offset = 0;  // byte offset of the first bad byte (meaningful when !ok())
    bool ok() const { return error == Error::kNone; }
  };

  static constexpr uint32_t kDefaultMaxDepth = 64;
  static constexpr uint32_t kMaxSupportedDepth = 1024;

  // max_depth: number of nested arrays/objects allowed; "[]" is depth 1, a bare
  // scalar is depth 0. Values above kMaxSupportedDepth are clamped to it.
  explicit JsonValidator(uint32_t max_depth = kDefaultMaxDepth);

  // Feeds the next n bytes. Returns ok while the bytes so far are a prefix of
  // some valid JSON text, else the (sticky) error.
  Result feed(const char* p, size_t n);
  Result feed(std::string_view s) { return feed(s.data(), s.size()); }
  // Declares the end of the body. Returns ok only if the whole body was one
  // complete JSON text. feed() after finish() is a caller bug.
  Result finish();
  // Current result without feeding anything.
  Result result() const { return {error_, error_offset_}; }
  // Makes the validator ready for a new body (same depth limit).
  void reset();

  static const char* errorName(Error e);

 private:
  enum State : uint8_t;

  uint64_t consumed_ = 0;
  uint64_t error_offset_ = 0;
  uint32_t max_depth_;
  uint32_t depth_ = 0;
  Error error_ = Error::kNone;
  uint8_t state_;
  bool in_key_ = false;     // current string is an object key
  bool want_low_ = false;   // \u escape in progress must be a low surrogate
  uint8_t hex_left_ = 0;    // hex digits still expected in a \u escape
  uint8_t lit_pos_ = 0;     // bytes of a literal matched so far
  uint8_t lit_id_ = 0;      // 0 true, 1 false, 2 null
  uint8_t hex_kind_ = 0;    // in a \u escape: its first hex digit, then 1 if it is a high surrogate
  utf8::State u8_;
  uint64_t stack_[kMaxSupportedDepth / 64] = {};  // bit set = object at that level
};

}  // namespace portcullis
