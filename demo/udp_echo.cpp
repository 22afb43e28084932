// udp_echo: sends every datagram back to where it came from, on the shared runner.
//
//   udp_echo [--listen udp:ADDR]... [--threads N] [runner options]
//
// Each batch the socket reads (recvmmsg, up to 32 datagrams) goes back with one send_batch
// (sendmmsg): at one datagram per wake-up that is the floor's three syscalls (epoll, recvmmsg,
// sendmmsg), at 32 two per batch. A datagram the kernel will not take back is queued up to the
// socket's bound (1 MiB) and dropped past it (DatagramStats), never blocking. Default address
// udp:127.0.0.1:7778; with --threads N each loop has its own SO_REUSEPORT socket on the port
// (the kernel spreads senders by a hash of their address). A stream --listen address echoes
// TCP too, as echo_server does. Each datagram echoed counts as one message in --stats.
//     udp_echo --listen udp:127.0.0.1:7778
//     reactor-load udp --target udp:127.0.0.1:7778 --depth 32 --duration 5
#include <memory>
#include <span>
#include <vector>

#include <reactor/buffer.hpp>
#include <reactor/connection.hpp>
#include <reactor/datagram_socket.hpp>

#include "server_runner.hpp"

namespace {

class UdpEchoLoop : public demo::LoopHandlers {
 public:
  explicit UdpEchoLoop(demo::LoopContext& context) : messages_(context.messages) {
    datagram.on_datagrams = [this](reactor::DatagramSocket& socket,
                                   std::span<const reactor::Datagram> batch) {
      // The batch's bytes and sources stay valid during this call: each is sent straight back.
      out_.clear();
      for (const reactor::Datagram& d : batch)
        out_.push_back({d.bytes, &d.source});
      socket.send_batch(out_);  // dropped ones are counted by the socket
      messages_.add(batch.size());
    };
    connection.on_data = [this](reactor::Connection& conn, reactor::Buffer& input) {
      conn.send(input.view());
      input.consume(input.size());
      messages_.add();
    };
  }

 private:
  demo::MessageCounter& messages_;
  std::vector<reactor::OutgoingDatagram> out_;  // keeps its capacity: no allocation per batch
};

}  // namespace

int main(int argc, char** argv) {
  demo::ServerSpec spec;
  spec.name = "udp_echo";
  spec.description = "UDP echo server: sends every datagram back to its sender.";
  spec.default_listen = "udp:127.0.0.1:7778";
  spec.datagrams = true;
  spec.make_loop = [](demo::LoopContext& context) {
    return std::make_unique<UdpEchoLoop>(context);
  };
  return demo::run_server(argc, argv, spec);
}
