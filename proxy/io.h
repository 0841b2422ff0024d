// Small I/O helpers shared by client and upstream connections.
#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "proxy/metrics.h"

namespace portcullis {

// A fixed-size I/O buffer from a worker's pool. Bytes [start, end) are
// received but not yet consumed by the parser.
struct IoBuffer {
  char* data = nullptr;
  size_t cap = 0;
  size_t start = 0;
  size_t end = 0;
  bool held() const { return data != nullptr; }
  size_t unparsed() const { return end - start; }
  size_t room() const { return cap - end; }
};

// Per-worker pool of equally sized buffers, so a keep-alive connection holds
// no buffer while idle and a busy one reuses warm memory. Single-threaded.
// With a watermark, `on_change(arg, true)` runs when the bytes held by
// connections pass it and `on_change(arg, false)` when they fall back under
// 7/8 of it (hysteresis, so a busy worker does not flap).
class BufferPool {
 public:
  using WatermarkCallback = void (*)(void* arg, bool over);
  BufferPool(size_t buffer_size, Gauge* held_bytes) : size_(buffer_size), held_(held_bytes) {}
  // 0 = no watermark. Takes effect at the next acquire/release.
  void setWatermark(size_t high, WatermarkCallback on_change, void* arg) {
    high_ = high;
    low_ = high - high / 8;
    on_change_ = on_change;
    arg_ = arg;
  }
  bool overWatermark() const { return over_; }
  size_t heldBytes() const { return held_bytes_; }
  ~BufferPool() {
    for (char* p : free_) std::free(p);
  }
  size_t bufferSize() const { return size_; }
  // Changes the size of buffers handed out from now on (before first use).
  void setBufferSize(size_t size) {
    for (char* p : free_) std::free(p);
    free_.clear();
    size_ = size;
  }
  void acquire(IoBuffer& b) {
    if (b.held()) return;
    if (!free_.empty()) {
      b.data = free_.back();
      free_.pop_back();
    } else {
      b.data = static_cast<char*>(std::malloc(size_));
      if (b.data == nullptr) std::abort();
    }
    b.cap = size_;
    b.start = b.end = 0;
    held_->add(static_cast<int64_t>(size_));
    held_bytes_ += size_;
    if (high_ != 0 && !over_ && held_bytes_ > high_) {
      over_ = true;
      on_change_(arg_, true);
    }
  }
  void release(IoBuffer& b) {
    if (!b.held()) return;
    if (free_.size() < kMaxCached) {
      free_.push_back(b.data);
    } else {
      std::free(b.data);
    }
    held_->add(-static_cast<int64_t>(b.cap));
    held_bytes_ -= b.cap;
    b = IoBuffer{};
    if (over_ && (high_ == 0 || held_bytes_ <= low_)) {
      over_ = false;
      on_change_(arg_, false);
    }
  }

 private:
  static constexpr size_t kMaxCached = 256;
  size_t size_;
  Gauge* held_;
  std::vector<char*> free_;
  size_t held_bytes_ = 0;
  size_t high_ = 0;  // 0 = no watermark
  size_t low_ = 0;
  bool over_ = false;
  WatermarkCallback on_change_ = nullptr;
  void* arg_ = nullptr;
};

// Writes `bufs` to `stream`: first with uv_try_write, and whatever did not fit
// with uv_write(req, cb). Returns 0 when everything was written synchronously
// (cb will NOT be called), 1 when a write is pending (cb will be called once),
// or a negative libuv error (cb will not be called). The bytes must stay
// valid until cb runs; the bufs array itself may be reused at once. Up to
// 2 KiB in several buffers are copied and tried as one (one send(), not a
// sendmsg()); what did not fit is queued from the caller's buffers.
int writeOrQueue(uv_stream_t* stream, uv_write_t* req, uv_buf_t* bufs, unsigned nbufs, uv_write_cb cb);

// Monotonic clock (CLOCK_MONOTONIC) in microseconds / nanoseconds.
uint64_t nowUs();
uint64_t nowNs();

// Formats the peer address of `tcp` into `out` (numeric, no port).
void peerAddress(const uv_tcp_t* tcp, char* out, size_t out_len, uint16_t* port);

}  // namespace portcullis
