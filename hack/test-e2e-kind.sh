#!/usr/bin/env bash
# The real-cluster end-to-end test (test/cluster, the same assertions as `make test-e2e-cluster`)
# on kind: make test-e2e-kind. Needs a Docker engine, so it is not part of `make test`
# (.github/workflows/e2e-kind.yml runs it on GitHub's runners; `make test` runs the same test on
# a local node, hack/cluster.sh).
#
#   1. create a kind cluster (or reuse one of the same name)
#   2. build the chargesim, FerretDB, prometheus-operator and Prometheus images without Docker
#      (hack/cluster.sh images, the same reproducible tarballs the local node imports) and
#      `kind load image-archive` them
#   3. go test -tags cluster ./test/cluster/ with E2E_PROVIDER=kind: helm install with
#      charts/chargesim/ci/local-values.yaml, the sample and a larger simulation, pods, probes,
#      security contexts, port-forwarded API and broker, scaling, a killed listener, upgrade and
#      uninstall
#
# Environment: KIND_CLUSTER_NAME (chargesim-e2e), KEEP_CLUSTER=1 keeps the cluster afterwards.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CACHE=${CHARGESIM_CACHE:-$HOME/.cache/chargesim}
KIND_VERSION=v0.33.0
CLUSTER=${KIND_CLUSTER_NAME:-chargesim-e2e}

log() { printf '[e2e-kind %4ss] %s\n' "$SECONDS" "$*" >&2; }
die() { printf 'test-e2e-kind: %s\n' "$*" >&2; exit 1; }

# ---- prerequisites -----------------------------------------------------------------------
command -v docker >/dev/null 2>&1 ||
  die "docker not found. This test runs Kubernetes in Docker containers (kind) and needs a Docker engine; it is not part of 'make test' (which runs the same test on a local node: make test-e2e-cluster)."
docker info >/dev/null 2>&1 ||
  die "the docker CLI cannot reach a Docker engine ('docker info' failed: is the daemon running, is DOCKER_HOST right?)."

export GOTOOLCHAIN=local
# kind from the Go module proxy, cached like the other tools.
KIND=$CACHE/kind-$KIND_VERSION/kind
if [[ ! -x $KIND ]]; then
  log "building kind $KIND_VERSION"
  mkdir -p "$(dirname "$KIND")"
  (cd "$CACHE" && CGO_ENABLED=0 GOBIN=$(dirname "$KIND") go install -trimpath "sigs.k8s.io/kind@$KIND_VERSION")
fi
# The pinned helm and kubectl the test runs (bin/helm, bin/kubectl).
hack/kube-tools.sh helm kubectl >&2
hack/deps.sh ferretdb >/dev/null # the FerretDB binary of the store image (no apt on the runner)

# ---- cluster ----------------------------------------------------------------------------
KUBECONFIG=$CACHE/kind-$CLUSTER.kubeconfig
export KUBECONFIG
cleanup() {
  local rc=$?
  if [[ -z ${KEEP_CLUSTER:-} ]]; then
    "$KIND" delete cluster --name "$CLUSTER" >&2 || true
  else
    log "cluster kept: KUBECONFIG=$KUBECONFIG"
  fi
  exit "$rc"
}
trap cleanup EXIT

if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "reusing kind cluster $CLUSTER"
else
  log "creating kind cluster $CLUSTER"
  "$KIND" create cluster --name "$CLUSTER" --wait 180s >&2
fi
"$KIND" get kubeconfig --name "$CLUSTER" >"$KUBECONFIG"

# ---- images -----------------------------------------------------------------------------
log "building the images (hack/imagebuild)"
mapfile -t archives < <(hack/cluster.sh images chargesim ferretdb prometheus-operator prometheus-config-reloader prometheus)
for a in "${archives[@]}"; do
  "$KIND" load image-archive "$a" --name "$CLUSTER" >&2
done
# Image names and CRDs of the monitoring stack the test installs (CHARGESIM_CLUSTER_PROMETHEUS_*).
# shellcheck source=/dev/null
source "$(dirname "${archives[0]}")/monitoring.env"

# ---- the test ---------------------------------------------------------------------------
log "go test -tags cluster ./test/cluster/ (E2E_PROVIDER=kind)"
E2E_PROVIDER=kind E2E_KIND_NODE=$CLUSTER-control-plane \
  go test -count=1 -tags cluster -timeout 25m -v ./test/cluster/ >&2
log "PASS"
