// errnoMessage(): strerror() for code that may run on any thread.
#pragma once

#include <string.h>

#include <string>

namespace portcullis {

// Returns the message for errno value `err`, as strerror() words it. Unlike
// strerror(), which POSIX and glibc document as MT-Unsafe (its result may live
// in a buffer shared by all threads), this is safe to call from workers and
// background threads at once.
inline std::string errnoMessage(int err) {
  char buf[128];
  // The GNU strerror_r (glibc with _GNU_SOURCE, which g++ and clang++ define
  // for C++) returns the message: a static string or one written into buf.
  return ::strerror_r(err, buf, sizeof(buf));
}

}  // namespace portcullis
