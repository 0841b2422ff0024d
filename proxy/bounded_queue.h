// BoundedMpscQueue and IdleWaker: the hand-off between event-loop threads and one
// background thread, shared by the secondary sinks (AlertWebhook, SyslogSink).
// Same design as LogWriter's ring in access_log.cc, which predates this header
// and keeps its own copy.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

namespace portcullis {

// A bounded multi-producer, single-consumer ring with a sequence number per cell
// (Dmitry Vyukov's bounded MPMC queue, used with one consumer). tryPush() may be
// called from any number of threads at once; tryPop() from one thread only. Neither
// blocks, takes a lock, allocates or makes a system call. T must be
// default-constructible and movable; values are moved in and out.
template <typename T>
class BoundedMpscQueue {
 public:
  // `capacity` is rounded up to a power of two (at least 2). The ring is allocated
  // here, once.
  explicit BoundedMpscQueue(size_t capacity)
      : mask_(roundUpPow2(capacity) - 1), cells_(new Cell[mask_ + 1]) {
    for (size_t i = 0; i <= mask_; ++i) cells_[i].seq.store(i, std::memory_order_relaxed);
  }

  BoundedMpscQueue(const BoundedMpscQueue&) = delete;
  BoundedMpscQueue& operator=(const BoundedMpscQueue&) = delete;

  // Moves `value` into the queue and returns true, or returns false and leaves
  // `value` untouched when the queue is full. On success `*position` (if given)
  // is the value's sequence number (0, 1, 2, ... in claim order), which lets a
  // producer wake the consumer only every Nth value. A value pushed is visible to
  // tryPop() once this returns; the ordering is seq_cst so that a producer's
  // subsequent look at an IdleWaker cannot be reordered before the publish.
  bool tryPush(T&& value, size_t* position = nullptr) {
    size_t pos = enqueue_pos_.load(std::memory_order_relaxed);
    Cell* cell;
    for (;;) {
      cell = &cells_[pos & mask_];
      const size_t seq = cell->seq.load(std::memory_order_acquire);
      const intptr_t dif = static_cast<intptr_t>(seq) - static_cast<intptr_t>(pos);
      if (dif == 0) {
        if (enqueue_pos_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) break;
      } else if (dif < 0) {
        return false;
      } else {
        pos = enqueue_pos_.load(std::memory_order_relaxed);
      }
    }
    cell->value = std::move(value);
    cell->seq.store(pos + 1, std::memory_order_seq_cst);
    if (position) *position = pos;
    return true;
  }

  // Consumer only. Moves the oldest published value into `out` and returns true,
  // or returns false when there is none. A cell claimed by a producer but not yet
  // filled ends the queue for now: values leave in claim order.
  bool tryPop(T& out) {
    const size_t pos = dequeue_pos_.load(std::memory_order_relaxed);
    Cell& cell = cells_[pos & mask_];
    if (cell.seq.load(std::memory_order_acquire) != pos + 1) return false;
    out = std::move(cell.value);
    cell.value = T();
    cell.seq.store(pos + mask_ + 1, std::memory_order_release);
    dequeue_pos_.store(pos + 1, std::memory_order_relaxed);
    return true;
  }

  // Consumer only: whether tryPop() would succeed now (seq_cst, for the
  // check-before-sleep in IdleWaker's protocol).
  bool frontReady() const {
    const size_t pos = dequeue_pos_.load(std::memory_order_relaxed);
    return cells_[pos & mask_].seq.load(std::memory_order_seq_cst) == pos + 1;
  }

  // Values pushed and not yet popped (relaxed; exact only when quiescent).
  size_t depth() const {
    const size_t enq = enqueue_pos_.load(std::memory_order_relaxed);
    const size_t deq = dequeue_pos_.load(std::memory_order_relaxed);
    return enq > deq ? enq - deq : 0;
  }

  size_t capacity() const { return mask_ + 1; }

 private:
  struct Cell {
    std::atomic<size_t> seq;
    T value;
  };

  static size_t roundUpPow2(size_t n) {
    size_t c = 2;
    while (c < n) c <<= 1;
    return c;
  }

  const size_t mask_;
  std::unique_ptr<Cell[]> cells_;
  alignas(64) std::atomic<size_t> enqueue_pos_{0};
  alignas(64) std::atomic<size_t> dequeue_pos_{0};
};

// Lets one consumer thread sleep until a producer has work for it, at the cost of
// one atomic load per produce and a futex wake only when the consumer is asleep.
//
// Consumer protocol: prepareSleep(); look at every wake condition once more (the
// queue, a stop flag); if none holds, sleep(timeout); then carry on. A producer
// publishes its work first (seq_cst) and then calls wake(): either the consumer's
// second look sees the work, or the producer sees the announced sleep and wakes it.
class IdleWaker {
 public:
  void prepareSleep() { word_.store(1, std::memory_order_seq_cst); }

  // Sleeps until wake() or `timeout_ns` has passed (spurious returns are allowed).
  void sleep(long timeout_ns) {
    struct timespec ts = {timeout_ns / 1000000000L, timeout_ns % 1000000000L};
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word_), FUTEX_WAIT_PRIVATE, 1, &ts,
            nullptr, 0);
    word_.store(0, std::memory_order_relaxed);
  }

  // Any thread. Wakes the consumer if it announced a sleep; otherwise costs one
  // atomic load and no system call.
  void wake() {
    if (word_.load(std::memory_order_seq_cst) != 0 &&
        word_.exchange(0, std::memory_order_seq_cst) != 0) {
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word_), FUTEX_WAKE_PRIVATE, 1, nullptr,
              nullptr, 0);
    }
  }

 private:
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
  std::atomic<uint32_t> word_{0};  // 1 while the consumer sleeps (or is about to)
};

}  // namespace portcullis
