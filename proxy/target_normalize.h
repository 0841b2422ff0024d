// Request-target normalisation for routing and RBAC (issue 6, "Targets").
//
// Routing, RBAC and the backend see only the normalised path, so two targets
// that a backend would treat as the same resource normalise to the same
// string, and targets whose meaning differs between servers are refused.
//
// Accepted forms: origin-form (absolute-path [ "?" query ], RFC 9112 §3.2.1)
// and the asterisk-form "*", which the caller must allow only for OPTIONS.
// absolute-form and authority-form are refused (kNotOriginForm).
//
// Path rules, applied in one left-to-right pass:
//  - raw bytes must be pchar or "/" (RFC 3986: ALPHA DIGIT - . _ ~ ! $ & ' ( )
//    * + , ; = : @ and "%"); anything else is kBadChar, except a raw "\" which
//    is kBackslash (some servers treat it as "/") and "#" (fragments are never
//    sent) which is kBadChar;
//  - "%" must be followed by two hex digits (kBadPercent). An escape of an
//    unreserved character (ALPHA DIGIT - . _ ~) is decoded; %2F/%2f
//    (kEncodedSlash), %5C/%5c (kBackslash) and %00 (kEncodedNul) are refused;
//    every other escape is kept encoded, with its hex digits uppercased;
//  - after decoding, "." and ".." segments are removed as in RFC 3986 §5.2.4
//    remove_dot_segments (so "%2e%2E" is ".."); a ".." with no segment left to
//    remove, i.e. an attempt to climb above the root, is kAboveRoot. Empty
//    segments ("//") are kept;
//  - a "." or ".." followed by path parameters (";" or "%3B" and anything:
//    "..;x", ".;", "%2e%2e%3Bx") is kDotSegmentParams: servers that strip
//    parameters before resolving dot segments (Tomcat, Jetty) read it as a
//    dot segment, others as a name, so what routing and RBAC checked would
//    not be what such a backend serves.
// The query (after the first "?") is returned untouched as a view into the
// input; it is only checked for raw CTLs (0x00-0x1F, 0x7F), SP and "#"
// (kBadQueryChar).
//
// The normalised path is never longer than the input's path, so a buffer of
// target.size() bytes is always enough. On any refusal the caller answers 400
// `bad_request` (SPEC §5); the target length limit (414) is checked before.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace portcullis {

enum class TargetError : uint8_t {
  kNone = 0,
  kEmpty,           // empty target
  kNotOriginForm,   // does not start with "/" and is not "*"
  kBadPercent,      // "%" not followed by two hex digits
  kEncodedSlash,    // %2F
  kBackslash,       // raw "\" or %5C
  kEncodedNul,      // %00
  kBadChar,         // raw byte outside pchar / "/" in the path
  kAboveRoot,       // ".." above the root
  kDotSegmentParams,  // "." or ".." with path parameters ("..;x")
  kBadQueryChar,    // raw CTL, SP or "#" in the query
  kBufferTooSmall,  // out_cap < length of the path part of the target
};

struct NormalizedTarget {
  TargetError error = TargetError::kNone;
  size_t error_offset = 0;     // offset in the target of the offending byte
  bool asterisk = false;       // the target was "*" (path_len is 0)
  bool has_query = false;      // a "?" was present (query may still be empty)
  size_t path_len = 0;         // bytes of the normalised path written to `out`
  std::string_view query;      // the raw query, without the "?"
  bool ok() const { return error == TargetError::kNone; }
};

// Normalises `target` and writes the path to out[0..path_len). `out` must not
// overlap `target`. Never allocates.
NormalizedTarget normalizeTarget(std::string_view target, char* out, size_t out_cap);

const char* targetErrorName(TargetError e);

}  // namespace portcullis
