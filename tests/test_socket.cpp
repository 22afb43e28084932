// Fd ownership and each socket option, read back with getsockopt/fcntl; Result.
#include "reactor/socket.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include <gtest/gtest.h>

#include "injected_fault.hpp"
#include "reactor/result.hpp"

// The calls socket.cpp makes that cannot be made to fail from outside, failable on demand (this
// executable's definitions take the library's calls; with 64-bit file offsets glibc's names are
// fcntl64, getrlimit64 and setrlimit64). fcntl fails only for the command it is armed for.
namespace {
reactor::test::InjectedFault fcntl_fault;
std::atomic<int> fcntl_fault_cmd{-1};
reactor::test::InjectedFault getrlimit_fault;
reactor::test::InjectedFault setrlimit_fault;
}  // namespace

extern "C" int fcntl64(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void* arg = va_arg(ap, void*);  // what glibc's own fcntl reads: an int or a pointer
  va_end(ap);
  if (cmd == fcntl_fault_cmd.load()) {
    if (int injected_errno = fcntl_fault.take()) {
      errno = injected_errno;
      return -1;
    }
  }
  using Real = int (*)(int, int, ...);
  static const Real real = reactor::test::real_function<Real>("fcntl64");
  return real(fd, cmd, arg);
}
REACTOR_INJECTABLE(getrlimit_fault, getrlimit64, (__rlimit_resource_t resource, rlimit64* limit),
                   (resource, limit))
REACTOR_INJECTABLE(setrlimit_fault, setrlimit64,
                   (__rlimit_resource_t resource, const rlimit64* limit), (resource, limit))

namespace reactor {
namespace {

// Disarms every fault when a test ends, however it ends.
struct Disarm {
  ~Disarm() {
    fcntl_fault.disarm();
    fcntl_fault_cmd = -1;
    getrlimit_fault.disarm();
    setrlimit_fault.disarm();
  }
};

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

// "closes it exactly once (in its destructor or in reset())". Once an Fd has closed its
// descriptor, the kernel hands the same number to the next open (the lowest free one); a second
// close by that Fd, or by a moved-from copy, would close the new owner's descriptor.
TEST(Fd, DestructorClosesOnce) {
  // Closed by the destructor of the Fd it was moved to; the moved-from Fd's own destructor,
  // after the number was reused, must leave the new descriptor alone.
  auto moved_from = std::make_unique<Fd>(tcp_socket());
  const int raw = moved_from->get();
  ASSERT_TRUE(is_open(raw));
  { Fd owner(std::move(*moved_from)); }
  EXPECT_TRUE(is_closed(raw));
  const int reused = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_EQ(reused, raw) << "the test needs the kernel to hand out the same number";
  moved_from.reset();
  EXPECT_TRUE(is_open(reused)) << "a moved-from Fd closed a descriptor it no longer owned";

  // Closed by reset(); then the Fd's destructor must not close the number's next owner.
  {
    Fd fd(reused);
    fd.reset();
    EXPECT_TRUE(is_closed(reused));
    const int again = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_EQ(again, reused);
  }
  EXPECT_TRUE(is_open(reused)) << "the destructor closed again after reset()";
  ::close(reused);
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

// Errors: "every function returns the errno of the failed syscall as a std::error_code". Each
// one, on -1 and on a descriptor that was just closed.
TEST(Socket, OptionsOnABadDescriptorReportEbadf) {
  int closed = -1;
  {
    Fd fd = tcp_socket();
    closed = fd.get();
  }
  ASSERT_TRUE(is_closed(closed));
  for (int fd : {-1, closed}) {
    SCOPED_TRACE("fd " + std::to_string(fd));
    EXPECT_EQ(set_nonblocking(fd), std::errc::bad_file_descriptor);
    EXPECT_EQ(set_nonblocking(fd, false), std::errc::bad_file_descriptor);
    EXPECT_EQ(set_cloexec(fd), std::errc::bad_file_descriptor);
    EXPECT_EQ(set_tcp_nodelay(fd), std::errc::bad_file_descriptor);
    EXPECT_EQ(set_reuse_addr(fd), std::errc::bad_file_descriptor);
    EXPECT_EQ(set_reuse_port(fd), std::errc::bad_file_descriptor);
    EXPECT_EQ(set_send_buffer(fd, 4096), std::errc::bad_file_descriptor);
    EXPECT_EQ(set_recv_buffer(fd, 4096), std::errc::bad_file_descriptor);
    EXPECT_EQ(set_linger_abort(fd), std::errc::bad_file_descriptor);
    EXPECT_EQ(pending_socket_error(fd), std::errc::bad_file_descriptor);
  }
}

// A socket option on something that is not a socket: ENOTSOCK, from setsockopt as it is.
TEST(Socket, SocketOptionsOnAPipeReportEnotsock) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  Fd read_end(fds[0]);
  Fd write_end(fds[1]);
  EXPECT_EQ(set_reuse_addr(read_end.get()), std::errc::not_a_socket);
  EXPECT_EQ(set_linger_abort(read_end.get()), std::errc::not_a_socket);
  EXPECT_EQ(pending_socket_error(read_end.get()), std::errc::not_a_socket);
  EXPECT_FALSE(set_nonblocking(read_end.get())) << "fcntl works on any descriptor";
}

// The second fcntl (the one that sets the flag) failing is reported too, and setting a flag that
// is already as wanted makes no second call at all.
TEST(Socket, FlagSetFailureIsReportedAndAnUnchangedFlagIsNotSetAgain) {
  const Disarm disarm;
  Fd fd = tcp_socket();  // non-blocking and close-on-exec already
  fcntl_fault_cmd = F_SETFL;
  fcntl_fault.arm(EINVAL, -1);
  EXPECT_FALSE(set_nonblocking(fd.get())) << "O_NONBLOCK was set already: no F_SETFL needed";
  EXPECT_EQ(fcntl_fault.injected.load(), 0);
  EXPECT_EQ(set_nonblocking(fd.get(), false), std::errc::invalid_argument);
  EXPECT_TRUE(::fcntl(fd.get(), F_GETFL) & O_NONBLOCK) << "the failed call changed the flag";
  fcntl_fault.disarm();
  fcntl_fault_cmd = F_SETFD;
  fcntl_fault.arm(EBADF);
  EXPECT_EQ(set_cloexec(fd.get(), false), std::errc::bad_file_descriptor);
  EXPECT_TRUE(::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC);
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

// Puts the fd limits back as they were when the test ends, however it ends.
class RestoreFdLimit {
 public:
  RestoreFdLimit() { ok_ = ::getrlimit(RLIMIT_NOFILE, &saved_) == 0; }
  ~RestoreFdLimit() {
    if (ok_) ::setrlimit(RLIMIT_NOFILE, &saved_);
  }
  RestoreFdLimit(const RestoreFdLimit&) = delete;
  RestoreFdLimit& operator=(const RestoreFdLimit&) = delete;
  bool ok() const { return ok_; }
  const rlimit& saved() const { return saved_; }

 private:
  rlimit saved_{};
  bool ok_ = false;
};

// "Raises the soft RLIMIT_NOFILE to the hard limit". test_main.cpp raised it already, so the
// test lowers the soft limit first, then sees the call raise it (and puts it back).
TEST(Socket, RaiseFdLimitRaisesALoweredSoftLimitToTheHard) {
  const RestoreFdLimit restore;
  ASSERT_TRUE(restore.ok());
  const rlim_t hard = restore.saved().rlim_max;
  if (hard < 2) GTEST_SKIP() << "a hard fd limit of " << hard << " leaves nothing to raise";
  rlimit lowered = restore.saved();
  lowered.rlim_cur = hard / 2;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &lowered), 0);

  EXPECT_FALSE(raise_fd_limit());
  rlimit limit{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &limit), 0);
  EXPECT_EQ(limit.rlim_cur, hard);
  EXPECT_EQ(limit.rlim_max, hard);
  // At the hard limit already: nothing to do, and no error.
  EXPECT_FALSE(raise_fd_limit());
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &limit), 0);
  EXPECT_EQ(limit.rlim_cur, hard);
}

// Its errors are getrlimit's and setrlimit's, and a failed raise leaves the limit as it was.
TEST(Socket, RaiseFdLimitReportsGetrlimitAndSetrlimitErrors) {
  const Disarm disarm;
  const RestoreFdLimit restore;
  ASSERT_TRUE(restore.ok());
  const rlim_t hard = restore.saved().rlim_max;
  if (hard < 2) GTEST_SKIP() << "a hard fd limit of " << hard << " leaves nothing to raise";
  rlimit lowered = restore.saved();
  lowered.rlim_cur = hard / 2;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &lowered), 0);

  getrlimit_fault.arm(EFAULT);
  EXPECT_EQ(raise_fd_limit(), std::errc::bad_address);
  setrlimit_fault.arm(EPERM);
  EXPECT_EQ(raise_fd_limit(), std::errc::operation_not_permitted);
  rlimit limit{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &limit), 0);
  EXPECT_EQ(limit.rlim_cur, hard / 2);
}

// ---- Result ----

// "a value or the std::error_code that explains why there is none".
TEST(Result, HoldsAValueOrTheErrorThatExplainsWhyNot) {
  Result<std::string> good(std::string("value"));
  EXPECT_TRUE(good.ok());
  EXPECT_TRUE(good);
  EXPECT_EQ(good.value(), "value");
  EXPECT_EQ(*good, "value");
  EXPECT_EQ(good->size(), 5u);
  EXPECT_FALSE(good.error()) << "error() is empty when ok()";
  const Result<std::string>& const_good = good;
  EXPECT_EQ(const_good.value(), "value");
  EXPECT_EQ(*const_good, "value");
  EXPECT_EQ(const_good->size(), 5u);

  Result<std::string> bad(std::make_error_code(std::errc::connection_refused));
  EXPECT_FALSE(bad.ok());
  EXPECT_FALSE(bad);
  EXPECT_EQ(bad.error(), std::errc::connection_refused);
}

TEST(Result, MoveOnlyValueMovesOut) {
  Result<std::unique_ptr<int>> r(std::make_unique<int>(7));
  std::unique_ptr<int> taken = std::move(r).value();
  ASSERT_TRUE(taken);
  EXPECT_EQ(*taken, 7);
}

// errno_code(): "the current errno as an error_code", of the system category.
TEST(Result, ErrnoCodeReadsTheCurrentErrno) {
  errno = EADDRINUSE;
  const std::error_code ec = errno_code();
  EXPECT_EQ(ec, std::errc::address_in_use);
  EXPECT_EQ(&ec.category(), &std::system_category());
}

// "Accessing value() of a failed Result is a programmer error (asserted in debug builds)", and
// so is a failed Result without an error.
TEST(ResultDeathTest, ValueOfAFailedResultIsAssertedInDebugBuilds) {
#ifdef NDEBUG
  GTEST_SKIP() << "the assertion is compiled out (NDEBUG)";
#else
  Result<int> bad(std::make_error_code(std::errc::io_error));
  EXPECT_DEATH((void)bad.value(), "ok\\(\\)");
  EXPECT_DEATH(Result<int>{std::error_code{}}, "needs a non-zero error_code");
#endif
}

}  // namespace
}  // namespace reactor
