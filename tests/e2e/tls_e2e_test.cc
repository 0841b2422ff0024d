// HTTPS end to end with a real TLS client (BoringSSL in the test binary):
// protocol and cipher policy, ALPN, HSTS on every HTTPS response, large
// bodies both ways, session resumption across connections, key file mode.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/nid.h>
#include <openssl/x509.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "proxy/keyring.h"
#include "tests/e2e/harness.h"
#include "tests/e2e/tls_upstream.h"
#include "tools/pcx1/pcx1.h"

namespace portcullis::e2e {
namespace {

// Makes a self-signed certificate for 127.0.0.1 with the openssl command;
// `kind` "rsa" gives RSA 2048, anything else ECDSA P-256; the file names and
// the CN are `kind` (CN "localhost" unless `cn` is given).
void makeCertificate(const TempDir& dir, const std::string& kind, const std::string& cn = "localhost") {
  const std::string key = dir.file(kind + ".key");
  const std::string crt = dir.file(kind + ".crt");
  const std::string newkey = kind == "rsa" ? "-newkey rsa:2048" : "-newkey ec -pkeyopt ec_paramgen_curve:P-256";
  const std::string cmd = "openssl req -x509 " + newkey + " -nodes -keyout '" + key + "' -out '" + crt +
                          "' -days 2 -subj /CN=" + cn + " -addext subjectAltName=IP:127.0.0.1 2>/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  ASSERT_EQ(::chmod(key.c_str(), 0600), 0);
}

struct TlsOptions {
  uint16_t min_version = TLS1_VERSION;
  uint16_t max_version = TLS1_3_VERSION;
  std::string tls12_ciphers;           // "" = library default
  std::vector<std::string> alpn;       // offered protocols
  SSL_SESSION* session = nullptr;      // offer this session for resumption
  std::string sni;                     // server name to send ("" = none)
};

// A blocking TLS client over a socket with receive/send timeouts.
class TlsClient {
 public:
  ~TlsClient() {
    if (ticket_ != nullptr) SSL_SESSION_free(ticket_);
    if (ssl_ != nullptr) SSL_free(ssl_);
    if (ctx_ != nullptr) SSL_CTX_free(ctx_);
    if (fd_ >= 0) ::close(fd_);
  }

  // Connects and runs the handshake; false if it failed.
  bool connect(uint16_t port, const TlsOptions& o) {
    ctx_ = SSL_CTX_new(TLS_method());
    SSL_CTX_set_min_proto_version(ctx_, o.min_version);
    SSL_CTX_set_max_proto_version(ctx_, o.max_version);
    if (!o.tls12_ciphers.empty()) SSL_CTX_set_cipher_list(ctx_, o.tls12_ciphers.c_str());
    // TLS 1.3 sessions arrive as tickets after the handshake; keep the last.
    SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_CLIENT);
    SSL_CTX_sess_set_new_cb(ctx_, [](SSL* ssl, SSL_SESSION* s) -> int {
      auto* self = static_cast<TlsClient*>(SSL_get_app_data(ssl));
      if (self->ticket_ != nullptr) SSL_SESSION_free(self->ticket_);
      self->ticket_ = s;
      return 1;  // we own it now
    });
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{10, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) return false;
    ssl_ = SSL_new(ctx_);
    SSL_set_app_data(ssl_, this);
    SSL_set_fd(ssl_, fd_);
    if (!o.alpn.empty()) {
      std::string wire;
      for (const std::string& p : o.alpn) {
        wire.push_back(static_cast<char>(p.size()));
        wire += p;
      }
      SSL_set_alpn_protos(ssl_, reinterpret_cast<const uint8_t*>(wire.data()), wire.size());
    }
    if (o.session != nullptr) SSL_set_session(ssl_, o.session);
    if (!o.sni.empty()) SSL_set_tlsext_host_name(ssl_, o.sni.c_str());
    const bool ok = SSL_connect(ssl_) == 1;
    ERR_clear_error();
    return ok;
  }

  std::string version() const { return SSL_get_version(ssl_); }
  // Common name of the certificate the server presented.
  std::string peerCommonName() const {
    X509* cert = SSL_get_peer_certificate(ssl_);
    if (cert == nullptr) return "";
    char cn[256] = {0};
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
    X509_free(cert);
    return cn;
  }
  bool resumed() const { return SSL_session_reused(ssl_) != 0; }
  std::string alpn() const {
    const uint8_t* p = nullptr;
    unsigned n = 0;
    SSL_get0_alpn_selected(ssl_, &p, &n);
    return std::string(reinterpret_cast<const char*>(p), n);
  }
  // The session to resume later (after a response was read, so a TLS 1.3
  // ticket has arrived); null if none came. Caller frees it.
  SSL_SESSION* session() const {
    if (ticket_ != nullptr) SSL_SESSION_up_ref(ticket_);
    return ticket_;
  }

  // Sends close_notify: the client's end of input, its TCP side stays open.
  void shutdownTls() { SSL_shutdown(ssl_); }

  bool send(std::string_view data) {
    while (!data.empty()) {
      int n = SSL_write(ssl_, data.data(), static_cast<int>(data.size() > 65536 ? 65536 : data.size()));
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  // Reads one Content-Length response. The body is hashed (and kept when it
  // is small). Returns false on EOF, timeout or a framing it cannot read.
  struct Response {
    int status = 0;
    std::string head;  // status line + headers, lower-cased
    std::string body;
    uint64_t body_bytes = 0;
    std::string body_sha256;
  };
  bool readResponse(Response& r) {
    size_t end;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill()) return false;
    }
    r.head = toLower(buf_.substr(0, end));
    buf_.erase(0, end + 4);
    r.status = std::atoi(r.head.c_str() + 9);
    size_t cl = r.head.find("\r\ncontent-length:");
    if (cl == std::string::npos) return false;
    uint64_t left = std::strtoull(r.head.c_str() + cl + 17, nullptr, 10);
    Sha256 h;
    while (left > 0) {
      if (buf_.empty() && !fill()) return false;
      size_t take = buf_.size() < left ? buf_.size() : static_cast<size_t>(left);
      h.update(buf_.data(), take);
      if (r.body.size() < 65536) r.body.append(buf_, 0, take);
      r.body_bytes += take;
      buf_.erase(0, take);
      left -= take;
    }
    r.body_sha256 = h.hexDigest();
    return true;
  }

  // After the last response: how the stream ended. SSL_ERROR_ZERO_RETURN
  // when the peer sent close_notify, SSL_ERROR_SYSCALL (or SSL_ERROR_SSL) for
  // a bare TCP close; -1 if data came instead.
  int endOfStream() {
    if (!buf_.empty()) return -1;
    char tmp[4096];
    const int n = SSL_read(ssl_, tmp, sizeof(tmp));
    if (n > 0) return -1;
    const int e = SSL_get_error(ssl_, n);
    ERR_clear_error();
    return e;
  }

 private:
  bool fill() {
    char tmp[65536];
    int n = SSL_read(ssl_, tmp, sizeof(tmp));
    if (n <= 0) return false;
    buf_.append(tmp, static_cast<size_t>(n));
    return true;
  }

  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  SSL_SESSION* ticket_ = nullptr;
  int fd_ = -1;
  std::string buf_;
};

class TlsE2E : public ::testing::Test {
 protected:
  void SetUp() override { makeCertificate(dir_, "ec"); }
  ProxyOptions options() {
    ProxyOptions o = ProxyOptions::forBackend(backend_.address());
    o.tls_cert = dir_.file("ec.crt");
    o.tls_key = dir_.file("ec.key");
    o.routes[0].max_body_bytes = 128ull << 20;
    return o;
  }
  TempDir dir_;
  DemoBackend backend_;
};

TEST_F(TlsE2E, Tls13AndTls12ServeRequestsWithHsts) {
  Proxy proxy(options());
  ASSERT_NE(proxy.httpsPort(), 0);
  for (uint16_t v : {uint16_t(TLS1_3_VERSION), uint16_t(TLS1_2_VERSION)}) {
    TlsClient c;
    TlsOptions o;
    o.min_version = o.max_version = v;
    ASSERT_TRUE(c.connect(proxy.httpsPort(), o));
    EXPECT_EQ(c.version(), v == TLS1_3_VERSION ? "TLSv1.3" : "TLSv1.2");
    for (int i = 0; i < 2; ++i) {  // keep-alive over TLS
      ASSERT_TRUE(c.send(getRequest("/hello")));
      TlsClient::Response r;
      ASSERT_TRUE(c.readResponse(r));
      EXPECT_EQ(r.status, 200);
      EXPECT_NE(r.head.find("\r\nstrict-transport-security: max-age=31536000; includesubdomains"), std::string::npos)
          << r.head;
      std::optional<Echo> echo = parseEcho(r.body);
      ASSERT_TRUE(echo.has_value()) << r.body;
      EXPECT_EQ(echo->headers["x-forwarded-proto"], "https");
    }
  }
  // Errors made by the proxy carry HSTS too; the plaintext listener never does.
  {
    ProxyOptions o = options();
    TlsClient c;
    ASSERT_TRUE(c.connect(proxy.httpsPort(), TlsOptions{}));
    ASSERT_TRUE(c.send("GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000000\r\n\r\n"));
    TlsClient::Response r;
    ASSERT_TRUE(c.readResponse(r));
    EXPECT_EQ(r.status, 413);
    EXPECT_NE(r.head.find("strict-transport-security"), std::string::npos);
  }
  Client plain(proxy.httpPort());
  HttpResponse pr = plain.roundTrip(getRequest("/plain"));
  EXPECT_EQ(pr.status, 200);
  EXPECT_FALSE(pr.hasHeader("strict-transport-security"));
  EXPECT_EQ(proxy.waitForMetric("portcullis_tls_handshakes_total{kind=\"full\"}", 3), 3);
}

// Over HTTPS the proxy's HSTS is the only one: a backend's own header (here
// max-age=0, which would switch HSTS off: browsers take the first one,
// RFC 6797 section 8.1) is dropped.
TEST_F(TlsE2E, BackendHstsNeverReplacesTheProxysOwn) {
  ScriptedUpstream upstream([](int fd, int) {
    if (ScriptedUpstream::readRequest(fd).empty()) return;
    ScriptedUpstream::writeAll(fd, "HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=0\r\n"
                                   "strict-transport-security: max-age=1\r\nContent-Length: 2\r\n\r\nok");
  });
  ProxyOptions o = options();
  o.upstreams[0].servers = {upstream.address()};
  Proxy proxy(o);
  TlsClient c;
  ASSERT_TRUE(c.connect(proxy.httpsPort(), TlsOptions{}));
  ASSERT_TRUE(c.send(getRequest("/sts")));
  TlsClient::Response r;
  ASSERT_TRUE(c.readResponse(r));
  EXPECT_EQ(r.status, 200);
  const std::string want = "\r\nstrict-transport-security: max-age=31536000; includesubdomains";
  const size_t at = r.head.find("\r\nstrict-transport-security:");
  EXPECT_EQ(r.head.substr(at, want.size()), want) << r.head;
  EXPECT_EQ(r.head.find("\r\nstrict-transport-security:", at + 1), std::string::npos) << r.head;
}

// A connection the proxy ends after a response (Connection: close, or a
// refusal while the client still sends) ends with close_notify (RFC 8446
// section 6.1), so a client reading to the end can tell it from a cut.
TEST_F(TlsE2E, ClosingConnectionsSendCloseNotify) {
  Proxy proxy(options());
  for (uint16_t v : {uint16_t(TLS1_3_VERSION), uint16_t(TLS1_2_VERSION)}) {
    SCOPED_TRACE(v == TLS1_3_VERSION ? "TLS 1.3" : "TLS 1.2");
    {
      TlsClient c;
      TlsOptions o;
      o.min_version = o.max_version = v;
      ASSERT_TRUE(c.connect(proxy.httpsPort(), o));
      ASSERT_TRUE(c.send("GET /bye HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"));
      TlsClient::Response r;
      ASSERT_TRUE(c.readResponse(r));
      EXPECT_EQ(r.status, 200);
      EXPECT_EQ(c.endOfStream(), SSL_ERROR_ZERO_RETURN);
    }
    {
      // Refused at the head while body bytes are still on their way (the
      // lingering close).
      TlsClient c;
      TlsOptions o;
      o.min_version = o.max_version = v;
      ASSERT_TRUE(c.connect(proxy.httpsPort(), o));
      ASSERT_TRUE(c.send("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000000\r\n\r\n" +
                         std::string(100000, 'b')));
      TlsClient::Response r;
      ASSERT_TRUE(c.readResponse(r));
      EXPECT_EQ(r.status, 413);
      EXPECT_EQ(c.endOfStream(), SSL_ERROR_ZERO_RETURN);
    }
  }
}

TEST_F(TlsE2E, ProtocolsOlderThanTls12AreRefused) {
  Proxy proxy(options());
  for (uint16_t v : {uint16_t(TLS1_1_VERSION), uint16_t(TLS1_VERSION)}) {
    TlsClient c;
    TlsOptions o;
    o.min_version = o.max_version = v;
    EXPECT_FALSE(c.connect(proxy.httpsPort(), o)) << "version " << v;
  }
  EXPECT_GE(proxy.waitForMetric("portcullis_tls_handshake_failures_total", 2), 2);
  EXPECT_EQ(proxy.waitForMetric("portcullis_tls_handshake_failure_reasons_total{reason=\"unsupported_protocol\"}", 2), 2)
      << proxy.metricsText();
  EXPECT_EQ(backend_.process().exited(), false);
}

TEST_F(TlsE2E, MinVersion13RefusesTls12) {
  ProxyOptions o = options();
  o.tls_min_version = "1.3";
  Proxy proxy(o);
  TlsClient c12;
  TlsOptions t12;
  t12.max_version = TLS1_2_VERSION;
  EXPECT_FALSE(c12.connect(proxy.httpsPort(), t12));
  TlsClient c13;
  EXPECT_TRUE(c13.connect(proxy.httpsPort(), TlsOptions{}));
  EXPECT_EQ(c13.version(), "TLSv1.3");
}

TEST(TlsPolicyE2E, Tls12OnlyEcdheWithAead) {
  TempDir dir;
  makeCertificate(dir, "rsa");
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.tls_cert = dir.file("rsa.crt");
  o.tls_key = dir.file("rsa.key");
  Proxy proxy(o);
  auto tryCipher = [&](const std::string& cipher) {
    TlsClient c;
    TlsOptions t;
    t.max_version = TLS1_2_VERSION;
    t.tls12_ciphers = cipher;
    return c.connect(proxy.httpsPort(), t);
  };
  EXPECT_FALSE(tryCipher("AES128-GCM-SHA256")) << "RSA key exchange (no forward secrecy)";
  EXPECT_FALSE(tryCipher("AES256-SHA")) << "RSA key exchange, CBC";
  EXPECT_FALSE(tryCipher("ECDHE-RSA-AES128-SHA")) << "CBC with SHA-1";
  EXPECT_TRUE(tryCipher("ECDHE-RSA-AES128-GCM-SHA256"));
  EXPECT_TRUE(tryCipher("ECDHE-RSA-CHACHA20-POLY1305"));
}

TEST_F(TlsE2E, AlpnSelectsHttp11Only) {
  Proxy proxy(options());
  TlsClient both;
  TlsOptions o;
  o.alpn = {"h2", "http/1.1"};
  ASSERT_TRUE(both.connect(proxy.httpsPort(), o));
  EXPECT_EQ(both.alpn(), "http/1.1");
  TlsClient h2only;
  TlsOptions o2;
  o2.alpn = {"h2"};
  ASSERT_TRUE(h2only.connect(proxy.httpsPort(), o2));
  EXPECT_EQ(h2only.alpn(), "") << "never claims a protocol it does not speak";
}

// Over one TLS connection to `port`: GET `down_path` must return `n`
// pattern bytes; then `n` pattern bytes are POSTed to `up_path`, whose
// response lands in `up`.
void transferBothWays(uint16_t port, const std::string& down_path, uint64_t n, const std::string& up_path,
                      TlsClient::Response& up) {
  TlsClient c;
  ASSERT_TRUE(c.connect(port, TlsOptions{}));
  ASSERT_TRUE(c.send(getRequest(down_path)));
  TlsClient::Response down;
  ASSERT_TRUE(c.readResponse(down));
  EXPECT_EQ(down.status, 200);
  EXPECT_EQ(down.body_bytes, n);
  EXPECT_EQ(down.body_sha256, patternSha256(n));
  std::string head = "POST " + up_path + " HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: " + std::to_string(n) +
                     "\r\n\r\n";
  ASSERT_TRUE(c.send(head));
  for (uint64_t off = 0; off < n; off += 1 << 20) ASSERT_TRUE(c.send(patternBytes(off, 1 << 20)));
  ASSERT_TRUE(c.readResponse(up));
  EXPECT_EQ(up.status, 200);
}

TEST_F(TlsE2E, LargeBodiesBothWays) {
  Proxy proxy(options());
  const uint64_t n = 64ull << 20;
  TlsClient::Response r;
  transferBothWays(proxy.httpsPort(), "/bytes/" + std::to_string(n), n, "/upload", r);
  std::optional<Echo> echo = parseEcho(r.body);
  ASSERT_TRUE(echo.has_value()) << r.body;
  EXPECT_EQ(echo->body_bytes, n);
  EXPECT_EQ(echo->body_sha256, patternSha256(n));
}

// TLS on both sides: client -> HTTPS listener -> [[upstream]] tls = true,
// large bodies each way, hash-checked, over one pooled upstream connection.
TEST_F(TlsE2E, TlsListenerToTlsUpstreamLargeBodiesBothWays) {
  TlsUpstream origin(dir_.file("ec.crt"), dir_.file("ec.key"));
  ProxyOptions o = options();
  o.upstreams[0].servers = {origin.address()};
  o.upstreams[0].extra_toml = "tls = true\nca = \"" + dir_.file("ec.crt") + "\"\n";
  Proxy proxy(o);
  const uint64_t n = 32ull << 20;
  TlsClient::Response r;
  transferBothWays(proxy.httpsPort(), "/big/" + std::to_string(n), n, "/up", r);
  EXPECT_EQ(r.body, patternSha256(n));  // the origin's hash of what it decrypted
  EXPECT_EQ(origin.handshakes(), 1);
}

// Encrypted uploads over TLS: a round in which the encryptor takes bytes
// without output must still drain plaintext the TLS engine holds (the
// client may have sent everything; no socket read would bring it). Before
// the fix ~5 % of such uploads stalled until body_idle_ms and got 408.
TEST_F(TlsE2E, EncryptedUploadsOverTlsNeverStall) {
  ProxyOptions o = options();
  o.routes[0].extra_toml = "encrypt_body = true\n";
  o.timeouts["body_idle_ms"] = 3000;  // a stall shows as 408, quickly
  Proxy proxy(o);
  for (int i = 0; i < 60; ++i) {
    const uint64_t size = (256u << 10) + (uint64_t(i) * 487919) % (15u << 18);
    TlsClient c;
    ASSERT_TRUE(c.connect(proxy.httpsPort(), TlsOptions{}));
    std::string head = "POST /upload HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: " + std::to_string(size) + "\r\n\r\n";
    ASSERT_TRUE(c.send(head));
    for (uint64_t off = 0; off < size; off += 1 << 20) {
      ASSERT_TRUE(c.send(patternBytes(off, std::min<uint64_t>(1 << 20, size - off))));
    }
    TlsClient::Response r;
    ASSERT_TRUE(c.readResponse(r)) << "upload " << i << " of " << size << " bytes";
    ASSERT_EQ(r.status, 200) << "upload " << i << " of " << size << " bytes stalled";
    std::optional<Echo> echo = parseEcho(r.body);
    ASSERT_TRUE(echo.has_value()) << r.body;
    EXPECT_EQ(echo->body_bytes, pcx1::ciphertextLength(size, 4, 65536)) << "key id \"test\"";
  }
}

// Encrypted uploads over TLS reach the backend as pcx1 that decrypts to
// exactly the bytes sent: sizes around segment boundaries, a segment much
// smaller than a TLS record (several windows per record) and one larger,
// client writes cut at odd sizes so records and segments never line up.
// The engine decrypts body bytes straight into the sealer's window
// (Connection::tlsPull), so this is also that path's correctness test.
TEST_F(TlsE2E, EncryptedUploadsOverTlsDecryptToWhatWasSent) {
  // Top byte of offset x golden ratio: no period (patternBytes repeats every
  // 256 bytes), so a misplaced or repeated window, record or segment shows.
  const auto body = [](uint64_t off, size_t n) {
    std::string b(n, '\0');
    for (size_t i = 0; i < n; ++i) b[i] = static_cast<char>(((off + i) * 0x9E3779B97F4A7C15ull) >> 56);
    return b;
  };
  const std::string uploads = dir_.file("uploads");
  ASSERT_EQ(::mkdir(uploads.c_str(), 0700), 0);
  DemoBackend backend(uploads);
  MasterKey key;
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<uint8_t>(i * 29 + 3);
  const std::string ring = dir_.file("uploads-keyring.toml");
  {
    KeyringData d;
    d.active = "k1";
    d.keys = {{"k1", key}};
    std::string e;
    ASSERT_TRUE(writeKeyring(ring, d, e)) << e;
  }
  const pcx1::KeyLookup lookup = [&key](std::string_view id, uint8_t* out) {
    if (id != "k1") return false;
    std::memcpy(out, key.data(), key.size());
    return true;
  };
  for (uint32_t segment : {1000u, 65536u}) {
    ProxyOptions o = ProxyOptions::forBackend(backend.address());
    o.tls_cert = dir_.file("ec.crt");
    o.tls_key = dir_.file("ec.key");
    o.routes[0].max_body_bytes = 16ull << 20;
    o.routes[0].extra_toml = "encrypt_body = true\n";
    o.extra_toml = "[encryption]\nkeyring = \"" + ring + "\"\nsegment_bytes = " + std::to_string(segment) + "\n";
    Proxy proxy(o);
    const uint64_t sizes[] = {1, segment - 1, segment, segment + 1, 3ull * segment + 5, (1ull << 20) + 13};
    for (uint64_t size : sizes) {
      const std::string name = "s" + std::to_string(segment) + "_" + std::to_string(size);
      TlsClient c;
      ASSERT_TRUE(c.connect(proxy.httpsPort(), TlsOptions{}));
      ASSERT_TRUE(c.send("POST /upload?name=" + name + " HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: " +
                         std::to_string(size) + "\r\n\r\n"));
      const size_t pieces[] = {1000, 16383, 70001, 5};
      uint64_t off = 0;
      for (size_t k = 0; off < size; ++k) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(pieces[k % 4], size - off));
        ASSERT_TRUE(c.send(body(off, n)));
        off += n;
      }
      TlsClient::Response r;
      ASSERT_TRUE(c.readResponse(r)) << name;
      ASSERT_EQ(r.status, 200) << name << ": " << r.body;
      std::ifstream f(uploads + "/" + name, std::ios::binary);
      ASSERT_TRUE(f.good()) << name;
      const std::string ct((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      EXPECT_EQ(ct.size(), pcx1::ciphertextLength(size, 2, segment)) << name;
      std::vector<uint8_t> plain;
      std::string reason;
      ASSERT_EQ(pcx1::openAll(lookup, {reinterpret_cast<const uint8_t*>(ct.data()), ct.size()}, plain, &reason),
                pcx1::Error::kOk)
          << name << ": " << reason;
      ASSERT_EQ(plain.size(), size) << name;
      const std::string want = body(0, static_cast<size_t>(size));
      EXPECT_TRUE(std::memcmp(plain.data(), want.data(), want.size()) == 0) << name << ": plaintext differs";
    }
  }
}

// close_notify right behind a complete request (in the same flight) is the
// client's half-close: the request is still answered, whatever the proxy
// was doing when it found the alert - opening the upstream connection (a
// fresh proxy has none pooled) or sealing an upload in several rounds - and
// the connection then ends with the proxy's close_notify.
TEST_F(TlsE2E, CloseNotifyAfterACompleteRequestIsAnswered) {
  const std::string ring = dir_.file("half-close-keyring.toml");
  {
    KeyringData d;
    d.active = "test";
    MasterKey k{};
    k[0] = 1;
    d.keys = {{"test", k}};
    std::string e;
    ASSERT_TRUE(writeKeyring(ring, d, e)) << e;
  }
  ProxyOptions o = options();
  o.routes[0].extra_toml = "encrypt_body = true\n";
  // Small segments: an upload takes several rounds of sealing and writing.
  o.extra_toml = "[encryption]\nkeyring = \"" + ring + "\"\nsegment_bytes = 1000\n";
  for (int i = 0; i < 4; ++i) {
    Proxy proxy(o);  // fresh: no pooled upstream connection
    const uint64_t before = backend_.requests();
    const size_t size = i % 2 == 0 ? 0 : 20000 + 777 * static_cast<size_t>(i);
    TlsClient c;
    ASSERT_TRUE(c.connect(proxy.httpsPort(), TlsOptions{}));
    ASSERT_TRUE(c.send("POST /upload HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: " + std::to_string(size) +
                       "\r\n\r\n" + patternBytes(0, size)));
    c.shutdownTls();
    TlsClient::Response r;
    ASSERT_TRUE(c.readResponse(r)) << "round " << i << ": no response";
    ASSERT_EQ(r.status, 200) << r.body;
    std::optional<Echo> echo = parseEcho(r.body);
    ASSERT_TRUE(echo.has_value()) << r.body;
    EXPECT_EQ(echo->body_bytes, pcx1::ciphertextLength(size, 4, 1000)) << "key id \"test\"";
    EXPECT_EQ(c.endOfStream(), SSL_ERROR_ZERO_RETURN);
    EXPECT_EQ(backend_.requests(), before + 1);
  }
}

// One request on a fresh connection; returns the session (TLS 1.3 ticket)
// it left behind, or null. Caller frees it.
SSL_SESSION* firstSession(uint16_t port) {
  TlsClient first;
  if (!first.connect(port, TlsOptions{}) || !first.send(getRequest("/one"))) return nullptr;
  TlsClient::Response r;
  if (!first.readResponse(r)) return nullptr;
  return first.session();
}

TEST_F(TlsE2E, SessionsResumeAcrossConnectionsAndWorkers) {
  ProxyOptions o = options();
  o.workers = 2;  // one SSL_CTX (and ticket key) shared by all workers
  Proxy proxy(o);
  SSL_SESSION* session = firstSession(proxy.httpsPort());
  ASSERT_NE(session, nullptr);
  int resumed = 0;
  for (int i = 0; i < 6; ++i) {
    TlsClient again;
    TlsOptions t;
    t.session = session;
    ASSERT_TRUE(again.connect(proxy.httpsPort(), t));
    ASSERT_TRUE(again.send(getRequest("/again")));
    TlsClient::Response r;
    ASSERT_TRUE(again.readResponse(r));
    EXPECT_EQ(r.status, 200);
    if (again.resumed()) ++resumed;
  }
  SSL_SESSION_free(session);
  EXPECT_EQ(resumed, 6);
  EXPECT_EQ(proxy.waitForMetric("portcullis_tls_handshakes_total{kind=\"resumed\"}", 6), 6);
}

TEST_F(TlsE2E, TicketsSurviveAReload) {
  Proxy proxy(options());
  SSL_SESSION* session = firstSession(proxy.httpsPort());
  ASSERT_NE(session, nullptr);
  ASSERT_TRUE(proxy.reload());  // a new SSL_CTX; the process's ticket keys stay
  TlsClient again;
  TlsOptions t;
  t.session = session;
  ASSERT_TRUE(again.connect(proxy.httpsPort(), t));
  ASSERT_TRUE(again.send(getRequest("/again")));
  TlsClient::Response r;
  ASSERT_TRUE(again.readResponse(r));
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(again.resumed()) << "a ticket from before the reload must still resume";
  SSL_SESSION_free(session);
}

TEST_F(TlsE2E, ReplacedCertificateFilesApplyWithoutDroppingConnections) {
  makeCertificate(dir_, "ec", "before.test");
  Proxy proxy(options());
  TlsClient open;
  ASSERT_TRUE(open.connect(proxy.httpsPort(), TlsOptions{}));
  EXPECT_EQ(open.peerCommonName(), "before.test");
  ASSERT_TRUE(open.send(getRequest("/first")));
  TlsClient::Response r1;
  ASSERT_TRUE(open.readResponse(r1));
  EXPECT_EQ(r1.status, 200);
  // A renewal the way an ACME client does it: new files renamed into place
  // (the pair briefly mismatches; that reload is refused and the next applies).
  makeCertificate(dir_, "new", "after.test");
  ASSERT_EQ(::rename(dir_.file("new.key").c_str(), dir_.file("ec.key").c_str()), 0);
  ASSERT_EQ(::rename(dir_.file("new.crt").c_str(), dir_.file("ec.crt").c_str()), 0);
  std::string cn;
  for (int i = 0; i < 100 && cn != "after.test"; ++i) {
    std::this_thread::sleep_for(Millis(50));
    TlsClient probe;
    ASSERT_TRUE(probe.connect(proxy.httpsPort(), TlsOptions{}));
    cn = probe.peerCommonName();
  }
  EXPECT_EQ(cn, "after.test") << "the new certificate was not picked up from the files";
  // The connection opened before the change still works.
  ASSERT_TRUE(open.send(getRequest("/second")));
  TlsClient::Response r2;
  ASSERT_TRUE(open.readResponse(r2));
  EXPECT_EQ(r2.status, 200);
}

// The common name a new connection to `port` is served (polled up to
// `ms` while it is `from`).
std::string servedNameAfter(uint16_t port, const std::string& from, int ms) {
  std::string cn = from;
  for (int waited = 0; cn == from && waited <= ms; waited += 50) {
    if (waited > 0) std::this_thread::sleep_for(Millis(50));
    TlsClient probe;
    if (!probe.connect(port, TlsOptions{})) return "";
    cn = probe.peerCommonName();
  }
  return cn;
}

size_t occurrences(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

// A renewal the watch picks up but a reload refuses is retried until one
// applies, the running certificate serving meanwhile. Here the new key came
// out readable by others; the fix the error asks for, chmod 600, changes
// neither its mtime, size nor inode, so the watch alone would never see it.
TEST_F(TlsE2E, RefusedCertificateReloadIsRetriedAfterAChmodFix) {
  makeCertificate(dir_, "ec", "before.test");
  Proxy proxy(options());
  makeCertificate(dir_, "new", "after.test");
  ASSERT_EQ(::chmod(dir_.file("new.key").c_str(), 0644), 0);
  ASSERT_EQ(::rename(dir_.file("new.key").c_str(), dir_.file("ec.key").c_str()), 0);
  ASSERT_EQ(::rename(dir_.file("new.crt").c_str(), dir_.file("ec.crt").c_str()), 0);
  const std::string refused = "private key is accessible by group or others (mode 0644)";
  ASSERT_TRUE(proxy.process().waitForStderr(refused, Millis(5000))) << proxy.process().stderrText();
  EXPECT_EQ(servedNameAfter(proxy.httpsPort(), "", 0), "before.test") << "the running certificate serves";
  ASSERT_EQ(::chmod(dir_.file("ec.key").c_str(), 0600), 0);
  EXPECT_EQ(servedNameAfter(proxy.httpsPort(), "before.test", 5000), "after.test")
      << "the fixed key was never tried again";
  EXPECT_EQ(occurrences(proxy.process().stderrText(), refused), 1u) << "retries say a lasting error once";
}

// The same when what failed the reload was the config file (a full reload
// reads it): the renewed certificate goes live once the file is repaired,
// without SIGHUP.
TEST_F(TlsE2E, CertificateChangeRefusedForABrokenConfigAppliesOnceItIsRepaired) {
  makeCertificate(dir_, "ec", "before.test");
  Proxy proxy(options());
  const std::string good = slurp(proxy.configPath());
  proxy.writeConfigText(good + "typo_key = 1\n");
  makeCertificate(dir_, "new", "after.test");
  ASSERT_EQ(::rename(dir_.file("new.key").c_str(), dir_.file("ec.key").c_str()), 0);
  ASSERT_EQ(::rename(dir_.file("new.crt").c_str(), dir_.file("ec.crt").c_str()), 0);
  ASSERT_TRUE(proxy.process().waitForStderr("typo_key: unknown key", Millis(5000))) << proxy.process().stderrText();
  EXPECT_EQ(servedNameAfter(proxy.httpsPort(), "", 0), "before.test");
  proxy.writeConfigText(good);
  EXPECT_EQ(servedNameAfter(proxy.httpsPort(), "before.test", 5000), "after.test")
      << "the renewed certificate waits for SIGHUP";
}

TEST(TlsSniE2E, ServerNamePicksTheCertificateDefaultOtherwise) {
  TempDir dir;
  makeCertificate(dir, "default", "default.test");
  makeCertificate(dir, "api", "api.test");
  makeCertificate(dir, "wild", "wild.test");
  DemoBackend backend;
  ProxyOptions o = ProxyOptions::forBackend(backend.address());
  o.tls_cert = dir.file("default.crt");
  o.tls_key = dir.file("default.key");
  o.extra_toml = "[[tls.sni]]\nnames = [\"api.test\", \"API2.test\"]\ncert = \"" + dir.file("api.crt") +
                 "\"\nkey = \"" + dir.file("api.key") + "\"\n[[tls.sni]]\nnames = [\"*.apps.test\"]\ncert = \"" +
                 dir.file("wild.crt") + "\"\nkey = \"" + dir.file("wild.key") + "\"\n";
  Proxy proxy(o);
  auto served = [&](const std::string& sni) {
    TlsClient c;
    TlsOptions t;
    t.sni = sni;
    EXPECT_TRUE(c.connect(proxy.httpsPort(), t)) << sni;
    return c.peerCommonName();
  };
  EXPECT_EQ(served("api.test"), "api.test");
  EXPECT_EQ(served("api2.test"), "api.test") << "names are case-insensitive";
  EXPECT_EQ(served("x.apps.test"), "wild.test");
  EXPECT_EQ(served("a.b.apps.test"), "default.test") << "a wildcard covers one label";
  EXPECT_EQ(served("other.test"), "default.test");
  EXPECT_EQ(served(""), "default.test") << "no SNI gets the default certificate";
}

TEST(TlsKeyFileE2E, KeyReadableByOthersIsRefusedAtStart) {
  TempDir dir;
  makeCertificate(dir, "ec");
  ASSERT_EQ(::chmod(dir.file("ec.key").c_str(), 0644), 0);
  ProxyOptions o = ProxyOptions::forBackend("127.0.0.1:9");
  o.tls_cert = dir.file("ec.crt");
  o.tls_key = dir.file("ec.key");
  const std::string conf = dir.file("p.toml");
  {
    FILE* f = std::fopen(conf.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::string text = renderConfig(o, dir.path());
    std::fwrite(text.data(), 1, text.size(), f);
    std::fclose(f);
  }
  ChildProcess p({PORTCULLIS_BIN, "-c", conf});
  int ws = 0;
  ASSERT_TRUE(p.waitExit(Millis(10000), &ws));
  EXPECT_TRUE(WIFEXITED(ws) && WEXITSTATUS(ws) == 1);
  EXPECT_NE(p.stderrText().find("chmod 600"), std::string::npos) << p.stderrText();
}

}  // namespace
}  // namespace portcullis::e2e
