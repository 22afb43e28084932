#!/usr/bin/env bash
# The README's two commands, and CI's sanitizer runs:
#   ./build.sh run [SERVER ARGS...]   install what is missing, build the echo server (release), run it
#   ./build.sh test [plain|asan|tsan] install what is missing, build everything, run the tests
#   ./build.sh coverage               the plain suite in a -O0 build; line/branch coverage of reactor/
# Installs missing Debian packages (apt-get, via sudo when not root); rebuilds incrementally.
set -euo pipefail
cd "$(dirname "$0")"

run_pkgs=(meson ninja-build g++ pkg-config libcli11-dev nlohmann-json3-dev)
test_pkgs=("${run_pkgs[@]}" libgtest-dev libgmock-dev libbenchmark-dev python3 curl redis-tools
           fiu-utils cmake libc-ares-dev systemd iproute2)

install_missing() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  local sudo=()
  [[ $(id -u) -ne 0 ]] && sudo=(sudo)
  echo "installing: ${missing[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# quietly COMMAND...: runs COMMAND, showing its output only when it fails (meson prints its
# errors on stdout).
quietly() {
  local out
  if ! out=$("$@" 2>&1); then
    printf '%s\n' "$out" >&2
    return 1
  fi
}

# setup DIR ARGS...: configure once, reconfigure only when the options differ. A directory made
# before an option existed does not know it (meson configure refuses): set it up again then.
setup() {
  local dir=$1
  shift
  if [[ -f $dir/build.ninja ]]; then
    meson configure "$dir" "$@" >/dev/null 2>&1 || quietly meson setup --reconfigure "$dir" "$@"
  else
    quietly meson setup "$dir" "$@"
  fi
}

cmd=${1:-}
shift || true
case $cmd in
  run)
    install_missing "${run_pkgs[@]}"
    setup build-release --buildtype=release -Db_ndebug=true -Ddemo=enabled -Dtests=disabled -Dbench=disabled
    ninja -C build-release demo/echo_server >/dev/null
    [[ $# -eq 0 ]] && set -- --listen 127.0.0.1:7777
    exec ./build-release/demo/echo_server "$@"
    ;;
  test | coverage)
    install_missing "${test_pkgs[@]}"
    mode=${1:-plain}
    [[ $cmd == coverage ]] && mode=coverage
    case $mode in
      plain) dir=build; opts=(-Dwerror=true -Db_sanitize=none) ;;
      asan) dir=build-asan; opts=(--buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false -Dbench=disabled
                                 "-Dcpp_args=-fno-sanitize-recover=all" "-Dcpp_link_args=-fno-sanitize-recover=all") ;;
      tsan) dir=build-tsan; opts=(--buildtype=debug -Db_sanitize=thread -Db_lundef=false -Dbench=disabled) ;;
      # -O0 (buildtype debug) so that branches map to the source; lcov, not gcovr: Debian 12's
      # gcovr 5.2 stops on this tree with a merge assertion.
      coverage) dir=build-coverage; opts=(--buildtype=debug -Db_coverage=true -Dbench=disabled)
                install_missing lcov ;;
      *) echo "unknown test mode: $mode (plain, asan or tsan)" >&2; exit 2 ;;
    esac
    # ThreadSanitizer runs the cross-thread suite only (tests/meson.build): build just that.
    suites=() targets=()
    [[ $mode == tsan ]] && suites=(--suite threads) targets=(
      tests/test_threads tests/test_event_loop tests/test_tcp_server tests/test_demo
      tests/test_http_server tests/test_kv_server tests/test_tcp_proxy tests/test_udp_echo
      demo/echo_server demo/reactor-load demo/http_server demo/kv_server demo/tcp_proxy
      demo/udp_echo)
    # enabled, not auto: a missing GoogleTest, CLI11 or c-ares is an error, not a smaller suite.
    setup "$dir" -Dtests=enabled -Ddemo=enabled -Dresolver=enabled "${opts[@]}"
    ninja -C "$dir" "${targets[@]}"
    # No stale results: a report or log left by an earlier run must not count for this one.
    rm -rf "$dir/tests/results" "$dir/meson-logs/testlog.json"
    [[ $mode == coverage ]] && find "$dir" -name '*.gcda' -delete
    rc=0
    meson test -C "$dir" --no-rebuild --print-errorlogs --num-processes 2 "${suites[@]}" || rc=$?
    python3 tests/count_results.py "$dir" "${mode/coverage/plain}" || rc=1
    if [[ $mode == coverage ]]; then
      # GCC's exception edges count as branches here (lcov 1.16 cannot leave them out).
      lcov_opts=(--quiet --rc lcov_branch_coverage=1)
      lcov "${lcov_opts[@]}" --capture --directory "$dir" -o "$dir/coverage-all.info" 2>/dev/null
      lcov "${lcov_opts[@]}" --extract "$dir/coverage-all.info" "$PWD/reactor/*" -o "$dir/coverage.info"
      lcov --rc lcov_branch_coverage=1 --list "$dir/coverage.info" | sed "s|$PWD/||"
      genhtml --quiet --branch-coverage -o "$dir/coverage-html" "$dir/coverage.info" >/dev/null
      lcov --rc lcov_branch_coverage=1 --summary "$dir/coverage.info" 2>&1 |
        sed -n 's/^ *\(lines\|branches\)\.*: /reactor\/ \1: /p'
      # The same without GCC's exception edges (gcov marks them "(throw)"), over reactor/*.cpp:
      # what gcovr --exclude-throw-branches would report, had it run on this tree.
      for gcda in "$dir"/reactor/libreactor.so.*.p/*.cpp.gcda; do
        src=$(basename "$gcda" .gcda)
        (cd "$dir" && gcov -t -b -c "${gcda#"$dir"/}" 2>/dev/null) |
          awk -v src="reactor/$src" '/Source:/ { on = index($0, src) > 0 } on'
      done | awk '/^branch/ && !/\(throw\)/ { n++; if (!/never executed|taken 0$|taken 0 /) t++ }
        END { if (n) printf "reactor/*.cpp branches without exception edges: %.1f%% (%d of %d)\n", 100 * t / n, t, n }'
      echo "per-line detail: $dir/coverage-html/index.html"
    fi
    exit $rc
    ;;
  *)
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    [[ $cmd == -h || $cmd == --help ]] && exit 0
    exit 2
    ;;
esac
