package restapi

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"time"

	"github.com/chargesim/chargesim/components/audit"
	"github.com/chargesim/chargesim/components/cli"
	"github.com/chargesim/chargesim/components/store"
)

// Command runs `chargesim api`: it serves every route on --http-addr at once and connects to
// the store in the background (retrying until it can). Until then /health answers "down",
// /readyz fails and data routes answer 503 with Retry-After, while /healthz (liveness) stays
// ok: a store outage at start must not make Kubernetes restart the API in a loop.
func Command(ctx context.Context, args []string) error {
	var settings commandSettings
	common, log, err := cli.Setup("api", "Serve the REST API (and /healthz, /readyz, /metrics, /openapi.json, /docs) over the stored sessions.", args, ":8080", &settings)
	if err != nil {
		return err
	}
	reg := cli.NewRegistry()
	srv, err := New(settings.api, nil, log, reg, reg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	connected := make(chan *store.Store, 1)
	connErr := make(chan error, 1)
	go func() {
		st, err := store.ConnectRetry(ctx, settings.store, "chargesim-api", log)
		if err != nil {
			connErr <- err
			cancel() // a settings error: stop serving
			return
		}
		if st != nil {
			srv.SetStore(st)
		}
		connected <- st
		if st == nil {
			return
		}
		if settings.audit.Every > 0 {
			// The periodic audit's chargesim_audit_* gauges on /metrics (as `chargesim run`
			// exports them): the operator renders --audit-every for in-cluster simulations.
			aud, err := audit.NewPeriodicOn(st, settings.audit, log.With("part", "audit"), reg)
			if err != nil {
				log.Error("periodic audit", "err", err)
			} else {
				go func() { _ = aud.Run(ctx) }()
			}
		}
		RunRetention(ctx, srv.cfg, st, log)
	}()
	serveErr := cli.Serve(ctx, log, common.HTTPAddr, srv.Handler(), common.ShutdownTimeout)
	cancel()
	var st *store.Store
	select {
	case err := <-connErr:
		return errors.Join(serveErr, err)
	case st = <-connected:
	}
	if st != nil {
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ccancel()
		if err := st.Close(cctx); err != nil {
			log.Warn("close store", "err", err)
		}
	}
	return serveErr
}

// commandSettings are the flags of `chargesim api` besides the common ones.
type commandSettings struct {
	store store.Config
	api   Config
	audit audit.Config // Every, Last, Settle, Timeout: the periodic audit (Every 0: none)
}

func (c *commandSettings) Register(fs *flag.FlagSet) {
	c.store.Register(fs)
	c.api.Register(fs)
	c.audit.Timeout = time.Minute
	fs.DurationVar(&c.audit.Every, "audit-every", 0, "audit the recent sessions this often and export the result as chargesim_audit_* metrics (0: never)")
	fs.DurationVar(&c.audit.Last, "audit-last", 5*time.Minute, "length of the audited window")
	fs.DurationVar(&c.audit.Settle, "audit-settle", 30*time.Second, "the audited window ends this long ago (sessions still on their way are left out)")
}

func (c *commandSettings) Validate() error {
	var aud error
	switch {
	case c.audit.Every < 0:
		aud = cli.Invalid("audit-every", c.audit.Every, "must be ≥ 0")
	case c.audit.Every > 0 && c.audit.Last <= 0:
		aud = cli.Invalid("audit-last", c.audit.Last, "must be > 0")
	case c.audit.Settle < 0:
		aud = cli.Invalid("audit-settle", c.audit.Settle, "must be ≥ 0")
	}
	return errors.Join(c.store.Validate(), c.api.Validate(), aud)
}

// RegisterCommandFlags adds the flags of `chargesim api` besides the common ones to fs (for
// tests that check what the operator renders against them).
func RegisterCommandFlags(fs *flag.FlagSet) {
	var c commandSettings
	c.Register(fs)
}

// retentionInterval is how often the retention deletes: a tenth of the retention, at most
// every 10 minutes and at least every minute.
func retentionInterval(retention time.Duration) time.Duration {
	return min(10*time.Minute, max(time.Minute, retention/10))
}

// RunRetention deletes sessions older than cfg.Retention from st every retentionInterval
// until ctx ends; it returns at once when retention is off.
func RunRetention(ctx context.Context, cfg Config, st *store.Store, log *slog.Logger) {
	if cfg.Retention <= 0 {
		return
	}
	tick := time.NewTicker(retentionInterval(cfg.Retention))
	defer tick.Stop()
	for {
		dctx, cancel := context.WithTimeout(ctx, cfg.ScanTimeout)
		n, err := st.DeleteSessionsBefore(dctx, time.Now().Add(-cfg.Retention))
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("retention: delete old sessions", "err", err)
		case n > 0:
			log.Info("retention: deleted old sessions", "sessions", n, "older_than", cfg.Retention)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
