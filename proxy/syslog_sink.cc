#include "proxy/syslog_sink.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "proxy/access_log.h"  // appendRfc3339Micros

namespace portcullis {

namespace {

constexpr long kIdleWakeNs = 20L * 1000 * 1000;
constexpr size_t kWakeEvery = 64;
constexpr size_t kMaxMsgidLen = 32;    // RFC 5424 MSGID = NILVALUE / 1*32PRINTUSASCII
constexpr size_t kMaxHostnameLen = 255;
// Frames taken from the queue at a time; the rest wait in the queue, where the
// queue bound applies while the collector is away.
constexpr size_t kMaxPending = 256;
constexpr int kMaxIov = 64;

bool printUsAscii(char c) { return c >= 33 && c <= 126; }

}  // namespace

SyslogSink::SyslogSink(const Options& options) : options_(options), queue_(options.capacity) {}

SyslogSink::~SyslogSink() { stop(); }

bool SyslogSink::start(const std::string& url, std::string hostname_or_dash, std::string& error) {
  return worker_.start(
      "syslog sink", "pc-syslog", error,
      [&](std::string& err) { return configure(url, std::move(hostname_or_dash), err); },
      [this] { run(); });
}

bool SyslogSink::configure(const std::string& url, std::string hostname, std::string& error) {
  constexpr std::string_view kTcp = "tcp://";
  if (url.compare(0, kTcp.size(), kTcp) != 0) {
    error = "syslog URL must be tcp://host:port (got \"" + url + "\")";
    return false;
  }
  const std::string_view hostport = std::string_view(url).substr(kTcp.size());
  for (char c : hostport) {
    if (!printUsAscii(c) || c == '/' || c == '@' || c == '?' || c == '#') {
      error = "syslog URL must be tcp://host:port with nothing after the port";
      return false;
    }
  }
  std::string host_error;
  if (!parseSinkHostPort(hostport, 0, endpoint_, host_error)) {
    error = "syslog URL: " + host_error;
    return false;
  }
  if (hostname.empty()) hostname = "-";
  if (hostname.size() > kMaxHostnameLen) {
    error = "syslog hostname longer than 255 characters";
    return false;
  }
  for (char c : hostname) {
    if (!printUsAscii(c)) {
      error = "syslog hostname must be printable US-ASCII without spaces";
      return false;
    }
  }
  hostname_ = std::move(hostname);
  procid_ = std::to_string(::getpid());
  return true;
}

bool SyslogSink::send(std::string_view msgid, std::string_view json_line, Severity severity) {
  if (!worker_.accepting()) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  if (msgid.size() > kMaxMsgidLen) msgid = msgid.substr(0, kMaxMsgidLen);
  if (!json_line.empty() && json_line.back() == '\n') json_line.remove_suffix(1);
  if (!json_line.empty() && json_line.back() == '\r') json_line.remove_suffix(1);
  Item item;
  item.ts_unix_us = sinkNowUnixMicros();
  item.severity = severity;
  item.msgid_len = static_cast<uint8_t>(msgid.size());
  item.text.reserve(msgid.size() + json_line.size());
  item.text.append(msgid);
  item.text.append(json_line);
  size_t pos = 0;
  if (!queue_.tryPush(std::move(item), &pos)) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  if (severity == Severity::kWarning || pos % kWakeEvery == kWakeEvery - 1) worker_.wake();
  return true;
}

void SyslogSink::stop() {
  worker_.stop([this] {
    dropped_.fetch_add(pending_.size(), std::memory_order_relaxed);
    pending_.clear();
    for (Item item; queue_.tryPop(item);) dropped_.fetch_add(1, std::memory_order_relaxed);
    closeConnection();
  });
}

void SyslogSink::formatFrame(const Item& item, std::string& out) const {
  const std::string_view text = item.text;
  const std::string_view msgid = text.substr(0, item.msgid_len);
  const std::string_view msg = text.substr(item.msgid_len);
  std::string m;
  m.reserve(64 + hostname_.size() + msgid.size() + msg.size());
  m += '<';
  m += std::to_string(kFacilityAuthpriv * 8 + static_cast<int>(item.severity));
  m += ">1 ";
  appendRfc3339Micros(item.ts_unix_us, m);
  m += ' ';
  m += hostname_;
  m += " portcullis ";
  m += procid_;
  m += ' ';
  if (msgid.empty()) {
    m += '-';
  } else {
    for (char c : msgid) m += printUsAscii(c) ? c : '_';
  }
  m += " - ";
  m += msg;
  out = std::to_string(m.size());
  out += ' ';
  out += m;
}

void SyslogSink::fillPending() {
  Item item;
  while (pending_.size() < kMaxPending && queue_.tryPop(item)) {
    pending_.emplace_back();
    formatFrame(item, pending_.back());
  }
}

SinkIo SyslogSink::writePending(bool may_wait) {
  while (!pending_.empty()) {
    iovec iov[kMaxIov];
    int n = 0;
    for (auto it = pending_.begin(); it != pending_.end() && n < kMaxIov; ++it, ++n) {
      const size_t skip = n == 0 ? front_sent_ : 0;
      iov[n].iov_base = it->data() + skip;
      iov[n].iov_len = it->size() - skip;
    }
    msghdr mh{};
    mh.msg_iov = iov;
    mh.msg_iovlen = static_cast<size_t>(n);
    const ssize_t w = ::sendmsg(fd_, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return SinkIo::kError;
      if (!may_wait) return SinkIo::kTimeout;
      const SinkIo r = waitFd(fd_, POLLOUT, worker_.stopSignal(), options_.io_timeout_ms);
      if (r != SinkIo::kOk) return r;
      continue;
    }
    size_t left = static_cast<size_t>(w);
    while (left > 0) {
      const size_t rest = pending_.front().size() - front_sent_;
      if (left < rest) {
        front_sent_ += left;
        break;
      }
      left -= rest;
      pending_.pop_front();
      front_sent_ = 0;
      sent_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  return SinkIo::kOk;
}

// The collector never speaks, so a readable socket means it closed or reset the
// connection (anything it did send is discarded). Checked before writing, so a
// close noticed in time costs no message.
bool SyslogSink::peerClosed() const {
  pollfd p = {fd_, POLLIN | POLLRDHUP, 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLERR | POLLHUP | POLLRDHUP)) return true;
  char buf[512];
  const ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
  if (n > 0) return false;
  return n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

void SyslogSink::closeConnection() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  connected_.store(false, std::memory_order_relaxed);
  // A frame cut short is sent again whole on the next connection.
  front_sent_ = 0;
}

void SyslogSink::run() {
  Backoff backoff;
  bool ever_connected = false;
  bool wrote_since_connect = false;
  // After losing a connection that carried data, reconnect at once (the collector
  // may have restarted already); after one that carried nothing, back off, so a
  // collector that accepts and closes at once is not hammered. False if stopped.
  const auto lose = [&] {
    closeConnection();
    return wrote_since_connect || sleepUnlessStopped(worker_.stopSignal(), backoff.next());
  };
  while (!worker_.stopping()) {
    if (fd_ < 0) {
      SinkIo r;
      fd_ = connectSink(endpoint_, worker_.stopSignal(), options_.io_timeout_ms, r);
      if (fd_ < 0) {
        if (r == SinkIo::kStopped ||
            !sleepUnlessStopped(worker_.stopSignal(), backoff.next())) {
          break;
        }
        continue;
      }
      connected_.store(true, std::memory_order_relaxed);
      if (ever_connected) reconnects_.fetch_add(1, std::memory_order_relaxed);
      ever_connected = true;
      wrote_since_connect = false;
    }
    fillPending();
    if (!pending_.empty()) {
      if (peerClosed()) {
        if (!lose()) break;
        continue;
      }
      const uint64_t before = sent_.load(std::memory_order_relaxed);
      const SinkIo r = writePending(true);
      if (sent_.load(std::memory_order_relaxed) != before) {
        wrote_since_connect = true;
        backoff.reset();
      }
      if (r == SinkIo::kOk) continue;
      if (r == SinkIo::kStopped || !lose()) break;
      continue;
    }
    worker_.idle([this] { return queue_.frontReady(); }, kIdleWakeNs);
    if (fd_ >= 0 && peerClosed() && !lose()) break;
  }
  // Last words: whatever the socket takes now, without waiting.
  if (fd_ >= 0 && !peerClosed()) {
    fillPending();
    while (!pending_.empty() && writePending(false) == SinkIo::kOk) fillPending();
  }
}

}  // namespace portcullis
