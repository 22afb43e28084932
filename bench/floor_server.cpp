// floor_server: the tightest echo server we can write by hand, as the floor the reactor is
// measured against (bench/compare.sh, bench/cost.sh). No abstraction on purpose:
// level-triggered epoll, fd as the event token, fd-indexed state, accept4, one recv per
// readiness, a direct send of what was read, and buffering only when the kernel takes less
// than all of it (then the connection stops reading until that is flushed).
//
//   floor_server [--listen ADDR] [--busy-poll]
//
// --busy-poll spins on a non-blocking epoll_wait instead of sleeping (a whole core).
// Prints `listening on ADDR`; exits 0 on SIGINT or SIGTERM. Sets TCP_NODELAY on each accepted
// connection, as the reactor and the peers do.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "server_args.hpp"

namespace {

volatile sig_atomic_t stop_requested = 0;

void on_stop_signal(int) {
  stop_requested = 1;
}

// Output the kernel did not take, per fd. Empty for almost every connection, always.
struct Pending {
  std::vector<char> bytes;
  std::size_t sent = 0;
};

int epoll_fd = -1;
std::vector<Pending> pending;
char input[64 * 1024];

void close_connection(int fd) {
  if (static_cast<std::size_t>(fd) < pending.size()) {
    pending[fd].bytes.clear();
    pending[fd].sent = 0;
  }
  close(fd);  // also leaves the epoll set: nobody else holds the file
}

void set_interest(int fd, std::uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  epoll_ctl(epoll_fd, EPOLL_CTL_MOD, fd, &ev);
}

void on_readable(int fd) {
  ssize_t n = recv(fd, input, sizeof input, 0);
  if (n <= 0) {
    if (n == 0 || (errno != EAGAIN && errno != EINTR)) close_connection(fd);
    return;
  }
  ssize_t sent = send(fd, input, static_cast<std::size_t>(n), MSG_NOSIGNAL);
  if (sent == n) return;
  if (sent < 0) {
    if (errno != EAGAIN) {
      close_connection(fd);
      return;
    }
    sent = 0;
  }
  if (static_cast<std::size_t>(fd) >= pending.size())
    pending.resize(static_cast<std::size_t>(fd) + 1);
  pending[fd].bytes.assign(input + sent, input + n);
  pending[fd].sent = 0;
  set_interest(fd, EPOLLOUT);  // stop reading until the peer has taken this
}

void on_writable(int fd) {
  Pending& p = pending[fd];
  ssize_t sent = send(fd, p.bytes.data() + p.sent, p.bytes.size() - p.sent, MSG_NOSIGNAL);
  if (sent < 0) {
    if (errno != EAGAIN) close_connection(fd);
    return;
  }
  p.sent += static_cast<std::size_t>(sent);
  if (p.sent < p.bytes.size()) return;
  p.bytes.clear();
  p.sent = 0;
  set_interest(fd, EPOLLIN);
}

void on_acceptable(int listen_fd) {
  for (;;) {
    int fd = accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;  // EAGAIN, or a failure the next readiness retries
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) close(fd);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bench::ServerArgs args = bench::parse_server_args(argc, argv, /*accepts_busy_poll=*/true);
  bench::raise_fd_limit();
  signal(SIGPIPE, SIG_IGN);
  struct sigaction action {};
  action.sa_handler = on_stop_signal;  // no SA_RESTART: epoll_wait returns EINTR
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);

  int listen_fd = socket(args.address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(listen_fd, reinterpret_cast<const sockaddr*>(&args.address), args.address_length) < 0 ||
      listen(listen_fd, SOMAXCONN) < 0) {
    std::fprintf(stderr, "floor_server: cannot listen: %s\n", std::strerror(errno));
    return 1;
  }
  epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = listen_fd;
  epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listen_fd, &ev);
  bench::print_listening(listen_fd);

  const int timeout = args.busy_poll ? 0 : -1;
  epoll_event events[256];
  while (!stop_requested) {
    int n = epoll_wait(epoll_fd, events, 256, timeout);
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      if (fd == listen_fd) {
        on_acceptable(fd);
      } else if (events[i].events & EPOLLOUT) {
        on_writable(fd);
      } else {
        on_readable(fd);  // EPOLLIN, EPOLLHUP, EPOLLERR: recv reports which
      }
    }
  }
  return 0;
}
