#include "proxy/sink_io.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <charconv>
#include <cstring>

#include "proxy/background_thread.h"

namespace portcullis {

bool parseSinkHostPort(std::string_view hostport, uint16_t default_port, SinkEndpoint& out,
                       std::string& error) {
  out = SinkEndpoint();
  out.authority = std::string(hostport);
  if (hostport.empty()) {
    error = "missing host (expected host:port)";
    return false;
  }
  std::string_view host;
  std::string_view port_text;
  bool has_port = false;
  if (!hostport.empty() && hostport.front() == '[') {
    const size_t close = hostport.find(']');
    if (close == std::string_view::npos) {
      error = "unterminated IPv6 literal in \"" + out.authority + "\"";
      return false;
    }
    host = hostport.substr(1, close - 1);
    std::string_view rest = hostport.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        error = "unexpected text after IPv6 literal in \"" + out.authority + "\"";
        return false;
      }
      has_port = true;
      port_text = rest.substr(1);
    }
  } else {
    const size_t colon = hostport.find(':');
    host = hostport.substr(0, colon);
    if (colon != std::string_view::npos) {
      has_port = true;
      port_text = hostport.substr(colon + 1);
    }
  }
  unsigned port = default_port;
  if (has_port) {
    auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (port_text.empty() || ec != std::errc() || ptr != port_text.data() + port_text.size() ||
        port == 0 || port > 65535) {
      error = "invalid port in \"" + out.authority + "\"";
      return false;
    }
  } else if (port == 0) {
    error = "missing port in \"" + out.authority + "\" (expected host:port)";
    return false;
  }

  const std::string host_str(host);
  auto* v4 = reinterpret_cast<sockaddr_in*>(&out.addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&out.addr);
  if (host_str == "localhost") {
    v4->sin_family = AF_INET;
    v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    v4->sin_port = htons(static_cast<uint16_t>(port));
    out.addr_len = sizeof(sockaddr_in);
  } else if (hostport.front() != '[' && inet_pton(AF_INET, host_str.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    out.addr_len = sizeof(sockaddr_in);
  } else if (hostport.front() == '[' &&
             inet_pton(AF_INET6, host_str.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    out.addr_len = sizeof(sockaddr_in6);
  } else {
    error = "host \"" + host_str +
            "\" is not an IP literal or localhost (host names are not resolved)";
    return false;
  }
  return true;
}

StopSignal::StopSignal() : fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

StopSignal::~StopSignal() {
  if (fd_ >= 0) ::close(fd_);
}

void StopSignal::raise() {
  const uint64_t one = 1;
  ssize_t w;
  do {
    w = ::write(fd_, &one, sizeof one);
  } while (w < 0 && errno == EINTR);
}

bool StopSignal::raised() const {
  pollfd p = {fd_, POLLIN, 0};
  return ::poll(&p, 1, 0) > 0;
}

SinkIo waitFd(int fd, short events, const StopSignal& stop, int timeout_ms) {
  pollfd p[2] = {{stop.fd(), POLLIN, 0}, {fd, events, 0}};
  const int nfds = fd >= 0 ? 2 : 1;
  timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  int left = timeout_ms;
  for (;;) {
    const int r = ::poll(p, nfds, left);
    if (r > 0) {
      if (p[0].revents != 0) return SinkIo::kStopped;
      return SinkIo::kOk;
    }
    if (r == 0) return SinkIo::kTimeout;
    if (errno != EINTR) return SinkIo::kError;
    timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    const long elapsed =
        (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
    left = timeout_ms - static_cast<int>(elapsed);
    if (left <= 0) return SinkIo::kTimeout;
  }
}

bool sleepUnlessStopped(const StopSignal& stop, int ms) {
  return waitFd(-1, 0, stop, ms) != SinkIo::kStopped;
}

int connectSink(const SinkEndpoint& ep, const StopSignal& stop, int timeout_ms, SinkIo& result) {
  const int fd = ::socket(ep.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    result = SinkIo::kError;
    return -1;
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&ep.addr), ep.addr_len) == 0) {
    result = SinkIo::kOk;
    return fd;
  }
  if (errno != EINPROGRESS) {
    ::close(fd);
    result = SinkIo::kError;
    return -1;
  }
  result = waitFd(fd, POLLOUT, stop, timeout_ms);
  if (result == SinkIo::kOk) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) result = SinkIo::kError;
  }
  if (result != SinkIo::kOk) {
    ::close(fd);
    return -1;
  }
  return fd;
}

SinkIo sendAll(int fd, std::string_view data, const StopSignal& stop, int timeout_ms,
               size_t* sent) {
  size_t off = 0;
  SinkIo result = SinkIo::kOk;
  while (off < data.size()) {
    const ssize_t w = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (w > 0) {
      off += static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      result = waitFd(fd, POLLOUT, stop, timeout_ms);
      if (result != SinkIo::kOk) break;
      continue;
    }
    result = SinkIo::kError;
    break;
  }
  if (sent) *sent = off;
  return result;
}

bool SinkThread::start(const char* what, const char* name, std::string& error,
                       const std::function<bool(std::string&)>& prepare,
                       std::function<void()> body) {
  std::lock_guard<std::mutex> lock(mu_);
  if (started_ || stopped_) {
    error = std::string(what) + " already started";
    return false;
  }
  if (!prepare(error)) return false;
  if (body) {
    if (!stop_signal_.valid()) {
      error = std::string(what) + ": cannot create an eventfd";
      return false;
    }
    thread_ = startBackgroundThread(name, std::move(body));
  }
  started_ = true;
  return true;
}

void SinkThread::stop(const std::function<void()>& after_join) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopped_) return;
  stopped_ = true;
  accepting_.store(false, std::memory_order_relaxed);
  stopping_.store(true, std::memory_order_seq_cst);
  if (thread_.joinable()) {
    stop_signal_.raise();
    waker_.wake();
    thread_.join();
  }
  after_join();
}

int64_t sinkNowUnixMicros() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

}  // namespace portcullis
