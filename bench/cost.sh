#!/usr/bin/env bash
# Cost per echoed message, without wall-clock noise: for each echo server process, the
# syscalls (strace -c -f) and user-space instructions (valgrind --tool=callgrind) it spends on
# a fixed workload, minus a run that does only the start-up part of it, divided by the messages
# in between:
#   1 connection:    50,000 ping-pong messages, minus a run with 1 message
#   100 connections: 50,000 messages spread over 100 connections (each ping-pong, all at
#                    once), minus a run with 1 message on each of the 100 connections
# The client is bench/fixed_client (exact message counts, unlike reactor-load's --duration).
# With --udp, the same for UDP echo servers, per echoed 64 B datagram, in batches of B = 1 and
# B = 32 instead of 1 and 100 connections: bench/fixed_udp_client sends B datagrams at once,
# waits for all B echoes, and repeats; the servers are udp_echo (the reactor's), floor_udp (the
# hand-written recvmmsg/sendmmsg floor) and naive_udp (floor_udp --naive: recvfrom/sendto).
# For the reactor and the floor it also prints where the instructions go, per message: the
# functions' own instruction counts (callgrind_annotate --inclusive=no) of the long run minus
# those of the short one.
#
#   bench/cost.sh [--build DIR] [--messages N] [--servers "floor reactor libuv libevent asio"]
#                 [--out DIR] [--reactor-args "ARGS"] [--udp]
#
# --reactor-args: extra arguments for the reactor's echo_server, e.g. "--stats 100000 --stall-us 0"
# prices EventLoop's busy/idle instrument (--stats turns Options::measure_time on).
#
# DIR: a release build (default build-peers; -Ddebug=true adds line information to the
# annotations without changing the code). Writes OUT/cost.md and keeps the callgrind and strace
# outputs in OUT (default DIR/bench-results/cost).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/servers.sh

build="build-peers"
messages=50000
servers="floor reactor libuv libevent asio"
out=
reactor_args=
udp=
while [ $# -gt 0 ]; do
  case "$1" in
    --udp) udp=1; servers="floor_udp naive_udp udp_echo"; shift ;;
    --build) build=$2; shift 2 ;;
    --messages) messages=$2; shift 2 ;;
    --servers) servers=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --reactor-args) reactor_args=$2; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--messages N] [--servers LIST] [--out DIR] [--reactor-args ARGS] [--udp]" >&2; exit 2 ;;
  esac
done
out=${out:-$build/bench-results/cost${udp:+-udp}}
mkdir -p "$out"
client=$build/bench/fixed_client
[ -n "$udp" ] && client=$build/bench/fixed_udp_client
[ -x "$client" ] || { echo "missing $client: build $build first" >&2; exit 1; }
for tool in strace valgrind callgrind_annotate; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install strace valgrind)" >&2; exit 1; }
done
# shellcheck disable=SC2086 # the list is split into names on purpose
read -r -a names <<<"$(available_servers "$build" $servers)"

# drive CONNECTIONS MESSAGES: the workload against SERVER_ADDR, then waits until the server has
# closed every connection (so that closing is counted in both runs alike). With --udp the first
# argument is the batch size, and there is nothing to close.
drive() {
  if [ -n "$udp" ]; then
    "$client" --target "$SERVER_ADDR" --batch "$1" --messages "$2" --gap-us 300 >/dev/null
    return
  fi
  "$client" --target "$SERVER_ADDR" --connections "$1" --messages "$2" >/dev/null
  wait_established "$SERVER_PORT" 0
}

# measure NAME CONNECTIONS MESSAGES TAG: one strace run and one callgrind run.
measure() {
  local name=$1 conns=$2 msgs=$3 tag=$4 binary extra=() listen=127.0.0.1:0
  binary=$(server_binary "$build" "$name")
  # shellcheck disable=SC2206 # split into arguments on purpose
  [ "$name" = reactor ] || [ "$name" = udp_echo ] && extra=($reactor_args)
  [ "$name" = naive_udp ] && extra=(--naive)
  [ -n "$udp" ] && listen=udp:127.0.0.1:0
  start_server strace -f -c -o "$out/$tag.strace" "$binary" --listen "$listen" "${extra[@]}"
  local pid
  pid=$(traced_pid)
  drive "$conns" "$msgs"
  stop_server "$pid"
  start_server valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$out/$tag.callgrind" \
    "$binary" --listen "$listen" "${extra[@]}"
  drive "$conns" "$msgs"
  stop_server
  callgrind_annotate --inclusive=no --auto=no --threshold=100 "$out/$tag.callgrind" >"$out/$tag.annotate"
}

sizes="1 100"
[ -n "$udp" ] && sizes="1 32"
for name in "${names[@]}"; do
  for conns in $sizes; do
    echo "$name, $conns connection(s): start-up run and $messages-message run" >&2
    measure "$name" "$conns" "$conns" "$name-c$conns-base"
    measure "$name" "$conns" "$messages" "$name-c$conns-full"
  done
done

python3 - "$out" "$messages" "${udp:-0}" "${names[@]}" >"$out/cost.md" <<'PY'
import re, sys
from collections import defaultdict

out, messages, udp, names = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4:]
# TCP: 1 and 100 connections; UDP: batches of 1 and 32 datagrams.
small, large = (1, 32) if udp else (1, 100)
unit, what = ("B=", "datagram") if udp else ("", "message")
floor = "floor_udp" if udp else "floor"
reactor = "udp_echo" if udp else "reactor"

def label(n):
    return f"B={n}" if udp else (f"{n} conn" + ("s" if n > 1 else ""))

def strace_calls(path):
    """syscall -> calls, from strace -c (the 'total' row included)."""
    calls = {}
    for line in open(path):
        f = line.split()
        if len(f) >= 5 and re.fullmatch(r"[\d.]+", f[0]) and f[3].isdigit():
            calls[f[-1]] = int(f[3])
    return calls

def callgrind_total(path):
    for line in open(path):
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {path}")

def short_name(function):
    """'reactor::EventLoop::run_once(std::optional<...>) const' -> 'EventLoop::run_once'."""
    name = re.sub(r"\s+const$", "", function.strip())
    if name.endswith(")"):  # drop the trailing parameter list
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i]
                break
    while re.search(r"<[^<>]*>", name):  # innermost first, marked so they stay matched
        name = re.sub(r"<[^<>]*>", "\x00", name)
    return name.replace("\x00", "<>").replace("reactor::", "").replace("(anonymous namespace)::", "")

def functions(path):
    """function -> own Ir (code inlined into it included), from callgrind_annotate --inclusive=no."""
    result = defaultdict(int)
    for line in open(path):
        m = re.match(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*?)\s*$", line)
        if not m or ":" not in m.group(2) or "PROGRAM TOTALS" in line:
            continue
        text = re.sub(r"\s*\[[^\]]*\]$", "", m.group(2))
        # 'file:function': the file is where the code came from (a header, when inlined);
        # attribute it to the function it was compiled into.
        function = re.split(r"(?<!:):(?!:)", text, maxsplit=1)[-1]
        result[short_name(function)] += int(m.group(1).replace(",", ""))
    return result

rows = {}
for name in names:
    for conns in (small, large):
        base, full = f"{out}/{name}-c{conns}-base", f"{out}/{name}-c{conns}-full"
        n = messages - conns
        s_base, s_full = strace_calls(base + ".strace"), strace_calls(full + ".strace")
        per_call = {k: (s_full.get(k, 0) - s_base.get(k, 0)) / n for k in s_full if k != "total"}
        rows[(name, conns)] = {
            "syscalls": (s_full["total"] - s_base["total"]) / n,
            "by_syscall": {k: v for k, v in per_call.items() if v >= 0.005},
            "instructions": (callgrind_total(full + ".callgrind") - callgrind_total(base + ".callgrind")) / n,
        }

print(f"Per echoed 64 B {what} ({messages} {what}s minus the start-up run).\n")
print(f"| server | syscalls/msg, {label(small)} | syscalls/msg, {label(large)} "
      f"| instructions/msg, {label(small)} | instructions/msg, {label(large)} "
      f"| instructions vs floor ({small} / {large}) |")
print("|---|---|---|---|---|---|")
for name in names:
    a, b = rows[(name, small)], rows[(name, large)]
    ratio = "-"
    if floor in names:
        f1, f100 = rows[(floor, small)]["instructions"], rows[(floor, large)]["instructions"]
        ratio = f"{a['instructions'] / f1:.1f}x / {b['instructions'] / f100:.1f}x"
    print(f"| {name} | {a['syscalls']:.2f} | {b['syscalls']:.2f} | {a['instructions']:,.0f} "
          f"| {b['instructions']:,.0f} | {ratio} |")

print("\nSyscalls per message, by syscall (>= 0.005/msg):\n")
for name in names:
    for conns in (small, large):
        parts = sorted(rows[(name, conns)]["by_syscall"].items(), key=lambda kv: -kv[1])
        print(f"- {name}, {label(conns)}: "
              + ", ".join(f"{k} {v:.2f}" for k, v in parts))

for name in [n for n in (reactor, floor) if n in names]:
    for conns in (small, large):
        base = functions(f"{out}/{name}-c{conns}-base.annotate")
        full = functions(f"{out}/{name}-c{conns}-full.annotate")
        n = messages - conns
        diff = sorted(((full[k] - base.get(k, 0)) / n, k) for k in full)
        diff.reverse()
        total = rows[(name, conns)]["instructions"]
        print(f"\n{name}, {label(conns)}: own instructions per {what} "
              f"by function (top 15 of {total:,.0f}):\n")
        print("| Ir/msg | function |")
        print("|---:|---|")
        for value, k in diff[:15]:
            if value < 0.5:
                break
            print(f"| {value:,.1f} | `{k}` |")
PY
cat "$out/cost.md"
