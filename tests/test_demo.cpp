// The demo binaries as a user runs them: echo_server and reactor-load as child processes.
//
// Their paths come from the environment (ECHO_SERVER, REACTOR_LOAD; see tests/meson.build).
// Every wait is bounded: output is read with poll() against a deadline, exits are awaited on a
// pidfd, and a child still running when a test ends is killed.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "child_process.hpp"
#include "loopback.hpp"

namespace {

using namespace child_process;  // Child, deadlines, binary(): tests/child_process.hpp
using reactor::test::allowed_cpus;

// An echo_server child that printed its `listening on` lines.
class Server {
 public:
  explicit Server(std::vector<std::string> args, std::size_t addresses = 1)
      : child_(binary("ECHO_SERVER"), std::move(args)) {
    const Deadline deadline = deadline_in(kGenerous);
    while (addresses_.size() < addresses) {
      auto line = child_.read_line(deadline);
      if (!line) return;
      const std::string prefix = "listening on ";
      if (line->rfind(prefix, 0) == 0) addresses_.push_back(line->substr(prefix.size()));
    }
  }
  bool ready(std::size_t addresses = 1) const { return addresses_.size() == addresses; }
  const std::string& address(std::size_t i = 0) const { return addresses_.at(i); }
  Child& child() { return child_; }

 private:
  Child child_;
  std::vector<std::string> addresses_;
};

std::string port_of(const std::string& address) {
  return address.substr(address.rfind(':') + 1);
}

struct LoadResult {
  std::optional<int> exit_code;
  nlohmann::json json;
  std::string out, err;
};

LoadResult run_load(const std::vector<std::string>& args) {
  Child load(binary("REACTOR_LOAD"), args);
  LoadResult r;
  r.exit_code = load.finish(deadline_in(60s));
  r.out = load.out();
  r.err = load.err();
  r.json = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  return r;
}

// One run of an echo_server binary that is expected to exit by itself (errors, --help).
struct Exit {
  std::optional<int> code;
  std::string out, err, first_err_line;
};

Exit run_server_to_exit(const std::vector<std::string>& args) {
  Child child(binary("ECHO_SERVER"), args);
  Exit e;
  e.code = child.finish(deadline_in(kGenerous));
  e.out = child.out();
  e.err = child.err();
  e.first_err_line = child.first_err_line();
  return e;
}

class DemoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (binary("ECHO_SERVER").empty() || binary("REACTOR_LOAD").empty()) {
      GTEST_SKIP() << "ECHO_SERVER and REACTOR_LOAD must name the demo binaries";
    }
  }
};

// Checks an echo-mode JSON result: counts present, no error, bytes match the messages.
void expect_clean_echo(const LoadResult& r, int connections, int size, int depth) {
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  ASSERT_TRUE(r.json.is_object()) << r.out;
  for (const char* key : {"mode", "target", "connections", "duration_s", "messages", "bytes",
                          "errors", "msgs_per_s", "mib_per_s", "conns_per_s", "latency_us"}) {
    EXPECT_TRUE(r.json.contains(key)) << key;
  }
  EXPECT_EQ(r.json["mode"], "echo");
  EXPECT_EQ(r.json["connections"], connections);
  EXPECT_EQ(r.json["errors"], 0);
  const auto messages = r.json["messages"].get<std::uint64_t>();
  const auto bytes = r.json["bytes"].get<std::uint64_t>();
  EXPECT_GT(messages, 0u);
  // Every completed message's bytes came back, plus at most the messages in flight at the end.
  EXPECT_GE(bytes, messages * static_cast<std::uint64_t>(size));
  EXPECT_LE(bytes, (messages + static_cast<std::uint64_t>(connections * depth)) *
                       static_cast<std::uint64_t>(size));
  const auto& latency = r.json["latency_us"];
  for (const char* key : {"p50", "p90", "p99", "p999", "max"}) {
    EXPECT_TRUE(latency.contains(key)) << key;
  }
  EXPECT_GT(latency["p50"].get<double>(), 0.0);
  EXPECT_LE(latency["p50"].get<double>(), latency["p99"].get<double>());
  EXPECT_LE(latency["p99"].get<double>(), latency["max"].get<double>());
}

TEST_F(DemoTest, EchoLoadVerifiesEveryByteAndReportsJson) {
  Server server({"--listen", "127.0.0.1:0"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  auto r = run_load({"echo", "--target", server.address(), "--connections", "4", "--size", "1000",
                     "--depth", "3", "--duration", "1", "--json"});
  expect_clean_echo(r, 4, 1000, 3);
  EXPECT_EQ(r.json["target"], server.address());
}

TEST_F(DemoTest, AcceptLoadCountsConnectionsPerSecond) {
  Server server({"--listen", "127.0.0.1:0"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  auto r = run_load(
      {"accept", "--target", server.address(), "--connections", "4", "--duration", "1", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  ASSERT_TRUE(r.json.is_object()) << r.out;
  EXPECT_EQ(r.json["mode"], "accept");
  EXPECT_EQ(r.json["errors"], 0);
  EXPECT_GT(r.json["messages"].get<std::uint64_t>(), 0u);
  EXPECT_EQ(r.json["bytes"], r.json["messages"]);  // one byte echoed per connection
  EXPECT_GT(r.json["conns_per_s"].get<double>(), 0.0);
}

TEST_F(DemoTest, PortInUseExitsOneNamingTheAddress) {
  Server first({"--listen", "127.0.0.1:0"});
  ASSERT_TRUE(first.ready()) << first.child().err();
  auto e = run_server_to_exit({"--listen", first.address()});
  EXPECT_EQ(e.code, 1);
  EXPECT_EQ(e.first_err_line, "address already in use: " + first.address());
  EXPECT_EQ(e.out, "");  // nothing claimed to listen
}

TEST_F(DemoTest, MalformedAddressExitsTwoNamingIt) {
  auto e = run_server_to_exit({"--listen", "127.0.0.1:99999"});
  EXPECT_EQ(e.code, 2);
  EXPECT_EQ(e.first_err_line.rfind("malformed address: 127.0.0.1:99999 (", 0), 0u) << e.err;
}

TEST_F(DemoTest, UnknownFlagExitsTwoNamingIt) {
  auto e = run_server_to_exit({"--listen", "127.0.0.1:0", "--bogus"});
  EXPECT_EQ(e.code, 2);
  EXPECT_EQ(e.first_err_line, "unknown option: --bogus");
}

TEST_F(DemoTest, MissingValueExitsTwoNamingTheFlag) {
  auto e = run_server_to_exit({"--threads"});
  EXPECT_EQ(e.code, 2);
  EXPECT_EQ(e.first_err_line, "missing value: --threads");
}

TEST_F(DemoTest, MalformedValueExitsTwoNamingTheFlagAndValue) {
  auto e = run_server_to_exit({"--threads", "abc"});
  EXPECT_EQ(e.code, 2);
  EXPECT_EQ(e.first_err_line.rfind("invalid value for --threads: abc", 0), 0u) << e.err;
}

TEST_F(DemoTest, HelpPrintsUsageOnStdoutAndExitsZero) {
  auto e = run_server_to_exit({"--help"});
  EXPECT_EQ(e.code, 0);
  EXPECT_NE(e.out.find("Usage: echo_server"), std::string::npos) << e.out;
  for (const char* flag : {"--listen", "--threads", "--reuseport", "--busy-poll", "--max-conns",
                           "--idle-timeout", "--stats"}) {
    EXPECT_NE(e.out.find(flag), std::string::npos) << flag;
  }
  EXPECT_EQ(e.err, "");
}

// Issue 15, --pin: "with more loops than CPUs, wrap around (say so in --help)".
TEST_F(DemoTest, HelpSaysPinWrapsAroundWhenLoopsOutnumberCpus) {
  auto e = run_server_to_exit({"--help"});
  EXPECT_EQ(e.code, 0);
  const auto at = e.out.find("--pin");
  ASSERT_NE(at, std::string::npos) << e.out;
  EXPECT_NE(e.out.find("wrap around", at), std::string::npos) << e.out;
}

// Issue 15 part 1: "--listen fd:N and --listen systemd" in the usage and --help text.
TEST_F(DemoTest, HelpNamesTheInheritedSocketListenForms) {
  auto e = run_server_to_exit({"--help"});
  EXPECT_EQ(e.code, 0);
  EXPECT_NE(e.out.find("fd:N"), std::string::npos) << e.out;
  EXPECT_NE(e.out.find("systemd"), std::string::npos) << e.out;
}

TEST_F(DemoTest, UnixSocketListenerEchoes) {
  char dir_template[] = "/tmp/reactor-demo-XXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::string path = std::string(dir_template) + "/echo.sock";
  {
    Server server({"--listen", "unix:" + path});
    ASSERT_TRUE(server.ready()) << server.child().err();
    EXPECT_EQ(server.address(), "unix:" + path);
    auto r = run_load(
        {"echo", "--target", server.address(), "--connections", "2", "--duration", "1", "--json"});
    expect_clean_echo(r, 2, 64, 1);
  }
  std::filesystem::remove_all(dir_template);
}

TEST_F(DemoTest, Ipv6ListenerEchoes) {
  {
    const int probe = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_loopback;
    const bool ipv6 = probe >= 0 && ::bind(probe, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    if (probe >= 0) ::close(probe);
    if (!ipv6) GTEST_SKIP() << "no IPv6 loopback here: " << std::strerror(errno);
  }
  Server server({"--listen", "[::1]:0"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  EXPECT_EQ(server.address().rfind("[::1]:", 0), 0u) << server.address();
  auto r = run_load(
      {"echo", "--target", server.address(), "--connections", "2", "--duration", "1", "--json"});
  expect_clean_echo(r, 2, 64, 1);
}

// ---------------------------------------------------------------------------------------------
// Inherited listening sockets: --listen fd:N and --listen systemd (issue 15 part 1)

// server_runner.hpp: "`fd:N` (a listening socket inherited as descriptor N)" and "ADDR being ...
// an inherited socket's own address". The test process binds and listens, the child inherits
// the socket (no close-on-exec) and serves it.
TEST_F(DemoTest, InheritedFdListenerPrintsItsBoundAddressAndEchoes) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);  // inheritable, as a parent hands it on
  ASSERT_GE(fd, 0) << std::strerror(errno);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
  ASSERT_EQ(::listen(fd, 64), 0) << std::strerror(errno);
  socklen_t len = sizeof a;
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  const std::string bound = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));

  Server server({"--listen", "fd:" + std::to_string(fd)});
  ::close(fd);  // the child holds it now; reactor-load must not inherit it too
  ASSERT_TRUE(server.ready()) << server.child().err();
  EXPECT_EQ(server.address(), bound);
  auto r = run_load({"echo", "--target", bound, "--connections", "2", "--duration", "1", "--json"});
  expect_clean_echo(r, 2, 64, 1);
  server.child().signal(SIGTERM);
  ASSERT_EQ(server.child().finish(deadline_in(kGenerous)), 0) << server.child().err();
  EXPECT_NE(server.child().out().find("final: accepted=2 "), std::string::npos)
      << server.child().out();
}

// server_runner.hpp: "one that is not a listening stream socket ... prints the reason on stderr
// and exits 1".
TEST_F(DemoTest, InheritedFdThatIsNotASocketExitsOneNamingIt) {
  const int fd = ::open("/dev/null", O_RDONLY);  // inheritable
  ASSERT_GE(fd, 0);
  auto e = run_server_to_exit({"--listen", "fd:" + std::to_string(fd)});
  ::close(fd);
  EXPECT_EQ(e.code, 1);
  EXPECT_EQ(e.first_err_line, "socket operation on non-socket: inherited fd " + std::to_string(fd));
  EXPECT_EQ(e.out, "");
}

// server_runner.hpp: "--reuseport with an inherited socket is a usage error (exit 2)"; a
// malformed fd:N too.
TEST_F(DemoTest, InheritedFdWithReusePortOrMalformedExitsTwo) {
  auto e = run_server_to_exit({"--listen", "fd:3", "--reuseport"});
  EXPECT_EQ(e.code, 2);
  EXPECT_EQ(e.first_err_line.rfind("--reuseport cannot apply to an inherited socket (fd:3)", 0), 0u)
      << e.err;
  e = run_server_to_exit({"--listen", "fd:three"});
  EXPECT_EQ(e.code, 2);
  EXPECT_EQ(e.first_err_line.rfind("malformed inherited fd: fd:three", 0), 0u) << e.err;
}

// server_runner.hpp: "`systemd` without the variables (or with another process's LISTEN_PID),
// prints the reason on stderr and exits 1".
TEST_F(DemoTest, SystemdListenWithoutOrWithAnotherProcessesSocketsExitsOne) {
  ::unsetenv("LISTEN_PID");
  ::unsetenv("LISTEN_FDS");
  auto e = run_server_to_exit({"--listen", "systemd"});
  EXPECT_EQ(e.code, 1);
  EXPECT_EQ(e.first_err_line.rfind("--listen systemd: no sockets passed", 0), 0u) << e.err;

  // The test process's own pid: never the child's.
  ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
  ::setenv("LISTEN_FDS", "1", 1);
  e = run_server_to_exit({"--listen", "systemd"});
  ::unsetenv("LISTEN_PID");
  ::unsetenv("LISTEN_FDS");
  EXPECT_EQ(e.code, 1);
  EXPECT_EQ(e.first_err_line.rfind("--listen systemd: the sockets are for process " +
                                       std::to_string(::getpid()) + ", not this one",
                                   0),
            0u)
      << e.err;
}

// A Unix-socket client, connected to `path` as soon as something listens there (bounded).
int connect_unix_when_listening(const std::string& path, Deadline deadline) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  for (;;) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) return fd;
    ::close(fd);
    // No event says "another process bound a path": poll, as wait_for_fd_count does.
    if (std::chrono::steady_clock::now() >= deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// server_runner.hpp: "`systemd` (socket activation, sd_listen_fds(3) without libsystemd ...)",
// with the real systemd-socket-activate: it binds the path, and at the first connection execs
// echo_server with LISTEN_PID, LISTEN_FDS (and LISTEN_FDNAMES) set; the queued connection and
// reactor-load's are echoed, and the file is left to its owner when the server ends.
TEST_F(DemoTest, SystemdSocketActivationServesTheActivatedSocket) {
  const std::string activate = "/usr/bin/systemd-socket-activate";
  if (::access(activate.c_str(), X_OK) != 0) {
    GTEST_SKIP() << activate << " is missing (Debian/Ubuntu package systemd)";
  }
  char dir_template[] = "/tmp/reactor-demo-XXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::string path = std::string(dir_template) + "/activated.sock";
  {
    Child server(activate, {"-l", path, "--", binary("ECHO_SERVER"), "--listen", "systemd"});
    ASSERT_TRUE(server.started());
    const int first = connect_unix_when_listening(path, deadline_in(kGenerous));
    ASSERT_GE(first, 0) << std::strerror(errno) << server.err();
    auto line = server.read_line(deadline_in(kGenerous));  // echo_server, started by `first`
    ASSERT_TRUE(line) << server.err();
    EXPECT_EQ(*line, "listening on unix:" + path);
    const std::string hello = "activated";
    ASSERT_EQ(::send(first, hello.data(), hello.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(hello.size()));
    std::string got;
    pollfd p{first, POLLIN, 0};
    char buf[64];
    while (got.size() < hello.size() && ::poll(&p, 1, ms_until(deadline_in(kGenerous))) == 1) {
      const ssize_t n = ::recv(first, buf, sizeof buf, 0);
      if (n <= 0) break;
      got.append(buf, static_cast<std::size_t>(n));
    }
    EXPECT_EQ(got, hello);
    ::close(first);
    auto r = run_load(
        {"echo", "--target", "unix:" + path, "--connections", "2", "--duration", "1", "--json"});
    expect_clean_echo(r, 2, 64, 1);
    server.signal(SIGTERM);
    ASSERT_EQ(server.finish(deadline_in(kGenerous)), 0) << server.err();
    EXPECT_NE(server.out().find("final: accepted=3 "), std::string::npos) << server.out();
    std::error_code ec;
    EXPECT_TRUE(std::filesystem::exists(path, ec)) << "an adopted socket's file is not ours";
  }
  std::filesystem::remove_all(dir_template);
}

// The server's exit lines: `final: ... messages=M ...` and, with several loops,
// `messages_per_loop=M0,M1,...`. Returns the per-loop counts, and their expected total in `total`.
std::vector<std::uint64_t> messages_per_loop(const std::string& out, std::uint64_t& total) {
  std::vector<std::uint64_t> counts;
  total = 0;
  const auto messages = out.find(" messages=");
  if (messages != std::string::npos) total = std::stoull(out.substr(messages + 10));
  const std::string key = "\nmessages_per_loop=";
  auto at = out.find(key);
  if (at == std::string::npos) return counts;
  std::istringstream in(out.substr(at + key.size(), out.find('\n', at + 1) - at - key.size()));
  for (std::string field; std::getline(in, field, ',');)
    counts.push_back(std::stoull(field));
  return counts;
}

TEST_F(DemoTest, TwoThreadsServeEveryConnection) {
  Server server({"--listen", "127.0.0.1:0", "--threads", "2"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  auto r = run_load({"echo", "--target", server.address(), "--connections", "8", "--threads", "2",
                     "--duration", "1", "--json"});
  expect_clean_echo(r, 8, 64, 1);
  server.child().signal(SIGTERM);
  ASSERT_EQ(server.child().finish(deadline_in(kGenerous)), 0) << server.child().err();
  const std::string& out = server.child().out();
  EXPECT_NE(out.find("final: accepted=8 "), std::string::npos) << out;
  // Both loops run and report; which one accepts from the shared (EPOLLEXCLUSIVE) socket is
  // the kernel's choice, so only the sum is certain here (the SO_REUSEPORT test shows both serve).
  std::uint64_t total = 0;
  const auto per_loop = messages_per_loop(out, total);
  ASSERT_EQ(per_loop.size(), 2u) << out;
  EXPECT_EQ(per_loop[0] + per_loop[1], total) << out;
  EXPECT_GE(total, r.json["messages"].get<std::uint64_t>()) << out;
}

TEST_F(DemoTest, ReusePortWithTwoThreadsServesEveryConnectionOnBothLoops) {
  Server server({"--listen", "127.0.0.1:0", "--threads", "2", "--reuseport"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  // 32 connections over two SO_REUSEPORT sockets: the kernel hashes each to one of them, so
  // all 32 on one loop (odds 2^-31) would mean the second socket does not accept.
  auto r = run_load(
      {"echo", "--target", server.address(), "--connections", "32", "--duration", "1", "--json"});
  expect_clean_echo(r, 32, 64, 1);
  server.child().signal(SIGTERM);
  ASSERT_EQ(server.child().finish(deadline_in(kGenerous)), 0) << server.child().err();
  const std::string& out = server.child().out();
  EXPECT_NE(out.find("final: accepted=32 "), std::string::npos) << out;
  std::uint64_t total = 0;
  const auto per_loop = messages_per_loop(out, total);
  ASSERT_EQ(per_loop.size(), 2u) << out;
  EXPECT_GT(per_loop[0], 0u) << out;
  EXPECT_GT(per_loop[1], 0u) << out;
  EXPECT_EQ(per_loop[0] + per_loop[1], total) << out;
}

// A line of a /proc file, from its `key` on ("" when absent).
std::string proc_field(const std::filesystem::path& file, const std::string& key) {
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key, 0) == 0) return line.substr(key.size());
  return "";
}

// server_runner.hpp: "named loop-1 ... loop-(N-1)"; "With --pin, loop i is pinned to the i-th
// CPU of the process's allowed set (... the home loop's thread, the caller, to the first),
// wrapping around": read back from /proc/PID/task/*/{comm,status} while it serves.
TEST_F(DemoTest, PinWithTwoThreadsServesOnNamedLoopsEachOnItsCpu) {
  const std::vector<int> cpus = allowed_cpus();
  ASSERT_FALSE(cpus.empty());
  Server server({"--listen", "127.0.0.1:0", "--threads", "2", "--pin"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  auto r = run_load(
      {"echo", "--target", server.address(), "--connections", "4", "--duration", "0.5", "--json"});
  expect_clean_echo(r, 4, 64, 1);

  const std::filesystem::path tasks = "/proc/" + std::to_string(server.child().pid()) + "/task";
  std::string home_cpus, loop_1_cpus;
  int named_loop_1 = 0;
  for (const auto& task : std::filesystem::directory_iterator(tasks)) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    std::getline(comm, name);
    const std::string allowed = proc_field(task.path() / "status", "Cpus_allowed_list:\t");
    if (task.path().filename() == std::to_string(server.child().pid())) home_cpus = allowed;
    if (name == "loop-1") {
      ++named_loop_1;
      loop_1_cpus = allowed;
    }
  }
  EXPECT_EQ(named_loop_1, 1);
  EXPECT_EQ(home_cpus, std::to_string(cpus[0]));
  EXPECT_EQ(loop_1_cpus, std::to_string(cpus[1 % cpus.size()]));  // wraps with one CPU

  server.child().signal(SIGTERM);
  ASSERT_EQ(server.child().finish(deadline_in(kGenerous)), 0) << server.child().err();
  EXPECT_NE(server.child().out().find("final: accepted=4 "), std::string::npos)
      << server.child().out();
}

TEST_F(DemoTest, SeveralAddressesEachPrintOneListeningLine) {
  Server server({"--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"}, 2);
  ASSERT_TRUE(server.ready(2)) << server.child().err();
  EXPECT_NE(server.address(0), server.address(1));
  for (std::size_t i = 0; i < 2; ++i) {
    auto r = run_load({"accept", "--target", server.address(i), "--connections", "1", "--duration",
                       "0.2", "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
}

TEST_F(DemoTest, SigtermClosesGracefullyPrintsFinalCountersAndExitsZero) {
  Server server({"--listen", "127.0.0.1:0"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  // One client, one echo of 5 bytes, left open.
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(std::stoi(port_of(server.address()))));
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::send(fd, "hello", 5, MSG_NOSIGNAL), 5);
  std::string echoed;
  const Deadline deadline = deadline_in(kGenerous);
  while (echoed.size() < 5) {
    pollfd p{fd, POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, ms_until(deadline)), 1);
    char buf[16];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    ASSERT_GT(n, 0);
    echoed.append(buf, static_cast<std::size_t>(n));
  }
  EXPECT_EQ(echoed, "hello");

  server.child().signal(SIGTERM);
  // Graceful: the server shuts its side (EOF here) rather than resetting.
  pollfd p{fd, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, ms_until(deadline)), 1);
  char buf[16];
  EXPECT_EQ(::recv(fd, buf, sizeof buf, 0), 0);
  ::close(fd);

  ASSERT_EQ(server.child().finish(deadline), 0) << server.child().err();
  const std::string& out = server.child().out();
  const auto final_line = out.find("final: ");
  ASSERT_NE(final_line, std::string::npos) << out;
  EXPECT_NE(out.find("accepted=1 ", final_line), std::string::npos) << out;
  EXPECT_NE(out.find("bytes_in=5 bytes_out=5", final_line), std::string::npos) << out;
}

TEST_F(DemoTest, StatsPrintsCounterLines) {
  Server server({"--listen", "127.0.0.1:0", "--stats", "0.05"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  auto line = server.child().read_line(deadline_in(kGenerous));
  ASSERT_TRUE(line);
  EXPECT_EQ(line->rfind("stats: active=0 accepted=0 msgs/s=", 0), 0u) << *line;
  // The loop's instruments (server_runner.hpp): busy share, stalls, timer delay p99. The stats
  // timer itself is a timer, so the delay is measured from the first line on.
  EXPECT_NE(line->find(" fd_exhaustion=0 busy="), std::string::npos) << *line;
  EXPECT_NE(line->find("% stalls="), std::string::npos) << *line;
  EXPECT_NE(line->find(" loop_delay_p99_us="), std::string::npos) << *line;
}

TEST_F(DemoTest, LoadAgainstPortNobodyListensOnExitsOne) {
  // A bound, non-listening socket holds the port: connecting to it is refused, and nobody
  // else can take it meanwhile.
  const int holder = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(holder, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(holder, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t len = sizeof a;
  ASSERT_EQ(::getsockname(holder, reinterpret_cast<sockaddr*>(&a), &len), 0);
  const std::string target = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  for (const char* mode : {"echo", "accept"}) {
    auto r = run_load({mode, "--target", target, "--duration", "30", "--json"});
    EXPECT_EQ(r.exit_code, 1) << mode;
    EXPECT_NE(r.err.find("connection refused by " + target), std::string::npos) << r.err;
    ASSERT_TRUE(r.json.is_object()) << r.out;
    EXPECT_GT(r.json["errors"].get<std::uint64_t>(), 0u);
    EXPECT_LT(r.json["duration_s"].get<double>(), 30.0);  // ended at once, not at --duration
  }
  ::close(holder);
}

TEST_F(DemoTest, LoadEndsWithAMessageWhenTheServerGoesAway) {
  Server server({"--listen", "127.0.0.1:0", "--stats", "0.05"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  Child load(binary("REACTOR_LOAD"), {"echo", "--target", server.address(), "--connections", "4",
                                      "--duration", "60", "--json"});
  // Wait until the server counts the load's four connections, then kill the server.
  const Deadline deadline = deadline_in(kGenerous);
  bool connected = false;
  while (!connected) {
    auto line = server.child().read_line(deadline);
    ASSERT_TRUE(line) << "the load never connected";
    connected = line->find("active=4 ") != std::string::npos;
  }
  server.child().signal(SIGKILL);
  ASSERT_TRUE(server.child().wait(deadline).has_value() || server.child().killed_by_signal());
  const auto code = load.finish(deadline_in(40s));  // well before --duration 60
  EXPECT_EQ(code, 1) << load.err();
  EXPECT_NE(load.err().find("was lost"), std::string::npos) << load.err();
  auto json = nlohmann::json::parse(load.out(), nullptr, false);
  ASSERT_TRUE(json.is_object()) << load.out();
  EXPECT_GT(json["errors"].get<std::uint64_t>(), 0u);
  EXPECT_LT(json["duration_s"].get<double>(), 60.0);
}

// ---- reactor-load rate: open loop, latency from the due time ----

// Checks a rate-mode JSON result: the keys, no error, and the counts that follow from the
// schedule whatever the timing: every message sent was due, every one completed was sent.
void expect_clean_rate(const LoadResult& r, int connections, int size) {
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  ASSERT_TRUE(r.json.is_object()) << r.out;
  for (const char* key : {"mode", "target", "connections", "duration_s", "offered_per_s",
                          "achieved_per_s", "due", "sent", "late_sends", "messages", "bytes",
                          "errors", "errors_by_kind", "bulk_msgs_per_s", "latency_us"}) {
    EXPECT_TRUE(r.json.contains(key)) << key;
  }
  EXPECT_EQ(r.json["mode"], "rate");
  EXPECT_EQ(r.json["connections"], connections);
  EXPECT_EQ(r.json["errors"], 0);
  ASSERT_TRUE(r.json["late_sends"].is_number_unsigned()) << r.json["late_sends"];
  const auto due = r.json["due"].get<std::uint64_t>();
  const auto sent = r.json["sent"].get<std::uint64_t>();
  const auto messages = r.json["messages"].get<std::uint64_t>();
  const auto bytes = r.json["bytes"].get<std::uint64_t>();
  EXPECT_LE(r.json["late_sends"].get<std::uint64_t>(), sent);
  EXPECT_LE(sent, due);
  EXPECT_LE(messages, sent);
  EXPECT_GT(messages, 0u);
  const auto n = static_cast<std::uint64_t>(size);
  EXPECT_GE(bytes, messages * n);  // every completed message, and parts of those in flight
  EXPECT_LE(bytes, sent * n);
  EXPECT_DOUBLE_EQ(r.json["achieved_per_s"].get<double>(),
                   static_cast<double>(messages) / r.json["duration_s"].get<double>());
  const auto& latency = r.json["latency_us"];
  double previous = 0;
  for (const char* key : {"p50", "p90", "p99", "p999", "p9999", "max"}) {
    ASSERT_TRUE(latency.contains(key)) << key;
    EXPECT_GE(latency[key].get<double>(), previous) << key;  // percentiles never decrease
    previous = latency[key].get<double>();
  }
  EXPECT_GT(latency["p50"].get<double>(), 0.0);
}

TEST_F(DemoTest, RateLoadOffersExactlyRateTimesDurationMessagesAndSendsEach) {
  Server server({"--listen", "127.0.0.1:0"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  // 200/s for 1 s over 3 connections: messages 0..199 are due (k/R < 1 s); 200 is not.
  auto r = run_load({"rate", "--target", server.address(), "--rate", "200", "--connections", "3",
                     "--size", "100", "--duration", "1", "--json"});
  expect_clean_rate(r, 3, 100);
  EXPECT_EQ(r.json["target"], server.address());
  EXPECT_EQ(r.json["offered_per_s"], 200.0);
  EXPECT_EQ(r.json["due"], 200);
  // A low rate against a healthy server: every due message went out (open loop, never skipped).
  EXPECT_EQ(r.json["sent"], 200);
  EXPECT_GE(r.json["duration_s"].get<double>(), 1.0);  // the schedule ran its full length
  EXPECT_EQ(r.json["bulk_msgs_per_s"], 0.0);
}

TEST_F(DemoTest, RateLoadScheduleOfAFractionalLengthHasCeilRateTimesDuration) {
  Server server({"--listen", "127.0.0.1:0"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  // 300/s for 0.5 s: 150 due (k = 0..149); 7/s for 1 s: 7 (k/7 < 1 for k = 0..6).
  auto r = run_load({"rate", "--target", server.address(), "--rate", "300", "--connections", "2",
                     "--duration", "0.5", "--json"});
  expect_clean_rate(r, 2, 64);
  EXPECT_EQ(r.json["due"], 150);
  EXPECT_EQ(r.json["sent"], 150);
  r = run_load({"rate", "--target", server.address(), "--rate", "7", "--connections", "4",
                "--duration", "1", "--spin", "--json"});
  expect_clean_rate(r, 4, 64);
  EXPECT_EQ(r.json["due"], 7);
  EXPECT_EQ(r.json["sent"], 7);
  EXPECT_EQ(r.json["spin"], true);
}

TEST_F(DemoTest, RateLoadReportsBulkConnectionsApart) {
  Server server({"--listen", "127.0.0.1:0"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  auto r = run_load({"rate", "--target", server.address(), "--rate", "100", "--connections", "2",
                     "--duration", "0.5", "--bulk", "2", "--bulk-size", "3000", "--json"});
  expect_clean_rate(r, 2, 64);
  EXPECT_EQ(r.json["bulk_connections"], 2);
  EXPECT_GT(r.json["bulk_messages"].get<std::uint64_t>(), 0u);
  EXPECT_GT(r.json["bulk_msgs_per_s"].get<double>(), 0.0);
  // The probes' counts are the probes' alone.
  EXPECT_EQ(r.json["due"], 50);
  EXPECT_LE(r.json["bytes"].get<std::uint64_t>(), 50u * 64);
}

// Stops `child` (SIGSTOP) and waits until it is stopped; returns when it was.
std::optional<std::chrono::steady_clock::time_point> stop_process(Child& child) {
  child.signal(SIGSTOP);
  siginfo_t info{};
  if (::waitid(P_PID, static_cast<id_t>(child.pid()), &info, WSTOPPED | WNOWAIT) != 0)
    return std::nullopt;
  if (info.si_code != CLD_STOPPED) return std::nullopt;
  return std::chrono::steady_clock::now();
}

// Reads the server's `--stats` lines until one shows messages flowing (msgs/s > 0): the
// probes' schedule has started.
bool wait_for_messages(Server& server, Deadline deadline) {
  for (;;) {
    auto line = server.child().read_line(deadline);
    if (!line) return false;
    const auto at = line->find(" msgs/s=");
    if (at != std::string::npos && std::stoull(line->substr(at + 8)) > 0) return true;
  }
}

constexpr auto kStall = std::chrono::milliseconds(300);

// Stops `child` (confirmed), holds it stopped for kStall, continues it. Returns how long it was
// stopped, in microseconds (nullopt: it did not stop).
std::optional<double> stall(Child& child) {
  const auto stopped = stop_process(child);
  if (!stopped) return std::nullopt;
  std::this_thread::sleep_for(kStall);  // the stall itself, not a synchronisation
  const double us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - *stopped)
          .count();
  child.signal(SIGCONT);
  return us;
}

// The wrk2 correction: the client itself is stopped mid-run, so the messages due meanwhile go
// out late. From their due time their latency includes the stall (from the send time it would
// not); the client counts them as late sends; and since hundreds waited, p99 shows it too.
TEST_F(DemoTest, RateLoadLatencyRunsFromTheDueTimeWhenTheClientStalls) {
  Server server({"--listen", "127.0.0.1:0", "--stats", "0.05"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  Child load(binary("REACTOR_LOAD"), {"rate", "--target", server.address(), "--rate", "1000",
                                      "--connections", "4", "--duration", "3", "--json"});
  ASSERT_TRUE(wait_for_messages(server, deadline_in(kGenerous))) << "no message flowed";
  const auto stalled = stall(load);
  ASSERT_TRUE(stalled) << "the load did not stop";
  const double stall_us = *stalled;
  ASSERT_EQ(load.finish(deadline_in(60s)), 0) << load.err();
  LoadResult r{0, nlohmann::json::parse(load.out(), nullptr, false), load.out(), load.err()};
  expect_clean_rate(r, 4, 64);
  // Lower bounds only: the message due first after the stop (at most 1 ms after it) left after
  // the continue; the ~300 due during the stall all left more than 10 us late, and the ~150 due
  // in its first half waited more than half of it, over 1% of the ~3000 messages.
  const auto& latency = r.json["latency_us"];
  EXPECT_GE(latency["max"].get<double>(), stall_us - 1000) << r.out;
  EXPECT_GE(latency["p99"].get<double>(), stall_us / 2) << r.out;
  EXPECT_GE(r.json["late_sends"].get<std::uint64_t>(), 250u) << r.out;
  EXPECT_EQ(r.json["sent"], r.json["due"]);  // the late ones were sent, not skipped
}

// The server is stopped mid-run: an open-loop client keeps sending on schedule (every due
// message is sent), and every message due during the stall waits for it, so the stall shows
// in p99 as well as in the maximum (a closed-loop client would have one such sample per
// connection).
TEST_F(DemoTest, RateLoadLatencyIncludesAServerStallInItsPercentiles) {
  Server server({"--listen", "127.0.0.1:0", "--stats", "0.05"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  Child load(binary("REACTOR_LOAD"), {"rate", "--target", server.address(), "--rate", "1000",
                                      "--connections", "4", "--duration", "3", "--json"});
  ASSERT_TRUE(wait_for_messages(server, deadline_in(kGenerous))) << "no message flowed";
  const auto stalled = stall(server.child());
  ASSERT_TRUE(stalled) << "the server did not stop";
  const double stall_us = *stalled;
  ASSERT_EQ(load.finish(deadline_in(60s)), 0) << load.err();
  LoadResult r{0, nlohmann::json::parse(load.out(), nullptr, false), load.out(), load.err()};
  expect_clean_rate(r, 4, 64);
  const auto& latency = r.json["latency_us"];
  EXPECT_GE(latency["max"].get<double>(), stall_us - 1000) << r.out;
  EXPECT_GE(latency["p99"].get<double>(), stall_us / 2) << r.out;
  EXPECT_EQ(r.json["due"], 3000);
  EXPECT_EQ(r.json["sent"], 3000);  // the client did not wait for the server
}

// A server that echoes every byte but one: byte 9 of each connection's stream comes back
// flipped. Runs on a thread of the test, bounded by a deadline.
class BadEchoServer {
 public:
  BadEchoServer() {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (listener_ < 0 || ::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::listen(listener_, 16) != 0 ||
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      return;
    address_ = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
    thread_ = std::thread([this] { serve(); });
  }
  ~BadEchoServer() {
    done_ = true;
    if (thread_.joinable()) thread_.join();
    for (int fd : fds_)
      ::close(fd);
    if (listener_ >= 0) ::close(listener_);
  }
  const std::string& address() const { return address_; }

 private:
  void serve() {
    const Deadline deadline = deadline_in(kGenerous);
    std::vector<std::uint64_t> offsets;  // stream bytes echoed per connection
    while (!done_ && std::chrono::steady_clock::now() < deadline) {
      std::vector<pollfd> polled{{listener_, POLLIN, 0}};
      for (int fd : fds_)
        polled.push_back({fd, POLLIN, 0});
      if (::poll(polled.data(), polled.size(), 20) <= 0) continue;
      if (polled[0].revents & POLLIN) {
        const int fd = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0) {
          fds_.push_back(fd);
          offsets.push_back(0);
        }
      }
      for (std::size_t i = 1; i < polled.size(); ++i) {
        if (!polled[i].revents) continue;
        char buf[65536];
        const ssize_t n = ::recv(polled[i].fd, buf, sizeof buf, 0);
        if (n <= 0) continue;  // closed or reset: the load has given up on it
        std::uint64_t& offset = offsets[i - 1];
        if (offset <= 9 && 9 < offset + static_cast<std::uint64_t>(n)) buf[9 - offset] ^= 0x20;
        offset += static_cast<std::uint64_t>(n);
        (void)::send(polled[i].fd, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL);
      }
    }
  }

  int listener_ = -1;
  std::string address_;
  std::vector<int> fds_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

TEST_F(DemoTest, LoadDetectsAWrongEchoedByteInEchoAndRateModes) {
  BadEchoServer server;
  ASSERT_FALSE(server.address().empty()) << std::strerror(errno);
  for (const std::vector<std::string>& mode :
       {std::vector<std::string>{"echo"}, std::vector<std::string>{"rate", "--rate", "200"}}) {
    std::vector<std::string> args = mode;
    for (const char* a : {"--connections", "1", "--size", "16", "--duration", "10", "--json"})
      args.emplace_back(a);
    args.insert(args.end(), {"--target", server.address()});
    auto r = run_load(args);
    EXPECT_EQ(r.exit_code, 1) << mode[0] << ": " << r.err;
    ASSERT_TRUE(r.json.is_object()) << mode[0] << ": " << r.out;
    EXPECT_GE(r.json["errors"].get<std::uint64_t>(), 1u) << mode[0];
    // The only connection was aborted: the run ended at once, not at --duration.
    EXPECT_LT(r.json["duration_s"].get<double>(), 10.0) << mode[0];
    EXPECT_NE(r.err.find("wrong bytes (first: stream offset 9: expected 0x"), std::string::npos)
        << mode[0] << ": " << r.err;
    if (mode[0] == "rate") {
      EXPECT_EQ(r.json["errors_by_kind"]["wrong_bytes"], 1) << r.out;
    }
  }
}

TEST_F(DemoTest, LoadUsageErrorsExitTwo) {
  for (const auto& args :
       std::vector<std::vector<std::string>>{{},
                                             {"bogus"},
                                             {"echo"},
                                             {"echo", "--target", "nonsense"},
                                             {"echo", "--target", "127.0.0.1:1", "--size", "0"},
                                             {"accept", "--target", "127.0.0.1:1", "--bogus"}}) {
    Child load(binary("REACTOR_LOAD"), args);
    EXPECT_EQ(load.finish(deadline_in(kGenerous)), 2) << load.err();
    EXPECT_FALSE(load.first_err_line().empty());
  }
}

TEST_F(DemoTest, LoadAcceptHelpSaysItClosesWithReset) {
  Child load(binary("REACTOR_LOAD"), {"accept", "--help"});
  EXPECT_EQ(load.finish(deadline_in(kGenerous)), 0);
  EXPECT_NE(load.out().find("RST"), std::string::npos) << load.out();
  EXPECT_NE(load.out().find("TIME_WAIT"), std::string::npos) << load.out();
}

// ---- reactor-load udp: verifying datagram echo ----

// A UDP echo on 127.0.0.1 (a plain socket on a thread of its own, polled with a short tick and
// bounded by kGenerous) that misbehaves with every `every`-th datagram it receives: drops it,
// echoes it twice, holds it back until after the next one's echo, or flips payload byte 20.
class UdpEcho {
 public:
  enum class Fault { none, drop, duplicate, reorder, corrupt };
  explicit UdpEcho(Fault fault, int every = 10) : fault_(fault), every_(every) {
    fd_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      return;
    }
    address_ = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
    thread_ = std::thread([this] { serve(); });
  }
  ~UdpEcho() {
    done_ = true;
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) ::close(fd_);
  }
  const std::string& address() const { return address_; }

 private:
  void serve() {
    const Deadline deadline = deadline_in(kGenerous);
    std::uint64_t count = 0;
    std::string held;
    sockaddr_storage held_from{};
    socklen_t held_len = 0;
    while (!done_ && std::chrono::steady_clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      char buf[65536];
      sockaddr_storage from{};
      socklen_t len = sizeof from;
      const ssize_t n =
          ::recvfrom(fd_, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
      if (n < 0) continue;
      auto echo = [&](const char* bytes, std::size_t size, const sockaddr_storage& to,
                      socklen_t to_len) {
        (void)::sendto(fd_, bytes, size, 0, reinterpret_cast<const sockaddr*>(&to), to_len);
      };
      const auto size = static_cast<std::size_t>(n);
      if (++count % static_cast<std::uint64_t>(every_) != 0 || fault_ == Fault::none) {
        echo(buf, size, from, len);
        if (!held.empty()) echo(held.data(), held.size(), held_from, held_len);
        held.clear();
        continue;
      }
      switch (fault_) {
        case Fault::drop:
        case Fault::none:
          break;
        case Fault::duplicate:
          echo(buf, size, from, len);
          echo(buf, size, from, len);
          break;
        case Fault::reorder:
          held.assign(buf, size);
          held_from = from;
          held_len = len;
          break;
        case Fault::corrupt:
          if (size > 20) buf[20] ^= 0x20;
          echo(buf, size, from, len);
          break;
      }
    }
  }

  Fault fault_;
  int every_;
  int fd_ = -1;
  std::string address_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

// Checks a udp-mode JSON result: the keys, and that every datagram sent is accounted for once:
// received, lost, corrupt (with an intact header, as every corruption here) or in flight.
void expect_udp_accounts(const LoadResult& r) {
  ASSERT_TRUE(r.json.is_object()) << r.err << r.out;
  for (const char* key : {"mode",   "target",         "sockets",   "threads",    "size",
                          "depth",  "offered_per_s",  "timeout_s", "duration_s", "due",
                          "sent",   "received",       "lost",      "duplicated", "reordered",
                          "late",   "corrupt",        "in_flight", "bytes",      "msgs_per_s",
                          "errors", "errors_by_kind", "latency_us"}) {
    EXPECT_TRUE(r.json.contains(key)) << key << ": " << r.out;
  }
  EXPECT_EQ(r.json["mode"], "udp");
  const auto n = [&r](const char* key) { return r.json[key].get<std::uint64_t>(); };
  EXPECT_GT(n("received"), 0u) << r.out;
  EXPECT_EQ(n("sent"), n("received") + n("lost") + n("corrupt") + n("in_flight")) << r.out;
  EXPECT_EQ(n("bytes"), n("received") * r.json["size"].get<std::uint64_t>()) << r.out;
  const auto& latency = r.json["latency_us"];
  EXPECT_GT(latency["p50"].get<double>(), 0.0);
  EXPECT_LE(latency["p50"].get<double>(), latency["p99"].get<double>());
  EXPECT_LE(latency["p99"].get<double>(), latency["max"].get<double>());
}

// Issue 17: "reactor-load udp --target ADDR --rate R|--depth D --size S: verifying datagram
// echo ... latency percentiles, JSON"; --threads spreads the sockets over loops.
TEST_F(DemoTest, UdpLoadWithTwoThreadsCountsEveryDatagramOnceAgainstAnEcho) {
  UdpEcho server(UdpEcho::Fault::none);
  ASSERT_FALSE(server.address().empty()) << std::strerror(errno);
  for (const std::vector<std::string>& mode :
       {std::vector<std::string>{"--depth", "8"}, std::vector<std::string>{"--rate", "2000"}}) {
    std::vector<std::string> args = {"udp",        "--target", "udp:" + server.address(),
                                     "--sockets",  "4",        "--threads",
                                     "2",          "--size",   "100",
                                     "--duration", "0.5",      "--timeout",
                                     "10",         "--json"};
    args.insert(args.end(), mode.begin(), mode.end());
    auto r = run_load(args);
    EXPECT_EQ(r.exit_code, 0) << mode[0] << ": " << r.err << r.out;
    expect_udp_accounts(r);
    EXPECT_EQ(r.json["target"], "udp:" + server.address());
    EXPECT_EQ(r.json["sockets"], 4);
    EXPECT_EQ(r.json["threads"], 2);
    EXPECT_EQ(r.json["size"], 100);
    for (const char* key : {"lost", "duplicated", "reordered", "late", "corrupt", "errors"})
      EXPECT_EQ(r.json[key], 0) << mode[0] << " " << key << ": " << r.out;
    if (mode[0] == "--depth") {
      // Closed loop: at most D per socket still in flight when the run ended.
      EXPECT_LE(r.json["in_flight"].get<std::uint64_t>(), 4u * 8u) << r.out;
    } else {
      // Open loop: every datagram handed out by the schedule was sent.
      EXPECT_EQ(r.json["sent"], r.json["due"]) << r.out;
      EXPECT_EQ(r.json["offered_per_s"], 2000.0);
    }
  }
}

// Brief: "each is counted in its own field": a dropped datagram is lost, a second copy
// duplicated, one overtaken reordered, a wrong payload byte corrupt (not lost); only corrupt
// fails the run.
TEST_F(DemoTest, UdpLoadCountsLossDuplicationReorderingAndCorruptionApart) {
  struct Case {
    UdpEcho::Fault fault;
    const char* field;  // the one fault field that must count
    const char* timeout;
    int exit_code;
  };
  for (const Case& c : {Case{UdpEcho::Fault::drop, "lost", "0.05", 0},
                        Case{UdpEcho::Fault::duplicate, "duplicated", "10", 0},
                        Case{UdpEcho::Fault::reorder, "reordered", "10", 0},
                        Case{UdpEcho::Fault::corrupt, "corrupt", "10", 1}}) {
    UdpEcho server(c.fault);
    ASSERT_FALSE(server.address().empty()) << std::strerror(errno);
    auto r = run_load({"udp", "--target", server.address(), "--depth", "4", "--size", "64",
                       "--duration", "0.5", "--timeout", c.timeout, "--json"});
    EXPECT_EQ(r.exit_code, c.exit_code) << c.field << ": " << r.err << r.out;
    expect_udp_accounts(r);
    EXPECT_GT(r.json[c.field].get<std::uint64_t>(), 0u) << c.field << ": " << r.out;
    for (const char* other : {"lost", "duplicated", "reordered", "corrupt"}) {
      // A short --timeout may also count a slow echo lost (and late when it comes): only the
      // drop case uses one.
      if (std::string(other) == c.field || (c.fault == UdpEcho::Fault::drop && other[0] == 'r'))
        continue;
      EXPECT_EQ(r.json[other], 0) << c.field << " run, " << other << ": " << r.out;
    }
    if (c.fault == UdpEcho::Fault::corrupt) {
      // The tenth datagram is sequence number 9; byte 20 is in its payload.
      EXPECT_EQ(r.json["errors_by_kind"]["wrong_bytes"], r.json["corrupt"]) << r.out;
      EXPECT_NE(r.err.find("wrong bytes (first: datagram 9 byte 20: expected 0x"),
                std::string::npos)
          << r.err;
    }
  }
}

// Brief: "a target nobody listens on (ICMP refused) ends with a clear message and exit 1".
TEST_F(DemoTest, UdpLoadToAPortNobodyListensOnEndsAtOnceWithExitOne) {
  // A port just freed: nothing bound there, so the kernel answers port unreachable.
  const int probe = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(probe, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ASSERT_EQ(::bind(probe, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::getsockname(probe, reinterpret_cast<sockaddr*>(&a), &len), 0);
  ::close(probe);
  const std::string target = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  auto r = run_load({"udp", "--target", target, "--depth", "1", "--duration", "30", "--json"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("connection refused by udp:" + target), std::string::npos) << r.err;
  ASSERT_TRUE(r.json.is_object()) << r.out;
  EXPECT_GE(r.json["errors_by_kind"]["refused"].get<std::uint64_t>(), 1u) << r.out;
  EXPECT_EQ(r.json["received"], 0);
  EXPECT_LT(r.json["duration_s"].get<double>(), 30.0);  // ended at once, not at --duration
}

TEST_F(DemoTest, UdpLoadUsageErrorsExitTwo) {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"udp", "--target", "127.0.0.1:1"},                                  // neither
           {"udp", "--target", "127.0.0.1:1", "--depth", "1", "--rate", "10"},  // both
           {"udp", "--target", "127.0.0.1:1", "--depth", "1", "--size", "15"},  // < header
           {"udp", "--target", "127.0.0.1:1", "--depth", "1", "--size", "65508"},
           {"udp", "--target", "unix:/tmp/x", "--depth", "1"},
           {"udp", "--target", "udp:nonsense", "--depth", "1"},
           {"udp", "--depth", "1"}}) {
    Child load(binary("REACTOR_LOAD"), args);
    EXPECT_EQ(load.finish(deadline_in(kGenerous)), 2) << args.back() << ": " << load.err();
    EXPECT_FALSE(load.first_err_line().empty());
  }
}

}  // namespace
