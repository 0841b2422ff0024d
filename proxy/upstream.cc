#include "proxy/upstream.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cstring>

#include "proxy/connection.h"
#include "proxy/worker.h"

namespace portcullis {

// ---------------------------------------------------------------------------
// UpstreamConn

UpstreamConn::UpstreamConn(std::shared_ptr<UpstreamPool> p, size_t s)
    : codec(HTTP_RESPONSE, CodecLimits{65536, 65536, 1000}), pool(std::move(p)), server(s) {
  uv_loop_t* loop = pool->worker()->loop();
  uv_tcp_init(loop, &tcp);
  uv_timer_init(loop, &timer);
  tcp.data = this;
  timer.data = this;
  connect_req.data = this;
  write_req.data = this;
  handles_open_ = 2;
}

UpstreamConn::~UpstreamConn() = default;

int UpstreamConn::connect(const sockaddr* addr) {
  state = State::kConnecting;
  return uv_tcp_connect(&connect_req, &tcp, addr,
                        [](uv_connect_t* req, int status) { static_cast<UpstreamConn*>(req->data)->onConnected(status); });
}

void UpstreamConn::onConnected(int status) {
  if (state == State::kClosing) return;
  if (owner == nullptr) {
    close();
    return;
  }
  if (status != 0) {
    owner->onUpstreamConnected(status);
    return;
  }
  uv_tcp_nodelay(&tcp, 1);
  if (pool->tls() == nullptr) {
    state = State::kActive;
    owner->onUpstreamConnected(0);
    return;
  }
  // TLS: the owner hears of the connection once the handshake and the
  // certificate check passed. Sessions the server issues are kept by the
  // pool for the next connection to this server.
  session_target_.sink = [](void* arg, SSL_SESSION* session) {
    auto* u = static_cast<UpstreamConn*>(arg);
    u->pool->storeSession(u->server, session);
  };
  session_target_.arg = this;
  tls_ = std::make_unique<TlsSession>(*pool->tls(), pool->serverAddress(server).host, pool->session(server),
                                      &session_target_);
  startReading();
  tlsHandshakeStep();
}

void UpstreamConn::tlsHandshakeStep() {
  const TlsSession::Result r = tls_->handshake();
  if (flushCiphertext() < 0) {
    tlsFailed("write_failed");
    return;
  }
  if (r == TlsSession::Result::kWantRead) return;
  if (r != TlsSession::Result::kOk) {
    tlsFailed(tls_->failureReason());
    return;
  }
  WorkerMetrics& m = pool->worker()->metrics();
  (tls_->resumed() ? m.upstream_tls_resumed : m.upstream_tls_full).inc();
  state = State::kActive;
  if (owner != nullptr) {
    owner->onUpstreamConnected(0);
  } else {
    close();
  }
}

void UpstreamConn::tlsFailed(const char* reason) {
  stopReading();
  tls_failure = reason;
  pool->worker()->metrics().tls_failure_reasons.incLowerCase("upstream", reason);
  if (owner != nullptr) {
    owner->onUpstreamConnected(UV_EPROTO);
  } else {
    close();
  }
}

void UpstreamConn::startReading() {
  if (state == State::kClosing) return;
  if (!reading_) {
    reading_ = true;
    uv_read_start(
        reinterpret_cast<uv_stream_t*>(&tcp),
        [](uv_handle_t* h, size_t, uv_buf_t* buf) {
          auto* u = static_cast<UpstreamConn*>(h->data);
          if (u->tls_) {
            // Ciphertext goes through the worker's scratch into the engine.
            buf->base = u->pool->worker()->tlsScratch();
            buf->len = Worker::kTlsScratchSize;
          } else {
            u->pool->worker()->buffers().acquire(u->rbuf);
            buf->base = u->rbuf.data + u->rbuf.end;
            buf->len = u->rbuf.room();
          }
          u->last_read_room_ = buf->len;
        },
        [](uv_stream_t* s, ssize_t nread, const uv_buf_t*) { static_cast<UpstreamConn*>(s->data)->onTcpRead(nread); });
  }
  if (tls_ && state == State::kActive && owner != nullptr && tls_->hasBufferedInput()) deliverTls();
}

void UpstreamConn::onTcpRead(ssize_t nread) {
  last_read_full = nread > 0 && static_cast<size_t>(nread) == last_read_room_;
  if (state == State::kIdle || owner == nullptr) {
    // An idle pooled connection must stay silent; EOF, an error or stray
    // bytes all mean it cannot be used again. Over TLS, records that carry
    // no data (a late session ticket) are fine.
    if (nread > 0 && tls_ && state == State::kIdle) {
      tls_->pushCiphertext(pool->worker()->tlsScratch(), static_cast<size_t>(nread));
      if (tlsQuiet()) return;
    }
    if (nread != 0) pool->dropIdle(this);
    return;
  }
  if (nread == 0) return;
  if (nread == UV_ENOBUFS) {
    // Buffer full: the owner stops reading until it drains it.
    stopReading();
    return;
  }
  if (nread < 0) {
    stopReading();
    if (state == State::kConnecting) {
      tlsFailed(nread == UV_EOF ? "closed_during_handshake" : "reset_during_handshake");
      return;
    }
    owner->onUpstreamRead(nread);
    return;
  }
  if (!tls_) {
    owner->onUpstreamRead(nread);
    return;
  }
  tls_->pushCiphertext(pool->worker()->tlsScratch(), static_cast<size_t>(nread));
  if (state == State::kConnecting) {
    tlsHandshakeStep();
    return;  // the owner's startReading() delivers anything that came along
  }
  deliverTls();
}

bool UpstreamConn::tlsQuiet() {
  char scratch[64];
  size_t n = 0;
  const TlsSession::Result r = tls_->readPlaintext(scratch, sizeof(scratch), n);
  return r == TlsSession::Result::kWantRead && tls_->pendingCiphertext() == 0;
}

// Decrypts what the engine holds into rbuf and hands it to the owner, until
// the engine needs more ciphertext, rbuf is full (socket reading stops until
// the owner calls startReading() again) or the owner stops reading. Nested
// calls (the owner restarting reading from inside onUpstreamRead) only ask
// the outer loop for another round.
void UpstreamConn::deliverTls() {
  if (delivering_) {
    redeliver_ = true;
    return;
  }
  delivering_ = true;
  do {
    redeliver_ = false;
    if (!reading_ || owner == nullptr || state != State::kActive) break;
    pool->worker()->buffers().acquire(rbuf);
    size_t got = 0;
    TlsSession::Result r = TlsSession::Result::kWantRead;
    while (rbuf.end + got < rbuf.cap) {
      size_t n = 0;
      r = tls_->readPlaintext(rbuf.data + rbuf.end + got, rbuf.cap - rbuf.end - got, n);
      if (r != TlsSession::Result::kOk) break;
      got += n;
    }
    if (flushCiphertext() < 0) r = TlsSession::Result::kError;
    if (got > 0) owner->onUpstreamRead(static_cast<ssize_t>(got));
    if (state == State::kClosing) break;
    if (r == TlsSession::Result::kClosed || r == TlsSession::Result::kError) {
      if (state == State::kIdle) {
        pool->dropIdle(this);
      } else if (owner != nullptr) {
        stopReading();
        owner->onUpstreamRead(r == TlsSession::Result::kClosed ? UV_EOF : UV_EPROTO);
      }
      break;
    }
    if (owner != nullptr && rbuf.held() && rbuf.room() == 0) {
      // The engine keeps the rest; the socket waits until rbuf drains.
      stopReading();
      break;
    }
  } while (redeliver_);
  delivering_ = false;
}

void UpstreamConn::stopReading() {
  if (state == State::kClosing || !reading_) return;
  reading_ = false;
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp));
}

void UpstreamConn::releaseBuffer() { pool->worker()->buffers().release(rbuf); }

uint32_t UpstreamConn::packetSize() {
  // The kernel's MSS follows the connection (options in use, and at most
  // half the largest window the peer has offered): on loopback it went
  // 32768 -> 47616 -> 65483 within an upload's first MiB. A value a few
  // writes old only makes an alignment less exact, never a write wrong.
  if (packet_size_calls_++ % kPacketSizeEvery != 0) return packet_size_;
  uv_os_fd_t fd;
  int v = 0;
  socklen_t len = sizeof v;
  packet_size_ = 0;
  if (tls_ == nullptr && uv_fileno(reinterpret_cast<uv_handle_t*>(&tcp), &fd) == 0 &&
      getsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &v, &len) == 0 && v > 0) {
    packet_size_ = static_cast<uint32_t>(v);
  }
  return packet_size_;
}

int UpstreamConn::write(uv_buf_t* bufs, unsigned n) {
  if (!tls_) {
    const int rc = writeOrQueue(reinterpret_cast<uv_stream_t*>(&tcp), &write_req, bufs, n, [](uv_write_t* req, int status) {
      auto* u = static_cast<UpstreamConn*>(req->data);
      u->write_pending = false;
      if (u->owner != nullptr) u->owner->onUpstreamWritten(status);
    });
    if (rc == 1) {
      write_req.data = this;
      write_pending = true;
    }
    return rc;
  }
  // The records of one write() stay in the engine until the socket took
  // them: the owner does not write again before onUpstreamWritten().
  for (unsigned i = 0; i < n; ++i) {
    if (!tls_->writePlaintext(bufs[i].base, bufs[i].len)) return UV_EPROTO;
  }
  const int rc = flushCiphertext();
  if (rc == 1) {
    owner_waits_write_ = true;
    write_pending = true;
  }
  return rc;
}

// Sends the engine's ciphertext through tls_out_, one pooled buffer at a
// time. 0 = all sent, 1 = a write is in flight (onCiphertextWritten goes on),
// < 0 = socket error.
int UpstreamConn::flushCiphertext() {
  if (cipher_write_pending_) return 1;
  while (tls_->pendingCiphertext() > 0) {
    pool->worker()->buffers().acquire(tls_out_);
    size_t tail = 0;
    const size_t n = tls_->takeCiphertextForWrite(tls_out_.data, tls_out_.cap, tls_tail_, tail);
    uv_buf_t b[2] = {uv_buf_init(tls_out_.data, static_cast<unsigned>(n)),
                     uv_buf_init(tls_tail_.get(), static_cast<unsigned>(tail))};
    const int rc = writeOrQueue(reinterpret_cast<uv_stream_t*>(&tcp), &write_req, b, tail > 0 ? 2 : 1,
                                &UpstreamConn::onCiphertextWritten);
    if (rc < 0) {
      pool->worker()->buffers().release(tls_out_);
      return rc;
    }
    if (rc == 1) {
      write_req.data = this;
      cipher_write_pending_ = true;
      return 1;
    }
  }
  pool->worker()->buffers().release(tls_out_);
  return 0;
}

void UpstreamConn::onCiphertextWritten(uv_write_t* req, int status) {
  auto* u = static_cast<UpstreamConn*>(req->data);
  u->cipher_write_pending_ = false;
  if (u->state == State::kClosing) return;
  const int rc = status != 0 ? status : u->flushCiphertext();
  if (rc == 1) return;
  if (u->owner_waits_write_) {
    u->owner_waits_write_ = false;
    u->write_pending = false;
    if (u->owner != nullptr) u->owner->onUpstreamWritten(rc);
    return;
  }
  if (rc == 0) return;
  // A handshake flight or an engine-initiated record could not be sent.
  if (u->state == State::kConnecting) {
    u->tlsFailed("write_failed");
  } else if (u->state == State::kIdle || u->owner == nullptr) {
    u->pool->dropIdle(u);
  } else {
    u->stopReading();
    u->owner->onUpstreamRead(rc);
  }
}

void UpstreamConn::close() {
  if (state == State::kClosing) return;
  state = State::kClosing;
  owner = nullptr;
  releaseBuffer();
  pool->worker()->buffers().release(tls_out_);
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp), &UpstreamConn::onClose);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer), &UpstreamConn::onClose);
}

void UpstreamConn::onClose(uv_handle_t* h) {
  auto* u = static_cast<UpstreamConn*>(h->data);
  if (--u->handles_open_ == 0) delete u;
}

// ---------------------------------------------------------------------------
// UpstreamPool

UpstreamPool::UpstreamPool(Worker* worker, const UpstreamConfig& config, std::vector<HealthTable::Entry*> health)
    : worker_(worker), config_(config) {
  servers_.resize(config.servers.size());
  for (size_t i = 0; i < servers_.size(); ++i) {
    Server& s = servers_[i];
    s.addr = config.servers[i];
    s.health = i < health.size() ? health[i] : nullptr;
    std::memset(&s.sa, 0, sizeof(s.sa));
    if (s.addr.host.find(':') != std::string::npos) {
      uv_ip6_addr(s.addr.host.c_str(), s.addr.port, reinterpret_cast<sockaddr_in6*>(&s.sa));
    } else {
      uv_ip4_addr(s.addr.host.c_str(), s.addr.port, reinterpret_cast<sockaddr_in*>(&s.sa));
    }
  }
}

UpstreamPool::~UpstreamPool() = default;

bool UpstreamPool::usable(const Server& s, uint64_t now) const {
  if (s.health != nullptr && !s.health->healthy.load(std::memory_order_relaxed)) return false;
  return s.down_until_us <= now;
}

UpstreamConn* UpstreamPool::acquire(bool fresh, UpstreamError& err) {
  // The clock is read only while some server is taken out (with none,
  // usable() holds for now = 0): one clock read less per request. A server
  // whose time is up is back for good (down_until_us = 0).
  uint64_t now = 0;
  for (Server& s : servers_) {
    if (s.down_until_us == 0) continue;
    if (now == 0) now = nowUs();
    if (s.down_until_us <= now) s.down_until_us = 0;
  }
  const size_t n = servers_.size();
  size_t pick = n;
  if (config_.lb == LbPolicy::kLeastRequest) {
    // Fewest requests in flight on this worker; ties broken round robin.
    uint32_t best = UINT32_MAX;
    for (size_t k = 0; k < n; ++k) {
      size_t i = (rr_next_ + k) % n;
      if (!usable(servers_[i], now)) continue;
      if (servers_[i].active < best) {
        best = servers_[i].active;
        pick = i;
      }
    }
    rr_next_ = (rr_next_ + 1) % n;
  } else {
    for (size_t k = 0; k < n; ++k) {
      size_t i = (rr_next_ + k) % n;
      if (usable(servers_[i], now)) {
        pick = i;
        rr_next_ = (i + 1) % n;
        break;
      }
    }
  }
  if (pick == n) {
    // No healthy server. A server only passively marked down (not by the
    // health checker) is still tried rather than failing every request.
    for (size_t k = 0; k < n; ++k) {
      size_t i = (rr_next_ + k) % n;
      const Server& s = servers_[i];
      if (s.health == nullptr || s.health->healthy.load(std::memory_order_relaxed)) {
        pick = i;
        rr_next_ = (i + 1) % n;
        break;
      }
    }
  }
  if (pick == n) {
    err = UpstreamError::kNoHealthyServer;
    return nullptr;
  }
  Server& s = servers_[pick];
  if (!fresh) {
    while (!s.idle.empty()) {
      UpstreamConn* c = s.idle.back();
      s.idle.pop_back();
      if (c->state != UpstreamConn::State::kIdle) continue;
      // Reading stays on (toggling it costs an epoll_ctl per request): bytes
      // arriving before the request is sent are an upstream protocol error.
      c->state = UpstreamConn::State::kActive;
      c->reused = true;
      s.active++;
      return c;
    }
  }
  auto* c = new UpstreamConn(shared_from_this(), pick);
  int rc = c->connect(reinterpret_cast<const sockaddr*>(&s.sa));
  if (rc != 0) {
    c->close();
    markFailed(pick);
    err = UpstreamError::kConnectFailed;
    return nullptr;
  }
  s.active++;
  return c;
}

void UpstreamPool::release(UpstreamConn* c, bool reusable) {
  Server& s = servers_[c->server];
  if (s.active > 0) s.active--;
  c->owner = nullptr;
  // Over TLS, records still in the engine must carry no data (e.g. only a
  // session ticket); bytes after a response make a connection unusable.
  if (!reusable || retired_ || c->state != UpstreamConn::State::kActive || s.idle.size() >= config_.max_idle_per_server ||
      (c->isTls() && !c->tlsQuiet())) {
    c->close();
    return;
  }
  c->state = UpstreamConn::State::kIdle;
  c->reused = false;
  c->timer_deadline.clear();
  if (c->rbuf.unparsed() == 0) c->releaseBuffer();
  s.idle.push_back(c);
  c->startReading();  // to notice a close by the server while idle
}

void UpstreamPool::dropIdle(UpstreamConn* c) {
  Server& s = servers_[c->server];
  for (size_t i = 0; i < s.idle.size(); ++i) {
    if (s.idle[i] == c) {
      s.idle.erase(s.idle.begin() + static_cast<long>(i));
      break;
    }
  }
  c->close();
}

void UpstreamPool::setTunables(const UpstreamConfig& other) {
  config_.max_idle_per_server = other.max_idle_per_server;
  config_.fail_timeout_ms = other.fail_timeout_ms;
  config_.health_check = other.health_check;
  for (Server& s : servers_) {
    while (s.idle.size() > config_.max_idle_per_server) {
      s.idle.front()->close();  // the longest idle
      s.idle.erase(s.idle.begin());
    }
  }
}

void UpstreamPool::markFailed(size_t server) {
  servers_[server].down_until_us = nowUs() + static_cast<uint64_t>(config_.fail_timeout_ms) * 1000u;
}

void UpstreamPool::retire() {
  retired_ = true;
  for (Server& s : servers_) {
    for (UpstreamConn* c : s.idle) c->close();
    s.idle.clear();
  }
}

bool UpstreamPool::sameServers(const UpstreamConfig& other) const {
  if (other.servers.size() != config_.servers.size() || other.lb != config_.lb) return false;
  for (size_t i = 0; i < other.servers.size(); ++i) {
    if (other.servers[i].host != config_.servers[i].host || other.servers[i].port != config_.servers[i].port) return false;
  }
  // Pooled connections were made (and verified) under these TLS settings.
  return other.tls == config_.tls && other.sni == config_.sni && other.verify == config_.verify && other.ca == config_.ca;
}

}  // namespace portcullis
