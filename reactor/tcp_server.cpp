#include "reactor/tcp_server.hpp"

#include <cassert>

namespace reactor {

// What one loop owns: its Listener and the connections it accepted. Touched only on that loop's
// thread, except the counters, which other threads read.
struct TcpServer::Shard {
  struct Entry {
    std::unique_ptr<Connection> connection;
    std::uint32_t generation = 1;
  };

  EventLoop* loop = nullptr;
  ConnectionHandlers* handlers = nullptr;
  std::uint32_t index = 0;
  std::unique_ptr<Listener> listener;
  std::vector<Entry> slots;
  std::vector<std::uint32_t> free_slots;
  TrafficCounters traffic;
  std::atomic<std::uint64_t> accepted{0};
  std::atomic<std::uint64_t> active{0};
  std::atomic<std::uint64_t> refused{0};
  std::atomic<std::uint64_t> fd_exhaustion{0};
  bool stopping = false;
  bool accepting_now = false;  // inside on_accept (debug check for destruction)
  TimerId grace_timer;

  static void bump(std::atomic<std::uint64_t>& c, std::int64_t by) noexcept {
    c.store(c.load(std::memory_order_relaxed) + static_cast<std::uint64_t>(by),
            std::memory_order_relaxed);
  }
};

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
    auto shard = std::make_unique<Shard>();
    shard->loop = loops[i].loop;
    shard->handlers = loops[i].handlers;
    shard->index = static_cast<std::uint32_t>(i);
    shards_.push_back(std::move(shard));
  }
}

TcpServer::~TcpServer() {
  for (auto& shard : shards_) {
    assert(!shard->accepting_now && "TcpServer destroyed inside its own callback: defer() it");
    if (!shard->loop->in_loop_thread()) {
      assert(shard->active.load() == 0 && !shard->listener &&
             "destroy a multi-loop TcpServer only after stop() completed");
      continue;
    }
    shard->listener.reset();
    for (auto& entry : shard->slots) {
      if (!entry.connection) continue;
      assert(!entry.connection->in_callback() &&
             "TcpServer destroyed inside a connection's callback: defer() it");
      entry.connection->detach();
    }
    if (shard->grace_timer) shard->loop->cancel(shard->grace_timer);
  }
}

std::error_code TcpServer::start() {
  const bool per_loop = options_.listen.reuse_port && !address_.is_unix();
  const std::size_t count = per_loop ? shards_.size() : 1;
  Address address = address_;
  for (std::size_t i = 0; i < count; ++i) {
    auto socket = ListenSocket::open(address, options_.listen);
    if (!socket) {
      sockets_.clear();
      return socket.error();
    }
    // Port 0 with SO_REUSEPORT: the other loops join the port the first one got.
    if (i == 0) address = bound_ = socket->address();
    sockets_.push_back(std::move(*socket));
  }
  Listener::Options listener_options;
  listener_options.accepts_per_event = options_.accepts_per_event;
  listener_options.exclusive = shards_.size() > 1 && !per_loop;
  for (auto& shard_ptr : shards_) {
    Shard& shard = *shard_ptr;
    const ListenSocket& socket = sockets_[per_loop ? shard.index : 0];
    shard.listener = std::make_unique<Listener>(
        *shard.loop, socket,
        [this, &shard](Fd fd, const Address& peer) { on_accept(shard, std::move(fd), peer); },
        listener_options);
    shard.listener->set_error_handler([this, &shard](std::error_code ec) {
      Shard::bump(shard.fd_exhaustion, 1);
      if (on_error_) on_error_(ec);
    });
    if (shard.loop->in_loop_thread()) {
      // Fails only for want of memory or fds (epoll_ctl); keep the promise that nothing listens.
      if (auto ec = shard.listener->start()) {
        for (auto& s : shards_) {
          if (s->loop->in_loop_thread()) s->listener.reset();
        }
        sockets_.clear();
        return ec;
      }
    } else {
      shard.loop->post([&shard] { (void)shard.listener->start(); });
    }
  }
  return {};
}

void TcpServer::on_accept(Shard& shard, Fd socket, const Address& peer) {
  if (shard.stopping) {
    Shard::bump(shard.refused, 1);  // the socket closes here
    return;
  }
  if (options_.max_connections &&
      open_connections_.load(std::memory_order_relaxed) >= options_.max_connections) {
    Shard::bump(shard.refused, 1);
    return;
  }
  auto connection = std::make_unique<Connection>(
      *shard.loop, std::move(socket), peer, *shard.handlers, options_.connection, &shard.traffic);
  std::uint32_t slot;
  if (!shard.free_slots.empty()) {
    slot = shard.free_slots.back();
    shard.free_slots.pop_back();
  } else {
    slot = static_cast<std::uint32_t>(shard.slots.size());
    shard.slots.emplace_back();
  }
  Shard::Entry& entry = shard.slots[slot];
  connection->set_owner(ConnectionId{slot, entry.generation, shard.index},
                        [this, &shard](Connection& c) { on_finished(shard, c); });
  if (connection->start()) {
    shard.free_slots.push_back(slot);
    return;
  }
  Connection& ref = *connection;
  entry.connection = std::move(connection);
  open_connections_.fetch_add(1, std::memory_order_relaxed);
  Shard::bump(shard.accepted, 1);
  Shard::bump(shard.active, 1);
  if (on_open_) {
    shard.accepting_now = true;
    on_open_(ref);
    shard.accepting_now = false;
  }
}

void TcpServer::on_finished(Shard& shard, Connection& connection) {
  const ConnectionId id = connection.id();
  Shard::Entry& entry = shard.slots[id.slot];
  if (++entry.generation == 0) entry.generation = 1;  // stale ids find nothing from now on
  shard.free_slots.push_back(id.slot);
  open_connections_.fetch_sub(1, std::memory_order_relaxed);
  Shard::bump(shard.active, -1);
  // We are inside the connection's own call stack: destroy it after the dispatch round.
  shard.loop->defer([doomed = std::move(entry.connection)]() mutable { doomed.reset(); });
  if (shard.stopping && shard.active.load(std::memory_order_relaxed) == 0) {
    if (shard.grace_timer) shard.loop->cancel(shard.grace_timer);
    shard.grace_timer = TimerId{};
    shard_stopped();
  }
}

Connection* TcpServer::find(ConnectionId id) const noexcept {
  if (id.shard >= shards_.size()) return nullptr;
  const Shard& shard = *shards_[id.shard];
  assert(shard.loop->in_loop_thread() && "find() on the connection's own loop only");
  if (id.slot >= shard.slots.size()) return nullptr;
  const Shard::Entry& entry = shard.slots[id.slot];
  return entry.generation == id.generation ? entry.connection.get() : nullptr;
}

void TcpServer::stop(Duration grace, Function<void()> done) {
  if (shards_running_.load() != 0 || shards_[0]->stopping) return;  // already stopping
  on_stopped_ = std::move(done);
  shards_running_.store(shards_.size());
  for (auto& shard_ptr : shards_) {
    Shard& shard = *shard_ptr;
    if (shard.loop->in_loop_thread()) {
      stop_shard(shard, grace);
    } else {
      shard.loop->post([this, &shard, grace] { stop_shard(shard, grace); });
    }
  }
}

void TcpServer::stop_shard(Shard& shard, Duration grace) {
  shard.stopping = true;
  if (shard.listener) shard.listener->stop();
  if (shard.active.load(std::memory_order_relaxed) == 0) {
    shard_stopped();
    return;
  }
  shard.grace_timer = shard.loop->after(grace, [&shard] {
    shard.grace_timer = TimerId{};
    for (auto& entry : shard.slots) {
      if (entry.connection) entry.connection->abort();
    }
  });
  // By index, and no slot is added while stopping: close() may finish a connection at once.
  for (std::size_t i = 0; i < shard.slots.size(); ++i) {
    if (shard.slots[i].connection) shard.slots[i].connection->close();
  }
}

void TcpServer::shard_stopped() {
  if (shards_running_.fetch_sub(1) != 1) return;
  // The last shard to stop hands `done` to the home loop, outside every callback of ours.
  EventLoop* home = shards_[0]->loop;
  home->post([this] {
    for (auto& shard : shards_)
      shard->listener.reset();
    sockets_.clear();  // new connections are refused now, and a Unix socket file goes away
    if (on_stopped_) {
      auto done = std::move(on_stopped_);
      done();
    }
  });
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
