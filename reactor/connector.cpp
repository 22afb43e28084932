#include "reactor/connector.hpp"

#include <sys/socket.h>

#include <cerrno>

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
  auto socket = open_stream_socket(to.family());
  if (!socket) return socket.error();
  to_ = to;
  handlers_ = &handlers;
  options_ = options;
  counters_ = counters;
  on_connect_ = std::move(on_connect);
  fd_ = std::move(*socket);

  std::error_code result;
  if (::connect(fd_.get(), to.sockaddr_ptr(), to.length()) == 0) {
    // Unix sockets connect at once. The handler still runs later, never inside connect().
  } else if (errno == EINPROGRESS || errno == EINTR) {
    auto id = loop_.add(fd_.get(), io::writable, [this](std::uint32_t) { on_writable(); });
    if (!id) {
      result = id.error();
    } else {
      io_id_ = *id;
      timer_ = loop_.after(timeout, [this] {
        timer_ = TimerId{};
        complete(std::make_error_code(std::errc::timed_out));
      });
      return {};
    }
  } else {
    result = errno_code();  // refused at once (Unix), unreachable, ...: also reported later
  }
  timer_ = loop_.after(Duration::zero(), [this, result] {
    timer_ = TimerId{};
    complete(result);
  });
  return {};
}

void Connector::on_writable() {
  complete(pending_socket_error(fd_.get()));
}

void Connector::cancel() noexcept {
  if (io_id_) loop_.remove(io_id_);
  if (timer_) loop_.cancel(timer_);
  io_id_ = IoId{};
  timer_ = TimerId{};
  fd_.reset();
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
