#!/usr/bin/env bash
# Build the helm CLI pinned by go.mod from the Go module proxy, once, into a cache
# outside the repo, and print the binary's path.  Later calls print the cached path.
#
#   devstack/tools/helm/build.sh            # -> ~/.cache/celery-taskrun/tools/helm-v4.3.1/helm
#   HELM="$(devstack/tools/helm/build.sh)"
#
# A cold build takes several minutes on 2 cores (about 700 packages); the log is kept
# beside the binary.  Progress goes to stderr, the path alone to stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk '$1 == "require" && $2 == "helm.sh/helm/v4" { print $3 }' "$here/go.mod")"
if [[ -z "$version" ]]; then
    echo "build.sh: $here/go.mod does not require helm.sh/helm/v4" >&2
    exit 1
fi
cache="${XDG_CACHE_HOME:-$HOME/.cache}/celery-taskrun/tools"
target="$cache/helm-$version"
binary="$target/helm"

if [[ -x "$binary" ]]; then
    echo "$binary"
    exit 0
fi
command -v go >/dev/null || { echo "build.sh: go (1.26+) is not on PATH" >&2; exit 1; }

mkdir -p "$target"
# Two builds at once (parallel test sessions) must not race: one builds, one waits.
exec 9>"$cache/.helm-build.lock"
flock 9
if [[ ! -x "$binary" ]]; then
    log="$target/build.log"
    tmp="$(mktemp -d "$target/.build-XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    echo "building helm $version from the Go module proxy (log $log)" >&2
    started=$SECONDS
    # The same version stamp as helm's own Makefile, so `helm version` tells the truth.
    if ! (cd "$here" && CGO_ENABLED=0 go build -trimpath -v \
            -ldflags "-w -s -X helm.sh/helm/v4/internal/version.version=$version -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
            -o "$tmp/helm" helm.sh/helm/v4/cmd/helm) >"$log" 2>&1; then
        echo "build.sh: go build failed after $((SECONDS - started))s; see $log" >&2
        tail -20 "$log" >&2
        exit 1
    fi
    mv "$tmp/helm" "$binary"
    echo "built helm $version in $((SECONDS - started))s" >&2
fi
echo "$binary"
