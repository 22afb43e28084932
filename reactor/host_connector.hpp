// HostConnector: an outbound connection to "host:port" by name: the name resolved through a
// Resolver, then the addresses tried as RFC 8305 ("Happy Eyeballs") does. Part of the
// reactor_resolver library (it needs c-ares); the core's Connector takes addresses only.
//
// connect(target, timeout, handlers, handler): `target` is "host:port" or "[v6-literal]:port"
// (an address, as Address::parse() reads it, Unix ones included, is connected to without DNS). The
// addresses come in the Resolver's order (RFC 6724 sorted), then interleaved by family, starting
// with the first one's (IPv6, IPv4, IPv6, ...). The first attempt starts at once; each next one
// starts when the latest one fails, or `attempt_delay` (250 ms, RFC 8305's recommended value) after
// it started if it has not finished, whichever is first: a stalled address (a firewall dropping
// SYNs, a broken IPv6 path) costs attempt_delay, not a connect timeout. The first attempt to
// connect wins, and every other one is cancelled (its socket closed). The handler runs exactly
// once, later, on the loop: with the winning ConnectionHandle, or with an error and an empty
// handle: the resolver's (ResolveError: not_found, no_address, ...), the last attempt's
// (ECONNREFUSED, ...) when all failed, or ETIMEDOUT when `timeout`, counted from connect() and
// covering resolution and every attempt, ran out first.
//
// A malformed target (no port, a port out of range, an empty host) or a connect() while one
// is pending (EALREADY) is returned by connect(), and the handler is not called. cancel(), or
// destroying the HostConnector, cancels: the resolution's handler is dropped, every attempt's
// socket closed, the handler not called. Each attempt is a Connector with
// Options::configure (socket options for every attempt, before connect()); no retry: a
// HostConnector makes one connection, retrying is the caller's (a timer, then connect again).
//
// Threads: loop thread only. The Resolver and `handlers` must outlive the HostConnector (and
// `handlers` the connection). The handler may start the next connect() or destroy the
// HostConnector.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string_view>
#include <system_error>
#include <vector>

#include "reactor/address.hpp"
#include "reactor/connector.hpp"
#include "reactor/event_loop.hpp"
#include "reactor/function.hpp"
#include "reactor/resolver.hpp"

namespace reactor {

class HostConnector {
 public:
  using ConnectHandler = Connector::ConnectHandler;

  struct Options {
    Duration attempt_delay =
        std::chrono::milliseconds(250);           // RFC 8305's "Connection Attempt Delay"
    Function<std::error_code(int fd)> configure;  // each attempt's socket, before connect()
  };

  HostConnector(EventLoop& loop, Resolver& resolver) : HostConnector(loop, resolver, Options{}) {}
  HostConnector(EventLoop& loop, Resolver& resolver, Options options) noexcept;
  ~HostConnector() { cancel(); }
  HostConnector(const HostConnector&) = delete;
  HostConnector& operator=(const HostConnector&) = delete;

  std::error_code connect(std::string_view target, Duration timeout, ConnectionHandlers& handlers,
                          ConnectHandler on_connect, const ConnectionOptions& options = {},
                          TrafficCounters* counters = nullptr);
  void cancel() noexcept;
  bool pending() const noexcept { return static_cast<bool>(on_connect_); }
  // The addresses of the last resolution, in the order they are tried; attempts() of them
  // were started.
  std::span<const Address> addresses() const noexcept { return addresses_; }
  std::size_t attempts() const noexcept { return started_; }

 private:
  void on_resolved(std::error_code ec, std::span<const Address> addresses);
  void start_next();
  void on_attempt(std::size_t index, std::error_code ec, ConnectionHandle handle);
  void finish(std::error_code ec, ConnectionHandle handle);

  EventLoop& loop_;
  Resolver& resolver_;
  Options options_;
  ConnectionHandlers* handlers_ = nullptr;
  ConnectionOptions connection_options_;
  TrafficCounters* counters_ = nullptr;
  ConnectHandler on_connect_;
  Resolver::QueryId query_ = 0;
  TimerId deadline_;
  TimerId next_attempt_;
  std::vector<Address> addresses_;
  std::vector<std::unique_ptr<Connector>> attempts_;  // one per address started
  std::size_t started_ = 0;
  std::size_t failed_ = 0;
  std::error_code last_error_;
};

}  // namespace reactor
