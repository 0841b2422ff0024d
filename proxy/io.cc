#include "proxy/io.h"

#include <cstring>
#include <ctime>

namespace portcullis {

namespace {
constexpr size_t kCoalesceMaxBytes = 2048;
}  // namespace

int writeOrQueue(uv_stream_t* stream, uv_write_t* req, uv_buf_t* bufs, unsigned nbufs, uv_write_cb cb) {
  size_t total = 0;
  for (unsigned i = 0; i < nbufs; ++i) total += bufs[i].len;
  int n;
  if (nbufs > 1 && total <= kCoalesceMaxBytes) {
    // A short head + body goes out as one copied buffer: libuv writes one
    // buffer with write() (send() here, proxy/nocancel_io.cc) and several
    // with writev() (sendmsg()), whose iovec import costs ~80 ns more per
    // call in the kernel on loopback; copying this few bytes costs less.
    char one[kCoalesceMaxBytes];
    size_t at = 0;
    for (unsigned i = 0; i < nbufs; ++i) {
      if (bufs[i].len > 0) std::memcpy(one + at, bufs[i].base, bufs[i].len);
      at += bufs[i].len;
    }
    uv_buf_t b = uv_buf_init(one, static_cast<unsigned>(total));
    n = uv_try_write(stream, &b, 1);
  } else {
    n = uv_try_write(stream, bufs, nbufs);
  }
  if (n == UV_EAGAIN || n == UV_ENOSYS) n = 0;
  if (n < 0) return n;
  if (static_cast<size_t>(n) == total) return 0;
  size_t skip = static_cast<size_t>(n);
  unsigned first = 0;
  while (first < nbufs && skip >= bufs[first].len) {
    skip -= bufs[first].len;
    ++first;
  }
  bufs[first].base += skip;
  bufs[first].len -= skip;
  int rc = uv_write(req, stream, bufs + first, nbufs - first, cb);
  return rc < 0 ? rc : 1;
}

uint64_t nowUs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

uint64_t nowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

void peerAddress(const uv_tcp_t* tcp, char* out, size_t out_len, uint16_t* port) {
  sockaddr_storage ss;
  int len = sizeof(ss);
  out[0] = '\0';
  if (port != nullptr) *port = 0;
  if (uv_tcp_getpeername(tcp, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return;
  if (ss.ss_family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    uv_ip4_name(sin, out, out_len);
    if (port != nullptr) *port = ntohs(sin->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    uv_ip6_name(sin6, out, out_len);
    // Show IPv4-mapped addresses as plain IPv4.
    if (std::strncmp(out, "::ffff:", 7) == 0 && std::strchr(out + 7, ':') == nullptr) {
      std::memmove(out, out + 7, std::strlen(out + 7) + 1);
    }
    if (port != nullptr) *port = ntohs(sin6->sin6_port);
  }
}

}  // namespace portcullis
