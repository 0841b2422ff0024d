#include "proxy/worker.h"

#include <pthread.h>
#include <sched.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <unistd.h>
// Header-only: the request id hash inlines into its one caller per request.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "proxy/connection.h"
#include "proxy/errno_message.h"
#include "proxy/server.h"

namespace portcullis {

size_t ioBufferSizeFor(const Config& c) {
  size_t want = static_cast<size_t>(c.limits.max_header_bytes) + 16384;
  size_t size = 65536;
  while (size < want) size <<= 1;
  return size;
}

uint32_t maxHeadBytesFor(size_t buffer_size) { return static_cast<uint32_t>(buffer_size - 4096); }

Worker::Worker(unsigned id, WorkerShared* shared)
    : id_(id),
      shared_(shared),
      metrics_(std::make_unique<WorkerMetrics>()),
      buffers_(65536, &metrics_->buffered_bytes),
      access_stage_(shared->access_log, &formatPackedAccessRecord) {
  if (getrandom(&request_seed_, sizeof(request_seed_), 0) != sizeof(request_seed_)) {
    request_seed_ = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^ id;
  }
}

Worker::~Worker() { uv_loop_close(&loop_); }

bool Worker::listen(uv_tcp_t* handle, int fd, std::string& error) {
  uv_tcp_init(&loop_, handle);
  handle->data = this;
  int rc = uv_tcp_open(handle, fd);
  if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(handle), 4096, &Worker::onConnection);
  if (rc != 0) {
    error = std::string("listen: ") + uv_strerror(rc);
    return false;
  }
  return true;
}

bool Worker::init(int listen_fd, int tls_listen_fd, std::shared_ptr<const Snapshot> snapshot, std::string& error) {
  uv_loop_init(&loop_);
  loop_.data = this;
  buffers_.setBufferSize(ioBufferSizeFor(*snapshot->config));
  if (listen_fd >= 0) {
    has_listener_ = true;
    if (!listen(&listener_, listen_fd, error)) return false;
  }
  if (tls_listen_fd >= 0) {
    has_tls_listener_ = true;
    if (!listen(&tls_listener_, tls_listen_fd, error)) return false;
  }
  listening_ = true;
  uv_async_init(&loop_, &async_, &Worker::onAsync);
  async_.data = this;
  uv_timer_init(&loop_, &grace_timer_);
  grace_timer_.data = this;
  uv_idle_init(&loop_, &overload_idle_);
  overload_idle_.data = this;
  uv_prepare_init(&loop_, &log_prepare_);
  log_prepare_.data = this;
  uv_prepare_start(&log_prepare_, &Worker::onPrepare);
  applySnapshot(std::move(snapshot));
  return true;
}

void Worker::start() {
  thread_ = std::thread([this] {
    char name[16];
    (void)std::snprintf(name, sizeof(name), "pc-worker-%u", id_);  // truncating is fine: names hold 15 bytes
    // Placement before the name: a thread named pc-worker-N already runs
    // where the config puts it (tests read it back by name).
    applyPlacement(name);
    pthread_setname_np(pthread_self(), name);
    audit_stage_.attach(shared_->audit);
    uv_run(&loop_, UV_RUN_DEFAULT);
    publishLogs();  // anything recorded by the last callbacks
    audit_stage_.detach();
  });
}

void Worker::applyPlacement(const char* name) {
  if (cpu_ >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu_, &set);
    const int rc = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    if (rc != 0) {
      logLine("warn", std::string("server.cpu_affinity: ") + name + " not pinned to CPU " + std::to_string(cpu_) +
                          ": " + errnoMessage(rc));
    }
  }
  // Linux's nice value belongs to the thread: this one only, not the process.
  if (priority_ != 0 && setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), priority_) != 0) {
    const int err = errno;
    logLine("warn", "server.worker_priority = " + std::to_string(priority_) + " not applied to " + name + ": " +
                        errnoMessage(err) + (priority_ < 0 ? " (a negative priority needs CAP_SYS_NICE)" : ""));
  }
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::onPrepare(uv_prepare_t* p) { static_cast<Worker*>(p->data)->publishLogs(); }

void Worker::publishLogs() {
  const uint64_t now_ms = uv_now(&loop_);
  access_stage_.publishAndKick(now_ms);
  audit_stage_.publishAndKick(now_ms);
}

void Worker::postSnapshot(std::shared_ptr<const Snapshot> snap) {
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    pending_snapshot_ = std::move(snap);
  }
  uv_async_send(&async_);
}

void Worker::postShutdown(uint32_t grace_ms) {
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    pending_shutdown_ = true;
    pending_grace_ms_ = grace_ms;
  }
  uv_async_send(&async_);
}

void Worker::onAsync(uv_async_t* a) {
  auto* w = static_cast<Worker*>(a->data);
  std::shared_ptr<const Snapshot> snap;
  bool shutdown = false;
  uint32_t grace = 0;
  {
    std::lock_guard<std::mutex> lock(w->post_mu_);
    snap = std::move(w->pending_snapshot_);
    shutdown = w->pending_shutdown_;
    w->pending_shutdown_ = false;
    grace = w->pending_grace_ms_;
  }
  if (snap) w->applySnapshot(std::move(snap));
  if (shutdown) w->beginShutdown(grace);
}

void Worker::applySnapshot(std::shared_ptr<const Snapshot> snap) {
  // Upstream pools whose server list did not change keep their warm
  // connections; the others are retired (idle connections closed, busy ones
  // closed when their request ends).
  std::vector<std::shared_ptr<UpstreamPool>> next;
  const Config& cfg = *snap->config;
  for (size_t i = 0; i < cfg.upstreams.size(); ++i) {
    std::shared_ptr<UpstreamPool> keep;
    for (auto& p : pools_) {
      if (p && p->config().name == cfg.upstreams[i].name && p->sameServers(cfg.upstreams[i])) {
        keep = p;
        p.reset();
        break;
      }
    }
    if (keep) {
      keep->setTunables(cfg.upstreams[i]);
    } else {
      keep = std::make_shared<UpstreamPool>(this, cfg.upstreams[i], snap->health[i]);
    }
    // A reload re-reads the CA file: new connections verify with it, pooled
    // ones (already verified) stay.
    keep->setTls(i < snap->upstream_tls.size() ? snap->upstream_tls[i] : nullptr);
    next.push_back(std::move(keep));
  }
  for (auto& p : pools_)
    if (p) p->retire();
  pools_ = std::move(next);
  auto pin = std::make_unique<SnapshotPin>();
  pin->snap = snap;
  pins_.push_back(std::move(pin));
  for (size_t i = 0; i + 1 < pins_.size();) {
    if (pins_[i]->users == 0) {
      pins_.erase(pins_.begin() + static_cast<long>(i));
    } else {
      ++i;
    }
  }
  snapshot_ = std::move(snap);
  // Overload watermark: this worker's share of limits.buffer_memory_bytes.
  const uint64_t budget = snapshot_->config->limits.buffer_memory_bytes;
  // Split by the workers running, not by server.workers of the snapshot: a
  // reload does not change the worker count.
  const unsigned workers = shared_->workers == 0 ? 1 : shared_->workers;
  buffers_.setWatermark(static_cast<size_t>(budget / workers), &Worker::onWatermark, this);
  applied_generation_.store(snapshot_->generation, std::memory_order_release);
}

// The overload manager (limits.buffer_memory_bytes). Every connection's
// buffers are bounded, so buffer memory only grows when more connections
// take buffers: a new connection, or a keep-alive connection starting its
// next request. Over the watermark the worker closes new connections at
// once and connections holding no buffer stop reading (their next request
// waits in the kernel); exchanges in flight go on and give their buffers
// back. Under 7/8 of the watermark everything resumes.
void Worker::onWatermark(void* arg, bool over) {
  auto* w = static_cast<Worker*>(arg);
  w->overloaded_ = over;
  w->metrics_->overload_active.add(over ? 1 : -1);
  if (over) w->metrics_->overload_episodes.inc();
  // Applying the change to every connection happens from the loop (a
  // callback from inside a buffer acquire/release must not touch other
  // connections' state): the idle handle runs once, at the next iteration.
  if (!uv_is_active(reinterpret_cast<uv_handle_t*>(&w->overload_idle_))) {
    uv_idle_start(&w->overload_idle_, [](uv_idle_t* h) {
      uv_idle_stop(h);
      auto* self = static_cast<Worker*>(h->data);
      for (Connection* c = self->connections_; c != nullptr;) {
        Connection* next = c->next;
        c->onOverloadChanged();
        c = next;
      }
    });
  }
}

void Worker::unpinSnapshot(SnapshotPin* p) {
  if (--p->users != 0 || p == pins_.back().get()) return;
  // A retired snapshot whose last request just ended.
  for (size_t i = 0; i < pins_.size(); ++i) {
    if (pins_[i].get() == p) {
      pins_.erase(pins_.begin() + static_cast<long>(i));
      return;
    }
  }
}

CodecLimits Worker::codecLimits() const {
  const LimitsConfig& l = snapshot_->config->limits;
  CodecLimits c{l.max_uri_bytes, l.max_header_bytes, l.max_headers};
  const uint32_t cap = maxHeadBytesFor(buffers_.bufferSize());
  if (c.max_header_bytes > cap) c.max_header_bytes = cap;
  return c;
}

namespace {
// Byte -> its two lowercase hex digits.
constexpr std::array<char, 512> kHexPairs = [] {
  std::array<char, 512> t{};
  constexpr char kDigits[] = "0123456789abcdef";
  for (size_t i = 0; i < 256; ++i) {
    t[2 * i] = kDigits[i >> 4];
    t[2 * i + 1] = kDigits[i & 0xf];
  }
  return t;
}();

// The 16 hex digits of v, most significant first.
void appendHex64(uint64_t v, char* out) {
  for (int i = 0; i < 8; ++i) std::memcpy(out + 2 * i, &kHexPairs[2 * ((v >> (56 - 8 * i)) & 0xff)], 2);
}
}  // namespace

void Worker::nextRequestId(char out[33]) {
  // 128 bits from a keyed hash of a per-worker counter: unique, not
  // guessable from earlier ids, no syscall per request.
  const uint64_t n = ++request_counter_;
  XXH128_hash_t h = XXH3_128bits_withSeed(&n, sizeof(n), request_seed_ ^ (static_cast<uint64_t>(id_) << 56));
  appendHex64(h.high64, out);
  appendHex64(h.low64, out + 16);
  out[32] = '\0';
}

int64_t Worker::wallClockUs(uint64_t mono_us) {
  if (wall_offset_read_us_ == 0 || mono_us - wall_offset_read_us_ >= 1000000) {
    const int64_t wall = std::chrono::duration_cast<std::chrono::microseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
    const uint64_t mono = nowUs();
    wall_offset_us_ = wall - static_cast<int64_t>(mono);
    wall_offset_read_us_ = mono;
  }
  return static_cast<int64_t>(mono_us) + wall_offset_us_;
}

void Worker::onConnection(uv_stream_t* server, int status) {
  auto* w = static_cast<Worker*>(server->data);
  if (status < 0) {
    // EMFILE/ENFILE: libuv has already accepted and closed what it could
    // not serve (its reserve descriptor), so returning cannot spin.
    w->metrics_->accept_errors.inc();
    return;
  }
  const ServerConfig& sc = w->snapshot_->config->server;
  const bool secure = server == reinterpret_cast<uv_stream_t*>(&w->tls_listener_);
  auto* c = new Connection(w, secure);
  if (c->accept(server) != 0) return;  // closes itself; connectionClosed() frees it
  w->connection_count_++;
  c->next = w->connections_;
  if (w->connections_ != nullptr) w->connections_->prev = c;
  w->connections_ = c;
  w->metrics_->connections_total.inc();
  w->metrics_->connections_active.add(1);
  uint64_t total = w->shared_->connections.fetch_add(1, std::memory_order_relaxed) + 1;
  // Over a limit, the connection is closed at once: nothing is read from it.
  if (total > sc.max_connections || w->shutting_down_ ||
      !c->claimClientAddress(w->shared_->per_ip, sc.max_connections_per_ip)) {
    w->metrics_->connections_refused.inc();
    c->drain(true);
    return;
  }
  if (w->overloaded_) {
    w->metrics_->overload_refused.inc();
    c->drain(true);
    return;
  }
  c->start();
}

void Worker::connectionClosed(Connection* c) {
  // Only connections that made it onto the list are counted.
  bool listed = c->prev != nullptr || c->next != nullptr || connections_ == c;
  if (listed) {
    if (c->prev != nullptr) c->prev->next = c->next;
    if (c->next != nullptr) c->next->prev = c->prev;
    if (connections_ == c) connections_ = c->next;
    connection_count_--;
    metrics_->connections_active.add(-1);
    shared_->connections.fetch_sub(1, std::memory_order_relaxed);
  }
  delete c;
  if (shutting_down_) maybeExit();
}

void Worker::beginShutdown(uint32_t grace_ms) {
  if (shutting_down_) return;
  shutting_down_ = true;
  closeListeners();
  for (Connection* c = connections_; c != nullptr;) {
    Connection* next = c->next;
    c->drain(false);
    c = next;
  }
  uv_timer_start(&grace_timer_, &Worker::onGraceTimer, grace_ms, 0);
  maybeExit();
}

void Worker::closeListeners() {
  if (!listening_) return;
  listening_ = false;
  if (has_listener_) uv_close(reinterpret_cast<uv_handle_t*>(&listener_), nullptr);
  if (has_tls_listener_) uv_close(reinterpret_cast<uv_handle_t*>(&tls_listener_), nullptr);
}

void Worker::onGraceTimer(uv_timer_t* t) {
  auto* w = static_cast<Worker*>(t->data);
  for (Connection* c = w->connections_; c != nullptr;) {
    Connection* next = c->next;
    c->drain(true);
    c = next;
  }
}

void Worker::maybeExit() {
  if (exited_ || connection_count_ != 0) return;
  exited_ = true;
  for (auto& p : pools_)
    if (p) p->retire();
  pools_.clear();
  uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&grace_timer_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&overload_idle_), nullptr);
  publishLogs();
  uv_close(reinterpret_cast<uv_handle_t*>(&log_prepare_), nullptr);
  // The loop ends once the closes (and any upstream connections) complete.
}

}  // namespace portcullis
