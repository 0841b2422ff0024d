// Background threads (log writers, alert and syslog senders) must not take
// the process's signals: SIGHUP, SIGTERM, SIGUSR1 belong to the main loop.
#pragma once

#include <pthread.h>
#include <signal.h>

#include <thread>
#include <utility>

namespace portcullis {

// Starts `fn` on a new thread with every signal blocked and names it `name`
// (at most 15 characters, as shown by top -H and gdb).
template <class Fn>
std::thread startBackgroundThread(const char* name, Fn&& fn) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  std::thread t(std::forward<Fn>(fn));
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  pthread_setname_np(t.native_handle(), name);
  return t;
}

}  // namespace portcullis
