#!/usr/bin/env bash
# End-to-end test on a real Kubernetes (kind): make test-e2e-kind. Needs a Docker engine, so it
# is not part of `make test` (.github/workflows/e2e-kind.yml runs it on GitHub's runners).
#
#   1. create a kind cluster (or reuse one of the same name)
#   2. docker build the chargesim image and kind-load it (no registry involved)
#   3. helm install charts/chargesim with the in-cluster MongoDB (a real PVC on kind's
#      local-path provisioner), --wait
#   4. apply config/samples/minimal.yaml with its Secret pointing at that MongoDB, wait Ready
#   5. kubectl port-forward svc/minimal-api: GET /api/v1/stats sessions > 0 and growing;
#      the listener's and API's /metrics counters move
#
# Environment: KIND_CLUSTER_NAME (chargesim-e2e), IMG (chargesim:e2e), E2E_NAMESPACE
# (chargesim-e2e), KEEP_CLUSTER=1 keeps the cluster afterwards, E2E_TIMEOUT (300s) per wait.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CACHE=${CHARGESIM_CACHE:-$HOME/.cache/chargesim}
KIND_VERSION=v0.33.0
CLUSTER=${KIND_CLUSTER_NAME:-chargesim-e2e}
IMG=${IMG:-chargesim:e2e}
NS=${E2E_NAMESPACE:-chargesim-e2e}
TIMEOUT=${E2E_TIMEOUT:-300s}
RELEASE=chargesim
SIM=minimal

log() { printf '[e2e-kind %4ss] %s\n' "$SECONDS" "$*" >&2; }
die() { printf 'test-e2e-kind: %s\n' "$*" >&2; exit 1; }

# ---- prerequisites -----------------------------------------------------------------------
command -v docker >/dev/null 2>&1 ||
  die "docker not found. This test runs Kubernetes in Docker containers (kind) and needs a Docker engine; it is not part of 'make test'. Run it where Docker is available, e.g. the e2e-kind GitHub workflow."
docker info >/dev/null 2>&1 ||
  die "the docker CLI cannot reach a Docker engine ('docker info' failed: is the daemon running, is DOCKER_HOST right?). This test needs one; it is not part of 'make test'."

export GOTOOLCHAIN=local
# kind from the Go module proxy, cached like the other tools.
KIND=$CACHE/kind-$KIND_VERSION/kind
if [[ ! -x $KIND ]]; then
  log "building kind $KIND_VERSION"
  mkdir -p "$(dirname "$KIND")"
  (cd "$CACHE" && CGO_ENABLED=0 GOBIN=$(dirname "$KIND") go install -trimpath "sigs.k8s.io/kind@$KIND_VERSION")
fi
# The pinned helm (the version the chart is tested with) and kubectl.
hack/kube-tools.sh helm kubectl >&2
HELM=$ROOT/bin/helm
KUBECTL=$ROOT/bin/kubectl

# ---- cluster ----------------------------------------------------------------------------
KUBECONFIG=$CACHE/kind-$CLUSTER.kubeconfig
export KUBECONFIG
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if ((rc != 0)); then
    log "FAILED; cluster state:"
    "$KUBECTL" get pods,deploy,sts,svc,pvc,chargersimulations -A -o wide >&2 || true
    "$KUBECTL" -n "$NS" describe chargersimulation "$SIM" >&2 || true
    "$KUBECTL" -n "$NS" logs "deploy/$RELEASE-operator" --tail=100 >&2 || true
    for c in listener api publisher broker; do
      "$KUBECTL" -n "$NS" logs -l "chargesim.io/simulation=$SIM,app.kubernetes.io/component=$c" --tail=50 --prefix >&2 || true
    done
  fi
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

# ---- image ------------------------------------------------------------------------------
log "building $IMG"
docker build -t "$IMG" --build-arg "VERSION=e2e-$(git describe --tags --always --dirty 2>/dev/null || echo dev)" . >&2
"$KIND" load docker-image "$IMG" --name "$CLUSTER" >&2
repo=${IMG%:*} tag=${IMG##*:}

# ---- chart ------------------------------------------------------------------------------
log "helm install $RELEASE (MongoDB enabled)"
"$HELM" upgrade --install "$RELEASE" charts/chargesim -n "$NS" --create-namespace --wait --timeout "$TIMEOUT" \
  --set "image.repository=$repo" --set "image.tag=$tag" --set image.pullPolicy=Never \
  --set mongodb.enabled=true >&2
"$KUBECTL" -n "$NS" get pods -o wide >&2

# ---- sample -----------------------------------------------------------------------------
# The sample's Secret holds a placeholder URI: point it at the chart's MongoDB before the
# simulation exists, so its pods start with the right one.
uri=$("$KUBECTL" -n "$NS" get secret "$RELEASE-mongodb" -o jsonpath='{.data.uri}' | base64 -d)
"$KUBECTL" -n "$NS" create secret generic "$SIM-mongo" --from-literal="uri=$uri" --dry-run=client -o yaml |
  "$KUBECTL" -n "$NS" apply -f - >&2
awk 'BEGIN { RS = "\n---\n" } /kind: ChargerSimulation/ { print }' config/samples/minimal.yaml |
  "$KUBECTL" -n "$NS" apply -f - >&2
# A simulated minute per second: sessions arrive within seconds instead of a minute.
"$KUBECTL" -n "$NS" patch chargersimulation "$SIM" --type merge -p '{"spec":{"timeScale":60}}' >&2
log "waiting for ChargerSimulation $SIM Ready"
"$KUBECTL" -n "$NS" wait --for=condition=Ready "chargersimulation/$SIM" --timeout "$TIMEOUT" >&2
"$KUBECTL" -n "$NS" get chargersimulation "$SIM" -o wide >&2

# ---- API and metrics --------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
forward() { # forward <target> <remote port> -> prints local port
  local port
  port=$(free_port)
  "$KUBECTL" -n "$NS" port-forward "$1" "$port:$2" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null && { echo "$port"; return; }
    sleep 0.2
  done
  die "port-forward $1 $2 did not come up"
}
api=$(forward "svc/$SIM-api" 8080)
listener=$(forward "deploy/$SIM-listener" 9090)

sessions() { curl -fsS "http://127.0.0.1:$api/api/v1/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sessions"])'; }
metric() { # metric <port> <name>: sum of the samples of an unlabelled or labelled counter
  curl -fsS "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%d\n", s }'
}
wait_above() { # wait_above <what> <threshold> <command...>
  local what=$1 min=$2 v=0
  shift 2
  for _ in $(seq 150); do
    v=$("$@" 2>/dev/null || echo 0)
    ((v > min)) && { echo "$v"; return; }
    sleep 2
  done
  die "$what stayed at $v (want > $min)"
}

s1=$(wait_above "sessions in /api/v1/stats" 0 sessions)
log "GET /api/v1/stats: sessions=$s1"
stored1=$(metric "$listener" chargesim_listener_sessions_stored_total)
req1=$(metric "$api" chargesim_api_requests_total)
s2=$(wait_above "sessions in /api/v1/stats" "$s1" sessions)
log "GET /api/v1/stats: sessions=$s2 (growing)"
stored2=$(wait_above "chargesim_listener_sessions_stored_total" "$stored1" metric "$listener" chargesim_listener_sessions_stored_total)
req2=$(wait_above "chargesim_api_requests_total" "$req1" metric "$api" chargesim_api_requests_total)
log "metrics move: listener stored $stored1 -> $stored2, API requests $req1 -> $req2"
log "PASS"
