#!/usr/bin/env bash
# Side by side: the protocol demos against the servers people already run. Benchmarks, not tests.
#
#   bench/protocols.sh [--rounds N] [--duration SEC] [--build DIR] [--ours-args "ARGS"]
#
# - demo/http_server vs nginx (one worker, access_log off, `return 200 "hello\n"`), driven by
#   `wrk -t1 -c64 -dSEC`;
# - demo/kv_server vs redis-server (--save "" --appendonly no), driven by
#   `redis-benchmark -c50 -n 200000 -t ping,set,get,incr -q` at -P 1 and at -P 16.
# Each server runs on CPU0 and each client on CPU1 (taskset), one loop/worker per server. Rounds
# are interleaved (every row, ours then theirs, then the next round), so a slow spell of a shared
# machine hits both sides; each cell is the median over the rounds, and the ratio is ours/theirs.
# Each row also gives the server's CPU time per request (/proc/PID/task/*/schedstat around the
# client run), which still separates the servers when the single-threaded client is what limits
# the rate. redis-benchmark runs once per test (-t ping, set, get, incr) so that CPU time splits.
#
# nginx-light, redis-server and wrk are installed when missing (apt-get; benchmark-only, not in
# build.sh). The demo servers are built in release mode in DIR (default build-protocols).
# --ours-args: extra options for http_server and kv_server (e.g. "--busy-poll 50").
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=5
duration=5
build=build-protocols
ours_args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --ours-args) read -r -a ours_args <<<"$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
if [[ ${#need[@]} -gt 0 ]]; then
  sudo=()
  [[ $(id -u) -ne 0 ]] && sudo=(sudo)
  echo "installing (benchmark only): ${need[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null
fi
# The Debian package starts a redis-server of its own on 6379; ours use other ports.

if [[ -f $build/build.ninja ]]; then
  meson configure "$build" --buildtype=release -Db_ndebug=true >/dev/null
else
  meson setup "$build" --buildtype=release -Db_ndebug=true -Ddemo=enabled -Dtests=disabled \
    -Dbench=disabled >/dev/null
fi
ninja -C "$build" demo/http_server demo/kv_server >/dev/null

work=$(mktemp -d /tmp/reactor-protocols-XXXXXX)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits until something accepts on 127.0.0.1:$1 (bounded: 10 s).
wait_port() {
  local i
  for i in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  exit 1
}

http_port=$(free_port)
nginx_port=$(free_port)
kv_port=$(free_port)
redis_port=$(free_port)

taskset -c 0 "$build/demo/http_server" --listen "127.0.0.1:$http_port" "${ours_args[@]}" >"$work/http.log" 2>&1 &
pids+=($!)
taskset -c 0 "$build/demo/kv_server" --listen "127.0.0.1:$kv_port" "${ours_args[@]}" >"$work/kv.log" 2>&1 &
pids+=($!)

mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
  default_type text/plain;
  server {
    listen 127.0.0.1:$nginx_port;
    location / { return 200 "hello\n"; }
  }
}
EOF
taskset -c 0 nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" >"$work/nginx.log" 2>&1 &
pids+=($!)
taskset -c 0 redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize no --logfile "$work/redis.log" >/dev/null 2>&1 &
pids+=($!)
for port in "$http_port" "$nginx_port" "$kv_port" "$redis_port"; do wait_port "$port"; done

# The server process behind each port, for its CPU time: nginx's one worker is the master's child.
server_pid=([$http_port]=${pids[0]} [$kv_port]=${pids[1]} [$redis_port]=${pids[3]})
server_pid[$nginx_port]=$(pgrep -P "${pids[2]}" | head -1)

# cpu_ns PORT: CPU time (user + system, ns, all threads) the server on PORT has used so far.
cpu_ns() {
  cat /proc/"${server_pid[$1]}"/task/*/schedstat | awk '{s += $1} END {printf "%.0f\n", s}'
}

# results/<row>.<side>: one number per round; results/<row>.<side>.cpu: server CPU ns/request.
mkdir -p "$work/results"
record() { echo "$3" >>"$work/results/$1.$2"; }
record_cpu() { echo "$3" >>"$work/results/$1.$2.cpu"; }

run_wrk() {  # side port
  local out rps requests before
  before=$(cpu_ns "$2")
  out=$(taskset -c 1 wrk -t1 -c64 -d"${duration}s" "http://127.0.0.1:$2/")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  record "http" "$1" "${rps:-0}"
  record_cpu "http" "$1" "$((($(cpu_ns "$2") - before) / ${requests:-1}))"
}

# One redis-benchmark per test, so that the server's CPU time can be split per test (PING runs
# PING_INLINE and PING_MBULK: both rows get the CPU time per request of the pair).
run_redis_benchmark() {  # side port pipeline
  local line name rps test before rows cpu
  for test in ping set get incr; do
    before=$(cpu_ns "$2")
    rows=()
    while IFS= read -r line; do
      name=${line%%:*}
      rps=$(awk '{print $1}' <<<"${line#*: }")
      record "${name}_P$3" "$1" "$rps"
      rows+=("${name}_P$3")
    done < <(taskset -c 1 redis-benchmark -p "$2" -c 50 -n 200000 -t "$test" -P "$3" -q \
               2>/dev/null | tr '\r' '\n' | grep ' requests per second' |
               sed 's/^ *//' | grep -v 'rps=')
    cpu=$((($(cpu_ns "$2") - before) / (200000 * ${#rows[@]})))
    for name in "${rows[@]}"; do record_cpu "$name" "$1" "$cpu"; done
  done
}

for round in $(seq "$rounds"); do
  echo "round $round/$rounds" >&2
  run_wrk ours "$http_port"
  run_wrk theirs "$nginx_port"
  for pipeline in 1 16; do
    run_redis_benchmark ours "$kv_port" "$pipeline"
    run_redis_benchmark theirs "$redis_port" "$pipeline"
  done
done

median() { sort -g "$1" | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

echo
echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(uname -r)"
echo "rounds: $rounds, median requests/s; servers on CPU0, clients on CPU1"
echo "cpu: the server's CPU time (user + system) per request, ns, median; cpu ratio: theirs/ours"
echo "(how many times more requests ours serves per CPU second: what separates the servers when"
echo "the client, one thread on one core, is the bottleneck and the rates tie)"
printf '%-34s %10s %10s %7s %9s %9s %7s\n' "row" "ours" "theirs" "ratio" "cpu ours" "theirs" \
  "ratio"
row() {  # label key
  local ours theirs ours_cpu theirs_cpu
  ours=$(median "$work/results/$2.ours")
  theirs=$(median "$work/results/$2.theirs")
  ours_cpu=$(median "$work/results/$2.ours.cpu")
  theirs_cpu=$(median "$work/results/$2.theirs.cpu")
  printf '%-34s %10.0f %10.0f %6.2fx %9.0f %9.0f %6.2fx\n' "$1" "$ours" "$theirs" \
    "$(awk -v a="$ours" -v b="$theirs" 'BEGIN {print (b > 0) ? a / b : 0}')" \
    "$ours_cpu" "$theirs_cpu" \
    "$(awk -v a="$ours_cpu" -v b="$theirs_cpu" 'BEGIN {print (a > 0) ? b / a : 0}')"
}
row "http GET  wrk -t1 -c64 (vs nginx)" http
for pipeline in 1 16; do
  for name in PING_INLINE PING_MBULK SET GET INCR; do
    row "$(printf '%-11s -P %-2s (vs redis)' "$name" "$pipeline")" "${name}_P$pipeline"
  done
done
