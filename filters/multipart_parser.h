// Streaming multipart/form-data parser for upload routes (issue 6).
//
// Splits a multipart/form-data body (RFC 7578 over RFC 2046 §5.1.1) into
// parts as it streams, without copying part bodies: the handler receives, in
// order, onPartBegin (headers parsed), onPartData (zero or more slices of the
// part body, in order; concatenated they are exactly the part's body), and
// onPartEnd. The caller is expected to sniff every file part's body (one with a
// `filename` parameter) with UploadSniffer(uploadKindFor(part.content_type)),
// and to refuse the upload if the declared type is not allowed or the sniffer
// fails (422 `invalid_upload`).
//
// Accepted body:  [preamble CRLF] "--" boundary padding CRLF part
//                 *( CRLF "--" boundary padding CRLF part )
//                 CRLF "--" boundary "--" padding [CRLF epilogue]
// where padding is *(SP / HTAB) (RFC 2046 transport-padding) and each part is
// a head (header lines ending CRLF, then an empty line) and a body. Refused:
//  - a boundary line followed by anything but padding CRLF or "--" (this also
//    refuses a delimiter string appearing inside a part body, which RFC 2046
//    forbids the sender to produce);
//  - "--" boundary anywhere in the preamble, a part body or the epilogue
//    without the CRLF of a delimiter before it (kBadBoundaryLine at its first
//    "-"; the CRLF ending a part head is not one, the start of the body needs
//    none): parsers that also take a bare LF, or a boundary in mid-line, as a
//    delimiter would see other parts than the ones sniffed here;
//  - a preamble longer than max_preamble_bytes or an epilogue longer than
//    max_epilogue_bytes (0 refuses any; parsers disagree on both, so they are
//    kept small and are never delivered as part data);
//  - a part head larger than max_head_bytes (including its CRLFs) or with more
//    than max_headers lines; a bare CR or bare LF in a head; obs-fold; a line
//    without ':' ; an empty or non-token header name (so no space before ':');
//    control characters other than HTAB in a value;
//  - a missing or repeated Content-Disposition, one whose type is not
//    "form-data" or without a `name` parameter, a repeated parameter, or a
//    `filename*` parameter (RFC 7578 §4.2: not to be used; a backend might
//    prefer it over `filename`);
//  - a repeated Content-Type; a Content-Transfer-Encoding other than 7bit,
//    8bit or binary (the backend would decode what was sniffed raw);
//  - more than max_parts parts;
//  - the end of the body before the close delimiter (kMissingFinalBoundary).
//
// Streaming contract as for the validators: the outcome, the error and its
// offset do not depend on how the body is split (except kAborted, raised at
// whatever offset the handler refused, whose own result is authoritative);
// errors are sticky. The part-data slices themselves do depend on the split
// (the last bytes of a slice that may begin a delimiter, and the fewer than
// "--" boundary bytes before them, are delivered with the next one or at the
// part's delimiter), not what they add up to: nothing at or after a bare
// "--" boundary reaches the handler.
// Memory: the part-head buffer (max_head_bytes) is allocated once by the
// constructor; feed() never allocates.
//
// The caller answers 400 `bad_request` for a malformed multipart body (a
// framing problem of the client) and 422 `invalid_upload` when a part is
// refused by the upload sniffing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

namespace portcullis {

struct MultipartLimits {
  uint32_t max_parts = 100;
  uint32_t max_head_bytes = 8192;
  uint32_t max_headers = 16;
  uint32_t max_preamble_bytes = 1024;
  uint32_t max_epilogue_bytes = 1024;
};

// The head of one part, valid only during onPartBegin (the views point into
// the parser's head buffer).
struct MultipartPart {
  uint32_t index = 0;                 // 0-based
  std::string_view name;              // Content-Disposition `name`, unquoted
  std::string_view filename;          // `filename`, unquoted; empty if absent
  bool has_filename = false;          // a file part (even with filename="")
  std::string_view content_type;      // raw Content-Type value, trimmed; empty if absent
                                      // (RFC 7578 default: text/plain)
};

class MultipartHandler {
 public:
  virtual ~MultipartHandler() = default;
  // Each returns false to abort parsing (error kAborted).
  virtual bool onPartBegin(const MultipartPart& part) = 0;
  virtual bool onPartData(const char* p, size_t n) = 0;
  virtual bool onPartEnd() = 0;
};

enum class BoundaryError : uint8_t {
  kNone = 0,
  kNotMultipartFormData,  // the media type is not multipart/form-data
  kMissing,               // no boundary parameter
  kDuplicate,             // more than one boundary parameter
  kBadSyntax,             // malformed parameter list
  kBadBoundary,           // length not 1..70, a character outside bchars, or ends in space
};

// Extracts the boundary from a Content-Type header value such as
// `multipart/form-data; boundary="abc def"`. Parameters as media_type.h
// parses them (`;`-separated name=value pairs, empty ones allowed, value a
// token or a quoted-string; a quoted-pair in any of them is refused: no
// bchar needs escaping). The boundary must be 1..70
// characters from RFC 2046 bchars, not ending in a space; the token form
// additionally admits only characters that are also tchars. On success
// `boundary` views into `content_type`.
BoundaryError multipartBoundary(std::string_view content_type, std::string_view& boundary);

// True if `b` is a valid RFC 2046 boundary (1..70 bchars, last not space).
bool validBoundary(std::string_view b);

const char* boundaryErrorName(BoundaryError e);

class MultipartParser {
 public:
  enum class Error : uint8_t {
    kNone = 0,
    kBadBoundary,            // the constructor got an invalid boundary
    kBadBoundaryLine,        // garbage after a boundary, or a delimiter inside a body
    kPreambleTooLarge,
    kEpilogueTooLarge,
    kHeadTooLarge,
    kTooManyHeaders,
    kBadLineEnding,          // bare CR or bare LF in a part head
    kBadHeader,              // malformed header line (obs-fold, no colon, bad name, CTL)
    kDuplicateHeader,        // Content-Disposition or Content-Type repeated
    kMissingContentDisposition,
    kBadContentDisposition,
    kBadTransferEncoding,
    kTooManyParts,
    kMissingFinalBoundary,   // finish() before the close delimiter
    kAborted,                // the handler returned false
  };

  struct Result {
    Error error = Error::kNone;
    uint64_t offset = 0;
    bool ok() const { return error == Error::kNone; }
  };

  // `boundary` as returned by multipartBoundary(); copied. `handler` must
  // outlive the parser.
  MultipartParser(std::string_view boundary, MultipartHandler& handler, const MultipartLimits& limits = {});

  Result feed(const char* p, size_t n);
  Result feed(std::string_view s) { return feed(s.data(), s.size()); }
  Result finish();
  Result result() const { return {error_, error_offset_}; }
  uint32_t partCount() const { return parts_; }

  static const char* errorName(Error e);

 private:
  enum State : uint8_t;

  static constexpr size_t kMaxBare = 70 + 2;         // "--" boundary
  static constexpr size_t kMaxDelim = kMaxBare + 2;  // "\r\n--" boundary
  // A partial delimiter and the fewer than "--" boundary bytes before it.
  static constexpr size_t kHoldSize = (kMaxDelim - 1) + (kMaxBare - 1);
  static constexpr uint64_t kNoHit = ~uint64_t{0};
  static constexpr uint64_t kNoLimit = ~uint64_t{0};

  bool content(const uint8_t* p, size_t n, uint64_t at, const uint8_t*& after);
  const uint8_t* findDashBoundary(const uint8_t* p, size_t n) const;
  size_t pendingDelimiter(const uint8_t* s, size_t len, bool body_start) const;
  bool deliver(const uint8_t* p, size_t k, uint64_t at);
  void keepHold(const uint8_t* p, size_t n, size_t keep);
  bool runTooLarge();
  bool headLine(uint64_t line_offset);
  bool headEnd(uint64_t at);
  bool parseDisposition(char* v, size_t n, uint64_t at);
  void fail(Error e, uint64_t at);

  MultipartHandler& handler_;
  MultipartLimits limits_;
  std::unique_ptr<char[]> head_;
  char delim_[kMaxDelim];  // "\r\n--" boundary
  uint8_t dlen_ = 0;
  uint8_t state_;
  uint8_t hold_len_ = 0;  // bytes in hold_
  // The current content run's last bytes that may begin a delimiter or a
  // bare "--" boundary (content()); of a part body, not yet delivered.
  uint8_t hold_[kHoldSize] = {};
  uint64_t run_limit_;  // body offset of the run's first byte over its size limit
  bool head_cr_ = false;
  Error error_ = Error::kNone;
  uint32_t parts_ = 0;
  uint32_t headers_ = 0;
  uint32_t head_bytes_ = 0;   // all head bytes so far, CRLFs included
  uint32_t head_len_ = 0;     // bytes stored in head_ (line contents, CRLFs dropped)
  uint32_t line_start_ = 0;   // where the current line starts in head_
  uint64_t line_offset_ = 0;  // body offset of the current line's first byte
  uint64_t consumed_ = 0;
  uint64_t error_offset_ = 0;
  // Current part's head fields, as offsets into head_ (views are built at the end).
  int32_t ct_pos_ = -1;
  uint32_t ct_len_ = 0;
  int32_t name_pos_ = -1;
  uint32_t name_len_ = 0;
  int32_t fn_pos_ = -1;
  uint32_t fn_len_ = 0;
  bool have_cd_ = false;
};

}  // namespace portcullis
