#include "reactor/socket.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

namespace reactor {

Fd::~Fd() {
  reset();
}

Fd& Fd::operator=(Fd&& other) noexcept {
  if (this != &other) reset(other.release());
  return *this;
}

int Fd::release() noexcept {
  int fd = fd_;
  fd_ = -1;
  return fd;
}

void Fd::reset(int fd) noexcept {
  // Linux releases the descriptor even when close() fails (EINTR included), so retrying
  // could close a descriptor another thread just received: close once, ignore the result.
  if (fd_ >= 0 && fd_ != fd) ::close(fd_);
  fd_ = fd;
}

Result<Fd> open_stream_socket(int family) {
  int fd = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_code();
  return Fd(fd);
}

namespace {

std::error_code set_fd_flag(int fd, int get_cmd, int set_cmd, int flag, bool on) {
  int flags = ::fcntl(fd, get_cmd);
  if (flags < 0) return errno_code();
  int wanted = on ? (flags | flag) : (flags & ~flag);
  if (wanted != flags && ::fcntl(fd, set_cmd, wanted) < 0) return errno_code();
  return {};
}

std::error_code set_int_option(int fd, int level, int name, int value) {
  if (::setsockopt(fd, level, name, &value, sizeof value) < 0) return errno_code();
  return {};
}

}  // namespace

std::error_code set_nonblocking(int fd, bool on) {
  return set_fd_flag(fd, F_GETFL, F_SETFL, O_NONBLOCK, on);
}

std::error_code set_cloexec(int fd, bool on) {
  return set_fd_flag(fd, F_GETFD, F_SETFD, FD_CLOEXEC, on);
}

std::error_code set_tcp_nodelay(int fd, bool on) {
  return set_int_option(fd, IPPROTO_TCP, TCP_NODELAY, on ? 1 : 0);
}

std::error_code set_reuse_addr(int fd, bool on) {
  return set_int_option(fd, SOL_SOCKET, SO_REUSEADDR, on ? 1 : 0);
}

std::error_code set_reuse_port(int fd, bool on) {
  return set_int_option(fd, SOL_SOCKET, SO_REUSEPORT, on ? 1 : 0);
}

std::error_code set_send_buffer(int fd, int bytes) {
  return set_int_option(fd, SOL_SOCKET, SO_SNDBUF, bytes);
}

std::error_code set_recv_buffer(int fd, int bytes) {
  return set_int_option(fd, SOL_SOCKET, SO_RCVBUF, bytes);
}

std::error_code set_linger_abort(int fd) {
  linger value{};
  value.l_onoff = 1;
  value.l_linger = 0;
  if (::setsockopt(fd, SOL_SOCKET, SO_LINGER, &value, sizeof value) < 0) return errno_code();
  return {};
}

std::error_code pending_socket_error(int fd) {
  int error = 0;
  socklen_t len = sizeof error;
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) < 0) return errno_code();
  if (error == 0) return {};
  return {error, std::system_category()};
}

std::error_code raise_fd_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) < 0) return errno_code();
  if (limit.rlim_cur == limit.rlim_max) return {};
  limit.rlim_cur = limit.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &limit) < 0) return errno_code();
  return {};
}

}  // namespace reactor
