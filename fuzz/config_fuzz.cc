// Fuzzes the TOML config loader (proxy/config.h) with arbitrary text, then the
// "supported settings" check on whatever loaded. Inputs that would only hit the
// known toml++ 3.3.0 bug are skipped (see toml_known_bug.h).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz/toml_known_bug.h"
#include "proxy/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  if (portcullis_fuzz::skipForKnownTomlBug(text)) return -1;  // not added to the corpus
  portcullis::Config config;
  std::string error;
  if (portcullis::loadConfigFromString(text, "fuzz.toml", config, error)) {
    std::string err2;
    (void)portcullis::checkSupported(config, err2);
  } else if (error.empty()) {
    __builtin_trap();  // a refusal must say why
  }
  return 0;
}
