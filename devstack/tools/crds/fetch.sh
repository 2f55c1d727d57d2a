#!/usr/bin/env bash
# Copy the CRDs listed in crds.txt out of their projects' Go modules into a cache outside
# the repo, once, and print that directory (one flat folder of YAML files).
#
#   devstack/tools/crds/fetch.sh   # -> ~/.cache/celery-taskrun/crds/<hash of crds.txt>
#
# `go mod download` fetches each module from the proxy (checked against the Go checksum
# database, and here against the hash crds.txt pins); nothing is built.  Seconds cold.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
list="$here/crds.txt"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/celery-taskrun/crds"
target="$cache/$(sha256sum "$list" | cut -c1-12)"

if [[ -f "$target/.complete" ]]; then
    echo "$target"
    exit 0
fi
command -v go >/dev/null || { echo "fetch.sh: go (1.26+) is not on PATH" >&2; exit 1; }
mkdir -p "$cache"
tmp="$(mktemp -d "$cache/.fetch-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# Outside any module, so no go.mod around decides what `go mod download` does.
cd "$tmp"
grep -v '^[[:space:]]*\(#\|$\)' "$list" | while read -r module version sum files; do
    if ! info="$(timeout 300 go mod download -json "$module@$version")"; then
        echo "fetch.sh: go mod download $module@$version failed: $info" >&2
        exit 1
    fi
    dir="$(sed -n 's/^\t"Dir": "\(.*\)",$/\1/p' <<<"$info")"
    got="$(sed -n 's/^\t"Sum": "\(.*\)",$/\1/p' <<<"$info")"
    if [[ "$got" != "$sum" ]]; then
        echo "fetch.sh: $module@$version has hash $got, crds.txt pins $sum" >&2
        exit 1
    fi
    for file in $files; do
        cp "$dir/$file" "$tmp/"
    done
done
touch "$tmp/.complete"
chmod 755 "$tmp"
# Another fetch may have finished first: its copy is the same files.
mv -T "$tmp" "$target" 2>/dev/null || rm -rf "$tmp"
echo "$target"
