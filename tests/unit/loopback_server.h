// Test helpers: a blocking TCP listener on 127.0.0.1 served by one thread, for
// the sink tests (AlertWebhook, SyslogSink). The thread accepts one connection at
// a time and hands it to `serve`, which reads and answers until it returns; then
// the connection is closed and the next one accepted.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <thread>

namespace portcullis::testing {

// A port on 127.0.0.1 that was free a moment ago and has no listener now.
inline uint16_t unusedLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// Polls `pred` every 5 ms for up to `timeout_ms`; returns its last value.
inline bool waitFor(const std::function<bool()>& pred, int timeout_ms = 3000) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return pred();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

inline void writeAllTo(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t w = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (w <= 0) return;
    data.remove_prefix(static_cast<size_t>(w));
  }
}

class LoopbackServer {
 public:
  // Called with a connected socket and a flag that turns true when the server
  // stops; return to close the connection. Use readSome() to read.
  using Serve = std::function<void(int fd, const std::atomic<bool>& stopping)>;

  // Listens on 127.0.0.1:`port` (0: an ephemeral port) with SO_REUSEADDR.
  LoopbackServer(uint16_t port, Serve serve) : serve_(std::move(serve)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    socklen_t len = sizeof a;
    ok_ = ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::listen(fd_, 16) == 0 &&
          ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0;
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~LoopbackServer() { stop(); }

  bool ok() const { return ok_; }
  uint16_t port() const { return port_; }
  int connections() const { return connections_.load(); }

  // Closes the listener and the current connection and joins the thread.
  void stop() {
    stopping_ = true;
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  // Reads what is available into `buf` within 50 ms. Returns false at end of
  // stream or error, true otherwise (also when nothing arrived).
  static bool readSome(int fd, std::string& buf) {
    pollfd p = {fd, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) return true;
    char tmp[4096];
    const ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
    if (n <= 0) return false;
    buf.append(tmp, static_cast<size_t>(n));
    return true;
  }

 private:
  void run() {
    while (!stopping_) {
      pollfd p = {fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      connections_++;
      serve_(c, stopping_);
      ::close(c);
    }
  }

  Serve serve_;
  int fd_ = -1;
  bool ok_ = false;
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> connections_{0};
  std::thread thread_;
};

}  // namespace portcullis::testing
