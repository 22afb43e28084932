// RESP2 parser and reply writers: tables of byte strings, no sockets.
#include "demo/resp_parser.hpp"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

namespace demo::resp {
namespace {

using Args = std::vector<std::string>;

Args args_of(const Parser& p) {
  Args out;
  for (std::size_t i = 0; i < p.argc(); ++i)
    out.emplace_back(p.arg(i));
  return out;
}

// A connection's input, fed to one parser in reads of `chunk` bytes; the parser's `consumed`
// is dropped after every call, as a server would. Returns every command, or stops at an error.
struct Feed {
  std::vector<Args> commands;
  std::vector<std::string> errors;  // kTooManyArgs and kError messages, in order
  bool protocol_error = false;
  std::string left;  // bytes still buffered at the end
};

Feed feed(std::string_view stream, std::size_t chunk, Limits limits = {}) {
  Parser parser(limits);
  Feed f;
  std::string buffer;
  for (std::size_t off = 0; off < stream.size() && !f.protocol_error; off += chunk) {
    buffer.append(stream.substr(off, chunk));
    for (;;) {
      Result r = parser.parse(buffer);
      if (r.status == Status::kCommand) f.commands.push_back(args_of(parser));
      if (r.status == Status::kTooManyArgs || r.status == Status::kError) {
        f.errors.emplace_back(r.error);
      }
      buffer.erase(0, r.consumed);
      if (r.status == Status::kError) f.protocol_error = true;
      if (r.status == Status::kNeedMore || r.status == Status::kError) break;
    }
  }
  f.left = buffer;
  return f;
}

// A multibulk command.
std::string command(const Args& args) {
  std::string s = "*" + std::to_string(args.size()) + "\r\n";
  for (const std::string& a : args)
    s += "$" + std::to_string(a.size()) + "\r\n" + a + "\r\n";
  return s;
}

TEST(RespParser, ParsesMultibulkCommand) {
  Parser p;
  std::string in = command({"SET", "key", "value"});
  Result r = p.parse(in);
  ASSERT_EQ(r.status, Status::kCommand);
  EXPECT_EQ(r.consumed, in.size());
  EXPECT_EQ(args_of(p), (Args{"SET", "key", "value"}));
  EXPECT_EQ(p.arg(1).data(), in.data() + std::string_view(in).find("key"));  // in place
}

TEST(RespParser, BulkStringsMayHoldAnyBytes) {
  Parser p;
  std::string value("a\r\n\0*$b", 7);
  std::string in = command({"SET", "", value});
  ASSERT_EQ(p.parse(in).status, Status::kCommand);
  EXPECT_EQ(args_of(p), (Args{"SET", "", value}));
}

TEST(RespParser, ParsesInlineCommands) {
  const std::vector<std::pair<std::string, Args>> cases = {
      {"PING\r\n", {"PING"}},
      {"PING\n", {"PING"}},
      {"SET a b\r\n", {"SET", "a", "b"}},
      {"  GET \t key  \r\n", {"GET", "key"}},
      {"ECHO \"quoted words\"\n", {"ECHO", "\"quoted", "words\""}},  // quotes are plain bytes
      {"$3\r\n", {"$3"}},
  };
  for (const auto& [in, args] : cases) {
    Parser p;
    Result r = p.parse(in);
    ASSERT_EQ(r.status, Status::kCommand) << in;
    EXPECT_EQ(r.consumed, in.size()) << in;
    EXPECT_EQ(args_of(p), args) << in;
  }
}

TEST(RespParser, EmptyInlineLinesAreSkipped) {
  Parser p;
  std::string in = "\r\n\n   \r\nPING\r\n";
  Result r = p.parse(in);
  ASSERT_EQ(r.status, Status::kCommand);
  EXPECT_EQ(r.consumed, in.size());
  EXPECT_EQ(args_of(p), (Args{"PING"}));
}

TEST(RespParser, OnlyEmptyLinesAreConsumedWhileWaiting) {
  Parser p;
  Result r = p.parse("\r\n\r\n\n");
  EXPECT_EQ(r.status, Status::kNeedMore);
  EXPECT_EQ(r.consumed, 5u);
}

TEST(RespParser, EmptyAndNullArraysAreSkipped) {
  Parser p;
  std::string in = "*0\r\n*-1\r\n" + command({"PING"});
  Result r = p.parse(in);
  ASSERT_EQ(r.status, Status::kCommand);
  EXPECT_EQ(r.consumed, in.size());
  EXPECT_EQ(args_of(p), (Args{"PING"}));
}

const std::vector<std::string> kCommands = {
    command({"SET", "key:000001", "xxx"}),
    command({"GET", "key:000001"}),
    "PING\r\n",
    command({"MSET", "a", "1", "b", "2"}),
    "INCR counter\n",
    command({"ECHO", std::string(300, 'e')}),
};

TEST(RespParser, EveryProperPrefixNeedsMoreAndTheRestCompletesIt) {
  for (const std::string& cmd : kCommands) {
    for (std::size_t k = 0; k < cmd.size(); ++k) {
      // One parser sees the prefix, then the whole: it resumes where it stopped.
      Parser p;
      std::string buffer = cmd.substr(0, k);
      Result first = p.parse(buffer);
      ASSERT_EQ(first.status, Status::kNeedMore) << "prefix " << k << " of " << cmd;
      ASSERT_EQ(first.consumed, 0u);
      buffer = cmd;  // a new allocation: the parser must not keep pointers
      Result second = p.parse(buffer);
      ASSERT_EQ(second.status, Status::kCommand) << "prefix " << k << " of " << cmd;
      EXPECT_EQ(second.consumed, cmd.size());
      Parser fresh;
      ASSERT_EQ(fresh.parse(cmd).status, Status::kCommand);
      EXPECT_EQ(args_of(p), args_of(fresh));
    }
  }
}

TEST(RespParser, PipelinedBatchParsesOneByOneWithExactCounts) {
  for (std::size_t n = 3; n <= 10; ++n) {
    std::string batch;
    for (std::size_t i = 0; i < n; ++i)
      batch += kCommands[i % kCommands.size()];
    Parser p;
    std::string_view rest = batch;
    for (std::size_t i = 0; i < n; ++i) {
      Result r = p.parse(rest);
      ASSERT_EQ(r.status, Status::kCommand) << "command " << i;
      EXPECT_EQ(r.consumed, kCommands[i % kCommands.size()].size()) << "command " << i;
      rest.remove_prefix(r.consumed);
    }
    Result end = p.parse(rest);
    EXPECT_EQ(end.status, Status::kNeedMore);
    EXPECT_EQ(end.consumed, 0u);
  }
}

TEST(RespParser, PipelinedStreamSplitAtAnyChunkSizeYieldsEveryCommand) {
  std::string stream;
  for (const std::string& c : kCommands)
    stream += c + "\r\n";  // empty lines between them
  Parser reference;
  std::vector<Args> expected;
  for (const std::string& c : kCommands) {
    ASSERT_EQ(reference.parse(c).status, Status::kCommand);
    expected.push_back(args_of(reference));
  }
  for (std::size_t chunk = 1; chunk <= stream.size(); ++chunk) {
    Feed f = feed(stream, chunk);
    EXPECT_FALSE(f.protocol_error) << "chunk " << chunk;
    EXPECT_EQ(f.commands, expected) << "chunk " << chunk;
    EXPECT_EQ(f.left, "") << "chunk " << chunk;
  }
}

TEST(RespParser, SkippedBytesBeforeAnUnfinishedCommandAreConsumed) {
  Parser p;
  std::string buffer = "\r\n*0\r\n*2\r\n$4\r\nECHO\r\n$2\r\nh";
  Result r = p.parse(buffer);
  ASSERT_EQ(r.status, Status::kNeedMore);
  EXPECT_EQ(r.consumed, 6u);
  buffer.erase(0, r.consumed);
  buffer += "i\r\n";
  r = p.parse(buffer);
  ASSERT_EQ(r.status, Status::kCommand);
  EXPECT_EQ(r.consumed, buffer.size());
  EXPECT_EQ(args_of(p), (Args{"ECHO", "hi"}));
}

struct ErrorCase {
  const char* what;
  std::string bytes;
  std::string error;
};

TEST(RespParser, ProtocolErrorsHaveRedisText) {
  const std::string kMultibulk = "Protocol error: invalid multibulk length";
  const std::string kBulk = "Protocol error: invalid bulk length";
  const std::vector<ErrorCase> cases = {
      {"non-numeric count", "*abc\r\n", kMultibulk},
      {"empty count", "*\r\n", kMultibulk},
      {"leading zero count", "*01\r\n", kMultibulk},
      {"plus sign count", "*+1\r\n", kMultibulk},
      {"count over max", "*1048577\r\n", kMultibulk},
      {"count over 18 digits", "*1000000000000000000000\r\n", kMultibulk},
      {"CR without LF after count", "*1\rx", kMultibulk},
      {"non-numeric bulk length", "*1\r\n$x\r\n", kBulk},
      {"negative bulk length", "*2\r\n$3\r\nGET\r\n$-1\r\n", kBulk},
      {"null bulk in command", "*1\r\n$-1\r\n", kBulk},
      {"huge bulk length", "*1\r\n$1000000000000\r\n", kBulk},
      {"bulk over max", "*1\r\n$67108865\r\n", kBulk},
      {"CR without LF after bulk length", "*1\r\n$3\rx", kBulk},
      {"integer instead of bulk", "*1\r\n:5\r\n", "Protocol error: expected '$', got ':'"},
      {"inline instead of bulk", "*2\r\n$3\r\nGET\r\nkey\r\n",
       "Protocol error: expected '$', got 'k'"},
      {"CR instead of bulk", "*1\r\n\r\n", "Protocol error: expected '$', got ' '"},
      {"payload longer than length", "*1\r\n$3\r\nPINGX\r\n",
       "Protocol error: bulk string not followed by CRLF"},
  };
  for (const ErrorCase& c : cases) {
    Parser p;
    Result r = p.parse(c.bytes);
    EXPECT_EQ(r.status, Status::kError) << c.what;
    EXPECT_EQ(r.error, c.error) << c.what;
  }
}

TEST(RespParser, BulkLengthOverAConfiguredMaxIsRefused) {
  Limits limits;
  limits.max_bulk = 10;
  Parser p(limits);
  EXPECT_EQ(p.parse(command({"SET", "k", std::string(10, 'v')})).status, Status::kCommand);
  Result r = p.parse("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$11\r\n");
  EXPECT_EQ(r.status, Status::kError);
  EXPECT_EQ(r.error, "Protocol error: invalid bulk length");
}

TEST(RespParser, HugeClaimedLengthsAreRefusedBeforeTheirBytesArrive) {
  // Nothing but the header has arrived: the answer comes from the digits alone.
  Parser p;
  EXPECT_EQ(p.parse("*1\r\n$1000000000000\r\n").status, Status::kError);
  Parser q;
  EXPECT_EQ(q.parse("*2147483648\r\n").status, Status::kError);
}

TEST(RespParser, InlineLineOverTheLimitIsTooBig) {
  Limits limits;
  Parser p;
  std::string line(limits.max_inline + 1, 'a');
  Result r = p.parse(line);
  EXPECT_EQ(r.status, Status::kError);
  EXPECT_EQ(r.error, "Protocol error: too big inline request");
  Parser q;
  EXPECT_EQ(q.parse(line + "\n").error, "Protocol error: too big inline request");
}

TEST(RespParser, InlineLineAtTheLimitIsAccepted) {
  Limits limits;
  Parser p;
  std::string line = "ECHO " + std::string(limits.max_inline - 5, 'a');
  ASSERT_EQ(line.size(), limits.max_inline);
  EXPECT_EQ(p.parse(line).status, Status::kNeedMore);
  Result r = p.parse(line + "\n");
  ASSERT_EQ(r.status, Status::kCommand);
  EXPECT_EQ(p.arg(1).size(), limits.max_inline - 5);
}

TEST(RespParser, LengthLineWithoutCarriageReturnIsTooBig) {
  Limits limits;
  Parser p;
  EXPECT_EQ(p.parse("*" + std::string(limits.max_inline + 1, '1')).error,
            "Protocol error: too big mbulk count string");
  Parser q;
  EXPECT_EQ(q.parse("*1\r\n$" + std::string(limits.max_inline + 1, '1')).error,
            "Protocol error: too big bulk count string");
}

TEST(RespParser, ProtocolErrorAnswerDoesNotDependOnWhereTheBytesAreSplit) {
  const std::string stream =
      command({"PING"}) + "*2\r\n$3\r\nGET\r\n$1000000000000\r\n" + command({"PING"});
  for (std::size_t chunk = 1; chunk <= stream.size(); ++chunk) {
    Feed f = feed(stream, chunk);
    EXPECT_TRUE(f.protocol_error) << "chunk " << chunk;
    EXPECT_EQ(f.commands.size(), 1u) << "chunk " << chunk;
    EXPECT_EQ(f.errors, std::vector<std::string>{"Protocol error: invalid bulk length"});
  }
}

TEST(RespParser, MultibulkWithTooManyArgsIsRejectedAndTheConnectionGoesOn) {
  Limits limits;
  limits.max_args = 4;
  Args mset = {"MSET", "a", "1", "b", "2"};
  std::string stream = command(mset) + command({"GET", "a"});
  for (std::size_t chunk = 1; chunk <= stream.size(); ++chunk) {
    Feed f = feed(stream, chunk, limits);
    EXPECT_FALSE(f.protocol_error);
    EXPECT_EQ(f.errors, std::vector<std::string>{"too many arguments in request (the limit is 4)"});
    EXPECT_EQ(f.commands, (std::vector<Args>{{"GET", "a"}})) << "chunk " << chunk;
  }
}

TEST(RespParser, TooManyArgsAreDroppedAsTheyArriveNotBuffered) {
  Limits limits;
  limits.max_args = 2;
  Parser p(limits);
  std::string buffer = "*100\r\n$3\r\nDEL\r\n$2\r\nk1\r\n$2\r\nk";
  Result r = p.parse(buffer);
  ASSERT_EQ(r.status, Status::kNeedMore);
  EXPECT_EQ(r.consumed, buffer.size() - 1);  // all but the unfinished argument's payload
  buffer.erase(0, r.consumed);
  for (int i = 3; i < 100; ++i) {
    buffer += "2\r\n";
    r = p.parse(buffer);
    buffer.erase(0, r.consumed);
    ASSERT_EQ(r.status, Status::kNeedMore);
    EXPECT_LT(buffer.size(), 16u);
    buffer += "$2\r\nk";
  }
  buffer += "2\r\n";
  r = p.parse(buffer);
  EXPECT_EQ(r.status, Status::kTooManyArgs);
  EXPECT_EQ(p.argc(), 100u);
  buffer.erase(0, r.consumed);
  EXPECT_TRUE(buffer.empty());
}

TEST(RespParser, InlineWithTooManyArgsIsRejected) {
  Limits limits;
  limits.max_args = 3;
  Parser p(limits);
  Result r = p.parse("MGET a b c\r\nPING\r\n");
  EXPECT_EQ(r.status, Status::kTooManyArgs);
  EXPECT_EQ(r.consumed, 12u);
  EXPECT_EQ(p.argc(), 4u);
  EXPECT_EQ(p.parse("PING\r\n").status, Status::kCommand);
}

TEST(RespParser, DefaultArgumentCapHoldsAnMsetOf2047Pairs) {
  Args mset = {"MSET"};
  for (int i = 0; i < 2047; ++i) {
    mset.push_back("k" + std::to_string(i));
    mset.push_back("v");
  }
  Parser p;
  ASSERT_EQ(p.parse(command(mset)).status, Status::kCommand);
  EXPECT_EQ(p.argc(), 4095u);
  mset.push_back("k");
  mset.push_back("v");
  EXPECT_EQ(p.parse(command(mset)).status, Status::kTooManyArgs);
}

TEST(RespReply, WritersProduceResp2) {
  std::string out;
  append_simple(out, "OK");
  append_error(out, "ERR unknown command 'FOO'");
  append_error(out, "ERR", "Protocol error: invalid bulk length");
  append_integer(out, -42);
  append_integer(out, INT64_MAX);
  append_bulk(out, "bar");
  append_bulk(out, "");
  append_null_bulk(out);
  append_array_header(out, 2);
  append_null_array(out);
  EXPECT_EQ(out,
            "+OK\r\n"
            "-ERR unknown command 'FOO'\r\n"
            "-ERR Protocol error: invalid bulk length\r\n"
            ":-42\r\n"
            ":9223372036854775807\r\n"
            "$3\r\nbar\r\n"
            "$0\r\n\r\n"
            "$-1\r\n"
            "*2\r\n"
            "*-1\r\n");
}

TEST(RespReply, LineRepliesCannotBreakFraming) {
  std::string out;
  append_error(out, "ERR unknown command 'a\r\nb'");
  append_simple(out, "x\ny");
  EXPECT_EQ(out, "-ERR unknown command 'a  b'\r\n+x y\r\n");
}

TEST(RespReply, BulkRepliesKeepTheirBytes) {
  std::string out;
  append_bulk(out, "a\r\nb");
  EXPECT_EQ(out, "$4\r\na\r\nb\r\n");
}

}  // namespace
}  // namespace demo::resp
