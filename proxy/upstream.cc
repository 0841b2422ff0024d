#include "proxy/upstream.h"

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
  return uv_tcp_connect(&connect_req, &tcp, addr, [](uv_connect_t* req, int status) {
    auto* u = static_cast<UpstreamConn*>(req->data);
    if (u->state == State::kClosing) return;
    if (status == 0) {
      u->state = State::kActive;
      uv_tcp_nodelay(&u->tcp, 1);
    }
    if (u->owner != nullptr) {
      u->owner->onUpstreamConnected(status);
    } else {
      u->close();
    }
  });
}

void UpstreamConn::startReading() {
  if (state == State::kClosing || reading_) return;
  reading_ = true;
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&tcp),
      [](uv_handle_t* h, size_t, uv_buf_t* buf) {
        auto* u = static_cast<UpstreamConn*>(h->data);
        u->pool->worker()->buffers().acquire(u->rbuf);
        buf->base = u->rbuf.data + u->rbuf.end;
        buf->len = u->rbuf.room();
      },
      [](uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
        auto* u = static_cast<UpstreamConn*>(s->data);
        if (u->state == State::kIdle || u->owner == nullptr) {
          // An idle pooled connection must stay silent; EOF, an error or
          // stray bytes all mean it cannot be used again.
          if (nread != 0) u->pool->dropIdle(u);
          return;
        }
        if (nread == UV_ENOBUFS) {
          // Buffer full: the owner stops reading until it drains it.
          u->stopReading();
          return;
        }
        if (nread < 0) u->stopReading();
        u->owner->onUpstreamRead(nread);
      });
}

void UpstreamConn::stopReading() {
  if (state == State::kClosing || !reading_) return;
  reading_ = false;
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp));
}

void UpstreamConn::releaseBuffer() { pool->worker()->buffers().release(rbuf); }

void UpstreamConn::close() {
  if (state == State::kClosing) return;
  state = State::kClosing;
  owner = nullptr;
  releaseBuffer();
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
  const uint64_t now = nowUs();
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
  if (!reusable || retired_ || c->state != UpstreamConn::State::kActive || s.idle.size() >= config_.max_idle_per_server) {
    c->close();
    return;
  }
  c->state = UpstreamConn::State::kIdle;
  c->reused = false;
  uv_timer_stop(&c->timer);
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
  return true;
}

}  // namespace portcullis
