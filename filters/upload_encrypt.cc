#include "filters/upload_encrypt.h"

#include <openssl/mem.h>

#include <algorithm>
#include <cstring>
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

// Per-worker-thread LIFO pool of segment buffers (chunked bodies). An upload
// holds its buffer only while the buffer holds something (plaintext not
// sealed yet, or a sealed segment not written yet); between rounds it goes
// back here, so under load a few cache-warm buffers serve every upload
// instead of one cold buffer per upload.
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
    pcx1::Error e;
    if (head.chunked) {
      sealer_ = acquireSealer();
      e = sealer_->begin(master, f_.keyId(), f_.segmentBytes());
      // The header stays valid in the sealer until reset(); it is handed out
      // from header() in the first round, so ready() is free for segments.
      if (e == pcx1::Error::kOk) sealer_->consumeReady();
    } else {
      sized_ = true;
      e = sized_sealer_.begin(master, f_.keyId(), f_.segmentBytes(), head.content_length);
    }
    OPENSSL_cleanse(master, sizeof(master));
    if (e == pcx1::Error::kTooManySegments) {
      ctx.respond(413, "payload_too_large", "upload_encrypt", "body needs more pcx1 segments than allowed");
      return FilterStatus::kRespond;
    }
    if (e != pcx1::Error::kOk) {
      ctx.respond(500, "internal_error", "upload_encrypt", pcx1::errorName(e));
      return FilterStatus::kRespond;
    }
    head.add("X-Portcullis-Encryption", f_.headerValue());
    ctx.body_transform = this;
    return FilterStatus::kContinue;
  }

  void onComplete(const RequestContext&) override {
    if (!sized_ && !sealer_) return;
    EncryptionCounters* c = f_.counters();
    if (c == nullptr) return;
    if (sized_ ? sized_sealer_.finished() : sealer_->finished()) {
      c->uploads.fetch_add(1, std::memory_order_relaxed);
      c->bytes.fetch_add(sized_ ? sized_sealer_.plaintextBytes() : sealer_->plaintextBytes(),
                         std::memory_order_relaxed);
    } else {
      c->aborted.fetch_add(1, std::memory_order_relaxed);
    }
  }

  // --- BodyTransform ---
  // A Content-Length body (sized_) is encrypted in place as it arrives
  // (pcx1::SizedSealer): each slice becomes its own ciphertext, followed by
  // the tag of a segment it completes. A round takes at most what completes
  // the current segment and all but one byte of the next, so it crosses at
  // most one segment boundary: its output is the header (first round), at
  // most two ciphertext pieces per transform call and at most one tag.
  // A chunked body goes through the segment buffer of pcx1::Sealer: its
  // segments' final flags are known only when the body ends.

  void beginRound() override {
    if (sized_) {
      tag_count_ = 0;
      scratch_used_ = 0;
      return;
    }
    sealer_->consumeReady();
    if (has_carry_) {
      // The buffer was just sealed and written, so it takes the byte.
      attach();
      if (sealer_->feed(&carry_, 1) == 1) has_carry_ = false;
    }
    // Nothing in the buffer the stream still needs: back to the pool.
    poolBuffer(sealer_->releaseBuffer());
  }

  // Sized: see above. Chunked: one byte more than the segment buffer holds,
  // which seals the full segment (as not the last) and is carried into the
  // next round; so a round produces at most one sealed segment (plus the
  // header in the first round).
  size_t inputBudget() const override {
    const size_t seg = f_.segmentBytes();
    if (sized_) {
      const size_t left = sized_sealer_.segmentLeft();
      return left == 0 ? 1 : left + seg - 1;
    }
    const size_t held = sealer_->held();
    return held < seg ? seg - held + 1 : 1;
  }

  bool transformInPlace(std::span<char> in, BodyOutput& out) override {
    if (!sized_) return transform(std::string_view(in.data(), in.size()), out);
    return sealInPlace(in.data(), in.size(), out);
  }

  bool transform(std::string_view in, BodyOutput& out) override {
    emitHeader(out);
    if (sized_) {
      // Not the connection's memory (a filter replaced the slice): sealed in
      // a copy that lives until the next round.
      const size_t cap = size_t(2) * f_.segmentBytes();
      if (scratch_used_ + in.size() > cap) return false;  // over budget
      if (scratch_.size() < cap) scratch_.resize(cap);
      char* p = scratch_.data() + scratch_used_;
      std::memcpy(p, in.data(), in.size());
      scratch_used_ += in.size();
      return sealInPlace(p, in.size(), out);
    }
    attach();
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
    if (sized_) {
      emitHeader(out);
      // Only an empty body is still open here: its one empty final segment.
      if (!sized_sealer_.finished() &&
          (sized_sealer_.seal(nullptr, 0) != pcx1::Error::kOk || !pushTag(out))) {
        return Finish::kFailed;
      }
      return sized_sealer_.finished() ? Finish::kDone : Finish::kFailed;
    }
    if (!sealer_->ready().empty() || has_carry_) return Finish::kAgain;
    emitHeader(out);
    attach();
    if (sealer_->finish() != pcx1::Error::kOk) return Finish::kFailed;
    out.push(view(sealer_->ready()));
    return Finish::kDone;
  }

  uint64_t outputLength(uint64_t n) const override {
    return pcx1::ciphertextLength(n, f_.keyId().size(), f_.segmentBytes());
  }

 private:
  // Encrypts n bytes at p in place and appends them, and the tag of a
  // segment they complete, to `out`. False: past the body's length, over
  // budget, or a sealer error.
  bool sealInPlace(char* p, size_t n, BodyOutput& out) {
    emitHeader(out);
    while (n > 0) {
      const size_t k = std::min(n, sized_sealer_.segmentLeft());
      if (k == 0 || out.room() < 2) return false;
      if (sized_sealer_.seal(reinterpret_cast<uint8_t*>(p), k) != pcx1::Error::kOk) return false;
      out.push(std::string_view(p, k));
      if (!sized_sealer_.tag().empty() && !pushTag(out)) return false;
      p += k;
      n -= k;
    }
    return true;
  }

  // Keeps the tag the sealer just made until the next round and appends it.
  bool pushTag(BodyOutput& out) {
    if (tag_count_ == kMaxTags || out.room() < 1) return false;
    std::memcpy(tags_[tag_count_], sized_sealer_.tag().data(), pcx1::kTagLen);
    out.push(std::string_view(reinterpret_cast<const char*>(tags_[tag_count_]), pcx1::kTagLen));
    ++tag_count_;
    return true;
  }

  void attach() { attachBuffer(*sealer_, size_t(f_.segmentBytes()) + pcx1::kTagLen); }

  void emitHeader(BodyOutput& out) {
    if (header_sent_) return;
    header_sent_ = true;
    out.push(view(sized_ ? sized_sealer_.header() : sealer_->header()));
  }

  static constexpr size_t kMaxTags = 2;

  const UploadEncryptFactory& f_;
  bool sized_ = false;  // a Content-Length body: sized_sealer_, else sealer_
  bool header_sent_ = false;
  // Content-Length bodies.
  pcx1::SizedSealer sized_sealer_;
  uint8_t tags_[kMaxTags][pcx1::kTagLen] = {};  // this round's tags
  size_t tag_count_ = 0;
  std::vector<char> scratch_;  // transform() of memory not the connection's
  size_t scratch_used_ = 0;
  // Chunked bodies.
  std::unique_ptr<pcx1::Sealer> sealer_;
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
