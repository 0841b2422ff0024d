#include "proxy/http_codec.h"

#include <bit>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace portcullis {

namespace {

inline HttpCodec* self(llhttp_t* p) { return static_cast<HttpCodec*>(p->data); }

std::string_view trimOws(std::string_view v) {
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  return v;
}

}  // namespace

const llhttp_settings_t* HttpCodec::settingsFor(llhttp_type_t type) {
  auto make = [](llhttp_type_t t) {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_message_begin = &HttpCodec::onMessageBegin;
    s.on_header_field = &HttpCodec::onHeaderField;
    s.on_header_value = &HttpCodec::onHeaderValue;
    s.on_header_value_complete = &HttpCodec::onHeaderValueComplete;
    s.on_headers_complete = &HttpCodec::onHeadersComplete;
    s.on_body = &HttpCodec::onBody;
    s.on_message_complete = &HttpCodec::onMessageComplete;
    if (t == HTTP_REQUEST) {
      s.on_url = &HttpCodec::onUrl;
    } else {
      s.on_status = &HttpCodec::onStatus;
    }
    return s;
  };
  static const llhttp_settings_t request = make(HTTP_REQUEST);
  static const llhttp_settings_t response = make(HTTP_RESPONSE);
  return type == HTTP_REQUEST ? &request : &response;
}

HttpCodec::HttpCodec(llhttp_type_t type, CodecLimits limits) : limits_(limits) {
  llhttp_init(&parser_, type, settingsFor(type));
  parser_.data = this;
}

void HttpCodec::startRequest(RequestHead* head, Arena* arena) {
  after_lf_ = false;
  req_ = head;
  resp_ = nullptr;
  head_ = head;
  arena_ = arena;
  head_done_ = false;
  head->clear();
}

void HttpCodec::startResponse(ResponseHead* head, Arena* arena, bool request_was_head) {
  after_lf_ = false;
  resp_ = head;
  req_ = nullptr;
  head_ = head;
  arena_ = arena;
  request_was_head_ = request_was_head;
  head_done_ = false;
  head->clear();
}

int HttpCodec::fail(CodecError e, const char* reason) {
  error_ = e;
  reason_ = reason;
  return HPE_USER;
}

const char* HttpCodec::errorReason() const {
  if (reason_ != nullptr) return reason_;
  const char* r = llhttp_get_error_reason(&parser_);
  return r != nullptr ? r : "malformed message";
}

// llhttp accepts obs-fold (a header line continued on the next line that
// starts with SP or HTAB) even in LLHTTP_STRICT_MODE; RFC 9112 §5.2 lets a
// server reject it, which is what we do. Scans head bytes only; after_lf_
// carries a trailing LF over to the next read.
bool HttpCodec::foldIn(const char* p, size_t n) {
  if (n == 0) return false;
  if (after_lf_ && (p[0] == ' ' || p[0] == '\t')) return true;
  after_lf_ = false;
  const char* end = p + n;
  while ((p = static_cast<const char*>(std::memchr(p, '\n', static_cast<size_t>(end - p)))) != nullptr) {
    if (++p == end) {
      after_lf_ = true;
      return false;
    }
    if (*p == ' ' || *p == '\t') return true;
  }
  return false;
}

std::string_view HttpCodec::append(std::string_view cur, const char* at, size_t len) {
  if (cur.empty()) return {at, len};
  if (cur.data() + cur.size() == at) return {cur.data(), cur.size() + len};
  // Not contiguous in the input (the owner moved or replaced its buffer
  // between reads): keep one copy in the arena.
  return arena_->concat(cur, {at, len});
}

int HttpCodec::onMessageBegin(llhttp_t* p) {
  HttpCodec* c = self(p);
  c->in_message_ = true;
  c->head_done_ = false;
  c->head_bytes_ = 0;
  // Separate stores: a chained assignment reads each view back (16-byte
  // loads of two 8-byte stores, a store-forwarding stall per link).
  c->field_ = {};
  c->value_ = {};
  c->url_ = {};
  c->status_ = {};
  c->trailer_bytes_ = 0;
  c->in_value_ = false;
  // A message that starts with no head set up (e.g. a response without a
  // request) is a protocol violation of the peer.
  if (c->head_ == nullptr) return c->fail(CodecError::kMalformed, "message without a request");
  return 0;
}

int HttpCodec::onUrl(llhttp_t* p, const char* at, size_t len) {
  HttpCodec* c = self(p);
  c->url_ = c->append(c->url_, at, len);
  if (c->url_.size() > c->limits_.max_uri_bytes) {
    return c->fail(CodecError::kUriTooLong, "request target too long");
  }
  return 0;
}

int HttpCodec::onStatus(llhttp_t* p, const char* at, size_t len) {
  HttpCodec* c = self(p);
  c->status_ = c->append(c->status_, at, len);
  return 0;
}

// Trailer fields (after a chunked body) are not part of the head, which the
// owner has already acted on and may hold pointers into: they are counted
// against the head limit and dropped.
int HttpCodec::onTrailerBytes(size_t len) {
  trailer_bytes_ += len;
  if (trailer_bytes_ > limits_.max_header_bytes) {
    return fail(CodecError::kHeadersTooLarge, "trailer section too large");
  }
  return 0;
}

int HttpCodec::onHeaderField(llhttp_t* p, const char* at, size_t len) {
  HttpCodec* c = self(p);
  if (c->head_done_) return c->onTrailerBytes(len);
  c->field_ = c->append(c->field_, at, len);
  if (c->field_.size() > c->limits_.max_header_bytes) {
    return c->fail(CodecError::kHeadersTooLarge, "head too large");
  }
  return 0;
}

int HttpCodec::onHeaderValue(llhttp_t* p, const char* at, size_t len) {
  HttpCodec* c = self(p);
  if (c->head_done_) return c->onTrailerBytes(len);
  c->value_ = c->append(c->value_, at, len);
  c->in_value_ = true;
  if (c->value_.size() > c->limits_.max_header_bytes) {
    return c->fail(CodecError::kHeadersTooLarge, "head too large");
  }
  return 0;
}

int HttpCodec::onHeaderValueComplete(llhttp_t* p) {
  HttpCodec* c = self(p);
  if (c->head_done_) return 0;  // a trailer field, see onTrailerBytes()
  if (c->head_->headers.size() >= c->limits_.max_headers) {
    return c->fail(CodecError::kHeadersTooLarge, "too many header fields");
  }
  // A field name is a non-empty token (RFC 9110 section 5.1); llhttp lets
  // ": x" through. Requests get their own 400 for it (Connection), a
  // response is refused here rather than passed on to the client.
  if (c->resp_ != nullptr && c->field_.empty()) return c->fail(CodecError::kMalformed, "empty header name");
  // Filled in place: a Header built on the stack and copied in was read back
  // with wider loads than the stores that built it (store-forwarding stalls,
  // once per header of every message).
  const HeaderId id = lookupHeader(c->field_);
  Header& h = c->head_->headers.emplace_back();
  h.name = c->field_;
  h.value = trimOws(c->value_);
  h.id = id;
  c->field_ = {};
  c->value_ = {};
  c->in_value_ = false;
  return 0;
}

int HttpCodec::onHeadersComplete(llhttp_t* p) {
  HttpCodec* c = self(p);
  MessageHead* h = c->head_;
  h->http_major = llhttp_get_http_major(p);
  h->http_minor = llhttp_get_http_minor(p);
  if (h->http_major != 1 || h->http_minor > 1) {
    return c->fail(CodecError::kBadVersion, "unsupported HTTP version");
  }
  h->chunked = (p->flags & F_CHUNKED) != 0;
  h->has_content_length = (p->flags & F_CONTENT_LENGTH) != 0;
  h->content_length = h->has_content_length ? p->content_length : 0;
  h->keep_alive = llhttp_should_keep_alive(p) != 0;
  if (c->req_ != nullptr) {
    RequestHead* r = c->req_;
    r->method = llhttp_get_method(p);
    r->method_name = llhttp_method_name(static_cast<llhttp_method_t>(r->method));
    r->target = c->url_;
    size_t q = r->target.find('?');
    if (q == std::string_view::npos) {
      r->path = r->target;
      r->query = {};
    } else {
      r->path = r->target.substr(0, q);
      r->query = r->target.substr(q + 1);
    }
    if (const Header* e = r->find(HeaderId::kExpect)) {
      if (equalsIgnoreCase(e->value, "100-continue")) r->expect_continue = true;
    }
  } else {
    c->resp_->status = llhttp_get_status_code(p);
    c->resp_->reason = c->status_;
    // reason-phrase = *( HTAB / SP / VCHAR / obs-text ) (RFC 9112 section
    // 4); llhttp passes other control bytes, which would reach the client.
    for (const char ch : c->status_) {
      const auto b = static_cast<unsigned char>(ch);
      if ((b < 0x20 && b != '\t') || b == 0x7F) return c->fail(CodecError::kMalformed, "control byte in reason phrase");
    }
  }
  c->head_done_ = true;
  // Pausing here makes llhttp_execute() return right after the head. A
  // response to HEAD, and any 1xx, 204 or 304 response, has no body whatever
  // its framing headers say (RFC 9112 §6.3), but llhttp honours a
  // Content-Length on them unless told to skip the body; that decision is
  // taken from our return value, so these cases cannot pause and are
  // reported after execute() as kMessageComplete with headDone().
  if (c->resp_ != nullptr) {
    const int s = c->resp_->status;
    if (c->request_was_head_ || s < 200 || s == 204 || s == 304) return 1;
  }
  return HPE_PAUSED;
}

int HttpCodec::onBody(llhttp_t* p, const char* at, size_t len) {
  HttpCodec* c = self(p);
  if (c->sink_ != nullptr) c->sink_->onBodyData({at, len});
  return 0;
}

int HttpCodec::onMessageComplete(llhttp_t* p) {
  HttpCodec* c = self(p);
  c->in_message_ = false;
  return HPE_PAUSED;
}

HttpCodec::Status HttpCodec::execute(const char* data, size_t len, size_t& consumed) {
  consumed = 0;
  if (error_ != CodecError::kNone) return Status::kError;
  const bool head_was_done = head_done_;
  const bool was_in_message = in_message_;
  llhttp_errno_t err = llhttp_execute(&parser_, data, len);
  if (err == HPE_PAUSED_UPGRADE) {
    // The message before asked to switch protocols (Connection: upgrade +
    // Upgrade, or CONNECT, or a 101 answering one) and llhttp stopped at
    // its end, before any byte of this call. An owner that switched never
    // calls execute() again; one that declined (RFC 9110 §7.8: the
    // connection stays HTTP/1.1) wants the next message parsed.
    const size_t skip = static_cast<size_t>(llhttp_get_error_pos(&parser_) - data);
    llhttp_resume_after_upgrade(&parser_);
    const Status st = execute(data + skip, len - skip, consumed);
    consumed += skip;
    return st;
  }
  if (!head_was_done && (err == HPE_OK || err == HPE_PAUSED)) {
    const size_t head_part = err == HPE_OK ? len : static_cast<size_t>(llhttp_get_error_pos(&parser_) - data);
    if (foldIn(data, head_part)) {
      fail(CodecError::kMalformed, "obs-fold in header");
      return Status::kError;
    }
  }
  if (err == HPE_OK) {
    consumed = len;
    if (!head_done_ && (in_message_ || was_in_message)) {
      head_bytes_ += len;
      if (head_bytes_ > limits_.max_header_bytes) {
        fail(CodecError::kHeadersTooLarge, "head too large");
        return Status::kError;
      }
    }
    // A HEAD response completes without pausing in onHeadersComplete.
    if (!head_was_done && head_done_ && !in_message_) return Status::kHeadComplete;
    return Status::kNeedMore;
  }
  if (err == HPE_PAUSED) {
    const char* pos = llhttp_get_error_pos(&parser_);
    consumed = static_cast<size_t>(pos - data);
    llhttp_resume(&parser_);
    if (!in_message_) {
      // Message complete. If the head also finished within this call, the
      // owner still learns about the head first via headDone().
      if (!head_was_done && head_done_) {
        head_bytes_ += consumed;
        if (head_bytes_ > limits_.max_header_bytes) {
          fail(CodecError::kHeadersTooLarge, "head too large");
          return Status::kError;
        }
      }
      return Status::kMessageComplete;
    }
    if (!head_was_done && head_done_) {
      head_bytes_ += consumed;
      if (head_bytes_ > limits_.max_header_bytes) {
        fail(CodecError::kHeadersTooLarge, "head too large");
        return Status::kError;
      }
      return Status::kHeadComplete;
    }
    return Status::kNeedMore;
  }
  // error_ set by fail(): llhttp reports a failed callback as HPE_USER or
  // as its own per-callback code (e.g. HPE_CB_HEADER_VALUE_COMPLETE).
  if (err == HPE_USER || error_ != CodecError::kNone) return Status::kError;
  if (err == HPE_INVALID_VERSION) {
    error_ = CodecError::kBadVersion;
  } else {
    error_ = CodecError::kMalformed;
  }
  return Status::kError;
}

HttpCodec::Status HttpCodec::finish() {
  if (error_ != CodecError::kNone) return Status::kError;
  if (!in_message_) return Status::kNeedMore;
  llhttp_errno_t err = llhttp_finish(&parser_);
  if (err == HPE_OK || err == HPE_PAUSED) {
    if (!in_message_) return Status::kMessageComplete;
  }
  error_ = CodecError::kMalformed;
  return Status::kError;
}

bool strictHeadBytes(std::string_view head) {
  while (head.size() >= 2 && head[0] == '\r' && head[1] == '\n') head.remove_prefix(2);
  size_t line_end = head.find("\r\n");
  if (line_end == std::string_view::npos) return false;
  std::string_view line = head.substr(0, line_end);
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp1 == 0 || sp2 == std::string_view::npos || sp2 == sp1 + 1 || line.find(' ', sp2 + 1) != std::string_view::npos ||
      sp2 + 1 == line.size()) {
    return false;
  }
  // Eight bytes at a time past those with neither CR nor LF (every request
  // comes through here), then each CR or LF checked against its neighbour.
  constexpr uint64_t kOnes = 0x0101010101010101ull;
  constexpr uint64_t kHighs = 0x8080808080808080ull;
  // zeroBytes flags 0x80 in each zero byte of v; bytes above a flagged one
  // may be flagged falsely, but the lowest flag is always a true match.
  static_assert(std::endian::native == std::endian::little, "the first match is the lowest flag");
  auto zeroBytes = [](uint64_t v) { return (v - kOnes) & ~v & kHighs; };
  const char* p = head.data();
  const size_t n = head.size();
  size_t i = 0;
  while (i < n) {
    if (n - i >= 8) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      const uint64_t m = zeroBytes(w ^ (kOnes * '\r')) | zeroBytes(w ^ (kOnes * '\n'));
      if (m == 0) {
        i += 8;
        continue;
      }
      i += static_cast<size_t>(std::countr_zero(m)) >> 3;  // the first CR or LF (little-endian load)
    }
    // A CR must start a CRLF, which is then passed whole; so an LF reached
    // here follows no CR.
    const char c = p[i];
    if (c == '\r') {
      if (i + 1 == n || p[i + 1] != '\n') return false;
      i += 2;
      continue;
    }
    if (c == '\n') return false;
    ++i;
  }
  return true;
}

}  // namespace portcullis
