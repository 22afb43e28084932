// Short sends, injected. libfiu's preload shortens read, write, readv and writev but never send
// or sendmsg, the calls Connection writes with, and on loopback the kernel takes whole messages
// until a socket fills. So this executable interposes send and sendmsg (the seam of
// injected_fault.hpp): on the connection's fd each call writes at most a few bytes, and now and
// then fails with EAGAIN or EINTR, which the kernel may also do. Every send path (one view, two
// views, an iovec array; direct, and queued behind earlier output) must still deliver the
// stream exactly, in order, and count it.
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "injected_fault.hpp"
#include "loopback.hpp"
#include "reactor/connection.hpp"
#include "reactor/event_loop.hpp"

namespace {

// splitmix64: the same choices on every run.
struct Random {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  std::size_t below(std::size_t n) { return static_cast<std::size_t>(next() % n); }
};

// What the interposers do to sends on `fd` (-1: nothing).
struct ShortSends {
  int fd = -1;
  std::size_t max_bytes = 7;  // each call writes 1..max_bytes bytes
  Random random{1};
  std::uint64_t calls = 0, shortened = 0, would_block = 0, interrupted = 0;

  // 0 to go on with at most `limit()` bytes, or the errno to fail this call with.
  int fail() {
    ++calls;
    const std::size_t roll = random.below(16);
    if (roll == 0) {
      ++would_block;
      return EAGAIN;
    }
    if (roll == 1) {
      ++interrupted;
      return EINTR;
    }
    return 0;
  }
  std::size_t limit() { return 1 + random.below(max_bytes); }
};
ShortSends short_sends;

}  // namespace

extern "C" ssize_t send(int fd, const void* buf, size_t len, int flags) {
  using Real = ssize_t (*)(int, const void*, size_t, int);
  static const Real real = reactor::test::real_function<Real>("send");
  if (fd != short_sends.fd) return real(fd, buf, len, flags);
  if (int err = short_sends.fail()) {
    errno = err;
    return -1;
  }
  const std::size_t n = std::min(len, short_sends.limit());
  if (n < len) ++short_sends.shortened;
  return real(fd, buf, n, flags);
}

extern "C" ssize_t sendmsg(int fd, const msghdr* message, int flags) {
  using Real = ssize_t (*)(int, const msghdr*, int);
  static const Real real = reactor::test::real_function<Real>("sendmsg");
  if (fd != short_sends.fd) return real(fd, message, flags);
  if (int err = short_sends.fail()) {
    errno = err;
    return -1;
  }
  // The same iovecs, cut after `limit` bytes.
  std::size_t left = short_sends.limit();
  std::vector<iovec> cut;
  std::size_t total = 0;
  for (std::size_t i = 0; i < message->msg_iovlen; ++i)
    total += message->msg_iov[i].iov_len;
  for (std::size_t i = 0; i < message->msg_iovlen && left > 0; ++i) {
    iovec part = message->msg_iov[i];
    part.iov_len = std::min(part.iov_len, left);
    left -= part.iov_len;
    cut.push_back(part);
  }
  msghdr shorter = *message;
  shorter.msg_iov = cut.data();
  shorter.msg_iovlen = cut.size();
  if (total > short_sends.limit()) ++short_sends.shortened;
  return real(fd, &shorter, flags);
}

namespace reactor {
namespace {

using namespace std::chrono_literals;

// A connection on one end of a Unix socketpair; the test reads the other end.
class ShortSendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0);
    peer_ = fds[1];
    handlers_.on_drained = [this](Connection&) { ++drained_; };
    handlers_.on_close = [this](Connection&, CloseReason reason, std::error_code ec) {
      closed_ = true;
      close_text_ = std::string(to_string(reason)) + " " + ec.message();
    };
    connection_.emplace(loop_, Fd(fds[0]), Address{}, handlers_);
    ASSERT_FALSE(connection_->start());
    short_sends = ShortSends{};
    short_sends.fd = fds[0];
  }
  void TearDown() override {
    short_sends.fd = -1;
    connection_.reset();
    ::close(peer_);
  }

  // Reads what the peer end has, without waiting.
  void drain_peer() {
    char buf[65536];
    ssize_t n;
    while ((n = ::recv(peer_, buf, sizeof buf, MSG_DONTWAIT)) > 0)
      received_.append(buf, static_cast<std::size_t>(n));
  }

  std::string random_bytes(std::size_t n) {
    std::string s(n, '\0');
    for (char& c : s)
      c = static_cast<char>(data_random_.next());
    return s;
  }

  EventLoop loop_;
  ConnectionHandlers handlers_;
  std::optional<Connection> connection_;
  int peer_ = -1;
  std::string received_;
  int drained_ = 0;
  bool closed_ = false;
  std::string close_text_;
  Random data_random_{7};
};

TEST_F(ShortSendTest, EverySendPathDeliversTheStreamExactlyThroughShortSends) {
  Random pick{3};
  std::string expected;
  Connection& c = *connection_;
  // Sizes over the orders of magnitude, 1 B..4 KiB: with at most 7 bytes per call, most
  // messages are queued behind earlier ones and written out over many EPOLLOUT rounds.
  auto message = [&] { return random_bytes(1 + pick.below(std::size_t{1} << pick.below(13))); };
  for (int i = 0; i < 300; ++i) {
    switch (pick.below(3)) {
      case 0: {
        const std::string m = message();
        ASSERT_TRUE(c.send(m));
        expected += m;
        break;
      }
      case 1: {
        const std::string a = message(), b = message();
        ASSERT_TRUE(c.send(a, b));
        expected += a + b;
        break;
      }
      default: {
        std::vector<std::string> parts(1 + pick.below(8));
        std::vector<iovec> iov;
        for (auto& p : parts) {
          p = message();
          iov.push_back(iovec{p.data(), p.size()});
          expected += p;
        }
        ASSERT_TRUE(c.send(iov.data(), static_cast<int>(iov.size())));
        break;
      }
    }
    // Now and then let the loop write and the peer read, so that later sends find the queue
    // empty (a direct send) as well as non-empty.
    if (pick.below(4) == 0) {
      loop_.run_once(0ms);
      drain_peer();
    }
  }
  ASSERT_TRUE(test::run_until(loop_, [&] {
    drain_peer();
    return received_.size() >= expected.size() || closed_;
  }));
  EXPECT_FALSE(closed_) << close_text_;
  ASSERT_EQ(received_.size(), expected.size());
  EXPECT_TRUE(received_ == expected) << "bytes lost, repeated or reordered";
  EXPECT_EQ(c.bytes_sent(), expected.size());
  EXPECT_EQ(c.queued_bytes(), 0u);
  EXPECT_GE(drained_, 1);
  // The seam was in the way the whole time.
  EXPECT_GT(short_sends.shortened, 1000u);
  EXPECT_GT(short_sends.would_block, 0u);
  EXPECT_GT(short_sends.interrupted, 0u);
}

// A send that fails with EAGAIN before writing a byte queues all of it; the next writable
// event writes it. Nothing waits for a readiness that already came and went.
TEST_F(ShortSendTest, SendThatWouldBlockAtOnceIsQueuedAndWrittenLater) {
  Connection& c = *connection_;
  short_sends.max_bytes = 1 << 20;
  bool found = false;  // a seed whose first roll fails the call with EAGAIN
  for (std::uint64_t seed = 1; seed < 1000 && !found; ++seed) {
    Random r{seed};
    if (r.below(16) == 0) {
      short_sends.random = Random{seed};
      found = true;
    }
  }
  ASSERT_TRUE(found);
  const std::string expected = random_bytes(10000);
  ASSERT_TRUE(c.send(expected));
  EXPECT_EQ(short_sends.would_block, 1u);
  EXPECT_EQ(c.queued_bytes(), expected.size());
  short_sends.fd = -1;  // from here on the kernel decides
  ASSERT_TRUE(test::run_until(loop_, [&] {
    drain_peer();
    return received_.size() >= expected.size() || closed_;
  }));
  EXPECT_FALSE(closed_) << close_text_;
  EXPECT_TRUE(received_ == expected);
  EXPECT_EQ(c.queued_bytes(), 0u);
  EXPECT_EQ(drained_, 1);
}

// connection.hpp, send(std::span<const std::byte>) and send(std::span<const iovec>) forward to
// the sends above, so "queues only what the kernel did not take" holds for them: after each
// short direct write, what was sent plus what is queued is the message, and the queued
// remainder is exactly its tail (the peer reads the stream whole). The iovec span has more
// than IOV_MAX entries, so the direct write covers only part of it.
TEST_F(ShortSendTest, SpanSendsQueueExactlyTheRemainderOfAShortWrite) {
  Connection& c = *connection_;
  short_sends.max_bytes = 100;
  short_sends.random = Random{2};  // the first roll is a short write, not a failure
  const std::string binary = random_bytes(5000);
  ASSERT_TRUE(c.send(std::as_bytes(std::span(binary))));
  EXPECT_GT(c.queued_bytes(), 0u);
  EXPECT_GT(c.bytes_sent(), 0u) << "the seed was meant to give a short write, not EAGAIN";
  EXPECT_EQ(c.bytes_sent() + c.queued_bytes(), binary.size());
  ASSERT_TRUE(test::run_until(loop_, [&] {
    drain_peer();
    return c.queued_bytes() == 0 || closed_;
  }));
  ASSERT_FALSE(closed_) << close_text_;

  const std::string gathered = random_bytes(IOV_MAX * 2 + 3);
  std::vector<iovec> iov;
  for (std::size_t i = 0; i < gathered.size(); i += 2)
    iov.push_back(
        iovec{const_cast<char*>(&gathered[i]), std::min<std::size_t>(2, gathered.size() - i)});
  ASSERT_GT(iov.size(), static_cast<std::size_t>(IOV_MAX));
  const std::uint64_t sent_before = c.bytes_sent();
  ASSERT_TRUE(c.send(std::span<const iovec>(iov)));
  EXPECT_GT(c.queued_bytes(), 0u);
  EXPECT_EQ(c.bytes_sent() - sent_before + c.queued_bytes(), gathered.size());
  const std::string expected = binary + gathered;
  ASSERT_TRUE(test::run_until(loop_, [&] {
    drain_peer();
    return received_.size() >= expected.size() || closed_;
  }));
  EXPECT_FALSE(closed_) << close_text_;
  EXPECT_TRUE(received_ == expected) << "bytes lost, repeated or reordered";
  EXPECT_EQ(c.bytes_sent(), expected.size());
  EXPECT_EQ(c.queued_bytes(), 0u);
}

}  // namespace
}  // namespace reactor
