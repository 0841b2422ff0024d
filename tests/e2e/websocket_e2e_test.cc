// WebSocket tunnels end to end (route `websocket = true`, proxy/tunnel.cc):
// the handshake passes the filter chain and goes upstream with its Upgrade;
// after the upstream's 101 the proxy relays bytes both ways without reading
// them. The upstream here is an in-test server speaking real RFC 6455
// framing (the client masks, the server does not), so what the tests check
// is what a browser and a WebSocket server would see.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/base64.h>
#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/e2e/harness.h"
#include "tests/e2e/tls_upstream.h"

namespace portcullis::e2e {
namespace {

using Clock = std::chrono::steady_clock;

// The key and accept value of RFC 6455 §1.3.
constexpr char kKey[] = "dGhlIHNhbXBsZSBub25jZQ==";
constexpr char kAccept[] = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

std::string acceptFor(std::string_view key) {
  const std::string in = std::string(key) + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  uint8_t digest[SHA_DIGEST_LENGTH];
  SHA1(reinterpret_cast<const uint8_t*>(in.data()), in.size(), digest);
  uint8_t out[64];
  size_t n = EVP_EncodeBlock(out, digest, sizeof(digest));
  return std::string(reinterpret_cast<char*>(out), n);
}

std::string handshake(std::string_view path, std::string_view extra = "", std::string_view key = kKey) {
  return "GET " + std::string(path) +
         " HTTP/1.1\r\nHost: e2e.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " +
         std::string(key) + "\r\nSec-WebSocket-Version: 13\r\n" + std::string(extra) + "\r\n";
}

// ---------------------------------------------------------------------------
// RFC 6455 framing (no fragmentation, no extensions)

enum Opcode : uint8_t { kText = 1, kBinary = 2, kClose = 8, kPing = 9, kPong = 10 };

std::string frame(uint8_t opcode, std::string_view payload, bool mask) {
  static std::mt19937 rng(12345);
  std::string f;
  f.push_back(static_cast<char>(0x80 | opcode));
  const uint8_t m = mask ? 0x80 : 0;
  const uint64_t n = payload.size();
  if (n < 126) {
    f.push_back(static_cast<char>(m | n));
  } else if (n < 65536) {
    f.push_back(static_cast<char>(m | 126));
    f.push_back(static_cast<char>(n >> 8));
    f.push_back(static_cast<char>(n & 0xff));
  } else {
    f.push_back(static_cast<char>(m | 127));
    for (int i = 7; i >= 0; --i) f.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  }
  if (!mask) {
    f.append(payload);
    return f;
  }
  uint8_t key[4];
  for (uint8_t& k : key) k = static_cast<uint8_t>(rng());
  f.append(reinterpret_cast<char*>(key), 4);
  const size_t at = f.size();
  f.append(payload);
  for (size_t i = 0; i < n; ++i) f[at + i] = static_cast<char>(f[at + i] ^ key[i % 4]);
  return f;
}

struct Frame {
  uint8_t opcode = 0;
  bool masked = false;
  std::string payload;
};

// Takes one complete frame off the front of `buf` (unmasking it); false if
// `buf` does not hold one yet.
bool takeFrame(std::string& buf, Frame& out) {
  if (buf.size() < 2) return false;
  const auto* p = reinterpret_cast<const uint8_t*>(buf.data());
  size_t at = 2;
  uint64_t n = p[1] & 0x7f;
  if (n == 126) {
    if (buf.size() < 4) return false;
    n = (uint64_t(p[2]) << 8) | p[3];
    at = 4;
  } else if (n == 127) {
    if (buf.size() < 10) return false;
    n = 0;
    for (int i = 0; i < 8; ++i) n = (n << 8) | p[2 + i];
    at = 10;
  }
  out.masked = (p[1] & 0x80) != 0;
  uint8_t key[4] = {0, 0, 0, 0};
  if (out.masked) {
    if (buf.size() < at + 4) return false;
    std::memcpy(key, p + at, 4);
    at += 4;
  }
  if (buf.size() < at + n) return false;
  out.opcode = p[0] & 0x0f;
  out.payload.assign(buf, at, n);
  if (out.masked) {
    for (size_t i = 0; i < n; ++i) out.payload[i] = static_cast<char>(out.payload[i] ^ key[i % 4]);
  }
  buf.erase(0, at + n);
  return true;
}

// ---------------------------------------------------------------------------
// Byte streams: a plain socket (client or upstream side) and a TLS client.

class Peer {
 public:
  virtual ~Peer() = default;
  virtual bool send(std::string_view data) = 0;
  // Appends what arrives: 1 data, 0 EOF, -1 timeout, -2 reset or error.
  virtual int recvSome(std::string& out) = 0;

  // Reads until `buf` holds a whole head; returns it (the bytes after it
  // stay in `buf`), or "" on EOF/timeout.
  std::string readHead(std::string& buf) {
    size_t end;
    while ((end = buf.find("\r\n\r\n")) == std::string::npos) {
      if (recvSome(buf) != 1) return {};
      if (buf.size() > 65536) return {};
    }
    std::string head = buf.substr(0, end + 4);
    buf.erase(0, end + 4);
    return head;
  }
  bool readFrame(std::string& buf, Frame& f) {
    while (!takeFrame(buf, f)) {
      if (recvSome(buf) != 1) return false;
    }
    return true;
  }
  // Waits for EOF (or a reset), discarding data; true if it came.
  bool waitEof(std::string& buf) {
    for (;;) {
      buf.clear();
      const int r = recvSome(buf);
      if (r == 0 || r == -2) return true;
      if (r == -1) return false;
    }
  }
};

class FdPeer : public Peer {
 public:
  explicit FdPeer(int fd, bool owned = true) : fd_(fd), owned_(owned) {}
  ~FdPeer() override {
    if (owned_ && fd_ >= 0) ::close(fd_);
  }
  static std::unique_ptr<FdPeer> connect(uint16_t port, Millis timeout = Millis(10000)) {
    int fd = Client::tryConnect(port, timeout);
    if (fd < 0) return nullptr;
    return std::make_unique<FdPeer>(fd);
  }
  int fd() const { return fd_; }
  bool send(std::string_view data) override { return ScriptedUpstream::writeAll(fd_, data); }
  int recvSome(std::string& out) override {
    char tmp[65536];
    for (;;) {
      ssize_t n = ::recv(fd_, tmp, sizeof(tmp), 0);
      if (n > 0) {
        out.append(tmp, static_cast<size_t>(n));
        return 1;
      }
      if (n == 0) return 0;
      if (errno == EINTR) continue;
      return errno == EAGAIN || errno == EWOULDBLOCK ? -1 : -2;
    }
  }
  void closeNow() {
    ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
  bool owned_;
};

// Makes a self-signed ECDSA certificate for 127.0.0.1 with the openssl command.
void makeCertificate(const TempDir& dir) { ASSERT_TRUE(makeTestCertificate(dir.path(), "ec", "IP:127.0.0.1")); }

class TlsPeer : public Peer {
 public:
  ~TlsPeer() override {
    if (ssl_ != nullptr) SSL_free(ssl_);
    if (ctx_ != nullptr) SSL_CTX_free(ctx_);
    if (fd_ >= 0) ::close(fd_);
  }
  bool connect(uint16_t port) {
    fd_ = Client::tryConnect(port, Millis(10000));
    if (fd_ < 0) return false;
    ctx_ = SSL_CTX_new(TLS_method());
    ssl_ = SSL_new(ctx_);
    SSL_set_fd(ssl_, fd_);
    const bool ok = SSL_connect(ssl_) == 1;
    ERR_clear_error();
    return ok;
  }
  bool send(std::string_view data) override {
    while (!data.empty()) {
      int n = SSL_write(ssl_, data.data(), static_cast<int>(std::min<size_t>(data.size(), 16384)));
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  int recvSome(std::string& out) override {
    char tmp[65536];
    int n = SSL_read(ssl_, tmp, sizeof(tmp));
    if (n > 0) {
      out.append(tmp, static_cast<size_t>(n));
      return 1;
    }
    const int err = SSL_get_error(ssl_, n);
    ERR_clear_error();
    if (err == SSL_ERROR_ZERO_RETURN) return 0;
    if (err == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK)) return -1;
    return err == SSL_ERROR_SYSCALL && n == 0 ? 0 : -2;
  }
  // Sends close_notify (the TLS way of saying EOF).
  void shutdownTls() { SSL_shutdown(ssl_); }

 private:
  int fd_ = -1;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
};

// ---------------------------------------------------------------------------
// An upstream WebSocket server on a ScriptedUpstream. Each connection: read
// the request head; unless `answer` replaces it, reply 101 with the right
// Sec-WebSocket-Accept (and `greeting`, a frame, in the same write); then
// echo every frame unmasked until a close frame (echoed, then the socket
// closes) or EOF. What it saw is recorded for the test.

struct Seen {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> heads;  // request heads, lower-cased, in order
  int connections_done = 0;
  bool eof = false;                // the proxy closed the connection (recv 0)
  bool reset = false;
  uint64_t frames = 0;
  uint64_t bytes_after_101 = 0;    // bytes it sent after its 101 head
  uint64_t bytes_after_head = 0;   // bytes it received after the request head

  bool waitDone(int n, Millis timeout = Millis(10000)) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, timeout, [&] { return connections_done >= n; });
  }
};

struct EchoOptions {
  std::string answer;    // non-empty: sent instead of the 101 (then requests are served in a loop)
  std::string greeting;  // sent right after the 101 head, in the same write
  bool close_after_greeting = false;  // close right after the 101 + greeting
};

void serveWebSocket(int fd, Seen& seen, const EchoOptions& o) {
  FdPeer peer(fd, /*owned=*/false);
  std::string buf;
  std::string head = peer.readHead(buf);
  if (head.empty()) return;
  {
    std::lock_guard<std::mutex> lock(seen.mu);
    seen.heads.push_back(toLower(head));
  }
  if (!o.answer.empty()) {
    // Plain HTTP: the same answer to every request on the connection.
    for (;;) {
      if (!peer.send(o.answer)) return;
      buf.clear();
      head = peer.readHead(buf);
      if (head.empty()) return;
      std::lock_guard<std::mutex> lock(seen.mu);
      seen.heads.push_back(toLower(head));
    }
  }
  const std::string lower = toLower(head);
  std::string key;
  size_t k = lower.find("\r\nsec-websocket-key: ");
  if (k != std::string::npos) key = head.substr(k + 21, head.find("\r\n", k + 21) - (k + 21));
  std::string reply = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: " + acceptFor(key) + "\r\nServer: backend/1.0\r\n\r\n";
  reply += o.greeting;
  uint64_t sent = o.greeting.size();
  if (!peer.send(reply)) return;
  if (o.close_after_greeting) return;
  uint64_t received = buf.size();
  for (;;) {
    Frame f;
    while (!takeFrame(buf, f)) {
      const size_t before = buf.size();
      const int r = peer.recvSome(buf);
      if (r != 1) {
        std::lock_guard<std::mutex> lock(seen.mu);
        seen.eof = r == 0;
        seen.reset = r == -2;
        seen.bytes_after_101 = sent;
        seen.bytes_after_head = received;
        return;
      }
      received += buf.size() - before;
    }
    {
      std::lock_guard<std::mutex> lock(seen.mu);
      ++seen.frames;
    }
    EXPECT_TRUE(f.masked) << "a client frame reached the upstream unmasked";
    const std::string echo = frame(f.opcode == kPing ? uint8_t{kPong} : f.opcode, f.payload, false);
    if (!peer.send(echo)) return;
    sent += echo.size();
    if (f.opcode == kClose) {
      std::lock_guard<std::mutex> lock(seen.mu);
      seen.bytes_after_101 = sent;
      seen.bytes_after_head = received;
      return;  // the socket closes
    }
  }
}

ScriptedUpstream::Handler webSocketHandler(Seen& seen, EchoOptions o = {}) {
  return [&seen, o](int fd, int) {
    serveWebSocket(fd, seen, o);
    std::lock_guard<std::mutex> lock(seen.mu);
    ++seen.connections_done;
    seen.cv.notify_all();
  };
}

// A proxy with a websocket route /ws/ and a plain route / to `upstream`.
ProxyOptions wsOptions(const std::string& upstream) {
  ProxyOptions o = ProxyOptions::forBackend(upstream);
  RouteSpec ws;
  ws.prefix = "/ws/";
  ws.extra_toml = "websocket = true\n";
  RouteSpec plain;
  plain.prefix = "/";
  o.routes = {ws, plain};
  return o;
}

// Lines of the access log (written by its own thread: polls until `n` are there).
std::vector<JsonValue> accessLog(Proxy& proxy, size_t n) {
  std::vector<JsonValue> out;
  const auto deadline = Clock::now() + Millis(10000);
  while (Clock::now() < deadline) {
    out.clear();
    std::ifstream in(proxy.dir().file("access.log"));
    std::string line;
    while (std::getline(in, line)) {
      if (auto j = parseJson(line)) out.push_back(*j);
    }
    if (out.size() >= n) break;
    std::this_thread::sleep_for(Millis(20));
  }
  return out;
}

double numberOf(const JsonValue& j, std::string_view key) {
  const JsonValue* v = j.get(key);
  return v != nullptr && v->type == JsonValue::Type::kNumber ? v->num : -1;
}

// Reads the 101 and checks what the client must see in it.
void expectSwitch(const std::string& head) {
  const std::string h = toLower(head);
  EXPECT_EQ(h.rfind("http/1.1 101 ", 0), 0u) << head;
  EXPECT_NE(h.find("\r\nupgrade: websocket\r\n"), std::string::npos) << head;
  EXPECT_NE(h.find("\r\nconnection: upgrade\r\n"), std::string::npos) << head;
  EXPECT_NE(head.find(std::string("\r\nSec-WebSocket-Accept: ") + kAccept + "\r\n"), std::string::npos) << head;
  EXPECT_NE(h.find("\r\nx-request-id: "), std::string::npos) << head;
  EXPECT_EQ(h.find("\r\nserver:"), std::string::npos) << head;
  EXPECT_EQ(h.find("content-length"), std::string::npos) << head;
  EXPECT_EQ(h.find("transfer-encoding"), std::string::npos) << head;
}

// Sends each payload as a masked frame and expects it echoed.
void expectEchoes(Peer& c, std::string& buf, const std::vector<std::string>& payloads, uint8_t opcode = kBinary) {
  for (const std::string& p : payloads) {
    ASSERT_TRUE(c.send(frame(opcode, p, true)));
    Frame f;
    ASSERT_TRUE(c.readFrame(buf, f)) << "no echo of " << p.size() << " bytes";
    EXPECT_FALSE(f.masked);
    EXPECT_EQ(f.opcode, opcode);
    EXPECT_EQ(f.payload.size(), p.size());
    EXPECT_TRUE(f.payload == p);
  }
}

// ---------------------------------------------------------------------------

TEST(WebSocketE2E, HandshakeThenFramesBothWaysIncludingEarlyBytes) {
  Seen seen;
  EchoOptions eo;
  eo.greeting = frame(kText, "welcome", false);
  ScriptedUpstream upstream(webSocketHandler(seen, eo));
  Proxy proxy(wsOptions(upstream.address()));
  auto c = FdPeer::connect(proxy.httpPort());
  ASSERT_TRUE(c);
  // The first frame leaves in the same packet as the handshake: the proxy
  // must pass it on after the head, not parse it as HTTP.
  const std::string early = frame(kText, "early bird", true);
  ASSERT_TRUE(c->send(handshake("/ws/chat?room=1", "Sec-WebSocket-Protocol: chat\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
                                "Origin: https://app.example\r\n") + early));
  std::string buf;
  const std::string head = c->readHead(buf);
  ASSERT_FALSE(head.empty());
  expectSwitch(head);

  Frame f;
  ASSERT_TRUE(c->readFrame(buf, f));  // sent by the upstream right behind its 101
  EXPECT_EQ(f.opcode, kText);
  EXPECT_EQ(f.payload, "welcome");
  ASSERT_TRUE(c->readFrame(buf, f));
  EXPECT_EQ(f.payload, "early bird");

  // What the upstream got: the handshake with exactly one upgrade, and the
  // proxy's own headers; nothing hop-by-hop besides the upgrade.
  {
    std::lock_guard<std::mutex> lock(seen.mu);
    ASSERT_EQ(seen.heads.size(), 1u);
    const std::string& h = seen.heads[0];
    EXPECT_EQ(h.rfind("get /ws/chat?room=1 http/1.1\r\n", 0), 0u) << h;
    EXPECT_NE(h.find("\r\nupgrade: websocket\r\n"), std::string::npos) << h;
    EXPECT_NE(h.find("\r\nconnection: upgrade\r\n"), std::string::npos) << h;
    EXPECT_NE(h.find(std::string("\r\nsec-websocket-key: ") + toLower(kKey) + "\r\n"), std::string::npos) << h;
    EXPECT_NE(h.find("\r\nsec-websocket-version: 13\r\n"), std::string::npos) << h;
    EXPECT_NE(h.find("\r\nsec-websocket-protocol: chat\r\n"), std::string::npos) << h;
    EXPECT_NE(h.find("\r\nx-request-id: "), std::string::npos) << h;
    EXPECT_NE(h.find("\r\nx-forwarded-for: 127.0.0.1\r\n"), std::string::npos) << h;
    EXPECT_EQ(h.find("http2-settings"), std::string::npos) << h;
    EXPECT_EQ(h.find("content-length"), std::string::npos) << h;
  }

  expectEchoes(*c, buf, {"", "x", std::string(125, 'a'), std::string(126, 'b'), patternBytes(0, 65535),
                         patternBytes(7, 65536), patternBytes(3, 300000)});
  ASSERT_TRUE(c->send(frame(kPing, "ping!", true)));
  ASSERT_TRUE(c->readFrame(buf, f));
  EXPECT_EQ(f.opcode, kPong);
  EXPECT_EQ(f.payload, "ping!");
  ASSERT_TRUE(c->send(frame(kClose, std::string("\x03\xe8", 2), true)));
  ASSERT_TRUE(c->readFrame(buf, f));
  EXPECT_EQ(f.opcode, kClose);
  EXPECT_TRUE(c->waitEof(buf)) << "the upstream closed, so must the client side";
  ASSERT_TRUE(seen.waitDone(1));

  // One access log line for the whole tunnel, and the tunnel metrics.
  std::vector<JsonValue> log = accessLog(proxy, 1);
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(numberOf(log[0], "status"), 101);
  EXPECT_EQ(numberOf(log[0], "upstream_status"), 101);
  EXPECT_EQ(log[0].getString("path"), "/ws/chat");
  EXPECT_EQ(log[0].getString("method"), "GET");
  EXPECT_GT(numberOf(log[0], "bytes_in"), 400000);
  EXPECT_GT(numberOf(log[0], "bytes_out"), 400000);
  uint64_t up_bytes = 0, down_bytes = 0;
  {
    std::lock_guard<std::mutex> lock(seen.mu);
    up_bytes = seen.bytes_after_head;
    down_bytes = seen.bytes_after_101;
  }
  EXPECT_EQ(proxy.waitForMetric("portcullis_websocket_tunnels_total", 1), 1);
  EXPECT_EQ(proxy.metricOr0("portcullis_websocket_tunnels_active"), 0);
  EXPECT_EQ(proxy.metricOr0("portcullis_websocket_tunnel_bytes_total{direction=\"to_upstream\"}"), up_bytes);
  EXPECT_EQ(proxy.metricOr0("portcullis_websocket_tunnel_bytes_total{direction=\"to_client\"}"), down_bytes);
  EXPECT_EQ(proxy.metricOr0("portcullis_requests_total{route=\"/ws/\",method=\"GET\",status=\"101\"}"), 1);
}

TEST(WebSocketE2E, RouteWithoutWebsocketStripsUpgradeAndServesPlainHttp) {
  Seen seen;
  EchoOptions eo;
  eo.answer = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain";
  ScriptedUpstream upstream(webSocketHandler(seen, eo));
  Proxy proxy(wsOptions(upstream.address()));
  Client c(proxy.httpPort());
  // A WebSocket handshake on a route without websocket = true, then an h2c
  // upgrade on the websocket route: both served as plain HTTP/1.1, and the
  // connection stays usable for the next request.
  const std::string h2c =
      "GET /ws/h2 HTTP/1.1\r\nHost: e2e.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
      "HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
  for (const std::string& req : {handshake("/plain"), h2c, getRequest("/after")}) {
    HttpResponse r = c.roundTrip(req);
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "plain");
    EXPECT_FALSE(r.hasHeader("upgrade"));
  }
  ASSERT_EQ(upstream.connectionCount(), 1);
  std::lock_guard<std::mutex> lock(seen.mu);
  ASSERT_EQ(seen.heads.size(), 3u);
  for (const std::string& h : seen.heads) {
    EXPECT_EQ(h.find("upgrade"), std::string::npos) << h;
    EXPECT_EQ(h.find("http2-settings"), std::string::npos) << h;
  }
  EXPECT_NE(seen.heads[0].find("\r\nsec-websocket-key: "), std::string::npos) << "end-to-end fields pass";
  EXPECT_EQ(seen.heads[2].rfind("get /after ", 0), 0u);
}

TEST(WebSocketE2E, MalformedHandshakeOnWebsocketRouteIs400AndNothingReachesTheUpstream) {
  ScriptedUpstream upstream;  // counts connections
  Proxy proxy(wsOptions(upstream.address()));
  const std::string base = "Host: e2e.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"POST", "POST /ws/x HTTP/1.1\r\n" + base + "Sec-WebSocket-Key: " + kKey +
                   "\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"},
      {"no key", "GET /ws/x HTTP/1.1\r\n" + base + "Sec-WebSocket-Version: 13\r\n\r\n"},
      {"short key", "GET /ws/x HTTP/1.1\r\n" + base + "Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n"},
      {"key not base64", "GET /ws/x HTTP/1.1\r\n" + base +
                             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j!Q==\r\nSec-WebSocket-Version: 13\r\n\r\n"},
      {"two keys", "GET /ws/x HTTP/1.1\r\n" + base + "Sec-WebSocket-Key: " + kKey + "\r\nSec-WebSocket-Key: " + kKey +
                       "\r\nSec-WebSocket-Version: 13\r\n\r\n"},
      {"version 8", "GET /ws/x HTTP/1.1\r\n" + base + "Sec-WebSocket-Key: " + kKey +
                        "\r\nSec-WebSocket-Version: 8\r\n\r\n"},
      {"no version", "GET /ws/x HTTP/1.1\r\n" + base + "Sec-WebSocket-Key: " + kKey + "\r\n\r\n"},
      {"no connection upgrade", "GET /ws/x HTTP/1.1\r\nHost: e2e.test\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n"
                                "Sec-WebSocket-Key: " + std::string(kKey) + "\r\nSec-WebSocket-Version: 13\r\n\r\n"},
      {"body", "GET /ws/x HTTP/1.1\r\n" + base + "Sec-WebSocket-Key: " + kKey +
                   "\r\nSec-WebSocket-Version: 13\r\nContent-Length: 5\r\n\r\nhello"},
      {"HTTP/1.0", "GET /ws/x HTTP/1.0\r\n" + base + "Sec-WebSocket-Key: " + kKey +
                       "\r\nSec-WebSocket-Version: 13\r\n\r\n"},
  };
  for (const auto& [name, req] : cases) {
    SCOPED_TRACE(name);
    Client c(proxy.httpPort());
    HttpResponse r = c.roundTrip(req + frame(kText, "never forwarded", true));
    expectProxyError(r, 400, "bad_request");
    EXPECT_EQ(r.header("connection").value_or(""), "close");
    EXPECT_TRUE(c.waitClosed(Millis(5000)));
  }
  EXPECT_EQ(upstream.connectionCount(), 0);
  EXPECT_EQ(proxy.waitForMetric("portcullis_refusals_total{filter=\"websocket\",reason=\"websocket version not 13\"}", 2),
            2);  // "version 8" and "no version"
}

TEST(WebSocketE2E, HandshakeRunsTheFilterChain) {
  TempDir dir;
  const std::string store = dir.file("tokens.toml");
  const std::string cmd = std::string(PORTCULLISCTL_BIN) + " token issue --store " + store +
                          " --account acme --role chat --label ws 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char line[512] = {0};
  std::string token = fgets(line, sizeof(line), p) != nullptr ? line : "";
  pclose(p);
  while (!token.empty() && (token.back() == '\n' || token.back() == ' ')) token.pop_back();
  ASSERT_EQ(token.rfind("pct_", 0), 0u) << token;

  Seen seen;
  ScriptedUpstream upstream(webSocketHandler(seen));
  ProxyOptions o = wsOptions(upstream.address());
  o.routes[0].auth = true;
  o.routes[0].prefix = "/ws/";
  o.extra_toml = "[auth]\ntoken_store = \"" + store + "\"\n[[role]]\nname = \"chat\"\nallow = [\"GET /ws/acme/*\"]\n";
  Proxy proxy(o);
  {
    Client c(proxy.httpPort());
    HttpResponse r = c.roundTrip(handshake("/ws/acme/room"));
    expectProxyError(r, 401, "unauthorized");
    EXPECT_EQ(r.header("www-authenticate").value_or(""), "Bearer");
    HttpResponse r2 = c.roundTrip(handshake("/ws/other/room", "Authorization: Bearer " + token + "\r\n"));
    expectProxyError(r2, 403, "forbidden");
  }
  EXPECT_EQ(upstream.connectionCount(), 0);

  auto c = FdPeer::connect(proxy.httpPort());
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->send(handshake("/ws/acme/room", "Authorization: Bearer " + token + "\r\n")));
  std::string buf;
  expectSwitch(c->readHead(buf));
  expectEchoes(*c, buf, {"authorised"});
  {
    std::lock_guard<std::mutex> lock(seen.mu);
    ASSERT_EQ(seen.heads.size(), 1u);
    EXPECT_NE(seen.heads[0].find("\r\nx-portcullis-account: acme\r\n"), std::string::npos) << seen.heads[0];
    EXPECT_EQ(seen.heads[0].find("authorization"), std::string::npos) << seen.heads[0];
  }
  c->closeNow();
  ASSERT_TRUE(seen.waitDone(1));
  std::vector<JsonValue> log = accessLog(proxy, 3);
  ASSERT_EQ(log.size(), 3u);
  EXPECT_EQ(numberOf(log[2], "status"), 101);
  EXPECT_EQ(log[2].getString("account"), "acme");
}

TEST(WebSocketE2E, UpstreamThatDoesNotSwitchGivesAnOrdinaryResponse) {
  Seen seen;
  EchoOptions eo;
  eo.answer = "HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\nno way";
  ScriptedUpstream upstream(webSocketHandler(seen, eo));
  Proxy proxy(wsOptions(upstream.address()));
  Client c(proxy.httpPort());
  HttpResponse r = c.roundTrip(handshake("/ws/x"));
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.body, "no way");
  EXPECT_FALSE(r.hasHeader("upgrade"));
  HttpResponse again = c.roundTrip(getRequest("/ws/next"));  // still HTTP on both hops
  EXPECT_EQ(again.status, 403);
  EXPECT_EQ(upstream.connectionCount(), 1);
}

TEST(WebSocketE2E, SwitchWithoutWebsocketUpgradeIs502) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"no upgrade", "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n"},
      {"other protocol", "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"},
      {"no connection", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"},
  };
  for (const auto& [name, answer] : cases) {
    SCOPED_TRACE(name);
    Seen seen;
    EchoOptions eo;
    eo.answer = answer + frame(kText, "garbage", false);
    ScriptedUpstream upstream(webSocketHandler(seen, eo));
    Proxy proxy(wsOptions(upstream.address()));
    Client c(proxy.httpPort());
    HttpResponse r = c.roundTrip(handshake("/ws/x"));
    expectProxyError(r, 502, "bad_gateway");
    EXPECT_TRUE(c.waitClosed(Millis(5000)));
  }
  // A 101 to a request that never asked for it (a plain route) is as bad.
  Seen seen;
  EchoOptions eo;
  eo.answer = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
  ScriptedUpstream upstream(webSocketHandler(seen, eo));
  Proxy proxy(wsOptions(upstream.address()));
  Client c(proxy.httpPort());
  expectProxyError(c.roundTrip(handshake("/plain")), 502, "bad_gateway");
}

TEST(WebSocketE2E, EofOnEitherSideClosesBoth) {
  Seen seen;
  ScriptedUpstream upstream([&](int fd, int index) {
    EchoOptions o;
    if (index == 1) {
      o.greeting = frame(kText, "bye", false);
      o.close_after_greeting = true;  // the upstream goes away
    }
    serveWebSocket(fd, seen, o);
    std::lock_guard<std::mutex> lock(seen.mu);
    ++seen.connections_done;
    seen.cv.notify_all();
  });
  Proxy proxy(wsOptions(upstream.address()));
  {
    // The client closes: the upstream sees EOF.
    auto c = FdPeer::connect(proxy.httpPort());
    ASSERT_TRUE(c);
    ASSERT_TRUE(c->send(handshake("/ws/a")));
    std::string buf;
    expectSwitch(c->readHead(buf));
    expectEchoes(*c, buf, {"one", "two"});
    ::shutdown(c->fd(), SHUT_WR);
    ASSERT_TRUE(seen.waitDone(1));
    std::lock_guard<std::mutex> lock(seen.mu);
    EXPECT_TRUE(seen.eof);
    EXPECT_FALSE(seen.reset);
    EXPECT_TRUE(c->waitEof(buf));
  }
  {
    // The upstream closes: the client gets what it sent before, then EOF.
    auto c = FdPeer::connect(proxy.httpPort());
    ASSERT_TRUE(c);
    ASSERT_TRUE(c->send(handshake("/ws/b")));
    std::string buf;
    expectSwitch(c->readHead(buf));
    Frame f;
    ASSERT_TRUE(c->readFrame(buf, f));
    EXPECT_EQ(f.payload, "bye");
    EXPECT_TRUE(c->waitEof(buf));
  }
  EXPECT_EQ(proxy.waitForMetric("portcullis_websocket_tunnels_total", 2), 2);
  EXPECT_EQ(proxy.metricOr0("portcullis_websocket_tunnels_active"), 0);
  std::vector<JsonValue> log = accessLog(proxy, 2);
  ASSERT_EQ(log.size(), 2u);
  for (const JsonValue& l : log) EXPECT_EQ(numberOf(l, "status"), 101);
}

TEST(WebSocketE2E, LargeTransfersWithSlowReadersStayBoundedAndIntact) {
  constexpr uint64_t kBytes = 8ull << 20;  // each way
  constexpr size_t kFrame = 65536;
  std::mutex mu;
  std::condition_variable cv;
  std::string upstream_sha;
  bool upstream_done = false;
  ScriptedUpstream upstream([&](int fd, int) {
    FdPeer peer(fd, false);
    const timeval tv{20, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    std::string buf;
    std::string head = peer.readHead(buf);
    if (head.empty()) return;
    std::string reply = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Accept: " + acceptFor(kKey) + "\r\n\r\n";
    if (!peer.send(reply)) return;
    std::thread writer([&] {
      for (uint64_t off = 0; off < kBytes; off += kFrame) {
        if (!peer.send(frame(kBinary, patternBytes(off, kFrame), false))) return;
      }
    });
    std::this_thread::sleep_for(Millis(500));  // a slow reader: the proxy must stop reading the client
    Sha256 h;
    uint64_t got = 0;
    Frame f;
    while (got < kBytes && peer.readFrame(buf, f)) {
      EXPECT_TRUE(f.masked);
      h.update(f.payload);
      got += f.payload.size();
      if ((got & ((1u << 20) - 1)) == 0) std::this_thread::sleep_for(Millis(10));
    }
    writer.join();
    std::lock_guard<std::mutex> lock(mu);
    upstream_sha = h.hexDigest();
    upstream_done = true;
    cv.notify_all();
  });
  Proxy proxy(wsOptions(upstream.address()));
  auto c = FdPeer::connect(proxy.httpPort(), Millis(20000));
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->send(handshake("/ws/bulk")));
  std::string buf;
  expectSwitch(c->readHead(buf));

  std::atomic<bool> done{false};
  double max_buffered = 0;
  std::thread monitor([&] {
    while (!done.load()) {
      max_buffered = std::max(max_buffered, proxy.metricOr0("portcullis_buffered_bytes"));
      std::this_thread::sleep_for(Millis(10));
    }
  });
  std::thread writer([&] {
    for (uint64_t off = 0; off < kBytes; off += kFrame) {
      if (!c->send(frame(kBinary, patternBytes(off, kFrame), true))) return;
    }
  });
  std::this_thread::sleep_for(Millis(500));  // a slow reader here too
  Sha256 h;
  uint64_t got = 0;
  Frame f;
  while (got < kBytes && c->readFrame(buf, f)) {
    EXPECT_FALSE(f.masked);
    h.update(f.payload);
    got += f.payload.size();
    if ((got & ((1u << 20) - 1)) == 0) std::this_thread::sleep_for(Millis(10));
  }
  writer.join();
  EXPECT_EQ(got, kBytes);
  EXPECT_EQ(h.hexDigest(), patternSha256(kBytes));
  {
    std::unique_lock<std::mutex> lock(mu);
    EXPECT_TRUE(cv.wait_for(lock, Millis(30000), [&] { return upstream_done; }));
    EXPECT_EQ(upstream_sha, patternSha256(kBytes));
  }
  done = true;
  monitor.join();
  c->closeNow();
  // One client connection: its read buffer and the upstream's, 64 KiB each.
  EXPECT_GT(max_buffered, 0);
  EXPECT_LE(max_buffered, 2 * 65536) << "the tunnel buffered more than its two pooled buffers";
}


TEST(WebSocketE2E, IdleTunnelIsClosedAfterTunnelIdleMs) {
  Seen seen;
  ScriptedUpstream upstream(webSocketHandler(seen));
  ProxyOptions o = wsOptions(upstream.address());
  o.timeouts["tunnel_idle_ms"] = 1500;
  Proxy proxy(o);
  auto c = FdPeer::connect(proxy.httpPort());
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->send(handshake("/ws/idle")));
  std::string buf;
  expectSwitch(c->readHead(buf));
  // Traffic keeps it open well past the idle time...
  const auto busy_until = Clock::now() + Millis(3500);
  while (Clock::now() < busy_until) {
    expectEchoes(*c, buf, {"tick"});
    std::this_thread::sleep_for(Millis(100));
  }
  EXPECT_EQ(proxy.metricOr0("portcullis_websocket_tunnels_active"), 1);
  // ...silence closes both sides.
  EXPECT_TRUE(c->waitEof(buf));
  ASSERT_TRUE(seen.waitDone(1));
  {
    std::lock_guard<std::mutex> lock(seen.mu);
    EXPECT_TRUE(seen.eof);
  }
  EXPECT_EQ(proxy.waitForMetric("portcullis_websocket_tunnels_total", 1), 1);
  EXPECT_EQ(accessLog(proxy, 1).size(), 1u);
}

TEST(WebSocketE2E, TunnelOverTheTlsListener) {
  TempDir dir;
  makeCertificate(dir);
  Seen seen;
  EchoOptions eo;
  eo.greeting = frame(kText, "secure hello", false);
  ScriptedUpstream upstream(webSocketHandler(seen, eo));
  ProxyOptions o = wsOptions(upstream.address());
  o.tls_cert = dir.file("ec.crt");
  o.tls_key = dir.file("ec.key");
  Proxy proxy(o);
  TlsPeer c;
  ASSERT_TRUE(c.connect(proxy.httpsPort()));
  // Handshake and an early frame in one TLS record.
  ASSERT_TRUE(c.send(handshake("/ws/tls") + frame(kText, "early over tls", true)));
  std::string buf;
  const std::string head = c.readHead(buf);
  expectSwitch(head);
  EXPECT_NE(toLower(head).find("\r\nstrict-transport-security: "), std::string::npos) << head;
  Frame f;
  ASSERT_TRUE(c.readFrame(buf, f));
  EXPECT_EQ(f.payload, "secure hello");
  ASSERT_TRUE(c.readFrame(buf, f));
  EXPECT_EQ(f.payload, "early over tls");
  expectEchoes(c, buf, {"a", patternBytes(1, 70000), patternBytes(2, 1 << 20), patternBytes(3, 3 << 20)});
  {
    std::lock_guard<std::mutex> lock(seen.mu);
    ASSERT_EQ(seen.heads.size(), 1u);
    EXPECT_NE(seen.heads[0].find("\r\nx-forwarded-proto: https\r\n"), std::string::npos) << seen.heads[0];
  }
  // close_notify is the client's EOF: the upstream sees its socket close.
  c.shutdownTls();
  ASSERT_TRUE(seen.waitDone(1));
  {
    std::lock_guard<std::mutex> lock(seen.mu);
    EXPECT_TRUE(seen.eof);
  }
  std::vector<JsonValue> log = accessLog(proxy, 1);
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(numberOf(log[0], "status"), 101);
  EXPECT_EQ(log[0].getString("tls_version"), "TLSv1.3");
}

// The tunnel to an [[upstream]] with tls = true: the upstream side of the
// relay goes through the TLS connection (early bytes, large frames, EOF).
TEST(WebSocketE2E, TunnelToATlsUpstream) {
  TempDir dir;
  makeCertificate(dir);
  TlsUpstream origin(dir.file("ec.crt"), dir.file("ec.key"));
  ProxyOptions o = wsOptions(origin.address());
  o.upstreams[0].extra_toml = "tls = true\nca = \"" + dir.file("ec.crt") + "\"\n";
  Proxy proxy(o);
  auto c = FdPeer::connect(proxy.httpPort());
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->send(handshake("/ws/tls") + frame(kText, "early over tls", true)));
  std::string buf;
  const std::string head = c->readHead(buf);
  ASSERT_FALSE(head.empty());
  EXPECT_EQ(head.rfind("HTTP/1.1 101", 0), 0u) << head;
  Frame f;
  ASSERT_TRUE(c->readFrame(buf, f));  // echoed by the origin through TLS
  EXPECT_EQ(f.payload, "early over tls");
  const std::string big = patternBytes(0, 3 << 20);
  ASSERT_TRUE(c->send(frame(kBinary, big, true)));
  ASSERT_TRUE(c->readFrame(buf, f));
  EXPECT_EQ(f.payload.size(), big.size());
  EXPECT_TRUE(f.payload == big);
  EXPECT_EQ(origin.handshakes(), 1);
}

TEST(WebSocketE2E, ShutdownClosesTunnelsAtTheGraceDeadline) {
  Seen seen;
  ScriptedUpstream upstream(webSocketHandler(seen));
  ProxyOptions o = wsOptions(upstream.address());
  o.shutdown_grace_ms = 1500;
  Proxy proxy(o);
  auto c = FdPeer::connect(proxy.httpPort());
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->send(handshake("/ws/drain")));
  std::string buf;
  expectSwitch(c->readHead(buf));
  expectEchoes(*c, buf, {"before"});
  proxy.process().sendSignal(SIGTERM);
  ASSERT_TRUE(proxy.process().waitForStderr("shutting down", Millis(10000)).has_value());
  // Within the grace the tunnel still carries bytes...
  expectEchoes(*c, buf, {"during the drain"});
  // ...and at its end both sides are closed and the proxy exits cleanly.
  EXPECT_TRUE(c->waitEof(buf));
  ASSERT_TRUE(seen.waitDone(1));
  int status = 0;
  ASSERT_TRUE(proxy.process().waitExit(Millis(20000), &status));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  std::vector<JsonValue> log = accessLog(proxy, 1);
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(numberOf(log[0], "status"), 101);
}

}  // namespace
}  // namespace portcullis::e2e
