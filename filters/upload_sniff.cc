#include "filters/upload_sniff.h"

#include "filters/media_type.h"  // iequals

#include <algorithm>
#include <cstring>

namespace portcullis {

namespace {

constexpr uint8_t kZipMagic[4] = {'P', 'K', 0x03, 0x04};
constexpr uint8_t kOle2Magic[8] = {0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1};

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
    need_ = 30;  // a ZIP local file header; then its name
  } else if (kind == UploadKind::kXls) {
    magic_ = kOle2Magic;
    magic_len_ = sizeof kOle2Magic;
    need_ = 18;  // through the mini sector shift
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
  // The file's first bytes (the magic included) are kept for the header
  // check, which runs once as many are here as it needs.
  if (head_len_ < kHeadMax) {
    const size_t take = std::min<size_t>(n, kHeadMax - head_len_);
    std::memcpy(head_ + head_len_, p, take);
    head_len_ = static_cast<uint16_t>(head_len_ + take);
  }
  consumed_ += n;
  while (!checked_ && head_len_ >= need_) {
    if (!checkHead()) return result();
  }
  return {};
}

namespace {
uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
bool startsWith(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }
}  // namespace

// head_[0..need_) is here. Either fails (kBadHeader), finishes the check
// (checked_), or asks for more bytes (a larger need_).
bool UploadSniffer::checkHead() {
  auto bad = [this](uint64_t at) {
    error_ = Error::kBadHeader;
    error_offset_ = at;
    return false;
  };
  if (kind_ == UploadKind::kXls) {
    const uint16_t major = le16(head_ + 10);
    if (major != 3 && major != 4) return bad(10);
    if (le16(head_ + 12) != 0xFFFE) return bad(12);
    if (le16(head_ + 14) != (major == 3 ? 9 : 12)) return bad(14);
    if (le16(head_ + 16) != 6) return bad(16);
    checked_ = true;
    return true;
  }
  // xlsx: ZIP local file header (APPNOTE 4.3.7).
  if (need_ == 30) {
    if (head_[4] > 63 || head_[5] > 3) return bad(4);     // version needed: 6.3 at most
    if ((le16(head_ + 6) & 0x0001) != 0) return bad(6);    // encrypted entry
    const uint16_t method = le16(head_ + 8);
    if (method != 0 && method != 8) return bad(8);         // stored or deflated
    const uint16_t name_len = le16(head_ + 26);
    if (name_len == 0 || name_len > 255) return bad(26);
    need_ = static_cast<uint16_t>(30 + name_len);
    return true;
  }
  const std::string_view name(reinterpret_cast<const char*>(head_ + 30), need_ - 30u);
  for (size_t i = 0; i < name.size(); ++i) {
    const auto c = static_cast<uint8_t>(name[i]);
    if (c < 0x21 || c > 0x7E) return bad(30 + i);
  }
  if (name != "[Content_Types].xml" && !startsWith(name, "_rels/") && !startsWith(name, "docProps/") &&
      !startsWith(name, "xl/") && !startsWith(name, "customXml/")) {
    return bad(30);
  }
  checked_ = true;
  return true;
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
  if (matched_ < magic_len_ || !checked_) {
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
    case Error::kBadHeader: return "bad_file_header";
    case Error::kTooShort: return "too_short";
    case Error::kCsv: return "bad_csv";
  }
  return "unknown";
}

}  // namespace portcullis
