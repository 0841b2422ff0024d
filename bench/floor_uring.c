/* The io_uring floor: floor_forwarder.c's forwarding without libuv or epoll.
 *
 *   floor_uring LISTEN_PORT UPSTREAM_PORT     (both on 127.0.0.1)
 *
 * A second yardstick for bench/compare.sh FLOOR=1 ("floor-uring"), built when
 * liburing is installed. It does what floor_forwarder does (one thread, each
 * client connection paired with its own keep-alive upstream connection, bytes
 * forwarded as read, llhttp run over both directions only to find where
 * messages end, a 64 KiB buffer a side, a side not read again until what it
 * read was all written to the peer), but every receive and send is an
 * io_uring request: those queued during one turn of the loop go to the kernel
 * together with the wait for the next completions, in one io_uring_enter(2)
 * (SINGLE_ISSUER + DEFER_TASKRUN: completions are run in this thread, when it
 * enters). The libuv floor spends an epoll_wait per turn and a kernel entry
 * per recvfrom and sendto, as Portcullis does; the difference between the
 * two floors is what that system-call pattern costs per request on the
 * machine at hand. The upstream connection is made with a blocking connect(2)
 * when the client is accepted (on loopback it completes at once); wrk's
 * connections are all made before the measured runs. Never deploy it: it
 * checks nothing.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { kBufBytes = 65536, kRingEntries = 4096 };

/* The user_data of every request: a side's address with the operation in the
 * low bits (a side is at least 8-byte aligned). */
enum { kOpAccept = 1, kOpRecv = 2, kOpSend = 3, kOpMask = 7 };

struct pair;
typedef struct side {
  int fd;
  llhttp_t parser;
  struct pair* pair;
  struct side* peer;
  size_t held; /* bytes read into buf, not yet all written to the peer */
  size_t sent; /* of those, written so far */
  char buf[kBufBytes];
} side_t;

typedef struct pair {
  side_t client, upstream;
  int inflight; /* requests in the ring that name a side of this pair */
  int closing;
} pair_t;

static struct io_uring g_ring;
static llhttp_settings_t g_settings; /* no callbacks: framing only */
static struct sockaddr_in g_upstream;
static int g_listen_fd = -1;

static struct io_uring_sqe* nextSqe(void) {
  struct io_uring_sqe* sqe = io_uring_get_sqe(&g_ring);
  if (sqe == NULL) { /* the submission queue is full: hand it over, then retry */
    io_uring_submit(&g_ring);
    sqe = io_uring_get_sqe(&g_ring);
  }
  return sqe;
}

static void armAccept(void) {
  struct io_uring_sqe* sqe = nextSqe();
  if (sqe == NULL) return;
  io_uring_prep_multishot_accept(sqe, g_listen_fd, NULL, NULL, 0);
  io_uring_sqe_set_data64(sqe, kOpAccept);
}

static void closePair(pair_t* p);

/* Queues a recv into s->buf. A full submission queue even after handing it
 * over cannot be waited out here: the pair is closed instead of stalling. */
static void armRecv(side_t* s) {
  struct io_uring_sqe* sqe = nextSqe();
  if (sqe == NULL) {
    closePair(s->pair);
    return;
  }
  io_uring_prep_recv(sqe, s->fd, s->buf, kBufBytes, 0);
  io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)s | kOpRecv);
  s->pair->inflight++;
}

/* Writes s->buf[sent, held) to the peer. */
static void armSend(side_t* s) {
  struct io_uring_sqe* sqe = nextSqe();
  if (sqe == NULL) {
    closePair(s->pair);
    return;
  }
  io_uring_prep_send(sqe, s->peer->fd, s->buf + s->sent, s->held - s->sent, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)s | kOpSend);
  s->pair->inflight++;
}

/* Shuts both sockets down, so that requests still in the ring complete; the
 * pair is freed when the last of them has. */
static void closePair(pair_t* p) {
  if (p->closing) return;
  p->closing = 1;
  shutdown(p->client.fd, SHUT_RDWR);
  shutdown(p->upstream.fd, SHUT_RDWR);
}

static void maybeFree(pair_t* p) {
  if (!p->closing || p->inflight > 0) return;
  close(p->client.fd);
  close(p->upstream.fd);
  free(p);
}

static void onAccepted(int fd) {
  int one = 1;
  int ufd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (ufd < 0 || connect(ufd, (const struct sockaddr*)&g_upstream, sizeof g_upstream) != 0) {
    if (ufd >= 0) close(ufd);
    close(fd);
    return;
  }
  pair_t* p = calloc(1, sizeof *p);
  if (p == NULL) {
    close(ufd);
    close(fd);
    return;
  }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(ufd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  p->client.fd = fd;
  p->upstream.fd = ufd;
  p->client.pair = p->upstream.pair = p;
  p->client.peer = &p->upstream;
  p->upstream.peer = &p->client;
  llhttp_init(&p->client.parser, HTTP_REQUEST, &g_settings);
  llhttp_init(&p->upstream.parser, HTTP_RESPONSE, &g_settings);
  armRecv(&p->client);
  armRecv(&p->upstream);
  maybeFree(p); /* only if arming failed and nothing is in the ring */
}

static void onCompletion(uint64_t data, int res, unsigned flags) {
  const int op = (int)(data & kOpMask);
  if (op == kOpAccept) {
    if (!(flags & IORING_CQE_F_MORE)) armAccept(); /* the multishot accept ended */
    if (res >= 0) onAccepted(res);
    return;
  }
  side_t* s = (side_t*)(uintptr_t)(data & ~(uint64_t)kOpMask);
  pair_t* p = s->pair;
  p->inflight--;
  if (p->closing) {
    maybeFree(p);
    return;
  }
  if (op == kOpRecv) {
    if (res <= 0 || llhttp_execute(&s->parser, s->buf, (size_t)res) != HPE_OK) {
      closePair(p);
    } else {
      s->held = (size_t)res;
      s->sent = 0;
      armSend(s);
    }
  } else {
    if (res < 0) {
      closePair(p);
    } else {
      s->sent += (size_t)res;
      if (s->sent < s->held) {
        armSend(s);
      } else {
        s->held = s->sent = 0;
        armRecv(s); /* the peer took it all: read this side again */
      }
    }
  }
  maybeFree(p);
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: floor_uring LISTEN_PORT UPSTREAM_PORT (127.0.0.1)\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  llhttp_settings_init(&g_settings);
  const int listen_port = atoi(argv[1]);
  const int upstream_port = atoi(argv[2]);
  if (listen_port <= 0 || listen_port > 65535 || upstream_port <= 0 || upstream_port > 65535) {
    fprintf(stderr, "floor_uring: bad port\n");
    return 2;
  }
  g_upstream.sin_family = AF_INET;
  g_upstream.sin_port = htons((uint16_t)upstream_port);
  g_upstream.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct sockaddr_in addr = {0};
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)listen_port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int one = 1;
  g_listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (g_listen_fd < 0 || setsockopt(g_listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      bind(g_listen_fd, (const struct sockaddr*)&addr, sizeof addr) != 0 || listen(g_listen_fd, 4096) != 0) {
    fprintf(stderr, "floor_uring: listen on 127.0.0.1:%d: %s\n", listen_port, strerror(errno));
    return 1;
  }
  struct io_uring_params params;
  memset(&params, 0, sizeof params);
  params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  int rc = io_uring_queue_init_params(kRingEntries, &g_ring, &params);
  if (rc < 0) {
    fprintf(stderr, "floor_uring: io_uring_setup: %s\n", strerror(-rc));
    return 1;
  }
  armAccept();
  for (;;) {
    rc = io_uring_submit_and_wait(&g_ring, 1);
    if (rc < 0 && rc != -EINTR) {
      fprintf(stderr, "floor_uring: io_uring_enter: %s\n", strerror(-rc));
      return 1;
    }
    struct io_uring_cqe* cqe;
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(&g_ring, head, cqe) {
      onCompletion(cqe->user_data, cqe->res, cqe->flags);
      seen++;
    }
    io_uring_cq_advance(&g_ring, seen);
  }
}
