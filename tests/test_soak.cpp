// The soak and fault scenarios of bench/soak.sh, scaled down to about ten seconds: echo_server
// as a child process on loopback, loaded by reactor-load's fault modes (churn, slowread, idle)
// and by raw sockets.
//
// Only what is deterministic is asserted: byte and error counts, connection counts, the
// server's fds (/proc/PID/fd) and its final counters (the `final:` line it prints on SIGTERM).
// Never RSS or CPU time, which vary with the allocator and the sanitizer: bench/soak.sh reports
// those. Each scenario runs once per suite (SetUpTestSuite); its tests assert one behaviour
// each on that run. Every wait is bounded.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "child_process.hpp"

namespace {

using namespace child_process;

// `final: accepted=1 refused=0 ...` -> {"accepted": 1, "refused": 0, ...}
std::map<std::string, std::uint64_t> parse_final(const std::string& out) {
  std::map<std::string, std::uint64_t> counters;
  const auto at = out.rfind("final: ");
  if (at == std::string::npos) return counters;
  const std::string line = out.substr(at + 7, out.find('\n', at) - at - 7);
  std::size_t pos = 0;
  while (pos < line.size()) {
    const auto eq = line.find('=', pos);
    if (eq == std::string::npos) break;
    auto end = line.find(' ', eq);
    if (end == std::string::npos) end = line.size();
    counters[line.substr(pos, eq - pos)] = std::stoull(line.substr(eq + 1, end - eq - 1));
    pos = end + 1;
  }
  return counters;
}

// echo_server on 127.0.0.1:0, optionally under `prlimit --nofile=N`.
class EchoServer {
 public:
  explicit EchoServer(int nofile = 0) : child_(path(nofile), args(nofile)) {
    auto line = child_.read_line(deadline_in(kGenerous));
    const std::string prefix = "listening on ";
    if (line && line->rfind(prefix, 0) == 0) address_ = line->substr(prefix.size());
    // The fds of a server at rest: stdio, epoll, wake-up, signals, listener, spare.
    if (ready()) baseline_fds_ = fd_count(child_.pid());
  }

  bool ready() const { return !address_.empty(); }
  const std::string& address() const { return address_; }
  std::uint16_t port() const {
    return static_cast<std::uint16_t>(std::stoi(address_.substr(address_.rfind(':') + 1)));
  }
  pid_t pid() const { return child_.pid(); }
  long baseline_fds() const { return baseline_fds_; }
  Child& child() { return child_; }

  // Waits until the server holds exactly `extra` fds more than at rest; returns the last count.
  long wait_for_fds(long extra) {
    const long want = baseline_fds_ + extra;
    return wait_for_fd_count(
        pid(), [want](long n) { return n == want; }, deadline_in(kGenerous));
  }

  // SIGTERM, then the counters of its `final:` line (empty if it printed none).
  std::map<std::string, std::uint64_t> stop() {
    child_.signal(SIGTERM);
    exit_code_ = child_.finish(deadline_in(kGenerous));
    return parse_final(child_.out());
  }
  std::optional<int> exit_code() const { return exit_code_; }

 private:
  static std::string path(int nofile) { return nofile > 0 ? "/usr/bin/prlimit" : server_path(); }
  static std::string server_path() { return binary("ECHO_SERVER"); }
  static std::vector<std::string> args(int nofile) {
    std::vector<std::string> a;
    if (nofile > 0) a = {"--nofile=" + std::to_string(nofile), "--", server_path()};
    a.insert(a.end(), {"--listen", "127.0.0.1:0"});
    return a;
  }

  Child child_;
  std::string address_;
  long baseline_fds_ = -1;
  std::optional<int> exit_code_;
};

struct LoadResult {
  std::optional<int> exit_code;
  nlohmann::json json;
  std::string err;
};

LoadResult finish_load(Child& load) {
  LoadResult r;
  r.exit_code = load.finish(deadline_in(60s));
  r.err = load.err();
  r.json = nlohmann::json::parse(load.out(), nullptr, /*allow_exceptions=*/false);
  if (!r.json.is_object()) r.json = nlohmann::json::object();
  return r;
}

LoadResult run_load(const std::vector<std::string>& args) {
  Child load(binary("REACTOR_LOAD"), args);
  return finish_load(load);
}

std::uint64_t count(const nlohmann::json& json, const char* key) {
  return json.contains(key) ? json[key].get<std::uint64_t>() : ~std::uint64_t{0};
}

// A blocking loopback client for the scenarios' "existing connections".
class RawClient {
 public:
  explicit RawClient(std::uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    if (fd_ >= 0 && ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
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

  // Reads until the server closes (EOF) or resets the connection: true; false at the deadline
  // or when bytes arrive instead.
  bool closed_by_server(Deadline deadline = deadline_in(kGenerous)) {
    pollfd p{fd_, POLLIN, 0};
    if (fd_ < 0 || ::poll(&p, 1, ms_until(deadline)) != 1) return false;
    char buf[16];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    return n == 0 || (n < 0 && errno == ECONNRESET);
  }

  // Sends `bytes` and reads until as many came back (or EOF, an error, the deadline); returns
  // what came back.
  std::string echo(const std::string& bytes, Deadline deadline = deadline_in(kGenerous)) {
    std::string back;
    if (fd_ < 0 || ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) !=
                       static_cast<ssize_t>(bytes.size())) {
      return back;
    }
    while (back.size() < bytes.size()) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, ms_until(deadline)) != 1) break;
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) break;
      back.append(buf, static_cast<std::size_t>(n));
    }
    return back;
  }

 private:
  int fd_;
};

bool have_binaries() {
  return !binary("ECHO_SERVER").empty() && !binary("REACTOR_LOAD").empty();
}

// ---- churn: clients connect, echo random sizes, close or reset at random, reconnect ----

constexpr int kChurnClients = 64;

class ChurnTest : public ::testing::Test {
 protected:
  struct Run {
    LoadResult load;
    long baseline_fds = -1;
    long fds_after = -1;
    std::map<std::string, std::uint64_t> final_counters;
    std::optional<int> server_exit;
  };

  static void SetUpTestSuite() {
    if (!have_binaries()) return;
    run_ = std::make_unique<Run>();
    EchoServer server;
    if (!server.ready()) return;
    run_->baseline_fds = server.baseline_fds();
    run_->load =
        run_load({"churn", "--target", server.address(), "--connections",
                  std::to_string(kChurnClients), "--duration", "2", "--seed", "7", "--json"});
    run_->fds_after = server.wait_for_fds(0);
    run_->final_counters = server.stop();
    run_->server_exit = server.exit_code();
  }
  static void TearDownTestSuite() { run_.reset(); }

  void SetUp() override {
    if (!have_binaries()) GTEST_SKIP() << "ECHO_SERVER and REACTOR_LOAD must name the binaries";
    ASSERT_TRUE(run_ && run_->baseline_fds > 0) << "echo_server did not start";
  }

  static std::unique_ptr<Run> run_;
};
std::unique_ptr<ChurnTest::Run> ChurnTest::run_;

TEST_F(ChurnTest, EveryEchoedByteIsRightAndNoErrorIsSeen) {
  const auto& r = run_->load;
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.json["mode"], "churn");
  EXPECT_EQ(count(r.json, "wrong_bytes"), 0u) << r.err;
  EXPECT_EQ(count(r.json, "errors"), 0u) << r.err;
  EXPECT_GT(count(r.json, "messages"), 0u);
  EXPECT_GT(count(r.json, "bytes"), 0u);
}

TEST_F(ChurnTest, ClientsBothCloseAndResetAndReconnect) {
  const auto& j = run_->load.json;
  EXPECT_GT(count(j, "closes"), 0u);
  EXPECT_GT(count(j, "resets"), 0u);
  // Every client connected more than once: each connection ended and a new one followed.
  EXPECT_GT(count(j, "connects"), static_cast<std::uint64_t>(kChurnClients));
  EXPECT_LE(count(j, "closes") + count(j, "resets"), count(j, "connects"));
}

TEST_F(ChurnTest, ServerFdsReturnToBaselineAfterClientsLeave) {
  EXPECT_EQ(run_->fds_after, run_->baseline_fds);
}

TEST_F(ChurnTest, ServerCountersAgreeWithTheClients) {
  ASSERT_EQ(run_->server_exit, 0);
  const auto& f = run_->final_counters;
  const auto& j = run_->load.json;
  ASSERT_EQ(f.count("accepted"), 1u);
  // Each client may leave one connect the server accepted and the client never saw complete.
  EXPECT_GE(f.at("accepted"), count(j, "connects"));
  EXPECT_LE(f.at("accepted"), count(j, "connects") + kChurnClients);
  // Sent by the clients >= read by the server >= echoed by it >= verified by the clients: a
  // reset with an echo in flight loses bytes, nothing adds any.
  EXPECT_LE(f.at("bytes_in"), count(j, "bytes_sent"));
  EXPECT_LE(f.at("bytes_out"), f.at("bytes_in"));
  EXPECT_GE(f.at("bytes_out"), count(j, "bytes"));
}

// ---- slow readers: clients that send and never read, beside normal echo clients ----

constexpr int kSlowClients = 16;
constexpr int kEchoClients = 4;

class SlowReaderTest : public ::testing::Test {
 protected:
  struct Run {
    LoadResult slow, echo;
    long baseline_fds = -1;
    long fds_after = -1;
  };

  static void SetUpTestSuite() {
    if (!have_binaries()) return;
    run_ = std::make_unique<Run>();
    EchoServer server;
    if (!server.ready()) return;
    run_->baseline_fds = server.baseline_fds();
    Child slow(binary("REACTOR_LOAD"), {"slowread", "--target", server.address(), "--connections",
                                        std::to_string(kSlowClients), "--duration", "2", "--json"});
    Child echo(binary("REACTOR_LOAD"),
               {"echo", "--target", server.address(), "--connections", std::to_string(kEchoClients),
                "--size", "4096", "--duration", "2", "--json"});
    run_->slow = finish_load(slow);
    run_->echo = finish_load(echo);
    run_->fds_after = server.wait_for_fds(0);
  }
  static void TearDownTestSuite() { run_.reset(); }

  void SetUp() override {
    if (!have_binaries()) GTEST_SKIP() << "ECHO_SERVER and REACTOR_LOAD must name the binaries";
    ASSERT_TRUE(run_ && run_->baseline_fds > 0) << "echo_server did not start";
  }

  static std::unique_ptr<Run> run_;
};
std::unique_ptr<SlowReaderTest::Run> SlowReaderTest::run_;

TEST_F(SlowReaderTest, OtherClientsKeepBeingServed) {
  const auto& r = run_->echo;
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(count(r.json, "errors"), 0u) << r.err;
  EXPECT_GT(count(r.json, "messages"), 0u);
}

TEST_F(SlowReaderTest, SlowReadersAreNeitherClosedNorReset) {
  const auto& r = run_->slow;
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.json["mode"], "slowread");
  EXPECT_EQ(count(r.json, "errors"), 0u) << r.err;
  EXPECT_EQ(count(r.json, "connects"), static_cast<std::uint64_t>(kSlowClients));
  EXPECT_GT(count(r.json, "bytes"), 0u);
}

TEST_F(SlowReaderTest, ServerFdsReturnToBaselineAfterClientsLeave) {
  EXPECT_EQ(run_->fds_after, run_->baseline_fds);
}

// ---- fd exhaustion: the server under `prlimit --nofile=64`, a hundred clients ----

// UBSan's vptr check probes memory by writing it into a pipe (libsanitizer's
// IsAccessibleMemoryRange): in a process out of fds the pipe fails, and the check reports a
// false "invalid vptr" and aborts. SANITIZE is meson's b_sanitize (tests/meson.build).
bool ubsan_build() {
  return binary("SANITIZE").find("undefined") != std::string::npos;
}

constexpr int kFdLimit = 64;
constexpr int kExisting = 8;
constexpr int kStormClients = 100;

class FdExhaustionTest : public ::testing::Test {
 protected:
  struct Run {
    long baseline_fds = -1;
    long fds_at_limit = -1;
    std::vector<std::string> existing_before, existing_at_limit;  // what each echoed
    bool overflow_connected = false;
    bool overflow_closed = false;
    LoadResult storm;
    long fds_after_storm = -1;
    std::string newcomer_echo;
    long fds_after = -1;
    std::map<std::string, std::uint64_t> final_counters;
  };

  static std::string message(int i) { return "existing connection " + std::to_string(i) + "\n"; }

  static void SetUpTestSuite() {
    if (!have_binaries() || ::access("/usr/bin/prlimit", X_OK) != 0 || ubsan_build()) return;
    run_ = std::make_unique<Run>();
    EchoServer server(kFdLimit);
    if (!server.ready()) return;
    run_->baseline_fds = server.baseline_fds();
    {
      std::vector<std::unique_ptr<RawClient>> existing;
      for (int i = 0; i < kExisting; ++i) {
        existing.push_back(std::make_unique<RawClient>(server.port()));
        run_->existing_before.push_back(existing.back()->echo(message(i)));
      }
      // The storm holds its connections (--duration is long: SIGINT ends it) while the server
      // sheds the ones it has no fd for.
      Child storm(binary("REACTOR_LOAD"),
                  {"idle", "--target", server.address(), "--connections",
                   std::to_string(kStormClients), "--duration", "60", "--json"});
      run_->fds_at_limit = wait_for_fd_count(
          server.pid(), [](long n) { return n >= kFdLimit; }, deadline_in(kGenerous));
      for (int i = 0; i < kExisting; ++i)
        run_->existing_at_limit.push_back(existing[static_cast<std::size_t>(i)]->echo(message(i)));
      // The storm holds every fd the server has: one more connection completes in the kernel's
      // backlog and must then be closed, not left waiting.
      RawClient overflow(server.port());
      run_->overflow_connected = overflow.connected();
      run_->overflow_closed = overflow.closed_by_server();
      storm.signal(SIGINT);
      run_->storm = finish_load(storm);
      run_->fds_after_storm = server.wait_for_fds(kExisting);
      RawClient newcomer(server.port());
      run_->newcomer_echo = newcomer.echo("newcomer\n");
    }
    run_->fds_after = server.wait_for_fds(0);
    run_->final_counters = server.stop();
  }
  static void TearDownTestSuite() { run_.reset(); }

  void SetUp() override {
    if (!have_binaries()) GTEST_SKIP() << "ECHO_SERVER and REACTOR_LOAD must name the binaries";
    if (::access("/usr/bin/prlimit", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/prlimit";
    if (ubsan_build()) GTEST_SKIP() << "UBSan's vptr check needs a free fd (see ubsan_build)";
    ASSERT_TRUE(run_ && run_->baseline_fds > 0) << "echo_server did not start";
  }

  static std::unique_ptr<Run> run_;
};
std::unique_ptr<FdExhaustionTest::Run> FdExhaustionTest::run_;

TEST_F(FdExhaustionTest, ServerReachesItsFdLimitAndStaysWithinIt) {
  EXPECT_EQ(run_->fds_at_limit, kFdLimit);
}

TEST_F(FdExhaustionTest, ExistingConnectionsKeepEchoingAtTheLimit) {
  ASSERT_EQ(run_->existing_at_limit.size(), static_cast<std::size_t>(kExisting));
  for (int i = 0; i < kExisting; ++i) {
    EXPECT_EQ(run_->existing_before[static_cast<std::size_t>(i)], message(i));
    EXPECT_EQ(run_->existing_at_limit[static_cast<std::size_t>(i)], message(i));
  }
}

TEST_F(FdExhaustionTest, ConnectionOverTheLimitIsClosedNotLeftWaiting) {
  ASSERT_TRUE(run_->overflow_connected);
  EXPECT_TRUE(run_->overflow_closed);
}

TEST_F(FdExhaustionTest, StormClientsSeeOnlyClosesAndResets) {
  const auto& j = run_->storm.json;
  ASSERT_TRUE(j.contains("errors_by_kind")) << run_->storm.err;
  const auto& kinds = j["errors_by_kind"];
  // Every storm client connected (the kernel completes the handshake); those the server had no
  // fd for were closed at once: a close or a reset, no other error, no wrong byte.
  EXPECT_EQ(count(j, "connects"), static_cast<std::uint64_t>(kStormClients)) << run_->storm.err;
  EXPECT_EQ(count(j, "errors"), count(kinds, "closed") + count(kinds, "reset")) << run_->storm.err;
}

TEST_F(FdExhaustionTest, ServerRecoversWhenClientsLeave) {
  EXPECT_EQ(run_->fds_after_storm, run_->baseline_fds + kExisting);
  EXPECT_EQ(run_->newcomer_echo, "newcomer\n");
  EXPECT_EQ(run_->fds_after, run_->baseline_fds);
}

// The connections shed for want of an fd are counted, and the count reaches the final line.
TEST_F(FdExhaustionTest, FinalLineCountsTheFdExhaustion) {
  const auto& f = run_->final_counters;
  ASSERT_EQ(f.count("fd_exhaustion"), 1u) << "no fd_exhaustion in the final line";
  EXPECT_GE(f.at("fd_exhaustion"), 1u);
  EXPECT_GE(f.at("accepted"), static_cast<std::uint64_t>(kExisting + 1));
}

// ---- idle: connections held silent, then each echoes once ----

constexpr int kIdleClients = 300;

class IdleTest : public ::testing::Test {
 protected:
  struct Run {
    LoadResult load;
    long baseline_fds = -1;
    long fds_after = -1;
    std::map<std::string, std::uint64_t> final_counters;
  };

  static void SetUpTestSuite() {
    if (!have_binaries()) return;
    run_ = std::make_unique<Run>();
    EchoServer server;
    if (!server.ready()) return;
    run_->baseline_fds = server.baseline_fds();
    run_->load =
        run_load({"idle", "--target", server.address(), "--connections",
                  std::to_string(kIdleClients), "--duration", "1", "--size", "100", "--json"});
    run_->fds_after = server.wait_for_fds(0);
    run_->final_counters = server.stop();
  }
  static void TearDownTestSuite() { run_.reset(); }

  void SetUp() override {
    if (!have_binaries()) GTEST_SKIP() << "ECHO_SERVER and REACTOR_LOAD must name the binaries";
    ASSERT_TRUE(run_ && run_->baseline_fds > 0) << "echo_server did not start";
  }

  static std::unique_ptr<Run> run_;
};
std::unique_ptr<IdleTest::Run> IdleTest::run_;

TEST_F(IdleTest, EveryIdleConnectionEchoesAfterTheHold) {
  const auto& r = run_->load;
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.json["mode"], "idle");
  EXPECT_EQ(count(r.json, "errors"), 0u) << r.err;
  EXPECT_EQ(count(r.json, "held"), static_cast<std::uint64_t>(kIdleClients));
  EXPECT_EQ(count(r.json, "echoed"), static_cast<std::uint64_t>(kIdleClients));
  EXPECT_EQ(count(r.json, "bytes"), 100u * kIdleClients);
}

TEST_F(IdleTest, ServerCountsEachConnectionAndEachByteOnce) {
  const auto& f = run_->final_counters;
  ASSERT_EQ(f.count("accepted"), 1u);
  EXPECT_EQ(f.at("accepted"), static_cast<std::uint64_t>(kIdleClients));
  EXPECT_EQ(f.at("bytes_in"), 100u * kIdleClients);
  EXPECT_EQ(f.at("bytes_out"), 100u * kIdleClients);
}

TEST_F(IdleTest, ServerFdsReturnToBaselineAfterClientsLeave) {
  EXPECT_EQ(run_->fds_after, run_->baseline_fds);
}

}  // namespace
