#!/usr/bin/env bash
# A throwaway Kubernetes cluster for e2e tests: real etcd, kube-apiserver, controller-manager and
# scheduler, with kwok faking the nodes and the kubelet (pods become Running/Ready without
# containers). Uses only the binaries built by hack/kube-tools.sh; nothing is downloaded.
#
#   hack/kwok-cluster.sh up [name]          create (or reuse) the cluster, print its kubeconfig path
#   hack/kwok-cluster.sh down [name]        delete it
#   hack/kwok-cluster.sh kubeconfig [name]  print the kubeconfig path of a running cluster
#
# name defaults to $KWOK_CLUSTER_NAME or "chargesim". State lives in
# $KWOK_WORKDIR (default ${CHARGESIM_CACHE:-$HOME/.cache/chargesim}/kwok). Every component
# listens on 127.0.0.1 only, on ports kwokctl picks. KWOK_NODES (default 2) fake nodes are added.
# ~/.kube/config is left alone: use the printed kubeconfig (KUBECONFIG=$(... kubeconfig)).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CHARGESIM_CACHE:-$HOME/.cache/chargesim}
BIN=$ROOT/bin
export KWOK_WORKDIR=${KWOK_WORKDIR:-$CACHE/kwok}
NODES=${KWOK_NODES:-2}

die() { printf 'kwok-cluster: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

cmd=${1:-}
name=${2:-${KWOK_CLUSTER_NAME:-chargesim}}
[[ $name =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ ]] || die "bad cluster name '$name'"
cluster_dir=$KWOK_WORKDIR/clusters/$name
kubeconfig=$cluster_dir/kubeconfig.yaml

# fd 9 holds our lock; the cluster processes kwokctl starts must not inherit it.
kwokctl() { "$BIN/kwokctl" "$@" 9>&-; }

ensure_tools() {
  local t missing=0
  for t in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwokctl; do
    [[ -x $BIN/$t ]] || missing=1
  done
  if ((missing)); then
    "$ROOT/hack/kube-tools.sh" cluster >&2 9>&-
  fi
}

is_running() {
  [[ -f $kubeconfig ]] &&
    "$BIN/kubectl" --kubeconfig "$kubeconfig" --request-timeout=5s get --raw /readyz >/dev/null 2>&1
}

# kwokctl's binary runtime binds 0.0.0.0 unless told otherwise, and only a config file can say
# so; the binaries are given here too, so kwokctl never looks for a release to download.
write_config() {
  local cfg=$KWOK_WORKDIR/chargesim-kwokctl.yaml
  mkdir -p "$KWOK_WORKDIR"
  cat >"$cfg.tmp.$$" <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeVersion: $(kube_version)
  etcdBinary: $(readlink -f "$BIN/etcd")
  kubeApiserverBinary: $(readlink -f "$BIN/kube-apiserver")
  kubeControllerManagerBinary: $(readlink -f "$BIN/kube-controller-manager")
  kubeSchedulerBinary: $(readlink -f "$BIN/kube-scheduler")
  kwokControllerBinary: $(readlink -f "$BIN/kwok")
  kubectlBinary: $(readlink -f "$BIN/kubectl")
EOF
  mv -f "$cfg.tmp.$$" "$cfg"
  echo "$cfg"
}

kube_version() {
  "$BIN/kube-apiserver" --version | awk '{print $2}'
}

up() {
  ensure_tools
  if is_running; then
    echo "$kubeconfig"
    return
  fi
  # Leftovers of a cluster that is not answering (machine restarted, killed processes).
  down
  local cfg start=${EPOCHREALTIME/,/.}
  cfg=$(write_config)
  kwokctl --config "$cfg" create cluster --name "$name" --runtime binary \
    --kubeconfig "" --wait 2m --timeout 5m >&2 ||
    die "kwokctl create cluster failed; logs: $cluster_dir/logs"
  kwokctl scale node --name "$name" --replicas "$NODES" >&2 ||
    die "kwokctl scale node failed"
  "$BIN/kubectl" --kubeconfig "$kubeconfig" wait --for=condition=Ready node --all --timeout=60s >&2 ||
    die "fake nodes did not become Ready"
  # Pods need a ServiceAccount in their namespace; the token controller creates it shortly
  # after the namespace appears.
  local i
  for ((i = 0; i < 100; i++)); do
    "$BIN/kubectl" --kubeconfig "$kubeconfig" -n default get serviceaccount default >/dev/null 2>&1 && break
    sleep 0.1
  done
  printf 'kwok-cluster: %s ready in %.1fs\n' "$name" "$(awk -v a="$start" -v b="${EPOCHREALTIME/,/.}" 'BEGIN{print b-a}')" >&2
  echo "$kubeconfig"
}

# Processes kwokctl started for this cluster (pid files under pids/).
cluster_pids() {
  local f
  for f in "$cluster_dir"/pids/*.pid; do
    [[ -f $f ]] && cat "$f" && echo
  done
  return 0
}

# Those of the given pids still alive, checked against the command line so a recycled pid is
# never hit.
alive() {
  local pid
  for pid in "$@"; do
    [[ $pid =~ ^[0-9]+$ ]] || continue
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$cluster_dir/" && echo "$pid"
  done
  return 0
}

down() {
  [[ -d $cluster_dir ]] || return 0
  local -a pids
  local i
  # kwokctl signals the processes and removes their pid files without waiting for them to exit.
  mapfile -t pids < <(cluster_pids)
  if [[ -x $BIN/kwokctl ]]; then
    # --kubeconfig "" is refused by delete ("empty path"); the cluster's own kubeconfig keeps
    # ~/.kube/config untouched and goes away with the cluster.
    kwokctl delete cluster --name "$name" --kubeconfig "$kubeconfig" >&2 ||
      echo "kwok-cluster: kwokctl delete cluster failed, stopping leftovers" >&2
  fi
  mapfile -t pids < <(alive "${pids[@]}")
  ((${#pids[@]} == 0)) || kill "${pids[@]}" 2>/dev/null || true
  # A half-dead cluster (say etcd gone first) can leave kube-apiserver waiting forever.
  for ((i = 0; i < 100 && ${#pids[@]} > 0; i++)); do
    sleep 0.1
    mapfile -t pids < <(alive "${pids[@]}")
  done
  ((${#pids[@]} == 0)) || kill -9 "${pids[@]}" 2>/dev/null || true
  rm -rf "$cluster_dir"
}

mkdir -p "$KWOK_WORKDIR"
# One up/down at a time per cluster name.
exec 9>"$KWOK_WORKDIR/$name.lock"
flock 9

case $cmd in
  up) up ;;
  down) down ;;
  kubeconfig)
    is_running || die "cluster '$name' is not running (hack/kwok-cluster.sh up $name)"
    echo "$kubeconfig"
    ;;
  *) usage ;;
esac
