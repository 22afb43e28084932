#include "demo/resp_parser.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>

namespace demo::resp {
namespace {

constexpr const char* kInvalidMultibulk = "Protocol error: invalid multibulk length";
constexpr const char* kInvalidBulk = "Protocol error: invalid bulk length";
constexpr const char* kTooBigMultibulk = "Protocol error: too big mbulk count string";
constexpr const char* kTooBigBulk = "Protocol error: too big bulk count string";
constexpr const char* kTooBigInline = "Protocol error: too big inline request";
// redis-server trusts the two bytes after a payload to be CRLF; checking them keeps a client
// that miscounts from being read out of frame.
constexpr const char* kUnterminatedBulk = "Protocol error: bulk string not followed by CRLF";

// redis-server's string2ll, as strict: an optional '-', then "0" or digits without a leading
// zero. 18 digits at most, which is beyond every limit and cannot overflow.
bool parse_length(std::string_view s, std::int64_t& out) {
  bool negative = !s.empty() && s.front() == '-';
  if (negative) s.remove_prefix(1);
  if (s.empty() || s.size() > 18) return false;
  if (s.front() == '0' && (s.size() > 1 || negative)) return false;
  std::int64_t n = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    n = n * 10 + (c - '0');
  }
  out = negative ? -n : n;
  return true;
}

bool is_inline_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

// Replies are one line: CR and LF in a text become spaces (redis-server does the same).
void append_line_text(std::string& out, std::string_view text) {
  std::size_t from = out.size();
  out += text;
  for (std::size_t i = from; i < out.size(); ++i) {
    if (out[i] == '\r' || out[i] == '\n') out[i] = ' ';
  }
}

void append_number_line(std::string& out, char type, std::int64_t n) {
  char digits[24];
  digits[0] = type;
  auto [end, ec] = std::to_chars(digits + 1, digits + sizeof digits - 2, n);
  end[0] = '\r';
  end[1] = '\n';
  out.append(digits, end + 2);
}

}  // namespace

Parser::Parser(Limits limits) : limits_(limits) {
  std::string_view prefix = "too many arguments in request (the limit is ";
  char* p = std::copy(prefix.begin(), prefix.end(), too_many_args_text_);
  p = std::to_chars(p, std::end(too_many_args_text_) - 1, limits_.max_args).ptr;
  *p++ = ')';
  too_many_args_length_ = static_cast<std::size_t>(p - too_many_args_text_);
}

// A `*N` or `$N` line starting at `from` (after the type byte): the number up to CR, which must
// be followed by LF. `valid` tells whether the number parsed.
Parser::LineStatus Parser::length_line(std::string_view in, std::size_t from, std::int64_t& value,
                                       bool& valid, std::size_t& next) const noexcept {
  std::size_t window = std::min(in.size() - from, limits_.max_inline);
  const void* cr = std::memchr(in.data() + from, '\r', window);
  if (cr == nullptr) {
    return in.size() - from > limits_.max_inline ? LineStatus::kTooLong : LineStatus::kNeedMore;
  }
  std::size_t at = static_cast<std::size_t>(static_cast<const char*>(cr) - in.data());
  if (at + 1 >= in.size()) return LineStatus::kNeedMore;
  if (in[at + 1] != '\n') return LineStatus::kBadEnd;
  valid = parse_length(in.substr(from, at - from), value);
  next = at + 2;
  return LineStatus::kOk;
}

void Parser::add_arg(std::size_t offset, std::size_t length) {
  if (!discarding_ && argc_ < limits_.max_args) {
    if (argc_ == args_.size()) {
      args_.push_back({offset, length});
    } else {
      args_[argc_] = {offset, length};
    }
  }
  ++argc_;
}

Result Parser::finish(Status status, std::size_t consumed, std::string_view error) {
  phase_ = Phase::kIdle;
  start_ = pos_ = 0;
  remaining_ = 0;
  bulk_length_ = -1;
  discarding_ = false;
  inline_scanned_ = 0;
  return {status, consumed, error};
}

Result Parser::complete(std::size_t consumed) {
  if (argc_ > limits_.max_args)
    return finish(Status::kTooManyArgs, consumed, too_many_args_message());
  return finish(Status::kCommand, consumed);
}

// Out of bytes at `pos`. Everything before the current command can go, and everything before
// `pos` when no argument is kept; what stays is re-based on the new start of the input.
Result Parser::suspend(std::size_t pos) {
  std::size_t drop = phase_ == Phase::kIdle || discarding_ ? pos : start_;
  if (phase_ == Phase::kMultibulk && !discarding_) {
    std::size_t kept = std::min(argc_, limits_.max_args);
    for (std::size_t i = 0; i < kept; ++i)
      args_[i].offset -= drop;
  }
  start_ -= std::min(start_, drop);
  pos_ = pos - drop;
  return {Status::kNeedMore, drop, {}};
}

Result Parser::parse(std::string_view in) {
  base_ = in.data();
  std::size_t pos = pos_;
  for (;;) {
    if (phase_ == Phase::kIdle) {
      if (pos == in.size()) return suspend(pos);
      start_ = pos;
      if (in[pos] != '*') {
        // Inline: one line, resuming the search for its end where the last call left it.
        std::size_t scan = pos + inline_scanned_;
        std::size_t limit = std::min(in.size(), pos + limits_.max_inline + 1);
        const void* lf = scan < limit ? std::memchr(in.data() + scan, '\n', limit - scan) : nullptr;
        if (lf == nullptr) {
          if (in.size() - pos > limits_.max_inline) return finish(Status::kError, 0, kTooBigInline);
          inline_scanned_ = in.size() - pos;
          return suspend(pos);
        }
        std::size_t end = static_cast<std::size_t>(static_cast<const char*>(lf) - in.data());
        inline_scanned_ = 0;
        argc_ = 0;
        for (std::size_t i = pos; i < end;) {
          if (is_inline_space(in[i])) {
            ++i;
            continue;
          }
          std::size_t word = i;
          while (i < end && !is_inline_space(in[i]))
            ++i;
          add_arg(word, i - word);
        }
        pos = end + 1;
        if (argc_ == 0) continue;  // an empty line: skipped
        return complete(pos);
      }

      std::int64_t count = 0;
      bool valid = false;
      std::size_t next = 0;
      switch (length_line(in, pos + 1, count, valid, next)) {
        case LineStatus::kNeedMore:
          return suspend(pos);
        case LineStatus::kTooLong:
          return finish(Status::kError, 0, kTooBigMultibulk);
        case LineStatus::kBadEnd:
          return finish(Status::kError, 0, kInvalidMultibulk);
        case LineStatus::kOk:
          break;
      }
      if (!valid || count > limits_.max_multibulk) {
        return finish(Status::kError, 0, kInvalidMultibulk);
      }
      pos = next;
      if (count <= 0) continue;  // `*0`, `*-1`: nothing to run
      phase_ = Phase::kMultibulk;
      remaining_ = count;
      argc_ = 0;
      bulk_length_ = -1;
      discarding_ = static_cast<std::uint64_t>(count) > limits_.max_args;
    }

    while (remaining_ > 0) {
      if (bulk_length_ < 0) {
        if (pos == in.size()) return suspend(pos);
        if (in[pos] != '$') {
          char got = in[pos] == '\r' || in[pos] == '\n' ? ' ' : in[pos];
          std::string_view prefix = "Protocol error: expected '$', got '";
          std::memcpy(error_text_, prefix.data(), prefix.size());
          error_text_[prefix.size()] = got;
          error_text_[prefix.size() + 1] = '\'';
          return finish(Status::kError, 0, std::string_view(error_text_, prefix.size() + 2));
        }
        std::int64_t length = 0;
        bool valid = false;
        std::size_t next = 0;
        switch (length_line(in, pos + 1, length, valid, next)) {
          case LineStatus::kNeedMore:
            return suspend(pos);
          case LineStatus::kTooLong:
            return finish(Status::kError, 0, kTooBigBulk);
          case LineStatus::kBadEnd:
            return finish(Status::kError, 0, kInvalidBulk);
          case LineStatus::kOk:
            break;
        }
        if (!valid || length < 0 || static_cast<std::uint64_t>(length) > limits_.max_bulk) {
          return finish(Status::kError, 0, kInvalidBulk);
        }
        bulk_length_ = length;
        pos = next;
      }
      std::size_t length = static_cast<std::size_t>(bulk_length_);
      if (in.size() - pos < length + 2) return suspend(pos);
      if (in[pos + length] != '\r' || in[pos + length + 1] != '\n') {
        return finish(Status::kError, 0, kUnterminatedBulk);
      }
      add_arg(pos, length);
      pos += length + 2;
      bulk_length_ = -1;
      --remaining_;
    }
    return complete(pos);
  }
}

void append_simple(std::string& out, std::string_view text) {
  out += '+';
  append_line_text(out, text);
  out += "\r\n";
}

void append_error(std::string& out, std::string_view message) {
  out += '-';
  append_line_text(out, message);
  out += "\r\n";
}

void append_error(std::string& out, std::string_view code, std::string_view message) {
  out += '-';
  append_line_text(out, code);
  out += ' ';
  append_line_text(out, message);
  out += "\r\n";
}

void append_integer(std::string& out, std::int64_t n) {
  append_number_line(out, ':', n);
}

void append_bulk(std::string& out, std::string_view bytes) {
  append_number_line(out, '$', static_cast<std::int64_t>(bytes.size()));
  out += bytes;
  out += "\r\n";
}

void append_null_bulk(std::string& out) {
  out += "$-1\r\n";
}

void append_array_header(std::string& out, std::size_t n) {
  append_number_line(out, '*', static_cast<std::int64_t>(n));
}

void append_null_array(std::string& out) {
  out += "*-1\r\n";
}

}  // namespace demo::resp
