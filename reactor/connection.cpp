#include "reactor/connection.hpp"

#include <sys/socket.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <climits>

namespace reactor {

namespace {

bool would_block(int err) noexcept {
  return err == EAGAIN || err == EWOULDBLOCK;
}

CloseReason reason_for(std::error_code ec) noexcept {
  if (ec == std::errc::connection_reset || ec == std::errc::broken_pipe) return CloseReason::reset;
  return CloseReason::error;
}

}  // namespace

const char* to_string(CloseReason reason) noexcept {
  switch (reason) {
    case CloseReason::peer_closed:
      return "peer closed";
    case CloseReason::reset:
      return "reset by peer";
    case CloseReason::timed_out:
      return "timed out";
    case CloseReason::local_close:
      return "closed";
    case CloseReason::aborted:
      return "aborted";
    case CloseReason::error:
      return "error";
    case CloseReason::output_limit:
      return "output limit";
  }
  return "unknown";
}

Connection::Connection(EventLoop& loop, Fd fd, const Address& peer, ConnectionHandlers& handlers,
                       const ConnectionOptions& options, TrafficCounters* counters)
    : loop_(loop),
      handlers_(handlers),
      // Without counters of its own, it counts where nobody reads: then every read and send
      // adds to counters without first testing for them.
      counters_(counters ? counters : &loop.uncounted_traffic_),
      fd_(std::move(fd)),
      options_(options),
      peer_(peer) {
  // At least one read per readiness: with none, a level-triggered readiness would come back on
  // every iteration unread, and the loop would spin.
  options_.reads_per_event = std::max(1, options_.reads_per_event);
}

Connection::~Connection() {
  detach();
}

std::error_code Connection::start() {
  assert_in_loop();
  if (options_.tcp_nodelay && !peer_.is_unix()) {
    // Latency first: a reply must not wait for Nagle. Ignored if the socket refuses.
    (void)set_tcp_nodelay(fd_.get());
  }
  auto id = loop_.add_connection(fd_.get(), io::readable, *this);
  if (!id) return id.error();
  io_id_ = *id;
  set_idle_timeout(options_.idle_timeout);  // zero or Duration::max(): none
  return {};
}

void Connection::set_owner(ConnectionId id, Function<void(Connection&)> on_finished) noexcept {
  id_ = id;
  on_finished_ = std::move(on_finished);
}

void Connection::detach() noexcept {
  state_ = State::closed;
  if (io_id_) loop_.remove(io_id_);
  for (TimerId* timer : {&idle_timer_, &linger_timer_, &close_timer_}) {
    if (*timer) loop_.cancel(*timer);
    *timer = TimerId{};
  }
  io_id_ = IoId{};
}

namespace {
struct DepthGuard {
  explicit DepthGuard(int& depth) noexcept : depth_(depth) { ++depth_; }
  ~DepthGuard() { --depth_; }
  int& depth_;
};
}  // namespace

void Connection::on_events(std::uint32_t events) {
  // The common event, input for a connection that reads: straight to handle_read, a tail call
  // without a frame of its own here.
  if (events == io::readable && reading_) [[likely]] {
    handle_read();
    return;
  }
  handle_events(events);
}

// noinline: inlined, it would give on_events a frame and saved registers that the common
// event pays for too (bench/cost.sh: 285 -> 278 instructions per message with it).
[[gnu::noinline]] void Connection::handle_events(std::uint32_t events) {
  // For handle_write and handle_hangup; handle_read guards itself (on_events' fast path).
  DepthGuard guard(callback_depth_);
  if (events & (io::readable | io::hangup | io::error)) {
    if (reading_) {
      handle_read();
      if (state_ == State::closed) return;
    } else if (events & (io::hangup | io::error)) {
      // Not reading (the peer's EOF is in, or paused), yet a hangup or error is reported, as it
      // is whatever the interest: nothing may be read (EOF stays readable; paused means no
      // on_data), so the hangup itself is handled.
      handle_hangup();
      return;
    }
  }
  if (events & io::writable) handle_write();
}

void Connection::handle_read() {
  DepthGuard guard(callback_depth_);  // on_data, on_peer_shutdown
  for (int reads = options_.reads_per_event;;) {
    // With no unread input, read into the loop's shared buffer; whatever on_data leaves in it
    // moves into this connection's own buffer afterwards.
    Buffer& in = input_.empty() ? loop_.read_buffer() : input_;
    // At most 64 KiB a read, even into a large free space of its own: the fairness bound,
    // reads_per_event x 64 KiB an iteration, must not grow with a message kept whole.
    const ReadResult r = in.read_from(fd_.get(), Buffer::kOverflowSize);
    if (r.err != 0 || r.bytes == 0) [[unlikely]] {
      // Nothing was read: the shared buffer is still empty.
      if (r.bytes == 0 && r.err == 0) {
        handle_eof();
      } else if (!r.would_block()) {
        finish(reason_for(r.error()), r.error());
      }
      return;
    }
    bytes_in_ += r.bytes;
    counters_->add_in(r.bytes);
    note_activity();
    if (closing_) [[unlikely]] {
      in.clear();  // closing: input is read only to reach the peer's EOF
    } else if (handlers_.on_data) {
      handlers_.on_data(*this, in);
    }
    // The shared buffer is left as the next read needs it (empty, its block in place) unless
    // on_data left bytes in it, or moved them out and took the block with them.
    if (&in != &input_ && (!in.empty() || in.capacity() < Buffer::kOverflowSize)) [[unlikely]]
      keep_unconsumed(in);
    if (state_ == State::closed) return;
    // A short read means the socket is drained: another recv would only say EAGAIN.
    if (!r.filled || reading_paused() || --reads == 0) return;
  }
}

// After a read into the loop's shared buffer: what on_data left there moves into input_
// (dropped if on_data closed the connection); then the shared buffer is emptied, and given a
// block again if on_data moved the bytes out with theirs.
void Connection::keep_unconsumed(Buffer& shared) {
  if (!shared.empty() && state_ != State::closed) input_.append(shared.view());
  loop_.clear_read_buffer();
}

void Connection::handle_hangup() {
  if (!peer_eof_) {
    // Paused: a reset ends the connection, its unread bytes with it. A clean hangup leaves the
    // peer's last bytes in the socket, unread, until resume_reading(); the hangup is reported
    // on every wait whatever the interest, so the registration goes until then.
    if (const std::error_code ec = pending_socket_error(fd_.get())) {
      finish(reason_for(ec), ec);
      return;
    }
    loop_.remove(io_id_);
    io_id_ = IoId{};
    hangup_parked_ = true;
    return;
  }
  // After the peer's EOF: queued output first, so that a send to a peer that is gone says why
  // (EPIPE, ECONNRESET); then the socket's pending error, or a clean end.
  if (!output_.empty()) {
    handle_write();
    if (state_ == State::closed) return;
  }
  const std::error_code ec = pending_socket_error(fd_.get());
  finish(ec ? reason_for(ec) : CloseReason::peer_closed, ec);
}

void Connection::handle_eof() {
  peer_eof_ = true;
  if (state_ == State::write_shut) {  // both directions done
    finish(closing_ ? close_reason_ : CloseReason::peer_closed, {});
    return;
  }
  if (state_ == State::open) state_ = State::peer_shut;
  update_interest();  // stop reading: EOF stays readable, level-triggered
  // Closing: flushing, finishes after the write side is shut. Closed: epoll_ctl failed.
  if (closing_ || state_ == State::closed) return;
  if (handlers_.on_peer_shutdown) {
    handlers_.on_peer_shutdown(*this);
  } else {
    begin_close(CloseReason::peer_closed);
  }
}

void Connection::handle_write() {
  if (!output_.empty()) {
    ssize_t n;
    do {
      n = ::send(fd_.get(), output_.data(), output_.size(), MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && !would_block(errno)) {
      fail_write(errno_code());
      return;
    }
    if (n > 0) {
      output_.consume(static_cast<std::size_t>(n));
      count_out(static_cast<std::size_t>(n));
    }
    if (!output_.empty()) {
      // A short write means the send buffer is full: wait for the next EPOLLOUT rather than
      // hear EAGAIN from another send now. Resume reading at the low-water mark, not at zero,
      // so the peer keeps a window of work in flight; re-arm the high-water mark with it.
      if (high_water_fired_ && output_.size() < options_.low_water_mark) {
        high_water_fired_ = false;
        if (water_paused_) {
          water_paused_ = false;
          update_interest();
          if (state_ == State::closed) return;  // epoll_ctl failed: the connection ended
        }
        if (handlers_.on_low_water) {
          handlers_.on_low_water(*this);
          if (state_ == State::closed) return;
          update_interest();  // the callback may have sent or paused
        }
      }
      return;
    }
  }
  const bool was_high = high_water_fired_;
  high_water_fired_ = false;
  water_paused_ = false;
  if (was_high && handlers_.on_low_water) {
    handlers_.on_low_water(*this);
    if (state_ == State::closed) return;
    if (!output_.empty()) {  // the callback sent more
      update_interest();
      return;
    }
  }
  if (handlers_.on_drained) {
    handlers_.on_drained(*this);
    if (state_ == State::closed) return;
    if (!output_.empty()) {  // the callback sent more
      update_interest();
      return;
    }
  }
  if (state_ == State::flushing) {
    shut_write_now();
  } else {
    update_interest();
  }
}

void Connection::fail_write(std::error_code ec) {
  // Whatever the error, the stream has a hole in it now: end the connection. on_close runs
  // from the loop, never inside the caller's send().
  finish(reason_for(ec), ec);
}

// Inlined: it sits on the path of every direct send.
[[gnu::always_inline]] inline std::size_t Connection::settle_direct(ssize_t n) noexcept {
  if (n < 0) {
    if (!would_block(errno)) {
      fail_write(errno_code());
      return kSendFailed;
    }
    return 0;  // the socket is full: all of it gets queued
  }
  const auto written = static_cast<std::size_t>(n);
  count_out(written);
  return written;
}

bool Connection::send_queued(std::string_view data) {
  if (!can_send()) return false;
  if (data.empty()) return true;
  // EPOLLOUT is armed: the socket was full a moment ago. Queue; handle_write sends in order.
  // Queueing is not activity: an idle timeout still closes a peer that stopped reading.
  output_.append(data);
  return after_output_queued();
}

bool Connection::finish_send(std::string_view data, ssize_t n) {
  while (n < 0 && errno == EINTR)
    n = ::send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
  const std::size_t written = settle_direct(n);
  if (written == kSendFailed) return false;
  if (written == data.size()) return true;
  output_.append(data.substr(written));
  return after_output_queued();
}

bool Connection::send(std::string_view first, std::string_view second) {
  iovec iov[2] = {{const_cast<char*>(first.data()), first.size()},
                  {const_cast<char*>(second.data()), second.size()}};
  return send(iov, 2);
}

bool Connection::send(const iovec* iov, int count) {
  assert_in_loop();
  if (!can_send()) return false;
  std::size_t total = 0;
  for (int i = 0; i < count; ++i)
    total += iov[i].iov_len;
  if (total == 0) return true;
  if (!output_.empty()) {
    // EPOLLOUT is armed: the socket was full a moment ago. Queue; handle_write sends in order.
    queue_output(iov, count, 0);
    return after_output_queued();
  }
  return write_direct(iov, count, total);
}

bool Connection::send(std::span<const iovec> iov) {
  // send(const iovec*, int) takes any count an int holds (it splits at IOV_MAX itself); a
  // longer span goes in int-sized pieces, in order.
  constexpr auto kMaxCount = static_cast<std::size_t>(INT_MAX);
  for (; iov.size() > kMaxCount; iov = iov.subspan(kMaxCount))
    if (!send(iov.data(), static_cast<int>(kMaxCount))) return false;
  return send(iov.data(), static_cast<int>(iov.size()));
}

bool Connection::write_direct(const iovec* iov, int count, std::size_t total) {
  // sendmsg takes at most IOV_MAX entries (EMSGSIZE beyond): send those, queue the rest.
  const int direct = std::min(count, IOV_MAX);
  ssize_t n;
  do {
    if (direct == 1) {
      n = ::send(fd_.get(), iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
    } else {
      msghdr msg{};
      msg.msg_iov = const_cast<iovec*>(iov);
      msg.msg_iovlen = static_cast<std::size_t>(direct);
      n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);  // writev takes no flags: SIGPIPE
    }
  } while (n < 0 && errno == EINTR);
  const std::size_t written = settle_direct(n);
  if (written == kSendFailed) return false;
  if (written == total) return true;
  queue_output(iov, count, written);
  return after_output_queued();
}

void Connection::queue_output(const iovec* iov, int count, std::size_t skip) {
  for (int i = 0; i < count; ++i) {
    std::size_t len = iov[i].iov_len;
    if (skip >= len) {
      skip -= len;
      continue;
    }
    output_.append(static_cast<const char*>(iov[i].iov_base) + skip, len - skip);
    skip = 0;
  }
}

bool Connection::after_output_queued() {
  if (options_.max_queued_bytes != 0 && output_.size() > options_.max_queued_bytes) {
    (void)set_linger_abort(fd_.get());
    finish(CloseReason::output_limit, std::make_error_code(std::errc::no_buffer_space));
    return false;
  }
  if (output_.size() >= options_.high_water_mark && !high_water_fired_) {
    high_water_fired_ = true;
    if (options_.pause_reading_at_high_water) water_paused_ = true;
    if (handlers_.on_high_water) {
      update_interest();
      if (state_ == State::closed) return false;  // epoll_ctl failed
      DepthGuard guard(callback_depth_);
      handlers_.on_high_water(*this, output_.size());
      if (state_ == State::closed) return true;  // the bytes were taken; the callback ended it
    }
  }
  update_interest();
  return true;
}

void Connection::update_interest() {
  if (state_ == State::closed || hangup_parked_) return;
  std::uint32_t want = 0;
  // After close() shut the write side, input is drained (and discarded) regardless of pauses.
  const bool draining = closing_ && state_ == State::write_shut;
  reading_ = !peer_eof_ && (draining || !reading_paused());
  if (reading_) want |= io::readable;
  if (!output_.empty()) want |= io::writable;
  // modify() calls epoll_ctl only when `want` differs from the current interest.
  if (auto ec = loop_.modify(io_id_, want)) finish(CloseReason::error, ec);
}

void Connection::pause_reading() {
  assert_in_loop();
  user_paused_ = true;
  update_interest();
}

void Connection::resume_reading() {
  assert_in_loop();
  user_paused_ = false;
  if (water_paused_ && output_.size() < options_.low_water_mark) water_paused_ = false;
  if (hangup_parked_ && !reading_paused()) {
    unpark();
    return;
  }
  update_interest();
}

void Connection::unpark() {
  // Back on the loop: the hangup is reported again, and this time the bytes are read.
  hangup_parked_ = false;
  if (state_ == State::closed) return;
  auto id = loop_.add_connection(fd_.get(), 0, *this);
  if (!id) {
    finish(CloseReason::error, id.error());
    return;
  }
  io_id_ = *id;
  update_interest();
}

void Connection::close() {
  assert_in_loop();
  begin_close(peer_eof_ ? CloseReason::peer_closed : CloseReason::local_close);
}

void Connection::begin_close(CloseReason reason) {
  if (state_ == State::closed || closing_) return;
  closing_ = true;
  close_reason_ = reason;
  if (hangup_parked_) {
    unpark();  // close() reads (and discards) to the peer's EOF
    if (state_ == State::closed) return;
  }
  if (options_.linger > Duration::zero()) {
    linger_timer_ = loop_.after(options_.linger, [this] {
      linger_timer_ = TimerId{};
      (void)set_linger_abort(fd_.get());
      finish(close_reason_, std::make_error_code(std::errc::timed_out));
    });
  }
  if (state_ == State::write_shut) {
    update_interest();  // shutdown_write() came first: now drain input regardless of pauses
  } else if (output_.empty()) {
    shut_write_now();
  } else {
    state_ = State::flushing;
    update_interest();
  }
}

void Connection::shutdown_write() {
  assert_in_loop();
  if (!can_send()) return;  // closing, shut or closed already
  if (output_.empty()) {
    shut_write_now();
  } else {
    state_ = State::flushing;
  }
}

void Connection::shut_write_now() {
  ::shutdown(fd_.get(), SHUT_WR);
  if (peer_eof_) {
    finish(closing_ ? close_reason_ : CloseReason::peer_closed, {});
    return;
  }
  state_ = State::write_shut;
  update_interest();
}

void Connection::abort() {
  assert_in_loop();
  if (state_ == State::closed) return;
  (void)set_linger_abort(fd_.get());
  finish(CloseReason::aborted, {});
}

Result<Address> Connection::local_address() const {
  sockaddr_storage local{};
  socklen_t length = sizeof local;
  if (::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&local), &length) < 0)
    return errno_code();
  return Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&local), length);
}

void Connection::set_idle_timeout(Duration timeout) {
  assert_in_loop();
  // Duration::max() is "never", as zero: no timer, and no clock read per message for it.
  if (timeout == Duration::max()) timeout = Duration::zero();
  options_.idle_timeout = timeout;
  if (idle_timer_) loop_.cancel(idle_timer_);
  idle_timer_ = TimerId{};
  if (timeout <= Duration::zero() || state_ == State::closed) return;
  last_activity_ = loop_.now();  // the countdown starts now
  idle_timer_ = loop_.after(timeout, [this] { on_idle_timer(); });
}

void Connection::on_idle_timer() {
  DepthGuard guard(callback_depth_);
  idle_timer_ = TimerId{};
  const Duration idle = loop_.now() - last_activity_;
  if (idle >= options_.idle_timeout) {
    begin_close(CloseReason::timed_out);  // no-op when already closing: linger bounds that
    return;
  }
  // Activity since: sleep for what remains of the timeout measured from that activity.
  idle_timer_ = loop_.after(options_.idle_timeout - idle, [this] { on_idle_timer(); });
}

void Connection::finish(CloseReason reason, std::error_code ec) {
  if (state_ == State::closed) return;
  detach();
  fd_.reset();
  output_.clear();
  // input_ is left as is: an on_data that closed or aborted still holds it and may consume()
  // what it used. It is freed with the connection.
  close_reason_ = reason;
  close_ec_ = ec;
  // From the loop, never from inside the call that ended it (the caller may be iterating its
  // own registry of connections, which on_close edits). A zero-delay timer, not a deferred
  // task: the destructor can cancel it, so an owner may destroy the connection before it runs.
  close_timer_ = loop_.after(Duration::zero(), [this] {
    close_timer_ = TimerId{};
    deliver_close();
  });
}

void Connection::deliver_close() {
  DepthGuard guard(callback_depth_);
  if (handlers_.on_close) handlers_.on_close(*this, close_reason_, close_ec_);
  if (on_finished_) {
    auto done = std::move(on_finished_);
    done(*this);
  }
}

}  // namespace reactor
