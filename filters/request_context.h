// Per-request state shared by the proxy and the filters.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/arena.h"
#include "proxy/http_message.h"

typedef struct uv_loop_s uv_loop_t;  // <uv.h>

namespace portcullis {

struct RouteConfig;
struct Snapshot;
class BodyTransform;

// A reply the proxy makes itself (SPEC §5): status, error code for the JSON
// body, and any extra headers (e.g. WWW-Authenticate, Retry-After, Allow).
struct LocalReply {
  int status = 0;
  std::string_view code;  // "not_found", ...; static storage or arena
  std::vector<AddedHeader> headers;
  bool close = false;     // close the connection after replying
};

class RequestContext {
 public:
  // Why the callbacks exist: a filter that returned kPause calls resume() from
  // the worker thread (e.g. from a timer or an async completion). The owner
  // (the connection) installs the function that continues the chain.
  using ResumeFn = void (*)(void* owner);

  RequestContext() = default;
  RequestContext(const RequestContext&) = delete;
  RequestContext& operator=(const RequestContext&) = delete;

  // Sets the local reply; the filter then returns FilterStatus::kRespond.
  // `filter` names who refused (access log `rejected_by`), `reason` says why.
  void respond(int status, std::string_view code, std::string_view filter = {}, std::string_view reason = {}) {
    local_reply.status = status;
    local_reply.code = code;
    if (!filter.empty()) rejected_by = filter;
    if (!reason.empty()) this->reason = reason;
  }
  void resume() {
    if (resume_fn_ != nullptr) resume_fn_(resume_owner_);
  }
  Arena& arena() { return *arena_; }

  // --- Set by the proxy before the chain runs; read-only for filters. ---
  const Snapshot* snapshot = nullptr;
  const RouteConfig* route = nullptr;   // null when no route matched
  std::string_view request_id;          // 32 hex chars
  // The client's address, as text: the TCP peer's, or when the peer is one
  // of https.trusted_proxies the client its X-Forwarded-For names
  // (proxy/real_ip.h). Per-IP limits, lockouts, detection and logs key on it.
  std::string_view remote_ip;
  uint16_t remote_port = 0;
  bool secure = false;                  // arrived over TLS (or trusted proxy said so)
  bool trusted_peer = false;            // the TCP peer is in https.trusted_proxies
  std::string_view tls_version;         // "" on plaintext
  // CLOCK_MONOTONIC at head completion; start_us == start_ns / 1000. Filters
  // take "now" from here rather than reading the clock again (the request
  // path reads it once).
  uint64_t start_ns = 0;
  uint64_t start_us = 0;
  // The loop of the worker thread that owns the request. A filter that
  // returns kPause may start its own handles (timers, async work) on it and
  // call resume() from their callbacks. The filter must stop them when it is
  // destroyed (a request can end while paused, e.g. the client went away),
  // and their memory must outlive uv_close(), so not in the request arena.
  uv_loop_t* loop = nullptr;

  // --- Written by filters. ---
  LocalReply local_reply;
  std::string_view rejected_by;
  std::string_view reason;
  std::string_view token_id;
  // Index of the accepted token in snapshot->auth->tokens (-1 until the
  // token check accepted one): per-token data without another lookup.
  int32_t token_index = -1;
  std::string_view account;
  // Rate-limit decisions that allowed this request: bit (1 << LimitKind).
  uint8_t rate_allowed = 0;
  // For each such decision (index = LimitKind, valid while its bit is set):
  // what the response's RateLimit-Policy / RateLimit fields say about it.
  struct RateNote {
    std::string_view policy;  // the RateLimit-Policy list member, e.g. "ip";q=100;w=1
    uint32_t remaining = 0;
    uint64_t reset_ns = 0;
  };
  RateNote rate_notes[3];
  // Installed by at most one filter in its head phase (see filter.h).
  BodyTransform* body_transform = nullptr;

  // --- Owner wiring (the connection). ---
  void bind(Arena* arena, ResumeFn fn, void* owner) {
    arena_ = arena;
    resume_fn_ = fn;
    resume_owner_ = owner;
  }
  void reset() {
    snapshot = nullptr;
    route = nullptr;
    request_id = remote_ip = tls_version = {};
    secure = false;
    trusted_peer = false;
    start_ns = start_us = 0;
    token_index = -1;
    local_reply.status = 0;
    local_reply.code = {};
    local_reply.headers.clear();
    local_reply.close = false;
    rejected_by = reason = token_id = account = {};
    body_transform = nullptr;
    rate_allowed = 0;
  }

 private:
  Arena* arena_ = nullptr;
  ResumeFn resume_fn_ = nullptr;
  void* resume_owner_ = nullptr;
};

}  // namespace portcullis
