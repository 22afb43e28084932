#include "reactor/listener.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace reactor {

namespace {

// A Unix socket file nobody accepts on is left over from a process that died: connecting to it
// is refused. Anything else (accepting, or a non-socket file) must not be removed.
bool is_stale_unix_socket(const Address& address) {
  // connect() to a regular file is refused too: only ever remove a socket file.
  struct stat st {};
  if (::lstat(std::string(address.unix_path()).c_str(), &st) < 0 || !S_ISSOCK(st.st_mode)) {
    return false;
  }
  auto probe = open_stream_socket(AF_UNIX);
  if (!probe) return false;
  if (::connect(probe->get(), address.sockaddr_ptr(), address.length()) == 0) return false;
  return errno == ECONNREFUSED;
}

// accept4 failed for the one connection it took off the queue, or was interrupted: the next call
// may succeed at once. Linux passes a new connection's pending network errors on through accept
// (accept(2)), and each of those dequeues that connection, so retrying cannot spin.
bool lost_one_connection(int err) noexcept {
  switch (err) {
    case EINTR:
    case ECONNABORTED:
    case EPROTO:
    case EPERM:  // a firewall rule
    case ENETDOWN:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case EOPNOTSUPP:
    case ENETUNREACH:
      return true;
    default:
      return false;
  }
}

bool fd_exhausted(int err) noexcept {
  return err == EMFILE || err == ENFILE;
}

}  // namespace

Result<ListenSocket> ListenSocket::open(const Address& address, const ListenOptions& options) {
  auto socket = open_stream_socket(address.family());
  if (!socket) return socket.error();
  const int fd = socket->get();
  const bool unix_path = address.is_unix() && !address.is_abstract();
  if (!address.is_unix()) {
    if (auto ec = set_reuse_addr(fd)) return ec;
    if (options.reuse_port) {
      if (auto ec = set_reuse_port(fd)) return ec;
    }
  }
  if (::bind(fd, address.sockaddr_ptr(), address.length()) < 0) {
    auto ec = errno_code();
    if (!(ec == std::errc::address_in_use && unix_path && is_stale_unix_socket(address))) return ec;
    ::unlink(std::string(address.unix_path()).c_str());
    if (::bind(fd, address.sockaddr_ptr(), address.length()) < 0) return errno_code();
  }
  if (::listen(fd, options.backlog) < 0) {
    auto ec = errno_code();
    if (unix_path) ::unlink(std::string(address.unix_path()).c_str());
    return ec;
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  Address actual = address;
  if (!address.is_unix() && ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len) == 0) {
    if (auto a = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&bound), len)) actual = *a;
  }
  return ListenSocket(std::move(*socket), actual, unix_path);
}

Result<ListenSocket> ListenSocket::adopt(Fd fd) {
  const int raw = fd.get();
  int value = 0;
  socklen_t len = sizeof value;
  // SO_TYPE fails with ENOTSOCK on a file or pipe, EBADF on a closed fd.
  if (::getsockopt(raw, SOL_SOCKET, SO_TYPE, &value, &len) < 0) return errno_code();
  if (value != SOCK_STREAM) return std::make_error_code(std::errc::wrong_protocol_type);
  len = sizeof value;
  if (::getsockopt(raw, SOL_SOCKET, SO_ACCEPTCONN, &value, &len) < 0) return errno_code();
  if (!value) return std::make_error_code(std::errc::invalid_argument);
  sockaddr_storage bound{};
  len = sizeof bound;
  if (::getsockname(raw, reinterpret_cast<sockaddr*>(&bound), &len) < 0) return errno_code();
  // EAFNOSUPPORT for a family other than IPv4, IPv6, Unix.
  auto address = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&bound), len);
  if (!address) return address.error();
  // The parent may have left it blocking (systemd does): a blocking accept4 would hang the loop.
  if (auto ec = set_nonblocking(raw)) return ec;
  if (auto ec = set_cloexec(raw)) return ec;
  return ListenSocket(std::move(fd), *address, /*owns_path=*/false);
}

ListenSocket::ListenSocket(Fd fd, Address address, bool owns_path) noexcept
    : fd_(std::move(fd)), address_(address), owns_path_(owns_path) {}

ListenSocket::ListenSocket(ListenSocket&& other) noexcept
    : fd_(std::move(other.fd_)), address_(other.address_), owns_path_(other.owns_path_) {
  other.owns_path_ = false;
}

ListenSocket& ListenSocket::operator=(ListenSocket&& other) noexcept {
  if (this != &other) {
    if (owns_path_) ::unlink(std::string(address_.unix_path()).c_str());
    fd_ = std::move(other.fd_);
    address_ = other.address_;
    owns_path_ = other.owns_path_;
    other.owns_path_ = false;
  }
  return *this;
}

ListenSocket::~ListenSocket() {
  if (owns_path_) ::unlink(std::string(address_.unix_path()).c_str());
}

Listener::Listener(EventLoop& loop, const ListenSocket& socket, AcceptHandler on_accept)
    : Listener(loop, socket, std::move(on_accept), Options{}) {}

Listener::Listener(EventLoop& loop, const ListenSocket& socket, AcceptHandler on_accept,
                   const Options& options)
    : loop_(loop), listen_fd_(socket.fd()), on_accept_(std::move(on_accept)), options_(options) {}

Listener::~Listener() {
  stop();
}

std::error_code Listener::start() {
  if (io_id_) return {};
  if (retry_timer_) loop_.cancel(retry_timer_);
  retry_timer_ = TimerId{};
  if (!spare_) spare_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  const std::uint32_t interest = io::readable | (options_.exclusive ? io::exclusive : 0);
  auto id = loop_.add(listen_fd_, interest, [this](std::uint32_t) { on_readable(); });
  if (!id) return id.error();
  io_id_ = *id;
  return {};
}

void Listener::stop() noexcept {
  if (retry_timer_) loop_.cancel(retry_timer_);
  retry_timer_ = TimerId{};
  if (io_id_) loop_.remove(io_id_);
  io_id_ = IoId{};
}

void Listener::on_readable() {
  for (int i = 0; i < options_.accepts_per_event && io_id_; ++i) {
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&peer), &len,
                       SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) return;
      if (lost_one_connection(err)) continue;
      if (fd_exhausted(err)) ++fd_exhaustion_;
      if (on_error_) on_error_(std::error_code(err, std::system_category()));
      if (fd_exhausted(err)) {
        switch (shed_one()) {
          case Shed::one:
            continue;
          case Shed::none_pending:
            // accept4 reports EMFILE before looking at the queue: once it is empty, stop, or
            // each readiness would spin through accepts_per_event failed accepts.
            return;
          case Shed::failed:
            break;
        }
      }
      // The connection is still queued and the readiness level-triggered: retrying now would
      // fail the same way in every iteration. Memory pressure (ENOMEM, ENOBUFS) passes with
      // time, so does fd exhaustion the spare cannot relieve; an error not listed above is
      // unknown here, and a pause keeps it from spinning too.
      pause();
      return;
    }
    Fd socket(fd);
    ++accepted_;
    auto address = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&peer), len);
    on_accept_(std::move(socket), address ? *address : Address{});
  }
}

Listener::Shed Listener::shed_one() {
  if (!spare_) spare_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!spare_) return Shed::failed;
  spare_.reset();
  int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  const int err = errno;
  if (fd >= 0) ::close(fd);  // the peer sees the connection closed at once, not a hang
  spare_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (fd >= 0 || lost_one_connection(err)) return Shed::one;
  if (err == EAGAIN || err == EWOULDBLOCK) return Shed::none_pending;
  return Shed::failed;  // the fd went elsewhere at once (ENFILE), or another error
}

void Listener::pause() {
  if (!io_id_) return;
  loop_.remove(io_id_);
  io_id_ = IoId{};
  resume_later();
}

void Listener::resume_later() {
  retry_timer_ = loop_.after(options_.pause_on_exhaustion, [this] {
    retry_timer_ = TimerId{};
    // epoll_ctl may fail under the same memory pressure: say so and try again, rather than
    // leave the listener silently deregistered for good.
    if (auto ec = start()) {
      if (on_error_) on_error_(ec);
      resume_later();
    }
  });
}

}  // namespace reactor
