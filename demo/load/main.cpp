// reactor-load: a load generator for any TCP or Unix-socket echo server, built on the reactor.
//
//   reactor-load echo     --target ADDR [--connections N] [--size BYTES] [--depth D]
//                         [--duration SEC] [--threads T] [--json]
//   reactor-load accept   --target ADDR [--connections C] [--duration SEC] [--threads T] [--json]
//   reactor-load churn    --target ADDR [--connections N] [--duration SEC] [--seed S] [...]
//   reactor-load slowread --target ADDR [--connections N] [--duration SEC] [...]
//   reactor-load idle     --target ADDR [--connections N] [--duration SEC] [--size BYTES]
//                         [--ping SEC] [--retry SEC] [...]
//   reactor-load rate     --target ADDR --rate R [--connections N] [--size BYTES]
//                         [--duration SEC] [--spin] [--bulk K --bulk-size B] [--json]
//   reactor-load udp      --target [udp:]ADDR (--rate R | --depth D) [--size BYTES]
//                         [--duration SEC] [--sockets N] [--threads T] [--timeout SEC] [--json]
//
// echo: N connections each keep D messages of BYTES in flight and verify every echoed byte
// against what was sent (a position-dependent pattern, offset per connection, so lost,
// duplicated, reordered or crossed bytes all show). accept: C clients each loop
// connect -> send 1 byte -> receive it -> close with RST.
//
// rate (open loop, for latency): message k is due at start + k/R, sent on connection k mod N
// (pipelined when the previous one is still in flight), and its latency runs from its due time,
// not its send time (wrk2's correction for coordinated omission). Reports offered and achieved
// rates, p50..p99.99 and max, and late_sends (sent > 10 us after due: the client's own
// lateness). --spin: never sleep. --bulk K: K closed-loop echo connections of --bulk-size bytes
// beside the probes, on a loop of their own, reported as bulk_msgs_per_s. See rate.cpp.
//
// udp: verifying datagram echo over N connected DatagramSockets (spread over T loops), closed
// loop (--depth D in flight per socket) or open loop (--rate R, as rate; latency from the due
// time). Each datagram carries its sequence number, so loss (no echo within --timeout),
// duplication and reordering are counted apart from corrupt datagrams (wrong bytes). Loss,
// duplication and reordering alone do not fail the run; corrupt datagrams and socket errors
// (ICMP port unreachable: refused, which ends the run at once) do. See udp.cpp.
//
// The fault modes (the soak test's clients, bench/soak.sh):
// - churn: N clients each loop connect -> echo 0..8 messages of random size (1 B..64 KiB, one at
//   a time, every byte verified) -> close gracefully or reset (SO_LINGER 0), at random, now and
//   then resetting with a message still in flight. Deterministic for a given --seed.
// - slowread: N clients that send without pause and never read; each stops when its own socket
//   takes no more and goes on when it drains. Reports the bytes the kernel took.
// - idle: open N connections (at most kMaxConnecting connecting at once per thread), hold them
//   idle for --duration from when the last one settled, then each echoes one message of --size
//   bytes, verified. --ping SEC: during the hold, each echoes a message every SEC too. --retry
//   SEC: a connection the server closes during the hold reconnects after SEC (it is still
//   counted as an error).
//
// Shape: T worker loops (reactor::LoopThread), clients spread round-robin over them, and a
// control loop on the main thread that owns the deadline, the progress line and the decision to
// end early (a refused connect, or every echo connection lost: the server went away). At the
// end each worker stops its clients on its own thread, the threads are joined, and the per-loop
// results (counters, error counts, latency histograms) are merged and reported.
//
// Exit: 0 when the run saw no error, 1 when it saw any (each kind counted and named on
// stderr), 2 for a usage error.
//
// Files: main.cpp (this: the command line), core.hpp/core.cpp (settings, Pattern, error kinds,
// Client, Worker, LoadRun's control loop), report.cpp (text and JSON), and one file per mode:
// echo.cpp, accept.cpp, churn.cpp, slowread.cpp, idle.cpp, rate.cpp, udp.cpp.
#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <reactor/address.hpp>
#include <reactor/event_loop.hpp>
#include <reactor/socket.hpp>

#include "cli.hpp"
#include "core.hpp"

namespace {

using load::kChunk;
using load::LoadRun;
using load::Mode;
using load::Settings;

constexpr std::int64_t kMaxMessageSize = 16 << 20;
constexpr std::int64_t kMaxDatagramSize = 65507;  // the most UDP over IPv4 carries
constexpr std::int64_t kMinDatagramSize = 16;     // the header: sequence number, check word

}  // namespace

int main(int argc, char** argv) {
  // Before any thread: Ctrl-C ends the run early and still reports.
  if (auto ec = reactor::block_signals({SIGINT})) {
    std::fprintf(stderr, "cannot block SIGINT: %s\n", ec.message().c_str());
    return demo::kExitRuntime;
  }
  std::signal(SIGPIPE, SIG_IGN);
  (void)reactor::raise_fd_limit();  // best effort: many connections need many fds

  Settings settings;
  CLI::App app{"Load generator for TCP and Unix-socket echo servers (any server, not only ours).",
               "reactor-load"};
  app.allow_extras();  // before the subcommands: they inherit it
  app.footer("Exit status: 0 when the run saw no error, 1 when it saw any, 2 for usage errors.");
  auto add_common = [&settings](CLI::App* mode, const char* connections_help, bool threads = true) {
    mode->add_option("--target", settings.target_text,
                     "Server address: 127.0.0.1:PORT, [::1]:PORT, unix:/path")
        ->type_name("ADDR")
        ->required();
    demo::add_number(*mode, "--connections", settings.connections, 1, 1'000'000, connections_help);
    demo::add_number(*mode, "--duration", settings.duration_s, 0.01, 1e6,
                     "Run for SEC seconds, then stop, whatever the server does", "SEC");
    if (threads) {
      demo::add_number(*mode, "--threads", settings.threads, 1, 1024,
                       "Client loops, one per thread; connections are spread over them", "T");
    }
    mode->add_flag("--json", settings.json, "Print the result as one JSON object on stdout");
  };
  CLI::App* echo = app.add_subcommand(
      "echo", "Echo load: keep --depth messages in flight per connection, verify every byte");
  add_common(echo, "Concurrent connections");
  demo::add_number<std::int64_t>(*echo, "--size", settings.size, 1, kMaxMessageSize, "Message size",
                                 "BYTES");
  demo::add_number(*echo, "--depth", settings.depth, 1, 4096,
                   "Messages in flight per connection (1: ping-pong)", "D");
  CLI::App* accept = app.add_subcommand(
      "accept",
      "Accept load: connect, send 1 byte, receive it, close with RST (no TIME_WAIT); again");
  add_common(accept, "Concurrent clients, each looping connect-echo-close");
  accept->footer(
      "Each connection is closed with RST (SO_LINGER 0), not FIN, so the client keeps no "
      "TIME_WAIT socket and loopback ports are not exhausted.\n"
      "Exit status: 0 when the run saw no error, 1 when it saw any, 2 for usage errors.");

  CLI::App* churn = app.add_subcommand(
      "churn",
      "Connection churn: connect, echo 0..8 messages of 1 B..64 KiB (every byte verified), close "
      "or reset at random; again");
  add_common(churn, "Concurrent clients, each looping connect-echo-close");
  demo::add_number<std::uint64_t>(
      *churn, "--seed", settings.seed, 0, std::numeric_limits<std::uint64_t>::max(),
      "Seed of the random choices (sizes, counts, close or reset)", "S");
  churn->footer(
      "Exit status: 0 when the run saw no error (wrong bytes, a close or reset the client did "
      "not ask for, a failed connect), 1 when it saw any, 2 for usage errors.");
  CLI::App* slowread = app.add_subcommand(
      "slowread",
      "Slow readers: send without pause and never read; each client stops when its socket takes "
      "no more");
  add_common(slowread, "Concurrent clients");
  CLI::App* idle = app.add_subcommand(
      "idle", "Idle connections: open them all, hold them for --duration, then each echoes once");
  add_common(idle, "Connections to open and hold");
  demo::add_number<std::int64_t>(*idle, "--size", settings.size, 1,
                                 static_cast<std::int64_t>(kChunk),
                                 "Size of the final echo (and of each ping)", "BYTES");
  demo::add_number(*idle, "--ping", settings.ping_s, 0.0, 1e6,
                   "During the hold, each connection echoes a message every SEC (0: never)", "SEC");
  demo::add_number(*idle, "--retry", settings.retry_s, 0.0, 1e6,
                   "During the hold, reconnect SEC after the server closed a connection (0: "
                   "never; the close still counts as an error)",
                   "SEC");
  idle->footer(
      "--duration counts from when every connect settled. Exit status: 0 when every connection "
      "echoed and no error was seen, 1 otherwise, 2 for usage errors.");

  CLI::App* rate = app.add_subcommand(
      "rate",
      "Open-loop latency: messages due at a fixed rate over the connections, latency from each "
      "one's due time, every byte verified");
  add_common(rate, "Probe connections; message k goes to connection k mod N", false);
  demo::add_number(*rate, "--rate", settings.rate, 1e-3, 1e9,
                   "Messages per second over all probe connections (the offered load)", "R")
      ->required()
      ->default_str("");
  demo::add_number<std::int64_t>(*rate, "--size", settings.size, 1,
                                 static_cast<std::int64_t>(kChunk), "Probe message size", "BYTES");
  rate->add_flag("--spin", settings.spin,
                 "Never sleep: busy-poll until each message is due (exact schedule; takes a core)");
  demo::add_number(*rate, "--bulk", settings.bulk, 0, 1'000'000,
                   "Closed-loop echo connections beside the probes, on a loop of their own (their "
                   "rate is reported apart, without latency)",
                   "K");
  auto* bulk_size = demo::add_number<std::int64_t>(
      *rate, "--bulk-size", settings.bulk_size, 1, kMaxMessageSize,
      "Message size of the --bulk connections (one in flight each)", "B");
  rate->footer(
      "Message k is due at start + k/R (start: when every probe connected) and goes to "
      "connection k mod N, pipelined behind any still in flight; its latency runs from when it "
      "was due, not from when it was sent, so a stall shows in every message that waited. "
      "late_sends counts the messages the client itself sent more than 10 us after due.\n"
      "Exit status: 0 when the run saw no error, 1 when it saw any, 2 for usage errors.");

  CLI::App* udp = app.add_subcommand(
      "udp",
      "Datagram echo: connected UDP sockets, --depth in flight each or --rate open loop; loss, "
      "duplication, reordering and corrupt datagrams counted apart");
  udp->add_option("--target", settings.target_text,
                  "UDP echo server: [udp:]127.0.0.1:PORT, [udp:][::1]:PORT")
      ->type_name("ADDR")
      ->required();
  auto* udp_depth = demo::add_number(*udp, "--depth", settings.depth, 1, 4096,
                                     "Closed loop: datagrams in flight per socket", "D");
  auto* udp_rate = demo::add_number(
      *udp, "--rate", settings.rate, 1e-3, 1e9,
      "Open loop: datagrams per second over all sockets; latency from each one's due time", "R");
  udp_rate->default_str("");
  udp_depth->default_str("");
  demo::add_number<std::int64_t>(*udp, "--size", settings.size, kMinDatagramSize, kMaxDatagramSize,
                                 "Datagram size (16 of them are the header)", "BYTES");
  demo::add_number(*udp, "--duration", settings.duration_s, 0.01, 1e6,
                   "Run for SEC seconds, then stop, whatever the server does", "SEC");
  int sockets = 1;
  demo::add_number(*udp, "--sockets", sockets, 1, 10'000,
                   "Connected sockets; with --rate, datagram k goes to socket k mod N", "N");
  demo::add_number(*udp, "--threads", settings.threads, 1, 1024,
                   "Client loops, one per thread; sockets are spread over them", "T");
  demo::add_number(*udp, "--timeout", settings.timeout_s, 0.001, 3600.0,
                   "A datagram not echoed within SEC (from its send, or due, time) is lost; with "
                   "--depth its place is refilled",
                   "SEC");
  udp->add_flag("--json", settings.json, "Print the result as one JSON object on stdout");
  udp->footer(
      "Each datagram carries its socket's sequence number and a check word; the rest is a "
      "pattern derived from both. Counted apart: lost (no echo within --timeout), duplicated, "
      "reordered (after a higher sequence number), late (after it was counted lost) and corrupt "
      "(wrong length, header or byte: not lost).\n"
      "Exit status: 0 when every echo was intact and no socket error was seen (loss, duplication "
      "and reordering alone are reported but do not fail the run: UDP may do them), 1 for a "
      "corrupt datagram, a socket error (ICMP port unreachable: refused, which ends the run at "
      "once) or no echo at all, 2 for usage errors.");

  // In the order of enum Mode.
  const std::vector<std::pair<const char*, CLI::App*>> modes = {
      {"echo", echo}, {"accept", accept}, {"churn", churn}, {"slowread", slowread},
      {"idle", idle}, {"rate", rate},     {"udp", udp}};
  const char* mode_list = "echo, accept, churn, slowread, idle, rate or udp";
  // A first word that is not an option must name a mode.
  if (argc > 1 && argv[1][0] != '-' &&
      std::none_of(modes.begin(), modes.end(),
                   [word = argv[1]](const auto& m) { return std::strcmp(word, m.first) == 0; })) {
    return demo::usage_error(app, std::string("unknown mode: ") + argv[1] + " (" + mode_list + ")");
  }
  if (auto rc = demo::parse_command_line(app, argc, argv)) return *rc;
  const auto parsed =
      std::find_if(modes.begin(), modes.end(), [](const auto& m) { return m.second->parsed(); });
  if (parsed == modes.end())
    return demo::usage_error(app, std::string("missing mode: ") + mode_list);
  settings.mode = static_cast<Mode>(parsed - modes.begin());
  if (settings.mode == Mode::udp) {
    if ((udp_rate->count() > 0) == (udp_depth->count() > 0))
      return demo::usage_error(app, "udp needs one of --rate R and --depth D");
    if (settings.target_text.rfind("udp:", 0) == 0) settings.target_text.erase(0, 4);
    settings.connections = sockets;
    settings.threads = std::min(settings.threads, sockets);  // no loop without a socket
  }
  auto target = reactor::Address::parse(settings.target_text);
  if (!target) {
    return demo::usage_error(
        app, "malformed address: " + settings.target_text + " (" + target.error().message() + ")");
  }
  settings.target = *target;
  if (settings.mode == Mode::udp && settings.target.is_unix()) {
    return demo::usage_error(app,
                             "udp needs an IP address, not a Unix socket: " + settings.target_text);
  }
  if (settings.mode == Mode::accept) settings.size = 1;
  if (settings.mode == Mode::rate) {
    if (bulk_size->count() > 0 && settings.bulk == 0)
      return demo::usage_error(app, "--bulk-size needs --bulk K");
    settings.threads = settings.bulk > 0 ? 2 : 1;  // the probes' loop, and the bulk's
  }

  LoadRun run(settings);
  return run.run();
}
