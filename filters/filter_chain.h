// Runs the configured filters of one request in order (DESIGN.md "Filters").
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "filters/filter.h"

namespace portcullis {

// The immutable, shared list of filter factories of one config snapshot.
using FilterFactoryList = std::vector<std::shared_ptr<const FilterFactory>>;

// Per-request instance. Not thread-safe; lives on the connection's worker.
//
// Contract of the run* functions: they call each filter's phase in order and
// stop at the first that does not return kContinue, returning that status.
// After kPause, the owner waits for ctx.resume() and then calls the same run*
// function again with the same arguments; the chain continues with the filter
// after the one that paused. After kRespond the request is answered from
// ctx.local_reply and no later filter sees this phase.
class FilterChain {
 public:
  static constexpr size_t kMaxFilters = 16;  // at most 256: factory_at_ holds bytes

  FilterChain() = default;
  FilterChain(const FilterChain&) = delete;
  FilterChain& operator=(const FilterChain&) = delete;
  ~FilterChain() { destroy(); }

  // Creates the per-request filters from `factories` in ctx.arena().
  void start(const FilterFactoryList& factories, RequestContext& ctx);

  FilterStatus runRequestHead(RequestContext& ctx, RequestHead& head);
  FilterStatus runRequestBody(RequestContext& ctx, BodyChunk& chunk, bool end);
  void runResponseHead(RequestContext& ctx, ResponseHead& head);
  // Calls onComplete on every filter, then destroys them. Idempotent.
  void complete(const RequestContext& ctx);

  bool active() const { return active_; }
  // True when at least one filter of this request wants body slices.
  bool wantsBody() const { return wants_body_; }
  // Name of the filter that last returned kRespond or kPause.
  std::string_view stoppedAt() const { return stopped_at_; }

 private:
  FilterStatus run(RequestContext& ctx, int phase, RequestHead* head, BodyChunk* chunk, bool end);
  void destroy();

  Filter* filters_[kMaxFilters] = {};
  // The factory of filters_[i] is (*factories_)[factory_at_[i]] (factories
  // that created nothing are skipped): a pointer and a byte per filter
  // instead of a pointer each, since every connection carries a chain. The
  // list is the pinned snapshot's, alive for the whole request.
  const FilterFactoryList* factories_ = nullptr;
  uint8_t factory_at_[kMaxFilters] = {};
  size_t count_ = 0;
  size_t next_ = 0;   // index to continue from after a pause
  int phase_ = -1;    // phase the pause happened in
  bool active_ = false;
  bool wants_body_ = false;
  std::string_view stopped_at_;
};

}  // namespace portcullis
