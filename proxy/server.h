// The main thread: loads the config, opens the listeners, starts the workers,
// serves the admin endpoints, runs health checks, and turns signals into
// reload / drain / log reopen (SPEC §2). Also usable in-process by tests.
#pragma once

#include <uv.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "filters/filter_chain.h"
#include "filters/upload_encrypt.h"
#include "proxy/security_events.h"
#include "proxy/auth_state.h"
#include "proxy/config.h"
#include "proxy/dir_watch.h"
#include "proxy/fixed_settings.h"
#include "proxy/metrics.h"
#include "proxy/snapshot.h"

namespace portcullis {

class AdminServer;
class LocalKeyring;
class HealthChecker;
class LogWriter;
class AuditLog;
class AlertWebhook;
class SyslogSink;
class RateLimiter;
class Worker;
struct WorkerShared;

struct ServerOptions {
  std::string config_path;
  // Appended to the configured filter chain of every snapshot (tests).
  FilterFactoryList extra_filters;
  // Install SIGHUP/SIGTERM/SIGINT/SIGUSR1 handlers (the real binary does;
  // in-process tests use the request*() functions instead).
  bool handle_signals = true;
};

class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();

  // Loads the config, starts everything, and runs until shut down. Returns
  // the process exit status (0 after a clean drain, 1 if startup failed).
  int run();

  // Thread-safe; usable before run() returns.
  void requestShutdown();
  void requestReload();
  void requestReopen();
  // The proxy revoked token `id` itself (a token seen over plaintext);
  // `written`: the store took it. On the main thread: the token is refused
  // in memory in every worker at once; a written store is re-read on the
  // running config (also without auth.watch), a failed write retried every
  // second until the store takes it (InMemoryRevocations, auth_state.h).
  void requestRevocation(const std::string& id, bool written);
  // Blocks until startup finished (true) or failed (false).
  bool waitReady();

  // Valid once ready.
  uint16_t httpPort() const { return http_port_; }
  uint16_t httpsPort() const { return https_port_; }
  uint16_t adminPort() const { return admin_port_; }
  uint64_t reloads() const { return reloads_.load(); }
  uint64_t reloadFailures() const { return reload_failures_.load(); }
  // Sum of a metric over workers, for tests (relaxed reads).
  int64_t bufferedBytes() const;
  std::string renderMetricsText() const;

 private:
  bool startup(std::string& error);
  // `revocations`: a copy of revoked_here_, pruned against the store just
  // read (withInMemoryRevocations, from_store); the caller makes it
  // revoked_here_ only once the snapshot applies, so a refused reload
  // changes nothing.
  bool buildSnapshotFromFile(std::shared_ptr<const Snapshot>& out, InMemoryRevocations& revocations,
                             std::string& error);
  // Full reload from the config file (SIGHUP, a watched TLS file changed, or
  // the retry of such a reload). Returns false when refused: the running
  // snapshot stays. A refusal is logged, counted and audited; with
  // `quiet_repeat` (the watch's reloads) not if its error is the one of the
  // previous refusal, so a lasting problem retried every second is said once.
  // Keys the new config changes but a reload cannot apply
  // (keysNeedingRestart) are logged as warnings and named in the
  // config.reload audit record.
  bool reload(bool quiet_repeat = false);
  // Store-only reload: a new snapshot from the RUNNING config with the token
  // store (`store`) and/or the keyring (`keyring`) re-read; the config file
  // is not read. Refused (false, logged and audited once per distinct error)
  // when a file does not load; the running snapshot stays.
  bool reloadAuthFiles(bool store, bool keyring);
  // The upload encryption filter for `keys` (its counters registered).
  std::shared_ptr<const FilterFactory> makeEncryptFactory(const Config& cfg,
                                                          const std::shared_ptr<const LocalKeyring>& keys);
  void beginShutdown();
  static void onAsync(uv_async_t* a);
  static void onSignal(uv_signal_t* s, int signum);
  void setReady(bool ok);
  static void onAuthTimer(uv_timer_t* t);
  // Re-reads the watched files (token store, keyring, TLS) when their stat
  // changed; from the 1 s timer and from directory change events.
  void checkWatchedFiles();
  // inotify (DirWatch) on the directories of the watched files, so a
  // change applies at once; the 1 s stat remains the fallback.
  void updateFileWatches();
  void closeFileWatches();
  void rememberStoreStat();
  // requestRevocation() on the main thread: the queued ids into revoked_here_
  // and the running snapshot, then the store re-read for written ones.
  void applyRevocations();
  // A store write of revoked_here_ that failed, tried again (1 s timer).
  void retryRevocationWrites();
  // Writes revoked_here_ to <state_dir>/token_revoked_here.tsv when it, or
  // the state_dir a reload named, changed (thread pool; after
  // applyRevocations and on the 1 s timer).
  void persistRevocations();
  // At exit, after the workers stopped: exposures reported during the drain
  // (applyRevocations no longer runs) and a change the 1 s timer did not
  // write yet go to the state file, synchronously.
  void persistRevocationsAtExit();
  // A store re-read for a revocation, on the main thread. A re-read that fails sets
  // store_reread_pending_: checkWatchedFiles() retries it every second until
  // the store loads, whatever auth.watch says.
  void reloadStoreNow();
  void flushLastUse(bool sync);
  bool startAuditAndAlerts(const Snapshot& snap, std::string& error);
  void stopAuditAndAlerts();

  ServerOptions options_;
  uv_loop_t loop_;
  uv_async_t async_;
  uv_signal_t sig_hup_, sig_term_, sig_int_, sig_usr1_;
  uv_timer_t auth_timer_;
  bool auth_timer_started_ = false;
  uint64_t auth_ticks_ = 0;
  bool flush_in_flight_ = false;
  struct StoreStat {
    int64_t sec = 0, nsec = 0, size = -1, ino = 0;
    bool operator==(const StoreStat& o) const {
      return sec == o.sec && nsec == o.nsec && size == o.size && ino == o.ino;
    }
  };
  StoreStat store_stat_;
  StoreStat keyring_stat_;
  std::vector<StoreStat> tls_stats_;  // [tls] cert, key, then each [[tls.sni]] cert, key
  // A token-store re-read the proxy asked for itself failed: retried every
  // second until a store read succeeds (the retry, a watch reload, SIGHUP).
  bool store_reread_pending_ = false;
  // A full reload for a changed TLS or CA file was refused: retried every
  // second until one is applied. The file state is taken before each
  // attempt, so without this a fix that leaves the files' stat as it was
  // (chmod 600 of a key, a fixed config file) would never be tried.
  bool tls_reload_pending_ = false;
  std::string reload_error_;  // last full reload refusal, for quiet_repeat
  uint64_t ticket_ticks_ = 0;
  std::vector<DirWatch*> file_watches_;  // owned; freed in their close callbacks
  std::atomic<uint64_t> watch_events_{0};
  // Upload encryption counters per master key id; entries are only added,
  // so the pointers the filter factories hold stay valid. Main thread only.
  std::unordered_map<std::string, std::unique_ptr<EncryptionCounters>> enc_counters_;
  std::unordered_map<std::string, int64_t> last_use_seed_;
  // What a reload cannot change (set by startup, and by the config that
  // first creates the rate-limit table or the detector).
  FixedSettings fixed_;
  std::string auth_reload_error_;  // last reloadAuthFiles refusal, logged once
  // Tokens the proxy revoked itself, refused in memory until the store
  // revokes them (main thread); the queue from workers, under revoke_mu_.
  InMemoryRevocations revoked_here_;
  std::mutex revoke_mu_;  // never on the request path: a plaintext exposure's write completion
  std::vector<std::pair<std::string, bool>> revoke_queue_;
  bool revoke_write_in_flight_ = false;
  std::string revoke_write_error_;  // last failed retry, logged once
  // revoked_here_ as <state_dir>/token_revoked_here.tsv last holds it.
  std::unordered_map<std::string, int64_t> revoked_persisted_;
  std::string revoked_persisted_path_;  // where: a reload may name another state_dir
  bool revoke_persist_in_flight_ = false;
  std::string revoke_persist_error_;
  std::unique_ptr<LogWriter> access_log_;
  std::unique_ptr<WorkerShared> shared_;
  std::unique_ptr<RateLimiter> rate_limiter_;  // declared before workers_: outlives them
  // Audit log, detector and alert fan-out; also declared before workers_.
  std::unique_ptr<AuditLog> audit_;
  std::unique_ptr<AlertWebhook> webhook_;
  std::unique_ptr<SyslogSink> syslog_;
  AlertDispatcher alerts_;
  std::unique_ptr<Detector> detector_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::unique_ptr<AdminServer> admin_;
  std::unique_ptr<HealthChecker> health_checker_;
  HealthTable health_;
  RouteLabels labels_;
  std::shared_ptr<const Config> config_;
  std::shared_ptr<const Snapshot> snapshot_;
  uint64_t generation_ = 0;
  uint16_t http_port_ = 0;
  uint16_t https_port_ = 0;
  uint16_t admin_port_ = 0;
  bool shutting_down_ = false;
  bool signals_installed_ = false;

  std::atomic<uint64_t> reloads_{0};
  std::atomic<uint64_t> reload_failures_{0};
  std::atomic<bool> want_shutdown_{false};
  std::atomic<bool> want_reload_{false};
  std::atomic<bool> want_reopen_{false};
  std::atomic<bool> want_revocation_{false};
  std::atomic<bool> async_ready_{false};

  std::mutex ready_mu_;
  std::condition_variable ready_cv_;
  int ready_state_ = 0;  // 0 pending, 1 ready, -1 failed
};

// Opens one listening-capable TCP socket bound to `addr` with SO_REUSEADDR and
// SO_REUSEPORT (libuv 1.44 has no UV_TCP_REUSEPORT), non-blocking, not yet
// listening. Returns the fd or -errno; `bound_port` receives the actual port.
int openReusePortSocket(const HostPort& addr, uint16_t& bound_port, std::string& error);

// Logs one line to stderr with a UTC timestamp and level.
void logLine(const char* level, const std::string& message);

// Worker i's CPU under server.cpu_affinity (-1: not pinned) into out[i]. The
// CPUs come from, and a listed one must be among, those this process may use
// (sched_getaffinity: taskset, a cgroup's cpuset); false + `error` otherwise.
bool workerCpus(const ServerConfig& s, unsigned workers, std::vector<int>& out, std::string& error);

}  // namespace portcullis
