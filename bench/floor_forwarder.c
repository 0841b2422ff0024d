/* The floor: the least a libuv + llhttp HTTP/1.1 proxy can do per request.
 *
 *   floor_forwarder LISTEN_PORT UPSTREAM_PORT     (both on 127.0.0.1)
 *
 * A yardstick for bench/compare.sh (FLOOR=1), not a proxy: one event loop,
 * each client connection paired with its own keep-alive upstream connection,
 * bytes forwarded as read (no header edits, routing, request ids, metrics,
 * logs, timeouts or limits), llhttp run over both directions only to find
 * where messages end, as any HTTP proxy must (a parse error closes the pair).
 * The system calls are Portcullis's own (recvfrom/sendto/sendmsg through
 * proxy/nocancel_io.cc, linked the same way), so the gap between this and
 * Portcullis is what Portcullis's features and structure cost per request.
 * Backpressure both ways: a side whose peer has a write queued stops being
 * read until that write completes, so memory stays at two 64 KiB buffers a
 * pair. Never deploy it: it checks nothing.
 */
#include <llhttp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

enum { kBufBytes = 65536 };

typedef struct side {
  uv_tcp_t tcp;
  llhttp_t parser;
  char buf[kBufBytes]; /* what this side read, until written to the peer */
  size_t held;         /* bytes in buf not yet handed to the peer */
  uv_write_t write_req;
  int writing; /* a write of buf to the peer is queued */
} side_t;

typedef struct pair {
  side_t client, upstream;
  int connected;
  int closed_handles;
  int closing;
} pair_t;

static llhttp_settings_t g_settings; /* no callbacks: framing only */
static struct sockaddr_in g_upstream;
static uv_loop_t* g_loop;

static pair_t* pairOf(uv_handle_t* h) { return (pair_t*)h->data; }
static side_t* peerOf(pair_t* p, side_t* s) { return s == &p->client ? &p->upstream : &p->client; }

static void onClosed(uv_handle_t* h) {
  pair_t* p = pairOf(h);
  if (++p->closed_handles == 2) free(p);
}

static void closePair(pair_t* p) {
  if (p->closing) return;
  p->closing = 1;
  uv_close((uv_handle_t*)&p->client.tcp, onClosed);
  uv_close((uv_handle_t*)&p->upstream.tcp, onClosed);
}

static void onAlloc(uv_handle_t* h, size_t suggested, uv_buf_t* b);
static void onRead(uv_stream_t* s, ssize_t n, const uv_buf_t* b);

static void startReading(side_t* s) {
  const int rc = uv_read_start((uv_stream_t*)&s->tcp, onAlloc, onRead);
  if (rc != 0 && rc != UV_EALREADY) closePair(pairOf((uv_handle_t*)&s->tcp));
}

static void onWritten(uv_write_t* req, int status) {
  side_t* from = (side_t*)req->data;
  pair_t* p = pairOf((uv_handle_t*)&from->tcp);
  from->writing = 0;
  from->held = 0;
  if (status < 0 || p->closing) {
    closePair(p);
    return;
  }
  startReading(from); /* the peer took it all: read this side again */
}

/* Hands from->buf[0, held) to the peer: at once if the socket takes it all,
 * else queued, with `from` not read until the write completes. */
static void forward(pair_t* p, side_t* from) {
  side_t* to = peerOf(p, from);
  uv_buf_t b = uv_buf_init(from->buf, (unsigned)from->held);
  int n = uv_try_write((uv_stream_t*)&to->tcp, &b, 1);
  if (n == UV_EAGAIN) n = 0;
  if (n < 0) {
    closePair(p);
    return;
  }
  if ((size_t)n == from->held) {
    from->held = 0;
    return;
  }
  b = uv_buf_init(from->buf + n, (unsigned)(from->held - (size_t)n));
  from->write_req.data = from;
  from->writing = 1;
  uv_read_stop((uv_stream_t*)&from->tcp);
  if (uv_write(&from->write_req, (uv_stream_t*)&to->tcp, &b, 1, onWritten) != 0) closePair(p);
}

static void onAlloc(uv_handle_t* h, size_t suggested, uv_buf_t* b) {
  (void)suggested;
  pair_t* p = pairOf(h);
  side_t* s = (uv_tcp_t*)h == &p->client.tcp ? &p->client : &p->upstream;
  *b = uv_buf_init(s->buf, kBufBytes);
}

static void onRead(uv_stream_t* stream, ssize_t n, const uv_buf_t* b) {
  pair_t* p = pairOf((uv_handle_t*)stream);
  side_t* s = (uv_tcp_t*)stream == &p->client.tcp ? &p->client : &p->upstream;
  if (n == 0) return;
  if (n < 0 || llhttp_execute(&s->parser, b->base, (size_t)n) != HPE_OK) {
    closePair(p);
    return;
  }
  s->held = (size_t)n;
  if (s == &p->client && !p->connected) {
    uv_read_stop(stream); /* held until the upstream connection is up */
    return;
  }
  forward(p, s);
}

static void onConnected(uv_connect_t* req, int status) {
  pair_t* p = (pair_t*)req->data;
  free(req);
  if (status < 0 || p->closing) {
    closePair(p);
    return;
  }
  p->connected = 1;
  uv_tcp_nodelay(&p->upstream.tcp, 1);
  startReading(&p->upstream);
  if (p->client.held > 0) forward(p, &p->client);
  if (!p->closing && !p->client.writing) startReading(&p->client);
}

static void onConnection(uv_stream_t* server, int status) {
  if (status < 0) return;
  pair_t* p = calloc(1, sizeof *p);
  if (p == NULL) return;
  uv_tcp_init(g_loop, &p->client.tcp);
  uv_tcp_init(g_loop, &p->upstream.tcp);
  p->client.tcp.data = p->upstream.tcp.data = p;
  llhttp_init(&p->client.parser, HTTP_REQUEST, &g_settings);
  llhttp_init(&p->upstream.parser, HTTP_RESPONSE, &g_settings);
  if (uv_accept(server, (uv_stream_t*)&p->client.tcp) != 0) {
    closePair(p);
    return;
  }
  uv_tcp_nodelay(&p->client.tcp, 1);
  uv_connect_t* req = malloc(sizeof *req);
  if (req == NULL) {
    closePair(p);
    return;
  }
  req->data = p;
  if (uv_tcp_connect(req, &p->upstream.tcp, (const struct sockaddr*)&g_upstream, onConnected) != 0) {
    free(req);
    closePair(p);
    return;
  }
  startReading(&p->client);
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: floor_forwarder LISTEN_PORT UPSTREAM_PORT (127.0.0.1)\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN); /* a peer gone mid-write is an error return, not a signal */
  g_loop = uv_default_loop();
  llhttp_settings_init(&g_settings);
  struct sockaddr_in listen_addr;
  if (uv_ip4_addr("127.0.0.1", atoi(argv[1]), &listen_addr) != 0 ||
      uv_ip4_addr("127.0.0.1", atoi(argv[2]), &g_upstream) != 0) {
    fprintf(stderr, "floor_forwarder: bad port\n");
    return 2;
  }
  uv_tcp_t server;
  uv_tcp_init(g_loop, &server);
  int rc = uv_tcp_bind(&server, (const struct sockaddr*)&listen_addr, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t*)&server, 4096, onConnection);
  if (rc != 0) {
    fprintf(stderr, "floor_forwarder: listen on 127.0.0.1:%s: %s\n", argv[1], uv_strerror(rc));
    return 1;
  }
  return uv_run(g_loop, UV_RUN_DEFAULT);
}
