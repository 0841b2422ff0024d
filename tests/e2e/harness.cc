#include "tests/e2e/harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <net/if.h>
#include <openssl/rand.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "proxy/keyring.h"

namespace portcullis::e2e {

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what); }

std::string errnoText(int e) { return std::string(std::strerror(e)); }

void setTimeouts(int fd, Millis timeout) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  if (tv.tv_sec == 0 && tv.tv_usec == 0) tv.tv_usec = 1000;  // 0 would mean "forever"
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

sockaddr_in loopback(uint16_t port) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return sa;
}

// A numeric IPv4 or IPv6 address and port; false if `host` is neither.
bool socketAddress(const std::string& host, uint16_t port, sockaddr_storage& ss, socklen_t& len) {
  ss = {};
  auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, host.c_str(), &sin->sin_addr) == 1) {
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    len = sizeof(sockaddr_in);
    return true;
  }
  ss = {};
  if (inet_pton(AF_INET6, host.c_str(), &sin6->sin6_addr) == 1) {
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

bool startsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

std::string tail(const std::string& s, size_t n) { return s.size() <= n ? s : "..." + s.substr(s.size() - n); }

}  // namespace

// ---------------------------------------------------------------------------
// Utilities

Sha256::Sha256() { SHA256_Init(&ctx_); }
void Sha256::update(const void* data, size_t n) { SHA256_Update(&ctx_, data, n); }
std::string Sha256::hexDigest() {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256_Final(md, &ctx_);
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : md) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

std::string sha256Hex(std::string_view data) {
  Sha256 h;
  h.update(data);
  return h.hexDigest();
}

std::string patternBytes(uint64_t offset, size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(((offset + i) * 31 + 7) & 0xff);
  return s;
}

std::string patternSha256(uint64_t n) {
  // The pattern repeats every 256 bytes, so one 64 KiB block serves every offset
  // that is a multiple of 256.
  static const std::string block = patternBytes(0, 65536);
  Sha256 h;
  uint64_t done = 0;
  while (done < n) {
    size_t take = static_cast<size_t>(std::min<uint64_t>(block.size(), n - done));
    h.update(block.data(), take);
    done += take;
  }
  return h.hexDigest();
}

bool isRequestId(std::string_view s) {
  if (s.size() != 32) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

std::string toLower(std::string_view s) {
  std::string o(s);
  for (char& c : o)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return o;
}

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/pc-e2e-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) fail("mkdtemp: " + errnoText(errno));
  path_ = buf.data();
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void writeFileAtomic(const std::string& path, std::string_view content) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) fail("cannot write " + tmp);
    f.write(content.data(), static_cast<std::streamsize>(content.size()));
    if (!f) fail("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("rename " + tmp + ": " + errnoText(errno));
}

uint16_t unusedPort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa = loopback(0);
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) fail("bind: " + errnoText(errno));
  socklen_t len = sizeof(sa);
  getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  ::close(fd);
  return ntohs(sa.sin_port);
}

bool ipv6LoopbackUsable(std::string* why) {
  int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    if (why != nullptr) *why = "no IPv6 sockets: " + errnoText(errno);
    return false;
  }
  sockaddr_in6 sa{};
  sa.sin6_family = AF_INET6;
  sa.sin6_addr = in6addr_loopback;
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0;
  if (!ok && why != nullptr) *why = "cannot bind [::1]:0: " + errnoText(errno);
  ::close(fd);
  return ok;
}

// ---------------------------------------------------------------------------
// PrivateNetwork

PrivateNetwork::PrivateNetwork() {
  // Namespaces belong to threads: remember this thread's, then leave it.
  const int original = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (original < 0) fail("open /proc/thread-self/ns/net: " + errnoText(errno));
  if (unshare(CLONE_NEWNET) != 0) {
    const int e = errno;
    ::close(original);
    if (e == EPERM) {
      error_ = "unshare(CLONE_NEWNET): " + errnoText(e) + " (a private network namespace needs root or CAP_SYS_ADMIN)";
      return;
    }
    fail("unshare(CLONE_NEWNET): " + errnoText(e));
  }
  original_ns_ = original;
  // The new namespace's loopback starts down; up, it has 127.0.0.1 and ::1.
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  bool up = fd >= 0 && ioctl(fd, SIOCGIFFLAGS, &ifr) == 0;
  if (up) {
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
    up = ioctl(fd, SIOCSIFFLAGS, &ifr) == 0;
  }
  const int e = errno;
  if (fd >= 0) ::close(fd);
  if (!up) {
    setns(original_ns_, CLONE_NEWNET);
    ::close(original_ns_);
    original_ns_ = -1;
    fail("cannot bring up lo in the private network namespace: " + errnoText(e));
  }
}

PrivateNetwork::~PrivateNetwork() {
  if (original_ns_ < 0) return;
  if (setns(original_ns_, CLONE_NEWNET) != 0) {
    // Staying in the private namespace would silently break every later test
    // in this process.
    std::fprintf(stderr, "PrivateNetwork: cannot return to the original network namespace: %s\n",
                 std::strerror(errno));
    std::abort();
  }
  ::close(original_ns_);
}

void PrivateNetwork::addIpv6(const std::string& address) {
  if (!available()) fail("PrivateNetwork::addIpv6 without a private namespace: " + error_);
  struct In6Ifreq {  // <linux/ipv6.h> struct in6_ifreq, which clashes with glibc's headers
    in6_addr addr;
    uint32_t prefixlen;
    int ifindex;
  } req{};
  if (inet_pton(AF_INET6, address.c_str(), &req.addr) != 1) fail("not an IPv6 address: " + address);
  req.prefixlen = 128;
  req.ifindex = static_cast<int>(if_nametoindex("lo"));
  int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) fail("socket(AF_INET6): " + errnoText(errno));
  if (req.ifindex == 0 || ioctl(fd, SIOCSIFADDR, &req) != 0) {
    const int e = errno;
    ::close(fd);
    fail("cannot add " + address + " to lo: " + errnoText(e));
  }
  ::close(fd);
  // Until the kernel has finished with the new address, binding it fails with
  // EADDRNOTAVAIL; wait for it (loopback skips duplicate address detection,
  // so this takes moments).
  sockaddr_storage ss;
  socklen_t len = 0;
  socketAddress(address, 0, ss, len);
  const auto deadline = Clock::now() + Millis(5000);
  for (;;) {
    int probe = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const bool ok = probe >= 0 && bind(probe, reinterpret_cast<sockaddr*>(&ss), len) == 0;
    const int e = errno;
    if (probe >= 0) ::close(probe);
    if (ok) return;
    if (Clock::now() >= deadline) fail("address " + address + " added to lo but not bindable: " + errnoText(e));
    std::this_thread::sleep_for(Millis(10));
  }
}

// ---------------------------------------------------------------------------
// ChildProcess

ChildProcess::ChildProcess(std::vector<std::string> argv) {
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) fail("pipe2: " + errnoText(errno));
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) fail("fork: " + errnoText(errno));
  if (pid == 0) {
    // Only async-signal-safe calls from here to exec.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(126);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
    dup2(fds[1], 2);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  ::close(fds[1]);
  pid_ = pid;
  stderr_fd_ = fds[0];
  reader_ = std::thread([this] { readerLoop(); });
}

ChildProcess::~ChildProcess() {
  stop();
  if (reader_.joinable()) reader_.join();
  if (stderr_fd_ >= 0) ::close(stderr_fd_);
}

void ChildProcess::readerLoop() {
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(stderr_fd_, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    std::lock_guard<std::mutex> lock(mu_);
    if (n <= 0) {
      stderr_eof_ = true;
      cv_.notify_all();
      return;
    }
    stderr_.append(buf, static_cast<size_t>(n));
    cv_.notify_all();
  }
}

void ChildProcess::sendSignal(int sig) {
  if (!exited_ && pid_ > 0) ::kill(pid_, sig);
}

bool ChildProcess::waitExit(Millis timeout, int* wait_status) {
  const auto deadline = Clock::now() + timeout;
  while (!exited_) {
    int st = 0;
    pid_t r = waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      exited_ = true;
      wait_status_ = st;
      break;
    }
    if (r < 0 && errno != EINTR) {
      exited_ = true;  // not our child any more; nothing to wait for
      wait_status_ = -1;
      break;
    }
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(Millis(2));
  }
  {
    // The child is gone, but the reader thread may not have drained its
    // stderr pipe yet: wait (bounded) for EOF so stderrText() is complete.
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, Millis(2000), [this] { return stderr_eof_; });
  }
  if (wait_status != nullptr) *wait_status = wait_status_;
  return true;
}

int ChildProcess::stop(Millis grace) {
  if (!exited_) {
    sendSignal(SIGTERM);
    if (!waitExit(grace)) {
      sendSignal(SIGKILL);
      waitExit(Millis(10000));
    }
  }
  return wait_status_;
}

std::string ChildProcess::stderrText() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stderr_;
}

size_t ChildProcess::stderrSize() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stderr_.size();
}

std::optional<size_t> ChildProcess::waitForStderr(std::string_view needle, Millis timeout, size_t from) const {
  std::unique_lock<std::mutex> lock(mu_);
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (from <= stderr_.size()) {
      size_t p = stderr_.find(needle, from);
      if (p != std::string::npos) return p;
    }
    if (stderr_eof_) return std::nullopt;
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout) {
      size_t p = from <= stderr_.size() ? stderr_.find(needle, from) : std::string::npos;
      if (p != std::string::npos) return p;
      return std::nullopt;
    }
  }
}

// ---------------------------------------------------------------------------
// DemoBackend

int runWithFiles(std::vector<std::string> argv_s, const std::string& in, const std::string& out,
                 const std::string& err) {
  std::vector<char*> argv;
  for (std::string& s : argv_s) argv.push_back(s.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fi = ::open(in.c_str(), O_RDONLY);
    const int fo = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int fe = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(fi, 0);
    ::dup2(fo, 1);
    ::dup2(fe, 2);
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

DemoBackend::DemoBackend(const std::string& upload_dir) {
  const std::string port_file = dir_.file("port");
  std::vector<std::string> argv{DEMO_BACKEND_BIN, "--listen", "127.0.0.1:0", "--port-file", port_file, "--quiet"};
  if (!upload_dir.empty()) {
    argv.push_back("--upload-dir");
    argv.push_back(upload_dir);
  }
  proc_ = std::make_unique<ChildProcess>(argv);
  const auto deadline = Clock::now() + Millis(15000);
  while (Clock::now() < deadline) {
    std::ifstream f(port_file);
    unsigned p = 0;
    if (f >> p && p > 0 && p < 65536) {
      port_ = static_cast<uint16_t>(p);
      return;
    }
    if (proc_->waitExit(Millis(0))) break;
    std::this_thread::sleep_for(Millis(5));
  }
  fail("demo-backend did not start; stderr:\n" + proc_->stderrText());
}

// ---------------------------------------------------------------------------
// Proxy

ProxyOptions ProxyOptions::forBackend(const std::string& server_address) {
  ProxyOptions o;
  UpstreamSpec u;
  u.servers = {server_address};
  o.upstreams.push_back(u);
  return o;
}

std::string renderConfig(const ProxyOptions& o, const std::string& dir) {
  std::string t;
  t += "[server]\n";
  t += "workers = " + std::to_string(o.workers) + "\n";
  const std::string listen =
      o.listen_host.find(':') != std::string::npos ? "[" + o.listen_host + "]:0" : o.listen_host + ":0";
  t += "listen_http = \"" + listen + "\"\n";
  if (!o.tls_cert.empty()) t += "listen_https = \"" + listen + "\"\n";
  t += "admin_listen = \"127.0.0.1:0\"\n";
  t += "shutdown_grace_ms = " + std::to_string(o.shutdown_grace_ms) + "\n";
  t += "state_dir = \"" + (o.state_dir.empty() ? dir + "/state" : o.state_dir) + "\"\n";
  t += o.server_toml + "\n";
  if (!o.timeouts.empty()) {
    t += "[timeouts]\n";
    for (const auto& [k, v] : o.timeouts) t += k + " = " + std::to_string(v) + "\n";
    t += "\n";
  }
  if (!o.limits.empty()) {
    t += "[limits]\n";
    for (const auto& [k, v] : o.limits) t += k + " = " + std::to_string(v) + "\n";
    t += "\n";
  }
  for (const UpstreamSpec& u : o.upstreams) {
    t += "[[upstream]]\nname = \"" + u.name + "\"\nservers = [";
    for (size_t i = 0; i < u.servers.size(); ++i) t += (i ? ", \"" : "\"") + u.servers[i] + "\"";
    t += "]\n";
    if (!u.lb.empty()) t += "lb = \"" + u.lb + "\"\n";
    if (!u.health_check.empty()) t += "health_check = " + u.health_check + "\n";
    t += u.extra_toml;
    t += "\n";
  }
  for (const RouteSpec& r : o.routes) {
    t += "[[route]]\nprefix = \"" + r.prefix + "\"\nupstream = \"" + r.upstream + "\"\nauth = " +
         (r.auth ? "true" : "false") + "\n";
    if (!r.methods.empty()) {
      t += "methods = [";
      for (size_t i = 0; i < r.methods.size(); ++i) t += (i ? ", \"" : "\"") + r.methods[i] + "\"";
      t += "]\n";
    }
    if (r.max_body_bytes != 0) t += "max_body_bytes = " + std::to_string(r.max_body_bytes) + "\n";
    t += r.extra_toml;
    t += "\n";
  }
  if (!o.tls_cert.empty()) {
    t += "[tls]\ncert = \"" + o.tls_cert + "\"\nkey = \"" + o.tls_key + "\"\n";
    if (!o.tls_min_version.empty()) t += "min_version = \"" + o.tls_min_version + "\"\n";
    t += "\n";
  }
  if (!o.https_toml.empty()) t += "[https]\n" + o.https_toml + "\n";
  t += "[log]\naccess = \"" + dir + "/access.log\"\naudit = \"" + dir + "/audit.log\"\n" + o.log_toml + "\n";
  if (o.extra_toml.find("[encryption]") == std::string::npos) {
    // The audit log is keyed by the keyring: every test proxy gets one.
    const std::string ring = dir + "/keyring.toml";
    if (::access(ring.c_str(), F_OK) != 0) {
      KeyringData d;
      d.active = "test";
      MasterKey k;
      RAND_bytes(k.data(), static_cast<int>(k.size()));
      d.keys = {{"test", k}};
      std::string e;
      if (!writeKeyring(ring, d, e)) fail("cannot write the test keyring: " + e);
    }
    t += "[encryption]\nkeyring = \"" + ring + "\"\n\n";
  }
  t += o.extra_toml;
  return t;
}

Proxy::Proxy(const ProxyOptions& options) : listen_host_(options.listen_host) {
  config_path_ = dir_.file("portcullis.toml");
  writeConfig(options);
  argv_ = options.exec_prefix;
  argv_.insert(argv_.end(), {PORTCULLIS_BIN, "-c", config_path_});
  launch();
}

void Proxy::relaunch() {
  if (!proc_->exited()) fail("relaunch: the proxy process is still running");
  scanForSecrets(proc_->stderrText());
  launch();
}

void Proxy::launch() {
  proc_ = std::make_unique<ChildProcess>(argv_);
  http_port_ = https_port_ = admin_port_ = 0;
  const Millis kStart(20000);
  auto admin_at = proc_->waitForStderr("admin listening ", kStart);
  if (!admin_at) fail("portcullis did not start; stderr:\n" + proc_->stderrText());
  auto admin_eol = proc_->waitForStderr("\n", kStart, *admin_at);
  const std::string err = proc_->stderrText();
  auto portAfterColon = [&](size_t from, size_t to) -> uint16_t {
    size_t colon = err.rfind(':', to);
    if (colon == std::string::npos || colon < from) return 0;
    return static_cast<uint16_t>(std::strtoul(err.c_str() + colon + 1, nullptr, 10));
  };
  size_t http_at = err.find("listening http ");
  size_t with_at = http_at == std::string::npos ? std::string::npos : err.find(" with ", http_at);
  if (http_at == std::string::npos || with_at == std::string::npos || !admin_eol) {
    fail("cannot find listening ports in stderr:\n" + err);
  }
  http_port_ = portAfterColon(http_at, with_at);
  admin_port_ = portAfterColon(*admin_at, *admin_eol);
  size_t https_at = err.find("listening https ");
  if (https_at != std::string::npos) {
    size_t https_with = err.find(" with ", https_at);
    if (https_with != std::string::npos) https_port_ = portAfterColon(https_at, https_with);
  }
  if (http_port_ == 0 || admin_port_ == 0) fail("cannot parse listening ports in stderr:\n" + err);
}

namespace {

bool isBase32Lower(char c) { return (c >= 'a' && c <= 'z') || (c >= '2' && c <= '7'); }
bool isBase64Url(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'; }

// The first complete token (pct_<12 base32>_<43 base64url>) in `text`, or "".
std::string findToken(std::string_view text) {
  for (size_t at = text.find("pct_"); at != std::string_view::npos; at = text.find("pct_", at + 1)) {
    if (at + 4 + 12 + 1 + 43 > text.size()) break;
    bool ok = true;
    for (size_t i = 0; i < 12 && ok; ++i) ok = isBase32Lower(text[at + 4 + i]);
    ok = ok && text[at + 16] == '_';
    for (size_t i = 0; i < 43 && ok; ++i) ok = isBase64Url(text[at + 17 + i]);
    if (ok) return std::string(text.substr(at, 60));
  }
  return {};
}

// The base64 key values of a keyring file (lines `"id" = "<base64>"`).
std::vector<std::string> keyringSecrets(const std::string& path) {
  std::vector<std::string> out;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    const size_t eq = line.find("= \"");
    if (line.rfind("\"", 0) != 0 || eq == std::string::npos) continue;
    std::string v = line.substr(eq + 3);
    if (!v.empty() && v.back() == '"') v.pop_back();
    if (v.size() >= 40) out.push_back(v);
  }
  return out;
}

}  // namespace

// SPEC §8: tokens and secrets never appear in any log. Every file the proxy
// wrote under its directory (access and audit logs, state) and its stderr
// are scanned for a complete token and for the keyring's key material.
void Proxy::scanForSecrets(const std::string& err) {
  const std::vector<std::string> keys = keyringSecrets(dir_.file("keyring.toml"));
  auto check = [&](const std::string& what, std::string_view text) {
    const std::string token = findToken(text);
    if (!token.empty()) ADD_FAILURE() << what << " contains a token: " << token.substr(0, 17) << "...";
    for (const std::string& k : keys) {
      if (text.find(k) != std::string_view::npos) ADD_FAILURE() << what << " contains keyring key material";
    }
  };
  check("portcullis stderr", err);
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir_.path(), ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file()) continue;
    const std::string name = it->path().filename().string();
    if (name.rfind("portcullis.toml", 0) == 0 || name == "keyring.toml") continue;  // inputs, not logs
    std::ifstream f(it->path(), std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    check(it->path().string(), text);
  }
}

Proxy::~Proxy() {
  const int st = proc_->stop(Millis(15000));
  const std::string err = proc_->stderrText();
  scanForSecrets(err);
  const bool sanitizer = err.find("AddressSanitizer") != std::string::npos ||
                         err.find("LeakSanitizer") != std::string::npos ||
                         err.find("runtime error:") != std::string::npos;
  if (sanitizer) ADD_FAILURE() << "sanitizer report in portcullis stderr:\n" << tail(err, 20000);
  if (expect_clean_exit_ && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
    ADD_FAILURE() << "portcullis did not exit cleanly (wait status " << st << "); stderr:\n" << tail(err, 8000);
  } else if (::testing::Test::HasFailure() && !sanitizer) {
    std::fprintf(stderr, "---- portcullis stderr ----\n%s\n---------------------------\n", tail(err, 8000).c_str());
  }
}

void Proxy::writeConfig(const ProxyOptions& options) { writeConfigText(renderConfig(options, dir_.path())); }

void Proxy::writeConfigText(std::string_view text) { writeFileAtomic(config_path_, text); }

bool Proxy::reload() {
  const double ok0 = metricOr0("portcullis_config_reloads_total");
  const double bad0 = metricOr0("portcullis_config_reload_failures_total");
  proc_->sendSignal(SIGHUP);
  const auto deadline = Clock::now() + Millis(15000);
  while (Clock::now() < deadline) {
    std::string text = metricsText();
    double ok = findMetric(text, "portcullis_config_reloads_total").value_or(0);
    double bad = findMetric(text, "portcullis_config_reload_failures_total").value_or(0);
    // Applied: done once every worker takes new requests under it.
    if (ok > ok0 && findMetric(text, "portcullis_config_generation_applied") ==
                        findMetric(text, "portcullis_config_generation")) {
      return true;
    }
    if (bad > bad0) return false;
    std::this_thread::sleep_for(Millis(5));
  }
  fail("reload neither applied nor refused within 15 s; stderr:\n" + proc_->stderrText());
}

std::string Proxy::metricsText() {
  Client c(admin_port_);
  HttpResponse r;
  if (!c.send("GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")) fail("metrics: send failed");
  ReadResult rr = c.readResponse(r);
  if (rr != ReadResult::kOk || r.status != 200) {
    fail(std::string("metrics: ") + readResultName(rr) + " status " + std::to_string(r.status));
  }
  return r.body;
}

std::optional<double> findMetric(std::string_view text, std::string_view series) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    std::string_view line = text.substr(pos, eol - pos);
    pos = eol + 1;
    if (line.size() > series.size() && startsWith(line, series) && line[series.size()] == ' ') {
      return std::strtod(std::string(line.substr(series.size() + 1)).c_str(), nullptr);
    }
  }
  return std::nullopt;
}

std::optional<double> Proxy::metric(std::string_view series) { return findMetric(metricsText(), series); }

double Proxy::metricOr0(std::string_view series) { return metric(series).value_or(0); }

double Proxy::waitForMetric(std::string_view series, double expected, Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    double v = metricOr0(series);
    if (v == expected || Clock::now() >= deadline) return v;
    std::this_thread::sleep_for(Millis(5));
  }
}

// ---------------------------------------------------------------------------
// Client

std::optional<std::string> HttpResponse::header(std::string_view name) const {
  const std::string n = toLower(name);
  for (const auto& [k, v] : headers)
    if (k == n) return v;
  return std::nullopt;
}

size_t HttpResponse::headerCount(std::string_view name) const {
  const std::string n = toLower(name);
  size_t c = 0;
  for (const auto& [k, v] : headers)
    if (k == n) ++c;
  return c;
}

const char* readResultName(ReadResult r) {
  switch (r) {
    case ReadResult::kOk: return "ok";
    case ReadResult::kClosed: return "closed";
    case ReadResult::kTimeout: return "timeout";
    case ReadResult::kBadResponse: return "bad response";
  }
  return "?";
}

int Client::tryConnect(uint16_t port, Millis timeout) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  setTimeouts(fd, timeout);
  sockaddr_in sa = loopback(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    int e = errno;
    ::close(fd);
    return -e;
  }
  return fd;
}

Client::Client(uint16_t port, Millis timeout, int rcvbuf) : timeout_(timeout) {
  fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) fail("socket: " + errnoText(errno));
  if (rcvbuf > 0) setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
  setTimeouts(fd_, timeout);
  sockaddr_in sa = loopback(port);
  if (connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    int e = errno;
    ::close(fd_);
    fd_ = -1;
    fail("connect 127.0.0.1:" + std::to_string(port) + ": " + errnoText(e));
  }
  int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

Client::Client(const std::string& host, uint16_t port, const std::string& source, Millis timeout)
    : timeout_(timeout) {
  sockaddr_storage to;
  socklen_t to_len = 0;
  if (!socketAddress(host, port, to, to_len)) fail("not a numeric address: " + host);
  const std::string where = (to.ss_family == AF_INET6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
  fd_ = socket(to.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) fail("socket: " + errnoText(errno));
  setTimeouts(fd_, timeout);
  if (!source.empty()) {
    sockaddr_storage from;
    socklen_t from_len = 0;
    if (!socketAddress(source, 0, from, from_len) || from.ss_family != to.ss_family) {
      ::close(fd_);
      fd_ = -1;
      fail("source address " + source + " does not fit " + where);
    }
    if (bind(fd_, reinterpret_cast<sockaddr*>(&from), from_len) != 0) {
      const int e = errno;
      ::close(fd_);
      fd_ = -1;
      fail("bind " + source + ": " + errnoText(e));
    }
  }
  if (connect(fd_, reinterpret_cast<sockaddr*>(&to), to_len) != 0) {
    const int e = errno;
    ::close(fd_);
    fd_ = -1;
    fail("connect " + where + (source.empty() ? "" : " from " + source) + ": " + errnoText(e));
  }
  int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

Client::~Client() {
  if (fd_ >= 0) ::close(fd_);
}

void Client::setTimeout(Millis timeout) {
  timeout_ = timeout;
  setTimeouts(fd_, timeout);
}

bool Client::send(std::string_view data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    off += static_cast<size_t>(n);
  }
  return true;
}

void Client::shutdownWrite() { ::shutdown(fd_, SHUT_WR); }

void Client::consume(size_t n) {
  pos_ += n;
  if (pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  } else if (pos_ > (1u << 20)) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
}

int Client::fill() {
  char tmp[256 * 1024];
  for (;;) {
    ssize_t n = ::recv(fd_, tmp, sizeof(tmp), 0);
    if (n > 0) {
      buf_.append(tmp, static_cast<size_t>(n));
      return 1;
    }
    if (n == 0) return 0;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return -1;
    return -2;
  }
}

int Client::readLine(std::string& line, size_t max) {
  size_t scanned = 0;
  for (;;) {
    std::string_view view(cur(), avail());
    size_t p = view.find("\r\n", scanned > 0 ? scanned - 1 : 0);
    if (p != std::string_view::npos) {
      line.assign(view.substr(0, p));
      consume(p + 2);
      return 1;
    }
    scanned = view.size();
    if (scanned > max) return -3;
    int r = fill();
    if (r <= 0) return r;
  }
}

ssize_t Client::readSome(std::string& out, size_t max) {
  if (avail() == 0) {
    int r = fill();
    if (r == 0) return 0;
    if (r < 0) return -1;
  }
  size_t take = std::min(max, avail());
  out.append(cur(), take);
  consume(take);
  return static_cast<ssize_t>(take);
}

bool Client::prefetch(size_t n) {
  while (avail() < n) {
    if (fill() != 1) return false;
  }
  return true;
}

bool Client::waitClosed(Millis timeout, size_t* extra_bytes) {
  size_t extra = avail();
  consume(avail());
  const auto deadline = Clock::now() + timeout;
  bool closed = false;
  char tmp[65536];
  for (;;) {
    auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
    if (left.count() <= 0) break;
    setTimeouts(fd_, left);
    ssize_t n = ::recv(fd_, tmp, sizeof(tmp), 0);
    if (n > 0) {
      extra += static_cast<size_t>(n);
      continue;
    }
    if (n == 0) {
      closed = true;
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    closed = true;  // reset
    break;
  }
  setTimeouts(fd_, timeout_);
  if (extra_bytes != nullptr) *extra_bytes = extra;
  return closed;
}

ReadResult Client::readResponse(HttpResponse& out, const ReadOptions& options) {
  out = HttpResponse{};
  auto fromCode = [](int r) {
    if (r == -1) return ReadResult::kTimeout;
    if (r == -3) return ReadResult::kBadResponse;
    return ReadResult::kClosed;  // EOF or reset
  };
  std::string line;
  for (;;) {
    // Status line and headers (interim 1xx responses are skipped).
    out = HttpResponse{};
    int r = readLine(line);
    if (r != 1) return fromCode(r);
    if (line.size() < 12 || !startsWith(line, "HTTP/1.") || line[8] != ' ') return ReadResult::kBadResponse;
    out.minor = line[7] - '0';
    out.status = std::atoi(line.substr(9, 3).c_str());
    out.reason = line.size() > 13 ? line.substr(13) : "";
    for (;;) {
      r = readLine(line);
      if (r != 1) return fromCode(r);
      if (line.empty()) break;
      size_t colon = line.find(':');
      if (colon == std::string::npos || colon == 0) return ReadResult::kBadResponse;
      std::string value = line.substr(colon + 1);
      while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.erase(0, 1);
      while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.pop_back();
      out.headers.emplace_back(toLower(line.substr(0, colon)), value);
    }
    if (out.status >= 200 || out.status == 101) break;
  }
  auto deliver = [&](const char* p, size_t n) {
    out.body_bytes += n;
    if (options.sink) {
      options.sink(p, n);
    } else {
      out.body.append(p, n);
    }
  };
  if (options.head_request || out.status == 204 || out.status == 304) return ReadResult::kOk;
  auto te = out.header("transfer-encoding");
  if (te && toLower(*te).find("chunked") != std::string::npos) {
    out.chunked = true;
    for (;;) {
      int r = readLine(line);
      if (r != 1) return fromCode(r);
      size_t semi = line.find(';');
      std::string size_text = line.substr(0, semi);
      if (size_text.empty()) return ReadResult::kBadResponse;
      char* end = nullptr;
      unsigned long long size = std::strtoull(size_text.c_str(), &end, 16);
      if (end == nullptr || *end != '\0') return ReadResult::kBadResponse;
      if (size == 0) {
        for (;;) {  // trailers
          r = readLine(line);
          if (r != 1) return fromCode(r);
          if (line.empty()) return ReadResult::kOk;
        }
      }
      ++out.chunks;
      uint64_t left = size;
      while (left > 0) {
        if (avail() == 0) {
          r = fill();
          if (r != 1) return fromCode(r);
        }
        size_t take = static_cast<size_t>(std::min<uint64_t>(left, avail()));
        deliver(cur(), take);
        consume(take);
        left -= take;
      }
      r = readLine(line);
      if (r != 1) return fromCode(r);
      if (!line.empty()) return ReadResult::kBadResponse;
    }
  }
  auto cl = out.header("content-length");
  if (cl) {
    uint64_t left = std::strtoull(cl->c_str(), nullptr, 10);
    while (left > 0) {
      if (avail() == 0) {
        int r = fill();
        if (r != 1) return fromCode(r);
      }
      size_t take = static_cast<size_t>(std::min<uint64_t>(left, avail()));
      deliver(cur(), take);
      consume(take);
      left -= take;
    }
    return ReadResult::kOk;
  }
  out.until_close = true;
  for (;;) {
    if (avail() > 0) {
      deliver(cur(), avail());
      consume(avail());
    }
    int r = fill();
    if (r == 0) return ReadResult::kOk;
    if (r == -1) return ReadResult::kTimeout;
    if (r < 0) return ReadResult::kClosed;
  }
}

HttpResponse Client::roundTrip(std::string_view request, const ReadOptions& options) {
  HttpResponse r;
  if (!send(request)) fail("send failed");
  ReadResult rr = readResponse(r, options);
  if (rr != ReadResult::kOk) fail(std::string("response not read: ") + readResultName(rr));
  return r;
}

std::string getRequest(std::string_view path, std::string_view extra_headers, std::string_view version) {
  std::string s = "GET ";
  s += path;
  s += ' ';
  s += version;
  s += "\r\nHost: e2e.test\r\n";
  s += extra_headers;
  s += "\r\n";
  return s;
}

// ---------------------------------------------------------------------------
// JSON

namespace {

class JsonParser {
 public:
  explicit JsonParser(std::string_view t) : t_(t) {}
  bool parse(JsonValue& v) {
    if (!value(v, 0)) return false;
    ws();
    return i_ == t_.size();
  }

 private:
  void ws() {
    while (i_ < t_.size() && (t_[i_] == ' ' || t_[i_] == '\n' || t_[i_] == '\r' || t_[i_] == '\t')) ++i_;
  }
  bool lit(std::string_view w) {
    if (t_.substr(i_, w.size()) != w) return false;
    i_ += w.size();
    return true;
  }
  bool value(JsonValue& v, int depth) {
    if (depth > 64) return false;
    ws();
    if (i_ >= t_.size()) return false;
    char c = t_[i_];
    if (c == '{') {
      v.type = JsonValue::Type::kObject;
      ++i_;
      ws();
      if (i_ < t_.size() && t_[i_] == '}') {
        ++i_;
        return true;
      }
      for (;;) {
        ws();
        std::string key;
        if (!string(key)) return false;
        ws();
        if (i_ >= t_.size() || t_[i_] != ':') return false;
        ++i_;
        JsonValue child;
        if (!value(child, depth + 1)) return false;
        v.obj.emplace_back(std::move(key), std::move(child));
        ws();
        if (i_ < t_.size() && t_[i_] == ',') {
          ++i_;
          continue;
        }
        if (i_ < t_.size() && t_[i_] == '}') {
          ++i_;
          return true;
        }
        return false;
      }
    }
    if (c == '[') {
      v.type = JsonValue::Type::kArray;
      ++i_;
      ws();
      if (i_ < t_.size() && t_[i_] == ']') {
        ++i_;
        return true;
      }
      for (;;) {
        JsonValue child;
        if (!value(child, depth + 1)) return false;
        v.arr.push_back(std::move(child));
        ws();
        if (i_ < t_.size() && t_[i_] == ',') {
          ++i_;
          continue;
        }
        if (i_ < t_.size() && t_[i_] == ']') {
          ++i_;
          return true;
        }
        return false;
      }
    }
    if (c == '"') {
      v.type = JsonValue::Type::kString;
      return string(v.str);
    }
    if (lit("true")) {
      v.type = JsonValue::Type::kBool;
      v.b = true;
      return true;
    }
    if (lit("false")) {
      v.type = JsonValue::Type::kBool;
      return true;
    }
    if (lit("null")) return true;
    size_t start = i_;
    while (i_ < t_.size() && (std::strchr("+-0123456789.eE", t_[i_]) != nullptr)) ++i_;
    if (i_ == start) return false;
    v.type = JsonValue::Type::kNumber;
    v.num = std::strtod(std::string(t_.substr(start, i_ - start)).c_str(), nullptr);
    return true;
  }
  bool string(std::string& out) {
    if (i_ >= t_.size() || t_[i_] != '"') return false;
    ++i_;
    while (i_ < t_.size()) {
      char c = t_[i_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (i_ >= t_.size()) return false;
      char e = t_[i_++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          if (i_ + 4 > t_.size()) return false;
          unsigned cp = static_cast<unsigned>(std::strtoul(std::string(t_.substr(i_, 4)).c_str(), nullptr, 16));
          i_ += 4;
          if (cp < 0x80) {
            out.push_back(static_cast<char>(cp));
          } else if (cp < 0x800) {
            out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
          } else {
            out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
          }
          break;
        }
        default: return false;
      }
    }
    return false;
  }

  std::string_view t_;
  size_t i_ = 0;
};

}  // namespace

const JsonValue* JsonValue::get(std::string_view key) const {
  for (const auto& [k, v] : obj)
    if (k == key) return &v;
  return nullptr;
}

std::string JsonValue::getString(std::string_view key) const {
  const JsonValue* v = get(key);
  return v != nullptr && v->type == Type::kString ? v->str : std::string();
}

std::optional<JsonValue> parseJson(std::string_view text) {
  JsonValue v;
  JsonParser p(text);
  if (!p.parse(v)) return std::nullopt;
  return v;
}

std::optional<Echo> parseEcho(std::string_view body) {
  auto j = parseJson(body);
  if (!j || j->type != JsonValue::Type::kObject) return std::nullopt;
  Echo e;
  e.method = j->getString("method");
  e.path = j->getString("path");
  e.body_sha256 = j->getString("body_sha256");
  if (const JsonValue* n = j->get("body_bytes"); n != nullptr && n->type == JsonValue::Type::kNumber) {
    e.body_bytes = static_cast<uint64_t>(n->num);
  } else {
    return std::nullopt;
  }
  const JsonValue* h = j->get("headers");
  if (h == nullptr || h->type != JsonValue::Type::kObject) return std::nullopt;
  for (const auto& [k, v] : h->obj) e.headers[k] = v.str;
  return e;
}

// ---------------------------------------------------------------------------
// ScriptedUpstream

ScriptedUpstream::ScriptedUpstream(Handler handler) : handler_(std::move(handler)) {
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa = loopback(0);
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 || listen(listen_fd_, 64) != 0) {
    fail("scripted upstream: " + errnoText(errno));
  }
  socklen_t len = sizeof(sa);
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&sa), &len);
  port_ = ntohs(sa.sin_port);
  if (pipe2(wake_, O_CLOEXEC) != 0) fail("pipe2: " + errnoText(errno));
  thread_ = std::thread([this] { loop(); });
}

ScriptedUpstream::~ScriptedUpstream() {
  char c = 'x';
  (void)!::write(wake_[1], &c, 1);
  thread_.join();
  ::close(listen_fd_);
  ::close(wake_[0]);
  ::close(wake_[1]);
}

void ScriptedUpstream::loop() {
  for (int index = 0;; ++index) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    int r = ::poll(p, 2, -1);
    if (r < 0 && errno == EINTR) {
      --index;
      continue;
    }
    if (r < 0 || (p[1].revents & POLLIN) != 0) return;
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      --index;
      continue;
    }
    accepted_.fetch_add(1);
    setTimeouts(fd, Millis(5000));
    if (handler_) handler_(fd, index);
    ::close(fd);
  }
}

std::string ScriptedUpstream::readRequest(int fd, Millis timeout, std::string* body) {
  setTimeouts(fd, timeout);
  std::string data;
  char tmp[65536];
  size_t head_end = std::string::npos;
  uint64_t need = 0;
  for (;;) {
    if (head_end == std::string::npos) {
      head_end = data.find("\r\n\r\n");
      if (head_end != std::string::npos) {
        std::string lower = toLower(data.substr(0, head_end));
        size_t p = lower.find("\r\ncontent-length:");
        if (p != std::string::npos) need = std::strtoull(lower.c_str() + p + 17, nullptr, 10);
      }
    }
    if (head_end != std::string::npos && data.size() >= head_end + 4 + need) {
      if (body != nullptr) *body = data.substr(head_end + 4, need);
      return data.substr(0, head_end + 4);
    }
    ssize_t n = ::recv(fd, tmp, sizeof(tmp), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return {};
    data.append(tmp, static_cast<size_t>(n));
  }
}

bool ScriptedUpstream::writeAll(int fd, std::string_view data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    off += static_cast<size_t>(n);
  }
  return true;
}

// A refusal made by the proxy itself (SPEC §5): exact status, a JSON body of
// exactly {"error","request_id"}, the id matching X-Request-Id, and nothing
// that identifies the proxy, its version or the backend.
void expectProxyError(const HttpResponse& r, int status, const std::string& code,
                      const std::string& backend_address) {
  EXPECT_EQ(r.status, status);
  EXPECT_EQ(r.header("content-type").value_or(""), "application/json");
  EXPECT_FALSE(r.hasHeader("server"));
  auto id = r.header("x-request-id");
  ASSERT_TRUE(id.has_value());
  EXPECT_TRUE(isRequestId(*id)) << *id;
  auto j = parseJson(r.body);
  ASSERT_TRUE(j.has_value()) << r.body;
  ASSERT_EQ(j->type, JsonValue::Type::kObject) << r.body;
  ASSERT_EQ(j->obj.size(), 2u) << r.body;
  EXPECT_EQ(j->obj[0].first, "error");
  EXPECT_EQ(j->getString("error"), code);
  EXPECT_EQ(j->getString("request_id"), *id);
  for (std::string_view leak : {"portcullis", "0.1.0", "127.0.0.1", "llhttp", "demo"}) {
    EXPECT_EQ(r.body.find(leak), std::string::npos) << "body leaks " << leak << ": " << r.body;
  }
  if (!backend_address.empty()) {
    std::string port = backend_address.substr(backend_address.rfind(':') + 1);
    std::string without_id = r.body;
    if (size_t at = without_id.find(*id); at != std::string::npos) without_id.erase(at, id->size());
    EXPECT_EQ(without_id.find(port), std::string::npos) << r.body;
    for (const auto& [k, v] : r.headers) {
      EXPECT_EQ(v.find(backend_address), std::string::npos) << k << ": " << v;
    }
  }
}

uint64_t DemoBackend::requests() {
  Client c(port_);
  HttpResponse r = c.roundTrip(getRequest("/_requests"));
  return std::strtoull(r.body.c_str(), nullptr, 10);
}

}  // namespace portcullis::e2e

namespace portcullis::e2e {

std::string readHashedResponse(Client& c, HttpResponse& r) {
  Sha256 h;
  ReadOptions ro;
  ro.sink = [&](const char* p, size_t n) { h.update(p, n); };
  if (c.readResponse(r, ro) != ReadResult::kOk) return "";
  return h.hexDigest();
}

double expectBufferedBounded(Proxy& proxy, double bound, uint64_t total, int polls) {
  double peak = 0;
  for (int i = 0; i < polls; ++i) {
    std::this_thread::sleep_for(Millis(250));
    const std::string m = proxy.metricsText();
    std::optional<double> buffered = findMetric(m, "portcullis_buffered_bytes");
    EXPECT_TRUE(buffered.has_value());
    if (!buffered) return peak;
    peak = std::max(peak, *buffered);
    EXPECT_LE(*buffered, bound) << "poll " << i;
    // The proxy really is held back: far less than the body has gone out.
    EXPECT_LT(findMetric(m, "portcullis_sent_bytes_total").value_or(0), static_cast<double>(total / 2));
  }
  return peak;
}

}  // namespace portcullis::e2e

namespace portcullis::e2e {

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < text.size()) {
    size_t nl = text.find('\n', at);
    if (nl == std::string::npos) nl = text.size();
    out.push_back(text.substr(at, nl - at));
    at = nl + 1;
  }
  return out;
}

std::string ctlIssue(const std::string& store, const std::string& account, const std::string& role) {
  const std::string cmd = std::string(PORTCULLISCTL_BIN) + " token issue --store " + store + " --account " + account +
                          " --role " + role + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  char buf[256] = {0};
  std::string out;
  while (p != nullptr && fgets(buf, sizeof(buf), p) != nullptr) out += buf;
  if (p != nullptr) pclose(p);
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace portcullis::e2e
