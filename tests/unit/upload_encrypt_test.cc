// upload_encrypt as a BodyTransform, driven the way the connection drives it
// (rounds of beginRound / inputBudget / transform or transformInPlace /
// finish), without sockets: every way of feeding a body must give a pcx1
// stream that opens to the same plaintext, with the budget and output-slice
// contracts kept. The proxy paths over real sockets are in
// tests/e2e/encrypt_e2e_test.cc.
#include "filters/upload_encrypt.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "filters/request_context.h"
#include "proxy/arena.h"
#include "proxy/config.h"
#include "proxy/http_message.h"
#include "proxy/keyring.h"
#include "tools/pcx1/pcx1.h"

namespace portcullis {
namespace {

class OneKey : public KeyProvider {
 public:
  OneKey() {
    for (size_t i = 0; i < 32; ++i) key_[i] = uint8_t(i * 7 + 1);
  }
  const std::string& activeKeyId() const override { return id_; }
  bool masterKey(std::string_view id, uint8_t* out) const override {
    if (id != id_) return false;
    std::memcpy(out, key_, 32);
    return true;
  }
  pcx1::KeyLookup lookup() const {
    return [this](std::string_view id, uint8_t* out) { return masterKey(id, out); };
  }

 private:
  std::string id_ = "k1";
  uint8_t key_[32];
};

std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = char((i * 131 + i / 251) & 0xff);
  return s;
}

// How the body reaches the transform in each round.
enum class Feed { kInPlace, kCopy, kAlternate };

struct Fixture {
  explicit Fixture(uint32_t segment) : factory(keys, segment, &counters) {
    route.encrypt_body = true;
    ctx.bind(&arena, nullptr, nullptr);
    ctx.route = &route;
  }
  ~Fixture() {
    if (filter != nullptr) {
      filter->onComplete(ctx);
      filter->~Filter();
    }
  }
  std::shared_ptr<OneKey> keys = std::make_shared<OneKey>();
  EncryptionCounters counters;
  UploadEncryptFactory factory;
  RouteConfig route;
  Arena arena;
  RequestContext ctx;
  RequestHead head;
  Filter* filter = nullptr;
};

// Runs `body` through the transform in rounds of at most `read` bytes (the
// socket read size) and returns the ciphertext. The connection's read buffer
// is a std::string the transform may encrypt in place.
std::string drive(Fixture& f, const std::string& body, bool chunked, size_t read, Feed feed) {
  f.head.chunked = chunked;
  f.head.has_content_length = !chunked;
  f.head.content_length = chunked ? 0 : body.size();
  f.filter = f.factory.create(f.ctx);
  EXPECT_NE(f.filter, nullptr);
  if (f.filter == nullptr) return {};
  EXPECT_EQ(f.filter->onRequestHead(f.ctx, f.head), FilterStatus::kContinue);
  BodyTransform* xf = f.ctx.body_transform;
  EXPECT_NE(xf, nullptr);
  if (xf == nullptr) return {};
  std::string out;
  size_t at = 0;
  int round = 0;
  for (;;) {
    xf->beginRound();
    const size_t budget = xf->inputBudget();
    EXPECT_GE(budget, 1u);
    const size_t n = std::min({budget, read, body.size() - at});
    BodyOutput o;
    std::string rbuf = body.substr(at, n);  // this round's bytes, as read
    if (n > 0) {
      const bool in_place = feed == Feed::kInPlace || (feed == Feed::kAlternate && round % 2 == 0);
      // Split the slice in two as a parser may, to pass more than one per round.
      const size_t cut = n / 3;
      bool ok = true;
      for (auto [off, len] : {std::pair<size_t, size_t>{0, cut}, {cut, n - cut}}) {
        if (len == 0) continue;
        ok = ok && (in_place ? xf->transformInPlace(std::span<char>(rbuf.data() + off, len), o)
                             : xf->transform(std::string_view(rbuf.data() + off, len), o));
      }
      EXPECT_TRUE(ok) << "round " << round;
      if (!ok) return {};
      at += n;
    }
    BodyTransform::Finish fin = BodyTransform::Finish::kAgain;
    const bool done = at == body.size();
    if (done) fin = xf->finish(o);
    EXPECT_NE(fin, BodyTransform::Finish::kFailed);
    for (size_t i = 0; i < o.count; ++i) out.append(o.slices[i]);
    if (done && fin == BodyTransform::Finish::kDone) break;
    if (++round > 1000000) {
      ADD_FAILURE() << "no progress";
      break;
    }
  }
  return out;
}

std::string open(const Fixture& f, const std::string& ct) {
  std::vector<uint8_t> plain;
  std::string reason;
  const pcx1::Error e =
      pcx1::openAll(f.keys->lookup(), {reinterpret_cast<const uint8_t*>(ct.data()), ct.size()}, plain, &reason);
  EXPECT_EQ(e, pcx1::Error::kOk) << reason;
  return std::string(plain.begin(), plain.end());
}

TEST(UploadEncrypt, EveryFeedGivesAStreamThatOpensToTheBody) {
  constexpr uint32_t kSeg = 1000;
  for (size_t size : {0u, 1u, 999u, 1000u, 1001u, 2999u, 3000u, 7777u}) {
    const std::string body = pattern(size);
    for (bool chunked : {false, true}) {
      if (chunked && size == 0) continue;
      for (size_t read : {1u, 7u, 999u, 1000u, 1500u, 4096u}) {
        for (Feed feed : {Feed::kInPlace, Feed::kCopy, Feed::kAlternate}) {
          SCOPED_TRACE(testing::Message() << "size " << size << (chunked ? " chunked" : " length") << " read "
                                          << read << " feed " << int(feed));
          Fixture f(kSeg);
          const std::string ct = drive(f, body, chunked, read, feed);
          if (!chunked) {
            EXPECT_EQ(ct.size(), pcx1::ciphertextLength(size, 2, kSeg));
          }
          EXPECT_EQ(open(f, ct), body);
          f.filter->onComplete(f.ctx);
          EXPECT_EQ(f.counters.uploads.load(), 1u);
          EXPECT_EQ(f.counters.bytes.load(), size);
          f.filter->~Filter();
          f.filter = nullptr;
        }
      }
    }
  }
}

TEST(UploadEncrypt, ContentLengthBodyIsEncryptedWhereItLies) {
  Fixture f(16);
  const std::string body = pattern(40);
  f.head.has_content_length = true;
  f.head.content_length = body.size();
  f.filter = f.factory.create(f.ctx);
  ASSERT_EQ(f.filter->onRequestHead(f.ctx, f.head), FilterStatus::kContinue);
  BodyTransform* xf = f.ctx.body_transform;
  ASSERT_NE(xf, nullptr);
  xf->beginRound();
  EXPECT_EQ(xf->inputBudget(), 16u + 15u) << "the rest of this segment and all but one byte of the next";
  std::string rbuf = body.substr(0, 20);
  BodyOutput o;
  ASSERT_TRUE(xf->transformInPlace(std::span<char>(rbuf.data(), rbuf.size()), o));
  // header, the first segment's 16 bytes (now ciphertext, in place), its tag,
  // the next 4 bytes (in place).
  ASSERT_EQ(o.count, 4u);
  EXPECT_EQ(o.slices[0].size(), pcx1::headerLength(2));
  EXPECT_EQ(o.slices[1].data(), rbuf.data());
  EXPECT_EQ(o.slices[1].size(), 16u);
  EXPECT_NE(std::string(o.slices[1]), body.substr(0, 16)) << "encrypted";
  EXPECT_EQ(o.slices[2].size(), pcx1::kTagLen);
  EXPECT_EQ(o.slices[3].data(), rbuf.data() + 16);
  EXPECT_EQ(o.slices[3].size(), 4u);
  xf->beginRound();
  EXPECT_EQ(xf->inputBudget(), 12u + 15u);
}

TEST(UploadEncrypt, LengthNeedingTooManySegmentsIsRefusedWith413) {
  Fixture f(16);
  f.head.has_content_length = true;
  f.head.content_length = 16ull * 0xFFFFFFFFull + 1;
  f.filter = f.factory.create(f.ctx);
  EXPECT_EQ(f.filter->onRequestHead(f.ctx, f.head), FilterStatus::kRespond);
  EXPECT_EQ(f.ctx.local_reply.status, 413);
  EXPECT_EQ(f.ctx.body_transform, nullptr);
  f.filter->onComplete(f.ctx);
  EXPECT_EQ(f.counters.uploads.load(), 0u);
  f.filter->~Filter();
  f.filter = nullptr;
}

TEST(UploadEncrypt, AbortedBodyCountsAsAborted) {
  Fixture f(16);
  f.head.has_content_length = true;
  f.head.content_length = 100;
  f.filter = f.factory.create(f.ctx);
  ASSERT_EQ(f.filter->onRequestHead(f.ctx, f.head), FilterStatus::kContinue);
  BodyTransform* xf = f.ctx.body_transform;
  xf->beginRound();
  std::string rbuf = pattern(10);
  BodyOutput o;
  ASSERT_TRUE(xf->transformInPlace(std::span<char>(rbuf.data(), rbuf.size()), o));
  f.filter->onComplete(f.ctx);
  EXPECT_EQ(f.counters.aborted.load(), 1u);
  EXPECT_EQ(f.counters.uploads.load(), 0u);
  f.filter->~Filter();
  f.filter = nullptr;
}

}  // namespace
}  // namespace portcullis
