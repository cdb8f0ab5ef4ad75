# chargesim — see README.md. Every target installs what it needs through hack/ (pinned, cached
# in $(CHARGESIM_CACHE), linked into bin/), so a fresh machine needs only Go and apt.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
export CHARGESIM_CACHE ?= $(HOME)/.cache/chargesim
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO_TEST_FLAGS ?= -count=1
BIN := $(CURDIR)/bin

.PHONY: all build run test test-unit test-integration test-envtest test-e2e bench bench-operator \
	deps tools envtest-assets fmt vet lint generate manifests check-generated image clean

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
test: vet test-unit test-integration ## everything

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet: fmt
	go vet ./...
	go vet -tags integration ./...

test-unit: ## fast unit tests
	go test $(GO_TEST_FLAGS) ./...

test-integration: deps ## against real mosquitto and FerretDB
	source $(BIN)/deps.env && go test $(GO_TEST_FLAGS) -tags integration -timeout 20m ./...

bench: deps ## benchmarks with ratios against the raw limits measured in the same run
	hack/bench.sh

clean:
	rm -rf bin/chargesim data/
