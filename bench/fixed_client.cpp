// fixed_client: a deterministic echo client for counting a server's cost per message
// (bench/cost.sh), for the busy-poll ping-pong row (bench/compare.sh) and for holding idle
// connections (bench/idle_rss.sh). Exactly --messages echoes of --size bytes, spread over
// --connections connections, each connection ping-pong (one message in flight), all of them at
// once; then it closes every connection (FIN) and exits. Unlike reactor-load it runs for a
// message count, not a duration, so two runs against one server do the same work.
//
//   fixed_client --target ADDR [--messages N] [--connections C] [--size BYTES] [--busy-poll]
//                [--hold] [--json]
//
// --busy-poll spins on a non-blocking epoll_wait. --hold: after the messages, keep the
// connections open, print `holding C connections`, and wait for SIGINT or SIGTERM.
// Prints messages, seconds, messages/s and latency percentiles (one JSON object with --json).
// Exit 0, or 1 when the server closed a connection early or a socket call failed.
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
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

using Clock = std::chrono::steady_clock;

struct Settings {
  bench::ServerArgs target;
  std::int64_t messages = 1;
  int connections = 1;
  std::size_t size = 64;
  bool busy_poll = false;
  bool hold = false;
  bool json = false;
};

struct Client {
  int fd = -1;
  std::int64_t left = 0;     // messages still to send
  std::size_t received = 0;  // bytes of the message in flight that came back
  Clock::time_point sent_at;
};

[[noreturn]] void usage(const char* message) {
  std::fprintf(stderr, "fixed_client: %s\n", message);
  std::exit(2);
}

Settings parse(int argc, char** argv) {
  Settings s;
  bool have_target = false;
  auto number = [&](int& i) {
    if (i + 1 >= argc) usage(("missing value: " + std::string(argv[i])).c_str());
    char* end = nullptr;
    long long v = std::strtoll(argv[++i], &end, 10);
    if (*end != '\0' || v < 0) usage(("invalid value: " + std::string(argv[i])).c_str());
    return v;
  };
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--target" && i + 1 < argc) {
      if (!bench::parse_listen_address(argv[++i], s.target)) usage("malformed address");
      have_target = true;
    } else if (arg == "--messages") {
      s.messages = number(i);
    } else if (arg == "--connections") {
      s.connections = static_cast<int>(std::max(1LL, number(i)));
    } else if (arg == "--size") {
      s.size = static_cast<std::size_t>(std::clamp(number(i), 1LL, 1LL << 20));
    } else if (arg == "--busy-poll") {
      s.busy_poll = true;
    } else if (arg == "--hold") {
      s.hold = true;
    } else if (arg == "--json") {
      s.json = true;
    } else {
      usage(("unknown option: " + arg).c_str());
    }
  }
  if (!have_target) usage("--target is required");
  return s;
}

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fixed_client: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

// Sends all of `data`; a full socket (rare: one small message in flight) waits with poll().
void send_all(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    ssize_t n = send(fd, data, size, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno != EAGAIN) fail("send");
      pollfd p{fd, POLLOUT, 0};
      poll(&p, 1, -1);
      continue;
    }
    data += n;
    size -= static_cast<std::size_t>(n);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Settings settings = parse(argc, argv);
  bench::raise_fd_limit();
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  if (settings.hold) sigprocmask(SIG_BLOCK, &stop_signals, nullptr);

  // Blocking connects, one after another: set-up is not measured, and a full accept backlog
  // then only slows the connect down instead of failing it.
  const int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  std::vector<Client> clients(static_cast<std::size_t>(settings.connections));
  for (std::size_t i = 0; i < clients.size(); ++i) {
    Client& c = clients[i];
    c.fd = socket(settings.target.address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c.fd < 0) fail("socket");
    if (connect(c.fd, reinterpret_cast<const sockaddr*>(&settings.target.address),
                settings.target.address_length) < 0) {
      fail("connect");
    }
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(c.fd, F_SETFL, fcntl(c.fd, F_GETFL) | O_NONBLOCK);
    const auto index = static_cast<std::int64_t>(i);
    c.left = settings.messages / settings.connections +
             (index < settings.messages % settings.connections ? 1 : 0);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = i;
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, c.fd, &ev) < 0) fail("epoll_ctl");
  }

  const std::vector<char> message(settings.size, 'x');
  std::vector<char> scratch(std::max<std::size_t>(settings.size, 64 * 1024));
  std::vector<float> latencies_us;
  latencies_us.reserve(static_cast<std::size_t>(settings.messages));
  std::size_t in_flight = 0;

  const auto start = Clock::now();
  for (Client& c : clients) {
    if (c.left == 0) continue;
    c.sent_at = Clock::now();
    send_all(c.fd, message.data(), message.size());
    --c.left;
    ++in_flight;
  }
  std::vector<epoll_event> events(std::min<std::size_t>(clients.size(), 1024));
  const int timeout = settings.busy_poll ? 0 : -1;
  while (in_flight > 0) {
    int n = epoll_wait(epoll_fd, events.data(), static_cast<int>(events.size()), timeout);
    if (n < 0 && errno != EINTR) fail("epoll_wait");
    for (int k = 0; k < n; ++k) {
      Client& c = clients[events[static_cast<std::size_t>(k)].data.u64];
      ssize_t got = recv(c.fd, scratch.data(), scratch.size(), 0);
      if (got <= 0) {
        if (got < 0 && errno == EAGAIN) continue;
        std::fprintf(stderr, "fixed_client: the server closed a connection early\n");
        return 1;
      }
      c.received += static_cast<std::size_t>(got);
      if (c.received < settings.size) continue;
      if (c.received > settings.size) {
        std::fprintf(stderr, "fixed_client: more bytes came back than were sent\n");
        return 1;
      }
      const auto now = Clock::now();
      latencies_us.push_back(std::chrono::duration<float, std::micro>(now - c.sent_at).count());
      c.received = 0;
      if (c.left == 0) {
        --in_flight;
        continue;
      }
      c.sent_at = now;
      send_all(c.fd, message.data(), message.size());
      --c.left;
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();

  std::sort(latencies_us.begin(), latencies_us.end());
  auto percentile = [&](double p) -> double {
    if (latencies_us.empty()) return 0;
    return latencies_us[static_cast<std::size_t>(p * static_cast<double>(latencies_us.size() - 1))];
  };
  const auto done = static_cast<long long>(latencies_us.size());
  const double rate = seconds > 0 ? static_cast<double>(done) / seconds : 0;
  if (settings.json) {
    std::printf(
        "{\"mode\": \"fixed\", \"connections\": %d, \"size\": %zu, \"messages\": %lld, "
        "\"duration_s\": %.6f, \"msgs_per_s\": %.1f, \"latency_us\": {\"p50\": %.2f, "
        "\"p99\": %.2f, \"p999\": %.2f}}\n",
        settings.connections, settings.size, done, seconds, rate, percentile(0.5), percentile(0.99),
        percentile(0.999));
  } else {
    std::printf("messages %lld in %.3f s: %.0f msgs/s, p50 %.1f us, p99 %.1f us, p99.9 %.1f us\n",
                done, seconds, rate, percentile(0.5), percentile(0.99), percentile(0.999));
  }
  std::fflush(stdout);

  if (settings.hold) {
    std::printf("holding %d connections\n", settings.connections);
    std::fflush(stdout);
    int signo = 0;
    sigwait(&stop_signals, &signo);
  }
  for (Client& c : clients)
    close(c.fd);
  return 0;
}
