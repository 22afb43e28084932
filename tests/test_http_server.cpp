// demo/http_server as a user runs it: a child process on an ephemeral port, driven by curl and by
// a raw socket for what curl does not send. The binary comes from HTTP_SERVER (tests/meson.build).
// curl is installed by `./build.sh test`: when it is missing the curl tests fail, not skip.
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "child_process.hpp"

namespace {

using namespace child_process;

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (binary("HTTP_SERVER").empty()) GTEST_SKIP() << "HTTP_SERVER must name the binary";
  }

  Server start(std::vector<std::string> args = {}) {
    return Server(binary("HTTP_SERVER"), std::move(args));
  }

  // curl with `args`, failing the test when curl is not installed.
  ProgramRun curl(const std::vector<std::string>& args) {
    const std::string path = find_program("curl");
    EXPECT_FALSE(path.empty()) << "curl is not installed (./build.sh test installs it)";
    if (path.empty()) return {};
    return run_program(path, args);
  }
};

// Date values vary: responses are compared with each one replaced by kDate.
const std::string kDate = "<date>";
std::string without_dates(std::string response) {
  const std::string field = "Date: ";
  constexpr std::size_t kLength = 29;  // "Sun, 06 Nov 1994 08:49:37 GMT"
  for (auto pos = response.find(field); pos != std::string::npos;
       pos = response.find(field, pos + field.size())) {
    const std::string value = response.substr(pos + field.size(), kLength);
    if (value.size() == kLength && value.substr(kLength - 4) == " GMT" && value[3] == ',')
      response.replace(pos + field.size(), kLength, kDate);
  }
  return response;
}

std::string url(const Server& server, const std::string& path = "/") {
  return "http://" + server.address() + path;
}

TEST_F(HttpServerTest, CurlReusesTheConnectionForTwoUrls) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  ProgramRun r = curl({"-sv", url(server, "/a"), url(server, "/b")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "hello\nhello\n");
  EXPECT_NE(r.err.find("Re-using existing connection"), std::string::npos) << r.err;
  EXPECT_EQ(count_of(r.err, "Connection #0 to host 127.0.0.1 left intact"), 2u) << r.err;
}

TEST_F(HttpServerTest, CurlHeadGetsTheHeadersWithoutTheBody) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  ProgramRun r = curl({"-sI", url(server, "/any/path?q=1")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("Content-Length: 6\r\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Content-Type: text/plain\r\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" GMT\r\n"), std::string::npos) << r.out;  // Date: IMF-fixdate
  EXPECT_EQ(r.out.find("hello"), std::string::npos) << r.out;
}

TEST_F(HttpServerTest, CurlPostGets405WithAllow) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  ProgramRun r = curl({"-si", "-X", "POST", "--data", "a=1", url(server)});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("HTTP/1.1 405 Method Not Allowed\r\n", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("Allow: GET, HEAD\r\n"), std::string::npos) << r.out;
}

TEST_F(HttpServerTest, BodyFlagSetsTheResponseBody) {
  Server server = start({"--body", "custom body"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  ProgramRun r = curl({"-s", url(server)});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "custom body");
}

TEST_F(HttpServerTest, RequestSentByteByByteIsAnswered) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  RawClient client(server.port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.send_byte_by_byte("GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"));
  ASSERT_TRUE(client.read_until("\r\n\r\nhello\n")) << client.received();
  EXPECT_EQ(client.received().rfind("HTTP/1.1 200 OK\r\n", 0), 0u);
}

TEST_F(HttpServerTest, PipelinedRequestsAreAnsweredInOrder) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  RawClient client(server.port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(
      client.send("GET /1 HTTP/1.1\r\n\r\nHEAD /2 HTTP/1.1\r\n\r\nDELETE /3 HTTP/1.1\r\n\r\nGET /4 "
                  "HTTP/1.1\r\n\r\n"));
  const std::string ok = "HTTP/1.1 200 OK\r\nDate: " + kDate +
                         "\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\n";
  const std::string expected = ok + "hello\n" + ok +
                               "HTTP/1.1 405 Method Not Allowed\r\nDate: " + kDate +
                               "\r\nAllow: GET, HEAD\r\nContent-Type: text/plain\r\n"
                               "Content-Length: 23\r\n\r\n405 Method Not Allowed\n" +
                               ok + "hello\n";
  ASSERT_TRUE(client.read_at_least(expected.size())) << client.received();
  EXPECT_EQ(without_dates(client.received()), expected);
}

// Responses are sent at the end of the loop's round, for every connection read in it: each
// connection must get exactly its own responses, in its own order.
TEST_F(HttpServerTest, ConcurrentPipelinesEachGetTheirOwnResponses) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  const std::string ok = "HTTP/1.1 200 OK\r\nDate: " + kDate +
                         "\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhello\n";
  const std::string not_allowed = "HTTP/1.1 405 Method Not Allowed\r\nDate: " + kDate +
                                  "\r\nAllow: GET, HEAD\r\nContent-Type: text/plain\r\n"
                                  "Content-Length: 23\r\n\r\n405 Method Not Allowed\n";
  constexpr int kClients = 8;
  std::vector<std::unique_ptr<RawClient>> clients;
  std::vector<std::string> expected(kClients);
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<RawClient>(server.port()));
    ASSERT_TRUE(clients.back()->connected());
  }
  // Client i sends i + 1 GETs with a DELETE after the i-th: a different sequence on each.
  for (int i = 0; i < kClients; ++i) {
    std::string requests;
    for (int k = 0; k <= i; ++k) {
      requests += "GET /" + std::to_string(k) + " HTTP/1.1\r\n\r\n";
      expected[i] += ok;
      if (k == i - 1) {
        requests += "DELETE / HTTP/1.1\r\n\r\n";
        expected[i] += not_allowed;
      }
    }
    ASSERT_TRUE(clients[i]->send(requests));
  }
  for (int i = 0; i < kClients; ++i) {
    ASSERT_TRUE(clients[i]->read_at_least(expected[i].size())) << "client " << i;
    EXPECT_EQ(without_dates(clients[i]->received()), expected[i]) << "client " << i;
  }
}

// Responses wait for the end of the loop's round; a half-close read in the same round must not
// lose them. 2,048 requests of 32 bytes fill the server's 64 KiB read exactly, so its next read
// can be the EOF.
TEST_F(HttpServerTest, PipelineThenHalfCloseGetsEveryResponseThenEof) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  RawClient client(server.port());
  ASSERT_TRUE(client.connected());
  const std::string request = "GET /abcdefghijklmn HTTP/1.1\r\n\r\n";
  ASSERT_EQ(request.size(), 32u);
  constexpr std::size_t kRequests = 2048;
  std::string requests;
  for (std::size_t i = 0; i < kRequests; ++i)
    requests += request;
  ASSERT_TRUE(client.send(requests));
  ASSERT_TRUE(client.shutdown_write());
  EXPECT_TRUE(client.read_to_eof()) << "error " << client.error();
  EXPECT_EQ(count_of(client.received(), "HTTP/1.1 200 OK\r\n"), kRequests);
}

TEST_F(HttpServerTest, GarbageGets400ThenEofWithoutReset) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  RawClient client(server.port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.send("\x01\x02garbage\r\n\r\nmore bytes that are never read"));
  EXPECT_TRUE(client.read_to_eof()) << "error " << client.error() << ": " << client.received();
  EXPECT_EQ(client.received().rfind("HTTP/1.1 400 Bad Request\r\n", 0), 0u) << client.received();
  EXPECT_NE(client.received().find("Connection: close\r\n"), std::string::npos);
}

TEST_F(HttpServerTest, OversizedHeadersGet431ThenEof) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  RawClient client(server.port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.send("GET / HTTP/1.1\r\nX-Big: " + std::string(9000, 'a') + "\r\n\r\n"));
  EXPECT_TRUE(client.read_to_eof()) << "error " << client.error();
  EXPECT_EQ(client.received().rfind("HTTP/1.1 431 Request Header Fields Too Large\r\n", 0), 0u)
      << client.received();
}

TEST_F(HttpServerTest, Http10ClosesAfterTheResponse) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  RawClient client(server.port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.send("GET / HTTP/1.0\r\n\r\n"));
  EXPECT_TRUE(client.read_to_eof()) << "error " << client.error();
  EXPECT_EQ(client.received().rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << client.received();
  EXPECT_NE(client.received().find("Connection: close\r\n"), std::string::npos);
}

TEST_F(HttpServerTest, Http10WithKeepAliveStaysOpen) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  RawClient client(server.port());
  ASSERT_TRUE(client.connected());
  const std::string request = "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
  // The same connection serves all three: a server that closed after a keep-alive response
  // would leave the next request unanswered (read_until fails at EOF).
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(client.send(request)) << "request " << i;
    ASSERT_TRUE(client.read_until("hello\n")) << "request " << i << ": " << client.received();
    EXPECT_NE(client.take().find("Connection: keep-alive\r\n"), std::string::npos);
  }
}

TEST_F(HttpServerTest, ConnectionCloseIsHonouredAndLaterRequestsIgnored) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  RawClient client(server.port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.send("GET /1 HTTP/1.1\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"));
  EXPECT_TRUE(client.read_to_eof()) << "error " << client.error();
  EXPECT_EQ(count_of(client.received(), "HTTP/1.1 200 OK"), 1u) << client.received();
  EXPECT_NE(client.received().find("Connection: close\r\n"), std::string::npos);
}

TEST_F(HttpServerTest, BodyArrivingAfterTheResponseIsDiscarded) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  RawClient client(server.port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.send("PUT /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345"));
  ASSERT_TRUE(client.read_until("405 Method Not Allowed\n")) << client.received();
  // The rest of the body, then a request: the body's bytes must not be parsed as a request.
  ASSERT_TRUE(client.send("67890GET / HTTP/1.1\r\n\r\n"));
  ASSERT_TRUE(client.read_until("hello\n")) << client.received();
  EXPECT_EQ(count_of(client.received(), "HTTP/1.1 "), 2u) << client.received();
  EXPECT_EQ(client.received().find("400"), std::string::npos) << client.received();
}

TEST_F(HttpServerTest, ChunkedBodyIsRefusedWith411ThenEof) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  RawClient client(server.port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(
      client.send("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"));
  EXPECT_TRUE(client.read_to_eof()) << "error " << client.error();
  EXPECT_EQ(client.received().rfind("HTTP/1.1 411 Length Required\r\n", 0), 0u)
      << client.received();
}

TEST_F(HttpServerTest, SigtermOnTwoThreadsExitsZeroWithFinalCounters) {
  Server server = start({"--threads", "2"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  ProgramRun r = curl({"-s", url(server), url(server)});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  server.child().signal(SIGTERM);
  ASSERT_EQ(server.child().finish(deadline_in(kGenerous)), 0) << server.child().err();
  EXPECT_NE(server.child().out().find("final: accepted=1 refused=0 messages=2 "), std::string::npos)
      << server.child().out();
}

}  // namespace
