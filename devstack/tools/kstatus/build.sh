#!/usr/bin/env bash
# Build kstatus (this module's command: how sigs.k8s.io/cli-utils' kstatus, which Flux
# gates on, reads an object) from the Go module proxy, once, into a cache outside the
# repo, and print its path:
#
#   devstack/tools/kstatus/build.sh
#   # -> ~/.cache/celery-taskrun/tools/kstatus-<hash>/kstatus
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
key="$(cat "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)"
exec "$here/../go-tool.sh" "$here" kstatus "$key" . -ldflags "-s -w"
