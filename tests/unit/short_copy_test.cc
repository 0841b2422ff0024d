// copyShort copies exactly n bytes for every n, at every alignment, and
// touches nothing around the destination range.
#include "proxy/short_copy.h"

#include <gtest/gtest.h>

#include <string>

namespace portcullis {
namespace {

TEST(ShortCopyTest, EveryLengthAndOffsetExactly) {
  std::string src(64, '\0');
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<char>('A' + i % 26);
  for (size_t n = 0; n <= 40; ++n) {
    for (size_t at = 0; at < 8; ++at) {
      std::string dst(64, '.');
      copyShort(dst.data() + at, src.data() + (n % 7), n);
      const std::string want = std::string(at, '.') + src.substr(n % 7, n) + std::string(64 - at - n, '.');
      ASSERT_EQ(dst, want) << "n " << n << " at " << at;
    }
  }
}

}  // namespace
}  // namespace portcullis
