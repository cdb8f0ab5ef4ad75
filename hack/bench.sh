#!/usr/bin/env bash
# `make bench`: every benchmark that has a raw limit runs next to that limit, in the same run,
# on the same broker and store, and the ratio is printed:
#   publisher msgs/s        ÷ bare paho async publish loop (same window, same payload size)
#   listener stored docs/s  ÷ bare InsertMany loop (same documents, batch size, indexes and store;
#                             the faster of 1 and 4 writers)
#   `chargesim run` at 5,000 sessions/s for BENCH_RUN_SECONDS (300): stored rate, p99 lag, and
#                             whether it ever reported falling behind (0 skips it)
#   publisher heap for 1,000,000 simulated chargers
# The store is a fresh FerretDB per benchmark, or the MongoDB at CHARGESIM_BENCH_MONGO_URI
# (each benchmark in a database of its own, dropped after).
# Raw output goes to bin/bench.txt (benchstat-friendly); `hack/bench.sh --summary` reprints the table.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# shellcheck source=/dev/null
source bin/deps.env
COUNT=${BENCH_COUNT:-3}
BENCHTIME=${BENCH_TIME:-2s}
out=bin/bench.txt
summary_only=false
[[ ${1:-} == --summary ]] && summary_only=true # print the table of the last run again
$summary_only || : >"$out"
# BENCH_ONLY=listener,run (publisher, broker, faults, listener, fleet, run, read) runs only those parts.
only() { [[ -z ${BENCH_ONLY:-} || ,$BENCH_ONLY, == *,$1,* ]] && ! $summary_only; }

bench() { # package regexp
	go test -tags integration -run '^$' -bench "$2" -benchtime "$BENCHTIME" -count "$COUNT" "$1" | tee -a "$out"
}
only publisher && bench ./components/publisher/ '^Benchmark(Publisher|RawPaho|FleetMemory|Build|AppendJSON)$'
only broker && BENCHTIME=20000x bench ./components/broker/ '^BenchmarkBrokerDelivery$'
only broker && BENCHTIME=5000x COUNT=1 bench ./components/broker/ '^BenchmarkPipelineDelivery$'
# The embedded broker's fault tests at 100,000 sessions (listener kill -9 x3, broker restarts).
if only broker; then
	go test -tags integration -count=1 -run '^Test(ListenerKilledThriceMidStream|BrokerRestartedMidStream)$' \
		-timeout 30m -v ./components/broker/ -args -faults-100k | grep -E '^(\s*--- |ok|FAIL)|acknowledged' | tee -a "$out" ||
		echo "FAIL: embedded broker fault tests at 100,000 sessions" | tee -a "$out"
fi
# The audited fault matrix (components/audit) at 100,000 sessions per fault: listener kill -9 x3
# (mosquitto, embedded), broker restarts, store outage, publisher restart, resharding 1->3->2,
# clock step back; each row is the audit's verdict (expected, stored, missing, unexpected,
# duplicates) and the fault's duration.
if only faults; then
	go test -tags integration -count=1 -run '^TestFaultsEndWithACleanAudit$' -timeout 90m -v ./components/audit/ -args -faults-100k |
		awk '/^== audited faults/ { table = 1 } table && NF == 0 { table = 0 } table || /^(\s*--- |ok|FAIL)/' | tee -a "$out" ||
		echo "FAIL: audited fault matrix at 100,000 sessions" | tee -a "$out"
fi
# The listener and the raw loop with the store on CPUs of its own (BENCH_STORE_CPUS, default the
# upper half of the CPUs; the benchmark process, its broker and publisher on the rest; "" runs
# unpinned): both then feed the same store. Unpinned on a 2-core machine, the pipeline's own CPU
# (broker, MQTT client, decoding) is taken from the store's, which the raw loop does not pay, and
# the ratio measures that competition instead of how well the listener feeds the store.
# They run in BENCH_LISTENER_ROUNDS rounds (default 5) of every variant once, BENCH_LISTENER_TIME
# (30000x) each, and the ratios are the medians of each round's ratio: this VM's speed drifts by
# ±15% within minutes, a round's variants see the same machine.
if only listener; then
	ncpu=$(nproc)
	store_cpus=${BENCH_STORE_CPUS-$((ncpu / 2))-$((ncpu - 1))}
	pin=()
	if [[ -n $store_cpus && $ncpu -ge 2 && -z ${CHARGESIM_BENCH_MONGO_URI:-} ]] && command -v taskset >/dev/null; then
		echo "# store (FerretDB) on CPUs $store_cpus, the benchmark process on 0-$((ncpu / 2 - 1))" | tee -a "$out"
		pin=(env CHARGESIM_BENCH_STORE_CPUS="$store_cpus" taskset --cpu-list 0-$((ncpu / 2 - 1)))
	fi
	go test -c -tags integration -o bin/listener.bench ./components/listener/
	for round in $(seq "${BENCH_LISTENER_ROUNDS:-5}"); do
		echo "# listener round $round" | tee -a "$out"
		(cd components/listener && "${pin[@]}" ../../bin/listener.bench -test.run '^$' \
			-test.bench '^Benchmark(ListenerIngest|RawInsertMany)$' -test.benchtime "${BENCH_LISTENER_TIME:-30000x}") |
			tee -a "$out"
	done
	# The store's two insert paths (encode.go) on one FerretDB, same pinning: what the listener
	# and the raw loop use (an insert command of documents encoded once) and the driver's
	# InsertMany the issue named as the raw limit.
	(cd components/store && go test -c -tags integration -o ../../bin/store.bench . &&
		"${pin[@]}" ../../bin/store.bench -test.run '^$' -test.bench '^BenchmarkInsertPath$' \
			-test.benchtime "${BENCH_LISTENER_TIME:-30000x}" -test.count "$COUNT") | tee -a "$out"
fi
# `chargesim run` (broker, publisher, listener, API in one process) at RUN_RATE sessions/s for
# BENCH_RUN_SECONDS against a store like `make run`'s: a fresh FerretDB, or the MongoDB at
# CHARGESIM_BENCH_MONGO_URI (fresh database). Every 10 s the listener closes a lag window
# (chargesim_listener_lag_window_p99_seconds); after a 20 s warm-up we keep the worst window,
# the p99 over the whole run (from the lag histogram) and the windows reported behind.
RUN_RATE=${RUN_RATE:-5000}
run_at_rate() {
	local secs=$1 dir port api fpid="" uri db pid t0 t1 s0 s1 worst=0 behind=0 p50 p99
	dir=$(mktemp -d)
	port=$((20000 + RANDOM % 20000)); api=$((port + 1))
	db=runbench$(date +%s)
	if [[ -n ${CHARGESIM_BENCH_MONGO_URI:-} ]]; then
		uri=$CHARGESIM_BENCH_MONGO_URI
	else
		"$CHARGESIM_FERRETDB_BIN" --handler=sqlite --sqlite-url="file:$dir/" --state-dir="$dir" \
			--listen-addr=127.0.0.1:$((port + 2)) --debug-addr=- --telemetry=disable --log-level=warn >"$dir/ferretdb.log" 2>&1 &
		fpid=$!
		uri=mongodb://127.0.0.1:$((port + 2))/
		sleep 1
	fi
	# 60 s between a charger's sessions: RUN_RATE × 60 chargers.
	# RUN_ARGS: extra flags, e.g. RUN_ARGS='--audit-every 0' to measure ingest without the
	# built-in audit's scans of the same store.
	# shellcheck disable=SC2086 # RUN_ARGS is a list of flags
	bin/chargesim run --chargers $((RUN_RATE * 60)) --mongo-uri "$uri" --mongo-database "$db" \
		--mqtt-addr 127.0.0.1:$port --api-addr 127.0.0.1:$api --log-level warn ${RUN_ARGS:-} 2>"$dir/run.log" &
	pid=$!
	scrape() { curl -s 127.0.0.1:$api/metrics; }
	metric_of() { awk -v n="$1" '$1 == n { print $2 }'; }
	sleep 20
	s0=$(scrape | metric_of chargesim_listener_sessions_stored_total); t0=$(date +%s.%N)
	scrape | grep '^chargesim_listener_lag_seconds_bucket' >"$dir/h0"
	for ((i = 0; i < secs / 10; i++)); do
		sleep 10
		local m w b
		m=$(scrape)
		w=$(metric_of chargesim_listener_lag_window_p99_seconds <<<"$m")
		b=$(metric_of chargesim_listener_falling_behind <<<"$m")
		worst=$(awk -v a="$worst" -v b="${w:-0}" 'BEGIN { printf "%.2f", (b + 0 > a + 0 ? b : a) }')
		[[ ${b:-0} == 1 ]] && behind=$((behind + 1))
	done
	s1=$(scrape | metric_of chargesim_listener_sessions_stored_total); t1=$(date +%s.%N)
	# The built-in audit's last verdict (0 when --audit-every 0): what it expected and missed.
	local m1 aexp amiss
	m1=$(scrape)
	# Prometheus prints large counts in exponent form (1.481151e+06): as integers.
	aexp=$(metric_of chargesim_audit_expected_sessions <<<"$m1" | awk '{ printf "%d\n", $1 }')
	amiss=$(metric_of chargesim_audit_missing_sessions <<<"$m1" | awk '{ printf "%d\n", $1 }')
	scrape | grep '^chargesim_listener_lag_seconds_bucket' >"$dir/h1"
	# Quantiles of the run: bucket counts of the window, linear inside the bucket (histogram_quantile).
	quantile() {
		paste "$dir/h0" "$dir/h1" | awk -v q="$1" '{
		match($1, /le="[^"]*"/); le = substr($1, RSTART + 4, RLENGTH - 5)
		n++; bound[n] = (le == "+Inf" ? 1e9 : le); cnt[n] = $4 - $2 }
		END { total = cnt[n]; rank = q * total; prev = 0; pc = 0
			for (i = 1; i <= n; i++) if (cnt[i] >= rank) { printf "%.3f", prev + (bound[i] - prev) * (rank - pc) / (cnt[i] - pc + 1e-9); exit }
			else { prev = bound[i]; pc = cnt[i] } }'
	}
	p50=$(quantile 0.5)
	p99=$(quantile 0.99)
	grep -m3 'falling behind' "$dir/run.log" >&2 || true
	kill -TERM $pid; wait $pid || true
	[[ -n $fpid ]] && { kill -TERM $fpid; wait $fpid || true; }
	echo "BenchmarkRunAtRate 1 $(awk -v a="$s0" -v b="$s1" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.0f", (b - a) / (t1 - t0) }') stored/s $RUN_RATE offered/s ${p50:-nan} p50-lag-s ${p99:-nan} p99-lag-s $worst worst-window-p99-s $behind behind-windows ${aexp:-0} audit-expected ${amiss:-0} audit-missing" | tee -a "$out"
	rm -rf "$dir"
}
BENCH_RUN_SECONDS=${BENCH_RUN_SECONDS:-300}
if only run && ((BENCH_RUN_SECONDS > 0)); then
	go build -o bin/chargesim .
	run_at_rate "$BENCH_RUN_SECONDS"
fi

# One real publisher process with a million chargers at one session a minute (16,667/s) against
# the embedded broker: its resident memory and achieved rate after a warm-up.
fleet_process() {
	local port http bport pid bpid rss rate
	go build -o bin/chargesim .
	port=$((20000 + RANDOM % 20000)); http=$((port + 1)); bport=$((port + 2))
	bin/chargesim broker --mqtt-addr 127.0.0.1:$port --http-addr 127.0.0.1:$bport --log-level warn &
	bpid=$!
	sleep 0.5
	bin/chargesim publisher --chargers 1000000 --mqtt-url tcp://127.0.0.1:$port \
		--http-addr 127.0.0.1:$http --log-level warn &
	pid=$!
	sleep 10
	local p0 p1
	p0=$(curl -s 127.0.0.1:$http/metrics | awk '$1 == "chargesim_publisher_sessions_published_total" { print $2 }')
	sleep 10
	p1=$(curl -s 127.0.0.1:$http/metrics | awk '$1 == "chargesim_publisher_sessions_published_total" { print $2 }')
	rss=$(awk '/^VmHWM/ { print $2 }' /proc/$pid/status)
	kill -TERM $pid; wait $pid || true
	kill -TERM $bpid; wait $bpid || true
	echo "BenchmarkFleetProcess 1 $((rss / 1024)) peak-RSS-MB $(awk -v a="$p0" -v b="$p1" 'BEGIN { printf "%.0f", (b - a) / 10 }') sessions/s" | tee -a "$out"
}
if only fleet; then fleet_process; fi

# Read side (issue 11): BenchmarkReadSide on FerretDB holding BENCH_READ_SESSIONS sessions (default
# 1,000,000 over 10,000 chargers; loaded once, cached under ~/.cache/chargesim) while sessions are
# stored at BENCH_INGEST_RATE/s. BENCH_READ=0 skips it; at 1,000,000 it is long on 2 cores (loading once,
# then every snapshot scan takes minutes): BENCH_READ_SESSIONS=100000 for a quick look.
if [[ ${BENCH_READ:-1} != 0 ]] && only read; then
	go test -tags integration -run '^$' -bench '^BenchmarkReadSide$' -benchtime 1x -count 1 -timeout 90m \
		./components/restapi/ | tee -a "$out"
fi

# median of a benchmark's metric (name without the -N suffix, unit) over the -count runs
metric() {
	local values n
	values=$(awk -v name="$1" -v unit="$2" '
		$1 ~ "^"name"(-[0-9]+)?$" { for (i = 2; i < NF; i++) if ($(i+1) == unit) print $i }' "$out" | sort -g)
	n=$(printf '%s\n' "$values" | grep -c . || true)
	if [[ $n -eq 0 ]]; then echo nan; else printf '%s\n' "$values" | sed -n "$(((n + 1) / 2))p"; fi
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }

pub=$(metric BenchmarkPublisher msgs/s)
raw=$(metric BenchmarkRawPaho msgs/s)
ing=$(metric BenchmarkListenerIngest/live docs/s)
back=$(metric BenchmarkListenerIngest/backlog docs/s)
ins1=$(metric BenchmarkRawInsertMany/writers=1 docs/s)
ins4=$(metric BenchmarkRawInsertMany/writers=4 docs/s)
ins=$(awk -v a="$ins1" -v b="$ins4" 'BEGIN { print (b + 0 > a + 0 ? b : a) }')
burst=$(metric BenchmarkListenerIngest/burst docs/s)
# round_ratios VARIANT: the median over the listener rounds of VARIANT's docs/s ÷ that round's
# raw limit (the faster of 1 and 4 writers), then each round's ratio.
round_ratios() {
	awk -v v="BenchmarkListenerIngest/$1" '
		function flush() { if (n != "" && raw > 0) r[++k] = n / raw; n = ""; raw = 0 }
		function docs(i) { for (i = 2; i < NF; i++) if ($(i+1) == "docs/s") return $i }
		/^# listener round/ { flush() }
		$1 ~ "^"v"(-[0-9]+)?$" { n = docs() }
		$1 ~ "^BenchmarkRawInsertMany/writers=[0-9]+(-[0-9]+)?$" { d = docs(); if (d > raw) raw = d }
		END {
			flush()
			if (k == 0) { print "n/a -"; exit }
			for (i = 1; i <= k; i++) s[i] = r[i]
			for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (s[j] < s[i]) { t = s[i]; s[i] = s[j]; s[j] = t }
			printf "%.2f ", (k % 2 ? s[(k + 1) / 2] : (s[k / 2] + s[k / 2 + 1]) / 2)
			for (i = 1; i <= k; i++) printf "%s%.2f", (i > 1 ? "," : ""), r[i]
			print ""
		}' "$out"
}
mem=$(metric BenchmarkFleetMemory heap-MB)
per=$(metric BenchmarkFleetMemory B/charger)
echo
echo "== chargesim benchmarks (median of $COUNT runs, the listener of its rounds; $(nproc) cores, $(date -u +%F)) =="
printf '%-44s %12s msgs/s\n' "publisher -> mosquitto" "$pub"
printf '%-44s %12s msgs/s\n' "bare paho publish loop (raw limit)" "$raw"
printf '%-44s %12s\n' "publisher / raw" "$(ratio "$pub" "$raw")"
printf '%-44s %12s docs/s\n' "listener: live stream -> mosquitto -> FerretDB" "$ing"
printf '%-44s %12s docs/s\n' "listener draining a backlog" "$back"
printf '%-44s %12s docs/s\n' "listener under a burst (not a goal)" "$burst"
printf '%-44s %12s docs/s (1 writer %s, 4 writers %s)\n' "bare insert loop (raw limit)" "$ins" "$ins1" "$ins4"
printf '%-44s %12s   rounds: %s\n' "listener / raw (live)" $(round_ratios live)
printf '%-44s %12s   rounds: %s\n' "listener / raw (backlog)" $(round_ratios backlog)
printf '%-44s %12s   rounds: %s\n' "listener / raw (burst)" $(round_ratios burst)
if [[ $(metric BenchmarkInsertPath/command docs/s) != nan ]]; then
	printf '%-44s %12s docs/s, client %s µs/doc\n' "  store insert command, encoded once" \
		"$(metric BenchmarkInsertPath/command docs/s)" "$(metric BenchmarkInsertPath/command client-cpu-us/doc)"
	printf '%-44s %12s docs/s, client %s µs/doc\n' "  driver InsertMany (the path it replaced)" \
		"$(metric BenchmarkInsertPath/driver docs/s)" "$(metric BenchmarkInsertPath/driver client-cpu-us/doc)"
fi
if [[ -n ${CHARGESIM_BENCH_MONGO_URI:-} ]]; then
	echo "  store: the MongoDB at \$CHARGESIM_BENCH_MONGO_URI (URI not printed: it may hold credentials)"
else
	echo "  store: a fresh FerretDB 1.24/SQLite per benchmark"
fi
if grep -q '^BenchmarkRunAtRate' "$out"; then
	printf '%-44s %12s stored/s of %s offered, p50 / p99 lag %s / %s s, worst 10 s window %s s, %s windows behind\n' \
		"chargesim run, ${BENCH_RUN_SECONDS}s" "$(metric BenchmarkRunAtRate stored/s)" "$(metric BenchmarkRunAtRate offered/s)" \
		"$(metric BenchmarkRunAtRate p50-lag-s)" "$(metric BenchmarkRunAtRate p99-lag-s)" "$(metric BenchmarkRunAtRate worst-window-p99-s)" "$(metric BenchmarkRunAtRate behind-windows)"
	printf '%-44s %12s expected in its last window, %s missing\n' "  built-in audit (--audit-every)" "$(metric BenchmarkRunAtRate audit-expected)" "$(metric BenchmarkRunAtRate audit-missing)"
fi
bmem=$(metric BenchmarkBrokerDelivery/memory msgs/s)
if [[ $bmem != nan ]]; then
	printf '%-44s %12s msgs/s\n' "embedded broker, memory" "$bmem"
	printf '%-44s %12s msgs/s (%s of memory)\n' "embedded broker, --data-dir" "$(metric BenchmarkBrokerDelivery/data-dir msgs/s)" \
		"$(ratio "$(metric BenchmarkBrokerDelivery/data-dir msgs/s)" "$bmem")"
	printf '%-44s %12s msgs/s (%s of memory)\n' "embedded broker, --data-dir --data-fsync" "$(metric BenchmarkBrokerDelivery/data-dir-fsync msgs/s)" \
		"$(ratio "$(metric BenchmarkBrokerDelivery/data-dir-fsync msgs/s)" "$bmem")"
	printf '%-44s %12s docs/s (memory), %s docs/s (--data-dir)\n' "publisher -> embedded broker -> listener" \
		"$(metric BenchmarkPipelineDelivery/memory docs/s)" "$(metric BenchmarkPipelineDelivery/data-dir docs/s)"
fi
printf '%-44s %12s MB (%s B/charger)\n' "publisher fleet heap, 1,000,000 chargers" "$mem" "$per"
printf '%-44s %12s MB peak RSS at %s sessions/s (configured 16667)\n' "publisher process, 1,000,000 chargers" \
	"$(metric BenchmarkFleetProcess peak-RSS-MB)" "$(metric BenchmarkFleetProcess sessions/s)"

# one metric of the single BenchmarkReadSide run
rs() { metric BenchmarkReadSide "$1"; }
ratio_g() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.3g", a / b }'; }
if [[ $(rs stored-sessions) != nan ]]; then
	echo
	echo "== read side: $(rs stored-sessions) stored sessions, ingest ${BENCH_INGEST_RATE:-1000}/s (goal: p99 <= 100 ms with 4 clients) =="
	printf '%-44s %10s %10s %6s\n' "endpoint (4 clients)" "p50 ms" "p99 ms" "5xx"
	for ep in stats charger chargers-first chargers-deep sessions-first sessions-deep health readings seed-readings bare-find-limit-1000; do
		printf '%-44s %10s %10s %6s\n' "$ep" "$(rs "$ep-p50-ms")" "$(rs "$ep-p99-ms")" "$(rs "$ep-5xx")"
	done
	printf '%-44s %10s\n' "/readings/ p50 / seed-style API p50 (goal < 1)" "$(ratio_g "$(rs readings-p50-ms)" "$(rs seed-readings-p50-ms)")"
	printf '%-44s %10s\n' "/readings/ p50 / bare driver p50 (goal <= 1.2)" "$(ratio_g "$(rs readings-p50-ms)" "$(rs bare-find-limit-1000-p50-ms)")"
	printf '%-44s %10s ms p99, %s 5xx, %s shed (503 + Retry-After)\n' "64 clients, every endpoint" "$(rs hammer64-p99-ms)" "$(rs hammer64-5xx)" "$(rs hammer64-shed)"
	printf '%-44s %10s docs/s (before: %s; goal: drop <= 10%%)\n' "ingest while hammered" "$(rs ingest-hammer-docs/s)" "$(rs ingest-baseline-docs/s)"
	printf '%-44s %10s MB (goal <= 1024)\n' "FerretDB peak RSS" "$(rs ferretdb-peak-RSS-MB)"
	printf '%-44s %10s MB\n' "API live heap after GC (bench process)" "$(rs api-heap-MB)"
	printf '%-44s %10s s\n' "first snapshot after start (one full scan)" "$(rs first-snapshot-s)"
	printf '%-44s %10s s\n' "steady state after start (warm-up)" "$(rs warm-up-s)"
	printf '%-44s %10s s p50, %s s p99, %s s max\n' "totals freshness (age of X-Data-As-Of)" "$(rs freshness-totals-p50-s)" "$(rs freshness-totals-p99-s)" "$(rs freshness-totals-max-s)"
	printf '%-44s %10s s p50, %s s p99, %s s max\n' "every answer's freshness (lists included)" "$(rs freshness-p50-s)" "$(rs freshness-p99-s)" "$(rs freshness-max-s)"
	printf '%-44s %10s s p50, %s s p99, %s s max\n' "provisional span (now - X-Data-Exact-Until)" "$(rs provisional-span-p50-s)" "$(rs provisional-span-p99-s)" "$(rs provisional-span-max-s)"
	printf '%-44s %10s ms\n' "audit read of a 10 s window" "$(rs audit-10s-window-ms)"
fi

# The audited fault matrix (its table as printed by the run).
if grep -q '^== audited faults' "$out"; then
	echo
	awk '/^== audited faults/ { table = 1 } table && !/^[a-zA-Z=]|^fault/ { table = 0 } table' "$out"
fi
