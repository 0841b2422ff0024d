#include "proxy/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "proxy/access_log.h"
#include "proxy/admin_server.h"
#include "proxy/alert_webhook.h"
#include "proxy/audit_log.h"
#include "filters/https_enforce.h"
#include "filters/rate_limit.h"
#include "filters/rate_limiter.h"
#include "filters/token_check.h"
#include "filters/upload_encrypt.h"
#include "filters/validate.h"
#include "proxy/auth_state.h"
#include "proxy/errno_message.h"
#include "proxy/health_check.h"
#include "proxy/keyring.h"
#include "proxy/syslog_sink.h"
#include "proxy/tls.h"
#include "proxy/token_store.h"
#include "proxy/worker.h"

namespace portcullis {

void logLine(const char* level, const std::string& message) {
  char ts[32];
  std::time_t t = std::time(nullptr);
  std::tm tm;
  gmtime_r(&t, &tm);
  (void)std::strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);  // at most 26 characters: always fits
  std::fprintf(stderr, "%s [%s] %s\n", ts, level, message.c_str());
  (void)std::fflush(stderr);  // a lost log line on stderr leaves nothing to do
}

namespace {

// "0-3,6": the CPUs in `set`, for messages.
std::string cpuList(const cpu_set_t& set) {
  std::string out;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (!CPU_ISSET(c, &set)) continue;
    int end = c;
    while (end + 1 < CPU_SETSIZE && CPU_ISSET(end + 1, &set)) ++end;
    if (!out.empty()) out += ',';
    out += std::to_string(c);
    if (end > c) out += '-' + std::to_string(end);
    c = end;
  }
  return out;
}

// Creates server.state_dir (and its parents) if missing, as at start: a
// directory the proxy cannot create stops the start and refuses a reload.
bool ensureStateDir(const std::string& dir, std::string& error) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    error = dir + ": cannot create state_dir: " + ec.message();
    return false;
  }
  return true;
}

}  // namespace

bool workerCpus(const ServerConfig& s, unsigned workers, std::vector<int>& out, std::string& error) {
  out.assign(workers, -1);
  if (!s.cpu_affinity_auto && s.cpu_affinity.empty()) return true;
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) {
    error = "server.cpu_affinity: cannot read the CPUs this process may use: " + errnoMessage(errno);
    return false;
  }
  std::vector<int> cpus;
  if (s.cpu_affinity_auto) {
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
    }
  } else {
    for (uint32_t c : s.cpu_affinity) {
      if (c >= CPU_SETSIZE || !CPU_ISSET(c, &allowed)) {
        error = "server.cpu_affinity: CPU " + std::to_string(c) + " is not one this process may use (" +
                cpuList(allowed) + ")";
        return false;
      }
      cpus.push_back(static_cast<int>(c));
    }
  }
  if (cpus.empty()) return true;  // (sched_getaffinity never reports none)
  for (unsigned i = 0; i < workers; ++i) out[i] = cpus[i % cpus.size()];
  return true;
}

int openReusePortSocket(const HostPort& addr, uint16_t& bound_port, std::string& error) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  const bool v6 = addr.host.find(':') != std::string::npos;
  if (v6) {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(addr.port);
    if (inet_pton(AF_INET6, addr.host.c_str(), &sin6->sin6_addr) != 1) {
      error = "bad address " + addr.str();
      return -EINVAL;
    }
    len = sizeof(sockaddr_in6);
  } else {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(addr.port);
    if (inet_pton(AF_INET, addr.host.c_str(), &sin->sin_addr) != 1) {
      error = "bad address " + addr.str();
      return -EINVAL;
    }
    len = sizeof(sockaddr_in);
  }
  int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    const int e = errno;
    error = std::string("socket: ") + errnoMessage(e);
    return -e;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
    int e = errno;
    ::close(fd);
    error = std::string("SO_REUSEPORT: ") + errnoMessage(e);
    return -e;
  }
  if (v6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    int e = errno;
    ::close(fd);
    error = "bind " + addr.str() + ": " + errnoMessage(e);
    return -e;
  }
  sockaddr_storage got{};
  socklen_t glen = sizeof(got);
  getsockname(fd, reinterpret_cast<sockaddr*>(&got), &glen);
  bound_port = ntohs(v6 ? reinterpret_cast<sockaddr_in6*>(&got)->sin6_port
                        : reinterpret_cast<sockaddr_in*>(&got)->sin_port);
  return fd;
}

Server::Server(ServerOptions options) : options_(std::move(options)) {}

Server::~Server() = default;

bool Server::buildSnapshotFromFile(std::shared_ptr<const Snapshot>& out, InMemoryRevocations& revocations,
                                   std::string& error) {
  auto cfg = std::make_shared<Config>();
  if (!loadConfig(options_.config_path, *cfg, error)) return false;
  if (!checkSupported(*cfg, error)) return false;
  FilterFactoryList filters;
  // The chain in SPEC order: HTTPS enforcement, then (as they land)
  // validation, token check + RBAC, rate limiting, upload encryption.
  filters.push_back(std::make_shared<RateLimitIpFactory>(*cfg));  // before auth: floods and bans
  filters.push_back(std::make_shared<HttpsEnforceFactory>(*cfg));
  filters.push_back(std::make_shared<ValidateFactory>());
  filters.push_back(std::make_shared<TokenCheckFactory>());
  filters.push_back(std::make_shared<RateLimitTokenFactory>());
  filters.push_back(std::make_shared<RateLimitRouteFactory>(*cfg));
  std::shared_ptr<const LocalKeyring> keys;
  if (cfg->encryption.configured()) {
    // Last: only authorised, validated bodies are encrypted, and every
    // filter before sees plaintext.
    keys = LocalKeyring::load(cfg->encryption.keyring, error);
    if (!keys) return false;
    filters.push_back(makeEncryptFactory(*cfg, keys));
  }
  for (const auto& f : options_.extra_filters) filters.push_back(f);
  if (filters.size() > FilterChain::kMaxFilters) {
    error = "too many filters";
    return false;
  }
  std::shared_ptr<const TlsContext> tls;
  if (cfg->tls.configured()) {
    tls = TlsContext::create(cfg->tls, error);
    if (!tls) return false;
  }
  std::vector<std::shared_ptr<const UpstreamTlsContext>> upstream_tls(cfg->upstreams.size());
  for (size_t i = 0; i < cfg->upstreams.size(); ++i) {
    const UpstreamConfig& u = cfg->upstreams[i];
    if (!u.tls) continue;
    upstream_tls[i] = UpstreamTlsContext::create(u, error);
    if (!upstream_tls[i]) return false;
    if (!u.verify) {
      logLine("warn", "[[upstream]] " + u.name + ": tls verify = false, server certificates are not checked");
    }
  }
  std::shared_ptr<const AuthState> auth;
  if (cfg->auth.configured()) {
    auth = buildAuthState(*cfg, snapshot_ ? snapshot_->auth.get() : nullptr, last_use_seed_, error);
    if (!auth) return false;
    if (auto r = withInMemoryRevocations(*auth, revocations, /*from_store=*/true)) auth = std::move(r);
  }
  // The state directory is made here, before anything below that outlives
  // a refusal (the generation, the rate-limit table and the detector are
  // created once, sized by the first config that applies): a new one that
  // cannot be made refuses the reload with no effect, as it stops a start.
  if (!ensureStateDir(cfg->server.state_dir, error)) return false;
  auto snap = buildSnapshot(cfg, std::move(filters), health_, labels_, ++generation_);
  std::const_pointer_cast<Snapshot>(snap)->tls = std::move(tls);
  std::const_pointer_cast<Snapshot>(snap)->upstream_tls = std::move(upstream_tls);
  std::const_pointer_cast<Snapshot>(snap)->auth = std::move(auth);
  if (cfg->rate_limit.configured() || cfg->rate_limit.any_route_rate) {
    // One fixed-size table for the process, created with the first config
    // that asks for it; its size changes only on restart.
    if (!rate_limiter_) {
      RateLimiterOptions opts;
      opts.capacity_keys = cfg->rate_limit.max_keys;
      rate_limiter_ = std::make_unique<RateLimiter>(opts);
      fixed_.rate_limit_keys = cfg->rate_limit.max_keys;
    }
    std::const_pointer_cast<Snapshot>(snap)->rate_limiter = rate_limiter_.get();
  }
  if (cfg->detect.thresholds.enabled && !detector_) {
    // Like the rate limiter: one fixed-size table, sized by the first config.
    detector_ = std::make_unique<Detector>(cfg->detect.thresholds, &alerts_);
    fixed_.detect = cfg->detect.thresholds;
  }
  std::const_pointer_cast<Snapshot>(snap)->detector = cfg->detect.thresholds.enabled ? detector_.get() : nullptr;
  std::const_pointer_cast<Snapshot>(snap)->keys = keys;
  std::const_pointer_cast<Snapshot>(snap)->token_revoked = [this](const std::string& id, bool written) {
    requestRevocation(id, written);
  };
  std::const_pointer_cast<Snapshot>(snap)->audit = keys ? audit_.get() : nullptr;
  out = std::move(snap);
  return true;
}

bool Server::startup(std::string& error) {
  {
    // Last use per token from the previous run (for inactivity expiry).
    Config peek;
    std::string ignored;
    if (loadConfig(options_.config_path, peek, ignored) && peek.auth.configured()) {
      std::string e;
      readLastUse(lastUsePath(peek.server.state_dir), last_use_seed_, e);
      // Tokens an earlier run refused in memory: refused again from the
      // first snapshot, and written to the store when it can take them.
      std::unordered_map<std::string, int64_t> kept;
      if (!readRevokedHere(revokedHerePath(peek.server.state_dir), kept, e)) {
        logLine("error", "tokens refused in memory by an earlier run: " + e);
      }
      for (const auto& [id, since] : kept) revoked_here_[id] = InMemoryRevocation{false, since};
      if (!kept.empty()) {
        logLine("warn", std::to_string(kept.size()) +
                            " token(s) an earlier run refused in memory stay refused until the store revokes them");
      }
      revoked_persisted_ = std::move(kept);
      revoked_persisted_path_ = revokedHerePath(peek.server.state_dir);
    }
  }
  std::shared_ptr<const Snapshot> snap;
  InMemoryRevocations revocations = revoked_here_;
  if (!buildSnapshotFromFile(snap, revocations, error)) return false;
  revoked_here_ = std::move(revocations);
  const Config& cfg = *snap->config;
  snapshot_ = snap;
  config_ = snap->config;

  // Runtime state (token last use) lives here; created on first start.
  if (!ensureStateDir(cfg.server.state_dir, error)) return false;
  fixed_.started = snap->config;
  fixed_.max_header_bytes = maxHeadBytesFor(ioBufferSizeFor(cfg));

  access_log_ = std::make_unique<LogWriter>();
  if (!access_log_->start(cfg.log.access, error)) return false;
  if (!startAuditAndAlerts(*snap, error)) return false;
  fixed_.audit_running = audit_ != nullptr;
  shared_ = std::make_unique<WorkerShared>();
  shared_->workers = cfg.server.workers;
  shared_->access_log = access_log_.get();
  shared_->audit = audit_.get();

  std::vector<int> cpus;
  if (!workerCpus(cfg.server, cfg.server.workers, cpus, error)) return false;

  // One SO_REUSEPORT socket per worker; the kernel spreads connections.
  // With port 0 the first bind picks the port and the others reuse it.
  HostPort listen = cfg.server.listen_http;
  HostPort listen_tls = cfg.server.listen_https;
  for (unsigned i = 0; i < cfg.server.workers; ++i) {
    int fd = -1;
    int tls_fd = -1;
    if (!listen.empty()) {
      uint16_t port = 0;
      fd = openReusePortSocket(listen, port, error);
      if (fd < 0) return false;
      listen.port = port;
      http_port_ = port;
    }
    if (!listen_tls.empty()) {
      uint16_t port = 0;
      tls_fd = openReusePortSocket(listen_tls, port, error);
      if (tls_fd < 0) return false;
      listen_tls.port = port;
      https_port_ = port;
    }
    auto w = std::make_unique<Worker>(i, shared_.get());
    if (!w->init(fd, tls_fd, snap, error)) return false;
    w->setPlacement(cpus[i], cfg.server.worker_priority);
    workers_.push_back(std::move(w));
  }

  admin_ = std::make_unique<AdminServer>(&loop_, [this](std::string_view method, std::string_view path,
                                                        AdminReply& reply) {
    if (method != "GET" && method != "HEAD") {
      reply.status = 405;
      reply.body = "method not allowed\n";
    } else if (path == "/healthz") {
      reply.body = "ok\n";
    } else if (path == "/readyz") {
      reply.status = shutting_down_ ? 503 : 200;
      reply.body = shutting_down_ ? "draining\n" : "ready\n";
    } else if (path == "/metrics") {
      reply.content_type = "text/plain; version=0.0.4; charset=utf-8";
      reply.body = renderMetricsText();
    } else {
      reply.status = 404;
      reply.body = "not found\n";
    }
  });
  if (!admin_->listen(cfg.server.admin_listen.host, cfg.server.admin_listen.port, error)) return false;
  admin_port_ = admin_->port();
  // The audit log is opened (and locked) only once every listener is bound,
  // so a second instance of this config fails before it touches the log.
  // The workers start below: no event was recorded before this.
  if (audit_ && !audit_->start(cfg.log.audit, snap->keys, error)) {
    error = "log.audit: " + error;
    return false;
  }
  if (audit_) {
    // Tampering found at start: recorded in the chain by start(); raised here
    // like a detector alert (the webhook took its URL in startAuditAndAlerts).
    for (const std::string& members : audit_->startAlerts()) {
      alerts_.onRecordedAlert(AlertKind::kAuditTamper, members);
    }
  }

  health_checker_ = std::make_unique<HealthChecker>(&loop_);
  health_checker_->update(*snap);

  // Token store watch (1 s) and last-use flush (10 s), on the main loop; the
  // flush's file write runs on libuv's thread pool.
  uv_timer_init(&loop_, &auth_timer_);
  auth_timer_.data = this;
  auth_timer_started_ = true;
  rememberStoreStat();
  uv_timer_start(&auth_timer_, &Server::onAuthTimer, 1000, 1000);
  updateFileWatches();

  for (auto& w : workers_) w->start();
  const std::string workers = " with " + std::to_string(workers_.size()) + " worker(s)";
  if (!cfg.server.listen_https.empty()) {
    HostPort shown = cfg.server.listen_https;
    shown.port = https_port_;
    logLine("info", "portcullis " PORTCULLIS_VERSION " listening https " + shown.str() + workers);
  }
  if (!cfg.server.listen_http.empty()) {
    HostPort shown = cfg.server.listen_http;
    shown.port = http_port_;
    logLine("info", "portcullis " PORTCULLIS_VERSION " listening http " + shown.str() + workers);
  }
  HostPort admin_shown = cfg.server.admin_listen;
  admin_shown.port = admin_port_;
  logLine("info", "admin listening " + admin_shown.str());
  if (!cfg.server.listen_http.empty() && cfg.https.plaintext == HttpsConfig::Plaintext::kAllow) {
    logLine("warn", "https.plaintext = \"allow\": plaintext requests are forwarded to backends (testing only)");
  }
  return true;
}

int Server::run() {
  uv_loop_init(&loop_);
  loop_.data = this;
  uv_async_init(&loop_, &async_, &Server::onAsync);
  async_.data = this;
  {
    std::lock_guard<std::mutex> lock(ready_mu_);
    async_ready_ = true;
  }
  // Signal handlers go in before startup() announces the listening ports:
  // a supervisor may send SIGTERM or SIGHUP as soon as it sees them, and the
  // default action would kill the process. Signals caught now are handled
  // once the loop runs.
  if (options_.handle_signals) {
    (void)signal(SIGPIPE, SIG_IGN);  // cannot fail for a valid signal number
    uv_signal_init(&loop_, &sig_hup_);
    uv_signal_init(&loop_, &sig_term_);
    uv_signal_init(&loop_, &sig_int_);
    uv_signal_init(&loop_, &sig_usr1_);
    for (uv_signal_t* s : {&sig_hup_, &sig_term_, &sig_int_, &sig_usr1_}) s->data = this;
    uv_signal_start(&sig_hup_, &Server::onSignal, SIGHUP);
    uv_signal_start(&sig_term_, &Server::onSignal, SIGTERM);
    uv_signal_start(&sig_int_, &Server::onSignal, SIGINT);
    uv_signal_start(&sig_usr1_, &Server::onSignal, SIGUSR1);
    signals_installed_ = true;
  }
  std::string error;
  if (!startup(error)) {
    logLine("error", error);
    if (signals_installed_) {
      for (uv_signal_t* s : {&sig_hup_, &sig_term_, &sig_int_, &sig_usr1_})
        uv_close(reinterpret_cast<uv_handle_t*>(s), nullptr);
      signals_installed_ = false;
    }
    for (auto& w : workers_) w->postShutdown(0);
    for (auto& w : workers_) {
      w->start();
      w->join();
    }
    if (admin_) admin_->close();
    if (health_checker_) health_checker_->stop();
    {
      std::lock_guard<std::mutex> lock(ready_mu_);
      async_ready_ = false;
      uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
    }
    uv_run(&loop_, UV_RUN_DEFAULT);
    workers_.clear();
    if (access_log_) access_log_->stop();
    stopAuditAndAlerts();
    uv_loop_close(&loop_);
    setReady(false);
    return 1;
  }
  setReady(true);
  if (want_shutdown_ || want_reload_ || want_reopen_) uv_async_send(&async_);
  uv_run(&loop_, UV_RUN_DEFAULT);

  for (auto& w : workers_) w->join();
  workers_.clear();
  flushLastUse(true);
  persistRevocationsAtExit();
  access_log_->stop();
  stopAuditAndAlerts();
  if (signals_installed_) {
    // Closing the handles restores the default actions; a signal arriving
    // from here to exit stays pending instead of turning exit 0 into death
    // by signal. (Only this thread is left.)
    sigset_t set;
    sigemptyset(&set);
    for (int signum : {SIGHUP, SIGTERM, SIGINT, SIGUSR1}) sigaddset(&set, signum);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    for (uv_signal_t* s : {&sig_hup_, &sig_term_, &sig_int_, &sig_usr1_})
      uv_close(reinterpret_cast<uv_handle_t*>(s), nullptr);
    signals_installed_ = false;
    uv_run(&loop_, UV_RUN_DEFAULT);
  }
  uv_loop_close(&loop_);
  logLine("info", "stopped");
  return 0;
}

namespace {
// Identity and version of a file for change watching; size -1 when absent.
void statFile(const std::string& path, int64_t& sec, int64_t& nsec, int64_t& size, int64_t& ino) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    sec = st.st_mtim.tv_sec;
    nsec = st.st_mtim.tv_nsec;
    size = st.st_size;
    ino = static_cast<int64_t>(st.st_ino);
  }
}
}  // namespace

void Server::rememberStoreStat() {
  store_stat_ = {};
  keyring_stat_ = {};
  if (!config_) return;
  if (config_->auth.configured()) {
    statFile(config_->auth.token_store, store_stat_.sec, store_stat_.nsec, store_stat_.size, store_stat_.ino);
  }
  if (config_->encryption.configured()) {
    statFile(config_->encryption.keyring, keyring_stat_.sec, keyring_stat_.nsec, keyring_stat_.size,
             keyring_stat_.ino);
  }
  tls_stats_.clear();
  if (config_->tls.configured()) {
    std::vector<const std::string*> files = {&config_->tls.cert, &config_->tls.key};
    for (const TlsSniConfig& e : config_->tls.sni) {
      files.push_back(&e.cert);
      files.push_back(&e.key);
    }
    for (const std::string* f : files) {
      StoreStat st;
      statFile(*f, st.sec, st.nsec, st.size, st.ino);
      tls_stats_.push_back(st);
    }
  }
  for (const UpstreamConfig& u : config_->upstreams) {
    if (!u.tls || u.ca.empty()) continue;
    StoreStat st;
    statFile(u.ca, st.sec, st.nsec, st.size, st.ino);
    tls_stats_.push_back(st);
  }
}

// Every second: the token store and the keyring are re-read on the running
// config (reloadAuthFiles), the TLS certificates and keys and the upstream
// CA files by a full reload (validated like SIGHUP), when one of their files
// changed; a renewed certificate (e.g. from an ACME client)
// applies to new connections within a second, open ones keep theirs. Also
// rotates the session ticket keys every TicketKeys::kTicketRotationS.
void Server::onAuthTimer(uv_timer_t* t) {
  auto* s = static_cast<Server*>(t->data);
  if (s->shutting_down_ || !s->config_) return;
  if (++s->ticket_ticks_ >= TicketKeys::kTicketRotationS) {
    s->ticket_ticks_ = 0;
    TicketKeys::shared().rotate();
  }
  s->checkWatchedFiles();
  if (!s->config_->auth.configured()) return;
  s->retryRevocationWrites();
  s->persistRevocations();
  if (++s->auth_ticks_ % 10 == 0) s->flushLastUse(false);
}

void Server::checkWatchedFiles() {
  if (shutting_down_ || !config_) return;
  const bool watch_store = config_->auth.configured() && config_->auth.watch;
  const bool watch_keyring = config_->encryption.configured() && config_->encryption.watch;
  const StoreStat store_before = store_stat_;
  const StoreStat keyring_before = keyring_stat_;
  const std::vector<StoreStat> tls_before = tls_stats_;
  rememberStoreStat();
  // The token store and the keyring are re-read on their own, on the running
  // config: an unapplied (or broken) edit of the config file never rides
  // along, and never holds a revocation back. A failed read keeps the old
  // file state, so the next check retries it.
  const bool store_changed = watch_store && !(store_before == store_stat_);
  const bool keyring_changed = watch_keyring && !(keyring_before == keyring_stat_);
  // A failed re-read the proxy asked for itself (reloadStoreNow) is retried
  // here, also without auth.watch.
  const bool read_store = store_changed || store_reread_pending_;
  if ((read_store || keyring_changed) && !reloadAuthFiles(read_store, keyring_changed)) {
    if (store_changed) store_stat_ = store_before;
    if (keyring_changed) keyring_stat_ = keyring_before;
  }
  // A TLS file change is a full reload. The file state is already taken, so
  // a refused one is retried on every check until one applies (a fix need
  // not change the files' stat: chmod 600, or a repaired config file); the
  // running certificates serve meanwhile, and an error that lasts through
  // retries and further changes is said once.
  const bool tls_changed = !tls_before.empty() && !(tls_before == tls_stats_);
  if (tls_changed) logLine("info", "TLS certificate, key or upstream CA changed; reloading");
  if (tls_changed || tls_reload_pending_) tls_reload_pending_ = !reload(/*quiet_repeat=*/true);
}

void Server::applyRevocations() {
  std::vector<std::pair<std::string, bool>> queued;
  {
    std::lock_guard<std::mutex> lock(revoke_mu_);
    queued.swap(revoke_queue_);
  }
  if (shutting_down_ || !snapshot_ || !snapshot_->auth || queued.empty()) return;
  bool reread = false;
  const int64_t now = unixNow();
  for (auto& [id, written] : queued) {
    InMemoryRevocation& r = revoked_here_[id];
    if (r.since == 0) r.since = now;
    r.written = r.written || written;
    reread = reread || written;
  }
  if (auto auth = withInMemoryRevocations(*snapshot_->auth, revoked_here_, /*from_store=*/false)) {
    auto snap = std::make_shared<Snapshot>(*snapshot_);
    snap->auth = std::move(auth);
    snap->generation = ++generation_;
    snapshot_ = snap;
    for (auto& w : workers_) w->postSnapshot(snap);
    std::string ids;
    for (const auto& [id, written] : queued) ids += (ids.empty() ? "" : ", ") + id;
    logLine("info", "token " + ids + " refused in memory (generation " + std::to_string(snap->generation) + ")");
  }
  if (reread) reloadStoreNow();
  persistRevocations();
}

void Server::persistRevocations() {
  if (!config_ || !config_->auth.configured()) return;
  std::unordered_map<std::string, int64_t> now;
  for (const auto& [id, r] : revoked_here_) now[id] = r.since;
  const std::string path = revokedHerePath(config_->server.state_dir);
  if (now == revoked_persisted_ && path == revoked_persisted_path_) return;
  if (revoke_persist_in_flight_) return;  // the 1 s timer calls again
  struct Job {
    uv_work_t req;
    std::string path;
    std::unordered_map<std::string, int64_t> values;
    std::string error;
  };
  auto job = std::make_unique<Job>();
  job->req.data = job.get();
  job->path = path;
  job->values = now;
  revoke_persist_in_flight_ = true;
  uv_queue_work(
      &loop_, &job.release()->req,
      [](uv_work_t* r) {
        auto* j = static_cast<Job*>(r->data);
        writeRevokedHere(j->path, j->values, j->error);
      },
      [](uv_work_t* r, int) {
        std::unique_ptr<Job> j(static_cast<Job*>(r->data));
        auto* s = static_cast<Server*>(r->loop->data);
        s->revoke_persist_in_flight_ = false;
        if (j->error.empty()) {
          s->revoked_persisted_ = std::move(j->values);
          s->revoked_persisted_path_ = j->path;
        } else if (j->error != s->revoke_persist_error_) {
          logLine("error", "cannot keep tokens refused in memory across a restart (retried every second): " +
                               j->error);
        }
        s->revoke_persist_error_ = j->error;
      });
}

void Server::persistRevocationsAtExit() {
  if (!config_ || !config_->auth.configured()) return;
  std::vector<std::pair<std::string, bool>> queued;
  {
    std::lock_guard<std::mutex> lock(revoke_mu_);
    queued.swap(revoke_queue_);
  }
  const int64_t t = unixNow();
  for (const auto& [id, written] : queued) {
    InMemoryRevocation& r = revoked_here_[id];
    if (r.since == 0) r.since = t;
    r.written = r.written || written;
  }
  std::unordered_map<std::string, int64_t> now;
  for (const auto& [id, r] : revoked_here_) now[id] = r.since;
  const std::string path = revokedHerePath(config_->server.state_dir);
  if (now == revoked_persisted_ && path == revoked_persisted_path_) return;
  std::string e;
  if (writeRevokedHere(path, now, e)) {
    revoked_persisted_ = std::move(now);
    revoked_persisted_path_ = path;
  } else {
    logLine("error", "cannot keep tokens refused in memory across a restart: " + e);
  }
}

void Server::retryRevocationWrites() {
  if (revoke_write_in_flight_ || !config_ || !config_->auth.configured()) return;
  struct Job {
    uv_work_t req;
    std::string store;
    std::vector<std::string> ids;
    std::vector<std::string> written;
    std::string error;
  };
  auto job = std::make_unique<Job>();
  for (const auto& [id, r] : revoked_here_) {
    // Only ids the running store has: the others wait for a store that does.
    if (!r.written && snapshot_ && snapshot_->auth && snapshot_->auth->tokens->indexOf(id) >= 0) {
      job->ids.push_back(id);
    }
  }
  if (job->ids.empty()) return;
  job->req.data = job.get();
  job->store = config_->auth.token_store;
  revoke_write_in_flight_ = true;
  uv_queue_work(
      &loop_, &job.release()->req,
      [](uv_work_t* r) {
        auto* j = static_cast<Job*>(r->data);
        for (const std::string& id : j->ids) {
          std::string e;
          if (revokeToken(j->store, id, e, nullptr, kProxyStoreLockWaitMs)) {
            j->written.push_back(id);
          } else {
            j->error = e;
          }
        }
      },
      [](uv_work_t* r, int) {
        std::unique_ptr<Job> j(static_cast<Job*>(r->data));
        auto* s = static_cast<Server*>(r->loop->data);
        s->revoke_write_in_flight_ = false;
        if (!j->error.empty() && j->error != s->revoke_write_error_) {
          logLine("error", "revoking tokens refused in memory in the store, retried every second: " + j->error);
        }
        s->revoke_write_error_ = j->error;
        if (j->written.empty()) return;
        for (const std::string& id : j->written) {
          auto it = s->revoked_here_.find(id);
          if (it != s->revoked_here_.end()) it->second.written = true;
          if (s->audit_) s->audit_->record("token.revocation_stored", AuditFields().str("token_id", id).take());
        }
        logLine("info", "the token store now revokes " + std::to_string(j->written.size()) +
                            " token(s) refused in memory");
        s->reloadStoreNow();
      });
}

void Server::reloadStoreNow() {
  if (shutting_down_ || !config_ || !config_->auth.configured()) return;
  StoreStat now;
  statFile(config_->auth.token_store, now.sec, now.nsec, now.size, now.ino);
  if (reloadAuthFiles(true, false)) {
    store_stat_ = now;  // the watch need not read it again
  } else {
    store_reread_pending_ = true;  // the revocation it carries must not wait for SIGHUP
  }
}

void Server::updateFileWatches() {
  if (!config_ || shutting_down_) return;
  std::vector<std::string> dirs;
  std::vector<std::vector<std::string>> names;
  auto add = [&](const std::string& file) {
    const std::filesystem::path p(file);
    std::string dir = p.parent_path().string();
    if (dir.empty()) dir = ".";
    size_t i = 0;
    while (i < dirs.size() && dirs[i] != dir) ++i;
    if (i == dirs.size()) {
      dirs.push_back(dir);
      names.emplace_back();
    }
    names[i].push_back(p.filename().string());
  };
  if (config_->auth.configured() && config_->auth.watch) add(config_->auth.token_store);
  if (config_->encryption.configured() && config_->encryption.watch) add(config_->encryption.keyring);
  if (config_->tls.configured()) {
    add(config_->tls.cert);
    add(config_->tls.key);
    for (const TlsSniConfig& e : config_->tls.sni) {
      add(e.cert);
      add(e.key);
    }
  }
  for (const UpstreamConfig& u : config_->upstreams) {
    if (u.tls && !u.ca.empty()) add(u.ca);
  }
  bool same = dirs.size() == file_watches_.size();
  for (size_t i = 0; same && i < dirs.size(); ++i) {
    same = file_watches_[i]->dir() == dirs[i] && file_watches_[i]->names() == names[i];
  }
  if (same) return;
  closeFileWatches();
  for (size_t i = 0; i < dirs.size(); ++i) {
    auto* w = new DirWatch(&loop_, dirs[i], names[i], [this] {
      watch_events_++;
      checkWatchedFiles();
    });
    const int rc = w->start();
    if (rc != 0) logLine("warn", "cannot watch " + dirs[i] + " (" + uv_strerror(rc) + "); checking it every second");
    file_watches_.push_back(w);
  }
}

void Server::closeFileWatches() {
  for (DirWatch* w : file_watches_) w->close([w] { delete w; });
  file_watches_.clear();
}

// Writes the last-use table to the state dir; on the thread pool unless
// `sync` (at shutdown, when no loop runs any more).
void Server::flushLastUse(bool sync) {
  if (!snapshot_ || !snapshot_->auth) return;
  struct Job {
    uv_work_t req;
    std::string path;
    std::unordered_map<std::string, int64_t> values;
  };
  auto* job = new Job;
  job->req.data = job;
  job->path = lastUsePath(config_->server.state_dir);
  job->values = snapshot_->auth->lastUseById();
  auto work = [](uv_work_t* r) {
    auto* j = static_cast<Job*>(r->data);
    std::string e;
    if (!writeLastUse(j->path, j->values, e)) logLine("warn", "cannot write token last-use state: " + e);
  };
  if (sync || flush_in_flight_) {
    if (sync) work(&job->req);
    delete job;
    return;
  }
  flush_in_flight_ = true;
  uv_queue_work(&loop_, &job->req, work, [](uv_work_t* r, int) {
    auto* j = static_cast<Job*>(r->data);
    static_cast<Server*>(r->loop->data)->flush_in_flight_ = false;
    delete j;
  });
}

void Server::setReady(bool ok) {
  std::lock_guard<std::mutex> lock(ready_mu_);
  ready_state_ = ok ? 1 : -1;
  ready_cv_.notify_all();
}

bool Server::waitReady() {
  std::unique_lock<std::mutex> lock(ready_mu_);
  ready_cv_.wait(lock, [this] { return ready_state_ != 0; });
  return ready_state_ == 1;
}

// The async handle is closed at shutdown; ready_mu_ keeps a concurrent
// request*() from touching it after that.
void Server::requestShutdown() {
  want_shutdown_ = true;
  std::lock_guard<std::mutex> lock(ready_mu_);
  if (async_ready_) uv_async_send(&async_);
}
void Server::requestReload() {
  want_reload_ = true;
  std::lock_guard<std::mutex> lock(ready_mu_);
  if (async_ready_) uv_async_send(&async_);
}
void Server::requestRevocation(const std::string& id, bool written) {
  {
    std::lock_guard<std::mutex> lock(revoke_mu_);
    revoke_queue_.emplace_back(id, written);
  }
  want_revocation_ = true;
  std::lock_guard<std::mutex> lock(ready_mu_);
  if (async_ready_) uv_async_send(&async_);
}
void Server::requestReopen() {
  want_reopen_ = true;
  std::lock_guard<std::mutex> lock(ready_mu_);
  if (async_ready_) uv_async_send(&async_);
}

void Server::onAsync(uv_async_t* a) {
  auto* s = static_cast<Server*>(a->data);
  if (s->ready_state_ != 1) return;  // run() re-sends once ready
  if (s->want_reopen_.exchange(false)) {
    s->access_log_->reopen();
    if (s->audit_) s->audit_->reopen();
  }
  if (s->want_reload_.exchange(false)) s->reload();
  if (s->want_revocation_.exchange(false)) s->applyRevocations();
  if (s->want_shutdown_.exchange(false)) s->beginShutdown();
}

void Server::onSignal(uv_signal_t* sig, int signum) {
  auto* s = static_cast<Server*>(sig->data);
  switch (signum) {
    case SIGHUP:
      s->reload();
      break;
    case SIGUSR1:
      logLine("info", "reopening log files");
      s->access_log_->reopen();
      if (s->audit_) s->audit_->reopen();
      break;
    default:
      s->beginShutdown();
      break;
  }
}

bool Server::reload(bool quiet_repeat) {
  if (shutting_down_) return true;
  std::string error;
  std::shared_ptr<const Snapshot> snap;
  // The state directory is made before the swap, as startup() makes it
  // before serving: a new one that cannot be made refuses the reload.
  InMemoryRevocations revocations = revoked_here_;
  if (!buildSnapshotFromFile(snap, revocations, error)) {
    if (quiet_repeat && error == reload_error_) return false;
    reload_error_ = error;
    reload_failures_++;
    logLine("error", "reload refused, keeping the running config: " + error);
    if (audit_) audit_->record("config.reload", AuditFields().str("result", "refused").str("error", error).take());
    return false;
  }
  reload_error_.clear();
  const Config& cfg = *snap->config;
  std::string restart;  // "key,key": for the audit record
  for (const std::string& key : keysNeedingRestart(fixed_, cfg)) {
    logLine("warn", "reload: " + key + " changes only on restart; the running value stays");
    restart += (restart.empty() ? "" : ",") + key;
  }
  snapshot_ = snap;
  config_ = snap->config;
  revoked_here_ = std::move(revocations);  // pruned against the store it read
  // The new snapshot read every file: nothing is left to retry.
  store_reread_pending_ = false;
  tls_reload_pending_ = false;
  rememberStoreStat();
  for (auto& w : workers_) w->postSnapshot(snap);
  health_checker_->update(*snap);
  if (audit_ && snap->keys) {
    // Key rotation: later records are signed with the new active key.
    std::string e;
    if (!audit_->setKeys(snap->keys, e)) logLine("error", "audit log keeps its key: " + e);
  }
  updateFileWatches();
  reloads_++;
  logLine("info", "config reloaded (generation " + std::to_string(snap->generation) + ")" +
                      (snap->keys ? "; active key " + snap->keys->activeKeyId() : std::string()));
  if (audit_) {
    AuditFields f;
    f.str("result", "applied").unum("generation", snap->generation);
    if (!restart.empty()) f.str("restart_required", restart);
    audit_->record("config.reload", f.take());
  }
  return true;
}

// The audit log needs the [encryption] keyring (its MAC key is derived from
// the active master key). Without one it is off, with a warning (a config
// that names log.audit explicitly is refused by checkSupported instead).
// The log is created here and started by startup() once listeners are bound.
bool Server::startAuditAndAlerts(const Snapshot& snap, std::string& error) {
  const Config& cfg = *snap.config;
  webhook_ = std::make_unique<AlertWebhook>();
  if (!webhook_->start(cfg.detect.alert_webhook, error)) {
    error = "detect.alert_webhook: " + error;
    return false;
  }
  if (!cfg.log.syslog.empty()) {
    syslog_ = std::make_unique<SyslogSink>();
    char host[256] = {0};
    if (::gethostname(host, sizeof(host) - 1) != 0) host[0] = 0;
    if (!syslog_->start(cfg.log.syslog, host, error)) {
      error = "log.syslog: " + error;
      return false;
    }
  }
  if (snap.keys) {
    audit_ = std::make_unique<AuditLog>();
    if (syslog_) {
      SyslogSink* sink = syslog_.get();
      audit_->setTee([sink](std::string_view line) {
        // The event name is the record's third member; alerts go as warnings.
        std::string_view event = "audit";
        const size_t at = line.find("\"event\":\"");
        if (at != std::string_view::npos) {
          const size_t from = at + 9;
          const size_t to = line.find('"', from);
          if (to != std::string_view::npos) event = line.substr(from, to - from);
        }
        sink->send(event, line, event == "alert" ? SyslogSink::Severity::kWarning : SyslogSink::Severity::kNotice);
      });
    }
    std::const_pointer_cast<Snapshot>(snapshot_)->audit = audit_.get();
  } else {
    logLine("warn", "no [encryption] keyring: the audit log (keyed by it) is off");
  }
  alerts_.attach(audit_.get(), webhook_.get());
  return true;
}

// After the workers have stopped: everything recorded is written and synced.
void Server::stopAuditAndAlerts() {
  if (audit_) audit_->stop();
  if (syslog_) syslog_->stop();
  if (webhook_) webhook_->stop();
}

void Server::beginShutdown() {
  if (shutting_down_) return;
  shutting_down_ = true;
  const uint32_t grace = config_->server.shutdown_grace_ms;
  logLine("info", "shutting down: draining for up to " + std::to_string(grace) + " ms");
  for (auto& w : workers_) w->postShutdown(grace);
  admin_->close();
  health_checker_->stop();
  if (auth_timer_started_) uv_close(reinterpret_cast<uv_handle_t*>(&auth_timer_), nullptr);
  closeFileWatches();
  if (signals_installed_) {
    // Not closed: that would restore the default actions, and a second
    // SIGTERM or a SIGHUP during the drain would kill the process. Unref'd,
    // they no longer keep the loop alive; run() closes them at the end.
    for (uv_signal_t* s : {&sig_hup_, &sig_term_, &sig_int_, &sig_usr1_})
      uv_unref(reinterpret_cast<uv_handle_t*>(s));
  }
  {
    std::lock_guard<std::mutex> lock(ready_mu_);
    async_ready_ = false;
    uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
  }
}

int64_t Server::bufferedBytes() const {
  int64_t total = 0;
  for (const auto& w : workers_) total += w->metrics().buffered_bytes.get();
  return total;
}

std::string Server::renderMetricsText() const {
  std::vector<const WorkerMetrics*> ms;
  for (const auto& w : workers_) ms.push_back(&w->metrics());
  MetricsExtra extra;
  if (access_log_) {
    extra.log_written = access_log_->written();
    extra.log_dropped = access_log_->dropped();
    extra.log_queue_depth = access_log_->depth();
  }
  extra.config_reloads = reloads_.load();
  extra.config_reload_failures = reload_failures_.load();
  extra.config_generation = snapshot_ ? snapshot_->generation : 0;
  extra.config_generation_applied = extra.config_generation;
  for (const auto& w : workers_) extra.config_generation_applied = std::min(extra.config_generation_applied, w->appliedGeneration());
  extra.file_watch_events = watch_events_.load();
  extra.upstream_health = health_.list();
  if (audit_) {
    extra.audit_enabled = true;
    extra.audit_written = audit_->written();
    extra.audit_overflowed = audit_->overflowed();
    extra.audit_queue_depth = audit_->depth();
  }
  if (rate_limiter_) {
    const uint64_t now = monotonicNowNs();
    const RateLimiterStats st = rate_limiter_->stats();
    extra.ratelimit_enabled = true;
    extra.ratelimit_fallbacks = st.fallbacks;
    extra.ratelimit_bans_started = st.bans_started;
    extra.ratelimit_bans_active = rate_limiter_->activeBans(now);
    extra.ratelimit_keys = rate_limiter_->occupancy(now);
    extra.ratelimit_cells = st.cells;
  }
  for (size_t k = 0; k < kAlertKinds; ++k) {
    const auto kind = static_cast<AlertKind>(k);
    extra.alerts[k] = (detector_ ? detector_->alertsRaised(kind) : 0) + alerts_.recordedAlerts(kind);
  }
  if (detector_) {
    extra.detect_enabled = true;
    extra.detect_fallbacks = detector_->fallbacks();
  }
  if (webhook_ && webhook_->enabled()) {
    extra.webhook_enabled = true;
    extra.webhook_sent = webhook_->sent();
    extra.webhook_failed = webhook_->failed();
    extra.webhook_dropped = webhook_->dropped();
  }
  if (syslog_) {
    extra.syslog_enabled = true;
    extra.syslog_sent = syslog_->sent();
    extra.syslog_dropped = syslog_->dropped();
  }
  for (const auto& [id, c] : enc_counters_) {
    extra.encryption.push_back({id, c->uploads.load(std::memory_order_relaxed), c->bytes.load(std::memory_order_relaxed),
                                c->aborted.load(std::memory_order_relaxed)});
  }
  return renderMetrics(ms, labels_, extra);
}

}  // namespace portcullis
