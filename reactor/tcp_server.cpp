#include "reactor/tcp_server.hpp"

#include <cassert>
#include <mutex>

namespace reactor {

// What one loop owns: its Listener and the connections it accepted (the slot table that ids
// index). Touched only on that loop's thread, except the counters, which other threads read,
// and `listener`, which the home loop sets before it posts start() here and resets after this
// shard reported stopped.
class TcpServer::Shard {
 public:
  Shard(TcpServer& server, EventLoop& loop, ConnectionHandlers& handlers, std::uint32_t index)
      : loop(loop), handlers_(handlers), server_(server), index_(index) {
    gate->shard = this;
  }
  ~Shard() {
    std::lock_guard lock(gate->mutex);
    gate->shard = nullptr;
  }

  // The Listener's handlers: a new connection for this shard (or refused), an accept error.
  void accept(Fd socket, const Address& peer);
  void accept_failed(std::error_code ec);
  // The connection's owner callback, after its on_close: frees the slot.
  void finish(Connection& connection);
  // Stops accepting and closes every connection; aborts what is left after `grace`. Reports
  // to the home loop once no connection is left.
  void stop(Duration grace);
  Connection* find(ConnectionId id) const noexcept;
  // for_each_connection(): fn on each connection that has not ended.
  void walk(void (*call)(void*, Connection&), void* fn);
  // For the server's destructor: drops every connection without callbacks.
  void detach_all() noexcept;

  // Single writer (this loop's thread), readable from any thread.
  static void bump(std::atomic<std::uint64_t>& c, std::int64_t by) noexcept {
    c.store(c.load(std::memory_order_relaxed) + static_cast<std::uint64_t>(by),
            std::memory_order_relaxed);
  }

  EventLoop& loop;
  std::unique_ptr<Listener> listener;
  TrafficCounters traffic;
  std::atomic<std::uint64_t> accepted{0};
  std::atomic<std::uint64_t> active{0};
  std::atomic<std::uint64_t> refused{0};
  std::atomic<std::uint64_t> fd_exhaustion{0};
  bool stopping = false;
  bool in_listener_callback = false;  // on_open or on_error running (debug check)

  // How a task posted by TcpServer::send() reaches the shard: `shard` is cleared when the
  // shard is destroyed, and a task that runs later drops its bytes. A lock rather than an
  // atomic: a multi-loop server may be destroyed on the home thread (after a completed stop)
  // while this loop still runs a send task that uses the shard; the lock makes one wait.
  struct Gate {
    std::mutex mutex;
    Shard* shard = nullptr;
  };
  const std::shared_ptr<Gate> gate = std::make_shared<Gate>();

 private:
  void report_stopped();

  struct Entry {
    std::unique_ptr<Connection> connection;
    std::uint32_t generation = 1;
  };

  ConnectionHandlers& handlers_;
  TcpServer& server_;
  std::uint32_t index_;
  std::vector<Entry> slots_;
  std::vector<std::uint32_t> free_slots_;
  TimerId grace_timer_;
};

void TcpServer::Shard::accept(Fd socket, const Address& peer) {
  // Not reached in a stop (the listener stops first and checks its registration before every
  // accept4); kept so that a change there cannot hand a stopping shard a connection.
  if (stopping) {
    bump(refused, 1);  // the socket closes here
    return;
  }
  if (server_.options_.max_connections &&
      server_.open_connections_.load(std::memory_order_relaxed) >=
          server_.options_.max_connections) {
    bump(refused, 1);
    return;
  }
  auto connection = std::make_unique<Connection>(loop, std::move(socket), peer, handlers_,
                                                 server_.options_.connection, &traffic);
  std::uint32_t slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    slot = static_cast<std::uint32_t>(slots_.size());
    slots_.emplace_back();
  }
  Entry& entry = slots_[slot];
  connection->set_owner(ConnectionId{slot, entry.generation, index_},
                        [this](Connection& c) { finish(c); });
  if (connection->start()) {
    free_slots_.push_back(slot);
    return;
  }
  Connection& ref = *connection;
  entry.connection = std::move(connection);
  server_.open_connections_.fetch_add(1, std::memory_order_relaxed);
  bump(accepted, 1);
  bump(active, 1);
  if (server_.on_open_) {
    in_listener_callback = true;
    server_.on_open_(ref);
    in_listener_callback = false;
  }
}

void TcpServer::Shard::accept_failed(std::error_code ec) {
  // The Listener reports memory and unknown accept errors too (it pauses for those); only a
  // full fd table is fd exhaustion.
  if (ec == std::errc::too_many_files_open || ec == std::errc::too_many_files_open_in_system)
    bump(fd_exhaustion, 1);
  if (server_.on_error_) {
    in_listener_callback = true;
    server_.on_error_(ec);
    in_listener_callback = false;
  }
}

void TcpServer::Shard::finish(Connection& connection) {
  const ConnectionId id = connection.id();
  Entry& entry = slots_[id.slot];
  if (++entry.generation == 0) entry.generation = 1;  // stale ids find nothing from now on
  free_slots_.push_back(id.slot);
  server_.open_connections_.fetch_sub(1, std::memory_order_relaxed);
  bump(active, -1);
  // We are inside the connection's own call stack: destroy it after the dispatch round.
  loop.defer([doomed = std::move(entry.connection)]() mutable { doomed.reset(); });
  if (stopping && active.load(std::memory_order_relaxed) == 0) {
    if (grace_timer_) loop.cancel(grace_timer_);
    grace_timer_ = TimerId{};
    report_stopped();
  }
}

Connection* TcpServer::Shard::find(ConnectionId id) const noexcept {
  assert(loop.in_loop_thread() && "find() on the connection's own loop only");
  if (id.slot >= slots_.size()) return nullptr;
  const Entry& entry = slots_[id.slot];
  return entry.generation == id.generation ? entry.connection.get() : nullptr;
}

void TcpServer::Shard::walk(void (*call)(void*, Connection&), void* fn) {
  assert(loop.in_loop_thread() && "for_each_connection() on that loop's thread only");
  // By index, re-reading the size: fn may end connections, which stay in their slots until
  // their on_close has run from the loop (never inside fn); no slot is added inside fn.
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    Connection* connection = slots_[i].connection.get();
    if (connection && !connection->is_closed()) call(fn, *connection);
  }
}

void TcpServer::Shard::stop(Duration grace) {
  stopping = true;
  if (listener) listener->stop();
  if (active.load(std::memory_order_relaxed) == 0) {
    report_stopped();
    return;
  }
  grace_timer_ = loop.after(grace, [this] {
    grace_timer_ = TimerId{};
    for (auto& entry : slots_) {
      if (entry.connection) entry.connection->abort();
    }
  });
  // By index, and no slot is added while stopping (close() no longer edits the table: on_close
  // and the slot's release come later, from the loop).
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    if (slots_[i].connection) slots_[i].connection->close();
  }
}

// Once the last shard's report arrives, the home loop runs `done`, which may destroy the
// server: so the report leaves at the end of the dispatch round, when nothing on this loop
// (the rest of stop(), a connection's own close path) still uses the shard.
void TcpServer::Shard::report_stopped() {
  loop.defer([home = &server_.home(), self = server_.self_] {
    home->post([self] {
      if (TcpServer* server = *self) server->shard_stopped();
    });
  });
}

void TcpServer::Shard::detach_all() noexcept {
  listener.reset();
  for (auto& entry : slots_) {
    if (!entry.connection) continue;
    assert(!entry.connection->in_callback() &&
           "TcpServer destroyed inside a connection's callback: defer() it");
    entry.connection->detach();
  }
  if (grace_timer_) loop.cancel(grace_timer_);
}

namespace {
std::vector<TcpServer::LoopAndHandlers> sharing(const std::vector<EventLoop*>& loops,
                                                ConnectionHandlers& handlers) {
  std::vector<TcpServer::LoopAndHandlers> result;
  for (EventLoop* loop : loops)
    result.push_back({loop, &handlers});
  return result;
}
}  // namespace

TcpServer::TcpServer(EventLoop& loop, const Address& address, ConnectionHandlers& handlers,
                     const ServerOptions& options)
    : TcpServer(std::vector<LoopAndHandlers>{{&loop, &handlers}}, address, options) {}

TcpServer::TcpServer(std::vector<EventLoop*> loops, const Address& address,
                     ConnectionHandlers& handlers, const ServerOptions& options)
    : TcpServer(sharing(loops, handlers), address, options) {}

TcpServer::TcpServer(std::vector<LoopAndHandlers> loops, const Address& address,
                     const ServerOptions& options)
    : address_(address), bound_(address), options_(options) {
  assert(!loops.empty() && "a TcpServer needs at least one loop");
  for (std::size_t i = 0; i < loops.size(); ++i) {
    shards_.push_back(std::make_unique<Shard>(*this, *loops[i].loop, *loops[i].handlers,
                                              static_cast<std::uint32_t>(i)));
  }
}

TcpServer::TcpServer(EventLoop& loop, ListenSocket socket, ConnectionHandlers& handlers,
                     const ServerOptions& options)
    : TcpServer(std::vector<LoopAndHandlers>{{&loop, &handlers}}, std::move(socket), options) {}

TcpServer::TcpServer(std::vector<EventLoop*> loops, ListenSocket socket,
                     ConnectionHandlers& handlers, const ServerOptions& options)
    : TcpServer(sharing(loops, handlers), std::move(socket), options) {}

TcpServer::TcpServer(std::vector<LoopAndHandlers> loops, ListenSocket socket,
                     const ServerOptions& options)
    : TcpServer(std::move(loops), socket.address(), options) {
  adopted_.emplace(std::move(socket));
}

TcpServer::~TcpServer() {
  assert(home().in_loop_thread() && "destroy a TcpServer on its home loop's thread");
  *self_ = nullptr;  // what is in flight to the home loop is cancelled
  for (auto& shard : shards_) {
    if (!shard->loop.in_loop_thread()) {
      assert(phase_ == Phase::idle &&
             "destroy a multi-loop TcpServer only before start() or after stop() completed");
      continue;
    }
    assert(!shard->in_listener_callback &&
           "TcpServer destroyed inside its own callback: defer() it");
    shard->detach_all();
  }
}

EventLoop& TcpServer::home() const noexcept {
  return shards_[0]->loop;
}

std::error_code TcpServer::start() {
  assert(home().in_loop_thread() && "start() on the home loop's thread");
  // Opening the address again would fail (or, with port 0, bind elsewhere) and its cleanup
  // would close the socket the listeners use: refuse, and change nothing.
  if (phase_ != Phase::idle) return std::make_error_code(std::errc::connection_already_in_progress);
  assert(sockets_.empty() && "a completed stop closed them");
  // SO_REUSEPORT needs a socket per loop, bound by us: an adopted socket is one, bound by another.
  if (adopted_ && options_.listen.reuse_port)
    return std::make_error_code(std::errc::invalid_argument);
  const bool per_loop = options_.listen.reuse_port && !address_.is_unix();
  const std::size_t count = adopted_ ? 0 : per_loop ? shards_.size() : 1;
  Address address = address_;
  Address bound = address_;  // an adopted socket's address
  for (std::size_t i = 0; i < count; ++i) {
    auto socket = ListenSocket::open(address, options_.listen);
    if (!socket) {
      sockets_.clear();
      return socket.error();
    }
    // Port 0 with SO_REUSEPORT: the other loops join the port the first one got.
    if (i == 0) address = bound = socket->address();
    sockets_.push_back(std::move(*socket));
  }
  Listener::Options listener_options;
  listener_options.accepts_per_event = options_.accepts_per_event;
  listener_options.exclusive = shards_.size() > 1 && !per_loop;
  for (std::size_t i = 0; i < shards_.size(); ++i) {
    Shard& shard = *shards_[i];
    shard.listener = std::make_unique<Listener>(
        shard.loop, adopted_ ? *adopted_ : sockets_[per_loop ? i : 0],
        [&shard](Fd fd, const Address& peer) { shard.accept(std::move(fd), peer); },
        listener_options);
    shard.listener->set_error_handler([&shard](std::error_code ec) { shard.accept_failed(ec); });
    if (!shard.loop.in_loop_thread()) continue;  // started below, on its own loop
    shard.stopping = false;                      // a start after a completed stop
    // Fails only for want of memory or fds (epoll_ctl); keep the promise that nothing listens.
    if (auto ec = shard.listener->start()) {
      for (auto& s : shards_)
        s->listener.reset();
      sockets_.clear();
      return ec;
    }
  }
  for (auto& shard_ptr : shards_) {
    Shard& shard = *shard_ptr;
    if (shard.loop.in_loop_thread()) continue;
    shard.loop.post([&shard] {
      shard.stopping = false;
      (void)shard.listener->start();
    });
  }
  bound_ = bound;
  phase_ = Phase::listening;
  return {};
}

Connection* TcpServer::find(ConnectionId id) const noexcept {
  if (id.shard >= shards_.size()) return nullptr;
  return shards_[id.shard]->find(id);
}

void TcpServer::walk_connections(std::size_t loop_index, void (*call)(void*, Connection&),
                                 void* fn) {
  assert(loop_index < shards_.size() && "for_each_connection(): no such loop");
  if (loop_index >= shards_.size()) return;
  shards_[loop_index]->walk(call, fn);
}

void TcpServer::send(ConnectionId id, std::string bytes) {
  if (!id || id.shard >= shards_.size()) return;
  Shard& shard = *shards_[id.shard];
  // One Function on the heap (the capture is larger than its inline storage); the string's
  // buffer moves along with it.
  shard.loop.post([gate = shard.gate, id, bytes = std::move(bytes)] {
    std::lock_guard lock(gate->mutex);
    if (!gate->shard) return;  // the server is gone
    if (Connection* connection = gate->shard->find(id)) (void)connection->send(bytes);
  });
}

void TcpServer::stop(Duration grace, Function<void()> done) {
  if (home().in_loop_thread()) {
    begin_stop(grace, std::move(done));
    return;
  }
  home().post([self = self_, grace, done = std::move(done)]() mutable {
    if (TcpServer* server = *self) server->begin_stop(grace, std::move(done));
  });
}

void TcpServer::begin_stop(Duration grace, Function<void()> done) {
  if (phase_ == Phase::stopping) {
    // Joins the stop under way: a caller waiting on its `done` must not wait forever.
    if (!done) return;
    if (!on_stopped_) {
      on_stopped_ = std::move(done);
    } else {
      on_stopped_ = [first = std::move(on_stopped_), then = std::move(done)]() mutable {
        first();
        then();
      };
    }
    return;
  }
  phase_ = Phase::stopping;
  on_stopped_ = std::move(done);
  shards_running_ = shards_.size();
  for (auto& shard_ptr : shards_) {
    Shard& shard = *shard_ptr;
    if (shard.loop.in_loop_thread()) {
      shard.stop(grace);
    } else {
      shard.loop.post([&shard, grace] { shard.stop(grace); });
    }
  }
}

void TcpServer::shard_stopped() {
  assert(phase_ == Phase::stopping && shards_running_ > 0);
  if (--shards_running_ != 0) return;
  // Every shard's listener is stopped: nothing uses them or the sockets any more.
  for (auto& shard : shards_)
    shard->listener.reset();
  // New connections are refused now, and a Unix socket file goes away (an adopted socket stays).
  sockets_.clear();
  phase_ = Phase::idle;
  if (on_stopped_) {
    auto done = std::move(on_stopped_);
    done();  // may destroy the server: nothing after this
  }
}

ServerStats TcpServer::stats() const noexcept {
  ServerStats s;
  for (const auto& shard : shards_) {
    s.accepted += shard->accepted.load(std::memory_order_relaxed);
    s.active += shard->active.load(std::memory_order_relaxed);
    s.refused += shard->refused.load(std::memory_order_relaxed);
    s.bytes_in += shard->traffic.bytes_in.load(std::memory_order_relaxed);
    s.bytes_out += shard->traffic.bytes_out.load(std::memory_order_relaxed);
    s.fd_exhaustion += shard->fd_exhaustion.load(std::memory_order_relaxed);
  }
  return s;
}

}  // namespace reactor
