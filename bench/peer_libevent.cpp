// peer_libevent: an echo server written the way libevent 2.1's documentation writes one, for
// the side-by-side comparison (bench/compare.sh): evconnlistener, one bufferevent per
// connection, and the echo as evbuffer_add_buffer(output, input) from the read callback.
//
//   peer_libevent [--listen ADDR]   prints `listening on ADDR`; exits 0 on SIGINT or SIGTERM
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>

#include <cstdio>

#include "server_args.hpp"

namespace {

void on_read(bufferevent* connection, void*) {
  evbuffer_add_buffer(bufferevent_get_output(connection), bufferevent_get_input(connection));
}

void on_event(bufferevent* connection, short events, void*) {
  if (events & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) bufferevent_free(connection);
}

void on_accept(evconnlistener* listener, evutil_socket_t fd, sockaddr*, int, void*) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  event_base* base = evconnlistener_get_base(listener);
  bufferevent* connection = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
  bufferevent_setcb(connection, on_read, nullptr, on_event, nullptr);
  bufferevent_enable(connection, EV_READ | EV_WRITE);
}

void on_signal(evutil_socket_t, short, void* base) {
  event_base_loopbreak(static_cast<event_base*>(base));
}

}  // namespace

int main(int argc, char** argv) {
  const bench::ServerArgs args = bench::parse_server_args(argc, argv);
  bench::raise_fd_limit();
  signal(SIGPIPE, SIG_IGN);
  event_base* base = event_base_new();
  evconnlistener* listener = evconnlistener_new_bind(
      base, on_accept, nullptr, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, SOMAXCONN,
      reinterpret_cast<const sockaddr*>(&args.address), static_cast<int>(args.address_length));
  if (!listener) {
    std::perror("peer_libevent: cannot listen");
    return 1;
  }
  bench::print_listening(evconnlistener_get_fd(listener));
  event* sigint = evsignal_new(base, SIGINT, on_signal, base);
  event* sigterm = evsignal_new(base, SIGTERM, on_signal, base);
  event_add(sigint, nullptr);
  event_add(sigterm, nullptr);
  event_base_dispatch(base);
  event_free(sigint);
  event_free(sigterm);
  evconnlistener_free(listener);
  event_base_free(base);
  return 0;
}
