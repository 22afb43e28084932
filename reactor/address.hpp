// Address: an IPv4, IPv6 or Unix-domain socket address (stream or datagram: the protocol is the
// socket's, not the address's), held by value.
//
// Contract:
// - A value type (trivially copyable storage, no heap); copy it freely between threads.
// - Nothing here resolves host names: the only name accepted is `localhost` (127.0.0.1); names
//   are reactor_resolver's (resolver.hpp, host_connector.hpp).
// - parse() accepts exactly these forms, and to_string() prints the canonical one:
//     127.0.0.1:8080   [::1]:8080   [2001:db8::1]:80   localhost:8080   0.0.0.0:0
//     unix:/run/x.sock   unix:relative/path.sock   unix:@name (Linux abstract namespace)
//   The port is required and is 0-65535 in plain decimal digits. IPv6 must be bracketed and
//   has no zone id. IPv6 prints per RFC 5952 (lowercase, longest run of two or more zero
//   groups compressed, IPv4-mapped as ::ffff:1.2.3.4).
// - parse(to_string(a)) == a for every a that parse() produced. Addresses that only
//   from_sockaddr() can produce do not all round-trip: an unnamed Unix socket (what accept()
//   reports for an unbound client) prints `unix:`; an empty abstract name prints `unix:@`; a
//   filesystem path starting with '@' prints like an abstract name; an IPv6 scope id prints
//   as `[fe80::1%2]:80`, which parse() rejects.
// - Abstract names are length-delimited, not NUL-terminated: `unix:@a` and `unix:@a\0` differ,
//   and a name may hold any byte. Filesystem paths may not contain NUL.
// - Limits: a path is at most 107 bytes (sun_path is 108 with its NUL); an abstract name is
//   at most 107 bytes (its leading NUL takes the 108th).
// - Errors: parse() reports an AddressError (category address_category(), every code
//   compares equal to std::errc::invalid_argument); from_sockaddr() reports
//   std::errc::address_family_not_supported or std::errc::invalid_argument (bad length).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

#include "reactor/result.hpp"

namespace reactor {

enum class AddressError {
  empty = 1,
  missing_port,
  bad_port,
  port_out_of_range,
  bad_host,
  unresolved_host,
  bad_ipv6,
  unix_path_too_long,
  empty_unix_path,
  bad_unix_path,  // a filesystem path with a NUL byte in it
};

const std::error_category& address_category() noexcept;
std::error_code make_error_code(AddressError error) noexcept;

class Address {
 public:
  // The unspecified address (AF_UNSPEC, length 0); prints "unspecified".
  Address() noexcept;

  static Result<Address> parse(std::string_view text);
  static Address ipv4_loopback(std::uint16_t port);  // 127.0.0.1:port
  static Address ipv6_loopback(std::uint16_t port);  // [::1]:port
  // Copies what getsockname/getpeername/accept returned. Fields that do not identify the
  // endpoint (sin_zero, sin6_flowinfo, bytes past a path's NUL) are dropped, so equal
  // endpoints compare equal.
  static Result<Address> from_sockaddr(const sockaddr* sa, socklen_t len);

  int family() const noexcept {
    return storage_.ss_family;
  }  // AF_INET, AF_INET6, AF_UNIX, AF_UNSPEC
  bool is_unix() const noexcept { return family() == AF_UNIX; }
  bool is_abstract() const noexcept;
  std::uint16_t port() const noexcept;  // host byte order; 0 for Unix and unspecified
  // The path, or the abstract name without its leading '@'; empty for IP addresses.
  // Points into this Address.
  std::string_view unix_path() const noexcept;

  const sockaddr* sockaddr_ptr() const noexcept {
    return reinterpret_cast<const sockaddr*>(&storage_);
  }
  socklen_t length() const noexcept { return length_; }

  std::string to_string() const;  // allocates

  friend bool operator==(const Address& a, const Address& b) noexcept;

 private:
  // DatagramSocket has recvmmsg write IP sources straight into an Address it zeroed, keeping
  // the invariant below (the kernel fills the whole sockaddr_in / sockaddr_in6).
  friend class DatagramSocket;
  // Always fully zeroed before filling, so padding compares equal and == can compare bytes.
  sockaddr_storage storage_;
  socklen_t length_;
};

}  // namespace reactor

template <>
struct std::is_error_code_enum<reactor::AddressError> : std::true_type {};
