# chargesim — see README.md. Every target installs what it needs through hack/ (pinned, cached
# in $(CHARGESIM_CACHE), linked into bin/), so a fresh machine needs only Go and apt.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
export CHARGESIM_CACHE ?= $(HOME)/.cache/chargesim
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO_TEST_FLAGS ?= -count=1
# One build configuration for tests, vet and the binaries the test scripts build (static, as in the
# images): the dependency tree is compiled once, not once per CGO setting.
export CGO_ENABLED ?= 0
BIN := $(CURDIR)/bin

.PHONY: all build run test test-unit test-integration test-envtest test-e2e bench bench-operator \
	deps tools envtest-assets fmt vet lint generate manifests check-generated image clean \
	test-chart test-dashboards test-e2e-kind test-fuzz test-e2e-cluster cluster-up cluster-down check-test-deps

all: build

build: ## build bin/chargesim
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(BIN)/chargesim .

run: build deps ## start broker, FerretDB, publisher, listener and API on this machine (Ctrl-C stops)
	hack/run-local.sh

deps: ## mosquitto, FerretDB, prometheus/promtool (hack/deps.sh)
	hack/deps.sh

tools: ## pinned Kubernetes toolchain: apiserver, etcd, kubectl, kwok, controller-gen, helm, ...
	hack/kube-tools.sh

envtest-assets:
	hack/kube-tools.sh envtest

## ---- tests: `make test` is what CI runs (.ci/run) ----
TAGS := integration,envtest,e2e,chart,cluster

# hack/test-all.sh runs the suites below: the real-cluster test's tools first, that test in the
# background (it mostly waits), every other suite beside it, then check-test-deps, which fails if
# a test dependency was installed by none of the steps before it. A table of times ends the output.
test: ## everything CI runs
	hack/test-all.sh

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet: fmt
	go vet -tags $(TAGS) ./...

lint: ## golangci-lint (pinned, built by hack/kube-tools.sh)
	hack/kube-tools.sh golangci-lint
	$(BIN)/golangci-lint run --build-tags $(TAGS) ./...

test-unit: ## fast unit tests
	go test $(GO_TEST_FLAGS) ./...

FUZZ_TIME ?= 20s
test-fuzz: ## short coverage-guided runs of the payload decoder's and the BSON encoder's fuzz targets (corpus in testdata/)
	go test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZ_TIME) ./components/session/
	go test -run '^$$' -fuzz '^FuzzAppendBSON$$' -fuzztime $(FUZZ_TIME) ./components/store/

test-integration: deps ## against real mosquitto and FerretDB (processes started per test)
	source $(BIN)/deps.env && go test $(GO_TEST_FLAGS) -tags integration -timeout 20m ./...

test-envtest: envtest-assets deps ## operator against a real kube-apiserver + etcd
	source $(BIN)/kube.env && go test $(GO_TEST_FLAGS) -tags envtest -timeout 20m ./controllers/...

test-e2e: deps ## operator on a kwok cluster (real apiserver, controller-manager, scheduler; fake nodes)
	hack/kube-tools.sh cluster
	source $(BIN)/kube.env && go test $(GO_TEST_FLAGS) -tags e2e -timeout 30m ./test/e2e/...

test-chart: ## helm lint/template, schema, dry-run=server, install/upgrade/uninstall on kwok
	hack/test-chart.sh

test-dashboards: ## promtool rules and metrics, every dashboard query against a real Prometheus
	hack/test-dashboards.sh

test-e2e-cluster: deps ## chart, operator and simulations as real containers on a local node (hack/cluster.sh; root)
	hack/kube-tools.sh cluster node helm monitoring
	@# One node per machine: concurrent runs (two worktrees, a helper and CI) wait for each other.
	@# -v: the phases' times (cluster up, install, Ready, each check) are in the log even when it passes.
	flock $${CHARGESIM_CACHE:-$$HOME/.cache/chargesim}/.cluster-session.lock go test $(GO_TEST_FLAGS) -v -tags cluster -timeout 25m ./test/cluster/...

cluster-up: deps ## a real single-node cluster on this machine; prints KUBECONFIG=<path> last
	hack/cluster.sh up

cluster-down: ## stop it and restore the host
	hack/cluster.sh down

check-test-deps: ## fresh-machine check: run make test's install steps, fail if a test dependency is not installed by them
	hack/check-test-deps.sh

test-e2e-kind: ## chart + image on kind (needs Docker; runs in GitHub Actions)
	hack/test-e2e-kind.sh

bench: deps ## benchmarks with ratios against the raw limits measured in the same run
	hack/bench.sh

bench-operator: ## 200 simulations to Ready on kwok; operator memory with 2,000 unrelated Deployments
	hack/kube-tools.sh cluster
	source $(BIN)/kube.env && go test -tags e2e -run '^$$' -bench BenchmarkOperator -benchtime 1x -timeout 30m ./test/e2e/...

## ---- code generation ----
generate: ## deepcopy
	hack/kube-tools.sh controller-gen
	$(BIN)/controller-gen object:headerFile=hack/boilerplate.go.txt paths=./api/...

manifests: ## CRD, RBAC (config/), and the chart's copies
	hack/kube-tools.sh controller-gen
	$(BIN)/controller-gen crd:allowDangerousTypes=true rbac:roleName=chargesim-operator paths=./api/... paths=./controllers/... \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	hack/sync-chart-crds.sh

check-generated: generate manifests ## CI fails when generated files are stale
	@git diff --exit-code -- api config charts/chargesim/files || \
		{ echo "generated files are stale: run 'make generate manifests' and commit"; exit 1; }

image: ## container image (needs Docker)
	docker build --build-arg VERSION=$(VERSION) -t $${IMG:-chargesim:dev} .

clean:
	rm -rf bin/chargesim data/
