# shellcheck shell=bash
# Sourced by bench/compare.sh, cost.sh, idle_rss.sh and latency.sh: the echo servers under
# comparison and how to start and stop one. Every server takes `--listen 127.0.0.1:0`, prints
# `listening on ADDR` once bound, and exits 0 on SIGINT.

# server_binary BUILD NAME: the executable of server NAME in build directory BUILD.
server_binary() {
  case "$2" in
    floor) echo "$1/bench/floor_server" ;;
    floor_udp | naive_udp) echo "$1/bench/floor_udp" ;;  # naive_udp: with --naive
    udp_echo) echo "$1/demo/udp_echo" ;;
    reactor) echo "$1/demo/echo_server" ;;
    libuv) echo "$1/bench/peer_libuv" ;;
    libevent) echo "$1/bench/peer_libevent" ;;
    asio) echo "$1/bench/peer_asio" ;;
    *) return 1 ;;
  esac
}

# built_servers RESOLVE NAME...: the NAMEs whose executable was built, space-separated, with a
# note on stderr for the others. RESOLVE is a function that prints a name's executable and
# fails for a name it does not know; then this fails too (status 2), naming it.
built_servers() {
  local resolve=$1 name binary found=()
  shift
  for name in "$@"; do
    binary=$("$resolve" "$name") || { echo "unknown server: $name" >&2; return 2; }
    if [ -x "$binary" ]; then
      found+=("$name")
    else
      echo "note: $name not built (skipped)" >&2
    fi
  done
  echo "${found[@]}"
}

# available_servers BUILD NAME...: built_servers for the NAMEs of server_binary in BUILD (peers
# need -Dpeers=enabled).
available_servers() {
  local build=$1
  shift
  # shellcheck disable=SC2317 # called by built_servers, through its RESOLVE argument
  in_build() { server_binary "$build" "$1"; }
  built_servers in_build "$@"
}

# interleaved_rounds ROUNDS "SCENARIO..." NAME...: calls the caller's run_one ROUND SCENARIO
# NAME for every scenario and server, ROUNDS times, the servers' order reversed every other
# round (so neither drift nor warm-up favours one); a line on stderr after each round.
interleaved_rounds() {
  local rounds=$1 scenarios=$2 round scenario name i order
  shift 2
  for round in $(seq "$rounds"); do
    order=("$@")
    if [ $((round % 2)) -eq 0 ]; then
      order=()
      for ((i = $#; i >= 1; i--)); do order+=("${!i}"); done
    fi
    for scenario in $scenarios; do
      for name in "${order[@]}"; do
        run_one "$round" "$scenario" "$name"
      done
    done
    echo "round $round/$rounds done ($(uptime | sed 's/.*load/load/'))" >&2
  done
}

# start_server COMMAND...: runs COMMAND (which must end in a server's command line) in the
# background and waits up to 60 s for its `listening on` line. Sets SERVER_PID (the pid of
# COMMAND itself: a wrapper such as taskset or valgrind execs in place; strace does not, see
# traced_pid), SERVER_ADDR and SERVER_PORT.
start_server() {
  SERVER_OUT=$(mktemp)
  "$@" >"$SERVER_OUT" 2>"$SERVER_OUT.err" &
  SERVER_PID=$!
  SERVER_ADDR=
  for _ in $(seq 600); do
    SERVER_ADDR=$(sed -n 's/^listening on //p' "$SERVER_OUT" | head -1)
    [ -n "$SERVER_ADDR" ] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "server did not start: $*" >&2
      cat "$SERVER_OUT.err" >&2
      return 1
    fi
    sleep 0.1
  done
  if [ -z "$SERVER_ADDR" ]; then
    echo "server did not print 'listening on' within 60 s: $*" >&2
    return 1
  fi
  SERVER_PORT=${SERVER_ADDR##*:}  # used by the scripts that source this file
  # A UDP server prints `listening on udp:ADDR`: SERVER_ADDR keeps the prefix, which the UDP
  # clients accept.
}

# server_cpu_ns: CPU time (user + system, ns) the server process (SERVER_PID) has used so far,
# from the scheduler's own accounting (precise, unlike the 10 ms ticks of /proc/PID/stat).
server_cpu_ns() {
  cut -d' ' -f1 "/proc/$SERVER_PID/schedstat"
}

# established PORT: server-side established TCP connections on local port PORT.
established() {
  ss -Htn state established "( sport = :$1 )" | wc -l
}

# wait_established PORT COUNT: waits (up to 60 s) until exactly COUNT connections are left.
wait_established() {
  for _ in $(seq 600); do
    [ "$(established "$1")" -eq "$2" ] && return 0
    sleep 0.1
  done
  echo "warning: $(established "$1") connections on port $1 after 60 s, expected $2" >&2
}

# stop_server [PID]: SIGINT to PID (default SERVER_PID), then waits for SERVER_PID to exit.
stop_server() {
  kill -INT "${1:-$SERVER_PID}" 2>/dev/null
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
  rm -f "$SERVER_OUT" "$SERVER_OUT.err"
}

# traced_pid: the pid of the server that `strace -f` (SERVER_PID) started.
traced_pid() {
  local child
  for _ in $(seq 100); do
    child=$(pgrep -P "$SERVER_PID" | head -1)
    [ -n "$child" ] && { echo "$child"; return 0; }
    sleep 0.1
  done
  return 1
}

# A script that stops half-way (an error under set -e, ^C) must not leave a server running:
# a spinning --busy-poll server would take a core from everything after it.
stop_leftover_server() {
  if [ -n "${SERVER_PID:-}" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
  fi
}
trap stop_leftover_server EXIT
