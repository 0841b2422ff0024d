#include "filters/multipart_parser.h"

#include "filters/media_type.h"

#include <algorithm>
#include <cstring>

namespace portcullis {

enum MultipartParser::State : uint8_t {
  kPreamble,     // before the first boundary (content run: bytes counted)
  kBody,         // inside a part body (content run: bytes delivered)
  kAfterDelim,   // right after "--boundary"
  kPadding,      // transport padding after a boundary
  kDelimCR,      // CR after a boundary line, LF must follow
  kCloseDash,    // "--boundary-", a second '-' must follow
  kAfterClose,   // after the close delimiter (padding allowed)
  kCloseCR,      // CR after the close delimiter
  kEpilogue,     // after the close delimiter (content run without delimiters)
  kHead,         // inside a part head
};

namespace {

bool isBchar(uint8_t c) {
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
  if (c >= '0' && c <= '9') return true;
  switch (c) {
    case '\'': case '(': case ')': case '+': case '_': case ',': case '-': case '.':
    case '/': case ':': case '=': case '?': case ' ':
      return true;
    default:
      return false;
  }
}

bool isOws(uint8_t c) { return c == ' ' || c == '\t'; }

// A tiny cursor over a header value for parameter lists.
struct Cursor {
  const char* p;
  const char* end;
  void skipOws() {
    while (p < end && isOws(static_cast<uint8_t>(*p))) ++p;
  }
  std::string_view token() {
    const char* s = p;
    while (p < end && isTchar(static_cast<uint8_t>(*p))) ++p;
    return {s, static_cast<size_t>(p - s)};
  }
};

}  // namespace

bool validBoundary(std::string_view b) {
  if (b.empty() || b.size() > 70 || b.back() == ' ') return false;
  for (char c : b)
    if (!isBchar(static_cast<uint8_t>(c))) return false;
  return true;
}

BoundaryError multipartBoundary(std::string_view ct, std::string_view& boundary) {
  std::string_view type, sub, rest;
  if (!splitMediaType(ct, type, sub, rest) || !iequals(type, "multipart") || !iequals(sub, "form-data")) {
    return BoundaryError::kNotMultipartFormData;
  }
  MediaParams params(rest);
  MediaParam p;
  bool found = false;
  while (params.next(p)) {
    if (p.escaped) return BoundaryError::kBadSyntax;  // no bchar needs a quoted-pair
    if (!iequals(p.name, "boundary")) continue;
    if (found) return BoundaryError::kDuplicate;
    found = true;
    if (!validBoundary(p.value)) return BoundaryError::kBadBoundary;
    if (!p.quoted) {
      // Token form: only characters that are both bchars and tchars.
      for (char ch : p.value)
        if (!isTchar(static_cast<uint8_t>(ch))) return BoundaryError::kBadBoundary;
    }
    boundary = p.value;
  }
  if (params.bad()) return BoundaryError::kBadSyntax;
  return found ? BoundaryError::kNone : BoundaryError::kMissing;
}

const char* boundaryErrorName(BoundaryError e) {
  switch (e) {
    case BoundaryError::kNone: return "none";
    case BoundaryError::kNotMultipartFormData: return "not_multipart_form_data";
    case BoundaryError::kMissing: return "missing_boundary";
    case BoundaryError::kDuplicate: return "duplicate_boundary";
    case BoundaryError::kBadSyntax: return "bad_parameter_syntax";
    case BoundaryError::kBadBoundary: return "bad_boundary";
  }
  return "unknown";
}

MultipartParser::MultipartParser(std::string_view boundary, MultipartHandler& handler,
                                 const MultipartLimits& limits)
    : handler_(handler), limits_(limits), head_(new char[limits.max_head_bytes ? limits.max_head_bytes : 1]),
      state_(kPreamble), run_limit_(limits.max_preamble_bytes) {
  if (!validBoundary(boundary)) {
    error_ = Error::kBadBoundary;
    return;
  }
  std::memcpy(delim_, "\r\n--", 4);
  std::memcpy(delim_ + 4, boundary.data(), boundary.size());
  dlen_ = static_cast<uint8_t>(4 + boundary.size());
}

void MultipartParser::fail(Error e, uint64_t at) {
  error_ = e;
  error_offset_ = at;
}

// The first "--" boundary in p[0..n), or nullptr. glibc's memmem (strings
// up to 256 bytes) skips ahead by up to the string's length on a hash of two
// bytes, so the longer the boundary the fewer bytes it reads; it does not
// allocate.
const uint8_t* MultipartParser::findDashBoundary(const uint8_t* p, size_t n) const {
  const size_t plen = dlen_ - 2u;
  if (n < plen) return nullptr;
  return static_cast<const uint8_t*>(::memmem(p, n, delim_ + 2, plen));
}

// How many of the run's last bytes s[0..len) may still begin a delimiter:
// those from the last CR if they are a proper prefix of "\r\n--" boundary
// (a boundary holds no CR); at the start of the body (`body_start`: s is all
// of it so far) all of them if they are a proper prefix of "--" boundary,
// the CRLF before the first delimiter being optional.
size_t MultipartParser::pendingDelimiter(const uint8_t* s, size_t len, bool body_start) const {
  const size_t lo = len > dlen_ - 1u ? len - (dlen_ - 1u) : 0;
  for (size_t i = len; i > lo; --i) {
    if (s[i - 1] == '\r') {
      const size_t k = len - (i - 1);
      return std::memcmp(s + i - 1, delim_, k) == 0 ? k : 0;
    }
  }
  return body_start && len < dlen_ - 2u && std::memcmp(s, delim_ + 2, len) == 0 ? len : 0;
}

// Part data: delivers the first `k` bytes of hold_ + p[0..), `at` being the
// body offset of p[0].
bool MultipartParser::deliver(const uint8_t* p, size_t k, uint64_t at) {
  const size_t from_hold = std::min<size_t>(k, hold_len_);
  if (from_hold > 0 && !handler_.onPartData(reinterpret_cast<const char*>(hold_), from_hold)) {
    fail(Error::kAborted, at - hold_len_);
    return false;
  }
  if (k > from_hold && !handler_.onPartData(reinterpret_cast<const char*>(p), k - from_hold)) {
    fail(Error::kAborted, at);
    return false;
  }
  return true;
}

// hold_ becomes the last `keep` bytes of hold_ + p[0..n).
void MultipartParser::keepHold(const uint8_t* p, size_t n, size_t keep) {
  if (n >= keep) {
    std::memcpy(hold_, p + n - keep, keep);
  } else {
    std::memmove(hold_, hold_ + hold_len_ - (keep - n), keep - n);
    std::memcpy(hold_ + keep - n, p, n);
  }
  hold_len_ = static_cast<uint8_t>(keep);
}

// The run has crossed its size limit (the preamble's or the epilogue's; a
// part body has none): fails at its first byte over it.
bool MultipartParser::runTooLarge() {
  fail(state_ == kEpilogue ? Error::kEpilogueTooLarge : Error::kPreambleTooLarge, run_limit_);
  return false;
}

// p[0..n) continues the current content run (preamble, part body or
// epilogue; `at` is the body offset of p[0]; hold_ holds the run's unsettled
// bytes right before it). One search for "--" boundary finds both kinds:
// outside the epilogue, one with a CRLF before it in the run (or at the
// start of the body) is a delimiter, which ends the run (*after points past
// it); any other is kBadBoundaryLine at its first '-'. Of that error and the
// run's size limit, the one whose last byte comes first is reported (so the
// split does not matter). Part data is delivered up to the delimiter's CR or
// the bare string; without either in p, the run's last bytes that may begin
// a delimiter, and the fewer than "--" boundary bytes before them, are held.
bool MultipartParser::content(const uint8_t* p, size_t n, uint64_t at, const uint8_t*& after) {
  const uint8_t* const pat = reinterpret_cast<const uint8_t*>(delim_) + 2;
  const size_t plen = dlen_ - 2u;
  const uint64_t from = at - hold_len_;  // body offset of hold_[0]
  uint64_t hit = kNoHit;
  bool crlf = false;
  // First hold_ and p's first bytes: a string that starts in hold_, or in
  // p[0..2) with bytes of hold_ before it (none ends inside hold_: it would
  // have ended the run or failed it).
  uint8_t joined[kHoldSize + kMaxDelim - 1];
  const size_t held = hold_len_;
  size_t jlen = 0;
  if (held > 0) {
    const size_t head = std::min(n, plen + 1);
    std::memcpy(joined, hold_, held);
    std::memcpy(joined + held, p, head);
    jlen = held + head;
    for (size_t i = held + 1 > plen ? held + 1 - plen : 0; i <= held + 1 && i + plen <= jlen; ++i) {
      if (joined[i] == '-' && std::memcmp(joined + i, pat, plen) == 0) {
        hit = from + i;
        crlf = i >= 2 && joined[i - 2] == '\r' && joined[i - 1] == '\n';
        break;
      }
    }
  }
  if (hit == kNoHit) {
    // A string found here at p[0] or p[1] has no byte of the run before it.
    const uint8_t* const q = findDashBoundary(p, n);
    if (q != nullptr) {
      const size_t i = static_cast<size_t>(q - p);
      hit = at + i;
      crlf = i >= 2 && q[-2] == '\r' && q[-1] == '\n';
    }
  }

  if (hit != kNoHit) {
    if (state_ != kEpilogue && (crlf || (state_ == kPreamble && hit == 0))) {
      const uint64_t content_end = crlf ? hit - 2 : hit;
      if (content_end > run_limit_) return runTooLarge();
      if (state_ == kBody && !deliver(p, static_cast<size_t>(content_end - from), at)) return false;
      hold_len_ = 0;
      after = p + static_cast<size_t>(hit + plen - at);
      return true;
    }
    if (hit + (plen - 1) >= run_limit_) return runTooLarge();
    if (state_ == kBody && !deliver(p, static_cast<size_t>(hit - from), at)) return false;
    fail(Error::kBadBoundaryLine, hit);
    return false;
  }

  size_t pending = 0;
  if (state_ != kEpilogue) {
    const size_t window = dlen_ - 1u;
    if (n >= window) {
      pending = pendingDelimiter(p + n - window, window, false);
    } else if (held > 0) {
      pending = pendingDelimiter(joined, jlen, state_ == kPreamble && from == 0);  // joined holds all of p
    } else {
      pending = pendingDelimiter(p, n, state_ == kPreamble && at == 0);
    }
  }
  if (at + n - pending > run_limit_) return runTooLarge();
  const size_t total = held + n;
  const size_t keep = std::min(total, pending + plen - 1);
  if (state_ == kBody && !deliver(p, total - keep, at)) return false;
  keepHold(p, n, keep);
  return true;
}

MultipartParser::Result MultipartParser::feed(const char* data, size_t n) {
  if (error_ != Error::kNone) return result();
  const uint8_t* const begin = reinterpret_cast<const uint8_t*>(data);
  const uint8_t* p = begin;
  const uint8_t* const end = begin + n;
  auto off = [&](const uint8_t* q) { return consumed_ + static_cast<uint64_t>(q - begin); };
  uint8_t c;

  while (p < end) {
    switch (state_) {
      case kPreamble:
      case kBody:
      case kEpilogue: {
        const uint8_t* after = nullptr;
        if (!content(p, static_cast<size_t>(end - p), off(p), after)) goto failed;
        if (after == nullptr) goto done;
        p = after;
        if (state_ == kBody && !handler_.onPartEnd()) {
          fail(Error::kAborted, off(p));
          goto failed;
        }
        state_ = kAfterDelim;
        continue;
      }

      case kAfterDelim:
        c = *p;
        if (c == '-') {
          state_ = kCloseDash;
        } else if (isOws(c)) {
          state_ = kPadding;
        } else if (c == '\r') {
          state_ = kDelimCR;
        } else {
          fail(Error::kBadBoundaryLine, off(p));
          goto failed;
        }
        ++p;
        continue;

      case kPadding:
        c = *p;
        if (c == '\r') {
          state_ = kDelimCR;
        } else if (!isOws(c)) {
          fail(Error::kBadBoundaryLine, off(p));
          goto failed;
        }
        ++p;
        continue;

      case kDelimCR:
        if (*p != '\n') {
          fail(Error::kBadBoundaryLine, off(p));
          goto failed;
        }
        if (parts_ >= limits_.max_parts) {
          fail(Error::kTooManyParts, off(p));
          goto failed;
        }
        ++p;
        state_ = kHead;
        headers_ = 0;
        head_bytes_ = 0;
        head_len_ = 0;
        line_start_ = 0;
        line_offset_ = off(p);
        head_cr_ = false;
        ct_pos_ = name_pos_ = fn_pos_ = -1;
        ct_len_ = name_len_ = fn_len_ = 0;
        have_cd_ = false;
        continue;

      case kCloseDash:
        if (*p != '-') {
          fail(Error::kBadBoundaryLine, off(p));
          goto failed;
        }
        ++p;
        state_ = kAfterClose;
        continue;

      case kAfterClose:
        c = *p;
        if (c == '\r') {
          state_ = kCloseCR;
        } else if (!isOws(c)) {
          fail(Error::kBadBoundaryLine, off(p));
          goto failed;
        }
        ++p;
        continue;

      case kCloseCR:
        if (*p != '\n') {
          fail(Error::kBadBoundaryLine, off(p));
          goto failed;
        }
        ++p;
        state_ = kEpilogue;
        run_limit_ = off(p) + limits_.max_epilogue_bytes;
        continue;

      case kHead:
        c = *p;
        if (head_bytes_ >= limits_.max_head_bytes) {
          fail(Error::kHeadTooLarge, off(p));
          goto failed;
        }
        ++head_bytes_;
        if (head_cr_) {
          if (c != '\n') {
            fail(Error::kBadLineEnding, off(p));
            goto failed;
          }
          head_cr_ = false;
          ++p;
          if (head_len_ == line_start_) {
            if (!headEnd(off(p) - 1)) goto failed;
            state_ = kBody;
            run_limit_ = kNoLimit;
            continue;
          }
          if (!headLine(line_offset_)) goto failed;
          line_start_ = head_len_;
          line_offset_ = off(p);
          continue;
        }
        if (c == '\r') {
          head_cr_ = true;
        } else if (c == '\n') {
          fail(Error::kBadLineEnding, off(p));
          goto failed;
        } else {
          head_[head_len_++] = static_cast<char>(c);
        }
        ++p;
        continue;
    }
  }

done:
  consumed_ += n;
  return {};

failed:
  consumed_ += n;
  return result();
}

// Parses the header line head_[line_start_, head_len_).
bool MultipartParser::headLine(uint64_t line_offset) {
  char* const line = head_.get() + line_start_;
  const size_t len = head_len_ - line_start_;
  if (++headers_ > limits_.max_headers) {
    fail(Error::kTooManyHeaders, line_offset);
    return false;
  }
  size_t i = 0;
  while (i < len && isTchar(static_cast<uint8_t>(line[i]))) ++i;
  if (i == 0 || i == len || line[i] != ':') {
    fail(Error::kBadHeader, line_offset + i);
    return false;
  }
  const std::string_view name(line, i);
  size_t v = i + 1;
  for (size_t k = v; k < len; ++k) {
    const uint8_t ch = static_cast<uint8_t>(line[k]);
    if ((ch < 0x20 && ch != '\t') || ch == 0x7F) {
      fail(Error::kBadHeader, line_offset + k);
      return false;
    }
  }
  size_t ve = len;
  while (v < ve && isOws(static_cast<uint8_t>(line[v]))) ++v;
  while (ve > v && isOws(static_cast<uint8_t>(line[ve - 1]))) --ve;
  const std::string_view value(line + v, ve - v);

  if (iequals(name, "content-disposition")) {
    if (have_cd_) {
      fail(Error::kDuplicateHeader, line_offset);
      return false;
    }
    have_cd_ = true;
    return parseDisposition(line + v, ve - v, line_offset);
  }
  if (iequals(name, "content-type")) {
    if (ct_pos_ >= 0) {
      fail(Error::kDuplicateHeader, line_offset);
      return false;
    }
    ct_pos_ = static_cast<int32_t>(line_start_ + v);
    ct_len_ = static_cast<uint32_t>(ve - v);
    return true;
  }
  if (iequals(name, "content-transfer-encoding")) {
    if (!iequals(value, "binary") && !iequals(value, "8bit") && !iequals(value, "7bit")) {
      fail(Error::kBadTransferEncoding, line_offset);
      return false;
    }
  }
  return true;
}

// Content-Disposition: form-data; name="x"; filename="y". Quoted strings are
// unescaped in place (quoted-pair), which only shrinks them.
bool MultipartParser::parseDisposition(char* v, size_t n, uint64_t at) {
  Cursor c{v, v + n};
  const std::string_view type = c.token();
  if (!iequals(type, "form-data")) {
    fail(Error::kBadContentDisposition, at);
    return false;
  }
  for (;;) {
    c.skipOws();
    if (c.p == c.end) break;
    if (*c.p != ';') {
      fail(Error::kBadContentDisposition, at);
      return false;
    }
    ++c.p;
    c.skipOws();
    const std::string_view pname = c.token();
    c.skipOws();
    if (pname.empty() || c.p == c.end || *c.p != '=') {
      fail(Error::kBadContentDisposition, at);
      return false;
    }
    ++c.p;
    c.skipOws();
    char* vs;
    size_t vlen;
    if (c.p < c.end && *c.p == '"') {
      ++c.p;
      vs = const_cast<char*>(c.p);
      char* w = vs;
      for (;;) {
        if (c.p == c.end) {
          fail(Error::kBadContentDisposition, at);
          return false;
        }
        char ch = *c.p++;
        if (ch == '"') break;
        if (ch == '\\') {
          if (c.p == c.end) {
            fail(Error::kBadContentDisposition, at);
            return false;
          }
          ch = *c.p++;
        }
        *w++ = ch;
      }
      vlen = static_cast<size_t>(w - vs);
    } else {
      vs = const_cast<char*>(c.p);
      vlen = c.token().size();
      if (vlen == 0) {
        fail(Error::kBadContentDisposition, at);
        return false;
      }
    }
    const int32_t pos = static_cast<int32_t>(vs - head_.get());
    if (iequals(pname, "name")) {
      if (name_pos_ >= 0) {
        fail(Error::kBadContentDisposition, at);
        return false;
      }
      name_pos_ = pos;
      name_len_ = static_cast<uint32_t>(vlen);
    } else if (iequals(pname, "filename")) {
      if (fn_pos_ >= 0) {
        fail(Error::kBadContentDisposition, at);
        return false;
      }
      fn_pos_ = pos;
      fn_len_ = static_cast<uint32_t>(vlen);
    } else if (iequals(pname, "filename*")) {
      fail(Error::kBadContentDisposition, at);
      return false;
    }
  }
  if (name_pos_ < 0) {
    fail(Error::kBadContentDisposition, at);
    return false;
  }
  return true;
}

bool MultipartParser::headEnd(uint64_t at) {
  if (!have_cd_) {
    fail(Error::kMissingContentDisposition, at);
    return false;
  }
  MultipartPart part;
  part.index = parts_++;
  const char* h = head_.get();
  part.name = {h + name_pos_, name_len_};
  if (fn_pos_ >= 0) {
    part.has_filename = true;
    part.filename = {h + fn_pos_, fn_len_};
  }
  if (ct_pos_ >= 0) part.content_type = {h + ct_pos_, ct_len_};
  if (!handler_.onPartBegin(part)) {
    fail(Error::kAborted, at);
    return false;
  }
  return true;
}

MultipartParser::Result MultipartParser::finish() {
  if (error_ != Error::kNone) return result();
  if (state_ != kAfterClose && state_ != kEpilogue) fail(Error::kMissingFinalBoundary, consumed_);
  return result();
}

const char* MultipartParser::errorName(Error e) {
  switch (e) {
    case Error::kNone: return "none";
    case Error::kBadBoundary: return "bad_boundary";
    case Error::kBadBoundaryLine: return "bad_boundary_line";
    case Error::kPreambleTooLarge: return "preamble_too_large";
    case Error::kEpilogueTooLarge: return "epilogue_too_large";
    case Error::kHeadTooLarge: return "part_head_too_large";
    case Error::kTooManyHeaders: return "too_many_part_headers";
    case Error::kBadLineEnding: return "bad_line_ending";
    case Error::kBadHeader: return "bad_part_header";
    case Error::kDuplicateHeader: return "duplicate_part_header";
    case Error::kMissingContentDisposition: return "missing_content_disposition";
    case Error::kBadContentDisposition: return "bad_content_disposition";
    case Error::kBadTransferEncoding: return "bad_transfer_encoding";
    case Error::kTooManyParts: return "too_many_parts";
    case Error::kMissingFinalBoundary: return "missing_final_boundary";
    case Error::kAborted: return "aborted";
  }
  return "unknown";
}

}  // namespace portcullis
