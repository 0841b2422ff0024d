// A TLS origin server for end-to-end tests of [[upstream]] tls = true:
// BoringSSL over blocking sockets, one thread per connection, keep-alive.
//
// Requests (Content-Length bodies only):
//   GET /big/<n>   200 with n pattern bytes (patternBytes(0, n))
//   GET /close     200, then the server closes the connection
//   POST <any>     200 with the SHA-256 hex of the body
//   Upgrade: websocket  101, then every byte is echoed back until EOF
//   otherwise      200 with "conn=<i> req=<k> resumed=<0|1> sni=<name> host=<host>"
#pragma once

#include <openssl/ssl.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace portcullis::e2e {

// Writes a certificate and its key (0600) as <dir>/<name>.crt/.key: ECDSA
// P-256, self-signed (so it is its own CA), subjectAltName `san` (e.g.
// "IP:127.0.0.1" or "DNS:api.internal"). Returns false if openssl failed.
bool makeTestCertificate(const std::string& dir, const std::string& name, const std::string& san);

class TlsUpstream {
 public:
  // Serves with the PEM certificate and key; `plaintext` = speak plain HTTP
  // instead (a misconfigured "TLS" upstream).
  TlsUpstream(const std::string& cert, const std::string& key, bool plaintext = false);
  ~TlsUpstream();
  TlsUpstream(const TlsUpstream&) = delete;
  TlsUpstream& operator=(const TlsUpstream&) = delete;

  uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int connections() const { return connections_.load(); }
  int handshakes() const { return handshakes_.load(); }
  int resumed() const { return resumed_.load(); }
  int failedHandshakes() const { return failed_.load(); }
  int requests() const { return requests_.load(); }

 private:
  void acceptLoop();
  void serve(int fd, int index);

  SSL_CTX* ctx_ = nullptr;
  bool plaintext_ = false;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> connections_{0};
  std::atomic<int> handshakes_{0};
  std::atomic<int> resumed_{0};
  std::atomic<int> failed_{0};
  std::atomic<int> requests_{0};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<int> fds_;  // open connections, shut down on stop
  std::vector<std::thread> threads_;
};

}  // namespace portcullis::e2e
