// RESP2 command parsing and reply writing for the demo key-value server: plain code over bytes,
// no sockets, so the tests feed it tables of byte strings.
//
// Requests come in two forms, told apart by their first byte, as redis-server does:
// - multibulk: `*N\r\n` then N bulk strings `$len\r\n<len bytes>\r\n`;
// - inline: anything else, one line ended by `\n` (a `\r` before it is dropped), split on
//   spaces and tabs. Quotes are not interpreted (a quote is an ordinary byte), so the inline form
//   never answers `unbalanced quotes`. Empty inline lines are skipped, as are `*0` and `*-1`
//   (null array), as redis-server skips them.
//
// Parser contract:
// - One Parser per connection; not thread-safe. It is small (~200 bytes, plus the argument
//   offsets of the longest command seen: grown on demand up to Limits::max_args as arguments
//   arrive, never shrunk), so steady-state parsing allocates nothing.
// - parse(input) is called with the connection's unconsumed input. The caller then drops exactly
//   Result::consumed bytes from the front (on every status, kNeedMore included: skipped empty
//   lines, or the arguments of an oversized command already counted), and calls again when bytes
//   arrive. Between calls the remaining bytes must stay as they were; they may move (the parser
//   keeps offsets, not pointers), so a buffer may reallocate.
// - A command split across reads resumes where it stopped: arguments already parsed are not
//   parsed again, and the search for an inline line's end goes on from where it was. Only an
//   unfinished `*N`/`$N` line (at most max_inline bytes) is read again.
// - kCommand: argc()/arg(i) are the arguments, views into the input of that call, valid until the
//   caller drops or changes those bytes or calls parse() again.
// - kTooManyArgs: a well-formed command with more than Limits::max_args arguments (an MSET of
//   thousands of keys). Its bytes are consumed (a multibulk one is streamed: at most one
//   argument is buffered at a time) and the connection stays usable; answer it with
//   Result::error as an `-ERR` reply. argc() is the count; arg() is not available.
// - kError: a protocol error; Result::error is redis-server's text ("Protocol error: invalid
//   bulk length"). Answer `-ERR <text>` and close the connection: the stream cannot be re-synced.
//   Nothing is allocated for a claimed length: `$1000000000000` is refused from its digits.
//
// Reply writers (append_*) append to a caller-owned std::string, reused for every batch of
// pipelined replies.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace demo::resp {

struct Limits {
  std::size_t max_bulk = 64 * 1024 * 1024;   // longest bulk string; longer: invalid bulk length
  std::int64_t max_multibulk = 1024 * 1024;  // largest `*N`; larger: invalid multibulk length
  std::size_t max_args = 4096;               // more arguments: kTooManyArgs
  std::size_t max_inline = 64 * 1024;        // longest inline line, and longest `*`/`$` line
};

enum class Status { kNeedMore, kCommand, kTooManyArgs, kError };

struct Result {
  Status status = Status::kNeedMore;
  std::size_t consumed = 0;  // drop this many bytes from the front of the input, on any status
  std::string_view error;    // kError, kTooManyArgs: the message, without "-ERR " and CRLF
};

class Parser {
 public:
  explicit Parser(Limits limits = {});

  Result parse(std::string_view input);

  std::size_t argc() const noexcept { return argc_; }
  std::string_view arg(std::size_t i) const noexcept {
    return {base_ + args_[i].offset, args_[i].length};
  }

  const Limits& limits() const noexcept { return limits_; }

 private:
  struct Span {
    std::size_t offset;
    std::size_t length;
  };
  enum class Phase { kIdle, kMultibulk };

  enum class LineStatus { kOk, kNeedMore, kTooLong, kBadEnd };
  LineStatus length_line(std::string_view input, std::size_t from, std::int64_t& value, bool& valid,
                         std::size_t& next) const noexcept;
  Result finish(Status status, std::size_t consumed, std::string_view error = {});
  Result complete(std::size_t consumed);
  Result suspend(std::size_t pos);
  void add_arg(std::size_t offset, std::size_t length);
  std::string_view too_many_args_message() const noexcept {
    return {too_many_args_text_, too_many_args_length_};
  }

  Limits limits_;
  std::vector<Span> args_;
  std::size_t argc_ = 0;  // arguments of the current command, stored or not
  const char* base_ = nullptr;

  // Where the current command stands, offsets from the start of the unconsumed input.
  Phase phase_ = Phase::kIdle;
  std::size_t start_ = 0;           // first byte of the command
  std::size_t pos_ = 0;             // next byte to parse
  std::int64_t remaining_ = 0;      // multibulk: arguments still to come
  std::int64_t bulk_length_ = -1;   // multibulk: payload length of the next argument, once known
  bool discarding_ = false;         // multibulk: more than max_args arguments, none kept
  std::size_t inline_scanned_ = 0;  // idle: bytes from pos_ known to hold no '\n'

  char too_many_args_text_[72] = {};  // "too many arguments ... (the limit is N)"
  std::size_t too_many_args_length_ = 0;
  char error_text_[48] = {};  // formatted errors ("expected '$', got 'X'")
};

// `+text\r\n`. CR and LF in `text` become spaces, as redis-server does, so a reply is one line.
void append_simple(std::string& out, std::string_view text);
// `-message\r\n`: message starts with the error code ("ERR unknown command 'FOO'"). CR and LF in
// it become spaces.
void append_error(std::string& out, std::string_view message);
// `-code message\r\n`, for a message without its code: append_error(out, "ERR", result.error).
void append_error(std::string& out, std::string_view code, std::string_view message);
// `:n\r\n`
void append_integer(std::string& out, std::int64_t n);
// `$len\r\nbytes\r\n`
void append_bulk(std::string& out, std::string_view bytes);
// `$-1\r\n`
void append_null_bulk(std::string& out);
// `*n\r\n`, then the caller appends the n elements.
void append_array_header(std::string& out, std::size_t n);
// `*-1\r\n`
void append_null_array(std::string& out);

}  // namespace demo::resp
