// floor_udp: the tightest UDP echo server we can write by hand, the floor udp_echo is measured
// against (bench/cost.sh --udp). One socket, level-triggered epoll, and per readiness: recvmmsg
// of up to 32 datagrams into fixed buffers, sendmmsg of them back to their sources, again only
// when the batch came back full (a short batch means the socket is drained). With --naive it is
// the loop most programs start with instead: recvfrom until EAGAIN, a sendto per datagram.
//
//   floor_udp [--listen [udp:]ADDR] [--naive]
//
// Prints `listening on udp:ADDR`; exits 0 on SIGINT or SIGTERM. A datagram the kernel will not
// take back (EAGAIN) is dropped, as a UDP server must.
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "server_args.hpp"

namespace {

volatile sig_atomic_t stop_requested = 0;

void on_stop_signal(int) {
  stop_requested = 1;
}

constexpr int kBatch = 32;
constexpr std::size_t kMaxDatagram = 2048;

char buffers[kBatch][kMaxDatagram];
sockaddr_storage sources[kBatch];
iovec iovecs[kBatch];
mmsghdr messages[kBatch];

void init_headers() {
  for (int i = 0; i < kBatch; ++i) {
    iovecs[i] = {buffers[i], kMaxDatagram};
    messages[i].msg_hdr.msg_name = &sources[i];
    messages[i].msg_hdr.msg_namelen = sizeof sources[i];
    messages[i].msg_hdr.msg_iov = &iovecs[i];
    messages[i].msg_hdr.msg_iovlen = 1;
  }
}

void echo_batched(int fd) {
  for (;;) {
    const int n = recvmmsg(fd, messages, kBatch, MSG_DONTWAIT, nullptr);
    if (n <= 0) return;  // EAGAIN (or an error to ignore: the next readiness retries)
    for (int i = 0; i < n; ++i)
      iovecs[i].iov_len = messages[i].msg_len;  // send back what came, to where it came from
    for (int sent = 0; sent < n;) {
      const int m = sendmmsg(fd, messages + sent, static_cast<unsigned>(n - sent), MSG_DONTWAIT);
      if (m <= 0) break;  // full: the rest is dropped
      sent += m;
    }
    for (int i = 0; i < n; ++i) {  // only the headers used: the others are still whole
      iovecs[i].iov_len = kMaxDatagram;
      messages[i].msg_hdr.msg_namelen = sizeof sources[i];
    }
    if (n < kBatch) return;  // a short batch: drained
  }
}

void echo_naive(int fd) {
  for (;;) {
    sockaddr_storage source{};
    socklen_t length = sizeof source;
    const ssize_t n = recvfrom(fd, buffers[0], kMaxDatagram, MSG_DONTWAIT,
                               reinterpret_cast<sockaddr*>(&source), &length);
    if (n < 0) return;
    sendto(fd, buffers[0], static_cast<std::size_t>(n), MSG_DONTWAIT,
           reinterpret_cast<sockaddr*>(&source), length);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:7777";
  bool naive = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--listen" && i + 1 < argc) {
      listen = argv[++i];
    } else if (arg == "--naive") {
      naive = true;
    } else if (arg == "--help") {
      std::printf("usage: %s [--listen [udp:]ADDR] [--naive]\n", argv[0]);
      return 0;
    } else {
      std::fprintf(stderr, "%s: unknown option or missing value: %s\n", argv[0], arg.c_str());
      return 2;
    }
  }
  if (listen.rfind("udp:", 0) == 0) listen.erase(0, 4);
  bench::ServerArgs args;
  if (!bench::parse_listen_address(listen, args)) {
    std::fprintf(stderr, "%s: malformed address: %s\n", argv[0], listen.c_str());
    return 2;
  }
  struct sigaction action {};
  action.sa_handler = on_stop_signal;  // no SA_RESTART: epoll_wait returns EINTR
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);

  const int fd = socket(args.address.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&args.address), args.address_length) != 0) {
    std::fprintf(stderr, "%s: %s: %s\n", argv[0], listen.c_str(), std::strerror(errno));
    return 1;
  }
  init_headers();
  const int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = fd;
  epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev);
  sockaddr_storage bound{};
  socklen_t length = sizeof bound;
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length);
  std::printf("listening on udp:%s\n",
              bench::format_address(reinterpret_cast<sockaddr*>(&bound)).c_str());
  std::fflush(stdout);
  while (!stop_requested) {
    epoll_event ready;
    const int n = epoll_wait(epoll_fd, &ready, 1, -1);
    if (n <= 0) continue;
    if (naive) {
      echo_naive(fd);
    } else {
      echo_batched(fd);
    }
  }
  close(epoll_fd);
  close(fd);
  return 0;
}
