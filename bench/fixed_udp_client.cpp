// fixed_udp_client: a deterministic UDP echo driver for counting a server's cost per datagram
// (bench/cost.sh --udp): --messages datagrams of --size bytes in rounds of --batch, each round
// sent at once (one sendmmsg), then every echo of it awaited before the next round. So two
// runs against one server make the same calls in the same batches, and the server sees batches
// of exactly B whenever it keeps up.
//
//   fixed_udp_client --target [udp:]ADDR [--messages N] [--batch B] [--size BYTES] [--gap-us U]
//
// --gap-us: a pause after each round's last echo, so that a server slowed by strace or
// valgrind has gone back to its wait before the next round arrives (else whether its "read
// again after a full batch" finds the next round depends on timing, and so do the counts).
// Each datagram carries its sequence number in its first 8 bytes. Prints messages, seconds and
// messages/s. Exit 0; 1 when an echo does not come back within 1 s (a loss on loopback means
// the server's socket buffer overflowed) or a socket call failed; 2 on a usage error.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "server_args.hpp"

namespace {

[[noreturn]] void usage(const char* message) {
  std::fprintf(stderr, "fixed_udp_client: %s\n", message);
  std::exit(2);
}

long long number(const char* flag, const char* text) {
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (*text == '\0' || *end != '\0' || value <= 0) {
    std::fprintf(stderr, "fixed_udp_client: %s needs a positive number, not %s\n", flag, text);
    std::exit(2);
  }
  return value;
}

}  // namespace

int main(int argc, char** argv) {
  std::string target;
  long long messages = 1;
  int batch = 1;
  std::size_t size = 64;
  long long gap_us = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help") {
      std::printf(
          "usage: %s --target [udp:]ADDR [--messages N] [--batch B] [--size BYTES] [--gap-us U]\n",
          argv[0]);
      return 0;
    }
    if (i + 1 >= argc) usage(("unknown option or missing value: " + arg).c_str());
    const char* value = argv[++i];
    if (arg == "--target") {
      target = value;
    } else if (arg == "--messages") {
      messages = number("--messages", value);
    } else if (arg == "--batch") {
      batch = static_cast<int>(std::min<long long>(number("--batch", value), 1024));
    } else if (arg == "--gap-us") {
      gap_us = number("--gap-us", value);
    } else if (arg == "--size") {
      size = static_cast<std::size_t>(std::max<long long>(number("--size", value), 8));
    } else {
      usage(("unknown option: " + arg).c_str());
    }
  }
  if (target.rfind("udp:", 0) == 0) target.erase(0, 4);
  bench::ServerArgs address;
  if (!bench::parse_listen_address(target, address)) usage("--target needs [udp:]HOST:PORT");

  const int fd = socket(address.address.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0 ||
      connect(fd, reinterpret_cast<sockaddr*>(&address.address), address.address_length) != 0) {
    std::fprintf(stderr, "fixed_udp_client: %s: %s\n", target.c_str(), std::strerror(errno));
    return 1;
  }
  const int buffer = 4 << 20;  // a round of echoes must never overflow our own receive buffer
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);

  std::vector<std::vector<char>> out(static_cast<std::size_t>(batch), std::vector<char>(size, 'x'));
  std::vector<iovec> iov(static_cast<std::size_t>(batch));
  std::vector<mmsghdr> msgs(static_cast<std::size_t>(batch));
  std::vector<char> in(65536);
  const auto start = std::chrono::steady_clock::now();
  std::uint64_t seq = 0;
  for (long long done = 0; done < messages;) {
    const int round = static_cast<int>(std::min<long long>(batch, messages - done));
    for (int i = 0; i < round; ++i) {
      const std::uint64_t s = seq + static_cast<std::uint64_t>(i);
      std::memcpy(out[static_cast<std::size_t>(i)].data(), &s, sizeof s);
      iov[static_cast<std::size_t>(i)] = {out[static_cast<std::size_t>(i)].data(), size};
      msgs[static_cast<std::size_t>(i)] = {};
      msgs[static_cast<std::size_t>(i)].msg_hdr.msg_iov = &iov[static_cast<std::size_t>(i)];
      msgs[static_cast<std::size_t>(i)].msg_hdr.msg_iovlen = 1;
    }
    for (int sent = 0; sent < round;) {
      const int n = sendmmsg(fd, msgs.data() + sent, static_cast<unsigned>(round - sent), 0);
      if (n < 0) {
        std::fprintf(stderr, "fixed_udp_client: sendmmsg: %s\n", std::strerror(errno));
        return 1;
      }
      sent += n;
    }
    for (int received = 0; received < round;) {
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 1000) != 1) {
        std::fprintf(stderr, "fixed_udp_client: %d of %d echoes missing after 1 s\n",
                     round - received, round);
        return 1;
      }
      const ssize_t n = recv(fd, in.data(), in.size(), 0);
      if (n < 0) {
        std::fprintf(stderr, "fixed_udp_client: recv: %s\n", std::strerror(errno));
        return 1;
      }
      ++received;
    }
    seq += static_cast<std::uint64_t>(round);
    done += round;
    if (gap_us > 0) usleep(static_cast<useconds_t>(gap_us));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("messages=%lld seconds=%.3f messages/s=%.0f\n", messages, seconds,
              static_cast<double>(messages) / seconds);
  close(fd);
  return 0;
}
