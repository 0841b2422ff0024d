// A worker: one thread, one libuv loop, one SO_REUSEPORT listener, and the
// connections, upstream pools and buffers that live on it. Other threads talk
// to a worker only through post*() (uv_async_t); everything else here is
// called on the worker's own thread.
#pragma once

#include <uv.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "proxy/access_log.h"
#include "proxy/audit_log.h"
#include "proxy/http_codec.h"
#include "proxy/io.h"
#include "proxy/ip_limiter.h"
#include "proxy/metrics.h"
#include "proxy/snapshot.h"
#include "proxy/upstream.h"

namespace portcullis {

class Connection;

// Bytes of each pooled I/O buffer of a worker started with `config`: a whole
// request head (limits.max_header_bytes) plus some body, at least 64 KiB. Fixed
// when the worker starts; a reload keeps the buffers.
size_t ioBufferSizeFor(const Config& config);
// The largest request head a worker whose buffers hold `buffer_size` bytes
// accepts: a larger limits.max_header_bytes (from a reload) is capped to it.
uint32_t maxHeadBytesFor(size_t buffer_size);

// Shared by all workers, owned by the Server.
struct WorkerShared {
  unsigned workers = 1;  // workers running (fixed at start; a reload keeps them)
  LogWriter* access_log = nullptr;
  AuditLog* audit = nullptr;  // null when there is no audit log
  std::atomic<uint64_t> connections{0};  // open client connections, all workers
  ConnectionsPerIp per_ip;                // for server.max_connections_per_ip
};

class Worker {
 public:
  Worker(unsigned id, WorkerShared* shared);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Takes ownership of `listen_fd` and `tls_listen_fd` (bound, non-listening
  // TCP sockets; -1 for a listener that is not configured) and prepares the
  // loop. Called before start(), on any thread.
  bool init(int listen_fd, int tls_listen_fd, std::shared_ptr<const Snapshot> snapshot, std::string& error);
  // Where the loop's thread runs (server.cpu_affinity, server.worker_priority):
  // `cpu` < 0 = not pinned. Called before start(); applied by the thread itself
  // before its loop starts; a failure is a warning, the loop runs anyway.
  void setPlacement(int cpu, int priority) {
    cpu_ = cpu;
    priority_ = priority;
  }
  // Runs the loop on a new thread until the worker has drained.
  void start();
  void join();

  // Thread-safe. The worker switches to `snap` for requests that start after
  // it processes the message; requests in flight keep theirs.
  void postSnapshot(std::shared_ptr<const Snapshot> snap);
  // Thread-safe. Stop accepting, finish in-flight requests, close idle
  // connections; after `grace_ms` close whatever is left; then exit the loop.
  void postShutdown(uint32_t grace_ms);

  // --- Worker thread only. ---
  uv_loop_t* loop() { return &loop_; }
  const std::shared_ptr<const Snapshot>& snapshot() const { return snapshot_; }
  // The generation of the snapshot this worker serves new requests with
  // (any thread; set by the worker when it applies one).
  uint64_t appliedGeneration() const { return applied_generation_.load(std::memory_order_acquire); }
  // Pins the current snapshot for a request; unpin when the request ends.
  SnapshotPin* pinSnapshot() {
    SnapshotPin* p = pins_.back().get();
    ++p->users;
    return p;
  }
  void unpinSnapshot(SnapshotPin* p);
  UpstreamPool* pool(size_t upstream_index) { return pools_[upstream_index].get(); }
  BufferPool& buffers() { return buffers_; }
  WorkerMetrics& metrics() { return *metrics_; }
  const WorkerMetrics& metrics() const { return *metrics_; }
  LogWriter* accessLog() { return shared_->access_log; }
  // Access records made on this loop go here; the loop hands the stage to
  // the log writer once per iteration (see publishLogs). Audit events
  // recorded on this thread are staged the same way (AuditLog::Stage).
  LogWriter::Stage& accessStage() { return access_stage_; }
  CodecLimits codecLimits() const;
  // Where TLS connections read ciphertext; it is handed to the TLS engine in
  // the same callback, so one buffer serves the whole worker.
  char* tlsScratch() { return tls_scratch_.get(); }
  // A worker-owned buffer of at least `n` bytes for work that ends before the
  // caller returns to the loop (e.g. normalising a request target).
  char* scratch(size_t n) {
    if (scratch_.size() < n) scratch_.resize(n);
    return scratch_.data();
  }
  static constexpr size_t kTlsScratchSize = 65536;
  void nextRequestId(char out[33]);
  // Wall-clock time (Unix µs) at the monotonic instant `mono_us` (nowUs()),
  // from an offset between the two clocks re-read at most once a second: one
  // clock read per access record instead of two. A wall-clock step shows
  // within a second. Worker thread only.
  int64_t wallClockUs(uint64_t mono_us);
  void connectionClosed(Connection* c);
  void releaseClientAddress(const std::string& key) { shared_->per_ip.release(key); }
  // Over the buffer memory watermark (see onWatermark).
  bool overloaded() const { return overloaded_; }
  unsigned id() const { return id_; }

 private:
  static void onConnection(uv_stream_t* server, int status);
  bool listen(uv_tcp_t* handle, int fd, std::string& error);
  void closeListeners();
  static void onAsync(uv_async_t* a);
  static void onGraceTimer(uv_timer_t* t);
  // uv_prepare: runs once per loop iteration, before the loop blocks for I/O.
  static void onPrepare(uv_prepare_t* p);
  void publishLogs();
  static void onWatermark(void* arg, bool over);
  void applySnapshot(std::shared_ptr<const Snapshot> snap);
  void beginShutdown(uint32_t grace_ms);
  void maybeExit();
  // Pins and renices the calling (loop) thread as setPlacement() said.
  void applyPlacement(const char* name);

  unsigned id_;
  WorkerShared* shared_;
  uv_loop_t loop_;
  uv_tcp_t listener_;      // plaintext
  uv_tcp_t tls_listener_;  // HTTPS
  bool has_listener_ = false;
  bool has_tls_listener_ = false;
  uv_async_t async_;
  uv_timer_t grace_timer_;
  uv_idle_t overload_idle_;
  uv_prepare_t log_prepare_;  // publishes the log stages every iteration
  int64_t wall_offset_us_ = 0;        // wall-clock µs minus monotonic µs
  uint64_t wall_offset_read_us_ = 0;  // monotonic µs when it was read (0: never)
  bool overloaded_ = false;
  std::thread thread_;
  int cpu_ = -1;
  int priority_ = 0;
  std::unique_ptr<WorkerMetrics> metrics_;
  BufferPool buffers_;
  std::unique_ptr<char[]> tls_scratch_{new char[kTlsScratchSize]};
  std::vector<char> scratch_;
  LogWriter::Stage access_stage_;
  AuditLog::Stage audit_stage_;  // attached on the worker thread
  std::shared_ptr<const Snapshot> snapshot_;
  std::atomic<uint64_t> applied_generation_{0};
  std::vector<std::unique_ptr<SnapshotPin>> pins_;  // back() is current
  std::vector<std::shared_ptr<UpstreamPool>> pools_;
  Connection* connections_ = nullptr;  // intrusive list head
  size_t connection_count_ = 0;
  uint64_t request_seed_ = 0;
  uint64_t request_counter_ = 0;
  bool listening_ = false;
  bool shutting_down_ = false;
  bool exited_ = false;

  std::mutex post_mu_;  // guards the fields below; never taken on the request path
  std::shared_ptr<const Snapshot> pending_snapshot_;
  bool pending_shutdown_ = false;
  uint32_t pending_grace_ms_ = 0;
};

}  // namespace portcullis
