// The data path: what happens to a request, top to bottom.
//
//  1. Bytes arrive from the client into rbuf_ (a pooled buffer, held only
//     while there is something to parse). codec_ parses the head in place:
//     names and values are views into rbuf_.
//  2. beginRequest(): a request id, the snapshot, the route (404/405), the
//     body limit (413), then the filter chain's head phase (which may answer,
//     or pause and resume later).
//  3. connectUpstream(): a pooled keep-alive connection to a server chosen by
//     the upstream's policy, or a new one (502/503/504 on failure).
//  4. sendRequestHead() + pumpRequestBody(): the edited head is serialised
//     once; body slices go from rbuf_ straight to the upstream socket (with
//     chunk framing when the client sent chunked). While an upstream write is
//     pending the client is not read: backpressure.
//  5. parseResponse(): the response head is parsed in the upstream's buffer,
//     edited, serialised to the client; body bytes are forwarded as received
//     (framing already validated by the parser). While a client write is
//     pending the upstream is not read: backpressure the other way.
//  6. finishExchange(): access log, metrics, the upstream connection back to
//     its pool, and the next (possibly pipelined) request - or, when the
//     connection ends there, a close that lingers while the client may
//     still be sending (lingerClose()).
//  7. WebSocket (routes with `websocket = true`, proxy/tunnel.cc): a valid
//     handshake goes up with its Upgrade; on the upstream's 101 the
//     connection becomes a raw byte tunnel (hooks below test `ws_`).
//
// Memory bound per client connection: at most two pooled buffers (the client
// read buffer and the upstream read buffer, `worker.buffer_size` each, 64 KiB
// by default) plus the serialised heads. Nothing else grows with body size.

#include "proxy/connection.h"

#include <sys/ioctl.h>
#include <xxhash.h>

#include <algorithm>
#include <cctype>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "proxy/access_log.h"
#include "proxy/real_ip.h"
#include "proxy/security_events.h"
#include "proxy/target_normalize.h"
#include "proxy/worker.h"

namespace portcullis {

namespace {

constexpr std::string_view kJsonType = "application/json";

bool methodAllowed(uint16_t methods, std::string_view name) {
  uint16_t bit = methodBitFromName(name);
  return bit != 0 && (methods & bit) != 0;
}

void appendAllow(std::string& out, uint16_t methods) {
  static constexpr std::string_view kNames[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"};
  for (std::string_view n : kNames) {
    if ((methods & methodBitFromName(n)) == 0) continue;
    if (!out.empty()) out.append(", ");
    out.append(n);
  }
}

// The upstream timer (upstream_response_ms) runs while the proxy waits on the
// upstream (connect, a pending write, the response), never while it waits on
// the client for more request body: a slow upload is bounded by
// body_idle_ms / min_body_rate, not mistaken for a slow upstream.
void onUpstreamTimer(uv_timer_t* t) {
  auto* u = static_cast<UpstreamConn*>(t->data);
  if (!u->timer_deadline.due(t, &onUpstreamTimer)) return;
  if (u->owner != nullptr) u->owner->onUpstreamTimeout();
}

void startUpstreamTimer(UpstreamConn* u, uint64_t ms) { u->timer_deadline.arm(&u->timer, &onUpstreamTimer, ms); }

}  // namespace

Connection::Connection(Worker* worker, bool secure)
    : worker_(worker), secure_(secure), codec_(HTTP_REQUEST, worker->codecLimits()) {
  ctx_.bind(&arena_, &Connection::resumeThunk, this);
  codec_.setBodySink(this);
}

Connection::~Connection() = default;

int Connection::accept(uv_stream_t* listener) {
  uv_tcp_init(worker_->loop(), &tcp_);
  tcp_.data = this;
  handles_open_ = 1;
  int rc = uv_accept(listener, reinterpret_cast<uv_stream_t*>(&tcp_));
  uv_timer_init(worker_->loop(), &timer_);
  timer_.data = this;
  handles_open_ = 2;
  if (rc != 0) {
    close();
    return rc;
  }
  uv_tcp_nodelay(&tcp_, 1);
  peerAddress(&tcp_, peer_ip_, sizeof(peer_ip_), &peer_port_);
  ctx_.remote_ip = peer_ip_;  // until a request head says otherwise
  return 0;
}

bool Connection::claimClientAddress(ConnectionsPerIp& table, uint32_t limit) {
  std::string key = clientAddressKey(peer_ip_);
  if (!table.tryAcquire(key, limit)) return false;
  address_key_ = std::move(key);
  return true;
}

void Connection::start() {
  if (secure_) {
    const auto& tls = worker_->snapshot()->tls;
    if (!tls) {  // [tls] was removed by a reload; the listener stays until restart
      close();
      return;
    }
    tls_ = std::make_unique<TlsSession>(tls->ctx());
  }
  codec_.startRequest(&req_, &arena_);
  armClientTimer(worker_->snapshot()->config->timeouts.request_header_ms);
  updateClientReading();
}

void Connection::pinSnapshot() {
  if (pin_ != nullptr) return;
  pin_ = worker_->pinSnapshot();
  snap_ = pin_->snap.get();
}

void Connection::unpinSnapshot() {
  if (pin_ == nullptr) return;
  worker_->unpinSnapshot(pin_);
  pin_ = nullptr;
  snap_ = nullptr;
}

// ---------------------------------------------------------------------------
// Client reading and request parsing

void Connection::onAlloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* c = static_cast<Connection*>(h->data);
  if (c->tls_) {
    buf->base = c->worker_->tlsScratch();
    buf->len = Worker::kTlsScratchSize;
    return;
  }
  c->worker_->buffers().acquire(c->rbuf_);
  buf->base = c->rbuf_.data + c->rbuf_.end;
  buf->len = c->rbuf_.room();
}

void Connection::onRead(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
  auto* c = static_cast<Connection*>(s->data);
  if (nread > 0) {
    c->req_bytes_in_ += static_cast<uint64_t>(nread);
    c->worker_->metrics().bytes_in.inc(static_cast<uint64_t>(nread));
    if (c->tls_) {
      c->tls_->pushCiphertext(c->worker_->tlsScratch(), static_cast<size_t>(nread));
      if (!c->tlsPull()) return;
    } else {
      c->rbuf_.end += static_cast<size_t>(nread);
    }
    c->processClient();
    // close_notify may come in the same flight as the last request.
    if (c->tls_peer_closed_ && !c->closing_ && (c->ws_ == WsState::kTunnel || !c->client_eof_)) c->clientEof(UV_EOF);
    return;
  }
  if (nread == 0) return;
  c->clientEof(nread);
}

void Connection::clientEof(ssize_t nread) {
  if (ws_ == WsState::kTunnel) {
    endTunnel(nread == UV_EOF);
    return;
  }
  // EOF or error from the client.
  if (rbuf_.held() && rbuf_.unparsed() == 0 && req_state_ == ReqState::kReadingHead && !codec_.inMessage()) {
    worker_->buffers().release(rbuf_);
  }
  if (nread == UV_EOF && req_state_ != ReqState::kReadingHead && resp_state_ != RespState::kDone) {
    // Half-close after a complete head (whatever the request is waiting
    // for: its filters, an upstream connection, a write): answer, then
    // close. Everything it sent is read already (or waits in the TLS
    // engine); no more will come.
    client_eof_ = true;
    close_after_ = true;
    updateClientReading();
    if (req_state_ == ReqState::kStreamingBody) {
      if (bodyCutShort()) {
        close();  // the upstream sees an unterminated request
        return;
      }
      // Bytes that waited for the next read (awaitMoreBody) go on now.
      if (up_ != nullptr && !up_->write_pending && !paused_in_body_) pumpRequestBody();
    }
    return;
  }
  if (req_state_ == ReqState::kReadingHead && codec_.inMessage()) {
    worker_->metrics().parse_errors.inc();
  }
  close();
}

bool Connection::bodyCutShort() const {
  return client_eof_ && req_state_ == ReqState::kStreamingBody && !xform_finishing_ && !paused_in_body_ &&
         (up_ == nullptr || !up_->write_pending) && rbuf_.unparsed() == 0 && !(tls_ && tls_->hasBufferedInput());
}

// Decrypts whatever the TLS engine holds into rbuf_ (as much as fits), and
// sends what the engine wants sent (handshake records, tickets, alerts).
// Returns false if the connection was closed.
bool Connection::tlsPull() {
  const bool was_done = tls_->handshakeDone();
  for (;;) {
    worker_->buffers().acquire(rbuf_);
    if (rbuf_.room() == 0) break;  // more stays in the engine until there is room
    size_t n = 0;
    TlsSession::Result r = tls_->readPlaintext(rbuf_.data + rbuf_.end, rbuf_.room(), n);
    if (r == TlsSession::Result::kOk) {
      rbuf_.end += n;
      continue;
    }
    if (r == TlsSession::Result::kWantRead) break;
    if (r == TlsSession::Result::kError && !tls_->handshakeDone()) {
      worker_->metrics().tls_handshake_failures.inc();
      worker_->metrics().tls_failure_reasons.incLowerCase("tls", tls_->failureReason());
    }
    if (r == TlsSession::Result::kClosed) {
      tls_peer_closed_ = true;  // handled by the caller after the data before it
      break;
    }
    flushTls();  // a fatal alert, if the engine produced one
    close();
    return false;
  }
  if (!was_done && tls_->handshakeDone()) {
    (tls_->resumed() ? worker_->metrics().tls_handshakes_resumed : worker_->metrics().tls_handshakes_full).inc();
  }
  if (rbuf_.held() && rbuf_.end == 0 && req_state_ == ReqState::kReadingHead && !codec_.inMessage()) {
    worker_->buffers().release(rbuf_);  // handshake only: nothing to parse yet
  }
  flushTls();
  return !closing_;
}

// Sends the engine's pending ciphertext through tls_out_ (one pooled buffer
// at a time, plus tls_tail_ for a small rest: takeCiphertextForWrite);
// tls_write_pending_ while the socket has not taken it.
void Connection::flushTls() {
  while (!closing_ && !tls_write_pending_ && tls_->pendingCiphertext() > 0) {
    worker_->buffers().acquire(tls_out_);
    size_t tail = 0;
    const size_t n = tls_->takeCiphertextForWrite(tls_out_.data, tls_out_.cap, tls_tail_, tail);
    uv_buf_t b[2] = {uv_buf_init(tls_out_.data, static_cast<unsigned>(n)),
                     uv_buf_init(tls_tail_.get(), static_cast<unsigned>(tail))};
    int rc = writeOrQueue(reinterpret_cast<uv_stream_t*>(&tcp_), &write_req_, b, tail > 0 ? 2 : 1,
                          &Connection::onTlsWritten);
    if (rc < 0) {
      close();
      return;
    }
    if (rc == 1) {
      write_req_.data = this;
      tls_write_pending_ = true;
      return;
    }
  }
  if (!tls_write_pending_) worker_->buffers().release(tls_out_);
}

void Connection::onTlsWritten(uv_write_t* req, int status) {
  auto* c = static_cast<Connection*>(req->data);
  c->tls_write_pending_ = false;
  if (c->closing_) return;
  if (status != 0) {
    c->close();
    return;
  }
  c->flushTls();
  if (c->closing_ || c->tls_write_pending_) return;
  // All ciphertext of the last response write is on the wire.
  if (c->client_write_pending_) Connection::onClientWritten(&c->write_req_, 0);
}

void Connection::onOverloadChanged() {
  if (closing_) return;
  updateClientReading();
}

void Connection::updateClientReading() {
  if (closing_) return;
  bool want = !client_eof_ && !paused_in_body_;
  if (rbuf_.held() && rbuf_.room() == 0) want = false;
  if (up_ != nullptr && up_->write_pending) want = false;
  if (req_state_ == ReqState::kHeadFilters || req_state_ == ReqState::kWaitUpstream) {
    // Body bytes may arrive and wait in rbuf_ until the upstream is ready.
    if (!rbuf_.held() || rbuf_.room() == 0) want = rbuf_.held() ? false : want;
  }
  if (want && !rbuf_.held() && worker_->overloaded()) {
    // Overload (Worker::onWatermark): reading would take a new buffer.
    want = false;
    if (!overload_paused_) {
      overload_paused_ = true;
      worker_->metrics().overload_paused.inc();
    }
  } else if (!worker_->overloaded()) {
    overload_paused_ = false;
  }
  if (want && !reading_) {
    uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp_), &Connection::onAlloc, &Connection::onRead);
    reading_ = true;
  } else if (!want && reading_) {
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp_));
    reading_ = false;
  }
}

void Connection::processClient() {
  if (closing_) return;
  if (ws_ == WsState::kTunnel) {
    tunnelFromClient();
    return;
  }
  if (req_state_ == ReqState::kReadingHead) {
    if (rbuf_.unparsed() == 0) {
      updateClientReading();
      return;
    }
    if (!head_bytes_seen_) {
      head_bytes_seen_ = true;
      if (!first_request_) armClientTimer(snap_ ? snap_->config->timeouts.request_header_ms
                                                : worker_->snapshot()->config->timeouts.request_header_ms);
    }
    size_t consumed = 0;
    HttpCodec::Status st = codec_.execute(rbuf_.data + rbuf_.start, rbuf_.unparsed(), consumed);
    rbuf_.start += consumed;
    switch (st) {
      case HttpCodec::Status::kNeedMore:
        if (rbuf_.room() == 0) {
          // Head larger than the buffer; the codec's limit is below the
          // buffer size, so this only happens with a huge request line.
          sendError(431, "headers_too_large", "codec", "head does not fit", true);
          return;
        }
        updateClientReading();
        return;
      case HttpCodec::Status::kHeadComplete:
        head_end_ = rbuf_.start;
        body_base_ = rbuf_.start;
        beginRequest();
        return;
      case HttpCodec::Status::kMessageComplete:
        // Cannot happen before the head; treat as a framing error.
      case HttpCodec::Status::kError: {
        worker_->metrics().parse_errors.inc();
        ctx_.remote_ip = peer_ip_;
        switch (codec_.error()) {
          case CodecError::kUriTooLong:
            sendError(414, "uri_too_long", "codec", "request target too long", true);
            break;
          case CodecError::kHeadersTooLarge:
            sendError(431, "headers_too_large", "codec", "request head too large", true);
            break;
          case CodecError::kBadVersion:
            sendError(505, "http_version_not_supported", "codec", "unsupported HTTP version", true);
            break;
          default:
            sendError(400, "bad_request", "codec", codec_.errorReason(), true);
            break;
        }
        return;
      }
    }
    return;
  }
  if (req_state_ == ReqState::kStreamingBody) {
    pumpRequestBody();
    return;
  }
  updateClientReading();
}

void Connection::beginRequest() {
  timer_deadline_.clear();
  pinSnapshot();
  ctx_.reset();
  ctx_.loop = worker_->loop();
  ctx_.secure = tls_ != nullptr;
  if (tls_) ctx_.tls_version = tls_->version();
  worker_->nextRequestId(request_id_);
  ctx_.snapshot = snap_;
  ctx_.request_id = std::string_view(request_id_, 32);
  ctx_.remote_ip = peer_ip_;
  ctx_.remote_port = peer_port_;
  ctx_.start_ns = nowNs();
  ctx_.start_us = ctx_.start_ns / 1000u;
  req_state_ = ReqState::kHeadFilters;
  resp_state_ = RespState::kNone;
  local_reply_ = false;
  continue_sent_ = false;
  retried_ = false;
  xform_finishing_ = false;
  hold_len_ = 0;
  hold_next_n_ = 0;
  body_start_us_ = upstream_wait_us_ = write_wait_since_us_ = last_body_data_us_ = 0;
  connect_attempts_ = 0;
  status_ = upstream_status_ = 0;
  resp_bytes_out_ = 0;
  req_body_bytes_ = 0;
  head_sent_ = false;
  if (!req_.keep_alive || draining_) close_after_ = true;

  // Behind trusted proxies the client is the one their X-Forwarded-For
  // names (real_ip.h): it is what rate limits, lockouts, detection and the
  // logs key on from here, refusals included. The TCP peer stays in
  // peer_ip_ for the X-Forwarded-For hop we append and the access log.
  ctx_.trusted_peer = !snap_->trusted_proxies.empty() && anyContains(snap_->trusted_proxies, peer_ip_);
  if (ctx_.trusted_peer) {
    IpText client;
    if (forwardedClientAddress(req_.headers, snap_->trusted_proxies, client)) {
      ctx_.remote_ip = arena_.copy(client.view());
    }
  }

  // Only the normalised target is routed, authorised and sent upstream.
  if (!normalizeRequestTarget()) return;

  // The route is resolved now so filters see it; refusing an unrouted path
  // or a method waits until the filters had their say (HTTPS enforcement,
  // later authentication), as with Envoy's router as the last filter.
  ctx_.route = snap_->match(req_.path);
  chain_.start(snap_->filters, ctx_);
  runHeadFilters();
}

void Connection::resumeThunk(void* self) {
  auto* c = static_cast<Connection*>(self);
  if (c->closing_) return;
  if (c->req_state_ == ReqState::kHeadFilters) {
    c->runHeadFilters();
  } else if (c->paused_in_body_) {
    c->paused_in_body_ = false;
    c->pumpRequestBody();
  }
}

void Connection::runHeadFilters() {
  FilterStatus s = chain_.runRequestHead(ctx_, req_);
  if (s == FilterStatus::kPause) return;  // resumeThunk() continues
  if (s == FilterStatus::kRespond) {
    const LocalReply& r = ctx_.local_reply;
    sendLocalReply(r.status, r.code, r.close || req_.hasBody() || close_after_);
    return;
  }
  if (!checkRoute() || !checkUpgrade()) return;
  editRequestHead();
  req_state_ = ReqState::kWaitUpstream;
  connectUpstream(false);
}

// TRACE and CONNECT are never proxied (405). The request-target must be
// origin-form ("*" only for OPTIONS); unreserved %-escapes are decoded, dot
// segments resolved, and climbing above the root, an encoded "/", "\\" or
// NUL refused (400). The normalised path replaces the target's path.
bool Connection::normalizeRequestTarget() {
  // Framing and identity checks llhttp does not make (RFC 9112 §3.2, §6.1):
  // exactly one Host on HTTP/1.1 (at most one on 1.0); Transfer-Encoding only
  // as a single "chunked" on HTTP/1.1; no "_" in header names (proxies that
  // map "_" to "-" would disagree about which header it is). Refused with
  // 400 and close: the framing of what follows is in doubt.
  if (!strictHeadBytes(std::string_view(rbuf_.data, head_end_))) {
    sendError(400, "bad_request", "validate", "bare CR/LF or malformed request line", true);
    return false;
  }
  int hosts = 0;
  int transfer_encodings = 0;
  int authorizations = 0;
  int content_types = 0;
  for (const Header& h : req_.headers) {
    if (h.name.empty()) {
      sendError(400, "bad_request", "validate", "empty header name", true);
      return false;
    }
    if (h.id == HeaderId::kHost) {
      ++hosts;
    } else if (h.id == HeaderId::kAuthorization) {
      ++authorizations;
    } else if (h.id == HeaderId::kContentType) {
      ++content_types;
    } else if (h.id == HeaderId::kTransferEncoding) {
      ++transfer_encodings;
      if (req_.http_minor == 0 || !equalsIgnoreCase(h.value, "chunked")) {
        sendError(400, "bad_request", "validate", "transfer-encoding other than chunked", true);
        return false;
      }
    } else if (h.name.find('_') != std::string_view::npos) {
      sendError(400, "bad_request", "validate", "underscore in header name", true);
      return false;
    }
  }
  if (transfer_encodings > 1 || hosts > 1 || (hosts == 0 && req_.http_minor >= 1)) {
    sendError(400, "bad_request", "validate", hosts != 1 ? "missing or duplicate host" : "repeated transfer-encoding",
              true);
    return false;
  }
  if (authorizations > 1 || content_types > 1) {
    // Only one credential and one media type are ever checked (allowlist,
    // upload sniffing, JSON validation); a second one must not ride along
    // to a backend that reads the other or both (RFC 9110: single-valued).
    sendError(400, "bad_request", "validate", authorizations > 1 ? "repeated authorization" : "repeated content-type",
              !req_.hasBody() ? close_after_ : true);
    return false;
  }
  if (req_.method == HTTP_TRACE || req_.method == HTTP_CONNECT) {
    // After a CONNECT the client may already be sending tunnel bytes: close.
    sendError(405, "method_not_allowed", "validate", "method never proxied",
              req_.method == HTTP_CONNECT || req_.hasBody() ? true : close_after_);
    return false;
  }
  char* buf = worker_->scratch(req_.target.size() + 1);
  NormalizedTarget nt = normalizeTarget(req_.target, buf, req_.target.size() + 1);
  if (!nt.ok()) {
    sendError(400, "bad_request", "validate", targetErrorName(nt.error), !req_.hasBody() ? close_after_ : true);
    return false;
  }
  if (nt.asterisk) {
    if (req_.method != HTTP_OPTIONS) {
      sendError(400, "bad_request", "validate", "asterisk target outside OPTIONS", true);
      return false;
    }
    return true;
  }
  // Almost every path is already normal: keep the views into the read
  // buffer then, and copy into the arena only what normalisation changed.
  const std::string_view normal(buf, nt.path_len);
  if (normal == req_.path) return true;
  req_.path = arena_.copy(normal);
  req_.query = nt.query;
  req_.target = nt.has_query ? arena_.concat(req_.path, arena_.concat("?", nt.query)) : req_.path;
  return true;
}

// Route-level refusals (SPEC §5), after the head filters.
bool Connection::checkRoute() {
  if (ctx_.route == nullptr) {
    sendError(404, "not_found", "router", "no route", !req_.hasBody() ? close_after_ : true);
    return false;
  }
  if (!methodAllowed(ctx_.route->methods, req_.method_name)) {
    std::string allow;
    appendAllow(allow, ctx_.route->methods);
    ctx_.local_reply.headers.push_back({"Allow", arena_.copy(allow)});
    sendError(405, "method_not_allowed", "router", "method not allowed on route",
              !req_.hasBody() ? close_after_ : true);
    return false;
  }
  max_body_ = ctx_.route->max_body_bytes;
  if (req_.has_content_length && req_.content_length > max_body_) {
    // Answered from the head alone, without reading (or inviting) the body.
    sendError(413, "payload_too_large", "router", "content-length over route limit", true);
    return false;
  }
  return true;
}

// Proxy-owned request edits (SPEC §6): hop-by-hop headers are dropped by the
// serialiser; identity headers are replaced, never trusted, except that a
// trusted proxy's X-Forwarded-For (all its lines, joined) is extended with
// the TCP peer rather than overwritten.
void Connection::editRequestHead() {
  std::string_view forwarded_for;
  // SPEC §6, on every route (token_check does the same on `auth` routes,
  // before it adds the token's identity): the client's Authorization stays
  // here unless forward_authorization, and a client copy of a custom
  // account_header never passes (the default one is an X-Portcullis-*).
  const AuthConfig& auth = snap_->config->auth;
  const std::string_view account_header =
      lookupHeader(auth.account_header) == HeaderId::kXPortcullis ? std::string_view() : std::string_view(auth.account_header);
  for (Header& h : req_.headers) {
    if (!account_header.empty() && equalsIgnoreCase(h.name, account_header)) h.removed = true;
    switch (h.id) {
      case HeaderId::kAuthorization:
        if (!auth.forward_authorization) h.removed = true;
        break;
      case HeaderId::kXForwardedFor:
        if (ctx_.trusted_peer && !h.value.empty()) {
          forwarded_for = forwarded_for.empty() ? h.value : arena_.concat(forwarded_for, arena_.concat(", ", h.value));
        }
        h.removed = true;
        break;
      case HeaderId::kXForwardedProto:
      case HeaderId::kXRequestId:
      case HeaderId::kXPortcullis:
      case HeaderId::kExpect:
        h.removed = true;
        break;
      case HeaderId::kOther:
        if (h.name.find('_') != std::string_view::npos) h.removed = true;
        break;
      default:
        break;
    }
  }
  req_.add("X-Request-Id", ctx_.request_id);
  const std::string_view peer(peer_ip_);
  req_.add("X-Forwarded-For", forwarded_for.empty() ? peer : arena_.concat(forwarded_for, arena_.concat(", ", peer)));
  req_.add("X-Forwarded-Proto", ctx_.secure ? "https" : "http");
}

// ---------------------------------------------------------------------------
// Upstream connection and request forwarding

void Connection::connectUpstream(bool fresh) {
  pool_ = worker_->pool(ctx_.route->upstream_index);
  UpstreamError err = UpstreamError::kNoHealthyServer;
  up_ = pool_->acquire(fresh, err);
  if (up_ == nullptr) {
    handleUpstreamFailure(err, err == UpstreamError::kNoHealthyServer ? 503 : 502);
    return;
  }
  ++connect_attempts_;
  up_->owner = this;
  if (up_->state == UpstreamConn::State::kActive) {
    sendRequestHead();
  } else {
    startUpstreamTimer(up_, snap_->config->timeouts.upstream_connect_ms);
  }
  updateClientReading();
}

void Connection::onUpstreamConnected(int status) {
  up_->timer_deadline.clear();
  if (status != 0) {
    // A refused connect, or TLS to the server failed (handshake or its
    // certificate): the server is skipped for fail_timeout_ms either way.
    const UpstreamError kind = up_->tls_failure != nullptr ? UpstreamError::kTlsHandshake : UpstreamError::kConnectFailed;
    pool_->markFailed(up_->server);
    releaseUpstream(false);
    if (connect_attempts_ < 3 && connect_attempts_ < pool_->serverCount()) {
      // Counted here only when another server is tried; the last failure is
      // counted by handleUpstreamFailure().
      worker_->metrics().upstream_errors[static_cast<size_t>(kind)].inc();
      connectUpstream(true);
      return;
    }
    handleUpstreamFailure(kind, 502);
    return;
  }
  sendRequestHead();
}

void Connection::sendRequestHead() {
  up_head_.clear();
  if (req_.find(HeaderId::kHost) == nullptr) {
    // HTTP/1.0 clients may omit Host; the upstream request is HTTP/1.1,
    // which requires one: name the server it goes to.
    req_.add("Host", arena_.copy(pool_->serverAddress(up_->server).str()));
  }
  // A body transform (upload encryption) replaces the body, so even an
  // empty Content-Length body becomes its output, of a length it computes.
  const BodyTransform* xf = ctx_.body_transform;
  const bool has_body = req_.hasBody() || xf != nullptr;
  const uint64_t length = xf != nullptr && !req_.chunked ? xf->outputLength(req_.content_length) : req_.content_length;
  serializeRequest(req_, has_body, req_.chunked, length, up_head_);
  head_sent_ = false;
  req_state_ = ReqState::kStreamingBody;
  resp_state_ = RespState::kHead;
  up_->codec.setBodySink(this);
  up_->codec.setLimits(CodecLimits{65536, 65536, 1000});
  up_->codec.startResponse(&resp_, &arena_, req_.method == HTTP_HEAD);
  up_->startReading();
  upstream_sent_at_us_ = nowUs();
  if (!retried_) worker_->metrics().proxy_added_latency.observe(upstream_sent_at_us_ - ctx_.start_us);
  startUpstreamTimer(up_, snap_->config->timeouts.upstream_response_ms);
  if (has_body && req_.expect_continue && rbuf_.unparsed() == 0 && !continue_sent_) {
    // The client waits for our go-ahead before sending the body.
    static const char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
    continue_sent_ = true;
    if (tls_) {
      tls_->writePlaintext(kContinue, sizeof(kContinue) - 1);
      flushTls();
    } else {
      uv_buf_t b = uv_buf_init(const_cast<char*>(kContinue), sizeof(kContinue) - 1);
      uv_try_write(reinterpret_cast<uv_stream_t*>(&tcp_), &b, 1);
    }
  }
  if (has_body) {
    body_start_us_ = last_body_data_us_ = nowUs();
    upstream_wait_us_ = write_wait_since_us_ = 0;
    armBodyTimer();
  }
  pumpRequestBody();
}

void Connection::onBodyData(std::string_view data) {
  if (body_target_ == BodyTarget::kDiscard) return;
  if (body_target_ == BodyTarget::kClient) {
    client_bufs_.push_back(uv_buf_init(const_cast<char*>(data.data()), static_cast<unsigned>(data.size())));
    return;
  }
  req_body_bytes_ += data.size();
  body_slices_.push_back(data);
  if (body_start_us_ != 0) last_body_data_us_ = nowUs();
}

// Parses whatever body bytes are buffered, lets the body filters see (and
// possibly replace) the decoded slices, and writes them, with chunk framing
// when the client sent chunked and with the head the first time, to the
// upstream in one write.
void Connection::pumpRequestBody() {
  if (closing_ || up_ == nullptr || up_->write_pending || paused_in_body_) return;
  BodyTransform* xf = ctx_.body_transform;
again:
  up_bufs_.clear();
  body_slices_.clear();
  chunk_frames_used_ = 0;
  if (!head_sent_) up_bufs_.push_back(uv_buf_init(up_head_.data(), static_cast<unsigned>(up_head_.size())));
  bool request_done = false;
  size_t budget = SIZE_MAX;
  if (xf != nullptr) {
    // Every earlier output is written (no write is pending): a new round.
    // Parsing only `budget` raw bytes keeps the body bytes of this round
    // within what the transform takes (chunk framing only makes it less).
    xf->beginRound();
    budget = xf->inputBudget();
  }
  if (xform_finishing_) {
    request_done = true;  // the parser is past the body; the transform has more to say
  } else if (!req_.hasBody()) {
    // A body-less request still has to reach its end in the parser, which
    // happens without consuming input. On a retry it already has.
    if (codec_.inMessage()) {
      size_t consumed = 0;
      HttpCodec::Status st = codec_.execute(rbuf_.data + rbuf_.start, 0, consumed);
      if (st != HttpCodec::Status::kMessageComplete) std::abort();  // llhttp ends body-less messages at once
    }
    request_done = true;
  } else if (rbuf_.unparsed() > 0) {
    size_t consumed = 0;
    const HttpCodec::Status st =
        codec_.execute(rbuf_.data + rbuf_.start, std::min(rbuf_.unparsed(), budget), consumed);
    rbuf_.start += consumed;
    if (st == HttpCodec::Status::kError) {
      worker_->metrics().parse_errors.inc();
      releaseUpstream(false);  // the upstream sees an unterminated request
      sendError(400, "bad_request", "codec", codec_.errorReason(), true);
      return;
    }
    request_done = (st == HttpCodec::Status::kMessageComplete);
    const uint64_t deadline = request_done ? 0 : bodyDeadlineUs();
    if (deadline != 0 && nowUs() > deadline) {
      releaseUpstream(false);  // the upstream sees an unterminated request
      sendError(408, "request_timeout", "timeout", "request body below min_body_rate", true);
      return;
    }
    if (req_body_bytes_ > max_body_) {
      releaseUpstream(false);
      sendError(413, "payload_too_large", "router", "body over route limit", true);
      return;
    }
  }
  if (!xform_finishing_ && req_.hasBody() && chain_.wantsBody() && (!body_slices_.empty() || request_done)) {
    // Body filters see the decoded bytes before anything of them leaves;
    // they may answer (the upstream then never gets the end of the request)
    // or replace a slice with bytes they own.
    for (std::string_view& slice : body_slices_) {
      BodyChunk chunk{slice};
      if (chain_.runRequestBody(ctx_, chunk, false) == FilterStatus::kRespond) {
        releaseUpstream(false);
        sendLocalReply(ctx_.local_reply.status, ctx_.local_reply.code, true);
        return;
      }
      slice = chunk.data;
    }
    if (request_done) {
      BodyChunk last{};
      if (chain_.runRequestBody(ctx_, last, true) == FilterStatus::kRespond) {
        releaseUpstream(false);
        sendLocalReply(ctx_.local_reply.status, ctx_.local_reply.code, true);
        return;
      }
    }
  }
  if (xf != nullptr && !transformBody(xf, request_done)) return;
  if (hold_len_ > 0 && (!body_slices_.empty() || request_done)) {
    up_bufs_.push_back(uv_buf_init(hold_.get(), static_cast<unsigned>(hold_len_)));
    hold_len_ = 0;  // the bytes stay in hold_ until this write is done
  }
  for (std::string_view slice : body_slices_) {
    if (slice.empty()) continue;
    if (req_.chunked) {
      if (!chunk_frames_) chunk_frames_ = std::make_unique<std::deque<ChunkLine>>();
      if (chunk_frames_used_ == chunk_frames_->size()) chunk_frames_->emplace_back();
      ChunkLine& f = (*chunk_frames_)[chunk_frames_used_++];
      int n = std::snprintf(f.text, sizeof(f.text), "%zx\r\n", slice.size());
      up_bufs_.push_back(uv_buf_init(f.text, static_cast<unsigned>(n)));
    }
    up_bufs_.push_back(uv_buf_init(const_cast<char*>(slice.data()), static_cast<unsigned>(slice.size())));
    if (req_.chunked) up_bufs_.push_back(uv_buf_init(const_cast<char*>("\r\n"), 2));
  }
  if (request_done && req_.chunked) up_bufs_.push_back(uv_buf_init(const_cast<char*>("0\r\n\r\n"), 5));
  if (request_done) {
    req_state_ = ReqState::kDone;
    timer_deadline_.clear();
    if (resp_state_ == RespState::kHead) startUpstreamTimer(up_, snap_->config->timeouts.upstream_response_ms);
  } else if (xf != nullptr && up_bufs_.empty()) {
    // The transform took this round's bytes without output yet: no write
    // will call us back, so go on at once with whatever is buffered, in
    // rbuf_ or still inside the TLS engine (decrypted records that did not
    // fit before; the client may have sent everything already, so no
    // socket read would ever bring them).
    if (tls_ && rbuf_.unparsed() == 0 && tls_->hasBufferedInput() && !tlsPull()) return;
    if (rbuf_.unparsed() > 0) goto again;
  }
  if (xf != nullptr && !request_done && !body_slices_.empty()) alignTransformWrite();
  flushToUpstream();
  noticeTlsClose();  // a tlsPull() above may have found it
}

// See hold_ (connection.h). Trims the end of up_bufs_ so that the write is
// a whole number of packets, when the rest fits in hold_, comes from at most
// kHoldPieces slices after the request head and the held bytes sent now,
// and the write keeps at least one byte of them.
void Connection::alignTransformWrite() {
  const uint32_t mss = up_->packetSize();
  if (mss == 0 || up_bufs_.empty()) return;
  size_t total = 0;
  size_t first = 0;  // up_bufs_[first..] may be trimmed
  for (size_t i = 0; i < up_bufs_.size(); ++i) {
    total += up_bufs_[i].len;
    if (up_bufs_[i].base == up_head_.data() || (hold_ && up_bufs_[i].base == hold_.get())) first = i + 1;
  }
  const size_t tail = total % mss;
  if (tail == 0 || tail > kHoldMax) return;
  size_t pieces = 0;
  size_t left = tail;
  for (size_t i = up_bufs_.size(); i > first && left > 0; --i) {
    const size_t len = up_bufs_[i - 1].len;
    if (len > left) {
      left = 0;
    } else if (i - 1 == first) {
      return;  // would take every byte that may be held
    } else {
      left -= len;
    }
    ++pieces;
  }
  if (left > 0 || pieces > kHoldPieces) return;
  hold_next_n_ = pieces;
  left = tail;
  for (size_t p = pieces; p > 0; --p) {
    uv_buf_t& b = up_bufs_.back();
    const size_t k = std::min<size_t>(left, b.len);
    b.len -= static_cast<unsigned>(k);
    hold_next_[p - 1] = std::string_view(b.base + b.len, k);
    left -= k;
    if (b.len == 0) up_bufs_.pop_back();
  }
}

// The write that left out hold_next_ is done: keep those bytes for the next
// round, before the transform (or the next chunk framing) reuses them.
void Connection::saveHold() {
  if (!hold_) hold_ = std::make_unique<char[]>(kHoldMax);
  size_t n = 0;
  for (size_t i = 0; i < hold_next_n_; ++i) {
    std::memcpy(hold_.get() + n, hold_next_[i].data(), hold_next_[i].size());
    n += hold_next_[i].size();
  }
  hold_len_ = n;
  hold_next_n_ = 0;
}

// Runs this round's decoded body slices through the request's body
// transform and puts its output in their place. When the body has ended and
// the transform has more output than this round can carry, `request_done`
// is cleared and xform_finishing_ makes the next round (after the write)
// call finish() again. Slices in rbuf_ go to transformInPlace (the
// transform may turn them into its output where they lie, as plain
// forwarding writes them from there); others to transform(), which copies
// what it keeps. False: the request was aborted.
bool Connection::transformBody(BodyTransform* xf, bool& request_done) {
  BodyOutput out;
  bool ok = true;
  if (!xform_finishing_) {
    for (std::string_view slice : body_slices_) {
      if (inReadBuffer(slice)) {
        ok = ok && xf->transformInPlace(std::span<char>(const_cast<char*>(slice.data()), slice.size()), out);
      } else {
        ok = ok && xf->transform(slice, out);
      }
    }
  }
  if (ok && request_done) {
    const BodyTransform::Finish f = xf->finish(out);
    ok = f != BodyTransform::Finish::kFailed;
    xform_finishing_ = f == BodyTransform::Finish::kAgain;
    if (xform_finishing_) request_done = false;
  }
  if (!ok) {
    releaseUpstream(false);  // the upstream never sees a complete body
    sendError(500, "internal_error", "upload_encrypt", "body transform failed", true);
    return false;
  }
  body_slices_.assign(out.slices, out.slices + out.count);
  bool output_in_rbuf = false;
  for (std::string_view slice : body_slices_) output_in_rbuf = output_in_rbuf || inReadBuffer(slice);
  // Unless the output lies in rbuf_ (then onUpstreamWritten compacts it),
  // its body region is free at once.
  if (rbuf_.held() && !output_in_rbuf && !xform_finishing_ && codec_.inMessage()) {
    const size_t left = rbuf_.unparsed();
    if (left > 0 && rbuf_.start != body_base_) std::memmove(rbuf_.data + body_base_, rbuf_.data + rbuf_.start, left);
    rbuf_.start = body_base_;
    rbuf_.end = body_base_ + left;
  }
  return true;
}

void Connection::flushToUpstream() {
  if (up_bufs_.empty()) {
    if (bodyCutShort()) {
      close();  // the client ended its input inside the body
      return;
    }
    updateClientReading();
    return;
  }
  head_sent_ = true;
  int rc = up_->write(up_bufs_.data(), static_cast<unsigned>(up_bufs_.size()));
  up_bufs_.clear();
  if (rc < 0) {
    onUpstreamWritten(rc);
    return;
  }
  if (rc == 1) {
    if (body_start_us_ != 0) write_wait_since_us_ = nowUs();
    if (resp_state_ == RespState::kHead) startUpstreamTimer(up_, snap_->config->timeouts.upstream_response_ms);
    updateClientReading();
    return;
  }
  onUpstreamWritten(0);
}

void Connection::onUpstreamWritten(int status) {
  if (ws_ == WsState::kTunnel) {
    onTunnelUpstreamWritten(status);
    return;
  }
  if (write_wait_since_us_ != 0) {
    upstream_wait_us_ += nowUs() - write_wait_since_us_;
    write_wait_since_us_ = 0;
  }
  if (status != 0) {
    // The upstream went away while we wrote. Reading will tell the rest
    // (the response may already be there); if it does not, it is a reset.
    handleUpstreamFailure(UpstreamError::kReset, 502);
    return;
  }
  if (hold_next_n_ > 0) saveHold();
  // All slices handed to the kernel: the body region of rbuf_ is free again.
  if (rbuf_.held()) {
    size_t left = rbuf_.unparsed();
    if (left > 0 && rbuf_.start != body_base_) std::memmove(rbuf_.data + body_base_, rbuf_.data + rbuf_.start, left);
    rbuf_.start = body_base_;
    rbuf_.end = body_base_ + left;
  }
  if (req_state_ == ReqState::kStreamingBody) {
    // Waiting on the client again (see startUpstreamTimer).
    if (resp_state_ == RespState::kHead) up_->timer_deadline.clear();
    armBodyTimer();
    if (tls_ && tls_->hasBufferedInput() && !tlsPull()) return;
    noticeTlsClose();
    if (closing_) return;
    if (xform_finishing_ || (rbuf_.unparsed() > 0 && !awaitMoreBody())) {
      pumpRequestBody();
      return;
    }
    if (bodyCutShort()) {
      close();  // the client ended its input inside the body
      return;
    }
  }
  updateClientReading();
}

// Over TLS a full rbuf_ leaves the rest of the record it was decrypting in
// the engine, and once the round's write is done tlsPull() brings just that
// remnant. Sent on its own, it would be a round (a write and a packet the
// upstream wakes up for) per rbuf_ of body. So while a Content-Length body
// goes on beyond what is buffered, the engine holds nothing more and the
// buffered bytes are less than a record, they wait for the next socket read
// to join them (reading is on: the write is done and rbuf_ has room) -
// unless the client ended its input, when no read will bring more.
bool Connection::awaitMoreBody() const {
  return tls_ != nullptr && !client_eof_ && !req_.chunked && rbuf_.unparsed() < SSL3_RT_MAX_PLAIN_LENGTH &&
         req_.content_length - req_body_bytes_ > rbuf_.unparsed() && !tls_->hasBufferedInput();
}

void Connection::onUpstreamTimeout() {
  if (up_ == nullptr) return;
  if (up_->state == UpstreamConn::State::kConnecting) {
    pool_->markFailed(up_->server);
    releaseUpstream(false);
    handleUpstreamFailure(UpstreamError::kConnectTimeout, 504);
    return;
  }
  handleUpstreamFailure(UpstreamError::kResponseTimeout, 504);
}

// Any upstream failure: retry once when safe, answer 502/503/504 when the
// client has seen nothing yet, else abort the client connection (a truncated
// response must never look complete).
void Connection::handleUpstreamFailure(UpstreamError kind, int status) {
  worker_->metrics().upstream_errors[static_cast<size_t>(kind)].inc();
  const bool reused = up_ != nullptr && up_->reused;
  if (up_ != nullptr) releaseUpstream(false);
  if (resp_state_ == RespState::kBody || resp_bytes_out_ > 0) {
    abortClient();  // part of the response is out: it must not look complete
    return;
  }
  if (kind == UpstreamError::kReset && reused && !retried_ && req_body_bytes_ == 0 && !req_.hasBody() &&
      ctx_.body_transform == nullptr) {
    // A pooled connection the server had already closed: nothing of this
    // request was processed, so it is safe to send it again.
    retried_ = true;
    worker_->metrics().upstream_retries.inc();
    req_state_ = ReqState::kWaitUpstream;
    resp_state_ = RespState::kNone;
    connectUpstream(true);
    return;
  }
  std::string_view code = status == 504 ? "gateway_timeout" : status == 503 ? "unavailable" : "bad_gateway";
  // sendLocalReply() closes when request body bytes may still be unread; a
  // body-less request keeps its connection, as after any other reply.
  sendError(status, code, "upstream", upstreamErrorName(kind), close_after_);
}

void Connection::releaseUpstream(bool reusable) {
  if (up_ == nullptr) return;
  UpstreamConn* u = up_;
  up_ = nullptr;
  u->timer_deadline.clear();
  u->owner = nullptr;
  if (reusable) {
    u->pool->release(u, true);
  } else {
    u->pool->release(u, false);
  }
  updateClientReading();
}

// ---------------------------------------------------------------------------
// Response from the upstream back to the client

void Connection::onUpstreamRead(ssize_t nread) {
  if (ws_ == WsState::kTunnel) {
    onTunnelUpstreamRead(nread);
    return;
  }
  if (nread > 0) {
    up_->rbuf.end += static_cast<size_t>(nread);
    if (resp_state_ == RespState::kBody) {
      startUpstreamTimer(up_, snap_->config->timeouts.upstream_response_ms);
    }
    parseResponse();
    return;
  }
  if (nread == 0) return;
  // EOF or error from the upstream.
  if (nread == UV_EOF && resp_state_ == RespState::kBody && up_->codec.needsEof()) {
    HttpCodec::Status st = up_->codec.finish();
    if (st == HttpCodec::Status::kMessageComplete) {
      resp_state_ = RespState::kDone;
      releaseUpstream(false);
      close_after_ = true;
      maybeFinishExchange();
      return;
    }
  }
  handleUpstreamFailure(UpstreamError::kReset, 502);
}

void Connection::parseResponse() {
  if (up_ == nullptr || client_write_pending_) return;
  IoBuffer& b = up_->rbuf;
  // Everything parsed in one pass (head and body slices) leaves in one
  // write. After a head, a body-less message ends without consuming input:
  // `poke` runs the parser once more on zero bytes to reach that end.
  client_bufs_.clear();
  bool poke = resp_state_ == RespState::kBody;
  while (up_ != nullptr && (b.unparsed() > 0 || poke) && resp_state_ != RespState::kDone) {
    poke = false;
    if (resp_state_ == RespState::kNone) {
      // Bytes from an upstream we have not sent a request to.
      handleUpstreamFailure(UpstreamError::kBadResponse, 502);
      return;
    }
    const char* start = b.data + b.start;
    size_t consumed = 0;
    body_target_ = (resp_state_ == RespState::kBody && !raw_response_) ? BodyTarget::kClient : BodyTarget::kDiscard;
    HttpCodec::Status st = up_->codec.execute(start, b.unparsed(), consumed);
    body_target_ = BodyTarget::kUpstream;
    b.start += consumed;
    if (st == HttpCodec::Status::kError) {
      handleUpstreamFailure(UpstreamError::kBadResponse, 502);
      return;
    }
    if (resp_state_ == RespState::kHead) {
      if (!up_->codec.headDone()) {
        if (b.room() == 0) {
          handleUpstreamFailure(UpstreamError::kBadResponse, 502);
          return;
        }
        break;  // need more
      }
      if (resp_.status == 101) {
        startTunnel();  // or 502
        return;
      }
      if (resp_.status < 200) {
        // Interim 1xx responses are not forwarded: the proxy answers
        // Expect itself.
        if (st == HttpCodec::Status::kHeadComplete) {
          size_t c2 = 0;
          up_->codec.execute(b.data + b.start, 0, c2);  // a 1xx ends at once
        }
        up_->codec.startResponse(&resp_, &arena_, req_.method == HTTP_HEAD);
        continue;
      }
      onResponseHead();
      if (up_ == nullptr || closing_) return;
      if (st == HttpCodec::Status::kMessageComplete) resp_state_ = RespState::kDone;
      client_bufs_.push_back(uv_buf_init(client_head_.data(), static_cast<unsigned>(client_head_.size())));
      poke = resp_state_ != RespState::kDone;
      continue;
    }
    // Body bytes: raw passthrough keeps the upstream's (validated) framing;
    // otherwise onBodyData() collected the decoded slices.
    if (raw_response_ && consumed > 0) {
      client_bufs_.push_back(uv_buf_init(const_cast<char*>(start), static_cast<unsigned>(consumed)));
    }
    if (st == HttpCodec::Status::kMessageComplete) resp_state_ = RespState::kDone;
  }
  if (up_ == nullptr) return;
  if (!client_bufs_.empty()) {
    writeToClient(client_bufs_.data(), static_cast<unsigned>(client_bufs_.size()));
    if (closing_) return;
  }
  if (client_write_pending_) return;  // onClientWritten() comes back here
  if (resp_state_ == RespState::kDone) {
    if (up_->rbuf.unparsed() > 0) {
      // Bytes after the end of the response: the connection cannot be reused.
      releaseUpstream(false);
    }
    maybeFinishExchange();
    return;
  }
  // While the head is incomplete its parsed views point into this buffer:
  // it may only be reset or compacted once the head has been serialised.
  if (b.unparsed() == 0 && resp_state_ != RespState::kHead) {
    b.start = b.end = 0;
  } else if (b.start > 0 && resp_state_ == RespState::kBody) {
    std::memmove(b.data, b.data + b.start, b.unparsed());
    b.end -= b.start;
    b.start = 0;
  }
  up_->startReading();
}

void Connection::onResponseHead() {
  upstream_status_ = resp_.status;
  status_ = resp_.status;
  worker_->metrics().upstream_latency.observe(nowUs() - upstream_sent_at_us_);
  // Response edits: the upstream's identity stays private; every response
  // carries the request id; over HTTPS the proxy's HSTS is the only one (a
  // backend's, e.g. max-age=0, would come first and browsers take the
  // first: RFC 6797 section 8.1).
  const bool own_hsts = tls_ && !snap_->hsts.empty();
  for (Header& h : resp_.headers) {
    if (h.id == HeaderId::kServer || h.id == HeaderId::kXRequestId ||
        (own_hsts && h.id == HeaderId::kStrictTransportSecurity)) {
      h.removed = true;
    }
  }
  resp_.add("X-Request-Id", ctx_.request_id);
  if (tls_ && !snap_->hsts.empty()) resp_.add("Strict-Transport-Security", snap_->hsts);
  chain_.runResponseHead(ctx_, resp_);

  const bool no_body = req_.method == HTTP_HEAD || resp_.status == 204 || resp_.status == 304;
  if (!resp_.keep_alive) {
    // The upstream will close after this response; fine for us, but the
    // upstream connection is not reused (handled at release).
  }
  bool close_client = close_after_ || client_eof_;
  if (no_body) {
    resp_framing_ = ResponseFraming::kNone;
    raw_response_ = true;
  } else if (resp_.chunked) {
    if (req_.http_minor >= 1) {
      resp_framing_ = ResponseFraming::kChunked;
      raw_response_ = true;
    } else {
      resp_framing_ = ResponseFraming::kUntilClose;
      raw_response_ = false;
      close_client = true;
    }
  } else if (resp_.has_content_length) {
    resp_framing_ = ResponseFraming::kContentLength;
    raw_response_ = true;
  } else {
    resp_framing_ = ResponseFraming::kUntilClose;
    raw_response_ = false;
    close_client = true;
  }
  if (close_client) close_after_ = true;
  client_head_.clear();
  // Content-Length passes through unchanged for CL bodies and HEAD.
  serializeResponse(resp_,
                    resp_framing_ == ResponseFraming::kChunked ? ResponseFraming::kChunked : ResponseFraming::kNone,
                    0, close_after_, client_head_);
  resp_state_ = RespState::kBody;
}

void Connection::writeToClient(uv_buf_t* bufs, unsigned n) {
  size_t total = 0;
  for (unsigned i = 0; i < n; ++i) total += bufs[i].len;
  resp_bytes_out_ += total;
  worker_->metrics().bytes_out.inc(total);
  if (tls_) {
    for (unsigned i = 0; i < n; ++i) {
      if (!tls_->writePlaintext(bufs[i].base, bufs[i].len)) {
        close();
        return;
      }
    }
    flushTls();
    if (closing_) return;
    if (tls_write_pending_) {
      write_req_.data = this;
      client_write_pending_ = true;
      if (up_ != nullptr) up_->stopReading();
      armClientTimer(snap_ ? snap_->config->timeouts.body_idle_ms : 30000);
    }
    return;
  }
  int rc = writeOrQueue(reinterpret_cast<uv_stream_t*>(&tcp_), &write_req_, bufs, n, &Connection::onClientWritten);
  if (rc < 0) {
    // The client is gone: abort the exchange.
    close();
    return;
  }
  if (rc == 1) {
    write_req_.data = this;
    client_write_pending_ = true;
    if (up_ != nullptr) up_->stopReading();
    armClientTimer(snap_ ? snap_->config->timeouts.body_idle_ms : 30000);
  }
}

void Connection::onClientWritten(uv_write_t* req, int status) {
  auto* c = static_cast<Connection*>(req->data);
  c->client_write_pending_ = false;
  if (c->closing_) return;
  if (status != 0) {
    c->close();
    return;
  }
  if (c->ws_ == WsState::kTunnel) {
    c->onTunnelClientWritten();
    return;
  }
  if (c->local_reply_) {
    c->maybeFinishExchange();
    return;
  }
  if (c->up_ != nullptr) {
    c->parseResponse();
  } else {
    c->maybeFinishExchange();
  }
}

void Connection::maybeFinishExchange() {
  if (closing_ || client_write_pending_) return;
  if (resp_state_ != RespState::kDone) return;
  if (req_state_ != ReqState::kDone) {
    // The response ended before the request body: the two sides can no
    // longer be kept in step.
    releaseUpstream(false);
    close_after_ = true;
  }
  finishExchange();
}

void Connection::finishExchange() {
  if (up_ != nullptr) {
    // Not when the last read filled its buffer: bytes after the response
    // may wait in the socket, and the next request (pipelined, served in
    // this same read callback) would take them for its own response.
    const bool reusable = resp_.keep_alive && up_->rbuf.unparsed() == 0 && req_state_ == ReqState::kDone &&
                          !up_->write_pending && !up_->last_read_full;
    ++up_->requests;
    releaseUpstream(reusable);
  }
  const uint64_t dur = nowUs() - ctx_.start_us;
  WorkerMetrics& m = worker_->metrics();
  size_t label = ctx_.route != nullptr ? snap_->route_labels[snap_->routeIndex(ctx_.route)] : 0;
  m.requests[label][methodSlot(req_.method_name)][statusSlot(status_)].inc();
  m.request_latency.observe(dur);
  logAccess(ctx_.start_us + dur);
  reportSecurity();
  chain_.complete(ctx_);
  if (close_after_ || draining_) {
    if (mayStillSend()) {
      lingerClose();
    } else {
      close();
    }
    return;
  }
  startNextRequest();
}

void Connection::startNextRequest() {
  // A local reply to a body-less request (404, 405, ...) is sent from its
  // head, before the parser reached the message end; reach it now, or the
  // parser would report that end in place of the next request's head.
  if (codec_.inMessage()) {
    size_t consumed = 0;
    if (codec_.execute(rbuf_.data + rbuf_.start, 0, consumed) != HttpCodec::Status::kMessageComplete) {
      close();
      return;
    }
  }
  // Pipelined bytes (if any) move to the front; everything else is reset.
  if (rbuf_.held()) {
    size_t left = rbuf_.unparsed();
    if (left > 0) {
      std::memmove(rbuf_.data, rbuf_.data + rbuf_.start, left);
    }
    rbuf_.start = 0;
    rbuf_.end = left;
    if (left == 0) worker_->buffers().release(rbuf_);
  }
  // An idle keep-alive connection holds no buffer and no arena block; with
  // pipelined bytes waiting, the first block is kept for the next request.
  if (rbuf_.held()) {
    arena_.reset();
  } else {
    arena_.release();
  }
  ctx_.remote_ip = peer_ip_;  // it may have pointed into the arena
  codec_.startRequest(&req_, &arena_);
  unpinSnapshot();
  req_state_ = ReqState::kReadingHead;
  resp_state_ = RespState::kNone;
  local_reply_ = false;
  head_bytes_seen_ = false;
  first_request_ = false;
  req_bytes_in_ = rbuf_.held() ? rbuf_.end : 0;
  body_base_ = head_end_ = 0;
  armClientTimer(worker_->snapshot()->config->timeouts.keepalive_idle_ms);
  if (tls_ && tls_->hasBufferedInput() && !tlsPull()) return;
  if (rbuf_.held() && rbuf_.unparsed() > 0) {
    processClient();
  } else {
    updateClientReading();
  }
  noticeTlsClose();  // after the requests that came before it
}

// ---------------------------------------------------------------------------
// Local replies (SPEC §5) and teardown

void Connection::sendError(int status, std::string_view code, std::string_view rejected_by, std::string_view reason,
                           bool close) {
  if (ctx_.rejected_by.empty()) ctx_.rejected_by = rejected_by;
  if (ctx_.reason.empty()) ctx_.reason = reason.empty() ? code : reason;
  sendLocalReply(status, code, close);
}

void Connection::sendLocalReply(int status, std::string_view code, bool close) {
  if (ctx_.request_id.empty()) {
    worker_->nextRequestId(request_id_);
    ctx_.request_id = std::string_view(request_id_, 32);
    ctx_.start_ns = nowNs();
    ctx_.start_us = ctx_.start_ns / 1000u;
  }
  if (ctx_.start_us == 0) {
    ctx_.start_ns = nowNs();
    ctx_.start_us = ctx_.start_ns / 1000u;
  }
  if (snap_ == nullptr) pinSnapshot();
  status_ = status;
  local_reply_ = true;
  if (close || draining_) close_after_ = true;
  // Anything the client has not sent yet of this request is never read.
  if (req_state_ != ReqState::kDone && req_.hasBody()) close_after_ = true;
  req_state_ = ReqState::kDone;
  resp_state_ = RespState::kDone;
  timer_deadline_.clear();

  local_body_.clear();
  local_body_.append("{\"error\":\"");
  local_body_.append(code);
  local_body_.append("\",\"request_id\":\"");
  local_body_.append(ctx_.request_id);
  local_body_.append("\"}");

  resp_.clear();
  resp_.status = status;
  resp_.add("Content-Type", kJsonType);
  resp_.add("Cache-Control", "no-store");
  resp_.add("X-Request-Id", ctx_.request_id);
  if (tls_ && !snap_->hsts.empty()) resp_.add("Strict-Transport-Security", snap_->hsts);
  for (const AddedHeader& h : ctx_.local_reply.headers) resp_.add(h.name, h.value);
  if (chain_.active()) chain_.runResponseHead(ctx_, resp_);
  client_head_.clear();
  serializeResponse(resp_, ResponseFraming::kContentLength, local_body_.size(), close_after_, client_head_);
  uv_buf_t bufs[2] = {uv_buf_init(client_head_.data(), static_cast<unsigned>(client_head_.size())),
                      uv_buf_init(local_body_.data(), static_cast<unsigned>(local_body_.size()))};
  writeToClient(bufs, req_.method == HTTP_HEAD ? 1 : 2);
  if (closing_) return;
  maybeFinishExchange();
}

uint64_t Connection::bodyDeadlineUs() const {
  const TimeoutsConfig& t = snap_->config->timeouts;
  if (t.min_body_rate == 0 || body_start_us_ == 0) return 0;
  return body_start_us_ + uint64_t(t.min_body_rate_grace_ms) * 1000 + upstream_wait_us_ +
         req_body_bytes_ * 1000000 / t.min_body_rate;
}

void Connection::armBodyTimer() {
  uint64_t ms = snap_->config->timeouts.body_idle_ms;
  if (const uint64_t deadline = bodyDeadlineUs()) {
    const uint64_t now = nowUs();
    ms = std::min<uint64_t>(ms, deadline > now ? (deadline - now) / 1000 + 1 : 1);
  }
  armClientTimer(ms);
}

void Connection::armClientTimer(uint64_t ms) {
  if (closing_) return;
  timer_deadline_.arm(&timer_, &Connection::onTimer, ms);
}

void Connection::onTimer(uv_timer_t* t) {
  auto* c = static_cast<Connection*>(t->data);
  if (c->closing_) return;
  if (!c->timer_deadline_.due(t, &Connection::onTimer)) return;  // cleared, or moved later
  if (c->ws_ == WsState::kTunnel) {
    c->close();  // nothing moved either way for tunnel_idle_ms
    return;
  }
  if (c->client_write_pending_) {
    c->close();  // a client that stopped reading
    return;
  }
  if (c->req_state_ == ReqState::kReadingHead) {
    if (c->head_bytes_seen_ || c->codec_.inMessage()) {
      c->ctx_.remote_ip = c->peer_ip_;
      c->sendError(408, "request_timeout", "timeout", "request head not received in time", true);
    } else {
      c->close();  // idle keep-alive connection
    }
    return;
  }
  if (c->req_state_ == ReqState::kStreamingBody && c->resp_state_ != RespState::kBody) {
    const uint64_t deadline = c->bodyDeadlineUs();
    const uint64_t now = nowUs();
    const bool too_slow = deadline != 0 && now >= deadline;
    if (!too_slow && deadline != 0 &&
        now - c->last_body_data_us_ < uint64_t(c->snap_->config->timeouts.body_idle_ms) * 1000) {
      // Armed for an earlier deadline; bytes since moved it and the body
      // is not idle: wait on.
      c->armBodyTimer();
      return;
    }
    c->releaseUpstream(false);
    c->sendError(408, "request_timeout", "timeout",
                 too_slow ? "request body below min_body_rate" : "request body stalled", true);
    return;
  }
  c->close();
}

void Connection::drain(bool force) {
  draining_ = true;
  close_after_ = true;
  if (force) {
    close();
    return;
  }
  if (req_state_ == ReqState::kReadingHead && !head_bytes_seen_ && !codec_.inMessage()) close();
}

void Connection::reportSecurity() {
  if (snap_ == nullptr) return;
  WorkerMetrics& m = worker_->metrics();
  if (!ctx_.rejected_by.empty()) m.refusals.inc(ctx_.rejected_by, ctx_.reason);
  if (!ctx_.token_id.empty() && ctx_.rejected_by != "token_check") m.auth_success.inc();
  for (unsigned k = 0; k < 3; ++k) {
    if (ctx_.rate_allowed & (1u << k)) m.rate_allowed[k].inc();
  }
  reportRequest(*snap_, ctx_, req_.method_name, req_.path, status_, resp_bytes_out_);
}

void Connection::logAccess(uint64_t now_us) {
  LogWriter* log = worker_->accessLog();
  if (log == nullptr || !log->enabled()) return;  // access = "": nothing to format
  AccessRecord r;
  if (now_us == 0) now_us = nowUs();
  r.ts_unix_us = worker_->wallClockUs(now_us);
  r.request_id = ctx_.request_id;
  r.remote_ip = ctx_.remote_ip;
  r.peer_ip = peer_ip_;  // written only when it differs: behind trusted proxies
  r.method = req_.method_name;
  r.path = req_.path;
  r.status = status_;
  r.bytes_in = req_bytes_in_;
  r.bytes_out = resp_bytes_out_;
  r.duration_us = now_us - ctx_.start_us;
  if (upstream_status_ != 0 && ctx_.route != nullptr) r.upstream = snap_->config->upstreams[ctx_.route->upstream_index].name;
  r.upstream_status = upstream_status_;
  r.token_id = ctx_.token_id;
  r.account = ctx_.account;
  r.tls_version = ctx_.tls_version;
  r.rejected_by = ctx_.rejected_by;
  r.reason = ctx_.reason;
  // The log thread formats the JSON line; this loop only copies the fields,
  // into the worker's stage (handed over once per loop iteration).
  LogWriter::Stage& stage = worker_->accessStage();
  packAccessRecord(r, stage.begin());
  stage.end();
}

// True when the client may have sent, or still be sending, bytes this
// connection will not read: the request was not read to its end, bytes
// wait unparsed, or the kernel holds unread input.
bool Connection::mayStillSend() const {
  if (client_eof_) return false;
  if (req_state_ != ReqState::kDone || rbuf_.unparsed() > 0 || (tls_ && tls_->hasBufferedInput())) return true;
  uv_os_fd_t fd;
  int pending = 0;
  return uv_fileno(reinterpret_cast<const uv_handle_t*>(&tcp_), &fd) == 0 && ioctl(fd, FIONREAD, &pending) == 0 &&
         pending > 0;
}

// Lingering close (RFC 9112 section 9.6). Closing a socket whose input was
// not all read makes the kernel send RST instead of FIN, and a client still
// sending (a refused upload, a slow or pipelined request) may then lose the
// response it has not read yet (many TCP stacks drop received data on RST).
// So the proxy half-closes (FIN after the response) and reads and discards
// what comes until the client closes, kLingerIdleMs pass without input or
// kLingerMaxMs in all; the request's state is released at once as by
// close(), and close() during the linger (drain, shutdown) ends it.
void Connection::lingerClose() {
  if (closing_) return;
  closing_ = true;
  sendCloseNotify();
  releaseState();
  linger_end_us_ = nowUs() + kLingerMaxMs * 1000;
  shutdown_req_.data = this;
  if (uv_shutdown(&shutdown_req_, reinterpret_cast<uv_stream_t*>(&tcp_), &Connection::onLingerShutdown) != 0 ||
      uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp_), &Connection::onLingerAlloc, &Connection::onLingerRead) !=
          0) {
    closeHandles();
    return;
  }
  uv_timer_start(&timer_, &Connection::onLingerTimer, kLingerIdleMs, 0);
}

void Connection::onLingerShutdown(uv_shutdown_t* req, int status) {
  auto* c = static_cast<Connection*>(req->data);
  if (status != 0) c->closeHandles();  // also UV_ECANCELED from closeHandles() itself: a no-op then
}

void Connection::onLingerAlloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* c = static_cast<Connection*>(h->data);
  buf->base = c->worker_->tlsScratch();  // discarded at once
  buf->len = Worker::kTlsScratchSize;
}

void Connection::onLingerRead(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* c = static_cast<Connection*>(s->data);
  if (nread == 0) return;
  const uint64_t now = nowUs();
  if (nread < 0 || now >= c->linger_end_us_) {
    c->closeHandles();  // EOF (the client closed), an error, or lingered long enough
    return;
  }
  const uint64_t left_ms = (c->linger_end_us_ - now + 999) / 1000;
  uv_timer_start(&c->timer_, &Connection::onLingerTimer, std::min<uint64_t>(kLingerIdleMs, left_ms), 0);
}

void Connection::onLingerTimer(uv_timer_t* t) { static_cast<Connection*>(t->data)->closeHandles(); }

void Connection::close() {
  if (closing_) {
    closeHandles();  // ends a lingering close (no-op once the handles close)
    return;
  }
  closing_ = true;
  sendCloseNotify();
  releaseState();
  closeHandles();
}

// A response that broke off after part of it went out: the client must see
// the connection fail, not end. An orderly end (FIN, or close_notify over
// TLS) would make a close-delimited body (HTTP/1.0 clients, a backend
// response without a length) look complete; a reset (RST, no close_notify)
// never does (RFC 9112 section 8).
void Connection::abortClient() {
  if (closing_) {
    closeHandles();
    return;
  }
  closing_ = true;
  reset_on_close_ = true;
  releaseState();
  closeHandles();
}

// TLS: the close_notify alert before the write side closes (RFC 8446
// section 6.1; it tells a client reading to the end of the connection that
// nothing was cut off). Only when the socket takes it at once: a connection
// being closed does not wait for it, and none is sent while other
// ciphertext is still queued or after a fatal alert.
void Connection::sendCloseNotify() {
  if (!tls_ || tls_write_pending_ || tls_->pendingCiphertext() > 0 || !tls_->closeNotify()) return;
  char alert[64];
  const size_t n = tls_->takeCiphertext(alert, sizeof alert);
  uv_buf_t b = uv_buf_init(alert, static_cast<unsigned>(n));
  (void)uv_try_write(reinterpret_cast<uv_stream_t*>(&tcp_), &b, 1);
}

// What close() and lingerClose() release of the connection besides its
// handles.
void Connection::releaseState() {
  if (ws_ == WsState::kTunnel) tunnelClosed();
  if (up_ != nullptr) releaseUpstream(false);
  // A request cut short (the client went away mid-reply) still counts for
  // the audit log and the detector once its chain had started.
  if (chain_.active()) reportSecurity();
  chain_.complete(ctx_);
  unpinSnapshot();
  timer_deadline_.stop(&timer_);
  if (reading_) uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp_));
  reading_ = false;
  worker_->buffers().release(rbuf_);
  worker_->buffers().release(tls_out_);
  if (!address_key_.empty()) {
    worker_->releaseClientAddress(address_key_);
    address_key_.clear();
  }
}

void Connection::closeHandles() {
  if (handles_closing_) return;
  handles_closing_ = true;
  if (handles_open_ >= 1 && !(reset_on_close_ && uv_tcp_close_reset(&tcp_, &Connection::onClosed) == 0)) {
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), &Connection::onClosed);
  }
  if (handles_open_ >= 2) uv_close(reinterpret_cast<uv_handle_t*>(&timer_), &Connection::onClosed);
}

void Connection::onClosed(uv_handle_t* h) {
  auto* c = static_cast<Connection*>(h->data);
  if (--c->handles_open_ == 0) c->worker_->connectionClosed(c);
}

}  // namespace portcullis
