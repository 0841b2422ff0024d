#include "proxy/http_message.h"

#include "proxy/write_cursor.h"

namespace portcullis {

namespace {

// "Content-Length: " + digits + CRLF, longer than "Transfer-Encoding: chunked\r\n".
constexpr size_t kFramingMax = 16 + WriteCursor::kMaxDigits + 2;

void putHeader(WriteCursor& w, std::string_view name, std::string_view value) {
  w.put(name);
  w.lit(": ");
  w.put(value);
  w.lit("\r\n");
}

// Bytes the header lines of `head` (all of them, kept or not) and its added
// headers can take: the part of a head's size bound that varies.
size_t headerLinesBound(const MessageHead& head) {
  size_t n = 0;
  for (const Header& h : head.headers) n += h.name.size() + h.value.size() + 4;
  for (const AddedHeader& a : head.added) n += a.name.size() + a.value.size() + 4;
  return n;
}

// A header is forwarded unless removed, hop-by-hop, or named in the message's
// own Connection header (RFC 9110 §7.6.1).
bool forwardable(const MessageHead& head, const Header& h, const Header* connection) {
  if (h.removed || isHopByHop(h.id)) return false;
  if (connection != nullptr && h.id == HeaderId::kOther && headerListContains(connection->value, h.name)) {
    return false;
  }
  return true;
}

}  // namespace

const Header* MessageHead::findByName(std::string_view name) const {
  for (const Header& h : headers)
    if (!h.removed && equalsIgnoreCase(h.name, name)) return &h;
  return nullptr;
}

void serializeRequest(const RequestHead& head, bool has_body, bool body_chunked, uint64_t body_length,
                      std::string& out) {
  // Request line + header lines + framing + the empty line.
  WriteCursor w(out, head.method_name.size() + 1 + head.target.size() + 11 + headerLinesBound(head) +
                        kFramingMax + 2);
  w.put(head.method_name);
  w.put(' ');
  w.put(head.target);
  w.lit(" HTTP/1.1\r\n");
  const Header* connection = head.find(HeaderId::kConnection);
  for (const Header& h : head.headers) {
    if (h.id == HeaderId::kContentLength) continue;  // framing is ours, below
    if (forwardable(head, h, connection)) putHeader(w, h.name, h.value);
  }
  for (const AddedHeader& a : head.added) putHeader(w, a.name, a.value);
  if (has_body) {
    if (body_chunked) {
      w.lit("Transfer-Encoding: chunked\r\n");
    } else {
      w.lit("Content-Length: ");
      w.number(body_length);
      w.lit("\r\n");
    }
  }
  w.lit("\r\n");
}

void serializeResponse(const ResponseHead& head, ResponseFraming framing, uint64_t content_length, bool close,
                       std::string& out) {
  const std::string_view reason = head.reason.empty() ? reasonPhrase(head.status) : head.reason;
  // Status line + header lines + framing + "Connection: close\r\n" + the
  // empty line.
  WriteCursor w(out, 9 + WriteCursor::kMaxDigits + 1 + reason.size() + 2 + headerLinesBound(head) +
                        kFramingMax + 19 + 2);
  w.lit("HTTP/1.1 ");
  w.number(static_cast<uint64_t>(head.status));
  w.put(' ');
  w.put(reason);
  w.lit("\r\n");
  const Header* connection = head.find(HeaderId::kConnection);
  for (const Header& h : head.headers) {
    if (h.id == HeaderId::kContentLength && framing != ResponseFraming::kNone) continue;
    if (forwardable(head, h, connection)) putHeader(w, h.name, h.value);
  }
  for (const AddedHeader& a : head.added) putHeader(w, a.name, a.value);
  switch (framing) {
    case ResponseFraming::kContentLength:
      w.lit("Content-Length: ");
      w.number(content_length);
      w.lit("\r\n");
      break;
    case ResponseFraming::kChunked:
      w.lit("Transfer-Encoding: chunked\r\n");
      break;
    case ResponseFraming::kNone:
    case ResponseFraming::kUntilClose:
      break;
  }
  if (close) w.lit("Connection: close\r\n");
  w.lit("\r\n");
}

std::string_view reasonPhrase(int status) {
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

}  // namespace portcullis
