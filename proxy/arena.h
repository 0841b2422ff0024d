// A per-request bump allocator, freed in one go (h2o's req->pool). Memory is
// taken from the global allocator (mimalloc) in blocks; reset() keeps the first
// block so a keep-alive connection reuses it for every request without a malloc.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string_view>
#include <type_traits>
#include <utility>

namespace portcullis {

class Arena {
 public:
  explicit Arena(size_t block_size = 2048) : block_size_(block_size) {}
  ~Arena() { releaseAll(); }
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // Returns `n` bytes aligned to `align` (a power of two <= 16). Never null:
  // allocation failure aborts, as for operator new.
  void* allocate(size_t n, size_t align = alignof(std::max_align_t)) {
    size_t off = (used_ + (align - 1)) & ~(align - 1);
    if (head_ == nullptr || off + n > head_->size) {
      grow(n + align);
      off = (used_ + (align - 1)) & ~(align - 1);
    }
    used_ = off + n;
    return head_->data() + off;
  }

  // Copies `s` into the arena; the view is valid until reset().
  std::string_view copy(std::string_view s) {
    if (s.empty()) return {};
    char* p = static_cast<char*>(allocate(s.size(), 1));
    std::memcpy(p, s.data(), s.size());
    return {p, s.size()};
  }

  // Concatenates two views into one arena copy.
  std::string_view concat(std::string_view a, std::string_view b) {
    char* p = static_cast<char*>(allocate(a.size() + b.size(), 1));
    std::memcpy(p, a.data(), a.size());
    std::memcpy(p + a.size(), b.data(), b.size());
    return {p, a.size() + b.size()};
  }

  // Constructs a T in the arena. T's destructor is NOT run by reset(): only
  // trivially destructible types, or callers that destroy explicitly.
  template <typename T, typename... Args>
  T* make(Args&&... args) {
    void* p = allocate(sizeof(T), alignof(T));
    return new (p) T(std::forward<Args>(args)...);
  }

  // Frees everything but the first block.
  void reset() {
    while (head_ != nullptr && head_->next != nullptr) {
      Block* next = head_->next;
      std::free(head_);
      head_ = next;
    }
    used_ = 0;
  }

  // Frees every block (for a connection going idle: it then holds nothing).
  void release() {
    releaseAll();
    used_ = 0;
  }

  size_t bytesInUse() const { return used_; }

 private:
  struct Block {
    Block* next;
    size_t size;
    char* data() { return reinterpret_cast<char*>(this + 1); }
  };

  void grow(size_t at_least) {
    size_t size = at_least > block_size_ ? at_least : block_size_;
    Block* b = static_cast<Block*>(std::malloc(sizeof(Block) + size));
    if (b == nullptr) throw std::bad_alloc();
    b->next = head_;
    b->size = size;
    head_ = b;
    used_ = 0;
  }

  void releaseAll() {
    while (head_ != nullptr) {
      Block* next = head_->next;
      std::free(head_);
      head_ = next;
    }
  }

  size_t block_size_;
  Block* head_ = nullptr;
  size_t used_ = 0;
};

}  // namespace portcullis
