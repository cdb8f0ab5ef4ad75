package publisher

import (
	"context"
	"errors"
	"flag"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
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
		MaxInflight: 1000, ShutdownTimeout: 15 * time.Second, MQTT: c.MQTT,
		Epoch: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), ResumeWindow: 2 * time.Minute, HeartbeatInterval: 10 * time.Second,
		ReplayAfter: 30 * time.Second, ReplayBefore: 10 * time.Second,
		Store: c.Store}
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
				f := newFleet(params, chargers, i, shards, 0)
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

var testEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()

func gridParams(seed uint64, jitter float64, interval time.Duration) sim.Params {
	return sim.Params{Seed: seed, Connectors: 2, Jitter: jitter, Epoch: testEpoch, Interval: int64(interval)}
}

// The scheduler hands out slots in time order, each charger's in sequence, at the times
// package sim defines.
func TestSchedulerOrder(t *testing.T) {
	params := gridParams(5, 0.4, 10*time.Millisecond)
	const chargers = 300
	from := testEpoch + int64(90*24*time.Hour)
	f := newFleet(params, chargers, 0, 1, from)
	nextN := make([]uint64, chargers+1)
	for c := range nextN {
		nextN[c] = params.SlotAt(uint32(c), from)
	}
	var prev int64 = -1
	for i := 0; i < 30*chargers; i++ {
		at, _ := f.peek()
		if at < prev || at < from {
			t.Fatalf("event %d at %d before previous %d or start %d", i, at, prev, from)
		}
		prev = at
		c, n, got := f.fire()
		if n != nextN[c] || got != at || got != params.SlotTime(c, n) {
			t.Fatalf("charger %d fired slot %d at %d, want slot %d at %d", c, n, got, nextN[c], params.SlotTime(c, nextN[c]))
		}
		nextN[c]++
	}
	for c := 1; c <= chargers; c++ {
		if k := nextN[c] - params.SlotAt(uint32(c), from); k < 25 || k > 35 {
			t.Fatalf("charger %d fired %d of ~30 sessions", c, k)
		}
	}
}

// No lockstep: in every tenth of an interval the fleet fires about a tenth of its sessions.
func TestFleetFiresEvenly(t *testing.T) {
	const chargers, intervals, buckets = 5000, 5, 10
	interval := time.Second
	params := gridParams(11, 0.2, interval)
	from := testEpoch + int64(time.Hour) + 123456789
	f := newFleet(params, chargers, 0, 1, from)
	hist := make([]int, intervals*buckets)
	for {
		at, _ := f.peek()
		b := int((at - from) * buckets / int64(interval))
		if b >= len(hist) {
			break
		}
		hist[b]++
		f.fire()
	}
	mean := float64(chargers) / buckets
	for i, h := range hist {
		if math.Abs(float64(h)-mean) > 0.15*mean {
			t.Fatalf("bucket %d (%.1f–%.1f intervals) holds %d sessions, mean %g: %v", i,
				float64(i)/buckets, float64(i+1)/buckets, h, mean, hist)
		}
	}
}

// firedKeys runs a fleet from from until before to and returns the keys it fired, counted.
func firedKeys(params sim.Params, chargers, shard, shards int, from, to int64, into map[string]int) {
	f := newFleet(params, chargers, shard, shards, from)
	var sl slot
	var s session.Session
	p := &Publisher{params: params, fleet: f, topics: session.NewTopicBuilder("")}
	for {
		if at, _ := f.peek(); at >= to {
			return
		}
		p.build(p.fleet, &sl, &s)
		into[s.Key()]++
	}
}

// Same inputs, same sessions: two fleets (two processes) built alike fire the same sessions,
// byte for byte, and every key is a pure function of the slot.
func TestSameInputsSameSessions(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Chargers, cfg.TimeScale = 200, 60
	a, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	from := time.Now().UnixNano()
	a.fleet.reset(from)
	b.fleet.reset(from)
	var sa, sb slot
	var xa, xb session.Session
	for i := range 5000 {
		a.build(a.fleet, &sa, &xa)
		b.build(b.fleet, &sb, &xb)
		if string(sa.payload) != string(sb.payload) || sa.topic != sb.topic {
			t.Fatalf("session %d differs:\n%s %s\n%s %s", i, sa.topic, sa.payload, sb.topic, sb.payload)
		}
		c, _ := strconv.ParseUint(xa.ChargerID, 10, 32)
		n, ok := a.params.SlotOfID(uint32(c), xa.SessionID)
		if !ok || a.params.Connector(uint32(c), n) != xa.ConnectorID || xa.SessionID >= 1<<53 {
			t.Fatalf("session %d: key %s is not slot %d of the grid", i, xa.Key(), n)
		}
		if !xa.EndedAt.Equal(time.Unix(0, a.params.SlotTime(uint32(c), n)).Truncate(time.Millisecond)) {
			t.Fatalf("session %d ends at %s, its slot at %d", i, xa.EndedAt, a.params.SlotTime(uint32(c), n))
		}
	}
}

// A restarted publisher (new process, same settings, no state on disk) and a clock stepped
// back produce no new key: whatever they fire again is a key the first run already had, and
// slots are neither skipped nor invented.
func TestRestartAndClockStepBackReuseKeys(t *testing.T) {
	params := gridParams(1, 0.2, time.Millisecond)
	const chargers = 500
	t0 := testEpoch + int64(200*24*time.Hour)
	first := map[string]int{}
	firedKeys(params, chargers, 0, 1, t0, t0+int64(40*time.Millisecond), first)
	// The clock steps 15 ms back; the restarted process runs until 60 ms.
	again := map[string]int{}
	firedKeys(params, chargers, 0, 1, t0+int64(25*time.Millisecond), t0+int64(60*time.Millisecond), again)
	overlap := 0
	for k := range again {
		if first[k] > 0 {
			overlap++
		}
	}
	if overlap < 14*chargers || overlap > 16*chargers {
		t.Fatalf("%d keys fired again in the 15 ms the clock stepped back, want ~%d", overlap, 15*chargers)
	}
	// Union = one uninterrupted run over [t0, 60 ms): nothing lost, nothing new.
	whole := map[string]int{}
	firedKeys(params, chargers, 0, 1, t0, t0+int64(60*time.Millisecond), whole)
	for k := range first {
		again[k]++
	}
	if len(again) != len(whole) {
		t.Fatalf("restart fired %d distinct keys, an uninterrupted run %d", len(again), len(whole))
	}
	for k, n := range whole {
		if n != 1 || again[k] == 0 {
			t.Fatalf("key %s: %d times in the uninterrupted run, %d after the restart", k, n, again[k])
		}
	}
}

// Resharding: a rollout from 2 to 3 shards runs old and new layouts side by side. Where both
// own a charger they fire the same keys (no inflation), and every charger is fired by the
// layouts in every moment they overlap (none unsimulated).
func TestReshardingOverlapSameKeys(t *testing.T) {
	params := gridParams(9, 0.3, time.Millisecond)
	const chargers = 601
	t0 := testEpoch + int64(24*time.Hour)
	t1 := t0 + int64(30*time.Millisecond)
	old, neu, whole := map[string]int{}, map[string]int{}, map[string]int{}
	for i := range 2 {
		firedKeys(params, chargers, i, 2, t0, t1, old)
	}
	for i := range 3 {
		firedKeys(params, chargers, i, 3, t0, t1, neu)
	}
	firedKeys(params, chargers, 0, 1, t0, t1, whole)
	if len(old) != len(whole) || len(neu) != len(whole) {
		t.Fatalf("2 shards fired %d keys, 3 shards %d, one process %d", len(old), len(neu), len(whole))
	}
	union := map[string]int{}
	for k := range old {
		union[k]++
	}
	for k := range neu {
		union[k]++
	}
	for k := range whole {
		if union[k] != 2 {
			t.Fatalf("key %s fired by %d of the two layouts", k, union[k])
		}
	}
	if len(union) != len(whole) {
		t.Fatalf("the overlap has %d distinct keys, the fleet %d: totals would inflate", len(union), len(whole))
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
	for range 2000 {
		p.build(p.fleet, &sl, &s)
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
		if !got.EndedAt.Equal(time.Unix(0, sl.at).UTC().Truncate(time.Millisecond)) || got.EndedAt.Sub(got.StartedAt) != time.Duration(got.DurationSeconds)*time.Second {
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
	p.build(p.fleet, sl, &s)
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
