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
// ConnectionHandle owns the Connection: move-only. Dropping it (destroying or assigning over it)
// closes the socket at once without further callbacks, an on_close still due included (unsent
// output is lost; for a graceful close, or to hear on_close after abort(), keep the handle
// until on_close) and destroys the Connection at the end
// of the dispatch round, so dropping it from inside its own callback is safe.
#pragma once

#include <memory>
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

class Connector {
 public:
  using ConnectHandler = Function<void(std::error_code, ConnectionHandle)>;

  explicit Connector(EventLoop& loop) noexcept : loop_(loop) {}
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
  bool pending() const noexcept { return static_cast<bool>(fd_); }

 private:
  void on_writable();
  void complete(std::error_code ec);

  EventLoop& loop_;
  Fd fd_;
  Address to_;
  IoId io_id_;
  TimerId timer_;
  ConnectionHandlers* handlers_ = nullptr;
  ConnectionOptions options_;
  TrafficCounters* counters_ = nullptr;
  ConnectHandler on_connect_;
};

}  // namespace reactor
