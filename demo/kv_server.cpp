// kv_server: a key-value server speaking RESP2, the Redis protocol, for redis-cli and
// redis-benchmark. String keys only.
//
//     kv_server [--listen 127.0.0.1:6379] [--max-bulk BYTES] [runner options: --threads N, ...]
//     redis-cli -p 6379 set greeting hello
//     redis-benchmark -p 6379 -n 200000 -t ping,set,get,incr -P 16 -q
//
// Commands: PING, ECHO, SET key value [EX s|PX ms] [NX|XX] [KEEPTTL], GET, DEL, EXISTS, INCR,
// DECR, INCRBY, MSET, MGET, EXPIRE key seconds, TTL, DBSIZE, FLUSHALL [ASYNC|SYNC], QUIT,
// COMMAND (an empty array) and CONFIG GET (save, appendonly). Replies and error texts are
// redis-server 7's. The protocol is demo/resp_parser.hpp, the storage demo/keyspace.hpp.
//
// Threads. With --threads N there is still one keyspace, sharded by key hash: shard i belongs to
// loop i and only loop i touches it, so no lock guards it. A command is parsed on the loop of its
// connection; one whose key lives on another shard travels there as a Job with that loop's
// post(), runs, and travels back the same way. MGET, MSET, DEL and EXISTS send one Job per shard
// they touch and gather the parts; DBSIZE and FLUSHALL visit every shard. MSET is atomic per
// shard, not across shards.
//
// Order. Replies on a connection go out in request order. While no reply is outstanding, replies
// are appended to the connection's `out` string. Once a command waits for another shard, it and
// every later command of that connection take a slot in the connection's queue of pending
// replies; a slot is filled when its Job (or all its parts) come back. A flush sends `out` and
// the ready slots at the head of the queue with one send.
//
// When. Replies are flushed at the end of the loop's dispatch round (EndOfRound), after
// every ready connection has been read, as redis-server does before it sleeps: a client with
// many connections then receives its replies in one burst and wakes once for all of them,
// rather than once per connection.
//
// Lifetime. A Job names its connection by (index, generation) in the origin loop's table of
// connection states, never by pointer: a connection that closed while a reply was in flight has
// a new generation, and the reply is dropped. The shards (keyspace and connection table) belong
// to a Cluster that main() keeps alive until every loop is gone, so a Job still queued on a loop
// that is shutting down never points at a destroyed shard.
//
// Memory. A connection whose replies wait on other shards stops reading at kMaxPendingSlots
// slots and resumes at half; the output queue's high-water mark bounds replies the client does
// not read; bulk strings are limited by --max-bulk and commands by the parser's limits. Both
// pauses are checked when replies are flushed, at the end of a round, so one round may add up
// to reads_per_event reads' worth (4 x 64 KiB by default) beyond them: bounded, not exact.
#include <algorithm>
#include <charconv>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <reactor/buffer.hpp>
#include <reactor/connection.hpp>
#include <reactor/event_loop.hpp>

#include "cli.hpp"
#include "end_of_round.hpp"
#include "keyspace.hpp"
#include "resp_parser.hpp"
#include "server_runner.hpp"

namespace {

using namespace std::chrono_literals;
namespace resp = demo::resp;
namespace kv = demo::kv;
using Args = std::span<const std::string_view>;

constexpr std::size_t kMaxPendingSlots = 1024;
// A connection's reply string keeps its capacity between flushes (no allocation per batch) up
// to this; a larger one (a big MGET) is freed, so an idle connection does not hold it.
constexpr std::size_t kKeptOutput = 16 * 1024;
constexpr reactor::Duration kSweepPeriod = 100ms;
constexpr std::size_t kSweepLimit = 10000;  // keys erased per sweep at most
// Longest expiry accepted (as `invalid expire time`): keeps now + expiry far from overflow.
constexpr std::int64_t kMaxExpireMs = std::int64_t{100} * 365 * 24 * 3600 * 1000;

struct Settings {
  std::int64_t max_bulk = 64 * 1024 * 1024;
};

// ---- Commands ---------------------------------------------------------------------------------

enum class Cmd : std::uint8_t {
  kPing,
  kEcho,
  kSet,
  kGet,
  kDel,
  kExists,
  kIncr,
  kDecr,
  kIncrBy,
  kMset,
  kMget,
  kExpire,
  kTtl,
  kDbsize,
  kFlushall,
  kQuit,
  kCommand,
  kConfig,
};

// Where a command runs.
enum class Route : std::uint8_t {
  kHere,        // no key: on the connection's loop
  kKey,         // on the shard of argv[1]
  kKeys,        // argv[1..]: one part per shard touched
  kPairs,       // key value pairs from argv[1]: one part per shard touched
  kEveryShard,  // one part on every shard
};

struct CommandInfo {
  std::string_view name;  // as redis-server names it in errors
  Cmd cmd;
  int arity;  // redis-server's: N exactly, or -N for at least N (the name counts)
  Route route;
};

constexpr CommandInfo kCommands[] = {
    {"get", Cmd::kGet, 2, Route::kKey},
    {"set", Cmd::kSet, -3, Route::kKey},
    {"incr", Cmd::kIncr, 2, Route::kKey},
    {"ping", Cmd::kPing, -1, Route::kHere},
    {"mset", Cmd::kMset, -3, Route::kPairs},
    {"mget", Cmd::kMget, -2, Route::kKeys},
    {"del", Cmd::kDel, -2, Route::kKeys},
    {"exists", Cmd::kExists, -2, Route::kKeys},
    {"decr", Cmd::kDecr, 2, Route::kKey},
    {"incrby", Cmd::kIncrBy, 3, Route::kKey},
    {"expire", Cmd::kExpire, -3, Route::kKey},
    {"ttl", Cmd::kTtl, 2, Route::kKey},
    {"echo", Cmd::kEcho, 2, Route::kHere},
    {"dbsize", Cmd::kDbsize, 1, Route::kEveryShard},
    {"flushall", Cmd::kFlushall, -1, Route::kEveryShard},
    {"quit", Cmd::kQuit, -1, Route::kHere},
    {"command", Cmd::kCommand, -1, Route::kHere},
    {"config", Cmd::kConfig, -2, Route::kHere},
};

char lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

bool equals_ignore_case(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                            [](char x, char y) { return lower(x) == lower(y); });
}

const CommandInfo* find_command(std::string_view name) {
  for (const CommandInfo& info : kCommands) {
    if (equals_ignore_case(info.name, name)) return &info;
  }
  return nullptr;
}

bool arity_ok(const CommandInfo& info, std::size_t argc) {
  const auto n = static_cast<std::size_t>(info.arity < 0 ? -info.arity : info.arity);
  return info.arity < 0 ? argc >= n : argc == n;
}

// redis-server's string2ll: an optional '-', then "0" or digits without a leading zero, in range.
bool parse_int64(std::string_view s, std::int64_t& out) {
  if (s.empty() || s.size() > 20) return false;
  const std::string_view digits = s.front() == '-' ? s.substr(1) : s;
  if (digits.empty() || (digits.front() == '0' && (digits.size() > 1 || s.size() > 1)))
    return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc{} && end == s.data() + s.size();
}

// Glob match as CONFIG GET does it (`*`, `?`, no case), for the few names it knows.
bool glob_match(std::string_view pattern, std::string_view text) {
  if (pattern.empty()) return text.empty();
  if (pattern.front() == '*') {
    for (std::size_t i = 0; i <= text.size(); ++i) {
      if (glob_match(pattern.substr(1), text.substr(i))) return true;
    }
    return false;
  }
  if (text.empty()) return false;
  if (pattern.front() != '?' && lower(pattern.front()) != lower(text.front())) return false;
  return glob_match(pattern.substr(1), text.substr(1));
}

void append_wrong_arity(std::string& out, std::string_view name) {
  out += "-ERR wrong number of arguments for '";
  out += name;
  out += "' command\r\n";
}

void append_not_integer(std::string& out) {
  out += "-ERR value is not an integer or out of range\r\n";
}

void append_syntax_error(std::string& out) {
  out += "-ERR syntax error\r\n";
}

void append_ok(std::string& out) {
  out += "+OK\r\n";
}

// redis-server 7: "unknown command 'NAME', with args beginning with: 'a' 'b' ", the name and the
// arguments cut at 128 bytes.
void append_unknown_command(std::string& out, std::string& scratch, Args argv) {
  scratch = "ERR unknown command '";
  scratch.append(argv[0].substr(0, 128));
  scratch += "', with args beginning with: ";
  const std::size_t args_start = scratch.size();
  for (std::size_t i = 1; i < argv.size() && scratch.size() - args_start < 128; ++i) {
    scratch += '\'';
    scratch.append(argv[i].substr(0, 128 - (scratch.size() - args_start)));
    scratch += "' ";
  }
  resp::append_error(out, scratch);
}

// Seconds or milliseconds from the client, as an expiry time from `now`. False (with the error
// appended) when the number is not an integer or out of range.
bool parse_expiry(std::string_view text, std::int64_t unit_ms, bool allow_past,
                  std::string_view cmd, kv::TimePoint now, kv::TimePoint& at, std::string& out) {
  std::int64_t n = 0;
  if (!parse_int64(text, n)) {
    append_not_integer(out);
    return false;
  }
  if ((!allow_past && n <= 0) || n > kMaxExpireMs / unit_ms || n < -kMaxExpireMs / unit_ms) {
    out += "-ERR invalid expire time in '";
    out += cmd;
    out += "' command\r\n";
    return false;
  }
  at = now + std::chrono::milliseconds(n * unit_ms);
  return true;
}

void run_set(kv::Keyspace& keys, Args argv, kv::TimePoint now, std::string& out) {
  kv::TimePoint expire_at = kv::kNoExpiry;
  bool nx = false, xx = false, keep_ttl = false, has_expiry = false;
  for (std::size_t i = 3; i < argv.size(); ++i) {
    const std::string_view option = argv[i];
    const bool ex = equals_ignore_case(option, "ex");
    if (equals_ignore_case(option, "nx") && !xx) {
      nx = true;
    } else if (equals_ignore_case(option, "xx") && !nx) {
      xx = true;
    } else if (equals_ignore_case(option, "keepttl") && !has_expiry) {
      keep_ttl = true;
    } else if ((ex || equals_ignore_case(option, "px")) && !keep_ttl && !has_expiry &&
               i + 1 < argv.size()) {
      if (!parse_expiry(argv[++i], ex ? 1000 : 1, false, "set", now, expire_at, out)) return;
      has_expiry = true;
    } else {
      append_syntax_error(out);
      return;
    }
  }
  if (nx || xx) {
    const bool exists = keys.exists(argv[1], now);
    if (nx == exists) {  // NX and it exists, or XX and it does not
      resp::append_null_bulk(out);
      return;
    }
  }
  keys.set(argv[1], argv[2], expire_at, keep_ttl);
  append_ok(out);
}

void run_incr(kv::Keyspace& keys, Args argv, std::int64_t delta, kv::TimePoint now,
              std::string& out) {
  std::string* value = keys.find(argv[1], now);
  std::int64_t current = 0;
  if (value != nullptr && !parse_int64(*value, current)) {
    append_not_integer(out);
    return;
  }
  if ((delta < 0 && current < std::numeric_limits<std::int64_t>::min() - delta) ||
      (delta > 0 && current > std::numeric_limits<std::int64_t>::max() - delta)) {
    out += "-ERR increment or decrement would overflow\r\n";
    return;
  }
  const std::int64_t result = current + delta;
  char digits[24];
  const auto end = std::to_chars(digits, digits + sizeof digits, result).ptr;
  const std::string_view text(digits, static_cast<std::size_t>(end - digits));
  if (value != nullptr) {
    value->assign(text);  // keeps the key's expiry, as INCR does
  } else {
    keys.set(argv[1], text, kv::kNoExpiry);
  }
  resp::append_integer(out, result);
}

void run_config(Args argv, std::string& out) {
  if (!equals_ignore_case(argv[1], "get")) {
    out += "-ERR unknown subcommand '";
    out.append(argv[1].substr(0, 128));
    out += "'. Try CONFIG HELP.\r\n";
    return;
  }
  if (argv.size() < 3) {
    append_wrong_arity(out, "config|get");
    return;
  }
  // What redis-benchmark asks for at start-up; this server neither saves nor appends.
  static constexpr std::string_view kParameters[][2] = {{"save", ""}, {"appendonly", "no"}};
  auto matches = [argv](std::string_view name) {
    for (std::size_t i = 2; i < argv.size(); ++i) {
      if (glob_match(argv[i], name)) return true;
    }
    return false;
  };
  std::size_t count = 0;
  for (const auto& p : kParameters)
    count += matches(p[0]) ? 2 : 0;
  resp::append_array_header(out, count);
  for (const auto& p : kParameters) {
    if (!matches(p[0])) continue;
    resp::append_bulk(out, p[0]);
    resp::append_bulk(out, p[1]);
  }
}

// Runs a command whose arity was checked, on the keyspace that holds all its keys, and appends
// its reply. QUIT is the connection's business, not this function's.
void run_command(Cmd cmd, Args argv, kv::Keyspace& keys, kv::TimePoint now, std::string& out) {
  switch (cmd) {
    case Cmd::kPing:
      if (argv.size() > 2) return append_wrong_arity(out, "ping");
      if (argv.size() == 2) return resp::append_bulk(out, argv[1]);
      out += "+PONG\r\n";
      return;
    case Cmd::kEcho:
      return resp::append_bulk(out, argv[1]);
    case Cmd::kSet:
      return run_set(keys, argv, now, out);
    case Cmd::kGet:
      if (const std::string* value = keys.find(argv[1], now)) return resp::append_bulk(out, *value);
      return resp::append_null_bulk(out);
    case Cmd::kDel:
    case Cmd::kExists: {
      std::int64_t n = 0;
      for (std::size_t i = 1; i < argv.size(); ++i) {
        n += cmd == Cmd::kDel ? keys.erase(argv[i], now) : keys.exists(argv[i], now);
      }
      return resp::append_integer(out, n);
    }
    case Cmd::kIncr:
      return run_incr(keys, argv, 1, now, out);
    case Cmd::kDecr:
      return run_incr(keys, argv, -1, now, out);
    case Cmd::kIncrBy: {
      std::int64_t delta = 0;
      if (!parse_int64(argv[2], delta)) return append_not_integer(out);
      return run_incr(keys, argv, delta, now, out);
    }
    case Cmd::kMset:
      for (std::size_t i = 1; i + 1 < argv.size(); i += 2)
        keys.set(argv[i], argv[i + 1], kv::kNoExpiry);
      return append_ok(out);
    case Cmd::kMget:
      resp::append_array_header(out, argv.size() - 1);
      for (std::size_t i = 1; i < argv.size(); ++i) {
        if (const std::string* value = keys.find(argv[i], now)) {
          resp::append_bulk(out, *value);
        } else {
          resp::append_null_bulk(out);
        }
      }
      return;
    case Cmd::kExpire: {
      if (argv.size() > 3) {
        out += "-ERR Unsupported option ";
        out.append(argv[3].substr(0, 128));
        out += "\r\n";
        return;
      }
      kv::TimePoint at;
      if (!parse_expiry(argv[2], 1000, true, "expire", now, at, out)) return;
      return resp::append_integer(out, keys.expire(argv[1], at, now) ? 1 : 0);
    }
    case Cmd::kTtl: {
      const std::int64_t ms = keys.ttl(argv[1], now).count();
      return resp::append_integer(out, ms < 0 ? ms : (ms + 500) / 1000);
    }
    case Cmd::kDbsize:
      return resp::append_integer(out, static_cast<std::int64_t>(keys.size()));
    case Cmd::kFlushall:
      keys.clear();
      return append_ok(out);
    case Cmd::kQuit:
      return append_ok(out);
    case Cmd::kCommand:
      return resp::append_array_header(out, 0);
    case Cmd::kConfig:
      return run_config(argv, out);
  }
}

// FLUSHALL [ASYNC|SYNC]: checked where it is parsed, before it visits the shards.
bool flushall_args_ok(Args argv) {
  return argv.size() == 1 || (argv.size() == 2 && (equals_ignore_case(argv[1], "async") ||
                                                   equals_ignore_case(argv[1], "sync")));
}

// ---- Shards -----------------------------------------------------------------------------------

// Names a connection in its loop's table: a stale generation finds nothing.
struct ConnectionKey {
  std::uint32_t index = 0;
  std::uint32_t generation = 0;
};

// A command, or one shard's part of one, on its way to the shard that holds its keys and back.
struct Job {
  Cmd cmd = Cmd::kPing;
  bool part = false;         // a part of a multi-shard command (else the whole command)
  std::uint32_t origin = 0;  // the loop of the connection
  ConnectionKey connection;
  std::uint64_t seq = 0;  // the reply slot
  // The arguments, packed: the whole command, or a part's keys (key value pairs for MSET).
  std::string args;
  std::vector<std::uint32_t> arg_ends;
  std::vector<std::uint32_t> positions;  // MGET part: each key's place among the command's keys
  // The result: a command's reply; an MGET part's elements, one per key (ends in reply_ends);
  // a DEL, EXISTS or DBSIZE part's count.
  std::string reply;
  std::vector<std::uint32_t> reply_ends;
  std::int64_t count = 0;

  void add_arg(std::string_view a) {
    args += a;
    arg_ends.push_back(static_cast<std::uint32_t>(args.size()));
  }
};

// One reply in a connection's queue, or several consecutive replies that were ready at once.
struct Slot {
  std::string data;     // the reply bytes once ready
  int outstanding = 0;  // Jobs not back yet; 0: ready
  bool gather = false;  // parts of a multi-shard command, merged when the last one is back
  Cmd cmd = Cmd::kPing;
  std::int64_t count = 0;
  std::size_t keys = 0;                     // MGET: keys in the command
  std::vector<std::unique_ptr<Job>> parts;  // MGET: the parts, assembled at the end
};

struct ConnectionState {
  explicit ConnectionState(std::uint32_t i, const resp::Limits& limits)
      : index(i), parser(limits) {}
  std::uint32_t index;
  std::uint32_t generation = 1;
  reactor::Connection* connection = nullptr;  // null while the state is free
  resp::Parser parser;
  std::string out;             // ready replies that precede every pending slot, not yet sent
  std::deque<Slot> pending;    // replies waiting on other shards, and the replies after them
  std::uint64_t head_seq = 0;  // the seq of pending.front()
  bool closing = false;        // QUIT, a protocol error or EOF: close once pending is sent
  bool paused = false;         // reading paused: too many pending slots
  bool flush_queued = false;   // in the shard's list for the end-of-round flush
};

class Cluster;

// One loop's shard of the keyspace and the connections that loop accepted. Used only on its loop.
class Shard {
 public:
  Shard(Cluster& cluster, demo::LoopContext& context, const resp::Limits& limits);

  void on_open(reactor::Connection& c);
  void on_data(reactor::Connection& c, reactor::Buffer& input);
  void on_peer_shutdown(reactor::Connection& c);
  void on_close(reactor::Connection& c);
  void stop();

  // On this shard's loop: runs a Job from another loop (or a part from this one) on the keyspace.
  void run_job(Job& job);
  // On the origin loop: a Job came back.
  void job_done(std::unique_ptr<Job> job);

 private:
  void dispatch(ConnectionState& state, Args argv);
  std::string& sink(ConnectionState& state);
  Slot& new_slot(ConnectionState& state, std::uint64_t& seq);
  std::unique_ptr<Job> make_job(ConnectionState& state, Cmd cmd, bool part, std::uint64_t seq);
  void forward(ConnectionState& state, Cmd cmd, Args argv, std::size_t shard);
  void fan_out(ConnectionState& state, const CommandInfo& info, Args argv);
  void merge(Slot& slot, std::unique_ptr<Job> job);
  void finish(Slot& slot);
  void flush(ConnectionState& state);
  void flush_at_end_of_round(ConnectionState& state);
  ConnectionState* find(ConnectionKey key);
  Args job_args(const Job& job);

  Cluster& cluster_;
  reactor::EventLoop& loop_;
  std::uint32_t index_;
  demo::MessageCounter& messages_;
  resp::Limits limits_;
  kv::Keyspace keys_;
  reactor::TimerId sweep_timer_;

  std::deque<ConnectionState> states_;  // a deque: growth does not move the states handed out
  std::vector<std::uint32_t> free_;
  std::vector<std::string_view> argv_;      // the command being dispatched
  std::vector<std::string_view> job_argv_;  // the Job being run (fan_out runs one mid-dispatch)
  // Connections read this round, flushed at its end; removed by stop(), on the loop's thread
  // (the shard outlives its loop).
  std::optional<demo::EndOfRound<ConnectionKey>> end_of_round_;
  std::string scratch_;
  std::vector<std::unique_ptr<Job>> parts_;  // fan_out: one per shard
};

// Every shard, and the loops that own them. Outlives the loops (see Lifetime above).
class Cluster {
 public:
  explicit Cluster(const Settings& settings) {
    limits_.max_bulk = static_cast<std::size_t>(settings.max_bulk);
  }

  // Called by each loop's make_loop, one at a time.
  Shard& add_shard(demo::LoopContext& context) {
    if (shards_.empty()) {
      shards_.resize(context.loops.size());
      loops_ = context.loops;
    }
    shards_[context.index] = std::make_unique<Shard>(*this, context, limits_);
    return *shards_[context.index];
  }

  std::size_t size() const noexcept { return shards_.size(); }
  std::size_t shard_of(std::string_view key) const noexcept {
    return shards_.size() == 1 ? 0 : std::hash<std::string_view>{}(key) % shards_.size();
  }

  // Runs `job` on shard `target`'s loop, then hands it back to its origin's loop.
  void send(std::size_t target, std::unique_ptr<Job> job) {
    loops_[target]->post([this, target, job = std::move(job)]() mutable {
      shards_[target]->run_job(*job);
      const std::uint32_t origin = job->origin;
      loops_[origin]->post([this, origin, job = std::move(job)]() mutable {
        shards_[origin]->job_done(std::move(job));
      });
    });
  }

 private:
  resp::Limits limits_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::vector<reactor::EventLoop*> loops_;
};

Shard::Shard(Cluster& cluster, demo::LoopContext& context, const resp::Limits& limits)
    : cluster_(cluster),
      loop_(context.loop),
      index_(static_cast<std::uint32_t>(context.index)),
      messages_(context.messages),
      limits_(limits) {
  sweep_timer_ = loop_.every(kSweepPeriod, [this] { keys_.sweep(loop_.now(), kSweepLimit); });
  end_of_round_.emplace(loop_, [this](ConnectionKey key) {
    ConnectionState* state = find(key);
    if (state == nullptr) return;  // closed since it was read
    state->flush_queued = false;
    flush(*state);
  });
}

void Shard::stop() {
  loop_.cancel(sweep_timer_);
  end_of_round_.reset();
}

void Shard::on_open(reactor::Connection& c) {
  std::uint32_t index;
  if (free_.empty()) {
    index = static_cast<std::uint32_t>(states_.size());
    states_.emplace_back(index, limits_);
  } else {
    index = free_.back();
    free_.pop_back();
  }
  ConnectionState& state = states_[index];
  state.connection = &c;
  c.set_context(&state);
}

void Shard::on_close(reactor::Connection& c) {
  auto* state = c.context_as<ConnectionState>();
  if (state == nullptr) return;
  c.set_context(nullptr);
  state->connection = nullptr;
  ++state->generation;  // replies still in flight for it find nothing
  state->parser = resp::Parser(limits_);
  state->out.clear();
  if (state->out.capacity() > kKeptOutput) state->out.shrink_to_fit();
  state->pending.clear();
  state->head_seq = 0;
  state->closing = false;
  state->paused = false;
  state->flush_queued = false;  // a queued flush finds the old generation and skips it
  free_.push_back(state->index);
}

ConnectionState* Shard::find(ConnectionKey key) {
  if (key.index >= states_.size()) return nullptr;
  ConnectionState& state = states_[key.index];
  return state.generation == key.generation && state.connection != nullptr ? &state : nullptr;
}

void Shard::on_data(reactor::Connection& c, reactor::Buffer& input) {
  auto& state = *c.context_as<ConnectionState>();
  const std::string_view bytes = input.view();
  std::size_t offset = 0;
  std::uint64_t commands = 0;
  while (!state.closing) {
    const resp::Result result = state.parser.parse(bytes.substr(offset));
    offset += result.consumed;
    if (result.status == resp::Status::kNeedMore) break;
    if (result.status == resp::Status::kError) {
      // The stream cannot be re-synced: answer, then close once the replies before it are out.
      resp::append_error(sink(state), "ERR", result.error);
      state.closing = true;
      break;
    }
    ++commands;
    if (result.status == resp::Status::kTooManyArgs) {
      resp::append_error(sink(state), "ERR", result.error);
      continue;
    }
    argv_.clear();
    for (std::size_t i = 0; i < state.parser.argc(); ++i)
      argv_.push_back(state.parser.arg(i));
    dispatch(state, argv_);
  }
  input.consume(state.closing ? input.size() : offset);
  messages_.add(commands);
  flush_at_end_of_round(state);
}

void Shard::flush_at_end_of_round(ConnectionState& state) {
  if (state.flush_queued) return;
  state.flush_queued = true;
  end_of_round_->queue({state.index, state.generation});
}

void Shard::on_peer_shutdown(reactor::Connection& c) {
  auto& state = *c.context_as<ConnectionState>();
  state.closing = true;  // answer what was asked, then close
  flush(state);
}

// Where a reply computed now goes: the connection's `out` while nothing is pending, else the
// queue.
std::string& Shard::sink(ConnectionState& state) {
  if (state.pending.empty()) return state.out;
  if (state.pending.back().outstanding == 0) return state.pending.back().data;
  return state.pending.emplace_back().data;
}

Slot& Shard::new_slot(ConnectionState& state, std::uint64_t& seq) {
  seq = state.head_seq + state.pending.size();
  return state.pending.emplace_back();
}

std::unique_ptr<Job> Shard::make_job(ConnectionState& state, Cmd cmd, bool part,
                                     std::uint64_t seq) {
  auto job = std::make_unique<Job>();
  job->cmd = cmd;
  job->part = part;
  job->origin = index_;
  job->connection = {state.index, state.generation};
  job->seq = seq;
  return job;
}

void Shard::dispatch(ConnectionState& state, Args argv) {
  const CommandInfo* info = find_command(argv[0]);
  if (info == nullptr) return append_unknown_command(sink(state), scratch_, argv);
  if (!arity_ok(*info, argv.size()) || (info->route == Route::kPairs && argv.size() % 2 == 0)) {
    return append_wrong_arity(sink(state), info->name);
  }
  if (info->cmd == Cmd::kQuit) {
    append_ok(sink(state));
    state.closing = true;
    return;
  }
  if (info->cmd == Cmd::kFlushall && !flushall_args_ok(argv))
    return append_syntax_error(sink(state));

  bool here = true;
  switch (info->route) {
    case Route::kHere:
      break;
    case Route::kKey: {
      const std::size_t shard = cluster_.shard_of(argv[1]);
      if (shard != index_) return forward(state, info->cmd, argv, shard);
      break;
    }
    case Route::kKeys:
    case Route::kPairs: {
      const std::size_t step = info->route == Route::kPairs ? 2 : 1;
      for (std::size_t i = 1; i < argv.size() && here; i += step)
        here = cluster_.shard_of(argv[i]) == index_;
      break;
    }
    case Route::kEveryShard:
      here = cluster_.size() == 1;
      break;
  }
  if (!here) return fan_out(state, *info, argv);
  run_command(info->cmd, argv, keys_, loop_.now(), sink(state));
}

void Shard::forward(ConnectionState& state, Cmd cmd, Args argv, std::size_t shard) {
  std::uint64_t seq;
  Slot& slot = new_slot(state, seq);
  slot.outstanding = 1;
  slot.cmd = cmd;
  auto job = make_job(state, cmd, false, seq);
  for (std::string_view a : argv)
    job->add_arg(a);
  cluster_.send(shard, std::move(job));
}

void Shard::fan_out(ConnectionState& state, const CommandInfo& info, Args argv) {
  std::uint64_t seq;
  Slot& slot = new_slot(state, seq);
  slot.gather = true;
  slot.cmd = info.cmd;
  parts_.resize(cluster_.size());
  auto part_for = [&](std::size_t shard) -> Job& {
    if (!parts_[shard]) parts_[shard] = make_job(state, info.cmd, true, seq);
    return *parts_[shard];
  };
  if (info.route == Route::kEveryShard) {
    for (std::size_t s = 0; s < cluster_.size(); ++s)
      part_for(s);
  } else {
    const std::size_t step = info.route == Route::kPairs ? 2 : 1;
    for (std::size_t i = 1; i < argv.size(); i += step) {
      Job& part = part_for(cluster_.shard_of(argv[i]));
      part.add_arg(argv[i]);
      if (step == 2) part.add_arg(argv[i + 1]);
      if (info.cmd == Cmd::kMget) part.positions.push_back(static_cast<std::uint32_t>(slot.keys));
      ++slot.keys;
    }
  }
  for (std::size_t s = 0; s < parts_.size(); ++s) {
    if (!parts_[s] || s == index_) continue;
    ++slot.outstanding;
    cluster_.send(s, std::move(parts_[s]));
  }
  if (parts_[index_]) {
    run_job(*parts_[index_]);
    ++slot.outstanding;
    merge(slot, std::move(parts_[index_]));
  }
  if (slot.outstanding == 0) finish(slot);
}

Args Shard::job_args(const Job& job) {
  job_argv_.clear();
  std::uint32_t begin = 0;
  for (std::uint32_t end : job.arg_ends) {
    job_argv_.push_back(std::string_view(job.args).substr(begin, end - begin));
    begin = end;
  }
  return job_argv_;
}

void Shard::run_job(Job& job) {
  const kv::TimePoint now = loop_.now();
  const Args argv = job_args(job);
  if (!job.part) return run_command(job.cmd, argv, keys_, now, job.reply);
  switch (job.cmd) {
    case Cmd::kDel:
    case Cmd::kExists:
      for (std::string_view key : argv)
        job.count += job.cmd == Cmd::kDel ? keys_.erase(key, now) : keys_.exists(key, now);
      return;
    case Cmd::kMset:
      for (std::size_t i = 0; i + 1 < argv.size(); i += 2)
        keys_.set(argv[i], argv[i + 1], kv::kNoExpiry);
      return;
    case Cmd::kMget:
      for (std::string_view key : argv) {
        if (const std::string* value = keys_.find(key, now)) {
          resp::append_bulk(job.reply, *value);
        } else {
          resp::append_null_bulk(job.reply);
        }
        job.reply_ends.push_back(static_cast<std::uint32_t>(job.reply.size()));
      }
      return;
    case Cmd::kDbsize:
      job.count = static_cast<std::int64_t>(keys_.size());
      return;
    case Cmd::kFlushall:
      keys_.clear();
      return;
    default:
      return;  // no other command is split into parts
  }
}

void Shard::job_done(std::unique_ptr<Job> job) {
  ConnectionState* state = find(job->connection);
  if (state == nullptr) return;  // the connection closed meanwhile: nobody to answer
  Slot& slot = state->pending[job->seq - state->head_seq];
  merge(slot, std::move(job));
  if (slot.outstanding == 0) finish(slot);
  flush(*state);
}

void Shard::merge(Slot& slot, std::unique_ptr<Job> job) {
  --slot.outstanding;
  if (!job->part) {
    slot.data = std::move(job->reply);
  } else if (job->cmd == Cmd::kMget) {
    slot.parts.push_back(std::move(job));
  } else {
    slot.count += job->count;
  }
}

// The last part of a multi-shard command is back: its reply.
void Shard::finish(Slot& slot) {
  if (!slot.gather) return;
  switch (slot.cmd) {
    case Cmd::kDel:
    case Cmd::kExists:
    case Cmd::kDbsize:
      resp::append_integer(slot.data, slot.count);
      break;
    case Cmd::kMget: {
      std::vector<std::string_view> elements(slot.keys);
      for (const auto& part : slot.parts) {
        std::uint32_t begin = 0;
        for (std::size_t i = 0; i < part->positions.size(); ++i) {
          const std::uint32_t end = part->reply_ends[i];
          elements[part->positions[i]] = std::string_view(part->reply).substr(begin, end - begin);
          begin = end;
        }
      }
      resp::append_array_header(slot.data, slot.keys);
      for (std::string_view e : elements)
        slot.data += e;
      slot.parts.clear();
      break;
    }
    default:  // MSET, FLUSHALL
      append_ok(slot.data);
      break;
  }
}

// Sends `out` and the ready slots at the head of the queue with one send, then applies flow
// control and a pending close.
void Shard::flush(ConnectionState& state) {
  reactor::Connection& c = *state.connection;
  while (!state.pending.empty() && state.pending.front().outstanding == 0) {
    state.out += state.pending.front().data;
    state.pending.pop_front();
    ++state.head_seq;
  }
  if (!state.out.empty()) {
    c.send(state.out);
    state.out.clear();
    if (state.out.capacity() > kKeptOutput) state.out.shrink_to_fit();
  }
  if (!state.paused && state.pending.size() >= kMaxPendingSlots) {
    state.paused = true;
    c.pause_reading();
  } else if (state.paused && state.pending.size() <= kMaxPendingSlots / 2) {
    state.paused = false;
    c.resume_reading();
  }
  if (state.closing && state.pending.empty() && c.is_open()) c.close();
}

// The runner's view of one loop: forwards the callbacks to that loop's shard.
class KvLoop : public demo::LoopHandlers {
 public:
  explicit KvLoop(Shard& shard) : shard_(shard) {
    on_open = [this](reactor::Connection& c) { shard_.on_open(c); };
    connection.on_data = [this](reactor::Connection& c, reactor::Buffer& input) {
      shard_.on_data(c, input);
    };
    connection.on_peer_shutdown = [this](reactor::Connection& c) { shard_.on_peer_shutdown(c); };
    connection.on_close = [this](reactor::Connection& c, reactor::CloseReason, std::error_code) {
      shard_.on_close(c);
    };
  }
  ~KvLoop() override { shard_.stop(); }

 private:
  Shard& shard_;
};

}  // namespace

int main(int argc, char** argv) {
  Settings settings;
  demo::ServerSpec spec;
  spec.name = "kv_server";
  spec.description =
      "Key-value server speaking RESP2 (the Redis protocol) for redis-cli and redis-benchmark; "
      "one keyspace sharded over the loops.";
  spec.default_listen = "127.0.0.1:6379";
  spec.add_options = [&settings](CLI::App& app) {
    demo::add_number<std::int64_t>(app, "--max-bulk", settings.max_bulk, 1,
                                   std::int64_t{512} * 1024 * 1024,
                                   "Longest bulk string a client may send; longer ones are a "
                                   "protocol error",
                                   "BYTES");
  };
  // Declared before run_server() runs and destroyed after it returns, when no loop is left to
  // run a Job that points at a shard.
  std::unique_ptr<Cluster> cluster;
  spec.make_loop = [&settings, &cluster](demo::LoopContext& context) {
    if (!cluster) cluster = std::make_unique<Cluster>(settings);
    return std::make_unique<KvLoop>(cluster->add_shard(context));
  };
  return demo::run_server(argc, argv, spec);
}
