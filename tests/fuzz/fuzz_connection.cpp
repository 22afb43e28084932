// fuzz_connection: the Connection state machine driven by a script of peer and server actions.
//
// Set-up, per input: an EventLoop on a ManualClock and an echo server side, either a Connection
// made directly on one end of a socketpair(AF_UNIX, SOCK_STREAM), or a TcpServer listening on an
// abstract Unix address with the peer connecting to it. The peer end is a plain non-blocking
// socket the script drives; nothing ever blocks, and no step waits on real time.
//
// Input: 2 header bytes (options, see Config), then 2-byte steps [op, arg], at most kMaxSteps,
// with at most kMaxBytes sent by the peer in all. Steps: the peer sends k bytes (deterministic,
// position-dependent content), half-closes, resets, stops or resumes reading; the server closes,
// aborts, shuts down its write side, pauses or resumes reading, now or from inside its next
// on_data / on_drained / on_high_water callback; the TcpServer stops; the clock advances so idle
// and linger timers fire; the loop runs run_once(0) iterations.
//
// Op 12 checks that the loop goes quiet: with nothing new from the peer and the clock still, an
// iteration must soon report no event (a level-triggered report that nobody clears, such as a
// hangup after EOF, would repeat forever).
//
// Invariants, checked after each step and at the end:
// - the server sees the peer's bytes exactly once and in order (each on_data's input is the next
//   part of what the peer sent); the peer receives a prefix of what it sent, each byte once, in
//   order; it never receives more than the server's bytes_sent();
// - no callback after on_close; on_close exactly once by the end of the input, with the socket
//   already closed, and never inside a call the server made (close, abort, send, ...);
// - on_peer_shutdown at most once; no on_data while the server paused reading; queued_bytes()
//   is 0 inside on_drained;
// - with pause_reading_at_high_water, queued output stays within the high-water mark plus one
//   read (the input of the latest on_data, which this echo server sends back whole);
// - the loop does not spin (op 12);
// - a graceful close completes without the clock once the peer has shut down and reads;
// - at the end the peer has received every byte the server's kernel took (AF_UNIX delivers
//   what was written), and all it sent when nothing dropped data on the way (no server close or
//   abort, no timeout, no reset);
// - no fd leaked: /proc/self/fd has as many entries after teardown as before set-up;
// - ASan and UBSan: no dangling access, no undefined behaviour.
#include <dirent.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "reactor/connection.hpp"
#include "reactor/event_loop.hpp"
#include "reactor/socket.hpp"
#include "reactor/tcp_server.hpp"
#include "reactor/timer_queue.hpp"

namespace {

using namespace std::chrono_literals;
using reactor::CloseReason;
using reactor::Connection;
using reactor::Duration;

constexpr std::size_t kMaxSteps = 256;
constexpr std::size_t kMaxBytes = 512 << 10;  // sent by the peer, per input
constexpr int kTeardownIterations = 2000;
// Enough for the server to move everything the peer sent (at most kMaxBytes, 64 KiB a read).
constexpr int kQuietIterations = 64;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_connection: %s\n", what);
  std::abort();
}

void check(bool ok, const char* what) {
  if (!ok) fail(what);
}

std::size_t count_open_fds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) fail("cannot open /proc/self/fd");
  std::size_t n = 0;
  while (::readdir(dir) != nullptr)
    ++n;
  ::closedir(dir);
  return n;
}

// The peer's whole stream: deterministic, position-dependent content, so a repeated or
// misplaced byte shows as a mismatch. Built once; what the peer sent is a prefix of it.
std::string_view stream() {
  static const std::string bytes = [] {
    std::string s(kMaxBytes, '\0');
    for (std::size_t i = 0; i < s.size(); ++i)
      s[i] = static_cast<char>((static_cast<std::uint32_t>(i) * 2654435761u) >> 24);
    return s;
  }();
  return bytes;
}

// The header bytes: what kind of server, which options.
struct Config {
  bool use_server = false;     // TcpServer on an abstract Unix address, else a direct Connection
  int peer_shutdown_mode = 0;  // 0: no on_peer_shutdown; 1: close() in it; 2: stay half-open
  bool small_socket_buffers = false;
  bool gather_send = false;  // echo with send(first, second) instead of send(data)
  reactor::ConnectionOptions options;

  Config(std::uint8_t a, std::uint8_t b) {
    use_server = a & 1;
    peer_shutdown_mode = (a >> 1) & 3;
    if (peer_shutdown_mode == 3) peer_shutdown_mode = 0;
    small_socket_buffers = a & 8;
    if (a & 16) {
      options.high_water_mark = 4096;
      options.low_water_mark = 1024;
    }
    options.pause_reading_at_high_water = !(a & 32);
    static constexpr Duration kIdle[] = {0ms, 500ms, 2s, 10s};
    static constexpr Duration kLinger[] = {0ms, 1s, 5s, 100ms};
    options.idle_timeout = kIdle[a >> 6];
    options.linger = kLinger[b & 3];
    options.reads_per_event = (b & 4) ? 1 : 4;
    gather_send = b & 8;
    if (b & 16) options.max_queued_bytes = 16 << 10;
  }
};

// What the server does from inside its next on_data, on_drained or on_high_water callback.
enum class InCallback { nothing, close, abort, shutdown_write, close_before_echo };

class Harness {
 public:
  explicit Harness(const Config& config) : config_(config), loop_(loop_options(clock_)) {
    handlers_.on_data = [this](Connection& c, reactor::Buffer& input) { on_data(c, input); };
    handlers_.on_drained = [this](Connection& c) { on_drained(c); };
    handlers_.on_high_water = [this](Connection& c, std::size_t queued) {
      callback("on_high_water");
      check(queued >= config_.options.high_water_mark, "on_high_water below the mark");
      act(c, std::exchange(in_high_water_, InCallback::nothing));
    };
    if (config_.peer_shutdown_mode != 0) {
      handlers_.on_peer_shutdown = [this](Connection& c) {
        callback("on_peer_shutdown");
        check(++peer_shutdowns_ == 1, "on_peer_shutdown ran more than once");
        if (config_.peer_shutdown_mode == 1) user_call([&] { c.close(); });  // flushes first
      };
    }
    handlers_.on_close = [this](Connection& c, CloseReason reason, std::error_code ec) {
      on_close(c, reason, ec);
    };
  }

  ~Harness() {
    // The server side goes first (it deregisters from the loop), then the peer; the loop is a
    // member and goes last.
    direct_.reset();
    server_.reset();
    if (peer_ >= 0) ::close(peer_);
  }

  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

  void start() {
    if (config_.use_server) {
      start_server();
    } else {
      start_direct();
    }
  }

  void step(std::uint8_t op, std::uint8_t arg) {
    switch (op % 16) {
      case 0:
        peer_send(std::size_t{arg} + 1);
        break;
      case 1:
        peer_send((std::size_t{arg} + 1) * 64);
        break;
      case 2:
        peer_send((std::size_t{arg} + 1) * 1024);
        break;
      case 3:
        peer_half_close();
        break;
      case 4:
        peer_reset();
        break;
      case 5:
        peer_reading_ = false;
        break;
      case 6:
        peer_reading_ = true;
        break;
      case 7:
        in_data_ = static_cast<InCallback>(arg % 5);
        break;
      case 8:
        ((arg & 1) ? in_high_water_ : in_drained_) = static_cast<InCallback>((arg >> 1) % 4);
        break;
      case 9:
        server_action(arg);
        break;
      case 10:
        clock_.advance(std::chrono::milliseconds(20) * arg);
        loop_.run_once(0ns);
        break;
      case 12:
        check_quiet();
        break;
      case 11:
        if (server_) {
          server_->stop(std::chrono::milliseconds(20) * arg, [this] { ++stop_done_; });
          ++stop_calls_;
          dropped_ = true;
        }
        loop_.run_once(0ns);
        break;
      default:
        for (int i = 0; i <= arg % 8; ++i)
          loop_.run_once(0ns);
        break;
    }
    peer_read();
    check_invariants();
    // A direct connection whose on_close ran is destroyed between steps, as an owner would.
    if (direct_ && closes_ > 0) direct_.reset();
  }

  // Ends the connection: the peer resumes reading and shuts down; the server side must then
  // finish gracefully within a bounded number of iterations, without the clock. Then the
  // fallbacks a real owner has: the clock (linger, idle), then abort().
  void finish() {
    peer_reading_ = true;
    if (Connection* c = connection()) c->resume_reading();
    paused_ = false;
    peer_half_close();
    bool closed_by_teardown = false;
    for (int i = 0; i < kTeardownIterations && !(closes_ > 0 && peer_done()); ++i) {
      loop_.run_once(0ns);
      peer_read();
      check_invariants();
      if (i == kTeardownIterations / 4) {
        // Half-open by choice (peer_shutdown_mode 2), or never told: close it now.
        if (Connection* c = connection()) {
          c->close();
          closed_by_teardown = true;
        }
      }
    }
    if (closes_ == 0 && closed_by_teardown && peer_ >= 0) {
      fail("a graceful close() did not complete while the peer read and had shut down");
    }
    if (closes_ == 0) {
      clock_.advance(1h);
      loop_.run_once(0ns);
      dropped_ = true;
    }
    if (Connection* c = connection()) c->abort();
    // on_close (from the loop, after abort()), deferred destruction (TcpServer), posted stop
    // completion.
    for (int i = 0; i < 4; ++i)
      loop_.run_once(0ns);
    check(closes_ == 1, "on_close did not run exactly once");
    peer_read();
    check_invariants();
    if (peer_ >= 0) {
      check(received_ == bytes_out_at_close_,
            "the peer did not receive every byte the server's kernel took");
      if (!dropped_ && reason_ == CloseReason::peer_closed && !close_ec_) {
        check(received_ == sent_, "an undisturbed echo lost bytes");
      }
    }
    check(stop_done_ == stop_calls_, "a TcpServer::stop()'s done did not run exactly once");
    // Destroyed outside every callback, as an owner would: nothing stays registered.
    direct_.reset();
    server_.reset();
    check(loop_.registrations() == baseline_registrations_,
          "a registration outlived its connection or server");
  }

 private:
  static reactor::EventLoop::Options loop_options(const reactor::ManualClock& clock) {
    reactor::EventLoop::Options options;
    options.clock = &clock;
    return options;
  }

  void start_direct() {
    int sv[2];
    check(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0,
          "socketpair failed");
    peer_ = sv[1];
    shrink_buffers(sv[0]);
    auto peer_address = reactor::Address::parse("unix:@fuzz-peer");
    check(peer_address.ok(), "parse of a Unix address failed");
    direct_ = std::make_unique<Connection>(loop_, reactor::Fd(sv[0]), *peer_address, handlers_,
                                           config_.options);
    check(!direct_->start(), "Connection::start failed");
    opened_ = true;
  }

  void start_server() {
    auto address =
        reactor::Address::parse("unix:@reactor-fuzz-connection-" + std::to_string(::getpid()));
    check(address.ok(), "parse of the server address failed");
    reactor::ServerOptions options;
    options.connection = config_.options;
    server_ = std::make_unique<reactor::TcpServer>(loop_, *address, handlers_, options);
    server_->set_open_handler([this](Connection& c) {
      callback("on_open");
      check(!opened_, "a second connection opened");
      opened_ = true;
      id_ = c.id();
      shrink_buffers(c.fd());
    });
    check(!server_->start(), "TcpServer::start failed");
    peer_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    check(peer_ >= 0, "socket failed");
    const reactor::Address& bound = server_->address();
    check(::connect(peer_, bound.sockaddr_ptr(), bound.length()) == 0, "connect failed");
    for (int i = 0; i < 100 && !opened_; ++i)
      loop_.run_once(0ns);
    check(opened_, "the server did not accept the peer");
  }

  void shrink_buffers(int server_fd) {
    if (!config_.small_socket_buffers) return;
    (void)reactor::set_send_buffer(server_fd, 4096);
    (void)reactor::set_recv_buffer(server_fd, 4096);
    (void)reactor::set_send_buffer(peer_, 4096);
    (void)reactor::set_recv_buffer(peer_, 4096);
  }

  // The live connection, or null once it closed.
  Connection* connection() const {
    if (direct_) return direct_->is_closed() ? nullptr : direct_.get();
    if (server_ && id_) return server_->find(id_);
    return nullptr;
  }

  void callback(const char* name) {
    if (closes_ > 0) {
      std::fprintf(stderr, "fuzz_connection: %s after on_close\n", name);
      std::abort();
    }
  }

  // Echoes everything, checking that it is the next part of the peer's stream.
  void on_data(Connection& c, reactor::Buffer& input) {
    callback("on_data");
    check(!input.empty(), "on_data with no input");
    check(server_seen_ + input.size() <= sent_, "the server read more than the peer sent");
    check(input.view() == stream().substr(server_seen_, input.size()),
          "the server's input is not the peer's stream (lost, repeated or reordered bytes)");
    // The usual handler shape: note what it will consume, use it, then consume it.
    const std::size_t n = input.size();
    server_seen_ += n;
    last_read_ = n;
    check(!paused_, "on_data while the server paused reading");
    const InCallback action = std::exchange(in_data_, InCallback::nothing);
    if (action == InCallback::close_before_echo) {
      user_call([&] { c.close(); });
      dropped_ = true;
    }
    const std::string_view in = input.view();
    bool sent = false;
    user_call([&] {
      sent = config_.gather_send ? c.send(in.substr(0, in.size() / 2), in.substr(in.size() / 2))
                                 : c.send(in);
    });
    if (!sent) {
      dropped_ = true;
      // An open connection whose peer still reads must take output.
      check(action == InCallback::close_before_echo || !c.is_open() || peer_ < 0 ||
                write_shut_requested_ || config_.options.max_queued_bytes != 0,
            "send() refused on an open connection");
    }
    input.consume(n);
    check_output_bound(c);
    act(c, action);
  }

  // Reading pauses once queued output reaches the high-water mark, and resumes below the
  // low-water mark: every on_data starts below the mark and adds at most the read it echoes.
  void check_output_bound(const Connection& c) const {
    if (!config_.options.pause_reading_at_high_water) return;
    check(c.queued_bytes() <= config_.options.high_water_mark + last_read_,
          "queued output passed the high-water mark plus one read");
  }

  void on_drained(Connection& c) {
    callback("on_drained");
    check(c.queued_bytes() == 0, "on_drained with output still queued");
    act(c, std::exchange(in_drained_, InCallback::nothing));
  }

  // Runs one of the server's own calls; on_close must not run inside it.
  template <class Call>
  void user_call(Call&& call) {
    ++in_user_call_;
    call();
    --in_user_call_;
  }

  void act(Connection& c, InCallback action) {
    switch (action) {
      case InCallback::close:
        user_call([&] { c.close(); });
        break;
      case InCallback::abort:
        user_call([&] { c.abort(); });
        break;
      case InCallback::shutdown_write:
        user_call([&] { c.shutdown_write(); });
        write_shut_requested_ = true;
        break;
      case InCallback::nothing:
      case InCallback::close_before_echo:
        return;
    }
    dropped_ = true;
  }

  void on_close(Connection& c, CloseReason reason, std::error_code ec) {
    callback("on_close");
    check(in_user_call_ == 0, "on_close ran inside a call the server made");
    ++closes_;
    reason_ = reason;
    close_ec_ = ec;
    bytes_out_at_close_ = c.bytes_sent();
    check(c.is_closed() && !c.is_open(), "on_close on a connection that is not closed");
    check(c.fd() < 0, "on_close before the socket was closed");
    check(c.bytes_sent() <= c.bytes_received(), "an echo server sent more than it received");
    if (reason != CloseReason::peer_closed || ec) dropped_ = true;
  }

  void server_action(std::uint8_t arg) {
    Connection* c = connection();
    if (c == nullptr) return;
    switch (arg % 6) {
      case 0:
        user_call([&] { c->close(); });
        dropped_ = true;
        break;
      case 1:
        user_call([&] { c->abort(); });
        dropped_ = true;
        break;
      case 2:
        user_call([&] { c->shutdown_write(); });
        write_shut_requested_ = true;
        dropped_ = true;
        break;
      case 3:
        user_call([&] { c->pause_reading(); });
        paused_ = true;
        break;
      case 4:
        user_call([&] { c->resume_reading(); });
        paused_ = false;
        break;
      case 5:
        user_call([&] { c->set_idle_timeout(std::chrono::milliseconds(10) * (arg / 6)); });
        break;
    }
  }

  void peer_send(std::size_t n) {
    if (peer_ < 0 || peer_shut_) return;
    n = std::min(n, kMaxBytes - sent_);
    if (n == 0) return;
    const ssize_t r = ::send(peer_, stream().data() + sent_, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r < 0) {
      // EAGAIN: the server is not reading. EPIPE, ECONNRESET: it closed.
      check(errno == EAGAIN || errno == EWOULDBLOCK || errno == EPIPE || errno == ECONNRESET,
            "the peer's send failed unexpectedly");
      return;
    }
    sent_ += static_cast<std::size_t>(r);
  }

  void peer_half_close() {
    if (peer_ < 0 || peer_shut_) return;
    ::shutdown(peer_, SHUT_WR);
    peer_shut_ = true;
  }

  // SO_LINGER {1, 0} means nothing to AF_UNIX; closing is the reset.
  void peer_reset() {
    if (peer_ < 0) return;
    ::close(peer_);
    peer_ = -1;
    dropped_ = true;
  }

  bool peer_done() const { return peer_ < 0 || peer_eof_; }

  void peer_read() {
    if (peer_ < 0 || !peer_reading_ || peer_eof_) return;
    char chunk[16384];
    for (;;) {
      const ssize_t r = ::recv(peer_, chunk, sizeof chunk, MSG_DONTWAIT);
      if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        // The server closed with our bytes unread: AF_UNIX reports ECONNRESET after the data.
        check(errno == ECONNRESET, "the peer's recv failed unexpectedly");
        peer_eof_ = true;
        return;
      }
      if (r == 0) {
        peer_eof_ = true;
        return;
      }
      const auto n = static_cast<std::size_t>(r);
      check(received_ + n <= sent_, "the peer received more than it sent");
      check(std::string_view(chunk, n) == stream().substr(received_, n),
            "the echo is not the peer's stream (lost, repeated or reordered bytes)");
      received_ += n;
    }
  }

  // With the peer and the clock still, the loop must run out of events within a few iterations.
  void check_quiet() {
    for (int i = 0; i < kQuietIterations; ++i) {
      if (loop_.run_once(0ns) == 0) return;
    }
    fail("the loop spins: events keep coming with nothing new from the peer");
  }

  void check_invariants() {
    check(closes_ <= 1, "on_close ran more than once");
    check(received_ <= server_seen_, "the peer received bytes the server never read");
    if (Connection* c = connection()) {
      // Once closing, input is read only to reach the peer's EOF, and discarded unseen.
      check(
          c->is_open() ? c->bytes_received() == server_seen_ : c->bytes_received() >= server_seen_,
          "bytes_received() differs from what on_data saw");
      check(c->bytes_sent() <= c->bytes_received(), "an echo server sent more than it received");
      check(received_ <= c->bytes_sent(), "the peer received more than the server sent");
      check(c->bytes_sent() + c->queued_bytes() <= c->bytes_received(),
            "queued output exceeds what was echoed");
      check_output_bound(*c);
    }
  }

  Config config_;
  reactor::ManualClock clock_;
  reactor::EventLoop loop_;
  reactor::ConnectionHandlers handlers_;
  std::unique_ptr<Connection> direct_;
  std::unique_ptr<reactor::TcpServer> server_;
  reactor::ConnectionId id_;
  bool opened_ = false;

  int peer_ = -1;
  bool peer_shut_ = false;
  bool peer_eof_ = false;
  bool peer_reading_ = true;
  std::size_t sent_ = 0;         // what the peer's kernel accepted, in order
  std::size_t received_ = 0;     // how much of it came back
  std::size_t server_seen_ = 0;  // how much of it on_data saw
  std::size_t last_read_ = 0;    // the input of the latest on_data

  InCallback in_data_ = InCallback::nothing;
  InCallback in_drained_ = InCallback::nothing;
  InCallback in_high_water_ = InCallback::nothing;
  int closes_ = 0;
  int peer_shutdowns_ = 0;
  int in_user_call_ = 0;
  bool paused_ = false;  // the server called pause_reading() (and not resume_reading())
  int stop_calls_ = 0;
  int stop_done_ = 0;
  std::size_t baseline_registrations_ = loop_.registrations();
  CloseReason reason_ = CloseReason::local_close;
  std::error_code close_ec_;
  std::uint64_t bytes_out_at_close_ = 0;
  bool write_shut_requested_ = false;
  bool dropped_ = false;  // something may have dropped echoed bytes: no full-echo check
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const std::size_t fds_before = count_open_fds();
  {
    Harness harness(Config(data[0], data[1]));
    harness.start();
    const std::size_t steps = std::min((size - 2) / 2, kMaxSteps);
    for (std::size_t i = 0; i < steps; ++i)
      harness.step(data[2 + 2 * i], data[3 + 2 * i]);
    harness.finish();
  }
  if (count_open_fds() != fds_before) fail("an fd leaked");
  return 0;
}
