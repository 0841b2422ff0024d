// TLS termination with BoringSSL (SPEC §3 [tls]).
//
// TlsContext is the server policy as one SSL_CTX, built once per config
// snapshot and shared by all workers (an SSL_CTX may be used from several
// threads once configured). TlsSession is one connection's TLS state over
// memory BIOs: the connection reads ciphertext from its socket and pushes it
// in, pulls plaintext straight into its own read buffer, and sends whatever
// ciphertext the engine produced. Nothing here touches a socket.
#pragma once

#include <openssl/ssl.h>

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/config.h"

namespace portcullis {

class TlsContext {
 public:
  // Loads the certificate chain and key and applies the fixed policy:
  // TLS 1.2 and 1.3 only (1.3 only with min_version = "1.3"); TLS 1.2 suites
  // ECDHE with AES-GCM or ChaCha20-Poly1305 only; groups X25519, P-256,
  // P-384; server cipher preference; ALPN http/1.1; no renegotiation and no
  // compression (BoringSSL supports neither); session tickets under the
  // process's TicketKeys (shared by all workers and by every context built
  // on reload); no stateful session-ID cache. Refuses a key file that group
  // or others may read.
  static std::shared_ptr<const TlsContext> create(const TlsConfig& config, std::string& error);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  // The context new connections start with (default certificate; the SNI
  // callback switches to an [[tls.sni]] certificate when the name matches).
  SSL_CTX* ctx() const { return ctx_; }

  // The certificate context for a server name (lower case); null = default.
  SSL_CTX* forServerName(std::string_view name) const;

 private:
  struct SniEntry {
    std::vector<std::string> names;  // exact, or "*.suffix"
    SSL_CTX* ctx = nullptr;
  };
  TlsContext() = default;
  static int onServerName(SSL* ssl, int* alert, void* arg);

  SSL_CTX* ctx_ = nullptr;
  std::vector<SniEntry> sni_;
};

// Session ticket keys of the process, shared by every TLS context it builds:
// a ticket issued before a certificate reload (which builds a new SSL_CTX)
// still resumes after it, on any worker. Keys are random, in memory only.
// rotate() (the server calls it every kTicketRotationS) makes a fresh key
// current; the one before stays accepted (the client gets a new ticket) until
// the next rotation, so a ticket key lives at most 2 x kTicketRotationS.
// Handshakes read the keys through a seqlock of relaxed atomics: no mutex,
// and rotate() on the main thread never blocks them.
class TicketKeys {
 public:
  static constexpr uint64_t kTicketRotationS = 12 * 3600;
  static TicketKeys& shared();
  void rotate();
  // The SSL_CTX_set_tlsext_ticket_key_cb callback (AES-256-CBC + HMAC-SHA256).
  static int callback(SSL* ssl, uint8_t* key_name, uint8_t* iv, EVP_CIPHER_CTX* cipher, HMAC_CTX* hmac,
                      int encrypt);

 private:
  static constexpr size_t kWords = 10;  // 16 name + 32 AES + 32 HMAC bytes
  struct Key {
    uint8_t name[16];
    uint8_t aes[32];
    uint8_t hmac[32];
  };
  TicketKeys();
  void read(Key& current, Key& previous) const;
  std::atomic<uint64_t> seq_{0};
  std::atomic<uint64_t> words_[2][kWords];  // [0] current, [1] previous
};

// Client side of TLS to one [[upstream]] (tls = true): one SSL_CTX per
// snapshot, shared by every worker's pool of that upstream. TLS 1.2 and 1.3
// only, the same AEAD/ECDHE suites and groups as the listener, peer
// verification against `ca` (or the system bundle) unless verify = false,
// and client session caching (the pool keeps the last ticket per server, so
// new connections resume instead of doing a full handshake).
class UpstreamTlsContext {
 public:
  static std::shared_ptr<const UpstreamTlsContext> create(const UpstreamConfig& config, std::string& error);
  ~UpstreamTlsContext();
  UpstreamTlsContext(const UpstreamTlsContext&) = delete;
  UpstreamTlsContext& operator=(const UpstreamTlsContext&) = delete;

  SSL_CTX* ctx() const { return ctx_; }
  bool verify() const { return verify_; }
  // The SNI name sent and verified; empty = verify the server's IP address.
  const std::string& sni() const { return sni_; }
  // Index of the SSL ex_data slot holding the new-session callback's target.
  static int sessionSlot();
  // Called with ownership of a fresh client session (a TLS 1.3 ticket or a
  // TLS 1.2 session) for the connection whose ex_data slot holds `sink`.
  using SessionSink = void (*)(void* arg, SSL_SESSION* session);
  struct SessionTarget {
    SessionSink sink;
    void* arg;
  };

 private:
  UpstreamTlsContext() = default;
  SSL_CTX* ctx_ = nullptr;
  bool verify_ = true;
  std::string sni_;
};

// Checks that the file at `path` is not accessible by group or others.
bool checkPrivateFileMode(const std::string& path, std::string& error);

class TlsSession {
 public:
  enum class Result : uint8_t {
    kOk,        // produced plaintext (n > 0)
    kWantRead,  // needs more ciphertext; nothing produced
    kClosed,    // the peer sent close_notify
    kError,     // handshake or record failure: close the connection
  };

  // A server-side session (accepts a handshake).
  explicit TlsSession(SSL_CTX* ctx);
  // A client-side session to an upstream server: sends `up.sni()` as SNI
  // and verifies the certificate for it, or for `ip` (the server's numeric
  // address) without one; offers `resume` when non-null. `target` receives
  // the sessions the server issues (must outlive the session).
  TlsSession(const UpstreamTlsContext& up, const std::string& ip, SSL_SESSION* resume,
             UpstreamTlsContext::SessionTarget* target);
  ~TlsSession();

  // Client side: drives the handshake. kOk once it is complete (then
  // readPlaintext() takes over), kWantRead while it waits for the server,
  // kError on failure (failureReason(): e.g. "certificate_verify_failed").
  Result handshake();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // Appends ciphertext received from the socket (copied into the engine).
  void pushCiphertext(const char* data, size_t len);
  // Runs the handshake as needed and decrypts up to `cap` bytes into `out`.
  Result readPlaintext(char* out, size_t cap, size_t& n);
  // True when decrypted or undecrypted input is still buffered, so
  // readPlaintext() may produce more without another socket read.
  bool hasBufferedInput() const;
  // Encrypts `len` bytes; the records are appended to the pending output.
  // Returns false on a fatal error.
  bool writePlaintext(const char* data, size_t len);
  // Queues the close_notify alert (RFC 8446 section 6.1) with the pending
  // output, unless the session failed, its handshake is not done or it was
  // queued already. True if it was queued now.
  bool closeNotify();
  // Ciphertext waiting to be sent, and taking it out of the engine.
  size_t pendingCiphertext() const;
  size_t takeCiphertext(char* out, size_t cap);
  // Ciphertext for one socket write: up to `cap` bytes into `out` and, when
  // no more than kCiphertextTail bytes are then left, those too, into
  // `tail` (allocated on first use, kCiphertextTail bytes; the caller keeps
  // it until the write is done). A buffer's worth of plaintext seals into a
  // little more than a buffer (record headers and tags): this way it leaves
  // in one write, not a full one and a runt of ~100 bytes that costs a
  // system call here and a wakeup at the peer. `tail_len` is 0 when no tail.
  static constexpr size_t kCiphertextTail = 4096;
  size_t takeCiphertextForWrite(char* out, size_t cap, std::unique_ptr<char[]>& tail, size_t& tail_len);

  bool handshakeDone() const { return SSL_is_init_finished(ssl_) != 0; }
  bool resumed() const { return SSL_session_reused(ssl_) != 0; }
  // "TLSv1.2" / "TLSv1.3" once the handshake is done.
  const char* version() const { return SSL_get_version(ssl_); }
  // Short reason of the last kError, for logs and metrics.
  const char* failureReason() const { return failure_; }

 private:
  SSL* ssl_ = nullptr;
  BIO* rbio_ = nullptr;
  BIO* wbio_ = nullptr;
  const char* failure_ = "";
};

}  // namespace portcullis
