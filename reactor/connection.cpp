#include "reactor/connection.hpp"

#include <sys/socket.h>

#include <algorithm>
#include <cassert>
#include <cerrno>

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
  }
  return "unknown";
}

Connection::Connection(EventLoop& loop, Fd fd, const Address& peer, ConnectionHandlers& handlers,
                       const ConnectionOptions& options, TrafficCounters* counters)
    : loop_(loop),
      handlers_(handlers),
      counters_(counters),
      fd_(std::move(fd)),
      options_(options),
      peer_(peer) {}

Connection::~Connection() {
  if (!closed_) detach();
  if (idle_timer_) loop_.cancel(idle_timer_);
  if (linger_timer_) loop_.cancel(linger_timer_);
}

std::error_code Connection::start() {
  if (options_.tcp_nodelay && !peer_.is_unix()) {
    // Latency first: a reply must not wait for Nagle. Ignored if the socket refuses.
    (void)set_tcp_nodelay(fd_.get());
  }
  auto id = loop_.add(fd_.get(), io::readable, [this](std::uint32_t events) { on_events(events); });
  if (!id) return id.error();
  io_id_ = *id;
  if (options_.idle_timeout > Duration::zero()) set_idle_timeout(options_.idle_timeout);
  return {};
}

void Connection::set_owner(ConnectionId id, Function<void(Connection&)> on_finished) noexcept {
  id_ = id;
  on_finished_ = std::move(on_finished);
}

void Connection::detach() noexcept {
  if (closed_) return;
  closed_ = true;
  can_send_ = false;
  loop_.remove(io_id_);
  if (idle_timer_) loop_.cancel(idle_timer_);
  if (linger_timer_) loop_.cancel(linger_timer_);
  idle_timer_ = linger_timer_ = TimerId{};
}

namespace {
struct DepthGuard {
  explicit DepthGuard(int& depth) noexcept : depth_(depth) { ++depth_; }
  ~DepthGuard() { --depth_; }
  int& depth_;
};
}  // namespace

void Connection::on_events(std::uint32_t events) {
  DepthGuard guard(callback_depth_);
  if (events & (io::readable | io::hangup | io::error)) {
    handle_read();
    if (closed_) return;
  }
  if (events & io::writable) handle_write();
}

void Connection::handle_read() {
  // Reading paused (by the user or the high-water mark) still reads when the kernel reports a
  // hangup or error: the level-triggered report would repeat forever otherwise.
  for (int i = 0; i < options_.reads_per_event; ++i) {
    // With no unread input, read into the loop's shared buffer; whatever on_data leaves in it
    // moves into this connection's own buffer afterwards.
    Buffer* shared = input_.empty() ? loop_.lend_read_buffer() : nullptr;
    Buffer& in = shared ? *shared : input_;
    const ReadResult r = in.read_from(fd_.get());
    if (r.err != 0 || r.bytes == 0) [[unlikely]] {
      if (shared) loop_.return_read_buffer(shared);
      if (r.bytes == 0 && r.err == 0) {
        handle_eof();
      } else if (!r.would_block()) {
        const std::error_code ec = write_error_ ? write_error_ : r.error();
        finish(reason_for(ec), ec);
      }
      return;
    }
    bytes_in_ += r.bytes;
    if (counters_) counters_->add_in(r.bytes);
    note_activity();
    if (closing_) [[unlikely]] {
      in.clear();  // closing: input is read only to reach the peer's EOF
    } else if (handlers_.on_data) {
      handlers_.on_data(*this, in);
    }
    if (shared) {
      if (!shared->empty() && !closed_) input_.append(shared->view());
      loop_.return_read_buffer(shared);
    }
    if (closed_) return;
    // A short read means the socket is drained: another recv would only say EAGAIN.
    if (!r.filled || user_paused_ || water_paused_) return;
  }
}

void Connection::handle_eof() {
  peer_eof_ = true;
  if (write_error_) {
    finish(reason_for(write_error_), write_error_);
    return;
  }
  if (write_shut_) {  // both directions done
    finish(closing_ ? close_reason_ : CloseReason::peer_closed, {});
    return;
  }
  update_interest();     // stop reading: EOF stays readable, level-triggered
  if (closing_) return;  // flushing; finishes after the write side is shut
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
    } else if (n > 0) {
      output_.consume(static_cast<std::size_t>(n));
      count_out(static_cast<std::size_t>(n));
    }
    if (!output_.empty()) {
      // A short write means the send buffer is full: wait for the next EPOLLOUT rather than
      // hear EAGAIN from another send now. Resume reading at the low-water mark, not at zero,
      // so the peer keeps a window of work in flight; re-arm the high-water mark with it.
      if (water_paused_ && output_.size() < options_.low_water_mark) {
        water_paused_ = false;
        high_water_fired_ = false;
        update_interest();
      }
      return;
    }
  }
  high_water_fired_ = false;
  water_paused_ = false;
  if (write_error_) {
    update_interest();
    return;
  }
  if (handlers_.on_drained) {
    handlers_.on_drained(*this);
    if (closed_) return;
    if (!output_.empty()) {  // the callback sent more
      update_interest();
      return;
    }
  }
  if (closing_ || shut_after_flush_) {
    shut_write_now();
  } else {
    update_interest();
  }
}

void Connection::fail_write(std::error_code ec) noexcept {
  // Reported once, through on_close, when the hangup that follows arrives: never from inside
  // the caller's send().
  write_error_ = ec;
  can_send_ = false;
  output_.clear();
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

bool Connection::send(std::string_view data) {
  if (!can_send_) return false;
  if (data.empty()) return true;
  if (output_.empty()) [[likely]] {
    // The common case, kept short: one send of the whole message from the caller's bytes.
    const ssize_t n = ::send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
    if (static_cast<std::size_t>(n) == data.size()) [[likely]] {
      count_out(data.size());
      return true;
    }
    return finish_send(data, n);
  }
  // EPOLLOUT is armed: the socket was full a moment ago. Queue; handle_write sends in order.
  // Queueing is not activity: an idle timeout still closes a peer that stopped reading.
  output_.append(data);
  after_output_queued();
  return true;
}

bool Connection::finish_send(std::string_view data, ssize_t n) {
  while (n < 0 && errno == EINTR)
    n = ::send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
  const std::size_t written = settle_direct(n);
  if (written == kSendFailed) return false;
  if (written == data.size()) return true;
  output_.append(data.substr(written));
  after_output_queued();
  return true;
}

bool Connection::send(std::string_view first, std::string_view second) {
  iovec iov[2] = {{const_cast<char*>(first.data()), first.size()},
                  {const_cast<char*>(second.data()), second.size()}};
  return send(iov, 2);
}

bool Connection::send(const iovec* iov, int count) {
  if (!can_send_) return false;
  std::size_t total = 0;
  for (int i = 0; i < count; ++i)
    total += iov[i].iov_len;
  if (total == 0) return true;
  if (!output_.empty()) {
    // EPOLLOUT is armed: the socket was full a moment ago. Queue; handle_write sends in order.
    queue_output(iov, count, 0);
    after_output_queued();
    return true;
  }
  return write_direct(iov, count, total);
}

bool Connection::write_direct(const iovec* iov, int count, std::size_t total) {
  ssize_t n;
  do {
    if (count == 1) {
      n = ::send(fd_.get(), iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
    } else {
      msghdr msg{};
      msg.msg_iov = const_cast<iovec*>(iov);
      msg.msg_iovlen = static_cast<std::size_t>(count);
      n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);  // writev takes no flags: SIGPIPE
    }
  } while (n < 0 && errno == EINTR);
  const std::size_t written = settle_direct(n);
  if (written == kSendFailed) return false;
  if (written == total) return true;
  queue_output(iov, count, written);
  after_output_queued();
  return true;
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

void Connection::after_output_queued() {
  if (output_.size() >= options_.high_water_mark && !high_water_fired_) {
    high_water_fired_ = true;
    if (options_.pause_reading_at_high_water) water_paused_ = true;
    if (handlers_.on_high_water) {
      update_interest();
      handlers_.on_high_water(*this, output_.size());
      if (closed_) return;
    }
  }
  update_interest();
}

void Connection::update_interest() {
  if (closed_) return;
  std::uint32_t want = 0;
  // After close() shut the write side, input is drained (and discarded) regardless of pauses.
  const bool draining = closing_ && write_shut_;
  if (!peer_eof_ && (draining || (!user_paused_ && !water_paused_))) want |= io::readable;
  if (!output_.empty()) want |= io::writable;
  // modify() calls epoll_ctl only when `want` differs from the current interest.
  if (auto ec = loop_.modify(io_id_, want)) finish(CloseReason::error, ec);
}

void Connection::pause_reading() {
  user_paused_ = true;
  update_interest();
}

void Connection::resume_reading() {
  user_paused_ = false;
  if (water_paused_ && output_.size() < options_.low_water_mark) water_paused_ = false;
  update_interest();
}

void Connection::close() {
  begin_close(peer_eof_ ? CloseReason::peer_closed : CloseReason::local_close);
}

void Connection::begin_close(CloseReason reason) {
  if (closed_ || closing_) return;
  closing_ = true;
  can_send_ = false;
  close_reason_ = reason;
  if (options_.linger > Duration::zero()) {
    linger_timer_ = loop_.after(options_.linger, [this] {
      linger_timer_ = TimerId{};
      (void)set_linger_abort(fd_.get());
      finish(close_reason_, std::make_error_code(std::errc::timed_out));
    });
  }
  if (write_error_) {
    finish(reason_for(write_error_), write_error_);
  } else if (output_.empty()) {
    shut_write_now();
  } else {
    update_interest();
  }
}

void Connection::shutdown_write() {
  if (closed_ || write_shut_ || closing_) return;
  if (output_.empty()) {
    shut_write_now();
  } else {
    shut_after_flush_ = true;
    can_send_ = false;
  }
}

void Connection::shut_write_now() {
  ::shutdown(fd_.get(), SHUT_WR);
  write_shut_ = true;
  can_send_ = false;
  shut_after_flush_ = false;
  if (peer_eof_) {
    finish(closing_ ? close_reason_ : CloseReason::peer_closed, {});
    return;
  }
  update_interest();
}

void Connection::abort() {
  if (closed_) return;
  (void)set_linger_abort(fd_.get());
  finish(CloseReason::aborted, {});
}

void Connection::set_idle_timeout(Duration timeout) {
  options_.idle_timeout = timeout;
  if (idle_timer_) loop_.cancel(idle_timer_);
  idle_timer_ = TimerId{};
  if (timeout <= Duration::zero() || closed_) return;
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
  if (closed_) return;
  detach();
  fd_.reset();
  output_.clear();
  // input_ is left as is: an on_data that closed or aborted (directly, or from on_high_water
  // inside its send) still holds it and may consume() what it used. It is freed with the
  // connection, at the end of the dispatch round.
  if (handlers_.on_close) handlers_.on_close(*this, reason, ec);
  if (on_finished_) {
    auto done = std::move(on_finished_);
    done(*this);
  }
}

}  // namespace reactor
