// Package stack is `chargesim run`: broker, publisher, listener and API in one process, for a
// laptop. Each part is the same component the cluster runs; only the wiring is local (one
// registry, one HTTP server for the API and every part's metrics, loopback addresses).
package stack

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/chargesim/chargesim/components/audit"
	"github.com/chargesim/chargesim/components/broker"
	"github.com/chargesim/chargesim/components/cli"
	"github.com/chargesim/chargesim/components/listener"
	"github.com/chargesim/chargesim/components/publisher"
	"github.com/chargesim/chargesim/components/restapi"
	"github.com/chargesim/chargesim/components/store"
)

// Defaults for a laptop: loopback only, ports that do not clash with a system mosquitto or
// MongoDB (DEVELOPERS.md lists them).
const (
	DefaultMQTTAddr = "127.0.0.1:18830"
	DefaultAPIAddr  = "127.0.0.1:8008"
	DefaultMongoURI = "mongodb://127.0.0.1:27027/"
)

// Config is the settings of `chargesim run`: the publisher's (simulation and MQTT client),
// the store's, and where the local broker and API listen.
type Config struct {
	Publisher publisher.Config
	Store     store.Config
	// MQTTAddr is where the embedded broker listens; empty runs no broker (use --mqtt-url).
	MQTTAddr string
	APIAddr  string
	// Audit is the periodic audit whose gauges /metrics exports (Every 0: none).
	Audit audit.Config
	// Retention deletes stored sessions older than this (0: keep everything); see
	// restapi.RunRetention.
	Retention time.Duration
}

// Register adds the flags, with laptop defaults for the broker URL and the store.
func (c *Config) Register(fs *flag.FlagSet) {
	c.Publisher.RegisterWithoutStore(fs)
	c.Store.Register(fs)
	fs.StringVar(&c.MQTTAddr, "mqtt-addr", DefaultMQTTAddr, "listen address of the embedded broker; empty: no broker, use --mqtt-url")
	fs.StringVar(&c.APIAddr, "api-addr", DefaultAPIAddr, "listen address of the REST API (also /metrics of every part)")
	fs.DurationVar(&c.Retention, "retention", 0, "delete sessions older than this (≥ 1m), so that a long run does not fill the disk; 0 keeps everything")
	// Empty: derived from --mqtt-addr, so moving the embedded broker moves its clients too.
	setDefault(fs, "mqtt-url", "")
	fs.Lookup("mqtt-url").Usage = "broker URL of the publisher and listener (default: the embedded broker at --mqtt-addr)"
	setDefault(fs, "mongo-uri", DefaultMongoURI)
	setDefault(fs, "record-runs", "true") // the store is at hand: make every run auditable
	c.Audit = audit.Config{Timeout: time.Minute}
	fs.DurationVar(&c.Audit.Every, "audit-every", 15*time.Second, "audit the recent sessions this often and export the result as chargesim_audit_* metrics (0: never)")
	fs.DurationVar(&c.Audit.Last, "audit-last", 5*time.Minute, "length of the audited window")
	fs.DurationVar(&c.Audit.Settle, "audit-settle", 10*time.Second, "the audited window ends this long ago (sessions still on their way are left out)")
}

func setDefault(fs *flag.FlagSet, name, value string) {
	f := fs.Lookup(name)
	f.DefValue = value
	_ = f.Value.Set(value)
}

// Validate checks every part's settings.
func (c *Config) Validate() error {
	if c.Publisher.MQTT.URL == "" {
		if c.MQTTAddr == "" {
			return cli.Invalid("mqtt-url", "", "set --mqtt-url when there is no embedded broker (--mqtt-addr empty)")
		}
		c.Publisher.MQTT.URL = "tcp://" + dialable(c.MQTTAddr)
	}
	c.Publisher.Store = c.Store
	errs := []error{c.Publisher.Validate(), c.Store.Validate()}
	if c.MQTTAddr != "" {
		if _, _, err := net.SplitHostPort(c.MQTTAddr); err != nil {
			errs = append(errs, cli.Invalid("mqtt-addr", c.MQTTAddr, "want host:port or empty"))
		}
	}
	if c.Retention != 0 && c.Retention < time.Minute {
		errs = append(errs, cli.Invalid("retention", c.Retention, "must be 0 (keep everything) or ≥ 1m"))
	}
	if _, _, err := net.SplitHostPort(c.APIAddr); err != nil {
		errs = append(errs, cli.Invalid("api-addr", c.APIAddr, "want host:port"))
	}
	switch {
	case c.Audit.Every < 0:
		errs = append(errs, cli.Invalid("audit-every", c.Audit.Every, "must be ≥ 0"))
	case c.Audit.Every > 0 && c.Audit.Last <= 0:
		errs = append(errs, cli.Invalid("audit-last", c.Audit.Last, "must be > 0"))
	case c.Audit.Settle < 0:
		errs = append(errs, cli.Invalid("audit-settle", c.Audit.Settle, "must be ≥ 0"))
	}
	return errors.Join(errs...)
}

// dialable turns a listen address into one clients can dial (":1883" → "127.0.0.1:1883").
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr // Validate reports it
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// Command is `chargesim run`.
func Command(ctx context.Context, args []string) error {
	var cfg Config
	common, log, err := cli.Setup("run",
		"Run broker, publisher, listener and API in one process (a laptop's whole pipeline). The API and /metrics are on --api-addr.",
		args, "", &cfg)
	if err != nil {
		return err
	}
	return Run(ctx, log, common.ShutdownTimeout, cfg, cli.NewRegistry())
}

// Run starts every part and blocks until ctx is done or one part fails, then stops them all:
// the publisher first (flushing), the listener next (so it stores what was published), then
// the API and the broker.
// Every part's metrics go to reg, which the API serves on /metrics.
func Run(ctx context.Context, log *slog.Logger, grace time.Duration, cfg Config, reg *prometheus.Registry) error {
	cfg.Publisher.ShutdownTimeout = grace

	var b *broker.Broker
	if cfg.MQTTAddr != "" {
		var err error
		b, err = broker.New(broker.Config{MQTTAddr: cfg.MQTTAddr, MaxInflight: 65535}, log.With("part", "broker"), reg)
		if err != nil {
			return err
		}
	}
	lcfg := listener.DefaultConfig()
	lcfg.MQTT, lcfg.Store, lcfg.ShutdownTimeout = cfg.Publisher.MQTT, cfg.Store, grace
	lcfg.MQTT.ClientID = "" // each part gets its own default client ID
	cfg.Publisher.MQTT.ClientID = ""
	lis, err := listener.New(lcfg, log.With("part", "listener"), reg)
	if err != nil {
		return err
	}
	pub, err := publisher.New(cfg.Publisher, log.With("part", "publisher"), reg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.APIAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.APIAddr, err)
	}
	log.Info("chargesim is running", "api", "http://"+ln.Addr().String()+"/docs",
		"mqtt", cfg.Publisher.MQTT.URL, "chargers", cfg.Publisher.Chargers,
		"sessions_per_second", cfg.Publisher.SessionRate())

	// Stages stop in order: each has its own context, cancelled after the one before returned.
	brokerCtx, stopBroker := context.WithCancel(context.Background())
	listenerCtx, stopListener := context.WithCancel(context.Background())
	apiCtx, stopAPI := context.WithCancel(context.Background())
	defer stopBroker()
	defer stopListener()
	defer stopAPI()

	g, gctx := errgroup.WithContext(ctx)
	brokerDone := make(chan struct{})
	if b != nil {
		g.Go(func() error { defer close(brokerDone); return b.Run(brokerCtx) })
	} else {
		close(brokerDone)
	}
	listenerDone := make(chan struct{})
	g.Go(func() error { defer close(listenerDone); return lis.Run(listenerCtx) })
	apiDone := make(chan struct{})
	g.Go(func() error {
		defer close(apiDone)
		st, err := store.ConnectRetry(apiCtx, cfg.Store, "chargesim-api", log)
		if err != nil || st == nil {
			_ = ln.Close()
			return err
		}
		defer st.Close(context.Background()) //nolint:errcheck // best effort at exit
		apiCfg := restapi.DefaultConfig()
		apiCfg.Retention = cfg.Retention
		api, err := restapi.New(apiCfg, st, log.With("part", "api"), reg, reg)
		if err != nil {
			_ = ln.Close()
			return err
		}
		go restapi.RunRetention(apiCtx, apiCfg, st, log.With("part", "api"))
		parts := []cli.Component{pub, lis}
		if b != nil {
			parts = append(parts, b)
		}
		if cfg.Audit.Every > 0 {
			cfg.Audit.Timeout = max(cfg.Audit.Timeout, time.Minute)
			aud, err := audit.NewPeriodicOn(st, cfg.Audit, log.With("part", "audit"), reg)
			if err != nil {
				_ = ln.Close()
				return err
			}
			go func() { _ = aud.Run(apiCtx) }() // ends with apiCtx, before the store closes below
		}
		return cli.ServeListener(apiCtx, log, ln, withReady(api.Handler(), reg, parts), grace)
	})
	g.Go(func() error {
		// A broker discards messages nobody has subscribed to yet: start publishing only once
		// the listener is subscribed (and its store reachable).
		for !cli.IsReady(lis.Ready(gctx)) {
			select {
			case <-gctx.Done():
				stopListener()
				stopAPI()
				stopBroker()
				return nil
			case <-time.After(50 * time.Millisecond):
			}
		}
		err := pub.Run(gctx)
		// Shutdown order: the publisher has flushed; the embedded broker keeps messages only in
		// memory, so the listener must store (and acknowledge) everything it holds before it
		// stops, then the rest.
		if b != nil {
			drain(log, b, grace)
		}
		stopListener()
		<-listenerDone
		stopAPI()
		<-apiDone
		stopBroker()
		<-brokerDone
		return err
	})
	return g.Wait()
}

// drain waits, at most grace, until the broker holds no unacknowledged message. The broker
// acknowledges a publish only once the sessions hold it and counts what they hold, so an
// empty reading is exact; a second one only spaces the check out.
func drain(log *slog.Logger, b *broker.Broker, grace time.Duration) {
	deadline := time.Now().Add(grace)
	for empty := 0; empty < 2; {
		if time.Now().After(deadline) {
			log.Warn("broker still holds unacknowledged messages after the grace period; they are lost with it")
			return
		}
		if b.Drained() {
			empty++
		} else {
			empty = 0
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// withReady answers /readyz for the whole stack with the shared operations handler: every
// part must be ready.
func withReady(api http.Handler, reg prometheus.Gatherer, parts []cli.Component) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", api)
	mux.Handle("GET /readyz", cli.OpsHandler(reg, func(ctx context.Context) error {
		var degraded []error
		for _, p := range parts {
			if err := p.Ready(ctx); !cli.IsReady(err) {
				return err
			} else if err != nil {
				degraded = append(degraded, err)
			}
		}
		if err := errors.Join(degraded...); err != nil {
			return &cli.Degraded{Detail: err.Error()}
		}
		return nil
	}))
	return mux
}
