#!/usr/bin/env bash
# Side by side: demo/tcp_proxy and HAProxy (Debian haproxy: `mode tcp`, `nbthread 1`, no
# logging, its config written to a temporary directory) each in front of the same echo_server,
# and the echo_server reached directly (the baseline the proxies add to). The echo_server and
# the proxy under test are pinned to CPU 0, the load generator to CPU 1; the proxies are
# interleaved round by round (the order reversed every other round), medians of N rounds.
# Prints a Markdown table: per scenario and path, the rate reactor-load saw, the proxy's CPU
# time (user + system, /proc/PID/schedstat, as compare.sh) per message, and the p50 and p99
# latency added over the direct connection. Keeps every raw JSON result. A benchmark, not a
# test: run it on a quiet machine.
#
#   bench/proxy.sh [--build DIR] [--rounds N] [--duration SEC] [--rate R] [--out DIR]
#                  [--paths "direct tcp_proxy haproxy"] [--scenarios "c64d16 c64x16k rate"]
#
# DIR: a release build with the demo (default build-peers). Writes OUT/proxy.jsonl (one line
# per run: round, scenario, path, the proxy's CPU ns, reactor-load's JSON) and OUT/proxy.md
# (the table); OUT defaults to DIR/bench-results.
# Scenarios (reactor-load):
#   c64d16   echo, 64 connections, depth 16, 64 B   (CPU-bound)
#   c64x16k  echo, 64 connections, depth 1, 16 KiB
#   rate     rate, 16 connections, R messages/s (default 20000), 64 B: open-loop latency
# A proxy's CPU per message counts the proxy process only (echo_server's share is the same for
# both); on the direct path it is echo_server's own.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/servers.sh

build="build-peers"
rounds=5
duration=2
rate=20000
out=
paths="direct tcp_proxy haproxy"
scenarios="c64d16 c64x16k rate"
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --paths) paths=$2; shift 2 ;;
    --scenarios) scenarios=$2; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--rounds N] [--duration SEC] [--rate R] [--out DIR] [--paths LIST] [--scenarios LIST]" >&2; exit 2 ;;
  esac
done
out=${out:-$build/bench-results}
mkdir -p "$out"
load=$build/demo/reactor-load
echo_bin=$build/demo/echo_server
proxy_bin=$build/demo/tcp_proxy
for tool in "$load" "$echo_bin" "$proxy_bin"; do
  [ -x "$tool" ] || { echo "missing $tool: build $build first" >&2; exit 1; }
done
names=()
for name in $paths; do
  if [ "$name" = haproxy ] && ! command -v haproxy >/dev/null; then
    echo "note: haproxy not installed (apt-get install haproxy): skipped" >&2
    continue
  fi
  names+=("$name")
done
tmp=$(mktemp -d)
jsonl=$out/proxy.jsonl
: >"$jsonl"

# The echo_server all paths share, for the whole run.
start_server taskset -c 0 "$echo_bin" --listen 127.0.0.1:0
ECHO_PID=$SERVER_PID ECHO_ADDR=$SERVER_ADDR ECHO_OUT=$SERVER_OUT
SERVER_PID=
PROXY_PID=
cleanup() {
  for pid in ${PROXY_PID:-} ${ECHO_PID:-}; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp" "${ECHO_OUT:-}" "${ECHO_OUT:-}.err"
}
trap cleanup EXIT

# free_port: a port nobody listens on now (HAProxy takes no port 0 it would report).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_proxy NAME: starts the path NAME's proxy on CPU 0; sets PROXY_PID (empty for direct)
# and TARGET, the address reactor-load connects to.
start_proxy() {
  case "$1" in
    direct)
      PROXY_PID=
      TARGET=$ECHO_ADDR ;;
    tcp_proxy)
      start_server taskset -c 0 "$proxy_bin" --listen 127.0.0.1:0 --upstream "$ECHO_ADDR"
      PROXY_PID=$SERVER_PID TARGET=$SERVER_ADDR ;;
    haproxy)
      local port
      port=$(free_port)
      cat >"$tmp/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend front
  bind 127.0.0.1:$port
  default_backend echo
backend echo
  server echo $ECHO_ADDR
EOF
      taskset -c 0 haproxy -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.out" 2>&1 &
      PROXY_PID=$!
      for _ in $(seq 600); do
        [ -n "$(ss -Htln "( sport = :$port )")" ] && break
        kill -0 "$PROXY_PID" 2>/dev/null || { cat "$tmp/haproxy.out" >&2; exit 1; }
        sleep 0.1
      done
      TARGET=127.0.0.1:$port ;;
  esac
}

stop_proxy() {
  if [ -n "${SERVER_PID:-}" ]; then
    stop_server  # tcp_proxy, started by start_server
  elif [ -n "$PROXY_PID" ]; then
    # SIGTERM: a background job of a script starts with SIGINT ignored, and HAProxy keeps that.
    kill -TERM "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
  fi
  PROXY_PID=
}

# cpu_ns PID: CPU time (user + system, ns) of PID so far.
cpu_ns() { cut -d' ' -f1 "/proc/$1/schedstat"; }

# run_one ROUND SCENARIO PATH: one load run through PATH, one JSON line.
run_one() {
  local round=$1 scenario=$2 name=$3 result measured before
  start_proxy "$name"
  measured=${PROXY_PID:-$ECHO_PID}
  before=$(cpu_ns "$measured")
  local echo=(taskset -c 1 "$load" echo --target "$TARGET" --duration "$duration" --json)
  case "$scenario" in
    c64d16) result=$("${echo[@]}" --connections 64 --depth 16 --size 64) ;;
    c64x16k) result=$("${echo[@]}" --connections 64 --depth 1 --size 16384) ;;
    rate)
      result=$(taskset -c 1 "$load" rate --target "$TARGET" --connections 16 --rate "$rate" \
        --size 64 --duration "$duration" --json) ;;
    *) echo "unknown scenario: $scenario" >&2; exit 2 ;;
  esac
  local used=$(($(cpu_ns "$measured") - before))
  stop_proxy
  printf '{"round": %d, "scenario": "%s", "path": "%s", "cpu_ns": %d, "result": %s}\n' \
    "$round" "$scenario" "$name" "$used" "$result" >>"$jsonl"
}

echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), kernel $(uname -r)" >&2
echo "haproxy: $(haproxy -v 2>/dev/null | head -1 || echo none)" >&2
echo "load before: $(uptime)" >&2
interleaved_rounds "$rounds" "$scenarios" "${names[@]}"
echo "load after: $(uptime)" >&2

python3 - "$jsonl" "$rounds" "$rate" >"$out/proxy.md" <<'PY'
import json, statistics, sys
from collections import defaultdict

runs = [json.loads(line) for line in open(sys.argv[1])]
rate, cpu, p50, p99 = (defaultdict(list) for _ in range(4))
for r in runs:
    res, key = r["result"], (r["scenario"], r["path"])
    rate[key].append(res["msgs_per_s"] if "msgs_per_s" in res else res["achieved_per_s"])
    p50[key].append(res["latency_us"]["p50"])
    p99[key].append(res["latency_us"]["p99"])
    if res.get("messages"):
        cpu[key].append(r["cpu_ns"] / res["messages"])
scenarios, paths = [], []
for r in runs:
    if r["scenario"] not in scenarios:
        scenarios.append(r["scenario"])
    if r["path"] not in paths:
        paths.append(r["path"])
labels = {
    "c64d16": "echo, 64 conns, depth 16, 64 B",
    "c64x16k": "echo, 64 conns, depth 1, 16 KiB",
    "rate": f"rate {int(sys.argv[3]):,}/s, 16 conns, 64 B",
}
med = lambda d, k: statistics.median(d[k]) if d[k] else None

def fmt_rate(v):
    return f"{v/1e6:.2f} M" if v >= 1e6 else f"{v/1e3:.1f} k"

def added(d, sc, p):
    v, base = med(d, (sc, p)), med(d, (sc, "direct"))
    if v is None or base is None or p == "direct":
        return f"{v:.0f}" if v is not None else "-"
    return f"{v - base:+.0f}"

print(f"Medians of {sys.argv[2]} rounds. CPU: the proxy process's (on direct: echo_server's) "
      "user + system time per message. Latency (us): on direct the round trip itself, on a "
      "proxy what it adds to direct's median.\n")
print("| scenario | path | msg/s | CPU ns/msg | p50 added (us) | p99 added (us) |")
print("|---|---|---|---|---|---|")
for sc in scenarios:
    for p in paths:
        r = med(rate, (sc, p))
        if r is None:
            continue
        c = med(cpu, (sc, p))
        print(f"| {labels.get(sc, sc)} | {p} | {fmt_rate(r)} | "
              f"{c:,.0f} | {added(p50, sc, p)} | {added(p99, sc, p)} |")
PY
cat "$out/proxy.md"
echo "raw results: $jsonl" >&2
