// TCP benchmarks on loopback, in one process: the reactor's TcpServer echoing on a LoopThread
// pinned to CPU 0, driven by the cheapest client we can write (raw non-blocking sockets and a
// raw epoll loop) on the benchmark thread pinned to CPU 1, so that what is measured is the
// server. Build in release (--buildtype=release -Db_ndebug=true) for meaningful numbers.
//
//   BM_Accept/connectors:C            connect -> 1 byte echoed -> close with RST, C at once
//   BM_EchoPingPong/size:S            one connection, one message in flight; latency counters
//   BM_EchoThroughput/conns/size/depth   every connection keeps `depth` messages in flight
//
// One iteration is one accepted connection or one echoed message: items_per_second is
// connections/s or messages/s, bytes_per_second counts echoed payload (one direction).
// The server is shared by every benchmark; each waits for the server to have closed the
// previous one's connections before it starts.
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
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
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>

#include <reactor/address.hpp>
#include <reactor/buffer.hpp>
#include <reactor/connection.hpp>
#include <reactor/loop_thread.hpp>
#include <reactor/socket.hpp>
#include <reactor/tcp_server.hpp>

namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

constexpr int kServerCpu = 0;
constexpr int kClientCpu = 1;

void pin_current_thread(int cpu) {
  if (std::thread::hardware_concurrency() < 2) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "bench_tcp: %s: %s\n", what, std::strerror(errno));
  std::abort();
}

// ---- The server: an echo TcpServer on its own loop thread. ----

class EchoServer {
 public:
  EchoServer() {
    std::promise<reactor::Address> bound;
    thread_.loop().post([this, &bound] {
      pin_current_thread(kServerCpu);
      handlers_.on_data = [](reactor::Connection& conn, reactor::Buffer& input) {
        conn.send(input.view());
        input.consume(input.size());
      };
      server_ = std::make_unique<reactor::TcpServer>(thread_.loop(),
                                                     reactor::Address::ipv4_loopback(0), handlers_);
      if (auto ec = server_->start()) {
        std::fprintf(stderr, "bench_tcp: cannot listen: %s\n", ec.message().c_str());
        std::abort();
      }
      bound.set_value(server_->address());
    });
    address_ = bound.get_future().get();
  }

  ~EchoServer() {
    std::promise<void> done;
    thread_.loop().post([this, &done] {
      server_.reset();
      done.set_value();
    });
    done.get_future().wait();
    thread_.join();
  }

  const reactor::Address& address() const noexcept { return address_; }

  // Waits (bounded) until the server has closed every connection of the previous benchmark.
  void wait_idle() const {
    const auto deadline = SteadyClock::now() + 10s;
    while (server_->stats().active != 0 && SteadyClock::now() < deadline)
      std::this_thread::sleep_for(1ms);
  }

 private:
  reactor::LoopThread thread_;
  reactor::ConnectionHandlers handlers_;
  std::unique_ptr<reactor::TcpServer> server_;
  reactor::Address address_;
};

EchoServer* server = nullptr;  // made in main(), shared by every benchmark

void close_with_reset(int fd) {
  linger l{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  close(fd);
}

// ---- The echo client: raw sockets and epoll, as little work per message as possible. ----

class EchoClients {
 public:
  // Connects `count` sockets (blocking connect, then non-blocking) with TCP_NODELAY.
  EchoClients(const reactor::Address& target, int count, std::size_t size, int depth)
      : size_(size), depth_(depth), epoll_fd_(epoll_create1(EPOLL_CLOEXEC)) {
    conns_.resize(static_cast<std::size_t>(count));
    for (std::size_t i = 0; i < conns_.size(); ++i) {
      int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) die("socket");
      if (connect(fd, target.sockaddr_ptr(), target.length()) < 0) die("connect");
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
      conns_[i].fd = fd;
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = i;
      if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    }
    events_.resize(std::min<std::size_t>(conns_.size(), 512));
    payload_.assign(std::max<std::size_t>(size, 1) * static_cast<std::size_t>(depth), 'x');
    scratch_.resize(std::max<std::size_t>(payload_.size(), 256 * 1024));
  }

  ~EchoClients() {
    for (Conn& c : conns_)
      close_with_reset(c.fd);
    close(epoll_fd_);
  }
  EchoClients(const EchoClients&) = delete;
  EchoClients& operator=(const EchoClients&) = delete;

  // Puts `depth` messages in flight on every connection.
  void start() {
    for (std::size_t i = 0; i < conns_.size(); ++i) {
      conns_[i].owed = size_ * static_cast<std::size_t>(depth_);
      flush(i);
    }
  }

  // One epoll_wait and what it reported. Every message that came back whole is replaced by a
  // new one at once, and counted in completed().
  void pump() {
    int n = epoll_wait(epoll_fd_, events_.data(), static_cast<int>(events_.size()), -1);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    for (int k = 0; k < n; ++k) {
      const epoll_event& ev = events_[static_cast<std::size_t>(k)];
      const auto i = static_cast<std::size_t>(ev.data.u64);
      Conn& c = conns_[i];
      if (ev.events & EPOLLIN) {
        ssize_t got = recv(c.fd, scratch_.data(), scratch_.size(), 0);
        if (got == 0 || (got < 0 && errno != EAGAIN)) die("the server closed a connection");
        if (got > 0) {
          c.received += static_cast<std::size_t>(got);
          const std::size_t whole = c.received / size_;
          c.received -= whole * size_;
          completed_ += whole;
          c.owed += whole * size_;
        }
      }
      if (c.owed > 0) flush(i);
    }
  }

  std::uint64_t& completed() noexcept { return completed_; }

 private:
  struct Conn {
    int fd = -1;
    std::size_t owed = 0;      // bytes still to send
    std::size_t received = 0;  // bytes of the oldest message in flight that came back
    bool want_out = false;     // EPOLLOUT armed
  };

  void flush(std::size_t i) {
    Conn& c = conns_[i];
    while (c.owed > 0) {
      ssize_t n = send(c.fd, payload_.data(), std::min(c.owed, payload_.size()), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno != EAGAIN) die("send");
        break;
      }
      c.owed -= static_cast<std::size_t>(n);
    }
    const bool want_out = c.owed > 0;
    if (want_out == c.want_out) return;
    c.want_out = want_out;
    epoll_event ev{};
    ev.events = EPOLLIN | (want_out ? EPOLLOUT : 0u);
    ev.data.u64 = i;
    epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c.fd, &ev);
  }

  std::size_t size_;
  int depth_;
  int epoll_fd_;
  std::vector<Conn> conns_;
  std::vector<epoll_event> events_;
  std::vector<char> payload_;
  std::vector<char> scratch_;
  std::uint64_t completed_ = 0;
};

// Sorted latencies (ns) -> the state's p50/p99/p99.9 counters, in microseconds.
void report_latency(benchmark::State& state, std::vector<std::int64_t>& latencies_ns) {
  if (latencies_ns.empty()) return;
  std::sort(latencies_ns.begin(), latencies_ns.end());
  auto at = [&](double p) {
    auto i = static_cast<std::size_t>(p * static_cast<double>(latencies_ns.size() - 1));
    return static_cast<double>(latencies_ns[i]) / 1000.0;
  };
  state.counters["p50_us"] = at(0.50);
  state.counters["p99_us"] = at(0.99);
  state.counters["p999_us"] = at(0.999);
}

// ---- Benchmarks. ----

void BM_EchoPingPong(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  server->wait_idle();
  EchoClients clients(server->address(), 1, size, 1);
  std::vector<std::int64_t> latencies_ns;
  latencies_ns.reserve(1 << 20);
  clients.start();
  auto last = SteadyClock::now();
  for (auto _ : state) {
    while (clients.completed() == 0)
      clients.pump();
    --clients.completed();
    // Depth 1: the next message left the moment the last one came back, so the time between
    // two completions is one round trip.
    const auto now = SteadyClock::now();
    latencies_ns.push_back((now - last).count());
    last = now;
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * size));
  report_latency(state, latencies_ns);
}
BENCHMARK(BM_EchoPingPong)
    ->ArgName("size")
    ->Arg(64)
    ->Arg(1024)
    ->Arg(16 * 1024)
    ->UseRealTime()
    ->MinTime(1.0);

void BM_EchoThroughput(benchmark::State& state) {
  const auto conns = static_cast<int>(state.range(0));
  const auto size = static_cast<std::size_t>(state.range(1));
  const auto depth = static_cast<int>(state.range(2));
  server->wait_idle();
  EchoClients clients(server->address(), conns, size, depth);
  clients.start();
  for (auto _ : state) {
    while (clients.completed() == 0)
      clients.pump();
    --clients.completed();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * size));
}
BENCHMARK(BM_EchoThroughput)
    ->ArgNames({"conns", "size", "depth"})
    ->ArgsProduct({{64, 1000}, {64, 16 * 1024}, {1, 16}})
    ->UseRealTime()
    ->MinTime(1.0);

// `connectors` clients at once, each looping connect -> send 1 byte -> receive it -> close with
// RST (no TIME_WAIT: a long run does not exhaust ephemeral ports). The echoed byte proves the
// server accepted and served the connection.
void BM_Accept(benchmark::State& state) {
  const auto connectors = static_cast<std::size_t>(state.range(0));
  server->wait_idle();
  const reactor::Address& target = server->address();
  const int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  std::vector<int> fds(connectors, -1);
  std::vector<epoll_event> events(connectors);
  std::uint64_t completed = 0;

  // Loopback completes the handshake inside connect(), so the byte can usually go at once;
  // otherwise wait for writability.
  auto open_one = [&](std::size_t i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    if (connect(fd, target.sockaddr_ptr(), target.length()) < 0 && errno != EINPROGRESS) {
      die("connect");
    }
    fds[i] = fd;
    const bool sent = send(fd, "x", 1, MSG_NOSIGNAL) == 1;
    if (!sent && errno != EAGAIN && errno != ENOTCONN) die("send");
    epoll_event ev{};
    ev.events = sent ? EPOLLIN : EPOLLOUT;
    ev.data.u64 = i;
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
  };
  auto on_event = [&](std::size_t i, std::uint32_t mask) {
    const int fd = fds[i];
    if (mask & EPOLLOUT) {
      if (send(fd, "x", 1, MSG_NOSIGNAL) != 1) die("send after connect");
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = i;
      epoll_ctl(epoll_fd, EPOLL_CTL_MOD, fd, &ev);
      return;
    }
    char byte;
    ssize_t got = recv(fd, &byte, 1, 0);
    if (got < 0 && errno == EAGAIN) return;
    if (got != 1) die("no echo from the accepted connection");
    close_with_reset(fd);
    ++completed;
    open_one(i);
  };

  for (std::size_t i = 0; i < connectors; ++i)
    open_one(i);
  for (auto _ : state) {
    while (completed == 0) {
      int n = epoll_wait(epoll_fd, events.data(), static_cast<int>(events.size()), -1);
      for (int k = 0; k < n; ++k)
        on_event(static_cast<std::size_t>(events[static_cast<std::size_t>(k)].data.u64),
                 events[static_cast<std::size_t>(k)].events);
    }
    --completed;
  }
  for (int fd : fds)
    close_with_reset(fd);
  close(epoll_fd);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}
BENCHMARK(BM_Accept)->ArgName("connectors")->Arg(1)->Arg(8)->UseRealTime()->MinTime(1.0);

}  // namespace

int main(int argc, char** argv) {
  if (auto ec = reactor::raise_fd_limit()) {
    std::fprintf(stderr, "warning: cannot raise the fd limit: %s\n", ec.message().c_str());
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  EchoServer echo_server;
  server = &echo_server;
  pin_current_thread(kClientCpu);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  server = nullptr;
  return 0;
}
