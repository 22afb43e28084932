// The shared core of reactor-load (the overview of the whole program is in main.cpp).
//
// - Settings: what the command line asked for (main.cpp parses it).
// - LoadRun: the main thread's side: the control loop with the deadline and the progress line,
//   the workers, the merged result and its report (core.cpp, report.cpp).
// - Worker: one client loop (a reactor::LoopThread) and its clients (core.cpp).
// - Client: one simulated client on a worker's loop; one subclass per mode, each in its own
//   file (echo.cpp, accept.cpp, churn.cpp, slowread.cpp, idle.cpp, rate.cpp, udp.cpp), made by
//   make_*_client() (rate, udp: make_*_clients()). StreamClient is what churn and idle share: one
//   message in flight, every byte verified.
// - Schedule: rate's open-loop timetable, which drives its worker's probe clients (rate.cpp;
//   udp --rate has its own, udp.cpp).
// - Pattern: the bytes every client sends and verifies. ErrorKind: errors counted by kind.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <reactor/address.hpp>
#include <reactor/buffer.hpp>
#include <reactor/connection.hpp>
#include <reactor/connector.hpp>
#include <reactor/event_loop.hpp>
#include <reactor/histogram.hpp>
#include <reactor/loop_thread.hpp>

namespace load {

using namespace std::chrono_literals;
using reactor::Clock;
using reactor::Duration;
using reactor::TimePoint;

enum class Mode { echo, accept, churn, slowread, idle, rate, udp };

const char* to_string(Mode mode);

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
  std::uint64_t seed = 1;          // churn
  double ping_s = 0;               // idle: 0, no pings during the hold
  double retry_s = 0;              // idle: 0, a lost connection stays lost
  double rate = 0;                 // rate: messages per second over all probe connections
  bool spin = false;               // rate: the probe loop never sleeps
  int bulk = 0;                    // rate: closed-loop echo connections beside the probes
  std::int64_t bulk_size = 16384;  // rate: their message size
  double timeout_s = 1;            // udp: a datagram not echoed within it is lost
};

inline constexpr Duration kConnectTimeout = 5s;
// idle: connects in flight per worker. Ten thousand SYNs at once overflow the listen backlog,
// and a dropped SYN is retried only after a second.
inline constexpr std::size_t kMaxConnecting = 256;
// idle: bound on the final echo round; a connection that has not echoed by then counts as lost.
inline constexpr Duration kEchoRoundBound = 60s;
// rate: a probe message sent later than this after its due time counts as a late send.
inline constexpr Duration kLateSend = 10us;

// ---- The byte pattern: byte k of a connection's stream is pattern[(k + seed) % kPeriod]. ----
// A prime period: a stream shifted by any amount that is not a multiple of it reads wrong.
inline constexpr std::size_t kPeriod = 251;
inline constexpr std::size_t kChunk = 64 * 1024;  // longest slice sent or verified at once

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
inline constexpr std::size_t kErrorKinds = static_cast<std::size_t>(ErrorKind::count);

const char* to_string(ErrorKind kind);
// The name of each kind in the fault modes' JSON ("errors_by_kind").
const char* key_of(ErrorKind kind);
ErrorKind kind_of(std::error_code ec);
ErrorKind kind_of(reactor::CloseReason reason, std::error_code ec);
// "Connection refused" -> "connection refused", to sit inside a sentence.
std::string lowercase_first(std::string text);

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

// rate: the open-loop timetable of one worker's probe connections (rate.cpp). Runs on the
// worker's thread.
class Schedule {
 public:
  virtual ~Schedule() = default;
  virtual void start() = 0;  // on the worker's thread, after its clients' start()
  virtual void stop() = 0;   // the run is over: before the clients stop
};

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

  // rate
  std::unique_ptr<Schedule> schedule;  // the probe worker's, not the bulk's; udp --rate: each
  bool bulk = false;                   // this worker's clients are --bulk connections
  std::uint64_t due = 0;               // messages due before the run ended (udp --rate too)

  // udp (udp.cpp says what each counts; corrupt ones are ErrorKind::wrong_bytes)
  std::uint64_t lost = 0;
  std::uint64_t duplicated = 0;
  std::uint64_t reordered = 0;
  std::uint64_t late = 0;
  std::uint64_t in_flight = 0;  // at the end

  Counter messages;
  Counter bytes;
  Counter errors;
  Counter connects;    // fault modes: connections established
  Counter bytes_sent;  // churn, slowread: bytes the kernel took from the clients
  Counter closes;      // churn: graceful closes done
  Counter resets;      // churn: resets (SO_LINGER 0) done
  Counter sent;        // rate: probe messages sent; udp: datagrams sent
  Counter late_sends;  // rate: of those, sent more than kLateSend after they were due
  std::array<std::uint64_t, kErrorKinds> error_counts{};
  std::array<std::string, kErrorKinds> first_detail;
  reactor::Histogram latency;  // nanoseconds
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
  // The probe worker's thread (rate): every probe connect settled and message 0 was due at
  // `start`; the run lasts --duration from then.
  void schedule_started(TimePoint start);

 private:
  void end_run();
  void worker_stopped();
  void progress();
  void begin_echo_round();
  int report();
  int report_fault_mode();
  int report_rate();
  int report_udp();

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
  std::size_t workers_with_clients_ = 0;       // --threads may exceed --connections
  std::size_t workers_settled_ = 0;            // idle
  std::size_t workers_echoed_ = 0;             // idle
  TimePoint hold_started_{};                   // idle
  TimePoint hold_ended_{};                     // idle
  std::optional<TimePoint> schedule_started_;  // rate
  std::string early_end_;                      // why the run ended before --duration
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

  // Checks what arrived: `got`, at stream offset `received`, of the `sent` bytes sent so far.
  // When it holds more than was sent or a wrong byte, counts the error, aborts the connection
  // (its on_close follows from the loop) and returns false.
  bool verify(std::string_view got, std::uint64_t received, std::uint64_t sent) {
    if (received + got.size() > sent) {
      worker_.error(ErrorKind::wrong_bytes, "received more bytes than were sent");
      conn_->abort();
      return false;
    }
    for (std::size_t pos = 0; pos < got.size(); pos += kChunk) {
      const std::size_t n = std::min(kChunk, got.size() - pos);
      if (std::memcmp(got.data() + pos, pattern().at(received + pos + seed_), n) != 0) {
        wrong_bytes(received + pos, got.substr(pos, n));
        conn_->abort();
        return false;
      }
    }
    return true;
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
    if (!verify(got, recv_offset_, send_offset_)) return false;
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

// One kind of client per mode, each in its file; `seed` is the client's offset into the pattern
// (churn: the client's index, from which it derives its random sequence).
std::unique_ptr<Client> make_echo_client(Worker& worker, std::uint64_t seed);
std::unique_ptr<Client> make_accept_client(Worker& worker, std::uint64_t seed);
std::unique_ptr<Client> make_churn_client(Worker& worker, std::uint64_t index);
std::unique_ptr<Client> make_slowread_client(Worker& worker, std::uint64_t seed);
std::unique_ptr<Client> make_idle_client(Worker& worker, std::uint64_t seed);
// rate: N probe clients on `worker`, and the Schedule that drives them.
void make_rate_clients(Worker& worker, int connections);
// rate --bulk: an echo client of --bulk-size messages, one in flight.
std::unique_ptr<Client> make_bulk_client(Worker& worker, std::uint64_t seed);
// udp: `count` sockets on `worker`, numbered from `first` (their offsets into the pattern),
// and with --rate the Schedule that drives them.
void make_udp_clients(Worker& worker, std::uint64_t first, int count);

}  // namespace load
