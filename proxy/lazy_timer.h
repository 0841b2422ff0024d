// A one-shot timeout whose deadline moves often but rarely fires (request
// header, keep-alive idle, upstream response). Every libuv timer start or
// stop is a heap operation; per request the connection and its upstream
// moved their deadlines 4-5 times (5 % of the worker's CPU under load).
//
// Lazy deadlines (HAProxy's and nginx's approach for timeouts): the deadline
// lives here; the uv timer stays armed at or before it. Moving the deadline
// later or clearing it is a store. Only a deadline earlier than the armed
// expiry restarts the uv timer. When the uv timer fires, due() re-arms it
// for a deadline that moved later and reports only a deadline really reached.
//
// Contract: the uv timer's callback must call due() first (with itself as
// `cb`) and return when it is false; nothing else may start or stop the uv
// timer except stop() (e.g. before uv_close). Times are the loop's cached
// clock (uv_now), the same base libuv's timers use, so a fire is never early.
#pragma once

#include <uv.h>

#include <cstdint>

namespace portcullis {

struct LazyDeadline {
  uint64_t due_ms = 0;    // uv_now() at which the timeout is due; 0 = none
  uint64_t armed_ms = 0;  // expiry of the running uv timer; 0 = not running

  // Due in `ms` from the loop's now, replacing any earlier setting.
  void arm(uv_timer_t* t, uv_timer_cb cb, uint64_t ms) {
    const uint64_t now = uv_now(t->loop);
    due_ms = now + ms + (now + ms == 0);  // never 0 (0 means none)
    if (armed_ms == 0 || armed_ms > due_ms) {
      uv_timer_start(t, cb, due_ms - now, 0);
      armed_ms = due_ms;
    }
  }

  // No timeout; the uv timer may fire once more and then does nothing.
  void clear() { due_ms = 0; }

  // Stops the uv timer too (before uv_close, or when the owner changes).
  void stop(uv_timer_t* t) {
    uv_timer_stop(t);
    due_ms = armed_ms = 0;
  }

  // First thing in the uv timer's callback: true if the timeout is due now
  // (and then it is cleared); false if it was cleared or moved later (the
  // timer is re-armed for the new deadline).
  bool due(uv_timer_t* t, uv_timer_cb cb) {
    armed_ms = 0;
    if (due_ms == 0) return false;
    const uint64_t now = uv_now(t->loop);
    if (now < due_ms) {
      uv_timer_start(t, cb, due_ms - now, 0);
      armed_ms = due_ms;
      return false;
    }
    due_ms = 0;
    return true;
  }
};

}  // namespace portcullis
