// ListenSocket (bind, SO_REUSEPORT, Unix socket files) and Listener (accepting on a loop,
// the per-readiness bound, every accept4 error injected through the seam of injected_fault.hpp,
// fd exhaustion in a child process under a low RLIMIT_NOFILE).
#include "reactor/listener.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "injected_fault.hpp"
#include "loopback.hpp"
#include "reactor/connection.hpp"
#include "reactor/event_loop.hpp"
#include "reactor/tcp_server.hpp"

// Every accept4 the library makes in this executable comes here first (libfiu's preload wraps
// accept but not accept4).
reactor::test::InjectedFault accept_fault;
REACTOR_INJECTABLE(accept_fault, accept4, (int fd, sockaddr* addr, socklen_t* len, int flags),
                   (fd, addr, len, flags))
// And every epoll_ctl (glibc declares it noexcept, so the interposer is too).
reactor::test::InjectedFault epoll_ctl_fault;
REACTOR_INJECTABLE(epoll_ctl_fault, epoll_ctl,
                   (int epfd, int op, int fd, epoll_event* event) noexcept, (epfd, op, fd, event))

// And listen(2), and open64(2) (what open() compiles to here: the listener's spare fd is
// /dev/null opened with it). open64 is variadic, so its interposer is written out.
reactor::test::InjectedFault listen_fault;
REACTOR_INJECTABLE(listen_fault, listen, (int fd, int backlog) noexcept, (fd, backlog))
reactor::test::InjectedFault open_fault;
extern "C" int open64(const char* path, int flags, ...) {
  mode_t mode = 0;
  if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) {
    va_list args;
    va_start(args, flags);
    mode = va_arg(args, mode_t);
    va_end(args);
  }
  if (int injected_errno = open_fault.take()) {
    errno = injected_errno;
    return -1;
  }
  using Real = int (*)(const char*, int, ...);
  static const Real real = reactor::test::real_function<Real>("open64");
  return real(path, flags, mode);
}

namespace reactor {
namespace {

using namespace std::chrono_literals;
using Deadline = std::chrono::steady_clock::time_point;

using test::connect_errno;
using test::connect_to;
using test::echo_handlers;
using test::InjectedFault;
using test::run_until;
using test::TempDir;
using test::unix_address;
using test::with_clock;

Deadline deadline_in(std::chrono::milliseconds d) {
  return std::chrono::steady_clock::now() + d;
}

int ms_left(Deadline deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

// ---------------------------------------------------------------------------------------------
// ListenSocket

TEST(ListenSocket, PortZeroReportsTheBoundPort) {
  auto socket = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(socket.ok()) << socket.error().message();
  const Address& bound = socket->address();
  EXPECT_EQ(bound.family(), AF_INET);
  ASSERT_NE(bound.port(), 0);

  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ASSERT_EQ(::getsockname(socket->fd(), reinterpret_cast<sockaddr*>(&ss), &len), 0);
  auto actual = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
  ASSERT_TRUE(actual.ok());
  EXPECT_EQ(*actual, bound);
  EXPECT_EQ(connect_errno(bound), 0);
}

TEST(ListenSocket, Ipv6PortZeroReportsTheBoundPort) {
  auto socket = ListenSocket::open(Address::ipv6_loopback(0));
  if (!socket.ok() && socket.error() == std::errc::address_not_available) {
    GTEST_SKIP() << "no IPv6 loopback here";
  }
  ASSERT_TRUE(socket.ok()) << socket.error().message();
  EXPECT_EQ(socket->address().family(), AF_INET6);
  EXPECT_NE(socket->address().port(), 0);
  EXPECT_EQ(connect_errno(socket->address()), 0);
}

// "SO_REUSEADDR is set for TCP; SO_REUSEPORT only on request".
TEST(ListenSocket, TcpSocketsReuseTheAddressAndThePortOnlyOnRequest) {
  auto option = [](int fd, int name) {
    int value = -1;
    socklen_t len = sizeof value;
    EXPECT_EQ(::getsockopt(fd, SOL_SOCKET, name, &value, &len), 0) << std::strerror(errno);
    return value;
  };
  auto plain = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(plain.ok()) << plain.error().message();
  EXPECT_EQ(option(plain->fd(), SO_REUSEADDR), 1);
  EXPECT_EQ(option(plain->fd(), SO_REUSEPORT), 0);
  ListenOptions options;
  options.reuse_port = true;
  auto shared = ListenSocket::open(Address::ipv4_loopback(0), options);
  ASSERT_TRUE(shared.ok()) << shared.error().message();
  EXPECT_EQ(option(shared->fd(), SO_REUSEADDR), 1);
  EXPECT_EQ(option(shared->fd(), SO_REUSEPORT), 1);
}

// "Errors: ..., EADDRNOTAVAIL": an address this host does not have (TEST-NET-1, RFC 5737).
TEST(ListenSocket, AddressNotOnThisHostIsAddressNotAvailable) {
  auto address = Address::parse("192.0.2.1:0");
  ASSERT_TRUE(address.ok());
  auto socket = ListenSocket::open(*address);
  ASSERT_FALSE(socket.ok()) << "192.0.2.1 is configured here";
  EXPECT_EQ(socket.error(), std::errc::address_not_available) << socket.error().message();
}

TEST(ListenSocket, SecondBindOfTheSamePortIsAddressInUse) {
  auto first = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(first.ok()) << first.error().message();
  auto second = ListenSocket::open(first->address());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error(), std::errc::address_in_use) << second.error().message();
}

TEST(ListenSocket, ReusePortLetsTwoSocketsBindTheSamePort) {
  ListenOptions options;
  options.reuse_port = true;
  auto first = ListenSocket::open(Address::ipv4_loopback(0), options);
  ASSERT_TRUE(first.ok()) << first.error().message();
  auto second = ListenSocket::open(first->address(), options);
  ASSERT_TRUE(second.ok()) << second.error().message();
  EXPECT_EQ(second->address(), first->address());
}

TEST(ListenSocket, ReusePortOnOneSocketOnlyIsStillAddressInUse) {
  auto first = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(first.ok()) << first.error().message();
  ListenOptions options;
  options.reuse_port = true;
  auto second = ListenSocket::open(first->address(), options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error(), std::errc::address_in_use);
}

TEST(ListenSocket, UnixBindCreatesTheSocketFileAndAcceptsConnections) {
  TempDir dir;
  const std::string path = dir.file("live.sock");
  auto socket = ListenSocket::open(unix_address(path));
  ASSERT_TRUE(socket.ok()) << socket.error().message();
  struct stat st {};
  ASSERT_EQ(::lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(socket->address(), unix_address(path));
  EXPECT_EQ(connect_errno(unix_address(path)), 0);
}

TEST(ListenSocket, StaleUnixSocketFileIsReplaced) {
  TempDir dir;
  const std::string path = dir.file("stale.sock");
  const Address address = unix_address(path);
  {
    // What a crashed server leaves behind: the file of a socket nobody accepts on.
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::bind(fd, address.sockaddr_ptr(), address.length()), 0);
    ::close(fd);
  }
  ASSERT_TRUE(path_exists(path));
  ASSERT_EQ(connect_errno(address), ECONNREFUSED);

  auto socket = ListenSocket::open(address);
  ASSERT_TRUE(socket.ok()) << socket.error().message();
  EXPECT_EQ(connect_errno(address), 0);
}

TEST(ListenSocket, LiveUnixSocketIsAddressInUseAndKeepsServing) {
  TempDir dir;
  const std::string path = dir.file("live.sock");
  const Address address = unix_address(path);
  auto live = ListenSocket::open(address);
  ASSERT_TRUE(live.ok()) << live.error().message();

  auto second = ListenSocket::open(address);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error(), std::errc::address_in_use) << second.error().message();
  // The failed attempt neither unlinked nor replaced the live socket's file.
  ASSERT_TRUE(path_exists(path));
  EXPECT_EQ(connect_errno(address), 0);
}

// "a live one is EADDRINUSE": a live server whose backlog is full refuses the probe's connect
// with EAGAIN, not ECONNREFUSED; its socket file must not be taken for a stale one.
TEST(ListenSocket, LiveUnixSocketWithAFullBacklogIsAddressInUse) {
  TempDir dir;
  const std::string path = dir.file("busy.sock");
  const Address address = unix_address(path);
  ListenOptions options;
  options.backlog = 0;
  auto live = ListenSocket::open(address, options);
  ASSERT_TRUE(live.ok()) << live.error().message();
  std::vector<Fd> queued;
  ASSERT_NO_FATAL_FAILURE(test::fill_unix_backlog(address, queued));

  auto second = ListenSocket::open(address);
  ASSERT_FALSE(second.ok()) << "the busy server's socket file was replaced";
  EXPECT_EQ(second.error(), std::errc::address_in_use) << second.error().message();
  // Still the live server's file: once it accepts one, a new client gets in.
  const int taken = ::accept4(live->fd(), nullptr, nullptr, SOCK_CLOEXEC);
  ASSERT_GE(taken, 0) << std::strerror(errno);
  ::close(taken);
  EXPECT_EQ(connect_errno(address), 0);
}

// "the file is removed when the ListenSocket is destroyed", and a failed open leaves none: a
// listen() that fails after the bind removes the file it created.
TEST(ListenSocket, UnixSocketFileIsRemovedWhenListenFails) {
  TempDir dir;
  const std::string path = dir.file("no-listen.sock");
  listen_fault.arm(ENOBUFS, 1);
  auto socket = ListenSocket::open(unix_address(path));
  listen_fault.disarm();
  ASSERT_FALSE(socket.ok());
  EXPECT_EQ(socket.error(), std::errc::no_buffer_space) << socket.error().message();
  EXPECT_FALSE(path_exists(path)) << "a failed open left its socket file behind";
  EXPECT_TRUE(ListenSocket::open(unix_address(path)).ok());

  // TCP: the error, and no socket left (the port can be bound again).
  listen_fault.arm(EADDRINUSE, 1);
  auto tcp = ListenSocket::open(Address::ipv4_loopback(0));
  listen_fault.disarm();
  ASSERT_FALSE(tcp.ok());
  EXPECT_EQ(tcp.error(), std::errc::address_in_use) << tcp.error().message();
}

TEST(ListenSocket, UnixSocketFileIsRemovedOnDestruction) {
  TempDir dir;
  const std::string path = dir.file("gone.sock");
  {
    auto socket = ListenSocket::open(unix_address(path));
    ASSERT_TRUE(socket.ok()) << socket.error().message();
    ASSERT_TRUE(path_exists(path));
  }
  EXPECT_FALSE(path_exists(path));
}

TEST(ListenSocket, MovedFromUnixSocketDoesNotRemoveTheFile) {
  TempDir dir;
  const std::string path = dir.file("moved.sock");
  std::optional<ListenSocket> owner;
  {
    auto opened = ListenSocket::open(unix_address(path));
    ASSERT_TRUE(opened.ok()) << opened.error().message();
    owner.emplace(std::move(*opened));
  }  // the moved-from ListenSocket is destroyed here
  ASSERT_TRUE(path_exists(path));
  EXPECT_EQ(connect_errno(unix_address(path)), 0);
  owner.reset();
  EXPECT_FALSE(path_exists(path));
}

// Move assignment: the socket assigned over is closed and its file removed; the file of the
// one moved in is the target's to remove now.
TEST(ListenSocket, MoveAssigningOverAUnixSocketRemovesItsFile) {
  TempDir dir;
  const std::string old_path = dir.file("old.sock");
  const std::string new_path = dir.file("new.sock");
  auto target = ListenSocket::open(unix_address(old_path));
  ASSERT_TRUE(target.ok()) << target.error().message();
  {
    auto source = ListenSocket::open(unix_address(new_path));
    ASSERT_TRUE(source.ok()) << source.error().message();
    *target = std::move(*source);
  }  // the moved-from source is destroyed here
  EXPECT_FALSE(path_exists(old_path));
  EXPECT_EQ(target->address(), unix_address(new_path));
  ASSERT_TRUE(path_exists(new_path));
  EXPECT_EQ(connect_errno(unix_address(new_path)), 0);
}

// Over a TCP socket: the old socket is closed (its port refuses connections), no file involved.
TEST(ListenSocket, MoveAssigningOverATcpSocketClosesIt) {
  auto target = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(target.ok()) << target.error().message();
  const Address old_address = target->address();
  auto source = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(source.ok()) << source.error().message();
  const Address new_address = source->address();
  *target = std::move(*source);
  EXPECT_EQ(connect_errno(old_address), ECONNREFUSED);
  EXPECT_EQ(target->address(), new_address);
  EXPECT_EQ(connect_errno(new_address), 0);
}

TEST(ListenSocket, RegularFileAtTheUnixPathIsNotRemoved) {
  TempDir dir;
  const std::string path = dir.file("data.txt");
  {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, "keep", 4), 4);
    ::close(fd);
  }
  auto socket = ListenSocket::open(unix_address(path));
  ASSERT_FALSE(socket.ok());
  EXPECT_EQ(socket.error(), std::errc::address_in_use) << socket.error().message();
  struct stat st {};
  ASSERT_EQ(::lstat(path.c_str(), &st), 0) << "the regular file was removed";
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_size, 4);
}

TEST(ListenSocket, AbstractUnixNameBindsAndRefusesASecondBind) {
  const std::string name = "unix:@reactor-test-listener-" + std::to_string(::getpid());
  auto address = Address::parse(name);
  ASSERT_TRUE(address.ok());
  auto first = ListenSocket::open(*address);
  ASSERT_TRUE(first.ok()) << first.error().message();
  EXPECT_EQ(connect_errno(*address), 0);
  auto second = ListenSocket::open(*address);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error(), std::errc::address_in_use);
}

// ---------------------------------------------------------------------------------------------
// Listener on one loop

struct Accepted {
  std::vector<Fd> sockets;
  std::vector<Address> peers;
};

Listener::AcceptHandler collect_into(Accepted& out) {
  return [&out](Fd socket, const Address& peer) {
    out.sockets.push_back(std::move(socket));
    out.peers.push_back(peer);
  };
}

// ---------------------------------------------------------------------------------------------
// ListenSocket::adopt: sockets inherited from a parent process

// A listening socket as a parent process leaves it: plain socket(), blocking, inheritable.
Fd inherited_listener(const Address& address) {
  Fd fd(::socket(address.family(), SOCK_STREAM, 0));
  EXPECT_TRUE(fd) << std::strerror(errno);
  EXPECT_EQ(::bind(fd.get(), address.sockaddr_ptr(), address.length()), 0) << std::strerror(errno);
  EXPECT_EQ(::listen(fd.get(), 16), 0) << std::strerror(errno);
  return fd;
}

// listener.hpp: adopt() "makes it non-blocking and close-on-exec, and reads its family and bound
// address (getsockname)".
TEST(ListenSocket, AdoptedTcpSocketReportsItsBoundAddressAndIsNonBlockingAndCloseOnExec) {
  Fd fd = inherited_listener(Address::ipv4_loopback(0));
  const int raw = fd.get();
  ASSERT_FALSE(::fcntl(raw, F_GETFL) & O_NONBLOCK);
  ASSERT_FALSE(::fcntl(raw, F_GETFD) & FD_CLOEXEC);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ASSERT_EQ(::getsockname(raw, reinterpret_cast<sockaddr*>(&ss), &len), 0);
  auto bound = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
  ASSERT_TRUE(bound.ok());

  auto socket = ListenSocket::adopt(std::move(fd));
  ASSERT_TRUE(socket.ok()) << socket.error().message();
  EXPECT_EQ(socket->fd(), raw);
  EXPECT_EQ(socket->address(), *bound);
  EXPECT_EQ(socket->address().family(), AF_INET);
  EXPECT_NE(socket->address().port(), 0);
  EXPECT_TRUE(::fcntl(raw, F_GETFL) & O_NONBLOCK);
  EXPECT_TRUE(::fcntl(raw, F_GETFD) & FD_CLOEXEC);
}

// listener.hpp: "An adopted Unix socket's file is never removed: whoever bound it owns it."
TEST(ListenSocket, AdoptedUnixSocketReportsItsPathAndNeverRemovesTheFile) {
  TempDir dir;
  const std::string path = dir.file("inherited.sock");
  {
    auto socket = ListenSocket::adopt(inherited_listener(unix_address(path)));
    ASSERT_TRUE(socket.ok()) << socket.error().message();
    EXPECT_EQ(socket->address(), unix_address(path));
    EXPECT_EQ(connect_errno(unix_address(path)), 0);
    // Moved and move-assigned over: still not ours to remove.
    ListenSocket moved = std::move(*socket);
    auto other = ListenSocket::open(Address::ipv4_loopback(0));
    ASSERT_TRUE(other.ok());
    moved = std::move(*other);
  }
  EXPECT_TRUE(path_exists(path));
}

// listener.hpp: adopt() errors "ENOTSOCK (not a socket)".
TEST(ListenSocket, AdoptingAFileThatIsNotASocketIsNotASocketError) {
  Fd file(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(file);
  auto socket = ListenSocket::adopt(std::move(file));
  ASSERT_FALSE(socket.ok());
  EXPECT_EQ(socket.error(), std::errc::not_a_socket);
}

// listener.hpp: adopt() errors "EINVAL (a stream socket that does not listen)".
TEST(ListenSocket, AdoptingABoundSocketThatDoesNotListenIsInvalidArgument) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const Address any_port = Address::ipv4_loopback(0);
  ASSERT_EQ(::bind(fd.get(), any_port.sockaddr_ptr(), any_port.length()), 0);
  auto socket = ListenSocket::adopt(std::move(fd));
  ASSERT_FALSE(socket.ok());
  EXPECT_EQ(socket.error(), std::errc::invalid_argument);
}

// listener.hpp: adopt() errors "EPROTOTYPE (a socket, but not SOCK_STREAM: UDP, ...)".
TEST(ListenSocket, AdoptingAUdpSocketIsWrongProtocolType) {
  Fd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  const Address any_port = Address::ipv4_loopback(0);
  ASSERT_EQ(::bind(fd.get(), any_port.sockaddr_ptr(), any_port.length()), 0);
  auto socket = ListenSocket::adopt(std::move(fd));
  ASSERT_FALSE(socket.ok());
  EXPECT_EQ(socket.error(), std::errc::wrong_protocol_type);
}

// listener.hpp: adopt() "takes a socket that is already bound and listening": a Listener on it
// accepts, including a connection that was queued before the adoption.
TEST(ListenSocket, AdoptedSocketAcceptsQueuedAndNewConnections) {
  Fd fd = inherited_listener(Address::ipv4_loopback(0));
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ASSERT_EQ(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len), 0);
  auto bound = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
  ASSERT_TRUE(bound.ok());
  Fd queued(connect_to(*bound));  // in the backlog before anyone adopts the socket
  ASSERT_TRUE(queued) << std::strerror(errno);

  auto socket = ListenSocket::adopt(std::move(fd));
  ASSERT_TRUE(socket.ok()) << socket.error().message();
  // A blocking socket would hang the loop in accept4 once the queue is empty.
  ASSERT_TRUE(::fcntl(socket->fd(), F_GETFL) & O_NONBLOCK);
  EventLoop loop;
  Accepted accepted;
  Listener listener(loop, *socket, collect_into(accepted));
  ASSERT_FALSE(listener.start());
  Fd later(connect_to(socket->address()));
  ASSERT_TRUE(later) << std::strerror(errno);
  ASSERT_TRUE(run_until(loop, [&] { return accepted.sockets.size() == 2; }));
  EXPECT_EQ(listener.accepted(), 2u);
}

TEST(Listener, AcceptsAndReportsThePeerAddress) {
  auto socket = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(socket.ok()) << socket.error().message();
  EventLoop loop;
  Accepted accepted;
  Listener listener(loop, *socket, collect_into(accepted));
  ASSERT_FALSE(listener.start());

  int client = connect_to(socket->address());
  ASSERT_GE(client, 0) << std::strerror(errno);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ASSERT_EQ(::getsockname(client, reinterpret_cast<sockaddr*>(&ss), &len), 0);
  auto local = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
  ASSERT_TRUE(local.ok());

  ASSERT_TRUE(run_until(loop, [&] { return accepted.sockets.size() == 1; }));
  EXPECT_EQ(accepted.peers[0], *local);
  EXPECT_EQ(listener.accepted(), 1u);
  const int flags = ::fcntl(accepted.sockets[0].get(), F_GETFL);
  EXPECT_TRUE(flags & O_NONBLOCK);
  EXPECT_TRUE(::fcntl(accepted.sockets[0].get(), F_GETFD) & FD_CLOEXEC);
  ::close(client);
}

TEST(Listener, AcceptsPerEventBoundsAcceptsPerReadiness) {
  auto socket = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(socket.ok()) << socket.error().message();
  std::vector<int> clients;
  for (int i = 0; i < 10; ++i) {
    int fd = connect_to(socket->address());
    ASSERT_GE(fd, 0) << std::strerror(errno);
    clients.push_back(fd);
  }
  EventLoop loop;
  Accepted accepted;
  Listener::Options options;
  options.accepts_per_event = 3;
  Listener listener(loop, *socket, collect_into(accepted), options);
  ASSERT_FALSE(listener.start());

  // The ten connections are complete in the kernel's queue: the first readiness is immediate.
  EXPECT_EQ(loop.run_once(10s), 1u);
  EXPECT_EQ(accepted.sockets.size(), 3u);
  EXPECT_EQ(listener.accepted(), 3u);
  // Level-triggered: what is left stays ready, three at a time.
  loop.run_once(10s);
  EXPECT_EQ(accepted.sockets.size(), 6u);
  ASSERT_TRUE(run_until(loop, [&] { return accepted.sockets.size() == 10; }));
  loop.run_once(0ms);
  EXPECT_EQ(accepted.sockets.size(), 10u);
  for (int fd : clients)
    ::close(fd);
}

TEST(Listener, StopDeregistersAndStartResumes) {
  auto socket = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(socket.ok()) << socket.error().message();
  EventLoop loop;
  Accepted accepted;
  const std::size_t before = loop.registrations();
  Listener listener(loop, *socket, collect_into(accepted));
  ASSERT_FALSE(listener.start());
  listener.stop();
  EXPECT_EQ(loop.registrations(), before);

  int client = connect_to(socket->address());
  ASSERT_GE(client, 0);
  loop.run_once(0ms);
  EXPECT_TRUE(accepted.sockets.empty());

  ASSERT_FALSE(listener.start());
  ASSERT_TRUE(run_until(loop, [&] { return accepted.sockets.size() == 1; }));
  ::close(client);
}

// stop() from on_accept takes effect at once: no further accept4 in that readiness, the other
// queued connections wait for the next start().
TEST(Listener, StopFromOnAcceptStopsAcceptingAtOnce) {
  auto socket = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(socket.ok()) << socket.error().message();
  std::vector<int> clients;
  for (int i = 0; i < 3; ++i) {
    int fd = connect_to(socket->address());
    ASSERT_GE(fd, 0) << std::strerror(errno);
    clients.push_back(fd);
  }
  EventLoop loop;
  const std::size_t before = loop.registrations();
  Accepted accepted;
  std::optional<Listener> listener;
  listener.emplace(loop, *socket, [&](Fd fd, const Address& peer) {
    accepted.sockets.push_back(std::move(fd));
    accepted.peers.push_back(peer);
    listener->stop();
  });
  ASSERT_FALSE(listener->start());
  EXPECT_EQ(loop.run_once(10s), 1u);
  EXPECT_EQ(accepted.sockets.size(), 1u);
  EXPECT_EQ(loop.registrations(), before);
  loop.run_once(0ms);
  EXPECT_EQ(accepted.sockets.size(), 1u);
  ASSERT_FALSE(listener->start());
  loop.run_once(10s);
  EXPECT_EQ(accepted.sockets.size(), 2u);
  for (int fd : clients)
    ::close(fd);
}

// start() on a started listener changes nothing: still one registration.
TEST(Listener, SecondStartKeepsOneRegistration) {
  auto socket = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(socket.ok()) << socket.error().message();
  EventLoop loop;
  Accepted accepted;
  const std::size_t before = loop.registrations();
  Listener listener(loop, *socket, collect_into(accepted));
  ASSERT_FALSE(listener.start());
  ASSERT_FALSE(listener.start());
  EXPECT_EQ(loop.registrations(), before + 1);
  int client = connect_to(socket->address());
  ASSERT_GE(client, 0);
  ASSERT_TRUE(run_until(loop, [&] { return accepted.sockets.size() == 1; }));
  ::close(client);
}

// How many epoll instances of this process watch `fd`, and how many of those with
// EPOLLEXCLUSIVE (from /proc/self/fdinfo: "tfd: FD events: HEX ...").
struct EpollWatches {
  int all = 0;
  int exclusive = 0;
};

EpollWatches epoll_watches_of(int fd) {
  EpollWatches w;
  DIR* dir = ::opendir("/proc/self/fdinfo");
  if (!dir) return w;
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream info(std::string("/proc/self/fdinfo/") + e->d_name);
    std::string line;
    while (std::getline(info, line)) {
      std::istringstream fields(line);
      std::string tag;
      std::string events_tag;
      int tfd = -1;
      unsigned events = 0;
      if (!(fields >> tag >> tfd >> events_tag >> std::hex >> events)) continue;
      if (tag != "tfd:" || events_tag != "events:" || tfd != fd) continue;
      ++w.all;
      if (events & EPOLLEXCLUSIVE) ++w.exclusive;
    }
  }
  ::closedir(dir);
  return w;
}

// "Several loops may share one ListenSocket (each Listener registers it with EPOLLEXCLUSIVE, so
// one wake-up per connection, not a thundering herd)": with Options::exclusive each loop's
// registration carries EPOLLEXCLUSIVE, and either loop accepts from the shared socket. (That
// the kernel then wakes one waiter is its promise, not one a test can pin down.)
TEST(Listener, LoopsSharingASocketRegisterItExclusiveAndEachAccepts) {
  auto socket = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(socket.ok()) << socket.error().message();
  EventLoop first_loop;
  EventLoop second_loop;
  Accepted first;
  Accepted second;
  Listener::Options options;
  options.exclusive = true;
  Listener first_listener(first_loop, *socket, collect_into(first), options);
  Listener second_listener(second_loop, *socket, collect_into(second), options);
  ASSERT_FALSE(first_listener.start());
  ASSERT_FALSE(second_listener.start());
  const EpollWatches watches = epoll_watches_of(socket->fd());
  EXPECT_EQ(watches.all, 2);
  EXPECT_EQ(watches.exclusive, 2);

  // The loops run one at a time here: whichever runs takes the connection.
  int a = connect_to(socket->address());
  ASSERT_GE(a, 0);
  ASSERT_TRUE(run_until(first_loop, [&] { return first.sockets.size() == 1; }));
  int b = connect_to(socket->address());
  ASSERT_GE(b, 0);
  ASSERT_TRUE(run_until(second_loop, [&] { return second.sockets.size() == 1; }));
  EXPECT_EQ(first.sockets.size(), 1u);
  ::close(a);
  ::close(b);

  // Without the option, no EPOLLEXCLUSIVE.
  first_listener.stop();
  second_listener.stop();
  Listener plain(first_loop, *socket, collect_into(first));
  ASSERT_FALSE(plain.start());
  const EpollWatches plain_watches = epoll_watches_of(socket->fd());
  EXPECT_EQ(plain_watches.all, 1);
  EXPECT_EQ(plain_watches.exclusive, 0);
}

TEST(Listener, DestroyingTheListenerDeregistersIt) {
  auto socket = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(socket.ok()) << socket.error().message();
  EventLoop loop;
  const std::size_t before = loop.registrations();
  Accepted accepted;
  {
    Listener listener(loop, *socket, collect_into(accepted));
    ASSERT_FALSE(listener.start());
    EXPECT_EQ(loop.registrations(), before + 1);
  }
  EXPECT_EQ(loop.registrations(), before);
  int client = connect_to(socket->address());
  ASSERT_GE(client, 0);
  loop.run_once(0ms);
  EXPECT_TRUE(accepted.sockets.empty());
  ::close(client);
}

// ---------------------------------------------------------------------------------------------
// accept4 errors, injected. Each test disarms the fault when it ends, whatever happened.

struct DisarmAtExit {
  ~DisarmAtExit() {
    accept_fault.disarm();
    epoll_ctl_fault.disarm();
    listen_fault.disarm();
    open_fault.disarm();
  }
};

// A listener on a loop whose timers move only with `clock`, one connection pending in the
// kernel's queue, and the errors the listener reported.
struct PendingConnection {
  explicit PendingConnection(ManualClock& clock)
      : socket(ListenSocket::open(Address::ipv4_loopback(0))), loop(with_clock(clock)) {
    if (!socket.ok()) return;
    Listener::Options options;
    options.pause_on_exhaustion = kPause;
    before = loop.registrations();
    listener.emplace(loop, *socket, collect_into(accepted), options);
    listener->set_error_handler([this](std::error_code ec) { errors.push_back(ec); });
    client = connect_to(socket->address());
  }
  ~PendingConnection() {
    if (client >= 0) ::close(client);
  }
  bool ready() { return socket.ok() && client >= 0 && !listener->start(); }
  bool registered() const { return loop.registrations() == before + 1; }
  // Iterations with the connection pending: a listener that cannot clear its readiness would be
  // called in each of them.
  void spin_for(int iterations) {
    for (int i = 0; i < iterations; ++i)
      loop.run_once(std::chrono::milliseconds(1));
  }

  static constexpr Duration kPause = std::chrono::milliseconds(100);
  Result<ListenSocket> socket;
  EventLoop loop;
  std::size_t before = 0;
  Accepted accepted;
  std::vector<std::error_code> errors;
  std::optional<Listener> listener;
  int client = -1;
};

constexpr int kIterations = 50;

class AcceptPausingError : public ::testing::TestWithParam<int> {};

// ENOMEM and ENOBUFS (memory pressure, which only time relieves) and errors the listener does
// not know: accepting pauses for pause_on_exhaustion, on_error reports the error once, and the
// pending connection does not make the loop call accept4 again and again; when the pause ends
// the connection is accepted.
TEST_P(AcceptPausingError, PausesAcceptingOnceInsteadOfSpinningThenAccepts) {
  const int err = GetParam();
  DisarmAtExit disarm;
  ManualClock clock;
  PendingConnection p(clock);
  ASSERT_TRUE(p.ready()) << std::strerror(errno);

  accept_fault.arm(err, -1);
  p.spin_for(kIterations);
  EXPECT_EQ(accept_fault.injected.load(), 1) << "accept4 calls, one failed per iteration";
  ASSERT_EQ(p.errors.size(), 1u) << "on_error calls in " << kIterations << " iterations";
  EXPECT_EQ(p.errors[0], std::error_code(err, std::system_category()));
  EXPECT_FALSE(p.registered()) << "the listener is still registered: not paused";
  EXPECT_EQ(p.listener->fd_exhaustion(), 0u) << "a memory error is not fd exhaustion";
  EXPECT_TRUE(p.accepted.sockets.empty());

  // Still failing when the pause ends: one more try, one more report, paused again.
  clock.advance(PendingConnection::kPause);
  p.spin_for(kIterations);
  EXPECT_EQ(accept_fault.injected.load(), 2);
  EXPECT_EQ(p.errors.size(), 2u);
  EXPECT_FALSE(p.registered());

  accept_fault.disarm();
  clock.advance(PendingConnection::kPause);
  ASSERT_TRUE(run_until(p.loop, [&] { return p.accepted.sockets.size() == 1; }));
  EXPECT_TRUE(p.registered());
  EXPECT_EQ(p.listener->accepted(), 1u);
  EXPECT_EQ(p.errors.size(), 2u);
}

INSTANTIATE_TEST_SUITE_P(Listener, AcceptPausingError,
                         ::testing::Values(ENOMEM, ENOBUFS, EBADF, EINVAL, ENOTSOCK, EFAULT),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::string(strerrorname_np(info.param));
                         });

class AcceptSkipOneError : public ::testing::TestWithParam<int> {};

// ECONNABORTED, EPROTO, EPERM (a firewall) and the network errors Linux passes on through
// accept: that one connection is lost, the next accept4 goes on at once, nothing is reported.
TEST_P(AcceptSkipOneError, SkipsOneAndAcceptsTheNextInTheSameReadiness) {
  DisarmAtExit disarm;
  ManualClock clock;
  PendingConnection p(clock);
  ASSERT_TRUE(p.ready()) << std::strerror(errno);

  accept_fault.arm(GetParam(), 1);
  EXPECT_EQ(p.loop.run_once(std::chrono::seconds(10)), 1u);
  EXPECT_EQ(accept_fault.injected.load(), 1);
  EXPECT_EQ(p.accepted.sockets.size(), 1u);
  EXPECT_TRUE(p.errors.empty());
  EXPECT_TRUE(p.registered());
}

INSTANTIATE_TEST_SUITE_P(Listener, AcceptSkipOneError,
                         ::testing::Values(ECONNABORTED, EPROTO, EPERM, EINTR, ENETDOWN,
                                           ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP,
                                           ENETUNREACH),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::string(strerrorname_np(info.param));
                         });

class FdExhaustion : public ::testing::TestWithParam<int> {};

// EMFILE or ENFILE with the spare: the pending connection is accepted on the spare's fd and
// closed at once (the client reads EOF), counted and reported once.
TEST_P(FdExhaustion, ShedsThePendingConnectionThroughTheSpare) {
  const int err = GetParam();
  DisarmAtExit disarm;
  ManualClock clock;
  PendingConnection p(clock);
  ASSERT_TRUE(p.ready()) << std::strerror(errno);

  accept_fault.arm(err, 1);
  p.spin_for(kIterations);
  EXPECT_EQ(accept_fault.injected.load(), 1);
  EXPECT_TRUE(p.accepted.sockets.empty());
  EXPECT_EQ(p.listener->fd_exhaustion(), 1u);
  ASSERT_EQ(p.errors.size(), 1u);
  EXPECT_EQ(p.errors[0], std::error_code(err, std::system_category()));
  EXPECT_TRUE(p.registered());
  char c;
  EXPECT_EQ(::recv(p.client, &c, 1, MSG_DONTWAIT), 0) << "the shed connection was not closed";
}

// EMFILE or ENFILE again on the spare's turn (another thread took the fd the spare gave back;
// with ENFILE, another process): the connection stays pending, so the listener pauses rather
// than try again every iteration.
TEST_P(FdExhaustion, ThatTheSpareCannotRelievePausesInsteadOfSpinning) {
  DisarmAtExit disarm;
  ManualClock clock;
  PendingConnection p(clock);
  ASSERT_TRUE(p.ready()) << std::strerror(errno);

  accept_fault.arm(GetParam(), -1);
  p.spin_for(kIterations);
  EXPECT_EQ(accept_fault.injected.load(), 2) << "accept4 calls: the first and the spare's";
  EXPECT_EQ(p.errors.size(), 1u);
  EXPECT_EQ(p.listener->fd_exhaustion(), 1u);
  EXPECT_FALSE(p.registered());

  accept_fault.disarm();
  clock.advance(PendingConnection::kPause);
  ASSERT_TRUE(run_until(p.loop, [&] { return p.accepted.sockets.size() == 1; }));
  EXPECT_TRUE(p.registered());
}

INSTANTIATE_TEST_SUITE_P(Listener, FdExhaustion, ::testing::Values(EMFILE, ENFILE),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::string(strerrorname_np(info.param));
                         });

// "Should the spare not relieve it (no spare, ...), accepting pauses": the spare could not be
// reopened after shedding (open fails as well), so the next exhaustion has no fd to give up:
// accepting pauses without a second accept4, the connection stays queued (not shed), and it
// is accepted when the pause ends.
TEST(Listener, FdExhaustionWithNoSparePausesAndTheConnectionWaits) {
  DisarmAtExit disarm;
  ManualClock clock;
  PendingConnection p(clock);
  ASSERT_TRUE(p.ready()) << std::strerror(errno);

  accept_fault.arm(EMFILE, 1);
  open_fault.arm(EMFILE, -1);
  p.spin_for(kIterations);
  ASSERT_EQ(p.errors.size(), 1u);
  ASSERT_EQ(open_fault.injected.load(), 1) << "the spare was not reopened after shedding";
  EXPECT_TRUE(p.registered());
  char c;
  EXPECT_EQ(::recv(p.client, &c, 1, MSG_DONTWAIT), 0) << "the first connection was not shed";

  const int second = connect_to(p.socket->address());
  ASSERT_GE(second, 0) << std::strerror(errno);
  accept_fault.arm(EMFILE, -1);
  p.spin_for(kIterations);
  EXPECT_EQ(accept_fault.injected.load(), 1) << "accept4 calls: no spare, no second try";
  EXPECT_EQ(open_fault.injected.load(), 2) << "one more try to reopen the spare";
  EXPECT_EQ(p.errors.size(), 2u);
  EXPECT_EQ(p.listener->fd_exhaustion(), 2u);
  EXPECT_FALSE(p.registered()) << "not paused";
  EXPECT_LT(::recv(second, &c, 1, MSG_DONTWAIT), 0) << "the second connection was shed";

  accept_fault.disarm();
  open_fault.disarm();
  clock.advance(PendingConnection::kPause);
  ASSERT_TRUE(run_until(p.loop, [&] { return p.accepted.sockets.size() == 1; }));
  EXPECT_TRUE(p.registered());
  ::close(second);
}

// accept4 reports EMFILE before it looks at the queue. When the spare's turn finds the queue
// empty (someone else took the connection), the listener stops there: no pause, no spin, and
// the next connection is accepted at once.
TEST(Listener, FdExhaustionWithAnEmptyQueueNeitherPausesNorSpins) {
  DisarmAtExit disarm;
  ManualClock clock;
  PendingConnection p(clock);
  ASSERT_TRUE(p.ready()) << std::strerror(errno);

  int taken = -1;
  p.listener->set_error_handler([&](std::error_code ec) {
    p.errors.push_back(ec);
    // Another process sharing the socket accepts the connection meanwhile.
    taken = ::accept4(p.socket->fd(), nullptr, nullptr, SOCK_CLOEXEC);
  });
  accept_fault.arm(EMFILE, 1);
  p.spin_for(kIterations);
  ASSERT_GE(taken, 0) << std::strerror(errno);
  EXPECT_EQ(p.errors.size(), 1u);
  EXPECT_EQ(p.listener->fd_exhaustion(), 1u);
  EXPECT_TRUE(p.registered()) << "paused although nothing was pending";
  EXPECT_TRUE(p.accepted.sockets.empty());

  const int next = connect_to(p.socket->address());
  ASSERT_GE(next, 0) << std::strerror(errno);
  p.spin_for(5);  // no clock advance: a paused listener would not accept
  EXPECT_EQ(p.accepted.sockets.size(), 1u);
  EXPECT_EQ(p.errors.size(), 1u);
  ::close(taken);
  ::close(next);
}

// A connection lost on the spare's turn (ECONNABORTED, ...) is one off the queue like a shed
// one: accepting goes on in the same readiness.
TEST(Listener, ConnectionLostOnTheSparesTurnGoesOn) {
  DisarmAtExit disarm;
  ManualClock clock;
  PendingConnection p(clock);
  ASSERT_TRUE(p.ready()) << std::strerror(errno);

  accept_fault.arm(EMFILE, 1);
  p.listener->set_error_handler([&p](std::error_code ec) {
    p.errors.push_back(ec);
    if (ec == std::errc::too_many_files_open) accept_fault.arm(ECONNABORTED, 1);
  });
  EXPECT_EQ(p.loop.run_once(std::chrono::seconds(10)), 1u);
  EXPECT_EQ(p.errors.size(), 1u);
  EXPECT_TRUE(p.registered());
  // The injected ECONNABORTED left the real connection queued: the next accept4 takes it.
  EXPECT_EQ(p.accepted.sockets.size(), 1u);
}

// A memory error on the spare's turn pauses too.
TEST(Listener, MemoryErrorOnTheSparesTurnPauses) {
  DisarmAtExit disarm;
  ManualClock clock;
  PendingConnection p(clock);
  ASSERT_TRUE(p.ready()) << std::strerror(errno);

  accept_fault.arm(EMFILE, 1);
  // The spare's accept4 is the next call: fail it with ENOMEM, then nothing.
  p.listener->set_error_handler([&p](std::error_code ec) {
    p.errors.push_back(ec);
    if (ec == std::errc::too_many_files_open) accept_fault.arm(ENOMEM, 1);
  });
  p.spin_for(kIterations);
  EXPECT_EQ(p.errors.size(), 1u);
  EXPECT_FALSE(p.registered());
  EXPECT_TRUE(p.accepted.sockets.empty());

  clock.advance(PendingConnection::kPause);
  ASSERT_TRUE(run_until(p.loop, [&] { return p.accepted.sockets.size() == 1; }));
}

// stop() stops for good: a pause under way does not register the listener again when it
// ends; start() does, at once. Errors pause accepting with no error handler set as well.
TEST(Listener, StopDuringAPauseCancelsTheResume) {
  DisarmAtExit disarm;
  ManualClock clock;
  PendingConnection p(clock);
  ASSERT_TRUE(p.ready()) << std::strerror(errno);
  p.listener->set_error_handler(nullptr);

  accept_fault.arm(ENOMEM, 1);
  p.spin_for(kIterations);
  ASSERT_EQ(accept_fault.injected.load(), 1);
  ASSERT_FALSE(p.registered()) << "not paused";
  p.listener->stop();
  clock.advance(10 * PendingConnection::kPause);
  p.spin_for(kIterations);
  EXPECT_FALSE(p.registered()) << "the pause's end registered a stopped listener";
  EXPECT_TRUE(p.accepted.sockets.empty());

  ASSERT_FALSE(p.listener->start());
  EXPECT_TRUE(p.registered());
  ASSERT_TRUE(run_until(p.loop, [&] { return p.accepted.sockets.size() == 1; }));
}

// start() during a pause registers at once (the pause's own retry is cancelled: still one
// registration when its time comes).
TEST(Listener, StartDuringAPauseRegistersAtOnce) {
  DisarmAtExit disarm;
  ManualClock clock;
  PendingConnection p(clock);
  ASSERT_TRUE(p.ready()) << std::strerror(errno);

  accept_fault.arm(ENOBUFS, 1);
  p.spin_for(kIterations);
  ASSERT_FALSE(p.registered()) << "not paused";
  ASSERT_FALSE(p.listener->start());
  EXPECT_TRUE(p.registered());
  ASSERT_TRUE(run_until(p.loop, [&] { return p.accepted.sockets.size() == 1; }));
  clock.advance(10 * PendingConnection::kPause);
  p.spin_for(kIterations);
  EXPECT_TRUE(p.registered());
  EXPECT_EQ(p.errors.size(), 1u);
}

// A stop() from on_error (a server shutting down on an accept error) stays stopped: the pause
// the error would begin does not register the listener again.
TEST(Listener, StopFromOnErrorIsNotUndoneByThePause) {
  DisarmAtExit disarm;
  ManualClock clock;
  PendingConnection p(clock);
  ASSERT_TRUE(p.ready()) << std::strerror(errno);
  p.listener->set_error_handler([&p](std::error_code ec) {
    p.errors.push_back(ec);
    p.listener->stop();
  });

  accept_fault.arm(ENOMEM, 1);
  p.spin_for(kIterations);
  ASSERT_EQ(p.errors.size(), 1u);
  EXPECT_FALSE(p.registered());
  clock.advance(10 * PendingConnection::kPause);
  p.spin_for(kIterations);
  EXPECT_FALSE(p.registered()) << "the pause's end registered a stopped listener";
  EXPECT_TRUE(p.accepted.sockets.empty());
  EXPECT_EQ(p.errors.size(), 1u);
}

// The registration at the end of a pause can fail under the same memory pressure (epoll_ctl
// ENOMEM): reported, and tried again after another pause rather than left undone for good.
TEST(Listener, RegistrationFailingAfterAPauseIsReportedAndRetried) {
  DisarmAtExit disarm;
  ManualClock clock;
  PendingConnection p(clock);
  ASSERT_TRUE(p.ready()) << std::strerror(errno);

  accept_fault.arm(ENOMEM, 1);
  p.spin_for(kIterations);
  ASSERT_EQ(p.errors.size(), 1u);
  ASSERT_FALSE(p.registered());

  epoll_ctl_fault.arm(ENOMEM, 1);
  clock.advance(PendingConnection::kPause);
  p.spin_for(kIterations);
  EXPECT_EQ(epoll_ctl_fault.injected.load(), 1);
  ASSERT_EQ(p.errors.size(), 2u);
  EXPECT_EQ(p.errors[1], std::errc::not_enough_memory);
  EXPECT_FALSE(p.registered());
  EXPECT_TRUE(p.accepted.sockets.empty());

  clock.advance(PendingConnection::kPause);
  ASSERT_TRUE(run_until(p.loop, [&] { return p.accepted.sockets.size() == 1; }));
  EXPECT_TRUE(p.registered());
  EXPECT_EQ(p.errors.size(), 2u);
}

// ---------------------------------------------------------------------------------------------
// EMFILE: an echo server in a child process under RLIMIT_NOFILE = 32. The test process keeps its
// own (raised) limit for the clients. The child answers "counters?" over a pipe.

struct ChildCounters {
  std::uint64_t accepted = 0;
  std::uint64_t active = 0;
  std::uint64_t fd_exhaustion = 0;
  std::uint64_t error_callbacks = 0;
  std::uint64_t iterations = 0;
  std::uint16_t port = 0;
};

constexpr int kChildFdLimit = 32;
constexpr int kCommandFd = 3;
constexpr int kReportFd = 4;

bool write_all(int fd, const void* data, std::size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

// The child: never returns; no gtest in here.
[[noreturn]] void run_emfile_child(int command_fd, int report_fd) {
  // Fixed, low fd numbers for the pipes and nothing else inherited, so the limit means the same
  // thing in every build (plain, sanitizers).
  int cmd = ::fcntl(command_fd, F_DUPFD_CLOEXEC, 100);
  int rep = ::fcntl(report_fd, F_DUPFD_CLOEXEC, 100);
  if (cmd < 0 || rep < 0 || ::dup2(cmd, kCommandFd) < 0 || ::dup2(rep, kReportFd) < 0) _exit(10);
  ::close_range(kReportFd + 1, ~0U, 0);
  rlimit limit{};
  ::getrlimit(RLIMIT_NOFILE, &limit);
  limit.rlim_cur = kChildFdLimit;
  if (::setrlimit(RLIMIT_NOFILE, &limit) < 0) _exit(11);

  ChildCounters counters;
  {
    EventLoop loop;
    ConnectionHandlers handlers = echo_handlers();
    TcpServer server(loop, Address::ipv4_loopback(0), handlers);
    server.set_error_handler([&counters](std::error_code) { ++counters.error_callbacks; });
    if (server.start()) _exit(12);
    counters.port = server.address().port();
    auto fill = [&] {
      ServerStats s = server.stats();
      counters.accepted = s.accepted;
      counters.active = s.active;
      counters.fd_exhaustion = s.fd_exhaustion;
      counters.iterations = loop.stats().iterations;
    };
    fill();
    if (!write_all(kReportFd, &counters, sizeof counters)) _exit(13);
    auto command = loop.add(kCommandFd, io::readable, [&](std::uint32_t) {
      char c = 0;
      ssize_t n = ::read(kCommandFd, &c, 1);
      if (n <= 0) _exit(14);  // the parent went away
      fill();
      if (!write_all(kReportFd, &counters, sizeof counters)) _exit(15);
      if (c == 'q') loop.stop();
    });
    if (!command) _exit(16);
    // A backstop should the parent hang: the test's own deadlines are far shorter.
    loop.after(std::chrono::seconds(60), [] { _exit(17); });
    loop.run();
  }
  _exit(0);
}

class EmfileChild {
 public:
  EmfileChild() {
    int command[2];
    int report[2];
    if (::pipe2(command, O_CLOEXEC) < 0 || ::pipe2(report, O_CLOEXEC) < 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(command[1]);
      ::close(report[0]);
      run_emfile_child(command[0], report[1]);
    }
    ::close(command[0]);
    ::close(report[1]);
    command_fd_ = command[1];
    report_fd_ = report[0];
  }

  ~EmfileChild() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (command_fd_ >= 0) ::close(command_fd_);
    if (report_fd_ >= 0) ::close(report_fd_);
  }

  bool started() const { return pid_ > 0 && command_fd_ >= 0; }

  // The counters the child reported first or last: read with a deadline.
  bool read_report(ChildCounters& out, Deadline deadline) {
    char* p = reinterpret_cast<char*>(&out);
    std::size_t got = 0;
    while (got < sizeof out) {
      pollfd pfd{report_fd_, POLLIN, 0};
      if (::poll(&pfd, 1, ms_left(deadline)) <= 0) return false;
      ssize_t n = ::read(report_fd_, p + got, sizeof out - got);
      if (n <= 0) return false;
      got += static_cast<std::size_t>(n);
    }
    return true;
  }

  bool ask(ChildCounters& out, char command = 's') {
    if (!write_all(command_fd_, &command, 1)) return false;
    return read_report(out, deadline_in(10s));
  }

  // Asks the child to quit and reaps it; its exit status, or -1 if it had to be killed.
  int quit() {
    ChildCounters last;
    if (!ask(last, 'q')) return -1;
    // The report pipe reaches EOF when the child's process is gone.
    char c;
    pollfd pfd{report_fd_, POLLIN, 0};
    if (::poll(&pfd, 1, ms_left(deadline_in(10s))) <= 0 || ::read(report_fd_, &c, 1) != 0) {
      return -1;
    }
    int status = 0;
    if (::waitpid(pid_, &status, 0) != pid_) return -1;
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  pid_t pid_ = -1;
  int command_fd_ = -1;
  int report_fd_ = -1;
};

enum class Reply { echoed, closed, timed_out };

// Sends `message` and waits for the echo, or for EOF/reset.
Reply echo_or_close(int fd, const std::string& message, Deadline deadline) {
  if (::send(fd, message.data(), message.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(message.size())) {
    return Reply::closed;
  }
  std::string got;
  while (got.size() < message.size()) {
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, ms_left(deadline)) <= 0) return Reply::timed_out;
    char buf[256];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return Reply::closed;  // EOF, or ECONNRESET when our bytes met the close
    got.append(buf, static_cast<std::size_t>(n));
  }
  return got == message ? Reply::echoed : Reply::closed;
}

TEST(Listener, FdExhaustionInAChildKeepsServingAndRecovers) {
  EmfileChild child;
  ASSERT_TRUE(child.started()) << std::strerror(errno);
  ChildCounters start;
  ASSERT_TRUE(child.read_report(start, deadline_in(10s)));
  ASSERT_NE(start.port, 0);
  const Address address = Address::ipv4_loopback(start.port);

  // A few connections that the child serves before the storm.
  constexpr int kExisting = 4;
  std::vector<int> existing;
  for (int i = 0; i < kExisting; ++i) {
    int fd = connect_to(address);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    existing.push_back(fd);
    ASSERT_EQ(echo_or_close(fd, "hello " + std::to_string(i), deadline_in(10s)), Reply::echoed);
  }
  ChildCounters before;
  ASSERT_TRUE(child.ask(before));
  EXPECT_EQ(before.active, static_cast<std::uint64_t>(kExisting));
  EXPECT_EQ(before.fd_exhaustion, 0u);

  // More clients than the child has fds: each is served or accepted and closed at once, none
  // is left hanging in the backlog.
  constexpr int kStorm = 3 * kChildFdLimit;
  std::vector<int> storm;
  for (int i = 0; i < kStorm; ++i) {
    int fd = connect_to(address);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    storm.push_back(fd);
  }
  int served = 0;
  int shed = 0;
  std::vector<int> served_fds;
  for (int fd : storm) {
    Reply r = echo_or_close(fd, "storm", deadline_in(10s));
    ASSERT_NE(r, Reply::timed_out) << "a connection was left in the backlog";
    if (r == Reply::echoed) {
      ++served;
      served_fds.push_back(fd);
    } else {
      ++shed;
      ::close(fd);
    }
  }
  EXPECT_GT(shed, 0) << "the fd limit was never reached";
  EXPECT_LT(served + kExisting, kChildFdLimit);

  // The connections from before the storm still echo.
  for (int i = 0; i < kExisting; ++i) {
    EXPECT_EQ(echo_or_close(existing[static_cast<std::size_t>(i)], "still here", deadline_in(10s)),
              Reply::echoed);
  }

  ChildCounters during;
  ASSERT_TRUE(child.ask(during));
  EXPECT_GE(during.fd_exhaustion, static_cast<std::uint64_t>(shed));
  // Once per failed accept, not once per retry of an empty backlog: at most one more than the
  // connections shed for each readiness the loop handled.
  EXPECT_LE(during.fd_exhaustion, shed + (during.iterations - before.iterations))
      << "fd_exhaustion " << during.fd_exhaustion << " for " << shed << " shed";
  EXPECT_EQ(during.error_callbacks, during.fd_exhaustion);
  EXPECT_EQ(during.accepted, static_cast<std::uint64_t>(kExisting + served));
  // No spinning: a readiness the loop cannot clear would show up as iterations by the million.
  // Each connection attempt, echo and counter request takes a handful of iterations at most.
  const std::uint64_t work = kStorm + kExisting + 2;
  EXPECT_LE(during.iterations - before.iterations, 8 * work)
      << "iterations " << during.iterations - before.iterations << " for " << work << " attempts";

  // Free the fds: the child accepts and serves new connections again.
  for (int fd : served_fds)
    ::close(fd);
  const Deadline deadline = deadline_in(10s);
  ChildCounters after;
  do {
    ASSERT_TRUE(child.ask(after));
  } while (after.active != static_cast<std::uint64_t>(kExisting) && ms_left(deadline) > 0);
  ASSERT_EQ(after.active, static_cast<std::uint64_t>(kExisting));

  std::vector<int> fresh;
  for (int i = 0; i < 8; ++i) {
    int fd = connect_to(address);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    fresh.push_back(fd);
    EXPECT_EQ(echo_or_close(fd, "again " + std::to_string(i), deadline_in(10s)), Reply::echoed);
  }
  ChildCounters recovered;
  ASSERT_TRUE(child.ask(recovered));
  EXPECT_EQ(recovered.fd_exhaustion, during.fd_exhaustion);
  EXPECT_EQ(recovered.active, static_cast<std::uint64_t>(kExisting + 8));

  for (int fd : fresh)
    ::close(fd);
  for (int fd : existing)
    ::close(fd);
  EXPECT_EQ(child.quit(), 0);
}

}  // namespace
}  // namespace reactor
