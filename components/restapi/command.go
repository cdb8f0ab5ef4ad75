package restapi

import (
	"context"
	"errors"
	"flag"
	"time"

	"github.com/chargesim/chargesim/components/cli"
	"github.com/chargesim/chargesim/components/store"
)

// Command runs `chargesim api`: it connects to the store (retrying until it can, so that the
// API may start before its database) and serves every route on --http-addr until ctx is done.
func Command(ctx context.Context, args []string) error {
	var settings commandSettings
	common, log, err := cli.Setup("api", "Serve the REST API (and /healthz, /readyz, /metrics, /openapi.json, /docs) over the stored sessions.", args, ":8080", &settings)
	if err != nil {
		return err
	}
	reg := cli.NewRegistry()
	st, err := store.ConnectRetry(ctx, settings.store, "chargesim-api", log)
	if err != nil {
		return err
	}
	if st == nil {
		return nil // cancelled while waiting for the database
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := st.Close(cctx); err != nil {
			log.Warn("close store", "err", err)
		}
	}()
	srv, err := New(settings.api, st, log, reg, reg)
	if err != nil {
		return err
	}
	return cli.Serve(ctx, log, common.HTTPAddr, srv.Handler(), common.ShutdownTimeout)
}

// commandSettings are the flags of `chargesim api` besides the common ones.
type commandSettings struct {
	store store.Config
	api   Config
}

func (c *commandSettings) Register(fs *flag.FlagSet) {
	c.store.Register(fs)
	c.api.Register(fs)
}

func (c *commandSettings) Validate() error {
	return errors.Join(c.store.Validate(), c.api.Validate())
}
