#!/usr/bin/env bash
# Checks what an embedder gets: `meson install --destdir` yields the public headers under
# include/reactor/, the versioned shared library and reactor.pc, and the README's echo-server
# example compiles and links against them through pkg-config.
#   embed_check.sh SOURCE_ROOT BUILD_ROOT
set -euo pipefail
src=$1 build=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

meson install -C "$build" --destdir "$tmp/root" --no-rebuild --quiet >/dev/null
prefix=$(meson introspect "$build" --buildoptions |
  python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"]=="prefix"))')
root=$tmp/root$prefix
for h in event_loop connection tcp_server listener connector buffer address socket function result timer_queue loop_thread; do
  [[ -f $root/include/reactor/$h.hpp ]] || { echo "missing header: include/reactor/$h.hpp"; exit 1; }
done
pc=$(find "$root" -name reactor.pc | head -n 1)
[[ -n $pc ]] || { echo "missing reactor.pc"; exit 1; }
ls "$(dirname "$(dirname "$pc")")"/libreactor.so.0.* >/dev/null 2>&1 ||
  ls "$(dirname "$(dirname "$pc")")"/libreactor.a >/dev/null 2>&1 ||
  { echo "missing the versioned library next to $pc"; exit 1; }

# The README's example, verbatim: the block after the "A complete echo server" heading.
awk '/^### A complete echo server/{f=1} f&&/^```cpp/{p=1;next} p&&/^```/{exit} p' "$src/README.md" >"$tmp/main.cpp"
[[ -s $tmp/main.cpp ]] || { echo "README example not found"; exit 1; }
export PKG_CONFIG_PATH=$(dirname "$pc")
flags=$(pkg-config --define-variable=prefix="$root" --cflags --libs reactor)
${CXX:-c++} -std=c++20 -Wall -Wextra -Werror "$tmp/main.cpp" $flags -Wl,-rpath,"$(dirname "$(dirname "$pc")")" -o "$tmp/example"
echo "installed headers, library and reactor.pc OK; README example compiles and links"
