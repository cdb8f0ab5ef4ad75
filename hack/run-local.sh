#!/usr/bin/env bash
# `make run`: the whole pipeline on this machine. FerretDB (SQLite, data under ./data/, kept
# between runs) stands in for MongoDB; `chargesim run` starts broker, publisher, listener and
# API in one process. Ctrl-C stops chargesim first (it flushes), then FerretDB.
#
#   hack/run-local.sh [chargesim run flags...]   e.g. --chargers 100 --time-scale 60
#   CHARGESIM_MONGO_URI=mongodb://... hack/run-local.sh   use a real MongoDB, no FerretDB
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${CHARGESIM_DATA:-$REPO/data}
FERRET_ADDR=${CHARGESIM_FERRETDB_ADDR:-127.0.0.1:27027}

[[ -x $REPO/bin/chargesim ]] || { echo "run: bin/chargesim missing: make build" >&2; exit 1; }

ferret_pid=
stop_ferret() {
	[[ -n $ferret_pid ]] || return 0
	kill -TERM "$ferret_pid" 2>/dev/null || true
	wait "$ferret_pid" 2>/dev/null || true
}
trap stop_ferret EXIT

if [[ -z ${CHARGESIM_MONGO_URI:-} ]]; then
	# shellcheck source=/dev/null
	source "$REPO/bin/deps.env" 2>/dev/null || { echo "run: bin/deps.env missing: hack/deps.sh" >&2; exit 1; }
	mkdir -p "$DATA/ferretdb" "$DATA/ferretdb-state"
	# setsid: Ctrl-C in the terminal reaches chargesim, not FerretDB, so the listener can still
	# flush into the store while it shuts down.
	# --debug-addr=-: FerretDB's debug HTTP listener (default 127.0.0.1:8088) is off, so a port
	# taken by anything else cannot stop `make run`.
	setsid "$CHARGESIM_FERRETDB_BIN" --handler=sqlite --sqlite-url="file:$DATA/ferretdb/" \
		--state-dir="$DATA/ferretdb-state" --listen-addr="$FERRET_ADDR" --telemetry=disable \
		--debug-addr=- --log-level=warn >"$DATA/ferretdb.log" 2>&1 &
	ferret_pid=$!
	for _ in $(seq 100); do
		(exec 3<>"/dev/tcp/${FERRET_ADDR%:*}/${FERRET_ADDR#*:}") 2>/dev/null && break
		kill -0 "$ferret_pid" 2>/dev/null || { cat "$DATA/ferretdb.log" >&2; exit 1; }
		sleep 0.1
	done
	export CHARGESIM_MONGO_URI="mongodb://$FERRET_ADDR/"
	echo "run: FerretDB on $FERRET_ADDR, data in $DATA/ferretdb (log $DATA/ferretdb.log)" >&2
fi

"$REPO/bin/chargesim" run --log-format text "$@" &
cs=$!
trap 'kill -TERM $cs 2>/dev/null || true' TERM
trap ':' INT
status=0
while kill -0 "$cs" 2>/dev/null; do
	wait "$cs" && status=0 || status=$?
done
exit "$status"
