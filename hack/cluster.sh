#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, without Docker: containerd (Debian) + runc +
# CNI bridge, kubelet and kube-proxy (iptables mode) built by hack/kube-tools.sh, and the control
# plane (etcd, kube-apiserver, controller-manager, scheduler) started by kwokctl exactly as for
# hack/kwok-cluster.sh, minus kwok's fake nodes. Containers really run: the chargesim image, the
# chart's operator and the simulations' pods. Needs root.
#
#   hack/cluster.sh up          start (or reuse) the cluster; build and import the images;
#                               the last line printed is KUBECONFIG=<path>
#   hack/cluster.sh down        stop it and leave the host as it was (sysctls, iptables, bridge,
#                               cgroups, mounts, /run/containerd)
#   hack/cluster.sh images [name...]  build image tarballs only (pause chargesim ferretdb
#                               coredns prometheus-operator prometheus-config-reloader
#                               prometheus; default all); prints <dir>/images/<name>.tar
#                               (hack/test-e2e-kind.sh loads them into kind)
#   hack/cluster.sh kubeconfig  print the kubeconfig path of the running cluster
#
# State: $CHARGESIM_CLUSTER_DIR (default ${CHARGESIM_CACHE:-$HOME/.cache/chargesim}/cluster);
# logs in <dir>/logs. Images (tags in bin/cluster.env after `up`):
#   chargesim.local/chargesim:dev     this working tree (same content as the Dockerfile's runtime stage)
#   chargesim.local/ferretdb:v1.24.2  FerretDB on SQLite for the chart's mongodb.enabled=true
#   chargesim.local/pause:v1          the sandbox image
#   chargesim.local/coredns:<ver>     cluster DNS (kube-system/coredns, Service 10.96.0.10)
#   chargesim.local/prometheus-operator:<ver>, chargesim.local/prometheus-config-reloader:<ver>,
#   chargesim.local/prometheus:<ver>  the monitoring stack test/cluster installs (hack/kube-tools.sh
#                                     monitoring; nothing of it runs until a test deploys it)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CHARGESIM_CACHE:-$HOME/.cache/chargesim}
DIR=${CHARGESIM_CLUSTER_DIR:-$CACHE/cluster}
BIN=$ROOT/bin
NAME=chargesim-node
CLUSTER=chargesim-real # kwokctl's name for the control plane
SERVICE_CIDR=10.96.0.0/16
DNS_IP=10.96.0.10
POD_CIDR=10.244.0.0/16
BRIDGE=chargesim0
CNI_DIR=/usr/lib/cni
FERRETDB_VERSION=v1.24.2
IMG_CHARGESIM=chargesim.local/chargesim:dev
IMG_FERRETDB=chargesim.local/ferretdb:$FERRETDB_VERSION
IMG_PAUSE=chargesim.local/pause:v1
SOCK=$DIR/containerd/containerd.sock
KWOK_WORKDIR=$DIR/kwok
KUBECONFIG_PATH=$KWOK_WORKDIR/clusters/$CLUSTER/kubeconfig.yaml
# Host settings the kubelet or the pod network change; saved on `up`, restored on `down`.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables vm.overcommit_memory vm.panic_on_oom
  kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

export GOTOOLCHAIN=local
export KWOK_WORKDIR

log() { printf '[cluster %4ss] %s\n' "$SECONDS" "$*" >&2; }
die() { printf 'cluster: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

kubectl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
ctr() { /usr/bin/ctr --address "$SOCK" -n k8s.io "$@"; }

host_ip() { ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -1; }

# ---- processes -----------------------------------------------------------------------------
# Every process started here has $DIR in its command line: that, not its name, identifies it.
pid_of() {
  local f=$DIR/pids/$1.pid pid
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF "$DIR/" && echo "$pid"
}

start_proc() { # name command...
  local name=$1
  shift
  pid_of "$name" >/dev/null && return 0
  mkdir -p "$DIR/pids" "$DIR/logs"
  setsid "$@" >>"$DIR/logs/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$DIR/pids/$name.pid"
  log "started $name (pid $!, log $DIR/logs/$name.log)"
}

stop_pids() { # grace-seconds pid...
  local grace=$1 i p
  shift
  (($# > 0)) || return 0
  kill "$@" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    local alive=0
    for p in "$@"; do [[ -d /proc/$p ]] && alive=1; done
    ((alive)) || return 0
    sleep 0.1
  done
  kill -9 "$@" 2>/dev/null || true
}

stop_proc() {
  local pid
  pid=$(pid_of "$1") || { rm -f "$DIR/pids/$1.pid"; return 0; }
  stop_pids 15 "$pid"
  rm -f "$DIR/pids/$1.pid"
}

# Processes whose command line mentions $DIR (containerd's shims carry its socket path).
pids_mentioning_dir() {
  local f pid
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}
    pid=${pid%/cmdline}
    [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
    tr '\0' ' ' 2>/dev/null <"$f" | grep -qF "$DIR/containerd/" && echo "$pid"
  done
  return 0
}

wait_for() { # what tries(0.2s) command...
  local what=$1 n=$2 i
  shift 2
  for ((i = 0; i < n; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "$what: timed out (logs in $DIR/logs)"
}

# ---- host ------------------------------------------------------------------------------------
preflight() {
  [[ $(id -u) -eq 0 ]] || die "needs root (containers, cgroups, iptables)"
  local f
  for f in /usr/bin/containerd /usr/bin/ctr /usr/sbin/runc "$CNI_DIR/bridge" "$CNI_DIR/host-local" "$CNI_DIR/loopback" /usr/sbin/iptables /usr/sbin/conntrack; do
    [[ -x $f ]] || die "$f missing: run hack/deps.sh"
  done
}

save_sysctls() {
  [[ -f $DIR/sysctl.saved ]] && return 0
  [[ -d /proc/sys/net/bridge ]] || modprobe br_netfilter 2>/dev/null || true
  local k v
  : >"$DIR/sysctl.saved.tmp"
  for k in "${SYSCTLS[@]}"; do
    v=$(sysctl -n "$k" 2>/dev/null) || continue
    printf '%s=%s\n' "$k" "$v" >>"$DIR/sysctl.saved.tmp"
  done
  # Directories and state that exist before the cluster are never removed by `down`.
  if [[ -e /run/containerd ]]; then ls -A /run/containerd >"$DIR/run-containerd.preexisting"; fi
  ls /var/run/netns 2>/dev/null >"$DIR/netns.preexisting" || true
  mv "$DIR/sysctl.saved.tmp" "$DIR/sysctl.saved"
}

restore_sysctls() {
  [[ -f $DIR/sysctl.saved ]] || return 0
  local line
  while IFS= read -r line; do
    sysctl -q -w "$line" >/dev/null 2>&1 || log "could not restore $line"
  done <"$DIR/sysctl.saved"
  rm -f "$DIR/sysctl.saved"
}

# ---- containerd --------------------------------------------------------------------------------
write_if_changed() { # path: content on stdin; returns 0 when the file changed
  local tmp
  tmp=$(mktemp "$1.XXXXXX")
  cat >"$tmp"
  if [[ -f $1 ]] && cmp -s "$tmp" "$1"; then
    rm -f "$tmp"
    return 1
  fi
  mv -f "$tmp" "$1"
}

start_containerd() {
  mkdir -p "$DIR/containerd" "$DIR/cni/net.d" "$DIR/cni/ipam"
  write_if_changed "$DIR/cni/net.d/10-chargesim.conflist" <<EOF || true
{
  "cniVersion": "0.4.0",
  "name": "chargesim",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$DIR/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  # restrict_oom_score_adj: this VM lacks CAP_SYS_RESOURCE; without it runc cannot lower a
  # sandbox's oom_score_adj and every sandbox fails ("can't get final child's PID from pipe").
  write_if_changed "$DIR/containerd/config.toml" <<EOF && stop_proc containerd || true
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
plugin_dir = ""
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$IMG_PAUSE"
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_DIR"
    conf_dir = "$DIR/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
EOF
  start_proc containerd /usr/bin/containerd --config "$DIR/containerd/config.toml"
  wait_for "containerd on $SOCK" 150 ctr version
}

# ---- images ------------------------------------------------------------------------------------
# Built into $DIR/images as docker-archive tarballs by hack/imagebuild (reproducible: same
# input, same digest); import_images imports those whose digest changed since the last import.
IMAGES=(pause chargesim ferretdb coredns prometheus-operator prometheus-config-reloader prometheus)
# <tool>-<version> of a tool's cache directory, from the link hack/kube-tools.sh made in bin/.
tool_version() { basename "$(dirname "$(readlink -f "$BIN/$1")")" | sed "s/^$1-//"; }
# Image names of the monitoring stack (tags: the pinned versions of hack/kube-tools.sh); the
# Prometheus image is tagged with its release (v3.x.y), the version its CR's spec.version names.
monitoring_images() {
  local v
  v=$(tool_version prometheus-operator)
  IMG_PROMETHEUS_OPERATOR=chargesim.local/prometheus-operator:$v
  IMG_PROMETHEUS_CONFIG_RELOADER=chargesim.local/prometheus-config-reloader:$v
  PROMETHEUS_RELEASE=v$("$BIN/prometheus-cluster" --version | sed -n 's/^prometheus, version \([0-9.]*\).*/\1/p')
  [[ $PROMETHEUS_RELEASE != v ]] || die "cannot read the version of $BIN/prometheus-cluster"
  IMG_PROMETHEUS=chargesim.local/prometheus:$PROMETHEUS_RELEASE
}
build_images() {
  local out=$DIR/images gobuild=(go build -trimpath -buildvcs=false -ldflags "-s -w")
  mkdir -p "$out"
  local version
  version=$(cd "$ROOT" && git describe --tags --always --dirty 2>/dev/null || echo dev)
  (
    cd "$ROOT"
    export CGO_ENABLED=0
    go build -o "$out/imagebuild" ./hack/imagebuild
    # Not -trimpath (the Dockerfile's release build has it): the same compile flags as the tests,
    # so the packages come from the build cache instead of being compiled again (minutes, cold).
    go build -buildvcs=false -ldflags "-s -w -X main.version=$version" -o "$out/chargesim" .
    "${gobuild[@]}" -o "$out/pause" ./hack/pause
    "${gobuild[@]}" -o "$out/ferretdb-entrypoint" ./hack/ferretdb-entrypoint
  ) || die "building the image binaries failed"
  local ib=$out/imagebuild ca=/etc/ssl/certs/ca-certificates.crt
  [[ -f $ca ]] || die "$ca missing (Debian package ca-certificates)"
  local -a common=(-base -add "$ca=/etc/ssl/certs/ca-certificates.crt:0644")
  want() { [[ " ${IMAGES[*]} " == *" $1 "* ]]; }
  # The Dockerfile's runtime stage: static binary, CA certificates, nonroot 65532, OCI labels.
  want chargesim && "$ib" -o "$out/chargesim.tar" -tag "$IMG_CHARGESIM" "${common[@]}" -user 65532:65532 \
    -add "$out/chargesim=/chargesim:0755" -entrypoint '["/chargesim"]' -cmd '["--help"]' \
    -expose 8080/tcp -expose 9090/tcp -expose 1883/tcp \
    -label org.opencontainers.image.title=chargesim \
    -label "org.opencontainers.image.description=EV charging station simulator and telemetry pipeline (publisher, listener, API, broker, operator)" \
    -label org.opencontainers.image.source=https://github.com/chargesim/chargesim \
    -label "org.opencontainers.image.version=$version" \
    -label org.opencontainers.image.licenses=Apache-2.0 >"$out/chargesim.digest"
  want pause && "$ib" -o "$out/pause.tar" -tag "$IMG_PAUSE" -user 65535:65535 \
    -add "$out/pause=/pause:0755" -entrypoint '["/pause"]' >"$out/pause.digest"
  want ferretdb && "$ib" -o "$out/ferretdb.tar" -tag "$IMG_FERRETDB" "${common[@]}" -user 65532:65532 \
    -add "$CACHE/ferretdb-$FERRETDB_VERSION/ferretdb=/ferretdb:0755" \
    -add "$out/ferretdb-entrypoint=/ferretdb-entrypoint:0755" \
    -entrypoint '["/ferretdb-entrypoint"]' -cmd '["mongod"]' -expose 27017/tcp \
    -label org.opencontainers.image.title=ferretdb \
    -label "org.opencontainers.image.version=$FERRETDB_VERSION" >"$out/ferretdb.digest"
  want coredns && "$ib" -o "$out/coredns.tar" -tag "$IMG_COREDNS" "${common[@]}" \
    -add "$(readlink -f "$BIN/coredns")=/coredns:0755" -entrypoint '["/coredns"]' \
    -expose 53/udp -expose 53/tcp \
    -label org.opencontainers.image.title=coredns >"$out/coredns.digest"
  # The monitoring stack, as upstream's images: one static binary each, non-root (the pods'
  # securityContext sets the same user), CA certificates for HTTPS scrapes.
  want prometheus-operator && "$ib" -o "$out/prometheus-operator.tar" -tag "$IMG_PROMETHEUS_OPERATOR" "${common[@]}" \
    -user 65532:65532 -add "$(readlink -f "$BIN/prometheus-operator")=/bin/operator:0755" \
    -entrypoint '["/bin/operator"]' -expose 8080/tcp \
    -label org.opencontainers.image.title=prometheus-operator \
    -label "org.opencontainers.image.version=${IMG_PROMETHEUS_OPERATOR##*:}" >"$out/prometheus-operator.digest"
  want prometheus-config-reloader && "$ib" -o "$out/prometheus-config-reloader.tar" -tag "$IMG_PROMETHEUS_CONFIG_RELOADER" "${common[@]}" \
    -user 65532:65532 -add "$(readlink -f "$BIN/prometheus-config-reloader")=/bin/prometheus-config-reloader:0755" \
    -entrypoint '["/bin/prometheus-config-reloader"]' \
    -label org.opencontainers.image.title=prometheus-config-reloader \
    -label "org.opencontainers.image.version=${IMG_PROMETHEUS_CONFIG_RELOADER##*:}" >"$out/prometheus-config-reloader.digest"
  # The operator mounts the config, rules and data (emptyDir at /prometheus) and passes every flag.
  want prometheus && "$ib" -o "$out/prometheus.tar" -tag "$IMG_PROMETHEUS" "${common[@]}" \
    -user 65532:65532 -add "$(readlink -f "$BIN/prometheus-cluster")=/bin/prometheus:0755" -workdir /prometheus \
    -entrypoint '["/bin/prometheus"]' -expose 9090/tcp \
    -label org.opencontainers.image.title=prometheus \
    -label "org.opencontainers.image.version=$PROMETHEUS_RELEASE" >"$out/prometheus.digest"
  # What test/cluster's installMonitoring needs to know (also sourced by hack/test-e2e-kind.sh).
  if want prometheus; then
    cat >"$out/monitoring.env" <<EOF
export CHARGESIM_CLUSTER_PROMETHEUS_OPERATOR_IMAGE="$IMG_PROMETHEUS_OPERATOR"
export CHARGESIM_CLUSTER_PROMETHEUS_CONFIG_RELOADER_IMAGE="$IMG_PROMETHEUS_CONFIG_RELOADER"
export CHARGESIM_CLUSTER_PROMETHEUS_IMAGE="$IMG_PROMETHEUS"
export CHARGESIM_CLUSTER_PROMETHEUS_VERSION="$PROMETHEUS_RELEASE"
export CHARGESIM_CLUSTER_PROMETHEUS_OPERATOR_EXAMPLES="$(dirname "$(readlink -f "$BIN/prometheus-operator")")/example"
EOF
  fi
  local img
  for img in "${IMAGES[@]}"; do log "image $(cat "$out/$img.digest")"; done
}

import_images() {
  local out=$DIR/images img
  for img in "${IMAGES[@]}"; do
    if [[ -f $out/$img.imported ]] && cmp -s "$out/$img.digest" "$out/$img.imported" &&
      ctr images ls -q | grep -qxF "$(awk '{print $1}' "$out/$img.digest")"; then
      continue
    fi
    ctr images import "$out/$img.tar" >"$DIR/logs/import-$img.log" 2>&1 ||
      die "ctr images import $img failed: $(cat "$DIR/logs/import-$img.log")"
    cp "$out/$img.digest" "$out/$img.imported"
    log "imported $img"
  done
}

# ---- control plane -----------------------------------------------------------------------------
kwokctl() { "$BIN/kwokctl" "$@" 9>&-; }

apiserver_ok() { kubectl --request-timeout=5s get --raw /readyz >/dev/null 2>&1; }

start_control_plane() {
  apiserver_ok && return 0
  kwokctl delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_PATH" >/dev/null 2>&1 || true
  rm -rf "$KWOK_WORKDIR/clusters/$CLUSTER"
  local ip cfg=$KWOK_WORKDIR/kwokctl.yaml
  ip=$(host_ip)
  [[ -n $ip ]] || die "no host IP (ip route get)"
  mkdir -p "$KWOK_WORKDIR"
  # The apiserver binds every address and advertises the host's, which pods reach through the
  # bridge: the `kubernetes` Service's endpoint. Its certificate also names the Service IP.
  cat >"$cfg" <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeAuthorization: true
  kubeApiserverCertSANs: ["${SERVICE_CIDR%.0/*}.1", "$ip"]
  disable: [kwok-controller]
  kubeVersion: $("$BIN/kube-apiserver" --version | awk '{print $2}')
  etcdBinary: $(readlink -f "$BIN/etcd")
  kubeApiserverBinary: $(readlink -f "$BIN/kube-apiserver")
  kubeControllerManagerBinary: $(readlink -f "$BIN/kube-controller-manager")
  kubeSchedulerBinary: $(readlink -f "$BIN/kube-scheduler")
  kwokControllerBinary: $(readlink -f "$BIN/kwok")
  kubectlBinary: $(readlink -f "$BIN/kubectl")
componentsPatches:
- name: kube-apiserver
  extraArgs:
  - {key: bind-address, value: 0.0.0.0}
  - {key: advertise-address, value: "$ip"}
  - {key: service-cluster-ip-range, value: "$SERVICE_CIDR"}
  # logs, exec and port-forward: the node's name resolves nowhere, its InternalIP is this host.
  - {key: kubelet-preferred-address-types, value: "InternalIP,Hostname"}
- name: kube-controller-manager
  extraArgs:
  - {key: service-cluster-ip-range, value: "$SERVICE_CIDR"}
EOF
  kwokctl --config "$cfg" create cluster --name "$CLUSTER" --runtime binary \
    --kubeconfig "" --wait 2m --timeout 5m >&2 ||
    die "kwokctl create cluster failed; logs: $KWOK_WORKDIR/clusters/$CLUSTER/logs"
}

# ---- node --------------------------------------------------------------------------------------
start_node() {
  local ip pki=$KWOK_WORKDIR/clusters/$CLUSTER/pki
  ip=$(host_ip)
  mkdir -p "$DIR/kubelet" "$DIR/kube-proxy"
  write_if_changed "$DIR/kubelet/config.yaml" <<EOF && stop_proc kubelet || true
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$SOCK
# The apiserver reaches the kubelet for logs, exec and port-forward without a client
# certificate (kwokctl sets none): this single-node test cluster trusts it.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
clusterDomain: cluster.local
clusterDNS: ["$DNS_IP"]
resolvConf: /etc/resolv.conf
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
# A test machine with a busy disk: never evict or garbage-collect the locally imported images.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 110
EOF
  start_proc kubelet "$(readlink -f "$BIN/kubelet")" --config "$DIR/kubelet/config.yaml" \
    --kubeconfig "$KUBECONFIG_PATH" --root-dir "$DIR/kubelet/root" --cert-dir "$DIR/kubelet/pki" \
    --hostname-override "$NAME" --node-ip "$ip" --v=1
  # kube-proxy exits when its config file is rewritten: write it only when it changed.
  write_if_changed "$DIR/kube-proxy/config.yaml" <<EOF && stop_proc kube-proxy || true
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: $KUBECONFIG_PATH
hostnameOverride: $NAME
clusterCIDR: $POD_CIDR
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the host's conntrack table size and route_localnet alone.
conntrack: {maxPerCore: 0}
iptables: {localhostNodePorts: false}
EOF
  start_proc kube-proxy "$(readlink -f "$BIN/kube-proxy")" --config "$DIR/kube-proxy/config.yaml" --v=1
  wait_for "node $NAME registered" 300 kubectl get node "$NAME"
  kubectl wait --for=condition=Ready "node/$NAME" --timeout=120s >/dev/null ||
    die "node $NAME not Ready (logs: $DIR/logs/kubelet.log)"
}

deploy_coredns() {
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        forward . /etc/resolv.conf
        cache 30
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      priorityClassName: system-cluster-critical
      containers:
      - name: coredns
        image: $IMG_COREDNS
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
          periodSeconds: 2
        livenessProbe:
          httpGet: {path: /health, port: 8080}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}
        volumeMounts:
        - {name: config, mountPath: /etc/coredns, readOnly: true}
      volumes:
      - name: config
        configMap: {name: coredns}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  selector: {k8s-app: kube-dns}
  clusterIP: $DNS_IP
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
EOF
  kubectl -n kube-system rollout status deploy/coredns --timeout=120s >/dev/null ||
    die "CoreDNS did not become ready (kubectl -n kube-system describe pod -l k8s-app=kube-dns)"
}

write_env() {
  cat >"$BIN/cluster.env.tmp.$$" <<EOF
# Written by hack/cluster.sh up: source it.
export KUBECONFIG="$KUBECONFIG_PATH"
export CHARGESIM_CLUSTER_IMAGE="$IMG_CHARGESIM"
export CHARGESIM_CLUSTER_FERRETDB_IMAGE="$IMG_FERRETDB"
export CHARGESIM_CLUSTER_CTR="/usr/bin/ctr --address $SOCK -n k8s.io"
EOF
  cat "$DIR/images/monitoring.env" >>"$BIN/cluster.env.tmp.$$"
  mv -f "$BIN/cluster.env.tmp.$$" "$BIN/cluster.env"
}

up() {
  preflight
  log "tools"
  "$ROOT/hack/kube-tools.sh" cluster node helm monitoring >/dev/null 9>&-
  [[ -x $CACHE/ferretdb-$FERRETDB_VERSION/ferretdb ]] || "$ROOT/hack/deps.sh" >/dev/null 9>&-
  monitoring_images
  IMG_COREDNS=chargesim.local/coredns:$("$BIN/coredns" -version | sed -n 's/^CoreDNS-\([0-9.]*\).*/v\1/p')
  mkdir -p "$DIR/logs"
  save_sysctls
  sysctl -q -w net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 >/dev/null
  start_containerd
  build_images
  import_images
  start_control_plane
  start_node
  deploy_coredns
  write_env
  log "ready: $(kubectl get node "$NAME" -o jsonpath='{.status.nodeInfo.kubeletVersion} {.status.nodeInfo.containerRuntimeVersion}')"
  echo "KUBECONFIG=$KUBECONFIG_PATH"
}

# ---- teardown ----------------------------------------------------------------------------------
cgroup_pids() { find /sys/fs/cgroup/*/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u; }

remove_iptables() {
  local t line chain
  for t in filter nat mangle; do
    # Rules jumping to our chains first, then the chains themselves.
    while IFS= read -r line; do
      eval "iptables -w -t $t -D ${line#-A }" 2>/dev/null || true
    done < <(iptables-save -t "$t" 2>/dev/null | grep -E '^-A ' | grep -E -- '-j (KUBE-|CNI-)' | grep -vE '^-A (KUBE-|CNI-)')
    for chain in $(iptables-save -t "$t" 2>/dev/null | sed -n 's/^:\(\(KUBE\|CNI\)-[^ ]*\) .*/\1/p'); do
      iptables -w -t "$t" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables-save -t "$t" 2>/dev/null | sed -n 's/^:\(\(KUBE\|CNI\)-[^ ]*\) .*/\1/p'); do
      iptables -w -t "$t" -X "$chain" 2>/dev/null || true
    done
  done
}

down() {
  [[ $(id -u) -eq 0 ]] || die "needs root"
  [[ -d $DIR ]] || return 0
  stop_proc kube-proxy
  stop_proc kubelet
  # Containers: every process in the kubelet's cgroups, then containerd's shims and containerd.
  local -a pids
  mapfile -t pids < <(cgroup_pids)
  ((${#pids[@]} == 0)) || kill -9 "${pids[@]}" 2>/dev/null || true
  mapfile -t pids < <(pids_mentioning_dir)
  stop_pids 5 "${pids[@]}"
  stop_proc containerd
  if [[ -x $BIN/kwokctl && -d $KWOK_WORKDIR/clusters/$CLUSTER ]]; then
    kwokctl delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_PATH" >/dev/null 2>&1 || true
  fi
  # Control-plane leftovers (kwokctl does not wait for them).
  local f p
  pids=()
  for f in "$KWOK_WORKDIR/clusters/$CLUSTER"/pids/*.pid; do
    [[ -f $f ]] && p=$(<"$f") && [[ -d /proc/$p ]] && pids+=("$p")
  done
  stop_pids 10 "${pids[@]}"
  # Mounts: rootfs overlays, shm, volumes (deepest first), and the pods' network namespaces.
  # (grep finds nothing when there is nothing left: not an error.)
  { findmnt -rn -o TARGET | grep -F "$DIR/" || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  local ns
  for ns in $(ls /var/run/netns 2>/dev/null); do
    [[ $ns == cni-* ]] || continue
    grep -qxF "$ns" "$DIR/netns.preexisting" 2>/dev/null && continue
    umount -l "/var/run/netns/$ns" 2>/dev/null || true
    rm -f "/var/run/netns/$ns"
  done
  remove_iptables
  # The pods' veths (ports of our bridge) go with their network namespaces, but the kernel frees
  # those lazily: delete them now.
  local veth
  for veth in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$veth" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  find /sys/fs/cgroup/*/kubepods -depth -type d -exec rmdir {} \; 2>/dev/null || true
  restore_sysctls
  # /run/containerd (runc state, shim sockets): ours unless it was there before `up`; then only
  # the entries that appeared since.
  { findmnt -rn -o TARGET | grep '^/run/containerd/' || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  if [[ ! -e $DIR/run-containerd.preexisting ]]; then
    rm -rf /run/containerd
  else
    for f in $(ls -A /run/containerd 2>/dev/null); do
      grep -qxF "$f" "$DIR/run-containerd.preexisting" || rm -rf "/run/containerd/$f"
    done
  fi
  rm -f "$DIR/run-containerd.preexisting" "$DIR/netns.preexisting"
  # Images stay in $DIR/containerd/root for the next `up`; everything else of this run goes.
  rm -rf "$DIR/containerd/state" "$DIR/kubelet/root" "$DIR/kubelet/pki" "$DIR/cni/ipam" "$DIR/pids" "$KWOK_WORKDIR/clusters/$CLUSTER"
  log "down"
}

cmd=${1:-}
mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9
case $cmd in
  up) up ;;
  down) down ;;
  images)
    shift
    (($# == 0)) || IMAGES=("$@")
    if [[ " ${IMAGES[*]} " == *" coredns "* ]]; then
      "$ROOT/hack/kube-tools.sh" coredns >/dev/null 9>&-
      IMG_COREDNS=chargesim.local/coredns:$("$BIN/coredns" -version | sed -n 's/^CoreDNS-\([0-9.]*\).*/v\1/p')
    fi
    if [[ " ${IMAGES[*]} " == *" prometheus"* ]]; then
      "$ROOT/hack/kube-tools.sh" monitoring >/dev/null 9>&-
      monitoring_images
    fi
    mkdir -p "$DIR/logs"
    build_images
    for img in "${IMAGES[@]}"; do echo "$DIR/images/$img.tar"; done
    ;;
  kubeconfig)
    apiserver_ok || die "not running (hack/cluster.sh up)"
    echo "$KUBECONFIG_PATH"
    ;;
  *) usage ;;
esac
