//go:build integration

package publisher

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/test/testenv"
)

// sink is a plain paho subscriber that decodes and counts what it receives.
type sink struct {
	mu       sync.Mutex
	got      map[string]int // session.Key → deliveries
	total    int
	bad      []string
	prefix   string
	notified chan struct{}
}

func newSink(prefix string) *sink {
	return &sink{got: map[string]int{}, prefix: prefix, notified: make(chan struct{}, 1)}
}

func (s *sink) handle(_ mqtt.Client, m mqtt.Message) {
	sess, err := session.Decode(m.Topic(), m.Payload())
	s.mu.Lock()
	switch {
	case err != nil:
		s.bad = append(s.bad, fmt.Sprintf("%s %s: %v", m.Topic(), m.Payload(), err))
	case !strings.HasPrefix(m.Topic(), s.prefix+"charger/"+sess.ChargerID+"/connector/"):
		s.bad = append(s.bad, "unexpected topic "+m.Topic())
	default:
		s.got[sess.Key()]++
		s.total++
	}
	s.mu.Unlock()
	select {
	case s.notified <- struct{}{}:
	default:
	}
}

func (s *sink) counts() (distinct, total int, bad []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got), s.total, append([]string(nil), s.bad...)
}

// waitDistinct waits until n distinct sessions arrived; the timeout only bounds a failure.
func (s *sink) waitDistinct(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		d, total, bad := s.counts()
		if len(bad) > 0 {
			t.Fatalf("subscriber rejected %d messages, first: %s", len(bad), bad[0])
		}
		if d >= n {
			return
		}
		select {
		case <-s.notified:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("subscriber received %d distinct sessions (%d messages), publisher published %d", d, total, n)
		}
	}
}

func subscribe(t *testing.T, url, clientID string, clean bool, s *sink) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(clientID).SetCleanSession(clean).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(100 * time.Millisecond).
		SetMaxReconnectInterval(500 * time.Millisecond).SetOrderMatters(false).
		// A resumed persistent session delivers before any Subscribe call is made again.
		SetDefaultPublishHandler(s.handle)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	tok := c.Subscribe(session.SubscriptionFilter(s.prefix), 1, s.handle)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

type running struct {
	p      *Publisher
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, cfg Config) *running {
	t.Helper()
	reg := prometheus.NewRegistry()
	p, err := New(cfg, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{p: p, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

// stop cancels Run and waits for it to return (after its flush).
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	if err := <-r.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	r.done <- nil // for the cleanup
}

func (r *running) metric(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// waitMetric polls until metric reaches at least v (the timeout only bounds a failure).
func (r *running) waitMetric(t *testing.T, name string, v float64) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for r.metric(t, name) < v {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %g, waited for %g", name, r.metric(t, name), v)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func fleetConfig(t *testing.T, url string) Config {
	cfg := DefaultConfig()
	cfg.MQTT.URL = url
	cfg.MQTT.ClientID = "pub-" + strings.ReplaceAll(t.Name(), "/", "-")
	cfg.MQTT.TopicPrefix = "it"
	cfg.Chargers = 200
	cfg.Connectors = 3
	cfg.TimeScale = 600 // each charger every 100 ms: 2000 sessions/s
	cfg.MaxInflight = 100
	cfg.ShutdownTimeout = 30 * time.Second
	return cfg
}

// Every scheduled session reaches a plain subscriber, exactly as the metrics count it, and a
// graceful shutdown flushes the window (published == scheduled once Run returns).
func TestPublishesEveryScheduledSession(t *testing.T) {
	m := testenv.StartMosquitto(t)
	s := newSink("it/")
	subscribe(t, m.URL, "sub-"+t.Name(), true, s)

	r := start(t, fleetConfig(t, m.URL))
	r.waitMetric(t, MetricPublished, 3000)
	if err := r.p.Ready(context.Background()); err != nil {
		t.Fatalf("Ready while publishing: %v", err)
	}
	if got := r.metric(t, MetricConnected); got != 1 {
		t.Fatalf("%s = %g while publishing", MetricConnected, got)
	}
	r.stop(t)

	scheduled, published := r.metric(t, MetricScheduled), r.metric(t, MetricPublished)
	if published != scheduled || scheduled < 3000 {
		t.Fatalf("after shutdown: scheduled %g, published %g", scheduled, published)
	}
	for _, name := range []string{MetricFailed, MetricInflight, MetricConnected} {
		if got := r.metric(t, name); got != 0 {
			t.Fatalf("after shutdown: %s = %g", name, got)
		}
	}
	if got := r.metric(t, MetricPubackLatency); got != published {
		t.Fatalf("latency observed %g times, published %g", got, published)
	}
	s.waitDistinct(t, int(scheduled))
	// Without a reconnect nothing is delivered twice: the subscriber saw exactly the count.
	time.Sleep(200 * time.Millisecond)
	if distinct, total, _ := s.counts(); distinct != int(scheduled) || total != int(scheduled) {
		t.Fatalf("subscriber: %d distinct sessions in %d messages, scheduled %g", distinct, total, scheduled)
	}
	// Every charger of the fleet took part.
	chargers := map[string]bool{}
	s.mu.Lock()
	for key := range s.got {
		chargers[strings.SplitN(key, "/", 2)[0]] = true
	}
	s.mu.Unlock()
	if len(chargers) != 200 {
		t.Fatalf("sessions of %d chargers, want 200", len(chargers))
	}
}

// The broker goes away mid-run and comes back: the publisher reconnects, backpressure holds
// the sessions due meanwhile, and a persistent subscriber receives every scheduled session.
func TestBrokerRestartLosesNothing(t *testing.T) {
	m := testenv.StartMosquitto(t)
	s := newSink("it/")
	subscribe(t, m.URL, "sub-persistent", false, s)

	cfg := fleetConfig(t, m.URL)
	r := start(t, cfg)
	r.waitMetric(t, MetricPublished, 1000)

	m.Stop()
	// Sessions keep coming due while the broker is down: they fill the window and wait.
	r.waitMetric(t, MetricInflight, float64(cfg.MaxInflight))
	before := r.metric(t, MetricScheduled)
	time.Sleep(300 * time.Millisecond)
	if got := r.metric(t, MetricScheduled); got != before {
		t.Fatalf("scheduled went from %g to %g with a full window: backpressure does not hold", before, got)
	}
	if err := r.p.Ready(context.Background()); err == nil {
		t.Fatal("Ready with the broker down")
	}
	m.Start()

	r.waitMetric(t, MetricPublished, before+2000)
	if got := r.metric(t, MetricConnected); got != 1 {
		t.Fatalf("%s = %g after the reconnect", MetricConnected, got)
	}
	r.stop(t)

	scheduled, published := r.metric(t, MetricScheduled), r.metric(t, MetricPublished)
	if published != scheduled || r.metric(t, MetricFailed) != 0 {
		t.Fatalf("after shutdown: scheduled %g, published %g, failed %g", scheduled, published, r.metric(t, MetricFailed))
	}
	s.waitDistinct(t, int(scheduled))
	distinct, total, _ := s.counts()
	t.Logf("scheduled %g, subscriber got %d distinct in %d messages, retries %g", scheduled, distinct, total, r.metric(t, MetricRetries))
	if distinct != int(scheduled) {
		t.Fatalf("subscriber got %d distinct sessions, scheduled %g", distinct, scheduled)
	}
}

// What cannot be delivered by the end of the shutdown timeout is counted as failed, not lost
// from the books: scheduled = published + failed.
func TestShutdownCountsAbandonedAsFailed(t *testing.T) {
	m := testenv.StartMosquitto(t)
	cfg := fleetConfig(t, m.URL)
	cfg.ShutdownTimeout = 200 * time.Millisecond
	r := start(t, cfg)
	r.waitMetric(t, MetricPublished, 500)
	m.Stop()
	r.waitMetric(t, MetricInflight, float64(cfg.MaxInflight))
	r.stop(t)

	scheduled, published, failed := r.metric(t, MetricScheduled), r.metric(t, MetricPublished), r.metric(t, MetricFailed)
	if failed != float64(cfg.MaxInflight) || scheduled != published+failed {
		t.Fatalf("scheduled %g, published %g, failed %g; want failed = window %d", scheduled, published, failed, cfg.MaxInflight)
	}
	if got := r.metric(t, MetricInflight); got != 0 {
		t.Fatalf("inflight %g after shutdown", got)
	}
}

// Two shards of one fleet publish disjoint halves of it.
func TestShardsPublishDisjointChargers(t *testing.T) {
	m := testenv.StartMosquitto(t)
	s := newSink("it/")
	subscribe(t, m.URL, "sub-"+t.Name(), true, s)
	var rs []*running
	var total float64
	for i := range 2 {
		cfg := fleetConfig(t, m.URL)
		cfg.Chargers, cfg.ShardIndex, cfg.ShardCount = 101, i, 2
		cfg.MQTT.ClientID += fmt.Sprint(i)
		rs = append(rs, start(t, cfg))
	}
	for _, r := range rs {
		r.waitMetric(t, MetricPublished, 500)
	}
	for i, r := range rs {
		r.stop(t)
		total += r.metric(t, MetricScheduled)
		if got, want := r.metric(t, MetricChargers), float64(OwnedChargers(101, i, 2)); got != want {
			t.Fatalf("shard %d simulates %g chargers, want %g", i, got, want)
		}
	}
	s.waitDistinct(t, int(total))
	perCharger := map[string]bool{}
	s.mu.Lock()
	for key := range s.got {
		perCharger[strings.SplitN(key, "/", 2)[0]] = true
	}
	s.mu.Unlock()
	if len(perCharger) != 101 {
		t.Fatalf("sessions of %d chargers, want 101", len(perCharger))
	}
}
