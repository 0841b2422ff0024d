// Fuzzes the streaming JSON validator (filters/json_validator.h). Byte 0 picks
// the split offset (scaled) and byte 1 the depth limit; the rest is the body.
// Feeding the body in two pieces must give exactly the result of one piece.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "filters/json_validator.h"

using portcullis::JsonValidator;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  std::string_view body(reinterpret_cast<const char*>(data + 2), size - 2);
  size_t split = body.empty() ? 0 : (static_cast<size_t>(data[0]) * body.size()) / 255;
  uint32_t depth = data[1] < 128 ? JsonValidator::kDefaultMaxDepth : data[1] - 126;

  JsonValidator one(depth);
  one.feed(body);
  JsonValidator::Result r1 = one.finish();

  JsonValidator two(depth);
  JsonValidator::Result a = two.feed(body.substr(0, split));
  JsonValidator::Result b = two.feed(body.substr(split));
  JsonValidator::Result r2 = two.finish();

  if (r1.error != r2.error || r1.offset != r2.offset) abort();
  // Sticky errors: once failed, later results are the same.
  if (!a.ok() && (b.error != a.error || b.offset != a.offset)) abort();
  if (!r1.ok() && r1.offset > body.size()) abort();
  (void)JsonValidator::errorName(r1.error);

  // reset() must make the validator behave like a fresh one.
  two.reset();
  two.feed(body);
  JsonValidator::Result r3 = two.finish();
  if (r3.error != r1.error || r3.offset != r1.offset) abort();
  return 0;
}
