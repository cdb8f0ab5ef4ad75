//go:build integration

package listener

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
	"github.com/chargesim/chargesim/test/testenv"
)

// 1. A client of the original contract: every payload variant stored once, with its values.
func TestContractPayloadsStored(t *testing.T) {
	t.Parallel()
	d := startDeps(t)
	r := startListener(t, d.config(pubID("contract")), "contract", nil)
	p := newPub(t, d.mq.URL, pubID("pub"))

	ended := time.Date(2025, 3, 4, 5, 6, 7, 890_000_000, time.UTC)
	ext := session.Session{SessionID: 6, ChargerID: "CH-7", ConnectorID: 2, EnergyKWh: 42.5, DurationSeconds: 3600,
		CostCents: 2507.5, EndedAt: ended, StartedAt: ended.Add(-time.Hour), PowerClass: "DC", PeakPowerKW: 150,
		BatteryKWh: 77, StartSoCPercent: 20, EndSoCPercent: 75, TariffCentsPerKWh: 59}
	msgs := []message{
		{"charger/1/connector/1/session/1", []byte(`{"session_id": 1, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`)},
		{"charger/1/connector/1/session/2", []byte(`{"session_id": 2, "energy_delivered_in_kwh": 12.5, "duration_in_seconds": 1800.5, "session_cost_in_cents": 437.5}`)},
		{"charger/1/connector/1/session/3", []byte(`{"session_id": 3, "energy_delivered_in_kWh": 7, "duration_in_seconds": 600, "session_cost_in_cents": 245, "timestamp": 1700000000}`)},
		{"charger/1/connector/1/session/4", []byte(`{"session_id": 4.0, "energy_delivered_in_kWh": 8, "duration_in_seconds": 60, "session_cost_in_cents": 280, "timestamp": "2024-05-01 10:20:30"}`)},
		{"charger/2/connector/3/session/5", []byte(`{"session_id":5,"energy_delivered_in_kWh":1,"duration_in_seconds":2,"session_cost_in_cents":3,"timestamp":1700000000.0}`)},
		{"charger/CH-7/connector/2/session/6", ext.AppendJSON(nil)},
	}
	before := time.Now().Add(-time.Millisecond)
	p.publish(t, msgs)
	coll := sessionsColl(t, d)
	waitUntil(t, 60*time.Second, "6 sessions stored", func() (bool, string) {
		n := countDocs(t, coll, bson.D{})
		return n == 6, fmt.Sprintf("%d stored; listener %v", n, r.counts())
	})
	after := time.Now()
	docs := allSessions(t, coll)

	type want struct {
		energy, duration, cost float64
		ended                  time.Time // zero: the receive time
		ts                     int64
	}
	wants := map[string]want{
		"1/1/1":    {30, 45, 70, time.Time{}, 0},
		"1/1/2":    {12.5, 1800.5, 437.5, time.Time{}, 0},
		"1/1/3":    {7, 600, 245, time.Unix(1700000000, 0).UTC(), 1700000000},
		"1/1/4":    {8, 60, 280, time.Date(2024, 5, 1, 10, 20, 30, 0, time.UTC), time.Date(2024, 5, 1, 10, 20, 30, 0, time.UTC).Unix()},
		"2/3/5":    {1, 2, 3, time.Unix(1700000000, 0).UTC(), 1700000000},
		"CH-7/2/6": {42.5, 3600, 2507.5, ended, 0},
	}
	for key, w := range wants {
		doc, ok := docs[key]
		if !ok {
			t.Errorf("session %s not stored (have %v)", key, keys(docs))
			continue
		}
		if doc.EnergyKWh != w.energy || doc.DurationSeconds != w.duration || doc.CostCents != w.cost || doc.Timestamp != w.ts {
			t.Errorf("%s: stored energy %v duration %v cost %v timestamp %v; want %+v", key, doc.EnergyKWh, doc.DurationSeconds, doc.CostCents, doc.Timestamp, w)
		}
		if doc.ReceivedAt.Before(before.Truncate(time.Millisecond)) || doc.ReceivedAt.After(after) {
			t.Errorf("%s: received_at %v outside the test (%v..%v)", key, doc.ReceivedAt, before, after)
		}
		wantEnded := w.ended
		if wantEnded.IsZero() {
			wantEnded = doc.ReceivedAt
		}
		if !doc.EndedAt.Equal(wantEnded) {
			t.Errorf("%s: ended_at %v, want %v", key, doc.EndedAt, wantEnded)
		}
		wantStarted := wantEnded.Add(-time.Duration(w.duration * float64(time.Second))).Truncate(time.Millisecond)
		if !doc.StartedAt.Equal(wantStarted) {
			t.Errorf("%s: started_at %v, want %v", key, doc.StartedAt, wantStarted)
		}
		if doc.Topic == "" || !strings.HasSuffix(doc.Topic, "/session/"+strings.Split(key, "/")[2]) {
			t.Errorf("%s: topic %q", key, doc.Topic)
		}
	}
	x := docs["CH-7/2/6"]
	if x.PowerClass != "DC" || x.PeakPowerKW != 150 || x.StartSoCPercent != 20 || x.EndSoCPercent != 75 || x.TariffCentsPerKWh != 59 || x.BatteryKWh != 77 {
		t.Errorf("extended fields lost: %+v", x.Session)
	}
	c := waitIdle(t, r, "listener idle")
	if c.received != 6 || c.stored != 6 || c.dups != 0 {
		t.Errorf("metrics: %v; want 6 received and stored, no duplicates", c)
	}
	if v := testutil.ToFloat64(r.l.m.connected); v != 1 {
		t.Errorf("connected gauge = %v", v)
	}
	var lag dto.Metric
	if err := r.l.m.lag.(prometheus.Metric).Write(&lag); err != nil || lag.GetHistogram().GetSampleCount() != 6 {
		t.Errorf("lag histogram: %d observations (%v), want one per stored session", lag.GetHistogram().GetSampleCount(), err)
	}
}

func keys(m map[string]store.SessionDoc) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// 2. Two listeners in one shared group split the stream: each session stored once, none lost,
// both did some of the work.
func TestSharedGroupSplitsLoad(t *testing.T) {
	t.Parallel()
	d := startDeps(t)
	a := startListener(t, d.config(pubID("share-a")), "a", nil)
	b := startListener(t, d.config(pubID("share-b")), "b", nil)
	published := goods(0, 2000)
	newPub(t, d.mq.URL, pubID("pub")).publish(t, messagesOf(published))
	coll := sessionsColl(t, d)
	waitUntil(t, 120*time.Second, "all sessions stored", func() (bool, string) {
		n := countDocs(t, coll, bson.D{})
		return n == int64(len(published)), fmt.Sprintf("%d stored; a: %v; b: %v", n, a.counts(), b.counts())
	})
	ca, cb := waitIdle(t, a, "a idle"), waitIdle(t, b, "b idle")
	checkExactlyOnce(t, d, published)
	if ca.received == 0 || cb.received == 0 {
		t.Errorf("load not shared: a received %v, b %v", ca.received, cb.received)
	}
	if ca.stored+cb.stored != float64(len(published)) || ca.received+cb.received != float64(len(published)) {
		t.Errorf("a: %v; b: %v; want %d received and stored in total", ca, cb, len(published))
	}
}

// 4. The store goes away mid-stream: writes fail and are counted, pending messages pile up to
// --max-pending (the handler blocks instead of dropping), then everything drains once the store
// is back, each session stored once.
func TestStoreOutageBackpressure(t *testing.T) {
	t.Parallel()
	d := startDeps(t)
	cfg := d.config(pubID("outage"))
	cfg.MaxPending = 300
	cfg.BatchSize = 50
	r := startListener(t, cfg, "outage", nil)
	published := goods(0, 3000)
	p := newPub(t, d.mq.URL, pubID("pub"))
	p.publish(t, messagesOf(published[:500]))
	coll := sessionsColl(t, d)
	waitUntil(t, 60*time.Second, "first 500 stored", func() (bool, string) {
		n := countDocs(t, coll, bson.D{})
		return n == 500, fmt.Sprintf("%d stored; %v", n, r.counts())
	})

	d.fdb.Stop()
	pubDone := make(chan error, 1)
	go func() { pubDone <- p.tryPublish(messagesOf(published[500:])) }()
	waitUntil(t, 60*time.Second, "backpressure: pending at --max-pending with failing writes", func() (bool, string) {
		c := r.counts()
		return c.pending == float64(cfg.MaxPending) && c.writeErrors > 0, c.String()
	})
	if err := r.l.Ready(context.Background()); err == nil {
		t.Error("ready while the store is down")
	}
	stuck := r.counts()
	if stuck.stored != 500 {
		t.Errorf("stored %v with the store down, want 500", stuck.stored)
	}

	d.fdb.Start()
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 120*time.Second, "all sessions stored after the outage", func() (bool, string) {
		n := countDocs(t, coll, bson.D{})
		return n == int64(len(published)), fmt.Sprintf("%d stored; %v", n, r.counts())
	})
	c := waitIdle(t, r, "drained")
	checkExactlyOnce(t, d, published)
	if c.stored != float64(len(published)) {
		t.Errorf("sessions_stored_total = %v, want %d", c.stored, len(published))
	}
	if c.received != c.stored+c.dups+c.released {
		t.Errorf("received %v ≠ stored %v + duplicates %v + released %v", c.received, c.stored, c.dups, c.released)
	}
	waitUntil(t, 30*time.Second, "ready again", func() (bool, string) {
		err := r.l.Ready(context.Background())
		return err == nil, fmt.Sprint(err)
	})
}

// 5. Malformed input is kept aside with its reason, counted and rate-limited in the logs, while
// a concurrent stream of good input is stored in full.
func TestMalformedInputKeptAside(t *testing.T) {
	t.Parallel()
	d := startDeps(t)
	cfg := d.config(pubID("malformed"))
	cfg.MaxPayloadBytes = 2048
	r := startListener(t, cfg, "malformed", nil)

	oversized := []byte(`{"session_id": 9, "energy_delivered_in_kWh": 1, "duration_in_seconds": 1, "session_cost_in_cents": 1, "pad": "` +
		strings.Repeat("x", 6000) + `"}`)
	bad := []struct {
		reason session.Reason
		msg    message
	}{
		{session.ReasonBadJSON, message{"charger/1/connector/1/session/9", []byte(`{"session_id": 9, "energy_delivered_in_kWh": 30,`)}},
		{session.ReasonBadJSON, message{"charger/1/connector/1/session/9", []byte("\xff\xfe not json")}},
		{session.ReasonWrongType, message{"charger/1/connector/1/session/9", []byte(`{"session_id": 9, "energy_delivered_in_kWh": "30", "duration_in_seconds": 45, "session_cost_in_cents": 70}`)}},
		{session.ReasonMissingField, message{"charger/1/connector/1/session/9", []byte(`{"session_id": 9, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45}`)}},
		{session.ReasonOutOfRange, message{"charger/1/connector/1/session/9", []byte(`{"session_id": 9, "energy_delivered_in_kWh": -5, "duration_in_seconds": 45, "session_cost_in_cents": 70}`)}},
		{session.ReasonOutOfRange, message{"charger/1/connector/1/session/9", []byte(`{"session_id": 9, "energy_delivered_in_kWh": 1e9, "duration_in_seconds": 45, "session_cost_in_cents": 70}`)}},
		{session.ReasonOversized, message{"charger/1/connector/1/session/9", oversized}},
		{session.ReasonBadTopic, message{"charger/x!/connector/1/session/9", []byte(`{"session_id": 9, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`)}},
		{session.ReasonBadTopic, message{"charger/1/connector/abc/session/9", []byte(`{"session_id": 9, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`)}},
		{session.ReasonTopicMismatch, message{"charger/1/connector/1/session/10", []byte(`{"session_id": 9, "energy_delivered_in_kWh": 30, "duration_in_seconds": 45, "session_cost_in_cents": 70}`)}},
	}
	// Each bad message is sent `rounds` times (a redelivering broker, a stuck publisher): every
	// delivery is counted, but the rejected collection keeps each distinct message once.
	const rounds = 200
	var flood []message
	wantReasons := map[session.Reason]int{}
	for i := 0; i < rounds; i++ {
		for _, b := range bad {
			flood = append(flood, b.msg)
			if i == 0 {
				wantReasons[b.reason]++
			}
		}
	}
	published := goods(0, 1500)
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, batch := range [][]message{flood, messagesOf(published)} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := newPub(t, d.mq.URL, pubID("pub"))
			errs <- p.tryPublish(batch)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	sessions := sessionsColl(t, d)
	rejected := d.fdb.Client().Database(testDB).Collection(store.RejectedCollection)
	waitUntil(t, 120*time.Second, "good sessions and rejections stored", func() (bool, string) {
		n, k := countDocs(t, sessions, bson.D{}), countDocs(t, rejected, bson.D{})
		return n == int64(len(published)) && k == int64(len(bad)) && rejectedTotal(r) == float64(len(flood)),
			fmt.Sprintf("%d sessions, %d rejected docs, %v rejections counted; %v", n, k, rejectedTotal(r), r.counts())
	})
	checkExactlyOnce(t, d, published)
	for _, reason := range session.Reasons {
		want := wantReasons[reason]
		if got := countDocs(t, rejected, bson.D{{Key: "reason", Value: string(reason)}}); got != int64(want) {
			t.Errorf("rejected collection: %d with reason %s, want %d", got, reason, want)
		}
		if got := testutil.ToFloat64(r.l.m.rejected.WithLabelValues(string(reason))); got != float64(want*rounds) {
			t.Errorf("%s{reason=%q} = %v, want %d", MetricRejected, reason, got, want*rounds)
		}
	}
	var over store.RejectedDoc
	if err := rejected.FindOne(context.Background(), bson.D{{Key: "reason", Value: "oversized"}}).Decode(&over); err != nil {
		t.Fatal(err)
	}
	if over.Size != len(oversized) || len(over.Payload) != store.MaxRejectedPayload || string(over.Payload) != string(oversized[:store.MaxRejectedPayload]) ||
		over.Topic != "charger/1/connector/1/session/9" || over.ReceivedAt.IsZero() || !strings.Contains(over.Detail, "2048") {
		t.Errorf("oversized kept as size %d, %d payload bytes, topic %q, detail %q", over.Size, len(over.Payload), over.Topic, over.Detail)
	}
	var bt store.RejectedDoc
	if err := rejected.FindOne(context.Background(), bson.D{{Key: "topic", Value: "charger/x!/connector/1/session/9"}}).Decode(&bt); err != nil {
		t.Fatal(err)
	}
	if bt.Reason != "bad_topic" || bt.Detail == "" || !strings.Contains(string(bt.Payload), `"session_id": 9`) {
		t.Errorf("bad topic kept as %+v", bt)
	}
	c := waitIdle(t, r, "idle")
	if c.stored != float64(len(published)) || c.received != float64(len(published)+len(flood)) {
		t.Errorf("metrics %v; want %d stored, %d received", c, len(published), len(published)+len(flood))
	}
}

// 6. The same message delivered many times (a misbehaving publisher, a replay) is stored once
// and the repeats are counted as duplicates; a later different payload for the same session
// does not overwrite the first.
func TestRedeliveryStoredOnce(t *testing.T) {
	t.Parallel()
	d := startDeps(t)
	r := startListener(t, d.config(pubID("redeliver")), "redeliver", nil)
	p := newPub(t, d.mq.URL, pubID("pub"))
	g := goods(7, 1)[0]
	const n = 50
	msgs := make([]message, n)
	for i := range msgs {
		msgs[i] = g.message()
	}
	p.publish(t, msgs)
	c := waitUntilCounts(t, r, func(c counts) bool { return c.received == n && c.stored+c.dups == n && c.pending == 0 })
	if c.stored != 1 || c.dups != n-1 {
		t.Errorf("%v; want 1 stored and %d duplicates", c, n-1)
	}
	changed := g
	changed.energy = 99
	p.publish(t, []message{changed.message()})
	c = waitUntilCounts(t, r, func(c counts) bool { return c.received == n+1 && c.stored+c.dups == n+1 && c.pending == 0 })
	if c.stored != 1 || c.dups != n {
		t.Errorf("%v; want 1 stored and %d duplicates", c, n)
	}
	checkExactlyOnce(t, d, []good{g})
}

func waitUntilCounts(tb testing.TB, r *running, cond func(counts) bool) counts {
	tb.Helper()
	var c counts
	waitUntil(tb, 60*time.Second, "listener counts", func() (bool, string) {
		c = r.counts()
		return cond(c), c.String()
	})
	return c
}

// The exposition of every listener metric passes promtool's lint, with every rejection reason
// present from the start.
func TestMetricsLint(t *testing.T) {
	t.Parallel()
	d := startDeps(t)
	r := startListener(t, d.config(pubID("lint")), "lint", nil)
	newPub(t, d.mq.URL, pubID("pub")).publish(t, messagesOf(goods(0, 10)))
	waitIdle(t, r, "idle")
	var buf bytes.Buffer
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
		if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{MetricReceived, MetricStored, MetricDuplicates, MetricRejected, MetricBatchSize, MetricWriteDuration,
		MetricWriteErrors, MetricLag, MetricPending, MetricInflightBatches, MetricConnected, MetricDeltaFailures} {
		if !names[n] {
			t.Errorf("metric %s not exposed", n)
		}
	}
	for _, reason := range session.Reasons {
		if !strings.Contains(buf.String(), MetricRejected+`{reason="`+string(reason)+`"} 0`) {
			t.Errorf("%s{reason=%q} not pre-initialised", MetricRejected, reason)
		}
	}
	cmd := exec.Command(testenv.Bin(t, "promtool"), "check", "metrics")
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// The broker restarts while the store is down and the listener's handler is blocked on a full
// pending queue: the handler must let go so paho can reconnect (it cannot while its router is
// blocked), and the messages it held from the old connection, whose acknowledgements paho drops,
// come back from the persistent session and are stored once.
func TestBrokerRestartWhileBlocked(t *testing.T) {
	t.Parallel()
	d := startDeps(t)
	cfg := d.config(pubID("broker-restart"))
	cfg.MaxPending = 200
	cfg.BatchSize = 50
	// A short keepalive: the dead connection is found the same way, sooner (production: 30s).
	r := startListener(t, cfg, "broker-restart", func(l *Listener) {
		l.mqttOpts = func(o *mqtt.ClientOptions) { o.SetKeepAlive(2 * time.Second).SetPingTimeout(time.Second) }
	})
	published := goods(0, 1500)
	p := newPub(t, d.mq.URL, pubID("pub"))
	p.publish(t, messagesOf(published[:300]))
	coll := sessionsColl(t, d)
	waitUntil(t, 60*time.Second, "first sessions stored", func() (bool, string) {
		k := countDocs(t, coll, bson.D{})
		return k == 300, fmt.Sprintf("%d stored; %v", k, r.counts())
	})
	d.fdb.Stop()
	p.publish(t, messagesOf(published[300:]))
	waitUntil(t, 60*time.Second, "handler blocked on a full pending queue", func() (bool, string) {
		c := r.counts()
		return c.pending == float64(cfg.MaxPending), c.String()
	})
	d.mq.Stop() // graceful: mosquitto saves the session with its unacknowledged messages
	isOpen := func() bool {
		c, _ := r.l.client.Load().(interface{ IsConnectionOpen() bool })
		return c != nil && c.IsConnectionOpen()
	}
	// paho is not reading while the handler blocks: it finds out through its keepalive
	// (no traffic for the keepalive period, then no readable PINGRESP within the ping timeout).
	waitUntil(t, 120*time.Second, "connection loss noticed", func() (bool, string) {
		return !isOpen(), "still connected"
	})
	d.mq.Start()
	// The store is still down: only a handler that gave up lets paho reconnect.
	waitUntil(t, 60*time.Second, "reconnected with the store still down", func() (bool, string) {
		return isOpen(), r.counts().String()
	})
	d.fdb.Start()
	waitUntil(t, 120*time.Second, "all sessions stored", func() (bool, string) {
		k := countDocs(t, coll, bson.D{})
		return k == int64(len(published)), fmt.Sprintf("%d stored; %v", k, r.counts())
	})
	c := waitIdle(t, r, "idle")
	checkExactlyOnce(t, d, published)
	if c.stored != float64(len(published)) {
		t.Errorf("sessions_stored_total = %v, want %d", c.stored, len(published))
	}
}

// The subcommand end to end: flags, /readyz, /metrics, graceful stop.
func TestCommand(t *testing.T) {
	t.Parallel()
	d := startDeps(t)
	port := testenv.FreePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Command(ctx, []string{"--mqtt-url=" + d.mq.URL, "--mongo-uri=" + d.fdb.URI, "--mqtt-client-id=" + pubID("cmd"),
			"--http-addr=127.0.0.1:" + strconv.Itoa(port), "--log-level=warn", "--flush-interval=10ms"})
	}()
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	waitUntil(t, 60*time.Second, "/readyz 200", func() (bool, string) {
		code, body := httpGet(base + "/readyz")
		return code == 200, fmt.Sprint(code, " ", body)
	})
	newPub(t, d.mq.URL, pubID("pub")).publish(t, messagesOf(goods(0, 20)))
	waitUntil(t, 60*time.Second, "/metrics shows 20 stored", func() (bool, string) {
		_, body := httpGet(base + "/metrics")
		return strings.Contains(body, MetricStored+" 20"), body
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Command: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Command did not return after cancel")
	}
	checkExactlyOnce(t, d, goods(0, 20))
}

func httpGet(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A graceful stop mid-stream stores and acknowledges what it holds before disconnecting: the
// next listener of the session gets only what was never stored (no duplicates at all).
func TestGracefulStopFlushesAndAcks(t *testing.T) {
	t.Parallel()
	d := startDeps(t)
	cfg := d.config(pubID("graceful"))
	a := startListener(t, cfg, "a", nil)
	published := goods(0, 3000)
	first, second := published[:2000], published[2000:]
	p := newPub(t, d.mq.URL, pubID("pub"))
	pubDone := make(chan error, 1)
	go func() { pubDone <- p.tryPublish(messagesOf(first)) }()
	coll := sessionsColl(t, d)
	waitUntil(t, 60*time.Second, "a third stored", func() (bool, string) {
		k := countDocs(t, coll, bson.D{})
		return k >= int64(len(published)/3), fmt.Sprintf("%d stored", k)
	})
	a.stop(t) // usually while messages are still on their way: they are flushed and acked
	ca := a.counts()
	if ca.pending != 0 {
		t.Errorf("stopped with %v pending", ca.pending)
	}
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	// Published while no listener runs: the broker keeps them for the persistent session, so the
	// next listener has work whatever a managed to store before it stopped.
	p.publish(t, messagesOf(second))
	b := startListener(t, cfg, "b", nil)
	waitUntil(t, 120*time.Second, "all stored", func() (bool, string) {
		k := countDocs(t, coll, bson.D{})
		return k == int64(len(published)), fmt.Sprintf("%d stored; b %v", k, b.counts())
	})
	cb := waitIdle(t, b, "b idle")
	checkExactlyOnce(t, d, published)
	if cb.dups != 0 || ca.stored+cb.stored != float64(len(published)) {
		t.Errorf("a: %v; b: %v; want no duplicates (a acknowledged all it stored) and %d stored in total", ca, cb, len(published))
	}
}

// A graceful stop while the store is down gives up at --shutdown-timeout and acknowledges
// nothing it could not store: all of it comes back to the next listener.
func TestGracefulStopStoreDownAcksNothingUnstored(t *testing.T) {
	t.Parallel()
	d := startDeps(t)
	cfg := d.config(pubID("graceful-down"))
	cfg.ShutdownTimeout = time.Second
	a := startListener(t, cfg, "a", nil)
	published := goods(0, 800)
	p := newPub(t, d.mq.URL, pubID("pub"))
	p.publish(t, messagesOf(published[:200]))
	coll := sessionsColl(t, d)
	waitUntil(t, 60*time.Second, "first stored", func() (bool, string) {
		k := countDocs(t, coll, bson.D{})
		return k == 200, fmt.Sprintf("%d stored", k)
	})
	d.fdb.Stop()
	p.publish(t, messagesOf(published[200:]))
	waitUntil(t, 60*time.Second, "all received", func() (bool, string) {
		c := a.counts()
		return c.received == float64(len(published)) && c.pending == float64(len(published)-200), c.String()
	})
	a.stop(t) // Run must return nil after the shutdown timeout
	d.fdb.Start()
	b := startListener(t, cfg, "b", nil)
	waitUntil(t, 120*time.Second, "all stored", func() (bool, string) {
		k := countDocs(t, coll, bson.D{})
		return k == int64(len(published)), fmt.Sprintf("%d stored; b %v", k, b.counts())
	})
	cb := waitIdle(t, b, "b idle")
	checkExactlyOnce(t, d, published)
	if cb.stored != float64(len(published)-200) {
		t.Errorf("b stored %v, want %d", cb.stored, len(published)-200)
	}
}
