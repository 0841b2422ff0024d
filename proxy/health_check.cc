// Active health checks. Each checked server is a Target with two timers (the
// probe interval and the per-probe timeout) and at most one Probe in flight. A
// Probe owns its own TCP handle because a libuv handle cannot be reused after
// uv_close(). Removal never frees anything directly: it closes the handles and
// the close callbacks free the memory, so a Target or Probe outlives every
// callback libuv may still deliver for it. A detached Probe (its Target was
// removed or the checker stopped) ignores every callback but the close.
#include "proxy/health_check.h"

#include <sys/socket.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/tls.h"

namespace portcullis {

namespace {

constexpr size_t kMaxResponseBytes = 1024;

struct Probe {
  HealthChecker::Target* owner = nullptr;  // null once detached
  bool done = false;
  bool tcp_open = false;
  uv_tcp_t tcp;
  uv_connect_t connect;
  uv_write_t write;
  std::string request;
  size_t len = 0;
  char buf[kMaxResponseBytes];
  // TLS (the upstream has tls = true): the session, the ciphertext read
  // buffer, and the ciphertext handed to uv_write (kept until the probe ends).
  std::shared_ptr<const UpstreamTlsContext> tls_ctx;
  std::string ip;
  std::unique_ptr<TlsSession> tls;
  bool request_sent = false;
  char cipher_in[4096];
  std::vector<std::unique_ptr<std::string>> cipher_out;
};

void logChange(const HealthTable::Entry* e, bool healthy, const std::string& reason) {
  std::string line = "portcullis: upstream " + e->key + (healthy ? " is now healthy (" : " is now unhealthy (") +
                     reason + ")\n";
  (void)std::fwrite(line.data(), 1, line.size(), stderr);  // a lost line on stderr leaves nothing to do
}

std::string uvError(const char* what, int rc) { return std::string(what) + ": " + uv_strerror(rc); }

}  // namespace

struct HealthChecker::Target {
  std::atomic<uint64_t>* probes = nullptr;  // the checker's counter
  HealthTable::Entry* entry = nullptr;
  sockaddr_storage addr{};
  bool addr_ok = false;
  std::shared_ptr<const UpstreamTlsContext> tls;  // null = plaintext probes
  std::string ip;
  std::string request;
  uint32_t interval_ms = 0;
  uint32_t timeout_ms = 0;
  uint32_t unhealthy_threshold = 1;
  uint32_t healthy_threshold = 1;
  uint32_t failures = 0;   // consecutive
  uint32_t successes = 0;  // consecutive
  uv_timer_t interval;
  uv_timer_t timeout;
  Probe* probe = nullptr;
  int open_handles = 0;
};

namespace {

using Target = HealthChecker::Target;

void releaseProbe(Probe* p) {
  if (!p->tcp_open) {
    delete p;
    return;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&p->tcp),
           [](uv_handle_t* h) { delete static_cast<Probe*>(h->data); });
}

void record(Target* t, bool ok, const std::string& reason) {
  HealthTable::Entry* e = t->entry;
  if (ok) {
    t->failures = 0;
    if (t->successes < UINT32_MAX) ++t->successes;
    if (!e->healthy.load(std::memory_order_relaxed) && t->successes >= t->healthy_threshold) {
      e->healthy.store(true, std::memory_order_release);
      logChange(e, true,
                reason + "; " + std::to_string(t->successes) +
                    (t->successes == 1 ? " consecutive success" : " consecutive successes"));
    }
  } else {
    t->successes = 0;
    if (t->failures < UINT32_MAX) ++t->failures;
    if (e->healthy.load(std::memory_order_relaxed) && t->failures >= t->unhealthy_threshold) {
      e->healthy.store(false, std::memory_order_release);
      logChange(e, false,
                reason + "; " + std::to_string(t->failures) +
                    (t->failures == 1 ? " consecutive failure" : " consecutive failures"));
    }
  }
}

// Ends the probe with a result: closes it, stops the timeout and counts it.
void finishProbe(Probe* p, bool ok, const std::string& reason) {
  if (p->done) return;
  p->done = true;
  Target* t = p->owner;
  p->owner = nullptr;
  releaseProbe(p);
  if (t == nullptr) return;
  t->probe = nullptr;
  uv_timer_stop(&t->timeout);
  t->probes->fetch_add(1, std::memory_order_relaxed);
  record(t, ok, reason);
}

// Returns true once the response decided the probe (and finished it).
bool evaluate(Probe* p, bool eof) {
  std::string_view data(p->buf, p->len);
  static constexpr std::string_view kPrefix = "HTTP/1.";
  const size_t n = std::min(data.size(), kPrefix.size());
  if (data.substr(0, n) != kPrefix.substr(0, n)) {  // reject garbage without waiting for a line end
    finishProbe(p, false, "malformed status line");
    return true;
  }
  size_t nl = data.find('\n');
  if (nl == std::string_view::npos) {
    if (eof) {
      finishProbe(p, false, "closed before status line");
      return true;
    }
    if (p->len == sizeof(p->buf)) {
      finishProbe(p, false, "no status line in the first 1024 bytes");
      return true;
    }
    return false;
  }
  std::string_view line = data.substr(0, nl);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  // "HTTP/1.x SSS" followed by the end of the line or " reason".
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  if (line.size() < 12 || !digit(line[7]) || line[8] != ' ' || !digit(line[9]) || !digit(line[10]) ||
      !digit(line[11]) || (line.size() > 12 && line[12] != ' ')) {
    finishProbe(p, false, "malformed status line");
    return true;
  }
  int status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
  finishProbe(p, status >= 200 && status < 400, "status " + std::to_string(status));
  return true;
}

void onWrite(uv_write_t* req, int status);

// TLS probes: sends what the engine produced. False (probe finished) on error.
bool flushTls(Probe* p) {
  while (p->tls->pendingCiphertext() > 0) {
    auto chunk = std::make_unique<std::string>(p->tls->pendingCiphertext(), '\0');
    chunk->resize(p->tls->takeCiphertext(chunk->data(), chunk->size()));
    auto* req = new uv_write_t;
    uv_buf_t b = uv_buf_init(chunk->data(), static_cast<unsigned>(chunk->size()));
    p->cipher_out.push_back(std::move(chunk));
    const int rc = uv_write(req, reinterpret_cast<uv_stream_t*>(&p->tcp), &b, 1, [](uv_write_t* r, int status) {
      if (status == 0 || status == UV_ECANCELED) {
        delete r;
        return;
      }
      onWrite(r, status);
      delete r;
    });
    if (rc < 0) {
      delete req;
      finishProbe(p, false, uvError("write", rc));
      return false;
    }
  }
  return true;
}

// TLS probes: handshake (certificate verified like the data path's), then
// the request, then the decrypted response into p->buf.
void stepTls(Probe* p, bool eof) {
  if (!p->tls->handshakeDone()) {
    const TlsSession::Result r = p->tls->handshake();
    if (!flushTls(p)) return;
    if (r == TlsSession::Result::kError) {
      finishProbe(p, false, std::string("tls: ") + p->tls->failureReason());
      return;
    }
    if (r == TlsSession::Result::kWantRead) {
      if (eof) finishProbe(p, false, "tls: closed during handshake");
      return;
    }
  }
  if (!p->request_sent) {
    p->request_sent = true;
    if (!p->tls->writePlaintext(p->request.data(), p->request.size())) {
      finishProbe(p, false, "tls: write failed");
      return;
    }
    if (!flushTls(p)) return;
  }
  for (;;) {
    size_t n = 0;
    const TlsSession::Result r = p->tls->readPlaintext(p->buf + p->len, sizeof(p->buf) - p->len, n);
    if (r == TlsSession::Result::kOk) {
      p->len += n;
      if (evaluate(p, false)) return;
      continue;
    }
    if (r == TlsSession::Result::kError) {
      finishProbe(p, false, std::string("tls: ") + p->tls->failureReason());
      return;
    }
    if (r == TlsSession::Result::kClosed || eof) evaluate(p, true);
    return;
  }
}

void onAlloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* p = static_cast<Probe*>(h->data);
  if (p->tls) {
    *buf = uv_buf_init(p->cipher_in, sizeof(p->cipher_in));
    return;
  }
  *buf = uv_buf_init(p->buf + p->len, static_cast<unsigned>(sizeof(p->buf) - p->len));
}

void onRead(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* p = static_cast<Probe*>(s->data);
  if (p->done) return;
  if (p->tls && nread > 0) {
    p->tls->pushCiphertext(p->cipher_in, static_cast<size_t>(nread));
    stepTls(p, false);
    return;
  }
  if (p->tls && nread == UV_EOF) {
    stepTls(p, true);
    return;
  }
  if (nread == UV_EOF) {
    evaluate(p, true);
  } else if (nread < 0) {
    finishProbe(p, false, uvError("read", static_cast<int>(nread)));
  } else if (nread > 0) {
    p->len += static_cast<size_t>(nread);
    evaluate(p, false);
  }
}

void onWrite(uv_write_t* req, int status) {
  auto* p = static_cast<Probe*>(req->handle->data);
  if (p->done || status == 0) return;
  finishProbe(p, false, uvError("write", status));
}

void onConnect(uv_connect_t* req, int status) {
  auto* p = static_cast<Probe*>(req->handle->data);
  if (p->done) return;
  if (status < 0) {
    finishProbe(p, false, uvError("connect", status));
    return;
  }
  if (p->tls_ctx) {
    p->tls = std::make_unique<TlsSession>(*p->tls_ctx, p->ip, nullptr, nullptr);
    const int rc = uv_read_start(reinterpret_cast<uv_stream_t*>(&p->tcp), onAlloc, onRead);
    if (rc < 0) {
      finishProbe(p, false, uvError("read", rc));
      return;
    }
    stepTls(p, false);
    return;
  }
  uv_buf_t b = uv_buf_init(p->request.data(), static_cast<unsigned>(p->request.size()));
  auto* stream = reinterpret_cast<uv_stream_t*>(&p->tcp);
  int rc = uv_write(&p->write, stream, &b, 1, onWrite);
  if (rc < 0) {
    finishProbe(p, false, uvError("write", rc));
    return;
  }
  rc = uv_read_start(stream, onAlloc, onRead);
  if (rc < 0) finishProbe(p, false, uvError("read", rc));
}

void startProbe(Target* t) {
  if (t->probe != nullptr) return;  // the previous probe is still running
  auto* p = new Probe;
  p->owner = t;
  p->request = t->request;
  p->tls_ctx = t->tls;
  p->ip = t->ip;
  t->probe = p;
  uv_timer_start(&t->timeout, [](uv_timer_t* h) {
    auto* tt = static_cast<Target*>(h->data);
    if (tt->probe != nullptr) finishProbe(tt->probe, false, "timeout after " + std::to_string(tt->timeout_ms) + " ms");
  }, t->timeout_ms, 0);
  if (!t->addr_ok) {
    finishProbe(p, false, "invalid address");
    return;
  }
  int rc = uv_tcp_init(t->interval.loop, &p->tcp);
  if (rc < 0) {
    finishProbe(p, false, uvError("socket", rc));
    return;
  }
  p->tcp.data = p;
  p->tcp_open = true;
  rc = uv_tcp_connect(&p->connect, &p->tcp, reinterpret_cast<const sockaddr*>(&t->addr), onConnect);
  if (rc < 0) finishProbe(p, false, uvError("connect", rc));
}

void onInterval(uv_timer_t* h) { startProbe(static_cast<Target*>(h->data)); }

void onTargetHandleClosed(uv_handle_t* h) {
  auto* t = static_cast<Target*>(h->data);
  if (--t->open_handles == 0) delete t;
}

// Copies the settings of `u`/`s` into `t`. Returns true if the interval changed.
bool configure(Target* t, const UpstreamConfig& u, const HostPort& s,
               std::shared_ptr<const UpstreamTlsContext> tls) {
  const HealthCheckConfig& hc = u.health_check;
  t->tls = std::move(tls);
  t->ip = s.host;
  t->addr = {};
  t->addr_ok = uv_ip4_addr(s.host.c_str(), s.port, reinterpret_cast<sockaddr_in*>(&t->addr)) == 0 ||
               uv_ip6_addr(s.host.c_str(), s.port, reinterpret_cast<sockaddr_in6*>(&t->addr)) == 0;
  const std::string host = t->tls && !u.sni.empty() ? u.sni : s.str();
  t->request = "GET " + (hc.path.empty() ? std::string("/") : hc.path) + " HTTP/1.1\r\nHost: " + host +
               "\r\nUser-Agent: portcullis-health\r\nConnection: close\r\n\r\n";
  uint32_t interval = std::max<uint32_t>(hc.interval_ms, 1);
  bool changed = interval != t->interval_ms;
  t->interval_ms = interval;
  t->timeout_ms = std::max<uint32_t>(hc.timeout_ms, 1);
  t->unhealthy_threshold = std::max<uint32_t>(hc.unhealthy_threshold, 1);
  t->healthy_threshold = std::max<uint32_t>(hc.healthy_threshold, 1);
  return changed;
}

void removeTarget(Target* t) {
  if (Probe* p = t->probe) {
    t->probe = nullptr;
    p->done = true;
    p->owner = nullptr;
    releaseProbe(p);
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&t->interval), onTargetHandleClosed);
  uv_close(reinterpret_cast<uv_handle_t*>(&t->timeout), onTargetHandleClosed);
}

}  // namespace

HealthChecker::HealthChecker(uv_loop_t* loop) : loop_(loop) {}

HealthChecker::~HealthChecker() { stop(); }

void HealthChecker::update(const Snapshot& snap) {
  if (stopped_) return;
  std::unordered_map<const HealthTable::Entry*, Target*> next;
  const size_t upstreams = snap.config ? std::min(snap.config->upstreams.size(), snap.health.size()) : 0;
  for (size_t i = 0; i < upstreams; ++i) {
    const UpstreamConfig& u = snap.config->upstreams[i];
    const std::vector<HealthTable::Entry*>& entries = snap.health[i];
    const size_t servers = std::min(u.servers.size(), entries.size());
    std::shared_ptr<const UpstreamTlsContext> tls = i < snap.upstream_tls.size() ? snap.upstream_tls[i] : nullptr;
    for (size_t j = 0; j < servers; ++j) {
      HealthTable::Entry* e = entries[j];
      if (e == nullptr) continue;
      if (!u.health_check.enabled) {
        if (!e->healthy.exchange(true, std::memory_order_acq_rel)) logChange(e, true, "health check disabled");
        continue;
      }
      if (next.count(e) != 0) continue;
      auto it = targets_.find(e);
      if (it != targets_.end()) {
        Target* t = it->second;
        targets_.erase(it);
        if (configure(t, u, u.servers[j], tls)) uv_timer_start(&t->interval, onInterval, t->interval_ms, t->interval_ms);
        next.emplace(e, t);
        continue;
      }
      auto* t = new Target;
      t->probes = &probes_;
      t->entry = e;
      configure(t, u, u.servers[j], tls);
      uv_timer_init(loop_, &t->interval);
      uv_timer_init(loop_, &t->timeout);
      t->interval.data = t;
      t->timeout.data = t;
      t->open_handles = 2;
      next.emplace(e, t);
      uv_timer_start(&t->interval, onInterval, 0, t->interval_ms);
    }
  }
  for (auto& [e, t] : targets_) removeTarget(t);
  targets_ = std::move(next);
}

void HealthChecker::stop() {
  stopped_ = true;
  for (auto& [e, t] : targets_) removeTarget(t);
  targets_.clear();
}

}  // namespace portcullis
