// Bad input to every demo binary, as child processes: malformed addresses and flags get the
// documented error line (stderr's first line) and exit code (2: usage, 1: runtime), never a
// crash; random byte sequences sent to echo_server are echoed byte-exact and the connection
// closes cleanly, and resets mid-stream leave the server serving. http_server and kv_server
// (when built: HTTP_SERVER, KV_SERVER) get the same command-line table, and random bytes must
// not bring them down.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "child_process.hpp"

namespace {

using namespace child_process;

// ---- Command lines ----

struct CommandCase {
  std::string name;  // the test's name
  std::vector<std::string> args;
  int exit_code;
  std::string first_line_prefix;  // of stderr
};

// `text` with bytes outside printable ASCII (and newlines) written as \xNN: what goes into the
// XML report (parameters, failure messages) must stay well-formed for the non-UTF-8 cases.
std::string printable(const std::string& text) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char ch : text) {
    if (ch >= 0x20 && ch < 0x7f) {
      out += static_cast<char>(ch);
    } else {
      out += "\\x";
      out += kDigits[ch >> 4];
      out += kDigits[ch & 15];
    }
  }
  return out;
}

std::ostream& operator<<(std::ostream& out, const CommandCase& c) {
  out << c.name << ":";
  for (const auto& a : c.args)
    out << " '" << printable(a) << "'";
  return out;
}

std::string name_of(const ::testing::TestParamInfo<CommandCase>& info) {
  return info.param.name;
}

// Runs `path args`, expecting it to exit by itself.
void expect_exit(const std::string& path, const CommandCase& c) {
  Child child(path, c.args);
  ASSERT_TRUE(child.started()) << path;
  const auto code = child.finish(deadline_in(kGenerous));
  ASSERT_FALSE(child.killed_by_signal())
      << "killed by signal " << child.termination_signal() << ": " << printable(child.err());
  ASSERT_TRUE(code.has_value()) << "did not exit within the deadline";
  EXPECT_EQ(*code, c.exit_code) << printable(child.err());
  EXPECT_TRUE(child.first_err_line().rfind(c.first_line_prefix, 0) == 0)
      << "first line: " << printable(child.first_err_line());
  EXPECT_EQ(child.out(), "");  // nothing claimed to listen, no result printed
}

// The shared server runner's command line: echo_server, http_server and kv_server alike.
const std::vector<CommandCase> kServerCases = {
    {"PortOutOfRange", {"--listen", "127.0.0.1:99999"}, 2, "malformed address: 127.0.0.1:99999 ("},
    {"NoPort", {"--listen", "127.0.0.1"}, 2, "malformed address: 127.0.0.1 (missing port"},
    {"NoHost", {"--listen", ":80"}, 2, "malformed address: :80 (malformed host"},
    {"EmptyAddress", {"--listen", ""}, 2, "malformed address:  (empty address)"},
    {"Words", {"--listen", "nonsense"}, 2, "malformed address: nonsense ("},
    {"BadIpv4", {"--listen", "256.0.0.1:80"}, 2, "malformed address: 256.0.0.1:80 ("},
    {"FiveOctets", {"--listen", "1.2.3.4.5:6"}, 2, "malformed address: 1.2.3.4.5:6 ("},
    {"NegativePort", {"--listen", "127.0.0.1:-1"}, 2, "malformed address: 127.0.0.1:-1 ("},
    {"PortWithJunk", {"--listen", "127.0.0.1:80x"}, 2, "malformed address: 127.0.0.1:80x ("},
    {"UnclosedIpv6", {"--listen", "[::1"}, 2, "malformed address: [::1 ("},
    {"Ipv6PortWithJunk", {"--listen", "[::1]:0x"}, 2, "malformed address: [::1]:0x ("},
    {"EmptyUnixPath", {"--listen", "unix:"}, 2, "malformed address: unix: (empty unix socket path"},
    {"EmptyAbstractName", {"--listen", "unix:@"}, 2, "malformed address: unix:@ ("},
    {"UnixPathTooLong",
     {"--listen", "unix:/" + std::string(120, 'x')},
     2,
     "malformed address: unix:/xxxx"},
    {"NonUtf8Host", {"--listen", "\xff\xfe:1"}, 2, "malformed address: \xff\xfe:1 ("},
    {"SecondAddressMalformed",
     {"--listen", "127.0.0.1:0", "--listen", "127.0.0.1:99999"},
     2,
     "malformed address: 127.0.0.1:99999 ("},
    {"ListenWithoutValue", {"--listen"}, 2, "missing value: --listen"},
    {"ThreadsWithoutValue", {"--threads"}, 2, "missing value: --threads"},
    {"ThreadsZero", {"--threads", "0"}, 2, "invalid value for --threads: 0 (expected an integer"},
    {"ThreadsNegative", {"--threads", "-1"}, 2, "invalid value for --threads: -1 ("},
    {"ThreadsHuge",
     {"--threads", "99999999999999999999"},
     2,
     "invalid value for --threads: 99999999999999999999 ("},
    {"ThreadsEmpty", {"--threads", ""}, 2, "invalid value for --threads:  ("},
    {"ThreadsFraction", {"--threads", "1.5"}, 2, "invalid value for --threads: 1.5 ("},
    {"ThreadsWord", {"--threads=abc"}, 2, "invalid value for --threads: abc ("},
    {"IdleTimeoutNan", {"--idle-timeout", "nan"}, 2, "invalid value for --idle-timeout: nan ("},
    {"IdleTimeoutInfinite",
     {"--idle-timeout", "inf"},
     2,
     "invalid value for --idle-timeout: inf ("},
    {"IdleTimeoutNegative", {"--idle-timeout", "-1"}, 2, "invalid value for --idle-timeout: -1 ("},
    {"StatsOverflow", {"--stats", "1e400"}, 2, "invalid value for --stats: 1e400 ("},
    {"BusyPollWord", {"--busy-poll", "x"}, 2, "invalid value for --busy-poll: x ("},
    {"MaxConnsNegative", {"--max-conns", "-5"}, 2, "invalid value for --max-conns: -5 ("},
    {"UnknownFlag", {"--bogus"}, 2, "unknown option: --bogus"},
    {"UnknownShortFlag", {"-x"}, 2, "unknown option: -x"},
    {"StrayWord", {"stray"}, 2, "unexpected argument: stray"},
    {"StrayNonUtf8Word", {"\xff\xfe"}, 2, "unexpected argument: \xff\xfe"},
    // Well-formed but unusable: a runtime error naming the address, exit 1.
    {"AddressNotOnThisHost",
     {"--listen", "192.0.2.1:8080"},
     1,
     "cannot assign requested address: 192.0.2.1:8080"},
    {"UnixPathInMissingDirectory",
     {"--listen", "unix:/nonexistent-reactor-dir/x.sock"},
     1,
     "no such file or directory: unix:/nonexistent-reactor-dir/x.sock"},
};

class EchoServerCommandLine : public ::testing::TestWithParam<CommandCase> {};
class HttpServerCommandLine : public ::testing::TestWithParam<CommandCase> {};
class KvServerCommandLine : public ::testing::TestWithParam<CommandCase> {};

TEST_P(EchoServerCommandLine, ExitsWithTheDocumentedErrorAndCode) {
  if (binary("ECHO_SERVER").empty()) GTEST_SKIP() << "ECHO_SERVER is not set";
  expect_exit(binary("ECHO_SERVER"), GetParam());
}
TEST_P(HttpServerCommandLine, ExitsWithTheDocumentedErrorAndCode) {
  if (binary("HTTP_SERVER").empty()) GTEST_SKIP() << "http_server is not built";
  expect_exit(binary("HTTP_SERVER"), GetParam());
}
TEST_P(KvServerCommandLine, ExitsWithTheDocumentedErrorAndCode) {
  if (binary("KV_SERVER").empty()) GTEST_SKIP() << "kv_server is not built";
  expect_exit(binary("KV_SERVER"), GetParam());
}
INSTANTIATE_TEST_SUITE_P(Bad, EchoServerCommandLine, ::testing::ValuesIn(kServerCases), name_of);
INSTANTIATE_TEST_SUITE_P(Bad, HttpServerCommandLine, ::testing::ValuesIn(kServerCases), name_of);
INSTANTIATE_TEST_SUITE_P(Bad, KvServerCommandLine, ::testing::ValuesIn(kServerCases), name_of);

// reactor-load's command line, every mode. Port 1 on loopback: nobody listens there, but no case
// gets as far as connecting.
const std::vector<CommandCase> kLoadCases = [] {
  std::vector<CommandCase> cases = {
      {"NoArguments", {}, 2, "missing mode: echo, accept, churn, slowread, idle, rate or udp"},
      {"UnknownMode", {"bogus"}, 2, "unknown mode: bogus ("},
      {"NonUtf8Mode", {"\xff"}, 2, "unknown mode: \xff ("},
      {"FlagsWithoutMode", {"--target", "127.0.0.1:1"}, 2, "unknown option: --target"},
      {"EchoSizeZero",
       {"echo", "--target", "127.0.0.1:1", "--size", "0"},
       2,
       "invalid value for --size: 0 ("},
      {"EchoSizeHuge",
       {"echo", "--target", "127.0.0.1:1", "--size", "99999999999"},
       2,
       "invalid value for --size: 99999999999 ("},
      {"EchoDepthZero",
       {"echo", "--target", "127.0.0.1:1", "--depth", "0"},
       2,
       "invalid value for --depth: 0 ("},
      {"ChurnSeedNegative",
       {"churn", "--target", "127.0.0.1:1", "--seed", "-1"},
       2,
       "invalid value for --seed: -1 ("},
      {"ChurnSeedOverflow",
       {"churn", "--target", "127.0.0.1:1", "--seed", "18446744073709551616"},
       2,
       "invalid value for --seed: 18446744073709551616 ("},
      {"ChurnSizeIsNotAnOption",
       {"churn", "--target", "127.0.0.1:1", "--size", "5"},
       2,
       "unknown option: --size"},
      {"SlowreadSizeIsNotAnOption",
       {"slowread", "--target", "127.0.0.1:1", "--size", "5"},
       2,
       "unknown option: --size"},
      {"IdleSizeOverChunk",
       {"idle", "--target", "127.0.0.1:1", "--size", "65537"},
       2,
       "invalid value for --size: 65537 ("},
      {"IdlePingNegative",
       {"idle", "--target", "127.0.0.1:1", "--ping", "-1"},
       2,
       "invalid value for --ping: -1 ("},
      {"IdleRetryWord",
       {"idle", "--target", "127.0.0.1:1", "--retry", "soon"},
       2,
       "invalid value for --retry: soon ("},
      {"RateNoRate", {"rate", "--target", "127.0.0.1:1"}, 2, "missing option: --rate"},
      {"RateRateZero",
       {"rate", "--target", "127.0.0.1:1", "--rate", "0"},
       2,
       "invalid value for --rate: 0 ("},
      {"RateRateNegative",
       {"rate", "--target", "127.0.0.1:1", "--rate", "-5"},
       2,
       "invalid value for --rate: -5 ("},
      {"RateRateWord",
       {"rate", "--target", "127.0.0.1:1", "--rate", "fast"},
       2,
       "invalid value for --rate: fast ("},
      {"RateRateInfinite",
       {"rate", "--target", "127.0.0.1:1", "--rate", "inf"},
       2,
       "invalid value for --rate: inf ("},
      {"RateRateWithoutValue",
       {"rate", "--target", "127.0.0.1:1", "--rate"},
       2,
       "missing value: --rate"},
      {"RateSizeZero",
       {"rate", "--target", "127.0.0.1:1", "--rate", "10", "--size", "0"},
       2,
       "invalid value for --size: 0 ("},
      {"RateSizeOverChunk",
       {"rate", "--target", "127.0.0.1:1", "--rate", "10", "--size", "65537"},
       2,
       "invalid value for --size: 65537 ("},
      {"RateBulkNegative",
       {"rate", "--target", "127.0.0.1:1", "--rate", "10", "--bulk", "-1"},
       2,
       "invalid value for --bulk: -1 ("},
      {"RateBulkSizeZero",
       {"rate", "--target", "127.0.0.1:1", "--rate", "10", "--bulk", "1", "--bulk-size", "0"},
       2,
       "invalid value for --bulk-size: 0 ("},
      {"RateBulkSizeWithoutBulk",
       {"rate", "--target", "127.0.0.1:1", "--rate", "10", "--bulk-size", "100"},
       2,
       "--bulk-size needs --bulk K"},
      {"RateThreadsIsNotAnOption",
       {"rate", "--target", "127.0.0.1:1", "--rate", "10", "--threads", "2"},
       2,
       "unknown option: --threads"},
      {"RateDepthIsNotAnOption",
       {"rate", "--target", "127.0.0.1:1", "--rate", "10", "--depth", "2"},
       2,
       "unknown option: --depth"},
  };
  for (const char* mode : {"echo", "accept", "churn", "slowread", "idle", "rate"}) {
    const std::string m = mode;
    auto add = [&cases, &m](const std::string& what, std::vector<std::string> args, int code,
                            std::string prefix) {
      std::string name = m;
      name[0] = static_cast<char>(name[0] - 'a' + 'A');
      // rate: its required --rate first, so that each case fails for the reason it names.
      if (m == "rate") args.insert(args.begin(), {"--rate", "10"});
      args.insert(args.begin(), m);
      cases.push_back({name + what, std::move(args), code, std::move(prefix)});
    };
    add("NoTarget", {}, 2, "missing option: --target");
    add("TargetWithoutValue", {"--target"}, 2, "missing value: --target");
    add("TargetMalformed", {"--target", "nonsense"}, 2, "malformed address: nonsense (");
    add("TargetPortOutOfRange", {"--target", "127.0.0.1:70000"}, 2,
        "malformed address: 127.0.0.1:70000 (");
    add("TargetEmpty", {"--target", ""}, 2, "malformed address:  (empty address)");
    add("ConnectionsZero", {"--target", "127.0.0.1:1", "--connections", "0"}, 2,
        "invalid value for --connections: 0 (");
    add("DurationNegative", {"--target", "127.0.0.1:1", "--duration", "-1"}, 2,
        "invalid value for --duration: -1 (");
    add("DurationNan", {"--target", "127.0.0.1:1", "--duration", "nan"}, 2,
        "invalid value for --duration: nan (");
    if (m != "rate") {  // rate runs one probe loop: RateThreadsIsNotAnOption
      add("ThreadsZero", {"--target", "127.0.0.1:1", "--threads", "0"}, 2,
          "invalid value for --threads: 0 (");
    }
    add("UnknownFlag", {"--target", "127.0.0.1:1", "--bogus"}, 2, "unknown option: --bogus");
    add("StrayWord", {"--target", "127.0.0.1:1", "stray"}, 2, "unexpected argument: stray");
  }
  return cases;
}();

class LoadCommandLine : public ::testing::TestWithParam<CommandCase> {};

TEST_P(LoadCommandLine, ExitsWithTheDocumentedErrorAndCode) {
  if (binary("REACTOR_LOAD").empty()) GTEST_SKIP() << "REACTOR_LOAD is not set";
  expect_exit(binary("REACTOR_LOAD"), GetParam());
}
INSTANTIATE_TEST_SUITE_P(Bad, LoadCommandLine, ::testing::ValuesIn(kLoadCases), name_of);

// A target nobody listens on is a runtime error (exit 1) in every mode, said on stderr, and the
// run ends at once rather than at --duration.
class LoadRefusedTarget : public ::testing::TestWithParam<const char*> {};

TEST_P(LoadRefusedTarget, ExitsOneSayingNobodyListens) {
  if (binary("REACTOR_LOAD").empty()) GTEST_SKIP() << "REACTOR_LOAD is not set";
  // A bound, non-listening socket holds the port: connecting to it is refused.
  const int holder = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(holder, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(holder, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t len = sizeof a;
  ASSERT_EQ(::getsockname(holder, reinterpret_cast<sockaddr*>(&a), &len), 0);
  const std::string target = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  Child load(binary("REACTOR_LOAD"), {GetParam(), "--target", target, "--duration", "60"});
  const auto code = load.finish(deadline_in(40s));  // well before --duration
  ::close(holder);
  ASSERT_FALSE(load.killed_by_signal()) << load.err();
  EXPECT_EQ(code, 1) << load.err();
  EXPECT_NE(load.err().find("connection refused by " + target), std::string::npos) << load.err();
}
INSTANTIATE_TEST_SUITE_P(EveryFaultMode, LoadRefusedTarget,
                         ::testing::Values("churn", "slowread", "idle"));

// ---- Bytes on the wire ----

// A server child on 127.0.0.1:0.
class ServerChild {
 public:
  explicit ServerChild(const std::string& path) : child_(path, {"--listen", "127.0.0.1:0"}) {
    auto line = child_.read_line(deadline_in(kGenerous));
    const std::string prefix = "listening on ";
    if (line && line->rfind(prefix, 0) == 0) {
      const std::string address = line->substr(prefix.size());
      port_ = static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
      baseline_fds_ = fd_count(child_.pid());
    }
  }
  bool ready() const { return port_ != 0; }
  std::uint16_t port() const { return port_; }
  long baseline_fds() const { return baseline_fds_; }
  Child& child() { return child_; }

 private:
  Child child_;
  std::uint16_t port_ = 0;
  long baseline_fds_ = -1;
};

int connect_loopback(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// What one exchange saw: the bytes that came back and how the stream ended.
struct Exchange {
  std::string received;
  bool eof = false;  // the server's FIN: a clean close
  int error = 0;     // errno of a failed recv (ECONNRESET: a reset)
  bool timed_out = false;
};

// Sends `bytes` in the given piece sizes (cycled) while reading whatever comes back, then
// half-closes and reads until EOF, an error or the deadline.
Exchange exchange(int fd, const std::string& bytes, const std::vector<std::size_t>& pieces,
                  Deadline deadline) {
  Exchange x;
  std::size_t sent = 0, piece = 0;
  bool shut = false;
  while (!x.eof && x.error == 0) {
    if (sent == bytes.size() && !shut) {
      ::shutdown(fd, SHUT_WR);
      shut = true;
    }
    pollfd p{fd, static_cast<short>(POLLIN | (shut ? 0 : POLLOUT)), 0};
    if (::poll(&p, 1, ms_until(deadline)) != 1) {
      x.timed_out = true;
      break;
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      char buf[65536];
      const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) {
        x.received.append(buf, static_cast<std::size_t>(n));
      } else if (n == 0) {
        x.eof = true;
      } else if (errno != EAGAIN && errno != EINTR) {
        x.error = errno;
      }
    }
    if (!shut && (p.revents & POLLOUT)) {
      const std::size_t want = std::min(pieces[piece++ % pieces.size()], bytes.size() - sent);
      const ssize_t n = ::send(fd, bytes.data() + sent, want, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        sent += static_cast<std::size_t>(n);
      } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        x.error = errno;
      }
    }
  }
  return x;
}

// Seeded random byte sequences of every shape: uniform bytes, NULs, 0xff runs, line endings,
// protocol-looking prefixes with garbage after them; lengths from 1 byte to 256 KiB.
class ByteSequences {
 public:
  explicit ByteSequences(std::uint32_t seed) : random_(seed) {}

  std::string next() {
    const std::size_t bits = pick(19);  // 1 B .. 256 KiB, as many short as long
    const std::size_t size = 1 + pick(std::size_t{1} << bits);
    std::string s;
    s.reserve(size);
    static const char* const kPrefixes[] = {"GET / HTTP/1.1\r\n", "*3\r\n$3\r\nSET\r\n", "\r\n\r\n",
                                            "$-1\r\n", "PING\r\n"};
    switch (pick(5)) {
      case 0:  // uniform bytes
        break;
      case 1:
        s.append(std::min<std::size_t>(size, 64), '\0');
        break;
      case 2:
        s.append(std::min<std::size_t>(size, 4096), '\xff');
        break;
      case 3:
        for (std::size_t i = 0; i + 2 <= std::min<std::size_t>(size, 512); i += 2)
          s += "\r\n";
        break;
      default:
        s += kPrefixes[pick(std::size(kPrefixes))];
        break;
    }
    while (s.size() < size)
      s.push_back(static_cast<char>(pick(256)));
    s.resize(size);
    return s;
  }

  // Piece sizes for sending: single bytes, small and large writes.
  std::vector<std::size_t> pieces() {
    std::vector<std::size_t> p;
    for (int i = 0; i < 8; ++i)
      p.push_back(1 + pick(std::size_t{1} << pick(17)));
    return p;
  }

  std::size_t pick(std::size_t n) {
    return static_cast<std::size_t>(random_() % static_cast<std::uint64_t>(n));
  }

 private:
  std::mt19937_64 random_;  // the same sequence everywhere for a seed
};

constexpr int kSequences = 120;

class EchoServerBytes : public ::testing::Test {
 protected:
  void SetUp() override {
    if (binary("ECHO_SERVER").empty()) GTEST_SKIP() << "ECHO_SERVER is not set";
    server_.emplace(binary("ECHO_SERVER"));
    ASSERT_TRUE(server_->ready()) << server_->child().err();
  }

  // After a test: still running, and SIGTERM ends it with exit 0, not a signal.
  void expect_server_alive_and_clean_exit() {
    EXPECT_TRUE(server_->child().alive()) << server_->child().err();
    server_->child().signal(SIGTERM);
    const auto code = server_->child().finish(deadline_in(kGenerous));
    EXPECT_FALSE(server_->child().killed_by_signal()) << server_->child().err();
    EXPECT_EQ(code, 0) << server_->child().err();
  }

  std::optional<ServerChild> server_;
};

TEST_F(EchoServerBytes, RandomSequencesAreEchoedExactlyThenClosedCleanly) {
  ByteSequences sequences(20240607);
  for (int i = 0; i < kSequences; ++i) {
    const std::string bytes = sequences.next();
    const int fd = connect_loopback(server_->port());
    ASSERT_GE(fd, 0);
    const Exchange x = exchange(fd, bytes, sequences.pieces(), deadline_in(kGenerous));
    ::close(fd);
    ASSERT_FALSE(x.timed_out) << "sequence " << i << " (" << bytes.size() << " bytes)";
    ASSERT_EQ(x.error, 0) << "sequence " << i << ": " << std::strerror(x.error);
    ASSERT_TRUE(x.eof) << "sequence " << i;
    ASSERT_EQ(x.received.size(), bytes.size()) << "sequence " << i;
    ASSERT_TRUE(x.received == bytes) << "sequence " << i << ": bytes differ";
  }
  expect_server_alive_and_clean_exit();
}

TEST_F(EchoServerBytes, ResetsMidStreamLeaveTheServerServing) {
  ByteSequences sequences(77);
  for (int i = 0; i < kSequences; ++i) {
    const std::string bytes = sequences.next();
    const int fd = connect_loopback(server_->port());
    ASSERT_GE(fd, 0);
    // Send without reading, then close with RST (SO_LINGER 0) whatever is in flight.
    (void)::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    const linger abort_on_close{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
    ::close(fd);
  }
  const long fds = wait_for_fd_count(
      server_->child().pid(), [this](long n) { return n == server_->baseline_fds(); },
      deadline_in(kGenerous));
  EXPECT_EQ(fds, server_->baseline_fds());
  // And a new connection is served byte-exact.
  const int fd = connect_loopback(server_->port());
  ASSERT_GE(fd, 0);
  const Exchange x = exchange(fd, "still here\n", {64}, deadline_in(kGenerous));
  ::close(fd);
  EXPECT_TRUE(x.eof);
  EXPECT_EQ(x.received, "still here\n");
  expect_server_alive_and_clean_exit();
}

// The protocol servers: random bytes get a reply, a close or a reset, never a crash.
class ProtocolServerBytes : public ::testing::TestWithParam<const char*> {};

TEST_P(ProtocolServerBytes, RandomSequencesNeverBringTheServerDown) {
  const std::string path = binary(GetParam());
  if (path.empty()) GTEST_SKIP() << GetParam() << " is not set: the server is not built";
  ServerChild server(path);
  ASSERT_TRUE(server.ready()) << server.child().err();
  ByteSequences sequences(4242);
  for (int i = 0; i < kSequences; ++i) {
    const std::string bytes = sequences.next();
    const int fd = connect_loopback(server.port());
    ASSERT_GE(fd, 0) << "sequence " << i << ": the server stopped accepting";
    // Whatever the server answers, the exchange ends: we half-close after the bytes, and both
    // servers close on the peer's EOF (a reset when they drop unread input or abort a bad
    // request; EPIPE when that reset came while we were still sending). What came back is
    // the protocol's own framing, never stray bytes.
    const Exchange x = exchange(fd, bytes, sequences.pieces(), deadline_in(kGenerous));
    EXPECT_FALSE(x.timed_out) << "sequence " << i << ": the server kept the connection open";
    EXPECT_TRUE(x.eof || x.error == ECONNRESET || x.error == EPIPE)
        << "sequence " << i << ": " << std::strerror(x.error);
    if (!x.received.empty()) {
      if (GetParam()[0] == 'H') {
        EXPECT_EQ(x.received.rfind("HTTP/1.1 ", 0), 0u) << "sequence " << i;
      } else {
        EXPECT_NE(std::string_view("+-:$*").find(x.received[0]), std::string_view::npos)
            << "sequence " << i << ": " << x.received.substr(0, 64);
      }
    }
    const linger abort_on_close{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
    ::close(fd);
    ASSERT_TRUE(server.child().alive())
        << "sequence " << i << " (" << bytes.size() << " bytes) brought it down\n"
        << server.child().err();
  }
  server.child().signal(SIGTERM);
  const auto code = server.child().finish(deadline_in(kGenerous));
  EXPECT_FALSE(server.child().killed_by_signal()) << server.child().err();
  EXPECT_EQ(code, 0) << server.child().err();
}
INSTANTIATE_TEST_SUITE_P(Built, ProtocolServerBytes, ::testing::Values("HTTP_SERVER", "KV_SERVER"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param[0] == 'H' ? "HttpServer" : "KvServer");
                         });

}  // namespace
