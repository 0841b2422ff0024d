#include "proxy/http_message.h"

#include <charconv>

namespace portcullis {

namespace {

void appendHeader(std::string& out, std::string_view name, std::string_view value) {
  out.append(name);
  out.append(": ", 2);
  out.append(value);
  out.append("\r\n", 2);
}

void appendNumber(std::string& out, uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out.append(buf, static_cast<size_t>(r.ptr - buf));
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
  out.append(head.method_name);
  out.push_back(' ');
  out.append(head.target);
  out.append(" HTTP/1.1\r\n", 11);
  const Header* connection = head.find(HeaderId::kConnection);
  for (const Header& h : head.headers) {
    if (h.id == HeaderId::kContentLength) continue;  // framing is ours, below
    if (forwardable(head, h, connection)) appendHeader(out, h.name, h.value);
  }
  for (const AddedHeader& a : head.added) appendHeader(out, a.name, a.value);
  if (has_body) {
    if (body_chunked) {
      out.append("Transfer-Encoding: chunked\r\n");
    } else {
      out.append("Content-Length: ");
      appendNumber(out, body_length);
      out.append("\r\n", 2);
    }
  }
  out.append("\r\n", 2);
}

void serializeResponse(const ResponseHead& head, ResponseFraming framing, uint64_t content_length, bool close,
                       std::string& out) {
  out.append("HTTP/1.1 ");
  appendNumber(out, static_cast<uint64_t>(head.status));
  out.push_back(' ');
  out.append(head.reason.empty() ? reasonPhrase(head.status) : head.reason);
  out.append("\r\n", 2);
  const Header* connection = head.find(HeaderId::kConnection);
  for (const Header& h : head.headers) {
    if (h.id == HeaderId::kContentLength && framing != ResponseFraming::kNone) continue;
    if (forwardable(head, h, connection)) appendHeader(out, h.name, h.value);
  }
  for (const AddedHeader& a : head.added) appendHeader(out, a.name, a.value);
  switch (framing) {
    case ResponseFraming::kContentLength:
      out.append("Content-Length: ");
      appendNumber(out, content_length);
      out.append("\r\n", 2);
      break;
    case ResponseFraming::kChunked:
      out.append("Transfer-Encoding: chunked\r\n");
      break;
    case ResponseFraming::kNone:
    case ResponseFraming::kUntilClose:
      break;
  }
  if (close) out.append("Connection: close\r\n");
  out.append("\r\n", 2);
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
