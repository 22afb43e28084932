// http_server: HTTP/1.1 for wrk and curl. Every GET or HEAD, of any path, answers 200 with a
// small fixed body; other methods answer 405.
//
//     http_server [--listen 127.0.0.1:8080] [--body TEXT] [runner options: --threads N, ...]
//     curl -v http://127.0.0.1:8080/ http://127.0.0.1:8080/again    # one connection, reused
//     wrk -t1 -c64 -d5s http://127.0.0.1:8080/
//
// The protocol is demo/http_parser.hpp (plain code over bytes); this file is the glue between it
// and the connections. What it does per read:
// - parses every complete request in the input (pipelining: many requests in one read; a request
//   split at any byte is parsed again when more arrives) and appends each response to the
//   connection's reply string, sent once at the end of the loop's dispatch round: one send() per
//   batch, not per response, and all connections read in one round answered together, so a
//   client driving many connections wakes once for their replies rather than once per connection;
// - drops the body announced by Content-Length, also the part that arrives in later reads
//   (body_remaining), without buffering it;
// - closes after the response when the request did not keep the connection alive (HTTP/1.0
//   without keep-alive, `Connection: close`), and after an error response (400, 411, 431, 501,
//   505). Transfer-Encoding is refused (411 for chunked, 501 otherwise: see http_parser.hpp).
//   close() flushes the reply and then sends FIN, so the client reads it instead of a reset.
//   A client that half-closes gets the responses to everything it sent before its EOF.
//
// Allocation: none per request in steady state. The Request (~2 KiB of header slots) is per loop
// and reused; the per-connection state (with its reply string) comes from a per-loop pool.
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include <reactor/buffer.hpp>
#include <reactor/connection.hpp>
#include <reactor/event_loop.hpp>

#include "cli.hpp"
#include "end_of_round.hpp"
#include "http_parser.hpp"
#include "server_runner.hpp"

namespace {

namespace http = demo::http;

struct Settings {
  std::string body = "hello\n";
};

// A connection's reply string keeps its capacity between flushes (no allocation per batch) up to
// this; a larger one is freed, so an idle connection does not hold it.
constexpr std::size_t kKeptOutput = 16 * 1024;

// What a connection needs between reads, from a per-loop pool.
struct ConnectionState {
  reactor::Connection* connection = nullptr;  // null while the state is in the pool
  std::uint64_t generation = 0;               // bumped on release: a queued flush then skips it
  std::uint64_t body_remaining = 0;           // bytes of a request body still to drop
  std::string out;                            // responses not sent yet
  bool flush_queued = false;
  bool close_after = false;  // close once `out` is sent
};

class HttpLoop : public demo::LoopHandlers {
 public:
  HttpLoop(demo::LoopContext& context, const Settings& settings)
      : loop_(context.loop), messages_(context.messages), body_(settings.body) {
    on_open = [this](reactor::Connection& c) { c.set_context(acquire(c)); };
    connection.on_data = [this](reactor::Connection& c, reactor::Buffer& input) {
      on_data(c, input);
    };
    // The client half-closed: answer what it asked before its EOF (the responses may still be
    // waiting for the end of the round), then close.
    connection.on_peer_shutdown = [this](reactor::Connection& c) {
      auto* state = c.context_as<ConnectionState>();
      flush(*state);
      c.close();
    };
    connection.on_close = [this](reactor::Connection& c, reactor::CloseReason, std::error_code) {
      release(c.context_as<ConnectionState>());
      c.set_context(nullptr);
    };
  }

 private:
  ConnectionState* acquire(reactor::Connection& c) {
    ConnectionState* state;
    if (free_.empty()) {
      state = &states_.emplace_back();
    } else {
      state = free_.back();
      free_.pop_back();
    }
    state->connection = &c;
    return state;
  }
  void release(ConnectionState* state) {
    if (state == nullptr) return;
    state->connection = nullptr;
    ++state->generation;
    state->body_remaining = 0;
    state->out.clear();
    if (state->out.capacity() > kKeptOutput) state->out.shrink_to_fit();
    state->flush_queued = false;
    state->close_after = false;
    free_.push_back(state);
  }

  void flush_at_end_of_round(ConnectionState& state) {
    if (state.flush_queued) return;
    state.flush_queued = true;
    end_of_round_.queue({&state, state.generation});
  }

  // Sends the connection's pending responses, then closes it if the last one asked for that.
  void flush(ConnectionState& state) {
    reactor::Connection& c = *state.connection;
    if (!state.out.empty()) c.send(state.out);
    state.out.clear();
    if (state.out.capacity() > kKeptOutput) state.out.shrink_to_fit();
    if (state.close_after) c.close();
  }

  // The Date value: the system clock is read at most once per loop iteration (loop.now() tells
  // iterations apart) and the text is formatted again only when the second changes.
  std::string_view date() {
    if (loop_.now() != date_read_at_) {
      date_read_at_ = loop_.now();
      date_.update(std::chrono::system_clock::now());
    }
    return date_.value();
  }

  void on_data(reactor::Connection& c, reactor::Buffer& input) {
    auto* state = c.context_as<ConnectionState>();
    if (state->close_after) {  // closing at the end of this round: nothing more is answered
      input.consume(input.size());
      return;
    }
    const std::string_view bytes = input.view();
    std::size_t pos = 0;
    std::string& out = state->out;

    for (;;) {
      if (state->body_remaining > 0) {
        const std::uint64_t skip =
            std::min<std::uint64_t>(state->body_remaining, bytes.size() - pos);
        pos += static_cast<std::size_t>(skip);
        state->body_remaining -= skip;
        if (state->body_remaining > 0) break;  // the rest of the body comes in a later read
      }
      if (pos == bytes.size()) break;
      const http::ParseResult result = http::parse_request(bytes.substr(pos), request_);
      if (result.status == http::ParseStatus::kNeedMore) break;
      if (result.status == http::ParseStatus::kError) {
        http::append_error(out, date(), result.error_status);
        pos = bytes.size();  // close() discards whatever follows
        state->close_after = true;
        break;
      }
      messages_.add();
      const http::ConnectionHeader connection_header = http::connection_header_for(request_);
      if (request_.method == "GET" || request_.method == "HEAD") {
        http::append_ok(out, date(), "text/plain", body_, request_.method == "GET",
                        connection_header);
      } else {
        http::append_method_not_allowed(out, date(), connection_header);
      }
      pos += request_.consumed;
      state->body_remaining = request_.body_remaining;
      if (!request_.keep_alive) {
        pos = bytes.size();  // requests pipelined after the last one are not answered
        state->close_after = true;
        break;
      }
    }

    input.consume(pos);
    if (!out.empty() || state->close_after) flush_at_end_of_round(*state);
  }

  reactor::EventLoop& loop_;
  demo::MessageCounter& messages_;
  const std::string body_;
  http::Request request_;  // ~2 KiB of header slots: one per loop, reused for every request
  // Connections read this round; a flush skips one closed since (its generation moved on).
  demo::EndOfRound<std::pair<ConnectionState*, std::uint64_t>> end_of_round_{
      loop_, [this](std::pair<ConnectionState*, std::uint64_t> queued) {
        auto [state, generation] = queued;
        if (state->generation != generation) return;
        state->flush_queued = false;
        flush(*state);
      }};
  http::DateCache date_;
  reactor::TimePoint date_read_at_{};
  std::deque<ConnectionState> states_;  // a deque: growth does not move the states handed out
  std::vector<ConnectionState*> free_;
};

}  // namespace

int main(int argc, char** argv) {
  Settings settings;
  demo::ServerSpec spec;
  spec.name = "http_server";
  spec.description =
      "HTTP/1.1 server: GET and HEAD of any path answer 200 with a fixed body, keep-alive and "
      "pipelining; other methods answer 405.";
  spec.default_listen = "127.0.0.1:8080";
  spec.add_options = [&settings](CLI::App& app) {
    app.add_option("--body", settings.body, "The body of every 200 response")
        ->type_name("TEXT")
        ->default_str("hello\\n");
  };
  spec.make_loop = [&settings](demo::LoopContext& context) {
    return std::make_unique<HttpLoop>(context, settings);
  };
  return demo::run_server(argc, argv, spec);
}
