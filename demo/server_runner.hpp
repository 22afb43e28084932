// The shared server runner: the command line, loops, threads, signals and counters of every
// demo server, so that each server adds only its protocol.
//
//   SERVER [--listen ADDR|fd:N|systemd|udp:ADDR]... [--threads N] [--reuseport] [--pin]
//   [--busy-poll USEC]
//          [--max-conns N] [--idle-timeout SEC] [--stats SEC] [protocol options] [--help]
//
// What run_server() does, in order:
// - blocks SIGINT and SIGTERM (so call it from main() before starting any thread), ignores
//   SIGPIPE, raises the soft fd limit to the hard limit;
// - parses the command line (exit 2 on a usage error, 0 after --help). Each --listen value is
//   an address to bind, `fd:N` (a listening socket inherited as descriptor N: a hot restart,
//   a supervisor), or `systemd` (socket activation, sd_listen_fds(3) without libsystemd:
//   LISTEN_PID must be this process, LISTEN_FDS sockets from fd 3, LISTEN_FDNAMES optional; the
//   variables are unset after use). Inherited sockets are checked with
//   reactor::ListenSocket::adopt; one that is not a listening stream socket, or `systemd`
//   without the variables (or with another process's LISTEN_PID), prints the reason on stderr
//   and exits 1. --reuseport with an inherited socket is a usage error (exit 2). `udp:ADDR`
//   (servers whose spec says `datagrams`; a usage error for the others) binds a datagram
//   socket (reactor::DatagramSocket) on every loop, SO_REUSEPORT when there are several (a
//   Unix path, udp:unix:PATH, which cannot be shared so: on the home loop only),
//   served by the loop's LoopHandlers::datagram callbacks;
// - makes N loops: the calling thread's is loops[0], the home loop; the others run on
//   reactor::LoopThread, named loop-1 ... loop-(N-1) (top -H, gdb, perf). With --pin, loop i is
//   pinned to the i-th CPU of the process's allowed set (sched_getaffinity; the home loop's
//   thread, the caller, to the first), wrapping around with more loops than CPUs; a failed pin
//   prints the error on stderr and exits 1. It calls spec.make_loop once per loop, on that loop's
//   thread;
// - starts one reactor::TcpServer per --listen address or inherited socket on all loops (one
//   listening socket shared with EPOLLEXCLUSIVE, or one SO_REUSEPORT socket per loop with
//   --reuseport) and prints `listening on ADDR` per address to stdout, flushed, ADDR being the
//   bound address (the real port when 0 was asked; an inherited socket's own address;
//   `listening on udp:ADDR` for a datagram address), in --listen order. A failure
//   prints `address already in use: ADDR` (or the like) as the first line on stderr and exits 1;
// - serves until SIGINT or SIGTERM: then every server stops accepting and closes its
//   connections gracefully (aborting what is still open after 2 s), the final counters are
//   printed (`final: accepted=... refused=... messages=... bytes_in=... bytes_out=...
//   fd_exhaustion=...`, the bytes of datagram sockets included; with --threads N > 1, a second line
//   `messages_per_loop=M0,M1,...`), exit 0.
// - With --stats SEC, prints every SEC seconds:
//   `stats: active=A accepted=N msgs/s=M bytes_in/s=I bytes_out/s=O fd_exhaustion=F busy=B%
//   stalls=S loop_delay_p99_us=D`: B the busiest loop's share of the interval spent working
//   (EventLoop::Stats busy time), S the callbacks since start that ran longer than --stall-us
//   (each also reported on stderr: `stall: io fd=7 ran 12.345 ms`), D the 99th percentile of
//   how late the loops' timers ran, since start. The loops measure only when --stats is given.
//
// The protocol's part is a LoopHandlers object per loop: the callbacks of the connections that
// loop accepted (on every address), plus whatever per-loop state the protocol keeps (derive
// from LoopHandlers). Per-connection state goes in the connection's context, set in on_open and
// released in on_close. The protocol counts its messages (requests, commands, echoed reads) on
// the loop's MessageCounter; the runner sums them for --stats and the final line.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <reactor/connection.hpp>
#include <reactor/datagram_socket.hpp>
#include <reactor/event_loop.hpp>
#include <reactor/function.hpp>

namespace CLI {
class App;
}

namespace demo {

// Messages handled by one loop: bumped by that loop's thread only, read by any thread.
class MessageCounter {
 public:
  void add(std::uint64_t n = 1) noexcept {
    // One writer: a plain load and store, no locked read-modify-write on the hot path.
    count_.store(count_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  std::uint64_t load() const noexcept { return count_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> count_{0};
};

// What the protocol's factory is given for one loop.
struct LoopContext {
  reactor::EventLoop& loop;
  std::size_t index;  // this loop's place in `loops`; equals ConnectionId::shard of its connections
  const std::vector<reactor::EventLoop*>& loops;  // every loop; loops[0] is the home loop
  MessageCounter& messages;
};

// The protocol's part on one loop. Created and destroyed on that loop's thread; every callback
// runs there. Empty callbacks behave as in reactor::ConnectionHandlers (on_peer_shutdown empty:
// the connection closes gracefully at once).
struct LoopHandlers {
  virtual ~LoopHandlers() = default;
  reactor::ConnectionHandlers connection;
  // The callbacks of the loop's datagram sockets (--listen udp:ADDR; ServerSpec::datagrams).
  reactor::DatagramHandlers datagram;
  // Optional: runs for each new connection before any other of its callbacks.
  reactor::Function<void(reactor::Connection&)> on_open;
};

struct ServerSpec {
  std::string name;            // the program's name in usage and error lines
  std::string description;     // one line for --help
  std::string default_listen;  // used when no --listen is given
  bool datagrams = false;      // the protocol serves datagrams: --listen udp:ADDR is allowed
  // Optional: adds the protocol's own options (parsed with the shared ones; see demo/cli.hpp).
  std::function<void(CLI::App&)> add_options;
  // Called once per loop, on its thread, after the command line was parsed and before any
  // address listens.
  std::function<std::unique_ptr<LoopHandlers>(LoopContext&)> make_loop;
};

// Runs the server described by `spec` with main()'s arguments; returns main()'s exit code.
int run_server(int argc, char** argv, const ServerSpec& spec);

}  // namespace demo
