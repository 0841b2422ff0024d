// Debian 12's toml++ 3.3.0 reaches an "unreachable" branch (undefined
// behaviour) for many non-ASCII code points between U+00A1 and U+FEFF
// (upstream issues #190/#295, fixed after 3.3.0). Every file the proxy parses
// with it is operator-written and ASCII in practice, so non-ASCII bytes are
// refused before toml++ sees them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace portcullis {

// 0 if `text` is pure ASCII, else the 1-based line of the first other byte.
inline uint32_t firstNonAsciiLine(std::string_view text) {
  uint32_t line = 1;
  for (char c : text) {
    if (c == '\n') ++line;
    if (static_cast<unsigned char>(c) >= 0x80) return line;
  }
  return 0;
}

// The error line for such a file, in the project's "FILE:LINE: ..." form.
inline std::string nonAsciiError(const std::string& file, uint32_t line) {
  return file + ":" + std::to_string(line) +
         ": non-ASCII character (not accepted: this build's TOML parser mishandles them)";
}

}  // namespace portcullis
