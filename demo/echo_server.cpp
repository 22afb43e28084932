// echo_server: sends back every byte it receives.
//
// The example to copy from: a demo server is a ServerSpec (name, default address) plus the
// connection callbacks for one loop; demo/server_runner.hpp does the command line, threads,
// signals and counters. Try it:
//     ./build.sh run                      # listens on 127.0.0.1:7777
//     reactor-load echo --target 127.0.0.1:7777 --connections 50 --duration 5
#include <memory>

#include <reactor/buffer.hpp>
#include <reactor/connection.hpp>

#include "server_runner.hpp"

int main(int argc, char** argv) {
  demo::ServerSpec spec;
  spec.name = "echo_server";
  spec.description = "Echo server: sends back every byte it receives.";
  spec.default_listen = "127.0.0.1:7777";

  // Called once per loop (--threads N: N times, each on its own thread).
  spec.make_loop = [](demo::LoopContext& context) {
    auto handlers = std::make_unique<demo::LoopHandlers>();
    handlers->connection.on_data = [&messages = context.messages](reactor::Connection& conn,
                                                                  reactor::Buffer& input) {
      // send() writes to the socket at once and copies into the connection's output queue only
      // what the kernel did not take, so the input can be consumed right after. A peer that
      // sends but never reads fills that queue up to the high-water mark; then the connection
      // stops reading from it until the queue drains: memory stays bounded.
      conn.send(input.view());
      input.consume(input.size());
      messages.add();  // one read echoed counts as one message in --stats
    };
    // No on_peer_shutdown: when the client half-closes, the connection flushes what is queued
    // and closes gracefully.
    return handlers;
  };
  return demo::run_server(argc, argv, spec);
}
