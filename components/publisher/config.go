package publisher

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/chargesim/chargesim/components/cli"
	"github.com/chargesim/chargesim/components/mqttclient"
	"github.com/chargesim/chargesim/components/publisher/sim"
	"github.com/chargesim/chargesim/components/store"
)

// Limits of the settings.
const (
	// MaxChargers bounds --chargers: charger numbers are uint32 and the fleet costs ~24 bytes
	// per charger, so 100 million is 2.4 GB in one process (more belongs in shards).
	MaxChargers = 100_000_000
	// MaxConnectors is the largest connector number a topic can carry (session.ParseTopic).
	MaxConnectors = 1 << 16
	// MaxInflight is the number of MQTT packet IDs: paho cannot have more QoS 1 publishes open.
	MaxInflight = 65535
	// MaxTariff and MaxSessionFee keep every cost below session.MaxCostCents.
	MaxTariff     = 10_000 // cents per kWh
	MaxSessionFee = 1_000_000
)

// Config is the publisher's configuration; see docs/configuration.md (publisher and MQTT
// client sections).
type Config struct {
	MQTT mqttclient.Config

	Chargers        int           // --chargers: size of the whole fleet, charger IDs "1".."N"
	Connectors      int           // --connectors: connectors per charger
	ShardIndex      int           // --shard-index: this process owns chargers c with (c-1)%ShardCount == ShardIndex
	ShardCount      int           // --shard-count
	SessionInterval time.Duration // --session-interval: simulated time between a charger's sessions
	SessionJitter   float64       // --session-jitter: fraction of the interval each start is shifted by
	TimeScale       float64       // --time-scale: simulated seconds per wall-clock second
	Seed            uint64        // --seed
	DCShare         float64       // --dc-share: share of DC fast chargers
	ACTariff        float64       // --ac-tariff: cents per kWh
	DCTariff        float64       // --dc-tariff: cents per kWh
	SessionFee      float64       // --session-fee: cents per session
	MaxInflight     int           // --max-inflight: unacknowledged QoS 1 publishes
	Epoch           time.Time     // --epoch: anchor of the slot grid (sim.Params.Epoch)

	// Run records (components/audit): with RecordRuns the publisher records in the store which
	// chargers it simulated when, and resumes where the previous runs of the simulation
	// stopped (at most ResumeWindow back), so restarts and reshardings leave no slot out.
	RecordRuns        bool          // --record-runs
	Store             store.Config  // --mongo-*: where run records go
	ResumeWindow      time.Duration // --resume-window
	HeartbeatInterval time.Duration // --heartbeat-interval

	// Replay after a reconnect (see Publisher.scheduleReplay).
	ReplayAfter  time.Duration // --replay-after: 0 = no replay
	ReplayBefore time.Duration // --replay-before

	// Clock is a test seam: the wall clock the publisher reads for slots, replays and run
	// records (nil: time.Now). Fault tests step it back to re-issue slots already published, as
	// a node whose clock is behind does. It has no flag: production always runs on time.Now.
	Clock Clock

	// ShutdownTimeout bounds the flush on shutdown. It is the common --shutdown-timeout, so
	// Register does not add it: Command copies it from cli.Common (0 means 15s).
	ShutdownTimeout time.Duration
}

// Clock is a wall clock (Config.Clock). An interface, not a func, so that Config stays comparable.
type Clock interface{ Now() time.Time }

// DefaultConfig returns the configuration with every flag at its default.
func DefaultConfig() Config {
	var c Config
	c.Register(flag.NewFlagSet("defaults", flag.ContinueOnError))
	c.ShutdownTimeout = 15 * time.Second
	return c
}

// Register adds the publisher, MQTT client and store (run records) flags.
func (c *Config) Register(fs *flag.FlagSet) {
	c.RegisterWithoutStore(fs)
	c.Store.Register(fs)
}

// RegisterWithoutStore adds the publisher and MQTT client flags, for a command that registers
// the store flags itself and sets Store (`chargesim run`).
func (c *Config) RegisterWithoutStore(fs *flag.FlagSet) {
	c.MQTT.Register(fs)
	fs.IntVar(&c.Chargers, "chargers", 10, "size of the whole fleet (charger IDs 1..N)")
	fs.IntVar(&c.Connectors, "connectors", 2, "connectors per charger")
	fs.IntVar(&c.ShardIndex, "shard-index", 0, "this process simulates chargers c with (c-1) % shard-count == shard-index")
	fs.IntVar(&c.ShardCount, "shard-count", 1, "number of publisher processes sharing the fleet")
	fs.DurationVar(&c.SessionInterval, "session-interval", 60*time.Second, "each charger starts a new session this often (simulated time)")
	fs.Float64Var(&c.SessionJitter, "session-jitter", 0.2, "fraction of the interval by which each start is randomly shifted (0-1)")
	fs.Float64Var(&c.TimeScale, "time-scale", 1, "simulated seconds per wall-clock second")
	fs.Uint64Var(&c.Seed, "seed", 1, "PRNG seed: the same seed, fleet and scale reproduce the same sessions")
	fs.Float64Var(&c.DCShare, "dc-share", 0.3, "share of chargers that are DC fast chargers (0-1)")
	fs.Float64Var(&c.ACTariff, "ac-tariff", 35, "AC tariff, cents per kWh")
	fs.Float64Var(&c.DCTariff, "dc-tariff", 59, "DC tariff, cents per kWh")
	fs.Float64Var(&c.SessionFee, "session-fee", 0, "fixed fee per session, cents")
	fs.IntVar(&c.MaxInflight, "max-inflight", 1000, "bounded window of unacknowledged QoS 1 publishes")
	fs.TextVar(&c.Epoch, "epoch", DefaultEpoch, "anchor of the slot grid (RFC 3339): with the seed it fixes every session's ID and time")
	fs.BoolVar(&c.RecordRuns, "record-runs", false, "record this process's run in the store (runs collection) for `chargesim audit`, and resume where previous runs stopped")
	fs.DurationVar(&c.ResumeWindow, "resume-window", 2*time.Minute, "with --record-runs: how far back a starting publisher re-publishes slots that earlier runs may have left out")
	fs.DurationVar(&c.ReplayAfter, "replay-after", 30*time.Second, "after a reconnect to the broker, wait this long (longer than the listeners take to subscribe again), then publish again every session since --replay-before before the connection was lost; 0: never")
	fs.DurationVar(&c.ReplayBefore, "replay-before", 10*time.Second, "how far before a lost connection the replay starts (what the broker may have acknowledged and lost)")
	fs.DurationVar(&c.HeartbeatInterval, "heartbeat-interval", 10*time.Second, "with --record-runs: how often the run record's end moves forward")
}

// Validate checks every setting; an error names the flag. It also resolves the MQTT password
// file (mqttclient.Config.Validate).
func (c *Config) Validate() error {
	finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	switch {
	case c.Chargers < 1 || c.Chargers > MaxChargers:
		return cli.Invalid("chargers", c.Chargers, fmt.Sprintf("must be 1..%d", MaxChargers))
	case c.Connectors < 1 || c.Connectors > MaxConnectors:
		return cli.Invalid("connectors", c.Connectors, fmt.Sprintf("must be 1..%d", MaxConnectors))
	case c.ShardCount < 1:
		return cli.Invalid("shard-count", c.ShardCount, "must be ≥ 1")
	case c.ShardIndex < 0 || c.ShardIndex >= c.ShardCount:
		return cli.Invalid("shard-index", c.ShardIndex, "must be 0..shard-count-1 (shard-count="+strconv.Itoa(c.ShardCount)+")")
	case c.SessionInterval <= 0:
		return cli.Invalid("session-interval", c.SessionInterval, "must be > 0")
	case !finite(c.SessionJitter) || c.SessionJitter < 0 || c.SessionJitter > 1:
		return cli.Invalid("session-jitter", c.SessionJitter, "must be 0..1")
	case !finite(c.TimeScale) || c.TimeScale <= 0:
		return cli.Invalid("time-scale", c.TimeScale, "must be > 0")
	case float64(c.SessionInterval)/c.TimeScale < 2*float64(sim.MinSlotGap):
		return cli.Invalid("time-scale", c.TimeScale, fmt.Sprintf("session-interval/time-scale must be ≥ %s of wall-clock time per charger (session IDs are microseconds)", 2*sim.MinSlotGap))
	case c.Epoch.IsZero() || c.Epoch.Year() < 1970 || c.Epoch.Year() > 2200:
		return cli.Invalid("epoch", c.Epoch.Format(time.RFC3339), "must be a time between 1970 and 2200")
	case c.ReplayAfter < 0:
		return cli.Invalid("replay-after", c.ReplayAfter, "must be ≥ 0")
	case c.ReplayBefore < 0:
		return cli.Invalid("replay-before", c.ReplayBefore, "must be ≥ 0")
	case c.ResumeWindow < 0:
		return cli.Invalid("resume-window", c.ResumeWindow, "must be ≥ 0")
	case c.RecordRuns && c.HeartbeatInterval < 100*time.Millisecond:
		return cli.Invalid("heartbeat-interval", c.HeartbeatInterval, "must be ≥ 100ms")
	case !finite(c.DCShare) || c.DCShare < 0 || c.DCShare > 1:
		return cli.Invalid("dc-share", c.DCShare, "must be 0..1")
	case !finite(c.ACTariff) || c.ACTariff < 0 || c.ACTariff > MaxTariff:
		return cli.Invalid("ac-tariff", c.ACTariff, fmt.Sprintf("must be 0..%d cents per kWh", MaxTariff))
	case !finite(c.DCTariff) || c.DCTariff < 0 || c.DCTariff > MaxTariff:
		return cli.Invalid("dc-tariff", c.DCTariff, fmt.Sprintf("must be 0..%d cents per kWh", MaxTariff))
	case !finite(c.SessionFee) || c.SessionFee < 0 || c.SessionFee > MaxSessionFee:
		return cli.Invalid("session-fee", c.SessionFee, fmt.Sprintf("must be 0..%d cents", MaxSessionFee))
	case c.MaxInflight < 1 || c.MaxInflight > MaxInflight:
		return cli.Invalid("max-inflight", c.MaxInflight, fmt.Sprintf("must be 1..%d", MaxInflight))
	case c.ShutdownTimeout < 0:
		return cli.Invalid("shutdown-timeout", c.ShutdownTimeout, "must be ≥ 0")
	}
	if len(c.MQTT.TopicPrefix) > 512 {
		return cli.Invalid("topic-prefix", c.MQTT.TopicPrefix, "at most 512 bytes")
	}
	if err := c.MQTT.Validate(); err != nil {
		return err
	}
	if c.RecordRuns {
		return c.Store.Validate()
	}
	return nil
}

// DefaultEpoch anchors the slot grid unless --epoch says otherwise: a fixed time, so that the
// same seed and settings give the same sessions in every process.
var DefaultEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// Jitter is the jitter the grid uses: SessionJitter, kept below 1 − sim.MinSlotGap/interval so
// that two slots of a charger are always at least MinSlotGap apart (distinct session IDs).
// Only a jitter within a few microseconds of a whole interval is affected.
func (c *Config) Jitter() float64 {
	return min(c.SessionJitter, 1-float64(sim.MinSlotGap)/float64(c.WallInterval()))
}

// WallInterval is the wall-clock time between two slots of a charger.
func (c *Config) WallInterval() time.Duration {
	return time.Duration(float64(c.SessionInterval) / c.TimeScale)
}

// OwnedChargers returns how many chargers of the fleet shard ShardIndex of ShardCount owns.
func OwnedChargers(chargers, shardIndex, shardCount int) int {
	if shardIndex >= chargers {
		return 0
	}
	return (chargers-1-shardIndex)/shardCount + 1
}

// SessionRate is the configured rate of this process in sessions per wall-clock second.
func (c *Config) SessionRate() float64 {
	return float64(OwnedChargers(c.Chargers, c.ShardIndex, c.ShardCount)) * c.TimeScale / c.SessionInterval.Seconds()
}

// errAlreadyRun is returned by a second Run: a publisher's fleet and client are single-use.
var errAlreadyRun = errors.New("publisher: Run called twice")
