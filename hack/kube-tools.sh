#!/usr/bin/env bash
# Builds the pinned Kubernetes toolchain from the Go module proxy into
# ${CHARGESIM_CACHE:-$HOME/.cache/chargesim}/<tool>-<version>/ and links it into bin/.
#
#   hack/kube-tools.sh            everything
#   hack/kube-tools.sh envtest    etcd, kube-apiserver, kubectl (KUBEBUILDER_ASSETS = bin/k8s)
#   hack/kube-tools.sh cluster    what hack/kwok-cluster.sh needs (envtest + controller-manager, scheduler, kwok, kwokctl)
#   hack/kube-tools.sh node       what a real node of hack/cluster.sh adds (kubelet, kube-proxy, coredns)
#   hack/kube-tools.sh monitoring prometheus-operator, prometheus-config-reloader, prometheus (test/cluster)
#   hack/kube-tools.sh helm kubectl ...   single tools (helm4: Helm 4, for hack/test-chart.sh)
#
# Tools already built are skipped, so re-running is cheap; builds run in the order asked, one at
# a time per machine (a lock per build). Prints one line per tool. Missing Kubernetes components
# are compiled by one `go build` so they share their compiled packages.
# Afterwards `source bin/kube.env` sets KUBEBUILDER_ASSETS and PATH.
#
# Release binaries are not downloaded: only the Go module proxy is reachable here, so everything
# is compiled from source. Kubernetes' own go.mod points its k8s.io/* staging modules at
# ./staging via `replace`, which `go install pkg@version` refuses, so the Kubernetes components
# (and etcd, whose go.mod has the same problem) are built from a throwaway module under the
# cache that requires the release and replaces every staging module with its published v0.x.y.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CHARGESIM_CACHE:-$HOME/.cache/chargesim}
BIN=$ROOT/bin

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.6.16 # the root module go.etcd.io/etcd/v3 is not served for v3.6.16; server/v3 is and has the main package
KWOK_VERSION=v0.8.0
CONTROLLER_GEN_VERSION=v0.23.0
HELM_VERSION=v3.22.0
KUBECONFORM_VERSION=v0.8.0
GOLANGCI_LINT_VERSION=v2.15.0
COREDNS_VERSION=v1.15.0
PROMETHEUS_OPERATOR_VERSION=v0.85.0
PROMETHEUS_VERSION=v0.316.0 # Go module versions v0.3XX.Y are Prometheus 3.XX.Y
HELM4_VERSION=v4.3.1 # test-chart renders with both majors; keep in step with Helm4Version in test/chart/main_test.go

# In the order make test needs them (lint, check-generated, envtest, e2e, the real cluster, chart,
# dashboards): `make test` builds them in the background while the tests that need none run.
ALL_TOOLS=(golangci-lint controller-gen etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy kwok kwokctl coredns helm prometheus-operator prometheus-config-reloader prometheus kubeconform helm4)
ENVTEST_TOOLS=(etcd kube-apiserver kubectl)
KWOK_TOOLS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwokctl)
NODE_TOOLS=(kubelet kube-proxy coredns)
MONITORING_TOOLS=(prometheus-operator prometheus-config-reloader prometheus)
# Built from github.com/prometheus-operator/prometheus-operator/cmd/<name> in one `go build`.
PROMOP_TOOLS=(prometheus-operator prometheus-config-reloader)
# Built from k8s.io/kubernetes/cmd/<name> in the throwaway module below.
K8S_TOOLS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)

# Never let the go command fetch another toolchain: only module downloads are allowed here.
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
export CGO_ENABLED=0
# 2 cores shared with others: one build at a time, two compile jobs.
GO_BUILD_P=${GO_BUILD_P:-2}

log() { printf '%s\n' "$*" >&2; }
die() { log "kube-tools: $*"; exit 1; }

version_of() {
  case $1 in
    kube-apiserver | kube-controller-manager | kube-scheduler | kubectl | kubelet | kube-proxy) echo "$K8S_VERSION" ;;
    etcd) echo "$ETCD_VERSION" ;;
    kwok | kwokctl) echo "$KWOK_VERSION" ;;
    controller-gen) echo "$CONTROLLER_GEN_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
    kubeconform) echo "$KUBECONFORM_VERSION" ;;
    golangci-lint) echo "$GOLANGCI_LINT_VERSION" ;;
    coredns) echo "$COREDNS_VERSION" ;;
    prometheus-operator | prometheus-config-reloader) echo "$PROMETHEUS_OPERATOR_VERSION" ;;
    prometheus) echo "$PROMETHEUS_VERSION" ;;
    helm4) echo "$HELM4_VERSION" ;;
    *) return 1 ;;
  esac
}

# Helm 4's binary is helm-<v4 version>/helm, next to Helm 3's helm-<v3 version>/helm.
tool_dir() {
  if [[ $1 == helm4 ]]; then echo "$CACHE/helm-$HELM4_VERSION"; else echo "$CACHE/$1-$(version_of "$1")"; fi
}
tool_path() {
  if [[ $1 == helm4 ]]; then echo "$(tool_dir "$1")/helm"; else echo "$(tool_dir "$1")/$1"; fi
}

is_k8s_tool() { [[ " ${K8S_TOOLS[*]} " == *" $1 "* ]]; }
is_promop_tool() { [[ " ${PROMOP_TOOLS[*]} " == *" $1 "* ]]; }
# The operator's main package is cmd/operator; the reloader's is cmd/prometheus-config-reloader.
promop_pkg() {
  local p=github.com/prometheus-operator/prometheus-operator/cmd
  if [[ $1 == prometheus-operator ]]; then echo "$p/operator"; else echo "$p/$1"; fi
}

# A throwaway module that requires k8s.io/kubernetes and pins every staging module it requires
# (the `replace` block of its go.mod) to the matching published v0.<minor>.<patch>.
k8s_module() {
  local dir=$CACHE/src/kubernetes-$K8S_VERSION
  # A module made before kubelet/kube-proxy were tools lacks their go.sum entries: remake it.
  if [[ -f $dir/go.sum && -f $dir/.ready ]] && grep -q 'cmd/kube-proxy$' "$dir/go.mod"; then
    echo "$dir"
    return
  fi
  mkdir -p "$dir"
  local staging=v0.${K8S_VERSION#v1.}
  local kmod
  kmod=$(cd "$dir" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [[ -f $kmod ]] || die "cannot download k8s.io/kubernetes@$K8S_VERSION go.mod"
  # Staging modules = left-hand sides of `replace ( k8s.io/x => ./staging/... )` that kubernetes
  # also requires (the replace block lists sample-* modules that are not published).
  local mods
  mods=$(awk '/=> \.\/staging\//{print $1}' "$kmod" | while read -r m; do
    grep -qE "^[[:space:]]+$m v0\.0\.0" "$kmod" && echo "$m"
  done)
  [[ -n $mods ]] || die "no staging modules found in $kmod"
  {
    echo "module chargesim.local/kubetools"
    echo
    echo "go $(go env GOVERSION | sed 's/^go//; s/^\([0-9]*\.[0-9]*\).*/\1/').0"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    for m in $mods; do echo "	$m => $m $staging"; done
    echo ")"
    echo
    echo "tool ("
    for c in "${K8S_TOOLS[@]}"; do echo "	k8s.io/kubernetes/cmd/$c"; done
    echo ")"
  } >"$dir/go.mod"
  (cd "$dir" && go mod tidy >&2) || die "go mod tidy in $dir failed"
  touch "$dir/.ready"
  echo "$dir"
}

etcd_module() {
  local dir=$CACHE/src/etcd-$ETCD_VERSION
  if [[ -f $dir/go.sum && -f $dir/.ready ]]; then
    echo "$dir"
    return
  fi
  mkdir -p "$dir"
  cat >"$dir/go.mod" <<EOF
module chargesim.local/etcdtool

go 1.26.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION

tool go.etcd.io/etcd/server/v3
EOF
  (cd "$dir" && go mod tidy >&2) || die "go mod tidy in $dir failed"
  touch "$dir/.ready"
  echo "$dir"
}

# prometheus-operator's go.mod replaces its pkg/apis/monitoring and pkg/client modules with
# ./pkg/..., which `go install pkg@version` refuses: a throwaway module requires the release and
# the two published submodules of the same version instead. Its own go.sum pins everything else,
# so the operator is built with the dependency versions upstream tested (Prometheus itself needs
# far newer ones, e.g. client-go v0.37 against the operator's v0.33, hence a separate build).
promop_module() {
  local dir=$CACHE/src/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION
  if [[ -f $dir/go.sum && -f $dir/.ready ]]; then
    echo "$dir"
    return
  fi
  mkdir -p "$dir"
  local p=github.com/prometheus-operator/prometheus-operator
  {
    echo "module chargesim.local/promoperator"
    echo
    echo "go 1.24.0"
    echo
    echo "require ("
    echo "	$p $PROMETHEUS_OPERATOR_VERSION"
    echo "	$p/pkg/apis/monitoring $PROMETHEUS_OPERATOR_VERSION"
    echo "	$p/pkg/client $PROMETHEUS_OPERATOR_VERSION"
    echo ")"
    echo
    echo "tool ("
    for c in "${PROMOP_TOOLS[@]}"; do echo "	$(promop_pkg "$c")"; done
    echo ")"
  } >"$dir/go.mod"
  (cd "$dir" && go mod tidy >&2) || die "go mod tidy in $dir failed"
  touch "$dir/.ready"
  echo "$dir"
}

# build_in <module dir> <out> <pkg> <ldflags>
build_in() {
  local dir=$1 out=$2 pkg=$3 ldflags=$4
  (cd "$dir" && go build -p "$GO_BUILD_P" -trimpath -ldflags="$ldflags" -o "$out" "$pkg")
}

# go_install <out> <pkg@version> <ldflags> [go build flags...]
go_install() {
  local out=$1 pkgver=$2 ldflags=$3 tmp
  shift 3
  tmp=$(mktemp -d "$CACHE/.gobin.XXXXXX")
  # Run outside the repo so the project's go.mod is not consulted.
  if ! (cd "$CACHE" && GOBIN=$tmp go install -p "$GO_BUILD_P" -trimpath -ldflags="$ldflags" "$@" "$pkgver"); then
    rm -rf "$tmp"
    return 1
  fi
  mv "$tmp"/* "$out" && rmdir "$tmp"
}

k8s_ldflags() {
  local v=${K8S_VERSION#v} major minor f=""
  major=${v%%.*}
  minor=${v#*.}
  minor=${minor%%.*}
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    f+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "-s -w$f"
}

build_tool() {
  local tool=$1 out=$2 ver
  ver=$(version_of "$tool")
  case $tool in
    etcd)
      local edir
      edir=$(etcd_module) || return 1
      build_in "$edir" "$out" go.etcd.io/etcd/server/v3 \
        "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}"
      ;;
    kwok | kwokctl)
      go_install "$out" "sigs.k8s.io/kwok/cmd/$tool@$ver" \
        "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${ver#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION#v}"
      ;;
    controller-gen)
      go_install "$out" "sigs.k8s.io/controller-tools/cmd/controller-gen@$ver" "-s -w"
      ;;
    helm)
      # Without these helm reports v3.22 and assumes a Kubernetes 1.20 cluster in
      # `helm template`/`lint` (.Capabilities.KubeVersion); helm v3.22 is built on client-go v0.37.
      go_install "$out" "helm.sh/helm/v3/cmd/helm@$ver" \
        "-s -w -X helm.sh/helm/v3/internal/version.version=$ver -X helm.sh/helm/v3/internal/version.metadata= -X helm.sh/helm/v3/internal/version.gitTreeState=clean -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37"
      ;;
    helm4)
      go_install "$out" "helm.sh/helm/v4/cmd/helm@$ver" "-s -w -X helm.sh/helm/v4/internal/version.version=$ver"
      ;;
    kubeconform)
      go_install "$out" "github.com/yannh/kubeconform/cmd/kubeconform@$ver" "-s -w -X main.version=$ver"
      ;;
    coredns)
      go_install "$out" "github.com/coredns/coredns@$ver" "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$ver"
      ;;
    prometheus)
      # Tags as upstream's release builds minus builtinassets: the web UI's compiled assets are
      # generated at release time and are not in the module; the HTTP API works without them.
      # Service discovery: Kubernetes only (what prometheus-operator's monitors generate; file
      # and static targets are built in): remove_all_sd leaves out the cloud SDKs (AWS, Azure,
      # GCE, ...), most of a cold build's compile time.
      # Module v0.MNN.P is release M.NN.P (v0.316.0: 3.16.0).
      local pv=${ver#v0.} pc=github.com/prometheus/common/version
      pv=${pv:0:1}.${pv:1}
      go_install "$out" "github.com/prometheus/prometheus/cmd/prometheus@$ver" \
        "-s -w -X $pc.Version=$pv -X $pc.Revision=$ver -X $pc.Branch=HEAD -X $pc.BuildUser=chargesim -X $pc.BuildDate=19700101-00:00:00" \
        -tags netgo,remove_all_sd,enable_kubernetes_sd
      ;;
    golangci-lint)
      go_install "$out" "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$ver" \
        "-s -w -X main.version=${ver#v} -X main.commit=none -X main.date=1970-01-01T00:00:00Z"
      ;;
    *) die "unknown tool $tool" ;;
  esac
}

# build_k8s <tool>...: the missing Kubernetes components in one `go build -o <dir>/ pkg...`, so
# the packages they share (most of k8s.io/*) are compiled once; moved into their tool dirs after.
declare -A BUILT=()
build_k8s() {
  local kdir tmp t start=$SECONDS
  local -a pkgs=()
  kdir=$(k8s_module) || die "preparing the k8s.io/kubernetes module failed"
  tmp=$(mktemp -d "$CACHE/.k8sbuild.XXXXXX")
  for t in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$t"); done
  if ! (cd "$kdir" && go build -p "$GO_BUILD_P" -trimpath -ldflags="$(k8s_ldflags)" -o "$tmp/" "${pkgs[@]}"); then
    rm -rf "$tmp"
    die "building $* $K8S_VERSION failed"
  fi
  for t in "$@"; do
    mkdir -p "$(tool_dir "$t")"
    mv -f "$tmp/$t" "$(tool_path "$t")"
    BUILT[$t]="built in $((SECONDS - start))s (with $*)"
  done
  rmdir "$tmp"
}

# build_promop <tool>...: the missing prometheus-operator binaries in one `go build`.
build_promop() {
  local pdir tmp t start=$SECONDS pc=github.com/prometheus/common/version
  local -a pkgs=()
  pdir=$(promop_module) || die "preparing the prometheus-operator module failed"
  tmp=$(mktemp -d "$CACHE/.promopbuild.XXXXXX")
  for t in "$@"; do pkgs+=("$(promop_pkg "$t")"); done
  local ldflags="-s -w -X $pc.Version=${PROMETHEUS_OPERATOR_VERSION#v} -X $pc.Revision=$PROMETHEUS_OPERATOR_VERSION -X $pc.Branch=HEAD -X $pc.BuildUser=chargesim -X $pc.BuildDate=19700101-00:00:00"
  if ! (cd "$pdir" && go build -p "$GO_BUILD_P" -trimpath -ldflags="$ldflags" -o "$tmp/" "${pkgs[@]}"); then
    rm -rf "$tmp"
    die "building $* $PROMETHEUS_OPERATOR_VERSION failed"
  fi
  for t in "$@"; do
    mkdir -p "$(tool_dir "$t")"
    # go build -o dir/ names binaries after the package dir: operator, prometheus-config-reloader.
    if [[ $t == prometheus-operator ]]; then mv -f "$tmp/operator" "$(tool_path "$t")"; else mv -f "$tmp/$t" "$(tool_path "$t")"; fi
    BUILT[$t]="built in $((SECONDS - start))s (with $*)"
  done
  rmdir "$tmp"
}

# promop_examples: the operator's CRDs and RBAC examples of the same release, next to its binary
# (<tool dir>/example), so tests install exactly the CRDs this operator was built with.
promop_examples() {
  local dst
  dst=$(tool_dir prometheus-operator)/example
  [[ -f $dst/.ready ]] && return 0
  local pdir src
  pdir=$(promop_module) || die "preparing the prometheus-operator module failed"
  src=$(cd "$pdir" && go list -m -f '{{.Dir}}' github.com/prometheus-operator/prometheus-operator) ||
    die "locating the prometheus-operator module"
  rm -rf "$dst"
  mkdir -p "$dst/rbac"
  cp -r "$src/example/prometheus-operator-crd" "$dst/"
  cp -r "$src/example/rbac/prometheus-operator" "$src/example/rbac/prometheus" "$dst/rbac/"
  chmod -R u+w "$dst"
  touch "$dst/.ready"
}

# build_one <tool>: a tool that is not part of a group build, to a temporary name and renamed, so
# an interrupted build never looks finished.
build_one() {
  local tool=$1 out start=$SECONDS
  out=$(tool_path "$tool")
  mkdir -p "$(dirname "$out")"
  build_tool "$tool" "$out.tmp.$$" || { rm -f "$out.tmp.$$"; die "building $tool $(version_of "$tool") failed"; }
  mv -f "$out.tmp.$$" "$out"
  BUILT[$tool]="built in $((SECONDS - start))s"
}

# Several worktrees, CI jobs and make test's background build share the cache. The lock is held
# per build, not per run, so a run that finds its tools built never waits for one building others.
lock_cache() {
  exec 9>"$CACHE/.kube-tools.lock"
  if ! flock -n 9; then
    log "kube-tools: another hack/kube-tools.sh is building, waiting for it"
    flock 9
  fi
}
unlock_cache() { exec 9>&-; }

# ensure_tool <tool> <requested tools...>: builds the tool unless cached (a Kubernetes component
# or prometheus-operator binary together with the other missing ones requested), prints one line
# and links it into bin/.
ensure_tool() {
  local tool=$1 t out
  shift
  out=$(tool_path "$tool")
  if [[ -z ${BUILT[$tool]:-} && ! -x $out ]]; then
    lock_cache
    # Another run may have built it while this one waited.
    if [[ ! -x $out ]]; then
      local -a group=()
      if is_k8s_tool "$tool"; then
        for t in "$@"; do if is_k8s_tool "$t" && [[ ! -x $(tool_path "$t") ]]; then group+=("$t"); fi; done
        build_k8s "${group[@]}"
      elif is_promop_tool "$tool"; then
        for t in "$@"; do if is_promop_tool "$t" && [[ ! -x $(tool_path "$t") ]]; then group+=("$t"); fi; done
        build_promop "${group[@]}"
      else
        build_one "$tool"
      fi
    fi
    unlock_cache
  fi
  if [[ $tool == prometheus-operator && ! -f $(tool_dir "$tool")/example/.ready ]]; then
    lock_cache
    promop_examples
    unlock_cache
  fi
  echo "$tool $(version_of "$tool") ${BUILT[$tool]:-cached} $out -> bin/$(bin_name "$tool")"
  ln -sfn "$out" "$BIN/$(bin_name "$tool")"
}

# bin/prometheus is Debian's 2.42 (hack/deps.sh: the dashboards and alert-rule tests); the
# Prometheus built here (Kubernetes discovery, for the real cluster's image) is
# bin/prometheus-cluster, so the two scripts, run side by side by make test, never swap the link
# under each other.
bin_name() { if [[ $1 == prometheus ]]; then echo prometheus-cluster; else echo "$1"; fi; }

write_env() {
  # envtest wants a directory holding exactly etcd, kube-apiserver and kubectl.
  if [[ -x $BIN/etcd && -x $BIN/kube-apiserver && -x $BIN/kubectl ]]; then
    mkdir -p "$BIN/k8s"
    for t in "${ENVTEST_TOOLS[@]}"; do ln -sfn "$(tool_path "$t")" "$BIN/k8s/$t"; done
  fi
  cat >"$BIN/kube.env.tmp.$$" <<EOF
# Generated by hack/kube-tools.sh; source it: . bin/kube.env
export CHARGESIM_CACHE="$CACHE"
export KUBEBUILDER_ASSETS="$BIN/k8s"
export PATH="$BIN:\$PATH"
export K8S_VERSION="$K8S_VERSION"
export ETCD_VERSION="$ETCD_VERSION"
export KWOK_VERSION="$KWOK_VERSION"
EOF
  mv -f "$BIN/kube.env.tmp.$$" "$BIN/kube.env"
}

main() {
  command -v go >/dev/null || die "go is not on PATH"
  local -a tools=()
  local t a
  if (($# == 0)); then
    tools=("${ALL_TOOLS[@]}")
  fi
  for a in "$@"; do
    case $a in
      all) tools+=("${ALL_TOOLS[@]}") ;;
      envtest) tools+=("${ENVTEST_TOOLS[@]}") ;;
      kwok-cluster | cluster) tools+=("${KWOK_TOOLS[@]}") ;;
      node) tools+=("${NODE_TOOLS[@]}") ;;
      monitoring) tools+=("${MONITORING_TOOLS[@]}") ;;
      -h | --help)
        sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
      *) tools+=("$a") ;;
    esac
  done
  for t in "${tools[@]}"; do
    version_of "$t" >/dev/null || die "unknown tool '$t' (known: ${ALL_TOOLS[*]} envtest cluster node monitoring all)"
  done
  mkdir -p "$CACHE" "$BIN"
  local -A seen=()
  local -a uniq=()
  for t in "${tools[@]}"; do
    [[ -n ${seen[$t]:-} ]] && continue
    seen[$t]=1
    uniq+=("$t")
  done
  # In the order asked: make test's background build asks in the order its steps need them.
  for t in "${uniq[@]}"; do
    ensure_tool "$t" "${uniq[@]}"
  done
  write_env
}

main "$@"
