// Process-level end-to-end harness: starts the real `portcullis` and
// `demo-backend` binaries on 127.0.0.1 port 0 (the proxy optionally on [::1])
// and talks to them with raw, blocking sockets.
//
// Everything here is bounded: every socket has SO_RCVTIMEO/SO_SNDTIMEO, every
// wait for a child process has a deadline, and every child is SIGTERMed (then
// SIGKILLed) by its owner's destructor, so a failing test neither hangs nor
// leaves processes behind. Children also get PR_SET_PDEATHSIG, so even a
// crashing test binary takes them down with it.
//
// Setup failures (a binary that does not start, a port that never appears)
// throw std::runtime_error; GoogleTest reports that as a test failure.
#pragma once

#include <openssl/sha.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace portcullis::e2e {

using Millis = std::chrono::milliseconds;

// ---------------------------------------------------------------------------
// Small utilities

// Incremental SHA-256 (BoringSSL), lower-case hex digest.
class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  void update(std::string_view s) { update(s.data(), s.size()); }
  std::string hexDigest();

 private:
  SHA256_CTX ctx_;
};

std::string sha256Hex(std::string_view data);

// The demo backend's generated body: byte i is (i*31+7) & 0xff.
std::string patternBytes(uint64_t offset, size_t n);
// SHA-256 hex of the first n pattern bytes, computed incrementally.
std::string patternSha256(uint64_t n);

// True when `s` is exactly 32 lower-case hex digits (a Portcullis request id).
bool isRequestId(std::string_view s);

std::string toLower(std::string_view s);

// A private directory under $TMPDIR (or /tmp), removed recursively on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(std::string_view name) const { return path_ + "/" + std::string(name); }

 private:
  std::string path_;
};

// Writes `content` to `path` atomically (temporary file + rename).
void writeFileAtomic(const std::string& path, std::string_view content);

// A TCP port on 127.0.0.1 that nothing listens on (bound, then released).
uint16_t unusedPort();

// True if a TCP socket can bind [::1]:0 here; otherwise false and *why says
// what failed (IPv6 disabled, no ::1 on the loopback interface, ...).
bool ipv6LoopbackUsable(std::string* why);

// ---------------------------------------------------------------------------
// A private network namespace
//
// Moves the calling thread into a new network namespace of its own whose only
// interface is a loopback that is up (127.0.0.1 and ::1); addIpv6() gives it
// more addresses, so a test can open connections from many distinct client
// addresses (say, several of one IPv6 /64) without touching the host's
// interfaces. Every process and thread the calling thread starts afterwards
// (proxy, backend, clients) lives in the private namespace too; nothing in it
// can reach, or be reached from, the host's network.
//
// Needs CAP_SYS_ADMIN (root). Without it the constructor changes nothing and
// available() is false with the reason in error(): the test must then
// GTEST_SKIP, never pretend. Any other failure throws.
//
// The destructor returns the thread to the namespace it came from; the private
// namespace and its addresses vanish with the last process inside. Declare it
// before the proxy, backend and clients of a test so they are all made inside
// it and are gone before it is left.
class PrivateNetwork {
 public:
  PrivateNetwork();
  ~PrivateNetwork();
  PrivateNetwork(const PrivateNetwork&) = delete;
  PrivateNetwork& operator=(const PrivateNetwork&) = delete;

  bool available() const { return original_ns_ >= 0; }
  const std::string& error() const { return error_; }
  // Adds the IPv6 `address` (/128) to the private loopback interface and
  // waits (bounded) until a socket can bind it. Throws on failure.
  void addIpv6(const std::string& address);

 private:
  int original_ns_ = -1;  // the thread's namespace before, to return to
  std::string error_;
};

// ---------------------------------------------------------------------------
// Child processes

class ChildProcess {
 public:
  // Starts argv[0] with argv; stdin is /dev/null, stdout is inherited,
  // stderr is captured (readable with stderrText()).
  explicit ChildProcess(std::vector<std::string> argv);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  bool exited() const { return exited_; }
  void sendSignal(int sig);
  // Waits up to `timeout` for the process to exit. Returns true if it has
  // exited; `wait_status` (if given) receives the raw waitpid() status.
  bool waitExit(Millis timeout, int* wait_status = nullptr);
  // SIGTERM, a bounded wait, then SIGKILL. Returns the raw wait status.
  int stop(Millis grace = Millis(5000));

  std::string stderrText() const;
  // Waits up to `timeout` until the captured stderr contains `needle` at or
  // after byte `from`. Returns the position of the match.
  std::optional<size_t> waitForStderr(std::string_view needle, Millis timeout, size_t from = 0) const;
  size_t stderrSize() const;

 private:
  void readerLoop();

  pid_t pid_ = -1;
  bool exited_ = false;
  int wait_status_ = 0;
  int stderr_fd_ = -1;
  std::thread reader_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::string stderr_;
  bool stderr_eof_ = false;
};

// demo-backend on 127.0.0.1:<ephemeral>.
// Runs argv (argv[0] looked up in PATH) to completion with stdin, stdout
// and stderr redirected to the given files; returns the exit status, or
// 128 + signal number.
int runWithFiles(std::vector<std::string> argv, const std::string& in, const std::string& out,
                 const std::string& err);

class DemoBackend {
 public:
  // With `upload_dir`, POST /upload?name=X bodies are stored as files there.
  explicit DemoBackend(const std::string& upload_dir = "");
  uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  ChildProcess& process() { return *proc_; }
  // Complete requests the backend has served (asked directly, not through
  // the proxy): proves a refused request was never forwarded.
  uint64_t requests();

 private:
  TempDir dir_;
  std::unique_ptr<ChildProcess> proc_;
  uint16_t port_ = 0;
};

// ---------------------------------------------------------------------------
// Proxy configuration and process

struct RouteSpec {
  std::string prefix = "/";
  std::string upstream = "app";
  std::vector<std::string> methods;  // empty = the proxy's default list
  uint64_t max_body_bytes = 0;       // 0 = not set
  std::string extra_toml;            // more keys of this [[route]]
  bool auth = false;                 // tokens required on this route
};

struct UpstreamSpec {
  std::string name = "app";
  std::vector<std::string> servers;  // "127.0.0.1:PORT"
  std::string lb;                    // "" = default
  std::string health_check;          // inline table text, "" = none
  std::string extra_toml;            // more keys of this [[upstream]]
};

struct ProxyOptions {
  unsigned workers = 1;
  uint32_t shutdown_grace_ms = 5000;
  std::vector<UpstreamSpec> upstreams;
  std::vector<RouteSpec> routes = {RouteSpec{}};
  std::map<std::string, uint64_t> timeouts;  // [timeouts] key -> value
  std::map<std::string, uint64_t> limits;    // [limits] key -> value
  std::string extra_toml;                    // appended verbatim
  std::string server_toml;                   // extra lines inside [server]
  std::string log_toml;                      // extra lines inside [log]
  // Command words put before the proxy binary, e.g. {"prlimit", "--nofile=64", "--"}.
  std::vector<std::string> exec_prefix;
  std::string state_dir;                     // "" = <temp dir>/state
  // Address the plaintext (and HTTPS) listeners bind, with port 0: an IPv4 or
  // an IPv6 literal ("::1", written "[::1]:0" in the config). The admin
  // listener stays on 127.0.0.1. Clients reach it with
  // Client(proxy.listenHost(), proxy.httpPort()).
  std::string listen_host = "127.0.0.1";
  // HTTPS listener on listen_host port 0 with this certificate and key (PEM
  // paths); empty = plaintext only.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_min_version;               // "" = default
  // Body of the [https] section. Tests speak plaintext unless they test
  // HTTPS enforcement, so the default forwards it.
  std::string https_toml = "plaintext = \"allow\"\n";

  // Convenience: one upstream "app" with the given server.
  static ProxyOptions forBackend(const std::string& server_address);
};

// Renders a complete config file. Logs and state go under `dir`.
std::string renderConfig(const ProxyOptions& options, const std::string& dir);

class Proxy {
 public:
  explicit Proxy(const ProxyOptions& options);
  // Stops the process (SIGTERM, bounded wait, SIGKILL) and records a test
  // failure if it exited abnormally or its stderr shows a sanitizer report.
  ~Proxy();
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  uint16_t httpPort() const { return http_port_; }
  uint16_t httpsPort() const { return https_port_; }
  const std::string& listenHost() const { return listen_host_; }
  uint16_t adminPort() const { return admin_port_; }
  ChildProcess& process() { return *proc_; }
  const std::string& configPath() const { return config_path_; }
  const TempDir& dir() const { return dir_; }

  // Rewrites the config file atomically (no signal).
  void writeConfig(const ProxyOptions& options);
  void writeConfigText(std::string_view text);

  // Sends SIGHUP and waits (bounded) until the reload was refused or applied
  // and taken up by every worker, judged by the admin metrics. Returns true
  // if applied, false if refused.
  bool reload();

  // GET /metrics from the admin listener.
  std::string metricsText();
  // The value of the sample whose name-plus-labels is exactly `series`, e.g.
  // `portcullis_upstream_errors_total{kind="reset"}`; nullopt if absent.
  std::optional<double> metric(std::string_view series);
  // Like metric() but 0 when absent.
  double metricOr0(std::string_view series);
  // Polls (bounded) until the series equals `expected`; returns the last value
  // seen. For counters updated after the response has gone out.
  double waitForMetric(std::string_view series, double expected, Millis timeout = Millis(5000));

  // Dumps the captured stderr on test failure.
  void setExpectCleanExit(bool v) { expect_clean_exit_ = v; }

  // Starts the proxy again, on the same config and directory, after the test
  // stopped its process (sendSignal + waitExit): the new process finds the
  // logs and state the last one left, as the test may have edited them
  // meanwhile. The old process's stderr is scanned for secrets first; the
  // ports are read again (port 0: they change). Throws like the constructor.
  void relaunch();

 private:
  void launch();
  void scanForSecrets(const std::string& err);

  TempDir dir_;
  std::string config_path_;
  std::string listen_host_;
  std::vector<std::string> argv_;
  std::unique_ptr<ChildProcess> proc_;
  uint16_t http_port_ = 0;
  uint16_t https_port_ = 0;
  uint16_t admin_port_ = 0;
  bool expect_clean_exit_ = true;
};

// Finds `series` in Prometheus text; nullopt if absent.
std::optional<double> findMetric(std::string_view text, std::string_view series);

// While a client reads nothing: polls the proxy's metrics every 250 ms,
// `polls` times, expecting portcullis_buffered_bytes <= bound and less than
// half of `total` sent. Returns the peak buffered bytes seen.
double expectBufferedBounded(Proxy& proxy, double bound, uint64_t total, int polls = 6);

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 client

struct HttpResponse {
  int status = 0;
  int minor = 1;  // HTTP/1.<minor>
  std::string reason;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased, in order
  std::string body;        // decoded (empty when a sink was given)
  uint64_t body_bytes = 0; // decoded body bytes received (also with a sink)
  bool chunked = false;    // Transfer-Encoding: chunked framing was used
  bool until_close = false;// body delimited by the connection close
  size_t chunks = 0;       // data chunks seen (chunked only)

  std::optional<std::string> header(std::string_view name) const;
  size_t headerCount(std::string_view name) const;
  bool hasHeader(std::string_view name) const { return headerCount(name) > 0; }
};

enum class ReadResult {
  kOk,       // a complete response
  kClosed,   // the peer closed (or reset) before the response was complete
  kTimeout,  // nothing more arrived within the timeout
  kBadResponse,
};
const char* readResultName(ReadResult r);

struct ReadOptions {
  bool head_request = false;  // response to HEAD: no body whatever the headers say
  // If set, body bytes are passed here instead of stored in HttpResponse::body.
  std::function<void(const char*, size_t)> sink;
};

class Client {
 public:
  // Connects to 127.0.0.1:port; throws on failure. `timeout` bounds every
  // blocking send and receive.
  explicit Client(uint16_t port, Millis timeout = Millis(10000), int rcvbuf = 0);
  // Connects to the literal address `host` (IPv4 or IPv6, e.g. "::1") at
  // `port`; with a non-empty `source` the socket is first bound to that local
  // address (port 0), so the peer sees the connection come from it. Throws on
  // failure.
  Client(const std::string& host, uint16_t port, const std::string& source = "", Millis timeout = Millis(10000));
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Tries once to connect; returns the connected fd, or -errno.
  static int tryConnect(uint16_t port, Millis timeout = Millis(2000));

  int fd() const { return fd_; }
  // Sends all bytes; false if the connection failed.
  bool send(std::string_view data);
  void shutdownWrite();
  void setTimeout(Millis timeout);

  ReadResult readResponse(HttpResponse& out, const ReadOptions& options = {});
  // Receives until at least `n` bytes are buffered (not consumed: a later
  // readResponse() still sees them). False on EOF, timeout or error.
  bool prefetch(size_t n);
  // Reads whatever arrives (up to `max` bytes, or until the timeout).
  // Returns bytes read, 0 on EOF, -1 on timeout or error.
  ssize_t readSome(std::string& out, size_t max);
  // True if the peer closes the connection (EOF or reset) within `timeout`;
  // bytes arriving meanwhile are discarded and counted in *extra_bytes.
  bool waitClosed(Millis timeout, size_t* extra_bytes = nullptr);

  // Convenience: send `request` and read the response (expects kOk).
  HttpResponse roundTrip(std::string_view request, const ReadOptions& options = {});

 private:
  // Makes at least one more byte available in buf_; 1 ok, 0 EOF, -1 timeout, -2 error.
  int fill();
  size_t avail() const { return buf_.size() - pos_; }
  const char* cur() const { return buf_.data() + pos_; }
  void consume(size_t n);
  // Reads a CRLF-terminated line (without CRLF). Same codes as fill().
  int readLine(std::string& line, size_t max = 65536);

  int fd_ = -1;
  Millis timeout_;
  std::string buf_;
  size_t pos_ = 0;
};

// Reads one response whose body is only hashed (not kept): r gets status,
// headers and body_bytes; returns the body's SHA-256 hex ("" unless kOk).
std::string readHashedResponse(Client& c, HttpResponse& r);

// The whole content of a file ("" if it cannot be read).
std::string slurp(const std::string& path);
// `text` split at '\n' (no empty last element for a trailing newline).
std::vector<std::string> lines(const std::string& text);
// `portcullisctl token issue` into `store`; returns the printed token ("" on failure).
std::string ctlIssue(const std::string& store, const std::string& account, const std::string& role);

// A simple GET request text.
std::string getRequest(std::string_view path, std::string_view extra_headers = "",
                       std::string_view version = "HTTP/1.1");

// ---------------------------------------------------------------------------
// Minimal JSON (for the backend's echo and the proxy's error bodies)

struct JsonValue {
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject } type = Type::kNull;
  bool b = false;
  double num = 0;
  std::string str;
  std::vector<JsonValue> arr;
  std::vector<std::pair<std::string, JsonValue>> obj;  // in document order

  const JsonValue* get(std::string_view key) const;
  std::string getString(std::string_view key) const;  // "" if absent or not a string
  bool has(std::string_view key) const { return get(key) != nullptr; }
};

// Parses a complete JSON document; nullopt if malformed or trailing bytes follow.
std::optional<JsonValue> parseJson(std::string_view text);

// The demo backend's echo body, decoded.
struct Echo {
  std::string method;
  std::string path;
  std::map<std::string, std::string> headers;  // lower-case names
  uint64_t body_bytes = 0;
  std::string body_sha256;
};
std::optional<Echo> parseEcho(std::string_view body);

// A refusal made by the proxy itself (SPEC §5): exact status, a JSON body of
// exactly {"error","request_id"}, the id matching X-Request-Id, and nothing
// that identifies the proxy, its version or the backend.
void expectProxyError(const HttpResponse& r, int status, const std::string& code,
                      const std::string& backend_address = "");

// ---------------------------------------------------------------------------
// A scripted in-test upstream: a listening socket on 127.0.0.1 whose
// connections are handled by `handler` on a background thread (one connection
// at a time, in accept order). Used to observe that nothing was forwarded
// (connectionCount() stays 0) and to script upstream misbehaviour.
class ScriptedUpstream {
 public:
  // handler(fd, index) runs for each accepted connection; the fd is closed
  // after it returns. With no handler connections are counted and closed.
  using Handler = std::function<void(int fd, int index)>;
  explicit ScriptedUpstream(Handler handler = nullptr);
  ~ScriptedUpstream();
  uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int connectionCount() const { return accepted_.load(); }

  // Reads one request head (and a Content-Length body, if any, into *body
  // when given) from fd. Returns the head text, or "" on EOF/timeout.
  static std::string readRequest(int fd, Millis timeout = Millis(5000), std::string* body = nullptr);
  static bool writeAll(int fd, std::string_view data);

 private:
  void loop();
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  uint16_t port_ = 0;
  Handler handler_;
  std::atomic<int> accepted_{0};
  std::thread thread_;
};

}  // namespace portcullis::e2e
