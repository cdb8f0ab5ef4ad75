package publisher

import (
	"context"
	"fmt"

	"github.com/chargesim/chargesim/components/cli"
)

// Command is `chargesim publisher`: flags and environment (docs/configuration.md), the
// operations server on --http-addr (default :9090) next to the publisher, until ctx is done.
func Command(ctx context.Context, args []string) error {
	var cfg Config
	common, log, err := cli.Setup("publisher",
		"Simulate a fleet of EV chargers publishing their charging sessions to MQTT (QoS 1).",
		args, ":9090", &cfg)
	if err != nil {
		return err
	}
	cfg.ShutdownTimeout = common.ShutdownTimeout
	reg := cli.NewRegistry()
	p, err := New(cfg, log, reg)
	if err != nil {
		return fmt.Errorf("publisher: %w", err)
	}
	return cli.RunWithOps(ctx, log, common, reg, p)
}
