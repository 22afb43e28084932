#!/usr/bin/env bash
# Timers and cross-thread hand-off, the reactor against its peers: runs bench/loop_latency for
# every loop, rounds interleaved (the order reversed every other round, so neither drift nor
# warm-up favours one), medians of N rounds. Prints two Markdown tables, with ratios to the best
# peer: timer lateness (one-shot timers at random delays in [50 us, 10 ms], one pending at a
# time) and post-to-run latency from another thread (loop sleeping, then busy-polling).
#
#   bench/loop_latency.sh [--build DIR] [--rounds N] [--out DIR] [--timers N] [--posts N]
#                         [--seed S]
#
# DIR: a release build with -Dpeers=enabled (default build-peers; loop_latency needs libuv,
# libevent with libevent_pthreads and Boost, not Google Benchmark). Defaults: 3 rounds, 1,000
# timers and 20,000 posts per run (about a minute per round). Round r uses seed S + r - 1, the
# same delays and gaps for every loop in that round. loop_latency pins itself
# (pthread_setaffinity_np): the loop's thread on CPU 0, the poster on CPU 1.
# Writes OUT/loop_latency.jsonl (one line per run: round, row, loop_latency's JSON) and
# OUT/loop_latency.md (the machine and the tables); OUT defaults to DIR/bench-results.
# Rows: the reactor (default timer slack and 1 ns), libuv (ms timers: delays rounded up),
# libevent (default, 1 ns slack, and EVENT_BASE_FLAG_PRECISE_TIMER), Asio; for post, each loop
# sleeping and busy-polling (reactor Options::busy_poll; the peers' non-blocking run in a loop).
set -euo pipefail
cd "$(dirname "$0")/.."

command_line="bench/loop_latency.sh $*"
build="build-peers"
rounds=3
out=
timers=1000
posts=20000
seed=1
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --timers) timers=$2; shift 2 ;;
    --posts) posts=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--rounds N] [--out DIR] [--timers N] [--posts N] [--seed S]" >&2; exit 2 ;;
  esac
done
out=${out:-$build/bench-results}
mkdir -p "$out"
bin=$build/bench/loop_latency
[ -x "$bin" ] || { echo "missing $bin: meson setup $build --buildtype=release -Dpeers=enabled, then ninja -C $build bench/loop_latency" >&2; exit 1; }
jsonl=$out/loop_latency.jsonl
: >"$jsonl"

# ROW|ARGUMENTS: the row's name in the tables and loop_latency's arguments.
rows=(
  "reactor|timers --loop reactor --count $timers"
  "reactor-slack1ns|timers --loop reactor-slack1ns --count $timers"
  "libuv|timers --loop libuv --count $timers"
  "libevent|timers --loop libevent --count $timers"
  "libevent-slack1ns|timers --loop libevent --timer-slack 1 --count $timers"
  "libevent-precise|timers --loop libevent-precise --count $timers"
  "asio|timers --loop asio --count $timers"
  "reactor|post --loop reactor --count $posts"
  "libuv|post --loop libuv --count $posts"
  "libevent|post --loop libevent --count $posts"
  "asio|post --loop asio --count $posts"
  "reactor busy|post --loop reactor --busy-poll --count $posts"
  "libuv busy|post --loop libuv --busy-poll --count $posts"
  "libevent busy|post --loop libevent --busy-poll --count $posts"
  "asio busy|post --loop asio --busy-poll --count $posts"
)

# CLOCK_MONOTONIC_COARSE (clock id 6) advances once a tick: it is libevent's default clock.
coarse_us=$(python3 -c 'import time; print(round(time.clock_getres(6) * 1e6))')
machine="$(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r), shell's timer slack $(cat /proc/$$/timerslack_ns) ns, CLOCK_MONOTONIC_COARSE resolution $coarse_us us"
libraries="libuv $(pkg-config --modversion libuv 2>/dev/null || echo '?'), libevent $(pkg-config --modversion libevent 2>/dev/null || echo '?'), Boost $(sed -n 's/^#define BOOST_LIB_VERSION "\(.*\)"/\1/p' /usr/include/boost/version.hpp 2>/dev/null | tr _ .)"
echo "machine: $machine" >&2
echo "load before: $(uptime)" >&2
start=$SECONDS
for round in $(seq "$rounds"); do
  order=("${rows[@]}")
  if [ $((round % 2)) -eq 0 ]; then
    order=()
    for ((i = ${#rows[@]} - 1; i >= 0; i--)); do order+=("${rows[i]}"); done
  fi
  for row in "${order[@]}"; do
    name=${row%%|*}
    # shellcheck disable=SC2086 # the arguments are split into words on purpose
    result=$("$bin" ${row#*|} --seed $((seed + round - 1)) --json)
    printf '{"round": %d, "row": "%s", "result": %s}\n' "$round" "$name" "$result" >>"$jsonl"
  done
  echo "round $round/$rounds done after $((SECONDS - start)) s ($(uptime | sed 's/.*load/load/'))" >&2
done
echo "load after: $(uptime)" >&2

python3 - "$jsonl" "$rounds" "$machine" "$libraries" "$timers" "$posts" "$command_line" \
  >"$out/loop_latency.md" <<'PY'
import json, statistics, sys
from collections import defaultdict

path, rounds, machine, libraries, timers, posts, command = sys.argv[1:]
runs = [json.loads(line) for line in open(path)]
stats = defaultdict(lambda: defaultdict(list))  # (kind, row) -> field -> per-round values
info = {}
for r in runs:
    res = r["result"]
    key = (res["kind"], r["row"])
    values = res["lateness_us"] if res["kind"] == "timers" else res["latency_us"]
    for field in ("p50", "p99", "max"):
        stats[key][field].append(values[field])
    stats[key]["early"].append(res["early"] * 100 / res["count"])
    info[key] = res

def med(key, field):
    return statistics.median(stats[key][field])

def spread(key):
    v = stats[key]["p50"]
    m = statistics.median(v)
    return f"{(max(v) - min(v)) / m:.0%}" if len(v) > 1 and m > 0 else "-"

def us(v):
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"

def ratio(key, field, peers):
    best = min((med(p, field) for p in peers if p in stats), default=None)
    return f"{med(key, field) / best:.2f}" if best and best > 0 else "-"

print(f"Machine: {machine}; {libraries}. Command: `{command.strip()}`.\n")
print(f"Medians of {rounds} round{'' if rounds == '1' else 's'} (loop thread pinned to CPU 0, poster to CPU 1); p50 spread is "
      "(max - min) / median of the per-round p50s.\n")

print(f"**Timer lateness** ({timers} one-shot timers per run, one pending at a time, delays "
      "uniform in [50 us, 10 ms]; lateness = callback start - (armed + delay), us). Ratios are "
      "to the best peer that sleeps in an epoll timeout (libuv, libevent, libevent at 1 ns "
      "slack); timerfd rows are for reference. libuv takes milliseconds: its delays are rounded "
      "up to whole ms, as a libuv user must. libevent's default clock is "
      "CLOCK_MONOTONIC_COARSE (one tick: see the machine line).\n")
print("| loop | waits in | timer slack | p50 | p99 | max | early | p50 spread "
      "| p50 / best epoll peer | p99 / best epoll peer |")
print("|---" * 10 + "|")
epoll_peers = [("timers", p) for p in ("libuv", "libevent", "libevent-slack1ns")]
for row in ("reactor", "reactor-slack1ns", "libuv", "libevent", "libevent-slack1ns",
            "libevent-precise", "asio"):
    key = ("timers", row)
    if key not in stats:
        continue
    res = info[key]
    slack = res["timer_slack_ns"]
    slack = f"{slack // 1000} us" if slack >= 1000 else f"{slack} ns"
    print(f"| {row} | {res['timer_wait']} | {slack} | {us(med(key, 'p50'))} | "
          f"{us(med(key, 'p99'))} | {us(med(key, 'max'))} | {med(key, 'early'):.1f}% | "
          f"{spread(key)} | {ratio(key, 'p50', epoll_peers)} | {ratio(key, 'p99', epoll_peers)} |")

print(f"\n**Post-to-run latency** ({posts} posts per run, one at a time, 20-200 us apart; "
      "poster stamp to the task's start, us). Sleeping: every post wakes the loop. Busy: the "
      "loop never sleeps (reactor Options::busy_poll = 10 s; libuv uv_run(UV_RUN_NOWAIT), "
      "libevent event_base_loop(EVLOOP_NONBLOCK), Asio io_context::poll(), each called in a "
      "loop: not the peers' usual mode). Ratios are to the best peer in the same mode.\n")
print("| loop | mode | cross-thread path | p50 | p99 | max | p50 spread | p50 / best peer "
      "| p99 / best peer |")
print("|---" * 9 + "|")
paths = {"reactor": "EventLoop::post", "libuv": "uv_async_send",
         "libevent": "event_active (evthread_use_pthreads)", "asio": "boost::asio::post"}
for mode, suffix in (("sleeping", ""), ("busy-poll", " busy")):
    peers = [("post", p + suffix) for p in ("libuv", "libevent", "asio")]
    for loop in ("reactor", "libuv", "libevent", "asio"):
        key = ("post", loop + suffix)
        if key not in stats:
            continue
        print(f"| {loop} | {mode} | {paths[loop]} | {us(med(key, 'p50'))} | "
              f"{us(med(key, 'p99'))} | {us(med(key, 'max'))} | {spread(key)} | "
              f"{ratio(key, 'p50', peers)} | {ratio(key, 'p99', peers)} |")
PY
cat "$out/loop_latency.md"
echo "raw results: $jsonl ($((SECONDS - start)) s)" >&2
