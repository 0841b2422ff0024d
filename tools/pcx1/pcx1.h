// pcx1: the streaming upload encryption format of SPEC §7, as an embeddable
// C++ API. It depends only on BoringSSL (<openssl/aead.h>, <openssl/cipher.h>,
// <openssl/rand.h>, <openssl/mem.h>), so a C++ backend can copy tools/pcx1/
// into its tree to decrypt what the proxy sends it.
//
//   header:   "PCX1" | header_len u16 BE | segment_size u32 BE |
//             key_id_len u8 | key_id | wrap_nonce[12] | wrapped_dek[48] |
//             nonce_prefix[7]
//             wrapped_dek = AES-256-GCM(master, wrap_nonce, dek,
//                                       aad = "pcx1-dek" || key_id) || tag
//   segment i: AES-256-GCM(dek, nonce_prefix || u32 BE i || last, aad = header)
//
// The sealer streams with one segment buffer (segment_size + 16 bytes) that
// it owns and seals in place. The sized sealer, for a body whose length is
// known before it starts, needs no buffer: it encrypts each slice in the
// caller's memory as it arrives and hands out each segment's tag. The opener keeps the ciphertext of one segment
// and opens it into a second, plaintext buffer, so that after a failed tag it
// can still tell a missing final flag or trailing data from tampering
// (BoringSSL zeroes the output of a failed open). Neither throws.
#pragma once

#include <openssl/aead.h>
#include <openssl/cipher.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace portcullis::pcx1 {

inline constexpr size_t kKeyLen = 32;
inline constexpr size_t kTagLen = 16;
inline constexpr size_t kWrapNonceLen = 12;
inline constexpr size_t kWrappedDekLen = kKeyLen + kTagLen;
inline constexpr size_t kNoncePrefixLen = 7;
inline constexpr size_t kMaxKeyIdLen = 255;
// Fixed part of the header: magic, header_len, segment_size, key_id_len,
// wrap_nonce, wrapped_dek, nonce_prefix. The header is this plus the key id.
inline constexpr size_t kFixedHeaderLen = 4 + 2 + 4 + 1 + kWrapNonceLen + kWrappedDekLen + kNoncePrefixLen;
inline constexpr size_t kMaxHeaderLen = kFixedHeaderLen + kMaxKeyIdLen;
// Largest segment size either side accepts. A header is untrusted input and
// its segment size decides the opener's buffer, so it is bounded.
inline constexpr uint32_t kMaxSegmentSize = 16u << 20;
// A stream has at most this many segments: indices 0 .. 2^32 - 2. A segment
// index reaching 2^32 - 1 is refused by both sides.
inline constexpr uint64_t kMaxSegments = 0xFFFFFFFFull;

enum class Error : uint8_t {
  kOk = 0,
  kBadArgument,       // caller error: bad key id, segment size, key length
  kBadState,          // call out of order (see each method's contract)
  kRandomFailed,      // the CSPRNG failed
  kBadHeader,         // header unparsable: magic, lengths, key id, segment size
  kUnknownKey,        // the key lookup has no master key for the header's key id
  kUnwrapFailed,      // the wrapped data key does not verify under the master key
  kBadTag,            // a segment failed authentication
  kShortSegment,      // a non-final segment shorter than segment_size
  kEmptyFinalSegment, // an empty final segment after other segments
  kTruncated,         // end of data without a verified final segment
  kTrailingData,      // bytes after the final segment
  kTooManySegments,   // a segment index reaching 2^32 - 1
};

// Stable lowercase name of an error, e.g. "bad_tag".
const char* errorName(Error e);

// Header length for a key id of `key_id_len` bytes.
constexpr size_t headerLength(size_t key_id_len) { return kFixedHeaderLen + key_id_len; }

// Exact ciphertext length of an n-byte body:
// header_len + n + 16 * max(1, ceil(n / segment_size)). segment_size > 0.
constexpr uint64_t ciphertextLength(uint64_t n, size_t key_id_len, uint32_t segment_size) {
  uint64_t segments = n == 0 ? 1 : (n + segment_size - 1) / segment_size;
  return headerLength(key_id_len) + n + kTagLen * segments;
}

// Key ids are 1..255 bytes of printable ASCII without space (0x21..0x7e).
bool validKeyId(std::string_view key_id);

// The header fields. `key_id` views into the bytes it was parsed from.
struct Header {
  uint32_t segment_size = 0;
  std::string_view key_id;
  std::array<uint8_t, kWrapNonceLen> wrap_nonce{};
  std::array<uint8_t, kWrappedDekLen> wrapped_dek{};
  std::array<uint8_t, kNoncePrefixLen> nonce_prefix{};
};

// Serialises `h` into `out` (capacity kMaxHeaderLen) and returns its length,
// or 0 when the key id or segment size is invalid.
size_t buildHeader(const Header& h, uint8_t* out);

// Parses a complete header of exactly `len` bytes. On failure returns
// kBadHeader and sets `reason`.
Error parseHeader(const uint8_t* p, size_t len, Header& out, std::string* reason = nullptr);

// Wraps / unwraps a data key under a master key (AAD "pcx1-dek" || key_id).
bool wrapDek(const uint8_t master[kKeyLen], std::string_view key_id, const uint8_t wrap_nonce[kWrapNonceLen],
             const uint8_t dek[kKeyLen], uint8_t wrapped[kWrappedDekLen]);
bool unwrapDek(const uint8_t master[kKeyLen], std::string_view key_id, const uint8_t wrap_nonce[kWrapNonceLen],
               const uint8_t wrapped[kWrappedDekLen], uint8_t dek[kKeyLen]);

// Streaming encryptor. Usage:
//
//   Sealer s;
//   s.begin(master, "k2", 65536);
//   for each plaintext slice (p, n):
//     while (n > 0) {
//       size_t k = s.feed(p, n); p += k; n -= k;
//       if (!s.ready().empty()) { send(s.ready()); s.consumeReady(); }
//     }
//   s.finish();
//   send(s.ready()); s.consumeReady();       // the final segment
//
// Output contract: ready() is the next bytes of ciphertext, in order: first
// the header (after begin), then each sealed segment, which points into the
// sealer's own segment buffer. Those bytes stay valid and unchanged until
// consumeReady() is called (so they can be handed to an asynchronous write
// and released in its completion), or until reset()/destruction. While
// ready() is non-empty, feed() consumes nothing and finish() fails with
// kBadState. feed() returns 0 only when ready() is non-empty afterwards or
// an error occurred, so the loop above always makes progress.
//
// The sealer holds back at most one segment: a full segment is sealed (as
// non-final) only once a further plaintext byte arrives; finish() seals the
// held bytes as the final segment (an empty body gives one empty final
// segment). Plaintext is copied once into the segment buffer and sealed
// there in place; when a slice passed to feed() holds a whole segment and
// more, that segment is sealed straight from the slice into the buffer, with
// no copy at all. The data key is wiped as soon as the AEAD key schedule is
// set up; the schedule is wiped by finish(), reset() and the destructor.
class Sealer {
 public:
  Sealer() = default;
  ~Sealer();
  Sealer(const Sealer&) = delete;
  Sealer& operator=(const Sealer&) = delete;

  // Starts a stream with a fresh random data key, wrap nonce and nonce
  // prefix. `master` is 32 bytes; `key_id` must satisfy validKeyId();
  // 1 <= segment_size <= kMaxSegmentSize. Allocates the segment buffer
  // (reused across begin() calls of the same size). ready() is the header.
  Error begin(const uint8_t* master, std::string_view key_id, uint32_t segment_size);
  // Deterministic variant for test vectors: the caller supplies the data key
  // and nonces. Never use it with real data: nonces must not repeat.
  Error beginDeterministic(const uint8_t* master, std::string_view key_id, uint32_t segment_size,
                           const uint8_t dek[kKeyLen], const uint8_t wrap_nonce[kWrapNonceLen],
                           const uint8_t nonce_prefix[kNoncePrefixLen]);

  // Takes up to n plaintext bytes and returns how many it took. Bytes
  // already in place (p == window().data(), e.g. read there from a socket)
  // are taken without a copy.
  size_t feed(const uint8_t* p, size_t n);
  // The free tail of the segment buffer, where the next fed bytes go: a
  // caller may write plaintext there first and then feed() it from there.
  // Empty unless streaming with ready() empty and room left. Writing there
  // changes nothing until feed().
  std::span<uint8_t> window();
  // Segment buffer handover, for a caller that pools buffers so that a busy
  // process reuses a few cache-warm ones: releaseBuffer() gives the buffer
  // up when it holds nothing the stream still needs (held() == 0, ready()
  // empty; else it returns an empty vector); adoptBuffer() hands one in
  // (ignored unless the sealer has none and it is segment_size + 16 bytes).
  // A sealer without a buffer allocates one when it next needs it.
  std::vector<uint8_t> releaseBuffer();
  void adoptBuffer(std::vector<uint8_t>&& b);
  bool hasBuffer() const { return !buf_.empty(); }
  // Seals a full segment (held() == segment_size) as a non-final one; the
  // caller promises more plaintext follows (it knows the body's length), so
  // the segment need not wait for the next byte. kBadState otherwise.
  Error sealFull();
  // End of plaintext: seals the held bytes as the final segment.
  Error finish();

  std::span<const uint8_t> ready() const { return {ready_ptr_, ready_len_}; }
  void consumeReady() { ready_len_ = 0; }

  bool finished() const { return state_ == State::kFinished; }
  Error error() const { return error_; }
  // The header bytes (valid after begin()).
  std::span<const uint8_t> header() const { return {header_.data(), header_len_}; }
  // Plaintext bytes taken so far.
  uint64_t plaintextBytes() const { return plaintext_bytes_; }
  // Plaintext bytes taken but not sealed yet (0 ..= segment_size). With
  // ready() empty, feed() takes up to segment_size - held() bytes without
  // producing output; one byte more seals the held segment.
  size_t held() const { return held_; }
  // Forgets the stream and wipes key material; keeps the buffer.
  void reset();

  // Test hook: index of the next segment to seal (to test the 2^32 - 1 limit).
  void setNextSegmentIndexForTest(uint32_t i) { index_ = i; }

 private:
  enum class State : uint8_t { kIdle, kStreaming, kFinished, kFailed };
  Error start(const uint8_t* master, std::string_view key_id, uint32_t segment_size, const uint8_t* dek,
              const uint8_t* wrap_nonce, const uint8_t* nonce_prefix);
  Error sealHeld(bool last);
  Error fail(Error e);
  void ensureBuffer();

  State state_ = State::kIdle;
  Error error_ = Error::kOk;
  EVP_AEAD_CTX ctx_{};
  bool ctx_live_ = false;
  uint32_t segment_size_ = 0;
  uint32_t index_ = 0;
  uint64_t plaintext_bytes_ = 0;
  std::array<uint8_t, kMaxHeaderLen> header_{};
  size_t header_len_ = 0;
  std::array<uint8_t, kNoncePrefixLen> nonce_prefix_{};
  std::vector<uint8_t> buf_;  // segment_size + 16
  size_t held_ = 0;           // plaintext bytes in buf_
  const uint8_t* ready_ptr_ = nullptr;
  size_t ready_len_ = 0;
};

// Streaming encryptor for a body whose length is known before its first byte
// (an HTTP Content-Length): every segment's final flag is then known when the
// segment starts, so nothing is held back. Each plaintext slice is encrypted
// where it lies (AES-256-GCM is CTR mode plus GHASH, both incremental); the
// caller sends it on, and after the slice that completes a segment, that
// segment's 16-byte tag. Usage:
//
//   SizedSealer s;
//   s.begin(master, "k2", 65536, n);        // n = total plaintext bytes
//   send(s.header());
//   for each plaintext slice (p, len), total n:
//     while (len > 0) {
//       size_t k = std::min(len, s.segmentLeft());
//       s.seal(p, k);  send(p, k);             // p now holds ciphertext
//       if (!s.tag().empty()) send(s.tag());   // the segment ended here
//       p += k; len -= k;
//     }
//   if (n == 0) { s.seal(nullptr, 0); send(s.tag()); }  // one empty final segment
//
// The output is byte for byte what Sealer produces for the same keys and
// nonces. seal() takes at most segmentLeft() bytes, so a call never spans two
// segments; tag() is the tag of the segment the last seal() completed (empty
// if it completed none) and stays valid until the next seal(). The data key is
// wiped as soon as the key schedule is set up; the schedule (and the GHASH
// state) by the final segment, reset(), a failure and the destructor.
class SizedSealer {
 public:
  SizedSealer();
  ~SizedSealer();
  SizedSealer(const SizedSealer&) = delete;
  SizedSealer& operator=(const SizedSealer&) = delete;

  // Starts a stream of exactly `total` plaintext bytes with a fresh random
  // data key, wrap nonce and nonce prefix. `master` is 32 bytes; `key_id`
  // must satisfy validKeyId(); 1 <= segment_size <= kMaxSegmentSize.
  // kTooManySegments when `total` needs more than kMaxSegments segments.
  Error begin(const uint8_t* master, std::string_view key_id, uint32_t segment_size, uint64_t total);
  // Deterministic variant for test vectors (nonces must never repeat).
  Error beginDeterministic(const uint8_t* master, std::string_view key_id, uint32_t segment_size, uint64_t total,
                           const uint8_t dek[kKeyLen], const uint8_t wrap_nonce[kWrapNonceLen],
                           const uint8_t nonce_prefix[kNoncePrefixLen]);

  // Encrypts n plaintext bytes at p in place (1 <= n <= segmentLeft(); n = 0
  // only for the single empty segment of an empty body). kBadState when the
  // stream is not running or n is out of range (the stream then fails).
  Error seal(uint8_t* p, size_t n);
  // Plaintext bytes the current segment still takes (0: finished).
  size_t segmentLeft() const;
  // The tag of the segment the last seal() completed, else empty.
  std::span<const uint8_t> tag() const { return {tag_.data(), tag_len_}; }
  std::span<const uint8_t> header() const { return {header_.data(), header_len_}; }

  bool finished() const { return state_ == State::kFinished; }
  Error error() const { return error_; }
  uint64_t plaintextBytes() const { return done_; }
  // Forgets the stream and wipes key material.
  void reset();

 private:
  enum class State : uint8_t { kIdle, kStreaming, kFinished, kFailed };
  Error start(const uint8_t* master, std::string_view key_id, uint32_t segment_size, uint64_t total,
              const uint8_t* dek, const uint8_t* wrap_nonce, const uint8_t* nonce_prefix);
  Error fail(Error e);
  void wipe();

  State state_ = State::kIdle;
  Error error_ = Error::kOk;
  EVP_CIPHER_CTX ctx_;
  bool ctx_live_ = false;
  bool in_segment_ = false;   // the current segment's nonce and AAD are set
  uint32_t segment_size_ = 0;
  uint32_t index_ = 0;        // current segment
  uint64_t total_ = 0;
  uint64_t done_ = 0;         // plaintext bytes sealed
  uint64_t segment_end_ = 0;  // done_ at which the current segment ends
  std::array<uint8_t, kMaxHeaderLen> header_{};
  size_t header_len_ = 0;
  std::array<uint8_t, kNoncePrefixLen> nonce_prefix_{};
  std::array<uint8_t, kTagLen> tag_{};
  size_t tag_len_ = 0;
};

// Looks up the master key for a key id; writes 32 bytes to `out` and
// returns true, or returns false when the id is unknown.
using KeyLookup = std::function<bool(std::string_view key_id, uint8_t* out)>;

// Streaming decryptor. Usage:
//
//   Opener o(lookup);
//   for each ciphertext slice (p, n):
//     while (n > 0) {
//       size_t k = o.feed(p, n); p += k; n -= k;
//       if (o.error() != Error::kOk) -> reject, o.reason()
//       if (!o.ready().empty()) { write(o.ready()); o.consumeReady(); }
//     }
//   if (o.finish() != Error::kOk) -> reject, o.reason()
//   write(o.ready()); o.consumeReady();      // the final segment
//
// ready() is the plaintext of one segment whose tag has verified; nothing of
// a segment is ever exposed before that. It points into the opener's
// plaintext buffer and stays valid until consumeReady(). While ready() is
// non-empty, feed() consumes nothing and finish() returns kBadState (without
// failing the stream). feed() returns 0 only when ready() is non-empty
// afterwards or an error occurred. A full-size segment is opened only
// when the next byte (or finish()) tells whether it is the final one.
// After an error every call fails with the same error; the caller must then
// discard everything not yet written and report reason().
class Opener {
 public:
  explicit Opener(KeyLookup lookup, uint32_t max_segment_size = kMaxSegmentSize);
  ~Opener();
  Opener(const Opener&) = delete;
  Opener& operator=(const Opener&) = delete;

  size_t feed(const uint8_t* p, size_t n);
  // End of ciphertext: opens the held bytes as the final segment and checks
  // that the stream is complete.
  Error finish();

  std::span<const uint8_t> ready() const { return {ready_ptr_, ready_len_}; }
  void consumeReady() { ready_len_ = 0; }

  Error error() const { return error_; }
  // One line, no key material, e.g. "segment 3 failed authentication".
  const std::string& reason() const { return reason_; }
  bool headerParsed() const { return state_ != State::kHeader; }
  const Header& header() const { return header_; }
  bool finished() const { return state_ == State::kDone; }
  uint64_t plaintextBytes() const { return plaintext_bytes_; }

  void setNextSegmentIndexForTest(uint32_t i) { index_ = i; }

 private:
  enum class State : uint8_t { kHeader, kSegments, kDone, kFailed };
  Error fail(Error e, std::string reason);
  Error onHeader();
  // Opens buf_[0, len) as segment index_ with the given last flag, in place.
  Error openHeld(size_t len, bool last);
  bool tryOpen(size_t len, bool last, size_t* out_len);

  KeyLookup lookup_;
  uint32_t max_segment_size_;
  State state_ = State::kHeader;
  Error error_ = Error::kOk;
  std::string reason_;
  EVP_AEAD_CTX ctx_{};
  bool ctx_live_ = false;
  std::array<uint8_t, kMaxHeaderLen> header_bytes_{};
  size_t header_have_ = 0;
  size_t header_len_ = 0;
  Header header_;
  uint32_t index_ = 0;
  uint64_t plaintext_bytes_ = 0;
  std::vector<uint8_t> buf_;    // ciphertext of one segment: segment_size + 16
  std::vector<uint8_t> plain_;  // its plaintext once verified: segment_size
  size_t held_ = 0;
  const uint8_t* ready_ptr_ = nullptr;
  size_t ready_len_ = 0;
};

// One-shot helpers (tests, small bodies).
Error sealAll(const uint8_t* master, std::string_view key_id, uint32_t segment_size, std::span<const uint8_t> plain,
              std::vector<uint8_t>& out);
Error openAll(const KeyLookup& lookup, std::span<const uint8_t> ct, std::vector<uint8_t>& out,
              std::string* reason = nullptr);

}  // namespace portcullis::pcx1

namespace portcullis {
using Pcx1Sealer = pcx1::Sealer;
using Pcx1Opener = pcx1::Opener;
}  // namespace portcullis
