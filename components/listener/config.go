// Package listener is the subscriber side of the pipeline: it takes charging sessions from the
// broker through a shared, persistent QoS 1 subscription and stores each one exactly once.
//
// Delivery is at-least-once in (a message is acknowledged to the broker only after it is
// durably stored, so a crash or a store outage loses nothing) and exactly-once stored (the
// document _id is the session's deterministic key, so redeliveries are counted as duplicates
// instead of being stored twice). Messages that can never be stored are kept aside in the
// rejected collection, through the same batching and acknowledgement path.
package listener

import (
	"flag"
	"strings"
	"time"

	"github.com/chargesim/chargesim/components/cli"
	"github.com/chargesim/chargesim/components/mqttclient"
	"github.com/chargesim/chargesim/components/store"
)

// Config is every setting of the listener (docs/configuration.md, listener and MQTT sections).
type Config struct {
	MQTT  mqttclient.Config
	Store store.Config

	ShareGroup       string
	BatchSize        int
	FlushInterval    time.Duration
	MaxPending       int
	MaxPendingBytes  int64
	WriteConcurrency int
	MaxPayloadBytes  int
	LagObjective     time.Duration

	// ShutdownTimeout bounds the final flush. It is the common --shutdown-timeout flag
	// (cli.Common), so Register does not declare it: Command copies it in.
	ShutdownTimeout time.Duration
}

// Defaults, as documented in docs/configuration.md.
const (
	DefaultShareGroup       = "chargesim"
	DefaultBatchSize        = 500
	DefaultFlushInterval    = 200 * time.Millisecond
	DefaultMaxPending       = 20000
	DefaultMaxPendingBytes  = 64 << 20
	DefaultWriteConcurrency = 4
	DefaultMaxPayloadBytes  = 65536
	DefaultShutdownTimeout  = 15 * time.Second
	DefaultLagObjective     = time.Second
)

// Bounds that keep a typo from becoming an outage.
const (
	maxBatchSize        = 100_000 // MongoDB's maxWriteBatchSize
	maxWriteConcurrency = 64
	maxMaxPayload       = 16 << 20
	maxMaxPending       = 10_000_000
)

// DefaultConfig returns the documented defaults (MQTT and store settings as their Register
// would set them).
func DefaultConfig() Config {
	var c Config
	fs := flag.NewFlagSet("defaults", flag.ContinueOnError)
	c.Register(fs)
	c.ShutdownTimeout = DefaultShutdownTimeout
	return c
}

// Register adds the MQTT, MongoDB and listener flags.
func (c *Config) Register(fs *flag.FlagSet) {
	c.MQTT.Register(fs)
	c.Store.Register(fs)
	fs.StringVar(&c.ShareGroup, "share-group", DefaultShareGroup, "shared-subscription group ($share/<group>/...); empty = plain subscription")
	fs.IntVar(&c.BatchSize, "batch-size", DefaultBatchSize, "max documents per bulk write")
	fs.DurationVar(&c.FlushInterval, "flush-interval", DefaultFlushInterval, "max time a document waits for its batch")
	fs.IntVar(&c.MaxPending, "max-pending", DefaultMaxPending, "max received-but-unstored messages before the listener stops reading (backpressure)")
	fs.Int64Var(&c.MaxPendingBytes, "max-pending-bytes", DefaultMaxPendingBytes, "max payload bytes of received-but-unstored messages before the listener stops reading (backpressure)")
	fs.IntVar(&c.WriteConcurrency, "write-concurrency", DefaultWriteConcurrency, "bulk writes in flight")
	fs.DurationVar(&c.LagObjective, "lag-objective", DefaultLagObjective, "p99 end-to-end lag (session end → stored) above which the listener reports falling behind (metric, log, /readyz)")
	fs.IntVar(&c.MaxPayloadBytes, "max-payload-bytes", DefaultMaxPayloadBytes, "larger payloads are rejected (oversized)")
}

// Validate checks every setting; errors name the flag.
func (c *Config) Validate() error {
	if err := c.MQTT.Validate(); err != nil {
		return err
	}
	if err := c.Store.Validate(); err != nil {
		return err
	}
	if strings.ContainsAny(c.ShareGroup, "/+#") || strings.ContainsRune(c.ShareGroup, 0) {
		return cli.Invalid("share-group", c.ShareGroup, "must not contain / + # or NUL")
	}
	if c.BatchSize < 1 || c.BatchSize > maxBatchSize {
		return cli.Invalid("batch-size", c.BatchSize, "must be 1-100000")
	}
	if c.FlushInterval <= 0 || c.FlushInterval > time.Minute {
		return cli.Invalid("flush-interval", c.FlushInterval, "must be > 0 and ≤ 1m")
	}
	if c.MaxPending < c.BatchSize || c.MaxPending > maxMaxPending {
		return cli.Invalid("max-pending", c.MaxPending, "must be ≥ --batch-size and ≤ 10000000 (a batch can only fill from pending messages)")
	}
	if c.WriteConcurrency < 1 || c.WriteConcurrency > maxWriteConcurrency {
		return cli.Invalid("write-concurrency", c.WriteConcurrency, "must be 1-64")
	}
	if c.MaxPayloadBytes < 1 || c.MaxPayloadBytes > maxMaxPayload {
		return cli.Invalid("max-payload-bytes", c.MaxPayloadBytes, "must be 1-16777216")
	}
	if c.MaxPendingBytes < int64(c.MaxPayloadBytes) || c.MaxPendingBytes > 1<<40 {
		return cli.Invalid("max-pending-bytes", c.MaxPendingBytes, "must be ≥ --max-payload-bytes and ≤ 1 TiB")
	}
	if c.LagObjective <= 0 {
		return cli.Invalid("lag-objective", c.LagObjective, "must be > 0")
	}
	if c.ShutdownTimeout <= 0 {
		return cli.Invalid("shutdown-timeout", c.ShutdownTimeout, "must be > 0")
	}
	return nil
}
