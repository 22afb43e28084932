// TcpServer: ids that go stale, the connection cap, several loops sharing one address
// (EPOLLEXCLUSIVE or SO_REUSEPORT), graceful shutdown, counters, on_open, Unix sockets.
#include "reactor/tcp_server.hpp"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "injected_fault.hpp"
#include "loopback.hpp"
#include "reactor/listener.hpp"
#include "reactor/loop_thread.hpp"
#include "reactor/timer_queue.hpp"

// Every accept4 the library makes in this executable comes here first.
reactor::test::InjectedFault accept_fault;
REACTOR_INJECTABLE(accept_fault, accept4, (int fd, sockaddr* addr, socklen_t* len, int flags),
                   (fd, addr, len, flags))
// And every epoll_ctl ADD (a registration failing for want of memory); other ops pass through.
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

using test::connect_errno;
using test::connect_to;
using test::echo_handlers;
using test::PeerEnd;
using test::read_until_closed;
using test::receive;
using test::run_until;
using test::send_all;
using test::TempDir;
using test::with_clock;

// Each test that arms a fault disarms them when it ends, whatever happened.
struct DisarmAtExit {
  ~DisarmAtExit() {
    accept_fault.disarm();
    epoll_add_fault.disarm();
  }
};

// ---------------------------------------------------------------------------------------------
// One loop

TEST(TcpServer, EchoesOverIpv4) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  ASSERT_FALSE(server.start());
  ASSERT_NE(server.address().port(), 0);
  EXPECT_EQ(server.loop_count(), 1u);
  int client = connect_to(server.address());
  ASSERT_GE(client, 0) << std::strerror(errno);
  ASSERT_TRUE(send_all(client, "round trip"));
  std::string got;
  ASSERT_TRUE(receive(loop, client, 10, got));
  EXPECT_EQ(got, "round trip");
  ::close(client);
}

TEST(TcpServer, StartOnABusyPortIsAddressInUse) {
  auto busy = ListenSocket::open(Address::ipv4_loopback(0));
  ASSERT_TRUE(busy.ok());
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  const std::size_t registrations = loop.registrations();
  TcpServer server(loop, busy->address(), handlers);
  auto ec = server.start();
  EXPECT_EQ(ec, std::errc::address_in_use) << ec.message();
  EXPECT_EQ(loop.registrations(), registrations) << "nothing listens after a failed start";
}

// "Errors: those of ListenSocket::open ..., after which nothing listens": also when the
// listener's registration fails (epoll_ctl, ENOMEM): the socket is closed (its Unix file gone)
// and a later start() listens.
TEST(TcpServer, StartFailingToRegisterLeavesNothingListening) {
  DisarmAtExit disarm;
  TempDir dir;
  auto address = Address::parse("unix:" + dir.file("server.sock"));
  ASSERT_TRUE(address.ok());
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  const std::size_t registrations = loop.registrations();
  TcpServer server(loop, *address, handlers);
  epoll_add_fault.arm(ENOMEM, 1);
  auto ec = server.start();
  EXPECT_EQ(epoll_add_fault.injected.load(), 1);
  EXPECT_EQ(ec, std::errc::not_enough_memory) << ec.message();
  EXPECT_EQ(loop.registrations(), registrations);
  EXPECT_EQ(connect_errno(*address), ENOENT) << "something still listens";

  ASSERT_FALSE(server.start());
  int client = connect_to(*address);
  ASSERT_GE(client, 0) << std::strerror(errno);
  ASSERT_TRUE(send_all(client, "second start"));
  std::string got;
  ASSERT_TRUE(receive(loop, client, 12, got));
  EXPECT_EQ(got, "second start");
  ::close(client);
}

// Connects to `address`, sends `message` and expects it back (echo handlers).
void expect_echo(EventLoop& loop, const Address& address, const std::string& message) {
  int client = connect_to(address);
  ASSERT_GE(client, 0) << std::strerror(errno);
  ASSERT_TRUE(send_all(client, message));
  std::string got;
  EXPECT_TRUE(receive(loop, client, message.size(), got));
  EXPECT_EQ(got, message);
  ::close(client);
}

TEST(TcpServer, SecondStartIsAlreadyAndTheServerKeepsAccepting) {
  // A fixed address (a Unix path): the second bind is refused, and its cleanup once closed the
  // socket the first start() was accepting on.
  TempDir dir;
  auto address = Address::parse("unix:" + dir.file("server.sock"));
  ASSERT_TRUE(address.ok());
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, *address, handlers);
  ASSERT_FALSE(server.start());
  const std::size_t registrations = loop.registrations();
  auto ec = server.start();
  EXPECT_EQ(ec, std::errc::connection_already_in_progress) << ec.message();
  EXPECT_EQ(ec.value(), EALREADY);
  EXPECT_EQ(loop.registrations(), registrations);
  EXPECT_EQ(server.address().to_string(), address->to_string());
  expect_echo(loop, *address, "still here");
}

TEST(TcpServer, SecondStartOnPortZeroKeepsTheFirstPort) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  ASSERT_FALSE(server.start());
  const Address first = server.address();
  EXPECT_EQ(server.start(), std::errc::connection_already_in_progress);
  EXPECT_EQ(server.address().to_string(), first.to_string());
  expect_echo(loop, first, "same port");
}

TEST(TcpServer, StartWhileStoppingIsAlreadyAndStartAfterStopListensAgain) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  ASSERT_FALSE(server.start());
  int client = connect_to(server.address());
  ASSERT_GE(client, 0);
  ASSERT_TRUE(run_until(loop, [&] { return server.stats().active == 1; }));

  int done = 0;
  server.stop(5s, [&] { ++done; });
  EXPECT_EQ(server.start(), std::errc::connection_already_in_progress) << "stop() not completed";
  EXPECT_EQ(read_until_closed(loop, client), PeerEnd::eof);
  ::close(client);
  ASSERT_TRUE(run_until(loop, [&] { return done == 1; }));
  EXPECT_EQ(connect_errno(server.address()), ECONNREFUSED);

  // Stopped: the server may listen again (port 0 again: a new port), and stop again.
  ASSERT_FALSE(server.start());
  expect_echo(loop, server.address(), "again");
  server.stop(5s, [&] { ++done; });
  ASSERT_TRUE(run_until(loop, [&] { return done == 2; }));
}

// A listening socket as a parent process (systemd, a restarting server) hands it on.
ListenSocket adopted_listener(const Address& address) {
  Fd fd(::socket(address.family(), SOCK_STREAM, 0));
  EXPECT_EQ(::bind(fd.get(), address.sockaddr_ptr(), address.length()), 0) << std::strerror(errno);
  EXPECT_EQ(::listen(fd.get(), 16), 0) << std::strerror(errno);
  auto socket = ListenSocket::adopt(std::move(fd));
  EXPECT_TRUE(socket.ok()) << socket.error().message();
  return std::move(*socket);
}

// tcp_server.hpp: "the server may be given a ListenSocket that is already listening ... a stop
// stops accepting but keeps the socket open (connections arriving meanwhile wait in its
// backlog), and start() after a stop serves it again."
TEST(TcpServer, AdoptedSocketServesAndIsServedAgainAfterAStop) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  ListenSocket socket = adopted_listener(Address::ipv4_loopback(0));
  const Address bound = socket.address();
  TcpServer server(loop, std::move(socket), handlers);
  EXPECT_EQ(server.address(), bound) << "known from the constructor on";
  ASSERT_FALSE(server.start());
  EXPECT_EQ(server.address(), bound);
  expect_echo(loop, bound, "adopted");

  int done = 0;
  server.stop(5s, [&] { ++done; });
  ASSERT_TRUE(run_until(loop, [&] { return done == 1; }));
  int waiting = connect_to(bound);  // the socket is still open: the kernel queues it
  ASSERT_GE(waiting, 0) << std::strerror(errno);
  ASSERT_FALSE(server.start());
  ASSERT_TRUE(send_all(waiting, "queued"));
  std::string got;
  ASSERT_TRUE(receive(loop, waiting, 6, got));
  EXPECT_EQ(got, "queued");
  ::close(waiting);
  server.stop(5s, [&] { ++done; });
  ASSERT_TRUE(run_until(loop, [&] { return done == 2; }));
}

// tcp_server.hpp: "ListenOptions (reuse_port, backlog) cannot apply to a socket someone else
// bound, and start() refuses reuse_port."
TEST(TcpServer, AdoptedSocketWithReusePortIsInvalidArgumentAndNothingListens) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  ServerOptions options;
  options.listen.reuse_port = true;
  TcpServer server(loop, adopted_listener(Address::ipv4_loopback(0)), handlers, options);
  EXPECT_EQ(server.start(), std::errc::invalid_argument);
  int done = 0;
  server.stop(5s, [&] { ++done; });  // nothing to stop: done runs
  ASSERT_TRUE(run_until(loop, [&] { return done == 1; }));
}

TEST(TcpServer, StaleIdFindsNothingAfterCloseAndAfterItsSlotIsReused) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  int closes = 0;
  handlers.on_close = [&](Connection&, CloseReason, std::error_code) { ++closes; };
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  std::vector<ConnectionId> ids;
  server.set_open_handler([&](Connection& c) { ids.push_back(c.id()); });
  ASSERT_FALSE(server.start());

  int first_client = connect_to(server.address());
  ASSERT_GE(first_client, 0);
  ASSERT_TRUE(run_until(loop, [&] { return ids.size() == 1; }));
  const ConnectionId first = ids[0];
  EXPECT_TRUE(first);
  ASSERT_NE(server.find(first), nullptr);
  EXPECT_EQ(server.find(first)->id(), first);

  ::close(first_client);
  ASSERT_TRUE(run_until(loop, [&] { return closes == 1; }));
  EXPECT_EQ(server.find(first), nullptr);

  int second_client = connect_to(server.address());
  ASSERT_GE(second_client, 0);
  ASSERT_TRUE(run_until(loop, [&] { return ids.size() == 2; }));
  const ConnectionId second = ids[1];
  EXPECT_EQ(second.slot, first.slot) << "the freed slot is reused";
  EXPECT_NE(second.generation, first.generation);
  EXPECT_EQ(server.find(first), nullptr);
  EXPECT_NE(server.find(second), nullptr);
  ::close(second_client);
}

TEST(TcpServer, FindRejectsIdsItNeverHandedOut) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  ConnectionId seen;
  server.set_open_handler([&](Connection& c) { seen = c.id(); });
  ASSERT_FALSE(server.start());
  int client = connect_to(server.address());
  ASSERT_GE(client, 0);
  ASSERT_TRUE(run_until(loop, [&] { return static_cast<bool>(seen); }));

  EXPECT_EQ(server.find(ConnectionId{}), nullptr);
  EXPECT_EQ(server.find(ConnectionId{seen.slot + 1000, seen.generation, 0}), nullptr);
  EXPECT_EQ(server.find(ConnectionId{seen.slot, seen.generation + 1, 0}), nullptr);
  EXPECT_EQ(server.find(ConnectionId{seen.slot, seen.generation, 7}), nullptr);
  EXPECT_NE(server.find(seen), nullptr);
  ::close(client);
}

TEST(TcpServer, ConnectionOverTheCapIsAcceptedAndClosedAtOnce) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  ServerOptions options;
  options.max_connections = 2;
  TcpServer server(loop, Address::ipv4_loopback(0), handlers, options);
  int opened = 0;
  server.set_open_handler([&](Connection&) { ++opened; });
  ASSERT_FALSE(server.start());

  int a = connect_to(server.address());
  int b = connect_to(server.address());
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  ASSERT_TRUE(run_until(loop, [&] { return opened == 2; }));
  int over = connect_to(server.address());
  ASSERT_GE(over, 0) << "the kernel completes the handshake; the server then closes it";
  EXPECT_NE(read_until_closed(loop, over), PeerEnd::open);
  EXPECT_EQ(opened, 2);
  ServerStats stats = server.stats();
  EXPECT_EQ(stats.refused, 1u);
  EXPECT_EQ(stats.accepted, 2u);
  EXPECT_EQ(stats.active, 2u);

  // The two under the cap are served as usual.
  std::string got;
  ASSERT_TRUE(send_all(b, "b"));
  ASSERT_TRUE(receive(loop, b, 1, got));
  EXPECT_EQ(got, "b");
  ::close(over);
  ::close(a);
  ::close(b);
}

// A connection the server cannot register (epoll_ctl, ENOMEM) is closed at once: never opened
// nor counted, its slot free again, and the server goes on serving.
TEST(TcpServer, ConnectionThatCannotBeRegisteredIsClosedAndTheServerGoesOn) {
  DisarmAtExit disarm;
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  std::vector<ConnectionId> ids;
  server.set_open_handler([&](Connection& c) { ids.push_back(c.id()); });
  ASSERT_FALSE(server.start());

  epoll_add_fault.arm(ENOMEM, 1);
  int lost = connect_to(server.address());
  ASSERT_GE(lost, 0) << std::strerror(errno);
  EXPECT_NE(read_until_closed(loop, lost), PeerEnd::open);
  EXPECT_EQ(epoll_add_fault.injected.load(), 1);
  EXPECT_TRUE(ids.empty());
  EXPECT_EQ(server.stats().accepted, 0u);
  EXPECT_EQ(server.stats().active, 0u);
  ::close(lost);

  expect_echo(loop, server.address(), "next one");
  ASSERT_EQ(ids.size(), 1u);
  EXPECT_EQ(ids[0].slot, 0u) << "the failed connection's slot was not freed";
  EXPECT_EQ(server.stats().accepted, 1u);
}

// ServerOptions::accepts_per_event reaches the listener: ten connections queued, at most three
// accepted per readiness.
TEST(TcpServer, AcceptsPerEventBoundsAcceptsPerReadiness) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  ServerOptions options;
  options.accepts_per_event = 3;
  TcpServer server(loop, Address::ipv4_loopback(0), handlers, options);
  ASSERT_FALSE(server.start());
  std::vector<int> clients;
  for (int i = 0; i < 10; ++i) {
    int fd = connect_to(server.address());
    ASSERT_GE(fd, 0) << std::strerror(errno);
    clients.push_back(fd);
  }
  // The handshakes are complete in the kernel's queue: the first readiness is immediate, and
  // the accepted connections have nothing to read yet.
  EXPECT_EQ(loop.run_once(10s), 1u);
  EXPECT_EQ(server.stats().accepted, 3u);
  loop.run_once(10s);
  EXPECT_EQ(server.stats().accepted, 6u);
  ASSERT_TRUE(run_until(loop, [&] { return server.stats().accepted == 10; }));
  for (int fd : clients)
    ::close(fd);
}

TEST(TcpServer, ClosingAConnectionMakesRoomUnderTheCap) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  ServerOptions options;
  options.max_connections = 1;
  TcpServer server(loop, Address::ipv4_loopback(0), handlers, options);
  ASSERT_FALSE(server.start());

  int a = connect_to(server.address());
  ASSERT_GE(a, 0);
  ASSERT_TRUE(run_until(loop, [&] { return server.stats().active == 1; }));
  ::close(a);
  ASSERT_TRUE(run_until(loop, [&] { return server.stats().active == 0; }));

  int b = connect_to(server.address());
  ASSERT_GE(b, 0);
  std::string got;
  ASSERT_TRUE(send_all(b, "room"));
  ASSERT_TRUE(receive(loop, b, 4, got));
  EXPECT_EQ(got, "room");
  EXPECT_EQ(server.stats().refused, 0u);
  ::close(b);
}

TEST(TcpServer, StatsCountConnectionsAndBytes) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  ASSERT_FALSE(server.start());

  std::vector<int> clients;
  std::size_t total = 0;
  for (std::size_t size : {1000u, 2000u, 3000u}) {
    int fd = connect_to(server.address());
    ASSERT_GE(fd, 0);
    clients.push_back(fd);
    const std::string payload(size, static_cast<char>('a' + clients.size()));
    ASSERT_TRUE(send_all(fd, payload));
    std::string got;
    ASSERT_TRUE(receive(loop, fd, size, got));
    EXPECT_EQ(got, payload);
    total += size;
  }
  ServerStats stats = server.stats();
  EXPECT_EQ(stats.accepted, 3u);
  EXPECT_EQ(stats.active, 3u);
  EXPECT_EQ(stats.bytes_in, total);
  EXPECT_EQ(stats.bytes_out, total);
  EXPECT_EQ(stats.refused, 0u);
  EXPECT_EQ(stats.fd_exhaustion, 0u);

  for (int fd : clients)
    ::close(fd);
  ASSERT_TRUE(run_until(loop, [&] { return server.stats().active == 0; }));
  stats = server.stats();
  EXPECT_EQ(stats.accepted, 3u);
  EXPECT_EQ(stats.bytes_in, total);
  EXPECT_EQ(stats.bytes_out, total);
}

TEST(TcpServer, OnOpenRunsBeforeOnDataAndItsContextReachesOnData) {
  EventLoop loop;
  ConnectionHandlers handlers;
  std::vector<std::string> events;
  int context_value = 42;
  void* context_in_data = nullptr;
  handlers.on_data = [&](Connection& c, Buffer& input) {
    events.push_back("data");
    context_in_data = c.context();
    input.consume(input.size());
  };
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  server.set_open_handler([&](Connection& c) {
    events.push_back("open");
    c.set_context(&context_value);
  });
  ASSERT_FALSE(server.start());

  // The bytes are there before the server accepts: on_open must still come first.
  int client = connect_to(server.address());
  ASSERT_GE(client, 0);
  ASSERT_TRUE(send_all(client, "early bird"));
  ASSERT_TRUE(run_until(loop, [&] { return events.size() >= 2; }));
  EXPECT_EQ(events[0], "open");
  EXPECT_EQ(events[1], "data");
  EXPECT_EQ(context_in_data, &context_value);
  ::close(client);
}

TEST(TcpServer, UnixSocketServerEchoesAndRemovesItsFileOnStop) {
  TempDir dir;
  const std::string path = dir.file("server.sock");
  auto address = Address::parse("unix:" + path);
  ASSERT_TRUE(address.ok());
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, *address, handlers);
  ASSERT_FALSE(server.start());
  EXPECT_EQ(server.address(), *address);

  int client = connect_to(*address);
  ASSERT_GE(client, 0) << std::strerror(errno);
  ASSERT_TRUE(send_all(client, "unix echo"));
  std::string got;
  ASSERT_TRUE(receive(loop, client, 9, got));
  EXPECT_EQ(got, "unix echo");
  ::close(client);

  int done = 0;
  server.stop(5s, [&] { ++done; });
  ASSERT_TRUE(run_until(loop, [&] { return done == 1; }));
  struct stat st {};
  EXPECT_NE(::lstat(path.c_str(), &st), 0) << "the socket file outlived the server";
  EXPECT_EQ(connect_errno(*address), ENOENT);
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown

TEST(TcpServer, GracefulStopDeliversQueuedOutputThenEofAndClosesThePort) {
  EventLoop loop;
  ConnectionHandlers handlers;
  std::vector<CloseReason> reasons;
  handlers.on_close = [&](Connection&, CloseReason r, std::error_code) { reasons.push_back(r); };
  ServerOptions options;
  options.connection.high_water_mark = 64u << 20;
  options.connection.linger = 60s;
  TcpServer server(loop, Address::ipv4_loopback(0), handlers, options);
  // More than loopback's socket buffers hold: most of it is queued in the server.
  std::string payload(16u << 20, '\0');
  for (std::size_t i = 0; i < payload.size(); ++i)
    payload[i] = static_cast<char>(i * 7 + i / 4096);
  std::vector<ConnectionId> ids;
  server.set_open_handler([&](Connection& c) {
    ids.push_back(c.id());
    c.send(payload);
  });
  ASSERT_FALSE(server.start());
  const Address address = server.address();

  int a = connect_to(address);
  int b = connect_to(address);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  ASSERT_TRUE(run_until(loop, [&] { return ids.size() == 2; }));
  for (ConnectionId id : ids) {
    Connection* c = server.find(id);
    ASSERT_NE(c, nullptr);
    ASSERT_GT(c->queued_bytes(), 0u) << "nothing queued: the test would not test draining";
  }

  int done = 0;
  server.stop(30s, [&] { ++done; });
  std::string got_a;
  std::string got_b;
  EXPECT_EQ(read_until_closed(loop, a, &got_a), PeerEnd::eof);
  EXPECT_EQ(read_until_closed(loop, b, &got_b), PeerEnd::eof);
  EXPECT_TRUE(got_a == payload) << "a received " << got_a.size() << " of " << payload.size();
  EXPECT_TRUE(got_b == payload) << "b received " << got_b.size() << " of " << payload.size();
  EXPECT_EQ(done, 0) << "done ran before the connections finished";

  ::close(a);
  ::close(b);
  ASSERT_TRUE(run_until(loop, [&] { return done > 0; }));
  for (int i = 0; i < 5; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(done, 1);
  EXPECT_EQ(reasons,
            (std::vector<CloseReason>{CloseReason::local_close, CloseReason::local_close}));
  EXPECT_EQ(server.stats().active, 0u);
  EXPECT_EQ(connect_errno(address), ECONNREFUSED);
}

// "Graceful shutdown: stop accepting": a client that connects while the stop waits for an open
// connection is neither accepted nor served, and is turned away once the stop completes and
// the listening socket closes.
TEST(TcpServer, ConnectionsArrivingDuringAStopAreNotAccepted) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  int opened = 0;
  server.set_open_handler([&](Connection&) { ++opened; });
  ASSERT_FALSE(server.start());
  int first = connect_to(server.address());
  ASSERT_GE(first, 0);
  ASSERT_TRUE(run_until(loop, [&] { return opened == 1; }));

  int done = 0;
  server.stop(10s, [&] { ++done; });
  int late = connect_to(server.address());  // the kernel still completes the handshake
  ASSERT_GE(late, 0) << std::strerror(errno);
  ASSERT_TRUE(send_all(late, "anyone?"));
  EXPECT_EQ(read_until_closed(loop, first), PeerEnd::eof);
  for (int i = 0; i < 5; ++i)
    loop.run_once(1ms);
  EXPECT_EQ(opened, 1);
  EXPECT_EQ(done, 0);

  ::close(first);
  ASSERT_TRUE(run_until(loop, [&] { return done == 1; }));
  std::string echoed;
  EXPECT_NE(read_until_closed(loop, late, &echoed), PeerEnd::open);
  EXPECT_EQ(echoed, "");
  EXPECT_EQ(opened, 1);
  EXPECT_EQ(server.stats().accepted, 1u);
  ::close(late);
}

TEST(TcpServer, ConnectionThatNeverClosesIsAbortedAfterGrace) {
  ManualClock clock;
  EventLoop loop(with_clock(clock));
  ConnectionHandlers handlers = echo_handlers();
  std::vector<CloseReason> reasons;
  handlers.on_close = [&](Connection&, CloseReason r, std::error_code) { reasons.push_back(r); };
  ServerOptions options;
  options.connection.linger = std::chrono::hours(1);  // the grace, not the linger, must end it
  TcpServer server(loop, Address::ipv4_loopback(0), handlers, options);
  ASSERT_FALSE(server.start());
  int client = connect_to(server.address());
  ASSERT_GE(client, 0);
  ASSERT_TRUE(run_until(loop, [&] { return server.stats().active == 1; }));

  int done = 0;
  server.stop(5s, [&] { ++done; });
  // The server's FIN arrives; the client keeps its side open.
  ASSERT_EQ(read_until_closed(loop, client), PeerEnd::eof);
  for (int i = 0; i < 5; ++i)
    loop.run_once(1ms);
  EXPECT_EQ(done, 0);
  EXPECT_TRUE(reasons.empty());

  clock.advance(5s);
  ASSERT_TRUE(run_until(loop, [&] { return done > 0; }));
  EXPECT_EQ(done, 1);
  EXPECT_EQ(reasons, std::vector<CloseReason>{CloseReason::aborted});
  // The abort is a reset: the client's next write meets it.
  ASSERT_TRUE(run_until(loop, [&] {
    pollfd pfd{client, POLLIN, 0};
    return ::poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLERR | POLLHUP));
  }));
  ::close(client);
}

// A stop meets the table as it is: the slot of a connection that already ended is empty and is
// skipped by the closing and by the grace's aborting; and `done` may be left out ("stop(grace)"):
// the stop still completes (the server listens again after it).
TEST(TcpServer, StopWithoutDoneSkipsEndedConnectionsAndAbortsTheRestAfterGrace) {
  ManualClock clock;
  EventLoop loop(with_clock(clock));
  ConnectionHandlers handlers = echo_handlers();
  std::vector<CloseReason> reasons;
  handlers.on_close = [&](Connection&, CloseReason r, std::error_code) { reasons.push_back(r); };
  ServerOptions options;
  options.connection.linger = std::chrono::hours(1);  // the grace, not the linger, must end it
  TcpServer server(loop, Address::ipv4_loopback(0), handlers, options);
  ASSERT_FALSE(server.start());
  const int ended = connect_to(server.address());
  const int stays = connect_to(server.address());
  ASSERT_GE(ended, 0);
  ASSERT_GE(stays, 0);
  ASSERT_TRUE(run_until(loop, [&] { return server.stats().active == 2; }));
  ::close(ended);  // its slot empties before the stop: the first slot, taken first
  ASSERT_TRUE(run_until(loop, [&] { return server.stats().active == 1; }));
  ASSERT_EQ(reasons, std::vector<CloseReason>{CloseReason::peer_closed});

  server.stop(5s);
  ASSERT_EQ(read_until_closed(loop, stays), PeerEnd::eof);  // closed gracefully: our FIN
  clock.advance(5s);
  ASSERT_TRUE(run_until(loop, [&] { return server.stats().active == 0; }));
  EXPECT_EQ(reasons, (std::vector<CloseReason>{CloseReason::peer_closed, CloseReason::aborted}));
  for (int i = 0; i < 5; ++i)
    loop.run_once(0ms);
  EXPECT_FALSE(server.start()) << "the stop did not complete";
  ::close(stays);
}

TEST(TcpServer, StopFromInsideAConnectionCallback) {
  EventLoop loop;
  ConnectionHandlers handlers;
  int done = 0;
  TcpServer* server_ptr = nullptr;
  handlers.on_data = [&](Connection& c, Buffer& input) {
    if (input.view() == "stop") {
      c.send("bye");
      server_ptr->stop(5s, [&] { ++done; });
    }
    input.consume(input.size());
  };
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  server_ptr = &server;
  ASSERT_FALSE(server.start());
  const Address address = server.address();
  int stopper = connect_to(address);
  int bystander = connect_to(address);
  ASSERT_GE(stopper, 0);
  ASSERT_GE(bystander, 0);
  ASSERT_TRUE(run_until(loop, [&] { return server.stats().active == 2; }));

  ASSERT_TRUE(send_all(stopper, "stop"));
  std::string reply;
  EXPECT_EQ(read_until_closed(loop, stopper, &reply), PeerEnd::eof);
  EXPECT_EQ(reply, "bye");
  EXPECT_EQ(read_until_closed(loop, bystander), PeerEnd::eof);
  ::close(stopper);
  ::close(bystander);
  ASSERT_TRUE(run_until(loop, [&] { return done > 0; }));
  for (int i = 0; i < 3; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(done, 1);
  EXPECT_EQ(connect_errno(address), ECONNREFUSED);
}

TEST(TcpServer, SecondStopJoinsTheFirstAndEachDoneRunsOnceInOrder) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  ASSERT_FALSE(server.start());
  std::vector<int> ran;
  server.stop(1s, [&] { ran.push_back(1); });
  server.stop(1s, [&] { ran.push_back(2); });
  server.stop(1s);  // no done: joins as well
  ASSERT_TRUE(run_until(loop, [&] { return ran.size() >= 2; }));
  for (int i = 0; i < 3; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(ran, (std::vector<int>{1, 2}));
}

// "Every stop()'s done runs exactly once": also a done given to a stop() that joins a stop
// begun without one.
TEST(TcpServer, StopWithDoneJoiningAStopWithoutDoneRunsItsDoneOnce) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  ASSERT_FALSE(server.start());
  int done = 0;
  server.stop(1s);
  server.stop(1s, [&] { ++done; });
  ASSERT_TRUE(run_until(loop, [&] { return done > 0; }));
  for (int i = 0; i < 3; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(done, 1);
}

// "stop(): any thread ... It takes effect on the home loop (a call from another thread is
// posted there)": until the home loop runs it, nothing has changed (a start() on the home loop
// still succeeds); then it stops that start and runs `done` on the home loop's thread.
TEST(TcpServer, StopFromAnotherThreadTakesEffectOnTheHomeLoop) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  int done = 0;
  std::thread::id done_on;
  std::thread([&] {
    server.stop(5s, [&] {
      ++done;
      done_on = std::this_thread::get_id();
    });
  }).join();
  ASSERT_FALSE(server.start()) << "the stop took effect on the calling thread";
  const Address address = server.address();
  int client = connect_to(address);
  ASSERT_GE(client, 0) << std::strerror(errno);
  EXPECT_NE(read_until_closed(loop, client), PeerEnd::open);
  ::close(client);
  ASSERT_TRUE(run_until(loop, [&] { return done > 0; }));
  EXPECT_EQ(done, 1);
  EXPECT_EQ(done_on, std::this_thread::get_id());
  EXPECT_EQ(connect_errno(address), ECONNREFUSED);
}

// "destroying the server during a stop cancels the stop (its done never runs)": also when the
// stop is still on its way from another thread.
TEST(TcpServer, DestroyedWithAStopPostedFromAnotherThreadNeverRunsDone) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  auto server = std::make_unique<TcpServer>(loop, Address::ipv4_loopback(0), handlers);
  ASSERT_FALSE(server->start());
  int done = 0;
  std::thread([&] { server->stop(1s, [&] { ++done; }); }).join();
  server.reset();
  for (int i = 0; i < 5; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(done, 0);
}

// "a stop() while one is under way joins it (... its `grace` is ignored)": a joining stop with
// no grace does not abort what the first stop's grace still allows.
TEST(TcpServer, JoiningStopsGraceIsIgnored) {
  ManualClock clock;
  EventLoop loop(with_clock(clock));
  ConnectionHandlers handlers = echo_handlers();
  std::vector<CloseReason> reasons;
  handlers.on_close = [&](Connection&, CloseReason r, std::error_code) { reasons.push_back(r); };
  ServerOptions options;
  options.connection.linger = std::chrono::hours(1);
  TcpServer server(loop, Address::ipv4_loopback(0), handlers, options);
  ASSERT_FALSE(server.start());
  int client = connect_to(server.address());
  ASSERT_GE(client, 0);
  ASSERT_TRUE(run_until(loop, [&] { return server.stats().active == 1; }));

  int done = 0;
  server.stop(5s, [&] { ++done; });
  server.stop(0s, [&] { ++done; });
  ASSERT_EQ(read_until_closed(loop, client), PeerEnd::eof);
  clock.advance(4s);
  for (int i = 0; i < 5; ++i)
    loop.run_once(1ms);
  EXPECT_TRUE(reasons.empty()) << "aborted before the first stop's grace ran out";
  EXPECT_EQ(done, 0);
  clock.advance(1s);
  ASSERT_TRUE(run_until(loop, [&] { return done == 2; }));
  EXPECT_EQ(reasons, std::vector<CloseReason>{CloseReason::aborted});
  ::close(client);
}

TEST(TcpServer, StopOnAServerThatDoesNotListenRunsDone) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  int done = 0;
  server.stop(1s, [&] { ++done; });  // never started
  EXPECT_EQ(done, 0) << "done runs from the loop, not inside stop()";
  ASSERT_TRUE(run_until(loop, [&] { return done == 1; }));
  ASSERT_FALSE(server.start());
  server.stop(1s, [&] { ++done; });
  ASSERT_TRUE(run_until(loop, [&] { return done == 2; }));
  server.stop(1s, [&] { ++done; });  // already stopped
  ASSERT_TRUE(run_until(loop, [&] { return done == 3; }));
}

TEST(TcpServer, StopWithoutConnectionsCompletesAndClosesThePort) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  ASSERT_FALSE(server.start());
  const Address address = server.address();
  int done = 0;
  server.stop(1s, [&] { ++done; });
  ASSERT_TRUE(run_until(loop, [&] { return done > 0; }));
  EXPECT_EQ(connect_errno(address), ECONNREFUSED);
}

TEST(TcpServer, DestroyedRightAfterStopLeavesNothingBehindOnTheLoop) {
  // The stop's "shard stopped" report is in flight to the loop when the server goes: it must
  // find no server (ASan saw it read the freed one), and `done` is cancelled with the stop.
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  auto server = std::make_unique<TcpServer>(loop, Address::ipv4_loopback(0), handlers);
  ASSERT_FALSE(server->start());
  const Address address = server->address();
  int done = 0;
  server->stop(0s, [&] { ++done; });
  server.reset();
  for (int i = 0; i < 5; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(done, 0);
  EXPECT_EQ(connect_errno(address), ECONNREFUSED);
}

TEST(TcpServer, DestroyedDuringAGracefulStopDetachesItsConnections) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  int closes = 0;
  handlers.on_close = [&](Connection&, CloseReason, std::error_code) { ++closes; };
  auto server = std::make_unique<TcpServer>(loop, Address::ipv4_loopback(0), handlers);
  ASSERT_FALSE(server->start());
  int client = connect_to(server->address());
  ASSERT_GE(client, 0);
  ASSERT_TRUE(run_until(loop, [&] { return server->stats().active == 1; }));
  int done = 0;
  server->stop(5s, [&] { ++done; });
  server.reset();
  // The connection's socket closed without callbacks; nothing of the server runs any more.
  EXPECT_NE(read_until_closed(loop, client), PeerEnd::open);
  for (int i = 0; i < 5; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(done, 0);
  EXPECT_EQ(closes, 0);
  ::close(client);
}

// "`done` itself may destroy the server": nothing of the server runs after it.
TEST(TcpServer, DoneMayDestroyTheServer) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  auto server = std::make_unique<TcpServer>(loop, Address::ipv4_loopback(0), handlers);
  ASSERT_FALSE(server->start());
  int client = connect_to(server->address());
  ASSERT_GE(client, 0);
  ASSERT_TRUE(run_until(loop, [&] { return server->stats().active == 1; }));
  int done = 0;
  server->stop(5s, [&] {
    ++done;
    server.reset();
  });
  EXPECT_EQ(read_until_closed(loop, client), PeerEnd::eof);
  ::close(client);
  ASSERT_TRUE(run_until(loop, [&] { return done > 0; }));
  EXPECT_EQ(server, nullptr);
  for (int i = 0; i < 5; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(done, 1);
}

// "open connections, and ended ones whose on_close is still due, are dropped without
// callbacks": an abort() from outside the callbacks leaves on_close due (it runs from the
// loop); destroying the server first drops it.
TEST(TcpServer, DestroyedWithAnOnCloseStillDueDropsIt) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  int closes = 0;
  handlers.on_close = [&](Connection&, CloseReason, std::error_code) { ++closes; };
  auto server = std::make_unique<TcpServer>(loop, Address::ipv4_loopback(0), handlers);
  ConnectionId id;
  server->set_open_handler([&](Connection& c) { id = c.id(); });
  ASSERT_FALSE(server->start());
  int client = connect_to(server->address());
  ASSERT_GE(client, 0);
  ASSERT_TRUE(run_until(loop, [&] { return static_cast<bool>(id); }));
  Connection* c = server->find(id);
  ASSERT_NE(c, nullptr);
  c->abort();
  EXPECT_EQ(closes, 0) << "on_close ran inside abort()";
  server.reset();
  for (int i = 0; i < 5; ++i)
    loop.run_once(0ms);
  EXPECT_EQ(closes, 0);
  EXPECT_NE(read_until_closed(loop, client), PeerEnd::open);
  ::close(client);
}

// Accepts `n` clients on a one-loop server; their ids in `ids`, in accept order.
void open_clients(EventLoop& loop, TcpServer& server, int n, std::vector<int>& clients,
                  std::vector<ConnectionId>& ids) {
  for (int i = 0; i < n; ++i) {
    const int fd = connect_to(server.address());
    ASSERT_GE(fd, 0) << std::strerror(errno);
    clients.push_back(fd);
  }
  ASSERT_TRUE(run_until(loop, [&] { return ids.size() == static_cast<std::size_t>(n); }));
}

// tcp_server.hpp: for_each_connection "calls fn(Connection&) for each connection of
// loops[loop_index] that has not ended" (issue 15 part 7: a broadcast without a registry of
// one's own), and fn may send.
TEST(TcpServer, ForEachConnectionVisitsEachConnectionThatHasNotEndedAndMaySend) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  int closes = 0;
  handlers.on_close = [&](Connection&, CloseReason, std::error_code) { ++closes; };
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  std::vector<ConnectionId> ids;
  server.set_open_handler([&](Connection& c) { ids.push_back(c.id()); });
  ASSERT_FALSE(server.start());
  std::vector<int> clients;
  open_clients(loop, server, 3, clients, ids);
  ::close(clients[1]);  // its connection ends
  ASSERT_TRUE(run_until(loop, [&] { return closes == 1; }));

  std::vector<ConnectionId> visited;
  server.for_each_connection(0, [&](Connection& c) {
    visited.push_back(c.id());
    EXPECT_TRUE(c.send("broadcast"));
  });
  EXPECT_EQ(visited, (std::vector<ConnectionId>{ids[0], ids[2]}));
  for (int i : {0, 2}) {
    std::string got;
    ASSERT_TRUE(receive(loop, clients[static_cast<std::size_t>(i)], 9, got)) << "client " << i;
    EXPECT_EQ(got, "broadcast");
  }
  ::close(clients[0]);
  ::close(clients[2]);
}

// tcp_server.hpp: "fn may send to, close, abort or pause this or any connection ... a
// connection fn ends before the walk reaches it is skipped" (closing during the walk is safe;
// ASan holds the "never loses its place").
TEST(TcpServer, ForEachConnectionMayCloseAndAbortConnectionsDuringTheWalk) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  std::vector<CloseReason> reasons;
  handlers.on_close = [&](Connection&, CloseReason r, std::error_code) { reasons.push_back(r); };
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  std::vector<ConnectionId> ids;
  server.set_open_handler([&](Connection& c) { ids.push_back(c.id()); });
  ASSERT_FALSE(server.start());
  std::vector<int> clients;
  open_clients(loop, server, 4, clients, ids);

  std::vector<ConnectionId> visited;
  server.for_each_connection(0, [&](Connection& c) {
    visited.push_back(c.id());
    if (c.id() == ids[0]) {
      server.find(ids[3])->abort();  // ends one the walk has not reached
      c.close();                     // and closes itself, gracefully
    } else {
      c.close();
    }
  });
  EXPECT_EQ(visited, (std::vector<ConnectionId>{ids[0], ids[1], ids[2]}));
  EXPECT_TRUE(reasons.empty()) << "on_close ran inside the walk";
  for (int fd : clients)
    EXPECT_NE(read_until_closed(loop, fd), PeerEnd::open);
  for (int fd : clients)
    ::close(fd);
  ASSERT_TRUE(run_until(loop, [&] { return reasons.size() == 4; }));
  EXPECT_EQ(std::count(reasons.begin(), reasons.end(), CloseReason::aborted), 1);
  EXPECT_EQ(std::count(reasons.begin(), reasons.end(), CloseReason::local_close), 3);
  int after = 0;
  const auto count = [&](Connection&) { ++after; };  // a const callable is taken too
  server.for_each_connection(0, count);
  EXPECT_EQ(after, 0);
}

// tcp_server.hpp: send(id, bytes) "from any thread ... Sends from one thread to one connection
// go out in call order".
TEST(TcpServer, SendFromAnotherThreadReachesTheConnectionInCallOrder) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  std::vector<ConnectionId> ids;
  server.set_open_handler([&](Connection& c) { ids.push_back(c.id()); });
  ASSERT_FALSE(server.start());
  std::vector<int> clients;
  open_clients(loop, server, 1, clients, ids);
  const ConnectionId id = ids[0];
  std::thread([&server, id] {
    for (int i = 0; i < 100; ++i)
      server.send(id, std::to_string(i % 10));
  }).join();
  std::string want;
  for (int i = 0; i < 100; ++i)
    want += std::to_string(i % 10);
  std::string got;
  ASSERT_TRUE(receive(loop, clients[0], want.size(), got));
  EXPECT_EQ(got, want);
  ::close(clients[0]);
}

// tcp_server.hpp: send(): "A connection gone by then (a stale id) ... the bytes are dropped,
// silently": not sent to the connection that took its slot.
TEST(TcpServer, SendToAStaleIdFromAnotherThreadDropsTheBytes) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  int closes = 0;
  handlers.on_close = [&](Connection&, CloseReason, std::error_code) { ++closes; };
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  std::vector<ConnectionId> ids;
  server.set_open_handler([&](Connection& c) { ids.push_back(c.id()); });
  ASSERT_FALSE(server.start());
  std::vector<int> clients;
  open_clients(loop, server, 1, clients, ids);
  const ConnectionId stale = ids[0];
  ::close(clients[0]);
  ASSERT_TRUE(run_until(loop, [&] { return closes == 1; }));
  const int second = connect_to(server.address());
  ASSERT_GE(second, 0);
  ASSERT_TRUE(run_until(loop, [&] { return ids.size() == 2; }));
  ASSERT_EQ(ids[1].slot, stale.slot) << "the freed slot is reused";

  std::thread([&server, stale, fresh = ids[1]] {
    server.send(stale, "for the old one ");
    server.send(ConnectionId{}, "never handed out ");
    server.send(ConnectionId{stale.slot, stale.generation, 7}, "no such loop ");
    server.send(fresh, "for the new one");
  }).join();
  std::string got;
  ASSERT_TRUE(receive(loop, second, 15, got));
  loop.run_once(0ms);
  char extra[64];
  EXPECT_LT(::recv(second, extra, sizeof extra, MSG_DONTWAIT), 0);
  EXPECT_EQ(got, "for the new one");
  ::close(second);
}

// tcp_server.hpp: send(): "... or a server destroyed meanwhile: the bytes are dropped" (under
// ASan: the task does not touch the destroyed server).
TEST(TcpServer, DestroyedWithASendPostedFromAnotherThreadDropsTheBytes) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  auto server = std::make_unique<TcpServer>(loop, Address::ipv4_loopback(0), handlers);
  std::vector<ConnectionId> ids;
  server->set_open_handler([&](Connection& c) { ids.push_back(c.id()); });
  ASSERT_FALSE(server->start());
  std::vector<int> clients;
  open_clients(loop, *server, 1, clients, ids);
  std::thread([&] { server->send(ids[0], "too late"); }).join();
  server.reset();
  for (int i = 0; i < 5; ++i)
    loop.run_once(0ms);
  std::string got;
  EXPECT_NE(read_until_closed(loop, clients[0], &got), PeerEnd::open);
  EXPECT_EQ(got, "");
  ::close(clients[0]);
}

// ---------------------------------------------------------------------------------------------
// The header's "asserted in debug builds": misuse from the wrong thread or from inside the
// server's own callbacks aborts with a message naming it (skipped under NDEBUG).

#ifndef NDEBUG
// "start(), destructor: the home loop's thread"
TEST(TcpServerDeathTest, StartOffTheHomeLoopThreadIsAsserted) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  EXPECT_DEATH(std::thread([&] { (void)server.start(); }).join(),
               "start\\(\\) on the home loop's thread");
}

TEST(TcpServerDeathTest, DestroyedOffTheHomeLoopThreadIsAsserted) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  auto server = std::make_unique<TcpServer>(loop, Address::ipv4_loopback(0), handlers);
  EXPECT_DEATH(std::thread([&] { server.reset(); }).join(),
               "destroy a TcpServer on its home loop's thread");
}

// "find(id): the thread of loops[id.shard] only"
TEST(TcpServerDeathTest, FindOffTheConnectionsLoopThreadIsAsserted) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  ConnectionId id{};
  server.set_open_handler([&](Connection& c) { id = c.id(); });
  ASSERT_FALSE(server.start());
  const int client = connect_to(server.address());
  ASSERT_GE(client, 0);
  ASSERT_TRUE(run_until(loop, [&] { return server.stats().accepted == 1; }));
  EXPECT_DEATH(std::thread([&] { (void)server.find(id); }).join(),
               "find\\(\\) on the connection's own loop only");
  ::close(client);
}

// "for_each_connection(i, fn): the thread of loops[i] only (asserted in debug builds)"
TEST(TcpServerDeathTest, ForEachConnectionOffThatLoopsThreadIsAsserted) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  EXPECT_DEATH(std::thread([&] { server.for_each_connection(0, [](Connection&) {}); }).join(),
               "for_each_connection\\(\\) on that loop's thread only");
  EXPECT_DEATH(server.for_each_connection(1, [](Connection&) {}),
               "for_each_connection\\(\\): no such loop");
}

// "Destruction ... outside the server's own callbacks (asserted in debug builds; defer() it)"
TEST(TcpServerDeathTest, DestroyedInsideItsOnOpenIsAsserted) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  auto server = std::make_unique<TcpServer>(loop, Address::ipv4_loopback(0), handlers);
  server->set_open_handler([&](Connection&) { server.reset(); });
  ASSERT_FALSE(server->start());
  const int client = connect_to(server->address());
  ASSERT_GE(client, 0);
  EXPECT_DEATH((void)run_until(loop, [&] { return server == nullptr; }),
               "TcpServer destroyed inside its own callback");
  ::close(client);
}

TEST(TcpServerDeathTest, DestroyedInsideAConnectionCallbackIsAsserted) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EventLoop loop;
  std::unique_ptr<TcpServer> server;
  ConnectionHandlers handlers;
  handlers.on_data = [&](Connection&, Buffer&) { server.reset(); };
  server = std::make_unique<TcpServer>(loop, Address::ipv4_loopback(0), handlers);
  ASSERT_FALSE(server->start());
  const int client = connect_to(server->address());
  ASSERT_GE(client, 0);
  ASSERT_TRUE(send_all(client, "x"));
  EXPECT_DEATH((void)run_until(loop, [&] { return server == nullptr; }),
               "TcpServer destroyed inside a connection's callback");
  ::close(client);
}

// "With several loops, only before start() or once stop() has completed."
TEST(TcpServerDeathTest, MultiLoopServerDestroyedWhileListeningIsAsserted) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        EventLoop loop;
        LoopThread other;
        ConnectionHandlers handlers = echo_handlers();
        auto server = std::make_unique<TcpServer>(std::vector<EventLoop*>{&loop, &other.loop()},
                                                  Address::ipv4_loopback(0), handlers);
        (void)server->start();
        server.reset();
      },
      "destroy a multi-loop TcpServer only before start\\(\\) or after stop\\(\\) completed");
}
#endif

// ---------------------------------------------------------------------------------------------
// Two loops: the test's loop (shard 0) and a LoopThread (shard 1)

// Per-shard bookkeeping; on_open and on_close run on both threads.
struct ShardLog {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<ConnectionId> opened;
  std::atomic<int> closed{0};

  ConnectionHandlers handlers;

  ShardLog() {
    handlers = echo_handlers();
    handlers.on_close = [this](Connection&, CloseReason, std::error_code) { ++closed; };
  }
  TcpServer::OpenHandler open_handler() {
    return [this](Connection& c) {
      std::lock_guard lock(mutex);
      opened.push_back(c.id());
      changed.notify_all();
    };
  }
  int count(std::uint32_t shard) {
    std::lock_guard lock(mutex);
    int n = 0;
    for (ConnectionId id : opened)
      n += id.shard == shard;
    return n;
  }
  // Waits without running the test's loop (for connections the other loop accepts).
  bool wait_for(std::uint32_t shard, int n) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, 10s, [&] {
      int seen = 0;
      for (ConnectionId id : opened)
        seen += id.shard == shard;
      return seen >= n;
    });
  }
};

// Holds a loop's thread inside a posted task, so it is not waiting in epoll and cannot accept.
class LoopBlocker {
 public:
  explicit LoopBlocker(EventLoop& loop) {
    auto release = release_.get_future().share();
    loop.post([this, release] {
      entered_.set_value();
      release.wait();
    });
    entered_.get_future().wait();
  }
  ~LoopBlocker() { unblock(); }
  void unblock() {
    if (!released_) release_.set_value();
    released_ = true;
  }

 private:
  std::promise<void> entered_;
  std::promise<void> release_;
  bool released_ = false;
};

// Connects `n` blocking clients to `to`, appending their fds to `clients`; false, with errno set,
// at the first that fails.
bool connect_clients(const Address& to, int n, std::vector<int>& clients) {
  for (int i = 0; i < n; ++i) {
    const int fd = connect_to(to);
    if (fd < 0) return false;
    clients.push_back(fd);
  }
  return true;
}

// Every client sends its own message and gets it back.
void expect_all_echo(EventLoop& loop, const std::vector<int>& clients) {
  for (std::size_t i = 0; i < clients.size(); ++i) {
    ASSERT_TRUE(send_all(clients[i], "client " + std::to_string(i)));
  }
  for (std::size_t i = 0; i < clients.size(); ++i) {
    const std::string want = "client " + std::to_string(i);
    std::string got;
    ASSERT_TRUE(receive(loop, clients[i], want.size(), got)) << "client " << i;
    EXPECT_EQ(got, want);
  }
}

// Closes the clients, stops the server and waits for it on the test's loop.
void stop_server(EventLoop& loop, TcpServer& server, std::vector<int>& clients) {
  for (int fd : clients)
    ::close(fd);
  clients.clear();
  std::atomic<int> done{0};
  server.stop(10s, [&] { ++done; });
  ASSERT_TRUE(run_until(loop, [&] { return done.load() > 0; }));
  EXPECT_EQ(done.load(), 1);
  EXPECT_EQ(server.stats().active, 0u);
}

TEST(TcpServerTwoLoops, BothLoopsAcceptFromTheSharedListenerAndEcho) {
  EventLoop loop;
  LoopThread other;
  ShardLog log;
  TcpServer server(std::vector<EventLoop*>{&loop, &other.loop()}, Address::ipv4_loopback(0),
                   log.handlers);
  server.set_open_handler(log.open_handler());
  ASSERT_FALSE(server.start());
  EXPECT_EQ(server.loop_count(), 2u);

  constexpr int kPerPhase = 50;
  std::vector<int> clients;
  {
    // The other loop is busy: the test's loop takes every connection.
    LoopBlocker blocked(other.loop());
    ASSERT_TRUE(connect_clients(server.address(), kPerPhase, clients)) << std::strerror(errno);
    ASSERT_TRUE(run_until(loop, [&] { return log.count(0) == kPerPhase; }));
  }
  // The test's loop is not running: the other loop takes every connection.
  ASSERT_TRUE(connect_clients(server.address(), kPerPhase, clients)) << std::strerror(errno);
  ASSERT_TRUE(log.wait_for(1, kPerPhase));
  EXPECT_EQ(log.count(0), kPerPhase);
  EXPECT_EQ(log.count(1), kPerPhase);
  EXPECT_EQ(server.stats().accepted, 2u * kPerPhase);

  expect_all_echo(loop, clients);
  stop_server(loop, server, clients);
  EXPECT_EQ(log.closed.load(), 2 * kPerPhase);
}

// tcp_server.hpp: "With several loops the one [adopted] socket is shared with EPOLLEXCLUSIVE".
TEST(TcpServerTwoLoops, AdoptedSocketIsSharedAndBothLoopsAccept) {
  EventLoop loop;
  LoopThread other;
  ShardLog log;
  TcpServer server(std::vector<EventLoop*>{&loop, &other.loop()},
                   adopted_listener(Address::ipv4_loopback(0)), log.handlers);
  server.set_open_handler(log.open_handler());
  ASSERT_FALSE(server.start());

  constexpr int kPerPhase = 10;
  std::vector<int> clients;
  {
    LoopBlocker blocked(other.loop());
    ASSERT_TRUE(connect_clients(server.address(), kPerPhase, clients)) << std::strerror(errno);
    ASSERT_TRUE(run_until(loop, [&] { return log.count(0) == kPerPhase; }));
  }
  ASSERT_TRUE(connect_clients(server.address(), kPerPhase, clients)) << std::strerror(errno);
  ASSERT_TRUE(log.wait_for(1, kPerPhase));
  EXPECT_EQ(log.count(0), kPerPhase);
  EXPECT_EQ(log.count(1), kPerPhase);
  expect_all_echo(loop, clients);
  stop_server(loop, server, clients);
}

TEST(TcpServerTwoLoops, EachLoopsConnectionsUseThatLoopsOwnHandlers) {
  EventLoop loop;
  LoopThread other;
  // Each handler set records the thread it ran on and the shard of each connection it saw.
  struct Seen {
    ConnectionHandlers handlers;
    std::atomic<int> data_calls{0};
    std::atomic<int> wrong_shard{0};
    std::atomic<int> wrong_thread{0};
  };
  Seen seen[2];
  for (std::uint32_t shard = 0; shard < 2; ++shard) {
    Seen& s = seen[shard];
    s.handlers = echo_handlers();
    auto echo = std::move(s.handlers.on_data);
    s.handlers.on_data = [&s, shard, echo = std::move(echo)](Connection& c, Buffer& input) mutable {
      ++s.data_calls;
      if (c.id().shard != shard) ++s.wrong_shard;
      if (!c.loop().in_loop_thread()) ++s.wrong_thread;
      echo(c, input);
    };
  }
  TcpServer server(std::vector<TcpServer::LoopAndHandlers>{{&loop, &seen[0].handlers},
                                                           {&other.loop(), &seen[1].handlers}},
                   Address::ipv4_loopback(0));
  ShardLog log;
  server.set_open_handler(log.open_handler());
  ASSERT_FALSE(server.start());

  constexpr int kPerPhase = 10;
  std::vector<int> clients;
  {
    LoopBlocker blocked(other.loop());  // shard 0 accepts these
    ASSERT_TRUE(connect_clients(server.address(), kPerPhase, clients)) << std::strerror(errno);
    ASSERT_TRUE(run_until(loop, [&] { return log.count(0) == kPerPhase; }));
  }
  ASSERT_TRUE(connect_clients(server.address(), kPerPhase, clients)) << std::strerror(errno);
  ASSERT_TRUE(log.wait_for(1, kPerPhase));

  expect_all_echo(loop, clients);
  EXPECT_GT(seen[0].data_calls.load(), 0);
  EXPECT_GT(seen[1].data_calls.load(), 0);
  EXPECT_EQ(seen[0].wrong_shard.load() + seen[1].wrong_shard.load(), 0);
  EXPECT_EQ(seen[0].wrong_thread.load() + seen[1].wrong_thread.load(), 0);
  stop_server(loop, server, clients);
}

TEST(TcpServerTwoLoops, ReusePortGivesEachLoopItsOwnSocketAndBothAccept) {
  EventLoop loop;
  LoopThread other;
  ShardLog log;
  ServerOptions options;
  options.listen.reuse_port = true;
  TcpServer server(std::vector<EventLoop*>{&loop, &other.loop()}, Address::ipv4_loopback(0),
                   log.handlers, options);
  server.set_open_handler(log.open_handler());
  ASSERT_FALSE(server.start());

  // The kernel spreads connections over the two sockets by a hash of the client's address:
  // with 100 clients, both get some (all on one side has probability 2^-99).
  constexpr int kClients = 100;
  std::vector<int> clients;
  ASSERT_TRUE(connect_clients(server.address(), kClients, clients)) << std::strerror(errno);
  expect_all_echo(loop, clients);
  ASSERT_TRUE(run_until(loop, [&] { return log.count(0) + log.count(1) == kClients; }));
  EXPECT_GT(log.count(0), 0);
  EXPECT_GT(log.count(1), 0);
  stop_server(loop, server, clients);
}

// "one SO_REUSEPORT socket per loop with ListenOptions::reuse_port (TCP; a Unix address is
// shared)": a second Unix socket cannot bind the same path, so both loops share the one.
TEST(TcpServerTwoLoops, ReusePortOnAUnixAddressSharesOneSocket) {
  TempDir dir;
  auto address = Address::parse("unix:" + dir.file("shared.sock"));
  ASSERT_TRUE(address.ok());
  EventLoop loop;
  LoopThread other;
  ShardLog log;
  ServerOptions options;
  options.listen.reuse_port = true;
  TcpServer server(std::vector<EventLoop*>{&loop, &other.loop()}, *address, log.handlers, options);
  server.set_open_handler(log.open_handler());
  ASSERT_FALSE(server.start());
  constexpr int kClients = 20;
  std::vector<int> clients;
  ASSERT_TRUE(connect_clients(server.address(), kClients, clients)) << std::strerror(errno);
  expect_all_echo(loop, clients);
  ASSERT_TRUE(run_until(loop, [&] { return log.count(0) + log.count(1) == kClients; }));
  stop_server(loop, server, clients);
}

TEST(TcpServerTwoLoops, PostingToTheShardFindsTheConnectionById) {
  EventLoop loop;
  LoopThread other;
  ShardLog log;
  TcpServer server(std::vector<EventLoop*>{&loop, &other.loop()}, Address::ipv4_loopback(0),
                   log.handlers);
  server.set_open_handler(log.open_handler());
  ASSERT_FALSE(server.start());

  // Accepted by the other loop: the test's loop is not running.
  std::vector<int> clients;
  ASSERT_TRUE(connect_clients(server.address(), 1, clients)) << std::strerror(errno);
  ASSERT_TRUE(log.wait_for(1, 1));
  ConnectionId id;
  {
    std::lock_guard lock(log.mutex);
    id = log.opened[0];
  }
  ASSERT_EQ(id.shard, 1u);

  // send()'s result is set after the bytes are on the wire: wait for it, not for the bytes.
  std::promise<bool> sent;
  auto sent_result = sent.get_future();
  other.loop().post([&server, &sent, id] {
    Connection* c = server.find(id);
    sent.set_value(c != nullptr && c->send("pushed from another thread"));
  });
  std::string got;
  ASSERT_TRUE(receive(loop, clients[0], 26, got));
  EXPECT_EQ(got, "pushed from another thread");
  ASSERT_EQ(sent_result.wait_for(10s), std::future_status::ready);
  EXPECT_TRUE(sent_result.get());
  stop_server(loop, server, clients);
}

// tcp_server.hpp: send(id, bytes) from any thread reaches a connection of another loop
// (issue 15 part 7: "without hand-written post + find").
TEST(TcpServerTwoLoops, SendFromTheTestThreadReachesAConnectionOfTheOtherLoop) {
  EventLoop loop;
  LoopThread other;
  ShardLog log;
  TcpServer server(std::vector<EventLoop*>{&loop, &other.loop()}, Address::ipv4_loopback(0),
                   log.handlers);
  server.set_open_handler(log.open_handler());
  ASSERT_FALSE(server.start());
  std::vector<int> clients;
  ASSERT_TRUE(connect_clients(server.address(), 1, clients)) << std::strerror(errno);
  ASSERT_TRUE(log.wait_for(1, 1));
  ConnectionId id;
  {
    std::lock_guard lock(log.mutex);
    id = log.opened[0];
  }
  ASSERT_EQ(id.shard, 1u);
  server.send(id, "pushed from another thread");
  std::string got;
  ASSERT_TRUE(receive(loop, clients[0], 26, got));
  EXPECT_EQ(got, "pushed from another thread");
  stop_server(loop, server, clients);
}

// tcp_server.hpp: for_each_connection on a loop's own thread (a task posted there) walks that
// loop's connections only.
TEST(TcpServerTwoLoops, ForEachConnectionOnTheOtherLoopWalksItsOwnConnections) {
  EventLoop loop;
  LoopThread other;
  ShardLog log;
  TcpServer server(std::vector<EventLoop*>{&loop, &other.loop()}, Address::ipv4_loopback(0),
                   log.handlers);
  server.set_open_handler(log.open_handler());
  ASSERT_FALSE(server.start());
  std::vector<int> clients;
  ASSERT_TRUE(connect_clients(server.address(), 2, clients)) << std::strerror(errno);
  ASSERT_TRUE(log.wait_for(1, 2));  // the test's loop is not running: loop 1 took both
  std::promise<std::vector<ConnectionId>> walked;
  other.loop().post([&] {
    std::vector<ConnectionId> ids;
    server.for_each_connection(1, [&](Connection& c) { ids.push_back(c.id()); });
    walked.set_value(ids);
  });
  auto result = walked.get_future();
  ASSERT_EQ(result.wait_for(10s), std::future_status::ready);
  std::vector<ConnectionId> ids = result.get();
  {
    std::lock_guard lock(log.mutex);
    EXPECT_EQ(ids, log.opened);
  }
  int on_home = 0;
  server.for_each_connection(0, [&](Connection&) { ++on_home; });
  EXPECT_EQ(on_home, 0);
  stop_server(loop, server, clients);
}

// tcp_server.hpp: send(): "a server destroyed meanwhile: the bytes are dropped": a multi-loop
// server destroyed after a completed stop while loop 1 still holds a send task for it (TSan and
// ASan hold that the task neither races with nor outlives the destruction).
TEST(TcpServerTwoLoops, DestroyedAfterStopWithASendStillQueuedOnTheOtherLoopDropsIt) {
  EventLoop loop;
  LoopThread other;
  ShardLog log;
  auto server = std::make_unique<TcpServer>(std::vector<EventLoop*>{&loop, &other.loop()},
                                            Address::ipv4_loopback(0), log.handlers);
  server->set_open_handler(log.open_handler());
  ASSERT_FALSE(server->start());
  std::vector<int> clients;
  ASSERT_TRUE(connect_clients(server->address(), 1, clients)) << std::strerror(errno);
  ASSERT_TRUE(log.wait_for(1, 1));
  ConnectionId id;
  {
    std::lock_guard lock(log.mutex);
    id = log.opened[0];
  }
  stop_server(loop, *server, clients);
  {
    LoopBlocker blocked(other.loop());
    server->send(id, "after the stop");  // queued behind the blocker
    server.reset();
  }
  std::promise<void> ran;
  other.loop().post([&] { ran.set_value(); });  // FIFO: the send task has run before this
  ASSERT_EQ(ran.get_future().wait_for(10s), std::future_status::ready);
}

TEST(TcpServerTwoLoops, StartAfterAStopServesOnBothLoopsAgain) {
  EventLoop loop;
  LoopThread other;
  ShardLog log;
  TcpServer server(std::vector<EventLoop*>{&loop, &other.loop()}, Address::ipv4_loopback(0),
                   log.handlers);
  server.set_open_handler(log.open_handler());
  ASSERT_FALSE(server.start());
  std::vector<int> clients;
  stop_server(loop, server, clients);

  ASSERT_FALSE(server.start());
  {
    LoopBlocker blocked(other.loop());  // shard 0 accepts this one
    ASSERT_TRUE(connect_clients(server.address(), 1, clients)) << std::strerror(errno);
    ASSERT_TRUE(run_until(loop, [&] { return log.count(0) == 1; }));
  }
  ASSERT_TRUE(connect_clients(server.address(), 1, clients)) << std::strerror(errno);
  ASSERT_TRUE(log.wait_for(1, 1)) << "loop 1 accepts again";
  expect_all_echo(loop, clients);
  EXPECT_EQ(server.stats().refused, 0u);
  stop_server(loop, server, clients);
}

TEST(TcpServerTwoLoops, GracefulStopDrainsBothLoops) {
  EventLoop loop;
  LoopThread other;
  ShardLog log;
  TcpServer server(std::vector<EventLoop*>{&loop, &other.loop()}, Address::ipv4_loopback(0),
                   log.handlers);
  server.set_open_handler(log.open_handler());
  ASSERT_FALSE(server.start());
  const Address address = server.address();

  std::vector<int> clients;
  {
    LoopBlocker blocked(other.loop());
    ASSERT_TRUE(connect_clients(address, 1, clients)) << std::strerror(errno);
    ASSERT_TRUE(run_until(loop, [&] { return log.count(0) == 1; }));
  }
  ASSERT_TRUE(connect_clients(address, 1, clients)) << std::strerror(errno);
  ASSERT_TRUE(log.wait_for(1, 1));

  std::atomic<int> done{0};
  server.stop(10s, [&] { ++done; });
  // Both loops close their connection: each client sees the server's EOF.
  EXPECT_EQ(read_until_closed(loop, clients[0]), PeerEnd::eof);
  EXPECT_EQ(read_until_closed(loop, clients[1]), PeerEnd::eof);
  EXPECT_EQ(done.load(), 0);
  for (int c : clients)
    ::close(c);
  ASSERT_TRUE(run_until(loop, [&] { return done.load() > 0; }));
  EXPECT_EQ(done.load(), 1);
  EXPECT_EQ(log.closed.load(), 2);
  EXPECT_EQ(connect_errno(address), ECONNREFUSED);
}

// The Listener reports every accept error through on_error; only a full fd table counts as fd
// exhaustion in the server's stats.
TEST(TcpServerStats, MemoryErrorsWhileAcceptingAreReportedButAreNotFdExhaustion) {
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  std::vector<std::error_code> errors;
  server.set_error_handler([&](std::error_code ec) { errors.push_back(ec); });
  ASSERT_FALSE(server.start());
  accept_fault.arm(ENOMEM, 1);
  const int client = connect_to(server.address());
  ASSERT_GE(client, 0);
  ASSERT_TRUE(run_until(loop, [&] { return !errors.empty(); }));
  accept_fault.disarm();
  EXPECT_EQ(errors[0], std::errc::not_enough_memory) << errors[0].message();
  EXPECT_EQ(server.stats().fd_exhaustion, 0u) << "ENOMEM counted as fd exhaustion";
  ::close(client);
}

class TcpServerFdExhaustion : public ::testing::TestWithParam<int> {};

// "Fd exhaustion is handled by the Listener (see listener.hpp) and counted here": EMFILE and
// ENFILE each count once in stats().fd_exhaustion and reach on_error; the shed client sees its
// connection end, and the server goes on.
TEST_P(TcpServerFdExhaustion, IsCountedAndReportedThroughOnError) {
  DisarmAtExit disarm;
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  std::vector<std::error_code> errors;
  server.set_error_handler([&](std::error_code ec) { errors.push_back(ec); });
  ASSERT_FALSE(server.start());
  accept_fault.arm(GetParam(), 1);
  const int client = connect_to(server.address());
  ASSERT_GE(client, 0);
  EXPECT_NE(read_until_closed(loop, client), PeerEnd::open);
  ::close(client);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0], std::error_code(GetParam(), std::system_category()));
  EXPECT_EQ(server.stats().fd_exhaustion, 1u);
  EXPECT_EQ(server.stats().accepted, 0u);
  expect_echo(loop, server.address(), "still serving");
}

// The error handler is optional: without one, the exhaustion is still counted and the server
// goes on accepting.
TEST_P(TcpServerFdExhaustion, IsCountedWithoutAnErrorHandler) {
  DisarmAtExit disarm;
  EventLoop loop;
  ConnectionHandlers handlers = echo_handlers();
  TcpServer server(loop, Address::ipv4_loopback(0), handlers);
  ASSERT_FALSE(server.start());
  accept_fault.arm(GetParam(), 1);
  const int client = connect_to(server.address());
  ASSERT_GE(client, 0);
  EXPECT_NE(read_until_closed(loop, client), PeerEnd::open);
  ::close(client);
  EXPECT_EQ(server.stats().fd_exhaustion, 1u);
  expect_echo(loop, server.address(), "still serving");
}

INSTANTIATE_TEST_SUITE_P(TcpServerStats, TcpServerFdExhaustion, ::testing::Values(EMFILE, ENFILE),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::string(strerrorname_np(info.param));
                         });

}  // namespace
}  // namespace reactor
