#!/usr/bin/env bash
# Tests of the Helm chart charts/chargesim (make test-chart; part of make test):
#   - chart copies of the CRDs and RBAC equal config/ (hack/sync-chart-crds.sh --check)
#   - helm lint --strict and helm template of every toggle, with helm v3 (pinned) and v4
#   - values.schema.json rejects bad values with a clear message
#   - every rendered manifest: kubeconform -strict and kubectl apply --dry-run=server on a kwok
#     cluster with the chart's CRDs and prometheus-operator's real CRDs (test/chart/crds/)
#   - on a second kwok cluster: helm install --wait, the operator binary running as the chart's
#     ServiceAccount brings ChargerSimulations to Ready, helm upgrade rolls the operator,
#     helm uninstall leaves nothing behind (or the CRDs, with crds.keep)
# Builds what it needs (hack/kube-tools.sh, bin/chargesim) first.
#
#   hack/test-chart.sh [go test flags, e.g. -run TestLint -v]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CHARGESIM_CACHE=${CHARGESIM_CACHE:-$HOME/.cache/chargesim}
export GOTOOLCHAIN=local

log() { printf 'test-chart: %s\n' "$*" >&2; }

start=$SECONDS
# Pinned tools: helm v3 and v4 (helm4, to show the chart works with both majors), kubeconform,
# kubectl and the kwok cluster binaries (cached after the first build).
hack/kube-tools.sh helm helm4 kubeconform cluster >&2

# The operator the kwok test runs out of the cluster.
# The build configuration of make test (Makefile: CGO_ENABLED=0, no -trimpath): its compiled
# packages are reused.
CGO_ENABLED=0 go build -o bin/chargesim .
log "tools ready in $((SECONDS - start))s"

# Observability tests (dashboards, alerts, /metrics) are hack/test-dashboards.sh's.
go test -count=1 -tags chart -timeout 20m \
  -skip '^Test(AlertRules|ComponentMetrics|DashboardOverviewQueries|DashboardOperatorQueries)$' \
  "$@" ./test/chart/
log "done in $((SECONDS - start))s"
