// Connector (outbound connect: success, refusal, timeout, cancel) and ConnectionHandle (the
// owner of the Connection it yields; dropping it closes the socket).
#include "reactor/connector.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "injected_fault.hpp"
#include "loopback.hpp"
#include "reactor/listener.hpp"
#include "reactor/tcp_server.hpp"
#include "reactor/timer_queue.hpp"

// The connect(2), socket(2) and epoll_ctl(2) calls of this executable come here first, and fail
// when armed (injected_fault.hpp): connect errors a test cannot cause on loopback, EMFILE
// without exhausting the process's fds, a registration that fails for want of memory.
reactor::test::InjectedFault connect_fault;
REACTOR_INJECTABLE(connect_fault, connect, (int fd, const sockaddr* addr, socklen_t len),
                   (fd, addr, len))
reactor::test::InjectedFault socket_fault;
REACTOR_INJECTABLE(socket_fault, socket, (int domain, int type, int protocol) noexcept,
                   (domain, type, protocol))
// Only EPOLL_CTL_ADD fails: removing a registration on the way still works.
reactor::test::InjectedFault epoll_add_fault;
extern "C" int epoll_ctl(int epfd, int op, int fd, epoll_event* event) noexcept {
  if (op == EPOLL_CTL_ADD) {
    if (int injected_errno = epoll_add_fault.take()) {
      errno = injected_errno;
      return -1;
    }
  }
  using Real = int (*)(int, int, int, epoll_event*) noexcept;
  static const Real real = reactor::test::real_function<Real>("epoll_ctl");
  return real(epfd, op, fd, event);
}

namespace reactor {
namespace {

using namespace std::chrono_literals;
using test::run_unbounded_until;
using SteadyClock = std::chrono::steady_clock;

using test::echo_handlers;
using test::FullBacklog;
using test::open_fd_count;
using test::run_until;
using test::TempDir;
using test::unix_address;
using test::with_clock;

// Each test that arms a fault disarms them all when it ends, whatever happened.
struct DisarmAtExit {
  ~DisarmAtExit() {
    connect_fault.disarm();
    socket_fault.disarm();
    epoll_add_fault.disarm();
  }
};

// What the connect handler saw.
struct Outcome {
  int calls = 0;
  std::error_code error;
  ConnectionHandle handle;
};

Connector::ConnectHandler record_into(Outcome& out) {
  return [&out](std::error_code ec, ConnectionHandle handle) {
    ++out.calls;
    out.error = ec;
    out.handle = std::move(handle);
  };
}

// The client side's callbacks: collects what arrives, counts closes.
struct Client {
  ConnectionHandlers handlers;
  std::string received;
  int closes = 0;
  CloseReason reason = CloseReason::error;
  std::error_code close_error;

  Client() {
    handlers.on_data = [this](Connection&, Buffer& input) {
      received.append(input.view());
      input.consume(input.size());
    };
    handlers.on_close = [this](Connection&, CloseReason r, std::error_code ec) {
      ++closes;
      reason = r;
      close_error = ec;
    };
  }
};

// An echo server on the test's loop.
struct EchoServer {
  ConnectionHandlers handlers;
  TcpServer server;

  EchoServer(EventLoop& loop, const Address& address)
      : handlers(echo_handlers()), server(loop, address, handlers) {
    auto ec = server.start();
    EXPECT_FALSE(ec) << ec.message();
  }
};

// A loopback port bound but not listening, held for the test's lifetime (as test_socket.cpp
// does): connecting to it is refused, and no test running in parallel can take the port, as it
// could once a probe socket was closed again.
class RefusedPort {
 public:
  RefusedPort() {
    auto socket = open_stream_socket(AF_INET);
    EXPECT_TRUE(socket.ok()) << socket.error().message();
    if (!socket.ok()) return;
    fd_ = std::move(*socket);
    const Address any_port = Address::ipv4_loopback(0);
    EXPECT_EQ(::bind(fd_.get(), any_port.sockaddr_ptr(), any_port.length()), 0)
        << std::strerror(errno);
    sockaddr_storage bound{};
    socklen_t len = sizeof bound;
    EXPECT_EQ(::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&bound), &len), 0);
    auto address = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&bound), len);
    EXPECT_TRUE(address.ok());
    if (address.ok()) address_ = *address;
  }
  const Address& address() const { return address_; }
  // From now on connections to the port complete (into the backlog, unaccepted).
  void start_listening() { EXPECT_EQ(::listen(fd_.get(), 16), 0) << std::strerror(errno); }

 private:
  Fd fd_;
  Address address_;
};

int accept_with_deadline(const ListenSocket& socket);
bool peer_sees_close(int peer);

// ---------------------------------------------------------------------------------------------

TEST(Connector, ConnectsAndTheConnectionEchoes) {
  EventLoop loop;
  EchoServer echo(loop, Address::ipv4_loopback(0));
  Connector connector(loop);
  Client client;
  Outcome outcome;
  ASSERT_FALSE(
      connector.connect(echo.server.address(), 10s, client.handlers, record_into(outcome)));
  EXPECT_TRUE(connector.pending());
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  EXPECT_EQ(outcome.calls, 1);
  ASSERT_FALSE(outcome.error) << outcome.error.message();
  ASSERT_TRUE(outcome.handle);
  EXPECT_FALSE(connector.pending());
  EXPECT_EQ(outcome.handle->peer(), echo.server.address());

  ASSERT_TRUE(outcome.handle->send("hello, echo"));
  ASSERT_TRUE(run_until(loop, [&] { return client.received.size() >= 11; }));
  EXPECT_EQ(client.received, "hello, echo");
}

TEST(Connector, ConnectsOverIpv6) {
  auto probe = ListenSocket::open(Address::ipv6_loopback(0));
  if (!probe.ok()) GTEST_SKIP() << "no IPv6 loopback: " << probe.error().message();
  EventLoop loop;
  EchoServer echo(loop, Address::ipv6_loopback(0));
  Connector connector(loop);
  Client client;
  Outcome outcome;
  ASSERT_FALSE(
      connector.connect(echo.server.address(), 10s, client.handlers, record_into(outcome)));
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  ASSERT_FALSE(outcome.error) << outcome.error.message();
  ASSERT_TRUE(outcome.handle->send("six"));
  ASSERT_TRUE(run_until(loop, [&] { return client.received.size() >= 3; }));
  EXPECT_EQ(client.received, "six");
}

TEST(Connector, ConnectsOverAUnixSocket) {
  TempDir dir;
  const Address address = unix_address(dir.file("echo.sock"));
  EventLoop loop;
  EchoServer echo(loop, address);
  Connector connector(loop);
  Client client;
  Outcome outcome;
  ASSERT_FALSE(connector.connect(address, 10s, client.handlers, record_into(outcome)));
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  ASSERT_FALSE(outcome.error) << outcome.error.message();
  ASSERT_TRUE(outcome.handle);
  EXPECT_TRUE(outcome.handle->peer().is_unix());
  ASSERT_TRUE(outcome.handle->send("over unix"));
  ASSERT_TRUE(run_until(loop, [&] { return client.received.size() >= 9; }));
  EXPECT_EQ(client.received, "over unix");
}

TEST(Connector, HandlerRunsOnTheLoopNeverInsideConnect) {
  // A Unix connect completes inside connect(2); the handler still waits for the loop.
  TempDir dir;
  const Address address = unix_address(dir.file("now.sock"));
  EventLoop loop;
  EchoServer echo(loop, address);
  Connector connector(loop);
  Client client;
  Outcome outcome;
  ASSERT_FALSE(connector.connect(address, 10s, client.handlers, record_into(outcome)));
  EXPECT_EQ(outcome.calls, 0);
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  EXPECT_EQ(outcome.calls, 1);
  EXPECT_FALSE(outcome.error);
}

TEST(Connector, RefusedPortIsReportedOnceThroughTheHandler) {
  RefusedPort refused;
  const Address& address = refused.address();
  // Held: a listener elsewhere cannot take the port and turn the refusal into a connection.
  auto taker = ListenSocket::open(address);
  ASSERT_FALSE(taker.ok()) << "the refused port is free for anyone to take";
  EXPECT_EQ(taker.error(), std::errc::address_in_use) << taker.error().message();
  EventLoop loop;
  Connector connector(loop);
  Client client;
  Outcome outcome;
  ASSERT_FALSE(connector.connect(address, 10s, client.handlers, record_into(outcome)));
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  EXPECT_EQ(outcome.error, std::errc::connection_refused) << outcome.error.message();
  EXPECT_FALSE(outcome.handle);
  EXPECT_FALSE(connector.pending());
  for (int i = 0; i < 5; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(outcome.calls, 1);
  EXPECT_EQ(client.closes, 0);
}

// "The handler runs exactly once, later, on the loop: ... with an error (... ENETUNREACH ...)":
// connect(2) failing at once with a network error is reported through the handler, never by
// connect(), and the socket is closed.
TEST(Connector, UnreachableNetworkIsReportedOnceThroughTheHandler) {
  DisarmAtExit disarm;
  RefusedPort refused;  // should the fault not fire: refused at once, not a 10 s wait
  EventLoop loop;
  Connector connector(loop);
  Client client;
  Outcome outcome;
  const int fds_before = open_fd_count();
  connect_fault.arm(ENETUNREACH, 1);
  ASSERT_FALSE(connector.connect(refused.address(), 10s, client.handlers, record_into(outcome)));
  EXPECT_EQ(connect_fault.injected.load(), 1);
  EXPECT_EQ(outcome.calls, 0) << "the handler ran inside connect()";
  EXPECT_TRUE(connector.pending());
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  EXPECT_EQ(outcome.error, std::errc::network_unreachable) << outcome.error.message();
  EXPECT_FALSE(outcome.handle);
  EXPECT_FALSE(connector.pending());
  EXPECT_EQ(open_fd_count(), fds_before);
  for (int i = 0; i < 5; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(outcome.calls, 1);
  EXPECT_EQ(client.closes, 0);
}

TEST(Connector, UnixSocketNobodyAcceptsOnIsRefused) {
  TempDir dir;
  const Address address = unix_address(dir.file("stale.sock"));
  {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::bind(fd, address.sockaddr_ptr(), address.length()), 0);
    ::close(fd);
  }
  EventLoop loop;
  Connector connector(loop);
  Client client;
  Outcome outcome;
  ASSERT_FALSE(connector.connect(address, 10s, client.handlers, record_into(outcome)));
  EXPECT_EQ(outcome.calls, 0);
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  EXPECT_EQ(outcome.calls, 1);
  EXPECT_EQ(outcome.error, std::errc::connection_refused) << outcome.error.message();
}

TEST(Connector, MissingUnixPathIsReportedThroughTheHandler) {
  TempDir dir;
  EventLoop loop;
  Connector connector(loop);
  Client client;
  Outcome outcome;
  ASSERT_FALSE(connector.connect(unix_address(dir.file("nobody-here.sock")), 10s, client.handlers,
                                 record_into(outcome)));
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  EXPECT_EQ(outcome.calls, 1);
  EXPECT_EQ(outcome.error, std::errc::no_such_file_or_directory) << outcome.error.message();
}

TEST(Connector, UnixListenerWithAFullBacklogIsTryAgain) {
  TempDir dir;
  const Address address = unix_address(dir.file("full.sock"));
  ListenOptions listen_options;
  listen_options.backlog = 0;
  auto socket = ListenSocket::open(address, listen_options);
  ASSERT_TRUE(socket.ok()) << socket.error().message();
  // A Unix connect to a full queue fails at once with EAGAIN instead of waiting.
  std::vector<Fd> fillers;
  ASSERT_NO_FATAL_FAILURE(test::fill_unix_backlog(address, fillers));
  EventLoop loop;
  Connector connector(loop);
  Client client;
  Outcome outcome;
  ASSERT_FALSE(connector.connect(address, 10s, client.handlers, record_into(outcome)));
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  EXPECT_EQ(outcome.calls, 1);
  EXPECT_EQ(outcome.error, std::errc::resource_unavailable_try_again) << outcome.error.message();
}

TEST(Connector, FullBacklogTimesOutOnTheLoopClock) {
  FullBacklog backlog;
  ManualClock clock;
  EventLoop loop(with_clock(clock));
  Connector connector(loop);
  Client client;
  Outcome outcome;
  ASSERT_FALSE(connector.connect(backlog.address(), 5s, client.handlers, record_into(outcome)));
  for (int i = 0; i < 5; ++i)
    loop.run_once(1ms);
  ASSERT_EQ(outcome.calls, 0) << "the SYN was not dropped: " << outcome.error.message();
  EXPECT_TRUE(connector.pending());

  clock.advance(4s);
  loop.run_once(0ms);
  EXPECT_EQ(outcome.calls, 0);
  clock.advance(1s);
  loop.run_once(0ms);
  ASSERT_EQ(outcome.calls, 1);
  EXPECT_EQ(outcome.error, std::errc::timed_out) << outcome.error.message();
  EXPECT_FALSE(outcome.handle);
  EXPECT_FALSE(connector.pending());
}

// Duration::max() means "never": it must not wrap to a deadline in the past.
TEST(Connector, MaxTimeoutLeavesAPendingConnectPending) {
  FullBacklog backlog;
  ManualClock clock;
  EventLoop loop(with_clock(clock));
  Connector connector(loop);
  Client client;
  Outcome outcome;
  ASSERT_FALSE(
      connector.connect(backlog.address(), Duration::max(), client.handlers, record_into(outcome)));
  for (int i = 0; i < 5; ++i)
    loop.run_once(1ms);
  EXPECT_EQ(outcome.calls, 0) << "failed at once: " << outcome.error.message();
  clock.advance(24h * 365 * 200);
  loop.run_once(0ms);
  EXPECT_EQ(outcome.calls, 0) << outcome.error.message();
  EXPECT_TRUE(connector.pending());
}

TEST(Connector, MaxTimeoutConnectsToAListeningSocket) {
  EventLoop loop;
  EchoServer echo(loop, Address::ipv4_loopback(0));
  Connector connector(loop);
  Client client;
  Outcome outcome;
  ASSERT_FALSE(connector.connect(echo.server.address(), Duration::max(), client.handlers,
                                 record_into(outcome)));
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  EXPECT_EQ(outcome.calls, 1);
  ASSERT_FALSE(outcome.error) << outcome.error.message();
  ASSERT_TRUE(outcome.handle);
  ASSERT_TRUE(outcome.handle->send("never times out"));
  ASSERT_TRUE(run_until(loop, [&] { return client.received.size() >= 15; }));
}

TEST(Connector, CancelBeforeCompletionNeverCallsTheHandlerAndClosesTheSocket) {
  FullBacklog backlog;
  ManualClock clock;
  EventLoop loop(with_clock(clock));
  Connector connector(loop);
  Client client;
  Outcome outcome;
  const int fds_before = open_fd_count();
  const std::size_t registrations_before = loop.registrations();
  ASSERT_FALSE(connector.connect(backlog.address(), 1s, client.handlers, record_into(outcome)));
  EXPECT_EQ(open_fd_count(), fds_before + 1);
  loop.run_once(0ms);
  connector.cancel();
  EXPECT_FALSE(connector.pending());
  EXPECT_EQ(open_fd_count(), fds_before);
  EXPECT_EQ(loop.registrations(), registrations_before);

  clock.advance(10s);  // past the timeout it had
  for (int i = 0; i < 5; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(outcome.calls, 0);
}

TEST(Connector, DestroyingAPendingConnectorNeverCallsTheHandlerAndClosesTheSocket) {
  FullBacklog backlog;
  ManualClock clock;
  EventLoop loop(with_clock(clock));
  Client client;
  Outcome outcome;
  const int fds_before = open_fd_count();
  {
    Connector connector(loop);
    ASSERT_FALSE(connector.connect(backlog.address(), 1s, client.handlers, record_into(outcome)));
    loop.run_once(0ms);
  }
  EXPECT_EQ(open_fd_count(), fds_before);
  clock.advance(10s);
  for (int i = 0; i < 5; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(outcome.calls, 0);
}

TEST(Connector, CancelAfterAnImmediateFailureNeverCallsTheHandler) {
  // A Unix connect fails inside connect(2); its report waits for the loop and is cancellable.
  TempDir dir;
  EventLoop loop;
  Connector connector(loop);
  Client client;
  Outcome outcome;
  const int fds_before = open_fd_count();
  ASSERT_FALSE(connector.connect(unix_address(dir.file("absent.sock")), 10s, client.handlers,
                                 record_into(outcome)));
  connector.cancel();
  EXPECT_EQ(open_fd_count(), fds_before);
  for (int i = 0; i < 5; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(outcome.calls, 0);
}

TEST(Connector, CancelWhenNothingIsPendingIsHarmless) {
  EventLoop loop;
  Connector connector(loop);
  connector.cancel();
  connector.cancel();
  EXPECT_FALSE(connector.pending());
}

// "One connect at a time per Connector": a second connect() while one is pending is refused
// with EALREADY and changes nothing; the first completes on its own, to its own address, with
// its own handler and connection handlers.
TEST(Connector, SecondConnectWhilePendingIsRefusedAndTheFirstGoesOn) {
  EventLoop loop;
  EchoServer echo(loop, Address::ipv4_loopback(0));
  RefusedPort refused;
  Connector connector(loop);
  Client first_client;
  Client second_client;
  Outcome first;
  Outcome second;
  ASSERT_FALSE(
      connector.connect(echo.server.address(), 10s, first_client.handlers, record_into(first)));
  auto ec = connector.connect(refused.address(), 10s, second_client.handlers, record_into(second));
  EXPECT_EQ(ec, std::errc::connection_already_in_progress) << ec.message();
  EXPECT_TRUE(connector.pending());

  ASSERT_TRUE(run_until(loop, [&] { return first.calls > 0; })) << "the first connect stalled";
  EXPECT_EQ(first.calls, 1);
  ASSERT_FALSE(first.error) << first.error.message();
  ASSERT_TRUE(first.handle);
  EXPECT_EQ(first.handle->peer(), echo.server.address());
  EXPECT_FALSE(connector.pending());
  ASSERT_TRUE(first.handle->send("first"));
  ASSERT_TRUE(run_until(loop, [&] { return first_client.received.size() >= 5; }));
  EXPECT_EQ(first_client.received, "first");
  for (int i = 0; i < 5; ++i)
    loop.run_once(1ms);
  EXPECT_EQ(second.calls, 0);
  EXPECT_TRUE(second_client.received.empty());
}

TEST(Connector, HandlerMayStartTheNextConnect) {
  RefusedPort refused_port;
  const Address& refused = refused_port.address();
  EventLoop loop;
  EchoServer echo(loop, Address::ipv4_loopback(0));
  Connector connector(loop);
  Client client;
  Outcome retried;
  std::error_code first_error;
  std::error_code reconnect_error;
  ASSERT_FALSE(
      connector.connect(refused, 10s, client.handlers, [&](std::error_code ec, ConnectionHandle) {
        first_error = ec;
        reconnect_error =
            connector.connect(echo.server.address(), 10s, client.handlers, record_into(retried));
      }));
  ASSERT_TRUE(run_until(loop, [&] { return retried.calls > 0; }));
  EXPECT_EQ(first_error, std::errc::connection_refused);
  EXPECT_FALSE(reconnect_error);
  EXPECT_FALSE(retried.error) << retried.error.message();
  EXPECT_TRUE(retried.handle);
}

TEST(Connector, UnspecifiedAddressIsRejectedWithoutCallingTheHandler) {
  EventLoop loop;
  Connector connector(loop);
  Client client;
  Outcome outcome;
  const int fds_before = open_fd_count();
  auto ec = connector.connect(Address{}, 1s, client.handlers, record_into(outcome));
  ASSERT_TRUE(ec);
  EXPECT_EQ(ec, std::errc::address_family_not_supported) << ec.message();
  EXPECT_FALSE(connector.pending());
  EXPECT_EQ(open_fd_count(), fds_before);
  for (int i = 0; i < 3; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(outcome.calls, 0);
}

// "Errors that happen before anything is in flight (EMFILE for the socket, ...) are returned
// here and the handler is not called": nothing is left half set up, the next connect works.
TEST(Connector, NoFdForTheSocketIsReturnedByConnectAndTheHandlerIsNotCalled) {
  DisarmAtExit disarm;
  EventLoop loop;
  EchoServer echo(loop, Address::ipv4_loopback(0));
  Connector connector(loop);
  Client client;
  Outcome outcome;
  socket_fault.arm(EMFILE, 1);
  auto ec = connector.connect(echo.server.address(), 10s, client.handlers, record_into(outcome));
  EXPECT_EQ(socket_fault.injected.load(), 1);
  EXPECT_EQ(ec, std::errc::too_many_files_open) << ec.message();
  EXPECT_FALSE(connector.pending());
  for (int i = 0; i < 5; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(outcome.calls, 0);

  ASSERT_FALSE(
      connector.connect(echo.server.address(), 10s, client.handlers, record_into(outcome)));
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  EXPECT_EQ(outcome.calls, 1);
  EXPECT_FALSE(outcome.error) << outcome.error.message();
  EXPECT_TRUE(outcome.handle);
}

// Registering the connecting socket fails (epoll_ctl, ENOMEM) after the connect is under way:
// something is in flight, so the error comes through the handler, later, and the socket closes.
TEST(Connector, RegistrationFailureIsReportedThroughTheHandler) {
  DisarmAtExit disarm;
  auto socket = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(socket.ok());
  EventLoop loop;
  Connector connector(loop);
  Client client;
  Outcome outcome;
  const int fds_before = open_fd_count();
  const std::size_t registrations_before = loop.registrations();
  epoll_add_fault.arm(ENOMEM, 1);
  ASSERT_FALSE(connector.connect(socket->address(), 10s, client.handlers, record_into(outcome)));
  ASSERT_EQ(epoll_add_fault.injected.load(), 1) << "connect(2) completed at once: not tested";
  EXPECT_EQ(outcome.calls, 0);
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  EXPECT_EQ(outcome.error, std::errc::not_enough_memory) << outcome.error.message();
  EXPECT_FALSE(outcome.handle);
  EXPECT_FALSE(connector.pending());
  EXPECT_EQ(open_fd_count(), fds_before);
  EXPECT_EQ(loop.registrations(), registrations_before);
}

// The connect succeeded but its Connection cannot be registered (epoll_ctl, ENOMEM): the handler
// gets the error and an empty handle, and the socket is closed (the peer sees it end).
TEST(Connector, ConnectionThatCannotStartIsReportedThroughTheHandler) {
  DisarmAtExit disarm;
  auto socket = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(socket.ok());
  EventLoop loop;
  Connector connector(loop);
  Client client;
  Outcome outcome;
  const int fds_before = open_fd_count();
  ASSERT_FALSE(connector.connect(socket->address(), 10s, client.handlers, record_into(outcome)));
  epoll_add_fault.arm(ENOMEM, 1);  // the next registration is the Connection's
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  EXPECT_EQ(epoll_add_fault.injected.load(), 1);
  EXPECT_EQ(outcome.error, std::errc::not_enough_memory) << outcome.error.message();
  EXPECT_FALSE(outcome.handle);
  EXPECT_FALSE(connector.pending());
  EXPECT_EQ(open_fd_count(), fds_before);
  int peer = accept_with_deadline(*socket);
  ASSERT_GE(peer, 0) << std::strerror(errno);
  EXPECT_TRUE(peer_sees_close(peer));
  ::close(peer);
  EXPECT_EQ(client.closes, 0);
}

TEST(Connector, TrafficCountersCountTheConnectionsBytes) {
  EventLoop loop;
  EchoServer echo(loop, Address::ipv4_loopback(0));
  Connector connector(loop);
  Client client;
  Outcome outcome;
  TrafficCounters counters;
  ASSERT_FALSE(connector.connect(echo.server.address(), 10s, client.handlers, record_into(outcome),
                                 ConnectionOptions{}, &counters));
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  ASSERT_TRUE(outcome.handle);
  const std::string payload(5000, 'x');
  ASSERT_TRUE(outcome.handle->send(payload));
  ASSERT_TRUE(run_until(loop, [&] { return client.received.size() >= payload.size(); }));
  EXPECT_EQ(counters.bytes_out.load(), payload.size());
  EXPECT_EQ(counters.bytes_in.load(), payload.size());
}

// ---------------------------------------------------------------------------------------------
// ConnectionHandle

int accept_with_deadline(const ListenSocket& socket) {
  pollfd pfd{socket.fd(), POLLIN, 0};
  if (::poll(&pfd, 1, 10000) != 1) return -1;
  return ::accept4(socket.fd(), nullptr, nullptr, SOCK_CLOEXEC);
}

// Waits until the peer's socket reports EOF or a reset; true if it did.
bool peer_sees_close(int peer) {
  const auto deadline = SteadyClock::now() + 10s;
  while (SteadyClock::now() < deadline) {
    pollfd pfd{peer, POLLIN, 0};
    if (::poll(&pfd, 1, 100) != 1) continue;
    char buf[256];
    ssize_t n = ::recv(peer, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) return true;
    if (n < 0 && errno == ECONNRESET) return true;
  }
  return false;
}

TEST(ConnectionHandle, DroppingItInsideItsOwnOnDataClosesTheSocket) {
  auto socket = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(socket.ok());
  EventLoop loop;
  Connector connector(loop);
  ConnectionHandle handle;
  int data_calls = 0;
  int closes = 0;
  ConnectionHandlers handlers;
  handlers.on_data = [&](Connection&, Buffer& input) {
    ++data_calls;
    input.consume(input.size());
    handle.reset();  // destroys nothing yet: the Connection lives to the end of the round
  };
  handlers.on_close = [&](Connection&, CloseReason, std::error_code) { ++closes; };
  Outcome outcome;
  ASSERT_FALSE(connector.connect(socket->address(), 10s, handlers, record_into(outcome)));
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  ASSERT_TRUE(outcome.handle) << outcome.error.message();
  handle = std::move(outcome.handle);
  const int fds_with_connection = open_fd_count();

  int peer = accept_with_deadline(*socket);
  ASSERT_GE(peer, 0) << std::strerror(errno);
  ASSERT_EQ(::send(peer, "ping", 4, MSG_NOSIGNAL), 4);
  ASSERT_TRUE(run_until(loop, [&] { return data_calls > 0; }));
  EXPECT_FALSE(handle);
  loop.run_once(0ms);

  EXPECT_TRUE(peer_sees_close(peer));
  EXPECT_EQ(open_fd_count(), fds_with_connection);  // ours closed, the peer's opened
  ASSERT_EQ(::send(peer, "more", 4, MSG_NOSIGNAL), 4);
  for (int i = 0; i < 5; ++i)
    loop.run_once(1ms);
  EXPECT_EQ(data_calls, 1);
  EXPECT_EQ(closes, 0) << "a dropped handle's connection makes no more callbacks";
  ::close(peer);
}

TEST(ConnectionHandle, DroppingItOutsideCallbacksClosesTheSocket) {
  auto socket = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(socket.ok());
  EventLoop loop;
  Connector connector(loop);
  Client client;
  Outcome outcome;
  ASSERT_FALSE(connector.connect(socket->address(), 10s, client.handlers, record_into(outcome)));
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  ASSERT_TRUE(outcome.handle) << outcome.error.message();
  int peer = accept_with_deadline(*socket);
  ASSERT_GE(peer, 0);

  outcome.handle = ConnectionHandle{};  // assigning over it drops the old connection
  EXPECT_FALSE(outcome.handle);
  loop.run_once(0ms);
  EXPECT_TRUE(peer_sees_close(peer));
  EXPECT_EQ(client.closes, 0);
  ::close(peer);
}

// "Dropping it ... closes the socket at once without further callbacks, an on_close still due
// included; ... to hear on_close after abort(), keep the handle until on_close".
TEST(ConnectionHandle, DroppingItAfterAbortCancelsTheOnCloseStillDue) {
  auto socket = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(socket.ok());
  EventLoop loop;
  Connector connector(loop);
  Client kept;
  Client dropped;
  Outcome kept_outcome;
  Outcome dropped_outcome;
  ASSERT_FALSE(connector.connect(socket->address(), 10s, kept.handlers, record_into(kept_outcome)));
  ASSERT_TRUE(run_until(loop, [&] { return kept_outcome.calls > 0; }));
  ASSERT_FALSE(
      connector.connect(socket->address(), 10s, dropped.handlers, record_into(dropped_outcome)));
  ASSERT_TRUE(run_until(loop, [&] { return dropped_outcome.calls > 0; }));
  ASSERT_TRUE(kept_outcome.handle) << kept_outcome.error.message();
  ASSERT_TRUE(dropped_outcome.handle) << dropped_outcome.error.message();

  (*kept_outcome.handle).abort();
  dropped_outcome.handle->abort();
  EXPECT_EQ(kept.closes + dropped.closes, 0) << "on_close ran inside abort()";
  dropped_outcome.handle.reset();
  ASSERT_TRUE(run_until(loop, [&] { return kept.closes > 0; }));
  for (int i = 0; i < 5; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(kept.closes, 1);
  EXPECT_EQ(kept.reason, CloseReason::aborted);
  EXPECT_EQ(dropped.closes, 0);
}

// ConnectionOptions::linger = Duration::max(): a graceful close waits for the peer's EOF as long
// as it takes, instead of aborting at once.
TEST(ConnectionHandle, MaxLingerWaitsForThePeersEof) {
  auto socket = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(socket.ok());
  ManualClock clock;
  EventLoop loop(with_clock(clock));
  Connector connector(loop);
  Client client;
  ConnectionOptions options;
  options.linger = Duration::max();
  Outcome outcome;
  ASSERT_FALSE(
      connector.connect(socket->address(), 10s, client.handlers, record_into(outcome), options));
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  ASSERT_TRUE(outcome.handle) << outcome.error.message();
  int peer = accept_with_deadline(*socket);
  ASSERT_GE(peer, 0) << std::strerror(errno);

  outcome.handle->close();
  for (int i = 0; i < 5; ++i)
    loop.run_once(1ms);
  clock.advance(24h * 365 * 200);
  loop.run_once(0ms);
  EXPECT_EQ(client.closes, 0) << "linger ran out: " << to_string(client.reason) << ", "
                              << client.close_error.message();

  ::close(peer);  // the peer's EOF completes the close
  ASSERT_TRUE(run_until(loop, [&] { return client.closes > 0; }));
  EXPECT_EQ(client.closes, 1);
  EXPECT_EQ(client.reason, CloseReason::local_close);
  EXPECT_FALSE(client.close_error) << client.close_error.message();
}

// ConnectionOptions::idle_timeout = Duration::max(): never times out, and its timer neither
// holds back other timers nor wakes the loop. With nothing else to do until a 100 ms timer, the
// loop sleeps until that timer (a wrapped deadline made the wait ~292 years instead).
TEST(ConnectionHandle, MaxIdleTimeoutNeitherClosesNorWakesTheLoop) {
  auto socket = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(socket.ok());
  EventLoop loop;
  Connector connector(loop);
  Client client;
  ConnectionOptions options;
  options.idle_timeout = Duration::max();
  Outcome outcome;
  ASSERT_FALSE(
      connector.connect(socket->address(), 10s, client.handlers, record_into(outcome), options));
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  ASSERT_TRUE(outcome.handle) << outcome.error.message();
  int peer = accept_with_deadline(*socket);
  ASSERT_GE(peer, 0) << std::strerror(errno);

  const auto before = loop.stats().iterations;
  bool later = false;
  loop.after(100ms, [&] { later = true; });
  EXPECT_TRUE(run_unbounded_until(loop, [&] { return later; }))
      << "the idle timer held the wait past the 100 ms timer";
  EXPECT_LE(loop.stats().iterations - before, 3u) << "the loop spun on the idle timer";
  EXPECT_EQ(client.closes, 0) << to_string(client.reason);
  EXPECT_TRUE(outcome.handle->is_open());
  ::close(peer);
}

// The loop destroyed (server side and Connector already gone, as the contract asks) while a
// pending timer or a queued task owns a ConnectionHandle: dropping the handle detaches the
// connection (cancels its timers, removes its registration) and defers its destruction, all
// into a loop that must still be whole. Before, the timers were destroyed last, and the defer
// wrote into the destroyed task vector: the connection leaked, its socket stayed open.
enum class HeldBy { timer, repeating_timer, deferred_task, posted_task };

void destroy_loop_while_a_handle_is_held_by(HeldBy holder) {
  auto socket = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(socket.ok());
  const int fds_before = open_fd_count();
  Client client;  // its handlers outlive the loop and the connection
  int peer = -1;
  {
    EventLoop loop;
    {
      Connector connector(loop);
      Outcome outcome;
      ASSERT_FALSE(
          connector.connect(socket->address(), 10s, client.handlers, record_into(outcome)));
      ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
      ASSERT_TRUE(outcome.handle) << outcome.error.message();
      peer = accept_with_deadline(*socket);
      ASSERT_GE(peer, 0) << std::strerror(errno);
      auto task = [handle = std::move(outcome.handle)] { ADD_FAILURE() << "ran"; };
      switch (holder) {
        case HeldBy::timer:
          loop.after(1h, std::move(task));
          break;
        case HeldBy::repeating_timer:
          loop.every(1h, std::move(task));
          break;
        case HeldBy::deferred_task:
          loop.defer(std::move(task));
          break;
        case HeldBy::posted_task:
          loop.post(std::move(task));
          break;
      }
    }
  }
  EXPECT_TRUE(peer_sees_close(peer)) << "the connection's socket was not closed";
  ::close(peer);
  EXPECT_EQ(open_fd_count(), fds_before);
  EXPECT_EQ(client.closes, 0) << "a dropped handle's connection makes no callbacks";
}

TEST(ConnectionHandle, LoopDestroyedWithATimerOwningAHandleClosesTheConnection) {
  destroy_loop_while_a_handle_is_held_by(HeldBy::timer);
  destroy_loop_while_a_handle_is_held_by(HeldBy::repeating_timer);
}

TEST(ConnectionHandle, LoopDestroyedWithATaskOwningAHandleClosesTheConnection) {
  destroy_loop_while_a_handle_is_held_by(HeldBy::deferred_task);
  destroy_loop_while_a_handle_is_held_by(HeldBy::posted_task);
}

TEST(ConnectionHandle, MovingTransfersOwnership) {
  EventLoop loop;
  EchoServer echo(loop, Address::ipv4_loopback(0));
  Connector connector(loop);
  Client client;
  Outcome outcome;
  ASSERT_FALSE(
      connector.connect(echo.server.address(), 10s, client.handlers, record_into(outcome)));
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls > 0; }));
  ASSERT_TRUE(outcome.handle);
  Connection* raw = outcome.handle.get();
  ConnectionHandle moved = std::move(outcome.handle);
  EXPECT_FALSE(outcome.handle);
  EXPECT_EQ(moved.get(), raw);
  outcome.handle = ConnectionHandle{};  // dropping the empty source closes nothing
  loop.run_once(0ms);
  ASSERT_TRUE(moved->send("still mine"));
  ASSERT_TRUE(run_until(loop, [&] { return client.received.size() >= 10; }));
  EXPECT_EQ(client.received, "still mine");
}

// Connector::Options::retry: "Any failed attempt ... is retried while attempts remain; the
// handler then runs once, with ... the last attempt's error, and attempt() says which attempt
// that was". configure runs once per attempt, which counts them.
TEST(ConnectorRetry, RefusedAttemptsAreRetriedUpToMaxAttemptsThenTheLastErrorIsReported) {
  RefusedPort refused;
  ManualClock clock;
  EventLoop loop(with_clock(clock));
  int attempts = 0;
  Connector::Options options;
  options.retry.max_attempts = 3;
  options.retry.first_delay = 100ms;
  options.retry.jitter = 0;
  options.configure = [&](int) {
    ++attempts;
    return std::error_code{};
  };
  Connector connector(loop, std::move(options));
  Client client;
  Outcome outcome;
  int attempt_seen = 0;
  ASSERT_FALSE(connector.connect(refused.address(), 10s, client.handlers,
                                 [&](std::error_code ec, ConnectionHandle handle) {
                                   attempt_seen = connector.attempt();
                                   record_into(outcome)(ec, std::move(handle));
                                 }));
  for (int step = 0; step < 10 && outcome.calls == 0; ++step) {
    for (int i = 0; i < 5; ++i)
      loop.run_once(1ms);  // the refusal arrives; the backoff timer waits for the clock
    EXPECT_TRUE(connector.pending() || outcome.calls == 1);
    clock.advance(1s);
  }
  EXPECT_EQ(attempts, 3);
  ASSERT_EQ(outcome.calls, 1);
  EXPECT_EQ(outcome.error, std::errc::connection_refused) << outcome.error.message();
  EXPECT_EQ(attempt_seen, 3);
  EXPECT_FALSE(connector.pending());
}

// "exponential from first_delay by multiplier, capped at max_delay; each delay drawn uniformly
// from [delay x (1 - jitter), delay]": on the test clock, no attempt starts before the low end
// of its window, and one has started at its high end.
TEST(ConnectorRetry, BackoffGrowsByTheMultiplierUpToTheCapWithinItsJitterWindow) {
  RefusedPort refused;
  ManualClock clock;
  EventLoop loop(with_clock(clock));
  int attempts = 0;
  Connector::Options options;
  options.retry.max_attempts = 5;
  options.retry.first_delay = 100ms;
  options.retry.multiplier = 2.0;
  options.retry.max_delay = 300ms;
  options.retry.jitter = 0.5;
  options.configure = [&](int) {
    ++attempts;
    return std::error_code{};
  };
  Connector connector(loop, std::move(options));
  Client client;
  Outcome outcome;
  ASSERT_FALSE(connector.connect(refused.address(), 10s, client.handlers, record_into(outcome)));
  const Duration delays[] = {100ms, 200ms, 300ms, 300ms};  // before attempts 2..5
  for (int k = 0; k < 4; ++k) {
    SCOPED_TRACE(k);
    ASSERT_TRUE(run_until(loop, [&] { return attempts == k + 1; }));
    for (int i = 0; i < 5; ++i)
      loop.run_once(1ms);  // the refusal arrives, the backoff starts
    const Duration low = delays[k] / 2;
    clock.advance(low - 1ms);
    loop.run_once(0ms);
    EXPECT_EQ(attempts, k + 1) << "an attempt before its window";
    clock.advance(delays[k] - low + 1ms);
    loop.run_once(0ms);
    EXPECT_EQ(attempts, k + 2) << "no attempt by the end of its window";
  }
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls == 1; }));
  EXPECT_EQ(connector.attempt(), 5);
}

// A later attempt that finds the server up succeeds, and attempt() names it.
TEST(ConnectorRetry, AnAttemptAfterTheServerComesUpConnects) {
  RefusedPort refused;
  ManualClock clock;
  EventLoop loop(with_clock(clock));
  Connector::Options options;
  options.retry.max_attempts = 0;  // no limit
  options.retry.jitter = 0;
  Connector connector(loop, std::move(options));
  Client client;
  Outcome outcome;
  int attempt_seen = 0;
  ASSERT_FALSE(connector.connect(refused.address(), 10s, client.handlers,
                                 [&](std::error_code ec, ConnectionHandle handle) {
                                   attempt_seen = connector.attempt();
                                   record_into(outcome)(ec, std::move(handle));
                                 }));
  for (int i = 0; i < 5; ++i)
    loop.run_once(1ms);
  EXPECT_EQ(outcome.calls, 0);
  EXPECT_TRUE(connector.pending());
  refused.start_listening();
  clock.advance(100ms);  // first_delay
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls == 1; }));
  EXPECT_FALSE(outcome.error) << outcome.error.message();
  EXPECT_TRUE(outcome.handle);
  EXPECT_EQ(attempt_seen, 2);
}

// "cancel() during a backoff cancels the rest": no handler, no further attempt.
TEST(ConnectorRetry, CancelDuringABackoffStopsTheRetries) {
  RefusedPort refused;
  ManualClock clock;
  EventLoop loop(with_clock(clock));
  int attempts = 0;
  Connector::Options options;
  options.retry.max_attempts = 0;
  options.configure = [&](int) {
    ++attempts;
    return std::error_code{};
  };
  Connector connector(loop, std::move(options));
  Client client;
  Outcome outcome;
  ASSERT_FALSE(connector.connect(refused.address(), 10s, client.handlers, record_into(outcome)));
  for (int i = 0; i < 5; ++i)
    loop.run_once(1ms);
  ASSERT_TRUE(connector.pending()) << "waiting out the backoff";
  connector.cancel();
  EXPECT_FALSE(connector.pending());
  clock.advance(1h);
  for (int i = 0; i < 5; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(attempts, 1);
  EXPECT_EQ(outcome.calls, 0);
}

// "configure: called with each attempt's socket before bind() and connect()": a receive buffer
// it sets is the connection's; "an error it returns is that attempt's error" (the first
// attempt's: returned by connect(), the handler not called).
TEST(ConnectorOptions, ConfigureSetsSocketOptionsBeforeConnectAndItsErrorIsReturned) {
  EventLoop loop;
  EchoServer server(loop, Address::ipv4_loopback(0));
  Connector::Options options;
  int configured_fd = -1;
  options.configure = [&](int fd) {
    configured_fd = fd;
    const int size = 64 * 1024;
    return ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size) == 0 ? std::error_code{}
                                                                            : errno_code();
  };
  Connector connector(loop, std::move(options));
  Client client;
  Outcome outcome;
  ASSERT_FALSE(
      connector.connect(server.server.address(), 10s, client.handlers, record_into(outcome)));
  ASSERT_TRUE(run_until(loop, [&] { return outcome.calls == 1; }));
  ASSERT_TRUE(outcome.handle) << outcome.error.message();
  EXPECT_EQ(outcome.handle->fd(), configured_fd);
  int size = 0;
  socklen_t len = sizeof size;
  ASSERT_EQ(::getsockopt(outcome.handle->fd(), SOL_SOCKET, SO_RCVBUF, &size, &len), 0);
  EXPECT_EQ(size, 2 * 64 * 1024);  // the kernel doubles what it was given

  Connector::Options failing;
  failing.configure = [](int) { return std::make_error_code(std::errc::permission_denied); };
  Connector refused_by_configure(loop, std::move(failing));
  Outcome never;
  EXPECT_EQ(refused_by_configure.connect(server.server.address(), 10s, client.handlers,
                                         record_into(never)),
            std::errc::permission_denied);
  for (int i = 0; i < 3; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(never.calls, 0);
  EXPECT_FALSE(refused_by_configure.pending());
}

// "source: bound before connect(): the address (and port) the connection comes from", with a
// port of 0 left to connect(); a family other than the destination's is refused.
TEST(ConnectorOptions, SourceAddressIsTheConnectionsLocalAddress) {
  EventLoop loop;
  EchoServer server(loop, Address::ipv4_loopback(0));
  for (const bool fixed_port : {false, true}) {
    SCOPED_TRACE(fixed_port ? "fixed port" : "port 0");
    Address source = *Address::parse("127.0.0.2:0");
    if (fixed_port) {
      RefusedPort probe;  // a port no one else holds, released just below
      source = *Address::parse("127.0.0.2:" + std::to_string(probe.address().port()));
    }
    Connector::Options options;
    options.source = source;
    Connector connector(loop, std::move(options));
    Client client;
    Outcome outcome;
    ASSERT_FALSE(
        connector.connect(server.server.address(), 10s, client.handlers, record_into(outcome)));
    ASSERT_TRUE(run_until(loop, [&] { return outcome.calls == 1; }));
    ASSERT_TRUE(outcome.handle) << outcome.error.message();
    const auto bound = outcome.handle->local_address();
    ASSERT_TRUE(bound.ok());
    const Address local = *bound;
    EXPECT_EQ(local.to_string().rfind("127.0.0.2:", 0), 0u) << local.to_string();
    if (fixed_port) {
      EXPECT_EQ(local.port(), source.port());
    } else {
      EXPECT_NE(local.port(), 0);
    }
  }
  Connector::Options v6;
  v6.source = Address::ipv6_loopback(0);
  Connector mismatched(loop, std::move(v6));
  Client client;
  Outcome never;
  EXPECT_EQ(mismatched.connect(server.server.address(), 10s, client.handlers, record_into(never)),
            std::errc::address_family_not_supported);
}

// RetryPolicy::first_delay: "at least 1 ms": a zero would retry a refused address on every
// iteration. On the test clock nothing is retried until it moves 1 ms.
TEST(ConnectorRetry, AZeroFirstDelayWaitsOneMillisecond) {
  RefusedPort refused;
  ManualClock clock;
  EventLoop loop(with_clock(clock));
  int attempts = 0;
  Connector::Options options;
  options.retry.max_attempts = 0;
  options.retry.first_delay = Duration::zero();
  options.retry.jitter = 0;
  options.configure = [&](int) {
    ++attempts;
    return std::error_code{};
  };
  Connector connector(loop, std::move(options));
  Client client;
  Outcome outcome;
  ASSERT_FALSE(connector.connect(refused.address(), 10s, client.handlers, record_into(outcome)));
  for (int i = 0; i < 20; ++i)
    loop.run_once(1ms);
  EXPECT_EQ(attempts, 1) << "retried without the clock moving";
  clock.advance(1ms);
  ASSERT_TRUE(run_until(loop, [&] { return attempts == 2; }));
  connector.cancel();
}

// Connector::Options::retry: "Each attempt has the full `timeout`": an attempt whose SYN is
// dropped (a full accept queue) times out after 5 s on the test clock, the retry starts after
// its backoff, and it too runs the whole 5 s before the handler hears ETIMEDOUT from attempt 2.
TEST(ConnectorRetry, EachAttemptHasTheFullTimeout) {
  FullBacklog backlog;
  ManualClock clock;
  EventLoop loop(with_clock(clock));
  int attempts = 0;
  Connector::Options options;
  options.retry.max_attempts = 2;
  options.retry.first_delay = 100ms;
  options.retry.jitter = 0;
  options.configure = [&](int) {
    ++attempts;
    return std::error_code{};
  };
  Connector connector(loop, std::move(options));
  Client client;
  Outcome outcome;
  ASSERT_FALSE(connector.connect(backlog.address(), 5s, client.handlers, record_into(outcome)));
  auto settle = [&] {
    for (int i = 0; i < 3; ++i)
      loop.run_once(0ms);
  };
  settle();
  clock.advance(5s);  // the first attempt's timeout
  settle();
  EXPECT_EQ(attempts, 1);
  EXPECT_EQ(outcome.calls, 0);
  clock.advance(100ms);  // the backoff
  settle();
  EXPECT_EQ(attempts, 2);
  clock.advance(4900ms);
  settle();
  EXPECT_EQ(outcome.calls, 0) << "the second attempt did not get the full timeout";
  clock.advance(100ms);
  settle();
  ASSERT_EQ(outcome.calls, 1);
  EXPECT_EQ(outcome.error, std::errc::timed_out) << outcome.error.message();
  EXPECT_EQ(connector.attempt(), 2);
}

}  // namespace
}  // namespace reactor
