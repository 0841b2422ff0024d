#include "filters/filter_chain.h"

#include <cstdlib>

namespace portcullis {

namespace {
constexpr int kPhaseHead = 0;
constexpr int kPhaseBody = 1;
}  // namespace

void FilterChain::start(const FilterFactoryList& factories, RequestContext& ctx) {
  destroy();
  active_ = true;
  wants_body_ = false;
  next_ = 0;
  phase_ = -1;
  stopped_at_ = {};
  // Config validation bounds the list (Server::buildSnapshotFromFile).
  if (factories.size() > kMaxFilters) std::abort();
  factories_ = &factories;
  for (size_t k = 0; k < factories.size(); ++k) {
    const FilterFactory& f = *factories[k];
    Filter* filter = f.create(ctx);
    if (filter == nullptr) continue;
    filters_[count_] = filter;
    factory_at_[count_] = static_cast<uint8_t>(k);
    ++count_;
    if (f.wantsBody()) wants_body_ = true;
  }
}

FilterStatus FilterChain::run(RequestContext& ctx, int phase, RequestHead* head, BodyChunk* chunk, bool end) {
  size_t i = (phase_ == phase) ? next_ : 0;
  phase_ = -1;
  for (; i < count_; ++i) {
    FilterStatus s = phase == kPhaseHead ? filters_[i]->onRequestHead(ctx, *head)
                                         : filters_[i]->onRequestBody(ctx, *chunk, end);
    if (s == FilterStatus::kContinue) continue;
    stopped_at_ = (*factories_)[factory_at_[i]]->name();
    if (s == FilterStatus::kPause) {
      phase_ = phase;
      next_ = i + 1;
    } else if (ctx.rejected_by.empty()) {
      ctx.rejected_by = stopped_at_;
    }
    return s;
  }
  return FilterStatus::kContinue;
}

FilterStatus FilterChain::runRequestHead(RequestContext& ctx, RequestHead& head) {
  return run(ctx, kPhaseHead, &head, nullptr, false);
}

FilterStatus FilterChain::runRequestBody(RequestContext& ctx, BodyChunk& chunk, bool end) {
  return run(ctx, kPhaseBody, nullptr, &chunk, end);
}

void FilterChain::runResponseHead(RequestContext& ctx, ResponseHead& head) {
  for (size_t i = 0; i < count_; ++i) filters_[i]->onResponseHead(ctx, head);
}

void FilterChain::complete(const RequestContext& ctx) {
  if (!active_) return;
  for (size_t i = 0; i < count_; ++i) filters_[i]->onComplete(ctx);
  destroy();
}

void FilterChain::destroy() {
  for (size_t i = 0; i < count_; ++i) {
    filters_[i]->~Filter();  // storage belongs to the request arena
    filters_[i] = nullptr;
  }
  count_ = 0;
  active_ = false;
}

}  // namespace portcullis
