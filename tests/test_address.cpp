// Address parsing, canonical printing (RFC 5952 for IPv6), and sockaddr round trips.
#include "reactor/address.hpp"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>

#include <gtest/gtest.h>

#include "reactor/socket.hpp"

namespace reactor {
namespace {

using namespace std::string_literals;

constexpr std::size_t kSunPathOffset = offsetof(sockaddr_un, sun_path);

struct BadCase {
  std::string text;
  AddressError error;
};

void PrintTo(const BadCase& c, std::ostream* os) {
  *os << '"' << c.text << '"';
}

class MalformedAddress : public testing::TestWithParam<BadCase> {};

TEST_P(MalformedAddress, IsRejectedWithTheSpecificError) {
  const BadCase& c = GetParam();
  auto a = Address::parse(c.text);
  ASSERT_FALSE(a.ok()) << "parsed as " << a->to_string();
  EXPECT_EQ(a.error(), c.error) << a.error().message();
  EXPECT_EQ(a.error(), std::errc::invalid_argument);
}

INSTANTIATE_TEST_SUITE_P(
    Table, MalformedAddress,
    testing::Values(
        BadCase{"", AddressError::empty}, BadCase{"127.0.0.1", AddressError::missing_port},
        BadCase{"127.0.0.1:", AddressError::missing_port},
        BadCase{"localhost", AddressError::missing_port},
        BadCase{"[::1]", AddressError::missing_port}, BadCase{"[::1]:", AddressError::missing_port},
        BadCase{"[::1]80", AddressError::missing_port},
        BadCase{"127.0.0.1:65536", AddressError::port_out_of_range},
        BadCase{"127.0.0.1:99999999999999999999", AddressError::port_out_of_range},
        BadCase{"[::1]:70000", AddressError::port_out_of_range},
        BadCase{"127.0.0.1:-1", AddressError::bad_port},
        BadCase{"127.0.0.1:+80", AddressError::bad_port},
        BadCase{"127.0.0.1: 80", AddressError::bad_port},
        BadCase{"127.0.0.1:80 ", AddressError::bad_port},
        BadCase{"127.0.0.1:0x50", AddressError::bad_port},
        BadCase{"127.0.0.1:http", AddressError::bad_port}, BadCase{":80", AddressError::bad_host},
        BadCase{"1.2.3.256:80", AddressError::bad_host},
        BadCase{"1.2.3:80", AddressError::bad_host}, BadCase{"01.2.3.4:80", AddressError::bad_host},
        BadCase{" 1.2.3.4:80", AddressError::bad_host},
        BadCase{"!!garbage!!:80", AddressError::bad_host},
        BadCase{"1.2.3.4\0:80"s, AddressError::bad_host},
        BadCase{"example.com:80", AddressError::unresolved_host},
        BadCase{"db:5432", AddressError::unresolved_host},
        BadCase{"my-host.internal.:80", AddressError::unresolved_host},
        BadCase{"Db.Example.COM:80", AddressError::unresolved_host},
        // A name too long for the 64-byte host buffer is still told apart from garbage.
        BadCase{std::string(40, 'a') + "." + std::string(40, 'b') + ".example:80",
                AddressError::unresolved_host},
        BadCase{std::string(70, '!') + ":80", AddressError::bad_host},
        BadCase{"[" + std::string(70, 'f') + "]:80", AddressError::bad_ipv6},
        // Not host names (RFC 1123): empty, over-long or hyphen-edged labels, other characters,
        // over 253 bytes in all.
        BadCase{"under_score:80", AddressError::bad_host},
        BadCase{"a~b:80", AddressError::bad_host}, BadCase{"[::1\0]:80"s, AddressError::bad_ipv6},
        BadCase{"a..b:80", AddressError::bad_host}, BadCase{"-a.com:80", AddressError::bad_host},
        BadCase{"a-.com:80", AddressError::bad_host},
        BadCase{std::string(64, 'a') + ".com:80", AddressError::bad_host},
        BadCase{std::string(60, 'a') + "." + std::string(60, 'b') + "." + std::string(60, 'c') +
                    "." + std::string(60, 'd') + "." + std::string(60, 'e') + ":80",
                AddressError::bad_host},
        BadCase{"::1:80", AddressError::bad_ipv6}, BadCase{"::1", AddressError::bad_ipv6},
        BadCase{"[::1:80", AddressError::bad_ipv6},
        BadCase{"[fe80::1%eth0]:80", AddressError::bad_ipv6},
        BadCase{"[fe80::1%2]:80", AddressError::bad_ipv6},
        BadCase{"[1.2.3.4]:80", AddressError::bad_ipv6},
        BadCase{"[::g]:80", AddressError::bad_ipv6},
        BadCase{"[localhost]:80", AddressError::bad_ipv6},
        BadCase{"[1:2:3:4:5:6:7:8:9]:80", AddressError::bad_ipv6},
        BadCase{"unix:", AddressError::empty_unix_path},
        BadCase{"unix:@", AddressError::empty_unix_path},
        BadCase{"unix:/" + std::string(107, 'a'), AddressError::unix_path_too_long},
        BadCase{"unix:@" + std::string(108, 'a'), AddressError::unix_path_too_long},
        BadCase{"unix:/tmp/a\0b"s, AddressError::bad_unix_path}));

struct RoundTrip {
  std::string text;
  std::string canonical;
};

void PrintTo(const RoundTrip& c, std::ostream* os) {
  *os << '"' << c.text << '"';
}

class CanonicalAddress : public testing::TestWithParam<RoundTrip> {};

TEST_P(CanonicalAddress, PrintsCanonicallyAndParsesBackEqual) {
  const RoundTrip& c = GetParam();
  auto a = Address::parse(c.text);
  ASSERT_TRUE(a.ok()) << c.text << ": " << a.error().message();
  EXPECT_EQ(a->to_string(), c.canonical);
  auto b = Address::parse(a->to_string());
  ASSERT_TRUE(b.ok()) << b.error().message();
  EXPECT_EQ(*a, *b);
}

INSTANTIATE_TEST_SUITE_P(
    Table, CanonicalAddress,
    testing::Values(
        RoundTrip{"127.0.0.1:8080", "127.0.0.1:8080"}, RoundTrip{"0.0.0.0:0", "0.0.0.0:0"},
        RoundTrip{"255.255.255.255:65535", "255.255.255.255:65535"},
        RoundTrip{"localhost:8080", "127.0.0.1:8080"}, RoundTrip{"LocalHost:1", "127.0.0.1:1"},
        RoundTrip{"127.0.0.1:080", "127.0.0.1:80"}, RoundTrip{"[::1]:8080", "[::1]:8080"},
        RoundTrip{"[::]:0", "[::]:0"}, RoundTrip{"[2001:db8::1]:80", "[2001:db8::1]:80"},
        RoundTrip{"[2001:DB8::1]:80", "[2001:db8::1]:80"},
        RoundTrip{"[::ffff:1.2.3.4]:443", "[::ffff:1.2.3.4]:443"},
        RoundTrip{"[::ffff:0102:0304]:443", "[::ffff:1.2.3.4]:443"},
        RoundTrip{"unix:/run/x.sock", "unix:/run/x.sock"},
        RoundTrip{"unix:relative/path.sock", "unix:relative/path.sock"},
        RoundTrip{"unix:@name", "unix:@name"}));

// RFC 5952 section 4 examples and the ones that trip naive formatters.
TEST(AddressRfc5952, FormatsIpv6Canonically) {
  struct Case {
    const char* in;
    const char* out;
  };
  const Case cases[] = {
      {"[2001:db8:0:0:1:0:0:1]:1", "[2001:db8::1:0:0:1]:1"},                 // leftmost of a tie
      {"[2001:db8:0:1:1:1:1:1]:1", "[2001:db8:0:1:1:1:1:1]:1"},              // one zero group stays
      {"[2001:0db8:0000:0000:0000:0000:0002:0001]:1", "[2001:db8::2:1]:1"},  // no leading zeros
      {"[2001:db8:0:0:0:1:0:0]:1", "[2001:db8::1:0:0]:1"},                   // longest run wins
      {"[2001:db8:0:0:1:0:0:0]:1", "[2001:db8:0:0:1::]:1"},  // longer run at the end
      {"[0:0:0:0:0:0:0:1]:1", "[::1]:1"},
      {"[1:0:0:0:0:0:0:0]:1", "[1::]:1"},
      {"[0:0:1:0:0:0:0:1]:1", "[0:0:1::1]:1"},
      {"[2001:DB8:AAAA:BBBB:CCCC:DDDD:EEEE:FFFF]:1",
       "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:1"},  // lowercase
      {"[::1.2.3.4]:1", "[::102:304]:1"},              // deprecated IPv4-compatible: plain hex
      {"[::ffff:0:0]:1", "[::ffff:0.0.0.0]:1"},
      {"[64:ff9b::1.2.3.4]:1", "[64:ff9b::102:304]:1"},
  };
  for (const Case& c : cases) {
    auto a = Address::parse(c.in);
    ASSERT_TRUE(a.ok()) << c.in << ": " << a.error().message();
    EXPECT_EQ(a->to_string(), c.out) << c.in;
    auto again = Address::parse(a->to_string());
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *a);
  }
}

// Every pattern of zero and non-zero groups: the text parses back to the same address, and
// matches glibc's inet_ntop, except where glibc prints IPv4-compatible (::/96) in dotted form.
TEST(AddressRfc5952, EveryZeroPatternRoundTrips) {
  for (unsigned mask = 0; mask < 256; ++mask) {
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(1);
    for (int i = 0; i < 8; ++i) {
      if (mask & (1u << i)) {
        sin6.sin6_addr.s6_addr[2 * i] = static_cast<unsigned char>(i * 17);
        sin6.sin6_addr.s6_addr[2 * i + 1] = 0x0a;
      }
    }
    auto a = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&sin6), sizeof sin6);
    ASSERT_TRUE(a.ok());
    std::string text = a->to_string();
    auto b = Address::parse(text);
    ASSERT_TRUE(b.ok()) << text;
    EXPECT_EQ(*b, *a) << text;

    char glibc[INET6_ADDRSTRLEN];
    ASSERT_NE(::inet_ntop(AF_INET6, &sin6.sin6_addr, glibc, sizeof glibc), nullptr);
    bool ipv4_compatible = (mask & 0x3f) == 0 && mask != 0 && mask != 0x80;
    if (!ipv4_compatible) {
      EXPECT_EQ(text, "[" + std::string(glibc) + "]:1");
    }
  }
}

// "A value type (trivially copyable storage, no heap); copy it freely between threads."
static_assert(std::is_trivially_copyable_v<Address>);

TEST(Address, CopiesAreEqualAndIndependent) {
  Address a = *Address::parse("unix:@copied");
  Address b = a;
  EXPECT_EQ(a, b);
  b = Address::ipv4_loopback(1);
  EXPECT_EQ(a.to_string(), "unix:@copied");
  EXPECT_NE(a, b);
}

TEST(Address, DefaultIsUnspecified) {
  Address a;
  EXPECT_EQ(a.family(), AF_UNSPEC);
  EXPECT_EQ(a.to_string(), "unspecified");
  EXPECT_EQ(a.port(), 0);
  EXPECT_TRUE(a.unix_path().empty());
  EXPECT_EQ(a, Address());
}

TEST(Address, Loopbacks) {
  Address v4 = Address::ipv4_loopback(8080);
  EXPECT_EQ(v4.family(), AF_INET);
  EXPECT_EQ(v4.port(), 8080);
  EXPECT_EQ(v4.length(), sizeof(sockaddr_in));
  EXPECT_EQ(v4.to_string(), "127.0.0.1:8080");
  EXPECT_EQ(v4, *Address::parse("localhost:8080"));

  Address v6 = Address::ipv6_loopback(9);
  EXPECT_EQ(v6.family(), AF_INET6);
  EXPECT_EQ(v6.port(), 9);
  EXPECT_EQ(v6.length(), sizeof(sockaddr_in6));
  EXPECT_EQ(v6.to_string(), "[::1]:9");
  EXPECT_EQ(v6, *Address::parse("[::1]:9"));
}

TEST(Address, AccessorsForIp) {
  auto a = Address::parse("10.1.2.3:443");
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(a->is_unix());
  EXPECT_FALSE(a->is_abstract());
  EXPECT_EQ(a->port(), 443);
  EXPECT_TRUE(a->unix_path().empty());
  const auto* sin = reinterpret_cast<const sockaddr_in*>(a->sockaddr_ptr());
  EXPECT_EQ(sin->sin_family, AF_INET);
  EXPECT_EQ(ntohs(sin->sin_port), 443);
  EXPECT_EQ(ntohl(sin->sin_addr.s_addr), 0x0a010203u);
}

TEST(Address, UnixPathLayout) {
  auto a = Address::parse("unix:/run/x.sock");
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a->is_unix());
  EXPECT_FALSE(a->is_abstract());
  EXPECT_EQ(a->port(), 0);
  EXPECT_EQ(a->unix_path(), "/run/x.sock");
  // Path plus its NUL, the way the kernel reports it from getsockname.
  EXPECT_EQ(a->length(), kSunPathOffset + std::strlen("/run/x.sock") + 1);
  const auto* sun = reinterpret_cast<const sockaddr_un*>(a->sockaddr_ptr());
  EXPECT_STREQ(sun->sun_path, "/run/x.sock");
}

TEST(Address, AbstractNameIsLengthDelimitedNotPadded) {
  auto a = Address::parse("unix:@name");
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a->is_abstract());
  EXPECT_EQ(a->unix_path(), "name");
  EXPECT_EQ(a->length(), kSunPathOffset + 1 + 4);
  const auto* sun = reinterpret_cast<const sockaddr_un*>(a->sockaddr_ptr());
  EXPECT_EQ(sun->sun_path[0], '\0');
  EXPECT_EQ(std::string_view(sun->sun_path + 1, 4), "name");
}

TEST(Address, AbstractNamesKeepEmbeddedCharacters) {
  const std::string names[] = {"a:b", "@at",  "with space", "/slash/y", "x\0y"s,
                               "\0"s, "a\0"s, "\xff\x01"s,  "[::1]:80"};
  for (const std::string& name : names) {
    auto a = Address::parse("unix:@" + name);
    ASSERT_TRUE(a.ok()) << a.error().message();
    EXPECT_TRUE(a->is_abstract());
    EXPECT_EQ(a->unix_path(), name);
    EXPECT_EQ(a->length(), kSunPathOffset + 1 + name.size());
    EXPECT_EQ(a->to_string(), "unix:@" + name);
    auto b = Address::parse(a->to_string());
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(*a, *b);
  }
  // "a" and "a\0" are different abstract names.
  EXPECT_NE(*Address::parse("unix:@a"), *Address::parse("unix:@a\0"s));
}

TEST(Address, LongestUnixPathIsAcceptedAndOneMoreRejected) {
  std::string path = "/" + std::string(106, 'p');  // 107 bytes + NUL fills sun_path
  auto a = Address::parse("unix:" + path);
  ASSERT_TRUE(a.ok()) << a.error().message();
  EXPECT_EQ(a->unix_path(), path);
  EXPECT_EQ(a->length(), sizeof(sockaddr_un));
  EXPECT_EQ(*Address::parse(a->to_string()), *a);

  auto too_long = Address::parse("unix:" + path + "p");
  ASSERT_FALSE(too_long.ok());
  EXPECT_EQ(too_long.error(), AddressError::unix_path_too_long);
}

TEST(Address, LongestAbstractNameIsAcceptedAndOneMoreRejected) {
  std::string name(107, 'n');  // leading NUL + 107 bytes fills sun_path
  auto a = Address::parse("unix:@" + name);
  ASSERT_TRUE(a.ok()) << a.error().message();
  EXPECT_EQ(a->length(), sizeof(sockaddr_un));
  EXPECT_EQ(a->unix_path(), name);

  auto too_long = Address::parse("unix:@" + name + "n");
  ASSERT_FALSE(too_long.ok());
  EXPECT_EQ(too_long.error(), AddressError::unix_path_too_long);
}

TEST(Address, ErrorMessagesSayWhatToDo) {
  EXPECT_EQ(make_error_code(AddressError::port_out_of_range).message(),
            "port out of range (0-65535)");
  EXPECT_EQ(make_error_code(AddressError::unresolved_host).message(),
            "host names are not resolved (use an IP address or localhost)");
  EXPECT_STREQ(address_category().name(), "reactor.address");
  for (int e = 1; e <= static_cast<int>(AddressError::bad_unix_path); ++e) {
    EXPECT_NE(address_category().message(e), "unknown address error") << e;
  }
  // A value outside the enum still prints something, and still means "bad input".
  EXPECT_EQ(address_category().message(0), "unknown address error");
  EXPECT_EQ(address_category().message(99), "unknown address error");
  EXPECT_EQ(std::error_code(99, address_category()), std::errc::invalid_argument);
}

TEST(Address, Equality) {
  EXPECT_EQ(*Address::parse("127.0.0.1:80"), *Address::parse("127.0.0.1:80"));
  EXPECT_NE(*Address::parse("127.0.0.1:80"), *Address::parse("127.0.0.1:81"));
  EXPECT_NE(*Address::parse("127.0.0.1:80"), *Address::parse("127.0.0.2:80"));
  EXPECT_NE(*Address::parse("127.0.0.1:80"), *Address::parse("[::ffff:127.0.0.1]:80"));
  EXPECT_NE(*Address::parse("[::1]:80"), *Address::parse("[::2]:80"));
  EXPECT_NE(*Address::parse("unix:/a"), *Address::parse("unix:/b"));
  EXPECT_NE(*Address::parse("unix:/a"), *Address::parse("unix:@/a"));
  EXPECT_NE(*Address::parse("unix:a"), *Address::parse("unix:/a"));
  EXPECT_NE(*Address::parse("unix:@a"), *Address::parse("unix:@ab"));
  EXPECT_NE(Address(), Address::ipv4_loopback(0));
}

// A bound socket's getsockname() result, read back through from_sockaddr.
Address bound_address(int family, const Address& bind_to) {
  auto fd = open_stream_socket(family);
  EXPECT_TRUE(fd.ok()) << fd.error().message();
  if (!fd.ok()) return {};
  EXPECT_EQ(::bind(fd->get(), bind_to.sockaddr_ptr(), bind_to.length()), 0)
      << bind_to.to_string() << ": " << std::strerror(errno);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  EXPECT_EQ(::getsockname(fd->get(), reinterpret_cast<sockaddr*>(&ss), &len), 0);
  auto a = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
  EXPECT_TRUE(a.ok()) << a.error().message();
  return a.ok() ? *a : Address();
}

TEST(AddressFromSockaddr, Ipv4BoundToPortZero) {
  Address a = bound_address(AF_INET, Address::ipv4_loopback(0));
  EXPECT_EQ(a.family(), AF_INET);
  EXPECT_NE(a.port(), 0);
  EXPECT_EQ(a, Address::ipv4_loopback(a.port()));
  EXPECT_EQ(*Address::parse(a.to_string()), a);
}

TEST(AddressFromSockaddr, Ipv6BoundToPortZero) {
  auto probe = open_stream_socket(AF_INET6);
  if (!probe.ok()) GTEST_SKIP() << "no IPv6: " << probe.error().message();
  Address a = bound_address(AF_INET6, Address::ipv6_loopback(0));
  if (HasFailure()) return;
  EXPECT_EQ(a.family(), AF_INET6);
  EXPECT_NE(a.port(), 0);
  EXPECT_EQ(a, Address::ipv6_loopback(a.port()));
  EXPECT_EQ(*Address::parse(a.to_string()), a);
}

TEST(AddressFromSockaddr, UnixPath) {
  char dir_template[] = "/tmp/reactor-address-XXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  std::string path = std::string(dir_template) + "/s.sock";
  auto want = Address::parse("unix:" + path);
  ASSERT_TRUE(want.ok());
  Address a = bound_address(AF_UNIX, *want);
  ::unlink(path.c_str());
  ::rmdir(dir_template);
  EXPECT_EQ(a, *want);
  EXPECT_EQ(a.unix_path(), path);
}

TEST(AddressFromSockaddr, UnixAbstract) {
  std::string name = "reactor-test-" + std::to_string(::getpid()) + "-a\0b"s;
  auto want = Address::parse("unix:@" + name);
  ASSERT_TRUE(want.ok());
  Address a = bound_address(AF_UNIX, *want);
  EXPECT_TRUE(a.is_abstract());
  EXPECT_EQ(a.unix_path(), name);
  EXPECT_EQ(a, *want);
}

// accept() of an unbound client reports only the family.
TEST(AddressFromSockaddr, UnnamedUnixSocket) {
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  Fd a_end(pair[0]);
  Fd b_end(pair[1]);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ASSERT_EQ(::getsockname(a_end.get(), reinterpret_cast<sockaddr*>(&ss), &len), 0);
  ASSERT_EQ(len, sizeof(sa_family_t));
  auto a = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
  ASSERT_TRUE(a.ok()) << a.error().message();
  EXPECT_TRUE(a->is_unix());
  EXPECT_FALSE(a->is_abstract());
  EXPECT_TRUE(a->unix_path().empty());
  EXPECT_EQ(a->to_string(), "unix:");
  EXPECT_FALSE(Address::parse(a->to_string()).ok());  // documented: does not round-trip
}

// "Addresses that only from_sockaddr() can produce do not all round-trip: ... an empty abstract
// name prints `unix:@`; a filesystem path starting with '@' prints like an abstract name".
TEST(AddressFromSockaddr, EmptyAbstractNameAndAtPathDoNotRoundTrip) {
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  auto empty = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&sun), kSunPathOffset + 1);
  ASSERT_TRUE(empty.ok()) << empty.error().message();
  EXPECT_TRUE(empty->is_abstract());
  EXPECT_EQ(empty->to_string(), "unix:@");
  EXPECT_FALSE(Address::parse(empty->to_string()).ok());

  std::strcpy(sun.sun_path, "@at");
  auto at = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&sun), kSunPathOffset + 4);
  ASSERT_TRUE(at.ok()) << at.error().message();
  EXPECT_FALSE(at->is_abstract());
  EXPECT_EQ(at->to_string(), "unix:@at");
  auto reparsed = Address::parse(at->to_string());
  ASSERT_TRUE(reparsed.ok());
  EXPECT_TRUE(reparsed->is_abstract());
  EXPECT_NE(*reparsed, *at);
}

TEST(AddressFromSockaddr, DropsPaddingAndFlowInfo) {
  sockaddr_in6 sin6{};
  sin6.sin6_family = AF_INET6;
  sin6.sin6_port = htons(80);
  sin6.sin6_addr = in6addr_loopback;
  sin6.sin6_flowinfo = htonl(12345);
  auto a = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&sin6), sizeof sin6);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, Address::ipv6_loopback(80));

  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(80);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::memset(sin.sin_zero, 0xab, sizeof sin.sin_zero);
  auto b = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&sin), sizeof sin);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, Address::ipv4_loopback(80));

  // A path given with the whole sun_path length compares equal to the tight one.
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::strcpy(sun.sun_path, "/run/x.sock");
  auto c = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&sun), sizeof sun);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, *Address::parse("unix:/run/x.sock"));
}

TEST(AddressFromSockaddr, ScopeIdIsKeptAndPrinted) {
  sockaddr_in6 sin6{};
  sin6.sin6_family = AF_INET6;
  sin6.sin6_port = htons(80);
  ASSERT_EQ(::inet_pton(AF_INET6, "fe80::1", &sin6.sin6_addr), 1);
  sin6.sin6_scope_id = 2;
  auto a = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&sin6), sizeof sin6);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->to_string(), "[fe80::1%2]:80");
  EXPECT_NE(*a, *Address::parse("[fe80::1]:80"));
}

TEST(AddressFromSockaddr, RejectsUnsupportedFamilyAndBadLength) {
  sockaddr_storage ss{};
  ss.ss_family = AF_PACKET;
  auto a = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), sizeof ss);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.error(), std::errc::address_family_not_supported);

  ss.ss_family = AF_INET;
  auto b = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), sizeof(sockaddr_in) - 1);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.error(), std::errc::invalid_argument);

  ss.ss_family = AF_INET6;
  auto c = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), sizeof(sockaddr_in));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error(), std::errc::invalid_argument);

  auto d = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), 1);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error(), std::errc::invalid_argument);

  auto e = Address::from_sockaddr(nullptr, sizeof ss);
  ASSERT_FALSE(e.ok());
}

// "Limits: a path is at most 107 bytes ...; an abstract name is at most 107 bytes": what the
// kernel may report beyond that (a 108-byte path with no NUL in sun_path, a length past
// sockaddr_un) is rejected as a bad length, never read past sun_path.
TEST(AddressFromSockaddr, RejectsUnixNamesOverTheLimit) {
  sockaddr_storage ss{};
  auto* sun = reinterpret_cast<sockaddr_un*>(&ss);
  sun->sun_family = AF_UNIX;
  std::memset(sun->sun_path, 'p', sizeof sun->sun_path);
  auto path = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), sizeof ss);
  ASSERT_FALSE(path.ok());
  EXPECT_EQ(path.error(), std::errc::invalid_argument);

  sun->sun_path[0] = '\0';
  auto abstract = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), sizeof(sockaddr_un) + 1);
  ASSERT_FALSE(abstract.ok());
  EXPECT_EQ(abstract.error(), std::errc::invalid_argument);

  // At the limit both are accepted.
  auto longest_abstract =
      Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), sizeof(sockaddr_un));
  ASSERT_TRUE(longest_abstract.ok()) << longest_abstract.error().message();
  EXPECT_EQ(longest_abstract->unix_path().size(), 107u);
  sun->sun_path[0] = 'p';
  sun->sun_path[107] = '\0';
  auto longest_path = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), sizeof(sockaddr_un));
  ASSERT_TRUE(longest_path.ok()) << longest_path.error().message();
  EXPECT_EQ(longest_path->unix_path().size(), 107u);
}

}  // namespace
}  // namespace reactor
