package listener

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/chargesim/chargesim/components/cli"
)

// Command is `chargesim listener`: it parses flags and environment, serves /healthz, /readyz
// and /metrics, and runs the listener until ctx is cancelled or SIGTERM/SIGINT arrives.
func Command(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("listener", "Subscribes to charging sessions (shared, persistent QoS 1 subscription) and stores each one exactly once in MongoDB.")
	var common cli.Common
	common.Register(fs, ":9090")
	cfg := Config{}
	cfg.Register(fs)
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if err := common.Validate(); err != nil {
		return err
	}
	cfg.ShutdownTimeout = common.ShutdownTimeout
	if err := cfg.Validate(); err != nil {
		return err
	}
	log, err := common.Logger(os.Stderr, "listener")
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	l, err := New(cfg, log, reg)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	// The ops server outlives the flush, so /metrics and /readyz answer during the shutdown.
	serveCtx, cancelServe := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelServe()
	serveErr := make(chan error, 1)
	go func() {
		err := cli.Serve(serveCtx, log, common.HTTPAddr, cli.OpsHandler(reg, l.Ready), common.ShutdownTimeout)
		if err != nil {
			cancelRun() // without its health endpoint the pod would be killed anyway: stop cleanly
		}
		serveErr <- err
	}()
	runErr := l.Run(runCtx)
	cancelServe()
	if err := errors.Join(runErr, <-serveErr); err != nil {
		return fmt.Errorf("listener: %w", err)
	}
	return nil
}
