//go:build integration

package listener

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/chargesim/chargesim/components/publisher"
	"github.com/chargesim/chargesim/components/session"
	"github.com/chargesim/chargesim/components/store"
	"github.com/chargesim/chargesim/test/testenv"
)

// The real publisher's payloads (the contract plus every extension) go through: as many
// sessions stored as the broker acknowledged to the publisher, none rejected, with the
// extended fields kept.
func TestRealPublisherEndToEnd(t *testing.T) {
	t.Parallel()
	d := startDeps(t)
	r := startListener(t, d.config(pubID("e2e")), "e2e", nil)

	pc := publisher.DefaultConfig()
	pc.MQTT.URL = d.mq.URL
	pc.MQTT.ClientID = pubID("publisher")
	pc.Chargers, pc.Connectors = 40, 2
	pc.SessionInterval = time.Minute
	pc.TimeScale = 600 // 40 chargers × 10 sessions per wall second
	preg := prometheus.NewRegistry()
	p, err := publisher.New(pc, testLogger(t, "publisher"), preg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	waitUntil(t, 60*time.Second, "publisher acknowledged 800 sessions", func() (bool, string) {
		n := gathered(t, preg, publisher.MetricPublished)
		return n >= 800, fmt.Sprint(n, " published")
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("publisher: %v", err)
	}
	published := gathered(t, preg, publisher.MetricPublished)
	if f, rt := gathered(t, preg, publisher.MetricFailed), gathered(t, preg, publisher.MetricRetries); f != 0 || rt != 0 {
		t.Fatalf("publisher failed %v, retried %v: the expected count is unknown", f, rt)
	}
	coll := sessionsColl(t, d)
	waitUntil(t, 60*time.Second, "all published sessions stored", func() (bool, string) {
		k := countDocs(t, coll, bson.D{})
		return float64(k) == published, fmt.Sprintf("%d stored of %v published; %v", k, published, r.counts())
	})
	c := waitIdle(t, r, "idle")
	if c.stored != published || c.dups != 0 || rejectedTotal(r) != 0 {
		t.Errorf("listener %v, rejected %v; want %v stored, nothing else", c, rejectedTotal(r), published)
	}
	docs := allSessions(t, coll)
	for id, doc := range docs {
		if doc.ChargerID == "" || doc.ConnectorID < 1 || doc.PowerClass == "" || doc.StartedAt.IsZero() ||
			!doc.EndedAt.After(doc.StartedAt) || doc.TariffCentsPerKWh == 0 || doc.EnergyKWh <= 0 || id != session.Key(doc.ChargerID, doc.ConnectorID, doc.SessionID) {
			t.Errorf("session %s stored as %+v", id, doc)
			break
		}
	}
	rej := countDocs(t, d.fdb.Client().Database(testDB).Collection(store.RejectedCollection), bson.D{})
	if rej != 0 {
		t.Errorf("%d rejected", rej)
	}
}

func gathered(tb testing.TB, g prometheus.Gatherer, name string) float64 {
	tb.Helper()
	v, ok := testenv.MetricSum(tb, g, name)
	if !ok {
		tb.Fatalf("metric %s not found", name)
	}
	return v
}
