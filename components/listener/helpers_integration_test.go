//go:build integration

package listener

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
	"github.com/chargesim/chargesim/test/testenv"
)

const testDB = "chargesim"

// deps are the real broker and store of one test.
type deps struct {
	mq  *testenv.Mosquitto
	fdb *testenv.FerretDB
}

func startDeps(tb testing.TB) deps {
	tb.Helper()
	return deps{mq: testenv.StartMosquitto(tb), fdb: testenv.StartFerretDB(tb)}
}

// config is a listener configuration for tests: the documented defaults with short intervals.
func (d deps) config(clientID string) Config {
	c := DefaultConfig()
	c.MQTT.URL = d.mq.URL
	c.MQTT.ClientID = clientID
	c.Store.URI = d.fdb.URI
	c.Store.Database = testDB
	c.BatchSize = 100
	c.FlushInterval = 20 * time.Millisecond
	c.MaxPending = 1000
	c.ShutdownTimeout = 10 * time.Second
	return c
}

func testLogger(tb testing.TB, name string) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("l", name)
	}
	return slog.New(slog.DiscardHandler)
}

// running is a listener running in the test process.
type running struct {
	l      *Listener
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

// startListener runs a listener until the test ends and waits until it is ready (connected,
// subscribed, store answering). setup may install test hooks before Run.
func startListener(tb testing.TB, cfg Config, name string, setup func(*Listener)) *running {
	tb.Helper()
	if err := cfg.Validate(); err != nil {
		tb.Fatalf("config: %v", err)
	}
	reg := prometheus.NewRegistry()
	l, err := New(cfg, testLogger(tb, name), reg)
	if err != nil {
		tb.Fatal(err)
	}
	if setup != nil {
		setup(l)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{l: l, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- l.Run(ctx) }()
	tb.Cleanup(func() { r.stop(tb) })
	waitUntil(tb, 60*time.Second, name+" ready", func() (bool, string) {
		err := l.Ready(context.Background())
		return err == nil, fmt.Sprint(err)
	})
	return r
}

// stop shuts the listener down gracefully and checks Run's result.
func (r *running) stop(tb testing.TB) {
	tb.Helper()
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			tb.Errorf("Run: %v", err)
		}
	case <-time.After(60 * time.Second):
		tb.Errorf("listener did not stop within 60s")
	}
}

type counts struct{ received, stored, dups, writeErrors, pending, released float64 }

func (r *running) counts() counts {
	m := r.l.m
	return counts{
		received:    testutil.ToFloat64(m.received),
		stored:      testutil.ToFloat64(m.stored),
		dups:        testutil.ToFloat64(m.duplicates),
		writeErrors: testutil.ToFloat64(m.writeErrors),
		pending:     testutil.ToFloat64(m.pending),
		released:    float64(r.l.released.Load()),
	}
}

func (c counts) String() string {
	return fmt.Sprintf("received %v stored %v duplicates %v write_errors %v pending %v released %v",
		c.received, c.stored, c.dups, c.writeErrors, c.pending, c.released)
}

// waitUntil polls cond until it holds, failing the test with cond's last description after
// timeout. Timeouts are generous: they catch hangs, not slowness.
func waitUntil(tb testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, desc := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("waiting for %s: gave up after %s: %s", what, timeout, desc)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pub is a bare paho publisher, like any client written against the original contract.
type pub struct {
	c mqtt.Client
}

func newPub(tb testing.TB, url, id string, opts ...func(*mqtt.ClientOptions)) *pub {
	tb.Helper()
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(true).
		SetAutoReconnect(true).SetMaxReconnectInterval(500 * time.Millisecond).SetWriteTimeout(10 * time.Second)
	for _, opt := range opts {
		opt(o)
	}
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		tb.Fatalf("publisher connect: %v", tok.Error())
	}
	tb.Cleanup(func() { c.Disconnect(100) })
	return &pub{c: c}
}

type message struct {
	topic   string
	payload []byte
}

// pubWindow is how many QoS 1 publishes pub keeps in flight.
const pubWindow = 200

// publish sends msgs at QoS 1 and waits until the broker has acknowledged each one, keeping up
// to pubWindow in flight.
func (p *pub) publish(tb testing.TB, msgs []message) {
	tb.Helper()
	if err := p.tryPublish(msgs); err != nil {
		tb.Fatal(err)
	}
}

func (p *pub) tryPublish(msgs []message) error {
	toks := make([]mqtt.Token, 0, pubWindow)
	flush := func() error {
		for _, t := range toks {
			if !t.WaitTimeout(60 * time.Second) {
				return fmt.Errorf("publish: no PUBACK within 60s")
			}
			if err := t.Error(); err != nil {
				return fmt.Errorf("publish: %w", err)
			}
		}
		toks = toks[:0]
		return nil
	}
	for _, m := range msgs {
		toks = append(toks, p.c.Publish(m.topic, 1, false, m.payload))
		if len(toks) == pubWindow {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// good is a valid session with known values, published with the contract's payload plus
// optional extensions.
type good struct {
	charger   string
	connector int
	id        int64
	energy    float64
	duration  float64
	cost      float64
	ts        int64 // the contract's timestamp (Unix seconds); 0: not sent
}

func (g good) key() string   { return session.Key(g.charger, g.connector, g.id) }
func (g good) topic() string { return session.NewTopicBuilder("").Topic(g.charger, g.connector, g.id) }

func (g good) message() message {
	p := fmt.Sprintf(`{"session_id": %d, "energy_delivered_in_kWh": %s, "duration_in_seconds": %s, "session_cost_in_cents": %s}`,
		g.id, strconv.FormatFloat(g.energy, 'f', -1, 64), strconv.FormatFloat(g.duration, 'f', -1, 64), strconv.FormatFloat(g.cost, 'f', -1, 64))
	if g.ts != 0 {
		p = p[:len(p)-1] + fmt.Sprintf(`, "timestamp": %d}`, g.ts)
	}
	return message{topic: g.topic(), payload: []byte(p)}
}

// goods returns n distinct sessions over 25 chargers, ids from first.
func goods(first, n int) []good {
	out := make([]good, n)
	for i := range out {
		id := first + i
		out[i] = good{
			charger: strconv.Itoa(1 + id%25), connector: 1 + id%2, id: int64(id),
			energy: float64(5+id%60) + 0.25, duration: float64(600 + id%3000), cost: float64(100 + id%900),
		}
	}
	return out
}

func messagesOf(gs []good) []message {
	out := make([]message, len(gs))
	for i, g := range gs {
		out[i] = g.message()
	}
	return out
}

// The store is read with plain finds: the ground truth of every test.
func sessionsColl(tb testing.TB, d deps) sessionsSet {
	tb.Helper()
	return sessionsSet{d.fdb.Client().Database(testDB)}
}

// sessionsSet is every collection that holds sessions: on FerretDB the time partitions (and
// the unpartitioned collection, if any), read with plain finds.
type sessionsSet struct{ db *mongo.Database }

func (s sessionsSet) colls(ctx context.Context) ([]*mongo.Collection, error) {
	names, err := s.db.ListCollectionNames(ctx, bson.D{})
	if err != nil {
		return nil, err
	}
	var out []*mongo.Collection
	for _, n := range names {
		if n == store.SessionsCollection || strings.HasPrefix(n, store.PartitionPrefix) {
			out = append(out, s.db.Collection(n))
		}
	}
	return out, nil
}

// CountDocuments sums the counts of every collection.
func (s sessionsSet) CountDocuments(ctx context.Context, filter any, _ ...options.Lister[options.CountOptions]) (int64, error) {
	colls, err := s.colls(ctx)
	if err != nil {
		return 0, err
	}
	return store.CountIn(ctx, colls, filter)
}

// docCounter is a collection or a sessionsSet.
type docCounter interface {
	CountDocuments(ctx context.Context, filter any, opts ...options.Lister[options.CountOptions]) (int64, error)
}

func countDocs(tb testing.TB, c docCounter, filter bson.D) int64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := c.CountDocuments(ctx, filter)
	if err != nil {
		return -1 // the store may be down on purpose; callers poll
	}
	return n
}

func allSessions(tb testing.TB, set sessionsSet) map[string]store.SessionDoc {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	colls, err := set.colls(ctx)
	if err != nil {
		tb.Fatalf("list sessions collections: %v", err)
	}
	var docs []store.SessionDoc
	for _, c := range colls {
		cur, err := c.Find(ctx, bson.D{})
		if err != nil {
			tb.Fatalf("find sessions: %v", err)
		}
		var part []store.SessionDoc
		if err := cur.All(ctx, &part); err != nil {
			tb.Fatalf("read sessions: %v", err)
		}
		docs = append(docs, part...)
	}
	out := make(map[string]store.SessionDoc, len(docs))
	for _, d := range docs {
		if _, dup := out[d.ID]; dup {
			tb.Errorf("session %s stored twice", d.ID)
		}
		out[d.ID] = d
	}
	return out
}

type totals struct {
	sessions      int
	energy, cost  float64
	perCharger    map[string]int
	energyCharger map[string]float64
}

func totalsOf(gs []good) totals {
	t := totals{perCharger: map[string]int{}, energyCharger: map[string]float64{}}
	for _, g := range gs {
		t.sessions++
		t.energy += g.energy
		t.cost += g.cost
		t.perCharger[g.charger]++
		t.energyCharger[g.charger] += g.energy
	}
	return t
}

func totalsStored(docs map[string]store.SessionDoc) totals {
	t := totals{perCharger: map[string]int{}, energyCharger: map[string]float64{}}
	for _, d := range docs {
		t.sessions++
		t.energy += d.EnergyKWh
		t.cost += d.CostCents
		t.perCharger[d.ChargerID]++
		t.energyCharger[d.ChargerID] += d.EnergyKWh
	}
	return t
}

// checkExactlyOnce asserts the store holds exactly the published sessions, each once, with the
// published values, and that the per-charger sums (what the API aggregates) match.
func checkExactlyOnce(tb testing.TB, d deps, published []good) {
	tb.Helper()
	docs := allSessions(tb, sessionsColl(tb, d))
	if len(docs) != len(published) {
		tb.Errorf("store holds %d sessions, %d were published", len(docs), len(published))
	}
	missing := 0
	for _, g := range published {
		doc, ok := docs[g.key()]
		if !ok {
			missing++
			if missing <= 5 {
				tb.Errorf("session %s lost", g.key())
			}
			continue
		}
		if doc.EnergyKWh != g.energy || doc.CostCents != g.cost || doc.DurationSeconds != g.duration ||
			doc.ChargerID != g.charger || doc.ConnectorID != g.connector || doc.SessionID != g.id || doc.Topic != g.topic() {
			tb.Errorf("session %s stored as %+v, published %+v", g.key(), doc, g)
		}
	}
	if missing > 0 {
		tb.Errorf("%d of %d sessions lost", missing, len(published))
	}
	want, got := totalsOf(published), totalsStored(docs)
	if got.sessions != want.sessions || !near(got.energy, want.energy) || !near(got.cost, want.cost) {
		tb.Errorf("totals: stored %d sessions, %.2f kWh, %.0f cents; published %d, %.2f, %.0f",
			got.sessions, got.energy, got.cost, want.sessions, want.energy, want.cost)
	}
	for c, n := range want.perCharger {
		if got.perCharger[c] != n || !near(got.energyCharger[c], want.energyCharger[c]) {
			tb.Errorf("charger %s: stored %d sessions %.2f kWh, published %d %.2f", c, got.perCharger[c], got.energyCharger[c], n, want.energyCharger[c])
		}
	}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-6*math.Max(1, math.Abs(b)) }

// waitIdle waits until r holds nothing pending and has accounted for every message it
// received: stored, duplicate, rejected, or let go unacknowledged (to be redelivered).
func waitIdle(tb testing.TB, r *running, what string) counts {
	tb.Helper()
	var c counts
	waitUntil(tb, 120*time.Second, what, func() (bool, string) {
		c = r.counts()
		return c.pending == 0 && c.received > 0 && c.received == c.stored+c.dups+rejectedTotal(r)+c.released, c.String()
	})
	return c
}

func rejectedTotal(r *running) float64 {
	var n float64
	for _, reason := range session.Reasons {
		n += testutil.ToFloat64(r.l.m.rejected.WithLabelValues(string(reason)))
	}
	return n
}

var pubSeq struct {
	sync.Mutex
	n int
}

func pubID(prefix string) string {
	pubSeq.Lock()
	defer pubSeq.Unlock()
	pubSeq.n++
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), pubSeq.n)
}
