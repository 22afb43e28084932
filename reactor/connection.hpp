// Connection: one connected, non-blocking stream socket (TCP or Unix) on one EventLoop.
//
// Ownership. A Connection is owned by a TcpServer (which hands out references during callbacks
// and ConnectionIds to find it later) or by a ConnectionHandle (from a Connector). Its
// callbacks live in a ConnectionHandlers that the owner keeps alive longer than the connection;
// many connections share one. The socket is closed when the connection ends; the object is
// destroyed after on_close, at the end of a dispatch round, so a reference obtained in a
// callback stays valid until that callback returns, whatever the callback does. A Connection
// may also be made directly on an already connected socket (a hot restart, an fd passed over a
// Unix socket): construct it with the fd, then start(). That is the hot-restart / fd-passing
// path for connections, as ListenSocket::adopt (listener.hpp) is for listening sockets.
//
// Threads. Every method must be called on the connection's loop thread (debug builds assert
// it in each method that acts: send, close, abort, shutdown_write, pause and resume, timeouts). To
// send from another thread, post to the loop and look the connection up by id there:
//     loop.post([&server, id, msg = std::move(msg)] {
//       if (Connection* c = server.find(id)) c->send(msg);   // a stale id finds nothing
//     });
// or call TcpServer::send(id, bytes), which does just that.
//
// Callbacks (all optional except that unread input accumulates without on_data):
//   on_data(conn, input)      bytes arrived; consume() what you used, the rest stays for next time.
//                             Never while reading is paused (pause_reading() or the high-water
//                             mark), whatever the peer does meanwhile.
//   on_drained(conn)          queued output reached zero
//   on_high_water(conn, n)    queued output passed high_water_mark; by default reading stops
//                             until output drains below low_water_mark. It runs inside the
//                             send() that crossed the mark: the one callback a call of yours
//                             can run. It may close or abort any connection.
//   on_low_water(conn)        queued output fell below low_water_mark after on_high_water
//                             (when it drains to zero at the latest, then before on_drained),
//                             once per high-water crossing: where a producer that on_high_water
//                             paused (a proxy's other side) resumes. The mark re-arms here.
//   on_peer_shutdown(conn)    the peer half-closed (EOF), at most once; you may still send
//                             (unless you shut the write side first), then close(). Without this
//                             callback the connection closes gracefully at once, possibly in the
//                             same dispatch round as the on_data before it: replies held back for
//                             later (say, to the end of the round) must be sent from here. Should
//                             the peer then go away altogether (a hangup, a reset), the connection
//                             ends (on_close).
//   on_close(conn, reason, ec) exactly once, last; no callback follows it. It never runs inside
//                             a call you made (close, abort, send, shutdown_write, ...): it runs
//                             from the loop, after the connection ended (in that iteration's
//                             timer phase or the next iteration's), as libuv's close callback.
//                             Until then the object stays valid and is_closed() is true. An
//                             owner that drops the connection first (a ConnectionHandle reset,
//                             a TcpServer destroyed) cancels it: then no callback runs at all.
// A callback may send, close or abort this or any other connection.
//
// State. One lifecycle state, plus the facts it does not cover (the peer's EOF; close() asked,
// which discards input and bounds the close by `linger`) and the pause flags:
//   open        reading and sending
//   peer_shut   the peer's EOF arrived: sending goes on, reading stops
//   flushing    shutdown_write() or close() with output queued: SHUT_WR once it drains
//   write_shut  our FIN is out: reading (close(): discarding) until the peer's EOF
//   closed      socket closed and deregistered; on_close delivered, or on its way
// Transitions:
//   open       -- peer EOF --> peer_shut (on_peer_shutdown, or close() without it)
//   open       -- shutdown_write()/close() --> flushing, or write_shut when nothing is queued
//   peer_shut  -- shutdown_write()/close() --> flushing, or closed when nothing is queued
//   peer_shut  -- hangup or error reported --> closed (SO_ERROR: reset/error, else peer_closed)
//   flushing   -- peer EOF --> flushing (reading stops; on_peer_shutdown unless close() asked)
//   flushing   -- output drained --> write_shut, or closed after the peer's EOF
//   write_shut -- peer EOF --> closed (peer_closed, or close()'s reason)
//   any        -- reset, socket error, abort(), linger, output limit --> closed
// While reading is paused (and close() is not draining input), a hangup is not read: a reset
// ends the connection (the unread bytes go with it); a clean hangup parks the connection, in
// whatever state it is, off the loop with the bytes left in the socket, until resume_reading()
// or close() (the idle timeout and linger still run).
//
// Input. `input` in on_data is valid only during the call. While a connection has no unread
// input it reads into its loop's shared buffer, and keeps only what on_data leaves unconsumed
// in its own: a connection that always consumes what it reads never allocates an input buffer
// (one that once kept bytes keeps that block).
//
// Output. send() writes directly when nothing is queued and queues only what the kernel did not
// take; EPOLLOUT is armed only while output is queued. MSG_NOSIGNAL everywhere: a closed peer
// never raises SIGPIPE. No allocation per message once the buffers have grown to fit. The
// high-water mark pauses reading from this connection's own peer; output that comes from
// elsewhere (a fan-out to a peer that does not read) is bounded only by max_queued_bytes: past
// it the connection is aborted (CloseReason::output_limit), as Redis's output buffer limit.
// A send error ends the connection (on_close with the error), whatever the error.
//
// Fairness. One readiness reads at most reads_per_event times, 64 KiB at most each (whether the
// connection keeps its input or not), and one writability sends once, so a connection with
// megabytes arriving or queued takes a bounded share of each iteration.
//
// Close. close() flushes queued output, shuts down the write side, discards input until the
// peer's EOF, then closes; bounded by `linger` (then it aborts). Closing with unread input would
// send a reset and the peer could lose the last reply. abort() closes at once with RST.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <atomic>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <system_error>

#include "reactor/address.hpp"
#include "reactor/buffer.hpp"
#include "reactor/event_loop.hpp"
#include "reactor/function.hpp"
#include "reactor/socket.hpp"
#include "reactor/traffic_counters.hpp"

namespace reactor {

class Connection;

enum class CloseReason {
  peer_closed,   // the peer's EOF ended it (after ours, or the peer closed first)
  reset,         // the peer reset the connection (ECONNRESET, EPIPE)
  timed_out,     // idle timeout
  local_close,   // close() completed (ec is timed_out when linger ran out and it aborted)
  aborted,       // abort()
  error,         // another socket error, in ec
  output_limit,  // queued output passed max_queued_bytes (ec: no_buffer_space); aborted
};
const char* to_string(CloseReason reason) noexcept;

struct ConnectionHandlers {
  Function<void(Connection&, Buffer& input)> on_data;
  Function<void(Connection&)> on_drained;
  Function<void(Connection&, std::size_t queued)> on_high_water;
  Function<void(Connection&)> on_low_water;
  Function<void(Connection&)> on_peer_shutdown;
  Function<void(Connection&, CloseReason, std::error_code)> on_close;
};

// What pushes an idle timeout's deadline back (ConnectionOptions::idle_counts).
enum class IdleCounts : std::uint8_t {
  any,    // bytes received or sent (sent: taken by the kernel, not merely queued)
  input,  // bytes received only: a peer that sends nothing times out, however much it is sent
};

struct ConnectionOptions {
  std::size_t high_water_mark = 1 << 20;   // queued output that triggers on_high_water
  std::size_t low_water_mark = 256 << 10;  // reading resumes when output drains below this
  bool pause_reading_at_high_water = true;
  // Bound on a graceful close(); then abort. Duration::max(): no bound.
  Duration linger = std::chrono::seconds(5);
  Duration idle_timeout = Duration::zero();  // zero or Duration::max(): none
  IdleCounts idle_counts = IdleCounts::any;  // what counts as activity for idle_timeout
  bool tcp_nodelay = true;                   // TCP only
  int reads_per_event = 4;  // reads per readiness while each read fills the buffer (fairness);
                            // below 1 counts as 1
  // Hard bound on queued output: past it the connection is aborted (output_limit). Zero: no
  // bound beyond the high-water pause, which bounds only a peer that sends what we echo.
  std::size_t max_queued_bytes = 0;
};

// Finds a connection later, across its lifetime: generation-checked, a stale id finds nothing.
struct ConnectionId {
  std::uint32_t slot = 0;
  std::uint32_t generation = 0;  // 0: never valid
  std::uint32_t shard = 0;       // which loop of a multi-loop server
  explicit operator bool() const noexcept { return generation != 0; }
  friend bool operator==(ConnectionId, ConnectionId) = default;
};

class Connection {
 public:
  // Normally made by TcpServer or Connector. `handlers` (and `counters`, if given) must outlive
  // the connection. Call start() to register with the loop.
  Connection(EventLoop& loop, Fd fd, const Address& peer, ConnectionHandlers& handlers,
             const ConnectionOptions& options = {}, TrafficCounters* counters = nullptr);
  // Closes the socket if still open, without callbacks.
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  std::error_code start();

  // Output. false when the connection no longer sends (closing, write side shut, or closed):
  // then nothing was written or queued; or when this send failed or pushed queued output past
  // max_queued_bytes: then the connection has ended and on_close follows. Any iovec count.
  bool send(std::string_view data);
  bool send(std::string_view first, std::string_view second);  // one gather write
  bool send(const iovec* iov, int count);
  // The same for binary data and any container of iovecs: each forwards to the send above
  // (the bytes as a string_view, the iovecs as a pointer and count), without copying. A string,
  // a literal or a string_view still picks send(std::string_view); std::as_bytes(std::span(v))
  // makes bytes of other element types.
  bool send(std::span<const std::byte> data) {
    return send(std::string_view(reinterpret_cast<const char*>(data.data()), data.size()));
  }
  bool send(std::span<const iovec> iov);
  std::size_t queued_bytes() const noexcept { return output_.size(); }

  // Input flow control, on top of the high-water pause.
  void pause_reading();
  void resume_reading();

  void close();           // graceful (see above)
  void shutdown_write();  // half-close after queued output is flushed; reading goes on
  void abort();           // RST now

  // Open: sends are taken (open or peer_shut). Closed: the connection ended (on_close follows
  // from the loop, if it has not run yet).
  bool is_open() const noexcept { return can_send(); }
  bool is_closed() const noexcept { return state_ == State::closed; }
  bool peer_has_shut_down() const noexcept { return peer_eof_; }
  // True while one of this connection's callbacks is running (owners' debug checks).
  bool in_callback() const noexcept { return callback_depth_ > 0; }

  // Idle timeout: closes (reason timed_out) after `timeout` without activity: input or output
  // (options' idle_counts = IdleCounts::any, the default), or input only (IdleCounts::input).
  // Costs one timer operation per timeout period, not one per byte. Zero turns it off.
  // The idle close is close(), graceful: queued output is flushed, our FIN sent, input
  // discarded until the peer's EOF; on_close(timed_out) runs once that is done (ec empty). What
  // is not done when `linger` (counted from the deadline) runs out is aborted (RST), and
  // on_close(timed_out) comes with ec errc::timed_out. So on_close comes up to `linger` after
  // the deadline (unbounded with linger Duration::max() or zero); at the deadline only when the
  // peer's EOF is already in and nothing is queued. Meanwhile is_open() is false.
  void set_idle_timeout(Duration timeout);

  const Address& peer() const noexcept { return peer_; }
  // This end's address, read with getsockname at each call (a syscall; not cached): on an
  // accepted connection, the address the peer reached (under a wildcard listener, the
  // interface's); on a connected one, its ephemeral port; for AF_UNIX, the listener's path or
  // abstract name on the accepting side, unnamed (`unix:`) on a client that did not bind.
  // Errors: getsockname's (EBADF once the connection has closed and let its socket go).
  Result<Address> local_address() const;
  int fd() const noexcept { return fd_.get(); }
  EventLoop& loop() const noexcept { return loop_; }
  ConnectionId id() const noexcept { return id_; }
  std::uint64_t bytes_received() const noexcept { return bytes_in_; }
  std::uint64_t bytes_sent() const noexcept { return bytes_out_; }

  // User context: whatever the user sets, returned as is in every callback via the Connection.
  void set_context(void* context) noexcept { context_ = context; }
  void* context() const noexcept { return context_; }
  template <class T>
  T* context_as() const noexcept {
    return static_cast<T*>(context_);
  }

  // For owners (TcpServer, ConnectionHandle): `id` is reported by id(); `on_finished` runs once,
  // after on_close, and is where the owner schedules destruction.
  void set_owner(ConnectionId id, Function<void(Connection&)> on_finished) noexcept;
  // For owners: stop all callbacks (a pending on_close included) and deregister now, without
  // closing the socket (the destructor does that).
  void detach() noexcept;

 private:
  friend class EventLoop;  // calls on_events, this connection's registration's handler

  enum class State : std::uint8_t { open, peer_shut, flushing, write_shut, closed };

  bool can_send() const noexcept { return state_ <= State::peer_shut; }
  bool reading_paused() const noexcept { return user_paused_ || water_paused_; }
  void assert_in_loop() const noexcept {
    assert(loop_.in_loop_thread() && "Connection method called off its loop's thread");
  }
  void on_events(std::uint32_t events);
  void handle_events(std::uint32_t events);  // any but input alone (on_events' fast path)
  void handle_read();
  void keep_unconsumed(Buffer& shared);
  void handle_hangup();
  void unpark();
  void handle_write();
  void handle_eof();
  void begin_close(CloseReason reason);
  bool write_direct(const iovec* iov, int count, std::size_t total);
  // send(string_view) after a direct send that did not take all of `data` (n: its result):
  // retries EINTR, queues the rest, or records the failure.
  bool finish_send(std::string_view data, ssize_t n);
  // send(string_view) where the direct send does not apply: closed or closing, an empty
  // message, or output already queued.
  bool send_queued(std::string_view data);
  void queue_output(const iovec* iov, int count, std::size_t skip);
  bool after_output_queued();
  void shut_write_now();
  void update_interest();
  void finish(CloseReason reason, std::error_code ec);
  void deliver_close();
  void on_idle_timer();
  void count_out(std::size_t n) noexcept {
    bytes_out_ += n;
    counters_->add_out(n);
    // Without an idle timeout, the same single compare as before; with one, a second.
    if (options_.idle_timeout > Duration::zero() && options_.idle_counts == IdleCounts::any)
      last_activity_ = loop_.now();
  }
  // Only an idle timeout reads last_activity_: without one, traffic reads no clock.
  void note_activity() noexcept {
    if (options_.idle_timeout > Duration::zero()) last_activity_ = loop_.now();
  }
  void fail_write(std::error_code ec);
  // Accounts for what a direct send returned: the bytes written (0 when the socket was full),
  // or kSendFailed after recording the error.
  static constexpr std::size_t kSendFailed = ~std::size_t{0};
  std::size_t settle_direct(ssize_t n) noexcept;

  // Touched by every read and send: kept together at the front, in as few cache lines as
  // will hold them (a server with thousands of connections pays a miss per line).
  EventLoop& loop_;
  ConnectionHandlers& handlers_;
  TrafficCounters* counters_;  // never null: the owner's, or the loop's uncounted traffic
  void* context_ = nullptr;
  Fd fd_;
  IoId io_id_;
  int callback_depth_ = 0;
  State state_ = State::open;  // send() tests it with one compare
  bool peer_eof_ = false;      // the peer's FIN arrived (peer_shut, or flushing after it)
  bool closing_ = false;       // close() called: input discarded, linger armed
  bool user_paused_ = false;
  bool water_paused_ = false;  // paused by the high-water mark
  bool high_water_fired_ = false;
  bool hangup_parked_ = false;  // a clean hangup while paused: deregistered until resume
  // Readable is in the interest set (not after the peer's EOF, not while paused unless
  // close() drains): kept by update_interest(), read by every event with one load.
  bool reading_ = true;
  Buffer input_;
  Buffer output_;
  std::uint64_t bytes_in_ = 0;
  std::uint64_t bytes_out_ = 0;
  ConnectionOptions options_;
  TimePoint last_activity_{};  // kept only while an idle timeout is set

  // Set-up, close and timers.
  ConnectionId id_;
  CloseReason close_reason_ = CloseReason::local_close;
  TimerId idle_timer_;
  TimerId linger_timer_;
  TimerId close_timer_;       // on_close, due from the loop once the connection ended
  std::error_code close_ec_;  // what on_close will report
  Function<void(Connection&)> on_finished_;
  Address peer_;
};

// Inline: the call every reply makes. Its common case (open, nothing queued, the kernel takes
// the whole message) then runs in the caller's frame instead of a call and a frame of its own
// (bench/cost.sh: 241 / 173 -> 233 / 165 instructions per message at 1 / 100 connections).
inline bool Connection::send(std::string_view data) {
  assert_in_loop();
  if (output_.empty() && can_send() && !data.empty()) [[likely]] {
    // One send of the whole message, from the caller's bytes.
    const ssize_t n = ::send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
    if (static_cast<std::size_t>(n) == data.size()) [[likely]] {
      count_out(data.size());
      return true;
    }
    return finish_send(data, n);
  }
  return send_queued(data);
}

}  // namespace reactor
