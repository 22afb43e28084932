// TcpServer: a listening address plus the connections accepted on it, served by one loop or by
// several loops on several threads.
//
// Ownership. The server owns its connections. Callbacks get a Connection& valid until they
// return; keep conn.id() to find the connection later with find() (a stale id finds nothing).
// Connections close themselves (close(), abort(), peer, errors) and are destroyed at the end
// of the dispatch round; the server never destroys one under a running callback.
//
// Loops. `loops[0]` is the home loop. With several loops, each one accepts from the listening
// socket (shared with EPOLLEXCLUSIVE by default, or one SO_REUSEPORT socket per loop with
// ListenOptions::reuse_port on a TCP address; a Unix address is always shared) and owns the
// connections it accepted (ConnectionId::shard names its loop). The other loops must be running
// from start() until stop() has completed.
//
// Adopted socket. Instead of an address, the server may be given a ListenSocket that is
// already listening (ListenSocket::adopt: systemd socket activation, a hot restart). The server
// owns it until it is destroyed: a stop stops accepting but keeps the socket open (connections
// arriving meanwhile wait in its backlog), and start() after a stop serves it again. With
// several loops the one socket is shared with EPOLLEXCLUSIVE; ListenOptions (reuse_port,
// backlog) cannot apply to a socket someone else bound, and start() refuses reuse_port.
//
// Threads. Who may call what; with one loop, all of it is that loop's thread:
//   constructor, set_open_handler(), set_error_handler() (before start()), start(), destructor:
//       the home loop's thread.
//   stop(): any thread (the server must outlive the call); a callback of the server on any of
//       its loops may call it. It takes effect on the home loop (a call from another thread is
//       posted there), which alone keeps the stop's state: each loop stops its own listener and
//       connections and reports to the home loop, which runs `done` once the last loop has.
//   find(id): the thread of loops[id.shard] only (from elsewhere, post to that loop).
//   address(): the home loop's thread, or a callback of the server.
//   stats(), loop_count(): any thread.
//   for_each_connection(i, fn): the thread of loops[i] only (asserted in debug builds).
//   send(id, bytes): any thread (the server must outlive the call).
//   Callbacks: on_open and the connection's handlers run on the loop that accepted the
//   connection, on_error on the loop whose accept failed, `done` on the home loop.
//
// Destruction, on the home loop's thread and outside the server's own callbacks (asserted in
// debug builds; defer() it instead; `done` itself may destroy the server). With one loop, at
// any time: destroying the server during a stop cancels the stop (its `done` never runs), and
// open connections, and ended ones whose on_close is still due, are dropped without callbacks.
// With several loops, only before start() or
// once stop() has completed (other threads still run the server's code until then).
//
// Limits. max_connections caps open connections (over it, a new connection is accepted and
// closed at once, and counted as refused). Fd exhaustion is handled by the Listener (see
// listener.hpp) and counted here.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "reactor/address.hpp"
#include "reactor/connection.hpp"
#include "reactor/event_loop.hpp"
#include "reactor/function.hpp"
#include "reactor/listener.hpp"

namespace reactor {

struct ServerOptions {
  ListenOptions listen;
  ConnectionOptions connection;
  std::size_t max_connections = 0;  // 0: no cap
  int accepts_per_event = 64;
};

// Counters, readable from any thread.
struct ServerStats {
  std::uint64_t accepted = 0;
  std::uint64_t active = 0;
  // Accepted over max_connections and closed at once. A stop accepts nothing more: connections
  // that arrive during one wait in the backlog, uncounted, and are reset when it completes (the
  // server's own socket closes), or stay queued for the next start() (an adopted socket, which
  // the stop leaves open).
  std::uint64_t refused = 0;
  std::uint64_t fd_exhaustion = 0;  // EMFILE/ENFILE while accepting (other accept errors: on_error)
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
};

class TcpServer {
 public:
  // on_open runs for each new connection, before any of its other callbacks; set the
  // connection's context there.
  using OpenHandler = Function<void(Connection&)>;

  // One loop for the whole server.
  TcpServer(EventLoop& loop, const Address& address, ConnectionHandlers& handlers,
            const ServerOptions& options = {});
  // Several loops sharing one set of handlers (they run on every loop's thread).
  TcpServer(std::vector<EventLoop*> loops, const Address& address, ConnectionHandlers& handlers,
            const ServerOptions& options = {});
  // Several loops, each with its own handlers (per-loop protocol state without locks).
  struct LoopAndHandlers {
    EventLoop* loop;
    ConnectionHandlers* handlers;
  };
  TcpServer(std::vector<LoopAndHandlers> loops, const Address& address,
            const ServerOptions& options = {});
  // The same three, serving an adopted listening socket (see above) instead of an address.
  TcpServer(EventLoop& loop, ListenSocket socket, ConnectionHandlers& handlers,
            const ServerOptions& options = {});
  TcpServer(std::vector<EventLoop*> loops, ListenSocket socket, ConnectionHandlers& handlers,
            const ServerOptions& options = {});
  TcpServer(std::vector<LoopAndHandlers> loops, ListenSocket socket,
            const ServerOptions& options = {});
  ~TcpServer();
  TcpServer(const TcpServer&) = delete;
  TcpServer& operator=(const TcpServer&) = delete;

  void set_open_handler(OpenHandler on_open) { on_open_ = std::move(on_open); }
  void set_error_handler(Listener::ErrorHandler on_error) { on_error_ = std::move(on_error); }

  // Binds and starts accepting on every loop. Errors: those of ListenSocket::open
  // (EADDRINUSE, EACCES, ...), after which nothing listens; EALREADY
  // (std::errc::connection_already_in_progress) while the server listens or a stop is under
  // way, and then nothing changes; on an adopted socket, EINVAL when options.listen.reuse_port
  // is set. Once stop() has completed, start() listens again (on the address as given: port 0
  // gets a new port; an adopted socket is served again).
  std::error_code start();
  // The bound address (the real port when port 0 was asked). Valid after start(); after a stop,
  // the address the server last listened on. With an adopted socket, its address from the
  // constructor on.
  const Address& address() const noexcept { return bound_; }

  // The connection with this id; nullptr when it has finished (a stale id) or never existed.
  Connection* find(ConnectionId id) const noexcept;

  // Calls fn(Connection&) for each connection of loops[loop_index] that has not ended
  // (is_closed() false; those closing gracefully included), in slot order, on that loop's
  // thread, never allocating. fn may send to, close, abort or pause this or any connection:
  // ended connections keep their slots until their on_close has run from the loop, so the
  // walk never loses its place, and a connection fn ends before the walk reaches it is
  // skipped. A send may run on_high_water inside fn, as always. fn must not destroy the
  // server. A loop_index past loop_count() is asserted (release: no call).
  template <class F>
  void for_each_connection(std::size_t loop_index, F&& fn) {
    walk_connections(
        loop_index,
        [](void* f, Connection& c) { (*static_cast<std::remove_reference_t<F>*>(f))(c); },
        const_cast<void*>(static_cast<const void*>(std::addressof(fn))));
  }

  // Sends `bytes` on the connection with this id, from any thread: moves them into one task
  // posted to the connection's loop (one allocation: the task, for the id and the string;
  // the bytes are moved, not copied), which finds the connection there and send()s them. A
  // connection gone by then (a stale id), one that no longer sends (send() false), an id this
  // server never handed out, or a server destroyed meanwhile: the bytes are dropped, silently
  // (to know, post your own task and use find()). Sends from one thread to one connection go
  // out in call order (post() is FIFO per posting thread). Even on the connection's own loop
  // it posts: find(id)->send() there sends at once.
  void send(ConnectionId id, std::string bytes);

  // Graceful shutdown: stop accepting, close() every connection (flush, FIN, wait for the
  // peer's EOF), abort what is still open after `grace`, then run `done` on the home loop
  // (from a task of its own, never inside stop()). Every stop()'s `done` runs exactly once: a
  // stop() while one is under way joins it (its `done` runs after the earlier ones, in call
  // order, when that stop completes; its `grace` is ignored); on a server that does not listen
  // (not started, or stopped) the stop has nothing to wait for and `done` runs.
  void stop(Duration grace, Function<void()> done = nullptr);

  ServerStats stats() const noexcept;
  std::size_t loop_count() const noexcept { return shards_.size(); }

 private:
  class Shard;  // one loop's listener and connections (tcp_server.cpp)
  enum class Phase { idle, listening, stopping };
  EventLoop& home() const noexcept;
  void walk_connections(std::size_t loop_index, void (*call)(void*, Connection&), void* fn);
  // The home loop's side of the stop: begins it, and counts the shards' reports.
  void begin_stop(Duration grace, Function<void()> done);
  void shard_stopped();

  std::vector<std::unique_ptr<Shard>> shards_;
  Address address_;
  Address bound_;
  ServerOptions options_;
  OpenHandler on_open_;
  Listener::ErrorHandler on_error_;
  std::vector<ListenSocket> sockets_;    // one shared, or one per loop with reuse_port
  std::optional<ListenSocket> adopted_;  // served instead of sockets_, never closed by a stop
  std::atomic<std::size_t> open_connections_{0};  // all shards: the max_connections cap
  // The stop's state, home loop's thread only.
  Phase phase_ = Phase::idle;
  std::size_t shards_running_ = 0;  // shards that have not reported stopped
  Function<void()> on_stopped_;
  // Tasks posted to the home loop hold a copy and find nullptr once the server is destroyed.
  std::shared_ptr<TcpServer*> self_ = std::make_shared<TcpServer*>(this);
};

}  // namespace reactor
