//go:build integration

package audit_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/chargesim/chargesim/components/audit"
	"github.com/chargesim/chargesim/components/listener"
	"github.com/chargesim/chargesim/components/publisher"
	"github.com/chargesim/chargesim/components/store"
	"github.com/chargesim/chargesim/test/testenv"
)

const testDB = "audit"

type env struct {
	mq  *testenv.Mosquitto
	fdb *testenv.FerretDB
	st  *store.Store
}

func logger(name string) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("p", name)
	}
	return slog.New(slog.DiscardHandler)
}

func start(t *testing.T) *env {
	t.Helper()
	e := &env{mq: testenv.StartMosquitto(t), fdb: testenv.StartFerretDB(t)}
	st, err := store.Connect(context.Background(), e.storeConfig(), "audit-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(context.Background()) })
	e.st = st
	return e
}

func (e *env) storeConfig() store.Config {
	return store.Config{URI: e.fdb.URI, Database: testDB}
}

// proc is a publisher or listener running in the test process.
type proc struct {
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

func run(t *testing.T, c interface{ Run(context.Context) error }, reg *prometheus.Registry) *proc {
	ctx, cancel := context.WithCancel(context.Background())
	p := &proc{reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { p.done <- c.Run(ctx) }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *proc) stop(t *testing.T) {
	t.Helper()
	stopRun(t, &p.cancel, p.done, "Run")
}

// stopRun cancels a component's Run (once: *cancel is cleared) and waits for its result.
func stopRun(tb testing.TB, cancel *context.CancelFunc, done <-chan error, what string) {
	tb.Helper()
	if *cancel == nil {
		return
	}
	(*cancel)()
	*cancel = nil
	select {
	case err := <-done:
		if err != nil {
			tb.Errorf("%s: %v", what, err)
		}
	case <-time.After(60 * time.Second):
		tb.Errorf("%s did not stop within 60s", what)
	}
}

func (p *proc) metric(t *testing.T, name string) float64 {
	t.Helper()
	v, _ := testenv.MetricSum(t, p.reg, name) // 0 before the first observation
	return v
}

func (e *env) listener(t *testing.T) *proc {
	t.Helper()
	c := listener.DefaultConfig()
	c.MQTT.URL, c.MQTT.ClientID = e.mq.URL, "listener-"+t.Name()
	c.Store = e.storeConfig()
	c.BatchSize, c.FlushInterval = 200, 20*time.Millisecond
	c.ShutdownTimeout = 20 * time.Second
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	l, err := listener.New(c, logger("listener"), reg)
	if err != nil {
		t.Fatal(err)
	}
	p := run(t, l, reg)
	waitFor(t, 60*time.Second, "listener ready", func() bool { return l.Ready(context.Background()) == nil })
	return p
}

// publisherConfig is a fleet of 120 chargers, each every 100 ms of wall-clock time.
func (e *env) publisherConfig(t *testing.T, shard, shards int) publisher.Config {
	c := publisher.DefaultConfig()
	c.MQTT.URL = e.mq.URL
	c.MQTT.ClientID = fmt.Sprintf("pub-%s-%dof%d-%d", t.Name(), shard, shards, time.Now().UnixNano())
	c.Chargers, c.Connectors, c.ShardIndex, c.ShardCount = 120, 3, shard, shards
	c.TimeScale = 600
	c.RecordRuns, c.Store = true, e.storeConfig()
	c.HeartbeatInterval = 200 * time.Millisecond
	c.ResumeWindow = time.Minute
	c.ShutdownTimeout = 20 * time.Second
	return c
}

func (e *env) publisher(t *testing.T, shard, shards int) *proc {
	t.Helper()
	reg := prometheus.NewRegistry()
	p, err := publisher.New(e.publisherConfig(t, shard, shards), logger(fmt.Sprintf("pub%d/%d", shard, shards)), reg)
	if err != nil {
		t.Fatal(err)
	}
	return run(t, p, reg)
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runsWindow is the span of every recorded run, widened to whole milliseconds.
func (e *env) runsWindow(t *testing.T) audit.Window {
	t.Helper()
	runs, err := e.st.RunsOverlapping(context.Background(), 0, 1<<62)
	if err != nil || len(runs) == 0 {
		t.Fatalf("runs: %v, %d", err, len(runs))
	}
	from, to := runs[0].FromNs, runs[0].ToNs
	for _, r := range runs {
		if !r.Ended {
			t.Fatalf("run %s not ended", r.ID)
		}
		from, to = min(from, r.FromNs), max(to, r.ToNs)
	}
	return audit.Window{From: time.Unix(0, from).Add(-time.Second), To: time.Unix(0, to).Add(time.Second)}
}

// settled audits w until the listener has stored everything (or 60 s passed).
func (e *env) settled(t *testing.T, w audit.Window) audit.Report {
	t.Helper()
	var rep audit.Report
	waitFor(t, 60*time.Second, "the audit to settle", func() bool {
		var err error
		t0 := time.Now()
		rep, err = audit.Run(context.Background(), e.st, w)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("audit in %s: %d missing", time.Since(t0), rep.Missing)
		return rep.Complete
	})
	return rep
}

func checkClean(t *testing.T, rep audit.Report) {
	t.Helper()
	if !rep.Complete || rep.Missing != 0 || rep.Unexpected != 0 || rep.Duplicates != 0 || rep.Stored != rep.Expected || rep.Expected == 0 {
		t.Fatalf("audit: %+v", rep)
	}
}

// A publish window through real mosquitto and FerretDB: the audit expects exactly what the
// publisher scheduled and finds it all. Then the store is damaged on purpose, and the audit
// names exactly the damage: deleted sessions as missing, foreign ones as unexpected, a session
// stored again under another key as a duplicate.
func TestAuditFindsEveryLossAndEveryIntruder(t *testing.T) {
	e := start(t)
	lis := e.listener(t)
	pub := e.publisher(t, 0, 1)
	waitFor(t, 30*time.Second, "3000 sessions published", func() bool {
		return pub.metric(t, publisher.MetricPublished) >= 3000
	})
	pub.stop(t)
	scheduled := pub.metric(t, publisher.MetricScheduled)
	w := e.runsWindow(t)
	rep := e.settled(t, w)
	checkClean(t, rep)
	if float64(rep.Expected) != scheduled {
		t.Fatalf("audit expects %d sessions, the publisher scheduled %g", rep.Expected, scheduled)
	}
	if rep.Runs != 1 || rep.OutsideRuns != 0 {
		t.Fatalf("audit: %+v", rep)
	}
	lis.stop(t)
	t.Logf("clean: %+v", rep)

	// Delete 7 stored sessions.
	colls, docs := storedDocs(t, e.st)
	var deleted []string
	for i := 0; i < len(docs) && len(deleted) < 7; i += len(docs) / 7 {
		deleted = append(deleted, docs[i].ID)
	}
	for _, coll := range colls {
		if _, err := coll.DeleteMany(context.Background(), bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: deleted}}}}); err != nil {
			t.Fatal(err)
		}
	}
	// Insert foreign sessions: an ID the grid never issues, a charger outside the fleet, a
	// non-numeric charger; and one real session again under another session ID.
	mid := docs[len(docs)/2]
	foreign := func(charger string, id int64) store.SessionDoc {
		s := mid.Session
		s.ChargerID, s.SessionID = charger, id
		s.EndedAt = mid.EndedAt.Add(123 * time.Microsecond * 1000)
		return store.NewSessionDoc(s, "x", time.Now())
	}
	twin := mid.Session
	twin.SessionID = 42
	intruders := []store.SessionDoc{foreign(mid.ChargerID, mid.SessionID+1), foreign("999", 7), foreign("CH-1", 8)}
	dup := store.NewSessionDoc(twin, "x", time.Now())
	if _, err := e.st.InsertSessions(context.Background(), append(slices.Clone(intruders), dup)); err != nil {
		t.Fatal(err)
	}

	rep, err := audit.Run(context.Background(), e.st, w)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("damaged: %+v", rep)
	slices.Sort(deleted)
	slices.Sort(rep.MissingKeys)
	if rep.Missing != 7 || !slices.Equal(rep.MissingKeys, deleted) || rep.Stored != rep.Expected-7 {
		t.Fatalf("missing %d %v, deleted %v", rep.Missing, rep.MissingKeys, deleted)
	}
	var want []string
	for _, d := range intruders {
		want = append(want, d.ID)
	}
	slices.Sort(want)
	slices.Sort(rep.UnexpectedKeys)
	if rep.Unexpected != 3 || !slices.Equal(rep.UnexpectedKeys, want) {
		t.Fatalf("unexpected %d %v, inserted %v", rep.Unexpected, rep.UnexpectedKeys, want)
	}
	if rep.Duplicates != 1 || !slices.Equal(rep.DuplicateKeys, []string{dup.ID}) || rep.Complete {
		t.Fatalf("duplicates %d %v, want [%s]", rep.Duplicates, rep.DuplicateKeys, dup.ID)
	}
	if rep.Expected != int64(scheduled) {
		t.Fatalf("expected changed to %d", rep.Expected)
	}

	// One charger only: the same verdict restricted to it.
	crep, err := audit.Run(context.Background(), e.st, audit.Window{From: w.From, To: w.To, Charger: mid.ChargerID})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range crep.MissingKeys {
		if !strings.HasPrefix(k, mid.ChargerID+"/") {
			t.Fatalf("charger %s audit lists %s", mid.ChargerID, k)
		}
	}
	if crep.Duplicates != 1 || crep.Unexpected != 1 || crep.Expected >= rep.Expected || crep.Expected < 10 {
		t.Fatalf("charger audit: %+v", crep)
	}

	// The metrics carry the last report.
	reg := prometheus.NewPedanticRegistry()
	m, err := audit.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	m.Observe(rep, nil, time.Second)
	if got := testutil.ToFloat64(m.Missing); got != 7 {
		t.Fatalf("%s = %g", audit.MetricMissing, got)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("metrics lint: %v %v", err, problems)
	}
}

// A publisher restarted mid-stream (stopped, a gap, started again) resumes where its run
// stopped: the audit over the whole span finds nothing missing, and the repeated slots are
// the same keys (the listener counts them as duplicates, the audit finds no second copy).
func TestRestartAndReshardingLeaveNothingOut(t *testing.T) {
	e := start(t)
	e.listener(t)
	waitPublished := func(p *proc, n float64) {
		waitFor(t, 30*time.Second, "sessions published", func() bool { return p.metric(t, publisher.MetricPublished) >= n })
	}
	// One shard, restarted after a gap.
	p := e.publisher(t, 0, 1)
	waitPublished(p, 1000)
	p.stop(t)
	time.Sleep(700 * time.Millisecond) // seven slots per charger nobody simulated
	p = e.publisher(t, 0, 1)
	waitPublished(p, 1000)
	// Reshard 1 → 3 → 2 with overlaps and gaps, as a rollout does.
	p2 := []*proc{e.publisher(t, 0, 3), e.publisher(t, 1, 3)}
	p.stop(t)
	time.Sleep(300 * time.Millisecond) // charger 3, 6, … are nobody's now
	p2 = append(p2, e.publisher(t, 2, 3))
	waitPublished(p2[2], 1000)
	p3 := []*proc{e.publisher(t, 1, 2)}
	p2[2].stop(t)
	p2[1].stop(t)
	time.Sleep(300 * time.Millisecond)
	p3 = append(p3, e.publisher(t, 0, 2))
	p2[0].stop(t)
	waitPublished(p3[1], 1000)
	for _, q := range p3 {
		q.stop(t)
	}
	rep := e.settled(t, e.runsWindow(t))
	checkClean(t, rep)
	t.Logf("%s after a restart and resharding 1→3→2: %+v", time.Now().Format(time.TimeOnly), rep)
	if rep.Runs != 7 || rep.OutsideRuns != 0 {
		runs, _ := e.st.RunsOverlapping(context.Background(), 0, 1<<62)
		for _, r := range runs {
			t.Logf("run %s %d/%d [%d, %d) ended %v", r.ID, r.Shard, r.Shards, r.FromNs, r.ToNs, r.Ended)
		}
		t.Fatalf("audit: %+v", rep)
	}
	// Coverage has no hole: the runs' spans per charger join up, so the expected sessions are
	// one per slot from the first start to the last stop.
	runs, err := e.st.RunsOverlapping(context.Background(), 0, 1<<62)
	if err != nil {
		t.Fatal(err)
	}
	from, to := runs[0].FromNs, runs[0].ToNs
	for _, r := range runs {
		from, to = min(from, r.FromNs), max(to, r.ToNs)
	}
	whole := int64(0)
	params := audit.ParamsOf(runs[0])
	for c := uint32(1); c <= 120; c++ {
		whole += int64(params.SlotAt(c, to) - params.SlotAt(c, from))
	}
	// The last 2-shard pair stops a little apart: the tail of the earlier stop is the only
	// allowed shortfall (at most one heartbeat-free stop each).
	if rep.Expected > whole || rep.Expected < whole-2*120*10 {
		t.Fatalf("expected %d sessions, one per slot over the whole span is %d", rep.Expected, whole)
	}
	n := storedCount(t, e.st)
	if n != rep.Stored {
		t.Fatalf("%d sessions stored, the audit accounts for %d", n, rep.Stored)
	}
}

// brokerFault streams through mosquitto with the listeners' shared subscription, breaks the
// broker mid-stream (stop: SIGTERM, or kill -9) and brings it back, then stops the publisher
// and returns the audit once the store has stopped changing.
func brokerFault(t *testing.T, kill bool, replayAfter time.Duration) (audit.Report, float64) {
	e := start(t)
	e.listener(t)
	cfg := e.publisherConfig(t, 0, 1)
	cfg.ReplayAfter, cfg.ReplayBefore = replayAfter, 3*time.Second
	cfg.Chargers = 40 // 400 sessions/s: the replay re-publishes ~15 s of them
	reg := prometheus.NewRegistry()
	p, err := publisher.New(cfg, logger("pub"), reg)
	if err != nil {
		t.Fatal(err)
	}
	pub := run(t, p, reg)
	waitFor(t, 30*time.Second, "sessions published", func() bool { return pub.metric(t, publisher.MetricPublished) >= 600 })
	if kill {
		e.mq.Kill()
	} else {
		e.mq.Stop()
	}
	time.Sleep(3 * time.Second) // long enough for the clients' reconnect backoff to grow
	e.mq.Start()
	before := pub.metric(t, publisher.MetricPublished)
	waitFor(t, 60*time.Second, "publishing after the restart", func() bool { return pub.metric(t, publisher.MetricPublished) >= before+1200 })
	if replayAfter > 0 {
		waitFor(t, 2*replayAfter+30*time.Second, "the replay", func() bool { return pub.metric(t, publisher.MetricReplayed) > 0 })
		time.Sleep(time.Second) // a few sessions after the replay
	}
	pub.stop(t)
	w := e.runsWindow(t)
	var rep audit.Report
	stored := int64(-1)
	waitFor(t, 2*time.Minute, "the store to settle", func() bool {
		rep, err = audit.Run(context.Background(), e.st, w)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Complete {
			return true
		}
		settledNow := rep.Stored == stored
		stored = rep.Stored
		time.Sleep(2 * time.Second)
		return settledNow
	})
	return rep, pub.metric(t, publisher.MetricReplayed)
}

// mosquitto restarted (SIGTERM or kill -9) under a stream to a `$share` subscription: it does
// not restore the shared subscription of the offline listener session, so what is published
// until the listener subscribes again is acknowledged and dropped (and a kill loses what it
// held). The publisher's replay after the reconnect re-publishes that stretch under the same
// keys: the audit ends at 0 missing, 0 unexpected, 0 duplicates.
func TestBrokerRestartLosesNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		kill bool
	}{{"sigterm", false}, {"kill", true}} {
		t.Run(tc.name, func(t *testing.T) {
			rep, replayed := brokerFault(t, tc.kill, 10*time.Second)
			t.Logf("broker %s with replay: replayed %g, %+v", tc.name, replayed, rep)
			checkClean(t, rep)
			if rep.OutsideRuns != 0 || replayed == 0 {
				t.Fatalf("replayed %g, audit %+v", replayed, rep)
			}
		})
	}
}

// storedCount counts the sessions in every collection that holds them.
func storedCount(t *testing.T, st *store.Store) int64 {
	t.Helper()
	colls, err := st.SessionCollections(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, coll := range colls {
		c, err := coll.CountDocuments(context.Background(), bson.D{})
		if err != nil {
			t.Fatal(err)
		}
		n += c
	}
	return n
}
