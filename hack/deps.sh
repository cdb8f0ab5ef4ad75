#!/usr/bin/env bash
# Installs the pinned real dependencies that integration tests, benchmarks and `make run` start
# (DEVELOPERS.md: tests are real, a missing dependency is a failure telling you to run this).
#
#   hack/deps.sh ferretdb   only the FerretDB build (no apt; hack/test-e2e-kind.sh)
#   hack/deps.sh            mosquitto, prometheus + promtool, chromium, containerd + runc + CNI
#                           plugins + iptables + conntrack (Debian), FerretDB (built from source):
#                           everything the integration, chart, dashboard and cluster tests start
#
# Idempotent and fast when everything is present (no apt-get update, no build). Works with CI=true
# and no stdin. Builds are cached in ${CHARGESIM_CACHE:-$HOME/.cache/chargesim}/<tool>-<version>/
# and linked into <repo>/bin/ (git-ignored); <repo>/bin/deps.env exports their absolute paths for
# test/testenv (CHARGESIM_*_BIN).
set -euo pipefail

FERRETDB_MODULE=github.com/FerretDB/FerretDB
FERRETDB_VERSION=v1.24.2
# Debian bookworm versions the tests were written against. Debian replaces old builds of a
# release on its mirrors, so we pin the release line (prefix) instead of the exact build.
MOSQUITTO_DEB_PREFIX=2.0.
PROMETHEUS_DEB_PREFIX=2.42.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CHARGESIM_CACHE:-${HOME:-/root}/.cache/chargesim}
BIN_DIR=$REPO_ROOT/bin

only_ferretdb=false
for arg in "$@"; do
	case $arg in
	chromium) ;; # accepted for old callers: chromium is always installed (the docs-page tests need it)
	ferretdb) only_ferretdb=true ;; # only the FerretDB build (hack/test-e2e-kind.sh's store image; no apt)
	-h | --help)
		sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "hack/deps.sh: unknown argument ${arg@Q} (known: chromium, ferretdb)" >&2
		exit 2
		;;
	esac
done

log() { printf 'deps: %s\n' "$*" >&2; }
die() {
	printf 'deps: error: %s\n' "$*" >&2
	exit 1
}

SUDO=()
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null; then
	SUDO=(sudo -n)
fi

deb_installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]; }
deb_version() { dpkg-query -W -f='${Version}' "$1"; }

# The Debian packages ship system services (mosquitto on :1883, prometheus on :9090). Tests start
# their own instances on free ports, so the system ones must neither start nor stay enabled.
stop_services() {
	local svc
	for svc in "$@"; do
		if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
			"${SUDO[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
		else
			if [[ -x /etc/init.d/$svc ]]; then
				"${SUDO[@]}" /etc/init.d/"$svc" stop >/dev/null 2>&1 || true
			fi
			if command -v update-rc.d >/dev/null && [[ -e /etc/init.d/$svc ]]; then
				"${SUDO[@]}" update-rc.d "$svc" disable >/dev/null 2>&1 || true
			fi
		fi
	done
}

apt_updated=false
installed_now=()
apt_install() {
	local missing=() pkg
	for pkg in "$@"; do
		deb_installed "$pkg" || missing+=("$pkg")
	done
	[[ ${#missing[@]} -eq 0 ]] && return 0
	if [[ $(id -u) -ne 0 && ${#SUDO[@]} -eq 0 ]]; then
		die "need root or sudo to install ${missing[*]}"
	fi

	# Keep maintainer scripts from starting services during the install (exit 101 = "action
	# forbidden", see invoke-rc.d(8)); only when the machine has no policy of its own.
	local policy=/usr/sbin/policy-rc.d added_policy=false
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
		"${SUDO[@]}" chmod 755 "$policy"
		added_policy=true
		trap '"${SUDO[@]}" rm -f '"$policy" EXIT
	fi

	export DEBIAN_FRONTEND=noninteractive
	if ! $apt_updated && ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
		log "apt-get update (package lists lack ${missing[*]})"
		"${SUDO[@]}" apt-get update -qq </dev/null
		apt_updated=true
	fi
	log "apt-get install ${missing[*]}"
	if ! "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
		"${missing[@]}" </dev/null >/dev/null; then
		if $apt_updated; then die "apt-get install ${missing[*]} failed"; fi
		# Stale package lists (a superseded build no longer on the mirror): refresh once, retry.
		log "apt-get install failed; apt-get update and retry"
		"${SUDO[@]}" apt-get update -qq </dev/null
		apt_updated=true
		"${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
			-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
			"${missing[@]}" </dev/null >/dev/null || die "apt-get install ${missing[*]} failed"
	fi

	if $added_policy; then
		"${SUDO[@]}" rm -f "$policy"
		trap - EXIT
	fi
	installed_now+=("${missing[@]}")
}

check_prefix() { # name version prefix
	if [[ $2 != "$3"* ]]; then
		log "warning: $1 $2 installed, tests were written against $3x"
	fi
}

link() { # target name
	ln -sfn "$1" "$BIN_DIR/$2"
}

summary=()

# Several worktrees or CI jobs may run this at once: apt and the FerretDB build must not race.
mkdir -p "$CACHE"
exec 8>"$CACHE/.deps.lock"
if ! flock -n 8; then
	log "another hack/deps.sh is running, waiting for it"
	flock 8
fi

# --- Debian packages ----------------------------------------------------------------------
if ! $only_ferretdb; then
# chromium: TestDocsPageInChromium/TestDocsTryItInChromium load the API's docs page headless.
# containerd, runc, CNI plugins, iptables, conntrack (+ ip, sysctl, modprobe): the real node of
# hack/cluster.sh (make test-e2e-cluster); its containerd runs privately, never the system one.
pkgs=(mosquitto prometheus chromium containerd runc containernetworking-plugins iptables conntrack iproute2 procps kmod)
apt_install "${pkgs[@]}"
for svc in mosquitto prometheus containerd; do
	if [[ " ${installed_now[*]} " == *" $svc "* ]]; then stop_services "$svc"; fi
done

mkdir -p "$BIN_DIR" "$CACHE"

MOSQUITTO_BIN=/usr/sbin/mosquitto
MOSQUITTO_PASSWD_BIN=/usr/bin/mosquitto_passwd
PROMETHEUS_BIN=/usr/bin/prometheus
PROMTOOL_BIN=/usr/bin/promtool
for f in "$MOSQUITTO_BIN" "$MOSQUITTO_PASSWD_BIN" "$PROMETHEUS_BIN" "$PROMTOOL_BIN"; do
	[[ -x $f ]] || die "$f missing after install"
done
v=$(deb_version mosquitto)
check_prefix mosquitto "$v" "$MOSQUITTO_DEB_PREFIX"
link "$MOSQUITTO_BIN" mosquitto
link "$MOSQUITTO_PASSWD_BIN" mosquitto_passwd
summary+=("mosquitto   $v  bin/mosquitto -> $MOSQUITTO_BIN (+ bin/mosquitto_passwd)")
v=$(deb_version prometheus)
check_prefix prometheus "$v" "$PROMETHEUS_DEB_PREFIX"
link "$PROMETHEUS_BIN" prometheus
link "$PROMTOOL_BIN" promtool
summary+=("prometheus  $v  bin/prometheus -> $PROMETHEUS_BIN")
summary+=("promtool    $v  bin/promtool -> $PROMTOOL_BIN")

CHROMIUM_BIN=/usr/bin/chromium
[[ -x $CHROMIUM_BIN ]] || die "$CHROMIUM_BIN missing after install"
link "$CHROMIUM_BIN" chromium
summary+=("chromium    $(deb_version chromium)  bin/chromium -> $CHROMIUM_BIN")

CONTAINERD_BIN=/usr/bin/containerd
CTR_BIN=/usr/bin/ctr
RUNC_BIN=/usr/sbin/runc
CNI_BIN_DIR=/usr/lib/cni
for f in "$CONTAINERD_BIN" "$CTR_BIN" "$RUNC_BIN" "$CNI_BIN_DIR/bridge" "$CNI_BIN_DIR/host-local" "$CNI_BIN_DIR/loopback" /usr/sbin/iptables /usr/sbin/conntrack; do
	[[ -x $f ]] || die "$f missing after install"
done
summary+=("containerd  $(deb_version containerd)  runc $(deb_version runc)  cni $(deb_version containernetworking-plugins)  ($CNI_BIN_DIR)")

fi

# --- FerretDB (built from the module proxy) ---------------------------------------------------
FERRETDB_DIR=$CACHE/ferretdb-$FERRETDB_VERSION
FERRETDB_BIN=$FERRETDB_DIR/ferretdb

ferretdb_ok() {
	[[ -x $FERRETDB_BIN ]] || return 1
	# Captured, not piped into grep -q: with pipefail an early-exiting grep fails the pipe (SIGPIPE).
	local out
	out=$("$FERRETDB_BIN" --version 2>/dev/null) || return 1
	[[ $'\n'$out$'\n' == *$'\n'"version: $FERRETDB_VERSION"$'\n'* ]]
}

if ! ferretdb_ok; then
	command -v go >/dev/null || die "go not found (needed to build FerretDB)"
	log "building FerretDB $FERRETDB_VERSION (takes a few minutes on 2 cores)"
	# Run outside the repo so neither its go.mod nor a go.work takes part.
	mod_json=$(cd / && GOWORK=off GOFLAGS=-mod=mod go mod download -json "$FERRETDB_MODULE@$FERRETDB_VERSION") ||
		die "go mod download $FERRETDB_MODULE@$FERRETDB_VERSION failed"
	mod_dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$mod_json")
	[[ -d $mod_dir ]] || die "module dir not found in go mod download output"

	work=$(mktemp -d "${TMPDIR:-/tmp}/chargesim-ferretdb.XXXXXX")
	trap 'rm -rf "$work"' EXIT
	cp -R "$mod_dir/." "$work/src"
	chmod -R u+w "$work/src"
	# FerretDB embeds build/version/*.txt and panics at start unless version.txt holds a version
	# (normally written from `git describe`, absent from the module zip).
	printf '%s' "$FERRETDB_VERSION" >"$work/src/build/version/version.txt"
	printf '%s' "chargesim" >"$work/src/build/version/package.txt"
	mkdir -p "$FERRETDB_DIR"
	# SQLite backend only (modernc.org/sqlite, pure Go): no cgo, no PostgreSQL.
	(
		cd "$work/src"
		GOWORK=off GOFLAGS="-mod=mod -buildvcs=false -trimpath" CGO_ENABLED=0 GOTOOLCHAIN=local \
			go build -tags ferretdb_no_postgresql -o "$FERRETDB_BIN.tmp" ./cmd/ferretdb
	) || die "FerretDB build failed"
	mv -f "$FERRETDB_BIN.tmp" "$FERRETDB_BIN"
	rm -rf "$work"
	trap - EXIT
	ferretdb_ok || die "built FerretDB does not report $FERRETDB_VERSION"
fi
link "$FERRETDB_BIN" ferretdb
summary+=("ferretdb    $FERRETDB_VERSION  bin/ferretdb -> $FERRETDB_BIN")

if $only_ferretdb; then
	printf '%s\n' "${summary[@]}"
	exit 0
fi

# --- bin/deps.env -----------------------------------------------------------------------------
tmp_env=$(mktemp "$BIN_DIR/.deps.env.XXXXXX")
{
	echo "# Written by hack/deps.sh: absolute paths of the test dependencies (source it)."
	echo "export CHARGESIM_FERRETDB_BIN=$FERRETDB_BIN"
	echo "export CHARGESIM_MOSQUITTO_BIN=$MOSQUITTO_BIN"
	echo "export CHARGESIM_MOSQUITTO_PASSWD_BIN=$MOSQUITTO_PASSWD_BIN"
	echo "export CHARGESIM_PROMETHEUS_BIN=$PROMETHEUS_BIN"
	echo "export CHARGESIM_PROMTOOL_BIN=$PROMTOOL_BIN"
	echo "export CHARGESIM_CHROMIUM_BIN=$CHROMIUM_BIN"
	echo "export CHARGESIM_CONTAINERD_BIN=$CONTAINERD_BIN"
	echo "export CHARGESIM_CTR_BIN=$CTR_BIN"
	echo "export CHARGESIM_RUNC_BIN=$RUNC_BIN"
	echo "export CHARGESIM_CNI_BIN_DIR=$CNI_BIN_DIR"
} >"$tmp_env"
chmod 644 "$tmp_env"
mv -f "$tmp_env" "$BIN_DIR/deps.env"

printf '%s\n' "${summary[@]}"
