// demo/udp_echo as a child process, driven by plain UDP sockets: the runner's `--listen
// udp:ADDR` (its `listening on udp:ADDR` line, one socket per loop with --threads), the echo of
// single datagrams and of batches, the final counters, and the usage errors.
// The binary comes from the environment (UDP_ECHO; see tests/meson.build).
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "child_process.hpp"
#include "reactor/address.hpp"

namespace {

using namespace child_process;

class UdpEcho {
 public:
  explicit UdpEcho(std::vector<std::string> args) : child_(binary("UDP_ECHO"), std::move(args)) {
    const Deadline deadline = deadline_in(kGenerous);
    if (auto line = child_.read_line(deadline)) {
      const std::string prefix = "listening on ";
      if (line->rfind(prefix, 0) == 0) address_ = line->substr(prefix.size());
    }
  }
  const std::string& address() const { return address_; }  // "udp:HOST:PORT"
  Child& child() { return child_; }

 private:
  Child child_;
  std::string address_;
};

// A connected UDP client socket; -1 on failure.
int client_for(const std::string& udp_address) {
  auto address = reactor::Address::parse(udp_address.substr(4));
  if (!address) return -1;
  const int fd = ::socket(address->family(), SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && ::connect(fd, address->sockaddr_ptr(), address->length()) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// The next datagram within 10 s, or nullopt-like empty with `ok` false.
bool receive(int fd, std::string& out) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, 10'000) != 1) return false;
  char buffer[65536];
  const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
  if (n < 0) return false;
  out.assign(buffer, static_cast<std::size_t>(n));
  return true;
}

class UdpEchoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (binary("UDP_ECHO").empty()) GTEST_SKIP() << "UDP_ECHO must name demo/udp_echo";
  }
};

// udp_echo.cpp: "sends every datagram back to where it came from"; server_runner.hpp: "prints
// `listening on udp:ADDR`" (the real port), and the final line counts the datagram sockets'
// bytes. 200 datagrams of sizes 0..1393, in rounds of 20 sent at once, each echoed exactly.
TEST_F(UdpEchoTest, EveryDatagramComesBackToItsSenderAndIsCounted) {
  UdpEcho server({"--listen", "udp:127.0.0.1:0"});
  ASSERT_EQ(server.address().rfind("udp:127.0.0.1:", 0), 0u) << server.child().err();
  EXPECT_NE(server.address(), "udp:127.0.0.1:0");
  const int fd = client_for(server.address());
  ASSERT_GE(fd, 0);
  const int buffer = 1 << 22;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
  std::size_t bytes = 0;
  std::vector<std::string> sent;
  std::vector<std::string> received;
  // In rounds of 20 sent at once: a batch for the server, small enough for its socket's
  // default receive buffer (200 at once overflowed it here: UDP drops, it does not wait).
  for (int round = 0; round < 10; ++round) {
    for (int k = 0; k < 20; ++k) {
      const int i = round * 20 + k;
      std::string d(static_cast<std::size_t>(i * 7), static_cast<char>('a' + i % 26));
      if (!d.empty()) std::memcpy(d.data(), &i, std::min(sizeof i, d.size()));
      ASSERT_EQ(::send(fd, d.data(), d.size(), 0), static_cast<ssize_t>(d.size()));
      bytes += d.size();
      sent.push_back(std::move(d));
    }
    for (int k = 0; k < 20; ++k) {
      std::string d;
      ASSERT_TRUE(receive(fd, d)) << "datagram " << round * 20 + k << " did not come back";
      received.push_back(std::move(d));
    }
  }
  EXPECT_EQ(received, sent);  // one socket, loopback: in order
  ::close(fd);
  server.child().signal(SIGINT);
  ASSERT_EQ(server.child().finish(deadline_in(kGenerous)), 0) << server.child().err();
  const std::string counts =
      "messages=200 bytes_in=" + std::to_string(bytes) + " bytes_out=" + std::to_string(bytes);
  EXPECT_NE(server.child().out().find(counts), std::string::npos) << server.child().out();
}

// server_runner.hpp: "binds a datagram socket ... on every loop, SO_REUSEPORT when there are
// several": with --threads 2, datagrams from many source ports reach both loops (the kernel
// hashes the source; 64 clients all on one loop has odds 2^-63).
TEST_F(UdpEchoTest, TwoThreadsEachServeDatagramsOnOnePort) {
  UdpEcho server({"--listen", "udp:127.0.0.1:0", "--threads", "2"});
  ASSERT_FALSE(server.address().empty()) << server.child().err();
  for (int c = 0; c < 64; ++c) {
    const int fd = client_for(server.address());
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::send(fd, "ping", 4, 0), 4);
    std::string d;
    ASSERT_TRUE(receive(fd, d));
    EXPECT_EQ(d, "ping");
    ::close(fd);
  }
  server.child().signal(SIGTERM);
  ASSERT_EQ(server.child().finish(deadline_in(kGenerous)), 0) << server.child().err();
  const std::string& out = server.child().out();
  const auto at = out.find("messages_per_loop=");
  ASSERT_NE(at, std::string::npos) << out;
  const std::string per_loop = out.substr(at + 18, out.find('\n', at) - at - 18);
  const auto comma = per_loop.find(',');
  ASSERT_NE(comma, std::string::npos) << per_loop;
  EXPECT_GT(std::stoul(per_loop.substr(0, comma)), 0u) << per_loop;
  EXPECT_GT(std::stoul(per_loop.substr(comma + 1)), 0u) << per_loop;
}

// server_runner.hpp: "a Unix path, udp:unix:PATH, which cannot be shared so: on the home loop
// only": with --threads 2 it starts, names the path, and echoes to a bound Unix sender.
TEST_F(UdpEchoTest, AUnixPathWithTwoThreadsIsServedByTheHomeLoop) {
  char dir[] = "/tmp/reactor-udp-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/echo.sock";
  {
    UdpEcho server({"--listen", "udp:unix:" + path, "--threads", "2"});
    ASSERT_EQ(server.address(), "udp:unix:" + path) << server.child().err();
    const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    const auto mine = reactor::Address::parse("unix:" + std::string(dir) + "/client.sock");
    const auto theirs = reactor::Address::parse("unix:" + path);
    ASSERT_TRUE(mine && theirs);
    ASSERT_EQ(::bind(fd, mine->sockaddr_ptr(), mine->length()), 0);  // a name to answer to
    ASSERT_EQ(::connect(fd, theirs->sockaddr_ptr(), theirs->length()), 0);
    ASSERT_EQ(::send(fd, "hello", 5, 0), 5);
    std::string d;
    ASSERT_TRUE(receive(fd, d));
    EXPECT_EQ(d, "hello");
    ::close(fd);
    server.child().signal(SIGTERM);
    EXPECT_EQ(server.child().finish(deadline_in(kGenerous)), 0) << server.child().err();
  }
  ::unlink((std::string(dir) + "/client.sock").c_str());
  ::unlink(path.c_str());
  ::rmdir(dir);
}

// The runner's one --listen grammar: a malformed udp: address is a usage error (exit 2) naming
// it; a port in use exits 1 naming it.
TEST_F(UdpEchoTest, MalformedOrTakenUdpAddressesExitWithTheirCodes) {
  Child bad(binary("UDP_ECHO"), {"--listen", "udp:127.0.0.1:99999"});
  EXPECT_EQ(bad.finish(deadline_in(kGenerous)), 2);
  EXPECT_EQ(bad.first_err_line().rfind("malformed address: udp:127.0.0.1:99999 (", 0), 0u)
      << bad.err();
  UdpEcho first({"--listen", "udp:127.0.0.1:0"});
  ASSERT_FALSE(first.address().empty());
  Child taken(binary("UDP_ECHO"), {"--listen", first.address()});
  EXPECT_EQ(taken.finish(deadline_in(kGenerous)), 1);
  EXPECT_EQ(taken.first_err_line(), "address already in use: " + first.address()) << taken.err();
}

}  // namespace
