// Programs run as child processes, for the tests that drive the demo binaries as a user runs
// them (test_demo, test_soak, test_bad_input, test_http_server, test_kv_server): a Child with its
// output on pipes, a Server started on an ephemeral port, client programs (curl, redis-cli) run
// to exit, and a raw TCP client for what real clients do not send.
//
// Every wait is bounded: output and sockets are read with poll() against a deadline, exits are
// awaited on a pidfd, and a child still running when its Child is destroyed is killed (SIGKILL)
// and reaped. stdin is /dev/null; stdout and stderr are pipes, read as the caller asks. The child
// starts with no signal blocked and default dispositions, as from a shell (test_main blocks
// SIGINT, SIGTERM, ... in the test process).
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

extern char** environ;

namespace child_process {

using namespace std::chrono_literals;
using Deadline = std::chrono::steady_clock::time_point;

// Bound on any wait for a child; never reached when all is well.
inline constexpr auto kGenerous = 20s;

inline Deadline deadline_in(std::chrono::milliseconds d) {
  return std::chrono::steady_clock::now() + d;
}

inline int ms_until(Deadline deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  return static_cast<int>(std::max<std::int64_t>(0, left.count()));
}

// The path in environment variable `variable` (set by tests/meson.build), or "".
inline std::string binary(const char* variable) {
  const char* path = std::getenv(variable);
  return path ? path : "";
}

// The full path of `program` on PATH, or "" when it is not installed.
inline std::string find_program(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + program;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// Open fds of process `pid` (entries of /proc/PID/fd), or -1 when /proc cannot tell.
inline long fd_count(pid_t pid) {
  std::error_code ec;
  long n = 0;
  for (std::filesystem::directory_iterator it("/proc/" + std::to_string(pid) + "/fd", ec), end;
       !ec && it != end; it.increment(ec))
    ++n;
  return ec ? -1 : n;
}

// Polls the fd count of `pid` until `done(count)` holds or the deadline passes; returns the last
// count. (Polling: there is no event for "another process closed an fd".)
template <class Pred>
long wait_for_fd_count(pid_t pid, Pred done, Deadline deadline) {
  long n = fd_count(pid);
  while (!done(n) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    n = fd_count(pid);
  }
  return n;
}

class Child {
 public:
  // block_stop_signals: the child starts with SIGINT and SIGTERM blocked, so that threads made
  // before its main() (a preload's, such as libfiu's control thread) block them too.
  Child(const std::string& path, const std::vector<std::string>& args,
        bool block_stop_signals = false) {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0) return;
    if (::pipe2(err, O_CLOEXEC) != 0) {
      ::close(out[0]);
      ::close(out[1]);
      return;
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, err[1], STDERR_FILENO);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, defaults;  // `none` is the child's mask
    sigemptyset(&none);
    sigemptyset(&defaults);
    for (int s : {SIGINT, SIGTERM, SIGPIPE, SIGUSR1, SIGUSR2})
      sigaddset(&defaults, s);
    if (block_stop_signals) {
      sigaddset(&none, SIGINT);
      sigaddset(&none, SIGTERM);
    }
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(path.c_str()));
    for (const auto& a : args)
      argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const int rc = ::posix_spawn(&pid_, path.c_str(), &actions, &attr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    ::close(out[1]);
    ::close(err[1]);
    out_fd_ = out[0];
    err_fd_ = err[0];
    if (rc != 0) {
      pid_ = -1;
      return;
    }
    // Through syscall(): glibc 2.36's <sys/pidfd.h> lacks C linkage for C++.
    pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
  }

  ~Child() {
    if (running()) {
      ::kill(pid_, SIGKILL);
      (void)wait(deadline_in(kGenerous));
    }
    for (int fd : {out_fd_, err_fd_, pidfd_}) {
      if (fd >= 0) ::close(fd);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  bool started() const { return pid_ > 0 && pidfd_ >= 0; }
  bool running() const { return started() && !status_; }
  // Whether it is still running at this moment (an exit seen now is reaped).
  bool alive() {
    (void)wait(std::chrono::steady_clock::now());
    return running();
  }
  pid_t pid() const { return pid_; }
  void signal(int signo) const {
    if (running()) ::kill(pid_, signo);
  }

  // The next line of stdout (without its newline); nullopt at EOF or the deadline.
  std::optional<std::string> read_line(Deadline deadline) {
    for (;;) {
      if (auto pos = out_.find('\n', out_scanned_); pos != std::string::npos) {
        std::string line = out_.substr(out_scanned_, pos - out_scanned_);
        out_scanned_ = pos + 1;
        return line;
      }
      if (!pump(deadline, /*until_eof=*/false)) return std::nullopt;
    }
  }

  // Reads both pipes until EOF, then reaps the child. Returns its exit code, or nullopt if it
  // did not exit normally before the deadline (killed by a signal, or still running).
  std::optional<int> finish(Deadline deadline) {
    while (out_fd_ >= 0 || err_fd_ >= 0) {
      if (!pump(deadline, /*until_eof=*/true)) break;
    }
    return wait(deadline);
  }

  // Waits for the exit (not for EOF on the pipes).
  std::optional<int> wait(Deadline deadline) {
    if (!started()) return std::nullopt;
    if (!status_) {
      pollfd p{pidfd_, POLLIN, 0};
      int n;
      do {
        n = ::poll(&p, 1, ms_until(deadline));
      } while (n < 0 && errno == EINTR);
      if (n <= 0) return std::nullopt;
      int status = 0;
      if (::waitpid(pid_, &status, 0) != pid_) return std::nullopt;
      status_ = status;
    }
    if (!WIFEXITED(*status_)) return std::nullopt;
    return WEXITSTATUS(*status_);
  }

  bool killed_by_signal() const { return status_ && WIFSIGNALED(*status_); }
  int termination_signal() const { return killed_by_signal() ? WTERMSIG(*status_) : 0; }
  const std::string& out() const { return out_; }
  const std::string& err() const { return err_; }
  std::string first_err_line() const { return err_.substr(0, err_.find('\n')); }

 private:
  // One poll over the open pipes, appending what arrives. false at the deadline, or when
  // only EOF was seen and the caller wanted a line.
  bool pump(Deadline deadline, bool until_eof) {
    std::array<pollfd, 2> fds{};
    int count = 0;
    for (int fd : {out_fd_, err_fd_}) {
      if (fd >= 0) fds[count++] = pollfd{fd, POLLIN, 0};
    }
    if (count == 0) return false;
    if (!until_eof && out_fd_ < 0) return false;
    int n;
    do {
      n = ::poll(fds.data(), count, ms_until(deadline));
    } while (n < 0 && errno == EINTR);
    if (n <= 0) return false;
    for (int i = 0; i < count; ++i) {
      if (!fds[i].revents) continue;
      const bool is_out = fds[i].fd == out_fd_;
      char buf[4096];
      const ssize_t got = ::read(fds[i].fd, buf, sizeof buf);
      if (got > 0) {
        (is_out ? out_ : err_).append(buf, static_cast<std::size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        ::close(fds[i].fd);
        (is_out ? out_fd_ : err_fd_) = -1;
      }
    }
    return true;
  }

  pid_t pid_ = -1;
  int pidfd_ = -1;
  int out_fd_ = -1;
  int err_fd_ = -1;
  std::string out_;
  std::size_t out_scanned_ = 0;
  std::string err_;
  std::optional<int> status_;
};

// A server binary started with `--listen 127.0.0.1:0 ARGS...`, once it printed `listening on`.
class Server {
 public:
  Server(const std::string& path, std::vector<std::string> args) : child_(path, with_listen(args)) {
    auto line = child_.read_line(deadline_in(kGenerous));
    const std::string prefix = "listening on ";
    if (line && line->rfind(prefix, 0) == 0) {
      address_ = line->substr(prefix.size());
      port_ = static_cast<std::uint16_t>(std::stoi(address_.substr(address_.rfind(':') + 1)));
    }
  }
  bool ready() const { return port_ != 0; }
  std::uint16_t port() const { return port_; }
  std::string port_text() const { return std::to_string(port_); }
  const std::string& address() const { return address_; }
  Child& child() { return child_; }

 private:
  static std::vector<std::string> with_listen(std::vector<std::string> args) {
    args.insert(args.begin(), {"--listen", "127.0.0.1:0"});
    return args;
  }
  Child child_;
  std::string address_;
  std::uint16_t port_ = 0;
};

// A client program run to its exit.
struct ProgramRun {
  std::optional<int> exit_code;
  std::string out, err;
};

inline ProgramRun run_program(const std::string& path, const std::vector<std::string>& args,
                              std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  Child child(path, args);
  ProgramRun r;
  r.exit_code = child.finish(deadline_in(timeout));
  r.out = child.out();
  r.err = child.err();
  return r;
}

// A blocking-free TCP client for what real clients do not send.
class RawClient {
 public:
  explicit RawClient(std::uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return;
    const int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~RawClient() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  bool connected() const { return fd_ >= 0; }

  bool send(std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  // Half-close: FIN after what was sent; reading goes on.
  bool shutdown_write() { return ::shutdown(fd_, SHUT_WR) == 0; }

  // Sends one byte per send() call, waiting for each to leave (TCP_NODELAY) before the next.
  bool send_byte_by_byte(std::string_view bytes) {
    for (char c : bytes) {
      if (!send(std::string_view(&c, 1))) return false;
    }
    return true;
  }

  // Reads until `received()` holds at least `size` bytes, EOF, an error or the deadline.
  // True when it does.
  bool read_at_least(std::size_t size, Deadline deadline = deadline_in(kGenerous)) {
    while (received_.size() < size) {
      if (!read_some(deadline)) return false;
    }
    return true;
  }

  // Reads until `text` appears in received() (true) or EOF/error/deadline (false).
  bool read_until(std::string_view text, Deadline deadline = deadline_in(kGenerous)) {
    while (received_.find(text) == std::string::npos) {
      if (!read_some(deadline)) return false;
    }
    return true;
  }

  // Reads until the peer's EOF (true), or a reset/error/the deadline (false).
  bool read_to_eof(Deadline deadline = deadline_in(kGenerous)) {
    while (!eof_) {
      if (!read_some(deadline) && !eof_) return false;
    }
    return true;
  }

  const std::string& received() const { return received_; }
  // Returns what was received so far and forgets it.
  std::string take() { return std::exchange(received_, {}); }
  bool eof() const { return eof_; }
  int error() const { return error_; }  // errno of a failed read (ECONNRESET: a reset)

 private:
  bool read_some(Deadline deadline) {
    if (eof_ || error_ != 0 || fd_ < 0) return false;
    pollfd p{fd_, POLLIN, 0};
    int n;
    do {
      n = ::poll(&p, 1, ms_until(deadline));
    } while (n < 0 && errno == EINTR);
    if (n <= 0) return false;
    char buf[65536];
    ssize_t got;
    do {
      got = ::recv(fd_, buf, sizeof buf, 0);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
      error_ = errno;
      return false;
    }
    if (got == 0) {
      eof_ = true;
      return false;
    }
    received_.append(buf, static_cast<std::size_t>(got));
    return true;
  }

  int fd_ = -1;
  std::string received_;
  bool eof_ = false;
  int error_ = 0;
};

// How many times `needle` occurs in `haystack`.
inline std::size_t count_of(std::string_view haystack, std::string_view needle) {
  std::size_t n = 0;
  for (auto pos = haystack.find(needle); pos != std::string_view::npos;
       pos = haystack.find(needle, pos + needle.size()))
    ++n;
  return n;
}

}  // namespace child_process
