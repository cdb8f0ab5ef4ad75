#!/usr/bin/env bash
# Fresh-machine check (make check-test-deps, the last step of make test): runs the install
# steps `make test` runs (hack/deps.sh, hack/kube-tools.sh), then fails when a program a test
# needs is not provided by them. A package installed by hand on this machine therefore cannot
# hide a missing install step: every program must be
#   - a link in bin/ made by those steps (built tools, FerretDB, Debian binaries they link), or
#   - a file of a Debian package hack/deps.sh installs (its pkgs=(...) list), or
#   - a file of a Debian package every Debian system has (Priority: required / Essential), or
#   - go or git: a fresh machine has Go and a clone of the repository.
#
# Programs a test needs, found statically:
#   - testenv.Bin(t, "<name>") and exec.Command/LookPath("<name>") in Go test code,
#   - the commands run by the hack/ scripts make test calls (command position of each line,
#     heredocs skipped), minus shell builtins and the scripts' own functions.
#
#   hack/check-test-deps.sh             run the install steps, then check
#   hack/check-test-deps.sh --no-install  check what is installed now
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=$ROOT/bin
# The scripts `make test` runs (directly or through another one).
SCRIPTS=(hack/test-all.sh hack/deps.sh hack/kube-tools.sh hack/kwok-cluster.sh hack/cluster.sh hack/test-chart.sh hack/test-dashboards.sh hack/check-test-deps.sh)

log() { printf 'check-test-deps: %s\n' "$*" >&2; }

if [[ ${1:-} != --no-install ]]; then
  log "install steps: hack/deps.sh, hack/kube-tools.sh"
  hack/deps.sh >/dev/null
  hack/kube-tools.sh >/dev/null
fi

# ---- what the steps provide ---------------------------------------------------------------------
mapfile -t deps_pkgs < <(sed -n 's/^pkgs=(\(.*\))$/\1/p' hack/deps.sh | tr ' ' '\n' | sed '/^$/d')
((${#deps_pkgs[@]} > 0)) || { log "no pkgs=(...) line in hack/deps.sh"; exit 1; }

# ---- what the tests need ------------------------------------------------------------------------
go_names() {
  git ls-files '*.go' | xargs grep -hoE 'Bin\((t|tb|b), "[a-z0-9_.-]+"\)|LookPath\("[a-z0-9_.-]+"\)|exec\.Command(Context)?\(([a-z]+, )?"[a-z0-9_.-]+"' |
    sed -E 's/.*"([a-z0-9_.-]+)".*/\1/'
}

# Words in command position: line start, after | ; && || $( ` and after if/then/do/else/!/time.
# Skips comments and heredoc bodies; keeps only plain names (no $, /, =).
script_names() {
  awk '
    heredoc != "" { if ($0 ~ "^[[:space:]]*" heredoc "[[:space:]]*$") heredoc = ""; next }
    /^[[:space:]]*#/ { next }
    {
      line = $0
      if (match(line, /<<-?[[:space:]]*'"'"'?"?[A-Z_]+/)) {
        tag = substr(line, RSTART, RLENGTH); gsub(/[<\-'"'"'" ]/, "", tag); heredoc = tag
      }
      gsub(/#[^"'"'"']*$/, "", line)
      sub(/^[[:space:]]*[A-Za-z0-9_.*|" -]+\)[[:space:]]/, "", line) # a case label
      n = split(line, parts, /(\|\||&&|\||;|\$\(|`|\(\(|\)\)|[{}()])/)
      for (i = 1; i <= n; i++) {
        p = parts[i]; sub(/^[[:space:]]+/, "", p)
        while (p ~ /^(if|then|do|else|elif|while|until|!|time|exec|command|nice -n [0-9]+|[A-Za-z_][A-Za-z0-9_]*=[^ ]*)[[:space:]]+/) {
          sub(/^(if|then|do|else|elif|while|until|!|time|exec|command|nice -n [0-9]+|[A-Za-z_][A-Za-z0-9_]*=[^ ]*)[[:space:]]+/, "", p)
        }
        split(p, w, /[[:space:]]+/)
        if (w[1] ~ /^[a-z][a-z0-9_.+-]*$/) print w[1]
      }
    }' "$@"
}

builtins=$(compgen -b; compgen -k)
functions=$(grep -hoE '^[[:space:]]*[a-z_][a-z0-9_]*\(\)' "${SCRIPTS[@]}" | tr -d '() \t')

mapfile -t needed < <({ go_names; script_names "${SCRIPTS[@]}"; } | sort -u |
  grep -vxF -f <(printf '%s\n' $builtins $functions))

# Resolve every program once; one dpkg-query for all of them (Debian's usrmerge: /usr/bin/x is
# registered as /bin/x, so both spellings are asked).
declare -A where=()
paths=()
for name in "${needed[@]}"; do
  [[ $name == go || $name == git || -e $BIN/$name ]] && continue
  path=$(PATH="$BIN:$PATH:/usr/sbin:/sbin" type -P "$name" || true)
  # Not a program anywhere: a word the heuristics caught that is no command (a sub-command of a
  # script, a kubectl verb). Only programs can hide behind a hand install.
  [[ -n $path ]] || continue
  real=$(readlink -f "$path")
  where[$name]=$real
  paths+=("$path" "$real" "${real#/usr}" "${path#/usr}")
done
declare -A owner=()
while IFS= read -r line; do
  pkg=${line%%: *}
  f=${line#*: }
  pkg=${pkg%%:*}
  owner[$f]=${pkg%%,*}
done < <( ((${#paths[@]} == 0)) || dpkg-query -S "${paths[@]}" 2>/dev/null)

fail=0
for name in "${!where[@]}"; do
  real=${where[$name]}
  pkg=${owner[$real]:-${owner[${real#/usr}]:-}}
  if [[ -z $pkg ]]; then
    log "MISSING STEP: tests run '$name' ($real), which no Debian package provides and no install step links into bin/"
    fail=1
    continue
  fi
  printf '%s\n' "${deps_pkgs[@]}" | grep -qxF "$pkg" && continue
  prio=$(dpkg-query -W -f='${Priority} ${Essential}' "$pkg" 2>/dev/null || true)
  case $prio in
    required* | *yes) continue ;;
  esac
  log "MISSING STEP: tests run '$name' ($real, Debian package $pkg, priority ${prio%% *}), but hack/deps.sh does not install $pkg: add it to pkgs=(...)"
  fail=1
done
if ((fail)); then
  exit 1
fi
log "ok: ${#needed[@]} programs the tests run are provided by make test's install steps or every Debian system"
