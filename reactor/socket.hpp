// Fd and socket options: where the stream layer's raw socket setup syscalls live (the datagram
// layer, datagram_socket.cpp, makes its own: its options are per datagram socket).
//
// Ownership: Fd owns one file descriptor and closes it exactly once (in its destructor or in
// reset()); it is move-only, and a moved-from Fd is empty (-1). release() hands the descriptor
// back to the caller without closing it.
// Threads: no shared state; any thread may call these functions on descriptors it owns.
// Allocation: none.
// Errors: every function returns the errno of the failed syscall as a std::error_code (empty on
// success); nothing throws. close() errors are ignored: the descriptor is gone either way.
#pragma once

#include <system_error>

#include "reactor/result.hpp"

namespace reactor {

class Fd {
 public:
  Fd() noexcept = default;
  explicit Fd(int fd) noexcept : fd_(fd) {}
  ~Fd();
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }

  // Gives up ownership without closing; the Fd becomes empty.
  int release() noexcept;
  // Closes the current descriptor (if any) and takes ownership of fd.
  void reset(int fd = -1) noexcept;

 private:
  int fd_ = -1;
};

// socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0): AF_INET, AF_INET6 or AF_UNIX.
Result<Fd> open_stream_socket(int family);

std::error_code set_nonblocking(int fd, bool on = true);
std::error_code set_cloexec(int fd, bool on = true);
// TCP_NODELAY. TCP only: a Unix-domain socket refuses it (EOPNOTSUPP), and that error is returned.
std::error_code set_tcp_nodelay(int fd, bool on = true);
std::error_code set_reuse_addr(int fd, bool on = true);
std::error_code set_reuse_port(int fd, bool on = true);
// SO_SNDBUF / SO_RCVBUF. Linux doubles the value for bookkeeping and clamps it to the
// net.core.[wr]mem_max sysctl, so getsockopt reads back something different.
std::error_code set_send_buffer(int fd, int bytes);
std::error_code set_recv_buffer(int fd, int bytes);
// SO_LINGER {on, 0}: a later close() discards unsent data and sends RST instead of FIN.
std::error_code set_linger_abort(int fd);
// getsockopt(SO_ERROR): the pending error (e.g. of a non-blocking connect), empty if none.
// Reading it clears it in the kernel.
std::error_code pending_socket_error(int fd);
// Raises the soft RLIMIT_NOFILE to the hard limit (servers with many connections need it).
std::error_code raise_fd_limit();

}  // namespace reactor
