package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
)

// NewRegistry returns a registry with the Go runtime and process collectors, for one process.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Component is a long-running part of chargesim (publisher, listener, broker, ...).
type Component interface {
	Run(ctx context.Context) error
	Ready(ctx context.Context) error
}

// RunWithOps runs c next to the operations HTTP server (/healthz, /readyz, /metrics) until ctx
// is done or either fails; a failure of one stops the other.
func RunWithOps(ctx context.Context, log *slog.Logger, common Common, reg *prometheus.Registry, c Component) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.Run(ctx) })
	g.Go(func() error {
		return Serve(ctx, log, common.HTTPAddr, OpsHandler(reg, c.Ready), common.ShutdownTimeout)
	})
	return g.Wait()
}

// Settings is a component's configuration.
type Settings interface {
	Register(fs *flag.FlagSet)
	Validate() error
}

// Setup is the shared first half of every subcommand: it registers the common flags (with
// httpAddr as the default listen address) and the component's, parses args and the
// environment, validates everything, and returns the common settings and a logger.
func Setup(command, summary string, args []string, httpAddr string, s Settings) (Common, *slog.Logger, error) {
	var common Common
	fs := NewFlagSet(command, summary)
	common.Register(fs, httpAddr)
	s.Register(fs)
	if err := Parse(fs, args); err != nil {
		return common, nil, err
	}
	if err := errors.Join(common.Validate(), s.Validate()); err != nil {
		return common, nil, err
	}
	log, err := common.Logger(os.Stderr, command)
	if err != nil {
		return common, nil, fmt.Errorf("logger: %w", err)
	}
	return common, log, nil
}
