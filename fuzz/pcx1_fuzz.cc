// Fuzzes the pcx1 stream opener (tools/pcx1/pcx1.h) with arbitrary ciphertext,
// fed in slices of fuzzer-chosen size, with a fixed key lookup (key ids "k1"
// and "k2026-12" known). Plaintext may only come out of segments whose tag verified;
// an independent oracle checks that: every released chunk is re-opened here,
// straight with BoringSSL (data key unwrapped from the header, nonce and AAD
// built per SPEC §7), from the ciphertext bytes where that segment must lie,
// and must verify and match byte for byte, else the run aborts. With mutated
// seeds (valid vectors from tests/data/pcx1) tampered segments are exercised;
// the opener must also never crash, leak, or misreport its state.
// Byte 0 = slice size.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <openssl/aead.h>

#include <span>

#include "tools/pcx1/pcx1.h"

namespace pcx1 = portcullis::pcx1;

namespace {

bool lookup(std::string_view key_id, uint8_t* out) {
  // Same master keys as tests/data/pcx1/vectors.txt (k1: 00..1f; k2026-12: a0..bf).
  if (key_id == "k1") {
    for (int i = 0; i < 32; ++i) out[i] = static_cast<uint8_t>(i);
    return true;
  }
  if (key_id == "k2026-12") {
    for (int i = 0; i < 32; ++i) out[i] = static_cast<uint8_t>(0xa0 + i);
    return true;
  }
  return false;
}

// The oracle: segment `index` of the stream `ct` (header included) holds
// `released` as plaintext, with the given final flag. Aborts otherwise.
struct Oracle {
  const uint8_t* ct = nullptr;
  size_t ct_len = 0;
  bool ready = false;
  EVP_AEAD_CTX ctx{};
  size_t header_len = 0;
  pcx1::Header header;

  ~Oracle() {
    if (ready) EVP_AEAD_CTX_cleanup(&ctx);
  }
  void init(const pcx1::Opener& o) {
    header = o.header();
    header_len = pcx1::headerLength(header.key_id.size());
    uint8_t master[pcx1::kKeyLen];
    uint8_t dek[pcx1::kKeyLen];
    if (header_len > ct_len) abort();
    if (!lookup(header.key_id, master)) abort();  // the opener accepted an unknown key id
    if (!pcx1::unwrapDek(master, header.key_id, header.wrap_nonce.data(), header.wrapped_dek.data(), dek)) abort();
    if (!EVP_AEAD_CTX_init(&ctx, EVP_aead_aes_256_gcm(), dek, pcx1::kKeyLen, pcx1::kTagLen, nullptr)) abort();
    ready = true;
  }
  void check(uint32_t index, std::span<const uint8_t> released) {
    if (!ready) abort();  // plaintext before a verified header
    const uint64_t seg = uint64_t(header.segment_size) + pcx1::kTagLen;
    const uint64_t off = header_len + uint64_t(index) * seg;
    const uint64_t len = released.size() + pcx1::kTagLen;
    if (off + len > ct_len) abort();
    const bool last = off + len == ct_len;
    if (!last && released.size() != header.segment_size) abort();
    uint8_t nonce[12];
    memcpy(nonce, header.nonce_prefix.data(), pcx1::kNoncePrefixLen);
    nonce[7] = uint8_t(index >> 24);
    nonce[8] = uint8_t(index >> 16);
    nonce[9] = uint8_t(index >> 8);
    nonce[10] = uint8_t(index);
    nonce[11] = last ? 1 : 0;
    std::vector<uint8_t> plain(len);
    size_t out_len = 0;
    if (!EVP_AEAD_CTX_open(&ctx, plain.data(), &out_len, plain.size(), nonce, sizeof nonce, ct + off, len, ct,
                           header_len)) {
      abort();  // released plaintext of a segment whose tag does not verify
    }
    if (out_len != released.size() || memcmp(plain.data(), released.data(), out_len) != 0) abort();
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  size_t slice = data[0] == 0 ? 1 : data[0];
  const uint8_t* p = data + 1;
  size_t n = size - 1;

  // Small max segment size keeps buffers bounded under fuzzing.
  pcx1::Opener o(lookup, 1u << 16);
  uint64_t released = 0;
  uint32_t segments_released = 0;
  bool failed = false;
  Oracle oracle;
  oracle.ct = p;
  oracle.ct_len = n;
  while (n > 0 && !failed) {
    size_t take = n < slice ? n : slice;
    const uint8_t* q = p;
    size_t m = take;
    while (m > 0) {
      size_t k = o.feed(q, m);
      if (k > m) abort();
      q += k;
      m -= k;
      if (o.error() != pcx1::Error::kOk) {
        if (o.reason().empty()) abort();
        failed = true;
        break;
      }
      if (o.headerParsed() && !oracle.ready) oracle.init(o);
      if (!o.ready().empty()) {
        oracle.check(segments_released++, o.ready());
        released += o.ready().size();
        o.consumeReady();
      } else if (k == 0) {
        abort();  // documented: feed() returns 0 only with ready() non-empty or an error
      }
    }
    p += take;
    n -= take;
  }
  if (!failed) {
    pcx1::Error e = o.finish();
    if (e == pcx1::Error::kOk) {
      if (o.headerParsed() && !oracle.ready) oracle.init(o);
      if (!o.ready().empty()) oracle.check(segments_released++, o.ready());
      released += o.ready().size();
      o.consumeReady();
      if (!o.finished()) abort();
    } else if (o.reason().empty()) {
      abort();
    }
  }
  if (released != o.plaintextBytes() && o.error() == pcx1::Error::kOk) abort();
  (void)pcx1::errorName(o.error());

  // The one-shot helper on the same bytes must agree on success/failure.
  std::vector<uint8_t> out;
  std::string reason;
  pcx1::Error e2 = pcx1::openAll(lookup, {data + 1, size - 1}, out, &reason);
  const bool streamed_ok = !failed && o.finished() && o.error() == pcx1::Error::kOk;
  if ((e2 == pcx1::Error::kOk) != streamed_ok) abort();
  if (streamed_ok && out.size() != released) abort();
  return 0;
}
