// Strings that hold secrets (a keyring file's text, base64 keys) without
// leaving a copy in freed heap memory.
#pragma once

#include <openssl/mem.h>

#include <algorithm>
#include <string>
#include <string_view>

namespace portcullis {

// A std::string wiped by the destructor. Neither copied nor moved: each would
// be one more copy of the secret to account for. Grow `s` only with
// appendWiped() (or reserve enough first): std::string's own growth frees
// the old block as it is.
struct WipedString {
  std::string s;
  WipedString() = default;
  WipedString(const WipedString&) = delete;
  WipedString& operator=(const WipedString&) = delete;
  WipedString(WipedString&&) = delete;
  WipedString& operator=(WipedString&&) = delete;
  ~WipedString() {
    if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  }
};

// Appends `add` to `s`. When `s` must grow, its bytes are copied to a block
// at least twice as large and the old block is wiped before it is freed.
inline void appendWiped(std::string& s, std::string_view add) {
  if (s.size() + add.size() > s.capacity()) {
    std::string bigger;
    bigger.reserve(std::max(s.capacity() * 2, s.size() + add.size()));
    bigger.append(s);
    OPENSSL_cleanse(s.data(), s.size());
    s.swap(bigger);  // `bigger` frees the wiped block
  }
  s.append(add);
}

}  // namespace portcullis
