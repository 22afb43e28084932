// peer_asio: an echo server written the way Boost.Asio's examples write one
// (async_tcp_echo_server), for the side-by-side comparison (bench/compare.sh): one io_context on
// one thread, a session per connection that loops async_read_some -> async_write, kept alive by
// the shared_ptr its handlers hold.
//
//   peer_asio [--listen ADDR]       prints `listening on ADDR`; exits 0 on SIGINT or SIGTERM
#include <array>
#include <cstdio>
#include <memory>
#include <utility>

#include <boost/asio.hpp>

#include "server_args.hpp"

namespace {

namespace asio = boost::asio;
using asio::ip::tcp;

class Session : public std::enable_shared_from_this<Session> {
 public:
  explicit Session(tcp::socket socket) : socket_(std::move(socket)) {}
  void start() { read(); }

 private:
  void read() {
    socket_.async_read_some(asio::buffer(data_), [self = shared_from_this()](
                                                     boost::system::error_code ec, std::size_t n) {
      if (!ec) self->write(n);
    });
  }
  void write(std::size_t n) {
    asio::async_write(socket_, asio::buffer(data_, n),
                      [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                        if (!ec) self->read();
                      });
  }

  tcp::socket socket_;
  std::array<char, 64 * 1024> data_;
};

void accept(tcp::acceptor& acceptor) {
  acceptor.async_accept([&acceptor](boost::system::error_code ec, tcp::socket socket) {
    if (!ec) {
      socket.set_option(tcp::no_delay(true), ec);
      std::make_shared<Session>(std::move(socket))->start();
    }
    accept(acceptor);
  });
}

}  // namespace

int main(int argc, char** argv) {
  const bench::ServerArgs args = bench::parse_server_args(argc, argv);
  bench::raise_fd_limit();
  asio::io_context io(1);
  boost::system::error_code ec;
  tcp::endpoint endpoint(asio::ip::make_address(args.host, ec), args.port);
  tcp::acceptor acceptor(io);
  if (!ec) acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    std::fprintf(stderr, "peer_asio: cannot listen: %s\n", ec.message().c_str());
    return 1;
  }
  bench::print_listening(acceptor.native_handle());
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&io](boost::system::error_code, int) { io.stop(); });
  accept(acceptor);
  io.run();
  return 0;
}
