// Fuzzes the Authorization header / token parser (proxy/token.h) and the token
// store text parser (proxy/token_store.h). The first byte selects the target.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz/toml_known_bug.h"
#include "proxy/token.h"
#include "proxy/token_store.h"

using namespace portcullis;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] & 1) {
    // The store is TOML: skip inputs that would only hit the known toml++
    // 3.3.0 bug (see toml_known_bug.h).
    if (portcullis_fuzz::skipForKnownTomlBug(text)) return -1;
    std::vector<TokenRecord> records;
    std::string error;
    if (parseTokenStore(text, "fuzz.tokens", records, error)) {
      // Round trip: what serialises must parse back to the same text.
      std::string again = serializeTokenStore(records);
      std::vector<TokenRecord> records2;
      std::string error2;
      if (!parseTokenStore(again, "fuzz.tokens", records2, error2)) __builtin_trap();
      if (serializeTokenStore(records2) != again) __builtin_trap();
    }
  } else {
    ParsedToken tok;
    if (parseAuthorization(text, tok) == TokenError::kOk) {
      if (!isValidTokenId(tok.id)) __builtin_trap();
      uint64_t packed = 0;
      if (!packTokenId(tok.id, packed)) __builtin_trap();
      // The id must view into the input.
      if (tok.id.data() < text.data() || tok.id.data() + tok.id.size() > text.data() + text.size()) __builtin_trap();
    }
    ParsedToken tok2;
    (void)parseToken(text, tok2);
  }
  return 0;
}
