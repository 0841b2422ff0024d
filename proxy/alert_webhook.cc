#include "proxy/alert_webhook.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <charconv>
#include <chrono>

#include "proxy/headers.h"  // equalsIgnoreCase, headerListContains

namespace portcullis {

namespace {

// The thread re-checks its queue this often even without a wake (a safety net;
// post() always wakes an idle thread).
constexpr long kIdleWakeNs = 500L * 1000 * 1000;
// Bounds on what the collector may send back; the body is read and discarded.
constexpr size_t kMaxResponseHead = 16 * 1024;
constexpr size_t kMaxChunkLine = 1024;

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool parseWebhookUrl(const std::string& url, SinkEndpoint& ep, std::string& path,
                     std::string& error) {
  constexpr std::string_view kHttp = "http://";
  std::string_view u = url;
  for (char c : u) {
    if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7F) {
      error = "webhook URL must not contain spaces, control characters or non-ASCII bytes";
      return false;
    }
  }
  if (u.size() >= 8 && equalsIgnoreCase(u.substr(0, 8), "https://")) {
    error = "webhook URL: https:// is not supported yet (no TLS to the collector); "
            "use http:// to an internal collector";
    return false;
  }
  if (u.size() < kHttp.size() || !equalsIgnoreCase(u.substr(0, kHttp.size()), kHttp)) {
    error = "webhook URL must start with http:// (got \"" + url + "\")";
    return false;
  }
  u.remove_prefix(kHttp.size());
  if (u.find('#') != std::string_view::npos) {
    error = "webhook URL must not contain a fragment ('#')";
    return false;
  }
  const size_t slash = u.find_first_of("/?");
  const std::string_view authority = u.substr(0, slash);
  if (authority.find('@') != std::string_view::npos) {
    error = "webhook URL must not contain user info ('@')";
    return false;
  }
  std::string host_error;
  if (!parseSinkHostPort(authority, 80, ep, host_error)) {
    error = "webhook URL: " + host_error;
    return false;
  }
  path = slash == std::string_view::npos ? "/" : std::string(u.substr(slash));
  if (path.front() == '?') path.insert(0, "/");
  return true;
}

}  // namespace

AlertWebhook::AlertWebhook(const Options& options)
    : options_(options), queue_(options.capacity) {}

AlertWebhook::~AlertWebhook() { stop(); }

bool AlertWebhook::start(const std::string& url, std::string& error) {
  if (url.empty()) {
    return worker_.start("alert webhook", "", error, [this](std::string&) {
      disabled_.store(true, std::memory_order_relaxed);
      for (std::string body; queue_.tryPop(body);) {
      }
      return true;
    }, nullptr);
  }
  return worker_.start(
      "alert webhook", "pc-webhook", error,
      [&](std::string& err) { return parseWebhookUrl(url, endpoint_, path_, err); },
      [this] { run(); });
}

bool AlertWebhook::post(std::string&& json_body) {
  if (disabled_.load(std::memory_order_relaxed)) return true;
  if (!worker_.accepting() || !queue_.tryPush(std::move(json_body))) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  worker_.wake();
  return true;
}

void AlertWebhook::stop() {
  worker_.stop([this] {
    // Whatever is still queued (including a post() that raced with stop()) is
    // abandoned; a disabled webhook never counts.
    for (std::string body; queue_.tryPop(body);) {
      if (!disabled_.load(std::memory_order_relaxed)) {
        dropped_.fetch_add(1, std::memory_order_relaxed);
      }
    }
    closeConnection();
  });
}

void AlertWebhook::run() {
  std::string body;
  while (!worker_.stopping()) {
    if (queue_.tryPop(body)) {
      deliver(body);
      std::string().swap(body);
      continue;
    }
    worker_.idle([this] { return queue_.frontReady(); }, kIdleWakeNs);
  }
}

void AlertWebhook::deliver(const std::string& body) {
  Backoff backoff;
  for (int attempt = 1;; ++attempt) {
    const Attempt a = postOnce(body);
    if (a == Attempt::kDelivered) {
      sent_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (a == Attempt::kStopped) break;
    if (attempt >= options_.max_attempts) {
      failed_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (!sleepUnlessStopped(worker_.stopSignal(), backoff.next())) break;
    retries_.fetch_add(1, std::memory_order_relaxed);
  }
  dropped_.fetch_add(1, std::memory_order_relaxed);  // abandoned by stop()
}

AlertWebhook::Attempt AlertWebhook::postOnce(const std::string& body) {
  std::string request;
  request.reserve(256 + body.size());
  request += "POST ";
  request += path_;
  request += " HTTP/1.1\r\nHost: ";
  request += endpoint_.authority;
  request += "\r\nUser-Agent: portcullis\r\nContent-Type: application/json\r\nContent-Length: ";
  request += std::to_string(body.size());
  request += "\r\nConnection: keep-alive\r\n\r\n";
  request += body;

  bool reused = fd_ >= 0;
  for (;;) {
    if (fd_ < 0) {
      SinkIo r;
      fd_ = connectSink(endpoint_, worker_.stopSignal(), options_.io_timeout_ms, r);
      if (fd_ < 0) return r == SinkIo::kStopped ? Attempt::kStopped : Attempt::kFailed;
      rbuf_.clear();
    }
    int status = 0;
    bool keep_alive = false;
    bool responded = false;
    const SinkIo r = exchange(request, status, keep_alive, responded);
    if (r == SinkIo::kStopped) return Attempt::kStopped;
    if (r != SinkIo::kOk) {
      closeConnection();
      // A kept-alive connection the collector closed while idle: try once on a
      // fresh one without counting an attempt.
      if (reused && !responded && r == SinkIo::kError) {
        reused = false;
        continue;
      }
      return Attempt::kFailed;
    }
    if (!keep_alive || !rbuf_.empty()) closeConnection();
    return status >= 200 && status <= 299 ? Attempt::kDelivered : Attempt::kFailed;
  }
}

SinkIo AlertWebhook::exchange(const std::string& request, int& status, bool& keep_alive,
                              bool& responded) {
  SinkIo r = sendAll(fd_, request, worker_.stopSignal(), options_.io_timeout_ms);
  if (r != SinkIo::kOk) return r;
  for (;;) {
    size_t head_end;
    while ((head_end = rbuf_.find("\r\n\r\n")) == std::string::npos) {
      if (rbuf_.size() > kMaxResponseHead) return SinkIo::kError;
      if ((r = readMore()) != SinkIo::kOk) return r;
      responded = true;
    }
    const std::string head = rbuf_.substr(0, head_end + 2);
    rbuf_.erase(0, head_end + 4);

    // Status line: HTTP/1.x SP 3DIGIT [SP reason]
    std::string_view h = head;
    const size_t eol = h.find("\r\n");
    const std::string_view status_line = h.substr(0, eol);
    if (status_line.size() < 12 || status_line.substr(0, 7) != "HTTP/1." ||
        status_line[8] != ' ') {
      return SinkIo::kError;
    }
    const bool http11 = status_line[7] == '1';
    auto [p, ec] = std::from_chars(status_line.data() + 9, status_line.data() + 12, status);
    if (ec != std::errc() || p != status_line.data() + 12 || status < 100 || status > 599) {
      return SinkIo::kError;
    }
    keep_alive = http11;
    bool chunked = false;
    bool has_length = false;
    size_t length = 0;
    h.remove_prefix(eol + 2);
    while (!h.empty()) {
      const size_t e = h.find("\r\n");
      const std::string_view line = h.substr(0, e);
      h.remove_prefix(e == std::string_view::npos ? h.size() : e + 2);
      const size_t colon = line.find(':');
      if (colon == std::string_view::npos) return SinkIo::kError;
      const std::string_view name = line.substr(0, colon);
      const std::string_view value = trim(line.substr(colon + 1));
      if (equalsIgnoreCase(name, "content-length")) {
        auto [vp, vec] = std::from_chars(value.data(), value.data() + value.size(), length);
        if (value.empty() || vec != std::errc() || vp != value.data() + value.size()) {
          return SinkIo::kError;
        }
        has_length = true;
      } else if (equalsIgnoreCase(name, "transfer-encoding")) {
        chunked = headerListContains(value, "chunked");
      } else if (equalsIgnoreCase(name, "connection")) {
        if (headerListContains(value, "close")) keep_alive = false;
        if (headerListContains(value, "keep-alive")) keep_alive = keep_alive || !http11;
      }
    }
    if (status < 200) continue;  // 1xx interim response: the final one follows
    if (status == 204 || status == 304) return SinkIo::kOk;
    if (chunked) {
      for (;;) {
        std::string line;
        if ((r = readLine(line)) != SinkIo::kOk) return r;
        size_t size = 0;
        const std::string_view hex = trim(std::string_view(line).substr(0, line.find(';')));
        auto [cp, cec] = std::from_chars(hex.data(), hex.data() + hex.size(), size, 16);
        if (hex.empty() || cec != std::errc() || cp != hex.data() + hex.size()) {
          return SinkIo::kError;
        }
        if (size == 0) break;
        if ((r = skipBody(size)) != SinkIo::kOk) return r;
        if ((r = readLine(line)) != SinkIo::kOk) return r;
        if (!line.empty()) return SinkIo::kError;
      }
      for (;;) {  // trailer section, ended by an empty line
        std::string line;
        if ((r = readLine(line)) != SinkIo::kOk) return r;
        if (line.empty()) return SinkIo::kOk;
      }
    }
    if (has_length) return skipBody(length);
    // No framing: the body runs to the end of the connection.
    keep_alive = false;
    for (;;) {
      rbuf_.clear();
      r = readMore();
      if (r == SinkIo::kError) return SinkIo::kOk;  // orderly EOF or reset ends the body
      if (r != SinkIo::kOk) return r;
    }
  }
}

// Appends what the socket has to rbuf_, waiting up to the I/O timeout. End of
// stream is kError: every caller needs more bytes than it has.
SinkIo AlertWebhook::readMore() {
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n > 0) {
      rbuf_.append(buf, static_cast<size_t>(n));
      return SinkIo::kOk;
    }
    if (n == 0) return SinkIo::kError;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return SinkIo::kError;
    const SinkIo r = waitFd(fd_, POLLIN, worker_.stopSignal(), options_.io_timeout_ms);
    if (r != SinkIo::kOk) return r;
  }
}

SinkIo AlertWebhook::skipBody(size_t n) {
  for (;;) {
    const size_t take = n < rbuf_.size() ? n : rbuf_.size();
    rbuf_.erase(0, take);
    n -= take;
    if (n == 0) return SinkIo::kOk;
    const SinkIo r = readMore();
    if (r != SinkIo::kOk) return r;
  }
}

SinkIo AlertWebhook::readLine(std::string& line) {
  size_t eol;
  while ((eol = rbuf_.find("\r\n")) == std::string::npos) {
    if (rbuf_.size() > kMaxChunkLine) return SinkIo::kError;
    const SinkIo r = readMore();
    if (r != SinkIo::kOk) return r;
  }
  line.assign(rbuf_, 0, eol);
  rbuf_.erase(0, eol + 2);
  return SinkIo::kOk;
}

void AlertWebhook::closeConnection() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  rbuf_.clear();
}

}  // namespace portcullis
