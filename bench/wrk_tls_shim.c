/* LD_PRELOAD shim for wrk, used by bench/compare.sh in MODE=tls.
 *
 * wrk keeps one SSL object per connection and reconnects with SSL_shutdown() +
 * SSL_clear(), which keeps the last session (TLS 1.3: the newest ticket), so
 * every reconnect after the first is a RESUMED handshake. To measure full
 * handshakes, PCBENCH_TLS_FULL=1 drops that session after each SSL_clear().
 *
 * Either way, the shim counts completed client handshakes and how many of them
 * the server resumed (SSL_session_reused), and prints one line at exit:
 *   PCTLS {"handshakes":N,"resumed":M}
 * so every run records what kind of handshake it actually measured.
 * Build: cc -O2 -shared -fPIC -o wrk_tls_shim.so wrk_tls_shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct ssl_st SSL;

/* libssl functions are looked up at run time, so the shim has no undefined
 * symbols and loads into any process (e.g. taskset when PIN=1) without libssl. */
static void *sym(const char *name) { return dlsym(RTLD_NEXT, name); }

static unsigned long handshakes, resumed;
static int drop_sessions = -1;

int SSL_clear(SSL *s) {
  static int (*real)(SSL *);
  static int (*set_session)(SSL *, void *);
  if (!real) real = (int (*)(SSL *))sym("SSL_clear");
  if (!set_session) set_session = (int (*)(SSL *, void *))sym("SSL_set_session");
  int r = real(s);
  if (drop_sessions < 0) {
    const char *e = getenv("PCBENCH_TLS_FULL");
    drop_sessions = e && e[0] == '1';
  }
  if (drop_sessions) set_session(s, NULL);
  return r;
}

int SSL_connect(SSL *s) {
  static int (*real)(SSL *);
  static int (*reused)(const SSL *);
  if (!real) real = (int (*)(SSL *))sym("SSL_connect");
  if (!reused) reused = (int (*)(const SSL *))sym("SSL_session_reused");
  int r = real(s);
  if (r == 1) {
    __atomic_fetch_add(&handshakes, 1, __ATOMIC_RELAXED);
    if (reused(s)) __atomic_fetch_add(&resumed, 1, __ATOMIC_RELAXED);
  }
  return r;
}

__attribute__((destructor)) static void report(void) {
  fprintf(stdout, "PCTLS {\"handshakes\":%lu,\"resumed\":%lu}\n", handshakes, resumed);
  fflush(stdout);
}
