// API tokens (SPEC §4): format, parsing, generation and secret hashing.
//
// A token is the 60-character string
//
//     pct_<id>_<secret>
//
// where `id` is 12 characters of the RFC 4648 base32 alphabet in lower case
// (a-z, 2-7; 60 random bits; public, appears in logs and in the store) and
// `secret` is 32 random bytes in unpadded base64url (RFC 4648 §5, 43
// characters). The store keeps only SHA-256 of the 32 raw secret bytes.
//
// Parsing is strict and allocation-free: a malformed input is rejected with the
// first reason found (TokenError) and the parser never reads beyond the bounded
// maximum length. Nothing here logs, and no error text ever contains input bytes,
// so a rejected token cannot leak through an error message.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace portcullis {

inline constexpr std::string_view kTokenPrefix = "pct_";
inline constexpr size_t kTokenIdChars = 12;
inline constexpr size_t kTokenSecretBytes = 32;
inline constexpr size_t kTokenSecretChars = 43;  // unpadded base64url of 32 bytes
inline constexpr size_t kTokenChars = 4 + kTokenIdChars + 1 + kTokenSecretChars;  // 60
// "Bearer" + one SP + token. Any longer Authorization value is refused before it
// is looked at any further.
inline constexpr size_t kMaxAuthorizationChars = 6 + 1 + kTokenChars;  // 67

// Why a token or an Authorization value was refused. Stable names for logs and
// audit records come from tokenErrorName().
enum class TokenError : uint8_t {
  kOk = 0,
  kMissing,            // empty Authorization value
  kTooLong,            // longer than kMaxAuthorizationChars (or kTokenChars for a bare token)
  kBadScheme,          // scheme is not "Bearer" (compared case-insensitively)
  kBadSeparator,       // not exactly one SP between scheme and token, or leading/trailing whitespace
  kBadPrefix,          // token does not start with "pct_"
  kBadLength,          // token is not exactly kTokenChars long
  kBadId,              // id is not 12 characters of a-z2-7
  kBadIdSeparator,     // no '_' between id and secret
  kBadSecret,          // secret has a character outside the base64url alphabet (incl. '=')
  kNonCanonicalSecret, // the unused low bits of the last secret character are not zero
};

// "ok", "missing", "too_long", "bad_scheme", "bad_separator", "bad_prefix",
// "bad_length", "bad_id", "bad_id_separator", "bad_secret", "non_canonical_secret".
const char* tokenErrorName(TokenError e);

using TokenSecret = std::array<uint8_t, kTokenSecretBytes>;

// SHA-256 of the 32 raw secret bytes.
struct SecretHash {
  std::array<uint8_t, 32> bytes{};
};

// A token split into its parts. `id` points into the parsed input and is valid
// only as long as that input is.
struct ParsedToken {
  std::string_view id;
  TokenSecret secret{};
};

// Parses a bare token ("pct_<id>_<secret>"). Returns kOk and fills `out`, or the
// reason it was refused (then `out` is unspecified).
TokenError parseToken(std::string_view token, ParsedToken& out);

// Parses the value of an Authorization request header. The accepted shape is
//
//     <scheme> SP <token>
//
// where <scheme> is "Bearer" compared ASCII case-insensitively (RFC 9110 §11.1:
// the authentication scheme is case-insensitive; RFC 6750 clients send
// "Bearer"), followed by exactly one space and the token, with nothing before or
// after. RFC 6750 allows 1*SP; a single SP is required here because every
// real client sends one, and a single canonical shape leaves nothing for
// differential parsing. The value is expected as the HTTP codec delivers it
// (optional whitespace around a field value already removed), so any remaining
// leading or trailing whitespace is an error too.
TokenError parseAuthorization(std::string_view value, ParsedToken& out);

// True when `id` has the exact id shape (12 characters of a-z2-7).
bool isValidTokenId(std::string_view id);

// Packs a valid id into 60 bits (5 bits per character, first character most
// significant). Returns false for anything isValidTokenId() would refuse.
bool packTokenId(std::string_view id, uint64_t& out);

// A freshly generated credential. `token` holds the secret in clear: print it
// once and let the object go (the destructor wipes the secret bytes).
struct GeneratedToken {
  std::string id;
  TokenSecret secret{};
  SecretHash hash;
  std::string token;
  GeneratedToken() = default;
  GeneratedToken(const GeneratedToken&) = delete;
  GeneratedToken& operator=(const GeneratedToken&) = delete;
  ~GeneratedToken();
};

// Fills `out` with a new random id and secret from the OS CSPRNG (BoringSSL
// RAND_bytes, which reads getrandom(2)). Returns false only if the CSPRNG fails.
bool generateToken(GeneratedToken& out);
// A new random id alone (for rotation the id stays; for issue see generateToken).
bool generateTokenId(std::string& out);
// New random secret bytes.
bool generateTokenSecret(TokenSecret& out);

// "pct_" + id + "_" + base64url(secret).
std::string formatToken(std::string_view id, const TokenSecret& secret);

// SHA-256 of the raw secret bytes.
SecretHash hashSecret(const TokenSecret& secret);

// Constant-time equality (CRYPTO_memcmp): the time taken does not depend on
// where the two hashes differ.
bool secretHashEqual(const SecretHash& a, const SecretHash& b);

// 64 lowercase hex characters.
std::string secretHashToHex(const SecretHash& h);
// Accepts exactly 64 lowercase hex characters.
bool secretHashFromHex(std::string_view hex, SecretHash& out);

}  // namespace portcullis
