#!/usr/bin/env bash
# celery-taskrun on a local kind cluster, for machines with Docker (kind, kubectl, docker).
# Without Docker, `taskrun-dev up` runs the same parts as local processes.
#
#   deploy/kind.sh           create/reuse the cluster, build, load and deploy
#   KIND_CLUSTER_NAME=x IMAGE=celery-taskrun:dev deploy/kind.sh
#   kind delete cluster --name celery-taskrun     to throw it all away
set -euo pipefail

cluster="${KIND_CLUSTER_NAME:-celery-taskrun}"
image="${IMAGE:-celery-taskrun:dev}"
ns=celery-taskrun-system
cd "$(dirname "$0")/.."

for tool in kind kubectl docker; do
  command -v "$tool" >/dev/null || { echo "kind.sh: $tool not found" >&2; exit 1; }
done

if ! kind get clusters | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --wait 120s
fi
kubectl config use-context "kind-$cluster"

docker build -t "$image" .
# kind nodes cannot pull a local image: copy it in (the manifests use IfNotPresent).
kind load docker-image "$image" --name "$cluster"

kubectl apply --server-side --force-conflicts -f deploy/crd.yaml -f deploy/crontaskrun-crd.yaml
kubectl wait --for=condition=Established crd/taskruns.celery.taskrun.dev \
  crd/crontaskruns.celery.taskrun.dev --timeout=60s
kubectl apply -f deploy/rbac.yaml
# The demo Redis, its URLs' Secret and the workers; then the operator, reading that Secret.
kubectl apply -f deploy/worker.yaml
kubectl apply -f deploy/operator.yaml
if [ "$image" != celery-taskrun:dev ]; then
  kubectl -n "$ns" set image deployment/celery-taskrun-operator "*=$image"
  kubectl -n "$ns" set image deployment/celery-taskrun-worker "*=$image"
fi

kubectl -n "$ns" rollout status deployment/redis --timeout=180s
kubectl -n "$ns" rollout status deployment/celery-taskrun-worker --timeout=180s
kubectl -n "$ns" rollout status deployment/celery-taskrun-operator --timeout=180s

echo "ready: kubectl apply -f deploy/examples/ && kubectl get taskruns -w"
