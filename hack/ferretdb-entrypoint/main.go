// Command ferretdb-entrypoint is the entrypoint of the local FerretDB image that hack/cluster.sh
// builds for the chart's in-cluster store (mongodb.enabled=true, charts/chargesim/ci/local-values.yaml).
// The chart starts the store the way the mongo image expects (`mongod --port=N ...`, data in
// /data/db); this translates that into FerretDB's flags (SQLite backend, files in /data/db,
// state in /data/configdb) and execs /ferretdb, so FerretDB is PID 1 and gets the signals.
// FerretDB v1 on SQLite does not authenticate: use a URI without credentials (the values file's
// existingSecret).
package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
)

func main() {
	port := "27017"
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "mongod" {
		args = args[1:]
	}
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--port="); ok {
			port = v
		}
		// Other mongod flags (--wiredTigerCacheSizeGB, ...) have no FerretDB counterpart.
	}
	argv := []string{"/ferretdb",
		"--listen-addr=:" + port,
		"--handler=sqlite",
		"--sqlite-url=file:/data/db/", // a directory: the trailing slash is required
		"--state-dir=/data/configdb",
		"--debug-addr=-",
		"--telemetry=disable",
		"--log-level=info",
	}
	err := syscall.Exec(argv[0], argv, os.Environ()) //nolint:gosec // a fixed binary; only the port comes from the arguments
	fmt.Fprintf(os.Stderr, "ferretdb-entrypoint: exec %s: %v\n", argv[0], err)
	os.Exit(1)
}
