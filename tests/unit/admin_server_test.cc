#include "proxy/admin_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace portcullis {
namespace {

// An AdminServer on its own loop thread; the test thread is the client and talks
// to it over blocking sockets on 127.0.0.1.
class AdminServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    server_ = std::make_unique<AdminServer>(
        &loop_, [this](std::string_view method, std::string_view path, AdminReply& reply) {
          {
            std::lock_guard<std::mutex> lock(mu_);
            seen_.push_back(std::string(method) + " " + std::string(path));
          }
          if (path == "/healthz") {
            reply.body = "ok\n";
          } else if (path == "/metrics") {
            reply.content_type = "text/plain; version=0.0.4";
            reply.body = "portcullis_up 1\n";
          } else if (path == "/big") {
            reply.body.assign(300000, 'b');
          } else if (path == "/evil") {
            reply.content_type = "text/plain\r\nSet-Cookie: x=1";
            reply.body = "e";
          } else if (path == "/empty") {
            reply.status = 204;
          } else if (path == "/quit") {
            server_->close();
          } else {
            reply.status = 404;
            reply.body = "not found\n";
          }
        });
    std::string error;
    ASSERT_TRUE(server_->listen("127.0.0.1", 0, error)) << error;
    ASSERT_NE(server_->port(), 0);
    ASSERT_EQ(uv_async_init(&loop_, &stop_, [](uv_async_t* a) {
                auto* self = static_cast<AdminServerTest*>(a->data);
                self->server_->close();
                uv_close(reinterpret_cast<uv_handle_t*>(a), nullptr);
              }), 0);
    stop_.data = this;
    thread_ = std::thread([this] { uv_run(&loop_, UV_RUN_DEFAULT); });
  }

  void TearDown() override {
    uv_async_send(&stop_);
    thread_.join();
    server_.reset();
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }

  int connectClient() {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_GE(fd, 0);
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(server_->port());
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    return fd;
  }

  static void sendAll(int fd, std::string_view data) {
    while (!data.empty()) {
      ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
      ASSERT_GT(n, 0);
      data.remove_prefix(static_cast<size_t>(n));
    }
  }

  struct Response {
    int status = 0;
    std::map<std::string, std::string> headers;  // lower-case names
    std::string body;
    bool ok = false;
  };

  // Reads one response (head + Content-Length body). `buffered` carries bytes
  // read past the end of one response into the next call.
  static Response readResponse(int fd, std::string& buffered, bool head_request = false) {
    Response r;
    size_t head_end;
    while ((head_end = buffered.find("\r\n\r\n")) == std::string::npos) {
      if (!readMore(fd, buffered)) return r;
    }
    std::string head = buffered.substr(0, head_end);
    buffered.erase(0, head_end + 4);
    size_t line_end = head.find("\r\n");
    std::string status_line = head.substr(0, line_end);
    if (status_line.rfind("HTTP/1.1 ", 0) != 0) return r;
    r.status = std::stoi(status_line.substr(9, 3));
    size_t pos = line_end == std::string::npos ? head.size() : line_end + 2;
    while (pos < head.size()) {
      size_t e = head.find("\r\n", pos);
      if (e == std::string::npos) e = head.size();
      std::string line = head.substr(pos, e - pos);
      size_t colon = line.find(':');
      std::string name = line.substr(0, colon);
      for (auto& ch : name) ch = static_cast<char>(tolower(ch));
      std::string value = line.substr(colon + 1);
      while (!value.empty() && value[0] == ' ') value.erase(0, 1);
      r.headers[name] = value;
      pos = e + 2;
    }
    size_t len = r.headers.count("content-length") ? std::stoul(r.headers["content-length"]) : 0;
    if (head_request) len = 0;
    while (buffered.size() < len) {
      if (!readMore(fd, buffered)) return r;
    }
    r.body = buffered.substr(0, len);
    buffered.erase(0, len);
    r.ok = true;
    return r;
  }

  static bool readMore(int fd, std::string& buffered) {
    char buf[65536];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return false;
    buffered.append(buf, static_cast<size_t>(n));
    return true;
  }

  // True if the server closed the connection (EOF or reset) with nothing more sent.
  static bool closedByPeer(int fd) {
    char c;
    ssize_t n = recv(fd, &c, 1, 0);
    return n == 0 || (n < 0 && errno == ECONNRESET);
  }

  std::vector<std::string> seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }

  uv_loop_t loop_;
  uv_async_t stop_;
  std::unique_ptr<AdminServer> server_;
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::string> seen_;
};

TEST_F(AdminServerTest, GetReturnsHandlerReplyWithRequiredHeaders) {
  int fd = connectClient();
  sendAll(fd, "GET /healthz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n");
  std::string buf;
  Response r = readResponse(fd, buf);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "ok\n");
  EXPECT_EQ(r.headers["content-length"], "3");
  EXPECT_EQ(r.headers["content-type"], "text/plain; charset=utf-8");
  EXPECT_EQ(r.headers["cache-control"], "no-store");
  EXPECT_EQ(r.headers.count("server"), 0u);
  EXPECT_EQ(r.headers.count("connection"), 0u);
  EXPECT_EQ(seen(), (std::vector<std::string>{"GET /healthz"}));
  close(fd);
}

TEST_F(AdminServerTest, KeepAliveServesSeveralRequestsInOrder) {
  int fd = connectClient();
  std::string buf;
  sendAll(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  Response a = readResponse(fd, buf);
  sendAll(fd, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  Response b = readResponse(fd, buf);
  ASSERT_TRUE(a.ok && b.ok);
  EXPECT_EQ(a.body, "ok\n");
  EXPECT_EQ(b.body, "portcullis_up 1\n");
  EXPECT_EQ(b.headers["content-type"], "text/plain; version=0.0.4");

  // Pipelined, split at awkward places, with a body to discard in between.
  const std::string pipelined =
      "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
      "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
      "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
      "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
  for (size_t i = 0; i < pipelined.size(); i += 7) {
    sendAll(fd, pipelined.substr(i, 7));
  }
  Response r1 = readResponse(fd, buf);
  Response r2 = readResponse(fd, buf);
  Response r3 = readResponse(fd, buf);
  Response r4 = readResponse(fd, buf, /*head_request=*/true);
  ASSERT_TRUE(r1.ok && r2.ok && r3.ok && r4.ok);
  EXPECT_EQ(r1.status, 404);
  EXPECT_EQ(r2.status, 404);
  EXPECT_EQ(r3.status, 404);
  EXPECT_EQ(r4.status, 200);
  EXPECT_EQ(r4.headers["content-length"], "3");
  EXPECT_TRUE(buf.empty()) << "HEAD response carried a body";
  EXPECT_EQ(seen(), (std::vector<std::string>{"GET /healthz", "GET /metrics", "GET /a", "POST /b",
                                              "POST /c", "HEAD /healthz"}));
  close(fd);
}

TEST_F(AdminServerTest, GarbageGets400AndClose) {
  int fd = connectClient();
  sendAll(fd, "GARBAGE\x01\x02 nonsense\r\n\r\n");
  std::string buf;
  Response r = readResponse(fd, buf);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.headers["connection"], "close");
  EXPECT_EQ(r.headers["cache-control"], "no-store");
  EXPECT_TRUE(closedByPeer(fd));
  EXPECT_TRUE(seen().empty());
  close(fd);
}

TEST_F(AdminServerTest, MalformedFramingGets400) {
  const char* cases[] = {
      "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
      "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
      "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
      "GET / HTTP/9.9\r\n\r\n",
      "GET /\x7f HTTP/1.1\r\n\r\n",
      "GET /\x80 HTTP/1.1\r\n\r\n",
      "GET /a\tb HTTP/1.1\r\n\r\n",
      "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
      "GET / HTTP/1.1\r\nA: b\nC: d\r\n\r\n",
      "GET / HTTP/1.1\r\nA: \x01\r\n\r\n",
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
  };
  for (const char* req : cases) {
    int fd = connectClient();
    sendAll(fd, req);
    std::string buf;
    Response r = readResponse(fd, buf);
    ASSERT_TRUE(r.ok) << req;
    EXPECT_EQ(r.status, 400) << req;
    EXPECT_TRUE(closedByPeer(fd)) << req;
    close(fd);
  }
  EXPECT_TRUE(seen().empty());
}

TEST_F(AdminServerTest, HandlerChooses404) {
  int fd = connectClient();
  sendAll(fd, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
  std::string buf;
  Response r = readResponse(fd, buf);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.body, "not found\n");
  // The connection stays usable after a handler's 404.
  sendAll(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  r = readResponse(fd, buf);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  close(fd);
}

TEST_F(AdminServerTest, ConnectionCloseAndHttp10) {
  int fd = connectClient();
  sendAll(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  std::string buf;
  Response r = readResponse(fd, buf);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.headers["connection"], "close");
  EXPECT_TRUE(closedByPeer(fd));
  close(fd);

  fd = connectClient();
  sendAll(fd, "GET /healthz HTTP/1.0\r\n\r\n");
  buf.clear();
  r = readResponse(fd, buf);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.body, "ok\n");
  EXPECT_TRUE(closedByPeer(fd));
  close(fd);

  fd = connectClient();
  sendAll(fd, "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  buf.clear();
  r = readResponse(fd, buf);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.headers["connection"], "keep-alive");
  sendAll(fd, "GET /metrics HTTP/1.0\r\n\r\n");
  r = readResponse(fd, buf);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.body, "portcullis_up 1\n");
  close(fd);
}

TEST_F(AdminServerTest, OversizedBodyGets413) {
  int fd = connectClient();
  sendAll(fd, "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n");
  std::string buf;
  Response r = readResponse(fd, buf);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 413);
  EXPECT_TRUE(closedByPeer(fd));
  close(fd);

  // Chunked: only counted as it arrives.
  fd = connectClient();
  sendAll(fd, "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
  std::string chunk = "8000\r\n" + std::string(0x8000, 'z') + "\r\n";
  for (int i = 0; i < 3; ++i) sendAll(fd, chunk);
  buf.clear();
  r = readResponse(fd, buf);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 413);
  close(fd);

  // Exactly 64 KiB is fine.
  fd = connectClient();
  sendAll(fd, "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n" +
                  std::string(65536, 'q'));
  buf.clear();
  r = readResponse(fd, buf);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  close(fd);
}

TEST_F(AdminServerTest, OversizedHeadGets431) {
  int fd = connectClient();
  sendAll(fd, "GET / HTTP/1.1\r\nHost: x\r\nX-Fill: " + std::string(9000, 'a') + "\r\n\r\n");
  std::string buf;
  Response r = readResponse(fd, buf);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 431);
  EXPECT_TRUE(closedByPeer(fd));
  close(fd);

  fd = connectClient();
  sendAll(fd, "GET /" + std::string(9000, 'u') + " HTTP/1.1\r\n\r\n");
  buf.clear();
  r = readResponse(fd, buf);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 431);
  close(fd);

  // A head just under the limit passes.
  fd = connectClient();
  std::string req = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Fill: ";
  req += std::string(8192 - req.size() - 4, 'a') + "\r\n\r\n";
  ASSERT_EQ(req.size(), 8192u);
  sendAll(fd, req);
  buf.clear();
  r = readResponse(fd, buf);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  close(fd);
}

TEST_F(AdminServerTest, HandlerCannotInjectHeaders) {
  int fd = connectClient();
  sendAll(fd, "GET /evil HTTP/1.1\r\nHost: x\r\n\r\n");
  std::string buf;
  Response r = readResponse(fd, buf);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.headers["content-type"], "application/octet-stream");
  EXPECT_EQ(r.headers.count("set-cookie"), 0u);

  sendAll(fd, "GET /empty HTTP/1.1\r\nHost: x\r\n\r\n");
  r = readResponse(fd, buf);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 204);
  EXPECT_EQ(r.headers.count("content-length"), 0u);
  close(fd);
}

TEST_F(AdminServerTest, AbsoluteFormTarget) {
  int fd = connectClient();
  sendAll(fd, "GET http://127.0.0.1/metrics?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  std::string buf;
  Response r = readResponse(fd, buf);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.body, "portcullis_up 1\n");
  close(fd);
}

TEST_F(AdminServerTest, UpgradeIsAnsweredThenClosed) {
  int fd = connectClient();
  sendAll(fd,
          "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
          "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  std::string buf;
  Response r = readResponse(fd, buf);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(buf.empty());
  EXPECT_TRUE(closedByPeer(fd));
  EXPECT_EQ(seen(), (std::vector<std::string>{"GET /healthz"}));
  close(fd);
}

TEST_F(AdminServerTest, ClientHalfCloseStillGetsPipelinedResponses) {
  int fd = connectClient();
  std::string reqs;
  for (int i = 0; i < 4; ++i) reqs += "GET /big HTTP/1.1\r\nHost: x\r\n\r\n";
  sendAll(fd, reqs);
  shutdown(fd, SHUT_WR);
  std::string buf;
  for (int i = 0; i < 4; ++i) {
    Response r = readResponse(fd, buf);
    ASSERT_TRUE(r.ok) << i;
    EXPECT_EQ(r.body.size(), 300000u);
  }
  EXPECT_TRUE(closedByPeer(fd));
  close(fd);
}

TEST_F(AdminServerTest, ConnectionLimit) {
  std::vector<int> fds;
  std::string buf;
  for (size_t i = 0; i < AdminServer::kMaxConnections; ++i) {
    int fd = connectClient();
    sendAll(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    buf.clear();
    ASSERT_TRUE(readResponse(fd, buf).ok) << i;
    fds.push_back(fd);
  }
  int extra = connectClient();
  sendAll(extra, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_TRUE(closedByPeer(extra));
  close(extra);

  // Once one closes, a new connection is served again.
  close(fds.back());
  fds.pop_back();
  bool served = false;
  for (int attempt = 0; attempt < 50 && !served; ++attempt) {
    int fd = connectClient();
    sendAll(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    buf.clear();
    served = readResponse(fd, buf).ok;
    close(fd);
    if (!served) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(served);
  for (int fd : fds) close(fd);
}

TEST_F(AdminServerTest, LargeResponsesToAClientThatReadsLate) {
  int fd = connectClient();
  std::string reqs;
  for (int i = 0; i < 8; ++i) reqs += "GET /big HTTP/1.1\r\nHost: x\r\n\r\n";
  sendAll(fd, reqs);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::string buf;
  for (int i = 0; i < 8; ++i) {
    Response r = readResponse(fd, buf);
    ASSERT_TRUE(r.ok) << i;
    ASSERT_EQ(r.body.size(), 300000u);
  }
  EXPECT_EQ(seen().size(), 8u);
  close(fd);
}

TEST_F(AdminServerTest, CloseFromHandlerEndsEverything) {
  int idle = connectClient();
  sendAll(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  std::string buf;
  ASSERT_TRUE(readResponse(idle, buf).ok);
  int fd = connectClient();
  sendAll(fd, "GET /quit HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_TRUE(closedByPeer(fd));
  EXPECT_TRUE(closedByPeer(idle));
  close(fd);
  close(idle);
}

TEST(AdminServerListen, RejectsNonNumericHostAndBusyPort) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  {
    AdminServer a(&loop, [](std::string_view, std::string_view, AdminReply&) {});
    std::string error;
    EXPECT_FALSE(a.listen("localhost", 0, error));
    EXPECT_FALSE(error.empty());
    ASSERT_TRUE(a.listen("127.0.0.1", 0, error)) << error;
    AdminServer b(&loop, [](std::string_view, std::string_view, AdminReply&) {});
    error.clear();
    EXPECT_FALSE(b.listen("127.0.0.1", a.port(), error));
    EXPECT_NE(error.find("address already in use"), std::string::npos) << error;
    AdminServer v6(&loop, [](std::string_view, std::string_view, AdminReply&) {});
    if (v6.listen("::1", 0, error)) {
      EXPECT_NE(v6.port(), 0);
    }
    a.close();
    a.close();
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

}  // namespace
}  // namespace portcullis
