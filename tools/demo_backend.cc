// demo-backend — the bundled sample upstream for Portcullis.
//
// A single-threaded libuv + llhttp HTTP/1.1 origin server. It is the upstream
// of `make run`, the origin the end-to-end tests put behind the proxy, and the
// origin of the load benchmarks, so it is small, strict and cheap per request.
//
// Usage:
//   demo-backend [--listen HOST:PORT] [--upload-dir DIR] [--port-file FILE] [--quiet]
//
//   --listen HOST:PORT  address to listen on (default 127.0.0.1:9000). Port 0
//                       picks an ephemeral port. IPv6 is written "[::1]:9000".
//   --upload-dir DIR    enables storing POST /upload bodies under DIR (created
//                       if missing; its parent must exist).
//   --port-file FILE    after listening, the bound port (decimal + "\n") is
//                       written to FILE atomically (temporary file + rename).
//   --quiet             do not print "demo-backend listening on HOST:PORT".
//
// Protocol: HTTP/1.1 with keep-alive and pipelining (responses are sent in
// request order), HTTP/1.0 with or without keep-alive. Request bodies may be
// framed by Content-Length or chunked; they are streamed, never held whole in
// memory: every body is hashed incrementally (SHA-256) and, for uploads,
// written to disk as it arrives. "Expect: 100-continue" is answered with
// "100 Continue". A request llhttp rejects gets "400 Bad Request" and the
// connection is closed. SIGTERM and SIGINT close everything and exit 0.
//
// Endpoints (HEAD is accepted wherever GET is, and gets no body):
//
//   GET /healthz        200 "ok\n" (text/plain).
//   GET /_requests      200 with the number of complete requests served so far
//                       (all but /healthz and /_requests itself), text/plain:
//                       lets tests prove the proxy forwarded nothing.
//   GET /tiny           200 with exactly 64 bytes of text/plain body, served
//                       from a precomputed response (benchmarks).
//   GET /bytes/N        200 with an N-byte body, Content-Length framed. Byte i
//                       of the body is (i*31+7) & 0xff. Written in 64 KiB
//                       pieces as the client drains them, so N may be huge.
//   GET /chunked/N      The same N bytes, Transfer-Encoding: chunked, in chunks
//                       of at most 16 KiB (for an HTTP/1.0 client: no framing,
//                       the connection close ends the body).
//   GET /close-mid/N    Headers with Content-Length: N, then only N/2 bytes of
//                       the pattern, then the connection is closed (an upstream
//                       that dies mid-response).
//   ANY /delay/MS       Waits MS milliseconds (at most 3600000), then 200 "{}".
//   ANY /status/CODE    Responds with status CODE (200..599) and a small JSON
//                       body {"status":CODE}; no body for 204 and 304.
//   POST /upload?name=X With --upload-dir: the body is streamed to DIR/X
//                       (through a temporary DIR/.X.<n>.part renamed into place
//                       when the body is complete). X must match
//                       [A-Za-z0-9._-]{1,255} and not start with '.', else
//                       400. Responds with the JSON echo below. Without
//                       --upload-dir it is a plain echo.
//   anything else       200 JSON echo (application/json):
//                         {"method":"POST","path":"/raw/target?with=query",
//                          "headers":{"host":"...", ...},
//                          "body_bytes":N,"body_sha256":"<hex>"}
//                       Header names are lower-cased; repeated names are
//                       joined with ", " in arrival order; trailers of a
//                       chunked body are not included.
//
// A malformed number in a special path (e.g. /bytes/abc) gets 400.

#include <fcntl.h>
#include <llhttp.h>
#include <openssl/sha.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "proxy/errno_message.h"

namespace {

constexpr size_t kReadBufferSize = 64 * 1024;
constexpr size_t kPieceSize = 64 * 1024;        // /bytes and /close-mid write unit
constexpr size_t kChunkSize = 16 * 1024;        // /chunked chunk size
constexpr size_t kHighWater = 1024 * 1024;     // stop parsing when this much output is queued
constexpr int kMaxSyncPieces = 16;              // pieces written before yielding to the loop
constexpr uint64_t kMaxDelayMs = 3600 * 1000;
constexpr uint64_t kMaxBytes = uint64_t{1} << 40;

// Byte i of every generated body is (i*31+7) & 0xff, which only depends on
// i mod 256, so a piece starting at offset o is &g_pattern[o & 255].
unsigned char g_pattern[kPieceSize + 256];

std::string g_tiny_keep_alive;   // HTTP/1.1 keep-alive
std::string g_tiny_keep_alive10; // HTTP/1.0 keep-alive
std::string g_tiny_close;

enum class Route : uint8_t {
  kEcho,
  kHealthz,
  kRequests,
  kTiny,
  kBytes,
  kChunked,
  kCloseMid,
  kDelay,
  kStatus,
  kUpload,
  kBadParam,
};

enum class Active : uint8_t { kNone, kStream, kDelay };

struct Header {
  std::string name;
  std::string value;
};

struct Server;

struct Conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  llhttp_t parser;
  Server* server = nullptr;
  Conn* prev = nullptr;
  Conn* next = nullptr;
  int open_handles = 0;

  bool reading = false;
  bool paused = false;          // parser paused; unparsed bytes in rbuf[pend_off, pend_end)
  bool closing_after = false;   // no more requests: shut down once the output is queued
  bool read_eof = false;
  bool shutting = false;
  bool closed = false;
  size_t pend_off = 0;
  size_t pend_end = 0;

  std::string out;              // response bytes not yet handed to libuv

  // The request being parsed.
  std::string url;
  std::string cur_field;
  std::string cur_value;
  std::vector<Header> headers;  // entries [0, nheaders) are live; strings are reused
  size_t nheaders = 0;
  bool in_head = false;
  SHA256_CTX sha;
  uint64_t body_bytes = 0;
  Route route = Route::kEcho;
  uint64_t param = 0;
  int upload_fd = -1;
  int upload_errno = 0;
  std::string upload_tmp;
  std::string upload_final;

  // The response in progress (kStream / kDelay).
  Active active = Active::kNone;
  uint64_t st_off = 0;          // body bytes generated so far
  uint64_t st_end = 0;          // body bytes to generate
  bool st_chunked = false;
  bool st_close_after = false;
  char st_chunk_head[24];

  alignas(16) char rbuf[kReadBufferSize];
};

struct Server {
  uv_loop_t* loop = nullptr;
  uv_tcp_t listener;
  uv_signal_t sigterm;
  uv_signal_t sigint;
  std::string upload_dir;
  Conn* conns = nullptr;
  bool stopping = false;
  uint64_t upload_counter = 0;
};

struct OwnedWrite {
  uv_write_t req;
  std::string data;
};

// ---------------------------------------------------------------------------
// Small helpers

const char* reasonPhrase(int code) {
  switch (code) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Status";
  }
}

// Parses a non-empty string of at most 19 decimal digits.
bool parseUint(std::string_view s, uint64_t* v) {
  if (s.empty() || s.size() > 19) return false;
  uint64_t r = 0;
  for (char ch : s) {
    if (ch < '0' || ch > '9') return false;
    r = r * 10 + static_cast<uint64_t>(ch - '0');
  }
  *v = r;
  return true;
}

bool validUploadName(std::string_view n) {
  if (n.empty() || n.size() > 255 || n[0] == '.') return false;
  for (char ch : n) {
    bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-';
    if (!ok) return false;
  }
  return true;
}

bool validUtf8(std::string_view s) {
  size_t i = 0;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  while (i < n) {
    unsigned char c = p[i];
    if (c < 0x80) { ++i; continue; }
    size_t len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else return false;
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += len;
  }
  return true;
}

// Appends s as a JSON string literal. Valid UTF-8 passes through; if s is not
// valid UTF-8, every byte >= 0x80 is written as \u00XX so the output is
// always valid JSON.
void appendJsonString(std::string& o, std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  const bool utf8 = validUtf8(s);
  o.push_back('"');
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\b': o += "\\b"; break;
      case '\f': o += "\\f"; break;
      case '\n': o += "\\n"; break;
      case '\r': o += "\\r"; break;
      case '\t': o += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8)) {
          o += "\\u00";
          o.push_back(kHex[c >> 4]);
          o.push_back(kHex[c & 15]);
        } else {
          o.push_back(ch);
        }
    }
  }
  o.push_back('"');
}

void asciiLower(std::string& s) {
  for (char& ch : s)
    if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
}

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

Conn* connOf(llhttp_t* p) { return static_cast<Conn*>(p->data); }

size_t queuedBytes(Conn* c) { return c->out.size() + c->tcp.write_queue_size; }

// ---------------------------------------------------------------------------
// Connection lifecycle and output

void drive(Conn* c);

void abortUpload(Conn* c) {
  if (c->upload_fd >= 0) {
    ::close(c->upload_fd);
    c->upload_fd = -1;
  }
  if (!c->upload_tmp.empty()) {
    ::unlink(c->upload_tmp.c_str());
    c->upload_tmp.clear();
  }
}

void onHandleClosed(uv_handle_t* h) {
  Conn* c = static_cast<Conn*>(h->data);
  if (--c->open_handles > 0) return;
  Server* s = c->server;
  if (c->prev) c->prev->next = c->next; else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  delete c;
}

void closeConn(Conn* c) {
  if (c->closed) return;
  c->closed = true;
  abortUpload(c);
  uv_timer_stop(&c->timer);
  uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), onHandleClosed);
  uv_close(reinterpret_cast<uv_handle_t*>(&c->timer), onHandleClosed);
}

void onShutdown(uv_shutdown_t* req, int) {
  Conn* c = static_cast<Conn*>(req->data);
  delete req;
  closeConn(c);
}

void stopReading(Conn* c) {
  if (c->reading && !c->closed) uv_read_stop(reinterpret_cast<uv_stream_t*>(&c->tcp));
  c->reading = false;
}

void startShutdown(Conn* c) {
  if (c->shutting || c->closed) return;
  c->shutting = true;
  stopReading(c);
  auto* req = new uv_shutdown_t;
  req->data = c;
  if (uv_shutdown(req, reinterpret_cast<uv_stream_t*>(&c->tcp), onShutdown) != 0) {
    delete req;
    closeConn(c);
  }
}

void onWritable(Conn* c, int status) {
  if (c->closed) return;
  if (status < 0) {
    closeConn(c);
    return;
  }
  drive(c);
}

void onOwnedWrite(uv_write_t* req, int status) {
  auto* w = reinterpret_cast<OwnedWrite*>(req);
  Conn* c = static_cast<Conn*>(req->data);
  delete w;
  onWritable(c, status);
}

void onStaticWrite(uv_write_t* req, int status) {
  Conn* c = static_cast<Conn*>(req->data);
  delete req;
  onWritable(c, status);
}

// Hands c->out to the socket: uv_try_write first, the rest via uv_write.
void flush(Conn* c) {
  if (c->out.empty() || c->closed) return;
  auto* stream = reinterpret_cast<uv_stream_t*>(&c->tcp);
  size_t done = 0;
  if (c->tcp.write_queue_size == 0) {
    uv_buf_t b = uv_buf_init(c->out.data(), static_cast<unsigned>(c->out.size()));
    int n = uv_try_write(stream, &b, 1);
    if (n == UV_EAGAIN || n == UV_ENOSYS) {
      n = 0;
    } else if (n < 0) {
      closeConn(c);
      return;
    }
    done = static_cast<size_t>(n);
    if (done == c->out.size()) {
      c->out.clear();
      return;
    }
  }
  auto* w = new OwnedWrite;
  w->req.data = c;
  w->data.swap(c->out);
  uv_buf_t b = uv_buf_init(w->data.data() + done, static_cast<unsigned>(w->data.size() - done));
  if (uv_write(&w->req, stream, &b, 1, onOwnedWrite) != 0) {
    delete w;
    closeConn(c);
  }
}

// Writes bufs (which must stay valid until the write completes: static data
// or the connection's st_chunk_head) with uv_try_write, queueing any rest.
// `force_async` skips the attempt so the loop gets a turn. Returns false if
// the connection was closed.
bool writeStatic(Conn* c, uv_buf_t* bufs, int nbufs, bool force_async) {
  auto* stream = reinterpret_cast<uv_stream_t*>(&c->tcp);
  size_t total = 0;
  for (int i = 0; i < nbufs; ++i) total += bufs[i].len;
  size_t done = 0;
  if (!force_async && c->tcp.write_queue_size == 0) {
    int n = uv_try_write(stream, bufs, static_cast<unsigned>(nbufs));
    if (n == UV_EAGAIN || n == UV_ENOSYS) {
      n = 0;
    } else if (n < 0) {
      closeConn(c);
      return false;
    }
    done = static_cast<size_t>(n);
    if (done == total) return true;
  }
  int first = 0;
  while (done >= bufs[first].len) {
    done -= bufs[first].len;
    ++first;
  }
  bufs[first].base += done;
  bufs[first].len -= done;
  auto* req = new uv_write_t;
  req->data = c;
  if (uv_write(req, stream, bufs + first, static_cast<unsigned>(nbufs - first), onStaticWrite) != 0) {
    delete req;
    closeConn(c);
    return false;
  }
  return true;
}

// Appends a response head. content_length < 0 means "no Content-Length";
// with chunked set, Transfer-Encoding: chunked is sent instead.
void appendHead(Conn* c, int status, const char* content_type, int64_t content_length,
                bool chunked = false) {
  char line[96];
  int n = snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", status, reasonPhrase(status));
  c->out.append(line, static_cast<size_t>(n));
  if (content_type) {
    c->out += "Content-Type: ";
    c->out += content_type;
    c->out += "\r\n";
  }
  if (chunked) {
    c->out += "Transfer-Encoding: chunked\r\n";
  } else if (content_length >= 0) {
    n = snprintf(line, sizeof line, "Content-Length: %lld\r\n", static_cast<long long>(content_length));
    c->out.append(line, static_cast<size_t>(n));
  }
  if (c->closing_after) {
    c->out += "Connection: close\r\n";
  } else if (c->parser.http_major == 1 && c->parser.http_minor == 0) {
    c->out += "Connection: keep-alive\r\n";
  }
  c->out += "\r\n";
}

void appendSimple(Conn* c, int status, const char* content_type, std::string_view body, bool head_only) {
  appendHead(c, status, content_type, static_cast<int64_t>(body.size()));
  if (!head_only) c->out.append(body);
}

// Generates the /bytes, /chunked, /close-mid body. Returns true once all of
// it is queued; false while it waits for the socket (a write callback will
// call drive() again) or after the connection closed.
bool pumpStream(Conn* c) {
  int pieces = 0;
  while (c->st_off < c->st_end) {
    if (c->closed) return false;
    if (c->tcp.write_queue_size > 0) return false;
    const uint64_t left = c->st_end - c->st_off;
    const size_t unit = c->st_chunked ? kChunkSize : kPieceSize;
    const size_t piece = left < unit ? static_cast<size_t>(left) : unit;
    uv_buf_t bufs[3];
    int nbufs = 0;
    char* data = reinterpret_cast<char*>(g_pattern + (c->st_off & 255));
    if (c->st_chunked) {
      int n = snprintf(c->st_chunk_head, sizeof c->st_chunk_head, "%zx\r\n", piece);
      bufs[nbufs++] = uv_buf_init(c->st_chunk_head, static_cast<unsigned>(n));
      bufs[nbufs++] = uv_buf_init(data, static_cast<unsigned>(piece));
      bufs[nbufs++] = uv_buf_init(const_cast<char*>("\r\n"), 2);
    } else {
      bufs[nbufs++] = uv_buf_init(data, static_cast<unsigned>(piece));
    }
    c->st_off += piece;
    if (!writeStatic(c, bufs, nbufs, ++pieces > kMaxSyncPieces)) return false;
  }
  if (c->closed) return false;
  if (c->st_chunked) c->out += "0\r\n\r\n";
  if (c->st_close_after) c->closing_after = true;
  c->active = Active::kNone;
  return true;
}

void onDelay(uv_timer_t* t) {
  Conn* c = static_cast<Conn*>(t->data);
  if (c->closed) return;
  c->active = Active::kNone;
  appendSimple(c, 200, "application/json", "{}", c->parser.method == HTTP_HEAD);
  drive(c);
}

// ---------------------------------------------------------------------------
// Parsing

void appendBadRequest(Conn* c, const char* reason) {
  c->closing_after = true;
  std::string body = "bad request";
  if (reason && *reason) {
    body += ": ";
    body += reason;
  }
  body += "\n";
  appendSimple(c, 400, "text/plain", body, false);
}

// Runs the parser over data (which lives in c->rbuf). On a pause the rest
// stays in rbuf and reading stops until drive() resumes the parser.
void execute(Conn* c, const char* data, size_t len) {
  llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
  if (err == HPE_OK) {
    c->paused = false;
    c->pend_off = c->pend_end = 0;
    return;
  }
  stopReading(c);
  c->paused = true;
  if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
    const char* pos = llhttp_get_error_pos(&c->parser);
    c->pend_off = static_cast<size_t>(pos - c->rbuf);
    c->pend_end = static_cast<size_t>(data + len - c->rbuf);
    if (err == HPE_PAUSED_UPGRADE) c->closing_after = true;
    return;
  }
  c->pend_off = c->pend_end = 0;
  abortUpload(c);
  if (c->active == Active::kNone) appendBadRequest(c, llhttp_get_error_reason(&c->parser));
  else c->closing_after = true;
}

// Moves the connection forward: queues output, continues a streamed
// response, resumes a paused parser when the previous response is done and
// the output queue is short, then reads more or shuts down.
void drive(Conn* c) {
  for (;;) {
    if (c->closed) return;
    flush(c);
    if (c->closed) return;
    if (c->active == Active::kStream) {
      if (!pumpStream(c)) return;
      continue;  // the terminating chunk may need flushing
    }
    if (c->active == Active::kDelay) return;
    if (!c->paused || c->closing_after) break;
    if (queuedBytes(c) > kHighWater) return;  // a write callback calls drive() again
    llhttp_resume(&c->parser);
    c->paused = false;
    size_t off = c->pend_off, end = c->pend_end;
    c->pend_off = c->pend_end = 0;
    if (off < end) execute(c, c->rbuf + off, end - off);
  }
  if (c->closing_after || c->read_eof) {
    startShutdown(c);
  } else if (!c->reading && !c->shutting) {
    c->reading = true;
    uv_read_start(
        reinterpret_cast<uv_stream_t*>(&c->tcp),
        [](uv_handle_t* h, size_t, uv_buf_t* buf) {
          Conn* cc = static_cast<Conn*>(h->data);
          *buf = uv_buf_init(cc->rbuf, sizeof cc->rbuf);
        },
        [](uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
          Conn* cc = static_cast<Conn*>(s->data);
          if (cc->closed) return;
          if (nread > 0) {
            execute(cc, cc->rbuf, static_cast<size_t>(nread));
            drive(cc);
          } else if (nread == UV_EOF) {
            stopReading(cc);
            cc->read_eof = true;
            drive(cc);
          } else if (nread < 0) {
            closeConn(cc);
          }
        });
  }
}

int onMessageBegin(llhttp_t* p) {
  Conn* c = connOf(p);
  c->url.clear();
  c->cur_field.clear();
  c->cur_value.clear();
  c->nheaders = 0;
  c->in_head = true;
  SHA256_Init(&c->sha);
  c->body_bytes = 0;
  c->route = Route::kEcho;
  c->param = 0;
  c->upload_errno = 0;
  c->upload_final.clear();
  return 0;
}

int onUrl(llhttp_t* p, const char* at, size_t len) {
  connOf(p)->url.append(at, len);
  return 0;
}

int onHeaderField(llhttp_t* p, const char* at, size_t len) {
  Conn* c = connOf(p);
  if (c->in_head) c->cur_field.append(at, len);
  return 0;
}

int onHeaderValue(llhttp_t* p, const char* at, size_t len) {
  Conn* c = connOf(p);
  if (c->in_head) c->cur_value.append(at, len);
  return 0;
}

int onHeaderValueComplete(llhttp_t* p) {
  Conn* c = connOf(p);
  if (!c->in_head) return 0;
  asciiLower(c->cur_field);
  Header* found = nullptr;
  for (size_t i = 0; i < c->nheaders; ++i) {
    if (c->headers[i].name == c->cur_field) {
      found = &c->headers[i];
      break;
    }
  }
  if (found) {
    found->value += ", ";
    found->value += c->cur_value;
  } else {
    if (c->nheaders == c->headers.size()) c->headers.emplace_back();
    Header& h = c->headers[c->nheaders++];
    h.name.swap(c->cur_field);
    h.value.swap(c->cur_value);
  }
  c->cur_field.clear();
  c->cur_value.clear();
  return 0;
}

// Complete requests served (see GET /_requests); the loop is single-threaded.
uint64_t g_requests = 0;

void routeRequest(Conn* c) {
  const bool get = c->parser.method == HTTP_GET || c->parser.method == HTTP_HEAD;
  std::string_view target = c->url;
  std::string_view path = target.substr(0, target.find('?'));
  std::string_view query = target.size() > path.size() ? target.substr(path.size() + 1) : "";
  auto numberAfter = [&](std::string_view prefix, Route r) {
    if (path.substr(0, prefix.size()) != prefix) return false;
    c->route = parseUint(path.substr(prefix.size()), &c->param) ? r : Route::kBadParam;
    return true;
  };
  if (get && path == "/healthz") { c->route = Route::kHealthz; return; }
  if (get && path == "/_requests") { c->route = Route::kRequests; return; }
  if (get && path == "/tiny") { c->route = Route::kTiny; return; }
  if (get && numberAfter("/bytes/", Route::kBytes)) return;
  if (get && numberAfter("/chunked/", Route::kChunked)) return;
  if (get && numberAfter("/close-mid/", Route::kCloseMid)) return;
  if (numberAfter("/delay/", Route::kDelay)) return;
  if (numberAfter("/status/", Route::kStatus)) return;
  if (c->parser.method == HTTP_POST && path == "/upload" && !c->server->upload_dir.empty()) {
    std::string_view name;
    bool have = false;
    while (!query.empty()) {
      size_t amp = query.find('&');
      std::string_view kv = query.substr(0, amp);
      query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
      if (kv.substr(0, 5) == "name=" && !have) {
        name = kv.substr(5);
        have = true;
      }
    }
    if (!have || !validUploadName(name)) {
      c->route = Route::kBadParam;
      return;
    }
    c->route = Route::kUpload;
    Server* s = c->server;
    c->upload_final = s->upload_dir + "/" + std::string(name);
    c->upload_tmp = s->upload_dir + "/." + std::string(name) + "." + std::to_string(++s->upload_counter) + ".part";
    c->upload_fd = ::open(c->upload_tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (c->upload_fd < 0) {
      c->upload_errno = errno;
      c->upload_tmp.clear();
    }
  }
}

int onHeadersComplete(llhttp_t* p) {
  Conn* c = connOf(p);
  c->in_head = false;
  routeRequest(c);
  if ((c->route == Route::kBytes || c->route == Route::kChunked || c->route == Route::kCloseMid) &&
      c->param > kMaxBytes)
    c->route = Route::kBadParam;
  if (p->http_major == 1 && p->http_minor >= 1) {
    for (size_t i = 0; i < c->nheaders; ++i) {
      if (c->headers[i].name == "expect" && equalsIgnoreCase(c->headers[i].value, "100-continue")) {
        c->out += "HTTP/1.1 100 Continue\r\n\r\n";
        break;
      }
    }
  }
  return 0;
}

int onBody(llhttp_t* p, const char* at, size_t len) {
  Conn* c = connOf(p);
  SHA256_Update(&c->sha, at, len);
  c->body_bytes += len;
  while (c->upload_fd >= 0 && len > 0) {
    ssize_t n = ::write(c->upload_fd, at, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      c->upload_errno = errno;
      abortUpload(c);
      break;
    }
    at += n;
    len -= static_cast<size_t>(n);
  }
  return 0;
}

void appendEcho(Conn* c, bool head_only) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256_Final(digest, &c->sha);
  static const char kHex[] = "0123456789abcdef";
  std::string body;
  body.reserve(128 + c->url.size() + c->nheaders * 48);
  body += "{\"method\":";
  appendJsonString(body, llhttp_method_name(static_cast<llhttp_method_t>(c->parser.method)));
  body += ",\"path\":";
  appendJsonString(body, c->url);
  body += ",\"headers\":{";
  for (size_t i = 0; i < c->nheaders; ++i) {
    if (i) body.push_back(',');
    appendJsonString(body, c->headers[i].name);
    body.push_back(':');
    appendJsonString(body, c->headers[i].value);
  }
  body += "},\"body_bytes\":";
  body += std::to_string(c->body_bytes);
  body += ",\"body_sha256\":\"";
  for (unsigned char d : digest) {
    body.push_back(kHex[d >> 4]);
    body.push_back(kHex[d & 15]);
  }
  body += "\"}\n";
  appendSimple(c, 200, "application/json", body, head_only);
}

void startStream(Conn* c, uint64_t length, uint64_t send, bool chunked, bool close_after, bool head_only) {
  const bool http10 = c->parser.http_major == 1 && c->parser.http_minor == 0;
  if (chunked && http10) {
    // An HTTP/1.0 client does not know chunked: the close ends the body.
    chunked = false;
    c->closing_after = true;
    appendHead(c, 200, "application/octet-stream", -1);
  } else {
    appendHead(c, 200, "application/octet-stream", chunked ? -1 : static_cast<int64_t>(length), chunked);
  }
  if (head_only) return;
  c->active = Active::kStream;
  c->st_off = 0;
  c->st_end = send;
  c->st_chunked = chunked;
  c->st_close_after = close_after;
}

int onMessageComplete(llhttp_t* p) {
  Conn* c = connOf(p);
  const bool head_only = p->method == HTTP_HEAD;
  if (c->route != Route::kHealthz && c->route != Route::kRequests) ++g_requests;
  if (!llhttp_should_keep_alive(p) || p->upgrade) c->closing_after = true;

  if (c->route == Route::kUpload) {
    if (c->upload_fd >= 0) {
      int rc = ::close(c->upload_fd);
      c->upload_fd = -1;
      if (rc != 0 || ::rename(c->upload_tmp.c_str(), c->upload_final.c_str()) != 0) c->upload_errno = errno;
    }
    if (c->upload_errno != 0) {
      if (!c->upload_tmp.empty()) ::unlink(c->upload_tmp.c_str());
      c->upload_tmp.clear();
      std::string body = "{\"error\":";
      appendJsonString(body, portcullis::errnoMessage(c->upload_errno));
      body += "}\n";
      appendSimple(c, 500, "application/json", body, head_only);
    } else {
      c->upload_tmp.clear();
      appendEcho(c, head_only);
    }
  } else {
    switch (c->route) {
      case Route::kHealthz:
        appendSimple(c, 200, "text/plain", "ok\n", head_only);
        break;
      case Route::kRequests:
        appendSimple(c, 200, "text/plain", std::to_string(g_requests) + "\n", head_only);
        break;
      case Route::kTiny: {
        const std::string& r = c->closing_after ? g_tiny_close
                               : (p->http_minor == 0 ? g_tiny_keep_alive10 : g_tiny_keep_alive);
        c->out.append(r.data(), head_only ? r.size() - 64 : r.size());
        break;
      }
      case Route::kBytes:
        startStream(c, c->param, c->param, false, false, head_only);
        break;
      case Route::kChunked:
        startStream(c, c->param, c->param, true, false, head_only);
        break;
      case Route::kCloseMid:
        startStream(c, c->param, c->param / 2, false, true, head_only);
        if (head_only) c->closing_after = true;
        break;
      case Route::kDelay:
        if (c->param > kMaxDelayMs) {
          appendSimple(c, 400, "text/plain", "delay too long\n", head_only);
          break;
        }
        c->active = Active::kDelay;
        uv_timer_start(&c->timer, onDelay, c->param, 0);
        break;
      case Route::kStatus: {
        const int code = static_cast<int>(c->param);
        if (c->param < 200 || c->param > 599) {
          appendSimple(c, 400, "text/plain", "status must be 200..599\n", head_only);
        } else if (code == 204 || code == 304) {
          appendHead(c, code, nullptr, -1);
        } else {
          std::string body = "{\"status\":" + std::to_string(code) + "}\n";
          appendSimple(c, code, "application/json", body, head_only);
        }
        break;
      }
      case Route::kBadParam:
        appendSimple(c, 400, "text/plain", "bad parameter\n", head_only);
        break;
      default:
        appendEcho(c, head_only);
        break;
    }
  }
  if (c->active != Active::kNone || c->closing_after || queuedBytes(c) > kHighWater) return HPE_PAUSED;
  return 0;
}

llhttp_settings_t g_settings;

// ---------------------------------------------------------------------------
// Server

void onConnection(uv_stream_t* listener, int status) {
  Server* s = static_cast<Server*>(listener->data);
  if (status < 0 || s->stopping) return;
  Conn* c = new Conn;
  c->server = s;
  uv_tcp_init(s->loop, &c->tcp);
  uv_timer_init(s->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->open_handles = 2;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  if (uv_accept(listener, reinterpret_cast<uv_stream_t*>(&c->tcp)) != 0) {
    closeConn(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  llhttp_init(&c->parser, HTTP_REQUEST, &g_settings);
  c->parser.data = c;
  drive(c);
}

void onSignal(uv_signal_t* sig, int) {
  Server* s = static_cast<Server*>(sig->data);
  if (s->stopping) return;
  s->stopping = true;
  uv_close(reinterpret_cast<uv_handle_t*>(&s->listener), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&s->sigterm), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&s->sigint), nullptr);
  for (Conn* c = s->conns; c; c = c->next) closeConn(c);
}

void buildStaticResponses() {
  for (size_t i = 0; i < sizeof g_pattern; ++i) g_pattern[i] = static_cast<unsigned char>((i * 31 + 7) & 0xff);
  std::string body = "Portcullis demo backend: 64 bytes of tiny response body........\n";
  if (body.size() != 64) abort();
  const std::string head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 64\r\n";
  g_tiny_keep_alive = head + "\r\n" + body;
  g_tiny_keep_alive10 = head + "Connection: keep-alive\r\n\r\n" + body;
  g_tiny_close = head + "Connection: close\r\n\r\n" + body;

  llhttp_settings_init(&g_settings);
  g_settings.on_message_begin = onMessageBegin;
  g_settings.on_url = onUrl;
  g_settings.on_header_field = onHeaderField;
  g_settings.on_header_value = onHeaderValue;
  g_settings.on_header_value_complete = onHeaderValueComplete;
  g_settings.on_headers_complete = onHeadersComplete;
  g_settings.on_body = onBody;
  g_settings.on_message_complete = onMessageComplete;
}

bool writePortFile(const std::string& path, int port) {
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  FILE* f = fopen(tmp.c_str(), "w");
  if (!f) return false;
  bool ok = fprintf(f, "%d\n", port) > 0;
  ok = (fclose(f) == 0) && ok;
  if (ok && rename(tmp.c_str(), path.c_str()) != 0) ok = false;
  if (!ok) unlink(tmp.c_str());
  return ok;
}

void usage(FILE* f) {
  fprintf(f,
          "usage: demo-backend [--listen HOST:PORT] [--upload-dir DIR] [--port-file FILE] [--quiet]\n"
          "  --listen HOST:PORT  listen address (default 127.0.0.1:9000; port 0 = ephemeral)\n"
          "  --upload-dir DIR    store POST /upload?name=X bodies as DIR/X\n"
          "  --port-file FILE    write the bound port to FILE (atomically) once listening\n"
          "  --quiet             do not print the listening line\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:9000";
  std::string port_file;
  Server server;
  bool quiet = false;

  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* name, std::string* out) {
      size_t n = strlen(name);
      if (a == name) {
        if (i + 1 >= argc) {
          fprintf(stderr, "demo-backend: %s needs a value\n", name);
          exit(2);  // NOLINT(concurrency-mt-unsafe): still parsing argv; this program never starts a thread
        }
        *out = argv[++i];
        return true;
      }
      if (a.size() > n && a.compare(0, n, name) == 0 && a[n] == '=') {
        *out = a.substr(n + 1);
        return true;
      }
      return false;
    };
    if (value("--listen", &listen) || value("--upload-dir", &server.upload_dir) ||
        value("--port-file", &port_file))
      continue;
    if (a == "--quiet" || a == "-q") { quiet = true; continue; }
    if (a == "--help" || a == "-h") { usage(stdout); return 0; }
    fprintf(stderr, "demo-backend: unknown argument '%s'\n", a.c_str());
    usage(stderr);
    return 2;
  }

  std::string host;
  std::string port_str;
  if (!listen.empty() && listen[0] == '[') {
    size_t close = listen.find(']');
    if (close == std::string::npos || close + 1 >= listen.size() || listen[close + 1] != ':') {
      fprintf(stderr, "demo-backend: bad --listen '%s'\n", listen.c_str());
      return 2;
    }
    host = listen.substr(1, close - 1);
    port_str = listen.substr(close + 2);
  } else {
    size_t colon = listen.rfind(':');
    if (colon == std::string::npos) {
      fprintf(stderr, "demo-backend: bad --listen '%s' (want HOST:PORT)\n", listen.c_str());
      return 2;
    }
    host = listen.substr(0, colon);
    port_str = listen.substr(colon + 1);
  }
  uint64_t port = 0;
  if (!parseUint(port_str, &port) || port > 65535) {
    fprintf(stderr, "demo-backend: bad port in --listen '%s'\n", listen.c_str());
    return 2;
  }
  if (!server.upload_dir.empty()) {
    while (server.upload_dir.size() > 1 && server.upload_dir.back() == '/') server.upload_dir.pop_back();
    struct stat st;
    if (stat(server.upload_dir.c_str(), &st) != 0 && errno == ENOENT) mkdir(server.upload_dir.c_str(), 0755);
    if (stat(server.upload_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      fprintf(stderr, "demo-backend: --upload-dir '%s' is not a directory\n", server.upload_dir.c_str());
      return 2;
    }
  }

  (void)signal(SIGPIPE, SIG_IGN);  // cannot fail for a valid signal number
  buildStaticResponses();

  sockaddr_storage addr{};
  const bool v6 = host.find(':') != std::string::npos;
  int rc = v6 ? uv_ip6_addr(host.c_str(), static_cast<int>(port), reinterpret_cast<sockaddr_in6*>(&addr))
              : uv_ip4_addr(host.c_str(), static_cast<int>(port), reinterpret_cast<sockaddr_in*>(&addr));
  if (rc != 0) {
    fprintf(stderr, "demo-backend: bad address '%s': %s\n", host.c_str(), uv_strerror(rc));
    return 2;
  }

  server.loop = uv_default_loop();
  uv_tcp_init(server.loop, &server.listener);
  server.listener.data = &server;
  rc = uv_tcp_bind(&server.listener, reinterpret_cast<const sockaddr*>(&addr), 0);
  if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(&server.listener), 1024, onConnection);
  if (rc != 0) {
    fprintf(stderr, "demo-backend: cannot listen on %s: %s\n", listen.c_str(), uv_strerror(rc));
    return 1;
  }
  sockaddr_storage bound{};
  int blen = sizeof bound;
  uv_tcp_getsockname(&server.listener, reinterpret_cast<sockaddr*>(&bound), &blen);
  const int bound_port = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                                           : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);

  uv_signal_init(server.loop, &server.sigterm);
  uv_signal_init(server.loop, &server.sigint);
  server.sigterm.data = &server;
  server.sigint.data = &server;
  uv_signal_start(&server.sigterm, onSignal, SIGTERM);
  uv_signal_start(&server.sigint, onSignal, SIGINT);

  if (!port_file.empty() && !writePortFile(port_file, bound_port)) {
    fprintf(stderr, "demo-backend: cannot write port file '%s': %s\n", port_file.c_str(),
            portcullis::errnoMessage(errno).c_str());
    return 1;
  }
  if (!quiet) {
    if (v6) printf("demo-backend listening on [%s]:%d\n", host.c_str(), bound_port);
    else printf("demo-backend listening on %s:%d\n", host.c_str(), bound_port);
    (void)fflush(stdout);  // the line is informational; --port-file is the reliable channel
  }

  uv_run(server.loop, UV_RUN_DEFAULT);
  uv_loop_close(server.loop);
  return 0;
}
