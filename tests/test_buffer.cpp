// Buffer: region bookkeeping, growth policy, and read_from on real sockets.
#include "reactor/buffer.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "injected_fault.hpp"
#include "reactor/address.hpp"
#include "reactor/socket.hpp"

// Seams for what the kernel and the allocator rarely do on demand. Armed, the next recv or
// readv (Buffer::read_from's two reads) fails with the fault's errno; the next new[] (the
// Buffer's block) throws std::bad_alloc. Unarmed, each passes through.
reactor::test::InjectedFault read_fault;
REACTOR_INJECTABLE_RETURNING(read_fault, ssize_t, recv, (int fd, void* buf, size_t len, int flags),
                             (fd, buf, len, flags))
REACTOR_INJECTABLE_RETURNING(read_fault, ssize_t, readv, (int fd, const iovec* iov, int count),
                             (fd, iov, count))

reactor::test::InjectedFault allocation_fault;  // any errno arms it: new[] throws bad_alloc
void* operator new[](std::size_t n) {
  if (allocation_fault.take() != 0) throw std::bad_alloc();
  if (void* p = std::malloc(n != 0 ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}

namespace reactor {
namespace {

// Bytes that differ from their neighbours, so a misplaced memmove shows.
std::string pattern(std::size_t n, std::size_t seed = 0) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i)
    s[i] = static_cast<char>((i + seed) * 7 % 251);
  return s;
}

struct SocketPair {
  Fd reader;
  Fd writer;
};

SocketPair unix_pair() {
  int fds[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0);
  return {Fd(fds[0]), Fd(fds[1])};
}

void write_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    ASSERT_GT(n, 0) << std::strerror(errno);
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
}

TEST(Buffer, StartsEmptyWithoutAllocating) {
  Buffer b;
  EXPECT_EQ(b.size(), 0u);
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(b.capacity(), 0u);
  EXPECT_EQ(b.writable(), 0u);
  EXPECT_TRUE(b.view().empty());
  // "never before the first write": appending nothing is no write.
  b.append("");
  b.append(nullptr, 0);
  EXPECT_EQ(b.capacity(), 0u);
  EXPECT_TRUE(b.empty());
}

// Layout: "Reading from the front is consume(), which only moves an index": the bytes stay
// where they are, and the block with them.
TEST(Buffer, ConsumeOnlyMovesTheFrontIndex) {
  Buffer b;
  b.append(pattern(100));
  const char* front = b.data();
  const std::size_t capacity = b.capacity();
  const std::size_t writable = b.writable();
  b.consume(30);
  EXPECT_EQ(b.data(), front + 30);
  EXPECT_EQ(b.view(), pattern(100).substr(30));
  EXPECT_EQ(b.capacity(), capacity);
  EXPECT_EQ(b.writable(), writable);
}

TEST(Buffer, AppendThenConsume) {
  Buffer b;
  b.append("hello, ");
  b.append(std::string_view("world"));
  EXPECT_EQ(b.view(), "hello, world");
  EXPECT_EQ(b.capacity(), Buffer::kMinCapacity);
  b.consume(7);
  EXPECT_EQ(b.view(), "world");
  EXPECT_EQ(b.size(), 5u);
  b.consume(5);
  EXPECT_TRUE(b.empty());
}

// buffer.hpp, bytes(): "The readable region as bytes ...: the same memory as view(), no copy";
// it follows consume() as view() does, and an empty buffer gives an empty span.
TEST(Buffer, BytesIsTheReadableRegionAsBytesWithoutACopy) {
  Buffer b;
  EXPECT_TRUE(b.bytes().empty());
  b.append(std::string_view("\0binary\xff", 8));
  b.consume(1);
  const std::span<const std::byte> bytes = b.bytes();
  EXPECT_EQ(static_cast<const void*>(bytes.data()), static_cast<const void*>(b.data()));
  EXPECT_EQ(bytes.size(), b.size());
  EXPECT_EQ(bytes.size(), 7u);
  EXPECT_EQ(bytes[0], std::byte{'b'});
  EXPECT_EQ(bytes[6], std::byte{0xff});
  b.consume(7);
  EXPECT_TRUE(b.bytes().empty());
}

TEST(Buffer, ExactFitThenConsumeAllRewinds) {
  Buffer b;
  std::string bytes = pattern(Buffer::kMinCapacity);
  b.append(bytes);
  EXPECT_EQ(b.capacity(), Buffer::kMinCapacity);
  EXPECT_EQ(b.writable(), 0u);
  EXPECT_EQ(b.view(), bytes);
  b.consume(b.size());
  EXPECT_TRUE(b.empty());
  // Consuming everything rewinds: the whole block is writable again, no allocation.
  EXPECT_EQ(b.writable(), Buffer::kMinCapacity);
  EXPECT_EQ(b.capacity(), Buffer::kMinCapacity);
}

TEST(Buffer, ClearRewinds) {
  Buffer b;
  b.append(pattern(100));
  b.consume(10);
  b.clear();
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(b.writable(), b.capacity());
}

TEST(Buffer, WritePtrAndCommit) {
  Buffer b;
  b.reserve(10);
  EXPECT_GE(b.writable(), 10u);
  std::memcpy(b.write_ptr(), "abc", 3);
  b.commit(3);
  EXPECT_EQ(b.view(), "abc");
}

TEST(Buffer, GrowsGeometricallyAndKeepsContents) {
  Buffer b;
  std::string first = pattern(1000);
  b.append(first);
  b.consume(10);  // live data is most of the block: growing, not compacting
  std::string second = pattern(500, 3);
  b.append(second);
  EXPECT_EQ(b.capacity(), 2 * Buffer::kMinCapacity);
  EXPECT_EQ(b.view(), first.substr(10) + second);
}

TEST(Buffer, GrowsWhenLiveDataIsLargeEvenIfCompactingWouldFit) {
  Buffer b;
  std::string bytes = pattern(Buffer::kMinCapacity);
  b.append(bytes);
  b.consume(100);  // 924 live bytes: more than half the block
  b.append("x");
  EXPECT_EQ(b.capacity(), 2 * Buffer::kMinCapacity);
  EXPECT_EQ(b.view(), bytes.substr(100) + "x");
}

TEST(Buffer, CompactsInsteadOfGrowing) {
  Buffer b;
  std::string bytes = pattern(Buffer::kMinCapacity);
  b.append(bytes);
  b.consume(900);  // 124 live bytes, 900 reclaimable at the front
  std::string more = pattern(800, 5);
  b.append(more);
  EXPECT_EQ(b.capacity(), Buffer::kMinCapacity);
  EXPECT_EQ(b.view(), bytes.substr(900) + more);
}

TEST(Buffer, NoAllocationWhenDataFits) {
  Buffer b;
  b.reserve(100);
  const char* block = b.write_ptr();
  std::size_t capacity = b.capacity();
  b.append(pattern(50));
  b.append(pattern(50));
  EXPECT_EQ(b.capacity(), capacity);
  EXPECT_EQ(b.data(), block);
}

TEST(Buffer, ReserveNeverShrinks) {
  Buffer b;
  b.reserve(10000);
  std::size_t capacity = b.capacity();
  EXPECT_GE(capacity, 10000u);
  b.reserve(1);
  EXPECT_EQ(b.capacity(), capacity);
}

// buffer.hpp: reserve() "Ensures writable() >= n", and "Allocation failure throws
// std::bad_alloc, like new": a request no block can hold throws, with the buffer as it was,
// rather than looping on a doubling that overflows or returning a block too small.
TEST(Buffer, ReserveBeyondAnyBlockThrowsBadAllocAndKeepsTheBuffer) {
  Buffer empty;
  EXPECT_THROW(empty.reserve(SIZE_MAX), std::bad_alloc);
  EXPECT_EQ(empty.capacity(), 0u);
  Buffer b;
  b.append("live");
  const std::size_t capacity = b.capacity();
  EXPECT_THROW(b.reserve(SIZE_MAX - 1), std::bad_alloc);
  EXPECT_EQ(b.view(), "live");
  EXPECT_EQ(b.capacity(), capacity);
}

// "Allocation failure throws std::bad_alloc, like new", injected: the buffer is left as it was.
TEST(Buffer, AllocationFailureThrowsBadAllocAndKeepsTheBuffer) {
  Buffer b;
  allocation_fault.arm(ENOMEM, 1);
  EXPECT_THROW(b.append("first"), std::bad_alloc);
  EXPECT_EQ(allocation_fault.injected.load(), 1);
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(b.capacity(), 0u);

  b.append(pattern(1000));
  const std::size_t capacity = b.capacity();
  allocation_fault.arm(ENOMEM, 1);
  EXPECT_THROW(b.append(pattern(5000)), std::bad_alloc);
  allocation_fault.disarm();
  EXPECT_EQ(b.view(), pattern(1000));
  EXPECT_EQ(b.capacity(), capacity);
  b.append(pattern(5000, 1000));  // and it grows once memory is there
  EXPECT_EQ(b.view(), pattern(1000) + pattern(5000, 1000));
}

// "consume(n) and commit(n) with n beyond size() / writable() are programmer errors (asserted
// in debug builds)."
#ifndef NDEBUG
TEST(BufferDeathTest, ConsumeOrCommitBeyondTheRegionIsAssertedInDebugBuilds) {
  Buffer b;
  b.append("four");
  EXPECT_DEATH(b.consume(5), "n <= size");
  EXPECT_DEATH(b.commit(b.writable() + 1), "n <= writable");
}
#endif

TEST(Buffer, LargeAppend) {
  Buffer b;
  std::string big = pattern(8 * 1024 * 1024);
  b.append(big.data(), big.size());
  EXPECT_EQ(b.size(), big.size());
  EXPECT_GE(b.capacity(), big.size());
  EXPECT_TRUE(b.view() == big);
}

// ---- find ----

// find(): "the offset of the first `c`, or of the first occurrence of `s`, counted from data()
// ...; npos when there is none, or when from > size(). The same answers as view().find(c, from)
// and view().find(s, from)". One table, each row checked against both the expected offset and
// std::string_view's answer; the readable bytes start after a consumed prefix, so an offset
// counted from the block's start instead would show.
TEST(Buffer, FindReturnsTheOffsetFromTheReadableStartOrNpos) {
  constexpr std::size_t npos = Buffer::npos;
  struct Row {
    std::string_view contents;
    std::string_view needle;  // size 1: find(char) is checked too
    std::size_t from;
    std::size_t expected;
  };
  const Row rows[] = {
      {"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "\r\n", 0, 14},
      {"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "\r\n", 15, 23},
      {"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "\r\n\r\n", 0, 23},
      {"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "\n", 0, 15},
      {"partial line\r", "\r\n", 0, npos},  // half a delimiter at the end
      {"partial line\r", "\r", 0, 12},
      {"no delimiter", "\n", 0, npos},
      {"abc", "abc", 0, 0},      // the whole buffer
      {"abc", "abcd", 0, npos},  // longer than the buffer
      {"abc", "c", 2, 2},        // at `from` exactly
      {"abc", "c", 3, npos},     // from == size(): nothing left
      {"abc", "", 3, 3},         // empty needle: found at `from`, size() included
      {"abc", "", 4, npos},      // from > size()
      {"abc", "a", 7, npos},
      {"", "x", 0, npos},
      {"", "", 0, 0},
      {std::string_view("a\0b\0", 4), std::string_view("\0", 1), 2, 3},  // NUL is a byte
      {"aaab", "aab", 0, 1},  // a restart inside a partial match
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(testing::Message()
                 << "\"" << row.contents << "\" find \"" << row.needle << "\" from " << row.from);
    Buffer b;
    b.append("consumed prefix\r\n\n");
    b.append(row.contents);
    b.consume(std::string_view("consumed prefix\r\n\n").size());
    if (row.contents.empty()) b = Buffer();  // the empty buffer that never allocated
    ASSERT_EQ(b.view(), row.contents);
    EXPECT_EQ(b.find(row.needle, row.from), row.expected);
    EXPECT_EQ(b.find(row.needle, row.from), row.contents.find(row.needle, row.from));
    if (row.needle.size() == 1) {
      EXPECT_EQ(b.find(row.needle[0], row.from), row.expected);
      EXPECT_EQ(b.find(row.needle[0], row.from), row.contents.find(row.needle[0], row.from));
    }
  }
}

// The header's recipe for line protocols: "resume the next search at size() - (s.size() - 1)",
// so a delimiter split across reads is found, and each byte is searched about once. A stream
// arriving a byte at a time yields exactly its lines.
TEST(Buffer, FindSplitsAStreamIntoLinesWhateverTheArrivalChunks) {
  const std::string stream = "PING\r\nSET k v\r\n\r\nGET k\r\nlast line without end";
  for (std::size_t chunk : {std::size_t{1}, std::size_t{2}, std::size_t{5}, stream.size()}) {
    SCOPED_TRACE(chunk);
    Buffer b;
    std::vector<std::string> lines;
    std::size_t resume = 0;
    for (std::size_t at = 0; at < stream.size(); at += chunk) {
      b.append(std::string_view(stream).substr(at, chunk));
      for (std::size_t end; (end = b.find("\r\n", resume)) != Buffer::npos; resume = 0) {
        lines.emplace_back(b.view().substr(0, end));
        b.consume(end + 2);
      }
      resume = b.size() < 1 ? 0 : b.size() - 1;
    }
    EXPECT_EQ(lines, (std::vector<std::string>{"PING", "SET k v", "", "GET k"}));
    EXPECT_EQ(b.view(), "last line without end");
  }
}

TEST(Buffer, ShrinkToFitFreesOnlyWhenEmpty) {
  Buffer b;
  b.append(pattern(3000));
  b.shrink_to_fit();
  EXPECT_GE(b.capacity(), 3000u);
  EXPECT_EQ(b.view(), pattern(3000));
  b.consume(b.size());
  b.shrink_to_fit();
  EXPECT_EQ(b.capacity(), 0u);
  b.append("again");
  EXPECT_EQ(b.view(), "again");
}

TEST(Buffer, MoveTransfersContents) {
  Buffer a;
  a.append("payload");
  Buffer b(std::move(a));
  EXPECT_EQ(b.view(), "payload");
  EXPECT_EQ(a.capacity(), 0u);  // NOLINT(bugprone-use-after-move): checking moved-from state
  EXPECT_TRUE(a.empty());       // NOLINT(bugprone-use-after-move)
  Buffer c;
  c.append("old");
  c = std::move(b);
  EXPECT_EQ(c.view(), "payload");
}

TEST(BufferReadFrom, SmallMessageInOneCall) {
  SocketPair p = unix_pair();
  write_all(p.writer.get(), "hello");
  Buffer b;
  ReadResult r = b.read_from(p.reader.get());
  EXPECT_FALSE(r.error()) << r.error().message();
  EXPECT_EQ(r.bytes, 5u);
  EXPECT_FALSE(r.filled);
  EXPECT_FALSE(r.eof());
  EXPECT_EQ(b.view(), "hello");
  // A short read drained the socket.
  ReadResult again = b.read_from(p.reader.get());
  EXPECT_EQ(again.error(), std::errc::resource_unavailable_try_again);
}

// With kOverflowSize free already, a read goes straight into the buffer and stops at its end.
TEST(BufferReadFrom, LargeFreeSpaceIsFilledDirectlyAndNeverGrows) {
  SocketPair p = unix_pair();
  Buffer b;
  b.reserve(Buffer::kOverflowSize);
  const std::size_t capacity = b.capacity();
  const std::string payload = pattern(capacity + 10);
  write_all(p.writer.get(), payload);
  ReadResult r = b.read_from(p.reader.get());
  ASSERT_FALSE(r.error()) << r.error().message();
  EXPECT_EQ(r.bytes, capacity);
  EXPECT_TRUE(r.filled);
  EXPECT_EQ(b.capacity(), capacity);
  b.consume(b.size());
  r = b.read_from(p.reader.get());
  ASSERT_FALSE(r.error()) << r.error().message();
  EXPECT_EQ(r.bytes, 10u);
  EXPECT_FALSE(r.filled);
  EXPECT_EQ(b.view(), std::string_view(payload).substr(capacity));
}

TEST(BufferReadFrom, SplitsBetweenFreeSpaceAndOverflow) {
  SocketPair p = unix_pair();
  Buffer b;
  b.append("head:");  // leaves kMinCapacity - 5 bytes of free space
  std::string payload = pattern(3000);
  write_all(p.writer.get(), payload);
  ReadResult r = b.read_from(p.reader.get());
  ASSERT_FALSE(r.error()) << r.error().message();
  EXPECT_EQ(r.bytes, payload.size());
  EXPECT_FALSE(r.filled);
  EXPECT_EQ(b.view(), "head:" + payload);
}

// read_from(fd, max): "One read ... of at most `max` bytes", on both paths: a recv() into a free
// space larger than max, and a readv() into a small free space plus the stack area (Connection
// reads 64 KiB at most, whatever its own buffer's free space: the fairness bound).
TEST(BufferReadFrom, ReadTakesAtMostMaxBytesIntoALargeOrASmallFreeSpace) {
  SocketPair p = unix_pair();
  const std::string payload = pattern(100 * 1024);
  write_all(p.writer.get(), payload);
  Buffer large;
  large.reserve(4 * Buffer::kOverflowSize);
  const std::size_t capacity = large.capacity();
  ReadResult r = large.read_from(p.reader.get(), Buffer::kOverflowSize);
  ASSERT_FALSE(r.error()) << r.error().message();
  EXPECT_EQ(r.bytes, Buffer::kOverflowSize);
  EXPECT_TRUE(r.filled) << "it took all it was offered: more may be waiting";
  EXPECT_EQ(large.capacity(), capacity);

  Buffer small;
  small.append("head:");  // kMinCapacity - 5 bytes free: a readv() with the stack area
  r = small.read_from(p.reader.get(), 1000);
  ASSERT_FALSE(r.error()) << r.error().message();
  EXPECT_EQ(r.bytes, 1000u) << "the free space alone was offered";
  EXPECT_TRUE(r.filled);
  r = small.read_from(p.reader.get(), 2000);
  ASSERT_FALSE(r.error()) << r.error().message();
  EXPECT_EQ(r.bytes, 2000u) << "the free space and part of the stack area";
  EXPECT_TRUE(r.filled);
  r = small.read_from(p.reader.get(), Buffer::kOverflowSize);
  ASSERT_FALSE(r.error()) << r.error().message();
  EXPECT_EQ(r.bytes, payload.size() - Buffer::kOverflowSize - 3000) << "what was left";
  EXPECT_FALSE(r.filled);
  EXPECT_TRUE(large.view() == std::string_view(payload).substr(0, Buffer::kOverflowSize));
  EXPECT_TRUE(small.view() == "head:" + payload.substr(Buffer::kOverflowSize));
}

TEST(BufferReadFrom, EofAfterPeerClose) {
  SocketPair p = unix_pair();
  p.writer.reset();
  Buffer b;
  ReadResult r = b.read_from(p.reader.get());
  EXPECT_FALSE(r.error());
  EXPECT_EQ(r.bytes, 0u);
  EXPECT_TRUE(r.eof());
  EXPECT_FALSE(r.filled);
}

TEST(BufferReadFrom, EagainOnEmptySocket) {
  SocketPair p = unix_pair();
  Buffer b;
  ReadResult r = b.read_from(p.reader.get());
  EXPECT_EQ(r.error(), std::errc::resource_unavailable_try_again);
  EXPECT_EQ(r.bytes, 0u);
  EXPECT_FALSE(r.eof());
  EXPECT_TRUE(b.empty());
}

// read_from(): "One read (retried on EINTR)", on both of its paths.
TEST(BufferReadFrom, InterruptedReadIsRetried) {
  SocketPair p = unix_pair();
  write_all(p.writer.get(), "hello");
  Buffer small;  // under kOverflowSize free: readv into the free space and the stack area
  read_fault.arm(EINTR, 1);
  ReadResult r = small.read_from(p.reader.get());
  EXPECT_EQ(read_fault.injected.load(), 1);
  EXPECT_FALSE(r.error()) << r.error().message();
  EXPECT_EQ(r.bytes, 5u);
  EXPECT_EQ(small.view(), "hello");

  write_all(p.writer.get(), "world");
  Buffer large;  // kOverflowSize free: one recv into the free space
  large.reserve(Buffer::kOverflowSize);
  read_fault.arm(EINTR, 1);
  r = large.read_from(p.reader.get());
  EXPECT_EQ(read_fault.injected.load(), 1);
  EXPECT_FALSE(r.error()) << r.error().message();
  EXPECT_EQ(r.bytes, 5u);
  EXPECT_EQ(large.view(), "world");
}

// "read_from() never throws for I/O failures: it reports them in ReadResult::err", on both
// paths, leaving the buffer as it was.
TEST(BufferReadFrom, ReadErrorIsReportedNotThrownAndKeepsTheBuffer) {
  SocketPair p = unix_pair();
  write_all(p.writer.get(), "unread");
  Buffer small;
  small.append("kept");
  read_fault.arm(EIO, 1);
  ReadResult r = small.read_from(p.reader.get());
  EXPECT_EQ(r.err, EIO);
  EXPECT_EQ(r.error(), std::errc::io_error);
  EXPECT_EQ(r.bytes, 0u);
  EXPECT_FALSE(r.eof());
  EXPECT_FALSE(r.would_block());
  EXPECT_EQ(small.view(), "kept");

  Buffer large;
  large.reserve(Buffer::kOverflowSize);
  read_fault.arm(EIO, 1);
  r = large.read_from(p.reader.get());
  EXPECT_EQ(r.err, EIO);
  EXPECT_TRUE(large.empty());
  EXPECT_EQ(large.read_from(p.reader.get()).bytes, 6u) << "the bytes were lost";
}

TEST(BufferReadFrom, BadDescriptorIsAnError) {
  Buffer b;
  ReadResult r = b.read_from(-1);
  EXPECT_EQ(r.error(), std::errc::bad_file_descriptor);
  EXPECT_FALSE(r.eof());
}

TEST(BufferReadFrom, FilledWhenMoreIsWaitingThanOffered) {
  SocketPair p = unix_pair();
  std::string payload = pattern(Buffer::kOverflowSize + 4464);
  write_all(p.writer.get(), payload);
  Buffer b;  // no free space yet: the offer is exactly the overflow area
  ReadResult first = b.read_from(p.reader.get());
  ASSERT_FALSE(first.error()) << first.error().message();
  EXPECT_EQ(first.bytes, Buffer::kOverflowSize);
  EXPECT_TRUE(first.filled);
  ReadResult second = b.read_from(p.reader.get());
  ASSERT_FALSE(second.error()) << second.error().message();
  EXPECT_EQ(second.bytes, 4464u);
  EXPECT_FALSE(second.filled);
  EXPECT_TRUE(b.view() == payload);
}

// Single-threaded, so the count depends on socket buffer sizes, not on scheduling: the
// writer fills the socket, the reader reads while `filled`, and so on until all is through.
// With Linux's default 208 KiB socket buffers this takes 10 calls; 40 leaves room for
// smaller net.core.wmem_default settings.
TEST(BufferReadFrom, OneMebibyteBurstArrivesInAHandfulOfCalls) {
  SocketPair p = unix_pair();
  std::string payload = pattern(1024 * 1024);
  std::string_view rest = payload;
  Buffer b;
  int calls = 0;
  while (b.size() < payload.size()) {
    while (!rest.empty()) {
      ssize_t n = ::write(p.writer.get(), rest.data(), rest.size());
      if (n < 0) {
        ASSERT_EQ(errno, EAGAIN) << std::strerror(errno);
        break;
      }
      rest.remove_prefix(static_cast<std::size_t>(n));
    }
    ReadResult r;
    do {
      r = b.read_from(p.reader.get());
      ++calls;
      // `filled` says more *may* be waiting: a read that took exactly what was there is
      // followed by EAGAIN.
      if (r.would_block() && calls > 1) break;
      ASSERT_FALSE(r.error()) << r.error().message() << " after " << b.size() << " bytes";
      ASSERT_GT(r.bytes, 0u);
    } while (r.filled);
  }
  EXPECT_TRUE(b.view() == payload);
  EXPECT_LE(calls, 40);
  // Everything was read: the socket is empty.
  EXPECT_EQ(b.read_from(p.reader.get()).error(), std::errc::resource_unavailable_try_again);
}

Fd tcp_connected_pair(Fd& accepted) {
  auto listener = open_stream_socket(AF_INET);
  EXPECT_TRUE(listener.ok());
  Address any = Address::ipv4_loopback(0);
  EXPECT_EQ(::bind(listener->get(), any.sockaddr_ptr(), any.length()), 0);
  EXPECT_EQ(::listen(listener->get(), 1), 0);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  EXPECT_EQ(::getsockname(listener->get(), reinterpret_cast<sockaddr*>(&ss), &len), 0);
  auto bound = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
  EXPECT_TRUE(bound.ok());

  auto client = open_stream_socket(AF_INET);
  EXPECT_TRUE(client.ok());
  int rc = ::connect(client->get(), bound->sockaddr_ptr(), bound->length());
  EXPECT_TRUE(rc == 0 || errno == EINPROGRESS) << std::strerror(errno);
  pollfd pfd{client->get(), POLLOUT, 0};
  EXPECT_EQ(::poll(&pfd, 1, 10000), 1);
  EXPECT_FALSE(pending_socket_error(client->get()));
  // The client saw the handshake complete, so the connection is already queued: a
  // non-blocking accept cannot miss it.
  accepted.reset(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  EXPECT_TRUE(accepted) << std::strerror(errno);
  return std::move(*client);
}

TEST(BufferReadFrom, ConnectionResetIsReported) {
  Fd server;
  Fd client = tcp_connected_pair(server);
  ASSERT_TRUE(client);
  ASSERT_TRUE(server);
  ASSERT_FALSE(set_linger_abort(server.get()));
  server.reset();  // sends RST

  pollfd pfd{client.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&pfd, 1, 10000), 1);
  Buffer b;
  ReadResult r = b.read_from(client.get());
  EXPECT_EQ(r.error(), std::errc::connection_reset) << r.error().message();
  EXPECT_FALSE(r.eof());
  EXPECT_EQ(r.bytes, 0u);
}

}  // namespace
}  // namespace reactor
