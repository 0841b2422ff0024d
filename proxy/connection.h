// One client connection and the requests it carries: the proxy's data path.
// See connection.cc for the walk-through of what happens to a request.
#pragma once

#include <uv.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "filters/filter_chain.h"
#include "proxy/arena.h"
#include "proxy/http_codec.h"
#include "proxy/io.h"
#include "proxy/ip_limiter.h"
#include "proxy/lazy_timer.h"
#include "proxy/snapshot.h"
#include "proxy/tls.h"
#include "proxy/upstream.h"

namespace portcullis {

class Worker;

class Connection : public BodySink {
 public:
  // `secure`: accepted on the HTTPS listener (TLS is terminated here).
  Connection(Worker* worker, bool secure);
  ~Connection() override;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Accepts a pending connection from `listener` and starts reading. Returns
  // a libuv error if accept failed (then the caller deletes this object).
  int accept(uv_stream_t* listener);
  // Counts this connection against its client address's limit; false when
  // the address is over it (the caller then closes the connection).
  bool claimClientAddress(ConnectionsPerIp& table, uint32_t limit);
  // Starts reading requests (after the limits let the connection in).
  void start();

  // Worker is shutting down: close now if idle, else after the current
  // exchange. `force` closes at once.
  void drain(bool force);

  // Events from the upstream connection while this connection owns it.
  void onUpstreamConnected(int status);
  void onUpstreamRead(ssize_t nread);
  void onUpstreamWritten(int status);
  void onUpstreamTimeout();
  // The worker went over or back under its buffer watermark.
  void onOverloadChanged();

  // Intrusive list of the worker's connections.
  Connection* prev = nullptr;
  Connection* next = nullptr;

 private:
  enum class ReqState : uint8_t {
    kReadingHead,    // waiting for / parsing a request head
    kHeadFilters,    // head parsed; filters running (may be paused)
    kWaitUpstream,   // connecting to (or acquiring) an upstream
    kStreamingBody,  // request head sent; body streaming to the upstream
    kDone,           // whole request sent (or answered locally)
  };
  enum class RespState : uint8_t {
    kNone,       // nothing from upstream yet
    kHead,       // waiting for / parsing the response head
    kBody,       // streaming the response body to the client
    kDone,       // response complete
  };

  // BodySink: decoded body slices from whichever codec is executing.
  void onBodyData(std::string_view data) override;

  // Client side.
  static void onAlloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void onRead(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void onClientWritten(uv_write_t* req, int status);
  static void onTlsWritten(uv_write_t* req, int status);
  bool tlsPull();
  void flushTls();
  // The client's end of input (UV_EOF: FIN or TLS close_notify) or a read
  // error. An orderly end after a complete request head is a half-close
  // (RFC 9112 section 9.6): the request is still forwarded and answered,
  // then the connection closes; should its body turn out to be incomplete,
  // bodyCutShort() ends the exchange as an abort. Anything else closes.
  void clientEof(ssize_t nread);
  void abortClient();
  // A close_notify found by a tlsPull() outside onRead() is the same end.
  void noticeTlsClose() {
    if (tls_peer_closed_ && !client_eof_ && !closing_) clientEof(UV_EOF);
  }
  // The client ended its input, the request body is not complete and
  // nothing buffered, pending or paused can complete it.
  bool bodyCutShort() const;
  static void onTimer(uv_timer_t* t);
  static void onClosed(uv_handle_t* h);
  static void resumeThunk(void* self);

  void processClient();
  void beginRequest();
  void runHeadFilters();
  bool checkRoute();
  bool normalizeRequestTarget();
  void editRequestHead();
  void connectUpstream(bool fresh);
  void sendRequestHead();
  void pumpRequestBody();
  bool transformBody(BodyTransform* xf, bool& request_done);
  bool awaitMoreBody() const;
  // True if `s` lies in rbuf_ (the connection's own, writable memory).
  bool inReadBuffer(std::string_view s) const {
    const auto p = reinterpret_cast<uintptr_t>(s.data()), b = reinterpret_cast<uintptr_t>(rbuf_.data);
    return rbuf_.held() && p >= b && p + s.size() <= b + rbuf_.cap;
  }
  void reportSecurity();
  // min_body_rate (like mod_reqtimeout's MinRate): the body must arrive by
  // start + grace + bytes / rate, where the time the proxy itself spent
  // waiting on upstream writes (not reading the client) is added back. 0 = no
  // deadline. armBodyTimer() waits on the client for body_idle_ms or until
  // that deadline, whichever is first.
  uint64_t bodyDeadlineUs() const;
  void armBodyTimer();
  void flushToUpstream();
  void handleUpstreamFailure(UpstreamError kind, int status);

  void parseResponse();
  void onResponseHead();
  void writeToClient(uv_buf_t* bufs, unsigned n);
  void maybeFinishExchange();
  void finishExchange();
  void startNextRequest();

  void sendLocalReply(int status, std::string_view code, bool close);
  void sendError(int status, std::string_view code, std::string_view rejected_by, std::string_view reason,
                 bool close);
  void releaseUpstream(bool reusable);
  void updateClientReading();
  void armClientTimer(uint64_t ms);
  void logAccess(uint64_t now_us = 0);  // now_us: the caller's clock read (0: read it)
  void close();
  bool mayStillSend() const;
  void sendCloseNotify();
  void lingerClose();
  void releaseState();
  void closeHandles();
  static void onLingerShutdown(uv_shutdown_t* req, int status);
  static void onLingerAlloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void onLingerRead(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void onLingerTimer(uv_timer_t* t);

  Worker* worker_;
  uv_tcp_t tcp_;
  uv_timer_t timer_;
  LazyDeadline timer_deadline_;  // the timer_'s timeout (proxy/lazy_timer.h)
  uv_write_t write_req_;
  IoBuffer rbuf_;
  // TLS (HTTPS listener only): the session, the ciphertext being written,
  // and whether that write is pending. Plaintext reaches rbuf_ directly.
  std::unique_ptr<TlsSession> tls_;
  IoBuffer tls_out_;
  std::unique_ptr<char[]> tls_tail_;  // TlsSession::takeCiphertextForWrite
  bool secure_ = false;
  bool tls_write_pending_ = false;
  bool tls_peer_closed_ = false;
  bool overload_paused_ = false;  // reading paused by the overload manager
  HttpCodec codec_;          // client requests
  Arena arena_;
  RequestHead req_;
  ResponseHead resp_;
  RequestContext ctx_;
  FilterChain chain_;
  const Snapshot* snap_ = nullptr;  // pinned for the current request
  SnapshotPin* pin_ = nullptr;
  void pinSnapshot();
  void unpinSnapshot();
  UpstreamConn* up_ = nullptr;
  UpstreamPool* pool_ = nullptr;

  ReqState req_state_ = ReqState::kReadingHead;
  RespState resp_state_ = RespState::kNone;

  // Outgoing data. Head strings are kept until the next request: the request
  // head for a retry, the response head until its write completes.
  std::string up_head_;
  std::string client_head_;
  std::vector<uv_buf_t> up_bufs_;      // pending slices for the upstream write
  std::vector<std::string_view> body_slices_;  // decoded request body of one pump
  std::vector<uv_buf_t> client_bufs_;  // pending slices for the client write
  struct ChunkLine {
    char text[20];
  };
  // Chunk-size lines for re-framed bodies; a deque keeps their addresses
  // stable while slices point at them. Allocated on the first chunked body
  // (an empty std::deque already costs ~600 bytes per idle connection).
  std::unique_ptr<std::deque<ChunkLine>> chunk_frames_;
  size_t chunk_frames_used_ = 0;
  // Where onBodyData() puts decoded slices: request body for the upstream,
  // response body for the client, or nowhere (raw passthrough).
  enum class BodyTarget : uint8_t { kUpstream, kClient, kDiscard };
  BodyTarget body_target_ = BodyTarget::kUpstream;
  size_t body_base_ = 0;               // rbuf_ offset where body bytes may be reused
  size_t head_end_ = 0;

  char peer_ip_[64] = {0};
  std::string address_key_;  // set while counted in the per-address table
  uint16_t peer_port_ = 0;
  char request_id_[33] = {0};
  std::string local_body_;

  uint64_t req_body_bytes_ = 0;   // decoded request body bytes seen
  uint64_t req_bytes_in_ = 0;     // raw request bytes (head + body) from the client
  uint64_t resp_bytes_out_ = 0;   // bytes written to the client for this request
  uint64_t upstream_sent_at_us_ = 0;
  uint64_t max_body_ = 0;
  ResponseFraming resp_framing_ = ResponseFraming::kNone;
  int upstream_status_ = 0;
  int status_ = 0;
  uint8_t connect_attempts_ = 0;

  bool client_write_pending_ = false;
  bool reading_ = false;
  bool closing_ = false;
  bool handles_closing_ = false;  // closeHandles() ran
  bool reset_on_close_ = false;   // abortClient(): RST instead of FIN
  // Lingering close (lingerClose()).
  static constexpr uint64_t kLingerIdleMs = 2000;
  static constexpr uint64_t kLingerMaxMs = 5000;
  uint64_t linger_end_us_ = 0;
  uv_shutdown_t shutdown_req_;
  bool close_after_ = false;      // close once the current exchange is done
  bool client_eof_ = false;
  bool head_bytes_seen_ = false;  // some bytes of the next head arrived
  bool head_sent_ = false;        // request head handed to the upstream socket
  bool retried_ = false;
  bool local_reply_ = false;      // the response is the proxy's own
  bool continue_sent_ = false;    // "100 Continue" was written
  bool first_request_ = true;
  bool raw_response_ = false;     // forward response body bytes as received
  bool paused_in_body_ = false;
  bool xform_finishing_ = false;  // body ended; the body transform has output left
  // Packet-aligned transform output: a round's write to the upstream leaves
  // out the last (total mod MSS) bytes, which would otherwise go out as a
  // runt packet of their own (a sealed 64 KiB segment is 16 bytes over a
  // loopback packet, and the runt costs the receiver a second wakeup). They
  // are saved into hold_ once the write is done (until then hold_next_
  // points at them: the transform's output, and for a chunked body its
  // chunk framing, all valid until the next round) and lead the next
  // round's write. At most kHoldMax bytes wait, and only while the body
  // goes on: its last write sends everything.
  static constexpr size_t kHoldMax = 4096;
  static constexpr size_t kHoldPieces = 3;
  std::unique_ptr<char[]> hold_;  // kHoldMax bytes, allocated on first use
  size_t hold_len_ = 0;
  std::string_view hold_next_[kHoldPieces];  // in write order
  size_t hold_next_n_ = 0;
  void alignTransformWrite();
  void saveHold();
  uint64_t body_start_us_ = 0;        // request body began (0: none)
  uint64_t upstream_wait_us_ = 0;     // time spent waiting on upstream writes meanwhile
  uint64_t write_wait_since_us_ = 0;  // an upstream write is pending since
  uint64_t last_body_data_us_ = 0;    // body bytes last parsed
  bool draining_ = false;
  int handles_open_ = 0;

  // --- WebSocket tunnel (proxy/tunnel.cc) ---------------------------------
  // kHandshake: a valid handshake on a `websocket = true` route went
  // upstream with its Upgrade; a 101 from the upstream may switch. kTunnel:
  // the 101 head went to the client and both sockets are one raw byte
  // stream, each direction through the read buffer of its source side.
  enum class WsState : uint8_t { kNone, kHandshake, kTunnel };
  // After the head filters and checkRoute(): classifies the request's
  // Upgrade (see tunnel.cc). False after answering 400 for a malformed
  // WebSocket handshake on a websocket route.
  bool checkUpgrade();
  // The upstream answered 101: becomes a tunnel, or 502 if the 101 does not
  // accept the WebSocket handshake this request made.
  void startTunnel();
  void tunnelFromClient();
  void tunnelToClient();
  void onTunnelUpstreamRead(ssize_t nread);
  void onTunnelUpstreamWritten(int status);
  void onTunnelClientWritten();
  // EOF (orderly: pending writes finish first) or error (at once) on a side.
  void endTunnel(bool orderly);
  void tunnelClosed();  // from close(): access log and metrics, once
  // The one place tunnel bytes are written to the upstream socket. Returns
  // 0 when all of `bufs` was written at once, 1 when a write is pending
  // (onUpstreamWritten() follows), or a negative libuv error.
  int tunnelWriteUpstream(uv_buf_t* bufs, unsigned n);
  WsState ws_ = WsState::kNone;
  bool tunnel_ending_ = false;     // EOF seen: close once no write is pending
  uint64_t tunnel_handshake_us_ = 0;  // request start -> 101 forwarded
  uint64_t tunnel_bytes_up_ = 0;      // payload bytes client -> upstream
  uint64_t tunnel_bytes_down_ = 0;    // payload bytes upstream -> client
};

}  // namespace portcullis
