// Connector: an outbound non-blocking connect, and ConnectionHandle, the owner of the
// Connection it yields.
//
// Connector::connect() starts connecting to an IPv4, IPv6 or Unix address. The handler runs
// exactly once, later, on the loop: with a ConnectionHandle on success, or with an error
// (ECONNREFUSED, ETIMEDOUT when `timeout` ran out, ENETUNREACH, EAGAIN for a Unix listener
// whose backlog is full, ...) and an empty handle. A `timeout` of Duration::max() never runs
// out. cancel() or destroying the Connector before then cancels: the handler is not called and
// the socket is closed. One connect at a time per Connector. Loop thread only.
//
// Connector::Options (the constructor's, for every connect it makes):
// - source: bound before connect(): the address (and port) the connection comes from. A port of
//   0 leaves the port to connect() (IP_BIND_ADDRESS_NO_PORT), so bound sources do not use up
//   ports that another destination could share. Its family must be the destination's.
// - configure: called with each attempt's socket before bind() and connect(), to set options
//   (buffer sizes, SO_MARK, ...); an error it returns is that attempt's error. TCP_NODELAY is
//   still set on the Connection (ConnectionOptions::no_delay).
// - retry: how many attempts in all and the backoff between them (exponential from first_delay
//   by multiplier, capped at max_delay; each delay drawn uniformly from
//   [delay x (1 - jitter), delay]). Any failed attempt (refused, timed out, unreachable, a
//   set-up error) is retried while attempts remain; the handler then runs once, with the first
//   success or the last attempt's error, and attempt() says which attempt that was. Each
//   attempt has the full `timeout`. cancel() during a backoff cancels the rest. The default is
//   one attempt: no retry. For "keep a connection to X up", connect again from on_close.
// The first attempt's set-up errors (the socket, configure, bind) are returned by connect()
// like EMFILE; a later attempt's count as that attempt's failure.
//
// ConnectionHandle owns the Connection: move-only. Dropping it (destroying or assigning over it)
// closes the socket at once without further callbacks, an on_close still due included (unsent
// output is lost; for a graceful close, or to hear on_close after abort(), keep the handle
// until on_close) and destroys the Connection at the end
// of the dispatch round, so dropping it from inside its own callback is safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <system_error>

#include "reactor/address.hpp"
#include "reactor/connection.hpp"
#include "reactor/event_loop.hpp"
#include "reactor/function.hpp"
#include "reactor/socket.hpp"

namespace reactor {

class ConnectionHandle {
 public:
  ConnectionHandle() noexcept = default;
  explicit ConnectionHandle(std::unique_ptr<Connection> connection) noexcept;
  ConnectionHandle(ConnectionHandle&& other) noexcept = default;
  ConnectionHandle& operator=(ConnectionHandle&& other) noexcept;
  ~ConnectionHandle();

  explicit operator bool() const noexcept { return connection_ != nullptr; }
  Connection* get() const noexcept { return connection_.get(); }
  Connection* operator->() const noexcept { return connection_.get(); }
  Connection& operator*() const noexcept { return *connection_; }
  void reset() noexcept;

 private:
  std::unique_ptr<Connection> connection_;
};

struct RetryPolicy {
  int max_attempts = 1;  // attempts in all, the first included; 0: no limit
  Duration first_delay = std::chrono::milliseconds(100);  // before the second; at least 1 ms
  Duration max_delay = std::chrono::seconds(30);          // the cap
  double multiplier = 2.0;                                // each delay = the last x this
  double jitter = 0.2;  // 0..1: a delay d is drawn from [d x (1 - jitter), d]
};

class Connector {
 public:
  using ConnectHandler = Function<void(std::error_code, ConnectionHandle)>;

  struct Options {
    std::optional<Address> source;                // bind() before connect()
    Function<std::error_code(int fd)> configure;  // each attempt's socket, first
    RetryPolicy retry;
  };

  explicit Connector(EventLoop& loop) noexcept : loop_(loop) {}
  Connector(EventLoop& loop, Options options) noexcept
      : loop_(loop), connector_options_(std::move(options)) {}
  ~Connector() { cancel(); }
  Connector(const Connector&) = delete;
  Connector& operator=(const Connector&) = delete;

  // `handlers` (and `counters`, if given) must outlive the connection. Errors that happen
  // before anything is in flight (EMFILE for the socket, a connect already pending: EALREADY)
  // are returned here and the handler is not called.
  std::error_code connect(const Address& to, Duration timeout, ConnectionHandlers& handlers,
                          ConnectHandler on_connect, const ConnectionOptions& options = {},
                          TrafficCounters* counters = nullptr);
  void cancel() noexcept;
  // Connecting, or waiting to retry.
  bool pending() const noexcept { return static_cast<bool>(fd_) || retrying_; }
  // The number of the attempt that is running or, in the handler, the one that ended (1: the
  // first).
  int attempt() const noexcept { return attempt_; }

 private:
  std::error_code start_attempt();
  void on_writable();
  void attempt_failed(std::error_code ec);
  void complete(std::error_code ec);
  Duration next_delay() noexcept;

  EventLoop& loop_;
  Fd fd_;
  Address to_;
  IoId io_id_;
  TimerId timer_;
  ConnectionHandlers* handlers_ = nullptr;
  ConnectionOptions options_;
  TrafficCounters* counters_ = nullptr;
  ConnectHandler on_connect_;
  Duration timeout_{};
  Options connector_options_;
  int attempt_ = 0;
  bool retrying_ = false;     // waiting out a backoff (timer_)
  Duration backoff_{};        // the last delay before jitter
  std::uint64_t random_ = 0;  // jitter's generator state (xorshift), seeded at the first retry
};

}  // namespace reactor
