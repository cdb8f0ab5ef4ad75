#!/usr/bin/env bash
# Copies the operator manifests controller-gen generates into the Helm chart, which can only read
# files under its own directory (.Files.Get):
#
#   config/crd/bases/*.yaml                 -> charts/chargesim/files/crds/
#   config/rbac/role.yaml                   -> charts/chargesim/files/rbac/role.yaml
#   config/rbac/leader_election_role.yaml   -> charts/chargesim/files/rbac/leader_election_role.yaml
#   config/rbac/user_roles.yaml             -> charts/chargesim/files/rbac/user_roles.yaml
#   config/rbac/metrics_reader_role.yaml    -> charts/chargesim/files/rbac/metrics_reader_role.yaml
#
#   hack/sync-chart-crds.sh           copy (run after `make manifests`)
#   hack/sync-chart-crds.sh --check   exit 1 and list the chart files that differ from config/
#
# The copies are byte-for-byte: the chart's templates add labels and annotations at render time.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC_CRDS=$ROOT/config/crd/bases
SRC_RBAC=$ROOT/config/rbac
DST=$ROOT/charts/chargesim/files

check=0
case ${1:-} in
  --check) check=1 ;;
  "") ;;
  -h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

die() { printf 'sync-chart-crds: %s\n' "$*" >&2; exit 1; }

shopt -s nullglob
crds=("$SRC_CRDS"/*.yaml)
((${#crds[@]})) || die "no CRDs in ${SRC_CRDS#"$ROOT"/} (run controller-gen / make manifests first)"
[[ -f $SRC_RBAC/role.yaml ]] || die "no ${SRC_RBAC#"$ROOT"/}/role.yaml (run controller-gen / make manifests first)"

# pairs of "source destination"
pairs=()
for f in "${crds[@]}"; do pairs+=("$f" "$DST/crds/$(basename "$f")"); done
pairs+=("$SRC_RBAC/role.yaml" "$DST/rbac/role.yaml")
for f in leader_election_role.yaml user_roles.yaml metrics_reader_role.yaml; do
  [[ -f $SRC_RBAC/$f ]] || die "no ${SRC_RBAC#"$ROOT"/}/$f"
  pairs+=("$SRC_RBAC/$f" "$DST/rbac/$f")
done

stale=()
for ((i = 0; i < ${#pairs[@]}; i += 2)); do
  src=${pairs[i]} dst=${pairs[i + 1]}
  if ! cmp -s "$src" "$dst"; then
    stale+=("${dst#"$ROOT"/}")
    if ((!check)); then
      mkdir -p "$(dirname "$dst")"
      cp "$src" "$dst"
    fi
  fi
done

# CRDs removed from config/ must leave the chart too.
for f in "$DST"/crds/*.yaml; do
  if [[ ! -f $SRC_CRDS/$(basename "$f") ]]; then
    stale+=("${f#"$ROOT"/} (no longer in config/crd/bases)")
    ((check)) || rm -f "$f"
  fi
done

if ((check)); then
  if ((${#stale[@]})); then
    printf 'sync-chart-crds: chart copies are stale, run hack/sync-chart-crds.sh:\n' >&2
    printf '  %s\n' "${stale[@]}" >&2
    exit 1
  fi
  echo "sync-chart-crds: chart CRDs and RBAC match config/"
else
  if ((${#stale[@]})); then printf 'updated %s\n' "${stale[@]}"; else echo "sync-chart-crds: up to date"; fi
fi
