// proxy/nocancel_io.cc: read/write/writev/socket/accept4 as the proxy links them (in
// builds without sanitizers every call below goes through the __wrap_
// functions; sanitizer builds run the same expectations against glibc).
// Contract: same results and errno as glibc's functions for sockets, pipes and
// files alike, including a descriptor number reused by another kind of file.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <pthread.h>

#include <cerrno>
#include <csignal>
#include <ctime>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>

#include <gtest/gtest.h>

extern "C" ssize_t __wrap_read(int, void*, size_t) __attribute__((weak));  // NOLINT(bugprone-reserved-identifier)

namespace {

std::string readAll(int fd, size_t n) {
  std::string out(n, '\0');
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::read(fd, out.data() + got, n - got);
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  out.resize(got);
  return out;
}

void roundTrip(int wfd, int rfd) {
  ASSERT_EQ(::write(wfd, "hello ", 6), 6);
  struct iovec iov[3] = {{const_cast<char*>("wor"), 3}, {const_cast<char*>(""), 0}, {const_cast<char*>("ld"), 2}};
  ASSERT_EQ(::writev(wfd, iov, 3), 5);
  EXPECT_EQ(readAll(rfd, 11), "hello world");
}

TEST(NoCancelIo, WrappedInThisBuildUnlessSanitized) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  EXPECT_EQ(&__wrap_read, nullptr);
#else
  EXPECT_NE(&__wrap_read, nullptr);
#endif
}

TEST(NoCancelIo, SocketsPipesAndFilesKeepTheirSemantics) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  roundTrip(sv[0], sv[1]);
  roundTrip(sv[1], sv[0]);

  int p[2];
  ASSERT_EQ(pipe(p), 0);
  roundTrip(p[1], p[0]);
  roundTrip(p[1], p[0]);  // second time: the marks say "not a socket"

  char path[] = "/tmp/pc-nocancel-XXXXXX";
  const int f = mkstemp(path);
  ASSERT_GE(f, 0);
  unlink(path);
  ASSERT_EQ(::write(f, "file ", 5), 5);
  struct iovec iov[2] = {{const_cast<char*>("da"), 2}, {const_cast<char*>("ta"), 2}};
  ASSERT_EQ(::writev(f, iov, 2), 4);
  ASSERT_EQ(lseek(f, 0, SEEK_SET), 0);
  EXPECT_EQ(readAll(f, 9), "file data");
  char c;
  EXPECT_EQ(::read(f, &c, 1), 0);  // end of file

  for (int fd : {sv[0], sv[1], p[0], p[1], f}) EXPECT_EQ(::close(fd), 0);
}

TEST(NoCancelIo, ErrorsAreGlibcs) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
  char buf[8];
  errno = 0;
  EXPECT_EQ(::read(sv[0], buf, sizeof buf), -1);
  EXPECT_EQ(errno, EAGAIN);
  // Bad iovec counts (through a variable: the compiler checks constants).
  static struct iovec iovs[IOV_MAX + 1];
  for (struct iovec& v : iovs) v = {buf, 1};
  for (volatile int n : {-1, IOV_MAX + 1}) {
    errno = 0;
    EXPECT_EQ(::writev(sv[0], iovs, n), -1) << n;
    EXPECT_EQ(errno, EINVAL) << n;
  }
  EXPECT_EQ(::read(sv[0], buf, 0), 0);
  EXPECT_EQ(::write(sv[1], buf, 0), 0);

  // Peer gone: a read sees end of stream, a write EPIPE (MSG_NOSIGNAL is not
  // ours to add, so SIGPIPE is blocked here to observe the errno).
  ASSERT_EQ(::close(sv[1]), 0);
  EXPECT_EQ(::read(sv[0], buf, sizeof buf), 0);
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGPIPE);
  ASSERT_EQ(pthread_sigmask(SIG_BLOCK, &block, &old), 0);
  errno = 0;
  EXPECT_EQ(::write(sv[0], "x", 1), -1);
  EXPECT_EQ(errno, EPIPE);
  struct timespec zero = {0, 0};
  sigtimedwait(&block, nullptr, &zero);  // discard the pending SIGPIPE
  ASSERT_EQ(pthread_sigmask(SIG_SETMASK, &old, nullptr), 0);

  ASSERT_EQ(::close(sv[0]), 0);
  errno = 0;
  EXPECT_EQ(::read(sv[0], buf, sizeof buf), -1);  // closed: no such descriptor
  EXPECT_EQ(errno, EBADF);
  errno = 0;
  EXPECT_EQ(::write(sv[0], "x", 1), -1);
  EXPECT_EQ(errno, EBADF);
  errno = 0;
  EXPECT_EQ(::close(sv[0]), -1);
  EXPECT_EQ(errno, EBADF);
}

// A descriptor number that was a socket and is then reused for a pipe (and
// the other way round) reads and writes correctly both times.
TEST(NoCancelIo, ReusedDescriptorNumbers) {
  for (int i = 0; i < 3; ++i) {
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    const int a = sv[0], b = sv[1];
    roundTrip(a, b);  // both numbers now marked as sockets
    // Replaced by a pipe (dup2): a stale "socket" mark.
    int q[2];
    ASSERT_EQ(pipe(q), 0);
    ASSERT_EQ(dup2(q[0], a), a);
    ASSERT_EQ(dup2(q[1], b), b);
    roundTrip(b, a);
    for (int fd : {a, b, q[0], q[1]}) ASSERT_EQ(::close(fd), 0);
    int p[2];
    ASSERT_EQ(pipe(p), 0);  // the lowest free numbers: a and b again
    roundTrip(p[1], p[0]);
    // Replaced by sockets no wrapper saw made (dup2): a stale mark, still right.
    int sv2[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv2), 0);
    ASSERT_EQ(dup2(sv2[0], p[0]), p[0]);
    ASSERT_EQ(dup2(sv2[1], p[1]), p[1]);
    roundTrip(p[1], p[0]);  // marked "not a socket", now sockets
    roundTrip(p[0], p[1]);
    for (int fd : {p[0], p[1], sv2[0], sv2[1]}) ASSERT_EQ(::close(fd), 0);
  }
}

// As libuv does it: a number marked "not a socket" is closed with a raw
// system call and reused by socket() / accept4() for TCP, which read, write
// and report accept4's flags and peer address like glibc's.
TEST(NoCancelIo, TcpSocketsFromSocketAndAccept4) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  roundTrip(p[1], p[0]);  // both numbers marked "not a socket"
  ASSERT_EQ(syscall(SYS_close, p[0]), 0);
  ASSERT_EQ(syscall(SYS_close, p[1]), 0);

  const int l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(l, 0);
  EXPECT_TRUE(l == p[0] || l == p[1]) << "the lowest free number is reused";
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  ASSERT_EQ(bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(getsockname(l, reinterpret_cast<sockaddr*>(&a), &alen), 0);
  ASSERT_EQ(listen(l, 1), 0);
  const int c = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(c, 0);
  ASSERT_EQ(connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);

  sockaddr_in peer{};
  socklen_t plen = sizeof peer;
  const int s = ::accept4(l, reinterpret_cast<sockaddr*>(&peer), &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
  ASSERT_GE(s, 0);
  EXPECT_EQ(plen, sizeof peer);
  EXPECT_EQ(peer.sin_addr.s_addr, htonl(INADDR_LOOPBACK));
  EXPECT_NE(fcntl(s, F_GETFL) & O_NONBLOCK, 0);
  EXPECT_NE(fcntl(s, F_GETFD) & FD_CLOEXEC, 0);
  char buf[4];
  errno = 0;
  EXPECT_EQ(::read(s, buf, sizeof buf), -1);  // non-blocking, nothing sent yet
  EXPECT_EQ(errno, EAGAIN);
  roundTrip(c, s);
  roundTrip(s, c);

  errno = 0;
  EXPECT_EQ(::accept4(l, nullptr, nullptr, 0x7fffffff), -1);  // glibc's EINVAL for bad flags
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(::socket(AF_INET, 12345, 0), -1);
  EXPECT_NE(errno, 0);
  for (int fd : {s, c, l}) ASSERT_EQ(::close(fd), 0);
}

}  // namespace
