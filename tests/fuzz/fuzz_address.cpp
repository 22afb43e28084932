// fuzz_address: Address::parse() and Address::from_sockaddr() on arbitrary bytes.
//
// Input: the whole input is tried both as text for parse() and as the raw bytes of a sockaddr
// of exactly that length (in a heap block of that size, so ASan sees any read past `len`).
// Invariants (address.hpp):
// - parse() never crashes; its errors are AddressErrors (address_category(), a value of the enum)
//   that compare equal to std::errc::invalid_argument; when it succeeds, to_string() is canonical:
//   parse(to_string(a)) == a and printing that again gives the same text;
// - from_sockaddr() never crashes and never reads past `len`; what it produces prints, and
//   converts back through sockaddr_ptr()/length() to an equal Address; when its text parses,
//   that is the same address, except for the documented non-round-tripping forms.
#include <sys/un.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include "reactor/address.hpp"

namespace {

[[noreturn]] void fail(const char* what, std::string_view detail) {
  std::fprintf(stderr, "fuzz_address: %s: \"%.*s\"\n", what, static_cast<int>(detail.size()),
               detail.data());
  std::abort();
}

// Reads every accessor, so a bad internal length shows up under ASan here.
void touch(const reactor::Address& a) {
  volatile std::size_t sink = 0;
  sink = sink + static_cast<std::size_t>(a.family()) + a.port() + a.length() + a.is_unix() +
         a.is_abstract();
  const std::string_view path = a.unix_path();
  for (char c : path)
    sink = sink + static_cast<unsigned char>(c);
  if (a.length() > sizeof(sockaddr_storage)) fail("length beyond sockaddr_storage", a.to_string());
}

void check_parsed(std::string_view text) {
  auto parsed = reactor::Address::parse(text);
  if (!parsed) {
    const std::error_code ec = parsed.error();
    if (ec.category() != reactor::address_category()) {
      fail("parse error is not in the address category", ec.message());
    }
    if (ec.value() < static_cast<int>(reactor::AddressError::empty) ||
        ec.value() > static_cast<int>(reactor::AddressError::bad_unix_path)) {
      fail("parse error is not an AddressError", ec.message());
    }
    if (ec != std::errc::invalid_argument) fail("parse error is not EINVAL", text);
    return;
  }
  const reactor::Address& a = *parsed;
  touch(a);
  const std::string printed = a.to_string();
  auto again = reactor::Address::parse(printed);
  if (!again) fail("to_string() of a parsed address does not parse", printed);
  if (!(*again == a)) fail("parse(to_string(a)) != a", printed);
  if (again->to_string() != printed) fail("to_string() is not stable", printed);
  auto copied = reactor::Address::from_sockaddr(a.sockaddr_ptr(), a.length());
  if (!copied) fail("from_sockaddr() rejects a parsed address", printed);
  if (!(*copied == a)) fail("from_sockaddr(parse(x)) != parse(x)", printed);
}

void check_sockaddr(const std::uint8_t* data, std::size_t size) {
  // Exactly `size` bytes on the heap (new is 16-byte aligned, enough for any sockaddr).
  std::unique_ptr<unsigned char[]> block(new unsigned char[size == 0 ? 1 : size]);
  if (size > 0) std::memcpy(block.get(), data, size);
  const auto* sa = reinterpret_cast<const sockaddr*>(block.get());
  auto converted = reactor::Address::from_sockaddr(sa, static_cast<socklen_t>(size));
  if (!converted) {
    const std::error_code ec = converted.error();
    if (ec != std::errc::invalid_argument && ec != std::errc::address_family_not_supported) {
      fail("from_sockaddr error is neither EINVAL nor EAFNOSUPPORT", ec.message());
    }
    return;
  }
  const reactor::Address& a = *converted;
  touch(a);
  const std::string printed = a.to_string();
  auto copied = reactor::Address::from_sockaddr(a.sockaddr_ptr(), a.length());
  if (!copied) fail("from_sockaddr() rejects its own output", printed);
  if (!(*copied == a)) fail("from_sockaddr() of its own output differs", printed);
  if (copied->to_string() != printed) fail("to_string() differs for equal addresses", printed);
  // Documented exceptions to the round trip: unnamed Unix sockets, empty abstract names, a
  // filesystem path starting with '@' (prints like an abstract name), IPv6 scope ids.
  auto parsed = reactor::Address::parse(printed);
  if (!parsed) return;
  if (a.is_unix() && !a.is_abstract() && a.unix_path().substr(0, 1) == "@") return;
  if (a.is_abstract() && a.unix_path().empty()) return;
  if (!(*parsed == a)) fail("parse(to_string(a)) != a for a from_sockaddr() address", printed);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 4096) return 0;  // addresses are short; longer inputs only slow the search
  check_parsed(std::string_view(reinterpret_cast<const char*>(data), size));
  check_sockaddr(data, size);
  return 0;
}
