#!/usr/bin/env bash
# Build a Go command once, from the Go module proxy, into a cache outside the repo, and
# print the binary's path; later calls print the cached path at once.  The build.sh of
# each tool module here (helm/, promtool/) calls this.
#
#   go-tool.sh MODULE_DIR NAME KEY PACKAGE [go build flags ...]
#       builds PACKAGE within the Go module MODULE_DIR (whose go.mod pins its version)
#       -> ~/.cache/celery-taskrun/tools/NAME-KEY/NAME
#
# KEY names what was built (a version, plus a hash of local sources if any): a new key
# builds anew.  Progress goes to stderr, the path alone to stdout; the build log is kept
# beside the binary.
set -euo pipefail

if [[ $# -lt 4 ]]; then
    echo "usage: go-tool.sh MODULE_DIR NAME KEY PACKAGE [go build flags ...]" >&2
    exit 2
fi
module_dir="$1" name="$2" key="$3" package="$4"
shift 4
cache="${XDG_CACHE_HOME:-$HOME/.cache}/celery-taskrun/tools"
target="$cache/$name-$key"
binary="$target/$name"

if [[ -x "$binary" ]]; then
    echo "$binary"
    exit 0
fi
command -v go >/dev/null || { echo "go-tool.sh: go (1.26+) is not on PATH" >&2; exit 1; }

mkdir -p "$target"
# Two builds at once (parallel test sessions) must not race: one builds, one waits.
exec 9>"$cache/.$name-build.lock"
flock 9
if [[ ! -x "$binary" ]]; then
    log="$target/build.log"
    tmp="$(mktemp -d "$target/.build-XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    echo "building $name $key from the Go module proxy (log $log)" >&2
    started=$SECONDS
    if ! (cd "$module_dir" && CGO_ENABLED=0 go build -trimpath -v "$@" -o "$tmp/$name" "$package") \
            >"$log" 2>&1; then
        echo "go-tool.sh: go build of $name failed after $((SECONDS - started))s; see $log" >&2
        tail -20 "$log" >&2
        exit 1
    fi
    mv "$tmp/$name" "$binary"
    echo "built $name $key in $((SECONDS - started))s" >&2
fi
echo "$binary"
