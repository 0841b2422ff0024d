// AdminServer: the small HTTP/1.1 server behind `server.admin_listen`
// (/metrics, /healthz, /readyz; SPEC.md §8). It runs on one libuv loop, parses
// with llhttp (no lenient flags), and hands every complete request to a single
// handler that fills in an AdminReply.
//
// Limits, each answered the same way every time:
//   - request head (request line + headers) over 8 KiB   -> 431, connection closed
//   - request body over 64 KiB (declared or received)     -> 413, connection closed
//   - anything llhttp refuses (bad syntax, bad framing)   -> 400, connection closed
//   - more than 64 open admin connections                 -> the new one is closed at once
//   - no bytes received for 10 s                          -> connection closed
// Request bodies are read and discarded. Keep-alive and pipelining are supported;
// responses go out in request order. Every response carries Content-Length,
// Content-Type and "Cache-Control: no-store" (and no Server header).
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace portcullis {

struct AdminReply {
  int status = 200;  // 200..599; anything else is sent as 500
  // Sent as is; a value containing a control character is replaced by
  // "application/octet-stream" so a handler can never inject a header.
  std::string content_type = "text/plain; charset=utf-8";
  // Not sent in answer to HEAD (Content-Length still says its size), nor with
  // 204 or 304 (which carry no body; 204 also no Content-Length).
  std::string body;
};

class AdminServer {
 public:
  // Called on the loop thread once per complete request. `method` is the
  // upper-case method name ("GET"); `path` is the request target without the
  // query string (for an absolute-form target "http://h/p?q", just "/p"). Both
  // views are valid only during the call. The handler must not throw; it may call
  // close() on this server.
  using Handler =
      std::function<void(std::string_view method, std::string_view path, AdminReply& reply)>;

  // Does not touch the network; `loop` must outlive every handle this server
  // opens (that is, until the loop has run after close()).
  AdminServer(uv_loop_t* loop, Handler handler);
  // Calls close() (so: on the loop thread, or after the loop has stopped). The
  // handles it closes are freed by their close callbacks, which never touch this
  // object, so destroying the server before the loop has run again is safe; the
  // memory is released when it does run.
  ~AdminServer();

  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // Binds `host` (a numeric IPv4 or IPv6 address, no brackets) and `port` (0 picks
  // an ephemeral port, see port()) and starts accepting. Call on the loop thread,
  // once. Returns false with a message in `error` on failure.
  bool listen(const std::string& host, uint16_t port, std::string& error);

  // The bound port (0 before a successful listen()).
  uint16_t port() const { return port_; }

  // Number of open connections (including ones being closed gracefully). Loop
  // thread only.
  size_t connectionCount() const { return conn_count_; }

  // Stops listening and closes every connection at once (responses not yet
  // written are abandoned). Call on the loop thread; safe to call twice and from
  // within the handler. The closes complete when the loop next runs.
  void close();

  static constexpr size_t kMaxConnections = 64;
  static constexpr size_t kMaxHeadBytes = 8 * 1024;
  static constexpr uint64_t kMaxBodyBytes = 64 * 1024;
  static constexpr uint64_t kIdleTimeoutMs = 10000;

 private:
  struct Conn;
  friend struct Conn;

  static void onConnection(uv_stream_t* server, int status);
  void unlink(Conn* c);

  uv_loop_t* loop_;
  Handler handler_;
  uv_tcp_t* listener_ = nullptr;  // heap-allocated: its close callback frees it
  uint16_t port_ = 0;
  bool closed_ = false;
  Conn* conns_ = nullptr;  // intrusive doubly linked list of open connections
  size_t conn_count_ = 0;
};

}  // namespace portcullis
