#!/usr/bin/env bash
# Side by side, UDP (issue 17): each scenario against each UDP echo server, every server a
# separate process pinned to CPU 0 and `reactor-load udp` pinned to CPU 1, servers interleaved
# round by round (the order reversed every other round, so neither drift nor warm-up favours
# one), medians of N rounds. The servers: floor_udp (bench/floor_udp.cpp, the recvmmsg/sendmmsg
# batch floor), udp_echo (demo/udp_echo), udp_echo again as an A/A column (udp_echo_aa: the
# same binary, a second, separate start, to show how far two runs of one server differ), and
# naive_udp (floor_udp --naive: recvfrom/sendto per datagram). Prints a Markdown table: per
# scenario and server, the rate of echoes reactor-load received, the server's CPU time
# (user + system, /proc/PID/schedstat, as compare.sh) per received datagram, p50 and p99
# latency and the datagrams lost; then the A/A spread |udp_echo - udp_echo_aa| / udp_echo and
# udp_echo against floor_udp. Keeps every raw JSON result. A benchmark, not a test: run it on a
# quiet machine.
#
#   bench/udp_compare.sh [--build DIR] [--rounds N] [--duration SEC] [--rate R] [--out DIR]
#                        [--servers "floor_udp udp_echo udp_echo_aa naive_udp"]
#                        [--scenarios "batched pingpong rate"]
#
# DIR: a release build with demo/udp_echo, demo/reactor-load and bench/floor_udp (default
# build-peers). Writes OUT/udp_compare.jsonl (one line per run: round, scenario, server, the
# server's CPU ns, reactor-load's exit status and JSON) and OUT/udp_compare.md (the table); OUT
# defaults to DIR/bench-results.
# Scenarios (reactor-load udp, 64 B datagrams):
#   batched   --depth 32 --sockets 4        (closed loop, the server sees batches)
#   pingpong  --depth 1 --sockets 1         (bound by cross-core wake-up latency)
#   rate      --rate R --sockets 4          (open loop, default 20000/s: latency p50/p99)
# CPU per datagram divides by the echoes received: a datagram the server echoed but the client
# did not count (lost, or still in flight at the end) is charged to the ones it did.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/servers.sh

build="build-peers"
rounds=5
duration=2
rate=20000
out=
servers="floor_udp udp_echo udp_echo_aa naive_udp"
scenarios="batched pingpong rate"
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --servers) servers=$2; shift 2 ;;
    --scenarios) scenarios=$2; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--rounds N] [--duration SEC] [--rate R] [--out DIR] [--servers LIST] [--scenarios LIST]" >&2; exit 2 ;;
  esac
done
out=${out:-$build/bench-results}
mkdir -p "$out"
load=$build/demo/reactor-load
[ -x "$load" ] || { echo "missing $load: build $build first" >&2; exit 1; }

# udp_server_binary NAME: servers.sh's server_binary, plus the A/A column's name.
udp_server_binary() {
  case "$1" in
    udp_echo_aa) server_binary "$build" udp_echo ;;
    *) server_binary "$build" "$1" ;;
  esac
}

# shellcheck disable=SC2086 # the list is split into names on purpose
list=$(built_servers udp_server_binary $servers) || exit 2
read -r -a names <<<"$list"
[ ${#names[@]} -gt 0 ] || { echo "no server built in $build" >&2; exit 1; }
jsonl=$out/udp_compare.jsonl
: >"$jsonl"

# run_one ROUND SCENARIO SERVER: one server process, one load run, one JSON line.
run_one() {
  local round=$1 scenario=$2 name=$3 binary extra=() result status=0
  binary=$(udp_server_binary "$name")
  [ "$name" = naive_udp ] && extra=(--naive)
  start_server taskset -c 0 "$binary" --listen udp:127.0.0.1:0 "${extra[@]}"
  local cpu_before
  cpu_before=$(server_cpu_ns)
  local udp=(taskset -c 1 "$load" udp --target "$SERVER_ADDR" --duration "$duration" --size 64
    --json)
  case "$scenario" in
    batched) result=$("${udp[@]}" --depth 32 --sockets 4) || status=$? ;;
    pingpong) result=$("${udp[@]}" --depth 1 --sockets 1) || status=$? ;;
    rate) result=$("${udp[@]}" --rate "$rate" --sockets 4) || status=$? ;;
    *) echo "unknown scenario: $scenario" >&2; exit 2 ;;
  esac
  local cpu_ns=$(($(server_cpu_ns) - cpu_before))
  stop_server
  # Exit status 1 (a corrupt echo, a socket error, no echo at all) still prints the JSON: keep
  # it, flagged, and say so; anything else (no JSON) ends the run.
  if [ -z "$result" ]; then
    echo "reactor-load udp printed nothing (exit $status): $scenario against $name" >&2
    exit 1
  fi
  [ "$status" -eq 0 ] || echo "warning: reactor-load exit $status: $scenario against $name" >&2
  printf '{"round": %d, "scenario": "%s", "server": "%s", "server_cpu_ns": %d, "status": %d, "result": %s}\n' \
    "$round" "$scenario" "$name" "$cpu_ns" "$status" "$result" >>"$jsonl"
}

echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), kernel $(uname -r)" >&2
echo "load before: $(uptime)" >&2
interleaved_rounds "$rounds" "$scenarios" "${names[@]}"
echo "load after: $(uptime)" >&2

python3 - "$jsonl" "$rounds" "$rate" >"$out/udp_compare.md" <<'PY'
import json, statistics, sys
from collections import defaultdict

runs = [json.loads(line) for line in open(sys.argv[1])]
rate, cpu, p50, p99, lost = (defaultdict(list) for _ in range(5))
failed = defaultdict(int)
for r in runs:
    res, key = r["result"], (r["scenario"], r["server"])
    if r.get("status", 0) != 0:
        failed[key] += 1
    rate[key].append(res["msgs_per_s"])  # echoes received per second
    p50[key].append(res["latency_us"]["p50"])
    p99[key].append(res["latency_us"]["p99"])
    lost[key].append(res["lost"])
    if res.get("received") and r.get("server_cpu_ns"):
        cpu[key].append(r["server_cpu_ns"] / res["received"])
scenarios, servers = [], []
for r in runs:
    if r["scenario"] not in scenarios:
        scenarios.append(r["scenario"])
    if r["server"] not in servers:
        servers.append(r["server"])
order = ["floor_udp", "udp_echo", "udp_echo_aa", "naive_udp"]
servers.sort(key=lambda s: order.index(s) if s in order else len(order))
labels = {
    "batched": "depth 32, 4 sockets, 64 B",
    "pingpong": "ping-pong, depth 1, 1 socket, 64 B",
    "rate": f"rate {int(sys.argv[3]):,}/s, 4 sockets, 64 B",
}
med = lambda d, k: statistics.median(d[k]) if d[k] else None

def fmt_rate(v):
    return f"{v/1e6:.2f} M" if v >= 1e6 else f"{v/1e3:.1f} k"

def num(v, f="{:,.0f}"):
    return f.format(v) if v is not None else "-"

print(f"Medians of {sys.argv[2]} rounds. dgram/s: echoes reactor-load received per second. "
      "CPU: the server process's user + system time per received echo. Latency in us. "
      "udp_echo_aa is udp_echo started a second time (A/A).\n")
print("| scenario | server | dgram/s | CPU ns/dgram | p50 (us) | p99 (us) | lost |")
print("|---|---|---|---|---|---|---|")
for sc in scenarios:
    for s in servers:
        r = med(rate, (sc, s))
        if r is None:
            continue
        note = f" ({failed[(sc, s)]} failed)" if failed[(sc, s)] else ""
        print(f"| {labels.get(sc, sc)} | {s}{note} | {fmt_rate(r)} | {num(med(cpu, (sc, s)))} | "
              f"{num(med(p50, (sc, s)), '{:.0f}')} | {num(med(p99, (sc, s)), '{:.0f}')} | "
              f"{num(med(lost, (sc, s)))} |")

def spread(d, sc):
    a, b = med(d, (sc, "udp_echo")), med(d, (sc, "udp_echo_aa"))
    return f"{abs(a - b) / a:.1%}" if a and b is not None else "-"

def ratio(d, sc, num_s, den_s):
    a, b = med(d, (sc, num_s)), med(d, (sc, den_s))
    return f"{a / b:.2f}" if a is not None and b else "-"

print("\nA/A spread: |udp_echo - udp_echo_aa| / udp_echo, of the medians above. udp_echo against "
      "the floor: its rate / floor_udp's (target: at least 1 within the A/A spread) and its CPU "
      "per datagram / floor_udp's.\n")
print("| scenario | A/A dgram/s | A/A CPU ns/dgram | A/A p99 | udp_echo/floor_udp dgram/s | "
      "udp_echo/floor_udp CPU |")
print("|---|---|---|---|---|---|")
for sc in scenarios:
    print(f"| {labels.get(sc, sc)} | {spread(rate, sc)} | {spread(cpu, sc)} | {spread(p99, sc)} | "
          f"{ratio(rate, sc, 'udp_echo', 'floor_udp')} | {ratio(cpu, sc, 'udp_echo', 'floor_udp')} |")
PY
cat "$out/udp_compare.md"
echo "raw results: $jsonl" >&2
