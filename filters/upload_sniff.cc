#include "filters/upload_sniff.h"

namespace portcullis {

namespace {

constexpr uint8_t kZipMagic[4] = {'P', 'K', 0x03, 0x04};
constexpr uint8_t kOle2Magic[8] = {0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1};

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x + 32);
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y + 32);
    if (x != y) return false;
  }
  return true;
}

bool isOws(char c) { return c == ' ' || c == '\t'; }

}  // namespace

std::string_view mediaTypeOf(std::string_view ct) {
  const size_t semi = ct.find(';');
  if (semi != std::string_view::npos) ct = ct.substr(0, semi);
  while (!ct.empty() && isOws(ct.front())) ct.remove_prefix(1);
  while (!ct.empty() && isOws(ct.back())) ct.remove_suffix(1);
  return ct;
}

UploadKind uploadKindFor(std::string_view content_type) {
  const std::string_view mt = mediaTypeOf(content_type);
  if (iequals(mt, "text/csv")) return UploadKind::kCsv;
  if (iequals(mt, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")) return UploadKind::kXlsx;
  if (iequals(mt, "application/vnd.ms-excel")) return UploadKind::kXls;
  if (iequals(mt, "multipart/form-data")) return UploadKind::kMultipart;
  return UploadKind::kUnsupported;
}

const char* uploadKindName(UploadKind k) {
  switch (k) {
    case UploadKind::kUnsupported: return "unsupported";
    case UploadKind::kCsv: return "csv";
    case UploadKind::kXlsx: return "xlsx";
    case UploadKind::kXls: return "xls";
    case UploadKind::kMultipart: return "multipart";
  }
  return "unknown";
}

UploadSniffer::UploadSniffer(UploadKind kind) : kind_(kind) {
  if (kind == UploadKind::kXlsx) {
    magic_ = kZipMagic;
    magic_len_ = sizeof kZipMagic;
  } else if (kind == UploadKind::kXls) {
    magic_ = kOle2Magic;
    magic_len_ = sizeof kOle2Magic;
  } else if (kind != UploadKind::kCsv) {
    error_ = Error::kUnsupportedType;
  }
}

UploadSniffer::Result UploadSniffer::feed(const char* p, size_t n) {
  if (error_ != Error::kNone) return result();
  if (kind_ == UploadKind::kCsv) {
    const CsvValidator::Result r = csv_.feed(p, n);
    consumed_ += n;
    if (!r.ok()) {
      error_ = Error::kCsv;
      error_offset_ = r.offset;
    }
    return result();
  }
  size_t i = 0;
  while (matched_ < magic_len_ && i < n) {
    if (static_cast<uint8_t>(p[i]) != magic_[matched_]) {
      error_ = Error::kBadMagic;
      error_offset_ = consumed_ + i;
      consumed_ += n;
      return result();
    }
    ++matched_;
    ++i;
  }
  consumed_ += n;
  return {};
}

UploadSniffer::Result UploadSniffer::finish() {
  if (error_ != Error::kNone) return result();
  if (kind_ == UploadKind::kCsv) {
    const CsvValidator::Result r = csv_.finish();
    if (!r.ok()) {
      error_ = Error::kCsv;
      error_offset_ = r.offset;
    }
    return result();
  }
  if (matched_ < magic_len_) {
    error_ = Error::kTooShort;
    error_offset_ = consumed_;
  }
  return result();
}

const char* UploadSniffer::errorName(Error e) {
  switch (e) {
    case Error::kNone: return "none";
    case Error::kUnsupportedType: return "unsupported_type";
    case Error::kBadMagic: return "bad_magic";
    case Error::kTooShort: return "too_short";
    case Error::kCsv: return "bad_csv";
  }
  return "unknown";
}

}  // namespace portcullis
