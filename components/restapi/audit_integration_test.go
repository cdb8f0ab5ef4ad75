//go:build integration

package restapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chargesim/chargesim/components/audit"
	"github.com/chargesim/chargesim/components/publisher/sim"
	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
	"github.com/chargesim/chargesim/test/testenv"
)

// GET /api/v1/audit over a run record and the sessions it implies, one of them left out.
func TestAuditEndpoint(t *testing.T) {
	e := startAPI(t)
	ctx := context.Background()
	from := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	to := from.Add(10 * time.Second)
	run := store.RunDoc{ID: "r1", Seed: 7, Chargers: 3, Connectors: 2, Shard: 0, Shards: 1,
		EpochNs: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano(), IntervalNs: int64(time.Second), Jitter: 0.2,
		FromNs: from.UnixNano(), ToNs: to.UnixNano(), Ended: true}
	if err := e.st.InsertRun(ctx, run); err != nil {
		t.Fatal(err)
	}
	docs := runSessions(run)
	left := docs[4]
	if _, err := e.st.InsertSessions(ctx, append(docs[:4:4], docs[5:]...)); err != nil {
		t.Fatal(err)
	}
	q := url.Values{"from": {from.Format(time.RFC3339)}, "to": {to.Format(time.RFC3339)}}
	res := e.c.get("/api/v1/audit?" + q.Encode())
	if res.Status != http.StatusOK {
		t.Fatalf("status %d: %s", res.Status, res.Body)
	}
	var rep audit.Report
	if err := json.Unmarshal(res.Body, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Expected != int64(len(docs)) || rep.Stored != rep.Expected-1 || rep.Missing != 1 ||
		len(rep.MissingKeys) != 1 || rep.MissingKeys[0] != left.ID || rep.Complete || rep.Runs != 1 {
		t.Fatalf("audit of %d sessions without %s: %+v", len(docs), left.ID, rep)
	}
	q.Set("charger", left.ChargerID)
	res = e.c.get("/api/v1/audit?" + q.Encode())
	if err := json.Unmarshal(res.Body, &rep); err != nil || res.Status != http.StatusOK || rep.Missing != 1 || rep.Expected >= int64(len(docs)) {
		t.Fatalf("charger audit: %d %s", res.Status, res.Body)
	}
	for _, bad := range []string{"", "from=2026-03-01T12:00:00Z", "from=2026-03-01T12:00:00Z&to=2026-03-01T11:00:00Z",
		"from=2026-03-01T12:00:00Z&to=2026-03-01T13:00:00Z&charger=CH-1", "from=x&to=y", "from=2026-03-01T12:00:00Z&to=2026-03-01T13:00:00Z&limit=1"} {
		if res := e.c.get("/api/v1/audit?" + bad); res.Status != http.StatusBadRequest {
			t.Errorf("?%s: status %d %s", bad, res.Status, res.Body)
		}
	}
}

// An audit reads its whole window (without indexes, the whole store): it has its own time
// limit (--audit-timeout), not the query timeout of the other routes.
func TestAuditOutlivesTheQueryTimeout(t *testing.T) {
	e := startAPIWith(t, time.Nanosecond) // every other route's query has expired before it starts
	ctx := context.Background()
	from := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	run := store.RunDoc{ID: "r1", Seed: 7, Chargers: 3, Connectors: 2, Shard: 0, Shards: 1,
		EpochNs: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano(), IntervalNs: int64(time.Second), Jitter: 0.2,
		FromNs: from.UnixNano(), ToNs: from.Add(10 * time.Second).UnixNano(), Ended: true}
	if err := e.st.InsertRun(ctx, run); err != nil {
		t.Fatal(err)
	}
	docs := runSessions(run)
	if _, err := e.st.InsertSessions(ctx, docs); err != nil {
		t.Fatal(err)
	}
	if res := e.c.get("/api/v1/chargers/" + docs[0].ChargerID); res.Status != http.StatusServiceUnavailable {
		t.Fatalf("charger totals with a 1 ns query timeout: status %d %s, want 503", res.Status, res.Body)
	}
	q := url.Values{"from": {from.Format(time.RFC3339)}, "to": {from.Add(10 * time.Second).Format(time.RFC3339)}}
	res := e.c.get("/api/v1/audit?" + q.Encode())
	var rep audit.Report
	if err := json.Unmarshal(res.Body, &rep); err != nil || res.Status != http.StatusOK || !rep.Complete || rep.Stored != int64(len(docs)) {
		t.Fatalf("audit with a 1 ns query timeout: status %d %s, want 200 and all %d sessions stored", res.Status, res.Body, len(docs))
	}
}

// runSessions are the sessions run must have produced (all of its chargers, every slot).
func runSessions(run store.RunDoc) []store.SessionDoc {
	p := audit.ParamsOf(run)
	p.ACTariff, p.DCTariff = 35, 59
	var docs []store.SessionDoc
	for c := uint32(1); c <= uint32(run.Chargers); c++ {
		for n := p.SlotAt(c, run.FromNs); p.SlotTime(c, n) < run.ToNs; n++ {
			d := p.Session(c, n)
			var s session.Session
			d.Fill(&s, sim.ChargerID(c), p.SessionID(c, n), time.Unix(0, p.SlotTime(c, n)))
			docs = append(docs, store.NewSessionDoc(s, "t", time.Now()))
		}
	}
	return docs
}

// `chargesim api --audit-every` audits the recent window periodically and exports the result
// as chargesim_audit_* gauges (the operator renders it for every simulation).
func TestCommandAuditMetrics(t *testing.T) {
	db := testenv.StartFerretDB(t)
	ctx := context.Background()
	st, err := store.Connect(ctx, store.Config{URI: db.URI, Database: "auditcmd"}, "api-audit-test")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close(ctx) }()
	now := time.Now()
	run := store.RunDoc{ID: "r1", Seed: 7, Chargers: 3, Connectors: 2, Shard: 0, Shards: 1,
		EpochNs: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano(), IntervalNs: int64(time.Second), Jitter: 0.2,
		FromNs: now.Add(-3 * time.Minute).UnixNano(), ToNs: now.Add(-time.Minute).UnixNano(), Ended: true}
	if err := st.InsertRun(ctx, run); err != nil {
		t.Fatal(err)
	}
	docs := runSessions(run)
	if _, err := st.InsertSessions(ctx, append(docs[:2:2], docs[4:]...)); err != nil { // two left out
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- Command(cctx, []string{"--http-addr", addr, "--mongo-uri", db.URI, "--mongo-database", "auditcmd", "--log-level", "warn",
			"--audit-every", "200ms", "--audit-last", "10m", "--audit-settle", "30s"})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Command: %v", err)
		}
	}()
	want := map[string]string{audit.MetricExpected: strconv.Itoa(len(docs)), audit.MetricStored: strconv.Itoa(len(docs) - 2),
		audit.MetricMissing: "2", audit.MetricUnexpected: "0", audit.MetricDuplicates: "0"}
	var body string
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			body = string(b)
			ok := true
			for name, v := range want {
				ok = ok && strings.Contains(body, "\n"+name+" "+v+"\n")
			}
			if ok {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics never showed %v:\n%s", want, grepLines(body, "chargesim_audit_"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
