// reactor-load: a load generator for any TCP or Unix-socket echo server, built on the reactor.
//
//   reactor-load echo   --target ADDR [--connections N] [--size BYTES] [--depth D]
//                       [--duration SEC] [--threads T] [--json]
//   reactor-load accept --target ADDR [--connections C] [--duration SEC] [--threads T] [--json]
//
// echo: N connections each keep D messages of BYTES in flight and verify every echoed byte
// against what was sent (a position-dependent pattern, offset per connection, so lost,
// duplicated, reordered or crossed bytes all show). accept: C clients each loop
// connect -> send 1 byte -> receive it -> close with RST.
//
// Shape: T worker loops (reactor::LoopThread), clients spread round-robin over them, and a
// control loop on the main thread that owns the deadline, the progress line and the decision to
// end early (a refused connect, or every echo connection lost: the server went away). At the
// end each worker stops its clients on its own thread, the threads are joined, and the per-loop
// results (counters, error counts, latency histograms) are merged and reported.
//
// Exit: 0 when the run saw no error, 1 when it saw any (each kind counted and named on
// stderr), 2 for a usage error.
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <reactor/address.hpp>
#include <reactor/buffer.hpp>
#include <reactor/connection.hpp>
#include <reactor/connector.hpp>
#include <reactor/event_loop.hpp>
#include <reactor/loop_thread.hpp>
#include <reactor/socket.hpp>

#include "cli.hpp"
#include "histogram.hpp"

namespace {

using namespace std::chrono_literals;
using reactor::Clock;
using reactor::Duration;
using reactor::TimePoint;

enum class Mode { echo, accept };

struct Settings {
  Mode mode = Mode::echo;
  std::string target_text;
  reactor::Address target;
  int connections = 16;
  std::int64_t size = 64;
  int depth = 1;
  double duration_s = 5;
  int threads = 1;
  bool json = false;
};

constexpr Duration kConnectTimeout = 5s;
constexpr std::int64_t kMaxMessageSize = 16 << 20;

// ---- The byte pattern: byte k of a connection's stream is pattern[(k + seed) % kPeriod]. ----
// A prime period: a stream shifted by any amount that is not a multiple of it reads wrong.
constexpr std::size_t kPeriod = 251;
constexpr std::size_t kChunk = 64 * 1024;  // longest slice sent or verified at once

class Pattern {
 public:
  Pattern() : bytes_(kPeriod + kChunk) {
    for (std::size_t i = 0; i < bytes_.size(); ++i) {
      bytes_[i] = static_cast<char>(((i % kPeriod) * 97 + 13) % 256);
    }
  }
  // kChunk bytes of stream starting at `offset`.
  const char* at(std::uint64_t offset) const noexcept { return bytes_.data() + offset % kPeriod; }

 private:
  std::vector<char> bytes_;
};

// ---- Errors, counted by kind and named in the report. ----
enum class ErrorKind { refused, reset, closed, wrong_bytes, connect_timeout, other, count };
constexpr std::size_t kErrorKinds = static_cast<std::size_t>(ErrorKind::count);

const char* to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::refused:
      return "connection refused";
    case ErrorKind::reset:
      return "connection reset";
    case ErrorKind::closed:
      return "closed by server";
    case ErrorKind::wrong_bytes:
      return "wrong bytes";
    case ErrorKind::connect_timeout:
      return "connect not completed";
    case ErrorKind::other:
      return "socket error";
    case ErrorKind::count:
      break;
  }
  return "error";
}

ErrorKind kind_of(std::error_code ec) {
  if (ec == std::errc::connection_refused) return ErrorKind::refused;
  if (ec == std::errc::connection_reset || ec == std::errc::broken_pipe) return ErrorKind::reset;
  if (ec == std::errc::timed_out) return ErrorKind::connect_timeout;
  return ErrorKind::other;
}

ErrorKind kind_of(reactor::CloseReason reason, std::error_code ec) {
  switch (reason) {
    case reactor::CloseReason::reset:
      return ErrorKind::reset;
    case reactor::CloseReason::peer_closed:
      return ErrorKind::closed;
    default:
      return ec ? kind_of(ec) : ErrorKind::other;
  }
}

// "Connection refused" -> "connection refused", to sit inside a sentence.
std::string lowercase_first(std::string text) {
  if (!text.empty() && text[0] >= 'A' && text[0] <= 'Z')
    text[0] = static_cast<char>(text[0] - 'A' + 'a');
  return text;
}

// A counter written by one loop thread and read by the progress line.
class Counter {
 public:
  void add(std::uint64_t n) noexcept {
    value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  std::uint64_t load() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> value_{0};
};

class LoadRun;
class Client;

// One worker loop and its clients. Everything but the Counters is touched only on the loop's
// thread while the run lasts, and read by the main thread after the loop's thread was joined.
struct Worker {
  Worker(LoadRun& run, reactor::EventLoop& loop);

  void error(ErrorKind kind, const std::string& detail = {});
  void client_lost();  // an echo connection is gone for good
  void stop();         // the run is over: abort every connection, destroy the clients

  LoadRun& run;
  reactor::EventLoop& loop;
  reactor::ConnectionHandlers handlers;  // shared by the clients' connections: they dispatch
  std::vector<std::unique_ptr<Client>> clients;
  bool running = false;
  std::size_t alive = 0;  // echo clients connected or connecting (accept clients never leave)

  Counter messages;
  Counter bytes;
  Counter errors;
  std::array<std::uint64_t, kErrorKinds> error_counts{};
  std::array<std::string, kErrorKinds> first_detail;
  demo::Histogram latency;  // nanoseconds
};

// The main thread's side: settings, the control loop, the workers, the result.
class LoadRun {
 public:
  explicit LoadRun(const Settings& settings) : settings_(settings) {}
  int run();

  const Settings& settings() const noexcept { return settings_; }
  const Pattern& pattern() const noexcept { return pattern_; }
  reactor::EventLoop& control() noexcept { return *control_; }

  // Any worker thread: end the run now, and say why on stderr.
  void end_early(std::string why);
  // Any worker thread: one more worker has no echo connection left.
  void worker_emptied();

 private:
  void end_run();
  void worker_stopped();
  void progress();
  int report();

  Settings settings_;
  Pattern pattern_;
  std::optional<reactor::EventLoop> control_;
  std::vector<std::unique_ptr<reactor::LoopThread>> threads_;
  std::vector<std::unique_ptr<Worker>> workers_;
  TimePoint started_{};
  TimePoint ended_{};
  bool ending_ = false;
  std::size_t workers_running_ = 0;
  std::size_t workers_emptied_ = 0;
  std::size_t workers_with_clients_ = 0;  // --threads may exceed --connections
  std::string early_end_;                 // why the run ended before --duration
  reactor::TimerId deadline_;
  reactor::TimerId progress_timer_;
  std::uint64_t last_messages_ = 0;
  std::uint64_t last_bytes_ = 0;
};

// ---- Clients ----

class Client {
 public:
  Client(Worker& worker, std::uint64_t seed)
      : worker_(worker), connector_(worker.loop), seed_(seed) {}
  virtual ~Client() = default;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  virtual void start() = 0;
  virtual void on_data(reactor::Buffer& input) = 0;
  virtual void on_close(reactor::CloseReason reason, std::error_code ec) = 0;
  // The run is over: abort at once (RST, no TIME_WAIT), no error counted for it.
  virtual void stop() {
    connector_.cancel();
    if (conn_) conn_->abort();  // on_close sees !running and only drops the handle
    conn_.reset();
  }

 protected:
  const Settings& settings() const noexcept { return worker_.run.settings(); }
  const Pattern& pattern() const noexcept { return worker_.run.pattern(); }
  reactor::ConnectionOptions connection_options() const {
    reactor::ConnectionOptions options;
    // The client bounds its own output (depth x size); pausing its reading at a high-water
    // mark could deadlock against a server that pauses too.
    options.pause_reading_at_high_water = false;
    return options;
  }
  std::error_code connect() {
    return connector_.connect(
        settings().target, kConnectTimeout, worker_.handlers,
        [this](std::error_code ec, reactor::ConnectionHandle handle) {
          if (ec) {
            on_connect_failed(ec);
            return;
          }
          conn_ = std::move(handle);
          conn_->set_context(this);
          on_connected();
        },
        connection_options());
  }
  virtual void on_connected() = 0;
  virtual void on_connect_failed(std::error_code ec) = 0;

  // Counts a failed connect; a refused one ends the run: nobody listens there. Returns whether
  // trying again makes sense.
  bool connect_failed(std::error_code ec) {
    const std::string target = settings().target.to_string();
    worker_.error(kind_of(ec), "connecting to " + target + ": " + lowercase_first(ec.message()));
    if (ec == std::errc::connection_refused) {
      worker_.run.end_early("connection refused by " + target + ": is a server listening there?");
      return false;
    }
    return true;
  }

  // `got` (at stream offset `offset`) differs from the pattern: count it with where and how.
  void wrong_bytes(std::uint64_t offset, std::string_view got) {
    std::size_t i = 0;
    while (i + 1 < got.size() && got[i] == *pattern().at(offset + seed_ + i))
      ++i;
    char detail[160];
    std::snprintf(detail, sizeof detail, "stream offset %llu: expected 0x%02x, got 0x%02x",
                  static_cast<unsigned long long>(offset + i),
                  static_cast<unsigned char>(*pattern().at(offset + seed_ + i)),
                  static_cast<unsigned char>(got[i]));
    worker_.error(ErrorKind::wrong_bytes, detail);
  }

  Worker& worker_;
  reactor::Connector connector_;
  reactor::ConnectionHandle conn_;
  std::uint64_t seed_;  // this client's offset into the pattern
};

// echo: one connection, `depth` messages of `size` bytes in flight, every byte verified.
class EchoClient final : public Client {
 public:
  EchoClient(Worker& worker, std::uint64_t seed)
      : Client(worker, seed), send_times_(static_cast<std::size_t>(worker.run.settings().depth)) {}

  void start() override {
    if (auto ec = connect()) on_connect_failed(ec);
  }

  void stop() override {
    // A connect still pending when the run ends never got its chance: count it.
    if (connector_.pending())
      worker_.error(ErrorKind::connect_timeout, "still connecting at the end");
    Client::stop();
  }

  void on_data(reactor::Buffer& input) override {
    const std::string_view got = input.view();
    if (recv_offset_ + got.size() > send_offset_) {
      worker_.error(ErrorKind::wrong_bytes, "received more bytes than were sent");
      conn_->abort();  // on_close drops the connection
      return;
    }
    for (std::size_t pos = 0; pos < got.size(); pos += kChunk) {
      const std::size_t n = std::min(kChunk, got.size() - pos);
      if (std::memcmp(got.data() + pos, pattern().at(recv_offset_ + pos + seed_), n) != 0) {
        wrong_bytes(recv_offset_ + pos, got.substr(pos, n));
        conn_->abort();
        return;
      }
    }
    recv_offset_ += got.size();
    input.consume(got.size());
    if (!worker_.running) return;
    worker_.bytes.add(got.size());
    const auto size = static_cast<std::uint64_t>(settings().size);
    const TimePoint now = Clock::now();
    std::uint64_t done = 0;
    while (recv_offset_ >= (completed_ + 1) * size) {
      const TimePoint sent = send_times_[completed_ % send_times_.size()];
      worker_.latency.record(static_cast<std::uint64_t>((now - sent).count()));
      ++completed_;
      ++done;
      send_message();
    }
    worker_.messages.add(done);
  }

  void on_close(reactor::CloseReason reason, std::error_code ec) override {
    conn_.reset();  // safe inside its own callback: destroyed after the dispatch round
    if (!worker_.running) return;
    if (reason != reactor::CloseReason::aborted) {  // aborted: we did it, after counting why
      std::string detail = ec ? lowercase_first(ec.message()) : reactor::to_string(reason);
      worker_.error(kind_of(reason, ec), detail);
    }
    worker_.client_lost();
  }

 private:
  void on_connected() override {
    for (std::size_t i = 0; i < send_times_.size(); ++i)
      send_message();
  }

  void on_connect_failed(std::error_code ec) override {
    connect_failed(ec);
    worker_.client_lost();
  }

  void send_message() {
    send_times_[sent_ % send_times_.size()] = Clock::now();
    ++sent_;
    auto left = static_cast<std::uint64_t>(settings().size);
    while (left > 0) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, kChunk));
      if (!conn_->send(std::string_view(pattern().at(send_offset_ + seed_), n))) return;
      send_offset_ += n;
      left -= n;
    }
  }

  std::vector<TimePoint> send_times_;  // ring: message k was sent at send_times_[k % depth]
  std::uint64_t sent_ = 0;             // messages sent
  std::uint64_t completed_ = 0;        // messages fully echoed
  std::uint64_t send_offset_ = 0;      // stream bytes sent
  std::uint64_t recv_offset_ = 0;      // stream bytes received and verified
};

// accept: connect, send one byte, receive it, close with RST; again.
class AcceptClient final : public Client {
 public:
  using Client::Client;

  void start() override {
    started_ = Clock::now();
    aborting_ = false;
    if (auto ec = connect()) {
      // Nothing in flight (EMFILE, ...): trying again at once would only spin.
      worker_.error(kind_of(ec), lowercase_first(ec.message()));
    }
  }

  void on_data(reactor::Buffer& input) override {
    const std::string_view got = input.view();
    const char expected = *pattern().at(seed_ + count_);
    if (got.size() != 1 || got[0] != expected) {
      if (got.size() > 1) {
        worker_.error(ErrorKind::wrong_bytes, "received more bytes than were sent");
      } else {
        wrong_bytes(count_, got);
      }
    } else if (worker_.running) {
      worker_.latency.record(static_cast<std::uint64_t>((Clock::now() - started_).count()));
      worker_.messages.add(1);
      worker_.bytes.add(1);
    }
    ++count_;
    input.consume(got.size());
    // RST instead of FIN: the side that closes first keeps TIME_WAIT for a minute, and
    // thousands of them per second would exhaust the loopback ports.
    aborting_ = true;
    conn_->abort();
  }

  void on_close(reactor::CloseReason reason, std::error_code ec) override {
    conn_.reset();
    if (!worker_.running) return;
    if (!aborting_) {
      std::string detail = ec ? lowercase_first(ec.message()) : reactor::to_string(reason);
      worker_.error(kind_of(reason, ec), detail + " before the echo");
    }
    start();
  }

 private:
  void on_connected() override {
    // Should the send fail, the connection is already failing: on_close reports it.
    (void)conn_->send(std::string_view(pattern().at(seed_ + count_), 1));
  }

  void on_connect_failed(std::error_code ec) override {
    if (connect_failed(ec) && worker_.running) start();
  }

  TimePoint started_{};
  std::uint64_t count_ = 0;  // connections made: picks each one's byte
  bool aborting_ = false;
};

// ---- Worker ----

Worker::Worker(LoadRun& owner, reactor::EventLoop& worker_loop) : run(owner), loop(worker_loop) {
  handlers.on_data = [](reactor::Connection& c, reactor::Buffer& input) {
    c.context_as<Client>()->on_data(input);
  };
  handlers.on_close = [](reactor::Connection& c, reactor::CloseReason reason, std::error_code ec) {
    c.context_as<Client>()->on_close(reason, ec);
  };
}

void Worker::error(ErrorKind kind, const std::string& detail) {
  const auto k = static_cast<std::size_t>(kind);
  ++error_counts[k];
  errors.add(1);
  if (first_detail[k].empty()) first_detail[k] = detail;
}

void Worker::client_lost() {
  if (--alive == 0 && running) run.worker_emptied();
}

void Worker::stop() {
  running = false;
  for (auto& client : clients)
    client->stop();
  clients.clear();
}

// ---- LoadRun ----

void LoadRun::end_early(std::string why) {
  control_->post([this, why = std::move(why)] {
    if (ending_) return;
    early_end_ = why;
    end_run();
  });
}

void LoadRun::worker_emptied() {
  control_->post([this] {
    if (++workers_emptied_ < workers_with_clients_ || ending_) return;
    early_end_ = "every connection to " + settings_.target.to_string() +
                 " was lost: did the server go away?";
    end_run();
  });
}

void LoadRun::end_run() {
  if (ending_) return;
  ending_ = true;
  ended_ = Clock::now();
  control_->cancel(deadline_);
  control_->cancel(progress_timer_);
  workers_running_ = workers_.size();
  for (auto& worker : workers_) {
    Worker* w = worker.get();
    w->loop.post([this, w] {
      w->stop();
      control_->post([this] { worker_stopped(); });
    });
  }
}

void LoadRun::worker_stopped() {
  if (--workers_running_ == 0) control_->stop();
}

void LoadRun::progress() {
  std::uint64_t messages = 0, bytes = 0, errors = 0;
  for (const auto& w : workers_) {
    messages += w->messages.load();
    bytes += w->bytes.load();
    errors += w->errors.load();
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - started_).count();
  std::fprintf(stderr, "[%5.1fs] %llu msgs/s  %.2f MiB/s  %llu errors\n", elapsed,
               static_cast<unsigned long long>(messages - last_messages_),
               static_cast<double>(bytes - last_bytes_) / (1 << 20),
               static_cast<unsigned long long>(errors));
  last_messages_ = messages;
  last_bytes_ = bytes;
}

int LoadRun::run() {
  control_.emplace();
  if (auto ec = control_->on_signal(SIGINT, [this](int) {
        if (ending_) return;
        early_end_ = "interrupted";
        end_run();
      })) {
    std::fprintf(stderr, "cannot handle SIGINT: %s\n", ec.message().c_str());
  }
  for (int i = 0; i < settings_.threads; ++i) {
    threads_.push_back(std::make_unique<reactor::LoopThread>());
    workers_.push_back(std::make_unique<Worker>(*this, threads_.back()->loop()));
  }
  for (int i = 0; i < settings_.connections; ++i) {
    Worker& w = *workers_[static_cast<std::size_t>(i) % workers_.size()];
    const auto seed = static_cast<std::uint64_t>(i) * 37;
    if (settings_.mode == Mode::echo) {
      w.clients.push_back(std::make_unique<EchoClient>(w, seed));
    } else {
      w.clients.push_back(std::make_unique<AcceptClient>(w, seed));
    }
  }

  for (const auto& w : workers_)
    workers_with_clients_ += w->clients.empty() ? 0 : 1;

  started_ = Clock::now();
  for (auto& worker : workers_) {
    Worker* w = worker.get();
    w->loop.post([w] {
      w->running = true;
      w->alive = w->clients.size();  // before any start(): a failing one counts itself out
      for (auto& client : w->clients)
        client->start();
    });
  }
  const auto duration =
      std::chrono::duration_cast<Duration>(std::chrono::duration<double>(settings_.duration_s));
  deadline_ = control_->after(duration, [this] { end_run(); });
  if (::isatty(STDERR_FILENO)) progress_timer_ = control_->every(1s, [this] { progress(); });
  control_->run();

  // Every worker stopped its clients on its own thread; joining makes their results visible here.
  threads_.clear();
  return report();
}

int LoadRun::report() {
  std::uint64_t messages = 0, bytes = 0, errors = 0;
  std::array<std::uint64_t, kErrorKinds> error_counts{};
  std::array<std::string, kErrorKinds> details;
  demo::Histogram latency;
  for (const auto& w : workers_) {
    messages += w->messages.load();
    bytes += w->bytes.load();
    errors += w->errors.load();
    latency.merge(w->latency);
    for (std::size_t k = 0; k < kErrorKinds; ++k) {
      error_counts[k] += w->error_counts[k];
      if (details[k].empty()) details[k] = w->first_detail[k];
    }
  }
  workers_.clear();

  const double seconds = std::max(1e-9, std::chrono::duration<double>(ended_ - started_).count());
  const bool accept = settings_.mode == Mode::accept;
  const double msgs_per_s = static_cast<double>(messages) / seconds;
  const double mib_per_s = static_cast<double>(bytes) / (1 << 20) / seconds;
  const double conns_per_s = accept ? msgs_per_s : 0.0;
  auto us = [&latency](double p) {
    return static_cast<double>(latency.value_at_percentile(p)) / 1000;
  };
  const double p50 = us(50), p90 = us(90), p99 = us(99), p999 = us(99.9);
  const double max = static_cast<double>(latency.max()) / 1000;
  const char* mode = accept ? "accept" : "echo";
  const std::string target = settings_.target.to_string();

  // Why the run ended early and what went wrong go to stderr, so stdout stays one JSON object.
  if (!early_end_.empty()) std::fprintf(stderr, "reactor-load: %s\n", early_end_.c_str());
  for (std::size_t k = 0; k < kErrorKinds; ++k) {
    if (error_counts[k] == 0) continue;
    std::fprintf(stderr, "error: %llu x %s (first: %s)\n",
                 static_cast<unsigned long long>(error_counts[k]),
                 to_string(static_cast<ErrorKind>(k)), details[k].c_str());
  }
  if (messages == 0 && errors == 0) {
    std::fprintf(stderr, "reactor-load: no echo came back from %s within %.3g s\n", target.c_str(),
                 seconds);
  }

  if (settings_.json) {
    const nlohmann::ordered_json result = {
        {"mode", mode},
        {"target", target},
        {"connections", settings_.connections},
        {"duration_s", seconds},
        {"messages", messages},
        {"bytes", bytes},
        {"errors", errors},
        {"msgs_per_s", msgs_per_s},
        {"mib_per_s", mib_per_s},
        {"conns_per_s", conns_per_s},
        {"latency_us", {{"p50", p50}, {"p90", p90}, {"p99", p99}, {"p999", p999}, {"max", max}}},
    };
    // Replace, not throw, on a target that is not valid UTF-8 (an odd Unix path).
    std::printf("%s\n",
                result.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("reactor-load %s -> %s\n", mode, target.c_str());
    if (accept) {
      std::printf("  clients       %d (threads %d)\n", settings_.connections, settings_.threads);
    } else {
      std::printf("  connections   %d (size %lld B, depth %d, threads %d)\n", settings_.connections,
                  static_cast<long long>(settings_.size), settings_.depth, settings_.threads);
    }
    std::printf("  duration      %.3f s\n", seconds);
    std::printf("  %-13s %llu (%.0f/s)\n", accept ? "connections" : "messages",
                static_cast<unsigned long long>(messages), msgs_per_s);
    if (!accept) std::printf("  throughput    %.2f MiB/s\n", mib_per_s);
    std::printf("  latency (us)  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f%s\n", p50, p90,
                p99, p999, max, accept ? "  (connect to echo)" : "  (round trip)");
    std::printf("  errors        %llu\n", static_cast<unsigned long long>(errors));
  }
  std::fflush(stdout);
  return errors == 0 && messages > 0 ? demo::kExitOk : demo::kExitRuntime;
}

}  // namespace

int main(int argc, char** argv) {
  // Before any thread: Ctrl-C ends the run early and still reports.
  if (auto ec = reactor::block_signals({SIGINT})) {
    std::fprintf(stderr, "cannot block SIGINT: %s\n", ec.message().c_str());
    return demo::kExitRuntime;
  }
  std::signal(SIGPIPE, SIG_IGN);
  (void)reactor::raise_fd_limit();  // best effort: many connections need many fds

  Settings settings;
  CLI::App app{"Load generator for TCP and Unix-socket echo servers (any server, not only ours).",
               "reactor-load"};
  app.allow_extras();  // before the subcommands: they inherit it
  app.footer("Exit status: 0 when the run saw no error, 1 when it saw any, 2 for usage errors.");
  auto add_common = [&settings](CLI::App* mode, const char* connections_help) {
    mode->add_option("--target", settings.target_text,
                     "Server address: 127.0.0.1:PORT, [::1]:PORT, unix:/path")
        ->type_name("ADDR")
        ->required();
    demo::add_number(*mode, "--connections", settings.connections, 1, 1'000'000, connections_help);
    demo::add_number(*mode, "--duration", settings.duration_s, 0.01, 1e6,
                     "Run for SEC seconds, then stop, whatever the server does", "SEC");
    demo::add_number(*mode, "--threads", settings.threads, 1, 1024,
                     "Client loops, one per thread; connections are spread over them", "T");
    mode->add_flag("--json", settings.json, "Print the result as one JSON object on stdout");
  };
  CLI::App* echo = app.add_subcommand(
      "echo", "Echo load: keep --depth messages in flight per connection, verify every byte");
  add_common(echo, "Concurrent connections");
  demo::add_number<std::int64_t>(*echo, "--size", settings.size, 1, kMaxMessageSize, "Message size",
                                 "BYTES");
  demo::add_number(*echo, "--depth", settings.depth, 1, 4096,
                   "Messages in flight per connection (1: ping-pong)", "D");
  CLI::App* accept = app.add_subcommand(
      "accept",
      "Accept load: connect, send 1 byte, receive it, close with RST (no TIME_WAIT); again");
  add_common(accept, "Concurrent clients, each looping connect-echo-close");
  accept->footer(
      "Each connection is closed with RST (SO_LINGER 0), not FIN, so the client keeps no "
      "TIME_WAIT socket and loopback ports are not exhausted.\n"
      "Exit status: 0 when the run saw no error, 1 when it saw any, 2 for usage errors.");

  // A first word that is not an option must name a mode.
  if (argc > 1 && argv[1][0] != '-' && std::strcmp(argv[1], "echo") != 0 &&
      std::strcmp(argv[1], "accept") != 0) {
    return demo::usage_error(app, std::string("unknown mode: ") + argv[1] + " (echo or accept)");
  }
  if (auto rc = demo::parse_command_line(app, argc, argv)) return *rc;
  if (!echo->parsed() && !accept->parsed()) {
    return demo::usage_error(app, "missing mode: echo or accept");
  }
  settings.mode = accept->parsed() ? Mode::accept : Mode::echo;
  auto target = reactor::Address::parse(settings.target_text);
  if (!target) {
    return demo::usage_error(
        app, "malformed address: " + settings.target_text + " (" + target.error().message() + ")");
  }
  settings.target = *target;
  if (settings.mode == Mode::accept) settings.size = 1;

  LoadRun run(settings);
  return run.run();
}
