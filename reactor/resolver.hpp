// Resolver: host names to addresses on one EventLoop, through c-ares (library reactor_resolver,
// pkg-config `reactor_resolver`; built when c-ares is found, see the `resolver` option).
//
// What it is. One c-ares channel driven only through the loop's public API: the sockets c-ares
// opens are registered with loop.add() from its socket-state callback (and removed before
// c-ares closes them), their events go to ares_process_fd(), and one loop timer follows
// ares_timeout(), recomputed by a before-wait hook (on_before_wait) before each wait that
// follows a call into c-ares (resolve(), an event, the timer). No thread, no blocking call:
// the hosts file is read and the answers parsed on the loop thread, inside resolve() and the
// loop's dispatch.
//
// resolve(host, port, family, handler) looks `host` up (AF_INET, AF_INET6 or AF_UNSPEC for both)
// and returns a QueryId. The handler runs exactly once, later, on the loop (never inside resolve(),
// even when the answer is known at once: a numeric host, the hosts file), with either the
// addresses, each carrying `port`, in the order c-ares gives them (sorted by RFC 6724's rules, the
// answer's order kept among equals), and no error; or an empty span and a ResolveError: not_found
// (NXDOMAIN: no such name), no_address (the name exists, without an address of that family),
// timeout (Options::tries attempts of Options::timeout each, doubling per round, got no answer),
// server_failure (SERVFAIL, REFUSED, a malformed answer), refused (no server could be reached),
// bad_name, ... The span is valid during the call only. /etc/hosts is consulted before DNS
// (`localhost` resolves without a server). A truncated UDP answer is retried over TCP by c-ares.
//
// cancel(id) drops the query's handler: it is never called. The lookup itself may go on in
// c-ares until it finishes unseen (c-ares 1.18 cancels only a whole channel). Cancelling a
// finished, cancelled or unknown id is a no-op (returns false). Destroying the Resolver cancels
// every query the same way: no handler runs, c-ares' sockets are deregistered and closed, the
// timer is cancelled. The loop must outlive the Resolver.
//
// Threads. Loop thread only, every method, the constructor and destructor included. A handler
// may call resolve() and cancel(), and may destroy the Resolver.
//
// Allocation. Each query allocates (its record, c-ares' own state, the address vector); this is
// set-up work, not a hot path.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "reactor/address.hpp"
#include "reactor/event_loop.hpp"
#include "reactor/function.hpp"
#include "reactor/result.hpp"

// c-ares' types, named here so that this header does not include <ares.h>.
struct ares_addrinfo;
struct ares_channeldata;

namespace reactor {

enum class ResolveError {
  not_found = 1,   // no such name (NXDOMAIN; not in the hosts file)
  no_address,      // the name exists but has no address of the family asked for
  timeout,         // no answer within Options::tries attempts
  server_failure,  // the server failed or refused, or its answer was malformed
  refused,         // no server could be reached (connection refused)
  bad_name,        // the host name, or the family, is not valid
  out_of_memory,
  other,  // any other c-ares status (message(): c-ares' own text)
};

// The category of resolve()'s errors: name "reactor.resolve"; timeout compares equal to
// std::errc::timed_out, bad_name to std::errc::invalid_argument, out_of_memory to
// std::errc::not_enough_memory.
const std::error_category& resolve_category() noexcept;
std::error_code make_error_code(ResolveError error) noexcept;

class Resolver {
 public:
  using QueryId = std::uint64_t;  // 0 is never a query
  using Handler = Function<void(std::error_code, std::span<const Address>)>;

  struct Options {
    // DNS servers as c-ares' CSV ("127.0.0.1:5353,[::1]:53"); empty: /etc/resolv.conf's.
    std::string servers;
    Duration timeout = std::chrono::seconds(2);  // first attempt's; rounded up to milliseconds
    int tries = 3;                               // attempts per server before timeout
  };

  // Throws std::system_error (resolve_category()) when c-ares cannot make its channel or does
  // not accept `servers`.
  explicit Resolver(EventLoop& loop) : Resolver(loop, Options{}) {}
  Resolver(EventLoop& loop, const Options& options);
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  QueryId resolve(std::string_view host, std::uint16_t port, int family, Handler handler);
  bool cancel(QueryId id) noexcept;

  // Queries whose handler is still due (cancelled ones not counted).
  std::size_t pending() const noexcept { return pending_; }

 private:
  struct Query;
  static void on_sock_state(void* data, int fd, int readable, int writable);
  static void on_addrinfo(void* arg, int status, int timeouts, ::ares_addrinfo* result);
  void on_io(int fd, std::uint32_t events);
  void on_timer();
  void update_timer();
  void deliver(QueryId id);

  EventLoop& loop_;
  ::ares_channeldata* channel_ = nullptr;
  std::unordered_map<int, IoId> sockets_;
  std::unordered_map<QueryId, std::unique_ptr<Query>> queries_;
  QueryId next_id_ = 1;
  std::size_t pending_ = 0;
  TimerId timer_{};
  HookId hook_{};
  bool timer_stale_ = false;  // c-ares was called since the timer was last recomputed
  bool destroying_ = false;
};

}  // namespace reactor

template <>
struct std::is_error_code_enum<reactor::ResolveError> : std::true_type {};
