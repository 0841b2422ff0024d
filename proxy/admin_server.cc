#include "proxy/admin_server.h"

#include <llhttp.h>

#include <arpa/inet.h>

#include <charconv>
#include <cstring>
#include <utility>

namespace portcullis {

namespace {

// Output queued beyond this stops reading (and parsing pipelined requests) until
// the client has taken it, so a client that never reads cannot grow our memory.
constexpr size_t kMaxQueuedOutput = 256 * 1024;
// How long a connection we are closing may take to receive our response and send
// its FIN before we close it anyway.
constexpr uint64_t kLingerMs = 5000;
constexpr size_t kReadBufferSize = 16 * 1024;

const char* reasonPhrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "";
  }
}

// RFC 9110 tchar. llhttp checks header names itself only when built with
// LLHTTP_STRICT_MODE, so the admin server does not depend on how it was built.
bool isTchar(unsigned char c) {
  if (c >= '0' && c <= '9') return true;
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

bool isSafeHeaderValue(std::string_view v) {
  for (unsigned char c : v) {
    if ((c < 0x20 && c != '\t') || c == 0x7F) return false;
  }
  return true;
}

// The path of a request target: origin-form "/p?q" -> "/p"; absolute-form
// "http://h/p?q" -> "/p" ("http://h" -> "/"); anything else (asterisk-form,
// authority-form) is passed through without its query.
std::string_view targetPath(std::string_view target) {
  if (!target.empty() && target[0] != '/') {
    size_t scheme_end = target.find("://");
    if (scheme_end != std::string_view::npos) {
      size_t p = target.find_first_of("/?", scheme_end + 3);
      if (p == std::string_view::npos || target[p] == '?') return "/";
      target.remove_prefix(p);
    }
  }
  return target.substr(0, target.find('?'));
}

}  // namespace

// One admin connection. Heap-allocated; freed by the close callback of the last
// of its two handles. `server` is cleared when the server closes it, and nothing
// reached from a libuv callback touches the server once `closing` is set.
struct AdminServer::Conn {
  enum class Phase : uint8_t { kIdle, kHead, kBody };
  enum class Pause : uint8_t { kNone, kBegin, kHeaders, kComplete };

  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_shutdown_t shutdown_req;
  llhttp_t parser;
  AdminServer* server = nullptr;
  Conn* prev = nullptr;
  Conn* next = nullptr;
  int open_handles = 0;

  bool closing = false;       // uv_close() called on the handles
  bool finishing = false;     // no more requests: FIN after the queued output
  bool eof = false;           // the client has sent its FIN
  bool read_paused = false;   // reading stopped while output drains
  Phase phase = Phase::kIdle;
  Pause pause = Pause::kNone;
  int error_status = 0;       // set by a callback that fails the request
  size_t head_bytes = 0;
  uint64_t body_bytes = 0;
  std::string url;
  std::string pending_in;     // received, not yet parsed while read_paused

  static const llhttp_settings_t* settings();
  static int onMessageBegin(llhttp_t* p);
  static int onUrl(llhttp_t* p, const char* at, size_t len);
  static int onHeaderField(llhttp_t* p, const char* at, size_t len);
  static int onHeadersComplete(llhttp_t* p);
  static int onBody(llhttp_t* p, const char* at, size_t len);
  static int onMessageComplete(llhttp_t* p);

  static void onAlloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void onRead(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void onWrite(uv_write_t* req, int status);
  static void onShutdown(uv_shutdown_t* req, int status);
  static void onTimer(uv_timer_t* t);
  static void onClose(uv_handle_t* h);

  void processInput(const char* data, size_t len);
  void dispatch();
  void respond(int status, std::string_view content_type, std::string_view body,
               bool keep_alive, bool head_only);
  void fail(int status);
  void finish();
  void closeNow();
  void restartTimer(uint64_t ms) { uv_timer_start(&timer, onTimer, ms, 0); }
};

namespace {

struct WriteReq {
  uv_write_t req;
  std::string data;
};

}  // namespace

const llhttp_settings_t* AdminServer::Conn::settings() {
  static const llhttp_settings_t s = [] {
    llhttp_settings_t v;
    llhttp_settings_init(&v);
    v.on_message_begin = onMessageBegin;
    v.on_url = onUrl;
    v.on_header_field = onHeaderField;
    v.on_headers_complete = onHeadersComplete;
    v.on_body = onBody;
    v.on_message_complete = onMessageComplete;
    return v;
  }();
  return &s;
}

// The parser pauses at the start of a message, at the end of its head and at its
// end, so processInput() knows exactly how many bytes each part took and calls
// the handler outside llhttp.
int AdminServer::Conn::onMessageBegin(llhttp_t* p) {
  static_cast<Conn*>(p->data)->pause = Pause::kBegin;
  return HPE_PAUSED;
}

int AdminServer::Conn::onUrl(llhttp_t* p, const char* at, size_t len) {
  Conn* c = static_cast<Conn*>(p->data);
  if (c->url.size() + len > kMaxHeadBytes) {
    c->error_status = 431;
    return HPE_USER;
  }
  for (size_t i = 0; i < len; ++i) {
    const unsigned char ch = static_cast<unsigned char>(at[i]);
    if (ch <= 0x20 || ch >= 0x7F) return HPE_USER;  // request-target is visible ASCII
  }
  c->url.append(at, len);
  return 0;
}

int AdminServer::Conn::onHeaderField(llhttp_t*, const char* at, size_t len) {
  for (size_t i = 0; i < len; ++i) {
    if (!isTchar(static_cast<unsigned char>(at[i]))) return HPE_USER;
  }
  return 0;
}

int AdminServer::Conn::onHeadersComplete(llhttp_t* p) {
  Conn* c = static_cast<Conn*>(p->data);
  if ((p->flags & F_CONTENT_LENGTH) && p->content_length > kMaxBodyBytes) {
    c->error_status = 413;
    return -1;
  }
  c->pause = Pause::kHeaders;
  return HPE_PAUSED;
}

int AdminServer::Conn::onBody(llhttp_t* p, const char*, size_t len) {
  Conn* c = static_cast<Conn*>(p->data);
  c->body_bytes += len;
  if (c->body_bytes > kMaxBodyBytes) {
    c->error_status = 413;
    return HPE_USER;
  }
  return 0;
}

int AdminServer::Conn::onMessageComplete(llhttp_t* p) {
  static_cast<Conn*>(p->data)->pause = Pause::kComplete;
  return HPE_PAUSED;
}

void AdminServer::Conn::onAlloc(uv_handle_t*, size_t, uv_buf_t* buf) {
  // Every read is parsed before the next buffer is asked for, and whatever must
  // outlive the read callback is copied, so one buffer per thread suffices.
  static thread_local char storage[kReadBufferSize];
  *buf = uv_buf_init(storage, sizeof storage);
}

void AdminServer::Conn::onRead(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
  Conn* c = static_cast<Conn*>(s->data);
  if (c->closing) return;
  if (nread < 0) {
    // EOF or a read error. With output still queued (pipelined responses), let it
    // go out before closing; finish() closes once it has.
    uv_read_stop(s);
    c->eof = true;
    if (nread == UV_EOF && uv_stream_get_write_queue_size(s) > 0) {
      c->finish();
    } else {
      c->closeNow();
    }
    return;
  }
  if (nread == 0) return;
  if (c->finishing) return;  // lingering: the rest of the input is discarded
  c->restartTimer(kIdleTimeoutMs);
  c->processInput(buf->base, static_cast<size_t>(nread));
}

void AdminServer::Conn::processInput(const char* data, size_t len) {
  // After a pause the parser runs once more even with no bytes left: the end of
  // a message is reported only then.
  bool resumed = false;
  while (len > 0 || resumed) {
    resumed = false;
    if (closing || finishing) return;
    if (read_paused) {
      pending_in.append(data, len);
      return;
    }
    pause = Pause::kNone;
    const llhttp_errno_t err = llhttp_execute(&parser, data, len);
    if (err == HPE_OK) {
      if (phase == Phase::kHead) {
        head_bytes += len;
        if (head_bytes > kMaxHeadBytes) fail(431);
      }
      return;
    }
    if (err != HPE_PAUSED) {
      // HPE_PAUSED_UPGRADE: the request (already answered) asked for another
      // protocol; the admin listener speaks none, so the connection ends here.
      if (err == HPE_PAUSED_UPGRADE) {
        finish();
      } else {
        fail(error_status != 0 ? error_status : 400);
      }
      return;
    }
    const size_t used = static_cast<size_t>(llhttp_get_error_pos(&parser) - data);
    llhttp_resume(&parser);
    resumed = true;
    data += used;
    len -= used;
    switch (pause) {
      case Pause::kBegin:
        phase = Phase::kHead;
        head_bytes = 0;
        body_bytes = 0;
        error_status = 0;
        url.clear();
        break;
      case Pause::kHeaders:
        head_bytes += used;
        if (head_bytes > kMaxHeadBytes) {
          fail(431);
          return;
        }
        phase = Phase::kBody;
        break;
      case Pause::kComplete:
        phase = Phase::kIdle;
        dispatch();
        if (!closing && !finishing &&
            uv_stream_get_write_queue_size(reinterpret_cast<uv_stream_t*>(&tcp)) >
                kMaxQueuedOutput) {
          read_paused = true;
          uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp));
        }
        break;
      case Pause::kNone:
        fail(400);  // a pause nobody asked for: cannot happen, refuse anyway
        return;
    }
  }
}

void AdminServer::Conn::dispatch() {
  const auto method_id = static_cast<llhttp_method_t>(llhttp_get_method(&parser));
  const std::string_view method = llhttp_method_name(method_id);
  const bool keep_alive = llhttp_should_keep_alive(&parser) != 0;
  AdminReply reply;
  server->handler_(method, targetPath(url), reply);
  if (closing) return;  // the handler closed the server
  respond(reply.status, reply.content_type, reply.body, keep_alive, method_id == HTTP_HEAD);
  if (!keep_alive) finish();
}

void AdminServer::Conn::respond(int status, std::string_view content_type,
                                std::string_view body, bool keep_alive, bool head_only) {
  if (status < 200 || status > 599) status = 500;
  if (!isSafeHeaderValue(content_type)) content_type = "application/octet-stream";
  const bool no_body = status == 204 || status == 304;

  char num[24];
  std::string out;
  out.reserve(160 + content_type.size() + body.size());
  out += "HTTP/1.1 ";
  out.append(num, std::to_chars(num, num + sizeof num, status).ptr);
  out += ' ';
  out += reasonPhrase(status);
  out += "\r\nContent-Type: ";
  out += content_type;
  if (status != 204) {
    out += "\r\nContent-Length: ";
    out.append(num, std::to_chars(num, num + sizeof num, no_body ? 0 : body.size()).ptr);
  }
  out += "\r\nCache-Control: no-store";
  if (!keep_alive) {
    out += "\r\nConnection: close";
  } else if (llhttp_get_http_major(&parser) == 1 && llhttp_get_http_minor(&parser) == 0) {
    out += "\r\nConnection: keep-alive";
  }
  out += "\r\n\r\n";
  if (!head_only && !no_body) out += body;

  auto* stream = reinterpret_cast<uv_stream_t*>(&tcp);
  uv_buf_t buf = uv_buf_init(out.data(), static_cast<unsigned>(out.size()));
  const int n = uv_try_write(stream, &buf, 1);
  size_t done = n > 0 ? static_cast<size_t>(n) : 0;
  if (n < 0 && n != UV_EAGAIN) {
    closeNow();
    return;
  }
  if (done == out.size()) {
    restartTimer(kIdleTimeoutMs);
    return;
  }
  auto* w = new WriteReq;
  w->data.assign(out, done);
  w->req.data = w;
  buf = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
  if (uv_write(&w->req, stream, &buf, 1, onWrite) != 0) {
    delete w;
    closeNow();
  }
}

void AdminServer::Conn::onWrite(uv_write_t* req, int status) {
  Conn* c = static_cast<Conn*>(req->handle->data);
  delete static_cast<WriteReq*>(req->data);
  if (c->closing) return;
  if (status < 0) {
    c->closeNow();
    return;
  }
  if (!c->finishing) c->restartTimer(kIdleTimeoutMs);
  auto* stream = reinterpret_cast<uv_stream_t*>(&c->tcp);
  if (c->read_paused && uv_stream_get_write_queue_size(stream) == 0) {
    c->read_paused = false;
    std::string input = std::move(c->pending_in);
    c->pending_in.clear();
    c->processInput(input.data(), input.size());
    if (!c->closing && !c->finishing && !c->read_paused) {
      uv_read_start(stream, onAlloc, onRead);
    }
  }
}

// Answers with `status` and ends the connection: the request's framing can no
// longer be trusted, so nothing after it is parsed.
void AdminServer::Conn::fail(int status) {
  if (closing || finishing) return;
  static constexpr std::string_view kBodies[] = {"bad request\n", "request too large\n",
                                                 "request header too large\n"};
  std::string_view body = status == 413 ? kBodies[1] : status == 431 ? kBodies[2] : kBodies[0];
  respond(status, "text/plain; charset=utf-8", body, false, false);
  finish();
}

// No more requests on this connection: send FIN once the queued output is out,
// keep reading (and discarding) until the client's FIN so that unread input does
// not turn our close into a reset that could destroy the response, and give up
// after kLingerMs.
void AdminServer::Conn::finish() {
  if (closing || finishing) return;
  finishing = true;
  pending_in.clear();
  restartTimer(kLingerMs);
  shutdown_req.data = this;
  if (uv_shutdown(&shutdown_req, reinterpret_cast<uv_stream_t*>(&tcp), onShutdown) != 0) {
    closeNow();
    return;
  }
  if (!eof) uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp), onAlloc, onRead);
}

void AdminServer::Conn::onShutdown(uv_shutdown_t* req, int status) {
  Conn* c = static_cast<Conn*>(req->data);
  if (c->closing) return;
  if (status < 0 || c->eof) c->closeNow();
}

void AdminServer::Conn::onTimer(uv_timer_t* t) { static_cast<Conn*>(t->data)->closeNow(); }

void AdminServer::Conn::closeNow() {
  if (closing) return;
  closing = true;
  if (server != nullptr) server->unlink(this);
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp), onClose);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer), onClose);
}

void AdminServer::Conn::onClose(uv_handle_t* h) {
  Conn* c = static_cast<Conn*>(h->data);
  if (--c->open_handles == 0) delete c;
}

// ---------------------------------------------------------------------------

AdminServer::AdminServer(uv_loop_t* loop, Handler handler)
    : loop_(loop), handler_(std::move(handler)) {}

AdminServer::~AdminServer() { close(); }

bool AdminServer::listen(const std::string& host, uint16_t port, std::string& error) {
  if (listener_ != nullptr || closed_) {
    error = "admin server already listening or closed";
    return false;
  }
  sockaddr_storage addr{};
  if (uv_ip4_addr(host.c_str(), port, reinterpret_cast<sockaddr_in*>(&addr)) != 0 &&
      uv_ip6_addr(host.c_str(), port, reinterpret_cast<sockaddr_in6*>(&addr)) != 0) {
    error = "admin listen address is not a numeric IP: " + host;
    return false;
  }
  auto* l = new uv_tcp_t;
  uv_tcp_init(loop_, l);
  l->data = this;
  auto fail = [&](const char* what, int rc) {
    const bool v6 = host.find(':') != std::string::npos;
    error = std::string(what) + " " + (v6 ? "[" + host + "]" : host) + ":" +
            std::to_string(port) + ": " + uv_strerror(rc);
    l->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(l),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
    return false;
  };
  int rc = uv_tcp_bind(l, reinterpret_cast<const sockaddr*>(&addr), 0);
  if (rc != 0) return fail("cannot bind admin listener", rc);
  rc = uv_listen(reinterpret_cast<uv_stream_t*>(l), 128, onConnection);
  if (rc != 0) return fail("cannot listen on", rc);
  sockaddr_storage bound{};
  int len = sizeof bound;
  rc = uv_tcp_getsockname(l, reinterpret_cast<sockaddr*>(&bound), &len);
  if (rc != 0) return fail("cannot read the address of", rc);
  port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                            : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  listener_ = l;
  return true;
}

void AdminServer::onConnection(uv_stream_t* listener, int status) {
  auto* self = static_cast<AdminServer*>(listener->data);
  if (self == nullptr || status < 0) return;
  auto* c = new Conn;
  uv_tcp_init(self->loop_, &c->tcp);
  uv_timer_init(self->loop_, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->open_handles = 2;
  if (uv_accept(listener, reinterpret_cast<uv_stream_t*>(&c->tcp)) != 0 ||
      self->conn_count_ >= kMaxConnections) {
    c->closeNow();  // not linked yet: closes without touching the server
    return;
  }
  c->server = self;
  c->next = self->conns_;
  if (self->conns_ != nullptr) self->conns_->prev = c;
  self->conns_ = c;
  ++self->conn_count_;

  llhttp_init(&c->parser, HTTP_REQUEST, Conn::settings());
  c->parser.data = c;
  uv_tcp_nodelay(&c->tcp, 1);
  c->restartTimer(kIdleTimeoutMs);
  if (uv_read_start(reinterpret_cast<uv_stream_t*>(&c->tcp), Conn::onAlloc, Conn::onRead) != 0) {
    c->closeNow();
  }
}

void AdminServer::unlink(Conn* c) {
  if (c->prev != nullptr) c->prev->next = c->next;
  else conns_ = c->next;
  if (c->next != nullptr) c->next->prev = c->prev;
  c->prev = c->next = nullptr;
  c->server = nullptr;
  --conn_count_;
}

void AdminServer::close() {
  if (closed_) return;
  closed_ = true;
  if (listener_ != nullptr) {
    listener_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(listener_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
    listener_ = nullptr;
  }
  while (conns_ != nullptr) conns_->closeNow();
}

}  // namespace portcullis
