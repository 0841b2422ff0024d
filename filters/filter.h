// The filter interface (DESIGN.md "Filters").
//
// Every request passes through the configured filters in order. A filter sees
// the request head once, then the body in slices, then the response head, then
// completion. Each phase has a no-op default, so a filter implements only what
// it needs.
//
// Lifetime and threading: a FilterFactory is built once from the config and is
// immutable and shared by all workers. For each request the chain asks every
// factory for a Filter allocated in the request's arena; that object holds the
// filter's per-request state, lives on the worker thread that owns the
// connection, and is destroyed when the request completes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "filters/request_context.h"

namespace portcullis {

enum class FilterStatus : uint8_t {
  kContinue,  // pass to the next filter
  kRespond,   // the filter set a local reply (ctx.respond()); stop here
  kPause,     // the filter will call ctx.resume() later (one resume path only)
};

// A slice of request body bytes on its way upstream. A filter may replace
// `data` with bytes it owns (e.g. ciphertext); such bytes must stay valid
// until the next call into the same filter or onComplete().
struct BodyChunk {
  std::string_view data;
};

// Output of a BodyTransform call: up to kMax slices, in order.
struct BodyOutput {
  static constexpr size_t kMax = 6;
  size_t room() const { return kMax - count; }
  std::string_view slices[kMax];
  size_t count = 0;
  void push(std::string_view s) {
    if (!s.empty() && count < kMax) slices[count++] = s;
  }
};

// A body transform replaces the whole request body on its way upstream (upload
// encryption). A filter installs at most one, from its onRequestHead, by
// setting ctx.body_transform to an object it owns (usually itself). Every
// filter's onRequestBody still sees the client's bytes; the transform sees
// them after all filters, and only its output reaches the upstream, framed
// with Content-Length = outputLength(client's length), or chunked when the
// client sent chunked.
//
// The connection drives it in rounds. A round starts with beginRound(), when
// every byte of output from earlier rounds has been written to the upstream
// (so the transform may reuse that memory); then transform() for each decoded
// body slice (their total at most the inputBudget() read after beginRound());
// then, once the body has ended, finish(). Output slices are owned by the
// transform (or are the connection's memory given to transformInPlace) and
// must stay valid and unchanged until the next beginRound() or the filter's
// destruction. A request whose body has framing but zero bytes
// (Content-Length: 0) still gets beginRound() + finish().
class BodyTransform {
 public:
  enum class Finish : uint8_t { kDone, kAgain, kFailed };
  virtual void beginRound() = 0;
  // Most input bytes the calls of this round may take in total; at least 1.
  virtual size_t inputBudget() const = 0;
  // Takes all of `in` and appends output; false: the transform failed (the
  // request is aborted and the upstream never sees a complete body).
  virtual bool transform(std::string_view in, BodyOutput& out) = 0;
  // The same for a slice in the connection's own read buffer, which the
  // transform may overwrite and hand back as output (encryption in place):
  // the connection writes it upstream and reuses that memory only after the
  // write. Default: transform().
  virtual bool transformInPlace(std::span<char> in, BodyOutput& out) {
    return transform(std::string_view(in.data(), in.size()), out);
  }
  // End of input. kAgain: call beginRound() + finish() again after this
  // round's output has been written (there is more output to come).
  virtual Finish finish(BodyOutput& out) = 0;
  // Exact output length for an n-byte body.
  virtual uint64_t outputLength(uint64_t n) const = 0;

 protected:
  ~BodyTransform() = default;
};

class Filter {
 public:
  virtual ~Filter() = default;
  // Called once when the request head is complete, before routing decisions
  // are acted on (ctx.route() is already resolved, may be null for 404s).
  virtual FilterStatus onRequestHead(RequestContext&, RequestHead&) { return FilterStatus::kContinue; }
  // Called for each slice of request body, `end` on the last one (which may
  // be empty). kRespond mid-body answers the client and closes the connection.
  virtual FilterStatus onRequestBody(RequestContext&, BodyChunk&, bool end) { return FilterStatus::kContinue; }
  // Called with the response head before it is sent to the client, for
  // upstream responses and for local replies alike. May add headers.
  virtual void onResponseHead(RequestContext&, ResponseHead&) {}
  // Called exactly once per request that reached the chain, last.
  virtual void onComplete(const RequestContext&) {}
};

class FilterFactory {
 public:
  virtual ~FilterFactory() = default;
  // Name used in logs (`rejected_by`) and metrics.
  virtual std::string_view name() const = 0;
  // Creates the per-request filter in ctx.arena(), or returns nullptr when
  // this filter has nothing to do for this request (then it is skipped).
  virtual Filter* create(RequestContext& ctx) const = 0;
  // True if create() may return a filter that implements onRequestBody; lets
  // the proxy skip body dispatch entirely when no filter needs the body.
  virtual bool wantsBody() const { return false; }
};

}  // namespace portcullis
