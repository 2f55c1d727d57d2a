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
# The same version stamp as helm's own Makefile, so `helm version` tells the truth.
exec "$here/../go-tool.sh" "$here" helm "$version" helm.sh/helm/v4/cmd/helm \
    -ldflags "-w -s -X helm.sh/helm/v4/internal/version.version=$version -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
