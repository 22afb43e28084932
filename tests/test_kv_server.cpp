// demo/kv_server: the keyspace as a unit (time driven by hand), then the server as a user runs
// it: a child process on an ephemeral port, driven by redis-cli, redis-benchmark and a raw socket
// for what those clients do not send. The binary comes from KV_SERVER (tests/meson.build).
// redis-cli and redis-benchmark are installed by `./build.sh test`: when missing, those tests
// fail, not skip.
#include <chrono>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "child_process.hpp"
#include "demo/keyspace.hpp"

namespace {

using namespace child_process;
using demo::kv::Keyspace;
using demo::kv::kNoExpiry;

const demo::kv::TimePoint kStart = demo::kv::TimePoint{} + std::chrono::hours(1);

// ---- Keyspace ---------------------------------------------------------------------------------

TEST(Keyspace, ExpiredKeyIsErasedWhenLookedUp) {
  Keyspace keys;
  keys.set("k", "v", kStart + 1s);
  ASSERT_NE(keys.find("k", kStart), nullptr);
  EXPECT_EQ(keys.find("k", kStart + 1s), nullptr);
  EXPECT_EQ(keys.size(), 0u);  // erased by the lookup, not merely hidden
  EXPECT_EQ(keys.volatile_keys(), 0u);
}

TEST(Keyspace, SweepErasesExpiredKeysNobodyAsksFor) {
  Keyspace keys;
  keys.set("a", "1", kStart + 1s);
  keys.set("b", "2", kStart + 2s);
  keys.set("c", "3", kNoExpiry);
  EXPECT_EQ(keys.sweep(kStart + 1500ms, 100), 1u);
  EXPECT_EQ(keys.size(), 2u);
  EXPECT_EQ(keys.sweep(kStart + 5s, 100), 1u);
  EXPECT_EQ(keys.size(), 1u);
  EXPECT_NE(keys.find("c", kStart + 5s), nullptr);
}

TEST(Keyspace, SweepErasesAtMostItsLimit) {
  Keyspace keys;
  for (int i = 0; i < 10; ++i)
    keys.set("k" + std::to_string(i), "v", kStart + 1s);
  EXPECT_EQ(keys.sweep(kStart + 2s, 4), 4u);
  EXPECT_EQ(keys.size(), 6u);
}

TEST(Keyspace, SweepSkipsAKeyWhoseExpiryWasCleared) {
  Keyspace keys;
  keys.set("k", "v", kStart + 1s);
  keys.set("k", "w", kNoExpiry);  // SET without EX clears the expiry
  EXPECT_EQ(keys.sweep(kStart + 2s, 100), 0u);
  ASSERT_NE(keys.find("k", kStart + 2s), nullptr);
  EXPECT_EQ(*keys.find("k", kStart + 2s), "w");
}

TEST(Keyspace, KeepTtlKeepsTheExpiry) {
  Keyspace keys;
  keys.set("k", "v", kStart + 10s);
  keys.set("k", "w", kNoExpiry, /*keep_ttl=*/true);
  EXPECT_EQ(keys.ttl("k", kStart), std::chrono::milliseconds(10000));
}

TEST(Keyspace, TtlTellsMissingFromPersistent) {
  Keyspace keys;
  keys.set("p", "v", kNoExpiry);
  EXPECT_EQ(keys.ttl("p", kStart).count(), -1);
  EXPECT_EQ(keys.ttl("missing", kStart).count(), -2);
}

TEST(Keyspace, ExpireInThePastErasesTheKey) {
  Keyspace keys;
  keys.set("k", "v", kNoExpiry);
  EXPECT_TRUE(keys.expire("k", kStart - 1s, kStart));
  EXPECT_EQ(keys.size(), 0u);
  EXPECT_FALSE(keys.expire("k", kStart + 1s, kStart));
}

TEST(Keyspace, RetimingAKeyOverAndOverKeepsTheHeapBounded) {
  Keyspace keys;
  keys.set("k", "v", kNoExpiry);
  for (int i = 1; i <= 100000; ++i)
    keys.expire("k", kStart + std::chrono::seconds(i), kStart);
  EXPECT_EQ(keys.size(), 1u);
  EXPECT_LE(keys.heap_size(), 2u * 1 + 1024 + 1);
}

// ---- The server -------------------------------------------------------------------------------

class KvServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (binary("KV_SERVER").empty()) GTEST_SKIP() << "KV_SERVER must name the binary";
  }

  Server start(std::vector<std::string> args = {}) {
    return Server(binary("KV_SERVER"), std::move(args));
  }

  // `redis-cli -p PORT --no-raw ARGS...`: output as redis-cli shows it on a terminal
  // (`(error) ERR ...`, `(integer) 1`, `(nil)`). Fails the test when redis-cli is missing.
  std::string cli(const Server& server, std::vector<std::string> args) {
    const std::string path = find_program("redis-cli");
    EXPECT_FALSE(path.empty()) << "redis-cli is not installed (./build.sh test installs it)";
    if (path.empty()) return "";
    args.insert(args.begin(), {"-p", server.port_text(), "--no-raw"});
    ProgramRun r = run_program(path, args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.out;
  }
};

TEST_F(KvServerTest, RedisCliSetThenGet) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  EXPECT_EQ(cli(server, {"SET", "greeting", "hello world"}), "OK\n");
  EXPECT_EQ(cli(server, {"GET", "greeting"}), "\"hello world\"\n");
  EXPECT_EQ(cli(server, {"GET", "missing"}), "(nil)\n");
}

TEST_F(KvServerTest, RedisCliIncrCountsAndRefusesNonIntegers) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  EXPECT_EQ(cli(server, {"INCR", "counter"}), "(integer) 1\n");
  EXPECT_EQ(cli(server, {"INCRBY", "counter", "41"}), "(integer) 42\n");
  EXPECT_EQ(cli(server, {"DECR", "counter"}), "(integer) 41\n");
  EXPECT_EQ(cli(server, {"SET", "text", "abc"}), "OK\n");
  EXPECT_EQ(cli(server, {"INCR", "text"}), "(error) ERR value is not an integer or out of range\n");
}

TEST_F(KvServerTest, RedisCliShowsWrongArityAsRedisServerWords) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  EXPECT_EQ(cli(server, {"GET"}), "(error) ERR wrong number of arguments for 'get' command\n");
  EXPECT_EQ(cli(server, {"MSET", "a", "1", "b"}),
            "(error) ERR wrong number of arguments for 'mset' command\n");
}

TEST_F(KvServerTest, RedisCliShowsUnknownCommandAsRedisServerWords) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  EXPECT_EQ(cli(server, {"foo", "bar", "baz"}),
            "(error) ERR unknown command 'foo', with args beginning with: 'bar' 'baz' \n");
  EXPECT_EQ(cli(server, {"foo"}),
            "(error) ERR unknown command 'foo', with args beginning with: \n");
}

TEST_F(KvServerTest, RedisCliDelCountsTheKeysItRemoved) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  EXPECT_EQ(cli(server, {"MSET", "a", "1", "b", "2"}), "OK\n");
  EXPECT_EQ(cli(server, {"DEL", "a", "b", "c"}), "(integer) 2\n");
  EXPECT_EQ(cli(server, {"EXISTS", "a", "b"}), "(integer) 0\n");
}

TEST_F(KvServerTest, RedisCliMgetAnswersNilForMissingKeys) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  EXPECT_EQ(cli(server, {"MSET", "a", "1", "c", "3"}), "OK\n");
  EXPECT_EQ(cli(server, {"MGET", "a", "b", "c"}), "1) \"1\"\n2) (nil)\n3) \"3\"\n");
}

TEST_F(KvServerTest, RedisCliExpireThenTtl) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  EXPECT_EQ(cli(server, {"SET", "k", "v"}), "OK\n");
  EXPECT_EQ(cli(server, {"TTL", "k"}), "(integer) -1\n");
  EXPECT_EQ(cli(server, {"EXPIRE", "k", "100"}), "(integer) 1\n");
  EXPECT_EQ(cli(server, {"TTL", "k"}), "(integer) 100\n");
  EXPECT_EQ(cli(server, {"EXPIRE", "missing", "100"}), "(integer) 0\n");
  EXPECT_EQ(cli(server, {"TTL", "missing"}), "(integer) -2\n");
}

TEST_F(KvServerTest, RedisCliSetNxOnlySetsAMissingKey) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  EXPECT_EQ(cli(server, {"SET", "k", "first", "NX"}), "OK\n");
  EXPECT_EQ(cli(server, {"SET", "k", "second", "NX"}), "(nil)\n");
  EXPECT_EQ(cli(server, {"GET", "k"}), "\"first\"\n");
  EXPECT_EQ(cli(server, {"SET", "k", "v", "EX", "0"}),
            "(error) ERR invalid expire time in 'set' command\n");
}

TEST_F(KvServerTest, KeyWithExpiryIsSweptWithoutBeingAccessed) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  EXPECT_EQ(cli(server, {"SET", "short", "v", "PX", "50"}), "OK\n");
  EXPECT_EQ(cli(server, {"SET", "long", "v"}), "OK\n");
  // DBSIZE counts keys not yet erased, expired or not: only the sweep brings it down to 1.
  const Deadline deadline = deadline_in(kGenerous);
  std::string size;
  while ((size = cli(server, {"DBSIZE"})) != "(integer) 1\n" && ms_until(deadline) > 0) {
  }
  EXPECT_EQ(size, "(integer) 1\n");
}

TEST_F(KvServerTest, ExpiredKeyReadsAsNil) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  EXPECT_EQ(cli(server, {"SET", "k", "v", "PX", "50"}), "OK\n");
  const Deadline deadline = deadline_in(kGenerous);
  std::string got;
  while ((got = cli(server, {"GET", "k"})) != "(nil)\n" && ms_until(deadline) > 0) {
  }
  EXPECT_EQ(got, "(nil)\n");
}

TEST_F(KvServerTest, ConfigGetAnswersWhatRedisBenchmarkAsks) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  EXPECT_EQ(cli(server, {"CONFIG", "GET", "save"}), "1) \"save\"\n2) \"\"\n");
  EXPECT_EQ(cli(server, {"CONFIG", "GET", "appendonly"}), "1) \"appendonly\"\n2) \"no\"\n");
}

// Every test redis-benchmark ran, with its rate: "SET: 123456.78 requests per second, ...".
void expect_benchmark_completes(const Server& server) {
  const std::string path = find_program("redis-benchmark");
  ASSERT_FALSE(path.empty()) << "redis-benchmark is not installed (./build.sh test installs it)";
  ProgramRun r = run_program(
      path,
      {"-p", server.port_text(), "-n", "10000", "-t", "ping,set,get,incr,mset", "-P", "16", "-q"},
      std::chrono::seconds(120));
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  // -q rewrites a progress line with '\r' before the final one: keep what follows the last '\r'.
  std::vector<std::string> lines;
  std::stringstream stream(r.out);
  for (std::string line; std::getline(stream, line);) {
    line = line.substr(line.rfind('\r') == std::string::npos ? 0 : line.rfind('\r') + 1);
    if (line.find(" requests per second") != std::string::npos) lines.push_back(line);
  }
  for (const char* test : {"PING_INLINE", "PING_MBULK", "SET", "GET", "INCR", "MSET (10 keys)"}) {
    const std::string prefix = std::string(test) + ": ";
    auto it = std::find_if(lines.begin(), lines.end(),
                           [&](const std::string& l) { return l.rfind(prefix, 0) == 0; });
    ASSERT_NE(it, lines.end()) << test << " missing in:\n" << r.out;
    EXPECT_GT(std::stod(it->substr(prefix.size())), 0.0) << *it;
  }
  EXPECT_EQ(r.err.find("WARNING"), std::string::npos) << r.err;
}

TEST_F(KvServerTest, RedisBenchmarkCompletesEveryTest) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  expect_benchmark_completes(server);
}

TEST_F(KvServerTest, RedisBenchmarkCompletesEveryTestOnTwoShards) {
  Server server = start({"--threads", "2"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  expect_benchmark_completes(server);
}

// ---- Raw sockets: what the clients do not send ------------------------------------------------

std::string command(const std::vector<std::string>& args) {
  std::string out = "*" + std::to_string(args.size()) + "\r\n";
  for (const auto& a : args)
    out += "$" + std::to_string(a.size()) + "\r\n" + a + "\r\n";
  return out;
}

TEST_F(KvServerTest, CommandSentByteByByteIsAnswered) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  RawClient client(server.port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.send_byte_by_byte(command({"SET", "k", "value"}) + command({"GET", "k"})));
  ASSERT_TRUE(client.read_at_least(16)) << client.received();
  EXPECT_EQ(client.received(), "+OK\r\n$5\r\nvalue\r\n");
}

TEST_F(KvServerTest, InlineCommandsAreAnswered) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  RawClient client(server.port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.send("PING\r\nSET k 12\nINCR k\r\n"));
  ASSERT_TRUE(client.read_at_least(17)) << client.received();
  EXPECT_EQ(client.received(), "+PONG\r\n+OK\r\n:13\r\n");
}

TEST_F(KvServerTest, OversizedBulkGetsProtocolErrorThenEof) {
  Server server = start({"--max-bulk", "16"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  RawClient client(server.port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.send(command({"SET", "k", std::string(16, 'a')}) +
                          "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$17\r\n"));
  EXPECT_TRUE(client.read_to_eof()) << "error " << client.error() << ": " << client.received();
  EXPECT_EQ(client.received(), "+OK\r\n-ERR Protocol error: invalid bulk length\r\n");
}

TEST_F(KvServerTest, BadMultibulkLengthGetsProtocolErrorThenEof) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  RawClient client(server.port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.send("*x1\r\n$3\r\nGET\r\n"));
  EXPECT_TRUE(client.read_to_eof()) << "error " << client.error() << ": " << client.received();
  EXPECT_EQ(client.received(), "-ERR Protocol error: invalid multibulk length\r\n");
}

TEST_F(KvServerTest, QuitAnswersOkThenCloses) {
  Server server = start();
  ASSERT_TRUE(server.ready()) << server.child().err();
  RawClient client(server.port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.send(command({"PING"}) + command({"QUIT"}) + command({"PING"})));
  EXPECT_TRUE(client.read_to_eof()) << "error " << client.error();
  EXPECT_EQ(client.received(), "+PONG\r\n+OK\r\n");
}

// A pipeline over many keys, so that with two shards about half the commands travel to the other
// loop: the replies must come back exactly in request order.
std::pair<std::string, std::string> cross_shard_pipeline(int keys) {
  std::string request, expected;
  auto add = [&](const std::vector<std::string>& args, const std::string& reply) {
    request += command(args);
    expected += reply;
  };
  std::vector<std::string> mget{"MGET"}, del{"DEL"}, mset{"MSET"};
  std::string mget_reply = "*" + std::to_string(2 * keys) + "\r\n";
  for (int i = 0; i < keys; ++i) {
    const std::string key = "key:" + std::to_string(i), value = std::to_string(i);
    add({"SET", key, value}, "+OK\r\n");
    add({"PING"}, "+PONG\r\n");  // runs on the connection's own loop, between forwarded commands
    add({"INCR", key}, ":" + std::to_string(i + 1) + "\r\n");
    mget.push_back(key);
    mget.push_back("missing:" + std::to_string(i));
    const std::string now = std::to_string(i + 1);
    mget_reply += "$" + std::to_string(now.size()) + "\r\n" + now + "\r\n$-1\r\n";
    del.push_back(key);
    mset.push_back("other:" + std::to_string(i));
    mset.push_back(value);
  }
  add(mget, mget_reply);
  add(mset, "+OK\r\n");
  add({"EXISTS", "other:0", "other:1", "nothing"}, ":2\r\n");
  add({"DBSIZE"}, ":" + std::to_string(2 * keys) + "\r\n");
  add(del, ":" + std::to_string(keys) + "\r\n");
  add({"DBSIZE"}, ":" + std::to_string(keys) + "\r\n");
  add({"GET", "key:0"}, "$-1\r\n");
  add({"GET", "other:1"}, "$1\r\n1\r\n");
  return {request, expected};
}

TEST_F(KvServerTest, CrossShardPipelineKeepsRequestOrderOnTwoShards) {
  Server server = start({"--threads", "2"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  const auto [request, expected] = cross_shard_pipeline(200);
  for (int connection = 0; connection < 4; ++connection) {  // both loops accept some of them
    RawClient client(server.port());
    ASSERT_TRUE(client.connected());
    ASSERT_TRUE(client.send(command({"FLUSHALL"})));
    ASSERT_TRUE(client.read_until("+OK\r\n"));
    client.take();
    ASSERT_TRUE(client.send(request));
    ASSERT_TRUE(client.read_at_least(expected.size())) << client.received().size();
    EXPECT_EQ(client.received(), expected) << "connection " << connection;
  }
}

TEST_F(KvServerTest, CrossShardPipelineSentByteByByteKeepsRequestOrderOnTwoShards) {
  Server server = start({"--threads", "2"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  const auto [request, expected] = cross_shard_pipeline(8);
  RawClient client(server.port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.send_byte_by_byte(request));
  ASSERT_TRUE(client.read_at_least(expected.size())) << client.received();
  EXPECT_EQ(client.received(), expected);
}

TEST_F(KvServerTest, ConnectionClosedWithRepliesInFlightOnTwoShardsLeavesTheServerServing) {
  Server server = start({"--threads", "2"});
  ASSERT_TRUE(server.ready()) << server.child().err();
  const auto [request, expected] = cross_shard_pipeline(500);
  for (int i = 0; i < 20; ++i) {
    RawClient client(server.port());
    ASSERT_TRUE(client.connected());
    ASSERT_TRUE(client.send(request));
  }  // closed at once, replies still on their way between the loops
  RawClient client(server.port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.send(command({"PING"})));
  ASSERT_TRUE(client.read_until("+PONG\r\n")) << client.received();
  server.child().signal(SIGTERM);
  EXPECT_EQ(server.child().finish(deadline_in(kGenerous)), 0) << server.child().err();
}

}  // namespace
