#include "reactor/connector.hpp"

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>

namespace reactor {

ConnectionHandle::ConnectionHandle(std::unique_ptr<Connection> connection) noexcept
    : connection_(std::move(connection)) {}

ConnectionHandle& ConnectionHandle::operator=(ConnectionHandle&& other) noexcept {
  if (this != &other) {
    reset();
    connection_ = std::move(other.connection_);
  }
  return *this;
}

ConnectionHandle::~ConnectionHandle() {
  reset();
}

void ConnectionHandle::reset() noexcept {
  if (!connection_) return;
  connection_->detach();  // no callback from now on
  // The handle may be dropped inside the connection's own callback: destroy after the round.
  EventLoop& loop = connection_->loop();
  loop.defer([connection = std::move(connection_)]() mutable { connection.reset(); });
}

std::error_code Connector::connect(const Address& to, Duration timeout,
                                   ConnectionHandlers& handlers, ConnectHandler on_connect,
                                   const ConnectionOptions& options, TrafficCounters* counters) {
  if (pending()) return std::make_error_code(std::errc::connection_already_in_progress);
  to_ = to;
  timeout_ = timeout;
  handlers_ = &handlers;
  options_ = options;
  counters_ = counters;
  attempt_ = 0;
  backoff_ = Duration::zero();
  if (auto ec = start_attempt()) return ec;
  on_connect_ = std::move(on_connect);
  return {};
}

// Opens, configures, binds and connects one attempt's socket. Set-up errors are returned with
// nothing in flight; a connect() error is reported later, through attempt_failed().
std::error_code Connector::start_attempt() {
  ++attempt_;
  auto socket = open_stream_socket(to_.family());
  if (!socket) return socket.error();
  Fd fd = std::move(*socket);
  if (connector_options_.configure) {
    if (auto ec = connector_options_.configure(fd.get())) return ec;
  }
  if (const auto& source = connector_options_.source) {
    if (source->family() != to_.family())
      return std::make_error_code(std::errc::address_family_not_supported);
    if (!source->is_unix() && source->port() == 0) {
      const int on = 1;
      ::setsockopt(fd.get(), IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &on, sizeof on);  // best effort
    }
    if (::bind(fd.get(), source->sockaddr_ptr(), source->length()) != 0) return errno_code();
  }
  fd_ = std::move(fd);

  std::error_code result;
  if (::connect(fd_.get(), to_.sockaddr_ptr(), to_.length()) == 0) {
    // Unix sockets connect at once. The handler still runs later, never inside connect().
  } else if (errno == EINPROGRESS || errno == EINTR) {
    auto id = loop_.add(fd_.get(), io::writable, [this](std::uint32_t) { on_writable(); });
    if (!id) {
      result = id.error();
    } else {
      io_id_ = *id;
      timer_ = loop_.after(timeout_, [this] {
        timer_ = TimerId{};
        attempt_failed(std::make_error_code(std::errc::timed_out));
      });
      return {};
    }
  } else {
    result = errno_code();  // refused at once (Unix), unreachable, ...: also reported later
  }
  timer_ = loop_.after(Duration::zero(), [this, result] {
    timer_ = TimerId{};
    if (result) {
      attempt_failed(result);
    } else {
      complete({});
    }
  });
  return {};
}

void Connector::on_writable() {
  if (auto ec = pending_socket_error(fd_.get())) {
    attempt_failed(ec);
  } else {
    complete({});
  }
}

// An attempt failed: retry after a backoff while attempts remain, else report its error.
void Connector::attempt_failed(std::error_code ec) {
  const int max = connector_options_.retry.max_attempts;
  if (max != 0 && attempt_ >= max) {
    complete(ec);
    return;
  }
  if (io_id_) loop_.remove(io_id_);
  if (timer_) loop_.cancel(timer_);
  io_id_ = IoId{};
  fd_.reset();
  retrying_ = true;
  timer_ = loop_.after(next_delay(), [this] {
    timer_ = TimerId{};
    retrying_ = false;
    if (auto set_up_error = start_attempt()) attempt_failed(set_up_error);
  });
}

Duration Connector::next_delay() noexcept {
  const RetryPolicy& retry = connector_options_.retry;
  if (attempt_ <= 1) {
    // At least 1 ms: a zero delay would retry a refused address on every iteration, for ever
    // with no attempt limit.
    backoff_ = std::max<Duration>(std::min(retry.first_delay, retry.max_delay),
                                  std::chrono::milliseconds(1));
  } else {
    // In double: the product may pass what a Duration holds before the cap applies.
    const double next = static_cast<double>(backoff_.count()) * std::max(1.0, retry.multiplier);
    backoff_ = next >= static_cast<double>(retry.max_delay.count())
                   ? retry.max_delay
                   : Duration(static_cast<Duration::rep>(next));
  }
  const double jitter = std::clamp(retry.jitter, 0.0, 1.0);
  if (jitter == 0.0) return backoff_;
  if (random_ == 0) {
    // Seeded per connector, so connectors retrying together spread out.
    random_ = static_cast<std::uint64_t>(loop_.clock_now().time_since_epoch().count()) ^
              reinterpret_cast<std::uintptr_t>(this) ^ 0x9E3779B97F4A7C15ull;
    if (random_ == 0) random_ = 1;
  }
  random_ ^= random_ << 13;  // xorshift64
  random_ ^= random_ >> 7;
  random_ ^= random_ << 17;
  const double unit = static_cast<double>(random_ >> 11) / 9007199254740992.0;  // [0, 1)
  const double scale = 1.0 - jitter * unit;                                     // (1 - jitter, 1]
  return Duration(static_cast<Duration::rep>(static_cast<double>(backoff_.count()) * scale));
}

void Connector::cancel() noexcept {
  if (io_id_) loop_.remove(io_id_);
  if (timer_) loop_.cancel(timer_);
  io_id_ = IoId{};
  timer_ = TimerId{};
  fd_.reset();
  retrying_ = false;
  on_connect_ = nullptr;
}

void Connector::complete(std::error_code ec) {
  if (io_id_) loop_.remove(io_id_);
  if (timer_) loop_.cancel(timer_);
  io_id_ = IoId{};
  timer_ = TimerId{};
  // Moved out first: the handler may start the next connect on this Connector.
  ConnectHandler handler = std::move(on_connect_);
  Fd fd = std::move(fd_);
  if (ec) {
    fd.reset();
    handler(ec, ConnectionHandle{});
    return;
  }
  auto connection =
      std::make_unique<Connection>(loop_, std::move(fd), to_, *handlers_, options_, counters_);
  if (auto start_error = connection->start()) {
    handler(start_error, ConnectionHandle{});
    return;
  }
  handler({}, ConnectionHandle(std::move(connection)));
}

}  // namespace reactor
