#include "filters/multipart_parser.h"

#include "filters/media_type.h"  // isTchar, iequals

#include <algorithm>
#include <cstring>

namespace portcullis {

enum MultipartParser::State : uint8_t {
  kPreamble,     // before the first boundary (delimiter search, bytes counted)
  kBody,         // inside a part body (delimiter search, bytes emitted)
  kAfterDelim,   // right after "--boundary"
  kPadding,      // transport padding after a boundary
  kDelimCR,      // CR after a boundary line, LF must follow
  kCloseDash,    // "--boundary-", a second '-' must follow
  kAfterClose,   // after the close delimiter (padding allowed)
  kCloseCR,      // CR after the close delimiter
  kEpilogue,
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
  Cursor c{ct.data(), ct.data() + ct.size()};
  c.skipOws();
  const std::string_view type = c.token();
  if (c.p == c.end || *c.p != '/') return BoundaryError::kNotMultipartFormData;
  ++c.p;
  const std::string_view sub = c.token();
  if (!iequals(type, "multipart") || !iequals(sub, "form-data")) return BoundaryError::kNotMultipartFormData;
  bool found = false;
  for (;;) {
    c.skipOws();
    if (c.p == c.end) break;
    if (*c.p != ';') return BoundaryError::kBadSyntax;
    ++c.p;
    c.skipOws();
    const std::string_view pname = c.token();
    if (pname.empty() || c.p == c.end || *c.p != '=') return BoundaryError::kBadSyntax;
    ++c.p;
    std::string_view value;
    bool quoted = false;
    if (c.p < c.end && *c.p == '"') {
      quoted = true;
      const char* s = ++c.p;
      while (c.p < c.end && *c.p != '"') {
        const uint8_t ch = static_cast<uint8_t>(*c.p);
        if (ch == '\\' || (ch < 0x20 && ch != '\t') || ch == 0x7F) return BoundaryError::kBadSyntax;
        ++c.p;
      }
      if (c.p == c.end) return BoundaryError::kBadSyntax;
      value = {s, static_cast<size_t>(c.p - s)};
      ++c.p;
    } else {
      value = c.token();
      if (value.empty()) return BoundaryError::kBadSyntax;
    }
    if (iequals(pname, "boundary")) {
      if (found) return BoundaryError::kDuplicate;
      found = true;
      if (!validBoundary(value)) return BoundaryError::kBadBoundary;
      if (!quoted) {
        // Token form: only characters that are both bchars and tchars.
        for (char ch : value)
          if (!isTchar(static_cast<uint8_t>(ch))) return BoundaryError::kBadBoundary;
      }
      boundary = value;
    }
  }
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
      state_(kPreamble) {
  if (!validBoundary(boundary)) {
    error_ = Error::kBadBoundary;
    return;
  }
  std::memcpy(delim_, "\r\n--", 4);
  std::memcpy(delim_ + 4, boundary.data(), boundary.size());
  dlen_ = static_cast<uint8_t>(4 + boundary.size());
  match_ = 2;  // the CRLF before the first boundary is optional: pretend it was seen
}

void MultipartParser::fail(Error e, uint64_t at) {
  error_ = e;
  error_offset_ = at;
}

// Content bytes (preamble, part body, epilogue) must not hold "--" boundary:
// inside content it has no CRLF before it (that would have been a
// delimiter). p[0..n) continues the current content run (`at` is the body
// offset of p[0]); the run's last bytes, fewer than the string, are kept in
// tail_ so that a string split between two calls is found too. Returns the
// body offset where the first string ending in p starts, or kNoBare. tail_
// is left unchanged (the caller moves it on with keepTail()).
uint64_t MultipartParser::findBare(const uint8_t* p, size_t n, uint64_t at) const {
  const uint8_t* const pat = reinterpret_cast<const uint8_t*>(delim_) + 2;
  const size_t plen = dlen_ - 2u;
  if (tail_len_ > 0) {
    // Strings that start in the kept tail (earlier than any in p).
    uint8_t joined[2 * (70 + 2)];
    const size_t from_p = std::min(n, plen - 1);
    std::memcpy(joined, tail_, tail_len_);
    std::memcpy(joined + tail_len_, p, from_p);
    const size_t len = tail_len_ + from_p;
    for (size_t i = 0; i < tail_len_ && i + plen <= len; ++i) {
      if (std::memcmp(joined + i, pat, plen) == 0) return at - tail_len_ + i;
    }
  }
  if (n >= plen) {
    const void* q = ::memmem(p, n, pat, plen);  // glibc: two-way search, no allocation
    if (q != nullptr) return at + static_cast<uint64_t>(static_cast<const uint8_t*>(q) - p);
  }
  return kNoBare;
}

// tail_ becomes the last bytes (fewer than the string) of tail_ + p[0..n).
void MultipartParser::keepTail(const uint8_t* p, size_t n) {
  const size_t keep = dlen_ - 3u;
  if (n >= keep) {
    std::memcpy(tail_, p + n - keep, keep);
    tail_len_ = static_cast<uint8_t>(keep);
    return;
  }
  const size_t old = std::min<size_t>(tail_len_, keep - n);
  std::memmove(tail_, tail_ + tail_len_ - old, old);
  std::memcpy(tail_ + old, p, n);
  tail_len_ = static_cast<uint8_t>(old + n);
}

// Part data: tail_ holds bytes not yet delivered, so that nothing at or
// after the start of a bare "--" boundary reaches the handler whatever the
// split (a string is found with its last byte; the bytes it starts with are
// still in tail_ then). Delivers the first `k` bytes of tail_ + p[0..n).
bool MultipartParser::deliver(const uint8_t* p, size_t k, uint64_t at) {
  const size_t from_tail = std::min<size_t>(k, tail_len_);
  if (from_tail > 0 && !handler_.onPartData(reinterpret_cast<const char*>(tail_), from_tail)) {
    fail(Error::kAborted, at - tail_len_);
    return false;
  }
  if (k > from_tail && !handler_.onPartData(reinterpret_cast<const char*>(p), k - from_tail)) {
    fail(Error::kAborted, at);
    return false;
  }
  return true;
}

// Delivers what tail_ still holds of the part body (at its delimiter).
bool MultipartParser::flushTail(uint64_t at) {
  const bool ok = state_ != kBody || tail_len_ == 0 || deliver(nullptr, tail_len_, at);
  tail_len_ = 0;
  return ok;
}

// Body or preamble bytes that are certainly not part of a delimiter.
bool MultipartParser::emit(const uint8_t* p, size_t n, uint64_t at) {
  if (n == 0) return true;
  const uint64_t bare = findBare(p, n, at);
  if (state_ == kPreamble) {
    // The preamble starts at offset 0; of its two errors the one whose last
    // byte comes first is reported (so the split does not matter).
    const uint64_t limit = limits_.max_preamble_bytes;
    const bool over = preamble_bytes_ + n > limit;
    if (bare != kNoBare && (!over || bare + (dlen_ - 3u) < limit)) {
      fail(Error::kBadBoundaryLine, bare);
      return false;
    }
    preamble_bytes_ += n;
    if (over) {
      fail(Error::kPreambleTooLarge, limit);
      return false;
    }
    keepTail(p, n);
    return true;
  }
  if (bare != kNoBare) {
    // Everything before the string is data; the string and after are not.
    if (!deliver(p, static_cast<size_t>(bare - (at - tail_len_)), at)) return false;
    fail(Error::kBadBoundaryLine, bare);
    return false;
  }
  const size_t total = tail_len_ + n;
  const size_t keep = std::min<size_t>(total, dlen_ - 3u);
  if (!deliver(p, total - keep, at)) return false;
  keepTail(p, n);
  return true;
}

// The held-back partial delimiter turned out to be data; `at` is the body
// offset of the byte that ended the match (the held bytes come right
// before it).
bool MultipartParser::flushHeld(uint64_t at) {
  const uint8_t skip = implicit_crlf_ ? 2 : 0;
  implicit_crlf_ = false;
  const uint8_t n = match_;
  match_ = 0;
  if (n <= skip) return true;
  return emit(reinterpret_cast<const uint8_t*>(delim_) + skip, n - skip, at - (n - skip));
}

MultipartParser::Result MultipartParser::feed(const char* data, size_t n) {
  if (error_ != Error::kNone) return result();
  const uint8_t* const begin = reinterpret_cast<const uint8_t*>(data);
  const uint8_t* p = begin;
  const uint8_t* const end = begin + n;
  const uint8_t* const delim = reinterpret_cast<const uint8_t*>(delim_);
  const size_t dlen = dlen_;
  auto off = [&](const uint8_t* q) { return consumed_ + static_cast<uint64_t>(q - begin); };
  uint8_t c;

  while (p < end) {
    switch (state_) {
      case kPreamble:
      case kBody: {
        // A partial delimiter held back from the previous slice.
        while (match_ > 0 && p < end) {
          if (*p != delim[match_]) {
            if (!flushHeld(off(p))) goto failed;
            break;
          }
          ++p;
          if (++match_ == dlen) break;
        }
        if (match_ == dlen) goto delimiter;
        if (match_ > 0) goto done;  // p == end
        // Scan for CR; only a CR can start a delimiter ("\r\n--" boundary, and
        // boundaries hold no CR, so a failed match never overlaps the next one).
        const uint8_t* run = p;
        for (;;) {
          const uint8_t* cr = static_cast<const uint8_t*>(std::memchr(p, '\r', static_cast<size_t>(end - p)));
          if (cr == nullptr) {
            p = end;
            if (!emit(run, static_cast<size_t>(end - run), off(run))) goto failed;
            goto done;
          }
          const size_t avail = static_cast<size_t>(end - cr);
          if (avail >= dlen) {
            if (std::memcmp(cr, delim, dlen) == 0) {
              if (!emit(run, static_cast<size_t>(cr - run), off(run))) goto failed;
              p = cr + dlen;
              goto delimiter;
            }
          } else if (std::memcmp(cr, delim, avail) == 0) {
            if (!emit(run, static_cast<size_t>(cr - run), off(run))) goto failed;
            match_ = static_cast<uint8_t>(avail);
            implicit_crlf_ = false;
            p = end;
            goto done;
          }
          p = cr + 1;
        }
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
        continue;

      case kEpilogue: {
        // Of the epilogue's two errors the one whose last byte comes first
        // is reported (so the split does not matter).
        const uint64_t avail = static_cast<uint64_t>(end - p);
        const uint64_t bare = findBare(p, static_cast<size_t>(avail), off(p));
        const bool over = epilogue_bytes_ + avail > limits_.max_epilogue_bytes;
        const uint64_t limit_at = off(p) + (limits_.max_epilogue_bytes - epilogue_bytes_);
        if (bare != kNoBare && (!over || bare + (dlen_ - 3u) < limit_at)) {
          fail(Error::kBadBoundaryLine, bare);
          goto failed;
        }
        if (over) {
          fail(Error::kEpilogueTooLarge, limit_at);
          goto failed;
        }
        epilogue_bytes_ += avail;
        keepTail(p, static_cast<size_t>(avail));
        p = end;
        continue;
      }

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
            match_ = 0;
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
    continue;

  delimiter:
    match_ = 0;
    implicit_crlf_ = false;
    if (!flushTail(off(p))) goto failed;  // a new content run starts after this delimiter
    if (state_ == kBody && !handler_.onPartEnd()) {
      fail(Error::kAborted, off(p));
      goto failed;
    }
    state_ = kAfterDelim;
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
