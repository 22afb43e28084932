// peer_libuv: an echo server written the way libuv's documentation and examples write one, for
// the side-by-side comparison (bench/compare.sh). One uv_loop, uv_listen + uv_accept, uv_read_start
// with a loop-wide read buffer (every read is consumed before the callback returns), and the
// reply written with uv_try_write first, only the remainder copied into a queued uv_write.
// A connection stops reading while more than 1 MiB of replies is queued.
//
//   peer_libuv [--listen ADDR]      prints `listening on ADDR`; exits 0 on SIGINT or SIGTERM
#include <netinet/in.h>
#include <uv.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "server_args.hpp"

namespace {

constexpr std::size_t kPauseAt = 1 << 20;
char read_buffer[64 * 1024];

struct WriteRequest {
  uv_write_t request;
  uv_buf_t buffer;
};

void on_closed(uv_handle_t* handle) {
  delete reinterpret_cast<uv_tcp_t*>(handle);
}

void on_alloc(uv_handle_t*, std::size_t, uv_buf_t* buffer) {
  *buffer = uv_buf_init(read_buffer, sizeof read_buffer);
}

void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buffer);

void on_written(uv_write_t* request, int) {
  auto* write = reinterpret_cast<WriteRequest*>(request);
  uv_stream_t* stream = request->handle;
  std::free(write->buffer.base);
  delete write;
  if (stream->write_queue_size == 0 && !uv_is_closing(reinterpret_cast<uv_handle_t*>(stream)) &&
      !uv_is_readable(stream)) {
    uv_read_start(stream, on_alloc, on_read);
  }
}

void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buffer) {
  if (nread < 0) {  // UV_EOF or an error
    uv_close(reinterpret_cast<uv_handle_t*>(stream), on_closed);
    return;
  }
  if (nread == 0) return;  // EAGAIN
  uv_buf_t reply = uv_buf_init(buffer->base, static_cast<unsigned>(nread));
  int written = uv_try_write(stream, &reply, 1);
  if (written == nread) return;
  if (written < 0) {
    if (written != UV_EAGAIN) {
      uv_close(reinterpret_cast<uv_handle_t*>(stream), on_closed);
      return;
    }
    written = 0;
  }
  auto* write = new WriteRequest;
  const auto rest = static_cast<std::size_t>(nread - written);
  write->buffer = uv_buf_init(static_cast<char*>(std::malloc(rest)), static_cast<unsigned>(rest));
  std::memcpy(write->buffer.base, buffer->base + written, rest);
  uv_write(&write->request, stream, &write->buffer, 1, on_written);
  if (stream->write_queue_size > kPauseAt) uv_read_stop(stream);
}

void on_connection(uv_stream_t* server, int status) {
  if (status < 0) return;
  auto* client = new uv_tcp_t;
  uv_tcp_init(server->loop, client);
  if (uv_accept(server, reinterpret_cast<uv_stream_t*>(client)) != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(client), on_closed);
    return;
  }
  uv_tcp_nodelay(client, 1);
  uv_read_start(reinterpret_cast<uv_stream_t*>(client), on_alloc, on_read);
}

void on_signal(uv_signal_t* handle, int) {
  uv_stop(handle->loop);
}

}  // namespace

int main(int argc, char** argv) {
  const bench::ServerArgs args = bench::parse_server_args(argc, argv);
  bench::raise_fd_limit();
  uv_loop_t* loop = uv_default_loop();
  uv_tcp_t server;
  uv_tcp_init(loop, &server);
  int rc = uv_tcp_bind(&server, reinterpret_cast<const sockaddr*>(&args.address), 0);
  if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(&server), SOMAXCONN, on_connection);
  if (rc != 0) {
    std::fprintf(stderr, "peer_libuv: cannot listen: %s\n", uv_strerror(rc));
    return 1;
  }
  uv_os_fd_t fd;
  uv_fileno(reinterpret_cast<uv_handle_t*>(&server), &fd);
  bench::print_listening(fd);

  uv_signal_t sigint, sigterm;
  uv_signal_init(loop, &sigint);
  uv_signal_init(loop, &sigterm);
  uv_signal_start(&sigint, on_signal, SIGINT);
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  uv_run(loop, UV_RUN_DEFAULT);
  return 0;
}
