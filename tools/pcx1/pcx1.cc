#include "tools/pcx1/pcx1.h"

#include <openssl/mem.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstring>
#include <utility>

namespace portcullis::pcx1 {

namespace {

constexpr uint8_t kMagic[4] = {'P', 'C', 'X', '1'};
constexpr char kDekAadPrefix[] = "pcx1-dek";
constexpr size_t kDekAadPrefixLen = sizeof(kDekAadPrefix) - 1;
constexpr size_t kNonceLen = 12;

void putBe16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v >> 8);
  p[1] = uint8_t(v);
}
void putBe32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v >> 24);
  p[1] = uint8_t(v >> 16);
  p[2] = uint8_t(v >> 8);
  p[3] = uint8_t(v);
}
uint16_t getBe16(const uint8_t* p) { return uint16_t((p[0] << 8) | p[1]); }
uint32_t getBe32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

void segmentNonce(const uint8_t* prefix, uint32_t index, bool last, uint8_t* nonce) {
  std::memcpy(nonce, prefix, kNoncePrefixLen);
  putBe32(nonce + kNoncePrefixLen, index);
  nonce[kNoncePrefixLen + 4] = last ? 1 : 0;
}

size_t dekAad(std::string_view key_id, uint8_t* out) {
  std::memcpy(out, kDekAadPrefix, kDekAadPrefixLen);
  std::memcpy(out + kDekAadPrefixLen, key_id.data(), key_id.size());
  return kDekAadPrefixLen + key_id.size();
}

void wipeCtx(EVP_AEAD_CTX& ctx, bool& live) {
  if (live) EVP_AEAD_CTX_cleanup(&ctx);
  OPENSSL_cleanse(&ctx, sizeof(ctx));
  live = false;
}

}  // namespace

const char* errorName(Error e) {
  switch (e) {
    case Error::kOk: return "ok";
    case Error::kBadArgument: return "bad_argument";
    case Error::kBadState: return "bad_state";
    case Error::kRandomFailed: return "random_failed";
    case Error::kBadHeader: return "bad_header";
    case Error::kUnknownKey: return "unknown_key";
    case Error::kUnwrapFailed: return "unwrap_failed";
    case Error::kBadTag: return "bad_tag";
    case Error::kShortSegment: return "short_segment";
    case Error::kEmptyFinalSegment: return "empty_final_segment";
    case Error::kTruncated: return "truncated";
    case Error::kTrailingData: return "trailing_data";
    case Error::kTooManySegments: return "too_many_segments";
  }
  return "unknown";
}

bool validKeyId(std::string_view key_id) {
  if (key_id.empty() || key_id.size() > kMaxKeyIdLen) return false;
  for (char c : key_id) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

size_t buildHeader(const Header& h, uint8_t* out) {
  if (!validKeyId(h.key_id) || h.segment_size == 0) return 0;
  const size_t len = headerLength(h.key_id.size());
  uint8_t* p = out;
  std::memcpy(p, kMagic, 4);
  p += 4;
  putBe16(p, uint16_t(len));
  p += 2;
  putBe32(p, h.segment_size);
  p += 4;
  *p++ = uint8_t(h.key_id.size());
  std::memcpy(p, h.key_id.data(), h.key_id.size());
  p += h.key_id.size();
  std::memcpy(p, h.wrap_nonce.data(), kWrapNonceLen);
  p += kWrapNonceLen;
  std::memcpy(p, h.wrapped_dek.data(), kWrappedDekLen);
  p += kWrappedDekLen;
  std::memcpy(p, h.nonce_prefix.data(), kNoncePrefixLen);
  p += kNoncePrefixLen;
  return size_t(p - out);
}

Error parseHeader(const uint8_t* p, size_t len, Header& out, std::string* reason) {
  auto bad = [&](const char* why) {
    if (reason) *reason = why;
    return Error::kBadHeader;
  };
  if (len < kFixedHeaderLen + 1 || len > kMaxHeaderLen) return bad("header length out of range");
  if (std::memcmp(p, kMagic, 4) != 0) return bad("not a pcx1 stream (bad magic)");
  if (getBe16(p + 4) != len) return bad("header_len does not match the header");
  const size_t key_id_len = p[10];
  if (headerLength(key_id_len) != len) return bad("key_id_len does not match header_len");
  const uint32_t segment_size = getBe32(p + 6);
  if (segment_size == 0) return bad("segment_size is 0");
  std::string_view key_id(reinterpret_cast<const char*>(p + 11), key_id_len);
  if (!validKeyId(key_id)) return bad("key id is not printable ASCII");
  const uint8_t* q = p + 11 + key_id_len;
  out.segment_size = segment_size;
  out.key_id = key_id;
  std::memcpy(out.wrap_nonce.data(), q, kWrapNonceLen);
  q += kWrapNonceLen;
  std::memcpy(out.wrapped_dek.data(), q, kWrappedDekLen);
  q += kWrappedDekLen;
  std::memcpy(out.nonce_prefix.data(), q, kNoncePrefixLen);
  return Error::kOk;
}

bool wrapDek(const uint8_t master[kKeyLen], std::string_view key_id, const uint8_t wrap_nonce[kWrapNonceLen],
             const uint8_t dek[kKeyLen], uint8_t wrapped[kWrappedDekLen]) {
  if (!validKeyId(key_id)) return false;
  uint8_t aad[kDekAadPrefixLen + kMaxKeyIdLen];
  const size_t aad_len = dekAad(key_id, aad);
  EVP_AEAD_CTX ctx;
  if (!EVP_AEAD_CTX_init(&ctx, EVP_aead_aes_256_gcm(), master, kKeyLen, kTagLen, nullptr)) return false;
  size_t out_len = 0;
  const int ok = EVP_AEAD_CTX_seal(&ctx, wrapped, &out_len, kWrappedDekLen, wrap_nonce, kWrapNonceLen, dek, kKeyLen,
                                   aad, aad_len);
  bool live = true;
  wipeCtx(ctx, live);
  return ok && out_len == kWrappedDekLen;
}

bool unwrapDek(const uint8_t master[kKeyLen], std::string_view key_id, const uint8_t wrap_nonce[kWrapNonceLen],
               const uint8_t wrapped[kWrappedDekLen], uint8_t dek[kKeyLen]) {
  if (!validKeyId(key_id)) return false;
  uint8_t aad[kDekAadPrefixLen + kMaxKeyIdLen];
  const size_t aad_len = dekAad(key_id, aad);
  EVP_AEAD_CTX ctx;
  if (!EVP_AEAD_CTX_init(&ctx, EVP_aead_aes_256_gcm(), master, kKeyLen, kTagLen, nullptr)) return false;
  size_t out_len = 0;
  const int ok = EVP_AEAD_CTX_open(&ctx, dek, &out_len, kKeyLen, wrap_nonce, kWrapNonceLen, wrapped, kWrappedDekLen,
                                   aad, aad_len);
  bool live = true;
  wipeCtx(ctx, live);
  if (!ok || out_len != kKeyLen) {
    OPENSSL_cleanse(dek, kKeyLen);
    return false;
  }
  return true;
}

// The start of every stream: validates the arguments, makes the data key,
// wrap nonce and nonce prefix (random, or the given ones), wraps the data key
// and writes the header. On success `dek` holds the data key, which the caller
// wipes. kBadArgument for bad arguments (nothing made), kRandomFailed.
namespace {
Error openStream(const uint8_t* master, std::string_view key_id, uint32_t segment_size, const uint8_t* dek_in,
                 const uint8_t* wrap_nonce_in, const uint8_t* nonce_prefix_in, uint8_t dek[kKeyLen],
                 uint8_t* header, size_t& header_len, uint8_t nonce_prefix[kNoncePrefixLen]) {
  if (master == nullptr || !validKeyId(key_id) || segment_size == 0 || segment_size > kMaxSegmentSize) {
    return Error::kBadArgument;
  }
  Header h;
  h.segment_size = segment_size;
  h.key_id = key_id;
  if (dek_in != nullptr) {
    std::memcpy(dek, dek_in, kKeyLen);
    std::memcpy(h.wrap_nonce.data(), wrap_nonce_in, kWrapNonceLen);
    std::memcpy(h.nonce_prefix.data(), nonce_prefix_in, kNoncePrefixLen);
  } else if (!RAND_bytes(dek, kKeyLen) || !RAND_bytes(h.wrap_nonce.data(), kWrapNonceLen) ||
             !RAND_bytes(h.nonce_prefix.data(), kNoncePrefixLen)) {
    OPENSSL_cleanse(dek, kKeyLen);
    return Error::kRandomFailed;
  }
  if (!wrapDek(master, key_id, h.wrap_nonce.data(), dek, h.wrapped_dek.data())) {
    OPENSSL_cleanse(dek, kKeyLen);
    return Error::kBadArgument;
  }
  header_len = buildHeader(h, header);
  std::memcpy(nonce_prefix, h.nonce_prefix.data(), kNoncePrefixLen);
  return Error::kOk;
}
}  // namespace

// ---------------------------------------------------------------- Sealer

Sealer::~Sealer() {
  reset();
  if (!buf_.empty()) OPENSSL_cleanse(buf_.data(), buf_.size());
}

void Sealer::reset() {
  wipeCtx(ctx_, ctx_live_);
  if (held_ > 0 && state_ == State::kStreaming) OPENSSL_cleanse(buf_.data(), held_);
  state_ = State::kIdle;
  error_ = Error::kOk;
  held_ = 0;
  index_ = 0;
  plaintext_bytes_ = 0;
  header_len_ = 0;
  ready_ptr_ = nullptr;
  ready_len_ = 0;
}

Error Sealer::fail(Error e) {
  wipeCtx(ctx_, ctx_live_);
  if (held_ > 0) OPENSSL_cleanse(buf_.data(), held_);
  held_ = 0;
  ready_len_ = 0;
  state_ = State::kFailed;
  error_ = e;
  return e;
}

Error Sealer::begin(const uint8_t* master, std::string_view key_id, uint32_t segment_size) {
  return start(master, key_id, segment_size, nullptr, nullptr, nullptr);
}

Error Sealer::beginDeterministic(const uint8_t* master, std::string_view key_id, uint32_t segment_size,
                                 const uint8_t dek[kKeyLen], const uint8_t wrap_nonce[kWrapNonceLen],
                                 const uint8_t nonce_prefix[kNoncePrefixLen]) {
  if (dek == nullptr || wrap_nonce == nullptr || nonce_prefix == nullptr) return Error::kBadArgument;
  return start(master, key_id, segment_size, dek, wrap_nonce, nonce_prefix);
}

Error Sealer::start(const uint8_t* master, std::string_view key_id, uint32_t segment_size, const uint8_t* dek_in,
                    const uint8_t* wrap_nonce_in, const uint8_t* nonce_prefix_in) {
  reset();
  uint8_t dek[kKeyLen];
  const Error e = openStream(master, key_id, segment_size, dek_in, wrap_nonce_in, nonce_prefix_in, dek, header_.data(),
                             header_len_, nonce_prefix_.data());
  if (e != Error::kOk) return e == Error::kBadArgument ? e : fail(e);
  const bool init = EVP_AEAD_CTX_init(&ctx_, EVP_aead_aes_256_gcm(), dek, kKeyLen, kTagLen, nullptr);
  OPENSSL_cleanse(dek, sizeof(dek));
  if (!init) return fail(Error::kBadArgument);
  ctx_live_ = true;
  segment_size_ = segment_size;  // the buffer comes when first needed (ensureBuffer)
  state_ = State::kStreaming;
  ready_ptr_ = header_.data();
  ready_len_ = header_len_;
  return Error::kOk;
}

void Sealer::ensureBuffer() {
  if (buf_.size() == size_t(segment_size_) + kTagLen) return;
  if (!buf_.empty()) OPENSSL_cleanse(buf_.data(), buf_.size());
  buf_.assign(size_t(segment_size_) + kTagLen, 0);
}

std::span<uint8_t> Sealer::window() {
  if (state_ != State::kStreaming || ready_len_ != 0 || held_ == segment_size_) return {};
  ensureBuffer();
  return {buf_.data() + held_, size_t(segment_size_) - held_};
}

std::vector<uint8_t> Sealer::releaseBuffer() {
  if (held_ != 0 || ready_len_ != 0) return {};
  return std::exchange(buf_, {});
}

void Sealer::adoptBuffer(std::vector<uint8_t>&& b) {
  if (buf_.empty() && segment_size_ != 0 && b.size() == size_t(segment_size_) + kTagLen) buf_ = std::move(b);
}

Error Sealer::sealHeld(bool last) {
  ensureBuffer();
  // A non-final segment at 2^32 - 2 would make the next index 2^32 - 1.
  if (index_ == 0xFFFFFFFFu || (!last && index_ >= 0xFFFFFFFEu)) return fail(Error::kTooManySegments);
  uint8_t nonce[kNonceLen];
  segmentNonce(nonce_prefix_.data(), index_, last, nonce);
  size_t out_len = 0;
  if (!EVP_AEAD_CTX_seal(&ctx_, buf_.data(), &out_len, buf_.size(), nonce, kNonceLen, buf_.data(), held_,
                         header_.data(), header_len_)) {
    return fail(Error::kBadState);
  }
  held_ = 0;
  if (!last) ++index_;
  ready_ptr_ = buf_.data();
  ready_len_ = out_len;
  return Error::kOk;
}

size_t Sealer::feed(const uint8_t* p, size_t n) {
  if (state_ != State::kStreaming || ready_len_ != 0) return 0;
  ensureBuffer();
  size_t used = 0;
  while (used < n) {
    if (held_ == segment_size_) {
      // More plaintext follows a full segment, so that segment is not the last.
      sealHeld(false);
      return used;
    }
    if (held_ == 0 && n - used > segment_size_) {
      // A whole non-final segment is in the caller's slice: seal it straight
      // from there into the segment buffer, skipping the copy.
      if (index_ >= 0xFFFFFFFEu) {
        fail(Error::kTooManySegments);
        return used;
      }
      uint8_t nonce[kNonceLen];
      segmentNonce(nonce_prefix_.data(), index_, false, nonce);
      size_t out_len = 0;
      if (!EVP_AEAD_CTX_seal(&ctx_, buf_.data(), &out_len, buf_.size(), nonce, kNonceLen, p + used, segment_size_,
                             header_.data(), header_len_)) {
        fail(Error::kBadState);
        return used;
      }
      ++index_;
      used += segment_size_;
      plaintext_bytes_ += segment_size_;
      ready_ptr_ = buf_.data();
      ready_len_ = out_len;
      return used;
    }
    const size_t take = std::min(size_t(segment_size_) - held_, n - used);
    if (p + used != buf_.data() + held_) std::memcpy(buf_.data() + held_, p + used, take);
    held_ += take;
    used += take;
    plaintext_bytes_ += take;
  }
  return used;
}

Error Sealer::sealFull() {
  if (state_ == State::kFailed) return error_;
  if (state_ != State::kStreaming || ready_len_ != 0 || held_ != segment_size_) return Error::kBadState;
  return sealHeld(false);
}

Error Sealer::finish() {
  if (state_ == State::kFailed) return error_;
  if (state_ != State::kStreaming || ready_len_ != 0) return Error::kBadState;
  const Error e = sealHeld(true);
  if (e != Error::kOk) return e;
  wipeCtx(ctx_, ctx_live_);
  state_ = State::kFinished;
  return Error::kOk;
}

// ---------------------------------------------------------------- SizedSealer

SizedSealer::SizedSealer() { EVP_CIPHER_CTX_init(&ctx_); }

SizedSealer::~SizedSealer() { wipe(); }

void SizedSealer::wipe() {
  // Frees (and BoringSSL's allocator zeroes) the key schedule and GCM state.
  if (ctx_live_) EVP_CIPHER_CTX_cleanup(&ctx_);
  ctx_live_ = false;
  in_segment_ = false;
}

void SizedSealer::reset() {
  wipe();
  state_ = State::kIdle;
  error_ = Error::kOk;
  index_ = 0;
  total_ = done_ = segment_end_ = 0;
  header_len_ = 0;
  tag_len_ = 0;
}

Error SizedSealer::fail(Error e) {
  wipe();
  tag_len_ = 0;
  state_ = State::kFailed;
  error_ = e;
  return e;
}

Error SizedSealer::begin(const uint8_t* master, std::string_view key_id, uint32_t segment_size, uint64_t total) {
  return start(master, key_id, segment_size, total, nullptr, nullptr, nullptr);
}

Error SizedSealer::beginDeterministic(const uint8_t* master, std::string_view key_id, uint32_t segment_size,
                                      uint64_t total, const uint8_t dek[kKeyLen],
                                      const uint8_t wrap_nonce[kWrapNonceLen],
                                      const uint8_t nonce_prefix[kNoncePrefixLen]) {
  if (dek == nullptr || wrap_nonce == nullptr || nonce_prefix == nullptr) return Error::kBadArgument;
  return start(master, key_id, segment_size, total, dek, wrap_nonce, nonce_prefix);
}

Error SizedSealer::start(const uint8_t* master, std::string_view key_id, uint32_t segment_size, uint64_t total,
                         const uint8_t* dek_in, const uint8_t* wrap_nonce_in, const uint8_t* nonce_prefix_in) {
  reset();
  if (segment_size != 0 && total / segment_size + (total % segment_size != 0) > kMaxSegments) {
    return fail(Error::kTooManySegments);  // the last index would reach 2^32 - 1
  }
  uint8_t dek[kKeyLen];
  const Error e = openStream(master, key_id, segment_size, dek_in, wrap_nonce_in, nonce_prefix_in, dek, header_.data(),
                             header_len_, nonce_prefix_.data());
  if (e != Error::kOk) return e == Error::kBadArgument ? e : fail(e);
  const bool init = EVP_EncryptInit_ex(&ctx_, EVP_aes_256_gcm(), nullptr, dek, nullptr);
  OPENSSL_cleanse(dek, sizeof(dek));
  ctx_live_ = true;  // even a failed init may have allocated state to free
  if (!init) return fail(Error::kBadArgument);
  segment_size_ = segment_size;
  total_ = total;
  state_ = State::kStreaming;
  return Error::kOk;
}

size_t SizedSealer::segmentLeft() const {
  if (state_ != State::kStreaming) return 0;
  if (in_segment_) return static_cast<size_t>(segment_end_ - done_);
  return static_cast<size_t>(std::min<uint64_t>(segment_size_, total_ - done_));
}

Error SizedSealer::seal(uint8_t* p, size_t n) {
  if (state_ == State::kFailed) return error_;
  tag_len_ = 0;
  if (state_ != State::kStreaming || n > segmentLeft() || (n == 0 && total_ != 0)) return fail(Error::kBadState);
  if (!in_segment_) {
    segment_end_ = done_ + std::min<uint64_t>(segment_size_, total_ - done_);
    const bool last = segment_end_ == total_;
    uint8_t nonce[kNonceLen];
    segmentNonce(nonce_prefix_.data(), index_, last, nonce);
    int len = 0;
    if (!EVP_EncryptInit_ex(&ctx_, nullptr, nullptr, nullptr, nonce) ||
        !EVP_EncryptUpdate(&ctx_, nullptr, &len, header_.data(), static_cast<int>(header_len_))) {
      return fail(Error::kBadState);
    }
    in_segment_ = true;
  }
  int len = 0;
  if (n > 0 && (!EVP_EncryptUpdate(&ctx_, p, &len, p, static_cast<int>(n)) || size_t(len) != n)) {
    return fail(Error::kBadState);
  }
  done_ += n;
  if (done_ < segment_end_) return Error::kOk;
  // The segment is complete: its tag.
  uint8_t none[16];
  if (!EVP_EncryptFinal_ex(&ctx_, none, &len) ||
      !EVP_CIPHER_CTX_ctrl(&ctx_, EVP_CTRL_GCM_GET_TAG, static_cast<int>(kTagLen), tag_.data())) {
    return fail(Error::kBadState);
  }
  tag_len_ = kTagLen;
  in_segment_ = false;
  if (done_ == total_) {
    wipe();
    state_ = State::kFinished;
  } else {
    ++index_;
  }
  return Error::kOk;
}

// ---------------------------------------------------------------- Opener

Opener::Opener(KeyLookup lookup, uint32_t max_segment_size)
    : lookup_(std::move(lookup)), max_segment_size_(std::min(max_segment_size, kMaxSegmentSize)) {}

Opener::~Opener() {
  wipeCtx(ctx_, ctx_live_);
  if (!plain_.empty()) OPENSSL_cleanse(plain_.data(), plain_.size());
}

Error Opener::fail(Error e, std::string reason) {
  wipeCtx(ctx_, ctx_live_);
  if (!plain_.empty()) OPENSSL_cleanse(plain_.data(), plain_.size());
  held_ = 0;
  ready_len_ = 0;
  state_ = State::kFailed;
  error_ = e;
  reason_ = std::move(reason);
  return e;
}

Error Opener::onHeader() {
  std::string why;
  if (parseHeader(header_bytes_.data(), header_len_, header_, &why) != Error::kOk) {
    return fail(Error::kBadHeader, "bad header: " + why);
  }
  if (header_.segment_size > max_segment_size_) {
    return fail(Error::kBadHeader, "bad header: segment_size " + std::to_string(header_.segment_size) +
                                       " exceeds the limit of " + std::to_string(max_segment_size_));
  }
  const std::string key_id(header_.key_id);
  uint8_t master[kKeyLen];
  if (!lookup_ || !lookup_(header_.key_id, master)) {
    OPENSSL_cleanse(master, sizeof(master));
    return fail(Error::kUnknownKey, "unknown key id \"" + key_id + "\"");
  }
  uint8_t dek[kKeyLen];
  const bool unwrapped =
      unwrapDek(master, header_.key_id, header_.wrap_nonce.data(), header_.wrapped_dek.data(), dek);
  OPENSSL_cleanse(master, sizeof(master));
  if (!unwrapped) {
    return fail(Error::kUnwrapFailed,
                "data key does not unwrap under key \"" + key_id + "\" (wrong key or altered header)");
  }
  const bool init = EVP_AEAD_CTX_init(&ctx_, EVP_aead_aes_256_gcm(), dek, kKeyLen, kTagLen, nullptr);
  OPENSSL_cleanse(dek, sizeof(dek));
  if (!init) return fail(Error::kUnwrapFailed, "cannot set up the data key");
  ctx_live_ = true;
  buf_.assign(size_t(header_.segment_size) + kTagLen, 0);
  plain_.assign(header_.segment_size, 0);
  state_ = State::kSegments;
  return Error::kOk;
}

size_t Opener::feed(const uint8_t* p, size_t n) {
  if (state_ == State::kFailed || ready_len_ != 0 || n == 0) return 0;
  if (state_ == State::kDone) {
    fail(Error::kTrailingData, "data after the final segment");
    return 0;
  }
  size_t used = 0;
  while (used < n && state_ == State::kHeader) {
    const size_t need = header_len_ != 0 ? header_len_ : 6;
    const size_t take = std::min(need - header_have_, n - used);
    std::memcpy(header_bytes_.data() + header_have_, p + used, take);
    header_have_ += take;
    used += take;
    if (header_have_ < need) break;
    if (header_len_ == 0) {
      if (std::memcmp(header_bytes_.data(), "PCX1", 4) != 0) {
        fail(Error::kBadHeader, "bad header: not a pcx1 stream (bad magic)");
        return used;
      }
      const size_t len = getBe16(header_bytes_.data() + 4);
      if (len < kFixedHeaderLen + 1 || len > kMaxHeaderLen) {
        fail(Error::kBadHeader, "bad header: header_len " + std::to_string(len) + " out of range");
        return used;
      }
      header_len_ = len;
    } else if (onHeader() != Error::kOk) {
      return used;
    }
  }
  if (state_ != State::kSegments) return used;
  const size_t cap = buf_.size();
  while (used < n) {
    if (held_ == cap) {
      // A byte follows a full segment, so it must be a non-final one.
      openHeld(cap, false);
      return used;
    }
    const size_t take = std::min(cap - held_, n - used);
    std::memcpy(buf_.data() + held_, p + used, take);
    held_ += take;
    used += take;
  }
  return used;
}

bool Opener::tryOpen(size_t len, bool last, size_t* out_len) {
  uint8_t nonce[kNonceLen];
  segmentNonce(header_.nonce_prefix.data(), index_, last, nonce);
  return EVP_AEAD_CTX_open(&ctx_, plain_.data(), out_len, plain_.size(), nonce, kNonceLen, buf_.data(), len,
                           header_bytes_.data(), header_len_) == 1;
}

Error Opener::openHeld(size_t len, bool last) {
  const std::string seg = "segment " + std::to_string(index_);
  if (index_ == 0xFFFFFFFFu || (!last && index_ >= 0xFFFFFFFEu)) {
    return fail(Error::kTooManySegments, "segment index reaches 2^32 - 1");
  }
  size_t out_len = 0;
  if (tryOpen(len, last, &out_len)) {
    held_ = 0;
    if (last && out_len == 0 && index_ > 0) {
      return fail(Error::kEmptyFinalSegment, seg + " is an empty final segment after other segments");
    }
    if (!last) ++index_;
    plaintext_bytes_ += out_len;
    ready_ptr_ = plain_.data();
    ready_len_ = out_len;
    if (last) {
      wipeCtx(ctx_, ctx_live_);
      state_ = State::kDone;
    }
    return Error::kOk;
  }
  // Diagnose only (the ciphertext is intact because opening is out of place):
  // the other final flag tells truncation and trailing data from tampering.
  // Nothing of it is released.
  const bool other = tryOpen(len, !last, &out_len);
  if (other && !last) return fail(Error::kTrailingData, "data after the final segment (" + seg + ")");
  if (other && last && len == buf_.size()) {
    return fail(Error::kTruncated, "end of data after " + seg + ", which is not the final segment");
  }
  if (other && last) {
    return fail(Error::kShortSegment, "non-final " + seg + " is shorter than segment_size");
  }
  return fail(Error::kBadTag, seg + " failed authentication (tampered, reordered or truncated)");
}

Error Opener::finish() {
  switch (state_) {
    case State::kFailed: return error_;
    case State::kDone: return Error::kOk;
    case State::kHeader:
      return fail(header_have_ == 0 ? Error::kTruncated : Error::kBadHeader,
                  header_have_ == 0 ? "empty input" : "bad header: truncated");
    case State::kSegments: break;
  }
  if (ready_len_ != 0) return Error::kBadState;
  if (held_ < kTagLen) {
    if (held_ == 0 && index_ > 0) {
      return fail(Error::kTruncated, "end of data after segment " + std::to_string(index_ - 1) +
                                         " without a final segment");
    }
    return fail(Error::kTruncated, "end of data inside segment " + std::to_string(index_));
  }
  return openHeld(held_, true);
}

// ---------------------------------------------------------------- one-shot

Error sealAll(const uint8_t* master, std::string_view key_id, uint32_t segment_size, std::span<const uint8_t> plain,
              std::vector<uint8_t>& out) {
  Sealer s;
  Error e = s.begin(master, key_id, segment_size);
  if (e != Error::kOk) return e;
  out.clear();
  out.reserve(ciphertextLength(plain.size(), key_id.size(), segment_size));
  const uint8_t* p = plain.data();
  size_t n = plain.size();
  for (;;) {
    const size_t k = s.feed(p, n);
    p += k;
    n -= k;
    if (s.error() != Error::kOk) return s.error();
    auto r = s.ready();
    out.insert(out.end(), r.begin(), r.end());
    s.consumeReady();
    if (n == 0 && r.empty()) break;
  }
  e = s.finish();
  if (e != Error::kOk) return e;
  auto r = s.ready();
  out.insert(out.end(), r.begin(), r.end());
  s.consumeReady();
  return Error::kOk;
}

Error openAll(const KeyLookup& lookup, std::span<const uint8_t> ct, std::vector<uint8_t>& out, std::string* reason) {
  Opener o(lookup);
  out.clear();
  const uint8_t* p = ct.data();
  size_t n = ct.size();
  Error e = Error::kOk;
  for (;;) {
    const size_t k = o.feed(p, n);
    p += k;
    n -= k;
    if (o.error() != Error::kOk) break;
    auto r = o.ready();
    out.insert(out.end(), r.begin(), r.end());
    o.consumeReady();
    if (n == 0 && r.empty()) break;
  }
  if (o.error() == Error::kOk) {
    e = o.finish();
    if (e == Error::kOk) {
      auto r = o.ready();
      out.insert(out.end(), r.begin(), r.end());
      o.consumeReady();
      return Error::kOk;
    }
  }
  e = o.error();
  if (reason) *reason = o.reason();
  if (!out.empty()) OPENSSL_cleanse(out.data(), out.size());
  out.clear();
  return e;
}

}  // namespace portcullis::pcx1
