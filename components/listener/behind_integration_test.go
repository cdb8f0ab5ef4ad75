//go:build integration

package listener

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.mongodb.org/mongo-driver/v2/bson"
)

// A listener that cannot keep up says so (gauge, /readyz detail) instead of drifting silently,
// and says it has caught up once it has; nothing is lost meanwhile. The store is stopped while
// sessions keep coming: backpressure engages, the listener reports falling behind; the store
// comes back, the backlog drains (with lag far above the objective), then it reports caught up.
func TestFallingBehindReportedAndCleared(t *testing.T) {
	t.Parallel()
	d := startDeps(t)
	cfg := d.config(pubID("behind"))
	cfg.MaxPending = 300
	cfg.BatchSize = 50
	cfg.LagObjective = 5 * time.Second // loaded CI machines: keeping up must not look behind
	r := startListener(t, cfg, "behind", func(l *Listener) { l.behind.window = time.Second })
	behind := func() float64 { return testutil.ToFloat64(r.l.behind.m.behind) }
	published := goods(0, 1500)
	p := newPub(t, d.mq.URL, pubID("pub"))
	p.publish(t, messagesOf(published[:200]))
	coll := sessionsColl(t, d)
	waitUntil(t, 60*time.Second, "first 200 stored", func() (bool, string) {
		n := countDocs(t, coll, bson.D{})
		return n == 200, fmt.Sprintf("%d stored; %v", n, r.counts())
	})
	time.Sleep(2500 * time.Millisecond) // two windows while keeping up
	if behind() != 0 {
		t.Fatalf("reported behind while keeping up: %q", r.l.behind.Status())
	}

	d.fdb.Stop()
	pubDone := make(chan error, 1)
	go func() { pubDone <- p.tryPublish(messagesOf(published[200:])) }()
	waitUntil(t, 60*time.Second, "falling behind reported", func() (bool, string) {
		return behind() == 1 && strings.Contains(r.l.behind.Status(), "backpressure"), r.l.behind.Status()
	})

	d.fdb.Start()
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 120*time.Second, "all stored after the outage", func() (bool, string) {
		n := countDocs(t, coll, bson.D{})
		return n == int64(len(published)), fmt.Sprintf("%d stored; %v", n, r.counts())
	})
	waitUntil(t, 30*time.Second, "caught up", func() (bool, string) {
		err := r.l.Ready(context.Background())
		return behind() == 0 && err == nil, fmt.Sprintf("gauge %v, ready %v", behind(), err)
	})
	if testutil.ToFloat64(r.l.behind.m.backpressure) == 0 {
		t.Error("backpressure_seconds_total stayed 0 through the outage")
	}
	checkExactlyOnce(t, d, published)
}
