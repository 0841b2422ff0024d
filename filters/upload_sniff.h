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
// end. The file's first bytes may arrive split across slices. xlsx/xls are
// not parsed whole, but their first structure must be what those files
// start with, not just the magic (a ZIP or OLE2 file of anything else, or
// the magic in front of an executable, is refused with kBadHeader):
//   xlsx: the first ZIP local file header is sane (not encrypted, stored or
//         deflated, a printable name of 1..255 bytes) and names an OOXML
//         package member: "[Content_Types].xml" or one under "_rels/",
//         "docProps/", "xl/" or "customXml/";
//   xls:  the OLE2 header has major version 3 or 4, byte order FFFE, the
//         sector size that version uses (512 or 4096 bytes) and 64-byte mini
//         sectors.
// A body shorter than what is checked fails at finish() (kTooShort). Same
// streaming contract as the validators: split invariant, sticky, the offset
// of the first bad byte (for kBadHeader, of the field that is wrong), no
// allocation.
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
    kBadHeader,        // the signature is there, the structure after it is not that of the type
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
  // The file's first bytes, up to what the header check needs (need_).
  static constexpr size_t kHeadMax = 30 + 255;
  uint8_t head_[kHeadMax] = {};
  uint16_t head_len_ = 0;
  uint16_t need_ = 0;
  bool checked_ = false;
  bool checkHead();
  uint64_t consumed_ = 0;
  uint64_t error_offset_ = 0;
  CsvValidator csv_;
};

}  // namespace portcullis
