// Upstream side of a worker: a pool of keep-alive connections per [[upstream]],
// server selection (round_robin / least_request), passive failure marking.
// Everything here belongs to one worker thread.
#pragma once

#include <openssl/ssl.h>
#include <uv.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "proxy/config.h"
#include "proxy/http_codec.h"
#include "proxy/io.h"
#include "proxy/lazy_timer.h"
#include "proxy/metrics.h"
#include "proxy/snapshot.h"
#include "proxy/tls.h"

namespace portcullis {

class Connection;
class UpstreamPool;
class Worker;

// One TCP connection to one upstream server. While it serves a request its
// owner (a client Connection) drives it and receives its events; while idle
// it sits in its pool, reading only to notice that the server closed it.
//
// With TLS (the pool's upstream has tls = true) the connection hides the
// TLS layer from its owner: onUpstreamConnected() comes after the handshake
// and the certificate check (UV_EPROTO when either fails), reads deliver
// plaintext into rbuf exactly as plaintext reads do, and write() takes
// plaintext. The engine buffers at most one read of ciphertext beyond rbuf
// (socket reading stops while rbuf is full) and one write() of records.
class UpstreamConn {
 public:
  enum class State : uint8_t { kConnecting, kActive, kIdle, kClosing };

  UpstreamConn(std::shared_ptr<UpstreamPool> pool, size_t server);
  ~UpstreamConn();

  // Starts a non-blocking connect; the owner gets onUpstreamConnected().
  int connect(const sockaddr* addr);
  // Closes the socket and frees this object once libuv is done with it. The
  // owner, if any, is detached first and gets no more events.
  void close();

  // Buffer and parser used by the owner while active.
  uv_tcp_t tcp;
  uv_connect_t connect_req;
  uv_write_t write_req;
  uv_timer_t timer;
  LazyDeadline timer_deadline;  // its timeout (proxy/lazy_timer.h): connect, response
  IoBuffer rbuf;
  HttpCodec codec;

  std::shared_ptr<UpstreamPool> pool;
  size_t server;
  Connection* owner = nullptr;
  State state = State::kConnecting;
  bool reused = false;         // taken from the idle pool for this request
  bool write_pending = false;
  // The last socket read filled its whole buffer: the kernel may hold more
  // (bytes after a response would be taken for the next one's), so the
  // connection must not go back to the pool now.
  bool last_read_full = false;
  uint32_t requests = 0;       // requests served on this connection

  // Starts/stops reading into rbuf (acquired from the worker's pool).
  // With TLS, startReading() first delivers plaintext the engine already
  // holds (owner->onUpstreamRead() may run before it returns).
  void startReading();
  void stopReading();
  void releaseBuffer();

  // Sends `bufs` (the bytes must stay valid until the owner gets
  // onUpstreamWritten(), the array need not). Returns 0 when all was written
  // at once (no callback), 1 when pending (write_pending is set until the
  // owner's onUpstreamWritten()), or a negative libuv error (no callback).
  int write(uv_buf_t* bufs, unsigned n);
  // The socket's MSS (TCP_MAXSEG), 0 over TLS or when unknown: a write of a
  // multiple of it leaves no runt packet behind. Re-read (a getsockopt) on
  // every kPacketSizeEvery-th call, since it follows the connection.
  uint32_t packetSize();

  bool isTls() const { return tls_ != nullptr; }
  // TLS: processes records the engine holds; true when they carried no
  // data, alert or close (the connection may idle in the pool).
  bool tlsQuiet();
  // Why the TLS handshake failed (set before onUpstreamConnected(UV_EPROTO)).
  const char* tls_failure = nullptr;

 private:
  int handles_open_ = 0;
  bool reading_ = false;
  size_t last_read_room_ = 0;  // the buffer length the last read was offered
  // TLS state (null tls_ = plaintext).
  std::unique_ptr<TlsSession> tls_;
  IoBuffer tls_out_;
  std::unique_ptr<char[]> tls_tail_;  // TlsSession::takeCiphertextForWrite
  bool cipher_write_pending_ = false;  // tls_out_ is on the wire
  bool owner_waits_write_ = false;     // a write() returned 1
  bool delivering_ = false;            // deliverTls() is on the stack
  bool redeliver_ = false;             // ... and was asked to run again
  UpstreamTlsContext::SessionTarget session_target_{nullptr, nullptr};
  static constexpr uint32_t kPacketSizeEvery = 8;
  uint32_t packet_size_ = 0;
  uint32_t packet_size_calls_ = 0;

  void onConnected(int status);
  void onTcpRead(ssize_t nread);
  void tlsHandshakeStep();
  void tlsFailed(const char* reason);
  void deliverTls();
  int flushCiphertext();
  static void onCiphertextWritten(uv_write_t* req, int status);
  static void onClose(uv_handle_t* h);
};

class UpstreamPool : public std::enable_shared_from_this<UpstreamPool> {
 public:
  UpstreamPool(Worker* worker, const UpstreamConfig& config, std::vector<HealthTable::Entry*> health);
  ~UpstreamPool();

  // Picks a server and returns a connection to it: an idle pooled one when
  // available (reused = true) unless `fresh` is set, else a new connecting
  // one. Returns null when no server can be used, with `err` saying why.
  UpstreamConn* acquire(bool fresh, UpstreamError& err);
  // Gives a connection back after its request. A reusable one goes to the
  // idle list (bounded by max_idle_per_server); anything else is closed.
  void release(UpstreamConn* c, bool reusable);
  // Passive health: a server that failed to connect is skipped for
  // fail_timeout_ms (unless every server is failed, then it is tried anyway).
  void markFailed(size_t server);
  // Closes idle connections and marks the pool retired: connections released
  // later are closed instead of pooled.
  void retire();
  // Called by an idle connection that saw EOF/data/error: drop it.
  void dropIdle(UpstreamConn* c);

  bool sameServers(const UpstreamConfig& other) const;
  // A reload kept this pool (sameServers): takes the settings that do not
  // touch its connections from `other`, so max_idle_per_server,
  // fail_timeout_ms and health_check changes apply to it as to a new pool.
  // Idle connections above a lowered max_idle_per_server are closed as they
  // would have been refused; a server already failed keeps its deadline.
  void setTunables(const UpstreamConfig& other);
  // TLS context for new connections (null = plaintext); replaced on reload.
  // A new context (the CA file may have changed) drops the kept sessions,
  // so no connection resumes a session verified under the old CA.
  void setTls(std::shared_ptr<const UpstreamTlsContext> tls) {
    if (tls != tls_) {
      for (Server& s : servers_) s.session.reset();
    }
    tls_ = std::move(tls);
  }
  const UpstreamTlsContext* tls() const { return tls_.get(); }
  // The last session a server issued (for resumption), or null; keeps it.
  SSL_SESSION* session(size_t server) const { return servers_[server].session.get(); }
  void storeSession(size_t server, SSL_SESSION* s) { servers_[server].session.reset(s); }
  const UpstreamConfig& config() const { return config_; }
  Worker* worker() const { return worker_; }
  size_t serverCount() const { return servers_.size(); }
  const HostPort& serverAddress(size_t server) const { return servers_[server].addr; }

 private:
  struct Server {
    HostPort addr;
    sockaddr_storage sa;
    HealthTable::Entry* health;
    uint32_t active = 0;         // requests in flight on this worker
    uint64_t down_until_us = 0;  // passive failure
    std::vector<UpstreamConn*> idle;
    struct SessionFree {
      void operator()(SSL_SESSION* s) const { SSL_SESSION_free(s); }
    };
    std::unique_ptr<SSL_SESSION, SessionFree> session;  // TLS resumption
  };
  bool usable(const Server& s, uint64_t now) const;

  Worker* worker_;
  UpstreamConfig config_;
  std::vector<Server> servers_;
  size_t rr_next_ = 0;
  bool retired_ = false;
  std::shared_ptr<const UpstreamTlsContext> tls_;
  friend class UpstreamConn;
};

}  // namespace portcullis
