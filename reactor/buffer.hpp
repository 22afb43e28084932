// Buffer: the growable byte buffer behind a connection's input and output.
//
// Layout: one heap block [consumed | readable | writable]. Reading from the front is
// consume(), which only moves an index; writing at the back is write_ptr()/commit() or
// append(). When the back runs out of room, reserve() first slides the live bytes to the
// front (cheap while they are few), and only otherwise doubles the block.
//
// Contract:
// - Owns its memory; move-only (moving transfers the block, the source becomes empty).
// - Not thread-safe: one thread (the connection's loop) uses it at a time.
// - Allocates only in reserve()/append()/read_from() when the bytes do not fit, and never
//   before the first write: idle connections cost nothing. It never shrinks by itself;
//   shrink_to_fit() frees the block when the buffer is empty.
// - data(), view() and write_ptr() are invalidated by any call that may allocate or compact
//   (reserve, append, read_from, shrink_to_fit).
// - consume(n) and commit(n) with n beyond size() / writable() are programmer errors
//   (asserted in debug builds). Allocation failure throws std::bad_alloc, like new.
// - read_from() never throws for I/O failures: it reports them in ReadResult::err.
#pragma once

#include <sys/socket.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <system_error>

namespace reactor {

struct ReadResult {
  std::size_t bytes = 0;  // bytes appended to the buffer
  // The read used every byte offered (the free space, plus the overflow area when the free
  // space is under kOverflowSize; at most read_from's `max`): more may be waiting.
  // A short read means the socket is drained: do not read again until it polls readable.
  bool filled = false;
  // The errno of a failed read, 0 on success; EAGAIN when nothing was there. An int, so a
  // successful read (every read on the hot path) builds no std::error_code.
  int err = 0;
  std::error_code error() const noexcept {
    return err ? std::error_code(err, std::system_category()) : std::error_code();
  }
  bool would_block() const noexcept { return err == EAGAIN || err == EWOULDBLOCK; }
  bool eof() const noexcept { return err == 0 && bytes == 0; }
};

class Buffer {
 public:
  static constexpr std::size_t kOverflowSize = 64 * 1024;  // stack area for read_from
  static constexpr std::size_t kMinCapacity = 1024;        // first allocation

  Buffer() noexcept = default;
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() = default;

  // The readable region: bytes written and not yet consumed.
  std::size_t size() const noexcept { return write_pos_ - read_pos_; }
  bool empty() const noexcept { return write_pos_ == read_pos_; }
  const char* data() const noexcept { return data_.get() + read_pos_; }
  std::string_view view() const noexcept { return {data(), size()}; }
  // The readable region as bytes (binary protocols, Connection::send): the same memory as
  // view(), no copy, invalidated as view() is.
  std::span<const std::byte> bytes() const noexcept {
    return {reinterpret_cast<const std::byte*>(data()), size()};
  }
  // Searches the readable bytes from offset `from` on, for line and delimiter protocols (what
  // Asio's read_until and muduo's findCRLF do): the offset of the first `c`, or of the first
  // occurrence of `s`, counted from data() (so consume(offset + s.size()) drops a delimited
  // message); npos when there is none, or when from > size(). The same answers as
  // view().find(c, from) and view().find(s, from), by memchr/memmem: an empty `s` is found at
  // `from`. To wait for the rest of a delimiter without rescanning, resume the next search at
  // size() - (s.size() - 1), or 0 when size() is smaller.
  static constexpr std::size_t npos = std::string_view::npos;
  std::size_t find(char c, std::size_t from = 0) const noexcept;
  std::size_t find(std::string_view s, std::size_t from = 0) const noexcept;
  // Drops n <= size() bytes from the front. Consuming everything rewinds to the start of
  // the block, so the next write has the whole capacity without a memmove.
  void consume(std::size_t n) noexcept {
    assert(n <= size());
    read_pos_ += n;
    if (read_pos_ == write_pos_) clear();
  }
  void clear() noexcept { read_pos_ = write_pos_ = 0; }

  // The writable region: free space after the readable bytes. Write into it, then commit.
  std::size_t writable() const noexcept { return capacity_ - write_pos_; }
  char* write_ptr() noexcept { return data_.get() + write_pos_; }
  void commit(std::size_t n) noexcept;  // n <= writable()
  // Ensures writable() >= n, by compacting when the live bytes are few, else by growing
  // (at least doubling, at least kMinCapacity). Never shrinks.
  void reserve(std::size_t n);

  void append(const void* p, std::size_t n);
  void append(std::string_view s) { append(s.data(), s.size()); }

  std::size_t capacity() const noexcept { return capacity_; }
  // Frees the block if the buffer is empty (an idle connection should hold no memory);
  // keeps it otherwise.
  void shrink_to_fit() noexcept;

  // One read (retried on EINTR) of at most `max` bytes (max > 0): a recv() into the free space
  // when it holds kOverflowSize or more; otherwise a readv() into the free space plus a
  // kOverflowSize stack area, whose bytes are then appended, growing the buffer. A small buffer
  // thus reads up to 64 KiB in one syscall without keeping 64 KiB per connection.
  ReadResult read_from(int fd, std::size_t max = SIZE_MAX);

 private:
  [[gnu::noinline]] ReadResult read_gathered(int fd, std::size_t space, std::size_t overflow_size);
  // read_from's recv failed with `err`: retried while EINTR, else that errno.
  ReadResult read_interrupted(int fd, std::size_t space, int err);

  std::unique_ptr<char[]> data_;
  std::size_t capacity_ = 0;
  std::size_t read_pos_ = 0;
  std::size_t write_pos_ = 0;
};

// Inline: every read of a connection's input comes here (bench/cost.sh: 278 -> 259 instructions
// per message at 1 connection against the same code out of line).
inline ReadResult Buffer::read_from(int fd, std::size_t max) {
  assert(max > 0);
  const std::size_t space = std::min(writable(), max);
  if (space < kOverflowSize) return read_gathered(fd, space, std::min(kOverflowSize, max - space));
  // Room for a large read already: one plain recv, no gather list, no copy.
  const ssize_t n = ::recv(fd, write_ptr(), space, 0);
  if (n < 0) [[unlikely]]
    return read_interrupted(fd, space, errno);  // passed: nothing between may touch errno
  write_pos_ += static_cast<std::size_t>(n);
  return {static_cast<std::size_t>(n), static_cast<std::size_t>(n) == space, 0};
}

}  // namespace reactor
