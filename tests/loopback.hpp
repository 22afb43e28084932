// What the loop and stream-layer tests share: running a loop until a condition holds, a plain
// blocking client socket (TCP on loopback or a Unix path) driven between loop iterations, an
// echo server's handlers, a temporary directory for Unix socket files, and this process's open
// descriptor count. Header-only, for tests; include it as "loopback.hpp".
//
// Every wait is bounded: a helper that waits gives up at its deadline and says so (false,
// PeerEnd::open), and the test ASSERTs on that. Helpers report set-up failures with EXPECT, so
// the calling test fails with the message.
#pragma once

#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "reactor/address.hpp"
#include "reactor/connection.hpp"
#include "reactor/event_loop.hpp"
#include "reactor/listener.hpp"
#include "reactor/socket.hpp"
#include "reactor/timer_queue.hpp"

namespace reactor::test {

// Generous: a condition a correct loop meets in microseconds, given time on a loaded CI box.
inline constexpr std::chrono::seconds kDeadline{10};

// Runs iterations of `loop`, each waiting at most `poll` for I/O, until `done()` holds or
// `limit` passes; returns whether it held. `done` is called once before each iteration and
// never again once it returned true, so it may do I/O (read a socket, send the next part).
template <class Pred>
bool run_until(EventLoop& loop, Pred&& done, Duration limit = kDeadline,
               Duration poll = std::chrono::milliseconds(10)) {
  const auto give_up = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= give_up) return false;
    loop.run_once(poll);
  }
  return true;
}

// Runs `loop` as run() does, with waits that no caller bounds (run_once() without a timeout),
// until `done()` holds. A wait that nothing ends is woken by a post from a guard thread after
// kDeadline, so a broken loop fails the test instead of hanging it. True when `done()` held
// without the guard's help.
template <class Pred>
bool run_unbounded_until(EventLoop& loop, Pred&& done) {
  std::atomic<bool> finished{false};
  std::atomic<bool> gave_up{false};
  std::thread guard([&] {
    const auto give_up = std::chrono::steady_clock::now() + kDeadline;
    while (!finished.load() && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (!finished.load()) {
      gave_up = true;
      loop.post([] {});
    }
  });
  bool held;
  while (!(held = done()) && !gave_up.load())
    loop.run_once();
  finished = true;
  guard.join();
  return held && !gave_up.load();
}

// Options for a loop whose timers move only with `clock` (the clock must outlive the loop).
// The CPUs this process may run on (sched_getaffinity), in increasing order; a child inherits
// them (test_threads pins LoopThreads, test_demo checks echo_server --pin).
inline std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  return cpus;
}

inline EventLoop::Options with_clock(const ManualClock& clock) {
  EventLoop::Options options;
  options.clock = &clock;
  return options;
}

// A blocking client connect: the kernel completes a loopback or Unix handshake without the
// server's loop running. Returns the connected fd, or -1 with errno set.
inline int connect_to(const Address& to) {
  int fd = ::socket(to.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (::connect(fd, to.sockaddr_ptr(), to.length()) < 0) {
    const int err = errno;
    ::close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

// The errno of a blocking connect to `to` (0 when it connected).
inline int connect_errno(const Address& to) {
  int fd = connect_to(to);
  if (fd < 0) return errno;
  ::close(fd);
  return 0;
}

// One send of all of `data` (small messages: loopback takes them whole).
inline bool send_all(int fd, const std::string& data) {
  return ::send(fd, data.data(), data.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(data.size());
}

// Reads from the client socket while running `loop`, until `n` bytes are in `out`.
inline bool receive(EventLoop& loop, int fd, std::size_t n, std::string& out) {
  return run_until(loop, [&] {
    char buf[65536];
    ssize_t r;
    while (out.size() < n && (r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) {
      out.append(buf, static_cast<std::size_t>(r));
    }
    return out.size() >= n;
  });
}

enum class PeerEnd { eof, reset, open };

// Reads (appending to `out`) while running `loop` until the server's side closes the socket;
// PeerEnd::open if it did not by the deadline.
inline PeerEnd read_until_closed(EventLoop& loop, int fd, std::string* out = nullptr) {
  PeerEnd end = PeerEnd::open;
  run_until(loop, [&] {
    char buf[65536];
    for (;;) {
      ssize_t r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
      if (r > 0) {
        if (out) out->append(buf, static_cast<std::size_t>(r));
        continue;
      }
      if (r == 0) end = PeerEnd::eof;
      if (r < 0 && errno == ECONNRESET) end = PeerEnd::reset;
      return end != PeerEnd::open;
    }
  });
  return end;
}

// A server that sends back whatever it reads.
inline ConnectionHandlers echo_handlers() {
  ConnectionHandlers h;
  h.on_data = [](Connection& c, Buffer& input) {
    c.send(input.view());
    input.consume(input.size());
  };
  return h;
}

// A temporary directory for Unix socket paths, removed with whatever is left in it.
class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/reactor-test-XXXXXX";
    const char* made = ::mkdtemp(pattern);
    EXPECT_NE(made, nullptr) << std::strerror(errno);
    if (made) path_ = made;
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string file(const char* name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// The Unix socket address of a path (an empty Address, and a failed EXPECT, if it is invalid).
inline Address unix_address(const std::string& path) {
  auto a = Address::parse("unix:" + path);
  EXPECT_TRUE(a.ok()) << path;
  return a.ok() ? *a : Address{};
}

// Fills the accept queue of the Unix listener at `address` (opened with backlog 0): connects
// until one fails, which must be at once and with EAGAIN (a Unix connect to a full queue does
// not wait). `queued` keeps the connected sockets. Call it under ASSERT_NO_FATAL_FAILURE.
inline void fill_unix_backlog(const Address& address, std::vector<Fd>& queued) {
  for (int i = 0; i < 64; ++i) {
    auto fd = open_stream_socket(AF_UNIX);
    ASSERT_TRUE(fd.ok());
    if (::connect(fd->get(), address.sockaddr_ptr(), address.length()) < 0) {
      ASSERT_EQ(errno, EAGAIN) << std::strerror(errno);
      return;
    }
    queued.push_back(std::move(*fd));
  }
  FAIL() << "the backlog never filled";
}

// A listener whose accept queue is full (backlog 0 and one connection nobody accepted): a
// new SYN is dropped and the connect hangs in SYN_SENT until it times out.
class FullBacklog {
 public:
  explicit FullBacklog(const Address& at = Address::ipv4_loopback(0)) {
    ListenOptions options;
    options.backlog = 0;
    auto socket = ListenSocket::open(at, options);
    EXPECT_TRUE(socket.ok()) << socket.error().message();
    if (!socket.ok()) return;
    socket_.emplace(std::move(*socket));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!full() && std::chrono::steady_clock::now() < deadline) {
      // Only while there is room: a connect to a full queue would hang.
      int fd = ::socket(at.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      EXPECT_GE(fd, 0);
      const Address& to = socket_->address();
      int rc = ::connect(fd, to.sockaddr_ptr(), to.length());
      EXPECT_TRUE(rc == 0 || errno == EINPROGRESS) << std::strerror(errno);
      fillers_.push_back(fd);
      pollfd pfd{fd, POLLOUT, 0};
      EXPECT_EQ(::poll(&pfd, 1, 10000), 1);
      // The handshake's last ACK reaches the queue a moment after the client is connected.
      const std::uint32_t want = static_cast<std::uint32_t>(fillers_.size());
      while (queued() < want && std::chrono::steady_clock::now() < deadline) {
        ::sched_yield();
      }
    }
    EXPECT_TRUE(full());
  }
  ~FullBacklog() {
    for (int fd : fillers_)
      ::close(fd);
  }
  const Address& address() const { return socket_->address(); }

 private:
  tcp_info info() const {
    tcp_info i{};
    socklen_t len = sizeof i;
    EXPECT_EQ(::getsockopt(socket_->fd(), IPPROTO_TCP, TCP_INFO, &i, &len), 0);
    return i;
  }
  // For a listening socket Linux reports the accept queue's length and limit here.
  std::uint32_t queued() const { return info().tcpi_unacked; }
  bool full() const { return info().tcpi_unacked > info().tcpi_sacked; }

  std::optional<ListenSocket> socket_;
  std::vector<int> fillers_;
};

// Open descriptors of this process (the directory stream's own fd included, every time), or
// -1 if /proc/self/fd cannot be read.
inline int open_fd_count() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir) return -1;
  int n = 0;
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n;
}

}  // namespace reactor::test
