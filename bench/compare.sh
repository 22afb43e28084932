#!/usr/bin/env bash
# Side by side: each scenario against each echo server, every server a separate process pinned
# to CPU 0 and the load generator pinned to CPU 1, servers interleaved round by round (the
# order reversed every other round, so neither drift nor warm-up favours one), medians of N
# rounds. Prints two Markdown tables (scenario x server, plus reactor/floor and reactor/best
# peer): the rates the load generator saw, and the server's CPU time per message (which still
# separates servers when the load generator, not the server, is the bottleneck). Keeps every
# raw JSON result.
# The servers: floor (bench/floor_server), reactor (demo/echo_server), reactor again as an A/A
# column (reactor_aa: the same binary, a second, separate start, to show how far two runs of one
# server differ), libuv, libevent, asio (the peers, bench/peer_*), and with --baseline,
# reactor_base (BASE/demo/echo_server: another build, e.g. of the previous commit). Both tables
# add the A/A spread |reactor - reactor_aa| / reactor when reactor_aa ran (a difference of the
# reactor smaller than this is noise) and, when reactor_base ran, reactor against it.
# Neither reactor_aa nor reactor_base counts as a peer.
#
#   bench/compare.sh [--build DIR] [--rounds N] [--duration SEC] [--out DIR] [--baseline BASE]
#                    [--servers "floor reactor reactor_aa libuv libevent asio"] [--scenarios "..."]
#
# DIR: a release build with the demo and, for the peers, -Dpeers=enabled (default build-peers).
# BASE: a second release build (same options) with demo/echo_server; --baseline adds
# reactor_base to the servers (right after reactor and reactor_aa) unless --servers names it.
# Relative DIR and BASE are from the repository root. A server that is not built is skipped
# with a note (reactor_base is not: a missing BASE/demo/echo_server is an error).
# Writes OUT/compare.jsonl (one line per run: round, scenario, server, the server's CPU ns,
# reactor-load's JSON) and
# OUT/compare.md (the table); OUT defaults to DIR/bench-results.
# Scenarios (reactor-load unless noted; 64 B messages unless noted):
#   pingpong   1 connection, depth 1           (bound by cross-core wake-up latency)
#   c64d16     64 connections, depth 16        (CPU-bound)
#   c1000d1    1,000 connections, depth 1      (CPU-bound)
#   c64x16k    64 connections, 16 KiB, depth 1
#   accept     reactor-load accept, 8 clients looping connect-echo-RST
#   busypoll   1 connection ping-pong, server and client spinning (bench/fixed_client
#              --busy-poll; echo_server --busy-poll 10000000 (reactor, reactor_aa,
#              reactor_base) vs floor_server --busy-poll; the peers have no busy-poll and are
#              skipped)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/servers.sh

build="build-peers"
rounds=5
duration=2
out=
baseline=
servers="floor reactor reactor_aa libuv libevent asio"
scenarios="pingpong c64d16 c1000d1 c64x16k accept busypoll"
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --baseline) baseline=$2; shift 2 ;;
    --servers) servers=$2; shift 2 ;;
    --scenarios) scenarios=$2; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--rounds N] [--duration SEC] [--out DIR] [--baseline BASE] [--servers LIST] [--scenarios LIST]" >&2; exit 2 ;;
  esac
done
out=${out:-$build/bench-results}
mkdir -p "$out"
load=$build/demo/reactor-load
client=$build/bench/fixed_client
for tool in "$load" "$client"; do
  [ -x "$tool" ] || { echo "missing $tool: build $build first" >&2; exit 1; }
done

# compare_server_binary NAME: servers.sh's server_binary, plus the A/A column and the baseline.
compare_server_binary() {
  case "$1" in
    reactor_aa) server_binary "$build" reactor ;;
    reactor_base) echo "$baseline/demo/echo_server" ;;
    *) server_binary "$build" "$1" ;;
  esac
}

read -r -a requested <<<"$servers"
if [ -n "$baseline" ]; then
  [ -x "$baseline/demo/echo_server" ] || {
    echo "--baseline $baseline: no $baseline/demo/echo_server (build it there first)" >&2
    exit 1
  }
  if [[ " ${requested[*]} " != *" reactor_base "* ]]; then
    # Right after reactor and reactor_aa, so the runs compared with each other are neighbours.
    at=0
    for i in "${!requested[@]}"; do
      case "${requested[i]}" in reactor | reactor_aa) at=$((i + 1)) ;; esac
    done
    [ "$at" -gt 0 ] || at=${#requested[@]}
    requested=("${requested[@]:0:at}" reactor_base "${requested[@]:at}")
  fi
elif [[ " ${requested[*]} " == *" reactor_base "* ]]; then
  echo "reactor_base needs --baseline BASE (a build with demo/echo_server)" >&2
  exit 2
fi
list=$(built_servers compare_server_binary "${requested[@]}") || exit 2
read -r -a names <<<"$list"
[ ${#names[@]} -gt 0 ] || { echo "no server built in $build" >&2; exit 1; }
jsonl=$out/compare.jsonl
: >"$jsonl"
busy_messages=$(python3 -c "print(int(float('$duration') * 50000))")

# run_one ROUND SCENARIO SERVER: one server process, one load run, one JSON line.
run_one() {
  local round=$1 scenario=$2 name=$3 binary extra=() result
  binary=$(compare_server_binary "$name")
  if [ "$scenario" = busypoll ]; then
    case "$name" in
      floor) extra=(--busy-poll) ;;
      reactor | reactor_aa | reactor_base) extra=(--busy-poll 10000000) ;;
      *) return 0 ;;
    esac
  fi
  start_server taskset -c 0 "$binary" --listen 127.0.0.1:0 "${extra[@]}"
  local cpu_before
  cpu_before=$(server_cpu_ns)
  local echo=(taskset -c 1 "$load" echo --target "$SERVER_ADDR" --duration "$duration" --json)
  case "$scenario" in
    pingpong) result=$("${echo[@]}" --connections 1 --depth 1 --size 64) ;;
    c64d16) result=$("${echo[@]}" --connections 64 --depth 16 --size 64) ;;
    c1000d1) result=$("${echo[@]}" --connections 1000 --depth 1 --size 64) ;;
    c64x16k) result=$("${echo[@]}" --connections 64 --depth 1 --size 16384) ;;
    accept)
      result=$(taskset -c 1 "$load" accept --target "$SERVER_ADDR" --connections 8 \
        --duration "$duration" --json) ;;
    busypoll)
      result=$(taskset -c 1 "$client" --target "$SERVER_ADDR" --connections 1 --size 64 \
        --messages "$busy_messages" --busy-poll --json) ;;
  esac
  local cpu_ns=$(($(server_cpu_ns) - cpu_before))
  stop_server
  printf '{"round": %d, "scenario": "%s", "server": "%s", "server_cpu_ns": %d, "result": %s}\n' \
    "$round" "$scenario" "$name" "$cpu_ns" "$result" >>"$jsonl"
}

echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), kernel $(uname -r)" >&2
[ -z "$baseline" ] || echo "reactor_base: $baseline/demo/echo_server" >&2
echo "load before: $(uptime)" >&2
interleaved_rounds "$rounds" "$scenarios" "${names[@]}"
echo "load after: $(uptime)" >&2

python3 - "$jsonl" "$rounds" "$baseline" >"$out/compare.md" <<'PY'
import json, statistics, sys
from collections import defaultdict

runs = [json.loads(line) for line in open(sys.argv[1])]
rate = defaultdict(list)  # (scenario, server) -> per-round rates
p99 = defaultdict(list)
cpu = defaultdict(list)  # (scenario, server) -> per-round server CPU ns per message
for r in runs:
    res = r["result"]
    key = (r["scenario"], r["server"])
    rate[key].append(res["conns_per_s"] if r["scenario"] == "accept" else res["msgs_per_s"])
    p99[key].append(res["latency_us"]["p99"])
    # A spinning server uses its whole core whatever it does: no cost per message to read.
    if r["scenario"] != "busypoll" and res.get("messages") and r.get("server_cpu_ns"):
        cpu[key].append(r["server_cpu_ns"] / res["messages"])

order = ["floor", "reactor", "reactor_aa", "reactor_base", "libuv", "libevent", "asio"]
servers = [s for s in order if any(k[1] == s for k in rate)]
scenarios = []
for r in runs:
    if r["scenario"] not in scenarios:
        scenarios.append(r["scenario"])
labels = {
    "pingpong": "ping-pong, 1 conn, 64 B (msg/s)",
    "c64d16": "64 conns, depth 16, 64 B (msg/s)",
    "c1000d1": "1000 conns, depth 1, 64 B (msg/s)",
    "c64x16k": "64 conns, depth 1, 16 KiB (msg/s)",
    "accept": "accept, 8 clients (conn/s)",
    "busypoll": "busy-poll ping-pong, 64 B (msg/s)",
}

def fmt(v):
    return f"{v/1e6:.2f} M" if v >= 1e6 else f"{v/1e3:.1f} k"

# reactor_aa (the reactor again) and reactor_base (another build of it) are controls, not peers.
peers = [s for s in servers if s not in ("floor", "reactor", "reactor_aa", "reactor_base")]
has_aa, has_base = "reactor_aa" in servers, "reactor_base" in servers
extra_heads = ["A/A spread"] * has_aa

def ratio(med, a, b):
    return f"{med[a] / med[b]:.2f}" if a in med and b in med and med[b] else "-"

def aa_spread(med):
    a, b = med.get("reactor"), med.get("reactor_aa")
    return f"{abs(a - b) / a:.1%}" if a and b is not None else "-"

def row(sc, cells, ratios):
    print(f"| {labels.get(sc, sc)} | " + " | ".join(cells + ratios) + " |")

print(f"Medians of {sys.argv[2]} rounds; p99 latency (us) in parentheses."
      + (" reactor_aa is reactor started a second time (A/A); A/A spread: |reactor - reactor_aa|"
         " / reactor, how far two runs of one binary differ (a difference of the reactor smaller"
         " than this is noise)." if has_aa else "")
      + (f" reactor_base is {sys.argv[3]}/demo/echo_server; reactor/base: reactor's rate /"
         " reactor_base's." if has_base else "") + "\n")
heads = ["reactor/floor", "reactor/best peer"] + extra_heads + ["reactor/base"] * has_base
print("| scenario | " + " | ".join(servers + heads) + " |")
print("|---" * (len(servers) + len(heads) + 1) + "|")
for sc in scenarios:
    med = {s: statistics.median(rate[(sc, s)]) for s in servers if rate[(sc, s)]}
    lat = {s: statistics.median(p99[(sc, s)]) for s in servers if p99[(sc, s)]}
    cells = [f"{fmt(med[s])} ({lat[s]:.0f})" if s in med else "-" for s in servers]
    best = max((med[s] for s in peers if s in med), default=None)
    vs_peer = f"{med['reactor'] / best:.2f}" if best and "reactor" in med else "-"
    ratios = [ratio(med, "reactor", "floor"), vs_peer] + [aa_spread(med)] * has_aa
    row(sc, cells, ratios + [ratio(med, "reactor", "reactor_base")] * has_base)
print("\nServer CPU time (user + system) per message, ns, medians: what each message costs the "
      "server process, read from /proc/PID/schedstat around the load run (connection set-up "
      "included). Lower is better; where the load generator is the bottleneck the rates above tie, "
      "and this is where servers differ. The ratios are floor / reactor and best peer / reactor"
      + (" (and base / reactor)" if has_base else "") + ": the throughput ratio the server alone "
      "would reach." + (" A/A spread: |reactor - reactor_aa| / reactor of these CPU times."
                        if has_aa else "") + "\n")
heads = ["floor/reactor", "best peer/reactor"] + extra_heads + ["base/reactor"] * has_base
print("| scenario | " + " | ".join(servers + heads) + " |")
print("|---" * (len(servers) + len(heads) + 1) + "|")
for sc in scenarios:
    med = {s: statistics.median(cpu[(sc, s)]) for s in servers if cpu[(sc, s)]}
    if not med:
        continue
    cells = [f"{med[s]:,.0f}" if s in med else "-" for s in servers]
    best = min((med[s] for s in peers if s in med), default=None)
    vs_peer = f"{best / med['reactor']:.2f}" if best and "reactor" in med else "-"
    ratios = [ratio(med, "floor", "reactor"), vs_peer] + [aa_spread(med)] * has_aa
    row(sc, cells, ratios + [ratio(med, "reactor_base", "reactor")] * has_base)
spread = []
for (sc, s), values in rate.items():
    if len(values) > 1:
        m = statistics.median(values)
        spread.append((max(values) - min(values)) / m if m else 0)
if spread:
    print(f"\nRound-to-round spread (max-min)/median: median {statistics.median(spread):.0%}, "
          f"worst {max(spread):.0%}.")
PY
cat "$out/compare.md"
echo "raw results: $jsonl" >&2
