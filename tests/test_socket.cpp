// Fd ownership and each socket option, read back with getsockopt/fcntl.
#include "reactor/socket.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include <gtest/gtest.h>

namespace reactor {
namespace {

bool is_open(int fd) {
  return ::fcntl(fd, F_GETFD) >= 0;
}

bool is_closed(int fd) {
  return ::fcntl(fd, F_GETFD) < 0 && errno == EBADF;
}

int int_option(int fd, int level, int name) {
  int value = -1;
  socklen_t len = sizeof value;
  EXPECT_EQ(::getsockopt(fd, level, name, &value, &len), 0);
  return value;
}

Fd tcp_socket() {
  auto fd = open_stream_socket(AF_INET);
  EXPECT_TRUE(fd.ok()) << fd.error().message();
  return fd.ok() ? std::move(*fd) : Fd();
}

TEST(Fd, DefaultIsEmpty) {
  Fd fd;
  EXPECT_FALSE(fd);
  EXPECT_EQ(fd.get(), -1);
}

TEST(Fd, DestructorClosesOnce) {
  int raw = -1;
  {
    Fd fd = tcp_socket();
    raw = fd.get();
    ASSERT_TRUE(is_open(raw));
  }
  EXPECT_TRUE(is_closed(raw));
}

TEST(Fd, MoveLeavesSourceEmpty) {
  Fd a = tcp_socket();
  int raw = a.get();
  Fd b(std::move(a));
  EXPECT_FALSE(a);  // NOLINT(bugprone-use-after-move): checking the moved-from state
  EXPECT_EQ(b.get(), raw);
  EXPECT_TRUE(is_open(raw));

  Fd c;
  c = std::move(b);
  EXPECT_FALSE(b);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(c.get(), raw);
  EXPECT_TRUE(is_open(raw));
}

TEST(Fd, MoveAssignClosesTheOverwrittenDescriptor) {
  Fd a = tcp_socket();
  Fd b = tcp_socket();
  int old_b = b.get();
  int raw_a = a.get();
  b = std::move(a);
  EXPECT_TRUE(is_closed(old_b));
  EXPECT_TRUE(is_open(raw_a));
}

TEST(Fd, ReleaseDoesNotClose) {
  int raw = -1;
  {
    Fd fd = tcp_socket();
    raw = fd.release();
    EXPECT_FALSE(fd);
  }
  EXPECT_TRUE(is_open(raw));
  ::close(raw);
}

TEST(Fd, ResetClosesTheOldDescriptor) {
  Fd fd = tcp_socket();
  int first = fd.get();
  int second = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(second, 0);
  fd.reset(second);
  EXPECT_TRUE(is_closed(first));
  EXPECT_EQ(fd.get(), second);
  fd.reset();
  EXPECT_TRUE(is_closed(second));
  EXPECT_FALSE(fd);
}

TEST(Fd, ResetToTheSameDescriptorKeepsItOpen) {
  Fd fd = tcp_socket();
  int raw = fd.get();
  fd.reset(raw);
  EXPECT_TRUE(is_open(raw));
}

TEST(Socket, OpenStreamSocketIsNonBlockingAndCloexec) {
  for (int family : {AF_INET, AF_INET6, AF_UNIX}) {
    auto fd = open_stream_socket(family);
    ASSERT_TRUE(fd.ok()) << fd.error().message();
    EXPECT_TRUE(::fcntl(fd->get(), F_GETFL) & O_NONBLOCK);
    EXPECT_TRUE(::fcntl(fd->get(), F_GETFD) & FD_CLOEXEC);
    EXPECT_EQ(int_option(fd->get(), SOL_SOCKET, SO_TYPE), SOCK_STREAM);
  }
}

TEST(Socket, OpenStreamSocketReportsBadFamily) {
  auto fd = open_stream_socket(-1);
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.error(), std::errc::address_family_not_supported);
}

TEST(Socket, NonBlockingRoundTrips) {
  Fd fd = tcp_socket();
  EXPECT_FALSE(set_nonblocking(fd.get(), false));
  EXPECT_FALSE(::fcntl(fd.get(), F_GETFL) & O_NONBLOCK);
  EXPECT_FALSE(set_nonblocking(fd.get()));
  EXPECT_TRUE(::fcntl(fd.get(), F_GETFL) & O_NONBLOCK);
}

TEST(Socket, CloexecRoundTrips) {
  Fd fd = tcp_socket();
  EXPECT_FALSE(set_cloexec(fd.get(), false));
  EXPECT_FALSE(::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC);
  EXPECT_FALSE(set_cloexec(fd.get()));
  EXPECT_TRUE(::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC);
}

TEST(Socket, TcpNoDelayRoundTrips) {
  Fd fd = tcp_socket();
  EXPECT_FALSE(set_tcp_nodelay(fd.get()));
  EXPECT_NE(int_option(fd.get(), IPPROTO_TCP, TCP_NODELAY), 0);
  EXPECT_FALSE(set_tcp_nodelay(fd.get(), false));
  EXPECT_EQ(int_option(fd.get(), IPPROTO_TCP, TCP_NODELAY), 0);
}

TEST(Socket, TcpNoDelayOnUnixSocketIsAnError) {
  auto fd = open_stream_socket(AF_UNIX);
  ASSERT_TRUE(fd.ok());
  std::error_code ec = set_tcp_nodelay(fd->get());
  EXPECT_TRUE(ec);
  EXPECT_EQ(ec, std::errc::operation_not_supported) << ec.message();
}

TEST(Socket, ReuseAddrRoundTrips) {
  Fd fd = tcp_socket();
  EXPECT_FALSE(set_reuse_addr(fd.get()));
  EXPECT_NE(int_option(fd.get(), SOL_SOCKET, SO_REUSEADDR), 0);
  EXPECT_FALSE(set_reuse_addr(fd.get(), false));
  EXPECT_EQ(int_option(fd.get(), SOL_SOCKET, SO_REUSEADDR), 0);
}

TEST(Socket, ReusePortRoundTrips) {
  Fd fd = tcp_socket();
  EXPECT_FALSE(set_reuse_port(fd.get()));
  EXPECT_NE(int_option(fd.get(), SOL_SOCKET, SO_REUSEPORT), 0);
  EXPECT_FALSE(set_reuse_port(fd.get(), false));
  EXPECT_EQ(int_option(fd.get(), SOL_SOCKET, SO_REUSEPORT), 0);
}

// Linux stores twice the requested size (the other half is bookkeeping) and clamps to
// the [wr]mem_max sysctl, so only "grew past the request" and "shrank" are portable checks.
TEST(Socket, SendBufferRoundTrips) {
  Fd fd = tcp_socket();
  EXPECT_FALSE(set_send_buffer(fd.get(), 4096));
  int small = int_option(fd.get(), SOL_SOCKET, SO_SNDBUF);
  EXPECT_GE(small, 4096);
  EXPECT_FALSE(set_send_buffer(fd.get(), 64 * 1024));
  EXPECT_GT(int_option(fd.get(), SOL_SOCKET, SO_SNDBUF), small);
}

TEST(Socket, RecvBufferRoundTrips) {
  Fd fd = tcp_socket();
  EXPECT_FALSE(set_recv_buffer(fd.get(), 4096));
  int small = int_option(fd.get(), SOL_SOCKET, SO_RCVBUF);
  EXPECT_GE(small, 4096);
  EXPECT_FALSE(set_recv_buffer(fd.get(), 64 * 1024));
  EXPECT_GT(int_option(fd.get(), SOL_SOCKET, SO_RCVBUF), small);
}

TEST(Socket, LingerAbortRoundTrips) {
  Fd fd = tcp_socket();
  EXPECT_FALSE(set_linger_abort(fd.get()));
  linger value{};
  socklen_t len = sizeof value;
  ASSERT_EQ(::getsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &value, &len), 0);
  EXPECT_EQ(value.l_onoff, 1);
  EXPECT_EQ(value.l_linger, 0);
}

TEST(Socket, PendingSocketErrorIsEmptyOnAFreshSocket) {
  Fd fd = tcp_socket();
  EXPECT_FALSE(pending_socket_error(fd.get()));
}

TEST(Socket, OptionsOnABadDescriptorReportEbadf) {
  EXPECT_EQ(set_nonblocking(-1), std::errc::bad_file_descriptor);
  EXPECT_EQ(set_cloexec(-1), std::errc::bad_file_descriptor);
  EXPECT_EQ(set_reuse_addr(-1), std::errc::bad_file_descriptor);
  EXPECT_EQ(pending_socket_error(-1), std::errc::bad_file_descriptor);
}

// A non-blocking connect to a loopback port that is bound but not listening is refused; the
// refusal arrives through SO_ERROR once the socket polls writable.
TEST(Socket, PendingSocketErrorReportsRefusedConnect) {
  // Keep the probe bound (not listening) so the port stays refused and nobody else takes it.
  Fd probe = tcp_socket();
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::getsockname(probe.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);

  Fd fd = tcp_socket();
  int rc = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  ASSERT_EQ(rc, -1);
  if (errno == ECONNREFUSED) GTEST_SKIP() << "kernel refused synchronously";
  ASSERT_EQ(errno, EINPROGRESS);
  pollfd pfd{fd.get(), POLLOUT, 0};
  ASSERT_EQ(::poll(&pfd, 1, 10000), 1);
  EXPECT_EQ(pending_socket_error(fd.get()), std::errc::connection_refused);
  // Reading SO_ERROR cleared it.
  EXPECT_FALSE(pending_socket_error(fd.get()));
}

TEST(Socket, RaiseFdLimitMakesSoftEqualHard) {
  EXPECT_FALSE(raise_fd_limit());
  rlimit limit{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &limit), 0);
  EXPECT_EQ(limit.rlim_cur, limit.rlim_max);
}

}  // namespace
}  // namespace reactor
