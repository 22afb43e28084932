// The command-line contract shared by the comparison servers in bench/ (the floor and the
// peers), the subset of the demo servers' that bench/compare.sh, cost.sh and idle_rss.sh use:
//
//   SERVER [--listen ADDR] [--busy-poll]
//
// ADDR is 127.0.0.1:PORT or [::1]:PORT (port 0 picks a free one; default 127.0.0.1:7777). Once
// bound, the server prints `listening on ADDR` (the real port) to stdout, flushed, and serves
// until SIGINT or SIGTERM, then exits 0. A usage error prints one line to stderr and exits 2.
// Header-only and free of any event library, so each server stays one file plus this.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace bench {

struct ServerArgs {
  sockaddr_storage address{};
  socklen_t address_length = 0;
  std::string host = "127.0.0.1";  // numeric, without brackets (for Asio)
  unsigned short port = 7777;
  bool busy_poll = false;  // only servers that accept it (the floor)
};

// Parses "127.0.0.1:7777" or "[::1]:7777" into `args`; false when malformed.
inline bool parse_listen_address(const std::string& text, ServerArgs& args) {
  std::string host;
  std::string port;
  if (!text.empty() && text[0] == '[') {
    auto close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return false;
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string::npos) return false;
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  char* end = nullptr;
  long number = std::strtol(port.c_str(), &end, 10);
  if (port.empty() || *end != '\0' || number < 0 || number > 65535) return false;
  args.host = host;
  args.port = static_cast<unsigned short>(number);
  args.address = {};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&args.address);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&args.address);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(args.port);
    args.address_length = sizeof(sockaddr_in);
    return true;
  }
  if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(args.port);
    args.address_length = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

// Exits 2 on a usage error. `accepts_busy_poll`: whether --busy-poll is an option here.
inline ServerArgs parse_server_args(int argc, char** argv, bool accepts_busy_poll = false) {
  ServerArgs args;
  std::string listen = "127.0.0.1:7777";
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--listen" && i + 1 < argc) {
      listen = argv[++i];
    } else if (arg == "--busy-poll" && accepts_busy_poll) {
      args.busy_poll = true;
    } else if (arg == "--help") {
      std::printf("usage: %s [--listen ADDR]%s\n", argv[0],
                  accepts_busy_poll ? " [--busy-poll]" : "");
      std::exit(0);
    } else {
      std::fprintf(stderr, "%s: unknown option or missing value: %s\n", argv[0], arg.c_str());
      std::exit(2);
    }
  }
  if (!parse_listen_address(listen, args)) {
    std::fprintf(stderr, "%s: malformed address: %s\n", argv[0], listen.c_str());
    std::exit(2);
  }
  return args;
}

inline std::string format_address(const sockaddr* address) {
  char text[INET6_ADDRSTRLEN] = "?";
  if (address->sa_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(address);
    inet_ntop(AF_INET, &v4->sin_addr, text, sizeof text);
    return std::string(text) + ":" + std::to_string(ntohs(v4->sin_port));
  }
  const auto* v6 = reinterpret_cast<const sockaddr_in6*>(address);
  inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof text);
  // Appended piece by piece: "[" + std::string draws a false -Wrestrict from GCC 12 at -O3.
  std::string result = "[";
  result += text;
  result += "]:";
  result += std::to_string(ntohs(v6->sin6_port));
  return result;
}

// Prints `listening on ADDR` for the bound socket `fd`, flushed.
inline void print_listening(int fd) {
  sockaddr_storage bound{};
  socklen_t length = sizeof bound;
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length);
  std::printf("listening on %s\n", format_address(reinterpret_cast<sockaddr*>(&bound)).c_str());
  std::fflush(stdout);
}

// As every server here: the soft fd limit up to the hard one (10,000 idle connections).
inline void raise_fd_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

}  // namespace bench
