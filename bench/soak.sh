#!/usr/bin/env bash
# Soak and fault scenarios against demo/echo_server as a separate process on 127.0.0.1, loaded
# by reactor-load's fault modes. Bounded in time (about 5 minutes; --quick: about 1). Each
# scenario starts a fresh server and measures it from /proc: RSS (VmRSS, and VmHWM for the
# peak), open fds (/proc/PID/fd, sampled), CPU time (utime + stime from /proc/PID/stat).
#
#   churn     2,000 clients for 60 s: connect, echo 0..8 messages of 1 B..64 KiB (every byte
#             verified), close or reset at random, reconnect. Zero wrong bytes, no error; after
#             the clients leave, the server's fds are back to baseline and its RSS near it once
#             glibc hands back the free heap it keeps (malloc_trim(0), called through gdb when
#             gdb is installed).
#   slow      200 clients that send and never read, beside 20 echo clients, for 30 s. Server RSS
#             stays under baseline + 200 x 6 x high-water mark (1 MiB) + 20 x 1 MiB (see the
#             check for the derivation); the echo clients keep being served (messages > 0, no
#             error).
#   fds       server under `prlimit --nofile=256`: 100 connections that echo every 0.5 s, then
#             1,000 more clients (reconnecting 1 s after each close) for 20 s. The 100 keep
#             echoing with no error; the server does not spin (CPU time over the storm < 25% of
#             it); after the clients leave its fds are back to baseline and a new echo works.
#   idle      10,000 connections held idle for 30 s, then each echoes once: all of them echo.
#
# `faults` mode instead runs echo_server, http_server and kv_server under libfiu (fiu-utils):
# fiu-run -x -c 'enable_random name=posix/io/net/*,probability=P' (recv, send, sendmsg,
# shutdown, ...; and posix/io/rw/readv with its short-read variant readv/reduce), for P in 0.001,
# 0.01 and 0.05, 20 s each, while clients drive them: reactor-load churn (echo_server), wrk
# (http_server) and redis-benchmark (kv_server) where installed, and beside them
# tests/fault_clients.py, which checks every byte of every answer and notices a connection
# that neither answers nor closes (a stall, 3 s). Then the faults are turned off
# (fiu-ctrl -c 'disable name=...' PID) and each run must show: the server never crashed and
# answers a fresh client within 1 s; it does not spin (CPU over a 2 s idle window <= 5%); its
# fds are back to baseline and its RSS within 4 MiB of it once malloc_trim(0) returned glibc's
# free heap (16 MiB without gdb); 0 wrong bytes and 0 stalls (connections the injected errors
# closed are counted, and allowed). Injected faults are counted by tests/fiu_count.cpp,
# preloaded beside libfiu. Not reached by the preload: accept4, epoll_*, eventfd and signalfd
# reads (see bench/SOAK.md). Needs fiu-run (fiu-utils: ./build.sh test installs it) and c++.
#
# Prints a summary table and writes it, with the machine and the command, to its section of
# bench/SOAK.md (--out FILE to write elsewhere; the other mode's section is kept). Exit status:
# 0 when every check passed, 1 otherwise, 2 for a usage error.
#
# Usage: bench/soak.sh [--quick] [--scale F] [--time F] [--build DIR] [--out FILE]
#          [--only churn|slow|fds|idle]...
#        bench/soak.sh faults [--quick] [--scale F] [--time F] [--build DIR] [--out FILE]
#          [--only echo|http|kv]... [--probability P]...
#   --quick     one tenth of the clients (at least what each check needs) and of the time
#   --scale F   multiply client counts by F; --time F: multiply durations by F
#   --build DIR build directory holding the demo servers and demo/reactor-load (default
#               build-release, set up as `./build.sh run` does when missing)
#   --probability P  faults mode: the probabilities to run (default 0.001 0.01 0.05)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=build-release
OUT="$ROOT/bench/SOAK.md"
SCALE=1
TIME=1
ONLY=()
MODE=soak
PROBABILITIES=()
COMMAND="bench/soak.sh $*"

usage() {
  sed -n '/^# Usage:/,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) SCALE=0.1 TIME=0.1 ;;
    --scale) SCALE=${2:?--scale needs a value}; shift ;;
    --time) TIME=${2:?--time needs a value}; shift ;;
    --build) BUILD=${2:?--build needs a directory}; shift ;;
    --out) OUT=${2:?--out needs a file}; shift ;;
    --only) ONLY+=("${2:?--only needs a scenario}"); shift ;;
    --probability) PROBABILITIES+=("${2:?--probability needs a value}"); shift ;;
    faults) MODE=faults ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
  shift
done
for n in "$SCALE" "$TIME" ${PROBABILITIES[@]+"${PROBABILITIES[@]}"}; do
  [[ $n =~ ^[0-9]*\.?[0-9]+$ ]] || { echo "not a positive number: $n" >&2; exit 2; }
done
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac

TARGETS=(demo/echo_server demo/reactor-load)
[ "$MODE" = faults ] && TARGETS+=(demo/http_server demo/kv_server)
for t in "${TARGETS[@]}"; do
  [ -x "$BUILD/$t" ] && continue
  if [ ! -d "$BUILD" ]; then
    meson setup "$BUILD" "$ROOT" --buildtype=release -Db_ndebug=true -Ddemo=enabled \
      -Dtests=disabled -Dbench=disabled >/dev/null
  fi
  ninja -C "$BUILD" "${TARGETS[@]}" >/dev/null
  break
done
ECHO_SERVER="$BUILD/demo/echo_server"
LOAD="$BUILD/demo/reactor-load"
command -v prlimit >/dev/null || { echo "prlimit (util-linux) is needed" >&2; exit 1; }
if [ "$MODE" = faults ]; then
  for p in fiu-run fiu-ctrl python3 c++; do
    command -v "$p" >/dev/null ||
      { echo "$p is needed for the faults mode (fiu-utils: ./build.sh test installs it)" >&2; exit 1; }
  done
fi

TMP=$(mktemp -d /tmp/reactor-soak.XXXXXX)
cleanup() {  # ends what this script started and is still running: its own background jobs
  local pid
  for pid in $(jobs -p); do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

# scaled N MIN: N x SCALE (or x TIME with `scaled_time`), at least MIN, as an integer.
scaled() { awk -v n="$1" -v f="$SCALE" -v m="$2" 'BEGIN { v = int(n * f + 0.5); print (v < m ? m : v) }'; }
scaled_time() { awk -v n="$1" -v f="$TIME" -v m="$2" 'BEGIN { v = n * f; print (v < m ? m : v) }'; }
wanted() {
  # Each mode has its own names: the other mode's scenarios are never wanted.
  case "$MODE:$1" in
    soak:echo | soak:http | soak:kv) return 1 ;;
    faults:churn | faults:slow | faults:fds | faults:idle) return 1 ;;
  esac
  [ ${#ONLY[@]} -eq 0 ] && return 0
  local s
  for s in "${ONLY[@]}"; do [ "$s" = "$1" ] && return 0; done
  return 1
}

CLK_TCK=$(getconf CLK_TCK)
# The state letter of /proc/PID/stat (Z once our child exited and awaits wait), or Z when gone.
proc_state() { awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null || echo Z; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
# utime + stime, in clock ticks (fields 14 and 15; the name in field 2 has no spaces here).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
ticks_to_s() { awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
# json FILE KEY: a number from reactor-load's JSON result; -1 when there is none (it failed).
json() {
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], -1))' "$1" "$2" \
    2>/dev/null || echo -1
}

# start_server [PREFIX...]: echo_server on 127.0.0.1:0 (under PREFIX, e.g. prlimit); sets
# SERVER_PID, ADDR, BASE_RSS (KiB), BASE_FDS.
start_server() {
  : >"$TMP/server.out"
  "$@" "$ECHO_SERVER" --listen 127.0.0.1:0 >"$TMP/server.out" 2>"$TMP/server.err" &
  SERVER_PID=$!
  local i
  for i in $(seq 100); do
    ADDR=$(sed -n 's/^listening on //p' "$TMP/server.out")
    [ -n "$ADDR" ] && break
    sleep 0.1
  done
  [ -n "$ADDR" ] || { echo "echo_server did not start: $(cat "$TMP/server.err")" >&2; exit 1; }
  BASE_RSS=$(rss_kib "$SERVER_PID")
  BASE_FDS=$(fds "$SERVER_PID")
  start_sampler
}

# A background sampler of the server's fd count (RSS has the kernel's own peak, VmHWM).
start_sampler() {
  : >"$TMP/fds.samples"
  (while kill -0 "$SERVER_PID" 2>/dev/null; do fds "$SERVER_PID" >>"$TMP/fds.samples"; sleep 0.25; done) &
  SAMPLER_PID=$!
}
peak_fds() { sort -n "$TMP/fds.samples" | tail -1; }

# wait_fds N SECONDS: until the server holds N fds; returns 1 at the bound.
wait_fds() {
  local deadline=$((SECONDS + $2))
  while [ "$(fds "$SERVER_PID")" -ne "$1" ]; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep 0.1
  done
}

# stop_server: SIGTERM, wait; FINAL holds its `final:` line.
stop_server() {
  kill -TERM "$SERVER_PID"
  wait "$SERVER_PID" || true
  kill "$SAMPLER_PID" 2>/dev/null || true
  wait "$SAMPLER_PID" 2>/dev/null || true
  FINAL=$(grep '^final:' "$TMP/server.out" || echo "final: (none)")
}

ROWS=()     # table rows
CHECKS=()   # one line per check: PASS/FAIL and what
FAILED=0
check() {  # check CONDITION-EXIT-STATUS TEXT
  if [ "$1" -eq 0 ]; then CHECKS+=("- PASS: $2"); else CHECKS+=("- **FAIL**: $2"); FAILED=1; fi
  echo "  $([ "$1" -eq 0 ] && echo pass || echo FAIL): $2" >&2
}
row() {  # row CELL...: one table row
  local r="|" c
  for c in "$@"; do r+=" $c |"; done
  ROWS+=("$r")
}

# ---- churn ----
if wanted churn; then
  C=$(scaled 2000 50) T=$(scaled_time 60 5)
  echo "churn: $C clients, $T s" >&2
  start_server
  cpu0=$(cpu_ticks "$SERVER_PID")
  "$LOAD" churn --target "$ADDR" --connections "$C" --duration "$T" --seed 1 --json \
    >"$TMP/churn.json" 2>"$TMP/churn.err" && rc=0 || rc=$?
  cpu1=$(cpu_ticks "$SERVER_PID")
  wait_fds "$BASE_FDS" 30 && back=0 || back=1
  after_fds=$(fds "$SERVER_PID")
  after_rss=$(rss_kib "$SERVER_PID")
  peak_rss=$(hwm_kib "$SERVER_PID")
  # glibc keeps freed heap for reuse (a repeat run does not grow it): what the server itself
  # still holds shows once malloc_trim(0) hands the free pages back, called through gdb.
  trim_rss=""
  if command -v gdb >/dev/null &&
    timeout 60 gdb -p "$SERVER_PID" -batch -ex 'call (int) malloc_trim(0)' >/dev/null 2>&1; then
    trim_rss=$(rss_kib "$SERVER_PID")
  fi
  pf=$(peak_fds)
  stop_server
  wrong=$(json "$TMP/churn.json" wrong_bytes)
  errors=$(json "$TMP/churn.json" errors)
  bytes=$(json "$TMP/churn.json" bytes)
  connects=$(json "$TMP/churn.json" connects)
  # "Near baseline": within 4 MiB of it once the allocator returned its free heap (without gdb:
  # within a quarter of the peak's growth, which glibc's retention may exceed).
  if [ -n "$trim_rss" ]; then
    near=$(( trim_rss - BASE_RSS <= 4096 ? 0 : 1 ))
    near_text="$(mib "$trim_rss") after malloc_trim ($(mib "$after_rss") before: free heap glibc keeps)"
  else
    near=$(awk -v a="$after_rss" -v b="$BASE_RSS" -v p="$peak_rss" \
      'BEGIN { lim = (p - b) / 4; if (lim < 8192) lim = 8192; print (a - b <= lim) ? 0 : 1 }')
    near_text="$(mib "$after_rss") after (no gdb to call malloc_trim)"
  fi
  check $(( rc == 0 && wrong == 0 && errors == 0 ? 0 : 1 )) \
    "churn: $connects connections, $(mib $((bytes / 1024))) verified, $wrong wrong bytes, $errors errors (exit $rc)"
  check "$back" "churn: server fds back to baseline ($after_fds, baseline $BASE_FDS)"
  check "$near" "churn: server RSS back near baseline: $near_text, $(mib "$BASE_RSS") baseline, $(mib "$peak_rss") peak"
  row "churn ($T s, $connects connections)" "$C" "$(mib $((bytes / 1024)))" "$errors" \
    "$(mib "$peak_rss")" "$pf" "$(ticks_to_s $((cpu1 - cpu0)))"
fi

# ---- slow readers ----
if wanted slow; then
  S=$(scaled 200 10) E=$(scaled 20 2) T=$(scaled_time 30 5)
  echo "slow readers: $S never reading + $E echo clients, $T s" >&2
  start_server
  cpu0=$(cpu_ticks "$SERVER_PID")
  "$LOAD" slowread --target "$ADDR" --connections "$S" --duration "$T" --json \
    >"$TMP/slow.json" 2>"$TMP/slow.err" &
  slow_pid=$!
  "$LOAD" echo --target "$ADDR" --connections "$E" --size 4096 --duration "$T" --json \
    >"$TMP/slow-echo.json" 2>"$TMP/slow-echo.err" && erc=0 || erc=$?
  wait "$slow_pid" && src=0 || src=$?
  cpu1=$(cpu_ticks "$SERVER_PID")
  peak_rss=$(hwm_kib "$SERVER_PID")
  wait_fds "$BASE_FDS" 30 && back=0 || back=1
  pf=$(peak_fds)
  stop_server
  # Per slow reader the server holds its output queue, at most the high-water mark (1 MiB) plus
  # the one read that crossed it, and its input buffer, one read's size; reads are at most
  # about a high-water mark here, and each block may have doubled past what it holds: at most
  # 6 x 1 MiB. Per echo client one high-water mark.
  bound=$((BASE_RSS + S * 6 * 1024 + E * 1024))
  sent=$(json "$TMP/slow.json" bytes)
  serrors=$(json "$TMP/slow.json" errors)
  emsgs=$(json "$TMP/slow-echo.json" messages)
  eerrors=$(json "$TMP/slow-echo.json" errors)
  check $(( peak_rss <= bound ? 0 : 1 )) \
    "slow: server peak RSS $(mib "$peak_rss") <= bound $(mib "$bound") (baseline $(mib "$BASE_RSS") + $S x 6 x high-water mark + $E x high-water mark); $(awk -v p="$peak_rss" -v b="$BASE_RSS" -v s="$S" 'BEGIN { printf "%.2f", (p - b) / 1024 / s }') MiB per slow reader"
  check $(( erc == 0 && emsgs > 0 && eerrors == 0 ? 0 : 1 )) \
    "slow: the $E echo clients kept being served: $emsgs messages, $eerrors errors (exit $erc)"
  check $(( src == 0 && serrors == 0 ? 0 : 1 )) \
    "slow: the $S slow readers were neither closed nor reset: $(mib $((sent / 1024))) sent, $serrors errors"
  check "$back" "slow: server fds back to baseline after the clients left"
  row "slow readers ($T s) + $E echo" "$S" "$(mib $((sent / 1024))) sent" "$((serrors + eerrors))" \
    "$(mib "$peak_rss")" "$pf" "$(ticks_to_s $((cpu1 - cpu0)))"
fi

# ---- fd exhaustion ----
if wanted fds; then
  X=100 N=$(scaled 1000 300) T=$(scaled_time 20 3)
  echo "fd exhaustion: nofile 256, $X echoing connections + $N clients, $T s" >&2
  start_server prlimit --nofile=256 --
  # The existing connections: hold for the storm and then some, echo every 0.5 s meanwhile.
  "$LOAD" idle --target "$ADDR" --connections "$X" --duration "$(awk -v t="$T" 'BEGIN { print t + 10 }')" \
    --ping 0.5 --json >"$TMP/existing.json" 2>"$TMP/existing.err" &
  existing_pid=$!
  wait_fds $((BASE_FDS + X)) 30 || echo "  note: the $X existing connections did not all connect" >&2
  cpu0=$(cpu_ticks "$SERVER_PID")
  t0=$(date +%s.%N)
  "$LOAD" idle --target "$ADDR" --connections "$N" --duration "$T" --retry 1 --json \
    >"$TMP/storm.json" 2>"$TMP/storm.err" || true
  t1=$(date +%s.%N)
  cpu1=$(cpu_ticks "$SERVER_PID")
  wait "$existing_pid" && xrc=0 || xrc=$?
  wait_fds "$BASE_FDS" 30 && back=0 || back=1
  "$LOAD" echo --target "$ADDR" --connections 1 --duration 1 --json >"$TMP/after.json" \
    2>"$TMP/after.err" && arc=0 || arc=$?
  peak_rss=$(hwm_kib "$SERVER_PID")
  pf=$(peak_fds)
  stop_server
  window=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  cpu=$(ticks_to_s $((cpu1 - cpu0)))
  xmsgs=$(json "$TMP/existing.json" messages)
  xerrors=$(json "$TMP/existing.json" errors)
  xechoed=$(json "$TMP/existing.json" echoed)
  serrors=$(json "$TMP/storm.json" errors)
  sconnects=$(json "$TMP/storm.json" connects)
  sbytes=$(json "$TMP/storm.json" bytes)
  xbytes=$(json "$TMP/existing.json" bytes)
  check $(( xrc == 0 && xerrors == 0 && xechoed == X && xmsgs > X ? 0 : 1 )) \
    "fds: the $X existing connections kept echoing: $xmsgs echoes, $xechoed/$X in the final round, $xerrors errors (exit $xrc)"
  check "$(awk -v c="$cpu" -v w="$window" 'BEGIN { print (c < w / 4) ? 0 : 1 }')" \
    "fds: no spinning: server CPU $cpu s over the $window s storm ($sconnects connects, $serrors closed at the limit)"
  check $(( pf <= 256 ? 0 : 1 )) "fds: server fds stayed within the limit (peak $pf of 256)"
  check "$back" "fds: server fds back to baseline ($BASE_FDS) after the clients left"
  check "$arc" "fds: recovered: a new echo client is served (exit $arc)"
  row "fd exhaustion (nofile 256, $X existing)" "$N" "$(mib $(((sbytes + xbytes) / 1024)))" \
    "$serrors (closed at limit)" "$(mib "$peak_rss")" "$pf" "$cpu in $window s"
fi

# ---- idle ----
if wanted idle; then
  I=$(scaled 10000 100) T=$(scaled_time 30 3)
  echo "idle: $I connections, $T s" >&2
  start_server
  cpu0=$(cpu_ticks "$SERVER_PID")
  "$LOAD" idle --target "$ADDR" --connections "$I" --duration "$T" --json \
    >"$TMP/idle.json" 2>"$TMP/idle.err" && rc=0 || rc=$?
  cpu1=$(cpu_ticks "$SERVER_PID")
  wait_fds "$BASE_FDS" 30 && back=0 || back=1
  peak_rss=$(hwm_kib "$SERVER_PID")
  pf=$(peak_fds)
  stop_server
  echoed=$(json "$TMP/idle.json" echoed)
  errors=$(json "$TMP/idle.json" errors)
  bytes=$(json "$TMP/idle.json" bytes)
  check $(( rc == 0 && echoed == I && errors == 0 ? 0 : 1 )) \
    "idle: $echoed of $I connections echoed after $T s idle, $errors errors (exit $rc)"
  check $(( pf >= BASE_FDS + I ? 0 : 1 )) "idle: the server held all $I at once (peak fds $pf)"
  check "$back" "idle: server fds back to baseline after the clients left"
  row "idle ($T s, then one echo each)" "$I" "$(mib $((bytes / 1024)))" "$errors" \
    "$(mib "$peak_rss")" "$pf" "$(ticks_to_s $((cpu1 - cpu0)))"
fi

# ---- injected faults (libfiu) ----
if [ "$MODE" = faults ]; then
  [ ${#PROBABILITIES[@]} -eq 0 ] && PROBABILITIES=(0.001 0.01 0.05)
  T=$(scaled_time 20 3) C=$(scaled 200 20) V=$(scaled 16 4) W=$(scaled 64 8)
  FAULT_CLIENTS="$ROOT/tests/fault_clients.py"
  SHIM="$TMP/fiu_count.so"
  c++ -O2 -shared -fPIC -o "$SHIM" "$ROOT/tests/fiu_count.cpp"
  # Where the faults go: the socket calls (posix/io/net/*) and readv (posix/io/rw/readv, and
  # readv/reduce, which shortens reads). Not posix/io/oc/* (an injected close failure leaves the
  # fd open by the tool's doing) nor plain read/write (the loop's eventfd and signalfd cannot
  # fail with the errnos those would inject).
  POINTS=('posix/io/net/*' posix/io/rw/readv posix/io/rw/readv/reduce)

  # fiu_start BINARY P: the server under fiu-run, faults on from its first call; sets
  # SERVER_PID, ADDR, BASE_RSS, BASE_FDS. socket, bind and listen are faulted too, so a start may
  # fail: it must then exit 1 with a message (counted in START_FAILS; anything else is noted in
  # START_BAD), and the server is started again.
  fiu_start() {
    local bin=$1 p=$2 i j rc enable=()
    for j in "${POINTS[@]}"; do enable+=(-c "enable_random name=$j,probability=$p"); done
    START_FAILS=0 START_BAD=""
    for i in $(seq 30); do
      : >"$TMP/server.out"
      rm -f "$TMP/faults.count"
      # fiu-run sets LD_PRELOAD itself: the counting shim joins it in the sh that execs the
      # server (same pid throughout: fiu-run, sh and the server each exec the next).
      # Started with SIGINT and SIGTERM blocked (see fiu_stop), through python3's sigmask.
      FIU_COUNT_FILE="$TMP/faults.count" FIU_COUNT_SO="$SHIM" \
        python3 -c 'import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
os.execvp(sys.argv[1], sys.argv[1:])' \
        fiu-run -x -f "$TMP/fiu" "${enable[@]}" \
        sh -c 'LD_PRELOAD="$LD_PRELOAD $FIU_COUNT_SO" exec "$0" "$@"' \
        "$bin" --listen 127.0.0.1:0 >"$TMP/server.out" 2>"$TMP/server.err" &
      SERVER_PID=$!
      ADDR=""
      for j in $(seq 100); do
        ADDR=$(sed -n 's/^listening on //p' "$TMP/server.out")
        [ -n "$ADDR" ] && break
        [ "$(proc_state "$SERVER_PID")" = Z ] && break
        sleep 0.1
      done
      [ -n "$ADDR" ] && break
      rc=0
      wait "$SERVER_PID" || rc=$?
      START_FAILS=$((START_FAILS + 1))
      if [ "$rc" -ne 1 ] || [ ! -s "$TMP/server.err" ]; then
        START_BAD="exit $rc at start: $(head -1 "$TMP/server.err")"
      fi
    done
    [ -n "$ADDR" ] || { echo "$(basename "$bin") did not start under fiu-run" >&2; exit 1; }
    BASE_RSS=$(rss_kib "$SERVER_PID")
    BASE_FDS=$(fds "$SERVER_PID")
  }

  # fiu_stop: libfiu's remote-control thread starts before main() blocks SIGTERM, and the
  # loop's on_signal() refuses a signal some thread does not block (it could kill the process
  # there, with no shutdown). fiu_start therefore starts the server with SIGINT and SIGTERM
  # blocked, which that thread inherits: a plain SIGTERM then reaches the home loop's signalfd
  # and the server stops as it does without fiu. Bounded: SIGKILL after 10 s. Sets STOP_RC
  # (128 + signal when killed) and FINAL.
  fiu_stop() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    local i
    for i in $(seq 100); do
      [ "$(proc_state "$SERVER_PID")" = Z ] && break
      sleep 0.1
    done
    [ "$(proc_state "$SERVER_PID")" = Z ] || kill -KILL "$SERVER_PID" 2>/dev/null || true
    STOP_RC=0
    wait "$SERVER_PID" || STOP_RC=$?
    FINAL=$(grep '^final:' "$TMP/server.out" || echo "final: (none)")
  }
  final_count() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$FINAL"; }
  wrk_count() {  # wrk_count FILE: "responses errors" from wrk's summary
    awk '/requests in/ { r = $1 } /Socket errors:/ { gsub(",", ""); e = $4 + $6 + $8 + $10 }
         /Non-2xx/ { n = $NF } END { print r + 0, e + n }' "$1"
  }

  for server in echo http kv; do
    wanted "$server" || continue
    case $server in
      echo) bin="$ECHO_SERVER" protocol=echo ;;
      http) bin="$BUILD/demo/http_server" protocol=http ;;
      kv) bin="$BUILD/demo/kv_server" protocol=resp ;;
    esac
    for P in "${PROBABILITIES[@]}"; do
      echo "faults: ${server}_server, P=$P, $T s" >&2
      fiu_start "$bin" "$P"
      python3 "$FAULT_CLIENTS" --protocol "$protocol" --target "$ADDR" --connections "$V" \
        --duration "$T" >"$TMP/verify.json" 2>"$TMP/verify.err" &
      verify_pid=$!
      load_wrong=0
      case $server in
        echo)
          "$LOAD" churn --target "$ADDR" --connections "$C" --duration "$T" --seed 1 --json \
            >"$TMP/churn.json" 2>"$TMP/churn.err" || true
          load_wrong=$(json "$TMP/churn.json" wrong_bytes)
          load_text="reactor-load churn, $C clients: $(json "$TMP/churn.json" connects) connections, $(json "$TMP/churn.json" messages) echoes verified, $load_wrong wrong bytes, $(json "$TMP/churn.json" errors) connections lost"
          ;;
        http)
          if command -v wrk >/dev/null; then
            timeout -s INT $((${T%.*} + 30)) wrk -t1 -c"$W" -d"${T%.*}s" --timeout 2s \
              "http://$ADDR/" >"$TMP/wrk.out" 2>&1 || true
            read -r responses werrors < <(wrk_count "$TMP/wrk.out")
            load_text="wrk -c$W: $responses responses, $werrors socket errors or timeouts"
          else
            load_text="wrk not installed"
          fi
          ;;
        kv)
          if command -v redis-benchmark >/dev/null; then
            # redis-benchmark exits at the first connection the server closes: run it again
            # until the time is up, counting the runs that completed and those that did not.
            end=$((SECONDS + ${T%.*}))
            runs=0 completed=0
            while [ $SECONDS -lt $end ]; do
              runs=$((runs + 1))
              timeout -s INT $((end - SECONDS + 1)) redis-benchmark -h 127.0.0.1 \
                -p "${ADDR##*:}" -c "$W" -n 20000 -r 1000 -P 8 -t set,get -q \
                >"$TMP/rb.out" 2>&1 && completed=$((completed + 1))
            done
            load_text="redis-benchmark -c$W -P 8: $completed of $runs runs of 20,000 SET + 20,000 GET completed, the others ended by a closed connection"
          else
            load_text="redis-benchmark not installed"
          fi
          ;;
      esac
      wait "$verify_pid" || true
      peak_rss=$(hwm_kib "$SERVER_PID")
      [ "$(proc_state "$SERVER_PID")" != Z ] && alive=0 || alive=1
      if [ "$alive" -eq 0 ]; then
        disable=()
        for j in "${POINTS[@]}"; do disable+=(-c "disable name=$j"); done
        fiu-ctrl -f "$TMP/fiu" "${disable[@]}" "$SERVER_PID" >/dev/null
      fi
      # Faults off: a fresh client is answered within 1 s, the fds come back, the loop idles.
      python3 "$FAULT_CLIENTS" --protocol "$protocol" --target "$ADDR" --probe --stall 1 \
        >"$TMP/probe.json" 2>"$TMP/probe.err" && probe=0 || probe=1
      wait_fds "$BASE_FDS" 15 && back=0 || back=1
      after_fds=$(fds "$SERVER_PID")
      idle0=$(cpu_ticks "$SERVER_PID" 2>/dev/null || echo 0)
      sleep 2
      idle1=$(cpu_ticks "$SERVER_PID" 2>/dev/null || echo 0)
      idle_ticks=$((idle1 - idle0))
      after_rss=$(rss_kib "$SERVER_PID" 2>/dev/null || echo 0)
      trim_rss=""
      if [ "$alive" -eq 0 ] && command -v gdb >/dev/null &&
        timeout 60 gdb -p "$SERVER_PID" -batch -ex 'call (int) malloc_trim(0)' >/dev/null 2>&1; then
        trim_rss=$(rss_kib "$SERVER_PID")
      fi
      fiu_stop
      faults=$(awk '$1 == "total" { print $2 }' "$TMP/faults.count" 2>/dev/null || true)
      by_call=$(awk '$1 != "total" { sub("posix/io/(net|rw)/", "", $1); print $2, $1 }' \
        "$TMP/faults.count" 2>/dev/null | sort -rn | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 }')
      v_ex=$(json "$TMP/verify.json" exchanges)
      v_wrong=$(json "$TMP/verify.json" wrong_bytes)
      v_stalls=$(json "$TMP/verify.json" stalls)
      v_closed=$(json "$TMP/verify.json" closed)
      v_refused=$(json "$TMP/verify.json" connect_errors)
      accepted=$(final_count accepted)
      wrong=$((v_wrong < 0 || load_wrong < 0 ? -1 : v_wrong + load_wrong))
      first_stall=$(sed -n 's/.*stalls (first: \(.*\))$/\1/p' "$TMP/verify.err" | head -1)
      label="${server}_server P=$P"
      died=""
      [ "$alive" -ne 0 ] && died=" (it DIED during the load: $(tail -2 "$TMP/server.err" | tr '\n' ' '))"
      check $((alive == 0 && probe == 0 ? 0 : 1)) \
        "$label: never crashed, and answered a fresh client within 1 s once the faults were off$died"
      check $((STOP_RC == 0 && ${#START_BAD} == 0 ? 0 : 1)) \
        "$label: stopped cleanly by SIGTERM (exit $STOP_RC, $FINAL); $START_FAILS start(s) failed under the faults, each must exit 1 with a message${START_BAD:+: not so, $START_BAD}"
      check $((idle_ticks * 100 <= 5 * 2 * CLK_TCK ? 0 : 1)) \
        "$label: no spin: server CPU $(ticks_to_s "$idle_ticks") s over a 2 s idle window (<= 5%)"
      check "$back" "$label: server fds back to baseline ($after_fds, baseline $BASE_FDS)"
      if [ -n "$trim_rss" ]; then
        near=$((trim_rss - BASE_RSS <= 4096 ? 0 : 1))
        near_text="$(mib "$trim_rss") after malloc_trim ($(mib "$after_rss") before), within 4 MiB of"
      else
        near=$((after_rss - BASE_RSS <= 16384 ? 0 : 1))
        near_text="$(mib "$after_rss") (no malloc_trim through gdb), within 16 MiB of"
      fi
      check "$near" "$label: server RSS $near_text its $(mib "$BASE_RSS") baseline (peak $(mib "$peak_rss"))"
      check $((wrong == 0 && v_stalls == 0 && v_ex > 0 ? 0 : 1)) \
        "$label: $v_ex answers verified, $wrong wrong bytes, $v_stalls stalls${first_stall:+ (first: $first_stall)}"
      check $((${faults:-0} > 0 ? 0 : 1)) "$label: ${faults:-no} faults injected${by_call:+ ($by_call)}; load: $load_text"
      row "${server}_server" "$P" "${faults:--}${by_call:+ ($by_call)}" "${accepted:--}" \
        "$v_ex; $load_text" "$((v_closed + v_refused))" "$wrong" "$v_stalls" \
        "$(ticks_to_s "$idle_ticks") s" "$after_fds/$BASE_FDS" \
        "$(mib "${trim_rss:-$after_rss}") / $(mib "$BASE_RSS")"
    done
  done
fi

# ---- report ----
MACHINE="\`$COMMAND\` on $(date -u +%Y-%m-%d), $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'),
$(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM; $(meson introspect "$BUILD" --buildoptions 2>/dev/null | python3 -c 'import json, sys; o = {x["name"]: x["value"] for x in json.load(sys.stdin)}; print(o.get("buildtype", "?"), "build")' 2>/dev/null || echo "build $BUILD"),"
if [ "$MODE" = faults ]; then
  HEADING="## Injected syscall faults (libfiu)"
  {
    echo "$HEADING"
    echo
    echo "$MACHINE one loop per server, on 127.0.0.1;"
    echo "$(dpkg-query -W -f='fiu-utils ${Version}' fiu-utils 2>/dev/null || echo fiu-utils). Each row: the server under"
    echo "\`fiu-run -x -c 'enable_random name=posix/io/net/*,probability=P'\` (and the same for"
    echo "posix/io/rw/readv and readv/reduce) for $T s of load, then the faults turned off."
    echo
    echo "| server | P | faults injected (by call) | connections served | answers | closed by faults | wrong bytes | stalls | idle CPU (spin) | fds after/baseline | RSS after/baseline |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "Faults injected: counted by tests/fiu_count.cpp, preloaded beside libfiu. Connections served:"
    echo "the server's \`final:\` accepted count. Answers: whole answers tests/fault_clients.py checked"
    echo "byte for byte ($V clients), then what the load generator did. Closed by faults: the checking"
    echo "clients' connections that the server closed or reset, or that failed to connect (allowed)."
    echo "Stalls: an answer due on an open connection and nothing for 3 s. Idle CPU: utime + stime"
    echo "over 2 s with no client, faults off. RSS after: VmRSS after malloc_trim(0) through gdb (plain"
    echo "VmRSS without gdb)."
    echo
    echo "Checks:"
    echo
    printf '%s\n' "${CHECKS[@]}"
  } >"$TMP/report.md"
else
  HEADING="## Soak and faults"
  {
    echo "$HEADING"
    echo
    echo "$MACHINE echo_server with one loop, reactor-load with one loop, on 127.0.0.1."
    echo
    echo "| scenario | clients | bytes | errors | peak RSS | peak fds | server CPU s |"
    echo "|---|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "Server figures from /proc/PID: peak RSS is VmHWM, fds are sampled every 0.25 s, CPU is"
    echo "utime + stime over the load. Checks:"
    echo
    printf '%s\n' "${CHECKS[@]}"
  } >"$TMP/report.md"
fi
# Each mode owns one section of $OUT, from its heading to the next "## ": replace it (or add
# it), keep the rest.
python3 - "$OUT" "$HEADING" "$TMP/report.md" <<'PY'
import re, sys
out, heading, report = sys.argv[1], sys.argv[2], open(sys.argv[3]).read().rstrip("\n") + "\n"
try:
    text = open(out).read()
except FileNotFoundError:
    text = ""
parts = [p for p in re.split(r"(?m)^(?=## )", text) if p]
for i, part in enumerate(parts):
    if part.split("\n", 1)[0] == heading:
        parts[i] = report
        break
else:
    parts.append(report)
open(out, "w").write("\n".join(p.rstrip("\n") + "\n" for p in parts))
PY
cat "$TMP/report.md"
exit "$FAILED"
