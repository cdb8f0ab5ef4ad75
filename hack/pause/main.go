// Command pause is the sandbox ("pause") container of hack/cluster.sh's node: it holds the pod's
// namespaces, so it only sleeps until SIGTERM or SIGINT, and, being PID 1 of the pod when the
// PID namespace is shared, reaps orphaned children. A local stand-in for registry.k8s.io/pause,
// which cannot be pulled here.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
