#include "reactor/address.hpp"

#include <arpa/inet.h>
#include <sys/un.h>

#include <cstddef>
#include <cstring>

namespace reactor {

namespace {

class AddressCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "reactor.address"; }

  std::string message(int value) const override {
    switch (static_cast<AddressError>(value)) {
      case AddressError::empty:
        return "empty address";
      case AddressError::missing_port:
        return "missing port (expected host:port)";
      case AddressError::bad_port:
        return "port is not a decimal number";
      case AddressError::port_out_of_range:
        return "port out of range (0-65535)";
      case AddressError::bad_host:
        return "malformed host (expected an IPv4 address, [IPv6 address] or localhost)";
      case AddressError::unresolved_host:
        return "host names are not resolved (use an IP address or localhost)";
      case AddressError::bad_ipv6:
        return "malformed IPv6 address (write it in brackets, as [::1]:80; no zone ids)";
      case AddressError::unix_path_too_long:
        return "unix socket path too long (at most 107 bytes)";
      case AddressError::empty_unix_path:
        return "empty unix socket path";
      case AddressError::bad_unix_path:
        return "unix socket path contains a NUL byte";
    }
    return "unknown address error";
  }

  // Callers that only care "was the input bad" can compare with std::errc::invalid_argument.
  std::error_condition default_error_condition(int) const noexcept override {
    return std::make_error_condition(std::errc::invalid_argument);
  }
};

constexpr std::size_t kSunPathOffset = offsetof(sockaddr_un, sun_path);
constexpr std::size_t kSunPathSize = sizeof(sockaddr_un::sun_path);
// A path needs its NUL inside sun_path; an abstract name needs its leading NUL.
constexpr std::size_t kMaxUnixName = kSunPathSize - 1;

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

bool is_alpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

bool equals_ignore_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i] >= 'A' && a[i] <= 'Z' ? static_cast<char>(a[i] - 'A' + 'a') : a[i];
    if (x != b[i]) return false;
  }
  return true;
}

// Tells "example.com" (a name we refuse to resolve) from "1.2.3.999" or "a b" (garbage),
// so the error says what to do. RFC 1123 labels; the last label is not all digits.
bool looks_like_host_name(std::string_view host) {
  if (host.empty() || host.size() > 253) return false;
  if (host.back() == '.') host.remove_suffix(1);
  bool last_label_numeric = true;
  std::size_t label = 0;
  for (std::size_t i = 0; i <= host.size(); ++i) {
    if (i == host.size() || host[i] == '.') {
      if (label == 0 || label > 63 || host[i - 1] == '-') return false;
      label = 0;
      continue;
    }
    char c = host[i];
    if (label == 0) {
      if (c == '-') return false;
      last_label_numeric = true;
    }
    if (is_alpha(c)) {
      last_label_numeric = false;
    } else if (c == '-') {
      last_label_numeric = false;
    } else if (!is_digit(c)) {
      return false;
    }
    ++label;
  }
  return !last_label_numeric;
}

// Decimal digits only: no sign, no spaces, no hex. Leading zeros are harmless ("080" is 80).
std::error_code parse_port(std::string_view text, std::uint16_t& port) {
  if (text.empty()) return AddressError::missing_port;
  std::uint32_t value = 0;
  for (char c : text) {
    if (!is_digit(c)) return AddressError::bad_port;
    if (value <= 65535) value = value * 10 + static_cast<std::uint32_t>(c - '0');
  }
  if (value > 65535) return AddressError::port_out_of_range;
  port = static_cast<std::uint16_t>(value);
  return {};
}

// RFC 5952: lowercase hex, no leading zeros, the longest run of two or more zero groups
// becomes "::" (the first such run on a tie), IPv4-mapped addresses end in dotted quad.
// glibc's inet_ntop is close, but also prints ::/96 "IPv4-compatible" addresses in dotted
// form; writing it out keeps the output fixed whatever libc we link.
void append_ipv6(std::string& out, const in6_addr& addr) {
  const unsigned char* b = addr.s6_addr;
  unsigned words[8];
  for (int i = 0; i < 8; ++i)
    words[i] = (unsigned{b[2 * i]} << 8) | b[2 * i + 1];

  // IPv4-mapped (::ffff:0:0/96) keeps its dotted-quad tail (RFC 5952 section 5).
  if (words[0] == 0 && words[1] == 0 && words[2] == 0 && words[3] == 0 && words[4] == 0 &&
      words[5] == 0xffff) {
    out += "::ffff:";
    for (int i = 12; i < 16; ++i) {
      if (i > 12) out += '.';
      out += std::to_string(b[i]);
    }
    return;
  }

  int best_start = -1;
  int best_len = 0;
  for (int i = 0; i < 8;) {
    if (words[i] != 0) {
      ++i;
      continue;
    }
    int j = i;
    while (j < 8 && words[j] == 0)
      ++j;
    if (j - i > best_len) {
      best_start = i;
      best_len = j - i;
    }
    i = j;
  }
  if (best_len < 2) best_start = -1;

  static constexpr char kHex[] = "0123456789abcdef";
  for (int i = 0; i < 8; ++i) {
    if (i == best_start) {
      out += "::";
      i += best_len - 1;
      continue;
    }
    if (i > 0 && i != best_start + best_len) out += ':';
    unsigned w = words[i];
    bool started = false;
    for (int shift = 12; shift >= 0; shift -= 4) {
      unsigned nibble = (w >> shift) & 0xf;
      if (nibble != 0 || started || shift == 0) {
        out += kHex[nibble];
        started = true;
      }
    }
  }
}

}  // namespace

const std::error_category& address_category() noexcept {
  static const AddressCategory category;
  return category;
}

std::error_code make_error_code(AddressError error) noexcept {
  return {static_cast<int>(error), address_category()};
}

Address::Address() noexcept : storage_{}, length_(0) {
  storage_.ss_family = AF_UNSPEC;
}

Address Address::ipv4_loopback(std::uint16_t port) {
  Address a;
  auto* sin = reinterpret_cast<sockaddr_in*>(&a.storage_);
  sin->sin_family = AF_INET;
  sin->sin_port = htons(port);
  sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.length_ = sizeof(sockaddr_in);
  return a;
}

Address Address::ipv6_loopback(std::uint16_t port) {
  Address a;
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(&a.storage_);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(port);
  sin6->sin6_addr = in6addr_loopback;
  a.length_ = sizeof(sockaddr_in6);
  return a;
}

Result<Address> Address::parse(std::string_view text) {
  if (text.empty()) return make_error_code(AddressError::empty);

  Address a;
  constexpr std::string_view kUnixPrefix = "unix:";
  if (text.substr(0, kUnixPrefix.size()) == kUnixPrefix) {
    std::string_view path = text.substr(kUnixPrefix.size());
    bool abstract = !path.empty() && path[0] == '@';
    if (abstract) path.remove_prefix(1);
    if (path.empty()) return make_error_code(AddressError::empty_unix_path);
    if (path.size() > kMaxUnixName) return make_error_code(AddressError::unix_path_too_long);
    if (!abstract && path.find('\0') != std::string_view::npos) {
      return make_error_code(AddressError::bad_unix_path);
    }
    auto* sun = reinterpret_cast<sockaddr_un*>(&a.storage_);
    sun->sun_family = AF_UNIX;
    // Abstract: a leading NUL, then exactly the name's bytes (the length delimits it).
    // Path: the bytes, then the NUL that the zeroed storage already holds.
    std::memcpy(sun->sun_path + (abstract ? 1 : 0), path.data(), path.size());
    a.length_ = static_cast<socklen_t>(kSunPathOffset + 1 + path.size());
    return a;
  }

  std::string_view host;
  std::string_view port_text;
  bool bracketed = text[0] == '[';
  if (bracketed) {
    std::size_t close = text.find(']');
    if (close == std::string_view::npos) return make_error_code(AddressError::bad_ipv6);
    host = text.substr(1, close - 1);
    std::string_view rest = text.substr(close + 1);
    if (rest.empty() || rest[0] != ':') return make_error_code(AddressError::missing_port);
    port_text = rest.substr(1);
  } else {
    std::size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return make_error_code(AddressError::missing_port);
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return make_error_code(AddressError::bad_ipv6);
  }

  // inet_pton wants a NUL-terminated string; an IPv6 text is at most 45 characters.
  char host_buf[64];
  if (host.size() >= sizeof host_buf) {
    return make_error_code(bracketed                    ? AddressError::bad_ipv6
                           : looks_like_host_name(host) ? AddressError::unresolved_host
                                                        : AddressError::bad_host);
  }
  std::memcpy(host_buf, host.data(), host.size());
  host_buf[host.size()] = '\0';

  std::uint16_t port = 0;
  if (bracketed) {
    if (host.find('%') != std::string_view::npos) return make_error_code(AddressError::bad_ipv6);
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&a.storage_);
    // host.size() == strlen(host_buf) rules out an embedded NUL that inet_pton would stop at.
    if (std::strlen(host_buf) != host.size() ||
        ::inet_pton(AF_INET6, host_buf, &sin6->sin6_addr) != 1) {
      return make_error_code(AddressError::bad_ipv6);
    }
    if (auto ec = parse_port(port_text, port)) return ec;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    a.length_ = sizeof(sockaddr_in6);
    return a;
  }

  auto* sin = reinterpret_cast<sockaddr_in*>(&a.storage_);
  if (equals_ignore_case(host, "localhost")) {
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  } else if (host.empty() || std::strlen(host_buf) != host.size() ||
             ::inet_pton(AF_INET, host_buf, &sin->sin_addr) != 1) {
    return make_error_code(looks_like_host_name(host) ? AddressError::unresolved_host
                                                      : AddressError::bad_host);
  }
  if (auto ec = parse_port(port_text, port)) return ec;
  sin->sin_family = AF_INET;
  sin->sin_port = htons(port);
  a.length_ = sizeof(sockaddr_in);
  return a;
}

Result<Address> Address::from_sockaddr(const sockaddr* sa, socklen_t len) {
  if (sa == nullptr || len < sizeof(sa_family_t)) {
    return std::make_error_code(std::errc::invalid_argument);
  }
  Address a;
  // Rebuild field by field rather than memcpy: the caller's padding and flowinfo must not
  // make equal endpoints compare unequal.
  switch (sa->sa_family) {
    case AF_INET: {
      if (len < sizeof(sockaddr_in)) return std::make_error_code(std::errc::invalid_argument);
      sockaddr_in in;
      std::memcpy(&in, sa, sizeof in);
      auto* sin = reinterpret_cast<sockaddr_in*>(&a.storage_);
      sin->sin_family = AF_INET;
      sin->sin_port = in.sin_port;
      sin->sin_addr = in.sin_addr;
      a.length_ = sizeof(sockaddr_in);
      return a;
    }
    case AF_INET6: {
      if (len < sizeof(sockaddr_in6)) return std::make_error_code(std::errc::invalid_argument);
      sockaddr_in6 in6;
      std::memcpy(&in6, sa, sizeof in6);
      auto* sin6 = reinterpret_cast<sockaddr_in6*>(&a.storage_);
      sin6->sin6_family = AF_INET6;
      sin6->sin6_port = in6.sin6_port;
      sin6->sin6_addr = in6.sin6_addr;
      sin6->sin6_scope_id = in6.sin6_scope_id;
      a.length_ = sizeof(sockaddr_in6);
      return a;
    }
    case AF_UNIX: {
      auto* sun = reinterpret_cast<sockaddr_un*>(&a.storage_);
      sun->sun_family = AF_UNIX;
      // Linux may report a full 108-byte path with its NUL past sun_path, so len can exceed
      // sizeof(sockaddr_un); never read beyond sun_path.
      if (len <= kSunPathOffset) {
        a.length_ = sizeof(sa_family_t);  // unnamed: accept() of an unbound client
        return a;
      }
      std::size_t avail = len - kSunPathOffset;
      const char* src = reinterpret_cast<const sockaddr_un*>(sa)->sun_path;
      if (src[0] == '\0') {
        std::size_t name = avail - 1;
        if (name > kMaxUnixName) return std::make_error_code(std::errc::invalid_argument);
        std::memcpy(sun->sun_path + 1, src + 1, name);
        a.length_ = static_cast<socklen_t>(kSunPathOffset + 1 + name);
        return a;
      }
      std::size_t path = ::strnlen(src, avail < kSunPathSize ? avail : kSunPathSize);
      if (path > kMaxUnixName) return std::make_error_code(std::errc::invalid_argument);
      std::memcpy(sun->sun_path, src, path);
      a.length_ = static_cast<socklen_t>(kSunPathOffset + 1 + path);
      return a;
    }
    default:
      return std::make_error_code(std::errc::address_family_not_supported);
  }
}

bool Address::is_abstract() const noexcept {
  const auto* sun = reinterpret_cast<const sockaddr_un*>(&storage_);
  return is_unix() && length_ > kSunPathOffset && sun->sun_path[0] == '\0';
}

std::uint16_t Address::port() const noexcept {
  switch (family()) {
    case AF_INET:
      return ntohs(reinterpret_cast<const sockaddr_in*>(&storage_)->sin_port);
    case AF_INET6:
      return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_port);
    default:
      return 0;
  }
}

std::string_view Address::unix_path() const noexcept {
  if (!is_unix() || length_ <= kSunPathOffset) return {};
  const char* path = reinterpret_cast<const sockaddr_un*>(&storage_)->sun_path;
  // Both forms store one NUL besides the name: leading for abstract, trailing for a path.
  std::size_t n = length_ - kSunPathOffset - 1;
  return is_abstract() ? std::string_view(path + 1, n) : std::string_view(path, n);
}

std::string Address::to_string() const {
  std::string out;
  switch (family()) {
    case AF_INET: {
      const auto* sin = reinterpret_cast<const sockaddr_in*>(&storage_);
      char buf[INET_ADDRSTRLEN];
      ::inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof buf);
      out = buf;
      out += ':';
      out += std::to_string(port());
      return out;
    }
    case AF_INET6: {
      const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&storage_);
      out = '[';
      append_ipv6(out, sin6->sin6_addr);
      if (sin6->sin6_scope_id != 0) {
        out += '%';
        out += std::to_string(sin6->sin6_scope_id);
      }
      out += "]:";
      out += std::to_string(port());
      return out;
    }
    case AF_UNIX:
      out = is_abstract() ? "unix:@" : "unix:";
      out += unix_path();
      return out;
    default:
      return "unspecified";
  }
}

bool operator==(const Address& a, const Address& b) noexcept {
  // Storage is zeroed and normalized on construction, so the first length_ bytes are exactly
  // the bytes that matter.
  return a.family() == b.family() && a.length_ == b.length_ &&
         std::memcmp(&a.storage_, &b.storage_, a.length_) == 0;
}

}  // namespace reactor
