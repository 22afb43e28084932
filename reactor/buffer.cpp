#include "reactor/buffer.hpp"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <new>
#include <utility>

namespace reactor {

Buffer::Buffer(Buffer&& other) noexcept
    : data_(std::move(other.data_)),
      capacity_(std::exchange(other.capacity_, 0)),
      read_pos_(std::exchange(other.read_pos_, 0)),
      write_pos_(std::exchange(other.write_pos_, 0)) {}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    data_ = std::move(other.data_);
    capacity_ = std::exchange(other.capacity_, 0);
    read_pos_ = std::exchange(other.read_pos_, 0);
    write_pos_ = std::exchange(other.write_pos_, 0);
  }
  return *this;
}

std::size_t Buffer::find(char c, std::size_t from) const noexcept {
  if (from >= size()) return npos;
  const void* hit = std::memchr(data() + from, static_cast<unsigned char>(c), size() - from);
  return hit ? static_cast<std::size_t>(static_cast<const char*>(hit) - data()) : npos;
}

// memmem rather than string_view::find: glibc's is a two-way search with a fast first-byte
// scan, linear in the bytes searched whatever the needle, so a big unread backlog that is
// searched again as each packet lands stays cheap.
std::size_t Buffer::find(std::string_view s, std::size_t from) const noexcept {
  if (from > size()) return npos;
  if (s.empty()) return from;
  if (s.size() > size() - from) return npos;  // also keeps an empty buffer's nullptr from memmem
  const void* hit = ::memmem(data() + from, size() - from, s.data(), s.size());
  return hit ? static_cast<std::size_t>(static_cast<const char*>(hit) - data()) : npos;
}

void Buffer::commit(std::size_t n) noexcept {
  assert(n <= writable());
  write_pos_ += n;
}

void Buffer::reserve(std::size_t n) {
  if (writable() >= n) return;
  std::size_t live = size();
  // Sliding the live bytes to the front costs a memmove of `live` bytes; it is worth it when
  // that makes room and the live bytes are at most half the block (otherwise the buffer is
  // genuinely full and would soon compact again: grow instead, amortized O(1) per byte).
  if (read_pos_ + writable() >= n && live <= capacity_ / 2) {
    std::memmove(data_.get(), data_.get() + read_pos_, live);
    read_pos_ = 0;
    write_pos_ = live;
    return;
  }
  // No block holds more than PTRDIFF_MAX bytes: past it, live + n and the doubling below would
  // wrap around (a block too small, or a loop that never ends).
  if (n > static_cast<std::size_t>(PTRDIFF_MAX) - live) throw std::bad_alloc();
  std::size_t needed = live + n;
  std::size_t new_capacity = capacity_ * 2 > kMinCapacity ? capacity_ * 2 : kMinCapacity;
  while (new_capacity < needed)
    new_capacity *= 2;
  // Default-initialized, not value-initialized: zeroing bytes we overwrite anyway is waste.
  std::unique_ptr<char[]> block(new char[new_capacity]);
  if (live > 0) std::memcpy(block.get(), data_.get() + read_pos_, live);
  data_ = std::move(block);
  capacity_ = new_capacity;
  read_pos_ = 0;
  write_pos_ = live;
}

void Buffer::append(const void* p, std::size_t n) {
  if (n == 0) return;
  reserve(n);
  std::memcpy(write_ptr(), p, n);
  write_pos_ += n;
}

void Buffer::shrink_to_fit() noexcept {
  if (!empty()) return;
  data_.reset();
  capacity_ = 0;
  read_pos_ = write_pos_ = 0;
}

ReadResult Buffer::read_interrupted(int fd, std::size_t space, int err) {
  while (err == EINTR) {
    const ssize_t n = ::recv(fd, write_ptr(), space, 0);
    if (n >= 0) {
      write_pos_ += static_cast<std::size_t>(n);
      return {static_cast<std::size_t>(n), static_cast<std::size_t>(n) == space, 0};
    }
    err = errno;
  }
  return {0, false, err};
}

// Out of line: its 64 KiB stack frame and saved registers stay off read_from's common path.
ReadResult Buffer::read_gathered(int fd, std::size_t space, std::size_t overflow_size) {
  ReadResult result;
  // Reading straight into a small buffer alone would force a choice between a small read (more
  // syscalls) and a big buffer per connection (memory). The stack area gives a large read for
  // one syscall; only the bytes that actually arrive are copied into the heap.
  char overflow[kOverflowSize];
  iovec iov[2];
  int count = 0;
  if (space > 0) {
    iov[count].iov_base = write_ptr();
    iov[count].iov_len = space;
    ++count;
  }
  iov[count].iov_base = overflow;
  iov[count].iov_len = overflow_size;
  ++count;

  ssize_t n;
  do {
    n = ::readv(fd, iov, count);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    result.err = errno;
    return result;
  }
  const auto got = static_cast<std::size_t>(n);
  result.bytes = got;
  result.filled = got == space + overflow_size;
  if (got <= space) {
    write_pos_ += got;
  } else {
    write_pos_ += space;
    append(overflow, got - space);
  }
  return result;
}

}  // namespace reactor
