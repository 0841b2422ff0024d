// Parsed HTTP/1.x message heads. Names and values are string_views into the
// connection's read buffer (or, for a header split across reads, into the
// request arena); they stay valid until the message is finished. Edits made by
// the proxy and by filters are recorded beside the parsed headers and applied
// only when the head is serialised for the next hop; the read buffer is never
// rewritten in place.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/headers.h"

namespace portcullis {

struct Header {
  std::string_view name;
  std::string_view value;
  HeaderId id = HeaderId::kOther;
  bool removed = false;  // set by edits: not serialised
};

struct AddedHeader {
  std::string_view name;   // storage owned by the request arena or static
  std::string_view value;
};

// Common part of request and response heads.
struct MessageHead {
  uint8_t http_major = 1;
  uint8_t http_minor = 1;
  std::vector<Header> headers;  // in arrival order
  std::vector<AddedHeader> added;

  // Framing as determined by the parser.
  bool chunked = false;
  bool has_content_length = false;
  uint64_t content_length = 0;
  bool keep_alive = true;  // per llhttp_should_keep_alive()

  const Header* find(HeaderId id) const {
    for (const Header& h : headers)
      if (h.id == id && !h.removed) return &h;
    return nullptr;
  }
  // Finds a header of kind kOther by case-insensitive name.
  const Header* findByName(std::string_view name) const;
  // Marks every header with this id removed.
  void remove(HeaderId id) {
    for (Header& h : headers)
      if (h.id == id) h.removed = true;
  }
  void add(std::string_view name, std::string_view value) { added.push_back({name, value}); }
  bool hasBody() const { return chunked || (has_content_length && content_length > 0); }

  void clear() {
    headers.clear();
    added.clear();
    chunked = has_content_length = false;
    content_length = 0;
    keep_alive = true;
    http_major = http_minor = 1;
  }
};

struct RequestHead : MessageHead {
  uint8_t method = 0;            // llhttp_method_t
  std::string_view method_name;  // "GET", ...
  std::string_view target;       // request-target as received
  std::string_view path;         // target without query (what routing sees)
  std::string_view query;        // after '?', without it; empty if none
  bool expect_continue = false;  // "Expect: 100-continue" was sent

  void clear() {
    MessageHead::clear();
    method = 0;
    method_name = target = path = query = {};
    expect_continue = false;
  }
};

struct ResponseHead : MessageHead {
  int status = 0;
  std::string_view reason;
  void clear() {
    MessageHead::clear();
    status = 0;
    reason = {};
  }
};

// Appends `head` as an HTTP/1.1 request for the next hop: request line, the
// headers not removed and not hop-by-hop, the added headers, then the framing
// headers the proxy decides (`Content-Length: N` or `Transfer-Encoding: chunked`
// per `body_chunked` / `body_length`; none when has_body is false), and
// "Connection: keep-alive" is implied (HTTP/1.1).
void serializeRequest(const RequestHead& head, bool has_body, bool body_chunked, uint64_t body_length,
                      std::string& out);

// Appends `head` as an HTTP/1.1 response to the client. `framing` selects how
// the body is delimited towards the client. `close` adds "Connection: close".
enum class ResponseFraming : uint8_t { kNone, kContentLength, kChunked, kUntilClose };
void serializeResponse(const ResponseHead& head, ResponseFraming framing, uint64_t content_length, bool close,
                       std::string& out);

// Reason phrase for a status code ("OK", "Not Found", ...); "Unknown" otherwise.
std::string_view reasonPhrase(int status);

}  // namespace portcullis
