// Content sniffing for upload routes (issue 6, `upload = true`).
//
// An upload's bytes must match its declared Content-Type:
//   text/csv                                                            -> CsvValidator
//   application/vnd.openxmlformats-officedocument.spreadsheetml.sheet   -> ZIP local file
//                                                      header magic "PK\x03\x04" (xlsx)
//   application/vnd.ms-excel                                            -> OLE2 compound file
//                                                      magic D0 CF 11 E0 A1 B1 1A E1 (xls)
// uploadKindFor() maps a declared Content-Type to its kind; media type
// parameters (";charset=...") are ignored and the comparison is
// case-insensitive. multipart/form-data is reported as kMultipart (the caller
// parses it with MultipartParser and sniffs each file part); anything else is
// kUnsupported, which the caller refuses on an upload route (415, or 422 for a
// multipart file part).
//
// UploadSniffer is the streaming checker: feed() body slices, finish() at the
// end. The magic may arrive split across slices. For xlsx/xls only the magic
// is checked (the rest of the file is not parsed); a body shorter than its
// magic fails at finish(). Same streaming contract as the validators: split
// invariant, sticky, offset of the first bad byte, no allocation.
//
// The caller answers 422 `invalid_upload` on any error (SPEC §5).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "filters/csv_validator.h"

namespace portcullis {

enum class UploadKind : uint8_t {
  kUnsupported = 0,
  kCsv,
  kXlsx,
  kXls,
  kMultipart,
};

// Maps a Content-Type header value to the kind of check its body needs.
UploadKind uploadKindFor(std::string_view content_type);

// Returns the media type of a Content-Type value: the part before any ';',
// with surrounding whitespace removed (case is kept).
std::string_view mediaTypeOf(std::string_view content_type);

const char* uploadKindName(UploadKind k);

class UploadSniffer {
 public:
  enum class Error : uint8_t {
    kNone = 0,
    kUnsupportedType,  // kind is kUnsupported or kMultipart (nothing to sniff here)
    kBadMagic,         // the first bytes are not the expected file signature
    kTooShort,         // the body ended before the whole signature
    kCsv,              // the CSV check failed; csvError() says why
  };

  struct Result {
    Error error = Error::kNone;
    uint64_t offset = 0;
    bool ok() const { return error == Error::kNone; }
  };

  explicit UploadSniffer(UploadKind kind);

  Result feed(const char* p, size_t n);
  Result feed(std::string_view s) { return feed(s.data(), s.size()); }
  Result finish();
  Result result() const { return {error_, error_offset_}; }
  UploadKind kind() const { return kind_; }
  CsvValidator::Error csvError() const { return csv_.result().error; }
  // True once the whole signature has matched (xlsx/xls only).
  bool magicMatched() const { return magic_len_ != 0 && matched_ == magic_len_; }

  static const char* errorName(Error e);

 private:
  UploadKind kind_;
  Error error_ = Error::kNone;
  uint8_t matched_ = 0;
  uint8_t magic_len_ = 0;
  const uint8_t* magic_ = nullptr;
  uint64_t consumed_ = 0;
  uint64_t error_offset_ = 0;
  CsvValidator csv_;
};

}  // namespace portcullis
