// reactor-load: a load generator for any TCP or Unix-socket echo server, built on the reactor.
//
//   reactor-load echo     --target ADDR [--connections N] [--size BYTES] [--depth D]
//                         [--duration SEC] [--threads T] [--json]
//   reactor-load accept   --target ADDR [--connections C] [--duration SEC] [--threads T] [--json]
//   reactor-load churn    --target ADDR [--connections N] [--duration SEC] [--seed S] [...]
//   reactor-load slowread --target ADDR [--connections N] [--duration SEC] [...]
//   reactor-load idle     --target ADDR [--connections N] [--duration SEC] [--size BYTES]
//                         [--ping SEC] [--retry SEC] [...]
//
// echo: N connections each keep D messages of BYTES in flight and verify every echoed byte
// against what was sent (a position-dependent pattern, offset per connection, so lost,
// duplicated, reordered or crossed bytes all show). accept: C clients each loop
// connect -> send 1 byte -> receive it -> close with RST.
//
// The fault modes (the soak test's clients, bench/soak.sh):
// - churn: N clients each loop connect -> echo 0..8 messages of random size (1 B..64 KiB, one at
//   a time, every byte verified) -> close gracefully or reset (SO_LINGER 0), at random, now and
//   then resetting with a message still in flight. Deterministic for a given --seed.
// - slowread: N clients that send without pause and never read; each stops when its own socket
//   takes no more and goes on when it drains. Reports the bytes the kernel took.
// - idle: open N connections (at most kMaxConnecting connecting at once per thread), hold them
//   idle for --duration from when the last one settled, then each echoes one message of --size
//   bytes, verified. --ping SEC: during the hold, each echoes a message every SEC too. --retry
//   SEC: a connection the server closes during the hold reconnects after SEC (it is still
//   counted as an error).
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
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
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

enum class Mode { echo, accept, churn, slowread, idle };

const char* to_string(Mode mode) {
  switch (mode) {
    case Mode::echo:
      return "echo";
    case Mode::accept:
      return "accept";
    case Mode::churn:
      return "churn";
    case Mode::slowread:
      return "slowread";
    case Mode::idle:
      return "idle";
  }
  return "?";
}

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
  std::uint64_t seed = 1;  // churn
  double ping_s = 0;       // idle: 0, no pings during the hold
  double retry_s = 0;      // idle: 0, a lost connection stays lost
};

constexpr Duration kConnectTimeout = 5s;
constexpr std::int64_t kMaxMessageSize = 16 << 20;
// churn: messages per connection are 0..kChurnMessages; one in kChurnResetInFlight messages is
// followed at once by a reset, with the echo still on its way.
constexpr std::uint64_t kChurnMessages = 8;
constexpr std::uint64_t kChurnResetInFlight = 16;
// A connect that failed before anything was in flight (EMFILE, EADDRNOTAVAIL) is retried after
// this pause: at once would spin.
constexpr Duration kRetryPause = 10ms;
// idle: connects in flight per worker. Ten thousand SYNs at once overflow the listen backlog,
// and a dropped SYN is retried only after a second.
constexpr std::size_t kMaxConnecting = 256;
// idle: bound on the final echo round; a connection that has not echoed by then counts as lost.
constexpr Duration kEchoRoundBound = 60s;
// slowread: chunks written per callback before yielding to the other clients.
constexpr int kFillChunks = 64;

// splitmix64: small, fast, and the same sequence on every platform (unlike <random>'s
// distributions), so a --seed reproduces a churn run's choices.
class Random {
 public:
  explicit Random(std::uint64_t seed) noexcept : state_(seed) {}
  std::uint64_t next() noexcept {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n), n > 0 (the modulo bias is irrelevant here).
  std::uint64_t below(std::uint64_t n) noexcept { return next() % n; }

 private:
  std::uint64_t state_;
};

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

// The name of each kind in the fault modes' JSON ("errors_by_kind").
const char* key_of(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::refused:
      return "refused";
    case ErrorKind::reset:
      return "reset";
    case ErrorKind::closed:
      return "closed";
    case ErrorKind::wrong_bytes:
      return "wrong_bytes";
    case ErrorKind::connect_timeout:
      return "connect_timeout";
    case ErrorKind::other:
      return "other";
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

  // idle: connects go out in bounded batches; the control loop then starts the echo round.
  void start_clients();   // up to kMaxConnecting connects in flight
  void client_settled();  // a client's first connect succeeded or failed
  void echo_round();      // the hold is over: every client echoes once
  void client_echoed();   // one client is done with the round, echoed or not

  LoadRun& run;
  reactor::EventLoop& loop;
  reactor::ConnectionHandlers handlers;  // shared by the clients' connections: they dispatch
  std::vector<std::unique_ptr<Client>> clients;
  bool running = false;
  std::size_t alive = 0;  // echo clients connected or connecting (accept clients never leave)

  // idle's phases
  std::size_t next_start = 0;  // clients[next_start] is the next to connect
  std::size_t connecting = 0;
  std::size_t settled = 0;
  std::size_t echo_pending = 0;
  bool starting = false;  // inside start_clients(): a failing start() must not recurse into it
  bool echo_phase = false;
  reactor::TimerId ping_timer;
  std::uint64_t held = 0;    // connections open when the echo round began
  std::uint64_t echoed = 0;  // clients that echoed in the round

  Counter messages;
  Counter bytes;
  Counter errors;
  Counter connects;    // fault modes: connections established
  Counter bytes_sent;  // churn, slowread: bytes the kernel took from the clients
  Counter closes;      // churn: graceful closes done
  Counter resets;      // churn: resets (SO_LINGER 0) done
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
  // Any worker thread (idle): every client of one more worker has settled / done its echo round.
  void worker_settled();
  void worker_echoed();

 private:
  void end_run();
  void worker_stopped();
  void progress();
  void begin_echo_round();
  int report();
  int report_fault_mode();

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
  std::size_t workers_settled_ = 0;       // idle
  std::size_t workers_echoed_ = 0;        // idle
  TimePoint hold_started_{};              // idle
  TimePoint hold_ended_{};                // idle
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
  virtual void on_drained() {}  // slowread only: the other modes never queue much
  virtual void ping() {}        // idle only: echo one message now, if connected and not busy
  virtual void echo_once() {}   // idle only: the echo round; must end in client_echoed()
  // The run is over: abort at once (RST, no TIME_WAIT), no error counted for it.
  virtual void stop() {
    connector_.cancel();
    if (timer_) worker_.loop.cancel(timer_);
    timer_ = {};
    if (conn_) conn_->abort();  // RST; dropping the handle below cancels its on_close
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

  // Runs `fn` after `delay`, unless stop() comes first. One at a time.
  template <class Fn>
  void later(Duration delay, Fn fn) {
    timer_ = worker_.loop.after(delay, [this, fn = std::move(fn)]() mutable {
      timer_ = {};
      fn();
    });
  }

  Worker& worker_;
  reactor::Connector connector_;
  reactor::ConnectionHandle conn_;
  std::uint64_t seed_;  // this client's offset into the pattern
  reactor::TimerId timer_;
};

// A stream of messages over one connection at a time, one message in flight, every echoed byte
// verified: what churn and idle share. A new connection starts a new stream (offset 0).
class StreamClient : public Client {
 public:
  using Client::Client;

 protected:
  // Sends `size` bytes (at most kChunk) of the stream. false when the connection refused it.
  bool send_message(std::size_t size) {
    if (!conn_->send(std::string_view(pattern().at(send_offset_ + seed_), size))) return false;
    send_offset_ += size;
    worker_.bytes_sent.add(size);
    return true;
  }
  bool busy() const noexcept { return recv_offset_ < send_offset_; }
  void new_stream(std::uint64_t seed) noexcept {
    seed_ = seed;
    send_offset_ = recv_offset_ = 0;
  }

  // Verifies and consumes what arrived. Returns whether the message in flight is now complete.
  // On wrong bytes the error is counted and the connection aborted (its on_close follows from
  // the loop when this returns false).
  bool receive(reactor::Buffer& input) {
    const std::string_view got = input.view();
    if (recv_offset_ + got.size() > send_offset_) {
      worker_.error(ErrorKind::wrong_bytes, "received more bytes than were sent");
      conn_->abort();
      return false;
    }
    for (std::size_t pos = 0; pos < got.size(); pos += kChunk) {
      const std::size_t n = std::min(kChunk, got.size() - pos);
      if (std::memcmp(got.data() + pos, pattern().at(recv_offset_ + pos + seed_), n) != 0) {
        wrong_bytes(recv_offset_ + pos, got.substr(pos, n));
        conn_->abort();
        return false;
      }
    }
    recv_offset_ += got.size();
    input.consume(got.size());
    if (worker_.running) worker_.bytes.add(got.size());
    return recv_offset_ == send_offset_;
  }

  // A close this client did not ask for: counted by kind.
  void unexpected_close(reactor::CloseReason reason, std::error_code ec) {
    std::string detail = ec ? lowercase_first(ec.message()) : reactor::to_string(reason);
    worker_.error(kind_of(reason, ec), detail);
  }

  std::uint64_t send_offset_ = 0;  // stream bytes sent
  std::uint64_t recv_offset_ = 0;  // stream bytes received and verified
};

// churn: connect, echo a few messages of random size, close or reset at random; again.
class ChurnClient final : public StreamClient {
 public:
  ChurnClient(Worker& worker, std::uint64_t index)
      : StreamClient(worker, 0), random_(worker.run.settings().seed * 0x100000001b3ULL + index) {}

  void start() override {
    ending_ = false;
    if (auto ec = connect()) {
      worker_.error(kind_of(ec), "connecting: " + lowercase_first(ec.message()));
      later(kRetryPause, [this] { start(); });
    }
  }

  void on_data(reactor::Buffer& input) override {
    if (!receive(input)) return;
    if (!worker_.running) return;
    worker_.messages.add(1);
    --messages_left_;
    next_step();
  }

  void on_close(reactor::CloseReason reason, std::error_code ec) override {
    conn_.reset();
    if (!worker_.running) return;
    // Ours: an abort (reason aborted), or a graceful close that completed (local_close; with
    // ec timed_out when the server never sent its EOF within the linger).
    const bool ours = reason == reactor::CloseReason::aborted ||
                      (ending_ && reason == reactor::CloseReason::local_close && !ec);
    if (!ours) unexpected_close(reason, ec);
    start();
  }

 private:
  void on_connected() override {
    worker_.connects.add(1);
    new_stream(random_.below(kPeriod));
    messages_left_ = random_.below(kChurnMessages + 1);
    next_step();
  }

  void on_connect_failed(std::error_code ec) override {
    if (connect_failed(ec) && worker_.running) start();
  }

  // Called with nothing in flight: the next message, or the end of this connection.
  void next_step() {
    if (messages_left_ == 0) {
      ending_ = true;
      if (random_.below(2) == 0) {
        worker_.closes.add(1);
        conn_->close();  // flush, FIN, wait for the server's EOF: on_close(local_close)
      } else {
        worker_.resets.add(1);
        conn_->abort();  // RST; on_close follows from the loop and reconnects
      }
      return;
    }
    // Sizes spread over the orders of magnitude: 1 B..64 KiB, as many tiny as large.
    const std::uint64_t bits = random_.below(17);
    const auto size = static_cast<std::size_t>(1 + random_.below(std::uint64_t{1} << bits));
    if (!send_message(std::min(size, kChunk))) return;  // failing already: on_close follows
    if (random_.below(kChurnResetInFlight) == 0) {
      ending_ = true;
      worker_.resets.add(1);
      conn_->abort();  // the echo is still on its way: the server's send meets a reset
    }
  }

  Random random_;
  std::uint64_t messages_left_ = 0;
  bool ending_ = false;  // this client closed or reset the connection
};

// slowread: send without pause, never read.
class SlowReadClient final : public Client {
 public:
  using Client::Client;

  void start() override {
    if (auto ec = connect()) on_connect_failed(ec);
  }

  void stop() override {
    if (connector_.pending())
      worker_.error(ErrorKind::connect_timeout, "still connecting at the end");
    count_sent();
    Client::stop();
  }

  void on_data(reactor::Buffer&) override {}  // reading is paused: never called

  void on_drained() override { fill(); }

  void on_close(reactor::CloseReason reason, std::error_code ec) override {
    conn_.reset();
    if (!worker_.running) return;
    std::string detail = ec ? lowercase_first(ec.message()) : reactor::to_string(reason);
    worker_.error(kind_of(reason, ec), detail);
    worker_.client_lost();
  }

 private:
  void on_connected() override {
    worker_.connects.add(1);
    conn_->pause_reading();  // never read: the server's replies pile up on its side
    fill();
  }

  void on_connect_failed(std::error_code ec) override {
    connect_failed(ec);
    worker_.client_lost();
  }

  // Writes until the socket takes no more (then the rest of a chunk waits in the connection's
  // queue, and on_drained comes back here), or until kFillChunks were written: then the others
  // get their turn and this one goes on at the next iteration.
  void fill() {
    if (!worker_.running) return;
    for (int i = 0; i < kFillChunks; ++i) {
      if (!conn_ || conn_->queued_bytes() > 0) break;
      if (!conn_->send(std::string_view(pattern().at(offset_ + seed_), kChunk))) break;
      offset_ += kChunk;
    }
    count_sent();
    if (conn_ && conn_->queued_bytes() == 0 && !timer_) later(Duration::zero(), [this] { fill(); });
  }

  // Adds what the kernel took since the last call (queued bytes count once written).
  void count_sent() {
    if (!conn_) return;
    const std::uint64_t sent = conn_->bytes_sent();
    worker_.bytes.add(sent - counted_);
    counted_ = sent;
  }

  std::uint64_t offset_ = 0;   // stream bytes handed to the connection
  std::uint64_t counted_ = 0;  // of those, written and counted in worker_.bytes
};

// idle: connect, stay silent (or ping now and then), echo once at the end of the hold.
class IdleClient final : public StreamClient {
 public:
  using StreamClient::StreamClient;

  void start() override {
    if (auto ec = connect()) on_connect_failed(ec);
  }

  void on_data(reactor::Buffer& input) override {
    if (!receive(input)) return;  // more to come, or aborted: on_close does the rest
    if (worker_.running) worker_.messages.add(1);
    if (final_sent_) {
      round_done(true);
    } else if (worker_.echo_phase) {
      send_final();  // the round began while a ping was in flight
    }
  }

  void on_close(reactor::CloseReason reason, std::error_code ec) override {
    conn_.reset();
    if (!worker_.running) return;
    if (reason != reactor::CloseReason::aborted) unexpected_close(reason, ec);
    if (worker_.echo_phase) {
      round_done(false);
    } else if (settings().retry_s > 0) {
      later(seconds(settings().retry_s), [this] { start(); });
    } else {
      worker_.client_lost();
    }
  }

  void ping() override {
    if (conn_ && !busy()) (void)send_message(static_cast<std::size_t>(settings().size));
  }

  void echo_once() override {
    if (timer_) worker_.loop.cancel(timer_);  // a reconnect still waiting: too late now
    timer_ = {};
    connector_.cancel();
    if (!conn_) {
      round_done(false);
      return;
    }
    ++worker_.held;
    if (!busy()) send_final();
  }

 private:
  static Duration seconds(double s) {
    return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(s));
  }

  void on_connected() override {
    worker_.connects.add(1);
    new_stream(seed_);
    settle();
  }

  void on_connect_failed(std::error_code ec) override {
    const bool again = connect_failed(ec) && settings().retry_s > 0 && worker_.running;
    if (again) later(seconds(settings().retry_s), [this] { start(); });
    settle();
    if (!again) worker_.client_lost();  // gone for good
  }

  // The first connect's outcome lets the worker start the next client.
  void settle() {
    if (settled_) return;
    settled_ = true;
    worker_.client_settled();
  }

  void send_final() {
    final_sent_ = true;
    if (!send_message(static_cast<std::size_t>(settings().size))) round_done(false);
  }

  void round_done(bool echoed) {
    if (done_ || !worker_.echo_phase) return;
    done_ = true;
    if (echoed) ++worker_.echoed;
    worker_.client_echoed();
  }

  bool settled_ = false;
  bool final_sent_ = false;
  bool done_ = false;
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
    }
    worker_.messages.add(done);
    send_messages(done, now);
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
  void on_connected() override { send_messages(send_times_.size(), Clock::now()); }

  void on_connect_failed(std::error_code ec) override {
    connect_failed(ec);
    worker_.client_lost();
  }

  // Sends `count` messages in one write: the replies that one read completed are answered
  // together, so the load generator spends one send per read rather than one per message and
  // stays cheaper than the server it measures.
  void send_messages(std::uint64_t count, TimePoint now) {
    for (std::uint64_t i = 0; i < count; ++i)
      send_times_[(sent_ + i) % send_times_.size()] = now;
    sent_ += count;
    auto left = count * static_cast<std::uint64_t>(settings().size);
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
  if (run.settings().mode == Mode::slowread) {
    handlers.on_drained = [](reactor::Connection& c) { c.context_as<Client>()->on_drained(); };
  }
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
  if (ping_timer) loop.cancel(ping_timer);
  for (auto& client : clients)
    client->stop();
  clients.clear();
}

void Worker::start_clients() {
  if (starting) return;  // a start() that failed at once: the loop below goes on
  starting = true;
  while (running && connecting < kMaxConnecting && next_start < clients.size()) {
    ++connecting;
    clients[next_start++]->start();
  }
  starting = false;
}

void Worker::client_settled() {
  --connecting;
  if (++settled == clients.size()) {
    run.worker_settled();
    const double ping_s = run.settings().ping_s;
    if (ping_s > 0) {
      ping_timer = loop.every(
          std::chrono::duration_cast<Duration>(std::chrono::duration<double>(ping_s)), [this] {
            for (auto& client : clients)
              client->ping();
          });
    }
  } else {
    start_clients();
  }
}

void Worker::echo_round() {
  if (!running) return;
  if (ping_timer) loop.cancel(ping_timer);
  ping_timer = {};
  echo_phase = true;
  echo_pending = clients.size();
  for (auto& client : clients)
    client->echo_once();
}

void Worker::client_echoed() {
  if (--echo_pending == 0) run.worker_echoed();
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

void LoadRun::worker_settled() {
  control_->post([this] {
    if (++workers_settled_ < workers_with_clients_ || ending_) return;
    hold_started_ = Clock::now();
    const auto duration =
        std::chrono::duration_cast<Duration>(std::chrono::duration<double>(settings_.duration_s));
    deadline_ = control_->after(duration, [this] { begin_echo_round(); });
  });
}

void LoadRun::begin_echo_round() {
  if (ending_) return;
  hold_ended_ = Clock::now();
  deadline_ = control_->after(kEchoRoundBound, [this] {
    early_end_ = "the echo round did not complete within the bound";
    end_run();
  });
  for (auto& worker : workers_) {
    Worker* w = worker.get();
    if (!w->clients.empty()) w->loop.post([w] { w->echo_round(); });
  }
}

void LoadRun::worker_echoed() {
  control_->post([this] {
    if (++workers_echoed_ < workers_with_clients_ || ending_) return;
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
    switch (settings_.mode) {
      case Mode::echo:
        w.clients.push_back(std::make_unique<EchoClient>(w, seed));
        break;
      case Mode::accept:
        w.clients.push_back(std::make_unique<AcceptClient>(w, seed));
        break;
      case Mode::churn:
        w.clients.push_back(std::make_unique<ChurnClient>(w, static_cast<std::uint64_t>(i)));
        break;
      case Mode::slowread:
        w.clients.push_back(std::make_unique<SlowReadClient>(w, seed));
        break;
      case Mode::idle:
        w.clients.push_back(std::make_unique<IdleClient>(w, seed));
        break;
    }
  }

  for (const auto& w : workers_)
    workers_with_clients_ += w->clients.empty() ? 0 : 1;

  started_ = Clock::now();
  for (auto& worker : workers_) {
    Worker* w = worker.get();
    w->loop.post([w, idle = settings_.mode == Mode::idle] {
      w->running = true;
      w->alive = w->clients.size();  // before any start(): a failing one counts itself out
      if (idle) {
        w->start_clients();
        return;
      }
      for (auto& client : w->clients)
        client->start();
    });
  }
  // idle: the hold begins when every connect settled (worker_settled).
  if (settings_.mode != Mode::idle) {
    const auto duration =
        std::chrono::duration_cast<Duration>(std::chrono::duration<double>(settings_.duration_s));
    deadline_ = control_->after(duration, [this] { end_run(); });
  }
  if (::isatty(STDERR_FILENO)) progress_timer_ = control_->every(1s, [this] { progress(); });
  control_->run();

  // Every worker stopped its clients on its own thread; joining makes their results visible here.
  threads_.clear();
  return report();
}

int LoadRun::report() {
  if (settings_.mode != Mode::echo && settings_.mode != Mode::accept) return report_fault_mode();
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

// churn, slowread, idle: the counts each mode is about, every error kind by name.
int LoadRun::report_fault_mode() {
  struct {
    std::uint64_t messages = 0, bytes = 0, errors = 0, connects = 0, bytes_sent = 0, closes = 0,
                  resets = 0, held = 0, echoed = 0;
  } t;
  std::array<std::uint64_t, kErrorKinds> error_counts{};
  std::array<std::string, kErrorKinds> details;
  for (const auto& w : workers_) {
    t.messages += w->messages.load();
    t.bytes += w->bytes.load();
    t.errors += w->errors.load();
    t.connects += w->connects.load();
    t.bytes_sent += w->bytes_sent.load();
    t.closes += w->closes.load();
    t.resets += w->resets.load();
    t.held += w->held;
    t.echoed += w->echoed;
    for (std::size_t k = 0; k < kErrorKinds; ++k) {
      error_counts[k] += w->error_counts[k];
      if (details[k].empty()) details[k] = w->first_detail[k];
    }
  }
  workers_.clear();

  const double seconds = std::max(1e-9, std::chrono::duration<double>(ended_ - started_).count());
  const std::string target = settings_.target.to_string();
  const auto connections = static_cast<std::uint64_t>(settings_.connections);
  if (!early_end_.empty()) std::fprintf(stderr, "reactor-load: %s\n", early_end_.c_str());
  for (std::size_t k = 0; k < kErrorKinds; ++k) {
    if (error_counts[k] == 0) continue;
    std::fprintf(stderr, "error: %llu x %s (first: %s)\n",
                 static_cast<unsigned long long>(error_counts[k]),
                 to_string(static_cast<ErrorKind>(k)), details[k].c_str());
  }

  // Did the mode do its work at all? (Errors aside.)
  bool worked = false;
  switch (settings_.mode) {
    case Mode::churn:
      worked = t.connects > 0;
      break;
    case Mode::slowread:
      worked = t.bytes > 0;
      break;
    case Mode::idle:
      worked = t.echoed == connections;
      if (!worked) {
        std::fprintf(stderr, "reactor-load: %llu of %llu connections echoed\n",
                     static_cast<unsigned long long>(t.echoed),
                     static_cast<unsigned long long>(connections));
      }
      break;
    case Mode::echo:
    case Mode::accept:
      break;
  }

  nlohmann::ordered_json result = {
      {"mode", to_string(settings_.mode)},
      {"target", target},
      {"connections", settings_.connections},
      {"duration_s", seconds},
  };
  if (settings_.mode != Mode::slowread) result["messages"] = t.messages;
  result["bytes"] = t.bytes;
  result["errors"] = t.errors;
  result["connects"] = t.connects;
  switch (settings_.mode) {
    case Mode::churn:
      result["seed"] = settings_.seed;
      result["bytes_sent"] = t.bytes_sent;
      result["wrong_bytes"] = error_counts[static_cast<std::size_t>(ErrorKind::wrong_bytes)];
      result["closes"] = t.closes;
      result["resets"] = t.resets;
      result["connects_per_s"] = static_cast<double>(t.connects) / seconds;
      break;
    case Mode::idle:
      result["idle_s"] = std::chrono::duration<double>(hold_ended_ - hold_started_).count();
      result["held"] = t.held;
      result["echoed"] = t.echoed;
      break;
    default:
      break;
  }
  nlohmann::ordered_json by_kind = nlohmann::ordered_json::object();
  for (std::size_t k = 0; k < kErrorKinds; ++k)
    by_kind[key_of(static_cast<ErrorKind>(k))] = error_counts[k];
  result["errors_by_kind"] = by_kind;

  if (settings_.json) {
    std::printf("%s\n",
                result.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("reactor-load %s -> %s\n", to_string(settings_.mode), target.c_str());
    std::printf("  clients       %d (threads %d)\n", settings_.connections, settings_.threads);
    std::printf("  duration      %.3f s\n", seconds);
    std::printf("  connects      %llu\n", static_cast<unsigned long long>(t.connects));
    switch (settings_.mode) {
      case Mode::churn:
        std::printf("  messages      %llu (%.2f MiB verified)\n",
                    static_cast<unsigned long long>(t.messages),
                    static_cast<double>(t.bytes) / (1 << 20));
        std::printf("  closes        %llu graceful, %llu reset\n",
                    static_cast<unsigned long long>(t.closes),
                    static_cast<unsigned long long>(t.resets));
        break;
      case Mode::slowread:
        std::printf("  sent          %.2f MiB, never read\n",
                    static_cast<double>(t.bytes) / (1 << 20));
        break;
      case Mode::idle:
        std::printf("  echoed        %llu of %llu held after %.3f s idle\n",
                    static_cast<unsigned long long>(t.echoed),
                    static_cast<unsigned long long>(t.held),
                    std::chrono::duration<double>(hold_ended_ - hold_started_).count());
        break;
      default:
        break;
    }
    std::printf("  errors        %llu\n", static_cast<unsigned long long>(t.errors));
  }
  std::fflush(stdout);
  return t.errors == 0 && worked ? demo::kExitOk : demo::kExitRuntime;
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

  CLI::App* churn = app.add_subcommand(
      "churn",
      "Connection churn: connect, echo 0..8 messages of 1 B..64 KiB (every byte verified), close "
      "or reset at random; again");
  add_common(churn, "Concurrent clients, each looping connect-echo-close");
  demo::add_number<std::uint64_t>(
      *churn, "--seed", settings.seed, 0, std::numeric_limits<std::uint64_t>::max(),
      "Seed of the random choices (sizes, counts, close or reset)", "S");
  churn->footer(
      "Exit status: 0 when the run saw no error (wrong bytes, a close or reset the client did "
      "not ask for, a failed connect), 1 when it saw any, 2 for usage errors.");
  CLI::App* slowread = app.add_subcommand(
      "slowread",
      "Slow readers: send without pause and never read; each client stops when its socket takes "
      "no more");
  add_common(slowread, "Concurrent clients");
  CLI::App* idle = app.add_subcommand(
      "idle", "Idle connections: open them all, hold them for --duration, then each echoes once");
  add_common(idle, "Connections to open and hold");
  demo::add_number<std::int64_t>(*idle, "--size", settings.size, 1,
                                 static_cast<std::int64_t>(kChunk),
                                 "Size of the final echo (and of each ping)", "BYTES");
  demo::add_number(*idle, "--ping", settings.ping_s, 0.0, 1e6,
                   "During the hold, each connection echoes a message every SEC (0: never)", "SEC");
  demo::add_number(*idle, "--retry", settings.retry_s, 0.0, 1e6,
                   "During the hold, reconnect SEC after the server closed a connection (0: "
                   "never; the close still counts as an error)",
                   "SEC");
  idle->footer(
      "--duration counts from when every connect settled. Exit status: 0 when every connection "
      "echoed and no error was seen, 1 otherwise, 2 for usage errors.");

  // In the order of enum Mode.
  const std::vector<std::pair<const char*, CLI::App*>> modes = {
      {"echo", echo}, {"accept", accept}, {"churn", churn}, {"slowread", slowread}, {"idle", idle}};
  const char* mode_list = "echo, accept, churn, slowread or idle";
  // A first word that is not an option must name a mode.
  if (argc > 1 && argv[1][0] != '-' &&
      std::none_of(modes.begin(), modes.end(),
                   [word = argv[1]](const auto& m) { return std::strcmp(word, m.first) == 0; })) {
    return demo::usage_error(app, std::string("unknown mode: ") + argv[1] + " (" + mode_list + ")");
  }
  if (auto rc = demo::parse_command_line(app, argc, argv)) return *rc;
  const auto parsed =
      std::find_if(modes.begin(), modes.end(), [](const auto& m) { return m.second->parsed(); });
  if (parsed == modes.end())
    return demo::usage_error(app, std::string("missing mode: ") + mode_list);
  settings.mode = static_cast<Mode>(parsed - modes.begin());
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
