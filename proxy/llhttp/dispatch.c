/* llhttp_execute() (api.c, compiled with llhttp__internal_execute renamed to
 * portcullis_llhttp_execute) lands here and runs the baseline build of the
 * state machine or, on a CPU with SSE4.2, the build in sse42.c. Both builds
 * share llhttp__internal_init and the parser struct layout: they are the same
 * generated source, and the parser's state is a state number, not a code
 * address, so either build can continue what the other started. */
#include <stdatomic.h>

#include "llhttp.h"
#include "simd.h"

int portcullis_llhttp_execute(llhttp__internal_t* s, const char* p, const char* endp);

#if PORTCULLIS_LLHTTP_SSE42
int llhttp__internal_execute_sse42(llhttp__internal_t* s, const char* p, const char* endp);

static int cpu_has_sse42(void) {
  /* Runs from a constructor, possibly before libgcc initialised its CPU
   * model: __builtin_cpu_init() first, as GCC's documentation requires. */
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2") ? 1 : 0;
}

/* Relaxed: written once at load time (and by tests between parses). */
static atomic_int use_sse42;

__attribute__((constructor)) static void choose_build(void) {
  atomic_store_explicit(&use_sse42, cpu_has_sse42(), memory_order_relaxed);
}

int portcullis_llhttp_execute(llhttp__internal_t* s, const char* p, const char* endp) {
  if (atomic_load_explicit(&use_sse42, memory_order_relaxed)) return llhttp__internal_execute_sse42(s, p, endp);
  return llhttp__internal_execute(s, p, endp);
}

int portcullis_llhttp_simd_active(void) { return atomic_load_explicit(&use_sse42, memory_order_relaxed); }

int portcullis_llhttp_use_simd(int on) {
  atomic_store_explicit(&use_sse42, on && cpu_has_sse42(), memory_order_relaxed);
  return portcullis_llhttp_simd_active();
}
#else
int portcullis_llhttp_execute(llhttp__internal_t* s, const char* p, const char* endp) {
  return llhttp__internal_execute(s, p, endp);
}

int portcullis_llhttp_simd_active(void) { return 0; }

int portcullis_llhttp_use_simd(int on) {
  (void)on;
  return 0;
}
#endif
