// Data-driven request corpus (issue 6, SPEC §5): every file under
// tests/e2e/corpus/ is one raw request, sent on a fresh connection to ONE
// proxy whose only upstream counts complete requests. Each case asserts the
// exact status (the proxy's own JSON error for refusals), the close when the
// case requires it, and that a refused request never reached the backend as a
// complete request. The file format is described in corpus/README.md.
//
// Cases marked `known_gap=yes` are still sent, their observed behaviour is
// printed, and the test is skipped; PORTCULLIS_CORPUS_STRICT=1 in the
// environment turns them into ordinary (failing) cases.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/e2e/harness.h"

namespace portcullis::e2e {
namespace {

namespace fs = std::filesystem;

fs::path corpusDir() { return fs::path(__FILE__).parent_path() / "corpus"; }

// ---------------------------------------------------------------------------
// Corpus files

struct CorpusCase {
  std::string name;      // file stem, e.g. "008-cl-te"
  std::string request;   // decoded raw bytes
  int status = 0;
  std::string code;      // proxy error code; "" = derived from status
  bool must_close = false;
  int forwarded = 0;     // complete requests the backend must see
  bool known_gap = false;
  std::string reason;
  std::string error;     // a malformed case file
};
// GoogleTest prints a parameter by name only, not as a byte dump.
void PrintTo(const CorpusCase& c, std::ostream* os) { *os << c.name; }

// Physical newlines are ignored; \r \n \t \v \0 \\ \xHH decode to one byte;
// \*N{text} is `text` (literal, no '}') repeated N times.
std::string decodeRequest(const std::string& text, std::string& error) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    char ch = text[i];
    if (ch == '\n') continue;
    if (ch != '\\') {
      out += ch;
      continue;
    }
    if (++i >= text.size()) {
      error = "dangling backslash";
      return out;
    }
    switch (text[i]) {
      case 'r': out += '\r'; break;
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'v': out += '\v'; break;
      case '0': out += '\0'; break;
      case '\\': out += '\\'; break;
      case 'x': {
        if (i + 2 >= text.size() || !std::isxdigit(static_cast<unsigned char>(text[i + 1])) ||
            !std::isxdigit(static_cast<unsigned char>(text[i + 2]))) {
          error = "bad \\x escape";
          return out;
        }
        out += static_cast<char>(std::stoi(text.substr(i + 1, 2), nullptr, 16));
        i += 2;
        break;
      }
      case '*': {
        size_t open = text.find('{', i);
        size_t close = open == std::string::npos ? open : text.find('}', open);
        if (close == std::string::npos || open == i + 1) {
          error = "bad \\*N{...} escape";
          return out;
        }
        const size_t n = std::stoul(text.substr(i + 1, open - i - 1));
        const std::string unit = text.substr(open + 1, close - open - 1);
        for (size_t k = 0; k < n; ++k) out += unit;
        i = close;
        break;
      }
      default:
        error = std::string("unknown escape \\") + text[i];
        return out;
    }
  }
  return out;
}

std::string readFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// `key=value` tokens separated by whitespace; a value may be "quoted"; `#`
// starts a comment line.
void parseExpect(const std::string& text, CorpusCase& c) {
  bool have_forwarded = false;
  size_t i = 0;
  while (i < text.size()) {
    if (std::isspace(static_cast<unsigned char>(text[i]))) {
      ++i;
      continue;
    }
    if (text[i] == '#') {
      i = text.find('\n', i);
      if (i == std::string::npos) break;
      continue;
    }
    size_t eq = text.find('=', i);
    if (eq == std::string::npos) {
      c.error = "expect: token without '='";
      return;
    }
    const std::string key = text.substr(i, eq - i);
    std::string value;
    i = eq + 1;
    if (i < text.size() && text[i] == '"') {
      size_t end = text.find('"', i + 1);
      if (end == std::string::npos) {
        c.error = "expect: unterminated quote";
        return;
      }
      value = text.substr(i + 1, end - i - 1);
      i = end + 1;
    } else {
      size_t end = i;
      while (end < text.size() && !std::isspace(static_cast<unsigned char>(text[end]))) ++end;
      value = text.substr(i, end - i);
      i = end;
    }
    if (key == "status") {
      c.status = std::atoi(value.c_str());
    } else if (key == "close") {
      if (value != "yes" && value != "any") c.error = "expect: close must be yes or any";
      c.must_close = value == "yes";
    } else if (key == "code") {
      c.code = value;
    } else if (key == "forwarded") {
      c.forwarded = std::atoi(value.c_str());
      have_forwarded = true;
    } else if (key == "known_gap") {
      c.known_gap = value == "yes";
    } else if (key == "reason") {
      c.reason = value;
    } else {
      c.error = "expect: unknown key " + key;
    }
  }
  if (c.status < 100 || c.status > 599) c.error = "expect: missing or bad status";
  if (!have_forwarded) c.forwarded = c.status < 300 ? 1 : 0;
  if (c.code.empty()) {
    switch (c.status) {
      case 400: c.code = "bad_request"; break;
      case 404: c.code = "not_found"; break;
      case 405: c.code = "method_not_allowed"; break;
      case 413: c.code = "payload_too_large"; break;
      case 414: c.code = "uri_too_long"; break;
      case 415: c.code = "unsupported_media_type"; break;
      case 431: c.code = "headers_too_large"; break;
      case 505: c.code = "http_version_not_supported"; break;
      default: break;
    }
  }
}

std::vector<CorpusCase> loadCorpus() {
  std::vector<CorpusCase> cases;
  std::error_code ec;
  if (!fs::is_directory(corpusDir(), ec)) return cases;
  for (const auto& entry : fs::directory_iterator(corpusDir())) {
    if (entry.path().extension() != ".http") continue;
    CorpusCase c;
    c.name = entry.path().stem().string();
    c.request = decodeRequest(readFile(entry.path()), c.error);
    fs::path expect = entry.path();
    expect.replace_extension(".expect");
    if (!fs::exists(expect)) {
      c.error = "missing " + expect.filename().string();
    } else if (c.error.empty()) {
      parseExpect(readFile(expect), c);
    }
    cases.push_back(std::move(c));
  }
  std::sort(cases.begin(), cases.end(), [](const CorpusCase& a, const CorpusCase& b) { return a.name < b.name; });
  return cases;
}

const std::vector<CorpusCase>& corpus() {
  static const std::vector<CorpusCase> cases = loadCorpus();
  return cases;
}

// ---------------------------------------------------------------------------
// An upstream that counts complete requests (Content-Length or chunked bodies
// read to the end) and, separately, request heads. One thread per
// connection, every read bounded.

class CountingUpstream {
 public:
  CountingUpstream() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 ||
        ::listen(listen_fd_, 64) != 0) {
      throw std::runtime_error("counting upstream: bind/listen failed");
    }
    socklen_t len = sizeof(sa);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&sa), &len);
    port_ = ntohs(sa.sin_port);
    accept_thread_ = std::thread([this] { acceptLoop(); });
  }
  ~CountingUpstream() {
    stop_ = true;
    accept_thread_.join();
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
    }
    for (auto& t : conn_threads_) t.join();
    ::close(listen_fd_);
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int complete() const { return complete_.load(); }
  int heads() const { return heads_.load(); }
  std::string lastHead() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_head_;
  }

 private:
  void acceptLoop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      timeval tv{3, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
      std::lock_guard<std::mutex> lock(mu_);
      fds_.push_back(fd);
      conn_threads_.emplace_back([this, fd] {
        serve(fd);
        ::shutdown(fd, SHUT_RDWR);
      });
    }
  }

  // Ensures buf has at least n bytes from pos; false on EOF/timeout/stop.
  bool need(int fd, std::string& buf, size_t n) {
    char tmp[65536];
    while (buf.size() < n) {
      if (stop_) return false;
      ssize_t r = ::recv(fd, tmp, sizeof(tmp), 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
      buf.append(tmp, static_cast<size_t>(r));
    }
    return true;
  }
  // Returns the position of the CRLF ending the line starting at `from`.
  bool line(int fd, std::string& buf, size_t from, size_t& crlf) {
    for (;;) {
      crlf = buf.find("\r\n", from);
      if (crlf != std::string::npos) return true;
      if (buf.size() - from > 1 << 20) return false;
      if (!need(fd, buf, buf.size() + 1)) return false;
    }
  }

  void serve(int fd) {
    std::string buf;
    for (;;) {
      size_t head_end;
      for (;;) {
        head_end = buf.find("\r\n\r\n");
        if (head_end != std::string::npos) break;
        if (!need(fd, buf, buf.size() + 1)) return;
      }
      const std::string head = buf.substr(0, head_end + 4);
      heads_++;
      {
        std::lock_guard<std::mutex> lock(mu_);
        last_head_ = head;
      }
      const std::string lower = toLower(head);
      size_t pos = head_end + 4;
      if (lower.find("\r\ntransfer-encoding:") != std::string::npos) {
        // Chunked: sizes, data, CRLF, then the last chunk and trailers.
        for (;;) {
          size_t crlf;
          if (!line(fd, buf, pos, crlf)) return;
          const std::string size_line = buf.substr(pos, crlf - pos);
          char* end = nullptr;
          const unsigned long long size = std::strtoull(size_line.c_str(), &end, 16);
          if (end == size_line.c_str()) return;  // not a chunk size
          pos = crlf + 2;
          if (size == 0) {
            for (;;) {  // trailers up to the empty line
              if (!line(fd, buf, pos, crlf)) return;
              const bool empty = crlf == pos;
              pos = crlf + 2;
              if (empty) break;
            }
            break;
          }
          if (!need(fd, buf, pos + size + 2)) return;
          if (buf.compare(pos + size, 2, "\r\n") != 0) return;
          pos += size + 2;
        }
      } else if (size_t p = lower.find("\r\ncontent-length:"); p != std::string::npos) {
        const unsigned long long n = std::strtoull(lower.c_str() + p + 17, nullptr, 10);
        if (!need(fd, buf, pos + n)) return;
        pos += n;
      }
      buf.erase(0, pos);
      complete_++;
      const bool head_method = head.rfind("HEAD ", 0) == 0;
      const std::string resp = head_method ? "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
                                           : "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
      if (!ScriptedUpstream::writeAll(fd, resp)) return;
    }
  }

  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> complete_{0};
  std::atomic<int> heads_{0};
  std::mutex mu_;
  std::string last_head_;
  std::vector<int> fds_;
  std::vector<std::thread> conn_threads_;
  std::thread accept_thread_;
};

// ---------------------------------------------------------------------------
// One proxy for the whole corpus.

class CorpusE2E : public ::testing::TestWithParam<CorpusCase> {
 protected:
  static void SetUpTestSuite() {
    accounted_ = 0;
    upstream_ = new CountingUpstream();
    ProxyOptions o = ProxyOptions::forBackend(upstream_->address());
    RouteSpec all;
    all.prefix = "/";
    all.upstream = "app";
    all.auth = false;
    all.max_body_bytes = 64;
    o.routes = {all};
    o.limits = {{"max_uri_bytes", 256}, {"max_headers", 16}, {"max_header_bytes", 2048}};
    proxy_ = new Proxy(o);
  }
  static void TearDownTestSuite() {
    // Every complete request the backend saw must be accounted for by a
    // control (or an observed known gap): catches a refused request that
    // reached the backend after its own case had finished.
    std::this_thread::sleep_for(Millis(100));
    EXPECT_EQ(upstream_->complete(), accounted_)
        << "the backend saw complete requests no case accounts for; last head:\n" << upstream_->lastHead();
    delete proxy_;
    proxy_ = nullptr;
    delete upstream_;
    upstream_ = nullptr;
  }

  static CountingUpstream* upstream_;
  static Proxy* proxy_;
  static int accounted_;  // complete requests the cases expected or observed
};
int CorpusE2E::accounted_ = 0;
CountingUpstream* CorpusE2E::upstream_ = nullptr;
Proxy* CorpusE2E::proxy_ = nullptr;

struct Observed {
  ReadResult read = ReadResult::kTimeout;
  HttpResponse response;
  bool closed = false;
  int complete = 0;  // complete requests the backend saw
  int heads = 0;     // request heads the backend saw
};

Observed sendCase(const CorpusCase& c, uint16_t port, CountingUpstream& up, Millis close_wait = Millis(2000)) {
  Observed o;
  const int complete_before = up.complete();
  const int heads_before = up.heads();
  Client client(port, Millis(3000));
  if (client.send(c.request)) {
    ReadOptions ro;
    ro.head_request = c.request.rfind("HEAD ", 0) == 0;
    o.read = client.readResponse(o.response, ro);
  } else {
    o.read = ReadResult::kClosed;
  }
  if (o.read == ReadResult::kOk && c.must_close) o.closed = client.waitClosed(close_wait);
  // Give a wrongly forwarded request time to show up before counting.
  // (TearDownTestSuite re-checks the total, so a late arrival still fails.)
  const auto deadline = std::chrono::steady_clock::now() + Millis(c.forwarded > 0 ? 1000 : 25);
  while (std::chrono::steady_clock::now() < deadline) {
    if (c.forwarded > 0 && up.complete() - complete_before >= c.forwarded) break;
    std::this_thread::sleep_for(Millis(5));
  }
  o.complete = up.complete() - complete_before;
  o.heads = up.heads() - heads_before;
  return o;
}

std::string describe(const Observed& o) {
  std::ostringstream s;
  s << "read=" << readResultName(o.read) << " status=" << o.response.status;
  if (o.read == ReadResult::kOk) {
    s << " error=" << (o.response.body.size() < 120 ? o.response.body : o.response.body.substr(0, 120) + "...");
    s << " connection=" << o.response.header("connection").value_or("-");
  }
  s << " closed=" << (o.closed ? "yes" : "no/unchecked") << " backend_complete=" << o.complete
    << " backend_heads=" << o.heads;
  return s.str();
}

bool strictMode() {
  const char* v = std::getenv("PORTCULLIS_CORPUS_STRICT");
  return v != nullptr && std::string(v) == "1";
}

TEST_P(CorpusE2E, Case) {
  const CorpusCase& c = GetParam();
  SCOPED_TRACE("corpus case " + c.name);
  ASSERT_TRUE(c.error.empty()) << c.error;

  if (c.known_gap && !strictMode()) {
    // Observe and report, do not assert: the gap is recorded in the .expect.
    Observed o = sendCase(c, proxy_->httpPort(), *upstream_, Millis(200));
    if (o.read == ReadResult::kOk && !c.must_close) o.closed = false;
    std::cout << "[ KNOWN GAP ] " << c.name << " (expected status=" << c.status
              << (c.must_close ? " close" : "") << " forwarded=" << c.forwarded << "): observed " << describe(o)
              << "\n              reason: " << c.reason << std::endl;
    accounted_ += o.complete;
    if (c.forwarded == 0 && o.complete > 0) {
      std::cout << "[ KNOWN GAP ] " << c.name << ": MALFORMED REQUEST REACHED THE BACKEND COMPLETE" << std::endl;
    }
    GTEST_SKIP() << "known gap: " << c.reason;
  }

  Observed o = sendCase(c, proxy_->httpPort(), *upstream_);
  accounted_ += c.forwarded;
  ASSERT_EQ(o.read, ReadResult::kOk) << "no complete response; " << describe(o);
  if (c.status >= 400) {
    expectProxyError(o.response, c.status, c.code, upstream_->address());
  } else {
    EXPECT_EQ(o.response.status, c.status) << describe(o);
  }
  if (c.must_close) {
    EXPECT_EQ(toLower(o.response.header("connection").value_or("")), "close") << describe(o);
    EXPECT_TRUE(o.closed) << "the proxy kept the connection open; " << describe(o);
  }
  if (c.forwarded == 0) {
    EXPECT_EQ(o.complete, 0) << "MALFORMED REQUEST REACHED THE BACKEND; last head seen:\n" << upstream_->lastHead();
  } else {
    EXPECT_EQ(o.complete, c.forwarded) << describe(o);
  }
}

std::string caseName(const ::testing::TestParamInfo<CorpusCase>& info) {
  std::string n;
  for (char ch : info.param.name) n += std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
  return n;
}

INSTANTIATE_TEST_SUITE_P(Corpus, CorpusE2E, ::testing::ValuesIn(corpus()), caseName);

// The corpus itself: present, large enough, every case well formed.
TEST(CorpusFiles, CorpusIsCompleteAndWellFormed) {
  const auto& cases = corpus();
  EXPECT_GE(cases.size(), 60u) << "corpus directory " << corpusDir();
  int refusals = 0, controls = 0, gaps = 0;
  for (const CorpusCase& c : cases) {
    EXPECT_TRUE(c.error.empty()) << c.name << ": " << c.error;
    EXPECT_FALSE(c.request.empty()) << c.name;
    if (c.status >= 400) ++refusals; else ++controls;
    if (c.known_gap) {
      ++gaps;
      EXPECT_FALSE(c.reason.empty()) << c.name << ": a known gap needs a reason";
    }
  }
  EXPECT_GE(controls, 3);
  std::cout << "[ CORPUS ] " << cases.size() << " cases: " << refusals << " refusals, " << controls
            << " controls, " << gaps << " known gaps" << std::endl;
}

}  // namespace
}  // namespace portcullis::e2e
