// fuzz_buffer: random operation sequences on a reactor::Buffer, checked after every step
// against a std::string model.
//
// Input: a script of 3-byte steps [op, arg_lo, arg_hi] (arg 0-65535; a byte count is taken
// modulo kMaxChunk + 1, except reserve's), at most kMaxSteps.
// Reads come from a non-blocking AF_UNIX socketpair made per input; `pending` models the bytes
// written to the peer and not yet read. Invariants (buffer.hpp): contents and size equal the
// model; reserve(n) leaves writable() >= n; an empty buffer has its whole block writable (it
// rewinds); shrink_to_fit() frees an empty buffer's block and keeps a non-empty one; a moved-from
// buffer is empty; capacity never shrinks but by shrink_to_fit() (moves keep the block); no
// reallocation or compaction (capacity, block and data() unchanged) when append, reserve,
// commit or read_from need n <= writable(); no reallocation without growth; read_from() appends
// exactly the next bytes of the stream, says EAGAIN when nothing is there, EOF after the peer's
// shutdown, and reports `filled` exactly when it used all the space offered (a short read leaves
// the socket drained).
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>

#include "reactor/buffer.hpp"

namespace {

constexpr std::size_t kMaxSteps = 512;
// Keep each execution fast: the model is compared in full after every step.
constexpr std::size_t kMaxModel = 256 << 10;
constexpr std::size_t kMaxChunk = 16 << 10;  // bytes appended, committed or written per step

[[noreturn]] void fail(const char* what, std::size_t step) {
  std::fprintf(stderr, "fuzz_buffer: step %zu: %s\n", step, what);
  std::abort();
}

// Deterministic, position-dependent content: a misplaced or repeated byte shows as a mismatch.
// Built once: generating it byte by byte per step would dominate the run time (the fuzzer
// instruments every comparison in this file).
constexpr std::size_t kPeriod = 1 << 20;  // > kMaxModel: no repeat within one buffer
std::string_view content(std::size_t from, std::size_t n) {
  static const std::string pattern = [] {
    std::string p(kPeriod + kMaxChunk, '\0');
    for (std::size_t i = 0; i < p.size(); ++i)
      p[i] = static_cast<char>((static_cast<std::uint32_t>(i % kPeriod) * 2654435761u) >> 24);
    return p;
  }();
  return std::string_view(pattern).substr(from % kPeriod, n);
}

class Script {
 public:
  Script() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
      std::perror("socketpair");
      std::abort();
    }
    reader_ = sv[0];
    writer_ = sv[1];
  }
  ~Script() {
    ::close(reader_);
    ::close(writer_);
  }
  Script(const Script&) = delete;
  Script& operator=(const Script&) = delete;

  void step(std::size_t index, std::uint8_t op, std::size_t arg) {
    step_ = index;
    const std::size_t capacity_before = buffer_.capacity();
    const char* block_before = block();
    switch (op % 10) {
      case 0:
        append(arg % (kMaxChunk + 1));
        break;
      case 1: {
        const std::size_t n = arg % (model_.size() + 1);
        buffer_.consume(n);
        model_.erase(0, n);
        break;
      }
      case 2: {
        const Unmoved unmoved(*this, arg);
        buffer_.reserve(arg);
        if (buffer_.writable() < arg) fail("reserve(n) left writable() < n", step_);
        unmoved.check();
        break;
      }
      case 3:
        write_to_peer(arg % (kMaxChunk + 1));
        read();
        break;
      case 4:
        buffer_.clear();
        model_.clear();
        break;
      case 5: {
        const std::size_t before = buffer_.capacity();
        const bool was_empty = buffer_.empty();
        buffer_.shrink_to_fit();
        if (was_empty && buffer_.capacity() != 0)
          fail("shrink_to_fit() kept an empty block", step_);
        if (!was_empty && buffer_.capacity() != before)
          fail("shrink_to_fit() resized live bytes", step_);
        break;
      }
      case 6:
        commit(arg % (kMaxChunk + 1));
        break;
      case 7: {
        reactor::Buffer other(std::move(buffer_));
        if (!buffer_.empty() || buffer_.capacity() != 0 || buffer_.writable() != 0) {
          fail("a moved-from buffer is not empty", step_);
        }
        if (arg & 1) {
          buffer_ = std::move(other);
        } else {
          reactor::Buffer third;
          third = std::move(other);
          buffer_ = std::move(third);
        }
        break;
      }
      case 8:
        read();
        break;
      case 9:
        ::shutdown(writer_, SHUT_WR);
        writer_shut_ = true;
        break;
    }
    if (op % 10 != 5) {
      if (buffer_.capacity() < capacity_before) fail("the capacity shrank", step_);
      if (buffer_.capacity() == capacity_before && block() != block_before) {
        fail("reallocated without growing", step_);
      }
    }
    check();
  }

 private:
  // The start of the block (null before the first allocation).
  const char* block() { return buffer_.write_ptr() - (buffer_.capacity() - buffer_.writable()); }

  // An operation that needs at most writable() bytes neither reallocates nor compacts: the
  // capacity, the block and the readable bytes' address stay as they were.
  class Unmoved {
   public:
    Unmoved(Script& s, std::size_t n)
        : s_(s),
          fits_(n <= s.buffer_.writable()),
          capacity_(s.buffer_.capacity()),
          block_(s.block()),
          data_(s.buffer_.data()) {}
    void check() const {
      if (!fits_) return;
      if (s_.buffer_.capacity() != capacity_ || s_.block() != block_) {
        fail("reallocated although n <= writable()", s_.step_);
      }
      if (!s_.buffer_.empty() && s_.buffer_.data() != data_) {
        fail("moved the readable bytes although n <= writable()", s_.step_);
      }
    }

   private:
    Script& s_;
    bool fits_;
    std::size_t capacity_;
    const char* block_;
    const char* data_;
  };

  void append(std::size_t n) {
    if (model_.size() + n > kMaxModel) return;
    const std::string_view bytes = content(counter_, n);
    counter_ += n;
    const Unmoved unmoved(*this, n);
    buffer_.append(bytes);
    unmoved.check();
    model_ += bytes;
  }

  void commit(std::size_t n) {
    if (model_.size() + n > kMaxModel) return;
    const Unmoved unmoved(*this, n);
    buffer_.reserve(n);
    unmoved.check();
    if (buffer_.writable() < n) fail("reserve(n) left writable() < n", step_);
    const std::string_view bytes = content(counter_, n);
    counter_ += n;
    if (n > 0) std::memcpy(buffer_.write_ptr(), bytes.data(), n);
    buffer_.commit(n);
    model_ += bytes;
  }

  void write_to_peer(std::size_t n) {
    if (writer_shut_ || n == 0) return;
    const std::string_view bytes = content(counter_, n);
    const ssize_t sent = ::send(writer_, bytes.data(), n, MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      fail("send to the socketpair failed", step_);
    }
    counter_ += static_cast<std::size_t>(sent);
    pending_ += bytes.substr(0, static_cast<std::size_t>(sent));
  }

  void read() {
    if (model_.size() + pending_.size() > kMaxModel) return;
    // What one read offers: the free space, plus the stack area when the space is smaller.
    const std::size_t space = buffer_.writable();
    const std::size_t offered =
        space >= reactor::Buffer::kOverflowSize ? space : space + reactor::Buffer::kOverflowSize;
    const std::size_t capacity = buffer_.capacity();
    const char* block_before = block();
    const char* data_before = buffer_.data();
    const reactor::ReadResult r = buffer_.read_from(reader_);
    // What fits in the free space is read there: no reallocation, no compaction.
    if (r.bytes <= space) {
      if (buffer_.capacity() != capacity || block() != block_before) {
        fail("read_from() reallocated for bytes that fit", step_);
      }
      if (!model_.empty() && buffer_.data() != data_before) {
        fail("read_from() moved the readable bytes for bytes that fit", step_);
      }
    }
    if (r.err != 0) {
      if (r.error() != std::errc::resource_unavailable_try_again) fail("read_from() failed", step_);
      if (!pending_.empty()) fail("read_from() said EAGAIN with bytes pending", step_);
      if (writer_shut_) fail("read_from() said EAGAIN after the peer's shutdown", step_);
      if (r.bytes != 0) fail("a failed read_from() reported bytes", step_);
      return;
    }
    if (r.eof()) {
      if (!pending_.empty()) fail("read_from() said EOF with bytes pending", step_);
      if (!writer_shut_) fail("read_from() said EOF before the peer's shutdown", step_);
      return;
    }
    if (r.bytes > pending_.size()) fail("read_from() read more than was sent", step_);
    if (r.filled != (r.bytes == offered)) fail("ReadResult::filled is wrong", step_);
    model_.append(pending_, 0, r.bytes);
    pending_.erase(0, r.bytes);
    if (!r.filled && !pending_.empty()) fail("a short read left bytes in the socket", step_);
  }

  void check() const {
    if (buffer_.size() != model_.size()) fail("size() differs from the model", step_);
    if (buffer_.empty() != model_.empty()) fail("empty() differs from the model", step_);
    if (buffer_.view() != model_) fail("contents differ from the model", step_);
    if (buffer_.capacity() < buffer_.size()) fail("capacity() < size()", step_);
    if (buffer_.writable() > buffer_.capacity() - buffer_.size()) {
      fail("writable() overlaps the readable bytes", step_);
    }
    if (buffer_.empty() && buffer_.writable() != buffer_.capacity()) {
      fail("an empty buffer did not rewind to the start of its block", step_);
    }
  }

  reactor::Buffer buffer_;
  std::string model_;
  std::string pending_;  // written to the peer, not yet read
  std::size_t counter_ = 0;
  std::size_t step_ = 0;
  int reader_ = -1;
  int writer_ = -1;
  bool writer_shut_ = false;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Script script;
  const std::size_t steps = std::min(size / 3, kMaxSteps);
  for (std::size_t i = 0; i < steps; ++i) {
    const std::uint8_t* s = data + 3 * i;
    script.step(i, s[0], static_cast<std::size_t>(s[1]) | static_cast<std::size_t>(s[2]) << 8);
  }
  return 0;
}
