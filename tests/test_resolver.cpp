// Resolver (c-ares on the loop): answers from a DNS responder of the test's own on loopback
// (UDP, and TCP on the same port for truncated answers), the hosts file, timeout, cancel,
// destruction with a query in flight. The responder is registered on the same loop: no thread.
#include "reactor/resolver.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "loopback.hpp"
#include "reactor/host_connector.hpp"
#include "reactor/tcp_server.hpp"

namespace reactor {
namespace {

using namespace std::chrono_literals;
using test::run_until;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

constexpr std::uint16_t kTypeA = 1;
constexpr std::uint16_t kTypeAaaa = 28;

// A DNS server for the zone below, on 127.0.0.1:port(), UDP and TCP, on the test's loop:
//   a.test     A 192.0.2.1, 192.0.2.2 (in that order)
//   aaaa.test  AAAA 2001:db8::1
//   both.test  A 192.0.2.3, AAAA 2001:db8::3
//   big.test   A 192.0.2.10: over UDP a truncated answer (TC, no records), the records over TCP
//   never.test no answer at all
//   any other  NXDOMAIN
// silent(): answers nothing at all.
class DnsResponder {
 public:
  explicit DnsResponder(EventLoop& loop) : loop_(loop) {
    // One port for both protocols: take a free UDP port, then the same for TCP (retry if taken).
    for (int attempt = 0; attempt < 20 && port_ == 0; ++attempt) {
      int udp = ::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      sockaddr_in sa{};
      sa.sin_family = AF_INET;
      sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      socklen_t len = sizeof sa;
      if (::bind(udp, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 ||
          ::getsockname(udp, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
        ::close(udp);
        continue;
      }
      int tcp = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      int one = 1;
      ::setsockopt(tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (::bind(tcp, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(tcp, 16) != 0) {
        ::close(udp);
        ::close(tcp);
        continue;
      }
      udp_fd_ = udp;
      tcp_fd_ = tcp;
      port_ = ntohs(sa.sin_port);
    }
    if (port_ == 0) return;
    udp_id_ = *loop_.add(udp_fd_, io::readable, [this](std::uint32_t) { on_udp(); });
    tcp_id_ = *loop_.add(tcp_fd_, io::readable, [this](std::uint32_t) { on_accept(); });
  }
  ~DnsResponder() {
    for (auto& [fd, conn] : conns_) {
      loop_.remove(conn.id);
      ::close(fd);
    }
    if (udp_id_) loop_.remove(udp_id_);
    if (tcp_id_) loop_.remove(tcp_id_);
    if (udp_fd_ >= 0) ::close(udp_fd_);
    if (tcp_fd_ >= 0) ::close(tcp_fd_);
  }

  std::uint16_t port() const { return port_; }
  std::string servers() const { return "127.0.0.1:" + std::to_string(port_); }
  void silent() { silent_ = true; }
  // Adds an A or AAAA record (by the text's form) to the zone.
  void add(const std::string& name, const char* address) {
    const bool is_v6 = std::string_view(address).find(':') != std::string_view::npos;
    extra_[name].push_back({is_v6 ? kTypeAaaa : kTypeA, is_v6 ? v6(address) : v4(address)});
  }
  int udp_queries = 0;
  int tcp_queries = 0;

 private:
  struct Record {
    std::uint16_t type;
    std::vector<unsigned char> data;
  };
  struct TcpConn {
    IoId id;
    std::string in;
  };

  static std::vector<unsigned char> v4(const char* text) {
    std::vector<unsigned char> out(4);
    ::inet_pton(AF_INET, text, out.data());
    return out;
  }
  static std::vector<unsigned char> v6(const char* text) {
    std::vector<unsigned char> out(16);
    ::inet_pton(AF_INET6, text, out.data());
    return out;
  }
  std::map<std::string, std::vector<Record>> zone() const {
    std::map<std::string, std::vector<Record>> records = extra_;
    records.insert({
        {"a.test", {{kTypeA, v4("192.0.2.1")}, {kTypeA, v4("192.0.2.2")}}},
        {"aaaa.test", {{kTypeAaaa, v6("2001:db8::1")}}},
        {"both.test", {{kTypeA, v4("192.0.2.3")}, {kTypeAaaa, v6("2001:db8::3")}}},
        {"big.test", {{kTypeA, v4("192.0.2.10")}}},
    });
    return records;
  }

  // The answer to `query`, or nothing (never.test, silent, malformed).
  std::optional<std::string> answer(const std::string& query, bool over_tcp) {
    if (silent_ || query.size() < 12) return std::nullopt;
    std::size_t at = 12;
    std::string name;
    while (at < query.size() && query[at] != 0) {
      const std::size_t n = static_cast<unsigned char>(query[at]);
      if (at + 1 + n > query.size()) return std::nullopt;
      if (!name.empty()) name += '.';
      for (std::size_t i = 0; i < n; ++i)
        name += static_cast<char>(std::tolower(static_cast<unsigned char>(query[at + 1 + i])));
      at += 1 + n;
    }
    if (at + 5 > query.size()) return std::nullopt;
    const std::uint16_t qtype =
        static_cast<std::uint16_t>((static_cast<unsigned char>(query[at + 1]) << 8) |
                                   static_cast<unsigned char>(query[at + 2]));
    const std::size_t question_end = at + 5;
    if (name == "never.test") return std::nullopt;

    const auto records = zone();
    const auto found = records.find(name);
    std::vector<const Record*> answers;
    if (found != records.end())
      for (const Record& r : found->second)
        if (r.type == qtype) answers.push_back(&r);
    const bool truncate = name == "big.test" && !over_tcp;
    if (truncate) answers.clear();

    std::string out = query.substr(0, 2);  // the id
    unsigned flags = 0x8000 | 0x0080 | (static_cast<unsigned char>(query[2]) & 0x01) << 8;
    if (truncate) flags |= 0x0200;
    if (found == records.end()) flags |= 3;  // NXDOMAIN
    auto put16 = [&out](unsigned v) {
      out += static_cast<char>((v >> 8) & 0xff);
      out += static_cast<char>(v & 0xff);
    };
    put16(flags);
    put16(1);
    put16(static_cast<unsigned>(answers.size()));
    put16(0);
    put16(0);
    out.append(query, 12, question_end - 12);
    for (const Record* r : answers) {
      put16(0xc00c);  // the question's name
      put16(r->type);
      put16(1);  // IN
      put16(0);
      put16(60);  // TTL
      put16(static_cast<unsigned>(r->data.size()));
      out.append(reinterpret_cast<const char*>(r->data.data()), r->data.size());
    }
    return out;
  }

  void on_udp() {
    char buf[1500];
    for (;;) {
      sockaddr_storage from{};
      socklen_t len = sizeof from;
      const ssize_t n =
          ::recvfrom(udp_fd_, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
      if (n < 0) return;
      ++udp_queries;
      if (auto reply = answer(std::string(buf, static_cast<std::size_t>(n)), false))
        ::sendto(udp_fd_, reply->data(), reply->size(), 0, reinterpret_cast<sockaddr*>(&from), len);
    }
  }

  void on_accept() {
    for (;;) {
      const int fd = ::accept4(tcp_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;
      auto id = loop_.add(fd, io::readable, [this, fd](std::uint32_t) { on_tcp(fd); });
      conns_[fd] = TcpConn{*id, {}};
    }
  }

  void on_tcp(int fd) {
    TcpConn& conn = conns_.at(fd);
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0)
      conn.in.append(buf, static_cast<std::size_t>(n));
    // Messages are length-prefixed (RFC 1035 4.2.2); replies are small enough for one send.
    while (conn.in.size() >= 2) {
      const std::size_t len =
          (static_cast<unsigned char>(conn.in[0]) << 8) | static_cast<unsigned char>(conn.in[1]);
      if (conn.in.size() < 2 + len) break;
      ++tcp_queries;
      if (auto reply = answer(conn.in.substr(2, len), true)) {
        std::string framed;
        framed += static_cast<char>(reply->size() >> 8);
        framed += static_cast<char>(reply->size() & 0xff);
        framed += *reply;
        ::send(fd, framed.data(), framed.size(), MSG_NOSIGNAL);
      }
      conn.in.erase(0, 2 + len);
    }
    if (n == 0 || (n < 0 && errno != EAGAIN)) {
      loop_.remove(conn.id);
      ::close(fd);
      conns_.erase(fd);
    }
  }

  EventLoop& loop_;
  int udp_fd_ = -1;
  int tcp_fd_ = -1;
  std::uint16_t port_ = 0;
  IoId udp_id_;
  IoId tcp_id_;
  std::map<int, TcpConn> conns_;
  bool silent_ = false;
  std::map<std::string, std::vector<Record>> extra_;
};

struct Outcome {
  bool called = false;
  int calls = 0;
  std::error_code error;
  std::vector<std::string> addresses;
};

Resolver::Handler record(Outcome& outcome) {
  return [&outcome](std::error_code ec, std::span<const Address> addresses) {
    outcome.called = true;
    ++outcome.calls;
    outcome.error = ec;
    for (const Address& a : addresses)
      outcome.addresses.push_back(a.to_string());
  };
}

class ResolverTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NE(responder_.port(), 0) << "no free UDP+TCP port pair"; }
  Resolver::Options options(Duration timeout = 5s, int tries = 1) const {
    return {responder_.servers(), timeout, tries};
  }
  Outcome resolve(Resolver& resolver, const char* host, int family) {
    Outcome outcome;
    resolver.resolve(host, 8080, family, record(outcome));
    EXPECT_TRUE(run_until(loop_, [&] { return outcome.called; }));
    return outcome;
  }

  EventLoop loop_;
  DnsResponder responder_{loop_};
};

// "the addresses, each carrying `port`, in the order c-ares gives them"
TEST_F(ResolverTest, ARecordsArriveInTheServersOrderWithThePort) {
  Resolver resolver(loop_, options());
  Outcome out = resolve(resolver, "a.test", AF_INET);
  EXPECT_FALSE(out.error) << out.error.message();
  EXPECT_THAT(out.addresses, ElementsAre("192.0.2.1:8080", "192.0.2.2:8080"));
  EXPECT_GE(responder_.udp_queries, 1);
}

// "resolve(host, port, family, handler) looks `host` up (AF_INET, AF_INET6 ...)"
TEST_F(ResolverTest, AaaaRecordsGiveIpv6Addresses) {
  Resolver resolver(loop_, options());
  Outcome out = resolve(resolver, "aaaa.test", AF_INET6);
  EXPECT_FALSE(out.error) << out.error.message();
  EXPECT_THAT(out.addresses, ElementsAre("[2001:db8::1]:8080"));
}

// "... or AF_UNSPEC for both"
TEST_F(ResolverTest, UnspecifiedFamilyGivesBothFamilies) {
  Resolver resolver(loop_, options());
  Outcome out = resolve(resolver, "both.test", AF_UNSPEC);
  EXPECT_FALSE(out.error) << out.error.message();
  EXPECT_THAT(out.addresses, UnorderedElementsAre("192.0.2.3:8080", "[2001:db8::3]:8080"));
}

// "not_found (NXDOMAIN ...)" and "an empty span"
TEST_F(ResolverTest, NxdomainIsNotFound) {
  Resolver resolver(loop_, options());
  Outcome out = resolve(resolver, "missing.test", AF_INET);
  EXPECT_EQ(out.error, ResolveError::not_found) << out.error.message();
  EXPECT_THAT(out.addresses, IsEmpty());
}

// "no_address (the name exists, without an address of that family)"
TEST_F(ResolverTest, NameWithoutAnAddressOfTheFamilyIsNoAddress) {
  Resolver resolver(loop_, options());
  Outcome out = resolve(resolver, "aaaa.test", AF_INET);
  EXPECT_EQ(out.error, ResolveError::no_address) << out.error.message();
  EXPECT_THAT(out.addresses, IsEmpty());
}

// "timeout (Options::tries attempts of Options::timeout each ... got no answer)"
TEST_F(ResolverTest, UnansweredQueryTimesOut) {
  Resolver resolver(loop_, options(50ms, 2));
  Outcome out = resolve(resolver, "never.test", AF_INET);
  EXPECT_EQ(out.error, ResolveError::timeout) << out.error.message();
  EXPECT_EQ(out.error, std::errc::timed_out);
  EXPECT_GE(responder_.udp_queries, 2);  // both tries were sent
  EXPECT_THAT(out.addresses, IsEmpty());
}

// "one loop timer follows ares_timeout(), recomputed by a before-wait hook (on_before_wait)
// before each wait that follows a call into c-ares": a loop whose waits nobody bounds
// (run_once() without a timeout) still wakes for c-ares' retry and its timeout.
TEST_F(ResolverTest, UnboundedWaitsEndAtCaresTimeoutThroughTheBeforeWaitHook) {
  Resolver resolver(loop_, options(20ms, 3));
  Outcome out;
  resolver.resolve("never.test", 80, AF_INET, record(out));
  ASSERT_TRUE(test::run_unbounded_until(loop_, [&] { return out.called; }));
  EXPECT_EQ(out.error, ResolveError::timeout) << out.error.message();
  EXPECT_GE(responder_.udp_queries, 3);  // each retry was sent when its timer fired
}

// "refused: no server could be reached" (each try's UDP query met a closed port: ECONNREFUSED)
TEST_F(ResolverTest, ServerOnAClosedPortIsRefused) {
  int udp = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  ASSERT_EQ(::bind(udp, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ASSERT_EQ(::getsockname(udp, reinterpret_cast<sockaddr*>(&sa), &len), 0);
  ::close(udp);  // nothing listens there now
  Resolver resolver(loop_, {"127.0.0.1:" + std::to_string(ntohs(sa.sin_port)), 5s, 2});
  Outcome out = resolve(resolver, "a.test", AF_INET);
  EXPECT_EQ(out.error, ResolveError::refused) << out.error.message();
  EXPECT_THAT(out.addresses, IsEmpty());
}

// "A truncated UDP answer is retried over TCP by c-ares."
TEST_F(ResolverTest, TruncatedUdpAnswerIsRetriedOverTcp) {
  Resolver resolver(loop_, options());
  Outcome out = resolve(resolver, "big.test", AF_INET);
  EXPECT_FALSE(out.error) << out.error.message();
  EXPECT_THAT(out.addresses, ElementsAre("192.0.2.10:8080"));
  EXPECT_GE(responder_.udp_queries, 1);
  EXPECT_GE(responder_.tcp_queries, 1);
}

// "/etc/hosts is consulted before DNS (`localhost` resolves without a server)."
TEST_F(ResolverTest, LocalhostComesFromTheHostsFileWithoutAServer) {
  responder_.silent();
  Resolver resolver(loop_, options(50ms, 1));
  Outcome out = resolve(resolver, "localhost", AF_INET);
  EXPECT_FALSE(out.error) << out.error.message();
  EXPECT_THAT(out.addresses, ElementsAre("127.0.0.1:8080"));
  EXPECT_EQ(responder_.udp_queries, 0);
}

// "The handler runs exactly once, later, on the loop (never inside resolve(), even when the
// answer is known at once ...)"
TEST_F(ResolverTest, HandlerNeverRunsInsideResolveEvenForAnAnswerKnownAtOnce) {
  Resolver resolver(loop_, options());
  Outcome hosts, numeric;
  resolver.resolve("localhost", 1, AF_INET, record(hosts));
  resolver.resolve("192.0.2.7", 2, AF_INET, record(numeric));
  EXPECT_FALSE(hosts.called);
  EXPECT_FALSE(numeric.called);
  EXPECT_EQ(resolver.pending(), 2U);
  ASSERT_TRUE(run_until(loop_, [&] { return hosts.called && numeric.called; }));
  EXPECT_THAT(numeric.addresses, ElementsAre("192.0.2.7:2"));
  for (int i = 0; i < 3; ++i)
    loop_.run_once(1ms);
  EXPECT_EQ(hosts.calls, 1);
  EXPECT_EQ(numeric.calls, 1);
  EXPECT_EQ(resolver.pending(), 0U);
}

// "cancel(id) drops the query's handler: it is never called. The lookup itself may go on in
// c-ares until it finishes unseen"; "Cancelling a finished, cancelled or unknown id is a no-op"
TEST_F(ResolverTest, CancelledQueryFinishesUnseen) {
  Resolver resolver(loop_, options());
  Outcome cancelled, later;
  const auto id = resolver.resolve("a.test", 80, AF_INET, record(cancelled));
  EXPECT_TRUE(resolver.cancel(id));
  EXPECT_FALSE(resolver.cancel(id));
  EXPECT_FALSE(resolver.cancel(id + 100));
  EXPECT_EQ(resolver.pending(), 0U);
  // Asked after the cancelled one, of the same server: answered after it.
  const auto later_id = resolver.resolve("a.test", 80, AF_INET, record(later));
  ASSERT_TRUE(run_until(loop_, [&] { return later.called && responder_.udp_queries >= 2; }));
  for (int i = 0; i < 3; ++i)
    loop_.run_once(1ms);
  EXPECT_FALSE(cancelled.called);
  EXPECT_EQ(later.calls, 1);
  EXPECT_FALSE(resolver.cancel(later_id));  // finished
}

// "cancel(id) drops the query's handler" also once the answer is in, before the handler ran.
TEST_F(ResolverTest, CancelBetweenAnswerAndHandlerDropsTheHandler) {
  Resolver resolver(loop_, options());
  Outcome out;
  const auto id = resolver.resolve("localhost", 80, AF_INET, record(out));  // answered at once
  EXPECT_TRUE(resolver.cancel(id));
  for (int i = 0; i < 3; ++i)
    loop_.run_once(1ms);
  EXPECT_FALSE(out.called);
}

// "Destroying the Resolver cancels every query the same way: no handler runs, c-ares' sockets
// are deregistered and closed, the timer is cancelled."
TEST_F(ResolverTest, DestroyingTheResolverWithAQueryInFlightRunsNoHandler) {
  const std::size_t baseline = loop_.registrations();
  Outcome in_flight, answered;
  {
    Resolver resolver(loop_, options());
    resolver.resolve("never.test", 80, AF_INET, record(in_flight));
    ASSERT_TRUE(run_until(loop_, [&] { return responder_.udp_queries >= 1; }));
    resolver.resolve("localhost", 80, AF_INET, record(answered));  // delivery still queued
    EXPECT_GT(loop_.registrations(), baseline);                    // c-ares' UDP socket
  }
  EXPECT_EQ(loop_.registrations(), baseline);
  for (int i = 0; i < 3; ++i)
    loop_.run_once(1ms);
  EXPECT_FALSE(in_flight.called);
  EXPECT_FALSE(answered.called);
}

// "A handler may call resolve() and cancel(), and may destroy the Resolver."
TEST_F(ResolverTest, HandlerMayResolveAgainAndDestroyTheResolver) {
  auto resolver = std::make_unique<Resolver>(loop_, options());
  Outcome second;
  bool first_done = false;
  resolver->resolve("a.test", 80, AF_INET, [&](std::error_code, std::span<const Address>) {
    first_done = true;
    resolver->resolve("aaaa.test", 80, AF_INET6,
                      [&](std::error_code ec, std::span<const Address> addresses) {
                        record(second)(ec, addresses);
                        resolver.reset();
                      });
  });
  ASSERT_TRUE(run_until(loop_, [&] { return resolver == nullptr; }));
  EXPECT_TRUE(first_done);
  EXPECT_THAT(second.addresses, ElementsAre("[2001:db8::1]:80"));
}

// "Throws std::system_error (resolve_category()) when c-ares ... does not accept `servers`."
TEST_F(ResolverTest, MalformedServersThrow) {
  Resolver::Options bad{"not a server list", 1s, 1};
  try {
    Resolver resolver(loop_, bad);
    ADD_FAILURE() << "no exception";
  } catch (const std::system_error& e) {
    EXPECT_EQ(&e.code().category(), &resolve_category());
  }
}

// bad_name: "the host name ... is not valid" (a NUL byte cannot reach c-ares)
TEST_F(ResolverTest, HostWithANulByteIsABadName) {
  Resolver resolver(loop_, options());
  Outcome out;
  resolver.resolve(std::string_view("a.test\0x", 8), 80, AF_INET, record(out));
  EXPECT_FALSE(out.called);
  ASSERT_TRUE(run_until(loop_, [&] { return out.called; }));
  EXPECT_EQ(out.error, ResolveError::bad_name);
  EXPECT_EQ(out.error, std::errc::invalid_argument);
}

// resolve_category(): "name "reactor.resolve"; timeout compares equal to std::errc::timed_out,
// bad_name to std::errc::invalid_argument, out_of_memory to std::errc::not_enough_memory."
TEST(ResolveCategory, NamesAndConditions) {
  EXPECT_STREQ(resolve_category().name(), "reactor.resolve");
  EXPECT_EQ(make_error_code(ResolveError::timeout), std::errc::timed_out);
  EXPECT_EQ(make_error_code(ResolveError::bad_name), std::errc::invalid_argument);
  EXPECT_EQ(make_error_code(ResolveError::out_of_memory), std::errc::not_enough_memory);
  EXPECT_EQ(make_error_code(ResolveError::not_found).message(), "host not found");
  for (int v = 1; v <= static_cast<int>(ResolveError::other); ++v)
    EXPECT_FALSE(std::error_code(v, resolve_category()).message().empty());
  EXPECT_NE(std::error_code(99, resolve_category()).message().find("99"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// HostConnector: "host:port" by name, RFC 8305 attempts.

struct Connected {
  int calls = 0;
  std::error_code error;
  ConnectionHandle handle;
};

HostConnector::ConnectHandler record(Connected& out) {
  return [&out](std::error_code ec, ConnectionHandle handle) {
    ++out.calls;
    out.error = ec;
    out.handle = std::move(handle);
  };
}

class HostConnectorTest : public ResolverTest {
 protected:
  Resolver resolver_{loop_, options()};
  ConnectionHandlers client_;  // nothing to do: the tests look at the handle
};

// "each next one starts when the previous fails, or `attempt_delay` ... after it started if it
// has not finished ...: a stalled address ... costs attempt_delay, not a connect timeout", and
// "The first attempt to connect wins, and every other one is cancelled". The first address
// (IPv6, RFC 6724's first) has a full accept queue, so its SYN is dropped; the IPv4 one, tried
// 250 ms later, connects long before the 10 s timeout that a one-at-a-time connector would
// have run into.
TEST_F(HostConnectorTest, AStalledFirstAddressCostsTheAttemptDelayNotTheTimeout) {
  auto probe = ListenSocket::open(Address::ipv6_loopback(0));
  if (!probe.ok()) GTEST_SKIP() << "no IPv6 loopback: " << probe.error().message();
  test::FullBacklog stalled(Address::ipv6_loopback(0));
  const std::uint16_t port = stalled.address().port();
  ConnectionHandlers echo = test::echo_handlers();
  TcpServer server(loop_, Address::ipv4_loopback(port), echo);
  if (auto ec = server.start()) GTEST_SKIP() << "127.0.0.1:" << port << " taken: " << ec.message();
  responder_.add("he.test", "::1");
  responder_.add("he.test", "127.0.0.1");

  HostConnector connector(loop_, resolver_);
  Connected out;
  ASSERT_FALSE(connector.connect("he.test:" + std::to_string(port), 10s, client_, record(out)));
  ASSERT_TRUE(run_until(
      loop_, [&] { return out.calls > 0; }, 20s));
  ASSERT_FALSE(out.error) << out.error.message();
  ASSERT_EQ(connector.addresses().size(), 2u);
  EXPECT_EQ(connector.addresses()[0].family(), AF_INET6) << "the stalled address was not first";
  EXPECT_EQ(connector.attempts(), 2u);
  ASSERT_TRUE(out.handle);
  EXPECT_EQ(out.handle->peer().to_string(), "127.0.0.1:" + std::to_string(port));
  EXPECT_EQ(out.calls, 1);
  EXPECT_FALSE(connector.pending());
}

// "interleaved by family, starting with the first one's (IPv6, IPv4, IPv6, ...)"; "the last
// attempt's [error] when all failed"; a failure starts the next attempt at once (no delay:
// refused ports answer at once, and the whole run ends well inside the 250 ms delays it
// would otherwise add up to, which the test does not time: it checks the order and the error).
TEST_F(HostConnectorTest, AddressesAreInterleavedByFamilyAndAllRefusedReportsTheLastError) {
  // Every one refused at once on loopback (an IPv4-mapped IPv6 address reaches 127.0.0.1);
  // RFC 6724 sorts ::1 first and the mapped one with the IPv4 ones.
  responder_.add("many.test", "127.0.0.1");
  responder_.add("many.test", "127.0.0.2");
  responder_.add("many.test", "127.0.0.3");
  responder_.add("many.test", "::1");
  responder_.add("many.test", "::ffff:127.0.0.1");
  // A port bound but not listening on 127.0.0.1: connecting there is refused.
  auto held = open_stream_socket(AF_INET);
  ASSERT_TRUE(held.ok());
  auto probe = ListenSocket::open(Address::ipv6_loopback(0));
  if (!probe.ok()) GTEST_SKIP() << "no IPv6 loopback: " << probe.error().message();
  const Address any = Address::ipv4_loopback(0);
  ASSERT_EQ(::bind(held->get(), any.sockaddr_ptr(), any.length()), 0);
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  ASSERT_EQ(::getsockname(held->get(), reinterpret_cast<sockaddr*>(&bound), &len), 0);
  const std::uint16_t port = ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);

  HostConnector connector(loop_, resolver_);
  Connected out;
  ASSERT_FALSE(connector.connect("many.test:" + std::to_string(port), 10s, client_, record(out)));
  ASSERT_TRUE(run_until(
      loop_, [&] { return out.calls > 0; }, 20s));
  EXPECT_TRUE(out.error);
  EXPECT_FALSE(out.handle);
  ASSERT_EQ(connector.addresses().size(), 5u);
  EXPECT_EQ(connector.attempts(), 5u);
  std::vector<int> families;
  for (const Address& a : connector.addresses())
    families.push_back(a.family());
  // Whatever the sorted order, the families alternate from the first address's while both last.
  const int first = families[0];
  const long n_first = std::count(families.begin(), families.end(), first);
  std::vector<int> expected;
  for (long i = 0; i < std::max(n_first, 5 - n_first); ++i) {
    if (i < n_first) expected.push_back(first);
    if (i < 5 - n_first) expected.push_back(first == AF_INET ? AF_INET6 : AF_INET);
  }
  EXPECT_EQ(families, expected);
}

// "the resolver's (ResolveError: not_found ...)"
TEST_F(HostConnectorTest, AResolutionErrorIsReportedThroughTheHandler) {
  HostConnector connector(loop_, resolver_);
  Connected out;
  ASSERT_FALSE(connector.connect("nowhere.test:80", 10s, client_, record(out)));
  ASSERT_TRUE(run_until(loop_, [&] { return out.calls > 0; }));
  EXPECT_EQ(out.error, ResolveError::not_found) << out.error.message();
  EXPECT_FALSE(out.handle);
}

// "ETIMEDOUT when `timeout`, counted from connect() and covering resolution and every attempt,
// ran out first": the only address stalls; and a silent DNS server.
TEST_F(HostConnectorTest, TheTimeoutCoversResolutionAndEveryAttempt) {
  test::FullBacklog stalled;
  responder_.add("stall.test", "127.0.0.1");
  {
    HostConnector connector(loop_, resolver_);
    Connected out;
    ASSERT_FALSE(connector.connect("stall.test:" + std::to_string(stalled.address().port()), 300ms,
                                   client_, record(out)));
    ASSERT_TRUE(run_until(loop_, [&] { return out.calls > 0; }));
    EXPECT_EQ(out.error, std::errc::timed_out) << out.error.message();
    EXPECT_EQ(connector.attempts(), 1u);
  }
  responder_.silent();
  HostConnector connector(loop_, resolver_);
  Connected out;
  ASSERT_FALSE(connector.connect("quiet.test:80", 300ms, client_, record(out)));
  ASSERT_TRUE(run_until(loop_, [&] { return out.calls > 0; }));
  EXPECT_EQ(out.error, std::errc::timed_out) << out.error.message();
  EXPECT_EQ(connector.attempts(), 0u);
}

// "cancel(), or destroying the HostConnector, cancels: ... every attempt's socket closed, the
// handler not called."
TEST_F(HostConnectorTest, CancelDropsTheHandlerAndClosesTheAttempts) {
  test::FullBacklog stalled;
  responder_.add("stall.test", "127.0.0.1");
  const int fds_before = test::open_fd_count();
  HostConnector connector(loop_, resolver_);
  Connected out;
  ASSERT_FALSE(connector.connect("stall.test:" + std::to_string(stalled.address().port()), 10s,
                                 client_, record(out)));
  ASSERT_TRUE(run_until(loop_, [&] { return connector.attempts() == 1; }));
  connector.cancel();
  EXPECT_FALSE(connector.pending());
  for (int i = 0; i < 5; ++i)
    loop_.run_once(1ms);
  EXPECT_EQ(out.calls, 0);
  EXPECT_EQ(test::open_fd_count(), fds_before) << "the attempt's socket is still open";
}

// "A malformed target (no port, a port out of range, an empty host) or a connect() while one
// is pending (EALREADY) is returned by connect(), and the handler is not called"; "a numeric
// host needs no DNS" (the server says nothing at all).
TEST_F(HostConnectorTest, MalformedTargetsAreReturnedAndNumericHostsNeedNoDns) {
  HostConnector connector(loop_, resolver_);
  Connected out;
  for (const char* bad : {"nohost", "host:", ":80", "::1:80", "host:0", "host:65536", "host:8x"}) {
    SCOPED_TRACE(bad);
    EXPECT_EQ(connector.connect(bad, 10s, client_, record(out)), std::errc::invalid_argument);
  }
  responder_.silent();
  ConnectionHandlers echo = test::echo_handlers();
  TcpServer server(loop_, Address::ipv4_loopback(0), echo);
  ASSERT_FALSE(server.start());
  const std::string target = "127.0.0.1:" + std::to_string(server.address().port());
  ASSERT_FALSE(connector.connect(target, 10s, client_, record(out)));
  EXPECT_EQ(connector.connect(target, 10s, client_, record(out)),
            std::errc::connection_already_in_progress);
  ASSERT_TRUE(run_until(loop_, [&] { return out.calls > 0; }));
  EXPECT_FALSE(out.error) << out.error.message();
  EXPECT_TRUE(out.handle);
  EXPECT_EQ(out.calls, 1);
}

// "each next one starts when the latest one fails, or `attempt_delay` ... after it started":
// the first address stalls (a full accept queue on ::1), the second (127.0.0.1, nobody
// listening) is refused at once when the delay starts it, and the third (127.0.0.2, listening)
// starts on that refusal, not a second delay later. On the test clock: the delay fires only when
// the test moves it, and the test moves it once.
TEST(HostConnector, AFailureOfTheLatestAttemptStartsTheNextAtOnce) {
  auto probe = ListenSocket::open(Address::ipv6_loopback(0));
  if (!probe.ok()) GTEST_SKIP() << "no IPv6 loopback: " << probe.error().message();
  ManualClock clock;
  EventLoop loop(test::with_clock(clock));
  DnsResponder responder(loop);
  ASSERT_NE(responder.port(), 0);
  test::FullBacklog stalled(Address::ipv6_loopback(0));
  const std::uint16_t port = stalled.address().port();
  ConnectionHandlers echo = test::echo_handlers();
  TcpServer server(loop, *Address::parse("127.0.0.2:" + std::to_string(port)), echo);
  if (auto ec = server.start()) GTEST_SKIP() << "127.0.0.2:" << port << " taken: " << ec.message();
  responder.add("three.test", "::1");
  responder.add("three.test", "127.0.0.1");
  responder.add("three.test", "127.0.0.2");
  Resolver resolver(loop, {responder.servers(), 5s, 1});
  HostConnector connector(loop, resolver);
  ConnectionHandlers client;
  Connected out;
  ASSERT_FALSE(connector.connect("three.test:" + std::to_string(port), 1h, client, record(out)));
  ASSERT_TRUE(run_until(loop, [&] { return connector.attempts() == 1; }));
  ASSERT_EQ(connector.addresses().size(), 3u);
  ASSERT_EQ(connector.addresses()[0].family(), AF_INET6) << "the stalled address was not first";
  clock.advance(250ms);  // the delay: the second attempt, refused at once, then the third
  ASSERT_TRUE(run_until(loop, [&] { return out.calls > 0; }))
      << "attempts started: " << connector.attempts();
  EXPECT_FALSE(out.error) << out.error.message();
  EXPECT_EQ(connector.attempts(), 3u);
  ASSERT_TRUE(out.handle);
  EXPECT_EQ(out.handle->peer().to_string(), "127.0.0.2:" + std::to_string(port));
}

}  // namespace
}  // namespace reactor
