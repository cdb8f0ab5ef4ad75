package publisher

import (
	"context"
	"errors"
	"flag"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/chargesim/chargesim/components/publisher/sim"
	"github.com/chargesim/chargesim/components/session"
)

func TestDefaultsMatchConfigurationDocs(t *testing.T) {
	c := DefaultConfig()
	want := Config{Chargers: 10, Connectors: 2, ShardIndex: 0, ShardCount: 1, SessionInterval: time.Minute,
		SessionJitter: 0.2, TimeScale: 1, Seed: 1, DCShare: 0.3, ACTariff: 35, DCTariff: 59, SessionFee: 0,
		MaxInflight: 1000, ShutdownTimeout: 15 * time.Second, MQTT: c.MQTT}
	if c != want {
		t.Fatalf("defaults:\n got %+v\nwant %+v", c, want)
	}
	if c.MQTT.URL != "tcp://127.0.0.1:1883" {
		t.Fatalf("MQTT flags not registered: --mqtt-url default %q", c.MQTT.URL)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	// Every flag of the docs' publisher and MQTT sections is registered.
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	new(Config).Register(fs)
	for _, name := range []string{"chargers", "connectors", "shard-index", "shard-count", "session-interval",
		"session-jitter", "time-scale", "seed", "dc-share", "ac-tariff", "dc-tariff", "session-fee", "max-inflight",
		"mqtt-url", "mqtt-username", "mqtt-password", "mqtt-password-file", "mqtt-ca-file", "mqtt-cert-file",
		"mqtt-key-file", "mqtt-insecure-skip-verify", "mqtt-client-id", "topic-prefix"} {
		if fs.Lookup(name) == nil {
			t.Errorf("flag --%s not registered", name)
		}
	}
}

func TestConfigValidateNamesTheFlag(t *testing.T) {
	cases := []struct {
		flag string
		mut  func(*Config)
	}{
		{"chargers", func(c *Config) { c.Chargers = 0 }},
		{"chargers", func(c *Config) { c.Chargers = MaxChargers + 1 }},
		{"connectors", func(c *Config) { c.Connectors = 0 }},
		{"connectors", func(c *Config) { c.Connectors = MaxConnectors + 1 }},
		{"shard-count", func(c *Config) { c.ShardCount = 0 }},
		{"shard-index", func(c *Config) { c.ShardIndex = -1 }},
		{"shard-index", func(c *Config) { c.ShardIndex, c.ShardCount = 3, 3 }},
		{"session-interval", func(c *Config) { c.SessionInterval = 0 }},
		{"session-jitter", func(c *Config) { c.SessionJitter = -0.1 }},
		{"session-jitter", func(c *Config) { c.SessionJitter = 1.5 }},
		{"session-jitter", func(c *Config) { c.SessionJitter = math.NaN() }},
		{"time-scale", func(c *Config) { c.TimeScale = 0 }},
		{"time-scale", func(c *Config) { c.TimeScale = math.Inf(1) }},
		{"time-scale", func(c *Config) { c.SessionInterval, c.TimeScale = time.Second, 1e7 }},
		{"dc-share", func(c *Config) { c.DCShare = 1.01 }},
		{"ac-tariff", func(c *Config) { c.ACTariff = -1 }},
		{"dc-tariff", func(c *Config) { c.DCTariff = MaxTariff + 1 }},
		{"session-fee", func(c *Config) { c.SessionFee = -5 }},
		{"max-inflight", func(c *Config) { c.MaxInflight = 0 }},
		{"max-inflight", func(c *Config) { c.MaxInflight = 70000 }},
		{"shutdown-timeout", func(c *Config) { c.ShutdownTimeout = -time.Second }},
		{"mqtt-url", func(c *Config) { c.MQTT.URL = "http://broker:80" }},
		{"mqtt-url", func(c *Config) { c.MQTT.URL = "tcp://broker" }},
		{"mqtt-username", func(c *Config) { c.MQTT.Password = "secret" }},
		{"topic-prefix", func(c *Config) { c.MQTT.TopicPrefix = strings.Repeat("p", 600) }},
	}
	for _, tc := range cases {
		c := DefaultConfig()
		tc.mut(&c)
		err := c.Validate()
		if err == nil {
			t.Errorf("--%s: Validate accepted %+v", tc.flag, c)
			continue
		}
		if !strings.Contains(err.Error(), "--"+tc.flag+"=") {
			t.Errorf("--%s: error %q does not name the flag", tc.flag, err)
		}
	}
	// The password file is read by Validate.
	c := DefaultConfig()
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.MQTT.Username, c.MQTT.PasswordFile = "u", pw
	if err := c.Validate(); err != nil || c.MQTT.Password != "s3cret" {
		t.Fatalf("password file: %v, password %q", err, c.MQTT.Password)
	}
}

func TestCommandRejectsBadFlag(t *testing.T) {
	err := Command(context.Background(), []string{"--chargers=0", "--http-addr=127.0.0.1:0"})
	if err == nil || !strings.Contains(err.Error(), "--chargers=0") {
		t.Fatalf("Command(--chargers=0) = %v", err)
	}
	t.Setenv("CHARGESIM_SHARD_INDEX", "4")
	err = Command(context.Background(), []string{"--shard-count=4"})
	if err == nil || !strings.Contains(err.Error(), "--shard-index=4") {
		t.Fatalf("Command with CHARGESIM_SHARD_INDEX=4 --shard-count=4 = %v", err)
	}
}

// Every charger is simulated by exactly one shard, whatever the fleet size and shard count.
func TestShardingPartitionsTheFleet(t *testing.T) {
	params := sim.Params{Seed: 1, Connectors: 2, Jitter: 0.2}
	for _, chargers := range []int{1, 2, 7, 100, 1001} {
		for _, shards := range []int{1, 2, 3, 7, 16, 1500} {
			seen := make([]int, chargers+1)
			total := 0
			for i := range shards {
				f := newFleet(params, chargers, i, shards, time.Second)
				if f.len() != OwnedChargers(chargers, i, shards) {
					t.Fatalf("%d chargers, shard %d/%d: fleet of %d, OwnedChargers %d", chargers, i, shards, f.len(), OwnedChargers(chargers, i, shards))
				}
				for _, e := range f.h {
					if int(e.charger-1)%shards != i {
						t.Fatalf("shard %d/%d holds charger %d", i, shards, e.charger)
					}
					seen[e.charger]++
				}
				total += f.len()
			}
			for c := 1; c <= chargers; c++ {
				if seen[c] != 1 {
					t.Fatalf("%d chargers over %d shards: charger %d simulated %d times", chargers, shards, c, seen[c])
				}
			}
			if total != chargers {
				t.Fatalf("%d chargers over %d shards: %d simulated", chargers, shards, total)
			}
			// Shards are balanced within one charger.
			lo, hi := OwnedChargers(chargers, shards-1, shards), OwnedChargers(chargers, 0, shards)
			if hi-lo > 1 {
				t.Fatalf("%d chargers over %d shards: between %d and %d per shard", chargers, shards, lo, hi)
			}
		}
	}
}

// The scheduler hands out sessions in time order, each charger's in sequence, at the times
// package sim defines.
func TestSchedulerOrder(t *testing.T) {
	params := sim.Params{Seed: 5, Connectors: 2, Jitter: 0.4}
	const chargers = 300
	interval := 10 * time.Millisecond
	f := newFleet(params, chargers, 0, 1, interval)
	nextN := make([]uint32, chargers+1)
	for c := range nextN {
		nextN[c] = params.FirstSession(uint32(c))
	}
	var prev int64 = -1
	now := time.Unix(1_750_000_000, 0)
	for i := 0; i < 30*chargers; i++ {
		at, _ := f.peek()
		if at < prev {
			t.Fatalf("event %d at %d before previous %d", i, at, prev)
		}
		prev = at
		c, n, _ := f.fire(now)
		if n != nextN[c] {
			t.Fatalf("charger %d fired session %d, want %d", c, n, nextN[c])
		}
		nextN[c]++
		want := params.Start(c, n) * float64(interval)
		// Gaps are summed in whole nanoseconds: at most 1 ns off per session.
		if diff := math.Abs(float64(at) - want); diff > float64(n)+1 {
			t.Fatalf("charger %d session %d fired at %d ns, sim.Start says %.0f", c, n, at, want)
		}
	}
	for c := 1; c <= chargers; c++ {
		if nextN[c] < 25 || nextN[c] > 35 {
			t.Fatalf("charger %d fired %d of ~30 sessions", c, nextN[c])
		}
	}
}

// No lockstep: in every tenth of an interval the fleet fires about a tenth of its sessions.
func TestFleetFiresEvenly(t *testing.T) {
	params := sim.Params{Seed: 11, Connectors: 2, Jitter: 0.2}
	const chargers, intervals, buckets = 5000, 5, 10
	interval := time.Second
	f := newFleet(params, chargers, 0, 1, interval)
	hist := make([]int, intervals*buckets)
	for {
		at, _ := f.peek()
		b := int(at * buckets / int64(interval))
		if b >= len(hist) {
			break
		}
		hist[b]++
		f.fire(time.Now())
	}
	mean := float64(chargers) / buckets
	for i, h := range hist {
		if math.Abs(float64(h)-mean) > 0.15*mean {
			t.Fatalf("bucket %d (%.1f–%.1f intervals) holds %d sessions, mean %g: %v", i,
				float64(i)/buckets, float64(i+1)/buckets, h, mean, hist)
		}
	}
}

func TestSessionIDsStrictlyIncreasePerCharger(t *testing.T) {
	params := sim.Params{Seed: 1, Connectors: 2}
	f := newFleet(params, 50, 0, 1, time.Millisecond)
	last := map[uint32]int64{}
	base := time.Unix(1_750_000_000, 0)
	for i := range 5000 {
		// A clock that stalls and steps back (NTP) must not repeat IDs.
		now := base.Add(time.Duration(i%7-3) * time.Microsecond)
		c, _, id := f.fire(now)
		if id <= last[c] {
			t.Fatalf("charger %d: session ID %d after %d", c, id, last[c])
		}
		if id >= 1<<53 {
			t.Fatalf("session ID %d beyond 2^53", id)
		}
		last[c] = id
	}
}

// A restarted publisher (new process, same seed, no state on disk) never reuses a session ID
// of a charger: IDs come from the clock, which moved on.
func TestSessionIDsUniqueAcrossRestart(t *testing.T) {
	params := sim.Params{Seed: 1, Connectors: 2, Jitter: 0.2}
	const chargers = 2000
	seen := make(map[[2]int64]int, 2*20*chargers)
	for run := range 2 {
		f := newFleet(params, chargers, 0, 1, time.Millisecond)
		for range 20 * chargers {
			c, _, id := f.fire(time.Now())
			key := [2]int64{int64(c), id}
			if prev, dup := seen[key]; dup {
				t.Fatalf("run %d: charger %d reuses session ID %d of run %d", run, c, id, prev)
			}
			seen[key] = run
		}
	}
}

func TestBuildEncodesDecodableSessions(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Chargers, cfg.Connectors, cfg.MQTT.TopicPrefix, cfg.SessionFee = 500, 4, "site-a", 25
	p, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var sl slot
	var s session.Session
	now := time.Now()
	for i := range 2000 {
		p.build(&sl, &s, now.Add(time.Duration(i)*time.Millisecond))
		got, err := session.Decode(sl.topic, sl.payload)
		if err != nil {
			t.Fatalf("Decode(%s, %s): %v", sl.topic, sl.payload, err)
		}
		if !strings.HasPrefix(sl.topic, "site-a/charger/"+got.ChargerID+"/connector/") {
			t.Fatalf("topic %s for charger %s", sl.topic, got.ChargerID)
		}
		if got.ConnectorID < 1 || got.ConnectorID > cfg.Connectors {
			t.Fatalf("connector %d of %d", got.ConnectorID, cfg.Connectors)
		}
		if !got.EndedAt.Equal(sl.sentAt.Truncate(time.Millisecond)) || got.EndedAt.Sub(got.StartedAt) != time.Duration(got.DurationSeconds)*time.Second {
			t.Fatalf("times: %+v", got)
		}
		if got.SessionFeeCents != 25 || math.Abs(got.CostCents-(got.EnergyKWh*got.TariffCentsPerKWh+25)) > 0.5 {
			t.Fatalf("cost: %+v", got)
		}
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	cfg := DefaultConfig()
	cfg.Chargers, cfg.ShardIndex, cfg.ShardCount, cfg.TimeScale, cfg.SessionInterval = 1000, 2, 3, 60, 30*time.Second
	if _, err := New(cfg, nil, reg); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint %s: %s", p.Metric, p.Text)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		switch {
		case m.Gauge != nil:
			got[mf.GetName()] = m.Gauge.GetValue()
		case m.Counter != nil:
			got[mf.GetName()] = m.Counter.GetValue()
		default:
			got[mf.GetName()] = -1
		}
	}
	for _, name := range []string{MetricScheduled, MetricPublished, MetricFailed, MetricRetries, MetricInflight,
		MetricPubackLatency, MetricConnected, MetricChargers, MetricSessionRate} {
		if _, ok := got[name]; !ok {
			t.Errorf("metric %s not registered", name)
		}
	}
	// Shard 2 of 3 of 1000 chargers: 3, 6, …, 999 → 333 chargers; 333 × 60 / 30 s = 666 /s.
	if got[MetricChargers] != 333 || got[MetricSessionRate] != 666 {
		t.Fatalf("chargers %g, rate %g; want 333, 666", got[MetricChargers], got[MetricSessionRate])
	}
	// A second publisher on the same registry is refused, not silently merged.
	if _, err := New(cfg, nil, reg); err == nil {
		t.Fatal("second New on the same registry succeeded")
	}
}

// Without a broker Run keeps trying to connect and returns nil once cancelled.
func TestRunWithoutBrokerStopsOnCancel(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MQTT.URL = "tcp://127.0.0.1:1" // nothing listens on port 1
	p, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Ready(context.Background()); err == nil {
		t.Fatal("Ready before connecting")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if err := p.Run(context.Background()); !errors.Is(err, errAlreadyRun) {
		t.Fatalf("second Run = %v", err)
	}
}

// The fleet state of a million chargers stays small: no per-charger pointers or maps.
func TestMillionChargerFleetMemory(t *testing.T) {
	perCharger, total := fleetHeap(t, 1_000_000)
	t.Logf("1,000,000 chargers: %.1f MB heap, %.1f bytes per charger", total/1e6, perCharger)
	if perCharger > 32 {
		t.Fatalf("%.1f bytes of heap per charger, want ≤ 32", perCharger)
	}
}

// fleetHeap builds a publisher for chargers chargers and returns the heap it holds.
func fleetHeap(tb testing.TB, chargers int) (perCharger, total float64) {
	tb.Helper()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	cfg := DefaultConfig()
	cfg.Chargers = chargers
	p, err := New(cfg, nil, nil)
	if err != nil {
		tb.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(p)
	total = float64(after.HeapAlloc) - float64(before.HeapAlloc)
	return total / float64(chargers), total
}

// A publish the client reports as failed is sent again, with a fresh payload buffer (paho may
// still hold the old one), and never counted as published; abandoning stops the retries.
func TestFailedPublishIsRetried(t *testing.T) {
	reg := prometheus.NewRegistry()
	p, err := New(DefaultConfig(), nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	// Never connected: paho fails every publish at once with ErrNotConnected.
	sl := <-p.free
	var s session.Session
	p.build(sl, &s, time.Now())
	p.inUse.Add(1)
	first := &sl.payload[0]
	sl.tok = p.client.Publish(sl.topic, 1, false, sl.payload)
	p.pending <- sl
	abandon := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.collect(abandon)
	}()
	for testutil.ToFloat64(p.m.retries) < 3 {
		time.Sleep(10 * time.Millisecond)
	}
	close(abandon)
	<-done
	if got := testutil.ToFloat64(p.m.published); got != 0 {
		t.Fatalf("published %g with no broker", got)
	}
	if sl.attempts < 3 || &sl.payload[0] == first {
		t.Fatalf("attempts %d, payload buffer replaced: %t", sl.attempts, &sl.payload[0] != first)
	}
	if _, err := session.Decode(sl.topic, sl.payload); err != nil {
		t.Fatalf("retried payload: %v", err)
	}
	if len(p.free) != p.slots-1 || p.inUse.Load() != 1 {
		t.Fatalf("slot freed although never acknowledged: free %d of %d, in use %d", len(p.free), p.slots, p.inUse.Load())
	}
}
