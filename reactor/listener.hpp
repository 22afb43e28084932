// ListenSocket and Listener: a bound, listening socket, and the accepting of it on one loop.
//
// ListenSocket owns the socket: bind + listen on an IPv4, IPv6 or Unix address. SO_REUSEADDR is
// set for TCP; SO_REUSEPORT only on request, because with it a second process of the same user
// binds the same port silently and "address already in use" can no longer be reported. A stale
// Unix socket file (nobody accepts: connect is refused) is removed before binding; a live one
// is EADDRINUSE; the file is removed when the ListenSocket is destroyed. Any thread.
//
// adopt() takes a socket that is already bound and listening, inherited from a parent process
// (systemd socket activation, a hot restart handing its listeners on): it checks that the fd is
// a listening stream socket, makes it non-blocking and close-on-exec, and reads its family and
// bound address (getsockname). Options such as SO_REUSEPORT stay as the parent set them. An
// adopted Unix socket's file is never removed: whoever bound it owns it.
//
// Listener accepts on one EventLoop (its thread only). Several loops may share one ListenSocket
// (each Listener registers it with EPOLLEXCLUSIVE, so one wake-up per connection, not a
// thundering herd), or each loop may own a SO_REUSEPORT socket. The ListenSocket must outlive
// its Listeners.
//
// Accepting: accept4(SOCK_NONBLOCK | SOCK_CLOEXEC) in a loop, at most accepts_per_event per
// readiness so that a connection storm cannot starve established connections. The readiness is
// level-triggered, so no accept error may leave a connection queued and the listener
// registered: the loop would spin on it. By errno:
// - EINTR, ECONNABORTED, EPROTO, EPERM (a firewall) and the network errors Linux passes on
//   through accept (ENETDOWN, ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP,
//   ENETUNREACH): that one connection is lost, accepting goes on; not reported.
// - EMFILE/ENFILE (no fd for the new connection): a reserved spare fd is closed, the pending
//   connection accepted and closed at once, and the spare reopened, so the backlog drains; on_error
//   reports it and fd_exhaustion() counts it. Should the spare not relieve it (no spare, or its
//   fd taken at once), accepting pauses.
// - ENOMEM, ENOBUFS (memory pressure), and any error not listed here: on_error reports it and
//   accepting pauses.
// A pause deregisters the listener for pause_on_exhaustion, then registers it again (accept4 is
// tried once more when a connection is queued, and fails or succeeds as above). Should that
// registration fail (epoll_ctl, ENOMEM), on_error reports it and another pause follows.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <system_error>

#include "reactor/address.hpp"
#include "reactor/event_loop.hpp"
#include "reactor/function.hpp"
#include "reactor/result.hpp"
#include "reactor/socket.hpp"

namespace reactor {

struct ListenOptions {
  int backlog = SOMAXCONN;
  bool reuse_port = false;  // TCP only; see above for the caveat
};

class ListenSocket {
 public:
  // Errors: EADDRINUSE, EACCES (privileged port, directory permissions), EADDRNOTAVAIL, ...
  static Result<ListenSocket> open(const Address& address, const ListenOptions& options = {});
  // Takes ownership of `fd` (closed on error too). Errors: ENOTSOCK (not a socket),
  // EPROTOTYPE (a socket, but not SOCK_STREAM: UDP, SOCK_SEQPACKET), EINVAL (a stream socket
  // that does not listen), EAFNOSUPPORT (neither IPv4, IPv6 nor Unix), EBADF (not an open fd).
  static Result<ListenSocket> adopt(Fd fd);
  ListenSocket(ListenSocket&& other) noexcept;
  ListenSocket& operator=(ListenSocket&& other) noexcept;
  ~ListenSocket();

  int fd() const noexcept { return fd_.get(); }
  // The bound address: the real port when port 0 was asked.
  const Address& address() const noexcept { return address_; }

 private:
  ListenSocket(Fd fd, Address address, bool owns_path) noexcept;
  Fd fd_;
  Address address_;
  bool owns_path_ = false;  // a Unix path to unlink on close
};

class Listener {
 public:
  // Called with each accepted socket (non-blocking, close-on-exec) and its peer address.
  using AcceptHandler = Function<void(Fd socket, const Address& peer)>;
  using ErrorHandler = Function<void(std::error_code)>;

  struct Options {
    int accepts_per_event = 64;
    bool exclusive = false;  // EPOLLEXCLUSIVE: set when several loops share the socket
    Duration pause_on_exhaustion = std::chrono::milliseconds(100);
  };

  // Does not own `socket`.
  Listener(EventLoop& loop, const ListenSocket& socket, AcceptHandler on_accept,
           const Options& options);
  Listener(EventLoop& loop, const ListenSocket& socket, AcceptHandler on_accept);
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  std::error_code start();
  void stop() noexcept;  // deregisters; start() may register again

  // Each accept4 error that shed a connection or paused accepting (see above), once per
  // occurrence, and a failed re-registration at the end of a pause (then another pause follows).
  // Not the errors that lose one connection (ECONNABORTED, ...).
  void set_error_handler(ErrorHandler handler) { on_error_ = std::move(handler); }

  std::uint64_t accepted() const noexcept { return accepted_; }
  // EMFILE/ENFILE only; memory errors are not fd exhaustion.
  std::uint64_t fd_exhaustion() const noexcept { return fd_exhaustion_; }

 private:
  void on_readable();
  enum class Shed { one, none_pending, failed };
  // The spare-fd trick: close the spare, accept the pending connection on its fd and close it,
  // reopen the spare. `one` when a pending connection left the queue; `failed` when none could
  // (no spare, or accept4 failed again other than with EAGAIN).
  Shed shed_one();
  // Deregisters until pause_on_exhaustion has passed.
  void pause();
  void resume_later();

  EventLoop& loop_;
  int listen_fd_;
  AcceptHandler on_accept_;
  ErrorHandler on_error_;
  Options options_;
  IoId io_id_;
  TimerId retry_timer_;
  Fd spare_;
  std::uint64_t accepted_ = 0;
  std::uint64_t fd_exhaustion_ = 0;
};

}  // namespace reactor
