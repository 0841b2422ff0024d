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

#include <cstdint>
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
