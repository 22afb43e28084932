#!/usr/bin/env bash
# The plot of the README's results section: compare.sh's medians as a clustered bar chart,
# each scenario's rate relative to the floor (floor = 1.0; its absolute rate under the
# scenario's name), one bar per server.
#
#   bench/plot.sh [COMPARE_JSONL] [OUTPUT_PNG]
#
# Defaults: build-peers/bench-results/compare.jsonl -> bench/results.png. Needs python3 and
# gnuplot (apt-get install gnuplot-nox).
set -euo pipefail
cd "$(dirname "$0")/.."
input=${1:-build-peers/bench-results/compare.jsonl}
output=${2:-bench/results.png}
command -v gnuplot >/dev/null || { echo "missing gnuplot (apt-get install gnuplot-nox)" >&2; exit 1; }
data=$(mktemp)
trap 'rm -f "$data"' EXIT

python3 - "$input" >"$data" <<'PY'
import json, statistics, sys
from collections import defaultdict

rates = defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    res = r["result"]
    rates[(r["scenario"], r["server"])].append(
        res["conns_per_s"] if r["scenario"] == "accept" else res["msgs_per_s"])
servers = [s for s in ("floor", "reactor", "libuv", "libevent", "asio")
           if any(k[1] == s for k in rates)]
labels = {"pingpong": "ping-pong 1 conn", "c64d16": "64 conns depth 16",
          "c1000d1": "1000 conns", "c64x16k": "64 conns 16 KiB", "accept": "accept 8 clients"}
print("scenario " + " ".join(servers))
for sc in labels:
    if (sc, "floor") not in rates:
        continue
    floor = statistics.median(rates[(sc, "floor")])
    unit = "conn/s" if sc == "accept" else "msg/s"
    absolute = f"{floor / 1e6:.2f}M" if floor >= 1e6 else f"{floor / 1e3:.0f}k"
    cells = []
    for s in servers:
        cells.append(f"{statistics.median(rates[(sc, s)]) / floor:.3f}" if rates[(sc, s)] else "NaN")
    print(f'"{labels[sc]}\\n(floor {absolute} {unit})" ' + " ".join(cells))
PY

columns=$(head -1 "$data" | wc -w)
gnuplot <<GP
set terminal pngcairo size 820,420 font "sans,9"
set output "$output"
set title "Echo on loopback, relative to the hand-written epoll floor (medians, bench/compare.sh)"
set ylabel "rate / floor's rate"
set yrange [0:*]
set grid ytics
set key outside top center horizontal
set bmargin 4
set style data histogram
set style histogram cluster gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set xtics nomirror
plot for [i=2:$columns] "$data" using i:xtic(1) title columnheader(i)
GP
echo "wrote $output" >&2
