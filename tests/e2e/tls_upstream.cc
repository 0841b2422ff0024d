#include "tests/e2e/tls_upstream.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string_view>

#include "tests/e2e/harness.h"

namespace portcullis::e2e {

bool makeTestCertificate(const std::string& dir, const std::string& name, const std::string& san) {
  const std::string key = dir + "/" + name + ".key";
  const std::string crt = dir + "/" + name + ".crt";
  const std::string cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout '" + key +
                          "' -out '" + crt + "' -days 2 -subj /CN=" + name + " -addext subjectAltName=" + san +
                          " 2>/dev/null";
  return std::system(cmd.c_str()) == 0 && ::chmod(key.c_str(), 0600) == 0;
}

TlsUpstream::TlsUpstream(const std::string& cert, const std::string& key, bool plaintext) : plaintext_(plaintext) {
  // SSL_write() uses write(2): a peer that closed early (a health probe
  // reads only the status line) must be an error return, not a signal.
  std::signal(SIGPIPE, SIG_IGN);
  ctx_ = SSL_CTX_new(TLS_method());
  if (ctx_ == nullptr || SSL_CTX_use_certificate_chain_file(ctx_, cert.c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx_, key.c_str(), SSL_FILETYPE_PEM) != 1) {
    throw std::runtime_error("TlsUpstream: cannot load " + cert);
  }
  SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sa);
  if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 ||
      ::listen(listen_fd_, 64) != 0 || ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&sa), &len) != 0 ||
      ::pipe2(wake_, O_CLOEXEC) != 0) {
    throw std::runtime_error("TlsUpstream: cannot listen");
  }
  port_ = ntohs(sa.sin_port);
  acceptor_ = std::thread([this] { acceptLoop(); });
}

TlsUpstream::~TlsUpstream() {
  stopping_ = true;
  char c = 0;
  (void)!::write(wake_[1], &c, 1);
  acceptor_.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
  }
  for (std::thread& t : threads_) t.join();
  ::close(listen_fd_);
  ::close(wake_[0]);
  ::close(wake_[1]);
  SSL_CTX_free(ctx_);
}

void TlsUpstream::acceptLoop() {
  for (int index = 0; !stopping_;) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    if (::poll(p, 2, -1) < 0 || (p[1].revents & POLLIN) != 0) return;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    connections_.fetch_add(1);
    timeval tv{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    std::lock_guard<std::mutex> lock(mu_);
    fds_.push_back(fd);
    const int i = index++;
    threads_.emplace_back([this, fd, i] { serve(fd, i); });
  }
}

void TlsUpstream::serve(int fd, int index) {
  SSL* ssl = nullptr;
  if (!plaintext_) {
    ssl = SSL_new(ctx_);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) != 1) {
      failed_.fetch_add(1);
      ERR_clear_error();
      SSL_free(ssl);
      std::lock_guard<std::mutex> lock(mu_);
      ::shutdown(fd, SHUT_RDWR);
      return;  // the fd is closed with the others at destruction
    }
    handshakes_.fetch_add(1);
    if (SSL_session_reused(ssl)) resumed_.fetch_add(1);
  }
  auto readSome = [&](char* buf, size_t cap) -> long {
    if (ssl != nullptr) return SSL_read(ssl, buf, static_cast<int>(cap));
    return ::recv(fd, buf, cap, 0);
  };
  auto writeAll = [&](std::string_view data) {
    while (!data.empty()) {
      const size_t chunk = data.size() > 65536 ? 65536 : data.size();
      const long n = ssl != nullptr ? SSL_write(ssl, data.data(), static_cast<int>(chunk))
                                    : ::send(fd, data.data(), chunk, MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  };
  std::string buf;
  char tmp[65536];
  for (int k = 0;; ++k) {
    size_t end;
    while ((end = buf.find("\r\n\r\n")) == std::string::npos) {
      const long n = readSome(tmp, sizeof(tmp));
      if (n <= 0) goto done;
      buf.append(tmp, static_cast<size_t>(n));
      if (ssl == nullptr && buf[0] == 0x16) {
        // A TLS record on a plaintext server: answer like nginx does.
        writeAll("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        goto done;
      }
    }
    {
      const std::string head = toLower(buf.substr(0, end));
      buf.erase(0, end + 4);
      uint64_t need = 0;
      const size_t cl = head.find("\r\ncontent-length:");
      if (cl != std::string::npos) need = std::strtoull(head.c_str() + cl + 17, nullptr, 10);
      Sha256 h;
      while (need > 0) {
        if (buf.empty()) {
          const long n = readSome(tmp, sizeof(tmp));
          if (n <= 0) goto done;
          buf.append(tmp, static_cast<size_t>(n));
        }
        const size_t take = buf.size() < need ? buf.size() : static_cast<size_t>(need);
        h.update(buf.data(), take);
        buf.erase(0, take);
        need -= take;
      }
      requests_.fetch_add(1);
      if (head.find("\r\nupgrade: websocket") != std::string::npos) {
        // Switch, then echo every byte back until EOF (WebSocket frames
        // are not interpreted: the proxy's tunnel is what is under test).
        if (!writeAll("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: unchecked\r\n\r\n") ||
            (!buf.empty() && !writeAll(buf))) {
          goto done;
        }
        for (;;) {
          const long n = readSome(tmp, sizeof(tmp));
          if (n <= 0 || !writeAll(std::string_view(tmp, static_cast<size_t>(n)))) goto done;
        }
      }
      const std::string target = head.substr(head.find(' ') + 1, head.find(' ', head.find(' ') + 1) - head.find(' ') - 1);
      std::string host;
      const size_t hp = head.find("\r\nhost:");
      if (hp != std::string::npos) {
        host = head.substr(hp + 7, head.find("\r\n", hp + 2) - hp - 7);
        while (!host.empty() && host.front() == ' ') host.erase(0, 1);
      }
      std::string body;
      bool close_after = false;
      if (head.rfind("post ", 0) == 0) {
        body = h.hexDigest();
      } else if (target.rfind("/big/", 0) == 0) {
        const uint64_t n = std::strtoull(target.c_str() + 5, nullptr, 10);
        const std::string hdr = "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(n) + "\r\n\r\n";
        if (!writeAll(hdr)) goto done;
        for (uint64_t off = 0; off < n;) {
          const size_t chunk = n - off < 65536 ? static_cast<size_t>(n - off) : 65536;
          if (!writeAll(patternBytes(off, chunk))) goto done;
          off += chunk;
        }
        continue;
      } else {
        const char* sni = ssl != nullptr ? SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) : nullptr;
        close_after = target == "/close";
        body = "conn=" + std::to_string(index) + " req=" + std::to_string(k) +
               " resumed=" + (ssl != nullptr && SSL_session_reused(ssl) ? "1" : "0") +
               " sni=" + (sni != nullptr ? sni : "") + " host=" + host;
      }
      const std::string resp = "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) +
                               (close_after ? "\r\nConnection: close" : "") + "\r\n\r\n" + body;
      if (!writeAll(resp) || close_after) goto done;
    }
  }
done:
  if (ssl != nullptr) {
    SSL_shutdown(ssl);
    SSL_free(ssl);
  }
  ERR_clear_error();
  std::lock_guard<std::mutex> lock(mu_);
  ::shutdown(fd, SHUT_RDWR);
}

}  // namespace portcullis::e2e
