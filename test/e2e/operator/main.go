// Command operator is `chargesim operator` alone, for the e2e suite and the operator benchmark:
// they run the operator as its own process (flags, environment, leader election, metrics and
// probes as in a cluster) without depending on the rest of the binary.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/chargesim/chargesim/controllers"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := controllers.Command(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "chargesim operator:", err)
		os.Exit(1)
	}
}
