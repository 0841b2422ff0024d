#include "filters/upload_encrypt.h"

#include <openssl/mem.h>

#include <vector>

#include "proxy/config.h"
#include "proxy/keyring.h"
#include "tools/pcx1/pcx1.h"

namespace portcullis {

namespace {

// Per-worker-thread pool of sealers, so that an upload reuses a segment
// buffer instead of allocating one. Bounded: beyond kMaxIdle idle sealers
// the extra ones are freed.
constexpr size_t kMaxIdle = 64;

std::vector<std::unique_ptr<pcx1::Sealer>>& sealerPool() {
  thread_local std::vector<std::unique_ptr<pcx1::Sealer>> pool;
  return pool;
}

std::unique_ptr<pcx1::Sealer> acquireSealer() {
  auto& pool = sealerPool();
  if (pool.empty()) return std::make_unique<pcx1::Sealer>();
  std::unique_ptr<pcx1::Sealer> s = std::move(pool.back());
  pool.pop_back();
  return s;
}

// Per-worker-thread LIFO pool of segment buffers. An upload holds its
// buffer only while the buffer holds something (plaintext not sealed yet, or
// a sealed segment not written yet); between rounds it goes back here, so
// under load a few cache-warm buffers serve every upload instead of one cold
// buffer per upload (the kernel reads into it and the sealer works in it).
std::vector<std::vector<uint8_t>>& bufferPool() {
  thread_local std::vector<std::vector<uint8_t>> pool;
  return pool;
}

void poolBuffer(std::vector<uint8_t>&& b) {
  if (b.empty()) return;
  auto& pool = bufferPool();
  if (pool.size() < kMaxIdle) pool.push_back(std::move(b));
}

// Gives `s` a pooled buffer when it has none (a buffer of another size,
// from before a reload changed segment_bytes, is dropped).
void attachBuffer(pcx1::Sealer& s, size_t size) {
  auto& pool = bufferPool();
  while (!s.hasBuffer() && !pool.empty()) {
    std::vector<uint8_t> b = std::move(pool.back());
    pool.pop_back();
    if (b.size() == size) s.adoptBuffer(std::move(b));
  }
}

void releaseSealer(std::unique_ptr<pcx1::Sealer> s) {
  s->reset();  // wipes the key schedule
  poolBuffer(s->releaseBuffer());
  auto& pool = sealerPool();
  if (pool.size() < kMaxIdle) pool.push_back(std::move(s));
}

std::string_view view(std::span<const uint8_t> s) {
  return {reinterpret_cast<const char*>(s.data()), s.size()};
}

class UploadEncrypt final : public Filter, public BodyTransform {
 public:
  explicit UploadEncrypt(const UploadEncryptFactory& f) : f_(f) {}
  ~UploadEncrypt() override {
    if (sealer_) releaseSealer(std::move(sealer_));
  }

  FilterStatus onRequestHead(RequestContext& ctx, RequestHead& head) override {
    if (!head.chunked && !head.has_content_length) return FilterStatus::kContinue;  // no body
    uint8_t master[pcx1::kKeyLen];
    if (!f_.keys().masterKey(f_.keyId(), master)) {
      ctx.respond(500, "internal_error", "upload_encrypt", "active key missing");
      return FilterStatus::kRespond;
    }
    sealer_ = acquireSealer();
    const pcx1::Error e = sealer_->begin(master, f_.keyId(), f_.segmentBytes());
    OPENSSL_cleanse(master, sizeof(master));
    if (e != pcx1::Error::kOk) {
      ctx.respond(500, "internal_error", "upload_encrypt", pcx1::errorName(e));
      return FilterStatus::kRespond;
    }
    // The header stays valid in the sealer until reset(); it is handed out
    // from header() in the first round, so ready() is free for segments.
    sealer_->consumeReady();
    sized_ = !head.chunked;
    left_ = head.content_length;
    head.add("X-Portcullis-Encryption", f_.headerValue());
    ctx.body_transform = this;
    return FilterStatus::kContinue;
  }

  void onComplete(const RequestContext&) override {
    if (!sealer_) return;
    EncryptionCounters* c = f_.counters();
    if (c == nullptr) return;
    if (sealer_->finished()) {
      c->uploads.fetch_add(1, std::memory_order_relaxed);
      c->bytes.fetch_add(sealer_->plaintextBytes(), std::memory_order_relaxed);
    } else {
      c->aborted.fetch_add(1, std::memory_order_relaxed);
    }
  }

  // --- BodyTransform ---

  void beginRound() override {
    sealer_->consumeReady();
    if (has_carry_) {
      // The buffer was just sealed and written, so it takes the byte.
      attach();
      if (sealer_->feed(&carry_, 1) == 1) has_carry_ = false;
    }
    // Nothing in the buffer the stream still needs: back to the pool (not
    // while lent out by inputWindow(): the connection may have read into it).
    if (!window_lent_) poolBuffer(sealer_->releaseBuffer());
  }

  // A Content-Length body: up to the end of the segment buffer, which is
  // sealed as soon as it is full while the length says more follows. A
  // chunked body: one byte more, which seals the full segment (as not the
  // last) and is carried into the next round. So a round produces at most
  // one sealed segment (plus the header in the first round).
  size_t inputBudget() const override {
    const size_t held = sealer_->held();
    const size_t seg = f_.segmentBytes();
    if (sized_) return held < seg ? seg - held : 1;
    return held < seg ? seg - held + 1 : 1;
  }

  // Offered for Content-Length bodies only: a chunked body's decoded bytes
  // are never contiguous with the socket's.
  std::span<char> inputWindow() override {
    if (!sized_) return {};
    attach();
    window_lent_ = true;
    const std::span<uint8_t> w = sealer_->window();
    return {reinterpret_cast<char*>(w.data()), w.size()};
  }

  bool transform(std::string_view in, BodyOutput& out) override {
    emitHeader(out);
    window_lent_ = false;
    attach();
    if (sized_) return transformSized(in, out);
    const auto* p = reinterpret_cast<const uint8_t*>(in.data());
    size_t n = in.size();
    while (n > 0) {
      if (has_carry_) return false;  // more input than the budget allowed
      const size_t k = sealer_->feed(p, n);
      p += k;
      n -= k;
      if (sealer_->error() != pcx1::Error::kOk) return false;
      if (!sealer_->ready().empty()) {
        out.push(view(sealer_->ready()));
        if (n > 1) return false;  // over budget: the contract was broken
        if (n == 1) {
          carry_ = *p;
          has_carry_ = true;
          n = 0;
        }
      } else if (k == 0) {
        return false;
      }
    }
    return true;
  }

  Finish finish(BodyOutput& out) override {
    if (!sealer_->ready().empty() || has_carry_) return Finish::kAgain;
    emitHeader(out);
    window_lent_ = false;
    attach();
    if (sealer_->finish() != pcx1::Error::kOk) return Finish::kFailed;
    out.push(view(sealer_->ready()));
    return Finish::kDone;
  }

  uint64_t outputLength(uint64_t n) const override {
    return pcx1::ciphertextLength(n, f_.keyId().size(), f_.segmentBytes());
  }

 private:
  bool transformSized(std::string_view in, BodyOutput& out) {
    const auto* p = reinterpret_cast<const uint8_t*>(in.data());
    size_t n = in.size();
    if (n > left_) return false;  // the codec enforces Content-Length
    while (n > 0) {
      if (!sealer_->ready().empty()) return false;  // more input than the budget allowed
      const size_t k = sealer_->feed(p, n);
      if (sealer_->error() != pcx1::Error::kOk || k == 0) return false;
      p += k;
      n -= k;
      left_ -= k;
      if (sealer_->ready().empty() && sealer_->held() == f_.segmentBytes() && left_ > 0) {
        if (sealer_->sealFull() != pcx1::Error::kOk) return false;
      }
      if (!sealer_->ready().empty()) out.push(view(sealer_->ready()));
    }
    return true;
  }

  void attach() { attachBuffer(*sealer_, size_t(f_.segmentBytes()) + pcx1::kTagLen); }

  void emitHeader(BodyOutput& out) {
    if (header_sent_) return;
    header_sent_ = true;
    out.push(view(sealer_->header()));
  }

  const UploadEncryptFactory& f_;
  std::unique_ptr<pcx1::Sealer> sealer_;
  bool header_sent_ = false;
  bool window_lent_ = false;  // inputWindow() handed out the buffer this round
  bool sized_ = false;  // Content-Length body: left_ is what is still to come
  uint64_t left_ = 0;
  bool has_carry_ = false;
  uint8_t carry_ = 0;
};

}  // namespace

UploadEncryptFactory::UploadEncryptFactory(std::shared_ptr<const KeyProvider> keys, uint32_t segment_bytes,
                                           EncryptionCounters* counters)
    : keys_(std::move(keys)), key_id_(keys_->activeKeyId()), segment_bytes_(segment_bytes),
      header_value_("pcx1; key=\"" + key_id_ + "\""), counters_(counters) {}

Filter* UploadEncryptFactory::create(RequestContext& ctx) const {
  if (ctx.route == nullptr || !ctx.route->encrypt_body) return nullptr;
  return ctx.arena().make<UploadEncrypt>(*this);
}

}  // namespace portcullis
