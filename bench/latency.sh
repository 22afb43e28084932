#!/usr/bin/env bash
# Latency versus load, side by side: the open-loop probe (reactor-load rate --spin, 64
# connections, 64 B; latency from each message's due time) against every echo server at fixed
# fractions of the probe's own ceiling. Server pinned to CPU 0, client to CPU 1, as in
# compare.sh; one fresh server process per run.
#
#   bench/latency.sh [--build DIR] [--rounds N] [--duration SEC] [--steps "10 30 50 70 90"]
#                    [--servers LIST] [--ceiling R] [--search-duration SEC] [--out DIR]
#
# 1. The ceiling, searched in the same run unless --ceiling R gives it: the highest rate at
#    which the probe against the floor keeps achieved = offered (within 1%) with late_sends
#    under 1% of the messages due: doubling from 10,000/s, then bisecting until the gap is
#    under 5%. On a small machine that is the client's limit, not the server's. Every probe of
#    the search is printed and kept in OUT/ceiling.jsonl.
# 2. Each step (percent of the ceiling) for each server, --duration seconds per run (default
#    5), servers interleaved within a round, the order reversed every other round, N rounds
#    (default 3; 0: the search alone). Series (--servers; a series whose binary is not built is skipped, with a note):
#      floor             bench/floor_server (sleeps in epoll_wait)
#      reactor           demo/echo_server
#      reactor-busypoll  demo/echo_server --busy-poll 10000000 (spins for 10 s before sleeping)
#      floor-spin        bench/floor_server --busy-poll (never sleeps)
#      libuv, libevent, asio   bench/peer_*
#      reactor-AA        demo/echo_server again, as its own series: the A/A control, whose
#                        difference from `reactor` is the noise of the row
# 3. OUT/latency.md: per (step, server) the medians of p50/p99/p99.9 (us), achieved rate,
#    late_sends, server CPU time per message, ratios to the floor and to the best peer; per step
#    the A/A spread and a verdict against the issue's targets. A run that missed the offered
#    rate by 1% or more, sent 1% or more of its messages late, or saw an error is invalid: the
#    client, not the server, set its latency. A row's latencies are the medians of its valid
#    runs; a row with no more valid runs than invalid ones is invalid, and none is reported.
#    OUT/latency.jsonl keeps every run (round, step, server, offered, the server's CPU ns,
#    reactor-load's JSON); OUT/latency-medians.tsv feeds bench/plot_latency.sh, which this
#    script runs to draw OUT/latency.png when gnuplot is installed.
#
# DIR: a release build with the demo and, for the peers, -Dpeers=enabled (default build-peers).
# OUT defaults to DIR/bench-results. Wall time: about (series x steps x rounds) x (duration +
# 0.3 s), plus the search (some 10 probes of --search-duration, default --duration): the
# defaults take about 12 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/servers.sh

command_line="bench/latency.sh"
[ $# -eq 0 ] || command_line+=$(printf ' %q' "$@")
build="build-peers"
rounds=3
duration=5
steps="10 30 50 70 90"
servers="floor reactor reactor-busypoll floor-spin libuv libevent asio reactor-AA"
ceiling=
search_duration=
out=
usage="usage: $0 [--build DIR] [--rounds N] [--duration SEC] [--steps LIST] [--servers LIST] [--ceiling R] [--search-duration SEC] [--out DIR]"
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --servers) servers=$2; shift 2 ;;
    --ceiling) ceiling=$2; shift 2 ;;
    --search-duration) search_duration=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
search_duration=${search_duration:-$duration}
for step in $steps; do
  [[ $step =~ ^[1-9][0-9]*$ ]] || { echo "--steps: whole percents, not '$step'" >&2; exit 2; }
done
[[ -z $ceiling || $ceiling =~ ^[1-9][0-9]*$ ]] || { echo "--ceiling: msg/s, a whole number" >&2; exit 2; }
out=${out:-$build/bench-results}
mkdir -p "$out"
load=$build/demo/reactor-load
[ -x "$load" ] || { echo "missing $load: build $build first" >&2; exit 1; }

# The probe, the same in the search and in every run.
probe=(--connections 64 --size 64 --spin --json)

# series_server SERIES: the server (servers.sh's name) a series runs.
series_server() {
  case "$1" in
    reactor-busypoll | reactor-AA) echo reactor ;;
    floor-spin) echo floor ;;
    *) echo "$1" ;;
  esac
}

# series_args SERIES: the server's options beyond --listen.
series_args() {
  case "$1" in
    reactor-busypoll) echo "--busy-poll 10000000" ;;
    floor-spin) echo "--busy-poll" ;;
  esac
}

names=()
for series in $servers; do
  case "$series" in
    floor | reactor | reactor-busypoll | floor-spin | libuv | libevent | asio | reactor-AA) ;;
    *) echo "unknown server '$series' in --servers" >&2; exit 2 ;;
  esac
  # available_servers prints the note for a server that is not built.
  if [ -n "$(available_servers "$build" "$(series_server "$series")")" ]; then
    names+=("$series")
  fi
done
[ ${#names[@]} -gt 0 ] || { echo "no server to measure" >&2; exit 1; }

# probe_run SERIES RATE SEC: one fresh server of SERIES on CPU 0, the probe at RATE msg/s for
# SEC seconds on CPU 1. Sets RESULT (reactor-load's JSON, or null if it printed none), STATUS
# (its exit status) and CPU_NS (the server's CPU time during the run, or null).
probe_run() {
  local series=$1 rate=$2 seconds=$3 binary before after
  binary=$(server_binary "$build" "$(series_server "$series")")
  # shellcheck disable=SC2046 # the options are split into words on purpose
  start_server taskset -c 0 "$binary" --listen 127.0.0.1:0 $(series_args "$series")
  before=$(server_cpu_ns)
  STATUS=0
  RESULT=$(taskset -c 1 "$load" rate --target "$SERVER_ADDR" --rate "$rate" \
    --duration "$seconds" "${probe[@]}") || STATUS=$?
  [ -n "$RESULT" ] || RESULT=null
  if after=$(server_cpu_ns 2>/dev/null); then CPU_NS=$((after - before)); else CPU_NS=null; fi
  stop_server
}

# run_ok: whether the last probe_run kept up: no error, achieved within 1% of offered, fewer
# than 1% of the messages sent late (the test of invalid() in the report below). Prints the
# figures on stderr.
run_ok() {
  python3 - "$RESULT" "$STATUS" <<'PY'
import json, sys
r, status = json.loads(sys.argv[1]), int(sys.argv[2])
if not r:
    print(f"no result (exit status {status})", file=sys.stderr)
    sys.exit(1)
achieved = r["achieved_per_s"] / r["offered_per_s"]
late = r["late_sends"] / max(1, r["due"])
ok = status == 0 and r["errors"] == 0 and achieved >= 0.99 and late < 0.01
print(f"achieved {achieved:.1%}, late {late:.2%}, errors {r['errors']}, "
      f"p50 {r['latency_us']['p50']:.1f} us: {'ok' if ok else 'not kept up'}", file=sys.stderr)
sys.exit(0 if ok else 1)
PY
}

machine="$(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), kernel $(uname -r)"
echo "machine: $machine" >&2
load_before=$(uptime | sed 's/.*load average: //')
echo "load average before: $load_before" >&2

# 1. The ceiling.
searched=
if [ -z "$ceiling" ]; then
  searched=$out/ceiling.jsonl
  [ -x "$(server_binary "$build" floor)" ] || { echo "the search needs the floor" >&2; exit 1; }
  : >"$searched"
  lo=0 hi=0 rate=10000
  echo "ceiling search: the probe against the floor, $search_duration s per rate" >&2
  while :; do
    printf '  %8d/s: ' "$rate" >&2
    probe_run floor "$rate" "$search_duration"
    printf '{"rate": %d, "status": %d, "server_cpu_ns": %s, "result": %s}\n' \
      "$rate" "$STATUS" "$CPU_NS" "$RESULT" >>"$searched"
    if run_ok; then lo=$rate; else hi=$rate; fi
    if [ "$hi" -eq 0 ]; then
      [ "$lo" -lt 10000000 ] || break  # 10 M/s: no limit worth searching
      rate=$((lo * 2))
    elif [ "$lo" -eq 0 ]; then
      [ "$hi" -gt 1000 ] || { echo "the probe keeps up with no rate down to $hi/s" >&2; exit 1; }
      rate=$((hi / 2))
    else
      [ $((hi - lo)) -gt $((lo / 20)) ] || break  # within 5%
      rate=$(((lo + hi) / 2))
    fi
  done
  ceiling=$lo
  echo "ceiling: $ceiling/s" >&2
fi
[ "$rounds" -gt 0 ] || exit 0  # --rounds 0: the search alone

# 2. The ladder.
jsonl=$out/latency.jsonl
: >"$jsonl"
for round in $(seq "$rounds"); do
  order=("${names[@]}")
  if [ $((round % 2)) -eq 0 ]; then
    order=()
    for ((i = ${#names[@]} - 1; i >= 0; i--)); do order+=("${names[i]}"); done
  fi
  for step in $steps; do
    offered=$(((ceiling * step + 50) / 100))
    for series in "${order[@]}"; do
      printf '  round %d, %d%% (%d/s), %-16s ' "$round" "$step" "$offered" "$series" >&2
      probe_run "$series" "$offered" "$duration"
      run_ok || true
      printf '{"round": %d, "step": %d, "server": "%s", "offered": %d, "status": %d, "server_cpu_ns": %s, "result": %s}\n' \
        "$round" "$step" "$series" "$offered" "$STATUS" "$CPU_NS" "$RESULT" >>"$jsonl"
    done
  done
  echo "round $round/$rounds done ($(uptime | sed 's/.*load/load/'))" >&2
done
load_after=$(uptime | sed 's/.*load average: //')
echo "load average after: $load_after" >&2

# 3. The tables.
python3 - "$jsonl" "$out/latency-medians.tsv" "$ceiling" "$searched" "$rounds" "$duration" \
  "$machine" "$command_line" "$load_before" "$load_after" >"$out/latency.md" <<'PY'
import json, statistics, sys
from collections import defaultdict

(jsonl, tsv, ceiling, searched, rounds, duration, machine, command, load_before,
 load_after) = sys.argv[1:]
ceiling = int(ceiling)
PEERS = ("libuv", "libevent", "asio")
SPINNING = ("reactor-busypoll", "floor-spin")  # a whole core whatever they do: no CPU/msg
ORDER = ["floor", "reactor", "reactor-AA", "reactor-busypoll", "floor-spin", *PEERS]
PCTS = [("p50", "p50"), ("p99", "p99"), ("p99.9", "p999")]

runs = defaultdict(list)  # (step, server) -> that row's runs
offered_of = {}
for line in open(jsonl):
    r = json.loads(line)
    runs[(r["step"], r["server"])].append(r)
    offered_of[r["step"]] = r["offered"]
steps = sorted(offered_of)
servers = [s for s in ORDER if any(k[1] == s for k in runs)]

def invalid(r):
    """Whether a run does not measure the server: the probe did not keep up, or failed."""
    res = r["result"]
    return (not res or r["status"] != 0 or res["errors"] > 0
            or res["achieved_per_s"] < 0.99 * res["offered_per_s"]
            or res["late_sends"] >= 0.01 * max(1, res["due"]))

def why_invalid(rs):
    """The worst of each reason among a row's invalid runs."""
    bad = [r for r in rs if invalid(r)]
    res = [r["result"] for r in bad if r["result"]]
    reasons = []
    if len(res) < len(bad):
        reasons.append("no result")
    if res:
        achieved = min(x["achieved_per_s"] / x["offered_per_s"] for x in res)
        late = max(x["late_sends"] / max(1, x["due"]) for x in res)
        errors = max(x["errors"] for x in res)
        if achieved < 0.99:
            reasons.append(f"achieved {achieved:.1%}")
        if late >= 0.01:
            reasons.append(f"late {late:.1%}")
        if errors or any(r["status"] for r in bad if r["result"]):
            reasons.append(f"{errors} errors")
    return f"{len(bad)} of {len(rs)} runs; worst: {', '.join(reasons)}" if bad else None

med = lambda values: statistics.median(values) if values else None
rows = {}  # (step, server) -> medians and validity
for (step, server), rs in runs.items():
    results = [r["result"] for r in rs if r["result"]]
    good = [r["result"] for r in rs if not invalid(r)]
    # A majority of valid runs: one late burst of the client's in one run does not void a row.
    reason = why_invalid(rs) if 2 * len(good) <= len(rs) else None
    cpu = [r["server_cpu_ns"] / r["result"]["messages"] for r in rs
           if r["result"] and r["result"]["messages"] and r["server_cpu_ns"] is not None]
    row = {
        "invalid": reason,
        "achieved": med([x["achieved_per_s"] for x in results]),
        "late": med([x["late_sends"] / max(1, x["due"]) for x in results]),
        "cpu": None if server in SPINNING else med(cpu),
        "valid_runs": f"{len(good)}/{len(rs)}",
    }
    for _, key in PCTS:
        row[key] = med([x["latency_us"][key] for x in good])
    rows[(step, server)] = row

def valid(step, server):
    row = rows.get((step, server))
    return row is not None and not row["invalid"] and row["p50"] is not None

def best_peer(step, key):
    """(server, value) of the lowest latency among the valid peers at this step."""
    cands = [(rows[(step, p)][key], p) for p in PEERS if valid(step, p)]
    return (min(cands)[1], min(cands)[0]) if cands else (None, None)

def aa_spread(step, key):
    """|reactor - reactor-AA| / min of the two medians: what noise alone moves this row by."""
    if not (valid(step, "reactor") and valid(step, "reactor-AA")):
        return None
    a, b = rows[(step, "reactor")][key], rows[(step, "reactor-AA")][key]
    return abs(a - b) / min(a, b) if min(a, b) > 0 else None

def rate(v):
    return "-" if v is None else f"{v / 1e6:.2f} M" if v >= 1e6 else f"{v / 1e3:.1f} k"

def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"

def pct(v):
    return "-" if v is None else f"{v:.1%}" if v < 0.1 else f"{v:.0%}"

print("## Latency versus offered load (bench/latency.sh)\n")
print(f"- machine: {machine}")
print(f"- command: `{command}`")
print(f"- load average before: {load_before}; after: {load_after}")
print(f"- probe: `reactor-load rate --spin --connections 64 --size 64`, {duration} s per run, "
      f"medians of {rounds} round(s)")
if searched:
    probes = []
    for line in open(searched):
        r = json.loads(line)
        res = r["result"]
        if not res:
            probes.append(f"{r['rate']:,}: no result")
            continue
        achieved = res["achieved_per_s"] / res["offered_per_s"]
        late = res["late_sends"] / max(1, res["due"])
        probes.append(f"{r['rate']:,}: {achieved:.1%} achieved, {late:.2%} late"
                      + ("" if not invalid(r) else " (not kept up)"))
    print(f"- ceiling {ceiling:,}/s: the highest rate at which the probe against the floor kept "
          f"achieved within 1% of offered with under 1% of its messages late; the search "
          f"(msg/s): {'; '.join(probes)}")
else:
    print(f"- ceiling {ceiling:,}/s, given with --ceiling (not searched in this run)")
print("- latency from each message's due time (open loop), in us; CPU ns/msg: the server "
      "process's CPU time per echoed message (schedstat), not given for the spinning servers; "
      "ratios are this row's median over the floor's and over the best valid peer's "
      "(the peer named) at the same step")
print("- invalid run: it missed the offered rate by 1% or more, sent 1% or more of its messages "
      "late, or saw an error; its latency is the client's, not the server's. Latencies are the "
      "medians of a row's valid runs (valid: how many); a row with no more valid runs than "
      "invalid ones is invalid\n")

print("| load | server | offered/s | achieved/s | late | valid | p50 | p99 | p99.9 | CPU ns/msg "
      "| p50/floor | p99/floor | p50/best peer | p99/best peer |")
print("|---" * 14 + "|")
for step in steps:
    floor = rows.get((step, "floor")) if valid(step, "floor") else None
    for server in servers:
        row = rows.get((step, server))
        if row is None:
            continue
        late = "-" if row["late"] is None else f"{row['late']:.2%}"
        head = (f"| {step}% | {server} | {offered_of[step]:,} | {rate(row['achieved'])} | {late} "
                f"| {row['valid_runs']} ")
        if not valid(step, server):
            print(head + f"| invalid ({row['invalid']}) | | | | | | | |")
            continue
        cells = [f"{row[key]:.1f}" for _, key in PCTS]
        cpu = "spins" if server in SPINNING else "-" if row["cpu"] is None else f"{row['cpu']:,.0f}"
        vs_floor = [ratio(row[k], floor[k] if floor else None) for k in ("p50", "p99")]
        vs_peer = []
        for k in ("p50", "p99"):
            name, value = best_peer(step, k)
            vs_peer.append(f"{ratio(row[k], value)} ({name})" if name else "-")
        print(head + "| " + " | ".join(cells + [cpu] + vs_floor + vs_peer) + " |")

# The verdict: the issue's targets, judged against the A/A spread of each step.
def judge(step, key, reactor):
    """Reactor against the floor (<= 1.05x) and every valid peer (<=), a difference inside
    the A/A spread counted as a tie. Returns (met: bool or None, text)."""
    spread = aa_spread(step, key)
    notes, below, met = [], [], True
    def within(a, b, bound):
        return a <= bound * b or (spread is not None and (a - b) / b <= spread)
    if valid(step, "floor"):
        f = rows[(step, "floor")][key]
        r = reactor / f
        if r <= 1.05:
            notes.append(f"floor {r:.2f}x")
        elif within(reactor, f, 1.05):
            notes.append(f"floor {r:.2f}x tie")
        else:
            notes.append(f"floor {r:.2f}x MISSED")
            met = False
    else:
        notes.append("floor invalid")
        met = None
    for p in PEERS:
        if not valid(step, p):
            if (step, p) in rows:
                notes.append(f"{p} invalid")
            continue
        v = rows[(step, p)][key]
        if reactor <= v:
            below.append(p)
            continue
        if within(reactor, v, 1.0):
            notes.append(f"{p} {reactor / v:.2f}x tie")
        else:
            notes.append(f"{p} {reactor / v:.2f}x MISSED")
            met = False
    if below:
        notes.append("<= " + ", ".join(below))
    if spread is None:
        notes.append("no A/A, so no ties")
    if met and not any(valid(step, p) for p in PEERS):
        met = None  # half a target: the floor's side only
        notes.append("no valid peer")
    return met, "; ".join(notes)

print("\n### Targets (reactor)\n")
print("reactor p50 <= 1.05x the floor's and <= every peer's at every valid step; p99 and p99.9 "
      "held to the same where the row's A/A spread is under 10%. A/A spread: |reactor - "
      "reactor-AA| / the smaller; a difference inside it is a tie. Ratios are reactor / other. "
      "Only valid rows are compared (an invalid one is named); not judged: the reactor's row is "
      "invalid, no peer's is valid, or (tails) the A/A spread is 10% or more or unknown.\n")
print("| load | A/A spread p50 / p99 / p99.9 | p50 | p99 | p99.9 |")
print("|---" * 5 + "|")
tally = defaultdict(lambda: [0, 0, 0])  # percentile -> [met, missed, not judged]
for step in steps:
    spreads = " / ".join(pct(aa_spread(step, key)) for _, key in PCTS)
    cells = []
    for label, key in PCTS:
        if not valid(step, "reactor"):
            cells.append("reactor invalid")
            tally[label][2] += 1
            continue
        spread = aa_spread(step, key)
        if key != "p50" and (spread is None or spread >= 0.10):
            why = "no A/A" if spread is None else f"A/A {spread:.0%}"
            cells.append(f"not judged ({why})")
            tally[label][2] += 1
            continue
        met, text = judge(step, key, rows[(step, "reactor")][key])
        word = {True: "met", False: "missed", None: "not judged"}[met]
        tally[label][{True: 0, False: 1, None: 2}[met]] += 1
        cells.append(f"{word}: {text}")
    print(f"| {step}% ({offered_of[step]:,}/s) | {spreads} | " + " | ".join(cells) + " |")
print()
for label, _ in PCTS:
    m, x, n = tally[label]
    print(f"- {label}: met at {m}, missed at {x}, not judged at {n} of {len(steps)} steps")

with open(tsv, "w") as f:
    print("step\toffered\tserver\tp50\tp99\tp999\tvalid", file=f)
    for step in steps:
        for server in servers:
            row = rows.get((step, server))
            if row is None or row["p50"] is None:
                continue
            print(f"{step}\t{offered_of[step]}\t{server}\t{row['p50']}\t{row['p99']}\t"
                  f"{row['p999']}\t{int(valid(step, server))}", file=f)
PY
cat "$out/latency.md"
echo "raw results: $jsonl" >&2
if command -v gnuplot >/dev/null; then
  bench/plot_latency.sh "$out/latency-medians.tsv" "$out/latency.png" ||
    echo "warning: no plot drawn" >&2
else
  echo "no gnuplot: no plot (bench/plot_latency.sh $out/latency-medians.tsv draws it)" >&2
fi
