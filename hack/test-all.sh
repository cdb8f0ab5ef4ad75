#!/usr/bin/env bash
# `make test`: every suite CI runs, in an order that keeps a cold run (empty caches, every tool
# compiled from source on 2 cores) under an hour and a warm one short:
#
#   1. deps (Debian packages, FerretDB), then the real-cluster test's tools (Kubernetes, etcd,
#      kwok, CoreDNS, helm, the monitoring stack) at full priority, `go vet` niced beside them;
#   2. the real-cluster test (make test-e2e-cluster) starts in the background: it mostly waits
#      (images, pods, probes, alerts: ~30% of 2 cores over ~11 min, docs/performance.md), so
#   3. the other suites run beside it, niced (unit, fuzz, integration, envtest, e2e, lint,
#      check-generated, chart, dashboards) while the remaining tools build niced;
#   4. its output is printed when it ends, then check-test-deps.
#
# Every suite runs even when an earlier one failed (make -k style); the exit status is non-zero
# if any failed, and a table of the steps' times ends the output.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=$ROOT/bin
mkdir -p "$BIN"
MAKE=${MAKE:-make}
T0=$SECONDS
declare -a summary=() failed=()

stamp() { printf '[test-all %s +%ss] %s\n' "$(date +%T)" "$((SECONDS - T0))" "$*"; }
record() { # step rc start
  local took=$((SECONDS - $3)) verdict=ok
  ((${2} == 0)) || { verdict=FAIL; failed+=("$1"); }
  summary+=("$(printf '%-24s %5ss  %s' "$1" "$took" "$verdict")")
  stamp "$1: $verdict in ${took}s"
}
step() { # make target
  local start=$SECONDS rc=0
  stamp "$1"
  $NICE "$MAKE" --no-print-directory "$1" || rc=$?
  record "$1" "$rc" "$start"
}
NICE=""

cluster_pid=
tools_pid=
finish() {
  # Never leave the background cluster test running (it holds the node): wait for it.
  [[ -n $cluster_pid ]] && wait "$cluster_pid" 2>/dev/null
  [[ -n $tools_pid ]] && wait "$tools_pid" 2>/dev/null
}
trap finish EXIT

step deps

# 1. The cluster test's tools, with vet (compile only: no timing to disturb) filling the gaps of
# the build (links, downloads); vet's output is printed after.
start=$SECONDS
stamp "vet (niced, beside the cluster tools build; log bin/vet.log)"
nice -n 19 "$MAKE" --no-print-directory vet >"$BIN/vet.log" 2>&1 </dev/null &
vet_pid=$!
start_tools=$SECONDS
stamp "cluster tools"
rc=0
hack/kube-tools.sh cluster node helm monitoring || rc=$?
record "cluster tools" "$rc" "$start_tools"
rc=0
wait "$vet_pid" || rc=$?
cat "$BIN/vet.log"
record vet "$rc" "$start"

# 2. The real-cluster test in the background; the remaining tools (lint, controller-gen,
# kubeconform, helm v4) niced beside everything.
nice -n 15 hack/kube-tools.sh all >"$BIN/tools-background.log" 2>&1 </dev/null &
tools_pid=$!
cluster_start=$SECONDS
stamp "test-e2e-cluster (background; log bin/test-e2e-cluster.log)"
(
  rc=0
  "$MAKE" --no-print-directory test-e2e-cluster >"$BIN/test-e2e-cluster.log" 2>&1 </dev/null || rc=$?
  echo "$SECONDS" >"$BIN/test-e2e-cluster.end" # its own time, not when step 4 collects it
  exit "$rc"
) &
cluster_pid=$!

# 3. Everything else beside it, niced: the cluster test needs little CPU but needs it promptly (its
# alerts, probes and leases run on deadlines; with the suites at the same priority an alert once
# resolved later than its test allows), the suites take the rest.
NICE="nice -n 10"
for t in test-unit test-fuzz test-integration test-envtest test-e2e lint check-generated test-chart test-dashboards; do
  step "$t"
done

NICE=""

# 4. The cluster test's result.
stamp "waiting for test-e2e-cluster"
rc=0
wait "$cluster_pid" || rc=$?
cluster_pid=
echo "---- test-e2e-cluster (ran beside the suites above) ----"
cat "$BIN/test-e2e-cluster.log"
now=$SECONDS
SECONDS=$(cat "$BIN/test-e2e-cluster.end" 2>/dev/null || echo "$now")
record test-e2e-cluster "$rc" "$cluster_start"
SECONDS=$now
wait "$tools_pid" || true
tools_pid=

step check-test-deps

echo "---- make test: $((SECONDS - T0))s ----"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all passed"
