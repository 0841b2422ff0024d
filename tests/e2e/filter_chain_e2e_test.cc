// The filter chain inside the real proxy: an in-process Server (no signal
// handlers) with test filters appended through ServerOptions.extra_filters, in
// front of a tiny blocking HTTP/1.1 upstream run by the test itself. Clients
// are raw blocking sockets with receive timeouts, so nothing can hang.
//
// Test filters, in chain order:
//   test_pause  pauses a request carrying "X-Test-Pause: 1" and resumes it
//               from a uv timer on the worker's loop (ctx.loop) ~50 ms later
//   test_deny   answers 403 forbidden for paths starting with "/deny"
//   test_stamp  adds "X-Test-Filter: stamped" to every response head
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "filters/filter.h"
#include "proxy/server.h"

namespace portcullis {
namespace {

// ---------------------------------------------------------------------------
// Test filters

struct Counters {
  std::atomic<int> created{0};
  std::atomic<int> completed{0};
  std::atomic<int> destroyed{0};
  std::atomic<int> paused{0};
  std::atomic<int> resumed{0};
  std::atomic<int> denied{0};
  std::atomic<int> stamped{0};
};

// Base that counts lifetimes, so the test can check every filter object of
// every request completed once and was destroyed.
class CountedFilter : public Filter {
 public:
  explicit CountedFilter(Counters* c) : counters_(c) { counters_->created++; }
  ~CountedFilter() override { counters_->destroyed++; }
  void onComplete(const RequestContext&) override {
    EXPECT_FALSE(completed_) << "onComplete called twice";
    completed_ = true;
    counters_->completed++;
  }

 protected:
  Counters* counters_;
  bool completed_ = false;
};

class PauseFilter;

// Heap-allocated: a uv handle must stay valid until its close callback, which
// may run after the request (and its arena) are gone.
struct PauseTimer {
  uv_timer_t timer;
  PauseFilter* filter = nullptr;  // null once the filter is destroyed
  RequestContext* ctx = nullptr;
};

class PauseFilter : public CountedFilter {
 public:
  using CountedFilter::CountedFilter;
  ~PauseFilter() override {
    if (timer_ != nullptr) {
      // The request ended while paused: the timer must not resume it.
      timer_->filter = nullptr;
      closeTimer(timer_);
    }
  }

  FilterStatus onRequestHead(RequestContext& ctx, RequestHead& head) override {
    const Header* h = head.findByName("X-Test-Pause");
    if (h == nullptr || h->value != "1") return FilterStatus::kContinue;
    if (ctx.loop == nullptr) {
      ADD_FAILURE() << "RequestContext::loop is not set by the proxy";
      return FilterStatus::kContinue;
    }
    timer_ = new PauseTimer;
    timer_->filter = this;
    timer_->ctx = &ctx;
    uv_timer_init(ctx.loop, &timer_->timer);
    timer_->timer.data = timer_;
    uv_timer_start(&timer_->timer, &PauseFilter::onTimer, 50, 0);
    counters_->paused++;
    return FilterStatus::kPause;
  }

 private:
  static void closeTimer(PauseTimer* t) {
    uv_timer_stop(&t->timer);
    uv_close(reinterpret_cast<uv_handle_t*>(&t->timer),
             [](uv_handle_t* h) { delete static_cast<PauseTimer*>(h->data); });
  }

  static void onTimer(uv_timer_t* handle) {
    auto* t = static_cast<PauseTimer*>(handle->data);
    PauseFilter* f = t->filter;
    RequestContext* ctx = t->ctx;
    closeTimer(t);
    if (f == nullptr) return;
    // Detach first: resume() runs the rest of the request synchronously and
    // may complete it, destroying this filter.
    f->timer_ = nullptr;
    f->counters_->resumed++;
    ctx->resume();
  }

  PauseTimer* timer_ = nullptr;
};

class DenyFilter : public CountedFilter {
 public:
  using CountedFilter::CountedFilter;
  FilterStatus onRequestHead(RequestContext& ctx, RequestHead& head) override {
    if (head.path.substr(0, 5) != "/deny") return FilterStatus::kContinue;
    counters_->denied++;
    ctx.respond(403, "forbidden", {}, "path denied by test");
    return FilterStatus::kRespond;
  }
};

class StampFilter : public CountedFilter {
 public:
  using CountedFilter::CountedFilter;
  void onResponseHead(RequestContext&, ResponseHead& head) override {
    counters_->stamped++;
    head.add("X-Test-Filter", "stamped");
  }
};

template <typename F>
class Factory : public FilterFactory {
 public:
  Factory(std::string name, std::shared_ptr<Counters> counters) : name_(std::move(name)), counters_(std::move(counters)) {}
  std::string_view name() const override { return name_; }
  Filter* create(RequestContext& ctx) const override { return ctx.arena().make<F>(counters_.get()); }

 private:
  std::string name_;
  std::shared_ptr<Counters> counters_;
};

// ---------------------------------------------------------------------------
// Sockets

void setTimeouts(int fd, int seconds) {
  timeval tv{seconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

bool sendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

struct Message {
  std::string start_line;  // request line or status line
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string head;                            // raw, without the final CRLF CRLF
  std::string body;
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
  bool has(const std::string& name) const { return headers.count(name) != 0; }
};

// Reads one Content-Length-framed message (or a head-only one) from `fd`;
// `pending` holds bytes read beyond the previous message. False on timeout,
// EOF or a malformed head.
bool readMessage(int fd, std::string& pending, Message& out, bool is_response) {
  out = Message{};
  size_t end;
  while ((end = pending.find("\r\n\r\n")) == std::string::npos) {
    char buf[8192];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return false;
    pending.append(buf, static_cast<size_t>(n));
  }
  out.head = pending.substr(0, end);
  pending.erase(0, end + 4);
  std::istringstream lines(out.head);
  std::string line;
  std::getline(lines, line);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  out.start_line = line;
  if (is_response) {
    if (line.size() < 12 || line.compare(0, 9, "HTTP/1.1 ") != 0) return false;
    out.status = std::atoi(line.c_str() + 9);
  }
  while (std::getline(lines, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    size_t colon = line.find(':');
    if (colon == std::string::npos) return false;
    std::string value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.erase(0, 1);
    out.headers[lower(line.substr(0, colon))] = value;
  }
  size_t length = out.has("content-length") ? std::strtoul(out.header("content-length").c_str(), nullptr, 10) : 0;
  while (pending.size() < length) {
    char buf[8192];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return false;
    pending.append(buf, static_cast<size_t>(n));
  }
  out.body = pending.substr(0, length);
  pending.erase(0, length);
  return true;
}

// True when the peer closed the connection (EOF or reset) within the timeout.
bool peerCloses(int fd) {
  char c;
  ssize_t n = ::recv(fd, &c, 1, 0);
  return n == 0 || (n < 0 && errno == ECONNRESET);
}

bool isRequestId(const std::string& s) {
  if (s.size() != 32) return false;
  for (char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c)) || std::isupper(static_cast<unsigned char>(c))) return false;
  return true;
}

class Client {
 public:
  explicit Client(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    setTimeouts(fd_, 5);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  ~Client() { close(); }
  bool connected() const { return connected_; }
  bool send(std::string_view data) { return sendAll(fd_, data); }
  bool read(Message& m) { return readMessage(fd_, pending_, m, true); }
  bool closedByPeer() { return pending_.empty() && peerCloses(fd_); }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  std::string pending_;
};

// ---------------------------------------------------------------------------
// The upstream: one thread per connection, keep-alive, answers 200 with
// "upstream:<target>". "/split-head" sends its response head in two writes.

class TinyUpstream {
 public:
  TinyUpstream() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listen_fd_, 64) != 0) {
      ADD_FAILURE() << "upstream bind/listen: " << std::strerror(errno);
      return;
    }
    socklen_t len = sizeof a;
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { acceptLoop(); });
  }

  ~TinyUpstream() {
    stop_ = true;
    if (acceptor_.joinable()) acceptor_.join();
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int fd : conns_) ::shutdown(fd, SHUT_RDWR);
    }
    for (std::thread& t : workers_) t.join();
    for (int fd : conns_) ::close(fd);
    ::close(listen_fd_);
  }

  uint16_t port() const { return port_; }
  int requests() const { return requests_.load(); }
  std::vector<Message> seen() const {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }

 private:
  void acceptLoop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      setTimeouts(fd, 10);
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      std::lock_guard<std::mutex> lock(mu_);
      conns_.push_back(fd);
      workers_.emplace_back([this, fd] { serve(fd); });
    }
  }

  void serve(int fd) {
    std::string pending;
    Message req;
    while (!stop_ && readMessage(fd, pending, req, false)) {
      requests_++;
      {
        std::lock_guard<std::mutex> lock(mu_);
        seen_.push_back(req);
      }
      std::string target = req.start_line.substr(req.start_line.find(' ') + 1);
      target = target.substr(0, target.find(' '));
      const std::string body = "upstream:" + target;
      const std::string head = "HTTP/1.1 200 OK\r\nServer: tiny/1.0\r\nX-Upstream-First: first-value-abcdefgh\r\n"
                               "Content-Type: text/plain\r\nContent-Length: " +
                               std::to_string(body.size()) + "\r\nX-Upstream-Last: last-value\r\n\r\n";
      if (target == "/split-head") {
        // Cut inside a header name; the proxy reads the two halves apart.
        const size_t cut = head.find("Content-Type") + 7;
        if (!sendAll(fd, head.substr(0, cut))) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        if (!sendAll(fd, head.substr(cut) + body)) break;
      } else if (!sendAll(fd, head + body)) {
        break;
      }
    }
  }

  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> requests_{0};
  std::thread acceptor_;
  mutable std::mutex mu_;
  std::vector<int> conns_;
  std::vector<std::thread> workers_;
  std::vector<Message> seen_;
};

// ---------------------------------------------------------------------------

class FilterChainE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/pc-filter-e2e-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    upstream_ = std::make_unique<TinyUpstream>();
    ASSERT_NE(upstream_->port(), 0);
    const std::string config = dir_ + "/portcullis.toml";
    std::ofstream(config) << "[server]\n"
                          << "workers = 1\n"
                          << "listen_http = \"127.0.0.1:0\"\n"
                          << "admin_listen = \"127.0.0.1:0\"\n"
                          << "state_dir = \"" << dir_ << "/state\"\n"
                          << "shutdown_grace_ms = 3000\n"
                          << "[https]\n"
                          << "plaintext = \"allow\"\n"
                          << "[log]\n"
                          << "access = \"" << dir_ << "/access.log\"\n"
                          << "[[upstream]]\n"
                          << "name = \"tiny\"\n"
                          << "servers = [\"127.0.0.1:" << upstream_->port() << "\"]\n"
                          << "[[route]]\n"
                          << "prefix = \"/\"\n"
                          << "upstream = \"tiny\"\n"
                          << "auth = false\n";
    ServerOptions opts;
    opts.config_path = config;
    opts.handle_signals = false;
    opts.extra_filters = {std::make_shared<Factory<PauseFilter>>("test_pause", counters_),
                          std::make_shared<Factory<DenyFilter>>("test_deny", counters_),
                          std::make_shared<Factory<StampFilter>>("test_stamp", counters_)};
    server_ = std::make_unique<Server>(std::move(opts));
    thread_ = std::thread([this] { exit_code_ = server_->run(); });
    ASSERT_TRUE(server_->waitReady());
    port_ = server_->httpPort();
    ASSERT_NE(port_, 0);
  }

  void TearDown() override {
    stopServer();
    upstream_.reset();
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  // Drains the proxy; afterwards every filter object has been completed and
  // destroyed, and the access log is on disk.
  void stopServer() {
    if (server_ == nullptr) return;
    server_->requestShutdown();
    if (thread_.joinable()) thread_.join();
    server_.reset();
    EXPECT_EQ(exit_code_, 0);
    EXPECT_EQ(counters_->completed.load(), counters_->created.load());
    EXPECT_EQ(counters_->destroyed.load(), counters_->created.load());
  }

  std::string accessLog() const {
    std::ifstream in(dir_ + "/access.log");
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

  std::string dir_;
  std::unique_ptr<TinyUpstream> upstream_;
  std::shared_ptr<Counters> counters_ = std::make_shared<Counters>();
  std::unique_ptr<Server> server_;
  std::thread thread_;
  int exit_code_ = -1;
  uint16_t port_ = 0;
};

TEST_F(FilterChainE2E, FilterReplyIsLocalAndTheUpstreamSeesNothing) {
  Client c(port_);
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send("GET /deny/secret?x=1 HTTP/1.1\r\nHost: t\r\n\r\n"));
  Message m;
  ASSERT_TRUE(c.read(m));
  EXPECT_EQ(m.status, 403);
  const std::string id = m.header("x-request-id");
  EXPECT_TRUE(isRequestId(id)) << id;
  EXPECT_EQ(m.body, "{\"error\":\"forbidden\",\"request_id\":\"" + id + "\"}");
  EXPECT_EQ(m.header("content-type"), "application/json");
  EXPECT_EQ(m.header("x-test-filter"), "stamped") << "onResponseHead runs for local replies";
  EXPECT_FALSE(m.has("server"));
  EXPECT_NE(lower(m.header("connection")), "close") << "a body-less request keeps its connection";
  EXPECT_EQ(upstream_->requests(), 0);

  // The same connection goes on to the upstream.
  ASSERT_TRUE(c.send("GET /ok HTTP/1.1\r\nHost: t\r\n\r\n"));
  ASSERT_TRUE(c.read(m));
  EXPECT_EQ(m.status, 200);
  EXPECT_EQ(m.body, "upstream:/ok");
  EXPECT_EQ(m.header("x-test-filter"), "stamped") << "onResponseHead runs for upstream replies";
  EXPECT_TRUE(isRequestId(m.header("x-request-id")));
  EXPECT_NE(m.header("x-request-id"), id);
  EXPECT_FALSE(m.has("server")) << "the upstream's Server header is not forwarded";
  EXPECT_EQ(upstream_->requests(), 1);

  // A refused request with a body: answered, then the connection is closed
  // (the unread body cannot be skipped safely), and still nothing upstream.
  ASSERT_TRUE(c.send("POST /deny/upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"));
  ASSERT_TRUE(c.read(m));
  EXPECT_EQ(m.status, 403);
  EXPECT_EQ(m.body, "{\"error\":\"forbidden\",\"request_id\":\"" + m.header("x-request-id") + "\"}");
  EXPECT_EQ(lower(m.header("connection")), "close");
  EXPECT_TRUE(c.closedByPeer());
  EXPECT_EQ(upstream_->requests(), 1);
  for (const Message& r : upstream_->seen()) EXPECT_EQ(r.start_line.find("/deny"), std::string::npos) << r.head;
  EXPECT_EQ(counters_->denied.load(), 2);

  stopServer();
  const std::string log = accessLog();
  size_t line = log.find("\"path\":\"/deny/secret\"");
  ASSERT_NE(line, std::string::npos) << log;
  const std::string entry = log.substr(log.rfind('\n', line) + 1, log.find('\n', line) - log.rfind('\n', line));
  EXPECT_NE(entry.find("\"status\":403"), std::string::npos) << entry;
  EXPECT_NE(entry.find("\"rejected_by\":\"test_deny\""), std::string::npos) << entry;
  EXPECT_NE(entry.find("\"upstream\":null"), std::string::npos) << entry;
  EXPECT_NE(entry.find("\"request_id\":\"" + id + "\""), std::string::npos) << entry;
}

TEST_F(FilterChainE2E, PausedRequestResumesFromATimerAndReachesTheUpstream) {
  Client c(port_);
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send("GET /slow HTTP/1.1\r\nHost: t\r\nX-Test-Pause: 1\r\n\r\n"));
  Message m;
  ASSERT_TRUE(c.read(m));
  EXPECT_EQ(m.status, 200);
  EXPECT_EQ(m.body, "upstream:/slow");
  EXPECT_EQ(m.header("x-test-filter"), "stamped");
  EXPECT_EQ(counters_->paused.load(), 1);
  EXPECT_EQ(counters_->resumed.load(), 1);
  ASSERT_EQ(upstream_->requests(), 1);
  const Message up = upstream_->seen()[0];
  EXPECT_EQ(up.header("x-request-id"), m.header("x-request-id")) << up.head;

  // Pipelined behind a paused request: answered after it, in order.
  ASSERT_TRUE(c.send("GET /p1 HTTP/1.1\r\nHost: t\r\nX-Test-Pause: 1\r\n\r\n"
                     "GET /p2 HTTP/1.1\r\nHost: t\r\n\r\n"));
  ASSERT_TRUE(c.read(m));
  EXPECT_EQ(m.status, 200);
  EXPECT_EQ(m.body, "upstream:/p1");
  ASSERT_TRUE(c.read(m));
  EXPECT_EQ(m.status, 200);
  EXPECT_EQ(m.body, "upstream:/p2");
  EXPECT_EQ(counters_->paused.load(), 2);
  EXPECT_EQ(counters_->resumed.load(), 2);

  // Filters after the pausing one still run after the resume: deny refuses.
  const int before = upstream_->requests();
  ASSERT_TRUE(c.send("GET /deny/later HTTP/1.1\r\nHost: t\r\nX-Test-Pause: 1\r\n\r\n"));
  ASSERT_TRUE(c.read(m));
  EXPECT_EQ(m.status, 403);
  EXPECT_EQ(m.body, "{\"error\":\"forbidden\",\"request_id\":\"" + m.header("x-request-id") + "\"}");
  EXPECT_EQ(m.header("x-test-filter"), "stamped");
  EXPECT_EQ(counters_->resumed.load(), 3);
  EXPECT_EQ(upstream_->requests(), before);

  // The connection is still good.
  ASSERT_TRUE(c.send("GET /after HTTP/1.1\r\nHost: t\r\n\r\n"));
  ASSERT_TRUE(c.read(m));
  EXPECT_EQ(m.body, "upstream:/after");
}

TEST_F(FilterChainE2E, ClientGoneWhilePausedEndsTheRequestCleanly) {
  {
    Client c(port_);
    ASSERT_TRUE(c.connected());
    ASSERT_TRUE(c.send("GET /abandoned HTTP/1.1\r\nHost: t\r\nX-Test-Pause: 1\r\n\r\n"));
  }  // closed while (most likely) paused
  // Whichever comes first, the close or the timer, the proxy stays healthy
  // and the paused filter is completed and destroyed exactly once.
  Client c(port_);
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send("GET /next HTTP/1.1\r\nHost: t\r\nX-Test-Pause: 1\r\n\r\n"));
  Message m;
  ASSERT_TRUE(c.read(m));
  EXPECT_EQ(m.status, 200);
  EXPECT_EQ(m.body, "upstream:/next");
  EXPECT_EQ(counters_->paused.load(), 2);
  stopServer();  // checks completed == destroyed == created
}

// DISABLED: fails today. Connection::parseResponse() resets the upstream read
// buffer (b.start = b.end = 0) whenever everything read has been parsed, also
// while the response head is still incomplete; the next read then overwrites
// the bytes that the already parsed status line and header views point to,
// and the client receives a garbled head. Enable with the fix (keep the
// buffer while resp_state_ == RespState::kHead).
TEST_F(FilterChainE2E, UpstreamResponseHeadSplitAcrossReads) {
  Client c(port_);
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send("GET /split-head HTTP/1.1\r\nHost: t\r\n\r\n"));
  Message m;
  ASSERT_TRUE(c.read(m)) << m.head;
  EXPECT_EQ(m.start_line, "HTTP/1.1 200 OK");
  EXPECT_EQ(m.header("x-upstream-first"), "first-value-abcdefgh") << m.head;
  EXPECT_EQ(m.header("content-type"), "text/plain") << m.head;
  EXPECT_EQ(m.header("x-upstream-last"), "last-value") << m.head;
  EXPECT_EQ(m.header("x-test-filter"), "stamped");
  EXPECT_EQ(m.body, "upstream:/split-head");
}

}  // namespace
}  // namespace portcullis
