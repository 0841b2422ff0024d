// copyShort: memcpy for the short pieces (header names and values, ids,
// addresses) the data path copies a few dozen times per request. Up to 16
// bytes it is two overlapping loads and stores of a fixed size, which the
// compiler emits inline; longer copies go to memcpy. A libc memcpy call for
// a 10-byte piece costs more in the call than in the copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace portcullis {

inline void copyShort(char* dst, const char* src, size_t n) {
  if (n > 16) {
    std::memcpy(dst, src, n);
  } else if (n >= 8) {
    uint64_t a, b;
    std::memcpy(&a, src, 8);
    std::memcpy(&b, src + n - 8, 8);
    std::memcpy(dst, &a, 8);
    std::memcpy(dst + n - 8, &b, 8);
  } else if (n >= 4) {
    uint32_t a, b;
    std::memcpy(&a, src, 4);
    std::memcpy(&b, src + n - 4, 4);
    std::memcpy(dst, &a, 4);
    std::memcpy(dst + n - 4, &b, 4);
  } else if (n != 0) {
    // 1..3 bytes: first, middle, last (overlapping when n < 3).
    dst[0] = src[0];
    dst[n / 2] = src[n / 2];
    dst[n - 1] = src[n - 1];
  }
}

}  // namespace portcullis
