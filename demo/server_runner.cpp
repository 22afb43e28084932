#include "server_runner.hpp"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <variant>

#include <reactor/address.hpp>
#include <reactor/histogram.hpp>
#include <reactor/listener.hpp>
#include <reactor/loop_thread.hpp>
#include <reactor/socket.hpp>
#include <reactor/tcp_server.hpp>

#include "cli.hpp"

namespace demo {

namespace {

using namespace std::chrono_literals;

// How long a stopping server waits for its connections to close gracefully before aborting them.
constexpr reactor::Duration kStopGrace = 2s;

struct Settings {
  std::vector<std::string> listen;
  int threads = 1;
  bool reuse_port = false;
  bool pin = false;
  std::int64_t busy_poll_us = 0;
  std::int64_t max_connections = 0;
  double idle_timeout_s = 0;
  double stats_s = 0;
  std::int64_t stall_us = 10'000;
};

reactor::Duration from_seconds(double seconds) {
  return std::chrono::duration_cast<reactor::Duration>(std::chrono::duration<double>(seconds));
}

// "address already in use: 127.0.0.1:7777": the error as a user-fixable sentence, then the address.
std::string describe(std::error_code ec, const std::string& where) {
  std::string what = ec.message();
  if (!what.empty()) what[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(what[0])));
  return what + ": " + where;
}
std::string describe(std::error_code ec, const reactor::Address& address) {
  return describe(ec, address.to_string());
}

// One --listen value, parsed in this one place: an address to bind, a listening socket inherited
// as fd N, or the sockets passed by systemd socket activation.
struct ListenSpec {
  enum class Kind { address, fd, systemd, udp };
  Kind kind = Kind::address;
  reactor::Address address;  // Kind::address, Kind::udp
  int fd = -1;               // Kind::fd
};

// The value's grammar: `fd:N`, `systemd`, `udp:ADDR` (a datagram socket; ADDR an IP address and
// port, or a Unix path as unix:PATH), or an address (reactor::Address::parse). Returns the usage
// error's text when it is malformed.
std::variant<ListenSpec, std::string> parse_listen(const std::string& text) {
  ListenSpec spec;
  if (text == "systemd") {
    spec.kind = ListenSpec::Kind::systemd;
    return spec;
  }
  if (text.rfind("fd:", 0) == 0) {
    const std::string number = text.substr(3);
    char* end = nullptr;
    errno = 0;
    const long fd = number.empty() ? -1 : std::strtol(number.c_str(), &end, 10);
    if (number.empty() || *end != '\0' || errno != 0 || fd < 0 || fd > 1'000'000 ||
        !std::isdigit(static_cast<unsigned char>(number[0]))) {
      return "malformed inherited fd: " + text + " (want fd:N, N a descriptor number)";
    }
    spec.kind = ListenSpec::Kind::fd;
    spec.fd = static_cast<int>(fd);
    return spec;
  }
  const bool udp = text.rfind("udp:", 0) == 0;
  auto address = reactor::Address::parse(udp ? text.substr(4) : text);
  if (!address) return "malformed address: " + text + " (" + address.error().message() + ")";
  spec.kind = udp ? ListenSpec::Kind::udp : ListenSpec::Kind::address;
  spec.address = *address;
  return spec;
}

// What one server listens on: an address to bind (a stream or, `datagram`, a datagram socket),
// or a socket already listening.
struct Listen {
  reactor::Address address;
  std::optional<reactor::ListenSocket> socket;
  bool datagram = false;
};

// sd_listen_fds(3) by hand: LISTEN_PID must name this process, LISTEN_FDS counts the sockets
// from fd 3 on, LISTEN_FDNAMES (optional) names them, colon-separated. The three variables are
// unset after reading, so that a child of the server does not take the sockets for its own.
// Returns the fds, or the error's text (nothing was passed, or it was meant for another
// process).
std::variant<std::vector<std::pair<int, std::string>>, std::string> systemd_fds() {
  const char* pid_text = std::getenv("LISTEN_PID");
  const char* fds_text = std::getenv("LISTEN_FDS");
  const char* names_text = std::getenv("LISTEN_FDNAMES");
  const std::string pid_value = pid_text ? pid_text : "";
  const std::string fds_value = fds_text ? fds_text : "";
  const std::string names = names_text ? names_text : "";
  ::unsetenv("LISTEN_PID");
  ::unsetenv("LISTEN_FDS");
  ::unsetenv("LISTEN_FDNAMES");
  if (!pid_text || !fds_text) {
    return std::string(
        "--listen systemd: no sockets passed (LISTEN_PID and LISTEN_FDS are not "
        "set; run under systemd socket activation or systemd-socket-activate)");
  }
  const std::string self = std::to_string(::getpid());
  if (pid_value != self) {
    return "--listen systemd: the sockets are for process " + pid_value + ", not this one (" +
           self + ")";
  }
  char* end = nullptr;
  errno = 0;
  const long count = std::strtol(fds_value.c_str(), &end, 10);
  if (fds_value.empty() || *end != '\0' || errno != 0 || count <= 0 || count > 65'536) {
    return "--listen systemd: LISTEN_FDS is not a positive count: " + fds_value;
  }
  std::vector<std::string> fd_names;  // LISTEN_FDNAMES, split at ':'
  for (std::size_t from = 0; !names.empty() && from <= names.size();) {
    const auto colon = std::min(names.find(':', from), names.size());
    fd_names.push_back(names.substr(from, colon - from));
    from = colon + 1;
  }
  std::vector<std::pair<int, std::string>> fds;
  for (long i = 0; i < count; ++i) {
    const auto index = static_cast<std::size_t>(i);
    const std::string name = index < fd_names.size() ? fd_names[index] : "";
    fds.emplace_back(3 + static_cast<int>(i), name);
  }
  return fds;
}

// The CPUs this process may run on (sched_getaffinity), in increasing order.
std::vector<int> allowed_cpus(std::error_code& ec) {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (::sched_getaffinity(0, sizeof set, &set) != 0) {
    ec = std::error_code(errno, std::generic_category());
    return cpus;
  }
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  return cpus;
}

class Runner {
 public:
  Runner(const ServerSpec& spec, const Settings& settings, std::vector<Listen> listens)
      : spec_(spec), settings_(settings), listens_(std::move(listens)) {}

  int run();

 private:
  // Runs `fn` on loop `index`'s thread and waits for it.
  template <class Fn>
  void on_loop(std::size_t index, Fn&& fn);
  LoopHandlers& protocol(const reactor::Connection& c) { return *protocols_[c.id().shard]; }
  void shutdown();
  void print_stats();

  struct Totals {
    reactor::ServerStats server;
    std::uint64_t messages = 0;
  };
  Totals totals();
  std::error_code open_datagram_sockets(const reactor::Address& address, std::string& listening_on);
  void close_datagram_sockets();
  // The loops' instruments (--stats): each loop's busy and idle time, stalls, timer delays.
  struct LoopTimes {
    std::vector<reactor::Duration> busy, idle;
    std::uint64_t stalls = 0;
    reactor::Histogram timer_delay;
  };
  LoopTimes loop_times();

  const ServerSpec& spec_;
  Settings settings_;
  std::vector<Listen> listens_;

  std::optional<reactor::EventLoop> home_;
  std::vector<std::unique_ptr<reactor::LoopThread>> threads_;
  std::vector<reactor::EventLoop*> loops_;
  std::unique_ptr<MessageCounter[]> messages_;
  std::vector<std::unique_ptr<LoopHandlers>> protocols_;
  std::vector<std::unique_ptr<reactor::TcpServer>> servers_;
  // --listen udp:ADDR: per loop, one socket per datagram address; created, used and destroyed
  // on that loop's thread.
  std::vector<std::vector<std::unique_ptr<reactor::DatagramSocket>>> datagram_sockets_;

  bool stopping_ = false;
  bool failed_ = false;  // a server did not start: no final counters
  std::size_t servers_stopping_ = 0;
  reactor::TimerId stats_timer_;
  Totals last_totals_;
  std::vector<reactor::Duration> last_busy_, last_idle_;
  reactor::TimePoint last_stats_time_{};
};

template <class Fn>
void Runner::on_loop(std::size_t index, Fn&& fn) {
  if (index == 0) {
    fn();
    return;
  }
  std::promise<void> done;
  loops_[index]->post([&fn, &done] {
    fn();
    done.set_value();
  });
  done.get_future().wait();
}

int Runner::run() {
  reactor::EventLoop::Options loop_options;
  loop_options.busy_poll = std::chrono::microseconds(settings_.busy_poll_us);
  if (settings_.stats_s > 0) {
    loop_options.measure_time = true;
    loop_options.stall_threshold = std::chrono::microseconds(settings_.stall_us);
    loop_options.on_stall = [](const reactor::EventLoop::Stall& stall) {
      static constexpr const char* kWork[] = {"io", "timer", "deferred", "posted", "hook"};
      std::string what = kWork[static_cast<int>(stall.work)];
      if (stall.work == reactor::EventLoop::Work::io) what += " fd=" + std::to_string(stall.fd);
      std::fprintf(stderr, "stall: %s ran %.3f ms\n", what.c_str(),
                   std::chrono::duration<double, std::milli>(stall.duration).count());
    };
  }
  const auto count = static_cast<std::size_t>(settings_.threads);
  // --pin: loop i on the i-th allowed CPU, wrapping around when there are more loops than CPUs.
  // The set is read before the home thread pins itself, which would narrow it to one CPU.
  std::vector<int> cpus;
  if (settings_.pin) {
    std::error_code ec;
    cpus = allowed_cpus(ec);
    if (cpus.empty()) {
      std::fprintf(stderr, "cannot read the allowed CPUs: %s\n",
                   (ec ? ec : std::make_error_code(std::errc::invalid_argument)).message().c_str());
      return kExitRuntime;
    }
    // The home loop runs on this thread: pinned directly, before its loop is built.
    cpu_set_t home;
    CPU_ZERO(&home);
    CPU_SET(static_cast<unsigned>(cpus[0]), &home);
    if (int rc = ::pthread_setaffinity_np(::pthread_self(), sizeof home, &home)) {
      std::fprintf(stderr, "cannot pin the home loop to CPU %d: %s\n", cpus[0],
                   std::generic_category().message(rc).c_str());
      return kExitRuntime;
    }
  }
  home_.emplace(loop_options);
  loops_.push_back(&*home_);
  for (int signo : {SIGINT, SIGTERM}) {
    if (auto ec = home_->on_signal(signo, [this](int) { shutdown(); })) {
      std::fprintf(stderr, "cannot handle signal %d: %s\n", signo, ec.message().c_str());
      return kExitRuntime;
    }
  }
  for (std::size_t i = 1; i < count; ++i) {
    reactor::LoopThread::Options thread_options{loop_options, "loop-" + std::to_string(i), {}};
    if (!cpus.empty()) thread_options.cpus = {cpus[i % cpus.size()]};
    try {
      threads_.push_back(std::make_unique<reactor::LoopThread>(thread_options));
    } catch (const std::system_error& e) {  // the loop, its name or its pin failed
      std::fprintf(stderr, "%s\n", e.what());
      return kExitRuntime;
    }
    loops_.push_back(&threads_.back()->loop());
  }
  messages_ = std::make_unique<MessageCounter[]>(count);
  protocols_.resize(count);
  for (std::size_t i = 0; i < count; ++i) {
    on_loop(i, [this, i] {
      LoopContext context{*loops_[i], i, loops_, messages_[i]};
      protocols_[i] = spec_.make_loop(context);
    });
  }
  // Each loop's connections get that loop's protocol handlers: no forwarding, no locks.
  std::vector<reactor::TcpServer::LoopAndHandlers> served;
  for (std::size_t i = 0; i < loops_.size(); ++i) {
    served.push_back({loops_[i], &protocols_[i]->connection});
  }

  reactor::ServerOptions server_options;
  server_options.listen.reuse_port = settings_.reuse_port;
  server_options.max_connections = static_cast<std::size_t>(settings_.max_connections);
  server_options.connection.idle_timeout = from_seconds(settings_.idle_timeout_s);
  int rc = kExitOk;
  datagram_sockets_.resize(count);
  std::vector<std::string> listening;  // in --listen order
  for (Listen& listen : listens_) {
    const reactor::Address address = listen.address;
    if (listen.datagram) {
      std::string bound;
      if (auto ec = open_datagram_sockets(address, bound)) {
        std::fprintf(stderr, "%s\n", describe(ec, "udp:" + address.to_string()).c_str());
        rc = kExitRuntime;
        failed_ = true;
        break;
      }
      listening.push_back("udp:" + bound);
      continue;
    }
    auto server = listen.socket
                      ? std::make_unique<reactor::TcpServer>(served, std::move(*listen.socket),
                                                             server_options)
                      : std::make_unique<reactor::TcpServer>(served, address, server_options);
    server->set_open_handler([this](reactor::Connection& c) {
      auto& p = protocol(c);
      if (p.on_open) p.on_open(c);
    });
    if (auto ec = server->start()) {
      std::fprintf(stderr, "%s\n", describe(ec, address).c_str());
      rc = kExitRuntime;
      failed_ = true;
      break;
    }
    listening.push_back(server->address().to_string());
    servers_.push_back(std::move(server));
  }

  if (rc == kExitOk) {
    for (const std::string& address : listening) {
      std::printf("listening on %s\n", address.c_str());
    }
    std::fflush(stdout);
    if (settings_.stats_s > 0) {
      last_stats_time_ = home_->clock_now();
      const LoopTimes times = loop_times();
      last_busy_ = times.busy;
      last_idle_ = times.idle;
      stats_timer_ = home_->every(from_seconds(settings_.stats_s), [this] { print_stats(); });
    }
  } else {
    shutdown();  // closes whatever did start
  }
  home_->run();

  // Teardown, in dependency order: the servers (stopped; on the home loop), each loop's
  // protocol on its own thread, then the loop threads.
  servers_.clear();
  close_datagram_sockets();
  for (std::size_t i = count; i-- > 0;)
    on_loop(i, [this, i] { protocols_[i].reset(); });
  threads_.clear();
  return rc;
}

void Runner::shutdown() {
  if (stopping_) return;
  stopping_ = true;
  if (stats_timer_) home_->cancel(stats_timer_);
  servers_stopping_ = servers_.size();
  auto finish = [this] {
    if (failed_) {
      home_->stop();
      return;
    }
    const Totals t = totals();
    std::printf(
        "final: accepted=%llu refused=%llu messages=%llu bytes_in=%llu bytes_out=%llu "
        "fd_exhaustion=%llu\n",
        static_cast<unsigned long long>(t.server.accepted),
        static_cast<unsigned long long>(t.server.refused),
        static_cast<unsigned long long>(t.messages),
        static_cast<unsigned long long>(t.server.bytes_in),
        static_cast<unsigned long long>(t.server.bytes_out),
        static_cast<unsigned long long>(t.server.fd_exhaustion));
    // With several loops, what each served: shows the work was spread (tests check it).
    if (loops_.size() > 1) {
      std::string per_loop = "messages_per_loop=";
      for (std::size_t i = 0; i < loops_.size(); ++i)
        per_loop += (i ? "," : "") + std::to_string(messages_[i].load());
      std::printf("%s\n", per_loop.c_str());
    }
    std::fflush(stdout);
    home_->stop();
  };
  if (servers_.empty()) {  // datagram sockets only (or nothing started): nothing to drain
    finish();
    return;
  }
  for (auto& server : servers_) {
    server->stop(kStopGrace, [this, finish] {
      if (--servers_stopping_ == 0) finish();
    });
  }
}

// Every loop binds its own socket to `address` (SO_REUSEPORT when there are several loops), on
// its own thread; with port 0 the first one's port is the others'. A Unix path: the home loop
// only. `listening_on`: the bound address.
std::error_code Runner::open_datagram_sockets(const reactor::Address& address,
                                              std::string& listening_on) {
  reactor::Address bind_to = address;
  // A Unix path binds once (SO_REUSEPORT does not share one): its socket is the home loop's.
  const std::size_t sockets = address.is_unix() ? 1 : loops_.size();
  for (std::size_t i = 0; i < sockets; ++i) {
    std::error_code ec;
    on_loop(i, [&, i] {
      reactor::DatagramOptions options;
      options.reuse_port = sockets > 1;
      auto socket =
          std::make_unique<reactor::DatagramSocket>(*loops_[i], protocols_[i]->datagram, options);
      ec = socket->bind(bind_to);
      if (ec) return;
      if (i == 0) {
        auto bound = socket->local_address();
        if (bound.ok()) bind_to = *bound;
      }
      datagram_sockets_[i].push_back(std::move(socket));
    });
    if (ec) return ec;
  }
  listening_on = bind_to.to_string();
  return {};
}

void Runner::close_datagram_sockets() {
  for (std::size_t i = 0; i < datagram_sockets_.size(); ++i)
    on_loop(i, [this, i] { datagram_sockets_[i].clear(); });
}

Runner::Totals Runner::totals() {
  Totals t;
  for (std::size_t i = 0; i < datagram_sockets_.size(); ++i) {
    if (datagram_sockets_[i].empty()) continue;
    on_loop(i, [&t, this, i] {
      for (const auto& socket : datagram_sockets_[i]) {
        t.server.bytes_in += socket->stats().received_bytes;
        t.server.bytes_out += socket->stats().sent_bytes;
      }
    });
  }
  for (const auto& server : servers_) {
    const reactor::ServerStats s = server->stats();
    t.server.accepted += s.accepted;
    t.server.active += s.active;
    t.server.refused += s.refused;
    t.server.fd_exhaustion += s.fd_exhaustion;
    t.server.bytes_in += s.bytes_in;
    t.server.bytes_out += s.bytes_out;
  }
  for (std::size_t i = 0; i < loops_.size(); ++i)
    t.messages += messages_[i].load();
  return t;
}

Runner::LoopTimes Runner::loop_times() {
  LoopTimes times;
  times.busy.resize(loops_.size());
  times.idle.resize(loops_.size());
  for (std::size_t i = 0; i < loops_.size(); ++i) {
    on_loop(i, [&times, this, i] {
      const reactor::EventLoop& loop = *loops_[i];
      times.busy[i] = loop.stats().busy_time;
      times.idle[i] = loop.stats().idle_time;
      times.stalls += loop.stats().stalls;
      times.timer_delay.merge(loop.timer_delay());
    });
  }
  return times;
}

void Runner::print_stats() {
  const reactor::TimePoint now = home_->clock_now();
  const double elapsed = std::chrono::duration<double>(now - last_stats_time_).count();
  const Totals t = totals();
  const LoopTimes times = loop_times();
  double busiest = 0;  // percent of the interval
  for (std::size_t i = 0; i < loops_.size(); ++i) {
    const auto busy = times.busy[i] - last_busy_[i];
    const auto total = busy + (times.idle[i] - last_idle_[i]);
    if (total > reactor::Duration::zero())
      busiest = std::max(
          busiest, 100.0 * static_cast<double>(busy.count()) / static_cast<double>(total.count()));
  }
  auto rate = [elapsed](std::uint64_t now_value, std::uint64_t before) {
    return elapsed > 0
               ? static_cast<unsigned long long>(static_cast<double>(now_value - before) / elapsed)
               : 0ULL;
  };
  std::printf(
      "stats: active=%llu accepted=%llu msgs/s=%llu bytes_in/s=%llu bytes_out/s=%llu "
      "fd_exhaustion=%llu busy=%.1f%% stalls=%llu loop_delay_p99_us=%.1f\n",
      static_cast<unsigned long long>(t.server.active),
      static_cast<unsigned long long>(t.server.accepted), rate(t.messages, last_totals_.messages),
      rate(t.server.bytes_in, last_totals_.server.bytes_in),
      rate(t.server.bytes_out, last_totals_.server.bytes_out),
      static_cast<unsigned long long>(t.server.fd_exhaustion), busiest,
      static_cast<unsigned long long>(times.stalls),
      static_cast<double>(times.timer_delay.value_at_percentile(99)) / 1000.0);
  std::fflush(stdout);
  last_totals_ = t;
  last_busy_ = times.busy;
  last_idle_ = times.idle;
  last_stats_time_ = now;
}

}  // namespace

int run_server(int argc, char** argv, const ServerSpec& spec) {
  // Before any thread exists: a signal reaches the loop's signalfd only if every thread blocks it.
  if (auto ec = reactor::block_signals({SIGINT, SIGTERM})) {
    std::fprintf(stderr, "cannot block signals: %s\n", ec.message().c_str());
    return kExitRuntime;
  }
  std::signal(SIGPIPE, SIG_IGN);  // stdout may be a pipe whose reader went away
  if (auto ec = reactor::raise_fd_limit()) {
    std::fprintf(stderr, "warning: cannot raise the fd limit: %s\n", ec.message().c_str());
  }

  CLI::App app{spec.description, spec.name};
  Settings settings;
  app.add_option("--listen", settings.listen,
                 "Address to serve (repeatable): 127.0.0.1:PORT, [::1]:PORT, unix:/path, "
                 "unix:@abstract; port 0 picks a free one. Or a listening socket inherited from "
                 "the parent: fd:N (descriptor N), systemd (socket activation: LISTEN_PID, "
                 "LISTEN_FDS). Default " +
                     spec.default_listen)
      ->type_name("ADDR")
      ->allow_extra_args(false);
  add_number(app, "--threads", settings.threads, 1, 1024,
             "Loops, one per thread, each serving every address");
  app.add_flag("--reuseport", settings.reuse_port,
               "One SO_REUSEPORT listening socket per loop instead of one shared socket "
               "(TCP only)");
  app.add_flag("--pin", settings.pin,
               "Pin loop i to the i-th CPU the process may run on (sched_getaffinity), the home "
               "loop (the main thread) to the first; with more loops than CPUs, wrap around "
               "(loop i on the (i mod count)-th)");
  add_number<std::int64_t>(app, "--busy-poll", settings.busy_poll_us, 0, 10'000'000,
                           "Spin on epoll for up to USEC microseconds before sleeping (0: off)",
                           "USEC");
  add_number<std::int64_t>(app, "--max-conns", settings.max_connections, 0, 100'000'000,
                           "Open connections allowed per address; more are accepted and closed "
                           "(0: no cap)");
  add_number(app, "--idle-timeout", settings.idle_timeout_s, 0.0, 1e7,
             "Close a connection idle for SEC seconds (0: never)", "SEC");
  add_number(app, "--stats", settings.stats_s, 0.0, 1e7,
             "Print a line of counters on stdout every SEC seconds (0: never)", "SEC");
  add_number<std::int64_t>(app, "--stall-us", settings.stall_us, 0, 100'000'000,
                           "With --stats: report on stderr each callback that runs longer than "
                           "USEC microseconds, and count them (0: off)",
                           "USEC");
  if (spec.add_options) spec.add_options(app);
  if (auto rc = parse_command_line(app, argc, argv)) return *rc;

  if (settings.listen.empty()) settings.listen.push_back(spec.default_listen);
  std::vector<ListenSpec> specs;
  for (const std::string& text : settings.listen) {
    auto parsed = parse_listen(text);
    if (auto* error = std::get_if<std::string>(&parsed)) return usage_error(app, *error);
    const ListenSpec& spec_of = std::get<ListenSpec>(parsed);
    if (spec_of.kind == ListenSpec::Kind::udp && !spec.datagrams) {
      return usage_error(app, spec.name + " serves streams only: " + text);
    }
    if ((spec_of.kind == ListenSpec::Kind::fd || spec_of.kind == ListenSpec::Kind::systemd) &&
        settings.reuse_port) {
      return usage_error(app, "--reuseport cannot apply to an inherited socket (" + text +
                                  "): it is one socket, bound by another process");
    }
    specs.push_back(spec_of);
  }
  // Inherited sockets are checked and adopted now, before any thread exists (the systemd
  // variables are unset here, and unsetenv is not thread-safe).
  std::vector<Listen> listens;
  auto adopt = [&listens](int fd, const std::string& what) {
    auto socket = reactor::ListenSocket::adopt(reactor::Fd(fd));
    if (!socket) {
      std::fprintf(stderr, "%s\n", describe(socket.error(), what).c_str());
      return false;
    }
    const reactor::Address address = socket->address();
    listens.push_back({address, std::move(*socket)});
    return true;
  };
  for (const ListenSpec& listen : specs) {
    switch (listen.kind) {
      case ListenSpec::Kind::address:
        listens.push_back({listen.address, std::nullopt});
        break;
      case ListenSpec::Kind::udp:
        listens.push_back({listen.address, std::nullopt, true});
        break;
      case ListenSpec::Kind::fd:
        if (!adopt(listen.fd, "inherited fd " + std::to_string(listen.fd))) return kExitRuntime;
        break;
      case ListenSpec::Kind::systemd: {
        auto fds = systemd_fds();
        if (auto* error = std::get_if<std::string>(&fds)) {
          std::fprintf(stderr, "%s\n", error->c_str());
          return kExitRuntime;
        }
        for (const auto& [fd, name] : std::get<0>(fds)) {
          std::string what = "systemd socket fd " + std::to_string(fd);
          if (!name.empty()) what += " (" + name + ")";
          if (!adopt(fd, what)) return kExitRuntime;
        }
        break;
      }
    }
  }

  Runner runner(spec, settings, std::move(listens));
  return runner.run();
}

}  // namespace demo
