// HTTP request parser and response writers: tables of byte strings, no sockets.
#include "demo/http_parser.hpp"

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

namespace demo::http {
namespace {

using namespace std::string_literals;

ParseResult parse(std::string_view bytes, Request& request) {
  return parse_request(bytes, request);
}

ParseResult parse(std::string_view bytes) {
  Request request;
  return parse_request(bytes, request);
}

// Requests that parse, with what they occupy (all of it: no body beyond Content-Length).
const std::vector<std::string> kRequests = {
    "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "GET /index.html?q=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
    "HEAD /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
    "GET / HTTP/1.1\nHost: bare-lf\n\n",
    "DELETE /k HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
};

TEST(HttpParser, ParsesRequestLineAndHeaders) {
  Request r;
  std::string in = "GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept:  */* \r\n\r\n";
  ASSERT_EQ(parse(in, r).status, ParseStatus::kComplete);
  EXPECT_EQ(r.method, "GET");
  EXPECT_EQ(r.target, "/path?q=1");
  EXPECT_EQ(r.version_minor, 1);
  ASSERT_EQ(r.headers().size(), 2u);
  EXPECT_EQ(r.headers()[0].name, "Host");
  EXPECT_EQ(r.headers()[0].value, "example.com");
  EXPECT_EQ(r.headers()[1].value, "*/*");  // optional whitespace trimmed
  EXPECT_EQ(r.header("ACCEPT"), "*/*");
  EXPECT_EQ(r.header("Missing"), "");
  EXPECT_EQ(r.head_bytes, in.size());
  EXPECT_EQ(r.consumed, in.size());
  EXPECT_EQ(r.body_remaining, 0u);
  EXPECT_TRUE(r.keep_alive);
}

TEST(HttpParser, ResultsPointIntoTheInput) {
  Request r;
  std::string in = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
  ASSERT_EQ(parse(in, r).status, ParseStatus::kComplete);
  EXPECT_EQ(r.method.data(), in.data());
  EXPECT_EQ(r.target.data(), in.data() + 4);
}

TEST(HttpParser, EveryProperPrefixNeedsMoreBytes) {
  for (const std::string& req : kRequests) {
    Request full;
    ASSERT_EQ(parse(req, full).status, ParseStatus::kComplete) << req;
    for (std::size_t k = 0; k < full.head_bytes; ++k) {
      EXPECT_EQ(parse(std::string_view(req).substr(0, k)).status, ParseStatus::kNeedMore)
          << "prefix " << k << " of " << req;
    }
  }
}

TEST(HttpParser, EveryPrefixWithTheWholeHeadIsCompleteWithTheRestOfTheBodyToDiscard) {
  for (const std::string& req : kRequests) {
    Request full;
    ASSERT_EQ(parse(req, full).status, ParseStatus::kComplete);
    for (std::size_t k = full.head_bytes; k <= req.size(); ++k) {
      Request r;
      ASSERT_EQ(parse(std::string_view(req).substr(0, k), r).status, ParseStatus::kComplete);
      EXPECT_EQ(r.consumed, k) << req;
      EXPECT_EQ(r.body_remaining, req.size() - k) << req;
      EXPECT_EQ(r.method, full.method);
    }
  }
}

TEST(HttpParser, PipelinedBatchParsesOneByOneWithExactCounts) {
  for (std::size_t n = 3; n <= 10; ++n) {
    std::string batch;
    std::vector<std::size_t> sizes;
    for (std::size_t i = 0; i < n; ++i) {
      const std::string& req = kRequests[i % kRequests.size()];
      batch += req;
      sizes.push_back(req.size());
    }
    std::string_view rest = batch;
    for (std::size_t i = 0; i < n; ++i) {
      Request r;
      ASSERT_EQ(parse(rest, r).status, ParseStatus::kComplete) << "request " << i;
      EXPECT_EQ(r.consumed, sizes[i]) << "request " << i;
      EXPECT_EQ(r.body_remaining, 0u);
      rest.remove_prefix(r.consumed);
    }
    EXPECT_TRUE(rest.empty());
    EXPECT_EQ(parse(rest).status, ParseStatus::kNeedMore);
  }
}

// A connection's input fed in reads of `chunk` bytes: consume what parses, discard the body
// bytes still owed as they arrive, count the requests.
TEST(HttpParser, PipelinedStreamSplitAtAnyChunkSizeYieldsEveryRequest) {
  std::string stream;
  for (const std::string& req : kRequests)
    stream += req;
  stream += "POST /big HTTP/1.1\r\nContent-Length: 40\r\n\r\n" + std::string(40, 'b');
  stream += "GET /last HTTP/1.1\r\n\r\n";
  const std::size_t expected = kRequests.size() + 2;

  for (std::size_t chunk = 1; chunk <= stream.size(); ++chunk) {
    std::string buffer;
    std::uint64_t discard = 0;
    std::vector<std::string> targets;
    for (std::size_t off = 0; off < stream.size(); off += chunk) {
      buffer.append(stream, off, chunk);
      for (;;) {
        std::uint64_t drop = std::min<std::uint64_t>(discard, buffer.size());
        buffer.erase(0, drop);
        discard -= drop;
        if (discard > 0) break;
        Request r;
        ParseResult res = parse(buffer, r);
        ASSERT_NE(res.status, ParseStatus::kError) << "chunk " << chunk;
        if (res.status == ParseStatus::kNeedMore) break;
        targets.emplace_back(r.target);
        discard = r.body_remaining;
        buffer.erase(0, r.consumed);
      }
    }
    EXPECT_TRUE(buffer.empty()) << "chunk " << chunk;
    ASSERT_EQ(targets.size(), expected) << "chunk " << chunk;
    EXPECT_EQ(targets[expected - 2], "/big");
    EXPECT_EQ(targets[expected - 1], "/last");
  }
}

TEST(HttpParser, BodyLargerThanTheBufferReportsTheBytesStillToDiscard) {
  Request r;
  std::string in = "POST / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n" + std::string(100, 'x');
  ASSERT_EQ(parse(in, r).status, ParseStatus::kComplete);
  EXPECT_EQ(r.content_length, 1000000u);
  EXPECT_EQ(r.consumed, in.size());
  EXPECT_EQ(r.body_remaining, 1000000u - 100u);
}

TEST(HttpParser, EmptyLinesBeforeTheRequestLineAreSkippedAndConsumed) {
  Request r;
  std::string in = "\r\n\n\r\nGET / HTTP/1.1\r\n\r\n";
  ASSERT_EQ(parse(in, r).status, ParseStatus::kComplete);
  EXPECT_EQ(r.method, "GET");
  EXPECT_EQ(r.consumed, in.size());
}

TEST(HttpParser, BareLineFeedsAreAccepted) {
  Request r;
  ASSERT_EQ(parse("GET / HTTP/1.1\nHost: a\r\nX: y\n\r\n", r).status, ParseStatus::kComplete);
  EXPECT_EQ(r.header("x"), "y");
}

TEST(HttpParser, RepeatedEqualContentLengthIsAccepted) {
  Request r;
  ASSERT_EQ(parse("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", r).status,
            ParseStatus::kComplete);
  EXPECT_EQ(r.content_length, 3u);
  EXPECT_EQ(r.body_remaining, 0u);
}

TEST(HttpParser, MinorVersionAboveOneIsServedAsHttp11) {
  Request r;
  ASSERT_EQ(parse("GET / HTTP/1.9\r\n\r\n", r).status, ParseStatus::kComplete);
  EXPECT_EQ(r.version_minor, 9);
  EXPECT_TRUE(r.keep_alive);
}

struct ErrorCase {
  const char* what;
  std::string bytes;
  int status;
};

TEST(HttpParser, MalformedRequestsAnswerTheirStatus) {
  const std::vector<ErrorCase> cases = {
      {"no version", "GET /\r\n\r\n", 400},
      {"two spaces", "GET  / HTTP/1.1\r\n\r\n", 400},
      {"leading space", " GET / HTTP/1.1\r\n\r\n", 400},
      {"tab separator", "GET\t/ HTTP/1.1\r\n\r\n", 400},
      {"trailing space", "GET / HTTP/1.1 \r\n\r\n", 400},
      {"lowercase protocol", "GET / http/1.1\r\n\r\n", 400},
      {"version without minor", "GET / HTTP/1\r\n\r\n", 400},
      {"two-digit major", "GET / HTTP/11.1\r\n\r\n", 400},
      {"bad method byte", "G(T / HTTP/1.1\r\n\r\n", 400},
      {"control byte in target", "GET /\x01 HTTP/1.1\r\n\r\n"s, 400},
      {"bare CR in request line", "GET / HTTP/1.1\rX\r\n\r\n", 400},
      {"CR CR LF", "GET / HTTP/1.1\r\r\n\r\n", 400},
      {"binary garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"s, 400},
      {"header without colon", "GET / HTTP/1.1\r\nHost\r\n\r\n", 400},
      {"space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400},
      {"empty header name", "GET / HTTP/1.1\r\n: a\r\n\r\n", 400},
      {"obs-fold", "GET / HTTP/1.1\r\nX-A: 1\r\n  continued\r\n\r\n", 400},
      {"NUL in value", "GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n"s, 400},
      {"bare CR in value", "GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n", 400},
      {"non-numeric Content-Length", "POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400},
      {"negative Content-Length", "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400},
      {"empty Content-Length", "POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", 400},
      {"Content-Length list", "POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n", 400},
      {"Content-Length too large", "POST / HTTP/1.1\r\nContent-Length: 1234567890123456789\r\n\r\n",
       400},
      {"conflicting Content-Length",
       "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400},
      {"chunked", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411},
      {"gzip then chunked", "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n", 411},
      {"unknown coding", "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
      {"HTTP/2.0", "GET / HTTP/2.0\r\n\r\n", 505},
      {"HTTP/0.9", "GET / HTTP/0.9\r\n\r\n", 505},
  };
  for (const ErrorCase& c : cases) {
    ParseResult r = parse(c.bytes);
    EXPECT_EQ(r.status, ParseStatus::kError) << c.what;
    EXPECT_EQ(r.error_status, c.status) << c.what;
  }
}

TEST(HttpParser, ErrorsAreFoundOnTheFirstBytesThatShowThem) {
  // No line end yet: the request line is already impossible.
  EXPECT_EQ(parse("GET  /").error_status, 400);
  EXPECT_EQ(parse("\x16\x03").error_status, 400);
  EXPECT_EQ(parse("GET / HTTX").error_status, 400);
  EXPECT_EQ(parse("GET / HTTP/1.1\r\n  folded").error_status, 400);
  EXPECT_EQ(parse("GET / HTTP/1.1\r\nBad Name").error_status, 400);
  // Still a possible request.
  EXPECT_EQ(parse("GET / HTTP/1.1\r").status, ParseStatus::kNeedMore);
  EXPECT_EQ(parse("GET / HTTP/1.1\r\nHost: a\r").status, ParseStatus::kNeedMore);
}

TEST(HttpParser, ErrorAnswerDoesNotDependOnWhereTheBytesAreSplit) {
  const std::vector<ErrorCase> cases = {
      {"obs-fold", "GET / HTTP/1.1\r\nX-A: 1\r\n continued\r\n\r\n", 400},
      {"conflicting Content-Length",
       "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400},
      {"HTTP/2.0", "GET / HTTP/2.0\r\n\r\n", 505},
  };
  for (const ErrorCase& c : cases) {
    for (std::size_t k = 0; k <= c.bytes.size(); ++k) {
      ParseResult r = parse(std::string_view(c.bytes).substr(0, k));
      if (r.status == ParseStatus::kError) {
        EXPECT_EQ(r.error_status, c.status) << c.what << " prefix " << k;
      }
    }
    EXPECT_EQ(parse(c.bytes).error_status, c.status) << c.what;
  }
}

struct KeepAliveCase {
  const char* request;
  bool keep_alive;
  ConnectionHeader answer;
};

TEST(HttpParser, KeepAliveFollowsVersionAndConnectionTokens) {
  const std::vector<KeepAliveCase> cases = {
      {"GET / HTTP/1.1\r\n\r\n", true, ConnectionHeader::kNone},
      {"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false, ConnectionHeader::kClose},
      {"GET / HTTP/1.1\r\nConnection: CLOSE\r\n\r\n", false, ConnectionHeader::kClose},
      {"GET / HTTP/1.1\r\nConnection: Upgrade, close\r\n\r\n", false, ConnectionHeader::kClose},
      {"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", true, ConnectionHeader::kNone},
      {"GET / HTTP/1.1\r\nConnection: closed\r\n\r\n", true, ConnectionHeader::kNone},
      {"GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", false,
       ConnectionHeader::kClose},
      {"GET / HTTP/1.0\r\n\r\n", false, ConnectionHeader::kClose},
      {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true, ConnectionHeader::kKeepAlive},
      {"GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n", true, ConnectionHeader::kKeepAlive},
      {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false, ConnectionHeader::kClose},
      {"GET / HTTP/1.0\r\nConnection: te\r\n\r\n", false, ConnectionHeader::kClose},
  };
  for (const KeepAliveCase& c : cases) {
    Request r;
    ASSERT_EQ(parse(c.request, r).status, ParseStatus::kComplete) << c.request;
    EXPECT_EQ(r.keep_alive, c.keep_alive) << c.request;
    EXPECT_EQ(connection_header_for(r), c.answer) << c.request;
  }
}

// A request whose head is exactly `size` bytes, padded with one long header.
std::string head_of_size(std::size_t size) {
  std::string start = "GET / HTTP/1.1\r\nX-Pad: ";
  std::string end = "\r\n\r\n";
  return start + std::string(size - start.size() - end.size(), 'p') + end;
}

TEST(HttpParser, HeadOfExactlyTheLimitIsAccepted) {
  Request r;
  std::string in = head_of_size(kMaxHeadBytes);
  ASSERT_EQ(parse(in, r).status, ParseStatus::kComplete);
  EXPECT_EQ(r.head_bytes, kMaxHeadBytes);
}

TEST(HttpParser, HeadOverTheLimitIs431) {
  ParseResult r = parse(head_of_size(kMaxHeadBytes + 1));
  EXPECT_EQ(r.status, ParseStatus::kError);
  EXPECT_EQ(r.error_status, 431);
}

TEST(HttpParser, UnfinishedHeadReachingTheLimitIs431) {
  std::string in = "GET / HTTP/1.1\r\n";
  while (in.size() < kMaxHeadBytes)
    in += "X-Header: " + std::string(1000, 'v') + "\r\n";
  EXPECT_EQ(parse(std::string_view(in).substr(0, kMaxHeadBytes - 1)).status,
            ParseStatus::kNeedMore);
  EXPECT_EQ(parse(in).error_status, 431);
}

TEST(HttpParser, EndlessEmptyLinesReachTheLimit) {
  EXPECT_EQ(parse(std::string(kMaxHeadBytes, '\n')).error_status, 431);
}

TEST(HttpParser, HeaderCountLimit) {
  std::string in = "GET / HTTP/1.1\r\n";
  for (std::size_t i = 0; i < kMaxHeaders; ++i)
    in += "X-H: " + std::to_string(i) + "\r\n";
  Request r;
  ASSERT_EQ(parse(in + "\r\n", r).status, ParseStatus::kComplete);
  EXPECT_EQ(r.headers().size(), kMaxHeaders);
  EXPECT_EQ(parse(in + "X-H: one too many\r\n\r\n").error_status, 431);
}

TEST(HttpDate, FormatsImfFixdate) {
  char out[DateCache::kLength];
  DateCache::format(784111777, out);  // RFC 9110's example
  EXPECT_EQ(std::string_view(out, sizeof out), "Sun, 06 Nov 1994 08:49:37 GMT");
  DateCache::format(0, out);
  EXPECT_EQ(std::string_view(out, sizeof out), "Thu, 01 Jan 1970 00:00:00 GMT");
  DateCache::format(951782400, out);  // leap day
  EXPECT_EQ(std::string_view(out, sizeof out), "Tue, 29 Feb 2000 00:00:00 GMT");
  DateCache::format(4102444799, out);
  EXPECT_EQ(std::string_view(out, sizeof out), "Thu, 31 Dec 2099 23:59:59 GMT");
}

TEST(HttpDate, CacheFormatsOncePerSecond) {
  using namespace std::chrono;
  DateCache cache;
  system_clock::time_point t{seconds(784111777)};
  EXPECT_EQ(cache.update(t), "Sun, 06 Nov 1994 08:49:37 GMT");
  EXPECT_EQ(cache.update(t + milliseconds(999)), "Sun, 06 Nov 1994 08:49:37 GMT");
  EXPECT_EQ(cache.formats(), 1u);
  EXPECT_EQ(cache.update(t + seconds(1)), "Sun, 06 Nov 1994 08:49:38 GMT");
  EXPECT_EQ(cache.formats(), 2u);
  EXPECT_EQ(cache.value(), "Sun, 06 Nov 1994 08:49:38 GMT");
}

constexpr std::string_view kDate = "Sun, 06 Nov 1994 08:49:37 GMT";

TEST(HttpResponse, OkWithBody) {
  std::string out;
  append_ok(out, kDate, "text/plain", "hello\n", true, ConnectionHeader::kNone);
  EXPECT_EQ(out,
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
            "Content-Type: text/plain\r\nContent-Length: 6\r\n\r\nhello\n");
}

TEST(HttpResponse, HeadHasContentLengthButNoBody) {
  std::string out;
  append_ok(out, kDate, "text/plain", "hello\n", false, ConnectionHeader::kNone);
  EXPECT_EQ(out,
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
            "Content-Type: text/plain\r\nContent-Length: 6\r\n\r\n");
}

TEST(HttpResponse, ConnectionHeaderFollowsTheDecision) {
  std::string close;
  append_ok(close, kDate, "text/plain", "", true, ConnectionHeader::kClose);
  EXPECT_NE(close.find("\r\nConnection: close\r\n"), std::string::npos);
  std::string keep;
  append_ok(keep, kDate, "text/plain", "", true, ConnectionHeader::kKeepAlive);
  EXPECT_NE(keep.find("\r\nConnection: keep-alive\r\n"), std::string::npos);
}

TEST(HttpResponse, MethodNotAllowedListsAllowedMethods) {
  std::string out;
  append_method_not_allowed(out, kDate, ConnectionHeader::kNone);
  EXPECT_EQ(out,
            "HTTP/1.1 405 Method Not Allowed\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
            "Allow: GET, HEAD\r\nContent-Type: text/plain\r\nContent-Length: 23\r\n\r\n"
            "405 Method Not Allowed\n");
}

TEST(HttpResponse, ErrorsCloseTheConnection) {
  for (int status : {400, 411, 431, 501, 505}) {
    std::string out;
    append_error(out, kDate, status);
    std::string body = std::to_string(status) + " " + std::string(reason_phrase(status)) + "\n";
    EXPECT_EQ(out, "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason_phrase(status)) +
                       "\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n"
                       "Content-Type: text/plain\r\nContent-Length: " +
                       std::to_string(body.size()) + "\r\n\r\n" + body);
  }
}

TEST(HttpResponse, PipelinedResponsesAppendToOneBuffer) {
  std::string out;
  append_ok(out, kDate, "text/plain", "a", true, ConnectionHeader::kNone);
  std::size_t first = out.size();
  append_ok(out, kDate, "text/plain", "a", true, ConnectionHeader::kNone);
  EXPECT_EQ(out.size(), 2 * first);
  EXPECT_EQ(out.substr(0, first), out.substr(first));
}

TEST(HttpResponse, ResponsesReuseTheBufferWithoutGrowing) {
  std::string out;
  out.reserve(4096);
  const char* storage = out.data();
  for (int i = 0; i < 100; ++i) {
    out.clear();
    append_ok(out, kDate, "text/plain", "hello\n", true, ConnectionHeader::kNone);
    append_error(out, kDate, 431);
  }
  EXPECT_EQ(out.data(), storage);
}

}  // namespace
}  // namespace demo::http
