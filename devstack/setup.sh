#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for celery-taskrun: redis-server (Debian package),
# the locked Python packages in .venv, and a real kube-apiserver + kube-controller-manager
# + etcd + kubectl built with Go from the module proxy (cached in ~/.cache/celery-taskrun;
# about 10 min the first time on 2 cores, seconds after that).  That is all `make demo`
# needs.
#
#   devstack/setup.sh              # what the demo needs
#   devstack/setup.sh --for-tests  # and what only the tests use: helm and promtool built
#                                  # likewise (~3-6 min more cold), other projects' CRDs,
#                                  # Debian's chromium, rabbitmq-server and postgresql
set -euo pipefail
for_tests=false
case "${1:-}" in
  "") ;;
  --for-tests) for_tests=true ;;
  *) echo "usage: devstack/setup.sh [--for-tests]" >&2; exit 2 ;;
esac
# Go may be installed without being on PATH (its default place, or `go install`s).
export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: installing redis-server" >&2
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server
fi
# The gateway's live page is tested in a real browser: Debian's headless chromium.
if $for_tests && ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing chromium (the gateway page's browser test)" >&2
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
fi
# The other brokers and backends the tests run on (`taskrun-dev up --broker rabbitmq
# --backend postgresql`): Debian's packages, whose servers the stack runs itself.
if $for_tests && { [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ] ||
                   ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; }; then
  echo "setup: installing rabbitmq-server and postgresql (the broker and backend tests)" >&2
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    rabbitmq-server postgresql
  # Their system services (started by the packages where services start; the system
  # RabbitMQ listens on every interface) are not the stack's: stopped, and kept off.
  for service in rabbitmq-server postgresql; do
    as_root invoke-rc.d "$service" stop >/dev/null 2>&1 || true
    as_root update-rc.d "$service" disable >/dev/null 2>&1 || true
  done
  if [ -d /run/systemd/system ]; then
    as_root systemctl disable --now rabbitmq-server postgresql epmd.socket epmd.service \
      >/dev/null 2>&1 || true
  fi
fi
if [ -z "${KUBEBUILDER_ASSETS:-}" ] && ! command -v go >/dev/null 2>&1; then
  echo "setup: Go (1.26+) is needed to build kube-apiserver and etcd," \
       "or set KUBEBUILDER_ASSETS to a directory holding them" >&2
  exit 1
fi

# Every Python package at the version requirements.lock pins (with its hashes), in the
# project's own environment (.venv), never the system interpreter's; `make lock`
# refreshes the lock.  Installed again only when the lock changed.
venv=.venv
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating the project's environment in $venv" >&2
  python3 -m venv "$venv"
fi
stamp="$venv/.lock.sha256"
want="$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the locked Python packages into $venv" >&2
  pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)
  "${pip[@]}" install --require-hashes --no-deps -r requirements.lock
  "${pip[@]}" install --no-deps --no-build-isolation -e .
  "${pip[@]}" check
  echo "$want" >"$stamp"
fi
export PATH="$PWD/$venv/bin:$PATH"

echo "setup: control-plane binaries" >&2
taskrun-dev build >/dev/null
if "$for_tests" && command -v go >/dev/null 2>&1; then
  echo "setup: helm, for the chart's tests (built once, ~6 min cold)" >&2
  devstack/tools/helm/build.sh >/dev/null
  echo "setup: promtool, for the alerting rules' tests (built once, ~1 min cold)" >&2
  devstack/tools/promtool/build.sh >/dev/null
  echo "setup: KEDA's, Flux's and prometheus-operator's CRDs, from their Go modules" >&2
  devstack/tools/crds/fetch.sh >/dev/null
fi
