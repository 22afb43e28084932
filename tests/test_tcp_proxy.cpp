// demo/tcp_proxy as a user runs it: a child process in front of echo_server (a child too) or of
// an upstream socket of the test's own, driven by plain sockets.
//
// The promises are those of demo/tcp_proxy.cpp's opening comment (issue 16 part 3). The bound
// on the proxy's queues is read from the line each loop prints on exit,
// `proxy: loop=I sessions=N peak_queued_bytes=P`: P is the largest queued_bytes() any of its
// connections reached (sampled after every send, the only call that grows a queue), so the
// bound holds for each connection at every moment, not only at the end.
//
// Paths come from the environment (TCP_PROXY, ECHO_SERVER, REACTOR_LOAD; tests/meson.build).
// Every wait is bounded by a deadline.
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "child_process.hpp"

namespace {

using namespace child_process;

// The proxy's connections use reactor::ConnectionOptions' defaults: high-water mark 1 MiB,
// reads_per_event 4, each read at most 64 KiB. A connection's queue can pass the mark by what
// one readiness of the other side reads before the pause: so the bound is 1 MiB + 4 x 64 KiB.
constexpr std::size_t kHighWater = 1 << 20;
constexpr std::size_t kQueueBound = kHighWater + 4 * (64 << 10);

// Bytes that do not repeat with any short period, so a lost, doubled or reordered chunk shows.
std::string pattern(std::size_t size, std::uint32_t seed = 1) {
  std::string s(size, '\0');
  std::uint32_t x = seed * 2654435761u + 12345u;
  for (auto& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

void set_nonblocking(int fd) {
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
}

// A socket end with non-blocking sends and receives, polled against deadlines.
class Peer {
 public:
  explicit Peer(int fd) : fd_(fd) {
    if (fd_ >= 0) set_nonblocking(fd_);
  }
  ~Peer() {
    if (fd_ >= 0) ::close(fd_);
  }
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;

  static int connect_to(std::uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd);
      return -1;
    }
    return fd;
  }

  bool ok() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  std::string& received() { return received_; }
  bool eof() const { return eof_; }
  int error() const { return error_; }

  // Small kernel buffers, so that the bytes in flight sit in the proxy, not in this socket.
  void shrink_buffers() {
    const int size = 64 << 10;
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
  }

  // Sends what it can of `out` from `sent` on; returns the bytes taken.
  std::size_t send_some(const std::string& out, std::size_t& sent) {
    if (sent == out.size()) return 0;
    const ssize_t n = ::send(fd_, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return 0;
    sent += static_cast<std::size_t>(n);
    return static_cast<std::size_t>(n);
  }

  // Reads what is there (EOF and errors recorded); returns the bytes read.
  std::size_t read_some() {
    if (eof_ || error_) return 0;
    char buf[65536];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n > 0) {
      received_.append(buf, static_cast<std::size_t>(n));
      return static_cast<std::size_t>(n);
    }
    if (n == 0) eof_ = true;
    if (n < 0 && errno != EAGAIN && errno != EINTR) error_ = errno;
    return 0;
  }

  // Waits for readability (or an error/EOF) up to the deadline; then reads once.
  bool wait_read(Deadline deadline) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, ms_until(deadline)) <= 0) return false;
    read_some();
    return true;
  }

  // Reads until received() holds `size` bytes, EOF, an error or the deadline.
  bool read_at_least(std::size_t size, Deadline deadline = deadline_in(kGenerous)) {
    while (received_.size() < size && !eof_ && !error_) {
      if (!wait_read(deadline)) return false;
    }
    return received_.size() >= size;
  }

  // Reads until EOF (true) or a reset, an error or the deadline (false).
  bool read_to_eof(Deadline deadline = deadline_in(kGenerous)) {
    while (!eof_ && !error_) {
      if (!wait_read(deadline)) return false;
    }
    return eof_;
  }

  // Sends all of `out` while reading, until `expect` bytes arrived (or EOF, error, deadline).
  bool exchange(const std::string& out, std::size_t expect,
                Deadline deadline = deadline_in(kGenerous)) {
    std::size_t sent = 0;
    while (received_.size() < expect && !eof_ && !error_) {
      pollfd p{fd_, static_cast<short>(POLLIN | (sent < out.size() ? POLLOUT : 0)), 0};
      if (::poll(&p, 1, ms_until(deadline)) <= 0) return false;
      if (p.revents & POLLOUT) send_some(out, sent);
      if (p.revents & (POLLIN | POLLHUP | POLLERR)) read_some();
    }
    return received_.size() >= expect;
  }

  void shutdown_write() { ::shutdown(fd_, SHUT_WR); }
  void reset() {  // close with RST
    const linger l{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
  std::string received_;
  bool eof_ = false;
  int error_ = 0;
};

// A listening socket of the test's own, the proxy's upstream.
class Upstream {
 public:
  explicit Upstream(bool listen = true, int backlog = 16) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    if (listen) ::listen(fd_, backlog);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }
  ~Upstream() { ::close(fd_); }
  Upstream(const Upstream&) = delete;
  Upstream& operator=(const Upstream&) = delete;

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  // The next connection the proxy made, or -1 at the deadline.
  int accept(Deadline deadline = deadline_in(kGenerous)) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, ms_until(deadline)) <= 0) return -1;
    return ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
  }

 private:
  int fd_ = -1;
  std::uint16_t port_ = 0;
};

// A tcp_proxy child in front of `upstream`, once it printed `listening on`.
class Proxy {
 public:
  explicit Proxy(const std::string& upstream, std::vector<std::string> args = {})
      : server_(binary("TCP_PROXY"), with_upstream(upstream, std::move(args))) {}
  bool ready() const { return server_.ready(); }
  std::uint16_t port() const { return server_.port(); }
  const std::string& address() const { return server_.address(); }
  Child& child() { return server_.child(); }

  // Stops it (SIGTERM) and returns the largest peak_queued_bytes of its loops' exit lines, or
  // nullopt when it did not exit 0 or printed none.
  std::optional<std::size_t> stop_and_read_peak() {
    child().signal(SIGTERM);
    if (child().finish(deadline_in(kGenerous)) != 0) return std::nullopt;
    std::optional<std::size_t> peak;
    const std::string key = "peak_queued_bytes=";
    const std::string& out = child().out();
    for (auto pos = out.find(key); pos != std::string::npos; pos = out.find(key, pos + 1)) {
      const std::size_t p = std::stoull(out.substr(pos + key.size()));
      peak = peak ? std::max(*peak, p) : p;
    }
    return peak;
  }

 private:
  static std::vector<std::string> with_upstream(const std::string& upstream,
                                                std::vector<std::string> args) {
    args.insert(args.begin(), {"--upstream", upstream});
    return args;
  }
  Server server_;
};

class TcpProxyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (binary("TCP_PROXY").empty() || binary("ECHO_SERVER").empty()) {
      GTEST_SKIP() << "TCP_PROXY and ECHO_SERVER must name the demo binaries";
    }
  }
};

// Writes into `writer` without `reader` reading, until the chain through the proxy is full (no
// progress for a while) or all of `out` is taken. Returns the bytes written.
std::size_t fill_until_stalled(Peer& writer, const std::string& out, std::size_t& sent) {
  for (;;) {
    pollfd p{writer.fd(), POLLOUT, 0};
    // Two seconds without room: the proxy stopped reading (the chain is full).
    if (::poll(&p, 1, 2000) <= 0) return sent;
    writer.send_some(out, sent);
    if (sent == out.size()) return sent;
  }
}

// Then reads everything at `reader` while `writer` sends the rest.
bool drain(Peer& writer, Peer& reader, const std::string& out, std::size_t& sent,
           Deadline deadline = deadline_in(60s)) {
  while (reader.received().size() < out.size() && !reader.eof() && !reader.error()) {
    std::array<pollfd, 2> p{
        pollfd{reader.fd(), POLLIN, 0},
        pollfd{writer.fd(), static_cast<short>(sent < out.size() ? POLLOUT : 0), 0}};
    if (::poll(p.data(), 2, ms_until(deadline)) <= 0) return false;
    if (p[1].revents & POLLOUT) writer.send_some(out, sent);
    if (p[0].revents) reader.read_some();
  }
  return reader.received() == out;
}

// tcp_proxy.cpp: "Bytes pass through unchanged in both directions" (issue: 1 B to 8 MiB).
TEST_F(TcpProxyTest, EchoThroughTheProxyIsByteExactFromOneByteToEightMiB) {
  Server echo(binary("ECHO_SERVER"), {});
  ASSERT_TRUE(echo.ready());
  Proxy proxy(echo.address());
  ASSERT_TRUE(proxy.ready()) << proxy.child().err();
  std::uint32_t seed = 1;
  for (std::size_t size : {std::size_t{1}, std::size_t{100}, std::size_t{65537},
                           std::size_t{1} << 20, std::size_t{8} << 20}) {
    SCOPED_TRACE(size);
    Peer client(Peer::connect_to(proxy.port()));
    ASSERT_TRUE(client.ok());
    const std::string out = pattern(size, seed++);
    ASSERT_TRUE(client.exchange(out, out.size()));
    EXPECT_TRUE(client.received() == out) << "the echoed bytes differ";
    // The FIN goes through to echo_server, which closes; its FIN comes back: a clean end.
    client.shutdown_write();
    EXPECT_TRUE(client.read_to_eof());
    EXPECT_EQ(client.error(), 0);
    EXPECT_EQ(client.received().size(), size);
  }
  EXPECT_TRUE(proxy.stop_and_read_peak().has_value()) << proxy.child().err();
}

// tcp_proxy.cpp: "the client's FIN becomes shutdown(SHUT_WR) towards the upstream ..., and the
// other way round".
TEST_F(TcpProxyTest, ClientHalfCloseReachesTheUpstreamWhichMayStillSend) {
  Upstream upstream;
  Proxy proxy(upstream.address());
  ASSERT_TRUE(proxy.ready()) << proxy.child().err();
  Peer client(Peer::connect_to(proxy.port()));
  ASSERT_TRUE(client.ok());
  Peer server(upstream.accept());
  ASSERT_TRUE(server.ok());

  std::size_t sent = 0;
  client.send_some("request", sent);
  client.shutdown_write();
  ASSERT_TRUE(server.read_to_eof()) << "the client's FIN did not reach the upstream";
  EXPECT_EQ(server.received(), "request");
  // The other direction is still open: the upstream replies, then half-closes in turn.
  sent = 0;
  server.send_some("reply after your FIN", sent);
  server.shutdown_write();
  ASSERT_TRUE(client.read_to_eof()) << "error " << client.error();
  EXPECT_EQ(client.received(), "reply after your FIN");
}

// tcp_proxy.cpp: half-close, "and the other way round".
TEST_F(TcpProxyTest, UpstreamHalfCloseReachesTheClientWhichMayStillSend) {
  Upstream upstream;
  Proxy proxy(upstream.address());
  ASSERT_TRUE(proxy.ready()) << proxy.child().err();
  Peer client(Peer::connect_to(proxy.port()));
  ASSERT_TRUE(client.ok());
  Peer server(upstream.accept());
  ASSERT_TRUE(server.ok());

  std::size_t sent = 0;
  server.send_some("banner", sent);
  server.shutdown_write();
  ASSERT_TRUE(client.read_to_eof()) << "the upstream's FIN did not reach the client";
  EXPECT_EQ(client.received(), "banner");
  sent = 0;
  client.send_some("still talking", sent);
  client.shutdown_write();
  ASSERT_TRUE(server.read_to_eof()) << "error " << server.error();
  EXPECT_EQ(server.received(), "still talking");
}

// tcp_proxy.cpp: "A reset ... on one side aborts the other (the peer sees a reset)".
TEST_F(TcpProxyTest, UpstreamResetReachesTheClientAsAReset) {
  Upstream upstream;
  Proxy proxy(upstream.address());
  ASSERT_TRUE(proxy.ready()) << proxy.child().err();
  Peer client(Peer::connect_to(proxy.port()));
  ASSERT_TRUE(client.ok());
  Peer server(upstream.accept());
  ASSERT_TRUE(server.ok());
  std::size_t sent = 0;
  client.send_some("ping", sent);
  ASSERT_TRUE(server.read_at_least(4));  // the pair is up and pumping
  server.reset();
  EXPECT_FALSE(client.read_to_eof());
  EXPECT_EQ(client.error(), ECONNRESET) << "eof " << client.eof();
}

// tcp_proxy.cpp: "A reset ... on one side aborts the other", the client's side.
TEST_F(TcpProxyTest, ClientResetReachesTheUpstreamAsAReset) {
  Upstream upstream;
  Proxy proxy(upstream.address());
  ASSERT_TRUE(proxy.ready()) << proxy.child().err();
  Peer client(Peer::connect_to(proxy.port()));
  ASSERT_TRUE(client.ok());
  Peer server(upstream.accept());
  ASSERT_TRUE(server.ok());
  std::size_t sent = 0;
  server.send_some("hello", sent);
  ASSERT_TRUE(client.read_at_least(5));
  client.reset();
  EXPECT_FALSE(server.read_to_eof());
  EXPECT_EQ(server.error(), ECONNRESET) << "eof " << server.eof();
}

// tcp_proxy.cpp: "The upstream cannot be reached ...: the client is closed gracefully (EOF, no
// reset)", even with bytes it sent unread.
TEST_F(TcpProxyTest, UpstreamDownClosesTheClientCleanly) {
  Upstream nobody(/*listen=*/false);  // bound, not listening: connecting is refused
  Proxy proxy(nobody.address());
  ASSERT_TRUE(proxy.ready()) << proxy.child().err();
  Peer client(Peer::connect_to(proxy.port()));
  ASSERT_TRUE(client.ok());
  std::size_t sent = 0;
  client.send_some("anyone there?", sent);
  EXPECT_TRUE(client.read_to_eof()) << "error " << client.error();
  EXPECT_EQ(client.error(), 0);
  EXPECT_EQ(client.received(), "");
  // The proxy is still serving: the next client is closed the same way.
  Peer again(Peer::connect_to(proxy.port()));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again.read_to_eof());
  EXPECT_EQ(again.error(), 0);
}

// Whether a socket of this network namespace is in SYN_SENT towards 127.0.0.1:`port` (a line
// of /proc/net/tcp with that remote port and state 02): a connect the listener dropped.
bool syn_sent_to(std::uint16_t port) {
  std::ifstream tcp("/proc/net/tcp");
  std::string line;
  std::getline(tcp, line);  // the header
  char want[8];
  std::snprintf(want, sizeof want, ":%04X", port);
  while (std::getline(tcp, line)) {
    std::istringstream fields(line);
    std::string slot, local, remote, state;
    fields >> slot >> local >> remote >> state;
    if (remote.size() > 5 && remote.compare(remote.size() - 5, 5, want) == 0 && state == "02")
      return true;
  }
  return false;
}

// tcp_proxy.cpp: "Client bytes that arrive before the upstream connection is up stay in the
// client's socket": none is lost, and they arrive first, in order.
TEST_F(TcpProxyTest, ClientBytesSentBeforeTheUpstreamConnectsArriveInOrder) {
  // Backlog 0 holds one connection: with the test's own in it, the proxy's SYN is dropped and
  // retried a second later (the kernel's retransmission), so its connect stays pending.
  Upstream upstream(/*listen=*/true, /*backlog=*/0);
  const std::uint16_t upstream_port = static_cast<std::uint16_t>(
      std::stoi(upstream.address().substr(upstream.address().rfind(':') + 1)));
  Peer filler(Peer::connect_to(upstream_port));
  ASSERT_TRUE(filler.ok());
  Proxy proxy(upstream.address());
  ASSERT_TRUE(proxy.ready()) << proxy.child().err();
  Peer client(Peer::connect_to(proxy.port()));
  ASSERT_TRUE(client.ok());
  const std::string early = pattern(200 << 10, 3);  // more than one read of the proxy's
  std::size_t sent = 0;
  while (sent < early.size()) {
    pollfd p{client.fd(), POLLOUT, 0};
    ASSERT_GT(::poll(&p, 1, ms_until(deadline_in(kGenerous))), 0);
    client.send_some(early, sent);
  }
  // Once the proxy's connect is pending (polled: no event says so), make room in the queue:
  // its retried SYN gets in, and the bytes follow.
  const Deadline deadline = deadline_in(kGenerous);
  while (!syn_sent_to(upstream_port) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(syn_sent_to(upstream_port)) << "the proxy's connect never waited";
  Peer first(upstream.accept());
  ASSERT_TRUE(first.ok());
  Peer server(upstream.accept());
  ASSERT_TRUE(server.ok()) << "the proxy never connected";
  ASSERT_TRUE(server.read_at_least(early.size()));
  EXPECT_TRUE(server.received() == early) << "the early bytes differ";
}

// tcp_proxy.cpp: "each connection's queued_bytes() stays under the high-water mark plus what one
// readiness reads", here with a client that does not read.
TEST_F(TcpProxyTest, SlowReadingClientBoundsTheProxysQueues) {
  Upstream upstream;
  Proxy proxy(upstream.address());
  ASSERT_TRUE(proxy.ready()) << proxy.child().err();
  Peer client(Peer::connect_to(proxy.port()));
  ASSERT_TRUE(client.ok());
  Peer server(upstream.accept());
  ASSERT_TRUE(server.ok());
  client.shrink_buffers();
  server.shrink_buffers();

  // Far more than the kernel buffers on the way hold (each at most tcp_rmem's maximum).
  const std::string out = pattern(std::size_t{96} << 20);
  std::size_t sent = 0;
  fill_until_stalled(server, out, sent);
  ASSERT_LT(sent, out.size()) << "the proxy never stopped reading the upstream";
  ASSERT_TRUE(drain(server, client, out, sent)) << "the bytes through the proxy differ";
  const auto peak = proxy.stop_and_read_peak();
  ASSERT_TRUE(peak.has_value()) << proxy.child().out() << proxy.child().err();
  EXPECT_GE(*peak, kHighWater) << "the client's queue never reached the mark: no backpressure";
  EXPECT_LE(*peak, kQueueBound);
}

// The same bound with an upstream that does not read.
TEST_F(TcpProxyTest, SlowReadingUpstreamBoundsTheProxysQueues) {
  Upstream upstream;
  Proxy proxy(upstream.address());
  ASSERT_TRUE(proxy.ready()) << proxy.child().err();
  Peer client(Peer::connect_to(proxy.port()));
  ASSERT_TRUE(client.ok());
  Peer server(upstream.accept());
  ASSERT_TRUE(server.ok());
  client.shrink_buffers();
  server.shrink_buffers();

  const std::string out = pattern(std::size_t{96} << 20, 7);
  std::size_t sent = 0;
  fill_until_stalled(client, out, sent);
  ASSERT_LT(sent, out.size()) << "the proxy never stopped reading the client";
  ASSERT_TRUE(drain(client, server, out, sent)) << "the bytes through the proxy differ";
  const auto peak = proxy.stop_and_read_peak();
  ASSERT_TRUE(peak.has_value()) << proxy.child().out() << proxy.child().err();
  EXPECT_GE(*peak, kHighWater) << "the upstream's queue never reached the mark: no backpressure";
  EXPECT_LE(*peak, kQueueBound);
}

// tcp_proxy.cpp: "HOST may be a name where the build has the resolver ... each client's upstream
// is connected through a HostConnector". `localhost` comes from the hosts file (no DNS server
// needed); its ::1, if listed first, is refused and the 127.0.0.1 attempt follows.
TEST_F(TcpProxyTest, UpstreamGivenByNameIsResolvedPerClient) {
  Child help(binary("TCP_PROXY"), {"--help"});
  ASSERT_EQ(help.finish(deadline_in(kGenerous)), 0);
  if (help.out().find("a name, resolved per client") == std::string::npos)
    GTEST_SKIP() << "tcp_proxy built without the resolver (no c-ares): numeric upstreams only";
  Server echo(binary("ECHO_SERVER"), {});
  ASSERT_TRUE(echo.ready());
  const std::string port = echo.address().substr(echo.address().rfind(':') + 1);
  Proxy proxy("localhost:" + port);
  ASSERT_TRUE(proxy.ready()) << proxy.child().err();
  for (int client_number = 0; client_number < 3; ++client_number) {
    Peer client(Peer::connect_to(proxy.port()));
    ASSERT_TRUE(client.ok());
    const std::string out = pattern(1000, static_cast<std::uint32_t>(client_number + 7));
    ASSERT_TRUE(client.exchange(out, out.size())) << proxy.child().err();
    EXPECT_TRUE(client.received() == out);
  }
  EXPECT_TRUE(proxy.stop_and_read_peak().has_value()) << proxy.child().err();
}

// tcp_proxy.cpp's usage: a malformed --upstream is a usage error naming it (exit 2).
TEST_F(TcpProxyTest, MalformedUpstreamExitsTwoNamingIt) {
  for (const char* bad : {"127.0.0.1", "not an address:80", "127.0.0.1:99999"}) {
    Child child(binary("TCP_PROXY"), {"--listen", "127.0.0.1:0", "--upstream", bad});
    EXPECT_EQ(child.finish(deadline_in(kGenerous)), 2) << bad;
    EXPECT_EQ(child.first_err_line().rfind(std::string("invalid value for --upstream: ") + bad, 0),
              0u)
        << child.err();
  }
  Child missing(binary("TCP_PROXY"), {"--listen", "127.0.0.1:0"});
  EXPECT_EQ(missing.finish(deadline_in(kGenerous)), 2);
  EXPECT_EQ(missing.first_err_line(), "missing option: --upstream");
}

// --threads N as the other demos: each loop proxies the clients it accepted (reactor-load
// verifies every byte). 32 connections over two SO_REUSEPORT sockets: all on one loop (odds
// 2^-31) would mean the second loop does not serve.
TEST_F(TcpProxyTest, TwoThreadsProxyEveryConnectionOnBothLoops) {
  if (binary("REACTOR_LOAD").empty()) GTEST_SKIP() << "REACTOR_LOAD must name reactor-load";
  Server echo(binary("ECHO_SERVER"), {});
  ASSERT_TRUE(echo.ready());
  Proxy proxy(echo.address(), {"--threads", "2", "--reuseport"});
  ASSERT_TRUE(proxy.ready()) << proxy.child().err();
  const ProgramRun load =
      run_program(binary("REACTOR_LOAD"), {"echo", "--target", proxy.address(), "--connections",
                                           "32", "--depth", "4", "--duration", "0.5"});
  EXPECT_EQ(load.exit_code, 0) << load.out << load.err;
  proxy.child().signal(SIGTERM);
  ASSERT_EQ(proxy.child().finish(deadline_in(kGenerous)), 0) << proxy.child().err();
  const std::string& out = proxy.child().out();
  std::vector<std::uint64_t> sessions(2, 0);
  for (std::size_t loop = 0; loop < 2; ++loop) {
    const std::string key = "proxy: loop=" + std::to_string(loop) + " sessions=";
    const auto at = out.find(key);
    ASSERT_NE(at, std::string::npos) << out;
    sessions[loop] = std::stoull(out.substr(at + key.size()));
  }
  EXPECT_GT(sessions[0], 0u) << out;
  EXPECT_GT(sessions[1], 0u) << out;
  EXPECT_EQ(sessions[0] + sessions[1], 32u) << out;
}

}  // namespace
