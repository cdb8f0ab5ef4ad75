#!/usr/bin/env bash
# Observability tests (make test-dashboards; part of make test):
#   - promtool check rules + promtool test rules for charts/chargesim/files/alerts.yaml
#     (test/prometheus/alerts_test.yaml: every alert fires in one case and stays quiet in another)
#   - promtool check metrics on the /metrics of broker, publisher, listener and API started as
#     separate processes against real mosquitto and FerretDB, and on the operator's
#   - every query of charts/chargesim/dashboards/overview.json evaluated by a real Prometheus
#     scraping a live `chargesim run` (with malformed messages, duplicates and API errors mixed
#     in): a query that returns nothing, or only NaN, is a broken panel
#   - every query of operator.json against a Prometheus scraping `chargesim operator`
#     reconciling ChargerSimulations on a kwok cluster
#
#   hack/test-dashboards.sh [go test flags, e.g. -run TestAlertRules -v]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CHARGESIM_CACHE=${CHARGESIM_CACHE:-$HOME/.cache/chargesim}
export GOTOOLCHAIN=local

start=$SECONDS
hack/deps.sh >&2                   # mosquitto, FerretDB, prometheus, promtool
hack/kube-tools.sh cluster >&2     # kwok cluster for the operator dashboard
# shellcheck source=/dev/null
source bin/deps.env
# The build configuration of make test (Makefile: CGO_ENABLED=0, no -trimpath): its compiled
# packages are reused.
CGO_ENABLED=0 go build -o bin/chargesim .
printf 'test-dashboards: tools ready in %ss\n' "$((SECONDS - start))" >&2

go test -count=1 -tags chart -timeout 15m \
  -run '^Test(AlertRules|ComponentMetrics|DashboardOverviewQueries|DashboardOperatorQueries)$' \
  "$@" ./test/chart/
printf 'test-dashboards: done in %ss\n' "$((SECONDS - start))" >&2
