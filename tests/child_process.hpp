// A program run as a child process, for the tests that drive the demo binaries as a user runs
// them (test_demo, test_soak, test_bad_input).
//
// Every wait is bounded: output is read with poll() against a deadline, exits are awaited on a
// pidfd, and a child still running when its Child is destroyed is killed (SIGKILL) and reaped.
// stdin is /dev/null; stdout and stderr are pipes, read as the caller asks. The child starts
// with no signal blocked and default dispositions, as from a shell (test_main blocks SIGINT,
// SIGTERM, ... in the test process).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
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
#include <string>
#include <system_error>
#include <thread>
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
  Child(const std::string& path, const std::vector<std::string>& args) {
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
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    for (int s : {SIGINT, SIGTERM, SIGPIPE, SIGUSR1, SIGUSR2})
      sigaddset(&defaults, s);
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

}  // namespace child_process
