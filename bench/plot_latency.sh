#!/usr/bin/env bash
# The latency plot of the README: bench/latency.sh's medians, p50 (left) and p99 (right) against
# the offered load, log scale, one line per server. Only valid rows are drawn (a row whose
# probe did not keep up measured the client, not the server), so a line stops where its server's
# rows turn invalid. The A/A control (reactor-AA) is dashed, beside the reactor in a paler red.
#
#   bench/plot_latency.sh [MEDIANS_TSV] [OUTPUT_PNG]
#
# Defaults: build-peers/bench-results/latency-medians.tsv -> bench/latency.png. Needs python3
# and gnuplot (apt-get install gnuplot-nox).
set -euo pipefail
cd "$(dirname "$0")/.."
input=${1:-build-peers/bench-results/latency-medians.tsv}
output=${2:-bench/latency.png}
command -v gnuplot >/dev/null || { echo "missing gnuplot (apt-get install gnuplot-nox)" >&2; exit 1; }
p50=$(mktemp)
p99=$(mktemp)
styles=$(mktemp)
trap 'rm -f "$p50" "$p99" "$styles"' EXIT

# One table per percentile: a row per step (its x label, the offered rate), a column per server,
# NaN where the row is invalid or missing (gnuplot leaves a gap there).
python3 - "$input" "$p50" "$p99" "$styles" <<'PY'
import csv, sys

# The same colour and point for a server in every plot, whichever servers were measured.
style = {
    "floor": ("#000000", 1, 1), "reactor": ("#d62728", 7, 1), "reactor-AA": ("#ff9896", 6, 2),
    "reactor-busypoll": ("#9467bd", 5, 1), "floor-spin": ("#7f7f7f", 4, 1),
    "libuv": ("#1f77b4", 9, 1), "libevent": ("#2ca02c", 11, 1), "asio": ("#ff7f0e", 13, 1),
}
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
servers = [s for s in style if any(r["server"] == s and r["valid"] == "1" for r in rows)]
left_out = [s for s in style if s not in servers and any(r["server"] == s for r in rows)]
if left_out:
    print(f"no valid row, not drawn: {' '.join(left_out)}", file=sys.stderr)
if not servers:
    sys.exit("no valid row in " + sys.argv[1] + ": nothing to plot")
steps = sorted({(int(r["step"]), int(r["offered"])) for r in rows})
cell = {(int(r["step"]), r["server"]): r for r in rows}
for key, path in (("p50", sys.argv[2]), ("p99", sys.argv[3])):
    with open(path, "w") as f:
        print("label offered " + " ".join(servers), file=f)
        for step, offered in steps:
            values = []
            for s in servers:
                r = cell.get((step, s))
                values.append(r[key] if r and r["valid"] == "1" else "NaN")
            rate = f"{offered / 1e6:.2f}M" if offered >= 1e6 else f"{offered / 1e3:.1f}k"
            print(f'"{step}%\\n{rate}" {offered} ' + " ".join(values), file=f)
with open(sys.argv[4], "w") as f:
    for i, s in enumerate(servers, start=1):
        colour, point, dash = style[s]
        print(f'set linetype {i} lc rgb "{colour}" lw 1.5 pt {point} dt {dash}', file=f)
PY

columns=$(head -1 "$p50" | wc -w)
gnuplot <<GP
set terminal pngcairo size 1000,480 font "sans,9"
set output "$output"
set multiplot layout 1,2 title "Open-loop echo latency versus offered load (medians, bench/latency.sh; invalid rows left out)"
load "$styles"
set logscale y
set ytics (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
set grid xtics ytics
set xlabel "offered load (% of the probe's ceiling, msg/s)" offset 0,-0.5
set ylabel "latency from due time (us)"
set key outside below horizontal maxcols 4
set xtics nomirror
set offsets graph 0.04, graph 0.04, 0, 0
set style data linespoints
set title "p50"
plot for [i=3:$columns] "$p50" using 2:i:xtic(1) title columnheader(i) lt (i-2)
set title "p99"
plot for [i=3:$columns] "$p99" using 2:i:xtic(1) title columnheader(i) lt (i-2)
unset multiplot
GP
echo "wrote $output" >&2
