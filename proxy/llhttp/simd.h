/* Which compilation of llhttp's state machine parses (see dispatch.c). */
#ifndef PORTCULLIS_LLHTTP_SIMD_H_
#define PORTCULLIS_LLHTTP_SIMD_H_

#ifdef __cplusplus
extern "C" {
#endif

/* 1 while llhttp_execute() runs the SSE4.2 build of the state machine, 0 while
 * it runs the baseline build. Chosen once per process from CPUID. */
int portcullis_llhttp_simd_active(void);

/* Selects the SSE4.2 build (on != 0) or the baseline one (on == 0) and returns
 * what is now active: asking for SSE4.2 on a CPU without it, or in a build
 * without the second compilation (not x86-64), keeps the baseline. For tests
 * and benchmarks that compare the two; call it only while no parser runs. */
int portcullis_llhttp_use_simd(int on);

#ifdef __cplusplus
}
#endif

#endif /* PORTCULLIS_LLHTTP_SIMD_H_ */
