#!/usr/bin/env bash
# Build promtool (pinned by go.mod) and promql-names (this module's own command) from the
# Go module proxy, once, into a cache outside the repo, and print both paths, one a line:
#
#   devstack/tools/promtool/build.sh
#   # -> ~/.cache/celery-taskrun/tools/promtool-v0.316.0/promtool
#   #    ~/.cache/celery-taskrun/tools/promql-names-v0.316.0-<hash>/promql-names
#
# promtool is built without Prometheus's service-discovery plugins (`remove_all_sd`):
# checking and unit-testing rules needs none of them, and they are most of the build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module=github.com/prometheus/prometheus
version="$(awk -v m="$module" '$1 == "require" && $2 == m { print $3 }' "$here/go.mod")"
if [[ -z "$version" ]]; then
    echo "build.sh: $here/go.mod does not require $module" >&2
    exit 1
fi
# promql-names is built from source here: its key follows that source, not just the pin.
names_key="$version-$(cat "$here/go.sum" "$here/promql-names/main.go" | sha256sum | cut -c1-12)"
"$here/../go-tool.sh" "$here" promtool "$version" "$module/cmd/promtool" -tags remove_all_sd -ldflags "-s -w"
"$here/../go-tool.sh" "$here" promql-names "$names_key" ./promql-names -ldflags "-s -w"
