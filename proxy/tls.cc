#include "proxy/tls.h"

#include <openssl/cipher.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/mem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <cctype>
#include <cerrno>
#include <cstring>

#include "proxy/errno_message.h"

namespace portcullis {

namespace {

// TLS 1.2 suites: forward secrecy (ECDHE) and AEAD only, strongest first per
// key type. TLS 1.3 suites are fixed by BoringSSL (AES-GCM, ChaCha20-Poly1305).
constexpr const char* kTls12Ciphers =
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256";
constexpr const char* kGroups = "X25519:P-256:P-384";

std::string lastSslError() {
  uint32_t e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "unknown error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

int selectAlpn(SSL*, const uint8_t** out, uint8_t* out_len, const uint8_t* in, unsigned in_len, void*) {
  // Only HTTP/1.1 is spoken; a client offering other protocols only gets no
  // ALPN answer (and may fall back), never a protocol we do not serve.
  static const uint8_t kHttp11[] = {'h', 't', 't', 'p', '/', '1', '.', '1'};
  for (unsigned i = 0; i < in_len;) {
    uint8_t len = in[i];
    if (i + 1 + len > in_len) break;
    if (len == sizeof(kHttp11) && std::memcmp(in + i + 1, kHttp11, len) == 0) {
      *out = in + i + 1;
      *out_len = len;
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

}  // namespace

bool checkPrivateFileMode(const std::string& path, std::string& error) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    error = path + ": " + errnoMessage(errno);
    return false;
  }
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    (void)std::snprintf(mode, sizeof(mode), "%04o", st.st_mode & 07777);  // at most 4 digits: cannot truncate
    error = path + ": private key is accessible by group or others (mode " + mode + "); chmod 600 it";
    return false;
  }
  return true;
}

namespace {

// One SSL_CTX with the fixed policy and one certificate.
SSL_CTX* newPolicyContext(bool min_tls13, const std::string& cert, const std::string& key, std::string& error) {
  if (!checkPrivateFileMode(key, error)) return nullptr;
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) {
    error = "tls: cannot create context: " + lastSslError();
    return nullptr;
  }
  if (!SSL_CTX_set_min_proto_version(ctx, min_tls13 ? TLS1_3_VERSION : TLS1_2_VERSION) ||
      !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) || !SSL_CTX_set_strict_cipher_list(ctx, kTls12Ciphers) ||
      !SSL_CTX_set1_curves_list(ctx, kGroups)) {
    error = "tls: cannot apply policy: " + lastSslError();
    SSL_CTX_free(ctx);
    return nullptr;
  }
  SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_tlsext_ticket_key_cb(ctx, &TicketKeys::callback);
  SSL_CTX_set_alpn_select_cb(ctx, &selectAlpn, nullptr);
  if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) {
    error = cert + ": cannot load certificate chain: " + lastSslError();
  } else if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1) {
    error = key + ": cannot load private key: " + lastSslError();
  } else if (SSL_CTX_check_private_key(ctx) != 1) {
    error = key + ": private key does not match " + cert;
  } else {
    return ctx;
  }
  SSL_CTX_free(ctx);
  return nullptr;
}

bool nameMatches(std::string_view pattern, std::string_view name) {
  if (pattern.size() > 2 && pattern[0] == '*' && pattern[1] == '.') {
    // "*.example.com" matches exactly one label in front of example.com.
    std::string_view suffix = pattern.substr(1);  // ".example.com"
    if (name.size() <= suffix.size()) return false;
    if (name.substr(name.size() - suffix.size()) != suffix) return false;
    std::string_view label = name.substr(0, name.size() - suffix.size());
    return !label.empty() && label.find('.') == std::string_view::npos;
  }
  return pattern == name;
}

}  // namespace

std::shared_ptr<const TlsContext> TlsContext::create(const TlsConfig& config, std::string& error) {
  std::shared_ptr<TlsContext> t(new TlsContext());
  t->ctx_ = newPolicyContext(config.min_tls13, config.cert, config.key, error);
  if (t->ctx_ == nullptr) return nullptr;
  for (const TlsSniConfig& e : config.sni) {
    SniEntry entry;
    entry.names = e.names;
    entry.ctx = newPolicyContext(config.min_tls13, e.cert, e.key, error);
    if (entry.ctx == nullptr) return nullptr;
    t->sni_.push_back(std::move(entry));
  }
  if (!t->sni_.empty()) {
    SSL_CTX_set_tlsext_servername_callback(t->ctx_, &TlsContext::onServerName);
    SSL_CTX_set_tlsext_servername_arg(t->ctx_, t.get());
  }
  return t;
}

SSL_CTX* TlsContext::forServerName(std::string_view name) const {
  for (const SniEntry& e : sni_)
    for (const std::string& p : e.names)
      if (nameMatches(p, name)) return e.ctx;
  return nullptr;
}

int TlsContext::onServerName(SSL* ssl, int*, void* arg) {
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (name == nullptr) return SSL_TLSEXT_ERR_OK;  // no SNI: default certificate
  std::string lower(name);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (SSL_CTX* ctx = static_cast<const TlsContext*>(arg)->forServerName(lower)) SSL_set_SSL_CTX(ssl, ctx);
  return SSL_TLSEXT_ERR_OK;  // unknown names get the default certificate too
}

TicketKeys& TicketKeys::shared() {
  static TicketKeys keys;
  return keys;
}

TicketKeys::TicketKeys() {
  for (auto& slot : words_)
    for (auto& w : slot) w.store(0, std::memory_order_relaxed);
  rotate();
  rotate();  // both slots hold real keys from the start
}

// Writer (main thread only): seq odd while the slots change.
void TicketKeys::rotate() {
  Key fresh;
  RAND_bytes(reinterpret_cast<uint8_t*>(&fresh), sizeof(fresh));
  uint64_t in[kWords];
  std::memcpy(in, &fresh, sizeof(in));
  OPENSSL_cleanse(&fresh, sizeof(fresh));
  const uint64_t s = seq_.load(std::memory_order_relaxed);
  seq_.store(s + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  for (size_t i = 0; i < kWords; ++i) {
    words_[1][i].store(words_[0][i].load(std::memory_order_relaxed), std::memory_order_relaxed);
    words_[0][i].store(in[i], std::memory_order_relaxed);
  }
  seq_.store(s + 2, std::memory_order_release);
  OPENSSL_cleanse(in, sizeof(in));
}

void TicketKeys::read(Key& current, Key& previous) const {
  uint64_t out[2][kWords];
  for (;;) {
    const uint64_t s1 = seq_.load(std::memory_order_acquire);
    if (s1 & 1) continue;
    for (size_t k = 0; k < 2; ++k)
      for (size_t i = 0; i < kWords; ++i) out[k][i] = words_[k][i].load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (seq_.load(std::memory_order_relaxed) == s1) break;
  }
  std::memcpy(&current, out[0], sizeof(Key));
  std::memcpy(&previous, out[1], sizeof(Key));
  OPENSSL_cleanse(out, sizeof(out));
}

// encrypt: name the current key, fresh IV. decrypt: 1 with the current key,
// 2 (accept, issue a new ticket) with the previous one, 0 (full handshake)
// for anything else.
int TicketKeys::callback(SSL*, uint8_t* key_name, uint8_t* iv, EVP_CIPHER_CTX* cipher, HMAC_CTX* hmac,
                         int encrypt) {
  Key cur, prev;
  shared().read(cur, prev);
  int rc = 0;
  const Key* use = nullptr;
  if (encrypt) {
    std::memcpy(key_name, cur.name, 16);
    if (RAND_bytes(iv, EVP_CIPHER_iv_length(EVP_aes_256_cbc())) == 1) {
      use = &cur;
      rc = 1;
    }
  } else if (CRYPTO_memcmp(key_name, cur.name, 16) == 0) {
    use = &cur;
    rc = 1;
  } else if (CRYPTO_memcmp(key_name, prev.name, 16) == 0) {
    use = &prev;
    rc = 2;
  }
  if (use != nullptr) {
    const bool ok = (encrypt ? EVP_EncryptInit_ex(cipher, EVP_aes_256_cbc(), nullptr, use->aes, iv)
                             : EVP_DecryptInit_ex(cipher, EVP_aes_256_cbc(), nullptr, use->aes, iv)) == 1 &&
                    HMAC_Init_ex(hmac, use->hmac, sizeof(use->hmac), EVP_sha256(), nullptr) == 1;
    if (!ok) rc = encrypt ? -1 : 0;
  }
  OPENSSL_cleanse(&cur, sizeof(cur));
  OPENSSL_cleanse(&prev, sizeof(prev));
  return rc;
}

TlsContext::~TlsContext() {
  for (SniEntry& e : sni_) SSL_CTX_free(e.ctx);
  if (ctx_ != nullptr) SSL_CTX_free(ctx_);
}

TlsSession::TlsSession(SSL_CTX* ctx) {
  ssl_ = SSL_new(ctx);
  rbio_ = BIO_new(BIO_s_mem());
  wbio_ = BIO_new(BIO_s_mem());
  if (ssl_ == nullptr || rbio_ == nullptr || wbio_ == nullptr) abort();
  SSL_set_bio(ssl_, rbio_, wbio_);  // ssl_ owns both BIOs from here on
  SSL_set_accept_state(ssl_);
}

TlsSession::TlsSession(const UpstreamTlsContext& up, const std::string& ip, SSL_SESSION* resume,
                       UpstreamTlsContext::SessionTarget* target) {
  ssl_ = SSL_new(up.ctx());
  rbio_ = BIO_new(BIO_s_mem());
  wbio_ = BIO_new(BIO_s_mem());
  if (ssl_ == nullptr || rbio_ == nullptr || wbio_ == nullptr) abort();
  SSL_set_bio(ssl_, rbio_, wbio_);
  SSL_set_connect_state(ssl_);
  SSL_set_ex_data(ssl_, UpstreamTlsContext::sessionSlot(), target);
  if (!up.sni().empty()) SSL_set_tlsext_host_name(ssl_, up.sni().c_str());
  if (up.verify()) {
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl_);
    // Exact name or IP match; no partial wildcards like "w*.example.com".
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    const int ok = up.sni().empty() ? X509_VERIFY_PARAM_set1_ip_asc(param, ip.c_str())
                                    : X509_VERIFY_PARAM_set1_host(param, up.sni().data(), up.sni().size());
    if (ok != 1) abort();  // the loader validated both
  }
  if (resume != nullptr) SSL_set_session(ssl_, resume);
}

TlsSession::Result TlsSession::handshake() {
  const int rc = SSL_do_handshake(ssl_);
  if (rc == 1) return Result::kOk;
  const int err = SSL_get_error(ssl_, rc);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return Result::kWantRead;
  const uint32_t e = ERR_peek_error();
  const char* reason = e != 0 ? ERR_reason_error_string(e) : nullptr;
  failure_ = reason != nullptr ? reason : "handshake_failed";
  ERR_clear_error();
  return Result::kError;
}

// ---------------------------------------------------------------------------
// UpstreamTlsContext

namespace {
constexpr const char* kSystemCaBundle = "/etc/ssl/certs/ca-certificates.crt";

int onNewClientSession(SSL* ssl, SSL_SESSION* session) {
  auto* target = static_cast<UpstreamTlsContext::SessionTarget*>(SSL_get_ex_data(ssl, UpstreamTlsContext::sessionSlot()));
  if (target == nullptr || target->sink == nullptr) return 0;  // not kept
  target->sink(target->arg, session);
  return 1;  // the sink owns the reference
}
}  // namespace

int UpstreamTlsContext::sessionSlot() {
  static const int slot = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return slot;
}

std::shared_ptr<const UpstreamTlsContext> UpstreamTlsContext::create(const UpstreamConfig& config,
                                                                     std::string& error) {
  std::shared_ptr<UpstreamTlsContext> c(new UpstreamTlsContext());
  c->verify_ = config.verify;
  c->sni_ = config.sni;
  const std::string where = "[[upstream]] " + config.name + ": ";
  c->ctx_ = SSL_CTX_new(TLS_method());
  if (c->ctx_ == nullptr) {
    error = where + lastSslError();
    return nullptr;
  }
  SSL_CTX* ctx = c->ctx_;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  if (SSL_CTX_set_strict_cipher_list(ctx, kTls12Ciphers) != 1 || SSL_CTX_set1_curves_list(ctx, kGroups) != 1) {
    error = where + "cipher policy: " + lastSslError();
    return nullptr;
  }
  static const uint8_t kAlpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  SSL_CTX_set_alpn_protos(ctx, kAlpn, sizeof(kAlpn));
  // Renegotiation: BoringSSL clients refuse it by default (ssl_renegotiate_never).
  // Sessions are kept by the pools (new-session callback), not by BoringSSL's
  // internal cache.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
  SSL_CTX_sess_set_new_cb(ctx, &onNewClientSession);
  if (config.verify) {
    const std::string ca = config.ca.empty() ? std::string(kSystemCaBundle) : config.ca;
    if (SSL_CTX_load_verify_locations(ctx, ca.c_str(), nullptr) != 1) {
      error = where + "cannot load CA file " + ca + ": " + lastSslError();
      return nullptr;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  }
  (void)sessionSlot();  // allocate the slot before workers race for it
  return c;
}

UpstreamTlsContext::~UpstreamTlsContext() {
  if (ctx_ != nullptr) SSL_CTX_free(ctx_);
}

TlsSession::~TlsSession() { SSL_free(ssl_); }

void TlsSession::pushCiphertext(const char* data, size_t len) {
  BIO_write(rbio_, data, static_cast<int>(len));
}

TlsSession::Result TlsSession::readPlaintext(char* out, size_t cap, size_t& n) {
  n = 0;
  int rc = SSL_read(ssl_, out, static_cast<int>(cap > INT32_MAX ? INT32_MAX : cap));
  if (rc > 0) {
    n = static_cast<size_t>(rc);
    return Result::kOk;
  }
  switch (SSL_get_error(ssl_, rc)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:  // memory BIOs never block writing
      return Result::kWantRead;
    case SSL_ERROR_ZERO_RETURN:
      return Result::kClosed;
    default:
    {
      // BoringSSL's reason (static storage), e.g. UNSUPPORTED_PROTOCOL,
      // NO_SHARED_CIPHER, WRONG_VERSION_NUMBER, HTTP_REQUEST.
      const uint32_t err = ERR_peek_error();
      const char* reason = err != 0 ? ERR_reason_error_string(err) : nullptr;
      failure_ = reason != nullptr ? reason : handshakeDone() ? "record_error" : "handshake_failed";
    }
      ERR_clear_error();
      return Result::kError;
  }
}

bool TlsSession::hasBufferedInput() const { return SSL_pending(ssl_) > 0 || BIO_pending(rbio_) > 0; }

bool TlsSession::writePlaintext(const char* data, size_t len) {
  while (len > 0) {
    int chunk = static_cast<int>(len > (1u << 30) ? (1u << 30) : len);
    int rc = SSL_write(ssl_, data, chunk);
    if (rc <= 0) {
      failure_ = "write_failed";
      ERR_clear_error();
      return false;
    }
    data += rc;
    len -= static_cast<size_t>(rc);
  }
  return true;
}

bool TlsSession::closeNotify() {
  const bool failed = failure_ != nullptr && *failure_ != '\0';
  if (failed || !handshakeDone() || (SSL_get_shutdown(ssl_) & SSL_SENT_SHUTDOWN) != 0) return false;
  const int rc = SSL_shutdown(ssl_);  // 0: sent, the peer's not seen yet; 1: both
  ERR_clear_error();
  return rc >= 0 && (SSL_get_shutdown(ssl_) & SSL_SENT_SHUTDOWN) != 0;
}

size_t TlsSession::pendingCiphertext() const { return BIO_pending(wbio_); }

size_t TlsSession::takeCiphertext(char* out, size_t cap) {
  int rc = BIO_read(wbio_, out, static_cast<int>(cap > INT32_MAX ? INT32_MAX : cap));
  return rc > 0 ? static_cast<size_t>(rc) : 0;
}

size_t TlsSession::takeCiphertextForWrite(char* out, size_t cap, std::unique_ptr<char[]>& tail, size_t& tail_len) {
  const size_t n = takeCiphertext(out, cap);
  tail_len = 0;
  const size_t rest = pendingCiphertext();
  if (rest > 0 && rest <= kCiphertextTail) {
    if (!tail) tail = std::make_unique<char[]>(kCiphertextTail);
    tail_len = takeCiphertext(tail.get(), kCiphertextTail);
  }
  return n;
}

}  // namespace portcullis
