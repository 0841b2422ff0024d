// pcx1 segment sealing vs raw BoringSSL AES-256-GCM, same binary, one core.
// Target (issue 7): streaming 64 KiB segments >= 0.9x raw seal.
//
//   BM_RawAes256GcmSeal/65536      EVP_AEAD_CTX_seal of one 64 KiB buffer in place
//   BM_Pcx1SealerStream/SEG/SLICE  Pcx1Sealer fed SLICE-byte slices (as body
//                                   slices arrive from the socket) of an 8 MiB
//                                   body in SEG-byte segments: header, key wrap,
//                                   and per segment a copy into the segment
//                                   buffer + seal in place (slices smaller than
//                                   a segment) or a seal straight from the slice
//                                   into the buffer (slices holding a segment)
//   BM_Pcx1SizedSealerInPlace/SEG/SLICE
//                                  pcx1::SizedSealer (what the proxy uses for
//                                  a Content-Length body) encrypting an 8 MiB
//                                  body in place, SLICE bytes per call as they
//                                  would arrive from the socket: header, key
//                                  wrap, per segment nonce + AAD + tag
//   BM_Pcx1OpenerStream/65536      the decryptor on the same stream
//
//   BM_RawAes256GcmSealBody/65536  raw seal over the same 8 MiB body, 64 KiB
//                                   per call (the like-for-like baseline)
//
// bytes_per_second is plaintext bytes; compare within one run.
#include <benchmark/benchmark.h>
#include <openssl/aead.h>
#include <openssl/rand.h>

#include <cstring>
#include <vector>

#include "tools/pcx1/pcx1.h"

namespace {

using portcullis::pcx1::Error;

void BM_RawAes256GcmSeal(benchmark::State& state) {
  const size_t n = size_t(state.range(0));
  uint8_t key[32], nonce[12];
  RAND_bytes(key, sizeof(key));
  RAND_bytes(nonce, sizeof(nonce));
  uint8_t aad[80];
  RAND_bytes(aad, sizeof(aad));
  EVP_AEAD_CTX ctx;
  EVP_AEAD_CTX_init(&ctx, EVP_aead_aes_256_gcm(), key, 32, 16, nullptr);
  std::vector<uint8_t> buf(n + 16, 0x5a);
  uint32_t counter = 0;
  for (auto _ : state) {
    std::memcpy(nonce + 7, &counter, 4);
    ++counter;
    size_t out_len = 0;
    EVP_AEAD_CTX_seal(&ctx, buf.data(), &out_len, buf.size(), nonce, 12, buf.data(), n, aad, sizeof(aad));
    benchmark::DoNotOptimize(buf.data());
  }
  EVP_AEAD_CTX_cleanup(&ctx);
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(n));
}
BENCHMARK(BM_RawAes256GcmSeal)->Arg(64 << 10)->Arg(1 << 20);

constexpr size_t kBody = 8 << 20;
constexpr size_t kSlice = 16 << 10;

// Raw AES-256-GCM over the same 8 MiB body as the streaming benchmarks, one
// 64 KiB seal per segment from the body into a 64 KiB + 16 output buffer: the
// same memory traffic as the sealer, without the format.
void BM_RawAes256GcmSealBody(benchmark::State& state) {
  const size_t seg = size_t(state.range(0));
  uint8_t key[32], nonce[12], aad[80];
  RAND_bytes(key, sizeof(key));
  RAND_bytes(nonce, sizeof(nonce));
  RAND_bytes(aad, sizeof(aad));
  EVP_AEAD_CTX ctx;
  EVP_AEAD_CTX_init(&ctx, EVP_aead_aes_256_gcm(), key, 32, 16, nullptr);
  std::vector<uint8_t> body(kBody, 0xa5), out(seg + 16);
  uint32_t counter = 0;
  for (auto _ : state) {
    for (size_t off = 0; off < kBody; off += seg) {
      std::memcpy(nonce + 7, &counter, 4);
      ++counter;
      size_t out_len = 0;
      EVP_AEAD_CTX_seal(&ctx, out.data(), &out_len, out.size(), nonce, 12, body.data() + off, seg, aad, sizeof(aad));
      benchmark::DoNotOptimize(out.data());
    }
  }
  EVP_AEAD_CTX_cleanup(&ctx);
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(kBody));
}
BENCHMARK(BM_RawAes256GcmSealBody)->Arg(64 << 10);

void BM_Pcx1SealerStream(benchmark::State& state) {
  const uint32_t seg = uint32_t(state.range(0));
  const size_t slice = size_t(state.range(1));
  uint8_t master[32];
  RAND_bytes(master, sizeof(master));
  std::vector<uint8_t> body(kBody, 0xa5);
  portcullis::Pcx1Sealer sealer;
  size_t out_bytes = 0;
  for (auto _ : state) {
    sealer.begin(master, "k1", seg);
    out_bytes += sealer.ready().size();
    sealer.consumeReady();
    for (size_t off = 0; off < kBody; off += slice) {
      const uint8_t* p = body.data() + off;
      size_t n = slice;
      while (n > 0) {
        const size_t k = sealer.feed(p, n);
        p += k;
        n -= k;
        out_bytes += sealer.ready().size();
        benchmark::DoNotOptimize(sealer.ready().data());
        sealer.consumeReady();
      }
    }
    if (sealer.finish() != Error::kOk) state.SkipWithError("finish failed");
    out_bytes += sealer.ready().size();
    sealer.consumeReady();
  }
  if (out_bytes != state.iterations() * portcullis::pcx1::ciphertextLength(kBody, 2, seg)) {
    state.SkipWithError("wrong ciphertext length");
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(kBody));
}
BENCHMARK(BM_Pcx1SealerStream)
    ->Args({64 << 10, 16 << 10})
    ->Args({64 << 10, 1 << 20})
    ->Args({16 << 10, 16 << 10})
    ->Args({256 << 10, 16 << 10});

void BM_Pcx1SizedSealerInPlace(benchmark::State& state) {
  const uint32_t seg = uint32_t(state.range(0));
  const size_t slice = size_t(state.range(1));
  uint8_t master[32];
  RAND_bytes(master, sizeof(master));
  std::vector<uint8_t> body(kBody, 0xa5);
  portcullis::pcx1::SizedSealer sealer;
  size_t out_bytes = 0;
  for (auto _ : state) {
    sealer.begin(master, "k1", seg, kBody);
    out_bytes += sealer.header().size();
    for (size_t off = 0; off < kBody; off += slice) {
      uint8_t* p = body.data() + off;
      size_t n = std::min(slice, kBody - off);
      while (n > 0) {
        const size_t k = std::min(n, sealer.segmentLeft());
        if (k == 0 || sealer.seal(p, k) != Error::kOk) {
          state.SkipWithError("seal failed");
          return;
        }
        benchmark::DoNotOptimize(p);
        out_bytes += k + sealer.tag().size();
        p += k;
        n -= k;
      }
    }
    if (!sealer.finished()) state.SkipWithError("not finished");
  }
  if (out_bytes != state.iterations() * portcullis::pcx1::ciphertextLength(kBody, 2, seg)) {
    state.SkipWithError("wrong ciphertext length");
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(kBody));
}
BENCHMARK(BM_Pcx1SizedSealerInPlace)->Args({64 << 10, 16 << 10})->Args({64 << 10, 65483});

void BM_Pcx1OpenerStream(benchmark::State& state) {
  const uint32_t seg = uint32_t(state.range(0));
  uint8_t master[32];
  RAND_bytes(master, sizeof(master));
  std::vector<uint8_t> body(kBody, 0xa5), ct;
  portcullis::pcx1::sealAll(master, "k1", seg, body, ct);
  auto lookup = [&master](std::string_view, uint8_t* out) {
    std::memcpy(out, master, 32);
    return true;
  };
  for (auto _ : state) {
    portcullis::Pcx1Opener opener(lookup);
    for (size_t off = 0; off < ct.size(); off += kSlice) {
      const uint8_t* p = ct.data() + off;
      size_t n = std::min(kSlice, ct.size() - off);
      while (n > 0) {
        const size_t k = opener.feed(p, n);
        p += k;
        n -= k;
        benchmark::DoNotOptimize(opener.ready().data());
        opener.consumeReady();
      }
    }
    if (opener.finish() != Error::kOk) state.SkipWithError("open failed");
    opener.consumeReady();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(kBody));
}
BENCHMARK(BM_Pcx1OpenerStream)->Arg(64 << 10);

}  // namespace

BENCHMARK_MAIN();
