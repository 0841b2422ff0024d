// HTTP/1.x parsing with llhttp in strict mode (no lenient flag is ever set).
//
// One HttpCodec parses a stream of messages of one direction (requests from a
// client, or responses from an upstream). It fills a RequestHead/ResponseHead
// and stops (pauses) at two points so the owner can act before more bytes are
// consumed: right after the head, and right after the end of each message.
// Between them, decoded body bytes are handed to the BodySink as slices of the
// input; for a chunked body the slices exclude chunk framing.
#pragma once

#include <llhttp.h>

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "proxy/arena.h"
#include "proxy/http_message.h"

namespace portcullis {

class BodySink {
 public:
  virtual ~BodySink() = default;
  // A slice of decoded body bytes; valid as long as the input buffer is.
  virtual void onBodyData(std::string_view data) = 0;
};

struct CodecLimits {
  uint32_t max_uri_bytes = 8192;
  uint32_t max_header_bytes = 16384;  // request line/status line + all headers
  uint32_t max_headers = 100;
};

// What llhttp 8.1 lets through even in strict mode, checked on the raw head
// (`head` is the request line and header section as received, starting at
// the request line or at the empty lines llhttp skips before it): every LF
// must end a CRLF and every CR start one; the request line must be exactly
// "method SP target SP version" (one space each). True when the head passes.
bool strictHeadBytes(std::string_view head);

// Why parsing failed; each maps to one status of SPEC §5.
enum class CodecError : uint8_t {
  kNone,
  kMalformed,        // 400 (and close)
  kUriTooLong,       // 414
  kHeadersTooLarge,  // 431
  kBadVersion,       // 505
};

class HttpCodec {
 public:
  enum class Status : uint8_t {
    kNeedMore,         // all input consumed, message not finished
    kHeadComplete,     // head parsed; `consumed` bytes used (ends at the head)
    kMessageComplete,  // message finished after `consumed` bytes; for a
                       // response that cannot have a body (to HEAD, 1xx,
                       // 204, 304) it comes without kHeadComplete first:
                       // the head is then reported by headDone()
    kError,            // see error()
  };

  HttpCodec(llhttp_type_t type, CodecLimits limits);
  HttpCodec(const HttpCodec&) = delete;
  HttpCodec& operator=(const HttpCodec&) = delete;

  // Sets where the next message's head goes. Must be called before parsing
  // each message (the head is cleared). `arena` receives copies of header
  // pieces that are not contiguous in the input.
  void startRequest(RequestHead* head, Arena* arena);
  void startResponse(ResponseHead* head, Arena* arena, bool request_was_head);
  void setBodySink(BodySink* sink) { sink_ = sink; }
  void setLimits(CodecLimits limits) { limits_ = limits; }

  // Parses up to `len` bytes. `consumed` is the number of bytes used; the
  // caller passes the rest again later (after acting on the status).
  // A message asking to switch protocols (Upgrade, CONNECT, a 101) ends like
  // any other; an owner that switches stops calling execute() there, and
  // otherwise parsing goes on with the next HTTP message.
  Status execute(const char* data, size_t len, size_t& consumed);

  // Tells the parser the peer closed; returns kMessageComplete if that ends a
  // close-delimited message, kNeedMore if nothing was in progress, else kError.
  Status finish();

  CodecError error() const { return error_; }
  // Why parsing failed, for logs; never null.
  const char* errorReason() const;
  bool inMessage() const { return in_message_; }
  bool headDone() const { return head_done_; }
  // True when a response body is delimited by connection close.
  bool needsEof() const { return llhttp_message_needs_eof(&parser_) != 0; }
  uint64_t headBytes() const { return head_bytes_; }

 private:
  static int onMessageBegin(llhttp_t* p);
  static int onUrl(llhttp_t* p, const char* at, size_t len);
  static int onStatus(llhttp_t* p, const char* at, size_t len);
  static int onHeaderField(llhttp_t* p, const char* at, size_t len);
  static int onHeaderValue(llhttp_t* p, const char* at, size_t len);
  static int onHeaderValueComplete(llhttp_t* p);
  static int onHeadersComplete(llhttp_t* p);
  static int onBody(llhttp_t* p, const char* at, size_t len);
  static int onMessageComplete(llhttp_t* p);

  // The callbacks of one message type, shared by every codec of that type
  // (static storage: llhttp keeps a pointer to them), so that a connection
  // does not carry a copy of its own.
  static const llhttp_settings_t* settingsFor(llhttp_type_t type);

  std::string_view append(std::string_view cur, const char* at, size_t len);
  int onTrailerBytes(size_t len);
  bool foldIn(const char* p, size_t n);
  int fail(CodecError e, const char* reason);

  llhttp_t parser_;
  CodecLimits limits_;
  MessageHead* head_ = nullptr;
  RequestHead* req_ = nullptr;
  ResponseHead* resp_ = nullptr;
  Arena* arena_ = nullptr;
  BodySink* sink_ = nullptr;
  std::string_view field_;
  std::string_view value_;
  std::string_view url_;
  std::string_view status_;
  uint64_t head_bytes_ = 0;
  uint64_t trailer_bytes_ = 0;
  const char* chunk_start_ = nullptr;
  const char* reason_ = nullptr;  // set with error_ when we (not llhttp) found it
  bool after_lf_ = false;         // the last head byte seen was LF
  bool in_value_ = false;
  bool in_message_ = false;
  bool head_done_ = false;
  bool request_was_head_ = false;
  CodecError error_ = CodecError::kNone;
};

}  // namespace portcullis
