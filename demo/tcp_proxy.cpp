// tcp_proxy: for each client, connects to the upstream and pumps bytes both ways.
//
//   tcp_proxy --listen ADDR --upstream HOST:PORT [--connect-timeout SEC] [runner options]
//
// HOST may be a name where the build has the resolver (reactor_resolver, c-ares): each loop
// has a Resolver, and each client's upstream is connected through a HostConnector (RFC 8305
// attempts over the name's addresses, --connect-timeout covering resolution and attempts).
// Without it, HOST must be numeric (or unix:PATH), connected through a Connector.
//
// What it promises, per client:
// - Bytes pass through unchanged in both directions. Client bytes that arrive before the
//   upstream connection is up stay in the client's socket (its reading is paused until then).
// - Mutual backpressure: when one side's queued output passes its high-water mark (1 MiB), the
//   proxy stops reading from the other side, and reads again once that output has fallen below
//   its low-water mark (256 KiB; on_low_water), so the other side keeps a window in flight. So each
//   connection's queued_bytes() stays under the high-water mark plus what one readiness reads
//   (reads_per_event x 64 KiB).
// - Half-close passes through: the client's FIN becomes shutdown(SHUT_WR) towards the upstream
//   after what was queued for it, and the other way round; the pair ends when both directions
//   have.
// - A reset (or another socket error) on one side aborts the other (the peer sees a reset); a
//   clean end on one side closes the other gracefully.
// - The upstream cannot be reached (refused, timed out): the client is closed gracefully (EOF,
//   no reset).
// - On exit (SIGINT/SIGTERM, after the runner's final line) each loop prints
//   `proxy: loop=I sessions=N peak_queued_bytes=P`: P the largest queued_bytes() any of its
//   connections reached, on either side (read after every send, the only thing that grows it).
// The runner's messages count the reads forwarded, in either direction.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <list>
#include <memory>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include <reactor/address.hpp>
#include <reactor/buffer.hpp>
#include <reactor/connection.hpp>
#include <reactor/connector.hpp>
#if TCP_PROXY_RESOLVES_NAMES
#include <reactor/host_connector.hpp>
#include <reactor/resolver.hpp>
#endif

#include "cli.hpp"
#include "server_runner.hpp"

namespace {

struct ProxySettings {
#if TCP_PROXY_RESOLVES_NAMES
  std::string upstream;  // HOST:PORT or an address, resolved per client
#else
  reactor::Address upstream;
#endif
  double connect_timeout_s = 5.0;
};

// The upstream as given on the command line: an address; with the resolver, HOST:PORT too
// (checked here for its form only: the name is resolved per client).
bool parse_upstream(const std::string& text, std::string* why) {
  auto address = reactor::Address::parse(text);
  if (address) return true;
#if TCP_PROXY_RESOLVES_NAMES
  // name:port, the name made of what host names are made of (RFC 1123: letters, digits, '-',
  // dots; '_' too, as some internal names have it).
  const std::size_t colon = text.rfind(':');
  if (colon != std::string::npos && colon > 0 && colon <= 253 &&
      std::all_of(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(colon),
                  [](char c) {
                    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' ||
                           c == '_';
                  }) &&
      reactor::Address::parse("0.0.0.0" + text.substr(colon))) {
    return true;
  }
#endif
  if (why) *why = address.error().message();
  return false;
}

// One client and its upstream connection. Owned by its ProxyLoop; freed once both sides have
// delivered on_close (or the upstream never came).
struct Session {
  std::list<Session>::iterator self;
  reactor::Connection* client = nullptr;  // null once the client's on_close ran
#if TCP_PROXY_RESOLVES_NAMES
  reactor::HostConnector connector;
#else
  reactor::Connector connector;
#endif
  reactor::ConnectionHandle upstream;
  bool upstream_done = false;       // the upstream ended (on_close) or never connected
  bool client_held = false;         // client reading paused by us (connecting, or backpressure)
  bool upstream_held = false;       // upstream reading paused by us (backpressure)
  bool client_eof_pending = false;  // the client's FIN arrived before the upstream was up

#if TCP_PROXY_RESOLVES_NAMES
  Session(reactor::EventLoop& loop, reactor::Resolver& resolver) : connector(loop, resolver) {}
#else
  explicit Session(reactor::EventLoop& loop) : connector(loop) {}
#endif
};

bool is_clean(reactor::CloseReason reason) {
  return reason == reactor::CloseReason::peer_closed ||
         reason == reactor::CloseReason::local_close || reason == reactor::CloseReason::timed_out;
}

class ProxyLoop : public demo::LoopHandlers {
 public:
  ProxyLoop(demo::LoopContext& context, const ProxySettings& settings)
      : loop_(context.loop),
        index_(context.index),
        messages_(context.messages),
        settings_(settings) {
    // The upstream side: our own high-water reaction (pause the client), not the default one
    // (pause the upstream itself), which would stall the other direction for nothing.
    upstream_options_.pause_reading_at_high_water = false;

    on_open = [this](reactor::Connection& c) { open(c); };
    connection.on_data = [this](reactor::Connection& c, reactor::Buffer& input) {
      Session& s = *c.context_as<Session>();
      forward(input, s.upstream.get());
    };
    connection.on_high_water = [](reactor::Connection& c, std::size_t) {
      // The client does not keep up: stop reading what the upstream sends it.
      Session& s = *c.context_as<Session>();
      if (s.upstream && !s.upstream_held) {
        s.upstream_held = true;
        s.upstream->pause_reading();
      }
    };
    connection.on_low_water = [](reactor::Connection& c) {
      Session& s = *c.context_as<Session>();
      if (s.upstream && s.upstream_held) {
        s.upstream_held = false;
        s.upstream->resume_reading();
      }
    };
    connection.on_peer_shutdown = [](reactor::Connection& c) {
      Session& s = *c.context_as<Session>();
      if (s.upstream) {
        s.upstream->shutdown_write();
      } else {
        s.client_eof_pending = true;  // not reached while reading is held; kept for safety
      }
    };
    connection.on_close = [this](reactor::Connection& c, reactor::CloseReason reason,
                                 std::error_code) {
      Session& s = *c.context_as<Session>();
      s.client = nullptr;
      if (s.upstream && !s.upstream_done) {
        end_other(*s.upstream, reason);
      } else {
        s.connector.cancel();
        s.upstream_done = true;
      }
      maybe_free(s);
    };

    upstream_handlers_.on_data = [this](reactor::Connection& u, reactor::Buffer& input) {
      Session& s = *u.context_as<Session>();
      forward(input, s.client);
    };
    upstream_handlers_.on_high_water = [](reactor::Connection& u, std::size_t) {
      // The upstream does not keep up: stop reading the client.
      Session& s = *u.context_as<Session>();
      if (s.client && !s.client_held) {
        s.client_held = true;
        s.client->pause_reading();
      }
    };
    upstream_handlers_.on_low_water = [](reactor::Connection& u) {
      Session& s = *u.context_as<Session>();
      if (s.client && s.client_held) {
        s.client_held = false;
        s.client->resume_reading();
      }
    };
    upstream_handlers_.on_peer_shutdown = [](reactor::Connection& u) {
      Session& s = *u.context_as<Session>();
      if (s.client) s.client->shutdown_write();
    };
    upstream_handlers_.on_close = [this](reactor::Connection& u, reactor::CloseReason reason,
                                         std::error_code) {
      Session& s = *u.context_as<Session>();
      s.upstream_done = true;
      if (s.client) end_other(*s.client, reason);
      maybe_free(s);
    };
  }

  ~ProxyLoop() override {
    std::printf("proxy: loop=%zu sessions=%llu peak_queued_bytes=%zu\n", index_,
                static_cast<unsigned long long>(sessions_total_), peak_queued_);
    std::fflush(stdout);
    // Handles dropped here close the upstream sockets without callbacks.
    sessions_.clear();
  }

 private:
  void open(reactor::Connection& client) {
#if TCP_PROXY_RESOLVES_NAMES
    Session& s = sessions_.emplace_back(loop_, resolver_);
#else
    Session& s = sessions_.emplace_back(loop_);
#endif
    s.self = std::prev(sessions_.end());
    s.client = &client;
    ++sessions_total_;
    client.set_context(&s);
    // Hold the client's bytes in its socket until the upstream is up (bounded by the kernel).
    s.client_held = true;
    client.pause_reading();
    const auto timeout = std::chrono::duration_cast<reactor::Duration>(
        std::chrono::duration<double>(settings_.connect_timeout_s));
    auto ec = s.connector.connect(
        settings_.upstream, timeout, upstream_handlers_,
        [this, &s](std::error_code error, reactor::ConnectionHandle handle) {
          connected(s, error, std::move(handle));
        },
        upstream_options_);
    if (ec) fail_connect(s);
  }

  void connected(Session& s, std::error_code error, reactor::ConnectionHandle handle) {
    if (error || !s.client) {
      fail_connect(s);
      return;
    }
    handle->set_context(&s);
    s.upstream = std::move(handle);
    if (s.client_eof_pending) s.upstream->shutdown_write();
    s.client_held = false;
    s.client->resume_reading();
  }

  // No upstream: the client is closed gracefully (its unread bytes are drained, not reset).
  void fail_connect(Session& s) {
    s.upstream_done = true;
    if (s.client) s.client->close();
  }

  // One side ended: a clean end closes the other gracefully (after its queued output); a reset
  // or an error is passed on as a reset.
  static void end_other(reactor::Connection& other, reactor::CloseReason reason) {
    if (other.is_closed()) return;
    if (is_clean(reason)) {
      other.close();
    } else {
      other.abort();
    }
  }

  void forward(reactor::Buffer& input, reactor::Connection* to) {
    if (to) {
      // false when `to` no longer sends (shut or closed): its on_close ends this side.
      if (to->send(input.view())) peak_queued_ = std::max(peak_queued_, to->queued_bytes());
    }
    input.consume(input.size());
    messages_.add();
  }

  void maybe_free(Session& s) {
    if (s.client || !s.upstream_done) return;
    // The upstream handle may be running its own on_close: dropping it there is allowed (the
    // Connection is destroyed at the end of the dispatch round).
    sessions_.erase(s.self);
  }

  reactor::EventLoop& loop_;
  std::size_t index_;
  demo::MessageCounter& messages_;
  const ProxySettings& settings_;
#if TCP_PROXY_RESOLVES_NAMES
  reactor::Resolver resolver_{loop_};  // before the sessions: they use it until destroyed
#endif
  reactor::ConnectionHandlers upstream_handlers_;
  reactor::ConnectionOptions upstream_options_;
  std::list<Session> sessions_;
  std::uint64_t sessions_total_ = 0;
  std::size_t peak_queued_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  ProxySettings settings;
  demo::ServerSpec spec;
  spec.name = "tcp_proxy";
  spec.description =
      "TCP proxy: connects each client to the upstream and pumps bytes both ways, with "
      "backpressure, half-close and resets passed through.";
  spec.default_listen = "127.0.0.1:7780";
  spec.add_options = [&settings](CLI::App& app) {
    auto* upstream = app.add_option_function<std::string>(
        "--upstream",
        [&settings](const std::string& text) {
#if TCP_PROXY_RESOLVES_NAMES
          settings.upstream = text;
#else
          if (auto address = reactor::Address::parse(text)) settings.upstream = *address;
#endif
        },
#if TCP_PROXY_RESOLVES_NAMES
        "Where each client is connected: HOST:PORT (a name, resolved per client; RFC 8305 "
        "attempts over its addresses), 127.0.0.1:7777, [::1]:7777 or unix:PATH");
#else
        "Where each client is connected: 127.0.0.1:7777, [::1]:7777, localhost:7777 or "
        "unix:PATH (host names need the resolver: build with libc-ares-dev)");
#endif
    upstream->type_name("HOST:PORT")->required();
    // Runs before the function above: CLI11 reports the returned text as "--upstream: TEXT".
    upstream->check([](const std::string& text) -> std::string {
      std::string why;
      if (parse_upstream(text, &why)) return {};
      return text + " (" + why + ")";
    });
    demo::add_number(app, "--connect-timeout", settings.connect_timeout_s, 0.001, 1e6,
                     "Give up connecting to the upstream after SEC seconds (the client is then "
                     "closed)",
                     "SEC");
  };
  spec.make_loop = [&settings](demo::LoopContext& context) {
    return std::make_unique<ProxyLoop>(context, settings);
  };
  return demo::run_server(argc, argv, spec);
}
