// Token format, parsing and generation. See token.h for the contract.
#include "proxy/token.h"

#include <openssl/mem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

namespace portcullis {

namespace {

constexpr char kBase32[] = "abcdefghijklmnopqrstuvwxyz234567";
constexpr char kBase64Url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// 0..31 for a-z2-7, 0xff otherwise.
constexpr std::array<uint8_t, 256> makeBase32Table() {
  std::array<uint8_t, 256> t{};
  for (auto& v : t) v = 0xff;
  for (uint8_t i = 0; i < 32; ++i) t[static_cast<uint8_t>(kBase32[i])] = i;
  return t;
}
constexpr std::array<uint8_t, 256> makeBase64UrlTable() {
  std::array<uint8_t, 256> t{};
  for (auto& v : t) v = 0xff;
  for (uint8_t i = 0; i < 64; ++i) t[static_cast<uint8_t>(kBase64Url[i])] = i;
  return t;
}
constexpr std::array<uint8_t, 256> kBase32Table = makeBase32Table();
constexpr std::array<uint8_t, 256> kBase64UrlTable = makeBase64UrlTable();

inline char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

}  // namespace

const char* tokenErrorName(TokenError e) {
  switch (e) {
    case TokenError::kOk: return "ok";
    case TokenError::kMissing: return "missing";
    case TokenError::kTooLong: return "too_long";
    case TokenError::kBadScheme: return "bad_scheme";
    case TokenError::kBadSeparator: return "bad_separator";
    case TokenError::kBadPrefix: return "bad_prefix";
    case TokenError::kBadLength: return "bad_length";
    case TokenError::kBadId: return "bad_id";
    case TokenError::kBadIdSeparator: return "bad_id_separator";
    case TokenError::kBadSecret: return "bad_secret";
    case TokenError::kNonCanonicalSecret: return "non_canonical_secret";
  }
  return "unknown";
}

bool isValidTokenId(std::string_view id) {
  if (id.size() != kTokenIdChars) return false;
  for (char c : id) {
    if (kBase32Table[static_cast<uint8_t>(c)] == 0xff) return false;
  }
  return true;
}

bool packTokenId(std::string_view id, uint64_t& out) {
  if (id.size() != kTokenIdChars) return false;
  uint64_t v = 0;
  for (char c : id) {
    uint8_t d = kBase32Table[static_cast<uint8_t>(c)];
    if (d == 0xff) return false;
    v = (v << 5) | d;
  }
  out = v;
  return true;
}

TokenError parseToken(std::string_view token, ParsedToken& out) {
  if (token.empty()) return TokenError::kMissing;
  if (token.size() > kTokenChars) return TokenError::kTooLong;
  if (token.substr(0, kTokenPrefix.size()) != kTokenPrefix) return TokenError::kBadPrefix;
  if (token.size() != kTokenChars) return TokenError::kBadLength;
  std::string_view id = token.substr(kTokenPrefix.size(), kTokenIdChars);
  if (!isValidTokenId(id)) return TokenError::kBadId;
  if (token[kTokenPrefix.size() + kTokenIdChars] != '_') return TokenError::kBadIdSeparator;
  const char* s = token.data() + kTokenPrefix.size() + kTokenIdChars + 1;
  uint8_t sextets[kTokenSecretChars];
  uint8_t bad = 0;
  for (size_t i = 0; i < kTokenSecretChars; ++i) {
    sextets[i] = kBase64UrlTable[static_cast<uint8_t>(s[i])];
    bad |= static_cast<uint8_t>(sextets[i] == 0xff);
  }
  if (bad) return TokenError::kBadSecret;
  // 43 sextets = 258 bits; the last character carries 4 data bits and 2 zero bits.
  if (sextets[kTokenSecretChars - 1] & 0x03) return TokenError::kNonCanonicalSecret;
  size_t o = 0;
  size_t i = 0;
  for (; i + 4 <= kTokenSecretChars; i += 4) {  // 10 groups -> 30 bytes
    uint32_t v = (uint32_t{sextets[i]} << 18) | (uint32_t{sextets[i + 1]} << 12) |
                 (uint32_t{sextets[i + 2]} << 6) | sextets[i + 3];
    out.secret[o++] = static_cast<uint8_t>(v >> 16);
    out.secret[o++] = static_cast<uint8_t>(v >> 8);
    out.secret[o++] = static_cast<uint8_t>(v);
  }
  // 3 sextets left -> 2 bytes.
  uint32_t v = (uint32_t{sextets[i]} << 18) | (uint32_t{sextets[i + 1]} << 12) | (uint32_t{sextets[i + 2]} << 6);
  out.secret[o++] = static_cast<uint8_t>(v >> 16);
  out.secret[o++] = static_cast<uint8_t>(v >> 8);
  out.id = id;
  return TokenError::kOk;
}

TokenError parseAuthorization(std::string_view value, ParsedToken& out) {
  if (value.empty()) return TokenError::kMissing;
  if (value.size() > kMaxAuthorizationChars) return TokenError::kTooLong;
  if (value[0] == ' ' || value[0] == '\t') return TokenError::kBadSeparator;
  size_t end = 0;
  while (end < value.size() && value[end] != ' ' && value[end] != '\t') ++end;
  std::string_view scheme = value.substr(0, end);
  constexpr std::string_view kBearer = "bearer";
  if (scheme.size() != kBearer.size()) return TokenError::kBadScheme;
  for (size_t i = 0; i < kBearer.size(); ++i) {
    if (lower(scheme[i]) != kBearer[i]) return TokenError::kBadScheme;
  }
  if (end == value.size()) return TokenError::kMissing;
  if (value[end] != ' ') return TokenError::kBadSeparator;
  std::string_view rest = value.substr(end + 1);
  if (rest.empty()) return TokenError::kMissing;
  if (rest.front() == ' ' || rest.front() == '\t') return TokenError::kBadSeparator;
  if (rest.back() == ' ' || rest.back() == '\t') return TokenError::kBadSeparator;
  return parseToken(rest, out);
}

GeneratedToken::~GeneratedToken() {
  OPENSSL_cleanse(secret.data(), secret.size());
  if (!token.empty()) OPENSSL_cleanse(token.data(), token.size());
}

bool generateTokenId(std::string& out) {
  uint8_t raw[8];
  if (RAND_bytes(raw, sizeof(raw)) != 1) return false;
  uint64_t v = 0;
  for (uint8_t b : raw) v = (v << 8) | b;
  out.resize(kTokenIdChars);
  for (size_t i = 0; i < kTokenIdChars; ++i) {
    out[i] = kBase32[v & 31];
    v >>= 5;
  }
  return true;
}

bool generateTokenSecret(TokenSecret& out) { return RAND_bytes(out.data(), out.size()) == 1; }

bool generateToken(GeneratedToken& out) {
  if (!generateTokenId(out.id)) return false;
  if (!generateTokenSecret(out.secret)) return false;
  out.hash = hashSecret(out.secret);
  out.token = formatToken(out.id, out.secret);
  return true;
}

std::string formatToken(std::string_view id, const TokenSecret& secret) {
  std::string s;
  s.reserve(kTokenChars);
  s.append(kTokenPrefix);
  s.append(id);
  s.push_back('_');
  size_t i = 0;
  for (; i + 3 <= secret.size(); i += 3) {
    uint32_t v = (uint32_t{secret[i]} << 16) | (uint32_t{secret[i + 1]} << 8) | secret[i + 2];
    s.push_back(kBase64Url[(v >> 18) & 63]);
    s.push_back(kBase64Url[(v >> 12) & 63]);
    s.push_back(kBase64Url[(v >> 6) & 63]);
    s.push_back(kBase64Url[v & 63]);
  }
  uint32_t v = (uint32_t{secret[i]} << 16) | (uint32_t{secret[i + 1]} << 8);  // 32 = 30 + 2
  s.push_back(kBase64Url[(v >> 18) & 63]);
  s.push_back(kBase64Url[(v >> 12) & 63]);
  s.push_back(kBase64Url[(v >> 6) & 63]);
  return s;
}

SecretHash hashSecret(const TokenSecret& secret) {
  SecretHash h;
  SHA256(secret.data(), secret.size(), h.bytes.data());
  return h;
}

bool secretHashEqual(const SecretHash& a, const SecretHash& b) {
  return CRYPTO_memcmp(a.bytes.data(), b.bytes.data(), a.bytes.size()) == 0;
}

std::string secretHashToHex(const SecretHash& h) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s(64, '0');
  for (size_t i = 0; i < 32; ++i) {
    s[2 * i] = kHex[h.bytes[i] >> 4];
    s[2 * i + 1] = kHex[h.bytes[i] & 15];
  }
  return s;
}

bool secretHashFromHex(std::string_view hex, SecretHash& out) {
  if (hex.size() != 64) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (size_t i = 0; i < 32; ++i) {
    int hi = nibble(hex[2 * i]);
    int lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out.bytes[i] = static_cast<uint8_t>((hi << 4) | lo);
  }
  return true;
}

}  // namespace portcullis
