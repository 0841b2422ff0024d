// writeOrQueue (proxy/io.h) over a real loopback TCP connection: the bytes
// arrive whole and in order whether they went out at once (several small
// buffers are coalesced into one send) or had to be queued behind a full
// socket (then from the caller's buffers, with the callback run once).
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <string>
#include <vector>

#include "proxy/io.h"

namespace portcullis {
namespace {

class WriteOrQueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    const int l = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(l, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    ASSERT_EQ(bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ASSERT_EQ(listen(l, 1), 0);
    ASSERT_EQ(getsockname(l, reinterpret_cast<sockaddr*>(&a), &al), 0);
    const int c = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(c, 0);
    // A small send buffer, so that a test can fill the socket quickly.
    const int sz = 16384;
    ASSERT_EQ(setsockopt(c, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz), 0);
    ASSERT_EQ(connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    reader_ = accept(l, nullptr, nullptr);
    ASSERT_GE(reader_, 0);
    close(l);
    ASSERT_EQ(setsockopt(reader_, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz), 0);
    ASSERT_EQ(fcntl(reader_, F_SETFL, O_NONBLOCK), 0);
    ASSERT_EQ(uv_tcp_init(&loop_, &tcp_), 0);
    ASSERT_EQ(uv_tcp_open(&tcp_, c), 0);
    tcp_.data = this;
  }

  void TearDown() override {
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0);
    if (reader_ >= 0) close(reader_);
  }

  // Reads from the peer (running the loop meanwhile) until `n` bytes came.
  std::string readExactly(size_t n) {
    std::string got;
    char buf[65536];
    for (int spins = 0; got.size() < n && spins < 200000; ++spins) {
      uv_run(&loop_, UV_RUN_NOWAIT);
      const ssize_t r = read(reader_, buf, sizeof buf);
      if (r > 0) {
        got.append(buf, static_cast<size_t>(r));
      } else if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
        break;
      } else {
        usleep(100);
      }
    }
    return got;
  }

  // Writes filler with uv_try_write until the socket takes no more.
  size_t fill() {
    std::string chunk(65536, 'f');
    size_t total = 0;
    for (;;) {
      uv_buf_t b = uv_buf_init(chunk.data(), static_cast<unsigned>(chunk.size()));
      const int n = uv_try_write(reinterpret_cast<uv_stream_t*>(&tcp_), &b, 1);
      if (n <= 0) break;
      total += static_cast<size_t>(n);
    }
    return total;
  }

  static void onWritten(uv_write_t* req, int status) {
    auto* self = static_cast<WriteOrQueueTest*>(req->handle->data);
    ++self->callbacks_;
    self->status_ = status;
  }

  uv_loop_t loop_{};
  uv_tcp_t tcp_{};
  uv_write_t req_{};
  int reader_ = -1;
  int callbacks_ = 0;
  int status_ = 1;
};

std::vector<uv_buf_t> bufsOf(std::vector<std::string>& parts) {
  std::vector<uv_buf_t> out;
  for (std::string& p : parts) out.push_back(uv_buf_init(p.data(), static_cast<unsigned>(p.size())));
  return out;
}

TEST_F(WriteOrQueueTest, SmallBuffersGoOutWholeAndInOrder) {
  std::vector<std::string> parts = {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "", "hello"};
  std::vector<uv_buf_t> bufs = bufsOf(parts);
  const int rc = writeOrQueue(reinterpret_cast<uv_stream_t*>(&tcp_), &req_, bufs.data(),
                              static_cast<unsigned>(bufs.size()), onWritten);
  ASSERT_EQ(rc, 0);
  EXPECT_EQ(readExactly(parts[0].size() + parts[2].size()), parts[0] + parts[2]);
  EXPECT_EQ(callbacks_, 0);
}

TEST_F(WriteOrQueueTest, BuffersAtAndAboveTheCoalescingLimitArriveIntact) {
  for (size_t total : {size_t{2047}, size_t{2048}, size_t{2049}, size_t{10000}}) {
    std::vector<std::string> parts;
    const size_t sizes[] = {1, total / 3, total / 2};
    size_t left = total;
    char c = 'a';
    for (size_t s : sizes) {
      parts.emplace_back(s, c++);
      left -= s;
    }
    parts.emplace_back(left, c);
    std::string want;
    for (const std::string& p : parts) want += p;
    std::vector<uv_buf_t> bufs = bufsOf(parts);
    const int rc = writeOrQueue(reinterpret_cast<uv_stream_t*>(&tcp_), &req_, bufs.data(),
                                static_cast<unsigned>(bufs.size()), onWritten);
    ASSERT_GE(rc, 0) << total;
    EXPECT_EQ(readExactly(want.size()), want) << total;
    uv_run(&loop_, UV_RUN_NOWAIT);
    EXPECT_EQ(callbacks_, rc == 1 ? 1 : 0) << total;
    callbacks_ = 0;
  }
}

TEST_F(WriteOrQueueTest, FullSocketQueuesTheSmallBuffersFromTheCallersMemory) {
  size_t filled = fill();
  ASSERT_GT(filled, 0u);
  // Until the peer's window is closed and the send buffer stays full.
  for (size_t more = 1; more > 0;) {
    usleep(2000);
    more = fill();
    filled += more;
  }
  std::vector<std::string> parts = {"head-bytes|", "body-1|", "body-2"};
  std::vector<uv_buf_t> bufs = bufsOf(parts);
  const int rc = writeOrQueue(reinterpret_cast<uv_stream_t*>(&tcp_), &req_, bufs.data(),
                              static_cast<unsigned>(bufs.size()), onWritten);
  ASSERT_EQ(rc, 1);  // nothing fitted: queued
  // The bufs array may be reused at once; the bytes must stay valid.
  bufs.assign(3, uv_buf_init(nullptr, 0));
  const std::string got = readExactly(filled + 24);
  ASSERT_EQ(got.size(), filled + 24);
  EXPECT_EQ(got.substr(0, filled), std::string(filled, 'f'));
  EXPECT_EQ(got.substr(filled), "head-bytes|body-1|body-2");
  for (int i = 0; i < 100 && callbacks_ == 0; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
  EXPECT_EQ(callbacks_, 1);
  EXPECT_EQ(status_, 0);
}

}  // namespace
}  // namespace portcullis
