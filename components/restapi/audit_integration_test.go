//go:build integration

package restapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/chargesim/chargesim/components/audit"
	"github.com/chargesim/chargesim/components/publisher/sim"
	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
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
	p := audit.ParamsOf(run)
	p.ACTariff, p.DCTariff = 35, 59
	var docs []store.SessionDoc
	for c := uint32(1); c <= 3; c++ {
		for n := p.SlotAt(c, run.FromNs); p.SlotTime(c, n) < run.ToNs; n++ {
			d := p.Session(c, n)
			var s session.Session
			d.Fill(&s, sim.ChargerID(c), p.SessionID(c, n), time.Unix(0, p.SlotTime(c, n)))
			docs = append(docs, store.NewSessionDoc(s, "t", time.Now()))
		}
	}
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
