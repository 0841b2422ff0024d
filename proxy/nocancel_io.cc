// The event loops' system calls for reading and writing, made cheaper.
//
// 1. No cancellation points. glibc's read/write/writev/epoll_wait/accept4
//    are POSIX cancellation points: in a process with more than one thread
//    every call brackets the system call with two atomic read-modify-writes
//    of the thread's cancel state (__pthread_enable_asynccancel /
//    __pthread_disable_asynccancel). Measured here (glibc 2.36, 2-vCPU VM):
//    ~40 ns per call, read(-1) 125 ns against 85 ns for the same system call
//    made without it. Portcullis never cancels a thread.
// 2. Socket calls on sockets. For a socket, read(fd, b, n) is recv(fd, b, n,
//    0), write is send(fd, b, n, 0) and writev is sendmsg with that iovec, but
//    the file-descriptor path (vfs_read/vfs_write: file permission hooks,
//    fsnotify, the iov_iter and kiocb set-up of read_iter/write_iter) costs
//    more in the kernel: on loopback TCP a 100-byte write + read pair took
//    ~2,545 ns, sendto + recvfrom ~2,470 ns. A keep-alive proxied request
//    makes two such pairs.
//
// The link maps the references of every static object in the executable
// (libuv's libuv_a.a included: its stream, async, signal, accept and epoll
// code) to the __wrap_ functions below with -Wl,--wrap=NAME
// (proxy/CMakeLists.txt); shared libraries keep glibc's. Contract: same
// return value and errno as the glibc function for every descriptor, no
// cancellation point.
//
// Which descriptors are sockets: socket() and accept4() mark the descriptor
// they return as a socket; any other descriptor is tried with the socket
// call once, and ENOTSOCK (which a non-socket returns before anything is read
// or written) marks it as not a socket, after which it gets the plain call.
// Marks are not cleared on close (libuv closes with a raw system call, which
// no wrapper sees); a number is re-marked when it is reused: by socket() or
// accept4() for a socket, by ENOTSOCK for anything else. The marks are a hint
// only: a stale "socket" mark costs one failed call, a stale "other" mark (a
// socket made some other way, e.g. socketpair) a plain read or write, so no
// race between threads closing and reusing a number changes a result.
// Sanitizer builds do not wrap (ASan and TSan intercept these calls).
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdint>

namespace {

enum Kind : uint8_t { kUnknown = 0, kSocket = 1, kOther = 2 };

// Descriptors at or above this are never marked (they take the try-then-fall-
// back path every time, still correct). 1 MiB of bss, touched only as far as
// the highest descriptor used.
constexpr int kMaxMarked = 1 << 20;
std::atomic<uint8_t> g_kind[kMaxMarked];

inline Kind kindOf(int fd) {
  if (fd < 0 || fd >= kMaxMarked) return kUnknown;
  return static_cast<Kind>(g_kind[fd].load(std::memory_order_relaxed));
}

inline void mark(int fd, Kind k) {
  if (fd >= 0 && fd < kMaxMarked) g_kind[fd].store(k, std::memory_order_relaxed);
}

// Runs `sock` unless fd is known not to be a socket; on ENOTSOCK marks it and
// runs `plain`. errno is left as the call that produced the result set it.
template <typename Sock, typename Plain>
inline long socketOr(int fd, Sock sock, Plain plain) {
  const Kind k = kindOf(fd);
  if (k != kOther) {
    const long r = sock();
    if (r >= 0 || errno != ENOTSOCK) {
      if (k == kUnknown) mark(fd, kSocket);
      return r;
    }
    mark(fd, kOther);
  }
  return plain();
}

}  // namespace

// The linker's --wrap names these __wrap_<name>: reserved, but not ours to pick.
// NOLINTBEGIN(bugprone-reserved-identifier)
extern "C" {

ssize_t __wrap_read(int fd, void* buf, size_t count) {
  // read() of nothing returns 0 on a socket with nothing to read, where
  // recv() would say EAGAIN.
  if (count == 0) return syscall(SYS_read, fd, buf, count);
  return socketOr(
      fd, [&] { return syscall(SYS_recvfrom, fd, buf, count, 0, nullptr, nullptr); },
      [&] { return syscall(SYS_read, fd, buf, count); });
}

ssize_t __wrap_write(int fd, const void* buf, size_t count) {
  return socketOr(
      fd, [&] { return syscall(SYS_sendto, fd, buf, count, 0, nullptr, 0); },
      [&] { return syscall(SYS_write, fd, buf, count); });
}

ssize_t __wrap_writev(int fd, const struct iovec* iov, int iovcnt) {
  return socketOr(
      fd,
      [&] {
        // writev's EINVAL (sendmsg would say EMSGSIZE above UIO_MAXIOV).
        if (iovcnt < 0 || iovcnt > IOV_MAX) {
          errno = EINVAL;
          return -1L;
        }
        struct msghdr m = {};
        m.msg_iov = const_cast<struct iovec*>(iov);
        m.msg_iovlen = static_cast<size_t>(iovcnt);
        return syscall(SYS_sendmsg, fd, &m, 0);
      },
      [&] { return syscall(SYS_writev, fd, iov, iovcnt); });
}

// Not a cancellation point in glibc; wrapped only to mark what it returns.
int __real_socket(int domain, int type, int protocol);
int __wrap_socket(int domain, int type, int protocol) {
  const int fd = __real_socket(domain, type, protocol);
  mark(fd, kSocket);
  return fd;
}

int __wrap_accept4(int fd, struct sockaddr* addr, socklen_t* addrlen, int flags) {
  const int c = static_cast<int>(syscall(SYS_accept4, fd, addr, addrlen, flags));
  mark(c, kSocket);
  return c;
}

int __wrap_epoll_wait(int epfd, struct epoll_event* events, int maxevents, int timeout) {
  return static_cast<int>(syscall(SYS_epoll_wait, epfd, events, maxevents, timeout));
}

int __wrap_epoll_pwait(int epfd, struct epoll_event* events, int maxevents, int timeout, const sigset_t* sigmask) {
  // The kernel's sigset is _NSIG bits, not glibc's 1024-bit sigset_t.
  return static_cast<int>(syscall(SYS_epoll_pwait, epfd, events, maxevents, timeout, sigmask, _NSIG / 8));
}

}  // extern "C"
// NOLINTEND(bugprone-reserved-identifier)
