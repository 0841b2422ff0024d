// Token format, strict Authorization parsing, generation and hashing.
#include "proxy/token.h"

#include <gtest/gtest.h>
#include <openssl/sha.h>

#include <initializer_list>
#include <set>
#include <string>

namespace portcullis {
namespace {

const std::string kId = "abcdefghij23";
// 43 base64url chars whose last char has zero low bits ('A','E','I',... 'w','0','4','8'...).
const std::string kSecret = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";  // bytes 0..31
const std::string kToken = "pct_" + kId + "_" + kSecret;

// True for exactly "pct_" + 12 of [a-z2-7] + "_" + 43 of [A-Za-z0-9_-].
bool looksLikeToken(const std::string& s) {
  if (s.size() != 60 || s.compare(0, 4, "pct_") != 0 || s[16] != '_') return false;
  for (size_t i = 4; i < 16; ++i) {
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '2' && s[i] <= '7'))) return false;
  }
  for (size_t i = 17; i < 60; ++i) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) {
      return false;
    }
  }
  return true;
}

TEST(TokenTest, ParsesWellFormedToken) {
  ASSERT_EQ(kToken.size(), kTokenChars);
  ParsedToken t;
  ASSERT_EQ(parseToken(kToken, t), TokenError::kOk);
  EXPECT_EQ(t.id, kId);
  for (size_t i = 0; i < 32; ++i) EXPECT_EQ(t.secret[i], i);
  EXPECT_EQ(formatToken(t.id, t.secret), kToken);
}

TEST(TokenTest, ParsesAuthorizationHeader) {
  ParsedToken t;
  const std::string header = "Bearer " + kToken;  // t.id points into it
  EXPECT_EQ(parseAuthorization(header, t), TokenError::kOk);
  EXPECT_EQ(t.id, kId);
  EXPECT_EQ(t.id.data(), header.data() + 11);
  // RFC 9110 §11.1: the scheme is case-insensitive.
  EXPECT_EQ(parseAuthorization("bearer " + kToken, t), TokenError::kOk);
  EXPECT_EQ(parseAuthorization("BEARER " + kToken, t), TokenError::kOk);
  EXPECT_EQ(parseAuthorization("BeArEr " + kToken, t), TokenError::kOk);
  EXPECT_EQ(("Bearer " + kToken).size(), kMaxAuthorizationChars);
}

TEST(TokenTest, RejectsEveryMalformedAuthorizationShape) {
  ParsedToken t;
  struct Case {
    std::string value;
    TokenError want;
  };
  const std::string b = "Bearer ";
  std::string bad_char = kToken;
  bad_char[30] = '+';
  std::string pad = kToken;
  pad.back() = '=';
  std::string non_canonical = kToken;
  non_canonical.back() = 'B';  // 'B' = 1: low bits set
  std::string upper_id = kToken;
  upper_id[5] = 'B';
  std::string digit_id = kToken;
  digit_id[6] = '1';  // '1' is not base32
  std::string digit8 = kToken;
  digit8[6] = '8';
  std::string bad_sep = kToken;
  bad_sep[16] = '-';
  std::string nul = kToken;
  nul[40] = '\0';
  std::string high = kToken;
  high[40] = static_cast<char>(0xc3);
  const Case cases[] = {
      {"", TokenError::kMissing},
      {"Bearer", TokenError::kMissing},
      {"Bearer ", TokenError::kMissing},
      {"Basic " + kToken.substr(0, 50), TokenError::kBadScheme},
      {"Basic dXNlcjpwYXNz", TokenError::kBadScheme},
      {"Bearerx " + kToken.substr(1), TokenError::kBadScheme},
      {"Beare " + kToken, TokenError::kBadScheme},
      {"Token " + kToken, TokenError::kBadScheme},
      {kToken, TokenError::kBadScheme},  // bare token without scheme
      {"Bearer  " + kToken.substr(1), TokenError::kBadSeparator},
      {"Bearer\t" + kToken, TokenError::kBadSeparator},
      {" Bearer " + kToken.substr(1), TokenError::kBadSeparator},
      {"Bearer " + kToken.substr(1) + " ", TokenError::kBadSeparator},
      {"Bearer " + kToken.substr(1) + "\t", TokenError::kBadSeparator},
      {"Bearer " + kToken + "x", TokenError::kTooLong},
      {"Bearer " + kToken + " extra", TokenError::kTooLong},
      {"Bearer " + kToken + kToken, TokenError::kTooLong},
      {std::string(100000, 'A'), TokenError::kTooLong},
      {b + "pcx_" + kToken.substr(4), TokenError::kBadPrefix},
      {b + "PCT_" + kToken.substr(4), TokenError::kBadPrefix},
      {b + "pc", TokenError::kBadPrefix},
      {b + "pct_", TokenError::kBadLength},
      {b + kToken.substr(0, 59), TokenError::kBadLength},
      {b + "pct_" + kId + "_" + kSecret.substr(0, 42), TokenError::kBadLength},
      {b + upper_id, TokenError::kBadId},
      {b + digit_id, TokenError::kBadId},
      {b + digit8, TokenError::kBadId},
      {b + bad_sep, TokenError::kBadIdSeparator},
      {b + "pct_" + kId.substr(0, 11) + "_" + kSecret + "A", TokenError::kBadId},
      {b + bad_char, TokenError::kBadSecret},
      {b + pad, TokenError::kBadSecret},
      {b + nul, TokenError::kBadSecret},
      {b + high, TokenError::kBadSecret},
      {b + non_canonical, TokenError::kNonCanonicalSecret},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(parseAuthorization(c.value, t), c.want)
        << "value [" << c.value.substr(0, 80) << "] got " << tokenErrorName(parseAuthorization(c.value, t))
        << " want " << tokenErrorName(c.want);
  }
}

TEST(TokenTest, RejectsMalformedBareTokens) {
  ParsedToken t;
  EXPECT_EQ(parseToken("", t), TokenError::kMissing);
  EXPECT_EQ(parseToken(kToken + "A", t), TokenError::kTooLong);
  EXPECT_EQ(parseToken("xpct_" + kToken.substr(5), t), TokenError::kBadPrefix);
  EXPECT_EQ(parseToken(kToken.substr(0, 20), t), TokenError::kBadLength);
  // Every non-alphabet byte in every secret position is refused.
  for (size_t pos = 17; pos < kTokenChars; ++pos) {
    for (int c : std::initializer_list<int>{'+', '/', '=', ' ', '.', '\n', 0, 0x80, 0xff}) {
      std::string s = kToken;
      s[pos] = static_cast<char>(c);
      EXPECT_EQ(parseToken(s, t), TokenError::kBadSecret) << pos << " " << c;
    }
  }
  for (size_t pos = 4; pos < 16; ++pos) {
    for (int c : std::initializer_list<int>{'0', '1', '8', '9', 'A', 'Z', '_', '-', 0}) {
      std::string s = kToken;
      s[pos] = static_cast<char>(c);
      EXPECT_EQ(parseToken(s, t), TokenError::kBadId) << pos << " " << c;
    }
  }
}

TEST(TokenTest, AllErrorsHaveNames) {
  for (int e = 0; e <= static_cast<int>(TokenError::kNonCanonicalSecret); ++e) {
    EXPECT_STRNE(tokenErrorName(static_cast<TokenError>(e)), "unknown");
  }
}

TEST(TokenTest, GeneratedTokensHaveTheFormatAndAreUnique) {
  std::set<std::string> ids, tokens;
  for (int i = 0; i < 500; ++i) {
    GeneratedToken g;
    ASSERT_TRUE(generateToken(g));
    EXPECT_TRUE(looksLikeToken(g.token)) << g.token;
    EXPECT_TRUE(isValidTokenId(g.id));
    ParsedToken p;
    ASSERT_EQ(parseToken(g.token, p), TokenError::kOk);
    EXPECT_EQ(p.id, g.id);
    EXPECT_EQ(p.secret, g.secret);
    EXPECT_TRUE(secretHashEqual(hashSecret(p.secret), g.hash));
    ids.insert(g.id);
    tokens.insert(g.token);
  }
  EXPECT_EQ(ids.size(), 500u);
  EXPECT_EQ(tokens.size(), 500u);
}

TEST(TokenTest, HashIsSha256OfRawSecretBytes) {
  ParsedToken p;
  ASSERT_EQ(parseToken(kToken, p), TokenError::kOk);
  SecretHash h = hashSecret(p.secret);
  uint8_t want[32];
  SHA256(p.secret.data(), p.secret.size(), want);
  EXPECT_EQ(0, memcmp(h.bytes.data(), want, 32));
  // SHA-256 of bytes 0x00..0x1f (known value).
  EXPECT_EQ(secretHashToHex(h), "630dcd2966c4336691125448bbb25b4ff412a49c732db2c8abc1b8581bd710dd");
}

TEST(TokenTest, HexRoundTripIsStrict) {
  SecretHash h;
  for (size_t i = 0; i < 32; ++i) h.bytes[i] = static_cast<uint8_t>(i * 7 + 3);
  std::string hex = secretHashToHex(h);
  SecretHash back;
  ASSERT_TRUE(secretHashFromHex(hex, back));
  EXPECT_TRUE(secretHashEqual(h, back));
  std::string upper = hex;
  upper[0] = 'A';
  upper[1] = 'B';
  EXPECT_FALSE(secretHashFromHex(upper, back));
  EXPECT_FALSE(secretHashFromHex(hex.substr(1), back));
  EXPECT_FALSE(secretHashFromHex(hex + "0", back));
  EXPECT_FALSE(secretHashFromHex(std::string(64, 'g'), back));
}

TEST(TokenTest, ConstantTimeCompareDetectsEveryByte) {
  SecretHash a;
  for (size_t i = 0; i < 32; ++i) a.bytes[i] = static_cast<uint8_t>(i);
  EXPECT_TRUE(secretHashEqual(a, a));
  for (size_t i = 0; i < 32; ++i) {
    SecretHash b = a;
    b.bytes[i] ^= 0x01;
    EXPECT_FALSE(secretHashEqual(a, b)) << i;
    b = a;
    b.bytes[i] ^= 0x80;
    EXPECT_FALSE(secretHashEqual(a, b)) << i;
  }
}

TEST(TokenTest, PackedIdsAreDistinctAndStrict) {
  uint64_t a = 0, b = 0;
  ASSERT_TRUE(packTokenId("aaaaaaaaaaaa", a));
  EXPECT_EQ(a, 0u);
  ASSERT_TRUE(packTokenId("777777777777", b));
  EXPECT_EQ(b, (uint64_t{1} << 60) - 1);
  ASSERT_TRUE(packTokenId("aaaaaaaaaaab", a));
  EXPECT_EQ(a, 1u);
  EXPECT_FALSE(packTokenId("aaaaaaaaaaa", a));
  EXPECT_FALSE(packTokenId("aaaaaaaaaaaaa", a));
  EXPECT_FALSE(packTokenId("aaaaaaaaaaa1", a));
  EXPECT_FALSE(packTokenId("AAAAAAAAAAAA", a));
}

}  // namespace
}  // namespace portcullis
