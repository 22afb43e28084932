#!/usr/bin/env bash
# Builds the libFuzzer targets with clang 14 and runs each for a bounded time.
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET] [--update-corpus] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 30. TARGETs are address, buffer, connection (default: all).
# Installs clang-14 and libclang-rt-14-dev (and meson, ninja) with apt-get when missing, so it
# runs on a fresh Debian 12. Configures build-fuzz (BUILD_DIR overrides it) at the repository
# root. Each fuzzer runs over a temporary copy of tests/fuzz/corpus/<target>/, so the committed
# corpus does not grow; with --update-corpus the new inputs are merged into it (-merge=1 keeps
# only those that add coverage). Prints one line per target; exits 1 if any fuzzer crashed,
# hung or leaked, after printing the file that reproduces it:
#   build-fuzz/tests/fuzz/fuzz_<target> <crash file>
set -euo pipefail

seconds=30
update_corpus=0
targets=()
for arg in "$@"; do
  case "$arg" in
    --update-corpus) update_corpus=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    ''|*[!0-9]*) targets+=("$arg") ;;
    *) seconds="$arg" ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(address buffer connection)

root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${BUILD_DIR:-$root/build-fuzz}"
corpus_root="$root/tests/fuzz/corpus"

# --- tools -------------------------------------------------------------------------------------
missing=()
command -v clang++-14 >/dev/null || missing+=(clang-14)
# libFuzzer and the sanitizer runtimes.
ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 \
  || missing+=(libclang-rt-14-dev)
command -v meson >/dev/null || missing+=(meson)
command -v ninja >/dev/null || missing+=(ninja-build)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- build -------------------------------------------------------------------------------------
if [ ! -f "$build/build.ninja" ]; then
  CXX=clang++-14 meson setup "$build" "$root" -Dfuzz=true -Dtests=disabled -Ddemo=disabled \
    -Dbench=disabled --default-library=static
fi
ninja -C "$build" "${targets[@]/#/tests/fuzz/fuzz_}"

# --- run ---------------------------------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/reactor-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT
artifacts="$build/fuzz-artifacts"
mkdir -p "$artifacts"

# Scripts (buffer, connection) are worth their full length from the start: without these,
# libFuzzer grows the input length slowly from the seeds' size and a short run stays shallow.
max_len_of() {
  case "$1" in
    address) echo "-max_len=512" ;;
    buffer) echo "-max_len=1536 -len_control=0" ;;      # 512 steps of 3 bytes
    connection) echo "-max_len=514 -len_control=0" ;;   # 2 header bytes, 256 steps of 2
    *) echo "" ;;
  esac
}

stat_of() { sed -n "s/^stat::$1: *//p" "$2" | tail -n1; }

failed=0
for t in "${targets[@]}"; do
  exe="$build/tests/fuzz/fuzz_$t"
  seeds="$corpus_root/$t"
  corpus="$work/$t"
  mkdir -p "$corpus" "$artifacts/$t"
  [ -d "$seeds" ] && cp -r "$seeds"/. "$corpus"/
  seed_count=$(find "$corpus" -type f | wc -l)
  log="$artifacts/$t/last-run.log"
  rc=0
  # shellcheck disable=SC2046
  "$exe" "$corpus" $(max_len_of "$t") -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/$t/" >"$log" 2>&1 || rc=$?
  runs=$(stat_of number_of_executed_units "$log")
  rate=$(stat_of average_exec_per_sec "$log")
  peak=$(stat_of peak_rss_mb "$log")
  last=$(grep -E '^#[0-9]+' "$log" | tail -n1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(find "$corpus" -type f | wc -l)
  if [ "$rc" -eq 0 ]; then
    printf 'fuzz_%-10s ok    %s s, %s runs, %s exec/s, cov %s, ft %s, corpus %s -> %s, peak rss %s MB\n' \
      "$t" "$seconds" "${runs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$seed_count" "$corp" "${peak:-?}"
    if [ "$update_corpus" -eq 1 ]; then
      mkdir -p "$seeds"
      before=$(find "$seeds" -type f | wc -l)
      "$exe" -merge=1 "$seeds" "$corpus" >"$artifacts/$t/merge.log" 2>&1
      after=$(find "$seeds" -type f | wc -l)
      echo "  corpus $seeds: $before -> $after files"
    fi
  else
    failed=1
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
    printf 'fuzz_%-10s FAIL  exit %s after %s runs; log %s\n' "$t" "$rc" "${runs:-?}" "$log"
    grep -m1 -E 'ERROR: |fuzz_[a-z]+: |deadly signal|timeout' "$log" | sed 's/^/  /' || true
    if [ -n "$crash" ]; then
      echo "  crash file: $crash"
      echo "  reproduce:  $exe $crash"
    fi
  fi
done
exit "$failed"
