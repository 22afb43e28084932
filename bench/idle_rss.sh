#!/usr/bin/env bash
# Memory per idle connection: each echo server's resident set (VmRSS) before and after 10,000
# connections from a separate client process (bench/fixed_client --hold), divided by 10,000.
# Two cases, each on a fresh server process:
#   idle:       connected, never a byte (what an accepted connection costs by itself)
#   after echo: one 64 B message echoed on each connection, then idle (input and output
#               buffers as a connection that has spoken once keeps them)
#
#   bench/idle_rss.sh [--build DIR] [--connections N] [--servers "floor reactor ..."]
#
# The fd limit must allow N fds per process (the servers and the client raise their soft
# limit to the hard one).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/servers.sh

build="build-peers"
connections=10000
servers="floor reactor libuv libevent asio"
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --servers) servers=$2; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--connections N] [--servers LIST]" >&2; exit 2 ;;
  esac
done
client=$build/bench/fixed_client
[ -x "$client" ] || { echo "missing $client: build $build first" >&2; exit 1; }
# shellcheck disable=SC2086 # the list is split into names on purpose
read -r -a names <<<"$(available_servers "$build" $servers)"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
open_fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l; }

# measure NAME MESSAGES: prints the bytes of RSS per connection.
measure() {
  local binary before fds after client_pid
  binary=$(server_binary "$build" "$1")
  start_server "$binary" --listen 127.0.0.1:0
  before=$(rss_kib "$SERVER_PID")
  fds=$(open_fds "$SERVER_PID")
  local hold_out
  hold_out=$(mktemp)
  "$client" --target "$SERVER_ADDR" --connections "$connections" --messages "$2" --hold \
    >"$hold_out" &
  client_pid=$!
  for _ in $(seq 1200); do
    grep -q '^holding' "$hold_out" && break
    sleep 0.1
  done
  # Every connection accepted by the server itself (an fd each), not only by the kernel.
  for _ in $(seq 600); do
    [ "$(open_fds "$SERVER_PID")" -ge $((fds + connections)) ] && break
    sleep 0.1
  done
  sleep 1  # nothing left to happen: let the server finish the accept round it is in
  after=$(rss_kib "$SERVER_PID")
  kill -TERM "$client_pid"
  wait "$client_pid" || true
  wait_established "$SERVER_PORT" 0
  stop_server
  rm -f "$hold_out"
  echo $(((after - before) * 1024 / connections))
}

echo "| server | RSS before (KiB) | bytes per idle connection | bytes per connection after one 64 B echo |"
echo "|---|---|---|---|"
for name in "${names[@]}"; do
  start_server "$(server_binary "$build" "$name")" --listen 127.0.0.1:0
  base=$(rss_kib "$SERVER_PID")
  stop_server
  idle=$(measure "$name" 0)
  spoken=$(measure "$name" "$connections")
  echo "| $name | $base | $idle | $spoken |"
done
