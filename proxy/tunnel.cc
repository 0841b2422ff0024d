// WebSocket tunnels on routes with `websocket = true`: the handshake check,
// the switch on the upstream's 101, and the raw byte relay that follows. These
// are Connection members; connection.cc calls in at marked points (`ws_`).
//
// States (Connection::ws_):
//   kNone       any request; Upgrade and HTTP2-Settings are hop-by-hop and
//               never forwarded.
//   kHandshake  checkUpgrade() found a valid RFC 6455 handshake on a
//               websocket route; it goes upstream (after the whole filter
//               chain, like any request) with `Connection: Upgrade` and
//               `Upgrade: websocket`. A non-101 answer is an ordinary
//               response; a 101 calls startTunnel().
//   kTunnel     the 101 head went to the client; from now on bytes are
//               relayed unparsed both ways until close().
//
// Relay and backpressure: client -> upstream bytes are read into rbuf_
// after the handshake head (which stays in place: the request's views, used
// by the access log, still point into it); upstream -> client bytes into the
// upstream connection's buffer, and out through writeToClient() (the
// client's TlsSession on the HTTPS listener). Each direction has at most one
// write in flight and its source side is not read meanwhile, so a tunnel
// holds the same two pooled buffers as a proxied request, never more.
//
// Timeout: the connection timer, re-armed with timeouts.tunnel_idle_ms
// whenever bytes move either way; when it fires (idle, or a peer that stopped
// reading) the tunnel is closed.
//
// Teardown: EOF on either side (or TLS close_notify) stops reading both
// sides, lets the writes in flight finish, then closes both; an error closes
// both at once; so does the shutdown grace deadline (Connection::drain).
// close() calls tunnelClosed(), which writes the access log line and the
// metrics once, with the bytes of both directions. The upstream connection
// is never returned to its pool.

#include <string_view>

#include "proxy/connection.h"
#include "proxy/worker.h"

namespace portcullis {

namespace {

bool hasToken(const MessageHead& head, HeaderId id, std::string_view token) {
  for (const Header& h : head.headers) {
    if (h.id == id && !h.removed && headerListContains(h.value, token)) return true;
  }
  return false;
}

// The value of the only field called `name`; false if absent or repeated.
bool singleField(const MessageHead& head, std::string_view name, std::string_view& value) {
  int n = 0;
  for (const Header& h : head.headers) {
    if (h.id == HeaderId::kOther && !h.removed && equalsIgnoreCase(h.name, name)) {
      value = h.value;
      ++n;
    }
  }
  return n == 1;
}

// Sec-WebSocket-Key is the base64 of 16 random bytes (RFC 6455 §4.1): 22
// characters of the base64 alphabet, the last carrying 2 bits (so A, Q, g
// or w), then "==".
bool validKey(std::string_view v) {
  if (v.size() != 24 || v[22] != '=' || v[23] != '=') return false;
  for (size_t i = 0; i < 22; ++i) {
    const char c = v[i];
    const bool b64 = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
    if (!b64) return false;
  }
  return v[21] == 'A' || v[21] == 'Q' || v[21] == 'g' || v[21] == 'w';
}

}  // namespace

bool Connection::checkUpgrade() {
  ws_ = WsState::kNone;
  if (!ctx_.route->websocket || !hasToken(req_, HeaderId::kUpgrade, "websocket")) return true;
  // On a websocket route, a request that asks for a WebSocket must be a
  // well-formed handshake; what the client sends after it is not HTTP, so a
  // refusal closes the connection.
  std::string_view key, version;
  const char* bad = nullptr;
  if (req_.method != HTTP_GET) {
    bad = "websocket handshake not a GET";
  } else if (req_.http_minor == 0) {
    bad = "websocket handshake over HTTP/1.0";
  } else if (req_.hasBody()) {
    bad = "websocket handshake with a body";
  } else if (!hasToken(req_, HeaderId::kConnection, "upgrade")) {
    bad = "websocket handshake without connection upgrade";
  } else if (!singleField(req_, "Sec-WebSocket-Key", key) || !validKey(key)) {
    bad = "bad sec-websocket-key";
  } else if (!singleField(req_, "Sec-WebSocket-Version", version) || version != "13") {
    bad = "websocket version not 13";
  }
  if (bad != nullptr) {
    sendError(400, "bad_request", "websocket", bad, true);
    return false;
  }
  ws_ = WsState::kHandshake;
  // The client's own Connection/Upgrade are hop-by-hop (dropped by the
  // serialiser); only this exact upgrade goes on. Sec-WebSocket-* pass.
  req_.add("Connection", "Upgrade");
  req_.add("Upgrade", "websocket");
  return true;
}

void Connection::startTunnel() {
  // RFC 9110 §15.2.2: a server switches only to a protocol the client asked
  // for, and RFC 6455 §4.1 wants both fields on the 101.
  if (ws_ != WsState::kHandshake || !hasToken(resp_, HeaderId::kUpgrade, "websocket") ||
      !hasToken(resp_, HeaderId::kConnection, "upgrade")) {
    close_after_ = close_after_ || ws_ == WsState::kHandshake;  // the client is about to stop speaking HTTP
    handleUpstreamFailure(UpstreamError::kBadResponse, 502);
    return;
  }
  WorkerMetrics& m = worker_->metrics();
  m.upstream_latency.observe(nowUs() - upstream_sent_at_us_);
  m.tunnels_active.add(1);
  upstream_status_ = status_ = 101;
  up_->timer_deadline.clear();  // upstream_response_ms ends; tunnel_idle_ms from now
  ws_ = WsState::kTunnel;
  resp_state_ = RespState::kBody;
  tunnel_ending_ = false;
  tunnel_bytes_up_ = tunnel_bytes_down_ = 0;

  // The same edits as any response (onResponseHead()), and the upgrade
  // fields, which the serialiser drops as hop-by-hop, put back.
  const bool own_hsts = tls_ && !snap_->hsts.empty();
  for (Header& h : resp_.headers) {
    if (h.id == HeaderId::kServer || h.id == HeaderId::kXRequestId || h.id == HeaderId::kContentLength ||
        (own_hsts && h.id == HeaderId::kStrictTransportSecurity)) {
      h.removed = true;
    }
  }
  resp_.add("X-Request-Id", ctx_.request_id);
  if (tls_ && !snap_->hsts.empty()) resp_.add("Strict-Transport-Security", snap_->hsts);
  chain_.runResponseHead(ctx_, resp_);
  resp_.add("Connection", "Upgrade");
  resp_.add("Upgrade", "websocket");
  client_head_.clear();
  serializeResponse(resp_, ResponseFraming::kNone, 0, false, client_head_);
  tunnel_handshake_us_ = nowUs() - ctx_.start_us;

  // The head and whatever the upstream sent right after it leave in one
  // write; then what the client sent after its handshake goes up.
  IoBuffer& b = up_->rbuf;
  uv_buf_t bufs[2];
  unsigned n = 0;
  bufs[n++] = uv_buf_init(client_head_.data(), static_cast<unsigned>(client_head_.size()));
  if (b.unparsed() > 0) {
    bufs[n++] = uv_buf_init(b.data + b.start, static_cast<unsigned>(b.unparsed()));
    tunnel_bytes_down_ += b.unparsed();
    b.start = b.end;
  }
  writeToClient(bufs, n);
  if (closing_) return;
  armClientTimer(snap_->config->timeouts.tunnel_idle_ms);
  if (client_eof_) {
    // The client half-closed while waiting for the 101: it still gets it,
    // its early bytes still go up, then the tunnel ends.
    endTunnel(true);
    return;
  }
  tunnelToClient();
  if (!closing_) tunnelFromClient();
}

// Client -> upstream: writes what rbuf_ holds after the handshake head, one
// write at a time. Reading the client resumes (updateClientReading) only
// when no upstream write is pending and rbuf_ has room.
void Connection::tunnelFromClient() {
  while (!closing_ && up_ != nullptr && !up_->write_pending) {
    if (rbuf_.unparsed() == 0) {
      // Nothing in flight: the region after the head is free again, and the
      // TLS engine may hold decrypted bytes that did not fit before.
      rbuf_.start = rbuf_.end = body_base_;
      if (!tls_ || tunnel_ending_ || !tls_->hasBufferedInput()) break;
      if (!tlsPull()) return;
      if (rbuf_.unparsed() == 0) break;
    }
    uv_buf_t b = uv_buf_init(rbuf_.data + rbuf_.start, static_cast<unsigned>(rbuf_.unparsed()));
    tunnel_bytes_up_ += b.len;
    rbuf_.start = rbuf_.end;  // handed to the write; reused once it is done
    armClientTimer(snap_->config->timeouts.tunnel_idle_ms);
    if (tunnelWriteUpstream(&b, 1) < 0) {
      close();
      return;
    }
  }
  if (closing_ || up_ == nullptr) return;
  if (tls_peer_closed_ && !tunnel_ending_) {
    endTunnel(true);  // close_notify found by a tlsPull() above
    return;
  }
  updateClientReading();
  if (tunnel_ending_ && !up_->write_pending && !client_write_pending_) close();
}

// Upstream -> client: forwards what the upstream buffer holds; the upstream
// is read again once the client took it.
void Connection::tunnelToClient() {
  if (closing_ || up_ == nullptr || client_write_pending_) return;
  IoBuffer& b = up_->rbuf;
  if (b.unparsed() > 0) {
    uv_buf_t buf = uv_buf_init(b.data + b.start, static_cast<unsigned>(b.unparsed()));
    tunnel_bytes_down_ += buf.len;
    b.start = b.end;
    writeToClient(&buf, 1);  // stops reading the upstream if it is pending
    if (closing_) return;
    armClientTimer(snap_->config->timeouts.tunnel_idle_ms);
    if (client_write_pending_) return;  // onTunnelClientWritten() comes back
  }
  b.start = b.end = 0;
  if (!tunnel_ending_) {
    up_->startReading();
  } else if (!up_->write_pending) {
    close();
  }
}

void Connection::onTunnelUpstreamRead(ssize_t nread) {
  if (nread > 0) {
    up_->rbuf.end += static_cast<size_t>(nread);
    tunnelToClient();
  } else if (nread < 0) {
    endTunnel(nread == UV_EOF);
  }
}

void Connection::onTunnelUpstreamWritten(int status) {
  if (status != 0) {
    close();
    return;
  }
  tunnelFromClient();
}

void Connection::onTunnelClientWritten() { tunnelToClient(); }

void Connection::endTunnel(bool orderly) {
  if (closing_) return;
  if (!orderly || up_ == nullptr) {
    close();
    return;
  }
  if (tunnel_ending_) return;
  tunnel_ending_ = true;
  client_eof_ = true;  // updateClientReading() reads the client no more
  updateClientReading();
  up_->stopReading();
  // Bytes already read still cross; each direction closes the tunnel once
  // it finds no write pending either way.
  tunnelFromClient();
  if (!closing_) tunnelToClient();
}

void Connection::tunnelClosed() {
  WorkerMetrics& m = worker_->metrics();
  const size_t label = ctx_.route != nullptr ? snap_->route_labels[snap_->routeIndex(ctx_.route)] : 0;
  m.requests[label][methodSlot(req_.method_name)][statusSlot(status_)].inc();
  m.request_latency.observe(tunnel_handshake_us_);  // the handshake exchange, not the tunnel's life
  m.tunnels_active.add(-1);
  m.tunnels_total.inc();
  m.tunnel_bytes[0].inc(tunnel_bytes_up_);
  m.tunnel_bytes[1].inc(tunnel_bytes_down_);
  logAccess();  // duration_us, bytes_in and bytes_out cover the whole tunnel
  ws_ = WsState::kNone;
}

// Every tunnel write to the upstream goes through UpstreamConn::write()
// (plaintext or TLS alike); completion comes as onUpstreamWritten().
int Connection::tunnelWriteUpstream(uv_buf_t* bufs, unsigned n) { return up_->write(bufs, n); }

}  // namespace portcullis
