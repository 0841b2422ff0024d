// WriteCursor: appends to a std::string through a pointer. The string is
// grown once to an upper bound of what will be written (the caller's
// contract: never write more than `bound` bytes), pieces are plain copies,
// and the string is cut to what was written when the cursor goes away.
//
// For the per-request text the data path builds from a few dozen short
// pieces (forwarded heads, access lines, audit records, the loop-to-writer
// packings): an append per piece costs a capacity check and a call each.
#pragma once

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "proxy/short_copy.h"

namespace portcullis {

class WriteCursor {
 public:
  static constexpr size_t kMaxDigits = 20;  // any 64-bit integer, sign included

  WriteCursor(std::string& out, size_t bound) : out_(out) {
    const size_t at = out_.size();
    out_.resize(at + bound);
    p_ = out_.data() + at;
  }
  ~WriteCursor() { out_.resize(static_cast<size_t>(p_ - out_.data())); }
  WriteCursor(const WriteCursor&) = delete;
  WriteCursor& operator=(const WriteCursor&) = delete;

  void put(std::string_view s) {
    copyShort(p_, s.data(), s.size());
    p_ += s.size();
  }
  void put(char c) { *p_++ = c; }
  // A string literal, without its terminating NUL.
  template <size_t N>
  void lit(const char (&s)[N]) {
    std::memcpy(p_, s, N - 1);
    p_ += N - 1;
  }
  template <typename T>
  void number(T v) {
    p_ = std::to_chars(p_, p_ + kMaxDigits, v).ptr;
  }
  // For writers of their own (escaping, hex): where the next byte goes, and
  // where the cursor continues after they wrote.
  char* at() const { return p_; }
  void moveTo(char* p) { p_ = p; }
  // Bytes written since `from` (an earlier at()).
  std::string_view since(const char* from) const { return {from, static_cast<size_t>(p_ - from)}; }

 private:
  std::string& out_;
  char* p_ = nullptr;
};

}  // namespace portcullis
