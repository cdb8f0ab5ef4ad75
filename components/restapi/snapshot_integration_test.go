//go:build integration

package restapi

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
)

func newServerWith(tb testing.TB, st *store.Store, cfg Config) *apiClient {
	tb.Helper()
	reg := prometheus.NewRegistry()
	s, err := New(cfg, st, slog.New(slog.NewTextHandler(io.Discard, nil)), reg, reg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return &apiClient{tb: tb, srv: s, spec: loadSpec(tb)}
}

// The snapshot read model serves a snapshot younger than the cache TTL as is, then the old
// one while a new scan runs, and converges to exact totals over what is stored, redeliveries
// included; every answer says when its data was read.
func TestSnapshotReadModel(t *testing.T) {
	e := startAPI(t)
	c := newServerWith(t, e.st, Config{QueryTimeout: 5 * time.Second, CacheTTL: 500 * time.Millisecond})
	docs := genSessions(60)
	e.seed(t, docs[:40])

	stats := func() (StatsView, time.Time) {
		t.Helper()
		res := c.get("/api/v1/stats")
		var v StatsView
		decodeJSON(t, "/api/v1/stats", res, &v)
		asOf, err := time.Parse(time.RFC3339Nano, res.Header.Get("X-Data-As-Of"))
		if res.Status != http.StatusOK || err != nil {
			t.Fatalf("/api/v1/stats: %d, X-Data-As-Of %q", res.Status, res.Header.Get("X-Data-As-Of"))
		}
		return v, asOf
	}
	first, asOf1 := stats()
	if first.Sessions != 40 {
		t.Fatalf("first snapshot: %d sessions, want 40", first.Sessions)
	}
	// The listener stores 20 more and redelivers 10 it had stored (a crash before the acks).
	res, err := e.st.InsertSessions(context.Background(), docs[30:60])
	if err != nil || res.Inserted != 20 || len(res.Duplicates) != 10 {
		t.Fatalf("insert with redeliveries: %+v %v", res, err)
	}
	if v, asOf := stats(); v.Sessions != 40 || !asOf.Equal(asOf1) {
		t.Errorf("within the TTL: %d sessions as of %v, want the first snapshot (40 as of %v)", v.Sessions, asOf, asOf1)
	}
	var want StatsView
	for _, d := range docs {
		want.Sessions++
		want.EnergyKWh += d.EnergyKWh
		want.CostCents += d.CostCents
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		v, asOf := stats()
		if v.Sessions == 60 {
			if v.EnergyKWh != want.EnergyKWh || v.CostCents != want.CostCents || !asOf.After(asOf1) || v.Chargers != 5 {
				t.Errorf("refreshed: %+v as of %v, want %+v after %v", v, asOf, want, asOf1)
			}
			break
		}
		if v.Sessions != 40 {
			t.Fatalf("%d sessions: neither the old nor the new snapshot", v.Sessions)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no refreshed snapshot 20 s after the TTL")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Both read models give the same answers over the same sessions.
func TestReadModelsAgree(t *testing.T) {
	e := startAPI(t)
	e.seed(t, genSessions(1003))
	snap := newServerWith(t, e.st, Config{QueryTimeout: 10 * time.Second, ReadModel: ReadModelSnapshot})
	queries := newServerWith(t, e.st, Config{QueryTimeout: 10 * time.Second, ReadModel: ReadModelQueries})
	for _, target := range []string{"/api/v1/stats", "/api/v1/chargers", "/api/v1/chargers?limit=2", "/api/v1/chargers/3",
		"/api/v1/chargers/nope", "/readings/", "/api/v1/sessions?limit=100", "/api/v1/sessions?limit=7&charger=2"} {
		a, b := snap.get(target), queries.get(target)
		if a.Status != b.Status || !bytes.Equal(a.Body, b.Body) {
			t.Errorf("%s: snapshot %d %.300s\nqueries %d %.300s", target, a.Status, a.Body, b.Status, b.Body)
		}
		// Totals say up to when they are exact; lists do not.
		totals := a.Status == http.StatusOK && (target == "/api/v1/stats" || strings.HasPrefix(target, "/api/v1/chargers"))
		for name, res := range map[string]apiResponse{"snapshot": a, "queries": b} {
			_, err := time.Parse(time.RFC3339Nano, res.Header.Get("X-Data-Exact-Until"))
			if totals != (err == nil) {
				t.Errorf("%s (%s): X-Data-Exact-Until %q", target, name, res.Header.Get("X-Data-Exact-Until"))
			}
		}
	}
	// Walk the sessions 100 at a time through both: same pages, same cursors.
	next := "/api/v1/sessions?limit=100"
	for pages := 0; next != ""; pages++ {
		a, b := snap.get(next), queries.get(next)
		if a.Status != http.StatusOK || !bytes.Equal(a.Body, b.Body) {
			t.Fatalf("%s: snapshot %d, queries %d, bodies differ", next, a.Status, b.Status)
		}
		var p SessionPage
		decodeJSON(t, next, a, &p)
		next = ""
		if p.NextCursor != nil {
			next = "/api/v1/sessions?limit=100&cursor=" + *p.NextCursor
		}
		if pages > 11 {
			t.Fatalf("more than 11 pages of 100 for 1003 sessions")
		}
	}
}

// --retention deletes the sessions that ended longer ago than the retention, and nothing
// else; totals then cover what remains.
func TestRetention(t *testing.T) {
	e := startAPI(t)
	now := time.Now().UTC()
	docs := genSessions(40)
	for i := range docs {
		if i%2 == 0 {
			docs[i].EndedAt = now.Add(-2 * time.Hour).Truncate(time.Millisecond) // older than the retention
		} else {
			docs[i].EndedAt = now.Add(-time.Duration(i) * time.Second).Truncate(time.Millisecond)
		}
	}
	e.seed(t, docs)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		RunRetention(ctx, Config{Retention: time.Hour, ScanTimeout: time.Minute}, e.st, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	deadline := time.Now().Add(30 * time.Second)
	var v StatsView
	for {
		decodeJSON(t, "/api/v1/stats", e.c.get("/api/v1/stats"), &v)
		if v.Sessions == 20 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	<-done
	var want StatsView
	for i, d := range docs {
		if i%2 == 1 {
			want.Sessions++
			want.EnergyKWh += d.EnergyKWh
		}
	}
	if v.Sessions != want.Sessions || v.EnergyKWh != want.EnergyKWh {
		t.Errorf("after retention: %d sessions %v kWh, want %d %v", v.Sessions, v.EnergyKWh, want.Sessions, want.EnergyKWh)
	}
	if got := retentionInterval(time.Hour); got != 6*time.Minute {
		t.Errorf("retention interval of 1h: %v", got)
	}
}

// liveDoc is a session of the simulator's kind (its key names its end, so it is stored in its
// time partition) ending at end.
func liveDoc(seq int, end time.Time) store.SessionDoc {
	end = end.UTC().Truncate(time.Millisecond)
	s := session.Session{SessionID: end.UnixMilli()*1000 + int64(seq%1000), ChargerID: strconv.Itoa(seq%5 + 1), ConnectorID: 1,
		EnergyKWh: float64(seq%9) + 0.5, DurationSeconds: 600, CostCents: float64(seq%7) * 25, EndedAt: end}
	return store.NewSessionDoc(s, "charger/"+s.ChargerID, end)
}

// Totals move within about a second of a session being stored, while its partition is still
// filling and while the read model rescans a big filling partition for its newest sessions
// (the deltas of the non-final partitions are read beside the scans); they never exceed what
// is stored, and say up to when they are exact.
func TestTotalsFreshWhilePartitionsFill(t *testing.T) {
	e := startAPI(t)
	ctx := context.Background()
	c := newServerWith(t, e.st, Config{QueryTimeout: 5 * time.Second, CacheTTL: time.Second})
	seq := 0
	var stored int64
	insert := func(n int) time.Time {
		t.Helper()
		var b []store.SessionDoc
		for range n {
			seq++
			b = append(b, liveDoc(seq, time.Now()))
		}
		r, err := e.st.InsertSessions(ctx, b)
		if err != nil || r.Inserted != n || r.DeltaFailures != 0 {
			t.Fatalf("insert: %+v %v", r, err)
		}
		stored += int64(n)
		return b[0].EndedAt
	}
	// A big filling partition: each rescan of it (for the newest sessions) takes a while.
	for range 24 {
		insert(500)
	}
	stats := func() (StatsView, http.Header) {
		t.Helper()
		res := c.get("/api/v1/stats")
		var v StatsView
		if res.Status == http.StatusOK {
			decodeJSON(t, "/api/v1/stats", res, &v)
		}
		return v, res.Header
	}
	deadline := time.Now().Add(60 * time.Second)
	for v, _ := stats(); v.Sessions != stored; v, _ = stats() {
		if time.Now().After(deadline) {
			t.Fatalf("first snapshot: %d sessions, stored %d", v.Sessions, stored)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Live traffic for 12 s (more than a partition width: the partition holding the
	// 12,000 sessions is rescanned meanwhile): every batch must show within 2.5 s.
	var worst time.Duration
	end := time.Now().Add(12 * time.Second)
	for batches := 0; time.Now().Before(end); batches++ {
		first := insert(10)
		at := time.Now()
		for {
			v, h := stats()
			if v.Sessions > stored {
				t.Fatalf("batch %d: %d sessions, more than the %d stored", batches, v.Sessions, stored)
			}
			exact, err := time.Parse(time.RFC3339Nano, h.Get("X-Data-Exact-Until"))
			if err != nil || !exact.Before(first) {
				t.Fatalf("batch %d: X-Data-Exact-Until %q, yet sessions ending at %v are in a filling partition", batches, h.Get("X-Data-Exact-Until"), first)
			}
			if v.Sessions == stored {
				asOf, err := time.Parse(time.RFC3339Nano, h.Get("X-Data-As-Of"))
				if err != nil || asOf.Before(at.Add(-time.Second)) {
					t.Fatalf("batch %d: X-Data-As-Of %q, stored at %v", batches, h.Get("X-Data-As-Of"), at)
				}
				break
			}
			if d := time.Since(at); d > 2500*time.Millisecond {
				t.Fatalf("batch %d: not in the totals %v after it was stored (%d of %d sessions; as of %s)", batches, d, v.Sessions, stored, h.Get("X-Data-As-Of"))
			}
			time.Sleep(50 * time.Millisecond)
		}
		worst = max(worst, time.Since(at))
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("every batch in the totals within %v of being stored", worst)
}
